"""The core every fd channel shares: one non-blocking file descriptor, read and written
with plain system calls, waiting on readiness only when the kernel says EAGAIN.

Modelled on trio's ``FdStream``: non-blocking fd, wait for readiness only on EAGAIN
(through :class:`aioipc._core.wait.FdWaiter`), and wake waiters before ``close`` so that a task
waiting on the fd gets :exc:`anyio.ClosedResourceError` instead of hanging on a recycled
descriptor number.

The classes here are the channel types users get back from :func:`aioipc.pipe`,
:mod:`aioipc.fifo` and :mod:`aioipc.unix`; the public modules only open the fds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from anyio import (
    BrokenResourceError,
    ClosedResourceError,
    WouldBlock,
)
from anyio.abc import ObjectReceiveStream, ObjectSendStream, ObjectStream
from anyio.lowlevel import checkpoint

from ..abc import IPCAttribute
from ..errors import translate_os_error
from ..framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Buffer,
    Encoder,
    EndPolicy,
    Framing,
    Owed,
    check_size,
    make_decoder,
)
from .wait import (
    AGAIN,
    Again,
    Busy,
    FdWaiter,
    Pacer,
    running_asyncio_loop,
    wait_fd_sync,
    wait_until,
)

__all__ = [
    "Framing",
    "FdReceiveChannel",
    "FdSendChannel",
    "FdChannel",
]

_READ_SIZE = 64 * 1024
_MAX_READ_SIZE = 16 * 1024 * 1024
# Up to this size the header and payload are joined into one buffer for one write();
# above it they go out with writev() to spare the copy.
_JOIN_LIMIT = 16 * 1024
# Coalesced small messages are written out once this many bytes wait.
_CORK_LIMIT = 64 * 1024
_IOV_MAX = 1024
# How long aclose() and close() wait for room for what was committed and the goodbye.
_CLOSE_GRACE = 1.0


class FdResource:
    """Owns one non-blocking fd (or socket) and closes it exactly once.

    ``sock`` is kept when the fd belongs to a :class:`socket.socket`, so the socket
    object (not a bare ``os.close``) releases it.
    """

    __slots__ = ("__weakref__", "closed", "fd", "sock", "waiter", "what")
    fd: int
    what: str
    sock: socket.socket | None
    closed: bool
    waiter: FdWaiter

    def __init__(self, fd: int, what: str, sock: Any = None) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.what = what
        self.sock = sock
        self.closed = False
        self.waiter = FdWaiter(fd)

    def _release(self) -> None:
        self.closed = True
        # Unregister from the loop and wake any waiter before the number can be reused.
        self.waiter.close()
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)

    async def aclose(self) -> None:
        if self.closed:
            return
        self._release()

    def close(self) -> None:
        """Close without an event loop (finalizers, sync cleanup). Idempotent."""
        if not self.closed:
            self._release()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            warnings.warn(
                f"unclosed aioipc handle for {self.what} (fd {self.fd})",
                ResourceWarning,
                stacklevel=2,
            )
            self.close()


def _rebuild(
    dup: Any, mode: str, kwargs: dict[str, Any], extra_dups: tuple[Any, ...]
) -> FdReceiveChannel | FdSendChannel:
    fd = dup.detach()
    mechanism = kwargs["mechanism"]
    what = f"{mechanism} ({'read' if mode == 'r' else 'write'} end, fd {fd})"
    if mode == "w":
        owed = kwargs.pop("owes_goodbye", False)
        sender = FdSendChannel(FdResource(fd, what), **kwargs)
        sender._tx.inherit_goodbye(owed)
        return sender
    extra = tuple(FdResource(d.detach(), f"{what} (keep-alive)") for d in extra_dups)
    owed = kwargs.pop("owed_goodbyes", ((), 0))
    receiver = FdReceiveChannel(FdResource(fd, what), extra_fds=extra, **kwargs)
    receiver._rx.expect_goodbyes(owed)
    return receiver


def _reduce(
    res: FdResource,
    mode: str,
    idle: bool,
    kwargs: dict[str, Any],
    extra: tuple[FdResource, ...] = (),
) -> tuple[Any, ...]:
    """Pickle support: the child of a ``multiprocessing`` start gets its own copy of the fd."""
    from multiprocessing.reduction import DupFd

    if res.closed:
        raise ClosedResourceError
    if not idle:
        raise RuntimeError(
            f"{res.what}: cannot hand to another process while data is buffered in this one"
        )
    return (_rebuild, (DupFd(res.fd), mode, kwargs, tuple(DupFd(e.fd) for e in extra)))


def _writer_came_and_went(fd: int) -> bool:
    """For a FIFO read of b"" before any wakeup: has a writer been and gone (a real end
    of stream), or has none come yet? The kernel reports POLLHUP only in the first case."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


class _Receiver:
    """The receive half: read, decode, and the end-of-stream rules."""

    __slots__ = (
        "_busy",
        "_decoder",
        "_end",
        "_max_size",
        "_pacer",
        "_read",
        "_res",
        "framing",
    )

    def __init__(
        self,
        res: FdResource,
        framing: Framing,
        max_size: int,
        read: Callable[[int], bytes] | None = None,
        *,
        trust_first_eof: bool = True,
        max_partial: int | None = None,
        peer: str = "the peer",
    ) -> None:
        self._res = res
        self.framing = framing
        self._max_size = max_size
        self._decoder = make_decoder(framing, max_size, max_partial)
        # A FIFO reader opened before any writer reads b"" until one appears; that
        # b"" is not an end of stream. Readiness only fires once a writer has come.
        self._end = EndPolicy(self._decoder, res.what, trust_first_eof=trust_first_eof, peer=peer)
        self._read = read or functools.partial(os.read, res.fd)
        self._pacer = Pacer()
        self._busy = Busy("receiving from")

    @property
    def last_flags(self) -> int:
        """Flag bits of the frame most recently returned (FLAG_ANCILLARY: it carried fds)."""
        return self._decoder.last_flags

    @property
    def buffered(self) -> int:
        """Bytes read from the fd and not yet returned as whole messages."""
        return self._decoder.buffered

    @property
    def trusts_eof(self) -> bool:
        """False while a FIFO reader has not yet seen any writer."""
        return self._end.trusted

    @property
    def idle(self) -> bool:
        """True when nothing read from the fd is waiting in this process's buffers."""
        return not self._busy.held and self._decoder.buffered == 0

    def owed_goodbyes(self) -> Owed:
        """What the decoder knows of the writers (who sent and owes a goodbye), for a
        copy of this handle in another process: without it, the copy would take a
        writer killed after its messages for one that finished."""
        return self._decoder.owed_goodbyes()

    def expect_goodbyes(self, owed: Owed) -> None:
        self._decoder.expect_goodbyes(owed)

    def _fill(self) -> bool:
        """One non-blocking read into the decoder. False if the kernel had nothing."""
        res = self._res
        if res.closed:
            raise ClosedResourceError
        want = self._decoder.wanted()
        size = _READ_SIZE if want <= _READ_SIZE else min(want, _MAX_READ_SIZE)
        try:
            data = self._read(size)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise translate_os_error(exc, res.what) from exc
        if data:
            self._end.writer_seen()
            self._decoder.feed(data)
            return True
        if not self._end.is_end(functools.partial(_writer_came_and_went, res.fd)):
            return False
        self._end.conclude()

    def _fill_after_wakeup(self) -> bool:
        # A FIFO becomes readable only once a writer has come: from now on an empty
        # read is a real end of stream.
        self._end.writer_seen()
        return self._fill()

    async def _wait(self) -> None:
        # On asyncio the readiness callback reads into the decoder itself (see
        # FdWaiter.readable). Cancellation here leaves every byte read so far in the
        # decoder, so the next receive continues the same frame: nothing is lost.
        await self._res.waiter.readable(self._fill_after_wakeup)
        self._end.writer_seen()

    def _attempt(self) -> bytes | Again:
        """The non-blocking receive: the next whole frame, or AGAIN."""
        frame = self._decoder.next_frame()
        if frame is not None:
            return frame
        if self._end.ended:
            raise self._end.verdict()
        while self._fill():  # each read may complete a frame; stop when the kernel is empty
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
        return AGAIN

    def receive_nowait(self) -> bytes:
        if self._res.closed:
            raise ClosedResourceError
        with self._busy:
            frame = self._attempt()
        if frame is AGAIN:
            raise WouldBlock
        return frame

    async def receive(self) -> bytes:
        if self._res.closed:
            raise ClosedResourceError
        # The engine inlined (its busy guard and its fast path): measured in one process,
        # 200,000 64-byte receives of frames already in the pipe, `with self._busy:` plus
        # `await wait_until(...)` cost ~300 ns a receive more (1.02 -> 1.33 us).
        busy = self._busy
        if busy.held:
            raise busy.refused()
        busy.held = True
        try:
            # The checkpoint (every 16th call) comes before anything is taken from the
            # decoder, so a cancelled receive consumed nothing.
            pacer = self._pacer
            if pacer.due():
                await checkpoint()
            frame = self._attempt()
            if frame is not AGAIN:
                return frame
            return await wait_until(self._attempt, self._wait, pacer, paced=False, tried=True)
        finally:
            busy.held = False


def _advance(bufs: list[Buffer], n: int) -> None:
    """Drop the first ``n`` bytes from a list of buffers about to be written, and any
    empty buffers that then lead it (an empty one can never be "written")."""
    while bufs and (n or not len(bufs[0])):
        first = bufs[0]
        if n >= len(first):
            n -= len(first)
            del bufs[0]
        else:
            bufs[0] = first[n:]
            n = 0


class _Sender:
    """The send half: encode, write, wait for room, keep every message whole.

    ``_pending`` holds bytes committed to the channel that are not in the kernel yet:
    the rest of a message a cancelled send left half-written, or small messages
    coalesced on asyncio. They always go out before anything sent later, and whenever
    no task is sending, the event loop writes them out in the background.

    Coalescing (asyncio; length-prefixed framing, or raw bytes on a pipe or socket). The
    first send in a pass of the event loop goes straight to the kernel, so a lone
    message -- a request, a reply -- is never delayed. Further sends before the task
    yields are appended to ``_pending`` and written with one ``writev`` by a loop
    callback as soon as the task yields (or at once when :data:`_CORK_LIMIT` bytes
    wait). If the kernel is full, the loop's writer callback finishes the job, as
    asyncio's transports do, and the next send waits for it. A burst of small messages
    costs one system call instead of one per message. FIFO senders never coalesce: each
    of their writes must stay within PIPE_BUF to stay atomic.
    """

    __slots__ = (
        "_busy",
        "_coalesce",
        "_corked",
        "_encoder",
        "_error",
        "_header",
        "_max_size",
        "_pacer",
        "_pending",
        "_pending_size",
        "_res",
        "framing",
    )

    def __init__(
        self, res: FdResource, framing: Framing, max_size: int, *, coalesce: bool = True
    ) -> None:
        self._res = res
        self.framing = framing
        self._max_size = max_size
        self._coalesce = coalesce and framing != "chunks"
        self._pacer = Pacer()
        self._busy = Busy("sending to")
        self._pending: list[Buffer] = []
        self._pending_size = 0
        self._corked = False
        # An error the background flush met; the next send raises it.
        self._error: Exception | None = None
        # The wire format, the FIFO writer id and the goodbye policy (aioipc.framing).
        self._encoder = Encoder(framing)
        self._header = self._encoder.header

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    @property
    def busy(self) -> bool:
        """A task is in the middle of a send on this handle."""
        return self._busy.held

    def queue_goodbye(self) -> bool:
        """Commit the goodbye (after everything committed so far) if one is owed.

        Never while a task is in the middle of a send: the goodbye would land inside its
        frame. Returns whether one was queued."""
        if self._busy.held or self._res.closed:
            return False
        bye = self._encoder.take_goodbye()
        if bye is None:
            return False
        self._pending.append(bye)
        self._pending_size += len(bye)
        return True

    def hand_over(self) -> bool:
        """This handle is being pickled for another process (see Encoder.hand_over)."""
        return self._encoder.hand_over()

    def inherit_goodbye(self, owed: bool) -> None:
        """The other half of :meth:`hand_over`, in the process the handle went to."""
        self._encoder.inherit_goodbye(owed)

    def _check(self, item: bytes) -> bytes:
        """Raise if the handle cannot send ``item``; return it as immutable bytes."""
        if self._res.closed:
            raise ClosedResourceError
        if self._error is not None:
            # A fresh exception each time: re-raising one object would grow its traceback.
            raise BrokenResourceError(str(self._error)) from self._error
        self._encoder.spoke()
        if type(item) is not bytes:
            if not isinstance(item, (bytearray, memoryview)):
                raise TypeError(f"a channel sends bytes, not {type(item).__name__}")
            # Buffered bytes must not change when the caller reuses its buffer.
            item = bytes(item)
        check_size(len(item), self._max_size)
        return item

    def _write_some(self, bufs: list[Buffer]) -> int:
        """One non-blocking write of as much of ``bufs`` as the kernel takes."""
        res = self._res
        if res.closed:
            # Checked at every write: after an await, the fd number may belong to a file
            # opened since this handle was closed.
            raise ClosedResourceError
        try:
            if self.framing == "chunks" or len(bufs) == 1:
                # Chunks are written one per call: each one is atomic only on its own.
                return os.write(res.fd, bufs[0])
            return os.writev(res.fd, bufs[:_IOV_MAX])
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise translate_os_error(exc, res.what) from exc

    def _try_write(self, bufs: list[Buffer]) -> bool:
        """Write without waiting; True when ``bufs`` is empty afterwards."""
        while bufs:
            n = self._write_some(bufs)
            if not n:
                return False
            _advance(bufs, n)
        return True

    async def _write_all(self, bufs: list[Buffer], started: bool = False) -> None:
        """Write all of ``bufs``, waiting for room. The caller counted this call for the
        pacer already (it is the rest of a send), so it does not count again."""
        # What bufs looks like before any write: _advance deletes what was written
        # whole and replaces a buffer written in part, so a change shows progress.
        count, first = len(bufs), bufs[0] if bufs else None
        try:
            # The engine's fast path inlined: most writes fit at once, and the coroutine
            # of wait_until cost ~550 ns a FIFO send (measured in one process, 100,000
            # 64-byte sends: 2.41 us before the engine, 2.98 us through it).
            if not self._try_write(bufs):
                await wait_until(
                    lambda: None if self._try_write(bufs) else AGAIN,
                    self._res.waiter.writable,
                    self._pacer,
                    paced=False,
                    tried=True,
                )
        except BaseException:
            started = started or len(bufs) != count or (bool(bufs) and bufs[0] is not first)
            # Part of the frame is in the kernel already: the rest must follow it, or
            # the peer sees a corrupt stream. It goes back in front of the queue.
            if started and bufs and not self._res.closed:
                self._pending[:0] = bufs
                self._pending_size = sum(map(len, self._pending))
            raise

    async def _drain(self) -> None:
        """Write out everything committed earlier, waiting for room (cancellable)."""
        pending, self._pending = self._pending, []
        self._pending_size = 0
        await self._write_all(pending, started=True)

    def _end_turn(self) -> None:
        """End of a sending task's turn: whatever it left pending, the loop writes out
        (from a callback, which runs after the turn's busy guard is released)."""
        if self._pending and not self._corked and not self._res.closed:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        loop = running_asyncio_loop()
        if loop is not None:
            self._corked = True
            loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        self._corked = False
        if self._pending and not self._busy.held and not self._background_flush():
            self._res.waiter.when_writable(self._background_flush)

    def _background_flush(self) -> bool:
        """Write what is pending without waiting; True when nothing is left to do here."""
        if self._busy.held or self._res.closed:
            return True  # a sending task owns the buffer now; its _end_turn re-arms this
        try:
            done = self._try_write(self._pending)
        except Exception as exc:
            # Nobody is waiting to hear it now; the next send raises it.
            self._error = exc
            self._pending = []
            done = True
        self._pending_size = sum(map(len, self._pending))
        return done

    def flush_nowait(self) -> bool:
        """Write what is committed but not yet in the kernel; True when nothing is left."""
        done = self._try_write(self._pending)
        self._pending_size = sum(map(len, self._pending))
        return done

    def send_nowait(self, item: bytes) -> None:
        item = self._check(item)
        with self._busy:
            try:
                if self._pending and not self.flush_nowait():
                    raise WouldBlock
                bufs = self._encoder.encode(item)
                if not bufs:
                    return  # an empty raw message is no bytes at all
                first = self._write_some(bufs)
                if not first:
                    raise WouldBlock
                _advance(bufs, first)
                if not self._try_write(bufs):
                    # Some of it went out, so it must all go out: it is sent, and the rest
                    # is written by the loop, the next send, or aclose.
                    self._pending = bufs
                    self._pending_size = sum(map(len, bufs))
            finally:
                self._end_turn()

    async def send(self, item: bytes) -> None:
        item = self._check(item)
        # The busy guard inlined, as in _Receiver.receive: `with self._busy:` cost ~110 ns
        # a send (measured in one process, 200,000 64-byte sends into a pipe: 1.17 us
        # before the engine, 1.37 us through it, 1.3 us with the guard inlined).
        busy = self._busy
        if busy.held:
            raise busy.refused()
        busy.held = True
        try:
            if self._pacer.due():
                await checkpoint()  # before anything is committed: a cancel sends nothing
            size = len(item)
            if size > _JOIN_LIMIT or not self._coalesce:
                if self._pending:
                    await self._drain()
                await self._write_all(self._encoder.encode(item))
                return
            # The hot path for small messages: one buffer, at most one write().
            # Encoder.join, inlined through its header function: one Python call less
            # a message (~50 ns of a ~1.2 us send, measured in one process).
            header = self._header
            data = header(size) + item if header is not None else item
            if self._corked and self._pending_size < _CORK_LIMIT:
                # Committed: it goes out with the rest of this burst.
                self._pending.append(data)
                self._pending_size += len(data)
                return
            if self._pending:
                await self._drain()
            n = self._write_some([data])
            if n < len(data):
                await self._write_all([memoryview(data)[n:]], started=n > 0)
            if not self._corked:
                self._schedule_flush()
        finally:
            busy.held = False
            # _end_turn inlined: one call less a message (~50 ns; see above).
            if self._pending and not self._corked and not self._res.closed:
                self._schedule_flush()

    async def send_first_with(self, payload: bytes, first_write: Callable[[bytes], int]) -> None:
        """Send ``payload`` as one message whose first write is ``first_write(payload)``
        (``sendmsg`` with ancillary data), after everything committed before it."""

        def attempt() -> int | Again:
            if self._res.closed:
                raise ClosedResourceError
            try:
                return first_write(payload)
            except BlockingIOError:
                return AGAIN
            except OSError as exc:
                raise translate_os_error(exc, self._res.what) from exc

        with self._busy:
            try:
                if self._pending:
                    await self._drain()
                # Paced like send(): the checkpoint comes before the first write, never
                # after a message (and its fds) went out, which a cancellation delivered
                # there would report as not sent.
                sent = await wait_until(attempt, self._res.waiter.writable, self._pacer)
                if sent < len(payload):
                    await self._write_all([memoryview(payload)[sent:]], started=True)
            finally:
                self._end_turn()

    async def drain(self) -> None:
        """Wait until everything committed is in the kernel (cancellable)."""
        with self._busy:
            try:
                if self._pending:
                    await self._drain()
            finally:
                self._end_turn()

    async def flush_before_close(self, grace: float) -> None:
        """For aclose: best effort, for at most ``grace`` seconds, never raising. While a
        task is in the middle of a send, only what the kernel takes at once is written
        (synchronously, so it cannot interleave with that task's write); closing then
        wakes that task with ClosedResourceError. The goodbye goes last, if owed."""
        self.queue_goodbye()
        if not self._pending or self._res.closed:
            return
        if self._busy.held:
            with contextlib.suppress(Exception):
                self.flush_nowait()
            return
        from anyio import CancelScope, move_on_after

        with (
            self._busy,
            CancelScope(shield=True),
            move_on_after(grace),
            contextlib.suppress(Exception),
        ):
            await self._drain()


def _close_sync(res: FdResource, tx: _Sender, grace: float = _CLOSE_GRACE) -> None:
    """close() for code with no event loop: what aclose() does, blocking this thread.

    The goodbye is queued here, so a caller cannot flush it beforehand: when the kernel
    buffer is full at this moment (a busy reader, other writers on a FIFO), waiting for
    room is the only way it gets out. So, like aclose, wait up to ``grace`` seconds;
    not while a task is in the middle of a send (it owns the rest of its message)."""
    if res.closed or not (tx.queue_goodbye() or tx.has_pending):
        res.close()
        return
    with contextlib.suppress(Exception):
        wait_fd_sync(lambda: tx.flush_nowait() or tx.busy, res.fd, select.POLLOUT, grace)
    res.close()


async def _aclose_sender(res: FdResource, tx: _Sender) -> None:
    try:
        await tx.flush_before_close(_CLOSE_GRACE)
    finally:
        await res.aclose()
    await checkpoint()


_FRAMED = {"frames": True, "chunks": True, "raw": False}


class _FdHandle:
    """What every fd channel shares: its fd, its typed attributes, and the arguments that
    rebuild it in another process."""

    _res: FdResource
    _attrs: dict[Any, Callable[[], Any]]
    _kwargs: dict[str, Any]

    def _init_handle(
        self,
        res: FdResource,
        mechanism: str,
        framing: Framing,
        max_size: int,
        path: str | None,
    ) -> None:
        self._res = res
        self._attrs = {
            IPCAttribute.fd: lambda: res.fd,
            IPCAttribute.mechanism: lambda: mechanism,
            IPCAttribute.framed: lambda: _FRAMED[framing],
            IPCAttribute.max_message_size: lambda: max_size,
        }
        if path is not None:
            self._attrs[IPCAttribute.path] = lambda: path
        self._kwargs = {
            "mechanism": mechanism,
            "framing": framing,
            "max_message_size": max_size,
            "path": path,
        }

    def fileno(self) -> int:
        return self._res.fd

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._attrs


class FdReceiveChannel(_FdHandle, ObjectReceiveStream[bytes]):
    """A one-way receiver over a readable fd (pipe read end, FIFO).

    ``receive()`` returns the next whole message (or, with ``framing=False``, the next
    bytes that arrived).

    Raises:
        anyio.EndOfStream: every writer closed cleanly (framed: each writer that sent
            messages said goodbye after its last one; raw: plain end of file).
        anyio.BrokenResourceError: a writer died or closed in the middle of a message, or
            (framed) a writer that sent messages went away without saying goodbye: it
            was killed, crashed, or its end was closed without ``aclose()``/``close()``.
            Every later receive raises it again.
        anyio.ClosedResourceError: this handle was closed.
        anyio.BusyResourceError: another task is already receiving on this handle.
        aioipc.framing.FrameTooLargeError: a header announced more than
            ``max_message_size`` bytes (the stream cannot be resynchronised after it).

    Cancellation: a cancelled ``receive`` consumed nothing; bytes of a partly received
    message stay buffered and the next ``receive`` returns that message whole.
    """

    def __init__(
        self,
        res: FdResource,
        *,
        mechanism: str,
        framing: Framing = "frames",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        path: str | None = None,
        trust_first_eof: bool = True,
        extra_fds: tuple[FdResource, ...] = (),
        max_partial_bytes: int | None = None,
    ) -> None:
        self._init_handle(res, mechanism, framing, max_message_size, path)
        self._rx = _Receiver(
            res,
            framing,
            max_message_size,
            trust_first_eof=trust_first_eof,
            max_partial=max_partial_bytes,
            peer="a writer" if framing == "chunks" else "the writer",
        )
        self._extra_fds = extra_fds
        self._kwargs["max_partial_bytes"] = max_partial_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            **self._kwargs,
            "trust_first_eof": self._rx.trusts_eof,
            "owed_goodbyes": self._rx.owed_goodbyes(),
        }
        return _reduce(self._res, "r", self._rx.idle, kwargs, self._extra_fds)

    async def receive(self) -> bytes:
        """Wait for and return the next message. See the class docstring for errors."""
        return await self._rx.receive()

    def receive_nowait(self) -> bytes:
        """Return the next message if one is ready now, else raise :exc:`anyio.WouldBlock`."""
        return self._rx.receive_nowait()

    async def aclose(self) -> None:
        """Close this handle (never blocks). Pending and later calls raise ClosedResourceError."""
        for extra in self._extra_fds:
            extra.close()
        await self._res.aclose()
        await checkpoint()

    def close(self) -> None:
        """Close synchronously, for code with no event loop (e.g. a child process's exit)."""
        for extra in self._extra_fds:
            extra.close()
        self._res.close()


class FdSendChannel(_FdHandle, ObjectSendStream[bytes]):
    """A one-way sender over a writable fd (pipe write end, FIFO).

    ``send(data)`` returns once the message is committed: written to the kernel, or (on
    asyncio, for a small message sent in the same loop pass as an earlier one) queued in
    this handle's bounded buffer, which the event loop writes out as soon as the task
    yields. Backpressure: once 64 KiB wait there, or the kernel buffer is full at the
    next send, ``send`` waits.

    Raises:
        aioipc.MessageTooLargeError: ``data`` exceeds ``max_message_size`` (nothing was
            sent; the channel stays usable).
        anyio.BrokenResourceError: the reading end is closed (EPIPE).
        anyio.ClosedResourceError: this handle was closed.
        anyio.BusyResourceError: another task is already sending on this handle.

    Cancellation: if ``send`` is cancelled before any byte of the message reached the
    kernel, nothing was sent. If part of it had, the message counts as sent: the rest is
    written before the next message (by the next ``send``, or by ``aclose``), so the
    receiver never sees half a message followed by another one.
    """

    def __init__(
        self,
        res: FdResource,
        *,
        mechanism: str,
        framing: Framing = "frames",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        path: str | None = None,
    ) -> None:
        self._init_handle(res, mechanism, framing, max_message_size, path)
        # A FIFO may have other writers: every write must stay atomic on its own.
        self._tx = _Sender(res, framing, max_message_size, coalesce=mechanism != "fifo")

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = dict(self._kwargs)
        reduced = _reduce(self._res, "w", not self._tx.has_pending, kwargs)
        # Only once the handle can go (it may be closed or busy, or the fd not dup):
        # pickling reads kwargs after this returns.
        kwargs["owes_goodbye"] = self._tx.hand_over()
        return reduced

    async def send(self, item: bytes) -> None:
        """Send one message, waiting while the kernel buffer is full. See the class docstring."""
        await self._tx.send(item)

    def send_nowait(self, item: bytes) -> None:
        """Send one message if the kernel has room now, else raise :exc:`anyio.WouldBlock`."""
        self._tx.send_nowait(item)

    def flush_nowait(self) -> bool:
        """Write what an earlier ``send_nowait`` or cancelled ``send`` left half-written,
        without waiting. Returns True when nothing is left (for sync code: wait for the fd
        to be writable and call again until it does)."""
        if self._res.closed:
            raise ClosedResourceError
        return self._tx.flush_nowait()

    async def aclose(self) -> None:
        """Close this handle after writing out (for at most 1 s) what was committed and,
        if this handle sent anything (framed), the goodbye that tells the receiver it
        finished rather than died. Never blocks for longer than that second."""
        await _aclose_sender(self._res, self._tx)

    def close(self) -> None:
        """Close synchronously, for code with no event loop: as :meth:`aclose`, write
        out what was committed and the goodbye, blocking this thread for at most 1 s
        while the kernel has no room (what still does not fit is lost). Raises
        nothing."""
        _close_sync(self._res, self._tx)


class FdChannel(_FdHandle, ObjectStream[bytes]):
    """A two-way channel over one fd (a connected unix stream socket)."""

    def __init__(
        self,
        res: FdResource,
        *,
        mechanism: str,
        framing: Framing = "frames",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        read: Callable[[int], bytes] | None = None,
        peer: str = "the peer",
    ) -> None:
        self._init_handle(res, mechanism, framing, max_message_size, None)
        self._rx = _Receiver(res, framing, max_message_size, read, peer=peer)
        self._tx = _Sender(res, framing, max_message_size)

    async def receive(self) -> bytes:
        """Wait for and return the next message.

        Raises:
            anyio.EndOfStream: the peer closed (or called ``send_eof``) cleanly.
            anyio.BrokenResourceError: the peer closed or died in the middle of a message,
                or (framed) it sent messages and went away without a goodbye: killed,
                crashed, or closed without ``aclose()``. The message has its pid. Every
                later receive raises it again.
            anyio.ClosedResourceError: this handle was closed.
            anyio.BusyResourceError: another task is already receiving on this handle.

        Cancellation: a cancelled ``receive`` consumed nothing; the next ``receive``
        returns the next whole message.
        """
        return await self._rx.receive()

    def receive_nowait(self) -> bytes:
        """Return the next message if one is ready now, else raise :exc:`anyio.WouldBlock`."""
        return self._rx.receive_nowait()

    async def send(self, item: bytes) -> None:
        """Send one message, waiting while the socket buffer is full.

        Raises:
            aioipc.MessageTooLargeError: the message exceeds ``max_message_size``.
            anyio.BrokenResourceError: the peer is gone.
            anyio.ClosedResourceError: this handle was closed.
            anyio.BusyResourceError: another task is already sending on this handle.

        Cancellation: if no byte of the message reached the kernel, nothing was sent;
        otherwise it counts as sent and its rest goes out before the next message.
        """
        await self._tx.send(item)

    def send_nowait(self, item: bytes) -> None:
        """Send one message if there is room now, else raise :exc:`anyio.WouldBlock`."""
        self._tx.send_nowait(item)

    async def send_eof(self) -> None:
        """Write out what was committed (and the goodbye), then shut down the sending
        direction; the peer's ``receive`` then raises EndOfStream.

        Raises the errors of :meth:`send`. Cancellation: if cancelled while committed
        bytes are still being written, the direction is not shut down.
        """
        if self._res.sock is None:
            raise NotImplementedError("send_eof needs a socket")
        self._tx.queue_goodbye()
        await self._tx.drain()
        try:
            self._res.sock.shutdown(1)  # SHUT_WR
        except OSError as exc:
            raise translate_os_error(exc, self._res.what) from exc
        await checkpoint()

    async def aclose(self) -> None:
        """Close this handle after writing out (for at most 1 s) what was committed and,
        if this handle sent anything (framed), the goodbye."""
        await _aclose_sender(self._res, self._tx)

    def close(self) -> None:
        """Close synchronously, for code with no event loop: as :meth:`aclose`, blocking
        this thread for at most 1 s while the kernel has no room for what was committed
        and the goodbye. Raises nothing."""
        _close_sync(self._res, self._tx)
