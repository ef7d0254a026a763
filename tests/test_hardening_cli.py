"""Issue 10, the command-line items: hostile names (5), numeric options (12), ``rm`` of an
object that is already gone (15), ``recv --timeout`` and ``--peek`` (16).

Real processes and real kernel objects only. The hostile names of item 5 are made by a
real process running as ``nobody``, in a mount namespace with a /dev/shm of its own, so
that no other ``aioipc ls`` on this machine (other test runs) ever meets them; root's
``aioipc ls`` and ``rm`` run in that namespace too, and the tests look at the bytes they
print. Nothing waits by sleeping: a background ``recv`` is known to be ready once it has
printed a message, and every process has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest

from aioipc import IPCNotFoundError, posix, sysv
from aioipc._core import registry as _registry

from ._procs import run_code, run_on_a_pty
from .test_cli import background

CLI = [sys.executable, "-m", "aioipc"]
LIMIT = 30  # seconds any one process may take
NOBODY = 65534
PEER = Path(__file__).parent / "peers" / "inventory_peer.py"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# What a hostile user puts in a name: set the terminal's title (OSC ... BEL), clear the
# screen (CSI 2 J), start a forged row (newline), an 8-bit CSI (C1) and a right-to-left
# override. And how each must be shown: escaped, the rest of the name as it is.
EVIL = "\x1b]0;PWNED\x07\x1b[2J\nforged-row\x9b31m\u202eé"
EVIL_SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2J\\nforged-row\\x9b31m\\u202eé"
# A name that is not UTF-8 at all (os.listdir gives it back with surrogate escapes).
RAW_EVIL = b"\xff\x9b2J\x1b[2J"
RAW_EVIL_SHOWN = "\\xff\\x9b2J\\x1b[2J"
_SGR = re.compile(rb"\x1b\[[0-9;]*m")  # colours and bold: what rich itself draws with


def run(
    *args: str, prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [*(prefix or []), *CLI, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=LIMIT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"aioipc {' '.join(map(repr, args))} did not return within {LIMIT} s")


def assert_clean(data: bytes, *, tty: bool = False) -> str:
    """``data`` is UTF-8 with nothing a terminal would act on but newlines (on a pty:
    also carriage returns and the colour sequences rich draws with); returns the text."""
    if tty:
        data = _SGR.sub(b"", data).replace(b"\r\n", b"\n")
    text = data.decode("utf-8")  # strict: a lone byte such as \x9b or \xff fails here
    bad = sorted({ch for ch in text if ch != "\n" and not ch.isprintable()})
    assert not bad, f"raw control characters {bad!r} in {text!r}"
    return text


# ---------------------------------------------------------------- (5) hostile names


@pytest.fixture
def private_shm() -> Iterator[list[str]]:
    """A mount namespace whose /dev/shm is an empty tmpfs of its own; yields the argv
    prefix that runs a command in it. Everything made in it vanishes with it."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs unshare(1) and nsenter(1)")
    holder = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=1777 aioipc-hostile /dev/shm && echo ready && exec cat",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], LIMIT)
    line = holder.stdout.readline() if ready else b""
    if line != b"ready\n":
        holder.kill()
        _, err = holder.communicate(timeout=LIMIT)
        pytest.skip(f"cannot make a private /dev/shm here: {err.decode().strip()}")
    try:
        yield ["nsenter", "-t", str(holder.pid), "-m", "--"]
    finally:
        holder.communicate(timeout=LIMIT)  # closes its stdin: cat ends, the namespace goes


class HostilePeer:
    """inventory_peer.py ``hostile``, run as nobody in the private namespace."""

    def __init__(self, prefix: list[str], tag: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != _registry.ENV}
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                str(PEER),
                "--as-user",
                str(NOBODY),
                "hostile",
                tag,
                EVIL,
                os.fsdecode(RAW_EVIL),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], LIMIT)
        assert ready, "the hostile peer did not answer in time"
        self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline()) == "closed"
        assert self.proc.wait(LIMIT) == 0
        self.proc.stdout.close()

    def kill(self) -> None:
        """If it still runs (a failed test): kill it; its objects go with the namespace."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=LIMIT)


@root_only
def test_hostile_names_of_another_user_are_escaped_by_ls_and_rm(private_shm: list[str]) -> None:
    tag = f"aioipc-hc-{uuid4().hex[:8]}"
    peer = HostilePeer(private_shm, tag)
    try:
        shm_name, raw_name, fifo_path = peer.info["shm"], peer.info["raw"], peer.info["fifo"]
        assert shm_name == f"/{tag}{EVIL}"
        assert os.fsencode(raw_name) == b"/" + tag.encode() + RAW_EVIL
        assert fifo_path.endswith(f"/{tag}{EVIL}.fifo")
        shown = {
            "shm": f"/{tag}{EVIL_SHOWN}",
            "raw": f"/{tag}{RAW_EVIL_SHOWN}",
            "fifo": f"{os.path.dirname(fifo_path)}/{tag}{EVIL_SHOWN}.fifo",
        }
        # Root, reading every user's registry (the peer's lives in the private /dev/shm).
        env = {k: v for k, v in os.environ.items() if k != _registry.ENV}
        env.update(COLUMNS="2000", TERM="xterm")
        kinds = ("--kind", "posix-shm", "--kind", "fifo")

        plain = run("ls", *kinds, prefix=private_shm, env=env)
        assert plain.returncode == 0, plain.stderr
        text = assert_clean(plain.stdout)
        assert_clean(plain.stderr)
        for name in shown.values():
            assert name in text, (name, text)
        rows = [line for line in text.splitlines() if tag in line]
        assert len(rows) == 3, rows  # one line each: no forged row
        assert [r.split()[8] for r in rows if r.startswith("fifo")] == [
            "yes"
        ]  # via nobody's registry

        listed = run("ls", "--json", *kinds, prefix=private_shm, env=env)
        assert listed.returncode == 0, listed.stderr
        assert max(listed.stdout) < 0x80, "JSON output is ASCII: JSON escapes the rest"
        assert_clean(listed.stdout)
        # JSON is data: the exact names, control characters written as JSON escapes.
        names = {r["name"] for r in json.loads(listed.stdout) if tag in (r["name"] or "")}
        assert names == {shm_name, raw_name, fifo_path}, names

        code, out, err = run_on_a_pty([*private_shm, *CLI, "ls", *kinds], env)
        assert code == 0, err
        drawn = assert_clean(out, tty=True)
        assert_clean(err)
        for name in shown.values():
            assert name in drawn, (name, drawn)

        # rm: refusals, and removals, each one line naming the object as ls shows it.
        for kind, key in (("posix-shm", "shm"), ("posix-shm", "raw"), ("fifo", "fifo")):
            target = peer.info[key]
            refused = run("rm", kind, target, prefix=private_shm, env=env)
            assert refused.returncode == 1, refused.stderr
            line = assert_clean(refused.stderr)
            assert line.count("\n") == 1, line
            assert shown[key] in line, line
            assert "--force removes it anyway" in line, line
            done = run("rm", "--force", kind, target, prefix=private_shm, env=env)
            assert done.returncode == 0, done.stderr
            assert assert_clean(done.stdout) == f"removed {kind} {shown[key]}\n"
            again = run("rm", "--force", kind, target, prefix=private_shm, env=env)
            assert again.returncode == 1
            line = assert_clean(again.stderr)
            assert line.count("\n") == 1, line
            assert shown[key] in line, line
        peer.finish()
    finally:
        peer.kill()


def test_errors_that_echo_a_url_a_name_or_an_argument_are_escaped(tmp_path: Path) -> None:
    name = f"/aioipc-hc-{uuid4().hex[:8]}{EVIL}"
    shown = name.replace(EVIL, EVIL_SHOWN)
    path = f"{tmp_path}/x{EVIL}"
    shown_path = path.replace(EVIL, EVIL_SHOWN)
    # A URL with control characters is refused as it was written (a usage error).
    cases = [
        (("send", f"mq://{name}", "hi"), 2, shown),
        (("recv", f"mq://{name}?create=0"), 2, shown),
        (("send", f"fifo://{path}", "hi"), 2, shown_path),
        (("recv", f"shm://{name}?create=0"), 2, shown),
        (("send", f"bogus:///{EVIL}", "hi"), 2, "bogus"),
        (("rm", "posix-shm", name), 1, shown),
        (("rm", "fifo", path), 1, shown_path),
        (("ls", EVIL), 2, EVIL_SHOWN),  # argparse's own "unrecognized arguments"
        (("send", f"mq://{name}", "--bogus", EVIL), 2, EVIL_SHOWN),
    ]
    for args, code, expected in cases:
        done = run(*args)
        assert done.returncode == code, (args, done.stderr)
        assert done.stdout == b"", (args, done.stdout)
        text = assert_clean(done.stderr)
        assert "Traceback" not in text, text
        assert expected in text.splitlines()[-1], (args, text)
        assert text.splitlines()[-1].startswith("aioipc"), text
    assert not os.path.exists(path)


def test_bench_errors_echoing_a_path_are_escaped(tmp_path: Path) -> None:
    path = f"{tmp_path}/no{EVIL}/out.json"
    done = run("bench", "--json", path)  # checked before anything runs
    assert done.returncode == 1, done.stderr
    line = assert_clean(done.stderr)
    assert f"no{EVIL_SHOWN}" in line, line


# ---------------------------------------------------------------- (12) numeric options


MISSING_MQ = f"mq:///aioipc-hc-missing-{uuid4().hex[:8]}"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("send", "--wait", "nan", MISSING_MQ, "hi"), "--wait"),
        (("send", "--wait", "inf", MISSING_MQ, "hi"), "--wait"),
        (("send", "--wait", "-inf", MISSING_MQ, "hi"), "--wait"),
        (("send", "--wait", "1e999", MISSING_MQ, "hi"), "--wait"),
        (("send", "--wait", "-1", MISSING_MQ, "hi"), "--wait"),
        (("send", "--wait", "soon", MISSING_MQ, "hi"), "--wait"),
        (("recv", f"{MISSING_MQ}?create=0", "--timeout", "nan"), "--timeout"),
        (("recv", f"{MISSING_MQ}?create=0", "--timeout", "inf"), "--timeout"),
        (("recv", f"{MISSING_MQ}?create=0", "--timeout", "-0.5"), "--timeout"),
        (("recv", f"{MISSING_MQ}?create=0", "--count", "0"), "--count"),
        (("recv", f"{MISSING_MQ}?create=0", "--count", "1.5"), "--count"),
        (("recv", f"{MISSING_MQ}?create=0", "--count", "nan"), "--count"),
        (("recv", f"{MISSING_MQ}?create=0", "--count", str(2**64)), "--count"),
        (("demo", "--count", "0"), "--count"),
        (("demo", "--count", "inf"), "--count"),
        (("demo", "--size", "3"), "--size"),
        (("demo", "--size", str(2**40)), "--size"),
        (("demo", "--round-trips", "0"), "--round-trips"),
        (("demo", "--round-trips", "nan"), "--round-trips"),
    ],
)
def test_numeric_options_refuse_nan_infinities_and_out_of_range(
    args: tuple[str, ...], option: str
) -> None:
    done = run(*args)
    err = done.stderr.decode()
    assert done.returncode == 2, (args, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aioipc"), err
    assert f"argument {option}:" in last, err
    assert "unrecognized" not in last, err


# ---------------------------------------------------------------- (15) rm of a gone object


def _entries(kind: str, ident: str) -> list[_registry.Entry]:
    return [e for e in _registry.entries() if e.kind == kind and e.ident == ident]


def _line(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
    assert ready, "no output in time"
    return proc.stdout.readline()


def test_rm_forgets_the_entry_of_a_socket_file_removed_by_hand(short_tmp: Path) -> None:
    path = str(short_tmp / "s.sock")
    with background("recv", f"unix://{path}", "--follow") as listener:
        sent = run("send", "--wait", "20", f"unix://{path}", "hello")
        assert sent.returncode == 0, sent.stderr
        assert _line(listener) == b"hello\n"  # it listens, and has recorded its socket
        assert len(_entries("unix-socket", path)) == 1
        os.unlink(path)  # by hand: the entry stays behind

        done = run("rm", "unix-socket", path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == (
            f"unix-socket {path}: does not exist; forgot its registry entry\n"
        )
        assert _entries("unix-socket", path) == []
        again = run("rm", "unix-socket", path)
        assert again.returncode == 1
        assert "does not exist" in again.stderr.decode()
        listener.send_signal(signal.SIGINT)
        assert listener.wait(LIMIT) == 130


def _free_key(prefix: str) -> Callable[[], int]:
    """Keys 0xPREFIX... not in use (prefix: hex digits)."""

    def make() -> int:
        for _ in range(100):
            key = int(prefix + secrets.token_hex(4)[: 8 - len(prefix)], 16)
            try:
                sysv.MessageQueue.open(key)
            except IPCNotFoundError:
                return key
            except Exception:
                continue
        raise AssertionError("no free key")

    return make


def test_rm_forgets_the_entry_of_a_queue_removed_with_ipcrm() -> None:
    if not shutil.which("ipcrm"):
        pytest.skip("needs ipcrm(1)")
    key = _free_key("5")()
    by_id = sysv.MessageQueue.create(key)
    by_key = sysv.MessageQueue.create(key + 1)
    try:
        for q, target in ((by_id, str(by_id.id)), (by_key, f"{key + 1:#x}")):
            subprocess.run(["ipcrm", "-q", str(q.id)], check=True, timeout=LIMIT)
            assert len(_entries("sysv-msg", str(q.id))) == 1
            done = run("rm", "sysv-msg", target)
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode() == (
                f"sysv-msg id {q.id} (key {q.key:#010x}): does not exist; "
                "forgot its registry entry\n"
            )
            assert _entries("sysv-msg", str(q.id)) == []
            again = run("rm", "sysv-msg", target)
            assert again.returncode == 1, again.stdout
    finally:
        for q in (by_id, by_key):
            with contextlib.suppress(Exception):
                q.remove()
            anyio.run(q.aclose)


def _some_process_hidden() -> bool:
    """Whether some process's IPC namespace is out of our reach."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            os.stat(f"/proc/{pid}/ns/ipc")
        except FileNotFoundError:
            continue
        except OSError:
            return True
    return False


@root_only
def test_rm_keeps_the_entry_of_a_queue_in_another_ipc_namespace() -> None:
    """Its id means nothing here: the queue may well exist in its own namespace (here
    it does: the namespace outlives the queue's creator, held by another process)."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs unshare(1) and nsenter(1)")
    holder = subprocess.Popen(
        ["unshare", "--ipc", "sh", "-c", "echo ready && exec cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    qid = -1
    try:
        assert _line(holder) == b"ready\n"
        made = subprocess.run(
            ["nsenter", "-t", str(holder.pid), "-i", "--", sys.executable, "-c",
             "from aioipc import sysv; print(sysv.MessageQueue.create(0x5EC0ED).id)"],
            capture_output=True, timeout=LIMIT, check=True,
        )  # fmt: skip
        qid = int(made.stdout)  # its creator is dead; the queue lives in the namespace
        assert len(_entries("sysv-msg", str(qid))) == 1
        for target in (str(qid), "0x5ec0ed"):
            done = run("rm", "sysv-msg", target)
            assert done.returncode == 1, done.stdout
            assert "does not exist" in done.stderr.decode()
            assert len(_entries("sysv-msg", str(qid))) == 1
        done = run("rm", "--stale", "0x005ec0ed")
        assert (done.returncode, done.stdout) == (0, b"nothing stale\n"), done.stderr
        assert len(_entries("sysv-msg", str(qid))) == 1
    finally:
        holder.communicate(timeout=LIMIT)  # the namespace goes, and its queue with it
    try:
        # Now no process is in that namespace: the queue is gone, and its entry is
        # forgotten, if every process could be looked into to tell (here, pid 1 may be
        # out of even root's reach: then the entry is kept, as nothing is known).
        done = run("rm", "--stale", "0x005ec0ed")
        assert done.returncode == 0, done.stderr
        if _some_process_hidden():
            assert done.stdout == b"nothing stale\n"
        else:
            assert done.stdout == f"forgot sysv-msg {qid}: already gone\n".encode()
            assert _entries("sysv-msg", str(qid)) == []
    finally:
        for entry in _entries("sysv-msg", str(qid)):
            _registry.remove_entry(entry)


@root_only
def test_rm_stale_forgets_the_entry_of_a_queue_whose_ipc_namespace_is_gone() -> None:
    """In a pid namespace of its own (with its /proc), where every process can be looked
    into, so that "no process is in that IPC namespace any more" can be told."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs unshare(1) and nsenter(1)")
    script = textwrap.dedent(
        """
        import json, subprocess, sys
        holder = subprocess.Popen(["unshare", "--ipc", "sh", "-c", "echo ready && exec cat"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout.readline() == b"ready\\n"
        made = subprocess.run(
            ["nsenter", "-t", str(holder.pid), "-i", "--", sys.executable, "-c",
             "from aioipc import sysv; print(sysv.MessageQueue.create(0x5EC0EE).id)"],
            capture_output=True, check=True)
        qid = made.stdout.decode().strip()
        rm = [sys.executable, "-m", "aioipc", "rm", "--stale", "0x005ec0ee"]
        alive = subprocess.run(rm, capture_output=True, text=True)
        holder.communicate()
        gone = subprocess.run(rm, capture_output=True, text=True)
        print(json.dumps([qid, alive.stdout, gone.stdout, alive.stderr + gone.stderr]))
        """
    )
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    qid, alive, gone, errors = json.loads(done.stdout)
    assert errors == ""
    assert alive == "nothing stale\n"  # the namespace lives: the entry is kept
    assert gone == f"forgot sysv-msg {qid}: already gone\n"
    assert _entries("sysv-msg", qid) == []


def test_rm_stale_with_a_prefix_removes_and_forgets_only_what_matches(short_tmp: Path) -> None:
    tag = uuid4().hex[:8]
    hexes = secrets.token_hex(2)
    key_a, key_b = int(f"6{hexes}a01", 16), int(f"6{hexes}b01", 16)
    names = {x: f"/aioipc-hc-{tag}-{x}" for x in "ab"}
    socks = {x: str(short_tmp / f"{x}-{tag}.sock") for x in "ab"}
    gone = {x: str(short_tmp / f"{x}-{tag}-gone.sock") for x in "ab"}
    run_code(
        """
        import os, sys, anyio
        from aioipc import posix, sysv, unix
        async def main():
            for name in sys.argv[1:3]:
                posix.SharedMemory.create(name, 64)
            for key in sys.argv[3:5]:
                sysv.SemaphoreSet.create(int(key, 16))
            for path in sys.argv[5:]:
                await unix.listen(path)
            os._exit(0)  # a crash: nothing is removed, every entry stays
        anyio.run(main)
        """,
        *names.values(),
        hex(key_a),
        hex(key_b),
        *socks.values(),
        *gone.values(),
    )
    for x in "ab":
        os.unlink(gone[x])  # removed by hand: only the entry is left

    def exists_sem(key: int) -> bool:
        return any(
            int(f.split()[0]) & 0xFFFFFFFF == key
            for f in Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
        )

    try:
        preview = run("rm", "--stale", "--dry-run", f"/aioipc-hc-{tag}-a")
        assert preview.returncode == 0, preview.stderr
        assert preview.stdout.decode().splitlines() == [
            f"would remove posix-shm {names['a']}: its creator, pid "
            f"{preview.stdout.decode().split('pid ')[1].split(',')[0]}, is dead and nobody "
            "is attached"
        ]
        done = run("rm", "--stale", f"aioipc-hc-{tag}-a")  # the slash is optional
        assert done.returncode == 0, done.stderr
        assert [line.split(":")[0] for line in done.stdout.decode().splitlines()] == [
            f"removed posix-shm {names['a']}"
        ]
        assert not os.path.exists(f"/dev/shm{names['a']}")
        assert os.path.exists(f"/dev/shm{names['b']}")

        done = run("rm", "--stale", str(short_tmp / "a-"))
        assert done.returncode == 0, done.stderr
        assert sorted(line.split(":")[0] for line in done.stdout.decode().splitlines()) == [
            f"forgot unix-socket {gone['a']}",
            f"removed unix-socket {socks['a']}",
        ]
        assert not os.path.exists(socks["a"])
        assert os.path.exists(socks["b"])
        assert _entries("unix-socket", gone["a"]) == []
        assert len(_entries("unix-socket", gone["b"])) == 1

        done = run("rm", "--stale", f"0x6{hexes}A")  # a SysV key prefix, any case
        assert done.returncode == 0, done.stderr
        lines = done.stdout.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("removed sysv-sem id "), lines
        assert f"(key {key_a:#010x})" in lines[0], lines
        assert not exists_sem(key_a)
        assert exists_sem(key_b)

        refused = run("rm", "--stale", "sysv-sem")
        assert refused.returncode == 2
        assert "--kind sysv-sem" in refused.stderr.decode()
        nothing = run("rm", "--stale", f"/aioipc-hc-{tag}-zzz")
        assert (nothing.returncode, nothing.stdout) == (0, b"nothing stale\n")
    finally:
        for prefix in (f"/aioipc-hc-{tag}-", str(short_tmp) + "/", f"0x6{hexes}"):
            cleaned = run("rm", "--stale", prefix)
            assert cleaned.returncode in (0, 2), cleaned.stderr
        for name in names.values():
            with contextlib.suppress(IPCNotFoundError):
                posix.unlink_shared_memory(name)
        for path in (*socks.values(), *gone.values()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            _registry.forget("unix-socket", path)
        for key in (key_a, key_b):
            with contextlib.suppress(Exception):
                sysv.SemaphoreSet.open(key).remove()


# ---------------------------------------------------------------- (16) recv --timeout, --peek


@pytest.fixture
def mq_name() -> Iterator[str]:
    name = f"/aioipc-hc-{uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(IPCNotFoundError):
        posix.unlink_message_queue(name)
        pytest.fail(f"POSIX queue {name} was left behind")


def test_recv_timeout_ends_recv_on_an_empty_posix_queue(mq_name: str) -> None:
    done = run("recv", f"mq://{mq_name}", "--timeout", "0.5", "--unlink")
    assert (done.returncode, done.stdout, done.stderr) == (124, b"", b"")
    with pytest.raises(IPCNotFoundError):  # --unlink is honoured when time runs out
        posix.MessageQueue.open(mq_name)


def test_recv_timeout_ends_recv_on_an_unlinked_posix_queue(mq_name: str) -> None:
    q = posix.MessageQueue.create(mq_name)
    try:
        anyio.run(q.send, b"first")
        with background("recv", f"mq://{mq_name}", "--timeout", "2") as rx:
            assert _line(rx) == b"first\n"  # it has the queue open and waits for more
            posix.unlink_message_queue(mq_name)  # nothing can reach it any more
            out, err = rx.communicate(timeout=LIMIT)
            assert (rx.returncode, out, err) == (124, b"", b"")
    finally:
        anyio.run(q.aclose)


def test_recv_timeout_exit_codes(mq_name: str, short_tmp: Path) -> None:
    q = posix.MessageQueue.create(mq_name)
    try:
        for data in (b"one", b"two"):
            anyio.run(q.send, data)
        # Done before the time ran out: exit 0, as without --timeout.
        done = run("recv", f"mq://{mq_name}", "--count", "2", "--timeout", "20")
        assert (done.returncode, done.stdout, done.stderr) == (0, b"one\ntwo\n", b"")
        anyio.run(q.send, b"three")
        # Time ran out (fewer than --count arrived): 124, what arrived is printed.
        done = run("recv", f"mq://{mq_name}", "--count", "2", "--timeout", "0.5")
        assert (done.returncode, done.stdout, done.stderr) == (124, b"three\n", b"")
    finally:
        q.unlink()
        anyio.run(q.aclose)
    # A SysV queue (a worker thread blocked in msgrcv) and a unix listener end too.
    key = _free_key("7")()
    done = run("recv", f"sysvmq://{key:#x}", "--timeout", "0.5", "--unlink")
    assert (done.returncode, done.stderr) == (124, b"")
    with pytest.raises(IPCNotFoundError):
        sysv.MessageQueue.open(key)
    sock = short_tmp / "t.sock"
    done = run("recv", f"unix://{sock}", "--timeout", "0.5")
    assert (done.returncode, done.stderr) == (124, b"")
    assert not sock.exists()


def test_recv_peek_shows_a_sysv_queue_and_leaves_every_message_queued() -> None:
    key = _free_key("7")()
    q = sysv.MessageQueue.create(key)
    sent = [(1, b"first"), (2, b"second"), (1, b"third")]
    try:
        for mtype, data in sent:
            anyio.run(lambda m=mtype, d=data: q.send(d, type=m))  # type: ignore[misc]
        url = f"sysvmq://{key:#x}"
        done = run("recv", url, "--peek")
        assert (done.returncode, done.stdout, done.stderr) == (0, b"first\nsecond\nthird\n", b"")
        done = run("recv", url, "--peek", "--count", "2")
        assert (done.returncode, done.stdout) == (0, b"first\nsecond\n")
        done = run("recv", f"{url}?receive_type=2", "--peek")  # what recv would take
        assert (done.returncode, done.stdout) == (0, b"second\n")
        done = run("recv", url, "--peek", "--raw")
        assert (done.returncode, done.stdout) == (0, b"firstsecondthird")
        assert (q.current_messages, q.last_receive_pid) == (3, 0)  # nothing was taken
        assert [q.receive_message_nowait() for _ in sent] == sent  # all there, in order
    finally:
        q.remove()
        anyio.run(q.aclose)


@pytest.mark.parametrize(
    ("scheme", "why"),
    [
        ("mq", "POSIX queue"),
        ("fifo", "FIFO"),
        ("unix", "listener"),
        ("unix+dgram", "new socket"),
        ("shm", "ring"),
    ],
)
def test_recv_peek_is_refused_where_the_mechanism_cannot_peek(
    scheme: str, why: str, short_tmp: Path
) -> None:
    if scheme in ("mq", "shm"):
        url, where = f"{scheme}:///aioipc-hc-{uuid4().hex[:8]}", None
    else:
        where = short_tmp / "x"
        url = f"{scheme}://{where}"
    done = run("recv", url, "--peek")
    assert done.returncode == 2, done.stderr
    line = done.stderr.decode().strip()
    assert line.startswith("aioipc: error: --peek"), line
    assert why in line, line
    if where is not None:
        assert not where.exists()
    elif scheme == "mq":
        with pytest.raises(IPCNotFoundError):
            posix.MessageQueue.open(url[5:])
    else:
        assert not os.path.exists(f"/dev/shm{url[5:]}")


def test_recv_peek_usage_and_a_missing_queue() -> None:
    key = _free_key("7")()
    url = f"sysvmq://{key:#x}"
    done = run("recv", url, "--peek")
    assert done.returncode == 1
    assert "does not exist" in done.stderr.decode()
    with pytest.raises(IPCNotFoundError):  # --peek never creates the queue
        sysv.MessageQueue.open(key)
    for option in ("--follow", "--unlink"):
        done = run("recv", url, "--peek", option)
        assert done.returncode == 2, done.stderr
        assert option in done.stderr.decode()


def test_recv_help_says_it_competes_with_other_consumers() -> None:
    done = run("recv", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.decode().split())
    assert "competes with the queue's other consumers" in text, text
    assert "--peek" in text
    assert "--timeout" in text


# msgrcv with MSG_COPY answered with ENOSYS, as by a kernel built without
# CONFIG_CHECKPOINT_RESTORE: a seccomp filter installed before aioipc runs.
_WITHOUT_MSG_COPY = r"""
import ctypes, platform, runpy, struct, sys
arch, msgrcv = {"x86_64": (0xC000003E, 70), "aarch64": (0xC00000B7, 188)}[platform.machine()]
def op(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)
LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
prog = b"".join([
    op(LD, 4), op(JEQ, arch, 0, 4),  # seccomp_data.arch; another: allow
    op(LD, 0), op(JEQ, msgrcv, 0, 2),  # .nr; another call: allow
    op(LD, 48), op(JSET, 0o40000, 1, 0),  # low word of .args[4], msgflg: MSG_COPY?
    op(RET, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    op(RET, 0x00050000 | 38),  # SECCOMP_RET_ERRNO | ENOSYS
])
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
fprog = Prog(len(prog) // 8, prog)
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP
sys.argv = ["aioipc", *sys.argv[1:]]
runpy.run_module("aioipc", run_name="__main__")
"""


def test_recv_peek_says_when_the_kernel_cannot_copy_a_message() -> None:
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the seccomp filter knows msgrcv's number on x86_64 and aarch64 only")
    key = _free_key("7")()
    q = sysv.MessageQueue.create(key)
    try:
        anyio.run(q.send, b"kept")
        done = subprocess.run(
            [sys.executable, "-c", _WITHOUT_MSG_COPY, "recv", f"sysvmq://{key:#x}", "--peek"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=LIMIT,
        )
        assert done.returncode == 1, done.stderr
        line = assert_clean(done.stderr)
        assert line.startswith("aioipc: error: SysV message queue key="), line
        assert "cannot copy a message without taking it" in line, line
        assert "CONFIG_CHECKPOINT_RESTORE" in line, line
        assert done.stdout == b""
        assert q.receive_nowait() == b"kept"
    finally:
        q.remove()
        anyio.run(q.aclose)


def test_peek_message_nowait_contract() -> None:
    from anyio import BrokenResourceError, ClosedResourceError, WouldBlock

    async def main() -> None:
        q = sysv.MessageQueue.create()  # private: removed when closed
        async with q:
            await q.send(b"a", type=3)
            await q.send(b"b", type=1)
            expected = [(1, b"b"), (3, b"a"), (1, b"b")]  # by position, any order, again
            assert [q.peek_message_nowait(i) for i in (1, 0, 1)] == expected
            with pytest.raises(WouldBlock):
                q.peek_message_nowait(2)
            for bad in (-1, 2**63):
                with pytest.raises(ValueError, match="index"):
                    q.peek_message_nowait(bad)
            assert (q.current_messages, q.last_receive_pid) == (2, 0)
            other = sysv.MessageQueue.from_id(q.id)
            q.remove()
            with pytest.raises(BrokenResourceError):
                other.peek_message_nowait()
            await other.aclose()
            with pytest.raises(ClosedResourceError):
                other.peek_message_nowait()

    anyio.run(main)
