"""Anonymous pipes as channels.

``aioipc.pipe()`` returns ``(sender, receiver)`` over ``os.pipe()``. Both ends are driven
by fd readiness: no threads. The pipe is grown to :data:`DEFAULT_PIPE_SIZE` (1 MiB, the
kernel's ``/proc/sys/fs/pipe-max-size``) so a large message crosses in a few system
calls instead of one per 64 KiB.

Handing an end to a child process:

* **subprocess**: pass ``receiver.fileno()`` in ``pass_fds`` and on the command line; the
  child wraps it with ``aioipc.pipes.from_fd(fd, "r")``. Close the parent's copy once the
  child runs, so that end of stream is seen when the child's copy closes.
* **multiprocessing** (any start method, spawn included): pass the channel itself in the
  ``Process`` arguments. Pickling it for the child duplicates its fd into the child,
  where it arrives as the same kind of channel. Close the parent's copy after
  ``start()``.

One writer per pipe is assumed in the default framing; several writers to one pipe
should use a FIFO (:mod:`aioipc.fifo`), whose framing keeps messages whole.
"""

from __future__ import annotations

import fcntl
import os
from typing import Literal, overload

from ._core.check import INT_MAX, check_fd, check_int
from ._core.stream import FdReceiveChannel, FdResource, FdSendChannel
from .errors import map_errors
from .framing import DEFAULT_MAX_MESSAGE_SIZE, Framing, check_max_message_size

__all__ = [
    "DEFAULT_PIPE_SIZE",
    "FdReceiveChannel",
    "FdSendChannel",
    "from_fd",
    "pipe",
    "set_pipe_size",
]

#: The size ``pipe()`` asks the kernel for (capped at ``/proc/sys/fs/pipe-max-size``).
DEFAULT_PIPE_SIZE = 1024 * 1024


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 64 * 1024


def set_pipe_size(fd: int, size: int) -> int:
    """Ask the kernel to resize the pipe behind ``fd``; return the size it now has.

    The request is capped at ``/proc/sys/fs/pipe-max-size``. If the kernel refuses
    (an unprivileged user over ``pipe-user-pages-soft``), the pipe keeps its size:
    a smaller buffer only costs speed, never correctness.
    """
    size = min(size, _pipe_max_size())
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def _framing(framing: bool) -> Framing:
    return "frames" if framing else "raw"


def pipe(
    *,
    framing: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    pipe_size: int | None = DEFAULT_PIPE_SIZE,
) -> tuple[FdSendChannel, FdReceiveChannel]:
    """Create an anonymous pipe and return ``(sender, receiver)`` channels.

    Args:
        framing: ``True`` (default) sends length-prefixed messages; ``False`` sends raw
            bytes, for a peer that does not frame (``cat``, a C program), and then each
            ``receive`` returns whatever bytes arrived.
        max_message_size: the largest message either end accepts.
        pipe_size: grow the pipe buffer to this many bytes (``None`` keeps 64 KiB).

    Raises:
        aioipc.IPCSystemError: the process is out of file descriptors (EMFILE, naming
            RLIMIT_NOFILE; or ENFILE).
        ValueError, TypeError: a bad ``max_message_size`` or ``pipe_size``.
    """
    check_max_message_size(max_message_size, "pipe")
    if pipe_size is not None:
        check_int(pipe_size, "pipe_size", minimum=1, maximum=INT_MAX, what="pipe")
    with map_errors("pipe"):
        read_fd, write_fd = os.pipe()
    if pipe_size is not None:
        set_pipe_size(write_fd, pipe_size)
    mode = _framing(framing)
    sender = FdSendChannel(
        FdResource(write_fd, f"pipe (write end, fd {write_fd})"),
        mechanism="pipe",
        framing=mode,
        max_message_size=max_message_size,
    )
    receiver = FdReceiveChannel(
        FdResource(read_fd, f"pipe (read end, fd {read_fd})"),
        mechanism="pipe",
        framing=mode,
        max_message_size=max_message_size,
    )
    return sender, receiver


@overload
def from_fd(
    fd: int,
    mode: Literal["r"],
    *,
    framing: bool = ...,
    max_message_size: int = ...,
) -> FdReceiveChannel: ...


@overload
def from_fd(
    fd: int,
    mode: Literal["w"],
    *,
    framing: bool = ...,
    max_message_size: int = ...,
) -> FdSendChannel: ...


def from_fd(
    fd: int,
    mode: Literal["r", "w"],
    *,
    framing: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> FdReceiveChannel | FdSendChannel:
    """Wrap an inherited pipe fd as a channel: ``"r"`` gives a receiver, ``"w"`` a sender.

    The channel takes ownership of ``fd``: closing the channel closes it. It is made
    non-blocking, which also affects other processes sharing the same open pipe end.

    Raises:
        ValueError: ``mode`` is neither ``"r"`` nor ``"w"``, ``fd`` is not an open file
            descriptor, or ``max_message_size`` is out of range.
    """
    if mode not in ("r", "w"):
        raise ValueError(f'mode must be "r" (receiver) or "w" (sender), not {mode!r}')
    check_fd(fd, "pipes.from_fd")
    check_max_message_size(max_message_size, f"pipe fd {fd}")
    what = f"pipe ({'read' if mode == 'r' else 'write'} end, fd {fd})"
    if mode == "r":
        return FdReceiveChannel(
            FdResource(fd, what),
            mechanism="pipe",
            framing=_framing(framing),
            max_message_size=max_message_size,
        )
    return FdSendChannel(
        FdResource(fd, what),
        mechanism="pipe",
        framing=_framing(framing),
        max_message_size=max_message_size,
    )
