"""Regression tests for the bugs found in review (each test names the bug it guards).

Everything runs on real pipes, FIFOs and unix sockets, and on real child processes where
a second process matters. Tasks are ordered with events and
``anyio.wait_all_tasks_blocked()``, never by sleeping. Two tests run on trio under
``trio.testing.MockClock(autojump_threshold=0)``: its virtual clock moves only when every
task is blocked, so "the peer starts reading after the old 1-second grace" costs no real
time and depends on no timing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio.testing
from anyio import BusyResourceError, ClosedResourceError, EndOfStream, WouldBlock

import aioipc
from aioipc import IPCAttribute, fifo, unix
from aioipc._core.stream import _new_writer_id
from aioipc._core.wait import YIELD_EVERY
from aioipc.framing import MAX_FRAME_LENGTH
from tests._assert import same
from tests._peer import spawn

TIMEOUT = 10
KIB = 1024
MIB = 1024 * KIB


# --------------------------------------------------------------------------- helpers


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` recognisable bytes; different seeds give different contents."""
    block = struct.pack("!I", seed) + bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


@asynccontextmanager
async def unix_pair(
    tmp: Path, kind: Any = "stream", *, framing: bool = True
) -> AsyncIterator[tuple[Any, Any]]:
    """A connected (client, server) pair of unix channels; both closed on the way out."""
    path = str(tmp / "s")
    async with (
        await unix.listen(path, kind, framing=framing) as listener,
        await unix.connect(path, kind, framing=framing) as a,
        await listener.accept() as b,
    ):
        yield a, b


def links_to(target: str) -> list[int]:
    """The fds of this process that point at ``target`` (a path, or "pipe:[inode]")."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                found.append(int(name))
        except OSError:
            pass  # the fd listdir itself used, gone by now
    return found


def pipe_link(fd: int) -> str:
    return f"pipe:[{os.fstat(fd).st_ino}]"


def run_on_trio_with_virtual_time(func: Callable[[], Awaitable[None]]) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    anyio.run(func, backend="trio", backend_options={"clock": clock})


# ------------------------------------------- committed sends reach the kernel on their own


@pytest.mark.asyncio
async def test_burst_before_a_cancelled_checkpoint_is_still_delivered() -> None:
    # Guards: coalesced sends were stranded when the next send was cancelled at its checkpoint
    tx, rx = aioipc.pipe()
    async with tx, rx:
        returned = []
        with anyio.CancelScope() as scope:
            for i in range(YIELD_EVERY):
                if i == YIELD_EVERY - 1:
                    scope.cancel()  # a deadline expiring in the middle of the burst
                await tx.send(b"msg%d" % i)
                returned.append(i)
        assert scope.cancelled_caught
        assert returned == list(range(YIELD_EVERY - 1))
        # No further send and no aclose: the loop alone must write the burst out.
        with anyio.fail_after(TIMEOUT):
            for i in returned:
                assert await rx.receive() == b"msg%d" % i
        with pytest.raises(WouldBlock):
            rx.receive_nowait()  # the cancelled send sent nothing


@pytest.mark.asyncio
async def test_background_flush_on_a_handle_that_never_waited() -> None:
    # Guards: a fresh handle's background flush was never armed, so the burst never arrived
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    msgs = [pattern(16_000, seed) for seed in range(5)]  # 5 x 16 KB > the 64 KiB pipe
    async with tx, rx:
        for m in msgs:  # one loop pass: the first is written, the rest coalesced
            await tx.send(m)
        # Let the loop flush before anyone reads: the pipe cannot take the whole burst, so
        # the rest has to wait for the loop's writer callback.
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(TIMEOUT):
            for m in msgs:
                same(await rx.receive(), m)


def test_background_flush_after_the_handle_moves_to_another_event_loop() -> None:
    # Guards: after a handle moved to a new event loop, its background flush was never armed
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    first = [pattern(20_000, seed) for seed in range(6)]
    second = [pattern(16_000, seed) for seed in range(10, 15)]

    async def in_first_loop() -> None:
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                for m in first:
                    same(await rx.receive(), m)

            tg.start_soon(drain)
            # 120 KB into a 64 KiB pipe: the sender has to wait for room in this loop.
            with anyio.fail_after(TIMEOUT):
                for m in first:
                    await tx.send(m)

    async def in_second_loop() -> None:
        for m in second:
            await tx.send(m)
        await anyio.wait_all_tasks_blocked()  # the loop flushes into a pipe that fills up
        with anyio.fail_after(TIMEOUT):
            for m in second:
                same(await rx.receive(), m)

    try:
        anyio.run(in_first_loop)
        anyio.run(in_second_loop)
    finally:
        tx.close()
        rx.close()


# ---------------------------------------- nothing may cut into a half-written frame


async def _fd_message_after_half_written_frame(
    tmp: Path, reader_starts: Callable[[], Awaitable[None]]
) -> None:
    big = pattern(4 * MIB, 1)
    r, w = os.pipe()
    try:
        async with unix_pair(tmp) as (a, b):
            a.send_nowait(big)  # the socket takes a few hundred KiB; the rest is pending
            got: list[Any] = []

            async def reader() -> None:
                await reader_starts()
                got.append(await b.receive())
                got.append(await b.receive_fds())

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader)
                    await a.send_fds(b"with-fd", [r])
            data, fds = got[1]
            try:
                same(got[0], big)
                assert data == b"with-fd"
                assert len(fds) == 1
                assert os.fstat(fds[0]).st_ino == os.fstat(r).st_ino
            finally:
                for fd in fds:
                    os.close(fd)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.asyncio
async def test_send_fds_waits_for_the_rest_of_a_half_written_frame(short_tmp: Path) -> None:
    # Guards: send_fds wrote its message into the middle of a frame send_nowait left half-written
    await _fd_message_after_half_written_frame(short_tmp, anyio.wait_all_tasks_blocked)


def test_send_fds_waits_past_the_old_grace_for_a_slow_reader(short_tmp: Path) -> None:
    # Guards: send_fds gave up on a half-written frame after 1 s and cut into it
    async def reader_starts() -> None:
        await anyio.sleep(3)  # virtual time: runs only once send_fds is blocked

    run_on_trio_with_virtual_time(
        lambda: _fd_message_after_half_written_frame(short_tmp, reader_starts)
    )


@pytest.mark.asyncio
async def test_send_during_aclose_flush_is_refused_and_the_frame_stays_whole() -> None:
    # Guards: a send racing aclose()'s flush was written into the middle of the pending frame
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    big = pattern(200_000, 2)
    async with rx:
        tx.send_nowait(big)  # 64 KiB in the pipe, the rest pending
        async with anyio.create_task_group() as tg:
            tg.start_soon(tx.aclose)
            await anyio.wait_all_tasks_blocked()  # aclose now waits for room
            with pytest.raises(WouldBlock):
                rx.receive_nowait()  # takes the 64 KiB: room for a concurrent send
            with pytest.raises((BusyResourceError, ClosedResourceError)):
                await tx.send(b"hello")
            with anyio.fail_after(TIMEOUT):
                same(await rx.receive(), big)
                with pytest.raises(EndOfStream):
                    await rx.receive()


async def _send_eof_after_half_written_frame(
    tmp: Path, reader_starts: Callable[[], Awaitable[None]]
) -> None:
    big = pattern(4 * MIB, 3)
    async with unix_pair(tmp) as (a, b):
        a.send_nowait(big)  # the rest of the frame is pending
        got: list[bytes] = []
        ended = False

        async def reader() -> None:
            nonlocal ended
            await reader_starts()
            got.append(await b.receive())
            with pytest.raises(EndOfStream):
                await b.receive()
            ended = True

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await a.send_eof()
        assert len(got) == 1
        same(got[0], big)
        assert ended


@pytest.mark.asyncio
async def test_send_eof_writes_pending_data_before_shutting_down(short_tmp: Path) -> None:
    # Guards: send_eof shut down with part of a committed frame still unwritten
    await _send_eof_after_half_written_frame(short_tmp, anyio.wait_all_tasks_blocked)


def test_send_eof_waits_past_the_old_grace_for_a_slow_reader(short_tmp: Path) -> None:
    # Guards: send_eof gave up on pending data after 1 s and shut down, truncating the frame
    async def reader_starts() -> None:
        await anyio.sleep(3)  # virtual time: runs only once send_eof is blocked

    run_on_trio_with_virtual_time(
        lambda: _send_eof_after_half_written_frame(short_tmp, reader_starts)
    )


# --------------------------------------------------------- buffers the caller reuses


@pytest.mark.asyncio
async def test_send_nowait_bytearray_reused_after_a_partial_write() -> None:
    # Guards: a bytearray from send_nowait was buffered by reference; reusing it changed the message
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    buf = bytearray(pattern(100_000, 4))
    original = bytes(buf)
    async with tx, rx:
        tx.send_nowait(buf)  # 64 KiB go to the pipe, the rest stays in the handle
        buf[:] = b"Z" * len(buf)
        buf.extend(b"!")  # BufferError if the handle still exported the buffer
        with anyio.fail_after(TIMEOUT):
            same(await rx.receive(), original)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1000, 200_000], ids=["coalesced", "large"])
async def test_send_bytearray_reused_while_still_buffered(size: int) -> None:
    # Guards: a bytearray given to send was buffered by reference; reusing it changed the message
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    buf = bytearray(pattern(size, 5))
    original = bytes(buf)
    async with tx, rx:
        await tx.send(b"first")  # the first send of the pass goes straight out
        if size <= 16 * KIB:
            await tx.send(buf)  # same loop pass: coalesced into the buffer
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tx.send, buf)
                await anyio.wait_all_tasks_blocked()  # 64 KiB written, waiting for room
                tg.cancel_scope.cancel()  # part is in the kernel: the rest is committed
        buf[:] = b"Z" * len(buf)
        buf.extend(b"!")
        with anyio.fail_after(TIMEOUT):
            assert await rx.receive() == b"first"
            same(await rx.receive(), original)


# ---------------------------------------------------------- closing and fd numbers


@pytest.mark.asyncio
async def test_send_after_concurrent_aclose_never_writes_to_a_reused_fd(tmp_path: Path) -> None:
    # Guards: a send resumed after another task's aclose() wrote to an fd number now reused
    tx, rx = aioipc.pipe()
    tx_fd = tx.fileno()
    victim = tmp_path / "unrelated.log"
    go = anyio.Event()
    reused: list[int] = []

    async def closer() -> None:
        await go.wait()
        await tx.aclose()

    async def opener() -> None:  # an unrelated task opening a file
        await go.wait()
        fd = os.open(victim, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if fd != tx_fd:
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(tx_fd)  # free since aclose: give the file that number
            os.dup2(fd, tx_fd, inheritable=False)
            os.close(fd)
        reused.append(tx_fd)

    try:
        async with rx, anyio.create_task_group() as tg:
            tg.start_soon(closer)
            tg.start_soon(opener)
            await anyio.wait_all_tasks_blocked()
            for i in range(YIELD_EVERY - 1):
                await tx.send(b"m%d" % i)
            go.set()
            with pytest.raises(ClosedResourceError):
                await tx.send(b"SECRET-IPC-PAYLOAD")  # its checkpoint lets both tasks run
            # The scenario really happened: the number belonged to the file by then.
            assert reused == [tx_fd]
    finally:
        if reused:
            os.close(tx_fd)
    assert victim.read_bytes() == b""


@pytest.mark.asyncio
async def test_sync_close_of_a_unix_stream_writes_coalesced_messages(short_tmp: Path) -> None:
    # Guards: sync close() of a unix stream dropped coalesced messages the kernel had room for
    async with unix_pair(short_tmp) as (a, b):
        for i in range(3):
            await a.send(b"m%d" % i)  # m0 written, m1 and m2 coalesced
        a.close()
        with anyio.fail_after(TIMEOUT):
            for i in range(3):
                assert await b.receive() == b"m%d" % i
            with pytest.raises(EndOfStream):
                await b.receive()


@pytest.mark.asyncio
async def test_sync_close_of_a_unix_stream_releases_received_fds(short_tmp: Path) -> None:
    # Guards: sync close() of a unix stream leaked fds received with a message not yet returned
    async with unix_pair(short_tmp) as (a, b):
        r, w = os.pipe()
        link = pipe_link(r)
        await a.send(b"m0")
        await a.send_fds(b"m1", [r, w])
        os.close(r)
        os.close(w)
        assert links_to(link) == []
        with anyio.fail_after(TIMEOUT):
            assert await b.receive() == b"m0"  # the same read brought m1 and its 2 fds
        assert len(links_to(link)) == 2
        b.close()
        assert links_to(link) == []


@pytest.mark.asyncio
async def test_failed_keep_alive_open_leaves_no_fd_on_the_fifo(short_tmp: Path) -> None:
    # Guards: open_receiver(persistent=True) leaked the read fd when the keep-alive open failed
    path = str(short_tmp / "f")
    fifo.create(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        highest = max(int(n) for n in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            pass
        os.close(fillers.pop())  # exactly one free slot: the read end fits, no more
        with pytest.raises(OSError, match=r"RLIMIT_NOFILE = \d+"):
            await fifo.open_receiver(path, persistent=True)
        # The slot is free again: the read end was closed.
        os.close(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert links_to(path) == []


# ------------------------------------------------------------------- unix sockets


@pytest.mark.asyncio
async def test_dgram_endpoint_send_nowait_replies_to_the_last_sender(short_tmp: Path) -> None:
    # Guards: UnixDatagramEndpoint.send_nowait did not reply to the last sender
    path = str(short_tmp / "d")
    async with await unix.listen(path, "dgram") as ep:
        with pytest.raises(anyio.BrokenResourceError):
            ep.send_nowait(b"nobody to reply to yet")
        async with await unix.connect(path, "dgram") as c1, await unix.connect(path, "dgram") as c2:
            with anyio.fail_after(TIMEOUT):
                await c1.send(b"ping1")
                assert await ep.receive() == b"ping1"
                ep.send_nowait(b"pong1")
                assert await c1.receive() == b"pong1"
                await c2.send(b"ping2")
                assert await ep.receive() == b"ping2"
                ep.send_nowait(b"pong2")
                assert await c2.receive() == b"pong2"
            with pytest.raises(WouldBlock):
                c1.receive_nowait()  # the second reply went to c2 only


@pytest.mark.asyncio
@pytest.mark.parametrize("use_async_with", [False, True])
async def test_aclose_with_pending_data_and_the_peer_gone(use_async_with: bool) -> None:
    # Guards: aclose() raised and left the fd open when the peer was gone with data pending
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    tx.send_nowait(pattern(200_000, 6))  # the rest of the frame is pending
    await rx.aclose()
    fd = tx.fileno()
    link = pipe_link(fd)
    if use_async_with:
        async with tx:
            pass
    else:
        await tx.aclose()
    try:
        still = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        still = None
    assert still != link
    await tx.aclose()  # idempotent, still no error
    with pytest.raises(ClosedResourceError):
        await tx.send(b"x")


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
async def test_send_fds_with_a_closed_fd_is_a_value_error(short_tmp: Path, kind: str) -> None:
    # Guards: send_fds with a closed fd reported the channel closed instead of blaming the fd
    async with unix_pair(short_tmp, kind) as (a, b):
        r, w = os.pipe()
        os.close(r)  # r is now a stale number
        try:
            with pytest.raises(ValueError, match=rf"\bfd {r}\b"):
                await a.send_fds(b"x", [w, r])
            with anyio.fail_after(TIMEOUT):
                await a.send(b"still works")
                assert await b.receive() == b"still works"
                await a.send_fds(b"with-fd", [w])
                data, fds = await b.receive_fds()
            for fd in fds:
                os.close(fd)
            assert data == b"with-fd"
            assert len(fds) == 1
        finally:
            os.close(w)


@pytest.mark.asyncio
async def test_raw_send_fds_without_data_is_a_value_error(short_tmp: Path) -> None:
    # Guards: raw send_fds(b"", fds) sent no bytes, so the fds were silently dropped
    r, w = os.pipe()
    try:
        async with unix_pair(short_tmp, framing=False) as (a, b):
            with pytest.raises(ValueError, match="at least one byte"):
                await a.send_fds(b"", [r])
            with anyio.fail_after(TIMEOUT):
                await a.send_fds(b"x", [w])
                data, fds = await b.receive_fds()
            for fd in fds:
                os.close(fd)
            assert data == b"x"
            assert len(fds) == 1
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
async def test_received_fds_are_close_on_exec(short_tmp: Path, kind: str) -> None:
    # Guards: fds received with receive_fds were inheritable by child processes
    r, w = os.pipe()
    os.set_inheritable(r, True)  # the sender's flag must not carry over
    try:
        async with unix_pair(short_tmp, kind) as (a, b):
            with anyio.fail_after(TIMEOUT):
                await a.send_fds(b"x", [r])
                data, fds = await b.receive_fds()
            try:
                assert data == b"x"
                assert len(fds) == 1
                assert os.get_inheritable(fds[0]) is False
            finally:
                for fd in fds:
                    os.close(fd)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.asyncio
async def test_listener_extra_returns_the_default_for_a_missing_attribute(
    short_tmp: Path,
) -> None:
    # Guards: UnixListener.extra(attr, default) raised instead of returning the default.
    sentinel = object()
    path = str(short_tmp / "s")
    async with await unix.listen(path) as listener:
        assert listener.extra(IPCAttribute.path) == path
        assert listener.extra(IPCAttribute.peer_uid, None) is None
        assert listener.extra(IPCAttribute.peer_pid, sentinel) is sentinel
        with pytest.raises(anyio.TypedAttributeLookupError):
            listener.extra(IPCAttribute.peer_uid)


#: A receive buffer this large cannot be mapped, so a seqpacket or dgram channel cannot be built.
# The largest valid max_message_size (2 GiB): its receive buffer cannot be mapped under
# address_space_limit(), which makes the mmap fail the way memory exhaustion would.
UNMAPPABLE = MAX_FRAME_LENGTH


@contextlib.contextmanager
def address_space_limit() -> Iterator[None]:
    """Lower RLIMIT_AS to what the process maps now plus 512 MiB, for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    status = Path("/proc/self/status").read_text()
    (vm_kib,) = (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + 512 * 1024 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.asyncio
async def test_accept_closes_the_connection_when_building_its_channel_fails(
    short_tmp: Path,
) -> None:
    # Guards: accept() leaked the accepted socket when building its channel raised
    path = str(short_tmp / "s")
    async with (
        await unix.listen(path, "seqpacket", max_message_size=UNMAPPABLE) as listener,
        await unix.connect(path, "seqpacket") as client,
    ):
        with warnings.catch_warnings():
            # The leftover handle's warning is the separate bug tested below.
            warnings.simplefilter("ignore", ResourceWarning)
            with (
                address_space_limit(),
                pytest.raises(OSError, match="Cannot allocate memory") as failure,
            ):
                await listener.accept()
            # The accepted end is closed at once, not when its last reference goes (the
            # traceback, still held here, references accept's frame).
            with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
                await client.receive()
            del failure
            gc.collect()  # finalize the leftover handle here, not during another test


@pytest.mark.asyncio
@pytest.mark.parametrize("opening", ["accept", "connect", "listen-dgram"])
async def test_failed_message_channel_setup_leaves_no_unclosed_handle(
    short_tmp: Path, opening: str
) -> None:
    # Guards: a seqpacket/dgram channel whose construction failed left an unclosed handle.
    # UnixMessageChannel made its FdResource before mmap(max_message_size + 1); when the
    # mmap failed, accept/connect/listen closed the socket but the FdResource stayed
    # "open": it warned when collected and, on trio, notify_closing()'d the fd number,
    # which may belong to another object by then (see the trio test below).
    path = str(short_tmp / "s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if opening == "accept":
            async with (
                await unix.listen(path, "seqpacket", max_message_size=UNMAPPABLE) as listener,
                await unix.connect(path, "seqpacket"),
            ):
                with address_space_limit(), pytest.raises(OSError, match="Cannot allocate memory"):
                    await listener.accept()
        elif opening == "connect":
            async with await unix.listen(path, "seqpacket"):
                with address_space_limit(), pytest.raises(OSError, match="Cannot allocate memory"):
                    await unix.connect(path, "seqpacket", max_message_size=UNMAPPABLE)
        else:
            with address_space_limit(), pytest.raises(OSError, match="Cannot allocate memory"):
                await unix.listen(path, "dgram", max_message_size=UNMAPPABLE)
        gc.collect()
    leftovers = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leftovers == []


def test_failed_accept_never_closes_an_unrelated_fd_later_on_trio(short_tmp: Path) -> None:
    # Guards: a failed accept's leftover handle woke waiters on an fd number reused since
    # Same root cause as above: FdWaiter.close() in the leftover FdResource's finalizer
    # calls anyio.notify_closing() on the old number, and trio wakes the task waiting on the
    # pipe that now has it with ClosedResourceError.
    path = str(short_tmp / "s")
    got: list[Any] = []

    async def main() -> None:
        async with (
            await unix.listen(path, "seqpacket", max_message_size=UNMAPPABLE) as listener,
            await unix.connect(path, "seqpacket"),
        ):
            probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            os.close(probe)  # the lowest free number: accept() gets it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                kept: list[BaseException] = []
                try:
                    with address_space_limit():
                        await listener.accept()
                except OSError as exc:
                    kept.append(exc)  # error reporting may hold the traceback a while
                assert len(kept) == 1
                tx, rx = aioipc.pipe()
                async with tx, rx, anyio.create_task_group() as tg:
                    assert rx.fileno() == probe  # the accepted socket's number, reused

                    async def wait() -> None:
                        try:
                            got.append(await rx.receive())
                        except ClosedResourceError:
                            got.append("ClosedResourceError")

                    tg.start_soon(wait)
                    await anyio.wait_all_tasks_blocked()
                    kept.clear()
                    gc.collect()  # the leftover handle is finalized now
                    await anyio.wait_all_tasks_blocked()
                    await tx.send(b"hello")

    anyio.run(main, backend="trio")
    assert got == [b"hello"]


# ------------------------------------------------------------------------------ FIFOs


def test_fifo_writer_ids_are_random_not_derived_from_the_pid() -> None:
    # Guards: FIFO writer ids came from the pid, so same-pid writers could collide
    ids = [_new_writer_id() for _ in range(64)]
    assert len(set(ids)) == len(ids)
    assert all(i >> 32 != os.getpid() for i in ids)
    assert all(0 <= i < 1 << 64 for i in ids)


_PIDNS_WRITER = textwrap.dedent(
    """
    import os, sys, anyio
    from aioipc import fifo

    async def main(path, tag):
        tx = await fifo.open_sender(path)
        print("pid", os.getpid(), flush=True)
        sys.stdin.readline()  # both writers start together
        for _ in range(20):
            await tx.send(tag * 50_000)  # 13 chunks each
        await tx.aclose()
        print("done", flush=True)

    anyio.run(main, sys.argv[1], sys.argv[2].encode())
    """
)


def _can_unshare_pid_namespace() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-p", "-f", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.asyncio
async def test_fifo_writers_with_the_same_pid_in_two_pid_namespaces(short_tmp: Path) -> None:
    # Guards: FIFO writers with the same pid in two pid namespaces had their messages spliced
    if not _can_unshare_pid_namespace():
        pytest.skip("needs root and unshare(1) able to create a pid namespace")
    path = str(short_tmp / "f")
    cmd = ["unshare", "-p", "-f", sys.executable, "-c", _PIDNS_WRITER, path]
    want = {b"A": b"A" * 50_000, b"B": b"B" * 50_000}
    async with (
        await fifo.open_receiver(path, create=True, persistent=True) as rx,
        spawn([*cmd, "A"]) as pa,
        spawn([*cmd, "B"]) as pb,
    ):
        await pa.expect("pid 1")
        await pb.expect("pid 1")
        await pa.tell("go")
        await pb.tell("go")
        counts = {b"A": 0, b"B": 0}
        with anyio.fail_after(TIMEOUT):
            for _ in range(40):
                m = await rx.receive()
                tag = m[:1]
                assert tag in want, f"message of {len(m)} bytes starting {m[:8]!r}"
                same(m, want[tag])
                counts[tag] += 1
        assert counts == {b"A": 20, b"B": 20}
        for p in (pa, pb):
            await p.expect("done")
            await p.finish()


@pytest.mark.asyncio
async def test_fifo_receive_nowait_sees_a_writer_that_came_and_went(short_tmp: Path) -> None:
    # Guards: a FIFO writer that came and went unwritten left receive_nowait at WouldBlock
    path = str(short_tmp / "f")
    async with await fifo.open_receiver(path, create=True) as rx:
        with pytest.raises(WouldBlock):
            rx.receive_nowait()  # no writer yet: not an end of stream
        tx = await fifo.open_sender(path)
        await tx.aclose()  # a writer came and went without writing
        with pytest.raises(EndOfStream):
            rx.receive_nowait()
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()


@pytest.mark.asyncio
async def test_raw_fifo_sends_are_never_coalesced_past_pipe_buf(short_tmp: Path) -> None:
    # Guards: raw FIFO sends were coalesced into one write over PIPE_BUF that others could cut
    path = str(short_tmp / "f")
    lines = [b"A%02d" % i + b"a" * 296 + b"\n" for i in range(15)]  # 4500 bytes in all
    async with (
        await fifo.open_receiver(path, create=True, framing=False) as rx,
        await fifo.open_sender(path, framing=False) as tx,
    ):
        for line in lines:  # one loop pass: a coalescing sender would keep 14 of them back
            await tx.send(line)
        # Each send wrote its own line (atomic: 300 bytes <= PIPE_BUF) before returning.
        assert rx.receive_nowait() == b"".join(lines)
        with pytest.raises(WouldBlock):
            rx.receive_nowait()


@pytest.mark.asyncio
async def test_posix_objects_get_the_asked_mode_whatever_the_umask() -> None:
    """mq_open and sem_open apply the umask; aioipc promises the mode it was given (as
    its FIFOs do), so a peer in the group the caller opened it to can use it."""
    name = f"/aioipc-umask-{os.getpid()}"
    old = os.umask(0o077)
    try:
        q = aioipc.posix.MessageQueue.create(name, mode=0o640)
        try:
            assert q.mode == 0o640
            assert os.stat(f"/dev/mqueue{name}").st_mode & 0o777 == 0o640
        finally:
            q.unlink()
            await q.aclose()
        s = aioipc.posix.Semaphore.create(name, 0, mode=0o660)
        try:
            assert os.stat(f"/dev/shm/sem.{name[1:]}").st_mode & 0o777 == 0o660
        finally:
            s.unlink()
            await s.aclose()
    finally:
        os.umask(old)


@pytest.mark.asyncio
async def test_sysv_message_bigger_than_the_queue_is_refused_not_waited_for() -> None:
    """The kernel answers only "full" for a message larger than msg_qbytes, so without
    a check a send would wait for ever for room that can never come."""
    q = aioipc.sysv.MessageQueue.create(max_bytes=100)
    try:
        with pytest.raises(aioipc.MessageTooLargeError, match=r"max_bytes.* = 100 bytes"):
            q.send_nowait(b"x" * 200)
        with anyio.fail_after(5), pytest.raises(aioipc.MessageTooLargeError, match="max_bytes"):
            await q.send(b"x" * 200)
        assert q.current_messages == 0
    finally:
        await q.aclose()


@pytest.mark.asyncio
async def test_lock_and_posix_handles_pickle_to_fresh_handles() -> None:
    import pickle

    lock = aioipc.Lock.create()
    name = f"/aioipc-pickle-{os.getpid()}"
    mq = aioipc.posix.MessageQueue.create(name)
    try:
        async with lock:
            copy = pickle.loads(pickle.dumps(lock))
            try:
                assert copy.id == lock.id
                assert copy.locked()
                with pytest.raises(anyio.WouldBlock):
                    copy.acquire_nowait()
            finally:
                await copy.aclose()
        mq2 = pickle.loads(pickle.dumps(mq))
        try:
            await mq2.send(b"through a pickled handle")
            assert await mq.receive() == b"through a pickled handle"
        finally:
            await mq2.aclose()
    finally:
        mq.unlink()
        await mq.aclose()
        await lock.aclose()


@pytest.mark.asyncio
async def test_waits_on_unrelated_handles_cannot_starve_one_another() -> None:
    """With every worker token taken by idle receives on other queues, a receive whose
    message arrives is still served (it polls its no-wait call while it queues)."""
    limiter = aioipc.worker_limiter()
    old = limiter.total_tokens
    limiter.total_tokens = 2
    queues = [aioipc.sysv.MessageQueue.create() for _ in range(4)]
    got: list[bytes] = []
    done = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            for q in queues[:3]:
                tg.start_soon(q.receive)

            async def last() -> None:
                got.append(await queues[3].receive())
                done.set()

            tg.start_soon(last)
            # Observing the limiter, which has no event to wait on: poll under a deadline.
            with anyio.fail_after(5):
                while limiter.borrowed_tokens < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            queues[3].send_nowait(b"served")
            with anyio.fail_after(2):
                await done.wait()
            assert got == [b"served"]
            tg.cancel_scope.cancel()
    finally:
        limiter.total_tokens = old
        for q in queues:
            await q.aclose()


def test_a_forked_child_does_not_remove_the_parents_private_objects() -> None:
    """gunicorn --preload: workers inherit handles; their exit must not destroy the
    private lock or queue the parent created."""

    async def make() -> tuple[aioipc.Lock, aioipc.sysv.MessageQueue]:
        return aioipc.Lock.create(), aioipc.sysv.MessageQueue.create()

    lock, q = anyio.run(make)
    try:
        pid = os.fork()
        if pid == 0:  # the child drops its copies, as a worker's exit would
            code = 0
            try:

                async def child() -> None:
                    await lock.aclose()
                    await q.aclose()

                anyio.run(child)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not lock.locked()  # still there: reading it would fail otherwise
        q.send_nowait(b"still here")
        assert q.receive_nowait() == b"still here"
    finally:

        async def close() -> None:
            await lock.aclose()
            await q.aclose()

        anyio.run(close)


@pytest.mark.asyncio
async def test_semaphore_set_larger_than_semopm_and_held_permits_on_close() -> None:
    s = aioipc.sysv.SemaphoreSet.create(size=600, values=1)
    try:
        assert s.get_values() == [1] * 600
    finally:
        await s.aclose()
    sem = aioipc.sysv.Semaphore.create(value=2)
    other = aioipc.sysv.Semaphore.from_id(sem.id)
    try:
        await other.acquire()
        await other.acquire()
        assert sem.value == 0
        await other.aclose()  # gives back what it held: a closed handle cannot release
        assert sem.value == 2
    finally:
        await other.aclose()
        await sem.aclose()


@pytest.mark.asyncio
async def test_receive_message_defaults_to_the_handles_receive_type() -> None:
    a = aioipc.sysv.MessageQueue.create(send_type=1, receive_type=2)
    b = aioipc.sysv.MessageQueue.from_id(a.id, send_type=2, receive_type=1)
    try:
        await a.send(b"to b")
        await b.send(b"to a")
        assert await a.receive_message() == (2, b"to a")
        assert b.receive_message_nowait() == (1, b"to b")
    finally:
        await b.aclose()
        await a.aclose()
