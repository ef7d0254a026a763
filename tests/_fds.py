"""Shared by the tests of the fd mechanisms (pipes, FIFOs, unix sockets): recognisable
payloads and what this process's file descriptors point at."""

from __future__ import annotations

import os
import struct

#: Seconds a step of these tests may take before it fails (nothing sleeps to wait).
TIMEOUT = 10
KIB = 1024
MIB = 1024 * KIB


def seeded_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` recognisable bytes; different seeds give different contents."""
    block = struct.pack("!I", seed) + bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


def links_to(target: str) -> list[int]:
    """The fds of this process that point at ``target`` (a path, or "pipe:[inode]")."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                found.append(int(name))
        except OSError:
            pass  # the fd listdir itself used, gone by now
    return found


def pipe_link(fd: int) -> str:
    """What /proc/self/fd shows for the pipe ``fd`` is an end of."""
    return f"pipe:[{os.fstat(fd).st_ino}]"
