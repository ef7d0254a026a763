"""How aioipc waits. The one module that decides when a task yields to the event loop.

File-descriptor mechanisms (pipes, FIFOs, unix sockets, POSIX message queues) never
start a thread: they make the non-blocking system call, and only when the kernel answers
EAGAIN do they wait for readiness. The calls with no fd to wait on (``msgrcv``, ``semop``,
``sem_wait``) try their no-wait form first and otherwise wait on a worker thread of
:mod:`aioipc._core.threads`, the one module that starts threads.

Waiting on asyncio. ``anyio.wait_readable`` registers the fd with the loop and removes
it again on every call (two ``epoll_ctl`` calls plus anyio's bookkeeping): measured
here, that made a 64-byte ping-pong between two processes ~2x slower than asyncio
streams, whose transports stay registered. :class:`FdWaiter` keeps the fd registered
across waits and wakes the waiting task through a plain future. When readiness fires
with nobody waiting, it unregisters, so a level-triggered fd that nobody reads cannot
wake the loop over and over. On other backends (trio) it uses anyio's functions, which
are cheap there.

Checkpoints. A blocking aioipc call that has to wait for the kernel is a checkpoint:
cancellation is delivered there and other tasks run. A call that completes at once (the
data was there, the kernel had room) is a checkpoint on every :data:`YIELD_EVERY`-th
such call, always *before* it consumes or enqueues anything, so a cancelled call never
loses a message. trio checks on every call; here that check alone cost about 1 us per
message on asyncio (a quarter of a 64-byte send), and a full yield per call an event
loop iteration. Every 16th call still keeps a busy producer or consumer from starving
the other tasks on its loop and bounds how late a cancellation is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import select
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Final, TypeVar

import anyio
from anyio import BusyResourceError, ClosedResourceError
from anyio.lowlevel import checkpoint

__all__ = [
    "AGAIN",
    "YIELD_EVERY",
    "Again",
    "apoll_until",
    "Busy",
    "FdWaiter",
    "SPUN",
    "Pacer",
    "Spun",
    "backoff_delays",
    "busy_error",
    "poll_until",
    "running_asyncio_loop",
    "spin_until",
    "wait_fd_sync",
    "wait_until",
]

T = TypeVar("T")

#: A call that completes without waiting yields to the event loop at least this often.
YIELD_EVERY = 16


class Again(enum.Enum):
    """What a non-blocking attempt returns when it would have to wait (the kernel said
    EAGAIN, the ring is empty or full). An enum member so that ``result is AGAIN``
    narrows the type."""

    AGAIN = 0


#: The one "try again later" answer of every non-blocking attempt the engine drives.
AGAIN: Final = Again.AGAIN


class Spun(enum.Enum):
    """What a ``wait`` returns when it came back without yielding to the event loop."""

    SPUN = 0


#: Returned by a ``wait`` given to :func:`wait_until` that ended without yielding to the
#: loop (a busy-poll saw the condition come true): it was no checkpoint, so the pacer
#: keeps counting and the next due call checkpoints.
SPUN: Final = Spun.SPUN


def busy_error(message: str) -> BusyResourceError:
    """A BusyResourceError whose whole message is ours (naming the object and what is in
    the way): anyio's constructor words it as "Another task is already {action} this
    resource"."""
    exc = BusyResourceError("using")
    exc.args = (message,)
    return exc


class Busy:
    """The one busy guard: one direction of one handle, used by one task at a time.

    ``with guard:`` raises :exc:`anyio.BusyResourceError` if another task is inside, as
    anyio's own streams do. aioipc's rule for every channel (docs/channels.md): a second
    concurrent receive (or send) on one handle raises; it never queues behind the first.
    """

    __slots__ = ("_action", "_message", "held")

    def __init__(self, action: str, message: str | None = None) -> None:
        #: anyio's wording: "Another task is already {action} this resource".
        self._action = action
        #: If given, the whole message instead, so that it can name the object.
        self._message = message
        #: True while a task is inside. Read it to ask "is anyone using this direction?".
        self.held = False

    def refused(self) -> BusyResourceError:
        """The error for a second task. For a hot path that inlines the guard as
        ``if guard.held: raise guard.refused()``, ``guard.held = True``, and ``False`` in a
        ``finally``: a ``with`` costs two Python-level calls, ~110 ns a message
        (measured, see stream._Receiver.receive)."""
        if self._message is not None:
            return busy_error(self._message)
        return BusyResourceError(self._action)

    def __enter__(self) -> None:
        if self.held:
            raise self.refused()
        self.held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.held = False


class Pacer:
    """Turns every :data:`YIELD_EVERY`-th call that completes without waiting into a
    checkpoint (a cancellation and a schedule point)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        #: Calls since the last checkpoint (or wait). Only :meth:`due` and :meth:`waited`
        #: touch it.
        self.count = 0

    def due(self) -> bool:
        """Count one call; True on every :data:`YIELD_EVERY`-th, when the caller must
        checkpoint *before* it takes or puts anything (so a cancellation there loses
        nothing). Synchronous, so a hot path pays no coroutine for the 15 calls in 16
        that need no checkpoint."""
        self.count += 1
        if self.count >= YIELD_EVERY:
            self.count = 0
            return True
        return False

    def waited(self) -> None:
        """Record that the caller just waited on the loop (which is a checkpoint)."""
        self.count = 0


async def wait_until(
    attempt: Callable[[], T | Again],
    wait: Callable[[], Awaitable[object]],
    pacer: Pacer,
    *,
    paced: bool = True,
    tried: bool = False,
    yields: int = 0,
) -> T:
    """The one "try, else wait" loop of aioipc.

    ``attempt`` is the mechanism's non-blocking call: it returns the result, or
    :data:`AGAIN` when it would have to wait. ``wait`` waits until trying again may
    succeed (fd readiness, a ring doorbell, a worker thread) and may itself raise (end of
    stream, a dead peer, cancellation). Every :data:`YIELD_EVERY`-th call that completes
    without waiting checkpoints first (:class:`Pacer`); a wait is a checkpoint, unless
    it returns :data:`SPUN` (it spun on the thread and never yielded).
    ``paced=False`` skips that first count, for a step of a call that already counted
    itself (the rest of a message after its first write). ``tried=True`` skips the first
    attempt: for a hot path that inlined the fast path
    (``if not pacer.due(): r = attempt(); if r is not AGAIN: return r``) and saw AGAIN,
    so that the slow path costs no second system call. ``yields`` first yields to the
    event loop that many times (a checkpoint each), trying again after each, before it
    waits: when the answer usually comes within a loop iteration (a ping-pong peer), it
    spares the loop a sleep in ``epoll_wait`` and the process a wake-up.

    Cancellation: delivered only at a checkpoint or inside ``wait``, never between an
    attempt that succeeded and the return, so a cancelled call has taken nothing (as
    long as ``wait`` itself takes nothing, or gives back what it took).
    """
    if paced and pacer.due():
        await checkpoint()
    if not tried:
        result = attempt()
        if result is not AGAIN:
            return result
    for _ in range(yields):
        await checkpoint()
        pacer.waited()
        result = attempt()
        if result is not AGAIN:
            return result
    while True:
        if await wait() is not SPUN:
            pacer.waited()
        result = attempt()
        if result is not AGAIN:
            return result


def spin_until(ready: Callable[[], bool], seconds: float) -> bool:
    """Busy-poll ``ready()`` for up to ``seconds``; True as soon as it is. Holds the
    thread (and the event loop) meanwhile: opt-in low latency only, never a default."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if ready():
            return True
    return False


def backoff_delays(first: float, most: float, factor: float = 2.0) -> Iterator[float]:
    """The one backoff schedule: ``first``, then each delay ``factor`` times the last,
    never more than ``most``. For what the kernel has no event for (a FIFO's reader
    arriving, a thread entering a system call); used by :func:`poll_until` and by the
    worker threads' synchronous loops."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, most)


async def poll_until(
    attempt: Callable[[], T | Again],
    *,
    first: float,
    most: float,
    sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
) -> T:
    """The one polling loop: ``attempt()`` until it returns something other than
    :data:`AGAIN`, sleeping on the :func:`backoff_delays` schedule in between.

    ``sleep(delay)`` is how the loop passes each delay: :func:`anyio.sleep` unless the
    caller can also be woken by something else meanwhile (the worker threads' token
    queue waits for a token for at most ``delay``).

    Cancellation: at any sleep; an attempt that succeeded is returned, never dropped.
    """
    for delay in backoff_delays(first, most):
        result = attempt()
        if result is not AGAIN:
            return result
        await sleep(delay)
    raise AssertionError("unreachable: backoff_delays never ends")


async def apoll_until(
    attempt: Callable[[], Awaitable[T | Again]], *, first: float, most: float
) -> T:
    """:func:`poll_until` for an attempt that is itself a coroutine (an ``open`` or a
    ``connect`` of a whole channel, in the command). Same schedule, same cancellation."""
    for delay in backoff_delays(first, most):
        result = await attempt()
        if result is not AGAIN:
            return result
        await anyio.sleep(delay)
    raise AssertionError("unreachable: backoff_delays never ends")


def wait_fd_sync(attempt: Callable[[], bool], fd: int, events: int, seconds: float) -> bool:
    """The synchronous "try, else wait" loop, for code with no event loop (a ``close()``
    in a finalizer or a child's exit): ``attempt()`` until it returns True, blocking this
    thread in ``poll`` for ``events`` on ``fd`` in between, for at most ``seconds``.
    Returns whether ``attempt`` succeeded before the deadline."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, events)
    while not attempt():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        poller.poll(left * 1000)
    return True


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class FdWaiter:
    """Waits until one fd is readable or writable; at most one waiter per direction.

    Raises :exc:`anyio.BusyResourceError` if a second task waits in the same direction,
    and :exc:`anyio.ClosedResourceError` in a waiting task when :meth:`close` is called.
    Cancellation: a cancelled wait leaves nothing behind but the registration, which the
    next readiness event removes if nobody waits again.
    """

    __slots__ = (
        "_background_write",
        "_closed",
        "_fd",
        "_loop",
        "_prefetch",
        "_read_busy",
        "_read_fut",
        "_reading",
        "_write_busy",
        "_write_fut",
        "_writing",
    )

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_fut: asyncio.Future[None] | None = None
        self._prefetch: Callable[[], bool] | None = None
        self._background_write: Callable[[], bool] | None = None
        self._write_fut: asyncio.Future[None] | None = None
        self._reading = self._writing = False
        self._closed = False
        self._read_busy = Busy("reading from")
        self._write_busy = Busy("writing to")

    def _asyncio_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = running_asyncio_loop()
        if loop is not self._loop:
            # First use, or the handle moved to another loop: registrations do not carry.
            self._reading = self._writing = False
            self._loop = loop
        return loop

    async def readable(self, prefetch: Callable[[], bool] | None = None) -> None:
        """Wait until the fd is readable.

        ``prefetch``, if given, is the caller's own non-blocking read: on asyncio it runs
        in the readiness callback and the wait ends only once it returns True (data
        taken in). Reading right there, as asyncio's transports do, consumes the
        readiness; otherwise the still-readable fd fires again on the next loop
        iteration and wakes the task for nothing. An exception from ``prefetch``
        (end of stream, a broken peer) is raised here. Elsewhere, ``prefetch`` is unused
        and the caller reads after this returns.
        """
        loop = self._asyncio_loop()
        if loop is None:
            await anyio.wait_readable(self._fd)
            return
        if self._closed:
            raise ClosedResourceError
        with self._read_busy:
            fut = self._read_fut = loop.create_future()
            self._prefetch = prefetch
            if not self._reading:
                loop.add_reader(self._fd, self._on_readable)
                self._reading = True
            try:
                await fut
            finally:
                self._read_fut = self._prefetch = None

    async def writable(self) -> None:
        loop = self._asyncio_loop()
        if loop is None:
            await anyio.wait_writable(self._fd)
            return
        if self._closed:
            raise ClosedResourceError
        with self._write_busy:
            fut = self._write_fut = loop.create_future()
            if not self._writing:
                loop.add_writer(self._fd, self._on_writable)
                self._writing = True
            try:
                await fut
            finally:
                self._write_fut = None

    def _on_readable(self) -> None:
        fut = self._read_fut
        if fut is None:
            assert self._loop is not None
            self._loop.remove_reader(self._fd)
            self._reading = False
            return
        if fut.done():
            return
        prefetch = self._prefetch
        if prefetch is not None:
            try:
                if not prefetch():
                    return  # nothing after all: keep waiting
            except BaseException as exc:
                fut.set_exception(exc)
                return
        fut.set_result(None)

    def when_writable(self, write: Callable[[], bool]) -> None:
        """asyncio only: call ``write()`` each time the fd is writable while no task waits
        for it, until ``write()`` returns True (nothing left). This is how a send buffer
        drains in the background, as asyncio's transports do."""
        loop = self._asyncio_loop()
        assert loop is not None, "when_writable is for asyncio only"
        self._background_write = write
        if not self._writing and not self._closed:
            loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def _on_writable(self) -> None:
        fut = self._write_fut
        if fut is not None:
            if not fut.done():
                fut.set_result(None)
            return
        write = self._background_write
        if write is not None and not write():
            return  # more to write: stay registered
        self._background_write = None
        assert self._loop is not None
        self._loop.remove_writer(self._fd)
        self._writing = False

    def close(self) -> None:
        """Call before closing the fd: unregister it and wake waiters with ClosedResourceError."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            if self._reading:
                loop.remove_reader(self._fd)
            if self._writing:
                loop.remove_writer(self._fd)
        self._reading = self._writing = False
        for fut in (self._read_fut, self._write_fut):
            if fut is not None and not fut.done():
                fut.set_exception(ClosedResourceError())
        if running_asyncio_loop() is None:
            # No event loop at all (a finalizer, interpreter shutdown) means nobody can
            # be waiting; anyio may not even be importable any more.
            with contextlib.suppress(Exception):
                anyio.notify_closing(self._fd)
