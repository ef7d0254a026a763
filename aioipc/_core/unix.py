"""The implementation behind :mod:`aioipc.unix` (see there)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import functools
import logging
import mmap
import os
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Generic, Literal, TypeVar, cast, overload

import anyio
from anyio import (
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)
from anyio.abc import ObjectStream

from ..abc import IPCAttribute, Listener
from ..errors import (
    IPCExistsError,
    IPCSystemError,
    MessageTooLargeError,
    Overrides,
    map_errors,
    translate_os_error,
)
from ..framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FLAG_ANCILLARY,
    check_max_message_size,
    check_size,
    encode_header,
)
from . import registry as _registry
from .check import ID_MAX, INT_MAX, check_fd, check_int, check_mode
from .stream import FdChannel, FdResource
from .wait import AGAIN, Again, Busy, Pacer, poll_until, wait_until

__all__ = [
    "Kind",
    "UnixChannel",
    "UnixDatagramEndpoint",
    "UnixListener",
    "UnixMessageChannel",
    "connect",
    "listen",
]

Kind = Literal["stream", "dgram", "seqpacket"]
_SOCK_TYPES = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": socket.SOCK_SEQPACKET,
}
_DROPPED_PER_TRY = 64
#: Most file descriptors one message may carry (the kernel's SCM_MAX_FD).
MAX_FDS = 253
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * 4)
_CRED_SIZE = socket.CMSG_SPACE(struct.calcsize("3i"))
_ucred = struct.Struct("3i")
# Received fds not yet handed out with their message. The kernel ends a read after the
# data that carried an fd group, and a read happens only when no whole message is
# buffered (or, on asyncio, once per wakeup), so a correct peer leaves at most a group or
# two waiting. More means fds nobody flagged: they are closed as they arrive, whatever
# state the framing is in, so a peer cannot fill this process's fd table.
_MAX_HELD_FDS = 2 * MAX_FDS
# An accept that fails for want of fds or memory leaves the client in the backlog, and the
# socket stays readable: serve() sleeps this long instead of spinning (as trio does).
_ACCEPT_RETRY_SECONDS = 0.1
# ... and says so at most once per this many seconds, with the count since the last line:
# at EMFILE for ever, a line per retry would flood the log.
_ACCEPT_LOG_SECONDS = 5.0
# A connect to a listener whose backlog is full: unix sockets give no event for room.
_CONNECT_RETRY_FIRST, _CONNECT_RETRY_MOST = 0.001, 0.01
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_log = logging.getLogger("aioipc.unix")  # the public module's name: what users configure


def _address(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Return (the kernel address, the display name) for a path or ``@abstract`` name.

    Raises:
        TypeError: not a str or path.
        ValueError: empty, or with a NUL byte (the kernel would stop a path at it, and
            connect to another socket than the one named).
    """
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"a unix socket path is a str, not {p!r}")
    if "\0" in p:
        raise ValueError(f"a unix socket path must not contain a NUL byte: {p!r}")
    if p.startswith("@"):
        return "\0" + p[1:], p
    if not p:
        raise ValueError("a unix socket path must not be empty")
    return p, p


def _socket(kind: Kind, name: str) -> socket.socket:
    with map_errors(_what(kind, name)):
        return socket.socket(socket.AF_UNIX, _SOCK_TYPES[kind] | socket.SOCK_CLOEXEC)


def _peer_gone(exc: OSError, what: str) -> Exception:
    return anyio.BrokenResourceError(f"{what}: the peer is gone")


def _check_kind(kind: object) -> Kind:
    if kind not in _SOCK_TYPES:
        raise ValueError(f'kind must be "stream", "dgram" or "seqpacket", not {kind!r}')
    return kind  # type: ignore[return-value]


def _what(kind: str, name: str) -> str:
    return f"unix {kind} socket {name}"


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _ucred.size)
    pid, uid, gid = _ucred.unpack(raw)
    return pid, uid, gid


def _collect_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _close_fds(fds: Collection[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _drain(queue: deque[list[int]]) -> list[list[int]]:
    groups = list(queue)
    queue.clear()
    return groups


def _checked_fds(fds: Collection[int]) -> list[int]:
    """The fds to send, checked here so that a bad one is not taken for a closed channel."""
    fds = list(fds)
    if len(fds) > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} fds (SCM_MAX_FD) fit in one message, not {len(fds)}")
    return [check_fd(fd, "send_fds") for fd in fds]


def _creds_attrs(
    attrs: dict[Any, Callable[[], Any]], creds: tuple[int, int, int], name: str
) -> None:
    pid, uid, gid = creds
    attrs[IPCAttribute.peer_pid] = lambda: pid
    attrs[IPCAttribute.peer_uid] = lambda: uid
    attrs[IPCAttribute.peer_gid] = lambda: gid
    attrs[IPCAttribute.path] = lambda: name


class UnixChannel(FdChannel):
    """A connected unix stream socket as a two-way message channel.

    Besides the Channel methods (``send``, ``receive``, ``send_eof``, ``aclose``) it can
    pass open file descriptors: :meth:`send_fds` and :meth:`receive_fds`. A message that
    carries fds but is read with plain :meth:`receive` has its fds closed, so none leak.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        *,
        framing: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._sock = sock
        # fd groups in arrival order; each belongs to the next frame flagged as carrying fds.
        self._fd_queue: deque[list[int]] = deque()
        creds = _peercred(sock)
        res = FdResource(sock.fileno(), _what("stream", name), sock)
        super().__init__(
            res,
            mechanism="unix-stream",
            framing="frames" if framing else "raw",
            max_message_size=max_message_size,
            read=self._recv,
            peer=f"the peer (pid {creds[0]})" if creds[0] > 0 else "the peer",
        )
        _creds_attrs(self._attrs, creds, name)

    def _recv(self, size: int) -> bytes:
        # recvmsg, not read: read() would make the kernel drop fds sent with the data.
        data, ancdata, _, _ = self._sock.recvmsg(size, _ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
        if ancdata:
            fds = _collect_fds(ancdata)
            if fds:
                held = sum(map(len, self._fd_queue))
                if held + len(fds) > _MAX_HELD_FDS:
                    _close_fds(fds)  # no message can claim them (see _MAX_HELD_FDS)
                else:
                    self._fd_queue.append(fds)
        if not data and size:
            # End of stream. A read happens only when no whole message is buffered, so
            # no message can claim the fds still queued: close them now, not at aclose.
            _close_fds([fd for group in _drain(self._fd_queue) for fd in group])
        return data

    def _fds_for_last_frame(self) -> list[int]:
        """The fds that came with the message just returned; close any that are orphans.

        The kernel hands over an fd group with the read that contains the first byte of
        the message it was sent with, and aioipc flags that message's header. A group
        still queued once every byte read so far has been returned as whole messages
        belongs to no message (a peer sent SCM_RIGHTS without the flag): it is closed,
        so a peer cannot fill this process's fd table.
        """
        queue = self._fd_queue
        if not queue:
            return []
        if self._rx.framing == "raw":
            # One receive is one read: the fds are those of that read.
            return [fd for group in _drain(queue) for fd in group]
        fds = queue.popleft() if self._rx.last_flags & FLAG_ANCILLARY else []
        if queue and self._rx.buffered == 0:
            _close_fds([fd for group in _drain(queue) for fd in group])
        return fds

    async def receive(self) -> bytes:
        """Wait for and return the next message.

        File descriptors sent with the message are closed (use :meth:`receive_fds`).
        Errors as :meth:`FdChannel.receive`. Cancellation: a cancelled ``receive``
        consumed nothing; the next ``receive`` returns the next whole message.
        """
        data = await self._rx.receive()
        if self._fd_queue:
            _close_fds(self._fds_for_last_frame())
        return data

    def receive_nowait(self) -> bytes:
        """Return the next message if one is ready now, else raise :exc:`anyio.WouldBlock`."""
        data = self._rx.receive_nowait()
        if self._fd_queue:
            _close_fds(self._fds_for_last_frame())
        return data

    async def receive_fds(self) -> tuple[bytes, list[int]]:
        """Receive the next message and the file descriptors sent with it.

        The caller owns the returned fds and must close them. Errors and cancellation
        as for :meth:`receive`. On a raw (``framing=False``) channel, the fds are those
        that arrived with the returned bytes.
        """
        data = await self._rx.receive()
        return data, self._fds_for_last_frame()

    async def send_fds(self, data: bytes, fds: Collection[int]) -> None:
        """Send ``data`` as one message with the open file descriptors ``fds`` attached.

        The receiver gets its own duplicates; the caller's fds stay open. On a raw
        channel the bytes go without a header, with the fds on their first byte.

        Raises:
            ValueError: more than :data:`MAX_FDS` (253) descriptors.
            anyio.BusyResourceError: another task is sending on this channel.
            anyio.BrokenResourceError, anyio.ClosedResourceError: as for :meth:`send`.

        Cancellation: as for :meth:`send`; once the first byte is sent, the fds are too.
        """
        fds = _checked_fds(fds)
        framed = self._rx.framing != "raw"
        data = self._tx._check(data)
        if not framed and not data and fds:
            raise ValueError("a raw stream cannot carry fds without at least one byte of data")
        header = encode_header(len(data), FLAG_ANCILLARY if fds else 0) if framed else b""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock = self._sock
        # The fds travel with the first byte; the rest of the frame follows as usual.
        await self._tx.send_first_with(header + data, lambda p: sock.sendmsg([p], anc))

    def close(self) -> None:
        """Close synchronously (see :meth:`FdChannel.close`), releasing received fds."""
        _close_fds([fd for group in _drain(self._fd_queue) for fd in group])
        super().close()

    async def aclose(self) -> None:
        _close_fds([fd for group in self._fd_queue for fd in group])
        self._fd_queue.clear()
        await super().aclose()


class UnixMessageChannel(ObjectStream[bytes]):
    """A connected seqpacket or datagram socket: each send is one kernel message.

    Raises (``send``): :exc:`aioipc.MessageTooLargeError` naming the socket's limit when
    the kernel refuses the size (EMSGSIZE) or the message exceeds ``max_message_size``.
    Raises (``receive``): :exc:`anyio.EndOfStream` when a seqpacket peer closed.

    Cancellation: a cancelled ``receive`` took no message; a cancelled ``send`` sent
    nothing (a datagram goes to the kernel whole or not at all).
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        kind: Kind,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        allowed_uids: Collection[int] | None = None,
        creds: tuple[int, int, int] | None = None,
    ) -> None:
        self._sock = sock
        self._kind = kind
        check_max_message_size(max_message_size, _what(kind, name))
        # The pages of this buffer are only touched as far as messages reach. Made before
        # the handle, so that a failure here leaves no half-built open handle behind.
        with map_errors(f"{_what(kind, name)}: a receive buffer of {max_message_size + 1} bytes"):
            self._buf = mmap.mmap(-1, max_message_size + 1)
        self._res = FdResource(sock.fileno(), _what(kind, name), sock)
        self._max_size = max_message_size
        self._allowed = None if allowed_uids is None else frozenset(allowed_uids)
        if kind == "seqpacket":
            # recv() returns 0 both for an empty message and at end of stream; with
            # SO_PASSCRED every real message carries credentials, end of stream none.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._anc_size = _ANC_SIZE + (
            _CRED_SIZE if kind == "seqpacket" or self._allowed is not None else 0
        )
        self._rx_busy = Busy("receiving from")
        self._tx_busy = Busy("sending to")
        self._rx_pacer, self._tx_pacer = Pacer(), Pacer()
        self._eof = False
        self._fd_queue: deque[list[int]] = deque()
        self._last_sender: Any = None
        self._attrs: dict[Any, Callable[[], Any]] = {
            IPCAttribute.fd: lambda: self._res.fd,
            IPCAttribute.mechanism: lambda: f"unix-{kind}",
            IPCAttribute.framed: lambda: False,
            IPCAttribute.max_message_size: lambda: max_message_size,
            IPCAttribute.path: lambda: name,
        }
        if creds is not None:
            _creds_attrs(self._attrs, creds, name)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._attrs

    def fileno(self) -> int:
        return self._res.fd

    def _recv_one(self) -> bytes:
        """One non-blocking receive; raises BlockingIOError when there is nothing."""
        if self._res.closed:
            raise ClosedResourceError
        anc = self._anc_size
        # At most this many datagrams from users this endpoint does not accept are dropped
        # per try; then the caller waits for readiness, which is a checkpoint, so a
        # local flood of them cannot hold the event loop.
        for _ in range(_DROPPED_PER_TRY):
            try:
                n, ancdata, _, sender = self._sock.recvmsg_into(
                    [self._buf], anc, socket.MSG_TRUNC | socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                raise
            except OSError as exc:
                raise translate_os_error(exc, self._res.what) from exc
            fds = _collect_fds(ancdata)
            if self._allowed is not None and not self._uid_allowed(ancdata):
                _close_fds(fds)  # a datagram from a user this endpoint does not accept
                continue
            if n == 0 and self._kind == "seqpacket" and not ancdata:
                self._eof = True
                raise EndOfStream
            if n > self._max_size:
                _close_fds(fds)
                raise MessageTooLargeError(n, self._max_size, "the receiver's max_message_size")
            self._last_sender = sender
            if fds:
                self._fd_queue.append(fds)
            return self._buf[:n]
        raise BlockingIOError

    def _uid_allowed(self, ancdata: list[tuple[int, int, bytes]]) -> bool:
        assert self._allowed is not None
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _, uid, _ = _ucred.unpack(data[: _ucred.size])
                return uid in self._allowed
        return False

    def _try_receive(self) -> bytes | Again:
        if self._eof:
            raise EndOfStream
        try:
            return self._recv_one()
        except BlockingIOError:
            return AGAIN

    async def _receive(self) -> bytes:
        if self._res.closed:
            raise ClosedResourceError
        with self._rx_busy:
            return await wait_until(self._try_receive, self._res.waiter.readable, self._rx_pacer)

    async def receive(self) -> bytes:
        """Wait for and return the next message (fds sent with it are closed)."""
        data = await self._receive()
        if self._fd_queue:
            _close_fds(self._fd_queue.popleft())
        return data

    def receive_nowait(self) -> bytes:
        """Return the next message if one is queued, else raise :exc:`anyio.WouldBlock`."""
        if self._res.closed:
            raise ClosedResourceError
        if self._eof:
            raise EndOfStream
        try:
            data = self._recv_one()
        except BlockingIOError:
            raise WouldBlock from None
        if self._fd_queue:
            _close_fds(self._fd_queue.popleft())
        return data

    async def receive_fds(self) -> tuple[bytes, list[int]]:
        """Receive the next message and the fds sent with it (the caller closes them)."""
        data = await self._receive()
        return data, self._fd_queue.popleft() if self._fd_queue else []

    def _send_one(self, data: bytes, anc: list[Any], address: Any = None) -> None:
        if self._res.closed:
            raise ClosedResourceError
        try:
            if address is None:
                self._sock.sendmsg([data], anc)
            else:
                self._sock.sendmsg([data], anc, 0, address)
        except BlockingIOError:
            raise
        except OSError as exc:
            raise translate_os_error(exc, self._res.what, self._send_errors(len(data))) from exc

    def _send_errors(self, size: int) -> Overrides:
        """EMSGSIZE names the send buffer; ECONNREFUSED on a send is a peer that went away
        (its socket closed), not a listener that never was."""
        sock = self._sock

        def too_large(exc: OSError, what: str) -> Exception:
            limit = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            source = f"the socket's send buffer (SO_SNDBUF, {what})"
            return MessageTooLargeError(size, limit, source)

        return {errno.EMSGSIZE: too_large, errno.ECONNREFUSED: _peer_gone}

    async def _send(self, data: bytes, fds: Collection[int] = (), address: Any = None) -> None:
        check_size(len(data), self._max_size)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []

        def attempt() -> Again | None:
            try:
                self._send_one(data, anc, address)
            except BlockingIOError:
                return AGAIN
            return None

        with self._tx_busy:
            await wait_until(attempt, self._res.waiter.writable, self._tx_pacer)

    async def send(self, item: bytes) -> None:
        """Send one message, waiting while the socket's buffer is full."""
        await self._send(item)

    def send_nowait(self, item: bytes) -> None:
        """Send one message if there is room now, else raise :exc:`anyio.WouldBlock`."""
        check_size(len(item), self._max_size)
        with self._tx_busy:
            try:
                self._send_one(item, [], self._reply_address())
            except BlockingIOError:
                raise WouldBlock from None

    def _reply_address(self) -> Any:
        """Where a send without an address goes: the connected peer (None)."""
        return None

    async def send_fds(self, data: bytes, fds: Collection[int]) -> None:
        """Send one message with open file descriptors attached (the receiver gets copies).

        Raises ValueError for more than 253 fds or one that is not open; otherwise as
        :meth:`send`, including cancellation (nothing sent)."""
        await self._send(data, _checked_fds(fds))

    async def send_eof(self) -> None:
        """Shut down the sending direction (seqpacket peers then see end of stream)."""
        with map_errors(self._res.what):
            self._sock.shutdown(socket.SHUT_WR)
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the socket (never blocks)."""
        for group in self._fd_queue:
            _close_fds(group)
        self._fd_queue.clear()
        await self._res.aclose()
        self._buf.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close synchronously (never blocks), releasing fds received but not returned."""
        for group in _drain(self._fd_queue):
            _close_fds(group)
        self._res.close()
        self._buf.close()


class UnixDatagramEndpoint(UnixMessageChannel):
    """A bound datagram socket: receives from any client, replies with :meth:`send_to`.

    ``receive()`` returns the next datagram; :meth:`receive_from` also returns the
    sender's address (clients made by ``connect(kind="dgram")`` have one). ``send``
    without an address replies to the sender of the last datagram received.
    """

    def __init__(self, sock: socket.socket, name: str, unlink_path: str | None, **kw: Any) -> None:
        super().__init__(sock, name, "dgram", **kw)
        self._unlink = _Unlinker(unlink_path)

    async def receive_from(self) -> tuple[bytes, Any]:
        """Receive the next datagram and its sender's address.

        Errors and cancellation as :meth:`UnixMessageChannel.receive`: a cancelled call
        took no datagram."""
        data = await self.receive()
        return data, self._last_sender

    async def send_to(self, data: bytes, address: Any) -> None:
        """Send one datagram to ``address`` (as returned by :meth:`receive_from`).

        Raises :exc:`aioipc.MessageTooLargeError` (naming SO_SNDBUF) and
        :exc:`anyio.BrokenResourceError` if nobody is bound there any more. Cancellation:
        a cancelled call sent nothing (a datagram goes whole or not at all)."""
        await self._send(data, (), address)

    async def send(self, item: bytes) -> None:
        """Reply to the sender of the last datagram received.

        Raises :exc:`anyio.BrokenResourceError` if no datagram was received yet;
        otherwise as :meth:`send_to`, including cancellation."""
        await self._send(item, (), self._reply_address())

    def _reply_address(self) -> Any:
        if self._last_sender is None:
            raise anyio.BrokenResourceError(
                f"{self._res.what}: no datagram received yet, so there is nobody to reply to"
            )
        return self._last_sender

    async def aclose(self) -> None:
        await super().aclose()
        self._unlink()


class _Unlinker:
    """Removes a socket file we bound, if it is still the one we bound."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._ident: tuple[int, int] | None = None
        # Only the process that bound it removes it: a forked worker closing the
        # listener it inherited (gunicorn --preload) must not unlink the parent's path.
        self._pid = os.getpid()
        if path is not None:
            st = os.lstat(path)
            self._ident = (st.st_dev, st.st_ino)

    def __call__(self) -> None:
        path, self._path = self._path, None
        if path is None or os.getpid() != self._pid:
            return
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(path)
                _registry.forget("unix-socket", path)
        except OSError:
            pass


def _bind(sock: socket.socket, address: str, name: str, kind: Kind, mode: int) -> str | None:
    """Bind, reclaiming a stale socket file. Returns the path to unlink on close."""
    abstract = address.startswith("\0")
    if not abstract:
        # Set before bind: the kernel creates the file with the socket inode's mode, so
        # it is never reachable by others, not even between bind and chmod.
        os.fchmod(sock.fileno(), mode)
    try:
        sock.bind(address)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise translate_os_error(exc, _what(kind, name)) from exc
        if abstract or not _is_stale(address, kind):
            raise IPCExistsError(
                errno.EADDRINUSE,
                f"{_what(kind, name)}: a live listener holds this address",
                name,
            ) from None
        os.unlink(address)
        with map_errors(_what(kind, name)):
            sock.bind(address)
    if abstract:
        return None
    with map_errors(_what(kind, name)):
        st = os.lstat(address)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(address, mode)
    _registry.record("unix-socket", address, st=st)
    return address


def _is_stale(path: str, kind: Kind) -> bool:
    """True if ``path`` is a socket file that nobody is listening on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISSOCK(st.st_mode):
        raise IPCExistsError(
            errno.EEXIST, f"{_what(kind, path)}: the path exists and is not a socket", path
        )
    # A datagram probe never queues anything at the other end: a live stream or seqpacket
    # listener answers EPROTOTYPE, a live dgram socket accepts the connect, and a file
    # whose socket is gone answers ECONNREFUSED. A stream probe would leave a dead
    # connection in a live listener's backlog.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


#: What a listener's accept() gives: UnixChannel (stream) or UnixMessageChannel (seqpacket).
_C_co = TypeVar("_C_co", bound="UnixChannel | UnixMessageChannel", covariant=True)


class UnixListener(Listener[_C_co], Generic[_C_co]):
    """A listening stream or seqpacket socket: an :class:`anyio.abc.Listener`.

    ``UnixListener[UnixChannel]`` for ``"stream"``, ``UnixListener[UnixMessageChannel]``
    for ``"seqpacket"``.

    :meth:`accept` waits for the next connection; :meth:`serve` runs a handler for every
    connection in a task group. ``aclose`` stops listening and removes the socket file.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        kind: Kind,
        unlink_path: str | None,
        *,
        framing: bool,
        max_message_size: int,
        allowed_uids: frozenset[int] | None,
    ) -> None:
        self._sock = sock
        self._name = name
        self._kind = kind
        self._res = FdResource(sock.fileno(), f"unix {kind} listener {name}", sock)
        self._unlink = _Unlinker(unlink_path)
        self._framing = framing
        self._max_size = max_message_size
        self._allowed = allowed_uids
        self._busy = Busy("accepting on")
        self._pacer = Pacer()
        #: Connections refused because the peer's uid was not allowed.
        self.rejected: int = 0

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            IPCAttribute.fd: lambda: self._res.fd,
            IPCAttribute.path: lambda: self._name,
            IPCAttribute.mechanism: lambda: f"unix-{self._kind}",
        }

    def _wrap(self, conn: socket.socket) -> _C_co:
        chan: UnixChannel | UnixMessageChannel
        if self._kind == "stream":
            chan = UnixChannel(
                conn, self._name, framing=self._framing, max_message_size=self._max_size
            )
        else:
            chan = UnixMessageChannel(
                conn, self._name, self._kind, max_message_size=self._max_size, creds=_peercred(conn)
            )
        return cast(_C_co, chan)  # listen()'s overloads tie the kind to the channel class

    def _try_accept(self) -> socket.socket | Again:
        """One non-blocking accept: an allowed connection, or AGAIN."""
        if self._res.closed:
            raise ClosedResourceError
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return AGAIN
        except OSError as exc:
            raise translate_os_error(exc, self._res.what) from exc
        if self._allowed is not None and _peercred(conn)[1] not in self._allowed:
            self.rejected += 1
            conn.close()
            return AGAIN  # the next client, if any, keeps the socket readable
        return conn

    async def _accept(self, retry: _ResourceRetry | None) -> _C_co:
        with self._busy:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if retry is None:
                conn = await wait_until(self._try_accept, self._res.waiter.readable, self._pacer)
            else:
                conn = await wait_until(
                    functools.partial(retry.attempt, self._try_accept),
                    functools.partial(retry.wait, self._res.waiter.readable),
                    self._pacer,
                )
            conn.setblocking(False)
            try:
                return self._wrap(conn)
            except BaseException:
                conn.close()
                raise

    async def accept(self) -> _C_co:
        """Wait for the next allowed connection and return it as a channel.

        Raises:
            anyio.ClosedResourceError: the listener was closed.
            anyio.BusyResourceError: another task is already accepting (or serving).
            aioipc.IPCSystemError: the process or system is out of file descriptors
                (EMFILE naming RLIMIT_NOFILE, ENFILE) or memory; the client stays in the
                backlog.

        Cancellation: a cancelled ``accept`` accepted nothing; a waiting client stays in
        the backlog for the next ``accept``.
        """
        return await self._accept(None)

    async def serve(
        self,
        handler: Callable[[_C_co], Any],
        task_group: anyio.abc.TaskGroup | None = None,
        *,
        propagate: bool = False,
    ) -> None:
        """Accept connections for ever, running ``handler(channel)`` for each in its own task.

        The channel is closed when the handler returns. One misbehaving client does not
        end the server: an exception from a handler is logged with its traceback (logger
        ``aioipc.unix``) and ends that connection only; so is, on asyncio, a
        ``CancelledError`` that no cancellation delivered (the handler awaited a future
        someone else cancelled). With ``propagate=True`` it
        propagates through the task group instead, as in a plain anyio task group, and
        cancels the server and every other connection.

        Running out of file descriptors or memory in ``accept`` (EMFILE, ENFILE, ENOBUFS,
        ENOMEM) does not end it either: accepting goes on after 0.1 s, once other
        connections may have closed; the client waits in the backlog. It is logged as a
        warning at most once every 5 s, with the count of failed accepts since the last
        such line.

        Returns when the listener is closed. Raises what ``accept`` raises for any other
        reason. Cancellation: cancelling ``serve`` cancels every connection's handler
        (unless they run in a ``task_group`` of the caller's) and accepts nothing more.
        """

        async def run(chan: UnixChannel | UnixMessageChannel) -> None:
            async with chan:
                if propagate:
                    await handler(cast(_C_co, chan))
                    return
                try:
                    await handler(cast(_C_co, chan))
                except BaseException as exc:
                    if not isinstance(exc, Exception) and not _stray_cancellation(exc):
                        raise
                    pid = chan.extra(IPCAttribute.peer_pid, None)
                    _log.exception(
                        "%s: the handler raised; closing this connection (peer pid %s), "
                        "the server goes on",
                        self._res.what,
                        pid if pid is not None else "unknown",
                    )

        retry = _ResourceRetry()
        async with anyio.create_task_group() as own:
            tg = task_group or own
            while True:  # the server's life: one connection per turn, not a retry loop
                try:
                    chan = await self._accept(retry)
                except ClosedResourceError:
                    return
                tg.start_soon(run, chan)

    async def aclose(self) -> None:
        """Stop listening and remove the socket file (if it is still ours)."""
        await self._res.aclose()
        self._unlink()
        await anyio.lowlevel.checkpoint()


class _ResourceRetry:
    """How serve() takes an accept that failed for want of fds or memory: as a "try
    again later" for the wait engine, whose wait is then a pause of
    :data:`_ACCEPT_RETRY_SECONDS` rather than readiness (the socket stays readable: the
    client is still in the backlog). Logs at most one warning per
    :data:`_ACCEPT_LOG_SECONDS`, with the count of failures since the last one."""

    __slots__ = ("_failures", "_logged_at", "_pause")

    def __init__(self) -> None:
        self._pause = False
        self._failures = 0
        self._logged_at: float | None = None

    def attempt(self, try_accept: Callable[[], socket.socket | Again]) -> socket.socket | Again:
        try:
            return try_accept()
        except IPCSystemError as exc:
            if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                raise
            self._failed(exc)
            return AGAIN

    def _failed(self, exc: IPCSystemError) -> None:
        self._pause = True
        self._failures += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < _ACCEPT_LOG_SECONDS:
            return
        _log.warning(
            "%s; retrying in %g s (%d failed accept(s) since the last such warning; at "
            "most one per %g s)",
            exc.strerror or exc,
            _ACCEPT_RETRY_SECONDS,
            self._failures,
            _ACCEPT_LOG_SECONDS,
        )
        self._logged_at = now
        self._failures = 0

    async def wait(self, readable: Callable[[], Awaitable[None]]) -> None:
        if self._pause:
            self._pause = False
            await anyio.sleep(_ACCEPT_RETRY_SECONDS)
        else:
            await readable()


def _stray_cancellation(exc: BaseException) -> bool:
    """A CancelledError that no cancel scope delivered: on asyncio a handler gets one by
    awaiting a future or task that someone else cancelled. It is the handler's failure;
    let through, anyio's task group would take it for a cancellation of the whole
    server. A real cancellation has raised the task's cancelling() count (trio has no
    such thing: its Cancelled only ever comes from a scope)."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio: not a cancellation either
        return True
    return task is not None and task.cancelling() == 0


def _allowed(
    address: str, allowed_uids: Collection[int] | None, what: str
) -> frozenset[int] | None:
    if allowed_uids is not None:
        if isinstance(allowed_uids, (str, bytes)):
            raise TypeError(f"{what}: allowed_uids is a collection of ints, not {allowed_uids!r}")
        return frozenset(
            check_int(uid, "allowed_uids", minimum=0, maximum=ID_MAX, what=what)
            for uid in allowed_uids
        )
    # A socket file is guarded by its mode; an abstract name by nothing but this check.
    return frozenset({os.getuid()}) if address.startswith("\0") else None


@overload
async def listen(
    path: str | os.PathLike[str],
    kind: Literal["stream"] = "stream",
    *,
    mode: int = ...,
    backlog: int = ...,
    framing: bool = ...,
    max_message_size: int = ...,
    allowed_uids: Collection[int] | None = ...,
) -> UnixListener[UnixChannel]: ...
@overload
async def listen(
    path: str | os.PathLike[str],
    kind: Literal["seqpacket"],
    *,
    mode: int = ...,
    backlog: int = ...,
    framing: bool = ...,
    max_message_size: int = ...,
    allowed_uids: Collection[int] | None = ...,
) -> UnixListener[UnixMessageChannel]: ...
@overload
async def listen(
    path: str | os.PathLike[str],
    kind: Literal["dgram"],
    *,
    mode: int = ...,
    backlog: int = ...,
    framing: bool = ...,
    max_message_size: int = ...,
    allowed_uids: Collection[int] | None = ...,
) -> UnixDatagramEndpoint: ...
@overload
async def listen(
    path: str | os.PathLike[str],
    kind: Kind,
    *,
    mode: int = ...,
    backlog: int = ...,
    framing: bool = ...,
    max_message_size: int = ...,
    allowed_uids: Collection[int] | None = ...,
) -> UnixListener[UnixChannel] | UnixListener[UnixMessageChannel] | UnixDatagramEndpoint: ...


async def listen(
    path: str | os.PathLike[str],
    kind: Kind = "stream",
    *,
    mode: int = 0o600,
    backlog: int = 128,
    framing: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    allowed_uids: Collection[int] | None = None,
) -> UnixListener[UnixChannel] | UnixListener[UnixMessageChannel] | UnixDatagramEndpoint:
    """Listen on a unix socket at ``path`` (``"@name"`` for the abstract namespace).

    Returns a :class:`UnixListener` for ``"stream"`` and ``"seqpacket"``, or a bound
    :class:`UnixDatagramEndpoint` for ``"dgram"``.

    Args:
        mode: permission bits of the socket file (default 0600).
        framing: stream only; ``False`` gives raw byte channels.
        allowed_uids: uids whose connections are accepted. Default: anyone the file's
            mode lets in for a path; only the current user for an abstract name.

    Raises:
        aioipc.IPCExistsError: a live listener holds the address, or the path exists and
            is not a socket.
        aioipc.IPCNotFoundError: the directory does not exist.
        aioipc.IPCPermissionError: the directory is not writable.
        aioipc.IPCSystemError: out of file descriptors (naming RLIMIT_NOFILE).
        ValueError, TypeError: a bad kind, path (empty, a NUL byte), mode (not
            0..0o777), backlog, max_message_size or uid; nothing was created.

    Cancellation: ``listen`` does not wait; its one checkpoint comes before anything is
    created, so a cancelled call leaves no socket and no file.
    """
    kind = _check_kind(kind)
    address, name = _address(path)
    what = _what(kind, name)
    check_mode(mode, what)
    check_int(backlog, "backlog", minimum=0, maximum=INT_MAX, what=what)
    check_max_message_size(max_message_size, what)
    allowed = _allowed(address, allowed_uids, what)
    await anyio.lowlevel.checkpoint()
    sock = _socket(kind, name)
    unlink_path: str | None = None
    try:
        unlink_path = _bind(sock, address, name, kind, mode)
        sock.setblocking(False)
        if kind == "dgram":
            if allowed is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            return UnixDatagramEndpoint(
                sock, name, unlink_path, max_message_size=max_message_size, allowed_uids=allowed
            )
        with map_errors(_what(kind, name)):
            sock.listen(backlog)
    except BaseException:
        sock.close()
        if unlink_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(unlink_path)
            _registry.forget("unix-socket", unlink_path)
        raise
    return UnixListener[Any](
        sock,
        name,
        kind,
        unlink_path,
        framing=framing,
        max_message_size=max_message_size,
        allowed_uids=allowed,
    )


@overload
async def connect(
    path: str | os.PathLike[str],
    kind: Literal["stream"] = "stream",
    *,
    framing: bool = ...,
    max_message_size: int = ...,
) -> UnixChannel: ...
@overload
async def connect(
    path: str | os.PathLike[str],
    kind: Literal["seqpacket", "dgram"],
    *,
    framing: bool = ...,
    max_message_size: int = ...,
) -> UnixMessageChannel: ...
@overload
async def connect(
    path: str | os.PathLike[str],
    kind: Kind,
    *,
    framing: bool = ...,
    max_message_size: int = ...,
) -> UnixChannel | UnixMessageChannel: ...


async def connect(
    path: str | os.PathLike[str],
    kind: Kind = "stream",
    *,
    framing: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> UnixChannel | UnixMessageChannel:
    """Connect to the unix socket at ``path`` and return a channel.

    ``"stream"`` gives a :class:`UnixChannel`; ``"seqpacket"`` and ``"dgram"`` a
    :class:`UnixMessageChannel` (a dgram client is auto-bound to an abstract address so
    the endpoint can reply).

    Raises:
        aioipc.IPCNotFoundError: no socket at ``path``.
        aioipc.IPCConnectionRefusedError: the path exists but nobody listens on it.
        aioipc.IPCPermissionError: the socket file's mode does not let this user in.
        aioipc.IPCSystemError: out of file descriptors (naming RLIMIT_NOFILE).
        ValueError, TypeError: a bad kind, path (empty, a NUL byte) or max_message_size.

    Cancellation: a cancelled ``connect`` leaves no socket open.
    """
    kind = _check_kind(kind)
    address, name = _address(path)
    check_max_message_size(max_message_size, _what(kind, name))
    sock = _socket(kind, name)
    try:
        sock.setblocking(False)
        if kind == "dgram":
            sock.bind("")  # autobind: an abstract address the endpoint can reply to

        def attempt() -> Again | None:
            try:
                sock.connect(address)
            except BlockingIOError:
                return AGAIN  # the listener's backlog is full
            except OSError as exc:
                raise translate_os_error(exc, _what(kind, name)) from exc
            return None

        await poll_until(attempt, first=_CONNECT_RETRY_FIRST, most=_CONNECT_RETRY_MOST)
        await anyio.lowlevel.checkpoint()
        if kind == "stream":
            return UnixChannel(sock, name, framing=framing, max_message_size=max_message_size)
        creds = _peercred(sock) if kind == "seqpacket" else None
        return UnixMessageChannel(sock, name, kind, max_message_size=max_message_size, creds=creds)
    except BaseException:
        sock.close()
        raise
