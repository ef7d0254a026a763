"""Codecs: turn any byte channel into a channel of Python objects.

::

    chan = aioipc.codecs.wrap(await aioipc.unix.connect(path), "json")
    await chan.send({"job": 1})
    reply = await chan.receive()

Built in: ``"bytes"`` (identity), ``"json"``, ``"pickle"`` and ``"msgspec"`` (MessagePack
through msgspec, an optional extra: ``pip install aioipc[msgspec]``).

.. warning:: ``pickle`` runs code chosen by whoever wrote the message. Use it only
   between processes that trust each other completely (the same program, the same
   user); never on a socket or FIFO that another user can write to.

A message that does not decode raises :exc:`aioipc.ProtocolError` naming the codec; the
channel stays usable for the next message.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from typing import Any, Protocol, overload

from anyio.abc import ObjectReceiveStream, ObjectSendStream, ObjectStream, TaskGroup

from .abc import Listener
from .errors import ProtocolError

__all__ = [
    "BytesCodec",
    "Codec",
    "CodecListener",
    "CodecReceiveStream",
    "CodecSendStream",
    "CodecStream",
    "JsonCodec",
    "MsgspecCodec",
    "PickleCodec",
    "get_codec",
    "wrap",
]


class Codec(Protocol):
    """Turns objects into message bytes and back."""

    name: str

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class BytesCodec:
    """Messages are bytes already: no conversion."""

    name = "bytes"

    def encode(self, obj: Any) -> bytes:
        if not isinstance(obj, (bytes, bytearray, memoryview)):
            raise TypeError(f"the bytes codec sends bytes, not {type(obj).__name__}")
        return bytes(obj)

    def decode(self, data: bytes) -> Any:
        return data


class JsonCodec:
    """UTF-8 JSON, compact."""

    name = "json"

    def encode(self, obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class PickleCodec:
    """pickle, highest protocol. Trusted peers only: unpickling runs the sender's code."""

    name = "pickle"

    def encode(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)


class MsgspecCodec:
    """MessagePack through msgspec (optional extra), optionally typed with ``type=``."""

    name = "msgspec"

    def __init__(self, type: Any = Any) -> None:
        try:
            import msgspec
        except ImportError:
            raise ImportError(
                'the msgspec codec needs msgspec: pip install "aioipc[msgspec]"'
            ) from None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(type)

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)


_CODECS: Mapping[str, Callable[[], Codec]] = {
    "bytes": BytesCodec,
    "json": JsonCodec,
    "pickle": PickleCodec,
    "msgspec": MsgspecCodec,
}


def get_codec(codec: str | Codec) -> Codec:
    """Return a codec object for a name (``"json"``...) or pass a codec object through."""
    if not isinstance(codec, str):
        return codec
    try:
        return _CODECS[codec]()
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(_CODECS)}") from None


def _decode(codec: Codec, data: bytes) -> Any:
    try:
        return codec.decode(data)
    except Exception as exc:
        raise ProtocolError(
            f"{codec.name} codec: cannot decode a {len(data)}-byte message: {exc}"
        ) from exc


class _CodecWrapper:
    """What the codec wrappers share: the wrapped channel, its closing and its attributes."""

    def __init__(
        self, inner: ObjectSendStream[bytes] | ObjectReceiveStream[bytes], codec: Codec
    ) -> None:
        self.inner = inner
        self.codec = codec

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


class CodecSendStream(_CodecWrapper, ObjectSendStream[Any]):
    """Encodes each object and sends it on the wrapped byte channel."""

    inner: ObjectSendStream[bytes]

    def __init__(self, inner: ObjectSendStream[bytes], codec: Codec) -> None:
        super().__init__(inner, codec)

    async def send(self, item: Any) -> None:
        """Encode and send; errors and cancellation as for the wrapped channel's ``send``."""
        await self.inner.send(self.codec.encode(item))


class CodecReceiveStream(_CodecWrapper, ObjectReceiveStream[Any]):
    """Receives from the wrapped byte channel and decodes each message."""

    inner: ObjectReceiveStream[bytes]

    def __init__(self, inner: ObjectReceiveStream[bytes], codec: Codec) -> None:
        super().__init__(inner, codec)

    async def receive(self) -> Any:
        """Receive and decode; :exc:`aioipc.ProtocolError` if the message does not decode
        (the channel stays usable). Errors and cancellation otherwise as for the wrapped
        channel's ``receive``: a cancelled call consumed nothing."""
        return _decode(self.codec, await self.inner.receive())


class CodecStream(_CodecWrapper, ObjectStream[Any]):
    """A two-way byte channel carrying encoded objects."""

    inner: ObjectStream[bytes]

    def __init__(self, inner: ObjectStream[bytes], codec: Codec) -> None:
        super().__init__(inner, codec)

    async def send(self, item: Any) -> None:
        """Encode and send; errors and cancellation as for the wrapped channel's ``send``."""
        await self.inner.send(self.codec.encode(item))

    async def receive(self) -> Any:
        """Receive and decode; :exc:`aioipc.ProtocolError` if the message does not decode
        (the channel stays usable). Errors and cancellation otherwise as for the wrapped
        channel's ``receive``: a cancelled call consumed nothing."""
        return _decode(self.codec, await self.inner.receive())

    async def send_eof(self) -> None:
        """Shut down the sending direction, as the wrapped channel's ``send_eof``."""
        await self.inner.send_eof()


@overload
def wrap(channel: ObjectStream[bytes], codec: str | Codec) -> CodecStream: ...  # type: ignore[overload-overlap]
@overload
def wrap(channel: ObjectReceiveStream[bytes], codec: str | Codec) -> CodecReceiveStream: ...
@overload
def wrap(channel: ObjectSendStream[bytes], codec: str | Codec) -> CodecSendStream: ...


def wrap(
    channel: ObjectStream[bytes] | ObjectReceiveStream[bytes] | ObjectSendStream[bytes],
    codec: str | Codec,
) -> CodecStream | CodecReceiveStream | CodecSendStream:
    """Wrap a byte channel (two-way, send-only or receive-only) with ``codec``."""
    c = get_codec(codec)
    if isinstance(channel, ObjectStream):
        return CodecStream(channel, c)
    if isinstance(channel, ObjectReceiveStream):
        return CodecReceiveStream(channel, c)
    if isinstance(channel, ObjectSendStream):
        return CodecSendStream(channel, c)
    raise TypeError(f"cannot wrap {type(channel).__name__}: not an anyio object stream")


class CodecListener(Listener[CodecStream]):
    """A listener whose connections come wrapped in a codec (``aioipc.listen`` with a
    codec on ``unix://`` gives one)."""

    def __init__(self, inner: Listener[ObjectStream[bytes]], codec: str | Codec) -> None:
        self.inner: Listener[ObjectStream[bytes]] = inner
        self.codec: Codec = get_codec(codec)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes

    async def accept(self) -> CodecStream:
        """As the wrapped listener's ``accept`` (errors, cancellation), with the channel
        wrapped."""
        return CodecStream(await self.inner.accept(), self.codec)

    async def serve(
        self, handler: Callable[[CodecStream], Any], task_group: TaskGroup | None = None
    ) -> None:
        """As the wrapped listener's ``serve`` (errors, cancellation), with each channel
        wrapped."""

        async def wrapped(chan: ObjectStream[bytes]) -> None:
            await handler(CodecStream(chan, self.codec))

        await self.inner.serve(wrapped, task_group)

    async def aclose(self) -> None:
        """Close the wrapped listener."""
        await self.inner.aclose()
