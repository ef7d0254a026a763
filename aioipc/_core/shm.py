"""The implementation behind :mod:`aioipc.shm` (see there)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import mmap
import os
import select
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Self

import anyio
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.lowlevel import checkpoint

from ..abc import IPCAttribute, message_bytes
from ..errors import (
    NOFOLLOW,
    IPCNotFoundError,
    IPCPermissionError,
    MessageTooLargeError,
    ProtocolError,
    translate_os_error,
)
from . import registry as _registry
from . import ring as _ring
from .check import LONG_MAX, check_mode
from .posix_base import check_name
from .region import reserve
from .ring import (
    HEADER_SIZE,
    I_CPID,
    I_CSTATE,
    I_CWAITING,
    I_FLAGS,
    I_PPID,
    I_PSTATE,
    I_PWAITING,
    KIND_MESSAGE,
    Q_HEAD,
    Q_MAGIC,
    Q_TAIL,
    RECORD_HEADER,
    STATE_CLOSED,
    STATE_NONE,
    STATE_OPEN,
    RingReader,
    RingWriter,
)
from .wait import YIELD_EVERY, FdWaiter, Pacer

__all__ = ["DEFAULT_CAPACITY", "ShmReceiver", "ShmSender", "is_stale", "unlink"]

DEFAULT_CAPACITY = 1 << 20
_KIND_MESSAGE_WORD = KIND_MESSAGE << 32
# Map every page up front: no page fault per page on the first lap of the ring.
_POPULATE = mmap.MAP_POPULATE
SHM_DIR = "/dev/shm"
_BELL_DATA = ".bell-data"
_BELL_SPACE = ".bell-space"
# OFD lock bytes in the region file: who is attached (the kernel drops a dead holder's).
_LOCK_CONSUMER, _LOCK_PRODUCER, _LOCK_PRODUCERS, _LOCK_SEND = 0, 1, 2, 3
# Classic (process-associated) POSIX record lock bytes: which process an end is in. An
# OFD lock does not say who holds it (F_OFD_GETLK reports pid -1); a classic lock does,
# so the peer learns the pid to watch from the kernel, never from the shared header.
_PID_CONSUMER, _PID_PRODUCER = 8, 9
# How often a sender that never has to wait checks that its receiver is still alive.
_PEER_CHECK_INTERVAL = 0.25

# A full memory barrier: on x86-64 the store of head/tail may otherwise be reordered after
# the next load of the peer's "waiting" flag (store->load is the one reordering TSO allows),
# and both sides would skip the doorbell. Acquiring and releasing a threading.Lock runs
# a locked instruction (sem_trywait's cmpxchg, sem_post's xadd) in the C library, which
# orders every earlier store before every later load. See docs/shared-memory.md.
# Each handle has its own lock (a handle is used from one thread), so the acquire always
# succeeds: a failed sem_trywait runs no locked instruction, and releasing a lock another
# thread holds would be worse.


def _lock_struct(kind: int, start: int) -> bytes:
    # struct flock on 64-bit Linux: short type, short whence, off_t start, off_t len,
    # pid_t pid (0 for OFD locks), padded to 32 bytes.
    return struct.pack("hh4xqqi4x", kind, os.SEEK_SET, start, 1, 0)


def _try_lock(fd: int, start: int, exclusive: bool = True) -> bool:
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_struct(kind, start))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int, start: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_struct(fcntl.F_UNLCK, start))


def _is_locked(fd: int, start: int) -> bool:
    """Whether another open file description holds a lock on byte ``start``."""
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _lock_struct(fcntl.F_WRLCK, start))
    kind: int = struct.unpack("hh4xqqi4x", got)[0]
    return kind != fcntl.F_UNLCK


# A process loses all its classic POSIX locks on a file when it closes *any* descriptor
# of that file. Every close of a region descriptor in this module counts here, and an
# end whose count is behind takes its pid lock again before it next sleeps.
_closes = 0


def _close_region(fd: int) -> None:
    global _closes
    os.close(fd)
    _closes += 1


def _take_pid_lock(fd: int, start: int) -> int:
    """Take the classic POSIX lock on byte ``start``: 0, or the pid holding it (-1 if
    that is not known: an OFD lock, or a process outside our pid namespace)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, _lock_struct(fcntl.F_WRLCK, start))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return _pid_lock_holder(fd, start) or -1
        raise
    return 0


_FLOCK = struct.Struct("hh4xqqi4x")
# Every sleep asks who holds the peer's pid byte: the question, built once.
_WHO_HOLDS = {b: _lock_struct(fcntl.F_WRLCK, b) for b in (_PID_CONSUMER, _PID_PRODUCER)}


def _pid_lock_holder(fd: int, start: int) -> int:
    """The pid of the process holding a classic lock on byte ``start``, as the kernel
    reports it in our pid namespace; 0 if none, if an OFD lock holds it, or if the
    holder is not visible from here. F_OFD_GETLK (not F_GETLK): it also reports this
    process's own classic locks, so a peer in this very process is found too."""
    kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _WHO_HOLDS[start]))
    return pid if kind != fcntl.F_UNLCK and pid > 0 else 0


def _paths(name: str) -> tuple[str, str, str]:
    check_name(name, "ring", prefix_len=len(_BELL_SPACE))
    base = SHM_DIR + name
    return base, base + _BELL_DATA, base + _BELL_SPACE


def unlink(name: str) -> None:
    """Remove the ring ``name`` (region and doorbells); attached handles keep working.

    Raises:
        aioipc.IPCNotFoundError: there is no ring region by that name.
    """
    region, *bells = _paths(name)
    what = f"shared-memory ring {name}"
    for path in bells:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise translate_os_error(exc, f"{what}: doorbell {path}") from exc
    try:
        os.unlink(region)
    except OSError as exc:
        raise translate_os_error(exc, what) from exc
    _registry.forget("shm-ring", name)


def is_stale(name: str) -> bool:
    """True if no live process is attached to ring ``name`` (so it may be removed).

    Attachment is an OFD lock on the region, which the kernel drops when its holder
    dies, so a SIGKILLed creator leaves a stale ring, never a falsely live one.

    Raises:
        aioipc.IPCNotFoundError: no such ring.
    """
    region = _paths(name)[0]
    try:
        # O_NONBLOCK: a FIFO planted under the name must not hang us.
        fd = os.open(region, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise translate_os_error(exc, f"shared-memory ring {name}", NOFOLLOW) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            # Never call something else "stale": a cleaner would delete it.
            raise ProtocolError(f"shared-memory ring {name}: {region} is not a ring")
        return not any(_is_locked(fd, b) for b in (_LOCK_CONSUMER, _LOCK_PRODUCER, _LOCK_PRODUCERS))
    finally:
        _close_region(fd)


def _holder_text(fd: int, pid_byte: int, header_pid: int) -> str:
    """Who holds an end's locks, for a message: the pid the kernel reports, else the
    one the header says."""
    with contextlib.suppress(OSError):
        pid = _pid_lock_holder(fd, pid_byte)
        if pid:
            return f"pid {pid}"
    return f"pid {header_pid} by the ring's header"


def _busy(message: str) -> BusyResourceError:
    # anyio's constructor words its message as "Another task is already {action} this
    # resource"; ours names the ring and what is in the way.
    exc = BusyResourceError("using")
    exc.args = (message,)
    return exc


def _readable_now(fd: int) -> bool:
    poller = select.poll()  # not select(): fds above 1023 are common in servers
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _open_bell(path: str, owner: int, what: str) -> int:
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
            f"{what}: {path} is not a FIFO owned by the ring's owner (uid {owner})",
        )
    return fd


class _RingEnd:
    """What both ends share: the files, the mapping, the doorbells, the peer watch."""

    _role = ""
    _peer_role = ""
    _multi = False

    def __init__(
        self,
        name: str,
        *,
        create: bool,
        capacity: int,
        mode: int,
        flags: int,
        spin: float,
        unlink_on_close: bool | None,
    ) -> None:
        self._closed = True  # until fully built: __del__ of a half-built end does nothing
        lock = threading.Lock()
        self._facq, self._frel = lock.acquire, lock.release
        if not (isinstance(spin, (int, float)) and 0 <= spin < 1 and math.isfinite(spin)):
            raise ValueError(f"spin is seconds to busy-wait, 0 <= spin < 1, not {spin!r}")
        self._name = name
        self._what = f"shared-memory ring {name}"
        region, bell_data, bell_space = _paths(name)
        self._created = create
        self._fd = -1
        self._bells: list[int] = []
        self._mm: mmap.mmap | None = None
        made: list[str] = []
        ep: select.epoll | None = None
        try:
            if create:
                self._make(region, bell_data, bell_space, capacity, mode, flags, made)
            else:
                self._attach(region, bell_data, bell_space)
            # Before the claim, which tells the peer we are here: after it, nothing fails.
            ep = self._ep = select.epoll()
            ep.register(self._bells[self._wait_bell_index], select.EPOLLIN)
            self._claim()
            # Once the peer was seen attached (its lock held), a free lock means it is
            # gone, whatever its state field says (a forged NONE must not hide a death).
            self._peer_seen = _is_locked(self._fd, self._peer_lock)
            if create:
                # Last, once nothing can fail: only now may others attach.
                self._hq[Q_MAGIC] = _ring.MAGIC
        except BaseException as exc:
            if ep is not None:
                ep.close()
            self._teardown()
            for path in made:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if isinstance(exc, OSError):
                raise translate_os_error(exc, self._what) from exc
            raise
        if create:
            _registry.record("shm-ring", name, st=os.fstat(self._fd))
        self._unlink_on_close = create if unlink_on_close is None else unlink_on_close
        self._spin = float(spin)
        self._pid = os.getpid()
        self._waiter = FdWaiter(self._ep.fileno())
        self._pidfd = -1
        self._watched_pid = 0
        # True when the last look found the peer's pid lock held and its pidfd in our
        # epoll set: a sleep then needs no other liveness syscall, since the peer's
        # death would wake it at once.
        self._peer_ok = False
        self._poll_peer = False
        self._waiting = False
        self._pacer = Pacer()
        self._next_peer_check = 0.0
        self._max_msg = _ring.max_message_size(self._capacity)
        # 0 = the inline fast paths may run: open, nobody waiting, no view or reservation
        # open, a single producer. Everything else counts itself in here.
        self._slow = 1 if self._multi and self._role == "sender" else 0
        self._closed = False

    @classmethod
    def create(
        cls,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        mode: int = 0o600,
        multi_producer: bool = False,
        spin: float = 0.0,
        unlink_on_close: bool = True,
    ) -> Self:
        """Create the ring ``name`` (``capacity`` data bytes, files with exactly
        ``mode``) and attach as its receiver (``ShmReceiver.create``) or its first sender
        (``ShmSender.create``). Never waits.

        ``multi_producer=True`` lets any number of senders attach. ``spin`` (seconds,
        opt-in low latency) busy-polls the ring that long before sleeping on the
        doorbell; it holds the event loop meanwhile. The creating end removes the
        ring's files when it closes, unless ``unlink_on_close=False``.

        Raises:
            aioipc.IPCExistsError: a ring (or any /dev/shm entry) by that name exists.
            aioipc.IPCSystemError: /dev/shm has no room for the ring (errno ENOSPC; the
                message names the bytes), or no fd is free (EMFILE, naming
                RLIMIT_NOFILE). Nothing is left behind.
            ValueError: a bad name, capacity (a multiple of 8, >= 64), mode or spin.
        """
        flags = _ring.FLAG_MULTI_PRODUCER if multi_producer else 0
        return cls(
            name,
            create=True,
            capacity=capacity,
            mode=mode,
            flags=flags,
            spin=spin,
            unlink_on_close=unlink_on_close,
        )

    @classmethod
    def open(cls, name: str, *, spin: float = 0.0) -> Self:
        """Attach to the existing ring ``name`` as its receiver (``ShmReceiver.open``)
        or a sender (``ShmSender.open``). Never waits.

        Raises:
            aioipc.IPCNotFoundError: no such ring (or it is still being created).
            anyio.BusyResourceError: the ring already has a receiver (or, unless it was
                created with ``multi_producer=True``, a sender), or a process that is
                not an aioipc end holds this end's lock byte.
            aioipc.ProtocolError: the region is not a valid aioipc ring.
            aioipc.IPCPermissionError: its mode does not let us in, or a doorbell is
                not a FIFO owned by the ring's owner.
        """
        return cls(
            name, create=False, capacity=0, mode=0, flags=0, spin=spin, unlink_on_close=False
        )

    # -- building -------------------------------------------------------------------------

    def _make(
        self,
        region: str,
        bell_data: str,
        bell_space: str,
        capacity: int,
        mode: int,
        flags: int,
        made: list[str],
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"{self._what}: capacity must be an int, not {capacity!r}")
        check_mode(mode, self._what)
        # The file is the header and the data: its size must fit an off_t.
        largest = (LONG_MAX - HEADER_SIZE) & ~7
        if not _ring.MIN_CAPACITY <= capacity <= largest or capacity % 8:
            raise ValueError(
                f"{self._what}: capacity must be a multiple of 8 and at least "
                f"{_ring.MIN_CAPACITY} bytes (at most {largest}), not {capacity}"
            )
        try:
            self._fd = os.open(
                region, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            made.append(region)
            # Claimed at once, so that is_stale() never calls a ring being built stale.
            self._claim_byte(flags)
            os.fchmod(self._fd, mode)  # exactly mode, whatever the umask
            reserve(self._fd, HEADER_SIZE + capacity, self._what, region)
            for path in (bell_data, bell_space):
                os.mkfifo(path, 0o600)
                made.append(path)
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
                self._bells.append(fd)
                os.fchmod(fd, mode)
        except OSError as exc:
            raise translate_os_error(exc, self._what) from exc
        self._map(HEADER_SIZE + capacity)
        _ring.init_header(self._hq, self._hi, capacity, flags)  # all but the magic
        self._capacity = capacity

    def _attach(self, region: str, bell_data: str, bell_space: str) -> None:
        try:
            flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            self._fd = os.open(region, flags)
            st = os.fstat(self._fd)
        except OSError as exc:
            raise translate_os_error(exc, self._what, NOFOLLOW) from exc
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            # Its creator has not sized it yet.
            raise IPCNotFoundError(errno.ENOENT, f"{self._what}: still being created", region)
        if not stat.S_ISREG(st.st_mode) or st.st_size < HEADER_SIZE + _ring.MIN_CAPACITY:
            raise ProtocolError(f"{self._what}: {region} is not a ring ({st.st_size} bytes)")
        # Check the header before mapping (and populating) a file of any size.
        header = memoryview(bytearray(os.pread(self._fd, HEADER_SIZE, 0)))
        with header.cast("Q") as hq, header.cast("I") as hi:
            if hq[Q_MAGIC] == 0:
                raise IPCNotFoundError(
                    errno.ENOENT, f"{self._what}: still being created (no magic yet)", region
                )
            _ring.check_header(hq, hi, st.st_size, self._what)
        self._map(st.st_size)
        self._capacity = _ring.check_header(self._hq, self._hi, st.st_size, self._what)
        for path in (bell_data, bell_space):
            self._bells.append(_open_bell(path, st.st_uid, self._what))

    def _map(self, size: int) -> None:
        try:
            self._mm = self._m = mmap.mmap(
                self._fd, size, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise translate_os_error(exc, f"{self._what}: mapping {size} bytes") from exc
        mv = memoryview(self._m)
        self._hq = mv[:HEADER_SIZE].cast("Q")
        self._hi = mv[:HEADER_SIZE].cast("I")
        self._data = mv[HEADER_SIZE:]
        self._views = [self._hq, self._hi, self._data, mv]

    def _claim(self) -> None:
        raise NotImplementedError

    def _claim_byte(self, flags: int) -> None:
        """The creator's own OFD lock, taken right after the exclusive create
        (``_claim`` takes it again later, which an OFD lock allows)."""
        if self._role == "receiver":
            _try_lock(self._fd, _LOCK_CONSUMER)
        elif flags & _ring.FLAG_MULTI_PRODUCER:
            _try_lock(self._fd, _LOCK_PRODUCERS, exclusive=False)
        else:
            _try_lock(self._fd, _LOCK_PRODUCER)

    def _teardown(self) -> None:
        for fd in self._bells:
            os.close(fd)
        self._bells = []
        if self._fd >= 0:
            _close_region(self._fd)  # also drops this end's locks
            self._fd = -1
        for v in reversed(getattr(self, "_views", [])):
            v.release()
        self._views = []
        if self._mm is not None:
            self._mm.close()  # BufferError while a receive_view/reserve view is alive
            self._mm = None

    # -- doorbells and the peer -----------------------------------------------------------

    _wait_bell_index = 0
    _my_waiting = 0
    _peer_state = 0
    _peer_pid_index = 0  # the peer's pid in the header: for messages only
    _peer_position = 0  # the u64 the peer moves (head or tail): nonzero once it worked
    _peer_lock = 0
    _pid_byte = -1  # this end's classic pid lock (-1: none)
    _peer_pid_byte = -1  # the peer's (-1: the peer is not watched)
    _pid_lock_closes = 0  # _closes when this end last took its pid lock

    @property
    def _wait_bell(self) -> int:
        return self._bells[self._wait_bell_index]

    def _ring_peer(self) -> None:
        try:  # noqa: SIM105 -- cheaper than contextlib.suppress on this path
            os.write(self._bells[1 - self._wait_bell_index], b"\x01")
        except BlockingIOError:
            pass  # the FIFO is full of rings already: the peer will wake

    def _drain_bell(self) -> None:
        try:  # noqa: SIM105 -- contextlib.suppress costs a microsecond on every wake-up
            os.read(self._wait_bell, 4096)
        except BlockingIOError:
            pass

    def _drain_in_callback(self) -> bool:
        # asyncio runs this in the readiness callback: draining there keeps the fd from
        # firing again before the woken task gets to run.
        self._drain_bell()
        self._drained = True
        return True

    def _claim_pid_lock(self) -> None:
        """Take this end's classic pid lock, so that the peer can learn our pid from the
        kernel. Someone else holding it (nothing of aioipc's: a second end of this role
        would not have got the OFD lock) could make the peer watch the wrong process."""
        if self._pid_byte < 0:
            return
        holder = _take_pid_lock(self._fd, self._pid_byte)
        if holder:
            who = f"pid {holder}" if holder > 0 else "another process"
            raise _busy(
                f"{self._what}: {who} holds the {self._role}'s lock byte {self._pid_byte}; "
                "it is not an aioipc end"
            )
        self._pid_lock_closes = _closes

    def _peer_pid_text(self) -> str:
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
        if self._peer_pid_byte < 0:
            return
        try:
            pid = _pid_lock_holder(self._fd, self._peer_pid_byte)
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
        self._peer_seen = True
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # gone already, or out of fds: as above
        try:
            # Still the holder: the pidfd is of the peer, not of a process that got its
            # pid after it died.
            if _pid_lock_holder(self._fd, self._peer_pid_byte) != pid:
                os.close(pidfd)
                return
            self._ep.register(pidfd, select.EPOLLIN)
        except OSError:
            os.close(pidfd)
            return
        self._pidfd = pidfd
        self._watched_pid = pid
        self._peer_ok = True

    def _peer_gone(self, cached: bool = False) -> str | None:
        """Why the peer is gone ("closed", or "died ..."), or None while it is attached
        or has not attached yet. Liveness is the kernel's: the peer's OFD lock (or its
        pid lock, found held just now: ``cached``); the state field only tells a clean
        close from a death. Sets ``_poll_peer`` when the peer is alive but no pidfd
        would wake us at its death."""
        state = self._hi[self._peer_state]
        if state == STATE_CLOSED:
            return "closed"
        if cached and self._peer_ok:
            return None
        try:
            locked = _is_locked(self._fd, self._peer_lock)
        except OSError as exc:
            what = f"{self._what}: looking at the {self._peer_role}'s lock"
            raise translate_os_error(exc, what) from exc
        if locked:
            self._peer_seen = True
            self._poll_peer = self._pidfd < 0
            return None
        # Unlocked. Any state but NONE says it attached (an unknown value too: counted as
        # attached, so that forging one cannot hide a death); a state never goes back
        # to NONE, so NONE after we saw the peer attached, or after it moved its
        # position, is forged. Otherwise it has not come yet: its attach rings our
        # doorbell.
        if state == STATE_NONE and not self._peer_seen and not self._hq[self._peer_position]:
            return None
        return f"the {self._peer_role} ({self._peer_pid_text()}) died without closing"

    async def _sleep(self, my_flag: int, ready: Any) -> None:
        """Sleep on our doorbell until ``ready()`` may be true. The protocol: say we may
        sleep, fence, look again, and only then sleep (docs/shared-memory.md)."""
        hi = self._hi
        if self._spin:
            deadline = time.perf_counter() + self._spin
            while time.perf_counter() < deadline:
                if ready():
                    return
        hi[my_flag] = 1
        self._fence()
        try:
            if ready():
                return
            if self._pid_lock_closes != _closes:
                self._retake_pid_lock()
            self._watch_peer()  # first: a death after this wakes the sleep below
            self._poll_peer = False
            self._check_peer_before_sleep()
            self._drained = False
            if self._poll_peer:
                # Alive but no pidfd (no pid lock to learn its pid from, or pidfd_open
                # failed): nothing would wake us if it died, so look again at least
                # four times a second.
                with anyio.move_on_after(_PEER_CHECK_INTERVAL):
                    await self._waiter.readable(self._drain_in_callback)
            else:
                await self._waiter.readable(self._drain_in_callback)
            self._check_open()
            if not self._drained:
                self._drain_bell()
            if not ready():
                self._forget_fired_pidfd()  # woken for nothing: was it the pidfd?
        finally:
            if not self._closed:
                hi[my_flag] = 0
        self._pacer.waited()

    def _retake_pid_lock(self) -> None:
        """This process closed a region descriptor since we took our pid lock, which
        may have dropped it: take it again (a no-op if we still hold it)."""
        self._pid_lock_closes = _closes
        if self._pid_byte >= 0:
            # Best effort: without it, the peer looks at our OFD lock 4x a second.
            with contextlib.suppress(OSError):
                _take_pid_lock(self._fd, self._pid_byte)

    def _forget_fired_pidfd(self) -> None:
        """A woken sleeper found nothing to do: if it was the peer's pidfd that fired
        while the peer still counts as attached (a forked child holds its lock), stop
        watching that pid, or every later sleep would wake at once."""
        if self._pidfd >= 0 and _readable_now(self._pidfd):
            self._unwatch()  # the lock check decides from now on

    def _check_peer_before_sleep(self) -> None:
        raise NotImplementedError

    def _one_waiter(self, doing: str) -> _OneWaiter:
        """One task at a time may be in a call that can wait (the Channel contract);
        the fast paths stay off while it is."""
        return _OneWaiter(self, doing)

    def _fence(self) -> None:
        """A full memory barrier (see the comment at the top of this module)."""
        if self._facq(False):
            self._frel()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this {self._role} is closed")

    # -- attributes and lifecycle ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        """Data bytes in the ring."""
        return self._capacity

    @property
    def max_message_size(self) -> int:
        """The largest message the ring takes: ``capacity // 2 - 8``."""
        return _ring.max_message_size(self._capacity)

    @property
    def extra_attributes(self) -> dict[Any, Any]:
        return {
            IPCAttribute.path: lambda: SHM_DIR + self._name,
            IPCAttribute.mechanism: lambda: "shm-ring",
            IPCAttribute.framed: lambda: True,
            IPCAttribute.max_message_size: lambda: self.max_message_size,
            IPCAttribute.fd: lambda: self._ep.fileno(),
        }

    def _my_state(self) -> int:
        raise NotImplementedError

    def _close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._slow += 1 << 30
        self._waiter.close()
        if os.getpid() == self._pid:
            if self._waiting:  # do not leave the peer ringing a doorbell nobody hears
                self._hi[self._my_waiting] = 0
            self._hi[self._my_state()] = STATE_CLOSED
            self._fence()
            self._ring_peer()
            if self._unlink_on_close:
                with contextlib.suppress(OSError):
                    unlink(self._name)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self._ep.close()
        # A receive_view/reserve view still alive keeps the mapping until it goes.
        with contextlib.suppress(BufferError):
            self._teardown()

    async def aclose(self) -> None:
        """Close this end: the peer sees the end of the stream (a receiver's close makes
        the sender's sends fail). The creator's close also removes the ring's files.

        Never blocks; wakes this end's waiting tasks with ClosedResourceError.
        """
        self._close_sync()
        await checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        self._close_sync()

    def unlink(self) -> None:
        """Remove the ring's files now (attached ends keep working)."""
        unlink(self._name)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            import warnings

            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)
            self._close_sync()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<aioipc {self._role} of {self._what}{state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (type(self), self._name, self._spin))


class _OneWaiter:
    """``with end._one_waiter(doing):`` (a class: cheaper than a generator on the path
    every sleep takes)."""

    __slots__ = ("_doing", "_end")

    def __init__(self, end: _RingEnd, doing: str) -> None:
        self._end = end
        self._doing = doing

    def __enter__(self) -> None:
        end = self._end
        if end._waiting:
            raise _busy(f"{self._doing} {end._what}: another task is already waiting")
        end._waiting = True
        end._slow += 1

    def __exit__(self, *exc: object) -> None:
        end = self._end
        end._waiting = False
        end._slow -= 1


class ShmReceiver(_RingEnd, ObjectReceiveStream[bytes]):
    """The receiving end of a shared-memory ring (an anyio ObjectReceiveStream of bytes)."""

    _role = "receiver"
    _peer_role = "sender"
    _wait_bell_index = 0  # data bell
    _my_waiting = I_CWAITING
    _peer_state = I_PSTATE
    _peer_pid_index = I_PPID
    _peer_position = Q_HEAD
    _peer_lock = _LOCK_PRODUCER
    _pid_byte = _PID_CONSUMER
    _peer_pid_byte = _PID_PRODUCER

    def _claim(self) -> None:
        if not _try_lock(self._fd, _LOCK_CONSUMER):
            raise _busy(
                f"receiving from {self._what}: another receiver ("
                f"{_holder_text(self._fd, _PID_CONSUMER, self._hi[I_CPID])}) is attached; "
                "a ring has one receiver"
            )
        self._claim_pid_lock()
        self._multi = bool(self._hi[I_FLAGS] & _ring.FLAG_MULTI_PRODUCER)
        if self._multi:
            self._peer_lock = _LOCK_PRODUCERS
            self._peer_pid_byte = -1  # several senders: their lives are not watched
        self._reader = RingReader(self._hq, self._data, self._capacity, self._what)
        self._data_ro = self._data.toreadonly()
        self._views += [self._reader.dq, self._data_ro]
        self._hi[I_CPID] = os.getpid()
        self._hi[I_CWAITING] = 0  # a previous receiver may have died asleep
        self._hi[I_CSTATE] = STATE_OPEN
        self._view_open = False
        self._fence()
        self._ring_peer()  # a sender asleep on a full ring re-checks who its receiver is

    def _my_state(self) -> int:
        return I_CSTATE

    def _check_peer_before_sleep(self) -> None:
        # The sender may publish and then close or die right now: _at_empty reads its
        # state before looking at head again, so no published message is skipped.
        self._at_empty(cached=True)

    def _has_data(self) -> bool:
        return self._hq[Q_HEAD] != self._reader.tail

    def _after_consume(self) -> None:
        self._reader.publish()
        self._fence()
        if self._hi[I_PWAITING]:
            self._ring_peer()

    def _take(self) -> bytes | None:
        """The next message, consumed and published, or None if the ring is empty."""
        if self._view_open:
            raise _busy(f"receiving from {self._what} while a receive_view is open")
        reader = self._reader
        off, length = reader.next_record(self._hq[Q_HEAD])
        if off < 0:
            return None
        msg = self._m[HEADER_SIZE + off : HEADER_SIZE + off + length]
        reader.advance(length)
        self._after_consume()
        return msg

    def _at_empty(self, cached: bool = False) -> None:
        """Raise EndOfStream/BrokenResourceError if an empty ring will stay empty."""
        if self._hi[I_PSTATE] == STATE_CLOSED:
            # The sender publishes its last head before it says closed: look once more.
            if self._hq[Q_HEAD] == self._reader.tail:
                raise EndOfStream
        elif not self._multi:
            why = self._peer_gone(cached)
            if why is not None and self._hq[Q_HEAD] == self._reader.tail:
                raise BrokenResourceError(f"{self._what}: {why}")

    def receive_nowait(self) -> bytes:
        """The next message if one is waiting.

        Raises:
            anyio.WouldBlock: the ring is empty.
            anyio.EndOfStream: the sender closed and every message was received.
            anyio.BrokenResourceError: the sender died and every message it published
                was received.
            anyio.ClosedResourceError: this receiver is closed.
            aioipc.ProtocolError: the ring is corrupt.
        """
        self._check_open()
        msg = self._take()
        if msg is None:
            self._at_empty()
            msg = self._take()
            if msg is None:
                raise WouldBlock
        return msg

    async def receive(self) -> bytes:
        """Receive the next message (a copy out of the ring).

        Raises:
            anyio.EndOfStream: the sender closed and every message was received.
            anyio.BrokenResourceError: the sender died (SIGKILL too) and every message
                it published was received; noticed within milliseconds (within 0.25 s
                when its pid cannot be learned: docs/shared-memory.md, "Who is alive").
            anyio.ClosedResourceError: this receiver was closed, also while waiting.
            anyio.BusyResourceError: a ``receive_view`` block is open on this receiver.
            aioipc.ProtocolError: the ring is corrupt.

        Cancellation: a cancelled receive consumed nothing.
        """
        pacer = self._pacer
        pacer.count += 1
        if pacer.count >= YIELD_EVERY:
            # The checkpoint comes first: cancelled here, nothing was taken or sent.
            pacer.count = 0
            await checkpoint()
        if not self._slow:
            # The common case inline (what _take does, minus the pad records).
            reader = self._reader
            tail = reader.tail
            hq = self._hq
            used = hq[Q_HEAD] - tail
            if 0 < used <= reader.capacity:
                idx = tail % reader.capacity
                word = reader.dq[idx >> 3]
                length = word & 0xFFFFFFFF
                size = RECORD_HEADER + ((length + 7) & ~7)
                if word >> 32 == KIND_MESSAGE and size <= used and idx + size <= reader.capacity:
                    start = HEADER_SIZE + RECORD_HEADER + idx
                    msg = self._m[start : start + length]
                    reader.tail = tail = tail + size
                    hq[Q_TAIL] = tail
                    if self._facq(False):
                        self._frel()
                    if self._hi[I_PWAITING]:
                        self._ring_peer()
                    return msg
        self._check_open()
        with self._one_waiter("receiving from"):
            while True:
                self._check_open()
                got = self._take()
                if got is not None:
                    return got
                self._at_empty(cached=True)
                await self._sleep(I_CWAITING, self._has_data)

    async def receive_many(self, max_count: int = 1024) -> list[bytes]:
        """Wait for at least one message, then take up to ``max_count`` that are there.

        Publishes the ring's tail once for the whole batch. Raises as :meth:`receive`
        (EndOfStream only when no message is left). Cancellation: nothing consumed.
        """
        if not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, not {max_count!r}")
        first = await self.receive()
        out = [first]
        reader = self._reader
        mm = self._m
        head = self._hq[Q_HEAD]
        append = out.append
        next_record = reader.next_record
        for _ in range(max_count - 1):
            try:
                off, length = next_record(head)
            except ProtocolError:
                break  # return what we have; the next call raises it
            if off < 0:
                break
            append(mm[HEADER_SIZE + off : HEADER_SIZE + off + length])
            reader.tail += RECORD_HEADER + ((length + 7) & ~7)
        if len(out) > 1:
            self._after_consume()
        return out

    def receive_view(self) -> _ReceivedView:
        """``async with receiver.receive_view() as view:`` the next message, in place.

        ``view`` is a read-only memoryview into the shared pages, valid until the block
        exits; then the message's space goes back to the sender. Copy out what you
        need to keep. Other receives on this receiver raise BusyResourceError meanwhile.

        Raises: as :meth:`receive`; ``BufferError`` at exit if views derived from
        ``view`` are still alive (the message is released all the same).

        Cancellation: a receive_view cancelled while waiting consumed nothing.
        """
        return _ReceivedView(self)

    async def _open_view(self) -> tuple[memoryview, int]:
        pacer = self._pacer
        pacer.count += 1
        if pacer.count >= YIELD_EVERY:
            pacer.count = 0
            await checkpoint()
        self._check_open()
        if self._view_open:
            raise _busy(f"receiving from {self._what} while a receive_view is open")
        off, length = self._reader.next_record(self._hq[Q_HEAD])
        if off < 0:
            with self._one_waiter("receiving from"):
                while True:
                    self._at_empty(cached=True)
                    await self._sleep(I_CWAITING, self._has_data)
                    self._check_open()
                    if self._view_open:  # another task's view took the message meanwhile
                        raise _busy(f"receiving from {self._what} while a receive_view is open")
                    off, length = self._reader.next_record(self._hq[Q_HEAD])
                    if off >= 0:
                        break
        self._slow += 1  # until the view is released
        self._view_open = True
        return self._data_ro[off : off + length], length

    def _close_view(self, view: memoryview, length: int) -> None:
        self._view_open = False
        self._slow -= 1
        released = True
        try:
            view.release()
        except BufferError:
            released = False
        if not self._closed:
            reader = self._reader
            reader.tail = tail = reader.tail + RECORD_HEADER + ((length + 7) & ~7)
            self._hq[Q_TAIL] = tail
            if self._facq(False):
                self._frel()
            if self._hi[I_PWAITING]:
                self._ring_peer()
        if not released:
            raise BufferError(
                f"{self._what}: views made from a receive_view outlived its block; "
                "the ring may now overwrite what they show"
            )


class _Reservation:
    """What :meth:`ShmSender.reserve` returns (a class: the zero-copy hot path)."""

    __slots__ = ("_head", "_size", "_tx", "_view")

    def __init__(self, tx: ShmSender, size: int) -> None:
        self._tx = tx
        self._size = size
        self._view: memoryview | None = None
        self._head = 0

    async def __aenter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this reserve() is already entered")
        tx = self._tx
        if not tx._slow and tx._pacer.count < YIELD_EVERY - 1:
            if time.monotonic() >= tx._next_peer_check or tx._hi[I_CSTATE] == STATE_CLOSED:
                tx._maybe_check_receiver()
            # The common case inline (what RingWriter.reserve does): room up to the end.
            writer = tx._writer
            size = self._size
            head = writer.head
            cap = writer.capacity
            idx = head % cap
            rec = RECORD_HEADER + ((size + 7) & ~7)
            if idx + rec <= cap and (
                head + rec - writer.tail_seen <= cap or head + rec - tx._refresh_tail() <= cap
            ):
                writer.dq[idx >> 3] = size | _KIND_MESSAGE_WORD
                tx._pacer.count += 1
                tx._slow += 1
                tx._reserved = True
                self._head = head
                start = idx + RECORD_HEADER
                view = self._view = tx._data[start : start + size]
                return view
        self._view, self._head = await tx._open_reservation(self._size)
        return self._view

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        view, self._view = self._view, None
        if view is not None:
            tx = self._tx
            try:
                tx._close_reservation(view, self._size, self._head, exc_type is None)
            finally:
                if tx._lock_cm is not None:
                    await tx._release_send_lock()


class _ReceivedView:
    """What :meth:`ShmReceiver.receive_view` returns (a class, not a generator-based
    context manager: this is the zero-copy hot path)."""

    __slots__ = ("_length", "_rx", "_view")

    def __init__(self, rx: ShmReceiver) -> None:
        self._rx = rx
        self._view: memoryview | None = None
        self._length = 0

    async def __aenter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this receive_view() is already entered")
        rx = self._rx
        if not rx._slow and rx._pacer.count < YIELD_EVERY - 1:
            # The common case inline (what RingReader.next_record does, minus pads).
            reader = rx._reader
            tail = reader.tail
            cap = reader.capacity
            used = rx._hq[Q_HEAD] - tail
            off = -1
            if 0 < used <= cap:
                idx = tail % cap
                word = reader.dq[idx >> 3]
                length = word & 0xFFFFFFFF
                rec = RECORD_HEADER + ((length + 7) & ~7)
                if word >> 32 == KIND_MESSAGE and rec <= used and idx + rec <= cap:
                    off = idx + RECORD_HEADER
            if off >= 0:  # a message is there
                rx._pacer.count += 1
                rx._slow += 1
                rx._view_open = True
                self._length = length
                view = self._view = rx._data_ro[off : off + length]
                return view
        self._view, self._length = await rx._open_view()
        return self._view

    async def __aexit__(self, *exc: object) -> None:
        view = self._view
        if view is not None:
            self._view = None
            self._rx._close_view(view, self._length)


class ShmSender(_RingEnd, ObjectSendStream[bytes]):
    """The sending end of a shared-memory ring (an anyio ObjectSendStream of bytes)."""

    _role = "sender"
    _peer_role = "receiver"
    _wait_bell_index = 1  # space bell
    _my_waiting = I_PWAITING
    _peer_state = I_CSTATE
    _peer_pid_index = I_CPID
    _peer_position = Q_TAIL
    _peer_lock = _LOCK_CONSUMER
    _pid_byte = _PID_PRODUCER
    _peer_pid_byte = _PID_CONSUMER

    def _claim(self) -> None:
        self._multi = bool(self._hi[I_FLAGS] & _ring.FLAG_MULTI_PRODUCER)
        if self._multi:
            _try_lock(self._fd, _LOCK_PRODUCERS, exclusive=False)
        elif not _try_lock(self._fd, _LOCK_PRODUCER):
            raise _busy(
                f"sending to {self._what}: another sender ("
                f"{_holder_text(self._fd, _PID_PRODUCER, self._hi[I_PPID])}) is attached; "
                "create the ring with multi_producer=True for several"
            )
        if self._multi:
            self._pid_byte = -1  # the receiver does not watch several senders
        self._claim_pid_lock()
        self._writer = RingWriter(self._hq, self._data, self._capacity)
        self._views.append(self._writer.dq)
        self._reserved = False
        self._lock_cm: Any = None
        self._broken: str | None = None
        if not self._multi:
            self._hi[I_PPID] = os.getpid()
            self._hi[I_PWAITING] = 0  # a previous sender may have died asleep
            self._hi[I_PSTATE] = STATE_OPEN
        self._fence()
        self._ring_peer()  # a receiver asleep re-checks who its sender is

    def _my_state(self) -> int:
        return I_PSTATE

    def _close_sync(self) -> None:
        if self._multi and not self._closed:
            # Several senders: one closing does not end the stream (send_eof does).
            self._closed = True
            self._slow += 1 << 30
            self._waiter.close()
            if self._pidfd >= 0:
                os.close(self._pidfd)
            self._ep.close()
            if self._unlink_on_close and os.getpid() == self._pid:
                with contextlib.suppress(OSError):
                    unlink(self._name)
            with contextlib.suppress(BufferError):
                self._teardown()
            return
        super()._close_sync()

    def send_eof(self) -> None:
        """End the stream: the receiver gets EndOfStream after the messages sent so far.

        With one sender, :meth:`aclose` does this too; with several, one of them calls
        this when all are done. Raises ClosedResourceError if this sender is closed.
        """
        self._check_open()
        self._hi[I_PSTATE] = STATE_CLOSED
        self._fence()
        self._ring_peer()

    def _check_peer_before_sleep(self) -> None:
        self._check_receiver(cached=True)

    def _receiver_gone(self, why: str) -> BrokenResourceError:
        # Sticky: once a send has said the receiver is gone, every later one says so.
        if self._broken is None:
            self._broken = f"{self._what}: {why}"
            self._slow += 1
        return BrokenResourceError(self._broken)

    def _check_receiver(self, cached: bool = False) -> None:
        why = self._peer_gone(cached)
        if why == "closed":
            raise self._receiver_gone("the receiver closed")
        if why is not None:
            raise self._receiver_gone(why)

    def _maybe_check_receiver(self) -> None:
        if self._broken is not None:
            raise BrokenResourceError(self._broken)
        if self._hi[I_CSTATE] == STATE_CLOSED:
            raise self._receiver_gone("the receiver closed")
        now = time.monotonic()
        if now >= self._next_peer_check:
            self._periodic_check(now)

    def _periodic_check(self, now: float) -> None:
        """What a sender that need not wait does at most every 0.25 s."""
        self._next_peer_check = now + _PEER_CHECK_INTERVAL
        if self._pid_lock_closes != _closes:
            self._retake_pid_lock()  # one that never sleeps takes it back here
        self._check_receiver()

    def _too_large(self, size: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            size,
            self.max_message_size,
            f"the largest message of {self._what} (capacity // 2 - 8, "
            f"capacity {self._capacity} bytes)",
        )

    def _has_room_for(self, size: int) -> Any:
        writer = self._writer

        def ready() -> bool:
            head = writer.head
            idx = head % writer.capacity
            need = _ring.record_size(size)
            total = need if writer.capacity - idx >= need else writer.capacity - idx + need
            return head + total - self._hq[_ring.Q_TAIL] <= writer.capacity

        return ready

    def _refresh_tail(self) -> int:
        writer = self._writer
        tail: int = self._hq[_ring.Q_TAIL]
        if not 0 <= writer.head - tail <= writer.capacity:
            raise ProtocolError(f"{self._what}: corrupt ring: tail {tail}, head {writer.head}")
        writer.tail_seen = tail
        return tail

    def _after_publish(self) -> None:
        self._writer.publish()
        self._fence()
        if self._hi[I_CWAITING]:
            self._ring_peer()

    def _put(self, data: bytes | bytearray | memoryview, size: int) -> bool:
        writer = self._writer
        off = writer.reserve(size)
        if off < 0:
            return False
        start = HEADER_SIZE + off
        self._m[start : start + size] = data
        writer.commit(size)
        return True

    def _check_send(self) -> None:
        self._check_open()
        if self._reserved:
            raise _busy(f"sending to {self._what} while a reserve() is open")

    def send_nowait(self, item: bytes) -> None:
        """Send ``item`` if the ring has room now.

        Raises:
            anyio.WouldBlock: the ring is too full (nothing was sent).
            aioipc.MessageTooLargeError: larger than :attr:`max_message_size`.
            anyio.BrokenResourceError: the receiver closed or died.
            anyio.ClosedResourceError: this sender is closed.
        """
        data = item if isinstance(item, bytes) else message_bytes(item)
        size = len(data)
        if size > self.max_message_size:
            raise self._too_large(size)
        self._check_send()
        self._maybe_check_receiver()
        if self._multi:
            # An OFD lock is this handle's, so taking it again would succeed (and the
            # unlock below drop it) while another task of ours holds it.
            if self._waiting or self._lock_cm is not None or not _try_lock(self._fd, _LOCK_SEND):
                raise WouldBlock
            try:
                self._writer.reload()
                if not self._put(data, size):
                    raise WouldBlock
                self._after_publish()
            finally:
                _unlock(self._fd, _LOCK_SEND)
            return
        if not self._put(data, size):
            raise WouldBlock
        self._after_publish()

    async def send(self, item: bytes) -> None:
        """Send one message (copied into the ring); waits while the ring is too full.

        Raises:
            aioipc.MessageTooLargeError: larger than :attr:`max_message_size` (which
                the error names with the ring's capacity). Nothing was sent.
            anyio.BrokenResourceError: the receiver closed or died (SIGKILL too).
            anyio.ClosedResourceError: this sender was closed, also while waiting.
            anyio.BusyResourceError: a ``reserve()`` block is open on this sender.
            TypeError: ``item`` is not bytes-like.

        Cancellation: a cancelled send did not send (the message is written and
        published at once, after any wait).
        """
        data = item if type(item) is bytes else message_bytes(item)
        size = len(data)
        pacer = self._pacer
        pacer.count += 1
        if pacer.count >= YIELD_EVERY:
            # The checkpoint comes first: cancelled here, nothing was taken or sent.
            pacer.count = 0
            await checkpoint()
        hi = self._hi
        if not self._slow and size <= self._max_msg and hi[I_CSTATE] != STATE_CLOSED:
            # The common case inline: room up to the end of the data, no wait.
            writer = self._writer
            head = writer.head
            cap = writer.capacity
            idx = head % cap
            rec = RECORD_HEADER + ((size + 7) & ~7)
            if idx + rec <= cap and (
                head + rec - writer.tail_seen <= cap or head + rec - self._refresh_tail() <= cap
            ):
                now = time.monotonic()
                if now >= self._next_peer_check:
                    self._periodic_check(now)
                writer.dq[idx >> 3] = size | _KIND_MESSAGE_WORD
                start = HEADER_SIZE + RECORD_HEADER + idx
                self._m[start : start + size] = data
                writer.head = head = head + rec
                self._hq[Q_HEAD] = head
                if self._facq(False):
                    self._frel()
                if hi[I_CWAITING]:
                    self._ring_peer()
                return
        if size > self._max_msg:
            raise self._too_large(size)
        self._check_send()
        with self._one_waiter("sending to"):
            async with self._send_lock():
                while True:
                    self._check_send()
                    self._maybe_check_receiver()
                    if self._multi:
                        self._writer.reload()
                    if self._put(data, size):
                        self._after_publish()
                        return
                    await self._sleep(I_PWAITING, self._has_room_for(size))

    async def send_many(self, items: Iterable[bytes]) -> None:
        """Send several messages, publishing them together (one fence, at most one
        doorbell per batch that fits). Waits for room as :meth:`send`.

        Raises: as :meth:`send`; a message too large is refused before any is sent.

        Cancellation: the messages before the one that was waiting for room were sent;
        the cancellation exception carries a note saying how many.
        """
        batch = [i if isinstance(i, bytes) else message_bytes(i) for i in items]
        limit = self.max_message_size
        for data in batch:
            if len(data) > limit:
                raise self._too_large(len(data))
        self._check_send()
        await self._pacer.checkpoint()
        sent = 0
        try:
            with self._one_waiter("sending to"):
                async with self._send_lock():
                    while sent < len(batch):
                        self._check_send()
                        self._maybe_check_receiver()
                        if self._multi:
                            self._writer.reload()
                        start = sent
                        sent = self._put_many(batch, sent)
                        if sent > start:
                            self._after_publish()
                        if sent < len(batch):
                            room = self._has_room_for(len(batch[sent]))
                            await self._sleep(I_PWAITING, room)
        except BaseException as exc:
            if sent:
                exc.add_note(f"send_many: {sent} of {len(batch)} messages were sent")
            raise

    def _put_many(self, batch: list[bytes], start: int) -> int:
        """Write ``batch[start:]`` while it fits (unpublished); return the next index."""
        writer = self._writer
        m = self._m
        dq = writer.dq
        cap = writer.capacity
        head = writer.head
        tail = writer.tail_seen
        i = start
        for data in batch[start:]:
            size = len(data)
            idx = head % cap
            rec = RECORD_HEADER + ((size + 7) & ~7)
            if idx + rec > cap or head + rec - tail > cap:
                writer.head = head
                if not self._put(data, size):  # the general path: pad record, fresh tail
                    return i
                head = writer.head
                tail = writer.tail_seen
            else:
                dq[idx >> 3] = size | _KIND_MESSAGE_WORD
                s = HEADER_SIZE + RECORD_HEADER + idx
                m[s : s + size] = data
                head += rec
            i += 1
        writer.head = head
        return i

    def reserve(self, size: int) -> _Reservation:
        """``async with sender.reserve(n) as view:`` write a message in place.

        ``view`` is a writable memoryview of ``n`` bytes inside the ring; the message is
        published when the block exits normally, and abandoned (never seen) if it
        raises. Waits for room as :meth:`send`. Other sends on this sender raise
        BusyResourceError until the block exits.

        Raises: as :meth:`send`; ``BufferError`` at exit if views derived from ``view``
        outlived the block (the message is published all the same).

        Cancellation: cancelled while waiting for room, nothing was reserved.
        """
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"reserve takes a size in bytes >= 0, not {size!r}")
        if size > self._max_msg:
            raise self._too_large(size)
        return _Reservation(self, size)

    async def _open_reservation(self, size: int) -> tuple[memoryview, int]:
        pacer = self._pacer
        pacer.count += 1
        if pacer.count >= YIELD_EVERY:
            pacer.count = 0
            await checkpoint()
        self._check_send()
        writer = self._writer
        if not self._slow:
            self._maybe_check_receiver()
            head = writer.head
            off = writer.reserve(size)
            if off >= 0:
                self._slow += 1
                self._reserved = True
                return self._data[off : off + size], head
        with self._one_waiter("sending to"):
            lock_cm = self._send_lock()
            await lock_cm.__aenter__()
            self._lock_cm = lock_cm
            try:
                while True:
                    self._check_send()
                    self._maybe_check_receiver()
                    if self._multi:
                        writer.reload()
                    head = writer.head
                    off = writer.reserve(size)
                    if off >= 0:
                        break
                    await self._sleep(I_PWAITING, self._has_room_for(size))
            except BaseException:
                await self._release_send_lock()
                raise
        self._slow += 1
        self._reserved = True
        return self._data[off : off + size], head

    async def _release_send_lock(self) -> None:
        cm, self._lock_cm = self._lock_cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    def _close_reservation(self, view: memoryview, size: int, head: int, ok: bool) -> None:
        """Publish (or abandon) the reserved message; the caller then releases the send
        lock if one is held (``_lock_cm``)."""
        self._reserved = False
        self._slow -= 1
        released = True
        try:
            view.release()
        except BufferError:
            released = False
        if self._closed:
            pass
        elif ok:
            writer = self._writer
            writer.head = new_head = writer.head + RECORD_HEADER + ((size + 7) & ~7)
            self._hq[Q_HEAD] = new_head
            if self._facq(False):
                self._frel()
            if self._hi[I_CWAITING]:
                self._ring_peer()
        else:
            self._writer.abandon(head)
        if not released:
            raise BufferError(f"{self._what}: views made from a reserve() outlived its block")

    @contextlib.asynccontextmanager
    async def _send_lock(self) -> AsyncIterator[None]:
        """Several producers: hold the ring's send lock (an OFD lock) around a send."""
        if not self._multi:
            yield
            return
        # Polled, not waited for in a thread: F_OFD_SETLKW cannot be interrupted (Python
        # retries it on EINTR), so a cancelled send would hang as long as the holder
        # keeps the lock. The lock is held for the time of one copy into the ring, or
        # while its holder waits for room, which a short poll follows well enough.
        delay = 0.0005
        while not _try_lock(self._fd, _LOCK_SEND):
            await anyio.sleep(delay)
            self._check_open()
            delay = min(delay * 2, 0.02)
        try:
            yield
        finally:
            if self._fd >= 0:
                _unlock(self._fd, _LOCK_SEND)


def _reopen(cls: type[_RingEnd], name: str, spin: float) -> Any:
    return cls.open(name, spin=spin)
