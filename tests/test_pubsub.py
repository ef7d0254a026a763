"""Topics (aioipc.pubsub): bad input, the three policies for falling behind, where a
subscriber starts, the end of the stream, several publisher processes in one total
order, and what an idle subscriber costs. Each check is message by message.

Crashes, corruption and cancellation stress are in test_pubsub_faults.py; the log
format's own model tests in test_topic_format.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import anyio
import pytest
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
)

from aioipc import (
    IPCExistsError,
    IPCNotFoundError,
    IPCSystemError,
    LaggedError,
    MessageTooLargeError,
    pubsub,
)

from ._pubsub_helpers import (
    check,
    cpu_seconds,
    drain_nowait,
    fill,
    fresh_topic_name,
    numbered,
    on_asyncio,
    on_both_backends,
    proc_state,
    spawn_child,
    topic_files,
)

LIMIT = 20  # seconds: generous deadlines on a loaded 2-core machine


@pytest.fixture
def topic_name() -> Iterator[str]:
    with fresh_topic_name() as name:
        yield name


# -- bad input ------------------------------------------------------------------------


@on_both_backends
async def test_more_subscribers_than_the_maximum(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=2) as topic:
        a = await topic.subscribe()
        b = await topic.subscribe(policy="block")
        with pytest.raises(BusyResourceError, match="max_subscribers=2"):
            await topic.subscribe()
        with pytest.raises(BusyResourceError, match=topic_name):
            await pubsub.subscribe(topic_name, policy="block")
        # the refused ones hold nothing: a slot freed is a slot taken
        await a.aclose()
        c = await topic.subscribe()
        assert sorted(s.slot for s in topic.subscribers()) == [0, 1]
        pub = topic.publisher()
        await pub.send(b"after")
        assert await b.receive() == b"after"
        assert await c.receive() == b"after"
        for end in (pub, b, c):
            await end.aclose()
        topic.unlink()


@on_both_backends
async def test_a_message_larger_than_the_topic_holds(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=1, unlink_on_close=True) as topic:
        assert topic.max_message_size == 1024 // 2 - 16
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        big = b"x" * (topic.max_message_size + 1)
        for attempt in (
            lambda: pub.send(big),
            lambda: pub.send_many([b"ok", big]),
        ):
            with pytest.raises(MessageTooLargeError, match="capacity 1024") as info:
                await attempt()
            assert info.value.size == len(big)
            assert info.value.limit == topic.max_message_size
        with pytest.raises(MessageTooLargeError, match="capacity 1024"):
            pub.send_nowait(big)
        with pytest.raises(MessageTooLargeError, match="capacity 1024"):
            async with pub.reserve(len(big)):
                pass  # pragma: no cover
        # nothing of the refused batch went; the largest message does
        largest = bytes(range(256)) * 2
        largest = largest[: topic.max_message_size]
        await pub.send(largest)
        assert await sub.receive() == largest
        assert drain_nowait(sub) == []
        await pub.aclose()
        await sub.aclose()


def test_opening_with_a_different_shape(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=3, unlink_on_close=True):
        with pytest.raises(ValueError, match=r"capacity of 4096 bytes, not 8192"):
            pubsub.Topic.open(topic_name, capacity=8192)
        with pytest.raises(ValueError, match=r"3 subscriber slots, not max_subscribers=4"):
            pubsub.Topic.open(topic_name, max_subscribers=4)
        with pytest.raises(ValueError, match="capacity of 4096 bytes, not 2048"):
            pubsub.Topic.open_or_create(topic_name, 2048)
        with pytest.raises(ValueError, match="not max_subscribers=16"):
            pubsub.Topic.open_or_create(topic_name, 4096, max_subscribers=16)
        with pytest.raises(IPCExistsError):
            pubsub.Topic.create(topic_name, 4096, max_subscribers=3)
        with pubsub.Topic.open_or_create(topic_name, 4096, max_subscribers=3) as same:
            assert (same.capacity, same.max_subscribers) == (4096, 3)
        with pubsub.Topic.open(topic_name) as same:
            assert (same.capacity, same.max_subscribers) == (4096, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"capacity": 100}, ValueError, "capacity"),
        ({"capacity": 4104}, ValueError, "multiple of 16"),
        ({"capacity": -8}, ValueError, "capacity"),
        ({"capacity": "4096"}, TypeError, "capacity"),
        ({"capacity": 4096.0}, TypeError, "capacity"),
        ({"capacity": True}, TypeError, "capacity"),
        ({"max_subscribers": 0}, ValueError, "max_subscribers"),
        ({"max_subscribers": 1025}, ValueError, "max_subscribers"),
        ({"max_subscribers": "16"}, TypeError, "max_subscribers"),
        ({"mode": 0o10000}, ValueError, "mode"),
        ({"mode": "0600"}, TypeError, "mode"),
    ],
)
def test_bad_creation_values(
    topic_name: str, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    args: dict[str, object] = {"capacity": 4096, **kwargs}
    with pytest.raises(error, match=words):
        pubsub.Topic.create(topic_name, **args)  # type: ignore[arg-type]
    # nothing was left behind by the refused create
    assert topic_files(topic_name) == []
    with pytest.raises(IPCNotFoundError, match="does not exist"):
        pubsub.Topic.open(topic_name)


@pytest.mark.parametrize("name", ["no-slash", "/a/b", "/" + "x" * 300, "", "/"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        pubsub.Topic.create(name, 4096)


@on_both_backends
async def test_bad_policy_and_start(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=1, unlink_on_close=True) as topic:
        with pytest.raises(ValueError, match=r"policy must be one of .*'block'.*not 'fast'"):
            await topic.subscribe(policy="fast")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="start must be 'now' or 'oldest', not 'latest'"):
            await topic.subscribe(start="latest")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="policy"):
            await pubsub.subscribe(topic_name, policy=None)  # type: ignore[arg-type]
        # none of those took the one slot
        sub = await topic.subscribe()
        with pytest.raises(ValueError, match="max_count"):
            await sub.receive_many(0)
        with pytest.raises(TypeError, match="policy='block'"):
            async with sub.receive_view():
                pass  # pragma: no cover
        await sub.aclose()
        pub = topic.publisher()
        with pytest.raises(ValueError, match="reserve size"):
            async with pub.reserve(-1):
                pass  # pragma: no cover
        with pytest.raises(TypeError):
            await pub.send("text")  # type: ignore[arg-type]
        await pub.aclose()


def test_a_topic_larger_than_dev_shm_fails_cleanly(topic_name: str) -> None:
    free = os.statvfs("/dev/shm")
    too_big = (free.f_bavail * free.f_frsize + (1 << 30)) & ~7
    with pytest.raises(IPCSystemError, match="ENOSPC") as info:
        pubsub.Topic.create(topic_name, too_big)
    assert topic_name in str(info.value)
    assert topic_files(topic_name) == []


@on_both_backends
async def test_one_task_at_a_time_per_handle(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=1, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        fill(pub, 0, 100)
        sent = topic.counts()[0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(pub.send, numbered(0, 999, 100))  # waits for the block subscriber
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(BusyResourceError):
                await pub.send(b"second")
            with pytest.raises(BusyResourceError):
                pub.send_nowait(b"second")
            tg.cancel_scope.cancel()
        assert topic.counts()[0] == sent  # neither the cancelled nor the refused went
        assert [check(m)[1] for m in drain_nowait(sub)] == list(range(sent))
        async with anyio.create_task_group() as tg:
            tg.start_soon(sub.receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(BusyResourceError):
                await sub.receive()
            with pytest.raises(BusyResourceError):
                sub.receive_nowait()
            await pub.send(b"now")
        for end in (pub, sub):
            await end.aclose()


# -- policies -------------------------------------------------------------------------


@on_both_backends
async def test_block_loses_nothing_and_holds_the_publisher(topic_name: str) -> None:
    """A block subscriber reading slowly: the publisher waits for it (send_nowait
    would block when the log is full of unread messages) and it gets every message."""
    count, size = 300, 100
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        # full: the next message would need room the subscriber has not given back
        sent = fill(pub, 0, size)
        assert 0 < sent < 1024 // size
        assert topic.subscribers()[0].lag_messages == sent
        got: list[int] = []

        async def read() -> None:
            while len(got) < count:
                got.append(check(await sub.receive())[1])
                if len(got) % 7 == 0:
                    await anyio.sleep(0.001)  # slower than the publisher

        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                for n in range(sent, count):
                    await pub.send(numbered(0, n, size))
        assert got == list(range(count))
        assert topic.counts()[0] == count
        await pub.aclose()
        await sub.aclose()


@on_both_backends
async def test_a_cancelled_blocked_send_publishes_nothing(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        watcher = await topic.subscribe(policy="drop_oldest")
        pub = topic.publisher()
        sent = fill(pub, 0, 100)
        published = topic.counts()[0]
        with anyio.move_on_after(0.3) as scope:
            await pub.send(numbered(0, sent, 100))  # waits for the block subscriber
        assert scope.cancelled_caught
        assert topic.counts()[0] == published
        # the next send works once there is room, and nothing cancelled shows up
        assert [check(m)[1] for m in drain_nowait(sub)] == list(range(sent))
        assert [check(m)[1] for m in drain_nowait(watcher)] == list(range(sent))
        with anyio.fail_after(LIMIT):
            await pub.send(numbered(0, 1000, 100))
            assert check(await sub.receive()) == (0, 1000)
        assert [check(m) for m in drain_nowait(watcher)] == [(0, 1000)]
        assert drain_nowait(sub) == []
        for end in (pub, sub, watcher):
            await end.aclose()


@on_both_backends
async def test_closing_a_block_subscriber_releases_a_waiting_publisher(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        sent = fill(pub, 0, 100)
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pub.send, numbered(0, sent, 100))
                await anyio.wait_all_tasks_blocked()
                assert topic.counts()[0] == sent
                await sub.aclose()  # wakes the publisher: no liveness poll needed
        assert topic.counts()[0] == sent + 1
        assert topic.subscribers() == []
        await pub.aclose()


CLOSE_WHILE_WAITING = """
name, name2, backend = sys.argv[1], sys.argv[2], sys.argv[3]
from anyio import ClosedResourceError, WouldBlock

async def main():
    topic = pubsub.Topic.create(name, 1024, max_subscribers=2, unlink_on_close=True)
    sub = await topic.subscribe(policy="block")
    pub = topic.publisher()
    sent = 0
    try:
        while True:
            pub.send_nowait(numbered(0, sent, 100))
            sent += 1
    except WouldBlock:
        pass
    other = topic.publisher()
    outcome = []

    async def send():
        try:
            await pub.send(numbered(0, sent, 100))
        except Exception as exc:
            outcome.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await anyio.wait_all_tasks_blocked()
        await pub.aclose()
    say(f"send raised {outcome}")
    for _ in range(sent):
        sub.receive_nowait()
    with anyio.fail_after(5):
        await other.send(b"other")  # the closed publisher let go of the mutex
    assert await sub.receive() == b"other"
    say("other publisher went on")
    # the thread's robust-mutex list is intact: another topic's mutex works
    with pubsub.Topic.create(name2, 1024, unlink_on_close=True) as t2:
        p2 = t2.publisher()
        await p2.send(b"x")
        await p2.aclose()
    say("another topic works")
    for end in (other, sub):
        await end.aclose()
    topic.close()

anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_closing_a_publisher_while_it_waits(topic_name: str, backend: str) -> None:
    """Run in a child: the bug crashes the process that meets it."""

    async def main() -> None:
        with fresh_topic_name() as name2:
            async with spawn_child(CLOSE_WHILE_WAITING, topic_name, name2, backend) as peer:
                assert await peer.line() == "send raised ['ClosedResourceError']"
                await peer.expect("other publisher went on")
                await peer.expect("another topic works")
                await peer.finish()

    anyio.run(main)


@on_both_backends
async def test_lag_is_reported_per_subscriber(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=3, unlink_on_close=True) as topic:
        a = await topic.subscribe(policy="block")
        b = await topic.subscribe()
        pub = topic.publisher()
        for n in range(10):
            await pub.send(numbered(0, n, 32))  # records of 48 bytes
        for _ in range(4):
            await a.receive()
        lags = {
            s.slot: (s.policy, s.lag_messages, s.lag_bytes, s.alive) for s in topic.subscribers()
        }
        assert lags == {a.slot: ("block", 6, 6 * 48, True), b.slot: ("drop_oldest", 10, 480, True)}
        for end in (pub, a, b):
            await end.aclose()


@on_both_backends
async def test_lagging_over_an_end_of_stream(topic_name: str) -> None:
    """A drop_oldest subscriber that lost an end-of-stream among the messages it missed:
    LaggedError first, then EndOfStream (the end is not lost with the messages)."""
    with pubsub.Topic.create(topic_name, 512, max_subscribers=1, unlink_on_close=True) as topic:
        sub = await topic.subscribe()
        pub = topic.publisher()
        await pub.send(numbered(0, 0, 32))
        await pub.send_eof()
        for n in range(1, 40):
            await pub.send(numbered(0, n, 32))
        with pytest.raises(LaggedError) as info:
            await sub.receive()
        assert info.value.missed > 0
        with pytest.raises(EndOfStream):
            await sub.receive()
        await pub.aclose()
        await sub.aclose()


@on_both_backends
async def test_drop_oldest_counts_exactly_what_it_missed(topic_name: str) -> None:
    size, count = 48, 200  # records of 64 bytes: 16 fit in 1024
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=3, unlink_on_close=True) as topic:
        pub = topic.publisher()
        for n in range(5):
            await pub.send(numbered(0, n, size))  # before the subscriber: not its business
        sub = await topic.subscribe()  # drop_oldest, now
        assert sub.policy == "drop_oldest"
        for n in range(5, 5 + count):
            await pub.send(numbered(0, n, size))
        # what a replay sees now is what the topic retains
        replay = await topic.subscribe(start="oldest")
        retained = [check(m)[1] for m in drain_nowait(replay)]
        assert retained == list(range(5 + count - len(retained), 5 + count))
        assert 0 < len(retained) <= 1024 // 64
        with pytest.raises(LaggedError) as info:
            await sub.receive()
        assert info.value.missed == count - len(retained)
        assert f"missed {info.value.missed} messages" in str(info.value)
        assert "capacity 1024" in str(info.value)
        got = [check(m)[1] for m in drain_nowait(sub)]
        assert got == retained
        assert len(got) + info.value.missed == count
        # it carries on normally afterwards
        await pub.send(numbered(0, 9999, size))
        assert check(await sub.receive()) == (0, 9999)
        for end in (pub, sub, replay):
            await end.aclose()


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param(lambda n: 16 * (1 + n % 4) - n % 8, id="records-of-16k"),
        # sizes that once left an 8-byte gap before the end of the log (ValueError)
        pytest.param(lambda n: 8 + n % 50, id="any-size"),
    ],
)
@on_both_backends
async def test_drop_oldest_lags_repeatedly_and_the_counts_add_up(
    topic_name: str, sizes: Callable[[int], int]
) -> None:
    with pubsub.Topic.create(topic_name, 512, max_subscribers=1, unlink_on_close=True) as topic:
        pub = topic.publisher()
        sub = await topic.subscribe()
        got: list[int] = []
        missed = 0
        n = 0
        for burst in [3, 40, 1, 17, 100, 0, 8, 33]:
            for _ in range(burst):
                await pub.send(numbered(1, n, max(16, sizes(n))))
                n += 1
            while True:
                try:
                    got.append(check(sub.receive_nowait())[1])
                except LaggedError as exc:
                    assert exc.missed > 0  # noqa: PT017
                    missed += exc.missed
                except WouldBlock:
                    break
            assert got == sorted(got)
            assert len(got) + missed == n
        assert got[-1] == n - 1
        await pub.aclose()
        await sub.aclose()


@on_both_backends
async def test_disconnect_cuts_off_and_frees_the_slot(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=1, unlink_on_close=True) as topic:
        pub = topic.publisher()
        sub = await topic.subscribe(policy="disconnect")
        assert [s.policy for s in topic.subscribers()] == ["disconnect"]
        await pub.send(numbered(0, 0, 48))
        assert check(await sub.receive()) == (0, 0)
        for n in range(1, 60):
            await pub.send(numbered(0, n, 48))  # never waits for it
        with pytest.raises(
            BrokenResourceError, match=r"cut off: it fell \d+ bytes and \d+ messages behind"
        ) as info:
            await sub.receive()
        assert "capacity 1024" in str(info.value)
        for _ in range(2):
            with pytest.raises(BrokenResourceError, match="cut off"):
                await sub.receive()
            with pytest.raises(BrokenResourceError, match="cut off"):
                sub.receive_nowait()
        # its slot is free already (before it is closed): the one slot can be taken
        assert topic.subscribers() == []
        other = await topic.subscribe()
        await pub.send(b"next")
        assert await other.receive() == b"next"
        await sub.aclose()
        assert [s.slot for s in topic.subscribers()] == [0]
        for end in (pub, other):
            await end.aclose()


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
@on_both_backends
async def test_passing_only_a_pad_is_not_falling_behind(topic_name: str, policy: str) -> None:
    with pubsub.Topic.create(topic_name, 256, max_subscribers=1, unlink_on_close=True) as topic:
        pub = topic.publisher()
        sub = await topic.subscribe(policy=policy)  # type: ignore[arg-type]
        # records of 80 bytes at 0, 80, 160: the subscriber reads them and its cursor
        # stops at 240, where the next publish leaves a 16-byte pad
        for n in range(3):
            await pub.send(numbered(0, n, 64))
        assert [check(m)[1] for m in drain_nowait(sub)] == [0, 1, 2]
        # message 3 after the pad (at 256), 4 and 5, then an empty one: the tail moves to
        # 256, past the pad only; message 3 is still there
        for n in range(3, 6):
            await pub.send(numbered(0, n, 64))
        await pub.send(b"")
        assert [check(m)[1] for m in drain_nowait(sub)[:3]] == [3, 4, 5]
        for end in (pub, sub):
            await end.aclose()


@on_both_backends
async def test_start_oldest_replays_and_now_does_not(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=4, unlink_on_close=True) as topic:
        pub = topic.publisher()
        empty = await topic.subscribe(start="oldest")
        for n in range(10):
            await pub.send(numbered(2, n))
        old = await topic.subscribe(start="oldest")
        now = await topic.subscribe(start="now")
        assert drain_nowait(now) == []
        await pub.send(numbered(2, 10))
        assert [check(m)[1] for m in drain_nowait(old)] == list(range(11))
        assert [check(m)[1] for m in drain_nowait(empty)] == list(range(11))
        assert [check(m)[1] for m in drain_nowait(now)] == [10]
        for end in (pub, empty, old, now):
            await end.aclose()


# -- end of stream --------------------------------------------------------------------


@on_both_backends
async def test_no_publisher_means_wait_until_send_eof(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe()
        # no publisher at all: a receive waits (a topic has no end by itself)
        with anyio.move_on_after(0.2) as scope:
            await sub.receive()
        assert scope.cancelled_caught
        # a publisher that comes and goes ends nothing either
        pub = topic.publisher()
        await pub.send(b"one")
        await pub.aclose()
        assert await sub.receive() == b"one"
        with anyio.move_on_after(0.2) as scope:
            await sub.receive()
        assert scope.cancelled_caught

        got: list[bytes] = []

        async def read() -> None:
            while True:
                try:
                    msg = await sub.receive()
                except EndOfStream:
                    return
                got.append(msg)

        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                pub = topic.publisher()
                await pub.send(b"two")
                await pub.send_eof()
        assert got == [b"two"]
        with pytest.raises(EndOfStream):
            await sub.receive()
        with pytest.raises(EndOfStream):
            sub.receive_nowait()
        # a subscriber arriving now does not see the old end
        late = await topic.subscribe()
        await pub.send(b"three")
        assert await late.receive() == b"three"
        for end in (pub, sub, late):
            await end.aclose()


# -- several publisher processes ------------------------------------------------------

PUBLISH = """
name, tag, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def main():
    pub = pubsub.publisher(name)
    say("ready")
    sys.stdin.readline()
    for n in range(count):
        await pub.send(numbered(tag, n, 16 * (1 + (n * 13 + tag) % 12) - n % 8))
    await pub.aclose()
    say("done")

anyio.run(main)
"""


@on_asyncio
async def test_publisher_processes_one_total_order(topic_name: str) -> None:
    """Three publisher processes at once: every subscriber sees the same sequence, and
    each publisher's messages complete and in its order."""
    procs, count = 3, 300
    with pubsub.Topic.create(topic_name, 8192, max_subscribers=4, unlink_on_close=True) as topic:
        subs = [await topic.subscribe(policy="block") for _ in range(3)]
        seen: list[list[tuple[int, int]]] = [[] for _ in subs]

        async def read(i: int) -> None:
            while len(seen[i]) < procs * count:
                for msg in await subs[i].receive_many(64):
                    seen[i].append(check(msg))

        async with contextlib.AsyncExitStack() as stack:
            peers = [
                await stack.enter_async_context(spawn_child(PUBLISH, topic_name, tag, count))
                for tag in range(procs)
            ]
            for peer in peers:
                await peer.expect("ready")
            with anyio.fail_after(LIMIT * 2):
                async with anyio.create_task_group() as tg:
                    for i in range(len(subs)):
                        tg.start_soon(read, i)
                    for peer in peers:
                        await peer.tell("go")
                for peer in peers:
                    await peer.expect("done")
                    await peer.finish()
        assert seen[0] == seen[1] == seen[2]
        for tag in range(procs):
            assert [n for t, n in seen[0] if t == tag] == list(range(count))
        # the publishers really interleaved (one total order, not three runs)
        switches = sum(1 for a, b in zip(seen[0], seen[0][1:], strict=False) if a[0] != b[0])
        assert switches >= 2
        for sub in subs:
            await sub.aclose()


# -- an idle subscriber ---------------------------------------------------------------

IDLE = """
name, backend = sys.argv[1], sys.argv[2]

async def main():
    sub = await pubsub.subscribe(name)
    say("ready")
    say((await sub.receive()).decode())
    await sub.aclose()

anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_idle_subscriber_costs_no_cpu(topic_name: str, backend: str) -> None:
    """A subscriber process blocked in receive for a second uses (almost) no CPU: it
    sleeps on its doorbell, it does not poll."""

    async def main() -> None:
        with pubsub.Topic.create(
            topic_name, 4096, max_subscribers=1, unlink_on_close=True
        ) as topic:
            async with spawn_child(IDLE, topic_name, backend) as peer:
                await peer.expect("ready")
                # let it get into the wait (its first receive may spin briefly)
                with anyio.fail_after(LIMIT):
                    while proc_state(peer.pid) != "S":  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                await anyio.sleep(0.1)
                before = cpu_seconds(peer.pid)
                await anyio.sleep(1.0)  # the measurement window, not a synchronisation
                used = cpu_seconds(peer.pid) - before
                assert proc_state(peer.pid) == "S"
                pub = topic.publisher()
                await pub.send(b"wake up")
                await peer.expect("wake up")
                await peer.finish()
                await pub.aclose()
        assert used < 0.05, f"an idle subscriber used {used:.3f} s of CPU in 1 s"

    anyio.run(main)


def test_a_publisher_whose_loop_closed_before_it_rang_still_rings(topic_name: str) -> None:
    """Rings wait for the event loop's next turn; a loop closed before that turn must
    not leave the publisher thinking a ring is pending for ever (it never rang again)."""
    import asyncio
    import threading

    with pubsub.Topic.create(topic_name, 4096, max_subscribers=1, unlink_on_close=True) as topic:
        got: list[bytes] = []
        ready, done = threading.Event(), threading.Event()

        async def subscriber() -> None:
            async with await topic.subscribe() as sub:
                ready.set()
                while len(got) < 2:
                    got.append(await sub.receive())
            done.set()

        thread = threading.Thread(target=anyio.run, args=(subscriber,), daemon=True)
        thread.start()
        assert ready.wait(LIMIT)
        pub = topic.publisher()

        async def send_then_stop() -> None:
            await pub.send(b"first")
            asyncio.get_running_loop().stop()  # before the loop's next turn

        loop = asyncio.new_event_loop()
        with contextlib.suppress(RuntimeError):
            loop.run_until_complete(send_then_stop())
        loop.close()

        async def send_again() -> None:
            await pub.send(b"second")

        for _ in range(int(LIMIT / 0.05)):  # the subscriber may be asleep or not yet
            asyncio.run(send_again())
            if done.wait(0.05):
                break
        assert done.is_set()
        assert got == [b"first", b"second"]
        pub.close()
        thread.join(LIMIT)


@on_both_backends
async def test_closing_a_publisher_during_send_many_is_a_closed_error(topic_name: str) -> None:
    """A close() while send_many checkpoints before taking the mutex: ClosedResourceError
    naming the publisher (it was an AssertionError)."""
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=1, unlink_on_close=True) as topic:
        pub = topic.publisher()
        batch = [b"x" * 8] * 4

        async def race() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(40):  # the pacer checkpoints one call in 16
                    tg.start_soon(pub.aclose)
                    await pub.send_many(batch)

        with pytest.raises(ExceptionGroup) as caught:
            await race()
        assert caught.group_contains(ClosedResourceError, match="publisher is closed")


@on_both_backends
async def test_a_view_slice_kept_past_its_block(topic_name: str) -> None:
    """A slice of a receive_view kept past the block (it pins the mapping): closing the
    subscriber still frees its fds and its slot (it raised BufferError and kept them)."""
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=1, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        await pub.send(b"hello")
        await pub.send(b"world")
        kept = []
        async with sub.receive_view() as view:
            kept.append(view[1:])
        assert await sub.receive() == b"world"
        before = len(os.listdir("/proc/self/fd"))
        await sub.aclose()
        assert len(os.listdir("/proc/self/fd")) == before - 3  # log, its doorbell, space
        assert topic.subscribers() == []
        kept.clear()
        await pub.aclose()
