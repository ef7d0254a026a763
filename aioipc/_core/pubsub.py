"""The implementation behind :mod:`aioipc.pubsub` (see there): a topic's files, its
publishers and subscribers, their locks, doorbells and waiting.

What is where: :mod:`aioipc._core.topic` owns the log's binary format (every offset,
record and slot field); :mod:`aioipc._core.shm_mutex` the publishers' robust mutex;
:mod:`aioipc._core.shm_lock` the OFD locks on the file; :mod:`aioipc._core.wait` every
wait. This module opens, maps, locks, rings and waits, and computes no offset itself.

Files: ``/dev/shm/NAME`` (the log), ``NAME.space`` (the doorbell a publisher waiting
for a ``block`` subscriber sleeps on) and ``NAME.sub-I`` (subscriber slot I's doorbell,
made by the first subscriber in that slot and kept until the topic is unlinked).

Lock bytes of the log file (OFD locks: the kernel drops them when their holder dies)::

    0       shared     every open handle (a topic nobody holds is stale)
    16 + I  exclusive  the subscriber in slot I
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal, Self

import anyio
from anyio import (
    BrokenResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.lowlevel import checkpoint

from ..abc import IPCAttribute, message_bytes
from ..errors import (
    NOFOLLOW,
    IPCError,
    IPCNotFoundError,
    IPCPermissionError,
    LaggedError,
    MessageTooLargeError,
    ProtocolError,
    translate_os_error,
)
from . import registry as _registry
from . import topic as _log
from .check import check_mode
from .doorbell import open_bell
from .posix_base import check_name
from .region import reserve
from .shm_lock import close_region, is_locked, try_lock, unlock
from .shm_mutex import Mutex
from .topic import END, LogReader, LogWriter, Overrun
from .wait import (
    AGAIN,
    Again,
    Busy,
    FdWaiter,
    Pacer,
    backoff_delays,
    busy_error,
    poll_until,
    running_asyncio_loop,
    wait_until,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_SUBSCRIBERS",
    "Policy",
    "Publisher",
    "Start",
    "Subscriber",
    "SubscriberInfo",
    "Topic",
    "is_stale",
    "unlink",
]

DEFAULT_CAPACITY = 1 << 20
DEFAULT_MAX_SUBSCRIBERS = 16
SHM_DIR = "/dev/shm"
Policy = Literal["block", "drop_oldest", "disconnect"]
Start = Literal["now", "oldest"]

_LOCK_ATTACHED = 0
_LOCK_SLOT0 = 16
_SPACE = ".space"
_SUB = ".sub-"
# How often a publisher waiting for a block subscriber asks the kernel whether that
# subscriber is still alive (its slot lock): within the 1 s the docs promise.
SLOT_CHECK_INTERVAL = 0.25
# Waiting for the publish mutex another publisher holds: the send lock's schedule.
_MUTEX_FIRST, _MUTEX_MOST = 0.0002, 0.01
_POPULATE = mmap.MAP_POPULATE


def _base(name: str) -> str:
    check_name(name, "topic", prefix_len=len(_SUB) + 4)
    return SHM_DIR + name


def _bell_paths(base: str, max_subs: int) -> list[str]:
    return [base + _SPACE] + [f"{base}{_SUB}{i}" for i in range(max_subs)]


def unlink(name: str) -> None:
    """Remove the topic ``name`` (its log and doorbells); open handles keep working.

    Raises:
        aioipc.IPCNotFoundError: there is no topic by that name.
        ValueError: a bad name.
    """
    base = _base(name)
    what = f"topic {name}"
    try:
        names = os.listdir(SHM_DIR)
    except OSError as exc:
        raise translate_os_error(exc, f"{what}: listing {SHM_DIR}") from exc
    prefix = os.path.basename(base)
    for entry in names:
        rest = entry[len(prefix) :]
        if entry.startswith(prefix) and (
            rest == _SPACE or (rest.startswith(_SUB) and rest[len(_SUB) :].isdigit())
        ):
            with contextlib.suppress(FileNotFoundError):
                try:
                    os.unlink(os.path.join(SHM_DIR, entry))
                except OSError as exc:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    raise translate_os_error(exc, f"{what}: doorbell {entry}") from exc
    try:
        os.unlink(base)
    except OSError as exc:
        raise translate_os_error(exc, what) from exc
    _registry.forget("topic", name)


def is_stale(name: str) -> bool:
    """True if no process has topic ``name`` open (so it may be removed).

    Raises:
        aioipc.IPCNotFoundError: no such topic.
        aioipc.ProtocolError: the name is something else than a topic's file.
    """
    base = _base(name)
    try:
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise translate_os_error(exc, f"topic {name}", NOFOLLOW) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProtocolError(f"topic {name}: {base} is not a topic")
        return not is_locked(fd, _LOCK_ATTACHED)
    finally:
        close_region(fd)


def _open_bell(path: str, owner: int, what: str) -> int:
    return open_bell(path, owner, what, "topic")


def _make_bell(path: str, owner: int, mode: int, what: str) -> int:
    """Open the doorbell at ``path``, making it (owned by ``owner``, with ``mode``) if
    it is not there yet."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        return _open_bell(path, owner, what)
    except OSError as exc:
        raise translate_os_error(exc, f"{what}: doorbell {path}") from exc
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise translate_os_error(exc, f"{what}: doorbell {path}", NOFOLLOW) from exc
    try:
        # Through the fd: the path may have been swapped since mkfifo.
        if os.geteuid() != owner:
            os.fchown(fd, owner, -1)  # root subscribing to another user's topic
        os.fchmod(fd, mode)
    except OSError as exc:
        os.close(fd)
        raise translate_os_error(exc, f"{what}: doorbell {path}") from exc
    os.close(fd)
    return _open_bell(path, owner, what)


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


def _ring_bell(fd: int) -> None:
    # A full pipe (EAGAIN) means the sleeper has bytes to wake on already.
    with contextlib.suppress(OSError):
        os.write(fd, b"\x01")


# A subscriber that died asleep leaves its waiting byte set for ever. Every this many
# times a publisher finds one slot asleep, it asks the kernel whether its subscriber
# lives (one fcntl), and frees the slot if not.
_CHECK_EVERY = 64


class _Bells:
    """The subscribers' doorbells one handle rings: the fds it opened, the sleep of each
    slot it rang last (a subscriber is rung once a sleep, however many commits come
    while it wakes up), and how often it found each slot asleep since it last checked
    that its subscriber is alive."""

    __slots__ = ("_fds", "_file", "_rung", "_seen")

    def __init__(self, file: _File) -> None:
        self._file = file
        self._fds: dict[int, int] = {}
        self._rung: dict[int, int] = {}
        self._seen: dict[int, int] = {}

    def ring(self, view: _log._View, slots: list[int]) -> None:
        """Ring ``slots`` (after a commit and a full fence: the sleepers then)."""
        file = self._file
        for i in slots:
            n = self._seen.get(i, 0) + 1
            if n >= _CHECK_EVERY:
                n = 0
                if not file.slot_alive(i) and file.reap(view, i):
                    self._seen[i] = 0
                    continue
            self._seen[i] = n
            sleep = view.sleep_id(i)
            if self._rung.get(i) == sleep:
                continue  # rung already for this sleep: it is waking up
            fd = self._fds.get(i)
            if fd is None:
                try:
                    fd = _open_bell(f"{file.base}{_SUB}{i}", file.owner, file.what)
                except Exception:
                    # A subscriber's broken doorbell must not stop publishing.
                    continue
                self._fds[i] = fd
            _ring_bell(fd)
            self._rung[i] = sleep

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _File:
    """One open of a topic: the log file, its mapping, the space doorbell, the mutex."""

    def __init__(
        self,
        name: str,
        *,
        create: bool,
        capacity: int | None,
        max_subscribers: int | None,
        mode: int,
    ) -> None:
        self.fd = -1
        self.space = -1
        self.mm: mmap.mmap | None = None
        self.mutex: Mutex | None = None
        self.name = name
        self.what = what = f"topic {name}"
        base = self.base = _base(name)
        made: list[str] = []
        try:
            if create:
                cap = _log.check_capacity(DEFAULT_CAPACITY if capacity is None else capacity, what)
                subs = _log.check_max_subscribers(
                    DEFAULT_MAX_SUBSCRIBERS if max_subscribers is None else max_subscribers, what
                )
                check_mode(mode, what)
                self._make(base, cap, subs, mode, made)
            else:
                self._attach(base, capacity, max_subscribers)
        except BaseException as exc:
            self.close()
            for path in made:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if isinstance(exc, OSError) and not isinstance(exc, IPCError):
                raise translate_os_error(exc, what) from exc
            raise
        if create:
            _registry.record("topic", name, st=os.fstat(self.fd))

    def _make(self, base: str, cap: int, subs: int, mode: int, made: list[str]) -> None:
        try:
            self.fd = os.open(
                base, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            made.append(base)
            try_lock(self.fd, _LOCK_ATTACHED, exclusive=False)
            os.fchmod(self.fd, mode)
            reserve(self.fd, _log.region_size(cap, subs), self.what, base)
            os.mkfifo(base + _SPACE, 0o600)
            made.append(base + _SPACE)
            self.space = os.open(
                base + _SPACE, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            )
            os.fchmod(self.space, mode)
        except OSError as exc:
            raise translate_os_error(exc, self.what) from exc
        self.owner = os.geteuid()
        self.mode = mode
        self._map(_log.region_size(cap, subs), cap, subs)
        hq, hi = self.hq, self.hi
        _log.init_header(hq, hi, cap, subs)
        assert self.mutex is not None
        self.mutex.initialise()
        _log.set_magic(hq)

    def _attach(self, base: str, capacity: int | None, max_subs: int | None) -> None:
        what = self.what
        try:
            self.fd = os.open(base, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            st = os.fstat(self.fd)
        except OSError as exc:
            raise translate_os_error(exc, what, NOFOLLOW) from exc
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            raise IPCNotFoundError(errno.ENOENT, f"{what}: still being created", base)
        smallest = _log.region_size(_log.MIN_CAPACITY, 1)
        if not stat.S_ISREG(st.st_mode) or st.st_size < smallest:
            raise ProtocolError(f"{what}: {base} is not a topic ({st.st_size} bytes)")
        hq, hi = _log.header_views(bytearray(os.pread(self.fd, _log.HEADER_SIZE, 0)))
        with hq, hi:
            if not _log.has_magic(hq):
                raise IPCNotFoundError(
                    errno.ENOENT, f"{what}: still being created (no magic yet)", base
                )
            cap, subs = _log.check_header(hq, hi, st.st_size, what)
        if capacity is not None and capacity != cap:
            raise ValueError(f"{what} has a capacity of {cap} bytes, not {capacity}")
        if max_subs is not None and max_subs != subs:
            raise ValueError(f"{what} has {subs} subscriber slots, not max_subscribers={max_subs}")
        self.owner = st.st_uid
        self.mode = stat.S_IMODE(st.st_mode)
        self._map(st.st_size, cap, subs)
        _log.check_header(self.hq, self.hi, st.st_size, what)
        try:
            try_lock(self.fd, _LOCK_ATTACHED, exclusive=False)
        except OSError as exc:
            raise translate_os_error(exc, what) from exc
        self.space = _open_bell(base + _SPACE, st.st_uid, what)

    def _map(self, size: int, cap: int, subs: int) -> None:
        try:
            self.mm = mmap.mmap(
                self.fd, size, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise translate_os_error(exc, f"{self.what}: mapping {size} bytes") from exc
        self.capacity = cap
        self.max_subs = subs
        self.hq, self.hi = _log.header_views(self.mm)
        self.mutex = Mutex(self.mm, _log.MUTEX_OFF, self.what)

    def close(self, views: Iterable[memoryview] = ()) -> None:
        """Release everything. A mapping that views made by the user still export
        (a slice of a receive_view or reserve view kept past its block) is left to the
        garbage collector, which unmaps it when the last one goes; the fds and the
        locks go now all the same."""
        for v in views:
            with contextlib.suppress(BufferError):
                v.release()
        if self.mm is not None:
            self.hq.release()
            self.hi.release()
            if self.mutex is not None:
                self.mutex.release()
                self.mutex = None
            with contextlib.suppress(BufferError):
                self.mm.close()
            self.mm = None
        if self.space >= 0:
            os.close(self.space)
            self.space = -1
        if self.fd >= 0:
            close_region(self.fd)
            self.fd = -1

    async def lock(self, check_open: Callable[[], None]) -> None:
        """Take the publish mutex, polling while another publisher holds it.

        Cancellation: at any poll; the mutex is then not held."""
        mutex = self.mutex
        assert mutex is not None
        if mutex.try_lock():
            return

        def attempt() -> bool | Again:
            check_open()
            assert self.mutex is not None
            return True if self.mutex.try_lock() else AGAIN

        await poll_until(attempt, first=_MUTEX_FIRST, most=_MUTEX_MOST)

    def slot_alive(self, slot: int) -> bool:
        return is_locked(self.fd, _LOCK_SLOT0 + slot)

    def reap(self, view: _log._View, slot: int) -> bool:
        """Free slot ``slot`` if its subscriber is dead (its lock is free); True if so."""
        if not try_lock(self.fd, _LOCK_SLOT0 + slot):
            return False
        try:
            view.free_slot(slot)
        finally:
            unlock(self.fd, _LOCK_SLOT0 + slot)
        return True


def _check_policy(policy: object) -> int:
    if policy not in _log.POLICIES:
        raise ValueError(
            f"policy must be one of {', '.join(map(repr, _log.POLICIES))}, not {policy!r}"
        )
    return _log.POLICIES[policy]


def _check_start(start: object) -> bool:
    if start not in ("now", "oldest"):
        raise ValueError(f"start must be 'now' or 'oldest', not {start!r}")
    return start == "oldest"


class SubscriberInfo:
    """One subscriber slot as :meth:`Topic.subscribers` sees it."""

    __slots__ = ("alive", "lag_bytes", "lag_messages", "pid", "policy", "slot")

    def __init__(
        self, slot: int, pid: int, policy: str, alive: bool, lag_messages: int, lag_bytes: int
    ) -> None:
        #: The slot's index.
        self.slot = slot
        #: The pid the subscriber wrote (for display: liveness is ``alive``).
        self.pid = pid
        #: ``"block"``, ``"drop_oldest"`` or ``"disconnect"``.
        self.policy = policy
        #: Whether the kernel says a process holds the slot's lock.
        self.alive = alive
        #: Messages published that it has not read yet.
        self.lag_messages = lag_messages
        #: Bytes of the log between its cursor and the head.
        self.lag_bytes = lag_bytes

    def __repr__(self) -> str:
        return (
            f"SubscriberInfo(slot={self.slot}, pid={self.pid}, policy={self.policy!r}, "
            f"alive={self.alive}, lag_messages={self.lag_messages}, lag_bytes={self.lag_bytes})"
        )


class Topic:
    """A handle on a named pub/sub topic: make publishers and subscribers, inspect it,
    unlink it. Closing it closes only this handle, never its publishers or subscribers.
    """

    def __init__(self, file: _File, unlink_on_close: bool) -> None:
        self._file = file
        self._view = _log._View(file.mm, file.capacity, file.max_subs, file.what)  # type: ignore[arg-type]
        self._unlink_on_close = unlink_on_close
        self._closed = False

    @classmethod
    def create(
        cls,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        mode: int = 0o600,
        unlink_on_close: bool = False,
    ) -> Topic:
        """Create the topic ``name`` (``capacity`` bytes of log, ``max_subscribers``
        slots, files with exactly ``mode``). Never waits.

        ``unlink_on_close=True`` removes the topic when this handle closes.

        Raises:
            aioipc.IPCExistsError: a topic (or any /dev/shm entry) by that name exists.
            aioipc.IPCSystemError: /dev/shm has no room (ENOSPC), or no fd is free.
            ValueError: a bad name, capacity (a multiple of 16, >= 256), slot count
                (1..1024) or mode.
        """
        file = _File(
            name, create=True, capacity=capacity, max_subscribers=max_subscribers, mode=mode
        )
        return cls(file, unlink_on_close)

    @classmethod
    def open(
        cls, name: str, *, capacity: int | None = None, max_subscribers: int | None = None
    ) -> Topic:
        """Open the existing topic ``name``. With ``capacity`` or ``max_subscribers``,
        also check that the topic has them. Never waits.

        Raises:
            aioipc.IPCNotFoundError: no such topic (or it is still being created).
            aioipc.IPCPermissionError: its mode does not let us in.
            aioipc.ProtocolError: the file is not a valid topic.
            ValueError: the topic's capacity or slot count is not the one given.
        """
        file = _File(name, create=False, capacity=capacity, max_subscribers=max_subscribers, mode=0)
        return cls(file, False)

    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int | None = None,
        *,
        max_subscribers: int | None = None,
        mode: int = 0o600,
    ) -> Topic:
        """Open the topic ``name``, or create it (with the defaults for what is not
        given) if it does not exist. Given values are checked against an existing topic.

        Raises: as :meth:`create` and :meth:`open`. Waits (at most about a second,
        blocking) only while another process is in the middle of creating it.
        """
        waited = 0.0
        for delay in backoff_delays(0.0005, 0.05):
            try:
                return cls.create(
                    name,
                    DEFAULT_CAPACITY if capacity is None else capacity,
                    max_subscribers=(
                        DEFAULT_MAX_SUBSCRIBERS if max_subscribers is None else max_subscribers
                    ),
                    mode=mode,
                )
            except FileExistsError:
                pass
            try:
                return cls.open(name, capacity=capacity, max_subscribers=max_subscribers)
            except IPCNotFoundError:
                if waited > 1.0:
                    raise
            waited += delay
            time.sleep(delay)
        raise AssertionError("backoff_delays never ends")

    # -- what it is -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._file.name

    @property
    def capacity(self) -> int:
        """Bytes of log: what a ``drop_oldest`` subscriber may fall behind."""
        return self._file.capacity

    @property
    def max_subscribers(self) -> int:
        return self._file.max_subs

    @property
    def max_message_size(self) -> int:
        """The largest message: ``capacity // 2 - 16``."""
        return _log.max_message_size(self._file.capacity)

    def subscribers(self) -> list[SubscriberInfo]:
        """Every occupied slot: pid, policy, whether alive, how far behind. Reads the
        shared header without locking (values may be a moment old).

        Raises:
            anyio.ClosedResourceError: this handle is closed.
        """
        self._check_open()
        head, seq = self._view.counters()
        out = []
        for i in range(self._file.max_subs):
            state, policy, cursor, cseq, pid = self._view.slot_state(i)
            alive = self._file.slot_alive(i)
            if state != _log.ACTIVE and not alive:
                continue
            out.append(
                SubscriberInfo(
                    i,
                    pid,
                    _log.POLICY_NAMES.get(policy, f"unknown ({policy})"),
                    alive,
                    max(0, seq - cseq),
                    max(0, head - cursor),
                )
            )
        return out

    def counts(self) -> tuple[int, int, int]:
        """``(messages published, head, tail)`` as the header says now."""
        self._check_open()
        head, seq = self._view.counters()
        return seq, head, self._view.retained_from()

    # -- making ends ----------------------------------------------------------------------

    def publisher(self) -> Publisher:
        """A new publisher on this topic (its own handle: close it on its own).

        Raises: as :meth:`open`; ClosedResourceError if this handle is closed.
        """
        self._check_open()
        return Publisher(
            _File(self.name, create=False, capacity=None, max_subscribers=None, mode=0)
        )

    async def subscribe(self, policy: Policy = "drop_oldest", start: Start = "now") -> Subscriber:
        """A new subscriber on this topic (its own handle); see :func:`subscribe`."""
        self._check_open()
        return await Subscriber._open(self.name, policy, start)

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._file.what}: this handle is closed")

    def unlink(self) -> None:
        """Remove the topic's files (see :func:`aioipc.pubsub.unlink`)."""
        unlink(self.name)

    def close(self) -> None:
        """Close this handle (and unlink the topic if it was made ``unlink_on_close``)."""
        if self._closed:
            return
        self._closed = True
        self._file.close(self._view.views())
        if self._unlink_on_close:
            with contextlib.suppress(IPCNotFoundError):
                unlink(self.name)

    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        return f"<Topic {self.name} capacity={self.capacity}{' closed' if self._closed else ''}>"


class Publisher(ObjectSendStream[bytes]):
    """Publishes to a topic: every subscriber sees every publisher's messages in one
    order. Open with :meth:`Topic.publisher`, :func:`aioipc.pubsub.publisher` or
    ``aioipc.connect("pubsub://NAME")``.
    """

    def __init__(self, file: _File) -> None:
        self._file = file
        self._what = file.what
        assert file.mm is not None
        self._w = LogWriter(file.mm, file.capacity, file.max_subs, file.what)
        self._max_msg = _log.max_message_size(file.capacity)
        self._bells = _Bells(file)
        assert file.mutex is not None
        self._ring_pending = False
        self._ring_loop: asyncio.AbstractEventLoop | None = None
        self._holding = False
        self._try_lock = file.mutex.try_lock
        self._unlock_mutex = file.mutex.unlock
        self._space_waiter = FdWaiter(file.space)
        self._busy = Busy(
            "publishing to", f"{self._what}: another task is publishing on this publisher"
        )
        self._pacer = Pacer()
        self._closed = False
        self._reserving = False

    @property
    def name(self) -> str:
        return self._file.name

    @property
    def max_message_size(self) -> int:
        """The largest message: ``capacity // 2 - 16``."""
        return self._max_msg

    @property
    def extra_attributes(self) -> dict[Any, Any]:
        return {
            IPCAttribute.path: lambda: self._file.base,
            IPCAttribute.mechanism: lambda: "topic",
            IPCAttribute.framed: lambda: True,
            IPCAttribute.max_message_size: lambda: self._max_msg,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this publisher is closed")

    def _too_large(self, size: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            size,
            self._max_msg,
            f"the largest message of {self._what} (capacity {self._file.capacity} // 2 - 16)",
        )

    def _ring_sleepers(self) -> None:
        """After a commit and a full fence (the unlock is one): wake the subscribers
        that said they may sleep.

        Under asyncio (and uvloop) the doorbells are rung at the event loop's next turn,
        not at once: a burst of sends within one turn (a send loop checkpoints every
        16th send) then rings each sleeper once, and a subscriber wakes to a batch
        instead of once a message. Measured with one publisher and four subscriber
        processes on two cores: sleeping and waking once a message held fan-out to
        about 31,000 messages/s per subscriber. Nothing is lost by waiting: a
        subscriber still flagged then is rung then; one that flags itself later sees
        the commit when it looks again (the wake-up protocol). With no loop (a thread),
        or under trio, they are rung at once.
        """
        if self._ring_pending:
            pending_on = self._ring_loop
            if pending_on is not None and not pending_on.is_closed():
                return
            self._ring_pending = False  # that loop closed before its next turn
        if not self._w.any_sleeper():
            return
        loop = running_asyncio_loop()
        if loop is None:
            self._flush_rings()
            return
        self._ring_pending = True
        self._ring_loop = loop
        loop.call_soon(self._flush_rings)

    def _flush_rings(self) -> None:
        self._ring_pending = False
        if not self._closed:
            self._bells.ring(self._w, self._w.sleepers())

    async def _lock(self) -> None:
        """Take the publish mutex (see _File.lock); ``_holding`` says we have it."""
        self._check_open()  # a close() while the caller checkpointed
        await self._file.lock(self._check_open)
        self._holding = True

    def _load(self) -> None:
        """With the mutex held: read the committed state (LogWriter.load). If that
        finished a commit a dead publisher left half done, ring the sleepers now: that
        publisher never did, and what follows may wait for one of them."""
        w = self._w
        if w.load():
            w.fence()
            self._bells.ring(w, w.sleepers())

    def _unlock(self) -> None:
        self._unlock_mutex()
        self._holding = False
        if self._closed:
            self._teardown()  # close() came while we held it, and left this to us

    def send_nowait(self, item: bytes) -> None:
        """Publish ``item`` if it fits now without waiting for anyone.

        Raises:
            anyio.WouldBlock: another publisher holds the topic's publish mutex, or a
                ``block`` subscriber holds back the room this message needs.
            aioipc.MessageTooLargeError: larger than ``max_message_size``.
            anyio.ClosedResourceError: this publisher is closed.
            anyio.BusyResourceError: another task is publishing on it.
            aioipc.ProtocolError: the topic is corrupt.
        """
        self._check_open()
        data = message_bytes(item)
        if len(data) > self._max_msg:
            raise self._too_large(len(data))
        with self._busy:
            if not self._try_lock():
                raise WouldBlock
            w = self._w
            try:
                self._load()
                blocker = w.put(data)
                if blocker < 0:
                    # Is the one holding us back dead? (send() asks every 0.25 s while
                    # it waits; a caller of send_nowait only asks again.)
                    slot = -1 - blocker
                    if not self._file.slot_alive(slot) and self._file.reap(w, slot):
                        w.forget_floor()
                    raise WouldBlock
                w.commit()
            finally:
                self._unlock()
            self._ring_sleepers()

    async def send(self, item: bytes) -> None:
        """Publish ``item``: every subscriber (present now) will see it after every
        message published before it.

        Waits for the publish mutex while another publisher holds it, and, while a
        ``block`` subscriber has not read far enough to make room, until it has (or is
        found dead: within 1 s, its slot is then freed). Never waits for
        ``drop_oldest`` or ``disconnect`` subscribers.

        Raises:
            aioipc.MessageTooLargeError: larger than ``max_message_size``.
            anyio.ClosedResourceError: this publisher is closed (also while waiting).
            anyio.BusyResourceError: another task is publishing on this publisher.
            aioipc.ProtocolError: the topic is corrupt.

        Cancellation: a cancelled send published nothing.
        """
        # The common case inline (a free mutex, room, no other task here): measured,
        # going through _publish cost 5.64 us a 64-byte send, this 2.6 us (in-process
        # loop of 100,000 sends).
        if self._pacer.due():
            await checkpoint()  # first: cancelled here, nothing was published
        data = item if type(item) is bytes else message_bytes(item)
        if not self._busy.held and not self._closed and len(data) <= self._max_msg:
            w = self._w
            if self._try_lock():
                try:
                    self._load()
                    off = w.put(data)
                    if off >= 0:
                        w.commit()
                finally:
                    self._unlock()
                if off >= 0:
                    if self._ring_pending or w.any_sleeper():
                        self._ring_sleepers()
                    return
        self._check_open()
        if len(data) > self._max_msg:
            raise self._too_large(len(data))
        with self._busy:
            await self._publish([data], 0)

    async def send_many(self, items: Iterable[bytes]) -> None:
        """Publish several messages in order, holding the publish mutex and committing
        once per batch that fits (one wake-up per sleeping subscriber, not one per
        message). Other publishers' messages come before or after the batch, or between
        its parts when it had to wait for room.

        Raises: as :meth:`send` (checked for every item before anything is published).

        Cancellation: the messages published before the cancel stay published (each
        commit is all or nothing); the rest are not. ``anyio.get_cancelled_exc_class()``
        propagates; how many went is not reported, so use send() when that matters.
        """
        self._check_open()
        batch = [d if type(d) is bytes else message_bytes(d) for d in items]
        largest = max(map(len, batch), default=0)
        if largest > self._max_msg:
            raise self._too_large(largest)
        if not batch:
            await checkpoint()
            return
        with self._busy:
            if self._pacer.due():
                await checkpoint()
            await self._publish(batch, 0)

    async def _publish(self, batch: list[bytes], kind_eof: int) -> None:
        """Hold the mutex, write ``batch`` (or an end-of-stream record), commit."""
        await self._lock()
        w = self._w
        try:
            self._load()
            if kind_eof and w.mark_end() < 0:
                await self._wait_for_room(0)
                if w.mark_end() < 0:  # it fits now: only our own wait ran meanwhile
                    raise w.corrupt("no room for an end of stream after waiting for it")
            i, n = 0, len(batch)
            while i < n:
                i = w.put_many(batch, i)
                if i < n:
                    if w.put(batch[i]) >= 0:  # a pad first, or no room
                        i += 1
                        continue
                    # Room is held back by a block subscriber: publish what is
                    # written, then wait for it.
                    w.commit()
                    w.fence()  # the commit before the waiting bytes, as the unlock does
                    self._ring_sleepers()
                    await self._wait_for_room(len(batch[i]))
            w.commit()
        finally:
            self._unlock()
        if not self._closed:
            self._ring_sleepers()

    async def _wait_for_room(self, length: int) -> None:
        """With the mutex held: sleep until the ``block`` subscribers make room for a
        ``length``-byte record, freeing the slot of one found dead meanwhile."""
        w = self._w
        file = self._file

        def attempt() -> bool | Again:
            self._check_open()
            return True if w.blocker(length) < 0 else AGAIN

        async def wait() -> None:
            with anyio.move_on_after(SLOT_CHECK_INTERVAL):
                try:
                    await self._space_waiter.readable()
                except ClosedResourceError:
                    self._check_open()  # the error that names this publisher
                    raise
            _drain(file.space)
            self._check_open()
            # Every SLOT_CHECK_INTERVAL at least: is the one holding us back alive?
            blocker = w.blocker(length)
            if blocker >= 0 and not file.slot_alive(blocker) and file.reap(w, blocker):
                w.forget_floor()
            w.fence()  # the wake-up protocol: flag set, fence, look again

        # The flag stays set for the whole wait: only the mutex's holder sets it.
        w.set_publisher_waiting(True)
        try:
            w.fence()
            await wait_until(attempt, wait, self._pacer, paced=False)
        finally:
            w.set_publisher_waiting(False)

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[memoryview]:
        """``async with publisher.reserve(n) as view:`` fill ``view`` (``n`` writable
        bytes in the log) and it is published when the block exits normally; an
        exception publishes nothing. Holds the publish mutex for the block: keep it
        short, other publishers wait meanwhile. Room for it is made when the block is
        entered: a ``drop_oldest`` subscriber may have lost the oldest messages to it
        even if the block then publishes nothing (its lag count stays exact).

        Raises: as :meth:`send`; ClosedResourceError at exit if the publisher was
        closed inside the block, and BufferError if views made from ``view`` outlived
        the block (in both cases nothing is published).

        Cancellation: while waiting for room or the mutex, nothing was reserved.
        """
        self._check_open()
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{self._what}: reserve size must be an int >= 0, not {size!r}")
        if size > self._max_msg:
            raise self._too_large(size)
        file = self._file
        w = self._w
        with self._busy:
            await self._lock()
            committed = False
            try:
                self._load()
                head, seq = w.head, w.seq
                off = w.claim(size)
                if off < 0:
                    await self._wait_for_room(size)
                    off = w.claim(size)  # it fits now: only our own wait ran meanwhile
                    if off < 0:
                        raise w.corrupt(f"no room for {size} bytes after waiting for it")
                mm = file.mm
                assert mm is not None
                start = w.data_off + off
                whole = memoryview(mm)
                view = whole[start : start + size]
                try:
                    yield view
                except BaseException:
                    w.head, w.seq = head, seq
                    raise
                finally:
                    try:
                        view.release()
                        whole.release()
                        kept = False
                    except BufferError:
                        kept = True
                if self._closed or kept:
                    w.head, w.seq = head, seq
                    if self._closed:
                        self._check_open()
                    raise BufferError(
                        f"{self._what}: views made from a reserve() view outlived its "
                        "block; nothing was published"
                    )
                w.commit()
                committed = True
            finally:
                self._unlock()
            if committed:
                self._ring_sleepers()

    async def send_eof(self) -> None:
        """Publish an end-of-stream marker: each subscriber that reads up to it gets
        ``EndOfStream`` from then on (a topic has no end otherwise: publishers that
        close or die end nothing). The topic stays usable: subscribers that start
        after it, at ``"now"``, never see it.

        Raises: as :meth:`send`. Cancellation: nothing was published.
        """
        self._check_open()
        with self._busy:
            await self._publish([], 1)

    async def aclose(self, *, eof: bool = False) -> None:
        """Close this publisher (never the topic: subscribers go on waiting for other
        publishers). ``eof=True`` first publishes an end of stream (:meth:`send_eof`).

        Does not wait, unless ``eof=True``: then it waits as :meth:`send` does, and
        closes all the same if that fails or is cancelled (the end then was not
        published)."""
        try:
            if eof and not self._closed:
                await self.send_eof()
        finally:
            self.close()
        await checkpoint()

    def close(self) -> None:
        if self._closed:
            return
        if self._ring_pending:
            self._flush_rings()  # before the doorbells close
        self._closed = True
        self._space_waiter.close()  # a task waiting for room gets ClosedResourceError
        if not self._holding:
            self._teardown()
        # Else a task of ours holds the publish mutex (waiting for room, or in a reserve
        # block): unmapping it now would leave a locked robust mutex on this thread's
        # robust list pointing at nothing (the C library then crashes). That task
        # unlocks as it leaves, and tears down then (_unlock).

    def _teardown(self) -> None:
        if self._file.fd < 0:
            return
        self._bells.close()
        self._file.close(self._w.views())

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        return f"<Publisher {self.name}{' closed' if self._closed else ''}>"


class Subscriber(ObjectReceiveStream[bytes]):
    """Receives a topic's messages from its own cursor, under its policy for falling
    behind. Open with :func:`aioipc.pubsub.subscribe`, :meth:`Topic.subscribe` or
    ``aioipc.listen("pubsub://NAME")``.
    """

    def __init__(self, file: _File, slot: int, policy: int, bell: int) -> None:
        self._file = file
        self._what = f"{file.what}: subscriber {slot}"
        self._slot = slot
        self._policy = policy
        self._bell = bell
        assert file.mm is not None
        self._r = LogReader(
            file.mm, file.capacity, file.max_subs, self._what, slot, self._wake_publisher
        )
        self._waiter = FdWaiter(bell)
        self._busy = Busy("receiving from", f"{self._what}: another task is receiving")
        self._pacer = Pacer()
        self._closed = False
        self._ended = False
        self._broken: str | None = None
        self._view_open = False

    @classmethod
    async def _open(cls, name: str, policy: object, start: object) -> Subscriber:
        code = _check_policy(policy)
        oldest = _check_start(start)
        file = _File(name, create=False, capacity=None, max_subscribers=None, mode=0)
        slot, bell = -1, -1
        try:
            uid = os.geteuid()
            if uid not in (file.owner, 0):
                # Its doorbell would be ours, which the owner's publishers refuse to
                # ring (they check the owner), and left in place it would spoil the
                # slot for everyone after us.
                raise IPCPermissionError(
                    errno.EPERM,
                    f"{file.what}: only its owner (uid {file.owner}) can subscribe, not "
                    f"uid {uid}: subscribers' doorbells must belong to the topic's owner",
                )
            for i in range(file.max_subs):
                if try_lock(file.fd, _LOCK_SLOT0 + i):
                    slot = i
                    break
            else:
                raise busy_error(
                    f"{file.what} has max_subscribers={file.max_subs} subscribers already"
                )
            view = _log._View(file.mm, file.capacity, file.max_subs, file.what)  # type: ignore[arg-type]
            try:
                # A dead predecessor in this slot may hold blocked publishers back:
                # free it first, so that they move on while we wait for the mutex.
                view.free_slot(slot)
                view.fence()
                if view.publisher_waiting():
                    _ring_bell(file.space)
            finally:
                view.release()
            bell = _make_bell(f"{file.base}{_SUB}{slot}", file.owner, file.mode, file.what)
            _drain(bell)  # what was rung for a predecessor in this slot
            w = LogWriter(file.mm, file.capacity, file.max_subs, file.what)  # type: ignore[arg-type]
            try:
                await file.lock(lambda: None)
                try:
                    finished = w.register(slot, code, oldest, os.getpid())
                finally:
                    assert file.mutex is not None
                    file.mutex.unlock()
                if finished:
                    # We completed a dead publisher's commit: wake who it never woke.
                    bells = _Bells(file)
                    try:
                        bells.ring(w, w.sleepers())
                    finally:
                        bells.close()
            finally:
                w.release()
        except BaseException:
            if bell >= 0:
                os.close(bell)
            file.close()  # also drops the slot's lock
            raise
        return cls(file, slot, code, bell)

    @property
    def name(self) -> str:
        return self._file.name

    @property
    def policy(self) -> Policy:
        return _log.POLICY_NAMES[self._policy]  # type: ignore[return-value]

    @property
    def slot(self) -> int:
        return self._slot

    @property
    def extra_attributes(self) -> dict[Any, Any]:
        return {
            IPCAttribute.path: lambda: self._file.base,
            IPCAttribute.mechanism: lambda: "topic",
            IPCAttribute.framed: lambda: True,
            IPCAttribute.max_message_size: lambda: _log.max_message_size(self._file.capacity),
            IPCAttribute.fd: lambda: self._bell,
        }

    def _wake_publisher(self) -> None:
        _ring_bell(self._file.space)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this subscriber is closed")
        if self._broken is not None:
            raise BrokenResourceError(self._broken)
        if self._ended:
            raise EndOfStream

    def _fell_behind(self, o: Overrun) -> LaggedError | BrokenResourceError | EndOfStream:
        if o.missed == 0:
            # Only an end of stream was dropped (and pads): no message was missed.
            self._ended = True
            return EndOfStream()
        if self._policy == _log.DROP_OLDEST:
            if o.ended:
                self._ended = True
            return LaggedError(
                o.missed,
                f"{self._what} fell {o.behind} bytes behind (more than the capacity "
                f"{self._file.capacity}) and missed {o.missed} messages; the next receive "
                "continues from the oldest message retained",
            )
        self._broken = (
            f"{self._what} ({self.policy}) was cut off: it fell {o.behind} bytes and "
            f"{o.missed} messages behind, more than the capacity {self._file.capacity}"
        )
        self._release_slot()
        return BrokenResourceError(self._broken)

    def _attempt(self) -> bytes | Again:
        self._check_open()
        if self._view_open:
            raise busy_error(f"{self._what}: a receive_view block is open")
        try:
            msg = self._r.take()
        except Overrun as o:
            raise self._fell_behind(o) from None
        if msg is END:
            self._ended = True
            raise EndOfStream
        return msg  # type: ignore[return-value]

    def _wait(self) -> Awaitable[None]:
        return self._sleep()

    async def _sleep(self) -> None:
        r = self._r
        r.set_waiting(True)
        try:
            r.fence()
            if r.has_data():
                return
            try:
                await self._waiter.readable()
            except ClosedResourceError:
                self._check_open()  # the error that names this subscriber
                raise
            _drain(self._bell)
        finally:
            if not self._closed:  # close() released the views (nobody waits now)
                r.set_waiting(False)

    def receive_nowait(self) -> bytes:
        """The next message if one is there.

        Raises:
            anyio.WouldBlock: nothing new yet.
            aioipc.LaggedError: (``drop_oldest``) it fell more than the capacity behind;
                ``missed`` says how many messages it lost; the next receive continues
                from the oldest message retained.
            anyio.BrokenResourceError: (``disconnect``) it fell more than the capacity
                behind and is cut off; every later receive raises it too.
            anyio.EndOfStream: a publisher published an end of stream and it was read.
            anyio.ClosedResourceError: this subscriber is closed.
            anyio.BusyResourceError: another task is receiving, or a receive_view block
                is open.
            aioipc.ProtocolError: the topic is corrupt.
        """
        with self._busy:
            msg = self._attempt()
        if msg is AGAIN:
            raise WouldBlock
        return msg

    async def receive(self) -> bytes:
        """Receive the next message (a copy), waiting for one if needed. An idle
        subscriber sleeps on its doorbell and costs no CPU.

        Raises: as :meth:`receive_nowait` (but waits instead of WouldBlock).

        Cancellation: a cancelled receive consumed nothing.
        """
        # The common case inline (a message there, nobody else receiving): measured,
        # the guard and wait_until cost 2.79 us a 64-byte receive, this 1.5 us.
        if self._pacer.due():
            await checkpoint()  # first: cancelled here, nothing was taken
        if not (self._busy.held or self._closed or self._ended or self._broken):
            try:
                msg = self._r.take()
            except Overrun as o:
                raise self._fell_behind(o) from None
            if type(msg) is bytes:
                return msg
            if msg is END:
                self._ended = True
        with self._busy:
            return await wait_until(self._attempt, self._wait, self._pacer, paced=False)

    async def receive_many(self, max_count: int = 1024) -> list[bytes]:
        """Wait for at least one message, then take up to ``max_count`` that are there,
        publishing the cursor once.

        Raises: as :meth:`receive` (a lag, an end or a cut met after the first message
        is raised by the next call). Cancellation: nothing consumed.
        """
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, not {max_count!r}")
        out: list[bytes] = []
        with self._busy:

            def attempt() -> list[bytes] | Again:
                self._check_open()
                try:
                    got = self._r.take_many(out, max_count)
                except Overrun as o:
                    raise self._fell_behind(o) from None
                if got is END:
                    self._ended = True
                    raise EndOfStream
                return AGAIN if got is AGAIN else out

            return await wait_until(attempt, self._wait, self._pacer)

    @asynccontextmanager
    async def receive_view(self) -> AsyncIterator[memoryview]:
        """``async with sub.receive_view() as view:`` the next message in place, no copy.

        Only for ``block`` subscribers: publishers cannot write over the message until
        the block exits (a ``drop_oldest`` subscriber's message could change under it).

        Raises: as :meth:`receive`; TypeError for other policies.

        Cancellation: cancelled while waiting, nothing was consumed.
        """
        if self._policy != _log.BLOCK:
            raise TypeError(
                f"{self._what}: receive_view needs policy='block' (this one is "
                f"{self.policy!r}: publishers could write over the message while you read it)"
            )
        with self._busy:

            def attempt() -> memoryview | Again:
                self._check_open()
                try:
                    got = self._r.view()
                except Overrun as o:
                    raise self._fell_behind(o) from None
                if got is END:
                    self._ended = True
                    raise EndOfStream
                return got  # type: ignore[return-value]

            view = await wait_until(attempt, self._wait, self._pacer)
            self._view_open = True
            released = True
            try:
                yield view
            finally:
                self._view_open = False
                try:
                    view.release()
                except BufferError:
                    released = False
                if not self._closed:
                    self._r.release_view()
                elif self._bell >= 0:
                    self._teardown()  # close() came inside the block and left it to us
            if not released:
                raise BufferError(
                    f"{self._what}: views made from a receive_view outlived its block; "
                    "the message was consumed and publishers may now write over it"
                )

    def _release_slot(self) -> None:
        file = self._file
        if file.fd < 0 or self._slot < 0:
            return
        r = self._r
        r.free_slot(self._slot)
        r.fence()
        if r.publisher_waiting():
            _ring_bell(file.space)
        unlock(file.fd, _LOCK_SLOT0 + self._slot)

    async def aclose(self) -> None:
        """Leave the topic: the slot is freed, and publishers stop waiting for this
        subscriber. Does not wait."""
        self.close()
        await checkpoint()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._waiter.close()  # a task waiting in receive gets ClosedResourceError
        if not self._view_open:
            self._teardown()
        # Else a receive_view block holds a view into the mapping (and publishers must
        # not write over it): it leaves the slot and tears down as it exits.

    def _teardown(self) -> None:
        if self._broken is None:
            self._release_slot()
        os.close(self._bell)
        self._bell = -1
        self._file.close(self._r.views())

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        return f"<Subscriber {self.name} slot {self._slot} {self.policy}>"


def publisher(name: str) -> Publisher:
    """Open a publisher on the existing topic ``name``. Never waits.

    Raises: as :meth:`Topic.open`.
    """
    return Publisher(_File(name, create=False, capacity=None, max_subscribers=None, mode=0))


async def subscribe(name: str, policy: Policy = "drop_oldest", start: Start = "now") -> Subscriber:
    """Subscribe to the existing topic ``name``.

    ``policy`` says what happens when this subscriber falls more than the topic's
    capacity behind: ``"drop_oldest"`` (default: publishers never wait for it; its
    next receive raises :exc:`aioipc.LaggedError` with the count it missed), ``"block"``
    (publishers wait for it: nothing is lost) or ``"disconnect"`` (it is cut off: its
    next receive raises BrokenResourceError). ``start="now"`` (default) receives what
    is published from now on; ``"oldest"`` first replays what the topic retains.

    Raises:
        anyio.BusyResourceError: the topic has ``max_subscribers`` subscribers already.
        aioipc.IPCNotFoundError, aioipc.IPCPermissionError, aioipc.ProtocolError: as
            :meth:`Topic.open`.
        ValueError: a bad policy or start.

    Cancellation: waits only for the publish mutex: a publisher in the middle of a
    publish, or one that holds it while it waits for a slow ``block`` subscriber to
    make room; cancelled, it subscribed nothing.
    """
    return await Subscriber._open(name, policy, start)
