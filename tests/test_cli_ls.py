"""``aioipc ls`` and ``aioipc rm``, run as real processes against real kernel objects.

Each test makes one object of every kind with aioipc (unique keys and names), runs
``python -m aioipc`` with subprocess and checks what it reports or removes; the SysV rows
are compared with ``ipcs`` when it is installed. Every object is removed at the end (the
session leak check would notice otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest

from aioipc import posix, shm, sysv
from aioipc._inventory import parse_mqueue, parse_sysv

CLI = [sys.executable, "-m", "aioipc"]
LIMIT = 30


def aioipc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=LIMIT
    )


def ls_json(*args: str) -> list[dict[str, Any]]:
    done = aioipc("ls", "--json", *args)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def find(rows: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any] | None:
    hits = [r for r in rows if r["kind"] == kind and all(r[k] == v for k, v in match.items())]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def _key() -> int:
    return random.randint(0x10000000, 0x7FFFFFFF)


@dataclass
class Objects:
    sysv_shm: Any
    sysv_msg: Any
    sysv_sem: Any
    posix_shm: Any
    posix_sem: Any
    posix_mq: Any
    ring: Any
    tag: str

    def name(self, kind: str) -> str:
        return f"/aioipc-ls-{kind}-{self.tag}"


@pytest.fixture
def objects() -> Iterator[Objects]:
    """One object of each kind; whatever a test did not remove is removed afterwards."""
    tag = uuid4().hex[:10]
    made: list[Any] = []
    try:
        seg = sysv.SharedMemory.create(_key(), 8192, mode=0o640)
        made.append(seg)
        msgq = sysv.MessageQueue.create(_key(), mode=0o620)
        made.append(msgq)
        sems = sysv.SemaphoreSet.create(_key(), 3, mode=0o600)
        made.append(sems)
        pshm = posix.SharedMemory.create(f"/aioipc-ls-posix-shm-{tag}", 4096, mode=0o640)
        made.append(pshm)
        psem = posix.Semaphore.create(f"/aioipc-ls-posix-sem-{tag}", mode=0o600)
        made.append(psem)
        pmq = posix.MessageQueue.create(f"/aioipc-ls-posix-mq-{tag}", mode=0o620)
        made.append(pmq)
        ring = shm.ShmReceiver.create(
            f"/aioipc-ls-shm-ring-{tag}", 4096, mode=0o600, unlink_on_close=False
        )
        made.append(ring)
        anyio.run(msgq.send, b"hello")
        yield Objects(seg, msgq, sems, pshm, psem, pmq, ring, tag)
    finally:
        for obj in made:
            if isinstance(obj, (sysv.SharedMemory, sysv.MessageQueue, sysv.SemaphoreSet)):
                with contextlib.suppress(Exception):
                    obj.remove()
                anyio.run(obj.aclose)
            elif isinstance(obj, shm.ShmReceiver):
                obj.close()
                with contextlib.suppress(Exception):
                    shm.unlink(obj.name)
            else:
                with contextlib.suppress(Exception):
                    obj.unlink()
                if isinstance(obj, posix.SharedMemory):
                    obj.close()
                else:
                    anyio.run(obj.aclose)


def _ipcs(flag: str) -> dict[int, tuple[str, str, str]]:
    """id -> (key, owner, perms) from ``ipcs -m``, ``-q`` or ``-s``."""
    out = subprocess.run(["ipcs", flag], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].startswith("0x"):
            rows[int(f[1])] = (f[0], f[2], f[3])
    return rows


def test_ls_lists_one_object_of_each_kind(objects: Objects) -> None:
    me = os.geteuid()
    rows = ls_json()
    seg = find(rows, "sysv-shm", id=objects.sysv_shm.id)
    assert seg is not None
    assert seg["key"] == f"{objects.sysv_shm.key:#010x}"
    assert (seg["uid"], seg["mode"], seg["size"], seg["count"]) == (me, "0640", 8192, 1)
    assert (seg["pid"], seg["alive"], seg["aioipc"]) == (os.getpid(), True, "?")

    msg = find(rows, "sysv-msg", id=objects.sysv_msg.id)
    assert msg is not None
    assert msg["key"] == f"{objects.sysv_msg.key:#010x}"
    assert (msg["uid"], msg["mode"], msg["size"], msg["count"]) == (me, "0620", 5, 1)
    assert (msg["pid"], msg["alive"]) == (os.getpid(), True)

    sem = find(rows, "sysv-sem", id=objects.sysv_sem.id)
    assert sem is not None
    assert (sem["uid"], sem["mode"], sem["count"], sem["pid"]) == (me, "0600", 3, None)

    for kind, mode in (("posix-shm", "0640"), ("posix-sem", "0600"), ("posix-mq", "0620")):
        row = find(rows, kind, name=objects.name(kind))
        assert row is not None, kind
        assert (row["uid"], row["mode"], row["aioipc"], row["pid"]) == (me, mode, "?", None)
    assert find(rows, "posix-shm", name=objects.name("posix-shm"))["size"] == 4096  # type: ignore[index]
    assert find(rows, "posix-mq", name=objects.name("posix-mq"))["size"] == 0  # type: ignore[index]

    ring = find(rows, "shm-ring", name=objects.name("shm-ring"))
    assert ring is not None
    assert (ring["uid"], ring["mode"], ring["aioipc"], ring["alive"]) == (me, "0600", "yes", True)
    base = "/dev/shm" + objects.name("shm-ring")
    assert ring["files"] == [base, base + ".bell-data", base + ".bell-space"]
    # The doorbells are folded into the ring's row, never rows of their own.
    assert not [r for r in rows if r["name"] and ".bell-" in r["name"]]
    # The owner is the user name.
    import pwd

    assert seg["owner"] == ring["owner"] == pwd.getpwuid(me).pw_name

    if shutil.which("ipcs"):
        for flag, row in (("-m", seg), ("-q", msg), ("-s", sem)):
            key, owner, perms = _ipcs(flag)[row["id"]]
            assert (int(key, 16), owner, int(perms, 8)) == (
                int(row["key"], 16),
                row["owner"],
                int(row["mode"], 8),
            ), flag


def test_ls_kind_mine_and_table(objects: Objects) -> None:
    rows = ls_json("--kind", "sysv-sem", "--kind", "shm-ring", "--mine")
    assert {r["kind"] for r in rows} <= {"sysv-sem", "shm-ring"}
    assert all(r["uid"] == os.geteuid() for r in rows)
    assert find(rows, "sysv-sem", id=objects.sysv_sem.id) is not None
    assert find(rows, "shm-ring", name=objects.name("shm-ring")) is not None
    table = aioipc("ls")
    assert table.returncode == 0, table.stderr
    assert objects.name("posix-mq") in table.stdout
    assert aioipc("ls", "--kind", "nope").returncode == 2


def _gone(kind: str, **match: Any) -> bool:
    return find(ls_json("--kind", kind), kind, **match) is None


def test_rm_removes_each_kind(objects: Objects) -> None:
    for kind, target, match in (
        ("sysv-shm", f"{objects.sysv_shm.key:#x}", {"id": objects.sysv_shm.id}),
        ("sysv-msg", str(objects.sysv_msg.id), {"id": objects.sysv_msg.id}),
        ("sysv-sem", f"{objects.sysv_sem.key:#010x}", {"id": objects.sysv_sem.id}),
        ("posix-shm", objects.name("posix-shm"), {"name": objects.name("posix-shm")}),
        ("posix-sem", objects.name("posix-sem").lstrip("/"), {"name": objects.name("posix-sem")}),
        ("posix-mq", objects.name("posix-mq"), {"name": objects.name("posix-mq")}),
    ):
        done = aioipc("rm", kind, target)
        assert done.returncode == 0, (kind, done.stderr)
        assert done.stdout.startswith(f"removed {kind}"), done.stdout
        if kind == "sysv-shm":
            # Still attached (by us): the kernel frees it at the last detach; until then
            # its key is gone (IPC_PRIVATE), so it can no longer be found by key.
            row = find(ls_json("--kind", kind), kind, **match)
            assert row is None or row["key"] == "0x00000000", row
        else:
            assert _gone(kind, **match), kind
        # A second rm finds nothing: exit 1, naming the object.
        again = aioipc("rm", kind, target)
        assert again.returncode == 1, (kind, again.stderr)
        assert again.stderr.startswith("aioipc: error:")
        assert "\n" not in again.stderr.strip()
        assert (
            target.lstrip("/").removeprefix("0x") in again.stderr
            or str(match.get("id")) in again.stderr
        ), again.stderr

    ring = objects.name("shm-ring")
    live = aioipc("rm", "shm-ring", ring)
    assert live.returncode == 1, live.stderr
    assert "--force" in live.stderr, live.stderr
    assert not _gone("shm-ring", name=ring)
    objects.ring.close()  # unlink_on_close=False: the files stay, nobody attached
    done = aioipc("rm", "shm-ring", ring)
    assert done.returncode == 0, done.stderr
    assert not [
        p for p in ("", ".bell-data", ".bell-space") if os.path.lexists(f"/dev/shm{ring}{p}")
    ]


def test_rm_force_removes_a_live_ring(objects: Objects) -> None:
    ring = objects.name("shm-ring")
    done = aioipc("rm", "shm-ring", ring, "--force")
    assert done.returncode == 0, done.stderr
    assert not os.path.lexists("/dev/shm" + ring)


def test_rm_errors() -> None:
    cases = [
        (("rm", "sysv-shm", "2147483000"), 1, "2147483000"),
        (("rm", "sysv-msg", "0x7ffffffe"), 1, "0x7ffffffe"),
        (("rm", "posix-mq", f"/nope-{uuid4().hex[:8]}"), 1, "nope-"),
        (("rm", "shm-ring", f"/nope-{uuid4().hex[:8]}"), 1, "nope-"),
        (("rm", "sysv-sem", "abc"), 2, "abc"),
        (("rm", "sysv-sem", "0xzz"), 2, "0xzz"),
        (("rm", "posix-shm", "/a/b"), 2, ""),
        (("rm", "--stale"), 2, "not yet"),
        (("rm", "sysv-shm"), 2, ""),
        (("rm", "bogus", "1"), 2, ""),
    ]
    for args, code, text in cases:
        done = aioipc(*args)
        assert done.returncode == code, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert text in done.stderr, (args, done.stderr)


def test_parsers() -> None:
    text = (
        "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n"
        "        -1         7   1666          4  1000  1000  1000  1000          0 1700000000\n"
    )
    [row] = parse_sysv("sysv-sem", text, owner=lambda uid: f"u{uid}", alive=lambda pid: True)
    assert (row.key, row.id, row.mode, row.count, row.owner) == (
        "0xffffffff",
        7,
        "0666",
        4,
        "u1000",
    )
    assert parse_mqueue("QSIZE:129        NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n") == 129
    assert parse_mqueue("") is None
    assert Path("/proc/sysvipc/shm").exists()
