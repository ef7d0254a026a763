"""FIFOs (named pipes) as channels.

::

    aioipc.fifo.create("/run/app/jobs")                      # mkfifo, mode 0600
    rx = await aioipc.fifo.open_receiver("/run/app/jobs")    # in the consumer
    tx = await aioipc.fifo.open_sender("/run/app/jobs")      # in each producer

Opening never blocks the event loop. ``open_sender`` waits, asynchronously and
cancellably, until a reader has the FIFO open (the kernel refuses a non-blocking writer
before that with ENXIO, and offers no event to wait on, so the sender retries with a
backoff capped at 50 ms). Put a deadline on it with ``anyio.fail_after``.

**Several writers.** The kernel writes at most ``PIPE_BUF`` = 4096 bytes atomically; a
longer write from one process can be cut by another's. With ``framing=True`` (the
default) every message is sent as chunks of at most 4096 bytes, each tagged with its
writer's id, and the receiver puts each writer's chunks back together (the chunked
format of :mod:`aioipc.framing`). So any number of writer processes can send messages of
any size at once, and every message arrives whole.

**End of stream.** When every writer has closed, ``receive`` raises
:exc:`anyio.EndOfStream`, as ``cat`` sees end of file. A receiver opened before any writer
does *not* see a false end of stream: it waits for the first writer. With
``persistent=True`` the receiver also holds a write end of its own, so the FIFO never
reaches end of stream and later writers can come and go.

**Raw bytes.** ``framing=False`` reads and writes plain bytes, so ``echo hi > fifo`` or a
C program can talk to aioipc; each ``receive`` returns whatever bytes arrived.

**Safety.** ``create`` makes the FIFO mode 0600. Opening refuses to follow a symlink at
``path`` (a link planted in a shared directory) and refuses anything that is not a FIFO.
"""

from __future__ import annotations

import errno
import os
import stat

import anyio

from ._core import registry as _registry
from ._core.check import check_mode
from ._core.stream import FdReceiveChannel, FdResource, FdSendChannel
from ._core.wait import AGAIN, Again, poll_until
from .errors import NOFOLLOW, IPCError, IPCExistsError, map_errors, translate_os_error
from .framing import DEFAULT_MAX_MESSAGE_SIZE, check_max_message_size, check_max_partial_bytes

__all__ = [
    "FdReceiveChannel",
    "FdSendChannel",
    "NotAFifoError",
    "create",
    "open_receiver",
    "open_sender",
    "unlink",
]

# open_sender's wait for a reader: first and longest pause between attempts.
_FIRST_BACKOFF, _MAX_BACKOFF = 0.001, 0.05


class NotAFifoError(IPCError, ValueError):
    """The path exists but is not a FIFO (a regular file, a directory, a symlink...)."""


def _what(path: str) -> str:
    return f"FIFO {path}"


def create(path: str | os.PathLike[str], mode: int = 0o600, *, exist_ok: bool = False) -> None:
    """Create a FIFO at ``path`` with permission bits ``mode`` (default 0600).

    Raises:
        aioipc.IPCExistsError: something exists at ``path`` (unless ``exist_ok`` and it
            is a FIFO).
        aioipc.fifo.NotAFifoError: ``exist_ok`` is set but ``path`` is not a FIFO.
        aioipc.IPCNotFoundError: the directory does not exist.
        aioipc.IPCPermissionError: the directory is not writable.
        ValueError, TypeError: ``mode`` is not permission bits 0..0o777.
    """
    p = os.fspath(path)
    check_mode(mode, _what(p))
    try:
        os.mkfifo(p, mode)
    except FileExistsError:
        if not exist_ok:
            raise IPCExistsError(
                errno.EEXIST, f"{_what(p)}: something already exists at this path", p
            ) from None
        _check_fifo(p)
        return
    except OSError as exc:
        raise translate_os_error(exc, _what(p)) from exc
    # mkfifo applies the umask; the caller's mode is what they asked for.
    with map_errors(_what(p)):
        st = os.lstat(p)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(p, mode)
    _registry.record("fifo", p, st=st)


def unlink(path: str | os.PathLike[str]) -> None:
    """Remove the FIFO at ``path`` (open ends keep working) and its registry entry.

    Raises:
        aioipc.fifo.NotAFifoError: ``path`` is not a FIFO (nothing is removed).
        aioipc.IPCNotFoundError: nothing is at ``path``.
        aioipc.IPCPermissionError: the directory is not writable.
    """
    p = os.fspath(path)
    _check_fifo(p)
    with map_errors(_what(p)):
        os.unlink(p)
    _registry.forget("fifo", p)


_mkfifo = create  # open_receiver's ``create`` argument shadows the function


def _check_fifo(path: str) -> os.stat_result:
    with map_errors(_what(path)):
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise NotAFifoError(f"{_what(path)}: is a symbolic link; refusing to follow it")
    if not stat.S_ISFIFO(st.st_mode):
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else "not a FIFO"
        raise NotAFifoError(f"{_what(path)}: is {kind}; create it with aioipc.fifo.create()")
    return st


def _open(path: str, flags: int) -> int:
    """Open ``path`` without following a symlink, and make sure it is the FIFO we checked."""
    expected = _check_fifo(path)
    with map_errors(_what(path), NOFOLLOW):  # a symlink swapped in after the check
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino) or not stat.S_ISFIFO(
        st.st_mode
    ):
        os.close(fd)
        raise NotAFifoError(f"{_what(path)}: was replaced while it was being opened")
    return fd


async def open_receiver(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    mode: int = 0o600,
    framing: bool = True,
    persistent: bool = False,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_partial_bytes: int | None = None,
) -> FdReceiveChannel:
    """Open the FIFO at ``path`` for receiving. Never waits.

    Args:
        create: create the FIFO (with ``mode``) if it does not exist.
        framing: ``True`` for whole messages from any number of aioipc senders;
            ``False`` for raw bytes (``echo``, ``cat``, C programs).
        persistent: keep receiving across writers: end of stream is never reported.
        max_message_size: the largest message accepted.
        max_partial_bytes: framed only: the most bytes held for all writers'
            unfinished messages together (default four times ``max_message_size``).
            Beyond it, the unfinished message of the writer that has been silent the
            longest is dropped, with a warning logged (logger ``aioipc.framing``).

    Raises:
        aioipc.IPCNotFoundError: no FIFO at ``path`` (and ``create`` is false).
        aioipc.fifo.NotAFifoError: ``path`` is a regular file, a symlink or other non-FIFO.
        aioipc.IPCPermissionError: the FIFO's mode does not allow reading.
        ValueError, TypeError: a bad ``mode``, ``max_message_size`` or
            ``max_partial_bytes``; nothing was created.

    Cancellation: this call does not wait, so there is nothing to cancel but the
    checkpoint; a cancelled call has opened nothing.
    """
    p = os.fspath(path)
    check_mode(mode, _what(p))
    check_max_message_size(max_message_size, _what(p))
    if max_partial_bytes is not None:
        check_max_partial_bytes(max_partial_bytes, max_message_size, _what(p))
    await anyio.lowlevel.checkpoint()
    if create:
        _mkfifo(p, mode, exist_ok=True)
    fd = _open(p, os.O_RDONLY)
    extra: tuple[FdResource, ...] = ()
    if persistent:
        # Our own idle write end keeps the writer count above zero: no end of stream.
        try:
            keep = _open(p, os.O_WRONLY)
        except BaseException:
            os.close(fd)
            raise
        extra = (FdResource(keep, f"{_what(p)} (keep-alive write end)"),)
    return FdReceiveChannel(
        FdResource(fd, _what(p)),
        mechanism="fifo",
        framing="chunks" if framing else "raw",
        max_message_size=max_message_size,
        path=p,
        trust_first_eof=False,
        extra_fds=extra,
        max_partial_bytes=max_partial_bytes,
    )


async def open_sender(
    path: str | os.PathLike[str],
    *,
    framing: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> FdSendChannel:
    """Open the FIFO at ``path`` for sending, waiting until a receiver has it open.

    Raises:
        aioipc.IPCNotFoundError: no FIFO at ``path``.
        aioipc.fifo.NotAFifoError: ``path`` is a regular file, a symlink or other non-FIFO.
        aioipc.IPCPermissionError: the FIFO's mode does not allow writing.
        ValueError, TypeError: a bad ``max_message_size``.

    Cancellation: waiting for a receiver can be cancelled (use ``anyio.fail_after`` for a
    deadline); a cancelled call has opened nothing.
    """
    p = os.fspath(path)
    check_max_message_size(max_message_size, _what(p))
    await anyio.lowlevel.checkpoint()

    def attempt() -> int | Again:
        try:
            return _open(p, os.O_WRONLY)
        except IPCError as exc:
            # ENXIO: no reader yet. The kernel has no event for "a reader opened".
            if getattr(exc, "errno", None) != errno.ENXIO:
                raise
            return AGAIN

    fd = await poll_until(attempt, first=_FIRST_BACKOFF, most=_MAX_BACKOFF)
    return FdSendChannel(
        FdResource(fd, _what(p)),
        mechanism="fifo",
        framing="chunks" if framing else "raw",
        max_message_size=max_message_size,
        path=p,
    )
