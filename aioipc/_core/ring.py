"""The shared-memory ring's layout and its no-I/O reader and writer.

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

Every value read from the header is checked before it is used: a corrupt or hostile
header raises :exc:`aioipc.ProtocolError`, never an out-of-range access. The pids and
states are not liveness: aioipc.shm asks the kernel (the ends' locks on the file).
"""

from __future__ import annotations

from ..errors import ProtocolError

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


def record_size(length: int) -> int:
    return RECORD_HEADER + ((length + 7) & ~7)


def max_message_size(capacity: int) -> int:
    return capacity // 2 - RECORD_HEADER


def init_header(hq: memoryview, hi: memoryview, capacity: int, flags: int) -> None:
    """Fill in a zeroed header, all but the magic: the creator writes that last (``MAGIC``
    at ``Q_MAGIC``), once it holds its own claim on the ring."""
    hi[I_VERSION] = VERSION
    hi[I_FLAGS] = flags
    hq[Q_CAPACITY] = capacity
    hq[Q_DATA_OFF] = HEADER_SIZE


def check_header(hq: memoryview, hi: memoryview, region_size: int, what: str) -> int:
    """Validate a header; return the capacity.

    Raises:
        ProtocolError: bad magic, version, capacity or offsets.
    """
    if hq[Q_MAGIC] != MAGIC:
        raise ProtocolError(f"{what}: not an aioipc ring (bad magic {hq[Q_MAGIC]:#x})")
    if hi[I_VERSION] != VERSION:
        raise ProtocolError(f"{what}: ring version {hi[I_VERSION]}, this aioipc reads {VERSION}")
    capacity = hq[Q_CAPACITY]
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


class RingReader:
    """Takes records out of the ring; the consumer's side. No I/O, no waiting."""

    __slots__ = ("capacity", "data", "dq", "hq", "tail", "what")

    def __init__(self, hq: memoryview, data: memoryview, capacity: int, what: str) -> None:
        self.hq = hq
        self.data = data
        self.dq = data.cast("Q")
        self.capacity = capacity
        self.tail = hq[Q_TAIL]
        self.what = what

    def _corrupt(self, why: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: corrupt ring ({why}) at tail {self.tail}")

    def next_record(self, head: int) -> tuple[int, int]:
        """``(offset, length)`` of the next message if ``head`` is past ``tail``, else
        ``(-1, 0)``. Pad records are skipped (``tail`` moves past them, unpublished)."""
        cap = self.capacity
        while True:
            used = head - self.tail
            if used == 0:
                return -1, 0
            if not 0 < used <= cap:
                raise self._corrupt(f"head {head} is {used} bytes from the tail")
            idx = self.tail % cap
            word = self.dq[idx >> 3]
            length = word & 0xFFFFFFFF
            kind = word >> 32
            if kind == KIND_MESSAGE:
                size = RECORD_HEADER + ((length + 7) & ~7)
                if size > used or idx + size > cap:
                    raise self._corrupt(f"message of {length} bytes overruns the data")
                return idx + RECORD_HEADER, length
            if kind != KIND_PAD or length != cap - idx - RECORD_HEADER or cap - idx > used:
                raise self._corrupt(f"record kind {kind} length {length}")
            self.tail += cap - idx

    def advance(self, length: int) -> None:
        """Step past the message just returned by :meth:`next_record` (unpublished)."""
        self.tail += RECORD_HEADER + ((length + 7) & ~7)

    def publish(self) -> None:
        self.hq[Q_TAIL] = self.tail


class RingWriter:
    """Puts records into the ring; the producer's side. No I/O, no waiting."""

    __slots__ = ("capacity", "data", "dq", "head", "hq", "tail_seen")

    def __init__(self, hq: memoryview, data: memoryview, capacity: int) -> None:
        self.hq = hq
        self.data = data
        self.dq = data.cast("Q")
        self.capacity = capacity
        self.head = hq[Q_HEAD]
        self.tail_seen = hq[Q_TAIL]

    def reload(self) -> None:
        """Take head from the header (several producers: another may have moved it)."""
        self.head = self.hq[Q_HEAD]

    def reserve(self, length: int) -> int:
        """Offset where a ``length``-byte message may be written, or -1 if the ring is
        too full. Writes a pad record first when the message must start over at 0."""
        cap = self.capacity
        head = self.head
        idx = head % cap
        size = RECORD_HEADER + ((length + 7) & ~7)
        room = cap - idx
        total = size if room >= size else room + size
        if head + total - self.tail_seen > cap:
            self.tail_seen = tail = self.hq[Q_TAIL]
            if not 0 <= head - tail <= cap:
                raise ProtocolError(f"corrupt ring: tail {tail} is beyond head {head}")
            if head + total - tail > cap:
                return -1
        if room < size:
            self.dq[idx >> 3] = (room - RECORD_HEADER) | KIND_PAD << 32
            self.head = head + room
            idx = 0
        self.dq[idx >> 3] = length | KIND_MESSAGE << 32
        return idx + RECORD_HEADER

    def commit(self, length: int) -> None:
        """Count the message written at the reserved offset (unpublished)."""
        self.head += RECORD_HEADER + ((length + 7) & ~7)

    def abandon(self, head: int) -> None:
        """Forget a reservation: go back to ``head`` (nothing was published)."""
        self.head = head

    def publish(self) -> None:
        self.hq[Q_HEAD] = self.head
