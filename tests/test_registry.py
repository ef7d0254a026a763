"""aioipc's registry of the objects it creates (aioipc/_registry.py), with real objects.

The suite runs with its own registry directory (conftest sets AIOIPC_REGISTRY); the tests
of the default location under /dev/shm unset it for themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest

from aioipc import posix
from aioipc._core import registry as _registry

DEFAULT = f"/dev/shm/aioipc-registry-{os.geteuid()}"


def name() -> str:
    return f"/aioipc-reg-{uuid4().hex[:10]}"


@pytest.fixture
def own_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A registry of this test's own (created on first use)."""
    with tempfile.TemporaryDirectory(prefix="aioipc-reg-") as tmp:
        d = Path(tmp, "registry")
        monkeypatch.setenv(_registry.ENV, str(d))
        yield d


@pytest.fixture
def default_location(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The real default, /dev/shm/aioipc-registry-UID, if this machine has none yet."""
    if os.path.lexists(DEFAULT):
        pytest.skip(f"{DEFAULT} exists: this machine's registry is not the test's to touch")
    monkeypatch.delenv(_registry.ENV)
    try:
        yield Path(DEFAULT)
    finally:
        if os.path.islink(DEFAULT) or os.path.isfile(DEFAULT):
            os.unlink(DEFAULT)
        elif os.path.isdir(DEFAULT):
            for p in Path(DEFAULT).iterdir():
                p.unlink()
            os.rmdir(DEFAULT)


def test_default_location_lives_and_goes_with_the_objects(default_location: Path) -> None:
    n = name()
    region = posix.SharedMemory.create(n, 4096)
    try:
        st = os.lstat(default_location)
        assert stat.S_ISDIR(st.st_mode)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o700)
        [entry] = _registry.entries()
        assert (entry.kind, entry.ident, entry.pid, entry.uid) == (
            "posix-shm",
            n,
            os.getpid(),
            os.geteuid(),
        )
        assert entry.ino == os.stat(f"/dev/shm{n}").st_ino
        assert entry.start == _registry.process_start(os.getpid())
        assert _registry.creator_alive(entry) is True
        [file] = default_location.iterdir()
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    finally:
        region.close()
        region.unlink()
    # The last entry gone, the directory goes too: /dev/shm is as it was.
    assert not os.path.lexists(default_location)


def test_a_planted_registry_is_never_used(default_location: Path) -> None:
    with tempfile.TemporaryDirectory() as elsewhere:
        os.chmod(elsewhere, 0o700)
        os.symlink(elsewhere, default_location)
        n = name()
        region = posix.SharedMemory.create(n, 4096)  # creating still works
        region.close()
        assert os.listdir(elsewhere) == []  # nothing written through the link
        assert _registry.entries() == []
        os.unlink(default_location)
        # A directory others may write in is no better.
        os.mkdir(default_location, 0o700)
        os.chmod(default_location, 0o777)
        posix.unlink_shared_memory(n)
        region = posix.SharedMemory.create(n, 4096)
        region.close()
        assert os.listdir(default_location) == []
        assert _registry.entries() == []
        posix.unlink_shared_memory(n)


def test_off_records_nothing_and_a_missing_parent_breaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in ("off", "/nonexistent-aioipc/registry"):
        monkeypatch.setenv(_registry.ENV, value)
        n = name()
        region = posix.SharedMemory.create(n, 64)
        region.close()
        assert _registry.entries() == []
        posix.unlink_shared_memory(n)
    assert not os.path.exists("/nonexistent-aioipc")


def test_reading_skips_whatever_is_not_a_genuine_entry(own_dir: Path) -> None:
    n = name()
    region = posix.SharedMemory.create(n, 64)
    try:
        [good] = _registry.entries()
        body = json.loads(Path(good.path).read_text())
        # Planted: content that does not match its file name, a symlink, bad JSON, an
        # oversized file and a half-written temporary.
        other = dict(body, ident="/someone-else")
        (own_dir / Path(good.path).name.replace("posix-shm", "posix-sem")).write_text(
            json.dumps(other)
        )
        (own_dir / f"fifo.{'0' * 32}.json").symlink_to(good.path)
        (own_dir / f"sysv-msg.{'1' * 32}.json").write_text("{not json")
        (own_dir / f"sysv-shm.{'2' * 32}.json").write_text(" " * 5000)
        (own_dir / f".{Path(good.path).name}.123.456").write_text(json.dumps(body))
        assert _registry.entries() == [good]
    finally:
        region.close()
        region.unlink()
        for p in own_dir.iterdir():
            p.unlink()


def test_creator_liveness_uses_the_start_time(own_dir: Path) -> None:
    n = name()
    region = posix.SharedMemory.create(n, 64)
    try:
        [entry] = _registry.entries()
        assert _registry.creator_alive(entry) is True
        assert entry.start is not None
        # The same pid with another start time: the pid was reused, the creator is dead.
        assert _registry.creator_alive(replace(entry, start=entry.start + 1)) is False
        assert _registry.creator_alive(replace(entry, pid=2**22 + 7)) is False
        # Another pid namespace: nothing can be said.
        assert entry.pidns is not None
        assert _registry.creator_alive(replace(entry, pidns=entry.pidns + 1)) is None
    finally:
        region.close()
        region.unlink()
    assert _registry.entries() == []


def test_a_forked_child_is_recorded_as_the_creator(own_dir: Path) -> None:
    posix.SharedMemory.create(name(), 64).close()  # primes the creator cache in the parent
    [mine] = _registry.entries()
    n = name()
    pid = os.fork()
    if pid == 0:  # the child: create and exit at once, leaving the object behind
        code = 1
        with contextlib.suppress(BaseException):
            posix.SharedMemory.create(n, 64).close()
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    try:
        [child] = [e for e in _registry.entries() if e.ident == n]
        assert child.pid == pid
        assert _registry.creator_alive(child) is False
    finally:
        posix.unlink_shared_memory(n)
        posix.unlink_shared_memory(mine.ident)
    assert _registry.entries() == []


def test_remove_entry_leaves_an_entry_rewritten_since_it_was_read(own_dir: Path) -> None:
    n = name()
    region = posix.SharedMemory.create(n, 64)
    region.close()
    [old] = _registry.entries()
    posix.unlink_shared_memory(n)  # forgotten ...
    region = posix.SharedMemory.create(n, 64)  # ... and made again under the same name
    region.close()
    try:
        _registry.remove_entry(old)  # stale read: must not drop the new entry
        [new] = _registry.entries()
        assert new != old  # another creation time, at least
        _registry.remove_entry(new)
        assert _registry.entries() == []
    finally:
        posix.unlink_shared_memory(n)
