"""The Starlette app; uvicorn runs one copy of it in each worker process.

    GET /count        count this request in the shared counter; {"count", "pid"}
    GET /job?n=N      count the primes below N in the job server; 429 when rate limited
    GET /stats        the shared counters, the limiter and the worker table

Started by ``python -m examples.web.run``, which creates the shared objects first and
names them in ``AIOIPC_WEB_RUN``; each worker only opens them (see state.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aioipc

from .jobs import MAX_N, JobClient, JobError, JobServerGone
from .state import Names, SharedState

JOB_TIMEOUT = 30.0


@dataclass
class Worker:
    """What one worker process opened at startup."""

    shared: SharedState
    slot: int
    jobs: JobClient


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    names = Names.from_env()
    async with AsyncExitStack() as stack:
        region = aioipc.posix.SharedMemory.open(names.shm)
        stack.callback(region.close)  # unmaps; the launcher unlinks the region
        lock = aioipc.Lock.open(names.lock_key)
        stack.push_async_callback(lock.aclose)  # this handle; the launcher removes the lock
        chan = await aioipc.connect(f"unix://{names.job_socket}", codec="json")
        stack.push_async_callback(chan.aclose)
        shared = SharedState(region, lock)
        jobs = JobClient(chan)
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(jobs.run)
        slot = await shared.register(os.getpid())
        try:
            yield {"worker": Worker(shared, slot, jobs)}
        finally:
            # Shielded: uvicorn may be cancelling us, and a slot left "running" would
            # show a stopped worker as alive in /stats.
            with anyio.CancelScope(shield=True):
                await shared.unregister(slot)
            tg.cancel_scope.cancel()


def _worker(request: Request) -> Worker:
    worker: Worker = request.state.worker
    return worker


async def count(request: Request) -> JSONResponse:
    worker = _worker(request)
    n = await worker.shared.hit(worker.slot)
    return JSONResponse({"count": n, "pid": os.getpid()})


async def job(request: Request) -> JSONResponse:
    worker = _worker(request)
    try:
        n = int(request.query_params["n"])
    except (KeyError, ValueError):
        return JSONResponse({"error": "give ?n=INTEGER"}, status_code=400)
    if not 2 <= n <= MAX_N:
        return JSONResponse({"error": f"n must be in 2..{MAX_N}"}, status_code=400)
    wait = await worker.shared.take_token()
    if wait:
        return JSONResponse(
            # Rounded up: a wait of 0.0004 s is still a wait.
            {"error": "rate limited", "retry_after": math.ceil(wait * 1000) / 1000},
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait))},
        )
    try:
        with anyio.fail_after(JOB_TIMEOUT):
            reply = await worker.jobs.call(n)
    except JobError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except JobServerGone as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    except TimeoutError:
        return JSONResponse({"error": "the job took too long"}, status_code=504)
    return JSONResponse(
        {
            "n": n,
            "primes": reply["primes"],
            "pid": os.getpid(),
            "job_pid": reply["pid"],
            "job_seconds": reply["seconds"],
        }
    )


async def stats(request: Request) -> JSONResponse:
    snapshot = await _worker(request).shared.snapshot()
    return JSONResponse({**snapshot, "pid": os.getpid()})


app = Starlette(
    routes=[Route("/count", count), Route("/job", job), Route("/stats", stats)],
    lifespan=lifespan,
)
