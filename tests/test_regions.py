"""Shared-memory regions on real kernel objects: ``aioipc.sysv.SharedMemory``,
``aioipc.posix.SharedMemory``, ``aioipc.MappedFile`` and ``aioipc.AnonymousMemory``.

What one process writes through ``.buf`` is checked in another one: a Python peer using
aioipc (``tests/peers/region_peer.py``), a C peer using plain shmget/shmat, shm_open and
mmap (``tests/c/shm_peer.c``, built with gcc once per module), a child made with
``os.fork``, or a peer that received a memfd over a unix socket. Each peer prints
``ready`` and answers one line per command; nothing waits by sleeping. Every segment,
/dev/shm entry and file a test makes is removed by the ``regions`` fixture, whatever
happens, with tools independent of the code under test (sysv_ipc, os.unlink).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import sysv_ipc

import aioipc
from aioipc import IPC_PRIVATE, AnonymousMemory, MappedFile, posix, sysv, unix
from aioipc.shm import ShmReceiver, ShmSender
from tests._assert import refused
from tests._peer import Peer, spawn
from tests._rings import existing, fifo_outcomes, planted_fifo

HERE = Path(__file__).parent
C_DIR = HERE / "c"
PEER = HERE / "peers" / "region_peer.py"
#: Upper bound for any single wait on a peer; nothing here should come near it.
TIMEOUT = 15
NOBODY = 65534
KINDS = ["sysv", "posix", "file", "anon"]
#: The kinds another process can open by key, name or path.
NAMED = ["sysv", "posix", "file"]

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid a child")


# --------------------------------------------------------------------------- helpers


def pattern(size: int, seed: int) -> bytes:
    """``size`` random bytes with NULs throughout, the first and the last included."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[::61] = bytes(len(data[::61]))
    if data:
        data[-1] = 0
    return bytes(data)


def hx(data: bytes) -> str:
    """Bytes as the peers' hex ("-" for none)."""
    return data.hex() or "-"


def shm_rows() -> list[dict[str, str]]:
    """/proc/sysvipc/shm as one {column: text} per segment."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:] if line.strip()]


def shm_row(shmid: int) -> dict[str, str] | None:
    """The kernel's own line for segment ``shmid``; None once it is gone."""
    return next((row for row in shm_rows() if int(row["shmid"]) == shmid), None)


def fresh_key() -> int:
    """A random System V key no segment uses now."""
    used = {int(row["key"]) for row in shm_rows()}
    while True:
        key = random.randint(0x1000_0000, 0x7FFF_FFFE)
        if key not in used:
            return key


def in_dev_shm(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


def mode_of(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@dataclass
class Made:
    """A region a test made, and what another process opens it by."""

    region: Any
    kind: str
    target: str  # a key, a name or a path; "" for anonymous memory


class Regions:
    """Makes regions of every kind and leaves nothing behind: ``cleanup`` closes every
    region it made and removes every segment (by key, by id or by creator pid), /dev/shm
    entry and file a test told it about, made by aioipc or by a peer, still there or gone
    already."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._regions: list[Any] = []
        self._keys: set[int] = set()
        self._ids: set[int] = set()
        self._names: set[str] = set()
        self._creators: set[int] = set()
        self._count = 0

    def key(self, key: int | None = None) -> int:
        """A fresh key (or ``key``), whose segments are removed at the end."""
        key = fresh_key() if key is None else key
        self._keys.add(key)
        return key

    def shmid(self, shmid: int) -> int:
        self._ids.add(shmid)
        return shmid

    def creator(self, pid: int) -> int:
        """Segments this process creates are removed at the end (private ones too)."""
        self._creators.add(pid)
        return pid

    def name(self) -> str:
        name = f"/aioipc-region-{os.getpid()}-{random.getrandbits(32):08x}"
        self._names.add(name)
        return name

    def path(self) -> Path:
        self._count += 1
        return self._tmp / f"region-{self._count}.bin"

    def track(self, region: Any) -> Any:
        self._regions.append(region)
        return region

    def make(self, kind: str, size: int, **kw: Any) -> Made:
        if kind == "sysv":
            key = self.key()
            r = self.track(sysv.SharedMemory.create(key, size, **kw))
            self.shmid(r.id)
            return Made(r, kind, str(key))
        if kind == "posix":
            name = self.name()
            return Made(self.track(posix.SharedMemory.create(name, size, **kw)), kind, name)
        if kind == "file":
            path = self.path()
            r = self.track(MappedFile.open(path, size, create=True, **kw))
            return Made(r, kind, str(path))
        assert kind == "anon", kind
        return Made(self.track(AnonymousMemory(size, **kw)), kind, "")

    def cleanup(self) -> None:
        for r in reversed(self._regions):
            with contextlib.suppress(BufferError):
                r.close()
        ids = set(self._ids)
        ids.update(
            int(row["shmid"])
            for row in shm_rows()
            if int(row["key"]) in self._keys or int(row["cpid"]) in self._creators
        )
        for shmid in ids:
            with contextlib.suppress(sysv_ipc.ExistentialError):
                sysv_ipc.remove_shared_memory(shmid)
        for name in self._names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink("/dev/shm" + name)


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[Regions]:
    made = Regions(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="module")
def shm_peer_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/shm_peer.c, compiled with gcc into a temporary directory."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build tests/c/shm_peer.c")
    exe = tmp_path_factory.mktemp("c-shm") / "shm_peer"
    src = C_DIR / "shm_peer.c"
    cmd = [gcc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(src), "-lrt"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"building {src.name} failed:\n{done.stderr}")
    return exe


class LinePeer:
    """A running peer (C or Python): ``ask`` sends one command and returns the words of
    its one-line answer; ``finish`` closes its stdin and checks it exited with 0."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self.pid = peer.pid
        self.finished = False

    async def line(self, *words: object) -> str:
        await self._peer.tell(" ".join(map(str, words)))
        return await self._peer.line(TIMEOUT)

    async def ask(self, *words: object) -> list[str]:
        return (await self.line(*words)).split(" ")

    async def finish(self) -> None:
        self.finished = True
        await self._peer.finish(0, TIMEOUT)


@asynccontextmanager
async def run_peer(cmd: list[str]) -> AsyncIterator[LinePeer]:
    """Start a peer, wait for its ``ready``; it must exit cleanly at the end."""
    async with spawn(cmd) as peer:
        await peer.expect("ready", TIMEOUT)
        p = LinePeer(peer)
        yield p
        if not p.finished:
            await p.finish()


def python_peer(*, as_user: int | None = None) -> contextlib.AbstractAsyncContextManager[LinePeer]:
    user = [] if as_user is None else ["--as-user", str(as_user)]
    return run_peer([sys.executable, str(PEER), *user, "serve"])


def c_peer(exe: Path) -> contextlib.AbstractAsyncContextManager[LinePeer]:
    return run_peer([str(exe)])


# --------------------------------------------------------------------------- 1. every kind


@pytest.mark.parametrize("kind", KINDS)
def test_create_gives_a_zeroed_writable_region_of_the_size_asked(
    kind: str, regions: Regions
) -> None:
    r = regions.make(kind, 10_000).region
    assert r.size == 10_000
    assert (r.read_only, r.closed) == (False, False)
    buf = r.buf
    assert (len(buf), buf.nbytes, buf.readonly) == (10_000, 10_000, False)
    assert bytes(buf) == bytes(10_000)
    data = pattern(10_000, 1)
    buf[:] = data
    del buf
    assert bytes(r.buf) == data
    r.buf[9_990:] = b"0123456789"
    assert bytes(r.buf[9_980:]) == data[9_980:9_990] + b"0123456789"
    r.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", NAMED)
async def test_what_one_process_writes_another_reads(kind: str, regions: Regions) -> None:
    made = regions.make(kind, 10_000)
    r = made.region
    data = pattern(10_000, 2)
    r.buf[:] = data
    async with python_peer() as peer:
        assert await peer.ask("open", kind, made.target) == ["opened", "10000", "False"]
        assert await peer.ask("read", 0, 10_000) == ["data", data.hex()]
        # And back: the peer writes, this process sees it at once.
        assert await peer.ask("write", 5_000, "00ff00ff") == ["wrote", "4"]
        assert bytes(r.buf[4_999:5_005]) == data[4_999:5_000] + b"\0\xff\0\xff" + data[5_004:5_005]
        r.buf[:5] = b"again"
        assert await peer.ask("read", 0, 6) == ["data", hx(b"again" + data[5:6])]
        assert await peer.ask("close") == ["closed"]
    r.close()


@pytest.mark.parametrize("kind", KINDS)
def test_context_manager_closes_and_close_is_idempotent(kind: str, regions: Regions) -> None:
    made = regions.make(kind, 4096)
    with made.region as r:
        assert r is made.region
        r.buf[:11] = b"kept after\0"
        fd = r.fd if kind == "anon" else None
    assert r.closed
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(anyio.ClosedResourceError):
        r.buf  # noqa: B018

    # Closing unmaps or detaches; it destroys nothing that has a name.
    if kind == "sysv":
        with sysv.SharedMemory.open(int(made.target)) as again:
            assert again.nattch == 1  # only this new handle
            assert bytes(again.buf[:11]) == b"kept after\0"
    elif kind == "posix":
        with posix.SharedMemory.open(made.target) as again:
            assert bytes(again.buf[:11]) == b"kept after\0"
    elif kind == "file":
        assert Path(made.target).read_bytes()[:11] == b"kept after\0"
    else:
        assert fd is not None
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # the memfd went with the region


@pytest.mark.parametrize("kind", KINDS)
def test_close_with_an_exported_view_raises_buffer_error(kind: str, regions: Regions) -> None:
    r = regions.make(kind, 4096).region
    view = r.buf[8:12]
    with pytest.raises(BufferError, match=r"(?i)release"):
        r.close()
    # Nothing was torn down: the region and the view both still work.
    assert not r.closed
    view[:] = b"abcd"
    assert bytes(r.buf[8:12]) == b"abcd"
    r.buf[12:14] = b"ef"

    words = r.buf[:16].cast("I")
    with pytest.raises(BufferError, match=r"(?i)release"):
        r.close()
    view.release()
    with pytest.raises(BufferError, match=r"(?i)release"):
        r.close()
    assert words[2] == int.from_bytes(b"abcd", sys.byteorder)
    words.release()
    r.close()
    assert r.closed


@pytest.mark.parametrize("kind", NAMED)
def test_default_mode_is_0600_whatever_the_umask(kind: str, regions: Regions) -> None:
    with umask(0):
        made = regions.make(kind, 4096)
    r = made.region
    if kind == "sysv":
        assert r.mode == 0o600
        row = shm_row(r.id)
        assert row is not None
        assert int(row["perms"], 8) == 0o600
    elif kind == "posix":
        assert mode_of("/dev/shm" + made.target) == 0o600
    else:
        assert mode_of(made.target) == 0o600
    r.close()


@pytest.mark.parametrize("kind", NAMED)
def test_exact_mode_despite_umask(kind: str, regions: Regions) -> None:
    with umask(0o077):
        made = regions.make(kind, 4096, mode=0o664)
    r = made.region
    if kind == "sysv":
        row = shm_row(r.id)
        assert row is not None
        assert (r.mode, int(row["perms"], 8)) == (0o664, 0o664)
    elif kind == "posix":
        assert mode_of("/dev/shm" + made.target) == 0o664
    else:
        assert mode_of(made.target) == 0o664
    r.close()


@pytest.mark.parametrize("size", [0, -1, -4096])
def test_size_zero_or_negative_is_a_value_error_and_makes_nothing(
    size: int, regions: Regions
) -> None:
    key = regions.key()
    with pytest.raises(ValueError, match=str(size)):
        sysv.SharedMemory.create(key, size)
    with pytest.raises(ValueError, match=str(size)):
        sysv.SharedMemory.open_or_create(key, size)
    assert all(int(row["key"]) != key for row in shm_rows())

    name = regions.name()
    with pytest.raises(ValueError, match=str(size)):
        posix.SharedMemory.create(name, size)
    with pytest.raises(ValueError, match=str(size)):
        posix.SharedMemory.open_or_create(name, size)
    assert not in_dev_shm(name)

    path = regions.path()
    with pytest.raises(ValueError, match=str(size)):
        MappedFile.open(path, size, create=True)
    assert not path.exists()

    with pytest.raises(ValueError, match=str(size)):
        AnonymousMemory(size)
    with pytest.raises(ValueError, match=str(size)):
        AnonymousMemory.create(size)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "kind",
    [
        "sysv",
        "posix",
        "file",
        "anon",
    ],
)
def test_a_size_that_cannot_be_mapped_fails_cleanly(kind: str, regions: Regions) -> None:
    """2**62 bytes: ftruncate of a sparse object may work, mapping it never can. The
    create must fail with aioipc's errors and leave no object, file or fd behind."""
    fds = open_fds()
    key, name, path = regions.key(), regions.name(), regions.path()

    def create() -> object:
        if kind == "sysv":
            return sysv.SharedMemory.create(key, 2**62)
        if kind == "posix":
            return posix.SharedMemory.create(name, 2**62)
        if kind == "file":
            return MappedFile.open(path, 2**62, create=True)
        return AnonymousMemory(2**62)

    with pytest.raises((ValueError, aioipc.IPCError)):
        regions.track(create())
    assert open_fds() == fds
    assert all(int(row["key"]) != key for row in shm_rows())
    assert not in_dev_shm(name)
    assert not path.exists()


# --------------------------------------------------------------------------- 2. System V


@pytest.mark.asyncio
async def test_sysv_ftok_key_shared_with_c(
    shm_peer_exe: Path, regions: Regions, tmp_path: Path
) -> None:
    keyfile = tmp_path / "keyfile"
    keyfile.touch()
    key = regions.key(aioipc.ftok(keyfile, 0x42))
    r = regions.track(sysv.SharedMemory.create(key, 8192))
    regions.shmid(r.id)
    assert (r.key, r.size, r.nattch) == (key, 8192, 1)
    r.buf[:16] = b"from aioipc\0\x01\x02\x03\x04"

    async with c_peer(shm_peer_exe) as c:
        assert await c.ask("ftokget", keyfile, 0x42) == ["id", str(r.id), "key", str(key)]
        assert await c.ask("attach", r.id, "-") == ["attached", "8192"]
        assert r.nattch == 2  # both attached, until C gets its next line
        assert await c.ask("read", 0, 16) == ["data", hx(b"from aioipc\0\x01\x02\x03\x04")]

        # C writes a string; aioipc reads it through the same key.
        assert await c.ask("write", 4000, hx(b"hello from C\0")) == ["wrote", "13"]
        assert bytes(r.buf[4000:4013]) == b"hello from C\0"
        with sysv.SharedMemory.open(key) as other:
            assert other.id == r.id
            assert other.size == 8192
            assert bytes(other.buf[4000:4013]) == b"hello from C\0"
            assert r.nattch == 3

        # aioipc writes after C did, C sees it; then C overwrites it, aioipc sees that.
        r.buf[4000:4005] = b"HELLO"
        assert await c.ask("read", 4000, 13) == ["data", hx(b"HELLO from C\0")]
        assert await c.ask("write", 8190, "abcd") == ["wrote", "2"]
        assert bytes(r.buf[8188:]) == b"\0\0\xab\xcd"

        assert r.nattch == 2
        assert await c.ask("detach") == ["detached"]
        assert r.nattch == 1
    r.close()


@pytest.mark.asyncio
async def test_sysv_ipc_stat_fields(shm_peer_exe: Path, regions: Regions) -> None:
    t0 = int(time.time())
    r = regions.make("sysv", 5000).region
    me = os.getpid()
    assert (r.segment_size, r.size) == (5000, 5000)
    assert (r.cpid, r.lpid, r.nattch) == (me, me, 1)
    uid, gid = os.geteuid(), os.getegid()
    assert (r.uid, r.cuid, r.gid, r.cgid) == (uid, uid, gid, gid)
    assert r.mode == 0o600
    assert not r.removed
    # The kernel stamps these from its coarse clock, which can lag time.time() by a
    # tick: across a second boundary ctime was t0 - 1 once (a fresh-clone run).
    assert t0 - 1 <= r.ctime <= time.time() + 1
    assert t0 - 1 <= r.atime <= time.time() + 1
    assert r.dtime == 0  # nobody detached yet

    def kernel() -> dict[str, str]:
        row = shm_row(r.id)
        assert row is not None
        return row

    row = kernel()
    assert (int(row["size"]), int(row["cpid"]), int(row["lpid"]), int(row["nattch"])) == (
        5000,
        me,
        me,
        1,
    )
    assert (int(row["atime"]), int(row["dtime"]), int(row["ctime"])) == (r.atime, r.dtime, r.ctime)

    async with c_peer(shm_peer_exe) as c:
        assert await c.ask("stat", r.id) == ["stat", "5000", "1", str(me), str(me), "600"]
        t1 = int(time.time())
        assert await c.ask("attach", r.id, "-") == ["attached", "5000"]
        assert (r.cpid, r.lpid, r.nattch) == (me, c.pid, 2)  # lpid: the last shmat/shmdt
        assert r.atime >= t1
        assert r.dtime == 0
        t2 = int(time.time())
        assert await c.ask("detach") == ["detached"]
        assert (r.lpid, r.nattch) == (c.pid, 1)
        assert t2 <= r.dtime <= time.time() + 1
        row = kernel()
        assert (int(row["lpid"]), int(row["dtime"]), int(row["atime"])) == (
            c.pid,
            r.dtime,
            r.atime,
        )

        # IPC_SET through the mode setter: the kernel and C see it, ctime moves.
        ctime = r.ctime
        r.mode = 0o640
        assert r.mode == 0o640
        assert int(kernel()["perms"], 8) == 0o640
        assert await c.ask("stat", r.id) == ["stat", "5000", "1", str(me), str(c.pid), "640"]
        assert r.ctime >= ctime
    r.close()


@pytest.mark.asyncio
async def test_sysv_remove_while_attached(shm_peer_exe: Path, regions: Regions) -> None:
    made = regions.make("sysv", 4096)
    r = made.region
    key, shmid = int(made.target), r.id
    r.buf[:5] = b"early"
    async with c_peer(shm_peer_exe) as c:
        assert await c.ask("attach", shmid, "-") == ["attached", "4096"]
        r.remove()
        assert r.removed
        with pytest.raises(aioipc.IPCNotFoundError) as info:
            sysv.SharedMemory.open(key)
        assert isinstance(info.value, FileNotFoundError)
        row = shm_row(shmid)
        assert row is not None
        assert int(row["key"]) == IPC_PRIVATE  # the kernel forgets the key at once
        assert int(row["perms"], 8) & 0o1000  # SHM_DEST

        # Both attached handles keep working, both ways.
        r.buf[5:10] = b"later"
        assert await c.ask("read", 0, 10) == ["data", hx(b"earlylater")]
        assert await c.ask("write", 10, hx(b"from C")) == ["wrote", "6"]
        assert bytes(r.buf[:16]) == b"earlylaterfrom C"
        assert r.nattch == 2

        r.close()
        row = shm_row(shmid)
        assert row is not None  # C is still attached
        assert int(row["nattch"]) == 1
        assert await c.ask("read", 0, 16) == ["data", hx(b"earlylaterfrom C")]
        assert await c.ask("detach") == ["detached"]
        assert shm_row(shmid) is None  # the last detach destroyed it

    # Alone: removed on the last (own) detach.
    r = regions.make("sysv", 4096).region
    shmid = r.id
    r.remove()
    assert r.removed
    assert shm_row(shmid) is not None
    r.buf[:2] = b"ok"
    assert bytes(r.buf[:2]) == b"ok"
    r.close()
    assert shm_row(shmid) is None


@pytest.mark.asyncio
async def test_sysv_read_only_attach(regions: Regions) -> None:
    made = regions.make("sysv", 4096)
    r = made.region
    r.buf[:8] = b"readable"
    with sysv.SharedMemory.open(int(made.target), read_only=True) as ro:
        assert ro.read_only
        assert ro.buf.readonly
        assert ro.size == 4096
        assert bytes(ro.buf[:8]) == b"readable"
        with pytest.raises(TypeError, match="cannot modify read-only memory"):
            ro.buf[0] = 0x41
        with pytest.raises(TypeError, match="cannot modify read-only memory"):
            ro.buf[:3] = b"abc"
        r.buf[:8] = b"changed!"  # the writer's changes show through
        assert bytes(ro.buf[:8]) == b"changed!"
    with sysv.SharedMemory.from_id(r.id, read_only=True) as ro:
        assert ro.buf.readonly
        assert bytes(ro.buf[:8]) == b"changed!"

    # In another process too (SHM_RDONLY there as well).
    async with python_peer() as peer:
        assert await peer.ask("open", "sysv", made.target, "ro") == ["opened", "4096", "True"]
        assert await peer.ask("read", 0, 8) == ["data", hx(b"changed!")]
        answer = await peer.line("write", 0, hx(b"x"))
        assert answer.startswith("error TypeError False cannot modify read-only memory"), answer
    assert bytes(r.buf[:8]) == b"changed!"
    r.close()


@pytest.mark.asyncio
async def test_sysv_segment_made_by_c_opened_with_sizes(
    shm_peer_exe: Path, regions: Regions
) -> None:
    key = regions.key()
    async with c_peer(shm_peer_exe) as c:
        word, shmid = await c.ask("create", key, 3000, "600")
        assert word == "id"
        regions.shmid(int(shmid))
        assert await c.ask("attach", shmid, "-") == ["attached", "3000"]
        assert await c.ask("write", 2990, hx(b"0123456789")) == ["wrote", "10"]

        # size=None maps the whole segment; a smaller size maps that much.
        with sysv.SharedMemory.open(key) as whole:
            assert (whole.id, whole.size, whole.segment_size) == (int(shmid), 3000, 3000)
            assert bytes(whole.buf[2990:]) == b"0123456789"
        with sysv.SharedMemory.open(key, size=1000) as part:
            assert (part.size, len(part.buf), part.segment_size) == (1000, 1000, 3000)
            part.buf[:4] = b"part"
        assert await c.ask("read", 0, 4) == ["data", hx(b"part")]

        # Larger than the segment: ValueError naming both sizes.
        with pytest.raises(ValueError, match="3001") as info:
            sysv.SharedMemory.open(key, size=3001)
        assert "3000" in str(info.value)
        with pytest.raises(ValueError, match="0"):
            sysv.SharedMemory.open(key, size=0)

        # Created by C, so an exclusive create by aioipc fails; open_or_create opens it.
        with pytest.raises(aioipc.IPCExistsError) as exists:
            sysv.SharedMemory.create(key, 3000)
        assert isinstance(exists.value, FileExistsError)
        with sysv.SharedMemory.open_or_create(key, 3000) as same:
            assert same.id == int(shmid)
            assert bytes(same.buf[:4]) == b"part"
        assert await c.ask("rm", shmid) == ["removed"]


def test_sysv_create_existing_and_open_missing(regions: Regions) -> None:
    made = regions.make("sysv", 4096)
    r = made.region
    key = int(made.target)
    r.buf[:4] = b"mine"
    with pytest.raises(aioipc.IPCExistsError):
        sysv.SharedMemory.create(key, 4096)
    with sysv.SharedMemory.open_or_create(key, 4096) as same:
        assert same.id == r.id
        assert bytes(same.buf[:4]) == b"mine"

    missing = regions.key()
    with pytest.raises(aioipc.IPCNotFoundError) as info:
        sysv.SharedMemory.open(missing)
    assert isinstance(info.value, FileNotFoundError)
    # open_or_create makes a new one when there is none.
    with sysv.SharedMemory.open_or_create(missing, 100) as new:
        regions.shmid(new.id)
        assert (new.key, new.size, new.segment_size) == (missing, 100, 100)
        assert new.id != r.id
        assert bytes(new.buf) == bytes(100)
    r.close()


@pytest.mark.asyncio
async def test_sysv_private_segment_by_id_in_another_process(regions: Regions) -> None:
    r = regions.track(sysv.SharedMemory.create(IPC_PRIVATE, 4096))
    regions.shmid(r.id)
    assert r.key == IPC_PRIVATE
    r.buf[:7] = b"private"
    async with python_peer() as peer:
        assert await peer.ask("open", "sysvid", r.id) == ["opened", "4096", "False"]
        assert await peer.ask("read", 0, 7) == ["data", hx(b"private")]
        assert await peer.ask("write", 7, hx(b"!")) == ["wrote", "1"]
    assert bytes(r.buf[:8]) == b"private!"
    r.remove()
    r.close()
    assert shm_row(r.id) is None


@root_only
@pytest.mark.asyncio
async def test_sysv_another_uid_is_refused_a_0600_segment(regions: Regions) -> None:
    made = regions.make("sysv", 4096)
    r = made.region
    r.buf[:6] = b"secret"
    async with python_peer(as_user=NOBODY) as peer:
        answer = await peer.line("open", "sysv", made.target)
        assert answer.startswith("error IPCPermissionError True "), answer
        # Control: once others may read, the same uid attaches read-only, and not
        # read-write (no write bit for others).
        r.mode = 0o604
        answer = await peer.line("open", "sysv", made.target)
        assert answer.startswith("error IPCPermissionError True "), answer
        assert await peer.ask("open", "sysv", made.target, "ro") == ["opened", "4096", "True"]
        assert await peer.ask("read", 0, 6) == ["data", hx(b"secret")]
    r.close()


@root_only
@pytest.mark.asyncio
async def test_sysv_create_that_cannot_attach_leaves_no_segment(regions: Regions) -> None:
    async with python_peer(as_user=NOBODY) as peer:
        regions.creator(peer.pid)
        for target, mode in [(regions.key(), "400"), (regions.key(), "000"), (IPC_PRIVATE, "400")]:
            answer = await peer.line("create", "sysv", target, 4096, mode)
            assert answer.startswith("error IPCPermissionError True "), answer
        # Control: with owner write the same uid creates and attaches.
        word, size, shmid = await peer.ask("create", "sysv", regions.key(), 4096, "600")
        assert (word, size) == ("created", "4096")
        assert await peer.ask("write", 0, hx(b"nobody")) == ["wrote", "6"]
        row = shm_row(int(shmid))
        assert row is not None
        assert (int(row["uid"]), int(row["nattch"])) == (NOBODY, 1)
        with sysv.SharedMemory.from_id(int(shmid)) as seen:
            assert bytes(seen.buf[:6]) == b"nobody"
        leftovers = [row for row in shm_rows() if int(row["cpid"]) == peer.pid]
        assert [int(row["shmid"]) for row in leftovers] == [int(shmid)]


# --------------------------------------------------------------------------- 3. POSIX


def test_posix_create_open_and_open_or_create(regions: Regions) -> None:
    made = regions.make("posix", 5000)
    r = made.region
    name = made.target
    assert r.name == name
    assert os.stat("/dev/shm" + name).st_size == 5000
    r.buf[4990:] = b"0123456789"

    with posix.SharedMemory.open(name) as whole:
        assert (whole.name, whole.size) == (name, 5000)
        assert bytes(whole.buf[4990:]) == b"0123456789"
    with posix.SharedMemory.open(name, size=100) as part:
        assert (part.size, len(part.buf)) == (100, 100)
        part.buf[:4] = b"part"
    assert bytes(r.buf[:4]) == b"part"
    with pytest.raises(ValueError, match="5001") as info:
        posix.SharedMemory.open(name, size=5001)
    assert "5000" in str(info.value)
    assert os.stat("/dev/shm" + name).st_size == 5000  # not grown by the failed open

    with pytest.raises(aioipc.IPCExistsError) as exists:
        posix.SharedMemory.create(name, 5000)
    assert isinstance(exists.value, FileExistsError)
    with posix.SharedMemory.open_or_create(name, 5000) as same:
        assert bytes(same.buf[:4]) == b"part"

    other = regions.name()
    with pytest.raises(aioipc.IPCNotFoundError) as missing:
        posix.SharedMemory.open(other)
    assert isinstance(missing.value, FileNotFoundError)
    with posix.SharedMemory.open_or_create(other, 300) as new:
        assert new.size == 300
        assert bytes(new.buf) == bytes(300)
        assert mode_of("/dev/shm" + other) == 0o600
    posix.unlink_shared_memory(other)
    assert not in_dev_shm(other)
    with pytest.raises(aioipc.IPCNotFoundError):
        posix.unlink_shared_memory(other)
    r.close()


@pytest.mark.asyncio
async def test_posix_shared_with_c(shm_peer_exe: Path, regions: Regions) -> None:
    made = regions.make("posix", 6000)
    r = made.region
    data = pattern(6000, 3)
    r.buf[:] = data
    async with c_peer(shm_peer_exe) as c:
        assert await c.ask("shmopen", made.target) == ["mapped", "6000"]
        assert await c.ask("read", 0, 6000) == ["data", data.hex()]
        assert await c.ask("write", 3000, hx(b"\0from C\0")) == ["wrote", "8"]
        assert bytes(r.buf[3000:3008]) == b"\0from C\0"
        r.buf[5999] = 0x7F
        assert await c.ask("read", 5998, 2) == ["data", hx(data[5998:5999] + b"\x7f")]
        assert await c.ask("unmap") == ["unmapped"]
    r.close()


@pytest.mark.asyncio
async def test_posix_unlink_while_mapped(regions: Regions) -> None:
    made = regions.make("posix", 4096)
    r = made.region
    name = made.target
    r.buf[:6] = b"before"
    second = regions.track(posix.SharedMemory.open(name))
    async with python_peer() as peer:
        assert await peer.ask("open", "posix", name) == ["opened", "4096", "False"]
        r.unlink()
        assert not in_dev_shm(name)
        with pytest.raises(aioipc.IPCNotFoundError) as info:
            posix.SharedMemory.open(name)
        assert isinstance(info.value, FileNotFoundError)

        # Every mapping still shares the same pages.
        r.buf[6:11] = b"after"
        assert await peer.ask("read", 0, 11) == ["data", hx(b"beforeafter")]
        assert bytes(second.buf[:11]) == b"beforeafter"
        assert await peer.ask("write", 11, hx(b"+peer")) == ["wrote", "5"]
        assert bytes(r.buf[:16]) == b"beforeafter+peer"
        assert bytes(second.buf[:16]) == b"beforeafter+peer"

        # A new object under the name is a different one.
        with posix.SharedMemory.create(name, 4096) as fresh:
            fresh.buf[:3] = b"new"
            assert await peer.ask("read", 0, 3) == ["data", hx(b"bef")]
            assert bytes(r.buf[:3]) == b"bef"
            fresh.unlink()
    second.close()
    r.close()


def test_posix_no_resource_tracker_registration(regions: Regions) -> None:
    made = regions.make("posix", 4096)
    r = made.region
    name = made.target
    r.buf[:16] = b"survives a child"
    done = subprocess.run(
        [sys.executable, str(PEER), "serve"],
        input=f"open posix {name}\nread 0 16\nclose\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ready",
        "opened 4096 False",
        "data " + hx(b"survives a child"),
        "closed",
    ]
    assert done.stderr == ""  # no "leaked shared_memory" warning from a resource tracker
    assert in_dev_shm(name)
    with posix.SharedMemory.open(name) as again:
        assert bytes(again.buf[:16]) == b"survives a child"

    # Contrast: the standard library's SharedMemory in the same kind of child registers
    # the object, and its resource tracker warns and unlinks it when the child exits.
    done = subprocess.run(
        [sys.executable, str(PEER), "stdlib", name.lstrip("/")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "data " + hx(b"survives a child") + "\n"
    assert "leaked shared_memory" in done.stderr
    assert not in_dev_shm(name)
    r.close()


@root_only
@pytest.mark.asyncio
async def test_posix_another_uid_is_refused_a_0600_object(regions: Regions) -> None:
    made = regions.make("posix", 4096)
    made.region.buf[:6] = b"secret"
    async with python_peer(as_user=NOBODY) as peer:
        answer = await peer.line("open", "posix", made.target)
        assert answer.startswith("error IPCPermissionError True "), answer
    made.region.close()


@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_named_handles_pickle_to_a_reopen(kind: str, regions: Regions) -> None:
    r = regions.make(kind, 4096).region
    r.buf[:6] = b"pickle"
    again = regions.track(pickle.loads(pickle.dumps(r)))
    assert again is not r
    assert again.size == 4096
    assert bytes(again.buf[:6]) == b"pickle"
    again.buf[6:9] = b"d!!"
    assert bytes(r.buf[:9]) == b"pickled!!"
    if kind == "sysv":
        assert again.id == r.id
        assert r.nattch == 2
    else:
        assert again.name == r.name
    again.close()
    r.close()


def test_anonymous_memory_does_not_pickle() -> None:
    with AnonymousMemory(4096) as r, pytest.raises(TypeError):
        pickle.dumps(r)


# --------------------------------------------------------------------------- 4. MappedFile


@pytest.mark.asyncio
async def test_mapped_file_flushed_bytes_seen_by_c(shm_peer_exe: Path, regions: Regions) -> None:
    path = regions.path()
    r = regions.track(MappedFile.open(path, 10_000, create=True))
    assert Path(r.path) == path
    assert (os.stat(path).st_size, mode_of(path)) == (10_000, 0o600)
    data = pattern(10_000, 4)
    r.buf[:] = data
    r.flush()
    with open(path, "rb") as f:
        assert f.read() == data
    async with c_peer(shm_peer_exe) as c:
        assert await c.ask("mmap", path) == ["mapped", "10000"]
        assert await c.ask("read", 0, 10_000) == ["data", data.hex()]
        assert await c.ask("write", 0, hx(b"C was here")) == ["wrote", "10"]
        assert bytes(r.buf[:10]) == b"C was here"
        r.buf[9_000:9_004] = b"late"
        r.flush()
        assert await c.ask("read", 9_000, 4) == ["data", hx(b"late")]
    r.close()
    with pytest.raises(anyio.ClosedResourceError):
        r.flush()
    assert path.read_bytes() == b"C was here" + data[10:9_000] + b"late" + data[9_004:]


def test_mapped_file_open_existing(regions: Regions) -> None:
    path = regions.path()
    data = pattern(3000, 5)
    path.write_bytes(data)

    with MappedFile.open(path) as whole:  # size=None: the whole file
        assert (whole.size, whole.read_only) == (3000, False)
        assert bytes(whole.buf) == data
        whole.buf[:4] = b"edit"
        whole.flush()
    assert path.read_bytes() == b"edit" + data[4:]
    with MappedFile.open(path, 1000) as part:
        assert part.size == 1000
        assert bytes(part.buf) == b"edit" + data[4:1000]

    with pytest.raises(ValueError, match="3001") as info:
        MappedFile.open(path, 3001)
    assert "3000" in str(info.value)
    assert os.stat(path).st_size == 3000  # not grown

    # With create=True an existing file is kept, and grown to the size asked.
    with MappedFile.open(path, 5000, create=True) as grown:
        assert grown.size == 5000
        assert bytes(grown.buf) == b"edit" + data[4:] + bytes(2000)
    assert os.stat(path).st_size == 5000

    empty = regions.path()
    empty.touch()
    with pytest.raises(ValueError, match="0"):
        MappedFile.open(empty)
    with pytest.raises(FileNotFoundError):
        MappedFile.open(regions.path())


def test_mapped_file_create_does_not_follow_a_symlink(regions: Regions) -> None:
    target = regions.path()
    target.write_bytes(b"precious")
    link = regions.path()
    link.symlink_to(target)
    with pytest.raises(ValueError, match="symlink"):
        MappedFile.open(link, 4096, create=True)
    assert target.read_bytes() == b"precious"
    assert link.is_symlink()

    dangling = regions.path()
    nowhere = regions.path()
    dangling.symlink_to(nowhere)
    with pytest.raises(ValueError, match="symlink"):
        MappedFile.open(dangling, 4096, create=True)
    assert not nowhere.exists()


def test_mapped_file_create_without_a_size_leaves_no_file(regions: Regions) -> None:
    path = regions.path()
    with pytest.raises(ValueError, match="size"):
        MappedFile.open(path, create=True)
    assert not path.exists()


def test_mapped_file_read_only(regions: Regions) -> None:
    path = regions.path()
    path.write_bytes(b"read me" + bytes(93))
    with MappedFile.open(path, read_only=True) as ro:
        assert (ro.read_only, ro.size, ro.buf.readonly) == (True, 100, True)
        assert bytes(ro.buf[:7]) == b"read me"
        with pytest.raises(TypeError, match="cannot modify read-only memory"):
            ro.buf[0] = 0
        with MappedFile.open(path) as rw:
            rw.buf[:4] = b"READ"
        assert bytes(ro.buf[:7]) == b"READ me"
    assert path.read_bytes()[:7] == b"READ me"


# --------------------------------------------------------------------------- 5. AnonymousMemory


def test_anonymous_memory_is_a_memfd() -> None:
    with AnonymousMemory.create(8192) as r:
        assert r.size == 8192
        assert not os.get_inheritable(r.fd)
        assert os.readlink(f"/proc/self/fd/{r.fd}").startswith("/memfd:aioipc")
        assert os.fstat(r.fd).st_size == 8192
        r.buf[:4] = b"memf"
        assert os.pread(r.fd, 4, 0) == b"memf"  # the pages are the memfd's


def test_anonymous_memory_shared_with_a_forked_child() -> None:
    with AnonymousMemory(8192) as r:
        r.buf[:6] = b"parent"
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                code = 0 if bytes(r.buf[:6]) == b"parent" else 3
                r.buf[100:110] = b"from child"
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 3: the child missed "parent"
        assert bytes(r.buf[100:110]) == b"from child"
        assert bytes(r.buf[:6]) == b"parent"


@pytest.mark.asyncio
async def test_anonymous_memory_handed_to_a_spawned_process_over_a_unix_socket(
    short_tmp: Path,
) -> None:
    sock = short_tmp / "anon.sock"
    with AnonymousMemory(8192) as r:
        r.buf[:12] = b"from parent\0"
        async with (
            await unix.listen(sock) as listener,
            spawn([sys.executable, str(PEER), "anon", str(sock)]) as peer,
        ):
            with anyio.fail_after(TIMEOUT):
                chan = await listener.accept()
            async with chan:
                await chan.send_fds(b"4000 " + hx(b"written by the peer").encode(), [r.fd])
                with anyio.fail_after(TIMEOUT):
                    reply = await chan.receive()
            head = b"from parent\0" + bytes(20)
            assert reply.decode() == f"size 8192 head {head.hex()}"
            assert bytes(r.buf[4000:4019]) == b"written by the peer"
            await peer.expect("done", TIMEOUT)
            await peer.finish(0, TIMEOUT)


# ==========================================================================================
# Regressions: shared-memory regions (and the ring, where a finding covers both)
# Regression tests moved from tests/test_shm_regressions.py (issue 11): findings of the
# review of the shared-memory ring and regions (commit 0bd40c1; F10 and F13 are its
# numbers) that concern the regions; the rest is at the end of tests/test_shm_ring.py.
# ==========================================================================================


def segment_with_key(key: int) -> int | None:
    """The id of the System V segment with ``key``; None if there is none."""
    return next((int(row["shmid"]) for row in shm_rows() if int(row["key"]) == key), None)


# ========== F10: a FIFO planted at the name


def test_fifo_planted_at_the_name_hangs_nothing(new_ring: Callable[[], str]) -> None:
    """A FIFO where a ring or shared-memory object should be: is_stale and the
    read-only opens of posix.SharedMemory and MappedFile return at once (an
    O_RDONLY open of a FIFO blocked until a writer came); the opens refuse it."""
    name = new_ring()
    with planted_fifo(name):
        out = fifo_outcomes(name)
    hung = [what for what, text in out.items() if not text]
    assert hung == [], f"still blocked after 5 s: {hung}; {out}"
    assert out["posix"].startswith("raised IPCNotFoundError"), out
    assert "not a shared-memory object" in out["posix"], out
    assert out["file"].startswith("raised ValueError"), out
    assert "not a regular file" in out["file"], out


# ========== F13: bad modes are refused


@pytest.mark.parametrize("mode", [-1, 0o7777, 0o1000], ids=["-1", "0o7777", "0o1000"])
def test_bad_mode_is_a_value_error_and_creates_nothing(
    new_ring: Callable[[], str], tmp_path: Path, mode: int
) -> None:
    name = new_ring()
    for create in (ShmReceiver.create, ShmSender.create):
        refused(partial(create, name, 4096, mode=mode), ValueError)
        assert existing(name) == []

    pname = new_ring()
    refused(lambda: posix.SharedMemory.create(pname, 4096, mode=mode), ValueError)
    assert existing(pname) == []

    key = fresh_key()
    try:
        refused(lambda: sysv.SharedMemory.create(key, 4096, mode=mode), ValueError)
        assert segment_with_key(key) is None
    finally:
        shmid = segment_with_key(key)
        if shmid is not None:
            sysv_ipc.remove_shared_memory(shmid)

    path = tmp_path / "mapped"
    refused(lambda: MappedFile.open(path, 4096, create=True, mode=mode), ValueError)
    assert not os.path.lexists(path)
