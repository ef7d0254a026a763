"""The launcher: creates the shared objects, starts the job server and uvicorn, and
removes everything when it stops (SIGTERM, Ctrl-C, or a child that died).

    python -m examples.web.run                      # http://127.0.0.1:8000, 4 workers
    python -m examples.web.run --port 0 --workers 2
    python -m examples.web.run --uds                # on a unix socket; see client.py

Run it from the repository root (uvicorn imports ``examples.web.app``).

uvicorn's own ``--workers`` supervisor starts the worker processes; a uvicorn worker
cannot own the shared objects (each one starts and stops on its own, and uvicorn
restarts crashed ones), so this process creates them before uvicorn starts and removes
them after uvicorn and the job server have exited.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc

import aioipc

from .state import ENV, SIZE, Names, SharedState

ROOT = Path(__file__).resolve().parents[2]  # the repository: uvicorn's --app-dir
STOP_TIMEOUT = 10.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.web.run", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--uds", action="store_true", help="serve on a unix socket instead")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--job-rate", type=float, default=50.0, help="jobs per second, all workers")
    p.add_argument("--job-burst", type=float, default=100.0, help="jobs allowed at once")
    return p.parse_args(argv)


async def _create(stack: AsyncExitStack) -> tuple[Names, aioipc.SharedMemoryRegion]:
    """Create the run's directory, region and lock under a fresh run id.

    Every create is exclusive: a name that exists already (another run, or what a
    SIGKILLed one left) is never adopted; we draw another run id. Each object is
    registered for removal the moment it exists, so a failure half-way removes what
    was made.
    """
    for _ in range(10):
        names = Names.new()
        async with AsyncExitStack() as attempt:
            try:
                names.run_dir.mkdir(mode=0o700)
                attempt.callback(shutil.rmtree, names.run_dir, ignore_errors=True)
                region = aioipc.posix.SharedMemory.create(names.shm, SIZE)
                attempt.callback(aioipc.posix.unlink_shared_memory, names.shm)
                attempt.callback(region.close)
                lock = aioipc.Lock.create(names.lock_key)
                attempt.push_async_callback(lock.aclose)
                attempt.callback(lock.remove)
            except (FileExistsError, aioipc.IPCExistsError):
                continue  # leaving the block removes this attempt's objects
            # Made it: from now on the objects are the caller's to remove.
            stack.push_async_exit(attempt.pop_all())
            return names, region
    raise RuntimeError("no free run id after 10 tries")


async def _stop(process: anyio.abc.Process, what: str) -> None:
    """SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                print(f"launcher: {what} ignored SIGTERM; killing it", file=sys.stderr)
                process.kill()
                await process.wait()


async def _wait_ready(jobs: anyio.abc.Process) -> None:
    assert jobs.stdout is not None
    line = b""
    with anyio.fail_after(10):
        async for chunk in jobs.stdout:
            line += chunk
            if b"\n" in line:
                break
    if line.strip() != b"ready":
        raise RuntimeError(f"the job server did not start (it said {line!r})")


async def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    async with AsyncExitStack() as stack:
        names, region = await _create(stack)
        SharedState.initialise(region, rate=args.job_rate, burst=args.job_burst)
        env = {**os.environ, ENV: names.run}
        print(
            f"launcher {os.getpid()}: run {names.run}: shared memory {names.shm}, "
            f"lock key {names.lock_key:#010x}, job socket {names.job_socket}",
            flush=True,
        )

        jobs = await anyio.open_process(
            [sys.executable, "-m", "examples.web.jobs"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        stack.push_async_callback(_stop, jobs, "the job server")
        await _wait_ready(jobs)

        if args.uds:
            where = ["--uds", str(names.http_socket)]
        else:
            where = ["--host", args.host, "--port", str(args.port)]
        uvicorn = await anyio.open_process(
            [
                *[sys.executable, "-m", "uvicorn", "examples.web.app:app"],
                *["--app-dir", str(ROOT), "--workers", str(args.workers)],
                *["--no-access-log", "--log-level", "warning", *where],
            ],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
        )
        # Pushed last, so run first: uvicorn's workers finish their requests, which may
        # still be waiting for the job server, before the job server is stopped.
        stack.push_async_callback(_stop, uvicorn, "uvicorn")
        print(
            f"launcher: uvicorn {uvicorn.pid} with {args.workers} workers on "
            + (str(names.http_socket) if args.uds else f"http://{args.host}:{args.port}"),
            flush=True,
        )

        status = 0
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    async for signum in signals:
                        print(f"launcher: {signal.Signals(signum).name}, stopping", flush=True)
                        break
                    tg.cancel_scope.cancel()

                async def on_exit(process: anyio.abc.Process, what: str) -> None:
                    nonlocal status
                    code = await process.wait()
                    print(f"launcher: {what} exited ({code}), stopping", file=sys.stderr)
                    # Ctrl-C in a terminal reaches uvicorn too (the whole foreground
                    # process group), and it then exits 0 on its own: not a failure.
                    status = 1 if code else 0
                    tg.cancel_scope.cancel()

                tg.start_soon(on_signal)
                tg.start_soon(on_exit, uvicorn, "uvicorn")
                tg.start_soon(on_exit, jobs, "the job server")
    # The exit stack has stopped uvicorn, then the job server, then removed the lock, the
    # region and the directory (with the socket files in it), in that order.
    print(f"launcher: run {names.run} removed", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(anyio.run(main))
