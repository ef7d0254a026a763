"""Who holds an IPC object: for ``aioipc ls`` (the users column) and ``aioipc rm
--stale`` (nobody attached).

Two ways to know, best first:

* **A write lease** (``F_SETLEASE``, :func:`unused_by_others`): the kernel grants one
  only if no other process has the file open or mapped. It works for regular files and
  POSIX queues, for their owner or root, and answers for every process, even those in
  other pid namespaces. The lease is dropped at once; an open racing with it waits for
  that, microseconds.
* **Looking at every process** (:func:`scan_holders`), the way ``fuser`` does: the
  targets of ``/proc/PID/fd/*``, the inodes in ``/proc/PID/maps`` (a mapping needs no
  open fd), and what each thread is blocked in (``/proc/PID/task/TID/syscall``: a
  ``msgrcv`` or ``semop`` waiting on a SysV id, which nothing else reveals).

Processes whose ``/proc`` entries we may not read (another user's, when not root) are
kept in ``unreadable`` with their uid, so that callers can refuse to call an object
unused when such a process could have it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from dataclasses import dataclass, field

__all__ = ["Holders", "scan_holders", "unused_by_others"]

# The SysV calls that block on an id given as their first argument, by machine.
_SYSCALLS = {
    "x86_64": {69: "msg", 70: "msg", 65: "sem", 220: "sem"},  # msgsnd msgrcv semop semtimedop
    "aarch64": {189: "msg", 188: "msg", 193: "sem", 192: "sem"},
}


@dataclass
class Holders:
    """``by_inode``: ``(st_dev, st_ino)`` -> pids that have it open or mapped.
    ``waiting``: ``("msg" | "sem", id)`` -> pids with a thread blocked on that id.
    ``unreadable``: pid -> uid of the processes we could not look into."""

    by_inode: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    waiting: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    unreadable: dict[int, int] = field(default_factory=dict)

    def pids(self, dev: int | None, ino: int | None) -> set[int]:
        if dev is None or ino is None:
            return set()
        return self.by_inode.get((dev, ino), set())

    def hidden(self, uid: int, mode: int) -> list[int]:
        """Unreadable processes that may have access to an object of owner ``uid`` and
        permission bits ``mode``: root's, the owner's, and anyone's if group or others
        have any access."""
        return sorted(
            pid for pid, owner in self.unreadable.items() if owner in (0, uid) or mode & 0o066
        )


def scan_holders(proc: str = "/proc", *, skip: int | None = None) -> Holders:
    """Every open or mapped inode, and every blocked SysV call, of every process but
    ``skip`` (default: this one)."""
    skip = os.getpid() if skip is None else skip
    calls = _SYSCALLS.get(platform.machine(), {})
    out = Holders()
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        if pid == skip:
            continue
        base = f"{proc}/{pid}"
        fds = _fds(base)
        maps = _maps(f"{base}/maps")
        if fds is None or maps is None:
            with contextlib.suppress(OSError):  # unless it ended meanwhile
                out.unreadable[pid] = os.stat(base).st_uid
            continue
        for inode in fds | maps:
            out.by_inode.setdefault(inode, set()).add(pid)
        for what in _blocked(base, calls):
            out.waiting.setdefault(what, set()).add(pid)
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
        with open(path, "rb") as f:  # bytes: a mapped file's path need not be UTF-8
            lines = f.readlines()
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    found = set()
    for line in lines:
        # address perms offset dev inode [path]; dev is "major:minor" in hex.
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or parts[4] == b"0":
            continue
        try:
            major, minor = (int(x, 16) for x in parts[3].split(b":"))
            found.add((os.makedev(major, minor), int(parts[4])))
        except ValueError:
            continue
    return found


def _blocked(base: str, calls: dict[int, str]) -> set[tuple[str, int]]:
    """The SysV ids this process's threads are blocked on."""
    found: set[tuple[str, int]] = set()
    if not calls:
        return found
    try:
        tids = os.listdir(f"{base}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"{base}/task/{tid}/syscall", "rb") as f:
                fields = f.read().split()
            # "NR arg1 arg2 ...", or "running" / "-1 sp pc" outside a system call.
            call = calls.get(int(fields[0]))
            if call is not None:
                found.add((call, int(fields[1], 16)))
        except (OSError, ValueError, IndexError):
            continue
    return found


def unused_by_others(path: str) -> bool | None:
    """True if no other process has the file at ``path`` open or mapped, False if one
    has; None if the kernel will not say (not its owner nor root, not a regular file or
    queue, or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except BlockingIOError:
        return False
    except OSError:
        return None
    finally:
        os.close(fd)  # closing the fd also drops the lease
    return True
