"""The duplex shared-memory channel (aioipc.shm.ShmDuplex / ShmDuplexListener): its
handshake record byte by byte, many clients at once, real client and server processes
(one of them SIGKILLed), hostile connection requests, timeouts, cancellation, and that
no file is left in /dev/shm whatever happens. The Channel contract itself is checked by
the conformance matrix (tests/test_conformance.py, kind "shm-duplex")."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
from anyio import BrokenResourceError, EndOfStream
from hypothesis import given
from hypothesis import strategies as st

import aioipc
from aioipc import IPCAttribute
from aioipc._core import shm_duplex
from aioipc._core.shm_duplex import KIND_REQUEST, KIND_WELCOME, Hello, pair_names
from aioipc.shm import ShmDuplex, ShmDuplexListener, ShmReceiver, ShmSender

from ._procs import CHILD_LIMIT, child, read_line

LIMIT = 20  # seconds: every wait in these tests is bounded by it


def pair_files(name: str) -> list[str]:
    """Every /dev/shm entry under listener ``name`` but its accept ring's own: the
    files of its clients' pairs."""
    prefix = name[1:] + "."
    return sorted(
        e
        for e in os.listdir("/dev/shm")
        if e.startswith(prefix) and not e.startswith(prefix + "bell-")
    )


@pytest.fixture
def name(new_ring: Callable[[], str]) -> Iterator[str]:
    """A fresh listener name; afterwards no pair file may be left under it (the
    new_ring fixture checks the accept ring's own files)."""
    n = new_ring()
    yield n
    assert pair_files(n) == [], "pair files left behind"


@contextlib.asynccontextmanager
async def connected(
    listener: ShmDuplexListener, capacity: int = 4096
) -> AsyncIterator[tuple[ShmDuplex, ShmDuplex]]:
    """(client, accepted server end), both closed afterwards."""
    accepted: list[ShmDuplex] = []

    async def accept() -> None:
        accepted.append(await listener.accept())

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept)
            client = await ShmDuplex.connect(listener.name, capacity=capacity)
    async with client, accepted[0] as server:
        yield client, server


def request(token: bytes, pid: int = 1234) -> bytes:
    return Hello(KIND_REQUEST, pid, token).encode()


# ---------------------------------------------------------------- the handshake record


def test_hello_round_trip() -> None:
    token = bytes(range(8))
    for kind in (KIND_REQUEST, KIND_WELCOME):
        data = Hello(kind, 4321, token).encode()
        assert len(data) == Hello.SIZE == 32
        assert Hello.decode(data, kind, "t") == Hello(kind, 4321, token)


def test_hello_refuses_every_corrupt_byte() -> None:
    """Each byte of a valid request, changed to each of a few values, is refused with
    ProtocolError unless it only changes the token or a pid still in range (fields
    whose every value is valid)."""
    good = request(bytes(range(8)), pid=77)
    for offset in range(len(good)):
        for value in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            if good[offset] == value:
                continue
            bad = good[:offset] + bytes([value]) + good[offset + 1 :]
            if 16 <= offset < 24:  # the token: any 8 bytes name a pair under the prefix
                assert Hello.decode(bad, KIND_REQUEST, "t").token == bad[16:24]
                continue
            if 8 <= offset < 12 and 0 < struct.unpack_from("<I", bad, 8)[0] < 1 << 22:
                assert Hello.decode(bad, KIND_REQUEST, "t").pid != 77
                continue
            with pytest.raises(aioipc.ProtocolError, match=r"^t: "):
                Hello.decode(bad, KIND_REQUEST, "t")


@given(
    data=st.one_of(
        st.binary(max_size=64),
        # Mostly-valid records with a few bytes changed: they reach the later checks.
        st.tuples(st.integers(0, 31), st.binary(min_size=1, max_size=4)).map(
            lambda t: (
                (request(bytes(8)) + bytes(4))[: t[0]]
                + t[1]
                + request(bytes(8))[t[0] + len(t[1]) :]
            )
        ),
    ),
    kind=st.sampled_from([KIND_REQUEST, KIND_WELCOME]),
)
def test_hello_decodes_only_what_it_encodes(data: bytes, kind: int) -> None:
    """Any bytes: decode() raises ProtocolError, or returns the one record whose
    encoding is exactly those bytes (nothing is silently ignored)."""
    try:
        hello = Hello.decode(data, kind, "t")
    except aioipc.ProtocolError:
        return
    assert hello.kind == kind
    assert hello.encode() == data


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "32-byte record expected, got 0"),
        (b"x" * 31, "got 31"),
        (b"/dev/shm/some-other-ring\0\0\0\0\0\0\0\0", "bad magic"),
        (Hello(KIND_WELCOME, 1, bytes(8)).encode(), "record kind 2, expected 1"),
        (request(bytes(8)) + b"\0", "got 33"),
    ],
)
def test_hello_refuses_garbage(data: bytes, text: str) -> None:
    with pytest.raises(aioipc.ProtocolError, match=text):
        Hello.decode(data, KIND_REQUEST, "what")


def test_pair_names_stay_under_the_listener_name() -> None:
    c2s, s2c = pair_names("/jobs", bytes.fromhex("00ff10203040a0b0"))
    assert (c2s, s2c) == ("/jobs.00ff10203040a0b0.c2s", "/jobs.00ff10203040a0b0.s2c")
    longest = "/" + "n" * (255 - len(".bell-space") - len(".0123456789abcdef.c2s"))
    shm_duplex.check_listener_name(longest)
    with pytest.raises(ValueError, match="too long"):
        shm_duplex.check_listener_name(longest + "n")
    with pytest.raises(ValueError, match="too long"):
        ShmDuplexListener.create(longest + "n")


# ---------------------------------------------------------------- many clients


@pytest.mark.asyncio
async def test_many_clients_at_once(name: str) -> None:
    """Eight clients of one listener, all at once, each streaming 300 numbered messages
    and checking every reply; the server knows each client's pid from the kernel."""
    clients, count = 8, 300
    peers: list[object] = []

    async def echo(chan: ShmDuplex) -> None:
        peers.append(chan.extra(IPCAttribute.peer_pid))
        async for message in chan:
            await chan.send(b"echo " + message)

    async def client(i: int) -> None:
        async with await ShmDuplex.connect(name, capacity=4096) as chan:
            assert chan.extra(IPCAttribute.peer_pid) == os.getpid()
            assert chan.extra(IPCAttribute.mechanism) == "shm-duplex"

            async def send_all() -> None:
                for n in range(count):
                    await chan.send(b"%d:%d" % (i, n))
                await chan.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)
                for n in range(count):
                    assert await chan.receive() == b"echo %d:%d" % (i, n)
            with pytest.raises(EndOfStream):
                await chan.receive()

    with anyio.fail_after(LIMIT):
        async with ShmDuplexListener.create(name) as listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, echo)
            async with anyio.create_task_group() as tg:
                for i in range(clients):
                    tg.start_soon(client, i)
            server.cancel_scope.cancel()
    assert peers == [os.getpid()] * clients


@pytest.mark.asyncio
async def test_serve_survives_a_failing_handler(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises ends its own connection only (logged with the peer's
    pid); the next connection is served."""

    async def handler(chan: ShmDuplex) -> None:
        message = await chan.receive()
        if message == b"boom":
            raise RuntimeError("handler failed")
        await chan.send(message)

    with anyio.fail_after(LIMIT):
        async with ShmDuplexListener.create(name) as listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            async with await ShmDuplex.connect(name, capacity=4096) as chan:
                await chan.send(b"boom")
                with pytest.raises(EndOfStream):
                    await chan.receive()
            async with await ShmDuplex.connect(name, capacity=4096) as chan:
                await chan.send(b"fine")
                assert await chan.receive() == b"fine"
            tg.cancel_scope.cancel()
    failures = [r for r in caplog.records if "the handler raised" in r.getMessage()]
    assert len(failures) == 1
    assert f"peer pid {os.getpid()}" in failures[0].getMessage()


@pytest.mark.asyncio
async def test_send_eof_is_a_half_close(name: str) -> None:
    async with ShmDuplexListener.create(name) as listener, connected(listener) as (c, s):
        await c.send(b"last")
        await c.send_eof()
        with anyio.fail_after(LIMIT):
            assert await s.receive() == b"last"
            with pytest.raises(EndOfStream):
                await s.receive()
            await s.send(b"still")
            assert await c.receive() == b"still"
        with pytest.raises(anyio.ClosedResourceError):
            await c.send(b"after eof")
        await s.aclose()
        with anyio.fail_after(LIMIT), pytest.raises(EndOfStream):
            await c.receive()


@pytest.mark.asyncio
async def test_zero_copy_passthrough(name: str) -> None:
    async with ShmDuplexListener.create(name) as listener, connected(listener) as (c, s):
        with anyio.fail_after(LIMIT):
            async with c.reserve(5) as view:
                view[:] = b"12345"
            async with s.receive_view() as got:
                assert bytes(got) == b"12345"
            await s.send_many([b"a", b"b"])
            assert await c.receive_many() == [b"a", b"b"]


# ---------------------------------------------------------------- real processes

CLIENT = """
    import sys
    import anyio
    from aioipc.shm import ShmDuplex

    async def main():
        async with await ShmDuplex.connect(sys.argv[1], capacity=4096) as chan:
            for i in range(int(sys.argv[2])):
                await chan.send(b"%d" % i)
                assert await chan.receive() == b"echo %d" % i
            print("done", flush=True)
            if sys.argv[3] == "hang":
                await anyio.sleep_forever()  # until SIGKILL

    anyio.run(main)
"""

SERVER = """
    import sys
    import anyio
    from aioipc.shm import ShmDuplexListener

    async def main():
        async with ShmDuplexListener.create(sys.argv[1]) as listener:
            print("listening", flush=True)
            chan = await listener.accept()
            await chan.send(b"welcome")
            print("accepted", flush=True)
            await anyio.sleep_forever()  # until SIGKILL

    anyio.run(main)
"""


async def fill(chan: ShmDuplex) -> None:
    """Send until a send raises (the 4 KiB ring fills within 200 sends, and a send that
    waits for room looks at the peer)."""
    for _ in range(10_000):
        await chan.send(b"into the void")


async def line(proc: subprocess.Popen[str]) -> str:
    return await anyio.to_thread.run_sync(read_line, proc)


@pytest.mark.asyncio
async def test_a_client_process(name: str) -> None:
    async with ShmDuplexListener.create(name) as listener:
        with child(CLIENT, name, "500", "exit") as proc:
            with anyio.fail_after(LIMIT):
                async with await listener.accept() as chan:
                    assert chan.extra(IPCAttribute.peer_pid) == proc.pid
                    assert chan.extra(IPCAttribute.peer_uid) == os.getuid()
                    for i in range(500):
                        assert await chan.receive() == b"%d" % i
                        await chan.send(b"echo %d" % i)
                    assert await line(proc) == "done"
                    with pytest.raises(EndOfStream):
                        await chan.receive()
            assert proc.wait(CHILD_LIMIT) == 0


@pytest.mark.asyncio
async def test_several_client_processes_at_once(name: str) -> None:
    """Four client processes connect at the same time (their requests contend for the
    accept ring's send lock) and each checks 300 echoed messages."""

    async def echo(chan: ShmDuplex) -> None:
        async for message in chan:
            await chan.send(b"echo " + message)

    async with ShmDuplexListener.create(name) as listener, anyio.create_task_group() as server:
        server.start_soon(listener.serve, echo)
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(child(CLIENT, name, "300", "exit")) for _ in range(4)]
            for proc in procs:
                assert await line(proc) == "done"
            for proc in procs:
                assert await anyio.to_thread.run_sync(proc.wait, CHILD_LIMIT) == 0
        server.cancel_scope.cancel()
    assert listener.refused == 0


@pytest.mark.asyncio
async def test_a_sigkilled_client(name: str) -> None:
    """The server's receive, waiting when the client is SIGKILLed, raises
    BrokenResourceError; so does its next send."""
    async with ShmDuplexListener.create(name) as listener:
        with child(CLIENT, name, "3", "hang") as proc:
            with anyio.fail_after(LIMIT):
                async with await listener.accept() as chan:
                    for i in range(3):
                        assert await chan.receive() == b"%d" % i
                        await chan.send(b"echo %d" % i)
                    assert await line(proc) == "done"
                    async with anyio.create_task_group() as tg:

                        async def kill() -> None:
                            await anyio.wait_all_tasks_blocked()
                            proc.send_signal(signal.SIGKILL)

                        tg.start_soon(kill)
                        with pytest.raises(BrokenResourceError, match="died"):
                            await chan.receive()
                    with pytest.raises(BrokenResourceError):
                        await fill(chan)
            assert proc.wait(CHILD_LIMIT) == -signal.SIGKILL


@pytest.mark.asyncio
async def test_a_sigkilled_server(name: str) -> None:
    """A client whose listener process is SIGKILLed after accepting: its receive raises
    BrokenResourceError. The dead listener's accept ring is stale: a connect to it is
    refused at once, and a new listener takes the name over."""
    with child(SERVER, name) as proc:
        assert await line(proc) == "listening"
        with anyio.fail_after(LIMIT):
            async with await ShmDuplex.connect(name) as chan:
                assert chan.extra(IPCAttribute.peer_pid) == proc.pid
                assert await chan.receive() == b"welcome"
                assert await line(proc) == "accepted"
                proc.send_signal(signal.SIGKILL)
                with pytest.raises(BrokenResourceError, match="died"):
                    await chan.receive()
        assert proc.wait(CHILD_LIMIT) == -signal.SIGKILL
    assert aioipc.shm.is_stale(name)
    with pytest.raises(aioipc.IPCConnectionRefusedError, match="the listener is gone"):
        await ShmDuplex.connect(name)
    assert pair_files(name) == []
    async with ShmDuplexListener.create(name) as listener, connected(listener) as (c, s):
        await c.send(b"new")
        with anyio.fail_after(LIMIT):
            assert await s.receive() == b"new"


IDLE_SERVER = """
    import sys
    from aioipc.shm import ShmDuplexListener

    listener = ShmDuplexListener.create(sys.argv[1])
    print("listening", flush=True)
    sys.stdin.readline()  # never accepts; until SIGKILL
"""


@pytest.mark.asyncio
async def test_a_listener_killed_before_it_accepted(name: str) -> None:
    """A client waiting for a listener that is SIGKILLed before it accepts: connect
    raises IPCConnectionRefusedError (within 0.25 s of the death, far before its
    timeout) and removes its pair; the next listener takes the stale name over."""
    with child(IDLE_SERVER, name) as proc:
        assert await line(proc) == "listening"
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:

                async def kill() -> None:
                    await anyio.wait_all_tasks_blocked()  # connect waits for its welcome
                    assert len(pair_files(name)) == 6
                    proc.send_signal(signal.SIGKILL)

                tg.start_soon(kill)
                with pytest.raises(aioipc.IPCConnectionRefusedError, match="died"):
                    await ShmDuplex.connect(name, accept_timeout=LIMIT * 10)
        assert proc.wait(CHILD_LIMIT) == -signal.SIGKILL
    assert pair_files(name) == []
    assert aioipc.shm.is_stale(name)
    ShmDuplexListener.create(name).close()


DEAD_CLIENT = """
    import sys
    from aioipc.shm import ShmReceiver, ShmSender
    from aioipc._core.shm_duplex import pair_names
    c2s, s2c = pair_names(sys.argv[1], bytes.fromhex(sys.argv[2]))
    tx = ShmSender.create(c2s, 4096, unlink_on_close=False)
    rx = ShmReceiver.create(s2c, 4096, unlink_on_close=False)
    print("made", flush=True)
    sys.stdin.readline()  # until SIGKILL
"""


@pytest.mark.asyncio
async def test_a_client_dead_before_its_request_was_taken(name: str) -> None:
    """A client SIGKILLed after it made its pair and sent its request: accept() finds it
    dead, refuses the request, removes the pair's files and goes on to the next client."""
    token = "0011223344556677"
    async with ShmDuplexListener.create(name) as listener:
        with child(DEAD_CLIENT, name, token) as proc:
            assert await line(proc) == "made"
            door = ShmSender.open(name)
            with contextlib.closing(door):
                await door.send(request(bytes.fromhex(token), pid=proc.pid))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(CHILD_LIMIT) == -signal.SIGKILL
        assert len(pair_files(name)) == 6
        async with connected(listener) as (c, s):
            assert listener.refused == 1
            assert pair_files(name) == []
            await c.send(b"next")
            with anyio.fail_after(LIMIT):
                assert await s.receive() == b"next"


@pytest.mark.asyncio
async def test_stale_pairs_are_swept_when_a_listener_starts_and_closes(name: str) -> None:
    """A client that died before it even sent its request leaves a pair nobody knows
    of: the next listener under that name removes it when it starts, and a listener
    removes such pairs when it closes."""
    for when in ("start", "close"):
        listener = None if when == "start" else ShmDuplexListener.create(name)
        with child(DEAD_CLIENT, name, "8899aabbccddeeff") as proc:
            assert await line(proc) == "made"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(CHILD_LIMIT) == -signal.SIGKILL
        assert len(pair_files(name)) == 6
        if listener is None:
            listener = ShmDuplexListener.create(name)
            assert pair_files(name) == []
        await listener.aclose()
        assert pair_files(name) == []


# ---------------------------------------------------------------- hostile requests


@pytest.mark.asyncio
async def test_hostile_requests_are_refused_one_by_one(
    name: str, new_ring: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, a record naming a path, a request for a pair that does not exist and a
    request naming a live client's pair (a replay) are each refused and logged; none
    ends the listener or touches a ring outside its prefix, and the next real client
    is accepted."""
    decoy = new_ring()  # a ring outside the listener's prefix, with no sender yet
    async with ShmDuplexListener.create(name) as listener:
        with contextlib.closing(ShmReceiver.create(decoy, 4096)) as decoy_rx:
            door = ShmSender.open(name)
            with contextlib.closing(door):
                await door.send(b"garbage")
                await door.send(b"")
                await door.send(decoy.encode().ljust(32, b"\0"))
                await door.send(request(bytes(8)))  # no such pair
            async with connected(listener) as (c, s):
                # Replay the live client's request: its pair is gone (or taken).
                token = bytes.fromhex(s._rx.name.split(".")[-2])
                with contextlib.closing(ShmSender.open(name)) as door:
                    await door.send(request(token))
                async with connected(listener) as (c2, s2):
                    await c2.send(b"fine")
                    with anyio.fail_after(LIMIT):
                        assert await s2.receive() == b"fine"
                await c.send(b"still fine")
                with anyio.fail_after(LIMIT):
                    assert await s.receive() == b"still fine"
            assert listener.refused == 5
            # Nothing ever attached to the decoy as its sender (one that left would have
            # ended its stream): still empty and open.
            with pytest.raises(anyio.WouldBlock):
                decoy_rx.receive_nowait()
            with contextlib.closing(ShmSender.open(decoy)) as decoy_tx:
                decoy_tx.send_nowait(b"untouched")
                assert decoy_rx.receive_nowait() == b"untouched"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 5, refusals
    assert all(name in text for text in refusals), refusals


@pytest.mark.asyncio
async def test_connecting_to_a_plain_ring_touches_it_not(new_ring: Callable[[], str]) -> None:
    plain = new_ring()
    with contextlib.closing(ShmReceiver.create(plain, 4096)) as rx:
        with pytest.raises(aioipc.ProtocolError, match="one-sender ring, not a duplex"):
            await ShmDuplex.connect(plain)
        with pytest.raises(anyio.WouldBlock):  # not EndOfStream: nobody attached and left
            rx.receive_nowait()
        with contextlib.closing(ShmSender.open(plain)) as tx:  # nobody attached before
            tx.send_nowait(b"ok")
            assert rx.receive_nowait() == b"ok"
    assert pair_files(plain) == []


@pytest.mark.asyncio
async def test_connect_with_no_listener(name: str) -> None:
    with pytest.raises(aioipc.IPCNotFoundError, match="nobody listens by that name"):
        await aioipc.connect(f"shm+duplex://{name[1:]}")


# ---------------------------------------------------------------- time-outs, cancellation


@pytest.mark.asyncio
async def test_connect_times_out_when_nobody_accepts(name: str) -> None:
    """connect() gives up after accept_timeout, leaving no file; the stale request it
    left in the accept ring is refused by the next accept(), which then takes the next
    client."""
    async with ShmDuplexListener.create(name) as listener:
        with anyio.fail_after(LIMIT):
            with pytest.raises(TimeoutError, match=f"{name}: no listener accepted within 0.2 s"):
                await ShmDuplex.connect(name, accept_timeout=0.2)
        assert pair_files(name) == []
        async with connected(listener) as (c, s):
            assert listener.refused == 1
            await s.send(b"hello")
            with anyio.fail_after(LIMIT):
                assert await c.receive() == b"hello"


@pytest.mark.asyncio
async def test_a_closed_listener_refuses_a_waiting_client(name: str) -> None:
    listener = ShmDuplexListener.create(name)
    outcome: list[BaseException] = []

    async def connect() -> None:
        try:
            await ShmDuplex.connect(name, accept_timeout=LIMIT)
        except aioipc.IPCConnectionRefusedError as exc:
            outcome.append(exc)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(connect)
            await anyio.wait_all_tasks_blocked()
            await listener.aclose()
    assert len(outcome) == 1
    assert "closed before it accepted" in str(outcome[0])
    assert pair_files(name) == []


@pytest.mark.asyncio
async def test_cancelled_connect_leaves_nothing(name: str) -> None:
    async with ShmDuplexListener.create(name) as listener:
        with anyio.move_on_after(0.2) as scope:
            await ShmDuplex.connect(name)
        assert scope.cancelled_caught
        assert pair_files(name) == []
        async with connected(listener) as (c, s):  # the dead request is skipped
            assert listener.refused == 1
            await c.send(b"after")
            with anyio.fail_after(LIMIT):
                assert await s.receive() == b"after"


@pytest.mark.asyncio
async def test_cancelled_accept_took_no_request(name: str) -> None:
    """accept() cancelled while waiting takes nothing; a second accept() meanwhile is
    refused (BusyResourceError); a client arriving after the cancel is accepted."""
    async with ShmDuplexListener.create(name) as listener:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.accept)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await listener.accept()
                tg.cancel_scope.cancel()
        async with connected(listener) as (c, s):
            await c.send(b"ok")
            with anyio.fail_after(LIMIT):
                assert await s.receive() == b"ok"
            assert listener.refused == 0
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()


@pytest.mark.asyncio
async def test_accept_cancelled_at_every_step_loses_no_client(name: str) -> None:
    """Cancel accept() after 0, 1, 2 ... checkpoints while a client connects: the
    client is never lost; either that accept() returned its channel, or the next one
    does."""
    with anyio.fail_after(LIMIT):
        async with ShmDuplexListener.create(name) as listener:
            for steps in range(30):
                accepted: list[ShmDuplex] = []
                clients: list[ShmDuplex] = []

                async def accept(scope: anyio.CancelScope, into: list[ShmDuplex]) -> None:
                    with scope:
                        into.append(await listener.accept())

                async def connect(into: list[ShmDuplex]) -> None:
                    into.append(await ShmDuplex.connect(name, capacity=4096))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(connect, clients)
                    scope = anyio.CancelScope()
                    async with anyio.create_task_group() as accepting:
                        accepting.start_soon(accept, scope, accepted)
                        for _ in range(steps):
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()
                    if not accepted:
                        accepted.append(await listener.accept())
                async with clients[0] as c, accepted[0] as s:
                    await c.send(b"%d" % steps)
                    assert await s.receive() == b"%d" % steps
            assert listener.refused == 0


@pytest.mark.asyncio
async def test_connect_cancelled_at_every_step_leaves_nothing(name: str) -> None:
    """Cancel connect() after 0, 1, 2 ... checkpoints while a server accepts and
    echoes: each attempt either connects (and echoes) or leaves no file behind."""

    async def echo(chan: ShmDuplex) -> None:
        async for message in chan:
            await chan.send(message)

    connected_count = 0
    with anyio.fail_after(LIMIT):
        async with ShmDuplexListener.create(name) as listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, echo)
            for steps in range(30):
                chan = None
                scope = anyio.CancelScope()

                async def attempt(scope: anyio.CancelScope) -> None:
                    nonlocal chan
                    with scope:
                        chan = await ShmDuplex.connect(name, capacity=4096)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(attempt, scope)
                    for _ in range(steps):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
                if chan is not None:
                    connected_count += 1
                    async with chan:
                        await chan.send(b"%d" % steps)
                        assert await chan.receive() == b"%d" % steps
                assert pair_files(name) == [], steps
            server.cancel_scope.cancel()
    assert connected_count > 0


# ---------------------------------------------------------------- URLs


@pytest.mark.asyncio
async def test_url_round_trip(name: str) -> None:
    url = f"shm+duplex://{name[1:]}?capacity=8192&accept_timeout=5&spin=0"
    address = aioipc.url.parse_url(url)
    assert isinstance(address, aioipc.url.ShmDuplexAddress)
    assert (address.path, address.capacity, address.accept_timeout) == (name, 8192, 5.0)
    async with await aioipc.listen(url, expect="listener", codec="json") as listener:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:

                async def serve_one() -> None:
                    async with await listener.accept() as chan:
                        await chan.send({"got": await chan.receive()})

                tg.start_soon(serve_one)
                async with await aioipc.connect(url, expect="two-way", codec="json") as chan:
                    await chan.send([1, 2])
                    assert await chan.receive() == {"got": [1, 2]}
                    assert chan.extra(IPCAttribute.max_message_size) == 8192 // 2 - 8
