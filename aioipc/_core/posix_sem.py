"""Named POSIX semaphores (``sem_open``) with anyio.Semaphore's shape."""

from __future__ import annotations

import errno
import os
import warnings
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import posix_ipc
from anyio import BrokenResourceError, ClosedResourceError, WouldBlock

from ..errors import IPCExistsError, IPCNotFoundError, Overrides, open_or_create, translate_os_error
from . import registry as _registry
from .check import check_int, check_mode
from .posix_base import SEM_ERRORS, check_name, map_posix_errors, posix_error
from .threads import Interrupted, Job, Workers, run_in_worker, stop_jobs

__all__ = ["Semaphore", "unlink_semaphore"]

_PREFIX = len("sem.")
#: The largest value of a POSIX semaphore (SEM_VALUE_MAX).
VALUE_MAX: int = posix_ipc.SEMAPHORE_VALUE_MAX


def _over_value_max(exc: OSError, what: str) -> Exception:
    return ValueError(f"{what}: the value would exceed SEM_VALUE_MAX ({VALUE_MAX})")


def _invalid(exc: OSError, what: str) -> Exception:
    # posix_ipc's ExistentialError on an open handle: sem_wait/sem_post said EINVAL.
    return BrokenResourceError(
        f"{what}: the kernel no longer takes this semaphore ({exc.strerror})"
    )


#: How the errnos of an operation on an open semaphore read.
_OP_ERRORS: Overrides = {
    **SEM_ERRORS,
    errno.EOVERFLOW: _over_value_max,
    errno.ENOENT: _invalid,
    errno.EINVAL: _invalid,
}


class Semaphore:
    """A named POSIX semaphore: ``await acquire()``, ``release()``, ``async with``.

    Unlike :class:`aioipc.sysv.Semaphore` the kernel does not give back a permit held by
    a process that dies; use :class:`aioipc.Lock` (System V, SEM_UNDO) for a mutex that
    must survive crashes. Timed waits are anyio's: ``with anyio.fail_after(2): await
    sem.acquire()``.

    Waiting: ``sem_trywait`` first; only if it would block, ``sem_wait`` on one of
    aioipc's worker threads (tasks of one handle take turns, holding one thread).
    """

    def __init__(self, sem: posix_ipc.Semaphore, name: str) -> None:
        self._sem = sem
        self._name = name
        self._what = f"POSIX semaphore {name}"
        self._closed = False
        self._jobs = Workers()
        # Tasks of one handle wait in turn, holding one worker thread between them.
        # fast_acquire: a free lock costs no extra trip through the event loop (the
        # acquire has checkpointed already; the wait is one).
        self._lock = anyio.Lock(fast_acquire=True)

    @classmethod
    def _open(cls, name: str, flags: int, mode: int = 0o600, value: int = 0) -> Semaphore:
        check_name(name, "semaphore", _PREFIX)
        what = f"POSIX semaphore {name}"
        creating = bool(flags & posix_ipc.O_CREAT)
        if creating:
            check_mode(mode, what)
            check_int(value, "value", minimum=0, maximum=VALUE_MAX, what=what)
        with map_posix_errors("sem", name):
            try:
                sem = posix_ipc.Semaphore(name, flags, mode, value)
            except posix_ipc.ExistentialError:
                if not creating and os.path.exists(f"/dev/mqueue{name}"):
                    raise IPCNotFoundError(
                        errno.ENOENT,
                        f"{what}: does not exist (a POSIX message queue has that name)",
                    ) from None
                raise
        if flags & posix_ipc.O_EXCL:
            try:
                _chmod_created(name, mode)
            except OSError as exc:
                sem.unlink()
                sem.close()
                raise translate_os_error(exc, what, SEM_ERRORS) from exc
            _registry.record("posix-sem", name, st=_stat_or_none(f"/dev/shm/sem.{name[1:]}"))
        return cls(sem, name)

    @classmethod
    def create(cls, name: str, value: int = 1, *, mode: int = 0o600) -> Semaphore:
        """Create a semaphore with ``value`` permits (``O_CREAT|O_EXCL``); never waits.

        Raises:
            aioipc.IPCExistsError: the name exists.
            TypeError: ``value`` or ``mode`` is not an int.
            ValueError: a bad name, ``value`` outside 0..VALUE_MAX or ``mode`` outside
                0..0o777 (named; checked before anything is created).
            aioipc.IPCSystemError: errno EMFILE (RLIMIT_NOFILE, named with its value),
                ENFILE (the system's file-max) or ENOSPC (/dev/shm is full).
            aioipc.IPCPermissionError: not allowed.
        """
        return cls._open(name, posix_ipc.O_CREX, mode, value)

    @classmethod
    def open(cls, name: str) -> Semaphore:
        """Open an existing semaphore; never waits.

        Raises:
            aioipc.IPCNotFoundError: no such semaphore.
            aioipc.IPCPermissionError: its mode does not let us in.
            aioipc.IPCSystemError: EMFILE (RLIMIT_NOFILE, named with its value) or
                ENFILE (the system's file-max).
            ValueError: a bad name.
        """
        return cls._open(name, 0)

    @classmethod
    def open_or_create(cls, name: str, value: int = 1, *, mode: int = 0o600) -> Semaphore:
        """Open the semaphore, or create it with ``value`` permits and exactly ``mode``.

        An exclusive create first, then an open (retried if another process removes it
        in between), so that a semaphore this call makes gets exactly ``mode`` whatever
        the umask, and is recorded as aioipc's. Never waits. ``value`` and ``mode`` are
        checked even if the semaphore exists.

        Raises:
            as :meth:`create` and :meth:`open`, except IPCExistsError and IPCNotFoundError
            (unless the name keeps being created and removed by others: IPCExistsError).
        """
        return open_or_create(
            lambda: cls.create(name, value, mode=mode),
            lambda: cls.open(name),
            IPCExistsError(errno.EEXIST, f"POSIX semaphore {name}: keeps appearing and vanishing"),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Handles pickle by name (multiprocessing children reopen it).
        return (Semaphore.open, (self._name,))

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        """Permits available now."""
        self._check_open()
        return int(self._sem.value)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this handle is closed")

    def _try(self) -> bool:
        try:
            self._sem.acquire(0)
            return True
        except posix_ipc.BusyError:
            return False
        except (posix_ipc.Error, OSError) as exc:
            raise posix_error(exc, self._what, _OP_ERRORS) from exc

    def acquire_nowait(self) -> None:
        """Take a permit if one is free.

        Raises:
            anyio.WouldBlock: none is free.
            anyio.ClosedResourceError: this handle is closed.
        """
        self._check_open()
        if not self._try():
            raise WouldBlock

    async def acquire(self) -> None:
        """Take a permit, waiting for one.

        Raises:
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            anyio.BrokenResourceError: the kernel refused the wait (its errno is named).
            aioipc.IPCError: a wait needs a worker thread and the interrupt signal handler
                could not be installed (see :func:`aioipc.install_interrupt_handler`).

        Cancellation: a cancelled acquire holds no permit (one granted just as the
        cancellation arrived is given back).
        """
        self._check_open()
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._try():
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        # Not a retry loop: the worker's sem_wait takes the permit itself.
        queued = self._lock.locked()
        async with self._lock:
            self._check_open()  # closed while this task queued for the lock
            if queued and self._try():
                return  # a permit came while this task queued for the lock
            await self._wait()

    async def _wait(self) -> None:
        sem = self._sem
        try:
            await run_in_worker(
                partial(_sem_wait, sem, self._what),
                on_late_result=lambda _: sem.release(),
                workers=self._jobs,
                before_start=self._check_open,
                poll=lambda: True if self._try() else None,
            )
        except Interrupted:
            raise ClosedResourceError(f"{self._what}: the handle was closed") from None
        except (posix_ipc.Error, OSError) as exc:
            raise posix_error(exc, self._what, _OP_ERRORS) from exc

    def release(self) -> None:
        """Give a permit.

        Raises:
            ValueError: the value would exceed SEM_VALUE_MAX (the kernel's EOVERFLOW).
            anyio.ClosedResourceError: this handle is closed.
            anyio.BrokenResourceError: the kernel refused for another reason (named).
        """
        self._check_open()
        # No look at the value first: another process may release in between. The
        # kernel's answer (EOVERFLOW, an OSError from posix_ipc) is the one to trust.
        try:
            self._sem.release()
        except (posix_ipc.Error, OSError) as exc:
            raise posix_error(exc, self._what, _OP_ERRORS) from exc

    def unlink(self) -> None:
        """Remove the name; handles already open keep working.

        Raises:
            aioipc.IPCNotFoundError: it was unlinked already.
            aioipc.IPCPermissionError: we may not remove it.
        """
        unlink_semaphore(self._name)

    async def aclose(self) -> None:
        """Close this handle: waiting tasks get ClosedResourceError and their threads stop."""
        if self._closed:
            return
        self._closed = True
        await stop_jobs(self._jobs)
        self._sem.close()

    async def __aenter__(self) -> Semaphore:
        await self.acquire()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)
            self._closed = True
            self._sem.close()

    def __repr__(self) -> str:
        return f"<aioipc {self._what}{' closed' if self._closed else ''}>"


def _sem_wait(sem: posix_ipc.Semaphore, what: str, job: Job[bool]) -> bool:
    """A worker's blocking sem_wait (posix_ipc raises SignalError on EINTR)."""
    try:
        job.call(sem.acquire, posix_ipc.SignalError)
    except posix_ipc.Error as exc:
        # Here, in the thread whose errno it is (see posix_base.posix_errno).
        raise posix_error(exc, what, _OP_ERRORS) from exc
    return True


def _chmod_created(name: str, mode: int) -> None:
    """sem_open applies the umask; give the semaphore exactly ``mode``.

    glibc keeps the semaphore in /dev/shm/sem.NAME. O_NOFOLLOW: /dev/shm is shared and
    world-writable, so never follow a link someone may have planted there.
    """
    try:
        fd = os.open(f"/dev/shm/sem.{name[1:]}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # another C library, another place: it keeps its umask-reduced mode
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def unlink_semaphore(name: str) -> None:
    """Remove the named POSIX semaphore (``sem_unlink``).

    Raises:
        aioipc.IPCNotFoundError: no such semaphore.
        aioipc.IPCPermissionError: we may not remove it.
        ValueError: a bad name.
    """
    check_name(name, "semaphore", _PREFIX)
    with map_posix_errors("sem", name):
        posix_ipc.unlink_semaphore(name)
    _registry.forget("posix-sem", name)


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None
