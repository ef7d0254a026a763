"""Which processes hold an IPC object: for ``aioipc ls`` (the users column) and
``aioipc rm --stale`` (nobody attached).

The kernel keeps no list of who opened a POSIX object, so this looks at every process,
the way ``fuser`` does: the targets of ``/proc/PID/fd/*`` (an open FIFO, POSIX queue or
shared-memory fd) and the inodes in ``/proc/PID/maps`` (a mapped POSIX shared memory or
semaphore, which needs no open fd). A socket file has no holder of its own; a listener
bound to its path shows up in ``/proc/net/unix``.

Processes whose ``/proc`` entries we may not read (another user's, when not root) are
counted in ``unreadable`` and otherwise left out: such a process could hold an object
only if its mode lets that user in (0600 by default does not) or it is root's.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

__all__ = ["Holders", "bound_unix_paths", "scan_holders"]


@dataclass
class Holders:
    """``(st_dev, st_ino)`` -> the pids that have it open or mapped."""

    by_inode: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    unreadable: int = 0

    def pids(self, dev: int | None, ino: int | None) -> set[int]:
        if dev is None or ino is None:
            return set()
        return self.by_inode.get((dev, ino), set())


def scan_holders(proc: str = "/proc", *, skip: int | None = None) -> Holders:
    """Every open or mapped inode of every process but ``skip`` (default: this one)."""
    skip = os.getpid() if skip is None else skip
    out = Holders()
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        if pid == skip:
            continue
        seen = _fds(f"{proc}/{pid}")
        maps = _maps(f"{proc}/{pid}/maps")
        if seen is None and maps is None:
            out.unreadable += 1
            continue
        for inode in (seen or set()) | (maps or set()):
            out.by_inode.setdefault(inode, set()).add(pid)
    return out


def _fds(base: str) -> set[tuple[int, int]] | None:
    try:
        fds = os.listdir(f"{base}/fd")
    except FileNotFoundError:  # the process ended meanwhile
        return set()
    except OSError:
        return None
    found = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            st = os.stat(f"{base}/fd/{fd}")
            found.add((st.st_dev, st.st_ino))
    return found


def _maps(path: str) -> set[tuple[int, int]] | None:
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    found = set()
    for line in lines:
        # address perms offset dev inode [path]; dev is "major:minor" in hex.
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or parts[4] == "0":
            continue
        try:
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            found.add((os.makedev(major, minor), int(parts[4])))
        except ValueError:
            continue
    return found


def bound_unix_paths(path: str = "/proc/net/unix") -> set[str]:
    """The filesystem paths unix sockets in this network namespace are bound to."""
    try:
        with open(path) as f:
            lines = f.readlines()[1:]
    except OSError:
        return set()
    # Num RefCount Protocol Flags Type St Inode [Path]; abstract names start with "@".
    return {
        parts[7].rstrip("\n")
        for parts in (line.split(maxsplit=7) for line in lines)
        if len(parts) == 8 and parts[7].startswith("/")
    }
