"""Regression tests for the review of the shared-memory ring and regions (commit 0bd40c1).

One test per finding, on real kernel objects (files in /dev/shm, FIFOs, OFD locks,
pidfds, SysV segments) and, where a finding needs another process or a process-wide
limit, real child processes. Each test failed on the code before that commit, except
the last two (a FIFO at a ring's name called stale; a receiver without a free fd for
the pidfd), which failed until the commit after it.

Children import the same ``aioipc`` as this module (``PYTHONPATH`` points at it), so the
tests can be run against another checkout of the package as well.

Nothing waits by sleeping: tasks are followed with ``anyio.wait_all_tasks_blocked`` (run
under trio where a test needs it to account for pending I/O too), events, a child's
output line or its exit, all under a bound. Every ring name comes from the ``new_ring``
fixture, which removes whatever is left of it and fails the test if anything was.

Not covered: the two races in ``_sleep`` (a sender that publishes and closes, or dies
and is reaped, between the receiver's last look at the ring and its sleep). They open
and close within a few instructions of one call and cannot be hit on purpose without
patching aioipc's internals.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import sysv_ipc
from anyio import BusyResourceError, ClosedResourceError, WouldBlock

import aioipc
import aioipc.shm
from aioipc import IPCNotFoundError, MappedFile, ProtocolError, posix, sysv
from aioipc.shm import ShmReceiver, ShmSender

from ._procs import CHILD_LIMIT, PYTHON, child, child_env, read_line, run_code, tell
from ._rings import existing, ring_files

#: Header fields (byte offsets into /dev/shm/NAME), as aioipc/_ring.py documents them.
OFF_MAGIC, OFF_HEAD, OFF_TAIL, OFF_CWAITING = 0, 64, 128, 256


# --------------------------------------------------------------------------- helpers


def run(main: Callable[[], Awaitable[None]], backend: str = "asyncio") -> None:
    anyio.run(main, backend=backend)


def peek(name: str, fmt: str, offset: int) -> int:
    with open("/dev/shm" + name, "rb") as f:
        f.seek(offset)
        value: int = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
        return value


def poke(name: str, offset: int, data: bytes) -> None:
    with open("/dev/shm" + name, "r+b") as f:
        f.seek(offset)
        f.write(data)


def pending_bytes(fifo: str) -> int:
    """How many bytes wait in a FIFO (FIONREAD), without taking them."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return buf[0]
    finally:
        os.close(fd)


def filler(i: int) -> bytes:
    """24 bytes: a 32-byte record in the ring."""
    return i.to_bytes(8, "little") * 3


def drain(rx: ShmReceiver) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(rx.receive_nowait())
        except WouldBlock:
            return got


def refused(call: Callable[[], Any], error: type[BaseException]) -> BaseException:
    """``call()`` must raise ``error``; whatever it made instead is closed."""
    try:
        made = call()
    except error as exc:
        return exc
    with contextlib.suppress(Exception):
        made.close()
    pytest.fail(f"{call} did not raise {error.__name__}; it returned {made!r}")


class Outcome:
    """What a call run in another task did."""

    def __init__(self) -> None:
        self.value: object = None
        self.error: BaseException | None = None
        self.finished = anyio.Event()
        self.at = 0.0

    async def capture(self, call: Callable[[], Awaitable[object]]) -> None:
        try:
            self.value = await call()
        except Exception as exc:
            self.error = exc
        self.at = time.monotonic()
        self.finished.set()

    async def wait(self, seconds: float = 5) -> None:
        with anyio.fail_after(seconds):
            await self.finished.wait()

    def __repr__(self) -> str:
        return f"<Outcome value={self.value!r} error={self.error!r}>"


def shm_segments() -> dict[int, int]:
    """{key: shmid} of the System V segments, from /proc/sysvipc/shm."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    rows = [line.split() for line in lines[1:] if line.strip()]
    return {int(row[0]): int(row[1]) for row in rows}


def shm_keys() -> set[int]:
    return set(shm_segments())


def fresh_key() -> int:
    used = shm_keys()
    while True:
        key = random.randint(0x1000_0000, 0x7FFF_FFFE)
        if key not in used:
            return key


# ========================================================== F1: fences in two threads


def test_two_event_loops_in_two_threads_lose_nothing(new_ring: Callable[[], str]) -> None:
    """Each handle fences with its own lock: two threads, each with its own event loop
    and ring, never release each other's (which raised RuntimeError after a message
    was taken or published)."""
    names = [new_ring(), new_ring()]
    errors: list[str] = []
    counts: dict[str, int] = {}
    start = threading.Barrier(len(names))
    deadline = 0.0

    def worker(name: str) -> None:
        async def main() -> None:
            async with ShmReceiver.create(name, 1 << 16) as rx, ShmSender.open(name) as tx:
                i = 0
                while time.monotonic() < deadline and not errors:
                    for _ in range(500):
                        await tx.send(i.to_bytes(8, "little"))
                        tx.send_nowait((i + 1).to_bytes(8, "little"))
                        for want in (i, i + 1):
                            got = int.from_bytes(await rx.receive(), "little")
                            if got != want:
                                errors.append(f"{name}: got message {got}, expected {want}")
                                return
                        i += 2
                counts[name] = i

        try:
            start.wait(timeout=CHILD_LIMIT)
            anyio.run(main)
        except BaseException as exc:
            errors.append(f"{name}: {exc!r}")

    switch = sys.getswitchinterval()
    # Switch threads often: with the default 5 ms the old shared lock survived 1.5 s of
    # this; at 10 us it broke within half a second in every run.
    sys.setswitchinterval(1e-5)
    try:
        deadline = time.monotonic() + 1.5
        threads = [threading.Thread(target=worker, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=CHILD_LIMIT)
    finally:
        sys.setswitchinterval(switch)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(counts) == sorted(names)
    assert all(c > 0 for c in counts.values())


# ============================================= F2: receive_view waiting while one opens


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_waiting_receive_view_never_shares_a_message(
    new_ring: Callable[[], str], backend: str
) -> None:
    """A receive_view waiting on an empty ring, woken while another task tries a
    receive_view that would find the message that arrived: the second task gets
    BusyResourceError (one task per direction of a handle, docs/channels.md), so it
    never opens the same message, and neither message is lost."""
    name = new_ring()

    async def main() -> None:
        async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
            waiter = Outcome()

            async def view_copy() -> bytes:
                async with rx.receive_view() as view:
                    return bytes(view)

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter.capture, view_copy)
                await anyio.wait_all_tasks_blocked()
                assert not waiter.finished.is_set(), waiter
                tx.send_nowait(b"first")
                tx.send_nowait(b"second")
                # No checkpoint in between: the waiting task, woken by the doorbell,
                # has not run yet when this one asks.
                with pytest.raises(BusyResourceError, match="already waiting"):
                    async with rx.receive_view():
                        raise AssertionError("opened a message while another task waits")
                await waiter.wait()
            assert waiter.error is None, waiter
            assert [waiter.value, *drain(rx)] == [b"first", b"second"]

    run(main, backend)


# ====================================== F3, F4: the send lock of a multi-producer ring


async def multi_producer_blocked(
    name: str, tg: Any, rx: ShmReceiver, a: ShmSender
) -> tuple[list[bytes], bytes, Outcome]:
    """Fill the ring (256 bytes) up to 32 bytes from its end and start a send on ``a``
    of a message that does not fit: it waits for room holding the ring's send lock.
    Returns (what was sent, the big message, the big send's outcome)."""
    sent = [filler(i) for i in range(7)]  # 7 records of 32 bytes
    for m in sent:
        a.send_nowait(m)
    big = b"B" * 100  # a 112-byte record
    outcome = Outcome()
    tg.start_soon(outcome.capture, lambda: a.send(big))
    await anyio.wait_all_tasks_blocked()
    assert not outcome.finished.is_set(), outcome
    return sent, big, outcome


def test_multi_producer_send_nowait_keeps_the_lock_a_waiting_send_holds(
    new_ring: Callable[[], str],
) -> None:
    """While a send of handle A waits for room holding the send lock, send_nowait on A
    raises WouldBlock (even though its message fits) and leaves the lock held: a
    send_nowait on handle B is WouldBlock too, until A's send completes."""
    name = new_ring()

    async def main() -> None:
        async with (
            ShmReceiver.create(name, 256, multi_producer=True) as rx,
            ShmSender.open(name) as a,
            ShmSender.open(name) as b,
            anyio.create_task_group() as tg,
        ):
            sent, big, outcome = await multi_producer_blocked(name, tg, rx, a)
            with pytest.raises(WouldBlock):
                a.send_nowait(b"a-nowait")  # 16 bytes: fits in the 32 left
            with pytest.raises(WouldBlock):
                b.send_nowait(b"b-nowait")  # the lock is still A's
            with pytest.raises(WouldBlock):
                a.send_nowait(b"a-nowait")
            assert not outcome.finished.is_set(), outcome
            got = drain(rx)  # room: A's send goes in and drops the lock
            await outcome.wait()
            assert outcome.error is None, outcome
            b.send_nowait(b"b-after")
            got += drain(rx)
            assert got == [*sent, big, b"b-after"]

    run(main)


def test_multi_producer_send_waiting_for_the_lock_can_be_cancelled(
    new_ring: Callable[[], str],
) -> None:
    """A send waiting for the send lock, held by another handle's waiting send, returns
    when cancelled (not when the lock comes free) and sent nothing; closing its handle
    also ends it."""
    name = new_ring()

    async def main() -> None:
        async with (
            ShmReceiver.create(name, 256, multi_producer=True) as rx,
            ShmSender.open(name) as a,
            ShmSender.open(name) as b,
            anyio.create_task_group() as tg,
        ):
            sent, big, outcome = await multi_producer_blocked(name, tg, rx, a)
            took: list[float] = []
            b_done = anyio.Event()

            async def cancelled_send() -> None:
                began = time.monotonic()
                with anyio.move_on_after(0.2):
                    await b.send(b"from b")
                took.append(time.monotonic() - began)
                b_done.set()

            tg.start_soon(cancelled_send)
            with anyio.move_on_after(3):
                await b_done.wait()
            # Free the ring: A's send goes in and drops the lock (which also ends a B
            # send that ignored its cancellation, so the test finishes either way).
            got = drain(rx)
            await outcome.wait()
            with anyio.fail_after(5):
                await b_done.wait()
            got += drain(rx)
            assert got == [*sent, big], "the cancelled send sent something"
            assert took[0] < 1.0, f"the cancelled send returned after {took[0]:.2f} s"
            b.send_nowait(b"b-after")  # B kept no lock
            assert drain(rx) == [b"b-after"]

            # Closing B ends its send waiting for the lock (A holds it again).
            sent, big, outcome = await multi_producer_blocked(name, tg, rx, a)
            closed = Outcome()
            tg.start_soon(closed.capture, lambda: b.send(b"from b, closed"))
            await anyio.wait_all_tasks_blocked()
            assert not closed.finished.is_set(), closed
            began = time.monotonic()
            await b.aclose()
            await closed.wait()
            assert isinstance(closed.error, ClosedResourceError), closed
            assert closed.at - began < 1.0
            got = drain(rx)
            await outcome.wait()
            got += drain(rx)
            assert got == [*sent, big]

    run(main)


# ================================================= F5: a pidfd numbered above 1023


def open_pidfds() -> list[int]:
    fds = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == "anon_inode:[pidfd]":
                fds.append(int(entry))
    return fds


@contextlib.contextmanager
def low_fds_taken() -> Iterator[None]:
    """Occupy every free fd number below 1024 (raising RLIMIT_NOFILE if needed): the
    next fd opened is numbered 1024 or more, as in a busy server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    taken: list[int] = []
    try:
        while True:
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            if fd >= 1024:
                os.close(fd)
                break
            taken.append(fd)
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_spurious_wakeup_with_a_pidfd_above_1023(new_ring: Callable[[], str]) -> None:
    """A sender waiting for room is woken although there is still too little (the
    receiver took a small message); with the receiver's pidfd numbered >= 1024 that
    must not raise (select() raised ValueError: fd out of range). Under trio, whose
    wait_all_tasks_blocked also waits for pending I/O to be handled."""
    name = new_ring()

    async def main() -> None:
        async with ShmReceiver.create(name, 256) as rx, ShmSender.open(name) as tx:
            sent = [filler(i) for i in range(8)]  # 8 records of 32 bytes: full
            for m in sent:
                tx.send_nowait(m)
            big = b"B" * 100  # needs 112 bytes
            outcome = Outcome()
            with low_fds_taken():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(outcome.capture, lambda: tx.send(big))
                    await anyio.wait_all_tasks_blocked()
                    assert not outcome.finished.is_set(), outcome
                    assert any(fd >= 1024 for fd in open_pidfds()), open_pidfds()
                    got = [rx.receive_nowait()]  # frees 32 bytes and rings: not enough
                    await anyio.wait_all_tasks_blocked()
                    assert not outcome.finished.is_set(), outcome
                    got += drain(rx)  # now there is room
                    await outcome.wait()
            assert outcome.error is None, outcome
            got += drain(rx)
            assert got == [*sent, big]

    run(main, "trio")


# ============================ F8: a big bogus region is checked before it is mapped


def test_bogus_sparse_region_is_refused_without_allocating_it(
    new_ring: Callable[[], str],
) -> None:
    """A sparse 512 MiB regular file planted at the ring's name (no ring header) is
    refused on open without its pages being allocated (the header was checked only
    after a MAP_POPULATE mapping of the whole file)."""
    name = new_ring()
    path = ring_files(name)[0]
    size = 512 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        assert os.stat(path).st_blocks == 0
        # Zero magic: "still being created".
        for opener in (ShmSender.open, ShmReceiver.open):
            refused(partial(opener, name), IPCNotFoundError)
            assert os.stat(path).st_blocks * 512 <= 64 << 10
        # A wrong magic: not a ring.
        poke(name, OFF_MAGIC, b"notaring")
        for opener in (ShmSender.open, ShmReceiver.open):
            refused(partial(opener, name), ProtocolError)
            assert os.stat(path).st_blocks * 512 <= 64 << 10
    finally:
        os.unlink(path)


# ============================================= F9: out of file descriptors on open

EMFILE_CHILD = """
    import errno, json, os, resource, sys
    from aioipc import IPCError
    from aioipc.shm import ShmReceiver, ShmSender, is_stale, unlink

    created, attached = json.loads(sys.argv[1]), sys.argv[2]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def fds():
        # Open fds (not the one listdir used for the listing, closed by now).
        listed = (int(f) for f in os.listdir("/proc/self/fd"))
        return sorted(fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}"))

    def with_free_fds(free, call):
        # Run call() with exactly `free` fd numbers left below RLIMIT_NOFILE.
        used, limit = set(fds()), 0
        while free:
            free -= limit not in used
            limit += 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            return call(), None
        except BaseException as exc:
            return None, exc
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def record(op, free, call, check):
        before = fds()
        handle, exc = with_free_fds(free, call)
        if handle is not None:
            handle.close()
        after = fds()
        out = {"op": op, "free": free, "ok": exc is None, "leaked": len(after) - len(before)}
        if exc is not None:
            out.update(error=f"{type(exc).__module__}.{type(exc).__name__}: {exc}",
                       clean=isinstance(exc, IPCError), errno=getattr(exc, "errno", None))
        out.update(check())
        print(json.dumps(out), flush=True)

    # Creating takes the region, two doorbells, the mapping's (mmap dups the fd) and an
    # epoll fd, in that order; each is the one that fails with one fd fewer.
    for free, name in enumerate(created):
        def left(name=name):
            return {"left": [p for p in os.listdir("/dev/shm") if p.startswith(name[1:])]}
        record("create", free, lambda name=name: ShmReceiver.create(name, 4096), left)

    # Attaching to a ring nobody is attached to.
    ShmReceiver.create(attached, 4096, unlink_on_close=False).close()
    for free in range(len(created)):
        for kind in (ShmSender, ShmReceiver):
            record(f"open {kind.__name__}", free, lambda kind=kind: kind.open(attached),
                   lambda: {"stale": is_stale(attached)})
    unlink(attached)
"""


def test_out_of_fds_on_open_is_clean_and_leaks_nothing(new_ring: Callable[[], str]) -> None:
    """With too few file descriptors left (RLIMIT_NOFILE, in a child), creating or
    attaching a ring raises an aioipc error naming RLIMIT_NOFILE (not a raw OSError
    from epoll creation),
    leaks no fd or lock (the ring stays stale), and a creator leaves no files."""
    tries = 8  # 0..7 fds free: every open fails in turn, then it succeeds
    created = [new_ring() for _ in range(tries)]
    attached = new_ring()
    out = run_code(EMFILE_CHILD, json.dumps(created), attached)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3 * tries
    for op in ("create", "open ShmSender", "open ShmReceiver"):
        mine = [r for r in records if r["op"] == op]
        # Fails with up to N-1 fds free (the last failure is the epoll fd's), works with N.
        needed = min(r["free"] for r in mine if r["ok"])
        assert 4 <= needed < tries, mine
        for r in mine:
            assert r["leaked"] == 0, r
            assert r.get("left", []) == [], r  # a failed create removed its files
            assert r.get("stale", True), r  # a failed open kept no lock
            assert r["ok"] == (r["free"] >= needed), r
            if not r["ok"]:
                assert r["clean"], r
                assert r["errno"] == 24, r  # EMFILE
                assert "RLIMIT_NOFILE = " in r["error"], r  # the limit is named


# =================================================== F10: a FIFO planted at the name

FIFO_CALLS = {
    "is_stale": "aioipc.shm.is_stale(name)",
    "posix": "aioipc.posix.SharedMemory.open(name, read_only=True)",
    "file": "aioipc.MappedFile.open('/dev/shm' + name, read_only=True)",
}

FIFO_CHILD = """
    import sys
    import aioipc, aioipc.shm, aioipc.posix
    name = sys.argv[1]
    try:
        result = {call}
    except Exception as exc:
        print("raised", type(exc).__name__, exc)
    else:
        print("returned", repr(result))
"""


@contextlib.contextmanager
def planted_fifo(name: str) -> Iterator[None]:
    path = ring_files(name)[0]
    os.mkfifo(path, 0o600)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def fifo_outcomes(name: str) -> dict[str, str]:
    """Each of FIFO_CALLS in its own child (an open() that blocks cannot be cancelled),
    all at once; '' for a call still blocked after a few seconds."""
    procs = {
        what: subprocess.Popen(
            [PYTHON, "-c", textwrap.dedent(FIFO_CHILD.format(call=call)), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for what, call in FIFO_CALLS.items()
    }
    out = {}
    deadline = time.monotonic() + 5
    for what, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            assert proc.returncode == 0, stderr
            out[what] = stdout.strip()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[what] = ""
    return out


def test_fifo_planted_at_the_name_hangs_nothing(new_ring: Callable[[], str]) -> None:
    """A FIFO where a ring or shared-memory object should be: is_stale and the
    read-only opens of posix.SharedMemory and MappedFile return at once (an
    O_RDONLY open of a FIFO blocked until a writer came); the opens refuse it."""
    name = new_ring()
    with planted_fifo(name):
        out = fifo_outcomes(name)
    hung = [what for what, text in out.items() if not text]
    assert hung == [], f"still blocked after 5 s: {hung}; {out}"
    assert out["posix"].startswith("raised IPCNotFoundError"), out
    assert "not a shared-memory object" in out["posix"], out
    assert out["file"].startswith("raised ValueError"), out
    assert "not a regular file" in out["file"], out


def test_is_stale_refuses_a_fifo_at_the_name(new_ring: Callable[[], str]) -> None:
    name = new_ring()
    with planted_fifo(name):
        out = fifo_outcomes(name)
    assert out["is_stale"].startswith("raised "), out


# ======================================= F11: unaligned head/tail, receive_many(2.5)


@pytest.mark.parametrize(("head", "tail"), [(60, 60), (68, 60), (4, 0), (64, 4)])
def test_unaligned_head_or_tail_is_refused_on_open(
    new_ring: Callable[[], str], head: int, tail: int
) -> None:
    name = new_ring()
    ShmReceiver.create(name, 64, unlink_on_close=False).close()
    try:
        poke(name, OFF_HEAD, struct.pack("<Q", head))
        poke(name, OFF_TAIL, struct.pack("<Q", tail))
        for opener in (ShmSender.open, ShmReceiver.open):
            exc = refused(partial(opener, name), ProtocolError)
            assert "multiple of 8" in str(exc)
    finally:
        aioipc.shm.unlink(name)


def test_receive_many_with_a_float_consumes_nothing(new_ring: Callable[[], str]) -> None:
    name = new_ring()

    async def main() -> None:
        async with ShmReceiver.create(name, 4096) as rx, ShmSender.open(name) as tx:
            tx.send_nowait(b"one")
            tx.send_nowait(b"two")
            for bad in (2.5, 1.0):
                with pytest.raises(ValueError, match="max_count"):
                    await rx.receive_many(bad)  # type: ignore[arg-type]
            assert await rx.receive_many(2) == [b"one", b"two"]

    run(main)


# =========================================== F12: BusyResourceError names the ring


def test_busy_errors_name_the_ring(new_ring: Callable[[], str]) -> None:
    """Every BusyResourceError names the ring and what is in the way; none carries
    anyio's 'Another task is already ... this resource' wording."""
    name = new_ring()
    errors: dict[str, BaseException] = {}

    async def busy(what: str, call: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(BusyResourceError) as info:
            await call()
        errors[what] = info.value

    def busy_now(what: str, call: Callable[[], object]) -> None:
        with pytest.raises(BusyResourceError) as info:
            call()
        errors[what] = info.value

    async def main() -> None:
        async with ShmReceiver.create(name, 256) as rx, ShmSender.open(name) as tx:
            errors["second receiver"] = refused(lambda: ShmReceiver.open(name), BusyResourceError)
            errors["second sender"] = refused(lambda: ShmSender.open(name), BusyResourceError)

            tx.send_nowait(b"m")
            async with rx.receive_view():
                busy_now("receive_nowait in a view", rx.receive_nowait)
                await busy("receive in a view", rx.receive)

                async def nested_view() -> None:
                    async with rx.receive_view():
                        pass

                await busy("receive_view in a view", nested_view)

            async with tx.reserve(8) as view:
                view[:] = b"reserved"
                busy_now("send_nowait in a reserve", lambda: tx.send_nowait(b"x"))
                await busy("send in a reserve", lambda: tx.send(b"x"))
            assert drain(rx) == [b"reserved"]

            async with anyio.create_task_group() as tg:
                waiting = Outcome()
                tg.start_soon(waiting.capture, rx.receive)
                await anyio.wait_all_tasks_blocked()
                await busy("a second waiting receive", rx.receive)
                tg.cancel_scope.cancel()

            while True:
                try:
                    tx.send_nowait(b"fill" * 4)
                except WouldBlock:
                    break
            async with anyio.create_task_group() as tg:
                waiting = Outcome()
                tg.start_soon(waiting.capture, lambda: tx.send(b"x" * 64))
                await anyio.wait_all_tasks_blocked()
                await busy("a second waiting send", lambda: tx.send(b"y" * 64))
                tg.cancel_scope.cancel()

    run(main)
    assert len(errors) == 9
    for what, exc in errors.items():
        assert name in str(exc), (what, str(exc))
        assert "this resource" not in str(exc), (what, str(exc))


# ======================================================== F13: bad modes are refused


@pytest.mark.parametrize("mode", [-1, 0o7777, 0o1000], ids=["-1", "0o7777", "0o1000"])
def test_bad_mode_is_a_value_error_and_creates_nothing(
    new_ring: Callable[[], str], tmp_path: Path, mode: int
) -> None:
    name = new_ring()
    for create in (ShmReceiver.create, ShmSender.create):
        refused(partial(create, name, 4096, mode=mode), ValueError)
        assert existing(name) == []

    pname = new_ring()
    refused(lambda: posix.SharedMemory.create(pname, 4096, mode=mode), ValueError)
    assert existing(pname) == []

    key = fresh_key()
    try:
        refused(lambda: sysv.SharedMemory.create(key, 4096, mode=mode), ValueError)
        assert key not in shm_keys()
    finally:
        shmid = shm_segments().get(key)
        if shmid is not None:
            sysv_ipc.remove_shared_memory(shmid)

    path = tmp_path / "mapped"
    refused(lambda: MappedFile.open(path, 4096, create=True, mode=mode), ValueError)
    assert not os.path.lexists(path)


# ============================= F14: a receiver killed asleep leaves cwaiting set

SLEEPING_RECEIVER = """
    import sys
    import anyio
    from aioipc.shm import ShmReceiver

    async def main():
        rx = ShmReceiver.open(sys.argv[1])
        async with anyio.create_task_group() as tg:
            tg.start_soon(rx.receive)
            await anyio.wait_all_tasks_blocked()  # trio: the receive is asleep
            print("asleep", flush=True)
            await anyio.sleep_forever()  # until SIGKILL

    anyio.run(main, backend="trio")
"""


def test_new_receiver_clears_the_waiting_flag_of_a_killed_one(
    new_ring: Callable[[], str],
) -> None:
    """A receiver SIGKILLed asleep on an empty ring leaves cwaiting = 1; the next
    receiver to attach clears it, so the sender stops ringing a doorbell nobody
    listens to (one write() per send)."""
    name = new_ring()
    bell_data = ring_files(name)[1]
    with contextlib.closing(ShmSender.create(name, 4096)) as tx:
        with child(SLEEPING_RECEIVER, name) as proc:
            assert read_line(proc) == "asleep"
            assert peek(name, "<I", OFF_CWAITING) == 1
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=CHILD_LIMIT) == -signal.SIGKILL
        assert peek(name, "<I", OFF_CWAITING) == 1  # the dead one could not clear it
        with contextlib.closing(ShmReceiver.open(name)) as rx:
            assert peek(name, "<I", OFF_CWAITING) == 0
            before = pending_bytes(bell_data)
            messages = [b"one", b"two", b"three"]
            for m in messages:
                tx.send_nowait(m)
            assert pending_bytes(bell_data) == before, "the sender rang the data doorbell"
            assert drain(rx) == messages


# ========= (beyond the review) a receiver that could not open the sender's pidfd

NO_FD_RECEIVER = """
    import os, resource, sys
    import anyio
    import trio.testing  # imported now: no fd to read it with later
    from aioipc.shm import ShmReceiver

    async def receive(rx):
        try:
            with anyio.fail_after(2):
                await rx.receive()
        except Exception as exc:
            print(type(exc).__name__, flush=True)

    async def main():
        rx = ShmReceiver.create(sys.argv[1], 4096)
        print("ready", flush=True)
        sys.stdin.readline()  # the sender is attached
        # No fd left: pidfd_open() of the sender fails (EMFILE) when the receive sleeps.
        lowest_free = os.dup(0)
        os.close(lowest_free)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive, rx)
                await anyio.wait_all_tasks_blocked()  # trio: the receive is asleep
                print("asleep", flush=True)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            rx.close()

    anyio.run(main, backend="trio")
"""

IDLE_SENDER = """
    import sys
    from aioipc.shm import ShmSender
    tx = ShmSender.open(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # until SIGKILL
"""


def test_receiver_without_a_free_fd_still_notices_a_killed_sender(
    new_ring: Callable[[], str],
) -> None:
    name = new_ring()
    with child(NO_FD_RECEIVER, name) as receiver:
        assert read_line(receiver) == "ready"
        with child(IDLE_SENDER, name) as sender:
            assert read_line(sender) == "ready"
            tell(receiver, "go")
            assert read_line(receiver) == "asleep"
            sender.send_signal(signal.SIGKILL)
            assert sender.wait(timeout=CHILD_LIMIT) == -signal.SIGKILL
        outcome = read_line(receiver)
        assert receiver.wait(timeout=CHILD_LIMIT) == 0  # it closed (and removed) the ring
    assert outcome == "BrokenResourceError"


# ================================== second review: a ring seen while it is being created


def test_ring_being_created_is_not_found_and_not_stale(new_ring: Callable[[], str]) -> None:
    """The creator claims its end right after its exclusive create: before the ring is
    sized, an open says "still being created" (IPCNotFoundError, which callers retry on),
    and is_stale() does not call the half-built ring stale while the creator holds it.

    The half-built state is made by hand: the region file as the creator's O_EXCL open
    leaves it (0 bytes), held by an OFD lock on the receiver's byte as the creator takes
    it."""
    name = new_ring()
    region = ring_files(name)[0]
    fd = os.open(region, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(IPCNotFoundError, match="still being created"):
            ShmSender.open(name)
        with pytest.raises(IPCNotFoundError, match="still being created"):
            ShmReceiver.open(name)
        lock = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        assert aioipc.shm.is_stale(name) is False
    finally:
        os.close(fd)
        os.unlink(region)
