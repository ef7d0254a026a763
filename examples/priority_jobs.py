"""A priority job queue on POSIX message queues, with three worker processes.

The producer creates two queues, ``/aioipc-jobs-<pid>`` and ``/aioipc-results-<pid>``,
and submits every job, each with a priority, before the workers start. The kernel hands
out the highest priority first (oldest first within a priority), so each worker takes
its jobs in falling priority. Workers report on the results queue and stop at a poison
pill, one per worker, sent at priority 0, below every job: a worker can only get a pill
once no job is left.

    python examples/priority_jobs.py        # the demo; exits 0 if every job ran once

Waiting on a POSIX queue needs no thread: its descriptor is an fd the event loop polls.
A full queue makes ``send`` wait (backpressure): the jobs queue holds 10 messages, and
the last pills wait for room. The producer unlinks both queues at the end, and on any
error; the workers' open handles would keep working after an unlink.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import Process

import aioipc
from aioipc.posix import MessageQueue

WORKERS = 3
CAPACITY = 10  # /proc/sys/fs/mqueue/msg_max: the most an unprivileged process may ask
MESSAGE_SIZE = 1024
PILL = b"stop"
PILL_PRIORITY = 0
TIMEOUT = 30.0


@dataclass(frozen=True)
class Job:
    id: int
    priority: int  # 1..PRIORITY_MAX; 0 is the pills'
    limit: int  # the work: count the primes below this


JOBS = [
    Job(1, 3, 20_000),
    Job(2, 9, 50_000),
    Job(3, 1, 10_000),
    Job(4, 5, 30_000),
    Job(5, 9, 40_000),
    Job(6, 2, 25_000),
    Job(7, 7, 60_000),
    Job(8, 5, 15_000),
    Job(9, 4, 35_000),
]


def count_primes(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\0\0"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return sum(sieve)


# -- worker -------------------------------------------------------------------------------


async def worker(number: int, jobs_name: str, results_name: str) -> None:
    """Take jobs, highest priority first, until a pill; report each on the results queue."""
    # Each handle only in the direction it needs.
    jobs = MessageQueue.open(jobs_name, write=False)
    async with jobs, MessageQueue.open(results_name, read=False) as results:
        taken = 0
        while True:
            data, priority = await jobs.receive_message()
            if data == PILL:
                return
            taken += 1
            job = json.loads(data)
            await anyio.sleep(0.05)  # stands for I/O, so that all three workers get a turn
            report = {
                "job": job["id"],
                "priority": priority,
                "worker": number,
                "pid": os.getpid(),
                "nth": taken,  # this worker's count: its jobs in the order it took them
                "result": count_primes(job["limit"]),
                "limit": job["limit"],
            }
            await results.send(json.dumps(report).encode())


# -- producer -----------------------------------------------------------------------------


def unlink_quietly(name: str) -> None:
    with contextlib.suppress(aioipc.IPCNotFoundError):
        aioipc.posix.unlink_message_queue(name)


async def collect(results: MessageQueue, count: int, reports: list[dict[str, Any]]) -> None:
    for _ in range(count):
        report = json.loads(await results.receive())
        reports.append(report)
        print(
            f"  worker {report['worker']} (pid {report['pid']}): job {report['job']}"
            f" (priority {report['priority']}): {report['result']} primes below {report['limit']}",
            flush=True,
        )


def check(reports: list[dict[str, Any]]) -> list[str]:
    """Every job done exactly once, and each worker took its jobs in falling priority."""
    problems = []
    done = Counter(r["job"] for r in reports)
    for job in JOBS:
        if done[job.id] != 1:
            problems.append(f"job {job.id} was done {done[job.id]} times")
    unknown = set(done) - {job.id for job in JOBS}
    if unknown:
        problems.append(f"reports for jobs never submitted: {sorted(unknown)}")
    by_worker: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in reports:
        by_worker[r["worker"]].append(r)
    for number, mine in sorted(by_worker.items()):
        priorities = [r["priority"] for r in sorted(mine, key=lambda r: r["nth"])]
        if priorities != sorted(priorities, reverse=True):
            problems.append(f"worker {number} took priorities in the order {priorities}")
    return problems


async def demo() -> int:
    pid = os.getpid()
    jobs_name, results_name = f"/aioipc-jobs-{pid}", f"/aioipc-results-{pid}"
    procs: list[Process] = []
    started = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Register each unlink as soon as the queue exists, so that nothing outlives us.
            jobs = MessageQueue.create(
                jobs_name, max_messages=CAPACITY, max_message_size=MESSAGE_SIZE
            )
            stack.callback(unlink_quietly, jobs_name)
            await stack.enter_async_context(jobs)
            results = MessageQueue.create(
                results_name, max_messages=CAPACITY, max_message_size=MESSAGE_SIZE
            )
            stack.callback(unlink_quietly, results_name)
            await stack.enter_async_context(results)
            print(f"producer (pid {pid}): queues {jobs_name} and {results_name}", flush=True)

            with anyio.fail_after(TIMEOUT):
                for job in JOBS:
                    message = {"id": job.id, "limit": job.limit}
                    await jobs.send(json.dumps(message).encode(), priority=job.priority)
                print(
                    f"producer: submitted {len(JOBS)} jobs, {jobs.current_messages} waiting"
                    f" (priorities in submission order: {[j.priority for j in JOBS]})",
                    flush=True,
                )
                for number in range(1, WORKERS + 1):
                    procs.append(
                        await anyio.open_process(
                            [
                                sys.executable,
                                __file__,
                                "worker",
                                str(number),
                                jobs_name,
                                results_name,
                            ],
                            stdin=None,
                            stdout=None,
                            stderr=None,
                        )
                    )
                print(f"producer: started {WORKERS} workers; results as they come:", flush=True)

                reports: list[dict[str, Any]] = []
                problems: list[str] = []
                async with anyio.create_task_group() as tg:

                    async def send_pills() -> None:
                        # Below every job; once the queue holds CAPACITY messages, send waits.
                        for _ in range(WORKERS):
                            await jobs.send(PILL, priority=PILL_PRIORITY)

                    async def watch(number: int, proc: Process) -> None:
                        # A job a dying worker had taken is gone with it (a message queue
                        # has no acknowledgements), so stop rather than wait for it.
                        if await proc.wait() != 0:
                            problems.append(f"worker {number} exited with {proc.returncode}")
                            tg.cancel_scope.cancel()

                    for number, proc in enumerate(procs, 1):
                        tg.start_soon(watch, number, proc)
                    tg.start_soon(send_pills)
                    await collect(results, len(JOBS), reports)

        # Both queues are unlinked (and closed) here.
        if not problems:  # (after a dead worker, the missing jobs go without saying)
            problems = check(reports)
        for number in range(1, WORKERS + 1):
            mine = [
                r["job"] for r in sorted(reports, key=lambda r: r["nth"]) if r["worker"] == number
            ]
            print(f"worker {number} did jobs {mine}")
        if problems:
            print("FAILED: " + "; ".join(problems))
            return 1
        elapsed = time.monotonic() - started
        print(
            f"all {len(JOBS)} jobs done exactly once, each worker highest priority first;"
            f" queues unlinked ({elapsed:.2f} s)"
        )
        return 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()


def main() -> int:
    if sys.argv[1:2] == ["worker"]:
        number, jobs_name, results_name = sys.argv[2:5]
        anyio.run(worker, int(number), jobs_name, results_name)
        return 0
    if len(sys.argv) > 1:
        print(f"usage: {sys.argv[0]}   (runs the demo)", file=sys.stderr)
        return 2
    try:
        return anyio.run(demo)
    except TimeoutError:
        print(f"FAILED: the demo took over {TIMEOUT} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
