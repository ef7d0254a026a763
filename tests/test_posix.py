"""POSIX message queues and semaphores (``aioipc.posix``) on real kernel objects.

Peers are real processes: ``tests/peers/posix_peer.py`` started with
:func:`anyio.open_process` (most of its modes use ``posix_ipc`` directly, so the other
side is an independent implementation). Nothing waits by sleeping: every wait is on a
message, a line from a peer, an event or a process exit, under ``anyio.fail_after``.
The one exception is watching idle worker threads exit, which has no event: a short
polling loop, bounded by ``fail_after``.

Every queue and semaphore has a unique name and is unlinked in a ``finally``; every
handle is closed. Queues are kept small where the size does not matter, because the
kernel charges every queue's full capacity to the user's RLIMIT_MSGQUEUE (800 KiB by
default, fewer than ten default-sized queues).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import resource
import select
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
from anyio import BusyResourceError, ClosedResourceError, WouldBlock
from anyio.lowlevel import checkpoint

import aioipc
from aioipc import (
    IPCAttribute,
    IPCExistsError,
    IPCNotFoundError,
    IPCPermissionError,
    IPCSystemError,
    MessageTooLargeError,
)
from aioipc.posix import (
    PRIORITY_MAX,
    VALUE_MAX,
    MessageQueue,
    Semaphore,
    unlink_message_queue,
    unlink_semaphore,
)

from ._peer import Peer, spawn
from .conftest import thread_count

PYTHON = sys.executable
PEER = Path(__file__).parent / "peers" / "posix_peer.py"
MQ_SYSCTL = Path("/proc/sys/fs/mqueue")
#: A queue shape for tests where the shape does not matter (cheap on RLIMIT_MSGQUEUE).
SMALL: dict[str, Any] = {"max_messages": 4, "max_message_size": 256}
#: What the kernel charges to RLIMIT_MSGQUEUE per message slot on top of its size, on
#: 64-bit Linux: sizeof(struct msg_msg) + sizeof(struct posix_msg_tree_node) (ipc/mqueue.c).
KERNEL_SLOT_OVERHEAD = 48 + 48


def _load_peer_module() -> Any:
    spec = importlib.util.spec_from_file_location("posix_peer", PEER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_peer_module = _load_peer_module()
#: ``payload(i)``: message ``i`` as the peers build it; ``token(data, priority)``: how a
#: peer reports a message it received.
payload: Callable[[int], bytes] = _peer_module.payload
token: Callable[[bytes, int], str] = _peer_module.token


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid a child")
unprivileged_limits = pytest.mark.skipif(
    _has_cap_sys_resource(), reason="CAP_SYS_RESOURCE lifts the mqueue sysctl limits"
)


# --------------------------------------------------------------------------- helpers


def unique(kind: str) -> str:
    return f"/aioipc-test-{kind}-{uuid4().hex[:8]}"


def mq_file(name: str) -> Path:
    return Path("/dev/mqueue" + name)


def sem_file(name: str) -> Path:
    return Path(f"/dev/shm/sem.{name[1:]}")


def run_peer(*args: object) -> contextlib.AbstractAsyncContextManager[Peer]:
    """Start ``posix_peer.py ARGS``; it is killed if it still runs at the end, and reaped."""
    return spawn([PYTHON, str(PEER), *map(str, args)])


@contextlib.asynccontextmanager
async def fresh_queue(**kwargs: Any) -> AsyncIterator[MessageQueue]:
    """A new queue under a unique name; closed and unlinked afterwards."""
    name = unique("mq")
    q = MessageQueue.create(name, **kwargs)
    try:
        yield q
    finally:
        await q.aclose()
        with contextlib.suppress(FileNotFoundError):
            unlink_message_queue(name)


@contextlib.asynccontextmanager
async def fresh_semaphore(value: int) -> AsyncIterator[Semaphore]:
    """A new semaphore under a unique name; closed and unlinked afterwards."""
    name = unique("sem")
    sem = Semaphore.create(name, value)
    try:
        yield sem
    finally:
        await sem.aclose()
        with contextlib.suppress(FileNotFoundError):
            unlink_semaphore(name)


@contextlib.asynccontextmanager
async def opened_semaphore(name: str) -> AsyncIterator[Semaphore]:
    """Another handle on an existing semaphore (``async with sem`` would acquire it)."""
    sem = Semaphore.open(name)
    try:
        yield sem
    finally:
        await sem.aclose()


@dataclass
class Outcome:
    """What a call run in another task did."""

    value: object = None
    error: BaseException | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)


async def capture(outcome: Outcome, call: Callable[[], Awaitable[object]]) -> None:
    try:
        outcome.value = await call()
    except Exception as exc:
        outcome.error = exc
    outcome.finished.set()


async def finished(outcomes: list[Outcome], seconds: float) -> None:
    with anyio.fail_after(seconds):
        for outcome in outcomes:
            await outcome.finished.wait()


def tokens_of(line: str) -> list[str]:
    return line.split()


async def aioipc_threads_gone(seconds: float) -> None:
    """Wait until aioipc's idle worker (and interrupter) threads have exited.

    Nothing signals a thread's exit, so this polls, bounded by ``seconds``.
    """
    with anyio.fail_after(seconds):
        while any(t.name.startswith("aioipc-") for t in threading.enumerate()):  # noqa: ASYNC110
            await anyio.sleep(0.01)


# =========================================================================== queues


@pytest.mark.asyncio
async def test_mq_lifecycle_attributes_and_unlink() -> None:
    name = unique("mq")
    missing = unique("mq")
    with pytest.raises(IPCNotFoundError, match=missing) as not_found:
        MessageQueue.open(missing)
    assert isinstance(not_found.value, FileNotFoundError)

    q = MessageQueue.create(name, max_messages=3, max_message_size=64)
    try:
        assert q.name == name
        assert name in repr(q)
        assert (q.max_messages, q.max_message_size, q.current_messages) == (3, 64, 0)
        assert q.mode == 0o600
        assert stat.S_IMODE(mq_file(name).stat().st_mode) == 0o600
        assert (q.uid, q.gid) == (os.geteuid(), os.getegid())
        assert q.extra(IPCAttribute.path) == name
        assert q.extra(IPCAttribute.mechanism) == "posix-mq"
        assert q.extra(IPCAttribute.framed) is False
        assert q.extra(IPCAttribute.max_message_size) == 64

        with pytest.raises(IPCExistsError, match=name) as exists:
            MessageQueue.create(name)
        assert isinstance(exists.value, FileExistsError)

        async with MessageQueue.open(name) as second:
            assert (second.max_messages, second.max_message_size) == (3, 64)
            second.send_nowait(b"through the second handle")
            assert q.current_messages == 1
            assert q.receive_nowait() == b"through the second handle"

        # open_or_create of an existing queue opens it: shape and mode are not applied.
        async with MessageQueue.open_or_create(
            name, max_messages=2, max_message_size=32, mode=0o644
        ) as existing:
            assert (existing.max_messages, existing.max_message_size) == (3, 64)
            assert existing.mode == 0o600

        q.mode = 0o640
        assert q.mode == 0o640
        assert stat.S_IMODE(mq_file(name).stat().st_mode) == 0o640
        if os.geteuid() == 0:
            q.uid = 65534
            q.gid = 65534
            assert (q.uid, q.gid) == (65534, 65534)
            st = mq_file(name).stat()
            assert (st.st_uid, st.st_gid) == (65534, 65534)
            q.uid = 0
            q.gid = 0
            assert (q.uid, q.gid) == (0, 0)

        # unlink: the name goes at once, the open handle keeps working.
        q.send_nowait(b"before unlink")
        q.unlink()
        assert not mq_file(name).exists()
        with pytest.raises(IPCNotFoundError, match=name):
            MessageQueue.open(name)
        with pytest.raises(FileNotFoundError, match=name):
            q.unlink()
        q.send_nowait(b"after unlink")
        assert q.current_messages == 2
        assert q.receive_nowait() == b"before unlink"
        assert await q.receive() == b"after unlink"

        # The name is free again: open_or_create makes a new, separate queue.
        async with MessageQueue.open_or_create(
            name, max_messages=2, max_message_size=32, mode=0o640
        ) as new:
            assert (new.max_messages, new.max_message_size) == (2, 32)
            assert new.mode == 0o640
            q.send_nowait(b"to the unlinked queue")
            assert (new.current_messages, q.current_messages) == (0, 1)
            assert q.receive_nowait() == b"to the unlinked queue"
            unlink_message_queue(name)
            assert not mq_file(name).exists()
        with pytest.raises(IPCNotFoundError, match=name):
            unlink_message_queue(name)
    finally:
        await q.aclose()
        with contextlib.suppress(FileNotFoundError):
            unlink_message_queue(name)


@pytest.mark.asyncio
async def test_mq_priorities_highest_first_fifo_within() -> None:
    assert PRIORITY_MAX == 32767
    async with fresh_queue(max_messages=10, max_message_size=64) as q:
        sends = [
            (b"low 1", 0),
            (b"top 1", PRIORITY_MAX),
            (b"mid 1", 7),
            (b"low 2", 0),
            (b"mid 2", 7),
            (b"top 2", PRIORITY_MAX),
            (b"mid 3", 7),
            (b"one", 1),
        ]
        for data, priority in sends[:4]:
            await q.send(data, priority=priority)
        for data, priority in sends[4:]:
            q.send_nowait(data, priority=priority)
        expected = [
            (b"top 1", PRIORITY_MAX),
            (b"top 2", PRIORITY_MAX),
            (b"mid 1", 7),
            (b"mid 2", 7),
            (b"mid 3", 7),
            (b"one", 1),
            (b"low 1", 0),
            (b"low 2", 0),
        ]
        for i, want in enumerate(expected):
            got = q.receive_message_nowait() if i % 2 else await q.receive_message()
            assert got == want
        with pytest.raises(WouldBlock):
            q.receive_message_nowait()

        # receive() returns the data only, still highest first.
        q.send_nowait(b"plain", priority=3)
        q.send_nowait(b"urgent", priority=4)
        assert await q.receive() == b"urgent"
        assert q.receive_nowait() == b"plain"

        for bad in (-1, PRIORITY_MAX + 1):
            with pytest.raises(ValueError, match=rf"0\.\.{PRIORITY_MAX}"):
                await q.send(b"x", priority=bad)
            with pytest.raises(ValueError, match=rf"0\.\.{PRIORITY_MAX}"):
                q.send_nowait(b"x", priority=bad)
        bad_type: Any
        for bad_type in (True, 1.5, "1"):
            with pytest.raises(TypeError, match="priority"):
                q.send_nowait(b"x", priority=bad_type)
        assert q.current_messages == 0  # nothing refused was enqueued


@pytest.mark.asyncio
async def test_mq_waiting_uses_no_threads_only_fd_readiness() -> None:
    async with (
        fresh_queue(**SMALL) as empty,
        fresh_queue(max_messages=2, max_message_size=16) as full,
    ):
        assert empty.extra(IPCAttribute.fd) == empty.fileno()
        assert full.extra(IPCAttribute.fd) == full.fileno()
        full.send_nowait(b"1")
        full.send_nowait(b"2")
        with pytest.raises(WouldBlock):
            full.send_nowait(b"3")

        # The queue descriptors are pollable fds: readable iff a message is there,
        # writable iff there is room.
        poller = select.poll()
        poller.register(empty.fileno(), select.POLLIN | select.POLLOUT)
        poller.register(full.fileno(), select.POLLIN | select.POLLOUT)
        events = dict(poller.poll(0))
        assert events[empty.fileno()] == select.POLLOUT
        assert events[full.fileno()] == select.POLLIN

        before = thread_count()
        receiving, sending = Outcome(), Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture, receiving, empty.receive)
            tg.start_soon(capture, sending, lambda: full.send(b"3"))
            await anyio.wait_all_tasks_blocked()
            assert not receiving.finished.is_set()
            assert not sending.finished.is_set()
            assert thread_count() <= before, "a task waiting on a queue started a thread"
            # Another handle, as another process would, makes the kernel wake them.
            async with MessageQueue.open(empty.name, read=False) as other:
                other.send_nowait(b"wake up")
            async with MessageQueue.open(full.name, write=False) as other:
                assert other.receive_nowait() == b"1"
            await finished([receiving, sending], 5)
        assert thread_count() <= before
        assert receiving.error is None
        assert receiving.value == b"wake up"
        assert sending.error is None
        assert full.receive_nowait() == b"2"
        assert full.receive_nowait() == b"3"


@pytest.mark.asyncio
async def test_mq_backpressure_send_waits_for_a_draining_process() -> None:
    async with fresh_queue(max_messages=3, max_message_size=256) as q:
        for i in range(3):
            q.send_nowait(payload(i))
        with pytest.raises(WouldBlock):
            q.send_nowait(payload(99))
        assert q.current_messages == 3
        last = Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture, last, lambda: q.send(payload(3)))
            await anyio.wait_all_tasks_blocked()
            assert not last.finished.is_set(), "send() into a full queue did not wait"
            assert q.current_messages == 3
            async with run_peer("mq-recv", q.name, 4) as peer:
                await peer.expect("ready")
                await finished([last], 10)
                got = tokens_of(await peer.line())
                await peer.finish()
        assert last.error is None
        assert len(got) == 4
        for i, reported in enumerate(got):
            assert reported == token(payload(i), 0)
        assert q.current_messages == 0
        with pytest.raises(WouldBlock):
            q.receive_nowait()
        with pytest.raises(WouldBlock):
            q.receive_message_nowait()


@pytest.mark.asyncio
async def test_mq_message_too_large_names_limit_and_queue() -> None:
    async with fresh_queue(max_messages=2, max_message_size=100) as q:
        q.send_nowait(bytes(100))  # exactly the limit is fine
        assert len(q.receive_nowait()) == 100
        with pytest.raises(MessageTooLargeError) as info:
            await q.send(bytes(101))
        text = str(info.value)
        assert "= 100 bytes" in text
        assert "max_message_size" in text
        assert q.name in text
        assert (info.value.size, info.value.limit) == (101, 100)
        assert isinstance(info.value, ValueError)
        # bytearray and memoryview are taken too (at run time; the annotation says bytes).
        big: Any = bytearray(5000)
        with pytest.raises(MessageTooLargeError, match=q.name):
            q.send_nowait(big)
        assert q.current_messages == 0
        view: Any = memoryview(b"still works")
        q.send_nowait(view)
        assert q.receive_nowait() == b"still works"


@unprivileged_limits
@pytest.mark.asyncio
async def test_mq_shape_beyond_sysctl_limits_is_named() -> None:
    msg_max = int((MQ_SYSCTL / "msg_max").read_text())
    msgsize_max = int((MQ_SYSCTL / "msgsize_max").read_text())

    name = unique("mq")
    with pytest.raises(ValueError, match="msg_max") as info:
        MessageQueue.create(name, max_messages=msg_max + 1, max_message_size=16)
    text = str(info.value)
    assert "msg_max" in text
    assert f"= {msg_max}" in text
    assert f"max_messages={msg_max + 1}" in text
    assert name in text

    with pytest.raises(ValueError, match="msgsize_max") as info:
        MessageQueue.open_or_create(name, max_messages=1, max_message_size=msgsize_max + 1)
    text = str(info.value)
    assert "msgsize_max" in text
    assert f"= {msgsize_max}" in text
    assert name in text
    assert not mq_file(name).exists()

    # The limits themselves are allowed.
    async with fresh_queue(max_messages=msg_max, max_message_size=16) as q:
        assert q.max_messages == msg_max
    async with fresh_queue(max_messages=1, max_message_size=msgsize_max) as q:
        assert q.max_message_size == msgsize_max


@contextlib.contextmanager
def soft_rlimit_msgqueue(soft: int) -> Any:
    """Lower this process's soft RLIMIT_MSGQUEUE for the block (the hard one stays)."""
    old = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, old)


@pytest.mark.asyncio
async def test_mq_over_rlimit_msgqueue_is_named() -> None:
    name = unique("mq")
    with soft_rlimit_msgqueue(1000), pytest.raises(IPCSystemError) as info:
        MessageQueue.create(name, max_messages=4, max_message_size=1024)
    text = str(info.value)
    assert "RLIMIT_MSGQUEUE" in text
    assert "= 1000 bytes" in text
    assert name in text
    assert "too many open files" not in text.lower()
    assert not mq_file(name).exists()
    # With the limit back, the same shape is fine.
    async with fresh_queue(max_messages=4, max_message_size=1024) as q:
        assert q.max_messages == 4


@pytest.mark.asyncio
async def test_mq_rlimit_used_up_by_other_queues_is_named() -> None:
    # One queue fits under the limit, a second one does not: the kernel counts all of
    # the user's queues against RLIMIT_MSGQUEUE.
    shape: dict[str, Any] = {"max_messages": 2, "max_message_size": 1000}
    one = 2 * (1000 + KERNEL_SLOT_OVERHEAD)
    async with fresh_queue(**shape) as first:
        name = unique("mq")
        with (
            soft_rlimit_msgqueue(one + 100),
            pytest.raises(OSError, match="RLIMIT_MSGQUEUE") as info,
        ):
            MessageQueue.create(name, **shape)
        text = str(info.value)
        assert "RLIMIT_MSGQUEUE" in text
        assert "too many open files" not in text.lower()
        assert not mq_file(name).exists()
        first.send_nowait(b"the first queue is unharmed")
        assert first.receive_nowait() == b"the first queue is unharmed"


@pytest.mark.asyncio
async def test_mq_rlimit_diagnosis_matches_kernel_accounting() -> None:
    # No other queue of ours exists; the queue alone needs `need` bytes and the limit is
    # one byte less. create() documents "over RLIMIT_MSGQUEUE (named, with the bytes
    # needed)", so the message should give the bytes this queue needs.
    shape: dict[str, Any] = {"max_messages": 10, "max_message_size": 1000}
    need = 10 * (1000 + KERNEL_SLOT_OVERHEAD)
    name = unique("mq")
    with soft_rlimit_msgqueue(need - 1), pytest.raises(IPCSystemError) as info:
        MessageQueue.create(name, **shape)
    assert not mq_file(name).exists()
    assert "needs about" in str(info.value), str(info.value)


BAD_NAMES: list[tuple[object, type[Exception], str]] = [
    ("jobs", ValueError, "starts with one '/'"),
    ("/a/b", ValueError, "no '/' after the first"),
    ("/", ValueError, "starts with one '/' and has more"),
    ("", ValueError, "starts with one '/'"),
    ("/" + "x" * 256, ValueError, "too long: at most 255 bytes"),
    ("/" + "é" * 128, ValueError, "too long: at most 255 bytes"),  # 256 bytes, 128 chars
    ("/a\0b", ValueError, "invalid"),
    ("/..", ValueError, "invalid"),
    (b"/jobs", TypeError, "is a str like '/jobs'"),
    (None, TypeError, "is a str like '/jobs'"),
]


@pytest.mark.asyncio
async def test_mq_bad_names_are_refused_clearly() -> None:
    for bad, error, text in BAD_NAMES:
        by_name: tuple[Callable[[Any], object], ...] = (
            MessageQueue.create,
            MessageQueue.open,
            MessageQueue.open_or_create,
            unlink_message_queue,
        )
        for use in by_name:
            with pytest.raises(error, match=text) as info:
                use(bad)
            assert "message queue" in str(info.value)
    # None of them got through to the kernel under some mangled name.
    entries = os.listdir("/dev/mqueue")
    assert not {"jobs", "a", "b", "..", "x" * 256} & set(entries)
    # The longest allowed name (255 bytes after the slash) works.
    longest = "/" + uuid4().hex + "y" * (255 - 32)
    q = MessageQueue.create(longest, **SMALL)
    try:
        assert mq_file(longest).exists()
    finally:
        await q.aclose()
        unlink_message_queue(longest)


@pytest.mark.asyncio
async def test_mq_open_of_a_semaphore_name_says_so() -> None:
    async with fresh_semaphore(1) as sem:
        with pytest.raises(FileNotFoundError, match="semaphore") as info:
            MessageQueue.open(sem.name)
        assert isinstance(info.value, IPCNotFoundError)
        assert sem.name in str(info.value)
    async with fresh_queue(**SMALL) as q:
        with pytest.raises(FileNotFoundError, match="message queue") as info:
            Semaphore.open(q.name)
        assert q.name in str(info.value)


@root_only
@pytest.mark.asyncio
async def test_mq_permissions_other_uid_and_direction() -> None:
    async with fresh_queue(**SMALL) as q, fresh_semaphore(3) as sem:
        q.send_nowait(b"for nobody")
        async with run_peer("as-nobody", f"mq:{q.name}", f"sem:{sem.name}") as peer:
            for name in (q.name, sem.name):
                kind, is_permission_error, text = (await peer.line()).split("|", 2)
                assert kind == "IPCPermissionError"
                assert is_permission_error == "True"
                assert name in text
                assert "permission denied" in text
            await peer.finish()
        # The mode setter really opens it up (read for others is enough to receive).
        q.mode = 0o604
        async with run_peer("as-nobody", f"mq:{q.name}") as peer:
            await peer.expect("opened for nobody")
            await peer.finish()
        assert q.current_messages == 0

    async with fresh_queue(**SMALL) as q:
        async with MessageQueue.open(q.name, read=True, write=False) as receive_only:
            with pytest.raises(IPCPermissionError, match="receive-only"):
                await receive_only.send(b"x")
            with pytest.raises(IPCPermissionError, match="receive-only"):
                receive_only.send_nowait(b"x")
        async with MessageQueue.open(q.name, read=False, write=True) as send_only:
            with pytest.raises(IPCPermissionError, match="send-only"):
                await send_only.receive()
            with pytest.raises(IPCPermissionError, match="send-only"):
                send_only.receive_nowait()
        with pytest.raises(ValueError, match="read, write or both"):
            MessageQueue.open(q.name, read=False, write=False)
        assert q.current_messages == 0


@pytest.mark.asyncio
async def test_mq_child_sends_parent_receives_in_order() -> None:
    count = 2000
    async with fresh_queue(max_messages=8, max_message_size=256) as q:
        async with run_peer("mq-send", q.name, 0, count) as peer:
            await peer.expect("ready")
            with anyio.fail_after(15):
                for i in range(count):
                    data, priority = await q.receive_message()
                    assert data == payload(i)
                    assert priority == 0
            await peer.expect("done")
            await peer.finish()
        with pytest.raises(WouldBlock):
            q.receive_nowait()


@pytest.mark.asyncio
async def test_mq_parent_sends_child_receives_in_order() -> None:
    count = 1000
    async with fresh_queue(max_messages=10, max_message_size=256) as q:
        # Ten messages of mixed priorities wait before the child starts: it must get
        # them highest priority first (oldest first within one), then the rest in order.
        early = [(payload(i), (i * 3) % 7) for i in range(10)]
        for data, priority in early:
            q.send_nowait(data, priority=priority)
        expected = sorted(early, key=lambda m: -m[1])
        expected += [(payload(i), 0) for i in range(10, count)]
        async with run_peer("mq-recv-aio", q.name, count) as peer:
            await peer.expect("ready")
            with anyio.fail_after(15):
                for i in range(10, count):
                    await q.send(payload(i))
            got = tokens_of(await peer.line())
            await peer.finish()
        assert len(got) == count
        for reported, (data, priority) in zip(got, expected, strict=True):
            assert reported == token(data, priority)
        assert q.current_messages == 0


@pytest.mark.asyncio
async def test_mq_competing_workers_share_the_messages() -> None:
    workers, count = 3, 3000
    async with fresh_queue(max_messages=10, max_message_size=256) as q:
        async with contextlib.AsyncExitStack() as stack:
            peers = [
                await stack.enter_async_context(run_peer("mq-worker", q.name))
                for _ in range(workers)
            ]
            for peer in peers:
                await peer.expect("ready")
            with anyio.fail_after(15):
                for i in range(count):
                    await q.send(payload(i))
                for _ in range(workers):
                    await q.send(b"stop")
            shares = [[int(t) for t in tokens_of(await peer.line())] for peer in peers]
            for peer in peers:
                await peer.finish()
        for share in shares:
            assert share, f"a worker got nothing: {[len(s) for s in shares]}"
            assert share == sorted(share), "one consumer of a FIFO queue saw it out of order"
        seen: set[int] = set()
        for share in shares:
            for index in share:
                assert index not in seen, f"message {index} was delivered twice"
                seen.add(index)
        assert seen == set(range(count))
        assert q.current_messages == 0


async def _receive_until_cancelled(
    q: MessageQueue, scope: anyio.CancelScope, got: list[bytes]
) -> None:
    with scope:
        while True:
            got.append(await q.receive())


async def _cancel_soon(scope: anyio.CancelScope, rng: random.Random) -> None:
    """Cancel ``scope`` after a random number of scheduling points, or at a random moment."""
    if rng.random() < 0.5:
        for _ in range(rng.randrange(6)):
            await checkpoint()
        scope.cancel()
    else:
        scope.deadline = anyio.current_time() + rng.uniform(0, 0.0003)


@pytest.mark.asyncio
async def test_mq_cancelled_receives_lose_nothing_from_a_sending_process() -> None:
    total = 5000
    rng = random.Random(20240501)
    async with fresh_queue(max_messages=8, max_message_size=256) as q:
        async with run_peer("mq-send", q.name, 0, total) as peer:
            await peer.expect("ready")
            expected = cancellations = 0
            with anyio.fail_after(20):
                while expected < total:
                    got: list[bytes] = []
                    scope = anyio.CancelScope()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_receive_until_cancelled, q, scope, got)
                        await _cancel_soon(scope, rng)
                    cancellations += scope.cancelled_caught
                    for data in got:
                        assert data == payload(expected), f"after {cancellations} cancellations"
                        expected += 1
            await peer.expect("done")
            await peer.finish()
        assert cancellations > 100, "too few cancellations to mean anything"
        with pytest.raises(WouldBlock):
            q.receive_nowait()


class _NumberedSender:
    """Sends numbered messages; remembers which sends completed."""

    def __init__(self, q: MessageQueue, total: int) -> None:
        self.q = q
        self.total = total
        self.next = 0
        self.sent: list[int] = []

    async def run(self, scope: anyio.CancelScope) -> None:
        with scope:
            while self.next < self.total:
                n = self.next
                self.next += 1  # a cancelled attempt's number is never used again
                await self.q.send(payload(n))
                self.sent.append(n)


@pytest.mark.asyncio
async def test_mq_cancelled_sends_enqueue_nothing() -> None:
    total = 3000
    rng = random.Random(77)
    async with fresh_queue(max_messages=3, max_message_size=256) as q:
        sender = _NumberedSender(q, total)
        async with run_peer("mq-recv", q.name, "end") as peer:
            await peer.expect("ready")
            cancellations = 0
            with anyio.fail_after(20):
                while sender.next < total:
                    scope = anyio.CancelScope()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(sender.run, scope)
                        await _cancel_soon(scope, rng)
                    cancellations += scope.cancelled_caught
                await q.send(b"end")
            got = tokens_of(await peer.line())
            await peer.finish()
        assert cancellations > 50, "too few cancellations to mean anything"
        assert len(got) == len(sender.sent), (
            f"{len(got)} messages arrived, {len(sender.sent)} of {total} sends completed "
            f"({cancellations} cancellations)"
        )
        for reported, n in zip(got, sender.sent, strict=True):
            assert reported == token(payload(n), 0)


@pytest.mark.asyncio
async def test_mq_aclose_wakes_waiting_tasks_and_later_calls_fail() -> None:
    async with (
        fresh_queue(**SMALL) as empty,
        fresh_queue(max_messages=1, max_message_size=16) as full,
    ):
        full.send_nowait(b"occupant")
        rx = MessageQueue.open(empty.name, write=False)
        tx = MessageQueue.open(full.name, read=False)
        try:
            # One task per direction waits on the fd (a second one would be refused as
            # busy: see test_mq_second_concurrent_*).
            outcomes = [Outcome() for _ in range(2)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(capture, outcomes[0], rx.receive_message)
                tg.start_soon(capture, outcomes[1], lambda: tx.send(b"b", priority=9))
                await anyio.wait_all_tasks_blocked()
                assert not any(o.finished.is_set() for o in outcomes)
                await rx.aclose()
                await tx.aclose()
                await finished(outcomes, 1)
            for outcome in outcomes:
                assert isinstance(outcome.error, ClosedResourceError), outcome
        finally:
            await rx.aclose()
            await tx.aclose()
        # Closing a handle leaves the queue: nothing was sent, the occupant is there.
        assert full.current_messages == 1
        assert full.receive_nowait() == b"occupant"

        calls: list[Callable[[], object]] = [
            lambda: tx.send_nowait(b"x"),
            tx.receive_nowait,
            tx.receive_message_nowait,
            lambda: tx.current_messages,
            lambda: tx.mode,
            lambda: tx.uid,
            lambda: rx.receive_nowait(),
        ]
        for call in calls:
            with pytest.raises(ClosedResourceError, match="closed"):
                call()
        for acall in (lambda: tx.send(b"x"), rx.receive, rx.receive_message):
            with pytest.raises(ClosedResourceError):
                await acall()
        with pytest.raises(ClosedResourceError):
            async for _ in rx:
                pass
        await rx.aclose()  # a second aclose is fine
        assert "closed" in repr(rx)
        with pytest.raises(NotImplementedError, match="no end of stream"):
            await empty.send_eof()


@pytest.mark.asyncio
async def test_mq_second_concurrent_receive_on_one_handle_is_busy() -> None:
    # The one concurrency rule of every channel (docs/channels.md): a second receive
    # while another task's receive waits raises; the first still gets its message.
    async with fresh_queue(**SMALL) as q:
        first = Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture, first, q.receive_message)
            await anyio.wait_all_tasks_blocked()
            for second in (q.receive, q.receive_message):
                with anyio.fail_after(5), pytest.raises(BusyResourceError):
                    await second()
            async with MessageQueue.open(q.name) as other:
                other.send_nowait(b"for the first", priority=3)
                other.send_nowait(b"for the next")
            await finished([first], 5)
        assert first.error is None
        assert first.value == (b"for the first", 3)
        # The refused calls took nothing: the second message is still there, alone.
        assert q.receive_message_nowait() == (b"for the next", 0)
        with pytest.raises(WouldBlock):
            q.receive_nowait()


@pytest.mark.asyncio
async def test_mq_second_concurrent_send_on_one_handle_is_busy() -> None:
    async with fresh_queue(max_messages=1, max_message_size=64) as q:
        q.send_nowait(b"fills the queue")
        first = Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture, first, lambda: q.send(b"waits for room", priority=1))
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5), pytest.raises(BusyResourceError):
                await q.send(b"refused")
            assert q.receive_message_nowait() == (b"fills the queue", 0)  # room for one
            await finished([first], 5)
        assert first.error is None
        # The waiting send got its turn; the refused one enqueued nothing.
        assert q.receive_message_nowait() == (b"waits for room", 1)
        with pytest.raises(WouldBlock):
            q.receive_nowait()


# The Channel contract, the busy rule and pacing: tests/test_conformance.py (posix-mq).


# =========================================================================== trio


async def _send_numbers(q: MessageQueue, count: int) -> None:
    for i in range(count):
        await q.send(payload(i))


async def _trio_main() -> None:
    async with fresh_queue(max_messages=2, max_message_size=256) as q:
        # receive waits on an empty queue until another handle sends
        async with anyio.create_task_group() as tg:
            got = Outcome()
            tg.start_soon(capture, got, q.receive_message)
            await anyio.wait_all_tasks_blocked()
            assert not got.finished.is_set()
            async with MessageQueue.open(q.name, read=False) as other:
                other.send_nowait(b"hello trio", priority=5)
            await finished([got], 5)
        assert got.value == (b"hello trio", 5)
        # send waits on a full queue until a receiver takes one
        q.send_nowait(b"1")
        q.send_nowait(b"2")
        async with anyio.create_task_group() as tg:
            third = Outcome()
            tg.start_soon(capture, third, lambda: q.send(b"3"))
            await anyio.wait_all_tasks_blocked()
            assert not third.finished.is_set()
            assert q.receive_nowait() == b"1"
            await finished([third], 5)
        assert third.error is None
        assert [q.receive_nowait(), await q.receive()] == [b"2", b"3"]
        # Cancelled receives lose nothing while another task fills the queue.
        rng = random.Random(3)
        async with (
            MessageQueue.open(q.name, read=False) as feeder,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_send_numbers, feeder, 500)
            expected = 0
            while expected < 500:
                got_now: list[bytes] = []
                scope = anyio.CancelScope()
                async with anyio.create_task_group() as inner:
                    inner.start_soon(_receive_until_cancelled, q, scope, got_now)
                    await _cancel_soon(scope, rng)
                for data in got_now:
                    assert data == payload(expected)
                    expected += 1
        assert q.current_messages == 0
        # aclose wakes a waiting receive
        async with MessageQueue.open(q.name) as doomed:
            async with anyio.create_task_group() as tg:
                waiting = Outcome()
                tg.start_soon(capture, waiting, doomed.receive)
                await anyio.wait_all_tasks_blocked()
                await doomed.aclose()
                await finished([waiting], 1)
            assert isinstance(waiting.error, ClosedResourceError)

    async with fresh_semaphore(0) as sem, opened_semaphore(sem.name) as other:
        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await sem.acquire()
        assert sem.value == 0
        async with anyio.create_task_group() as tg:
            acquired = Outcome()
            tg.start_soon(capture, acquired, sem.acquire)
            await anyio.wait_all_tasks_blocked()
            other.release()
            await finished([acquired], 5)
        assert acquired.error is None
        assert sem.value == 0
        async with anyio.create_task_group() as tg:
            closing = Outcome()
            tg.start_soon(capture, closing, other.acquire)
            await anyio.wait_all_tasks_blocked()
            await other.aclose()
            await finished([closing], 1)
        assert isinstance(closing.error, ClosedResourceError)


def test_posix_queue_and_semaphore_on_trio() -> None:
    anyio.run(_trio_main, backend="trio")


# =========================================================================== semaphores


@pytest.mark.asyncio
async def test_sem_lifecycle_values_and_errors() -> None:
    name = unique("sem")
    with pytest.raises(IPCNotFoundError, match=name) as not_found:
        Semaphore.open(name)
    assert isinstance(not_found.value, FileNotFoundError)

    sem = Semaphore.create(name, 2)
    try:
        assert sem.name == name
        assert name in repr(sem)
        assert sem.value == 2
        assert stat.S_IMODE(sem_file(name).stat().st_mode) == 0o600
        with pytest.raises(IPCExistsError, match=name) as exists:
            Semaphore.create(name)
        assert isinstance(exists.value, FileExistsError)

        sem.acquire_nowait()
        await sem.acquire()
        assert sem.value == 0
        with pytest.raises(WouldBlock):
            sem.acquire_nowait()
        sem.release()
        assert sem.value == 1
        async with sem:
            assert sem.value == 0
        assert sem.value == 1

        async with opened_semaphore(name) as second:
            assert second.value == 1
            second.acquire_nowait()
            assert sem.value == 0
            second.release()
        # open_or_create of an existing semaphore keeps its value.
        existing = Semaphore.open_or_create(name, 5)
        try:
            assert existing.value == 1
        finally:
            await existing.aclose()

        # unlink: the name goes, the open handle keeps working.
        sem.unlink()
        assert not sem_file(name).exists()
        with pytest.raises(IPCNotFoundError, match=name):
            Semaphore.open(name)
        with pytest.raises(FileNotFoundError, match=name):
            sem.unlink()
        sem.release()
        assert sem.value == 2
        new = Semaphore.open_or_create(name, 7)
        try:
            assert new.value == 7
            assert sem.value == 2
        finally:
            await new.aclose()
            unlink_semaphore(name)
        with pytest.raises(IPCNotFoundError, match=name):
            unlink_semaphore(name)
    finally:
        await sem.aclose()
        with contextlib.suppress(FileNotFoundError):
            unlink_semaphore(name)

    # After aclose every call says so.
    for call in (lambda: sem.value, sem.acquire_nowait, sem.release):
        with pytest.raises(ClosedResourceError, match="closed"):
            call()
    with pytest.raises(ClosedResourceError):
        await sem.acquire()
    await sem.aclose()  # a second aclose is fine

    # Values out of range, and the SEM_VALUE_MAX ceiling on release.
    bad_value: Any
    value_error: type[Exception]
    for bad_value, value_error in (
        (-1, ValueError),
        (VALUE_MAX + 1, ValueError),
        (True, TypeError),
    ):
        with pytest.raises(value_error, match="value"):
            Semaphore.create(unique("sem"), bad_value)
    async with fresh_semaphore(VALUE_MAX) as full:
        assert full.value == VALUE_MAX
        with pytest.raises(ValueError, match="SEM_VALUE_MAX"):
            full.release()
        assert full.value == VALUE_MAX

    # Names: the same rules as queues, but "sem." takes 4 of the 255 bytes.
    for bad, error, text in BAD_NAMES:
        if "too long" in text:
            text = "too long: at most 251 bytes"
        by_name: tuple[Callable[[Any], object], ...] = (
            Semaphore.create,
            Semaphore.open,
            Semaphore.open_or_create,
            unlink_semaphore,
        )
        for use in by_name:
            with pytest.raises(error, match=text) as info:
                use(bad)
            assert "semaphore" in str(info.value)
    with pytest.raises(ValueError, match="at most 251 bytes"):
        Semaphore.create("/" + "z" * 252)
    longest = "/" + uuid4().hex + "z" * (251 - 32)
    sem = Semaphore.create(longest, 0)
    try:
        assert sem_file(longest).exists()
    finally:
        await sem.aclose()
        unlink_semaphore(longest)


@pytest.mark.asyncio
async def test_sem_ping_pong_with_a_child_process() -> None:
    rounds = 200
    async with fresh_semaphore(0) as ping, fresh_semaphore(0) as pong:
        async with run_peer("sem-pingpong", ping.name, pong.name, rounds) as peer:
            await peer.expect("ready")
            with anyio.fail_after(15):
                for i in range(rounds):
                    ping.release()
                    await pong.acquire()
                    # The child took our ping before it gave the pong back.
                    assert (ping.value, pong.value) == (0, 0), f"round {i}"
            await peer.expect(f"done {rounds}")
            await peer.finish()
        assert (ping.value, pong.value) == (0, 0)


@pytest.mark.asyncio
async def test_sem_timed_wait_leaks_no_permit() -> None:
    async with fresh_semaphore(0) as sem, opened_semaphore(sem.name) as other:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(TimeoutError), anyio.fail_after(0.1):
                await sem.acquire()
            assert time.monotonic() - started < 1
            assert sem.value == 0
            # The cancelled sem_wait is over: a permit given now is not taken by it.
            other.release()
            assert sem.value == 1
            sem.acquire_nowait()
        # A timed wait that succeeds in time takes exactly one permit.
        async with anyio.create_task_group() as tg:
            outcome = Outcome()
            tg.start_soon(capture, outcome, sem.acquire)
            await anyio.wait_all_tasks_blocked()
            other.release()
            other.release()
            await finished([outcome], 5)
        assert outcome.error is None
        assert sem.value == 1


async def _hammer(
    sem: Semaphore, rng: random.Random, counts: dict[str, int], stop: anyio.Event
) -> None:
    while not stop.is_set():
        with anyio.CancelScope() as scope:
            scope.deadline = anyio.current_time() + rng.uniform(0, 0.002)
            await sem.acquire()
            counts["acquired"] += 1
        if scope.cancelled_caught:
            counts["cancelled"] += 1


@pytest.mark.asyncio
async def test_sem_cancelled_acquires_leak_no_permit() -> None:
    permits = 1000
    counts = {"acquired": 0, "cancelled": 0}
    stop = anyio.Event()
    async with fresh_semaphore(0) as sem, opened_semaphore(sem.name) as second:
        async with run_peer("sem-release", sem.name, permits) as peer:
            await peer.expect("ready")
            async with anyio.create_task_group() as tg:
                for i, handle in enumerate((sem, sem, second, second)):
                    tg.start_soon(_hammer, handle, random.Random(i), counts, stop)
                await peer.expect("done")
                stop.set()
                # The hammers' last acquires get cancelled wherever they are.
                tg.cancel_scope.cancel()
            await peer.finish()
        assert counts["acquired"] > 0
        assert counts["cancelled"] > 0
        assert counts["acquired"] + sem.value == permits, counts


@pytest.mark.asyncio
async def test_sem_aclose_wakes_a_waiter_queued_for_a_worker_thread() -> None:
    limiter = aioipc.worker_limiter()
    tokens = limiter.total_tokens
    limiter.total_tokens = 1  # this event loop's limiter only
    try:
        async with fresh_semaphore(0) as a, fresh_semaphore(0) as b:
            holder, queued = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(capture, holder, a.acquire)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(capture, queued, b.acquire)
                await anyio.wait_all_tasks_blocked()
                try:
                    await b.aclose()
                    await finished([queued], 1)
                finally:
                    tg.cancel_scope.cancel()
            assert isinstance(queued.error, ClosedResourceError), queued
    finally:
        limiter.total_tokens = tokens


@pytest.mark.asyncio
async def test_sem_aclose_wakes_waiters_and_threads_exit() -> None:
    await aioipc_threads_gone(2)
    baseline = thread_count()
    async with fresh_semaphore(0) as keeper:
        a = Semaphore.open(keeper.name)
        b = Semaphore.open(keeper.name)
        try:
            on_a = [Outcome() for _ in range(3)]
            on_b = [Outcome() for _ in range(2)]
            async with anyio.create_task_group() as tg:
                for outcome in on_a:
                    tg.start_soon(capture, outcome, a.acquire)
                for outcome in on_b:
                    tg.start_soon(capture, outcome, b.acquire)
                await anyio.wait_all_tasks_blocked()
                assert thread_count() > baseline  # sem_wait runs on worker threads
                started = time.monotonic()
                await a.aclose()
                await finished(on_a, 1)
                assert time.monotonic() - started < 1
                for outcome in on_a:
                    assert isinstance(outcome.error, ClosedResourceError), outcome
                # The other handle's waiters are untouched and still get permits.
                assert not any(o.finished.is_set() for o in on_b)
                keeper.release()
                keeper.release()
                await finished(on_b, 5)
            for outcome in on_b:
                assert outcome.error is None
            assert keeper.value == 0
        finally:
            await a.aclose()
            await b.aclose()
    with anyio.fail_after(1.5):
        while thread_count() > baseline:  # noqa: ASYNC110 (a thread's exit has no event)
            await anyio.sleep(0.01)


# ==========================================================================================
# Regressions: POSIX queues and semaphores
# Regression tests moved from tests/test_regressions.py (issue 11): bugs found in review,
# kept next to the mechanism they guard. Each names, in its first line, the bug it guards.
# ==========================================================================================


@pytest.mark.asyncio
async def test_posix_objects_get_the_asked_mode_whatever_the_umask() -> None:
    """mq_open and sem_open apply the umask; aioipc promises the mode it was given (as
    its FIFOs do), so a peer in the group the caller opened it to can use it."""
    name = f"/aioipc-umask-{os.getpid()}"
    old = os.umask(0o077)
    try:
        q = aioipc.posix.MessageQueue.create(name, mode=0o640)
        try:
            assert q.mode == 0o640
            assert os.stat(f"/dev/mqueue{name}").st_mode & 0o777 == 0o640
        finally:
            q.unlink()
            await q.aclose()
        s = aioipc.posix.Semaphore.create(name, 0, mode=0o660)
        try:
            assert os.stat(f"/dev/shm/sem.{name[1:]}").st_mode & 0o777 == 0o660
        finally:
            s.unlink()
            await s.aclose()
    finally:
        os.umask(old)
