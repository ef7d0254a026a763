"""The implementation behind :mod:`aioipc.shm` (see there): the ring's two ends, their
files, mapping and lifecycle.

What each end does is split by concern: :mod:`aioipc._core.ring` owns the record format
(every offset, padding and record word, and the publish step); :mod:`aioipc._core.doorbell`
the wake-up protocol (doorbells, waiting flags, the pidfd watch on the peer);
:mod:`aioipc._core.shm_lock` the locks on the region file, among them the multi-producer
send lock. Waiting goes through :mod:`aioipc._core.wait`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import mmap
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Self

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
    MessageTooLargeError,
    ProtocolError,
    translate_os_error,
)
from . import registry as _registry
from . import ring as _ring
from .check import check_mode
from .doorbell import PEER_CHECK_INTERVAL, Doorbell, open_bell
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
    STATE_CLOSED,
    STATE_OPEN,
    RingReader,
    RingWriter,
)
from .shm_lock import (
    LOCK_CONSUMER,
    LOCK_PRODUCER,
    LOCK_PRODUCERS,
    LOCK_SEND,
    PID_CONSUMER,
    PID_PRODUCER,
    close_region,
    is_locked,
    pid_lock_holder,
    send_lock,
    try_lock,
    unlock,
)
from .wait import AGAIN, Again, Busy, Pacer, Spun, busy_error, wait_until

__all__ = ["DEFAULT_CAPACITY", "ShmReceiver", "ShmSender", "is_stale", "unlink"]

DEFAULT_CAPACITY = 1 << 20
# Map every page up front: no page fault per page on the first lap of the ring.
_POPULATE = mmap.MAP_POPULATE
SHM_DIR = "/dev/shm"
_BELL_DATA = ".bell-data"
_BELL_SPACE = ".bell-space"


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
        return not any(is_locked(fd, b) for b in (LOCK_CONSUMER, LOCK_PRODUCER, LOCK_PRODUCERS))
    finally:
        close_region(fd)


def _holder_text(fd: int, pid_byte: int, header_pid: int) -> str:
    """Who holds an end's locks, for a message: the pid the kernel reports, else the
    one the header says."""
    with contextlib.suppress(OSError):
        pid = pid_lock_holder(fd, pid_byte)
        if pid:
            return f"pid {pid}"
    return f"pid {header_pid} by the ring's header"


class _RingEnd:
    """What both ends share: the files, the mapping, the doorbell, the lifecycle."""

    _role = ""
    _peer_role = ""
    _multi = False
    # Which of the two doorbells this end sleeps on (0: data, 1: space); it rings the other.
    _wait_bell_index = 0
    _my_waiting = 0
    _my_state = 0
    _peer_state = 0
    _peer_pid_index = 0  # the peer's pid in the header: for messages only
    # The position the peer moves (head or tail): nonzero once it worked.
    _peer_position: Callable[[memoryview], int]
    _bell: Doorbell

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
        if not (isinstance(spin, (int, float)) and 0 <= spin < 1 and math.isfinite(spin)):
            raise ValueError(f"spin is seconds to busy-wait, 0 <= spin < 1, not {spin!r}")
        self._name = name
        self._what = f"shared-memory ring {name}"
        region, bell_data, bell_space = _paths(name)
        self._created = create
        self._fd = -1
        self._bells: list[int] = []
        self._mm: mmap.mmap | None = None
        self._views: list[memoryview] = []
        made: list[str] = []
        bell: Doorbell | None = None
        try:
            if create:
                self._make(region, bell_data, bell_space, capacity, mode, flags, made)
            else:
                self._attach(region, bell_data, bell_space)
            # Before the claim, which tells the peer we are here: after it, nothing fails.
            bell = self._bell = Doorbell(
                what=self._what,
                fd=self._fd,
                wait_bell=self._bells[self._wait_bell_index],
                ring_bell=self._bells[1 - self._wait_bell_index],
                hq=self._hq,
                hi=self._hi,
                my_waiting=self._my_waiting,
                peer_state=self._peer_state,
                peer_pid_index=self._peer_pid_index,
                peer_position=self._peer_position,
                role=self._role,
                peer_role=self._peer_role,
                spin=float(spin),
            )
            self._claim()
            # Once the peer was seen attached (its lock held), a free lock means it is
            # gone, whatever its state field says (a forged NONE must not hide a death).
            bell.peer_seen = is_locked(self._fd, bell.peer_lock)
            if create:
                # Last, once nothing can fail: only now may others attach.
                _ring.set_magic(self._hq)
        except BaseException as exc:
            if bell is not None:
                bell.close()
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
        self._pacer = Pacer()
        self._next_peer_check = 0.0
        self._max_msg = _ring.max_message_size(self._capacity)
        # 0 = the fast paths may run: open, nobody waiting, no view or reservation open,
        # a single producer, not broken. Everything else counts itself in here.
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
        _ring.check_capacity(capacity, self._what)
        check_mode(mode, self._what)
        try:
            self._fd = os.open(
                region, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            made.append(region)
            # Claimed at once, so that is_stale() never calls a ring being built stale.
            self._claim_byte(flags)
            os.fchmod(self._fd, mode)  # exactly mode, whatever the umask
            reserve(self._fd, _ring.region_size(capacity), self._what, region)
            for path in (bell_data, bell_space):
                os.mkfifo(path, 0o600)
                made.append(path)
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
                self._bells.append(fd)
                os.fchmod(fd, mode)
        except OSError as exc:
            raise translate_os_error(exc, self._what) from exc
        self._map(_ring.region_size(capacity))
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
        if not stat.S_ISREG(st.st_mode) or st.st_size < _ring.region_size(_ring.MIN_CAPACITY):
            raise ProtocolError(f"{self._what}: {region} is not a ring ({st.st_size} bytes)")
        # Check the header before mapping (and populating) a file of any size.
        hq, hi = _ring.header_views(bytearray(os.pread(self._fd, HEADER_SIZE, 0)))
        with hq, hi:
            if not _ring.has_magic(hq):
                raise IPCNotFoundError(
                    errno.ENOENT, f"{self._what}: still being created (no magic yet)", region
                )
            _ring.check_header(hq, hi, st.st_size, self._what)
        self._map(st.st_size)
        self._capacity = _ring.check_header(self._hq, self._hi, st.st_size, self._what)
        for path in (bell_data, bell_space):
            self._bells.append(open_bell(path, st.st_uid, self._what, "ring"))

    def _map(self, size: int) -> None:
        try:
            self._mm = self._m = mmap.mmap(
                self._fd, size, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise translate_os_error(exc, f"{self._what}: mapping {size} bytes") from exc
        self._hq, self._hi = _ring.header_views(self._m)
        self._views = [self._hq, self._hi]

    def _claim(self) -> None:
        raise NotImplementedError

    def _claim_byte(self, flags: int) -> None:
        """The creator's own OFD lock, taken right after the exclusive create
        (``_claim`` takes it again later, which an OFD lock allows)."""
        if self._role == "receiver":
            try_lock(self._fd, LOCK_CONSUMER)
        elif flags & _ring.FLAG_MULTI_PRODUCER:
            try_lock(self._fd, LOCK_PRODUCERS, exclusive=False)
        else:
            try_lock(self._fd, LOCK_PRODUCER)

    def _claim_pid_lock(self) -> None:
        """Take this end's classic pid lock, so that the peer can learn our pid from the
        kernel. Someone else holding it (nothing of aioipc's: a second end of this role
        would not have got the OFD lock) could make the peer watch the wrong process."""
        holder = self._bell.claim_pid_lock()
        if holder:
            who = f"pid {holder}" if holder > 0 else "another process"
            raise busy_error(
                f"{self._what}: {who} holds the {self._role}'s lock byte "
                f"{self._bell.pid_byte}; it is not an aioipc end"
            )

    def _teardown(self) -> None:
        for fd in self._bells:
            os.close(fd)
        self._bells = []
        if self._fd >= 0:
            close_region(self._fd)  # also drops this end's locks
            self._fd = -1
        for v in reversed(self._views):
            v.release()
        self._views = []
        if self._mm is not None:
            self._mm.close()  # BufferError while a receive_view/reserve view is alive
            self._mm = None

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this {self._role} is closed")

    def _check_peer_before_sleep(self) -> None:
        raise NotImplementedError

    # -- what aioipc._core.shm_duplex asks of an end (its handshake and attributes) -------

    def _peer_gone(self) -> str | None:
        """Why the peer is gone ("closed", or how it died), or None while it is attached
        or has not attached yet: the kernel's answer (:meth:`Doorbell.peer_gone`)."""
        self._check_open()
        return self._bell.peer_gone()

    def _peer_pid(self) -> int:
        """The single peer's pid as the kernel reports it (its pid lock); 0 if unknown
        (not attached, several senders, another pid namespace)."""
        byte = self._bell.peer_pid_byte
        if self._closed or byte < 0:
            return 0
        try:
            return pid_lock_holder(self._fd, byte)
        except OSError:
            return 0

    def _owner_uid(self) -> int:
        """The uid owning the ring's region file (its creator's, unless chowned)."""
        self._check_open()
        return os.fstat(self._fd).st_uid

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
            IPCAttribute.fd: lambda: self._bell.fileno(),
        }

    def _fence(self) -> None:
        self._bell.fence()

    def _close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._slow += 1 << 30
        if os.getpid() == self._pid:
            if self._bell.asleep:  # do not leave the peer ringing a doorbell nobody hears
                self._hi[self._my_waiting] = 0
            self._hi[self._my_state] = STATE_CLOSED
            self._fence()
            self._bell.ring()
            if self._unlink_on_close:
                with contextlib.suppress(OSError):
                    unlink(self._name)
        self._bell.close()
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


class ShmReceiver(_RingEnd, ObjectReceiveStream[bytes]):
    """The receiving end of a shared-memory ring (an anyio ObjectReceiveStream of bytes)."""

    _role = "receiver"
    _peer_role = "sender"
    _wait_bell_index = 0  # data bell
    _my_waiting = I_CWAITING
    _my_state = I_CSTATE
    _peer_state = I_PSTATE
    _peer_pid_index = I_PPID
    _peer_position = staticmethod(_ring.published_head)

    def _claim(self) -> None:
        bell = self._bell
        if not try_lock(self._fd, LOCK_CONSUMER):
            raise busy_error(
                f"receiving from {self._what}: another receiver ("
                f"{_holder_text(self._fd, PID_CONSUMER, self._hi[I_CPID])}) is attached; "
                "a ring has one receiver"
            )
        bell.pid_byte = PID_CONSUMER
        self._claim_pid_lock()
        self._multi = bool(self._hi[I_FLAGS] & _ring.FLAG_MULTI_PRODUCER)
        # Several senders: their lives are not watched, only whether any is attached.
        bell.peer_lock = LOCK_PRODUCERS if self._multi else LOCK_PRODUCER
        bell.peer_pid_byte = -1 if self._multi else PID_PRODUCER
        self._reader = RingReader(self._m, self._capacity, self._what, bell.ring)
        bell.fence = self._reader.fence
        self._views[:0] = self._reader.views()
        self._busy_guard = Busy(
            "receiving from",
            f"receiving from {self._what}: another task is already waiting",
        )

        self._view_open = False
        self._hi[I_CPID] = os.getpid()
        self._hi[I_CWAITING] = 0  # a previous receiver may have died asleep
        self._hi[I_CSTATE] = STATE_OPEN
        self._fence()
        bell.ring()  # a sender asleep on a full ring re-checks who its receiver is

    def _check_peer_before_sleep(self) -> None:
        # The sender may publish and then close or die right now: _at_empty reads its
        # state before looking at head again, so no published message is skipped.
        self._at_empty(cached=True)

    def _at_empty(self, cached: bool = False) -> None:
        """Raise EndOfStream/BrokenResourceError if an empty ring will stay empty."""
        closed = self._hi[I_PSTATE] == STATE_CLOSED
        if not closed:
            if self._multi:
                return
            why = self._bell.peer_gone(cached)
            if why is None:
                return
            # "closed": the sender closed since we looked above, cleanly.
            closed = why == "closed"
            if not closed:
                if not self._reader.has_data():
                    raise BrokenResourceError(f"{self._what}: {why}")
                return
        # The sender publishes its last head before it says closed: look once more.
        if not self._reader.has_data():
            raise EndOfStream

    def _view_busy(self) -> BusyResourceError:
        return busy_error(f"receiving from {self._what} while a receive_view is open")

    def _wait_for_data(self) -> Callable[[], Awaitable[Spun | None]]:
        """How a receive waits (wait_until's ``wait``). Doorbell.wait calls
        _check_peer_before_sleep, which raises at the end of the stream, before it
        sleeps (after a spin, if any). Made per call: stored, it would tie the end to
        itself and keep an end nobody closed alive until the cycle collector runs."""
        return functools.partial(
            self._bell.wait, self._reader.has_data, self._check_peer_before_sleep
        )

    def _attempt_take(self) -> bytes | Again:
        self._check_open()
        if self._view_open:
            raise self._view_busy()
        return self._reader.take()

    def receive_nowait(self) -> bytes:
        """The next message if one is waiting.

        Raises:
            anyio.WouldBlock: the ring is empty.
            anyio.EndOfStream: the sender closed and every message was received.
            anyio.BrokenResourceError: the sender died and every message it published
                was received.
            anyio.ClosedResourceError: this receiver is closed.
            anyio.BusyResourceError: a ``receive_view`` block is open on this receiver.
            aioipc.ProtocolError: the ring is corrupt.
        """
        msg = self._attempt_take()
        if msg is AGAIN:
            self._at_empty()
            msg = self._reader.take()
            if msg is AGAIN:
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
            anyio.BusyResourceError: another task is receiving on this receiver, or a
                ``receive_view`` block is open on it.
            aioipc.ProtocolError: the ring is corrupt.

        Cancellation: a cancelled receive consumed nothing.
        """
        # wait_until's fast path, inline: a message is there and nothing is special
        # (_slow). Measured: going through wait_until even when a message is there made
        # one 64-byte send + receive 2.77 us instead of 2.24 us (+21%; in-process loop
        # of 100 sends then 100 receives, best of 5 runs; base commit 2a09dfc: 2.28 us).
        if self._pacer.due():
            # The checkpoint comes first: cancelled here, nothing was taken.
            await checkpoint()
        if not self._slow:
            msg = self._reader.take()
            if msg is not AGAIN:
                return msg
        # Otherwise wait_until, in this frame (one coroutine less per wait).
        self._check_open()
        with self._busy_guard:
            self._slow += 1
            try:
                return await wait_until(self._attempt_take, self._wait_for_data(), self._pacer)
            finally:
                self._slow -= 1

    async def receive_many(self, max_count: int = 1024) -> list[bytes]:
        """Wait for at least one message, then take up to ``max_count`` that are there.

        Publishes the ring's tail once for the whole batch. Raises as :meth:`receive`
        (EndOfStream only when no message is left). Cancellation: nothing consumed.
        """
        if not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, not {max_count!r}")
        out = [await self.receive()]
        if max_count > 1:
            self._reader.take_many(out, max_count - 1)
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

    def _attempt_view(self) -> memoryview | Again:
        self._check_open()
        if self._view_open:  # another task's view took the message meanwhile
            raise self._view_busy()
        return self._reader.view()

    def _opened_view(self, view: memoryview) -> memoryview:
        self._slow += 1  # until the view is released
        self._view_open = True
        return view

    async def _open_view(self) -> memoryview:
        self._check_open()
        if self._view_open:
            raise self._view_busy()
        with self._busy_guard:
            self._slow += 1
            try:
                view = await wait_until(self._attempt_view, self._wait_for_data(), self._pacer)
            finally:
                self._slow -= 1
        return self._opened_view(view)

    def _close_view(self, view: memoryview) -> None:
        self._view_open = False
        self._slow -= 1
        released = True
        try:
            view.release()
        except BufferError:
            released = False
        if not self._closed:
            self._reader.release_view()
        if not released:
            raise BufferError(
                f"{self._what}: views made from a receive_view outlived its block; "
                "the ring may now overwrite what they show"
            )


class _ReceivedView:
    """What :meth:`ShmReceiver.receive_view` returns (a class, not a generator-based
    context manager: this is the zero-copy hot path)."""

    __slots__ = ("_rx", "_view")

    def __init__(self, rx: ShmReceiver) -> None:
        self._rx = rx
        self._view: memoryview | None = None

    async def __aenter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this receive_view() is already entered")
        rx = self._rx
        # wait_until's fast path, inline (as in ShmReceiver.receive).
        if rx._pacer.due():
            await checkpoint()
        if not rx._slow:
            view = rx._reader.view()
            if view is not AGAIN:
                rx._slow += 1  # until the view is released (_opened_view, inline)
                rx._view_open = True
                self._view = view
                return view
        self._view = view = await rx._open_view()
        return view

    async def __aexit__(self, *exc: object) -> None:
        view = self._view
        if view is not None:
            self._view = None
            self._rx._close_view(view)


class _Reservation:
    """What :meth:`ShmSender.reserve` returns (a class: the zero-copy hot path)."""

    __slots__ = ("_size", "_tx", "_view")

    def __init__(self, tx: ShmSender, size: int) -> None:
        self._tx = tx
        self._size = size
        self._view: memoryview | None = None

    async def __aenter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this reserve() is already entered")
        tx = self._tx
        # wait_until's fast path, inline (as in ShmSender.send).
        if tx._pacer.due():
            await checkpoint()
        if (
            not tx._slow
            and tx._hi[I_CSTATE] != STATE_CLOSED
            and time.monotonic() < tx._next_peer_check
        ):  # the conditions of ShmSender.send's fast path
            view = tx._writer.reserve(self._size)
            if view is not AGAIN:
                tx._slow += 1  # until the reservation is closed (_reserved_view, inline)
                tx._reserved = True
                self._view = view
                return view
        self._view = view = await tx._open_reservation(self._size)
        return view

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        view, self._view = self._view, None
        if view is not None:
            tx = self._tx
            try:
                tx._close_reservation(view, exc_type is None)
            finally:
                if tx._lock_cm is not None:
                    await tx._release_send_lock()


class ShmSender(_RingEnd, ObjectSendStream[bytes]):
    """The sending end of a shared-memory ring (an anyio ObjectSendStream of bytes)."""

    _role = "sender"
    _peer_role = "receiver"
    _wait_bell_index = 1  # space bell
    _my_waiting = I_PWAITING
    _my_state = I_PSTATE
    _peer_state = I_CSTATE
    _peer_pid_index = I_CPID
    _peer_position = staticmethod(_ring.published_tail)

    def _claim(self) -> None:
        bell = self._bell
        self._multi = bool(self._hi[I_FLAGS] & _ring.FLAG_MULTI_PRODUCER)
        if self._multi:
            try_lock(self._fd, LOCK_PRODUCERS, exclusive=False)
        elif not try_lock(self._fd, LOCK_PRODUCER):
            raise busy_error(
                f"sending to {self._what}: another sender ("
                f"{_holder_text(self._fd, PID_PRODUCER, self._hi[I_PPID])}) is attached; "
                "create the ring with multi_producer=True for several"
            )
        bell.peer_lock = LOCK_CONSUMER
        bell.peer_pid_byte = PID_CONSUMER
        # The receiver does not watch several senders: no pid lock for them.
        bell.pid_byte = -1 if self._multi else PID_PRODUCER
        self._claim_pid_lock()
        self._writer = RingWriter(self._m, self._capacity, self._what, bell.ring)
        bell.fence = self._writer.fence
        self._views[:0] = self._writer.views()
        self._busy_guard = Busy(
            "sending to", f"sending to {self._what}: another task is already waiting"
        )
        self._reserved = False
        self._lock_cm: AbstractAsyncContextManager[None] | None = None
        self._broken: str | None = None
        if not self._multi:
            self._hi[I_PPID] = os.getpid()
            self._hi[I_PWAITING] = 0  # a previous sender may have died asleep
            self._hi[I_PSTATE] = STATE_OPEN
        self._fence()
        bell.ring()  # a receiver asleep re-checks who its sender is

    def _close_sync(self) -> None:
        if self._multi and not self._closed:
            # Several senders: one closing does not end the stream (send_eof does).
            self._closed = True
            self._slow += 1 << 30
            self._bell.close()
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
        self._bell.ring()

    def _check_peer_before_sleep(self) -> None:
        self._check_receiver(cached=True)

    def _receiver_gone(self, why: str) -> BrokenResourceError:
        # Sticky: once a send has said the receiver is gone, every later one says so.
        if self._broken is None:
            self._broken = f"{self._what}: {why}"
            self._slow += 1
        return BrokenResourceError(self._broken)

    def _check_receiver(self, cached: bool = False) -> None:
        why = self._bell.peer_gone(cached)
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
            # What a sender that need not wait does at most every 0.25 s.
            self._next_peer_check = now + PEER_CHECK_INTERVAL
            self._bell.retake_pid_lock_if_lost()  # one that never sleeps takes it here
            self._check_receiver()

    def _too_large(self, size: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            size,
            self.max_message_size,
            f"the largest message of {self._what} (capacity // 2 - 8, "
            f"capacity {self._capacity} bytes)",
        )

    def _check_send(self) -> None:
        self._check_open()
        if self._reserved:
            raise busy_error(f"sending to {self._what} while a reserve() is open")

    def _ready_to_write(self) -> RingWriter:
        """What every write that is not on the fast path checks first."""
        self._check_send()
        self._maybe_check_receiver()
        writer = self._writer
        if self._multi:
            writer.reload()
        return writer

    def _wait_for_room(self, size: int) -> Callable[[], Awaitable[Spun | None]]:
        """How a send of ``size`` bytes waits (wait_until's ``wait``)."""
        ready = functools.partial(self._writer.has_room, size)
        return functools.partial(self._bell.wait, ready, self._check_peer_before_sleep)

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
            if self._busy_guard.held or self._lock_cm is not None:
                raise WouldBlock
            if not try_lock(self._fd, LOCK_SEND):
                raise WouldBlock
            try:
                self._writer.reload()
                if not self._writer.put(data):
                    raise WouldBlock
            finally:
                unlock(self._fd, LOCK_SEND)
            return
        if not self._writer.put(data):
            raise WouldBlock

    async def send(self, item: bytes) -> None:
        """Send one message (copied into the ring); waits while the ring is too full.

        Raises:
            aioipc.MessageTooLargeError: larger than :attr:`max_message_size` (which
                the error names with the ring's capacity). Nothing was sent.
            anyio.BrokenResourceError: the receiver closed or died (SIGKILL too).
            anyio.ClosedResourceError: this sender was closed, also while waiting.
            anyio.BusyResourceError: another task is sending on this sender, or a
                ``reserve()`` block is open on it.
            TypeError: ``item`` is not bytes-like.

        Cancellation: a cancelled send did not send (the message is written and
        published at once, after any wait).
        """
        data = item if type(item) is bytes else message_bytes(item)
        # wait_until's fast path, inline: there is room and nothing is special (no
        # wait, view, multi-producer lock or broken receiver; the receiver not closed;
        # its 0.25 s liveness check not due). Measured: see ShmReceiver.receive (+21%
        # through wait_until for a send + receive pair that needs no wait).
        if self._pacer.due():
            # The checkpoint comes first: cancelled here, nothing was sent.
            await checkpoint()
        if (
            not self._slow
            and len(data) <= self._max_msg
            and self._hi[I_CSTATE] != STATE_CLOSED
            and time.monotonic() < self._next_peer_check
            and self._writer.put(data)
        ):
            return
        await self._send_waiting(data)

    async def _send_waiting(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        if size > self._max_msg:
            raise self._too_large(size)
        self._check_send()

        def attempt() -> bool | Again:
            return True if self._ready_to_write().put(data) else AGAIN

        with self._busy_guard:
            self._slow += 1
            try:
                async with self._send_lock():
                    await wait_until(attempt, self._wait_for_room(size), self._pacer)
            finally:
                self._slow -= 1

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
        sent = 0

        def attempt() -> bool | Again:
            nonlocal sent
            sent = self._ready_to_write().put_many(batch, sent)
            return True if sent == len(batch) else AGAIN

        def wait() -> Awaitable[Spun | None]:
            return self._wait_for_room(len(batch[sent]))()

        try:
            with self._busy_guard:
                self._slow += 1
                try:
                    async with self._send_lock():
                        await wait_until(attempt, wait, self._pacer)
                finally:
                    self._slow -= 1
        except BaseException as exc:
            if sent:
                exc.add_note(f"send_many: {sent} of {len(batch)} messages were sent")
            raise

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

    def _reserved_view(self, view: memoryview) -> memoryview:
        self._slow += 1  # until the reservation is closed
        self._reserved = True
        return view

    async def _open_reservation(self, size: int) -> memoryview:
        self._check_send()

        def attempt() -> memoryview | Again:
            return self._ready_to_write().reserve(size)

        with self._busy_guard:
            self._slow += 1
            try:
                lock_cm = self._send_lock()
                await lock_cm.__aenter__()
                self._lock_cm = lock_cm
                try:
                    view = await wait_until(attempt, self._wait_for_room(size), self._pacer)
                except BaseException:
                    await self._release_send_lock()
                    raise
            finally:
                self._slow -= 1
        return self._reserved_view(view)

    async def _release_send_lock(self) -> None:
        cm, self._lock_cm = self._lock_cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    def _close_reservation(self, view: memoryview, ok: bool) -> None:
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
            self._writer.commit()
        else:
            self._writer.abandon()
        if not released:
            raise BufferError(f"{self._what}: views made from a reserve() outlived its block")

    def _send_lock(self) -> AbstractAsyncContextManager[None]:
        """Several producers: hold the ring's send lock around a send (shm_lock)."""
        if not self._multi:
            return contextlib.nullcontext()
        return send_lock(lambda: self._fd, self._check_open)


def _reopen(cls: type[_RingEnd], name: str, spin: float) -> Any:
    return cls.open(name, spin=spin)
