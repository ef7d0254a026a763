"""How aioipc waits. The one module that decides when a task yields to the event loop.

File-descriptor mechanisms never start a thread: they make the non-blocking system call,
and only when the kernel answers EAGAIN do they wait for readiness with
:func:`anyio.wait_readable` / :func:`anyio.wait_writable`.

Checkpoints. Every blocking aioipc call is a *cancellation point*: it checks for
cancellation before it consumes or enqueues anything. It is a *schedule point* (it lets
other tasks run) whenever it has to wait for the kernel, and in any case at least once
every :data:`YIELD_EVERY` calls that complete without waiting. A full yield on every
call would cost an event-loop iteration per message -- more than the system call itself
for small messages -- while this rule still keeps a busy producer or consumer from
starving the other tasks on its loop.
"""

from __future__ import annotations

from anyio import wait_readable, wait_writable
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

__all__ = ["YIELD_EVERY", "Pacer", "wait_readable", "wait_writable"]

#: A call that completes without waiting yields to the event loop at least this often.
YIELD_EVERY = 16


class Pacer:
    """Counts calls that completed without waiting and turns every Nth into a full yield."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    async def checkpoint(self) -> None:
        """A cancellation point always; a schedule point every :data:`YIELD_EVERY` calls."""
        self._count += 1
        if self._count >= YIELD_EVERY:
            self._count = 0
            await checkpoint()
        else:
            await checkpoint_if_cancelled()

    def waited(self) -> None:
        """Record that the caller just waited on the loop (which is a schedule point)."""
        self._count = 0
