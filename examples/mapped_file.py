"""An ordinary file mapped into two processes: what one writes, the other sees.

The parent creates a file of 4 KiB with ``MappedFile.open(path, size, create=True)``,
writes a record into the mapping and ``flush()``es it to the file. A child process maps
the same file, reads the record and changes it in place. The parent sees the change in
its own mapping at once (both map the same page-cache pages), and in the file as well.

    python examples/mapped_file.py

Unlike POSIX or System V shared memory, the data is in a file: it outlives the
processes (and a reboot, after ``flush()``), and any program can read it. The demo's
file lives in a temporary directory that is removed at the end, also on error.

Regions never wait (no call blocks on another process), so this example needs no event
loop; it only waits for the child, with ``subprocess``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aioipc import MappedFile

SIZE = 4096
TIMEOUT = 10.0


def put_text(buf: memoryview, text: str) -> None:
    data = text.encode() + b"\0"
    buf[: len(data)] = data


def get_text(data: bytes | memoryview) -> str:
    return bytes(data).partition(b"\0")[0].decode()


def child(path: str) -> None:
    with MappedFile.open(path) as mapped:  # the whole file, read-write
        record = get_text(mapped.buf)
        print(f"  child {os.getpid()} read: {record!r}", flush=True)
        put_text(mapped.buf, record.replace("pending", f"done by {os.getpid()}"))
        mapped.flush()  # to the file now (the parent's mapping sees it anyway)


def parent() -> int:
    tmp = tempfile.mkdtemp(prefix="aioipc-mapped-")
    try:
        path = os.path.join(tmp, "record.dat")
        with MappedFile.open(path, SIZE, create=True) as mapped:
            put_text(mapped.buf, "job 1: pending")
            mapped.flush()
            print(f"parent {os.getpid()}: wrote {get_text(mapped.buf)!r} to {path}", flush=True)
            try:
                proc = subprocess.run([sys.executable, __file__, "child", path], timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"FAILED: the child took over {TIMEOUT} s (it was killed)")
                return 1
            seen = get_text(mapped.buf)
        in_file = get_text(Path(path).read_bytes())
        print(f"parent: its own mapping now shows {seen!r}")
        print(f"parent: the file says            {in_file!r}")
        if proc.returncode != 0 or seen != in_file or "done by" not in seen:
            print("FAILED: the child's change did not show")
            return 1
        print("done: the child's change reached the parent's mapping and the file")
        return 0
    finally:
        shutil.rmtree(tmp)


def main() -> int:
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2])
        return 0
    return parent()


if __name__ == "__main__":
    sys.exit(main())
