"""The Channel interface: anyio's object streams of bytes, and aioipc's typed attributes.

Every aioipc message mechanism is an :class:`anyio.abc.ObjectStream` of ``bytes``
(or its send or receive half for one-way kernel objects), so anyio's wrappers --
``StapledObjectStream``, memory object streams, task groups -- work on it unchanged.

A listener (unix stream and seqpacket sockets) is an :class:`anyio.abc.Listener` that
can also :meth:`~Listener.accept` one connection at a time: :class:`Listener`.

Metadata is read with ``channel.extra(IPCAttribute.fd)`` and friends; an attribute that
does not apply raises :exc:`anyio.TypedAttributeLookupError`, or returns the default
given as ``extra(attr, default)``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TypeAlias, TypeVar

import anyio.abc
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import ObjectReceiveStream, ObjectSendStream, ObjectStream

__all__ = [
    "Channel",
    "IPCAttribute",
    "Listener",
    "ReceiveChannel",
    "SendChannel",
]

_T_co = TypeVar("_T_co", covariant=True)

#: A two-way message channel (unix sockets, message queues).
Channel: TypeAlias = ObjectStream[bytes]
#: The sending half of a channel, or a one-way sender (pipe and FIFO write ends).
SendChannel: TypeAlias = ObjectSendStream[bytes]
#: The receiving half of a channel, or a one-way receiver (pipe and FIFO read ends).
ReceiveChannel: TypeAlias = ObjectReceiveStream[bytes]


class Listener(anyio.abc.Listener[_T_co]):
    """An :class:`anyio.abc.Listener` (``serve(handler, task_group)``) that also hands out
    one connection at a time with :meth:`accept`."""

    @abstractmethod
    async def accept(self) -> _T_co:
        """Wait for the next connection and return it."""


class IPCAttribute(TypedAttributeSet):
    """Typed attributes every aioipc channel offers where they apply."""

    #: The file descriptor the event loop waits on.
    fd: int = typed_attribute()
    #: The filesystem path or the name (``"@name"`` for abstract unix sockets).
    path: str = typed_attribute()
    #: The mechanism: ``"pipe"``, ``"fifo"``, ``"unix-stream"``, ``"unix-dgram"``, ...
    mechanism: str = typed_attribute()
    #: The System V key (``0`` = IPC_PRIVATE).
    key: int = typed_attribute()
    #: The kernel's identifier of a System V object (the id column of ``ipcs``).
    ipc_id: int = typed_attribute()
    #: ``True`` if messages are framed by aioipc, ``False`` for raw bytes.
    framed: bool = typed_attribute()
    #: The largest message this handle accepts, in bytes.
    max_message_size: int = typed_attribute()
    #: Process id of the peer (unix sockets: from SO_PEERCRED at connect time).
    peer_pid: int = typed_attribute()
    #: User id of the peer.
    peer_uid: int = typed_attribute()
    #: Group id of the peer.
    peer_gid: int = typed_attribute()


def message_bytes(item: object) -> bytes:
    """A Channel item as bytes: bytes as they are, bytearray/memoryview copied.

    Raises:
        TypeError: anything else, naming its type.
    """
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    raise TypeError(f"a message is bytes (or bytearray/memoryview), not {type(item).__name__}")
