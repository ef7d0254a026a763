"""Process helpers shared by the tests that start other processes: children running a
snippet of code (talked to through lines on stdin and stdout), and whole programs
(examples, the web app)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioipc

PYTHON = sys.executable
#: The checkout (or site-packages) this aioipc comes from: children import the same one.
AIOIPC_ROOT = str(Path(aioipc.__file__).resolve().parent.parent)
#: Seconds a child may take to answer or to end before the test fails.
CHILD_LIMIT = 30


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [AIOIPC_ROOT, env.get("PYTHONPATH")]))
    return env


def run_code(code: str, *args: str, timeout: float = CHILD_LIMIT) -> str:
    """Run ``code`` in a fresh interpreter (stdin closed); its stdout. The test fails if
    it does not exit 0 within ``timeout`` seconds."""
    try:
        done = subprocess.run(
            [PYTHON, "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process still ran after {timeout} s:\n{code}")
    assert done.returncode == 0, f"child exited with {done.returncode}:\n{done.stderr}"
    return done.stdout


@contextlib.contextmanager
def child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A child running ``code``; killed (if it still runs) and reaped on the way out."""
    proc = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CHILD_LIMIT)


def read_line(proc: subprocess.Popen[str], seconds: float = CHILD_LIMIT) -> str:
    """The child's next stdout line, stripped; the test fails if none comes in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, f"no line from child {proc.pid} within {seconds} s"
    line = proc.stdout.readline()
    assert line, f"child {proc.pid} ended its output early: {proc.communicate()[1]}"
    return line.strip()


def tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def session_members(sid: int) -> list[str]:
    """Live processes in session ``sid`` (a program started with its own session, and
    everything it started): ``"pid (comm)"`` each."""
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
            found.append(stat[: stat.rindex(")") + 1])
    return found


def run_on_a_pty(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with its stdout on a pseudo-terminal (so rich draws its tables and
    colours); returns its exit code, what it wrote there, and its stderr."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env
    )
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], CHILD_LIMIT)
            assert ready, f"{argv} did not finish"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        code = proc.wait(CHILD_LIMIT)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    return code, out, err
