"""The shared-memory ring (``aioipc.shm``: ShmSender/ShmReceiver) on real kernel objects.

Peers are real processes: ``tests/peers/ring_peer.py`` started with
:func:`anyio.open_process`, talking to the test through lines on stdin/stdout. Nothing
waits by sleeping: every wait is on a message, an exception, an event, a peer's line or
its exit, under ``anyio.fail_after``. The random pauses in the stress test pace the two
sides (so both often find the ring full or empty and sleep); nothing waits on them.

Every ring has a unique name from the ``new_ring`` fixture, which afterwards removes
whatever is left of it (``/dev/shm/NAME``, ``NAME.bell-data``, ``NAME.bell-space``) and
fails the test if anything was: every test cleans up after itself.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import gc
import hashlib
import importlib.util
import json
import mmap
import os
import random
import resource
import signal
import stat
import struct
import sys
import termios
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)
from anyio.lowlevel import checkpoint

import aioipc
from aioipc import (
    IPCNotFoundError,
    IPCPermissionError,
    MessageTooLargeError,
    ProtocolError,
)
from aioipc.shm import ShmReceiver, ShmSender, is_stale

from ._assert import refused, same
from ._peer import Peer, spawn
from ._procs import CHILD_LIMIT, child, read_line, run_code, tell
from ._rings import existing, fifo_outcomes, planted_fifo, ring_files, write_at

PYTHON = sys.executable
PEER = Path(__file__).parent / "peers" / "ring_peer.py"
#: Header fields (byte offsets into /dev/shm/NAME), as aioipc/_ring.py documents them.
OFF_MAGIC, OFF_VERSION, OFF_CAPACITY, OFF_DATA_OFF, OFF_HEAD, OFF_TAIL = 0, 8, 16, 24, 64, 128
HEADER = 4096
MAGIC = b"aioipcRG"


def _load_peer_module() -> Any:
    spec = importlib.util.spec_from_file_location("ring_peer", PEER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ring_peer = _load_peer_module()
sized_messages: Callable[[int], list[bytes]] = _ring_peer.sized_messages
pads_needed: Callable[[list[int], int], int] = _ring_peer.pads_needed
digest: Callable[[list[bytes]], str] = _ring_peer.digest
seq_message: Callable[[int], bytes] = _ring_peer.seq_message
tagged: Callable[[int, int], bytes] = _ring_peer.tagged
untag: Callable[[bytes], tuple[int, int]] = _ring_peer.untag
big_block: Callable[[int, int], bytes] = _ring_peer.big_block
pause: Callable[[random.Random], Awaitable[None]] = _ring_peer.pause


# --------------------------------------------------------------------------- helpers


def run_peer(*args: object) -> contextlib.AbstractAsyncContextManager[Peer]:
    """Start ``ring_peer.py ARGS``; it is killed if it still runs at the end, and reaped."""
    return spawn([PYTHON, str(PEER), *map(str, args)])


@dataclass
class Outcome:
    """What a call run in another task did."""

    value: object = None
    error: BaseException | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)
    at: float = 0.0


async def capture(outcome: Outcome, call: Callable[[], Awaitable[object]]) -> None:
    try:
        outcome.value = await call()
    except Exception as exc:
        outcome.error = exc
    outcome.at = time.monotonic()
    outcome.finished.set()


@contextlib.asynccontextmanager
async def parked(call: Callable[[], Awaitable[object]]) -> AsyncIterator[Outcome]:
    """Run ``call`` in a task; enter once it waits (fails if it finished instead).
    On exit the task is cancelled if it still runs."""
    outcome = Outcome()
    async with anyio.create_task_group() as tg:
        tg.start_soon(capture, outcome, call)
        await anyio.wait_all_tasks_blocked()
        assert not outcome.finished.is_set(), f"did not wait: {outcome.value!r} {outcome.error!r}"
        yield outcome
        tg.cancel_scope.cancel()


async def finished_within(outcome: Outcome, since: float, limit: float) -> float:
    """Wait (bounded) for ``outcome``; return how long after ``since`` it finished."""
    with anyio.fail_after(max(5.0, 2 * limit)):
        await outcome.finished.wait()
    return outcome.at - since


@contextlib.contextmanager
def header(name: str) -> Iterator[mmap.mmap]:
    """The ring's header page, mapped writable by this test (not through aioipc)."""
    with open("/dev/shm" + name, "r+b") as f, mmap.mmap(f.fileno(), HEADER) as mm:
        yield mm


def peek(name: str, fmt: str, offset: int) -> int:
    with open("/dev/shm" + name, "rb") as f:
        f.seek(offset)
        value: int = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
        return value


def poke(name: str, fmt: str, offset: int, value: Any) -> None:
    with open("/dev/shm" + name, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        struct.pack_into(fmt, mm, offset, value)


def filler(i: int) -> bytes:
    """Fill message ``i``: 24 bytes (32 in the ring), all the same size, so a ring that
    took no more of them takes no other message of 24 bytes either."""
    return i.to_bytes(8, "little") * 3


def fill(tx: ShmSender) -> list[bytes]:
    """send_nowait ``filler(0), filler(1), ...`` until the ring is full; return them."""
    sent = []
    while True:
        m = filler(len(sent))
        try:
            tx.send_nowait(m)
        except WouldBlock:
            return sent
        sent.append(m)


def drain(rx: ShmReceiver) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(rx.receive_nowait())
        except WouldBlock:
            return got


async def send_until_broken(tx: ShmSender) -> None:
    """Keep sending (waiting when the ring is full) until a send raises."""
    while True:
        try:
            tx.send_nowait(b"x" * 8)
        except WouldBlock:
            await tx.send(b"x" * 8)
        await checkpoint()


class Abandon(Exception):
    """Raised inside a reserve() block to abandon the message."""


async def reserve_and_abandon(tx: ShmSender, data: bytes) -> None:
    async with tx.reserve(len(data)) as view:
        view[:] = data
        raise Abandon


def plant_file(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


# The Channel contract, the busy rule and pacing: tests/test_conformance.py (shm-ring).


# =================================================================== cross-process


@pytest.mark.asyncio
async def test_peer_sends_every_size_parent_receives(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    capacity = 64 << 10
    want = sized_messages(capacity)
    sizes = [len(m) for m in want]
    top = capacity // 2 - 8
    assert 0 in sizes
    assert max(sizes) == top
    assert pads_needed(sizes, capacity) >= 3  # the writer must pad the end, several times
    async with ShmReceiver.create(name, capacity) as rx, run_peer("send-sizes", name) as peer:
        assert rx.max_message_size == top
        await peer.expect("ready")
        got = []
        with anyio.fail_after(20):
            async for m in rx:  # until EndOfStream: the peer closed
                got.append(m)
        await peer.expect(f"done {len(want)}")
        await peer.finish()
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == len(w), f"message {i}: {len(g)} bytes, want {len(w)}"
        same(g, w)
    assert existing(name) == []  # the creator's aclose removed the ring


@pytest.mark.asyncio
async def test_parent_sends_every_size_peer_receives(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    capacity = 64 << 10
    want = sized_messages(capacity)
    async with ShmSender.create(name, capacity) as tx, run_peer("recv-digest", name) as peer:
        await peer.expect("ready")
        with anyio.fail_after(20):
            for m in want:
                await tx.send(m)
        await tx.aclose()  # end of stream for the peer (and removes the files)
        await peer.expect(f"digest {len(want)} {digest(want)}")
        await peer.finish()
    assert existing(name) == []


# =========================================================================== stress

STRESS_COUNT = 1_000_000


@pytest.mark.asyncio
async def test_stress_a_million_messages_no_lost_wakeup(new_ring: Callable[[], str]) -> None:
    """A small ring (4096 bytes, ~150 messages) between two processes, both pausing at
    random: each side keeps finding the ring empty or full and going to sleep on its
    doorbell. A lost wake-up is a hang, caught by fail_after."""
    name = new_ring()
    rnd = random.Random(20240611)
    started = time.monotonic()
    async with (
        ShmReceiver.create(name, 4096) as rx,
        run_peer("stress-send", name, STRESS_COUNT, 7) as peer,
    ):
        await peer.expect("ready")
        expected = 0
        with anyio.fail_after(50):
            while expected < STRESS_COUNT:
                n = rnd.randint(1, 600)
                if rnd.random() < 0.5:
                    for _ in range(min(n, STRESS_COUNT - expected)):
                        m = await rx.receive()
                        if m != seq_message(expected):
                            pytest.fail(f"message {expected}: got {m[:16]!r} ({len(m)} bytes)")
                        expected += 1
                else:
                    for m in await rx.receive_many(n):
                        if m != seq_message(expected):
                            pytest.fail(f"message {expected}: got {m[:16]!r} ({len(m)} bytes)")
                        expected += 1
                await pause(rnd)
            with pytest.raises(EndOfStream):
                await rx.receive()
        await peer.expect(f"done {STRESS_COUNT}")
        await peer.finish()
    assert expected == STRESS_COUNT
    print(f"{STRESS_COUNT} messages in {time.monotonic() - started:.1f} s")


# ============================================================================ kills


@pytest.mark.asyncio
async def test_sender_killed_wakes_waiting_receiver(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, run_peer("send-hang", name) as peer:
        await peer.expect("ready")
        await peer.tell("send 3")
        await peer.expect("sent 3")
        assert [rx.receive_nowait() for _ in range(3)] == [seq_message(s) for s in range(3)]
        async with parked(rx.receive) as outcome:
            killed = time.monotonic()
            peer.proc.kill()
            elapsed = await finished_within(outcome, killed, 1.0)
        assert isinstance(outcome.error, BrokenResourceError), outcome
        assert "died" in str(outcome.error)
        assert elapsed < 1.0, f"the receiver noticed the dead sender after {elapsed:.3f} s"
        # and stays broken
        with pytest.raises(BrokenResourceError):
            rx.receive_nowait()
        with anyio.fail_after(1), pytest.raises(BrokenResourceError):
            await rx.receive()


@pytest.mark.asyncio
async def test_sender_killed_its_messages_come_first(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, run_peer("send-hang", name) as peer:
        await peer.expect("ready")
        await peer.tell("send 5")
        await peer.expect("sent 5")
        await peer.kill()
        with anyio.fail_after(1):
            got = [await rx.receive() for _ in range(3)]
            got += await rx.receive_many()
            with pytest.raises(BrokenResourceError):
                await rx.receive()
        assert got == [seq_message(s) for s in range(5)]


@pytest.mark.asyncio
async def test_receiver_killed_wakes_sender_on_full_ring(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmSender.create(name, 4096) as tx, run_peer("recv-hang", name) as peer:
        await peer.expect("ready")
        await tx.send(seq_message(0))
        await tx.send(seq_message(1))
        await peer.tell("recv 2")
        await peer.expect("got 0 1")
        sent = fill(tx)
        assert len(sent) > 50
        async with parked(lambda: tx.send(filler(999_999))) as outcome:
            killed = time.monotonic()
            peer.proc.kill()
            elapsed = await finished_within(outcome, killed, 1.0)
        assert isinstance(outcome.error, BrokenResourceError), outcome
        assert f"pid {peer.pid}" in str(outcome.error)
        assert elapsed < 1.0, f"the sender noticed the dead receiver after {elapsed:.3f} s"
        # Later sends fail too (the ring is still full: they wait, and find it dead).
        with anyio.fail_after(1), pytest.raises(BrokenResourceError):
            await send_until_broken(tx)


@pytest.mark.asyncio
async def test_send_after_receiver_killed_is_broken(new_ring: Callable[[], str]) -> None:
    """A sender that never waits checks its receiver at most 4x/second: within 1 s."""
    name = new_ring()
    async with ShmSender.create(name, 1 << 20) as tx, run_peer("recv-hang", name) as peer:
        await peer.expect("ready")
        await tx.send(seq_message(0))
        await peer.tell("recv 1")
        await peer.expect("got 0")
        killed = time.monotonic()
        await peer.kill()
        with anyio.fail_after(1), pytest.raises(BrokenResourceError) as info:
            await send_until_broken(tx)
        elapsed = time.monotonic() - killed
        assert elapsed < 1.0
        assert "died" in str(info.value)
        # Every kind of send fails within 1 s of the kill (each checks the receiver at
        # most every 0.25 s while it need not wait).
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: tx.send(b"again"),
            lambda: tx.send_many([b"a", b"b"]),
            lambda: reserve_and_abandon(tx, b"r"),
        ]
        for call in calls:
            with anyio.fail_after(killed + 1 - time.monotonic()):
                while True:
                    try:
                        await call()
                    except BrokenResourceError:
                        break
                    except Abandon:
                        pass
                    await checkpoint()


@pytest.mark.asyncio
async def test_sender_stays_broken_once_it_saw_a_dead_receiver(
    new_ring: Callable[[], str],
) -> None:
    name = new_ring()
    async with ShmSender.create(name, 1 << 20) as tx, run_peer("recv-hang", name) as peer:
        await peer.expect("ready")
        await peer.kill()
        # The first send after the death checks the receiver at once and raises...
        with pytest.raises(BrokenResourceError, match="died"):
            await tx.send(b"first")
        # ... and the next ones should too, not go into a ring nobody will read.
        with pytest.raises(BrokenResourceError):
            tx.send_nowait(b"after the receiver was known dead")
        with pytest.raises(BrokenResourceError):
            await tx.send(b"after the receiver was known dead")


@pytest.mark.asyncio
async def test_killed_creator_leaves_a_stale_ring(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with run_peer("create-hang", name) as peer:
        await peer.expect("ready")
        assert existing(name) == list(ring_files(name))
        assert not is_stale(name)
        tx = ShmSender.open(name)
        try:
            await peer.kill()
            assert not is_stale(name)  # our sender is still attached
        finally:
            await tx.aclose()
        assert is_stale(name)
        assert existing(name) == list(ring_files(name))  # the dead creator removed nothing
        aioipc.shm.unlink(name)
        assert existing(name) == []
        with pytest.raises(IPCNotFoundError):
            is_stale(name)
        with pytest.raises(IPCNotFoundError):
            aioipc.shm.unlink(name)


# =========================================================================== faults


@pytest.mark.asyncio
async def test_corrupt_header_refused_on_open(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    capacity = 4096
    async with ShmSender.create(name, capacity) as tx:
        cases: list[tuple[str, int, bytes, type[Exception], str]] = [
            ("bad magic", OFF_MAGIC, b"notaring", ProtocolError, "bad magic"),
            ("zero magic", OFF_MAGIC, bytes(8), IPCNotFoundError, "still being created"),
            ("version 2", OFF_VERSION, struct.pack("<I", 2), ProtocolError, "version 2"),
            ("capacity", OFF_CAPACITY, struct.pack("<Q", 8192), ProtocolError, "capacity"),
            ("data offset", OFF_DATA_OFF, struct.pack("<Q", 0), ProtocolError, "data offset"),
            (
                "head beyond capacity",
                OFF_HEAD,
                struct.pack("<Q", capacity + 8),
                ProtocolError,
                "beyond the capacity",
            ),
            ("tail beyond head", OFF_TAIL, struct.pack("<Q", 8), ProtocolError, "apart"),
        ]
        for what, offset, value, error, text in cases:
            with header(name) as mm:
                saved = mm[offset : offset + len(value)]
                mm[offset : offset + len(value)] = value
            try:
                with pytest.raises(error, match=text):
                    ShmReceiver.open(name)
            except BaseException as exc:
                exc.add_note(f"corruption: {what}")
                raise
            finally:
                with header(name) as mm:
                    mm[offset : offset + len(value)] = saved
        # Restored, it works: none of the refused opens left a claim behind.
        async with ShmReceiver.open(name) as rx:
            await tx.send(b"fine")
            assert rx.receive_nowait() == b"fine"
    # A region too small to be a ring.
    small = new_ring()
    plant_file("/dev/shm" + small, 100)
    try:
        with pytest.raises(ProtocolError, match="not a ring"):
            ShmReceiver.open(small)
    finally:
        os.unlink("/dev/shm" + small)


@pytest.mark.asyncio
async def test_corruption_after_attach_raises_protocol_error(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    capacity = 4096
    async with ShmReceiver.create(name, capacity) as rx, ShmSender.open(name) as tx:
        # head moved beyond the capacity
        await tx.send(b"hello")
        head = peek(name, "<Q", OFF_HEAD)
        poke(name, "<Q", OFF_HEAD, head + capacity + 8)
        with pytest.raises(ProtocolError, match="corrupt ring"):
            rx.receive_nowait()
        with anyio.fail_after(1), pytest.raises(ProtocolError, match="corrupt ring"):
            await rx.receive()
        poke(name, "<Q", OFF_HEAD, head)
        assert await rx.receive() == b"hello"

        # a record whose length overruns the published data, a bad kind, a bad pad
        await tx.send(b"abcdefgh")
        idx = peek(name, "<Q", OFF_TAIL) % capacity
        word = peek(name, "<Q", HEADER + idx)
        assert word == 8 | 1 << 32  # length 8, kind 1 (a message), as documented
        bad_words = [
            (10_000 | 1 << 32, "overruns"),
            (0xFFFFFFFF | 1 << 32, "overruns"),
            (8 | 7 << 32, "kind 7"),
            (8 | 2 << 32, "kind 2"),  # a pad that does not reach the end
        ]
        for bad, text in bad_words:
            poke(name, "<Q", HEADER + idx, bad)
            with pytest.raises(ProtocolError, match=text):
                rx.receive_nowait()
            with anyio.fail_after(1), pytest.raises(ProtocolError, match=text):
                await rx.receive()
            with anyio.fail_after(1), pytest.raises(ProtocolError, match=text):
                await rx.receive_many()
            with anyio.fail_after(1), pytest.raises(ProtocolError, match=text):
                async with rx.receive_view():
                    pass
        poke(name, "<Q", HEADER + idx, word)
        assert rx.receive_nowait() == b"abcdefgh"

        # the sender: a tail beyond its head, found when the ring looks full
        sent = fill(tx)
        head = peek(name, "<Q", OFF_HEAD)
        tail = peek(name, "<Q", OFF_TAIL)
        poke(name, "<Q", OFF_TAIL, head + 8)
        with pytest.raises(ProtocolError, match="beyond head"):
            tx.send_nowait(b"x")
        poke(name, "<Q", OFF_TAIL, tail)
        assert drain(rx) == sent


@pytest.mark.asyncio
async def test_second_receiver_and_second_sender_are_busy(new_ring: Callable[[], str]) -> None:
    one, two = new_ring(), new_ring()
    async with ShmSender.create(one, 4096) as tx, run_peer("recv-hang", one) as holder:
        await holder.expect("ready")
        with pytest.raises(BusyResourceError, match=f"another receiver \\(pid {holder.pid}\\)"):
            ShmReceiver.open(one)
        await holder.kill()  # the kernel drops a dead holder's claim
        async with ShmReceiver.open(one) as rx:
            await tx.send(b"mine now")
            assert rx.receive_nowait() == b"mine now"
    async with ShmReceiver.create(two, 4096) as rx, run_peer("send-hang", two) as holder:
        await holder.expect("ready")
        with pytest.raises(BusyResourceError, match=f"another sender \\(pid {holder.pid}\\)"):
            ShmSender.open(two)
        await holder.tell("send 1")
        await holder.expect("sent 1")
        await holder.finish()  # closes: the stream ended, the claim is free
        assert rx.receive_nowait() == seq_message(0)
        async with ShmSender.open(two) as tx2:
            await tx2.send(b"second sender")
        assert rx.receive_nowait() == b"second sender"


@pytest.mark.asyncio
async def test_message_too_large_names_capacity_sends_nothing(
    new_ring: Callable[[], str],
) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        top = 4096 // 2 - 8
        assert tx.max_message_size == rx.max_message_size == top == 2040
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: tx.send(bytes(top + 1)),
            lambda: tx.send_many([b"small", bytes(top + 1), b"after"]),
        ]
        for call in calls:
            with pytest.raises(MessageTooLargeError, match="capacity 4096") as info:
                await call()
            assert (info.value.size, info.value.limit) == (top + 1, top)
        with pytest.raises(MessageTooLargeError, match="capacity 4096"):
            tx.send_nowait(bytes(top + 1))
        with pytest.raises(MessageTooLargeError, match="capacity 4096"):
            async with tx.reserve(top + 1):
                pass
        with pytest.raises(WouldBlock):
            rx.receive_nowait()  # nothing was sent
        exact = bytes(range(256)) * 7 + bytes(top - 7 * 256)
        assert len(exact) == top
        await tx.send(exact)
        same(rx.receive_nowait(), exact)
        with pytest.raises(WouldBlock):
            rx.receive_nowait()


@pytest.mark.asyncio
async def test_bad_capacity_is_a_value_error(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    for capacity in (0, 8, 56, 60, 63, 65, 100, 4097, 4100, -8):
        for cls in (ShmReceiver, ShmSender):
            with pytest.raises(ValueError, match="multiple of 8"):
                cls.create(name, capacity)
            assert existing(name) == [], f"{cls.__name__}.create({capacity}) left files"
    # The smallest ring works.
    async with ShmReceiver.create(name, 64) as rx, ShmSender.open(name) as tx:
        assert rx.max_message_size == 24
        for m in (b"", b"x" * 24, b"y" * 17, b"z" * 24):
            await tx.send(m)
            assert await rx.receive() == m


@pytest.mark.asyncio
async def test_planted_doorbell_is_refused(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    bell_data = ring_files(name)[1]
    async with ShmReceiver.create(name, 4096):
        # A regular file where the doorbell FIFO should be.
        os.unlink(bell_data)
        plant_file(bell_data, 0)
        with pytest.raises(IPCPermissionError, match="not a FIFO"):
            ShmSender.open(name)
        os.unlink(bell_data)
        # A FIFO, but another user's.
        os.mkfifo(bell_data, 0o600)
        if os.geteuid() == 0:
            os.chown(bell_data, 65534, 65534)
            with pytest.raises(IPCPermissionError, match="owned by the ring's owner"):
                ShmSender.open(name)
    assert existing(name) == []  # the creator's close removed even the planted files


@pytest.mark.asyncio
async def test_planted_doorbell_symlink_is_a_permission_error(
    new_ring: Callable[[], str], tmp_path: Path
) -> None:
    name = new_ring()
    bell_data = ring_files(name)[1]
    decoy = tmp_path / "decoy"
    async with ShmReceiver.create(name, 4096):
        os.unlink(bell_data)
        os.mkfifo(decoy, 0o600)  # a FIFO of ours, so only the symlink itself is wrong
        try:
            os.symlink(decoy, bell_data)
            with pytest.raises(aioipc.IPCError, match="bell-data") as info:
                ShmSender.open(name)
        finally:
            decoy.unlink()
    assert existing(name) == []
    assert isinstance(info.value, IPCPermissionError), repr(info.value)


@pytest.mark.asyncio
async def test_file_modes(new_ring: Callable[[], str]) -> None:
    def modes(name: str) -> list[int]:
        return [stat.S_IMODE(os.lstat(p).st_mode) for p in ring_files(name)]

    def kinds(name: str) -> list[bool]:
        region, data, space = (os.lstat(p).st_mode for p in ring_files(name))
        return [stat.S_ISREG(region), stat.S_ISFIFO(data), stat.S_ISFIFO(space)]

    old = os.umask(0o000)
    try:
        name = new_ring()
        async with ShmReceiver.create(name, 4096):
            assert modes(name) == [0o600] * 3
            assert kinds(name) == [True, True, True]
        os.umask(0o077)
        name = new_ring()
        async with ShmSender.create(name, 4096, mode=0o640):
            assert modes(name) == [0o640] * 3
        os.umask(0o000)
        name = new_ring()
        async with ShmReceiver.create(name, 4096, mode=0o640):
            assert modes(name) == [0o640] * 3
    finally:
        os.umask(old)


# =================================================================== multi-producer

MP_COUNT = 20_000


class Collector:
    """Receives everything from a ring in a task, until EndOfStream."""

    def __init__(self, rx: ShmReceiver) -> None:
        self.rx = rx
        self.got: list[bytes] = []
        self.per_sender: dict[int, int] = {}
        self.ended = anyio.Event()
        self._changed = anyio.Event()

    async def run(self) -> None:
        with contextlib.suppress(EndOfStream):
            while True:
                batch = await self.rx.receive_many()
                self.got.extend(batch)
                for m in batch:
                    self.per_sender[m[0]] = self.per_sender.get(m[0], 0) + 1
                self._changed.set()
        self.ended.set()

    async def until(self, condition: Callable[[], bool], seconds: float = 20) -> None:
        """Wait until ``condition()`` holds (checked after every batch received)."""
        with anyio.fail_after(seconds):
            while not condition():
                self._changed = anyio.Event()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def collecting(rx: ShmReceiver) -> AsyncIterator[Collector]:
    collector = Collector(rx)
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.run)
        yield collector
        tg.cancel_scope.cancel()


def by_sender(got: list[bytes]) -> dict[int, list[int]]:
    seqs: dict[int, list[int]] = {}
    for m in got:
        sender, seq = untag(m)
        if m != tagged(sender, seq):
            pytest.fail(f"message {seq} of sender {sender} is corrupt: {m!r}")
        seqs.setdefault(sender, []).append(seq)
    return seqs


async def end_stream(name: str) -> None:
    """Attach one more sender and end the stream (send_eof)."""
    async with ShmSender.open(name) as tx:
        tx.send_eof()


@pytest.mark.asyncio
async def test_multi_producer_every_message_once_in_order(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with (
        ShmReceiver.create(name, 16384, multi_producer=True) as rx,
        collecting(rx) as collector,
        contextlib.AsyncExitStack() as stack,
    ):
        peers = [
            await stack.enter_async_context(run_peer("mp-send", name, i, MP_COUNT))
            for i in (1, 2, 3)
        ]
        for peer in peers:
            await peer.expect("ready")
        for peer in peers:
            await peer.expect(f"done {MP_COUNT}", seconds=40)
            await peer.finish()
        await collector.until(lambda: len(collector.got) == 3 * MP_COUNT)
        assert not collector.ended.is_set()  # closing senders do not end the stream
        await end_stream(name)
        with anyio.fail_after(10):
            await collector.ended.wait()
    seqs = by_sender(collector.got)
    assert sorted(seqs) == [1, 2, 3]
    for sender, numbers in seqs.items():
        assert numbers == list(range(MP_COUNT)), f"sender {sender}: out of order or lost"
    assert len(collector.got) == 3 * MP_COUNT


@pytest.mark.asyncio
async def test_multi_producer_killed_senders_block_nobody(new_ring: Callable[[], str]) -> None:
    """One sender is killed while it holds the send lock (inside reserve()), with the
    others blocked on that lock; another is killed mid-run. The rest all arrive."""
    name = new_ring()
    count = 5000
    async with (
        ShmReceiver.create(name, 16384, multi_producer=True) as rx,
        collecting(rx) as collector,
        contextlib.AsyncExitStack() as stack,
    ):
        holder = await stack.enter_async_context(run_peer("mp-hold", name, 9))
        await holder.expect("ready")
        await holder.expect("holding")
        steady = [
            await stack.enter_async_context(run_peer("mp-send", name, i, count)) for i in (1, 2)
        ]
        doomed = await stack.enter_async_context(run_peer("mp-send", name, 4, 10_000_000))
        for peer in (*steady, doomed):
            await peer.expect("ready")
        # All three now poll for the lock the holder keeps (it is held while the holder
        # sits in reserve(); they retry with a 0.5-20 ms backoff).
        await collector.until(lambda: len(collector.got) >= 10)
        assert [untag(m) for m in collector.got] == [(9, s) for s in range(10)]
        await holder.kill()
        # Kill sender 4 once it is well under way.
        await collector.until(lambda: collector.per_sender.get(4, 0) >= 2000)
        await doomed.kill()
        for peer in steady:
            await peer.expect(f"done {count}", seconds=30)
            await peer.finish()
        await end_stream(name)
        with anyio.fail_after(10):
            await collector.ended.wait()
    seqs = by_sender(collector.got)
    assert seqs[9] == list(range(10))  # the reserved message 10 was never published
    assert seqs[1] == list(range(count))
    assert seqs[2] == list(range(count))
    assert len(seqs[4]) >= 2000
    assert seqs[4] == list(range(len(seqs[4])))  # a prefix of its messages, in order
    assert sorted(seqs) == [1, 2, 4, 9]


# ======================================================================== zero copy

BIG = 64 << 20


@pytest.mark.asyncio
async def test_zero_copy_64_mib_reserve_and_receive_view(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    seed = 4242
    want = hashlib.sha256()
    for i in range(BIG >> 20):
        want.update(big_block(seed, i))
    async with (
        ShmReceiver.create(name, (129 << 20) + 4096) as rx,
        run_peer("reserve-big", name, BIG, seed) as peer,
    ):
        assert rx.max_message_size >= BIG
        await peer.expect("ready")
        with anyio.fail_after(30):
            async with rx.receive_view() as view:
                assert len(view) == BIG
                assert view.readonly
                # While the view is open, no other receive may move the tail.
                with pytest.raises(BusyResourceError):
                    rx.receive_nowait()
                with pytest.raises(BusyResourceError):
                    await rx.receive()
                with pytest.raises(BusyResourceError):
                    await rx.receive_many()
                with pytest.raises(BusyResourceError):
                    async with rx.receive_view():
                        pass
                same(bytes(view[:4096]), big_block(seed, 0)[:4096])
                same(bytes(view[-4096:]), big_block(seed, (BIG >> 20) - 1)[-4096:])
                got = hashlib.sha256(view).hexdigest()
        assert got == want.hexdigest()
        await peer.expect(f"sha256 {got}")
        with anyio.fail_after(5), pytest.raises(EndOfStream):
            await rx.receive()
        await peer.finish()


@pytest.mark.asyncio
async def test_reserve_abandoned_on_exception(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        async with tx.reserve(9) as view:
            view[:] = b"published"
            # While a reservation is open, other sends on this sender are refused.
            with pytest.raises(BusyResourceError):
                tx.send_nowait(b"inside reserve")
            with pytest.raises(BusyResourceError):
                await tx.send(b"inside reserve")
            with pytest.raises(BusyResourceError):
                await tx.send_many([b"inside reserve"])
        assert drain(rx) == [b"published"]
        with pytest.raises(Abandon):
            await reserve_and_abandon(tx, b"never" * 20)
        with pytest.raises(WouldBlock):
            rx.receive_nowait()
        await tx.send(b"after")
        assert rx.receive_nowait() == b"after"
        # Move the head near the end, so the next reservation must pad and wrap...
        await tx.send(bytes(2040))
        await tx.send(bytes(1000))
        assert [len(m) for m in drain(rx)] == [2040, 1000]
        with pytest.raises(Abandon):
            await reserve_and_abandon(tx, b"w" * 2040)
        # ... and abandoning it forgets the pad too: nothing arrives.
        with pytest.raises(WouldBlock):
            rx.receive_nowait()
        async with tx.reserve(3) as view:
            view[:] = b"yes"
        m = b"z" * 2040
        await tx.send(m)
        assert drain(rx) == [b"yes", m]


# ===================================================================== cancellation


@pytest.mark.asyncio
async def test_cancelled_receive_consumed_nothing(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:

        async def view_copy() -> bytes:
            async with rx.receive_view() as view:
                return bytes(view)

        calls: list[Callable[[], Awaitable[object]]] = [rx.receive, rx.receive_many, view_copy]
        for i, call in enumerate(calls):
            async with parked(call) as outcome:
                pass  # leaving cancels the parked call
            assert not outcome.finished.is_set()
            await tx.send(b"next %d" % i)
            assert await rx.receive() == b"next %d" % i
        with pytest.raises(WouldBlock):
            rx.receive_nowait()


@pytest.mark.asyncio
async def test_receive_cancelled_at_its_checkpoint_loses_nothing(
    new_ring: Callable[[], str],
) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        want = [seq_message(i) for i in range(40)]
        for m in want:
            tx.send_nowait(m)
        got = []
        with anyio.CancelScope() as scope:
            scope.cancel()
            # Each call completes at once, until the one that is a checkpoint (1 in 16).
            for _ in want:
                got.append(await rx.receive())
        assert scope.cancelled_caught
        assert len(got) < len(want)
        assert got + drain(rx) == want


@pytest.mark.asyncio
async def test_send_cancelled_at_its_checkpoint_did_not_send(
    new_ring: Callable[[], str],
) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        want = [seq_message(i) for i in range(40)]
        sent = []
        with anyio.CancelScope() as scope:
            scope.cancel()
            for m in want:
                await tx.send(m)
                sent.append(m)
        assert scope.cancelled_caught
        assert len(sent) < len(want)
        assert drain(rx) == sent


@pytest.mark.asyncio
async def test_cancelled_send_did_not_send(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        sent = fill(tx)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: tx.send(filler(1001)),
            lambda: tx.send_many([filler(1002), filler(1003)]),
        ]
        for call in calls:
            async with parked(call) as outcome:
                pass
            assert not outcome.finished.is_set()

        async def reserve_one() -> None:
            async with tx.reserve(24) as view:
                view[:] = filler(1004)

        async with parked(reserve_one) as outcome:
            pass
        assert not outcome.finished.is_set()
        assert drain(rx) == sent  # exactly the messages that fit, none of the cancelled
        await tx.send(b"after")
        assert drain(rx) == [b"after"]


@pytest.mark.asyncio
async def test_cancelled_send_many_sent_a_prefix(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        first = fill(tx)
        assert len(first) == 4096 // 32
        # Free exactly one message's room: the batch's first fits, the second waits.
        assert rx.receive_nowait() == first[0]
        notes: list[str] = []

        async def send_batch() -> None:
            try:
                await tx.send_many([filler(1000), filler(1001), filler(1002)])
            except anyio.get_cancelled_exc_class() as exc:
                notes.extend(getattr(exc, "__notes__", []))
                raise

        async with parked(send_batch) as outcome:
            pass
        assert not outcome.finished.is_set()
        assert drain(rx) == [*first[1:], filler(1000)]
        assert notes == ["send_many: 1 of 3 messages were sent"]


@pytest.mark.asyncio
async def test_closing_wakes_own_waiting_task(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    rx = ShmReceiver.create(name, 4096)
    tx = ShmSender.open(name)
    try:
        async with parked(rx.receive) as outcome:
            closed = time.monotonic()
            await rx.aclose()
            elapsed = await finished_within(outcome, closed, 1.0)
        assert isinstance(outcome.error, ClosedResourceError), outcome
        assert elapsed < 1.0
        with pytest.raises(ClosedResourceError):
            await rx.receive()
    finally:
        await tx.aclose()
        await rx.aclose()
    name = new_ring()
    tx = ShmSender.create(name, 4096)
    rx = ShmReceiver.open(name)
    try:
        fill(tx)
        async with parked(lambda: tx.send(filler(1000))) as outcome:
            closed = time.monotonic()
            await tx.aclose()
            elapsed = await finished_within(outcome, closed, 1.0)
        assert isinstance(outcome.error, ClosedResourceError), outcome
        assert elapsed < 1.0
        with pytest.raises(ClosedResourceError):
            tx.send_nowait(b"x")
    finally:
        await tx.aclose()
        await rx.aclose()


@pytest.mark.asyncio
async def test_end_of_stream_and_broken(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx:
        tx = ShmSender.open(name)
        for i in range(3):
            await tx.send(b"m%d" % i)
        await tx.aclose()
        assert [await rx.receive() for _ in range(3)] == [b"m0", b"m1", b"m2"]
        for _ in range(2):
            with pytest.raises(EndOfStream):
                await rx.receive()
            with pytest.raises(EndOfStream):
                rx.receive_nowait()
        # A receiver waiting on an empty ring wakes when the sender closes.
        async with ShmSender.open(name) as tx2:
            async with parked(rx.receive) as outcome:
                await tx2.aclose()
                await finished_within(outcome, time.monotonic(), 1.0)
            assert isinstance(outcome.error, EndOfStream), outcome
    name = new_ring()
    async with ShmSender.create(name, 4096) as tx:
        rx = ShmReceiver.open(name)
        await tx.send(b"before")
        await rx.aclose()
        with pytest.raises(BrokenResourceError, match="receiver closed"):
            await tx.send(b"after")
        with pytest.raises(BrokenResourceError):
            tx.send_nowait(b"after")
        with pytest.raises(BrokenResourceError):
            await tx.send_many([b"after"])


# ============================================================================= URLs


@pytest.mark.asyncio
async def test_url_listen_connect_round_trip(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    rx = await aioipc.listen(f"shm://{name[1:]}?capacity=4096")
    try:
        assert isinstance(rx, ShmReceiver)
        assert rx.capacity == 4096
        assert existing(name) == list(ring_files(name))
        tx = await aioipc.connect(f"shm://{name[1:]}")
        async with tx:
            assert isinstance(tx, ShmSender)
            for m in (b"", b"one", bytes(2040)):
                await tx.send(m)
                assert await rx.receive() == m
        with pytest.raises(EndOfStream):
            await rx.receive()
        async with await aioipc.connect(f"shm://{name}") as tx3:  # shm:///name
            assert tx3.capacity == 4096
    finally:
        await rx.aclose()
    assert existing(name) == []


# ======================================================================== idle CPU


@pytest.mark.asyncio
async def test_idle_receiver_uses_no_cpu(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    async with (
        ShmSender.create(name, 4096) as tx,
        run_peer("idle-recv", name, 50e-6, 1.0) as peer,
    ):
        await peer.expect("ready")
        line = await peer.line(10)
        word, cpu_text, wall_text = line.split()
        assert word == "idle", line
        cpu, wall = float(cpu_text), float(wall_text)
        assert wall >= 0.95, line
        assert cpu < 0.05, f"an idle receiver used {cpu:.3f} s of CPU in {wall:.3f} s"
        await tx.send(b"wake up")
        await peer.expect(f"got {b'wake up'.hex()}")
        await peer.finish()


# ==========================================================================================
# Regressions: the shared-memory ring
# Regression tests moved from tests/test_shm_regressions.py (issue 11): one test per finding
# of the review of the shared-memory ring (commit 0bd40c1; F1..F14 are its numbers), on real
# kernel objects and, where a finding needs another process or a process-wide limit, real
# child processes. Each failed on the code before that commit, except the last three (a
# FIFO at a ring's name called stale; a receiver without a free fd for the pidfd; a ring
# seen while it is being created), which failed until the commits after it.
#
# Not covered: the two races in ``_sleep`` (a sender that publishes and closes, or dies and
# is reaped, between the receiver's last look at the ring and its sleep). They open and
# close within a few instructions of one call and cannot be hit on purpose without patching
# aioipc's internals.
# ==========================================================================================


#: Header fields (byte offsets into /dev/shm/NAME), as aioipc/_core/ring.py documents them.
OFF_MAGIC, OFF_HEAD, OFF_TAIL, OFF_CWAITING = 0, 64, 128, 256


def run(main: Callable[[], Awaitable[None]], backend: str = "asyncio") -> None:
    anyio.run(main, backend=backend)


async def wait_outcome(outcome: Outcome, seconds: float = 5) -> None:
    """Wait (at most ``seconds``) for the call ``outcome`` follows to finish."""
    with anyio.fail_after(seconds):
        await outcome.finished.wait()


def pending_bytes(fifo: str) -> int:
    """How many bytes wait in a FIFO (FIONREAD), without taking them."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return buf[0]
    finally:
        os.close(fd)


# ========== F1: fences in two threads


def test_two_event_loops_in_two_threads_lose_nothing(new_ring: Callable[[], str]) -> None:
    """Each handle fences with its own lock: two threads, each with its own event loop
    and ring, never release each other's (which raised RuntimeError after a message
    was taken or published)."""
    names = [new_ring(), new_ring()]
    errors: list[str] = []
    counts: dict[str, int] = {}
    start = threading.Barrier(len(names))
    deadline = 0.0

    def worker(name: str) -> None:
        async def main() -> None:
            async with ShmReceiver.create(name, 1 << 16) as rx, ShmSender.open(name) as tx:
                i = 0
                while time.monotonic() < deadline and not errors:
                    for _ in range(500):
                        await tx.send(i.to_bytes(8, "little"))
                        tx.send_nowait((i + 1).to_bytes(8, "little"))
                        for want in (i, i + 1):
                            got = int.from_bytes(await rx.receive(), "little")
                            if got != want:
                                errors.append(f"{name}: got message {got}, expected {want}")
                                return
                        i += 2
                counts[name] = i

        try:
            start.wait(timeout=CHILD_LIMIT)
            anyio.run(main)
        except BaseException as exc:
            errors.append(f"{name}: {exc!r}")

    switch = sys.getswitchinterval()
    # Switch threads often: with the default 5 ms the old shared lock survived 1.5 s of
    # this; at 10 us it broke within half a second in every run.
    sys.setswitchinterval(1e-5)
    try:
        deadline = time.monotonic() + 1.5
        threads = [threading.Thread(target=worker, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=CHILD_LIMIT)
    finally:
        sys.setswitchinterval(switch)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(counts) == sorted(names)
    assert all(c > 0 for c in counts.values())


# ========== F2: receive_view waiting while one opens


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_waiting_receive_view_never_shares_a_message(
    new_ring: Callable[[], str], backend: str
) -> None:
    """A receive_view waiting on an empty ring, woken while another task tries a
    receive_view that would find the message that arrived: the second task gets
    BusyResourceError (one task per direction of a handle, docs/channels.md), so it
    never opens the same message, and neither message is lost."""
    name = new_ring()

    async def main() -> None:
        async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
            waiter = Outcome()

            async def view_copy() -> bytes:
                async with rx.receive_view() as view:
                    return bytes(view)

            async with anyio.create_task_group() as tg:
                tg.start_soon(capture, waiter, view_copy)
                await anyio.wait_all_tasks_blocked()
                assert not waiter.finished.is_set(), waiter
                tx.send_nowait(b"first")
                tx.send_nowait(b"second")
                # No checkpoint in between: the waiting task, woken by the doorbell,
                # has not run yet when this one asks.
                with pytest.raises(BusyResourceError, match="already waiting"):
                    async with rx.receive_view():
                        raise AssertionError("opened a message while another task waits")
                await wait_outcome(waiter)
            assert waiter.error is None, waiter
            assert [waiter.value, *drain(rx)] == [b"first", b"second"]

    run(main, backend)


# ========== F3, F4: the send lock of a multi-producer ring


async def multi_producer_blocked(
    name: str, tg: Any, rx: ShmReceiver, a: ShmSender
) -> tuple[list[bytes], bytes, Outcome]:
    """Fill the ring (256 bytes) up to 32 bytes from its end and start a send on ``a``
    of a message that does not fit: it waits for room holding the ring's send lock.
    Returns (what was sent, the big message, the big send's outcome)."""
    sent = [filler(i) for i in range(7)]  # 7 records of 32 bytes
    for m in sent:
        a.send_nowait(m)
    big = b"B" * 100  # a 112-byte record
    outcome = Outcome()
    tg.start_soon(capture, outcome, lambda: a.send(big))
    await anyio.wait_all_tasks_blocked()
    assert not outcome.finished.is_set(), outcome
    return sent, big, outcome


def test_multi_producer_send_nowait_keeps_the_lock_a_waiting_send_holds(
    new_ring: Callable[[], str],
) -> None:
    """While a send of handle A waits for room holding the send lock, send_nowait on A
    raises WouldBlock (even though its message fits) and leaves the lock held: a
    send_nowait on handle B is WouldBlock too, until A's send completes."""
    name = new_ring()

    async def main() -> None:
        async with (
            ShmReceiver.create(name, 256, multi_producer=True) as rx,
            ShmSender.open(name) as a,
            ShmSender.open(name) as b,
            anyio.create_task_group() as tg,
        ):
            sent, big, outcome = await multi_producer_blocked(name, tg, rx, a)
            with pytest.raises(WouldBlock):
                a.send_nowait(b"a-nowait")  # 16 bytes: fits in the 32 left
            with pytest.raises(WouldBlock):
                b.send_nowait(b"b-nowait")  # the lock is still A's
            with pytest.raises(WouldBlock):
                a.send_nowait(b"a-nowait")
            assert not outcome.finished.is_set(), outcome
            got = drain(rx)  # room: A's send goes in and drops the lock
            await wait_outcome(outcome)
            assert outcome.error is None, outcome
            b.send_nowait(b"b-after")
            got += drain(rx)
            assert got == [*sent, big, b"b-after"]

    run(main)


def test_multi_producer_send_waiting_for_the_lock_can_be_cancelled(
    new_ring: Callable[[], str],
) -> None:
    """A send waiting for the send lock, held by another handle's waiting send, returns
    when cancelled (not when the lock comes free) and sent nothing; closing its handle
    also ends it."""
    name = new_ring()

    async def main() -> None:
        async with (
            ShmReceiver.create(name, 256, multi_producer=True) as rx,
            ShmSender.open(name) as a,
            ShmSender.open(name) as b,
            anyio.create_task_group() as tg,
        ):
            sent, big, outcome = await multi_producer_blocked(name, tg, rx, a)
            took: list[float] = []
            b_done = anyio.Event()

            async def cancelled_send() -> None:
                began = time.monotonic()
                with anyio.move_on_after(0.2):
                    await b.send(b"from b")
                took.append(time.monotonic() - began)
                b_done.set()

            tg.start_soon(cancelled_send)
            with anyio.move_on_after(3):
                await b_done.wait()
            # Free the ring: A's send goes in and drops the lock (which also ends a B
            # send that ignored its cancellation, so the test finishes either way).
            got = drain(rx)
            await wait_outcome(outcome)
            with anyio.fail_after(5):
                await b_done.wait()
            got += drain(rx)
            assert got == [*sent, big], "the cancelled send sent something"
            assert took[0] < 1.0, f"the cancelled send returned after {took[0]:.2f} s"
            b.send_nowait(b"b-after")  # B kept no lock
            assert drain(rx) == [b"b-after"]

            # Closing B ends its send waiting for the lock (A holds it again).
            sent, big, outcome = await multi_producer_blocked(name, tg, rx, a)
            closed = Outcome()
            tg.start_soon(capture, closed, lambda: b.send(b"from b, closed"))
            await anyio.wait_all_tasks_blocked()
            assert not closed.finished.is_set(), closed
            began = time.monotonic()
            await b.aclose()
            await wait_outcome(closed)
            assert isinstance(closed.error, ClosedResourceError), closed
            assert closed.at - began < 1.0
            got = drain(rx)
            await wait_outcome(outcome)
            got += drain(rx)
            assert got == [*sent, big]

    run(main)


# ========== F5: a pidfd numbered above 1023


def open_pidfds() -> list[int]:
    fds = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == "anon_inode:[pidfd]":
                fds.append(int(entry))
    return fds


@contextlib.contextmanager
def low_fds_taken() -> Iterator[None]:
    """Occupy every free fd number below 1024 (raising RLIMIT_NOFILE if needed): the
    next fd opened is numbered 1024 or more, as in a busy server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    taken: list[int] = []
    try:
        while True:
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            if fd >= 1024:
                os.close(fd)
                break
            taken.append(fd)
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_spurious_wakeup_with_a_pidfd_above_1023(new_ring: Callable[[], str]) -> None:
    """A sender waiting for room is woken although there is still too little (the
    receiver took a small message); with the receiver's pidfd numbered >= 1024 that
    must not raise (select() raised ValueError: fd out of range). Under trio, whose
    wait_all_tasks_blocked also waits for pending I/O to be handled."""
    name = new_ring()

    async def main() -> None:
        async with ShmReceiver.create(name, 256) as rx, ShmSender.open(name) as tx:
            sent = [filler(i) for i in range(8)]  # 8 records of 32 bytes: full
            for m in sent:
                tx.send_nowait(m)
            big = b"B" * 100  # needs 112 bytes
            outcome = Outcome()
            with low_fds_taken():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(capture, outcome, lambda: tx.send(big))
                    await anyio.wait_all_tasks_blocked()
                    assert not outcome.finished.is_set(), outcome
                    assert any(fd >= 1024 for fd in open_pidfds()), open_pidfds()
                    got = [rx.receive_nowait()]  # frees 32 bytes and rings: not enough
                    await anyio.wait_all_tasks_blocked()
                    assert not outcome.finished.is_set(), outcome
                    got += drain(rx)  # now there is room
                    await wait_outcome(outcome)
            assert outcome.error is None, outcome
            got += drain(rx)
            assert got == [*sent, big]

    run(main, "trio")


# ========== F8: a big bogus region is checked before it is mapped


def test_bogus_sparse_region_is_refused_without_allocating_it(
    new_ring: Callable[[], str],
) -> None:
    """A sparse 512 MiB regular file planted at the ring's name (no ring header) is
    refused on open without its pages being allocated (the header was checked only
    after a MAP_POPULATE mapping of the whole file)."""
    name = new_ring()
    path = ring_files(name)[0]
    size = 512 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        assert os.stat(path).st_blocks == 0
        # Zero magic: "still being created".
        for opener in (ShmSender.open, ShmReceiver.open):
            refused(partial(opener, name), IPCNotFoundError)
            assert os.stat(path).st_blocks * 512 <= 64 << 10
        # A wrong magic: not a ring.
        write_at(name, OFF_MAGIC, b"notaring")
        for opener in (ShmSender.open, ShmReceiver.open):
            refused(partial(opener, name), ProtocolError)
            assert os.stat(path).st_blocks * 512 <= 64 << 10
    finally:
        os.unlink(path)


# ========== F9: out of file descriptors on open

EMFILE_CHILD = """
    import errno, json, os, resource, sys
    from aioipc import IPCError
    from aioipc.shm import ShmReceiver, ShmSender, is_stale, unlink

    created, attached = json.loads(sys.argv[1]), sys.argv[2]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def fds():
        # Open fds (not the one listdir used for the listing, closed by now).
        listed = (int(f) for f in os.listdir("/proc/self/fd"))
        return sorted(fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}"))

    def with_free_fds(free, call):
        # Run call() with exactly `free` fd numbers left below RLIMIT_NOFILE.
        used, limit = set(fds()), 0
        while free:
            free -= limit not in used
            limit += 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            return call(), None
        except BaseException as exc:
            return None, exc
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def record(op, free, call, check):
        before = fds()
        handle, exc = with_free_fds(free, call)
        if handle is not None:
            handle.close()
        after = fds()
        out = {"op": op, "free": free, "ok": exc is None, "leaked": len(after) - len(before)}
        if exc is not None:
            out.update(error=f"{type(exc).__module__}.{type(exc).__name__}: {exc}",
                       clean=isinstance(exc, IPCError), errno=getattr(exc, "errno", None))
        out.update(check())
        print(json.dumps(out), flush=True)

    # Creating takes the region, two doorbells, the mapping's (mmap dups the fd) and an
    # epoll fd, in that order; each is the one that fails with one fd fewer.
    for free, name in enumerate(created):
        def left(name=name):
            return {"left": [p for p in os.listdir("/dev/shm") if p.startswith(name[1:])]}
        record("create", free, lambda name=name: ShmReceiver.create(name, 4096), left)

    # Attaching to a ring nobody is attached to.
    ShmReceiver.create(attached, 4096, unlink_on_close=False).close()
    for free in range(len(created)):
        for kind in (ShmSender, ShmReceiver):
            record(f"open {kind.__name__}", free, lambda kind=kind: kind.open(attached),
                   lambda: {"stale": is_stale(attached)})
    unlink(attached)
"""


def test_out_of_fds_on_open_is_clean_and_leaks_nothing(new_ring: Callable[[], str]) -> None:
    """With too few file descriptors left (RLIMIT_NOFILE, in a child), creating or
    attaching a ring raises an aioipc error naming RLIMIT_NOFILE (not a raw OSError
    from epoll creation),
    leaks no fd or lock (the ring stays stale), and a creator leaves no files."""
    tries = 8  # 0..7 fds free: every open fails in turn, then it succeeds
    created = [new_ring() for _ in range(tries)]
    attached = new_ring()
    out = run_code(EMFILE_CHILD, json.dumps(created), attached)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3 * tries
    for op in ("create", "open ShmSender", "open ShmReceiver"):
        mine = [r for r in records if r["op"] == op]
        # Fails with up to N-1 fds free (the last failure is the epoll fd's), works with N.
        needed = min(r["free"] for r in mine if r["ok"])
        assert 4 <= needed < tries, mine
        for r in mine:
            assert r["leaked"] == 0, r
            assert r.get("left", []) == [], r  # a failed create removed its files
            assert r.get("stale", True), r  # a failed open kept no lock
            assert r["ok"] == (r["free"] >= needed), r
            if not r["ok"]:
                assert r["clean"], r
                assert r["errno"] == 24, r  # EMFILE
                assert "RLIMIT_NOFILE = " in r["error"], r  # the limit is named


# ========== F10: a FIFO planted at the name (the region opens: tests/test_regions.py)


def test_is_stale_refuses_a_fifo_at_the_name(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    with planted_fifo(name):
        out = fifo_outcomes(name)
    assert out["is_stale"].startswith("raised "), out


# ========== F11: unaligned head/tail, receive_many(2.5)


@pytest.mark.parametrize(("head", "tail"), [(60, 60), (68, 60), (4, 0), (64, 4)])
def test_unaligned_head_or_tail_is_refused_on_open(
    new_ring: Callable[[], str], head: int, tail: int
) -> None:
    name = new_ring()
    ShmReceiver.create(name, 64, unlink_on_close=False).close()
    try:
        write_at(name, OFF_HEAD, struct.pack("<Q", head))
        write_at(name, OFF_TAIL, struct.pack("<Q", tail))
        for opener in (ShmSender.open, ShmReceiver.open):
            exc = refused(partial(opener, name), ProtocolError)
            assert "multiple of 8" in str(exc)
    finally:
        aioipc.shm.unlink(name)


def test_receive_many_with_a_float_consumes_nothing(new_ring: Callable[[], str]) -> None:
    name = new_ring()

    async def main() -> None:
        async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
            tx.send_nowait(b"one")
            tx.send_nowait(b"two")
            for bad in (2.5, 1.0):
                with pytest.raises(ValueError, match="max_count"):
                    await rx.receive_many(bad)  # type: ignore[arg-type]
            assert await rx.receive_many(2) == [b"one", b"two"]

    run(main)


# ========== F12: BusyResourceError names the ring


def test_busy_errors_name_the_ring(new_ring: Callable[[], str]) -> None:
    """Every BusyResourceError names the ring and what is in the way; none carries
    anyio's 'Another task is already ... this resource' wording."""
    name = new_ring()
    errors: dict[str, BaseException] = {}

    async def busy(what: str, call: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(BusyResourceError) as info:
            await call()
        errors[what] = info.value

    def busy_now(what: str, call: Callable[[], object]) -> None:
        with pytest.raises(BusyResourceError) as info:
            call()
        errors[what] = info.value

    async def main() -> None:
        async with ShmReceiver.create(name, 256) as rx, ShmSender.open(name) as tx:
            errors["second receiver"] = refused(lambda: ShmReceiver.open(name), BusyResourceError)
            errors["second sender"] = refused(lambda: ShmSender.open(name), BusyResourceError)

            tx.send_nowait(b"m")
            async with rx.receive_view():
                busy_now("receive_nowait in a view", rx.receive_nowait)
                await busy("receive in a view", rx.receive)

                async def nested_view() -> None:
                    async with rx.receive_view():
                        pass

                await busy("receive_view in a view", nested_view)

            async with tx.reserve(8) as view:
                view[:] = b"reserved"
                busy_now("send_nowait in a reserve", lambda: tx.send_nowait(b"x"))
                await busy("send in a reserve", lambda: tx.send(b"x"))
            assert drain(rx) == [b"reserved"]

            async with anyio.create_task_group() as tg:
                waiting = Outcome()
                tg.start_soon(capture, waiting, rx.receive)
                await anyio.wait_all_tasks_blocked()
                await busy("a second waiting receive", rx.receive)
                tg.cancel_scope.cancel()

            while True:
                try:
                    tx.send_nowait(b"fill" * 4)
                except WouldBlock:
                    break
            async with anyio.create_task_group() as tg:
                waiting = Outcome()
                tg.start_soon(capture, waiting, lambda: tx.send(b"x" * 64))
                await anyio.wait_all_tasks_blocked()
                await busy("a second waiting send", lambda: tx.send(b"y" * 64))
                tg.cancel_scope.cancel()

    run(main)
    assert len(errors) == 9
    for what, exc in errors.items():
        assert name in str(exc), (what, str(exc))
        assert "this resource" not in str(exc), (what, str(exc))


# ========== F14: a receiver killed asleep leaves cwaiting set

SLEEPING_RECEIVER = """
    import sys
    import anyio
    from aioipc.shm import ShmReceiver

    async def main():
        rx = ShmReceiver.open(sys.argv[1])
        async with anyio.create_task_group() as tg:
            tg.start_soon(rx.receive)
            await anyio.wait_all_tasks_blocked()  # trio: the receive is asleep
            print("asleep", flush=True)
            await anyio.sleep_forever()  # until SIGKILL

    anyio.run(main, backend="trio")
"""


def test_new_receiver_clears_the_waiting_flag_of_a_killed_one(
    new_ring: Callable[[], str],
) -> None:
    """A receiver SIGKILLed asleep on an empty ring leaves cwaiting = 1; the next
    receiver to attach clears it, so the sender stops ringing a doorbell nobody
    listens to (one write() per send)."""
    name = new_ring()
    bell_data = ring_files(name)[1]
    with contextlib.closing(ShmSender.create(name, 4096)) as tx:
        with child(SLEEPING_RECEIVER, name) as proc:
            assert read_line(proc) == "asleep"
            assert peek(name, "<I", OFF_CWAITING) == 1
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=CHILD_LIMIT) == -signal.SIGKILL
        assert peek(name, "<I", OFF_CWAITING) == 1  # the dead one could not clear it
        with contextlib.closing(ShmReceiver.open(name)) as rx:
            assert peek(name, "<I", OFF_CWAITING) == 0
            before = pending_bytes(bell_data)
            messages = [b"one", b"two", b"three"]
            for m in messages:
                tx.send_nowait(m)
            assert pending_bytes(bell_data) == before, "the sender rang the data doorbell"
            assert drain(rx) == messages


# ========== (beyond the review) a receiver that could not open the sender's pidfd

NO_FD_RECEIVER = """
    import os, resource, sys
    import anyio
    import trio.testing  # imported now: no fd to read it with later
    from aioipc.shm import ShmReceiver

    async def receive(rx):
        try:
            with anyio.fail_after(2):
                await rx.receive()
        except Exception as exc:
            print(type(exc).__name__, flush=True)

    async def main():
        rx = ShmReceiver.create(sys.argv[1], 4096)
        print("ready", flush=True)
        sys.stdin.readline()  # the sender is attached
        # No fd left: pidfd_open() of the sender fails (EMFILE) when the receive sleeps.
        lowest_free = os.dup(0)
        os.close(lowest_free)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive, rx)
                await anyio.wait_all_tasks_blocked()  # trio: the receive is asleep
                print("asleep", flush=True)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            rx.close()

    anyio.run(main, backend="trio")
"""

IDLE_SENDER = """
    import sys
    from aioipc.shm import ShmSender
    tx = ShmSender.open(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # until SIGKILL
"""


def test_receiver_without_a_free_fd_still_notices_a_killed_sender(
    new_ring: Callable[[], str],
) -> None:
    name = new_ring()
    with child(NO_FD_RECEIVER, name) as receiver:
        assert read_line(receiver) == "ready"
        with child(IDLE_SENDER, name) as sender:
            assert read_line(sender) == "ready"
            tell(receiver, "go")
            assert read_line(receiver) == "asleep"
            sender.send_signal(signal.SIGKILL)
            assert sender.wait(timeout=CHILD_LIMIT) == -signal.SIGKILL
        outcome = read_line(receiver)
        assert receiver.wait(timeout=CHILD_LIMIT) == 0  # it closed (and removed) the ring
    assert outcome == "BrokenResourceError"


# ========== second review: a ring seen while it is being created


def test_ring_being_created_is_not_found_and_not_stale(new_ring: Callable[[], str]) -> None:
    """The creator claims its end right after its exclusive create: before the ring is
    sized, an open says "still being created" (IPCNotFoundError, which callers retry on),
    and is_stale() does not call the half-built ring stale while the creator holds it.

    The half-built state is made by hand: the region file as the creator's O_EXCL open
    leaves it (0 bytes), held by an OFD lock on the receiver's byte as the creator takes
    it."""
    name = new_ring()
    region = ring_files(name)[0]
    fd = os.open(region, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(IPCNotFoundError, match="still being created"):
            ShmSender.open(name)
        with pytest.raises(IPCNotFoundError, match="still being created"):
            ShmReceiver.open(name)
        lock = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        assert aioipc.shm.is_stale(name) is False
    finally:
        os.close(fd)
        os.unlink(region)


# ================================================================ spin and the pacing rule


@pytest.mark.asyncio
async def test_spinning_receiver_still_lets_other_tasks_run(new_ring: Callable[[], str]) -> None:
    """A receiver with ``spin`` whose every message arrives while it busy-polls still
    checkpoints at least every YIELD_EVERY calls, so another task on its loop runs: a
    spin that found the message is not a wait (it never yields to the loop)."""
    name = new_ring()
    count = 48
    ran = 0
    taken = threading.Event()
    failed: list[BaseException] = []

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await checkpoint()

    rx = ShmReceiver.create(name, 4096, spin=0.5)
    tx = ShmSender.open(name)

    def produce() -> None:
        # One message at a time, each sent only once the last was taken: the receiver
        # always finds the ring empty and gets its message while it spins (this thread
        # gets the GIL from the spinning one at the interpreter's switch interval).
        try:
            for i in range(count):
                tx.send_nowait(i.to_bytes(8, "little"))
                if not taken.wait(30):
                    raise TimeoutError("the receiver took nothing for 30 s")
                taken.clear()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=produce)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            ran = 0  # counted from here: other() has not run yet
            thread.start()
            with anyio.fail_after(60):
                for i in range(count):
                    assert await rx.receive() == i.to_bytes(8, "little")
                    taken.set()
                    if i == 2 * 16:
                        # Two pacing periods: other() must have had its turn by now.
                        assert ran > 0, "the spinning receiver never yielded to the loop"
            tg.cancel_scope.cancel()
    finally:
        taken.set()
        thread.join(30)
        tx.close()
        rx.close()
    assert not failed, failed


def test_a_dropped_end_closes_at_once(new_ring: Callable[[], str]) -> None:
    """An end nobody closed closes when its last reference goes (with a ResourceWarning),
    without waiting for the cycle collector: its parts hold no reference back to it."""
    name = new_ring()
    gc.disable()
    try:
        rx = ShmReceiver.create(name, 4096)
        tx = ShmSender.open(name)
        with pytest.warns(ResourceWarning, match="unclosed"):
            del tx
        with pytest.warns(ResourceWarning, match="unclosed"):
            del rx
        assert existing(name) == []
    finally:
        gc.enable()


def test_sender_closing_between_two_looks_is_the_end_of_stream(new_ring: Callable[[], str]) -> None:
    """The receiver, finding the ring empty, looks at the sender's state and then asks
    whether the sender is gone. A sender that closes in between is a clean end of
    stream, not a death. (The close is made to happen exactly there by a profile hook
    on the second look; seen in the benchmark as 'BrokenResourceError: ...: closed'.)"""
    name = new_ring()
    rx = ShmReceiver.create(name, 4096)
    tx = ShmSender.open(name)
    closed_at: list[str] = []

    def close_the_sender_there(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "peer_gone" and not closed_at:
            closed_at.append(frame.f_code.co_name)
            tx.close()

    try:
        sys.setprofile(close_the_sender_there)
        try:
            with pytest.raises(EndOfStream):
                rx.receive_nowait()
        finally:
            sys.setprofile(None)
        assert closed_at == ["peer_gone"]
    finally:
        tx.close()
        rx.close()


# ======================================================= the look after the fence (review)


def test_a_message_found_in_the_look_after_the_fence_is_no_checkpoint(
    new_ring: Callable[[], str],
) -> None:
    """A receive finds the ring empty, and its message arrives just as it prepares to
    sleep: the look after the fence takes it, and the receive never yields. That must
    count as a call that did not wait, so a loop of such receives still checkpoints every
    YIELD_EVERY-th call and another task runs. (A peer publishing at the rate this end
    consumes hits this on every call.) The message is published by a profile hook at the
    entry of the doorbell's wait.

    Before the fix: the wait counted as a checkpoint and reset the pacer, so the other
    task never ran during 64 receives."""
    name = new_ring()
    sent: list[bytes] = []

    async def main() -> None:
        async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:

            def publish_there(frame: Any, event: str, arg: object) -> None:
                if (
                    event == "call"
                    and frame.f_code.co_name == "wait"
                    and frame.f_globals.get("__name__") == "aioipc._core.doorbell"
                ):
                    message = b"m%d" % len(sent)
                    tx.send_nowait(message)
                    sent.append(message)

            ran = 0

            async def other() -> None:
                nonlocal ran
                while True:
                    await checkpoint()
                    ran += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(other)
                await checkpoint()
                before = ran
                got = []
                sys.setprofile(publish_there)
                try:
                    for _ in range(64):
                        got.append(await rx.receive())
                finally:
                    sys.setprofile(None)
                others_turns = ran - before
                tg.cancel_scope.cancel()
            assert len(sent) == 64
            assert got == sent
            assert others_turns >= 2, f"the other task ran {others_turns} times in 64 receives"

    anyio.run(main)
