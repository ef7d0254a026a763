"""Every aioipc channel mechanism against the generic Channel conformance suite
(:mod:`aioipc.testing`): pipes, FIFOs and unix sockets, on real kernel objects.

Each test only says how to open a fresh connected pair and what the mechanism promises
(message boundaries, end of stream, a size limit); the suite does the rest.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ObjectReceiveStream

import aioipc
from aioipc import fifo, unix
from aioipc._core.stream import FdReceiveChannel
from aioipc.abc import Channel, ReceiveChannel, SendChannel
from aioipc.framing import DEFAULT_MAX_MESSAGE_SIZE
from aioipc.testing import (
    ONE_WAY_CHECKS,
    TWO_WAY_CHECKS,
    ChannelCheckError,
    OpenOneWay,
    OpenTwoWay,
    check_one_way_channel,
    check_two_way_channel,
)

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


# --------------------------------------------------------------------------- one-way


@pytest.mark.asyncio
async def test_pipe_framed() -> None:
    await check_one_way_channel(
        pipe_opener(framing=True), max_message_size=LIMIT, step_timeout=STEP
    )


@pytest.mark.asyncio
async def test_pipe_framed_default_limit() -> None:
    # The default 64 MiB limit: sizes up to 1 MiB arrive, 64 MiB + 1 bytes are refused.
    await check_one_way_channel(
        pipe_opener(framing=True, max_message_size=DEFAULT_MAX_MESSAGE_SIZE),
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        step_timeout=STEP,
        skip=[name for name in ONE_WAY_CHECKS if name not in ("sizes", "message_too_large")],
    )


@pytest.mark.asyncio
async def test_pipe_raw() -> None:
    await check_one_way_channel(
        pipe_opener(framing=False), max_message_size=LIMIT, boundaries=False, step_timeout=STEP
    )


@pytest.mark.asyncio
async def test_fifo_framed(short_tmp: Path) -> None:
    await check_one_way_channel(
        fifo_opener(short_tmp, framing=True), max_message_size=LIMIT, step_timeout=STEP
    )


@pytest.mark.asyncio
async def test_fifo_raw(short_tmp: Path) -> None:
    await check_one_way_channel(
        fifo_opener(short_tmp, framing=False),
        max_message_size=LIMIT,
        boundaries=False,
        step_timeout=STEP,
    )


@pytest.mark.asyncio
async def test_unix_dgram_client_to_endpoint(short_tmp: Path) -> None:
    await check_one_way_channel(
        dgram_opener(short_tmp, prime=False),
        max_message_size=SOCKET_MESSAGE_LIMIT,
        eof_on_sender_close=False,  # datagrams have no end of stream
        step_timeout=STEP,
    )


# --------------------------------------------------------------------------- two-way


@pytest.mark.asyncio
async def test_unix_stream_framed(short_tmp: Path) -> None:
    async with connected_opener(short_tmp, "stream", max_message_size=LIMIT) as open_pair:
        await check_two_way_channel(open_pair, max_message_size=LIMIT, step_timeout=STEP)


@pytest.mark.asyncio
async def test_unix_stream_raw(short_tmp: Path) -> None:
    async with connected_opener(
        short_tmp, "stream", framing=False, max_message_size=LIMIT
    ) as open_pair:
        await check_two_way_channel(
            open_pair, max_message_size=LIMIT, boundaries=False, step_timeout=STEP
        )


@pytest.mark.asyncio
async def test_unix_seqpacket(short_tmp: Path) -> None:
    async with connected_opener(
        short_tmp, "seqpacket", max_message_size=SOCKET_MESSAGE_LIMIT
    ) as open_pair:
        await check_two_way_channel(
            open_pair, max_message_size=SOCKET_MESSAGE_LIMIT, step_timeout=STEP
        )


@pytest.mark.asyncio
async def test_unix_dgram_two_way(short_tmp: Path) -> None:
    await check_two_way_channel(
        dgram_opener(short_tmp, prime=True),
        max_message_size=SOCKET_MESSAGE_LIMIT,
        eof=False,
        step_timeout=STEP,
    )


# --------------------------------------------------------------------------- trio


def test_unix_stream_under_trio(short_tmp: Path) -> None:
    pytest.importorskip("trio")

    async def main() -> None:
        async with connected_opener(short_tmp, "stream", max_message_size=LIMIT) as open_pair:
            await check_two_way_channel(open_pair, max_message_size=LIMIT, step_timeout=STEP)

    anyio.run(main, backend="trio")


def test_pipe_under_trio() -> None:
    pytest.importorskip("trio")
    anyio.run(
        lambda: check_one_way_channel(
            pipe_opener(framing=True), max_message_size=LIMIT, step_timeout=STEP
        ),
        backend="trio",
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
