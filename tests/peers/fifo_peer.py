"""A FIFO peer process for tests/test_fifo.py.  Run as ``python fifo_peer.py MODE ...``.

Modes:

``send PATH WRITER SIZES [--wait-go]``
    Open an aioipc sender on PATH (waiting for a receiver), print ``ready``; with
    ``--wait-go`` wait for a ``go`` line on stdin. Then send ``payload(WRITER, i, size)``
    for each size of the comma-separated SIZES, close, print ``done``.

``partial PATH WRITER TOTAL K``
    Without aioipc's channel: open PATH for writing and write raw chunks
    (:func:`aioipc.framing.encode_chunks`). First the whole message
    ``payload(WRITER, 0, 1000)``, then only the first K chunks of the TOTAL-byte message
    ``payload(WRITER, 1, TOTAL)``; print ``started`` and block on stdin. On a
    ``continue`` line, write the rest of that message and a last message
    ``payload(WRITER, 2, 10)``, then exit.

``recv_one PATH``
    Open an aioipc receiver on PATH, print ``ready``, receive one message, print its
    length, close.

The test module imports :func:`payload` from this file, so both sides agree on content.
"""

from __future__ import annotations

import os
import random
import struct
import sys


def payload(writer: int, index: int, size: int) -> bytes:
    """Message ``index`` of ``writer``: 8-byte (writer, index) tag + bytes derived from both."""
    rnd = random.Random(f"aioipc-fifo:{writer}:{index}:{size}")
    if size < 8:
        return rnd.randbytes(size)
    return struct.pack("!II", writer, index) + rnd.randbytes(size - 8)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _send(path: str, writer: int, sizes: list[int], wait_go: bool) -> None:
    import anyio

    from aioipc import fifo

    async def main() -> None:
        with anyio.fail_after(20):
            tx = await fifo.open_sender(path)
        async with tx:
            _say("ready")
            if wait_go and sys.stdin.readline().strip() != "go":
                raise SystemExit(3)
            for i, size in enumerate(sizes):
                await tx.send(payload(writer, i, size))
        _say("done")

    anyio.run(main)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        # Each chunk is at most PIPE_BUF bytes: a blocking write of it is atomic and whole.
        assert os.write(fd, chunk) == len(chunk)


def _partial(path: str, writer: int, total: int, k: int) -> None:
    from aioipc.framing import encode_chunks, encode_goodbye_chunk

    wid = (os.getpid() << 32) | writer
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, encode_chunks(payload(writer, 0, 1000), wid))
        chunks = encode_chunks(payload(writer, 1, total), wid)
        assert len(chunks) > k
        _write_all(fd, chunks[:k])
        _say("started")
        if sys.stdin.readline().strip() != "continue":
            raise SystemExit(3)
        _write_all(fd, chunks[k:])
        _write_all(fd, encode_chunks(payload(writer, 2, 10), wid))
        _write_all(fd, [encode_goodbye_chunk(wid)])  # a writer that finished says so
    finally:
        os.close(fd)


def _recv_one(path: str) -> None:
    import anyio

    from aioipc import fifo

    async def main() -> None:
        async with await fifo.open_receiver(path) as rx:
            _say("ready")
            with anyio.fail_after(20):
                message = await rx.receive()
            _say(str(len(message)))

    anyio.run(main)


def main(argv: list[str]) -> None:
    mode, path, *rest = argv
    if mode == "send":
        sizes = [int(s) for s in rest[1].split(",") if s]
        _send(path, int(rest[0]), sizes, "--wait-go" in rest[2:])
    elif mode == "partial":
        _partial(path, int(rest[0]), int(rest[1]), int(rest[2]))
    elif mode == "recv_one":
        _recv_one(path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
