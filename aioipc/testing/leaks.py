"""**Leak check.** :class:`IPCSnapshot` is a snapshot of the machine's IPC objects, to prove
a test suite leaked none. Use it in a ``conftest.py``::

    from aioipc.testing import IPCSnapshot

    @pytest.fixture(scope="session", autouse=True)
    def no_ipc_leaks(tmp_path_factory):
        root = tmp_path_factory.getbasetemp()
        before = IPCSnapshot.take(root)
        yield
        IPCSnapshot.take(root).assert_no_new(before)

It counts SysV message queues, shared memory segments and semaphore sets
(``/proc/sysvipc``), ``/dev/shm`` entries, POSIX message queues (``/dev/mqueue``, when
mounted), FIFOs and socket files under the given directories, and abstract unix socket
names (``/proc/net/unix``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._core.registry import PREFIX as REGISTRY_PREFIX

__all__ = ["IPCSnapshot", "LeakError"]


class LeakError(AssertionError):
    """IPC objects exist now that did not exist when the snapshot was taken."""


def _sysv(kind: str) -> frozenset[str]:
    try:
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
    except OSError:
        return frozenset()
    # Columns: key id ...; the id is unique while the object lives.
    return frozenset(
        f"sysv {kind} key={int(f[0]):#x} id={f[1]}" for f in map(str.split, lines) if f
    )


def _dir_entries(path: str, label: str) -> frozenset[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return frozenset()
    # aioipc's registry of what it created is no IPC object (and goes when it empties).
    return frozenset(f"{label} {path}/{n}" for n in names if not n.startswith(REGISTRY_PREFIX))


def _special_files(roots: Iterable[str | os.PathLike[str]]) -> frozenset[str]:
    found = set()
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    mode = os.lstat(full).st_mode
                except OSError:
                    continue
                if stat.S_ISFIFO(mode):
                    found.add(f"FIFO {full}")
                elif stat.S_ISSOCK(mode):
                    found.add(f"socket file {full}")
    return frozenset(found)


def _abstract_sockets() -> frozenset[str]:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return frozenset()
    names = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith("@") and fields[5] == "01":
            # State 01 with the listening flag (0x10000) marks a listener or bound name.
            names.add(f"abstract unix socket {fields[7]}")
    return frozenset(names)


@dataclass(frozen=True)
class IPCSnapshot:
    """The IPC objects that exist at one moment."""

    objects: frozenset[str]

    @classmethod
    def take(cls, *roots: str | os.PathLike[str]) -> IPCSnapshot:
        """Snapshot the machine-wide objects, and FIFOs/socket files below ``roots``."""
        objects = (
            _sysv("msg")
            | _sysv("shm")
            | _sysv("sem")
            | _dir_entries("/dev/shm", "POSIX shm")
            | _dir_entries("/dev/mqueue", "POSIX mqueue")
            | _special_files(roots)
            | _abstract_sockets()
        )
        return cls(objects)

    def new_since(self, before: IPCSnapshot) -> list[str]:
        return sorted(self.objects - before.objects)

    def assert_no_new(self, before: IPCSnapshot) -> None:
        """Raise :exc:`LeakError` listing every object that appeared since ``before``."""
        leaked = self.new_since(before)
        if leaked:
            raise LeakError("IPC objects leaked:\n  " + "\n  ".join(leaked))
