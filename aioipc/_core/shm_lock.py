"""The locks on a shared-memory ring's region file, and the multi-producer send lock.

The kernel keeps the only record of who is attached and who is alive: locks on bytes of
the region file, which it drops when their holder dies (even by SIGKILL). Nothing here
reads or writes the ring's contents. Lock bytes (not data; docs/shared-memory.md)::

    0  OFD, exclusive      the receiver
    1  OFD, exclusive      the sender (single producer)
    2  OFD, shared         every sender (multi-producer)
    3  OFD, exclusive      a multi-producer sender while it writes (:func:`send_lock`)
    8  classic POSIX lock  the receiver's process
    9  classic POSIX lock  the sender's process (single producer)

An OFD lock does not say who holds it (F_OFD_GETLK reports pid -1); a classic lock does,
so the peer learns the pid to watch from the kernel, never from the shared header.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .wait import AGAIN, Again, poll_until

LOCK_CONSUMER, LOCK_PRODUCER, LOCK_PRODUCERS, LOCK_SEND = 0, 1, 2, 3
PID_CONSUMER, PID_PRODUCER = 8, 9

# struct flock on 64-bit Linux: short type, short whence, off_t start, off_t len,
# pid_t pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("hh4xqqi4x")

# The send lock's polling schedule, in seconds (see send_lock).
SEND_LOCK_FIRST, SEND_LOCK_MOST = 0.0005, 0.02


def _lock_struct(kind: int, start: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0)


# Every sleep asks who holds the peer's pid byte: the question, built once.
_WHO_HOLDS = {b: _lock_struct(fcntl.F_WRLCK, b) for b in (PID_CONSUMER, PID_PRODUCER)}


def try_lock(fd: int, start: int, exclusive: bool = True) -> bool:
    """Take this open file's OFD lock on byte ``start``; False if another holds it."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_struct(kind, start))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int, start: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_struct(fcntl.F_UNLCK, start))


def is_locked(fd: int, start: int) -> bool:
    """Whether another open file description holds a lock on byte ``start``."""
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _lock_struct(fcntl.F_WRLCK, start))
    kind: int = _FLOCK.unpack(got)[0]
    return kind != fcntl.F_UNLCK


# A process loses all its classic POSIX locks on a file when it closes *any* descriptor
# of that file. Every close of a region descriptor in aioipc counts here, and an end
# whose count is behind takes its pid lock again before it next sleeps.
_closes = 0


def close_region(fd: int) -> None:
    global _closes
    os.close(fd)
    _closes += 1


def region_closes() -> int:
    """How many region descriptors this process has closed (see :func:`close_region`)."""
    return _closes


def take_pid_lock(fd: int, start: int) -> int:
    """Take the classic POSIX lock on byte ``start``: 0, or the pid holding it (-1 if
    that is not known: an OFD lock, or a process outside our pid namespace)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, _lock_struct(fcntl.F_WRLCK, start))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return pid_lock_holder(fd, start) or -1
        raise
    return 0


def pid_lock_holder(fd: int, start: int) -> int:
    """The pid of the process holding a classic lock on byte ``start``, as the kernel
    reports it in our pid namespace; 0 if none, if an OFD lock holds it, or if the
    holder is not visible from here. F_OFD_GETLK (not F_GETLK): it also reports this
    process's own classic locks, so a peer in this very process is found too."""
    kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _WHO_HOLDS[start]))
    return pid if kind != fcntl.F_UNLCK and pid > 0 else 0


@asynccontextmanager
async def send_lock(fd: Callable[[], int], check_open: Callable[[], None]) -> AsyncIterator[None]:
    """Hold a multi-producer ring's send lock (OFD lock byte 3) for the block.

    Polled on :func:`aioipc._core.wait.poll_until`'s backoff, not waited for in a
    thread: F_OFD_SETLKW cannot be interrupted (Python retries it on EINTR), so a
    cancelled send would hang as long as the holder keeps the lock. The lock is held
    for the time of one copy into the ring, or while its holder waits for room, which a
    short poll follows well enough. ``fd()`` is the region's descriptor (-1 once the
    handle closed); ``check_open`` raises if the handle was closed meanwhile.

    Cancellation: at any poll; the lock is then not held.
    """

    def attempt() -> bool | Again:
        check_open()
        return True if try_lock(fd(), LOCK_SEND) else AGAIN

    await poll_until(attempt, first=SEND_LOCK_FIRST, most=SEND_LOCK_MOST)
    try:
        yield
    finally:
        region = fd()
        if region >= 0:
            unlock(region, LOCK_SEND)
