"""Edges of the registry, ``aioipc ls``/``rm`` and the demo's shared-memory rows.

Real kernel objects and real processes only: SysV keys with the top bit set, names
that look like rich markup, queues another user may not read, a forked worker closing
an inherited listener, a demo child whose parent dies, queues with no mqueue mount, and
the bounded buffer of the demo's shared-memory rows (order, wrap-around, the size limit,
cancellation). Each test keeps a registry of its own (a temporary ``AIOIPC_REGISTRY``,
inherited by the processes it starts) and removes every object it made. Most began as
failing tests in a review.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from aioipc import fifo, posix
from aioipc._cli.demo_regions import REGION_MECHANISMS, SLOTS, region_parent
from aioipc._cli.inventory import scan
from aioipc._cli.rm import remove_stale
from aioipc._core import libc as _libc
from aioipc._core import registry as _registry
from aioipc.errors import MessageTooLargeError

from ._procs import run_code, run_on_a_pty

LIMIT = 30
NOBODY = 65534
HERE = Path(__file__).parent
_AS_NOBODY = [sys.executable, str(HERE / "peers" / "as_user_cli.py"), str(NOBODY)]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A registry of this test's own (processes it starts inherit it)."""
    d = Path(tempfile.mkdtemp(prefix="aioipc-rv2-reg-"))
    monkeypatch.setenv(_registry.ENV, str(d / "reg"))
    try:
        yield d / "reg"
    finally:
        shutil.rmtree(d)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="aioipc-rv2-"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (any process, not only a child) ends within ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


# -- (1) SysV keys with the top bit set ----------------------------------------------------


def test_rm_stale_removes_a_dead_creators_queue_whose_key_has_the_top_bit(
    registry: Path,
) -> None:
    made = run_code(
        """
        import secrets
        from aioipc import sysv
        from aioipc.errors import IPCExistsError
        for _ in range(20):
            key = 0x80000000 | secrets.randbits(30)
            try:
                q = sysv.SemaphoreSet.create(key)
            except IPCExistsError:
                continue
            print(q.id)
            break
        """
    )
    qid = int(made)  # its creator has exited: the queue is stale
    try:
        # A set, not a queue: whether a queue is in use can depend on processes this
        # machine may not let us inspect; a set's waiters the kernel counts itself.
        done, failed = remove_stale(scan(["sysv-sem"]))
        assert not failed
        assert any(line.startswith(f"removed sysv-sem id {qid} ") for line in done), done
    finally:
        with contextlib.suppress(OSError):
            _libc.semctl(qid, 0, _libc.IPC_RMID)


# -- (2) ls on a terminal: names are rich markup ---------------------------------------------


def _ls_on_a_tty(*args: str) -> tuple[int, str, str]:
    """``aioipc ls ARGS`` with stdout on a pseudo-terminal (so the rich table is drawn)."""
    env = dict(os.environ, COLUMNS="2000", TERM="xterm")
    code, out, raw_err = run_on_a_pty([sys.executable, "-m", "aioipc", "ls", *args], env)
    err = raw_err.decode()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
    return code, text, err


def test_ls_on_a_terminal_survives_a_fifo_path_that_looks_like_markup(
    registry: Path, short_dir: Path
) -> None:
    (short_dir / "d[").mkdir()
    path = str(short_dir / "d[" / "]")
    fifo.create(path)
    try:
        code, text, err = _ls_on_a_tty("--kind", "fifo")
        assert "Traceback" not in err, err
        assert code == 0, err
        assert path in text, text
    finally:
        fifo.unlink(path)


def test_ls_on_a_terminal_shows_a_bracketed_name_as_it_is(registry: Path) -> None:
    name = f"/aioipc-rv2-{uuid4().hex[:8]}[red]x"
    region = posix.SharedMemory.create(name, 64)
    try:
        code, text, err = _ls_on_a_tty("--kind", "posix-shm", "--mine")
        assert code == 0, err
        assert name in text, text
    finally:
        region.close()
        region.unlink()


# -- (3) another user's POSIX queues vanish from ls -----------------------------------------


@root_only
def test_ls_as_another_user_lists_a_queue_it_cannot_read(registry: Path) -> None:
    name = f"/aioipc-rv2-{uuid4().hex[:8]}"
    queue = posix.MessageQueue.create(name, mode=0o600)
    try:
        done = subprocess.run(
            [*_AS_NOBODY, "ls", "--json", "--kind", "posix-mq"],
            capture_output=True,
            text=True,
            timeout=LIMIT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **{_registry.ENV: "off"}),
        )
        assert done.returncode == 0, done.stderr
        rows = [r for r in json.loads(done.stdout) if r["name"] == name]
        assert len(rows) == 1, "the queue is missing from the list"
        assert rows[0]["owner"] == "root"
    finally:
        queue.unlink()
        anyio.run(queue.aclose)


# -- (4) a forked child closing an inherited unix listener ----------------------------------


def test_a_forked_child_closing_an_inherited_listener_leaves_the_socket_file(
    registry: Path, short_dir: Path
) -> None:
    path = str(short_dir / "s")
    out = run_code(
        """
        import json, os, sys
        import anyio
        from aioipc import unix
        from aioipc._core import registry as _registry
        path = sys.argv[1]
        listener = anyio.run(unix.listen, path)
        pid = os.fork()
        if pid == 0:  # a worker (gunicorn --preload style) closing what it inherited
            code = 1
            try:
                anyio.run(listener.aclose)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report = {
            "child": os.waitstatus_to_exitcode(status),
            "file": os.path.exists(path),
            "entry": any(e.ident == path for e in _registry.entries()),
        }
        anyio.run(listener.aclose)
        report["after_parent_close"] = [e.ident for e in _registry.entries()]
        print(json.dumps(report))
        """,
        path,
    )
    report = json.loads(out)
    assert report["child"] == 0
    assert report["after_parent_close"] == []
    assert (report["file"], report["entry"]) == (True, True), report


# -- (5) the demo's shared-memory rows ------------------------------------------------------

_ECHO_CHILD = """
import sys
import anyio
from aioipc._cli.demo_regions import region_child

async def main() -> None:
    chan = region_child(sys.argv[1], sys.argv[2:])
    async with chan:
        while True:
            msg = await chan.receive()
            if msg == b"bye":
                return
            await chan.send(msg)

anyio.run(main)
"""


@pytest.mark.parametrize("mechanism", REGION_MECHANISMS)
def test_bounded_buffer_order_wraparound_limit_and_cancellation(
    mechanism: str, registry: Path, short_dir: Path
) -> None:
    """Checked and found right: echoes come back in order across several wraps of the
    16 slots, a message exactly at the slot limit fits and one byte more is refused
    before anything is taken, and a cancelled receive loses no slot."""

    async def main() -> None:
        async with region_parent(mechanism, str(short_dir), 100) as (chan, args, fds):
            limit = chan._slot - 4
            proc = await anyio.open_process(
                [sys.executable, "-c", _ECHO_CHILD, mechanism, *args],
                pass_fds=fds,
                stdin=None,
                stdout=None,
                stderr=None,
            )
            try:
                with anyio.fail_after(LIMIT):
                    with pytest.raises(MessageTooLargeError):
                        await chan.send(bytes(limit + 1))
                    # A receive cancelled while waiting must not take a slot's permit.
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(chan.receive)
                        await wait_all_tasks_blocked()
                        tg.cancel_scope.cancel()
                    sizes = [0, 1, limit, limit - 1, 7] * (3 * SLOTS // 5 + 2)
                    msgs = [
                        i.to_bytes(4, "big") * (n // 4) + bytes(n % 4) for i, n in enumerate(sizes)
                    ]
                    got: list[bytes] = []

                    async def send_all() -> None:
                        for m in msgs:
                            await chan.send(m)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(send_all)
                        for _ in msgs:
                            got.append(await chan.receive())
                    assert [len(g) for g in got] == sizes
                    assert got == msgs
                    await chan.send(b"bye")
                    assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with anyio.CancelScope(shield=True):
                        await proc.wait()
                await proc.aclose()

    anyio.run(main)
    assert _registry.entries() == []  # every object removed, every entry dropped


_DEMO_PARENT = """
import json, sys
import anyio
from aioipc._cli.demo_regions import region_parent

async def main() -> None:
    mechanism, tmp = sys.argv[1], sys.argv[2]
    async with region_parent(mechanism, tmp, 64) as (chan, args, fds):
        proc = await anyio.open_process(
            [sys.executable, "-m", "aioipc._cli.demo", "child", mechanism, *args],
            pass_fds=fds, stdin=None, stdout=None, stderr=None,
        )
        await chan.send(b"ping" + bytes(60))
        assert (await chan.receive())[:4] == b"pong"
        print(json.dumps({"child": proc.pid, "args": args}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until killed

anyio.run(main)
"""


def test_demo_region_child_ends_when_its_parent_dies(registry: Path, short_dir: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _DEMO_PARENT, "sysv-shm", str(short_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    info = json.loads(parent.stdout.readline())
    child = int(info["child"])
    segment, sem_set = int(info["args"][0]), int(info["args"][1])
    try:
        parent.kill()
        parent.wait(LIMIT)
        assert _wait_exit(child, 10), "the demo child outlived its parent, blocked for ever"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        assert _wait_exit(child, LIMIT)
        with contextlib.suppress(OSError):
            _libc.shmctl(segment, _libc.IPC_RMID)
        with contextlib.suppress(OSError):
            _libc.semctl(sem_set, 0, _libc.IPC_RMID)
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()


# -- (6) rm names a queue it cannot see as missing ------------------------------------------


@root_only
def test_rm_posix_mq_without_a_mount_does_not_call_an_existing_queue_missing(
    registry: Path,
) -> None:
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) to hide /dev/mqueue")
    name = f"/aioipc-rv2-{uuid4().hex[:8]}"
    queue = posix.MessageQueue.create(name, mode=0o666)
    try:
        hide_mqueue = ["unshare", "-m", "sh", "-c", 'umount /dev/mqueue && exec "$@"', "sh"]
        done = subprocess.run(
            [*hide_mqueue, *_AS_NOBODY, "rm", "posix-mq", name, "--force"],
            capture_output=True,
            text=True,
            timeout=LIMIT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **{_registry.ENV: "off"}),
        )
        assert done.returncode != 0
        assert "does not exist" not in done.stderr, done.stderr
        assert "/dev/mqueue" in done.stderr, done.stderr
    finally:
        queue.unlink()
        anyio.run(queue.aclose)
