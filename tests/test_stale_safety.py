"""What ``aioipc rm --stale`` must never remove, and what ``aioipc ls`` must survive,
with real kernel objects and real processes: forged registry entries, objects of another
IPC namespace, names reused between the scan and the removal, listeners and waiters the
obvious checks miss, processes that cannot be inspected, paths that are not UTF-8.

Each began as a failing test in a review of the registry. They only ever remove what
they made, and ``rm --stale`` is run in-process on the kinds a test made, so that nothing
of another run of the suite can be touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import sysv_ipc

from aioipc import fifo
from aioipc._cli.inventory import scan
from aioipc._cli.rm import RemoveError, remove, remove_stale
from aioipc._core import libc as _libc
from aioipc._core import registry as _registry

LIMIT = 30
NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _name() -> str:
    return f"/aioipc-review-{uuid4().hex[:10]}"


def _run(script: str, *args: str, cwd: str | None = None) -> str:
    """Run a Python script to completion; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait(LIMIT)
    return proc.pid


def _forge(directory: Path, uid: int, kind: str, ident: str, st: os.stat_result) -> Path:
    """An entry, as a registry's owner can write any it likes: creator dead."""
    body = {
        "version": 1,
        "kind": kind,
        "ident": ident,
        "uid": uid,
        "pid": _dead_pid(),
        "start": 1,
        "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "time": 0.0,
        "key": None,
        "dev": st.st_dev,
        "ino": st.st_ino,
    }
    path = directory / _registry._entry_name(kind, ident)
    path.write_text(json.dumps(body))
    os.chown(path, uid, uid)
    return path


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="aioipc-rv-"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


# -- (1) rm --stale removes what it must not ----------------------------------------------


@root_only
def test_root_trusts_no_entry_of_another_user_for_an_object_it_does_not_own(
    monkeypatch: pytest.MonkeyPatch, tmpdir_short: Path
) -> None:
    # The machine's /dev/shm, but the registry directories of a directory of ours.
    monkeypatch.delenv(_registry.ENV)
    monkeypatch.setattr(_registry, "SHM_DIR", str(tmpdir_short))
    planted = tmpdir_short / f"{_registry.PREFIX}{NOBODY}"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    name = _name()
    path = f"/dev/shm{name}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # root's, not aioipc's
    try:
        _forge(planted, NOBODY, "posix-shm", name, os.fstat(fd))
        os.close(fd)
        fd = -1
        remove_stale(scan(["posix-shm"]))
        assert os.path.exists(path), "root's object was removed on nobody's word"
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@root_only
def test_an_entry_from_another_ipc_namespace_vouches_for_nothing_here() -> None:
    host = sysv_ipc.MessageQueue(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX)  # not aioipc's
    try:
        made = _run(
            """
            import ctypes, os, sys
            from aioipc import sysv
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.unshare(0x08000000) == 0  # CLONE_NEWIPC
            with open("/proc/sys/kernel/msg_next_id", "w") as f:
                f.write(sys.argv[1])
            q = sysv.MessageQueue.create(0, remove_on_close=False)
            print(q.id, flush=True)
            os._exit(0)  # the namespace, and the queue in it, go with us
            """,
            str(host.id),
        )
        assert int(made) == host.id
        remove_stale(scan(["sysv-msg"]))
        assert any(
            line.split()[1] == str(host.id)
            for line in Path("/proc/sysvipc/msg").read_text().splitlines()[1:]
        ), "rm --stale removed a queue aioipc did not make"
    finally:
        with contextlib.suppress(sysv_ipc.Error):
            host.remove()
        _registry.forget("sysv-msg", str(host.id))


def test_rm_stale_leaves_an_object_made_again_under_the_name_since_the_scan() -> None:
    name = _name()
    path = f"/dev/shm{name}"
    _run(
        """
        import sys
        from aioipc import posix
        posix.SharedMemory.create(sys.argv[1], 64).close()  # left behind, creator gone
        """,
        name,
    )
    fd = -1
    try:
        found = scan(["posix-shm"])
        assert [r.stale for r in found.rows if r.name == name] == [True]
        # Somebody else removes it and makes a new one under the same name.
        os.unlink(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        remove_stale(found)
        assert os.path.exists(path), "the new object was removed"
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _registry.forget("posix-shm", name)


def test_a_live_listener_bound_by_a_relative_path_is_not_stale(tmpdir_short: Path) -> None:
    # The creator binds, hands its listener to a child (a pre-forking server) and exits.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import os, sys, anyio
                from aioipc import unix
                async def main():
                    listener = await unix.listen("rel.sock")
                    if os.fork() == 0:
                        print("ready", flush=True)
                        sys.stdin.read()  # holds the listener until stdin closes
                        os._exit(0)
                    os._exit(0)  # the creator dies; its listener lives on in the child
                anyio.run(main)
                """
            ),
        ],
        cwd=tmpdir_short,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    path = str(tmpdir_short / "rel.sock")
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.wait(LIMIT)  # the creator, reaped
        [row] = [r for r in scan(["unix-socket"]).rows if r.name == path]
        assert row.pid == proc.pid
        assert row.alive is False
        assert row.stale is not True, row.why
    finally:
        proc.stdin.close()  # the child lets go and exits
        proc.stdout.read()  # EOF once the child is gone
        proc.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _registry.forget("unix-socket", path)


@root_only
def test_a_user_does_not_remove_what_a_process_it_cannot_see_holds(tmpdir_short: Path) -> None:
    os.chown(tmpdir_short, NOBODY, NOBODY)
    os.chmod(tmpdir_short, 0o700)
    registry = str(tmpdir_short / "registry")
    name = _name()
    path = f"/dev/shm{name}"
    as_nobody = f"""
        import os, sys
        from aioipc import posix
        from aioipc._cli.inventory import scan
        from aioipc._cli.rm import RemoveError, remove, remove_stale
        os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})  # after the imports
        os.environ["AIOIPC_REGISTRY"] = {registry!r}
    """
    _run(as_nobody + "    posix.SharedMemory.create(sys.argv[1], 64).close()\n", name)
    fd = os.open(path, os.O_RDWR)  # a root process (this one) uses it
    try:
        _run(as_nobody + "    print(remove_stale(scan(['posix-shm'])))\n")
        assert os.path.exists(path), "removed while a root process has it open"
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_a_set_with_a_process_waiting_on_it_is_not_stale() -> None:
    key = int(uuid4().hex[:7], 16) | 0x10000000
    _run(
        """
        import sys, anyio
        from aioipc import sysv
        async def main():
            s = sysv.SemaphoreSet.create(int(sys.argv[1]), 1)  # value 0, kept on close
            await s.aclose()
        anyio.run(main)
        """,
        str(key),
    )
    sid = sysv_ipc.Semaphore(key).id
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, sysv_ipc\n"
            "try:\n    sysv_ipc.Semaphore(int(sys.argv[1])).acquire()\n"
            "except sysv_ipc.ExistentialError:\n    sys.exit(3)\n",
            str(key),
        ]
    )
    try:
        # Wait (by the kernel's count, no sleeping) until it is blocked in semop.
        while _libc.semctl(sid, 0, _libc.GETNCNT) == 0:
            assert waiter.poll() is None
            os.sched_yield()
        remove_stale(scan(["sysv-sem"]))
        assert waiter.poll() is None, "the waiter was woken by the set's removal"
        assert sysv_ipc.Semaphore(key).id == sid
    finally:
        with contextlib.suppress(sysv_ipc.Error):
            sysv_ipc.Semaphore(key).remove()
        waiter.wait(LIMIT)
        _registry.forget("sysv-sem", str(sid))


# -- (2) recording must never make a create fail ------------------------------------------


def test_recording_a_path_that_is_not_utf8_never_fails_the_create(tmpdir_short: Path) -> None:
    path = os.path.join(tmpdir_short, os.fsdecode(b"\xff.fifo"))
    try:
        fifo.create(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(UnicodeEncodeError):
            _registry.forget("fifo", path)


# -- (4) ls on odd machine state ----------------------------------------------------------


@root_only
@pytest.mark.parametrize("where", ["maps", "unix"])
def test_ls_survives_paths_that_are_not_utf8(where: str, tmpdir_short: Path) -> None:
    # In namespaces of its own (pid + /proc, network), so that no other aioipc ls on this
    # machine ever sees the odd path.
    bad = os.fsencode(tmpdir_short) + b"/\xff"
    script = textwrap.dedent(
        """
        import mmap, os, socket, subprocess, sys
        bad = os.fsencode(sys.argv[1])
        if sys.argv[2] == "unix":
            s = socket.socket(socket.AF_UNIX)
            s.bind(bad)
            holder = None
        else:
            with open(bad, "wb") as f:
                f.write(b"x" * 4096)
            holder = subprocess.Popen(
                [sys.executable, "-c",
                 "import mmap, sys; f = open(sys.argv[1], 'rb'); "
                 "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
                 "print('ready', flush=True); sys.stdin.read()", sys.argv[1]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline() == "ready\\n"
        done = subprocess.run([sys.executable, "-m", "aioipc", "ls", "--kind", "sysv-msg"],
                              capture_output=True, text=True)
        sys.stderr.write(done.stderr[-300:])
        if holder is not None:
            holder.stdin.close()
            holder.wait()
        os.unlink(bad)
        sys.exit(done.returncode)
        """
    )
    done = subprocess.run(
        [
            "unshare",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            script,
            os.fsdecode(bad),
            where,
        ],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("bad", ["nested", "nul"])
def test_ls_survives_malformed_entries(bad: str) -> None:
    directory = _registry.directory()
    assert directory is not None
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if bad == "nested":
        path = Path(directory, f"fifo.{'0' * 32}.json")
        path.write_text("[" * 3000)
    else:
        ident = "/tmp/\0x"
        path = Path(directory, _registry._entry_name("fifo", ident))
        path.write_text(json.dumps({"kind": "fifo", "ident": ident, "pid": 1}))
    try:
        scan(["fifo"])
    finally:
        path.unlink()


def test_removing_a_fifo_never_follows_a_directory_swapped_for_a_link(
    tmpdir_short: Path,
) -> None:
    real = tmpdir_short / "real"
    real.mkdir()
    path = real / "jobs"
    _run(
        """
        import sys
        from aioipc import fifo
        fifo.create(sys.argv[1])  # left behind, creator gone
        """,
        str(path),
    )
    found = scan(["fifo"])
    [row] = [r for r in found.rows if r.name == str(path)]
    assert row.stale is not None
    # Between the scan and the removal, the directory becomes a link to another one that
    # holds a file of the same name (which, on a hard link's word, even has the inode).
    victim_dir = tmpdir_short / "victim"
    victim_dir.mkdir()
    os.link(path, victim_dir / "jobs")
    real.rename(tmpdir_short / "moved")
    real.symlink_to(victim_dir)
    try:
        with pytest.raises(RemoveError, match="jobs"):
            remove(row, force=True)  # forced: whether it is stale here does not matter
        assert os.path.lexists(victim_dir / "jobs"), "removed through a symlink"
    finally:
        _registry.forget("fifo", str(path))


def test_posix_semaphore_open_or_create_records_what_it_made_with_exact_mode() -> None:
    from aioipc import posix

    name = _name()
    old = os.umask(0o077)
    try:
        made = posix.Semaphore.open_or_create(name, 2, mode=0o660)
    finally:
        os.umask(old)
    try:
        assert stat_mode(f"/dev/shm/sem.{name[1:]}") == 0o660
        [entry] = [e for e in _registry.entries() if e.ident == name]
        assert (entry.kind, entry.pid) == ("posix-sem", os.getpid())
        again = posix.Semaphore.open_or_create(name, 5)  # opens: no second entry
        assert again.value == 2
        import anyio

        anyio.run(again.aclose)
        assert len([e for e in _registry.entries() if e.ident == name]) == 1
    finally:
        made.unlink()
        import anyio

        anyio.run(made.aclose)
    assert not [e for e in _registry.entries() if e.ident == name]


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777
