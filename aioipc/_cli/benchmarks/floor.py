#!/usr/bin/env python3
"""The Python floors of a round trip between two processes, beside floor.c's C floor.

Both ping-pong over two eventfds between a parent and a forked child, as floor.c does:

``rtt-blocking``
    blocking ``os.eventfd_read``/``os.eventfd_write`` (the interpreter, no event loop);
``rtt-asyncio``
    the leanest asyncio version: each side keeps one reader callback registered on its
    eventfd and awaits a future it sets (what any asyncio library does at the bottom).

Usage: ``floor.py MODE WARMUP COUNT [PINGER_CPU ECHOER_CPU]``; prints
``rtt_median_us=`` and ``rtt_p99_us=`` lines like floor.c.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


async def _asyncio_side(wait_fd: int, post_fd: int, rounds: int, timed: bool) -> list[int]:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] | None = None

    def readable() -> None:
        os.eventfd_read(wait_fd)
        if fut is not None and not fut.done():
            fut.set_result(None)

    loop.add_reader(wait_fd, readable)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        fut = loop.create_future()
        if timed:
            start = clock()
            os.eventfd_write(post_fd, 1)
            await fut
            samples.append(clock() - start)
        else:
            await fut
            os.eventfd_write(post_fd, 1)
    loop.remove_reader(wait_fd)
    return samples


def main(argv: list[str]) -> int:
    mode, warmup, count = argv[0], int(argv[1]), int(argv[2])
    pinger, echoer = (int(argv[3]), int(argv[4])) if len(argv) >= 5 else (None, None)
    ping = os.eventfd(0, os.EFD_CLOEXEC)
    pong = os.eventfd(0, os.EFD_CLOEXEC)
    total = warmup + count
    child = os.fork()
    if child == 0:
        try:
            _pin(echoer)
            if mode == "rtt-blocking":
                for _ in range(total):
                    os.eventfd_read(ping)
                    os.eventfd_write(pong, 1)
            else:
                asyncio.run(_asyncio_side(ping, pong, total, timed=False))
        finally:
            os._exit(0)
    _pin(pinger)
    clock = time.perf_counter_ns
    if mode == "rtt-blocking":
        samples = []
        for _ in range(total):
            start = clock()
            os.eventfd_write(ping, 1)
            os.eventfd_read(pong)
            samples.append(clock() - start)
    else:
        samples = asyncio.run(_asyncio_side(pong, ping, total, timed=True))
    _, status = os.waitpid(child, 0)
    if status != 0:
        print("the echo process failed", file=sys.stderr)
        return 1
    timed = sorted(samples[warmup:])
    print(f"rtt_median_us={statistics.median(timed) / 1000:.3f}")
    print(f"rtt_p99_us={timed[min(len(timed) - 1, int(len(timed) * 0.99))] / 1000:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
