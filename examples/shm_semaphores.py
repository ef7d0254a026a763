"""A writer and a reader over one System V shared-memory segment and two semaphores.

The textbook lesson, async: the segment holds one line of text at a time, and a set of
two semaphores says whose turn it is. "writable" (1 at the start) lets the writer fill
the segment; "readable" (0 at the start) lets the reader print it. Each side only takes
its own semaphore and gives the other's, so neither ever sees a half-written line. The
line "end" stops both.

    python examples/shm_semaphores.py        # the writer; it starts the reader itself

Both processes find the objects through the same key, ``aioipc.ftok(<this file>, "S")``,
computed independently: that is what ftok is for. The segment and the semaphore set
share the key (each kind of System V object has its own key space). ``ipcs -m -s``
shows them while the demo runs; the writer removes both at the end, also on error. Only
a SIGKILLed writer leaves them behind: ``ipcrm -M <key> -S <key>`` removes them.
"""

from __future__ import annotations

import contextlib
import os
import sys

import anyio
from anyio.abc import Process

import aioipc
from aioipc.sysv import SemaphoreSet, SharedMemory

SIZE = 4096
READABLE, WRITABLE = 0, 1  # indices in the semaphore set
LINES = [
    "Shared memory is the fastest IPC there is:",
    "the reader sees the writer's bytes without a copy through the kernel.",
    "But it has no notion of whose turn it is,",
    "so two semaphores take turns for it.",
    "end",
]
TIMEOUT = 10.0


def key() -> int:
    return aioipc.ftok(__file__, ord("S"))


def put_line(buf: memoryview, line: str) -> None:
    data = line.encode() + b"\0"  # NUL-terminated, as a C reader would expect
    buf[: len(data)] = data


def get_line(buf: memoryview) -> str:
    return buf.tobytes().partition(b"\0")[0].decode()


async def reader() -> None:
    # undo=False: these semaphores are signals, not locks, so the kernel must not take
    # back at our exit what we gave (SEM_UNDO would do that).
    sems = SemaphoreSet.open(key(), undo=False)
    try:
        with SharedMemory.open(key(), read_only=True) as segment:
            while True:
                await sems.op([(READABLE, -1)])
                line = get_line(segment.buf)
                print(f"reader [pid {os.getpid()}]: {line}", flush=True)
                await sems.op([(WRITABLE, +1)])  # the writer may overwrite it now
                if line == "end":
                    return
    finally:
        await sems.aclose()


async def writer() -> int:
    k = key()
    print(
        f"writer [pid {os.getpid()}]: segment and semaphores under key {k & 0xFFFFFFFF:#010x}",
        flush=True,
    )
    # Create both before the reader starts, so that it can simply open them.
    segment = SharedMemory.create(k, SIZE)
    sems: SemaphoreSet | None = None
    proc: Process | None = None
    try:
        sems = SemaphoreSet.create(k, 2, values=[0, 1], undo=False)  # readable 0, writable 1
        proc = await anyio.open_process(
            [sys.executable, __file__, "reader"], stdin=None, stdout=None, stderr=None
        )
        with anyio.fail_after(TIMEOUT):
            for line in LINES:
                await sems.op([(WRITABLE, -1)])
                put_line(segment.buf, line)
                print(f"writer: {line}", flush=True)
                await sems.op([(READABLE, +1)])
            await sems.op([(WRITABLE, -1)])  # the reader is done with "end"
            status = await proc.wait()
        print(f"done: the reader exited with status {status}; removing the objects", flush=True)
        return status
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()
        # The objects outlive every process: whoever made them removes them.
        if sems is not None:
            with contextlib.suppress(anyio.BrokenResourceError):
                sems.remove()
            await sems.aclose()
        segment.remove()
        segment.close()


def main() -> int:
    if sys.argv[1:] == ["reader"]:
        anyio.run(reader)
        return 0
    try:
        return anyio.run(writer)
    except TimeoutError:
        print(f"FAILED: no progress for {TIMEOUT} s (did the reader die?)", file=sys.stderr)
        return 1
    except aioipc.IPCExistsError as exc:
        print(f"FAILED: {exc}: another run, or a leftover (ipcrm -M KEY -S KEY)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
