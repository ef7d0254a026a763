"""Tests for ``aioipc.unix``: stream, seqpacket and datagram unix sockets.

Everything runs on real kernel sockets; cross-process behaviour is checked against real
child processes (``tests/peers/unix_peer.py`` for aioipc peers, ``python -c`` snippets with
the plain :mod:`socket` module for raw peers). A test follows a child through the lines it
prints, never by sleeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import resource
import socket
import stat
import struct
import sys
import termios
import textwrap
import tracemalloc
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio.testing
from anyio import ClosedResourceError, EndOfStream, WouldBlock
from anyio.streams.stapled import StapledObjectStream

import aioipc
from aioipc import IPCAttribute, unix
from aioipc._core.wait import YIELD_EVERY
from aioipc.framing import MAX_FRAME_LENGTH
from tests._assert import same
from tests._fds import links_to, pipe_link, seeded_bytes
from tests._peer import Peer
from tests._peer import spawn as spawn_cmd

PEER = Path(__file__).parent / "peers" / "unix_peer.py"
#: Upper bound for any single wait on a peer or a socket; nothing here should come near it.
TIMEOUT = 15
KINDS = ["stream", "seqpacket", "dgram"]
CONNECTED_KINDS = ["stream", "seqpacket"]
SOCK_TYPES = {
    "stream": socket.SOCK_STREAM,
    "seqpacket": socket.SOCK_SEQPACKET,
    "dgram": socket.SOCK_DGRAM,
}
KIB = 1024
MIB = 1024 * KIB
#: The empty message comes after the others, so a failure on it still shows the others passed.
SIZES = [1, 64 * KIB, 0]
BIG = 5 * MIB

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid a child")


# ---------------------------------------------------------------------------------- helpers


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` recognisable bytes; different seeds give different contents."""
    block = bytes((i * 7 + seed) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def messages(kind: str) -> list[bytes]:
    sizes = SIZES + ([BIG] if kind == "stream" else [])
    return [payload(size, seed) for seed, size in enumerate(sizes)]


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def abstract_name() -> str:
    return f"@aioipc-test-{uuid.uuid4().hex}"


def abstract_names() -> set[str]:
    """Every abstract unix socket name bound on the machine (from /proc/net/unix)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return {f[7] for f in map(str.split, lines) if len(f) >= 8 and f[7].startswith("@")}


def gone(path: str | Path) -> bool:
    return not os.path.lexists(path)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def unread_bytes(fd: int) -> int:
    """Bytes waiting in a socket's receive queue (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


async def drained(chan: Any) -> None:
    """Wait until a task receiving on ``chan`` has taken every byte the kernel holds.

    The receiving task reads until EAGAIN without yielding, so once the queue is empty it
    is parked in ``wait_readable`` with everything it read held in its decoder.
    """
    fd = chan.extra(IPCAttribute.fd)
    with anyio.fail_after(TIMEOUT):
        while unread_bytes(fd):
            await anyio.lowlevel.checkpoint()


@contextlib.contextmanager
def pipes(n: int) -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(n)]
    try:
        yield made
    finally:
        for r, w in made:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def spawn(*args: str, code: str | None = None) -> contextlib.AbstractAsyncContextManager[Peer]:
    """Run the peer script (or ``code`` with ``python -c``); always killed and reaped."""
    if code is None:
        return spawn_cmd([sys.executable, str(PEER), *args])
    return spawn_cmd([sys.executable, "-c", textwrap.dedent(code), *args])


@asynccontextmanager
async def pair(
    path: str,
    kind: str = "stream",
    *,
    listen_kw: dict[str, Any] | None = None,
    connect_kw: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """(server side, client side) connected in this process; for dgram the server side is
    the bound endpoint, which can reply once it has received from the client."""
    async with AsyncExitStack() as stack:
        listener = await stack.enter_async_context(
            await unix.listen(path, kind, **(listen_kw or {}))
        )
        client = await stack.enter_async_context(
            await unix.connect(path, kind, **(connect_kw or {}))
        )
        if kind == "dgram":
            yield listener, client
        else:
            server = await stack.enter_async_context(await listener.accept())
            yield server, client


# Raw peers: the plain socket module, no aioipc.

RAW_EXCHANGE = """
    import socket, sys
    path, send_hex, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(bytes.fromhex(send_hex))
    print("sent", flush=True)
    got = b""
    while len(got) < want:
        chunk = s.recv(want - len(got))
        if not chunk:
            break
        got += chunk
    print(got.hex(), flush=True)
    sys.stdin.read()
    s.close()
"""

PLAIN_BOUND = """
    import socket, sys
    kinds = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET,
             "dgram": socket.SOCK_DGRAM}
    s = socket.socket(socket.AF_UNIX, kinds[sys.argv[2]])
    s.bind(sys.argv[1])
    if sys.argv[2] != "dgram":
        s.listen()
    print("ready", flush=True)
    sys.stdin.read()
"""

KILLED_MID_FRAME = """
    import socket, struct, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(struct.pack("!I", 10_000_000) + b"x" * 100_000)
    print("ready", flush=True)
    sys.stdin.read()
"""

IN_TWO_HALVES = """
    import socket, struct, sys
    size, cut = int(sys.argv[2]), int(sys.argv[3])
    body = bytes(i % 251 for i in range(size))
    data = struct.pack("!I", size) + body + struct.pack("!I", 5) + b"after"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(data[:cut])
    print("half", flush=True)
    sys.stdin.readline()
    s.sendall(data[cut:])
    print("rest", flush=True)
    sys.stdin.read()
"""

# Drops to uid/gid 65534 (nobody), then talks to an abstract stream listener.
NOBODY_STREAM = """
    import os, socket, struct, sys
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\\0" + sys.argv[1][1:])
    print("connected", flush=True)
    try:
        s.sendall(struct.pack("!I", 2) + b"hi")
        data = s.recv(100)
    except (BrokenPipeError, ConnectionResetError):
        print("closed:reset", flush=True)
    else:
        print("closed:eof" if not data else "got:" + data.hex(), flush=True)
    sys.stdin.read()
    s.close()
"""

NOBODY_DGRAM = """
    import os, socket, sys
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"from-nobody", "\\0" + sys.argv[1][1:])
    print("sent", flush=True)
    s.close()
"""


# --------------------------------------------------------------------------- 1. round trips


async def _round_trip_in_process(path: str, kind: str) -> None:
    msgs = messages(kind)
    async with pair(path, kind) as (server, client):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                # Concurrently: 5 MiB does not fit in the socket buffer.
                tg.start_soon(_send_all, client, msgs)
                for want in msgs:
                    same(await server.receive(), want)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_send_all, server, msgs)
                for want in msgs:
                    same(await client.receive(), want)


async def _send_all(chan: Any, msgs: list[bytes]) -> None:
    for m in msgs:
        await chan.send(m)


async def _round_trip_with_peer(path: str, kind: str) -> None:
    msgs = messages(kind)
    async with await unix.listen(path, kind) as listener, spawn("echo", path, kind) as peer:
        await peer.expect("connected")
        async with AsyncExitStack() as stack:
            if kind == "dgram":
                chan = listener
            else:
                chan = await stack.enter_async_context(await listener.accept())
                assert chan.extra(IPCAttribute.peer_pid) == peer.pid
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"hello"
                for want in msgs:
                    await chan.send(want)
                    same(await chan.receive(), want)
                await chan.send(b"bye")
        await peer.expect("done")
        await peer.finish()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_round_trip_in_process(short_tmp: Path, kind: str) -> None:
    # Includes an empty seqpacket message, once mistaken for end of stream.
    await _round_trip_in_process(str(short_tmp / "s.sock"), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_round_trip_with_peer_process(short_tmp: Path, kind: str) -> None:
    # Includes an echoed empty seqpacket message, once mistaken for end of stream.
    await _round_trip_with_peer(str(short_tmp / "s.sock"), kind)


@pytest.mark.asyncio
async def test_seqpacket_empty_message_is_not_end_of_stream(short_tmp: Path) -> None:
    async with pair(str(short_tmp / "s.sock"), "seqpacket") as (server, client):
        for m in (b"a", b"", b"b"):
            await client.send(m)
        with anyio.fail_after(TIMEOUT):
            assert await server.receive() == b"a"
            # Regression: recvmsg returns 0 for an empty message too; it was taken for EOF.
            assert await server.receive() == b""
            assert await server.receive() == b"b"


@pytest.mark.asyncio
async def test_stream_is_framed_by_default_on_the_wire(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    async with (
        await unix.listen(path) as listener,
        spawn(path, frame(b"hello").hex(), "7", code=RAW_EXCHANGE) as peer,
    ):
        async with await listener.accept() as chan:
            assert chan.extra(IPCAttribute.framed) is True
            assert chan.extra(IPCAttribute.mechanism) == "unix-stream"
            await peer.expect("sent")
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"hello"
            await chan.send(b"abc")
            assert await peer.line() == frame(b"abc").hex()
        await peer.finish()


@pytest.mark.asyncio
async def test_stream_framing_false_gives_raw_bytes(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    async with (
        await unix.listen(path, framing=False) as listener,
        spawn(path, b"hello".hex(), "3", code=RAW_EXCHANGE) as peer,
    ):
        async with await listener.accept() as chan:
            assert chan.extra(IPCAttribute.framed) is False
            await peer.expect("sent")
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"hello"
            await chan.send(b"abc")
            assert await peer.line() == b"abc".hex()
        await peer.finish()


# ------------------------------------------------------------------------------ 2. abstract


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_abstract_namespace(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.chdir(short_tmp)
    name = abstract_name()
    async with pair(name, kind) as (server, client):
        assert name in abstract_names()
        assert entries(short_tmp) == []
        assert gone(name)
        assert gone(name[1:])
        assert server.extra(IPCAttribute.path) == name
        with anyio.fail_after(TIMEOUT):
            await client.send(b"ping")
            assert await server.receive() == b"ping"
            await server.send(b"pong")
            assert await client.receive() == b"pong"
    assert name not in abstract_names()
    assert entries(short_tmp) == []


@pytest.mark.asyncio
async def test_abstract_namespace_with_peer_process(short_tmp: Path) -> None:
    name = abstract_name()
    async with await unix.listen(name) as listener, spawn("echo", name, "stream") as peer:
        await peer.expect("connected")
        async with await listener.accept() as chan:
            assert chan.extra(IPCAttribute.peer_pid) == peer.pid
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"hello"
                await chan.send(b"abstract")
                assert await chan.receive() == b"abstract"
        await peer.expect("done")
        await peer.finish()
    assert entries(short_tmp) == []


# ------------------------------------------------------------------------ 3. accept / serve


async def _echo_handler(chan: Any) -> None:
    async for msg in chan:
        await chan.send(b"echo:" + msg)


@pytest.mark.asyncio
async def test_accept_concurrent_clients(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    replies: dict[int, list[bytes]] = {i: [] for i in range(5)}

    async def client(i: int) -> None:
        async with await unix.connect(path) as chan:
            for j in range(10):
                await chan.send(b"%d:%d" % (i, j))
                replies[i].append(await chan.receive())

    async def handle(chan: Any) -> None:
        async with chan:
            await _echo_handler(chan)

    async with await unix.listen(path) as listener:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(client, i)
                for _ in range(5):
                    tg.start_soon(handle, await listener.accept())
    assert replies == {i: [b"echo:%d:%d" % (i, j) for j in range(10)] for i in range(5)}


@pytest.mark.asyncio
async def test_serve_client_processes_until_listener_closed(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    served: list[int] = []

    async def handler(chan: Any) -> None:
        await _echo_handler(chan)
        served.append(chan.extra(IPCAttribute.peer_pid))

    listener = await unix.listen(path)
    stopped = anyio.Event()

    async def run_serve() -> None:
        await listener.serve(handler)
        stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_serve)
            async with AsyncExitStack() as stack:
                peers = [
                    await stack.enter_async_context(spawn("client", path, str(i), "4"))
                    for i in range(5)
                ]
                for i, peer in enumerate(peers):
                    for j in range(4):
                        await peer.expect(f"echo:{i}:{j}")
                    await peer.expect("done")
                    await peer.finish()
            assert not stopped.is_set()
            await listener.aclose()
            with anyio.fail_after(TIMEOUT):
                await stopped.wait()
    finally:
        await listener.aclose()
    assert sorted(served) == sorted(p.pid for p in peers)
    assert gone(path)


@pytest.mark.asyncio
async def test_serve_stops_when_task_group_cancelled(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")

    async def handler(chan: Any) -> None:
        await chan.send(b"hi")
        await chan.receive()  # never comes

    async with await unix.listen(path) as listener:
        async with await unix.connect(path) as client:
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listener.serve, handler)
                    assert await client.receive() == b"hi"
                    tg.cancel_scope.cancel()
                # serve closed the handler's channel on the way out.
                with pytest.raises(anyio.EndOfStream):
                    await client.receive()
        # The listener itself is still open and accepting.
        async with await unix.connect(path) as client, await listener.accept() as server:
            await client.send(b"again")
            with anyio.fail_after(TIMEOUT):
                assert await server.receive() == b"again"
    assert gone(path)


@pytest.mark.asyncio
async def test_dgram_endpoint_replies_to_each_client(short_tmp: Path) -> None:
    path = str(short_tmp / "d.sock")
    async with (
        await unix.listen(path, "dgram") as endpoint,
        AsyncExitStack() as stack,
    ):
        clients = [
            await stack.enter_async_context(await unix.connect(path, "dgram")) for _ in range(3)
        ]
        for i, c in enumerate(clients):
            await c.send(b"from %d" % i)
        with anyio.fail_after(TIMEOUT):
            senders = []
            for i in range(3):
                data, sender = await endpoint.receive_from()
                assert data == b"from %d" % i
                senders.append(sender)
            for i, sender in enumerate(senders):
                await endpoint.send_to(b"to %d" % i, sender)
            assert [await c.receive() for c in clients] == [b"to 0", b"to 1", b"to 2"]


# --------------------------------------------------------------------------- 4. credentials


@pytest.mark.parametrize("kind", CONNECTED_KINDS)
@pytest.mark.asyncio
async def test_peer_credentials(short_tmp: Path, kind: str) -> None:
    path = str(short_tmp / "s.sock")
    async with await unix.listen(path, kind) as listener:
        async with spawn("hold", path, kind) as peer:
            child_pid = int(await peer.line())
            await peer.expect("connected")
            assert child_pid == peer.pid
            async with await listener.accept() as chan:
                assert chan.extra(IPCAttribute.peer_pid) == child_pid
                assert chan.extra(IPCAttribute.peer_uid) == os.getuid()
                assert chan.extra(IPCAttribute.peer_gid) == os.getgid()
                assert chan.extra(IPCAttribute.path) == path
            await peer.finish()
        # The client side sees the listening process.
        async with await unix.connect(path, kind) as client, await listener.accept():
            assert client.extra(IPCAttribute.peer_pid) == os.getpid()
            assert client.extra(IPCAttribute.peer_uid) == os.getuid()


# ---------------------------------------------------------------------------- 5. fd passing


@pytest.mark.parametrize("kind", CONNECTED_KINDS)
@pytest.mark.asyncio
async def test_fd_passing_to_peer_process(short_tmp: Path, kind: str) -> None:
    path = str(short_tmp / "s.sock")
    file_fd = os.open(short_tmp / "data.txt", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with pipes(1) as [(r, w)]:
            async with await unix.listen(path, kind) as listener, spawn("fds", path, kind) as p:
                await p.expect("connected")
                async with await listener.accept() as chan:
                    with anyio.fail_after(TIMEOUT):
                        await chan.send_fds(b"via-fd", [w, file_fd])
                        os.close(w)
                        assert await chan.receive() == b"wrote 2"
                        await chan.send(b"plain")
                        assert await chan.receive() == b"wrote 0"
                await p.expect("done")
                await p.finish()
            # The peer wrote through its copies; ours see what it wrote.
            assert read_to_eof(r) == b"via-fd#0"
        assert os.pread(file_fd, 100, 0) == b"via-fd#1"
    finally:
        os.close(file_fd)


@pytest.mark.parametrize("kind", CONNECTED_KINDS)
@pytest.mark.asyncio
async def test_plain_receive_closes_passed_fds(short_tmp: Path, kind: str) -> None:
    async with pair(str(short_tmp / "s.sock"), kind) as (server, client):
        with pipes(1) as [(r, w)]:
            before = fd_count()
            with anyio.fail_after(TIMEOUT):
                # One at a time, then a burst the receiver reads in as few reads as it can.
                for i in range(10):
                    await client.send_fds(b"m%d" % i, [r, w])
                    assert await server.receive() == b"m%d" % i
                for i in range(10):
                    await client.send_fds(b"b%d" % i, [r, w, r])
                for i in range(10):
                    assert await server.receive() == b"b%d" % i
            assert fd_count() == before


@pytest.mark.parametrize("kind", CONNECTED_KINDS)
@pytest.mark.asyncio
async def test_fds_attach_to_their_own_message(short_tmp: Path, kind: str) -> None:
    async with pair(str(short_tmp / "s.sock"), kind) as (server, client):
        with pipes(3) as made:
            (a, _), (b, _), (c, _) = made
            plan: list[tuple[bytes, list[int]]] = [
                (b"n0", []),
                (b"f1", [a]),
                (b"n2", []),
                (b"f3", [b, c]),
                (b"f4", [c]),  # read with plain receive(): its fd is closed
                (b"n5", []),
                (b"f6", [a, b, c]),
                (b"n7", []),
            ]
            before = fd_count()
            # Everything is sent before anything is received, so one read sees several
            # frames (a stream read stops only after a frame that carries fds).
            for data, fds in plan:
                if fds:
                    await client.send_fds(data, fds)
                else:
                    await client.send(data)
            with anyio.fail_after(TIMEOUT):
                for data, fds in plan:
                    if data == b"f4":
                        assert await server.receive() == data
                        continue
                    got, received = await server.receive_fds()
                    assert got == data
                    try:
                        assert [identity(fd) for fd in received] == [identity(fd) for fd in fds]
                    finally:
                        for fd in received:
                            os.close(fd)
            assert fd_count() == before


@pytest.mark.asyncio
async def test_receive_nowait_keeps_fds_with_their_message(short_tmp: Path) -> None:
    async with pair(str(short_tmp / "s.sock")) as (server, client):
        with pipes(2) as [(a, _), (b, _)]:
            await client.send_fds(b"A", [a])
            await client.send_fds(b"B", [b])
            before = fd_count()
            with anyio.fail_after(TIMEOUT):
                await anyio.wait_readable(server.extra(IPCAttribute.fd))
            assert server.receive_nowait() == b"A"
            with anyio.fail_after(TIMEOUT):
                got, received = await server.receive_fds()
            try:
                assert got == b"B"
                # Regression: receive_nowait left A's fds queued, and receive_fds() then
                # handed them out with B.
                assert [identity(fd) for fd in received] == [identity(b)]
            finally:
                for fd in received:
                    os.close(fd)
            assert fd_count() == before


@pytest.mark.asyncio
async def test_send_fds_while_another_task_sends_keeps_frames_whole(short_tmp: Path) -> None:
    big = payload(4 * MIB, 3)
    async with pair(str(short_tmp / "s.sock")) as (server, client):
        with pipes(1) as [(r, _)]:
            sent_fds = False
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.send, big)
                    await anyio.wait_all_tasks_blocked()  # the big send waits for room
                    with pytest.raises(anyio.WouldBlock):
                        server.receive_nowait()  # make room; the big send has not resumed
                    try:
                        await client.send_fds(b"with-fd", [r])
                        sent_fds = True
                    except anyio.BusyResourceError:
                        pass
                    # Regression: send_fds ignored the sender's busy flag and put its frame
                    # into the middle of the 4 MiB frame still being written.
                    same(await server.receive(), big)
                if sent_fds:
                    got, received = await server.receive_fds()
                    for fd in received:
                        os.close(fd)
                    assert got == b"with-fd"
                    assert len(received) == 1


@pytest.mark.parametrize("framing", [True, False], ids=["framed", "raw"])
@pytest.mark.asyncio
async def test_fds_from_a_raw_peer_do_not_leak(short_tmp: Path, framing: bool) -> None:
    """A peer using plain sendmsg attaches fds to bytes aioipc did not flag as carrying fds
    (framed: a header without the fds bit; raw: there are no headers). Plain receive()
    must still not leave those fds open in this process."""
    path = str(short_tmp / "s.sock")
    async with await unix.listen(path, framing=framing) as listener:
        peer_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with peer_sock, pipes(1) as [(r, w)]:
            peer_sock.connect(path)
            async with await listener.accept() as chan:
                before = fd_count()
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", r, w))]
                for i in range(5):
                    data = b"raw%d" % i
                    peer_sock.sendmsg([frame(data) if framing else data], rights)
                    with anyio.fail_after(TIMEOUT):
                        assert await chan.receive() == data
                # Regression: fds on unflagged frames (and on raw reads) stayed open until
                # aclose, so a peer could exhaust this process's fd table.
                assert fd_count() == before


@pytest.mark.asyncio
async def test_send_fds_limits(short_tmp: Path) -> None:
    async with pair(str(short_tmp / "s.sock")) as (server, client):
        with pytest.raises(ValueError, match="253"):
            await client.send_fds(b"x", [0] * 254)
        await client.send(b"still fine")
        with anyio.fail_after(TIMEOUT):
            assert await server.receive() == b"still fine"
    # On a raw channel the bytes go without a header, with the fds on their first byte.
    async with pair(
        str(short_tmp / "r.sock"),
        connect_kw={"framing": False},
        listen_kw={"framing": False},
    ) as (raw_server, raw):
        r, w = os.pipe()
        try:
            await raw.send_fds(b"raw bytes", [w])
            with anyio.fail_after(TIMEOUT):
                data, fds = await raw_server.receive_fds()
            assert data == b"raw bytes"
            assert len(fds) == 1
            os.write(fds[0], b"through the passed fd")
            os.close(fds[0])
            assert os.read(r, 100) == b"through the passed fd"
        finally:
            os.close(r)
            os.close(w)


# -------------------------------------------------------------------------- 6. socket files


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_socket_file_mode_is_0600(short_tmp: Path, kind: str) -> None:
    path = short_tmp / "s.sock"
    old = os.umask(0)  # the most permissive umask must not widen the file
    try:
        async with await unix.listen(path, kind):
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.getuid()
        async with await unix.listen(path, kind, mode=0o660):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    finally:
        os.umask(old)
    assert not path.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_live_holder_then_stale_after_sigkill(short_tmp: Path, kind: str) -> None:
    path = str(short_tmp / "s.sock")
    async with spawn(path, kind, code=PLAIN_BOUND) as holder:
        await holder.expect("ready")
        with pytest.raises(aioipc.IPCExistsError) as excinfo:
            await unix.listen(path, kind)
        assert isinstance(excinfo.value, FileExistsError)
        assert path in str(excinfo.value)
        assert excinfo.value.filename == path
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # not removed
        await holder.kill()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left behind by the killed process
    async with pair(path, kind) as (server, client):
        await client.send(b"reclaimed")
        with anyio.fail_after(TIMEOUT):
            assert await server.receive() == b"reclaimed"
    assert gone(path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_stale_socket_file_from_bind_and_close_is_reclaimed(
    short_tmp: Path, kind: str
) -> None:
    path = str(short_tmp / "s.sock")
    with socket.socket(socket.AF_UNIX, SOCK_TYPES[kind]) as s:
        s.bind(path)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    async with await unix.listen(path, kind) as listener:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert listener.extra(IPCAttribute.path) == path
    assert gone(path)


@pytest.mark.asyncio
async def test_live_aioipc_listener_is_not_taken_over(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    async with await unix.listen(path) as listener:
        with pytest.raises(aioipc.IPCExistsError, match=r"s\.sock"):
            await unix.listen(path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        # Still the first listener's socket, still working, and its next connection is ours.
        async with await unix.connect(path) as client, await listener.accept() as server:
            await client.send(b"first")
            with anyio.fail_after(TIMEOUT):
                # Regression: the failed listen() probed the address with a stream connect,
                # leaving a dead connection in the live listener's backlog.
                assert await server.receive() == b"first"
    name = abstract_name()
    async with await unix.listen(name):
        with pytest.raises(aioipc.IPCExistsError) as excinfo:
            await unix.listen(name)
        assert isinstance(excinfo.value, FileExistsError)
        assert name in str(excinfo.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_regular_file_is_never_removed(short_tmp: Path, kind: str) -> None:
    path = short_tmp / "precious.txt"
    path.write_bytes(b"keep me")
    with pytest.raises(aioipc.IPCExistsError) as excinfo:
        await unix.listen(path, kind)
    assert isinstance(excinfo.value, FileExistsError)
    assert str(path) in str(excinfo.value)
    assert path.read_bytes() == b"keep me"
    assert stat.S_ISREG(os.lstat(path).st_mode)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_close_removes_socket_file(short_tmp: Path, kind: str) -> None:
    path = short_tmp / "s.sock"
    listener = await unix.listen(path, kind)
    assert path.is_socket()
    await listener.aclose()
    assert gone(path)
    await listener.aclose()  # idempotent
    # A socket file that replaced ours after we bound is not ours to remove.
    listener = await unix.listen(path, kind)
    os.unlink(path)
    async with await unix.listen(path, kind) as second:
        await listener.aclose()
        assert path.is_socket()
        assert second.extra(IPCAttribute.path) == str(path)
    assert gone(path)


# --------------------------------------------------------------------- 7. abstract security


@root_only
@pytest.mark.asyncio
async def test_abstract_listener_rejects_other_uid_by_default() -> None:
    name = abstract_name()
    async with await unix.listen(name) as listener:
        accepted: list[Any] = []
        got_one = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def accept() -> None:
                accepted.append(await listener.accept())
                got_one.set()

            tg.start_soon(accept)
            async with spawn(name, code=NOBODY_STREAM) as nobody:
                await nobody.expect("connected")
                assert await nobody.line() in {"closed:eof", "closed:reset"}
                await nobody.finish()
            assert listener.rejected == 1
            assert accepted == []
            # The listener goes on accepting its own user.
            async with await unix.connect(name) as client:
                with anyio.fail_after(TIMEOUT):
                    await got_one.wait()
                async with accepted[0] as server:
                    assert server.extra(IPCAttribute.peer_pid) == os.getpid()
                    await client.send(b"me")
                    with anyio.fail_after(TIMEOUT):
                        assert await server.receive() == b"me"
        assert listener.rejected == 1


@root_only
@pytest.mark.asyncio
async def test_abstract_listener_allowed_uids_admits_other_uid() -> None:
    name = abstract_name()
    async with await unix.listen(name, allowed_uids={0, 65534}) as listener:
        async with spawn(name, code=NOBODY_STREAM) as nobody:
            await nobody.expect("connected")
            with anyio.fail_after(TIMEOUT):
                async with await listener.accept() as chan:
                    assert chan.extra(IPCAttribute.peer_uid) == 65534
                    assert chan.extra(IPCAttribute.peer_gid) == 65534
                    assert chan.extra(IPCAttribute.peer_pid) == nobody.pid
                    assert await chan.receive() == b"hi"
                    await chan.send(b"welcome")
                    assert await nobody.line() == "got:" + frame(b"welcome").hex()
            await nobody.finish()
        assert listener.rejected == 0


@root_only
@pytest.mark.parametrize(("allowed", "expected"), [(None, []), ({0, 65534}, [b"from-nobody"])])
@pytest.mark.asyncio
async def test_abstract_dgram_endpoint_checks_sender_uid(
    allowed: set[int] | None, expected: list[bytes]
) -> None:
    name = abstract_name()
    async with await unix.listen(name, "dgram", allowed_uids=allowed) as endpoint:
        async with spawn(name, code=NOBODY_DGRAM) as nobody:
            await nobody.expect("sent")
            await nobody.finish()
        async with await unix.connect(name, "dgram") as client:
            await client.send(b"from-root")
            with anyio.fail_after(TIMEOUT):
                got = [await endpoint.receive() for _ in range(len(expected) + 1)]
            assert got == [*expected, b"from-root"]
            with pytest.raises(anyio.WouldBlock):
                endpoint.receive_nowait()


# ------------------------------------------------------------------------ 8. connect errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_connect_missing_path(short_tmp: Path, kind: str) -> None:
    path = str(short_tmp / "nobody-here.sock")
    with pytest.raises(aioipc.IPCNotFoundError) as excinfo:
        await unix.connect(path, kind)
    assert isinstance(excinfo.value, FileNotFoundError)
    assert path in str(excinfo.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_connect_to_socket_file_nobody_listens_on(short_tmp: Path, kind: str) -> None:
    path = str(short_tmp / "dead.sock")
    with socket.socket(socket.AF_UNIX, SOCK_TYPES[kind]) as s:
        s.bind(path)
    try:
        with pytest.raises(aioipc.IPCConnectionRefusedError) as excinfo:
            await unix.connect(path, kind)
        assert isinstance(excinfo.value, ConnectionRefusedError)
        assert path in str(excinfo.value)
    finally:
        os.unlink(path)


@pytest.mark.asyncio
async def test_connect_to_missing_abstract_name() -> None:
    name = abstract_name()
    with pytest.raises(aioipc.IPCConnectionRefusedError, match=name):
        await unix.connect(name)


# -------------------------------------------------------------------------------- 9. faults


@pytest.mark.parametrize("kind", CONNECTED_KINDS)
@pytest.mark.asyncio
async def test_peer_exits_cleanly_gives_end_of_stream(short_tmp: Path, kind: str) -> None:
    path = str(short_tmp / "s.sock")
    async with await unix.listen(path, kind) as listener, spawn("send-exit", path, kind) as p:
        async with await listener.accept() as chan:
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"last"
                with pytest.raises(anyio.EndOfStream):
                    await chan.receive()
                with pytest.raises(anyio.EndOfStream):
                    await chan.receive()
        await p.finish()


@pytest.mark.asyncio
async def test_peer_killed_mid_frame_is_broken_not_a_hang(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    async with (
        await unix.listen(path) as listener,
        spawn(path, code=KILLED_MID_FRAME) as peer,
        await listener.accept() as chan,
    ):
        await peer.expect("ready")
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def receive() -> None:
                    with pytest.raises(anyio.BrokenResourceError):
                        await chan.receive()

                tg.start_soon(receive)
                await drained(chan)  # the receive holds the partial frame and waits
                await peer.kill()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xfe", b"hello world"])
@pytest.mark.asyncio
async def test_corrupt_length_prefix_is_protocol_error(short_tmp: Path, garbage: bytes) -> None:
    path = str(short_tmp / "s.sock")
    async with (
        await unix.listen(path) as listener,
        spawn(path, garbage.hex(), "0", code=RAW_EXCHANGE) as peer,
    ):
        async with await listener.accept() as chan:
            await peer.expect("sent")
            tracemalloc.start()
            try:
                with anyio.fail_after(5), pytest.raises(aioipc.ProtocolError) as excinfo:
                    await chan.receive()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert isinstance(excinfo.value, aioipc.FrameTooLargeError)
            assert peak < 1 * MIB
        await peer.finish()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_use_after_aclose_is_closed_resource_error(short_tmp: Path, kind: str) -> None:
    async with pair(str(short_tmp / "s.sock"), kind) as (_, client):
        async with anyio.create_task_group() as tg:

            async def receive() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await client.receive()

            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(TIMEOUT):
                await client.aclose()  # wakes the waiting receive
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"late")
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()
        await client.aclose()  # idempotent


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_oversized_message_is_refused_and_channel_stays_usable(
    short_tmp: Path, kind: str
) -> None:
    connect_kw = {"max_message_size": 1000}
    async with pair(str(short_tmp / "s.sock"), kind, connect_kw=connect_kw) as (server, client):
        assert client.extra(IPCAttribute.max_message_size) == 1000
        with pytest.raises(aioipc.MessageTooLargeError, match="1000") as excinfo:
            await client.send(b"x" * 1001)
        assert excinfo.value.limit == 1000
        assert excinfo.value.size == 1001
        await client.send(b"y" * 1000)
        await client.send(b"z")
        with anyio.fail_after(TIMEOUT):
            assert await server.receive() == b"y" * 1000
            assert await server.receive() == b"z"


@pytest.mark.asyncio
async def test_stream_receiver_limit_is_frame_too_large(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    async with pair(path, listen_kw={"max_message_size": 1000}) as (server, client):
        await client.send(b"x" * 1001)
        with anyio.fail_after(TIMEOUT), pytest.raises(aioipc.FrameTooLargeError, match="1000"):
            await server.receive()


@pytest.mark.asyncio
async def test_dgram_larger_than_socket_can_carry(short_tmp: Path) -> None:
    path = str(short_tmp / "d.sock")
    async with pair(path, "dgram") as (endpoint, client):
        with socket.socket(fileno=os.dup(client.extra(IPCAttribute.fd))) as view:
            sndbuf = view.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if 2 * sndbuf > client.extra(IPCAttribute.max_message_size):
            pytest.skip(f"SO_SNDBUF {sndbuf} is larger than the channel's max_message_size")
        with pytest.raises(aioipc.MessageTooLargeError, match="SO_SNDBUF") as excinfo:
            await client.send(b"x" * (2 * sndbuf))
        assert excinfo.value.limit == sndbuf
        assert excinfo.value.size == 2 * sndbuf
        await client.send(b"small")
        with anyio.fail_after(TIMEOUT):
            assert await endpoint.receive() == b"small"


@pytest.mark.asyncio
async def test_cancelled_receive_mid_frame_loses_nothing(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    size = 300_000
    body = bytes(i % 251 for i in range(size))
    async with (
        await unix.listen(path) as listener,
        spawn(path, str(size), "100000", code=IN_TWO_HALVES) as peer,
    ):
        async with await listener.accept() as chan:
            await peer.expect("half")
            got: list[bytes] = []
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    scope = anyio.CancelScope()

                    async def receive() -> None:
                        with scope:
                            got.append(await chan.receive())

                    tg.start_soon(receive)
                    await drained(chan)  # the first 100000 bytes are in the decoder
                    scope.cancel()
                assert got == []
                await peer.tell("go")
                await peer.expect("rest")
                same(await chan.receive(), body)
                assert await chan.receive() == b"after"
        await peer.finish()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.asyncio
async def test_second_concurrent_receive_is_busy(short_tmp: Path, kind: str) -> None:
    async with pair(str(short_tmp / "s.sock"), kind) as (server, client):
        if kind == "dgram":
            server, client = client, server  # the client receives; the endpoint sends
            await server.send(b"hello")
            with anyio.fail_after(TIMEOUT):
                assert await client.receive() == b"hello"
        got: list[bytes] = []
        receiving = anyio.Event()
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def first() -> None:
                    receiving.set()
                    got.append(await server.receive())

                tg.start_soon(first)
                await receiving.wait()  # first() is parked inside receive()
                with pytest.raises(anyio.BusyResourceError):
                    await server.receive()
                await client.send(b"one")
            assert got == [b"one"]


# ----------------------------------------------------------------------------- 10. send_eof


@pytest.mark.parametrize("kind", CONNECTED_KINDS)
@pytest.mark.asyncio
async def test_send_eof_half_closes(short_tmp: Path, kind: str) -> None:
    async with pair(str(short_tmp / "s.sock"), kind) as (server, client):
        with anyio.fail_after(TIMEOUT):
            await client.send(b"request")
            await client.send_eof()
            assert await server.receive() == b"request"
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
            await server.send(b"reply 1")
            await server.send(b"reply 2")
            assert await client.receive() == b"reply 1"
            assert await client.receive() == b"reply 2"


@pytest.mark.asyncio
async def test_send_eof_seen_by_peer_process_which_still_replies(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    async with await unix.listen(path) as listener, spawn("echo", path, "stream") as peer:
        await peer.expect("connected")
        async with await listener.accept() as chan:
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"hello"
                await chan.send(b"one")
                assert await chan.receive() == b"one"
                await chan.send(b"two")
                await chan.send_eof()  # the peer echoes "two", then sees end of stream
                assert await chan.receive() == b"two"
                await peer.expect("done")
                with pytest.raises(anyio.EndOfStream):
                    await chan.receive()
        await peer.finish()


# ----------------------------------------------------------------------- 11. anyio wrappers


@pytest.mark.asyncio
async def test_memory_object_stream_pump(short_tmp: Path) -> None:
    async with pair(str(short_tmp / "s.sock")) as (server, client):
        send_mem, receive_mem = anyio.create_memory_object_stream[bytes](4)

        async def pump() -> None:
            async with send_mem:
                async for msg in server:
                    await send_mem.send(msg)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg, receive_mem:
                tg.start_soon(pump)
                for i in range(20):
                    await client.send(b"msg %d" % i)
                await client.send_eof()
                got = [m async for m in receive_mem]
        assert got == [b"msg %d" % i for i in range(20)]


@pytest.mark.asyncio
async def test_stapled_object_stream(short_tmp: Path) -> None:
    async with pair(str(short_tmp / "s.sock")) as (server, client):
        stapled = StapledObjectStream(client, client)
        with anyio.fail_after(TIMEOUT):
            await stapled.send(b"through the staple")
            assert await server.receive() == b"through the staple"
            await server.send(b"back")
            assert await stapled.receive() == b"back"
            await stapled.send_eof()
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
        await stapled.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"closed")


# --------------------------------------------------------------------------------- 12. trio


def test_stream_round_trip_under_trio(short_tmp: Path) -> None:
    pytest.importorskip("trio")

    async def main() -> None:
        await _round_trip_in_process(str(short_tmp / "a.sock"), "stream")
        await _round_trip_with_peer(str(short_tmp / "b.sock"), "stream")

    anyio.run(main, backend="trio")
    assert entries(short_tmp) == []


# --------------------------------------------------------------------------------- 13. URLs


@pytest.mark.parametrize(
    ("scheme", "kind"),
    [("unix", "stream"), ("unix+seqpacket", "seqpacket"), ("unix+dgram", "dgram")],
)
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
@pytest.mark.asyncio
async def test_url_round_trip(short_tmp: Path, scheme: str, kind: str, abstract: bool) -> None:
    where = abstract_name() if abstract else str(short_tmp / "u.sock")
    url = f"{scheme}://{where}"
    async with await aioipc.listen(url) as listener:
        assert listener.extra(IPCAttribute.path) == where
        if not abstract:
            assert stat.S_IMODE(os.lstat(where).st_mode) == 0o600
        async with await aioipc.connect(url) as client:
            assert client.extra(IPCAttribute.mechanism) == f"unix-{kind}"
            async with AsyncExitStack() as stack:
                server = (
                    listener
                    if kind == "dgram"
                    else await stack.enter_async_context(await listener.accept())
                )
                with anyio.fail_after(TIMEOUT):
                    await client.send(b"url ping")
                    assert await server.receive() == b"url ping"
                    await server.send(b"url pong")
                    assert await client.receive() == b"url pong"
    assert entries(short_tmp) == []


@pytest.mark.asyncio
async def test_url_framing_none_and_max_size(short_tmp: Path) -> None:
    path = str(short_tmp / "u.sock")
    async with (
        await aioipc.listen(f"unix://{path}?framing=none") as listener,
        spawn(path, b"raw bytes".hex(), "2", code=RAW_EXCHANGE) as peer,
    ):
        async with await listener.accept() as chan:
            assert chan.extra(IPCAttribute.framed) is False
            await peer.expect("sent")
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"raw bytes"
            await chan.send(b"ok")
            assert await peer.line() == b"ok".hex()
        await peer.finish()
    async with (
        await aioipc.listen(f"unix://{path}") as listener,
        await aioipc.connect(f"unix://{path}?max_size=1000") as client,
        await listener.accept(),
    ):
        assert client.extra(IPCAttribute.max_message_size) == 1000
        with pytest.raises(aioipc.MessageTooLargeError, match="1000"):
            await client.send(b"x" * 1001)


@pytest.mark.asyncio
async def test_url_json_codec(short_tmp: Path) -> None:
    path = str(short_tmp / "u.sock")
    doc = {"job": 7, "args": [1, "two", None, 3.5], "nested": {"ok": True}}
    async with (
        await aioipc.listen(f"unix://{path}", codec="json") as listener,
        await aioipc.connect(f"unix://{path}", codec="json") as client,
        await listener.accept() as server,
    ):
        with anyio.fail_after(TIMEOUT):
            await client.send(doc)
            assert await server.receive() == doc
            await server.send({"reply": doc["job"]})
            assert await client.receive() == {"reply": 7}
    name = abstract_name()
    async with (
        await aioipc.listen(f"unix+dgram://{name}?codec=json") as endpoint,
        await aioipc.connect(f"unix+dgram://{name}?codec=json") as client,
    ):
        with anyio.fail_after(TIMEOUT):
            await client.send(["dgram", 1])
            assert await endpoint.receive() == ["dgram", 1]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("tcp://x", "tcp"),
        ("unix:///tmp/aioipc-x.sock?colour=red", "colour"),
        ("unix:///tmp/aioipc-x.sock?framing=sometimes", "framing"),
        ("unix://", "no path"),
    ],
)
@pytest.mark.asyncio
async def test_bad_url(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        await aioipc.listen(url)
    with pytest.raises(ValueError, match=problem):
        await aioipc.connect(url)


# ==========================================================================================
# Regressions: unix sockets
# Regression tests moved from tests/test_regressions.py (issue 11): bugs found in review,
# kept next to the mechanism they guard. Each names, in its first line, the bug it guards.
# Two tests run on trio under trio.testing.MockClock(autojump_threshold=0): its virtual
# clock moves only when every task is blocked, so "the peer starts reading after the old
# 1-second grace" costs no real time and depends on no timing.
# ==========================================================================================


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


def run_on_trio_with_virtual_time(func: Callable[[], Awaitable[None]]) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    anyio.run(func, backend="trio", backend_options={"clock": clock})


# ------------------------------------------------ nothing may cut into a half-written frame


async def _fd_message_after_half_written_frame(
    tmp: Path, reader_starts: Callable[[], Awaitable[None]]
) -> None:
    big = seeded_bytes(4 * MIB, 1)
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


async def _send_eof_after_half_written_frame(
    tmp: Path, reader_starts: Callable[[], Awaitable[None]]
) -> None:
    big = seeded_bytes(4 * MIB, 3)
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


# ------------------------------------------------------------------- closing and fd numbers


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


# ---------------------------------------------------------------- endpoints, fds, listeners


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


# ----------------------------------------------------------- a channel that cannot be built

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


# ================================================== send_fds and cancellation (review)


@pytest.mark.asyncio
async def test_send_fds_reports_a_cancellation_only_if_nothing_went_out(short_tmp: Path) -> None:
    """send_fds in a scope already cancelled: either the message (with its fd) went out
    and the call returns normally, or nothing went out and the cancellation is
    delivered; never both, as for send().

    Before the fix: the message went out and a checkpoint after it delivered the
    cancellation, so the caller was told it was not sent."""
    async with pair(str(short_tmp / "s.sock")) as (server, client):
        outcomes = []
        for i in range(2 * YIELD_EVERY):
            r, w = os.pipe()
            try:
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await client.send_fds(b"m%d" % i, [w])
                went_out = not scope.cancelled_caught
                if went_out:
                    with anyio.fail_after(TIMEOUT):
                        data, fds = await server.receive_fds()
                    assert data == b"m%d" % i
                    for fd in fds:
                        os.close(fd)
                outcomes.append(went_out)
            finally:
                os.close(r)
                os.close(w)
        with pytest.raises(WouldBlock):
            server.receive_nowait()  # nothing went out that the sender was told had not
        assert any(outcomes), "no send_fds in a cancelled scope went out"
