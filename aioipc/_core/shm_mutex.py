"""A robust, process-shared pthread mutex in a shared mapping (the topic's publish order).

Why this and not an OFD lock on the file: taking and dropping an uncontended pthread
mutex is a compare-and-swap in the C library with no system call (about 0.44 µs a
pair through ctypes here), where an OFD lock costs two ``fcntl`` calls per message.
Why it is safe when its holder dies: a *robust* mutex is on its owner thread's robust
list, which the kernel walks when the thread exits, however it exits (SIGKILL too); the
next locker gets ``EOWNERDEAD``, owns the mutex, and marks it consistent. What the
mutex guards (the topic's commit) is designed so that a holder dying at any point leaves
it valid (:mod:`aioipc._core.topic`).

Never waited for with ``pthread_mutex_lock``: that blocks the thread. Callers try, and
poll with backoff (:func:`aioipc._core.wait.poll_until`) while another holds it.

A robust mutex must be unlocked by the thread that locked it: aioipc locks and unlocks
on the event loop's thread within one call or one ``async with``. Another process with
write access to the mapping can forge the mutex's words, as it can forge anything in the
mapping; security.md says what that costs (those processes can kill us anyway).
"""

from __future__ import annotations

import ctypes
import errno
import mmap

from ..errors import ProtocolError
from .libc import _libc

__all__ = ["Mutex"]

_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1
# pthread_mutex_t is 40 bytes and pthread_mutexattr_t 4 on x86-64 glibc; the layout
# reserves 64 for the mutex and this buffer is generous for the attribute.
_ATTR_SIZE = 64

_init = _libc.pthread_mutex_init
_init.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_trylock = _libc.pthread_mutex_trylock
_trylock.argtypes = (ctypes.c_void_p,)
_unlock = _libc.pthread_mutex_unlock
_unlock.argtypes = (ctypes.c_void_p,)
_consistent = _libc.pthread_mutex_consistent
_consistent.argtypes = (ctypes.c_void_p,)


class Mutex:
    """The mutex at ``offset`` in ``buf`` (which must stay mapped while this lives)."""

    __slots__ = ("_anchor", "addr", "what")

    def __init__(self, buf: mmap.mmap, offset: int, what: str) -> None:
        # The ctypes object pins the mapping's buffer: release() before closing it.
        self._anchor: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * 64).from_buffer(
            buf, offset
        )
        self.addr = ctypes.addressof(self._anchor)
        self.what = what

    def initialise(self) -> None:
        """Make a fresh mutex (the creator, before anyone else can map the file).

        Raises:
            aioipc.ProtocolError: the C library refused (it names the errno).
        """
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        for call, args in (
            (_libc.pthread_mutexattr_init, (attr,)),
            (_libc.pthread_mutexattr_setpshared, (attr, _PTHREAD_PROCESS_SHARED)),
            (_libc.pthread_mutexattr_setrobust, (attr, _PTHREAD_MUTEX_ROBUST)),
            (_init, (self.addr, attr)),
        ):
            rc = call(*args)
            if rc:
                raise ProtocolError(
                    f"{self.what}: {call.__name__} failed: {errno.errorcode.get(rc, rc)}"
                )

    def try_lock(self) -> bool:
        """Take the mutex if nobody holds it; True if taken. A holder that died leaves
        it to us (``EOWNERDEAD``): it is made consistent and taken.

        Raises:
            aioipc.ProtocolError: the mutex's words are not a valid mutex (forged or
                overwritten), or it was left unrecoverable.
        """
        rc = _trylock(self.addr)
        if rc == 0:
            return True
        if rc == errno.EBUSY:
            return False
        if rc == errno.EOWNERDEAD:
            _consistent(self.addr)
            return True
        raise ProtocolError(
            f"{self.what}: the publish mutex is unusable ({errno.errorcode.get(rc, rc)})"
        )

    def unlock(self) -> None:
        """Drop the mutex. It is a locked instruction, so also a full memory barrier."""
        _unlock(self.addr)

    def release(self) -> None:
        """Let the mapping go (call with the mutex not held)."""
        self._anchor = None
        self.addr = 0
