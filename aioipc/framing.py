"""Sans-IO message framing: bytes in, whole messages out. No I/O happens in this module.

Two wire formats:

**Length prefix** (pipes, unix stream sockets, and any peer that frames the usual way).
Each message is a 4-byte big-endian header followed by the payload. The low 31 bits of
the header are the payload length; the top bit is a flag that aioipc's unix sockets set
on a frame that carries file descriptors. A peer that writes ``struct.pack("!I", len)``
before each message speaks this format unchanged.

**Chunked** (FIFOs with several writers). The kernel writes at most ``PIPE_BUF`` (4096)
bytes atomically, so a longer message from one writer can be cut by another writer's
bytes. Here every message is split into chunks that each fit in one atomic write::

    writer id (8 bytes, big-endian) | word (4 bytes): bit 31 = last chunk, low bits = length
    payload (at most PIPE_BUF - 12 bytes)

and the decoder puts each writer's chunks back together, so messages of any size from
any number of writers arrive whole and never interleave.

A decoder enforces ``max_size`` from the header, before it allocates anything for the
payload. An incoming header that announces more than ``max_size`` raises
:exc:`FrameTooLargeError`, which is both a :exc:`MessageTooLargeError` and a
:exc:`ProtocolError`: a receiver cannot tell an oversized frame from a corrupt header,
so the stream cannot be resynchronised after it.
"""

from __future__ import annotations

import struct

from .errors import MessageTooLargeError, ProtocolError

__all__ = [
    "CHUNK_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FLAG_ANCILLARY",
    "HEADER_SIZE",
    "MAX_CHUNK_PAYLOAD",
    "MAX_FRAME_LENGTH",
    "MAX_PARTIAL_WRITERS",
    "PIPE_BUF",
    "ChunkDecoder",
    "FrameDecoder",
    "FrameTooLargeError",
    "check_size",
    "encode_chunks",
    "encode_header",
]

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
HEADER_SIZE = 4
FLAG_ANCILLARY = 1 << 31
_LENGTH_MASK = FLAG_ANCILLARY - 1
#: Largest length the 31-bit length field can carry.
MAX_FRAME_LENGTH = _LENGTH_MASK

PIPE_BUF = 4096
CHUNK_HEADER_SIZE = 12
MAX_CHUNK_PAYLOAD = PIPE_BUF - CHUNK_HEADER_SIZE
_LAST_CHUNK = 1 << 31
#: Most writers that may have a message in progress at once on one FIFO; beyond it the
#: stream is treated as corrupt, so a hostile writer cannot make memory grow unbounded.
MAX_PARTIAL_WRITERS = 1024

_header = struct.Struct("!I")
_chunk_header = struct.Struct("!QI")
# Below this, a partial frame stays in the flat buffer; above it, the decoder collects the
# payload as a list of pieces and joins them once, so a large frame is copied once, not
# once per read.
_BIG_FRAME = 64 * 1024


class FrameTooLargeError(MessageTooLargeError, ProtocolError):
    """An incoming header announced a frame larger than the receiver's ``max_size``."""


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

    __slots__ = ("_buf", "_flags", "_max_size", "_missing", "_parts", "_pos", "last_flags")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if not 0 <= max_size <= MAX_FRAME_LENGTH:
            raise ValueError(f"max_size must be between 0 and {MAX_FRAME_LENGTH}, not {max_size}")
        self._max_size = max_size
        self._buf = b""
        self._pos = 0
        # Set while a big frame is being collected: its pieces and how many bytes it lacks.
        self._parts: list[bytes] | None = None
        self._missing = 0
        self._flags = 0
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
            return parts[0] if len(parts) == 1 else b"".join(parts)
        buf = self._buf
        pos = self._pos
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
            return buf[start:end]
        if length >= _BIG_FRAME:
            self._parts = [buf[start:]]
            self._missing = end - len(buf)
            self._flags = word & FLAG_ANCILLARY
            self._buf = b""
            self._pos = 0
        return None

    def check_eof(self) -> None:
        """Call when the transport reached end of stream.

        Raises:
            ProtocolError: a frame was cut short (the peer closed or died mid-frame).
        """
        held = self.buffered
        if held:
            raise ProtocolError(
                f"truncated frame: the stream ended with {held} bytes of an unfinished message"
            )


def encode_chunks(data: bytes | memoryview, writer_id: int) -> list[bytes]:
    """Split ``data`` into chunked-format writes, each at most :data:`PIPE_BUF` bytes."""
    view = memoryview(data)
    total = len(view)
    if total <= MAX_CHUNK_PAYLOAD:
        return [_chunk_header.pack(writer_id, total | _LAST_CHUNK) + bytes(view)]
    chunks = []
    for offset in range(0, total, MAX_CHUNK_PAYLOAD):
        piece = view[offset : offset + MAX_CHUNK_PAYLOAD]
        last = _LAST_CHUNK if offset + MAX_CHUNK_PAYLOAD >= total else 0
        chunks.append(_chunk_header.pack(writer_id, len(piece) | last) + bytes(piece))
    return chunks


class ChunkDecoder:
    """Reassembles chunked-format messages from any number of interleaved writers.

    Unlike the length-prefix decoder, this one recovers from an oversized message: it
    raises :exc:`FrameTooLargeError` once, drops the rest of that writer's message, and
    goes on with the next one.
    """

    __slots__ = (
        "_buf",
        "_discarding",
        "_max_size",
        "_partial",
        "_pos",
        "last_flags",
        "last_writer",
    )

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must not be negative, not {max_size}")
        self._max_size = max_size
        self._buf = b""
        self._pos = 0
        # writer id -> (pieces so far, their total size)
        self._partial: dict[int, tuple[list[bytes], int]] = {}
        # Writers whose current message was refused as too large: skip to its last chunk.
        self._discarding: set[int] = set()
        #: The writer id of the message most recently returned by :meth:`next_frame`.
        self.last_writer = 0
        #: Always 0: the chunked format has no flags (kept for the same interface as
        #: :class:`FrameDecoder`).
        self.last_flags = 0

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos + sum(size for _, size in self._partial.values())

    def wanted(self) -> int:
        return 0

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def next_frame(self) -> bytes | None:
        """Return the next whole message from any writer, or ``None`` if none is complete.

        Raises:
            ProtocolError: a chunk header is impossible (length beyond PIPE_BUF).
            FrameTooLargeError: a writer's message grew beyond ``max_size``.
        """
        buf = self._buf
        while len(buf) - self._pos >= CHUNK_HEADER_SIZE:
            writer, word = _chunk_header.unpack_from(buf, self._pos)
            length = word & ~_LAST_CHUNK
            if length > MAX_CHUNK_PAYLOAD:
                raise ProtocolError(
                    f"corrupt chunk header: length {length} exceeds the chunk limit "
                    f"{MAX_CHUNK_PAYLOAD} (PIPE_BUF {PIPE_BUF} - header {CHUNK_HEADER_SIZE})"
                )
            start = self._pos + CHUNK_HEADER_SIZE
            end = start + length
            if end > len(buf):
                return None
            self._pos = end
            last = word & _LAST_CHUNK
            if writer in self._discarding:
                if last:
                    self._discarding.discard(writer)
                continue
            piece = buf[start:end]
            pieces, size = self._partial.pop(writer, ([], 0))
            size += length
            if size > self._max_size:
                if not last:
                    self._discarding.add(writer)
                raise FrameTooLargeError(
                    size, self._max_size, "the receiver's max_message_size", at_least=not last
                )
            if last:
                self.last_writer = writer
                if not pieces:
                    return piece
                pieces.append(piece)
                return b"".join(pieces)
            pieces.append(piece)
            self._partial[writer] = (pieces, size)
            if len(self._partial) > MAX_PARTIAL_WRITERS:
                raise ProtocolError(
                    f"more than {MAX_PARTIAL_WRITERS} writers (MAX_PARTIAL_WRITERS) have "
                    "unfinished messages at once: corrupt or hostile chunk stream"
                )
        return None

    def check_eof(self) -> None:
        """Raise :exc:`ProtocolError` if a writer left a message unfinished."""
        held = self.buffered
        if held:
            raise ProtocolError(
                f"truncated message: the FIFO's writers closed with {held} bytes of unfinished "
                f"messages from {max(len(self._partial), 1)} writer(s)"
            )
