"""Tests for FIFO channels (``aioipc.fifo``): real FIFOs, real writer and reader processes.

Peer processes are ``tests/peers/fifo_peer.py`` (started with :func:`anyio.open_process`)
or ``multiprocessing`` spawn children. Nothing waits by sleeping: every wait is on an
event (a line from a peer, a process exit, a message) under ``anyio.fail_after``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import multiprocessing
import os
import random
import resource
import select
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import EndOfStream, WouldBlock

import aioipc
from aioipc import IPCAttribute, fifo
from aioipc._core.stream import FdReceiveChannel, FdSendChannel
from aioipc.fifo import NotAFifoError
from aioipc.framing import MAX_CHUNK_PAYLOAD, PIPE_BUF, new_writer_id
from tests._assert import same
from tests._fds import TIMEOUT, links_to
from tests._peer import Peer, spawn

PYTHON = sys.executable
PEER = Path(__file__).parent / "peers" / "fifo_peer.py"


def _load_peer_module() -> Any:
    spec = importlib.util.spec_from_file_location("fifo_peer", PEER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: ``payload(writer, index, size)``: the peers' and the tests' shared message content.
payload = _load_peer_module().payload

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------- helpers


def run_peer(*args: object) -> contextlib.AbstractAsyncContextManager[Peer]:
    """Start ``fifo_peer.py ARGS``; it is killed if it still runs at the end, and reaped."""
    return spawn([PYTHON, str(PEER), *map(str, args)])


@contextlib.contextmanager
def reaped(proc: BaseProcess) -> Iterator[BaseProcess]:
    """A multiprocessing child that is killed (if still alive) and joined on the way out."""
    try:
        yield proc
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


async def join(proc: BaseProcess, seconds: float = 20) -> None:
    with anyio.fail_after(seconds):
        await anyio.to_thread.run_sync(proc.join, seconds)
    assert proc.exitcode == 0, f"child exited with {proc.exitcode}"


async def recv_from(conn: Connection, seconds: float = 20) -> Any:
    """Receive one object from a multiprocessing connection without blocking the loop."""
    with anyio.fail_after(seconds):
        ready = await anyio.to_thread.run_sync(conn.poll, seconds)
    assert ready, "the child sent nothing"
    return conn.recv()


def fds_open_on(path: Path) -> list[int]:
    """File descriptors of this process that refer to ``path``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                found.append(int(name))
    return found


async def receive_all(rx: FdReceiveChannel, count: int, seconds: float = 20) -> list[bytes]:
    with anyio.fail_after(seconds):
        return [await rx.receive() for _ in range(count)]


async def assert_end_of_stream(rx: FdReceiveChannel, seconds: float = 10) -> None:
    with anyio.fail_after(seconds), pytest.raises(anyio.EndOfStream):
        await rx.receive()


def describe(message: bytes) -> str:
    return f"{len(message)} bytes starting {message[:16].hex()}"


ROUND_TRIP_SIZES = [0, 1, MAX_CHUNK_PAYLOAD, MAX_CHUNK_PAYLOAD + 1, PIPE_BUF, 100_000, 3 * MiB]


# -------------------------------------------------------------------------------- 1. create


def test_create_makes_fifo_with_mode_0600(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    st = os.lstat(path)
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600

    # The mode asked for is the mode obtained, whatever the umask.
    other = short_tmp / "g"
    fifo.create(other, mode=0o666)
    assert stat.S_IMODE(os.lstat(other).st_mode) == 0o666


def test_create_on_existing_path(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    with pytest.raises(aioipc.IPCExistsError) as info:
        fifo.create(path)
    assert isinstance(info.value, FileExistsError)
    assert str(path) in str(info.value)

    fifo.create(path, exist_ok=True)  # an existing FIFO is accepted
    assert stat.S_ISFIFO(os.lstat(path).st_mode)

    regular = short_tmp / "file"
    regular.write_bytes(b"data")
    with pytest.raises(aioipc.IPCExistsError):
        fifo.create(regular)
    with pytest.raises(NotAFifoError) as not_fifo:
        fifo.create(regular, exist_ok=True)
    assert str(regular) in str(not_fifo.value)
    assert regular.read_bytes() == b"data"


def test_unlink_removes_only_a_fifo_and_its_registry_entry(short_tmp: Path) -> None:
    from aioipc._core import registry as _registry

    path = short_tmp / "f"
    fifo.create(path)
    fifo.create(path, exist_ok=True)  # found, not made: recorded once, by the creator
    [entry] = [e for e in _registry.entries() if e.ident == str(path)]
    assert (entry.kind, entry.pid, entry.ino) == ("fifo", os.getpid(), os.lstat(path).st_ino)
    fifo.unlink(path)
    assert not os.path.lexists(path)
    assert not [e for e in _registry.entries() if e.ident == str(path)]
    with pytest.raises(aioipc.IPCNotFoundError, match=str(path)):
        fifo.unlink(path)

    regular = short_tmp / "file"
    regular.write_bytes(b"data")
    link = short_tmp / "link"
    fifo.create(short_tmp / "target")
    link.symlink_to(short_tmp / "target")
    for other in (regular, link):
        with pytest.raises(NotAFifoError, match=str(other)):
            fifo.unlink(other)
        assert os.path.lexists(other)  # left alone
    assert stat.S_ISFIFO(os.lstat(short_tmp / "target").st_mode)  # the link was not followed


# ------------------------------------------------------------------------------ 2. refusals


@pytest.mark.asyncio
async def test_open_regular_file_is_refused(short_tmp: Path) -> None:
    regular = short_tmp / "file"
    regular.write_bytes(b"")
    with pytest.raises(NotAFifoError) as rx_info:
        await fifo.open_receiver(regular)
    assert str(regular) in str(rx_info.value)
    assert "regular file" in str(rx_info.value)
    with anyio.fail_after(5), pytest.raises(NotAFifoError) as tx_info:
        await fifo.open_sender(regular)
    assert str(regular) in str(tx_info.value)
    assert fds_open_on(regular) == []


@pytest.mark.asyncio
async def test_open_symlink_to_fifo_is_refused(short_tmp: Path) -> None:
    target = short_tmp / "real"
    fifo.create(target)
    link = short_tmp / "link"
    link.symlink_to(target)
    # A reader on the real FIFO, so that a sender that followed the link would succeed.
    async with await fifo.open_receiver(target):
        with pytest.raises(NotAFifoError, match="symbolic link") as rx_info:
            await fifo.open_receiver(link)
        assert str(link) in str(rx_info.value)
        with anyio.fail_after(5), pytest.raises(NotAFifoError, match="symbolic link"):
            await fifo.open_sender(link)
        with pytest.raises(NotAFifoError, match="symbolic link"):
            await fifo.open_receiver(link, create=True)
    assert fds_open_on(target) == []


@pytest.mark.asyncio
async def test_open_missing_path(short_tmp: Path) -> None:
    missing = short_tmp / "missing"
    with pytest.raises(aioipc.IPCNotFoundError) as rx_info:
        await fifo.open_receiver(missing)
    assert isinstance(rx_info.value, FileNotFoundError)
    assert str(missing) in str(rx_info.value)
    with anyio.fail_after(5), pytest.raises(aioipc.IPCNotFoundError) as tx_info:
        await fifo.open_sender(missing)
    assert isinstance(tx_info.value, FileNotFoundError)
    assert str(missing) in str(tx_info.value)
    assert not missing.exists()


# ---------------------------------------------------------------------------- 3. round trip


@pytest.mark.asyncio
async def test_round_trip_in_one_process(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    expected = [payload(0, i, size) for i, size in enumerate(ROUND_TRIP_SIZES)]
    async with await fifo.open_receiver(path) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        assert rx.extra(IPCAttribute.mechanism) == "fifo"
        assert rx.extra(IPCAttribute.path) == str(path)
        assert tx.extra(IPCAttribute.framed) is True

        async def produce() -> None:
            async with tx:
                for message in expected:
                    await tx.send(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)  # 3 MiB does not fit in the pipe: send and receive at once
            got = await receive_all(rx, len(expected))
        for i, (message, want) in enumerate(zip(got, expected, strict=True)):
            assert message == want, f"message {i}: got {describe(message)}"
        await assert_end_of_stream(rx)


@pytest.mark.asyncio
async def test_round_trip_from_writer_process(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    sizes = ",".join(map(str, ROUND_TRIP_SIZES))
    async with await fifo.open_receiver(path) as rx, run_peer("send", path, 3, sizes) as peer:
        await peer.expect("ready")
        got = await receive_all(rx, len(ROUND_TRIP_SIZES))
        for i, (message, size) in enumerate(zip(got, ROUND_TRIP_SIZES, strict=True)):
            assert message == payload(3, i, size), f"message {i}: got {describe(message)}"
        await peer.expect("done")
        await peer.finish()
        await assert_end_of_stream(rx)


# --------------------------------------------------------------------- 4. open_sender waits


@pytest.mark.asyncio
async def test_open_sender_waits_for_receiver_without_blocking_loop(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    opened: list[FdSendChannel] = []
    done = anyio.Event()

    async def opener() -> None:
        opened.append(await fifo.open_sender(path))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
        # Another task keeps ticking while the sender waits: the loop is not blocked.
        ticks = 0
        start = anyio.current_time()
        with anyio.fail_after(10):
            while anyio.current_time() - start < 0.25:
                await anyio.sleep(0.005)
                ticks += 1
        assert ticks >= 10
        assert not done.is_set(), "open_sender returned with no receiver"
        assert fds_open_on(path) == []

        async with await fifo.open_receiver(path) as rx:
            with anyio.fail_after(5):
                await done.wait()
            async with opened[0] as tx:
                await tx.send(b"after the wait")
                with anyio.fail_after(5):
                    assert await rx.receive() == b"after the wait"


@pytest.mark.asyncio
async def test_open_sender_cancelled_opens_nothing(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    with anyio.move_on_after(0.1) as scope:
        await fifo.open_sender(path)
    assert scope.cancelled_caught
    assert fds_open_on(path) == []
    # And no write end is open anywhere: a reader sees end of file at once.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)


# -------------------------------------------------------------------------- 5. first writer


@pytest.mark.asyncio
async def test_receiver_opened_before_writer_waits_for_it(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    sizes = [10, 5000, 70_000, 3]
    got: list[bytes] = []
    ended = anyio.Event()

    async with await fifo.open_receiver(path) as rx:

        async def consume() -> None:
            try:
                while True:
                    got.append(await rx.receive())
            except anyio.EndOfStream:
                ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            # The receive task has read the FIFO (no writer: read() gave b"") and waits.
            await anyio.wait_all_tasks_blocked()
            assert not ended.is_set(), "a receiver with no writer yet reported end of stream"
            assert got == []
            async with run_peer("send", path, 5, ",".join(map(str, sizes))) as peer:
                await peer.expect("ready")
                await peer.expect("done")
                await peer.finish()
            with anyio.fail_after(10):
                await ended.wait()
    assert [len(m) for m in got] == sizes
    assert got == [payload(5, i, size) for i, size in enumerate(sizes)]


@pytest.mark.asyncio
async def test_receive_nowait_before_any_writer_is_wouldblock(short_tmp: Path) -> None:
    # Regression: the first b"" read (no writer yet) used to make the next one count as
    # end of stream, so polling a fresh FIFO twice reported a false EndOfStream.
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path) as rx:
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()
        async with await fifo.open_sender(path) as tx:
            await tx.send(b"first")
        assert rx.receive_nowait() == b"first"
        with pytest.raises(anyio.EndOfStream):
            rx.receive_nowait()


@pytest.mark.asyncio
async def test_cancelled_receive_before_any_writer_then_writer_arrives(short_tmp: Path) -> None:
    # Regression (same root cause): a receive cancelled while waiting for the first
    # writer made the next receive raise EndOfStream at once instead of waiting.
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path) as rx:
        with anyio.move_on_after(0.05) as scope:
            await rx.receive()
        assert scope.cancelled_caught
        result: list[object] = []

        async def consume() -> None:
            with anyio.fail_after(20):
                try:
                    result.append(await rx.receive())
                except anyio.EndOfStream as exc:
                    result.append(exc)  # fails here: a false end of stream

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            async with run_peer("send", path, 6, "300") as peer:
                await peer.expect("ready")
                await peer.expect("done")
                await peer.finish()
        assert result == [payload(6, 0, 300)]


# ---------------------------------------------------------------------------- 6. persistent


@pytest.mark.asyncio
async def test_persistent_receiver_outlives_writers(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    first = [1, 20_000, 4096]
    second = [70_000, 0, 8]
    async with await fifo.open_receiver(path, persistent=True) as rx:
        async with run_peer("send", path, 1, ",".join(map(str, first))) as peer:
            await peer.expect("ready")
            await peer.expect("done")
            await peer.finish()  # writer 1 has closed and exited
        got = await receive_all(rx, len(first))
        assert got == [payload(1, i, s) for i, s in enumerate(first)]
        # Writer 1 is gone and its messages are drained: "nothing yet", not end of stream.
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()

        async with run_peer("send", path, 2, ",".join(map(str, second))) as peer:
            await peer.expect("ready")
            got = await receive_all(rx, len(second))
            await peer.expect("done")
            await peer.finish()
        assert got == [payload(2, i, s) for i, s in enumerate(second)]
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()
    assert fds_open_on(path) == []  # the keep-alive write end was closed too


# -------------------------------------------------------------------------- 7. many writers


def mixed_sizes(writer: int, count: int) -> list[int]:
    """Small messages and ones far larger than PIPE_BUF, derived from ``writer``."""
    rnd = random.Random(f"sizes:{writer}")
    small = [8, 100, MAX_CHUNK_PAYLOAD, MAX_CHUNK_PAYLOAD + 1, PIPE_BUF]
    return [
        rnd.choice(small) if i % 3 == 0 else rnd.randint(10 * 1024, 200 * 1024)
        for i in range(count)
    ]


@pytest.mark.asyncio
async def test_many_writer_processes_at_once(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    writers, count = 4, 24
    sizes = {w: mixed_sizes(w, count) for w in range(writers)}
    next_index = dict.fromkeys(range(writers), 0)
    arrival: list[int] = []

    async with contextlib.AsyncExitStack() as stack:
        rx = await stack.enter_async_context(await fifo.open_receiver(path))
        peers = [
            await stack.enter_async_context(
                run_peer("send", path, w, ",".join(map(str, sizes[w])), "--wait-go")
            )
            for w in range(writers)
        ]
        for peer in peers:
            await peer.expect("ready")
        for peer in peers:  # all writers start together
            await peer.tell("go")

        with anyio.fail_after(30):
            for _ in range(writers * count):
                message = await rx.receive()
                assert len(message) >= 8, f"a fragment arrived: {describe(message)}"
                w, i = struct.unpack_from("!II", message)
                assert w in next_index, f"corrupt tag: {describe(message)}"
                assert i == next_index[w], f"writer {w}: message {i} came when {next_index[w]} due"
                assert message == payload(w, i, sizes[w][i]), (
                    f"writer {w} message {i} corrupted: got {describe(message)}, "
                    f"expected {sizes[w][i]} bytes"
                )
                next_index[w] += 1
                arrival.append(w)
        for peer in peers:
            await peer.expect("done")
            await peer.finish()
        await assert_end_of_stream(rx)

    assert next_index == dict.fromkeys(range(writers), count)
    # The writers really ran at once (each message > the pipe buffer keeps them queued).
    switches = sum(a != b for a, b in itertools.pairwise(arrival))
    assert switches > writers, f"writers did not overlap: arrival order {arrival}"


def _forked_sender(tx: FdSendChannel, writer: int, count: int, size: int) -> None:
    """Runs in a *forked* child: plain system calls only, no event loop."""
    for i in range(count):
        message = payload(writer, i, size)
        while True:
            try:
                tx.send_nowait(message)
                break
            except anyio.WouldBlock:
                select.select([], [tx.fileno()], [], 10)
    while not tx.flush_nowait():  # finish a message that went out in part
        select.select([], [tx.fileno()], [], 10)
    tx.close()


@pytest.mark.asyncio
async def test_sender_inherited_by_forked_writers(short_tmp: Path) -> None:
    # Regression: the chunk writer id was computed once, at construction. A sender
    # inherited across fork() (multiprocessing's default start method on Linux) was used
    # by several processes under ONE writer id, and the receiver spliced their chunks.
    # Fork (not spawn) is the point of this test: spawn pickles the channel and the
    # child gets a fresh sender. The children make plain system calls only.
    path = short_tmp / "f"
    fifo.create(path)
    writers, count, size = 3, 10, 50_000
    ctx = multiprocessing.get_context("fork")
    async with await fifo.open_receiver(path) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        async with contextlib.AsyncExitStack() as stack:
            async with tx:
                procs = []
                for w in range(writers):
                    proc = ctx.Process(target=_forked_sender, args=(tx, w, count, size))
                    stack.enter_context(reaped(proc))
                    proc.start()
                    procs.append(proc)
            got: list[bytes] = []
            error: Exception | None = None
            try:
                with anyio.fail_after(30):
                    while True:
                        got.append(await rx.receive())
            except anyio.EndOfStream:
                pass
            except anyio.BrokenResourceError as exc:
                error = exc
            for proc in procs:
                await join(proc)
        whole = sum(
            len(m) == size and m == payload(*struct.unpack_from("!II", m), size) for m in got
        )
        summary = f"{len(got)} messages, {whole} whole of {writers * count}; error: {error}"
        assert error is None, summary
        assert whole == len(got) == writers * count, summary


# ----------------------------------------------------------------------------- 8. raw bytes


@pytest.mark.asyncio
async def test_raw_fifo_read_from_shell_echo(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path, framing=False) as rx:
        assert rx.extra(IPCAttribute.framed) is False
        with anyio.fail_after(10):
            result = await anyio.run_process(["sh", "-c", 'echo hi > "$1"', "sh", str(path)])
        assert result.returncode == 0
        with anyio.fail_after(5):
            assert await rx.receive() == b"hi\n"
        await assert_end_of_stream(rx)


C_WRITER = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY);
    if (fd < 0) return 1;
    size_t len = strlen(argv[2]);
    long times = atol(argv[3]);
    for (long i = 0; i < times; i++) {
        const char *p = argv[2];
        size_t left = len;
        while (left) {
            ssize_t n = write(fd, p, left);
            if (n <= 0) return 2;
            p += n;
            left -= (size_t)n;
        }
    }
    return close(fd) == 0 ? 0 : 3;
}
"""


@pytest.mark.asyncio
async def test_raw_fifo_read_from_c_program(short_tmp: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    source = short_tmp / "writer.c"
    source.write_text(C_WRITER)
    exe = short_tmp / "writer"
    with anyio.fail_after(30):
        built = await anyio.run_process([gcc, "-O1", "-o", str(exe), str(source)], check=False)
    assert built.returncode == 0, built.stderr.decode()
    path = short_tmp / "f"
    fifo.create(path)

    async with await fifo.open_receiver(path, framing=False) as rx:
        with anyio.fail_after(10):
            done = await anyio.run_process([str(exe), str(path), "hello from C\n", "1"])
        assert done.returncode == 0
        with anyio.fail_after(5):
            assert await rx.receive() == b"hello from C\n"
        await assert_end_of_stream(rx)

    # More than a pipe buffer: the C writer blocks until we read; the bytes come in order.
    async with await fifo.open_receiver(path, framing=False) as rx:
        unit, times = "0123456789abcdef", 20_000
        async with await anyio.open_process([str(exe), str(path), unit, str(times)]) as proc:
            data = bytearray()
            with anyio.fail_after(20):
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        data += await rx.receive()
                assert await proc.wait() == 0
        assert bytes(data) == unit.encode() * times


# ------------------------------------------------------------------------- 9. writer killed


@pytest.mark.asyncio
async def test_writer_killed_mid_message_breaks_receiver(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    outcome: list[BaseException] = []
    async with await fifo.open_receiver(path) as rx:
        async with run_peer("partial", path, 9, 50 * MiB, 4) as peer:
            await peer.expect("started")  # 1 whole message + 4 chunks of a 50 MiB one
            with anyio.fail_after(5):
                assert await rx.receive() == payload(9, 0, 1000)

            async def receive_rest() -> None:
                try:
                    message = await rx.receive()
                except Exception as exc:
                    outcome.append(exc)
                else:
                    pytest.fail(f"a message arrived from a killed writer: {describe(message)}")

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_rest)
                    # It has read the 4 chunks and waits for the rest of the message.
                    await anyio.wait_all_tasks_blocked()
                    assert outcome == []
                    assert await peer.kill() == -9
        assert len(outcome) == 1
        assert isinstance(outcome[0], anyio.BrokenResourceError), repr(outcome[0])
        assert "middle of a message" in str(outcome[0])


# -------------------------------------------------------------------------- 10. reader gone


@pytest.mark.asyncio
async def test_send_after_reader_closed_is_broken(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    rx = await fifo.open_receiver(path)
    with anyio.fail_after(5):
        tx = await fifo.open_sender(path)
    async with tx:
        await rx.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await tx.send(b"nobody reads this")
        with pytest.raises(anyio.BrokenResourceError):
            await tx.send(b"x" * 100_000)


@pytest.mark.asyncio
async def test_send_after_reader_process_exited_is_broken(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with run_peer("recv_one", path) as peer:
        await peer.expect("ready")
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        async with tx:
            await tx.send(b"one message")
            await peer.expect(str(len(b"one message")))
            await peer.finish()
            with pytest.raises(anyio.BrokenResourceError):
                await tx.send(b"into the void")


# -------------------------------------------------------------------- 11. cancelled receive


@pytest.mark.asyncio
async def test_cancelled_receive_then_next_message(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        async with tx:
            with anyio.move_on_after(0.05) as scope:
                await rx.receive()
            assert scope.cancelled_caught
            await tx.send(b"next")
            await tx.send(b"and the one after")
            with anyio.fail_after(5):
                assert await rx.receive() == b"next"
                assert await rx.receive() == b"and the one after"


@pytest.mark.asyncio
async def test_receive_cancelled_mid_message_keeps_it_whole(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with (
        await fifo.open_receiver(path) as rx,
        run_peer("partial", path, 11, 200_000, 3) as peer,
    ):
        await peer.expect("started")
        with anyio.fail_after(5):
            assert await rx.receive() == payload(11, 0, 1000)
        # Three chunks of the 200 kB message are in the FIFO: this receive reads them,
        # then waits for the rest, and is cancelled there.
        with anyio.move_on_after(0.1) as scope:
            await rx.receive()
        assert scope.cancelled_caught
        await peer.tell("continue")
        with anyio.fail_after(10):
            big = await rx.receive()
            assert big == payload(11, 1, 200_000), describe(big)
            assert await rx.receive() == payload(11, 2, 10)
        await peer.finish()
        await assert_end_of_stream(rx)


# -------------------------------------------------------------------------------- 12. sizes


@pytest.mark.asyncio
async def test_sender_max_message_size(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path, max_message_size=1000)
        async with tx:
            with pytest.raises(aioipc.MessageTooLargeError, match="1000") as info:
                await tx.send(b"x" * 1001)
            assert (info.value.size, info.value.limit) == (1001, 1000)
            with pytest.raises(anyio.WouldBlock):
                rx.receive_nowait()  # nothing of it was sent
            await tx.send(b"y" * 1000)
        with anyio.fail_after(5):
            assert await rx.receive() == b"y" * 1000
        await assert_end_of_stream(rx)


@pytest.mark.asyncio
async def test_receiver_max_message_size(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path, max_message_size=1000) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        async with tx:
            await tx.send(b"z" * 1000)  # at the limit: fine
            await tx.send(b"a" * 5000)
        with anyio.fail_after(5):
            assert await rx.receive() == b"z" * 1000
            with pytest.raises(aioipc.FrameTooLargeError, match="1000") as info:
                await rx.receive()
        assert isinstance(info.value, aioipc.MessageTooLargeError)
        assert isinstance(info.value, aioipc.ProtocolError)
        assert info.value.limit == 1000


@pytest.mark.asyncio
async def test_receiver_never_returns_fragment_of_oversized_message(short_tmp: Path) -> None:
    # Regression: after FrameTooLargeError the rest of the rejected message used to come
    # out as a "message" of its own. A receive must skip to the next whole message.
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path, max_message_size=1000) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        async with tx:
            await tx.send(b"a" * 5000)
            await tx.send(b"next")
        with anyio.fail_after(5):
            with pytest.raises(aioipc.FrameTooLargeError):
                await rx.receive()
            try:
                after = await rx.receive()
            except (aioipc.ProtocolError, anyio.BrokenResourceError, anyio.EndOfStream):
                return
        assert after == b"next", f"a fragment was returned as a message: {describe(after)}"


# ------------------------------------------------------------------------------- 13. closed


@pytest.mark.asyncio
async def test_use_after_aclose(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    rx = await fifo.open_receiver(path)
    with anyio.fail_after(5):
        tx = await fifo.open_sender(path)
    await tx.aclose()
    await tx.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await tx.send(b"late")
    with pytest.raises(anyio.ClosedResourceError):
        tx.send_nowait(b"late")
    await rx.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await rx.receive()
    with pytest.raises(anyio.ClosedResourceError):
        rx.receive_nowait()


@pytest.mark.asyncio
async def test_aclose_wakes_blocked_receiver(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    rx = await fifo.open_receiver(path)
    with anyio.fail_after(5):
        tx = await fifo.open_sender(path)
    outcome: list[BaseException] = []

    async def blocked() -> None:
        try:
            message = await rx.receive()
        except Exception as exc:
            outcome.append(exc)
        else:
            pytest.fail(f"receive returned {message!r} with nothing sent")

    async with tx:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                await anyio.wait_all_tasks_blocked()  # it waits on the fd
                assert outcome == []
                await rx.aclose()
        assert len(outcome) == 1
        assert isinstance(outcome[0], anyio.ClosedResourceError), repr(outcome[0])
        # The sender is unaffected by the wake-up; the reader is gone now.
        with pytest.raises(anyio.BrokenResourceError):
            await tx.send(b"x")


# --------------------------------------------------------------------------------- 14. URLs


@pytest.mark.asyncio
async def test_url_listen_and_connect(short_tmp: Path) -> None:
    path = short_tmp / "u"
    assert not path.exists()
    async with await aioipc.listen(f"fifo://{path}") as rx:
        st = os.lstat(path)
        assert stat.S_ISFIFO(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert rx.extra(IPCAttribute.framed) is True
        with anyio.fail_after(5):
            tx = await aioipc.connect(f"fifo://{path}")
        async with tx:
            assert tx.extra(IPCAttribute.mechanism) == "fifo"
            await tx.send(b"via url")
            await tx.send(b"")
        with anyio.fail_after(5):
            assert await rx.receive() == b"via url"
            assert await rx.receive() == b""
        await assert_end_of_stream(rx)

    # listen on an existing FIFO opens it.
    async with await aioipc.listen(f"fifo://{path}") as rx:
        with anyio.fail_after(5):
            tx = await aioipc.connect(f"fifo://{path}")
        async with tx:
            await tx.send(b"again")
        with anyio.fail_after(5):
            assert await rx.receive() == b"again"


@pytest.mark.asyncio
async def test_url_framing_none(short_tmp: Path) -> None:
    path = short_tmp / "raw"
    async with await aioipc.listen(f"fifo://{path}?framing=none") as rx:
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
        assert rx.extra(IPCAttribute.framed) is False
        with anyio.fail_after(5):
            tx = await aioipc.connect(f"fifo://{path}?framing=none")
        async with tx:
            assert tx.extra(IPCAttribute.framed) is False
            await tx.send(b"raw bytes")
        with anyio.fail_after(5):
            assert await rx.receive() == b"raw bytes"  # no chunk header in front
        await assert_end_of_stream(rx)

    # The raw sender's bytes are what a plain reader sees.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with anyio.fail_after(5):
            tx = await aioipc.connect(f"fifo://{path}?framing=none")
        async with tx:
            await tx.send(b"plain")
        assert os.read(fd, 100) == b"plain"
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- 15. to a child


def _spawned_sender(tx: FdSendChannel, writer: int, sizes: list[int]) -> None:
    async def main() -> None:
        async with tx:
            assert tx.extra(IPCAttribute.mechanism) == "fifo"
            for i, size in enumerate(sizes):
                await tx.send(payload(writer, i, size))

    anyio.run(main)


def _spawned_receiver(rx: FdReceiveChannel, conn: Connection) -> None:
    async def main() -> list[str]:
        digests = []
        async with rx:
            with anyio.fail_after(20):
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        digests.append(hashlib.sha256(await rx.receive()).hexdigest())
        return digests

    conn.send(anyio.run(main))
    conn.close()


@pytest.mark.asyncio
async def test_sender_handed_to_spawned_child(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    sizes = [0, 100, 10_000, 150_000, 7]
    ctx = multiprocessing.get_context("spawn")
    async with await fifo.open_receiver(path) as rx:
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)
        proc = ctx.Process(target=_spawned_sender, args=(tx, 15, sizes))
        with reaped(proc):
            async with tx:
                proc.start()  # pickles tx: the child gets its own copy of the fd
            # Our copy is closed: end of stream comes when the child's copy closes.
            got = await receive_all(rx, len(sizes), seconds=30)
            await join(proc)
        assert got == [payload(15, i, s) for i, s in enumerate(sizes)]
        await assert_end_of_stream(rx)


@pytest.mark.asyncio
async def test_receiver_handed_to_spawned_child(short_tmp: Path) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    sizes = [5, 64_000, 0, 4085]
    expected = [hashlib.sha256(payload(16, i, s)).hexdigest() for i, s in enumerate(sizes)]
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    with reader, writer:
        rx = await fifo.open_receiver(path)
        with anyio.fail_after(5):
            tx = await fifo.open_sender(path)  # a writer exists before the child reads
        proc = ctx.Process(target=_spawned_receiver, args=(rx, writer))
        with reaped(proc):
            async with rx:
                proc.start()  # pickles rx: the child gets its own copy of the fd
            async with tx:
                for i, size in enumerate(sizes):
                    await tx.send(payload(16, i, size))
            assert await recv_from(reader, 30) == expected
            await join(proc)


def _spawned_receiver_before_writer(rx: FdReceiveChannel, conn: Connection) -> None:
    async def main() -> Any:
        result: list[Any] = []

        async def receive() -> None:
            try:
                result.append(("message", await rx.receive()))
            except anyio.EndOfStream:
                result.append(("EndOfStream",))

        async with rx:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    await anyio.wait_all_tasks_blocked()
                    conn.send("waiting")
        return result

    conn.send(anyio.run(main))
    conn.close()


@pytest.mark.asyncio
async def test_receiver_handed_to_child_before_any_writer(short_tmp: Path) -> None:
    # Regression: a pickled FIFO receiver lost its "no writer yet" state (and its path and
    # keep-alive fd), so the child's first receive() raised a false EndOfStream.
    path = short_tmp / "f"
    fifo.create(path)
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    with reader, writer:
        # Our own copy stays open (unread) so that open_sender below never waits for long.
        async with await fifo.open_receiver(path) as rx:
            proc = ctx.Process(target=_spawned_receiver_before_writer, args=(rx, writer))
            with reaped(proc):
                proc.start()
                assert await recv_from(reader, 30) == "waiting"  # child blocked in receive
                with anyio.fail_after(5):
                    tx = await fifo.open_sender(path)
                async with tx:
                    await tx.send(b"hello child")
                result = await recv_from(reader, 30)
                await join(proc)
    assert result == [("message", b"hello child")]


# ==========================================================================================
# Regressions: FIFOs
# Regression tests moved from tests/test_regressions.py (issue 11): bugs found in review,
# kept next to the mechanism they guard. Each names, in its first line, the bug it guards.
# ==========================================================================================


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


def test_fifo_writer_ids_are_random_not_derived_from_the_pid() -> None:
    # Guards: FIFO writer ids came from the pid, so same-pid writers could collide
    ids = [new_writer_id() for _ in range(64)]
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
