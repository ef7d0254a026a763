"""Anonymous pipes: round trips, hand-off to child processes, faults and cancellation."""

from __future__ import annotations

import fcntl
import gc
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)

import aioipc
from aioipc import IPCAttribute, MessageTooLargeError, ProtocolError
from aioipc._core.wait import YIELD_EVERY
from aioipc.pipes import from_fd
from tests._assert import same
from tests._fds import KIB, TIMEOUT, pipe_link, seeded_bytes

SIZES = [0, 1, 63, 64, 65, 4096, 65_536, 1_000_000, 3 * 1024 * 1024]


def pattern(i: int, size: int) -> bytes:
    """Content that differs for each message, so corruption or reordering shows."""
    seed = struct.pack("!I", i)
    return (seed * (size // 4 + 1))[:size]


@pytest.mark.asyncio
async def test_round_trip_every_size_in_order() -> None:
    tx, rx = aioipc.pipe()
    async with tx, rx, anyio.create_task_group() as tg:

        async def produce() -> None:
            for i, size in enumerate(SIZES):
                await tx.send(pattern(i, size))

        tg.start_soon(produce)
        with anyio.fail_after(10):
            for i, size in enumerate(SIZES):
                assert await rx.receive() == pattern(i, size)


@pytest.mark.asyncio
async def test_pipe_is_grown_and_attributes() -> None:
    tx, rx = aioipc.pipe()
    async with tx, rx:
        assert fcntl.fcntl(rx.fileno(), fcntl.F_GETPIPE_SZ) == 1024 * 1024
        assert rx.extra(IPCAttribute.mechanism) == "pipe"
        assert rx.extra(IPCAttribute.fd) == rx.fileno()
        assert tx.extra(IPCAttribute.framed) is True
        assert tx.extra(IPCAttribute.max_message_size) == 64 * 1024 * 1024
        assert rx.extra(IPCAttribute.peer_pid, None) is None


@pytest.mark.asyncio
async def test_raw_mode_talks_to_a_non_framing_peer() -> None:
    tx, rx = aioipc.pipe(framing=False)
    async with rx:
        # A raw peer: plain os.write on the fd, as `cat` or a C program would.
        os.write(tx.fileno(), b"hello ")
        os.write(tx.fileno(), b"world")
        await tx.aclose()
        got = b""
        with anyio.fail_after(5):
            async for chunk in rx:
                got += chunk
        assert got == b"hello world"


CHILD_ECHO = textwrap.dedent(
    """
    import sys, anyio
    from aioipc.pipes import from_fd

    async def main():
        rx = from_fd(int(sys.argv[1]), "r")
        tx = from_fd(int(sys.argv[2]), "w")
        async with rx, tx:
            async for msg in rx:
                await tx.send(msg[::-1])

    anyio.run(main)
    """
)


@pytest.mark.asyncio
async def test_subprocess_child_over_pass_fds() -> None:
    to_child_tx, to_child_rx = aioipc.pipe()
    to_parent_tx, to_parent_rx = aioipc.pipe()
    fds = (to_child_rx.fileno(), to_parent_tx.fileno())
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_ECHO, str(fds[0]), str(fds[1])], pass_fds=fds
    )
    try:
        # The child has its own copies; ours must go, or end of stream never comes.
        to_child_rx.close()
        to_parent_tx.close()
        async with to_child_tx, to_parent_rx:
            with anyio.fail_after(20):
                for i, size in enumerate([0, 10, 100_000, 2_000_000]):
                    await to_child_tx.send(pattern(i, size))
                    assert await to_parent_rx.receive() == pattern(i, size)[::-1]
                await to_child_tx.aclose()
                with pytest.raises(EndOfStream):
                    await to_parent_rx.receive()
    finally:
        assert proc.wait(timeout=20) == 0


def _spawn_child(rx: aioipc.ReceiveChannel, tx: aioipc.SendChannel) -> None:
    async def main() -> None:
        async with rx, tx:
            total = 0
            async for msg in rx:
                (n,) = struct.unpack("!I", msg[:4])
                total += n
                assert msg == pattern(n, len(msg))
            await tx.send(struct.pack("!Q", total))

    anyio.run(main)


@pytest.mark.asyncio
async def test_multiprocessing_spawn_child_gets_channels_as_arguments() -> None:
    to_child_tx, to_child_rx = aioipc.pipe()
    to_parent_tx, to_parent_rx = aioipc.pipe()
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_spawn_child, args=(to_child_rx, to_parent_tx))
    proc.start()
    try:
        to_child_rx.close()
        to_parent_tx.close()
        async with to_child_tx, to_parent_rx:
            with anyio.fail_after(30):
                for i in range(1000):
                    await to_child_tx.send(pattern(i, 8 + i))
                await to_child_tx.aclose()
                (total,) = struct.unpack("!Q", await to_parent_rx.receive())
        assert total == sum(range(1000))
    finally:
        proc.join(20)
        assert proc.exitcode == 0


def test_from_fd_rejects_bad_mode_and_closed_fd() -> None:
    with pytest.raises(ValueError, match="mode"):
        from_fd(0, "rw")  # type: ignore[call-overload]
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ValueError, match=rf"fd {r} is not an open file descriptor"):
        from_fd(r, "r")
    with pytest.raises(ValueError, match="fd -1 is not a file descriptor"):
        from_fd(-1, "w")
    with pytest.raises(TypeError, match="file descriptor is an int"):
        from_fd("3", "w")  # type: ignore[call-overload]


@pytest.mark.asyncio
async def test_writer_dies_mid_frame_is_broken_not_a_hang() -> None:
    tx, rx = aioipc.pipe()
    async with rx:
        code = (
            "import os, sys, struct;os.write(int(sys.argv[1]), struct.pack('!I', 1000) + b'x' * 10)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tx.fileno())], pass_fds=[tx.fileno()]
        )
        await tx.aclose()
        assert proc.wait(timeout=20) == 0
        with anyio.fail_after(5), pytest.raises(BrokenResourceError, match="middle of a message"):
            await rx.receive()


@pytest.mark.asyncio
async def test_clean_close_is_end_of_stream_and_stays_so() -> None:
    tx, rx = aioipc.pipe()
    async with rx:
        await tx.send(b"last")
        await tx.aclose()
        assert await rx.receive() == b"last"
        for _ in range(2):
            with pytest.raises(EndOfStream):
                await rx.receive()


@pytest.mark.asyncio
async def test_oversized_message_is_refused_and_channel_still_works() -> None:
    tx, rx = aioipc.pipe(max_message_size=1000)
    async with tx, rx:
        with pytest.raises(MessageTooLargeError, match="1000") as info:
            await tx.send(b"x" * 1001)
        assert info.value.limit == 1000
        assert info.value.size == 1001
        await tx.send(b"y" * 1000)
        assert await rx.receive() == b"y" * 1000


@pytest.mark.asyncio
async def test_corrupt_length_prefix_from_raw_peer_is_a_protocol_error() -> None:
    tx, rx = aioipc.pipe()
    async with rx:
        os.write(tx.fileno(), b"hello world, I do not frame")
        await tx.aclose()
        with anyio.fail_after(5), pytest.raises(ProtocolError, match="max_message_size"):
            await rx.receive()


@pytest.mark.asyncio
async def test_send_and_receive_after_aclose() -> None:
    tx, rx = aioipc.pipe()
    await tx.aclose()
    await rx.aclose()
    with pytest.raises(ClosedResourceError):
        await tx.send(b"x")
    with pytest.raises(ClosedResourceError):
        await rx.receive()
    await tx.aclose()  # idempotent


@pytest.mark.asyncio
async def test_send_to_closed_reader_is_broken() -> None:
    tx, rx = aioipc.pipe()
    await rx.aclose()
    async with tx:
        with pytest.raises(BrokenResourceError, match="pipe"):
            await tx.send(b"nobody listens")


@pytest.mark.asyncio
async def test_aclose_wakes_a_blocked_receiver() -> None:
    tx, rx = aioipc.pipe()
    async with tx:
        result: list[BaseException] = []

        async def receive() -> None:
            try:
                await rx.receive()
            except BaseException as exc:
                result.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            await rx.aclose()
        assert isinstance(result[0], ClosedResourceError)


@pytest.mark.asyncio
async def test_cancelled_receive_mid_frame_loses_nothing() -> None:
    tx, rx = aioipc.pipe()
    async with tx, rx:
        frame = struct.pack("!I", 10) + b"0123456789"
        os.write(tx.fileno(), frame[:7])  # half a frame
        with anyio.CancelScope() as scope:

            async def cancel_when_blocked() -> None:
                await anyio.wait_all_tasks_blocked()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_blocked)
                await rx.receive()
        assert scope.cancelled_caught
        os.write(tx.fileno(), frame[7:])
        await tx.send(b"next")
        with anyio.fail_after(5):
            assert await rx.receive() == b"0123456789"
            assert await rx.receive() == b"next"


@pytest.mark.asyncio
async def test_cancelled_send_after_partial_write_still_delivers_whole_message() -> None:
    tx, rx = aioipc.pipe(pipe_size=4096)
    async with tx, rx:
        big = pattern(7, 100_000)
        with anyio.move_on_after(0.2) as scope:
            await tx.send(big)  # only 4 KiB fit; nobody reads; cancelled mid-way
        assert scope.cancelled_caught
        async with anyio.create_task_group() as tg:
            tg.start_soon(tx.send, b"after")
            with anyio.fail_after(5):
                assert await rx.receive() == big
                assert await rx.receive() == b"after"


@pytest.mark.asyncio
async def test_cancelled_send_before_any_byte_sends_nothing() -> None:
    tx, rx = aioipc.pipe(pipe_size=4096)
    async with tx, rx:
        filler = b"f" * (4096 - 4)
        await tx.send(filler)  # the pipe is now exactly full
        # A send in the same loop pass would be coalesced into the handle's bounded
        # buffer (committed, so not cancellable); backpressure starts at the next pass.
        await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(0.2) as scope:
            await tx.send(b"never")
        assert scope.cancelled_caught
        assert await rx.receive() == filler
        with pytest.raises(WouldBlock):
            rx.receive_nowait()


@pytest.mark.asyncio
async def test_two_receivers_at_once_is_busy() -> None:
    tx, rx = aioipc.pipe()
    async with tx, rx, anyio.create_task_group() as tg:
        tg.start_soon(rx.receive)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BusyResourceError):
            await rx.receive()
        await tx.send(b"for the first")


@pytest.mark.asyncio
async def test_nowait_variants() -> None:
    tx, rx = aioipc.pipe(pipe_size=4096)
    async with tx, rx:
        with pytest.raises(WouldBlock):
            rx.receive_nowait()
        tx.send_nowait(b"a" * 4092)
        with pytest.raises(WouldBlock):
            tx.send_nowait(b"b")
        assert rx.receive_nowait() == b"a" * 4092
        tx.send_nowait(b"b")
        assert rx.receive_nowait() == b"b"


def _open_and_forget_one_end() -> None:
    _tx, rx = aioipc.pipe()
    rx.close()


def test_unclosed_handle_warns() -> None:
    with pytest.warns(ResourceWarning, match="unclosed aioipc handle"):
        _open_and_forget_one_end()
    gc.collect()


@pytest.mark.asyncio
async def test_burst_of_small_sends_is_coalesced_whole_and_in_order() -> None:
    tx, rx = aioipc.pipe(pipe_size=4096)
    async with tx, rx, anyio.create_task_group() as tg:

        async def produce() -> None:
            # No yield between these sends except the library's own every-16th one: they
            # are written in bursts, and the small pipe forces background flushing.
            for i in range(5000):
                await tx.send(pattern(i, i % 100))

        tg.start_soon(produce)
        with anyio.fail_after(10):
            for i in range(5000):
                assert await rx.receive() == pattern(i, i % 100)


@pytest.mark.asyncio
async def test_burst_is_flushed_when_the_sender_yields_without_sending_again() -> None:
    tx, rx = aioipc.pipe()
    async with tx, rx:
        for i in range(10):
            await tx.send(b"m%d" % i)
        # No further send and no aclose: the loop's callback must write the burst out.
        with anyio.fail_after(5):
            assert [await rx.receive() for _ in range(10)] == [b"m%d" % i for i in range(10)]


# ==========================================================================================
# Regressions: pipes (the fd send path behind every pipe, FIFO and unix stream)
# Regression tests moved from tests/test_regressions.py (issue 11): bugs found in review,
# kept next to the mechanism they guard. Each names, in its first line, the bug it guards.
# ==========================================================================================


# -------------------------------------------- committed sends reach the kernel on their own


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
    msgs = [seeded_bytes(16_000, seed) for seed in range(5)]  # 5 x 16 KB > the 64 KiB pipe
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
    first = [seeded_bytes(20_000, seed) for seed in range(6)]
    second = [seeded_bytes(16_000, seed) for seed in range(10, 15)]

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


@pytest.mark.asyncio
async def test_send_during_aclose_flush_is_refused_and_the_frame_stays_whole() -> None:
    # Guards: a send racing aclose()'s flush was written into the middle of the pending frame
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    big = seeded_bytes(200_000, 2)
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


# ---------------------------------------------------------------- buffers the caller reuses


@pytest.mark.asyncio
async def test_send_nowait_bytearray_reused_after_a_partial_write() -> None:
    # Guards: a bytearray from send_nowait was buffered by reference; reusing it changed the message
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    buf = bytearray(seeded_bytes(100_000, 4))
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
    buf = bytearray(seeded_bytes(size, 5))
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


# ------------------------------------------------------------------- closing and fd numbers


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
@pytest.mark.parametrize("use_async_with", [False, True])
async def test_aclose_with_pending_data_and_the_peer_gone(use_async_with: bool) -> None:
    # Guards: aclose() raised and left the fd open when the peer was gone with data pending
    tx, rx = aioipc.pipe(pipe_size=64 * KIB)
    tx.send_nowait(seeded_bytes(200_000, 6))  # the rest of the frame is pending
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
