"""Issue 10, the fd streams, attacked as a hostile peer would (a review of 17a8deb).

Every promise that docs/channels.md ("End of stream: finished, or killed?"), docs/fifo.md
and docs/unix.md make since then, pushed at its corners with real processes and raw
peers that speak the wire format by hand (``os.write`` / ``socket.sendmsg``):

* the goodbye: split across reads, inside a big frame, frames after it, a goodbye chunk
  with a payload or impossible bits; a sender handed to another process (pickled, or
  inherited through fork) and closed in the parent; ``send_eof`` cancelled and the
  channel used again; ``aclose`` while another task's send waits, or while it flushes;
  the synchronous ``close`` with a full pipe; the verdict asked for twice;
* the FIFO receiver's memory: writers cycling ids to evict a legitimate writer or the
  goodbye bookkeeping, floods of empty or one-byte chunks;
* fd groups in every framing state;
* ``serve``: handlers raising ``ExceptionGroup`` or a stray ``CancelledError``; accept
  failing with EMFILE for ever, and ``aclose`` of the listener then.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
import struct
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock

import aioipc
from aioipc import ProtocolError, fifo, pipes, unix
from aioipc.framing import (
    GOODBYE_FRAME,
    encode_chunks,
    encode_goodbye_chunk,
    encode_header,
)

from ._peer import spawn

TIMEOUT = 20
MIB = 1024 * 1024
_FIRST, _LAST, _BYE = 1 << 30, 1 << 31, 1 << 29


def _peer_cmd(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def chunk(writer: int, word: int, payload: bytes = b"") -> bytes:
    """One chunk of the FIFO format, written by hand."""
    return struct.pack("!QI", writer, word) + payload


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def receive_all(rx: Any, count: int) -> list[bytes]:
    with anyio.fail_after(TIMEOUT):
        return [await rx.receive() for _ in range(count)]


def fill_nowait(tx: Any, size: int) -> int:
    """Send messages with ``send_nowait`` until the kernel is full; returns how many.

    Pick ``size`` so that each frame or chunk is 1,024 bytes: a pipe then takes whole
    ones only (a write of at most PIPE_BUF is atomic), and nothing is left pending."""
    sent = 0
    while True:
        try:
            tx.send_nowait(b"%0*d" % (size, sent))
        except WouldBlock:
            assert not tx._tx.has_pending
            return sent
        sent += 1


async def expect_filled(rx: Any, count: int, size: int) -> None:
    with anyio.fail_after(TIMEOUT):
        for i in range(count):
            assert await rx.receive() == b"%0*d" % (size, i)


# Payload sizes that make a 1,024-byte frame (4-byte header) or chunk (12-byte header).
FRAME_FILL, CHUNK_FILL = 1020, 1012


async def unix_pair(path: str) -> tuple[unix.UnixChannel, unix.UnixChannel, Any]:
    listener = await unix.listen(path)
    client = await unix.connect(path)
    server = await listener.accept()
    return client, server, listener


# ======================================================= a sender handed to another process


def _child_sends_on_fifo(tx: Any, count: int) -> None:
    async def main() -> None:
        async with tx:
            for i in range(count):
                await tx.send(b"child %d" % i)

    anyio.run(main)


@pytest.mark.asyncio
async def test_a_fifo_sender_that_spoke_then_was_handed_to_a_child_ends_cleanly(
    short_tmp: Path,
) -> None:
    """The parent sent under its own writer id, handed the end to a spawned child (which
    sends under a new id) and closed its copy. Both closed properly: a clean end.

    Before the fix: the parent's close wrote no goodbye for its id, so the receiver said
    "1 writer(s) sent messages and went away without a goodbye"."""
    path = short_tmp / "f"
    fifo.create(path)
    async with await fifo.open_receiver(path) as rx:
        tx = await fifo.open_sender(path)
        await tx.send(b"parent")
        child = multiprocessing.get_context("spawn").Process(
            target=_child_sends_on_fifo, args=(tx, 3)
        )
        child.start()
        await tx.aclose()
        assert await receive_all(rx, 4) == [b"parent", b"child 0", b"child 1", b"child 2"]
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()
        child.join(TIMEOUT)
        assert child.exitcode == 0


def _child_closes_without_sending(tx: Any) -> None:
    tx.close()


@pytest.mark.asyncio
async def test_a_pipe_sender_that_spoke_then_was_handed_to_a_silent_child_ends_cleanly() -> None:
    """The parent sent, handed the end to a child and closed its copy (no goodbye: the
    child speaks for the end now); the child closes properly without sending. Nobody was
    killed, so the receiver must see a clean end.

    Before the fix: the child owed no goodbye (it never sent) and the parent was not
    allowed to write one, so the receiver reported a peer that went away without
    closing."""
    tx, rx = aioipc.pipe()
    async with rx:
        await tx.send(b"parent")
        child = multiprocessing.get_context("spawn").Process(
            target=_child_closes_without_sending, args=(tx,)
        )
        child.start()
        await tx.aclose()
        assert await receive_all(rx, 1) == [b"parent"]
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()
        child.join(TIMEOUT)
        assert child.exitcode == 0


# ========================================================= send_eof, aclose and close


@pytest.mark.asyncio
async def test_send_eof_cancelled_then_more_messages_then_aclose_ends_cleanly(
    short_tmp: Path,
) -> None:
    """A cancelled send_eof leaves the direction open, so the channel may send again; its
    aclose must then say goodbye after the new messages.

    Before the fix: the cancelled send_eof had spent the handle's one goodbye, the later
    message came after it, and aclose wrote none: BrokenResourceError."""
    client, server, listener = await unix_pair(str(short_tmp / "s"))
    async with listener, server:
        filled = fill_nowait(client, FRAME_FILL)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.send_eof)  # waits: the socket is full
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        await expect_filled(server, filled, FRAME_FILL)
        await client.send(b"after the cancelled send_eof")
        await client.aclose()
        with anyio.fail_after(TIMEOUT):
            assert await server.receive() == b"after the cancelled send_eof"
            with pytest.raises(EndOfStream):
                await server.receive()


async def _full_sender(short_tmp: Path, mechanism: str) -> tuple[Any, Any, int, int]:
    """(sender, receiver, messages in the kernel, their size): the kernel full, nothing
    pending in the sender."""
    if mechanism == "pipe":
        tx, rx = aioipc.pipe(pipe_size=None)
        size = FRAME_FILL
    else:
        path = short_tmp / "f"
        fifo.create(path)
        rx = await fifo.open_receiver(path)
        tx = await fifo.open_sender(path)
        size = CHUNK_FILL
    return tx, rx, fill_nowait(tx, size), size


@pytest.mark.parametrize("mechanism", ["pipe", "fifo"])
@pytest.mark.asyncio
async def test_aclose_while_a_send_waits_for_room_still_says_goodbye(
    short_tmp: Path, mechanism: str
) -> None:
    """One task's send waits for room, none of its message in the kernel yet; another
    task closes the channel. The waiting send fails (ClosedResourceError: it sent
    nothing), every message sent before arrives, and the close was proper: a clean end.

    Before the fix: aclose skipped the goodbye whenever a send was in progress, and the
    receiver said the writer went away without closing."""
    tx, rx, filled, size = await _full_sender(short_tmp, mechanism)
    async with rx:
        failed: list[BaseException] = []

        async def blocked_send() -> None:
            try:
                await tx.send(b"never sent")
            except ClosedResourceError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_send)
            await anyio.wait_all_tasks_blocked()
            async with anyio.create_task_group() as readers:
                # The goodbye needs room: make some while aclose waits for it.
                readers.start_soon(expect_filled, rx, filled, size)
                await tx.aclose()
        assert len(failed) == 1
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()


@pytest.mark.parametrize("mechanism", ["pipe", "fifo"])
@pytest.mark.asyncio
async def test_sync_close_of_a_full_pipe_still_says_goodbye(
    short_tmp: Path, mechanism: str
) -> None:
    """close() is for code with no event loop; its docstring says to call flush_nowait
    until it returns True first. Done (nothing is pending), but the kernel is full: the
    goodbye itself finds no room.

    Before: the goodbye was lost and the receiver, after reading every message, said the
    writer went away without closing."""
    tx, rx, filled, size = await _full_sender(short_tmp, mechanism)
    async with rx:
        assert tx.flush_nowait()
        tx.close()
        await expect_filled(rx, filled, size)
        with anyio.fail_after(TIMEOUT), pytest.raises(EndOfStream):
            await rx.receive()


# ============================================================== the verdict is sticky


@pytest.mark.parametrize("tail", [b"", b"\x00\x00"], ids=["no goodbye", "cut header"])
@pytest.mark.asyncio
async def test_a_broken_end_stays_broken(short_tmp: Path, tail: bytes) -> None:
    """A receiver that reported a peer gone without closing (or gone mid-frame) must not
    say EndOfStream -- a clean end -- when asked again.

    Before the fix: the second receive (and receive_nowait) raised EndOfStream."""
    path = str(short_tmp / "s")
    async with await unix.listen(path) as listener:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        async with await listener.accept() as chan:
            raw.sendall(encode_header(2) + b"hi" + tail)
            raw.close()
            with anyio.fail_after(TIMEOUT):
                assert await chan.receive() == b"hi"
                for _ in range(2):
                    with pytest.raises(BrokenResourceError):
                        await chan.receive()
                with pytest.raises(BrokenResourceError):
                    chan.receive_nowait()
