"""A shared-memory region peer for tests/test_regions.py, run as a real process.

Usage: ``python region_peer.py [--as-user UID] COMMAND ARGS...``. Every command prints one
line per step on stdout (flushed), so the test can follow it without sleeping. Bytes
travel as lowercase hex, ``-`` standing for none.

``--as-user UID`` drops to that uid and gid (and no supplementary groups) after every
import: the venv's interpreter and its library live under /root, which another uid
cannot read, so the child starts as root and then gives up its privileges.

Commands:

``serve``
    With aioipc: print ``ready``, then answer one line per stdin line. At end of input
    close the region (if one is open) and exit 0.

    * ``open KIND TARGET [ro]`` -> ``opened SIZE READONLY`` or ``error <what>``. KIND is
      ``sysv`` (TARGET a key), ``sysvid`` (a shmid), ``posix`` (a name) or ``file``
      (a path); ``ro`` opens read-only.
    * ``create KIND TARGET SIZE MODE`` -> ``created SIZE ID`` or ``error <what>``: KIND
      ``sysv`` (TARGET a key, 0 for IPC_PRIVATE; ID the shmid) or ``posix`` (ID ``-``);
      MODE octal. The new region becomes the one ``read`` and ``write`` use.
    * ``read OFF LEN`` -> ``data HEX``
    * ``write OFF HEX`` -> ``wrote LEN`` or ``error <what>``
    * ``close`` -> ``closed``

``anon PATH``
    With aioipc: connect to the unix stream socket PATH and receive one message with one
    fd: the message is ``OFF HEX``. Take the fd as ``AnonymousMemory.from_fd``, write HEX
    at OFF, and send back ``size SIZE head HEX32`` (the region's size, and the hex of its
    first 32 bytes as this process sees them); close the region; print ``done``.

``stdlib NAME``
    With ``multiprocessing.shared_memory`` (not aioipc): attach to the existing POSIX
    object NAME, print ``data HEX`` of its first 16 bytes, close it and exit. The
    standard library registers it with the resource tracker, which unlinks it and warns
    when this process exits: the contrast for aioipc, which must not.

``<what>`` is ``ClassName is_permission_error message``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys

# Everything is imported up front: after --as-user drops root, the interpreter's own
# library (under /root) can no longer be read, so a late import would fail.
import anyio
import anyio._backends._asyncio  # anyio.run would import its backend lazily

import aioipc
from aioipc import AnonymousMemory, MappedFile, posix, sysv, unix

_keep = (ctypes, ctypes.util, mmap, aioipc)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def describe(exc: BaseException) -> str:
    return f"error {type(exc).__name__} {isinstance(exc, PermissionError)} {exc}"


def hx(data: bytes) -> str:
    return data.hex() or "-"


def unhex(text: str) -> bytes:
    return b"" if text == "-" else bytes.fromhex(text)


def drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    assert os.getuid() == os.geteuid() == uid


def open_region(kind: str, target: str, read_only: bool) -> object:
    if kind == "sysv":
        return sysv.SharedMemory.open(int(target), read_only=read_only)
    if kind == "sysvid":
        return sysv.SharedMemory.from_id(int(target), read_only=read_only)
    if kind == "posix":
        return posix.SharedMemory.open(target, read_only=read_only)
    if kind == "file":
        return MappedFile.open(target, read_only=read_only)
    raise SystemExit(f"unknown region kind {kind!r}")


def serve() -> None:
    region = None
    say("ready")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "open":
            try:
                region = open_region(args[0], args[1], args[2:] == ["ro"])
            except Exception as exc:
                say(describe(exc))
            else:
                say(f"opened {region.size} {region.read_only}")  # type: ignore[attr-defined]
        elif cmd == "create":
            kind, target, size, mode = args[0], args[1], int(args[2]), int(args[3], 8)
            try:
                if kind == "sysv":
                    region = sysv.SharedMemory.create(int(target), size, mode=mode)
                    ident = str(region.id)
                else:
                    region = posix.SharedMemory.create(target, size, mode=mode)
                    ident = "-"
            except Exception as exc:
                say(describe(exc))
            else:
                say(f"created {region.size} {ident}")
        elif cmd == "read":
            off, length = int(args[0]), int(args[1])
            say("data " + hx(bytes(region.buf[off : off + length])))  # type: ignore[attr-defined]
        elif cmd == "write":
            off, data = int(args[0]), unhex(args[1])
            try:
                region.buf[off : off + len(data)] = data  # type: ignore[attr-defined]
            except Exception as exc:
                say(describe(exc))
            else:
                say(f"wrote {len(data)}")
        elif cmd == "close":
            region.close()  # type: ignore[attr-defined]
            region = None
            say("closed")
        else:
            raise SystemExit(f"unknown command {cmd!r}")
    if region is not None:
        region.close()  # type: ignore[attr-defined]


async def anon(path: str) -> None:
    async with await unix.connect(path) as chan:
        data, fds = await chan.receive_fds()
        if len(fds) != 1:
            raise SystemExit(f"expected one fd, got {len(fds)}")
        off_text, hex_text = data.decode().split()
        with AnonymousMemory.from_fd(fds[0]) as region:
            payload = unhex(hex_text)
            off = int(off_text)
            region.buf[off : off + len(payload)] = payload
            head = bytes(region.buf[:32])
            await chan.send(f"size {region.size} head {hx(head)}".encode())
    say("done")


def stdlib(name: str) -> None:
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=name)
    try:
        say("data " + hx(bytes(shm.buf[:16])))
    finally:
        shm.close()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--as-user"]:
        drop_privileges(int(argv[1]))
        argv = argv[2:]
    command, *args = argv
    if command == "serve":
        serve()
    elif command == "anon":
        anyio.run(anon, *args)
    elif command == "stdlib":
        stdlib(*args)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
