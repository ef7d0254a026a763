"""The contracts every mechanism shares: exports, errors, anyio interop, threads, codecs, URLs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from anyio import BrokenResourceError, ClosedResourceError
from anyio.streams.stapled import StapledObjectStream

import aioipc
from aioipc import (
    IPCError,
    IPCExistsError,
    IPCNotFoundError,
    IPCPermissionError,
    MessageTooLargeError,
    ProtocolError,
)
from aioipc.codecs import get_codec, wrap
from aioipc.errors import IPCSystemError, map_errors, translate_os_error
from aioipc.url import parse_url

from .conftest import thread_count


def test_all_lists_every_public_name_and_each_imports() -> None:
    def names(pool: list[str]) -> set[str]:
        return {n for n in pool if not isinstance(getattr(aioipc, n), ModuleType)}

    public = names([n for n in dir(aioipc) if not n.startswith("_")]) - {"annotations"}
    assert names(aioipc.__all__) == public
    modules = set(aioipc.__all__) - public
    assert modules == {"codecs", "fifo", "pipes", "posix", "shm", "sysv", "unix"}


def test_error_family_inherits_builtins() -> None:
    assert issubclass(IPCNotFoundError, FileNotFoundError)
    assert issubclass(IPCExistsError, FileExistsError)
    assert issubclass(IPCPermissionError, PermissionError)
    for cls in (IPCNotFoundError, IPCExistsError, IPCPermissionError, MessageTooLargeError):
        assert issubclass(cls, IPCError)
    assert issubclass(aioipc.FrameTooLargeError, MessageTooLargeError)
    assert issubclass(aioipc.FrameTooLargeError, ProtocolError)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOENT, IPCNotFoundError),
        (errno.EEXIST, IPCExistsError),
        (errno.EACCES, IPCPermissionError),
        (errno.EPERM, IPCPermissionError),
        (errno.ECONNREFUSED, aioipc.IPCConnectionRefusedError),
        (errno.EPIPE, BrokenResourceError),
        (errno.ECONNRESET, BrokenResourceError),
        (errno.EIDRM, BrokenResourceError),
        (errno.EBADF, ClosedResourceError),
        (errno.EMFILE, IPCSystemError),
    ],
)
def test_translation_boundary_maps_errno(code: int, expected: type[Exception]) -> None:
    exc = translate_os_error(OSError(code, os.strerror(code), "/x"), "FIFO /x")
    assert isinstance(exc, expected)
    assert "FIFO /x" in str(exc)


def test_map_errors_never_lets_a_raw_oserror_out() -> None:
    with pytest.raises(IPCNotFoundError, match="thing /nope") as info, map_errors("thing /nope"):
        os.stat("/nope/really/not/here")
    assert info.value.errno == errno.ENOENT
    assert type(info.value) is not FileNotFoundError


@pytest.mark.asyncio
async def test_stapled_object_stream_and_memory_pump_work_unchanged() -> None:
    a_tx, a_rx = aioipc.pipe()
    b_tx, b_rx = aioipc.pipe()
    left = StapledObjectStream(a_tx, b_rx)
    right = StapledObjectStream(b_tx, a_rx)
    send_mem, receive_mem = anyio.create_memory_object_stream[bytes](100)
    async with left, right, anyio.create_task_group() as tg:

        async def pump() -> None:
            async with send_mem:
                async for msg in right:
                    await send_mem.send(msg)

        tg.start_soon(pump)
        for i in range(50):
            await left.send(b"m%d" % i)
        await left.send_eof()
        with anyio.fail_after(5):
            got = [m async for m in receive_mem]
        assert got == [b"m%d" % i for i in range(50)]
        await receive_mem.aclose()


@pytest.mark.asyncio
async def test_no_thread_is_started_by_fd_mechanisms(short_tmp: Path) -> None:
    before = thread_count()
    limiter = anyio.to_thread.current_default_thread_limiter()
    during: list[int] = []

    async def exchange(tx: aioipc.SendChannel, rx: aioipc.ReceiveChannel) -> None:
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                for i in range(2000):
                    await tx.send(b"x" * (i % 300))
                during.append(thread_count())

            tg.start_soon(produce)
            for i in range(2000):
                assert len(await rx.receive()) == i % 300

    with anyio.fail_after(30):
        tx, rx = aioipc.pipe()
        async with tx, rx:
            await exchange(tx, rx)
        path = short_tmp / "f"
        frx = await aioipc.fifo.open_receiver(path, create=True)
        async with frx, await aioipc.fifo.open_sender(path) as ftx:
            await exchange(ftx, frx)
        async with (
            await aioipc.unix.listen(short_tmp / "s") as listener,
            await aioipc.unix.connect(short_tmp / "s") as client,
            await listener.accept() as server,
        ):
            await exchange(client, server)
    assert during == [before] * 3
    assert thread_count() == before
    assert limiter.borrowed_tokens == 0


def test_pipe_and_unix_work_under_trio(short_tmp: Path) -> None:
    async def main() -> None:
        tx, rx = aioipc.pipe()
        async with tx, rx:
            await tx.send(b"on trio")
            assert await rx.receive() == b"on trio"
        async with (
            await aioipc.unix.listen(short_tmp / "t") as listener,
            await aioipc.unix.connect(short_tmp / "t") as client,
            await listener.accept() as server,
        ):
            await client.send(b"x" * 200_000)
            assert await server.receive() == b"x" * 200_000

    anyio.run(main, backend="trio")


@pytest.mark.parametrize("name", ["bytes", "json", "pickle", "msgspec"])
@pytest.mark.asyncio
async def test_codecs_round_trip_over_a_pipe(name: str) -> None:
    tx, rx = aioipc.pipe()
    otx, orx = wrap(tx, name), wrap(rx, name)
    value: object = b"raw" if name == "bytes" else {"job": 1, "args": [1, 2.5, "x"], "ok": True}
    async with otx, orx:
        await otx.send(value)
        assert await orx.receive() == value


@pytest.mark.asyncio
async def test_undecodable_message_is_protocol_error_and_channel_survives() -> None:
    tx, rx = aioipc.pipe()
    orx = wrap(rx, "json")
    async with tx, orx:
        await tx.send(b"{not json")
        await tx.send(b'{"fine": 1}')
        with pytest.raises(ProtocolError, match="json codec"):
            await orx.receive()
        assert await orx.receive() == {"fine": 1}


def test_codec_lookup_errors() -> None:
    with pytest.raises(ValueError, match="unknown codec 'yaml'"):
        get_codec("yaml")
    with pytest.raises(TypeError, match="bytes codec sends bytes"):
        get_codec("bytes").encode("text")


def test_url_parsing() -> None:
    a = parse_url("unix:///run/app.sock?framing=none&mode=0640&max_size=1024")
    assert (a.scheme, a.path, a.framing, a.mode, a.max_size) == (
        "unix",
        "/run/app.sock",
        False,
        0o640,
        1024,
    )
    assert parse_url("unix://@bus").path == "@bus"
    assert parse_url("unix+dgram:///tmp/d").scheme == "unix+dgram"
    assert parse_url("fifo:///tmp/f?persistent=1").persistent is True
    assert parse_url("unix://@x?allowed_uids=0,1000").allowed_uids == (0, 1000)
    assert parse_url("unix://@x?codec=json").codec == "json"
    q = parse_url("mq://jobs?max_messages=5&max_message_size=512&create=1")
    assert (q.path, q.max_messages, q.max_message_size, q.create) == ("/jobs", 5, 512, True)
    s = parse_url("sysvmq://0x1234?send_type=2&receive_type=-3&max_bytes=4096")
    assert (s.path, s.send_type, s.receive_type, s.max_bytes) == ("0x1234", 2, -3, 4096)
    assert parse_url("sysvmq:///tmp/k?proj=42").proj == 42


@pytest.mark.asyncio
async def test_queue_urls_open_both_ends(tmp_path: Path) -> None:
    """mq:// and sysvmq:// (key and ftok forms): listen creates, connect opens."""
    name = f"/aioipc-url-{os.getpid()}"
    async with await aioipc.listen(f"mq://{name}?max_messages=3") as rx:
        try:
            async with await aioipc.connect(f"mq://{name}") as tx:
                await tx.send(b"posix")
                assert await rx.receive() == b"posix"
                assert rx.max_messages == 3
        finally:
            rx.unlink()
    key_file = tmp_path / "key"
    key_file.touch()
    url = f"sysvmq://{key_file}?proj=9"
    a = await aioipc.listen(url + "&send_type=1&receive_type=2")
    try:
        assert a.key == aioipc.ftok(key_file, 9)
        async with await aioipc.connect(url + "&send_type=2&receive_type=1") as b:
            await a.send(b"to b")
            await b.send(b"to a")
            assert await b.receive() == b"to b"
            assert await a.receive() == b"to a"
        with pytest.raises(FileNotFoundError):
            await aioipc.connect(f"sysvmq://{a.key + 1}")
    finally:
        a.remove()
        await a.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://localhost:1", "unsupported URL scheme 'tcp'"),
        ("unix://", "names no path"),
        ("fifo://@abstract", "no abstract"),
        ("sysvmq://@k", "no abstract"),
        ("sysvmq://nokey", "as a number"),
        ("mq:///x?max_messages=ten", "integer"),
        ("unix:///x?colour=blue", "unknown URL option"),
        ("unix:///x?mode=rw", "octal"),
        ("unix:///x?framing=maybe", "framing"),
        ("fifo:///x?persistent=perhaps", "persistent"),
    ],
)
def test_bad_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_demo_exchanges_messages_over_every_mechanism() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aioipc", "demo", "--count", "300", "--round-trips", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert out.returncode == 0, out.stderr
    from aioipc._demo import MECHANISMS

    # A rich table ("│ pipe │ ...") or plain columns ("pipe  ..."), whichever is installed.
    rows = {line.strip("│ ").split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert set(MECHANISMS) <= rows, rows
    for family in ("sysv-shm", "posix-shm", "mapped-file", "memfd", "posix-mq", "shm-ring"):
        assert family in MECHANISMS
    assert "every message arrived once, in order" in out.stdout


def test_demo_region_rows_take_messages_larger_than_their_default_slot() -> None:
    args = ["--count", "40", "--round-trips", "5", "--size", "200000"]
    for mechanism in ("sysv-shm", "posix-shm", "mapped-file", "memfd"):
        args += ["--mechanism", mechanism]
    out = subprocess.run(
        [sys.executable, "-m", "aioipc", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert out.returncode == 0, out.stderr
    assert "40 numbered 200000-byte messages" in out.stdout


def test_cli_errors_are_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aioipc", "demo", "--size", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "--size must be at least 4" in out.stderr
