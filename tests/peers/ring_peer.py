"""A shared-memory ring peer for tests/test_shm_ring.py, run as a real process.

Usage: ``python ring_peer.py MODE NAME ARGS...``. Every mode attaches to the existing
ring NAME (the test created it) unless it says otherwise, prints ``ready`` once attached,
and then one line per step on stdout (flushed), so the test follows it without sleeping.
Modes that wait for the test read commands from stdin; end of input makes them close
their handle and exit 0.

Modes:

``send-sizes NAME``
    Open a sender; send :func:`sized_messages` for the ring's capacity, in order; close
    (the receiver sees end of stream); print ``done COUNT``.

``recv-digest NAME``
    Open a receiver; receive until end of stream; print ``digest COUNT HEX``, where HEX
    is :func:`digest` of the messages received (lengths included, so boundaries count).

``stress-send NAME COUNT SEED``
    Open a sender; send :func:`seq_message` 0..COUNT-1, in runs of ``send`` and batches
    of ``send_many``, with random short pauses between them (``anyio.sleep``, a busy
    spin, a blocking ``time.sleep``: pacing only, nothing waits on them); close; print
    ``done COUNT``.

``send-hang NAME``
    Open a sender; for each stdin line ``send K`` send the next K :func:`seq_message`
    and print ``sent TOTAL``. Never closes before end of input: the test kills it.

``recv-hang NAME``
    Open a receiver and receive nothing; for each stdin line ``recv K`` receive K
    messages and print ``got`` and their sequence numbers.

``create-hang NAME``
    Create the ring NAME (capacity 4096) as its receiver; wait for end of input.

``mp-send NAME ID COUNT``
    Open a sender of a multi-producer ring; send :func:`tagged` (ID, 0..COUNT-1), in
    runs of ``send`` and ``send_many``; print ``done COUNT``. Never calls ``send_eof``.

``mp-hold NAME ID``
    Open a sender of a multi-producer ring; send :func:`tagged` (ID, 0..9); then open
    ``reserve()`` (which holds the ring's send lock) for message 10, print ``holding``
    and wait inside the block until killed.

``reserve-big NAME SIZE SEED``
    Open a sender; write :func:`big_block` chunks straight into ``reserve(SIZE)``; print
    ``sha256 HEX`` of what was written; close.

``idle-recv NAME SPIN SECONDS``
    Open a receiver with ``spin=SPIN``; wait in ``receive()`` on the (idle) ring for
    SECONDS; print ``idle CPU WALL`` (process CPU time and wall time spent); then
    receive one message and print ``got HEX``; close.

``hold-ends ROLE NAME...``
    Attach a ``sender`` or a ``receiver`` (ROLE) to each ring NAME (NAME is only the
    first of them); a sender sends ``b"hello"`` on each. Print ``ready``, then for each
    stdin line ``stale NAME2`` call ``is_stale(NAME2)`` (which opens and closes the
    region: this process loses its classic POSIX locks on that file) and print
    ``stale RESULT``. Never closes before end of input: the test kills it.

The test module imports the message builders from this file, so both sides agree.
"""

from __future__ import annotations

import hashlib
import random
import struct
import sys
import time
from collections.abc import Iterable

import anyio
import anyio.to_thread

from aioipc.shm import ShmReceiver, ShmSender, is_stale

#: A bound on every wait a peer makes (the test kills a peer that is meant to hang).
LIMIT = 60


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------- message builders


def record_size(length: int) -> int:
    """Bytes a message takes in the ring: an 8-byte header, the data padded to 8."""
    return 8 + ((length + 7) & ~7)


def sized_messages(capacity: int) -> list[bytes]:
    """Messages of sizes 0..max_message_size for a ring of ``capacity`` bytes: the edge
    sizes around the 8-byte alignment, exactly the maximum (several times, placed so the
    writer must pad the end of the ring and start over at 0), and random sizes."""
    top = capacity // 2 - 8
    sizes = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 255, 256, 257, 1000, top - 1, top]
    # 8 bytes then two maximal messages: the second does not fit before the end.
    sizes += [8, top, top, 0, top, 5, top - 9, top]
    rnd = random.Random(capacity)
    sizes += [rnd.randint(0, top) for _ in range(150)]
    sizes += [rnd.randint(0, 64) for _ in range(150)]
    sizes += [top, 0, top]
    return [random.Random(i * 7919 + size).randbytes(size) for i, size in enumerate(sizes)]


def pads_needed(sizes: Iterable[int], capacity: int) -> int:
    """How many pad records a writer following the documented layout writes for
    ``sizes`` sent in order into an empty ring (the receiver keeping up)."""
    head = pads = 0
    for size in sizes:
        need = record_size(size)
        room = capacity - head % capacity
        if room < need:
            head += room
            pads += 1
        head += need
    return pads


def digest(messages: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(len(m).to_bytes(4, "little"))
        h.update(m)
    return h.hexdigest()


def seq_message(seq: int) -> bytes:
    """Message ``seq``: its 8-byte sequence number, repeated 1-5 times (8-40 bytes)."""
    return seq.to_bytes(8, "little") * (1 + seq % 5)


def tagged(sender: int, seq: int) -> bytes:
    """Message ``seq`` of sender ``sender``: both numbers and 0-39 filler bytes."""
    return struct.pack("<BI", sender, seq) + bytes([(seq * 7 + sender) % 256]) * (seq % 40)


def untag(data: bytes) -> tuple[int, int]:
    sender, seq = struct.unpack_from("<BI", data)
    return sender, seq


def big_block(seed: int, index: int) -> bytes:
    """Chunk ``index`` (1 MiB) of the big message."""
    return random.Random(seed * 1_000_003 + index).randbytes(1 << 20)


# ----------------------------------------------------------------------------- modes


async def readline() -> str:
    return await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


async def send_sizes(name: str) -> None:
    async with ShmSender.open(name) as tx:
        say("ready")
        messages = sized_messages(tx.capacity)
        with anyio.fail_after(LIMIT):
            for m in messages:
                await tx.send(m)
    say(f"done {len(messages)}")


async def recv_digest(name: str) -> None:
    got = []
    async with ShmReceiver.open(name) as rx:
        say("ready")
        with anyio.fail_after(LIMIT):
            async for m in rx:
                got.append(m)
    say(f"digest {len(got)} {digest(got)}")


async def pause(rnd: random.Random) -> None:
    """A random short pause, or none (pacing only)."""
    p = rnd.random()
    if p < 0.25:
        await anyio.sleep(rnd.random() * 1e-4)
    elif p < 0.5:
        end = time.perf_counter() + rnd.random() * 50e-6
        while time.perf_counter() < end:
            pass
    elif p < 0.7:
        time.sleep(rnd.random() * 1e-4)


async def stress_send(name: str, count: int, seed: int) -> None:
    rnd = random.Random(seed)
    async with ShmSender.open(name) as tx:
        say("ready")
        seq = 0
        with anyio.fail_after(LIMIT):
            while seq < count:
                n = min(rnd.randint(1, 600), count - seq)
                if rnd.random() < 0.5:
                    for s in range(seq, seq + n):
                        await tx.send(seq_message(s))
                else:
                    await tx.send_many([seq_message(s) for s in range(seq, seq + n)])
                seq += n
                await pause(rnd)
    say(f"done {count}")


async def send_hang(name: str) -> None:
    tx = ShmSender.open(name)
    say("ready")
    seq = 0
    while line := await readline():
        cmd, k = line.split()
        assert cmd == "send"
        with anyio.fail_after(LIMIT):
            for _ in range(int(k)):
                await tx.send(seq_message(seq))
                seq += 1
        say(f"sent {seq}")
    await tx.aclose()


async def recv_hang(name: str) -> None:
    rx = ShmReceiver.open(name)
    say("ready")
    while line := await readline():
        cmd, k = line.split()
        assert cmd == "recv"
        with anyio.fail_after(LIMIT):
            got = [int.from_bytes((await rx.receive())[:8], "little") for _ in range(int(k))]
        say(" ".join(["got", *map(str, got)]))
    await rx.aclose()


async def create_hang(name: str) -> None:
    rx = ShmReceiver.create(name, 4096)
    say("ready")
    while await readline():
        pass
    await rx.aclose()


async def mp_send(name: str, ident: int, count: int) -> None:
    rnd = random.Random(ident)
    async with ShmSender.open(name) as tx:
        say("ready")
        seq = 0
        with anyio.fail_after(LIMIT):
            while seq < count:
                n = min(rnd.randint(1, 200), count - seq)
                if rnd.random() < 0.5:
                    for s in range(seq, seq + n):
                        await tx.send(tagged(ident, s))
                else:
                    await tx.send_many([tagged(ident, s) for s in range(seq, seq + n)])
                seq += n
    say(f"done {count}")


async def mp_hold(name: str, ident: int) -> None:
    tx = ShmSender.open(name)
    say("ready")
    for s in range(10):
        await tx.send(tagged(ident, s))
    message = tagged(ident, 10)
    async with tx.reserve(len(message)) as view:
        view[:] = message
        say("holding")
        with anyio.fail_after(LIMIT):
            while await readline():
                pass
    await tx.aclose()


async def reserve_big(name: str, size: int, seed: int) -> None:
    h = hashlib.sha256()
    async with ShmSender.open(name) as tx:
        say("ready")
        with anyio.fail_after(LIMIT):
            async with tx.reserve(size) as view:
                for i, start in enumerate(range(0, size, 1 << 20)):
                    chunk = big_block(seed, i)[: size - start]
                    view[start : start + len(chunk)] = chunk
                    h.update(chunk)
    say(f"sha256 {h.hexdigest()}")


async def idle_recv(name: str, spin: float, seconds: float) -> None:
    async with ShmReceiver.open(name, spin=spin) as rx:
        say("ready")
        cpu0, wall0 = time.process_time(), time.monotonic()
        with anyio.move_on_after(seconds):
            m = await rx.receive()
            say(f"unexpected message {m.hex()}")
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        say(f"idle {cpu:.6f} {wall:.6f}")
        with anyio.fail_after(LIMIT):
            m = await rx.receive()
        say(f"got {m.hex()}")


async def hold_ends(role: str, names: list[str]) -> None:
    ends: list[ShmSender | ShmReceiver] = []
    for name in names:
        if role == "sender":
            tx = ShmSender.open(name)
            ends.append(tx)
            tx.send_nowait(b"hello")
        else:
            ends.append(ShmReceiver.open(name))
    say("ready")
    while line := await readline():
        cmd, name = line.split()
        assert cmd == "stale"
        say(f"stale {is_stale(name)}")
    for end in ends:
        await end.aclose()


def main(argv: list[str]) -> None:
    mode, name, *rest = argv
    if mode == "send-sizes":
        anyio.run(send_sizes, name)
    elif mode == "recv-digest":
        anyio.run(recv_digest, name)
    elif mode == "stress-send":
        anyio.run(stress_send, name, int(rest[0]), int(rest[1]))
    elif mode == "send-hang":
        anyio.run(send_hang, name)
    elif mode == "recv-hang":
        anyio.run(recv_hang, name)
    elif mode == "create-hang":
        anyio.run(create_hang, name)
    elif mode == "mp-send":
        anyio.run(mp_send, name, int(rest[0]), int(rest[1]))
    elif mode == "mp-hold":
        anyio.run(mp_hold, name, int(rest[0]))
    elif mode == "reserve-big":
        anyio.run(reserve_big, name, int(rest[0]), int(rest[1]))
    elif mode == "hold-ends":
        anyio.run(hold_ends, name, rest)
    elif mode == "idle-recv":
        anyio.run(idle_recv, name, float(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
