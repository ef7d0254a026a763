"""``aioipc.Lock``: a cross-process mutex that a crashed holder cannot leave locked."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from anyio import TaskInfo, get_current_task

from ._core.sysv_base import IPC_PRIVATE
from ._core.sysv_sem import Semaphore

__all__ = ["Lock"]


class Lock:
    """A mutex shared by processes, shaped like :class:`anyio.Lock`.

    It is a System V semaphore of value 1 taken with ``SEM_UNDO``: if the holding
    process dies -- even by SIGKILL -- the kernel gives the lock back at once, so the
    next ``acquire`` anywhere succeeds. (A POSIX semaphore or a lock file offers no such
    guarantee.) Within one process, the waiting tasks queue on the semaphore handle:
    one of them waits in the kernel (holding one worker thread), the others behind it,
    so that removing the lock or closing the handle wakes them all, whoever holds it.

    Like anyio's, the lock is not reentrant and only the task that acquired it may
    release it.
    """

    def __init__(self, sem: Semaphore) -> None:
        self._sem = sem
        self._owner: TaskInfo | None = None

    @classmethod
    def create(cls, key: int = IPC_PRIVATE, *, mode: int = 0o600) -> Lock:
        """Create a new, unlocked lock under ``key``; never waits.

        Raises:
            aioipc.IPCExistsError: a semaphore set with this key exists.
            ValueError: the key is out of range, or ``mode`` is not in 0..0o777.
            TypeError: ``mode`` is not an int.
        """
        return cls(Semaphore.create(key, 1, mode=mode))

    @classmethod
    def open(cls, key: int) -> Lock:
        """Open the lock under ``key``; never waits.

        Raises:
            aioipc.IPCNotFoundError: nothing has this key.
        """
        return cls(Semaphore.open(key))

    @classmethod
    def open_or_create(cls, key: int, *, mode: int = 0o600) -> Lock:
        """Open the lock under ``key``, creating it unlocked if there is none.

        Raises as :meth:`create` and :meth:`open`.
        """
        return cls(Semaphore.open_or_create(key, 1, mode=mode))

    def __reduce__(self) -> tuple[Any, ...]:
        # A child process gets its own handle on the same semaphore, not holding it.
        return (_reopen, (self._sem.id, self._sem.key))

    @property
    def key(self) -> int:
        return self._sem.key

    @property
    def id(self) -> int:
        return self._sem.id

    def locked(self) -> bool:
        """Whether some task, in any process, holds the lock now."""
        return self._sem.value == 0

    def _check_reentry(self) -> TaskInfo:
        task = get_current_task()
        if self._owner is not None and self._owner.id == task.id:
            raise RuntimeError("this task already holds the lock (aioipc.Lock is not reentrant)")
        return task

    async def acquire(self) -> None:
        """Take the lock, waiting for it.

        Raises:
            RuntimeError: this task holds it already.
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            anyio.BrokenResourceError: the semaphore was removed (also while waiting).

        Cancellation: a cancelled acquire does not hold the lock.
        """
        task = self._check_reentry()
        # No lock of our own around this: a task waiting on one would be out of reach
        # of removal (EIDRM) and aclose, which wake only what waits on the semaphore.
        # Semaphore.acquire already queues this handle's waiters behind one worker.
        await self._sem.acquire()
        self._owner = task

    def acquire_nowait(self) -> None:
        """Take the lock if it is free.

        Raises:
            anyio.WouldBlock: another task or process holds it.
            RuntimeError: this task holds it already.
            anyio.ClosedResourceError: the handle is closed.
            anyio.BrokenResourceError: the semaphore was removed.
        """
        task = self._check_reentry()
        self._sem.acquire_nowait()
        self._owner = task

    def release(self) -> None:
        """Give the lock back.

        Raises:
            RuntimeError: the current task does not hold it.
            anyio.ClosedResourceError: the handle was closed (which gave the lock back).
            anyio.BrokenResourceError: the semaphore was removed.
        """
        task = get_current_task()
        if self._owner is None or self._owner.id != task.id:
            raise RuntimeError("the current task does not hold this lock")
        self._owner = None
        self._sem.release()

    def remove(self) -> None:
        """Remove the semaphore under the lock from the system: every task waiting for
        it, in any process (this one included, whoever holds it), wakes with
        BrokenResourceError.

        Raises:
            aioipc.IPCPermissionError: only the owner, the creator or root may remove it.
            anyio.BrokenResourceError: it was removed already.
        """
        self._sem.remove()

    async def aclose(self) -> None:
        """Close this handle (the lock stays, unless it was created private).

        The tasks waiting through this handle wake with ClosedResourceError; if a task
        of this handle holds the lock, closing gives it back. Never blocks for long.
        """
        await self._sem.aclose()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<aioipc.Lock on {self._sem!r}>"


def _reopen(sid: int, key: int) -> Lock:
    return Lock(Semaphore.from_id(sid, key=key))
