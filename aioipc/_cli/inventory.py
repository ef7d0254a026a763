"""What ``aioipc ls`` lists: every IPC object on the machine, one :class:`IPCObject` each.

Scanning goes in two steps. First the kernel's own lists, read by pure parsers that
tests can feed anything:

* ``/proc/sysvipc/{shm,msg,sem}``: SysV objects. The header line names the columns, and
  they are used by name (the kernel has added columns over the years).
* ``/dev/shm``: ``sem.NAME`` is the POSIX semaphore ``/NAME``; a regular file starting
  with the ring magic ``b"aioipcRG"`` is an aioipc ring, its two doorbells
  ``NAME.bell-data`` and ``NAME.bell-space`` folded into its row; one starting with the
  topic magic ``b"aioipcTP"`` is a pub/sub topic, its doorbells ``NAME.space`` and
  ``NAME.sub-I`` folded into its row; any other regular file is POSIX shared memory
  ``/NAME``. aioipc's registry directories are skipped.
* the ``mqueue`` filesystem (see :mod:`aioipc._cli.mqueue_view`): POSIX message queues; each
  file reads ``QSIZE:N NOTIFY:...``, N the bytes queued.
* aioipc's registry (:mod:`aioipc._core.registry`): FIFOs and socket files are found only
  there, since nothing else lists them short of searching the whole filesystem.

Then :func:`annotate` joins what aioipc's registry says (who created an object, whether
that process still runs) and who holds each object now (:mod:`aioipc._cli.holders`), and
decides whether the object is stale: made by aioipc, its creator dead, nobody attached.
A topic is named and outlives its creator by design, so it is stale when nobody has it
open, whoever made it; its row also says what the topic's header says (capacity,
messages published, each subscriber's slot, policy and lag) and who publishes.
The registry is read *before* the kernel's lists, so an entry always describes an object
that existed when the lists were read: an entry with no object is one whose object was
removed by something other than aioipc.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .._core import libc as _libc
from .._core import registry as _registry
from .._core import topic as _topic
from .._core.registry import KINDS, Entry
from .holders import Holders, scan_holders, unused_by_others

__all__ = [
    "KINDS",
    "IPCObject",
    "Scan",
    "TopicSubscriber",
    "annotate",
    "parse_mqueue",
    "parse_sysv",
    "pid_alive",
    "scan",
    "scan_dev_shm",
]

SYSV_FILES = {"sysv-shm": "shm", "sysv-msg": "msg", "sysv-sem": "sem"}
SHM_DIR = "/dev/shm"
RING_MAGIC = b"aioipcRG"
_BELLS = (".bell-data", ".bell-space")
# The first 8 bytes of a topic's log, once it is fully made (aioipc._core.topic owns them).
TOPIC_MAGIC = _topic.MAGIC.to_bytes(8, "little")
_TOPIC_SPACE, _TOPIC_SUB = ".space", ".sub-"
_SEM_PREFIX = "sem."
_GETPID = 11  # semctl: the pid of the last semop on one semaphore
_GETNCNT, _GETZCNT = 14, 15  # semctl: processes waiting for a value to rise, or for 0


@dataclass(frozen=True)
class TopicSubscriber:
    """One occupied subscriber slot of a topic (see :class:`aioipc.pubsub.SubscriberInfo`):
    ``pid`` is what the subscriber wrote, ``alive`` whether the kernel says a process
    holds the slot's lock; the lag is in messages and in bytes of log behind the head."""

    slot: int
    pid: int
    policy: str
    alive: bool
    lag_messages: int
    lag_bytes: int


@dataclass(frozen=True)
class IPCObject:
    """One row of ``aioipc ls``.

    ``size``: bytes (shared memory: its size; SysV and POSIX queues: bytes queued).
    ``count``: messages queued (queues), processes attached (sysv-shm), semaphores in the
    set (sysv-sem), the value (posix-sem); None where it cannot be read. ``values``: the
    semaphores' values. ``pid``: the creator, from aioipc's registry, or the kernel's
    ``cpid`` for a SysV segment; ``alive``: whether it still runs. ``users``: processes
    holding the object now (attached, open or mapped; for a socket file, 1 while a
    socket is bound to it). ``aioipc``: "yes" (in aioipc's registry, or a ring), "no"
    (not in the registry of its owner) or "?" (that registry is not ours to read).
    ``stale``: for aioipc's objects, whether ``aioipc rm --stale`` removes it, and
    ``why`` says why or why not.

    Topics only (None or empty otherwise, and when the header cannot be read):
    ``capacity`` (bytes of log), ``max_subscribers``, ``count`` is the messages
    published, ``subscribers`` its occupied slots, ``publishers`` the pids of the other
    processes that have it open (a process that both publishes and subscribes is listed
    as a subscriber only).
    """

    kind: str
    name: str | None  # POSIX and rings: "/name"; FIFOs and sockets: the path
    key: str | None  # SysV: "0x%08x"
    id: int | None  # SysV
    uid: int
    owner: str
    mode: str  # octal, permission bits
    size: int | None
    count: int | None
    pid: int | None
    alive: bool | None
    aioipc: str
    files: tuple[str, ...] = ()  # the paths behind a /dev/shm or /dev/mqueue object
    values: tuple[int, ...] | None = None
    users: int | None = None
    stale: bool | None = None
    why: str = ""
    dev: int | None = None
    ino: int | None = None
    last_pids: tuple[int, ...] = field(default=(), repr=False)  # SysV: last users
    cuid: int | None = None  # SysV: the creator's uid
    waiters: int | None = None  # sysv-sem: processes blocked in semop on the set
    capacity: int | None = None  # topic
    max_subscribers: int | None = None  # topic
    subscribers: tuple[TopicSubscriber, ...] = ()  # topic
    publishers: tuple[int, ...] = ()  # topic

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in out.items():
            if isinstance(value, tuple):
                out[name] = [
                    {f.name: getattr(v, f.name) for f in fields(v)}
                    if isinstance(v, TopicSubscriber)
                    else v
                    for v in value
                ]
        return out

    def describe(self) -> str:
        """The object in words, as error messages and ``rm`` name it."""
        if self.id is not None:
            return f"{self.kind} id {self.id} (key {self.key})"
        return f"{self.kind} {self.name}"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (in our pid namespace); a zombie does not."""
    return _registry.process_start(pid) is not None


def _mode(bits: int) -> str:
    return f"{bits & 0o777:04o}"


# -- SysV -------------------------------------------------------------------------------


def parse_sysv(
    kind: str,
    text: str,
    *,
    owner: Callable[[int], str] = user_name,
    alive: Callable[[int], bool] = pid_alive,
) -> list[IPCObject]:
    """The rows of ``/proc/sysvipc/shm``, ``msg`` or ``sem`` (``kind`` sysv-shm, ...)."""
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    id_col = {"sysv-shm": "shmid", "sysv-msg": "msqid", "sysv-sem": "semid"}[kind]
    rows = []
    for line in lines[1:]:
        values = line.split()
        if len(values) < len(header):
            continue
        col = dict(zip(header, values, strict=False))

        def num(name: str, col: dict[str, str] = col) -> int | None:
            value = col.get(name)
            return int(value) if value is not None else None

        size = count = pid = None
        last: tuple[int, ...] = ()
        if kind == "sysv-shm":
            size, count, pid = num("size"), num("nattch"), num("cpid")
            last = tuple(p for p in (num("lpid"),) if p)
        elif kind == "sysv-msg":
            size, count = num("cbytes"), num("qnum")
            last = tuple(p for p in (num("lspid"), num("lrpid")) if p)
        else:
            count = num("nsems")
        uid = int(col["uid"])
        cuid = num("cuid")
        rows.append(
            IPCObject(
                kind=kind,
                name=None,
                key=f"{int(col['key']) & 0xFFFFFFFF:#010x}",
                id=int(col[id_col]),
                uid=uid,
                owner=owner(uid),
                mode=_mode(int(col["perms"], 8)),
                size=size,
                count=count,
                pid=pid,
                alive=alive(pid) if pid is not None else None,
                aioipc="?",
                users=count if kind == "sysv-shm" else None,
                last_pids=last,
                cuid=cuid,
            )
        )
    return rows


def _semaphores(row: IPCObject) -> IPCObject:
    """A set's values and the pids of each semaphore's last semop (needs read access)."""
    if row.id is None or not row.count:
        return row
    try:
        array = (ctypes.c_ushort * row.count)()
        _libc.semctl(row.id, 0, _libc.GETALL, array)
        pids = [_libc.semctl(row.id, i, _GETPID) for i in range(row.count)]
        waiters = sum(
            _libc.semctl(row.id, i, cmd) for i in range(row.count) for cmd in (_GETNCNT, _GETZCNT)
        )
    except OSError:
        return row
    return replace(row, values=tuple(array), last_pids=tuple(p for p in pids if p), waiters=waiters)


def scan_sysv(kind: str, proc: str = "/proc/sysvipc") -> list[IPCObject]:
    try:
        text = Path(proc, SYSV_FILES[kind]).read_text()
    except OSError:
        return []
    rows = parse_sysv(kind, text)
    return [_semaphores(r) for r in rows] if kind == "sysv-sem" else rows


# -- /dev/shm ---------------------------------------------------------------------------


def _read_head(path: str, size: int) -> bytes | None:
    """The first ``size`` bytes of the regular file ``path``, None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def _peek(kind: str, name: str) -> int | None:
    """A POSIX semaphore's value or a queue's message count, None if it cannot be read.
    Opening a queue read-only, or a semaphore, changes nothing about it."""
    import posix_ipc

    try:
        if kind == "posix-sem":
            handle: Any = posix_ipc.Semaphore(name)
        else:
            handle = posix_ipc.MessageQueue(name, read=True, write=False)
    except (posix_ipc.Error, OSError, ValueError):
        return None
    try:
        return int(handle.value if kind == "posix-sem" else handle.current_messages)
    finally:
        handle.close()


def _posix_sem_value(name: str) -> int | None:
    return _peek("posix-sem", name)


def _topic_of(entry: str) -> str | None:
    """The topic whose doorbell ``entry`` would be (``NAME.space``, ``NAME.sub-I``)."""
    if entry.endswith(_TOPIC_SPACE):
        return entry[: -len(_TOPIC_SPACE)]
    base, sep, slot = entry.rpartition(_TOPIC_SUB)
    return base if sep and slot.isdigit() and slot.isascii() else None


def scan_dev_shm(
    directory: str = SHM_DIR,
    *,
    owner: Callable[[int], str] = user_name,
    sem_value: Callable[[str], int | None] = _posix_sem_value,
) -> list[IPCObject]:
    """POSIX semaphores, POSIX shared memory, aioipc rings and topics in ``directory``."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    stats: dict[str, os.stat_result] = {}
    for entry in names:
        try:
            stats[entry] = os.lstat(os.path.join(directory, entry))
        except OSError:  # gone meanwhile
            continue
    rings = set()
    topics = set()
    for entry, st in stats.items():
        if stat.S_ISREG(st.st_mode) and not entry.startswith(_SEM_PREFIX):
            head = _read_head(os.path.join(directory, entry), len(RING_MAGIC))
            if head == RING_MAGIC:
                rings.add(entry)
            elif head == TOPIC_MAGIC:
                topics.add(entry)
    rows = []
    for entry, st in stats.items():
        path = os.path.join(directory, entry)
        bell_of = next((entry[: -len(b)] for b in _BELLS if entry.endswith(b)), None)
        if bell_of is not None and bell_of in rings:
            continue  # folded into its ring's row
        if _topic_of(entry) in topics and not stat.S_ISREG(st.st_mode):
            continue  # a topic's doorbell: folded into its row
        common: dict[str, Any] = {
            "key": None,
            "id": None,
            "uid": st.st_uid,
            "owner": owner(st.st_uid),
            "mode": _mode(st.st_mode),
            "pid": None,
            "alive": None,
            "dev": st.st_dev,
            "ino": st.st_ino,
        }
        if entry in topics:
            rows.append(
                IPCObject(
                    kind="topic",
                    name="/" + entry,
                    size=st.st_size,
                    count=None,
                    aioipc="yes",
                    files=(
                        path,
                        *(
                            os.path.join(directory, e)
                            for e in stats
                            if _topic_of(e) == entry and not stat.S_ISREG(stats[e].st_mode)
                        ),
                    ),
                    **common,
                )
            )
        elif entry in rings or (bell_of is not None and not stat.S_ISREG(st.st_mode)):
            # A ring, or a doorbell whose ring region is gone (a ring half removed).
            base = entry if entry in rings else bell_of
            assert base is not None
            files = tuple(
                os.path.join(directory, base + suffix)
                for suffix in ("", *_BELLS)
                if base + suffix in stats
            )
            if entry not in rings and os.path.join(directory, base) in files:
                continue  # the region exists but is no ring: its own row says what it is
            rows.append(
                IPCObject(
                    kind="shm-ring",
                    name="/" + base,
                    size=st.st_size if entry in rings else None,
                    count=None,
                    aioipc="yes" if entry in rings else "?",
                    files=files if entry in rings else (path,),
                    **common,
                )
            )
        elif entry.startswith(_SEM_PREFIX) and stat.S_ISREG(st.st_mode):
            name = "/" + entry[len(_SEM_PREFIX) :]
            value = sem_value(name)
            rows.append(
                IPCObject(
                    kind="posix-sem",
                    name=name,
                    size=None,
                    count=value,
                    values=None if value is None else (value,),
                    aioipc="?",
                    files=(path,),
                    **common,
                )
            )
        elif stat.S_ISREG(st.st_mode):
            rows.append(
                IPCObject(
                    kind="posix-shm",
                    name="/" + entry,
                    size=st.st_size,
                    count=None,
                    aioipc="?",
                    files=(path,),
                    **common,
                )
            )
    # Doorbells of one half-removed ring: keep one row per ring name.
    seen: set[tuple[str, str | None]] = set()
    unique = []
    for row in rows:
        if (row.kind, row.name) in seen:
            continue
        seen.add((row.kind, row.name))
        unique.append(row)
    return unique


# -- POSIX message queues ---------------------------------------------------------------


def parse_mqueue(text: str) -> int | None:
    """The bytes queued, from a /dev/mqueue file's ``QSIZE:N NOTIFY:...`` line."""
    for word in text.split():
        if word.startswith("QSIZE:"):
            try:
                return int(word[len("QSIZE:") :])
            except ValueError:
                return None
    return None


def scan_mqueue(
    directory: str | None, *, owner: Callable[[int], str] = user_name
) -> list[IPCObject]:
    """The queues in ``directory``, an ``mqueue`` mount (None: none to read)."""
    if directory is None:
        return []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    rows = []
    for entry in names:
        path = os.path.join(directory, entry)
        try:
            st = os.stat(path)
        except OSError:  # gone meanwhile
            continue
        try:
            used = parse_mqueue(Path(path).read_text())
        except OSError:  # another user's queue we may not read: listed all the same
            used = None
        rows.append(
            IPCObject(
                kind="posix-mq",
                name="/" + entry,
                key=None,
                id=None,
                uid=st.st_uid,
                owner=owner(st.st_uid),
                mode=_mode(st.st_mode),
                size=used,
                count=_peek("posix-mq", "/" + entry),
                pid=None,
                alive=None,
                aioipc="?",
                files=(path,) if directory == "/dev/mqueue" else (),
                dev=st.st_dev,
                ino=st.st_ino,
            )
        )
    return rows


# -- FIFOs and socket files (from the registry) -----------------------------------------


def registry_paths(entries: Iterable[Entry], kinds: set[str]) -> list[IPCObject]:
    """A row for each registered FIFO or socket file that is still the one registered."""
    rows = []
    for e in entries:
        if e.kind not in kinds or e.kind not in ("fifo", "unix-socket"):
            continue
        try:
            st = os.lstat(e.ident)
        except (OSError, ValueError):
            continue
        wanted = stat.S_ISFIFO if e.kind == "fifo" else stat.S_ISSOCK
        if not wanted(st.st_mode) or (e.ino is not None and e.ino != st.st_ino):
            continue
        rows.append(
            IPCObject(
                kind=e.kind,
                name=e.ident,
                key=None,
                id=None,
                uid=st.st_uid,
                owner=user_name(st.st_uid),
                mode=_mode(st.st_mode),
                size=None,
                count=None,
                pid=None,
                alive=None,
                aioipc="?",
                files=(e.ident,),
                dev=st.st_dev,
                ino=st.st_ino,
            )
        )
    return rows


# -- joining the registry and the holders -----------------------------------------------


def _entry_of(row: IPCObject, index: dict[tuple[str, str], Entry]) -> Entry | None:
    """The entry that vouches for ``row``, if one does.

    It must name this very object: for SysV the same id and key in the same IPC
    namespace, otherwise the same device and inode (a POSIX queue also the same IPC
    namespace). And the object must belong to the entry's user: a registry is trusted
    for what its own user made, never for another user's objects.
    """
    if row.id is not None:
        entry = index.get((row.kind, str(row.id)))
        if entry is None or row.key is None or entry.key is None:
            return None
        if entry.key & 0xFFFFFFFF != int(row.key, 16):
            return None
        if entry.ipcns is None or entry.ipcns != _registry.ipc_namespace():
            return None
        return entry if row.cuid == entry.uid else None
    entry = index.get((row.kind, row.name or ""))
    if entry is None or (entry.dev, entry.ino) != (row.dev, row.ino) or row.uid != entry.uid:
        return None  # another object was made under the name since, or not theirs
    if row.kind == "posix-mq" and entry.ipcns != _registry.ipc_namespace():
        return None
    return entry


def _ring_attached(name: str) -> bool | None:
    from .. import shm

    try:
        return not shm.is_stale(name)
    except Exception:  # unreadable, gone meanwhile, or no longer a ring
        return None


def _topic_attached(name: str) -> bool | None:
    from .. import pubsub

    try:
        return not pubsub.is_stale(name)
    except Exception:  # unreadable, gone meanwhile, or no longer a topic
        return None


def topic_details(row: IPCObject, holders: Holders) -> dict[str, Any]:
    """A topic row's capacity, slots, messages published, subscribers and publishers,
    as its header says now; nothing if it cannot be opened (another user's, corrupt,
    gone). Opening it changes nothing in it."""
    from .. import pubsub

    try:
        with pubsub.Topic.open(row.name or "") as topic:
            published = topic.counts()[0]
            infos = topic.subscribers()
            changes: dict[str, Any] = {
                "capacity": topic.capacity,
                "max_subscribers": topic.max_subscribers,
                "count": published,
            }
    except Exception:  # not ours to open, corrupt, or gone meanwhile: the row says less
        return {}
    subscribers = tuple(
        TopicSubscriber(i.slot, i.pid, i.policy, i.alive, i.lag_messages, i.lag_bytes)
        for i in infos
    )
    subscribing = {s.pid for s in subscribers if s.alive}
    publishers = tuple(sorted(holders.pids(row.dev, row.ino) - subscribing))
    return {**changes, "subscribers": subscribers, "publishers": publishers}


def _socket_listened(path: str) -> bool | None:
    from .._core import unix

    try:
        return not unix._is_stale(path, "stream")
    except Exception:  # not a socket any more
        return None


def object_path(row: IPCObject, mqueue: str | None) -> str | None:
    """The file behind a POSIX object, ring, FIFO or socket (None if it has none here)."""
    if row.kind == "posix-mq":
        return None if mqueue is None or row.name is None else mqueue + row.name
    if row.kind == "posix-sem" and row.name is not None:
        return f"{SHM_DIR}/{_SEM_PREFIX}{row.name[1:]}"
    if row.kind in ("posix-shm", "shm-ring", "topic") and row.name is not None:
        return SHM_DIR + row.name
    if row.kind in ("fifo", "unix-socket"):
        return row.name
    return None


def _pids_text(pids: list[int]) -> str:
    """``"12, 34, 56, ..."``: the first three pids of a list."""
    return ", ".join(map(str, pids[:3])) + (", ..." if len(pids) > 3 else "")


def _unseen(row: IPCObject, holders: Holders) -> str | None:
    """Why processes we cannot look into could be using ``row``, if they could."""
    hidden = holders.hidden(row.uid, int(row.mode, 8))
    if not hidden:
        return None
    shown = _pids_text(hidden)
    if os.geteuid() == 0:
        return f"pid {shown} could be using it and cannot be inspected, even by root here"
    return f"pid {shown} could be using it and cannot be inspected (run as root)"


def _nobody_attached(
    row: IPCObject, holders: Holders, mqueue: str | None
) -> tuple[bool | None, str]:
    """(True if nobody holds ``row``; None if that cannot be told), and why not."""
    if row.kind == "sysv-shm":
        n = row.count or 0
        return n == 0, f"{n} process{'es' if n != 1 else ''} attached"
    if row.kind == "shm-ring":
        attached = _ring_attached(row.name or "")
        if attached is None:
            return None, "its ring header cannot be read"
        return not attached, "a live process is attached"
    if row.kind == "topic":
        pids = sorted(holders.pids(row.dev, row.ino))
        attached = _topic_attached(row.name or "")
        if attached is None:
            return None, "its header cannot be read"
        if pids:  # a process holding it that has not locked yet (opening it just now)
            return False, f"open in pid {_pids_text(pids)}"
        return not attached, "another process has it open"
    if row.kind == "unix-socket":
        listened = _socket_listened(row.name or "")
        if listened is None:
            return None, "it is no longer a socket"
        return not listened, "a socket is bound to it (a live listener)"
    if row.kind in ("sysv-msg", "sysv-sem"):
        # Nothing lists who holds a queue or a set: a thread blocked on it, or the last
        # processes to use it, stand in. A reused pid only makes this say "in use".
        assert row.id is not None
        blocked = sorted(holders.waiting.get((row.kind[5:], row.id), set()))
        if blocked or row.waiters:
            who = f"pid {blocked[0]}" if blocked else f"{row.waiters} process(es)"
            return False, f"{who} waiting on it"
        live = [p for p in row.last_pids if pid_alive(p)]
        if live:
            return False, f"pid {live[0]} used it last and is alive"
        # The kernel counts a set's waiters (row.waiters) but not a queue's: a process
        # we cannot look into could be blocked in msgrcv on it.
        unseen = _unseen(row, holders) if row.kind == "sysv-msg" else None
        return (None, unseen) if unseen else (True, "")
    pids = sorted(holders.pids(row.dev, row.ino))
    busy = f"open in pid {_pids_text(pids)}" if pids else "another process has it open or mapped"
    path = object_path(row, mqueue)
    if row.kind != "fifo" and path is not None:
        free = unused_by_others(path)  # the kernel's own answer, when it gives one
        if free is not None:
            return free, busy
    if pids:
        return False, busy
    unseen = _unseen(row, holders)
    return (None, unseen) if unseen else (True, "")


def annotate(
    rows: Iterable[IPCObject],
    entries: Iterable[Entry],
    holders: Holders,
    mqueue: str | None = None,
) -> list[IPCObject]:
    """``rows`` with creator, liveness, users, ``aioipc`` and ``stale`` filled in."""
    index = {(e.kind, e.ident): e for e in entries}
    out = []
    for row in rows:
        entry = _entry_of(row, index)
        changes: dict[str, Any] = {}
        if entry is not None:
            changes.update(aioipc="yes", pid=entry.pid, alive=_registry.creator_alive(entry))
        elif row.aioipc != "yes":
            changes["aioipc"] = "no" if _registry.knows(row.uid) else "?"
        if row.kind == "unix-socket":
            listened = _socket_listened(row.name or "")
            changes["users"] = None if listened is None else int(listened)
        elif row.dev is not None:
            changes["users"] = len(holders.pids(row.dev, row.ino))
        if row.kind == "topic":
            changes.update(topic_details(row, holders))
        row = replace(row, **changes)
        out.append(replace(row, **_staleness(row, entry, holders, mqueue)))
    return out


def _staleness(
    row: IPCObject, entry: Entry | None, holders: Holders, mqueue: str | None
) -> dict[str, Any]:
    if row.aioipc != "yes":
        return {"stale": None, "why": "not made by aioipc" if row.aioipc == "no" else ""}
    if entry is None:  # a ring or topic by its magic alone
        return {"stale": False, "why": "no registry entry: who made it is unknown"}
    if row.kind == "topic":
        # Named and persistent: publishers and subscribers come and go, the creator
        # among them, so only whether anyone has it open counts.
        if row.alive is None:
            creator = f"whether its creator, pid {entry.pid}, runs cannot be told"
        else:
            creator = f"its creator, pid {entry.pid}, is {'alive' if row.alive else 'dead'}"
        free, busy = _nobody_attached(row, holders, mqueue)
        if not free:
            return {"stale": False, "why": f"{creator}, but {busy}"}
        return {"stale": True, "why": f"{creator} and nobody is attached"}
    if row.alive is None:
        why = f"cannot tell whether its creator, pid {entry.pid}, runs (another pid namespace)"
        return {"stale": False, "why": why}
    if row.alive:
        return {"stale": False, "why": f"its creator, pid {entry.pid}, is alive"}
    creator = f"its creator, pid {entry.pid}, is dead"
    free, busy = _nobody_attached(row, holders, mqueue)
    if not free:  # in use, or cannot be told
        return {"stale": False, "why": f"{creator}, but {busy}"}
    return {"stale": True, "why": f"{creator} and nobody is attached"}


# -- everything -------------------------------------------------------------------------


@dataclass
class Scan:
    """What :func:`scan` found: the rows, and the registry entries whose object is
    gone (removed by something other than aioipc)."""

    rows: list[IPCObject]
    orphans: list[Entry]


def scan(
    kinds: Iterable[str] = KINDS,
    uid: int | None = None,
    *,
    mqueue: str | None = "/dev/mqueue",
) -> Scan:
    """Every IPC object of ``kinds`` on the machine (owned by ``uid``, if given).

    ``mqueue``: where an ``mqueue`` filesystem is mounted (None: queues cannot be listed,
    and their registry entries are never called orphans).
    """
    wanted = set(kinds)
    entries = [e for e in _registry.entries() if e.kind in wanted]  # first: see above
    rows: list[IPCObject] = []
    for kind in SYSV_FILES:
        if kind in wanted:
            rows += scan_sysv(kind)
    if wanted & {"posix-shm", "posix-sem", "shm-ring", "topic"}:
        rows += [r for r in scan_dev_shm() if r.kind in wanted]
    if "posix-mq" in wanted:
        rows += scan_mqueue(mqueue)
    rows += registry_paths(entries, wanted)
    rows = annotate(rows, entries, scan_holders(), mqueue)
    index = {(r.kind, r.name if r.id is None else str(r.id)) for r in rows if r.aioipc == "yes"}
    orphans = [
        e
        for e in entries
        if (e.kind, e.ident) not in index and not (e.kind == "posix-mq" and mqueue is None)
    ]
    if uid is not None:
        rows = [r for r in rows if r.uid == uid]
    order = {k: i for i, k in enumerate(KINDS)}
    rows.sort(key=lambda r: (order[r.kind], r.id or 0, r.name or ""))
    return Scan(rows, orphans)
