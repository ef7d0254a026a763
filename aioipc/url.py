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

Query options: ``framing=none`` (raw bytes; unix stream and FIFO), ``mode=0600`` (octal,
for what the call creates), ``max_size=N`` (bytes; unix and FIFO), ``persistent=1`` and
``max_partial=N`` (FIFO receiver: never end; the bytes held for unfinished messages),
``allowed_uids=1000,1001`` (unix listeners). ``codec=`` (or the ``codec``
argument) wraps the channel in a codec: ``bytes``, ``json``, ``pickle``, ``msgspec``.

Queues: ``create=1`` (``connect`` creates a missing queue too; ``create=0`` makes
``listen`` only open), ``max_messages=N`` and ``max_message_size=N`` (POSIX, on
creation), ``max_bytes=N`` (SysV, on creation), ``send_type=T`` and ``receive_type=T``
(SysV: the types ``send``/``receive`` use, for two-way use of one queue), ``proj=N``
(SysV: the ftok project id, default 1). ``KEY`` is decimal or ``0x`` hex.

Shared-memory rings (``shm://name`` or ``shm:///name``): ``capacity=N`` (data bytes, on
creation), ``multi_producer=1`` (on creation), ``spin=SECONDS`` (low-latency mode),
``create=0`` (``listen`` attaches to an existing ring), ``create=1`` (``connect`` creates
the ring and removes it when the sender closes).

:func:`parse_url` checks every option before anything is opened (see docs/urls.md for
the forms accepted): a value that does not parse or is out of range, an option given
twice, an option of another scheme, a NUL (``%00``) or ``#`` in the path are all a
``ValueError`` naming the option and the URL, never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio

from . import fifo, posix, shm, sysv, unix
from ._core.check import ID_MAX, LONG_MAX, check_int, check_mode, check_seconds
from ._core.libc import MSG_QBYTES_MAX
from .codecs import _CODECS, Codec, get_codec, wrap
from .framing import DEFAULT_MAX_MESSAGE_SIZE, MAX_FRAME_LENGTH

__all__ = ["Address", "connect", "listen", "parse_url"]

_UNIX_KINDS: dict[str, unix.Kind] = {
    "unix": "stream",
    "unix+stream": "stream",
    "unix+seqpacket": "seqpacket",
    "unix+dgram": "dgram",
}
_QUEUES = ("mq", "sysvmq")
_SCHEMES = (*_UNIX_KINDS, "fifo", *_QUEUES, "shm")

#: Decimal without leading zeros (a C reader would take 010 for octal), or 0x hex.
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*|0[xX][0-9a-fA-F]+)")
#: Octal permission bits: 0600, 600 or 0o600.
_OCTAL = re.compile(r"(0[oO])?[0-7]+")


@dataclass(frozen=True)
class Address:
    """A parsed aioipc URL."""

    scheme: str
    path: str
    framing: bool = True
    mode: int = 0o600
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE
    persistent: bool = False
    max_partial: int | None = None
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


def _integer(value: str, name: str, what: str, minimum: int, maximum: int) -> int:
    if not _INTEGER.fullmatch(value):
        hint = " (no leading zeros)" if re.fullmatch(r"-?0[0-9]+", value) else ""
        raise ValueError(
            f"{what}: option {name}={value!r} is not an integer{hint}: write it in decimal "
            "or as 0x hex"
        )
    return check_int(_int(value, name, what, 0), name, minimum=minimum, maximum=maximum, what=what)


def _int(digits: str, name: str, what: str, base: int) -> int:
    try:
        return int(digits, base)
    except ValueError:
        # Only Python's cap on decimal digits (4300) is left to fail here.
        raise ValueError(f"{what}: option {name}: {digits[:20]}... is far out of range") from None


def _size(maximum: int) -> Callable[[str, str, str], int]:
    return lambda value, name, what: _integer(value, name, what, 1, maximum)


def _ranged(minimum: int, maximum: int) -> Callable[[str, str, str], int]:
    return lambda value, name, what: _integer(value, name, what, minimum, maximum)


def _flag(value: str, name: str, what: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{what}: option {name}={value!r}: expected 1/0, true/false, yes/no, on/off")


def _mode(value: str, name: str, what: str) -> int:
    if not _OCTAL.fullmatch(value):
        raise ValueError(
            f"{what}: option {name}={value!r} is not octal permission bits (like 0600)"
        )
    return check_mode(int(value.lower().removeprefix("0o"), 8), what, name)


def _framing(value: str, name: str, what: str) -> bool:
    if value not in ("none", "raw", "frames", "framed"):
        raise ValueError(f"{what}: option {name}={value!r}: expected 'none' or 'frames'")
    return value in ("frames", "framed")


def _spin(value: str, name: str, what: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{what}: option {name}={value!r} is not seconds (like 5e-5)") from None
    return check_seconds(seconds, name, what=what)


def _uids(value: str, name: str, what: str) -> tuple[int, ...]:
    items = value.split(",")
    if "" in items:
        # An empty list would shut every client out, which no one means to write.
        raise ValueError(f"{what}: option {name}={value!r} has an empty item")
    uids = []
    for item in items:
        if not item.isascii() or not item.isdigit():
            raise ValueError(f"{what}: option {name}: {item!r} is not a uid (0..{ID_MAX})")
        uid = _int(item, name, what, 10)
        uids.append(check_int(uid, name, minimum=0, maximum=ID_MAX, what=what))
    return tuple(uids)


def _codec_name(value: str, name: str, what: str) -> str:
    if value not in _CODECS:
        raise ValueError(
            f"{what}: option {name}={value!r}: unknown codec; choose one of {sorted(_CODECS)}"
        )
    return value


_UNIX = tuple(_UNIX_KINDS)
# Each option: its parser (value, name, what -> the Address field), and the schemes it
# applies to. An option of another scheme would be ignored, so it is an error instead.
_OPTIONS: dict[str, tuple[Callable[[str, str, str], Any], tuple[str, ...]]] = {
    "codec": (_codec_name, _SCHEMES),
    "mode": (_mode, _SCHEMES),
    "framing": (_framing, ("unix", "unix+stream", "fifo")),
    "max_size": (_size(MAX_FRAME_LENGTH), (*_UNIX, "fifo")),
    "persistent": (_flag, ("fifo",)),
    "max_partial": (_size(LONG_MAX), ("fifo",)),
    "allowed_uids": (_uids, _UNIX),
    "create": (_flag, ("mq", "sysvmq", "shm")),
    "max_messages": (_size(LONG_MAX), ("mq",)),
    "max_message_size": (_size(LONG_MAX), ("mq",)),
    "max_bytes": (_size(MSG_QBYTES_MAX), ("sysvmq",)),
    "send_type": (_size(LONG_MAX), ("sysvmq",)),
    "receive_type": (_ranged(-LONG_MAX, LONG_MAX), ("sysvmq",)),
    "proj": (_ranged(0, 255), ("sysvmq",)),
    "capacity": (_size(LONG_MAX), ("shm",)),
    "multi_producer": (_flag, ("shm",)),
    "spin": (_spin, ("shm",)),
}


def parse_url(url: str) -> Address:
    """Parse an aioipc URL and check every option, before anything is opened.

    Raises:
        ValueError: naming the URL and what is wrong with it: an unknown scheme or
            option, an option given twice or for another scheme, a value that does not
            parse or is out of range, a path with a NUL byte or a ``#``, a control
            character anywhere (write it %-encoded).
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        # urlsplit silently drops tabs and newlines: "mq:///a\nb" would open /ab.
        raise ValueError(f"URL {url!r}: has a control character; %-encode it (%0A) in a name")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported URL scheme {parts.scheme!r} in {url!r}; "
            f"aioipc knows: {', '.join(s + '://' for s in _SCHEMES)}"
        )
    what = f"URL {url!r}"
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{what}: a '#' ends the path there; write it as %23 in a name")
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ValueError(f"{url!r} names no path (write {scheme}:///path or {scheme}://@name)")
    if "\0" in path:
        # The kernel would stop at the NUL and use a shorter path than the one written.
        raise ValueError(f"{what}: the path has a NUL byte (%00) in it")
    if scheme in ("mq", "shm") and not path.startswith("/"):
        path = "/" + path
    if scheme == "sysvmq" and not path.startswith(("/", "@")) and not _INTEGER.fullmatch(path):
        # The same forms as an integer option: int(path, 0) would also take 0o17, 0b11
        # and 1_7 (keys 15, 3 and 17), and a reader of the URL would not.
        raise ValueError(
            f"{url!r}: write the key as a number, decimal or 0x hex (sysvmq://0x1234, "
            "sysvmq://4660), or a path for ftok (sysvmq:///path?proj=N)"
        )
    if path.startswith("@") and scheme in ("fifo", "shm", *_QUEUES):
        raise ValueError(f"{url!r}: {scheme}:// takes no abstract (@) name")
    kw: dict[str, Any] = {}
    unknown = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _OPTIONS:
            unknown.append(key)
            continue
        parse, schemes = _OPTIONS[key]
        if scheme not in schemes:
            raise ValueError(
                f"{what}: option {key}= does not apply to {scheme}:// "
                f"(it is for {', '.join(s + '://' for s in schemes)})"
            )
        if key in kw:
            raise ValueError(f"{what}: option {key}= is given twice")
        kw[key] = parse(value, key, what)
    if unknown:
        raise ValueError(f"unknown URL option(s) {', '.join(unknown)} in {url!r}")
    if "proj" in kw and not path.startswith("/"):
        raise ValueError(f"{what}: option proj= applies to a path key (sysvmq:///path?proj=N)")
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
            max_messages=10 if addr.max_messages is None else addr.max_messages,
            max_message_size=8192 if addr.max_message_size is None else addr.max_message_size,
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
            max_partial_bytes=addr.max_partial,
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
