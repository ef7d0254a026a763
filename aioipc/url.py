"""``aioipc.connect(url)`` and ``aioipc.listen(url)``: every mechanism by one address string.

========================  ======================================  ===========================
scheme                    ``listen(url)``                         ``connect(url)``
========================  ======================================  ===========================
``unix:///path``          stream listener (socket file 0600)      stream channel
``unix://@name``          stream listener, abstract name          stream channel
``unix+seqpacket://...``  seqpacket listener                      seqpacket channel
``unix+dgram://...``      bound datagram endpoint                 datagram channel
``fifo:///path``          create the FIFO if needed, receive      send (waits for a receiver)
``mq:///name``            POSIX queue, open or create             POSIX queue, open
``sysvmq://KEY``          SysV queue, open or create              SysV queue, open
``sysvmq:///path?proj=N`` the same, key = ``ftok(path, N)``       the same
``shm://name``            create the ring, receive                 send into the ring
========================  ======================================  ===========================

Query options: ``framing=none`` (raw bytes; stream and FIFO), ``mode=0600`` (octal, for
what ``listen`` creates), ``max_size=N`` (bytes), ``persistent=1`` (FIFO receiver),
``allowed_uids=1000,1001`` (unix listeners). ``codec=`` (or the ``codec`` argument)
wraps the channel in a codec: ``bytes``, ``json``, ``pickle``, ``msgspec``.

Queues: ``create=1`` (``connect`` creates a missing queue too; ``create=0`` makes
``listen`` only open), ``max_messages=N`` and ``max_message_size=N`` (POSIX, on
creation), ``max_bytes=N`` (SysV, on creation), ``send_type=T`` and ``receive_type=T``
(SysV: the types ``send``/``receive`` use, for two-way use of one queue), ``proj=N``
(SysV: the ftok project id, default 1). ``KEY`` is decimal or ``0x`` hex.

Shared-memory rings (``shm://name`` or ``shm:///name``): ``capacity=N`` (data bytes, on
creation), ``multi_producer=1`` (on creation), ``spin=SECONDS`` (low-latency mode),
``create=0`` (``listen`` attaches to an existing ring), ``create=1`` (``connect`` creates
the ring and removes it when the sender closes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio

from . import fifo, posix, shm, sysv, unix
from .codecs import Codec, get_codec, wrap
from .framing import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Address", "connect", "listen", "parse_url"]

_UNIX_KINDS: dict[str, unix.Kind] = {
    "unix": "stream",
    "unix+stream": "stream",
    "unix+seqpacket": "seqpacket",
    "unix+dgram": "dgram",
}
_QUEUES = ("mq", "sysvmq")
_SCHEMES = (*_UNIX_KINDS, "fifo", *_QUEUES, "shm")
_INT_OPTIONS = (
    "max_size",
    "max_messages",
    "max_message_size",
    "max_bytes",
    "send_type",
    "receive_type",
    "proj",
    "capacity",
)


@dataclass(frozen=True)
class Address:
    """A parsed aioipc URL."""

    scheme: str
    path: str
    framing: bool = True
    mode: int = 0o600
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE
    persistent: bool = False
    allowed_uids: tuple[int, ...] | None = None
    codec: str | None = None
    create: bool | None = None
    max_messages: int | None = None
    max_message_size: int | None = None
    max_bytes: int | None = None
    send_type: int = 1
    receive_type: int = 0
    proj: int = 1
    capacity: int = shm.DEFAULT_CAPACITY
    multi_producer: bool = False
    spin: float = 0.0


def _flag(value: str, name: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"URL option {name}={value!r}: expected 1/0, true/false, yes/no")


def parse_url(url: str) -> Address:
    """Parse an aioipc URL. Raises ValueError naming what is wrong with it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported URL scheme {parts.scheme!r} in {url!r}; "
            f"aioipc knows: {', '.join(s + '://' for s in _SCHEMES)}"
        )
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ValueError(f"{url!r} names no path (write {scheme}:///path or {scheme}://@name)")
    if scheme in ("mq", "shm") and not path.startswith("/"):
        path = "/" + path
    if scheme == "sysvmq" and not path.startswith(("/", "@")):
        try:
            int(path, 0)
        except ValueError:
            raise ValueError(
                f"{url!r}: write the key as a number (sysvmq://0x1234, sysvmq://4660) "
                "or a path for ftok (sysvmq:///path?proj=N)"
            ) from None
    if path.startswith("@") and scheme in ("fifo", "shm", *_QUEUES):
        raise ValueError(f"{url!r}: {scheme}:// takes no abstract (@) name")
    kw: dict[str, Any] = {}
    unknown = []
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if key == "framing":
            if value not in ("none", "raw", "frames", "framed"):
                raise ValueError(f"URL option framing={value!r}: expected 'none' or 'frames'")
            kw["framing"] = value in ("frames", "framed")
        elif key == "mode":
            try:
                kw["mode"] = int(value, 8)
            except ValueError:
                raise ValueError(f"URL option mode={value!r}: expected octal, like 0600") from None
        elif key in _INT_OPTIONS:
            try:
                kw[key] = int(value, 0)
            except ValueError:
                raise ValueError(f"URL option {key}={value!r}: expected an integer") from None
        elif key == "create":
            kw["create"] = _flag(value, key)
        elif key == "multi_producer":
            kw[key] = _flag(value, key)
        elif key == "spin":
            try:
                kw[key] = float(value)
            except ValueError:
                raise ValueError(f"URL option spin={value!r}: expected seconds") from None
        elif key == "persistent":
            kw["persistent"] = _flag(value, key)
        elif key == "allowed_uids":
            kw["allowed_uids"] = tuple(int(u) for u in value.split(",") if u)
        elif key == "codec":
            kw["codec"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown URL option(s) {', '.join(unknown)} in {url!r}")
    return Address(scheme, path, **kw)


def _codec(addr: Address, codec: str | Codec | None) -> Codec | None:
    chosen = codec if codec is not None else addr.codec
    return None if chosen is None else get_codec(chosen)


class _CodecListener:
    """A unix listener whose accepted channels come wrapped in a codec."""

    def __init__(self, inner: Any, codec: Codec) -> None:
        self.inner = inner
        self.codec = codec

    async def accept(self) -> Any:
        """As :meth:`aioipc.unix.UnixListener.accept`, with the channel wrapped."""
        return wrap(await self.inner.accept(), self.codec)

    async def serve(self, handler: Callable[[Any], Awaitable[None]]) -> None:
        """As :meth:`aioipc.unix.UnixListener.serve`, with each channel wrapped."""

        async def wrapped(chan: Any) -> None:
            await handler(wrap(chan, self.codec))

        await self.inner.serve(wrapped)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> _CodecListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _sysv_key(addr: Address) -> int:
    if addr.path.startswith("/"):
        return sysv.ftok(addr.path, addr.proj)
    return int(addr.path, 0)


def _open_queue(addr: Address, create: bool) -> Any:
    if addr.scheme == "mq":
        if not create:
            return posix.MessageQueue.open(addr.path)
        return posix.MessageQueue.open_or_create(
            addr.path,
            max_messages=addr.max_messages or 10,
            max_message_size=addr.max_message_size or 8192,
            mode=addr.mode,
        )
    key = _sysv_key(addr)
    if not create:
        return sysv.MessageQueue.open(key, send_type=addr.send_type, receive_type=addr.receive_type)
    return sysv.MessageQueue.open_or_create(
        key,
        mode=addr.mode,
        max_bytes=addr.max_bytes,
        send_type=addr.send_type,
        receive_type=addr.receive_type,
    )


async def connect(url: str, *, codec: str | Codec | None = None) -> Any:
    """Open the sending/connecting side of the object at ``url`` (see the module table).

    Raises:
        ValueError: the URL is malformed or names an unknown scheme or option.
        aioipc.IPCNotFoundError, aioipc.IPCPermissionError, aioipc.IPCConnectionRefusedError:
            as the mechanism's own ``connect``/``open_sender``.

    Cancellation: a cancelled ``connect`` leaves nothing open.
    """
    addr = parse_url(url)
    c = _codec(addr, codec)
    chan: Any
    if addr.scheme in _QUEUES:
        await anyio.lowlevel.checkpoint()  # before opening: a cancel here leaves nothing
        chan = _open_queue(addr, bool(addr.create))
    elif addr.scheme == "shm":
        await anyio.lowlevel.checkpoint()
        if addr.create:
            chan = shm.ShmSender.create(
                addr.path,
                addr.capacity,
                mode=addr.mode,
                multi_producer=addr.multi_producer,
                spin=addr.spin,
            )
        else:
            chan = shm.ShmSender.open(addr.path, spin=addr.spin)
    elif addr.scheme == "fifo":
        chan = await fifo.open_sender(
            addr.path, framing=addr.framing, max_message_size=addr.max_size
        )
    else:
        chan = await unix.connect(
            addr.path,
            _UNIX_KINDS[addr.scheme],
            framing=addr.framing,
            max_message_size=addr.max_size,
        )
    return chan if c is None else wrap(chan, c)


async def listen(url: str, *, codec: str | Codec | None = None) -> Any:
    """Open the receiving/listening side of the object at ``url`` (see the module table).

    Raises:
        ValueError: the URL is malformed or names an unknown scheme or option.
        aioipc.IPCExistsError: a live listener holds the address.
        aioipc.IPCNotFoundError, aioipc.IPCPermissionError: the directory is missing or
            not writable.

    Cancellation: ``listen`` does not wait; a cancelled call leaves nothing open.
    """
    addr = parse_url(url)
    c = _codec(addr, codec)
    if addr.scheme in _QUEUES:
        await anyio.lowlevel.checkpoint()
        q = _open_queue(addr, addr.create is not False)
        return q if c is None else wrap(q, c)
    if addr.scheme == "shm":
        await anyio.lowlevel.checkpoint()
        if addr.create is False:
            ring = shm.ShmReceiver.open(addr.path, spin=addr.spin)
        else:
            ring = shm.ShmReceiver.create(
                addr.path,
                addr.capacity,
                mode=addr.mode,
                multi_producer=addr.multi_producer,
                spin=addr.spin,
            )
        return ring if c is None else wrap(ring, c)
    if addr.scheme == "fifo":
        rx = await fifo.open_receiver(
            addr.path,
            create=True,
            mode=addr.mode,
            framing=addr.framing,
            persistent=addr.persistent,
            max_message_size=addr.max_size,
        )
        return rx if c is None else wrap(rx, c)
    kind = _UNIX_KINDS[addr.scheme]
    obj = await unix.listen(
        addr.path,
        kind,
        mode=addr.mode,
        framing=addr.framing,
        max_message_size=addr.max_size,
        allowed_uids=addr.allowed_uids,
    )
    if c is None:
        return obj
    return wrap(obj, c) if kind == "dgram" else _CodecListener(obj, c)
