"""System V message queues (aioipc.sysv.MessageQueue) on real kernel queues and processes.

Every queue a test creates is removed in a ``finally`` (the session fixture fails the run
on a leaked System V object). Child processes are tests/peers/sysv_peer.py, driven by
lines on stdin/stdout, or a multiprocessing "spawn" child; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import random
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import sysv_ipc
from anyio import BrokenResourceError, ClosedResourceError, WouldBlock

import aioipc
import aioipc._core.libc
from aioipc import IPCAttribute, IPCExistsError, IPCNotFoundError, MessageTooLargeError
from aioipc.sysv import MessageQueue, SemaphoreSet

from ._peer import spawn
from .conftest import thread_count

HERE = Path(__file__).parent
PEER = [sys.executable, str(HERE / "peers" / "sysv_peer.py")]
MSGMAX = int(Path("/proc/sys/kernel/msgmax").read_text())
MSGMNB = int(Path("/proc/sys/kernel/msgmnb").read_text())
NOBODY = 65534


def num(i: int) -> bytes:
    """The numbered message every peer and test agree on."""
    return b"%d" % i


def proc_row(qid: int) -> dict[str, str] | None:
    """The queue's line of /proc/sysvipc/msg as {column: value}, None if it is gone."""
    lines = Path("/proc/sysvipc/msg").read_text().splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        fields = line.split()
        if fields and int(fields[1]) == qid:
            return dict(zip(header, fields, strict=True))
    return None


def row_of(qid: int) -> dict[str, str]:
    row = proc_row(qid)
    assert row is not None, f"queue {qid} is not in /proc/sysvipc/msg"
    return row


def key_file(tmp_path: Path, name: str = "keyfile") -> Path:
    path = tmp_path / name
    path.write_text("a file to ftok\n")
    return path


def remove_quietly(q: MessageQueue) -> None:
    """Remove the queue if it still exists (works on a closed handle too)."""
    with contextlib.suppress(BrokenResourceError):
        q.remove()


@contextlib.asynccontextmanager
async def new_queue(
    key: int = aioipc.IPC_PRIVATE, **options: object
) -> AsyncIterator[MessageQueue]:
    """A fresh queue, closed and removed on the way out whatever happens."""
    q = MessageQueue.create(key, **options)  # type: ignore[arg-type]
    try:
        yield q
    finally:
        await q.aclose()
        remove_quietly(q)


class Outcome:
    """What a call run in another task did."""

    def __init__(self) -> None:
        self.value: object = None
        self.error: BaseException | None = None
        self.done = anyio.Event()

    async def run(self, call: Callable[[], Awaitable[object]]) -> None:
        try:
            self.value = await call()
        except Exception as exc:
            self.error = exc
        self.done.set()


async def wait_all(outcomes: list[Outcome], seconds: float) -> None:
    with anyio.fail_after(seconds):
        for outcome in outcomes:
            await outcome.done.wait()


# ------------------------------------------------------------------------------ lifecycle


@pytest.mark.asyncio
async def test_private_queue_defaults_attributes_and_remove_on_close() -> None:
    q = MessageQueue.create()
    qid = q.id
    try:
        assert q.key == aioipc.IPC_PRIVATE
        assert q.mode == 0o600
        row = proc_row(qid)
        assert row is not None
        assert int(row["perms"], 8) & 0o777 == 0o600
        assert (q.uid, q.gid, q.cuid, q.cgid) == (os.getuid(), os.getgid()) * 2
        assert (q.current_messages, q.current_bytes) == (0, 0)
        assert (q.last_send_pid, q.last_receive_pid) == (0, 0)
        assert q.last_send_time is None
        assert q.last_receive_time is None
        assert q.max_bytes == MSGMNB
        assert q.max_message_size == MSGMAX
        assert (q.send_type, q.receive_type) == (1, 0)
        assert q.extra(IPCAttribute.mechanism) == "sysv-mq"
        assert q.extra(IPCAttribute.ipc_id) == qid
        assert q.extra(IPCAttribute.key) == 0
        assert q.extra(IPCAttribute.framed) is False
        assert q.extra(IPCAttribute.max_message_size) == MSGMAX
        assert f"id={qid}" in repr(q)

        started = time.time()
        await q.send(b"one")
        await q.send(b"three", type=3)
        assert (q.current_messages, q.current_bytes) == (2, 8)
        assert q.last_send_pid == os.getpid()
        stime = q.last_send_time
        assert stime is not None
        # Whole seconds since the epoch, from the kernel's coarse clock, which can be a
        # tick behind time.time() just after a second begins: one second of slack.
        assert int(started) - 1 <= stime <= time.time() + 1
        assert int(row_of(qid)["qnum"]) == 2
        assert await q.receive() == b"one"
        assert q.last_receive_pid == os.getpid()
        assert q.last_receive_time is not None
        assert (q.current_messages, q.current_bytes) == (1, 5)

        q.mode = 0o640
        assert q.mode == 0o640
        assert int(row_of(qid)["perms"], 8) & 0o777 == 0o640
        q.max_bytes = 1000
        assert q.max_bytes == 1000
        with pytest.raises(ValueError, match="max_bytes"):
            q.max_bytes = 0
        q.uid = NOBODY
        q.gid = NOBODY
        assert (q.uid, q.gid) == (NOBODY, NOBODY)
        assert (q.cuid, q.cgid) == (os.getuid(), os.getgid())  # the creator stays
        row = proc_row(qid)
        assert row is not None
        assert (int(row["uid"]), int(row["cuid"])) == (NOBODY, os.getuid())
    finally:
        await q.aclose()
    # IPC_PRIVATE: the creating handle owns the queue, so aclose removed it.
    assert proc_row(qid) is None
    assert "closed" in repr(q)
    with pytest.raises(ClosedResourceError):
        _ = q.mode
    with pytest.raises(IPCNotFoundError):
        MessageQueue.from_id(qid)


@pytest.mark.asyncio
async def test_private_queue_is_under_no_key() -> None:
    async with new_queue() as q:
        row = proc_row(q.id)
        assert row is not None
        key = int(row["key"])
        if key != 0:
            # The damage: anyone can find it by that key, and nobody else can create it.
            async with MessageQueue.open(key) as found:
                assert found.id == q.id
            with pytest.raises(IPCExistsError):
                MessageQueue.create(key)
        assert key == 0, f"the private queue {q.id} is under key {key:#x}"


@pytest.mark.asyncio
async def test_private_queue_kept_when_remove_on_close_is_false() -> None:
    q = MessageQueue.create(remove_on_close=False)
    try:
        await q.send(b"survives the handle")
        await q.aclose()
        assert proc_row(q.id) is not None
        async with MessageQueue.from_id(q.id) as again:
            assert again.receive_nowait() == b"survives the handle"
    finally:
        await q.aclose()
        remove_quietly(q)
    assert proc_row(q.id) is None


@pytest.mark.asyncio
async def test_keyed_create_exclusive_open_and_open_or_create(tmp_path: Path) -> None:
    key = aioipc.ftok(key_file(tmp_path), 42)
    assert key > 0
    q = MessageQueue.create(key)
    try:
        assert q.key == key
        row = proc_row(q.id)
        assert row is not None
        assert int(row["key"]) == key
        with pytest.raises(IPCExistsError) as info:
            MessageQueue.create(key)
        assert isinstance(info.value, FileExistsError)
        assert f"{key:#010x}" in str(info.value)

        async with MessageQueue.open(key) as opened:
            assert opened.id == q.id
            await opened.send(b"through the opened handle")
        async with MessageQueue.open_or_create(key, mode=0o666) as either:
            assert either.id == q.id  # it existed: opened, mode untouched
            assert either.mode == 0o600
            assert either.receive_nowait() == b"through the opened handle"

        q.remove()
        assert proc_row(q.id) is None
        with pytest.raises(BrokenResourceError, match="removed"):
            q.remove()
        with pytest.raises(IPCNotFoundError) as missing:
            MessageQueue.open(key)
        assert isinstance(missing.value, FileNotFoundError)
        assert "does not exist" in str(missing.value)
    finally:
        await q.aclose()
        remove_quietly(q)

    created = MessageQueue.open_or_create(key, mode=0o640, max_bytes=512)
    try:
        assert created.id != q.id
        assert created.mode == 0o640
        assert created.max_bytes == 512
        await created.aclose()
        # A keyed queue outlives its handles: remove_on_close defaults to False.
        assert proc_row(created.id) is not None
    finally:
        await created.aclose()
        remove_quietly(created)


@pytest.mark.asyncio
async def test_negative_key_from_ftok_and_its_unsigned_spelling(tmp_path: Path) -> None:
    key = aioipc.ftok(key_file(tmp_path), 200)
    assert key < 0  # a signed key_t, as C's ftok returns it
    async with new_queue(key) as q:
        async with MessageQueue.open(key & 0xFFFFFFFF) as unsigned:
            assert unsigned.id == q.id
        row = proc_row(q.id)
        assert row is not None
        assert int(row["key"]) == key


def queue_ids_with_mode(mode: int) -> set[int]:
    rows = Path("/proc/sysvipc/msg").read_text().splitlines()[1:]
    return {int(f[1]) for f in map(str.split, rows) if f and int(f[2], 8) & 0o777 == mode}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"send_type": 0},
            id="send_type=0",
        ),
        pytest.param(
            {"receive_type": True},
            id="receive_type=True",
        ),
        pytest.param(
            {"max_bytes": 0},
            id="max_bytes=0",
        ),
    ],
)
def test_create_with_a_bad_option_leaves_nothing_behind(options: dict[str, int]) -> None:
    mode = 0o452  # unusual, to tell a queue leaked here from other processes' queues
    before = queue_ids_with_mode(mode)
    unraisable: list[object] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with pytest.raises((ValueError, TypeError)):
                MessageQueue.create(mode=mode, **options)  # type: ignore[arg-type]
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
        leaked = queue_ids_with_mode(mode) - before
        for qid in leaked:
            with contextlib.suppress(OSError):
                aioipc._core.libc.msgctl(qid, aioipc._core.libc.IPC_RMID)
    assert not leaked, f"create({options}) left queue(s) {leaked} behind"
    assert not unraisable, [getattr(u, "exc_value", u) for u in unraisable]
    assert not [w for w in warned if issubclass(w.category, ResourceWarning)]


def forget(handles: list[MessageQueue]) -> None:
    """Drop the last references to ``handles`` (unclosed) and collect them."""
    handles.clear()
    gc.collect()


@pytest.mark.asyncio
async def test_unclosed_handle_warns_and_a_private_owner_removes_its_queue() -> None:
    owner = MessageQueue.create()
    qid = owner.id
    try:
        handles = [MessageQueue.from_id(qid)]
        with pytest.warns(ResourceWarning, match="unclosed"):
            forget(handles)
        assert proc_row(qid) is not None  # a handle that does not own it leaves it
        handles = [owner]
        del owner
        with pytest.warns(ResourceWarning, match="unclosed"):
            forget(handles)
        assert proc_row(qid) is None  # the owner removes it even when collected
    finally:
        if proc_row(qid) is not None:
            async with MessageQueue.from_id(qid) as leftover:
                leftover.remove()


def test_keys_out_of_range_and_ipc_private_open() -> None:
    for bad in (2**32, -(2**31) - 1):
        with pytest.raises(ValueError, match="out of range"):
            MessageQueue.create(bad)
        with pytest.raises(ValueError, match="out of range"):
            MessageQueue.open(bad)
        with pytest.raises(ValueError, match="out of range"):
            MessageQueue.open_or_create(bad)
    with pytest.raises(ValueError, match="IPC_PRIVATE"):
        MessageQueue.open(aioipc.IPC_PRIVATE)
    with pytest.raises(ValueError, match="IPC_PRIVATE"):
        MessageQueue.open_or_create(aioipc.IPC_PRIVATE)
    with pytest.raises(TypeError):
        MessageQueue.open("1234")  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("proj_id", [42, 200])
async def test_open_a_key_that_belongs_to_a_semaphore_set(tmp_path: Path, proj_id: int) -> None:
    key = aioipc.ftok(key_file(tmp_path), proj_id)
    sem = SemaphoreSet.create(key)
    try:
        with pytest.raises(FileNotFoundError, match="semaphore set") as info:
            MessageQueue.open(key)
        assert isinstance(info.value, IPCNotFoundError)
    finally:
        sem.remove()
        await sem.aclose()


@pytest.mark.asyncio
async def test_last_send_pid_is_the_child_that_sent() -> None:
    async with new_queue() as q, spawn([*PEER, "send", str(q.id), "0", "3"]) as peer:
        await peer.expect("done")
        assert q.last_send_pid == peer.pid
        assert q.current_messages == 3
        assert q.last_send_time is not None
        for i in range(3):
            assert q.receive_nowait() == num(i)
        assert q.last_receive_pid == os.getpid()
        await peer.finish()


# ------------------------------------------------------------------------- typed messages


@pytest.mark.asyncio
async def test_type_selectors() -> None:
    async with new_queue() as q:
        for mtype, data in [(3, b"3a"), (1, b"1"), (2, b"2"), (3, b"3b"), (5, b"5")]:
            await q.send(data, type=mtype)
        assert await q.receive_message(3) == (3, b"3a")  # first of type 3
        assert await q.receive_message(-2) == (1, b"1")  # lowest type <= 2
        assert await q.receive_message(3, except_type=True) == (2, b"2")  # first not 3
        assert await q.receive_message(0) == (3, b"3b")  # first of any type
        with pytest.raises(WouldBlock):
            q.receive_message_nowait(-4)  # only type 5 is left
        with pytest.raises(WouldBlock):
            q.receive_message_nowait(5, except_type=True)
        assert await q.receive(type=5) == b"5"

        # t < 0 takes the lowest type first, whatever the order they were sent in.
        for mtype in (4, 2, 9, 3, 2):
            q.send_nowait(b"type %d" % mtype, type=mtype)
        got = [q.receive_message_nowait(-5) for _ in range(4)]
        assert got == [(2, b"type 2"), (2, b"type 2"), (3, b"type 3"), (4, b"type 4")]
        assert q.receive_message_nowait(-9) == (9, b"type 9")


@pytest.mark.asyncio
@pytest.mark.parametrize("keyed", [False, True], ids=["private", "keyed"])
async def test_types_beyond_a_c_int(tmp_path: Path, keyed: bool) -> None:
    """A type is a C long: those around INT_MAX and up to LONG_MAX go through whole, on
    the handle that created the queue and on one made from its id."""
    key = aioipc.ftok(key_file(tmp_path), 9) if keyed else aioipc.IPC_PRIVATE
    types = [2**31 - 1, 2**31, 2**32 + 5, 2**63 - 1]
    async with (
        new_queue(key, send_type=2**31) as q,
        MessageQueue.from_id(q.id, send_type=2**40, receive_type=-(2**40)) as other,
    ):
        for t in types:
            await q.send(b"%d" % t, type=t)
            other.send_nowait(b"again %d" % t, type=t)
        await q.send(b"default type")
        await other.send(b"other's default")
        for t in types:
            assert await other.receive_message(t) == (t, b"%d" % t)
            assert q.receive_message_nowait(t) == (t, b"again %d" % t)
        assert q.receive_message_nowait(-(2**31)) == (2**31, b"default type")
        assert await other.receive() == b"other's default"
        assert q.current_messages == 0


@pytest.mark.asyncio
async def test_selectors_on_the_wait_path() -> None:
    """A waiting receive with a selector takes only its type; others stay queued. Two
    receives wait at once through two handles (one handle receives in one task)."""
    async with (
        new_queue() as q,
        MessageQueue.from_id(q.id) as other,
        anyio.create_task_group() as tg,
    ):
        only_seven, not_seven, lowest = Outcome(), Outcome(), Outcome()
        tg.start_soon(only_seven.run, lambda: q.receive_message(7))
        await anyio.wait_all_tasks_blocked()
        await q.send(b"for anyone", type=2)
        await q.send(b"seven", type=7)
        await wait_all([only_seven], 5)
        assert only_seven.value == (7, b"seven")
        assert q.receive_message_nowait() == (2, b"for anyone")

        tg.start_soon(not_seven.run, lambda: q.receive_message(7, except_type=True))
        tg.start_soon(lowest.run, lambda: other.receive_message(-3))
        await anyio.wait_all_tasks_blocked()
        await q.send(b"seven again", type=7)
        await q.send(b"eight", type=8)
        await wait_all([not_seven], 5)
        assert not_seven.value == (8, b"eight")
        assert not lowest.done.is_set()
        await q.send(b"three", type=3)
        await wait_all([lowest], 5)
        assert lowest.value == (3, b"three")
        assert q.receive_message_nowait() == (7, b"seven again")


@pytest.mark.asyncio
async def test_truncate_and_too_long_for_max_size() -> None:
    async with new_queue() as q:
        data = bytes(range(100))
        await q.send(data, type=4)
        with pytest.raises(MessageTooLargeError, match="truncate=True") as info:
            await q.receive(max_size=10)
        assert info.value.limit == 10
        with pytest.raises(MessageTooLargeError):
            q.receive_nowait(max_size=99)
        assert q.current_messages == 1  # still queued, whole
        assert q.receive_message_nowait(max_size=100) == (4, data)

        await q.send(data)
        assert await q.receive(truncate=True, max_size=10) == data[:10]
        assert q.current_messages == 0  # the rest was discarded with it
        await q.send(data)
        assert q.receive_nowait(truncate=True, max_size=0) == b""
        with pytest.raises(ValueError, match="max_size"):
            q.receive_nowait(max_size=MSGMAX + 1)
        with pytest.raises(ValueError, match="max_size"):
            await q.receive(max_size=-1)

        # The same on the wait path: the worker's msgrcv reports it (two handles: one
        # receive waits per handle).
        async with MessageQueue.from_id(q.id) as other, anyio.create_task_group() as tg:
            cut, refused = Outcome(), Outcome()
            tg.start_soon(cut.run, lambda: q.receive(type=1, truncate=True, max_size=3))
            tg.start_soon(refused.run, lambda: other.receive(type=2, max_size=3))
            await anyio.wait_all_tasks_blocked()
            await q.send(b"abcdef", type=1)
            await q.send(b"ghijkl", type=2)
            await wait_all([cut, refused], 5)
        assert cut.value == b"abc"
        assert isinstance(refused.error, MessageTooLargeError)
        assert q.receive_message_nowait() == (2, b"ghijkl")


@pytest.mark.asyncio
async def test_two_way_channel_over_one_queue() -> None:
    async with (
        new_queue(send_type=1, receive_type=2) as a,
        MessageQueue.from_id(a.id, send_type=2, receive_type=1) as b,
    ):
        assert (a.send_type, a.receive_type, b.send_type, b.receive_type) == (1, 2, 2, 1)
        count = 300

        async def talk(me: MessageQueue, name: bytes) -> None:
            for i in range(count):
                await me.send(name + num(i))

        async with anyio.create_task_group() as tg:
            tg.start_soon(talk, a, b"a")
            tg.start_soon(talk, b, b"b")
            with anyio.fail_after(10):
                for i in range(count):
                    # Each end only ever sees the other's messages, in order.
                    assert await b.receive() == b"a" + num(i)
                    assert await a.receive() == b"b" + num(i)
        assert a.current_messages == 0
        # An explicit type overrides the handle's default.
        await a.send(b"to myself", type=2)
        assert await a.receive() == b"to myself"


# ---------------------------------------------------------------------------- bad input


@pytest.mark.asyncio
async def test_bad_types_and_payloads() -> None:
    async with new_queue() as q:
        for bad_type in (0, -1, 2**63):
            with pytest.raises(ValueError, match="type"):
                await q.send(b"x", type=bad_type)
            with pytest.raises(ValueError, match="type"):
                q.send_nowait(b"x", type=bad_type)
        with pytest.raises(TypeError):
            await q.send(b"x", type=True)
        bad: object
        for bad in ("text", 42, None):
            with pytest.raises(TypeError, match="bytes"):
                await q.send(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="bytes"):
                q.send_nowait(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="except_type"):
            await q.receive_message(0, except_type=True)
        with pytest.raises(ValueError, match="except_type"):
            q.receive_nowait(type=-3, except_type=True)
        assert q.current_messages == 0  # nothing above was sent

        with pytest.raises(MessageTooLargeError, match="msgmax") as info:
            await q.send(bytes(MSGMAX + 1))
        assert (info.value.size, info.value.limit) == (MSGMAX + 1, MSGMAX)
        with pytest.raises(MessageTooLargeError, match="msgmax"):
            q.send_nowait(bytes(MSGMAX + 1))
        await q.send(bytearray(b"a bytearray"))  # type: ignore[arg-type]
        await q.send(memoryview(b"a memoryview"))  # type: ignore[arg-type]
        await q.send(bytes(MSGMAX))
        assert q.receive_nowait() == b"a bytearray"
        assert q.receive_nowait() == b"a memoryview"
        assert q.receive_nowait() == bytes(MSGMAX)


@pytest.mark.asyncio
async def test_full_and_empty_queue_nowait_and_send_waits_for_room() -> None:
    async with new_queue(max_bytes=100) as q:
        assert q.max_bytes == 100
        with pytest.raises(WouldBlock):
            q.receive_nowait()
        q.send_nowait(bytes(60))
        with pytest.raises(WouldBlock):
            q.send_nowait(bytes(41))
        q.send_nowait(bytes(40))  # exactly full
        with pytest.raises(WouldBlock):
            q.send_nowait(b"x")
        assert (q.current_messages, q.current_bytes) == (2, 100)
        q.send_nowait(b"")  # no bytes: fits, the kernel counts messages separately
        assert q.receive_nowait(type=0) == bytes(60)
        assert q.receive_nowait() == bytes(40)
        assert q.receive_nowait() == b""
        q.send_nowait(bytes(60))
        q.send_nowait(bytes(40))

        async with anyio.create_task_group() as tg:
            sent = Outcome()
            tg.start_soon(sent.run, lambda: q.send(b"waited for room"))
            await anyio.wait_all_tasks_blocked()
            assert not sent.done.is_set()
            assert q.receive_nowait() == bytes(60)
            await wait_all([sent], 5)
        assert sent.error is None
        assert q.receive_nowait() == bytes(40)
        assert q.receive_nowait() == b"waited for room"
        with pytest.raises(WouldBlock):
            q.receive_nowait()

    # max_bytes also caps the number of messages: each takes at least one "byte".
    async with new_queue(max_bytes=3) as small:
        for _ in range(3):
            small.send_nowait(b"")
        with pytest.raises(WouldBlock):
            small.send_nowait(b"")
        assert (small.current_messages, small.current_bytes) == (3, 0)


@pytest.mark.asyncio
async def test_cancelled_send_on_a_full_queue_sends_nothing() -> None:
    async with new_queue(max_bytes=16) as q:
        q.send_nowait(b"0123456789abcdef")
        with anyio.move_on_after(0.1) as scope:
            await q.send(b"cancelled")  # waits for room on a worker thread
        assert scope.cancelled_caught
        assert q.receive_nowait() == b"0123456789abcdef"
        with pytest.raises(WouldBlock):
            q.receive_nowait()
        await q.send(b"after")
        assert q.receive_nowait() == b"after"


@pytest.mark.asyncio
async def test_message_over_max_bytes_is_too_large() -> None:
    """The kernel only ever says "full" (EAGAIN) for a message bigger than the queue's
    capacity, so without a check of its own a send would wait for ever (fixed in 82a633c)."""
    async with new_queue(max_bytes=100) as q:
        with pytest.raises(MessageTooLargeError, match="max_bytes") as info:
            q.send_nowait(bytes(101))
        assert (info.value.size, info.value.limit) == (101, 100)
        with anyio.fail_after(2), pytest.raises(MessageTooLargeError, match="max_bytes"):
            await q.send(bytes(101))
        with anyio.fail_after(2), pytest.raises(MessageTooLargeError, match="max_bytes"):
            await q.send(bytes(101), type=7)
        assert q.current_messages == 0
        await q.send(bytes(100))  # exactly the capacity fits
        assert q.receive_nowait() == bytes(100)


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a send already waiting for room waits for ever once max_bytes is lowered "
    "below its size (even on an empty queue), instead of MessageTooLargeError",
)
@pytest.mark.asyncio
async def test_waiting_send_when_max_bytes_shrinks_below_it() -> None:
    async with new_queue(max_bytes=100) as q, anyio.create_task_group() as tg:
        q.send_nowait(bytes(100))
        sent = Outcome()
        tg.start_soon(sent.run, lambda: q.send(bytes(60)))
        await anyio.wait_all_tasks_blocked()
        assert not sent.done.is_set()
        q.max_bytes = 50  # another process could do this too
        assert q.receive_nowait() == bytes(100)  # empty now, and still 60 > 50
        try:
            await wait_all([sent], 1)
        finally:
            tg.cancel_scope.cancel()
        assert isinstance(sent.error, MessageTooLargeError), sent.error


# --------------------------------------------------------------------------- permissions


async def run_as_nobody(*args: str) -> list[str]:
    """Run the peer under uid/gid 65534 (it drops root itself) and return its lines."""
    async with spawn([*PEER, "--as-user", str(NOBODY), *args]) as peer:
        lines = [await peer.line(), *([await peer.line()] if args[0] == "recv-then-send" else [])]
        await peer.finish()
    return lines


@pytest.mark.asyncio
async def test_another_uid_is_refused_a_0600_queue(tmp_path: Path) -> None:
    key = aioipc.ftok(key_file(tmp_path), 42)
    async with new_queue(key, mode=0o600) as q:
        # msgget by key needs no permission; the send is refused.
        (by_key,) = await run_as_nobody("open-send", str(key))
        assert by_key.startswith("error IPCPermissionError True "), by_key
        assert "permission denied" in by_key
        # from_id stats the queue, which needs read permission.
        (by_id,) = await run_as_nobody("id-send", str(q.id))
        assert by_id.startswith("error IPCPermissionError True "), by_id
        assert q.current_messages == 0

        # Control: the same uid may send once the mode lets others write.
        q.mode = 0o622
        (allowed,) = await run_as_nobody("open-send", str(key))
        assert allowed == "sent"
        assert q.receive_nowait() == b"from another uid"
        assert q.last_send_pid not in (0, os.getpid())


@pytest.mark.asyncio
async def test_owner_read_only_queue_refuses_its_owner_a_send() -> None:
    async with new_queue(mode=0o400) as q:
        q.uid = NOBODY  # nobody owns it, with read permission only
        await q.send(b"readable")  # root bypasses the mode bits
        received, sent = await run_as_nobody("recv-then-send", str(q.id))
        assert received == "received readable"
        assert sent.startswith("error IPCPermissionError True "), sent
        assert "mode 0o400" in sent
        assert q.current_messages == 0


# ------------------------------------------------------------------------- cross-process


@pytest.mark.asyncio
@pytest.mark.parametrize("tool", ["aioipc", "sysv_ipc"])
async def test_child_sends_parent_receives_in_order(tmp_path: Path, tool: str) -> None:
    count = 3000
    key = aioipc.ftok(key_file(tmp_path), 7)
    async with new_queue(key, max_bytes=256) as q:  # small: the child waits for room
        cmd = ["send", str(q.id), "0", str(count)]
        if tool == "sysv_ipc":
            cmd = ["sysv-send", str(key), str(count)]
        async with spawn([*PEER, *cmd]) as peer:
            with anyio.fail_after(15):
                for i in range(count):
                    mtype, data = await q.receive_message()
                    assert (mtype, data) == (1, num(i))
            await peer.expect("done")
            await peer.finish()
            assert q.last_send_pid == peer.pid
        with pytest.raises(WouldBlock):
            q.receive_nowait()


@pytest.mark.asyncio
@pytest.mark.parametrize("tool", ["aioipc", "sysv_ipc"])
async def test_parent_sends_child_receives_in_order(tmp_path: Path, tool: str) -> None:
    count = 3000
    key = aioipc.ftok(key_file(tmp_path), 8)
    async with new_queue(key, max_bytes=256) as q:  # small: our sends wait for room
        cmd = ["recv", str(q.id), str(count)]
        if tool == "sysv_ipc":
            cmd = ["sysv-recv", str(key), str(count)]
        async with spawn([*PEER, *cmd]) as peer:
            await peer.expect("ready")
            with anyio.fail_after(15):
                for i in range(count):
                    await q.send(num(i))
            await peer.expect(f"ok {count}")
            await peer.finish()
            assert q.last_receive_pid == peer.pid
        assert q.current_messages == 0


# ------------------------------------------------------------------------- cancellation


async def cancel_a_parked_receive(q: MessageQueue) -> None:
    """Start a receive on the (empty) queue, wait until a worker thread runs its msgrcv,
    then cancel it.

    White box: the handle's ``_jobs.jobs`` (running Jobs, and cancel scopes of tasks
    queued for a worker) shows when a worker thread has started the job (``thread_id`` is set
    while it runs). anyio.wait_all_tasks_blocked() would do without
    it, but it sleeps 0.1 s whenever a task is runnable: far too slow for hundreds of rounds.
    """
    scope = anyio.CancelScope()
    got: list[bytes] = []

    async def receive() -> None:
        with scope:
            got.append(await q.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        with anyio.fail_after(5):
            while not any(getattr(job, "thread_id", None) is not None for job in q._jobs.jobs):
                await anyio.lowlevel.checkpoint()
        scope.cancel()
    assert not got, f"a receive on an empty queue returned {got}"


@pytest.mark.asyncio
async def test_cancellation_stress_loses_nothing() -> None:
    """20,000 numbered messages from a child, received under random cancellations.

    The child sends a burst whenever the parent asks. Each time the parent has drained
    the queue it first cancels a few receives that wait on the empty queue (so their
    worker thread is blocked in msgrcv: some are parked for sure, some get a random tiny
    timeout), then asks for the next burst and receives it under random timeouts too, so
    cancellations also race the arrival of messages (the case where the worker has seen
    a message when the cancellation lands).
    """
    total = 20_000
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    timeouts: list[float | None] = [None, None, None, 0, 1e-5, 5e-5, 2e-4, 1e-3]
    cancels = parked = timed_out_waiting = 0
    async with new_queue() as q, spawn([*PEER, "bursts", str(q.id)]) as peer:
        await peer.expect("ready")
        requested = expected = 0
        with anyio.fail_after(20):
            while expected < total:
                if expected == requested:
                    # Empty queue, nothing on its way: every receive here must wait.
                    for _ in range(rng.randint(0, 2)):
                        await cancel_a_parked_receive(q)
                        parked += 1
                    for _ in range(rng.randint(0, 2)):
                        with anyio.move_on_after(rng.choice([2e-5, 1e-4, 5e-4])) as scope:
                            await q.receive()
                        assert scope.cancelled_caught
                        timed_out_waiting += 1
                    end = min(total, requested + rng.randint(1, 48))
                    await peer.tell(f"{requested} {end}")
                    requested = end
                data: bytes | None = None
                with anyio.move_on_after(rng.choice(timeouts)):
                    data = await q.receive()
                if data is None:
                    cancels += 1
                    # White box: a cancelled receive keeps nothing in the handle (the
                    # worker waits without taking; test_hardening_sysv.py shows it
                    # across a SIGKILL).
                    assert not q._stash, f"seed {seed}: {q._stash}"
                    continue
                assert data == num(expected), f"seed {seed}: message {expected} arrived as {data!r}"
                expected += 1
        await peer.finish()
        assert q.current_messages == 0
        with pytest.raises(WouldBlock):
            q.receive_nowait()
    summary = (
        f"seed {seed}: {parked} parked receives cancelled, {timed_out_waiting} timed out "
        f"waiting, {cancels} cancelled while a burst came in"
    )
    print(summary)
    assert parked >= 300, summary
    assert timed_out_waiting >= 300, summary
    assert cancels >= 50, summary
    assert parked + timed_out_waiting + cancels >= 1000, summary


@pytest.mark.asyncio
async def test_stashed_message_is_returned_first_and_put_back_on_aclose() -> None:
    """White box: the mechanics of ``_stash``, where a handle keeps a message a cancelled
    receive's worker took and could not put back (in practice only a zero-length message,
    when the queue is full: see test_hardening_sysv.py)."""
    async with new_queue() as owner:
        await owner.send(b"in the kernel", type=5)
        owner._stash.append((5, b"taken by a cancelled receive"))
        assert await owner.receive_message(5) == (5, b"taken by a cancelled receive")
        assert await owner.receive_message(5) == (5, b"in the kernel")

        handle = MessageQueue.from_id(owner.id)
        try:
            await owner.send(b"queued", type=1)
            handle._stash.append((6, b"stashed six"))
            handle._stash.append((1, b"stashed one"))
            # The stash is searched with the selector; what it lacks comes from the kernel.
            assert handle.receive_message_nowait(-1) == (1, b"stashed one")
            assert handle.receive_message_nowait(-1) == (1, b"queued")
            await owner.send(b"sent after it was taken", type=2)
        finally:
            await handle.aclose()
        assert handle._stash == []
        # Put back with msgsnd, so it now comes after what was sent in the meantime.
        assert owner.receive_message_nowait() == (2, b"sent after it was taken")
        assert owner.receive_message_nowait() == (6, b"stashed six")
        with pytest.raises(WouldBlock):
            owner.receive_nowait()


@pytest.mark.asyncio
async def test_stashed_message_that_cannot_be_put_back_warns() -> None:
    # A queue is full for a zero-length message when it holds max_bytes messages.
    async with new_queue(max_bytes=1) as owner:
        handle = MessageQueue.from_id(owner.id)
        try:
            owner.send_nowait(b"f")
            handle._stash.append((3, b""))  # the only kind of message that gets there
        finally:
            with pytest.warns(RuntimeWarning, match="zero-length message of type 3 .* put back"):
                await handle.aclose()
        assert owner.receive_nowait() == b"f"
        with pytest.raises(WouldBlock):
            owner.receive_nowait()


# ------------------------------------------------------------------ removal and closing


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["ipcrm", "remove"])
async def test_removal_wakes_every_waiter(how: str) -> None:
    async with new_queue(max_bytes=10) as q, anyio.create_task_group() as tg:
        # One receive waits per handle (a second one would raise BusyResourceError).
        others = [MessageQueue.from_id(q.id) for _ in range(6)]
        other = others[0]
        sender = MessageQueue.from_id(q.id)
        try:
            sender.send_nowait(bytes(10), type=9)  # full: the next send waits
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: q.receive(type=3),
                lambda: others[1].receive(type=4),
                lambda: others[2].receive_message(-2),
                lambda: others[3].receive(type=9, except_type=True),
                lambda: others[4].receive(type=3),
                lambda: others[5].receive(type=7),
                lambda: other.receive(type=3),
                lambda: sender.send(b"no room"),
                lambda: q.send(b"no room 2"),  # a send and a receive on one handle
            ]
            outcomes = [Outcome() for _ in calls]
            for outcome, call in zip(outcomes, calls, strict=True):
                tg.start_soon(outcome.run, call)
            await anyio.wait_all_tasks_blocked()
            assert not any(o.done.is_set() for o in outcomes), [
                (i, repr(o.error)) for i, o in enumerate(outcomes) if o.done.is_set()
            ]
            if how == "ipcrm":
                await anyio.run_process(["ipcrm", "-q", str(q.id)])
            else:
                async with MessageQueue.from_id(q.id) as q2:
                    q2.remove()
            await wait_all(outcomes, 1)
            for outcome in outcomes:
                assert isinstance(outcome.error, BrokenResourceError), outcome.error
                assert "removed" in str(outcome.error)
            with pytest.raises(BrokenResourceError, match="removed"):
                q.receive_nowait()
            with pytest.raises(BrokenResourceError, match="removed"):
                await q.send(b"gone")
            with pytest.raises(BrokenResourceError, match="removed"):
                _ = q.current_messages
        finally:
            for handle in others:
                await handle.aclose()
            await sender.aclose()


def aioipc_threads() -> int:
    return sum(t.name.startswith("aioipc-") for t in threading.enumerate())


async def settled_thread_count() -> int:
    """The thread count once aioipc's idle workers from earlier tests have ended (they
    end 0.5 s after their last job; polled only to observe that)."""
    with anyio.fail_after(2):
        while aioipc_threads():  # noqa: ASYNC110 (nothing to wait on: threads end by themselves)
            await anyio.sleep(0.02)
    return thread_count()


async def wait_for_threads(at_most: int, seconds: float) -> None:
    """Poll (only to observe it) until this process has at most ``at_most`` threads."""
    with anyio.fail_after(seconds):
        while thread_count() > at_most:  # noqa: ASYNC110 (as above)
            await anyio.sleep(0.02)


@pytest.mark.asyncio
async def test_aclose_wakes_waiters_and_their_threads_end() -> None:
    async with new_queue() as owner:
        q = MessageQueue.from_id(owner.id)  # not the owner: the queue stays after aclose
        try:
            before = await settled_thread_count()
            owner.max_bytes = 1
            owner.send_nowait(b"f", type=9)  # full: a send waits
            outcomes = [Outcome(), Outcome()]
            async with anyio.create_task_group() as tg:
                # One receive and one send wait on the handle: two threads.
                tg.start_soon(outcomes[0].run, lambda: q.receive(type=1))
                tg.start_soon(outcomes[1].run, lambda: q.send(b"n", type=2))
                await anyio.wait_all_tasks_blocked()
                # By name only: ``before`` may count another library's idle threads,
                # which can end at any moment.
                assert aioipc_threads() >= 2
                with anyio.fail_after(1):
                    await q.aclose()
                await wait_all(outcomes, 1)
            for outcome in outcomes:
                assert isinstance(outcome.error, ClosedResourceError), outcome.error
            # Idle workers end after 0.5 s; the interrupter once no job is left.
            await wait_for_threads(before, 1.5)
            assert aioipc_threads() == 0
            assert proc_row(owner.id) is not None
            assert owner.receive_message_nowait() == (9, b"f")  # the send sent nothing
            owner.max_bytes = 100
            await owner.send(b"still usable", type=2)
            assert owner.receive_nowait() == b"still usable"
            with pytest.raises(ClosedResourceError):
                await q.receive()
            with pytest.raises(ClosedResourceError):
                q.receive_nowait()
            with pytest.raises(ClosedResourceError):
                await q.send(b"closed")
        finally:
            await q.aclose()  # idempotent


@pytest.mark.asyncio
async def test_a_second_concurrent_receive_raises_busy_and_the_first_loses_nothing() -> None:
    """One task receives on a handle at a time, as on every aioipc channel: a second
    receive (any method, any selector) raises BusyResourceError at once instead of
    queueing; the first still gets every message, in order."""
    async with new_queue() as q, MessageQueue.from_id(q.id) as sender:
        first = Outcome()
        got: list[bytes] = []

        async def receive_three() -> list[bytes]:
            for _ in range(3):
                got.append(await q.receive())
            return got

        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run, receive_three)
            await anyio.wait_all_tasks_blocked()  # waiting in a worker thread
            # At once: before, these queued behind the first on a lock (fail_after ends
            # that wait).
            with anyio.fail_after(5):
                with pytest.raises(anyio.BusyResourceError):
                    await q.receive()
                with pytest.raises(anyio.BusyResourceError):
                    await q.receive_message(5)
                with pytest.raises(anyio.BusyResourceError):
                    await q.receive(type=2, except_type=True)
            for i in range(3):
                await sender.send(num(i))
            await wait_all([first], 5)
        assert first.value == [num(0), num(1), num(2)]
        assert q.current_messages == 0


@pytest.mark.asyncio
async def test_a_second_concurrent_send_raises_busy_and_the_first_loses_nothing() -> None:
    async with new_queue(max_bytes=2) as q, MessageQueue.from_id(q.id) as receiver:
        q.send_nowait(num(0)[:2])  # full: the next send waits
        first = Outcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run, lambda: q.send(b"ab"))
            await anyio.wait_all_tasks_blocked()  # waiting in a worker thread
            with anyio.fail_after(5):
                with pytest.raises(anyio.BusyResourceError):
                    await q.send(b"cd")
                with pytest.raises(anyio.BusyResourceError):
                    await q.send(b"ef", type=3)
            assert receiver.receive_nowait() == num(0)[:2]
            await wait_all([first], 5)
        assert first.error is None
        assert receiver.receive_nowait() == b"ab"
        with pytest.raises(WouldBlock):
            receiver.receive_nowait()


@pytest.mark.asyncio
async def test_successive_waits_reuse_one_worker_thread_which_ends_after_close() -> None:
    """Five waits in a row are served by one worker thread (no thread start per wait),
    and no aioipc thread is left once the handle is closed and the idle time is over."""
    async with new_queue() as owner:
        before = await settled_thread_count()
        q = MessageQueue.from_id(owner.id)
        try:
            for i in range(5):
                async with anyio.create_task_group() as tg:
                    got = Outcome()
                    tg.start_soon(got.run, q.receive)
                    await anyio.wait_all_tasks_blocked()  # waiting through a worker
                    await owner.send(num(i))
                    await wait_all([got], 5)
                assert got.value == num(i)
                assert aioipc_threads() == 1  # the same thread, idle between waits
        finally:
            await q.aclose()
        # Idle workers end after 0.5 s (generous on a loaded machine).
        await wait_for_threads(before, 3)
        assert aioipc_threads() == 0


@pytest.mark.asyncio
async def test_a_thousand_waiters_hold_a_bounded_number_of_threads() -> None:
    limiter = aioipc.worker_limiter()
    default_limiter = anyio.to_thread.current_default_thread_limiter()
    async with new_queue() as owner:
        # One waiting receive per handle (a second one on a handle raises BusyResourceError).
        handles = [MessageQueue.from_id(owner.id) for _ in range(1000)]
        try:
            before = await settled_thread_count()
            ceiling = before + int(limiter.total_tokens) + 2  # + the interrupter, + slack
            got: list[bytes] = []
            peak = 0
            all_in = anyio.Event()

            async def waiter(handle: MessageQueue) -> None:
                got.append(await handle.receive())
                if len(got) == 1000:
                    all_in.set()

            async def monitor() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, thread_count())
                    assert default_limiter.borrowed_tokens == 0
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                for handle in handles:
                    tg.start_soon(waiter, handle)
                tg.start_soon(monitor)
                await anyio.wait_all_tasks_blocked()
                assert limiter.borrowed_tokens == limiter.total_tokens
                assert default_limiter.borrowed_tokens == 0
                assert thread_count() <= ceiling
                with anyio.fail_after(10):
                    for i in range(1000):
                        await owner.send(num(i))
                    await all_in.wait()
                tg.cancel_scope.cancel()
            assert sorted(got, key=int) == [num(i) for i in range(1000)]
            assert peak <= ceiling, (peak, before, limiter.total_tokens)
            assert limiter.borrowed_tokens == 0
            assert owner.current_messages == 0
        finally:
            for handle in handles:
                await handle.aclose()


# ----------------------------------------------------------------- pickling, conformance


def _spawned_sender(q: MessageQueue, count: int) -> None:
    async def main() -> None:
        async with q:
            for i in range(count):
                await q.send(num(i))

    anyio.run(main)


@pytest.mark.asyncio
@pytest.mark.parametrize("keyed", [False, True], ids=["private", "keyed"])
async def test_handle_pickles_to_a_spawned_child(tmp_path: Path, keyed: bool) -> None:
    key = aioipc.ftok(key_file(tmp_path), 11) if keyed else aioipc.IPC_PRIVATE
    async with new_queue(key, send_type=7, receive_type=-7) as q:
        copy = pickle.loads(pickle.dumps(q))
        try:
            assert (copy.id, copy.key, copy.send_type, copy.receive_type) == (q.id, key, 7, -7)
        finally:
            await copy.aclose()
        assert proc_row(q.id) is not None  # the copy does not own the queue

        count = 500
        proc = multiprocessing.get_context("spawn").Process(target=_spawned_sender, args=(q, count))
        proc.start()
        try:
            with anyio.fail_after(20):
                for i in range(count):
                    assert await q.receive_message() == (7, num(i))
        finally:
            await anyio.to_thread.run_sync(proc.join, 20)
        assert proc.exitcode == 0
        assert q.last_send_pid == proc.pid


# The Channel contract, the busy rule and pacing: tests/test_conformance.py (sysv-mq).


# -------------------------------------------------------------------------- trio, ftok


def test_wait_path_on_trio() -> None:
    async def main() -> None:
        async with new_queue() as q, MessageQueue.from_id(q.id) as other:
            async with anyio.create_task_group() as tg:
                typed = Outcome()
                tg.start_soon(typed.run, lambda: q.receive_message(3))
                await anyio.wait_all_tasks_blocked()
                await other.send(b"not for it", type=1)
                await other.send(b"for it", type=3)
                await wait_all([typed], 5)
            assert typed.value == (3, b"for it")
            assert q.receive_message_nowait() == (1, b"not for it")

            with anyio.move_on_after(0.05) as scope:
                await q.receive(type=9)
            assert scope.cancelled_caught
            await other.send(b"after the cancel", type=9)
            assert await q.receive(type=9) == b"after the cancel"

            async with spawn([*PEER, "send", str(q.id), "0", "200"]) as peer:
                with anyio.fail_after(10):
                    for i in range(200):
                        assert await q.receive(type=1) == num(i)
                await peer.expect("done")
                await peer.finish()

            async with anyio.create_task_group() as tg:
                woken = Outcome()
                tg.start_soon(woken.run, other.receive)
                await anyio.wait_all_tasks_blocked()
                await other.aclose()
                await wait_all([woken], 1)
            assert isinstance(woken.error, ClosedResourceError)

    anyio.run(main, backend="trio")


def test_ftok_matches_sysv_ipc(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    for proj_id in (0, 1, 42, 127, 128, 200, 255):
        ours = aioipc.ftok(path, proj_id)
        assert -(2**31) <= ours < 2**31
        assert (ours < 0) == (proj_id >= 128)
        theirs = sysv_ipc.ftok(str(path), proj_id, True)
        assert ours % 2**32 == theirs % 2**32, proj_id
        assert aioipc.sysv.ftok(str(path), proj_id) == ours
    with pytest.raises(ValueError, match=r"0\.\.255"):
        aioipc.ftok(path, 256)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        aioipc.ftok(path, -1)
    with pytest.raises(TypeError):
        aioipc.ftok(path, True)
    with pytest.raises(FileNotFoundError):
        aioipc.ftok(tmp_path / "missing", 1)


# ==========================================================================================
# Regressions: SysV message queues
# Regression tests moved from tests/test_regressions.py (issue 11): bugs found in review,
# kept next to the mechanism they guard. Each names, in its first line, the bug it guards.
# ==========================================================================================


@pytest.mark.asyncio
async def test_sysv_message_bigger_than_the_queue_is_refused_not_waited_for() -> None:
    """The kernel answers only "full" for a message larger than msg_qbytes, so without
    a check a send would wait for ever for room that can never come."""
    q = aioipc.sysv.MessageQueue.create(max_bytes=100)
    try:
        with pytest.raises(aioipc.MessageTooLargeError, match=r"max_bytes.* = 100 bytes"):
            q.send_nowait(b"x" * 200)
        with anyio.fail_after(5), pytest.raises(aioipc.MessageTooLargeError, match="max_bytes"):
            await q.send(b"x" * 200)
        assert q.current_messages == 0
    finally:
        await q.aclose()


@pytest.mark.asyncio
async def test_receive_message_defaults_to_the_handles_receive_type() -> None:
    a = aioipc.sysv.MessageQueue.create(send_type=1, receive_type=2)
    b = aioipc.sysv.MessageQueue.from_id(a.id, send_type=2, receive_type=1)
    try:
        await a.send(b"to b")
        await b.send(b"to a")
        assert await a.receive_message() == (2, b"to a")
        assert b.receive_message_nowait() == (1, b"to b")
    finally:
        await b.aclose()
        await a.aclose()


@pytest.mark.asyncio
async def test_waits_on_unrelated_handles_cannot_starve_one_another() -> None:
    """With every worker token taken by idle receives on other queues, a receive whose
    message arrives is still served (it polls its no-wait call while it queues)."""
    limiter = aioipc.worker_limiter()
    old = limiter.total_tokens
    limiter.total_tokens = 2
    queues = [aioipc.sysv.MessageQueue.create() for _ in range(4)]
    got: list[bytes] = []
    done = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            for q in queues[:3]:
                tg.start_soon(q.receive)

            async def last() -> None:
                got.append(await queues[3].receive())
                done.set()

            tg.start_soon(last)
            # Observing the limiter, which has no event to wait on: poll under a deadline.
            with anyio.fail_after(5):
                while limiter.borrowed_tokens < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            queues[3].send_nowait(b"served")
            with anyio.fail_after(2):
                await done.wait()
            assert got == [b"served"]
            tg.cancel_scope.cancel()
    finally:
        limiter.total_tokens = old
        for q in queues:
            await q.aclose()
