"""Review of the issue-10 work outside the fd streams: what a hostile tester still broke.

Each test here failed on the merged issue-10 code (the failure is in its docstring) and
guards the fix beside it. Real kernel objects and real processes; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aioipc import AnonymousMemory, IPCPermissionError, sysv
from aioipc._core.check import LONG_MAX
from aioipc.shm import ShmReceiver, ShmSender
from aioipc.url import parse_url

from ._rings import existing

CLI = [sys.executable, "-m", "aioipc"]
LIMIT = 30  # seconds any one process may take

# ------------------------------------------------- rings: a capacity the file cannot hold

#: The largest multiple of 8 a C long holds: a valid capacity by the old check, but the
#: ring's file (header + capacity) would be larger than any off_t.
HUGE_CAPACITY = LONG_MAX - 7


@pytest.mark.parametrize("end", [ShmReceiver, ShmSender])
def test_a_ring_capacity_beyond_what_a_file_can_hold_is_a_value_error(
    end: type[ShmReceiver] | type[ShmSender], new_ring: Callable[[], str]
) -> None:
    """Before: a raw ``OverflowError: Python int too large to convert to C long`` from
    posix_fallocate, since capacity was checked against LONG_MAX but the file is the
    4096-byte header plus the capacity."""
    name = new_ring()
    with pytest.raises(ValueError, match="capacity") as info:
        end.create(name, HUGE_CAPACITY)
    assert name in str(info.value)
    assert not existing(name)


def test_recv_on_a_ring_url_with_such_a_capacity_is_one_error_line(
    new_ring: Callable[[], str],
) -> None:
    """Before: ``aioipc recv shm://NAME?capacity=9223372036854775800`` printed a Python
    traceback (OverflowError) and exited 1."""
    name = new_ring()
    done = subprocess.run(
        [*CLI, "recv", f"shm://{name}?capacity={HUGE_CAPACITY}", "--timeout", "5"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=LIMIT,
    )
    text = done.stderr.decode()
    assert "Traceback" not in text, text
    assert done.returncode == 2, text
    assert text.count("\n") == 1, text
    assert text.startswith("aioipc: error: "), text
    assert "capacity" in text
    assert not existing(name)


# ----------------------------------------- AnonymousMemory.from_fd and the caller's fd


def test_from_fd_refusing_a_read_only_memfd_leaves_the_fd_to_its_caller() -> None:
    """from_fd's docstring: "the region owns fd once it is mapped (a refused fd stays
    the caller's)". Before: a memfd opened read-only could not be mapped writable
    (EACCES) and from_fd closed it anyway, so a caller that then closed its fd closed
    whatever descriptor had been given that number meanwhile."""
    memfd = os.memfd_create("aioipc-review", os.MFD_CLOEXEC)
    try:
        os.ftruncate(memfd, 4096)
        read_only = os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(IPCPermissionError, match="anonymous shared memory"):
                AnonymousMemory.from_fd(read_only)
            os.fstat(read_only)  # still open: the caller's to close
        finally:
            os.close(read_only)
    finally:
        os.close(memfd)


# ------------------------------------------------------ SysV: sizes that reach ctypes


@pytest.mark.asyncio
@pytest.mark.parametrize("max_size", [1.5, "8", True])
async def test_a_receive_max_size_that_is_not_an_int_is_a_type_error(max_size: object) -> None:
    """Before: ``max_size=1.5`` went on to msgrcv and a ``ctypes.ArgumentError`` escaped
    (item 9: no ctypes error may reach the caller); ``True`` was taken for 1."""
    q = sysv.MessageQueue.create()
    try:
        q.send_nowait(b"kept")
        with pytest.raises(TypeError, match="max_size"):
            q.receive_message_nowait(max_size=max_size, truncate=True)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="max_size"):
            with anyio.fail_after(5):
                await q.receive(max_size=max_size, truncate=True)  # type: ignore[arg-type]
        assert q.current_messages == 1  # nothing was taken
    finally:
        q.remove()
        await q.aclose()


def test_a_semaphore_set_size_beyond_semmsl_is_refused_before_any_allocation() -> None:
    """Before: ``SemaphoreSet.create(size=2**40)`` built a list of 2**40 values first and
    raised a raw MemoryError (and ``size=2**31`` made Python fill 16 GiB before semget
    refused it). Now the size is checked against semmsl first, as semget would."""
    with open("/proc/sys/kernel/sem") as f:
        semmsl = int(f.read().split()[0])
    for size in (semmsl + 1, 2**40):
        with pytest.raises(ValueError, match="semmsl") as info:
            sysv.SemaphoreSet.create(size=size)
        assert str(size) in str(info.value)
    with pytest.raises(ValueError, match="size"):
        sysv.SemaphoreSet.create(size=0)
    with pytest.raises(TypeError, match="size"):
        sysv.SemaphoreSet.create(size=2.0)  # type: ignore[arg-type]


# ------------------------------------------------------------ URLs: the SysV key


@pytest.mark.parametrize("key", ["0o17", "0b11", "1_7", "010", "+5", "0x_1"])
def test_a_sysvmq_key_is_decimal_or_0x_hex_as_documented(key: str) -> None:
    """urls.md: "KEY is decimal or 0x hex", and integers are refused in other forms
    (010, 1_000, +5). Before: the key was read with ``int(text, 0)``, so sysvmq://0o17,
    0b11 and 1_7 opened the queues with keys 15, 3 and 17."""
    with pytest.raises(ValueError, match="key"):
        parse_url(f"sysvmq://{key}")


@pytest.mark.parametrize(("key", "value"), [("17", 17), ("0x11", 17), ("-5", -5)])
def test_sysvmq_keys_in_the_documented_forms_still_parse(key: str, value: int) -> None:
    assert int(parse_url(f"sysvmq://{key}").path, 0) == value


# ------------------------------------------ one wording for "out of file descriptors"

EMFILE_WORDING = """
    import os, resource, sys
    from aioipc import AnonymousMemory, IPCError, posix

    queue, semaphore = sys.argv[1], sys.argv[2]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    held = []
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            break
    calls = {
        "POSIX message queue " + queue: lambda: posix.MessageQueue.open(queue),
        "POSIX semaphore " + semaphore: lambda: posix.Semaphore.open(semaphore),
        "anonymous shared memory": lambda: AnonymousMemory.create(4096),
    }
    for what, call in calls.items():
        try:
            call()
        except IPCError as exc:
            assert exc.strerror.startswith(what + ": "), exc.strerror
            print(exc.errno, exc.strerror[len(what) + 2 :], flush=True)
"""


@pytest.mark.asyncio
async def test_out_of_descriptors_is_said_the_same_way_by_posix_objects_and_the_rest() -> None:
    """errors.fd_limit_reason is the one wording of EMFILE (merge abd7657); before,
    _posix_base said it its own way ("this process has RLIMIT_NOFILE (ulimit -n) = 64
    descriptors open already (too many open files)" against "this process has no file
    descriptor left (RLIMIT_NOFILE = 64, ulimit -n; EMFILE)")."""
    from aioipc import posix

    tag = os.urandom(6).hex()
    queue = posix.MessageQueue.create(f"/aioipc-test-review-mq-{tag}")
    semaphore = posix.Semaphore.create(f"/aioipc-test-review-sem-{tag}", 1)
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(EMFILE_WORDING), queue.name, semaphore.name],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
    finally:
        queue.unlink()
        await queue.aclose()
        semaphore.unlink()
        await semaphore.aclose()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert len(set(lines)) == 1, lines
    assert lines[0].startswith(f"{errno.EMFILE} "), lines
    assert "RLIMIT_NOFILE = 64" in lines[0], lines


def test_check_seconds_refuses_an_int_too_large_for_a_float() -> None:
    """check_seconds promises TypeError or ValueError; before, ``float(10**400)`` raised
    a raw OverflowError (no caller passes such an int yet: a latent hole in the one
    place every duration is checked)."""
    from aioipc._core.check import check_seconds

    with pytest.raises(ValueError, match="timeout"):
        check_seconds(10**400, "timeout")
    with pytest.raises(ValueError, match="timeout"):
        check_seconds(-(10**400), "timeout", allow_inf=True)


# ------------------------------------------ names the output encoding cannot hold


def test_ls_and_rm_survive_a_name_the_locale_cannot_encode() -> None:
    """Anyone can name a /dev/shm object with any text. Under a locale whose encoding
    cannot hold it (LANG=en_US.ISO-8859-1; here PYTHONIOENCODING=latin-1), before:
    ``aioipc ls`` died with a UnicodeEncodeError traceback from print() (stderr escapes
    what it cannot encode; stdout did not), and ``rm`` removed the object and then
    crashed saying so."""
    name = f"/aioipc-test-review-日本-{os.urandom(4).hex()}"
    path = "/dev/shm" + name
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    with open(path, "wb") as f:
        f.write(b"x")
    try:
        listed = subprocess.run(
            [*CLI, "ls", "--kind", "posix-shm"], capture_output=True, env=env, timeout=LIMIT
        )
        assert b"Traceback" not in listed.stderr, listed.stderr.decode()
        assert listed.returncode == 0, listed.stderr.decode()
        assert name.replace("日本", "\\u65e5\\u672c").encode() in listed.stdout
        removed = subprocess.run(
            [*CLI, "rm", "--force", "posix-shm", name], capture_output=True, env=env, timeout=LIMIT
        )
        assert b"Traceback" not in removed.stderr, removed.stderr.decode()
        assert removed.returncode == 0, removed.stderr.decode()
        assert b"removed posix-shm" in removed.stdout
        assert not os.path.exists(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# ----------------------------------------------- SysV owners: uids the kernel cannot hold


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["queue", "semaphore", "shm"])
@pytest.mark.parametrize("field", ["uid", "gid"])
async def test_sysv_owner_setters_refuse_ids_a_uid_t_cannot_hold(kind: str, field: str) -> None:
    """Before: ctypes cut the value to 32 bits, so ``q.uid = 2**40`` gave the queue to
    root (uid 0), ``2**32 + 65534`` to nobody, and ``True`` to uid 1 (the POSIX queue's
    setters checked them already)."""
    from aioipc._core.region import SysVSharedMemory

    obj: Any
    if kind == "queue":
        obj = sysv.MessageQueue.create()
    elif kind == "semaphore":
        obj = sysv.Semaphore.create()
    else:
        obj = SysVSharedMemory.create(sysv.IPC_PRIVATE, 4096)
    try:
        before = getattr(obj, field)
        for value in (2**40, 2**32 + 65534, -1):
            with pytest.raises(ValueError, match=field):
                setattr(obj, field, value)
        with pytest.raises(TypeError, match=field):
            setattr(obj, field, True)
        assert getattr(obj, field) == before
        setattr(obj, field, before)  # a real id is still taken
    finally:
        obj.remove()
        if kind == "shm":
            obj.close()
        else:
            await obj.aclose()
