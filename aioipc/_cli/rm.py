"""``aioipc rm``: remove one IPC object, or every stale one aioipc made.

Removing is refused, unless forced, for anything but a stale object of aioipc's: one in
aioipc's registry (or a ring) whose creator is dead and that nobody holds, or a topic of
aioipc's that nobody has open (topics outlive their creators by design). An IPC object
outlives its processes by design, and the command cannot know what another program
still means to do with it, so removing one of those is the caller's decision, stated
with ``--force``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._core import libc as _libc
from .._core import registry as _registry
from .._core.check import check_id
from .inventory import SYSV_FILES, IPCObject, Scan, object_path

__all__ = [
    "NotFound",
    "RemoveError",
    "Target",
    "find",
    "forget_gone",
    "narrow",
    "parse_target",
    "remove",
    "remove_stale",
    "remove_unlisted_queue",
]


class RemoveError(Exception):
    """``aioipc rm`` failed: one line; ``code`` 1 (runtime) or 2 (usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def posix_name(text: str) -> str:
    return text if text.startswith("/") else "/" + text


class NotFound(RemoveError):
    """Nothing of the kind goes by the name given (in the listing ``find`` was given)."""


@dataclass(frozen=True)
class Target:
    """What ``rm KIND TARGET`` names: a SysV id or key, or a name or path."""

    kind: str
    name: str | None = None  # POSIX objects and rings: "/name"; FIFOs, sockets: the path
    id: int | None = None
    key: int | None = None

    def matches(self, row: IPCObject) -> bool:
        if row.kind != self.kind:
            return False
        if self.key is not None:
            return row.key == f"{self.key:#010x}"
        if self.id is not None:
            return row.id == self.id
        return row.name == self.name

    def names(self, entry: _registry.Entry) -> bool:
        """Whether the registry ``entry`` is of the object this target names."""
        if entry.kind != self.kind:
            return False
        if self.key is not None:
            return entry.key is not None and entry.key & 0xFFFFFFFF == self.key
        if self.id is not None:
            return entry.ident == str(self.id)
        return entry.ident == self.name

    def __str__(self) -> str:
        if self.key is not None:
            return f"{self.kind} with key {self.key:#010x}"
        if self.id is not None:
            return f"{self.kind} with id {self.id}"
        return f"{self.kind} {self.name}"


def parse_target(kind: str, target: str) -> Target:
    """The object of ``kind`` named by ``target``: a SysV id, or a key with 0x; a POSIX
    or ring name (the leading slash optional); a FIFO or socket path. Raises
    RemoveError (code 2) for a malformed one."""
    if kind in SYSV_FILES:
        if target.lower().startswith("0x"):
            try:
                key = int(target, 16)
            except ValueError:
                raise RemoveError(
                    f"{kind}: {target!r} is not a key (0x and hex digits)", 2
                ) from None
            if not 0 <= key <= 0xFFFFFFFF:
                raise RemoveError(f"{kind}: key {target} does not fit in 32 bits", 2)
            if key == 0:
                raise RemoveError(
                    f"{kind}: key 0x00000000 is IPC_PRIVATE, not unique: give the id", 2
                )
            return Target(kind, key=key)
        try:
            ipc_id = int(target, 10)
        except ValueError:
            raise RemoveError(
                f"{kind}: {target!r} is neither an id (decimal) nor a key (0x...)", 2
            ) from None
        try:
            return Target(kind, id=check_id(ipc_id, kind))
        except ValueError as exc:
            raise RemoveError(str(exc), 2) from None
    if kind in ("fifo", "unix-socket"):
        return Target(kind, name=os.path.abspath(target))
    name = posix_name(target)
    if "/" in name[1:] or name == "/":
        raise RemoveError(f"{kind} {target!r}: a name is one slash and a word, like /jobs", 2)
    return Target(kind, name=name)


def find(kind: str, target: str, rows: Sequence[IPCObject]) -> IPCObject:
    """The row of ``rows`` that ``target`` names (see :func:`parse_target`).

    Raises RemoveError: malformed (code 2), or no such object (code 1; a subclass when
    nothing of the kind goes by that name at all).
    """
    wanted = parse_target(kind, target)
    hits = [r for r in rows if wanted.matches(r)]
    if hits:
        return hits[0]
    if kind in ("fifo", "unix-socket"):
        assert wanted.name is not None
        _not_registered(kind, wanted.name, target)
    raise NotFound(f"{wanted}: does not exist")


def _not_registered(kind: str, path: str, target: str) -> None:
    """Raise why the unlisted ``path`` is not a FIFO or socket file of aioipc's."""
    try:
        st = os.lstat(path)
    except OSError:
        raise NotFound(f"{kind} {path}: does not exist") from None
    is_kind = stat.S_ISFIFO if kind == "fifo" else stat.S_ISSOCK
    if not is_kind(st.st_mode):
        raise RemoveError(f"{kind} {path}: is not a {'FIFO' if kind == 'fifo' else 'socket'}")
    # aioipc lists only the FIFOs and sockets it made; this one it did not.
    raise RemoveError(f"{kind} {path}: not made by aioipc; remove it with: rm -- {target}")


def forget_gone(kind: str, target: str, orphans: Sequence[_registry.Entry]) -> str | None:
    """For ``rm KIND TARGET`` of an object that is gone (:func:`find` raised NotFound):
    drop the registry entries among ``orphans`` (the scan's entries whose object is gone:
    this user's, every user's for root) that still name it, and return what to say;
    None if there were none.

    The entries go even if their creator runs: the object they describe is gone (removed
    by hand, or with ``ipcrm``), and a creator that makes it again writes a new entry,
    which :func:`aioipc._core.registry.remove_entry` leaves alone. But not an entry of a SysV
    object or POSIX queue made in another IPC namespace: that object is not to be seen
    from here, and may well exist.
    """
    wanted = parse_target(kind, target)
    entries = [e for e in orphans if wanted.names(e) and _seen_from_here(e)]
    for entry in entries:
        _registry.remove_entry(entry)
    if not entries:
        return None
    plural = "entries" if len(entries) > 1 else "entry"
    return f"{_entry_text(entries[0])}: does not exist; forgot its registry {plural}"


def _seen_from_here(entry: _registry.Entry) -> bool:
    """Whether this process would see the entry's object if it existed. SysV objects and
    POSIX queues live in an IPC namespace: one made in another namespace (a container,
    ``unshare --ipc``) is invisible here and may well exist, unless that namespace is
    gone (no process is in it any more), and its objects with it."""
    if entry.kind not in SYSV_FILES and entry.kind != "posix-mq":
        return True
    here = _registry.ipc_namespace()
    if here is not None and entry.ipcns == here:
        return True
    return entry.ipcns is not None and _ipc_namespace_in_use(entry.ipcns) is False


def _ipc_namespace_in_use(ino: int) -> bool | None:
    """Whether a process is in the IPC namespace with inode ``ino``; None when some
    process cannot be looked into (another user's, unless we are root). (A namespace
    kept by a bind mount alone is not seen: its objects' entries can then be forgotten,
    which only makes them never stale.)"""
    unseen = False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/ipc").st_ino == ino:
                return True
        except FileNotFoundError:
            continue  # exited meanwhile
        except OSError:
            unseen = True
    return None if unseen else False


def _entry_text(entry: _registry.Entry) -> str:
    """The object of a registry entry in words, as :meth:`IPCObject.describe` says it."""
    if entry.kind in SYSV_FILES:
        key = "?" if entry.key is None else f"{entry.key & 0xFFFFFFFF:#010x}"
        return f"{entry.kind} id {entry.ident} (key {key})"
    return f"{entry.kind} {entry.ident}"


def narrow(found: Scan, prefix: str) -> Scan:
    """The rows and orphan entries of ``found`` that ``rm --stale PREFIX`` may touch.

    ``0x...``: SysV objects whose key, written ``0x%08x``, starts with it (any case; with
    ftok keys, ``0x07`` is every key of project id 7). Anything else: POSIX objects and
    rings whose name starts with it (a leading ``/`` added if missing, as ``rm`` does for
    names), FIFOs and socket files whose path starts with it made absolute (a final
    ``/`` kept); SysV objects, having no name, never match. A plain string prefix:
    ``/run/app`` also matches ``/run/apple``; end it with ``/`` for a directory.
    """
    if prefix.lower().startswith("0x"):
        low = prefix.lower()

        def keyed(kind: str, key: int | None) -> bool:
            return kind in SYSV_FILES and key is not None and f"{key:#010x}".startswith(low)

        rows = [r for r in found.rows if keyed(r.kind, None if r.key is None else int(r.key, 16))]
        orphans = [
            e for e in found.orphans if keyed(e.kind, None if e.key is None else e.key & 0xFFFFFFFF)
        ]
        return Scan(rows, orphans)
    name = posix_name(prefix)
    path = os.path.abspath(prefix) + ("/" if prefix.endswith("/") and prefix != "/" else "")

    def named(kind: str, ident: str | None) -> bool:
        if kind in SYSV_FILES or ident is None:
            return False
        return ident.startswith(path if kind in ("fifo", "unix-socket") else name)

    return Scan(
        [r for r in found.rows if named(r.kind, r.name)],
        [e for e in found.orphans if named(e.kind, e.ident)],
    )


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
    stale one, a SysV segment is still detached and a topic still unopened): the last
    check before removing it.
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
    if stale and row.kind == "topic" and row.name is not None:
        from .. import pubsub

        try:
            opened = not pubsub.is_stale(row.name)
        except Exception:  # no longer a topic, or gone: _delete says which
            opened = False
        if opened:
            raise _Changed("a process opened it since it was listed")


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
    from .. import posix, pubsub, shm

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
        "topic": pubsub.unlink,  # the log and its doorbells, and its registry entry
        "fifo": lambda name: _unlink_at(name, row),
        "unix-socket": lambda name: _unlink_at(name, row),
    }
    unlinkers[row.kind](row.name)


def remove(row: IPCObject, *, force: bool = False, mqueue: str | None = None) -> None:
    """Remove the object ``row`` describes, if it is still that object (``mqueue``:
    where the queues were read). Raises RemoveError."""
    from ..errors import IPCError

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
    from .. import posix
    from ..errors import IPCError

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
        if not _seen_from_here(entry):
            continue  # its object may well exist, in the namespace it was made in
        creator = _registry.creator_alive(entry)
        if creator:
            continue  # its creator may still remove it, and forget the entry itself
        if not dry_run:
            _registry.remove_entry(entry)
        what = f"{entry.kind} {entry.ident}"
        done.append(f"{'would forget' if dry_run else 'forgot'} {what}: already gone")
    return done, failed
