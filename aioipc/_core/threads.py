"""Worker threads for the kernel calls that can block without a file descriptor.

``msgrcv``, ``msgsnd``, ``semop`` and ``sem_wait`` have nothing the event loop can poll.
Callers try the no-wait form first (``IPC_NOWAIT``, ``sem_trywait``) and come here only
when it would really block. This module is the only place aioipc starts threads.

* **Bounded.** A blocking call runs on an aioipc worker thread only while the task holds
  a token of aioipc's own :class:`anyio.CapacityLimiter` (:func:`worker_limiter`,
  :data:`DEFAULT_WORKER_THREADS` tokens per event loop). anyio's default limiter, which
  the application's ``to_thread`` calls share, is never touched: a thousand tasks
  waiting on a queue cannot starve the application's own threads.
* **Pooled.** Threads are started on demand, reused for the next call of any handle and
  end after half a second idle, so there are never more than calls that were blocked at
  once. (A warm thread parked per handle and woken with a lock release was tried for
  issue 11: measured with a two-process ping-pong it was slower than this pool's
  queue, 124-263 us a SysV queue round trip against 96-209 us, so it was dropped.)
* **Interruptible.** The System V calls are never restarted after a signal handler runs
  (signal(7)), and ``sem_wait`` returns ``EINTR`` too. To cancel a blocked call the task
  marks the job cancelled and sends :data:`INTERRUPT_SIGNAL` to its thread with
  ``pthread_kill``; the job sees ``EINTR``, checks the mark and returns. A signal can land
  just before the thread enters the call, so a small interrupter thread repeats it every
  millisecond until the job has finished.
* **Nothing lost.** A cancelled task waits (shielded, about a millisecond) until its job
  has finished, then hands whatever the job took from the kernel in that window to the
  caller's ``on_late_result``, which gives it back (puts the message back in the queue,
  or the permit back in the semaphore). So cancellation never drops a message or leaks
  a permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import queue
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
from anyio import CancelScope, CapacityLimiter
from anyio.lowlevel import RunVar, checkpoint, current_token

from ..errors import IPCError
from .wait import AGAIN, Again, backoff_delays, poll_until, running_asyncio_loop

__all__ = [
    "DEFAULT_WORKER_THREADS",
    "INTERRUPT_SIGNAL",
    "Interrupted",
    "Job",
    "Workers",
    "install_interrupt_handler",
    "interrupt_all",
    "run_in_worker",
    "stop_jobs",
    "worker_limiter",
]

T = TypeVar("T")
R = TypeVar("R")

#: Tokens of aioipc's worker limiter per event loop: at most this many blocked kernel calls.
DEFAULT_WORKER_THREADS = 16
#: The signal that interrupts a worker blocked in a kernel call. A real-time signal, so it
#: collides with nothing the standard library or the common servers use.
INTERRUPT_SIGNAL: int = signal.SIGRTMIN + 6
# An idle pool thread exits after this long, so closed handles leave no threads behind.
_IDLE_SECONDS = 0.5
_RESIGNAL_SECONDS = 0.001

_limiter: RunVar[CapacityLimiter] = RunVar("aioipc_worker_limiter")
# The asyncio loop that last asked and its limiter, as one tuple (one atomic reference
# for loops on other threads): RunVar.get costs 1.8 us here, on every blocking call.
_last_limiter: tuple[object, CapacityLimiter] | None = None


def worker_limiter() -> CapacityLimiter:
    """aioipc's worker-thread limiter of the running event loop.

    Set ``worker_limiter().total_tokens`` to allow more (or fewer) kernel calls to block
    at once. Tasks beyond it wait for a token, holding no thread.
    """
    global _last_limiter
    loop = running_asyncio_loop()
    last = _last_limiter
    if loop is not None and last is not None and last[0] is loop:
        return last[1]
    try:
        limiter = _limiter.get()
    except LookupError:
        limiter = CapacityLimiter(DEFAULT_WORKER_THREADS)
        _limiter.set(limiter)
    if loop is not None:
        _last_limiter = (loop, limiter)
    return limiter


def _no_op(signum: int, frame: object) -> None:
    """The handler exists only so that the signal interrupts the blocked system call."""


_handler_installed = False
# The C function under signal.getsignal, which converts its answer to an enum on every
# call: 0.1 us instead of 0.8 us, on a check made before every blocking call.
_getsignal: Callable[[int], object] = importlib.import_module("_signal").getsignal


def install_interrupt_handler() -> None:
    """Install the (no-op) handler for :data:`INTERRUPT_SIGNAL`.

    aioipc does this by itself the first time a task waits in a worker thread, when that
    happens on the main thread. An application that runs its event loop on another thread
    calls this once from the main thread first (Python installs signal handlers only
    there).

    Raises:
        aioipc.IPCError: not on the main thread, or the application already uses the
            signal for something else.
    """
    global _handler_installed
    if _handler_installed:
        return
    current = signal.getsignal(INTERRUPT_SIGNAL)
    if current not in (signal.SIG_DFL, _no_op):
        raise IPCError(
            f"signal {INTERRUPT_SIGNAL} (SIGRTMIN+6) already has a handler ({current!r}); "
            "aioipc needs it to interrupt worker threads blocked in msgrcv/semop/sem_wait"
        )
    try:
        signal.signal(INTERRUPT_SIGNAL, _no_op)
    except ValueError:
        raise IPCError(
            "aioipc must install a handler for signal SIGRTMIN+6 to interrupt blocked "
            "worker threads, and Python allows that only on the main thread: call "
            "aioipc.install_interrupt_handler() from the main thread before starting "
            "the event loop on another thread"
        ) from None
    _handler_installed = True


class Interrupted(Exception):
    """Raised inside a job's function when its job was cancelled; never seen by users."""


class Job(Generic[T]):
    """One blocking call on a worker thread.

    The function receives the job and must call :meth:`check` after every ``EINTR`` (and
    before it starts waiting), so that an interrupted call returns instead of retrying.
    """

    __slots__ = (
        "_notify",
        "cancelled",
        "error",
        "finished",
        "fn",
        "lock",
        "result",
        "thread_id",
    )

    def __init__(self, fn: Callable[[Job[T]], T], notify: Callable[[], None]) -> None:
        self.fn = fn
        self._notify = notify
        # Held while the id is read for a signal and while it is cleared: a signal can
        # then only reach the thread while it still runs this job.
        self.lock = threading.Lock()
        self.thread_id: int | None = None
        self.cancelled = False
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def check(self) -> None:
        if self.cancelled:
            raise Interrupted

    def call(
        self,
        blocking: Callable[[], R],
        interrupted: type[BaseException] | tuple[type[BaseException], ...] = InterruptedError,
    ) -> R:
        """The worker side's one loop: ``blocking()`` until it returns, checking after
        every signal (``interrupted``: what the call raises on EINTR) whether the job was
        cancelled, and before the first call (the signal may have come before it)."""
        while True:
            self.check()
            try:
                return blocking()
            except interrupted:
                pass

    def run(self) -> None:
        """Run the function on this thread; the thread then calls :meth:`notify`."""
        with self.lock:
            self.thread_id = threading.get_ident()
        try:
            self.result = self.fn(self)
        except BaseException as exc:
            self.error = exc
        finally:
            with self.lock:
                self.thread_id = None
                self.finished = True

    def notify(self) -> None:
        """Wake the task that waits for the job (after :meth:`run`)."""
        self._notify()

    def interrupt(self) -> None:
        """Mark the job cancelled and knock its thread out of the blocking call."""
        self.cancelled = True
        _interrupter.add(self)


class _Interrupter:
    """Re-sends the interrupt signal to cancelled jobs until they finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: set[Job[Any]] = set()
        self._thread: threading.Thread | None = None

    def add(self, job: Job[Any]) -> None:
        self._signal(job)
        with self._lock:
            if job.finished:
                return
            self._jobs.add(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="aioipc-interrupter", daemon=True
                )
                self._thread.start()

    @staticmethod
    def _signal(job: Job[Any]) -> None:
        with job.lock:
            tid = job.thread_id
            if tid is not None and not job.finished:
                with contextlib.suppress(OSError):
                    signal.pthread_kill(tid, INTERRUPT_SIGNAL)

    def _run(self) -> None:
        for delay in backoff_delays(_RESIGNAL_SECONDS, _RESIGNAL_SECONDS):
            time.sleep(delay)
            with self._lock:
                self._jobs = {j for j in self._jobs if not j.finished}
                if not self._jobs:
                    self._thread = None
                    return
                jobs = list(self._jobs)
            for job in jobs:
                self._signal(job)


class _Pool:
    """Worker threads, started on demand and ended after a short idle time."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Job[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Job[Any]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._queue.put(job)
                return
        try:
            threading.Thread(
                target=self._work, args=(job,), name="aioipc-worker", daemon=True
            ).start()
        except RuntimeError as exc:
            raise IPCError(f"aioipc could not start a worker thread: {exc}") from exc

    def _work(self, job: Job[Any] | None) -> None:
        while True:
            if job is not None:
                job.run()
            with self._lock:
                # Idle before the task hears that its job is done: the next holder of its
                # token, which may submit at once, must find this thread rather than
                # start another (the limiter bounds tokens, this keeps threads to them).
                self._idle += 1
            if job is not None:
                job.notify()
            try:
                job = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # A submit may have counted on this thread in the meantime: take
                    # its job, or leave (never block outside the lock: another idle
                    # thread may take that job first).
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


class Workers:
    """One handle's jobs on aioipc's worker threads, and the tasks that wait for one.

    ``jobs`` holds the running :class:`Job` objects and the cancel scopes of tasks
    queued for a worker token, so that closing the handle reaches all of them
    (:func:`interrupt_all`, :func:`stop_jobs`).
    """

    __slots__ = ("jobs",)

    def __init__(self) -> None:
        self.jobs: set[Job[Any] | CancelScope] = set()

    def __bool__(self) -> bool:
        """True while a job runs or a task queues for a worker token."""
        return bool(self.jobs)

    def _submit(self, job: Job[Any]) -> None:
        _pool.submit(job)


_pool = _Pool()
_interrupter = _Interrupter()


def _reset_after_fork() -> None:
    global _interrupter, _pool
    _interrupter = _Interrupter()
    _pool = _Pool()


os.register_at_fork(after_in_child=_reset_after_fork)


class _Waker:
    """Wakes one task from a worker thread: an asyncio future, or an anyio Event elsewhere."""

    __slots__ = ("_event", "_fut", "_loop", "_native")

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None
        self._event: anyio.Event | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
            self._native: Any = current_token().native_token

    def arm(self) -> None:
        if self._loop is not None:
            self._fut = self._loop.create_future()
        else:
            self._event = anyio.Event()

    def wait(self) -> Awaitable[object]:
        # The future itself on asyncio: no coroutine frame to go through on the way back.
        if self._fut is not None:
            return self._fut
        assert self._event is not None
        return self._event.wait()

    def _fire(self) -> None:
        fut = self._fut
        if fut is not None:
            if not fut.done():
                fut.set_result(None)
        elif self._event is not None:
            self._event.set()

    def notify(self) -> None:
        """Called on the worker thread when the job has finished."""
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._fire)
            else:
                self._native.run_sync_soon(self._fire)
        except RuntimeError:
            pass  # the loop has closed; nobody is waiting any more


async def run_in_worker(
    fn: Callable[[Job[T]], T],
    *,
    workers: Workers,
    on_late_result: Callable[[T], None] | None = None,
    late_note: str | None = None,
    before_start: Callable[[], None] | None = None,
    poll: Callable[[], T | None] | None = None,
) -> T:
    """Run ``fn`` on an aioipc worker thread for the handle whose :class:`Workers` is
    ``workers`` and return its result.

    ``workers`` is the handle's :class:`Workers`, so that closing the handle can
    interrupt the job (:func:`interrupt_all`). ``before_start`` runs once the task holds
    a worker token, right before the job starts (the handle checks it is still open: it
    may have been closed while the task queued for the token).

    ``poll`` (the caller's no-wait try, returning None when it would block) is tried
    once more after one trip through the event loop before any thread is used: a peer
    that answers within that trip costs no thread hop at all.

    When every token is taken (the limiter's threads all wait on other objects), the task
    does not just queue: every 1 ms, doubling up to 50 ms, it calls ``poll`` (the
    caller's no-wait try), and returns what ``poll`` returns once that is not None. So
    a handle whose message has arrived is served even while other handles hold every
    thread, and threads stay bounded.

    Raises whatever ``fn`` raises; :exc:`Interrupted` if the job was interrupted by
    :func:`interrupt_all`; :exc:`aioipc.IPCError` if the interrupt handler is missing
    and cannot be installed. Cancellation: the job is interrupted and awaited
    (shielded); if it completed anyway, its result goes to ``on_late_result`` and
    ``late_note`` is added to the cancellation exception before it propagates.
    """
    if poll is not None:
        # A bounded spin before the hop: one trip through the event loop, then the no-wait
        # try again. When the peer answers within that trip (both processes still on a
        # CPU), this saves a thread wake-up and a loop wake-up, which cost tens of us
        # each on a VM whose idle vCPUs halt: measured here with a semaphore ping-pong
        # on an idle machine, 17-150 us a round trip with it, 140-200 us without. Where
        # it does not pay it costs one loop iteration (~6 us here) before the wait.
        await checkpoint()
        if before_start is not None:
            # The handle may have been closed during that trip; the job is not in
            # ``workers`` yet, so aclose's stop_jobs did not wait for it, and a poll now
            # would take a message or permit on a closed handle.
            before_start()
        value = poll()
        if value is not None:
            return value
    # Checked on every call, because with the default action restored our interrupt
    # would terminate the process.
    if _getsignal(INTERRUPT_SIGNAL) is not _no_op:
        _reinstall()
    limiter = worker_limiter()
    waker = _Waker()
    job: Job[T] = Job(fn, waker.notify)
    try:
        # On behalf of the job: anyio's acquire_nowait looks the current task up first
        # (0.9 us of the 1.2 us it costs here).
        limiter.acquire_on_behalf_of_nowait(job)
    except anyio.WouldBlock:
        try:
            await _queue_for_token(limiter, job, workers, poll)
        except _Polled as polled:
            return polled.value  # type: ignore[return-value]
    try:
        if before_start is not None:
            before_start()
        waker.arm()
        jobs = workers.jobs
        jobs.add(job)
        try:
            workers._submit(job)
            try:
                await waker.wait()
            except BaseException as exc:
                job.interrupt()
                await _until_finished(job, waker)
                if job.error is None:
                    if on_late_result is not None:
                        on_late_result(job.result)  # type: ignore[arg-type]
                    if late_note is not None:
                        exc.add_note(late_note)
                raise
        finally:
            jobs.discard(job)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]
    finally:
        limiter.release_on_behalf_of(job)


async def _until_finished(job: Job[Any], waker: _Waker) -> None:
    """Wait, shielded, until an interrupted job has finished (a millisecond or two).

    A second native asyncio cancel must not make us abandon the job: its result would
    be lost. Not a retry loop: each pass waits for the job's one notification, armed
    before ``finished`` is read so that it cannot be missed.
    """
    while not job.finished:
        waker.arm()
        if job.finished:
            return
        with contextlib.suppress(BaseException), CancelScope(shield=True):
            await waker.wait()


class _Polled(Exception):
    """``poll`` succeeded while the task queued for a worker token."""

    def __init__(self, value: object) -> None:
        self.value = value


async def _queue_for_token(
    limiter: CapacityLimiter, borrower: object, workers: Workers, poll: Callable[[], Any] | None
) -> None:
    # Registered while it queues, so that closing the handle wakes this task at once
    # instead of when some other handle's worker frees up.
    queued = CancelScope()
    got = False

    async def take_token(delay: float) -> None:
        nonlocal got
        with anyio.move_on_after(delay):
            await limiter.acquire_on_behalf_of(borrower)
            got = True

    def attempt() -> bool | Again:
        if got:
            return True
        if poll is not None:
            value = poll()
            if value is not None:
                raise _Polled(value)
        return AGAIN

    workers.jobs.add(queued)
    try:
        with queued:
            await poll_until(attempt, first=0.001, most=0.05, sleep=take_token)
    finally:
        workers.jobs.discard(queued)
        if queued.cancelled_caught:
            raise Interrupted


def _reinstall() -> None:
    global _handler_installed
    if _handler_installed and _getsignal(INTERRUPT_SIGNAL) is not _no_op:
        _handler_installed = False
    install_interrupt_handler()


def interrupt_all(workers: Workers) -> None:
    """Interrupt every running job of ``workers``, wake the tasks still queued for a
    worker token (a handle is closing)."""
    for job in list(workers.jobs):
        if isinstance(job, CancelScope):
            job.cancel()
        else:
            job.interrupt()


def _none_left(workers: Workers) -> Again | None:
    return AGAIN if workers.jobs else None


async def stop_jobs(workers: Workers) -> None:
    """Interrupt ``workers`` and wait (shielded, at most a second) until their tasks are
    done.

    Each job wakes its own task, which then drops it from ``workers.jobs``; polling that
    set every millisecond is simpler than a second wake-up path, and it lasts a
    millisecond or two.
    """
    interrupt_all(workers)
    with CancelScope(shield=True), anyio.move_on_after(1):
        await poll_until(partial(_none_left, workers), first=0.001, most=0.001)
