"""The topic's log format (aioipc._core.topic), sans-IO, against an independent model.

The writer and readers run over an anonymous mapping laid out like a topic file. The
model below computes, from the published sizes alone, where every record lies, where
the tail must be, which ``block`` reader holds a publish back, and what every take must
return (a message, AGAIN, END, or an Overrun with an exact count): each result is
compared with it, message by message. Random capacities and sizes put the wrap points
and pads anywhere.

Then corruption: any byte of the header, the slots or the records flipped, or a whole
word forged, before more publishing and reading. Readers and writers must raise
ProtocolError (or report an Overrun) or go on correctly, never IndexError, ValueError
or any other exception, and never return bytes that were not published as one message
(unless the forged bytes are inside a record, where the forger's bytes are, by
definition, what was "published" there).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aioipc import ProtocolError
from aioipc._core import topic as T
from aioipc._core.wait import AGAIN

# AIOIPC_TEST_EXAMPLES=5000 for a soak; the suite runs 150.
EXAMPLES = int(os.environ.get("AIOIPC_TEST_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def payload(seq: int, length: int) -> bytes:
    """Message number ``seq``: self-describing, so a torn or shifted copy shows."""
    head = seq.to_bytes(8, "little")
    body = bytes((seq * 131 + i * 7) & 0xFF for i in range(max(0, length - 8)))
    return (head + body)[:length]


def rec_size(length: int) -> int:
    """16 bytes of header, the payload rounded up to 16 (so that the room before the
    end of the data area is always 0 or enough for a pad's header)."""
    return 16 + ((length + 15) & ~15)


def make_log(capacity: int, max_subs: int) -> mmap.mmap:
    mm = mmap.mmap(-1, T.region_size(capacity, max_subs))
    hq, hi = T.header_views(mm)
    with hq, hi:
        T.init_header(hq, hi, capacity, max_subs)
        T.set_magic(hq)
    return mm


@dataclass
class MReader:
    """What the model knows of one reader."""

    slot: int
    policy: int
    cursor: int  # the position of the next record it reads (what it published)
    expected: int  # the number of the next message it should get
    got: list[int] = field(default_factory=list)
    missed: int = 0
    first: int = 0  # message number where it started


class Model:
    """The log's layout computed from the sizes published, independently of topic.py."""

    def __init__(self, capacity: int) -> None:
        self.cap = capacity
        self.head = 0
        self.tail = 0
        self.seq = 0
        # every record: (position, kind, message number or next number, length)
        self.records: list[tuple[int, int, int, int]] = []
        self.eof = 0  # 1 + position of the newest end record

    def commit(self, length: int, kind: int, tail: int, start: int, pad: bool) -> None:
        if pad:
            self.records.append(
                (self.head, T.KIND_PAD, self.seq, self.cap - self.head % self.cap - 16)
            )
        self.records.append((start, kind, self.seq, length))
        self.tail = tail
        self.head = start + rec_size(length)
        if kind == T.KIND_EOF:
            self.eof = start + 1
        else:
            self.seq += 1
        self.records = [r for r in self.records if r[0] >= self.tail]

    def seq_at(self, pos: int) -> int:
        for p, _kind, seq, _length in self.records:
            if p == pos:
                return seq
        assert pos == self.head, (pos, self.head)
        return self.seq

    def record_at(self, pos: int) -> tuple[int, int, int, int]:
        for r in self.records:
            if r[0] == pos:
                return r
        raise AssertionError(f"no record at {pos}")


def _first_boundary(model: Model, need: int) -> int:
    bounds = [r[0] for r in model.records] + [model.head]
    return next(b for b in bounds if b >= need)


class Harness:
    """A writer and readers over one mapping, checked against the model."""

    def __init__(self, capacity: int, max_subs: int) -> None:
        self.mm = make_log(capacity, max_subs)
        self.cap = capacity
        self.max_subs = max_subs
        self.w = T.LogWriter(self.mm, capacity, max_subs, "t")
        self.m = Model(capacity)
        self.readers: dict[int, tuple[T.LogReader, MReader]] = {}
        self.lengths: dict[int, int] = {}

    def close(self) -> None:
        for r, _ in self.readers.values():
            r.release()
        self.w.release()
        self.mm.close()

    # -- what the model expects ------------------------------------------------------

    def expected_claim(self, length: int) -> tuple[int, int, int, bool]:
        """(blocker slot or -1, new tail, start, pad)."""
        m = self.m
        rec = rec_size(length)
        idx = m.head % m.cap
        room = m.cap - idx
        pad = room < rec
        start = m.head + (room if pad else 0)
        need = start + rec - m.cap
        tail = m.tail
        if need > tail:
            tail = _first_boundary(m, need)
        blocker = -1
        lowest = None
        for slot, (_r, mr) in sorted(self.readers.items()):
            if mr.policy == T.BLOCK and mr.cursor < tail and (lowest is None or mr.cursor < lowest):
                blocker, lowest = slot, mr.cursor
        return blocker, tail, start, pad

    # -- operations --------------------------------------------------------------------

    def publish(self, length: int, kind: int = T.KIND_MESSAGE) -> int:
        """Publish one record; returns the blocking slot (-1 if published)."""
        blocker, tail, start, pad = self.expected_claim(length)
        self.w.load()
        off = self.w.mark_end() if kind == T.KIND_EOF else self.w.put(payload(self.m.seq, length))
        if blocker >= 0:
            assert off == -1 - blocker
            self.w.commit()  # publishes nothing new, as the publisher does before waiting
            assert self.w.hq[T.Q_HEAD] == self.m.head
            return blocker
        assert off == start % self.cap + 16
        self.w.commit()
        if kind == T.KIND_MESSAGE:
            self.lengths[self.m.seq] = length
        self.m.commit(length, kind, tail, start, pad)
        assert self.w.hq[T.Q_HEAD] == self.m.head
        assert self.w.hq[T.Q_TAIL] == self.m.tail
        return -1

    def subscribe(self, policy: int, oldest: bool) -> None:
        slot = next(i for i in range(self.max_subs) if i not in self.readers)
        self.w.register(slot, policy, oldest, 1234)
        m = self.m
        if oldest:
            cursor, seq = m.tail, m.seq_at(m.tail)
        else:
            cursor, seq = m.head, m.seq
        r = T.LogReader(self.mm, self.cap, self.max_subs, "t", slot, lambda: None)
        assert (r.cursor, r.seq) == (cursor, seq)
        self.readers[slot] = (r, MReader(slot, policy, cursor, seq, first=seq))

    def unsubscribe(self, slot: int) -> None:
        r, _ = self.readers.pop(slot)
        r.free_slot(slot)
        r.release()
        self.w.forget_floor()

    def _cursor(self, mr: MReader) -> int:
        """Where the reader reads next: a reader whose cursor the tail passed moves to
        the tail, silently if only pads were dropped (no message, no end)."""
        m = self.m
        if mr.cursor < m.tail and m.seq_at(m.tail) == mr.expected and not self._ended(mr):
            return m.tail
        return mr.cursor

    def _ended(self, mr: MReader) -> bool:
        m = self.m
        return m.eof > 0 and mr.cursor <= m.eof - 1 < m.tail

    def _skip_pads(self, mr: MReader) -> int:
        mr.cursor = self._cursor(mr)
        c = mr.cursor
        while c < self.m.head:
            pos, kind, _seq, _length = self.m.record_at(c)
            if kind != T.KIND_PAD:
                break
            c += self.cap - pos % self.cap
        return c

    def expect_take(self, mr: MReader) -> Any:
        """What the next take must give: ("msg", n), "again", "end", ("over", missed,
        behind, ended)."""
        m = self.m
        if self._cursor(mr) < m.tail:
            seq = m.seq_at(m.tail)
            return ("over", seq - mr.expected, m.tail - mr.cursor, self._ended(mr))
        saved = mr.cursor
        c = self._skip_pads(mr)
        mr.cursor = saved
        if c == m.head:
            return "again"
        _pos, kind, seq, _length = m.record_at(c)
        if kind == T.KIND_EOF:
            return "end"
        return ("msg", seq)

    def advance(self, mr: MReader, got: object) -> None:
        """Move the model reader past what it got."""
        m = self.m
        if isinstance(got, tuple) and got[0] == "over":
            mr.missed += got[1]
            mr.expected += got[1]
            mr.cursor = m.tail
            return
        if got == "again":
            mr.cursor = self._cursor(mr)
            return
        c = self._skip_pads(mr)
        pos, kind, seq, length = m.record_at(c)
        mr.cursor = pos + rec_size(length)
        if kind == T.KIND_MESSAGE:
            assert seq == mr.expected
            mr.got.append(seq)
            mr.expected += 1

    def take(self, slot: int, how: str = "take", many: int = 1) -> None:
        r, mr = self.readers[slot]
        want = self.expect_take(mr)
        if how == "view" and mr.policy == T.BLOCK:
            try:
                got = r.view()
            except T.Overrun:  # pragma: no cover - a block reader is never overrun
                raise AssertionError("a block reader was overrun") from None
            if got is AGAIN:
                assert want == "again"
            elif got is T.END:
                assert want == "end"
                self.advance(mr, want)
            else:
                assert want[:1] == ("msg",), want
                assert bytes(got) == payload(want[1], self.lengths[want[1]])
                got.release()
                r.release_view()
                self.advance(mr, want)
            self._check_published(r, mr)
            return
        try:
            if how == "many":
                out: list[bytes] = []
                got = r.take_many(out, many)
            else:
                got = r.take()
        except T.Overrun as o:
            assert want == ("over", o.missed, o.behind, o.ended), want  # noqa: PT017
            self.advance(mr, want)
            self._check_published(r, mr)
            return
        if got is AGAIN:
            assert want == "again"
            return
        if got is T.END:
            assert want == "end"
            self.advance(mr, want)
            self._check_published(r, mr)
            return
        assert want[:1] == ("msg",), (want, got)
        msgs = out if how == "many" else [got]
        assert how != "many" or got is None
        # the first message is the model's; a batch continues with consecutive messages
        for i, msg in enumerate(msgs):
            if i:
                want = self.expect_take(mr)
                assert want[:1] == ("msg",), want
            assert msg == payload(want[1], self.lengths[want[1]]), (want, msg[:16])
            self.advance(mr, want)
        if how == "many":
            # a batch stops only at max_count, at the head, at the end of the data
            # area or at something not a message
            nxt = self.expect_take(mr)
            assert (
                len(msgs) == many
                or nxt == "again"
                or mr.cursor == self.m.head
                or mr.cursor % self.cap == 0
                or (self.m.record_at(mr.cursor)[1] != T.KIND_MESSAGE)
            ), (len(msgs), many, nxt)
        self._check_published(r, mr)

    def _check_published(self, r: T.LogReader, mr: MReader) -> None:
        # what a publisher sees of this reader: its cursor and next number
        assert r.sq[mr.slot * 8 + T.S_CURSOR] == mr.cursor
        assert r.sq[mr.slot * 8 + T.S_SEQ] == mr.expected

    def drain(self, slot: int) -> None:
        _r, mr = self.readers[slot]
        for _ in range(10_000):
            if self.expect_take(mr) == "again":
                break
            self.take(slot)
        self.take(slot)  # AGAIN

    def check_totals(self) -> None:
        """Every reader got an in-order run of numbers, and got + missed adds up."""
        for slot in list(self.readers):
            self.drain(slot)
            _r, mr = self.readers[slot]
            assert mr.got == sorted(set(mr.got))
            assert len(mr.got) + mr.missed == self.m.seq - mr.first, (slot, mr)
            if mr.policy == T.BLOCK:
                assert mr.missed == 0
                assert mr.got == list(range(mr.first, self.m.seq))


def lengths_strategy(capacity: int) -> st.SearchStrategy[int]:
    return st.integers(0, T.max_message_size(capacity))


OPS = st.one_of(
    st.tuples(st.just("pub"), st.floats(0, 1)),
    st.tuples(st.just("eof"), st.just(0)),
    st.tuples(
        st.just("sub"), st.sampled_from([T.BLOCK, T.DROP_OLDEST, T.DISCONNECT]), st.booleans()
    ),
    st.tuples(st.just("unsub"), st.integers(0, 3)),
    st.tuples(
        st.just("take"),
        st.integers(0, 3),
        st.sampled_from(["take", "many", "view"]),
        st.integers(1, 5),
    ),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[object, ...]], list[int]]:
    capacity = draw(st.integers(16, 160).map(lambda k: 16 * k))
    ops = draw(st.lists(OPS, min_size=1, max_size=80))
    lengths = draw(st.lists(lengths_strategy(capacity), min_size=80, max_size=80))
    return capacity, ops, lengths


def run(h: Harness, ops: list[tuple[object, ...]], lengths: list[int]) -> None:
    for n, op in enumerate(ops):
        kind = op[0]
        if kind in ("pub", "eof"):
            length = lengths[n] if kind == "pub" else 0
            k = T.KIND_MESSAGE if kind == "pub" else T.KIND_EOF
            for _ in range(1000):
                blocker = h.publish(length, k)
                if blocker < 0:
                    break
                # backpressure: the blocking reader reads one, then the publisher retries
                assert h.readers[blocker][1].policy == T.BLOCK
                h.take(blocker)
            else:  # pragma: no cover
                raise AssertionError("a publish never got room")
        elif kind == "sub":
            if len(h.readers) < h.max_subs:
                h.subscribe(op[1], op[2])  # type: ignore[arg-type]
        elif kind == "unsub":
            slots = sorted(h.readers)
            if slots:
                h.unsubscribe(slots[int(op[1]) % len(slots)])  # type: ignore[call-overload]
        else:
            slots = sorted(h.readers)
            if slots:
                slot = slots[int(op[1]) % len(slots)]  # type: ignore[call-overload]
                h.take(slot, str(op[2]), int(op[3]))  # type: ignore[call-overload]


@FAST
@given(scenarios())
@example((256, [("sub", T.DROP_OLDEST, False)] + [("pub", 0)] * 30, [96] * 80))
@example(
    (
        256,
        [("sub", T.BLOCK, True), ("sub", T.DROP_OLDEST, True)] + [("pub", 0)] * 40,
        [0, 112, 7] * 27,
    )
)
def test_readers_get_exactly_what_the_model_says(
    scenario: tuple[int, list[tuple[object, ...]], list[int]],
) -> None:
    capacity, ops, lengths = scenario
    h = Harness(capacity, 4)
    try:
        run(h, ops, lengths)
        h.check_totals()
    finally:
        h.close()


@settings(FAST, max_examples=max(40, EXAMPLES // 4))
@given(
    capacity=st.integers(16, 64).map(lambda k: 16 * k),
    data=st.data(),
)
def test_block_and_drop_oldest_readers_side_by_side(capacity: int, data: st.DataObject) -> None:
    """Three readers (block, drop_oldest, disconnect) from the start, a long random run:
    the block one gets everything, the others in-order runs with exact lag counts."""
    h = Harness(capacity, 3)
    try:
        h.subscribe(T.BLOCK, False)
        h.subscribe(T.DROP_OLDEST, False)
        h.subscribe(T.DISCONNECT, True)
        for _ in range(data.draw(st.integers(1, 120), label="rounds")):
            length = data.draw(lengths_strategy(capacity), label="length")
            while (blocker := h.publish(length)) >= 0:
                h.take(blocker)
            slot = data.draw(st.integers(-2, 2), label="reader")
            if slot >= 0:
                for _ in range(data.draw(st.integers(0, 4), label="reads")):
                    h.take(slot, data.draw(st.sampled_from(["take", "many"])), 3)
        h.check_totals()
        assert h.readers[0][1].got == list(range(h.m.seq))
    finally:
        h.close()


def test_no_record_ends_8_bytes_before_the_end() -> None:
    """Records of 8-byte messages and empty ones (24 + 16 bytes when records were
    aligned to 8) once put the head 8 bytes before the end, too little for a pad's
    header: claim() stored a pad of -8 bytes (ValueError)."""
    h = Harness(256, 1)
    try:
        h.subscribe(T.DROP_OLDEST, True)
        for length in [8] * 9 + [0, 0] + [1, 8, 0, 24] * 20:
            assert h.publish(length) == -1
            assert h.m.head % 16 == 0
        h.check_totals()
    finally:
        h.close()


# -- corruption -----------------------------------------------------------------------

# Header bytes that mean something (the mutex at 256..319 is the C library's: forging it
# is covered in test_pubsub_faults.py).
HEADER_BYTES = [*range(0, 40), *range(64, 88), *range(128, 176), *range(192, 196), *range(512, 516)]


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[str, int, int]:
    """(where, offset, value): flip a byte (value = xor mask) or forge a u64 (value)."""
    where = draw(
        st.sampled_from(["header", "slot", "data", "forge-header", "forge-slot", "forge-data"])
    )
    if where == "header":
        return where, draw(st.sampled_from(HEADER_BYTES)), draw(st.integers(1, 255))
    if where == "slot":
        return where, draw(st.integers(0, 4 * 64 - 1)), draw(st.integers(1, 255))
    if where == "data":
        return where, draw(st.integers(0, 10_000)), draw(st.integers(1, 255))
    value = draw(
        st.one_of(
            st.sampled_from([0, 1, 8, 16, 255, 256, 2**31, 2**32, 2**63, 2**64 - 1, 2**64 - 8]),
            st.integers(0, 2**64 - 1),
        )
    )
    if where == "forge-header":
        return where, draw(st.sampled_from([0, 2, 3, 8, 9, 10, 16, 17, 18, 19, 20, 21])), value
    if where == "forge-slot":
        return where, draw(st.integers(0, 4 * 8 - 1)), value
    return where, draw(st.integers(0, 10_000)), value


def corrupt(h: Harness, how: tuple[str, int, int]) -> bool:
    """Apply the corruption; True if it hit a record's bytes in the data area."""
    where, off, value = how
    mm, data_off = h.mm, T.data_offset(h.max_subs)
    if where == "header":
        mm[off] ^= value
    elif where == "slot":
        mm[T.HEADER_SIZE + off] ^= value
    elif where == "data":
        mm[data_off + off % h.cap] ^= value
        return True
    elif where == "forge-header":
        h.w.hq[off] = value
    elif where == "forge-slot":
        h.w.sq[off] = value
    else:
        h.w.dq[(off % h.cap) // 8] = value
        return True
    return False


ALLOWED = (ProtocolError, T.Overrun)


def hostile_round(h: Harness, data_hit: bool, lengths: list[int]) -> None:
    """Publish, read and subscribe after a corruption: only allowed outcomes."""
    published = {payload(seq, length) for seq, length in h.lengths.items()}
    data_now = bytes(h.mm[T.data_offset(h.max_subs) : T.data_offset(h.max_subs) + h.cap])
    for n, length in enumerate(lengths):
        data = payload(10_000 + n, length)
        published.add(data)
        try:
            h.w.load()
            if h.w.put(data) >= 0:
                h.w.commit()
        except ProtocolError:
            pass
        data_now += bytes(h.mm[T.data_offset(h.max_subs) : T.data_offset(h.max_subs) + h.cap])
        for slot, (r, _mr) in list(h.readers.items()):
            for _ in range(4):
                out: list[bytes] = []
                try:
                    got = r.take() if slot % 2 else r.take_many(out, 3)
                except ALLOWED:
                    continue
                if isinstance(got, bytes):
                    out.append(got)
                for msg in out:
                    assert msg in published or (data_hit and msg in data_now), msg[:32]
        if len(h.readers) < h.max_subs:
            try:
                h.subscribe(T.DROP_OLDEST, n % 2 == 0)
            except (ProtocolError, AssertionError):
                # AssertionError: the model disagrees with a corrupt log, as it should
                slot = max(h.readers, default=-1) + 1
                h.readers.pop(slot, None)


@FAST
@given(scenarios(), st.lists(corruptions(), min_size=1, max_size=3), st.data())
def test_corruption_raises_protocol_error_or_is_harmless(
    scenario: tuple[int, list[tuple[object, ...]], list[int]],
    hits: list[tuple[str, int, int]],
    data: st.DataObject,
) -> None:
    capacity, ops, lengths = scenario
    h = Harness(capacity, 4)
    try:
        h.subscribe(T.DROP_OLDEST, True)
        h.subscribe(T.BLOCK, True)
        run(h, ops, lengths)
        data_hit = False
        for how in hits:
            data_hit |= corrupt(h, how)
        more = data.draw(st.lists(lengths_strategy(capacity), min_size=1, max_size=6))
        hostile_round(h, data_hit, more)
        # the views: whatever check_header says, never an exception other than ProtocolError
        with contextlib.suppress(ProtocolError):
            T.check_header(h.w.hq, h.w.hi, T.region_size(capacity, 4), "t")
    finally:
        h.close()


@pytest.mark.parametrize(
    ("head", "seq"),
    [(2**64 - 16, 5), (24, 2**64 - 1), (2**63, 5)],
    ids=["head-at-2**64", "seq-at-2**64", "head-at-2**63"],
)
def test_forged_counters_at_the_top_of_u64(head: int, seq: int) -> None:
    """A forged, self-consistent position or number near 2**64: publishing must raise
    ProtocolError, not ValueError (storing 2**64 into a u64), and readers never return
    anything that was not published."""
    h = Harness(256, 2)
    try:
        hq = h.w.hq
        hq[T.Q_GEN] = 0
        hq[T.Q_PAIR], hq[T.Q_PAIR + 1] = head, seq
        hq[T.Q_HEAD] = hq[T.Q_TAIL] = head
        r = None
        try:
            h.w.register(0, T.DROP_OLDEST, True, 1)
        except ProtocolError:
            pass
        else:
            r = T.LogReader(h.mm, 256, 2, "t", 0, lambda: None)
        sent = []
        for n in range(40):
            data = payload(n, 16 * (n % 3))
            try:
                h.w.load()
                if h.w.put(data) >= 0:
                    h.w.commit()
                    sent.append(data)
            except ProtocolError:
                pass
            if r is None:
                continue
            try:
                got = r.take()
            except (ProtocolError, T.Overrun):
                continue
            assert got is AGAIN or got in sent
        if r is not None:
            r.release()
    finally:
        h.close()


@pytest.mark.parametrize("index", [T.Q_GEN, T.Q_EPOCH], ids=["gen", "epoch"])
def test_forged_counters_that_wrap(index: int) -> None:
    """The commit counter and the block epoch at 2**64 - 1 (forged): they wrap; storing
    2**64 raised ValueError from a publish or a subscribe."""
    h = Harness(256, 2)
    try:
        h.subscribe(T.BLOCK, False)
        h.w.hq[index] = 2**64 - 1
        for n in range(20):
            while h.publish(16 * (n % 4)) >= 0:
                h.take(0)
            h.take(0)
        h.subscribe(T.DROP_OLDEST, True)
        h.unsubscribe(0)
        h.check_totals()
    finally:
        h.close()
