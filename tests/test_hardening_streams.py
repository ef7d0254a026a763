"""Issue 10, the fd-stream items, attacked with real processes and real kernel objects.

* item 3: a unix-stream peer cannot fill the receiver's fd table with SCM_RIGHTS groups
  that no frame claims, whatever state the framing is in;
* item 4: FIFO writers cannot make the receiver hold unbounded unfinished messages;
* item 13: one handler's exception, or a temporary EMFILE in ``accept``, does not end
  ``UnixListener.serve``;
* item 14: a framed stream tells a peer that finished (goodbye) from one that was killed;
* items 9 and 11 for unix sockets, FIFOs and pipes: bad arguments are refused by name
  before anything is created, and EMFILE names RLIMIT_NOFILE.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import stat
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import BrokenResourceError, EndOfStream

import aioipc
from aioipc import fifo, unix
from aioipc.framing import GOODBYE_FRAME, encode_chunks, encode_header

from ._peer import Peer, spawn

TIMEOUT = 20
MIB = 1024 * 1024


def _peer_cmd(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ item 3: the fd table

FD_FLOOD = """
    import array, os, socket, struct, sys
    path, groups, per_group = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(per_group)]
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    # A frame flagged as carrying fds, announcing 1 MiB that never comes; then one byte
    # of it per sendmsg, each with another group of fds.
    s.sendmsg([struct.pack("!I", (1 << 31) | (1 << 20))], anc)
    for _ in range(groups):
        s.sendmsg([b"x"], anc)
    print("sent", flush=True)
    sys.stdin.read()
"""


@pytest.mark.asyncio
async def test_unclaimed_fd_groups_are_closed_as_they_arrive(short_tmp: Path) -> None:
    path = str(short_tmp / "s")
    groups, per_group = 60, 250
    async with (
        await unix.listen(path) as listener,
        spawn(_peer_cmd(FD_FLOOD, path, groups, per_group)) as peer,
    ):
        async with await listener.accept() as chan:
            before = open_fds()
            await peer.expect("sent", TIMEOUT)
            # The receive reads every piece (the kernel ends a read after each group)
            # and waits for the rest of the frame, which never comes.
            with anyio.move_on_after(0.5):
                await chan.receive()
            grew = open_fds() - before
            # The frame's own group and one more may wait; the other 58 were closed.
            assert grew <= 2 * unix.MAX_FDS, f"{grew} fds held for {groups} groups"
        await peer.finish()
    assert open_fds() < before


# ------------------------------------------------------ item 4: unfinished FIFO messages

FIFO_FLOOD = """
    import os, sys
    from aioipc.framing import encode_chunks
    path, writers, chunks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fd = os.open(path, os.O_WRONLY)
    body = bytes(range(256)) * (chunks * 4096 // 256)
    for w in range(writers):  # every fake writer: a message cut before its last chunk
        for chunk in encode_chunks(body, 1000 + w)[:chunks]:
            os.write(fd, chunk)
    for chunk in encode_chunks(b"still whole", 7):
        os.write(fd, chunk)
    print("sent", flush=True)
    sys.stdin.read()
"""


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.asyncio
async def test_fifo_unfinished_messages_are_bounded(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    writers, chunks = 600, 32  # 600 x 128 KiB = 75 MiB of unfinished messages
    async with await fifo.open_receiver(path, max_message_size=MIB) as rx:
        assert rx._rx._decoder.max_partial_bytes == 4 * MIB  # type: ignore[attr-defined]
        before = _rss()
        async with spawn(_peer_cmd(FIFO_FLOOD, path, writers, chunks)) as peer:
            with caplog.at_level(logging.WARNING, logger="aioipc.framing"):
                with anyio.fail_after(TIMEOUT):
                    assert await rx.receive() == b"still whole"
                await peer.expect("sent")
            grew = _rss() - before
            assert rx._rx.buffered <= 4 * MIB  # type: ignore[attr-defined]
            assert grew < 30 * MIB, f"RSS grew by {grew / MIB:.1f} MiB"
            assert "dropped writer" in caplog.text
            await peer.finish()


@pytest.mark.asyncio
async def test_fifo_max_partial_bytes_is_configurable_and_checked(short_tmp: Path) -> None:
    path = short_tmp / "f"
    with pytest.raises(ValueError, match="max_partial_bytes"):
        await fifo.open_receiver(path, create=True, max_message_size=1000, max_partial_bytes=999)
    assert not path.exists()  # refused before the FIFO was made
    fifo.create(path)
    async with await fifo.open_receiver(path, max_message_size=100, max_partial_bytes=5000) as rx:
        assert rx._rx._decoder.max_partial_bytes == 5000  # type: ignore[attr-defined]


# ------------------------------------------------------------- item 14: the goodbye

PIPE_WRITER = """
    import sys, anyio
    from aioipc import pipes
    fd, count, how, framing = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    async def main():
        tx = pipes.from_fd(fd, "w", framing=framing == "framed")
        for i in range(count):
            await tx.send(b"m%d" % i)
        if how == "aclose":
            await tx.aclose()
        elif how == "close":
            tx.close()
        print("sent", flush=True)
        # On a thread: the loop goes on writing out what the sends committed.
        await anyio.to_thread.run_sync(sys.stdin.read)
        if how == "exit":
            return  # the fd is closed by the kernel at exit, with no goodbye
    anyio.run(main)
"""


@asynccontextmanager
async def pipe_writer(
    count: int, how: str, framing: str = "framed"
) -> AsyncIterator[tuple[aioipc.ReceiveChannel, Peer]]:
    tx, rx = aioipc.pipe(framing=framing == "framed")
    fd = tx.fileno()
    code = _peer_cmd(PIPE_WRITER, fd, count, how, framing)
    proc = await anyio.open_process(code, pass_fds=[fd])
    peer = Peer(proc)
    tx.close()  # the parent never sent: closing its copy writes no goodbye
    try:
        async with rx:
            yield rx, peer
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()


async def _received(rx: aioipc.ReceiveChannel, count: int) -> None:
    with anyio.fail_after(TIMEOUT):
        for i in range(count):
            assert await rx.receive() == b"m%d" % i


@pytest.mark.parametrize("how", ["aclose", "close"])
@pytest.mark.asyncio
async def test_a_pipe_writer_that_closes_ends_the_stream_cleanly(how: str) -> None:
    async with pipe_writer(3, how) as (rx, peer):
        await peer.expect("sent")
        await _received(rx, 3)
        await peer.finish()
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()


@pytest.mark.parametrize("how", ["kill", "exit"])
@pytest.mark.asyncio
async def test_a_pipe_writer_that_vanishes_is_a_broken_stream(how: str) -> None:
    async with pipe_writer(3, how) as (rx, peer):
        await peer.expect("sent")
        await _received(rx, 3)
        if how == "kill":
            await peer.kill()
        else:
            await peer.finish()
        with anyio.fail_after(TIMEOUT), pytest.raises(BrokenResourceError) as info:
            await rx.receive()
        assert "went away without closing" in str(info.value)


SYNC_CLOSER = """
    import sys, anyio
    from aioipc import pipes
    tx = pipes.from_fd(int(sys.argv[1]), "w")
    sent = 0
    while True:  # whole 4 KiB pages (a 4-byte header + 4092): the pipe ends up full
        try:
            tx.send_nowait(b"%06d" % sent + bytes(4086))
        except anyio.WouldBlock:
            break
        sent += 1
    print(sent, flush=True)
    tx.close()  # the pipe is full: this waits for the reader
    print("closed", flush=True)
"""


@pytest.mark.asyncio
async def test_sync_close_of_a_full_pipe_waits_for_room_to_say_goodbye() -> None:
    """Forked or synchronous writers close with close(): a full pipe at that moment must
    not cost the goodbye (the reader would report a writer that died)."""
    tx, rx = aioipc.pipe(pipe_size=None)
    fd = tx.fileno()
    proc = await anyio.open_process(_peer_cmd(SYNC_CLOSER, fd), pass_fds=[fd])
    tx.close()
    async with rx, proc:
        peer = Peer(proc)
        sent = int(await peer.line())
        with anyio.fail_after(TIMEOUT):
            # Read nothing until the writer is blocked in close(), waiting for room.
            wchan = Path(f"/proc/{proc.pid}/wchan")
            while "poll" not in wchan.read_text():  # noqa: ASYNC110, ASYNC240
                await anyio.sleep(0.001)
            for i in range(sent):
                assert (await rx.receive())[:6] == b"%06d" % i
            with pytest.raises(EndOfStream):
                await rx.receive()
        await peer.expect("closed")
        assert await proc.wait() == 0


@pytest.mark.asyncio
async def test_a_writer_that_sent_nothing_leaves_a_plain_end_of_stream() -> None:
    async with pipe_writer(0, "kill") as (rx, peer):
        await peer.expect("sent")
        await peer.kill()
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()


@pytest.mark.asyncio
async def test_raw_pipes_keep_plain_end_of_file() -> None:
    async with pipe_writer(1, "kill", framing="raw") as (rx, peer):
        await peer.expect("sent")
        with anyio.fail_after(TIMEOUT):
            assert await rx.receive() == b"m0"
        await peer.kill()
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()


def _child_sends(tx: Any, go: Any, count: int) -> None:
    async def main() -> None:
        async with tx:
            assert go.wait(TIMEOUT)
            for i in range(count):
                await tx.send(b"m%d" % i)

    anyio.run(main)


@pytest.mark.asyncio
async def test_a_sender_handed_to_a_child_leaves_the_goodbye_to_the_child() -> None:
    """The parent spoke, handed the end to a spawned child and closed its copy: that close
    must write no goodbye, which could land inside a frame the child is writing."""
    tx, rx = aioipc.pipe()
    async with rx:
        await tx.send(b"from the parent")
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        child = ctx.Process(target=_child_sends, args=(tx, go, 2000))
        child.start()
        await tx.aclose()
        with anyio.fail_after(TIMEOUT):
            assert await rx.receive() == b"from the parent"
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()
        assert not rx._rx._decoder.said_goodbye  # type: ignore[attr-defined]
        go.set()
        with anyio.fail_after(TIMEOUT):
            await _received(rx, 2000)
            with pytest.raises(EndOfStream):
                await rx.receive()
        child.join(TIMEOUT)
        assert child.exitcode == 0


UNIX_CLIENT = """
    import sys, anyio
    from aioipc import unix
    path, how = sys.argv[1], sys.argv[2]
    async def main():
        chan = await unix.connect(path)
        await chan.send(b"hello")
        if how == "send_eof":
            await chan.send_eof()
            print("got", (await chan.receive()).decode(), flush=True)
        if how in ("aclose", "send_eof"):
            await chan.aclose()
        print("sent", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
    anyio.run(main)
"""


@pytest.mark.parametrize("how", ["aclose", "send_eof", "kill"])
@pytest.mark.asyncio
async def test_a_unix_peer_says_goodbye_or_is_reported_dead(short_tmp: Path, how: str) -> None:
    path = str(short_tmp / "s")
    async with (
        await unix.listen(path) as listener,
        spawn(_peer_cmd(UNIX_CLIENT, path, how)) as peer,
        await listener.accept() as chan,
    ):
        with anyio.fail_after(TIMEOUT):
            assert await chan.receive() == b"hello"
            if how == "send_eof":
                with pytest.raises(EndOfStream):
                    await chan.receive()
                await chan.send(b"bye")  # half-closed: this direction still works
                await peer.expect("got bye")
            await peer.expect("sent")
            if how == "kill":
                await peer.kill()
                with pytest.raises(BrokenResourceError) as info:
                    await chan.receive()
                assert f"pid {peer.pid}" in str(info.value)
                assert "went away without closing" in str(info.value)
            else:
                await peer.finish()
                with pytest.raises(EndOfStream):
                    await chan.receive()


FIFO_WRITER = """
    import sys, anyio
    from aioipc import fifo
    path, how = sys.argv[1], sys.argv[2]
    async def main():
        tx = await fifo.open_sender(path)
        await tx.send(b"from " + how.encode())
        if how == "aclose":
            await tx.aclose()
        print("sent", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
    anyio.run(main)
"""


@pytest.mark.parametrize("second", ["aclose", "kill"])
@pytest.mark.asyncio
async def test_every_fifo_writer_must_say_goodbye(short_tmp: Path, second: str) -> None:
    path = short_tmp / "f"
    fifo.create(path)
    async with (
        await fifo.open_receiver(path) as rx,
        spawn(_peer_cmd(FIFO_WRITER, path, "aclose")) as first,
        spawn(_peer_cmd(FIFO_WRITER, path, second)) as other,
    ):
        await first.expect("sent")
        await other.expect("sent")
        with anyio.fail_after(TIMEOUT):
            got = {await rx.receive(), await rx.receive()}
        assert got == {b"from aclose", b"from " + second.encode()}
        await first.finish()
        if second == "kill":
            await other.kill()
            with anyio.fail_after(TIMEOUT), pytest.raises(BrokenResourceError) as info:
                await rx.receive()
            assert "1 writer(s)" in str(info.value)
        else:
            await other.finish()
            with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
                await rx.receive()


@pytest.mark.asyncio
async def test_a_plain_c_style_peer_ends_cleanly_once_it_says_goodbye(short_tmp: Path) -> None:
    """What a non-aioipc peer writes: length-prefixed frames, then ff ff ff ff."""
    path = str(short_tmp / "s")
    async with await unix.listen(path) as listener:
        for goodbye in (True, False):
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.connect(path)
            async with await listener.accept() as chan:
                raw.sendall(encode_header(2) + b"hi" + (GOODBYE_FRAME if goodbye else b""))
                raw.close()
                with anyio.fail_after(TIMEOUT):
                    assert await chan.receive() == b"hi"
                    expected = EndOfStream if goodbye else BrokenResourceError
                    with pytest.raises(expected):
                        await chan.receive()


# ----------------------------------------------------------------- item 13: serve()


@pytest.mark.asyncio
async def test_one_handlers_exception_ends_only_its_connection(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(short_tmp / "s")
    served: list[bytes] = []

    async def handler(chan: unix.UnixChannel) -> None:
        message = await chan.receive()
        if message == b"bad":
            raise RuntimeError("this client misbehaved")
        served.append(message)
        await chan.send(message.upper())

    async with await unix.listen(path) as listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        with caplog.at_level(logging.ERROR, logger="aioipc.unix"), anyio.fail_after(TIMEOUT):
            async with await unix.connect(path) as bad:
                await bad.send(b"bad")
                with pytest.raises((EndOfStream, BrokenResourceError)):
                    await bad.receive()  # its connection was closed
            for i in range(3):  # the server still serves everyone else
                async with await unix.connect(path) as good:
                    await good.send(b"ok%d" % i)
                    assert await good.receive() == b"OK%d" % i
        tg.cancel_scope.cancel()
    assert served == [b"ok0", b"ok1", b"ok2"]
    assert "this client misbehaved" in caplog.text
    assert "Traceback" in caplog.text
    assert "the server goes on" in caplog.text


@pytest.mark.asyncio
async def test_serve_propagate_keeps_anyios_behaviour(short_tmp: Path) -> None:
    path = str(short_tmp / "s")

    async def handler(chan: unix.UnixChannel) -> None:
        await chan.receive()
        raise RuntimeError("stop everything")

    async with await unix.listen(path) as listener:
        with pytest.raises(ExceptionGroup) as info:  # noqa: PT012
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: listener.serve(handler, propagate=True))
                async with await unix.connect(path) as chan:
                    await chan.send(b"x")
                    with anyio.fail_after(TIMEOUT):
                        await anyio.sleep_forever()
        assert info.group_contains(RuntimeError, match="stop everything")


SERVER_AT_EMFILE = """
    import logging, os, resource, sys, anyio
    from aioipc import unix
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    path = sys.argv[1]
    class Retries(logging.Handler):  # sets `seen` once serve() has failed and said so
        def emit(self, record):
            if "retrying" in record.getMessage():
                seen.set()
    async def main():
        global seen
        seen = anyio.Event()
        logging.getLogger("aioipc.unix").addHandler(Retries())
        async with await unix.listen(path) as listener, anyio.create_task_group() as tg:
            async def handler(chan):
                await chan.send(await chan.receive())
            tg.start_soon(listener.serve, handler)
            # Use up every fd: the next accept fails with EMFILE.
            highest = max(int(n) for n in os.listdir("/proc/self/fd"))
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
            fillers = []
            try:
                while True:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            print("full", flush=True)
            # Read stdin on a thread: the loop must go on accepting meanwhile.
            await anyio.to_thread.run_sync(sys.stdin.readline)  # a client waits by now
            await seen.wait()  # accept failed with EMFILE, and serve() went on
            for fd in fillers:
                os.close(fd)
            print("freed", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)
            tg.cancel_scope.cancel()
    anyio.run(main)
"""


@pytest.mark.asyncio
async def test_serve_goes_on_after_emfile_in_accept(short_tmp: Path) -> None:
    path = str(short_tmp / "s")
    async with spawn(_peer_cmd(SERVER_AT_EMFILE, path)) as server:
        await server.expect("full")
        with anyio.fail_after(TIMEOUT):
            async with await unix.connect(path) as chan:
                await server.tell("go")
                lines = [await server.line() for _ in range(2)]
                assert "RLIMIT_NOFILE" in lines[0], lines
                assert "retrying in 0.1 s" in lines[0], lines
                while lines[-1] != "freed":
                    lines.append(await server.line())
                await chan.send(b"echo")
                assert await chan.receive() == b"echo"
        await server.tell("stop")
        await server.finish()


# ------------------------------------------------- items 9 and 11: refused by name


@pytest.mark.asyncio
async def test_unix_arguments_are_checked_before_anything_is_made(short_tmp: Path) -> None:
    path = short_tmp / "s"
    for bad in (-1, 0o7777, 0o1000):
        with pytest.raises(ValueError, match="mode must be permission bits"):
            await unix.listen(path, mode=bad)
    with pytest.raises(TypeError, match="mode must be permission bits"):
        await unix.listen(path, mode="0600")  # type: ignore[arg-type]
    for kind in ("stream", "seqpacket", "dgram"):
        with pytest.raises(ValueError, match=r"max_message_size must be in 0\.\."):
            await unix.listen(path, kind, max_message_size=-1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"max_message_size must be in 0\.\."):
            await unix.connect(path, kind, max_message_size=-1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="allowed_uids"):
        await unix.listen(path, allowed_uids="1000")
    with pytest.raises(ValueError, match="allowed_uids must be in"):
        await unix.listen(path, allowed_uids=[-1])
    with pytest.raises(ValueError, match="backlog"):
        await unix.listen(path, backlog=-1)
    assert not path.exists()


@pytest.mark.asyncio
async def test_a_nul_in_a_unix_path_is_refused_by_connect_and_listen(short_tmp: Path) -> None:
    path = str(short_tmp / "s")
    async with await unix.listen(path):
        with pytest.raises(ValueError, match="NUL"):
            await unix.connect(path + "\0junk")  # would have reached `path`
        with pytest.raises(ValueError, match="NUL"):
            await unix.listen(path + "\0junk")


@pytest.mark.asyncio
async def test_fifo_arguments_are_checked_before_the_fifo_is_made(short_tmp: Path) -> None:
    path = short_tmp / "f"
    with pytest.raises(ValueError, match="max_message_size"):
        await fifo.open_receiver(path, create=True, max_message_size=-5)
    with pytest.raises(ValueError, match="mode must be permission bits"):
        await fifo.open_receiver(path, create=True, mode=-1)
    with pytest.raises(ValueError, match="mode must be permission bits"):
        fifo.create(path, mode=0o4777)
    assert not path.exists()
    fifo.create(path, mode=0o640)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o640
    with pytest.raises(ValueError, match="max_message_size"):
        await fifo.open_sender(path, max_message_size=2**40)
    fifo.unlink(path)


def test_pipe_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        aioipc.pipe(max_message_size=-1)
    with pytest.raises(ValueError, match="pipe_size"):
        aioipc.pipe(pipe_size=0)


AT_EMFILE = """
    import os, resource, sys, anyio
    import aioipc
    from aioipc import unix
    path = sys.argv[1]
    async def main():
        async with await unix.listen(path) as listener:
            highest = max(int(n) for n in os.listdir("/proc/self/fd"))
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
            while True:
                try:
                    os.open("/dev/null", os.O_RDONLY)
                except OSError:
                    break
            async def pipe():
                return aioipc.pipe()
            for name, call in [
                ("listen", lambda: unix.listen(path + "2")),
                ("connect", lambda: unix.connect(path)),
                ("pipe", pipe),
            ]:
                try:
                    await call()
                    print(name, "SUCCEEDED", flush=True)
                except aioipc.IPCSystemError as exc:
                    print(name, type(exc).__name__, exc.errno, exc.strerror, flush=True)
                except BaseException as exc:
                    print(name, "RAW", type(exc).__name__, exc, flush=True)
    anyio.run(main)
"""


@pytest.mark.asyncio
async def test_emfile_is_an_ipc_error_naming_rlimit_nofile(short_tmp: Path) -> None:
    path = str(short_tmp / "s")
    async with spawn(_peer_cmd(AT_EMFILE, path)) as peer:
        for name in ("listen", "connect", "pipe"):
            line = await peer.line()
            assert line.startswith(f"{name} IPCSystemError 24 "), line
            assert "RLIMIT_NOFILE = " in line, line
        await peer.finish()


def test_encoded_chunks_start_and_end_marked() -> None:
    (only,) = encode_chunks(b"x", 1)
    assert int.from_bytes(only[8:12], "big") >> 30 == 0b11  # first and last
