"""The aioipc error family and the one boundary that translates OS errors into it.

aioipc reuses anyio's stream exceptions where they fit:

* :exc:`anyio.EndOfStream` -- the peer closed cleanly;
* :exc:`anyio.ClosedResourceError` -- *you* closed this handle;
* :exc:`anyio.BrokenResourceError` -- the peer died or the object vanished underneath;
* :exc:`anyio.WouldBlock` -- a ``*_nowait`` call could not complete at once;
* :exc:`anyio.BusyResourceError` -- another task is already using this half of the handle.

Everything else is an :exc:`IPCError`. Members that describe a missing object, an
existing one or a permission problem also inherit the matching built-in, so
``except FileNotFoundError`` keeps working.

The boundary is :func:`translate_os_error` (and :func:`map_errors`, its context-manager
form): every ``OSError`` a public call lets out goes through it, with the name of the
object involved. (Call sites still look at an errno where it decides what they do next,
not what the caller is told: EAGAIN/ENOMSG "would block", EINTR "try again", E2BIG from
a zero-size SysV wait "a message is there", EADDRINUSE on bind "is the old socket
stale?") What an errno means is said once, in a table here
(``_DEFAULTS``); where one errno means something more precise for one object or one
call (EIDRM: the SysV object was removed; ELOOP: ``O_NOFOLLOW`` met a planted symlink;
EMSGSIZE: a datagram over the socket's send buffer; E2BIG: a message over the receive
size), the caller passes an override table, ``{errno: factory}``, and nothing else
changes. A factory may return None to leave the errno to the defaults (EINVAL from a
SysV call means "removed" only if the object is gone). Third-party exceptions are
turned back into an ``OSError`` with its errno before they reach the boundary: sysv_ipc
is only used where a ctypes call repeats a failure with its errno, and posix_ipc's
errno is recovered from its exception class and the calling thread's ``errno``
(``aioipc._core.posix_base.posix_error``), never from its message.
"""

from __future__ import annotations

import errno
import resource
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeAlias, TypeVar

from anyio import BrokenResourceError, ClosedResourceError

__all__ = [
    "IPCConnectionRefusedError",
    "IPCError",
    "IPCExistsError",
    "IPCNotFoundError",
    "IPCPermissionError",
    "IPCSystemError",
    "LaggedError",
    "MessageTooLargeError",
    "ProtocolError",
    "NOFOLLOW",
    "ErrorFactory",
    "Overrides",
    "fd_limit_reason",
    "map_errors",
    "open_or_create",
    "symlink_refused",
    "translate_os_error",
]


class IPCError(Exception):
    """Base class of every error aioipc raises that is not one of anyio's stream errors."""


class IPCSystemError(IPCError, OSError):
    """A system call failed for a reason with no more specific class; ``errno`` is kept."""


class IPCNotFoundError(IPCError, FileNotFoundError):
    """The named IPC object (path, name or key) does not exist."""


class IPCExistsError(IPCError, FileExistsError):
    """The IPC object exists already (an exclusive create, or a path held by a live listener)."""


class IPCPermissionError(IPCError, PermissionError):
    """The caller may not use the object (mode bits, owner, or peer credentials)."""


class IPCConnectionRefusedError(IPCError, ConnectionRefusedError):
    """Nobody is listening at the address (often a socket file left by a dead process)."""


class MessageTooLargeError(IPCError, ValueError):
    """A message is larger than a limit; the message names the limit and where it comes from.

    Attributes:
        size: the size of the offending message in bytes.
        limit: the limit in bytes.
        source: where the limit comes from (``"max_message_size"``, a sysctl, a queue attribute).
    """

    def __init__(self, size: int, limit: int, source: str, *, at_least: bool = False) -> None:
        amount = f"at least {size}" if at_least else f"{size}"
        super().__init__(f"message of {amount} bytes exceeds {source} = {limit} bytes")
        self.size = size
        self.limit = limit
        self.source = source


class LaggedError(IPCError):
    """A ``drop_oldest`` subscriber fell more than its topic's capacity behind.

    The messages it missed are gone; the receive after this one continues from the
    oldest message the topic still retains.

    Attributes:
        missed: how many messages it missed (exact: the counts of successive
            LaggedErrors add up to every message it did not receive).
    """

    def __init__(self, missed: int, message: str) -> None:
        super().__init__(message)
        self.missed = missed


class ProtocolError(IPCError):
    """The bytes on the wire are not a valid frame (corrupt header, truncated frame)."""


#: What an override makes of an ``OSError`` for the object ``what`` names; None leaves
#: the errno to the defaults.
ErrorFactory: TypeAlias = Callable[[OSError, str], Exception | None]
#: errno -> factory: how one object, or one call, reads an errno differently.
Overrides: TypeAlias = Mapping[int, ErrorFactory]


def fd_limit_reason(code: int | None) -> str | None:
    """For EMFILE/ENFILE: which limit was hit, with its value; None for other errors."""
    if code == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
        return (
            f"this process has no file descriptor left (RLIMIT_NOFILE = {shown}, ulimit -n; EMFILE)"
        )
    if code == errno.ENFILE:
        try:
            with open("/proc/sys/fs/file-max") as f:
                limit = f.read().strip()
        except OSError:
            limit = "?"
        return f"the system's file table is full (fs.file-max = {limit}; ENFILE)"
    return None


def _not_found(exc: OSError, what: str) -> Exception:
    return IPCNotFoundError(exc.errno, f"{what}: does not exist", exc.filename)


def _exists(exc: OSError, what: str) -> Exception:
    return IPCExistsError(exc.errno, f"{what}: already exists", exc.filename)


def _denied(exc: OSError, what: str) -> Exception:
    return IPCPermissionError(exc.errno, f"{what}: permission denied", exc.filename)


def _refused(exc: OSError, what: str) -> Exception:
    return IPCConnectionRefusedError(exc.errno, f"{what}: nobody is listening", exc.filename)


def _broken(exc: OSError, what: str) -> Exception:
    return BrokenResourceError(f"{what}: the peer is gone ({exc.strerror or exc})")


def _closed(exc: OSError, what: str) -> Exception:
    return ClosedResourceError(f"{what}: the file descriptor is closed")


def _fd_limit(exc: OSError, what: str) -> Exception:
    return IPCSystemError(exc.errno, f"{what}: {fd_limit_reason(exc.errno)}", exc.filename)


_DEFAULTS: dict[int, ErrorFactory] = {
    errno.ENOENT: _not_found,
    errno.EEXIST: _exists,
    errno.EACCES: _denied,
    errno.EPERM: _denied,
    errno.ECONNREFUSED: _refused,
    errno.EPIPE: _broken,
    errno.ECONNRESET: _broken,
    errno.ENOTCONN: _broken,
    errno.EIDRM: _broken,
    errno.EBADF: _closed,
    errno.EMFILE: _fd_limit,
    errno.ENFILE: _fd_limit,
}


def symlink_refused(exc: OSError, what: str) -> Exception:
    """ELOOP from an ``O_NOFOLLOW`` open: a symlink sits where the object should be
    (in a shared directory such as /dev/shm anyone may plant one)."""
    return IPCPermissionError(
        errno.ELOOP, f"{what}: is a symlink, which aioipc never follows", exc.filename
    )


#: The override table of every ``O_NOFOLLOW`` open.
NOFOLLOW: Overrides = {errno.ELOOP: symlink_refused}


def translate_os_error(exc: OSError, what: str, overrides: Overrides | None = None) -> Exception:
    """Return the aioipc or anyio exception that stands for ``exc``.

    ``what`` names the object involved ("FIFO /run/app/jobs", "unix socket @bus"); it
    leads the message so the user knows which object the failing call was about.
    ``overrides`` maps an errno to a factory that knows better for this object or call;
    when it returns None (or the errno is not in it) the defaults decide. An
    :exc:`IPCError` (already translated) is returned as it is.
    """
    if isinstance(exc, IPCError):
        return exc
    code = exc.errno
    if code is not None:
        factory = overrides.get(code) if overrides is not None else None
        if factory is not None:
            made = factory(exc, what)
            if made is not None:
                return made
        default = _DEFAULTS.get(code)
        if default is not None:
            made = default(exc, what)
            if made is not None:
                return made
    return IPCSystemError(code, f"{what}: {exc.strerror or exc}", exc.filename)


@contextmanager
def map_errors(what: str, overrides: Overrides | None = None) -> Iterator[None]:
    """The translation boundary as a context manager: any ``OSError`` raised inside is
    re-raised as :func:`translate_os_error` makes it (with the same ``overrides``).

    Hot paths call :func:`translate_os_error` directly instead, because a context
    manager costs more than the system call it guards.
    """
    try:
        yield
    except OSError as exc:
        raise translate_os_error(exc, what, overrides) from exc


T = TypeVar("T")


def open_or_create(create: Callable[[], T], open_: Callable[[], T], gave_up: Exception) -> T:
    """Exclusive create, else open; retried, since another process may remove the object
    between the two calls. Raises ``gave_up`` if that keeps happening."""
    for _ in range(10):
        try:
            return create()
        except FileExistsError:
            pass
        try:
            return open_()
        except FileNotFoundError:
            pass
    raise gave_up
