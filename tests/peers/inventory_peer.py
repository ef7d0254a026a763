"""A process that creates or holds IPC objects, for tests/test_cli_ls.py.

Usage: ``python inventory_peer.py [--as-user UID] COMMAND ARGS...``; it prints one JSON
line when it is ready, then waits for stdin to close, then cleans up and prints
``"closed"``. Killing it (SIGKILL) instead leaves its objects behind, which is the point.

``create TAG DIR MODE``
    With aioipc, create one object of every kind with permission bits MODE (octal): a
    SysV segment, queue and semaphore set under random keys, POSIX shared memory,
    semaphore and queue named ``/TAG-KIND``, a ring ``/TAG-ring``, a topic ``/TAG-topic``
    (its handle kept open), a FIFO
    ``DIR/TAG.fifo`` and a listening socket ``DIR/TAG.sock``. Prints
    ``{"pid": ..., "sysv-shm": [id, key], ..., "posix-shm": name, ..., "fifo": path}``.
    At end of input remove them all.

``hold KIND TARGET``
    Hold an existing object, as a process using it would: attach a segment (TARGET an
    id), send one message to a queue or do one semop on a set (so the kernel records
    this process as its last user), open and map POSIX shared memory or a semaphore,
    open a POSIX queue or a FIFO, attach a ring as its sender, publish to a topic
    (``topic``) or subscribe to it with the block policy (``topic-sub``). Prints
    ``{"pid": ...}``.

``hostile TAG EVIL RAW``
    Names a hostile user would pick (run it ``--as-user``): POSIX shared memory
    ``/TAG EVIL`` made with aioipc, one named by the bytes ``/TAG RAW`` (not UTF-8, made
    as shm_open makes it: a file in /dev/shm), and a FIFO ``TAG EVIL.fifo`` made with
    aioipc in a new directory of /dev/shm, recorded in this user's default registry (in
    /dev/shm too) so that root's ``aioipc ls`` lists it. Prints ``{"pid": ..., "shm":
    name, "raw": name, "fifo": path}``; at end of input removes whatever is still there.

``--as-user UID`` drops to that uid and gid after every import (the venv's interpreter
lives under /root, which another uid cannot read), and sets no registry: the objects
belong to another user, whose registry root does not read.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import tempfile

import anyio
import anyio._backends._asyncio  # anyio.run would import its backend lazily
import anyio.to_thread

from aioipc import fifo, posix, pubsub, shm, sysv, unix
from aioipc.errors import IPCNotFoundError

_keep = anyio._backends._asyncio


def _key() -> int:
    return random.randint(0x10000000, 0x7FFFFFFF)


async def create(tag: str, directory: str, mode: int) -> None:
    seg = sysv.SharedMemory.create(_key(), 8192, mode=mode)
    msgq = sysv.MessageQueue.create(_key(), mode=mode)
    sems = sysv.SemaphoreSet.create(_key(), 3, values=[0, 1, 2], mode=mode)
    pshm = posix.SharedMemory.create(f"/{tag}-shm", 4096, mode=mode)
    psem = posix.Semaphore.create(f"/{tag}-sem", 2, mode=mode)
    pmq = posix.MessageQueue.create(f"/{tag}-mq", mode=mode)
    ring = shm.ShmReceiver.create(f"/{tag}-ring", 4096, mode=mode)
    topic = pubsub.Topic.create(f"/{tag}-topic", 4096, max_subscribers=4, mode=mode)
    fifo_path = os.path.join(directory, f"{tag}.fifo")
    fifo.create(fifo_path, mode)
    listener = await unix.listen(os.path.join(directory, f"{tag}.sock"), mode=mode)
    await msgq.send(b"queued")
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "sysv-shm": [seg.id, seg.key],
                "sysv-msg": [msgq.id, msgq.key],
                "sysv-sem": [sems.id, sems.key],
                "posix-shm": pshm.name,
                "posix-sem": psem.name,
                "posix-mq": pmq.name,
                "shm-ring": ring.name,
                "topic": topic.name,
                "fifo": fifo_path,
                "unix-socket": os.path.join(directory, f"{tag}.sock"),
            }
        ),
        flush=True,
    )
    await anyio.to_thread.run_sync(sys.stdin.read)
    seg.close()
    seg.remove()
    for obj in (msgq, sems):
        obj.remove()
        await obj.aclose()
    pshm.close()
    pshm.unlink()
    psem.unlink()
    await psem.aclose()
    pmq.unlink()
    await pmq.aclose()
    ring.close()  # the creating end removes the ring
    topic.unlink()  # a topic's creator does not: it outlives its ends
    topic.close()
    fifo.unlink(fifo_path)
    await listener.aclose()  # and the socket file
    print(json.dumps("closed"), flush=True)


async def hold(kind: str, target: str) -> None:
    held: list[object] = []
    if kind == "sysv-shm":
        held.append(sysv.SharedMemory.from_id(int(target)))
    elif kind == "sysv-msg":
        q = sysv.MessageQueue.from_id(int(target))
        await q.send(b"from the holder")
        held.append(q)
    elif kind == "sysv-sem":
        s = sysv.SemaphoreSet.from_id(int(target), undo=False)
        await s.op([(0, 1)])
        held.append(s)
    elif kind == "posix-shm":
        held.append(posix.SharedMemory.open(target))
    elif kind == "posix-sem":
        held.append(posix.Semaphore.open(target))
    elif kind == "posix-mq":
        held.append(posix.MessageQueue.open(target))
    elif kind == "shm-ring":
        held.append(shm.ShmSender.open(target))
    elif kind == "topic":
        held.append(pubsub.publisher(target))
    elif kind == "topic-sub":
        held.append(await pubsub.subscribe(target, policy="block"))
    elif kind == "fifo":
        held.append(os.open(target, os.O_RDWR | os.O_NONBLOCK))
    else:
        raise SystemExit(f"cannot hold {kind}")
    print(json.dumps({"pid": os.getpid()}), flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)
    for obj in held:
        if isinstance(obj, int):
            os.close(obj)
        elif hasattr(obj, "aclose"):
            await obj.aclose()
        else:
            obj.close()  # type: ignore[attr-defined]
    print(json.dumps("closed"), flush=True)


async def hostile(tag: str, evil: str, raw: bytes) -> None:
    # The default registry (in /dev/shm, as for any user), not the suite's: root reads
    # every user's registry there, and finds the FIFO through it.
    os.environ.pop("AIOIPC_REGISTRY", None)
    region = posix.SharedMemory.create(f"/{tag}{evil}", 64)
    region.close()
    raw_name = b"/" + tag.encode() + raw
    os.close(os.open(b"/dev/shm" + raw_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    directory = tempfile.mkdtemp(prefix="aioipc-hostile-", dir="/dev/shm")
    fifo_path = os.path.join(directory, f"{tag}{evil}.fifo")
    fifo.create(fifo_path)
    info = {"pid": os.getpid(), "shm": region.name, "raw": os.fsdecode(raw_name), "fifo": fifo_path}
    print(json.dumps(info), flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)
    with contextlib.suppress(IPCNotFoundError):
        posix.unlink_shared_memory(region.name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(b"/dev/shm" + raw_name)
    with contextlib.suppress(IPCNotFoundError, FileNotFoundError):
        fifo.unlink(fifo_path)
    os.rmdir(directory)
    print(json.dumps("closed"), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "--as-user":
        uid = int(argv[1])
        os.environ["AIOIPC_REGISTRY"] = "off"
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        argv = argv[2:]
    if argv[0] == "create":
        anyio.run(create, argv[1], argv[2], int(argv[3], 8))
    elif argv[0] == "hostile":
        anyio.run(hostile, argv[1], argv[2], os.fsencode(argv[3]))
    elif argv[0] == "hold":
        anyio.run(hold, argv[1], argv[2])
    else:
        raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
