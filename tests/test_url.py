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
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import aioipc
from aioipc import posix, pubsub, url
from aioipc.url import (
    Address,
    FifoAddress,
    PosixQueueAddress,
    PubSubAddress,
    ShmAddress,
    ShmDuplexAddress,
    SysVQueueAddress,
    UnixAddress,
    parse_url,
)

from . import _topics
from ._topics import topic_files

TIMEOUT = 15
new_topic = pytest.fixture(_topics.new_topic)


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
        ("pubsub://t", PubSubAddress, "spin"),
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
        "pubsub": ("send", "receive"),
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
async def _opened(scheme: str, short_tmp: Path, ring: str, topic: str) -> AsyncIterator[str]:
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
    elif scheme == "pubsub":
        yield f"pubsub://{topic[1:]}?capacity=4096"
    else:
        yield f"shm://{ring[1:]}?capacity=4096"


@pytest.mark.parametrize(
    "scheme",
    ["unix", "unix+seqpacket", "unix+dgram", "fifo", "mq", "sysvmq", "shm", "shm+duplex", "pubsub"],
)
@pytest.mark.asyncio
async def test_declared_shapes_are_what_real_objects_come_back_as(
    scheme: str, short_tmp: Path, new_ring: Callable[[], str], new_topic: Callable[[], str]
) -> None:
    entry = url._SCHEMES[scheme]
    async with (
        _opened(scheme, short_tmp, new_ring(), new_topic()) as address,
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
        ("connect", "pubsub://{topic}", "two-way", "pubsub:// gives a send-only channel"),
        ("listen", "pubsub://{topic}", "two-way", "pubsub:// gives a receive-only channel"),
        ("listen", "pubsub://{topic}", "listener", "not a listener"),
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
    side: str,
    address: str,
    expect: Any,
    text: str,
    short_tmp: Path,
    new_ring: Callable[[], str],
    new_topic: Callable[[], str],
) -> None:
    tag = uuid.uuid4().hex[:10]
    ring, topic = new_ring(), new_topic()
    address = address.format(tmp=short_tmp, ring=ring[1:], tag=tag, topic=topic[1:])
    opener = aioipc.connect if side == "connect" else aioipc.listen
    with pytest.raises(ValueError, match=text) as info:
        await opener(address, expect=expect)
    if "is not one of" not in text:
        assert repr(address) in str(info.value)
    _nothing_created(short_tmp, ring, f"/aioipc-test-url-{tag}", topic)


def _nothing_created(directory: Path, ring: str, queue: str, topic: str = "/-") -> None:
    assert list(directory.iterdir()) == []  # no FIFO, no socket file
    assert not os.path.exists(f"/dev/shm{ring}")
    assert topic_files(topic) == []
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
            ValueError, match=r"it is for .*shm://, shm\+duplex://, pubsub://, test\+memory://"
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


# -- pubsub:// --------------------------------------------------------------------------

# (url, the option the error must name, a piece of its text): as test_core's table.
BAD_PUBSUB_OPTIONS: list[tuple[str, str, str]] = [
    ("pubsub://t?capacity=0", "capacity", "not 0"),
    ("pubsub://t?capacity=128", "capacity", "256.."),
    ("pubsub://t?capacity=1000", "capacity", "multiple of 16"),
    ("pubsub://t?capacity=2.5", "capacity", "integer"),
    ("pubsub://t?capacity=010", "capacity", "leading zero"),
    ("pubsub://t?capacity=" + "9" * 5000, "capacity", "out of range"),
    ("pubsub://t?max_subscribers=0", "max_subscribers", "not 0"),
    ("pubsub://t?max_subscribers=1025", "max_subscribers", "1..1024"),
    ("pubsub://t?max_subscribers=", "max_subscribers", "integer"),
    ("pubsub://t?policy=fast", "policy", "block, drop_oldest, disconnect"),
    ("pubsub://t?policy=", "policy", "expected one of"),
    ("pubsub://t?policy=BLOCK", "policy", "expected one of"),
    ("pubsub://t?start=later", "start", "now, oldest"),
    ("pubsub://t?mode=0o1000", "mode", "0o1000"),
    ("pubsub://t?mode=rw", "mode", "octal"),
    ("pubsub://t?codec=yaml", "codec", "unknown codec"),
    ("pubsub://t?policy=block&policy=block", "policy", "twice"),
    ("pubsub://t?spin=0", "spin", "does not apply to pubsub://"),
    ("pubsub://t?create=1", "create", "does not apply to pubsub://"),
    ("pubsub://t?max_messages=2", "max_messages", "does not apply to pubsub://"),
    ("mq:///x?policy=block", "policy", "it is for pubsub://"),
    ("shm://r?max_subscribers=2", "max_subscribers", "does not apply to shm://"),
    ("pubsub://t?colour=blue", "colour", "unknown URL option"),
]


@pytest.mark.parametrize(
    ("address", "option", "text"),
    BAD_PUBSUB_OPTIONS,
    ids=[a[:60] for a, _, _ in BAD_PUBSUB_OPTIONS],
)
def test_bad_pubsub_options_name_the_option_and_the_url(
    address: str, option: str, text: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(address))) as info:
        parse_url(address)
    message = str(info.value)
    assert option in message
    assert text in message


def test_pubsub_options_parse_into_its_record() -> None:
    a = parse_url("pubsub://news?capacity=0x1000&max_subscribers=3&policy=block&start=oldest")
    assert a == PubSubAddress(
        "pubsub", "/news", capacity=4096, max_subscribers=3, policy="block", start="oldest"
    )
    assert parse_url("pubsub:///news?mode=640").mode == 0o640
    plain = parse_url("pubsub://news")
    assert isinstance(plain, PubSubAddress)
    assert (plain.capacity, plain.max_subscribers, plain.policy, plain.start) == (None,) * 4


@pytest.mark.asyncio
async def test_pubsub_url_ends_open_or_create_one_topic_and_never_remove_it(
    new_topic: Callable[[], str],
) -> None:
    """Either end creates the topic (with the URL's shape, or the defaults), the other
    opens it; closing them leaves it (a topic is named and persistent)."""
    name = new_topic()
    address = f"pubsub://{name[1:]}?capacity=4096&max_subscribers=3&mode=0640"
    with anyio.fail_after(TIMEOUT):
        async with (
            await aioipc.listen(address + "&policy=block", expect="receive") as sub,
            await aioipc.connect(address, expect="send") as pub,
        ):
            assert isinstance(sub, pubsub.Subscriber)
            assert isinstance(pub, pubsub.Publisher)
            assert sub.policy == "block"
            for i in range(3):
                await pub.send(b"m%d" % i)
            assert [await sub.receive() for _ in range(3)] == [b"m0", b"m1", b"m2"]
    assert os.stat(f"/dev/shm{name}").st_mode & 0o777 == 0o640
    with pubsub.Topic.open(name) as topic:
        assert (topic.capacity, topic.max_subscribers) == (4096, 3)
        assert topic.subscribers() == []  # the subscriber's slot was freed at close
        assert topic.counts()[0] == 3
    # start=oldest replays what the topic retains; a second URL without the shape opens it.
    async with await aioipc.listen(f"pubsub://{name[1:]}?start=oldest") as replay:
        with anyio.fail_after(TIMEOUT):
            assert [await replay.receive() for _ in range(3)] == [b"m0", b"m1", b"m2"]


@pytest.mark.asyncio
async def test_pubsub_url_with_another_shape_than_the_topic_is_refused(
    new_topic: Callable[[], str],
) -> None:
    name = new_topic()
    with pubsub.Topic.create(name, 4096, max_subscribers=2):
        for opener, extra in ((aioipc.connect, ""), (aioipc.listen, "&policy=block")):
            with pytest.raises(ValueError, match="capacity of 4096 bytes, not 8192"):
                await opener(f"pubsub://{name[1:]}?capacity=8192{extra}")
            with pytest.raises(ValueError, match="2 subscriber slots, not max_subscribers=5"):
                await opener(f"pubsub://{name[1:]}?max_subscribers=5{extra}")
        async with await aioipc.listen(f"pubsub://{name[1:]}?capacity=4096&max_subscribers=2"):
            pass


@pytest.mark.parametrize("option", ["policy=block", "start=oldest"])
@pytest.mark.asyncio
async def test_pubsub_subscriber_options_on_connect_are_refused_before_creating(
    option: str, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    with pytest.raises(ValueError, match=f"option {option.split('=')[0]}= is a subscriber's"):
        await aioipc.connect(f"pubsub://{name[1:]}?{option}")
    assert topic_files(name) == []


@pytest.mark.asyncio
async def test_pubsub_url_full_topic_is_busy(new_topic: Callable[[], str]) -> None:
    name = new_topic()
    address = f"pubsub://{name[1:]}?max_subscribers=1"
    async with await aioipc.listen(address):
        with pytest.raises(anyio.BusyResourceError, match="max_subscribers=1"):
            await aioipc.listen(address)


@pytest.mark.parametrize("codec", ["json", "pickle", "bytes"])
@pytest.mark.asyncio
async def test_codecs_wrap_pubsub_ends(codec: str, new_topic: Callable[[], str]) -> None:
    name = new_topic()
    item: object = b"raw" if codec == "bytes" else {"n": [1, 2], "s": "x"}
    with anyio.fail_after(TIMEOUT):
        subs = [await aioipc.listen(f"pubsub://{name[1:]}?codec={codec}") for _ in range(2)]
        async with await aioipc.connect(f"pubsub://{name[1:]}", codec=codec) as pub:
            await pub.send(item)
            for sub in subs:
                async with sub:
                    assert await sub.receive() == item
