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
``shm+duplex://name``     duplex listener (accept ring 0600)      two-way duplex channel
``pubsub://name``         topic, open or create; a subscriber     topic, open or create; a
                                                                  publisher
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

Duplex shared-memory channels (``shm+duplex://name``): ``capacity=N`` (data bytes of each
ring of the pair a ``connect`` makes), ``spin=SECONDS`` (either side),
``accept_timeout=SECONDS`` (how long ``connect`` waits for the listener to accept;
default 10, ``inf`` for ever);
``mode=`` is the accept ring's (``listen``) or the pair's files' (``connect``).
Topics (``pubsub://name``): ``capacity=N`` and ``max_subscribers=N`` (on creation; checked
against an existing topic), ``policy=block|drop_oldest|disconnect`` and
``start=now|oldest`` (``listen`` only). Both ends open the topic or create it; neither
ever removes it (``aioipc.pubsub.unlink``, ``aioipc rm``).

:func:`parse_url` checks every option before anything is opened (see docs/urls.md for
the forms accepted): a value that does not parse or is out of range, an option given
twice, an option of another scheme, a NUL (``%00``) or ``#`` in the path are all a
``ValueError`` naming the option and the URL, never a silent default.

How it is built: one table, ``_SCHEMES``, maps each scheme name to a :class:`_Scheme`
record that holds everything about that scheme and nothing about the others: its
:class:`Address` subclass (whose fields are its options), the parser of each of its
options, how its path is read, its two openers and what shape each returns.
``parse_url``, ``connect`` and ``listen`` only look the scheme up. A new scheme is one
more record and one :func:`_register` call.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar, overload
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, ObjectStream

from . import fifo, posix, pubsub, shm, sysv, unix
from ._core import topic as _topic
from ._core.check import ID_MAX, LONG_MAX, check_int, check_mode, check_seconds
from ._core.libc import MSG_QBYTES_MAX
from ._core.shm_duplex import DEFAULT_CONNECT_TIMEOUT
from .abc import Listener
from .codecs import _CODECS, Codec, CodecListener, get_codec, wrap
from .framing import DEFAULT_MAX_MESSAGE_SIZE, MAX_FRAME_LENGTH

__all__ = [
    "Address",
    "Expect",
    "FifoAddress",
    "PosixQueueAddress",
    "PubSubAddress",
    "ShmAddress",
    "ShmDuplexAddress",
    "SysVQueueAddress",
    "UnixAddress",
    "connect",
    "listen",
    "parse_url",
]

#: What an opened URL is: ``"send"`` (a send-only channel: FIFO writer, ring sender),
#: ``"receive"`` (receive-only: FIFO reader, ring receiver), ``"two-way"`` (unix
#: connections and datagram endpoints, queues) or ``"listener"`` (unix stream and
#: seqpacket listeners, whose ``accept``/``serve`` give two-way channels).
#: ``connect``/``listen`` take it as ``expect=``: the result is typed to match, and a URL
#: whose scheme gives something else is refused before anything is opened.
Expect: TypeAlias = Literal["send", "receive", "two-way", "listener"]

#: What a scheme's openers return (before a codec wraps it). Every ``connect`` gives
#: something that sends; no ``listen`` gives a send-only channel.
_Sending: TypeAlias = ObjectSendStream[bytes]
_Listening: TypeAlias = ObjectReceiveStream[bytes] | Listener[ObjectStream[bytes]]

#: Decimal without leading zeros (a C reader would take 010 for octal), or 0x hex.
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*|0[xX][0-9a-fA-F]+)")
#: Octal permission bits: 0600, 600 or 0o600.
_OCTAL = re.compile(r"(0[oO])?[0-7]+")


# -- option values ----------------------------------------------------------------------
# Each parser takes (value, option name, "URL '...'") and returns the field's value or
# raises ValueError naming the option and the URL.


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


def _timeout(value: str, name: str, what: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{what}: option {name}={value!r} is not seconds (like 2.5)") from None
    return check_seconds(seconds, name, what=what, allow_inf=True)


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


def _choice(*choices: str) -> Callable[[str, str, str], str]:
    def parse(value: str, name: str, what: str) -> str:
        if value not in choices:
            raise ValueError(
                f"{what}: option {name}={value!r}: expected one of {', '.join(choices)}"
            )
        return value

    return parse


def _topic_capacity(value: str, name: str, what: str) -> int:
    capacity = _integer(value, name, what, _topic.MIN_CAPACITY, _topic.MAX_CAPACITY)
    if capacity % 16:
        raise ValueError(f"{what}: option {name}={value}: a multiple of 16 bytes is needed")
    return capacity


def _codec_name(value: str, name: str, what: str) -> str:
    if value not in _CODECS:
        raise ValueError(
            f"{what}: option {name}={value!r}: unknown codec; choose one of {sorted(_CODECS)}"
        )
    return value


# -- addresses: one record per scheme, its fields are that scheme's options ------------


@dataclass(frozen=True)
class Address:
    """A parsed aioipc URL: what every scheme has. Each scheme's own options are the
    fields of its subclass (:class:`UnixAddress`, :class:`FifoAddress`,
    :class:`PosixQueueAddress`, :class:`SysVQueueAddress`, :class:`ShmAddress`,
    :class:`ShmDuplexAddress`)."""

    scheme: str
    path: str
    mode: int = 0o600
    codec: str | None = None


_UNIX_KINDS: dict[str, unix.Kind] = {
    "unix": "stream",
    "unix+stream": "stream",
    "unix+seqpacket": "seqpacket",
    "unix+dgram": "dgram",
}


@dataclass(frozen=True)
class UnixAddress(Address):
    """``unix://``, ``unix+stream://``, ``unix+seqpacket://``, ``unix+dgram://``."""

    framing: bool = True
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE
    allowed_uids: tuple[int, ...] | None = None

    @property
    def kind(self) -> unix.Kind:
        """The socket kind the scheme names."""
        return _UNIX_KINDS[self.scheme]


@dataclass(frozen=True)
class FifoAddress(Address):
    """``fifo://``."""

    framing: bool = True
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE
    persistent: bool = False
    max_partial: int | None = None


@dataclass(frozen=True)
class PosixQueueAddress(Address):
    """``mq://``."""

    create: bool | None = None
    max_messages: int | None = None
    max_message_size: int | None = None


@dataclass(frozen=True)
class SysVQueueAddress(Address):
    """``sysvmq://``."""

    create: bool | None = None
    max_bytes: int | None = None
    send_type: int = 1
    receive_type: int = 0
    proj: int = 1

    @property
    def key(self) -> int:
        """The queue's key: the number written, or ``ftok(path, proj)``."""
        if self.path.startswith("/"):
            return sysv.ftok(self.path, self.proj)
        return int(self.path, 0)


@dataclass(frozen=True)
class ShmAddress(Address):
    """``shm://``."""

    create: bool | None = None
    capacity: int = shm.DEFAULT_CAPACITY
    multi_producer: bool = False
    spin: float = 0.0


@dataclass(frozen=True)
class ShmDuplexAddress(Address):
    """``shm+duplex://``."""

    capacity: int = shm.DEFAULT_CAPACITY
    spin: float = 0.0
    accept_timeout: float = DEFAULT_CONNECT_TIMEOUT


@dataclass(frozen=True)
class PubSubAddress(Address):
    """``pubsub://``. ``None``: not given (the defaults, and nothing checked against an
    existing topic)."""

    capacity: int | None = None
    max_subscribers: int | None = None
    policy: pubsub.Policy | None = None
    start: pubsub.Start | None = None


# -- the table -------------------------------------------------------------------------

_A = TypeVar("_A", bound=Address)
_Parse: TypeAlias = Callable[[str, str, str], object]

#: The options every scheme takes.
_COMMON: Mapping[str, _Parse] = {"codec": _codec_name, "mode": _mode}


def _keep_path(scheme: str, path: str, url: str) -> str:
    return path


def _no_abstract(scheme: str, path: str, url: str) -> str:
    if path.startswith("@"):
        raise ValueError(f"{url!r}: {scheme}:// takes no abstract (@) name")
    return path


def _slash_name(scheme: str, path: str, url: str) -> str:
    return path if path.startswith("/") else "/" + path


def _sysv_path(scheme: str, path: str, url: str) -> str:
    if not path.startswith(("/", "@")) and not _INTEGER.fullmatch(path):
        # The same forms as an integer option: int(path, 0) would also take 0o17, 0b11
        # and 1_7 (keys 15, 3 and 17), and a reader of the URL would not.
        raise ValueError(
            f"{url!r}: write the key as a number, decimal or 0x hex (sysvmq://0x1234, "
            "sysvmq://4660), or a path for ftok (sysvmq:///path?proj=N)"
        )
    return _no_abstract(scheme, path, url)


def _no_check(path: str, given: Mapping[str, object], what: str) -> None:
    pass


def _proj_needs_a_path(path: str, given: Mapping[str, object], what: str) -> None:
    if "proj" in given and not path.startswith("/"):
        raise ValueError(f"{what}: option proj= applies to a path key (sysvmq:///path?proj=N)")


@dataclass(frozen=True)
class _Scheme(Generic[_A]):
    """Everything about one scheme: how its URL reads and what opening it does."""

    #: The record ``parse_url`` returns; its fields are the options below.
    address: type[_A]
    #: This scheme's own options: name -> parser (``_COMMON``'s apply too).
    options: Mapping[str, _Parse]
    connect: Callable[[_A], Awaitable[_Sending]]
    listen: Callable[[_A], Awaitable[_Listening]]
    #: What ``connect`` and ``listen`` give (see :data:`Expect`).
    connects: Expect
    listens: Expect
    #: (scheme, path, url) -> the path as the opener wants it; raises ValueError.
    path: Callable[[str, str, str], str] = _keep_path
    #: (path, the options given, "URL '...'"): checks across options; raises ValueError.
    check: Callable[[str, Mapping[str, object], str], None] = _no_check
    #: Every option this scheme takes, common ones included.
    all_options: Mapping[str, _Parse] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_options", {**_COMMON, **self.options})


#: scheme name -> its record, in the order error messages list them.
_SCHEMES: dict[str, _Scheme[Any]] = {}


def _register(scheme: _Scheme[Any], *names: str) -> None:
    for name in names:
        _SCHEMES[name] = scheme


# unix://, unix+stream://, unix+seqpacket://, unix+dgram://


async def _unix_connect(a: UnixAddress) -> _Sending:
    return await unix.connect(a.path, a.kind, framing=a.framing, max_message_size=a.max_size)


async def _unix_listen(a: UnixAddress) -> _Listening:
    return await unix.listen(
        a.path,
        a.kind,
        mode=a.mode,
        framing=a.framing,
        max_message_size=a.max_size,
        allowed_uids=a.allowed_uids,
    )


_UNIX_OPTIONS: dict[str, _Parse] = {
    "max_size": _size(MAX_FRAME_LENGTH),
    "allowed_uids": _uids,
}
_register(
    _Scheme(
        UnixAddress,
        {"framing": _framing, **_UNIX_OPTIONS},
        _unix_connect,
        _unix_listen,
        connects="two-way",
        listens="listener",
    ),
    "unix",
    "unix+stream",
)
_register(
    _Scheme(
        UnixAddress,
        _UNIX_OPTIONS,
        _unix_connect,
        _unix_listen,
        connects="two-way",
        listens="listener",
    ),
    "unix+seqpacket",
)
_register(
    _Scheme(
        UnixAddress,
        _UNIX_OPTIONS,
        _unix_connect,
        _unix_listen,
        connects="two-way",
        listens="two-way",
    ),
    "unix+dgram",
)


# fifo://


async def _fifo_connect(a: FifoAddress) -> _Sending:
    return await fifo.open_sender(a.path, framing=a.framing, max_message_size=a.max_size)


async def _fifo_listen(a: FifoAddress) -> _Listening:
    return await fifo.open_receiver(
        a.path,
        create=True,
        mode=a.mode,
        framing=a.framing,
        persistent=a.persistent,
        max_message_size=a.max_size,
        max_partial_bytes=a.max_partial,
    )


_register(
    _Scheme(
        FifoAddress,
        {
            "framing": _framing,
            "max_size": _size(MAX_FRAME_LENGTH),
            "persistent": _flag,
            "max_partial": _size(LONG_MAX),
        },
        _fifo_connect,
        _fifo_listen,
        connects="send",
        listens="receive",
        path=_no_abstract,
    ),
    "fifo",
)


# mq://


def _open_posix_queue(a: PosixQueueAddress, create: bool) -> posix.MessageQueue:
    if not create:
        return posix.MessageQueue.open(a.path)
    return posix.MessageQueue.open_or_create(
        a.path,
        max_messages=10 if a.max_messages is None else a.max_messages,
        max_message_size=8192 if a.max_message_size is None else a.max_message_size,
        mode=a.mode,
    )


async def _mq_connect(a: PosixQueueAddress) -> _Sending:
    await anyio.lowlevel.checkpoint()  # before opening: a cancel here leaves nothing
    return _open_posix_queue(a, bool(a.create))


async def _mq_listen(a: PosixQueueAddress) -> _Listening:
    await anyio.lowlevel.checkpoint()
    return _open_posix_queue(a, a.create is not False)


_register(
    _Scheme(
        PosixQueueAddress,
        {
            "create": _flag,
            "max_messages": _size(LONG_MAX),
            "max_message_size": _size(LONG_MAX),
        },
        _mq_connect,
        _mq_listen,
        connects="two-way",
        listens="two-way",
        path=_slash_name,
    ),
    "mq",
)


# sysvmq://


def _open_sysv_queue(a: SysVQueueAddress, create: bool) -> sysv.MessageQueue:
    if not create:
        return sysv.MessageQueue.open(a.key, send_type=a.send_type, receive_type=a.receive_type)
    return sysv.MessageQueue.open_or_create(
        a.key,
        mode=a.mode,
        max_bytes=a.max_bytes,
        send_type=a.send_type,
        receive_type=a.receive_type,
    )


async def _sysvmq_connect(a: SysVQueueAddress) -> _Sending:
    await anyio.lowlevel.checkpoint()  # before opening: a cancel here leaves nothing
    return _open_sysv_queue(a, bool(a.create))


async def _sysvmq_listen(a: SysVQueueAddress) -> _Listening:
    await anyio.lowlevel.checkpoint()
    return _open_sysv_queue(a, a.create is not False)


_register(
    _Scheme(
        SysVQueueAddress,
        {
            "create": _flag,
            "max_bytes": _size(MSG_QBYTES_MAX),
            "send_type": _size(LONG_MAX),
            "receive_type": _ranged(-LONG_MAX, LONG_MAX),
            "proj": _ranged(0, 255),
        },
        _sysvmq_connect,
        _sysvmq_listen,
        connects="two-way",
        listens="two-way",
        path=_sysv_path,
        check=_proj_needs_a_path,
    ),
    "sysvmq",
)


# shm://


async def _shm_connect(a: ShmAddress) -> _Sending:
    await anyio.lowlevel.checkpoint()
    if a.create:
        return shm.ShmSender.create(
            a.path, a.capacity, mode=a.mode, multi_producer=a.multi_producer, spin=a.spin
        )
    return shm.ShmSender.open(a.path, spin=a.spin)


async def _shm_listen(a: ShmAddress) -> _Listening:
    await anyio.lowlevel.checkpoint()
    if a.create is False:
        return shm.ShmReceiver.open(a.path, spin=a.spin)
    return shm.ShmReceiver.create(
        a.path, a.capacity, mode=a.mode, multi_producer=a.multi_producer, spin=a.spin
    )


_register(
    _Scheme(
        ShmAddress,
        {
            "create": _flag,
            "capacity": _size(LONG_MAX),
            "multi_producer": _flag,
            "spin": _spin,
        },
        _shm_connect,
        _shm_listen,
        connects="send",
        listens="receive",
        path=_slash_name,
    ),
    "shm",
)


# shm+duplex://


async def _shm_duplex_connect(a: ShmDuplexAddress) -> _Sending:
    return await shm.ShmDuplex.connect(
        a.path, capacity=a.capacity, mode=a.mode, spin=a.spin, accept_timeout=a.accept_timeout
    )


async def _shm_duplex_listen(a: ShmDuplexAddress) -> _Listening:
    await anyio.lowlevel.checkpoint()
    return shm.ShmDuplexListener.create(a.path, mode=a.mode, spin=a.spin)


# pubsub://


def _open_topic(a: PubSubAddress) -> pubsub.Topic:
    # Whoever comes first creates it; nobody removes it: a topic is named and outlives
    # its ends, like a queue (aioipc.pubsub.unlink, `aioipc rm topic NAME`).
    return pubsub.Topic.open_or_create(
        a.path, a.capacity, max_subscribers=a.max_subscribers, mode=a.mode
    )


async def _pubsub_connect(a: PubSubAddress) -> _Sending:
    for option in ("policy", "start"):
        if getattr(a, option) is not None:
            raise ValueError(
                f"URL 'pubsub://{a.path}': option {option}= is a subscriber's: it applies "
                "to listen(), not to connect() (a publisher)"
            )
    await anyio.lowlevel.checkpoint()  # before opening: a cancel here leaves nothing
    with _open_topic(a) as topic:
        return topic.publisher()


async def _pubsub_listen(a: PubSubAddress) -> _Listening:
    await anyio.lowlevel.checkpoint()
    with _open_topic(a) as topic:
        return await topic.subscribe(a.policy or "drop_oldest", a.start or "now")


_register(
    _Scheme(
        ShmDuplexAddress,
        {"capacity": _size(LONG_MAX), "spin": _spin, "accept_timeout": _timeout},
        _shm_duplex_connect,
        _shm_duplex_listen,
        connects="two-way",
        listens="listener",
        path=_slash_name,
    ),
    "shm+duplex",
)


_register(
    _Scheme(
        PubSubAddress,
        {
            "capacity": _topic_capacity,
            "max_subscribers": _ranged(1, _topic.MAX_SUBSCRIBERS),
            "policy": _choice("block", "drop_oldest", "disconnect"),
            "start": _choice("now", "oldest"),
        },
        _pubsub_connect,
        _pubsub_listen,
        connects="send",
        listens="receive",
        path=_slash_name,
    ),
    "pubsub",
)


# -- parsing ---------------------------------------------------------------------------


def parse_url(url: str) -> Address:
    """Parse an aioipc URL and check every option, before anything is opened.

    Returns the scheme's :class:`Address` subclass (``UnixAddress`` for ``unix://``...),
    whose fields are that scheme's options.

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
    entry = _SCHEMES.get(scheme)
    if entry is None:
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
    path = entry.path(scheme, path, url)
    given: dict[str, Any] = {}
    unknown = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        parse = entry.all_options.get(key)
        if parse is None:
            owners = [s for s, e in _SCHEMES.items() if key in e.all_options]
            if not owners:
                unknown.append(key)
                continue
            # An option of another scheme would be ignored, so it is an error instead.
            raise ValueError(
                f"{what}: option {key}= does not apply to {scheme}:// "
                f"(it is for {', '.join(s + '://' for s in owners)})"
            )
        if key in given:
            raise ValueError(f"{what}: option {key}= is given twice")
        given[key] = parse(value, key, what)
    if unknown:
        raise ValueError(f"unknown URL option(s) {', '.join(unknown)} in {url!r}")
    entry.check(path, given, what)
    address: Address = entry.address(scheme, path, **given)
    return address


# -- opening ---------------------------------------------------------------------------

#: Which shapes satisfy each ``expect=``: a two-way channel sends and receives.
_SATISFIES: dict[str, tuple[Expect, ...]] = {
    "send": ("send", "two-way"),
    "receive": ("receive", "two-way"),
    "two-way": ("two-way",),
    "listener": ("listener",),
}
_SAY: dict[str, str] = {
    "send": "a send-only channel",
    "receive": "a receive-only channel",
    "two-way": "a two-way channel",
    "listener": "a listener (its accept() gives the channels)",
}


def _look_up(
    url: str, side: str, expect: str | None, allowed: tuple[str, ...]
) -> tuple[Address, _Scheme[Any]]:
    addr = parse_url(url)
    entry = _SCHEMES[addr.scheme]
    if expect is not None:
        if expect not in allowed:
            raise ValueError(
                f"{side}(): expect={expect!r} is not one of {', '.join(map(repr, allowed))}"
            )
        shape = entry.connects if side == "connect" else entry.listens
        if shape not in _SATISFIES[expect]:
            raise ValueError(
                f"URL {url!r}: {side}() on {addr.scheme}:// gives {_SAY[shape]}, "
                f"not {_SAY[expect]} (expect={expect!r})"
            )
    return addr, entry


def _codec(addr: Address, codec: str | Codec | None) -> Codec | None:
    chosen = codec if codec is not None else addr.codec
    return None if chosen is None else get_codec(chosen)


@overload
async def connect(
    url: str, *, codec: str | Codec | None = None, expect: Literal["send"] | None = None
) -> ObjectSendStream[Any]: ...
@overload
async def connect(
    url: str, *, codec: str | Codec | None = None, expect: Literal["two-way"]
) -> ObjectStream[Any]: ...


async def connect(
    url: str,
    *,
    codec: str | Codec | None = None,
    expect: Literal["send", "two-way"] | None = None,
) -> ObjectSendStream[Any]:
    """Open the sending/connecting side of the object at ``url`` (see the module table).

    Every scheme's ``connect`` gives a channel that sends; ``expect="two-way"`` types it
    as a two-way channel (unix sockets, queues) and refuses a scheme whose sender is
    one-way (``fifo://``, ``shm://``, ``pubsub://``) before opening anything. Items are
    ``bytes``, or the codec's objects with a codec (the ``codec`` argument or ``?codec=``).

    Raises:
        ValueError: the URL is malformed or names an unknown scheme or option; the
            scheme does not give what ``expect`` asks for; an existing topic has another
            ``capacity`` or ``max_subscribers`` than the URL says.
        aioipc.IPCNotFoundError, aioipc.IPCPermissionError, aioipc.IPCConnectionRefusedError:
            as the mechanism's own ``connect``/``open_sender``.

    Cancellation: a cancelled ``connect`` leaves nothing open.
    """
    addr, entry = _look_up(url, "connect", expect, ("send", "two-way"))
    c = _codec(addr, codec)
    chan = await entry.connect(addr)
    return chan if c is None else wrap(chan, c)


@overload
async def listen(
    url: str, *, codec: str | Codec | None = None, expect: None = None
) -> ObjectReceiveStream[Any] | Listener[ObjectStream[Any]]: ...
@overload
async def listen(
    url: str, *, codec: str | Codec | None = None, expect: Literal["receive"]
) -> ObjectReceiveStream[Any]: ...
@overload
async def listen(
    url: str, *, codec: str | Codec | None = None, expect: Literal["two-way"]
) -> ObjectStream[Any]: ...
@overload
async def listen(
    url: str, *, codec: str | Codec | None = None, expect: Literal["listener"]
) -> Listener[ObjectStream[Any]]: ...


async def listen(
    url: str, *, codec: str | Codec | None = None, expect: Expect | None = None
) -> ObjectReceiveStream[Any] | Listener[ObjectStream[Any]]:
    """Open the receiving/listening side of the object at ``url`` (see the module table).

    What comes back depends on the scheme: a receive-only channel (``fifo://``,
    ``shm://``, ``pubsub://``: a subscriber), a two-way channel (queues,
    ``unix+dgram://``) or a listener (``unix://``, ``unix+seqpacket://``).
    ``expect="receive"``, ``"two-way"`` or ``"listener"`` types the result and refuses,
    before opening anything, a URL whose scheme gives something else. With a codec, a
    listener's channels come wrapped (a :class:`aioipc.codecs.CodecListener`).

    Raises:
        ValueError: the URL is malformed or names an unknown scheme or option; the
            scheme does not give what ``expect`` asks for; an existing topic has another
            ``capacity`` or ``max_subscribers`` than the URL says.
        aioipc.IPCExistsError: a live listener holds the address.
        aioipc.IPCNotFoundError, aioipc.IPCPermissionError: the directory is missing or
            not writable.
        anyio.BusyResourceError: every subscriber slot of the topic is taken.
        aioipc.ProtocolError: the ``pubsub://`` name is a file that is not a topic.

    Cancellation: ``listen`` does not wait (but for ``pubsub://``, a moment, for a
    publisher in the middle of a publish); a cancelled call leaves nothing open (a topic
    it created stays: topics outlive their ends).
    """
    addr, entry = _look_up(url, "listen", expect, ("receive", "two-way", "listener"))
    c = _codec(addr, codec)
    obj = await entry.listen(addr)
    if c is None:
        return obj
    if isinstance(obj, Listener):
        return CodecListener(obj, c)
    return wrap(obj, c)
