"""The shared-memory ring's format, driven alone: aioipc._core.ring with no files, no
processes and no waiting (sans-IO, as h11 is tested).

A ring here is an anonymous mapping laid out as a real one (the 4 KiB header, then the
data) plus a guard area after the data filled with one byte value that no message
contains: a read past the data would show it. Hypothesis picks capacities, message
sizes, where in the ring the positions start (so where the data wraps), how the
producer's and the consumer's steps interleave, and forged header and record values.
Every message is checked byte for byte and in order; a forged value may only ever raise
ProtocolError.
"""

from __future__ import annotations

import collections
import mmap
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aioipc import ProtocolError
from aioipc._core import ring
from aioipc._core.ring import HEADER_SIZE, RingReader, RingWriter
from aioipc._core.wait import AGAIN

GUARD = 4096
GUARD_BYTE = 0xEE
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

capacities = st.integers(ring.MIN_CAPACITY // 8, 512).map(lambda n: n * 8)
# Where head and tail start: any multiple of 8, so the wrap falls anywhere in a record.
starts = st.integers(0, 1 << 40).map(lambda n: n * 8)


class Region:
    """A ring in an anonymous mapping, with a reader and a writer on it."""

    def __init__(self, capacity: int, start: int = 0) -> None:
        self.capacity = capacity
        self.mm = mmap.mmap(-1, HEADER_SIZE + capacity + GUARD)
        self.mm[HEADER_SIZE + capacity :] = bytes([GUARD_BYTE]) * GUARD
        mv = memoryview(self.mm)
        self.hq = mv[:HEADER_SIZE].cast("Q")
        self.hi = mv[:HEADER_SIZE].cast("I")
        mv.release()
        ring.init_header(self.hq, self.hi, capacity, 0)
        ring.set_magic(self.hq)
        self.hq[ring.Q_HEAD] = self.hq[ring.Q_TAIL] = start
        self.wakes = {"reader": 0, "writer": 0}
        self.reader = RingReader(self.mm, capacity, "test ring", self._wake("reader"))
        self.writer = RingWriter(self.mm, capacity, "test ring", self._wake("writer"))

    def _wake(self, side: str) -> collections.abc.Callable[[], None]:
        def wake() -> None:
            self.wakes[side] += 1

        return wake

    @property
    def head(self) -> int:
        return int(self.hq[ring.Q_HEAD])

    @property
    def tail(self) -> int:
        return int(self.hq[ring.Q_TAIL])

    def guard_intact(self) -> bool:
        return self.mm[HEADER_SIZE + self.capacity :] == bytes([GUARD_BYTE]) * GUARD


def message(index: int, size: int) -> bytes:
    """A message whose every byte depends on its index and position (never GUARD_BYTE)."""
    return bytes((index * 7 + i) % 200 for i in range(size))


def sizes(capacity: int) -> st.SearchStrategy[int]:
    return st.integers(0, ring.max_message_size(capacity))


# ------------------------------------------------- the model: FIFO, exact content


class RingModel(RuleBasedStateMachine):
    """Random interleavings of every producer and consumer operation against a deque."""

    def __init__(self) -> None:
        super().__init__()
        self.r: Region | None = None
        self.model: collections.deque[bytes] = collections.deque()
        self.count = 0
        self.view: memoryview | None = None
        self.reserved: tuple[memoryview, bytes] | None = None

    @precondition(lambda self: self.r is None)
    @rule(capacity=capacities, start=starts)
    def make(self, capacity: int, start: int) -> None:
        self.r = Region(capacity, start)

    def _next(self, size: int) -> bytes:
        self.count += 1
        return message(self.count, size)

    def _fits(self, size: int) -> bool:
        """Independently of ring.py: would a message of ``size`` fit now?"""
        assert self.r is not None
        cap = self.r.capacity
        head, tail = self.r.writer.head, self.r.tail
        rec = 8 + -(-size // 8) * 8
        room_to_end = cap - head % cap
        span = rec if room_to_end >= rec else room_to_end + rec
        return head + span - tail <= cap

    def _idle_writer(self) -> bool:
        return self.r is not None and self.reserved is None

    def _idle_reader(self) -> bool:
        return self.r is not None and self.view is None

    @precondition(_idle_writer)
    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        assert self.r is not None
        size = data.draw(sizes(self.r.capacity))
        fits = self._fits(size)
        msg = self._next(size)
        assert self.r.writer.put(msg) is fits
        if fits:
            self.model.append(msg)

    @precondition(_idle_writer)
    @rule(data=st.data())
    def put_many(self, data: st.DataObject) -> None:
        assert self.r is not None
        batch = [self._next(s) for s in data.draw(st.lists(sizes(self.r.capacity), max_size=6))]
        head = self.r.head
        done = self.r.writer.put_many(batch, 0)
        self.model.extend(batch[:done])
        if done < len(batch):
            assert not self._fits(len(batch[done]))
        if done == 0:
            assert self.r.head == head  # nothing published

    @precondition(_idle_writer)
    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        assert self.r is not None
        size = data.draw(sizes(self.r.capacity))
        fits = self._fits(size)
        view = self.r.writer.reserve(size)
        if not fits:
            assert view is AGAIN
            return
        assert isinstance(view, memoryview)
        assert len(view) == size
        self.reserved = (view, self._next(size))

    @precondition(lambda self: self.reserved is not None)
    @rule(abandon=st.booleans())
    def fill_reserved_byte_by_byte(self, abandon: bool) -> None:
        """The producer writes its reserved message one byte at a time; the consumer
        looks after every byte and must see nothing of it until the commit."""
        assert self.r is not None
        assert self.reserved is not None
        view, msg = self.reserved
        head = self.r.head
        for i, b in enumerate(msg):
            view[i] = b
            if self.view is None:
                self._take_expected(peek_only=True)
            assert self.r.head == head
        view.release()
        self.reserved = None
        if abandon:
            self.r.writer.abandon()
            assert self.r.head == head
        else:
            self.r.writer.commit()
            self.model.append(msg)

    def _take_expected(self, peek_only: bool = False) -> None:
        """Take (or, ``peek_only``, look at) the next message; check it is the model's."""
        assert self.r is not None
        if peek_only:
            # A look that takes nothing: has_data and the published head only.
            assert self.r.reader.has_data() is (self.r.head != self.r.reader.tail)
            return
        got = self.r.reader.take()
        if not self.model:
            assert got is AGAIN
        else:
            assert got == self.model.popleft()

    @precondition(_idle_reader)
    @rule()
    def take(self) -> None:
        self._take_expected()

    @precondition(_idle_reader)
    @rule(most=st.integers(1, 8))
    def take_many(self, most: int) -> None:
        assert self.r is not None
        out: list[bytes] = []
        self.r.reader.take_many(out, most)
        want = [self.model.popleft() for _ in range(min(most, len(self.model)))]
        assert out == want

    @precondition(_idle_reader)
    @rule()
    def open_view(self) -> None:
        assert self.r is not None
        view = self.r.reader.view()
        if not self.model:
            assert view is AGAIN
            return
        assert isinstance(view, memoryview)
        assert view.readonly
        assert view == self.model[0]
        self.view = view

    @precondition(lambda self: self.view is not None)
    @rule()
    def release_view(self) -> None:
        assert self.r is not None
        assert self.view is not None
        tail = self.r.tail
        assert bytes(self.view) == self.model.popleft()  # not overwritten meanwhile
        self.view.release()
        self.view = None
        self.r.reader.release_view()
        assert self.r.tail > tail

    @invariant()
    def positions_are_sane(self) -> None:
        if self.r is None:
            return
        r = self.r
        assert r.head % 8 == 0
        assert r.tail % 8 == 0
        assert 0 <= r.head - r.tail <= r.capacity
        assert r.head == r.writer.head or self.reserved is not None
        assert r.guard_intact()

    def teardown(self) -> None:
        if self.view is not None:
            self.view.release()
        if self.reserved is not None:
            self.reserved[0].release()


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(
    max_examples=80, stateful_step_count=60, deadline=None, suppress_health_check=list(HealthCheck)
)


# ------------------------------------------ two processes' views: TSO order, byte by byte


def copy_in_store_order(src: Region, dst: Region) -> Iterator[None]:
    """Copy what the producer wrote in ``src`` into ``dst`` as another core would see it
    (x86-64 keeps stores in order): the data area byte by byte, then head as one
    8-byte store (an aligned u64 store is never torn). Yields after every step."""
    start = HEADER_SIZE
    new, old = src.mm[start : start + src.capacity], dst.mm[start : start + src.capacity]
    for i, (a, b) in enumerate(zip(new, old, strict=True)):
        if a != b:
            dst.mm[start + i] = a
            yield
    dst.hq[ring.Q_HEAD] = src.hq[ring.Q_HEAD]
    yield


@FAST
@given(
    capacity=st.integers(ring.MIN_CAPACITY // 8, 64).map(lambda n: n * 8),
    start=starts,
    data=st.data(),
)
def test_consumer_sees_each_message_whole_or_not_at_all(
    capacity: int, start: int, data: st.DataObject
) -> None:
    """Producer and consumer on separate copies of the ring; the producer's bytes reach
    the consumer one at a time in store order. Between any two bytes the consumer sees
    no message or the next one exactly, and every message arrives once, in order."""
    prod, cons = Region(capacity, start), Region(capacity, start)
    expected: collections.deque[bytes] = collections.deque()
    got: list[bytes] = []
    for index in range(data.draw(st.integers(1, 12), label="messages")):
        size = data.draw(sizes(capacity), label="size")
        msg = message(index, size)
        # The consumer's tail reaches the producer as one store too.
        prod.hq[ring.Q_TAIL] = cons.hq[ring.Q_TAIL]
        if not prod.writer.put(msg):
            break
        expected.append(msg)
        # The consumer looks after every byte, or only now and then (so that several
        # messages pile up and come out together).
        every = data.draw(st.sampled_from([1, 1, 7, 1000]), label="consumer looks every")
        for step, _ in enumerate(copy_in_store_order(prod, cons)):
            if step % every == 0:
                m = cons.reader.take()
                if m is not AGAIN:
                    assert m == expected.popleft()
                    got.append(m)
    while (m := cons.reader.take()) is not AGAIN:
        assert m == expected.popleft()
        got.append(m)
    assert not expected
    assert cons.guard_intact()
    assert prod.guard_intact()


@FAST
@given(capacity=capacities, lap=st.integers(0, 1 << 30), data=st.data())
def test_every_size_at_every_wrap_point(capacity: int, lap: int, data: st.DataObject) -> None:
    """Start anywhere in the data area (on any lap), then messages of every size round
    the end of the data: each comes out whole, pads are never delivered."""
    at = data.draw(st.integers(0, capacity // 8 - 1), label="start in the data") * 8
    r = Region(capacity, lap * capacity + at)
    limit = ring.max_message_size(capacity)
    for size in [0, 1, 7, 8, 9, limit - 1, limit, *data.draw(st.lists(sizes(capacity)))]:
        if not 0 <= size <= limit:
            continue
        msg = message(size, size)
        assert r.writer.put(msg), (size, r.head, r.tail)
        assert r.reader.take() == msg
        assert r.reader.take() is AGAIN
    assert r.guard_intact()


def test_largest_message_fits_an_empty_ring_at_every_position() -> None:
    """max_message_size is exact: at every position, an empty ring takes it, and one
    byte more never fits (that is why a larger message is refused up front)."""
    capacity = 256
    for start in range(0, 2 * capacity, 8):
        r = Region(capacity, start)
        limit = ring.max_message_size(capacity)
        assert r.writer.has_room(limit)
        assert r.writer.put(message(1, limit))
        assert r.reader.take() == message(1, limit)


def test_publish_wakes_a_peer_only_when_it_said_it_may_sleep() -> None:
    r = Region(256)
    assert r.writer.put(b"a")
    assert r.wakes["writer"] == 0
    r.hi[ring.I_CWAITING] = 1
    assert r.writer.put(b"b")
    assert r.wakes["writer"] == 1
    assert r.writer.put_many([b"c", b"d"], 0) == 2
    assert r.wakes["writer"] == 2
    assert r.reader.take() == b"a"
    assert r.wakes["reader"] == 0
    r.hi[ring.I_PWAITING] = 1
    assert r.reader.take() == b"b"
    assert r.wakes["reader"] == 1
    out: list[bytes] = []
    r.reader.take_many(out, 10)
    assert out == [b"c", b"d"]
    assert r.wakes["reader"] == 2


# --------------------------------------------------- forged values: ProtocolError only


words = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.builds(
        lambda length, kind: length | kind << 32,
        st.one_of(st.integers(0, 64), st.integers(0, 1 << 13)),
        st.sampled_from([ring.KIND_MESSAGE, ring.KIND_PAD, 0, 3, 0xFFFFFFFF]),
    ),
)


def consumed(r: Region, start: int, end: int) -> list[bytes]:
    """The test's own reading of the records between positions ``start`` and ``end``
    (what the consumer stepped over): every record must lie inside the data area."""
    out = []
    cap = r.capacity
    pos = start
    while pos < end:
        idx = pos % cap
        word = int.from_bytes(r.mm[HEADER_SIZE + idx : HEADER_SIZE + idx + 8], "little")
        length, kind = word & 0xFFFFFFFF, word >> 32
        if kind == ring.KIND_PAD:
            assert length == cap - idx - 8
            pos += cap - idx
            continue
        assert kind == ring.KIND_MESSAGE
        size = 8 + -(-length // 8) * 8
        assert idx + size <= cap, f"a record of {length} bytes at {idx} overruns {cap}"
        out.append(bytes(r.mm[HEADER_SIZE + idx + 8 : HEADER_SIZE + idx + 8 + length]))
        pos += size
    assert pos == end
    return out


@FAST
@given(
    capacity=capacities,
    lap=st.integers(0, 1 << 30),
    # Where the consumer stands, in words before the end of the data (overruns start
    # near the end).
    words_to_end=st.one_of(st.integers(1, 4), st.integers(1, 512)),
    head_delta=st.one_of(
        st.integers(0, 128), st.integers(-64, 8192), st.integers(-(1 << 40), 1 << 40)
    ),
    # Forged words, by slot counted from the consumer's position (its next records).
    forged=st.lists(
        st.tuples(st.one_of(st.integers(0, 3), st.integers(0, 511)), words), max_size=12
    ),
    op=st.sampled_from(["take", "take_many", "view", "has_data"]),
)
# A message record running 8 and 16 bytes past the end of the data; a pad of the wrong length
# before a message; a message spilling into the next lap right after a pad.
@example(64, 0, 1, 16, [(0, 8 | 1 << 32)], "take_many")
@example(64, 0, 1, 16, [(0, 8 | 1 << 32)], "view")
@example(64, 0, 1, 32, [(0, 16 | 1 << 32)], "take_many")
@example(64, 0, 1, 32, [(0, 16 | 1 << 32)], "view")
@example(64, 0, 1, 32, [(0, 16 | 1 << 32)], "take")
@example(64, 0, 2, 40, [(0, 0 | 2 << 32), (2, 8 | 1 << 32)], "take")
@example(64, 0, 1, 64, [(0, 0 | 2 << 32), (1, 64 | 1 << 32)], "take_many")
def test_forged_records_raise_protocol_error_never_read_out_of_bounds(
    capacity: int,
    lap: int,
    words_to_end: int,
    head_delta: int,
    forged: list[tuple[int, int]],
    op: str,
) -> None:
    """A hostile producer writes any head and any record words: the consumer returns
    messages that lie inside the data area, says there is nothing, or raises
    ProtocolError; its tail never passes the head nor falls behind where it was."""
    slots = capacity // 8
    start = (lap * slots + slots - 1 - (words_to_end - 1) % slots) * 8
    r = Region(capacity, start)
    head = start + head_delta
    assume(0 <= head < 1 << 63)
    r.hq[ring.Q_HEAD] = head
    dq = memoryview(r.mm)[HEADER_SIZE : HEADER_SIZE + capacity].cast("Q")
    try:
        for slot, word in forged:
            dq[(start // 8 + slot) % slots] = word
    finally:
        dq.release()
    tail = r.reader.tail
    refused = ""
    for _ in range(4):
        try:
            if op == "take":
                got = r.reader.take()
                out = [] if got is AGAIN else [got]
            elif op == "take_many":
                out = []
                r.reader.take_many(out, 8)
            elif op == "view":
                v = r.reader.view()
                out = [] if v is AGAIN else [bytes(v)]
                if v is not AGAIN:
                    v.release()
                    r.reader.release_view()
            else:
                r.reader.has_data()
                out = []
        except ProtocolError as exc:
            refused = str(exc)
            break
        assert tail <= r.reader.tail <= max(head, tail)
        assert out == consumed(r, tail, r.reader.tail)
        tail = r.reader.tail
    if refused:
        assert "test ring" in refused
        assert "corrupt" in refused
        assert r.reader.tail == r.tail  # nothing half-consumed
    assert r.guard_intact()


@FAST
@given(
    capacity=capacities,
    start=starts,
    tail=st.integers(0, (1 << 64) - 1),
    forged_head=st.one_of(st.none(), st.integers(0, (1 << 64) - 1)),
    size=st.integers(0, 600),
    op=st.sampled_from(["put", "put_many", "reserve", "has_room"]),
)
def test_forged_tail_or_head_never_makes_the_producer_write_out_of_bounds(
    capacity: int, start: int, tail: int, forged_head: int | None, size: int, op: str
) -> None:
    """A hostile consumer writes any tail (and, with several producers, anyone any
    head): the producer writes inside the data area or raises ProtocolError."""
    size = min(size, ring.max_message_size(capacity))
    r = Region(capacity, start)
    header = bytes(r.mm[:HEADER_SIZE])
    r.hq[ring.Q_TAIL] = tail
    if forged_head is not None:
        r.hq[ring.Q_HEAD] = forged_head
    refused = ""
    try:
        if forged_head is not None:
            r.writer.reload()
        if op == "put":
            r.writer.put(message(1, size))
        elif op == "put_many":
            r.writer.put_many([message(1, size), message(2, size)], 0)
        elif op == "reserve":
            v = r.writer.reserve(size)
            if v is not AGAIN:
                assert len(v) == size
                v[:] = message(1, size)
                v.release()
                r.writer.commit()
        else:
            r.writer.has_room(size)
    except ProtocolError as exc:
        refused = str(exc)
    if refused:
        assert "test ring" in refused
        assert "corrupt" in refused
    assert r.guard_intact()
    # Only head (and the forged tail) may have changed in the header.
    now = bytearray(r.mm[:HEADER_SIZE])
    for q in (ring.Q_HEAD, ring.Q_TAIL):
        now[q * 8 : q * 8 + 8] = header[q * 8 : q * 8 + 8]
    assert bytes(now) == header


@FAST
@given(
    fields=st.dictionaries(
        st.sampled_from(["magic", "version", "capacity", "data_off", "head", "tail"]),
        st.integers(0, (1 << 64) - 1),
    ),
    capacity=capacities,
)
def test_forged_header_is_refused_or_valid(fields: dict[str, int], capacity: int) -> None:
    r = Region(capacity)
    where = {
        "magic": (r.hq, ring.Q_MAGIC),
        "capacity": (r.hq, ring.Q_CAPACITY),
        "data_off": (r.hq, ring.Q_DATA_OFF),
        "head": (r.hq, ring.Q_HEAD),
        "tail": (r.hq, ring.Q_TAIL),
        "version": (r.hi, ring.I_VERSION),
    }
    for name, value in fields.items():
        view, index = where[name]
        view[index] = value & (0xFFFFFFFF if view is r.hi else (1 << 64) - 1)
    try:
        got = ring.check_header(r.hq, r.hi, HEADER_SIZE + capacity, "test ring")
    except ProtocolError as exc:
        refused = str(exc)
    else:
        refused = ""
        assert got == capacity
    if refused:
        assert "test ring" in refused
        return
    assert 0 <= r.head - r.tail <= capacity


# ------------------------------------------------ one owner: no record arithmetic elsewhere

# What computing with the ring's records looks like: the record word's parts, its
# padding to 8, positions modulo the capacity, the header's word indexes of head/tail
# and the record constants.
RECORD_ARITHMETIC = re.compile(
    r"RECORD_HEADER|KIND_MESSAGE|KIND_PAD|& ~7|\+ 7\)|>> 32|<< 32|0xFFFFFFFF"
    r"|Q_HEAD\]|Q_TAIL\]|% cap|record_size\("
)
SHM_MODULES = ["ring.py", "shm.py", "doorbell.py", "shm_lock.py"]


def test_no_record_arithmetic_outside_ring_py() -> None:
    """ring.py is the one owner of the record format: the modules around it (and the
    rest of the library) never compute an offset, a padding or a record word."""
    root = Path(__file__).resolve().parent.parent / "aioipc"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.name == "ring.py" or not (
            "shm" in rel.name or "ring" in rel.name or rel.name == "doorbell.py"
        ):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if RECORD_ARITHMETIC.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("module", SHM_MODULES)
def test_shm_modules_write_no_retry_loop_and_leave_the_pacer_alone(module: str) -> None:
    """Waits go through the engine (aioipc._core.wait): no hand-written loop, no hand
    on the pacer's counter."""
    text = (Path(__file__).resolve().parent.parent / "aioipc" / "_core" / module).read_text()
    assert "while True" not in text
    assert ".count" not in text
    assert "YIELD_EVERY" not in text


def test_git_grep_agrees() -> None:
    """The same check as the issue's, with git grep: the record format's names nowhere
    in aioipc/ but ring.py, and no record arithmetic in the modules around the ring."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    checks = [
        (
            r"RECORD_HEADER|KIND_MESSAGE|KIND_PAD|record_size\(",
            ["aioipc/", ":!aioipc/_core/topic.py"],
        ),
        (
            r"& ~7|\+ 7\)|>> 32|<< 32|Q_HEAD|Q_TAIL|% cap",
            [
                "aioipc/_core/shm.py",
                "aioipc/_core/doorbell.py",
                "aioipc/_core/shm_lock.py",
                "aioipc/shm.py",
                # and the topic's I/O side: its format is topic.py's alone
                "aioipc/_core/pubsub.py",
                "aioipc/pubsub.py",
            ],
        ),
    ]
    for pattern, paths in checks:
        try:
            out = subprocess.run(
                ["git", "grep", "-nE", pattern, "--", *paths, ":!aioipc/_core/ring.py"],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except FileNotFoundError:
            pytest.skip("no git")
        assert out.returncode in (0, 1), out.stderr
        assert out.stdout == "", out.stdout
