"""What the launcher, the uvicorn workers and the job server agree on.

* :class:`Names`: every shared object's name, derived from one run id that the launcher
  chooses and passes down in ``AIOIPC_WEB_RUN``. Two runs never share an object, and a
  leftover object can be traced to its run.
* :class:`SharedState`: the counters, the rate limiter and the worker table that every
  uvicorn worker reads and writes, in one POSIX shared-memory region guarded by one
  ``aioipc.Lock``.
"""

from __future__ import annotations

import os
import secrets
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioipc

ENV = "AIOIPC_WEB_RUN"


@dataclass(frozen=True)
class Names:
    """The names of one run's shared objects."""

    run: str  # 8 hex digits, also the SysV key of the lock

    @classmethod
    def new(cls) -> Names:
        # A key in 1..2**31-1: never IPC_PRIVATE (0), and positive, so that it reads the
        # same in ipcs, /proc/sysvipc and Python.
        return cls(f"{secrets.randbelow(2**31 - 1) + 1:08x}")

    @classmethod
    def from_env(cls) -> Names:
        try:
            return cls(os.environ[ENV])
        except KeyError:
            raise RuntimeError(
                f"{ENV} is not set: start the app with `python -m examples.web.run`, which "
                "creates the shared objects, starts the job server and then uvicorn"
            ) from None

    @property
    def shm(self) -> str:
        return f"/aioipc-web-{self.run}"

    @property
    def lock_key(self) -> int:
        return int(self.run, 16)

    @property
    def run_dir(self) -> Path:
        # A private directory (0700) for the socket files: uvicorn makes its --uds socket
        # world-writable (0666), so only the directory keeps other users out.
        return Path(tempfile.gettempdir()) / f"aioipc-web-{self.run}"

    @property
    def job_socket(self) -> Path:
        return self.run_dir / "jobs.sock"

    @property
    def http_socket(self) -> Path:
        return self.run_dir / "http.sock"


# The region's layout. Every field has a fixed offset; all of them are read and written
# only while holding the lock, so no field is ever seen half-updated.
_MAGIC = b"aioipcWB"
_HEADER = struct.Struct("=8s Q Q Q d d d d")  # magic, count, admitted, limited, 4 doubles
_SLOT = struct.Struct("=I I Q")  # pid, running, requests served by /count
MAX_WORKERS = 64
SIZE = _HEADER.size + MAX_WORKERS * _SLOT.size


@dataclass
class _Header:
    count: int  # GET /count requests, all workers together
    admitted: int  # jobs the rate limiter let through
    limited: int  # jobs it refused (429)
    tokens: float  # the token bucket: jobs that may start now
    refilled: float  # CLOCK_MONOTONIC time of the last refill
    rate: float  # tokens added per second
    burst: float  # the bucket's size


class SharedState:
    """The counters and the rate limiter, shared by every worker process.

    One ``aioipc.Lock`` guards the whole region. It is a System V semaphore taken with
    SEM_UNDO: a worker killed while holding it (SIGKILL, OOM) does not leave the other
    workers waiting for ever; the kernel gives the lock back at its exit.
    """

    def __init__(self, region: aioipc.SharedMemoryRegion, lock: aioipc.Lock) -> None:
        if region.size < SIZE or bytes(region.buf[:8]) != _MAGIC:
            raise RuntimeError(f"{region!r} is not this example's state (or not initialised)")
        self._region = region
        self._lock = lock

    @staticmethod
    def initialise(region: aioipc.SharedMemoryRegion, *, rate: float, burst: float) -> None:
        """Write a fresh header; the launcher does it before any worker exists."""
        header = _Header(0, 0, 0, burst, time.monotonic(), rate, burst)
        _write_header(region.buf, header, magic=b"\0" * 8)
        # The magic goes last, so a region whose initialisation failed half-way is refused.
        region.buf[:8] = _MAGIC

    def _read(self) -> _Header:
        _, *fields = _HEADER.unpack_from(self._region.buf, 0)
        return _Header(*fields)

    def _write(self, header: _Header) -> None:
        _write_header(self._region.buf, header, magic=_MAGIC)

    def _slot(self, index: int) -> tuple[int, int, int]:
        pid, running, served = _SLOT.unpack_from(self._region.buf, _slot_offset(index))
        return pid, running, served

    def _set_slot(self, index: int, pid: int, running: int, served: int) -> None:
        _SLOT.pack_into(self._region.buf, _slot_offset(index), pid, running, served)

    async def register(self, pid: int) -> int:
        """Take a slot in the worker table for ``pid`` (a free one, or a dead worker's)."""
        async with self._lock:
            for i in range(MAX_WORKERS):
                old, running, _ = self._slot(i)
                # uvicorn replaces a crashed worker; its slot (never marked stopped) is
                # reused, which keeps the table from filling up over a long run.
                if old == 0 or (running and not _alive(old)):
                    self._set_slot(i, pid, 1, 0)
                    return i
        raise RuntimeError(f"more than {MAX_WORKERS} workers")

    async def unregister(self, slot: int) -> None:
        """Mark this worker stopped; its served count stays, so the totals still add up."""
        async with self._lock:
            pid, _, served = self._slot(slot)
            self._set_slot(slot, pid, 0, served)

    async def hit(self, slot: int) -> int:
        """Count one GET /count, in the total and in this worker's slot; the new total."""
        async with self._lock:
            header = self._read()
            header.count += 1
            self._write(header)
            pid, running, served = self._slot(slot)
            self._set_slot(slot, pid, running, served + 1)
            return header.count

    async def take_token(self) -> float:
        """The rate limiter: 0.0 if a job may start now, else seconds until one may.

        A token bucket shared by all workers: refilled at ``rate`` per second up to
        ``burst``. CLOCK_MONOTONIC is one clock for the whole machine, so the time one
        worker stored is meaningful to the next.
        """
        async with self._lock:
            header = self._read()
            now = time.monotonic()
            elapsed = max(0.0, now - header.refilled)
            header.tokens = min(header.burst, header.tokens + elapsed * header.rate)
            header.refilled = now
            if header.tokens >= 1.0:
                header.tokens -= 1.0
                header.admitted += 1
                wait = 0.0
            else:
                header.limited += 1
                wait = (1.0 - header.tokens) / header.rate if header.rate > 0 else 60.0
            self._write(header)
            return wait

    async def snapshot(self) -> dict[str, Any]:
        """Everything at one instant (taken under the lock, so the numbers agree)."""
        async with self._lock:
            header = self._read()
            slots = [self._slot(i) for i in range(MAX_WORKERS)]
        workers = [
            {"pid": pid, "running": bool(running), "served": served}
            for pid, running, served in slots
            if pid
        ]
        return {
            "count": header.count,
            "jobs_admitted": header.admitted,
            "jobs_limited": header.limited,
            "tokens": round(header.tokens, 3),
            "rate": header.rate,
            "burst": header.burst,
            "workers": workers,
        }


def _write_header(buf: memoryview, header: _Header, *, magic: bytes) -> None:
    _HEADER.pack_into(
        buf,
        0,
        magic,
        header.count,
        header.admitted,
        header.limited,
        header.tokens,
        header.refilled,
        header.rate,
        header.burst,
    )


def _slot_offset(index: int) -> int:
    return _HEADER.size + index * _SLOT.size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
