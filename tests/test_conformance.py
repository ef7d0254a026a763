"""Every aioipc channel kind against the generic Channel conformance suite
(:mod:`aioipc.testing`), on real kernel objects, under every backend: one matrix of
kinds (pipes, FIFOs, unix stream/seqpacket/datagram sockets, POSIX and SysV message
queues, the shared-memory ring with one producer or several, the shared-memory duplex
channel, a codec-wrapped channel)
x {asyncio, asyncio+uvloop, trio}.

Each kind only says how to open a fresh connected pair and what it promises (message
boundaries, end of stream, a size limit); the suite does the rest. Three tests per cell:
the contract, the busy rule (one concurrency rule for every channel) and the checkpoint
(pacing) rule.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
from anyio import WouldBlock
from anyio.abc import ObjectReceiveStream, ObjectSendStream

import aioipc
from aioipc import codecs, fifo, posix, sysv, unix
from aioipc._core.stream import FdReceiveChannel, FdSendChannel
from aioipc._core.wait import YIELD_EVERY
from aioipc.abc import Channel, ReceiveChannel, SendChannel
from aioipc.framing import DEFAULT_MAX_MESSAGE_SIZE
from aioipc.shm import ShmDuplex, ShmDuplexListener, ShmReceiver, ShmSender
from aioipc.testing import (
    ONE_WAY_CHECKS,
    TWO_WAY_CHECKS,
    ChannelCheckError,
    OpenOneWay,
    OpenTwoWay,
    check_one_way_channel,
    check_two_way_channel,
)
from aioipc.testing.conformance import PACE_WITHIN

#: Each suite step's bound; a healthy run takes milliseconds per step.
STEP = 5.0
#: The limit the framed channels here are opened with: the suite then checks that a
#: message of exactly this size arrives and one byte more is refused.
LIMIT = 2 * 1024 * 1024
#: Seqpacket and datagram messages are one kernel message each, limited by the socket's
#: send buffer (SO_SNDBUF, ~208 KiB by default), so they are opened with this limit.
SOCKET_MESSAGE_LIMIT = 100_000


# --------------------------------------------------------------------------- openers


def pipe_opener(*, framing: bool, max_message_size: int = LIMIT) -> OpenOneWay:
    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        return aioipc.pipe(framing=framing, max_message_size=max_message_size)

    return open_pair


def fifo_opener(directory: Path, *, framing: bool) -> OpenOneWay:
    names = itertools.count()

    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        path = directory / f"fifo{next(names)}"
        fifo.create(path)
        try:
            rx = await fifo.open_receiver(path, framing=framing, max_message_size=LIMIT)
            try:
                tx = await fifo.open_sender(path, framing=framing, max_message_size=LIMIT)
            except BaseException:
                await rx.aclose()
                raise
        finally:
            os.unlink(path)  # the open ends keep working; nothing is left behind
        return tx, rx

    return open_pair


@asynccontextmanager
async def connected_opener(
    directory: Path, kind: unix.Kind, **kw: Any
) -> AsyncIterator[OpenTwoWay]:
    """(client, accepted server end) pairs from one listener, for stream and seqpacket."""
    path = directory / f"{kind}.sock"
    async with await unix.listen(path, kind, **kw) as listener:

        async def open_pair() -> tuple[Channel, Channel]:
            client = await unix.connect(path, kind, **kw)
            try:
                server = await listener.accept()
            except BaseException:
                await client.aclose()
                raise
            return client, server

        yield open_pair


def dgram_opener(directory: Path, *, prime: bool) -> Callable[[], Awaitable[Any]]:
    """(connected client, bound endpoint) pairs, a fresh endpoint each time (closing it
    removes its socket file). The endpoint's ``send`` replies to the last sender, so for
    the two-way suite (``prime``) the endpoint first receives one datagram from the client.
    """
    names = itertools.count()

    async def open_pair() -> tuple[Any, Any]:
        path = directory / f"d{next(names)}.sock"
        limit = SOCKET_MESSAGE_LIMIT
        endpoint = await unix.listen(path, "dgram", max_message_size=limit)
        try:
            client = await unix.connect(path, "dgram", max_message_size=limit)
            try:
                if prime:
                    await client.send(b"hello")
                    with anyio.fail_after(STEP):
                        assert await endpoint.receive() == b"hello"
            except BaseException:
                await client.aclose()
                raise
        except BaseException:
            await endpoint.aclose()
            raise
        return client, endpoint

    return open_pair


# --------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Place:
    """Where a kind makes its named objects: a short directory (socket paths must fit in
    108 bytes) and fresh ring names (the ``new_ring`` fixture removes them)."""

    directory: Path
    new_ring: Callable[[], str]


@dataclass(frozen=True)
class Kind:
    """One channel kind of the matrix: how to open fresh pairs, and what it promises."""

    #: ``async with opener(place) as open_pair``: the pairs' shared setup (a listener, a
    #: list of queues to remove) lives as long as the block.
    opener: Callable[[Place], AbstractAsyncContextManager[Any]]
    two_way: bool = False
    #: The keyword arguments of check_one_way_channel / check_two_way_channel.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Checks the kind cannot take, each with its reason where the kind is defined.
    skip: tuple[str, ...] = ()


def _single(open_pair: Callable[[], Awaitable[Any]]) -> Callable[[Place], Any]:
    """An opener with no shared setup."""

    @asynccontextmanager
    async def opener(place: Place) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        yield open_pair

    return opener


def _fifo(*, framing: bool) -> Callable[[Place], Any]:
    @asynccontextmanager
    async def opener(place: Place) -> AsyncIterator[OpenOneWay]:
        yield fifo_opener(place.directory, framing=framing)

    return opener


def _connected(kind: unix.Kind, **kw: Any) -> Callable[[Place], Any]:
    def opener(place: Place) -> AbstractAsyncContextManager[OpenTwoWay]:
        return connected_opener(place.directory, kind, **kw)

    return opener


def _dgram(*, prime: bool) -> Callable[[Place], Any]:
    @asynccontextmanager
    async def opener(place: Place) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        yield dgram_opener(place.directory, prime=prime)

    return opener


@asynccontextmanager
async def posix_queues(place: Place) -> AsyncIterator[OpenOneWay]:
    """A fresh POSIX queue per pair: a write-only and a read-only handle. The name is
    unlinked at once (the handles keep the queue), so nothing outlives the pair."""

    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        name = f"/aioipc-test-conf-{uuid4().hex[:8]}"
        tx = posix.MessageQueue.create(name, read=False, write=True)
        try:
            rx = posix.MessageQueue.open(name, read=True, write=False)
        except BaseException:
            await tx.aclose()
            raise
        finally:
            posix.unlink_message_queue(name)
        return tx, rx

    yield open_pair


@asynccontextmanager
async def sysv_queues(place: Place) -> AsyncIterator[OpenOneWay]:
    """A fresh private SysV queue per pair. Neither handle owns it: the suite closes the
    sender first and then expects what it sent to arrive, so the queue must outlive both
    handles; it is removed when the block ends."""
    created: list[sysv.MessageQueue] = []

    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        tx = sysv.MessageQueue.create(remove_on_close=False)
        created.append(tx)
        return tx, sysv.MessageQueue.from_id(tx.id)

    try:
        yield open_pair
    finally:
        for q in created:
            await q.aclose()
            with contextlib.suppress(anyio.BrokenResourceError):
                q.remove()


def _ring(capacity: int, *, multi_producer: bool = False) -> Callable[[Place], Any]:
    @asynccontextmanager
    async def opener(place: Place) -> AsyncIterator[OpenOneWay]:
        async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
            name = place.new_ring()
            rx = ShmReceiver.create(name, capacity, multi_producer=multi_producer)
            try:
                tx = ShmSender.open(name)
            except BaseException:
                await rx.aclose()
                raise
            return tx, rx

        yield open_pair

    return opener


def _duplex(capacity: int) -> Callable[[Place], Any]:
    """(client, accepted server end) pairs from one shared-memory duplex listener."""

    @asynccontextmanager
    async def opener(place: Place) -> AsyncIterator[OpenTwoWay]:
        async with ShmDuplexListener.create(place.new_ring()) as listener:

            async def open_pair() -> tuple[Channel, Channel]:
                accepted: list[ShmDuplex] = []

                async def accept() -> None:
                    accepted.append(await listener.accept())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(accept)
                    client = await ShmDuplex.connect(listener.name, capacity=capacity)
                return client, accepted[0]

            yield open_pair

    return opener


def _bytes_codec(inner: Callable[[Place], Any]) -> Callable[[Place], Any]:
    """``inner``'s two-way pairs, each end wrapped in the bytes codec."""

    @asynccontextmanager
    async def opener(place: Place) -> AsyncIterator[OpenTwoWay]:
        async with inner(place) as open_inner:

            async def open_pair() -> tuple[Channel, Channel]:
                a, b = await open_inner()
                return codecs.wrap(a, "bytes"), codecs.wrap(b, "bytes")

            yield open_pair

    return opener


RING_CAPACITY = 1 << 20
POSIX_MQ_LIMIT = 8192  # posix.MessageQueue.create's default max_message_size
SYSV_MQ_LIMIT = int(Path("/proc/sys/kernel/msgmax").read_text())

#: The checks that call send_nowait() or receive_nowait() (the pacing checks use them to
#: feed and drain the channel without a checkpoint of their own).
CODEC_HAS_NO_NOWAIT = (
    "pacing_receive",
    "pacing_send",
    "send_nowait",
    "receive_nowait",
    "end_of_stream",
    "closed_sender",
    "closed_receiver",
    "message_too_large",
    "not_bytes",
    "backpressure",
    "aclose_wakes_sender",
    "busy_send",
)

#: Every channel kind aioipc offers. A queue has no end of stream and outlives its
#: receivers (so a send to it never breaks).
KINDS: dict[str, Kind] = {
    "pipe": Kind(_single(pipe_opener(framing=True)), options={"max_message_size": LIMIT}),
    "pipe-raw": Kind(
        _single(pipe_opener(framing=False)),
        options={"max_message_size": LIMIT, "boundaries": False},
    ),
    "fifo": Kind(_fifo(framing=True), options={"max_message_size": LIMIT}),
    "fifo-raw": Kind(
        _fifo(framing=False), options={"max_message_size": LIMIT, "boundaries": False}
    ),
    "unix-stream": Kind(
        _connected("stream", max_message_size=LIMIT),
        two_way=True,
        options={"max_message_size": LIMIT},
    ),
    "unix-stream-raw": Kind(
        _connected("stream", framing=False, max_message_size=LIMIT),
        two_way=True,
        options={"max_message_size": LIMIT, "boundaries": False},
    ),
    "unix-seqpacket": Kind(
        _connected("seqpacket", max_message_size=SOCKET_MESSAGE_LIMIT),
        two_way=True,
        options={"max_message_size": SOCKET_MESSAGE_LIMIT},
    ),
    "unix-dgram": Kind(
        _dgram(prime=False),
        # datagrams have no end of stream
        options={"max_message_size": SOCKET_MESSAGE_LIMIT, "eof_on_sender_close": False},
    ),
    "unix-dgram-two-way": Kind(
        _dgram(prime=True),
        two_way=True,
        options={"max_message_size": SOCKET_MESSAGE_LIMIT, "eof": False},
    ),
    "posix-mq": Kind(
        posix_queues,
        options={
            "max_message_size": POSIX_MQ_LIMIT,
            "eof_on_sender_close": False,
            "broken_on_receiver_close": False,
        },
    ),
    "sysv-mq": Kind(
        sysv_queues,
        options={
            "max_message_size": SYSV_MQ_LIMIT,
            "eof_on_sender_close": False,
            "broken_on_receiver_close": False,
        },
    ),
    "shm-ring": Kind(
        _ring(RING_CAPACITY),
        # The largest record that fits twice, less its 8-byte header.
        options={"max_message_size": RING_CAPACITY // 2 - 8},
    ),
    "shm-ring-multi-producer": Kind(
        # Its senders take the ring's send lock: another send path. One sender closing
        # does not end the stream (docs/shared-memory.md: they end it with send_eof()).
        _ring(RING_CAPACITY, multi_producer=True),
        options={"max_message_size": RING_CAPACITY // 2 - 8, "eof_on_sender_close": False},
    ),
    "shm-duplex": Kind(
        _duplex(RING_CAPACITY),
        two_way=True,
        options={"max_message_size": RING_CAPACITY // 2 - 8},
    ),
    "codec-unix-stream": Kind(
        _bytes_codec(_connected("stream", max_message_size=LIMIT)),
        two_way=True,
        options={"max_message_size": LIMIT},
        # The codec wrappers have no send_nowait() / receive_nowait(): every check that
        # calls one is left out (the rest runs through the wrapper).
        skip=CODEC_HAS_NO_NOWAIT,
    ),
}

#: What every kind is run under: anyio's backends, asyncio with and without uvloop.
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

BUSY_CHECKS = ("busy_receive", "busy_send")
PACING_CHECKS = ("pacing_receive", "pacing_send")


def run_checks(
    kind_name: str,
    backend_name: str,
    place: Place,
    only: Collection[str] | None = None,
    leave_out: Collection[str] = (),
) -> None:
    """Run the conformance suite on ``kind_name`` under ``backend_name``: the checks in
    ``only`` (all when None), less ``leave_out``."""
    kind = KINDS[kind_name]
    backend, backend_options = BACKENDS[backend_name]
    if backend_name == "uvloop":
        pytest.importorskip("uvloop")
    elif backend == "trio":
        pytest.importorskip("trio")
    every = (*ONE_WAY_CHECKS, *TWO_WAY_CHECKS) if kind.two_way else ONE_WAY_CHECKS
    skip = [
        c for c in every if (only is not None and c not in only) or c in leave_out or c in kind.skip
    ]

    async def main() -> None:
        async with kind.opener(place) as open_pair:
            if kind.two_way:
                await check_two_way_channel(open_pair, step_timeout=STEP, skip=skip, **kind.options)
            else:
                await check_one_way_channel(open_pair, step_timeout=STEP, skip=skip, **kind.options)

    anyio.run(main, backend=backend, backend_options=backend_options)


def matrix() -> list[Any]:
    """Every (kind, backend) pair."""
    return [
        pytest.param(kind_name, backend_name, id=f"{kind_name}-{backend_name}")
        for kind_name in KINDS
        for backend_name in BACKENDS
    ]


@pytest.fixture
def place(short_tmp: Path, new_ring: Callable[[], str]) -> Place:
    return Place(short_tmp, new_ring)


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize(("kind_name", "backend_name"), matrix())
def test_contract(kind_name: str, backend_name: str, place: Place) -> None:
    """Every check of the Channel contract but the busy rule and pacing, on every kind
    and backend."""
    run_checks(kind_name, backend_name, place, leave_out=(*BUSY_CHECKS, *PACING_CHECKS))


@pytest.mark.parametrize(("kind_name", "backend_name"), matrix())
def test_busy_rule(kind_name: str, backend_name: str, place: Place) -> None:
    """aioipc's one concurrency rule (docs/channels.md): a second concurrent receive, or
    a second concurrent send, on one handle raises anyio.BusyResourceError on every
    mechanism, queues included; it never queues behind the first."""
    run_checks(kind_name, backend_name, place, only=BUSY_CHECKS)


@pytest.mark.parametrize(("kind_name", "backend_name"), matrix())
def test_pacing(kind_name: str, backend_name: str, place: Place) -> None:
    """The checkpoint rule: a receive loop on a channel that always has data, and a send
    loop on one that always has room, let another task on the loop run at least once in
    every PACE_WITHIN calls (YIELD_EVERY plus slack)."""
    run_checks(kind_name, backend_name, place, only=PACING_CHECKS)


def test_the_matrix_names_real_checks() -> None:
    """The busy and pacing checks that the matrix runs apart from the contract are checks
    of the suite (a renamed one would otherwise silently run nowhere), and the pacing
    bound leaves room above YIELD_EVERY."""
    assert set(BUSY_CHECKS) | set(PACING_CHECKS) <= set(ONE_WAY_CHECKS)
    assert PACE_WITHIN > YIELD_EVERY


@pytest.mark.asyncio
async def test_pipe_framed_default_limit() -> None:
    # The default 64 MiB limit: sizes up to 1 MiB arrive, 64 MiB + 1 bytes are refused.
    await check_one_way_channel(
        pipe_opener(framing=True, max_message_size=DEFAULT_MAX_MESSAGE_SIZE),
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        step_timeout=STEP,
        skip=[name for name in ONE_WAY_CHECKS if name not in ("sizes", "message_too_large")],
    )


# --------------------------------------------------------------------------- the suite itself


@pytest.mark.asyncio
async def test_suite_rejects_unknown_check_names() -> None:
    with pytest.raises(ValueError, match="no_such_check"):
        await check_one_way_channel(pipe_opener(framing=True), skip=["no_such_check"])
    assert set(TWO_WAY_CHECKS).isdisjoint(ONE_WAY_CHECKS)


class DropsEvery100th(ObjectReceiveStream[bytes]):
    """A broken receiver: it silently loses every 100th message."""

    def __init__(self, inner: FdReceiveChannel) -> None:
        self._inner = inner
        self._count = 0

    async def receive(self) -> bytes:
        self._count += 1
        if self._count % 100 == 0:
            await self._inner.receive()
        return await self._inner.receive()

    def receive_nowait(self) -> bytes:
        return self._inner.receive_nowait()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


@pytest.mark.asyncio
async def test_suite_catches_a_channel_that_loses_messages() -> None:
    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        tx, rx = aioipc.pipe()
        return tx, DropsEvery100th(rx)

    with pytest.raises(ChannelCheckError) as caught:
        await check_one_way_channel(
            open_pair,
            step_timeout=STEP,
            skip=[name for name in ONE_WAY_CHECKS if name not in ("burst", "attributes")],
        )
    message = str(caught.value)
    assert "1 of 2 checks failed" in message, message
    assert "[burst] a burst of 1000 numbered messages: message 100 of 1000 arrived wrong" in (
        message
    ), message
    assert [name for name, _ in caught.value.failures] == ["burst"]


class NeverYieldsWithData(ObjectReceiveStream[bytes]):
    """A broken receiver: while data is there, receive() never checkpoints."""

    def __init__(self, inner: FdReceiveChannel) -> None:
        self._inner = inner

    async def receive(self) -> bytes:
        try:
            return self._inner.receive_nowait()
        except WouldBlock:
            return await self._inner.receive()

    def receive_nowait(self) -> bytes:
        return self._inner.receive_nowait()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


class NeverYieldsWithRoom(ObjectSendStream[bytes]):
    """A broken sender: while there is room, send() never checkpoints."""

    def __init__(self, inner: FdSendChannel) -> None:
        self._inner = inner

    async def send(self, item: bytes) -> None:
        try:
            self._inner.send_nowait(item)
        except WouldBlock:
            await self._inner.send(item)

    def send_nowait(self, item: bytes) -> None:
        self._inner.send_nowait(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_suite_catches_a_channel_that_never_yields(backend_name: str) -> None:
    """The pacing checks fail a channel whose calls never checkpoint while they need not
    wait (a busy producer or consumer would starve every other task on its loop)."""
    backend, backend_options = BACKENDS[backend_name]
    pytest.importorskip("uvloop" if backend_name == "uvloop" else backend)

    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        tx, rx = aioipc.pipe()
        return NeverYieldsWithRoom(tx), NeverYieldsWithData(rx)

    async def main() -> ChannelCheckError:
        with pytest.raises(ChannelCheckError) as caught:
            await check_one_way_channel(
                open_pair,
                step_timeout=STEP,
                skip=[name for name in ONE_WAY_CHECKS if name not in PACING_CHECKS],
            )
        return caught.value

    error = anyio.run(main, backend=backend, backend_options=backend_options)
    message = str(error)
    assert "2 of 2 checks failed" in message, message
    assert [name for name, _ in error.failures] == list(PACING_CHECKS)
    assert "receive() on a channel that always has data: " in message, message
    assert "send() on a channel that always has room: " in message, message
    assert message.count("calls in a row completed without letting another task") == 2, message


class QueuesReceives(ObjectReceiveStream[bytes]):
    """A receiver with the old queue rule: a second receive() waits its turn on a lock."""

    def __init__(self, inner: FdReceiveChannel) -> None:
        self._inner = inner
        self._lock = anyio.Lock()

    async def receive(self) -> bytes:
        async with self._lock:
            return await self._inner.receive()

    def receive_nowait(self) -> bytes:
        return self._inner.receive_nowait()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


class QueuesSends(ObjectSendStream[bytes]):
    """A sender with the old queue rule: a second send() waits its turn on a lock."""

    def __init__(self, inner: FdSendChannel) -> None:
        self._inner = inner
        self._lock = anyio.Lock()

    async def send(self, item: bytes) -> None:
        async with self._lock:
            await self._inner.send(item)

    def send_nowait(self, item: bytes) -> None:
        self._inner.send_nowait(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._inner.extra_attributes


@pytest.mark.asyncio
async def test_suite_catches_a_channel_that_queues_concurrent_calls() -> None:
    """The busy checks fail a channel whose second concurrent receive or send waits
    behind the first instead of raising BusyResourceError, and say so (quickly: they do
    not wait for a step timeout)."""

    async def open_pair() -> tuple[SendChannel, ReceiveChannel]:
        tx, rx = aioipc.pipe()
        return QueuesSends(tx), QueuesReceives(rx)

    with pytest.raises(ChannelCheckError) as caught:
        await check_one_way_channel(
            open_pair,
            step_timeout=STEP,
            skip=[name for name in ONE_WAY_CHECKS if name not in BUSY_CHECKS],
        )
    message = str(caught.value)
    assert "2 of 2 checks failed" in message, message
    for what in ("receive() while another task's receive() waits", "send() while another"):
        assert f"a second {what}" in message, message
    assert message.count("but it waited (queued behind the first)") == 2, message
