"""examples/web for real: the launcher, uvicorn with 4 workers, the job server.

Each test starts ``python -m examples.web.run`` in its own session, loads it, stops it
with SIGTERM and checks that the run left nothing behind: no /dev/shm entry, no SysV
semaphore, no socket file, no directory, no process.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import aioipc
from aioipc.testing import IPCSnapshot

from ._procs import session_members

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from examples.web.client import get_json, http_get  # noqa: E402  (after the skips)

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20  # 4 workers each import starlette, uvicorn and aioipc on 2 cores
STOP_TIMEOUT = 15

# pi(n), the number of primes below n, known independently of any code here.
KNOWN_PRIMES = {10: 4, 100: 25, 1_000: 168, 10_000: 1229, 100_000: 9592, 1_000_000: 78498}


@functools.cache
def primes_below(n: int) -> int:
    """pi(n) by trial division against the primes found so far: slow, but not the
    example's sieve, so the two cannot share a mistake. Only used for small n."""
    if n in KNOWN_PRIMES:
        return KNOWN_PRIMES[n]
    found: list[int] = []
    for k in range(2, n):
        root = math.isqrt(k)
        if all(k % p for p in found if p <= root):
            found.append(k)
    return len(found)


def job_sizes(count: int, rng: random.Random) -> list[int]:
    """Job sizes: the known values of pi, and a few small random ones."""
    extra = [rng.randrange(2, 3000) for _ in range(6)]
    return [rng.choice([*KNOWN_PRIMES, *extra]) for _ in range(count)]


def free_port() -> int:
    # Racy (the port is free now, not necessarily when uvicorn binds), which is the
    # usual trade-off; a clash shows as a start failure with uvicorn's message.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sem_keys() -> set[int]:
    lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    return {int(f[0]) & 0xFFFFFFFF for f in map(str.split, lines) if f}


@dataclass
class Launch:
    process: anyio.abc.Process
    tmp: Path
    run: str = ""
    where: str = ""
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)

    @property
    def key(self) -> int:
        return int(self.run, 16)

    @property
    def run_dir(self) -> Path:
        return self.tmp / f"aioipc-web-{self.run}"

    def output(self) -> str:
        return f"stdout:\n{self.out.decode()}\nstderr:\n{self.err.decode()}"


async def _drain(stream: anyio.abc.ByteReceiveStream | None, into: bytearray) -> None:
    assert stream is not None
    async for chunk in stream:
        into += chunk


async def _poll(what: str, attempt: Callable[[], Awaitable[bool]], launch: Launch) -> None:
    """Retry ``attempt`` until it returns True, for at most START_TIMEOUT seconds.

    Nothing signals that every uvicorn worker is serving, so this asks /stats (which
    lists the workers that have started) every 0.1 s.
    """
    try:
        with anyio.fail_after(START_TIMEOUT):
            while not await attempt():
                if launch.process.returncode is not None:
                    pytest.fail(f"the launcher exited early\n{launch.output()}")
                await anyio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"{what} not within {START_TIMEOUT} s\n{launch.output()}")


@asynccontextmanager
async def launched(tmp: Path, *args: str) -> AsyncIterator[Launch]:
    """Run the launcher in its own session with TMPDIR=tmp; stop it with SIGTERM at the
    end and check that its run left nothing behind."""
    before = IPCSnapshot.take(tmp)
    process = await anyio.open_process(
        [sys.executable, "-m", "examples.web.run", *args],
        cwd=ROOT,
        # A private, short TMPDIR: the run's directory and socket files go there (a
        # socket path must fit in 108 bytes), and nothing else writes to it.
        env={**os.environ, "TMPDIR": str(tmp)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    launch = Launch(process, tmp)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, launch.out)
            tg.start_soon(_drain, process.stderr, launch.err)

            async def started() -> bool:
                await anyio.lowlevel.checkpoint()
                text = launch.out.decode()
                run = re.search(r"run ([0-9a-f]{8}): shared memory", text)
                where = re.search(r"workers on (\S+)", text)
                if run and where:
                    launch.run, launch.where = run.group(1), where.group(1)
                return bool(run and where)

            await _poll("the launcher's start message", started, launch)
            # Not a vacuous check later: the run's objects exist while it runs.
            assert await anyio.Path(f"/dev/shm/aioipc-web-{launch.run}").exists()
            assert launch.key in _sem_keys()
            assert await anyio.Path(launch.run_dir / "jobs.sock").is_socket()
            try:
                yield launch
            finally:
                # Also when the test failed: the run must clean up after itself anyway.
                process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(STOP_TIMEOUT):
                    await process.wait()
                # The pipes close when the last process holding them exits; a process
                # left behind would keep them open, so stop reading after a while.
                tg.cancel_scope.deadline = anyio.current_time() + 5
    finally:
        stuck = process.returncode is None
        left = session_members(process.pid)
        if stuck or left:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert not stuck, f"the launcher did not stop on SIGTERM\n{launch.output()}"
    assert not left, f"processes outlived the launcher: {left}\n{launch.output()}"
    assert process.returncode == 0, launch.output()
    assert f"run {launch.run} removed" in launch.out.decode(), launch.output()
    assert "Traceback" not in launch.err.decode(), launch.output()
    new = IPCSnapshot.take(tmp).new_since(before)
    # Other test runs on this machine may create objects meanwhile: only ours count.
    ours = [o for o in new if launch.run in o or str(tmp) in o or f"{launch.key:#x}" in o]
    assert not ours, f"left behind: {ours}"
    assert not await anyio.Path(f"/dev/shm/aioipc-web-{launch.run}").exists()
    assert launch.key not in _sem_keys(), f"the lock {launch.key:#x} was not removed"
    assert not await anyio.Path(launch.run_dir).exists(), f"{launch.run_dir} left behind"


async def _all_workers_up(get_stats: Callable[[], Awaitable[Any]], workers: int) -> bool:
    try:
        stats = await get_stats()
    except (httpx.TransportError, aioipc.IPCError, OSError, ValueError):
        return False  # not listening yet, or a worker was shutting the connection
    return sum(bool(w["running"]) for w in stats["workers"]) == workers


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_web_workers_share_state_over_tcp(short_tmp: Path) -> None:
    port = free_port()
    burst, rate = 40, 20
    args = ["--port", str(port), "--workers", "4", "--job-burst", str(burst)]
    async with launched(short_tmp, *args, "--job-rate", str(rate)) as launch:
        assert launch.where == f"http://127.0.0.1:{port}"
        # No keep-alive: each request is a new connection, accepted by whichever
        # worker wins it; a kept-alive connection would stay with one worker.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=launch.where, limits=limits, timeout=10) as web:

            async def get_stats() -> Any:
                return (await web.get("/stats")).raise_for_status().json()

            await _poll("4 workers", lambda: _all_workers_up(get_stats, 4), launch)

            rng = random.Random(5)
            plan: list[int | None] = [None] * 240 + job_sizes(120, rng)  # None = /count
            rng.shuffle(plan)
            counts: list[dict[str, Any]] = []
            jobs: list[tuple[int, int, dict[str, Any]]] = []

            async def client(share: list[int | None]) -> None:
                for n in share:
                    if n is None:
                        r = await web.get("/count")
                        assert r.status_code == 200, r.text
                        counts.append(r.json())
                    else:
                        r = await web.get("/job", params={"n": n})
                        jobs.append((n, r.status_code, r.json()))

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(client, plan[i::8])
            elapsed = time.monotonic() - started
            stats = await get_stats()

    # The shared counter saw every /count, whichever worker served it.
    assert stats["count"] == len(counts) == 240
    assert sorted(c["count"] for c in counts) == list(range(1, 241))
    pids = {c["pid"] for c in counts}
    assert len(pids) > 1, f"all /count requests went to one worker: {pids}"
    served = {w["pid"]: w["served"] for w in stats["workers"]}
    assert pids <= set(served)
    assert sum(served.values()) == 240
    # Every admitted job has the right answer, from the one job server.
    done = [(n, body) for n, status, body in jobs if status == 200]
    limited = [body for _, status, body in jobs if status == 429]
    assert len(done) + len(limited) == 120, [j for j in jobs if j[1] not in (200, 429)]
    for n, body in done:
        assert body["primes"] == primes_below(n), (n, body)
    assert len({body["job_pid"] for _, body in done}) == 1
    # One limiter for all workers: a full bucket of `burst`, plus what it refilled
    # during the load. Four separate limiters would have let up to 4 * burst through.
    assert stats["jobs_admitted"] == len(done)
    assert stats["jobs_limited"] == len(limited)
    assert burst <= len(done) <= burst + rate * elapsed + 1, (len(done), elapsed)
    assert all(body["retry_after"] > 0 for body in limited)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_web_on_a_unix_socket_with_the_aioipc_client(short_tmp: Path) -> None:
    async with launched(short_tmp, "--uds", "--workers", "4") as launch:
        path = launch.where
        assert path == str(launch.run_dir / "http.sock")
        # uvicorn makes the socket 0666; the run's directory (0700) is what guards it.
        assert (await anyio.Path(launch.run_dir).stat()).st_mode & 0o777 == 0o700

        async def get_stats() -> Any:
            status, body = await get_json(path, "/stats")
            assert status == 200, body
            return body

        await _poll("4 workers", lambda: _all_workers_up(get_stats, 4), launch)

        status, headers, raw = await http_get(path, "/count")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(raw)

        results: list[tuple[int, int, Any]] = []
        sizes = job_sizes(12, random.Random(6))

        async def client(share: list[int]) -> None:
            for n in share:
                status, body = await get_json(path, "/count")
                results.append((0, status, body))
                status, body = await get_json(path, f"/job?n={n}")
                results.append((n, status, body))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(client, sizes[i::4])
        status, missing = await get_json(path, "/job?n=oops")
        assert status == 400, missing
        stats = await get_stats()

    assert all(status == 200 for _, status, _ in results), results
    assert stats["count"] == 1 + 12
    for n, _, body in results:
        if n:
            assert body["primes"] == primes_below(n), (n, body)
    assert stats["jobs_admitted"] == 12
    assert stats["jobs_limited"] == 0
