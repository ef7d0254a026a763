"""A System V message queue peer for tests/test_sysv_mq.py, run as a real process.

Usage: ``python sysv_peer.py [--as-user UID] COMMAND ARGS...``. Every command prints one
line per step on stdout (flushed), so the test can follow it without sleeping.

``--as-user UID`` drops to that uid and gid (and no supplementary groups) after the
interpreter has started, before any System V call: the venv's interpreter lives under
/root, which another uid cannot exec, so the child starts as root and then gives up its
privileges (capabilities included: a setuid away from 0 clears them all).

Commands (``QID`` is a kernel id, ``KEY`` a key; numbered messages are ``b"%d" % i``):

``send QID START COUNT``
    With aioipc: send messages START..START+COUNT-1 (type 1), print ``done``.
``bursts QID``
    With aioipc: print ``ready``; for every ``A B`` line on stdin, send messages A..B-1
    at once; stop at end of stdin; print ``done``.
``recv QID COUNT``
    With aioipc: print ``ready``, receive COUNT messages and check that they are
    0..COUNT-1 in order; print ``ok COUNT`` (or ``mismatch ...`` and exit 1).
``sysv-send KEY COUNT``
    With sysv_ipc (not aioipc): send messages 0..COUNT-1 of type 1, print ``done``.
``sysv-recv KEY COUNT``
    With sysv_ipc: print ``ready``, receive COUNT messages and check them as ``recv``;
    print ``ok COUNT``.
``open-send KEY``
    Open the queue by key and send one message; print ``sent`` or ``error <what>``.
``id-send QID``
    Get a handle by id and send one message; print ``sent`` or ``error <what>``.
``recv-then-send QID``
    Get a handle by id, ``receive_nowait`` one message and print ``received <data>``
    (or ``error <what>``), then send one and print ``sent`` or ``error <what>``.

``window QID ROUNDS``
    With aioipc, hitting the window of a cancelled receive on purpose, ROUNDS times: start
    a receive, wait until its worker thread is blocked in ``msgrcv``, then, with the event
    loop held so that the receiving task cannot run, send message ``i`` (from this
    process), wait until the worker has left ``msgrcv`` (it has seen the message) and
    cancel the receive. A receive that returns prints ``got <data>`` (and a new one is
    started); a cancelled one prints ``cancelled``. Then ``done``; block on stdin.
``random-cancel QID SEED STOP``
    With aioipc: receive with random tiny timeouts, printing ``got <data>`` for every
    message; after STOP cancelled receives print ``stop`` and block on stdin.

``<what>`` is ``ClassName is_permission_error message``.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time

# Everything is imported up front: after --as-user drops root, the interpreter's own
# library (under /root) can no longer be read, so a late import would fail.
import anyio
import anyio._backends._asyncio  # anyio.run would import its backend lazily
import sysv_ipc

from aioipc.sysv import MessageQueue


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def describe(exc: BaseException) -> str:
    return f"error {type(exc).__name__} {isinstance(exc, PermissionError)} {exc}"


#: msgrcv's system call number, by machine.
MSGRCV = {"x86_64": 70, "aarch64": 188}.get(platform.machine())


def threads_in_msgrcv(qid: int) -> int:
    """Threads of this process blocked in msgrcv on queue ``qid``
    (/proc/self/task/*/syscall: the number, then the arguments in hex)."""
    if MSGRCV is None:
        raise RuntimeError(f"msgrcv's system call number on {platform.machine()} is not known")
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            continue
        if len(fields) >= 2 and fields[0] == str(MSGRCV) and int(fields[1], 16) == qid:
            n += 1
    return n


async def parked_or_done(qid: int, done: anyio.Event, seconds: float = 10) -> bool:
    """Wait until a worker is blocked in msgrcv on ``qid`` (True) or ``done`` is set
    (False). Kernel state with no event to wait on: polled, under a deadline."""
    with anyio.fail_after(seconds):
        while not done.is_set():
            if threads_in_msgrcv(qid):
                return True
            await anyio.sleep(0.0005)
    return False


def hold_loop_until_left_msgrcv(qid: int, seconds: float = 10) -> None:
    """Block the event loop (on purpose: the receiving task must not run) until no
    thread of this process is in msgrcv on ``qid`` any more."""
    deadline = time.monotonic() + seconds
    while threads_in_msgrcv(qid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"a worker stayed in msgrcv on queue {qid}")
        time.sleep(0.0001)


def drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    assert os.getuid() == os.geteuid() == uid


async def send(qid: int, start: int, count: int) -> None:
    async with MessageQueue.from_id(qid) as q:
        for i in range(start, start + count):
            await q.send(b"%d" % i)
    say("done")


async def bursts(qid: int) -> None:
    async with MessageQueue.from_id(qid) as q:
        say("ready")
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            a, b = map(int, line.split())
            for i in range(a, b):
                await q.send(b"%d" % i)
    say("done")


async def recv(qid: int, count: int) -> None:
    async with MessageQueue.from_id(qid) as q:
        say("ready")
        for i in range(count):
            got = await q.receive()
            if got != b"%d" % i:
                say(f"mismatch at {i}: {got!r}")
                raise SystemExit(1)
    say(f"ok {count}")


def sysv_send(key: int, count: int) -> None:
    q = sysv_ipc.MessageQueue(key)
    for i in range(count):
        q.send(b"%d" % i, True, 1)
    say("done")


def sysv_recv(key: int, count: int) -> None:
    q = sysv_ipc.MessageQueue(key)
    say("ready")
    for i in range(count):
        got, mtype = q.receive()
        if (got, mtype) != (b"%d" % i, 1):
            say(f"mismatch at {i}: {got!r} type {mtype}")
            raise SystemExit(1)
    say(f"ok {count}")


async def try_send(how: str, ident: int) -> None:
    try:
        q = MessageQueue.open(ident) if how == "key" else MessageQueue.from_id(ident)
    except Exception as exc:
        say(describe(exc))
        return
    async with q:
        try:
            await q.send(b"from another uid")
        except Exception as exc:
            say(describe(exc))
        else:
            say("sent")


async def recv_then_send(qid: int) -> None:
    async with MessageQueue.from_id(qid) as q:
        try:
            say(f"received {q.receive_nowait().decode()}")
        except Exception as exc:
            say(describe(exc))
        try:
            await q.send(b"from another uid")
        except Exception as exc:
            say(describe(exc))
        else:
            say("sent")


async def window_round(q: MessageQueue, qid: int, message: bytes) -> tuple[list[bytes], bool]:
    """One receive, cancelled in the window if it has to wait: (what it returned, whether
    ``message`` was sent)."""
    scope = anyio.CancelScope()
    got: list[bytes] = []
    done = anyio.Event()
    sent = False

    async def receive() -> None:
        try:
            with scope:
                got.append(await q.receive())
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        if await parked_or_done(qid, done):
            # From here to scope.cancel() nothing awaits: the worker sees the message
            # while its task cannot run, and the cancellation is there before the task
            # learns what the worker did.
            q.send_nowait(message)
            sent = True
            hold_loop_until_left_msgrcv(qid)
            scope.cancel()
    return got, sent


async def window(qid: int, rounds: int) -> None:
    async with MessageQueue.from_id(qid) as q:
        sent = 0
        while sent < rounds:
            got, was_sent = await window_round(q, qid, b"%d" % sent)
            sent += was_sent
            say(f"got {got[0].decode()}" if got else "cancelled")
        say("done")
        await anyio.to_thread.run_sync(sys.stdin.readline)


async def random_cancel(qid: int, seed: int, stop: int) -> None:
    rng = random.Random(seed)
    timeouts = [0, 1e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3]
    cancelled = 0
    async with MessageQueue.from_id(qid) as q:
        while cancelled < stop:
            with anyio.move_on_after(rng.choice(timeouts)):
                data = await q.receive()
                say(f"got {data.decode()}")
                continue
            cancelled += 1
        say("stop")
        await anyio.to_thread.run_sync(sys.stdin.readline)


def main(argv: list[str]) -> None:
    if argv[0] == "--as-user":
        drop_privileges(int(argv[1]))
        argv = argv[2:]
    command, *args = argv
    nums = [int(a) for a in args]

    if command == "send":
        anyio.run(send, nums[0], nums[1], nums[2])
    elif command == "bursts":
        anyio.run(bursts, nums[0])
    elif command == "recv":
        anyio.run(recv, nums[0], nums[1])
    elif command == "sysv-send":
        sysv_send(nums[0], nums[1])
    elif command == "sysv-recv":
        sysv_recv(nums[0], nums[1])
    elif command == "open-send":
        anyio.run(try_send, "key", nums[0])
    elif command == "id-send":
        anyio.run(try_send, "id", nums[0])
    elif command == "recv-then-send":
        anyio.run(recv_then_send, nums[0])
    elif command == "window":
        anyio.run(window, nums[0], nums[1])
    elif command == "random-cancel":
        anyio.run(random_cancel, nums[0], nums[1], nums[2])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
