#!/usr/bin/env python3
"""Two-process benchmark of aioipc's shared-memory ring against other IPC in Python.

Every figure comes from two fresh processes (``spawn``) talking to each other; the parent
only prepares names, starts the processes, collects their reports and cleans up. The
machine is usually a shared, noisy 2-core VM: read the ratios, which compare rows
measured in the same run, not the absolute numbers.

Tests (not every implementation runs every test):

``rtt``
    64-byte ping-pong: the pinger sends, the echoer sends the message back, the pinger
    times each round trip with ``perf_counter_ns`` after a warm-up and checks the reply
    is byte-for-byte what it sent. Median (and p99) in µs.
``64B`` / ``64B-batched``
    One-way throughput of 64-byte messages in messages per second, one message per call
    (``64B``) or in batches (``send_many``/``receive_many``, ``put_many``/``get_many``).
``1MiB``
    One-way throughput of 1 MiB messages in GB/s (10**9 bytes per second). The copying
    rows send whole prepared messages; the zero-copy rows (``aioipc-shm-zc`` and
    ``iceoryx2``) write the index into the first 8 bytes and a fixed tail into the last
    8 of a loaned/reserved buffer in place, and the receiver checks both in place.
``idle-cpu``
    A receiver waits for 1 s on an idle ring (a sender attached, sending nothing); the
    CPU seconds its process used in that second (``time.process_time``, all threads).

Throughput is timed on the receiver, from the moment it sends "go" to the sender until
the last message arrived. The receiver checks every message's length, the content of
every 64th small / 16th large message and the last one (index in the first 8 bytes,
fixed tail in the last 8; the zero-copy rows check every message), that exactly the
expected number arrived (the stream must end right after) and the parent checks the
sender's count. Handshake without sleeps over a control pipe: the receiving side says
"listening", the other "connected", then "go".

Rows: aioipc's ShmSender/ShmReceiver (copies; zero-copy ``reserve``/``receive_view``;
``spin=50e-6`` low-latency mode), aioipc's unix-stream channel, pyzmq (zmq.asyncio PAIR
over ipc://), multiprocessing.Queue and faster-fifo (blocking calls, no event loop),
iceoryx2 (publish-subscribe of byte slices, busy polling) and the C floor
(``floor.c`` beside this module: eventfd ping-pong and memcpy, compiled with gcc if
present).
Implementations that are not installed are skipped with a note.

Usage::

    python benchmarks/bench_shm.py [--quick] [--rounds N] [--only PATTERN[,...]]
                                   [--json out.json] [--timeout S] [--pin none|split|same]
                                   [--list]

``--only`` takes shell patterns over ``impl`` or ``impl/test`` (``'aioipc-shm*'``,
``'*/rtt'``, ``iceoryx2/1MiB``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

import anyio

__all__ = ["IMPLS", "Counts", "compute_ratios", "format_report", "main", "run_benchmarks"]

SMALL = 64
BIG = 1 << 20
SMALL_STEP = 64  # every 64th small message (and the last) is checked in full
BIG_STEP = 16
BATCH = 256  # messages per send_many / put_many call
BATCH_MAX = 1024  # max_count of receive_many / get_many
SPIN = 50e-6  # aioipc-shm-spin: seconds to busy-poll before sleeping on the doorbell
SMALL_RING = 1 << 20  # ring / queue bytes for the 64-byte tests (aioipc's default)
BIG_RING = 8 << 20  # for the 1 MiB tests: room for 7 messages in flight
# iceoryx2 subscriber buffers, in samples: as much payload in flight as the rings hold
# (16384 x 64 B = 1 MiB; 7 x 1 MiB in 8 MiB). With a small buffer the publisher's
# RetryUntilDelivered back-off sleeps whenever the buffer is full, and 64B throughput
# collapses to buffer / back-off (256 samples: ~60,000 msgs/s instead of ~450,000).
ICE_SMALL_BUFFER = 16384
ICE_BIG_BUFFER = 7
IDLE_SECONDS = 1.0
TAIL = b"aioipc.b"
UNINDEXED = b"\xff" * 8
END = b""  # end-of-stream sentinel of the peers without one (a real message is never empty)
HANDSHAKE_TIMEOUT = 30.0

TESTS = ("rtt", "64B", "64B-batched", "1MiB", "idle-cpu")


@dataclass(frozen=True)
class Counts:
    """How much each measurement does."""

    rtt_warmup: int
    rtt_count: int
    small_count: int
    batched_count: int
    big_count: int
    rounds: int


FULL = Counts(
    rtt_warmup=200,
    rtt_count=2000,
    small_count=200_000,
    batched_count=400_000,
    big_count=2000,
    rounds=5,
)
QUICK = Counts(
    rtt_warmup=50,
    rtt_count=300,
    small_count=25_000,
    batched_count=50_000,
    big_count=200,
    rounds=1,
)


@dataclass(frozen=True)
class Impl:
    key: str
    name: str
    tests: tuple[str, ...]
    kind: str  # "anyio", "asyncio", "sync" (blocking calls in the process), "c"


IMPLS: tuple[Impl, ...] = (
    Impl(
        "aioipc-shm",
        "aioipc ShmSender/ShmReceiver",
        ("rtt", "64B", "64B-batched", "1MiB", "idle-cpu"),
        "anyio",
    ),
    Impl("aioipc-shm-zc", "aioipc shm, reserve/receive_view", ("1MiB",), "anyio"),
    Impl("aioipc-shm-zc-spin", "aioipc shm, zero copy, spin=50e-6", ("1MiB",), "anyio"),
    Impl("aioipc-shm-1copy", "aioipc shm, send(bytes)/receive_view", ("1MiB",), "anyio"),
    Impl("aioipc-shm-spin", "aioipc shm, spin=50e-6", ("rtt", "idle-cpu"), "anyio"),
    Impl("aioipc-unix", "aioipc unix-stream", ("rtt", "64B", "1MiB"), "anyio"),
    Impl("pyzmq", "pyzmq PAIR ipc:// (zmq.asyncio)", ("rtt", "64B", "1MiB"), "asyncio"),
    Impl("mp-queue", "multiprocessing.Queue", ("rtt", "64B", "1MiB"), "sync"),
    Impl("faster-fifo", "faster-fifo Queue", ("rtt", "64B", "64B-batched", "1MiB"), "sync"),
    Impl("iceoryx2", "iceoryx2 pub/sub, busy polling", ("rtt", "64B", "1MiB"), "sync"),
    Impl("c-eventfd", "C floor: eventfd ping-pong", ("rtt",), "c"),
    Impl("c-memcpy", "C floor: memcpy of 1 MiB", ("1MiB",), "c"),
    Impl("py-eventfd", "Python floor: blocking eventfd ping-pong", ("rtt",), "py"),
    Impl("asyncio-eventfd", "asyncio floor: eventfd ping-pong", ("rtt",), "py"),
)
_BY_KEY = {impl.key: impl for impl in IMPLS}
_SHM_IMPLS = (
    "aioipc-shm",
    "aioipc-shm-zc",
    "aioipc-shm-zc-spin",
    "aioipc-shm-1copy",
    "aioipc-shm-spin",
)
_ZERO_COPY_RECEIVE = ("aioipc-shm-zc", "aioipc-shm-zc-spin", "aioipc-shm-1copy")
_ZERO_COPY_SEND = ("aioipc-shm-zc", "aioipc-shm-zc-spin")

# ---------------------------------------------------------------------------------------
# Messages and checks
# ---------------------------------------------------------------------------------------


def _message(index: int | None, size: int) -> bytes:
    head = UNINDEXED if index is None else index.to_bytes(8, "big")
    pattern = bytes(range(256)) * (size // 256 + 1)
    return head + pattern[: size - 16] + TAIL


def _sampled(index: int, count: int, step: int) -> bool:
    return index % step == 0 or index == count - 1


def _bad_content(index: int, head: bytes, tail: bytes) -> AssertionError:
    return AssertionError(
        f"message {index}: wrong content (head {bytes(head).hex()}, tail {bytes(tail)!r}); "
        "a message was lost, duplicated, reordered or corrupted"
    )


def _verify(msg: Any, index: int) -> None:
    if msg[:8] != index.to_bytes(8, "big") or msg[-8:] != TAIL:
        raise _bad_content(index, msg[:8], msg[-8:])


def _wrong_length(index: int, got: int, size: int) -> AssertionError:
    if got == 0:
        return AssertionError(f"the stream ended after {index} messages")
    return AssertionError(f"message {index}: {got} bytes, expected {size}")


def _too_many(count: int) -> AssertionError:
    return AssertionError(f"more than the {count} messages sent arrived")


def _test_params(test: str, counts: Counts) -> tuple[int, int, int]:
    """(message count, size, sample step) of a throughput test."""
    if test == "64B":
        return counts.small_count, SMALL, SMALL_STEP
    if test == "64B-batched":
        return counts.batched_count, SMALL, SMALL_STEP
    return counts.big_count, BIG, BIG_STEP


def _prepared(count: int, size: int, step: int) -> list[bytes]:
    """The messages of a throughput test, built before the clock starts."""
    plain = _message(None, size)  # shared by the unsampled messages (one 1 MiB object)
    return [_message(i, size) if _sampled(i, count, step) else plain for i in range(count)]


def _consume(batch: list[bytes], done: int, count: int, size: int, step: int) -> tuple[int, bool]:
    """Check a received batch that starts at message ``done``; (new total, stream ended).

    Every length is checked, the sampled messages in full; an empty message (END)
    right after the last expected one ends the stream, anything else beyond is an error.
    """
    n = len(batch)
    ended = False
    if done + n > count:
        extra = batch[count - done :]
        if extra != [END]:
            raise _too_many(count)
        batch = batch[: count - done]
        n = len(batch)
        ended = True
    if n and set(map(len, batch)) != {size}:
        for j, msg in enumerate(batch):
            if len(msg) != size:
                raise _wrong_length(done + j, len(msg), size)
    first = -(-done // step) * step
    for index in range(first, done + n, step):
        _verify(batch[index - done], index)
    if done < count <= done + n:
        _verify(batch[count - 1 - done], count - 1)
    return done + n, ended


# ---------------------------------------------------------------------------------------
# Child side: handshake
# ---------------------------------------------------------------------------------------

LISTENING = b"listening"
CONNECTED = b"connected"
GO = b"go"
DONE = b"done"


def _expect_sync(ctl: Connection, token: bytes, wait: float = HANDSHAKE_TIMEOUT) -> None:
    if not ctl.poll(wait):
        raise TimeoutError(f"handshake: no {token.decode()!r} from the peer within {wait} s")
    got = ctl.recv_bytes()
    if got != token:
        raise RuntimeError(f"handshake: expected {token!r}, got {got!r}")


async def _expect(ctl: Connection, token: bytes) -> None:
    """Wait for ``token`` on the control pipe without blocking the event loop."""
    if not ctl.poll():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(ctl.fileno(), on_readable)
        try:
            await asyncio.wait_for(ready, HANDSHAKE_TIMEOUT)
        finally:
            loop.remove_reader(ctl.fileno())
    _expect_sync(ctl, token, 0)


@dataclass
class _Spec:
    """What one child process runs (pickled into it by ``spawn``)."""

    impl: str
    test: str
    role: str  # "a": listener / receiver / echoer; "b": client / sender / pinger
    res: dict[str, Any]
    counts: Counts
    ctl: Connection
    cpu: int | None = None  # pin this process to one CPU (--pin)


class _Handshake:
    """Role a's side: say "listening" once, wait for "connected" once."""

    def __init__(self, spec: _Spec) -> None:
        self.ctl = spec.ctl
        self.active = spec.role == "a"
        self._listened = self._connected = False

    def listening(self) -> None:
        if self.active and not self._listened:
            self._listened = True
            self.ctl.send_bytes(LISTENING)

    async def connected(self) -> None:
        self.listening()
        if self.active and not self._connected:
            self._connected = True
            await _expect(self.ctl, CONNECTED)

    def connected_sync(self) -> None:
        self.listening()
        if self.active and not self._connected:
            self._connected = True
            _expect_sync(self.ctl, CONNECTED)


# ---------------------------------------------------------------------------------------
# Child side: async implementations (aioipc on anyio, pyzmq on asyncio)
# ---------------------------------------------------------------------------------------


@dataclass
class _AsyncEnd:
    """One process's end: what a user calls once per message, and how it ends."""

    send: Callable[[bytes], Awaitable[Any]] | None = None
    receive: Callable[[], Awaitable[bytes]] | None = None
    tx: Any = None  # the underlying sender / receiver objects, for batched and zero-copy
    rx: Any = None
    eof: tuple[type[BaseException], ...] = (anyio.EndOfStream,)
    finish: Callable[[], Awaitable[None]] | None = None  # the sender ends the stream
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The sender closes only after the receiver said it has everything (pyzmq: closing
    # the PAIR socket right after the last send, even with linger=5000, lost the last
    # few hundred 64-byte messages here).
    wait_done: bool = False

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()


async def _open_aioipc_shm(spec: _Spec, hs: _Handshake) -> _AsyncEnd:
    """Ring 1 carries b -> a, ring 2 (ping-pong only) a -> b; each receiver creates its
    ring, so the creating handle (which unlinks on close) is the receiving one."""
    shm: Any = importlib.import_module("aioipc.shm")
    spin = SPIN if spec.impl in ("aioipc-shm-spin", "aioipc-shm-zc-spin") else 0.0
    capacity = BIG_RING if spec.test == "1MiB" else SMALL_RING
    ring1, ring2 = spec.res["names"]
    two_way = spec.test == "rtt"
    end = _AsyncEnd()
    try:
        if spec.role == "a":
            end.rx = shm.ShmReceiver.create(ring1, capacity=capacity, spin=spin)
            end.closers.append(end.rx.aclose)
            hs.listening()
            if two_way:
                await hs.connected()
                end.tx = shm.ShmSender.open(ring2, spin=spin)
                end.closers.append(end.tx.aclose)
        else:
            if two_way:
                end.rx = shm.ShmReceiver.create(ring2, capacity=capacity, spin=spin)
                end.closers.append(end.rx.aclose)
            end.tx = shm.ShmSender.open(ring1, spin=spin)
            end.closers.append(end.tx.aclose)
    except BaseException:
        await end.aclose()
        raise
    if end.tx is not None:
        end.send = end.tx.send
        end.finish = end.tx.aclose
    if end.rx is not None:
        end.receive = end.rx.receive
    return end


async def _open_aioipc_unix(spec: _Spec, hs: _Handshake) -> _AsyncEnd:
    unix: Any = importlib.import_module("aioipc.unix")
    path = os.path.join(spec.res["dir"], "sock")
    if spec.role == "a":
        listener = await unix.listen(path)
        hs.listening()
        try:
            chan = await listener.accept()
        finally:
            await listener.aclose()
    else:
        chan = await unix.connect(path)
    return _AsyncEnd(
        send=chan.send,
        receive=chan.receive,
        tx=chan,
        rx=chan,
        finish=chan.aclose,
        closers=[chan.aclose],
    )


async def _open_pyzmq(spec: _Spec, hs: _Handshake) -> _AsyncEnd:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PAIR)
    address = "ipc://" + os.path.join(spec.res["dir"], "zmq")
    try:
        if spec.role == "a":
            sock.bind(address)
            hs.listening()
        else:
            sock.connect(address)
    except BaseException:
        sock.close(linger=0)
        ctx.term()
        raise

    async def finish() -> None:
        await sock.send(END)

    async def close() -> None:
        sock.close(linger=5000)  # let queued messages reach a live peer
        ctx.term()

    return _AsyncEnd(
        send=sock.send,
        receive=sock.recv,
        tx=sock,
        rx=sock,
        eof=(),
        finish=finish,
        closers=[close],
        wait_done=True,
    )


_ASYNC_OPENERS: dict[str, Callable[[_Spec, _Handshake], Awaitable[_AsyncEnd]]] = {
    "aioipc-shm": _open_aioipc_shm,
    "aioipc-shm-zc": _open_aioipc_shm,
    "aioipc-shm-zc-spin": _open_aioipc_shm,
    "aioipc-shm-1copy": _open_aioipc_shm,
    "aioipc-shm-spin": _open_aioipc_shm,
    "aioipc-unix": _open_aioipc_unix,
    "pyzmq": _open_pyzmq,
}


async def _echo(end: _AsyncEnd) -> dict[str, Any]:
    assert end.send is not None
    assert end.receive is not None
    send, receive, eof = end.send, end.receive, end.eof
    echoed = 0
    while True:
        try:
            msg = await receive()
        except eof:
            break
        if not msg:  # END
            break
        await send(msg)
        echoed += 1
    return {"echoed": echoed}


async def _ping(end: _AsyncEnd, warmup: int, count: int) -> dict[str, Any]:
    assert end.send is not None
    assert end.receive is not None
    send, receive = end.send, end.receive
    clock = time.perf_counter_ns
    samples: list[int] = []
    for i in range(warmup + count):
        msg = _message(i, SMALL)
        start = clock()
        await send(msg)
        reply = await receive()
        elapsed = clock() - start
        if reply != msg:
            raise AssertionError(f"round trip {i}: the reply differs from the message sent")
        if i >= warmup:
            samples.append(elapsed)
    return {"samples_ns": samples}


async def _expect_end(end: _AsyncEnd, count: int) -> None:
    assert end.receive is not None
    try:
        msg = await end.receive()
    except end.eof:
        return
    if msg != END:
        raise _too_many(count)


async def _sink(end: _AsyncEnd, ctl: Connection, count: int, size: int, step: int) -> int:
    assert end.receive is not None
    receive = end.receive
    clock = time.perf_counter_ns
    last = count - 1
    ctl.send_bytes(GO)
    start = clock()
    for i in range(count):
        msg = await receive()
        if len(msg) != size:
            raise _wrong_length(i, len(msg), size)
        if i % step == 0 or i == last:
            _verify(msg, i)
    elapsed = clock() - start
    await _expect_end(end, count)
    return elapsed


async def _source(end: _AsyncEnd, ctl: Connection, count: int, size: int, step: int) -> None:
    assert end.send is not None
    assert end.finish is not None
    messages = _prepared(count, size, step)
    send = end.send
    await _expect(ctl, GO)
    for msg in messages:
        await send(msg)
    await end.finish()


async def _sink_batched(end: _AsyncEnd, ctl: Connection, count: int, size: int) -> int:
    receive_many = end.rx.receive_many
    clock = time.perf_counter_ns
    done = 0
    ctl.send_bytes(GO)
    start = clock()
    while done < count:
        done, _ = _consume(await receive_many(BATCH_MAX), done, count, size, SMALL_STEP)
    elapsed = clock() - start
    try:
        await receive_many(BATCH_MAX)
    except end.eof:
        return elapsed
    raise _too_many(count)


async def _source_batched(end: _AsyncEnd, ctl: Connection, count: int, size: int) -> None:
    assert end.finish is not None
    messages = _prepared(count, size, SMALL_STEP)
    batches = [messages[k : k + BATCH] for k in range(0, count, BATCH)]
    send_many = end.tx.send_many
    await _expect(ctl, GO)
    for batch in batches:
        await send_many(batch)
    await end.finish()


async def _sink_zero_copy(
    end: _AsyncEnd, ctl: Connection, count: int, size: int, step: int = 1
) -> int:
    """``receive_view``: check the length and the tail of every message in place, and the
    index of every ``step``-th (every one for the zero-copy senders, which write it)."""
    receive_view = end.rx.receive_view
    clock = time.perf_counter_ns
    ctl.send_bytes(GO)
    start = clock()
    for i in range(count):
        async with receive_view() as view:
            if len(view) != size:
                raise _wrong_length(i, len(view), size)
            if view[-8:] != TAIL or (_sampled(i, count, step) and view[:8] != i.to_bytes(8, "big")):
                raise _bad_content(i, view[:8], view[-8:])
    elapsed = clock() - start
    try:
        async with receive_view():
            pass
    except end.eof:
        return elapsed
    raise _too_many(count)


async def _source_zero_copy(end: _AsyncEnd, ctl: Connection, count: int, size: int) -> None:
    """``reserve(n)``: write the index into the first 8 bytes and the tail into the last
    8 in place; the rest of the message is whatever the ring holds."""
    assert end.finish is not None
    reserve = end.tx.reserve
    await _expect(ctl, GO)
    for i in range(count):
        async with reserve(size) as view:
            view[:8] = i.to_bytes(8, "big")
            view[-8:] = TAIL
    await end.finish()


async def _idle(end: _AsyncEnd, ctl: Connection) -> dict[str, Any]:
    """Wait on the idle ring for IDLE_SECONDS; report this process's CPU time."""
    receive = end.receive
    assert receive is not None
    wall, cpu = time.perf_counter(), time.process_time()
    with anyio.move_on_after(IDLE_SECONDS):
        await receive()
        raise AssertionError("a message arrived on the idle ring")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_s": cpu, "wall_s": wall}


async def _async_role(spec: _Spec) -> dict[str, Any]:
    ctl, test, counts = spec.ctl, spec.test, spec.counts
    hs = _Handshake(spec)
    if spec.role == "b":
        await _expect(ctl, LISTENING)
    end = await _ASYNC_OPENERS[spec.impl](spec, hs)
    try:
        if spec.role == "a":
            await hs.connected()
            if test == "rtt":
                ctl.send_bytes(GO)
                result = await _echo(end)
                if end.wait_done:
                    ctl.send_bytes(DONE)
                return result
            if test == "idle-cpu":
                result = await _idle(end, ctl)
                ctl.send_bytes(DONE)  # the sender may close now
                return result
            count, size, step = _test_params(test, counts)
            if test == "64B-batched":
                elapsed = await _sink_batched(end, ctl, count, size)
            elif spec.impl in _ZERO_COPY_RECEIVE:
                every = 1 if spec.impl in _ZERO_COPY_SEND else step
                elapsed = await _sink_zero_copy(end, ctl, count, size, every)
            else:
                elapsed = await _sink(end, ctl, count, size, step)
            if end.wait_done:
                ctl.send_bytes(DONE)
            return {"received": count, "elapsed_ns": elapsed}
        ctl.send_bytes(CONNECTED)
        if test == "rtt":
            await _expect(ctl, GO)
            result = await _ping(end, counts.rtt_warmup, counts.rtt_count)
            assert end.finish is not None
            await end.finish()
            if end.wait_done:
                await _expect(ctl, DONE)
            return result
        if test == "idle-cpu":
            await _expect(ctl, DONE)
            return {}
        count, size, step = _test_params(test, counts)
        if test == "64B-batched":
            await _source_batched(end, ctl, count, size)
        elif spec.impl in _ZERO_COPY_SEND:
            await _source_zero_copy(end, ctl, count, size)
        else:
            await _source(end, ctl, count, size, step)
        if end.wait_done:
            await _expect(ctl, DONE)
        return {"sent": count}
    finally:
        await end.aclose()


# ---------------------------------------------------------------------------------------
# Child side: blocking implementations (no event loop)
# ---------------------------------------------------------------------------------------


@dataclass
class _SyncEnd:
    send: Callable[[bytes], Any] | None = None
    receive: Callable[[], bytes] | None = None
    tx: Any = None
    rx: Any = None
    close: Callable[[], None] = lambda: None
    # iceoryx2 zero-copy 1 MiB loops
    sink_in_place: Callable[[Connection, int, int], int] | None = None
    source_in_place: Callable[[Connection, int, int], None] | None = None


def _open_queues(spec: _Spec, hs: _Handshake) -> _SyncEnd:
    """multiprocessing.Queue / faster-fifo: the parent made the queues."""
    hs.listening()
    tx, rx = spec.res.get("tx"), spec.res.get("rx")
    end = _SyncEnd(tx=tx, rx=rx)
    if tx is not None:
        end.send = tx.put
    if rx is not None:
        end.receive = rx.get

    def close() -> None:
        if spec.impl == "mp-queue" and tx is not None:
            tx.close()
            tx.join_thread()  # the feeder thread has written everything

    end.close = close
    return end


def _ice_node(res: dict[str, Any]) -> Any:
    import iceoryx2 as iox2

    iox2.set_log_level_from_env_or(iox2.LogLevel.Warn)
    config = iox2.config.default()
    # A root directory and file prefix of this measurement's own, removed afterwards.
    config.global_cfg.root_path = iox2.Path.new(res["ice_root"])
    config.global_cfg.prefix = iox2.FileName.new(res["ice_prefix"])
    return (
        iox2.NodeBuilder.new()
        .config(config)
        .signal_handling_mode(iox2.SignalHandlingMode.Disabled)  # SIGTERM ends us
        .create(iox2.ServiceType.Ipc)
    )


def _open_iceoryx2(spec: _Spec, hs: _Handshake) -> _SyncEnd:
    """Byte slices (``Slice[c_uint8]``), loaned from the publisher's data segment.

    Copying rows: send = loan ``len(data)`` bytes + memmove + send; receive = busy-poll
    ``receive()`` + ``string_at`` (a bytes copy, as the other peers return). The 1 MiB
    test is zero-copy: markers written into the loan, checked in the received sample.
    ``RetryUntilDelivered`` back-pressure and no safe overflow: nothing may be dropped.
    Before "go", one probe sample crosses each direction (see ``_ice_probe``).
    """
    import iceoryx2 as iox2

    big = spec.test == "1MiB"
    size = BIG if big else SMALL
    buffer = ICE_BIG_BUFFER if big else ICE_SMALL_BUFFER
    node = _ice_node(spec.res)
    slices = iox2.Slice[ctypes.c_uint8]

    def service(name: str) -> Any:
        return (
            node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(slices)
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(buffer)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
        )

    def publisher(name: str) -> Any:
        return (
            service(name)
            .publisher_builder()
            .initial_max_slice_len(size)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )

    def subscriber(name: str) -> Any:
        return service(name).subscriber_builder().buffer_size(buffer).create()

    two_way = spec.test == "rtt"
    pub = sub = None
    if spec.role == "a":
        sub = subscriber("data")
        if two_way:
            pub = publisher("back")
        hs.listening()
    else:
        pub = publisher("data")
        if two_way:
            sub = subscriber("back")

    memmove, string_at = ctypes.memmove, ctypes.string_at
    end = _SyncEnd(tx=pub, rx=sub)
    if pub is not None:
        loan = pub.loan_slice_uninit

        def send(data: bytes) -> None:
            n = len(data)
            sample = loan(n)
            memmove(sample.payload_ptr, data, n)
            sample.assume_init().send()

        end.send = send

        def source_in_place(ctl: Connection, count: int, size: int) -> None:
            tail = TAIL
            _expect_sync(ctl, GO)
            for i in range(count):
                sample = loan(size)
                ptr = sample.payload_ptr
                memmove(ptr, i.to_bytes(8, "big"), 8)
                memmove(ptr + size - 8, tail, 8)
                sample.assume_init().send()
            send(END)

        end.source_in_place = source_in_place
    if sub is not None:
        poll = sub.receive

        def receive() -> bytes:
            while True:
                sample = poll()
                if sample is not None:
                    data = string_at(sample.payload_ptr, sample.payload().len())
                    sample.delete()
                    return data

        end.receive = receive

        def sink_in_place(ctl: Connection, count: int, size: int) -> int:
            clock = time.perf_counter_ns
            tail = TAIL
            ctl.send_bytes(GO)
            start = clock()
            for i in range(count):
                while (sample := poll()) is None:
                    pass
                n = sample.payload().len()
                ptr = sample.payload_ptr
                if n != size:
                    raise _wrong_length(i, n, size)
                head, foot = string_at(ptr, 8), string_at(ptr + size - 8, 8)
                if head != i.to_bytes(8, "big") or foot != tail:
                    raise _bad_content(i, head, foot)
                sample.delete()
            elapsed = clock() - start
            if receive() != END:
                raise _too_many(count)
            return elapsed

        end.sink_in_place = sink_in_place

    def close() -> None:
        for port in (pub, sub):
            if port is not None:
                port.delete()

    end.close = close
    return end


PROBE = b"p"


def _ice_probe(end: _SyncEnd, spec: _Spec) -> None:
    """iceoryx2 0.10 drops samples sent before the subscriber's first ``receive()`` has
    seen the connection (found here: hundreds of the first messages lost under
    RetryUntilDelivered). So one probe sample crosses each direction before "go"."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT

    def await_probe() -> None:
        assert end.rx is not None
        while (sample := end.rx.receive()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("iceoryx2: the probe sample did not arrive")
        got = ctypes.string_at(sample.payload_ptr, sample.payload().len())
        sample.delete()
        if got != PROBE:
            raise AssertionError(f"iceoryx2: expected the probe, got {got[:16]!r}")

    if spec.role == "b":
        assert end.send is not None
        end.send(PROBE)
    else:
        await_probe()
        if end.tx is not None:
            end.tx.update_connections()
            assert end.send is not None
            end.send(PROBE)


def _sync_role(spec: _Spec) -> dict[str, Any]:
    ctl, test, counts = spec.ctl, spec.test, spec.counts
    hs = _Handshake(spec)
    if spec.role == "b":
        _expect_sync(ctl, LISTENING)
    ice = spec.impl == "iceoryx2"
    end = _open_iceoryx2(spec, hs) if ice else _open_queues(spec, hs)
    clock = time.perf_counter_ns
    try:
        if spec.role == "a":
            hs.connected_sync()
            if ice:
                _ice_probe(end, spec)
            result: dict[str, Any]
            if test == "rtt":
                assert end.send is not None
                assert end.receive is not None
                send, receive = end.send, end.receive
                ctl.send_bytes(GO)
                echoed = 0
                while msg := receive():
                    send(msg)
                    echoed += 1
                result = {"echoed": echoed}
            else:
                count, size, step = _test_params(test, counts)
                if test == "1MiB" and end.sink_in_place is not None:
                    elapsed = end.sink_in_place(ctl, count, size)
                elif test == "64B-batched":
                    get_many = end.rx.get_many
                    done = ended = 0
                    ctl.send_bytes(GO)
                    start = clock()
                    while done < count:
                        batch = get_many(max_messages_to_get=BATCH_MAX)
                        done, ended = _consume(batch, done, count, size, step)
                    elapsed = clock() - start
                    if not ended and end.rx.get() != END:
                        raise _too_many(count)
                else:
                    assert end.receive is not None
                    receive = end.receive
                    last = count - 1
                    ctl.send_bytes(GO)
                    start = clock()
                    for i in range(count):
                        msg = receive()
                        if len(msg) != size:
                            raise _wrong_length(i, len(msg), size)
                        if i % step == 0 or i == last:
                            _verify(msg, i)
                    elapsed = clock() - start
                    if receive() != END:
                        raise _too_many(count)
                result = {"received": count, "elapsed_ns": elapsed}
            ctl.send_bytes(DONE)  # everything arrived: the other side may close
            return result
        if ice:
            _ice_probe(end, spec)
        ctl.send_bytes(CONNECTED)
        if test == "rtt":
            assert end.send is not None
            assert end.receive is not None
            send, receive = end.send, end.receive
            _expect_sync(ctl, GO)
            if ice and receive() != PROBE:  # the echoer's probe on the way back
                raise AssertionError("iceoryx2: expected the probe on the way back")
            samples: list[int] = []
            warmup = counts.rtt_warmup
            for i in range(warmup + counts.rtt_count):
                msg = _message(i, SMALL)
                start = clock()
                send(msg)
                reply = receive()
                elapsed = clock() - start
                if reply != msg:
                    raise AssertionError(f"round trip {i}: the reply differs")
                if i >= warmup:
                    samples.append(elapsed)
            send(END)
            result = {"samples_ns": samples}
        else:
            count, size, step = _test_params(test, counts)
            if test == "1MiB" and end.source_in_place is not None:
                end.source_in_place(ctl, count, size)
            elif test == "64B-batched":
                messages = _prepared(count, size, step)
                batches = [messages[k : k + BATCH] for k in range(0, count, BATCH)]
                put_many = end.tx.put_many
                _expect_sync(ctl, GO)
                for batch in batches:
                    put_many(batch)
                end.tx.put(END)
            else:
                assert end.send is not None
                send = end.send
                messages = _prepared(count, size, step)
                _expect_sync(ctl, GO)
                for msg in messages:
                    send(msg)
                send(END)
            result = {"sent": count}
        _expect_sync(ctl, DONE, 300)  # the receiver has everything: close only now
        return result
    finally:
        end.close()


def _child(spec: _Spec, out: Connection) -> None:
    """Entry point of a benchmark process: run one role, report to the parent."""
    try:
        if spec.cpu is not None:
            os.sched_setaffinity(0, {spec.cpu})
        kind = _BY_KEY[spec.impl].kind
        if kind == "anyio":
            result = anyio.run(_async_role, spec, backend="asyncio")
        elif kind == "asyncio":
            result = asyncio.run(_async_role(spec))
        else:
            result = _sync_role(spec)
        report: dict[str, Any] = {"ok": True, **result}
    except BaseException:
        report = {"ok": False, "error": traceback.format_exc()}
    with contextlib.suppress(OSError):
        out.send(report)
    out.close()


# ---------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------


class MeasurementError(RuntimeError):
    """A measurement failed: a process raised, died, or did not finish in time."""


@dataclass
class _Run:
    """State of one benchmark run: names, leftovers, the compiled C floor."""

    tag: str
    pin: str | None = None
    seq: int = 0
    floor_dir: str | None = None
    floor_exe: str | None = None
    floor_error: str | None = None
    left_behind: dict[str, list[str]] = field(default_factory=dict)

    def next_names(self) -> tuple[str, str]:
        self.seq += 1
        return f"aioipc-bench-{self.tag}-{self.seq}", f"aioipcb{self.tag}x{self.seq}_"

    def close(self) -> None:
        if self.floor_dir is not None:
            shutil.rmtree(self.floor_dir, ignore_errors=True)
            self.floor_dir = None


def _dev_shm(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except OSError:
        return []


def _remove_dev_shm(prefix: str) -> list[str]:
    """Remove /dev/shm entries starting with ``prefix``; return their names."""
    removed = []
    for name in _dev_shm(prefix):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
    return removed


def _stop(proc: Any, grace: float) -> None:
    """Wait ``grace`` seconds for a process to exit, then SIGTERM, then SIGKILL."""
    proc.join(grace if proc.exitcode is None else 0)
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
        proc.join()
    proc.close()


def _prepare(
    impl: str, test: str, tmpdir: str, shm_base: str, ice_prefix: str, ctx: Any
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """Resources of roles a and b, and the parent's objects to close after the start."""
    two_way = test == "rtt"
    if impl in _SHM_IMPLS:
        names = ("/" + shm_base + "-1", "/" + shm_base + "-2")
        return {"names": names}, {"names": names}, []
    if impl in ("mp-queue", "faster-fifo"):
        capacity = BIG_RING if test == "1MiB" else SMALL_RING
        if impl == "mp-queue":
            make: Callable[[], Any] = ctx.Queue
        else:
            import faster_fifo

            def make() -> Any:
                return faster_fifo.Queue(max_size_bytes=capacity)

        q1 = make()
        res_a: dict[str, Any] = {"rx": q1}
        res_b: dict[str, Any] = {"tx": q1}
        queues = [q1]
        if two_way:
            q2 = make()
            res_a["tx"], res_b["rx"] = q2, q2
            queues.append(q2)
        return res_a, res_b, queues
    if impl == "iceoryx2":
        res = {"ice_root": os.path.join(tmpdir, "iceoryx2") + "/", "ice_prefix": ice_prefix}
        return res, dict(res), []
    return {"dir": tmpdir}, {"dir": tmpdir}, []


def _pin_cpus(pin: str | None) -> tuple[int | None, int | None]:
    """CPUs for roles a and b: ``split`` (two different CPUs), ``same`` (one) or none."""
    if pin in (None, "none"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "same":
        return cpus[0], cpus[0]
    if pin == "split" and len(cpus) >= 2:
        return cpus[0], cpus[1]
    raise ValueError(f"--pin {pin}: needs 'none', 'same' or 'split' with two usable CPUs")


def _measure_pair(impl: Impl, test: str, counts: Counts, timeout: float, run: _Run) -> Any:
    """Two fresh processes; the merged, checked result (float, or (median, p99) for rtt)."""
    ctx = multiprocessing.get_context("spawn")
    tmpdir = tempfile.mkdtemp(prefix="aioipc-bench-shm-")
    shm_base, ice_prefix = run.next_names()
    procs: list[Any] = []
    owned: list[Any] = []
    reports: dict[str, dict[str, Any]] = {}
    try:
        res_a, res_b, parent_copies = _prepare(impl.key, test, tmpdir, shm_base, ice_prefix, ctx)
        ctl_a, ctl_b = ctx.Pipe(duplex=True)
        out_a_r, out_a_w = ctx.Pipe(duplex=False)
        out_b_r, out_b_w = ctx.Pipe(duplex=False)
        owned += [ctl_a, ctl_b, out_a_r, out_a_w, out_b_r, out_b_w]
        cpu_a, cpu_b = _pin_cpus(run.pin)
        for role, res, ctl, out, cpu in (
            ("a", res_a, ctl_a, out_a_w, cpu_a),
            ("b", res_b, ctl_b, out_b_w, cpu_b),
        ):
            spec = _Spec(impl.key, test, role, res, counts, ctl, cpu)
            proc = ctx.Process(target=_child, args=(spec, out), daemon=True)
            proc.start()
            procs.append(proc)
        for conn in (ctl_a, ctl_b, out_a_w, out_b_w):
            conn.close()  # a crashed child shows as end of stream
        del parent_copies  # the children have their own handles to the queues

        names = {"a": "receiver/echoer", "b": "sender/pinger"}
        pending = {out_a_r: ("a", procs[0]), out_b_r: ("b", procs[1])}
        deadline = time.monotonic() + timeout
        while pending:
            ready = wait_connections(list(pending), timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                raise MeasurementError(f"timed out after {timeout:g} s")
            for done in ready:
                assert isinstance(done, Connection)
                role, proc = pending.pop(done)
                try:
                    report = done.recv()
                except EOFError:
                    proc.join(1)
                    raise MeasurementError(
                        f"the {names[role]} process died without a result "
                        f"(exit code {proc.exitcode})"
                    ) from None
                if not report["ok"]:
                    raise MeasurementError(f"{names[role]} failed:\n{report['error']}")
                reports[role] = report
    finally:
        for conn in owned:
            conn.close()
        for proc in procs:
            # after both reports the children are exiting; otherwise stop them now
            _stop(proc, 5 if len(reports) == 2 else 0)
        left = _remove_dev_shm(shm_base) + _remove_dev_shm(ice_prefix)
        if left:
            run.left_behind.setdefault(f"{impl.key}/{test}", []).extend(left)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return _check_reports(test, counts, reports["a"], reports["b"])


def _check_reports(test: str, counts: Counts, a: dict[str, Any], b: dict[str, Any]) -> Any:
    if test == "rtt":
        expected = counts.rtt_warmup + counts.rtt_count
        if a["echoed"] != expected:
            raise MeasurementError(f"echoed {a['echoed']} messages, expected {expected}")
        return _rtt_stats(b["samples_ns"])
    if test == "idle-cpu":
        return a["cpu_s"] / a["wall_s"]
    count, size, _ = _test_params(test, counts)
    if not a["received"] == b["sent"] == count:
        raise MeasurementError(f"sent {b['sent']}, received {a['received']}, expected {count}")
    seconds = a["elapsed_ns"] / 1e9
    return count / seconds if test.startswith("64B") else count * size / seconds / 1e9


def _rtt_stats(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p99 = ordered[max(math.ceil(0.99 * len(ordered)) - 1, 0)]
    return statistics.median(ordered) / 1000, p99 / 1000


def _floor_exe(run: _Run) -> str:
    """floor.c (beside this module) compiled once per run into a temporary directory."""
    if run.floor_exe is not None:
        return run.floor_exe
    if run.floor_error is not None:
        raise MeasurementError(run.floor_error)
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")
    run.floor_dir = tempfile.mkdtemp(prefix="aioipc-bench-floor-")
    exe = os.path.join(run.floor_dir, "floor")
    proc = subprocess.run(
        ["gcc", "-O2", "-o", exe, source], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        run.floor_error = f"gcc failed:\n{proc.stderr}"
        raise MeasurementError(run.floor_error)
    run.floor_exe = exe
    return exe


def _measure_floor(impl: Impl, counts: Counts, timeout: float, run: _Run) -> Any:
    cpu_a, cpu_b = _pin_cpus(run.pin)
    if impl.kind == "py":
        mode = "rtt-blocking" if impl.key == "py-eventfd" else "rtt-asyncio"
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.py")
        args = [sys.executable, script, mode, str(counts.rtt_warmup), str(counts.rtt_count)]
        if cpu_a is not None:
            args += [str(cpu_b), str(cpu_a)]  # pinger, echoer
        return _run_floor(impl, args, timeout)
    exe = _floor_exe(run)
    if impl.key == "c-eventfd":
        args = [exe, "rtt", str(counts.rtt_warmup), str(counts.rtt_count)]
        if cpu_a is not None:
            args += [str(cpu_b), str(cpu_a)]  # pinger, echoer
    else:
        args = [exe, "memcpy", str(BIG), str(10 * counts.big_count)]
        if cpu_a is not None:
            args.append(str(cpu_a))
    return _run_floor(impl, args, timeout)


def _run_floor(impl: Impl, args: list[str], timeout: float) -> Any:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        raise MeasurementError(f"{' '.join(args[1:])} failed ({proc.returncode}): {proc.stderr}")
    values = dict(line.split("=", 1) for line in proc.stdout.split())
    if "rtt" in impl.tests:
        return float(values["rtt_median_us"]), float(values["rtt_p99_us"])
    return float(values["gb_per_s"])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _unavailable(impl: Impl, test: str | None = None) -> str | None:
    """Why this implementation (or this test of it) cannot run here, or None."""
    key = impl.key
    try:
        if key in _SHM_IMPLS:
            try:
                shm = importlib.import_module("aioipc.shm")
            except ModuleNotFoundError as exc:
                if exc.name in ("aioipc.shm", "aioipc"):
                    return "skipped: aioipc.shm is not there (yet)"
                raise
            needed: dict[str, tuple[str, ...]] = {
                "ShmSender": ("open",),
                "ShmReceiver": ("create",),
            }
            if key in _ZERO_COPY_RECEIVE:
                needed = {
                    "ShmSender": ("open", "reserve"),
                    "ShmReceiver": ("create", "receive_view"),
                }
            if test == "64B-batched":
                needed = {
                    "ShmSender": ("open", "send_many"),
                    "ShmReceiver": ("create", "receive_many"),
                }
            for cls, attrs in needed.items():
                missing = [a for a in attrs if not hasattr(getattr(shm, cls, None), a)]
                if missing:
                    return f"skipped: aioipc.shm.{cls} has no {', '.join(missing)}"
        elif key == "aioipc-unix":
            unix = importlib.import_module("aioipc.unix")
            if not (hasattr(unix, "listen") and hasattr(unix, "connect")):
                return "skipped: aioipc.unix has no listen/connect"
        elif key == "pyzmq":
            importlib.import_module("zmq.asyncio")
        elif key == "faster-fifo":
            importlib.import_module("faster_fifo")
        elif key == "iceoryx2":
            importlib.import_module("iceoryx2")
        elif impl.kind == "py" and not hasattr(os, "eventfd"):
            return "skipped: os.eventfd needs Python 3.10+ on Linux"
        elif impl.kind == "c" and shutil.which("gcc") is None:
            return "skipped: no gcc to build the C floor (floor.c)"
    except ImportError as exc:
        return f"skipped: not installed ({exc}); pip install 'aioipc[bench]'"
    return None


def select(only: Sequence[str] | None) -> list[tuple[Impl, list[str]]]:
    """(implementation, tests) chosen by shell patterns over ``impl`` or ``impl/test``."""
    if not only:
        return [(impl, list(impl.tests)) for impl in IMPLS]
    chosen: dict[str, set[str]] = {}
    for raw in only:
        pattern = raw.strip()
        if not pattern:
            continue
        hits = 0
        for impl in IMPLS:
            for test in impl.tests:
                if fnmatch.fnmatchcase(impl.key, pattern) or fnmatch.fnmatchcase(
                    f"{impl.key}/{test}", pattern
                ):
                    chosen.setdefault(impl.key, set()).add(test)
                    hits += 1
        if not hits:
            known = ", ".join(f"{i.key}/{{{','.join(i.tests)}}}" for i in IMPLS)
            raise ValueError(f"nothing matches {raw!r}; known: {known}")
    return [(i, [t for t in i.tests if t in chosen[i.key]]) for i in IMPLS if i.key in chosen]


def _snapshot() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {"/dev/shm": _dev_shm("")}
    try:
        entries["/tmp/iceoryx2"] = sorted(os.listdir("/tmp/iceoryx2"))
    except OSError:
        entries["/tmp/iceoryx2"] = []
    return entries


def run_benchmarks(
    quick: bool = False,
    only: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    rounds: int | None = None,
    timeout: float | None = None,
    pin: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark; a dict with ``rows`` (one per implementation), ``ratios``,
    ``cleanup`` and ``counts``."""
    name = __name__
    if name not in ("__main__", "__mp_main__") and importlib.util.find_spec(name) is None:
        raise RuntimeError(f"{name!r} must be importable by name in a fresh process (spawn)")
    counts = QUICK if quick else FULL
    if rounds is not None:
        counts = Counts(**{**asdict(counts), "rounds": max(1, rounds)})
    limit = timeout if timeout is not None else (60.0 if quick else 180.0)
    plan = select(only)
    before = _snapshot()
    _pin_cpus(pin)  # validate before starting anything
    run = _Run(tag=f"{os.getpid()}", pin=pin)
    rows: dict[str, dict[str, Any]] = {}
    work: list[tuple[Impl, str]] = []
    for impl, tests in plan:
        row: dict[str, Any] = {
            "key": impl.key,
            "name": impl.name,
            "tests": tests,
            "skipped": {},
            "errors": {},
            "rounds": {t: [] for t in tests},
            "values": {},
            "rtt_p99_us": None,
        }
        rows[impl.key] = row
        for test in tests:
            note = _unavailable(impl, test)
            if note is None:
                work.append((impl, test))
            else:
                row["skipped"][test] = note
    total = counts.rounds * len(work)
    done = 0
    try:
        for round_no in range(counts.rounds):
            # Alternate the order so that slow drift in machine load hits everyone alike.
            order = work if round_no % 2 == 0 else list(reversed(work))
            for impl, test in order:
                done += 1
                row = rows[impl.key]
                if test in row["errors"]:
                    continue
                if progress is not None:
                    progress(
                        f"[{done}/{total}] round {round_no + 1}/{counts.rounds}: {impl.key} {test}"
                    )
                try:
                    if impl.kind in ("c", "py"):
                        value = _measure_floor(impl, counts, limit, run)
                    else:
                        value = _measure_pair(impl, test, counts, limit, run)
                except MeasurementError as exc:
                    row["errors"][test] = str(exc)
                    if progress is not None:
                        lines = str(exc).strip().splitlines()
                        progress(f"    error: {lines[-1] if lines else exc!r}")
                    continue
                row["rounds"][test].append(value)
    finally:
        run.close()
    for row in rows.values():
        for test, values in row["rounds"].items():
            if test in row["errors"] or not values:
                continue
            if test == "rtt":
                row["values"]["rtt"] = statistics.median(v[0] for v in values)
                row["rtt_p99_us"] = statistics.median(v[1] for v in values)
            else:
                row["values"][test] = statistics.median(values)
    after = _snapshot()
    ours = ("aioipc-bench-", "aioipcb")
    cleanup = {
        "left_behind_and_removed": run.left_behind,
        "new_entries_still_there": {
            where: [n for n in after[where] if n not in before[where] and n.startswith(ours)]
            for where in after
        },
        "new_in_tmp_iceoryx2": [
            n for n in after["/tmp/iceoryx2"] if n not in before["/tmp/iceoryx2"]
        ],
    }
    result: dict[str, Any] = {
        "counts": asdict(counts),
        "pin": pin,
        "rows": list(rows.values()),
        "cleanup": cleanup,
    }
    result["ratios"] = compute_ratios(result["rows"])
    return result


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

PYTHON_PEERS = ("pyzmq", "mp-queue", "faster-fifo", "iceoryx2")

#: (label, mine, peers, test, kind, target): kind "rate" (mine / best peer, higher is
#: better), "time" (mine / best peer, lower is better) or "value" (mine alone).
RATIOS: tuple[tuple[str, str, tuple[str, ...], str, str, float | None], ...] = (
    ("1MiB: aioipc-shm-zc / iceoryx2", "aioipc-shm-zc", ("iceoryx2",), "1MiB", "rate", 1.0),
    (
        "1MiB: aioipc-shm-zc-spin / iceoryx2",
        "aioipc-shm-zc-spin",
        ("iceoryx2",),
        "1MiB",
        "rate",
        1.0,
    ),
    ("1MiB: aioipc-shm / aioipc-unix", "aioipc-shm", ("aioipc-unix",), "1MiB", "rate", 10.0),
    ("1MiB: aioipc-shm-zc / aioipc-unix", "aioipc-shm-zc", ("aioipc-unix",), "1MiB", "rate", 10.0),
    (
        "1MiB: aioipc-shm-1copy / aioipc-unix",
        "aioipc-shm-1copy",
        ("aioipc-unix",),
        "1MiB",
        "rate",
        10.0,
    ),
    ("64B-batched: aioipc-shm msgs/s", "aioipc-shm", (), "64B-batched", "value", 1_000_000),
    ("64B: aioipc-shm / best Python peer", "aioipc-shm", PYTHON_PEERS, "64B", "rate", 1.0),
    ("rtt: aioipc-shm / C eventfd floor", "aioipc-shm", ("c-eventfd",), "rtt", "time", 1.3),
    (
        "rtt: asyncio floor / C eventfd floor",
        "asyncio-eventfd",
        ("c-eventfd",),
        "rtt",
        "time",
        None,
    ),
    ("rtt: Python blocking floor / C floor", "py-eventfd", ("c-eventfd",), "rtt", "time", None),
    ("rtt: aioipc-shm / asyncio floor", "aioipc-shm", ("asyncio-eventfd",), "rtt", "time", None),
    ("rtt: aioipc-shm-spin / iceoryx2", "aioipc-shm-spin", ("iceoryx2",), "rtt", "time", 1.5),
    (
        "idle CPU: aioipc-shm-spin receiver, s/s",
        "aioipc-shm-spin",
        (),
        "idle-cpu",
        "value",
        None,
    ),
    (
        "idle CPU: aioipc-shm receiver (no spin), s/s",
        "aioipc-shm",
        (),
        "idle-cpu",
        "value",
        None,
    ),
)


def compute_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {row["key"]: row for row in rows}
    out = []
    for label, mine, peers, test, kind, target in RATIOS:
        if mine not in by_key or test not in by_key[mine]["tests"]:
            continue  # not selected in this run
        if peers and not any(p in by_key and test in by_key[p]["tests"] for p in peers):
            continue
        value = by_key[mine]["values"].get(test)
        entry: dict[str, Any] = {
            "label": label,
            "kind": kind,
            "target": target,
            "value": None,
            "peer": None,
            "met": None,
        }
        if kind == "value":
            entry["value"] = value
        else:
            candidates = [
                (by_key[p]["values"][test], p)
                for p in peers
                if p in by_key and by_key[p]["values"].get(test)
            ]
            if value and candidates:
                best, entry["peer"] = (min if kind == "time" else max)(candidates)
                entry["value"] = value / best
        if entry["value"] is not None and target is not None:
            low_is_good = kind == "time"
            entry["met"] = entry["value"] <= target if low_is_good else entry["value"] >= target
        out.append(entry)
    return out


def _fmt(test: str, value: float | None) -> str:
    if value is None:
        return "-"
    if test == "rtt":
        return f"{value:,.1f}"
    if test == "1MiB":
        return f"{value:,.2f}"
    if test == "idle-cpu":
        return f"{value:.4f}"
    return f"{value:,.0f}"


def _grid(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    header = [
        "implementation",
        "RTT µs",
        "RTT p99 µs",
        "64B msgs/s",
        "64B-batched msgs/s",
        "1MiB GB/s",
        "idle CPU s/s",
    ]
    table = [header]
    notes: list[str] = []
    for row in result["rows"]:
        cells = [f"{row['name']} [{row['key']}]"]
        for test in ("rtt", "rtt-p99", "64B", "64B-batched", "1MiB", "idle-cpu"):
            base = "rtt" if test == "rtt-p99" else test
            if base not in row["tests"]:
                cells.append("")
            elif base in row["errors"]:
                cells.append("error")
            elif base in row["skipped"]:
                cells.append("skipped")
            elif test == "rtt-p99":
                cells.append(_fmt("rtt", row["rtt_p99_us"]))
            else:
                cells.append(_fmt(test, row["values"].get(test)))
        table.append(cells)
        for note in row["skipped"].values():  # one line per implementation and reason
            notes.append(f"{row['key']}: {note}")
        for test, err in row["errors"].items():
            lines = err.strip().splitlines()
            notes.append(f"{row['key']} {test}: error: {lines[-1] if lines else err}")
    compact = list(dict.fromkeys(notes))
    counts = result["counts"]
    compact.append(
        f"rtt: {counts['rtt_count']} round trips after {counts['rtt_warmup']} warm-up; "
        f"64B: {counts['small_count']:,} msgs; 64B-batched: {counts['batched_count']:,} msgs "
        f"in batches of {BATCH}; 1MiB: {counts['big_count']:,} msgs; median of "
        f"{counts['rounds']} round(s); two fresh processes per measurement, "
        + {None: "placed by the scheduler.", "split": "pinned to two CPUs."}.get(
            result["pin"], "pinned to one CPU."
        )
    )
    ratio_rows = [["ratio", "value", "target", "met"]]
    for entry in result["ratios"]:
        value, target, kind = entry["value"], entry["target"], entry["kind"]
        if value is None:
            shown = "n/a"
        elif kind == "value":
            shown = f"{value:,.0f}" if value >= 100 else f"{value:.4f}"
        else:
            shown = f"{value:.2f}x"
            if entry["peer"] and "best" in entry["label"]:
                shown += f" ({entry['peer']})"
        if target is None:
            tgt = ""
        elif kind == "value":
            tgt = f">= {target:,.0f}"
        else:
            tgt = f"{'<=' if kind == 'time' else '>='} {target:g}x"
        met = {None: "", True: "yes", False: "NO"}[entry["met"]]
        if value is None and target is not None:
            met = "-"
        ratio_rows.append([entry["label"], shown, tgt, met])
    cleanup = result["cleanup"]
    clean = []
    for what, names in cleanup["left_behind_and_removed"].items():
        clean.append(f"left behind by {what} (removed by the bench): {', '.join(names)}")
    for where, names in cleanup["new_entries_still_there"].items():
        if names:
            clean.append(f"STILL in {where} after the run: {', '.join(names)}")
    if cleanup["new_in_tmp_iceoryx2"]:
        clean.append(f"new in /tmp/iceoryx2 (not ours?): {cleanup['new_in_tmp_iceoryx2']}")
    if not any(cleanup["new_entries_still_there"].values()):
        clean.append("cleanup: no entries of this run left in /dev/shm or /tmp/iceoryx2.")
    parts = [_grid(table), "\n".join(compact), _grid(ratio_rows), "\n".join(clean)]
    return "\n\n".join(parts)


def _environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "versions": {
            dist: _version(dist) for dist in ("aioipc", "anyio", "pyzmq", "faster-fifo", "iceoryx2")
        },
        "gcc": shutil.which("gcc"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, one round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument(
        "--only", metavar="PATTERN[,...]", help="shell patterns over impl or impl/test"
    )
    parser.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    parser.add_argument("--timeout", type=float, help="seconds per measurement before a kill")
    parser.add_argument(
        "--pin",
        choices=("none", "split", "same"),
        default="none",
        help="CPU placement of the two processes: scheduler's choice (default), two "
        "different CPUs, or one CPU",
    )
    parser.add_argument("--list", action="store_true", help="list implementations and tests")
    args = parser.parse_args(argv)
    if args.list:
        for impl in IMPLS:
            note = _unavailable(impl)
            print(
                f"{impl.key:16} {','.join(impl.tests):32} {impl.name}"
                + (f"  ({note})" if note else "")
            )
        return 0
    only = [s for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        select(only)
    except ValueError as exc:
        parser.error(str(exc))
    env = _environment()
    print(
        f"python {env['python']}, {env['cpus']} CPUs, load average {env['loadavg'][0]:.2f}",
        file=sys.stderr,
    )
    started = time.monotonic()
    try:
        result = run_benchmarks(
            args.quick,
            only,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            rounds=args.rounds,
            timeout=args.timeout,
            pin=None if args.pin == "none" else args.pin,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    print()
    print(format_report(result))
    print(f"\n{elapsed:.0f} s; load average {os.getloadavg()[0]:.2f} at the end.")
    if args.json:
        document = {"environment": env, "quick": args.quick, "elapsed_s": elapsed, **result}
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    return 1 if any(row["errors"] for row in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
