"""64 MiB from one process to another through a shared-memory ring, no copy on receipt.

The parent creates the ring ``/aioipc-bulk-<pid>`` as its receiver and starts a child
that attaches as the sender. The sender writes each 1 MiB chunk straight into the ring
(``async with tx.reserve(n) as view``): no message object is built and copied again.
The receiver hashes each chunk where it lies in the shared pages (``async with
rx.receive_view() as view``), then the chunk's space goes back to the sender. Last, the
sender sends its own blake2b digest of the buffer, and the receiver compares.

    python examples/shm_bulk.py

The ring (4 MiB) holds only a few chunks: the buffer streams through it, so a /dev/shm
of 64 MB (Docker's default) is plenty. The ring's creator removes its files when it
closes, also on error; a SIGKILLed parent leaves ``/dev/shm/aioipc-bulk-<pid>*``
behind (``aioipc.shm.is_stale`` tells such leftovers from a live ring).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import time

import anyio
from anyio.abc import Process

from aioipc import ShmReceiver, ShmSender

TOTAL = 64 << 20
CHUNK = 1 << 20
CAPACITY = 4 << 20  # the largest message is capacity // 2 - 8 bytes
HEADER = struct.Struct("!Q")  # the first message: how many bytes follow
TIMEOUT = 30.0


async def sender(name: str) -> None:
    # Made before attaching: the timing is the transfer's alone.
    data = memoryview(random.Random(42).randbytes(TOTAL))
    digest = hashlib.blake2b(data).digest()
    async with ShmSender.open(name) as tx:
        await tx.send(HEADER.pack(TOTAL))
        for offset in range(0, TOTAL, CHUNK):
            size = min(CHUNK, TOTAL - offset)
            async with tx.reserve(size) as view:
                # Slicing the memoryview, not the bytes: a bytes slice would be a copy.
                view[:] = data[offset : offset + size]
        await tx.send(digest)


async def receive_all(rx: ShmReceiver) -> tuple[int, bytes, float, float]:
    """Bytes received, their digest, seconds in all and seconds of hashing."""
    (total,) = HEADER.unpack(await rx.receive())
    started = time.perf_counter()
    hasher = hashlib.blake2b()
    hashing = 0.0
    received = 0
    while received < total:
        async with rx.receive_view() as view:
            t0 = time.perf_counter()
            hasher.update(view)  # reads the shared pages in place
            hashing += time.perf_counter() - t0
            received += len(view)
    return received, hasher.digest(), time.perf_counter() - started, hashing


async def parent() -> int:
    name = f"/aioipc-bulk-{os.getpid()}"
    proc: Process | None = None
    # The creator's close removes the ring's files (region and doorbells).
    async with ShmReceiver.create(name, CAPACITY) as rx:
        try:
            proc = await anyio.open_process(
                [sys.executable, __file__, "sender", name], stdin=None, stdout=None, stderr=None
            )
            print(f"receiver {os.getpid()}: ring {name} of {CAPACITY >> 20} MiB", flush=True)
            with anyio.fail_after(TIMEOUT):
                received, digest, seconds, hashing = await receive_all(rx)
                expected = await rx.receive()
                status = await proc.wait()
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
    print(
        f"received {received >> 20} MiB in {seconds:.3f} s: {received / seconds / 1e6:.0f} MB/s"
        f" (blake2b of every byte took {hashing:.3f} s of it)"
    )
    if status != 0 or digest != expected:
        print(f"FAILED: sender status {status}, digests equal: {digest == expected}")
        return 1
    print(f"blake2b digests match: {digest.hex()[:32]}...")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["sender"]:
        anyio.run(sender, sys.argv[2])
        return 0
    try:
        return anyio.run(parent)
    except TimeoutError:
        print(f"FAILED: the transfer took over {TIMEOUT} s", file=sys.stderr)
        return 1
    except anyio.BrokenResourceError as exc:  # the sender died mid-way (noticed at once)
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
