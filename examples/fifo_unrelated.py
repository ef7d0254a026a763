"""Unrelated processes meeting at a FIFO: three writers, one reader, end of stream.

A FIFO is a pipe with a name in the filesystem, so processes that share no ancestor's
file descriptors can find it by path. The reader creates the FIFO in a fresh temporary
directory and starts three writers as independent processes (each in a session of its
own, as if started from another terminal); they get nothing but the path.

    python examples/fifo_unrelated.py

Each writer sends a few short lines and one 200 KiB message at the same time as the
others. aioipc's FIFO framing splits messages into chunks of at most PIPE_BUF bytes,
which the kernel writes atomically, and reassembles each writer's chunks apart: no
message is interleaved with another writer's, whatever its size.

End of stream comes when every writer has closed. A writer that finished before the next
one opened would end the stream early, so the reader holds a write end of its own until
every writer has said hello, and only then lets go.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
from anyio.abc import Process

from aioipc import fifo

WRITERS = 3
LINES = 4
BIG = 200 * 1024
TIMEOUT = 10.0


def big_message(n: int) -> bytes:
    """Writer ``n``'s large message: the reader checks it arrived whole and unmixed."""
    return f"big {n} ".encode() + bytes([ord("a") + n]) * BIG


async def reader(path: Path) -> int:
    procs: list[Process] = []
    # Opening the receiver never waits; the writers' open_sender waits for it.
    async with await fifo.open_receiver(path, create=True) as rx:
        doorstop = await fifo.open_sender(path)  # keeps the stream open for now
        try:
            print(f"reader {os.getpid()}: FIFO {path}", flush=True)
            for n in range(1, WRITERS + 1):
                procs.append(
                    await anyio.open_process(
                        [sys.executable, __file__, "writer", str(path), str(n)],
                        stdin=None,
                        stdout=None,
                        stderr=None,
                        start_new_session=True,  # an independent process, not our job
                    )
                )
            got: dict[int, list[bytes]] = {n: [] for n in range(1, WRITERS + 1)}
            order: list[int] = []  # which writer each message came from, as they came
            hellos = 0
            with anyio.fail_after(TIMEOUT):
                async for message in rx:  # ends when the last writer closes
                    if message.startswith(b"hello "):
                        _, who, pid = message.split()
                        print(f"  writer {int(who)} (pid {int(pid)}) opened the FIFO", flush=True)
                        hellos += 1
                        if hellos == WRITERS:
                            await doorstop.aclose()  # from now on, the writers decide
                    else:  # "big N ..." or "writer N: line I"
                        n = int(message.split()[1].rstrip(b":"))
                        got[n].append(message)
                        order.append(n)
                for proc in procs:
                    await proc.wait()
            print("reader: end of stream: every writer has closed", flush=True)
            print(f"  messages arrived from writers {' '.join(map(str, order))}")
            ok = True
            for n, messages in got.items():
                lines = [m.decode() for m in messages if not m.startswith(b"big ")]
                whole = messages.count(big_message(n)) == 1
                print(f"  writer {n}: {len(lines)} lines, big message whole: {whole}")
                expected = [f"writer {n}: line {i}" for i in range(1, LINES + 1)]
                ok = ok and whole and lines == expected and len(messages) == LINES + 1
            if any(proc.returncode != 0 for proc in procs):
                print(f"writers exited with {[p.returncode for p in procs]}", file=sys.stderr)
                ok = False
            return 0 if ok else 1
        finally:
            await doorstop.aclose()
            # They are not in our session, so nobody else would clean them up.
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    with anyio.CancelScope(shield=True):
                        await proc.wait()


async def writer(path: str, n: int) -> None:
    with anyio.fail_after(TIMEOUT):
        async with await fifo.open_sender(path) as tx:
            await tx.send(f"hello {n} {os.getpid()}".encode())
            for i in range(1, LINES + 1):
                await tx.send(f"writer {n}: line {i}".encode())
                if i == LINES // 2:
                    await tx.send(big_message(n))  # in the middle of the others' lines


def main() -> int:
    if sys.argv[1:2] == ["writer"]:
        anyio.run(writer, sys.argv[2], int(sys.argv[3]))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="aioipc-fifo-"))
    try:
        status = anyio.run(reader, tmp / "lines.fifo")
    except TimeoutError:
        print(f"FAILED: no end of stream within {TIMEOUT} s", file=sys.stderr)
        status = 1
    finally:
        if (tmp / "lines.fifo").exists():
            fifo.unlink(tmp / "lines.fifo")  # aioipc.fifo's own: it forgets the FIFO too
        shutil.rmtree(tmp)
    if status == 0:
        print(f"done: {WRITERS} writers, every message whole; {tmp} removed")
    return status


if __name__ == "__main__":
    sys.exit(main())
