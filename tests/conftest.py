"""Suite-wide fixtures: the leak check, and helpers shared by the test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from aioipc._core import registry as _registry
from aioipc.testing import IPCSnapshot

from ._rings import existing

HERE = Path(__file__).parent

# The suite keeps its own registry of what aioipc creates (subprocesses inherit this), so
# that it never reads or prunes the registry of the machine's user, and `aioipc rm
# --stale` in a test can only ever see the suite's own objects.
# Made once, by the pytest process: the processes it starts inherit the variable, and
# those that import this module (multiprocessing children) keep it rather than making
# directories of their own that nobody would remove.
_SUITE_PREFIX = os.path.join(tempfile.gettempdir(), "aioipc-suite-registry-")
if os.environ.get(_registry.ENV, "").startswith(_SUITE_PREFIX):
    SUITE_REGISTRY = os.environ[_registry.ENV]
else:
    SUITE_REGISTRY = tempfile.mkdtemp(prefix="aioipc-suite-registry-")
    os.environ[_registry.ENV] = SUITE_REGISTRY


def _mount_mqueue() -> None:
    """POSIX queues are only visible in /dev/mqueue, which is not mounted by default here.

    Without it the leak check would be blind to them, so mount it when we may (root).
    """
    if os.path.ismount("/dev/mqueue"):
        return
    if os.geteuid() != 0:
        warnings.warn(
            "/dev/mqueue is not mounted: the leak check cannot see POSIX message queues "
            "(as root: mkdir -p /dev/mqueue && mount -t mqueue none /dev/mqueue)",
            stacklevel=1,
        )
        return
    os.makedirs("/dev/mqueue", exist_ok=True)
    subprocess.run(["mount", "-t", "mqueue", "none", "/dev/mqueue"], check=True)


@pytest.fixture(scope="session", autouse=True)
def _no_ipc_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if any IPC object made by the suite survives it."""
    _mount_mqueue()
    root = tmp_path_factory.getbasetemp()
    before = IPCSnapshot.take(root)
    yield
    shutil.rmtree(SUITE_REGISTRY, ignore_errors=True)
    IPCSnapshot.take(root).assert_no_new(before)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: socket paths must fit in 108 bytes."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="aioipc-t-"))
    try:
        yield d
    finally:
        # A socket file outliving its listener is aioipc's bug; FIFOs are the test's own.
        sockets = [p.name for p in d.iterdir() if p.is_socket()]
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
        assert not sockets, f"socket files outlived their listeners: {sockets}"


def thread_count() -> int:
    """Threads of this process as the kernel sees them (catches non-Python threads too)."""
    return len(os.listdir("/proc/self/task"))


def python_threads() -> list[str]:
    return [t.name for t in threading.enumerate()]


PYTHON = sys.executable


@pytest.fixture
def new_ring() -> Iterator[Callable[[], str]]:
    """``new_ring()`` -> a fresh unique ring name. Afterwards every file of every name
    handed out is removed, and the test fails if any was still there."""
    names: list[str] = []

    def make() -> str:
        name = f"/aioipc-test-ring-{uuid4().hex[:12]}"
        names.append(name)
        return name

    yield make
    left = []
    for name in names:
        for path in existing(name):
            left.append(path)
            os.unlink(path)
    assert not left, f"ring files left behind: {left}"
