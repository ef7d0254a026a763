"""``aioipc ls`` and ``aioipc rm``: every IPC object on the machine, and removing one.

The scanning is pure functions returning :class:`IPCObject` rows: the parsers take the
text or the directory to read, so tests can feed them anything. Sources:

* ``/proc/sysvipc/{shm,msg,sem}``: SysV objects. The header line names the columns, and
  they are used by name (the kernel has added columns over the years).
* ``/dev/shm``: ``sem.NAME`` is the POSIX semaphore ``/NAME``; a regular file starting
  with the ring magic ``b"aioipcRG"`` is an aioipc ring, its two doorbells
  ``NAME.bell-data`` and ``NAME.bell-space`` folded into its row; any other regular file
  is POSIX shared memory ``/NAME``.
* ``/dev/mqueue`` (when mounted): POSIX message queues; each file reads
  ``QSIZE:N NOTIFY:...``, N the bytes queued.

Whether aioipc made an object is only known for rings (their magic): "yes"; anything
else is "?" until aioipc keeps a registry of what it creates.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import _libc

__all__ = [
    "KINDS",
    "IPCObject",
    "parse_mqueue",
    "parse_sysv",
    "pid_alive",
    "scan",
    "scan_dev_shm",
]

KINDS = ("sysv-shm", "sysv-msg", "sysv-sem", "posix-shm", "posix-sem", "posix-mq", "shm-ring")
SYSV_FILES = {"sysv-shm": "shm", "sysv-msg": "msg", "sysv-sem": "sem"}
SHM_DIR = "/dev/shm"
MQUEUE_DIR = "/dev/mqueue"
MQUEUE_HINT = (
    "note: /dev/mqueue is not mounted, so POSIX message queues are not listed "
    "(as root: mkdir -p /dev/mqueue && mount -t mqueue none /dev/mqueue)"
)
RING_MAGIC = b"aioipcRG"
_BELLS = (".bell-data", ".bell-space")
_SEM_PREFIX = "sem."


@dataclass(frozen=True)
class IPCObject:
    """One row of ``aioipc ls``.

    ``size``: bytes (shared memory: its size; SysV and POSIX queues: bytes queued).
    ``count``: messages queued (sysv-msg), processes attached (sysv-shm), semaphores in
    the set (sysv-sem); None where the kernel does not say. ``pid``: the creator
    (sysv-shm ``cpid``) or last sender (sysv-msg ``lspid``); None for the rest.
    ``alive``: whether ``pid`` still runs; for a ring, whether a live process is
    attached. ``aioipc``: "yes" (a ring: its magic) or "?" (unknown).
    """

    kind: str
    name: str | None  # POSIX and rings: "/name"
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

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["files"] = list(self.files)
        return out


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (in our pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        if kind == "sysv-shm":
            size, count, pid = num("size"), num("nattch"), num("cpid")
        elif kind == "sysv-msg":
            size, count, pid = num("cbytes"), num("qnum"), num("lspid")
        else:
            count = num("nsems")
        if pid == 0:  # a queue nobody has sent to yet
            pid = None
        uid = int(col["uid"])
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
            )
        )
    return rows


def scan_sysv(kind: str, proc: str = "/proc/sysvipc") -> list[IPCObject]:
    try:
        text = Path(proc, SYSV_FILES[kind]).read_text()
    except OSError:
        return []
    return parse_sysv(kind, text)


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


def _ring_attached(name: str) -> bool | None:
    from . import shm

    try:
        return not shm.is_stale(name)
    except Exception:  # unreadable, gone meanwhile, or no longer a ring
        return None


def scan_dev_shm(
    directory: str = SHM_DIR,
    *,
    owner: Callable[[int], str] = user_name,
    attached: Callable[[str], bool | None] = _ring_attached,
) -> list[IPCObject]:
    """POSIX semaphores, POSIX shared memory and aioipc rings in ``directory``."""
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
    for entry, st in stats.items():
        if stat.S_ISREG(st.st_mode) and not entry.startswith(_SEM_PREFIX):
            head = _read_head(os.path.join(directory, entry), len(RING_MAGIC))
            if head == RING_MAGIC:
                rings.add(entry)
    rows = []
    for entry, st in stats.items():
        path = os.path.join(directory, entry)
        bell_of = next((entry[: -len(b)] for b in _BELLS if entry.endswith(b)), None)
        if bell_of is not None and bell_of in rings:
            continue  # folded into its ring's row
        common: dict[str, Any] = {
            "key": None,
            "id": None,
            "uid": st.st_uid,
            "owner": owner(st.st_uid),
            "mode": _mode(st.st_mode),
            "count": None,
            "pid": None,
        }
        if entry in rings or (bell_of is not None and not stat.S_ISREG(st.st_mode)):
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
                    alive=attached("/" + base) if entry in rings else False,
                    aioipc="yes" if entry in rings else "?",
                    files=files if entry in rings else (path,),
                    **common,
                )
            )
        elif entry.startswith(_SEM_PREFIX) and stat.S_ISREG(st.st_mode):
            rows.append(
                IPCObject(
                    kind="posix-sem",
                    name="/" + entry[len(_SEM_PREFIX) :],
                    size=None,
                    alive=None,
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
                    alive=None,
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


# -- /dev/mqueue ------------------------------------------------------------------------


def parse_mqueue(text: str) -> int | None:
    """The bytes queued, from a /dev/mqueue file's ``QSIZE:N NOTIFY:...`` line."""
    for word in text.split():
        if word.startswith("QSIZE:"):
            try:
                return int(word[len("QSIZE:") :])
            except ValueError:
                return None
    return None


def mqueue_mounted(directory: str = MQUEUE_DIR) -> bool:
    return os.path.ismount(directory)


def scan_mqueue(
    directory: str = MQUEUE_DIR, *, owner: Callable[[int], str] = user_name
) -> list[IPCObject]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    rows = []
    for entry in names:
        path = os.path.join(directory, entry)
        try:
            st = os.stat(path)
            used = parse_mqueue(Path(path).read_text())
        except OSError:
            continue
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
                count=None,
                pid=None,
                alive=None,
                aioipc="?",
                files=(path,),
            )
        )
    return rows


# -- everything -------------------------------------------------------------------------


def scan(kinds: Iterable[str] = KINDS, uid: int | None = None) -> list[IPCObject]:
    """Every IPC object of ``kinds`` on the machine (owned by ``uid``, if given)."""
    wanted = set(kinds)
    rows: list[IPCObject] = []
    for kind in SYSV_FILES:
        if kind in wanted:
            rows += scan_sysv(kind)
    if wanted & {"posix-shm", "posix-sem", "shm-ring"}:
        rows += [r for r in scan_dev_shm() if r.kind in wanted]
    if "posix-mq" in wanted:
        rows += scan_mqueue()
    if uid is not None:
        rows = [r for r in rows if r.uid == uid]
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(rows, key=lambda r: (order[r.kind], r.id or 0, r.name or ""))


# -- rm ---------------------------------------------------------------------------------


class RemoveError(Exception):
    """``aioipc rm`` failed: one line; ``code`` 1 (runtime) or 2 (usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def posix_name(text: str) -> str:
    return text if text.startswith("/") else "/" + text


def find_sysv(kind: str, target: str, rows: Sequence[IPCObject]) -> IPCObject:
    """The SysV object of ``kind`` named by ``target``: an id, or a key with 0x."""
    if target.lower().startswith("0x"):
        try:
            key = int(target, 16)
        except ValueError:
            raise RemoveError(f"{kind}: {target!r} is not a key (0x and hex digits)", 2) from None
        if not 0 <= key <= 0xFFFFFFFF:
            raise RemoveError(f"{kind}: key {target} does not fit in 32 bits", 2)
        if key == 0:
            raise RemoveError(f"{kind}: key 0x00000000 is IPC_PRIVATE, not unique: give the id", 2)
        hits = [r for r in rows if r.kind == kind and r.key == f"{key:#010x}"]
        if not hits:
            raise RemoveError(f"{kind} with key {key:#010x}: does not exist")
        return hits[0]
    try:
        ipc_id = int(target, 10)
    except ValueError:
        raise RemoveError(
            f"{kind}: {target!r} is neither an id (decimal) nor a key (0x...)", 2
        ) from None
    hits = [r for r in rows if r.kind == kind and r.id == ipc_id]
    if not hits:
        raise RemoveError(f"{kind} with id {ipc_id}: does not exist")
    return hits[0]


def _rmid(kind: str, ipc_id: int) -> None:
    if kind == "sysv-shm":
        _libc.shmctl(ipc_id, _libc.IPC_RMID)
    elif kind == "sysv-msg":
        _libc.msgctl(ipc_id, _libc.IPC_RMID)
    else:
        _libc.semctl(ipc_id, 0, _libc.IPC_RMID)


def remove(kind: str, target: str, *, force: bool = False) -> str:
    """Remove one object; returns what was removed, in words. Raises RemoveError."""
    from . import posix, shm
    from .errors import IPCError

    if kind in SYSV_FILES:
        row = find_sysv(kind, target, scan_sysv(kind))
        assert row.id is not None
        what = f"{kind} id {row.id} (key {row.key})"
        try:
            _rmid(kind, row.id)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIDRM):
                raise RemoveError(f"{what}: does not exist") from None
            if exc.errno == errno.EPERM:
                raise RemoveError(f"{what}: permission denied (not its owner or creator)") from None
            raise RemoveError(f"{what}: {exc.strerror}") from None
        return what
    name = posix_name(target)
    what = f"{kind} {name}"
    unlinkers: dict[str, Callable[[str], None]] = {
        "posix-shm": posix.unlink_shared_memory,
        "posix-sem": posix.unlink_semaphore,
        "posix-mq": posix.unlink_message_queue,
        "shm-ring": shm.unlink,
    }
    try:
        if kind == "shm-ring" and not force and not shm.is_stale(name):
            raise RemoveError(
                f"{what}: a live process is attached; --force removes it anyway "
                "(attached ends keep working)"
            )
        unlinkers[kind](name)
    except RemoveError:
        raise
    except IPCError as exc:  # before ValueError: some IPC errors are both
        raise RemoveError(_one_line(exc, what)) from None
    except ValueError as exc:
        raise RemoveError(_one_line(exc, what), 2) from None
    except OSError as exc:
        raise RemoveError(_one_line(exc, what)) from None
    return what


def _one_line(exc: BaseException, what: str) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    name = what.split(" ", 1)[1]
    return text if name in text else f"{what}: {text}"


# -- the subcommands --------------------------------------------------------------------

_COLUMNS = ("kind", "key/name", "id", "owner", "mode", "size", "count", "pid", "alive", "aioipc")


def _cells(row: IPCObject) -> tuple[str, ...]:
    def text(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    return (
        row.kind,
        row.key if row.key is not None else (row.name or "-"),
        text(row.id),
        row.owner,
        row.mode,
        text(row.size),
        text(row.count),
        text(row.pid),
        text(row.alive),
        row.aioipc,
    )


def run_ls(kinds: Sequence[str] | None, mine: bool, as_json: bool) -> int:
    import json
    import sys

    wanted = tuple(kinds) if kinds else KINDS
    rows = scan(wanted, os.geteuid() if mine else None)
    if "posix-mq" in wanted and not mqueue_mounted():
        print(MQUEUE_HINT, file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return 0
    cells = [_cells(r) for r in rows]
    try:
        if not sys.stdout.isatty():  # piped: plain columns, never wrapped
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c[i]) for c in [_COLUMNS, *cells]) for i in range(len(_COLUMNS))]
        for line in [_COLUMNS, *cells]:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        return 0
    table = Table(*_COLUMNS, title=f"IPC objects: {len(rows)}")
    for line in cells:
        table.add_row(*line)
    Console().print(table)
    return 0


def run_rm(kind: str, target: str, force: bool, stale: bool) -> int:
    import sys

    if stale:
        print(
            "aioipc: error: rm --stale: not yet; it needs the registry of the "
            "objects aioipc creates (a later change)",
            file=sys.stderr,
        )
        return 2
    if kind is None or target is None:
        print("aioipc: error: rm needs KIND and ID|KEY|NAME", file=sys.stderr)
        return 2
    try:
        what = remove(kind, target, force=force)
    except RemoveError as exc:
        print(f"aioipc: error: {exc}", file=sys.stderr)
        return exc.code
    print(f"removed {what}")
    return 0


def add_inventory_parsers(sub: Any) -> None:
    """Register ``aioipc ls`` and ``aioipc rm`` on the subparsers ``sub``."""
    ls = sub.add_parser(
        "ls",
        help="list every IPC object on the machine",
        description="List the SysV shared memory segments, message queues and semaphore "
        "sets, the POSIX shared memory, semaphores and message queues, and aioipc's "
        "shared-memory rings (docs/cli.md says what each column means).",
    )
    ls.add_argument("--kind", action="append", choices=KINDS, help="only this kind (repeatable)")
    ls.add_argument("--mine", action="store_true", help="only objects you own")
    ls.add_argument("--json", action="store_true", help="a JSON list of objects")
    ls.set_defaults(func=lambda a: run_ls(a.kind, a.mine, a.json))

    rm = sub.add_parser(
        "rm",
        help="remove one IPC object",
        description="Remove one object: sysv-* by id, or by key written 0x...; posix-* "
        "and shm-ring by name. A ring a live process is attached to is only removed "
        "with --force.",
    )
    rm.add_argument("kind", metavar="KIND", nargs="?", choices=KINDS, help=", ".join(KINDS))
    rm.add_argument("target", metavar="ID|KEY|NAME", nargs="?", help="which object")
    rm.add_argument("--force", action="store_true", help="remove a ring even while attached")
    rm.add_argument("--stale", action="store_true", help="(not yet: needs the registry)")
    rm.set_defaults(func=lambda a: run_rm(a.kind, a.target, a.force, a.stale))
