"""Round trip of a 64-byte ping-pong over the shared-memory duplex channel against the
unix:// stream socket, in one run: one process per side (this process is the client,
a child started with this script's ``--serve URL`` echoes), interleaved rounds.

    .venv/bin/python benchmarks/duplex_rtt.py [--count 20000] [--rounds 3]

Read the ratios, not the absolute numbers (benchmarks/README.md: on a small VM a round
trip is mostly scheduling). Not part of the `aioipc bench` matrix (yet).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

import aioipc

SIZE = 64


async def serve(url: str) -> None:
    async with await aioipc.listen(url, expect="listener") as listener:
        print("ready", flush=True)
        async with await listener.accept() as chan:
            async for message in chan:
                await chan.send(message)


async def ping(url: str, count: int) -> list[int]:
    async with await aioipc.connect(url, expect="two-way") as chan:
        payload = bytes(SIZE)
        for _ in range(count // 10):  # warm up
            await chan.send(payload)
            await chan.receive()
        times = []
        clock = time.perf_counter_ns
        for _ in range(count):
            start = clock()
            await chan.send(payload)
            await chan.receive()
            times.append(clock() - start)
        return times


def measure(url: str, count: int) -> list[int]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        return anyio.run(ping, url, count)
    finally:
        child.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve, args.serve)
        return
    tmp = tempfile.mkdtemp(prefix="aioipc-rtt-")
    tag = uuid.uuid4().hex[:8]
    urls = {
        "shm+duplex": f"shm+duplex://aioipc-bench-duplex-{tag}",
        "shm+duplex spin=50us": f"shm+duplex://aioipc-bench-duplex-{tag}?spin=50e-6",
        "unix:// stream": f"unix://{tmp}/s.sock",
    }
    results: dict[str, list[int]] = {k: [] for k in urls}
    try:
        for _ in range(args.rounds):
            for name, url in urls.items():
                results[name] += measure(url, args.count)
    finally:
        os.rmdir(tmp)
    base = statistics.median(results["unix:// stream"])
    print(f"64 B ping-pong, {args.rounds} x {args.count} round trips, one process per side")
    print(f"{'transport':24} {'median us':>10} {'p99 us':>8} {'vs unix':>8}")
    for name, times in results.items():
        times.sort()
        median = statistics.median(times)
        p99 = times[int(len(times) * 0.99)]
        print(f"{name:24} {median / 1e3:10.1f} {p99 / 1e3:8.1f} {base / median:7.2f}x")


if __name__ == "__main__":
    main()
