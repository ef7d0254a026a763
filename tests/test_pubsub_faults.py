"""Topics under faults: subscribers, publishers and the creator killed with SIGKILL,
a publisher killed while it holds the publish mutex, cancellation at random moments
of publish and receive, and a raw peer writing garbage into the mapping.

Every message is self-checking (tests/_pubsub_helpers.py: numbered(), check()): a torn or
partial message fails the test wherever it shows up.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import time
from collections.abc import Iterator

import anyio
import pytest
from anyio import EndOfStream, WouldBlock

from aioipc import IPCError, LaggedError, ProtocolError, pubsub
from aioipc._core import topic as T

from ._pubsub_helpers import (
    check,
    drain_nowait,
    fill,
    fresh_topic_name,
    numbered,
    on_asyncio,
    on_both_backends,
    proc_state,
    spawn_child,
)

LIMIT = 20  # seconds: generous deadlines on a loaded 2-core machine


@pytest.fixture
def topic_name() -> Iterator[str]:
    with fresh_topic_name() as name:
        yield name


# -- a subscriber killed --------------------------------------------------------------

BLOCK_SUBSCRIBER = """
name = sys.argv[1]

async def main():
    sub = await pubsub.subscribe(name, policy="block")
    say(f"ready {sub.slot}")
    sys.stdin.readline()  # never reads the topic

anyio.run(main)
"""


@on_both_backends
async def test_a_killed_block_subscriber_stops_holding_publishers(topic_name: str) -> None:
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=2, unlink_on_close=True) as topic:
        watcher = await topic.subscribe(policy="drop_oldest")
        async with spawn_child(BLOCK_SUBSCRIBER, topic_name) as peer:
            slot = int((await peer.line()).split()[1])
            info = {s.slot: s for s in topic.subscribers()}
            assert info[slot].pid == peer.pid
            assert (info[slot].policy, info[slot].alive) == ("block", True)
            pub = topic.publisher()
            sent = fill(pub, 0, 100)  # full: the child holds the publisher back
            assert sent > 0
            done = anyio.Event()
            took: list[float] = []

            async def publish() -> None:
                await pub.send(numbered(0, sent, 100))
                took.append(time.monotonic() - killed_at)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()
                assert topic.counts()[0] == sent
                # nothing else happens in this process but the kill: the publisher
                # must notice by itself
                killed_at = time.monotonic()
                await peer.kill()
                with anyio.fail_after(LIMIT):
                    await done.wait()
        # the documented promise is 1 s; measured here ~0.25 s (its liveness check)
        assert took[0] < 5, f"the publisher took {took[0]:.2f} s to notice the dead subscriber"
        # its slot is free: the topic's max_subscribers can subscribe again
        assert [s.slot for s in topic.subscribers()] == [watcher.slot]
        again = await topic.subscribe(policy="block")
        assert again.slot == slot
        await pub.send(b"after")
        assert await again.receive() == b"after"
        assert drain_nowait_lagging(watcher)[-1] == b"after"
        for end in (pub, watcher, again):
            await end.aclose()


def drain_nowait_lagging(sub: pubsub.Subscriber) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except LaggedError:
            continue
        except WouldBlock:
            return out


SLEEPING_SUBSCRIBER = """
name, policy = sys.argv[1], sys.argv[2]

async def main():
    sub = await pubsub.subscribe(name, policy=policy)
    say(f"ready {sub.slot}")
    await sub.receive()  # asleep on its doorbell

anyio.run(main)
"""


def write_syscalls() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("syscw:")).split()[1])


@pytest.mark.parametrize("policy", ["drop_oldest", "block"])
@on_both_backends
async def test_a_subscriber_killed_asleep_costs_publishers_nothing(
    topic_name: str, policy: str
) -> None:
    with pubsub.Topic.create(topic_name, 1 << 16, max_subscribers=2, unlink_on_close=True) as topic:
        pub = topic.publisher()
        async with spawn_child(SLEEPING_SUBSCRIBER, topic_name, policy) as peer:
            await peer.expect("ready 0")
            with anyio.fail_after(LIMIT):
                while proc_state(peer.pid) != "S":  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await peer.kill()
        # the slot's lock went with the process: a new subscriber may take the slot
        # Publishers ring a sleeper's doorbell at every commit and check that it lives
        # every 64 rings: a bounded cost, not one write() per message.
        before = write_syscalls()
        with anyio.fail_after(LIMIT):
            for n in range(2000):
                await pub.send(numbered(0, n, 32))  # (a dead block one: reaped < 1 s)
        rang = write_syscalls() - before
        assert rang <= 2 * 64, f"{rang} write() calls for 2000 messages nobody waits for"
        assert [s.slot for s in topic.subscribers() if s.alive] == []
        again = await topic.subscribe(policy=policy)  # type: ignore[arg-type]
        assert again.slot == 0
        await again.aclose()
        await pub.aclose()


# -- a publisher killed holding the mutex ----------------------------------------------

HOLD_MUTEX = """
name, stage = sys.argv[1], sys.argv[2]
from aioipc._core import topic as T
pub = pubsub.publisher(name)
assert pub._file.mutex.try_lock()
w = pub._w
w.load()
data = numbered(9, 0, 400)
off = w.claim(len(data))
start = w.data_off + off
mm = pub._file.mm
mm[start : start + 200] = data[:200]          # half the message
if stage != "claimed":
    mm[start + 200 : start + len(data)] = data[200:]
    head = w.hq[T.Q_HEAD]
    w.commit()
    if stage == "committed-head-not-stored":
        w.hq[T.Q_HEAD] = head                 # died between the commit point and head
say("holding")
sys.stdin.readline()
"""


@pytest.mark.parametrize("stage", ["claimed", "committed-head-not-stored", "committed"])
@on_both_backends
async def test_a_publisher_killed_holding_the_mutex(topic_name: str, stage: str) -> None:
    """The next publisher goes on (the robust mutex's EOWNERDEAD) and nobody sees a
    partial record: a claimed record vanishes; a committed one is seen whole, once."""
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=2, unlink_on_close=True) as topic:
        block = await topic.subscribe(policy="block")
        drop = await topic.subscribe(policy="drop_oldest")
        pub = topic.publisher()
        await pub.send(numbered(0, 0, 100))
        async with spawn_child(HOLD_MUTEX, topic_name, stage) as peer:
            await peer.expect("holding")
            with pytest.raises(WouldBlock):
                pub.send_nowait(b"the mutex is held")
            await peer.kill()
        with anyio.fail_after(LIMIT):
            await pub.send(numbered(0, 1, 100))
        expected = [(0, 0), (0, 1)] if stage == "claimed" else [(0, 0), (9, 0), (0, 1)]
        for sub in (block, drop):
            assert [check(m) for m in drain_nowait(sub)] == expected
        assert topic.counts()[0] == len(expected)
        # and the mutex is usable as usual
        pub.send_nowait(numbered(0, 2, 100))
        assert check(await block.receive()) == (0, 2)
        for end in (pub, block, drop):
            await end.aclose()


FILL_AND_DIE_MID_COMMIT = """
name = sys.argv[1]
from aioipc._core import topic as T
pub = pubsub.publisher(name)
assert pub._file.mutex.try_lock()
w = pub._w
w.load()
assert w.put(b"A" * 112) >= 0 and w.put(b"B" * 112) >= 0   # the 256-byte log is full
head = w.hq[T.Q_HEAD]
w.commit()
w.hq[T.Q_HEAD] = head                                       # died before storing head
say("holding")
sys.stdin.readline()
"""


@pytest.mark.parametrize("call", ["send", "send_nowait", "reserve"])
@on_both_backends
async def test_every_publish_path_finishes_a_dead_publishers_commit(
    topic_name: str, call: str
) -> None:
    """A publisher killed between its commit point and its head store never woke the
    subscribers: whoever publishes next finishes the commit and wakes them, on every
    path. (reserve waited for ever for the sleeping block subscriber, and send_nowait
    said WouldBlock for ever, when only send did it.)"""
    with pubsub.Topic.create(topic_name, 256, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        got: list[bytes] = []
        three = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                while True:
                    got.append((await sub.receive())[:1])
                    if len(got) == 3:
                        three.set()

            tg.start_soon(reader)
            async with spawn_child(FILL_AND_DIE_MID_COMMIT, topic_name) as peer:
                await peer.expect("holding")
                await peer.kill()
            pub = topic.publisher()
            with anyio.fail_after(LIMIT):
                if call == "send":
                    await pub.send(b"C" * 112)
                elif call == "reserve":
                    async with pub.reserve(112) as view:
                        view[:] = b"C" * 112
                else:
                    while True:
                        try:
                            pub.send_nowait(b"C" * 112)
                            break
                        except WouldBlock:
                            await anyio.sleep(0.01)  # polling is send_nowait's contract
                await three.wait()
            assert got == [b"A", b"B", b"C"]
            tg.cancel_scope.cancel()
        await pub.aclose()
        await sub.aclose()


TIGHT_PUBLISHER = """
name, tag = sys.argv[1], int(sys.argv[2])

async def main():
    pub = pubsub.publisher(name)
    say("go")
    n = 0
    while True:
        await pub.send(numbered(tag, n, 16 * (1 + (n * 37) % 150) - n % 8))
        n += 1

anyio.run(main)
"""


SMALL_PUBLISHER = """
async def main():
    pub = pubsub.publisher(sys.argv[1])
    say("go")
    n = 0
    while True:
        await pub.send(numbered(1, n, 32 + n % 64))
        n += 1

anyio.run(main)
"""


@on_asyncio
async def test_a_lagging_subscriber_racing_a_publisher_sees_only_lag(topic_name: str) -> None:
    """A slow drop_oldest subscriber of a small topic that a publisher process fills as
    fast as it can: between its reading the tail and the head another publish may
    land. That is falling behind, never "corrupt topic" (a reviewer saw 79
    ProtocolErrors in 8 s before the reader read both again)."""
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=1, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="drop_oldest")
        lagged = received = 0
        async with spawn_child(SMALL_PUBLISHER, topic_name) as peer:
            await peer.expect("go")
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                try:
                    check(await sub.receive())
                    received += 1
                except LaggedError:
                    lagged += 1
                time.sleep(0.0002)  # a slow subscriber: the loop is held, on purpose
            await peer.kill()
        assert lagged > 0
        assert received > 0
        await sub.aclose()


@on_asyncio
async def test_publishers_killed_at_random_moments(topic_name: str) -> None:
    """A publisher process killed at random moments of a tight loop of large messages
    (sometimes inside a publish, sometimes holding the mutex while it waits for the
    block subscriber): subscribers see only whole messages, in order, and the next
    publisher carries on each time."""
    rounds = 8
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    with pubsub.Topic.create(topic_name, 1 << 16, max_subscribers=2, unlink_on_close=True) as topic:
        block = await topic.subscribe(policy="block")
        drop = await topic.subscribe(policy="drop_oldest")
        start = topic.counts()[0]
        pub = topic.publisher()
        got: dict[str, list[tuple[int, int]]] = {"block": [], "drop": []}
        missed = [0]

        async def read(sub: pubsub.Subscriber, key: str, slow: bool) -> None:
            while True:
                try:
                    batch = await sub.receive_many(16)
                except EndOfStream:
                    return
                except LaggedError as exc:
                    assert key == "drop"
                    missed[0] += exc.missed
                    continue
                got[key].extend(check(m) for m in batch)
                if slow:
                    await anyio.sleep(0.0005)

        with anyio.fail_after(LIMIT * 3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, block, "block", False)
                tg.start_soon(read, drop, "drop", True)
                for r in range(rounds):
                    async with spawn_child(TIGHT_PUBLISHER, topic_name, r + 1) as peer:
                        await peer.expect("go")
                        await anyio.sleep(rng.uniform(0, 0.05))  # a random moment
                        await peer.kill()
                    await pub.send(numbered(0, r, 64))  # the next publisher goes on
                await pub.send_eof()
        total = topic.counts()[0] - start
        seq = got["block"]
        assert len(seq) == total
        # each killed publisher's messages: 0, 1, 2, ... with no gap, then its marker
        for r in range(rounds):
            theirs = [n for tag, n in seq if tag == r + 1]
            assert theirs == list(range(len(theirs)))
            marker = seq.index((0, r))
            assert all(tag != r + 1 for tag, _ in seq[marker:])
        assert [n for tag, n in seq if tag == 0] == list(range(rounds))
        # the drop_oldest subscriber: an in-order subsequence, counts adding up exactly
        it = iter(seq)
        assert all(any(m == x for x in it) for m in got["drop"])
        assert len(got["drop"]) + missed[0] == total
        for end in (pub, block, drop):
            await end.aclose()


# -- the creator killed ---------------------------------------------------------------

CREATOR = """
name = sys.argv[1]
topic = pubsub.Topic.create(name, 4096, max_subscribers=2)
say("made")
sys.stdin.readline()
"""


@on_both_backends
async def test_the_creator_killed(topic_name: str) -> None:
    async with spawn_child(CREATOR, topic_name) as peer:
        await peer.expect("made")
        topic = pubsub.Topic.open(topic_name)
        pub = topic.publisher()
        sub = await topic.subscribe(policy="block")
        await pub.send(b"before")
        await peer.kill()
        assert not pubsub.is_stale(topic_name)
        await pub.send(b"after")
        assert await sub.receive() == b"before"
        assert await sub.receive() == b"after"
        late = await pubsub.subscribe(topic_name, start="oldest")
        assert drain_nowait(late) == [b"before", b"after"]
        for end in (pub, sub, late):
            await end.aclose()
        assert not pubsub.is_stale(topic_name)  # the Topic handle still holds it
        topic.close()
        assert pubsub.is_stale(topic_name)
        pubsub.unlink(topic_name)


# -- cancellation at random moments ---------------------------------------------------


# AIOIPC_TEST_SEEDS=200 runs 200 seeds (a soak); the suite runs two.
SEEDS = list(range(1, 1 + int(os.environ.get("AIOIPC_TEST_SEEDS", "2"))))


@pytest.mark.parametrize("seed", SEEDS)
@on_both_backends
async def test_cancellation_at_random_moments(topic_name: str, seed: int) -> None:
    """Two publishers and five subscribers, every publish and receive under a random
    small timeout: a cancelled send is retried (it published nothing, or the block
    subscribers see a duplicate); a cancelled receive consumed nothing (or they see a
    gap)."""
    rng = random.Random(seed)
    per_pub = 150
    with pubsub.Topic.create(topic_name, 2048, max_subscribers=5, unlink_on_close=True) as topic:
        subs = {
            "block-0": await topic.subscribe(policy="block"),
            "block-1": await topic.subscribe(policy="block"),
            "drop-fast": await topic.subscribe(policy="drop_oldest"),
            "drop-slow": await topic.subscribe(policy="drop_oldest"),
            "drop-many": await topic.subscribe(policy="drop_oldest"),
        }
        got: dict[str, list[tuple[int, int]]] = {k: [] for k in subs}
        missed: dict[str, list[int]] = {k: [] for k in subs}
        cancels = {"send": 0, "receive": 0}
        eofs = 0

        async def publish(tag: int) -> None:
            pub = topic.publisher()
            n = 0
            while n < per_pub:
                msg = numbered(tag, n, 16 * (1 + n % 6) - n % 8)
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.0005, 0.002, 1])) as scope:
                    await pub.send(msg)
                if scope.cancelled_caught:
                    cancels["send"] += 1
                    continue  # it published nothing: send it again
                n += 1
            await pub.aclose()

        async def receive(key: str) -> None:
            sub = subs[key]
            while True:
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.0005, 0.002])) as scope:
                    try:
                        if key == "drop-many":
                            msgs = await sub.receive_many(5)
                        else:
                            msgs = [await sub.receive()]
                    except EndOfStream:
                        return
                    except LaggedError as exc:
                        missed[key].append(exc.missed)
                        continue
                if scope.cancelled_caught:
                    cancels["receive"] += 1
                    continue
                got[key].extend(check(m) for m in msgs)
                if key == "drop-slow" and rng.random() < 0.2:
                    await anyio.sleep(0.001)

        with anyio.fail_after(LIMIT * 2):
            async with anyio.create_task_group() as readers:
                for key in subs:
                    readers.start_soon(receive, key)
                async with anyio.create_task_group() as publishers:
                    publishers.start_soon(publish, 1)
                    publishers.start_soon(publish, 2)
                closer = topic.publisher()
                await closer.send_eof()
                eofs += 1
                await closer.aclose()
        total = 2 * per_pub
        assert topic.counts()[0] == total
        order = got["block-0"]
        assert got["block-1"] == order, "the block subscribers disagree on the order"
        for tag in (1, 2):
            assert [n for t, n in order if t == tag] == list(range(per_pub))
        for key in ("drop-fast", "drop-slow", "drop-many"):
            it = iter(order)
            assert all(any(m == x for x in it) for m in got[key]), f"{key}: out of order"
            assert len(got[key]) + sum(missed[key]) == total, (key, len(got[key]), missed[key])
        assert cancels["send"] > 0
        assert cancels["receive"] > 0
        if os.environ.get("AIOIPC_TEST_SEEDS"):
            print(seed, cancels, {k: sum(v) for k, v in missed.items()})
        for sub in subs.values():
            await sub.aclose()


# -- a raw peer writing garbage -------------------------------------------------------


@contextlib.contextmanager
def raw_map(name: str) -> Iterator[mmap.mmap]:
    """The topic's file mapped by a peer that does not go through aioipc."""
    fd = os.open("/dev/shm" + name, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    try:
        yield mm
    finally:
        mm.close()


def put_u64(mm: mmap.mmap, offset: int, value: int) -> None:
    mm[offset : offset + 8] = value.to_bytes(8, "little")


def get_u64(mm: mmap.mmap, offset: int) -> int:
    return int.from_bytes(mm[offset : offset + 8], "little")


@pytest.mark.parametrize(
    ("offset", "value", "words"),
    [
        (0, int.from_bytes(b"notTOPIC", "little"), "bad magic"),
        (8, 2, "version 2"),
        (16, 8192, "capacity 8192"),
        (16, 100, "capacity 100"),
        (24, 12345, "data offset"),
        (32, 5000, "subscriber slots"),
        (32, 0, "subscriber slots"),
        (64, 1 << 40, "impossible"),
        (72, 8, "impossible"),
        (64, 3, "impossible"),
    ],
    ids=lambda v: str(v)[:20],
)
def test_a_forged_header_is_refused_on_open(
    topic_name: str, offset: int, value: int, words: str
) -> None:
    topic = pubsub.Topic.create(topic_name, 4096, max_subscribers=2)
    topic.close()
    with raw_map(topic_name) as mm:
        width = 4 if offset in (8, 32) else 8  # the version and slot count are u32
        mm[offset : offset + width] = value.to_bytes(width, "little")

    async def subscribe() -> None:
        await pubsub.subscribe(topic_name)

    for attempt in (
        lambda: pubsub.Topic.open(topic_name),
        lambda: pubsub.publisher(topic_name),
        lambda: anyio.run(subscribe),
        lambda: pubsub.Topic.open_or_create(topic_name, 4096),
    ):
        with pytest.raises(ProtocolError, match=words) as info:
            attempt()
        assert topic_name in str(info.value)
    pubsub.unlink(topic_name)


@pytest.mark.parametrize("size", [0, 100, 4096, 4096 + 4096 + 255])
def test_a_short_file_is_refused(topic_name: str, size: int) -> None:
    with open("/dev/shm" + topic_name, "wb") as f:
        f.truncate(size)
    with pytest.raises(IPCError, match=topic_name):
        pubsub.Topic.open(topic_name)
    with pytest.raises(IPCError, match=topic_name):
        pubsub.publisher(topic_name)
    os.unlink("/dev/shm" + topic_name)


def test_a_fifo_at_the_name_is_refused_without_hanging(topic_name: str) -> None:
    os.mkfifo("/dev/shm" + topic_name, 0o600)
    try:
        with pytest.raises(IPCError, match=topic_name):
            pubsub.Topic.open(topic_name)
        with pytest.raises(IPCError, match=topic_name):
            pubsub.is_stale(topic_name)
    finally:
        os.unlink("/dev/shm" + topic_name)


@on_both_backends
async def test_forged_positions_in_a_live_topic(topic_name: str) -> None:
    """A peer forges the published head: the subscriber and the publisher say
    ProtocolError; put back, both carry on with nothing lost or invented."""
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        await pub.send(numbered(0, 0, 40))
        assert check(await sub.receive()) == (0, 0)
        await pub.send(numbered(0, 1, 40))
        with raw_map(topic_name) as mm:
            head = get_u64(mm, 64)
            for forged in (head + (1 << 20), head + (1 << 63), head + 4, head - 4):
                put_u64(mm, 64, forged)
                # (head + 4 still covers the whole next record: a reader may take it)
                if forged != head + 4:
                    with pytest.raises(ProtocolError, match=topic_name):
                        await sub.receive()
                # a publisher that did not make the last commit reads the header (the
                # one that did trusts its own head and stores it again: a repair)
                if forged > head:
                    with pytest.raises(ProtocolError, match=topic_name):  # noqa: PT012
                        fresh = topic.publisher()  # (open may refuse it already)
                        try:
                            await fresh.send(numbered(0, 99, 40))
                        finally:
                            await fresh.aclose()
                put_u64(mm, 64, head)
            put_u64(mm, 64, head - 16)
            # below the committed head is what a publisher killed between its commit
            # point and storing the head leaves: the next publisher finishes the commit
            await pub.send(numbered(0, 2, 40))
            assert get_u64(mm, 64) == head + T.record_size(40)
        assert [check(m) for m in drain_nowait(sub)] == [(0, 1), (0, 2)]
        for end in (pub, sub):
            await end.aclose()


@pytest.mark.parametrize(
    ("field", "forge"),
    [
        ("length", lambda word, seq: (word & ~0xFFFFFFFF) | 5000),
        ("length-short-past-head", lambda word, seq: (word & ~0xFFFFFFFF) | 200),
        ("kind", lambda word, seq: (7 << 32) | (word & 0xFFFFFFFF)),
        ("pad-kind", lambda word, seq: (T.KIND_PAD << 32) | (word & 0xFFFFFFFF)),
        ("number", lambda word, seq: seq + 1),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@on_both_backends
async def test_a_forged_record_at_the_cursor(topic_name: str, field: str, forge: object) -> None:
    """A peer forges the record a subscriber reads next: ProtocolError, the cursor did
    not move (put back, the message is received), and nothing else was returned."""
    data_off = T.data_offset(2)
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=2, unlink_on_close=True) as topic:
        subs = [await topic.subscribe(policy=p) for p in ("block", "drop_oldest")]
        pub = topic.publisher()
        await pub.send(numbered(0, 0, 40))
        await pub.send(numbered(0, 1, 40))
        for sub in subs:
            assert check(await sub.receive()) == (0, 0)
        at = data_off + T.record_size(40)  # the second record
        with raw_map(topic_name) as mm:
            word, seq = get_u64(mm, at), get_u64(mm, at + 8)
            target = at + 8 if field == "number" else at
            put_u64(mm, target, forge(word, seq))  # type: ignore[operator]
            for sub in subs:
                with pytest.raises(ProtocolError, match="corrupt topic"):
                    await sub.receive()
                with pytest.raises(ProtocolError, match="corrupt topic"):
                    await sub.receive_many(4)
            put_u64(mm, target, word if target == at else seq)
        for sub in subs:
            assert check(await sub.receive()) == (0, 1)
        for end in (pub, *subs):
            await end.aclose()


@on_both_backends
async def test_a_forged_block_slot_does_not_hold_publishers(topic_name: str) -> None:
    """A peer marks a free slot as a block subscriber at the tail (nobody holds its
    lock): a publisher that needs the room reaps it instead of waiting forever."""
    with pubsub.Topic.create(topic_name, 1024, max_subscribers=2, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="drop_oldest")
        pub = topic.publisher()
        forged_slot = 1 - sub.slot
        with raw_map(topic_name) as mm:
            base = T.HEADER_SIZE + 64 * forged_slot
            mm[base : base + 8] = (1).to_bytes(4, "little") + T.BLOCK.to_bytes(4, "little")
            put_u64(mm, base + 8, get_u64(mm, 64))  # cursor at the head
            put_u64(mm, base + 16, 0)
            put_u64(mm, 168, get_u64(mm, 168) + 1)  # the epoch: publishers rescan
        with anyio.fail_after(LIMIT):
            for n in range(40):
                await pub.send(numbered(0, n, 100))
        assert all(s.slot != forged_slot for s in topic.subscribers())
        got = [check(m)[1] for m in drain_nowait_lagging(sub)]
        assert got == sorted(got)
        assert got[-1] == 39
        for end in (pub, sub):
            await end.aclose()


@pytest.mark.parametrize(
    "garbage", [b"\xff" * 40, b"\x01" * 40, bytes(range(40))], ids=["ff", "01", "ramp"]
)
@on_both_backends
async def test_a_forged_mutex_never_hangs_or_crashes(topic_name: str, garbage: bytes) -> None:
    """The publish mutex's words overwritten: publishing raises ProtocolError or works;
    it never crashes the process (only a bounded wait is allowed)."""
    with pubsub.Topic.create(topic_name, 4096, max_subscribers=1, unlink_on_close=True) as topic:
        sub = await topic.subscribe(policy="block")
        pub = topic.publisher()
        with raw_map(topic_name) as mm:
            mm[T.MUTEX_OFF : T.MUTEX_OFF + len(garbage)] = garbage
        outcome = "timeout"
        with anyio.move_on_after(1):
            try:
                await pub.send(b"x" * 16)
                outcome = "sent"
            except ProtocolError as exc:
                assert topic_name in str(exc)  # noqa: PT017
                outcome = "refused"
        if outcome == "sent":
            assert await sub.receive() == b"x" * 16
        for end in (pub, sub):
            await end.aclose()
