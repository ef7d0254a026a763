"""A child process a test talks to through lines on its stdin and stdout."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

TIMEOUT = 20


class Peer:
    """A running child; every wait on it is bounded by ``anyio.fail_after``."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        assert proc.stdout is not None
        self._out = BufferedByteReceiveStream(proc.stdout)

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        chunks = []
        with (
            anyio.move_on_after(2),
            contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError),
        ):
            while True:
                chunks.append(await self.proc.stderr.receive())
        return b"".join(chunks).decode(errors="replace")

    async def line(self, seconds: float = TIMEOUT) -> str:
        """The child's next stdout line."""
        try:
            with anyio.fail_after(seconds):
                raw = await self._out.receive_until(b"\n", 1 << 20)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            pytest.fail(f"peer {self.pid} ended its output early; stderr:\n{await self.stderr()}")
        return raw.decode()

    async def expect(self, text: str, seconds: float = TIMEOUT) -> None:
        """Wait for the next stdout line and check it is ``text``."""
        assert await self.line(seconds) == text

    async def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(text.encode() + b"\n")

    async def finish(self, returncode: int = 0, seconds: float = TIMEOUT) -> None:
        """Close the child's stdin, reap it, and check how it ended."""
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()
        with anyio.fail_after(seconds):
            code = await self.proc.wait()
        if code != returncode:
            pytest.fail(
                f"peer exited with {code}, not {returncode}; stderr:\n{await self.stderr()}"
            )

    async def kill(self) -> int:
        """SIGKILL the child and reap it; returns its (negative) exit status."""
        self.proc.kill()
        with anyio.fail_after(TIMEOUT):
            code = await self.proc.wait()
        assert code == -signal.SIGKILL
        return code


@contextlib.asynccontextmanager
async def spawn(cmd: Sequence[str]) -> AsyncIterator[Peer]:
    """Run ``cmd``; on the way out kill it if it still runs, and always reap it."""
    proc = await anyio.open_process(list(cmd))
    try:
        yield Peer(proc)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.aclose()
