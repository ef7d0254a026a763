"""The shared-memory ring's wake-up protocol: doorbells, waiting flags, the peer watch.

A busy ring makes no system call per message: a side rings the other's doorbell (one
byte into a FIFO) only when the other said, in its waiting flag, that it may be asleep.
The sleeping side says so, fences, looks at the ring once more and only then sleeps on
its doorbell (docs/shared-memory.md, "The wake-up protocol"). While it sleeps, a pidfd
of its peer in the same epoll set wakes it if the peer dies; which process that is comes
from the kernel (the peer's classic pid lock), never from the shared header.

:class:`Doorbell` is one end's side of that: it owns the epoll set, the pidfd and the
flags' protocol, and knows nothing of records (:mod:`aioipc._core.ring` does).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from collections.abc import Callable

import anyio
from anyio import ClosedResourceError

from ..errors import NOFOLLOW, IPCPermissionError, translate_os_error
from .ring import STATE_CLOSED, STATE_NONE
from .shm_lock import is_locked, pid_lock_holder, region_closes, take_pid_lock
from .wait import SPUN, FdWaiter, Spun, spin_until

# How often a side whose peer cannot wake it at its death looks at the peer's lock.
PEER_CHECK_INTERVAL = 0.25


def _no_fence_yet() -> None:
    raise AssertionError("Doorbell.fence was never set")


def open_bell(path: str, owner: int, what: str, of: str) -> int:
    """Open an existing doorbell FIFO (of a ring or a topic: ``of`` names which) for
    ringing and draining, refusing anything at ``path`` but a FIFO owned by ``owner``.

    Raises:
        aioipc.IPCNotFoundError: no such file (or a symlink there: never followed).
        aioipc.IPCPermissionError: not a FIFO owned by ``owner``, or not ours to open.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise translate_os_error(exc, f"{what}: doorbell {path}", NOFOLLOW) from exc
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != owner:
        os.close(fd)
        # Something else sits where the doorbell should be: never talk through it.
        raise IPCPermissionError(
            errno.EPERM,
            f"{what}: {path} is not a FIFO owned by the {of}'s owner (uid {owner})",
        )
    return fd


def _readable_now(fd: int) -> bool:
    poller = select.poll()  # not select(): fds above 1023 are common in servers
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Doorbell:
    """One end's doorbells and its watch on the peer.

    ``hi`` and ``hq`` are the ring header's u32 and u64 views; the indexes name this
    end's waiting flag, the peer's state, pid and position fields. ``peer_lock`` is the
    peer's OFD lock byte, ``pid_byte`` this end's classic pid lock and ``peer_pid_byte``
    the peer's (-1: none / not watched).
    """

    def __init__(
        self,
        *,
        what: str,
        fd: int,
        wait_bell: int,
        ring_bell: int,
        hq: memoryview,
        hi: memoryview,
        my_waiting: int,
        peer_state: int,
        peer_pid_index: int,
        peer_position: Callable[[memoryview], int],
        role: str,
        peer_role: str,
        spin: float,
    ) -> None:
        self.what = what
        self.fd = fd
        self._wait_bell = wait_bell
        self._ring_bell = ring_bell
        self._hq = hq
        self._hi = hi
        self._my_waiting = my_waiting
        self._peer_state = peer_state
        self._peer_pid_index = peer_pid_index
        self._peer_position = peer_position
        self._peer_role = peer_role
        self._spin = spin
        self._role = role
        # Set by close(). The Doorbell keeps no reference to its end, so that an end
        # nobody closed is freed (and closed by its __del__) at its last reference.
        self.closed = False
        #: The ring's full memory barrier (the ring side's ``fence``), set by the end once
        #: its ring side exists.
        self.fence: Callable[[], None] = _no_fence_yet
        self.peer_lock = -1
        self.pid_byte = -1
        self.peer_pid_byte = -1
        self._pid_lock_closes = 0
        self._ep = select.epoll()
        try:
            self._ep.register(wait_bell, select.EPOLLIN)
        except BaseException:
            self._ep.close()
            raise
        self.waiter = FdWaiter(self._ep.fileno())
        self._pidfd = -1
        self._watched_pid = 0
        self.peer_seen = False
        # True when the last look found the peer's pid lock held and its pidfd in our
        # epoll set: a sleep then needs no other liveness syscall, since the peer's
        # death would wake it at once.
        self._peer_ok = False
        self._poll_peer = False
        self._drained = False
        #: True from "I may sleep" to the wake-up (the flag in the header is set).
        self.asleep = False

    def fileno(self) -> int:
        """The epoll fd a sleeping end waits on (readable: doorbell or the peer's death)."""
        return self._ep.fileno()

    # -- ringing and draining -------------------------------------------------------------

    def ring(self) -> None:
        """Ring the peer's doorbell (it said it may be asleep, or it must look again)."""
        try:  # noqa: SIM105 -- cheaper than contextlib.suppress on this path
            os.write(self._ring_bell, b"\x01")
        except BlockingIOError:
            pass  # the FIFO is full of rings already: the peer will wake

    def _drain(self) -> None:
        try:  # noqa: SIM105 -- contextlib.suppress costs a microsecond on every wake-up
            os.read(self._wait_bell, 4096)
        except BlockingIOError:
            pass

    def _drain_in_callback(self) -> bool:
        # asyncio runs this in the readiness callback: draining there keeps the fd from
        # firing again before the woken task gets to run.
        self._drain()
        self._drained = True
        return True

    # -- this end's pid lock --------------------------------------------------------------

    def claim_pid_lock(self) -> int:
        """Take this end's classic pid lock, so that the peer can learn our pid from the
        kernel: 0, or who holds it instead (a pid, -1 unknown)."""
        if self.pid_byte < 0:
            return 0
        holder = take_pid_lock(self.fd, self.pid_byte)
        self._pid_lock_closes = region_closes()
        return holder

    def retake_pid_lock_if_lost(self) -> None:
        """This process closed a region descriptor since we took our pid lock, which
        may have dropped it: take it again (a no-op if we still hold it)."""
        closes = region_closes()
        if self._pid_lock_closes == closes:
            return
        self._pid_lock_closes = closes
        if self.pid_byte >= 0:
            # Best effort: without it, the peer looks at our OFD lock 4x a second.
            with contextlib.suppress(OSError):
                take_pid_lock(self.fd, self.pid_byte)

    # -- the peer -------------------------------------------------------------------------

    def peer_pid_text(self) -> str:
        if self._watched_pid:
            return f"pid {self._watched_pid}"
        # Never seen through the kernel: what the header says, for the message only.
        return f"pid {self._hi[self._peer_pid_index]} by the ring's header"

    def _unwatch(self) -> None:
        self._peer_ok = False
        if self._pidfd >= 0:
            self._ep.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _watch_peer(self) -> None:
        """Make the peer's death wake our doorbell wait: a pidfd in our epoll set, of
        the process the kernel says holds the peer's pid lock (never a pid read from
        the header, which anyone who can write the ring can forge)."""
        if self.peer_pid_byte < 0:
            return
        try:
            pid = pid_lock_holder(self.fd, self.peer_pid_byte)
        except OSError:
            pid = 0  # (out of kernel memory) as if no pid: the lock check decides
        if pid and pid == self._watched_pid and self._pidfd >= 0:
            self._peer_ok = True
            return
        self._unwatch()
        if not pid:
            # Not attached, or it lost its classic locks (it closed another descriptor
            # of the region), or it is in another pid namespace: the lock check decides.
            return
        self.peer_seen = True
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # gone already, or out of fds: as above
        try:
            # Still the holder: the pidfd is of the peer, not of a process that got its
            # pid after it died.
            if pid_lock_holder(self.fd, self.peer_pid_byte) != pid:
                os.close(pidfd)
                return
            self._ep.register(pidfd, select.EPOLLIN)
        except OSError:
            os.close(pidfd)
            return
        self._pidfd = pidfd
        self._watched_pid = pid
        self._peer_ok = True

    def peer_gone(self, cached: bool = False) -> str | None:
        """Why the peer is gone ("closed", or "died ..."), or None while it is attached
        or has not attached yet. Liveness is the kernel's: the peer's OFD lock (or its
        pid lock, found held just now: ``cached``); the state field only tells a clean
        close from a death. Sets ``_poll_peer`` when the peer is alive but no pidfd
        would wake us at its death.

        Raises:
            aioipc.IPCError: the kernel refused to say (translated OSError).
        """
        state = self._hi[self._peer_state]
        if state == STATE_CLOSED:
            return "closed"
        if cached and self._peer_ok:
            return None
        try:
            locked = is_locked(self.fd, self.peer_lock)
        except OSError as exc:
            what = f"{self.what}: looking at the {self._peer_role}'s lock"
            raise translate_os_error(exc, what) from exc
        if locked:
            self.peer_seen = True
            self._poll_peer = self._pidfd < 0
            return None
        # Unlocked. Any state but NONE says it attached (an unknown value too: counted as
        # attached, so that forging one cannot hide a death); a state never goes back
        # to NONE, so NONE after we saw the peer attached, or after it moved its
        # position, is forged. Otherwise it has not come yet: its attach rings our
        # doorbell.
        if state == STATE_NONE and not self.peer_seen and not self._peer_position(self._hq):
            return None
        return f"the {self._peer_role} ({self.peer_pid_text()}) died without closing"

    # -- sleeping -------------------------------------------------------------------------

    async def wait(self, ready: Callable[[], bool], check_peer: Callable[[], None]) -> Spun | None:
        """Sleep on our doorbell until ``ready()`` may be true. The protocol: say we may
        sleep, fence, look again, and only then sleep (docs/shared-memory.md, "The
        wake-up protocol"). ``check_peer`` raises if the peer is gone; it runs once the
        pidfd watch is in place, so that a death after it wakes the sleep.

        Returns :data:`~aioipc._core.wait.SPUN` whenever it returns without having
        yielded to the loop, so that the caller's pacer does not count it as a
        checkpoint: with ``spin``, when ``ready()`` came true while busy-polling; and
        when the look after the fence found it true (a peer that publishes at the rate
        this end consumes would otherwise reset the pacer on every call, and a receive
        loop would never checkpoint).

        Raises: what ``check_peer`` raises; anyio.ClosedResourceError if this end is
        closed meanwhile. Cancellation: nothing was taken (this only waits).
        """
        hi = self._hi
        if self._spin and spin_until(ready, self._spin):
            return SPUN
        flag = self._my_waiting
        hi[flag] = 1
        self.asleep = True
        self.fence()
        try:
            if ready():
                return SPUN  # never slept: not a checkpoint (see above)
            self.retake_pid_lock_if_lost()
            self._watch_peer()  # first: a death after this wakes the sleep below
            self._poll_peer = False
            check_peer()
            self._drained = False
            if self._poll_peer:
                # Alive but no pidfd (no pid lock to learn its pid from, or pidfd_open
                # failed): nothing would wake us if it died, so look again at least
                # four times a second.
                with anyio.move_on_after(PEER_CHECK_INTERVAL):
                    await self.waiter.readable(self._drain_in_callback)
            else:
                await self.waiter.readable(self._drain_in_callback)
            if self.closed:
                raise ClosedResourceError(f"{self.what}: this {self._role} is closed")
            if not self._drained:
                self._drain()
            if not ready():
                self._forget_fired_pidfd()  # woken for nothing: was it the pidfd?
        finally:
            self.asleep = False
            if not self.closed:
                hi[flag] = 0
        return None

    def _forget_fired_pidfd(self) -> None:
        """A woken sleeper found nothing to do: if it was the peer's pidfd that fired
        while the peer still counts as attached (a forked child holds its lock), stop
        watching that pid, or every later sleep would wake at once."""
        if self._pidfd >= 0 and _readable_now(self._pidfd):
            self._unwatch()  # the lock check decides from now on

    def close(self) -> None:
        """Wake this end's sleeping task with ClosedResourceError and let go of the epoll
        set and the pidfd. The caller closes the doorbell fds."""
        self.closed = True
        self.waiter.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self._ep.close()
