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
    KIND ``mq-unlink`` / ``sem-unlink`` unlinks NAME instead (``unlinked`` on success),
    and the error line then carries the errno too:
    ``<class>|<is a PermissionError>|<errno>|<message>``.

``emfile MQ SEM NEW_MQ NEW_SEM``
    Lower the soft RLIMIT_NOFILE to a few above the descriptors open, open ``/dev/null``
    until the kernel says EMFILE, then make every aioipc call that needs a descriptor:
    create / open / open_or_create of queues and semaphores (MQ and SEM exist, NEW_MQ and
    NEW_SEM do not). Print ``limit N`` (the soft limit), then once every descriptor is
    closed again one line per call: ``<call>|<exception class>|<errno>|<message>`` (or
    ``<call>|opened``; such a handle is closed and a new name unlinked).

``sem-shm-full NAME``
    In a mount namespace of its own, mount a one-page tmpfs on /dev/shm, fill it, and
    create the aioipc ``Semaphore`` NAME there. Print ``<class>|<errno>|<message>``, or
    ``skip <why>`` if this process may not make the namespace.

The test module imports :func:`payload` and :func:`token` from this file, so both sides
agree on content.
"""

from __future__ import annotations

import contextlib
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
        if kind.endswith("-unlink"):
            _as_nobody_unlink(kind, name)
            continue
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


def _as_nobody_unlink(kind: str, name: str) -> None:
    from aioipc.posix import unlink_message_queue, unlink_semaphore

    try:
        (unlink_message_queue if kind == "mq-unlink" else unlink_semaphore)(name)
    except Exception as exc:
        errno_ = getattr(exc, "errno", None)
        _say(f"{type(exc).__name__}|{isinstance(exc, PermissionError)}|{errno_}|{exc}")
    else:
        _say("unlinked")


def _emfile(mq_name: str, sem_name: str, new_mq: str, new_sem: str) -> None:
    import errno
    import os
    import resource

    # Everything is imported first: at the limit an import could not open its files.
    import anyio
    import anyio._backends._asyncio

    from aioipc.posix import MessageQueue, Semaphore, unlink_message_queue, unlink_semaphore

    shape = {"max_messages": 2, "max_message_size": 64}
    calls = {
        "mq.create": lambda: MessageQueue.create(new_mq, **shape),
        "mq.open": lambda: MessageQueue.open(mq_name),
        "mq.open_or_create new": lambda: MessageQueue.open_or_create(new_mq, **shape),
        "mq.open_or_create existing": lambda: MessageQueue.open_or_create(mq_name, **shape),
        "sem.create": lambda: Semaphore.create(new_sem, 1),
        "sem.open": lambda: Semaphore.open(sem_name),
        "sem.open_or_create new": lambda: Semaphore.open_or_create(new_sem, 1),
        "sem.open_or_create existing": lambda: Semaphore.open_or_create(sem_name, 1),
    }
    in_use = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = in_use + 8
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    fillers: list[int] = []
    lines: list[str] = []
    opened: list[MessageQueue | Semaphore] = []
    try:
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
        for label, call in calls.items():
            try:
                opened.append(call())
            except Exception as exc:
                code = getattr(exc, "errno", None)
                lines.append(f"{label}|{type(exc).__name__}|{code}|{exc}")
            else:
                lines.append(f"{label}|opened")
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for handle in opened:
        anyio.run(handle.aclose)
    for unlink, name in ((unlink_message_queue, new_mq), (unlink_semaphore, new_sem)):
        with contextlib.suppress(FileNotFoundError):
            unlink(name)
    _say(f"limit {limit}")
    for line in lines:
        _say(line)


def _sem_shm_full(name: str) -> None:
    import ctypes
    import os

    import anyio

    from aioipc.posix import Semaphore

    libc = ctypes.CDLL(None, use_errno=True)
    ms_rec, ms_private, clone_newns = 0x4000, 1 << 18, 0x20000
    if libc.unshare(clone_newns) != 0:
        _say(f"skip unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
        return
    # Private first, so that nothing mounted here propagates back to the host.
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        _say(f"skip making / private: {os.strerror(ctypes.get_errno())}")
        return
    if libc.mount(b"none", b"/dev/shm", b"tmpfs", 0, b"size=4k") != 0:
        _say(f"skip mounting a tmpfs: {os.strerror(ctypes.get_errno())}")
        return
    filler = os.open("/dev/shm/filler", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            os.write(filler, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(filler)
    try:
        sem = Semaphore.create(name, 1)
    except Exception as exc:
        _say(f"{type(exc).__name__}|{getattr(exc, 'errno', None)}|{exc}")
    else:
        _say("created")
        sem.unlink()
        anyio.run(sem.aclose)


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
    elif mode == "emfile":
        _emfile(*rest)
    elif mode == "sem-shm-full":
        _sem_shm_full(rest[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
