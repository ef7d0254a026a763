"""Shared by the pub/sub test modules: fresh topic names that are removed afterwards,
both anyio backends, child processes, self-checking numbered messages."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import uuid4

import anyio
import pytest

from aioipc import IPCNotFoundError, pubsub

from ._peer import Peer
from ._procs import child_env

SHM = "/dev/shm"


def topic_files(name: str) -> list[str]:
    base = os.path.basename(name)
    return sorted(e for e in os.listdir(SHM) if e == base or e.startswith(base + "."))


@contextlib.contextmanager
def fresh_topic_name() -> Iterator[str]:
    """A fresh topic name; afterwards the topic is unlinked, and the test fails if any
    of its files was still there (the test's own ``unlink`` should have removed them).
    Each test module makes it its ``topic_name`` fixture."""
    name = f"/aioipc-test-topic-{uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(IPCNotFoundError):
        pubsub.unlink(name)
    left = topic_files(name)
    for entry in left:
        os.unlink(os.path.join(SHM, entry))
    assert not left, f"topic files left behind: {left}"


def on_both_backends(test: Callable[..., Awaitable[None]]) -> Any:
    """Run an async test on asyncio and on trio (a sync test with a ``backend`` param)."""
    signature = inspect.signature(test)
    backend = inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY)

    def run(*args: Any, backend: str, **kwargs: Any) -> None:
        anyio.run(functools.partial(test, *args, **kwargs), backend=backend)

    run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), backend]
    )
    return pytest.mark.parametrize("backend", ["asyncio", "trio"])(run)


def on_asyncio(test: Callable[..., Awaitable[None]]) -> Any:
    """Run an async test on asyncio only (process-heavy tests: the backend is not what
    they test, and each run costs seconds)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        anyio.run(functools.partial(test, *args, **kwargs))

    return run


def numbered(tag: int, n: int, size: int = 32) -> bytes:
    """Message ``n`` of publisher ``tag``: 16 bytes of header (tag, n, body length,
    crc32 of the body) and a body derived from them, so a torn copy fails
    :func:`check`."""
    body_len = max(0, size - 16)
    body = bytes((tag * 31 + n * 7 + i) & 0xFF for i in range(body_len))
    return (
        tag.to_bytes(4, "little")
        + n.to_bytes(4, "little")
        + body_len.to_bytes(4, "little")
        + zlib.crc32(body).to_bytes(4, "little")
        + body
    )


def check(msg: bytes) -> tuple[int, int]:
    """``(tag, n)`` of a message made by :func:`numbered`; fails the test if torn."""
    assert len(msg) >= 16, f"a {len(msg)}-byte message: torn"
    tag = int.from_bytes(msg[0:4], "little")
    n = int.from_bytes(msg[4:8], "little")
    body_len = int.from_bytes(msg[8:12], "little")
    crc = int.from_bytes(msg[12:16], "little")
    assert len(msg) == 16 + body_len, f"message {tag}/{n}: {len(msg)} bytes, says {body_len}"
    assert zlib.crc32(msg[16:]) == crc, f"message {tag}/{n}: body does not match its crc"
    assert msg == numbered(tag, n, len(msg)), f"message {tag}/{n}: not what was published"
    return tag, n


#: What a child needs to make and check numbered messages (pasted into its code).
CHILD_PRELUDE = textwrap.dedent(
    """
    import os, sys, zlib, anyio
    from aioipc import pubsub

    def numbered(tag, n, size=32):
        body_len = max(0, size - 16)
        body = bytes((tag * 31 + n * 7 + i) & 0xFF for i in range(body_len))
        return (tag.to_bytes(4, "little") + n.to_bytes(4, "little")
                + body_len.to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little")
                + body)

    def say(line):
        print(line, flush=True)
    """
)


@contextlib.asynccontextmanager
async def spawn_child(code: str, *args: object) -> AsyncIterator[Peer]:
    """A Python child running ``CHILD_PRELUDE + code`` with the suite's aioipc; killed if
    it still runs on the way out, always reaped."""
    cmd = [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), *map(str, args)]
    proc = await anyio.open_process(cmd, env=child_env())
    try:
        yield Peer(proc)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.aclose()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (from /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def drain_nowait(sub: pubsub.Subscriber) -> list[bytes]:
    """Every message ``sub`` can take now."""
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except anyio.WouldBlock:
            return out


def fill(pub: pubsub.Publisher, tag: int, size: int, start: int = 0) -> int:
    """Publish numbered messages with send_nowait until one would block; how many went."""
    n = start
    while True:
        try:
            pub.send_nowait(numbered(tag, n, size))
        except anyio.WouldBlock:
            return n - start
        n += 1
