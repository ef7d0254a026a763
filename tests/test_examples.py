"""The examples run end to end, exit 0, and leave no IPC object and no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._procs import session_members

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30


@dataclass
class Run:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def run_example(name: str) -> Run:
    # Its own session, so that on a timeout the example and its children die together,
    # and so that we can tell afterwards whether any of its children outlived it.
    # Without PYTHONUNBUFFERED: with it, print() writes a line and its newline with two
    # write()s, and the lines of the example's processes, which share our pipe, can mix.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(EXAMPLES / name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{name} took over {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    left = session_members(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"{name} left processes behind: {left}"
    run = Run(proc.pid, proc.returncode, out, err)
    assert run.returncode == 0, f"{name} exited {run.returncode}\n{out}\n{err}"
    assert "Traceback" not in err, err
    # -X dev shows the ResourceWarning of an unclosed handle, and aioipc warns with a
    # RuntimeWarning if it ever loses a message.
    assert "ResourceWarning" not in err, err
    assert "RuntimeWarning" not in err, err
    return run


def _sysv_keys(kind: str) -> set[int]:
    """Keys of the System V objects of ``kind`` ("msg", "shm" or "sem") that exist now."""
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
    return {int(f[0]) & 0xFFFFFFFF for f in map(str.split, lines) if f}


def _dev_shm(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def test_bank() -> None:
    run = run_example("bank.py")
    match = re.search(r"queue key (0x[0-9a-f]{8})", run.stdout)
    assert match, run.stdout
    key = int(match.group(1), 16)
    assert "insufficient funds" in run.stdout
    assert "into 'pot': balance 30" in run.stdout
    assert "the server removed the queue; done" in run.stdout
    for name in ("alice", "bob", "carol"):
        assert re.search(rf"{name} +\[pid \d+\] +balance {name} +-> balance", run.stdout)
    assert key not in _sysv_keys("msg"), f"SysV queue {key:#010x} left behind"


def test_priority_jobs() -> None:
    run = run_example("priority_jobs.py")
    assert "all 9 jobs done exactly once" in run.stdout, run.stdout
    assert f"/aioipc-jobs-{run.pid}" in run.stdout
    assert len(re.findall(r"^  worker [123] \(pid \d+\): job \d+", run.stdout, re.M)) == 9
    if os.path.ismount("/dev/mqueue"):
        left = [n for n in os.listdir("/dev/mqueue") if n.endswith(f"-{run.pid}")]
        assert not left, f"POSIX queues left behind: {left}"


def test_shm_semaphores() -> None:
    run = run_example("shm_semaphores.py")
    match = re.search(r"under key (0x[0-9a-f]{8})", run.stdout)
    assert match, run.stdout
    key = int(match.group(1), 16)
    written = re.findall(r"^writer: (.*)$", run.stdout, re.M)
    read = re.findall(r"^reader \[pid \d+\]: (.*)$", run.stdout, re.M)
    assert len(written) == 5, run.stdout
    assert written[-1] == "end"
    assert read == written, run.stdout
    # Strict turns: each line is printed by the writer, then by the reader.
    turns = re.findall(r"^(writer): |^(reader) \[pid \d+\]: ", run.stdout, re.M)
    turns = ["".join(t) for t in turns]
    assert turns == ["writer", "reader"] * 5, run.stdout
    assert "the reader exited with status 0" in run.stdout
    assert key not in _sysv_keys("shm"), f"SysV segment {key:#010x} left behind"
    assert key not in _sysv_keys("sem"), f"SysV semaphore set {key:#010x} left behind"


def test_anon_mmap() -> None:
    run = run_example("anon_mmap.py")
    forked = re.search(r"the parent reads: 'hello from forked child (\d+)'", run.stdout)
    assert forked, run.stdout
    assert int(forked.group(1)) != run.pid
    spawned = re.search(r"spawned child (\d+) read: 'what is six times seven\?'", run.stdout)
    assert spawned, run.stdout
    assert f"the parent reads: '42, says spawned child {spawned.group(1)}'" in run.stdout
    sockets = Path("/proc/net/unix").read_text()
    assert f"@aioipc-anon-mmap-{run.pid}" not in sockets, "the listener outlived the example"


def test_mapped_file() -> None:
    run = run_example("mapped_file.py")
    match = re.search(r"wrote 'job 1: pending' to (\S+)", run.stdout)
    assert match, run.stdout
    path = Path(match.group(1))
    child = re.search(r"child (\d+) read: 'job 1: pending'", run.stdout)
    assert child, run.stdout
    done = f"'job 1: done by {child.group(1)}'"
    assert f"its own mapping now shows {done}" in run.stdout
    assert re.search(rf"the file says +{done}", run.stdout)
    assert not path.exists(), f"{path} left behind"
    assert not path.parent.exists(), f"{path.parent} left behind"


def test_shm_bulk() -> None:
    run = run_example("shm_bulk.py")
    assert "blake2b digests match" in run.stdout, run.stdout
    match = re.search(r"received 64 MiB in [\d.]+ s: (\d+) MB/s", run.stdout)
    assert match, run.stdout
    assert int(match.group(1)) > 0
    assert f"ring /aioipc-bulk-{run.pid} " in run.stdout
    left = _dev_shm(f"aioipc-bulk-{run.pid}")
    assert not left, f"ring files left behind in /dev/shm: {left}"


def test_pubsub_fanout() -> None:
    run = run_example("pubsub_fanout.py")
    name = f"/aioipc-fanout-{run.pid}"
    assert f"topic {name}, 64 KiB of log" in run.stdout, run.stdout
    assert "published 20000 messages and an end of stream" in run.stdout
    reports = re.findall(
        r"^  (block|drop_oldest) +subscriber (\d+): received (\d+), missed (\d+) in \d+ lags, "
        r"all accounted for \(exit status 0\)$",
        run.stdout,
        re.M,
    )
    assert sorted(policy for policy, *_ in reports) == ["block", "block", "drop_oldest"], run.stdout
    for policy, _, received, missed in reports:
        # block: every message; drop_oldest: what it got and what it was told it missed.
        assert int(received) + int(missed) == 20000
        if policy == "block":
            assert int(missed) == 0
    assert f"done: every subscriber checked; topic {name} removed" in run.stdout
    left = _dev_shm(name[1:])
    assert not left, f"topic files left behind in /dev/shm: {left}"


def test_pipe_child() -> None:
    run = run_example("pipe_child.py")
    match = re.search(r"started child (\d+) \(pipe fds \d+, \d+\)", run.stdout)
    assert match, run.stdout
    child = match.group(1)
    assert int(child) != run.pid
    for request, total in (("1 2 3", 6), ("10 20 30 40", 100), ("7", 7), ("100 -58", 42)):
        assert f"sum({request}) -> child {child} says {total}\n" in run.stdout, run.stdout
    assert f"child {child}: end of stream on the requests, exiting" in run.stdout
    assert "end of stream on the replies; the child exited with status 0" in run.stdout
    assert "done: 4 requests answered over two pipes" in run.stdout


def test_fifo_unrelated() -> None:
    run = run_example("fifo_unrelated.py")
    match = re.search(r"FIFO (\S+)", run.stdout)
    assert match, run.stdout
    path = Path(match.group(1))
    writers = re.findall(r"^  writer ([123]) \(pid (\d+)\) opened the FIFO$", run.stdout, re.M)
    assert sorted(n for n, _ in writers) == ["1", "2", "3"], run.stdout
    order = re.search(r"messages arrived from writers ([\d ]+)$", run.stdout, re.M)
    assert order, run.stdout
    assert sorted(order.group(1).split()) == ["1"] * 5 + ["2"] * 5 + ["3"] * 5
    for n in "123":
        assert f"  writer {n}: 4 lines, big message whole: True" in run.stdout
    assert "reader: end of stream: every writer has closed" in run.stdout
    assert f"done: 3 writers, every message whole; {path.parent} removed" in run.stdout
    assert not path.parent.exists(), f"{path.parent} left behind"
    # The writers ran in sessions of their own, which run_example does not look into.
    for _, pid in writers:
        assert not session_members(int(pid)), f"writer {pid} outlived the example"


def test_unix_echo() -> None:
    run = run_example("unix_echo.py")
    match = re.search(r"listening on (\S+)", run.stdout)
    assert match, run.stdout
    path = Path(match.group(1))
    peers = re.findall(
        r"^server: peer pid=(\d+) uid=(\d+) gid=(\d+); says pid (\d+): matches$", run.stdout, re.M
    )
    assert len(peers) == 3, run.stdout
    for pid, uid, gid, claimed in peers:
        assert pid == claimed
        assert (int(uid), int(gid)) == (os.getuid(), os.getgid())
        for word in ("ping", "hello", f"bye from {pid}"):
            assert f"  client {pid}: sent {word!r}, echo {word!r}" in run.stdout
    assert len({pid for pid, *_ in peers}) == 3
    assert "client exit statuses [0, 0, 0]" in run.stdout
    assert "DOES NOT MATCH" not in run.stdout
    assert not path.parent.exists(), f"{path.parent} left behind"


def test_fd_passing() -> None:
    run = run_example("fd_passing.py")
    match = re.search(r"opened (\S+) as fd \d+, then removed its name", run.stdout)
    assert match, run.stdout
    path = Path(match.group(1))
    child = re.search(r"child (\d+): got fd \d+ with 'count the stock", run.stdout)
    assert child, run.stdout
    lines = re.findall(r"^  \| (.*)$", run.stdout, re.M)
    assert lines == ["apples 3", "pears 5", "plums 12", f"total 20 (counted by {child.group(1)})"]
    assert "the child replied 'done' and exited with status 0" in run.stdout
    assert "done: the child wrote to a file" in run.stdout
    assert not path.parent.exists(), f"{path.parent} left behind"
    sockets = Path("/proc/net/unix").read_text()
    assert f"@aioipc-fd-passing-{run.pid}" not in sockets, "the listener outlived the example"
