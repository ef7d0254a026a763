"""The pub/sub row of ``aioipc demo``: one publisher, three subscriber processes.

The parent publishes to a topic ``down`` that three child processes subscribe to with
the ``block`` policy (nothing may be lost: the parent waits for the slowest), and reads
a topic ``up`` that all three publish to. Each child says hello on ``up`` once it has
subscribed, answers every ping with a pong, and checks every message of the burst: the
numbers ``0..count-1``, each once, in order, each ``size`` bytes. At the end of the
burst each child reports on ``up`` how many it checked (or what was wrong), so the row
says that every message reached every subscriber.

A round trip is a ping published once and the three pongs back (a broadcast answered by
all); the MB/s is what each subscriber received: every one got all of it.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable

from .. import pubsub
from .._core import topic as _topic

__all__ = ["SUBSCRIBERS", "pubsub_child", "pubsub_exchange"]

SUBSCRIBERS = 3
_index = struct.Struct("!I")
_MIN_CAPACITY = 1 << 20


def capacity_for(size: int) -> int:
    """A capacity whose largest message is at least ``size`` bytes (and at least 1 MiB:
    room for a few hundred messages of the default size before the parent waits)."""
    return max(_MIN_CAPACITY, _topic.capacity_for(size))


async def pubsub_exchange(
    count: int, size: int, round_trips: int, start: Callable[[list[str]], Awaitable[None]]
) -> tuple[list[float], float]:
    """The parent: make both topics, start the children with ``start(args)`` (each
    child's arguments are ``args`` and its index), ping-pong, publish the burst, collect
    every child's report, say bye. Returns the round trips and the burst's duration.
    Removes both topics (the children's handles go on working)."""
    tag = f"/aioipc-demo-{os.getpid()}-ps"
    down_name, up_name = f"{tag}-down", f"{tag}-up"
    down = pubsub.Topic.create(
        down_name, capacity_for(size), max_subscribers=SUBSCRIBERS, unlink_on_close=True
    )
    try:
        up = pubsub.Topic.create(up_name, _MIN_CAPACITY, max_subscribers=1, unlink_on_close=True)
        try:
            async with (
                await up.subscribe("block") as replies,
                down.publisher() as pub,
            ):
                await start([down_name, up_name])
                return await _exchange(pub, replies, count, size, round_trips)
        finally:
            up.close()
    finally:
        down.close()


async def _gather(replies: pubsub.Subscriber, word: bytes) -> list[bytes]:
    """One reply starting with ``word`` from each child (in any order)."""
    got: dict[int, bytes] = {}
    while len(got) < SUBSCRIBERS:
        msg = await replies.receive()
        if msg.startswith(b"fail"):
            raise AssertionError(f"pubsub: subscriber {msg[4]}: {msg[5:].decode()}")
        if not msg.startswith(word):
            raise AssertionError(f"pubsub: expected {word!r} from each subscriber, got {msg!r}")
        child = msg[len(word)]
        if child in got:
            raise AssertionError(f"pubsub: subscriber {child} answered {word!r} twice")
        got[child] = msg[len(word) + 1 :]
    return [got[i] for i in range(SUBSCRIBERS)]


async def _exchange(
    pub: pubsub.Publisher,
    replies: pubsub.Subscriber,
    count: int,
    size: int,
    round_trips: int,
) -> tuple[list[float], float]:
    await _gather(replies, b"hello")  # every child has subscribed: none misses a thing
    rtts = []
    for _ in range(round_trips):
        t0 = time.perf_counter()
        await pub.send(b"ping" + bytes(60))
        await _gather(replies, b"pong")
        rtts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    await pub.send(b"burst" + _index.pack(count) + _index.pack(size))
    filler = bytes(size - 4)
    for i in range(count):
        await pub.send(_index.pack(i) + filler)
    for child, report in enumerate(await _gather(replies, b"done")):
        (checked,) = _index.unpack(report)
        if checked != count:
            raise AssertionError(f"pubsub: subscriber {child} checked {checked} of {count}")
    elapsed = time.perf_counter() - t0
    await pub.send(b"bye")  # each child exits 0 when it reads it
    return rtts, elapsed


async def pubsub_child(args: list[str]) -> None:
    """A subscriber process: ``DOWN UP INDEX``."""
    down, up, child = args[0], args[1], int(args[2])
    me = bytes([child])
    async with (
        await pubsub.subscribe(down, policy="block") as sub,
        pubsub.publisher(up) as pub,
    ):
        await pub.send(b"hello" + me)
        async for msg in sub:
            if msg.startswith(b"ping"):
                await pub.send(b"pong" + me)
            elif msg.startswith(b"burst"):
                (count,) = _index.unpack_from(msg, 5)
                (size,) = _index.unpack_from(msg, 9)
                for expected in range(count):
                    got = await sub.receive()
                    (number,) = _index.unpack_from(got)
                    if number != expected or len(got) != size:
                        text = (
                            f"expected message {expected} of {size} bytes, got {number} "
                            f"of {len(got)}"
                        )
                        await pub.send(b"fail" + me + text.encode())
                        sys.exit(1)
                await pub.send(b"done" + me + _index.pack(count))
            elif msg == b"bye":
                return
            else:
                await pub.send(b"fail" + me + f"unexpected message {msg[:20]!r}".encode())
                sys.exit(1)
