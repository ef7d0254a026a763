"""System V semaphore sets (atomic multi-semaphore operations) and single semaphores."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Sequence
from functools import partial
from types import TracebackType
from typing import Any, Self

import anyio
from anyio import ClosedResourceError, WouldBlock

from ..errors import IPCSystemError, Overrides, open_or_create
from . import libc as _libc
from .check import LONG_MAX, check_int, check_mode
from .libc import IPC_CREAT, IPC_EXCL, IPC_NOWAIT, SEM_UNDO
from .sysv_base import IPC_PRIVATE, SysVObject, check_key, key_repr, read_sysctl
from .threads import Interrupted, Job, Workers, run_in_worker

__all__ = ["Semaphore", "SemaphoreSet"]


#: The largest value a System V semaphore can hold (SEMVMX).
SEMVMX = 32767
_SEM = "/proc/sys/kernel/sem"  # semmsl semmns semopm semmni


def _check_index(i: int, size: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"a semaphore index is an int, not {i!r}")
    if not 0 <= i < size:
        raise IndexError(f"semaphore index {i} out of range for a set of {size}")
    return i


def _check_value(v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"a semaphore value is an int, not {v!r}")
    if not 0 <= v <= SEMVMX:
        raise ValueError(f"a SysV semaphore value must be in 0..{SEMVMX} (SEMVMX), got {v}")
    return v


def _too_many(size: int, semmsl: int) -> ValueError:
    return ValueError(
        f"a SysV semaphore set holds 1..{semmsl} semaphores "
        f"(semmsl, first field of {_SEM}), asked for {size}"
    )


class SemaphoreSet(SysVObject):
    """``size`` System V semaphores under one key, changed atomically with :meth:`op`.

    ``await op([(0, -1), (1, -1)])`` takes one from semaphore 0 *and* one from 1 in one
    ``semop``: it waits until both can be taken and never holds one without the other.
    A delta > 0 gives, < 0 takes (waiting while the value is too small), 0 waits until
    the value is zero.

    ``undo=True`` (the default) adds ``SEM_UNDO`` to every operation, so the kernel
    reverses a process's changes when it exits -- even by SIGKILL. That is right for
    locks and resource counts; for semaphores used as signals between processes (one
    side only gives, the other only takes) pass ``undo=False``.

    Waiting: a no-wait ``semop`` first; only if it would block, a worker thread.

    Close a handle with ``await aclose()`` (or ``contextlib.aclosing``); the set itself
    lives until :meth:`remove`.
    """

    _kind = "sem"
    _kind_name = "SysV semaphore set"

    def __init__(
        self, key: int, sid: int, *, undo: bool = True, remove_on_close: bool = False
    ) -> None:
        SysVObject.__init__(self, key, sid)
        self._undo = undo
        self._remove_on_close = remove_on_close
        self._jobs = Workers()
        self._size = int(self._stat().nsems)
        self._closed = False

    # -- construction -----------------------------------------------------------------

    @classmethod
    def _get(cls, key: int, size: int, flags: int, creating: bool) -> int:
        try:
            return _libc.semget(key, size, flags)
        except OSError as exc:
            raise cls._lookup_error(exc, key, creating, _get_errors(size, creating)) from exc

    @classmethod
    def create(
        cls,
        key: int = IPC_PRIVATE,
        size: int = 1,
        *,
        values: Sequence[int] | int = 0,
        mode: int = 0o600,
        undo: bool = True,
        remove_on_close: bool | None = None,
    ) -> SemaphoreSet:
        """Create a set of ``size`` semaphores under ``key`` (``IPC_EXCL``); never waits.

        ``values`` (one int for all, or one per semaphore) are set at once (SETALL), so a
        process that opens the set just before sees zeros and simply waits: there is no
        window in which it sees some values set and others not.

        Raises:
            aioipc.IPCExistsError: a semaphore set with this key exists.
            ValueError: a key, size or value out of range (``size``: 1..semmsl, the first
                field of /proc/sys/kernel/sem), or ``mode`` not in 0..0o777.
            TypeError: ``mode`` or ``size`` is not an int.
        """
        key = check_key(key)
        what = f"{cls._kind_name} key={key_repr(key)}"
        check_mode(mode, what)
        check_int(size, "size", minimum=1, maximum=LONG_MAX, what=what)  # then semmsl
        semmsl = read_sysctl(_SEM, 32000)
        if size > semmsl:
            # Before the values are spread over ``size`` slots: size=2**31 would fill
            # 16 GiB for semget to refuse.
            raise _too_many(size, semmsl)
        vals = [values] * size if isinstance(values, int) else list(values)
        if len(vals) != size:
            raise ValueError(f"{len(vals)} values given for a set of {size} semaphores")
        for v in vals:
            _check_value(v)
        sid = cls._get(key, size, IPC_CREAT | IPC_EXCL | mode, True)
        if remove_on_close is None:
            remove_on_close = key == IPC_PRIVATE
        s = cls._new(key, sid, undo=undo, remove_on_close=remove_on_close)
        if any(vals):
            # SETALL, not one semop: a semop takes at most semopm (500) operations.
            try:
                _libc.semctl(sid, 0, _libc.SETALL, (ctypes.c_ushort * size)(*vals))
            except OSError as exc:
                s._closed = True
                s._remove_quietly()
                raise s._error(exc) from exc
        s._record_created()
        return s  # type: ignore[no-any-return]

    @classmethod
    def _new(cls, key: int, sid: int, *, undo: bool, remove_on_close: bool) -> Any:
        try:
            return cls(key, sid, undo=undo, remove_on_close=remove_on_close)
        except OSError as exc:
            raise cls._lookup_error(exc, key, False) from exc

    @classmethod
    def open(cls, key: int, *, undo: bool = True) -> Self:
        """Open the existing set under ``key``; never waits.

        Raises:
            aioipc.IPCNotFoundError: no semaphore set has this key (the message says if
                another kind of System V object has it).
            ValueError: the key is out of range or IPC_PRIVATE.
        """
        key = check_key(key)
        if key == IPC_PRIVATE:
            raise ValueError("IPC_PRIVATE always creates a new set; use create()")
        sid = cls._get(key, 0, 0, False)
        s: Self = cls._new(key, sid, undo=undo, remove_on_close=False)
        return s

    @classmethod
    def open_or_create(
        cls,
        key: int,
        size: int = 1,
        *,
        values: Sequence[int] | int = 0,
        mode: int = 0o600,
        undo: bool = True,
    ) -> SemaphoreSet:
        """Open the set under ``key``, or create it as :meth:`create` does if there is none.

        ``mode`` applies only if this call creates the set, but is checked either way.
        """
        key = check_key(key)
        if key == IPC_PRIVATE:
            raise ValueError("IPC_PRIVATE always creates a new set; use create()")
        check_mode(mode, f"{cls._kind_name} key={key_repr(key)}")
        # The base create: Semaphore.create takes ``value``, not ``size, values``.
        base_create = SemaphoreSet.create.__func__  # type: ignore[attr-defined]
        created: SemaphoreSet = open_or_create(
            lambda: base_create(cls, key, size, values=values, mode=mode, undo=undo),
            lambda: cls.open(key, undo=undo),
            IPCSystemError(
                errno.EAGAIN, f"{cls._kind_name} key={key}: created and removed repeatedly"
            ),
        )
        return created

    @classmethod
    def from_id(cls, sid: int, *, key: int = IPC_PRIVATE, undo: bool = True) -> Self:
        """A handle on the set with kernel id ``sid`` (handles pickle to this).

        Raises:
            aioipc.IPCNotFoundError: no semaphore set has this id.
            TypeError, ValueError: ``sid`` is not an int in 0..2**31-1 (a kernel id), or
                ``key`` is not a key.
        """
        sid = cls._check_id(sid)
        key = check_key(key)
        try:
            s = cls(key, sid, undo=undo)
        except OSError as exc:
            raise cls._lookup_error(exc, key, False, ipc_id=sid) from exc
        return s

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (type(self), self._id, self._key, self._undo))

    # -- attributes -------------------------------------------------------------------

    def _stat(self) -> _libc.SemidDs:
        return _libc.semctl_stat(self._id)

    def _ipc_set(self, ds: _libc.SemidDs) -> None:
        _libc.semctl(self._id, 0, _libc.IPC_SET, ds)

    def _ctl(self, num: int, cmd: int, arg: Any = 0) -> int:
        self._check_open()
        try:
            return _libc.semctl(self._id, num, cmd, arg)
        except OSError as exc:
            raise self._error(exc) from exc

    def __len__(self) -> int:
        return self._size

    @property
    def size(self) -> int:
        """How many semaphores the set holds."""
        return self._size

    @property
    def undo(self) -> bool:
        """Whether this handle's operations use SEM_UNDO."""
        return self._undo

    def get_value(self, index: int = 0) -> int:
        """The value of one semaphore (GETVAL)."""
        return self._ctl(_check_index(index, self._size), _libc.GETVAL)

    def set_value(self, index: int, value: int) -> None:
        """Set one semaphore (SETVAL); clears every process's undo entries for it."""
        self._ctl(_check_index(index, self._size), _libc.SETVAL, _check_value(value))

    def get_values(self) -> list[int]:
        """All values at one instant (GETALL)."""
        arr = (ctypes.c_ushort * self._size)()
        self._ctl(0, _libc.GETALL, arr)
        return list(arr)

    def set_values(self, values: Sequence[int]) -> None:
        """Set every semaphore at once (SETALL)."""
        if len(values) != self._size:
            raise ValueError(f"{len(values)} values given for a set of {self._size}")
        arr = (ctypes.c_ushort * self._size)(*(_check_value(v) for v in values))
        self._ctl(0, _libc.SETALL, arr)

    def waiting_count(self, index: int = 0) -> int:
        """Processes (threads) waiting for this semaphore to increase (GETNCNT)."""
        return self._ctl(_check_index(index, self._size), _libc.GETNCNT)

    def zero_waiting_count(self, index: int = 0) -> int:
        """Processes (threads) waiting for this semaphore to become zero (GETZCNT)."""
        return self._ctl(_check_index(index, self._size), _libc.GETZCNT)

    def last_pid(self, index: int = 0) -> int:
        """The pid of the last process that operated on this semaphore (GETPID)."""
        return self._ctl(_check_index(index, self._size), 11)

    @property
    def last_op_time(self) -> float | None:
        """Epoch seconds of the last ``semop``, None if never."""
        return float(self._checked_stat().otime) or None

    # -- operations -------------------------------------------------------------------

    def _ops(self, ops: Sequence[tuple[int, int]], undo: bool | None) -> list[tuple[int, int, int]]:
        self._check_open()
        if not ops:
            raise ValueError("op() needs at least one (index, delta) pair")
        use_undo = self._undo if undo is None else undo
        out = []
        for pair in ops:
            index, delta = pair
            _check_index(index, self._size)
            if isinstance(delta, bool) or not isinstance(delta, int):
                raise TypeError(f"a semaphore delta is an int, not {delta!r}")
            if not -SEMVMX <= delta <= SEMVMX:
                raise ValueError(f"semaphore delta {delta} is beyond SEMVMX ({SEMVMX})")
            out.append((index, delta, SEM_UNDO if use_undo and delta else 0))
        return out

    def _op_error(self, exc: OSError) -> Exception:
        return self._error(exc, _OP_ERRORS)

    def _try(self, ops: list[tuple[int, int, int]]) -> bool:
        return self._try_array(_libc.sembufs([(i, d, f | IPC_NOWAIT) for i, d, f in ops]))

    def _try_array(self, nowait: ctypes.Array[_libc.Sembuf]) -> bool:
        """One no-wait semop of a prepared array; False if it would have to wait."""
        err = _libc.semop_errno(self._id, nowait)
        if err == 0:
            return True
        if err == errno.EAGAIN:
            return False
        exc = OSError(err, os.strerror(err))
        raise self._op_error(exc) from exc

    def op_nowait(self, ops: Sequence[tuple[int, int]], *, undo: bool | None = None) -> None:
        """Apply ``ops`` [(index, delta), ...] atomically if that needs no waiting.

        Raises:
            anyio.WouldBlock: some operation would have to wait (nothing was applied).
            anyio.ClosedResourceError: the handle is closed.
            anyio.BrokenResourceError: the set was removed.
            aioipc.IPCPermissionError: the set's mode does not let us change it.
            ValueError: a bad index or delta, or a value above SEMVMX.
        """
        if not self._try(self._ops(ops, undo)):
            raise WouldBlock

    async def op(self, ops: Sequence[tuple[int, int]], *, undo: bool | None = None) -> None:
        """Apply ``ops`` [(index, delta), ...] atomically, as one ``semop``, waiting as needed.

        Raises:
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            anyio.BrokenResourceError: the set was removed (also while waiting).
            aioipc.IPCPermissionError: the set's mode does not let us change it.
            ValueError: a bad index or delta, or a value above SEMVMX.

        Cancellation: a cancelled op applied nothing. If the kernel had applied it when
        the cancellation arrived, aioipc applies the inverse; if that cannot be done at
        once (another process took what the op gave), the cancellation exception
        carries a note saying the operation stayed applied.
        """
        prepared = self._ops(ops, undo)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._try(prepared):
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._wait(prepared)

    async def _wait(
        self,
        prepared: list[tuple[int, int, int]],
        arrays: tuple[ctypes.Array[_libc.Sembuf], ctypes.Array[_libc.Sembuf]] | None = None,
    ) -> None:
        """Wait on a worker thread whose blocking semop applies ``prepared`` itself.
        ``arrays``: the (blocking, no-wait) sembuf arrays of ``prepared``, if the caller
        keeps them built."""
        sid = self._id
        inverse = [(i, -d, f) for i, d, f in prepared if d]
        stuck: list[bool] = []
        if arrays is None:
            arrays = (
                _libc.sembufs(prepared),
                _libc.sembufs([(i, d, f | IPC_NOWAIT) for i, d, f in prepared]),
            )
        block, nowait = arrays

        def blocking(job: Job[bool]) -> bool:
            job.call(partial(_libc.semop_array, sid, block))
            return True

        def undo_late(_: bool) -> None:
            try:
                if inverse and not self._try(inverse):
                    stuck.append(True)
            except Exception:
                stuck.append(True)  # removed meanwhile: the cancellation still goes up

        try:
            await run_in_worker(
                blocking,
                on_late_result=undo_late,
                workers=self._jobs,
                before_start=self._check_open,
                poll=lambda: True if self._try_array(nowait) else None,
            )
        except Interrupted:
            raise ClosedResourceError(f"{self._what}: the handle was closed") from None
        except OSError as exc:
            raise self._op_error(exc) from exc
        except BaseException as exc:
            if stuck:
                exc.add_note(f"aioipc: the semaphore operation on {self._what} stayed applied")
            raise

    # -- lifecycle --------------------------------------------------------------------

    def _rmid(self) -> None:
        _libc.semctl(self._id, 0, _libc.IPC_RMID)


def _over_semvmx(exc: OSError, what: str) -> Exception:
    return ValueError(f"{what}: the operation would take a value above SEMVMX ({SEMVMX})")


def _over_semopm(exc: OSError, what: str) -> Exception:
    return ValueError(f"{what}: more operations than semopm = {_semopm()} in one call")


#: How semop's errnos read: ERANGE and E2BIG are a bad argument, not a system failure.
_OP_ERRORS: Overrides = {errno.ERANGE: _over_semvmx, errno.E2BIG: _over_semopm}


def _get_errors(size: int, creating: bool) -> Overrides | None:
    """semget's EINVAL when creating: more semaphores than semmsl."""
    if not creating:
        return None
    return {errno.EINVAL: lambda exc, what: _too_many(size, read_sysctl(_SEM, 32000))}


def _reopen(cls: type[SemaphoreSet], sid: int, key: int, undo: bool) -> SemaphoreSet:
    return cls.from_id(sid, key=key, undo=undo)


def _semopm() -> int:
    try:
        with open(_SEM) as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 500


class Semaphore(SemaphoreSet):
    """One System V semaphore, with :class:`anyio.Semaphore`'s shape.

    ``async with sem:`` takes a permit and gives it back. With ``undo=True`` (the
    default) a permit this process took is given back by the kernel if the process dies
    holding it. A ``release()`` that gives more than this handle took (a semaphore used
    as a signal) is made without SEM_UNDO, so the kernel does not take it back at exit.
    """

    _kind_name = "SysV semaphore"

    def __init__(
        self, key: int, sid: int, *, undo: bool = True, remove_on_close: bool = False
    ) -> None:
        self._held = 0
        # The sembuf arrays of acquire (wait, no-wait) and release (with and without
        # SEM_UNDO), built once: building them costs more than the semop itself.
        flag = SEM_UNDO if undo else 0
        self._take = (
            _libc.sembufs([(0, -1, flag)]),
            _libc.sembufs([(0, -1, flag | IPC_NOWAIT)]),
        )
        self._give_undo = _libc.sembufs([(0, 1, SEM_UNDO)])
        self._give_plain = _libc.sembufs([(0, 1, 0)])
        # Tasks of one handle wait in turn, holding one worker thread between them.
        # fast_acquire: a free lock costs no extra trip through the event loop (the
        # acquire has checkpointed already; the wait is one).
        self._lock = anyio.Lock(fast_acquire=True)
        super().__init__(key, sid, undo=undo, remove_on_close=remove_on_close)

    @classmethod
    def create(  # type: ignore[override]
        cls,
        key: int = IPC_PRIVATE,
        value: int = 1,
        *,
        mode: int = 0o600,
        undo: bool = True,
        remove_on_close: bool | None = None,
    ) -> Semaphore:
        """Create a semaphore with ``value`` permits under ``key``; never waits.

        Raises:
            aioipc.IPCExistsError: a semaphore set with this key exists.
            ValueError: key or value out of range, or ``mode`` not in 0..0o777.
            TypeError: ``mode`` is not an int.
        """
        s = super().create(
            key, 1, values=value, mode=mode, undo=undo, remove_on_close=remove_on_close
        )
        assert isinstance(s, Semaphore)
        return s

    @classmethod
    def open_or_create(  # type: ignore[override]
        cls, key: int, value: int = 1, *, mode: int = 0o600, undo: bool = True
    ) -> Semaphore:
        """Open the semaphore under ``key``, or create it with ``value`` permits.

        ``mode`` applies only if this call creates it, but is checked either way.
        """
        s = super().open_or_create(key, 1, values=value, mode=mode, undo=undo)
        assert isinstance(s, Semaphore)
        return s

    @property
    def value(self) -> int:
        """Permits available now."""
        return self.get_value(0)

    def acquire_nowait(self) -> None:
        """Take a permit if one is free.

        Raises:
            anyio.WouldBlock: none is free.
            anyio.ClosedResourceError: the handle is closed.
            anyio.BrokenResourceError: the semaphore was removed.
        """
        self._check_open()
        if not self._try_array(self._take[1]):
            raise WouldBlock
        self._held += self._undo

    async def acquire(self) -> None:
        """Take a permit, waiting for one.

        Raises:
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            anyio.BrokenResourceError: the semaphore was removed (also while waiting).

        Cancellation: a cancelled acquire holds no permit (one the kernel granted just
        as the cancellation arrived is given back). Tasks of one handle wait in turn,
        holding one worker thread between them.
        """
        self._check_open()
        take = self._take
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not self._try_array(take[1]):
            # Not a retry loop: the worker's semop applies the operation itself.
            queued = self._lock.locked()
            async with self._lock:
                self._check_open()  # closed while this task queued for the lock
                if not (queued and self._try_array(take[1])):
                    await self._wait([(0, -1, SEM_UNDO if self._undo else 0)], take)
        else:
            await anyio.lowlevel.cancel_shielded_checkpoint()
        self._held += self._undo

    def release(self) -> None:
        """Give a permit back (or give one, for a semaphore used as a signal).

        Raises:
            ValueError: the value would exceed SEMVMX.
            anyio.ClosedResourceError: the handle is closed.
            anyio.BrokenResourceError: the semaphore was removed.
        """
        undo = self._held > 0
        self._check_open()
        try:
            _libc.semop_array(self._id, self._give_undo if undo else self._give_plain)
        except OSError as exc:
            raise self._op_error(exc) from exc
        if undo:
            self._held -= 1

    def _before_close(self) -> None:
        # A closed handle cannot release: give back the permits it still holds.
        if self._held > 0:
            with contextlib.suppress(OSError):
                _libc.semop(self._id, [(0, self._held, SEM_UNDO)])
            self._held = 0

    async def __aenter__(self) -> Semaphore:
        await self.acquire()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
