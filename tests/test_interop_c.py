"""Interoperability with C: aioipc's System V and POSIX objects are the kernel's own.

A C program using msgsnd/msgrcv, mq_send/mq_receive, semop or sem_open/sem_post/sem_wait
on the same key or name must see exactly what aioipc does: the same bytes (no framing),
types, priorities and semaphore values. The C peers are ``tests/c/sysv_peer.c`` and
``tests/c/posix_peer.c``, built with gcc once per module; each prints ``ready`` and then
answers one line per command (the protocol is at the top of each source). Nothing waits
by sleeping: every wait is for a peer's line or an aioipc call, under ``anyio.fail_after``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import anyio
import pytest

import aioipc
from aioipc import posix, sysv
from tests._peer import Peer, spawn

C_DIR = Path(__file__).parent / "c"
#: Upper bound for any single wait; nothing here should come near it.
TIMEOUT = 15
PROJ_IDS = [0, 1, 42, 127, 128, 255]
#: Message sizes up to the default msgmax (8192), around the page and power-of-two edges.
SIZES = [0, 1, 2, 255, 256, 4095, 4096, 4097, 8191, 8192]
#: SysV message types, including ones that need a C long (not an int).
TYPES = [1, 7, 2**31 + 5, 2**62]
ROUNDS = 200


# --------------------------------------------------------------------------- helpers


def binary(size: int, seed: int) -> bytes:
    """``size`` random bytes with NULs throughout, the first and the last included."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[::61] = bytes(len(data[::61]))
    if data:
        data[-1] = 0
    return bytes(data)


def hx(data: bytes) -> str:
    """Bytes as the peers' hex ("-" for none)."""
    return data.hex() or "-"


def unhex(text: str) -> bytes:
    return b"" if text == "-" else bytes.fromhex(text)


def fresh_key(*, negative: bool = False) -> int:
    """A random System V key (as a signed ``key_t``) that no object uses now."""
    used = set()
    for kind in ("msg", "sem", "shm"):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            used.add(int(line.split()[0]))
    while True:
        key = random.randint(0x1000_0000, 0x7FFF_FFFE)  # never -1 once negative
        key = key - 2**31 if negative else key
        if key not in used and key & 0xFFFF_FFFF not in used:
            return key


def fresh_name(kind: str) -> str:
    return f"/aioipc-c-{kind}-{os.getpid()}-{random.getrandbits(32):08x}"


@dataclass(frozen=True)
class CPeers:
    sysv: Path
    posix: Path


@pytest.fixture(scope="module")
def c_peers(tmp_path_factory: pytest.TempPathFactory) -> CPeers:
    """The C peers, compiled with gcc into a temporary directory."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the C peers in tests/c/")
    out = tmp_path_factory.mktemp("c-peers")

    def build(name: str, *libs: str) -> Path:
        exe = out / name
        src = C_DIR / f"{name}.c"
        cmd = [gcc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(src)]
        done = subprocess.run([*cmd, *libs], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"building {src.name} failed:\n{done.stderr}")
        return exe

    return CPeers(sysv=build("sysv_peer"), posix=build("posix_peer", "-lrt", "-pthread"))


class CPeer:
    """A running C peer: ``ask`` sends one command and returns the words of its answer."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self.pid = peer.pid
        self.finished = False

    async def tell(self, *words: object) -> None:
        await self._peer.tell(" ".join(map(str, words)))

    async def answer(self) -> list[str]:
        return (await self._peer.line(TIMEOUT)).split(" ")

    async def ask(self, *words: object) -> list[str]:
        await self.tell(*words)
        return await self.answer()

    async def finish(self) -> None:
        """Close its stdin; it closes what it holds open and must exit with status 0."""
        self.finished = True
        await self._peer.finish(0, TIMEOUT)


@contextlib.asynccontextmanager
async def run_c(exe: Path) -> AsyncIterator[CPeer]:
    """Start a C peer and wait for its ``ready``; it must exit cleanly at the end."""
    async with spawn([str(exe)]) as peer:
        await peer.expect("ready", TIMEOUT)
        c = CPeer(peer)
        yield c
        if not c.finished:
            await c.finish()


def c_message(words: list[str]) -> tuple[int, bytes]:
    """``msg TYPE-OR-PRIORITY LEN HEX`` from a peer as (type or priority, data)."""
    assert words[0] == "msg", words
    data = unhex(words[3])
    assert len(data) == int(words[2])
    return int(words[1]), data


class Cleanup:
    """Removes every object it was told about when the ``async with`` block ends, however
    it ends: made by aioipc or by a C peer, still there or removed already."""

    def __init__(self) -> None:
        self._removers: list[Callable[[], Awaitable[None]]] = []

    def sysv_queue(self, key: int) -> int:
        async def remove() -> None:
            with contextlib.suppress(aioipc.IPCNotFoundError):
                async with aclosing(sysv.MessageQueue.open(key)) as q:
                    q.remove()

        self._removers.append(remove)
        return key

    def sysv_sems(self, key: int) -> int:
        async def remove() -> None:
            with contextlib.suppress(aioipc.IPCNotFoundError):
                async with aclosing(sysv.SemaphoreSet.open(key)) as s:
                    s.remove()

        self._removers.append(remove)
        return key

    def posix_mq(self, name: str) -> str:
        async def remove() -> None:
            with contextlib.suppress(aioipc.IPCNotFoundError):
                posix.unlink_message_queue(name)

        self._removers.append(remove)
        return name

    def posix_sem(self, name: str) -> str:
        async def remove() -> None:
            with contextlib.suppress(aioipc.IPCNotFoundError):
                posix.unlink_semaphore(name)

        self._removers.append(remove)
        return name

    async def __aenter__(self) -> Cleanup:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            for remove in reversed(self._removers):
                await remove()


async def ipcs(*args: str) -> str:
    result = await anyio.run_process(["ipcs", *args], env={**os.environ, "LC_ALL": "C"})
    return result.stdout.decode()


def ipcs_row(text: str, ipc_id: int) -> dict[str, str]:
    """The row of ``ipcs -q`` or ``ipcs -s`` for ``ipc_id``, keyed by the header's words."""
    header: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["key"]:
            header = words
        elif header and len(words) == len(header) and words[1] == str(ipc_id):
            return dict(zip(header, words, strict=True))
    pytest.fail(f"id {ipc_id} is not in the ipcs output:\n{text}")


# --------------------------------------------------------------------------- 1. ftok


@pytest.mark.asyncio
async def test_ftok_matches_c(c_peers: CPeers, tmp_path: Path) -> None:
    afile = tmp_path / "keyfile"
    afile.write_bytes(b"")
    adir = tmp_path / "keydir"
    adir.mkdir()
    link = tmp_path / "keylink"
    link.symlink_to(afile)  # both follow it
    paths = [afile, adir, link, Path("/"), Path("/dev/null")]
    async with run_c(c_peers.sysv) as c:
        for path in paths:
            for proj in PROJ_IDS:
                word, signed, unsigned = await c.ask("ftok", path, proj)
                assert word == "key"
                key = aioipc.ftok(path, proj)
                assert key == int(signed), f"ftok({path.name}, {proj})"
                assert key & 0xFFFF_FFFF == int(unsigned, 16), f"ftok({path.name}, {proj})"
                assert (key < 0) == (proj >= 128)


# --------------------------------------------------------------------------- 2. SysV queues


@pytest.mark.asyncio
async def test_sysv_mq_aioipc_sends_c_receives_by_selector(c_peers: CPeers) -> None:
    big = binary(8192, 2)
    mid = binary(4000, 1)
    async with (
        Cleanup() as cleanup,
        aclosing(sysv.MessageQueue.create(cleanup.sysv_queue(fresh_key()))) as q,
        run_c(c_peers.sysv) as c,
    ):
        assert await c.ask("msgget", q.key) == ["id", str(q.id)]
        # 12202 bytes in all: below the default capacity (msgmnb = 16384).
        for mtype, data in [
            (1, b"first"),
            (2, mid),
            (3, b""),
            (2, b"\x00"),
            (2**40, big),
            (5, b"a\x00b\x00"),
        ]:
            await q.send(data, type=mtype)
        assert q.current_messages == 6

        async def c_receive(selector: int, flags: str = "-", size: int = 8192) -> tuple[int, bytes]:
            return c_message(await c.ask("msgrcv", q.id, selector, size, flags))

        assert await c_receive(2) == (2, mid)
        assert await c_receive(2, "except") == (1, b"first")
        assert await c_receive(-3) == (2, b"\x00")  # the lowest type <= 3
        assert await c_receive(2**40) == (2**40, big)
        assert await c_receive(0) == (3, b"")
        assert await c_receive(0) == (5, b"a\x00b\x00")
        assert await c.ask("msgrcv", q.id, 0, 8192, "nowait") == ["nomsg"]

        await q.send(binary(100, 3), type=9)
        assert await c_receive(9, "noerror", 10) == (9, binary(100, 3)[:10])
        assert q.current_messages == 0
        assert q.last_receive_pid == c.pid

        # C blocks in msgrcv until aioipc sends the type it waits for.
        await c.tell("msgrcv", q.id, 8, 8192, "-")
        await q.send(b"not this one", type=7)
        await q.send(b"\x00eight\x00", type=8)
        assert c_message(await c.answer()) == (8, b"\x00eight\x00")
        assert await c_receive(0) == (7, b"not this one")


@pytest.mark.asyncio
async def test_sysv_mq_round_trip_sizes_and_types(c_peers: CPeers) -> None:
    async with (
        Cleanup() as cleanup,
        aclosing(sysv.MessageQueue.create(cleanup.sysv_queue(fresh_key()))) as q,
        run_c(c_peers.sysv) as c,
    ):
        assert q.max_message_size >= max(SIZES)
        assert await c.ask("msgget", q.key) == ["id", str(q.id)]
        for i, size in enumerate(SIZES):
            mtype = TYPES[i % len(TYPES)]
            # aioipc -> C
            data = binary(size, i)
            await q.send(data, type=mtype)
            got = c_message(await c.ask("msgrcv", q.id, mtype, 8192, "nowait"))
            assert got == (mtype, data), f"{size} bytes of type {mtype}, aioipc -> C"
            # C -> aioipc
            data = binary(size, 100 + i)
            assert await c.ask("msgsnd", q.id, mtype, hx(data)) == ["sent", str(size)]
            with anyio.fail_after(TIMEOUT):
                got = await q.receive_message(mtype)
            assert got == (mtype, data), f"{size} bytes of type {mtype}, C -> aioipc"
        assert q.current_messages == 0


@pytest.mark.asyncio
async def test_sysv_mq_c_creates_c_sends_aioipc_receives_by_selector(c_peers: CPeers) -> None:
    big = binary(8192, 4)
    mid = binary(3000, 3)
    async with Cleanup() as cleanup, run_c(c_peers.sysv) as c:
        key = cleanup.sysv_queue(fresh_key(negative=True))
        word, qid = await c.ask("msgcreate", key, "600")
        assert word == "id"
        async with aclosing(sysv.MessageQueue.open(key)) as q:
            assert (q.id, q.key, q.mode) == (int(qid), key, 0o600)
            for mtype, data in [(4, b"four"), (1, mid), (9, b""), (1, b"\x00\x00"), (3, big)]:
                assert await c.ask("msgsnd", qid, mtype, hx(data)) == ["sent", str(len(data))]
            assert q.last_send_pid == c.pid

            with anyio.fail_after(TIMEOUT):
                assert await q.receive_message(1) == (1, mid)
                assert await q.receive_message(1, except_type=True) == (4, b"four")
                assert await q.receive_message(-5) == (1, b"\x00\x00")
                assert await q.receive_message(-5) == (3, big)
                assert await q.receive_message() == (9, b"")
            with pytest.raises(anyio.WouldBlock):
                q.receive_message_nowait()

            # A C message longer than max_size stays queued, unless truncated.
            data = binary(100, 5)
            assert await c.ask("msgsnd", qid, 2, hx(data)) == ["sent", "100"]
            with pytest.raises(aioipc.MessageTooLargeError):
                q.receive_message_nowait(2, max_size=99)
            assert q.receive_message_nowait(2, max_size=100) == (2, data)
            assert await c.ask("msgsnd", qid, 2, hx(data)) == ["sent", "100"]
            assert q.receive_message_nowait(2, max_size=10, truncate=True) == (2, data[:10])
            assert q.current_messages == 0

            # A receive waiting for type 6 wakes for C's type-6 message, not its type 5.
            got: list[tuple[int, bytes]] = []

            async def receive_6() -> None:
                got.append(await q.receive_message(6))

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_6)
                    assert await c.ask("msgsnd", qid, 5, hx(b"no")) == ["sent", "2"]
                    assert await c.ask("msgsnd", qid, 6, hx(b"yes")) == ["sent", "3"]
            assert got == [(6, b"yes")]
            assert q.receive_message_nowait() == (5, b"no")


# --------------------------------------------------------------------------- 3. POSIX queues


@pytest.mark.asyncio
async def test_posix_mq_created_by_aioipc_opened_by_c(c_peers: CPeers) -> None:
    top = posix.PRIORITY_MAX
    big = binary(1024, 5)
    async with (
        Cleanup() as cleanup,
        aclosing(
            posix.MessageQueue.create(
                cleanup.posix_mq(fresh_name("mq")), max_messages=8, max_message_size=1024
            )
        ) as q,
        run_c(c_peers.posix) as c,
    ):
        assert await c.ask("mqopen", q.name) == ["attr", "8", "1024", "0"]

        # aioipc -> C: C takes them by priority, in order within one priority.
        for data, priority in [(b"low", 0), (big, 7), (b"", 7), (b"top\x00", top), (b"\x00", 1)]:
            await q.send(data, priority=priority)
        assert await c.ask("mqattr") == ["attr", "8", "1024", "5"]
        for priority, data in [(top, b"top\x00"), (7, big), (7, b""), (1, b"\x00"), (0, b"low")]:
            assert c_message(await c.ask("mqreceive")) == (priority, data)
        assert q.current_messages == 0

        # C -> aioipc.
        for data, priority in [(b"a", 3), (big, top), (b"", 0), (b"b\x00", 3)]:
            assert await c.ask("mqsend", priority, hx(data)) == ["sent", str(len(data))]
        with anyio.fail_after(TIMEOUT):
            for data, priority in [(big, top), (b"a", 3), (b"b\x00", 3), (b"", 0)]:
                assert await q.receive_message() == (data, priority)

        # A receive waiting on the empty queue wakes for C's message.
        got: list[tuple[bytes, int]] = []

        async def receive() -> None:
            got.append(await q.receive_message())

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                assert await c.ask("mqsend", 12, hx(b"late")) == ["sent", "4"]
        assert got == [(b"late", 12)]

        # C blocks in mq_receive (aioipc's non-blocking mode is its own descriptor's).
        await c.tell("mqreceive")
        await q.send(b"\x00wake\x00", priority=4)
        assert c_message(await c.answer()) == (4, b"\x00wake\x00")


@pytest.mark.asyncio
async def test_posix_mq_created_by_c_opened_by_aioipc(c_peers: CPeers) -> None:
    a100 = binary(100, 6)
    d50 = binary(50, 7)
    async with Cleanup() as cleanup, run_c(c_peers.posix) as c:
        name = cleanup.posix_mq(fresh_name("mq"))
        assert await c.ask("mqcreate", name, 4, 100, "640") == ["attr", "4", "100", "0"]
        async with aclosing(posix.MessageQueue.open(name)) as q:
            assert (q.max_messages, q.max_message_size) == (4, 100)
            assert (q.mode, q.uid) == (0o640, os.geteuid())

            # C -> aioipc.
            for data, priority in [(a100, 1), (b"", 2)]:
                assert await c.ask("mqsend", priority, hx(data)) == ["sent", str(len(data))]
            assert q.current_messages == 2
            with anyio.fail_after(TIMEOUT):
                assert await q.receive_message() == (b"", 2)
                assert await q.receive_message() == (a100, 1)

            # aioipc fills the queue C made; the shape is C's.
            for data, priority in [(a100, 5), (b"", 0), (b"\x00", 9), (d50, 5)]:
                q.send_nowait(data, priority=priority)
            with pytest.raises(anyio.WouldBlock):
                q.send_nowait(b"fifth")
            with pytest.raises(aioipc.MessageTooLargeError):
                q.send_nowait(binary(101, 8))
            assert await c.ask("mqattr") == ["attr", "4", "100", "4"]

            # A send waiting on the full queue goes through when C takes one.
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: q.send(b"fifth", priority=2))
                    assert c_message(await c.ask("mqreceive")) == (9, b"\x00")
            for priority, data in [(5, a100), (5, d50), (2, b"fifth"), (0, b"")]:
                assert c_message(await c.ask("mqreceive")) == (priority, data)
            assert await c.ask("mqclose") == ["closed"]


# --------------------------------------------------------------------------- 4. SysV semaphores


@pytest.mark.asyncio
async def test_sysv_sem_set_created_by_aioipc_ping_pong_with_c(c_peers: CPeers) -> None:
    async with (
        Cleanup() as cleanup,
        aclosing(sysv.SemaphoreSet.create(cleanup.sysv_sems(fresh_key()), 2, undo=False)) as s,
        run_c(c_peers.sysv) as c,
    ):
        sid = s.id
        assert await c.ask("semget", s.key) == ["id", str(sid), "nsems", "2"]

        # Each round: aioipc gives sem 0, C takes it and gives sem 1, aioipc takes that.
        await c.tell("pong", sid, ROUNDS)
        with anyio.fail_after(TIMEOUT):
            for _ in range(ROUNDS):
                await s.op([(0, 1)])
                await s.op([(1, -1)])
        assert await c.answer() == ["done", str(ROUNDS)]
        assert s.get_values() == [0, 0]
        assert s.last_pid(0) == c.pid
        assert s.last_pid(1) == os.getpid()

        # GETALL / SETALL agree both ways.
        s.set_values([3, sysv.SEMVMX])
        assert await c.ask("getall", sid) == ["vals", "3", str(sysv.SEMVMX)]
        assert await c.ask("setall", sid, 11, 0) == ["set"]
        assert s.get_values() == [11, 0]
        assert await c.ask("semop", sid, "0:-4,1:2", "-") == ["done"]
        assert s.get_values() == [7, 2]
        assert await c.ask("getall", sid) == ["vals", "7", "2"]

        # C waits for both at once; aioipc gives one, then the other.
        s.set_values([0, 0])
        await c.tell("semop", sid, "0:-1,1:-1", "-")
        await s.op([(0, 1)])
        assert s.get_values() == [1, 0]  # C never takes half
        await s.op([(1, 1)])
        assert await c.answer() == ["done"]
        assert s.get_values() == [0, 0]


@pytest.mark.asyncio
async def test_sysv_sem_set_created_by_c_used_by_aioipc(c_peers: CPeers) -> None:
    async with Cleanup() as cleanup, run_c(c_peers.sysv) as c:
        key = cleanup.sysv_sems(fresh_key(negative=True))
        word, sid = await c.ask("semcreate", key, 3, "640")
        assert word == "id"
        assert await c.ask("setall", sid, 2, 0, 5) == ["set"]
        async with aclosing(sysv.SemaphoreSet.open(key, undo=False)) as s:
            assert (s.id, s.key, s.size, s.mode) == (int(sid), key, 3, 0o640)
            assert s.get_values() == [2, 0, 5]

            # aioipc's atomic op waits until C gives what it lacks.
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(s.op, [(0, -2), (1, -1), (2, 1)])
                    assert await c.ask("semop", sid, "1:1", "-") == ["done"]
            assert s.get_values() == [0, 0, 6]
            assert await c.ask("getall", sid) == ["vals", "0", "0", "6"]
            assert s.last_pid(0) == os.getpid()

            with pytest.raises(anyio.WouldBlock):
                s.op_nowait([(0, -1)])
            assert await c.ask("semop", sid, "0:-1", "nowait") == ["busy"]


@pytest.mark.asyncio
async def test_lock_taken_by_c_with_sem_undo_is_released_when_c_exits(c_peers: CPeers) -> None:
    async with (
        Cleanup() as cleanup,
        aclosing(aioipc.Lock.create(cleanup.sysv_sems(fresh_key()))) as lock,
    ):
        async with run_c(c_peers.sysv) as c:
            word, sid, _, nsems = await c.ask("semget", lock.key)
            assert (word, int(sid), nsems) == ("id", lock.id, "1")
            assert await c.ask("semop", sid, "0:-1", "undo") == ["done"]
            assert lock.locked()
            with pytest.raises(anyio.WouldBlock):
                lock.acquire_nowait()
            # C exits holding it; the kernel undoes its take and aioipc's acquire wakes.
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(c.finish)
                    await lock.acquire()

        async with run_c(c_peers.sysv) as c:
            try:
                assert await c.ask("semop", sid, "0:-1", "undo,nowait") == ["busy"]
            finally:
                lock.release()
            assert await c.ask("semop", sid, "0:-1", "undo,nowait") == ["done"]
            assert lock.locked()
        assert not lock.locked()


# --------------------------------------------------------------------------- 5. POSIX semaphores


@pytest.mark.asyncio
async def test_posix_sem_created_by_aioipc_shared_with_c(c_peers: CPeers) -> None:
    async with (
        Cleanup() as cleanup,
        aclosing(posix.Semaphore.create(cleanup.posix_sem(fresh_name("sem")), 0)) as sem,
        run_c(c_peers.posix) as c,
    ):
        assert await c.ask("semopen", sem.name) == ["sem", "0"]

        # aioipc waits; C's sem_post wakes it.
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sem.acquire)
                assert await c.ask("sempost", 0) == ["posted"]
        assert sem.value == 0

        for _ in range(3):
            sem.release()
        assert await c.ask("semvalue", 0) == ["value", "3"]
        assert await c.ask("semtrywait", 0) == ["acquired"]
        assert sem.value == 2

        # C waits; aioipc's release wakes it.
        sem.acquire_nowait()
        sem.acquire_nowait()
        assert await c.ask("semtrywait", 0) == ["busy"]
        await c.tell("semwait", 0)
        sem.release()
        assert await c.answer() == ["acquired"]
        assert sem.value == 0


@pytest.mark.asyncio
async def test_posix_sem_created_by_c_ping_pong_with_aioipc(c_peers: CPeers) -> None:
    async with Cleanup() as cleanup, run_c(c_peers.posix) as c:
        ping_name = cleanup.posix_sem(fresh_name("sem"))
        pong_name = cleanup.posix_sem(fresh_name("sem"))
        assert await c.ask("semcreate", ping_name, 0, "600") == ["sem", "0"]
        assert await c.ask("semcreate", pong_name, 1, "640") == ["sem", "1"]
        async with AsyncExitStack() as stack:
            ping = await stack.enter_async_context(aclosing(posix.Semaphore.open(ping_name)))
            pong = await stack.enter_async_context(aclosing(posix.Semaphore.open(pong_name)))
            assert (ping.value, pong.value) == (0, 1)
            pong.acquire_nowait()

            # Each round: aioipc posts ping, C waits for it and posts pong, aioipc takes pong.
            await c.tell("pong", 0, 1, ROUNDS)
            with anyio.fail_after(TIMEOUT):
                for _ in range(ROUNDS):
                    ping.release()
                    await pong.acquire()
            assert await c.answer() == ["done", str(ROUNDS)]
            assert (ping.value, pong.value) == (0, 0)
            assert await c.ask("semvalue", 1) == ["value", "0"]


# --------------------------------------------------------------------------- 6. ipcs


@pytest.mark.asyncio
async def test_ipcs_shows_aioipc_objects_with_owner_and_mode() -> None:
    if shutil.which("ipcs") is None:
        pytest.skip("ipcs (util-linux) is not installed")
    owner = pwd.getpwuid(os.geteuid()).pw_name
    async with Cleanup() as cleanup, AsyncExitStack() as stack:
        q600 = await stack.enter_async_context(
            aclosing(sysv.MessageQueue.create(cleanup.sysv_queue(fresh_key())))
        )
        q640 = await stack.enter_async_context(
            aclosing(
                sysv.MessageQueue.create(
                    cleanup.sysv_queue(fresh_key(negative=True)), mode=0o640, max_bytes=1000
                )
            )
        )
        s600 = await stack.enter_async_context(
            aclosing(sysv.SemaphoreSet.create(cleanup.sysv_sems(fresh_key()), 2))
        )
        s640 = await stack.enter_async_context(
            aclosing(
                sysv.SemaphoreSet.create(
                    cleanup.sysv_sems(fresh_key(negative=True)), 3, values=[1, 2, 3], mode=0o640
                )
            )
        )

        queues = await ipcs("-q")
        for q, perms in [(q600, "600"), (q640, "640")]:
            row = ipcs_row(queues, q.id)
            assert row["key"] == f"{q.key & 0xFFFF_FFFF:#010x}"
            assert (row["owner"], row["perms"]) == (owner, perms)
            assert (row["used-bytes"], row["messages"]) == ("0", "0")
            fields = dict(re.findall(r"(\w+)=(\S+)", await ipcs("-q", "-i", str(q.id))))
            assert fields["mode"] == f"0{perms}"
            assert fields["uid"] == fields["cuid"] == str(os.geteuid())
            assert fields["qbytes"] == str(q.max_bytes)
        assert q640.max_bytes == 1000

        sems = await ipcs("-s")
        for s, perms in [(s600, "600"), (s640, "640")]:
            row = ipcs_row(sems, s.id)
            assert row["key"] == f"{s.key & 0xFFFF_FFFF:#010x}"
            assert (row["owner"], row["perms"], row["nsems"]) == (owner, perms, str(s.size))
            detail = await ipcs("-s", "-i", str(s.id))
            assert f"mode=0{perms}" in detail
            table = re.findall(r"^(\d+)\s+(\d+)\s+\d+\s+\d+\s+\d+\s*$", detail, re.MULTILINE)
            assert [int(v) for _, v in table] == s.get_values()
        assert s640.get_values() == [1, 2, 3]

        # A mode changed through aioipc (IPC_SET) is what ipcs shows.
        q600.mode = 0o620
        s600.mode = 0o660
        assert ipcs_row(await ipcs("-q"), q600.id)["perms"] == "620"
        assert ipcs_row(await ipcs("-s"), s600.id)["perms"] == "660"


# --------------------------------------------------------------------------- 7. no framing


@pytest.mark.asyncio
async def test_sysv_mq_messages_are_not_framed(c_peers: CPeers) -> None:
    async with (
        Cleanup() as cleanup,
        aclosing(sysv.MessageQueue.create(cleanup.sysv_queue(fresh_key()))) as q,
        run_c(c_peers.sysv) as c,
    ):
        # C's 5 bytes are aioipc's 5 bytes.
        assert await c.ask("msgsnd", q.id, 1, hx(b"hello")) == ["sent", "5"]
        with anyio.fail_after(TIMEOUT):
            assert await q.receive() == b"hello"

        # aioipc's 5 bytes are 5 bytes in the kernel, and fit C's 5-byte buffer exactly
        # (msgrcv without MSG_NOERROR fails with E2BIG on anything longer).
        await q.send(b"hello")
        assert (q.current_messages, q.current_bytes) == (1, 5)
        assert await c.ask("msgrcv", q.id, 0, 5, "nowait") == ["msg", "1", "5", hx(b"hello")]


@pytest.mark.asyncio
async def test_posix_mq_messages_are_not_framed(c_peers: CPeers) -> None:
    async with (
        Cleanup() as cleanup,
        aclosing(posix.MessageQueue.create(cleanup.posix_mq(fresh_name("mq")))) as q,
        run_c(c_peers.posix) as c,
    ):
        assert await c.ask("mqopen", q.name) == ["attr", "10", "8192", "0"]
        assert await c.ask("mqsend", 0, hx(b"hello")) == ["sent", "5"]
        with anyio.fail_after(TIMEOUT):
            assert await q.receive() == b"hello"

        await q.send(b"hello")
        if await anyio.Path("/dev/mqueue").is_mount():
            # The kernel's own account of the bytes queued.
            status = await anyio.Path(f"/dev/mqueue{q.name}").read_text()
            assert status.startswith("QSIZE:5 "), status
        assert await c.ask("mqreceive") == ["msg", "0", "5", hx(b"hello")]
