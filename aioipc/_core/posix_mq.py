"""POSIX message queues as an async Channel, driven by the event loop with no threads.

On Linux a queue descriptor is a file descriptor that ``epoll`` understands: readable
while the queue holds a message, writable while it has room. So a receive on an empty
queue (or a send to a full one) waits on the event loop like a socket does.
"""

from __future__ import annotations

import errno
import functools
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import posix_ipc
from anyio import ClosedResourceError, WouldBlock
from anyio.abc import ObjectStream

from ..abc import IPCAttribute, message_bytes
from ..errors import (
    IPCNotFoundError,
    IPCPermissionError,
    MessageTooLargeError,
    open_or_create,
    translate_os_error,
)
from . import registry as _registry
from .check import ID_MAX, LONG_MAX, check_int, check_mode, check_size
from .posix_base import MQ_ERRORS, check_name, map_posix_errors, posix_error
from .wait import AGAIN, Again, Busy, FdWaiter, Pacer, wait_until

__all__ = ["MessageQueue"]

# A send to a full queue or a receive from an empty one yields to the event loop twice,
# trying again after each turn, before it waits for readiness: the peer's answer often
# comes within those turns, which spares the loop a sleep in epoll_wait and the process a
# wake-up. Measured with the pre-issue-11 benchmarks/bench_queues.py (--quick --rounds 3,
# posix-mq/aioipc round trip, two alternating runs each): 13.1 and 8.6 us with two turns,
# 55.2 and 36.8 us with one, 23.4 and 16.8 us for the code before (whose turn-taking lock
# yielded once). In one process (two tasks ping-ponging): 16.7 us with two, 48 us with
# one, 24 us before. Where it does not pay it costs two loop iterations before the wait.
_YIELDS = 2

#: The highest priority a message can have (Linux: 32767).
PRIORITY_MAX: int = posix_ipc.QUEUE_PRIORITY_MAX


class MessageQueue(ObjectStream[bytes]):
    """A POSIX message queue (``mq_open``): a Channel of bytes, with message priorities.

    ``send(data, priority=p)`` and ``receive_message() -> (data, priority)``: the kernel
    hands out the highest priority first, oldest first within a priority. Messages are
    the kernel's own, with no aioipc framing, so a C program with ``mq_send`` /
    ``mq_receive`` on the same name interoperates.

    A full queue makes :meth:`send` wait (backpressure) and :meth:`send_nowait` raise
    WouldBlock. Waiting is readiness of the queue descriptor on the event loop: no
    threads. One task at a time sends, and one receives, on a handle: a second
    concurrent :meth:`send` (or receive) raises :exc:`anyio.BusyResourceError`, as on
    every aioipc channel (docs/channels.md). Tasks that want to share a queue open a
    handle each, or share one through a memory stream.

    The queue lives until :meth:`unlink` (and the last handle's close); closing a handle
    leaves it. Like an unlinked file, an unlinked queue keeps working for the handles
    already open on it.
    """

    def __init__(self, mq: posix_ipc.MessageQueue, name: str, *, read: bool, write: bool) -> None:
        self._mq = mq
        self._name = name
        self._what = f"POSIX message queue {name}"
        mq.block = False
        self._fd: int = mq.mqd
        self._waiter = FdWaiter(self._fd)
        self._max_size: int = mq.max_message_size
        self._max_messages: int = mq.max_messages
        self._read = read
        self._write = write
        self._closed = False
        self._rx_pacer, self._tx_pacer = Pacer(), Pacer()
        self._rx_busy = Busy("receiving from")
        self._tx_busy = Busy("sending to")

    # -- construction -----------------------------------------------------------------

    @classmethod
    def _open(
        cls,
        name: str,
        flags: int,
        *,
        mode: int = 0o600,
        max_messages: int = 0,
        max_message_size: int = 0,
        read: bool = True,
        write: bool = True,
    ) -> MessageQueue:
        check_name(name, "message queue")
        what = f"POSIX message queue {name}"
        creating = bool(flags & posix_ipc.O_CREAT)
        # Checked before the kernel sees them: posix_ipc would mask nothing but let the
        # kernel (or a C long) cut a bad value down to another, or raise OverflowError.
        if creating:
            check_mode(mode, what)
            check_int(max_messages, "max_messages", minimum=1, maximum=LONG_MAX, what=what)
            check_size(max_message_size, what, "max_message_size")
        if not (read or write):
            raise ValueError(f"{what}: a queue handle must be open for read, write or both")
        kw: dict[str, Any] = {"read": read, "write": write}
        shape = None
        if creating:
            kw.update(mode=mode, max_messages=max_messages, max_message_size=max_message_size)
            shape = (max_messages, max_message_size)
        with map_posix_errors("mq", name, shape=shape):
            try:
                mq = posix_ipc.MessageQueue(name, flags, **kw)
            except posix_ipc.ExistentialError:
                if not creating and os.path.exists(f"/dev/shm/sem.{name[1:]}"):
                    raise IPCNotFoundError(
                        errno.ENOENT, f"{what}: does not exist (a POSIX semaphore has that name)"
                    ) from None
                raise
        try:
            if creating:
                # mq_open applies the umask; the caller asked for exactly ``mode``.
                os.fchmod(mq.mqd, mode)
            handle = cls(mq, name, read=read, write=write)
            if flags & posix_ipc.O_EXCL:
                _registry.record("posix-mq", name, st=os.fstat(mq.mqd))
            return handle
        except BaseException as exc:
            if flags & posix_ipc.O_EXCL:
                mq.unlink()  # we made it: leave no half-made queue behind
            mq.close()
            if isinstance(exc, OSError):
                raise translate_os_error(exc, what, MQ_ERRORS) from exc
            raise

    @classmethod
    def create(
        cls,
        name: str,
        *,
        max_messages: int = 10,
        max_message_size: int = 8192,
        mode: int = 0o600,
        read: bool = True,
        write: bool = True,
    ) -> MessageQueue:
        """Create a new queue (``O_CREAT|O_EXCL``); never waits.

        The defaults, 10 and 8192, are Linux's default ``/proc/sys/fs/mqueue/msg_max``
        and ``msgsize_max``: the most an unprivileged process may ask for unless an
        administrator raised those. ``mode`` is applied exactly, whatever the umask.

        Raises:
            aioipc.IPCExistsError: a queue with this name exists.
            TypeError: ``mode``, ``max_messages`` or ``max_message_size`` is not an int.
            ValueError: a bad name; ``mode`` outside 0..0o777; a shape below 1 or beyond
                msg_max / msgsize_max (each named). Checked before anything is created.
            aioipc.IPCSystemError: errno EMFILE: this process has RLIMIT_NOFILE
                descriptors open, or the queue would go over RLIMIT_MSGQUEUE (whichever
                it is is named, with its value; for the latter the bytes needed); ENFILE:
                the system's file-max; ENOSPC: queues_max.
            aioipc.IPCPermissionError: not allowed.
        """
        return cls._open(
            name,
            posix_ipc.O_CREX,
            mode=mode,
            max_messages=max_messages,
            max_message_size=max_message_size,
            read=read,
            write=write,
        )

    @classmethod
    def open(cls, name: str, *, read: bool = True, write: bool = True) -> MessageQueue:
        """Open an existing queue; never waits.

        Raises:
            aioipc.IPCNotFoundError: no queue has this name.
            aioipc.IPCPermissionError: its mode does not allow the asked access.
            aioipc.IPCSystemError: EMFILE (RLIMIT_NOFILE, named with its value) or
                ENFILE (the system's file-max).
            ValueError: a bad name.
        """
        return cls._open(name, 0, read=read, write=write)

    @classmethod
    def open_or_create(
        cls,
        name: str,
        *,
        max_messages: int = 10,
        max_message_size: int = 8192,
        mode: int = 0o600,
        read: bool = True,
        write: bool = True,
    ) -> MessageQueue:
        """Open the queue, creating it as :meth:`create` does if there is none; never waits.

        The shape and mode apply only if this call creates it, but are checked either way.

        Raises:
            as :meth:`create` and :meth:`open`, except IPCExistsError and IPCNotFoundError
            (unless the name keeps being created and removed by others: IPCNotFoundError).
        """
        return open_or_create(
            lambda: cls.create(
                name,
                max_messages=max_messages,
                max_message_size=max_message_size,
                mode=mode,
                read=read,
                write=write,
            ),
            lambda: cls.open(name, read=read, write=write),
            IPCNotFoundError(errno.ENOENT, f"POSIX message queue {name}: keeps vanishing"),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A queue descriptor cannot travel to another process; its name can. (So a
        # handle on an unlinked queue cannot be pickled usefully: the child gets
        # IPCNotFoundError.)
        return (_reopen, (self._name, self._read, self._write))

    # -- attributes -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_messages(self) -> int:
        """Capacity in messages (``mq_maxmsg``)."""
        return self._max_messages

    @property
    def max_message_size(self) -> int:
        """The largest message in bytes (``mq_msgsize``)."""
        return self._max_size

    @property
    def current_messages(self) -> int:
        """Messages in the queue now."""
        self._check_open()
        return int(self._mq.current_messages)

    def _fstat(self) -> os.stat_result:
        self._check_open()
        return os.fstat(self._fd)

    @property
    def mode(self) -> int:
        """Permission bits (settable by the owner, to exactly 0..0o777: anything else is a
        TypeError or ValueError, never masked; IPCPermissionError if not the owner)."""
        return self._fstat().st_mode & 0o777

    @mode.setter
    def mode(self, value: int) -> None:
        check_mode(value, self._what)
        self._check_open()
        try:
            os.fchmod(self._fd, value)
        except OSError as exc:
            raise translate_os_error(exc, f"{self._what}: cannot change mode") from exc

    @property
    def uid(self) -> int:
        """Owner user id (settable by root)."""
        return self._fstat().st_uid

    @uid.setter
    def uid(self, value: int) -> None:
        self._chown(value, -1)

    @property
    def gid(self) -> int:
        """Owner group id (settable by the owner, to one of its groups, or by root)."""
        return self._fstat().st_gid

    @gid.setter
    def gid(self, value: int) -> None:
        self._chown(-1, value)

    def _chown(self, uid: int, gid: int) -> None:
        # -1 leaves that id as it is; (uid_t)-1 itself is no one's id.
        check_int(uid, "uid", minimum=-1, maximum=ID_MAX, what=self._what)
        check_int(gid, "gid", minimum=-1, maximum=ID_MAX, what=self._what)
        self._check_open()
        try:
            os.fchown(self._fd, uid, gid)
        except OSError as exc:
            raise translate_os_error(exc, f"{self._what}: cannot change owner") from exc

    def fileno(self) -> int:
        """The queue descriptor (an fd the event loop can poll)."""
        return self._fd

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            IPCAttribute.fd: lambda: self._fd,
            IPCAttribute.path: lambda: self._name,
            IPCAttribute.mechanism: lambda: "posix-mq",
            IPCAttribute.framed: lambda: False,
            IPCAttribute.max_message_size: lambda: self._max_size,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self._what}: this handle is closed")

    # -- sending ----------------------------------------------------------------------

    def _prepare(self, item: object, priority: int) -> bytes:
        self._check_open()
        if not self._write:
            raise IPCPermissionError(errno.EBADF, f"{self._what}: this handle is receive-only")
        data = message_bytes(item)
        if len(data) > self._max_size:
            raise MessageTooLargeError(
                len(data), self._max_size, f"max_message_size of {self._what}"
            )
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"a priority is an int, not {priority!r}")
        if not 0 <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be in 0..{PRIORITY_MAX}, got {priority}")
        return data

    def _try_send(self, data: bytes, priority: int) -> Again | None:
        try:
            self._mq.send(data, None, priority)
            return None
        except posix_ipc.BusyError:
            return AGAIN
        except posix_ipc.ExistentialError:
            raise ClosedResourceError(f"{self._what}: this handle is closed") from None
        except (posix_ipc.Error, OSError, ValueError) as exc:
            raise posix_error(exc, self._what, MQ_ERRORS) from exc

    def send_nowait(self, item: bytes, *, priority: int = 0) -> None:
        """Send one message without waiting.

        Raises:
            anyio.WouldBlock: the queue is full (nothing sent).
            anyio.ClosedResourceError: this handle is closed.
            aioipc.MessageTooLargeError: over the queue's max_message_size (named).
            aioipc.IPCPermissionError: a receive-only handle.
            TypeError, ValueError: not bytes; priority outside 0..PRIORITY_MAX.
        """
        data = self._prepare(item, priority)
        if self._try_send(data, priority) is AGAIN:
            raise WouldBlock

    async def send(self, item: bytes, *, priority: int = 0) -> None:
        """Send one message, waiting while the queue is full.

        Raises:
            anyio.BusyResourceError: another task is already sending on this handle.
            anyio.ClosedResourceError: this handle is closed (also while waiting).
            as :meth:`send_nowait` otherwise, except WouldBlock.

        Cancellation: a cancelled send did not enqueue the message (the message is
        handed to the kernel in one call, after the last point where a cancellation
        can arrive).
        """
        data = self._prepare(item, priority)
        # The engine's busy guard and fast path inlined: `with` + `await wait_until(...)`
        # cost ~0.6-0.8 us a message (measured in one process, 100,000 64-byte sends and
        # receives on one queue: 1.7 -> 2.5 us a send).
        busy = self._tx_busy
        if busy.held:
            raise busy.refused()
        busy.held = True
        try:
            pacer = self._tx_pacer
            if pacer.due():
                await anyio.lowlevel.checkpoint()
            if self._try_send(data, priority) is AGAIN:
                await wait_until(
                    functools.partial(self._try_send, data, priority),
                    self._waiter.writable,
                    pacer,
                    paced=False,
                    tried=True,
                    yields=_YIELDS,
                )
        finally:
            busy.held = False

    async def send_eof(self) -> None:
        """Not supported: a message queue has no end-of-stream marker.

        Raises:
            NotImplementedError: always. Agree on a last message with the peer instead.
        """
        raise NotImplementedError(
            f"{self._what}: a message queue has no end of stream; send an agreed last message"
        )

    # -- receiving --------------------------------------------------------------------

    def _try_receive(self) -> tuple[bytes, int] | Again:
        try:
            data, priority = self._mq.receive()
        except posix_ipc.BusyError:
            return AGAIN
        except posix_ipc.ExistentialError:
            raise ClosedResourceError(f"{self._what}: this handle is closed") from None
        except (posix_ipc.Error, OSError) as exc:
            raise posix_error(exc, self._what, MQ_ERRORS) from exc
        return data, priority

    def _check_receive(self) -> None:
        self._check_open()
        if not self._read:
            raise IPCPermissionError(errno.EBADF, f"{self._what}: this handle is send-only")

    def receive_message_nowait(self) -> tuple[bytes, int]:
        """Take the highest-priority message without waiting; return ``(data, priority)``.

        Raises:
            anyio.WouldBlock: the queue is empty.
            anyio.ClosedResourceError: this handle is closed.
            aioipc.IPCPermissionError: a send-only handle.
        """
        self._check_receive()
        msg = self._try_receive()
        if msg is AGAIN:
            raise WouldBlock
        return msg

    async def receive_message(self) -> tuple[bytes, int]:
        """Take the highest-priority message, waiting for one; return ``(data, priority)``.

        Raises:
            anyio.BusyResourceError: another task is already receiving on this handle.
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            aioipc.IPCPermissionError: a send-only handle.

        Cancellation: a cancelled receive took nothing from the queue (the message is
        taken in one call, after the last point where a cancellation can arrive).
        """
        self._check_receive()
        # The busy guard and fast path inlined, as in send (same measurement).
        busy = self._rx_busy
        if busy.held:
            raise busy.refused()
        busy.held = True
        try:
            pacer = self._rx_pacer
            if pacer.due():
                await anyio.lowlevel.checkpoint()
            msg = self._try_receive()
            if msg is not AGAIN:
                return msg
            return await wait_until(
                self._try_receive,
                self._waiter.readable,
                pacer,
                paced=False,
                tried=True,
                yields=_YIELDS,
            )
        finally:
            busy.held = False

    async def receive(self) -> bytes:
        """Receive the data of the highest-priority message (as :meth:`receive_message`).

        A queue never ends, so ``async for`` runs until the handle is closed.

        Raises:
            anyio.BusyResourceError: another task is already receiving on this handle.
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            aioipc.IPCPermissionError: a send-only handle.

        Cancellation: a cancelled receive took nothing from the queue.
        """
        return (await self.receive_message())[0]

    def receive_nowait(self) -> bytes:
        """As :meth:`receive_message_nowait`, returning the data only."""
        return self.receive_message_nowait()[0]

    # -- lifecycle --------------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the name now. Open handles (here and elsewhere) keep working; the queue
        is freed when the last one closes.

        Raises:
            aioipc.IPCNotFoundError: the name is gone already.
            aioipc.IPCPermissionError: not allowed.
        """
        unlink(self._name)

    async def aclose(self) -> None:
        """Close this handle; waiting tasks get ClosedResourceError. The queue stays."""
        self._close()
        await anyio.lowlevel.checkpoint()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._waiter.close()
        self._mq.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)
            self._close()

    def __repr__(self) -> str:
        return f"<aioipc {self._what}{' closed' if self._closed else ''}>"


def _reopen(name: str, read: bool, write: bool) -> MessageQueue:
    return MessageQueue.open(name, read=read, write=write)


def unlink(name: str) -> None:
    """Remove the POSIX message queue ``name`` (``mq_unlink``).

    Raises:
        aioipc.IPCNotFoundError: no such queue.
        aioipc.IPCPermissionError: we may not remove it.
        ValueError: a bad name.
    """
    check_name(name, "message queue")
    with map_posix_errors("mq", name):
        posix_ipc.unlink_message_queue(name)
    _registry.forget("posix-mq", name)
