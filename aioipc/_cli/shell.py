"""``aioipc send`` and ``aioipc recv``: talk to any channel from the shell.

Both open the channel with :func:`aioipc.connect` / :func:`aioipc.listen`, so every URL
of docs/urls.md works. Messages are bytes: stdin is read as bytes, and ``recv`` prints
each message as UTF-8 (undecodable bytes as ``\\xNN``) on its own line, or with ``--raw``
writes the bytes as they are.

Errors are one line on stderr (``aioipc: error: ...``) and an exit code: 2 for bad usage
or a bad URL, 1 for a runtime error (missing object, permission, the peer gone), 130 for
Ctrl-C (quietly) and 141 when our stdout is closed (``aioipc recv ... | head -1``).
``recv --timeout`` that runs out exits 124, as timeout(1) does, quietly.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)
from anyio.lowlevel import current_token

from .. import fifo, pubsub, unix
from .._core.wait import AGAIN, apoll_until
from ..abc import IPCAttribute
from ..errors import (
    IPCConnectionRefusedError,
    IPCError,
    IPCNotFoundError,
    LaggedError,
    ProtocolError,
)
from ..url import Address, FifoAddress, SysVQueueAddress, connect, listen, parse_url
from .terminal import error as _error
from .terminal import say as _say

__all__ = ["UsageError", "run_recv", "run_send"]

#: lines: a message per line, without its newline; whole: all of stdin, less one final
#: newline; exact: all of stdin as it is; chunks: the bytes as they arrive.
StdinMode = Literal["lines", "whole", "exact", "chunks"]

#: The most ``send --raw`` puts in one message (less if the channel's limit is lower).
RAW_CHUNK = 64 * 1024
#: How often ``recv --follow`` looks for the next sender of a shared-memory ring (a ring
#: has no event for "a sender attached").
_RING_FOLLOW_POLL = 0.05
_STDOUT_CLOSED_EXIT = 141  # 128 + SIGPIPE, what a shell shows for `yes | head -1`
_TIMED_OUT_EXIT = 124  # what timeout(1) exits with when the time ran out


class UsageError(Exception):
    """Bad usage: reported as one line, exit code 2."""


class _StdoutClosed(Exception):
    """Whoever reads our stdout went away."""


class _TimedOut(Exception):
    """``recv --timeout`` ran out before recv ended by itself."""


# -- errors -------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """One readable line for ``exc`` (no errno prefix, no repr)."""
    if isinstance(exc, OSError) and exc.strerror:
        # aioipc's own errors put the object's name in strerror already.
        if isinstance(exc, IPCError) or not exc.filename:
            return exc.strerror
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    if text:
        return " ".join(text.split())
    if isinstance(exc, BrokenResourceError):
        return "the channel broke: the peer is gone"
    if isinstance(exc, ClosedResourceError):
        return "the channel was closed"
    if isinstance(exc, BusyResourceError):
        return "the channel is in use"
    return type(exc).__name__


def _run(main: Callable[[], Awaitable[None]]) -> int:
    """Run ``main`` under anyio; every expected failure becomes a line and an exit code."""
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        return 130
    except _TimedOut:
        return _TIMED_OUT_EXIT
    except _StdoutClosed:
        # Point stdout at /dev/null so the interpreter's last flush does not complain.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return _STDOUT_CLOSED_EXIT
    except UsageError as exc:
        _error(str(exc))
        return 2
    except IPCError as exc:  # before ValueError: MessageTooLargeError is both
        _error(_describe(exc))
        return 1
    except ValueError as exc:  # a malformed URL, a bad name or option value
        _error(_describe(exc))
        return 2
    except (BrokenResourceError, ClosedResourceError, BusyResourceError, OSError) as exc:
        _error(_describe(exc))
        return 1
    return 0


def _check_url(url: str) -> Address:
    addr = parse_url(url)  # ValueError -> exit 2
    if addr.codec is not None:
        raise UsageError(
            f"{url!r}: the aioipc command sends and receives bytes; drop codec={addr.codec}"
        )
    return addr


# -- send -------------------------------------------------------------------------------


async def _connect(url: str, wait: float) -> Any:
    """``connect(url)``, retried while the object does not exist yet or nobody listens,
    for up to ``wait`` seconds (the kernel has no event for either)."""
    deadline = anyio.current_time() + wait

    async def attempt() -> Any:
        try:
            return await connect(url)
        except (IPCNotFoundError, IPCConnectionRefusedError):
            if anyio.current_time() >= deadline:
                raise
            return AGAIN

    return await apoll_until(attempt, first=0.005, most=0.1)


def _read_stdin(mode: StdinMode, chunk: int) -> Iterator[bytes]:
    # os.read on the descriptor, not sys.stdin.buffer: a daemon thread blocked inside a
    # BufferedReader holds its lock, and the interpreter aborts at exit if it cannot take it.
    fd = sys.stdin.fileno()
    if mode == "chunks":
        while data := os.read(fd, chunk):
            yield data
        return
    pending = bytearray()
    while data := os.read(fd, RAW_CHUNK):
        pending += data
        if mode == "lines" and b"\n" in data:  # only then: a long line is not re-scanned
            *lines, rest = pending.split(b"\n")
            yield from map(bytes, lines)
            pending = rest
    if mode == "whole" and pending.endswith(b"\n"):
        del pending[-1]
    if mode != "lines" or pending:  # a last line without its newline is a line too
        yield bytes(pending)


@contextlib.asynccontextmanager
async def _stdin_messages(mode: StdinMode, chunk: int) -> AsyncIterator[AsyncIterator[bytes]]:
    """The messages of stdin, read by a daemon thread so that neither the event loop nor
    Ctrl-C waits on a blocking read (and a process exiting early is not held up by it)."""
    tx, rx = anyio.create_memory_object_stream[tuple[bytes | None, BaseException | None]](16)
    token = current_token()

    def reader() -> None:
        try:
            try:
                for item in _read_stdin(mode, chunk):
                    anyio.from_thread.run(tx.send, (item, None), token=token)
            except Exception as exc:  # reading stdin failed: the sending task raises it
                anyio.from_thread.run(tx.send, (None, exc), token=token)
                return
            anyio.from_thread.run(tx.send, (None, None), token=token)
        except BaseException:  # the loop is gone or stopped listening: nobody to tell
            return

    async def messages() -> AsyncIterator[bytes]:
        async for item, exc in rx:
            if exc is not None:
                raise exc
            if item is None:
                return
            yield item

    threading.Thread(target=reader, name="aioipc stdin reader", daemon=True).start()
    with rx, tx:
        yield messages()


async def send(url: str, data: bytes | None, mode: StdinMode, wait: float) -> None:
    """Send ``data`` as one message, or stdin (``data`` None) as ``mode`` says."""
    _check_url(url)
    chan = await _connect(url, wait)
    async with chan:
        if data is not None:
            await chan.send(data)
            return
        chunk = min(RAW_CHUNK, chan.extra(IPCAttribute.max_message_size, RAW_CHUNK))
        async with _stdin_messages(mode, max(chunk, 1)) as messages:
            async for message in messages:
                await chan.send(message)


def run_send(url: str, data: str | None, whole: bool, raw: bool, wait: float) -> int:
    """``aioipc send``: returns the exit code."""
    payload: bytes | None = None
    if data is not None and data != "-":
        payload = os.fsencode(data)  # the argument's bytes exactly as the shell gave them
        if whole:
            _error("--whole applies to stdin (DATA is one message anyway)")
            return 2
    elif sys.stdin is None:
        _error("stdin is closed: give DATA")
        return 2
    elif data is None and sys.stdin.isatty():
        _error("nothing to send: give DATA, pipe data into stdin, or '-' to type lines")
        return 2
    modes: dict[tuple[bool, bool], StdinMode] = {
        (False, False): "lines",
        (False, True): "chunks",
        (True, False): "whole",
        (True, True): "exact",
    }
    mode = modes[whole, raw]
    return _run(lambda: send(url, payload, mode, wait))


# -- recv -------------------------------------------------------------------------------


class _Output:
    def __init__(self, raw: bool) -> None:
        self._raw = raw
        self._out = sys.stdout.buffer

    def write(self, message: bytes) -> None:
        if not self._raw:
            message = message.decode("utf-8", "backslashreplace").encode("utf-8") + b"\n"
        try:
            self._out.write(message)
            self._out.flush()
        except BrokenPipeError:
            raise _StdoutClosed from None


def _with_option(url: str, key: str, value: str) -> str:
    """``url`` with option ``key`` set to ``value`` (replacing it if it is there: a URL
    may name an option once)."""
    parts = urlsplit(url)
    kept = [item for item in parts.query.split("&") if item and item.split("=")[0] != key]
    return urlunsplit(parts._replace(query="&".join([*kept, f"{key}={value}"])))


async def _pump(
    chan: Any, out: _Output, left: int | None, *, ring_follow: bool = False
) -> int | None:
    """Print messages until end of stream or until ``left`` reaches 0; return ``left``."""

    async def receive() -> Any:
        try:
            return await chan.receive()
        except (EndOfStream, BrokenResourceError):
            if not ring_follow:
                raise
            # The ring's sender closed (or died): poll for the next one to attach (a ring
            # has no event for "a sender attached" that a receiver could wait on).
            return AGAIN

    while left is None or left > 0:
        try:
            message = await apoll_until(receive, first=_RING_FOLLOW_POLL, most=_RING_FOLLOW_POLL)
        except EndOfStream:
            return left
        except LaggedError as exc:
            # A drop_oldest subscriber fell behind: say so, and go on from the oldest
            # message the topic retains (as the subscriber itself does).
            _say(f"aioipc: warning: {_describe(exc)}", sys.stderr)
            continue
        out.write(message)
        if left is not None:
            left -= 1
    return left


def _remove(addr: Address, obj: Any) -> None:
    """``--unlink``: remove the queue, FIFO, ring or topic (a unix listener removes its
    own)."""
    with contextlib.suppress(FileNotFoundError, IPCNotFoundError, BrokenResourceError):
        if addr.scheme == "mq" or addr.scheme == "shm":
            obj.unlink()
        elif addr.scheme == "pubsub":
            pubsub.unlink(addr.path)
        elif addr.scheme == "sysvmq":
            obj.remove()
        elif addr.scheme == "fifo":
            fifo.unlink(addr.path)


#: Why ``recv --peek`` cannot be honest on each scheme but sysvmq.
_NO_PEEK = {
    "mq": "a POSIX queue cannot show a message without taking it (mq_receive always "
    "removes it); only sysvmq:// queues can be peeked at",
    "fifo": "reading a FIFO takes the bytes out of it; nothing can look without taking",
    "unix": "recv on unix:// is a listener: messages wait in each client's connection, "
    "not at the address, so there is nothing queued to look at",
    "unix+dgram": "recv binds a new socket at the address, and nothing is queued on a "
    "socket before it exists",
    "shm": "a ring's messages can be read only by its one receiver, which frees each as "
    "it reads it",
    "pubsub": "recv on a topic takes nothing from anyone (each subscriber reads from its "
    "own cursor), so plain recv already leaves every message for the others; add "
    "?start=oldest to see what the topic retains",
}
_NO_PEEK["unix+stream"] = _NO_PEEK["unix+seqpacket"] = _NO_PEEK["unix"]


def _check_peek(addr: Address, follow: bool, unlink: bool) -> None:
    if addr.scheme in _NO_PEEK:
        raise UsageError(f"--peek: {_NO_PEEK[addr.scheme]}")
    for option, given in (("--follow", follow), ("--unlink", unlink)):
        if given:
            raise UsageError(
                f"--peek shows what is queued now and leaves it there; {option} does not go with it"
            )


async def _peek(queue: Any, selector: int, out: _Output, count: int | None) -> None:
    """``--peek``: print the messages of a SysV queue, oldest first, leaving them queued
    (only those ``selector``, the URL's ``receive_type``, selects: what recv would take)."""
    from .._core.sysv_mq import _matches

    index = printed = 0
    while count is None or printed < count:
        await anyio.lowlevel.checkpoint()  # a long queue still ends at --timeout
        try:
            mtype, data = queue.peek_message_nowait(index)
        except WouldBlock:  # no message at that position: the end of the queue
            return
        index += 1
        if _matches(mtype, selector, False):
            out.write(data)
            printed += 1


async def _serve(listener: Any, out: _Output, count: int | None, follow: bool) -> None:
    """One client after another (without ``follow``, only the first)."""
    left = count
    while left is None or left > 0:
        chan = await listener.accept()
        async with chan:
            try:
                left = await _pump(chan, out, left)
            except (BrokenResourceError, ProtocolError):  # the client died
                if not follow:
                    raise
        if not follow:
            return


async def recv(
    url: str,
    count: int | None,
    follow: bool,
    raw: bool,
    unlink: bool,
    time_limit: float | None = None,
    peek: bool = False,
) -> None:
    """Print what arrives at ``url`` (see the module docstring); ``time_limit``: the most
    seconds it all may take (``--timeout``; raises _TimedOut when they run out first)."""
    addr = _check_url(url)
    if peek:
        _check_peek(addr, follow, unlink)
    # The objects are opened (which never waits) and closed outside the deadline's scope,
    # so that running out of time cannot interrupt a close; a cancelled receive takes
    # nothing from a queue (a SysV worker's late message goes back at close).
    deadline = math.inf if time_limit is None else anyio.current_time() + time_limit
    out = _Output(raw)
    if peek:
        queue = await connect(url)  # opens it; creates it only if the URL says create=1
        async with queue:
            with anyio.CancelScope(deadline=deadline) as scope:
                assert isinstance(addr, SysVQueueAddress)  # _check_peek let only sysvmq by
                await _peek(queue, addr.receive_type, out, count)
    else:
        if follow and isinstance(addr, FifoAddress) and not addr.persistent:
            url = _with_option(url, "persistent", "1")
        obj = await listen(url)
        if isinstance(obj, unix.UnixListener):
            async with obj:
                with anyio.CancelScope(deadline=deadline) as scope:
                    await _serve(obj, out, count, follow)
        else:
            async with obj:
                try:
                    with anyio.CancelScope(deadline=deadline) as scope:
                        ring_follow = follow and addr.scheme == "shm"
                        await _pump(obj, out, count, ring_follow=ring_follow)
                finally:
                    if unlink:
                        _remove(addr, obj)
    if scope.cancelled_caught:
        raise _TimedOut


def run_recv(
    url: str,
    count: int | None,
    follow: bool,
    raw: bool,
    unlink: bool,
    timeout: float | None = None,
    peek: bool = False,
) -> int:
    """``aioipc recv``: returns the exit code."""
    return _run(lambda: recv(url, count, follow, raw, unlink, timeout, peek))
