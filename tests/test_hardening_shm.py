"""Issue 10, the shared-memory items: what a hostile co-writer, a full /dev/shm or a
lack of file descriptors does to rings and regions.

* item 1: who can crash a ring (another uid cannot even open a 0600 one; a same-uid
  truncation kills a receiver with SIGBUS, the documented limit; forged values give
  ProtocolError, never a crash);
* item 2: a create on a full tmpfs raises ENOSPC naming the size and leaves nothing
  (a child in a private mount namespace with a 1 MiB tmpfs over /dev/shm);
* item 8: forged pids and peer states in a ring's header never hide a SIGKILLed peer
  nor raise a raw OverflowError;
* item 9 (regions): at EMFILE and with bad fds, every error is an aioipc one naming the
  object and the limit.

Real kernel objects and real processes throughout; nothing waits by sleeping: a test
waits for a child's line or exit, an exception or an event, always under a bound.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import random
import shutil
import signal
import struct
import subprocess
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import pytest

import aioipc
import aioipc.shm
from aioipc import AnonymousMemory
from aioipc.shm import ShmReceiver, ShmSender

from ._peer import Peer, spawn
from ._procs import CHILD_LIMIT, PYTHON, child, child_env, read_line, tell

# --------------------------------------------------------------------------- helpers


def run_child(
    code: str, *args: str, prefix: tuple[str, ...] = (), timeout: float = CHILD_LIMIT
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (under ``prefix``, e.g. ``unshare ...``)."""
    try:
        return subprocess.run(
            [*prefix, PYTHON, "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process still ran after {timeout} s:\n{code}")


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert done.returncode == 0, f"child exited with {done.returncode}:\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


# ============================================== item 9: regions out of file descriptors

EMFILE_REGIONS = """
    import json, os, resource, sys
    import aioipc
    from aioipc import AnonymousMemory, IPCError, MappedFile, posix

    name, tmp = sys.argv[1], sys.argv[2]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def fds():
        listed = (int(f) for f in os.listdir("/proc/self/fd"))
        return sorted(fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}"))

    def with_free_fds(free, call):
        # Run call() with exactly `free` fd numbers left below RLIMIT_NOFILE.
        used, limit = set(fds()), 0
        while free:
            free -= limit not in used
            limit += 1
        while limit in used:
            limit += 1  # an fd at the limit itself does not count
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            return call(), None, limit
        except BaseException as exc:
            return None, exc, limit
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    path = os.path.join(tmp, "mapped")
    cases = {
        "AnonymousMemory.create": lambda: AnonymousMemory.create(4096),
        "posix.SharedMemory.create": lambda: posix.SharedMemory.create(name, 4096),
        "posix.SharedMemory.open_or_create": (
            lambda: posix.SharedMemory.open_or_create(name, 4096)),
        "MappedFile.open(create=True)": lambda: MappedFile.open(path, 4096, create=True),
    }
    for op, call in cases.items():
        for free in (0, 1):
            before = fds()
            region, exc, limit = with_free_fds(free, call)
            if region is not None:
                region.close()
            out = {"op": op, "free": free, "limit": limit, "ok": exc is None,
                   "leaked": len(fds()) - len(before),
                   "left": os.path.exists("/dev/shm" + name) or os.path.exists(path)}
            if exc is not None:
                out.update(type=f"{type(exc).__module__}.{type(exc).__name__}",
                           message=str(exc), clean=isinstance(exc, IPCError),
                           errno=getattr(exc, "errno", None))
            for leftover in ("/dev/shm" + name, path):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            print(json.dumps(out), flush=True)
"""


def test_regions_out_of_fds_raise_aioipc_errors_naming_the_limit(tmp_path: Path) -> None:
    """With no fd free (the region's own open fails) and with one (mmap's dup of it
    fails), every region constructor raises an aioipc error with errno EMFILE that names
    the object and RLIMIT_NOFILE with its value; no fd and no file is left behind.
    (memfd_create raised a raw OSError; the others named no limit.)"""
    name = f"/aioipc-test-emfile-{uuid.uuid4().hex[:12]}"
    try:
        records = json_lines(run_child(EMFILE_REGIONS, name, str(tmp_path)))
    finally:  # the child removes what it made; this is in case it could not
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/dev/shm" + name)
    assert len(records) == 8
    for r in records:
        assert r["leaked"] == 0, r
        assert r["left"] is False, r
        assert not r["ok"], r
        assert r["clean"], r
        assert r["errno"] == errno.EMFILE, r
        message = str(r["message"])
        assert f"RLIMIT_NOFILE = {r['limit']}" in message, r
        op = str(r["op"])
        named = {"A": "anonymous shared memory", "p": name, "M": str(tmp_path / "mapped")}
        assert named[op[0]] in message, r


@pytest.mark.parametrize(
    ("fd", "error", "text"),
    [
        (-1, ValueError, "fd -1 is not a file descriptor"),
        (2**40, ValueError, "is not a file descriptor"),
        ("3", TypeError, "a file descriptor is an int"),
        (True, TypeError, "a file descriptor is an int"),
    ],
)
def test_anonymous_memory_from_a_bad_fd_names_it(fd: object, error: type, text: str) -> None:
    """from_fd(-1) raised a raw OSError from fstat; now aioipc/_check.check_fd decides."""
    with pytest.raises(error, match=text) as info:
        AnonymousMemory.from_fd(fd)  # type: ignore[arg-type]
    assert "anonymous shared memory" in str(info.value)


def test_anonymous_memory_from_a_closed_fd_names_it() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ValueError, match=f"anonymous shared memory: fd {r} is not an open"):
        AnonymousMemory.from_fd(r)


def test_anonymous_memory_from_a_pipe_is_refused_and_keeps_the_fd() -> None:
    """Refused before the region owns the fd: the caller's fd stays open."""
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match=f"anonymous shared memory: fd {r} is not a memfd"):
            AnonymousMemory.from_fd(r)
        os.fstat(r)  # still open
    finally:
        os.close(r)
        os.close(w)


# ================================================= item 2: a full /dev/shm or file system

#: Run in a private mount namespace (as root): a 1 MiB tmpfs over /dev/shm and another at
#: argv[1], both filled to the last byte; then each create in a forked child of its own
#: (a SIGBUS kills only that one), reported as one JSON line each.
FULL_FS = """
    import json, os, signal, subprocess, sys
    small = sys.argv[1]
    for where in ("/dev/shm", small):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", where], check=True)
    with open(os.path.join(small, "existing"), "wb") as f:
        f.write(b"E" * 4096)  # MappedFile extends this one
    for where in ("/dev/shm", small):
        fd = os.open(os.path.join(where, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, bytes(65536))
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC: full
        finally:
            os.close(fd)

    from aioipc import MappedFile, posix
    from aioipc.shm import ShmReceiver, ShmSender

    size = 8192
    cases = {
        "ring-receiver": lambda: ShmReceiver.create("/ring", 4096),  # + a 4 KiB header
        "ring-sender": lambda: ShmSender.create("/ring", 4096),
        "posix-create": lambda: posix.SharedMemory.create("/region", size),
        "posix-open-or-create": lambda: posix.SharedMemory.open_or_create("/region", size),
        "file-create": lambda: MappedFile.open(os.path.join(small, "new"), size, create=True),
        "file-extend": (
            lambda: MappedFile.open(os.path.join(small, "existing"), 65536, create=True)),
    }

    def attempt(make):
        try:
            made = make()
        except Exception as exc:
            return {"type": type(exc).__name__, "errno": getattr(exc, "errno", None),
                    "message": str(exc)}
        # It claims to have the memory: use it, as a program would.
        buf = getattr(made, "buf", None)
        if buf is not None:
            buf[:] = b"x" * len(buf)
        return {"type": None, "made": repr(made)}

    for case, make in cases.items():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, json.dumps(attempt(make)).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as got:
            report = got.read()
        _, status = os.waitpid(pid, 0)
        out = {"case": case, "exit": os.waitstatus_to_exitcode(status)}
        if report:
            out.update(json.loads(report))
        out["dev_shm"] = sorted(os.listdir("/dev/shm"))
        out["small"] = sorted(os.listdir(small))
        out["existing_size"] = os.stat(os.path.join(small, "existing")).st_size
        registry = os.environ["AIOIPC_REGISTRY"]
        out["registry"] = sorted(os.listdir(registry)) if os.path.isdir(registry) else []
        print(json.dumps(out), flush=True)
"""

needs_root_and_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and util-linux unshare to mount a small tmpfs in a private namespace",
)


@needs_root_and_unshare
def test_every_create_on_a_full_file_system_raises_enospc_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """On a full 1 MiB tmpfs, ring, POSIX shared-memory and mapped-file creates raise
    IPCSystemError(ENOSPC) naming the object, the size and the file system, and leave no
    file and no registry entry; an existing file keeps its size. (Before: a ring create
    died of SIGBUS, posix.SharedMemory.create and MappedFile succeeded and the first
    write into them died of SIGBUS.)"""
    small = tmp_path / "small"
    small.mkdir()
    env = child_env()
    env["AIOIPC_REGISTRY"] = str(tmp_path / "registry")
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            PYTHON,
            "-c",
            textwrap.dedent(FULL_FS),
            str(small),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    records = {str(r["case"]): r for r in json_lines(done)}
    assert len(records) == 6, records
    sizes = {
        "ring-receiver": (4096 + 4096, "/dev/shm", "shared-memory ring /ring"),
        "ring-sender": (4096 + 4096, "/dev/shm", "shared-memory ring /ring"),
        "posix-create": (8192, "/dev/shm", "POSIX shared memory /region"),
        "posix-open-or-create": (8192, "/dev/shm", "POSIX shared memory /region"),
        "file-create": (8192, str(small), f"mapped file {small}/new"),
        "file-extend": (65536 - 4096, str(small), f"mapped file {small}/existing"),
    }
    for case, (size, fs, what) in sizes.items():
        r = records[case]
        assert r["exit"] == 0, f"{case}: the process died ({r['exit']})"
        assert r["type"] == "IPCSystemError", r
        assert r["errno"] == errno.ENOSPC, r
        message = str(r["message"])
        assert what in message, r
        assert f"{fs} has no room for {size} bytes (ENOSPC)" in message, r
        assert r["dev_shm"] == ["filler"], r
        assert r["small"] == ["existing", "filler"], r
        assert r["existing_size"] == 4096, r
        assert r["registry"] == [], r


# ============================================= item 8: forged liveness fields in a header

RING_PEER = Path(__file__).parent / "peers" / "ring_peer.py"
#: Header fields (byte offsets into /dev/shm/NAME), as aioipc/_ring.py documents them.
OFF_HEAD, OFF_PPID, OFF_PSTATE = 64, 72, 76
OFF_TAIL, OFF_CPID, OFF_CSTATE = 128, 136, 140

#: A co-writer: another process that writes u32 values into rings' headers.
FORGER = """
    import mmap, struct, sys
    args = sys.argv[1:]
    for name, offset, value in zip(args[::3], args[1::3], args[2::3]):
        with open("/dev/shm" + name, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
            struct.pack_into("<I", mm, int(offset), int(value))
"""

#: (field, value): what the co-writer writes into the watched peer's pid or state.
FORGERIES = [
    ("pid", 2**31),
    ("pid", 2**32 - 1),
    ("pid", 0),
    ("pid", 1),
    ("state", 0),
    ("state", 7),
]


def forge(writes: list[tuple[str, int, int]]) -> None:
    """Have a co-writer process write ``(ring, offset, u32)`` into ring headers. (A
    process of its own: closing a file descriptor of a ring in this process would drop
    this process's POSIX record locks on it, which the test is not about.)"""
    args = [str(x) for w in writes for x in w]
    done = run_child(FORGER, *args)
    assert done.returncode == 0, done.stderr


class Waiting:
    """A call run in a task: what it returned or raised, and when it ended."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.value: object = None
        self.done = anyio.Event()

    async def run(self, call: Callable[[], Awaitable[object]]) -> None:
        try:
            self.value = await call()
        except BaseException as exc:
            self.error = exc
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
        finally:
            self.done.set()


async def kill_and_collect(
    peer: Peer, calls: list[Callable[[], Awaitable[object]]], bound: float
) -> list[Waiting]:
    """Start every call, wait until they all wait, SIGKILL ``peer``; then give them
    ``bound`` seconds to end (those still waiting are cancelled and say so)."""
    outcomes = [Waiting() for _ in calls]
    async with anyio.create_task_group() as tg:
        for outcome, call in zip(outcomes, calls, strict=True):
            tg.start_soon(outcome.run, call)
        await anyio.wait_all_tasks_blocked()
        await peer.kill()
        with anyio.move_on_after(bound):
            for outcome in outcomes:
                await outcome.done.wait()
        tg.cancel_scope.cancel()
    return outcomes


def check_broken(outcomes: list[Waiting], cases: list[object], pid: int) -> None:
    """Every call raised BrokenResourceError naming the real (killed) pid."""
    wrong = []
    for case, outcome in zip(cases, outcomes, strict=True):
        error = outcome.error
        if not isinstance(error, anyio.BrokenResourceError):
            wrong.append(f"{case}: {error!r} (returned {outcome.value!r})")
        elif f"pid {pid}" not in str(error):
            wrong.append(f"{case}: {error} does not name pid {pid}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.asyncio
async def test_forged_sender_pid_or_state_never_hides_a_killed_sender(
    new_ring: Callable[[], str],
) -> None:
    """A co-writer sets the sender's pid to 2**31, 2**32-1, 0 or 1, or its state to 0
    or 7; the real sender is SIGKILLed: every waiting receiver gets BrokenResourceError
    naming the real pid within seconds. (Before: a raw OverflowError from pidfd_open for
    pids >= 2**31; a receive that waited for ever for the others.) One more ring, with
    nothing forged, whose sender lost its POSIX lock (it opened and closed the region
    file itself) before it was killed: noticed too, by the periodic lock check. And
    one whose receiver first looks after the kill, its sender's state forged to 0."""
    names = [new_ring() for _ in range(len(FORGERIES) + 2)]
    async with contextlib.AsyncExitStack() as stack:
        rxs = [await stack.enter_async_context(ShmReceiver.create(name, 4096)) for name in names]
        peer = await stack.enter_async_context(
            spawn([PYTHON, str(RING_PEER), "hold-ends", "sender", *names])
        )
        await peer.expect("ready")
        for rx in rxs:
            assert rx.receive_nowait() == b"hello"
        await peer.tell(f"stale {names[-2]}")
        await peer.expect("stale False")
        writes = [
            (name, OFF_PPID if field == "pid" else OFF_PSTATE, value)
            for name, (field, value) in zip(names, FORGERIES, strict=False)
        ]
        forge([*writes, (names[-1], OFF_PSTATE, 0)])
        waiting = [rx.receive for rx in rxs[:-1]]
        outcomes = await kill_and_collect(peer, waiting, bound=5)
        check_broken(outcomes, [*FORGERIES, "POSIX lock lost"], peer.pid)
        # The last receiver looks only now: the sender is dead and its state says
        # "none yet", but a state never goes back to that once the sender sent.
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError, match="died"):
            await rxs[-1].receive()


@pytest.mark.asyncio
async def test_forged_receiver_pid_or_state_never_hides_a_killed_receiver(
    new_ring: Callable[[], str],
) -> None:
    """The same from a sender waiting on a full ring: the co-writer forges the
    receiver's pid or state, the receiver is SIGKILLed, every waiting send raises
    BrokenResourceError naming the real pid; single- and multi-producer rings."""
    cases = [(multi, forgery) for multi in (False, True) for forgery in FORGERIES]
    names = [new_ring() for _ in cases]
    async with contextlib.AsyncExitStack() as stack:
        txs = [
            await stack.enter_async_context(ShmSender.create(name, 4096, multi_producer=multi))
            for name, (multi, _) in zip(names, cases, strict=True)
        ]
        peer = await stack.enter_async_context(
            spawn([PYTHON, str(RING_PEER), "hold-ends", "receiver", *names])
        )
        await peer.expect("ready")
        for tx in txs:
            while True:
                try:
                    tx.send_nowait(b"x" * 24)
                except anyio.WouldBlock:
                    break
        forge(
            [
                (name, OFF_CPID if field == "pid" else OFF_CSTATE, value)
                for name, (_, (field, value)) in zip(names, cases, strict=True)
            ]
        )
        sends = [partial(tx.send, b"y" * 24) for tx in txs]
        outcomes = await kill_and_collect(peer, sends, bound=5)
        check_broken(outcomes, cases, peer.pid)


# ====================================== item 1: who can crash a ring, and who cannot

NOBODY = 65534

AS_NOBODY = """
    import json, os, sys
    from aioipc.shm import ShmReceiver, ShmSender, is_stale
    region = "/dev/shm" + sys.argv[1]
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # from here on, another uid with no capabilities
    out = {}
    for what, call in {
        "ShmReceiver.open": lambda: ShmReceiver.open(sys.argv[1]),
        "ShmSender.open": lambda: ShmSender.open(sys.argv[1]),
        "is_stale": lambda: is_stale(sys.argv[1]),
        "open for writing": lambda: os.open(region, os.O_RDWR),
        "open for reading": lambda: os.open(region, os.O_RDONLY),
        "truncate": lambda: os.truncate(region, 0),
    }.items():
        try:
            call()
            out[what] = "allowed"
        except Exception as exc:
            out[what] = [type(exc).__name__, isinstance(exc, PermissionError), str(exc)]
    print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid a child to nobody")
@pytest.mark.asyncio
async def test_another_uid_cannot_open_or_truncate_a_0600_ring(
    new_ring: Callable[[], str],
) -> None:
    """With the default mode 0600 only the owner's uid (and root) can open the ring's
    file at all: another uid can neither attach, nor open the file, nor truncate it,
    and the ring keeps working."""
    name = new_ring()
    async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
        await tx.send(b"before")
        done = run_child(AS_NOBODY, name)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        for what, got in out.items():
            assert got != "allowed", f"uid {NOBODY} could {what}"
            assert got[1] is True, f"{what}: {got}"  # a PermissionError
        assert out["ShmReceiver.open"][0] == "IPCPermissionError", out
        assert name in out["ShmReceiver.open"][2], out
        assert os.stat("/dev/shm" + name).st_size == 4096 + 4096
        await tx.send(b"after")
        assert [await rx.receive(), await rx.receive()] == [b"before", b"after"]


SLEEPING_RECEIVER = """
    import sys
    import anyio
    from aioipc.shm import ShmReceiver

    async def main():
        rx = ShmReceiver.create(sys.argv[1], 4096)
        async with anyio.create_task_group() as tg:
            tg.start_soon(rx.receive)
            await anyio.wait_all_tasks_blocked()  # trio: the receive is asleep
            print("asleep", flush=True)
            await anyio.sleep_forever()  # until killed

    anyio.run(main, backend="trio")
"""


@pytest.mark.parametrize("size", [0, 4096])
def test_same_uid_truncation_kills_a_receiver_with_sigbus(
    new_ring: Callable[[], str], size: int
) -> None:
    """The documented limit: a process with write access to a ring's file (the owner's
    uid) that truncates it crashes the ends with SIGBUS, which Python cannot catch.
    Here: the ring cut to 0 bytes, or to its header with a message announced in it, and
    the receiver's doorbell rung (all without mapping the ring in this process)."""
    name = new_ring()
    region, bell_data, _ = ("/dev/shm" + name + s for s in ("", ".bell-data", ".bell-space"))
    with child(SLEEPING_RECEIVER, name) as receiver:
        assert read_line(receiver) == "asleep"
        fd = os.open(region, os.O_RDWR)
        try:
            # A message of 8 bytes at the start of the data, published (head = 16).
            os.pwrite(fd, struct.pack("<Q", 8 | 1 << 32), 4096)
            os.pwrite(fd, struct.pack("<Q", 16), OFF_HEAD)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        bell = os.open(bell_data, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(bell, b"\x01")
        finally:
            os.close(bell)
        assert receiver.wait(timeout=CHILD_LIMIT) == -signal.SIGBUS
    aioipc.shm.unlink(name)


def test_forged_values_anywhere_give_protocol_errors_never_a_crash(
    new_ring: Callable[[], str],
) -> None:
    """A co-writer writes a random value into a header field or over a record of a
    ring in use (a fresh ring each round): each call of either end returns (a forged
    message is a message too) or raises one of the documented errors; never another
    exception, never an access outside the mapping."""
    name = new_ring()
    capacity = 4096
    rnd = random.Random(10)
    fields = [0, 8, 12, 16, 24, OFF_HEAD, OFF_PPID, OFF_PSTATE, OFF_TAIL, OFF_CPID]
    fields += [OFF_CSTATE, 192, 256]
    allowed = (
        aioipc.ProtocolError,
        anyio.WouldBlock,
        anyio.BrokenResourceError,
        anyio.EndOfStream,
    )
    seen: dict[str, int] = {}
    for i in range(400):
        with (
            contextlib.closing(ShmReceiver.create(name, capacity)) as rx,
            contextlib.closing(ShmSender.open(name)) as tx,
            open("/dev/shm" + name, "r+b") as f,
            mmap.mmap(f.fileno(), 0) as mm,
        ):
            # Some traffic first, so that head, tail and the records are anywhere.
            for _ in range(rnd.randint(0, 200)):
                with contextlib.suppress(anyio.WouldBlock):
                    tx.send_nowait(rnd.randbytes(rnd.randint(0, 100)))
                if rnd.random() < 0.5:
                    with contextlib.suppress(anyio.WouldBlock):
                        rx.receive_nowait()
            where = rnd.random()
            if where < 0.4:
                offset = rnd.choice(fields)
            elif where < 0.7:  # the record the receiver reads next
                offset = 4096 + int.from_bytes(mm[OFF_TAIL : OFF_TAIL + 8], "little") % capacity
            else:
                offset = 4096 + rnd.randrange(0, capacity, 8)  # a record word, perhaps
            width = rnd.choice([4, 8])
            value = rnd.choice([0, 1, 2, 7, 2**31, 2**32 - 1, 2**63, 2**64 - 1])
            value = rnd.choice([value, rnd.getrandbits(8 * width)]) % (1 << 8 * width)
            mm[offset : offset + width] = value.to_bytes(width, "little")
            calls: list[Callable[[], object]] = [
                rx.receive_nowait,
                lambda: tx.send_nowait(b"x" * rnd.randint(0, 200)),
                rx.receive_nowait,
            ]
            for call in calls:
                try:
                    call()
                except allowed as exc:
                    seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
                except Exception as exc:
                    pytest.fail(f"round {i}: +{offset} = {value:#x}: {exc!r}")
    assert seen.get("ProtocolError", 0) > 50, seen


def classic_locks(path: str) -> list[tuple[int, int, int]]:
    """``(pid, start, end)`` of the classic POSIX record locks on ``path`` (/proc/locks)."""
    ino = os.stat(path).st_ino
    found = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if fields[1] == "POSIX" and fields[5].rsplit(":", 1)[-1] == str(ino):
                found.append((int(fields[4]), int(fields[6]), int(fields[7])))
    return found


RETAKING_RECEIVER = """
    import sys
    import anyio
    from aioipc.shm import ShmReceiver, is_stale

    async def main():
        rx = ShmReceiver.open(sys.argv[1])
        print("attached", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        print("stale", is_stale(sys.argv[1]), flush=True)  # closes a region fd
        await anyio.to_thread.run_sync(sys.stdin.readline)
        async with anyio.create_task_group() as tg:
            tg.start_soon(rx.receive)
            await anyio.wait_all_tasks_blocked()  # trio: the receive is asleep
            print("asleep", flush=True)
            await anyio.sleep_forever()  # until killed

    anyio.run(main, backend="trio")
"""


@pytest.mark.asyncio
async def test_an_end_takes_its_pid_lock_back_after_its_process_closed_the_file(
    new_ring: Callable[[], str],
) -> None:
    """Each end holds a classic POSIX lock on a byte of its own (receiver 8), which the
    peer asks the kernel about to learn which process to watch. A process loses those
    locks when it closes any descriptor of the file (here: is_stale); the end takes its
    lock back before it next sleeps. And a killed receiver still wakes a waiting send."""
    name = new_ring()
    region = "/dev/shm" + name
    async with ShmSender.create(name, 4096) as tx:
        with child(RETAKING_RECEIVER, name) as receiver:
            assert read_line(receiver) == "attached"
            assert (receiver.pid, 8, 8) in classic_locks(region)
            tell(receiver, "stale")
            assert read_line(receiver) == "stale False"
            assert not [lock for lock in classic_locks(region) if lock[0] == receiver.pid]
            tell(receiver, "sleep")
            assert read_line(receiver) == "asleep"
            assert (receiver.pid, 8, 8) in classic_locks(region)
            while True:
                try:
                    tx.send_nowait(b"x" * 24)
                except anyio.WouldBlock:
                    break
            outcome = Waiting()
            async with anyio.create_task_group() as tg:
                tg.start_soon(outcome.run, partial(tx.send, b"y" * 24))
                await anyio.wait_all_tasks_blocked()
                receiver.kill()
                assert receiver.wait(timeout=CHILD_LIMIT) == -signal.SIGKILL
                with anyio.fail_after(5):
                    await outcome.done.wait()
            assert isinstance(outcome.error, anyio.BrokenResourceError), outcome.error
            assert f"pid {receiver.pid}" in str(outcome.error)


SQUATTER = """
    import fcntl, os, struct, sys
    fd = os.open("/dev/shm" + sys.argv[1], os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hh4xqqi4x", fcntl.F_WRLCK, 0, 9, 1, 0))
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_process_holding_an_ends_pid_lock_byte_keeps_it_from_attaching(
    new_ring: Callable[[], str],
) -> None:
    """Something that is not an aioipc end holds the sender's pid lock byte (9): a
    sender would let the receiver watch the wrong process, so it is refused."""
    name = new_ring()
    with contextlib.closing(ShmReceiver.create(name, 4096)) as rx:
        with child(SQUATTER, name) as squatter:
            assert read_line(squatter) == "holding"
            with pytest.raises(anyio.BusyResourceError) as info:
                ShmSender.open(name)
            assert f"pid {squatter.pid} holds the sender's lock byte 9" in str(info.value)
            assert name in str(info.value)
        with contextlib.closing(ShmSender.open(name)) as tx:  # the squatter is gone
            tx.send_nowait(b"fine")
            assert rx.receive_nowait() == b"fine"


READ_ONLY_LOCKER = """
    import fcntl, os, struct, sys
    fd = os.open("/dev/shm" + sys.argv[1], os.O_RDONLY)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # another uid, which the ring's mode 0644 lets read
    # The receiver's attach byte (an OFD read lock: an fd open for reading is enough).
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hh4xqqi4x", fcntl.F_RDLCK, 0, 0, 1, 0))
    print("holding", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid a child to nobody")
def test_a_reader_of_a_0644_ring_can_keep_a_receiver_out(new_ring: Callable[[], str]) -> None:
    """What security.md says of read access: a process that can only read the ring's
    file can still take the lock bytes, here the receiver's, and no receiver attaches."""
    name = new_ring()
    with contextlib.closing(ShmSender.create(name, 4096, mode=0o644)):
        with child(READ_ONLY_LOCKER, name) as locker:
            assert read_line(locker) == "holding"
            with pytest.raises(anyio.BusyResourceError, match="another receiver"):
                ShmReceiver.open(name)
        with contextlib.closing(ShmReceiver.open(name)):  # the locker is gone
            pass
