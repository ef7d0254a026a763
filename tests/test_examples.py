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

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30


@dataclass
class Run:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def _session_members(sid: int) -> list[str]:
    """Processes still in session ``sid`` (the example and the children it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry} {stat[: stat.rindex(')') + 1]}")
    return found


def run_example(name: str) -> Run:
    # Its own session, so that on a timeout the example and its children die together,
    # and so that we can tell afterwards whether any of its children outlived it.
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(EXAMPLES / name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{name} took over {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    left = _session_members(proc.pid)
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


def _sysv_queue_keys() -> set[int]:
    lines = Path("/proc/sysvipc/msg").read_text().splitlines()[1:]
    return {int(f[0]) & 0xFFFFFFFF for f in map(str.split, lines) if f}


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
    assert key not in _sysv_queue_keys(), f"SysV queue {key:#010x} left behind"


def test_priority_jobs() -> None:
    run = run_example("priority_jobs.py")
    assert "all 9 jobs done exactly once" in run.stdout, run.stdout
    assert f"/aioipc-jobs-{run.pid}" in run.stdout
    assert len(re.findall(r"^  worker [123] \(pid \d+\): job \d+", run.stdout, re.M)) == 9
    if os.path.ismount("/dev/mqueue"):
        left = [n for n in os.listdir("/dev/mqueue") if n.endswith(f"-{run.pid}")]
        assert not left, f"POSIX queues left behind: {left}"
