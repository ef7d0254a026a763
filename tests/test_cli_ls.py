"""``aioipc ls`` and ``aioipc rm``, run as real processes against real kernel objects.

A peer process (tests/peers/inventory_peer.py) creates one object of every kind with
aioipc, or holds one; the tests run ``python -m aioipc`` and check what it reports or
removes, SysV rows against ``ipcs`` and POSIX ones against ``stat``. Killing a creator
with SIGKILL leaves its objects behind, which is what ``rm --stale`` is for.

The suite's registry is its own (conftest sets AIOIPC_REGISTRY), so ``rm --stale`` here
only ever sees objects the suite made. Every object is removed at the end (the session
leak check would notice otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
import sysv_ipc

from aioipc import posix, pubsub
from aioipc._cli.inventory import KINDS, parse_mqueue, parse_sysv
from aioipc._core import registry as _registry
from aioipc._core import topic as _topic

from ._topics import topic_files

CLI = [sys.executable, "-m", "aioipc"]
PEER = Path(__file__).parent / "peers" / "inventory_peer.py"
LIMIT = 30
NOBODY = 65534
# What rm --stale can only call unused after looking into every process: a FIFO's
# holders, and a thread blocked in msgrcv on a queue (the kernel counts neither).
UNSEEN_KINDS = ("sysv-msg", "fifo")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid a child")


def aioipc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        env=env,
    )


def ls_json(*args: str) -> list[dict[str, Any]]:
    done = aioipc("ls", "--json", *args)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


class Peer:
    """A running inventory_peer.py: ``info`` is the JSON line it printed when ready."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info: dict[str, Any] = self._line()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], LIMIT)
        assert ready, "the peer did not answer in time"
        line = self.proc.stdout.readline()
        assert line, f"the peer exited with {self.proc.wait(LIMIT)}"
        return json.loads(line)

    def finish(self) -> None:
        """Close its stdin: it removes (or lets go of) what it made and exits 0."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self._line() == "closed"
        assert self.proc.wait(LIMIT) == 0
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(LIMIT)  # reaped: no zombie stands in for the dead creator
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()

    def target(self, kind: str) -> str:
        """How ``aioipc rm`` names the peer's object of ``kind``."""
        value = self.info[kind]
        return str(value[0]) if kind.startswith("sysv-") else str(value)

    def row(self, rows: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
        key = "id" if kind.startswith("sysv-") else "name"
        value = self.info[kind][0] if kind.startswith("sysv-") else self.info[kind]
        hits = [r for r in rows if r["kind"] == kind and r[key] == value]
        assert len(hits) <= 1, hits
        return hits[0] if hits else None


@pytest.fixture
def workdir() -> Iterator[str]:
    """A short directory anyone may write in (socket paths must fit in 108 bytes)."""
    d = tempfile.mkdtemp(prefix="aioipc-ls-")
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Peers a test starts; any still running at the end is killed, and what the killed
    creators left is removed through ``aioipc rm --stale`` (checked to work) or by hand."""
    started: list[Peer] = []
    yield started
    for peer in started:
        if peer.proc.poll() is None:
            peer.kill()
    leftovers = aioipc("rm", "--stale")
    assert leftovers.returncode == 0, leftovers.stderr
    for peer in started:
        _remove_by_hand(peer.info)


def _remove_by_hand(info: dict[str, Any]) -> None:
    """What ``rm --stale`` could not know about: another user's objects (no registry)."""
    for kind in ("sysv-shm", "sysv-msg", "sysv-sem"):
        if kind in info:
            cls = {
                "sysv-shm": sysv_ipc.SharedMemory,
                "sysv-msg": sysv_ipc.MessageQueue,
                "sysv-sem": sysv_ipc.Semaphore,
            }[kind]
            with contextlib.suppress(sysv_ipc.Error):
                cls(info[kind][1]).remove()
    for kind, unlink in (
        ("posix-shm", posix.unlink_shared_memory),
        ("posix-sem", posix.unlink_semaphore),
        ("posix-mq", posix.unlink_message_queue),
    ):
        if kind in info:
            with contextlib.suppress(Exception):
                unlink(info[kind])
    if "shm-ring" in info:
        for suffix in ("", ".bell-data", ".bell-space"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm{info['shm-ring']}{suffix}")
    if "topic" in info:
        for path in topic_files(info["topic"]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def creator(peers: list[Peer], workdir: str, mode: str = "600", *user: str) -> Peer:
    peer = Peer(*user, "create", f"aioipc-ls-{uuid4().hex[:10]}", workdir, mode)
    peers.append(peer)
    return peer


def _ipcs(flag: str) -> dict[int, tuple[str, str, str]]:
    """id -> (key, owner, perms) from ``ipcs -m``, ``-q`` or ``-s``."""
    out = subprocess.run(["ipcs", flag], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].startswith("0x"):
            rows[int(f[1])] = (f[0], f[2], f[3])
    return rows


def _paths(kind: str, name: str) -> list[str]:
    """The files behind a POSIX object or ring."""
    if kind == "posix-sem":
        return [f"/dev/shm/sem.{name[1:]}"]
    if kind == "posix-mq":
        return [f"/dev/mqueue{name}"]
    if kind == "shm-ring":
        return [f"/dev/shm{name}{s}" for s in ("", ".bell-data", ".bell-space")]
    if kind == "topic":
        return [f"/dev/shm{name}{s}" for s in ("", ".space")]
    if kind == "posix-shm":
        return [f"/dev/shm{name}"]
    return [name]


def _exists(peer: Peer, kind: str) -> bool:
    if kind.startswith("sysv-"):
        table = Path(f"/proc/sysvipc/{kind[5:]}").read_text().split("\n")[1:]
        return any(len(f) > 1 and int(f[1]) == peer.info[kind][0] for f in map(str.split, table))
    return any(os.path.lexists(p) for p in _paths(kind, peer.info[kind]))


def hidden_here() -> bool:
    """Whether a process here cannot be looked into even by us (root without
    CAP_SYS_PTRACE, as in some containers, cannot read a non-dumpable process's fds).
    Then a FIFO or a queue is never called unused, and the tests expect exactly that."""
    from aioipc._cli.holders import scan_holders

    return bool(scan_holders().hidden(os.geteuid(), 0o600))


# --------------------------------------------------------------------------- ls


def test_ls_lists_one_object_of_each_kind_with_owner_mode_and_creator(
    peers: list[Peer], workdir: str
) -> None:
    peer = creator(peers, workdir, "640")
    rows = ls_json()
    me = os.geteuid()
    name = pwd.getpwuid(me).pw_name
    for kind in KINDS:
        row = peer.row(rows, kind)
        assert row is not None, kind
        assert (row["uid"], row["owner"], row["mode"]) == (me, name, "0640"), kind
        assert (row["pid"], row["alive"], row["aioipc"]) == (peer.pid, True, "yes"), kind
        assert row["stale"] is False, kind
        why = f"its creator, pid {peer.pid}, is alive"
        if kind == "topic":  # it outlives its creator: that it is open is what counts
            why += f", but open in pid {peer.pid}"
        assert row["why"] == why, kind
        if not kind.startswith("sysv-"):
            for path in _paths(kind, peer.info[kind]):
                st = os.lstat(path)
                assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (me, 0o640), path
    seg = peer.row(rows, "sysv-shm")
    msg = peer.row(rows, "sysv-msg")
    sem = peer.row(rows, "sysv-sem")
    assert seg is not None
    assert msg is not None
    assert sem is not None
    assert seg["key"] == f"{peer.info['sysv-shm'][1]:#010x}"
    assert (seg["size"], seg["count"], seg["users"]) == (8192, 1, 1)
    assert (msg["size"], msg["count"]) == (len(b"queued"), 1)
    assert (sem["count"], sem["values"]) == (3, [0, 1, 2])
    for kind, size, count in (("posix-shm", 4096, None), ("posix-sem", None, 2)):
        row = peer.row(rows, kind)
        assert row is not None
        assert (row["size"], row["count"], row["users"]) == (size, count, 1), kind
    mq = peer.row(rows, "posix-mq")
    ring = peer.row(rows, "shm-ring")
    sock = peer.row(rows, "unix-socket")
    assert mq is not None
    assert ring is not None
    assert sock is not None
    assert (mq["size"], mq["count"], mq["users"]) == (0, 0, 1)
    assert ring["files"] == _paths("shm-ring", peer.info["shm-ring"])
    assert (ring["users"], sock["users"]) == (1, 1)
    # The doorbells are folded into the ring's row, never rows of their own.
    assert not [r for r in rows if r["name"] and ".bell-" in r["name"]]
    topic = peer.row(rows, "topic")
    assert topic is not None
    assert topic["files"] == _paths("topic", peer.info["topic"])
    assert (topic["capacity"], topic["max_subscribers"], topic["count"]) == (4096, 4, 0)
    assert (topic["subscribers"], topic["publishers"], topic["users"]) == ([], [peer.pid], 1)

    if shutil.which("ipcs"):
        for flag, row in (("-m", seg), ("-q", msg), ("-s", sem)):
            key, owner, perms = _ipcs(flag)[row["id"]]
            assert (int(key, 16), owner, int(perms, 8)) == (
                int(row["key"], 16),
                row["owner"],
                int(row["mode"], 8),
            ), flag

    # The table says the same; --kind, --mine and --stale filter.
    table = aioipc("ls")
    assert table.returncode == 0, table.stderr
    for kind in ("posix-mq", "fifo", "unix-socket"):
        assert peer.target(kind) in table.stdout, kind
    only = ls_json("--kind", "sysv-sem", "--kind", "fifo", "--mine")
    assert {r["kind"] for r in only} <= {"sysv-sem", "fifo"}
    assert all(r["uid"] == me for r in only)
    assert peer.row(only, "fifo") is not None
    assert peer.row(only, "sysv-sem") is not None
    assert all(peer.row(ls_json("--stale"), k) is None for k in KINDS)
    assert aioipc("ls", "--kind", "nope").returncode == 2

    peer.finish()  # removes everything through aioipc: no entry is left behind
    rows = ls_json()
    assert all(peer.row(rows, k) is None for k in KINDS)
    assert not [e for e in _registry.entries() if e.pid == peer.pid]


@root_only
def test_ls_shows_another_users_objects_as_unknown(peers: list[Peer], workdir: str) -> None:
    other = creator(peers, workdir, "644", "--as-user", str(NOBODY))
    rows = ls_json()
    for kind in ("sysv-shm", "sysv-msg", "posix-shm", "posix-mq"):
        row = other.row(rows, kind)
        assert row is not None, kind
        assert (row["uid"], row["owner"], row["mode"]) == (
            NOBODY,
            pwd.getpwuid(NOBODY).pw_name,
            "0644",
        ), kind
        # Its registry is not ours to read (and it kept none): whether aioipc made it is
        # unknown, so it is never stale.
        assert (row["aioipc"], row["stale"]) == ("?", None), kind
    done = aioipc("rm", "posix-shm", other.info["posix-shm"])
    assert done.returncode == 1
    assert "not known to be aioipc's" in done.stderr, done.stderr
    assert "--force" in done.stderr, done.stderr
    other.finish()


def test_ls_reads_queues_through_a_private_mount_when_dev_mqueue_is_not_mounted(
    peers: list[Peer], workdir: str
) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to hide /dev/mqueue")
    peer = creator(peers, workdir)
    script = 'umount /dev/mqueue && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *CLI, "ls", "--json", "--kind", "posix-mq"],
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    if done.returncode != 0 and "umount" in done.stderr:
        pytest.skip(f"cannot hide /dev/mqueue here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "private mount" in done.stderr, done.stderr
    row = peer.row(json.loads(done.stdout), "posix-mq")
    assert row is not None
    assert (row["pid"], row["aioipc"], row["count"]) == (peer.pid, "yes", 0)
    assert not list(Path(tempfile.gettempdir()).glob("aioipc-mqueue-*"))
    peer.finish()


# --------------------------------------------------------------------------- rm --stale


def test_rm_stale_removes_what_a_killed_creator_left_and_leaves_a_live_one(
    peers: list[Peer], workdir: str
) -> None:
    dead = creator(peers, workdir)
    live = creator(peers, workdir)
    dead.kill()
    unseen = UNSEEN_KINDS if hidden_here() else ()
    stale = [k for k in KINDS if k not in unseen]
    rows = ls_json()
    for kind in KINDS:
        row = dead.row(rows, kind)
        assert row is not None, kind
        assert (row["pid"], row["alive"]) == (dead.pid, False), kind
        if kind in unseen:
            assert row["stale"] is False, kind
            assert "cannot be inspected" in row["why"], row["why"]
        else:
            assert row["stale"] is True, (kind, row["why"])
            assert row["why"] == f"its creator, pid {dead.pid}, is dead and nobody is attached"
        assert live.row(ls_json("--stale"), kind) is None, kind

    preview = aioipc("rm", "--stale", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.count("would remove") == len(stale), preview.stdout
    assert all(_exists(dead, k) for k in KINDS)

    done = aioipc("rm", "--stale")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(stale), lines
    for kind in stale:
        assert not _exists(dead, kind), kind
        said = [line for line in lines if line.startswith(f"removed {kind} ")]
        assert len(said) == 1, (kind, lines)
        assert dead.target(kind) in said[0], (kind, lines)
    assert all(_exists(live, k) for k in KINDS)
    again = aioipc("rm", "--stale")
    assert (again.returncode, again.stdout) == (0, "nothing stale\n"), again.stderr
    for kind in unseen:  # what only --force removes here
        assert aioipc("rm", kind, dead.target(kind), "--force").returncode == 0

    live.finish()
    assert not any(_exists(live, k) for k in KINDS)


def test_rm_stale_keeps_what_a_live_process_still_holds(peers: list[Peer], workdir: str) -> None:
    made = creator(peers, workdir)
    held = [k for k in KINDS if k != "unix-socket"]  # a socket file has no holder
    holders = {k: Peer("hold", k, made.target(k)) for k in held}
    peers.extend(holders.values())
    made.kill()
    rows = ls_json()
    for kind in held:
        row = made.row(rows, kind)
        assert row is not None, kind
        assert (row["alive"], row["stale"]) == (False, False), kind
        pid = holders[kind].pid
        expected = {
            "sysv-shm": "1 process attached",
            "sysv-msg": f"pid {pid} used it last and is alive",
            "sysv-sem": f"pid {pid} used it last and is alive",
            "shm-ring": "a live process is attached",
        }.get(kind, f"open in pid {pid}")
        assert row["why"] == f"its creator, pid {made.pid}, is dead, but {expected}", kind

    done = aioipc("rm", "--stale")
    assert done.returncode == 0, done.stderr
    # Only the socket file went: its listener died with the creator.
    assert done.stdout.splitlines() == [
        f"removed unix-socket {made.target('unix-socket')}: its creator, pid {made.pid}, "
        "is dead and nobody is attached"
    ]
    assert all(_exists(made, k) for k in held)

    for peer in holders.values():
        peer.finish()
    unseen = UNSEEN_KINDS if hidden_here() else ()
    done = aioipc("rm", "--stale")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(held) - len(unseen), done.stdout
    for kind in unseen:
        assert aioipc("rm", kind, made.target(kind), "--force").returncode == 0
    assert not any(_exists(made, k) for k in KINDS)


def test_rm_stale_forgets_entries_of_objects_removed_behind_aioipcs_back(
    peers: list[Peer], workdir: str
) -> None:
    peer = creator(peers, workdir)
    peer.kill()
    # Removed by other means: ipcrm and a plain unlink.
    subprocess.run(["ipcrm", "-q", peer.target("sysv-msg")], check=True)
    os.unlink(peer.info["fifo"])
    done = aioipc("rm", "--stale", "--kind", "sysv-msg", "--kind", "fifo")
    assert done.returncode == 0, done.stderr
    # (Other tests' entries may be forgotten too: the suite shares one registry.)
    assert {
        f"forgot fifo {peer.info['fifo']}: already gone",
        f"forgot sysv-msg {peer.target('sysv-msg')}: already gone",
    } <= set(done.stdout.splitlines()), done.stdout
    assert "removed" not in done.stdout
    # --kind narrowed it: the rest is still there, and still stale.
    assert all(_exists(peer, k) for k in KINDS if k not in ("sysv-msg", "fifo"))
    assert len(ls_json("--stale")) == len(KINDS) - 2


# --------------------------------------------------------------------------- rm one object


def test_rm_one_object_needs_force_unless_it_is_stale(peers: list[Peer], workdir: str) -> None:
    peer = creator(peers, workdir)
    for kind in KINDS:
        refused = aioipc("rm", kind, peer.target(kind))
        assert refused.returncode == 1, (kind, refused.stderr)
        assert refused.stderr.startswith("aioipc: error:"), refused.stderr
        but = f", but open in pid {peer.pid}" if kind == "topic" else ""
        assert f"its creator, pid {peer.pid}, is alive{but}; --force removes it anyway" in (
            refused.stderr
        ), refused.stderr
        assert _exists(peer, kind)
    for kind in KINDS:
        target = peer.target(kind)
        if kind.startswith("sysv-"):
            target = f"{peer.info[kind][1]:#x}"  # by key this time
        done = aioipc("rm", kind, target, "--force")
        assert done.returncode == 0, (kind, done.stderr)
        assert done.stdout.startswith(f"removed {kind}"), done.stdout
        if kind != "sysv-shm":  # still attached by the peer: destroyed at its detach
            assert not _exists(peer, kind), kind
        # Its registry entry went with it.
        assert peer.row(ls_json("--kind", kind), kind) is None or kind == "sysv-shm"
        again = aioipc("rm", kind, target, "--force")
        assert again.returncode == 1, (kind, again.stderr)
        assert "\n" not in again.stderr.strip()
        assert target.lstrip("/").removeprefix("0x") in again.stderr, again.stderr
    peer.kill()


def test_rm_refuses_what_aioipc_did_not_make_without_force() -> None:
    key = int(uuid4().hex[:7], 16) + 0x10000000
    q = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, 0o600)
    name = f"/aioipc-ls-raw-{uuid4().hex[:8]}"
    import posix_ipc

    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 1)
    try:
        for kind, target in (("sysv-msg", str(q.id)), ("posix-sem", name)):
            row = [r for r in ls_json("--kind", kind) if target in (str(r["id"]), r["name"])]
            assert [(r["aioipc"], r["stale"]) for r in row] == [("no", None)], row
            refused = aioipc("rm", kind, target)
            assert refused.returncode == 1
            assert "not made by aioipc; --force removes it anyway" in refused.stderr
            done = aioipc("rm", kind, target, "--force")
            assert done.returncode == 0, done.stderr
        with pytest.raises(sysv_ipc.ExistentialError):
            sysv_ipc.MessageQueue(key)
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.Semaphore(name)
    finally:
        with contextlib.suppress(sysv_ipc.Error):
            q.remove()
        with contextlib.suppress(posix_ipc.Error):
            sem.unlink()
        sem.close()


def test_rm_errors(workdir: str) -> None:
    plain = os.path.join(workdir, "plain-fifo")
    os.mkfifo(plain)
    cases = [
        (("rm", "sysv-shm", "2147483000"), 1, "2147483000"),
        (("rm", "sysv-msg", "0x7ffffffe"), 1, "0x7ffffffe"),
        (("rm", "posix-mq", f"/nope-{uuid4().hex[:8]}"), 1, "nope-"),
        (("rm", "shm-ring", f"/nope-{uuid4().hex[:8]}"), 1, "nope-"),
        (("rm", "topic", f"/nope-{uuid4().hex[:8]}"), 1, "nope-"),
        (("rm", "topic", "/a/b"), 2, "/a/b"),
        (("rm", "fifo", os.path.join(workdir, "nothing")), 1, "does not exist"),
        (("rm", "fifo", plain), 1, "not made by aioipc; remove it with: rm --"),
        (("rm", "unix-socket", plain), 1, "is not a socket"),
        (("rm", "sysv-sem", "abc"), 2, "abc"),
        (("rm", "sysv-sem", "0xzz"), 2, "0xzz"),
        (("rm", "posix-shm", "/a/b"), 2, "/a/b"),
        (("rm", "--stale", "sysv-shm"), 2, "not a KIND: narrow it by kind with --kind sysv-shm"),
        (("rm", "--stale", "/a", "/b"), 2, "takes at most a PREFIX"),
        (("rm", "--stale", "--force"), 2, "--force is for one named object"),
        (("rm", "--kind", "fifo"), 2, "go with --stale"),
        (("rm", "sysv-shm"), 2, "needs KIND and ID|KEY|NAME"),
        (("rm", "bogus", "1"), 2, "invalid choice"),
    ]
    for args, code, text in cases:
        done = aioipc(*args)
        assert done.returncode == code, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert text in done.stderr, (args, done.stderr)
        # One line says what is wrong (argparse puts its usage above it).
        assert done.stderr.strip().splitlines()[-1].startswith(("aioipc: error:", "aioipc rm:"))
    assert os.path.exists(plain)


# --------------------------------------------------------------------------- topics


@pytest.mark.asyncio
async def test_ls_shows_a_topics_publishers_subscribers_policies_and_lag(
    peers: list[Peer], workdir: str
) -> None:
    made = creator(peers, workdir)
    name = made.info["topic"]
    publisher = Peer("hold", "topic", name)
    subscribers = [Peer("hold", "topic-sub", name) for _ in range(2)]
    peers += [publisher, *subscribers]
    async with pubsub.publisher(name) as pub:
        with anyio.fail_after(LIMIT):
            for i in range(3):
                await pub.send(b"m%d" % i)
        subscribers[1].kill()
        row = made.row(ls_json("--kind", "topic"), "topic")
        assert row is not None
        assert (row["capacity"], row["count"], row["stale"]) == (4096, 3, False)
        # Holders that are not subscribers: the creator's handle, the publishing peer
        # and this test (ls leaves out only itself).
        assert row["publishers"] == sorted([made.pid, publisher.pid, os.getpid()])
        lag = 3 * _topic.record_size(2)
        assert row["subscribers"] == [
            {
                "slot": slot,
                "pid": peer.pid,
                "policy": "block",
                "alive": peer is subscribers[0],
                "lag_messages": 3,
                "lag_bytes": lag,
            }
            for slot, peer in enumerate(subscribers)
        ]
        table = aioipc("ls", "--kind", "topic")
        assert table.returncode == 0, table.stderr
        assert f"topic {name}: capacity 4096 bytes, 4 subscriber slots, 3 messages published" in (
            table.stdout
        )
        lines = table.stdout.splitlines()
        assert any(
            line.split() == ["0", str(subscribers[0].pid), "block", "yes", "3", str(lag)]
            for line in lines
        ), table.stdout
        assert any(
            line.split() == ["1", str(subscribers[1].pid), "block", "no", "3", str(lag)]
            for line in lines
        ), table.stdout
    for peer in (publisher, subscribers[0]):
        peer.finish()
    made.kill()
    # Nobody has it open now: rm --stale removes it, doorbells and all.
    assert made.row(ls_json("--stale", "--kind", "topic"), "topic") is not None
    done = aioipc("rm", "--stale", name)
    assert done.returncode == 0, done.stderr
    assert f"removed topic {name}: its creator, pid {made.pid}, is dead and nobody is attached" in (
        done.stdout
    )
    assert topic_files(name) == []


def test_rm_stale_removes_a_topic_nobody_has_open_even_if_its_creator_lives() -> None:
    """A topic is named and persistent: whether its creator runs does not matter."""
    name = f"/aioipc-ls-topic-{uuid4().hex[:10]}"
    try:
        pubsub.Topic.create(name, 4096).close()  # this process made it, and let go
        (row,) = [r for r in ls_json("--kind", "topic") if r["name"] == name]
        assert (row["pid"], row["alive"], row["stale"]) == (os.getpid(), True, True)
        assert row["why"] == f"its creator, pid {os.getpid()}, is alive and nobody is attached"
        with pubsub.Topic.open(name):  # held again: not stale; rm without --force refuses
            (row,) = [r for r in ls_json("--kind", "topic") if r["name"] == name]
            assert row["stale"] is False
            refused = aioipc("rm", "topic", name)
            assert refused.returncode == 1
            assert "--force removes it anyway" in refused.stderr
            assert aioipc("rm", "--stale", name).stdout == "nothing stale\n"
        done = aioipc("rm", "topic", name.lstrip("/"))  # the slash may be left out
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"removed topic {name}\n"
        assert topic_files(name) == []
        assert not [e for e in _registry.entries() if e.kind == "topic" and e.ident == name]
    finally:
        for path in topic_files(name):
            os.unlink(path)


@pytest.mark.parametrize(
    "content",
    [
        b"aioipcTP",  # the magic and nothing else
        b"aioipcTP" + bytes(4096),  # a zero header
        b"aioipcTP" + os.urandom(8192),  # garbage
        b"aioipcT",  # not even the magic: plain shared memory
    ],
)
def test_ls_survives_files_that_look_like_topics_and_are_not(content: bytes) -> None:
    name = f"/aioipc-ls-fake-{uuid4().hex[:10]}"
    Path(f"/dev/shm{name}").write_bytes(content)
    try:
        (row,) = [r for r in ls_json() if r["name"] == name]
        topic = content.startswith(b"aioipcTP")
        assert row["kind"] == ("topic" if topic else "posix-shm")
        assert (row["capacity"], row["subscribers"], row["stale"]) == (
            None,
            [],
            None if not topic else False,
        )
        table = aioipc("ls")
        assert table.returncode == 0, table.stderr
        assert name in table.stdout
        assert "Traceback" not in table.stderr
        if topic:  # aioipc's by its magic, not in the registry: only --force removes it
            assert "no registry entry" in aioipc("rm", "topic", name).stderr
            assert aioipc("rm", "topic", name, "--force").returncode == 0
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm{name}")


# --------------------------------------------------------------------------- parsers


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
    msg = (
        "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid"
        "      stime      rtime      ctime\n"
        "         5         9   600          12          2   301     0     0     0     0     0"
        "          0          0 1700000000\n"
    )
    [row] = parse_sysv("sysv-msg", msg, owner=str, alive=lambda pid: True)
    assert (row.size, row.count, row.pid, row.last_pids) == (12, 2, None, (301,))
    assert parse_mqueue("QSIZE:129        NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n") == 129
    assert parse_mqueue("") is None
    assert Path("/proc/sysvipc/shm").exists()


# --------------------------------------------------------------------------- permissions


@root_only
def test_permission_problems_are_one_line_as_another_user() -> None:
    """Another user meets root's 0600 objects: one line each, exit 1, never a traceback."""
    tag = uuid4().hex[:8]
    region = posix.SharedMemory.create(f"/aioipc-perm-{tag}", 64)
    region.close()
    queue = posix.MessageQueue.create(f"/aioipc-perm-{tag}-q")
    as_nobody = [sys.executable, str(PEER.parent / "as_user_cli.py"), str(NOBODY)]
    try:
        for args, text in (
            (["rm", "--force", "posix-shm", region.name], f"{region.name}: permission denied"),
            (["send", f"mq://{queue.name}", "hi"], f"{queue.name}: permission denied"),
            (["recv", f"mq://{queue.name}", "--count", "1"], f"{queue.name}: permission denied"),
        ):
            done = subprocess.run(
                [*as_nobody, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=LIMIT,
            )
            assert done.returncode == 1, (args, done.stderr)
            assert done.stderr.startswith("aioipc: error:"), done.stderr
            assert done.stderr.count("\n") == 1, done.stderr
            assert text in done.stderr, (args, done.stderr)
        listed = subprocess.run(
            [*as_nobody, "ls", "--json", "--kind", "posix-shm"],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
        assert listed.returncode == 0, listed.stderr
        [row] = [r for r in json.loads(listed.stdout) if r["name"] == region.name]
        # Root's registry is not nobody's to read: who made it is unknown to them.
        assert (row["owner"], row["aioipc"], row["pid"], row["stale"]) == ("root", "?", None, None)
    finally:
        region.unlink()
        queue.unlink()
        anyio.run(queue.aclose)
