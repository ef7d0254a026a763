"""Passing an open file to another process over a unix socket (SCM_RIGHTS).

The parent writes a short file, opens it, and then removes its name: from here on only
an open descriptor reaches the file, and no path could help another process find it.
It starts a child and sends it the descriptor with ``send_fds``. The child's
``receive_fds`` gets a new descriptor of the same open file (same contents, same file
offset). The child reads the lines, appends a summary, and says "done"; the parent
reads the file through its own descriptor and checks the child's line.

    python examples/fd_passing.py

The socket has an abstract name (``@aioipc-fd-passing-PID``): no file to remove, and
aioipc accepts only this user's connections on it. The file's directory is removed at
the end, also on error.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
from anyio.abc import Process

from aioipc import unix

TIMEOUT = 10.0
TEXT = "apples 3\npears 5\nplums 12\n"


def read_all(fd: int) -> str:
    # pread: reads from offset 0 without moving the offset the two processes share.
    return os.pread(fd, 1 << 16, 0).decode()


async def parent(tmp: Path) -> int:
    path = tmp / "stock.txt"
    path.write_text(TEXT)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    path.unlink()  # the file lives on while a descriptor is open, nameless
    print(f"parent {os.getpid()}: opened {path} as fd {fd}, then removed its name", flush=True)
    address = f"@aioipc-fd-passing-{os.getpid()}"
    proc: Process | None = None
    try:
        async with await unix.listen(address) as listener:
            proc = await anyio.open_process(
                [sys.executable, __file__, "child", address], stdin=None, stdout=None, stderr=None
            )
            with anyio.fail_after(TIMEOUT):
                async with await listener.accept() as chan:
                    await chan.send_fds(b"count the stock, append the total", [fd])
                    reply = (await chan.receive()).decode()
                status = await proc.wait()
        contents = read_all(fd)
    finally:
        os.close(fd)
        if proc is not None and proc.returncode is None:
            proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()
    print(f"parent: the child replied {reply!r} and exited with status {status}")
    print("parent: the file now reads:")
    for line in contents.splitlines():
        print(f"  | {line}")
    expected = f"total 20 (counted by {proc.pid})"
    if status != 0 or not contents.startswith(TEXT) or contents[len(TEXT) :] != expected + "\n":
        print(f"FAILED: expected the line {expected!r} after the text", file=sys.stderr)
        return 1
    return 0


async def child(address: str) -> None:
    async with await unix.connect(address) as chan:
        request, fds = await chan.receive_fds()  # our own descriptors: we close them
        fd = fds[0]
        try:
            print(f"  child {os.getpid()}: got fd {fd} with {request.decode()!r}", flush=True)
            total = sum(int(line.split()[1]) for line in read_all(fd).splitlines())
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, f"total {total} (counted by {os.getpid()})\n".encode())
        finally:
            os.close(fd)
        await chan.send(b"done")


def main() -> int:
    if sys.argv[1:2] == ["child"]:
        anyio.run(child, sys.argv[2])
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="aioipc-fd-"))
    try:
        status = anyio.run(parent, tmp)
    except TimeoutError:
        print(f"FAILED: the child was not done within {TIMEOUT} s", file=sys.stderr)
        status = 1
    finally:
        shutil.rmtree(tmp)
    if status == 0:
        print("done: the child wrote to a file it could only reach through the passed fd")
    return status


if __name__ == "__main__":
    sys.exit(main())
