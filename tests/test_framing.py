"""Tests for the sans-IO framing layer (``aioipc.framing``): no I/O happens here."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from itertools import pairwise

import pytest
from anyio import BrokenResourceError, EndOfStream
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aioipc.errors import MessageTooLargeError, ProtocolError
from aioipc.framing import (
    CHUNK_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    FLAG_ANCILLARY,
    GOODBYE_FRAME,
    HEADER_SIZE,
    MAX_CHUNK_PAYLOAD,
    PIPE_BUF,
    ChunkDecoder,
    Encoder,
    EndPolicy,
    FrameDecoder,
    FrameTooLargeError,
    UncleanEndError,
    encode_chunks,
    encode_goodbye_chunk,
    encode_header,
    make_decoder,
)

#: The size above which the decoder collects a frame as a list of pieces (the "big frame"
#: path in ``FrameDecoder.next_frame``). Mirrors ``aioipc.framing._BIG_FRAME``.
BIG = 64 * 1024
MAX_LENGTH = 2**31 - 2  # all ones is the goodbye
LAST_CHUNK = 1 << 31
FIRST_CHUNK = 1 << 30

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=10, deadline=None)

Message = tuple[bytes, int]  # (payload, flags)


# --------------------------------------------------------------------------- helpers


def _pattern(size: int, rot: int) -> bytes:
    """``size`` bytes of ``bytes(range(256))`` rotated by ``rot``: cheap, big, recognisable."""
    base = bytes(range(256))
    base = base[rot:] + base[:rot]
    return (base * (size // 256 + 1))[:size]


def frame(payload: bytes, flags: int = 0) -> bytes:
    return encode_header(len(payload), flags) + payload


def encode_stream(msgs: list[Message]) -> bytes:
    """The frames, then the goodbye a sender that closes properly writes."""
    return b"".join(frame(payload, flags) for payload, flags in msgs) + GOODBYE_FRAME


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates allowed -> empty pieces)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def drain(dec: FrameDecoder) -> list[Message]:
    out: list[Message] = []
    while (msg := dec.next_frame()) is not None:
        out.append((msg, dec.last_flags))
    return out


def decode_pieces(
    pieces: list[bytes],
    drain_after: Callable[[int], bool] = lambda _: True,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> tuple[FrameDecoder, list[Message]]:
    dec = FrameDecoder(max_size)
    out: list[Message] = []
    for i, piece in enumerate(pieces):
        dec.feed(piece)
        if drain_after(i):
            out += drain(dec)
    out += drain(dec)
    return dec, out


def assert_clean(dec: FrameDecoder) -> None:
    """Nothing left over, and the stream ends cleanly once the goodbye is there."""
    assert dec.next_frame() is None
    assert dec.buffered == 0
    assert dec.wanted() == 0
    if not dec.said_goodbye:
        dec.feed(GOODBYE_FRAME)
        assert dec.next_frame() is None
    dec.check_eof()


# --------------------------------------------------------------------------- strategies

small_messages = st.one_of(st.binary(max_size=64), st.binary(max_size=3000))
# Around and above the big-frame threshold, without asking hypothesis for 64 KiB of choices.
big_messages = st.builds(
    _pattern, st.integers(BIG - 300, BIG + 40_000), st.integers(min_value=0, max_value=255)
)
flags = st.sampled_from([0, FLAG_ANCILLARY])
any_message = st.tuples(
    st.one_of(small_messages, small_messages, small_messages, big_messages), flags
)
message_lists = st.lists(any_message, max_size=8)
# For one-byte-at-a-time feeding: keep the stream short.
short_message_lists = st.lists(
    st.tuples(st.one_of(small_messages, small_messages, small_messages, big_messages), flags),
    max_size=5,
).filter(lambda msgs: sum(len(p) for p, _ in msgs) < 200_000)


# --------------------------------------------------------------------------- round trips


@FAST
@given(msgs=message_lists)
def test_round_trip_all_at_once(msgs: list[Message]) -> None:
    dec, out = decode_pieces([encode_stream(msgs)])
    assert out == msgs
    assert_clean(dec)


@SLOW
@given(msgs=short_message_lists)
def test_round_trip_one_byte_at_a_time(msgs: list[Message]) -> None:
    stream = encode_stream(msgs)
    dec, out = decode_pieces([stream[i : i + 1] for i in range(len(stream))])
    assert out == msgs
    assert_clean(dec)


@FAST
@given(msgs=message_lists, data=st.data())
def test_round_trip_random_splits(msgs: list[Message], data: st.DataObject) -> None:
    stream = encode_stream(msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    dec, out = decode_pieces(split_at(stream, cuts))
    assert out == msgs
    assert_clean(dec)


@FAST
@given(msgs=message_lists, data=st.data())
def test_round_trip_random_splits_lazy_drain(msgs: list[Message], data: st.DataObject) -> None:
    """Several pieces may be fed before frames are taken out (completed frames pile up)."""
    stream = encode_stream(msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    pieces = split_at(stream, cuts)
    drain_points = data.draw(st.sets(st.integers(0, len(pieces) - 1)), label="drain_points")
    dec, out = decode_pieces(pieces, drain_after=drain_points.__contains__)
    assert out == msgs
    assert_clean(dec)


@pytest.mark.parametrize(
    "size", [0, 1, BIG - 5, BIG - 4, BIG - 1, BIG, BIG + 1, 3 * BIG + 7, 1_000_000]
)
@pytest.mark.parametrize("chunk", [1000, 4096, BIG - 1, BIG + 3])
def test_round_trip_sizes_around_big_threshold(size: int, chunk: int) -> None:
    msgs: list[Message] = [(_pattern(size, 7), 0), (b"after", FLAG_ANCILLARY), (b"", 0)]
    stream = encode_stream(msgs)
    dec, out = decode_pieces([stream[i : i + chunk] for i in range(0, len(stream), chunk)])
    assert out == msgs
    assert_clean(dec)


def test_big_frame_completed_then_more_fed_before_taking_it_out() -> None:
    big = _pattern(BIG + 1000, 3)
    nxt = _pattern(5000, 9)
    third = b"third"
    stream = frame(big) + frame(nxt, FLAG_ANCILLARY) + frame(third)
    big_end = HEADER_SIZE + len(big)

    dec = FrameDecoder()
    dec.feed(stream[:100])
    assert dec.next_frame() is None  # starts collecting the big frame
    assert dec.wanted() == big_end - 100
    # Completes the big frame and brings part of the next frame along.
    dec.feed(stream[100 : big_end + 10])
    assert dec.wanted() == 0
    # More data before the completed big frame is taken out.
    dec.feed(stream[big_end + 10 : big_end + 3000])
    dec.feed(stream[big_end + 3000 :])
    assert drain(dec) == [(big, 0), (nxt, FLAG_ANCILLARY), (third, 0)]
    assert_clean(dec)


def test_big_frame_piece_ends_exactly_at_frame_end_then_more_fed() -> None:
    big = _pattern(2 * BIG, 1)
    stream = frame(big) + frame(b"x" * 10) + frame(_pattern(BIG, 2))
    big_end = HEADER_SIZE + len(big)
    dec = FrameDecoder()
    dec.feed(stream[:HEADER_SIZE])  # header only
    assert dec.next_frame() is None
    assert dec.wanted() == len(big)
    dec.feed(stream[HEADER_SIZE:big_end])  # exactly the rest of the big frame
    dec.feed(stream[big_end : big_end + 2])
    dec.feed(stream[big_end + 2 :])
    assert drain(dec) == [(big, 0), (b"x" * 10, 0), (_pattern(BIG, 2), 0)]
    assert_clean(dec)


def test_buffered_counts_fed_but_unreturned_bytes() -> None:
    dec = FrameDecoder()
    assert dec.buffered == 0
    stream = frame(b"abc") + frame(_pattern(1000, 0))
    dec.feed(stream[:20])
    assert dec.buffered == 20
    assert dec.next_frame() == b"abc"
    assert dec.buffered == 20 - 7
    assert dec.next_frame() is None
    assert dec.buffered == 20 - 7
    dec.feed(stream[20:])
    assert dec.buffered == len(stream) - 7
    assert dec.next_frame() == _pattern(1000, 0)
    assert_clean(dec)


def test_peer_using_struct_pack_is_understood() -> None:
    msgs = [b"one", b"", b"three" * 1000]
    dec = FrameDecoder()
    dec.feed(b"".join(struct.pack("!I", len(m)) + m for m in msgs))
    assert [m for m, _ in drain(dec)] == msgs


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("size", [0, 10, BIG + 100])
def test_last_flags(size: int) -> None:
    payload = _pattern(size, 5)
    dec = FrameDecoder()
    dec.feed(frame(payload, FLAG_ANCILLARY) + frame(payload) + frame(payload, FLAG_ANCILLARY))
    assert dec.next_frame() == payload
    assert dec.last_flags == FLAG_ANCILLARY
    assert dec.next_frame() == payload
    assert dec.last_flags == 0
    assert dec.next_frame() == payload
    assert dec.last_flags == FLAG_ANCILLARY
    assert_clean(dec)


def test_flag_bit_is_not_part_of_the_length() -> None:
    dec = FrameDecoder(max_size=10)
    dec.feed(frame(b"0123456789", FLAG_ANCILLARY))
    assert dec.next_frame() == b"0123456789"
    assert dec.last_flags == FLAG_ANCILLARY


# --------------------------------------------------------------------------- encode_header


def test_encode_header_values() -> None:
    assert encode_header(0) == b"\x00\x00\x00\x00"
    assert encode_header(5) == b"\x00\x00\x00\x05"
    assert encode_header(5, FLAG_ANCILLARY) == b"\x80\x00\x00\x05"
    assert encode_header(MAX_LENGTH) == b"\x7f\xff\xff\xfe"
    assert encode_header(MAX_LENGTH, FLAG_ANCILLARY) == b"\xff\xff\xff\xfe"
    # All ones (with or without the flag) is not a length: the goodbye is ff ff ff ff.
    assert GOODBYE_FRAME == b"\xff\xff\xff\xff"
    assert len(encode_header(12345)) == HEADER_SIZE


@pytest.mark.parametrize("length", [-1, -(2**40), 2**31 - 1, 2**31, 2**32, 2**40])
def test_encode_header_rejects_bad_lengths(length: int) -> None:
    with pytest.raises(MessageTooLargeError) as info:
        encode_header(length)
    assert info.value.size == length
    assert info.value.limit == MAX_LENGTH


# --------------------------------------------------------------------------- max_size


@pytest.mark.parametrize("limit", [0, 1, 1000, BIG, 10 * BIG, DEFAULT_MAX_MESSAGE_SIZE])
def test_header_over_max_size_raises_before_payload(limit: int) -> None:
    dec = FrameDecoder(max_size=limit)
    dec.feed(encode_header(limit + 1))  # the header alone, no payload at all
    with pytest.raises(FrameTooLargeError, match=rf"\b{limit}\b") as info:
        dec.next_frame()
    err = info.value
    assert isinstance(err, MessageTooLargeError)
    assert isinstance(err, ProtocolError)
    assert err.size == limit + 1
    assert err.limit == limit
    assert str(limit + 1) in str(err)


@pytest.mark.parametrize("limit", [0, 1, 1000, BIG, BIG + 1])
def test_frame_of_exactly_max_size_is_accepted(limit: int) -> None:
    payload = _pattern(limit, 11)
    dec = FrameDecoder(max_size=limit)
    dec.feed(frame(payload) + frame(payload[:1]))
    assert dec.next_frame() == payload
    assert dec.next_frame() == payload[:1]
    assert_clean(dec)


def test_oversized_frame_after_good_frames() -> None:
    dec = FrameDecoder(max_size=100)
    dec.feed(frame(b"ok") + encode_header(101) + b"x" * 101)
    assert dec.next_frame() == b"ok"
    with pytest.raises(FrameTooLargeError, match=r"\b100\b"):
        dec.next_frame()


def test_max_size_property() -> None:
    assert FrameDecoder().max_size == DEFAULT_MAX_MESSAGE_SIZE
    assert FrameDecoder(123).max_size == 123
    assert ChunkDecoder().max_size == DEFAULT_MAX_MESSAGE_SIZE
    assert ChunkDecoder(123).max_size == 123


@pytest.mark.parametrize("bad", [-1, -(2**31)])
def test_negative_max_size_is_a_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="max_size"):
        FrameDecoder(bad)
    with pytest.raises(ValueError, match="max_size"):
        ChunkDecoder(bad)


def test_frame_decoder_max_size_beyond_length_field_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_size"):
        FrameDecoder(MAX_LENGTH + 1)
    FrameDecoder(MAX_LENGTH)  # the largest the length field can carry is fine


# --------------------------------------------------------------------------- corrupt prefix

GARBAGE = [
    b"\xff\xff\xff\xfe",
    b"\x7f\xff\xff\xff",
    b"hello world",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b'{"jsonrpc": "2.0"}\n',
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_corrupt_prefix_raises_without_allocating(garbage: bytes) -> None:
    tracemalloc.start()
    try:
        dec = FrameDecoder()
        dec.feed(garbage)
        with pytest.raises(ProtocolError) as info:
            dec.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(info.value, FrameTooLargeError)
    assert str(DEFAULT_MAX_MESSAGE_SIZE) in str(info.value)
    assert peak < 1024 * 1024


def test_huge_announced_frame_under_max_size_is_not_preallocated() -> None:
    """Even when the limit allows 2 GiB, a header alone must not make the decoder allocate."""
    tracemalloc.start()
    try:
        dec = FrameDecoder(max_size=MAX_LENGTH)
        dec.feed(b"\x7f\xff\xff\xfe" + b"abc")
        assert dec.next_frame() is None
        dec.feed(b"more")
        assert dec.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert dec.wanted() == MAX_LENGTH - 7
    with pytest.raises(ProtocolError, match="truncated"):
        dec.check_eof()


# --------------------------------------------------------------------------- truncation


def test_empty_decoder_check_eof_passes() -> None:
    FrameDecoder().check_eof()
    ChunkDecoder().check_eof()


def test_check_eof_after_complete_frames_and_goodbye_passes() -> None:
    dec = FrameDecoder()
    dec.feed(frame(b"a") + frame(b"") + GOODBYE_FRAME)
    assert drain(dec) == [(b"a", 0), (b"", 0)]
    assert dec.said_goodbye
    dec.check_eof()


def test_frames_without_goodbye_end_uncleanly() -> None:
    """A peer killed between messages leaves whole frames and no goodbye."""
    dec = FrameDecoder()
    dec.feed(frame(b"a"))
    assert drain(dec) == [(b"a", 0)]
    with pytest.raises(UncleanEndError, match="no goodbye"):
        dec.check_eof()


def test_a_goodbye_alone_is_a_clean_end() -> None:
    dec = FrameDecoder()
    dec.feed(GOODBYE_FRAME)
    assert dec.next_frame() is None
    dec.check_eof()


def test_frames_after_a_goodbye_need_another_goodbye() -> None:
    """Another process may hold a copy of the write end: its frames may follow a goodbye,
    and then the end of stream is clean only if it said goodbye too."""
    dec = FrameDecoder()
    dec.feed(frame(b"parent") + GOODBYE_FRAME + frame(b"child"))
    assert drain(dec) == [(b"parent", 0), (b"child", 0)]
    with pytest.raises(UncleanEndError):
        dec.check_eof()
    dec.feed(GOODBYE_FRAME[:1])
    assert dec.next_frame() is None
    with pytest.raises(ProtocolError, match="truncated"):
        dec.check_eof()  # a goodbye cut short is a truncated frame
    dec.feed(GOODBYE_FRAME[1:] + GOODBYE_FRAME)
    assert dec.next_frame() is None
    dec.check_eof()


@pytest.mark.parametrize(
    ("payload_size", "fed"),
    [(10, 1), (10, 3), (10, 4), (10, 13), (BIG - 1, 4), (BIG - 1, BIG + 2)],
)
def test_truncated_frame_check_eof_raises(payload_size: int, fed: int) -> None:
    dec = FrameDecoder()
    dec.feed(frame(_pattern(payload_size, 0))[:fed])
    assert dec.next_frame() is None
    assert dec.buffered == fed
    with pytest.raises(ProtocolError, match=rf"\b{fed} bytes"):
        dec.check_eof()


# (messages, index of the frame that is cut, bytes of that frame kept, inner split points)
TruncCase = tuple[list[Message], int, int, list[int]]


@st.composite
def truncated_streams(draw: st.DrawFn) -> TruncCase:
    msgs = draw(st.lists(any_message, min_size=1, max_size=5))
    n_complete = draw(st.integers(0, len(msgs) - 1))
    frame_len = HEADER_SIZE + len(msgs[n_complete][0])
    # Cut strictly inside that frame; favour cuts in and right after the header.
    edges = [o for o in (1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1) if o < frame_len]
    into = draw(st.one_of(st.sampled_from(edges), st.integers(1, frame_len - 1)))
    total = sum(HEADER_SIZE + len(p) for p, _ in msgs[:n_complete]) + into
    inner = draw(st.lists(st.integers(0, total), max_size=5))
    return msgs, n_complete, into, inner


# The explicit example is the regression case below: a 64 KiB frame cut right after its header.
@settings(max_examples=60, deadline=None)
@given(case=truncated_streams())
@example(case=([(_pattern(BIG, 0), 0)], 0, HEADER_SIZE, []))
def test_truncated_stream_anywhere_inside_a_frame(case: TruncCase) -> None:
    msgs, n_complete, into, inner = case
    frames = [frame(p, f) for p, f in msgs]
    truncated = b"".join(frames[:n_complete]) + frames[n_complete][:into]
    dec, out = decode_pieces(split_at(truncated, inner))
    assert out == msgs[:n_complete]
    with pytest.raises(ProtocolError, match="truncated"):
        dec.check_eof()


# --------------------------------------------------------------------------- chunked format


def _writer_message(writer: int, index: int, size: int) -> bytes:
    tag = f"<{writer}:{index}>".encode()
    return (tag * (size // len(tag) + 1))[:size]


def decode_chunk_pieces(
    pieces: list[bytes], max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> tuple[ChunkDecoder, list[tuple[int, bytes]]]:
    dec = ChunkDecoder(max_size)
    out: list[tuple[int, bytes]] = []
    for piece in pieces:
        dec.feed(piece)
        while (msg := dec.next_frame()) is not None:
            out.append((dec.last_writer, msg))
    return dec, out


def drain_chunks(dec: ChunkDecoder) -> list[bytes]:
    out: list[bytes] = []
    while (msg := dec.next_frame()) is not None:
        out.append(msg)
    return out


chunk_sizes = st.one_of(
    st.integers(0, 50),
    st.integers(0, 20_000),
    st.sampled_from(
        [MAX_CHUNK_PAYLOAD - 1, MAX_CHUNK_PAYLOAD, MAX_CHUNK_PAYLOAD + 1, 2 * MAX_CHUNK_PAYLOAD]
    ),
)


@FAST
@given(size=chunk_sizes, writer=st.integers(0, 2**64 - 1))
def test_encode_chunks_shape(size: int, writer: int) -> None:
    data = _pattern(size, 0)
    chunks = encode_chunks(data, writer)
    assert len(chunks) == max(1, -(-size // MAX_CHUNK_PAYLOAD))
    payload = b""
    for i, chunk in enumerate(chunks):
        assert CHUNK_HEADER_SIZE <= len(chunk) <= PIPE_BUF
        wid, word = struct.unpack_from("!QI", chunk)
        assert wid == writer
        assert bool(word & LAST_CHUNK) == (i == len(chunks) - 1)
        assert bool(word & FIRST_CHUNK) == (i == 0)
        assert word & ~(LAST_CHUNK | FIRST_CHUNK) == len(chunk) - CHUNK_HEADER_SIZE
        payload += chunk[CHUNK_HEADER_SIZE:]
    assert payload == data
    assert encode_chunks(memoryview(data), writer) == chunks


@FAST
@given(
    writers=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4, unique=True).flatmap(
        lambda ids: st.tuples(
            st.just(ids),
            st.lists(st.lists(chunk_sizes, max_size=5), min_size=len(ids), max_size=len(ids)),
        )
    ),
    data=st.data(),
)
def test_chunks_interleaved_writers_round_trip(
    writers: tuple[list[int], list[list[int]]], data: st.DataObject
) -> None:
    ids, sizes = writers
    expected = {
        wid: [_writer_message(w, i, n) for i, n in enumerate(ns)]
        for w, (wid, ns) in enumerate(zip(ids, sizes, strict=True))
    }
    queues = {
        wid: [*(c for m in msgs for c in encode_chunks(m, wid)), encode_goodbye_chunk(wid)]
        for wid, msgs in expected.items()
    }
    for chunks in queues.values():
        assert all(len(c) <= PIPE_BUF for c in chunks)
    # An arbitrary interleaving that keeps each writer's own chunk order.
    order = data.draw(
        st.permutations([wid for wid, chunks in queues.items() for _ in chunks]), label="order"
    )
    positions = dict.fromkeys(queues, 0)
    stream_parts = []
    for wid in order:
        stream_parts.append(queues[wid][positions[wid]])
        positions[wid] += 1
    stream = b"".join(stream_parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")

    dec, out = decode_chunk_pieces(split_at(stream, cuts))

    got: dict[int, list[bytes]] = {wid: [] for wid in ids}
    for wid, msg in out:
        got[wid].append(msg)
    assert got == expected
    assert dec.next_frame() is None
    assert dec.buffered == 0
    assert dec.wanted() == 0
    dec.check_eof()


def test_chunks_two_writers_interleaved_by_hand() -> None:
    a = _pattern(3 * MAX_CHUNK_PAYLOAD + 5, 1)
    b = _pattern(MAX_CHUNK_PAYLOAD + 1, 2)
    ca, cb = encode_chunks(a, 1), encode_chunks(b, 2)
    stream = ca[0] + cb[0] + ca[1] + encode_chunks(b"tiny", 3)[0] + cb[1] + ca[2] + ca[3]
    _, out = decode_chunk_pieces([stream])
    assert out == [(3, b"tiny"), (2, b), (1, a)]


@pytest.mark.parametrize("last", [0, LAST_CHUNK])
@pytest.mark.parametrize("length", [MAX_CHUNK_PAYLOAD + 1, PIPE_BUF, LAST_CHUNK - 1])
def test_corrupt_chunk_header_raises(length: int, last: int) -> None:
    dec = ChunkDecoder()
    dec.feed(struct.pack("!QI", 7, length | last))  # the header alone suffices
    with pytest.raises(ProtocolError, match="PIPE_BUF") as info:
        dec.next_frame()
    assert str(PIPE_BUF) in str(info.value)


def test_corrupt_chunk_header_after_good_chunks() -> None:
    dec = ChunkDecoder()
    dec.feed(encode_chunks(b"fine", 1)[0] + b"hello world, not a chunk header")
    assert dec.next_frame() == b"fine"
    with pytest.raises(ProtocolError, match="PIPE_BUF"):
        dec.next_frame()


@pytest.mark.parametrize("limit", [0, 100, MAX_CHUNK_PAYLOAD, 5000, 3 * MAX_CHUNK_PAYLOAD])
def test_chunk_writer_over_max_size_raises(limit: int) -> None:
    dec = ChunkDecoder(max_size=limit)
    ok = _pattern(limit, 4)
    too_big = _pattern(limit + 1, 4)
    dec.feed(b"".join(encode_chunks(ok, 9)))
    assert dec.next_frame() == ok  # exactly max_size is accepted
    dec.feed(b"".join(encode_chunks(too_big, 9)))
    with pytest.raises(FrameTooLargeError, match=rf"\b{limit}\b") as info:
        drain_chunks(dec)
    assert isinstance(info.value, MessageTooLargeError)
    assert isinstance(info.value, ProtocolError)
    assert info.value.limit == limit


def test_chunk_max_size_is_per_writer() -> None:
    limit = 5000
    dec = ChunkDecoder(max_size=limit)
    a, b = _pattern(limit, 1), _pattern(limit, 2)
    ca, cb = encode_chunks(a, 1), encode_chunks(b, 2)
    dec.feed(ca[0] + cb[0] + ca[1] + cb[1])
    assert dec.next_frame() == a
    assert dec.last_writer == 1
    assert dec.next_frame() == b
    assert dec.last_writer == 2


@pytest.mark.parametrize(
    "fed", [1, CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + 1, PIPE_BUF, PIPE_BUF + 5]
)
def test_chunk_check_eof_unfinished_message(fed: int) -> None:
    stream = b"".join(encode_chunks(_pattern(3 * MAX_CHUNK_PAYLOAD, 0), 5))
    dec = ChunkDecoder()
    dec.feed(stream[:fed])
    assert dec.next_frame() is None
    with pytest.raises(ProtocolError, match="truncated"):
        dec.check_eof()


def test_chunk_check_eof_names_byte_count() -> None:
    dec = ChunkDecoder()
    chunks = encode_chunks(_pattern(2 * MAX_CHUNK_PAYLOAD, 0), 5)
    dec.feed(chunks[0])
    assert dec.next_frame() is None
    assert dec.buffered == MAX_CHUNK_PAYLOAD
    with pytest.raises(ProtocolError, match=rf"\b{MAX_CHUNK_PAYLOAD} bytes"):
        dec.check_eof()
    dec.feed(chunks[1])
    assert dec.next_frame() == _pattern(2 * MAX_CHUNK_PAYLOAD, 0)
    with pytest.raises(UncleanEndError, match="1 writer"):
        dec.check_eof()
    dec.feed(encode_goodbye_chunk(5))
    assert dec.next_frame() is None
    dec.check_eof()


def test_chunk_empty_message() -> None:
    dec = ChunkDecoder()
    dec.feed(b"".join(encode_chunks(b"", 42)) + encode_goodbye_chunk(42))
    assert dec.next_frame() == b""
    assert dec.last_writer == 42
    assert dec.next_frame() is None
    dec.check_eof()


# ------------------------------------------------------------- regression: big-frame header
#
# Once next_frame() moved a frame of >= 64 KiB to the "big frame" path, its 4 header bytes
# were no longer counted: a peer dying right after such a header went unnoticed at EOF.


def test_check_eof_detects_truncation_after_only_a_big_frame_header() -> None:
    dec = FrameDecoder()
    dec.feed(encode_header(BIG))
    assert dec.next_frame() is None
    with pytest.raises(ProtocolError, match=r"\b4 bytes"):
        dec.check_eof()


def test_buffered_is_not_changed_by_starting_a_big_frame() -> None:
    dec = FrameDecoder()
    dec.feed(frame(_pattern(BIG + 10, 0))[:20])
    assert dec.buffered == 20
    assert dec.next_frame() is None
    assert dec.buffered == 20


@pytest.mark.parametrize("fed", [5, 5000, BIG + 3])
def test_truncated_big_frame_check_eof_counts_like_a_small_one(fed: int) -> None:
    dec = FrameDecoder()
    dec.feed(frame(_pattern(BIG + 5, 0))[:fed])
    assert dec.next_frame() is None
    with pytest.raises(ProtocolError, match=rf"\b{fed} bytes"):
        dec.check_eof()


# ------------------------------------------------- chunked format: bounded unfinished messages
#
# Issue 10, item 4: a raw writer sending the first chunk of a message under each of 1,000
# fake writer ids held 1,024 x max_size bytes (64 GiB) of unfinished messages.


def _first_chunks(writers: range, size: int) -> bytes:
    """The first chunk of a ``size``-byte message from each writer, and nothing more."""
    return b"".join(encode_chunks(_pattern(size, w % 256), w)[0] for w in writers)


def test_unfinished_messages_are_bounded_by_max_partial_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 10 * MAX_CHUNK_PAYLOAD
    dec = ChunkDecoder(max_size=limit, max_partial_bytes=2 * limit)
    assert dec.max_partial_bytes == 2 * limit
    dec.feed(_first_chunks(range(1000), 3 * MAX_CHUNK_PAYLOAD))
    with caplog.at_level("WARNING", logger="aioipc.framing"):
        assert dec.next_frame() is None
    assert dec.buffered <= 2 * limit
    # Each held message also counts what Python spends to hold it: a few fewer fit.
    assert 1000 - 2 * limit // MAX_CHUNK_PAYLOAD <= dec.dropped < 1000
    assert "max_partial_bytes" in caplog.text
    # The writers kept are the most recently active ones, and they still finish whole.
    survivor = 999
    rest = encode_chunks(_pattern(3 * MAX_CHUNK_PAYLOAD, survivor % 256), survivor)[1:]
    dec.feed(b"".join(rest))
    assert dec.next_frame() == _pattern(3 * MAX_CHUNK_PAYLOAD, survivor % 256)
    # A dropped writer's later chunks are skipped, never delivered as a torn message...
    dropped = 0
    dec.feed(b"".join(encode_chunks(_pattern(3 * MAX_CHUNK_PAYLOAD, 0), dropped)[1:]))
    assert dec.next_frame() is None
    # ...and its next message arrives whole.
    dec.feed(b"".join(encode_chunks(b"next", dropped)))
    assert dec.next_frame() == b"next"


def test_unfinished_messages_are_bounded_by_writer_count() -> None:
    dec = ChunkDecoder()
    dec.feed(_first_chunks(range(3000), MAX_CHUNK_PAYLOAD + 1))
    assert dec.next_frame() is None
    assert dec.dropped == 3000 - 1024
    assert dec.buffered == 1024 * MAX_CHUNK_PAYLOAD


def test_default_max_partial_bytes_is_four_messages() -> None:
    assert ChunkDecoder(max_size=1000).max_partial_bytes == 4000
    with pytest.raises(ValueError, match="max_partial_bytes"):
        ChunkDecoder(max_size=1000, max_partial_bytes=999)


def test_a_new_first_chunk_drops_the_writers_unfinished_message() -> None:
    dec = ChunkDecoder()
    first = encode_chunks(_pattern(2 * MAX_CHUNK_PAYLOAD, 1), 5)
    dec.feed(first[0] + b"".join(encode_chunks(b"fresh", 5)))
    assert dec.next_frame() == b"fresh"
    assert dec.buffered == 0
    dec.feed(first[1])  # the abandoned message's last chunk: skipped
    assert dec.next_frame() is None


def test_rest_of_an_oversized_message_is_skipped() -> None:
    dec = ChunkDecoder(max_size=MAX_CHUNK_PAYLOAD)
    dec.feed(b"".join(encode_chunks(_pattern(3 * MAX_CHUNK_PAYLOAD, 1), 5)))
    with pytest.raises(FrameTooLargeError):
        dec.next_frame()
    assert dec.next_frame() is None  # its third chunk is skipped, not a new message
    dec.feed(b"".join(encode_chunks(b"ok", 5)))
    assert dec.next_frame() == b"ok"


@pytest.mark.parametrize(
    "word", [1 << 12, 1 << 28, (1 << 29) | 1, (1 << 29) | FIRST_CHUNK, (1 << 29) | LAST_CHUNK]
)
def test_impossible_chunk_words_are_corrupt(word: int) -> None:
    dec = ChunkDecoder()
    dec.feed(struct.pack("!QI", 7, word) + bytes(16))
    with pytest.raises(ProtocolError, match="corrupt chunk header"):
        dec.next_frame()


def test_each_writer_that_spoke_must_say_goodbye() -> None:
    dec = ChunkDecoder()
    dec.feed(
        b"".join(encode_chunks(b"a", 1))
        + b"".join(encode_chunks(b"b", 2))
        + encode_goodbye_chunk(1)
        + encode_goodbye_chunk(3)  # a writer that never spoke may say goodbye too
    )
    assert [dec.next_frame(), dec.next_frame(), dec.next_frame()] == [b"a", b"b", None]
    with pytest.raises(UncleanEndError, match="1 writer"):
        dec.check_eof()
    dec.feed(encode_goodbye_chunk(2))
    assert dec.next_frame() is None
    dec.check_eof()


# ------------------------------------------- the strategies: Encoder and EndPolicy


def _through_fork(child: Callable[[], bytes]) -> bytes:
    """Run ``child()`` in a forked child (a real fork, as gunicorn and multiprocessing do)
    and return what it returned; the parent's state is left as it was."""
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, child())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return data


def test_encoder_owes_a_goodbye_only_after_it_spoke_and_pays_it_once() -> None:
    for framing, bye in (("frames", GOODBYE_FRAME), ("chunks", None)):
        enc = Encoder(framing)  # type: ignore[arg-type]
        assert enc.take_goodbye() is None  # sent nothing: needs no goodbye
        enc.spoke()
        got = enc.take_goodbye()
        assert got == (bye if bye is not None else encode_goodbye_chunk(enc.writer_id))
        assert enc.take_goodbye() is None  # paid
    raw = Encoder("raw")
    raw.spoke()
    assert raw.take_goodbye() is None  # raw bytes have no goodbye


def test_encoder_formats() -> None:
    frames, chunks, raw = Encoder("frames"), Encoder("chunks"), Encoder("raw")
    assert b"".join(frames.encode(b"abc")) == struct.pack("!I", 3) + b"abc"
    assert b"".join(frames.encode(b"")) == struct.pack("!I", 0)
    assert frames.join(b"abc") == struct.pack("!I", 3) + b"abc"
    assert chunks.encode(b"abc") == encode_chunks(b"abc", chunks.writer_id)
    assert raw.encode(b"") == []
    assert raw.join(b"abc") == b"abc"
    decoder = make_decoder("frames", 16)
    decoder.feed(b"".join(frames.encode(b"abc")))
    assert decoder.next_frame() == b"abc"


def test_a_handed_over_length_prefixed_encoder_leaves_the_goodbye_to_the_copy() -> None:
    enc = Encoder("frames")
    enc.spoke()
    assert enc.hand_over() is True  # the copy in the other process owes it
    assert enc.take_goodbye() is None  # and this end never writes one
    copy = Encoder("frames")
    copy.inherit_goodbye(True)
    assert copy.take_goodbye() == GOODBYE_FRAME
    fifo = Encoder("chunks")
    fifo.spoke()
    assert fifo.hand_over() is False  # a FIFO writer still says its own goodbye
    assert fifo.take_goodbye() == encode_goodbye_chunk(fifo.writer_id)


def test_a_fork_forgives_a_frames_goodbye_and_renews_a_fifo_writer_id() -> None:
    frames, fifo = Encoder("frames"), Encoder("chunks")
    frames.spoke()
    fifo.spoke()
    parent_id = fifo.writer_id

    def in_child() -> bytes:
        forgiven = frames.take_goodbye() is None
        return b"%d %d" % (forgiven, fifo.writer_id)

    forgiven, child_id = _through_fork(in_child).split()
    assert forgiven == b"1"  # the child did not send since the fork
    assert int(child_id) != parent_id  # its chunks must not splice into the parent's
    assert fifo.writer_id == parent_id
    assert frames.take_goodbye() is None  # forgiven in the parent as well
    frames.spoke()  # sending again after the fork: this process is the writer
    assert frames.take_goodbye() == GOODBYE_FRAME


def test_end_policy_a_fifo_reader_before_any_writer_sees_no_false_end() -> None:
    end = EndPolicy(make_decoder("chunks", 64), "FIFO /x", trust_first_eof=False)
    assert not end.is_end(lambda: False)  # b"" and nobody came yet: keep waiting
    assert end.is_end(lambda: True)  # a writer came and went
    end.writer_seen()
    assert end.is_end(lambda: pytest.fail("no need to ask once a writer was seen"))


def test_end_policy_verdicts_stand() -> None:
    clean = EndPolicy(make_decoder("frames", 64), "pipe")
    with pytest.raises(EndOfStream):
        clean.conclude()
    assert clean.ended
    assert isinstance(clean.verdict(), EndOfStream)

    decoder = make_decoder("frames", 64)
    decoder.feed(struct.pack("!I", 1) + b"x")
    assert decoder.next_frame() == b"x"
    killed = EndPolicy(decoder, "pipe (read end)", peer="the writer")
    with pytest.raises(BrokenResourceError, match="the writer went away without closing"):
        killed.conclude()
    again = killed.verdict()
    assert isinstance(again, BrokenResourceError)
    assert "pipe (read end): the writer went away" in str(again)

    cut = make_decoder("frames", 64)
    cut.feed(struct.pack("!I", 5) + b"ab")
    assert cut.next_frame() is None
    with pytest.raises(BrokenResourceError, match="in the middle of a message"):
        EndPolicy(cut, "pipe").conclude()
