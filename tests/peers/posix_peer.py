"""A POSIX IPC peer process for tests/test_posix.py.  Run as ``python posix_peer.py MODE ...``.

Every mode but ``as-nobody`` prints ``ready`` once its objects are open, so the test
knows when the peer is in place. Most modes use ``posix_ipc`` directly (blocking calls,
no aioipc), so the tests check aioipc against an independent implementation of the other
side; the ``*-aio`` modes use aioipc in the child too.

Modes:

``mq-send NAME START COUNT``
    Blocking ``posix_ipc`` sends of ``payload(i)`` for i in START..START+COUNT-1
    (priority 0), then print ``done``.

``mq-recv NAME COUNT|end``
    Blocking ``posix_ipc`` receives: COUNT messages, or until a message ``b"end"``
    (which is not recorded). Then print one line: the messages as space-separated
    ``index:crc32:priority`` tokens, where index is the number the message starts
    with (``payload`` format).

``mq-recv-aio NAME COUNT``
    As ``mq-recv NAME COUNT``, but with ``aioipc.posix.MessageQueue`` under anyio.

``mq-worker NAME``
    An aioipc receiver that competes with other workers: receive until ``b"stop"``,
    then print the indices it got, space-separated, on one line.

``sem-pingpong PING PONG ROUNDS``
    aioipc semaphores: ROUNDS times ``await ping.acquire(); pong.release()``, then print
    ``done ROUNDS``.

``sem-release NAME K``
    Blocking ``posix_ipc``: release K permits, pausing a random 0-0.5 ms between them
    (pacing only, so releases land while the test's acquires wait and get cancelled;
    nothing waits on it), then print ``done``.

``as-nobody KIND:NAME ...``
    Import aioipc as root, drop to uid/gid 65534 (nobody), then for each argument open
    the aioipc ``MessageQueue`` (KIND ``mq``, read-only) or ``Semaphore`` (KIND ``sem``)
    NAME and print one line: ``opened <what it got>`` (the queue's first message, or the
    semaphore's value), or ``<exception class>|<is a PermissionError>|<message>``.

The test module imports :func:`payload` and :func:`token` from this file, so both sides
agree on content.
"""

from __future__ import annotations

import random
import sys
import time
import zlib


def payload(index: int) -> bytes:
    """Message ``index``: its decimal number, ``|``, then 0-199 bytes derived from it."""
    body = bytes((index * 7 + k) % 251 for k in range(index % 200))
    return b"%d|" % index + body


def index_of(data: bytes) -> int:
    return int(data.split(b"|", 1)[0])


def token(data: bytes, priority: int) -> str:
    """How a peer reports one received message."""
    return f"{index_of(data)}:{zlib.crc32(data)}:{priority}"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _mq_send(name: str, start: int, count: int) -> None:
    import posix_ipc

    mq = posix_ipc.MessageQueue(name, read=False, write=True)
    try:
        _say("ready")
        for i in range(start, start + count):
            mq.send(payload(i), None, 0)
    finally:
        mq.close()
    _say("done")


def _mq_recv(name: str, until: str) -> None:
    import posix_ipc

    mq = posix_ipc.MessageQueue(name, read=True, write=False)
    tokens: list[str] = []
    try:
        _say("ready")
        while until == "end" or len(tokens) < int(until):
            data, priority = mq.receive()
            if until == "end" and data == b"end":
                break
            tokens.append(token(data, priority))
    finally:
        mq.close()
    _say(" ".join(tokens))


def _mq_recv_aio(name: str, count: int) -> None:
    import anyio

    from aioipc.posix import MessageQueue

    async def main() -> None:
        tokens: list[str] = []
        async with MessageQueue.open(name, read=True, write=False) as mq:
            _say("ready")
            with anyio.fail_after(20):
                for _ in range(count):
                    data, priority = await mq.receive_message()
                    tokens.append(token(data, priority))
        _say(" ".join(tokens))

    anyio.run(main)


def _mq_worker(name: str) -> None:
    import anyio

    from aioipc.posix import MessageQueue

    async def main() -> None:
        got: list[str] = []
        async with MessageQueue.open(name, read=True, write=False) as mq:
            _say("ready")
            with anyio.fail_after(20):
                async for data in mq:
                    if data == b"stop":
                        break
                    got.append(str(index_of(data)))
        _say(" ".join(got))

    anyio.run(main)


def _sem_pingpong(ping_name: str, pong_name: str, rounds: int) -> None:
    import anyio

    from aioipc.posix import Semaphore

    async def main() -> None:
        ping = Semaphore.open(ping_name)
        pong = Semaphore.open(pong_name)
        try:
            _say("ready")
            with anyio.fail_after(20):
                for _ in range(rounds):
                    await ping.acquire()
                    pong.release()
        finally:
            await ping.aclose()
            await pong.aclose()
        _say(f"done {rounds}")

    anyio.run(main)


def _sem_release(name: str, k: int) -> None:
    import posix_ipc

    sem = posix_ipc.Semaphore(name)
    try:
        _say("ready")
        rnd = random.Random(k)
        for _ in range(k):
            sem.release()
            time.sleep(rnd.uniform(0, 0.0005))
    finally:
        sem.close()
    _say("done")


def _as_nobody(targets: list[str]) -> None:
    import os

    # Everything is imported while still root: the interpreter's own library lives under
    # /root, which nobody cannot read, so a late import would fail.
    import anyio
    import anyio._backends._asyncio

    from aioipc.posix import MessageQueue, Semaphore

    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    for target in targets:
        kind, name = target.split(":", 1)
        handle: MessageQueue | Semaphore
        try:
            if kind == "mq":
                handle = MessageQueue.open(name, read=True, write=False)
            else:
                handle = Semaphore.open(name)
        except Exception as exc:
            _say(f"{type(exc).__name__}|{isinstance(exc, PermissionError)}|{exc}")
            continue
        try:
            if isinstance(handle, MessageQueue):
                got = handle.receive_nowait().decode()
            else:
                got = str(handle.value)
        finally:
            anyio.run(handle.aclose)
        _say(f"opened {got}")


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode == "mq-send":
        _mq_send(rest[0], int(rest[1]), int(rest[2]))
    elif mode == "mq-recv":
        _mq_recv(rest[0], rest[1])
    elif mode == "mq-recv-aio":
        _mq_recv_aio(rest[0], int(rest[1]))
    elif mode == "mq-worker":
        _mq_worker(rest[0])
    elif mode == "sem-pingpong":
        _sem_pingpong(rest[0], rest[1], int(rest[2]))
    elif mode == "sem-release":
        _sem_release(rest[0], int(rest[1]))
    elif mode == "as-nobody":
        _as_nobody(rest)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
