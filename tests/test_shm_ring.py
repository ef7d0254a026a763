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

import contextlib
import gc
import hashlib
import importlib.util
import mmap
import os
import random
import stat
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
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
from aioipc.testing import ONE_WAY_CHECKS, OpenOneWay, check_one_way_channel

from ._assert import same
from ._peer import Peer, spawn
from ._rings import existing, ring_files

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


# ====================================================================== conformance


def ring_pairs(new_ring: Callable[[], str], capacity: int) -> OpenOneWay:
    """``open_pair`` for the conformance suite: a fresh ring, its receiver and a sender."""

    async def open_pair() -> tuple[ShmSender, ShmReceiver]:
        name = new_ring()
        rx = ShmReceiver.create(name, capacity)
        try:
            tx = ShmSender.open(name)
        except BaseException:
            await rx.aclose()
            raise
        return tx, rx

    return open_pair


#: Conformance checks the ring fails (see test_conformance_concurrent_calls_are_busy).
BUSY_CHECKS = ("busy_receive", "backpressure")


@pytest.mark.asyncio
async def test_conformance_one_way(new_ring: Callable[[], str]) -> None:
    capacity = 1 << 20
    await check_one_way_channel(
        ring_pairs(new_ring, capacity), max_message_size=capacity // 2 - 8, skip=BUSY_CHECKS
    )


@pytest.mark.asyncio
async def test_conformance_concurrent_calls_are_busy(new_ring: Callable[[], str]) -> None:
    capacity = 1 << 20
    others = [c for c in ONE_WAY_CHECKS if c not in BUSY_CHECKS]
    await check_one_way_channel(
        ring_pairs(new_ring, capacity),
        max_message_size=capacity // 2 - 8,
        skip=others,
        step_timeout=1.0,
    )


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
