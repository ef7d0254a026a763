"""Shared by the ring and region test modules: the files of a ring, writing into its
header by hand, and a FIFO planted where a ring or region should be (the ``new_ring``
fixture that hands out fresh ring names is in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator

from ._procs import PYTHON, child_env


def ring_files(name: str) -> tuple[str, str, str]:
    base = "/dev/shm" + name
    return base, base + ".bell-data", base + ".bell-space"


def existing(name: str) -> list[str]:
    return [p for p in ring_files(name) if os.path.lexists(p)]


def write_at(name: str, offset: int, data: bytes) -> None:
    """Write ``data`` into the ring's region file at ``offset``, not through aioipc."""
    with open("/dev/shm" + name, "r+b") as f:
        f.seek(offset)
        f.write(data)


# A FIFO planted at a ring's name (finding F10 of the review of commit 0bd40c1): what
# each call that may meet one does, each in a child (an open() that blocks cannot be
# cancelled).

FIFO_CALLS = {
    "is_stale": "aioipc.shm.is_stale(name)",
    "posix": "aioipc.posix.SharedMemory.open(name, read_only=True)",
    "file": "aioipc.MappedFile.open('/dev/shm' + name, read_only=True)",
}

FIFO_CHILD = """
    import sys
    import aioipc, aioipc.shm, aioipc.posix
    name = sys.argv[1]
    try:
        result = {call}
    except Exception as exc:
        print("raised", type(exc).__name__, exc)
    else:
        print("returned", repr(result))
"""


@contextlib.contextmanager
def planted_fifo(name: str) -> Iterator[None]:
    path = ring_files(name)[0]
    os.mkfifo(path, 0o600)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def fifo_outcomes(name: str) -> dict[str, str]:
    """Each of FIFO_CALLS in its own child (an open() that blocks cannot be cancelled),
    all at once; '' for a call still blocked after a few seconds."""
    procs = {
        what: subprocess.Popen(
            [PYTHON, "-c", textwrap.dedent(FIFO_CHILD.format(call=call)), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for what, call in FIFO_CALLS.items()
    }
    out = {}
    deadline = time.monotonic() + 5
    for what, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            assert proc.returncode == 0, stderr
            out[what] = stdout.strip()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[what] = ""
    return out
