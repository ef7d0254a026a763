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
import os
import select
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioipc
from aioipc import AnonymousMemory

PYTHON = sys.executable
#: Where the aioipc under test lives: children import the same one.
AIOIPC_ROOT = str(Path(aioipc.__file__).resolve().parent.parent)
#: A bound on every wait for a child process.
CHILD_LIMIT = 30


# --------------------------------------------------------------------------- helpers


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [AIOIPC_ROOT, env.get("PYTHONPATH")]))
    return env


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


@contextlib.contextmanager
def child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A child running ``code``; killed (if it still runs) and reaped on the way out."""
    proc = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CHILD_LIMIT)


def read_line(proc: subprocess.Popen[str], seconds: float = CHILD_LIMIT) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, f"no line from child {proc.pid} within {seconds} s"
    line = proc.stdout.readline()
    assert line, f"child {proc.pid} ended its output early: {proc.communicate()[1]}"
    return line.strip()


def tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def dev_shm_entries(prefix: str) -> list[str]:
    return sorted(p for p in os.listdir("/dev/shm") if p.startswith(prefix))


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
    name = f"/aioipc-test-emfile-{os.getpid()}-{id(tmp_path) & 0xFFFF:x}"
    records = json_lines(run_child(EMFILE_REGIONS, name, str(tmp_path)))
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
