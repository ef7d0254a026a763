"""Anonymous shared memory with a child process: handed over by fork, then by fd passing.

:class:`aioipc.AnonymousMemory` is a memfd mapped ``MAP_SHARED``: memory with no name
anywhere, so nothing can be left behind once every process using it has exited.

1. fork: the child inherits the mapping itself. It writes into it and exits; the
   parent reads what it wrote after ``waitpid``.
2. spawn: a fresh interpreter inherits no mapping, so the parent sends the memfd over a
   unix socket (``send_fds``). The child maps what it received with
   ``AnonymousMemory.from_fd``, reads the parent's words and writes its answer. (A child
   you start yourself could also get the fd through ``pass_fds``; the socket works for
   any process that can connect to it.)

    python examples/anon_mmap.py
"""

from __future__ import annotations

import os
import sys

import anyio
from anyio.abc import Process

from aioipc import AnonymousMemory, unix

SIZE = 1 << 16
TIMEOUT = 10.0


def put_text(buf: memoryview, text: str) -> None:
    data = text.encode() + b"\0"
    buf[: len(data)] = data


def get_text(buf: memoryview) -> str:
    return buf.tobytes().partition(b"\0")[0].decode()


def fork_hand_off() -> str:
    """Runs before the event loop starts: forking a process with threads is unsafe."""
    with AnonymousMemory(SIZE) as region:
        sys.stdout.flush()  # or the child would print our buffered output again
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                # MAP_SHARED: these are the parent's pages, not a copy-on-write copy
                # (which is all that a bytearray or a MAP_PRIVATE mapping would give).
                put_text(region.buf, f"hello from forked child {os.getpid()}")
                status = 0
            finally:
                os._exit(status)  # skip the parent's cleanup (and its atexit handlers)
        _, wait_status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(wait_status) != 0:
            raise RuntimeError(f"the forked child failed ({wait_status:#x})")
        return get_text(region.buf)


async def spawn_hand_off() -> str:
    # An abstract socket name: no file to remove, and only our own uid may connect.
    address = f"@aioipc-anon-mmap-{os.getpid()}"
    async with await unix.listen(address) as listener:
        with AnonymousMemory(SIZE) as region:
            put_text(region.buf, "what is six times seven?")
            proc: Process | None = None
            try:
                proc = await anyio.open_process(
                    [sys.executable, __file__, "child", address],
                    stdin=None,
                    stdout=None,
                    stderr=None,
                )
                with anyio.fail_after(TIMEOUT):
                    async with await listener.accept() as chan:
                        # The child gets its own descriptor of the same memfd.
                        await chan.send_fds(b"region", [region.fd])
                        await chan.receive()  # "done": the answer is in the region
                    if await proc.wait() != 0:
                        raise RuntimeError(f"the spawned child exited with {proc.returncode}")
            finally:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    with anyio.CancelScope(shield=True):
                        await proc.wait()
            return get_text(region.buf)


async def child(address: str) -> None:
    async with await unix.connect(address) as chan:
        _, fds = await chan.receive_fds()
        with AnonymousMemory.from_fd(fds[0]) as region:  # the region owns the fd now
            question = get_text(region.buf)
            print(f"  spawned child {os.getpid()} read: {question!r}", flush=True)
            put_text(region.buf, f"{6 * 7}, says spawned child {os.getpid()}")
        await chan.send(b"done")


def main() -> int:
    if sys.argv[1:2] == ["child"]:
        anyio.run(child, sys.argv[2])
        return 0
    print(f"parent {os.getpid()}: fork hand-off")
    print(f"  the parent reads: {fork_hand_off()!r}")
    print(f"parent {os.getpid()}: spawn hand-off (memfd sent over a unix socket)", flush=True)
    try:
        answer = anyio.run(spawn_hand_off)
    except TimeoutError:
        print(f"FAILED: no answer within {TIMEOUT} s (did the child die?)", file=sys.stderr)
        return 1
    print(f"  the parent reads: {answer!r}")
    print("done: both children wrote into memory the parent had mapped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
