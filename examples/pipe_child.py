"""A parent and the child it starts, talking over two aioipc pipes.

A pipe carries bytes one way only, so the parent makes two: one for requests, one for
replies. The child inherits its two ends through ``pass_fds`` and wraps them with
``aioipc.pipes.from_fd``. The parent closes its copies of the child's ends at once:
otherwise the child's read end would never see end of stream, nor the parent's.

    python examples/pipe_child.py

The child answers each request (a list of numbers) with their sum. When the parent
closes its request sender, the child's loop ends (``EndOfStream``), the child closes its
reply sender and exits, and the parent sees end of stream on the replies in turn.
"""

from __future__ import annotations

import os
import sys

import anyio
from anyio.abc import Process

import aioipc
from aioipc.pipes import from_fd

TIMEOUT = 10.0
REQUESTS = ["1 2 3", "10 20 30 40", "7", "100 -58"]


async def parent() -> int:
    requests, child_rx = aioipc.pipe()  # parent -> child
    child_tx, replies = aioipc.pipe()  # child -> parent
    proc: Process | None = None
    async with requests, replies:
        try:
            rx_fd, tx_fd = child_rx.fileno(), child_tx.fileno()
            # The same fd numbers are open in the child (pass_fds makes them inheritable).
            proc = await anyio.open_process(
                [sys.executable, __file__, "child", str(rx_fd), str(tx_fd)],
                stdin=None,
                stdout=None,
                stderr=None,
                pass_fds=[rx_fd, tx_fd],
            )
            # The child has its own copies. Ours must go, or no end of stream can happen.
            await child_rx.aclose()
            await child_tx.aclose()
            print(
                f"parent {os.getpid()}: started child {proc.pid} (pipe fds {rx_fd}, {tx_fd})",
                flush=True,
            )
            with anyio.fail_after(TIMEOUT):
                for request in REQUESTS:
                    await requests.send(request.encode())
                    reply = (await replies.receive()).decode()
                    expected = sum(int(n) for n in request.split())
                    print(f"  parent asked sum({request}) -> {reply}", flush=True)
                    if reply.split()[-1] != str(expected):
                        print(f"FAILED: expected {expected}", file=sys.stderr)
                        return 1
                # Closing our sender is how the child learns that there is no more work.
                await requests.aclose()
                try:
                    extra = await replies.receive()
                    print(f"FAILED: unexpected reply {extra!r}", file=sys.stderr)
                    return 1
                except anyio.EndOfStream:
                    pass
                status = await proc.wait()
            print(f"parent: end of stream on the replies; the child exited with status {status}")
            return 0 if status == 0 else 1
        finally:
            # Whatever went wrong, leave no child behind (and close the child's ends).
            child_rx.close()
            child_tx.close()
            if proc is not None and proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()


async def child(rx_fd: int, tx_fd: int) -> None:
    # The channels own the inherited fds from here on and close them on exit.
    async with from_fd(rx_fd, "r") as rx, from_fd(tx_fd, "w") as tx:
        async for request in rx:  # until the parent closes its sender
            total = sum(int(n) for n in request.split())
            await tx.send(f"child {os.getpid()} says {total}".encode())
    print(f"  child {os.getpid()}: end of stream on the requests, exiting", flush=True)


def main() -> int:
    if sys.argv[1:2] == ["child"]:
        anyio.run(child, int(sys.argv[2]), int(sys.argv[3]))
        return 0
    try:
        status = anyio.run(parent)
    except TimeoutError:
        print(f"FAILED: no reply within {TIMEOUT} s (did the child die?)", file=sys.stderr)
        return 1
    if status == 0:
        print(f"done: {len(REQUESTS)} requests answered over two pipes")
    return status


if __name__ == "__main__":
    sys.exit(main())
