"""The registry of the IPC objects aioipc created, for ``aioipc ls`` and ``aioipc rm --stale``.

The kernel does not say who created a POSIX object, a message queue or a semaphore set,
nor whether that process still runs, so aioipc writes it down: each object it creates
gets one small JSON entry naming the object, its creator's pid and the creator's start
time (pid plus start time names a process even after the pid is reused).

Where: one directory per user, ``/dev/shm/aioipc-registry-UID``, mode 0700. It lives on
the tmpfs that holds POSIX objects, so a reboot empties it together with every object it
describes. ``AIOIPC_REGISTRY=DIR`` puts it elsewhere (tests do, to stay apart from the
machine's own); ``AIOIPC_REGISTRY=off`` turns recording off.

How: an entry is written whole to a temporary name and renamed into place, so a reader
never sees half of one and creators never lock each other out. Its file name is the kind
plus a hash of the object's name or id, so creating an object under a name used before
replaces the old entry. The directory is removed when its last entry goes.

Trust: /dev/shm is writable by everyone, so a directory is used only if it is a real
directory (never a symlink) owned by the user it is for, with no group or other access;
anything else is ignored, and nothing is recorded there.

Recording never makes a create fail: a full /dev/shm or a planted directory means the
object is not marked as aioipc's, nothing worse. The module logs why at DEBUG level
(logger ``aioipc.registry``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "ENV",
    "Entry",
    "creator_alive",
    "directory",
    "entries",
    "forget",
    "ipc_namespace",
    "knows",
    "process_start",
    "record",
    "remove_entry",
]

ENV = "AIOIPC_REGISTRY"
SHM_DIR = "/dev/shm"
PREFIX = "aioipc-registry-"
_VERSION = 1
_ENTRY = re.compile(r"^[a-z-]+\.[0-9a-f]{32}\.json$")

log = logging.getLogger("aioipc.registry")


@dataclass(frozen=True)
class Entry:
    """One recorded object.

    ``ident``: the SysV id (decimal), the POSIX or ring name (``/name``), or the FIFO or
    socket path. ``key``: a SysV key. ``dev``/``ino``: the object's inode when it has
    one, so an entry never vouches for another object later made under the same name.
    ``pid``, ``start`` and ``pidns``: the creator, its start time (clock ticks after
    boot) and its pid namespace (inode of ``/proc/self/ns/pid``). ``ipcns``: the IPC
    namespace the object was made in (SysV ids and POSIX queues are per namespace).
    ``path``: the entry's own file.
    """

    kind: str
    ident: str
    uid: int
    pid: int
    start: int | None
    pidns: int | None
    time: float
    path: str
    key: int | None = None
    dev: int | None = None
    ino: int | None = None
    ipcns: int | None = None


# -- where ------------------------------------------------------------------------------


def directory(uid: int | None = None) -> str | None:
    """The registry directory of ``uid`` (default: this process's euid); None when off."""
    override = os.environ.get(ENV)
    if override is not None:
        if override.strip().lower() in ("", "0", "off", "no", "false"):
            return None
        return os.path.abspath(override)
    return os.path.join(SHM_DIR, f"{PREFIX}{os.geteuid() if uid is None else uid}")


def knows(uid: int) -> bool:
    """Whether this process can read ``uid``'s registry, so that an object of ``uid``
    without an entry was not made by aioipc (with recording on)."""
    override = os.environ.get(ENV)
    if directory() is None:
        return False
    if override is not None:
        return uid == os.geteuid()
    return uid == os.geteuid() or os.geteuid() == 0


def _all_directories() -> list[tuple[str, int]]:
    """Every registry directory this process may read, with the uid it belongs to."""
    override = os.environ.get(ENV)
    if override is not None:
        mine = directory()
        return [] if mine is None else [(mine, os.geteuid())]
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM_DIR):
            if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit():
                found.append((os.path.join(SHM_DIR, name), int(name[len(PREFIX) :])))
    return sorted(found)


def _open_trusted(path: str, uid: int) -> int | None:
    """An fd of the directory ``path`` if it is one we may trust for ``uid``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("registry %s not used: %s", path, exc)
        return None
    st = os.fstat(fd)
    if st.st_uid != uid or st.st_mode & 0o077:
        os.close(fd)
        log.debug(
            "registry %s not used: owner %d mode %04o (want owner %d, mode 0700)",
            path,
            st.st_uid,
            stat.S_IMODE(st.st_mode),
            uid,
        )
        return None
    return fd


KINDS = (
    "sysv-shm",
    "sysv-msg",
    "sysv-sem",
    "posix-shm",
    "posix-sem",
    "posix-mq",
    "shm-ring",
    "topic",
    "fifo",
    "unix-socket",
)
_PATH_KINDS = ("fifo", "unix-socket")


def _ident(kind: str, ident: str) -> str:
    return os.path.abspath(ident) if kind in _PATH_KINDS else ident


def _entry_name(kind: str, ident: str) -> str:
    # fsencode: a path that is not UTF-8 reaches us as a str with surrogates.
    return f"{kind}.{hashlib.sha256(os.fsencode(ident)).hexdigest()[:32]}.json"


# -- the creator ------------------------------------------------------------------------


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None if it does not exist
    or is a zombie (dead, waiting for its parent to collect its exit status)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])  # field 22 of proc(5), counted from field 3
    except (IndexError, ValueError):
        return None


def _namespace(kind: str) -> int | None:
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def ipc_namespace() -> int | None:
    """This process's IPC namespace (the inode of ``/proc/self/ns/ipc``)."""
    return _namespace("ipc")


_me: tuple[int, int | None, int | None, int | None] | None = None


def _creator() -> tuple[int, int | None, int | None, int | None]:
    """(pid, start time, pid namespace, IPC namespace) of this process."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:  # a forked child is a new creator (maybe unshared)
        _me = (pid, process_start(pid), _namespace("pid"), ipc_namespace())
    return _me


def creator_alive(entry: Entry) -> bool | None:
    """Whether the entry's creator still runs; None when this process cannot tell (it
    runs in another pid namespace, or the start time was not recorded)."""
    if entry.pidns is None or entry.start is None or entry.pidns != _namespace("pid"):
        return None
    return process_start(entry.pid) == entry.start


# -- writing ----------------------------------------------------------------------------


def record(
    kind: str,
    ident: str,
    *,
    key: int | None = None,
    st: os.stat_result | None = None,
) -> None:
    """Note that this process just created ``ident`` of ``kind``. Never raises."""
    try:
        _record(kind, ident, key, st)
    except Exception as exc:  # never the creator's problem; see the module docstring
        log.debug("%s %r not recorded: %r", kind, ident, exc)


def _record(kind: str, ident: str, key: int | None, st: os.stat_result | None) -> None:
    ident = _ident(kind, ident)
    path = directory()
    if path is None:
        return
    pid, start, pidns, ipcns = _creator()
    body = {
        "version": _VERSION,
        "kind": kind,
        "ident": ident,
        "uid": os.geteuid(),
        "pid": pid,
        "start": start,
        "pidns": pidns,
        "time": time.time(),
        "key": key,
        "dev": st.st_dev if st is not None else None,
        "ino": st.st_ino if st is not None else None,
        "ipcns": ipcns,
    }
    data = json.dumps(body).encode()
    name = _entry_name(kind, ident)
    # Twice: a forget() in another process may remove the directory (when it took the
    # last entry) between our check that it exists and our write.
    for _ in range(2):
        try:
            dfd = _own_directory(path)
            try:
                _write(dfd, name, data)
            finally:
                os.close(dfd)
            return
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.debug("%s %s not recorded in %s: %s", kind, ident, path, exc)
            return
    log.debug("%s %s not recorded: %s keeps disappearing", kind, ident, path)


def _own_directory(path: str) -> int:
    """A trusted fd of this user's registry directory ``path``, made if missing. (Not
    kept open between records: a library must not hold an fd its program does not know
    of; it would cost about 10 µs a create to reopen anyway.)"""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = _open_trusted(path, os.geteuid())
    if fd is None:
        if not os.path.lexists(path):  # removed by a forget() since our mkdir
            raise FileNotFoundError(path)
        raise PermissionError(f"registry directory {path} is not trusted")
    return fd


def _write(dfd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.{os.getpid()}.{time.monotonic_ns()}"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dfd,
    )
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def forget(kind: str, ident: str) -> None:
    """Drop this user's entry for ``ident`` of ``kind``, if any. Never raises."""
    try:
        path = directory()
        if path is None:
            return
        _unlink_entry(path, os.geteuid(), _entry_name(kind, _ident(kind, ident)))
    except Exception as exc:
        log.debug("%s %r not forgotten: %r", kind, ident, exc)


def remove_entry(entry: Entry) -> None:
    """Drop ``entry`` (its object is gone), unless the file now describes another object
    made under the same name since ``entry`` was read. Never raises."""
    _unlink_entry(
        os.path.dirname(entry.path), entry.uid, os.path.basename(entry.path), expect=entry
    )


def _unlink_entry(path: str, uid: int, name: str, expect: Entry | None = None) -> None:
    dfd = _open_trusted(path, uid)
    if dfd is None:
        return
    try:
        if expect is None or _read_entry(dfd, path, name, uid) == expect:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
        # The last entry gone, the directory goes too; with entries left this fails at
        # once (ENOTEMPTY), cheaper than listing them.
        with contextlib.suppress(OSError):
            os.rmdir(path)
    except OSError as exc:
        log.debug("registry %s: %s", path, exc)
    finally:
        os.close(dfd)


# -- reading ----------------------------------------------------------------------------


def entries() -> list[Entry]:
    """Every entry this process may read: its own user's, and every user's for root."""
    out: list[Entry] = []
    for path, uid in _all_directories():
        out.extend(_read_directory(path, uid))
    return out


def _read_directory(path: str, uid: int) -> Iterator[Entry]:
    dfd = _open_trusted(path, uid)
    if dfd is None:
        return
    try:
        names = os.listdir(dfd)
        for name in sorted(names):
            if not _ENTRY.match(name):
                continue  # a temporary file being written, or something planted
            entry = _read_entry(dfd, path, name, uid)
            if entry is not None:
                yield entry
    finally:
        os.close(dfd)


def _read_entry(dfd: int, path: str, name: str, uid: int) -> Entry | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size > 4096:
            return None
        body = json.loads(os.read(fd, 4096))
        if body.get("kind") not in KINDS or "\0" in str(body["ident"]):
            return None
        entry = Entry(
            kind=str(body["kind"]),
            ident=str(body["ident"]),
            uid=uid,
            pid=int(body["pid"]),
            start=_opt_int(body.get("start")),
            pidns=_opt_int(body.get("pidns")),
            time=float(body.get("time", 0.0)),
            path=os.path.join(path, name),
            key=_opt_int(body.get("key")),
            dev=_opt_int(body.get("dev")),
            ino=_opt_int(body.get("ino")),
            ipcns=_opt_int(body.get("ipcns")),
        )
    except Exception:  # anyone's bytes: bad JSON, wrong types, absurd nesting
        return None
    finally:
        os.close(fd)
    # The name is derived from the content: a mismatch is a file nobody should trust.
    return entry if name == _entry_name(entry.kind, entry.ident) else None


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not an int: {value!r}")
    return value
