"""The implementation behind the duplex shared-memory channel of :mod:`aioipc.shm`:
:class:`ShmDuplex` (an anyio ObjectStream of bytes over two rings) and
:class:`ShmDuplexListener`, which accepts any number of peers under one name.

How a peer connects (docs/shared-memory.md, "The duplex channel"):

1. The listener ``/jobs`` is a multi-producer ring ``/jobs`` (the accept ring) that only
   it receives from.
2. A client makes a private pair of rings, ``/jobs.<16 hex>.c2s`` (it sends) and
   ``/jobs.<16 hex>.s2c`` (it receives), the hex being 8 random bytes (the token), and
   sends a connection request naming the token on the accept ring.
3. ``accept()`` reads the request, derives the pair's names from its own name and the
   token (a request carries no path, so it can never make the listener open anything
   outside its own prefix), attaches the other ends, sends a welcome record on ``s2c``
   and removes the pair's files: from then on they exist only as mappings.
4. The client receives the welcome, removes the files too (whoever is first) and has
   its channel. Whatever dies when, the files go: the client removes them on any
   failure or cancellation, the listener removes a pair whose client died, and a
   listener sweeps stale pairs under its prefix when it starts, while it accepts (at
   most every :data:`SWEEP_INTERVAL`) and when it closes.

The request and the welcome share one fixed 32-byte layout, owned by :class:`Hello`
(sans-IO, with its own validation); :func:`pair_names` is the one place that turns a
token into names. The rings themselves are plain :class:`~aioipc._core.shm.ShmSender`
and :class:`~aioipc._core.shm.ShmReceiver` ends.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import anyio.abc
from anyio import BrokenResourceError, BusyResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ObjectStream
from anyio.lowlevel import checkpoint

from ..abc import IPCAttribute, Listener
from ..errors import (
    IPCConnectionRefusedError,
    IPCError,
    IPCExistsError,
    IPCNotFoundError,
    ProtocolError,
    translate_os_error,
)
from . import registry as _registry
from . import ring as _ring
from .check import check_mode, check_seconds
from .doorbell import PEER_CHECK_INTERVAL
from .posix_base import check_name
from .shm import (
    _BELL_SPACE,
    DEFAULT_CAPACITY,
    SHM_DIR,
    ShmReceiver,
    ShmSender,
    _ReceivedView,
    _Reservation,
    is_stale,
    unlink,
)
from .shm_lock import close_region
from .unix import _stray_cancellation

__all__ = [
    "ACCEPT_CAPACITY",
    "DEFAULT_CONNECT_TIMEOUT",
    "Hello",
    "ShmDuplex",
    "ShmDuplexListener",
    "pair_names",
]

_log = logging.getLogger("aioipc.shm")

#: Data bytes of a listener's accept ring: room for about 1,600 pending requests (40
#: bytes each with the ring's record header); a client that finds it full waits for
#: room, within its connect timeout.
ACCEPT_CAPACITY = 1 << 16
#: How long ``ShmDuplex.connect`` waits for a listener to accept, by default (seconds):
#: a listener that is alive but never accepts would otherwise hold a client for ever.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: At most how often ``accept()`` looks for stale pairs under its prefix (seconds).
SWEEP_INTERVAL = 10.0


# -- the handshake: one record layout, one owner (sans-IO) ------------------------------

KIND_REQUEST = 1
KIND_WELCOME = 2
_TOKEN_SIZE = 8
_PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit


@dataclass(frozen=True)
class Hello:
    """A connection request (client -> accept ring) or a welcome (listener -> the
    client's ``s2c`` ring). 32 bytes, little-endian::

        0   4s  magic b"aiDX"
        4   u16 version (1)
        6   u16 kind (1 request, 2 welcome)
        8   u32 the sender's pid, as it says (logs only: who a peer is comes from the
            kernel's locks)
        12  u32 reserved, 0
        16  8s  token: its lowercase hex names the client's pair of rings
        24  8x  reserved, 0

    :meth:`decode` refuses anything else with ProtocolError: another size, magic,
    version or kind, a reserved byte that is not zero, a pid out of range.
    """

    kind: int
    pid: int
    token: bytes

    MAGIC = b"aiDX"
    VERSION = 1
    _STRUCT = struct.Struct("<4sHHII8s8s")
    SIZE = _STRUCT.size

    def encode(self) -> bytes:
        if self.kind not in (KIND_REQUEST, KIND_WELCOME):
            raise ValueError(f"a hello's kind is 1 (request) or 2 (welcome), not {self.kind!r}")
        if len(self.token) != _TOKEN_SIZE:
            raise ValueError(f"a token is {_TOKEN_SIZE} bytes, not {len(self.token)}")
        if not 0 < self.pid < _PID_MAX:
            raise ValueError(f"a pid is 1..{_PID_MAX - 1}, not {self.pid!r}")
        return self._STRUCT.pack(
            self.MAGIC, self.VERSION, self.kind, self.pid, 0, self.token, bytes(8)
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, kind: int, what: str) -> Hello:
        """The record in ``data``, which must be a valid hello of ``kind``.

        Raises:
            aioipc.ProtocolError: naming ``what`` and the first thing wrong.
        """
        if len(data) != cls.SIZE:
            raise ProtocolError(f"{what}: a {cls.SIZE}-byte record expected, got {len(data)}")
        magic, version, got_kind, pid, zero, token, tail = cls._STRUCT.unpack(data)
        if magic != cls.MAGIC:
            raise ProtocolError(f"{what}: bad magic {magic!r} (expected {cls.MAGIC!r})")
        if version != cls.VERSION:
            raise ProtocolError(f"{what}: version {version}, this aioipc speaks {cls.VERSION}")
        if got_kind != kind:
            raise ProtocolError(f"{what}: record kind {got_kind}, expected {kind}")
        if zero or any(tail):
            raise ProtocolError(f"{what}: reserved bytes are not zero")
        if not 0 < pid < _PID_MAX:
            raise ProtocolError(f"{what}: pid {pid} is out of range")
        return cls(got_kind, pid, token)


#: What a pair's ring names add to the listener's name: "." + 16 hex + ".c2s".
_PAIR_SUFFIX_LEN = 1 + 2 * _TOKEN_SIZE + 4


def check_listener_name(name: str) -> str:
    """A listener's name: a ring name short enough that its pairs' names (and their
    doorbells) fit in NAME_MAX too.

    Raises:
        TypeError, ValueError: naming the rule broken.
    """
    return check_name(name, "duplex listener", prefix_len=len(_BELL_SPACE) + _PAIR_SUFFIX_LEN)


def pair_names(listener: str, token: bytes) -> tuple[str, str]:
    """The client-to-server and server-to-client ring names of ``token``'s pair."""
    if len(token) != _TOKEN_SIZE:
        raise ValueError(f"a token is {_TOKEN_SIZE} bytes, not {len(token)}")
    base = f"{listener}.{token.hex()}"
    return base + ".c2s", base + ".s2c"


def _pair_file(listener: str) -> re.Pattern[str]:
    """The /dev/shm entries of ``listener``'s pairs: group 1 is the ring name."""
    return re.compile(
        re.escape(listener[1:]) + r"(\.[0-9a-f]{16}\.(?:c2s|s2c))(\.bell-(?:data|space))?"
    )


# -- the channel ------------------------------------------------------------------------


class ShmDuplex(ObjectStream[bytes]):
    """A two-way shared-memory channel: an anyio ObjectStream of bytes over two rings,
    one per direction (``send`` writes into one, ``receive`` reads the other).

    Made by :meth:`connect` (the client) or :meth:`ShmDuplexListener.accept` (the
    server). Everything a ring end promises holds per direction: one task per direction
    at a time (BusyResourceError), a cancelled receive consumed nothing, a cancelled send
    sent nothing, the peer's SIGKILL wakes a waiting call with BrokenResourceError.
    ``send_eof()`` closes the sending direction only (the peer receives EndOfStream and
    may still send back); ``aclose()`` closes both.
    """

    def __init__(
        self,
        tx: ShmSender,
        rx: ShmReceiver,
        *,
        listener: str,
        side: str,
        peer_pid: int,
        peer_uid: int | None,
    ) -> None:
        self._tx = tx
        self._rx = rx
        self._listener = listener
        self._side = side
        self._peer_pid = peer_pid
        self._peer_uid = peer_uid

    @classmethod
    async def connect(
        cls,
        name: str,
        *,
        capacity: int = DEFAULT_CAPACITY,
        mode: int = 0o600,
        spin: float = 0.0,
        accept_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> ShmDuplex:
        """Connect to the duplex listener ``name`` and return the channel once it
        accepted.

        Makes the pair of rings (``capacity`` data bytes each, files with exactly
        ``mode``), asks the listener through its accept ring, and waits for its welcome.
        ``spin`` is this end's busy-poll before sleeping (as for a ring end). The pair's
        files are removed before this returns, and on any failure.

        Raises:
            aioipc.IPCNotFoundError: there is no listener by that name.
            aioipc.ProtocolError: ``name`` is a ring but not a duplex listener's, or the
                welcome was not one.
            aioipc.IPCConnectionRefusedError: the listener closed or died before it
                accepted this connection (noticed within 0.25 s), or gave it up.
            TimeoutError: the listener did not accept within ``accept_timeout`` seconds
                (``inf``: wait for ever); the message names the listener.
            aioipc.IPCExistsError, aioipc.IPCSystemError: making the pair failed (a full
                /dev/shm, no free fd). Nothing is left behind.
            ValueError: a bad name, capacity, mode, spin or accept_timeout.

        Cancellation: a cancelled connect leaves nothing open and no file behind. A
        listener that read the request meanwhile finds the pair gone or closed (an
        ``accept()`` that attached at that very moment returns a channel that is
        already at its end of stream).
        """
        check_listener_name(name)
        _ring.check_capacity(capacity, f"shared-memory duplex {name}")
        check_mode(mode, f"shared-memory duplex {name}")
        limit = check_seconds(
            accept_timeout, "accept_timeout", what="ShmDuplex.connect", allow_inf=True
        )
        what = f"shared-memory duplex listener {name}"
        await checkpoint()  # cancelled here, nothing was made
        deadline = time.monotonic() + limit
        door = _open_door(name, what)
        made: list[str] = []
        tx: ShmSender | None = None
        rx: ShmReceiver | None = None
        try:
            token, s2c, tx = _make_pair(name, capacity, mode, spin, made)
            rx = ShmReceiver.create(s2c, capacity, mode=mode, spin=spin, unlink_on_close=False)
            made.append(s2c)
            request = Hello(KIND_REQUEST, os.getpid(), token).encode()
            await _handshake(door, rx, request, token, deadline, limit, what)
            peer_pid = rx._peer_pid()
        except BaseException:
            for end in (tx, rx):
                if end is not None:
                    end.close()
            _remove_pair(made)
            raise
        finally:
            door.close()
        _remove_pair(made)
        return cls(tx, rx, listener=name, side="client", peer_pid=peer_pid, peer_uid=None)

    # -- sending ------------------------------------------------------------------------

    async def send(self, item: bytes) -> None:
        """Send one message; waits while the outgoing ring is too full.

        Raises: as :meth:`aioipc.shm.ShmSender.send` (BrokenResourceError: the peer
        closed or died; ClosedResourceError: this channel was closed or ``send_eof()``
        called). Cancellation: a cancelled send did not send.
        """
        await self._tx.send(item)

    def send_nowait(self, item: bytes) -> None:
        """Send ``item`` if the outgoing ring has room now (anyio.WouldBlock if not).

        Raises: as :meth:`aioipc.shm.ShmSender.send_nowait`.
        """
        self._tx.send_nowait(item)

    async def send_many(self, items: Iterable[bytes]) -> None:
        """:meth:`aioipc.shm.ShmSender.send_many` on the outgoing ring (one publish per
        batch that fits). Cancellation: the messages before the one waiting for room
        were sent; the exception has a note saying how many."""
        await self._tx.send_many(items)

    def reserve(self, size: int) -> _Reservation:
        """``async with chan.reserve(n) as view:`` write a message in place
        (:meth:`aioipc.shm.ShmSender.reserve`). Cancellation: cancelled while waiting
        for room, nothing was reserved."""
        return self._tx.reserve(size)

    async def send_eof(self) -> None:
        """Close the sending direction: the peer receives what was sent, then
        EndOfStream, and can still send to this end. Never blocks."""
        self._tx.close()
        await checkpoint()

    # -- receiving ----------------------------------------------------------------------

    async def receive(self) -> bytes:
        """Receive the next message.

        Raises: as :meth:`aioipc.shm.ShmReceiver.receive` (EndOfStream: the peer closed
        or called ``send_eof()`` and every message was received; BrokenResourceError:
        it died, SIGKILL too). Cancellation: a cancelled receive consumed nothing.
        """
        return await self._rx.receive()

    def receive_nowait(self) -> bytes:
        """The next message if one is waiting (anyio.WouldBlock if not).

        Raises: as :meth:`aioipc.shm.ShmReceiver.receive_nowait`.
        """
        return self._rx.receive_nowait()

    async def receive_many(self, max_count: int = 1024) -> list[bytes]:
        """Wait for at least one message, then take up to ``max_count`` that are there.
        Raises as :meth:`receive`. Cancellation: nothing consumed."""
        return await self._rx.receive_many(max_count)

    def receive_view(self) -> _ReceivedView:
        """``async with chan.receive_view() as view:`` the next message in place
        (:meth:`aioipc.shm.ShmReceiver.receive_view`). Cancellation: a receive_view
        cancelled while waiting consumed nothing."""
        return self._rx.receive_view()

    # -- attributes and lifecycle -------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """The largest message :meth:`send` takes (the outgoing ring's limit)."""
        return self._tx.max_message_size

    @property
    def capacity(self) -> int:
        """Data bytes of the outgoing ring."""
        return self._tx.capacity

    @property
    def extra_attributes(self) -> dict[Any, Callable[[], Any]]:
        attrs: dict[Any, Callable[[], Any]] = {
            IPCAttribute.path: lambda: SHM_DIR + self._listener,
            IPCAttribute.mechanism: lambda: "shm-duplex",
            IPCAttribute.framed: lambda: True,
            IPCAttribute.max_message_size: lambda: self._tx.max_message_size,
            IPCAttribute.fd: lambda: self._rx.extra(IPCAttribute.fd),
        }
        if self._peer_pid:
            attrs[IPCAttribute.peer_pid] = lambda: self._peer_pid
        if self._peer_uid is not None:
            attrs[IPCAttribute.peer_uid] = lambda: self._peer_uid
        return attrs

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        self._tx.close()
        self._rx.close()

    async def aclose(self) -> None:
        """Close both directions: the peer's receive gets EndOfStream (after what was
        sent), its send BrokenResourceError. Never blocks; wakes this channel's waiting
        tasks with ClosedResourceError."""
        self.close()
        await checkpoint()

    def __repr__(self) -> str:
        peer = f" peer pid {self._peer_pid}" if self._peer_pid else ""
        return f"<aioipc shared-memory duplex {self._side} of {self._listener}{peer}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{self!r} cannot be pickled: its rings have no names any more; connect "
            "from the other process instead"
        )


# -- the listener -----------------------------------------------------------------------


class ShmDuplexListener(Listener[ShmDuplex]):
    """A name that clients connect to: each :meth:`accept` returns one
    :class:`ShmDuplex`; :meth:`serve` runs a handler per connection. Any number of
    connections may be open at a time (each has its own pair of rings).

    ``aclose()`` stops accepting, removes the accept ring's files and sweeps stale
    pairs; connections already accepted stay open. Clients still waiting notice within
    0.25 s and fail with IPCConnectionRefusedError.
    """

    def __init__(self, door: ShmReceiver, name: str, spin: float) -> None:
        self._door = door
        self._name = name
        self._spin = spin
        self._what = f"shared-memory duplex listener {name}"
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        #: Connection requests refused (garbage, or whose client was gone).
        self.refused: int = 0

    @classmethod
    def create(cls, name: str, *, mode: int = 0o600, spin: float = 0.0) -> ShmDuplexListener:
        """Listen on ``name``: create its accept ring (a ring of that name, files with
        exactly ``mode``). A stale one (its listener died) is replaced; stale pairs of
        dead clients under the name are removed. Never waits.

        ``mode`` says who may connect (who can write the accept ring); ``spin`` applies
        to the server's end of every accepted channel.

        Raises:
            aioipc.IPCExistsError: a live listener (or any ring) holds the name, or
                something that is not a ring sits there.
            aioipc.IPCSystemError: /dev/shm is full, no fd is free.
            ValueError: a bad name, mode or spin.
        """
        check_listener_name(name)
        check_mode(mode, f"shared-memory duplex listener {name}")
        if not (isinstance(spin, (int, float)) and 0 <= spin < 1 and math.isfinite(spin)):
            raise ValueError(f"spin is seconds to busy-wait, 0 <= spin < 1, not {spin!r}")
        _sweep(name)
        try:
            door = _create_door(name, mode)
        except IPCExistsError:
            # The address of a dead listener is taken over, as a unix socket file is.
            with contextlib.suppress(IPCError):
                if is_stale(name):
                    unlink(name)
            door = _create_door(name, mode)
        return cls(door, name, float(spin))

    @property
    def name(self) -> str:
        return self._name

    @property
    def extra_attributes(self) -> dict[Any, Callable[[], Any]]:
        return {
            IPCAttribute.path: lambda: SHM_DIR + self._name,
            IPCAttribute.mechanism: lambda: "shm-duplex",
            IPCAttribute.fd: lambda: self._door.extra(IPCAttribute.fd),
        }

    async def accept(self) -> ShmDuplex:
        """Wait for the next connection request and return its channel.

        A request that is garbage, or whose client is gone, is logged (logger
        ``aioipc.shm``, counted in :attr:`refused`) and skipped: it never ends the
        listener.

        Raises:
            anyio.ClosedResourceError: the listener was closed (also while waiting).
            anyio.BusyResourceError: another task is already accepting (or serving).
            anyio.BrokenResourceError: a process ended the accept ring with
                ``send_eof()``; nothing more can be accepted on it.
            aioipc.ProtocolError: the accept ring itself is corrupt.

        Cancellation: a cancelled ``accept`` took no request (a waiting client stays
        queued for the next ``accept``): once a request is read, the rest is
        synchronous.
        """
        while True:
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL
                _sweep(self._name)
            try:
                data = await self._door.receive()
            except EndOfStream:
                raise BrokenResourceError(
                    f"{self._what}: a process ended its accept ring (send_eof); "
                    "nothing more can be accepted"
                ) from None
            try:
                return self._admit(data)
            except (IPCError, BrokenResourceError, BusyResourceError, EndOfStream) as exc:
                self.refused += 1
                _log.warning("%s: connection request refused: %s", self._what, exc)

    def _admit(self, data: bytes) -> ShmDuplex:
        """Attach to the pair a request names, welcome the client and remove the pair's
        files. Never waits."""
        hello = Hello.decode(data, KIND_REQUEST, f"{self._what}: a connection request")
        c2s, s2c = pair_names(self._name, hello.token)
        rx: ShmReceiver | None = None
        tx: ShmSender | None = None
        try:
            rx = ShmReceiver.open(c2s, spin=self._spin)
            tx = ShmSender.open(s2c, spin=self._spin)
            gone = rx._peer_gone() or tx._peer_gone()
            if gone is not None:
                raise IPCConnectionRefusedError(
                    errno.ECONNREFUSED,
                    f"{self._what}: the client (pid {hello.pid} by its request) of "
                    f"{c2s} is gone: {gone}",
                )
            peer_pid = rx._peer_pid()
            peer_uid = rx._owner_uid()
            tx.send_nowait(Hello(KIND_WELCOME, os.getpid(), hello.token).encode())
        except BaseException:
            for end in (tx, rx):
                if end is not None:
                    end.close()
            # Only a dead client's pair: a live one removes its own (this may be a
            # forged request naming someone else's).
            for ring_name in (c2s, s2c):
                with contextlib.suppress(IPCError):
                    if is_stale(ring_name):
                        unlink(ring_name)
            raise
        _remove_pair([c2s, s2c])
        return ShmDuplex(
            tx, rx, listener=self._name, side="server", peer_pid=peer_pid, peer_uid=peer_uid
        )

    async def serve(
        self,
        handler: Callable[[ShmDuplex], Any],
        task_group: anyio.abc.TaskGroup | None = None,
        *,
        propagate: bool = False,
    ) -> None:
        """Accept connections for ever, running ``handler(channel)`` for each in its own
        task; the channel is closed when the handler returns.

        An exception from a handler is logged with its traceback (logger ``aioipc.shm``)
        and ends that connection only; with ``propagate=True`` it propagates through
        the task group instead, cancelling the server and every other connection.

        Returns when the listener is closed; raises what :meth:`accept` raises for any
        other reason. Cancellation: cancelling ``serve`` cancels every connection's
        handler (unless they run in a ``task_group`` of the caller's) and accepts
        nothing more.
        """

        async def run(chan: ShmDuplex) -> None:
            async with chan:
                if propagate:
                    await handler(chan)
                    return
                try:
                    await handler(chan)
                except BaseException as exc:
                    if not isinstance(exc, Exception) and not _stray_cancellation(exc):
                        raise
                    _log.exception(
                        "%s: the handler raised; closing this connection (peer pid %s), "
                        "the server goes on",
                        self._what,
                        chan.extra(IPCAttribute.peer_pid, "unknown"),
                    )

        async with anyio.create_task_group() as own:
            tg = task_group or own
            while True:
                try:
                    chan = await self.accept()
                except ClosedResourceError:
                    return
                tg.start_soon(run, chan)

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        self._door.close()
        _sweep(self._name)

    async def aclose(self) -> None:
        """Stop accepting: remove the accept ring's files, then every stale pair under
        the name. Never blocks; a waiting :meth:`accept` raises ClosedResourceError.
        Connections already accepted stay open."""
        self.close()
        await checkpoint()

    def __repr__(self) -> str:
        return f"<aioipc {self._what}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{self!r} cannot be pickled: connect to its name instead")


# -- the pieces -------------------------------------------------------------------------


def _create_door(name: str, mode: int) -> ShmReceiver:
    return ShmReceiver.create(name, ACCEPT_CAPACITY, mode=mode, multi_producer=True)


def _open_door(name: str, what: str) -> ShmSender:
    """Attach as a sender to ``name``'s accept ring, after making sure it is one (a
    multi-producer ring): attaching to a one-sender ring and leaving would end its
    stream for its receiver."""
    region = SHM_DIR + name
    try:
        fd = os.open(region, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise IPCNotFoundError(
            errno.ENOENT, f"{what}: nobody listens by that name", region
        ) from None
    except OSError as exc:
        raise translate_os_error(exc, what) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < _ring.HEADER_SIZE:
            raise ProtocolError(f"{what}: {region} is not a duplex listener's accept ring")
        header = bytearray(os.pread(fd, _ring.HEADER_SIZE, 0))
    except OSError as exc:
        raise translate_os_error(exc, what) from exc
    finally:
        close_region(fd)  # counted: our other ends retake their pid locks
    hq, hi = _ring.header_views(header)
    with hq, hi:
        ready = _ring.has_magic(hq)
        multi = bool(hi[_ring.I_FLAGS] & _ring.FLAG_MULTI_PRODUCER)
    if not ready:
        raise IPCNotFoundError(errno.ENOENT, f"{what}: still being created", region)
    if not multi:
        raise ProtocolError(f"{what}: {region} is a one-sender ring, not a duplex listener")
    try:
        return ShmSender.open(name)
    except IPCNotFoundError as exc:
        raise IPCNotFoundError(errno.ENOENT, f"{what}: nobody listens by that name: {exc}") from exc


def _make_pair(
    name: str, capacity: int, mode: int, spin: float, made: list[str]
) -> tuple[bytes, str, ShmSender]:
    """A fresh token, the name of its receiving ring, and the client's sending ring
    (created exclusively; a token taken already is drawn again)."""
    for _ in range(4):
        token = os.urandom(_TOKEN_SIZE)
        c2s, s2c = pair_names(name, token)
        try:
            tx = ShmSender.create(c2s, capacity, mode=mode, spin=spin, unlink_on_close=False)
        except IPCExistsError:
            continue
        made.append(c2s)
        return token, s2c, tx
    raise IPCExistsError(errno.EEXIST, f"{name}: four random pair names were all taken")


async def _handshake(
    door: ShmSender,
    rx: ShmReceiver,
    request: bytes,
    token: bytes,
    deadline: float,
    limit: float,
    what: str,
) -> None:
    """Send the request, then wait for the welcome on ``rx``, looking at the listener
    every 0.25 s meanwhile (nothing would wake us if it closed or died)."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: no listener accepted within {limit:g} s")
        return left

    def refused(why: object) -> NoReturn:
        raise IPCConnectionRefusedError(errno.ECONNREFUSED, f"{what}: {why}")

    try:
        with anyio.move_on_after(remaining()):
            await door.send(request)
    except BrokenResourceError as exc:
        refused(f"the listener is gone ({exc})")
    remaining()
    try:
        while True:
            with anyio.move_on_after(min(PEER_CHECK_INTERVAL, remaining())):
                data = await rx.receive()
                break
            gone = door._peer_gone()
            if gone is not None:
                refused(f"the listener {gone} before it accepted")
    except BrokenResourceError as exc:
        refused(f"the listener gave this connection up ({exc})")
    except EndOfStream:
        refused("the listener gave this connection up before welcoming it")
    if Hello.decode(data, KIND_WELCOME, f"{what}: its welcome").token != token:
        raise ProtocolError(f"{what}: a welcome for another connection")


def _remove_pair(names: list[str]) -> None:
    """Remove rings whose ends are all attached or gone (never raises: a ring the peer
    removed first is fine)."""
    for ring_name in names:
        try:
            unlink(ring_name)
        except IPCError:
            # Removed by the other side; its registry entry (ours) goes all the same.
            _registry.forget("shm-ring", ring_name)


def _sweep(name: str) -> None:
    """Remove the stale pairs under listener ``name``: rings nobody is attached to (a
    client that died before the listener took its request, or both sides dead), and
    doorbells left without their region. A ring being made is locked by its creator
    from its first instant, so it is never stale."""
    pattern = _pair_file(name)
    rings: set[str] = set()
    bells: list[tuple[str, str]] = []
    try:
        with os.scandir(SHM_DIR) as entries:
            for entry in entries:
                m = pattern.fullmatch(entry.name)
                if m is None:
                    continue
                ring_name = name + m.group(1)
                if m.group(2):
                    bells.append((ring_name, entry.path))
                else:
                    rings.add(ring_name)
    except OSError as exc:
        _log.debug("%s: sweeping stale pairs: %r", name, exc)
        return
    for ring_name in sorted(rings):
        with contextlib.suppress(IPCError):
            if is_stale(ring_name):
                unlink(ring_name)
                _log.info("removed the stale pair ring %s", ring_name)
    for ring_name, path in bells:
        # A ring's owner makes its region first and removes it last: a doorbell with no
        # region (looked at again now, not as the listing saw it) is nobody's.
        if ring_name not in rings and not os.path.lexists(SHM_DIR + ring_name):
            with contextlib.suppress(OSError):
                os.unlink(path)
