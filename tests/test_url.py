"""aioipc.url as a table: one record per scheme, looked up by parse_url/connect/listen.

The parsing rules and their error messages are tested in test_core.py (test_url_*,
test_bad_url*); here: that each scheme's options live with the scheme, that the shapes
the table declares are what real kernel objects come back as, that ``expect=`` refuses a
scheme of another shape before anything is created, and that a scheme registered in the
table is opened by connect/listen with no other change.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import aioipc
from aioipc import posix, url
from aioipc.url import (
    Address,
    FifoAddress,
    PosixQueueAddress,
    ShmAddress,
    ShmDuplexAddress,
    SysVQueueAddress,
    UnixAddress,
    parse_url,
)

TIMEOUT = 15


@pytest.mark.parametrize(
    ("address", "record", "foreign"),
    [
        ("unix:///x", UnixAddress, "capacity"),
        ("unix+dgram://@x", UnixAddress, "persistent"),
        ("fifo:///x", FifoAddress, "allowed_uids"),
        ("mq:///x", PosixQueueAddress, "send_type"),
        ("sysvmq://1", SysVQueueAddress, "max_messages"),
        ("shm://r", ShmAddress, "max_size"),
        ("shm+duplex://r", ShmDuplexAddress, "multi_producer"),
    ],
)
def test_each_scheme_parses_into_its_own_record(
    address: str, record: type[Address], foreign: str
) -> None:
    """An option of another scheme is not even a field of this scheme's record."""
    parsed = parse_url(address)
    assert type(parsed) is record
    assert not hasattr(parsed, foreign)
    assert (parsed.mode, parsed.codec) == (0o600, None)


def test_the_table_knows_every_scheme_and_its_shapes() -> None:
    shapes = {name: (s.connects, s.listens) for name, s in url._SCHEMES.items()}
    assert shapes == {
        "unix": ("two-way", "listener"),
        "unix+stream": ("two-way", "listener"),
        "unix+seqpacket": ("two-way", "listener"),
        "unix+dgram": ("two-way", "two-way"),
        "fifo": ("send", "receive"),
        "mq": ("two-way", "two-way"),
        "sysvmq": ("two-way", "two-way"),
        "shm": ("send", "receive"),
        "shm+duplex": ("two-way", "listener"),
    }


def _is(obj: object, shape: str) -> bool:
    if shape == "listener":
        return isinstance(obj, anyio.abc.Listener)
    sends = isinstance(obj, anyio.abc.ObjectSendStream)
    receives = isinstance(obj, anyio.abc.ObjectReceiveStream)
    return {"send": sends and not receives, "receive": receives and not sends}.get(
        shape, sends and receives
    )


@contextlib.asynccontextmanager
async def _opened(scheme: str, short_tmp: Path, ring: str) -> AsyncIterator[str]:
    """A URL of ``scheme`` naming a fresh object; whatever it made is removed after."""
    tag = uuid.uuid4().hex[:10]
    if scheme.startswith("unix"):
        yield f"{scheme}://{short_tmp / 's.sock'}"
    elif scheme == "fifo":
        yield f"fifo://{short_tmp / 'f'}"
    elif scheme == "mq":
        name = f"/aioipc-test-url-{tag}"
        try:
            yield f"mq://{name}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                posix.unlink_message_queue(name)
    elif scheme == "sysvmq":
        key_file = short_tmp / "key"
        key_file.touch()
        try:
            yield f"sysvmq://{key_file}?proj=7"
        finally:
            with contextlib.suppress(FileNotFoundError):
                queue = aioipc.sysv.MessageQueue.open(aioipc.ftok(key_file, 7))
                queue.remove()
                await queue.aclose()
    elif scheme == "shm+duplex":
        yield f"shm+duplex://{ring[1:]}?capacity=4096"
    else:
        yield f"shm://{ring[1:]}?capacity=4096"


@pytest.mark.parametrize(
    "scheme",
    ["unix", "unix+seqpacket", "unix+dgram", "fifo", "mq", "sysvmq", "shm", "shm+duplex"],
)
@pytest.mark.asyncio
async def test_declared_shapes_are_what_real_objects_come_back_as(
    scheme: str, short_tmp: Path, new_ring: Callable[[], str]
) -> None:
    entry = url._SCHEMES[scheme]
    async with (
        _opened(scheme, short_tmp, new_ring()) as address,
        await aioipc.listen(address) as server,
    ):
        assert _is(server, entry.listens), (scheme, type(server))
        with anyio.fail_after(TIMEOUT):
            accepted: list[anyio.abc.ObjectStream[bytes]] = []
            async with anyio.create_task_group() as tg:
                if isinstance(server, aioipc.Listener):
                    # Concurrently: a shm+duplex connect returns once it was accepted.
                    tg.start_soon(lambda: _accept_into(server, accepted))
                client = await aioipc.connect(address)
            async with client:
                assert _is(client, entry.connects), (scheme, type(client))
                if isinstance(server, anyio.abc.ObjectReceiveStream):
                    await client.send(b"shape")
                    assert await server.receive() == b"shape"
                else:
                    async with accepted[0]:
                        await client.send(b"shape")
                        assert await accepted[0].receive() == b"shape"


async def _accept_into(
    listener: aioipc.Listener[anyio.abc.ObjectStream[bytes]],
    accepted: list[anyio.abc.ObjectStream[bytes]],
) -> None:
    accepted.append(await listener.accept())


@pytest.mark.parametrize(
    ("side", "address", "expect", "text"),
    [
        ("connect", "fifo://{tmp}/f", "two-way", "fifo:// gives a send-only channel"),
        ("connect", "shm://{ring}", "two-way", "shm:// gives a send-only channel"),
        ("listen", "fifo://{tmp}/f", "two-way", "fifo:// gives a receive-only channel"),
        ("listen", "fifo://{tmp}/f", "listener", "not a listener"),
        ("listen", "shm://{ring}", "listener", "shm:// gives a receive-only channel"),
        ("listen", "shm+duplex://{ring}", "receive", "shm\\+duplex:// gives a listener"),
        ("listen", "unix://{tmp}/s.sock", "receive", "unix:// gives a listener"),
        ("listen", "unix://{tmp}/s.sock", "two-way", "not a two-way channel"),
        ("listen", "unix+dgram://{tmp}/s.sock", "listener", "gives a two-way channel"),
        ("listen", "mq:///aioipc-test-url-{tag}", "listener", "mq:// gives a two-way"),
        ("connect", "unix://{tmp}/s.sock", "receive", "expect='receive' is not one of"),
        ("listen", "unix://{tmp}/s.sock", "send", "expect='send' is not one of"),
    ],
)
@pytest.mark.asyncio
async def test_expect_refuses_another_shape_before_creating_anything(
    side: str, address: str, expect: Any, text: str, short_tmp: Path, new_ring: Callable[[], str]
) -> None:
    tag = uuid.uuid4().hex[:10]
    ring = new_ring()
    address = address.format(tmp=short_tmp, ring=ring[1:], tag=tag)
    opener = aioipc.connect if side == "connect" else aioipc.listen
    with pytest.raises(ValueError, match=text) as info:
        await opener(address, expect=expect)
    if "is not one of" not in text:
        assert repr(address) in str(info.value)
    _nothing_created(short_tmp, ring, f"/aioipc-test-url-{tag}")


def _nothing_created(directory: Path, ring: str, queue: str) -> None:
    assert list(directory.iterdir()) == []  # no FIFO, no socket file
    assert not os.path.exists(f"/dev/shm{ring}")
    with pytest.raises(aioipc.IPCNotFoundError):
        posix.MessageQueue.open(queue)


@pytest.mark.asyncio
async def test_expect_that_fits_gives_the_object(short_tmp: Path) -> None:
    path = short_tmp / "f"
    async with await aioipc.listen(f"fifo://{path}", expect="receive") as rx:
        with anyio.fail_after(TIMEOUT):
            tx = await aioipc.connect(f"fifo://{path}", expect="send")
            async with tx:
                await tx.send(b"fits")
                assert await rx.receive() == b"fits"


@pytest.mark.asyncio
async def test_a_scheme_registered_in_the_table_needs_no_other_change() -> None:
    """connect/listen/parse_url only look the scheme up: a new record is a new scheme.
    (A memory stream stands in for a transport: what is tested is the dispatch.)"""
    send, receive = anyio.create_memory_object_stream[bytes](1)

    async def connect(a: Address) -> anyio.abc.ObjectSendStream[bytes]:
        return send

    async def listen(a: Address) -> anyio.abc.ObjectReceiveStream[bytes]:
        return receive

    scheme = url._Scheme(
        ShmAddress, {"capacity": url._size(100)}, connect, listen, "send", "receive"
    )
    url._register(scheme, "test+memory")
    try:
        assert parse_url("test+memory://x?capacity=5").capacity == 5  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=r"option spin= does not apply to test\+memory://"):
            parse_url("test+memory://x?spin=0")
        with pytest.raises(
            ValueError, match=r"it is for .*shm://, shm\+duplex://, test\+memory://"
        ):
            parse_url("mq:///x?capacity=5")
        async with (
            await aioipc.listen("test+memory://x", codec="json") as rx,
            await aioipc.connect("test+memory://x", codec="json") as tx,
        ):
            await tx.send({"table": True})
            assert await rx.receive() == {"table": True}
    finally:
        del url._SCHEMES["test+memory"]
    with pytest.raises(ValueError, match="unsupported URL scheme 'test\\+memory'"):
        parse_url("test+memory://x")
