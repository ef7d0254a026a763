"""Sans-IO message framing: bytes in, whole messages out. No I/O happens in this module.

Two wire formats:

**Length prefix** (pipes, unix stream sockets, and any peer that frames the usual way).
Each message is a 4-byte big-endian header followed by the payload. The low 31 bits of
the header are the payload length; the top bit is a flag that aioipc's unix sockets set
on a frame that carries file descriptors. A peer that writes ``struct.pack("!I", len)``
before each message speaks this format. The all-ones header ``ff ff ff ff`` is the
**goodbye**: a sender that closes properly writes it after its last message, so that the
receiver can tell a peer that finished from one that was killed (see "End of stream").

**Chunked** (FIFOs with several writers). The kernel writes at most ``PIPE_BUF`` (4096)
bytes atomically, so a longer message from one writer can be cut by another writer's
bytes. Here every message is split into chunks that each fit in one atomic write::

    writer id (8 bytes, big-endian) | word (4 bytes) | payload (at most PIPE_BUF - 12 bytes)
    word: bit 31 = last chunk, bit 30 = first chunk, bit 29 = goodbye, bits 0-11 = length

and the decoder puts each writer's chunks back together, so messages of any size from
any number of writers arrive whole and never interleave. A goodbye chunk has no payload.

**Bounded memory.** A decoder enforces ``max_size`` from the header, before it allocates
anything for the payload. An incoming header that announces more than ``max_size`` raises
:exc:`FrameTooLargeError`, which is both a :exc:`MessageTooLargeError` and a
:exc:`ProtocolError`: a receiver cannot tell an oversized frame from a corrupt header, so
a length-prefixed stream cannot be resynchronised after it. The chunk decoder also bounds
what all writers' unfinished messages hold together (``max_partial_bytes``, and
:data:`MAX_PARTIAL_WRITERS` writers): beyond it, the least recently active writer's
unfinished message is dropped with a logged warning, so one hostile writer cannot make
the receiver hold ``writers x max_size`` bytes.

**End of stream.** When the transport ends, :meth:`FrameDecoder.check_eof` and
:meth:`ChunkDecoder.check_eof` raise :exc:`ProtocolError` if a message was cut short, and
:exc:`UncleanEndError` if a sender that sent messages did not say goodbye after its last
one: it was killed, crashed, or closed its end without closing the channel. A sender that
sent nothing leaves no trace, and needs no goodbye.

**Strategies.** What aioipc's fd channels (pipes, FIFOs, unix stream sockets) know of
their wire format lives here too, so that the transport only moves bytes and waits:
:class:`Encoder` (a sender's format, its FIFO writer id, and the goodbye it owes),
:func:`make_decoder` (a receiver's format, :class:`RawDecoder` for ``framing=False``)
and :class:`EndPolicy` (what an end of file means: a FIFO's false end before any
writer came, and the verdict, finished or killed).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NoReturn, Protocol

from anyio import BrokenResourceError, EndOfStream

from ._core.check import LONG_MAX, check_int
from .errors import MessageTooLargeError, ProtocolError

__all__ = [
    "CHUNK_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FLAG_ANCILLARY",
    "GOODBYE_FRAME",
    "HEADER_SIZE",
    "MAX_CHUNK_PAYLOAD",
    "MAX_FRAME_LENGTH",
    "MAX_PARTIAL_WRITERS",
    "PIPE_BUF",
    "Buffer",
    "ChunkDecoder",
    "Decoder",
    "Encoder",
    "EndPolicy",
    "FrameDecoder",
    "FrameTooLargeError",
    "Framing",
    "Owed",
    "RawDecoder",
    "UncleanEndError",
    "check_max_message_size",
    "check_max_partial_bytes",
    "check_size",
    "encode_chunks",
    "encode_goodbye_chunk",
    "encode_header",
    "make_decoder",
    "new_writer_id",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
HEADER_SIZE = 4
FLAG_ANCILLARY = 1 << 31
_LENGTH_MASK = FLAG_ANCILLARY - 1
_GOODBYE = 0xFFFFFFFF
#: The header a sender writes after its last message when it closes properly.
GOODBYE_FRAME = _GOODBYE.to_bytes(4, "big")
#: Largest length the 31-bit length field can carry (all ones is the goodbye).
MAX_FRAME_LENGTH = _LENGTH_MASK - 1

PIPE_BUF = 4096
CHUNK_HEADER_SIZE = 12
MAX_CHUNK_PAYLOAD = PIPE_BUF - CHUNK_HEADER_SIZE
_LAST_CHUNK = 1 << 31
_FIRST_CHUNK = 1 << 30
_BYE_CHUNK = 1 << 29
_CHUNK_LENGTH = 0xFFF
#: Most writers that may have a message in progress at once on one FIFO; beyond it (or
#: beyond ``max_partial_bytes``) the least recently active one's message is dropped.
MAX_PARTIAL_WRITERS = 1024
# A hostile writer can make drops as fast as it writes: log them at most this often.
_DROP_LOG_INTERVAL = 10.0
# Writers remembered as "sent messages, no goodbye yet", for the end-of-stream verdict.
# Beyond it the least recently active is forgotten, and the end can no longer be vouched
# for: it is reported unclean (a writer that cycles ids must not hide another's death).
_MAX_OPEN_WRITERS = 4096
_NOT_A_CHUNK_BIT = ~(_LAST_CHUNK | _FIRST_CHUNK | _BYE_CHUNK | _CHUNK_LENGTH)
# What Python spends to keep an unfinished message's piece (a bytes object, a list slot)
# and the message itself (its list and entry), counted against max_partial_bytes beside
# the payload, so that tiny chunks cannot hold more than the bound says.
_PIECE_COST = 64
_MESSAGE_COST = 256

_header = struct.Struct("!I")
# Only for lengths already checked against max_message_size (< 2**31).
_pack_header = _header.pack
_chunk_header = struct.Struct("!QI")
# Below this, a partial frame stays in the flat buffer; above it, the decoder collects the
# payload as a list of pieces and joins them once, so a large frame is copied once, not
# once per read.
_BIG_FRAME = 64 * 1024


#: Writers that owe a goodbye (ids) and how many more were forgotten: what a decoder
#: knows of the writers beyond the bytes it holds, handed on with the stream.
Owed = tuple[tuple[int, ...], int]

#: The wire formats of aioipc's fd channels. ``"frames"``: the length prefix (pipes, unix
#: stream sockets); ``"chunks"``: PIPE_BUF-atomic chunks with writer ids (FIFOs);
#: ``"raw"``: bytes as they come, one receive per read (``framing=False``).
Framing = Literal["frames", "chunks", "raw"]
#: What an encoder hands to the transport: buffers to write in order.
Buffer = bytes | memoryview


class FrameTooLargeError(MessageTooLargeError, ProtocolError):
    """An incoming header announced a frame larger than the receiver's ``max_size``."""


class UncleanEndError(ProtocolError):
    """The stream ended after messages with no goodbye: the sender was killed, crashed, or
    closed its end without closing the channel."""


def check_max_message_size(
    value: object, what: str | None = None, param: str = "max_message_size"
) -> int:
    """Validate a ``max_message_size`` argument: an int in 0..:data:`MAX_FRAME_LENGTH`.

    Raises:
        TypeError: not an int.
        ValueError: negative or beyond what a frame header can carry.
    """
    return check_int(value, param, minimum=0, maximum=MAX_FRAME_LENGTH, what=what)


def check_max_partial_bytes(value: object, max_size: int, what: str | None = None) -> int:
    """Validate a ``max_partial_bytes`` argument: an int from ``max_size`` (one writer's
    largest message must fit) to LONG_MAX (2**63 - 1).

    Raises:
        TypeError: not an int.
        ValueError: below ``max_size`` or beyond LONG_MAX.
    """
    return check_int(
        value,
        "max_partial_bytes",
        minimum=max_size,
        maximum=LONG_MAX,
        what=f"{what or 'FIFO receiver'} (at least max_message_size, {max_size})",
    )


def check_size(size: int, limit: int, source: str = "max_message_size") -> None:
    """Raise :exc:`MessageTooLargeError` if ``size`` exceeds ``limit``."""
    if size > limit:
        raise MessageTooLargeError(size, limit, source)


def encode_header(length: int, flags: int = 0) -> bytes:
    """Return the 4-byte header of a frame with a payload of ``length`` bytes."""
    if flags & ~FLAG_ANCILLARY:
        raise ValueError(f"flags may only contain FLAG_ANCILLARY, not {flags:#x}")
    if not 0 <= length <= MAX_FRAME_LENGTH:
        raise MessageTooLargeError(length, MAX_FRAME_LENGTH, "the 31-bit frame length field")
    return _header.pack(length | flags)


class FrameDecoder:
    """Turns a byte stream of length-prefixed frames back into messages.

    Feed it whatever the transport returned with :meth:`feed`, then call
    :meth:`next_frame` until it returns ``None``. It never reads or waits.
    """

    __slots__ = (
        "_buf",
        "_flags",
        "_goodbye",
        "_max_size",
        "_missing",
        "_parts",
        "_pos",
        "_seen",
        "last_flags",
    )
    #: The flag bits of the frame :meth:`next_frame` returned last.
    last_flags: int

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._max_size = check_max_message_size(max_size, "FrameDecoder", "max_size")
        self._buf = b""
        self._pos = 0
        # Set while a big frame is being collected: its pieces and how many bytes it lacks.
        self._parts: list[bytes] | None = None
        self._missing = 0
        self._flags = 0
        # Whether any frame came, and whether a goodbye followed the last one. Frames after
        # a goodbye are legal: another process may hold a copy of the same write end.
        self._seen = False
        self._goodbye = False
        #: The flag bits of the frame most recently returned by :meth:`next_frame`.
        self.last_flags = 0

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as part of a frame."""
        held = len(self._buf) - self._pos
        if self._parts is not None:
            # The big frame's header was consumed from the flat buffer but not returned.
            held += HEADER_SIZE + sum(map(len, self._parts))
        return held

    def wanted(self) -> int:
        """How many more bytes would complete the frame in progress (0 if unknown)."""
        return self._missing if self._parts is not None else 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the transport."""
        missing = self._missing
        if missing:
            assert self._parts is not None
            if len(data) <= missing:
                self._parts.append(data)
                self._missing = missing - len(data)
                return
            self._parts.append(data[:missing])
            self._missing = 0
            # The flat buffer was emptied when the big frame began, so what follows the
            # big frame goes there in order.
            data = data[missing:]
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def next_frame(self) -> bytes | None:
        """Return the next whole message, or ``None`` if more bytes are needed.

        Raises:
            FrameTooLargeError: the next header announces more than ``max_size`` bytes.
        """
        parts = self._parts
        if parts is not None:
            if self._missing:
                return None
            self._parts = None
            self.last_flags = self._flags
            self._seen, self._goodbye = True, False
            return parts[0] if len(parts) == 1 else b"".join(parts)
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        (word,) = _header.unpack_from(buf, pos)
        while word == _GOODBYE:
            self._goodbye = True
            pos = self._pos = pos + HEADER_SIZE
            if len(buf) - pos < HEADER_SIZE:
                return None
            (word,) = _header.unpack_from(buf, pos)
        length = word & _LENGTH_MASK
        if length > self._max_size:
            raise FrameTooLargeError(length, self._max_size, "the receiver's max_message_size")
        start = pos + HEADER_SIZE
        end = start + length
        if end <= len(buf):
            self._pos = end
            self.last_flags = word & FLAG_ANCILLARY
            self._seen, self._goodbye = True, False
            return buf[start:end]
        if length >= _BIG_FRAME:
            self._parts = [buf[start:]]
            self._missing = end - len(buf)
            self._flags = word & FLAG_ANCILLARY
            self._buf = b""
            self._pos = 0
        return None

    @property
    def said_goodbye(self) -> bool:
        """Whether the last thing decoded was a goodbye (nothing came after it)."""
        return self._goodbye

    def owed_goodbyes(self) -> Owed:
        """Who owes a goodbye, for a decoder that takes over this stream in another
        process (:meth:`expect_goodbyes`): here the one writer, as writer id 0."""
        return ((0,) if self._seen and not self._goodbye else ()), 0

    def expect_goodbyes(self, owed: Owed) -> None:
        """Take over what another decoder of this stream knew (:meth:`owed_goodbyes`)."""
        if owed[0] or owed[1]:
            self._seen, self._goodbye = True, False

    def check_eof(self) -> None:
        """Call when the transport reached end of stream.

        Raises:
            ProtocolError: a frame was cut short (the peer closed or died mid-frame).
            UncleanEndError: frames came, and no goodbye after the last one.
        """
        held = self.buffered
        if held:
            raise ProtocolError(
                f"truncated frame: the stream ended with {held} bytes of an unfinished message"
            )
        if self._seen and not self._goodbye:
            raise UncleanEndError("the stream ended after its last message with no goodbye")


def encode_chunks(data: bytes | memoryview, writer_id: int) -> list[bytes]:
    """Split ``data`` into chunked-format writes, each at most :data:`PIPE_BUF` bytes."""
    view = memoryview(data)
    total = len(view)
    if total <= MAX_CHUNK_PAYLOAD:
        word = total | _FIRST_CHUNK | _LAST_CHUNK
        return [_chunk_header.pack(writer_id, word) + bytes(view)]
    chunks = []
    for offset in range(0, total, MAX_CHUNK_PAYLOAD):
        piece = view[offset : offset + MAX_CHUNK_PAYLOAD]
        word = len(piece)
        if offset == 0:
            word |= _FIRST_CHUNK
        if offset + MAX_CHUNK_PAYLOAD >= total:
            word |= _LAST_CHUNK
        chunks.append(_chunk_header.pack(writer_id, word) + bytes(piece))
    return chunks


def encode_goodbye_chunk(writer_id: int) -> bytes:
    """The chunk a FIFO writer sends after its last message when it closes properly."""
    return _chunk_header.pack(writer_id, _BYE_CHUNK)


class ChunkDecoder:
    """Reassembles chunked-format messages from any number of interleaved writers.

    Unlike the length-prefix decoder, this one recovers from an oversized message: it
    raises :exc:`FrameTooLargeError` once, drops the rest of that writer's message, and
    goes on with the next one. A chunk that continues a message this decoder does not
    hold (dropped as too large or for the memory bound) is skipped, so a dropped message
    never comes out torn.

    ``max_partial_bytes`` bounds the bytes held for all writers' unfinished messages
    together (default: four times ``max_size``; each piece counts with what Python
    spends to hold it, so the bound holds however small the chunks), and at most
    :data:`MAX_PARTIAL_WRITERS` writers may have one. Beyond either, the unfinished
    message of the writer that sent nothing for the longest is dropped and a warning is
    logged (logger ``aioipc.framing``, at most one line per 10 s, with the count);
    :attr:`dropped` counts them.
    """

    __slots__ = (
        "_buf",
        "_cost",
        "_forgotten",
        "_last_seen",
        "_logged_at",
        "_max_partial",
        "_max_size",
        "_open",
        "_partial",
        "_partial_bytes",
        "_pos",
        "_unlogged",
        "dropped",
        "last_flags",
        "last_writer",
    )
    #: Unfinished messages dropped so far to stay within the partial-bytes budget.
    dropped: int
    #: The flag bits and the writer id of the message :meth:`next_frame` returned last.
    last_flags: int
    last_writer: int

    def __init__(
        self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_partial_bytes: int | None = None
    ) -> None:
        check_max_message_size(max_size, "ChunkDecoder", "max_size")
        if max_partial_bytes is None:
            max_partial_bytes = 4 * max_size
        self._max_size = max_size
        self._max_partial = check_max_partial_bytes(max_partial_bytes, max_size, "ChunkDecoder")
        self._buf = b""
        self._pos = 0
        # writer id -> [its pieces so far, their payload bytes, what they cost to hold],
        # least recently active first. The pieces are joined once, at the last chunk.
        # OrderedDicts, because a plain dict that is popped from the front makes
        # next(iter()) walk every dead slot before the first live one.
        self._partial: OrderedDict[int, list[Any]] = OrderedDict()
        self._partial_bytes = 0  # payload held (what `buffered` reports)
        self._cost = 0  # payload plus per-piece overhead (what the bound is applied to)
        # Writers that sent messages and no goodbye since, least recently active first.
        self._open: OrderedDict[int, None] = OrderedDict()
        # How many such writers were forgotten beyond _MAX_OPEN_WRITERS.
        self._forgotten = 0
        # The writer of the chunk before: chunks come in runs from one writer, and the
        # recency order needs no update within a run.
        self._last_seen: int | None = None
        #: Unfinished messages dropped to stay within ``max_partial_bytes`` or
        #: :data:`MAX_PARTIAL_WRITERS`.
        self.dropped = 0
        self._logged_at = -_DROP_LOG_INTERVAL
        self._unlogged = 0
        #: The writer id of the message most recently returned by :meth:`next_frame`.
        self.last_writer = 0
        #: Always 0: the chunked format has no flags (kept for the same interface as
        #: :class:`FrameDecoder`).
        self.last_flags = 0

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def max_partial_bytes(self) -> int:
        return self._max_partial

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos + self._partial_bytes

    def wanted(self) -> int:
        return 0

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def _drop_partial(self, writer: int) -> None:
        _, size, cost = self._partial.pop(writer)
        self._partial_bytes -= size
        self._cost -= cost

    def _spoke(self, writer: int) -> None:
        """``writer`` is the most recently active one now."""
        self._last_seen = writer
        opened = self._open
        if writer in opened:
            opened.move_to_end(writer)
        else:
            opened[writer] = None
            if len(opened) > _MAX_OPEN_WRITERS:
                opened.popitem(last=False)
                self._forgotten += 1
        if writer in self._partial:
            self._partial.move_to_end(writer)

    def _bound_partials(self) -> None:
        """Drop the least recently active unfinished messages until both bounds hold."""
        partial = self._partial
        while len(partial) > MAX_PARTIAL_WRITERS or self._cost > self._max_partial:
            writer, (_, size, cost) = partial.popitem(last=False)
            self._partial_bytes -= size
            self._cost -= cost
            self.dropped += 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at < _DROP_LOG_INTERVAL:
                continue
            _log.warning(
                "FIFO receiver: dropped writer %016x's unfinished message (%d bytes), %d "
                "dropped since the last warning: unfinished messages of all writers are "
                "held up to max_partial_bytes=%d and MAX_PARTIAL_WRITERS=%d",
                writer,
                size,
                self._unlogged,
                self._max_partial,
                MAX_PARTIAL_WRITERS,
            )
            self._logged_at = now
            self._unlogged = 0

    def next_frame(self) -> bytes | None:
        """Return the next whole message from any writer, or ``None`` if none is complete.

        Raises:
            ProtocolError: a chunk header is impossible (unknown bits, a length beyond
                the chunk limit, a goodbye with a payload).
            FrameTooLargeError: a writer's message grew beyond ``max_size`` (raised once;
                the rest of that message is skipped).
        """
        buf = self._buf
        end_of_buf = len(buf)
        partial = self._partial
        while end_of_buf - self._pos >= CHUNK_HEADER_SIZE:
            writer, word = _chunk_header.unpack_from(buf, self._pos)
            length = word & _CHUNK_LENGTH
            if word & _NOT_A_CHUNK_BIT or length > MAX_CHUNK_PAYLOAD:
                raise ProtocolError(
                    f"corrupt chunk header: word {word:#010x} (length {length}, chunk limit "
                    f"{MAX_CHUNK_PAYLOAD} = PIPE_BUF {PIPE_BUF} - header {CHUNK_HEADER_SIZE})"
                )
            if word & _BYE_CHUNK:
                if word != _BYE_CHUNK:
                    raise ProtocolError(f"corrupt chunk header: goodbye word {word:#010x}")
                self._pos += CHUNK_HEADER_SIZE
                self._open.pop(writer, None)
                self._last_seen = None
                continue
            start = self._pos + CHUNK_HEADER_SIZE
            end = start + length
            if end > end_of_buf:
                return None
            self._pos = end
            if writer != self._last_seen:
                self._spoke(writer)
            if word & _FIRST_CHUNK:
                if word & _LAST_CHUNK and writer not in partial:
                    # The common case: a whole message in one chunk.
                    if length > self._max_size:
                        raise FrameTooLargeError(
                            length, self._max_size, "the receiver's max_message_size"
                        )
                    self.last_writer = writer
                    return buf[start:end]
                if writer in partial:
                    # The writer began anew without finishing: what it left is no message.
                    self._drop_partial(writer)
                held: list[Any] | None = None
                size = length
            else:
                held = partial.get(writer)
                if held is None:
                    continue  # the rest of a message that was dropped
                size = held[1] + length
            if size > self._max_size:
                if held is not None:
                    self._drop_partial(writer)  # its rest is skipped
                raise FrameTooLargeError(
                    size,
                    self._max_size,
                    "the receiver's max_message_size",
                    at_least=not word & _LAST_CHUNK,
                )
            if word & _LAST_CHUNK:
                self.last_writer = writer
                if held is None:
                    return buf[start:end]
                self._drop_partial(writer)
                pieces = held[0]
                pieces.append(buf[start:end])
                return b"".join(pieces)
            cost = length + _PIECE_COST if length else 0  # an empty piece is not kept
            if held is None:
                partial[writer] = [[buf[start:end]], size, cost + _MESSAGE_COST]
                self._cost += cost + _MESSAGE_COST
            else:
                if length:
                    held[0].append(buf[start:end])
                held[1] = size
                held[2] += cost
                self._cost += cost
            self._partial_bytes += length
            if self._cost > self._max_partial or len(partial) > MAX_PARTIAL_WRITERS:
                self._bound_partials()
        return None

    def owed_goodbyes(self) -> Owed:
        """The writers that sent messages and owe a goodbye, and how many more were
        forgotten, for a decoder that takes over in another process."""
        return tuple(self._open), self._forgotten

    def expect_goodbyes(self, owed: Owed) -> None:
        """Take over what another decoder of this FIFO knew (:meth:`owed_goodbyes`)."""
        writers, forgotten = owed
        for writer in writers:
            self._spoke(writer)
        self._forgotten += forgotten

    def check_eof(self) -> None:
        """Call when every writer has closed the FIFO.

        Raises:
            ProtocolError: a writer left a message unfinished.
            UncleanEndError: a writer that sent messages did not say goodbye after its
                last one, or more than 4,096 writers owed one at once and some were
                forgotten (the end cannot be vouched for).
        """
        held = self.buffered
        if held:
            raise ProtocolError(
                f"truncated message: the FIFO's writers closed with {held} bytes of unfinished "
                f"messages from {max(len(self._partial), 1)} writer(s)"
            )
        if self._open or self._forgotten:
            said = f"{len(self._open)} writer(s) sent messages and went away without a goodbye"
            if self._forgotten:
                said += (
                    f", and {self._forgotten} writer(s) that sent messages were forgotten "
                    f"(more than {_MAX_OPEN_WRITERS} at once owed a goodbye), so the end "
                    "cannot be vouched for"
                )
            raise UncleanEndError(said)


# --------------------------------------------------------------- the strategies


class Decoder(Protocol):
    """What a receiving transport needs of a decoder (:func:`make_decoder`)."""

    last_flags: int

    @property
    def buffered(self) -> int: ...

    def feed(self, data: bytes) -> None: ...
    def next_frame(self) -> bytes | None: ...
    def wanted(self) -> int: ...
    def check_eof(self) -> None: ...
    def owed_goodbyes(self) -> Owed: ...
    def expect_goodbyes(self, owed: Owed) -> None: ...


class RawDecoder:
    """Passes each read through as one message: the ``framing=False`` mode."""

    __slots__ = ("_chunk", "last_flags")

    def __init__(self) -> None:
        self._chunk: bytes | None = None
        self.last_flags: int = 0

    def feed(self, data: bytes) -> None:
        self._chunk = data

    def next_frame(self) -> bytes | None:
        chunk, self._chunk = self._chunk, None
        return chunk

    @property
    def buffered(self) -> int:
        return len(self._chunk) if self._chunk else 0

    def wanted(self) -> int:
        return 0

    def check_eof(self) -> None:
        return None

    def owed_goodbyes(self) -> Owed:
        return (), 0

    def expect_goodbyes(self, owed: Owed) -> None:
        return None


def make_decoder(framing: Framing, max_size: int, max_partial: int | None = None) -> Decoder:
    """The decoder of a wire format (``max_partial``: the chunk decoder's bound)."""
    if framing == "frames":
        return FrameDecoder(max_size)
    if framing == "chunks":
        return ChunkDecoder(max_size, max_partial)
    return RawDecoder()


class EndPolicy:
    """What an end of file means to a receiver: the end-of-stream rules, with no I/O.

    * A FIFO reader opened before any writer reads ``b""`` until a writer appears: that
      is no end of stream. Until a writer has shown itself (:meth:`writer_seen`: data
      came, or the fd became readable), an empty read is the end only if the transport
      says a writer came and went (``is_end``'s question, a POLLHUP on a FIFO).
    * At the end, the decoder's verdict (:meth:`conclude`): :exc:`anyio.EndOfStream` if
      every writer that sent messages said goodbye after its last one,
      :exc:`anyio.BrokenResourceError` naming ``peer`` if one went away without it or
      in the middle of a message. The verdict stands: :meth:`verdict` raises it again.
    """

    __slots__ = ("_broken", "_decoder", "_peer", "_what", "ended", "trusted")

    def __init__(
        self, decoder: Decoder, what: str, *, trust_first_eof: bool = True, peer: str = "the peer"
    ) -> None:
        self._decoder = decoder
        self._what = what
        # Who sends to us, for the end-of-stream messages ("the peer (pid 4242)").
        self._peer = peer
        #: False while a FIFO reader has seen no writer (its b"" is no end of stream).
        self.trusted: bool = trust_first_eof
        #: True once the end of stream was reached.
        self.ended: bool = False
        # Why the stream ended broken, once it has: every later receive says so again
        # rather than EndOfStream, which would tell the caller the peer finished.
        self._broken: str | None = None

    def writer_seen(self) -> None:
        """Data came, or readiness fired: a writer has come, so an empty read is the end."""
        self.trusted = True

    def is_end(self, writer_came_and_went: Callable[[], bool]) -> bool:
        """An empty read happened: is it the end of stream? ``writer_came_and_went`` asks
        the transport, and only while no writer has been seen."""
        return self.trusted or writer_came_and_went()

    def conclude(self) -> NoReturn:
        """The stream has ended: raise the verdict (and remember it)."""
        self.ended = True
        try:
            self._decoder.check_eof()
        except UncleanEndError as exc:
            self._broken = (
                f"{self._what}: {self._peer} went away without closing the channel: killed, "
                f"crashed, or its end was closed without aclose() ({exc})"
            )
            raise BrokenResourceError(self._broken) from exc
        except ProtocolError as exc:
            self._broken = (
                f"{self._what}: {self._peer} closed or died in the middle of a message ({exc})"
            )
            raise BrokenResourceError(self._broken) from exc
        raise EndOfStream

    def verdict(self) -> Exception:
        """What a receive after the end raises: the same verdict, afresh (one exception
        object raised again would grow its traceback)."""
        return EndOfStream() if self._broken is None else BrokenResourceError(self._broken)


_fork_generation = 0  # forks this process was made by (a new writer id after each)
_forks = 0  # forks this process took part in, as parent or child


def _after_fork_in_child() -> None:
    global _fork_generation, _forks
    _fork_generation += 1
    _forks += 1


def _after_fork_in_parent() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child, after_in_parent=_after_fork_in_parent)


def new_writer_id() -> int:
    """An id for the chunked format, unique among the writers of a FIFO. Random, not
    derived from the pid: processes in different pid namespaces can share a pid."""
    return int.from_bytes(os.urandom(8), "big")


class Encoder:
    """A sender's side of a wire format, with no I/O: encodes messages, keeps the FIFO
    writer id (a new one in a forked child), and decides when a goodbye is owed.

    A goodbye is owed by a handle that tried to send since its last goodbye
    (:meth:`spoke`): a parent that merely hands its copy of the write end to a child must
    not write into the child's stream. On a length-prefixed stream a goodbye owed for
    messages sent before a fork is forgiven (the other process's copy may be in the
    middle of a frame, which a goodbye from here would corrupt); a FIFO goodbye chunk is
    atomic and carries this writer's own id, so it is always safe. See docs/channels.md,
    "End of stream: finished, or killed?".
    """

    __slots__ = (
        "_owes_goodbye",
        "_spoke_forks",
        "_writer_generation",
        "_writer_id",
        "farewell",
        "framing",
        "header",
    )

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        #: The length prefix of a message as a function of its length, for a transport
        #: that joins prefix and payload itself (:meth:`join` as a C call on a hot
        #: path); None when the format has none (raw; chunks never join).
        self.header: Callable[[int], bytes] | None = _pack_header if framing == "frames" else None
        self._writer_id = new_writer_id()
        self._writer_generation = _fork_generation
        self._owes_goodbye = False
        # _forks when the debt was last made: a fork since then makes a copy of this
        # handle in another process, which may be writing a frame of its own.
        self._spoke_forks = _forks
        #: False when this end must never write a goodbye: it was handed to another
        #: process, which speaks for that end now (length-prefixed framing only).
        self.farewell: bool = framing != "raw"

    @property
    def writer_id(self) -> int:
        """This writer's id in the chunked format; a new one after a fork."""
        if self._writer_generation != _fork_generation:
            # A forked child shares this object with its parent: it needs its own id,
            # or the receiver would splice the two processes' chunks together.
            self._writer_id = new_writer_id()
            self._writer_generation = _fork_generation
        return self._writer_id

    def spoke(self) -> None:
        """The handle is sending: from now on it owes a goodbye."""
        self._owes_goodbye = True
        self._spoke_forks = _forks

    def encode(self, item: bytes) -> list[Buffer]:
        """``item`` as buffers to write in order (chunks: one atomic write each)."""
        if self.framing == "frames":
            return [_pack_header(len(item)), memoryview(item)] if item else [_pack_header(0)]
        if self.framing == "chunks":
            return list(encode_chunks(item, self.writer_id))
        return [memoryview(item)] if item else []

    def join(self, item: bytes) -> bytes:
        """A small message as one buffer, for one write (length prefix or raw only)."""
        return _pack_header(len(item)) + item if self.framing == "frames" else item

    def take_goodbye(self) -> bytes | None:
        """The goodbye to write after everything committed so far, if one is owed (it is
        then paid); None if none is owed or it would be unsafe."""
        if not (self.farewell and self._owes_goodbye):
            return None
        if self.framing == "frames" and self._spoke_forks != _forks:
            # Sent before a fork and not since: only a handle that sends again after
            # the fork (then it is the writer) owes one.
            return None
        self._owes_goodbye = False
        return GOODBYE_FRAME if self.framing == "frames" else encode_goodbye_chunk(self.writer_id)

    def hand_over(self) -> bool:
        """The handle is being pickled for another process; returns whether the copy
        there owes the goodbye for what this one sent.

        On a length-prefixed stream the copy speaks for the end now: a goodbye from here
        could land inside a frame it is writing, so this end writes none and the copy
        inherits the debt. A FIFO writer's goodbye is one atomic chunk with this
        writer's own id (the copy gets a new one), so it still says its own."""
        if self.framing != "frames":
            return False
        self.farewell = False
        return self._owes_goodbye

    def inherit_goodbye(self, owed: bool) -> None:
        """The other half of :meth:`hand_over`, in the process the handle went to."""
        self._owes_goodbye = owed
