"""A semaphore peer process for tests/test_semaphores.py.  Run as ``python sem_peer.py MODE ...``.

Every mode prints lines the test waits for and, where it says so, blocks on stdin: the
test decides when the child goes on (a line) or ends (end of input), or kills it.

``take ID UNDO``
    Open the set with kernel id ID (``undo`` = UNDO == "1"), print ``ready``, take one
    from semaphore 0 with ``op`` (waiting if need be), print ``took``; then block on stdin.

``signal ID N``
    Open semaphore ID as :class:`aioipc.sysv.Semaphore`, ``release()`` it N times (this
    handle holds nothing, so without SEM_UNDO), print ``released``; block on stdin.

``mixed ID``
    As a Semaphore: ``acquire()`` once, ``release()`` twice (the first gives back what it
    took, the second is a signal), print ``done``; block on stdin.

``paced ID K SEED``
    As a Semaphore: print ``ready``, wait for a ``go`` line, then ``release()`` K times,
    pausing 0..2 ms between releases (pacing only: the test waits for lines), print
    ``done``; block on stdin.

``hold KEY``
    Open the :class:`aioipc.Lock` under KEY, acquire it, print ``held``; block on stdin.
    A ``release`` line releases it (printing ``released``) and blocks again.

``counter KEY PATH ROUNDS TASKS``
    Open the Lock under KEY, print ``ready``, wait for ``go``; then TASKS tasks each do
    ROUNDS times: under the lock read the integer in PATH, yield, write it back plus one.
    Print ``done``.
"""

from __future__ import annotations

import random
import sys
import time

import anyio

from aioipc import Lock
from aioipc.sysv import Semaphore, SemaphoreSet


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _semaphore(sid: int) -> Semaphore:
    s = Semaphore.from_id(sid)
    assert isinstance(s, Semaphore)
    return s


def _block() -> str:
    return sys.stdin.readline().strip()


async def _take(sid: int, undo: bool) -> None:
    s = SemaphoreSet.from_id(sid, undo=undo)
    try:
        _say("ready")
        await s.op([(0, -1)])
        _say("took")
        _block()
    finally:
        await s.aclose()


async def _signal(sid: int, n: int) -> None:
    s = _semaphore(sid)
    try:
        for _ in range(n):
            s.release()
        _say("released")
        _block()
    finally:
        await s.aclose()


async def _mixed(sid: int) -> None:
    s = _semaphore(sid)
    try:
        await s.acquire()
        s.release()
        s.release()
        _say("done")
        _block()
    finally:
        await s.aclose()


async def _paced(sid: int, k: int, seed: int) -> None:
    rnd = random.Random(seed)
    s = _semaphore(sid)
    try:
        _say("ready")
        if _block() != "go":
            raise SystemExit(3)
        for _ in range(k):
            s.release()
            time.sleep(rnd.uniform(0, 0.002))
        _say("done")
        _block()
    finally:
        await s.aclose()


async def _hold(key: int) -> None:
    lock = Lock.open(key)
    try:
        await lock.acquire()
        _say("held")
        while True:
            line = _block()
            if line != "release":
                break
            lock.release()
            _say("released")
    finally:
        await lock.aclose()


async def _counter(key: int, path: str, rounds: int, tasks: int) -> None:
    lock = Lock.open(key)

    async def work() -> None:
        for _ in range(rounds):
            async with lock:
                with open(path) as f:
                    value = int(f.read())
                await anyio.lowlevel.checkpoint()  # let the others try meanwhile
                with open(path, "w") as f:
                    f.write(str(value + 1))

    try:
        _say("ready")
        if _block() != "go":
            raise SystemExit(3)
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(work)
        _say("done")
    finally:
        await lock.aclose()


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode == "take":
        anyio.run(_take, int(rest[0]), rest[1] == "1")
    elif mode == "signal":
        anyio.run(_signal, int(rest[0]), int(rest[1]))
    elif mode == "mixed":
        anyio.run(_mixed, int(rest[0]))
    elif mode == "paced":
        anyio.run(_paced, int(rest[0]), int(rest[1]), int(rest[2]))
    elif mode == "hold":
        anyio.run(_hold, int(rest[0]))
    elif mode == "counter":
        anyio.run(_counter, int(rest[0]), rest[1], int(rest[2]), int(rest[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
