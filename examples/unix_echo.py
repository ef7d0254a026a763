"""A unix socket echo server, several client processes, and who is on the other end.

The server listens on a socket file in a fresh temporary directory (mode 0600: only this
user can connect) and starts three client processes. For each connection it reads the
peer's credentials, which the kernel recorded at connect time (SO_PEERCRED) and aioipc
offers as typed attributes::

    chan.extra(IPCAttribute.peer_pid), chan.extra(IPCAttribute.peer_uid), ...

Each client's first message reports its own pid; the server checks that it matches the
kernel's. A client can claim anything in a message, but not in its credentials.

    python examples/unix_echo.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
from anyio.abc import Process

from aioipc import IPCAttribute, unix

CLIENTS = 3
TIMEOUT = 10.0


async def handle(chan: unix.UnixChannel, results: list[bool]) -> None:
    pid = chan.extra(IPCAttribute.peer_pid)
    uid, gid = chan.extra(IPCAttribute.peer_uid), chan.extra(IPCAttribute.peer_gid)
    async with chan:
        claimed = int((await chan.receive()).split()[-1])  # "i am pid N"
        match = claimed == pid and uid == os.getuid() and gid == os.getgid()
        verdict = "matches" if match else "DOES NOT MATCH"
        print(
            f"server: peer pid={pid} uid={uid} gid={gid}; says pid {claimed}: {verdict}", flush=True
        )
        async for message in chan:  # until the client closes
            await chan.send(message)
        results.append(match)


async def server(path: Path) -> int:
    procs: list[Process] = []
    results: list[bool] = []
    async with await unix.listen(path) as listener:  # aclose removes the socket file
        print(f"server {os.getpid()}: listening on {path}", flush=True)
        try:
            for _ in range(CLIENTS):
                procs.append(
                    await anyio.open_process(
                        [sys.executable, __file__, "client", str(path)],
                        stdin=None,
                        stdout=None,
                        stderr=None,
                    )
                )
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    for _ in range(CLIENTS):  # one task per client, served at once
                        tg.start_soon(handle, await listener.accept(), results)
                statuses = [await proc.wait() for proc in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    with anyio.CancelScope(shield=True):
                        await proc.wait()
    print(f"server: {CLIENTS} clients served; client exit statuses {statuses}")
    return 0 if len(results) == CLIENTS and all(results) and not any(statuses) else 1


async def client(path: str) -> None:
    me = os.getpid()
    with anyio.fail_after(TIMEOUT):
        async with await unix.connect(path) as chan:
            await chan.send(f"i am pid {me}".encode())
            for word in ("ping", "hello", f"bye from {me}"):
                await chan.send(word.encode())
                echo = (await chan.receive()).decode()
                print(f"  client {me}: sent {word!r}, echo {echo!r}", flush=True)
                if echo != word:
                    raise SystemExit(1)


def main() -> int:
    if sys.argv[1:2] == ["client"]:
        anyio.run(client, sys.argv[2])
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="aioipc-echo-"))
    try:
        status = anyio.run(server, tmp / "echo.sock")
    except TimeoutError:
        print(f"FAILED: the clients were not done within {TIMEOUT} s", file=sys.stderr)
        status = 1
    finally:
        shutil.rmtree(tmp)
    if status == 0:
        print(f"done: every peer pid matched its own report; {tmp} removed")
    return status


if __name__ == "__main__":
    sys.exit(main())
