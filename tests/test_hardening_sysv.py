"""Issue 10, the System V items: what a crash, a removal or a bad argument must not break.

* Item 6: ``aioipc.Lock`` waiters in the holder's own process wake on ``ipcrm -s``,
  ``remove()`` and ``aclose()``.
* Item 7: a cancelled SysV receive leaves the message in the kernel, so it survives a
  SIGKILL of the receiver.
* Items 9 and 10: ``from_id`` refuses ids that are not a kernel id (a string, a value a C
  int would truncate to another object's id).
* Item 11: a bad ``mode`` or ``max_bytes`` is refused before anything is created.

Real queues, semaphores and processes throughout; every object is removed in a
``finally`` (the session fixture fails the run on a leak).
"""

from __future__ import annotations

import contextlib
import pickle
import random
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import BrokenResourceError, CancelScope, ClosedResourceError, WouldBlock

import aioipc
from aioipc import IPC_PRIVATE, Lock
from aioipc._core import libc as libc
from aioipc.sysv import MessageQueue, Semaphore, SemaphoreSet, SharedMemory
from tests._peer import spawn
from tests.peers.sysv_peer import hold_loop_until_left_msgrcv, parked_or_done
from tests.test_semaphores import Outcomes

HERE = Path(__file__).parent
SYSV_PEER = [sys.executable, str(HERE / "peers" / "sysv_peer.py")]
SEM_PEER = [sys.executable, str(HERE / "peers" / "sem_peer.py")]
INT_MAX = 2**31 - 1
ULONG_MAX = 2**64 - 1
TIMEOUT = 15


def new_key(tmp_path: Path, name: str, proj: int = 0x5A) -> int:
    path = tmp_path / name
    path.touch()
    return aioipc.ftok(path, proj)


def ids_under_key(kind: str, key: int) -> list[int]:
    """Ids of the ``kind`` ("msg", "sem", "shm") objects under ``key`` now."""
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
    return [int(f[1]) for f in map(str.split, lines) if f and int(f[0]) == key]


def remove_id(kind: str, ipc_id: int) -> None:
    with contextlib.suppress(OSError):
        if kind == "msg":
            libc.msgctl(ipc_id, libc.IPC_RMID)
        elif kind == "sem":
            libc.semctl(ipc_id, 0, libc.IPC_RMID)
        else:
            libc.shmctl(ipc_id, libc.IPC_RMID)


@contextlib.contextmanager
def nothing_made_under(kind: str, key: int) -> Iterator[None]:
    """Fail if anything appeared under ``key`` (and remove it, so nothing leaks)."""
    assert not ids_under_key(kind, key)
    try:
        yield
    finally:
        made = ids_under_key(kind, key)
        for ipc_id in made:
            remove_id(kind, ipc_id)
        assert not made, f"a {kind} object was created under key {key:#x} anyway"


@contextlib.asynccontextmanager
async def owned(handle: Any) -> AsyncIterator[Any]:
    """Yield ``handle``; then remove its object (if still there) and close it."""
    try:
        yield handle
    finally:
        with contextlib.suppress(BrokenResourceError):
            handle.remove()
        if isinstance(handle, SharedMemory):
            handle.close()
        else:
            await handle.aclose()


async def wait_until(pred: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll kernel state that has no event to wait on (GETNCNT, /proc)."""
    with anyio.fail_after(seconds):
        while not pred():  # noqa: ASYNC110 (kernel state: no event to wait on)
            await anyio.sleep(0.001)


# ------------------------------------------------------------------ items 9 and 10: ids


def _make(kind: str) -> Any:
    if kind == "queue":
        return MessageQueue.create()
    if kind == "set":
        return SemaphoreSet.create(size=2)
    if kind == "semaphore":
        return Semaphore.create(value=1)
    return SharedMemory.create(IPC_PRIVATE, 4096)


def _from_id(kind: str, ipc_id: object) -> Any:
    if kind == "queue":
        return MessageQueue.from_id(ipc_id)  # type: ignore[arg-type]
    if kind == "set":
        return SemaphoreSet.from_id(ipc_id)  # type: ignore[arg-type]
    if kind == "semaphore":
        return Semaphore.from_id(ipc_id)  # type: ignore[arg-type]
    if kind == "lock":
        return aioipc.lock._reopen(ipc_id, IPC_PRIVATE)  # type: ignore[arg-type]
    return SharedMemory.from_id(ipc_id)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["queue", "set", "semaphore", "lock", "shm"])
async def test_from_id_refuses_what_is_not_a_kernel_id(kind: str) -> None:
    async with owned(_make("semaphore" if kind == "lock" else kind)) as obj:
        if kind == "queue":
            obj.send_nowait(b"not for a truncated id")
        # id + 2**32 is the same C int: the kernel would be handed this very object.
        for wrong in (obj.id + 2**32, obj.id - 2**32, -1, INT_MAX + 1, 2**70):
            with pytest.raises(ValueError, match=rf"id {wrong} is out of range.*0\.\.{INT_MAX}"):
                _from_id(kind, wrong)
        for wrong in (str(obj.id), float(obj.id), True, None):
            with pytest.raises(TypeError, match=r" id is an int") as err:
                _from_id(kind, wrong)
            assert type(err.value) is TypeError  # not ctypes.ArgumentError
        if kind == "queue":
            assert obj.current_messages == 1  # nothing was read through a wrong id
        # The right id still works, and a handle still pickles to it.
        same = _from_id(kind, obj.id)
        try:
            assert same.id == obj.id
            again = pickle.loads(pickle.dumps(same))
            assert again.id == obj.id
        finally:
            if isinstance(same, SharedMemory):
                same.close()
                again.close()
            else:
                await same.aclose()
                await again.aclose()


def test_from_id_checks_its_key_too() -> None:
    with pytest.raises(ValueError, match="key"):
        MessageQueue.from_id(0, key=2**40)
    with pytest.raises(ValueError, match="key"):
        SemaphoreSet.from_id(0, key=-(2**40))


# ------------------------------------------------------------------ item 11: mode, max_bytes

BAD_MODES = [
    pytest.param(-1, ValueError, id="mode=-1"),
    pytest.param(0o1000, ValueError, id="mode=0o1000"),
    pytest.param(0o4755, ValueError, id="mode=0o4755"),
    pytest.param(2**40 | 0o600, ValueError, id="mode=2**40|0o600"),
    pytest.param("0600", TypeError, id="mode='0600'"),
    pytest.param(True, TypeError, id="mode=True"),
]

CREATORS: dict[str, Callable[..., Any]] = {
    "MessageQueue.create": lambda key, mode: MessageQueue.create(key, mode=mode),
    "MessageQueue.open_or_create": lambda key, mode: MessageQueue.open_or_create(key, mode=mode),
    "SemaphoreSet.create": lambda key, mode: SemaphoreSet.create(key, 2, mode=mode),
    "SemaphoreSet.open_or_create": lambda key, mode: SemaphoreSet.open_or_create(key, mode=mode),
    "Semaphore.create": lambda key, mode: Semaphore.create(key, mode=mode),
    "Semaphore.open_or_create": lambda key, mode: Semaphore.open_or_create(key, mode=mode),
    "Lock.create": lambda key, mode: Lock.create(key, mode=mode),
    "Lock.open_or_create": lambda key, mode: Lock.open_or_create(key, mode=mode),
}


@pytest.mark.parametrize("creator", list(CREATORS))
@pytest.mark.parametrize(("mode", "error"), BAD_MODES)
def test_a_bad_mode_is_refused_before_anything_is_created(
    tmp_path: Path, creator: str, mode: object, error: type[Exception]
) -> None:
    key = new_key(tmp_path, "mode")
    kind = "msg" if creator.startswith("MessageQueue") else "sem"
    with nothing_made_under(kind, key), pytest.raises(error, match="mode"):
        CREATORS[creator](key, mode)


@pytest.mark.parametrize(("mode", "error"), [p for p in BAD_MODES if p.id != "mode=2**40|0o600"])
def test_a_bad_mode_makes_no_private_object(mode: object, error: type[Exception]) -> None:
    # IPC_PRIVATE has no key to look under: compare the ids of objects with the
    # permission bits the kernel would have kept (mode & 0o777; none of these is a mode
    # anything else asks for, so another process's objects are not taken for ours).
    perms = mode & 0o777 if isinstance(mode, int) else None

    def with_perms(kind: str) -> set[tuple[str, int]]:
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        return {(kind, int(f[1])) for f in map(str.split, lines) if f and int(f[2], 8) == perms}

    before = with_perms("msg") | with_perms("sem")
    try:
        with pytest.raises(error, match="mode"):
            MessageQueue.create(mode=mode)  # type: ignore[arg-type]
        with pytest.raises(error, match="mode"):
            SemaphoreSet.create(mode=mode)  # type: ignore[arg-type]
        with pytest.raises(error, match="mode"):
            Lock.create(mode=mode)  # type: ignore[arg-type]
    finally:
        made = (with_perms("msg") | with_perms("sem")) - before
        for kind, ipc_id in made:
            remove_id(kind, ipc_id)
    assert not made


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["queue", "set", "shm"])
async def test_the_mode_setter_refuses_a_bad_mode(kind: str) -> None:
    async with owned(_make(kind)) as obj:
        for mode, error in ((-1, ValueError), (0o1777, ValueError), ("0644", TypeError)):
            with pytest.raises(error, match="mode"):
                obj.mode = mode
            assert obj.mode == 0o600
        obj.mode = 0o640
        assert obj.mode == 0o640


BAD_MAX_BYTES = [
    pytest.param(2**70, ValueError, id="2**70"),
    pytest.param(2**64, ValueError, id="2**64"),
    pytest.param(0, ValueError, id="0"),
    pytest.param(-1, ValueError, id="-1"),
    pytest.param("16384", TypeError, id="str"),
    pytest.param(True, TypeError, id="True"),
    pytest.param(16384.0, TypeError, id="float"),
]


@pytest.mark.parametrize(("max_bytes", "error"), BAD_MAX_BYTES)
@pytest.mark.parametrize("how", ["create", "open_or_create"])
def test_a_bad_max_bytes_is_refused_before_the_queue_is_created(
    tmp_path: Path, how: str, max_bytes: object, error: type[Exception]
) -> None:
    key = new_key(tmp_path, "qbytes")
    make = getattr(MessageQueue, how)
    with nothing_made_under("msg", key):
        with pytest.raises(error, match="max_bytes") as err:
            make(key, max_bytes=max_bytes)
        if error is ValueError:
            assert f"1..{ULONG_MAX}" in str(err.value)


@pytest.mark.asyncio
async def test_open_or_create_refuses_a_bad_max_bytes_even_when_the_queue_exists(
    tmp_path: Path,
) -> None:
    key = new_key(tmp_path, "qbytes")
    async with owned(MessageQueue.create(key)) as q:
        with pytest.raises(ValueError, match="max_bytes"):
            MessageQueue.open_or_create(key, max_bytes=2**70)
        with pytest.raises(ValueError, match="mode"):
            MessageQueue.open_or_create(key, mode=-1)
        assert q.mode == 0o600


@pytest.mark.asyncio
@pytest.mark.parametrize(("max_bytes", "error"), BAD_MAX_BYTES)
async def test_the_max_bytes_setter_refuses_what_msg_qbytes_cannot_hold(
    max_bytes: object, error: type[Exception]
) -> None:
    async with owned(MessageQueue.create(max_bytes=100)) as q:
        with pytest.raises(error, match="max_bytes"):
            q.max_bytes = max_bytes
        assert q.max_bytes == 100
        q.send_nowait(b"x" * 100)  # still a queue of 100 bytes, not of 0


# ------------------------------------------------------------------ item 6: Lock waiters


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["ipcrm", "remove", "aclose"])
@pytest.mark.parametrize("holder", ["this process", "another process"])
async def test_lock_waiters_wake_on_removal_and_close(
    tmp_path: Path, how: str, holder: str
) -> None:
    """Three tasks wait in ``acquire()`` while the lock is held, by a task of this
    process or by another process; ``ipcrm -s``, ``remove()`` or ``aclose()`` must wake
    all three at once. (Before the fix, with the holder in this process, they waited
    on a per-process anyio.Lock that none of the three touched: still blocked after 2 s.)
    """
    key = new_key(tmp_path, "lock")
    expected = ClosedResourceError if how == "aclose" else BrokenResourceError
    async with (
        owned(SemaphoreSet.create(key, 1, values=1)) as observer,
        contextlib.AsyncExitStack() as stack,
    ):
        lock = Lock.open(key)
        stack.push_async_callback(lock.aclose)
        held = anyio.Event()
        release = anyio.Event()
        holder_out = Outcomes(1)

        async def hold_here() -> None:
            await lock.acquire()
            held.set()
            await release.wait()
            lock.release()

        waiters = Outcomes(3)
        async with anyio.create_task_group() as tg:
            if holder == "this process":
                tg.start_soon(holder_out.run, hold_here)
                await held.wait()
            else:
                peer = await stack.enter_async_context(spawn([*SEM_PEER, "hold", str(key)]))
                await peer.expect("held", TIMEOUT)
            assert lock.locked()
            for _ in range(3):
                tg.start_soon(waiters.run, lock.acquire)
            await anyio.wait_all_tasks_blocked()
            if how == "ipcrm":
                proc = await anyio.run_process(["ipcrm", "-s", str(lock.id)], check=False)
                assert proc.returncode == 0, proc.stderr
            elif how == "remove":
                lock.remove()
            else:
                await lock.aclose()
            with anyio.fail_after(2):
                await waiters.all_in.wait()
            release.set()
        for outcome in waiters.got:
            assert isinstance(outcome, expected), repr(outcome)
        if holder == "this process":
            # The holder cannot release a removed lock, nor through a closed handle.
            assert isinstance(holder_out.got[0], expected), holder_out.got
        if how == "aclose":
            # Closing gave back what the handle held: the lock is free for others.
            assert observer.get_value(0) == (1 if holder == "this process" else 0)


@pytest.mark.asyncio
async def test_cancelled_lock_waiters_hold_nothing_and_exclusion_holds(tmp_path: Path) -> None:
    """Tasks of one process contend for the lock with random timeouts: never two inside
    at once, and once all are done the lock is free and nobody waits in the kernel."""
    key = new_key(tmp_path, "lock")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    inside = entered = timed_out = 0
    async with (
        owned(SemaphoreSet.create(key, 1, values=1)) as observer,
        contextlib.AsyncExitStack() as stack,
    ):
        lock = Lock.open(key)
        stack.push_async_callback(lock.aclose)

        async def contend(task_rng: random.Random) -> None:
            nonlocal inside, entered, timed_out
            for _ in range(40):
                with anyio.move_on_after(task_rng.choice([0, 1e-4, 5e-4, 2e-3, 1])) as scope:
                    async with lock:
                        inside += 1
                        try:
                            assert inside == 1, f"seed {seed}: two tasks inside the lock"
                            entered += 1
                            await anyio.lowlevel.checkpoint()
                        finally:
                            inside -= 1
                timed_out += scope.cancelled_caught

        # And the holder-is-here case of item 6 under cancellation: three waiters behind
        # a holder of this process, all cancelled; then the lock is still usable.
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            scopes = [CancelScope() for _ in range(3)]
            for scope in scopes:

                async def wait_in(scope: CancelScope = scope) -> None:
                    with scope:
                        await lock.acquire()

                tg.start_soon(wait_in)
            await wait_until(lambda: observer.waiting_count() == 1)
            for scope in scopes:
                scope.cancel()
        assert lock.locked()
        lock.release()
        assert observer.get_value(0) == 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(contend, random.Random(rng.random() + i))
        assert (inside, observer.get_value(0), observer.waiting_count(0)) == (0, 1, 0)
        assert not lock.locked()
        lock.acquire_nowait()
        lock.release()
        print(f"seed {seed}: {entered} entered, {timed_out} timed out")
        assert entered > 0


# ------------------------------------------------------------------ item 7: receive


def drain(q: MessageQueue) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(q.receive_nowait())
        except WouldBlock:
            return out


@pytest.mark.asyncio
async def test_a_receive_cancelled_in_the_window_leaves_the_message_to_survive_sigkill() -> None:
    """The window: a receive's worker has seen a message arrive, and the cancellation
    reaches the task before it learns of it. The child hits it on purpose every round
    (see sysv_peer.py ``window``) and is then SIGKILLed: every message sent must be
    either reported by the child or still in the queue. (Before the fix the worker had
    taken the message and the handle kept it for the next receive, so the last one died
    with the child.)"""
    rounds = 20
    async with owned(MessageQueue.create()) as q:
        async with spawn([*SYSV_PEER, "window", str(q.id), str(rounds)]) as peer:
            reported: list[bytes] = []
            cancelled = 0
            while (line := await peer.line(TIMEOUT)) != "done":
                if line == "cancelled":
                    cancelled += 1
                else:
                    assert line.startswith("got "), line
                    reported.append(line[4:].encode())
            await peer.kill()
        assert cancelled == rounds
        left = drain(q)
        everything = sorted(reported + left, key=int)
        assert everything == [b"%d" % i for i in range(rounds)], (reported, left)
        assert left == [b"%d" % (rounds - 1)]  # the last one sent, never received


@pytest.mark.asyncio
async def test_random_cancellations_and_a_sigkill_lose_no_message() -> None:
    """A child receives a trickle of numbered messages under random tiny timeouts and
    reports each one it got; after a random number of cancelled receives it stops and is
    SIGKILLed. What it reported plus what is left in the queue is every message sent,
    each exactly once. (The kill comes when the child is between receives: a message
    taken and not yet reported is the receiver's, by any definition.)"""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for child in range(3):
        async with owned(MessageQueue.create()) as q:
            stop = rng.randint(20, 120)
            sent = 0
            reported: list[bytes] = []
            async with spawn(
                [*SYSV_PEER, "random-cancel", str(q.id), str(rng.randrange(2**32)), str(stop)]
            ) as peer:

                async def feed() -> None:
                    nonlocal sent
                    while True:
                        with contextlib.suppress(WouldBlock):
                            q.send_nowait(b"%d" % sent)
                            sent += 1
                        # Pacing only (the child's receives race the arrivals).
                        await anyio.sleep(rng.choice([0, 0, 1e-4, 5e-4, 1e-3]))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed)
                    while (line := await peer.line(TIMEOUT)) != "stop":
                        assert line.startswith("got "), line
                        reported.append(line[4:].encode())
                    tg.cancel_scope.cancel()
                await peer.kill()
            left = drain(q)
            everything = sorted(reported + left, key=int)
            assert everything == [b"%d" % i for i in range(sent)], (
                f"seed {seed}, child {child}: {sent} sent, "
                f"missing {sorted(set(range(sent)) - {int(x) for x in everything})}, "
                f"reported {len(reported)}, left {len(left)}"
            )


@pytest.mark.asyncio
async def test_after_every_cancelled_receive_the_kernel_holds_every_unreceived_message() -> None:
    """In one process: a task sends a trickle, another receives with random timeouts;
    after every cancelled receive the queue holds exactly what was sent and not received
    (nothing is kept in the handle, where a crash would lose it)."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    timeouts = [0, 1e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3]
    sent = received = cancels = 0
    total = 3000
    async with owned(MessageQueue.create()) as q:

        async def feed() -> None:
            nonlocal sent
            while sent < total:
                with contextlib.suppress(WouldBlock):
                    q.send_nowait(b"%d" % sent)
                    sent += 1
                await anyio.sleep(rng.choice([0, 0, 1e-4, 5e-4]))  # pacing only

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                while received < total:
                    data = None
                    with anyio.move_on_after(rng.choice(timeouts)):
                        data = await q.receive()
                    if data is None:
                        cancels += 1
                        assert q.current_messages == sent - received, (
                            f"seed {seed}: after cancelled receive {cancels} the queue "
                            f"holds {q.current_messages}, not {sent - received}"
                        )
                        continue
                    assert data == b"%d" % received, f"seed {seed}"
                    received += 1
        print(f"seed {seed}: {cancels} cancelled receives")
        assert cancels >= 100


async def cancel_in_the_window(
    q: MessageQueue, receive: Callable[[], Awaitable[Any]], deliver: Callable[[], None]
) -> list[Any]:
    """Start ``receive()``; once its worker waits in msgrcv, ``deliver()`` (synchronously)
    and, with the event loop still held, wait until the worker has left msgrcv, then
    cancel the receive. Returns what the receive returned ([] if it was cancelled)."""
    scope = CancelScope()
    got: list[Any] = []
    done = anyio.Event()

    async def victim() -> None:
        try:
            with scope:
                got.append(await receive())
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(victim)
        assert await parked_or_done(q.id, done)
        deliver()
        hold_loop_until_left_msgrcv(q.id)
        scope.cancel()
    return got


@pytest.mark.asyncio
async def test_a_zero_length_message_taken_by_a_cancelled_receive_goes_back_to_the_kernel() -> None:
    """The one message the waiting worker does take: a zero-length one (msgrcv into a
    zero-size buffer succeeds for it). If the receive was cancelled meanwhile, it is put
    back into the queue at once, behind whatever was queued after it."""
    async with owned(MessageQueue.create()) as q:

        def deliver() -> None:
            q.send_nowait(b"", type=4)
            q.send_nowait(b"queued after it", type=4)

        got = await cancel_in_the_window(q, lambda: q.receive_message(4), deliver)
        assert got == []
        assert q.current_messages == 2  # in the kernel, not in the handle
        assert not q._stash  # white box: nothing kept in the process
        assert q.receive_message_nowait() == (4, b"queued after it")
        assert q.receive_message_nowait() == (4, b"")

        # Not cancelled: the zero-length message is the receive's result.
        async with anyio.create_task_group() as tg:
            out = Outcomes(1)
            result: list[object] = []

            async def receive() -> None:
                result.append(await q.receive_message(-5))

            tg.start_soon(out.run, receive)
            assert await parked_or_done(q.id, anyio.Event())
            q.send_nowait(b"", type=3)
            with anyio.fail_after(5):
                await out.all_in.wait()
        assert result == [(3, b"")]
        assert q.current_messages == 0


@pytest.mark.asyncio
async def test_a_zero_length_message_that_finds_the_queue_full_is_kept_for_the_next_receive() -> (
    None
):
    """A queue counts messages against max_bytes too (msg_qnum < msg_qbytes), so even a
    zero-length message can find it full. Then, and only then, the handle keeps it: the
    next matching receive gets it, and closing the handle tries once more (warning if
    it still cannot put it back)."""
    async with owned(MessageQueue.create(max_bytes=1)) as q:
        other = MessageQueue.from_id(q.id)
        try:

            def deliver_then_fill() -> None:
                q.send_nowait(b"", type=2)
                hold_loop_until_left_msgrcv(q.id)  # the worker has taken it
                q.send_nowait(b"x", type=1)  # full: qnum 1 of 1

            got = await cancel_in_the_window(
                other, lambda: other.receive_message(2), deliver_then_fill
            )
            assert got == []
            assert q.current_messages == 1
            assert other._stash == [(2, b"")]  # white box
            assert await other.receive_message(2) == (2, b"")

            assert q.receive_nowait() == b"x"
            got = await cancel_in_the_window(
                other, lambda: other.receive_message(2), deliver_then_fill
            )
            assert got == []
            assert other._stash == [(2, b"")]  # and the queue is still full at close
        finally:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                await other.aclose()
        assert [str(w.message) for w in warned if w.category is RuntimeWarning] == [
            f"SysV message queue key=IPC_PRIVATE id={q.id}: a zero-length message of type "
            "2 that a cancelled receive had taken could not be put back (the queue holds "
            "as many messages as its max_bytes allows); it is lost"
        ]
        assert q.receive_nowait() == b"x"


@pytest.mark.asyncio
async def test_a_waiting_receive_takes_nothing_until_it_returns() -> None:
    """The worker waits without taking: a message that arrives stays in the queue until
    the task takes it (so another process may take it first: the task waits again)."""
    async with owned(MessageQueue.create()) as q, MessageQueue.from_id(q.id) as thief:
        state: dict[str, int] = {}

        def deliver_and_steal() -> None:
            q.send_nowait(b"first", type=7)
            hold_loop_until_left_msgrcv(q.id)
            state["in kernel"] = q.current_messages
            assert thief.receive_message_nowait(7) == (7, b"first")

        async with anyio.create_task_group() as tg:
            out = Outcomes(1)
            result: list[object] = []

            async def receive() -> None:
                result.append(await q.receive_message(7))

            tg.start_soon(out.run, receive)
            assert await parked_or_done(q.id, anyio.Event())
            deliver_and_steal()
            # The task finds nothing to take and waits again, in msgrcv.
            assert await parked_or_done(q.id, anyio.Event())
            assert not out.got
            q.send_nowait(b"second", type=7)
            with anyio.fail_after(5):
                await out.all_in.wait()
        assert state["in kernel"] == 1
        assert result == [(7, b"second")]
        # Too large for max_size: the wait still wakes, the take refuses, the message stays.
        async with anyio.create_task_group() as tg:
            out = Outcomes(1)
            tg.start_soon(out.run, lambda: q.receive(max_size=3))
            assert await parked_or_done(q.id, anyio.Event())
            q.send_nowait(b"four")
            with anyio.fail_after(5):
                await out.all_in.wait()
        assert isinstance(out.got[0], aioipc.MessageTooLargeError), out.got
        assert q.receive_nowait() == b"four"
