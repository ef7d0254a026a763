"""``aioipc rm``: remove one IPC object, or every stale one aioipc made.

Removing is refused, unless forced, for anything but a stale object of aioipc's: one in
aioipc's registry (or a ring) whose creator is dead and that nobody holds. An IPC object
outlives its processes by design, and the command cannot know what another program
still means to do with it, so removing one of those is the caller's decision, stated
with ``--force``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

from . import _libc, _registry
from ._inventory import SYSV_FILES, IPCObject, Scan, object_path

__all__ = ["RemoveError", "find", "remove", "remove_stale", "remove_unlisted_queue"]


class RemoveError(Exception):
    """``aioipc rm`` failed: one line; ``code`` 1 (runtime) or 2 (usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def posix_name(text: str) -> str:
    return text if text.startswith("/") else "/" + text


def find(kind: str, target: str, rows: Sequence[IPCObject]) -> IPCObject:
    """The object of ``kind`` named by ``target``: a SysV id, or a key with 0x; a POSIX
    or ring name (the leading slash optional); a FIFO or socket path."""
    if kind in SYSV_FILES:
        return _find_sysv(kind, target, rows)
    if kind in ("fifo", "unix-socket"):
        path = os.path.abspath(target)
        hits = [r for r in rows if r.kind == kind and r.name == path]
        if not hits:
            raise RemoveError(_not_registered(kind, path, target))
        return hits[0]
    name = posix_name(target)
    if "/" in name[1:] or name == "/":
        raise RemoveError(f"{kind} {target!r}: a name is one slash and a word, like /jobs", 2)
    hits = [r for r in rows if r.kind == kind and r.name == name]
    if not hits:
        raise RemoveError(f"{kind} {name}: does not exist")
    return hits[0]


def _not_registered(kind: str, path: str, target: str) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return f"{kind} {path}: does not exist"
    is_kind = stat.S_ISFIFO if kind == "fifo" else stat.S_ISSOCK
    if not is_kind(st.st_mode):
        return f"{kind} {path}: is not a {'FIFO' if kind == 'fifo' else 'socket'}"
    # aioipc lists only the FIFOs and sockets it made; this one it did not.
    return f"{kind} {path}: not made by aioipc; remove it with: rm -- {target}"


def _find_sysv(kind: str, target: str, rows: Sequence[IPCObject]) -> IPCObject:
    if target.lower().startswith("0x"):
        try:
            key = int(target, 16)
        except ValueError:
            raise RemoveError(f"{kind}: {target!r} is not a key (0x and hex digits)", 2) from None
        if not 0 <= key <= 0xFFFFFFFF:
            raise RemoveError(f"{kind}: key {target} does not fit in 32 bits", 2)
        if key == 0:
            raise RemoveError(f"{kind}: key 0x00000000 is IPC_PRIVATE, not unique: give the id", 2)
        hits = [r for r in rows if r.kind == kind and r.key == f"{key:#010x}"]
        if not hits:
            raise RemoveError(f"{kind} with key {key:#010x}: does not exist")
        return hits[0]
    try:
        ipc_id = int(target, 10)
    except ValueError:
        raise RemoveError(
            f"{kind}: {target!r} is neither an id (decimal) nor a key (0x...)", 2
        ) from None
    hits = [r for r in rows if r.kind == kind and r.id == ipc_id]
    if not hits:
        raise RemoveError(f"{kind} with id {ipc_id}: does not exist")
    return hits[0]


# -- removing ---------------------------------------------------------------------------


# Per SysV kind: IPC_STAT and IPC_RMID by id (each raises OSError).
_SYSV_CALLS: dict[str, tuple[Callable[[int], Any], Callable[[int], object]]] = {
    "sysv-shm": (_libc.shmctl_stat, lambda i: _libc.shmctl(i, _libc.IPC_RMID)),
    "sysv-msg": (_libc.msgctl_stat, lambda i: _libc.msgctl(i, _libc.IPC_RMID)),
    "sysv-sem": (_libc.semctl_stat, lambda i: _libc.semctl(i, 0, _libc.IPC_RMID)),
}


class _Changed(Exception):
    """The object is no longer the one that was listed."""


def _same_object(row: IPCObject, mqueue: str | None, *, stale: bool) -> None:
    """Raise _Changed unless ``row`` still names the object that was listed (and, for a
    stale one, a SysV segment is still detached): the last check before removing it.
    """
    if row.id is not None:
        try:
            ds = _SYSV_CALLS[row.kind][0](row.id)
        except OSError:
            raise _Changed("does not exist") from None
        if row.key is None or int(ds.perm.key) & 0xFFFFFFFF != int(row.key, 16):
            raise _Changed("its id now belongs to another object")
        if stale and row.kind == "sysv-shm" and int(ds.nattch):
            raise _Changed("a process attached since it was listed")
        return
    path = object_path(row, mqueue)
    if path is None:
        return  # a queue with no mqueue mount to look in: the name is all there is
    try:
        st = os.lstat(path)
    except OSError:
        raise _Changed("does not exist") from None
    if (st.st_dev, st.st_ino) != (row.dev, row.ino):
        raise _Changed("another object was made under its name since it was listed")


def _unlink_at(path: str, row: IPCObject) -> None:
    """Remove the file ``path`` of ``row`` by walking it one directory at a time without
    following any symlink, then unlinking the name in the last directory if it is still
    the listed inode: a directory swapped for a link mid-way cannot redirect it.
    """
    parts = [p for p in os.path.dirname(path).split("/") if p]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dfd = os.open("/", flags)
    try:
        for part in parts:
            next_fd = os.open(part, flags, dir_fd=dfd)
            os.close(dfd)
            dfd = next_fd
        leaf = os.path.basename(path)
        st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != (row.dev, row.ino):
            raise _Changed("another file was put at its path since it was listed")
        os.unlink(leaf, dir_fd=dfd)
    finally:
        os.close(dfd)


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _delete(row: IPCObject, mqueue: str | None) -> None:
    from . import posix, shm

    if row.kind in SYSV_FILES:
        assert row.id is not None
        _SYSV_CALLS[row.kind][1](row.id)
        return
    assert row.name is not None
    path = object_path(row, mqueue)
    if row.kind.startswith("posix-") and path is not None and not _utf8(row.name):
        # A name that is not UTF-8 (anyone may make one): no POSIX call of aioipc or
        # posix_ipc takes it, but shm_unlink, sem_unlink and mq_unlink unlink exactly
        # this file. (aioipc never makes such a name, so no registry entry names it.)
        _unlink_at(path, row)
        return
    unlinkers: dict[str, Callable[[str], None]] = {
        "posix-shm": posix.unlink_shared_memory,
        "posix-sem": posix.unlink_semaphore,
        "posix-mq": posix.unlink_message_queue,
        "shm-ring": shm.unlink,
        "fifo": lambda name: _unlink_at(name, row),
        "unix-socket": lambda name: _unlink_at(name, row),
    }
    unlinkers[row.kind](row.name)


def remove(row: IPCObject, *, force: bool = False, mqueue: str | None = None) -> None:
    """Remove the object ``row`` describes, if it is still that object (``mqueue``:
    where the queues were read). Raises RemoveError."""
    from .errors import IPCError

    what = row.describe()
    if not force and not row.stale:
        reason = row.why or (
            "not known to be aioipc's (its owner's registry is not readable)"
            if row.aioipc == "?"
            else "not stale"
        )
        raise RemoveError(f"{what}: {reason}; --force removes it anyway")
    try:
        # Checked again just before: names and ids are reused, and time has passed.
        _same_object(row, mqueue, stale=not force)
        _delete(row, mqueue)
    except _Changed as exc:
        raise RemoveError(f"{what}: {exc}; left alone") from None
    except IPCError as exc:  # before ValueError: some IPC errors are both
        raise RemoveError(_one_line(exc, what)) from None
    except ValueError as exc:
        raise RemoveError(_one_line(exc, what), 2) from None
    except OSError as exc:
        if row.id is not None and exc.errno in (errno.EINVAL, errno.EIDRM):
            raise RemoveError(f"{what}: does not exist") from None
        if exc.errno == errno.EPERM:
            raise RemoveError(f"{what}: permission denied (not its owner or creator)") from None
        raise RemoveError(_one_line(exc, what)) from None
    _forget(row.kind, str(row.id) if row.id is not None else row.name)


def remove_unlisted_queue(target: str, *, force: bool) -> str:
    """Remove the POSIX queue ``target`` by name, when no mqueue mount lets it be listed
    (and so judged): only with ``force``. Returns what was removed, in words."""
    from . import posix
    from .errors import IPCError

    name = posix_name(target)
    what = f"posix-mq {name}"
    if not force:
        raise RemoveError(
            f"{what}: cannot tell whether it is stale, since queues cannot be listed here; "
            "--force removes it by name"
        )
    try:
        posix.unlink_message_queue(name)
    except IPCError as exc:
        raise RemoveError(_one_line(exc, what)) from None
    except ValueError as exc:
        raise RemoveError(_one_line(exc, what), 2) from None
    _forget("posix-mq", name)
    return what


def _forget(kind: str, ident: str | None) -> None:
    """Drop the entries (any user's we may write) of an object just removed."""
    for entry in _registry.entries():
        if entry.kind == kind and entry.ident == ident:
            _registry.remove_entry(entry)


def _one_line(exc: BaseException, what: str) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    name = what.split(" ", 1)[1]
    return text if name in text else f"{what}: {text}"


def remove_stale(
    found: Scan, *, dry_run: bool = False, mqueue: str | None = None
) -> tuple[list[str], list[str]]:
    """Remove every stale row of ``found`` and forget its orphaned registry entries.

    Returns (lines saying what was removed, lines saying what failed).
    """
    done: list[str] = []
    failed: list[str] = []
    verb = "would remove" if dry_run else "removed"
    for row in found.rows:
        if not row.stale:
            continue
        try:
            if not dry_run:
                remove(row, mqueue=mqueue)
        except RemoveError as exc:
            failed.append(str(exc))
            continue
        done.append(f"{verb} {row.describe()}: {row.why}")
    for entry in found.orphans:
        creator = _registry.creator_alive(entry)
        if creator:
            continue  # its creator may still remove it, and forget the entry itself
        if not dry_run:
            _registry.remove_entry(entry)
        what = f"{entry.kind} {entry.ident}"
        done.append(f"{'would forget' if dry_run else 'forgot'} {what}: already gone")
    return done, failed
