"""The contracts every mechanism shares: exports, errors, anyio interop, threads, codecs, URLs."""

from __future__ import annotations

import contextlib
import errno
import os
import re
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
from aioipc.posix import MessageQueue, unlink_message_queue
from aioipc.url import parse_url

from .conftest import thread_count


def test_all_lists_every_public_name_and_each_imports() -> None:
    def names(pool: list[str]) -> set[str]:
        return {n for n in pool if not isinstance(getattr(aioipc, n), ModuleType)}

    public = names([n for n in dir(aioipc) if not n.startswith("_")]) - {"annotations"}
    assert names(aioipc.__all__) == public
    modules = set(aioipc.__all__) - public
    assert modules == {"codecs", "fifo", "pipes", "posix", "pubsub", "shm", "sysv", "unix"}


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


# (url, the option the error must name, a piece of its text)
BAD_URL_OPTIONS: list[tuple[str, str, str]] = [
    # sizes and counts: integers in range, never a silent fallback to the defaults
    ("mq:///x?max_messages=0", "max_messages", "not 0"),
    ("mq:///x?max_message_size=0", "max_message_size", "not 0"),
    ("mq:///x?max_messages=-3", "max_messages", "not -3"),
    ("mq:///x?max_messages=1_000", "max_messages", "integer"),
    ("mq:///x?max_messages=%2B5", "max_messages", "integer"),
    ("mq:///x?max_messages=%205", "max_messages", "integer"),
    ("mq:///x?max_messages=010", "max_messages", "leading zero"),
    ("mq:///x?max_messages=", "max_messages", "integer"),
    ("mq:///x?max_messages=" + "9" * 5000, "max_messages", "out of range"),
    ("unix:///x?allowed_uids=" + "9" * 5000, "allowed_uids", "out of range"),
    ("unix:///x?max_size=0", "max_size", "not 0"),
    ("fifo:///x?max_size=-5", "max_size", "not -5"),
    ("unix:///x?max_size=2147483647", "max_size", "2147483646"),
    ("sysvmq://1?max_bytes=1180591620717411303424", "max_bytes", "18446744073709551615"),
    ("sysvmq://1?max_bytes=0", "max_bytes", "not 0"),
    ("sysvmq://1?send_type=0", "send_type", "not 0"),
    ("sysvmq://1?receive_type=-9223372036854775808", "receive_type", "-9223372036854775807"),
    ("sysvmq:///tmp/k?proj=256", "proj", "0..255"),
    ("sysvmq:///tmp/k?proj=-1", "proj", "0..255"),
    ("sysvmq://1?proj=2", "proj", "path"),
    ("shm://r?capacity=0", "capacity", "not 0"),
    ("shm://r?capacity=2.5", "capacity", "integer"),
    # seconds
    ("shm://r?spin=nan", "spin", "NaN"),
    ("shm://r?spin=inf", "spin", "finite"),
    ("shm://r?spin=-0.1", "spin", ">= 0"),
    ("shm://r?spin=soon", "spin", "seconds"),
    # permission bits: octal, 0..0o777
    ("unix:///x?mode=-1", "mode", "octal"),
    ("unix:///x?mode=7777", "mode", "0o7777"),
    ("fifo:///x?mode=1777", "mode", "0o1777"),
    ("mq:///x?mode=0x1ff", "mode", "octal"),
    ("mq:///x?mode=", "mode", "octal"),
    ("shm://r?mode=0o1000", "mode", "0o1000"),
    # uid lists
    ("unix:///x?allowed_uids=abc", "allowed_uids", "'abc'"),
    ("unix:///x?allowed_uids=-1", "allowed_uids", "'-1'"),
    ("unix:///x?allowed_uids=", "allowed_uids", "empty"),
    ("unix:///x?allowed_uids=1000,,1001", "allowed_uids", "empty"),
    ("unix:///x?allowed_uids=1000,", "allowed_uids", "empty"),
    ("unix:///x?allowed_uids=4294967295", "allowed_uids", "4294967294"),
    # flags, codecs
    ("mq:///x?create=maybe", "create", "1/0"),
    ("fifo:///x?persistent=", "persistent", "1/0"),
    ("shm://r?multi_producer=2", "multi_producer", "1/0"),
    ("unix:///x?codec=yaml", "codec", "unknown codec"),
    # an option given twice: which one would win is a guess
    ("mq:///x?mode=0600&mode=0644", "mode", "twice"),
    ("mq:///x?max_messages=5&max_messages=5", "max_messages", "twice"),
    # an option of another scheme is not quietly ignored
    ("unix:///x?capacity=64", "capacity", "does not apply to unix://"),
    ("mq:///x?max_size=10", "max_size", "does not apply to mq://"),
    ("unix+dgram:///x?framing=none", "framing", "does not apply to unix+dgram://"),
    ("unix+seqpacket:///x?framing=none", "framing", "does not apply"),
    ("fifo:///x?allowed_uids=0", "allowed_uids", "does not apply to fifo://"),
    ("shm://r?max_messages=2", "max_messages", "does not apply to shm://"),
    ("sysvmq://1?capacity=64", "capacity", "does not apply to sysvmq://"),
    ("unix:///x?create=1", "create", "does not apply to unix://"),
]


@pytest.mark.parametrize(
    ("url", "option", "text"), BAD_URL_OPTIONS, ids=[url[:60] for url, _, _ in BAD_URL_OPTIONS]
)
def test_bad_url_options_name_the_option_and_the_url(url: str, option: str, text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(url))) as info:
        parse_url(url)
    message = str(info.value)
    assert option in message
    assert text in message


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("unix:///tmp/x%00junk", "NUL"),
        ("unix://@bus%00junk", "NUL"),
        ("fifo:///tmp/f%00", "NUL"),
        ("mq:///jobs%00x", "NUL"),
        ("unix:///tmp/a#b", "%23"),
        ("mq:///a\nb", "control character"),  # urlsplit would drop it: /ab
        ("fifo:///tmp/a\tb", "control character"),
        ("unix:///tmp/x?mode=0600\r", "control character"),
    ],
)
def test_url_paths_that_would_be_cut_short_are_refused(url: str, text: str) -> None:
    with pytest.raises(ValueError, match=text) as info:
        parse_url(url)
    assert repr(url) in str(info.value)


def test_url_option_forms_that_are_accepted() -> None:
    for form in ("0640", "640", "0o640", "0O640"):
        assert parse_url(f"unix:///x?mode={form}").mode == 0o640
    assert parse_url("fifo:///x?mode=0").mode == 0
    assert parse_url("mq:///x?mode=777").mode == 0o777
    q = parse_url("mq:///x?max_messages=0x10&max_message_size=8192")
    assert (q.max_messages, q.max_message_size) == (16, 8192)
    assert parse_url("unix:///x?allowed_uids=4294967294").allowed_uids == (4294967294,)
    s = parse_url("sysvmq://1?send_type=0x7fffffffffffffff&receive_type=-9223372036854775807")
    assert (s.send_type, s.receive_type) == (2**63 - 1, -(2**63) + 1)
    assert parse_url("sysvmq://1?max_bytes=18446744073709551615").max_bytes == 2**64 - 1
    assert parse_url("sysvmq:///tmp/k?proj=0").proj == 0
    assert parse_url("sysvmq:///tmp/k?proj=255").proj == 255
    assert parse_url("shm://r?spin=5e-5").spin == 5e-5
    assert parse_url("shm://r?spin=0").spin == 0.0
    for word, value in (("1", True), ("YES", True), ("on", True), ("false", False)):
        assert parse_url(f"mq:///x?create={word}").create is value
    assert parse_url("unix:///x?max_size=2147483646").max_size == 2**31 - 2  # ff ff ff ff: goodbye
    assert parse_url("unix+seqpacket:///x?allowed_uids=0&max_size=100").max_size == 100


@pytest.mark.asyncio
async def test_bad_url_options_create_nothing(short_tmp: Path) -> None:
    """Checked before any object is made: a bad option leaves no queue, FIFO or socket."""
    name = f"/aioipc-test-url-{os.getpid()}"
    try:
        for url, option in (
            (f"mq://{name}?max_messages=0", "max_messages"),
            (f"mq://{name}?max_message_size=0", "max_message_size"),
            (f"mq://{name}?mode=-1", "mode"),
        ):
            with pytest.raises(ValueError, match=option):
                await aioipc.listen(url)
            with pytest.raises(ValueError, match=option):
                await aioipc.connect(url + "&create=1")
            with pytest.raises(IPCNotFoundError):
                MessageQueue.open(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            unlink_message_queue(name)
    fifo_path = short_tmp / "f"
    with pytest.raises(ValueError, match="max_size"):
        await aioipc.listen(f"fifo://{fifo_path}?max_size=-5")
    with pytest.raises(ValueError, match="mode"):
        await aioipc.listen(f"fifo://{fifo_path}?mode=7777")
    assert not fifo_path.exists()
    sock_path = short_tmp / "s"
    with pytest.raises(ValueError, match="mode"):
        await aioipc.listen(f"unix://{sock_path}?mode=-1")
    with pytest.raises(ValueError, match="allowed_uids"):
        await aioipc.listen(f"unix://{sock_path}?allowed_uids=abc")
    assert not sock_path.exists()


def test_demo_exchanges_messages_over_every_mechanism() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aioipc", "demo", "--count", "300", "--round-trips", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert out.returncode == 0, out.stderr
    from aioipc._cli.demo import MECHANISMS

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
    assert "--size: the value must be in 4..67108864 bytes, not 2" in out.stderr
    assert "aioipc demo --help" in out.stderr


# ==========================================================================================
# Regressions: handles of several mechanisms (pickling, fork)
# Regression tests moved from tests/test_regressions.py (issue 11): bugs found in review,
# kept next to the mechanism they guard. Each names, in its first line, the bug it guards.
# ==========================================================================================


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
