"""The job server (a process of its own) and the client the web workers use to reach it.

The protocol is JSON messages on an aioipc unix stream socket, one frame each:

    request  {"id": 7, "n": 100000}
    reply    {"id": 7, "primes": 9592, "pid": 4242, "seconds": 0.004}
    error    {"id": 7, "error": "n must be an integer in 2..2000000"}

Each uvicorn worker keeps one connection and sends the jobs of all its concurrent
requests on it, so replies are matched to requests by ``id``, never by order. (This
server happens to answer in order, one job at a time; a pool of job processes would not.)

Run by the launcher as ``python -m examples.web.jobs``; it prints ``ready`` on stdout
once it listens, and stops on SIGTERM (it ignores SIGINT; see serve()).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import time
from typing import Any

import anyio

import aioipc

from .state import Names

MAX_N = 10_000_000  # about 0.1 s and 10 MB for the sieve


def count_primes(n: int) -> int:
    """How many primes are below ``n``: the sieve of Eratosthenes, the CPU-bound job."""
    if n < 3:
        return 0
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for p in range(2, math.isqrt(n - 1) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
    return sum(sieve)


def _job(request: Any) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("id"), int):
        return {"id": None, "error": "a request is an object with an integer id"}
    n = request.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= MAX_N:
        return {"id": request["id"], "error": f"n must be an integer in 2..{MAX_N}"}
    started = time.perf_counter()
    # Computed right here, blocking this process's event loop: that is the point of a
    # separate job process. The web workers' loops stay free; jobs queue here, in the
    # socket buffers, one at a time.
    primes = count_primes(n)
    seconds = round(time.perf_counter() - started, 6)
    return {"id": request["id"], "primes": primes, "pid": os.getpid(), "seconds": seconds}


async def _handle(chan: Any) -> None:
    """Serve one web worker's connection until it closes."""
    try:
        async for request in chan:
            await chan.send(_job(request))
    except (anyio.BrokenResourceError, aioipc.ProtocolError) as exc:
        # One worker died or spoke garbage: drop its connection, keep serving the rest
        # (an exception escaping the handler would end serve() for everyone).
        print(f"jobs: dropped a connection: {exc!r}", file=sys.stderr)


async def serve(names: Names) -> None:
    # codec="json": the listener hands out channels that send and receive objects.
    async with await aioipc.listen(f"unix://{names.job_socket}", codec="json") as listener:
        # The launcher waits for this line before it starts uvicorn, so no worker ever
        # tries to connect before the socket exists.
        print("ready", flush=True)
        # Only SIGTERM: Ctrl-C in a terminal reaches every process in the foreground
        # group, and the job server must outlive the uvicorn workers' last requests. The
        # launcher sends SIGTERM once uvicorn has exited.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, _handle)
                async for _ in signals:
                    break
                tg.cancel_scope.cancel()
    # Leaving the block closed the listener, which removed the socket file.


class JobServerGone(Exception):
    """The connection to the job server is lost; no job can be run."""


class JobError(Exception):
    """The job server refused a job."""


class _Waiter:
    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reply: dict[str, Any] | None = None
        self.error: Exception | None = None


class JobClient:
    """One connection to the job server, shared by all the requests of a worker process.

    :meth:`run` (a background task) reads every reply and hands it to the request
    waiting for its id; :meth:`call` sends one job and waits for its reply.
    """

    def __init__(self, chan: Any) -> None:
        self._chan = chan
        # An aioipc channel takes one sender at a time (a second concurrent send raises
        # BusyResourceError), and requests run concurrently.
        self._send_lock = anyio.Lock()
        self._waiting: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._gone: str | None = None

    async def run(self) -> None:
        reason = "the job server closed the connection"
        try:
            async for reply in self._chan:
                if not isinstance(reply, dict):
                    reason = f"the job server sent {reply!r}, not a reply object"
                    break
                job_id = reply.get("id")
                waiter = self._waiting.pop(job_id, None) if isinstance(job_id, int) else None
                if waiter is not None:  # None: that request was cancelled meanwhile
                    waiter.reply = reply
                    waiter.event.set()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            reason = f"the connection to the job server broke: {exc!r}"
        except aioipc.ProtocolError as exc:
            reason = f"the job server sent garbage: {exc}"
        finally:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        # Every request still waiting would otherwise wait for ever.
        self._gone = reason
        for waiter in self._waiting.values():
            waiter.error = JobServerGone(reason)
            waiter.event.set()
        self._waiting.clear()

    async def call(self, n: int) -> dict[str, Any]:
        """Run the job for ``n`` in the job server; its reply.

        Raises:
            JobServerGone: the job server is not reachable (any more).
            JobError: it refused the job.
        """
        if self._gone is not None:
            raise JobServerGone(self._gone)
        job_id = next(self._ids)
        waiter = _Waiter()
        self._waiting[job_id] = waiter
        try:
            async with self._send_lock:
                try:
                    await self._chan.send({"id": job_id, "n": n})
                except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                    raise JobServerGone(f"cannot send to the job server: {exc!r}") from exc
            await waiter.event.wait()
        finally:
            # On cancellation (the HTTP client went away, a timeout) the late reply
            # finds no waiter and is dropped by run().
            self._waiting.pop(job_id, None)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        if "error" in waiter.reply:
            raise JobError(waiter.reply["error"])
        return waiter.reply


def main() -> None:
    anyio.run(serve, Names.from_env())


if __name__ == "__main__":
    main()
