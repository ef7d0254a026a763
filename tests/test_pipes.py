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
from aioipc.pipes import from_fd

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
