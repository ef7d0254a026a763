"""**Channel conformance suite.** Every aioipc mechanism promises the same Channel contract
(``docs/channels.md``): an anyio object stream of ``bytes`` with ``send_nowait`` and
``receive_nowait``, ``aclose``, ``async for``, typed attributes, the cancellation
promises, and anyio's exceptions for concurrent use, closed handles and end of stream.
:func:`check_one_way_channel` and :func:`check_two_way_channel` check one implementation
against that contract, on the real kernel objects, in the spirit of trio's
``check_one_way_stream``. Hand them an async callable that opens a *fresh, connected
pair* each time it is called; the suite calls it once per check (or a few times) and
closes everything it opened::

    import aioipc
    from aioipc.testing import check_one_way_channel, check_two_way_channel

    @pytest.mark.asyncio
    async def test_pipe_is_a_channel() -> None:
        async def open_pair():
            return aioipc.pipe(max_message_size=1 << 20)   # (sender, receiver)

        await check_one_way_channel(open_pair, max_message_size=1 << 20)

    @pytest.mark.asyncio
    async def test_unix_stream_is_a_channel(tmp_path) -> None:
        async with await aioipc.unix.listen(tmp_path / "s.sock") as listener:

            async def open_pair():
                client = await aioipc.unix.connect(tmp_path / "s.sock")
                return client, await listener.accept()     # (one end, other end)

            await check_two_way_channel(open_pair)

The keyword arguments say what the mechanism promises, so one suite fits them all:
``max_message_size`` (the limit the channel enforces, if you want it checked),
``boundaries=False`` for raw byte channels (then only the byte sequence is compared,
not how it is cut into receives), ``eof_on_sender_close`` / ``eof`` for mechanisms
with an end of stream (datagram sockets and message queues have none) and
``broken_on_receiver_close`` / ``broken_on_close`` for those where a send to a closed
peer fails. The suite runs under any anyio backend (asyncio, trio).

Two rules every aioipc channel follows are checked too. The busy rule
(``busy_receive``, ``busy_send``): a second concurrent ``receive()`` (or ``send()``) on
one handle raises BusyResourceError; it never queues behind the first. The checkpoint
rule (``pacing_receive``, ``pacing_send``): a loop of calls that complete without
waiting still lets another task on the event loop run, at least once in every
:data:`PACE_WITHIN` calls (YIELD_EVERY plus slack; twice that on trio, whose scheduler
runs ready tasks in batches of random order).

Every check runs even when an earlier one failed; then :exc:`ChannelCheckError` lists
each broken promise by check name, and ``failures`` holds the original exceptions.
``skip`` takes check names (:data:`ONE_WAY_CHECKS`, :data:`TWO_WAY_CHECKS`) to leave out.
No check sleeps to synchronise: a test waits on the channel itself, or on
``anyio.wait_all_tasks_blocked()`` to know that another task is parked in a call. Every
wait is bounded by ``step_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias, cast

import anyio
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
    TypedAttributeLookupError,
    TypedAttributeSet,
    WouldBlock,
    typed_attribute,
)
from anyio.abc import AsyncResource, ObjectReceiveStream, ObjectSendStream, TaskGroup
from anyio.lowlevel import checkpoint
from anyio.streams.stapled import StapledObjectStream

from .._core.wait import YIELD_EVERY, running_asyncio_loop
from ..abc import Channel, IPCAttribute, ReceiveChannel, SendChannel
from ..errors import MessageTooLargeError

__all__ = [
    "ONE_WAY_CHECKS",
    "PACE_WITHIN",
    "TWO_WAY_CHECKS",
    "ChannelCheckError",
    "OpenOneWay",
    "OpenTwoWay",
    "check_one_way_channel",
    "check_two_way_channel",
]


#: ``async def open_pair() -> (sender, receiver)``: a fresh, connected one-way pair.
OpenOneWay: TypeAlias = Callable[[], Awaitable[tuple[SendChannel, ReceiveChannel]]]
#: ``async def open_pair() -> (a, b)``: a fresh pair of connected two-way channels.
OpenTwoWay: TypeAlias = Callable[[], Awaitable[tuple[Channel, Channel]]]

_KIB = 1024
_MIB = 1024 * _KIB
#: Sizes every channel must carry whole (those above max_message_size are left out).
_SIZES = (0, 1, 1000, 100_000)
#: The "large" message, when max_message_size allows it.
_LARGE = _MIB
#: A message of exactly max_message_size is checked when the limit is at most this.
_EXACT_LIMIT_UP_TO = 8 * _MIB
#: send_nowait() fills the channel with messages of this size (or max_message_size).
_FILL_SIZE = 64 * _KIB
#: ... and gives up looking for backpressure after this many bytes.
_FILL_LIMIT = 64 * _MIB
_BURST = 1000
#: The pacing checks fail if this many calls in a row that completed without waiting
#: never let another task run: the engine checkpoints every YIELD_EVERY-th such call, and
#: the slack leaves room for a wrapper around one. (On trio, twice this: see _pace_bound.)
PACE_WITHIN = YIELD_EVERY + 4
#: Calls each pacing check makes: several windows of the widest bound.
_PACE_CALLS = 8 * YIELD_EVERY


class ChannelCheckError(AssertionError):
    """A channel broke a promise of the Channel contract.

    The message names each failed check and what broke. ``failures`` holds
    ``(check name, original exception)`` pairs; the first is also the ``__cause__``.
    """

    def __init__(self, message: str, failures: Sequence[tuple[str, BaseException]] = ()) -> None:
        super().__init__(message)
        self.failures: list[tuple[str, BaseException]] = list(failures)


class _Probe(TypedAttributeSet):
    """An attribute no channel provides, to check ``extra()``'s default handling."""

    never_provided: int = typed_attribute()


def _fail(message: str) -> NoReturn:
    raise ChannelCheckError(message)


def _require(condition: bool, message: str | Callable[[], str]) -> None:
    """Fail with ``message`` (called only then, if it is a function) unless ``condition``."""
    if not condition:
        raise ChannelCheckError(message if isinstance(message, str) else message())


def _payload(size: int, seed: int) -> bytes:
    """``size`` bytes whose content depends on ``seed``: a swapped, truncated or spliced
    message never compares equal to another one."""
    block = bytes((seed * 131 + i * 7) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


def _describe(data: object) -> str:
    if isinstance(data, (bytes, bytearray)):
        head = bytes(data[:24])
        return f"{len(data)} bytes {head!r}{'...' if len(data) > 24 else ''}"
    return f"{type(data).__name__} {data!r:.60}"


def _difference(got: bytes, want: bytes) -> str:
    offset = next(
        (i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y),
        min(len(got), len(want)),
    )
    return f"got {_describe(got)}, expected {_describe(want)} (they first differ at byte {offset})"


def _outcome_text(value: object, error: BaseException | None) -> str:
    if error is not None:
        return f"{type(error).__name__}: {error}"
    return f"it returned {_describe(value)}"


@dataclass
class _Outcome:
    """What a call run in another task did: returned a value, or raised."""

    done: bool = False
    value: object = None
    error: BaseException | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self, limit: float) -> None:
        """Wait (at most ``limit`` seconds) for the call to finish."""
        with anyio.move_on_after(limit):
            await self.finished.wait()

    def text(self) -> str:
        if not self.done:
            return "it had not finished"
        return _outcome_text(self.value, self.error)


async def _park_receive(tg: TaskGroup, rx: ObjectReceiveStream[bytes]) -> _Outcome:
    """Start ``rx.receive()`` in ``tg``; return once it waits, as it must on an empty channel."""
    outcome = _Outcome()
    tg.start_soon(_capture, outcome, rx.receive)
    await anyio.wait_all_tasks_blocked()
    _require(not outcome.done, f"receive() on an empty channel did not wait: {outcome.text()}")
    return outcome


async def _capture(outcome: _Outcome, call: Callable[[], Awaitable[object]]) -> None:
    try:
        outcome.value = await call()
    except Exception as exc:
        outcome.error = exc
    outcome.done = True
    outcome.finished.set()


def _nowait_sender(chan: object) -> Callable[[bytes], None]:
    method = getattr(chan, "send_nowait", None)
    if not callable(method):
        _fail(f"{type(chan).__name__} has no send_nowait() (the Channel contract has one)")
    return cast(Callable[[bytes], None], method)


def _nowait_receiver(chan: object) -> Callable[[], bytes]:
    method = getattr(chan, "receive_nowait", None)
    if not callable(method):
        _fail(f"{type(chan).__name__} has no receive_nowait() (the Channel contract has one)")
    return cast(Callable[[], bytes], method)


async def _close(limit: float, *resources: AsyncResource) -> None:
    """Close every resource (even if the check failed or was cancelled), bounded in time."""
    error: BaseException | None = None
    for resource in resources:
        try:
            with anyio.fail_after(limit, shield=True):
                await resource.aclose()
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise ChannelCheckError(
            f"aclose() raised {type(error).__name__}: {error} (aclose must never raise)"
        ) from error


@dataclass
class _Suite:
    """The options of one run and the helpers every check uses."""

    open_pair: OpenOneWay
    max_message_size: int | None
    boundaries: bool
    eof: bool
    broken_on_receiver_close: bool
    timeout: float

    def fits(self, size: int) -> bool:
        return self.max_message_size is None or size <= self.max_message_size

    def sizes(self) -> list[int]:
        """0, 1, 1000, 100_000, 1 MiB and max_message_size itself, where they fit."""
        sizes = [s for s in (*_SIZES, _LARGE) if self.fits(s) and (s or self.boundaries)]
        limit = self.max_message_size
        if limit is not None and limit not in sizes and limit <= _EXACT_LIMIT_UP_TO:
            sizes.append(limit)
        return sizes

    def big(self, size: int = _LARGE) -> int:
        """``size``, or the largest message the channel takes if that is less."""
        return size if self.max_message_size is None else min(size, self.max_message_size)

    @asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[SendChannel, ReceiveChannel]]:
        """A fresh pair from the user's ``open_pair``, closed afterwards whatever happens."""
        with anyio.fail_after(self.timeout):
            pair = await self.open_pair()
        if not (isinstance(pair, tuple) and len(pair) == 2):
            _fail(f"open_pair() must return a (sender, receiver) tuple, not {pair!r:.80}")
        tx, rx = pair
        try:
            yield tx, rx
        except BaseException:
            with contextlib.suppress(Exception):  # the check's own failure says more
                await _close(self.timeout, tx, rx)
            raise
        await _close(self.timeout, tx, rx)

    async def receive(self, rx: ObjectReceiveStream[bytes], what: str) -> bytes:
        """One ``receive()``, failing with ``what`` on end of stream, timeout or non-bytes."""
        with anyio.move_on_after(self.timeout):
            try:
                got = await rx.receive()
            except EndOfStream:
                _fail(f"{what}: receive() raised EndOfStream, but the sender is still open")
            if type(got) is not bytes:
                _fail(f"{what}: receive() returned {type(got).__name__}, not bytes")
            return got
        _fail(f"{what}: nothing arrived within {self.timeout} s")

    async def send(self, tx: ObjectSendStream[bytes], message: bytes, what: str) -> None:
        """One ``send()`` that must complete within the step timeout."""
        with anyio.move_on_after(self.timeout):
            await tx.send(message)
            return
        _fail(f"{what}: send({_describe(message)}) still waited after {self.timeout} s")

    async def expect(
        self, rx: ObjectReceiveStream[bytes], expected: Sequence[bytes], what: str
    ) -> None:
        """Receive ``expected`` in order: message by message, or (``boundaries=False``)
        as one byte sequence however it is cut."""
        if self.boundaries:
            for i, want in enumerate(expected, 1):
                where = f"{what}: message {i} of {len(expected)}"
                got = await self.receive(rx, where)
                if got != want:
                    _fail(f"{where} arrived wrong: {_difference(got, want)}")
            return
        want = b"".join(expected)
        buffer = bytearray()
        while len(buffer) < len(want):
            buffer += await self.receive(rx, f"{what}: byte {len(buffer)} of {len(want)}")
        if buffer != want:
            _fail(f"{what}: the bytes arrived wrong: {_difference(bytes(buffer), want)}")

    async def raises(
        self, error: type[BaseException], what: str, call: Callable[[], Awaitable[object]]
    ) -> None:
        """``await call()`` must raise ``error`` (and not hang)."""
        with anyio.move_on_after(self.timeout):
            try:
                value = await call()
            except error:
                return
            except Exception as exc:
                _fail(f"{what}: expected {error.__name__}, got {_outcome_text(None, exc)}")
            _fail(f"{what}: expected {error.__name__}, but {_outcome_text(value, None)}")
        _fail(f"{what}: expected {error.__name__}, but it was still waiting after {self.timeout} s")

    @staticmethod
    def raises_now(error: type[BaseException], what: str, call: Callable[[], object]) -> None:
        """``call()`` (a synchronous ``*_nowait``) must raise ``error``."""
        try:
            value = call()
        except error:
            return
        except Exception as exc:
            _fail(f"{what}: expected {error.__name__}, got {_outcome_text(None, exc)}")
        _fail(f"{what}: expected {error.__name__}, but {_outcome_text(value, None)}")

    async def fill(self, tx: SendChannel) -> list[bytes] | None:
        """``send_nowait()`` until WouldBlock; the messages sent, or None if it never blocked."""
        send_nowait = _nowait_sender(tx)
        size = self.big(_FILL_SIZE)
        sent: list[bytes] = []
        while len(sent) * size < _FILL_LIMIT:
            message = _payload(size, len(sent))
            try:
                send_nowait(message)
            except WouldBlock:
                return sent
            sent.append(message)
        return None


async def _send_all(tx: ObjectSendStream[bytes], messages: Iterable[bytes]) -> None:
    for message in messages:
        await tx.send(message)


# ----------------------------------------------------------------------- one-way checks


async def _check_attributes(s: _Suite) -> None:
    """Typed attributes: ``extra(IPCAttribute.mechanism)`` is a non-empty str on both
    ends; ``fd`` and ``max_message_size``, where offered, are ints; ``extra()`` of an
    attribute the channel lacks raises TypedAttributeLookupError, or returns the
    default given."""
    async with s.pair() as (tx, rx):
        for end, chan in (("sender", tx), ("receiver", rx)):
            try:
                mechanism = chan.extra(IPCAttribute.mechanism)
            except TypedAttributeLookupError:
                _fail(f"the {end} has no IPCAttribute.mechanism")
            _require(
                isinstance(mechanism, str) and bool(mechanism),
                f"the {end}'s IPCAttribute.mechanism is {mechanism!r}, not a non-empty str",
            )
            fd = chan.extra(IPCAttribute.fd, None)
            _require(
                fd is None or (type(fd) is int and fd >= 0),
                f"the {end}'s IPCAttribute.fd is {fd!r}, not a file descriptor number",
            )
            limit = chan.extra(IPCAttribute.max_message_size, None)
            _require(
                limit is None or (type(limit) is int and limit > 0),
                f"the {end}'s IPCAttribute.max_message_size is {limit!r}, not a positive int",
            )
            sentinel = -12345
            got = chan.extra(_Probe.never_provided, sentinel)
            _require(
                got == sentinel,
                f"the {end}'s extra(attr, default) returned {got!r} for an attribute it "
                "does not have, instead of the default",
            )
            s.raises_now(
                TypedAttributeLookupError,
                f"the {end}'s extra() of an attribute it does not have",
                functools.partial(chan.extra, _Probe.never_provided),
            )


async def _check_sizes(s: _Suite) -> None:
    """Messages of 0, 1, 1000, 100_000 bytes and a large one (1 MiB and exactly
    max_message_size, where allowed) arrive whole and in order: one at a time, then all
    sent at once by another task."""
    sizes = s.sizes()
    async with s.pair() as (tx, rx):
        for i, size in enumerate(sizes):
            message = _payload(size, i)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_send_all, tx, [message])
                await s.expect(rx, [message], f"a lone message of {size} bytes")
        messages = [_payload(size, 100 + i) for i, size in enumerate(sizes + sizes[::-1])]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send_all, tx, messages)
            await s.expect(rx, messages, f"{len(messages)} messages of sizes {sizes} sent at once")


async def _check_burst(s: _Suite) -> None:
    """1000 numbered small messages sent in a burst by one task arrive in order."""
    messages = [b"message %d" % i for i in range(_BURST)]
    async with s.pair() as (tx, rx), anyio.create_task_group() as tg:
        tg.start_soon(_send_all, tx, messages)
        await s.expect(rx, messages, f"a burst of {_BURST} numbered messages")


async def _check_send_nowait(s: _Suite) -> None:
    """``send_nowait()`` on a fresh channel completes at once (no WouldBlock), a
    ``send()`` after it completes too, and the messages arrive, the empty one included."""
    async with s.pair() as (tx, rx):
        send_nowait = _nowait_sender(tx)
        messages = [b"sent without waiting", b"", b"and again", b""]
        for i, message in enumerate(messages):
            try:
                send_nowait(message)
            except WouldBlock:
                before = f" that had only taken {messages[:i]}" if i else ""
                _fail(f"send_nowait({message!r}) raised WouldBlock on a fresh channel{before}")
        await anyio.wait_all_tasks_blocked()  # let a background flush run, if any
        last = b"sent by send() after send_nowait()"
        await s.send(tx, last, f"after send_nowait() of {messages}")
        messages.append(last)
        await s.expect(
            rx, [m for m in messages if m or s.boundaries], "messages sent by send_nowait()"
        )


async def _check_receive_nowait(s: _Suite) -> None:
    """``receive_nowait()`` on an empty channel raises WouldBlock; once a message was
    sent (and the sender's tasks are idle), it returns that message; then WouldBlock
    again."""
    async with s.pair() as (tx, rx):
        receive_nowait = _nowait_receiver(rx)
        s.raises_now(WouldBlock, "receive_nowait() on an empty channel", receive_nowait)
        message = b"there now"
        await tx.send(message)
        await anyio.wait_all_tasks_blocked()  # a sender that writes in the background is done
        got = b""
        while len(got) < len(message):
            try:
                got += receive_nowait()
            except WouldBlock:
                _fail(
                    "receive_nowait() raised WouldBlock although a message was sent "
                    f"(received so far: {got!r})"
                )
            if s.boundaries:
                break
        _require(
            got == message,
            lambda: f"receive_nowait() after a send: {_difference(got, message)}",
        )
        s.raises_now(WouldBlock, "receive_nowait() once the channel is empty again", receive_nowait)


async def _check_end_of_stream(s: _Suite) -> None:
    """When the sender closes, the receiver gets every message sent before it, then
    end of stream: ``async for`` ends cleanly, and ``receive()`` and
    ``receive_nowait()`` keep raising EndOfStream after that."""
    if not s.eof:
        return
    async with s.pair() as (tx, rx):
        messages = [b"first", _payload(s.big(100_000), 1), b"", b"last words"]
        messages = [m for m in messages if m or s.boundaries]

        async def send_then_close() -> None:
            await _send_all(tx, messages)
            await tx.aclose()

        got: list[bytes] = []
        with anyio.move_on_after(s.timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_then_close)
                async for message in rx:
                    got.append(message)
        if scope.cancelled_caught:
            _fail(
                "`async for` over the receiver did not end within "
                f"{s.timeout} s of the sender's aclose() (got {len(got)} messages)"
            )
        if s.boundaries:
            _require(
                got == messages,
                lambda: (
                    f"`async for` up to end of stream got {[_describe(m) for m in got]}, "
                    f"expected {[_describe(m) for m in messages]}"
                ),
            )
        else:
            joined, want = b"".join(got), b"".join(messages)
            _require(
                joined == want,
                lambda: f"`async for` up to end of stream: {_difference(joined, want)}",
            )
        await s.raises(EndOfStream, "receive() after end of stream was reported", rx.receive)
        s.raises_now(
            EndOfStream, "receive_nowait() after end of stream was reported", _nowait_receiver(rx)
        )


async def _check_end_of_stream_wakes_receiver(s: _Suite) -> None:
    """A ``receive()`` waiting on an empty channel raises EndOfStream when the sender
    closes."""
    if not s.eof:
        return
    async with s.pair() as (tx, rx):
        async with anyio.create_task_group() as tg:
            outcome = await _park_receive(tg, rx)
            await tx.aclose()
            await outcome.wait(s.timeout)
            tg.cancel_scope.cancel()
        _require(
            isinstance(outcome.error, EndOfStream),
            "a receive() waiting when the sender closed: expected EndOfStream, but "
            + outcome.text(),
        )


async def _check_closed_sender(s: _Suite) -> None:
    """After the sender's ``aclose()``: a message sent before it still arrives;
    ``send()`` and ``send_nowait()`` raise ClosedResourceError; a second ``aclose()`` is
    fine. Leaving ``async with sender`` closes it too."""
    async with s.pair() as (tx, rx):
        await tx.send(b"sent before aclose")
        await tx.aclose()
        await s.raises(
            ClosedResourceError,
            "send() after the sender's aclose()",
            functools.partial(tx.send, b"after"),
        )
        s.raises_now(
            ClosedResourceError,
            "send_nowait() after the sender's aclose()",
            functools.partial(_nowait_sender(tx), b"after"),
        )
        try:
            await tx.aclose()
        except Exception as exc:
            _fail(f"a second aclose() of the sender raised {type(exc).__name__}: {exc}")
        await s.expect(rx, [b"sent before aclose"], "a message sent just before aclose()")
    async with s.pair() as (tx, rx):
        async with tx:
            pass
        await s.raises(
            ClosedResourceError,
            "send() after leaving `async with sender`",
            functools.partial(tx.send, b"after"),
        )


async def _check_closed_receiver(s: _Suite) -> None:
    """After the receiver's ``aclose()``, ``receive()`` and ``receive_nowait()`` raise
    ClosedResourceError, even if messages were waiting (read already, or still in the
    kernel) or end of stream had been seen; a second ``aclose()`` is fine. Leaving
    ``async with receiver`` closes it too."""
    async with s.pair() as (tx, rx):
        await _send_all(tx, [b"first", b"second", b"third"])
        await anyio.wait_all_tasks_blocked()
        await s.receive(rx, "the first of three messages")
        await rx.aclose()
        await s.raises(
            ClosedResourceError,
            "receive() after the receiver's aclose(), with messages still waiting",
            rx.receive,
        )
        s.raises_now(
            ClosedResourceError,
            "receive_nowait() after the receiver's aclose(), with messages still waiting",
            _nowait_receiver(rx),
        )
        try:
            await rx.aclose()
        except Exception as exc:
            _fail(f"a second aclose() of the receiver raised {type(exc).__name__}: {exc}")
    async with s.pair() as (tx, rx):
        async with rx:
            pass
        await s.raises(
            ClosedResourceError, "receive() after leaving `async with receiver`", rx.receive
        )
    if s.eof:
        async with s.pair() as (tx, rx):
            await tx.aclose()
            await s.raises(EndOfStream, "receive() once the sender closed", rx.receive)
            await rx.aclose()
            await s.raises(
                ClosedResourceError,
                "receive() after the receiver's aclose(), once it had seen end of stream",
                rx.receive,
            )
            s.raises_now(
                ClosedResourceError,
                "receive_nowait() after the receiver's aclose(), once it had seen end of stream",
                _nowait_receiver(rx),
            )


async def _check_aclose_wakes_receiver(s: _Suite) -> None:
    """``aclose()`` of the receiver wakes a task waiting in ``receive()`` with
    ClosedResourceError."""
    async with s.pair() as (_, rx):
        async with anyio.create_task_group() as tg:
            outcome = await _park_receive(tg, rx)
            await rx.aclose()
            await outcome.wait(s.timeout)
            tg.cancel_scope.cancel()
        _require(
            isinstance(outcome.error, ClosedResourceError),
            "a receive() waiting when the receiver was closed: expected ClosedResourceError, "
            "but " + outcome.text(),
        )


async def _check_busy_receive(s: _Suite) -> None:
    """A second ``receive()`` while another task's ``receive()`` waits raises
    BusyResourceError (it does not queue behind the first), and the waiting one still
    gets the next message."""
    async with s.pair() as (tx, rx):
        second = _Outcome()
        async with anyio.create_task_group() as tg:
            outcome = await _park_receive(tg, rx)
            tg.start_soon(_capture, second, rx.receive)
            await anyio.wait_all_tasks_blocked()
            if not second.done:
                # It queued behind the first: feed both, so that neither waits for ever.
                await tx.send(b"for the first receiver")
                await tx.send(b"for the second receiver")
                await second.wait(s.timeout)
                await outcome.wait(s.timeout)
                tg.cancel_scope.cancel()
                _fail(
                    "a second receive() while another task's receive() waits: expected "
                    "BusyResourceError, but it waited (queued behind the first)"
                )
            _require(
                isinstance(second.error, BusyResourceError),
                "a second receive() while another task's receive() waits: expected "
                "BusyResourceError, but " + second.text(),
            )
            await tx.send(b"for the first receiver")
        _require(
            outcome.value == b"for the first receiver",
            "the first receive(), after a second one was refused: " + outcome.text(),
        )


async def _check_cancelled_receive(s: _Suite) -> None:
    """A cancelled ``receive()`` loses nothing: cancelled while waiting on an empty
    channel, the next ``receive()`` gets the next message; cancelled again and again while
    a large message streams in, every message still arrives whole, in order."""
    async with s.pair() as (tx, rx):
        async with anyio.create_task_group() as tg:
            outcome = await _park_receive(tg, rx)
            tg.cancel_scope.cancel()
        _require(not outcome.done, f"a cancelled receive() finished anyway: {outcome.text()}")
        await tx.send(b"after the cancelled receive")
        await s.expect(rx, [b"after the cancelled receive"], "the receive() after a cancelled one")

        big = _payload(s.big(), 7)
        messages = [big, b"right after the big one", big[::-1], b"the end"]
        got: list[bytes] = []

        async def receive_into(scope: anyio.CancelScope) -> None:
            with scope:
                got.append(await rx.receive())

        async with anyio.create_task_group() as sender:
            sender.start_soon(_send_all, tx, messages)
            # Cancel receives at varying points while the sender feeds the channel.
            for attempt in range(40):
                scope = anyio.CancelScope()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_into, scope)
                    for _ in range(attempt % 5 + 1):
                        await checkpoint()
                    scope.cancel()
            if s.boundaries:
                for i, message in enumerate(got):
                    if i >= len(messages) or message != messages[i]:
                        _fail(
                            "a receive() that completed while others were being cancelled "
                            f"returned {_describe(message)} as message {i + 1}, expected "
                            + (_describe(messages[i]) if i < len(messages) else "nothing")
                        )
                await s.expect(
                    rx, messages[len(got) :], "the messages after the cancelled receives"
                )
            else:
                want, received = b"".join(messages), b"".join(got)
                _require(
                    want.startswith(received),
                    lambda: (
                        "bytes received while receives were being cancelled: "
                        + _difference(received, want[: len(received)])
                    ),
                )
                await s.expect(
                    rx, [want[len(received) :]], "the bytes after the cancelled receives"
                )


async def _check_message_too_large(s: _Suite) -> None:
    """A message of max_message_size + 1 bytes is refused by ``send()`` and
    ``send_nowait()`` with aioipc.MessageTooLargeError, nothing of it arrives, and the
    channel keeps working."""
    limit = s.max_message_size
    if limit is None:
        return
    async with s.pair() as (tx, rx):
        too_big = bytes(limit + 1)
        await s.raises(
            MessageTooLargeError,
            f"send() of max_message_size + 1 = {limit + 1} bytes",
            functools.partial(tx.send, too_big),
        )
        s.raises_now(
            MessageTooLargeError,
            f"send_nowait() of max_message_size + 1 = {limit + 1} bytes",
            functools.partial(_nowait_sender(tx), too_big),
        )
        del too_big
        messages = [b"still works after a refused message"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send_all, tx, messages)
            await s.expect(rx, messages, "a message sent after MessageTooLargeError")


async def _check_not_bytes(s: _Suite) -> None:
    """``send()`` and ``send_nowait()`` of something that is not bytes (a str, None, an
    int) raise TypeError, and the channel keeps working."""
    async with s.pair() as (tx, rx):
        send_nowait = _nowait_sender(tx)
        bad: Any
        for bad in ("text", None, 42):
            await s.raises(TypeError, f"send({bad!r})", functools.partial(tx.send, bad))
            s.raises_now(TypeError, f"send_nowait({bad!r})", functools.partial(send_nowait, bad))
        await tx.send(b"still works")
        await s.expect(rx, [b"still works"], "a message sent after the TypeErrors")


async def _check_receiver_closed(s: _Suite) -> None:
    """Once the receiver is closed, ``send()`` raises BrokenResourceError (at once, or
    after what was already committed) and keeps raising it."""
    if not s.broken_on_receiver_close:
        return
    async with s.pair() as (tx, rx):
        await rx.aclose()
        for attempt in range(1, 65):
            try:
                with anyio.fail_after(s.timeout):
                    await tx.send(b"into the void")
            except BrokenResourceError:
                break
            except TimeoutError:
                _fail(f"send() number {attempt} after the receiver closed hung")
            except Exception as exc:
                _fail(
                    f"send() after the receiver closed: expected BrokenResourceError, got "
                    f"{type(exc).__name__}: {exc}"
                )
        else:
            _fail("send() succeeded 64 times after the receiver was closed")
        await s.raises(
            BrokenResourceError,
            "send() after an earlier send() raised BrokenResourceError",
            functools.partial(tx.send, b"again"),
        )


async def _check_backpressure(s: _Suite) -> None:
    """Backpressure: once ``send_nowait()`` reports WouldBlock, a ``send()`` waits
    for room; once the receiver drains the channel every message arrives in order and
    the waiting ``send()`` completes. (Skipped for a channel that never reports
    WouldBlock.)"""
    async with s.pair() as (tx, rx):
        sent = await s.fill(tx)
        if sent is None:
            return
        last = _payload(s.big(_FILL_SIZE), 9999)
        outcome = _Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_capture, outcome, functools.partial(tx.send, last))
            await anyio.wait_all_tasks_blocked()
            await s.expect(rx, [*sent, last], f"{len(sent) + 1} messages that filled the channel")
        _require(
            outcome.done and outcome.error is None,
            "the send() that waited for room: " + outcome.text(),
        )


async def _check_busy_send(s: _Suite) -> None:
    """A second ``send()`` while another task's ``send()`` waits for room raises
    BusyResourceError (it does not queue behind the first), nothing of it arrives, and
    the waiting one still completes once the receiver drains the channel. (Skipped for a
    channel that never reports WouldBlock.)"""
    async with s.pair() as (tx, rx):
        sent = await s.fill(tx)
        if sent is None:
            return
        last = _payload(s.big(_FILL_SIZE), 9999)
        outcome = _Outcome()
        second = _Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_capture, outcome, functools.partial(tx.send, last))
            await anyio.wait_all_tasks_blocked()
            if outcome.done:  # the channel found room after all: nobody waits to be busy
                await s.expect(rx, [*sent, last], f"{len(sent) + 1} messages")
                return
            tg.start_soon(_capture, second, functools.partial(tx.send, b"second sender"))
            await anyio.wait_all_tasks_blocked()
            if not second.done:
                # It queued behind the first: drain (in whatever order the two waiting
                # sends got in), so that neither waits for ever.
                for i in range(len(sent) + 2):
                    await s.receive(rx, f"draining message {i + 1} of {len(sent) + 2}")
                await second.wait(s.timeout)
                tg.cancel_scope.cancel()
                _fail(
                    "a second send() while another task's send() waits for room: expected "
                    "BusyResourceError, but it waited (queued behind the first)"
                )
            _require(
                isinstance(second.error, BusyResourceError),
                "a second send() while another task's send() waits for room: expected "
                "BusyResourceError, but " + second.text(),
            )
            await s.expect(rx, [*sent, last], f"{len(sent) + 1} messages that filled the channel")
        _require(
            outcome.done and outcome.error is None,
            "the send() that waited for room, after a second one was refused: " + outcome.text(),
        )


async def _check_aclose_wakes_sender(s: _Suite) -> None:
    """``aclose()`` of the sender wakes a task whose ``send()`` waits for room with
    ClosedResourceError. (Skipped for a channel that never reports WouldBlock.)"""
    async with s.pair() as (tx, _):
        sent = await s.fill(tx)
        if sent is None:
            return
        outcome = _Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                _capture, outcome, functools.partial(tx.send, _payload(s.big(_FILL_SIZE), 1))
            )
            await anyio.wait_all_tasks_blocked()
            if outcome.done:  # the channel found room after all; nothing to wake
                return
            with anyio.fail_after(s.timeout):
                await tx.aclose()
            await outcome.wait(s.timeout)
            tg.cancel_scope.cancel()
        _require(
            isinstance(outcome.error, ClosedResourceError),
            "a send() waiting for room when the sender was closed: expected "
            "ClosedResourceError, but " + outcome.text(),
        )


async def _check_memory_stream_pump(s: _Suite) -> None:
    """A task pumping the receiver into an anyio memory object stream (``async for`` and
    ``send``) delivers every message in order; with end of stream, the pump ends when
    the sender closes."""
    messages = [b"pumped %d" % i for i in range(100)]
    async with s.pair() as (tx, rx):
        mem_tx, mem_rx = anyio.create_memory_object_stream[bytes](4)

        async def pump() -> None:
            async with mem_tx:
                async for message in rx:
                    await mem_tx.send(message)

        async def produce() -> None:
            await _send_all(tx, messages)
            if s.eof:
                await tx.aclose()

        async with mem_rx, anyio.create_task_group() as tg:
            tg.start_soon(pump)
            tg.start_soon(produce)
            if s.eof:
                got: list[bytes] = []
                with anyio.move_on_after(s.timeout) as scope:
                    got = [message async for message in mem_rx]
                if scope.cancelled_caught:
                    _fail(f"the pump did not end within {s.timeout} s of the sender's aclose()")
                if s.boundaries:
                    _require(got == messages, f"the pump delivered {len(got)} messages wrong")
                else:
                    joined, want = b"".join(got), b"".join(messages)
                    _require(joined == want, lambda: "the pump: " + _difference(joined, want))
            else:
                await s.expect(mem_rx, messages, "messages through the memory-stream pump")
                tg.cancel_scope.cancel()


async def _check_stapled_loopback(s: _Suite) -> None:
    """``StapledObjectStream(sender, receiver)`` is a loopback two-way stream: what it
    sends comes back from its ``receive()``, its attributes are the channel's; its
    ``send_eof()`` closes the sender (so its ``receive()`` then ends, with end of
    stream); its ``aclose()`` closes both."""
    async with s.pair() as (tx, rx):
        stapled = StapledObjectStream(tx, rx)
        mechanism = stapled.extra(IPCAttribute.mechanism, None)
        _require(
            isinstance(mechanism, str) and bool(mechanism),
            f"IPCAttribute.mechanism through the staple is {mechanism!r}",
        )
        messages = [b"round", b"trip"]
        await _send_all(stapled, messages)
        await s.expect(stapled, messages, "messages through StapledObjectStream")
        if s.eof:
            await stapled.send_eof()
            await s.raises(EndOfStream, "receive() after the staple's send_eof()", stapled.receive)
        await stapled.aclose()
        await s.raises(
            ClosedResourceError,
            "send() on the sender after the staple's aclose()",
            functools.partial(tx.send, b"closed"),
        )
        await s.raises(
            ClosedResourceError, "receive() on the receiver after the staple's aclose()", rx.receive
        )


class _Ticker:
    """Another task on the same event loop: it counts how often it got to run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await checkpoint()
            self.ticks += 1


def _pace_bound() -> int:
    """How many calls in a row may complete without another task running.

    asyncio runs ready tasks in order, so the other task runs at every checkpoint of the
    loop: fewer than PACE_WITHIN calls in a row. trio runs them in batches, in a random
    order: the other task may run just before one checkpoint and next just after the
    following one, so twice that (any backend but asyncio is given that)."""
    return PACE_WITHIN if running_asyncio_loop() is not None else 2 * PACE_WITHIN


async def _paced(
    s: _Suite,
    what: str,
    measured: Callable[[], Awaitable[object]],
    other: Callable[[], Awaitable[object]],
) -> None:
    """Call ``other()`` then ``measured()``, :data:`_PACE_CALLS` times, with a
    :class:`_Ticker` beside them; fail if as many calls of ``measured`` in a row as
    :func:`_pace_bound` allows all completed without the ticker running during them."""
    ticker = _Ticker()
    bound = _pace_bound()
    in_a_row = longest = 0
    with anyio.fail_after(s.timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            # Its first run only starts it: wait until it counts.
            while ticker.ticks < 2:
                await checkpoint()
            for _ in range(_PACE_CALLS):
                await other()
                before = ticker.ticks
                await measured()
                in_a_row = 0 if ticker.ticks != before else in_a_row + 1
                longest = max(longest, in_a_row)
            tg.cancel_scope.cancel()
    _require(
        longest < bound,
        lambda: (
            f"{what}: {longest} calls in a row completed without letting another task on "
            f"the event loop run (fewer than {bound} may: a call that completes without "
            f"waiting must checkpoint at least every {YIELD_EVERY}th time)"
        ),
    )


async def _check_pacing_receive(s: _Suite) -> None:
    """A ``receive()`` loop on a channel that always has data (the same task sends one
    message with ``send_nowait()`` before each ``receive()``) lets another task on the
    event loop run at least once in every PACE_WITHIN calls: a call that completes
    without waiting is still a checkpoint every YIELD_EVERY-th time."""
    async with s.pair() as (tx, rx):
        send_nowait = _nowait_sender(tx)

        async def feed() -> None:
            # Synchronous: only the receive() can let the other task run.
            send_nowait(b"paced")

        async def receive() -> None:
            await s.receive(rx, "a receive() on a channel that has data")

        await _paced(s, "receive() on a channel that always has data", receive, feed)


async def _check_pacing_send(s: _Suite) -> None:
    """A ``send()`` loop on a channel that always has room (the same task takes what
    arrived with ``receive_nowait()`` before each ``send()``) lets another task on the
    event loop run at least once in every PACE_WITHIN calls: a call that completes
    without waiting is still a checkpoint every YIELD_EVERY-th time."""
    async with s.pair() as (tx, rx):
        receive_nowait = _nowait_receiver(rx)

        async def drain() -> None:
            # Synchronous: only the send() can let the other task run. What a sender
            # still flushes in the background is taken on a later turn.
            with contextlib.suppress(WouldBlock):
                while True:
                    receive_nowait()

        async def send() -> None:
            await s.send(tx, b"paced", "a send() on a channel that has room")

        await _paced(s, "send() on a channel that always has room", send, drain)


_Check: TypeAlias = Callable[[_Suite], Awaitable[None]]

_ONE_WAY: dict[str, _Check] = {
    "attributes": _check_attributes,
    "sizes": _check_sizes,
    "burst": _check_burst,
    "send_nowait": _check_send_nowait,
    "receive_nowait": _check_receive_nowait,
    "end_of_stream": _check_end_of_stream,
    "end_of_stream_wakes_receiver": _check_end_of_stream_wakes_receiver,
    "closed_sender": _check_closed_sender,
    "closed_receiver": _check_closed_receiver,
    "aclose_wakes_receiver": _check_aclose_wakes_receiver,
    "busy_receive": _check_busy_receive,
    "cancelled_receive": _check_cancelled_receive,
    "message_too_large": _check_message_too_large,
    "not_bytes": _check_not_bytes,
    "receiver_closed": _check_receiver_closed,
    "backpressure": _check_backpressure,
    "busy_send": _check_busy_send,
    "aclose_wakes_sender": _check_aclose_wakes_sender,
    "memory_stream_pump": _check_memory_stream_pump,
    "stapled_loopback": _check_stapled_loopback,
    "pacing_receive": _check_pacing_receive,
    "pacing_send": _check_pacing_send,
}


# ----------------------------------------------------------------------- two-way checks


@dataclass
class _TwoWay:
    open_pair: OpenTwoWay
    one_way: _Suite  # the options and helpers; its open_pair is unused here

    @asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Channel, Channel]]:
        with anyio.fail_after(self.one_way.timeout):
            pair = await self.open_pair()
        if not (isinstance(pair, tuple) and len(pair) == 2):
            _fail(f"open_pair() must return a tuple of two channels, not {pair!r:.80}")
        a, b = pair
        try:
            yield a, b
        except BaseException:
            with contextlib.suppress(Exception):  # the check's own failure says more
                await _close(self.one_way.timeout, a, b)
            raise
        await _close(self.one_way.timeout, a, b)


async def _check_duplex(t: _TwoWay) -> None:
    """Both ends send at the same time (large messages and a burst, each way) without
    deadlock, and each end receives the other's messages whole and in order."""
    s = t.one_way
    size = s.big()
    async with t.pair() as (a, b):
        from_a = [_payload(size, 1), *(b"a%d" % i for i in range(200)), _payload(size, 2)]
        from_b = [_payload(size, 3), *(b"b%d" % i for i in range(200)), _payload(size, 4)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send_all, a, from_a)
            tg.start_soon(_send_all, b, from_b)
            tg.start_soon(s.expect, b, from_a, "a -> b while b -> a streams too")
            await s.expect(a, from_b, "b -> a while a -> b streams too")


async def _check_send_eof(t: _TwoWay) -> None:
    """``send_eof()`` on one end: the other end receives what was sent before it, then
    EndOfStream, and can still send back. Checked in both directions."""
    s = t.one_way
    if not s.eof:
        return
    for flip in (False, True):
        async with t.pair() as (a, b):
            x, y, name = (b, a, "b") if flip else (a, b, "a")
            await x.send(b"before eof")
            await x.send_eof()
            await s.expect(y, [b"before eof"], f"a message sent before {name}.send_eof()")
            await s.raises(
                EndOfStream, f"receive() on the other end after {name}.send_eof()", y.receive
            )
            await y.send(b"reply")
            await s.expect(x, [b"reply"], f"a reply to the end that called send_eof() ({name})")


async def _check_stapled(t: _TwoWay) -> None:
    """``StapledObjectStream(a, a)`` passes messages both ways; its ``send_eof()`` (which
    closes ``a``) ends the other end's stream, with end of stream; after its
    ``aclose()``, ``a`` raises ClosedResourceError."""
    s = t.one_way
    async with t.pair() as (a, b):
        stapled = StapledObjectStream(a, a)
        await stapled.send(b"through the staple")
        await s.expect(b, [b"through the staple"], "a message sent through the staple")
        await b.send(b"back")
        await s.expect(stapled, [b"back"], "a message received through the staple")
        if s.eof:
            await stapled.send_eof()
            await s.raises(EndOfStream, "receive() at b after the staple's send_eof()", b.receive)
        await stapled.aclose()
        await s.raises(
            ClosedResourceError,
            "send() after the staple's aclose()",
            functools.partial(a.send, b"closed"),
        )


_TWO_WAY: dict[str, Callable[[_TwoWay], Awaitable[None]]] = {
    "duplex": _check_duplex,
    "send_eof": _check_send_eof,
    "stapled": _check_stapled,
}

#: Names of the checks :func:`check_one_way_channel` runs, in order (for ``skip``).
ONE_WAY_CHECKS: tuple[str, ...] = tuple(_ONE_WAY)
#: Names of the checks :func:`check_two_way_channel` adds to the one-way ones.
TWO_WAY_CHECKS: tuple[str, ...] = tuple(_TWO_WAY)


# ----------------------------------------------------------------------- runners


#: (check name, the check bound to its suite, its docstring)
_Runnable: TypeAlias = tuple[str, Callable[[], Awaitable[None]], str | None]


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as anyio task groups raise them."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _failure_text(name: str, doc: str | None, exc: BaseException) -> str:
    leaves = _leaves(exc)
    reasons = []
    for leaf in leaves:
        if isinstance(leaf, ChannelCheckError):
            reasons.append(str(leaf))
        elif isinstance(leaf, TimeoutError):
            reasons.append("timed out: some send, receive or aclose never returned")
        else:
            reasons.append(f"unexpected {type(leaf).__name__}: {leaf}")
    promise = " ".join((doc or "").split())
    return f"[{name}] " + "; ".join(reasons) + (f"\n      promise: {promise}" if promise else "")


async def _run(
    checks: Sequence[_Runnable],
    what: str,
    limit: float,
) -> None:
    failures: list[tuple[str, BaseException]] = []
    texts: list[str] = []
    for name, run, doc in checks:
        try:
            # A backstop: each step inside a check is bounded by ``limit`` itself.
            with anyio.fail_after(4 * limit):
                await run()
        except Exception as exc:
            failures.append((name, exc))
            texts.append(_failure_text(name, doc, exc))
    if failures:
        message = f"{what}: {len(failures)} of {len(checks)} checks failed:\n  - " + "\n  - ".join(
            texts
        )
        error = ChannelCheckError(message, failures)
        first = _leaves(failures[0][1])[0]
        raise error from first


def _validate_skip(skip: Collection[str], known: Collection[str]) -> None:
    unknown = sorted(set(skip) - set(known))
    if unknown:
        raise ValueError(f"unknown check names in skip: {unknown}; known: {sorted(known)}")


def _one_way_checks(suite: _Suite, skip: Collection[str], label: str = "") -> list[_Runnable]:
    return [
        (name + label, functools.partial(check, suite), check.__doc__)
        for name, check in _ONE_WAY.items()
        if name not in skip
    ]


async def check_one_way_channel(
    open_pair: OpenOneWay,
    *,
    max_message_size: int | None = None,
    boundaries: bool = True,
    eof_on_sender_close: bool = True,
    broken_on_receiver_close: bool = True,
    step_timeout: float = 10.0,
    skip: Collection[str] = (),
) -> None:
    """Check a one-way channel mechanism against the Channel contract.

    Args:
        open_pair: ``async def open_pair() -> (sender, receiver)``, returning a fresh,
            connected pair on every call. The suite closes both ends.
        max_message_size: the largest message the channel accepts, as it enforces it
            (open the channel with that limit). Messages up to it (at most 1 MiB, plus
            one of exactly this size up to 8 MiB) must arrive whole, and one byte more
            must raise :exc:`aioipc.MessageTooLargeError`. ``None``: sizes up to 1 MiB
            are sent and the refusal is not checked.
        boundaries: ``False`` for raw byte channels, which cannot keep message
            boundaries: then only the byte sequence is compared, however ``receive``
            cuts it, and empty messages are not sent.
        eof_on_sender_close: the receiver sees end of stream once the sender closes
            (``False`` for datagrams and message queues: the end-of-stream checks are
            left out).
        broken_on_receiver_close: ``send`` raises BrokenResourceError once the receiver
            is closed.
        step_timeout: the longest any single step (a send, a receive, an aclose) may
            take, in seconds; a step that takes longer fails its check.
        skip: names from :data:`ONE_WAY_CHECKS` to leave out.

    Raises:
        ChannelCheckError: one or more checks failed; the message names each and what
            broke.
        ValueError: an unknown name in ``skip``.
    """
    _validate_skip(skip, _ONE_WAY)
    suite = _Suite(
        open_pair,
        max_message_size,
        boundaries,
        eof_on_sender_close,
        broken_on_receiver_close,
        step_timeout,
    )
    await _run(_one_way_checks(suite, skip), "one-way channel", step_timeout)


async def check_two_way_channel(
    open_pair: OpenTwoWay,
    *,
    max_message_size: int | None = None,
    boundaries: bool = True,
    eof: bool = True,
    broken_on_close: bool = True,
    step_timeout: float = 10.0,
    skip: Collection[str] = (),
) -> None:
    """Check a two-way channel mechanism against the Channel contract.

    Every one-way check runs in both directions (``a -> b`` with ``a`` as the sender and
    ``b`` as the receiver, then ``b -> a``), followed by the two-way checks: both ends
    streaming at once, ``send_eof`` (if ``eof``), and ``StapledObjectStream``.

    Args:
        open_pair: ``async def open_pair() -> (a, b)``, returning a fresh pair of
            connected channels on every call (for a datagram endpoint that replies to
            the last sender, have ``b`` receive one datagram from ``a`` first). The
            suite closes both.
        max_message_size: as for :func:`check_one_way_channel`.
        boundaries: as for :func:`check_one_way_channel`.
        step_timeout: as for :func:`check_one_way_channel`.
        eof: closing one end (or ``send_eof``) makes the other end's ``receive`` raise
            EndOfStream.
        broken_on_close: ``send`` raises BrokenResourceError once the other end closed.
        skip: names from :data:`ONE_WAY_CHECKS` (left out in both directions) and
            :data:`TWO_WAY_CHECKS` to leave out.

    Raises:
        ChannelCheckError: one or more checks failed; the message names each and what
            broke.
        ValueError: an unknown name in ``skip``.
    """
    _validate_skip(skip, (*_ONE_WAY, *_TWO_WAY))

    async def forward() -> tuple[SendChannel, ReceiveChannel]:
        return await open_pair()

    async def backward() -> tuple[SendChannel, ReceiveChannel]:
        a, b = await open_pair()
        return b, a

    def suite(opener: OpenOneWay) -> _Suite:
        return _Suite(opener, max_message_size, boundaries, eof, broken_on_close, step_timeout)

    both = _TwoWay(open_pair, suite(forward))
    checks: list[_Runnable] = [
        *_one_way_checks(suite(forward), skip, " (a -> b)"),
        *_one_way_checks(suite(backward), skip, " (b -> a)"),
        *(
            (name, functools.partial(check, both), check.__doc__)
            for name, check in _TWO_WAY.items()
            if name not in skip
        ),
    ]
    await _run(checks, "two-way channel", step_timeout)
