"""Peer process for tests/test_unix.py: the other end of a unix socket, run as a real process.

Usage: ``python unix_peer.py COMMAND PATH [ARGS...]``. Every command prints one line per
step on stdout (flushed), so the test can follow it without sleeping.

Commands:

``echo PATH KIND``
    Connect, print ``connected``, send ``hello``, then echo every message back until
    ``bye`` or end of stream; print ``done``.
``client PATH ID N``
    Connect (stream), send ``ID:i`` for i in 0..N-1 and print each reply; print ``done``.
``hold PATH KIND``
    Print the pid, connect, print ``connected``, then wait for stdin to close.
``fds PATH KIND``
    Connect, print ``connected``; for each message received with fds, write
    ``<message>#<index>`` through each fd, close them, reply ``wrote <count>``; stop at
    end of stream; print ``done``.
``send-exit PATH KIND``
    Connect, send ``last``, close, exit 0.
"""

from __future__ import annotations

import os
import sys

import anyio

from aioipc import unix


def say(text: str) -> None:
    print(text, flush=True)


async def echo(path: str, kind: str) -> None:
    async with await unix.connect(path, kind) as chan:
        say("connected")
        await chan.send(b"hello")
        while True:
            try:
                msg = await chan.receive()
            except anyio.EndOfStream:
                break
            if msg == b"bye":
                break
            await chan.send(msg)
    say("done")


async def client(path: str, ident: str, n: str) -> None:
    async with await unix.connect(path) as chan:
        for i in range(int(n)):
            await chan.send(f"{ident}:{i}".encode())
            say((await chan.receive()).decode())
    say("done")


async def hold(path: str, kind: str) -> None:
    say(str(os.getpid()))
    async with await unix.connect(path, kind):
        say("connected")
        await anyio.to_thread.run_sync(sys.stdin.read)


async def fds(path: str, kind: str) -> None:
    async with await unix.connect(path, kind) as chan:
        say("connected")
        while True:
            try:
                data, received = await chan.receive_fds()
            except anyio.EndOfStream:
                break
            for index, fd in enumerate(received):
                os.write(fd, data + b"#%d" % index)
                os.close(fd)
            await chan.send(b"wrote %d" % len(received))
    say("done")


async def send_exit(path: str, kind: str) -> None:
    chan = await unix.connect(path, kind)
    await chan.send(b"last")
    await chan.aclose()


COMMANDS = {"echo": echo, "client": client, "hold": hold, "fds": fds, "send-exit": send_exit}


def main() -> None:
    command, *args = sys.argv[1:]
    anyio.run(COMMANDS[command], *args)


if __name__ == "__main__":
    main()
