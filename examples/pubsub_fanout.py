"""One publisher, three subscriber processes, one topic in shared memory, no broker.

The parent creates the topic ``/aioipc-fanout-<pid>`` (64 KiB of log) and starts three
subscriber processes: two with ``policy="block"`` (the publisher waits for them: they
get every message) and a slow one with ``policy="drop_oldest"`` (the publisher never
waits for it: when it falls more than 64 KiB behind, its next receive raises
LaggedError saying how many messages it missed). Each says "ready" once subscribed; the
parent then publishes numbered messages and an end-of-stream marker (``send_eof()``).
Every subscriber checks its numbers: all of them in order (block), or an increasing
sequence whose gaps are exactly the LaggedErrors' counts (drop_oldest).

    python examples/pubsub_fanout.py

The topic is removed when the parent's handle closes (``unlink_on_close=True``), also on
error; a SIGKILLed parent leaves ``/dev/shm/aioipc-fanout-<pid>*`` behind.
"""

from __future__ import annotations

import os
import struct
import sys

import anyio
from anyio.abc import TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from aioipc import LaggedError, pubsub

MESSAGES = 20_000
NUMBER = struct.Struct("!Q")  # each message: its number, then padding to 64 bytes
TIMEOUT = 30.0
POLICIES = ("block", "block", "drop_oldest")


async def subscriber(name: str, policy: pubsub.Policy) -> None:
    async with await pubsub.subscribe(name, policy=policy) as sub:
        print("ready", flush=True)
        expected = received = missed = lags = 0
        while True:
            try:
                message = await sub.receive()
            except LaggedError as exc:  # drop_oldest only: we fell behind
                lags, missed, expected = lags + 1, missed + exc.missed, expected + exc.missed
                continue
            except anyio.EndOfStream:  # the publisher's send_eof()
                break
            (number,) = NUMBER.unpack_from(message)
            assert number == expected, f"got message {number}, expected {expected}"
            expected, received = expected + 1, received + 1
            if policy == "drop_oldest" and received % 50 == 0:
                await anyio.sleep(0.001)  # a slow consumer
    ok = received + missed == MESSAGES
    print(
        f"{policy:<11} subscriber {os.getpid()}: received {received}, missed {missed} "
        f"in {lags} lags, {'all accounted for' if ok else 'COUNTS DO NOT ADD UP'}",
        flush=True,
    )


async def run_subscriber(
    name: str, policy: str, reports: list[tuple[str, int]], *, task_status: TaskStatus[None]
) -> None:
    proc = await anyio.open_process([sys.executable, __file__, "subscriber", name, policy])
    try:
        assert proc.stdout is not None
        out = BufferedByteReceiveStream(proc.stdout)
        await out.receive_until(b"ready\n", 100)  # it has subscribed: publishing may start
        task_status.started()
        summary = await out.receive_until(b"\n", 1000)
        reports.append((summary.decode(), await proc.wait()))
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()


async def parent() -> int:
    name = f"/aioipc-fanout-{os.getpid()}"
    reports: list[tuple[str, int]] = []  # (summary line, exit status) per subscriber
    with pubsub.Topic.create(name, 64 << 10, unlink_on_close=True) as topic:
        print(f"publisher {os.getpid()}: topic {name}, {topic.capacity >> 10} KiB of log")
        with anyio.fail_after(TIMEOUT):
            async with topic.publisher() as pub, anyio.create_task_group() as tg:
                for policy in POLICIES:  # returns once that subscriber has subscribed
                    await tg.start(run_subscriber, name, policy, reports)
                for first in range(0, MESSAGES, 100):  # batches: one wake-up per batch
                    await pub.send_many(
                        NUMBER.pack(i).ljust(64, b".") for i in range(first, first + 100)
                    )
                await pub.send_eof()
                print(f"published {MESSAGES} messages and an end of stream")
    for summary, status in sorted(reports):
        print(f"  {summary} (exit status {status})")
    good = [s.endswith("all accounted for") and not status for s, status in reports]
    ok = len(good) == len(POLICIES) and all(good)
    print(f"done: {'every subscriber checked' if ok else 'FAILED'}; topic {name} removed")
    return 0 if ok else 1


def main() -> int:
    if sys.argv[1:2] == ["subscriber"]:
        anyio.run(subscriber, sys.argv[2], sys.argv[3])
        return 0
    try:
        return anyio.run(parent)
    except TimeoutError:
        print(f"FAILED: took over {TIMEOUT} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
