"""The main job of ``make demo``: real producer/consumer processes over every mechanism.

For each mechanism the parent opens its side, starts a child process (``python -m
aioipc._cli.demo child ...``), measures ping-pong round trips, then has the child send a
burst of numbered messages and checks that every number arrives exactly once, in order.
The ``pubsub`` row is one parent publishing to three subscriber children, each of which
checks every message (see :mod:`aioipc._cli.demo_pubsub`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.stapled import StapledObjectStream

from .. import fifo, pipes, posix, shm, sysv, unix
from .demo_pubsub import SUBSCRIBERS, pubsub_child, pubsub_exchange
from .demo_regions import REGION_MECHANISMS, region_child, region_parent

MECHANISMS = (
    "pipe",
    "fifo",
    "unix-stream",
    "unix-seqpacket",
    "unix-dgram",
    "posix-mq",
    "sysv-mq",
    "shm-ring",
    "pubsub",
    *REGION_MECHANISMS,
)
_index = struct.Struct("!I")


@dataclass
class Result:
    mechanism: str
    messages: int
    megabytes_per_s: float
    rtt_us: float


@asynccontextmanager
async def _parent_side(
    mechanism: str, tmp: str, size: int
) -> AsyncIterator[tuple[Any, list[str], tuple[int, ...]]]:
    """Open the parent's channel; yield it with the child's arguments and fds to pass."""
    if mechanism in REGION_MECHANISMS:
        async with region_parent(mechanism, tmp, size) as side:
            yield side
    elif mechanism == "pipe":
        to_child_tx, to_child_rx = pipes.pipe()
        to_parent_tx, to_parent_rx = pipes.pipe()
        child_fds = (to_child_rx.fileno(), to_parent_tx.fileno())
        args = [str(child_fds[0]), str(child_fds[1])]
        chan = StapledObjectStream(to_child_tx, to_parent_rx)
        try:
            yield chan, args, child_fds
        finally:
            to_child_rx.close()
            to_parent_tx.close()
            await chan.aclose()
    elif mechanism == "fifo":
        down, up = os.path.join(tmp, "down"), os.path.join(tmp, "up")
        fifo.create(down)
        fifo.create(up)
        try:
            rx = await fifo.open_receiver(up)
            try:
                yield _LazyFifo(down, rx), [down, up], ()
            finally:
                await rx.aclose()
        finally:
            for path in (down, up):  # through aioipc, so its registry forgets them too
                fifo.unlink(path)
    elif mechanism == "posix-mq":
        down, up = f"/aioipc-demo-{os.getpid()}-down", f"/aioipc-demo-{os.getpid()}-up"
        tx = posix.MessageQueue.create(down, read=False)
        try:
            rx_q = posix.MessageQueue.create(up, write=False)
        except BaseException:
            tx.unlink()
            await tx.aclose()
            raise
        try:
            yield StapledObjectStream(tx, rx_q), [down, up], ()
        finally:
            tx.unlink()
            rx_q.unlink()
            await tx.aclose()
            await rx_q.aclose()
    elif mechanism == "sysv-mq":
        # One private queue both ways: the parent sends type 1 and reads type 2.
        q = sysv.MessageQueue.create(send_type=1, receive_type=2)
        try:
            yield q, [str(q.id)], ()
        finally:
            await q.aclose()  # removes it: this handle created it private
    elif mechanism == "shm-ring":
        # A ring is one-way: one down to the child, one up from it.
        down, up = f"/aioipc-demo-{os.getpid()}-down", f"/aioipc-demo-{os.getpid()}-up"
        ring_tx = shm.ShmSender.create(down)
        try:
            ring_rx = shm.ShmReceiver.create(up)
        except BaseException:
            await ring_tx.aclose()
            raise
        chan = StapledObjectStream(ring_tx, ring_rx)
        try:
            yield chan, [down, up], ()
        finally:
            await chan.aclose()  # each ring's creator removes its files
    else:
        kind = mechanism.removeprefix("unix-")
        path = os.path.join(tmp, "sock")
        listener = await unix.listen(path, kind)  # type: ignore[call-overload]
        try:
            yield _LazyAccept(listener, kind), [path, kind], ()
        finally:
            await listener.aclose()


class _LazyFifo:
    """The parent's FIFO pair: the sender opens once the child's receiver exists."""

    def __init__(self, down: str, rx: Any) -> None:
        self._down, self._rx = down, rx
        self._tx: Any = None

    async def ready(self) -> None:
        self._tx = await fifo.open_sender(self._down)

    async def send(self, item: bytes) -> None:
        await self._tx.send(item)

    async def receive(self) -> bytes:
        data: bytes = await self._rx.receive()
        return data

    async def aclose(self) -> None:
        if self._tx is not None:
            await self._tx.aclose()


class _LazyAccept:
    """The parent's socket side: a dgram endpoint directly, else the accepted connection."""

    def __init__(self, listener: Any, kind: str) -> None:
        self._listener, self._kind = listener, kind
        self._chan: Any = None

    async def ready(self) -> None:
        if self._kind == "dgram":
            self._chan = self._listener
            await self._chan.receive()  # the child's hello gives us its address
        else:
            self._chan = await self._listener.accept()

    async def send(self, item: bytes) -> None:
        assert self._chan is not None
        await self._chan.send(item)

    async def receive(self) -> bytes:
        assert self._chan is not None
        data: bytes = await self._chan.receive()
        return data

    async def aclose(self) -> None:
        if self._chan is not None and self._chan is not self._listener:
            await self._chan.aclose()


async def _run_pubsub(count: int, size: int, round_trips: int) -> Result:
    """The pub/sub row: this process publishes, ``SUBSCRIBERS`` children subscribe."""
    procs: list[Process] = []
    try:
        async with anyio.create_task_group() as tg:

            async def watch(proc: Process) -> None:
                # A child that fails or dies would leave us waiting for its reply (a
                # block subscriber killed is reaped, but its report never comes).
                if await proc.wait() != 0:
                    tg.cancel_scope.cancel()

            async def start(args: list[str]) -> None:
                for i in range(SUBSCRIBERS):
                    cmd = [sys.executable, "-m", "aioipc._cli.demo", "child", "pubsub"]
                    proc = await anyio.open_process(
                        [*cmd, *args, str(i)], stdin=None, stdout=None, stderr=None
                    )
                    procs.append(proc)
                    tg.start_soon(watch, proc)

            try:
                with anyio.fail_after(30):
                    rtts, elapsed = await pubsub_exchange(count, size, round_trips, start)
                    for proc in procs:
                        await proc.wait()
            except TimeoutError:
                raise AssertionError("pubsub: no progress for 30 s") from None
        failed = [p.returncode for p in procs if p.returncode != 0]
        if failed or len(procs) < SUBSCRIBERS:
            raise AssertionError(
                f"pubsub: a subscriber process exited with {failed[0] if failed else '?'} "
                "before the exchange was over"
            )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
            await proc.aclose()
    return Result("pubsub", count, count * size / elapsed / 1e6, statistics.median(rtts) * 1e6)


async def _run_one(mechanism: str, count: int, size: int, round_trips: int) -> Result:
    if mechanism == "pubsub":
        return await _run_pubsub(count, size, round_trips)
    tmp = tempfile.mkdtemp(prefix="aioipc-demo-")
    try:
        async with _parent_side(mechanism, tmp, size) as (chan, args, fds):
            cmd = [sys.executable, "-m", "aioipc._cli.demo", "child", mechanism, *args]
            proc = await anyio.open_process(cmd, pass_fds=fds, stdin=None, stdout=None, stderr=None)
            exited = anyio.Event()
            rtts: list[float] = []
            elapsed = 0.0
            try:
                async with anyio.create_task_group() as tg:

                    async def watch() -> None:
                        # A child that dies mid-way would leave us waiting on a channel
                        # (or a semaphore) that nobody will ever serve.
                        await proc.wait()
                        exited.set()
                        if not rtts:
                            tg.cancel_scope.cancel()

                    tg.start_soon(watch)
                    with anyio.fail_after(30):
                        rtts, elapsed = await _exchange(chan, mechanism, count, size, round_trips)
                        if not mechanism.endswith("-mq"):
                            await chan.aclose()  # queues stay open until "bye" is read
                        await exited.wait()
                if proc.returncode != 0 or not rtts:
                    raise AssertionError(
                        f"{mechanism}: the child process exited with {proc.returncode} "
                        "before the exchange was over"
                    )
            except TimeoutError:
                raise AssertionError(f"{mechanism}: no progress for 30 s") from None
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with anyio.CancelScope(shield=True):
                        await proc.wait()
                await proc.aclose()
        return Result(
            mechanism,
            count,
            count * size / elapsed / 1e6,
            statistics.median(rtts) * 1e6,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _exchange(
    chan: Any, mechanism: str, count: int, size: int, round_trips: int
) -> tuple[list[float], float]:
    """Ping-pong, then the numbered burst; the round trips and the burst's duration."""
    if hasattr(chan, "ready"):
        await chan.ready()
    rtts = []
    for _ in range(round_trips):
        t0 = time.perf_counter()
        await chan.send(b"ping" + bytes(60))
        reply = await chan.receive()
        rtts.append(time.perf_counter() - t0)
        assert reply[:4] == b"pong", reply[:4]
    await chan.send(b"burst" + _index.pack(count) + _index.pack(size))
    t0 = time.perf_counter()
    for expected in range(count):
        msg = await chan.receive()
        (got,) = _index.unpack_from(msg)
        if got != expected or len(msg) != size:
            raise AssertionError(
                f"{mechanism}: expected message {expected} of {size} bytes, got {got} of {len(msg)}"
            )
    elapsed = time.perf_counter() - t0
    await chan.send(b"bye")
    return rtts, elapsed


def _die_with_parent() -> None:
    """Have the kernel kill this child when its parent dies: a child blocked on a
    semaphore would otherwise wait for ever, keeping the demo's objects attached."""
    import signal

    from .._core import libc as _libc

    _libc.call("prctl", 1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the prctl
        os._exit(1)


async def _child(mechanism: str, args: list[str]) -> None:
    chan: Any
    if mechanism == "pubsub":
        await pubsub_child(args)
        return
    if mechanism in REGION_MECHANISMS:
        chan = region_child(mechanism, args)
    elif mechanism == "pipe":
        rx = pipes.from_fd(int(args[0]), "r")
        tx = pipes.from_fd(int(args[1]), "w")
        chan = StapledObjectStream(tx, rx)
    elif mechanism == "fifo":
        rx2 = await fifo.open_receiver(args[0])
        tx2 = await fifo.open_sender(args[1])
        chan = StapledObjectStream(tx2, rx2)
    elif mechanism == "posix-mq":
        chan = StapledObjectStream(
            posix.MessageQueue.open(args[1], read=False),
            posix.MessageQueue.open(args[0], write=False),
        )
    elif mechanism == "sysv-mq":
        chan = sysv.MessageQueue.from_id(int(args[0]), send_type=2, receive_type=1)
    elif mechanism == "shm-ring":
        chan = StapledObjectStream(shm.ShmSender.open(args[1]), shm.ShmReceiver.open(args[0]))
    else:
        chan = await unix.connect(args[0], args[1])  # type: ignore[call-overload]
        if args[1] == "dgram":
            await chan.send(b"hello")
    async with chan:
        async for msg in chan:
            if msg.startswith(b"ping"):
                await chan.send(b"pong" + msg[4:])
            elif msg.startswith(b"burst"):
                (count,) = _index.unpack_from(msg, 5)
                (size,) = _index.unpack_from(msg, 9)
                filler = bytes(size - 4)
                for i in range(count):
                    await chan.send(_index.pack(i) + filler)
            elif msg == b"bye":
                return


def run_demo(
    count: int = 5000,
    size: int = 1024,
    round_trips: int = 500,
    mechanisms: tuple[str, ...] = MECHANISMS,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run the demo over ``mechanisms``; return (and report) one result per mechanism."""

    async def main() -> list[Result]:
        results = []
        for mechanism in mechanisms:
            result = await _run_one(mechanism, count, size, round_trips)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    return anyio.run(main)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _die_with_parent()
    anyio.run(_child, sys.argv[2], sys.argv[3:])
