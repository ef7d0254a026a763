"""System V message queues as an async Channel with the kernel's typed messages."""

from __future__ import annotations

import contextlib
import errno
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import anyio
import sysv_ipc
from anyio import BusyResourceError, ClosedResourceError, WouldBlock
from anyio.abc import ObjectStream

from ..abc import IPCAttribute, message_bytes
from ..errors import (
    IPCPermissionError,
    IPCSystemError,
    MessageTooLargeError,
    Overrides,
    open_or_create,
)
from . import libc as _libc
from .check import LONG_MAX, check_int, check_mode, check_size
from .libc import (
    IPC_CREAT,
    IPC_EXCL,
    IPC_NOWAIT,
    MSG_COPY,
    MSG_EXCEPT,
    MSG_NOERROR,
    MSG_QBYTES_MAX,
)
from .sysv_base import IPC_PRIVATE, SysVObject, check_key, key_repr, read_sysctl
from .threads import Interrupted, Job, Workers, run_in_worker
from .wait import AGAIN, Again, Busy, Pacer, wait_until

__all__ = ["MessageQueue"]

_MSGMAX = "/proc/sys/kernel/msgmax"
_MSGMNB = "/proc/sys/kernel/msgmnb"

Message = tuple[int, bytes]


def _check_send_type(t: int) -> int:
    if isinstance(t, bool) or not isinstance(t, int):
        raise TypeError(f"a message type is an int > 0, not {t!r}")
    if not 0 < t <= LONG_MAX:
        raise ValueError(f"a SysV message type must be > 0 (and fit a C long), got {t}")
    return t


def _check_selector(t: int, except_type: bool) -> int:
    if isinstance(t, bool) or not isinstance(t, int):
        raise TypeError(f"a message type selector is an int, not {t!r}")
    if not -LONG_MAX <= t <= LONG_MAX:
        raise ValueError(f"message type selector {t} does not fit a C long")
    if except_type and t <= 0:
        raise ValueError(f"except_type=True needs a type > 0 to exclude, got {t}")
    return t


def _check_max_bytes(value: object, what: str) -> int:
    # msg_qbytes is an unsigned long: ctypes would silently keep only its low bits.
    return check_size(value, what, "max_bytes", maximum=MSG_QBYTES_MAX)


def _check_creation(key: int, mode: object, max_bytes: object) -> None:
    """What only creation uses, checked before anything is created."""
    what = f"{MessageQueue._kind_name} key={key_repr(key)}"
    check_mode(mode, what)
    if max_bytes is not None:
        _check_max_bytes(max_bytes, what)


def _matches(mtype: int, selector: int, except_type: bool) -> bool:
    if selector == 0:
        return True
    if selector < 0:
        return mtype <= -selector
    return (mtype != selector) if except_type else (mtype == selector)


class MessageQueue(SysVObject, ObjectStream[bytes]):
    """A System V message queue: a Channel of bytes, plus the kernel's typed messages.

    Every message carries a type (a positive long). ``send(data)`` uses the handle's
    ``send_type`` (default 1) and ``receive()`` its ``receive_type`` (default 0: any),
    so two processes can share one queue in both directions by picking opposite types
    (``send_type=1, receive_type=2`` on one side, the reverse on the other).

    Messages are the kernel's own, with no aioipc framing: a C program with
    ``msgsnd``/``msgrcv`` on the same key reads and writes the same bytes.

    Waiting: a call first tries the no-wait form (``IPC_NOWAIT``); only when that would
    block does it wait on one of aioipc's worker threads (see :mod:`aioipc._core.threads`).
    A receive's worker waits with a zero-size buffer, which the kernel answers with
    E2BIG once a matching message is there, leaving it queued; the task then takes it
    with the no-wait call.

    One task at a time per direction: a second task that calls a receive method while
    another task's receive on the same handle is in progress (or a send while a send
    is) gets :exc:`anyio.BusyResourceError`, as on every aioipc channel. Tasks that
    must receive concurrently (say, with different type selectors) use one handle each
    (:meth:`open` or :meth:`from_id` again: handles are cheap).

    Construct with :meth:`create`, :meth:`open` or :meth:`open_or_create`. Closing a
    handle does not remove the queue (it outlives every process): call :meth:`remove`,
    except for a queue this handle created with ``IPC_PRIVATE``, which ``aclose``
    removes unless ``remove_on_close=False``.
    """

    _kind = "msg"
    _kind_name = "SysV message queue"

    def __init__(
        self,
        key: int,
        qid: int,
        *,
        send_type: int = 1,
        receive_type: int = 0,
        remove_on_close: bool = False,
        fast: Any = None,
    ) -> None:
        SysVObject.__init__(self, key, qid)
        self._send_type = _check_send_type(send_type)
        self._receive_type = _check_selector(receive_type, False)
        self._remove_on_close = remove_on_close
        self._msgmax = read_sysctl(_MSGMAX, 8192)
        self._rbuf = _libc.ReceiveBuffer(self._msgmax)
        # What the worker's zero-size msgrcv writes the type into; one receive waits at
        # a time per handle (_rx_busy), so one buffer serves them all.
        self._wait_buf = _libc.ReceiveBuffer(0)
        self._fast = fast if fast is not None else _fast_handle(key, qid, self._msgmax)
        self._stash: list[Message] = []
        self._jobs = Workers()
        self._rx_busy = Busy("receiving from")
        self._tx_busy = Busy("sending to")
        self._pacer = Pacer()
        self._closed = False

    # -- construction -----------------------------------------------------------------

    @classmethod
    def _get(cls, key: int, flags: int, creating: bool) -> int:
        try:
            return _libc.msgget(key, flags)
        except OSError as exc:
            raise cls._lookup_error(exc, key, creating) from exc

    @classmethod
    def create(
        cls,
        key: int = IPC_PRIVATE,
        *,
        mode: int = 0o600,
        max_bytes: int | None = None,
        send_type: int = 1,
        receive_type: int = 0,
        remove_on_close: bool | None = None,
    ) -> MessageQueue:
        """Create a new queue under ``key`` (``IPC_CREAT|IPC_EXCL``); never waits.

        ``max_bytes`` sets the queue's capacity (``msg_qbytes``; the default is
        ``/proc/sys/kernel/msgmnb``; only root may go above it). ``remove_on_close``
        defaults to True for ``IPC_PRIVATE`` and False otherwise.

        Raises:
            aioipc.IPCExistsError: a queue with this key exists.
            aioipc.IPCPermissionError: ``max_bytes`` is above msgmnb and the caller is not
                privileged.
            ValueError: the key is out of range, ``mode`` is not in 0..0o777, or
                ``max_bytes`` is not in 1..2**64-1 (what ``msg_qbytes`` holds).
            TypeError: one of them is not an int.
        """
        key = check_key(key)
        # Before anything is created: a bad option leaks nothing.
        _check_creation(key, mode, max_bytes)
        _check_send_type(send_type)
        _check_selector(receive_type, False)
        fast = None
        if key == IPC_PRIVATE:
            # sysv_ipc's object is the fast path, and a private queue can only be
            # reached through the object that created it. On failure, the ctypes call
            # below says exactly why.
            with contextlib.suppress(sysv_ipc.Error, OSError, ValueError):
                # IPC_PRIVATE, not None: None makes sysv_ipc pick a random *key*.
                fast = sysv_ipc.MessageQueue(
                    sysv_ipc.IPC_PRIVATE,
                    sysv_ipc.IPC_CREX,
                    mode,
                    read_sysctl(_MSGMAX, 8192),
                )
        qid = fast.id if fast is not None else cls._get(key, IPC_CREAT | IPC_EXCL | mode, True)
        if remove_on_close is None:
            remove_on_close = key == IPC_PRIVATE
        q = cls(
            key,
            qid,
            send_type=send_type,
            receive_type=receive_type,
            remove_on_close=remove_on_close,
            fast=fast,
        )
        if max_bytes is not None:
            try:
                q.max_bytes = max_bytes
            except BaseException:
                q._closed = True
                q._remove_quietly()
                raise
        q._record_created()
        return q

    @classmethod
    def open(cls, key: int, *, send_type: int = 1, receive_type: int = 0) -> MessageQueue:
        """Open the existing queue under ``key``; never waits.

        Raises:
            aioipc.IPCNotFoundError: no queue has this key (the message says if another
                kind of System V object has it).
            ValueError: the key is out of range or IPC_PRIVATE (which always creates).
        """
        key = check_key(key)
        if key == IPC_PRIVATE:
            raise ValueError("IPC_PRIVATE always creates a new queue; use create()")
        qid = cls._get(key, 0, False)
        return cls(key, qid, send_type=send_type, receive_type=receive_type)

    @classmethod
    def open_or_create(
        cls,
        key: int,
        *,
        mode: int = 0o600,
        max_bytes: int | None = None,
        send_type: int = 1,
        receive_type: int = 0,
    ) -> MessageQueue:
        """Open the queue under ``key``, creating it (as :meth:`create`) if there is none.

        ``mode`` and ``max_bytes`` apply only if this call creates the queue, but are
        checked whether it does or not. Raises as :meth:`create` and :meth:`open`.
        """
        key = check_key(key)
        if key == IPC_PRIVATE:
            raise ValueError("IPC_PRIVATE always creates a new queue; use create()")
        _check_creation(key, mode, max_bytes)
        return open_or_create(
            lambda: cls.create(
                key,
                mode=mode,
                max_bytes=max_bytes,
                send_type=send_type,
                receive_type=receive_type,
            ),
            lambda: cls.open(key, send_type=send_type, receive_type=receive_type),
            cls._lookup_error(OSError(errno.EAGAIN, "created and removed repeatedly"), key, True),
        )

    @classmethod
    def from_id(
        cls, qid: int, *, key: int = IPC_PRIVATE, send_type: int = 1, receive_type: int = 0
    ) -> MessageQueue:
        """A handle on the queue with kernel id ``qid`` (how a child reaches a private queue).

        Handles pickle to this, so they can be passed to a ``multiprocessing`` child.

        Raises:
            aioipc.IPCNotFoundError: no queue has this id.
            TypeError, ValueError: ``qid`` is not an int in 0..2**31-1 (a kernel id), or
                ``key`` is not a key.
        """
        qid = cls._check_id(qid)
        key = check_key(key)
        try:
            _libc.msgctl_stat(qid)
        except OSError as exc:
            raise cls._lookup_error(exc, key, False, ipc_id=qid) from exc
        return cls(key, qid, send_type=send_type, receive_type=receive_type)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _reopen,
            (self._id, self._key, self._send_type, self._receive_type),
        )

    # -- attributes -------------------------------------------------------------------

    def _stat(self) -> _libc.MsqidDs:
        return _libc.msgctl_stat(self._id)

    def _ds(self) -> _libc.MsqidDs:
        ds: _libc.MsqidDs = self._checked_stat()
        return ds

    def _set(self, **fields: int) -> None:
        ds = self._ds()
        self._apply_perm(ds, fields)
        try:
            _libc.msgctl(self._id, _libc.IPC_SET, ds)
        except OSError as exc:
            raise self._error(exc, _set_errors(fields)) from exc

    @property
    def current_messages(self) -> int:
        """Messages in the queue now."""
        return int(self._ds().qnum)

    @property
    def current_bytes(self) -> int:
        """Bytes of message text in the queue now."""
        return int(self._ds().cbytes)

    @property
    def max_bytes(self) -> int:
        """Capacity in bytes (``msg_qbytes``); settable (above msgmnb only by root)."""
        return int(self._ds().qbytes)

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._set(qbytes=_check_max_bytes(value, self._what))

    @property
    def max_message_size(self) -> int:
        """The largest message: ``/proc/sys/kernel/msgmax`` when this handle was opened."""
        return self._msgmax

    @property
    def last_send_pid(self) -> int:
        return int(self._ds().lspid)

    @property
    def last_receive_pid(self) -> int:
        return int(self._ds().lrpid)

    @property
    def last_send_time(self) -> float | None:
        """Epoch seconds of the last ``msgsnd``, None if never."""
        return float(self._ds().stime) or None

    @property
    def last_receive_time(self) -> float | None:
        return float(self._ds().rtime) or None

    @property
    def last_change_time(self) -> float:
        return float(self._ds().ctime)

    @property
    def send_type(self) -> int:
        """The type ``send(data)`` gives a message when no ``type`` is passed."""
        return self._send_type

    @property
    def receive_type(self) -> int:
        """The selector ``receive()`` uses when no ``type`` is passed."""
        return self._receive_type

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            IPCAttribute.mechanism: lambda: "sysv-mq",
            IPCAttribute.key: lambda: self._key,
            IPCAttribute.ipc_id: lambda: self._id,
            IPCAttribute.framed: lambda: False,
            IPCAttribute.max_message_size: lambda: self._msgmax,
        }

    # -- sending ----------------------------------------------------------------------

    def _send_error(self, exc: OSError, size: int) -> Exception:
        # EINVAL from msgsnd on a queue still there: the message is over its max_bytes.
        def over_qbytes(exc: OSError, what: str) -> Exception | None:
            removed = self._removed(exc, what)
            if removed is not None:
                return removed
            try:
                qbytes = int(self._stat().qbytes)
            except OSError:
                return None
            if size > qbytes:
                return MessageTooLargeError(size, qbytes, f"max_bytes (msg_qbytes) of {what}")
            return None

        return self._error(exc, {errno.EINVAL: over_qbytes, errno.EACCES: self._mode_denied})

    def _prepare(self, item: object, type: int | None) -> tuple[int, bytes]:
        self._check_open()
        data = message_bytes(item)
        if len(data) > self._msgmax:
            raise MessageTooLargeError(len(data), self._msgmax, _MSGMAX)
        return (self._send_type if type is None else _check_send_type(type)), data

    def _try_send(self, mtype: int, data: bytes) -> bool:
        """One no-wait msgsnd; False if the queue is full."""
        fast = self._fast
        if fast is not None:
            # sysv_ipc's call costs about half of a ctypes call; it loses the errno, so
            # on any failure but "full" the ctypes call below repeats it and says why.
            try:
                fast.send(data, False, mtype)
                return True
            except sysv_ipc.BusyError:
                return False
            except (sysv_ipc.Error, OSError, ValueError, OverflowError):
                pass
        try:
            _libc.msgsnd(self._id, mtype, data, IPC_NOWAIT)
            return True
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return False
            raise self._send_error(exc, len(data)) from exc

    def _check_fits(self, size: int) -> None:
        """A message bigger than the queue's capacity would wait for ever (the kernel says
        only "full"); called when a send finds the queue full, so it costs nothing else."""
        try:
            qbytes = int(self._stat().qbytes)
        except OSError as exc:
            raise self._error(exc) from exc
        if size > qbytes:
            raise MessageTooLargeError(size, qbytes, f"max_bytes (msg_qbytes) of {self._what}")

    def send_nowait(self, item: bytes, *, type: int | None = None) -> None:
        """Send one message without waiting.

        Raises:
            anyio.WouldBlock: the queue is full (nothing was sent).
            anyio.ClosedResourceError: this handle is closed.
            anyio.BrokenResourceError: the queue was removed.
            aioipc.MessageTooLargeError: over msgmax, or over the queue's max_bytes.
            aioipc.IPCPermissionError: the queue's mode does not let us write.
            TypeError, ValueError: ``item`` is not bytes, or ``type`` is not > 0.
        """
        mtype, data = self._prepare(item, type)
        if not self._try_send(mtype, data):
            self._check_fits(len(data))
            raise WouldBlock

    async def send(self, item: bytes, *, type: int | None = None) -> None:
        """Send one message of ``type`` (default: the handle's ``send_type``).

        Waits while the queue is full (a worker thread, only then).

        Raises:
            as :meth:`send_nowait`, except WouldBlock.
            anyio.BusyResourceError: another task is sending on this handle.

        Cancellation: a cancelled send did not enqueue the message, unless the kernel had
        taken it already when the cancellation arrived; then the cancellation exception
        carries a note saying the message was sent.
        """
        # The busy guard inlined (Busy's own __enter__/__exit__ are two Python calls):
        # 0.4 us of the 3.5 us a send and a receive cost together, measured here with
        # 200-message bursts in one process; see the sysv-mq 64B row of bench_queues.
        busy = self._tx_busy
        if busy.held:
            raise BusyResourceError("sending to")
        busy.held = True
        try:
            fast = self._fast
            pacer = self._pacer
            if fast is not None and type is None and item.__class__ is bytes and not self._closed:
                # The common call in as few Python steps as the contract allows: the
                # engine's fast path inlined (bench_queues' sysv-mq 64B row measures it).
                if len(item) > self._msgmax:
                    raise MessageTooLargeError(len(item), self._msgmax, _MSGMAX)
                mtype, data = self._send_type, item
                if pacer.due():
                    await anyio.lowlevel.checkpoint()
                try:
                    fast.send(data, False, mtype)
                    return
                except sysv_ipc.BusyError:
                    pass
                except (sysv_ipc.Error, OSError, ValueError, OverflowError):
                    if self._try_send(mtype, data):  # repeats it, and says why it failed
                        return
            else:
                mtype, data = self._prepare(item, type)
                if pacer.due():
                    await anyio.lowlevel.checkpoint()
                if self._try_send(mtype, data):
                    return
            self._check_fits(len(data))
            await self._send_waiting(mtype, data)
        finally:
            busy.held = False

    async def _send_waiting(self, mtype: int, data: bytes) -> None:
        """The queue was full: wait on a worker thread, whose blocking msgsnd sends the
        message itself (so once it returns, nothing is sent again)."""
        qid = self._id
        sent = False

        def attempt() -> bool | Again:
            return True if sent or self._try_send(mtype, data) else AGAIN

        def blocking(job: Job[bool]) -> bool:
            job.call(partial(_libc.msgsnd, qid, mtype, data, 0))
            return True

        async def wait() -> None:
            nonlocal sent
            try:
                await run_in_worker(
                    blocking,
                    workers=self._jobs,
                    before_start=self._check_open,
                    poll=lambda: True if self._try_send(mtype, data) else None,
                    late_note=f"aioipc: the message was sent to {self._what} before the "
                    "cancellation took effect",
                )
            except Interrupted:
                raise ClosedResourceError(f"{self._what}: the handle was closed") from None
            except OSError as exc:
                raise self._send_error(exc, len(data)) from exc
            sent = True

        await wait_until(attempt, wait, self._pacer, paced=False, tried=True)

    async def send_eof(self) -> None:
        """Not supported: a message queue has no end-of-stream marker.

        Raises:
            NotImplementedError: always. Agree on a last message with the peer instead.
        """
        raise NotImplementedError(
            f"{self._what}: a message queue has no end of stream; send an agreed last message"
        )

    # -- receiving --------------------------------------------------------------------

    def _take_stashed(self, selector: int, flags: int, size: int) -> Message | None:
        for i, (mtype, data) in enumerate(self._stash):
            if _matches(mtype, selector, bool(flags & MSG_EXCEPT)):
                if len(data) > size:
                    if not flags & MSG_NOERROR:
                        # As the kernel would: refuse, and keep the message.
                        raise MessageTooLargeError(len(data), size, f"max_size of {self._what}")
                    data = data[:size]
                del self._stash[i]
                return mtype, data
        return None

    def _try_receive(self, selector: int, flags: int, size: int) -> Message | None:
        stashed = self._take_stashed(selector, flags, size) if self._stash else None
        if stashed is not None:
            return stashed
        fast = self._fast
        if fast is not None and flags == 0 and size == self._msgmax:
            try:
                data, mtype = fast.receive(False, selector)
                return mtype, data
            except sysv_ipc.BusyError:
                return None
            except (sysv_ipc.Error, OSError, ValueError, OverflowError):
                pass  # the ctypes call below repeats it and says why
        try:
            return _libc.msgrcv(self._id, self._rbuf, size, selector, flags | IPC_NOWAIT)
        except OSError as exc:
            if exc.errno == errno.ENOMSG:
                return None
            raise self._receive_error(exc, size) from exc

    def _receive_error(self, exc: OSError, size: int) -> Exception:
        def too_large(exc: OSError, what: str) -> Exception:
            return MessageTooLargeError(
                size + 1,
                size,
                f"the receive size of {what} (pass truncate=True to cut it; "
                "the message stays in the queue)",
                at_least=True,
            )

        return self._error(exc, {errno.E2BIG: too_large, errno.EACCES: self._mode_denied})

    def _receive_args(
        self, type: int | None, except_type: bool, truncate: bool, max_size: int | None
    ) -> tuple[int, int, int]:
        self._check_open()
        selector = self._receive_type if type is None else _check_selector(type, except_type)
        flags = (MSG_EXCEPT if except_type else 0) | (MSG_NOERROR if truncate else 0)
        if max_size is None:
            return selector, flags, self._msgmax
        # An int, checked here: anything else would reach msgrcv through ctypes.
        size = check_int(
            max_size,
            "max_size",
            minimum=0,
            maximum=self._msgmax,
            what=self._what,
            unit="bytes (msgmax)",
        )
        return selector, flags, size

    def receive_message_nowait(
        self,
        type: int | None = None,
        *,
        except_type: bool = False,
        truncate: bool = False,
        max_size: int | None = None,
    ) -> Message:
        """Take one message without waiting; return ``(type, data)``.

        ``type`` (default: the handle's ``receive_type``) selects as ``msgrcv`` does:
        0 the first message, t > 0 the first of type
        t (with ``except_type=True``: the first *not* of type t), t < 0 the first of the
        lowest type <= |t|. ``max_size`` caps the size (default msgmax); a longer message
        raises MessageTooLargeError and stays queued, unless ``truncate=True`` cuts it.

        Raises:
            anyio.WouldBlock: no message matches.
            anyio.ClosedResourceError: the handle is closed.
            anyio.BrokenResourceError: the queue was removed.
            aioipc.MessageTooLargeError: the message is larger than ``max_size``.
            aioipc.IPCPermissionError: the queue's mode does not let us read.
            TypeError, ValueError: ``type`` or ``max_size`` is not an int in its range
                (``max_size``: 0..msgmax).
        """
        selector, flags, size = self._receive_args(type, except_type, truncate, max_size)
        msg = self._try_receive(selector, flags, size)
        if msg is None:
            raise WouldBlock
        return msg

    async def receive_message(
        self,
        type: int | None = None,
        *,
        except_type: bool = False,
        truncate: bool = False,
        max_size: int | None = None,
    ) -> Message:
        """Take one message, waiting for one that matches; return ``(type, data)``.

        Selection as :meth:`receive_message_nowait`.

        Raises:
            anyio.BusyResourceError: another task is receiving on this handle.
            anyio.ClosedResourceError: the handle is closed (also while waiting).
            anyio.BrokenResourceError: the queue was removed (also while waiting).
            aioipc.MessageTooLargeError: the message is larger than ``max_size``.
            aioipc.IPCPermissionError: the queue's mode does not let us read.
            TypeError, ValueError: ``type`` or ``max_size`` is not an int in its range
                (``max_size``: 0..msgmax).

        Cancellation: a cancelled receive took nothing from the queue, even if the
        message arrived just as the cancellation did: the worker thread only waits until
        a matching message is there (leaving it queued) and the task takes it itself, so
        the message stays in the kernel for any receiver, whatever happens to this
        process. The one exception is a zero-length message, which the wait itself takes:
        if the receive was cancelled meanwhile it is put back into the queue at once
        (behind the messages queued after it), or, only if the queue is full at that
        instant, kept for this handle's next matching receive (and put back on close).
        """
        with self._rx_busy:
            selector, flags, size = self._receive_args(type, except_type, truncate, max_size)
            return await self._receive_waiting(selector, flags, size, tried=False)

    async def _receive_waiting(
        self, selector: int, flags: int, size: int, *, tried: bool
    ) -> Message:
        """The engine's loop over the no-wait receive and a worker thread's wait (the
        caller holds ``_rx_busy``)."""
        qid = self._id
        wait_buf = self._wait_buf
        # Never MSG_NOERROR here: it would take the message, cut to nothing.
        wait_flags = flags & MSG_EXCEPT
        got: list[Message] = []

        def attempt() -> Message | Again:
            # Taken here, on the event loop's side, and returned with no await in
            # between: nothing can cancel the task while it holds the message. (After a
            # wake-up another process may have taken it first: then we wait again.)
            if got:
                return got.pop()
            msg = self._try_receive(selector, flags, size)
            return AGAIN if msg is None else msg

        def blocking(job: Job[Message | None]) -> Message | None:
            # A zero-size buffer: the kernel says E2BIG when a matching message is there
            # and leaves it in the queue, so the worker waits without taking anything. A
            # cancelled receive then took nothing, even if this process dies right after.
            return job.call(partial(_libc.msgwait, qid, wait_buf, selector, wait_flags))

        async def wait() -> None:
            try:
                msg = await run_in_worker(
                    blocking,
                    workers=self._jobs,
                    on_late_result=self._put_back,
                    before_start=self._check_open,
                    poll=lambda: self._try_receive(selector, flags, size),
                )
            except Interrupted:
                raise ClosedResourceError(f"{self._what}: the handle was closed") from None
            except OSError as exc:
                raise self._receive_error(exc, size) from exc
            if msg is not None:
                got.append(msg)  # a zero-length message the wait took, or a polled one

        return await wait_until(attempt, wait, self._pacer, paced=not tried, tried=tried)

    def _put_back(self, msg: Message | None) -> None:
        """A cancelled receive's worker finished anyway; ``msg`` is what it took.

        Only a zero-length message is ever taken by the wait. It goes back into the
        kernel at once (behind what was queued after it), so that it survives this
        process; only if the queue is full right now does the handle keep it for its
        next matching receive (and try again on close).
        """
        if msg is None:
            return  # the worker saw a message and left it where it was
        try:
            _libc.msgsnd(self._id, msg[0], msg[1], IPC_NOWAIT)
        except OSError as exc:
            if exc.errno in (errno.EIDRM, errno.EINVAL) and self._gone():
                return  # the queue was removed, with every message in it
            self._stash.append(msg)

    async def receive(
        self,
        *,
        type: int | None = None,
        except_type: bool = False,
        truncate: bool = False,
        max_size: int | None = None,
    ) -> bytes:
        """Receive the data of the next message matching ``type`` (default: the handle's
        ``receive_type``). As :meth:`receive_message` without the type.

        Raises and cancellation: as :meth:`receive_message`. A queue never ends, so
        ``async for`` runs until the handle is closed or the queue removed.
        """
        fast = self._fast
        if (
            fast is not None
            and type is None
            and not (except_type or truncate or self._stash or self._closed)
            and max_size is None
        ):
            # The common call, in as few Python steps as the contract allows: the engine's
            # fast path inlined, since this path is most of the per-message cost once the
            # kernel call is sysv_ipc's (bench_queues' sysv-mq 64B row measures it).
            # The busy guard inlined, as in send() (same measurement).
            busy = self._rx_busy
            if busy.held:
                raise BusyResourceError("receiving from")
            busy.held = True
            try:
                if self._pacer.due():
                    await anyio.lowlevel.checkpoint()
                try:
                    return fast.receive(False, self._receive_type)[0]  # type: ignore[no-any-return]
                except sysv_ipc.BusyError:
                    msg = await self._receive_waiting(
                        self._receive_type, 0, self._msgmax, tried=True
                    )
                    return msg[1]
                except (sysv_ipc.Error, OSError, ValueError, OverflowError):
                    pass  # the general path repeats the call and says exactly what is wrong
            finally:
                busy.held = False
        selector = self._receive_type if type is None else type
        return (
            await self.receive_message(
                selector, except_type=except_type, truncate=truncate, max_size=max_size
            )
        )[1]

    def receive_nowait(
        self,
        *,
        type: int | None = None,
        except_type: bool = False,
        truncate: bool = False,
        max_size: int | None = None,
    ) -> bytes:
        """As :meth:`receive_message_nowait`, returning the data only."""
        selector = self._receive_type if type is None else type
        return self.receive_message_nowait(
            selector, except_type=except_type, truncate=truncate, max_size=max_size
        )[1]

    # -- lifecycle --------------------------------------------------------------------

    def _rmid(self) -> None:
        _libc.msgctl(self._id, _libc.IPC_RMID)

    def _before_close(self) -> None:
        self._return_stash()

    def _return_stash(self) -> None:
        # Only zero-length messages get here (see _put_back): a queue is full for them
        # when it holds as many messages as max_bytes allows (msg_qnum < msg_qbytes).
        for mtype, data in self._stash:
            try:
                _libc.msgsnd(self._id, mtype, data, IPC_NOWAIT)
            except OSError as exc:
                why = (
                    "the queue holds as many messages as its max_bytes allows"
                    if exc.errno == errno.EAGAIN
                    else exc.strerror
                )
                warnings.warn(
                    f"{self._what}: a zero-length message of type {mtype} that a cancelled "
                    f"receive had taken could not be put back ({why}); it is lost",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._stash.clear()

    # -- peeking (added for `aioipc recv --peek`; self-contained on purpose) ----------

    def peek_message_nowait(self, index: int = 0) -> Message:
        """Copy the message at position ``index`` of the queue (0: the oldest) without
        taking it; return ``(type, data)``. Never waits.

        This is ``msgrcv`` with ``MSG_COPY``: the queue, its message count and its last
        receiver (``lrpid``) stay as they are. Positions count every message, whatever
        its type. Other processes may take or add messages between two calls, so
        reading positions 0, 1, 2... one after another can skip or repeat a message
        that others take meanwhile. A message this handle holds back for its next
        receive (see :meth:`receive_message`) is not in the queue and not seen.

        Raises:
            anyio.WouldBlock: the queue holds no message at ``index`` (it has fewer).
            anyio.ClosedResourceError: the handle is closed.
            anyio.BrokenResourceError: the queue was removed.
            aioipc.IPCPermissionError: the queue's mode does not let us read.
            aioipc.IPCSystemError: the kernel cannot copy a message (ENOSYS: ``MSG_COPY``
                needs a kernel built with CONFIG_CHECKPOINT_RESTORE).
            ValueError: ``index`` is negative or beyond a C long.
        """
        check_int(index, "index", minimum=0, maximum=LONG_MAX, what=self._what)
        self._check_open()
        try:
            return _libc.msgrcv(
                self._id,
                _libc.ReceiveBuffer(self._msgmax),
                self._msgmax,
                index,
                MSG_COPY | IPC_NOWAIT,
            )
        except OSError as exc:
            if exc.errno == errno.ENOMSG:
                raise WouldBlock from None
            raise self._error(exc, {**_PEEK_ERRORS, errno.EACCES: self._mode_denied}) from exc


def _no_msg_copy(exc: OSError, what: str) -> Exception:
    return IPCSystemError(
        errno.ENOSYS,
        f"{what}: this kernel cannot copy a message without taking it "
        "(msgrcv MSG_COPY needs CONFIG_CHECKPOINT_RESTORE)",
    )


_PEEK_ERRORS: Overrides = {errno.ENOSYS: _no_msg_copy}


def _set_errors(fields: dict[str, int]) -> Overrides | None:
    """IPC_SET's EPERM, when it raises max_bytes: the sysctl only privilege may pass."""
    if "qbytes" not in fields:
        return None
    qbytes = fields["qbytes"]

    def above_msgmnb(exc: OSError, what: str) -> Exception:
        limit = read_sysctl(_MSGMNB, 16384)
        return IPCPermissionError(
            errno.EPERM,
            f"{what}: max_bytes={qbytes} is above {_MSGMNB} = {limit}"
            ", which only a privileged process (CAP_SYS_RESOURCE) may exceed",
        )

    return {errno.EPERM: above_msgmnb}


def _fast_handle(key: int, qid: int, msgmax: int) -> Any:
    """sysv_ipc's object for the queue, if it can be had (keyed queues), else None."""
    if key == IPC_PRIVATE:
        return None
    try:
        q = sysv_ipc.MessageQueue(key, 0, 0o600, msgmax)
    except (sysv_ipc.Error, OSError, ValueError, OverflowError):
        return None
    return q if q.id == qid else None


def _reopen(qid: int, key: int, send_type: int, receive_type: int) -> MessageQueue:
    return MessageQueue.from_id(qid, key=key, send_type=send_type, receive_type=receive_type)
