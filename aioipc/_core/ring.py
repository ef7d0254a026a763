"""The shared-memory ring's format: its layout and every operation on its records.

This module is the one owner of the ring's binary format. It is sans-IO: it reads and
writes the mapped bytes it is given and makes no system call; :mod:`aioipc._core.shm`
(lifecycle), :mod:`aioipc._core.doorbell` (the wake-up protocol) and
:mod:`aioipc._core.shm_lock` (several producers) never compute a record offset, a
padding or a record word themselves.

The region is one 4 KiB header page followed by ``capacity`` bytes of data. All integers
are little-endian and naturally aligned, so each is read and written with one machine
load or store (CPython's memoryview item assignment compiles to one ``mov``).

Header (byte offsets)::

    0    magic     8 bytes  b"aioipcRG"  (written last: zero means "being created")
    8    version   u32      1
    12   flags     u32      bit 0: several producers share the ring
    16   capacity  u64      data bytes (a multiple of 8)
    24   data_off  u64      4096
    -- producer's cache line (written by the producer only) --
    64   head      u64      bytes ever published (monotonic)
    72   ppid      u32      producer pid (single-producer rings; for messages only)
    76   pstate    u32      0 none yet, 1 attached, 2 closed: the stream has ended
    -- consumer's cache line (written by the consumer only) --
    128  tail      u64      bytes ever consumed (monotonic)
    136  cpid      u32      consumer pid (for messages only)
    140  cstate    u32      0 none yet, 1 attached, 2 closed
    -- one line each, written only around a sleep --
    192  pwaiting  u32      1 = the producer may be asleep on the space doorbell
    256  cwaiting  u32      1 = the consumer may be asleep on the data doorbell

The waiting flags have lines of their own: each side reads the other's flag after every
publish or consume, and on the line of a field written per message (head, tail) that
read would miss the cache every time.

A record starts at a multiple of 8: a u64 word ``length | kind << 32`` and then
``length`` bytes, padded to 8. ``kind`` 1 is a message; kind 2 pads the rest of the data
area when the next message does not fit before the end, so that every message is
contiguous (the receiver can read it in place). Hence the largest message is
``capacity // 2 - 8``: with the ring empty, either the bytes up to the end or the bytes
from the start hold it.

The publish step (:meth:`RingReader.publish`, :meth:`RingWriter.publish`, and the same
three lines inside :meth:`RingReader.take` and :meth:`RingWriter.put`): store the new
tail or head, then a full fence, then read the peer's waiting flag and call
``wake_peer`` (the doorbell, supplied by the caller) if it is set. The fence is what
makes the wake-up protocol lose no wake-up (docs/shared-memory.md): on x86-64 a store
may be reordered after a later load, and without it both sides could miss each other.

Every value read from shared memory is checked before it is used: a corrupt or hostile
header or record raises :exc:`aioipc.ProtocolError`, never an out-of-range access. The
pids and states are not liveness: aioipc asks the kernel (the ends' locks on the file).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable

from ..errors import ProtocolError
from .check import LONG_MAX, check_int
from .wait import AGAIN, Again

MAGIC = int.from_bytes(b"aioipcRG", "little")
VERSION = 1
HEADER_SIZE = 4096
FLAG_MULTI_PRODUCER = 1

# u64 indexes
Q_MAGIC, Q_CAPACITY, Q_DATA_OFF, Q_HEAD, Q_TAIL = 0, 2, 3, 8, 16
# u32 indexes
I_VERSION, I_FLAGS = 2, 3
I_PPID, I_PSTATE, I_PWAITING = 18, 19, 48
I_CPID, I_CSTATE, I_CWAITING = 34, 35, 64

STATE_NONE, STATE_OPEN, STATE_CLOSED = 0, 1, 2
KIND_MESSAGE, KIND_PAD = 1, 2
RECORD_HEADER = 8
MIN_CAPACITY = 64
_MESSAGE_WORD = KIND_MESSAGE << 32
_LOW32 = 0xFFFFFFFF


# The region file is the header and the data: its size must fit an off_t.
MAX_CAPACITY = (LONG_MAX - HEADER_SIZE) & ~7


def check_capacity(capacity: object, what: str) -> int:
    """A ring's capacity: an int, a multiple of 8, ``MIN_CAPACITY..MAX_CAPACITY``.

    Raises:
        TypeError: not an int.
        ValueError: out of range or not a multiple of 8.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        # check_int words the TypeError (and raises it: this returns nothing).
        return check_int(
            capacity, "capacity", minimum=MIN_CAPACITY, maximum=MAX_CAPACITY, what=what
        )
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity % 8:
        raise ValueError(
            f"{what}: capacity must be a multiple of 8 and at least "
            f"{MIN_CAPACITY} bytes (at most {MAX_CAPACITY}), not {capacity}"
        )
    return capacity


def region_size(capacity: int) -> int:
    """Bytes of the region file of a ring of ``capacity`` data bytes."""
    return HEADER_SIZE + capacity


def published_head(hq: memoryview) -> int:
    """The producer's published position (bytes ever published)."""
    return int(hq[Q_HEAD])


def published_tail(hq: memoryview) -> int:
    """The consumer's published position (bytes ever consumed)."""
    return int(hq[Q_TAIL])


def record_size(length: int) -> int:
    """Bytes a record of a ``length``-byte message takes in the data area."""
    return RECORD_HEADER + ((length + 7) & ~7)


def max_message_size(capacity: int) -> int:
    return capacity // 2 - RECORD_HEADER


def header_views(buf: mmap.mmap | bytearray) -> tuple[memoryview, memoryview]:
    """The header of a region (or of a copy of its first ``HEADER_SIZE`` bytes) as u64
    and u32 views; the caller releases them."""
    mv = memoryview(buf)
    try:
        return mv[:HEADER_SIZE].cast("Q"), mv[:HEADER_SIZE].cast("I")
    finally:
        mv.release()


def init_header(hq: memoryview, hi: memoryview, capacity: int, flags: int) -> None:
    """Fill in a zeroed header, all but the magic: the creator writes that last
    (:func:`set_magic`), once it holds its own claim on the ring."""
    hi[I_VERSION] = VERSION
    hi[I_FLAGS] = flags
    hq[Q_CAPACITY] = capacity
    hq[Q_DATA_OFF] = HEADER_SIZE


def set_magic(hq: memoryview) -> None:
    """The creator's last step: from now on others may attach."""
    hq[Q_MAGIC] = MAGIC


def has_magic(hq: memoryview) -> bool:
    """False while the ring's creator has not finished (the magic is still zero)."""
    return hq[Q_MAGIC] != 0


def check_header(hq: memoryview, hi: memoryview, region_size: int, what: str) -> int:
    """Validate a header; return the capacity.

    Raises:
        ProtocolError: bad magic, version, capacity or offsets.
    """
    if hq[Q_MAGIC] != MAGIC:
        raise ProtocolError(f"{what}: not an aioipc ring (bad magic {hq[Q_MAGIC]:#x})")
    if hi[I_VERSION] != VERSION:
        raise ProtocolError(f"{what}: ring version {hi[I_VERSION]}, this aioipc reads {VERSION}")
    capacity: int = hq[Q_CAPACITY]
    if hq[Q_DATA_OFF] != HEADER_SIZE:
        raise ProtocolError(f"{what}: data offset {hq[Q_DATA_OFF]}, expected {HEADER_SIZE}")
    if capacity % 8 or capacity < MIN_CAPACITY or capacity != region_size - HEADER_SIZE:
        raise ProtocolError(
            f"{what}: capacity {capacity} does not fit the region's {region_size} bytes"
        )
    if hq[Q_HEAD] % 8 or hq[Q_TAIL] % 8:
        raise ProtocolError(
            f"{what}: head {hq[Q_HEAD]} or tail {hq[Q_TAIL]} is not a multiple of 8"
        )
    used = hq[Q_HEAD] - hq[Q_TAIL]
    if not 0 <= used <= capacity:
        raise ProtocolError(
            f"{what}: head {hq[Q_HEAD]} and tail {hq[Q_TAIL]} are {used} bytes apart, "
            f"beyond the capacity {capacity}"
        )
    return capacity


def _nobody() -> None:
    pass


class _Side:
    """What the reader and the writer share: the mapping, the header views, the fence."""

    __slots__ = ("_facq", "_frel", "buf", "capacity", "dq", "hi", "hq", "wake_peer", "what")

    def __init__(
        self,
        buf: mmap.mmap,
        capacity: int,
        what: str,
        wake_peer: Callable[[], None],
    ) -> None:
        mv = memoryview(buf)
        #: The whole region (header and data); slicing it copies bytes out in one step.
        self.buf = buf
        self.hq = mv[:HEADER_SIZE].cast("Q")
        self.hi = mv[:HEADER_SIZE].cast("I")
        #: The data area as u64 words: record words are read and written through it.
        self.dq = mv[HEADER_SIZE : HEADER_SIZE + capacity].cast("Q")
        mv.release()
        self.capacity = capacity
        self.what = what
        #: Rings the peer's doorbell; called by the publish step when the peer may sleep.
        self.wake_peer = wake_peer
        # Each side has its own lock, so the non-blocking acquire always succeeds (a
        # handle is used from one thread): a failed sem_trywait runs no locked
        # instruction, and releasing a lock another thread holds would be worse.
        lock = threading.Lock()
        self._facq, self._frel = lock.acquire, lock.release

    def fence(self) -> None:
        """A full memory barrier. Acquiring and releasing a threading.Lock runs a locked
        instruction in the C library (sem_trywait's cmpxchg, sem_post's xadd; a CAS on
        3.13+), which orders every earlier store before every later load."""
        if self._facq(False):
            self._frel()

    def views(self) -> list[memoryview]:
        """The memoryviews into the mapping this side holds (released before unmapping)."""
        return [self.dq, self.hi, self.hq]

    def release(self) -> None:
        for v in self.views():
            v.release()


class RingReader(_Side):
    """The consumer's side: takes messages out and publishes the tail. No I/O, no waiting.

    ``tail`` is this side's position: it runs ahead of the published one inside a batch
    (:meth:`take_many`) and while a view is open (:meth:`view`).
    """

    __slots__ = ("_view_size", "data_ro", "tail")

    def __init__(
        self,
        buf: mmap.mmap,
        capacity: int,
        what: str,
        wake_peer: Callable[[], None] = _nobody,
    ) -> None:
        super().__init__(buf, capacity, what, wake_peer)
        self.tail: int = self.hq[Q_TAIL]
        mv = memoryview(buf)
        self.data_ro = mv[HEADER_SIZE : HEADER_SIZE + capacity].toreadonly()
        mv.release()
        self._view_size = 0

    def views(self) -> list[memoryview]:
        return [self.data_ro, *super().views()]

    def _corrupt(self, why: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: corrupt ring ({why}) at tail {self.tail}")

    def next_record(self, head: int) -> tuple[int, int]:
        """``(offset in the data, length)`` of the next message if ``head`` is past the
        tail, else ``(-1, 0)``. A pad record before it is skipped (the tail moves past
        it, unpublished); on ProtocolError the tail is where it was.

        Raises:
            ProtocolError: ``head`` or a record word is impossible.
        """
        cap = self.capacity
        tail = self.tail
        used = head - tail
        if used == 0:
            return -1, 0
        if not 0 < used <= cap:
            raise self._corrupt(f"head {head} is {used} bytes from the tail")
        idx = tail % cap
        word = self.dq[idx >> 3]
        length = word & _LOW32
        if word >> 32 == KIND_MESSAGE:
            size = RECORD_HEADER + ((length + 7) & ~7)
            if size > used or idx + size > cap:
                raise self._corrupt(f"message of {length} bytes overruns the data")
            return idx + RECORD_HEADER, length
        if word >> 32 != KIND_PAD or length != cap - idx - RECORD_HEADER or cap - idx > used:
            raise self._corrupt(f"record kind {word >> 32} length {length}")
        # A pad: the next record starts at 0. No recursion beyond one level: a pad at 0
        # would span the whole lap, more than the bytes left after this one.
        self.tail = tail + cap - idx
        try:
            return self.next_record(head)
        except ProtocolError:
            self.tail = tail
            raise

    def has_data(self) -> bool:
        """True if the producer published past our tail (a message, a pad or garbage:
        :meth:`take` tells which)."""
        return self.hq[Q_HEAD] != self.tail

    def take(self) -> bytes | Again:
        """The next message, copied out, consumed and published; :data:`AGAIN` if the
        ring is empty.

        Raises:
            ProtocolError: the ring is corrupt (nothing is consumed).
        """
        # The common case (a message record, no pad) first, with no call: this is the
        # receive hot path. next_record below checks the same things and the pads.
        tail = self.tail
        cap = self.capacity
        used = self.hq[Q_HEAD] - tail
        if 0 < used <= cap:
            idx = tail % cap
            word = self.dq[idx >> 3]
            length = word & _LOW32
            size = RECORD_HEADER + ((length + 7) & ~7)
            if word >> 32 == KIND_MESSAGE and size <= used and idx + size <= cap:
                start = HEADER_SIZE + RECORD_HEADER + idx
                msg = self.buf[start : start + length]
                self.tail = tail = tail + size
                # The publish step (see publish), inline on the hot path.
                self.hq[Q_TAIL] = tail
                if self._facq(False):
                    self._frel()
                if self.hi[I_PWAITING]:
                    self.wake_peer()
                return msg
        elif used == 0:
            return AGAIN
        off, length = self.next_record(self.hq[Q_HEAD])
        if off < 0:
            # Only pads were there: consumed, so that the producer gets the room back.
            self.publish()
            return AGAIN
        start = HEADER_SIZE + off
        msg = self.buf[start : start + length]
        self.tail += RECORD_HEADER + ((length + 7) & ~7)
        self.publish()
        return msg

    def take_many(self, out: list[bytes], max_count: int) -> None:
        """Append up to ``max_count`` messages that are there to ``out`` and publish the
        tail once. Stops early at a corrupt record: the next :meth:`take` raises it."""
        buf = self.buf
        head = self.hq[Q_HEAD]
        append = out.append
        next_record = self.next_record
        before = len(out)
        for _ in range(max_count):
            try:
                off, length = next_record(head)
            except ProtocolError:
                break
            if off < 0:
                break
            start = HEADER_SIZE + off
            append(buf[start : start + length])
            self.tail += RECORD_HEADER + ((length + 7) & ~7)
        if len(out) > before:
            self.publish()

    def view(self) -> memoryview | Again:
        """A read-only view of the next message, in place, or :data:`AGAIN`. The message
        stays in the ring until :meth:`release_view`; call nothing else meanwhile.

        Raises:
            ProtocolError: the ring is corrupt.
        """
        off, length = self.next_record(self.hq[Q_HEAD])
        if off < 0:
            return AGAIN
        self._view_size = RECORD_HEADER + ((length + 7) & ~7)
        return self.data_ro[off : off + length]

    def release_view(self) -> None:
        """Consume and publish the message :meth:`view` returned."""
        self.tail = tail = self.tail + self._view_size
        self._view_size = 0
        # The publish step (see publish), inline on the zero-copy hot path.
        self.hq[Q_TAIL] = tail
        if self._facq(False):
            self._frel()
        if self.hi[I_PWAITING]:
            self.wake_peer()

    def publish(self) -> None:
        """The consumer's publish step: store the tail, fence, wake a sleeping producer."""
        self.hq[Q_TAIL] = self.tail
        if self._facq(False):
            self._frel()
        if self.hi[I_PWAITING]:
            self.wake_peer()


class RingWriter(_Side):
    """The producer's side: puts messages in and publishes the head. No I/O, no waiting.

    ``head`` is this side's position; ``tail_seen`` the consumer's tail as last read (it
    only grows, so room computed from it is never more than there is).
    """

    __slots__ = ("_reserved_at", "_reserved_size", "data", "head", "tail_seen")

    def __init__(
        self,
        buf: mmap.mmap,
        capacity: int,
        what: str,
        wake_peer: Callable[[], None] = _nobody,
    ) -> None:
        super().__init__(buf, capacity, what, wake_peer)
        mv = memoryview(buf)
        self.data = mv[HEADER_SIZE : HEADER_SIZE + capacity]
        mv.release()
        self.head: int = self.hq[Q_HEAD]
        self.tail_seen: int = self.hq[Q_TAIL]
        self._reserved_at = -1
        self._reserved_size = 0  # the reserved message's record size

    def views(self) -> list[memoryview]:
        return [self.data, *super().views()]

    def reload(self) -> None:
        """Take head from the header (several producers: another may have moved it).

        Raises:
            ProtocolError: the published head is impossible.
        """
        head = self.hq[Q_HEAD]
        if head % 8:
            raise ProtocolError(f"{self.what}: corrupt ring: head {head} is not a multiple of 8")
        self.head = head
        self.refresh_tail()

    def refresh_tail(self) -> int:
        """Read the consumer's tail.

        Raises:
            ProtocolError: it is not within ``capacity`` behind our head.
        """
        tail: int = self.hq[Q_TAIL]
        if not 0 <= self.head - tail <= self.capacity or tail % 8:
            raise ProtocolError(
                f"{self.what}: corrupt ring: tail {tail} is beyond head {self.head}, more "
                f"than the capacity {self.capacity} behind it or not a multiple of 8"
            )
        self.tail_seen = tail
        return tail

    def _span(self, length: int) -> int:
        """Bytes the next message of ``length`` takes from head: its record, plus the
        pad before it when it does not fit before the end of the data."""
        room = self.capacity - self.head % self.capacity
        size = RECORD_HEADER + ((length + 7) & ~7)
        return size if room >= size else room + size

    def has_room(self, length: int) -> bool:
        """True if a ``length``-byte message fits now (reads the consumer's tail)."""
        return self.head + self._span(length) - self.refresh_tail() <= self.capacity

    def _claim(self, length: int) -> int:
        """Offset in the data for a ``length``-byte message, its record word written
        (and a pad record before it when it must start over at 0), or -1 if the ring is
        too full. Moves nothing that the consumer can see."""
        cap = self.capacity
        head = self.head
        total = self._span(length)
        if head + total - self.tail_seen > cap and head + total - self.refresh_tail() > cap:
            return -1
        idx = head % cap
        if total != RECORD_HEADER + ((length + 7) & ~7):
            room = cap - idx
            self.dq[idx >> 3] = (room - RECORD_HEADER) | KIND_PAD << 32
            self.head = head + room
            idx = 0
        self.dq[idx >> 3] = length | _MESSAGE_WORD
        return idx + RECORD_HEADER

    def put(self, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data`` as one message and publish it; False (nothing written) if the
        ring is too full. The caller checked ``len(data) <= max_message_size``.

        Raises:
            ProtocolError: the consumer's tail is impossible.
        """
        size = len(data)
        head = self.head
        cap = self.capacity
        idx = head % cap
        rec = RECORD_HEADER + ((size + 7) & ~7)
        # The common case (room up to the end of the data) first, with no call: this is
        # the send hot path. _claim below does the same and the pad.
        if idx + rec <= cap and (
            head + rec - self.tail_seen <= cap or head + rec - self.refresh_tail() <= cap
        ):
            self.dq[idx >> 3] = size | _MESSAGE_WORD
            start = HEADER_SIZE + RECORD_HEADER + idx
            self.buf[start : start + size] = data
            self.head = head = head + rec
            # The publish step (see publish), inline on the hot path.
            self.hq[Q_HEAD] = head
            if self._facq(False):
                self._frel()
            if self.hi[I_CWAITING]:
                self.wake_peer()
            return True
        off = self._claim(size)
        if off < 0:
            return False
        start = HEADER_SIZE + off
        self.buf[start : start + size] = data
        self.head += rec
        self.publish()
        return True

    def put_many(self, batch: list[bytes], start: int) -> int:
        """Write ``batch[start:]`` while it fits and publish them together (one fence, at
        most one wake-up); return the index of the first message not written.

        Raises:
            ProtocolError: the consumer's tail is impossible.
        """
        buf = self.buf
        dq = self.dq
        cap = self.capacity
        head = self.head
        tail = self.tail_seen
        i = start
        for data in batch[start:]:
            size = len(data)
            idx = head % cap
            rec = RECORD_HEADER + ((size + 7) & ~7)
            if idx + rec > cap or head + rec - tail > cap:
                self.head = head
                off = self._claim(size)  # the general case: a pad record, a fresh tail
                if off < 0:
                    break
                s = HEADER_SIZE + off
                buf[s : s + size] = data
                head = self.head + rec
                tail = self.tail_seen
            else:
                dq[idx >> 3] = size | _MESSAGE_WORD
                s = HEADER_SIZE + RECORD_HEADER + idx
                buf[s : s + size] = data
                head += rec
            i += 1
        self.head = head
        if i > start:
            self.publish()
        return i

    def reserve(self, length: int) -> memoryview | Again:
        """A writable view of ``length`` bytes in the ring for the next message, or
        :data:`AGAIN` if the ring is too full. Nothing is published until :meth:`commit`;
        :meth:`abandon` forgets it. Call nothing else meanwhile.

        Raises:
            ProtocolError: the consumer's tail is impossible.
        """
        head = self.head
        cap = self.capacity
        idx = head % cap
        rec = RECORD_HEADER + ((length + 7) & ~7)
        # The common case (room up to the end of the data) first, as in put.
        if idx + rec <= cap and (
            head + rec - self.tail_seen <= cap or head + rec - self.refresh_tail() <= cap
        ):
            self.dq[idx >> 3] = length | _MESSAGE_WORD
            off = idx + RECORD_HEADER
        else:
            off = self._claim(length)
            if off < 0:
                return AGAIN
        self._reserved_at = head
        self._reserved_size = rec
        return self.data[off : off + length]

    def commit(self) -> None:
        """Publish the message :meth:`reserve` handed out."""
        self.head = head = self.head + self._reserved_size
        self._reserved_at = -1
        # The publish step (see publish), inline on the zero-copy hot path.
        self.hq[Q_HEAD] = head
        if self._facq(False):
            self._frel()
        if self.hi[I_CWAITING]:
            self.wake_peer()

    def abandon(self) -> None:
        """Forget the message :meth:`reserve` handed out: the consumer never sees it."""
        if self._reserved_at >= 0:
            self.head = self._reserved_at
            self._reserved_at = -1

    def publish(self) -> None:
        """The producer's publish step: store the head, fence, wake a sleeping consumer."""
        self.hq[Q_HEAD] = self.head
        if self._facq(False):
            self._frel()
        if self.hi[I_CWAITING]:
            self.wake_peer()
