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
"""

from __future__ import annotations

import errno
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from anyio import BrokenResourceError, ClosedResourceError

__all__ = [
    "IPCConnectionRefusedError",
    "IPCError",
    "IPCExistsError",
    "IPCNotFoundError",
    "IPCPermissionError",
    "IPCSystemError",
    "MessageTooLargeError",
    "ProtocolError",
    "map_errors",
    "open_or_create",
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


class ProtocolError(IPCError):
    """The bytes on the wire are not a valid frame (corrupt header, truncated frame)."""


_BROKEN_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EIDRM})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def translate_os_error(exc: OSError, what: str) -> Exception:
    """Return the aioipc or anyio exception that stands for ``exc``.

    ``what`` names the object involved ("FIFO /run/app/jobs", "unix socket @bus"); it
    leads the message so the user knows which object the failing call was about.
    """
    if isinstance(exc, IPCError):
        return exc
    code = exc.errno
    reason = exc.strerror or str(exc)
    filename = exc.filename
    if code == errno.ENOENT:
        return IPCNotFoundError(code, f"{what}: does not exist", filename)
    if code == errno.EEXIST:
        return IPCExistsError(code, f"{what}: already exists", filename)
    if code in _PERMISSION_ERRNOS:
        return IPCPermissionError(code, f"{what}: permission denied", filename)
    if code == errno.ECONNREFUSED:
        return IPCConnectionRefusedError(code, f"{what}: nobody is listening", filename)
    if code in _BROKEN_ERRNOS:
        return BrokenResourceError(f"{what}: the peer is gone ({reason})")
    if code == errno.EBADF:
        return ClosedResourceError(f"{what}: the file descriptor is closed")
    if code == errno.EMFILE:
        # The limit is the useful part: the user raises it or looks for an fd leak.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
        return IPCSystemError(
            code,
            f"{what}: {reason}: every fd below RLIMIT_NOFILE = {limit} (ulimit -n) is in use",
            filename,
        )
    return IPCSystemError(code, f"{what}: {reason}", filename)


@contextmanager
def map_errors(what: str) -> Iterator[None]:
    """The translation boundary: re-raise any ``OSError`` as its aioipc/anyio counterpart.

    Hot paths call :func:`translate_os_error` directly instead, because a context
    manager costs more than the system call it guards.
    """
    try:
        yield
    except OSError as exc:
        raise translate_os_error(exc, what) from exc


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
