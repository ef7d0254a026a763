"""What every System V object shares: keys, ``ftok``, the lookup errors, IPC_STAT owners.

A System V object lives under a 32-bit key (``key_t``) until someone removes it, whether or
not any process has it open. :func:`ftok` derives a key from a file, exactly as C's
``ftok(3)`` does, so that a C program and aioipc agree on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from pathlib import Path
from typing import Any

import anyio
from anyio import BrokenResourceError, ClosedResourceError

from ..errors import (
    ErrorFactory,
    IPCNotFoundError,
    IPCPermissionError,
    Overrides,
    translate_os_error,
)
from . import libc as _libc
from . import registry as _registry
from .check import ID_MAX, check_id, check_int, check_mode
from .threads import Workers, interrupt_all, stop_jobs

__all__ = ["IPC_PRIVATE", "SysVObject", "check_key", "ftok", "key_repr", "read_sysctl"]

#: The key that always makes a new object, reachable only through its id (or inheritance).
IPC_PRIVATE = 0

_KEY_MIN = -(2**31)
_KEY_MAX = 2**32 - 1


def ftok(path: str | os.PathLike[str], proj_id: int) -> int:
    """The System V key C's ``ftok(path, proj_id)`` returns for this file.

    glibc combines the low 8 bits of ``proj_id``, the low 8 bits of the file's device
    number and the low 16 bits of its inode number; like C's ``key_t`` the result is a
    signed 32-bit int (negative for ``proj_id`` >= 128). Two files can map to the same
    key, and a file that is deleted and re-created usually changes key.

    Raises:
        ValueError: ``proj_id`` is not in 0..255.
        aioipc.IPCNotFoundError: ``path`` does not exist (as C's ftok, it follows symlinks).
        aioipc.IPCPermissionError: ``path`` cannot be looked up.
    """
    if isinstance(proj_id, bool) or not isinstance(proj_id, int):
        raise TypeError(f"ftok proj_id must be an int in 0..255, not {type(proj_id).__name__}")
    if not 0 <= proj_id <= 255:
        raise ValueError(f"ftok proj_id must be in 0..255 (one byte), got {proj_id}")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise translate_os_error(exc, f"ftok path {os.fspath(path)!r}") from exc
    key = (proj_id << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)
    return key - 2**32 if key >= 2**31 else key


def check_key(key: int) -> int:
    """Validate a key and return it as C's signed ``key_t``.

    Keys are accepted as signed (-2**31..2**31-1, what ``ftok`` returns) or unsigned
    (0..0xFFFFFFFF, how ``ipcs`` prints them).
    """
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"a SysV key is an int (or aioipc.ftok(path, id)), not {key!r}")
    if not _KEY_MIN <= key <= _KEY_MAX:
        raise ValueError(
            f"SysV key {key} is out of range: a key_t is 32 bits "
            f"({_KEY_MIN}..{2**31 - 1}, or 0..{_KEY_MAX:#x} as ipcs prints it)"
        )
    return key - 2**32 if key >= 2**31 else key


def key_repr(key: int) -> str:
    return "IPC_PRIVATE" if key == IPC_PRIVATE else f"{key & 0xFFFFFFFF:#010x}"


def read_sysctl(path: str, default: int) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


_KIND_NAMES = {"msg": "message queue", "sem": "semaphore set", "shm": "shared memory segment"}


def other_kinds(key: int, but: str) -> list[str]:
    """Which other System V kinds have an object under ``key`` (for a helpful not-found)."""
    found = []
    for kind, name in _KIND_NAMES.items():
        if kind == but:
            continue
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        if any(f and int(f[0]) == key for f in map(str.split, lines)):
            found.append(name)
    return found


class SysVObject:
    """Base of the System V handles: key, id, owner and mode from IPC_STAT, ``remove()``."""

    _kind = ""  # "msg" or "sem"
    _kind_name = ""  # "SysV message queue"

    def __init__(self, key: int, ipc_id: int) -> None:
        self._key = key
        # Every id reaches the C calls through here (or through from_id, which checks it
        # before its first call): a C int would truncate id + 2**32 to another object.
        self._id = self._check_id(ipc_id)
        # Closed until the subclass has finished building: __del__ of a half-built
        # handle must do nothing. Subclasses set it False last.
        self._closed = True
        # A child made by fork() inherits the handle; only the process that opened it
        # may remove an owned object or interrupt its workers (gunicorn --preload).
        self._pid = os.getpid()
        self._what = f"{self._kind_name} key={key_repr(key)} id={ipc_id}"

    @classmethod
    def _check_id(cls, ipc_id: object) -> int:
        """``ipc_id`` if it can be a kernel id (0..INT_MAX); TypeError/ValueError if not."""
        return check_id(ipc_id, cls._kind_name)

    @classmethod
    def _lookup_error(
        cls,
        exc: OSError,
        key: int,
        creating: bool,
        overrides: Overrides | None = None,
        *,
        ipc_id: int | None = None,
    ) -> Exception:
        """A failed get by key, or IPC_STAT of an id: ENOENT names the other kinds that
        have an object under that key; for an id (``ipc_id``), EINVAL and EIDRM say no
        object has it; then ``overrides``."""
        what = f"{cls._kind_name} key={key_repr(key)}"
        table: dict[int, ErrorFactory] = {}
        if ipc_id is not None:
            what = f"{what} id={ipc_id}"

            def no_such_id(exc: OSError, what: str) -> Exception:
                return IPCNotFoundError(errno.ENOENT, f"{what}: does not exist")

            table[errno.EINVAL] = table[errno.EIDRM] = no_such_id
        elif not creating:

            def not_found(exc: OSError, what: str) -> Exception:
                others = other_kinds(key, cls._kind)
                hint = f" (that key belongs to a {' and a '.join(others)})" if others else ""
                return IPCNotFoundError(errno.ENOENT, f"{what}: does not exist{hint}")

            table[errno.ENOENT] = not_found
        if overrides is not None:
            table.update(overrides)
        return translate_os_error(exc, what, table)

    @property
    def key(self) -> int:
        """The key (``IPC_PRIVATE`` = 0 for a private object)."""
        return self._key

    @property
    def id(self) -> int:
        """The kernel's identifier (what ``ipcs`` lists in the id column)."""
        return self._id

    def _error(self, exc: OSError, overrides: Overrides | None = None) -> Exception:
        """The boundary for this handle's calls: EIDRM, and EINVAL once the object is gone,
        say it was removed; ``overrides`` (one call's own errnos) come on top.

        The table is made per error, not kept on the handle: bound methods stored on
        ``self`` would make a cycle and delay ``__del__`` (the unclosed-handle warning).
        """
        table: dict[int, ErrorFactory] = {errno.EIDRM: self._removed, errno.EINVAL: self._removed}
        if overrides is not None:
            table.update(overrides)
        return translate_os_error(exc, self._what, table)

    def _removed(self, exc: OSError, what: str) -> Exception | None:
        if self._gone():
            return BrokenResourceError(f"{what}: the object was removed (EIDRM)")
        return None

    def _mode_denied(self, exc: OSError, what: str) -> Exception:
        """EACCES, with the mode and owner that refused us."""
        return IPCPermissionError(
            exc.errno, f"{what}: permission denied (mode {oct(self.mode)}, owner uid {self.uid})"
        )

    def _gone(self) -> bool:
        try:
            self._stat()
        except OSError as exc:
            return exc.errno in (errno.EIDRM, errno.EINVAL)
        return False

    def _in_opener(self) -> bool:
        return os.getpid() == self._pid

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this handle is closed")

    def _stat(self) -> Any:
        raise NotImplementedError

    def _ipc_set(self, ds: Any) -> None:
        """IPC_SET through the kind's own ctl call; raises OSError."""
        raise NotImplementedError

    def _set(self, **fields: int) -> None:
        """Change owner/mode (or a kind's own field) with IPC_STAT + IPC_SET."""
        self._check_open()
        try:
            ds = self._stat()
            self._apply_perm(ds, fields)
            self._ipc_set(ds)
        except OSError as exc:
            raise self._error(exc) from exc

    def _checked_stat(self, *, need_open: bool = True) -> Any:
        """IPC_STAT, its OSError translated (EIDRM: BrokenResourceError)."""
        if need_open:
            self._check_open()
        try:
            return self._stat()
        except OSError as exc:
            raise self._error(exc) from exc

    def _perm(self) -> _libc.IpcPerm:
        perm: _libc.IpcPerm = self._checked_stat().perm
        return perm

    @property
    def mode(self) -> int:
        """Permission bits (settable, by the owner or root)."""
        return int(self._perm().mode) & 0o777

    @mode.setter
    def mode(self, value: int) -> None:
        self._set(mode=check_mode(value, self._what))

    @property
    def uid(self) -> int:
        """Owner user id (settable, by the owner or root, to 0..2**32-2: anything else is
        a TypeError or ValueError, never cut to 32 bits)."""
        return int(self._perm().uid)

    @uid.setter
    def uid(self, value: int) -> None:
        # ctypes would cut it to 32 bits: uid=2**40 would give the object to root.
        self._set(uid=check_int(value, "uid", minimum=0, maximum=ID_MAX, what=self._what))

    @property
    def gid(self) -> int:
        """Owner group id (settable as :attr:`uid` is)."""
        return int(self._perm().gid)

    @gid.setter
    def gid(self, value: int) -> None:
        self._set(gid=check_int(value, "gid", minimum=0, maximum=ID_MAX, what=self._what))

    @property
    def cuid(self) -> int:
        """Creator user id."""
        return int(self._perm().cuid)

    @property
    def cgid(self) -> int:
        """Creator group id."""
        return int(self._perm().cgid)

    def _apply_perm(self, ds: Any, fields: dict[str, int]) -> None:
        for name, value in fields.items():
            if name in ("uid", "gid", "mode"):
                setattr(ds.perm, name, value)
            else:
                setattr(ds, name, value)

    # -- lifecycle shared by queues and semaphore sets -----------------------------------
    # Subclasses set ``_jobs`` (their worker threads and jobs) and ``_remove_on_close``.

    _jobs: Workers
    _remove_on_close: bool

    def _rmid(self) -> None:
        """IPC_RMID through the kind's own ctl call; raises OSError."""
        raise NotImplementedError

    def _before_close(self) -> None:
        """Hand back what this handle holds (kernel side), once its workers have stopped."""

    def _record_created(self) -> None:
        """Note in aioipc's registry that this process created the object."""
        # Unsigned, as /proc/sysvipc and ipcs show it (key_t is signed in C).
        _registry.record(f"sysv-{self._kind}", str(self._id), key=self._key & 0xFFFFFFFF)

    def remove(self) -> None:
        """Remove the object from the system (``IPC_RMID``) now.

        Every task waiting on it, in any process, wakes with BrokenResourceError.

        Raises:
            aioipc.IPCPermissionError: only the owner, the creator or root may remove it.
            anyio.BrokenResourceError: it was removed already.
        """
        try:
            self._rmid()
        except OSError as exc:
            raise self._error(exc) from exc
        _registry.forget(f"sysv-{self._kind}", str(self._id))

    def _remove_quietly(self) -> None:
        with contextlib.suppress(OSError):
            self._rmid()
            _registry.forget(f"sysv-{self._kind}", str(self._id))

    async def aclose(self) -> None:
        """Close this handle; the object stays unless this handle created it private.

        Wakes this handle's waiting tasks with ClosedResourceError and stops their
        worker threads; never blocks for long (the shielded wait for the workers is about
        a millisecond). A copy inherited through fork() only marks itself closed.
        """
        if self._closed:
            return
        self._closed = True
        if not self._in_opener():
            await anyio.lowlevel.checkpoint()
            return  # an inherited copy: the opener's workers and objects are not ours
        await stop_jobs(self._jobs)
        self._before_close()
        if self._remove_on_close:
            self._remove_quietly()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            if not self._in_opener():
                return
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)
            interrupt_all(self._jobs)
            self._before_close()
            if self._remove_on_close:
                self._remove_quietly()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<aioipc {self._what}{state}>"
