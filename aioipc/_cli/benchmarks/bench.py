#!/usr/bin/env python3
"""Two-process benchmark of aioipc's transports against hand-written peers.

Every figure comes from two fresh processes talking to each other; nothing is measured
inside one process. The machine this runs on is usually shared and noisy, so absolute
numbers mean little: read the peers measured *in the same run*, and the ratios printed
after the table.

Measurements (one fresh pair of processes each):

``rtt``
    Ping-pong with 64-byte messages. The initiating process sends a message, the other
    echoes it, and the initiator times each round trip with ``perf_counter_ns`` (after a
    warm-up) and checks the reply is byte-for-byte the message it sent. Reported: median
    and p99 (nearest rank) in microseconds.
``64 B``
    One-way throughput of 64-byte messages, in messages per second.
``1 MiB``
    One-way throughput of 1 MiB messages, in MB/s (10**6 bytes per second).

Throughput is timed on the *receiver*: it sends the start signal to the sender and reads
the clock at once, then stops the clock when the last message has arrived. The receiver
checks every message's length, the content of a sample (every 64th small / 16th large
message, and the last: the first 8 bytes carry the message index, the last 8 a fixed
tail), that exactly the expected number arrived (the next receive must report end of
stream) and, in the parent, that the sender's count matches.

Handshake, without sleeps: the two processes share a control pipe. The server side
(listener, FIFO reader, pipe receiver) says "listening" once the client may connect;
the client connects and says "connected"; the server then says "go" and the measured
loop starts. The parent only starts the processes, collects their results and cleans up
(processes are killed and temporary directories removed on any error or timeout).

With ``rounds`` > 1 (the default for a full run is 5) every measurement is repeated in
interleaved rounds (all transports, then all again, in alternating order) and each
figure is the median over the rounds; the ratios are computed from those figures.

Usage::

    python benchmarks/bench.py [--quick] [--only NAME[,NAME]] [--json out.json]

``run_benchmarks()`` and ``format_table()`` are the entry points for other code (the
``aioipc bench`` command). Child processes are started with the ``spawn`` method, so
this module must be importable under its ``__name__`` in a fresh interpreter: it is
``aioipc._cli.benchmarks.bench``, which ``benchmarks/bench.py`` of a source checkout runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import fnmatch
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shutil
import stat
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

# aioipc itself is imported only where it is used, so that the peers still run (and the
# aioipc rows say "not available") while the library cannot be imported.

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is an optional extra
    uvloop = None  # type: ignore[assignment]

__all__ = [
    "TRANSPORTS",
    "Counts",
    "compute_ratios",
    "format_ratios",
    "format_table",
    "main",
    "run_benchmarks",
]

SMALL_SIZE = 64
BIG_SIZE = 1024 * 1024
TESTS = ("rtt", "small", "big")
TEST_LABELS = {"rtt": "ping-pong 64 B", "small": "throughput 64 B", "big": "throughput 1 MiB"}

#: Every ``step``-th message (and the last) carries its index and is checked in full.
SMALL_SAMPLE_STEP = 64
BIG_SAMPLE_STEP = 16

_TAIL = b"aioipc.b"
_UNINDEXED = b"\xff" * 8
_HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Counts:
    """How much each measurement does."""

    rtt_warmup: int
    rtt_count: int
    small_count: int
    big_count: int
    rounds: int


FULL_COUNTS = Counts(rtt_warmup=200, rtt_count=2000, small_count=200_000, big_count=300, rounds=5)
QUICK_COUNTS = Counts(rtt_warmup=40, rtt_count=300, small_count=25_000, big_count=40, rounds=1)


@dataclass(frozen=True)
class Transport:
    """One row of the table.

    ``impl`` names the code that opens the two ends; ``loop`` the event loop it runs on:
    ``anyio`` / ``anyio-uvloop`` (``anyio.run``, asyncio backend, with or without
    uvloop), ``asyncio`` (``asyncio.run``), ``uvloop`` (``uvloop.run``) or ``sync``.
    """

    name: str
    key: str
    impl: str
    loop: str


TRANSPORTS: tuple[Transport, ...] = (
    Transport("aioipc pipe", "aioipc-pipe", "aioipc-pipe", "anyio"),
    Transport("aioipc pipe (uvloop)", "aioipc-pipe-uvloop", "aioipc-pipe", "anyio-uvloop"),
    Transport("aioipc fifo", "aioipc-fifo", "aioipc-fifo", "anyio"),
    Transport("aioipc fifo (uvloop)", "aioipc-fifo-uvloop", "aioipc-fifo", "anyio-uvloop"),
    Transport("aioipc unix-stream", "aioipc-unix", "aioipc-unix", "anyio"),
    Transport("aioipc unix-stream (uvloop)", "aioipc-unix-uvloop", "aioipc-unix", "anyio-uvloop"),
    Transport("asyncio streams", "asyncio-streams", "asyncio-streams", "asyncio"),
    Transport("asyncio streams (uvloop)", "uvloop-streams", "asyncio-streams", "uvloop"),
    Transport("anyio connect_unix", "anyio-unix", "anyio-unix", "anyio"),
    Transport("asyncio os.pipe", "asyncio-pipe", "asyncio-pipe", "asyncio"),
    # Not in the original brief: the same peer with the pipe grown as aioipc.pipe() grows
    # its own, so that the pipe comparison can be read with equal kernel buffers.
    Transport("asyncio os.pipe (1 MiB pipe)", "asyncio-pipe-1mib", "asyncio-pipe-1mib", "asyncio"),
    Transport("multiprocessing.Pipe", "mp-pipe", "mp-pipe", "sync"),
)

_REQUIRED_API = {
    "aioipc-pipe": ("aioipc", ("pipe",)),
    "aioipc-fifo": ("aioipc.fifo", ("create", "open_receiver", "open_sender")),
    "aioipc-unix": ("aioipc.unix", ("listen", "connect")),
}


# ---------------------------------------------------------------------------------------
# Messages and checks (shared by both processes)
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _filler(length: int) -> bytes:
    pattern = bytes(range(256))
    return (pattern * (length // 256 + 1))[:length]


def _message(index: int | None, size: int) -> bytes:
    """``size`` bytes: 8-byte index (or 0xff * 8), a fixed pattern, an 8-byte tail."""
    head = _UNINDEXED if index is None else index.to_bytes(8, "big")
    return head + _filler(size - 16) + _TAIL


def _is_sampled(index: int, count: int, step: int) -> bool:
    return index % step == 0 or index == count - 1


def _verify_sample(msg: bytes, index: int) -> None:
    if msg[:8] != index.to_bytes(8, "big") or msg[-8:] != _TAIL:
        raise AssertionError(
            f"message {index}: wrong content (head {msg[:8].hex()}, tail {msg[-8:]!r}); "
            "a message was lost, duplicated, reordered or corrupted"
        )


def _wrong_length(index: int, got: int, size: int) -> AssertionError:
    return AssertionError(f"message {index}: {got} bytes, expected {size}")


def _test_params(test: str, counts: Counts) -> tuple[int, int, int]:
    """(message count, size, sample step) of a throughput test."""
    if test == "small":
        return counts.small_count, SMALL_SIZE, SMALL_SAMPLE_STEP
    return counts.big_count, BIG_SIZE, BIG_SAMPLE_STEP


# ---------------------------------------------------------------------------------------
# Child side: handshake
# ---------------------------------------------------------------------------------------

_LISTENING = b"listening"
_CONNECTED = b"connected"
_GO = b"go"


def _expect_sync(ctl: Connection, token: bytes, wait: float = _HANDSHAKE_TIMEOUT) -> None:
    if not ctl.poll(wait):
        raise TimeoutError(f"handshake: no {token.decode()!r} from the peer within {wait} s")
    got = ctl.recv_bytes()
    if got != token:
        raise RuntimeError(f"handshake: expected {token!r}, got {got!r}")


async def _expect(ctl: Connection, token: bytes) -> None:
    """Wait for ``token`` on the control pipe without blocking the event loop."""
    if not ctl.poll():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(ctl.fileno(), on_readable)
        try:
            await asyncio.wait_for(ready, _HANDSHAKE_TIMEOUT)
        finally:
            loop.remove_reader(ctl.fileno())
    _expect_sync(ctl, token, 0)


# ---------------------------------------------------------------------------------------
# Child side: the transports. Each opener returns an _Endpoint whose send/receive are
# what a user of that transport would call once per message.
# ---------------------------------------------------------------------------------------


@dataclass
class _Spec:
    """What one child process runs. Pickled into the child by ``spawn``."""

    impl: str
    loop: str
    test: str
    role: str  # "a": listener / receiver / echoer; "b": client / sender / pinger
    res: dict[str, Any]
    counts: Counts
    ctl: Connection
    cpu: int | None = None  # pin this process to one CPU (--pin)


SendFn = Callable[[bytes], Awaitable[None]]
ReceiveFn = Callable[[], Awaitable[bytes]]


@dataclass
class _Endpoint:
    send: SendFn
    receive: ReceiveFn
    aclose: Callable[[], Awaitable[None]]
    eof: tuple[type[BaseException], ...]


async def _no_send(payload: bytes) -> None:
    raise RuntimeError("this end only receives")


async def _no_receive() -> bytes:
    raise RuntimeError("this end only sends")


def _channel_endpoint(rx: Any, tx: Any, closers: Sequence[Any] = ()) -> _Endpoint:
    """An endpoint over aioipc channels: their own ``send``/``receive``, no wrapper."""

    async def aclose() -> None:
        for chan in (tx, rx, *closers):
            if chan is not None:
                await chan.aclose()

    return _Endpoint(
        send=tx.send if tx is not None else _no_send,
        receive=rx.receive if rx is not None else _no_receive,
        aclose=aclose,
        eof=(anyio.EndOfStream,),
    )


async def _open_aioipc_pipe(spec: _Spec, listening: Callable[[], None]) -> _Endpoint:
    listening()
    return _channel_endpoint(spec.res.get("rx"), spec.res.get("tx"))


async def _open_aioipc_fifo(spec: _Spec, listening: Callable[[], None]) -> _Endpoint:
    fifo: Any = importlib.import_module("aioipc.fifo")
    to_a = os.path.join(spec.res["dir"], "to-a")
    to_b = os.path.join(spec.res["dir"], "to-b")
    two_way = spec.test == "rtt"
    rx = tx = None
    try:
        if spec.role == "a":
            fifo.create(to_a)
            if two_way:
                fifo.create(to_b)
            listening()
            rx = await fifo.open_receiver(to_a)
            if two_way:
                tx = await fifo.open_sender(to_b)
        else:
            tx = await fifo.open_sender(to_a)
            if two_way:
                rx = await fifo.open_receiver(to_b)
    except BaseException:
        for chan in (rx, tx):
            if chan is not None:
                await chan.aclose()
        raise
    return _channel_endpoint(rx, tx)


async def _open_aioipc_unix(spec: _Spec, listening: Callable[[], None]) -> _Endpoint:
    unix: Any = importlib.import_module("aioipc.unix")
    path = os.path.join(spec.res["dir"], "sock")
    if spec.role == "a":
        listener = await unix.listen(path)
        listening()
        try:
            chan = await listener.accept()
        finally:
            await listener.aclose()
    else:
        chan = await unix.connect(path)
    return _channel_endpoint(chan, chan)


def _asyncio_stream_endpoint(
    reader: asyncio.StreamReader | None,
    writer: asyncio.StreamWriter | None,
    after_close: Callable[[], Awaitable[None]] | None = None,
) -> _Endpoint:
    """The idiomatic framing: ``!I`` length prefix, write + drain per message."""

    async def send(payload: bytes) -> None:
        assert writer is not None
        writer.write(struct.pack("!I", len(payload)) + payload)
        await writer.drain()

    async def receive() -> bytes:
        assert reader is not None
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        return await reader.readexactly(length)

    async def aclose() -> None:
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if after_close is not None:
            await after_close()

    return _Endpoint(
        send=send if writer is not None else _no_send,
        receive=receive if reader is not None else _no_receive,
        aclose=aclose,
        eof=(asyncio.IncompleteReadError,),
    )


async def _open_asyncio_streams(spec: _Spec, listening: Callable[[], None]) -> _Endpoint:
    path = os.path.join(spec.res["dir"], "sock")
    if spec.role == "b":
        reader, writer = await asyncio.open_unix_connection(path)
        return _asyncio_stream_endpoint(reader, writer)
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    accepted = asyncio.get_running_loop().create_future()

    def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if accepted.done():
            w.close()
        else:
            accepted.set_result((r, w))

    server = await asyncio.start_unix_server(on_connect, path)
    listening()
    try:
        reader, writer = await accepted
    finally:
        # Stop listening now; wait_closed() only after the connection is closed (on
        # Python 3.12+ it waits for every connection).
        server.close()
    return _asyncio_stream_endpoint(reader, writer, server.wait_closed)


async def _open_asyncio_pipe(spec: _Spec, listening: Callable[[], None]) -> _Endpoint:
    """asyncio over ``os.pipe``: connect_read_pipe / connect_write_pipe + streams."""
    listening()
    loop = asyncio.get_running_loop()
    reader = writer = None
    rx_fd: int | None = spec.res.get("rx")
    tx_fd: int | None = spec.res.get("tx")
    if rx_fd is not None:
        reader = asyncio.StreamReader()
        proto = asyncio.StreamReaderProtocol(reader)
        await loop.connect_read_pipe(lambda: proto, os.fdopen(rx_fd, "rb", buffering=0))
    if tx_fd is not None:
        # A StreamReaderProtocol (not the bare FlowControlMixin) so that
        # writer.wait_closed() works: it waits until the buffer is flushed and closed.
        wproto = asyncio.StreamReaderProtocol(asyncio.StreamReader())
        wtransport, _ = await loop.connect_write_pipe(
            lambda: wproto, os.fdopen(tx_fd, "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(wtransport, wproto, None, loop)
    endpoint = _asyncio_stream_endpoint(reader, writer)
    if reader is not None:
        close_writer = endpoint.aclose
        read_transport = proto._transport  # type: ignore[attr-defined]

        async def aclose() -> None:
            await close_writer()
            read_transport.close()

        endpoint.aclose = aclose
    return endpoint


async def _open_anyio_unix(spec: _Spec, listening: Callable[[], None]) -> _Endpoint:
    """anyio's byte streams, framed naively: receive_exactly, send(header + payload)."""
    path = os.path.join(spec.res["dir"], "sock")
    stream: anyio.abc.SocketStream
    if spec.role == "a":
        listener = await anyio.create_unix_listener(path)
        listening()
        try:
            stream = await listener.accept()
        finally:
            await listener.aclose()
    else:
        stream = await anyio.connect_unix(path)
    buffered = BufferedByteReceiveStream(stream)

    async def send(payload: bytes) -> None:
        await stream.send(struct.pack("!I", len(payload)) + payload)

    async def receive() -> bytes:
        (length,) = struct.unpack("!I", await buffered.receive_exactly(4))
        return await buffered.receive_exactly(length)

    return _Endpoint(send, receive, stream.aclose, (anyio.IncompleteRead, anyio.EndOfStream))


_OPENERS: dict[str, Callable[[_Spec, Callable[[], None]], Awaitable[_Endpoint]]] = {
    "aioipc-pipe": _open_aioipc_pipe,
    "aioipc-fifo": _open_aioipc_fifo,
    "aioipc-unix": _open_aioipc_unix,
    "asyncio-streams": _open_asyncio_streams,
    "asyncio-pipe": _open_asyncio_pipe,
    "asyncio-pipe-1mib": _open_asyncio_pipe,
    "anyio-unix": _open_anyio_unix,
}


# ---------------------------------------------------------------------------------------
# Child side: the measured loops
# ---------------------------------------------------------------------------------------


async def _echo(ep: _Endpoint) -> dict[str, Any]:
    send, receive, eof = ep.send, ep.receive, ep.eof
    echoed = 0
    while True:
        try:
            msg = await receive()
        except eof:
            break
        await send(msg)
        echoed += 1
    return {"echoed": echoed}


async def _ping(ep: _Endpoint, warmup: int, count: int) -> dict[str, Any]:
    send, receive = ep.send, ep.receive
    clock = time.perf_counter_ns
    samples: list[int] = []
    for i in range(warmup + count):
        msg = _message(i, SMALL_SIZE)
        start = clock()
        await send(msg)
        reply = await receive()
        elapsed = clock() - start
        if reply != msg:
            raise AssertionError(f"round trip {i}: the reply differs from the message sent")
        if i >= warmup:
            samples.append(elapsed)
    return {"samples_ns": samples}


async def _sink(ep: _Endpoint, ctl: Connection, count: int, size: int, step: int) -> dict[str, Any]:
    receive = ep.receive
    clock = time.perf_counter_ns
    last = count - 1
    ctl.send_bytes(_GO)
    start = clock()
    for i in range(count):
        msg = await receive()
        if len(msg) != size:
            raise _wrong_length(i, len(msg), size)
        if i % step == 0 or i == last:
            _verify_sample(msg, i)
    elapsed = clock() - start
    try:
        await receive()
    except ep.eof:
        pass
    else:
        raise AssertionError(f"more than the {count} messages sent arrived")
    return {"received": count, "elapsed_ns": elapsed}


async def _source(
    ep: _Endpoint, ctl: Connection, count: int, size: int, step: int
) -> dict[str, Any]:
    # Messages are built before the start signal: only sending is timed.
    plain = _message(None, size)
    indexed = {i: _message(i, size) for i in range(count) if _is_sampled(i, count, step)}
    get = indexed.get
    send = ep.send
    await _expect(ctl, _GO)
    for i in range(count):
        await send(get(i, plain))
    return {"sent": count}


async def _async_role(spec: _Spec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    loop_name = f"{type(loop).__module__}.{type(loop).__qualname__}"
    ctl = spec.ctl

    def listening() -> None:
        if spec.role == "a":
            ctl.send_bytes(_LISTENING)

    if spec.role == "b":
        await _expect(ctl, _LISTENING)
    ep = await _OPENERS[spec.impl](spec, listening)
    try:
        if spec.test == "rtt":
            if spec.role == "a":
                await _expect(ctl, _CONNECTED)
                ctl.send_bytes(_GO)
                result = await _echo(ep)
            else:
                ctl.send_bytes(_CONNECTED)
                await _expect(ctl, _GO)
                result = await _ping(ep, spec.counts.rtt_warmup, spec.counts.rtt_count)
        else:
            count, size, step = _test_params(spec.test, spec.counts)
            if spec.role == "a":
                await _expect(ctl, _CONNECTED)
                result = await _sink(ep, ctl, count, size, step)
            else:
                ctl.send_bytes(_CONNECTED)
                result = await _source(ep, ctl, count, size, step)
    finally:
        await ep.aclose()
    result["event_loop"] = loop_name
    return result


def _sync_role(spec: _Spec) -> dict[str, Any]:
    """multiprocessing.Pipe: blocking send_bytes / recv_bytes, no event loop."""
    conn: Connection = spec.res["conn"]
    ctl = spec.ctl
    clock = time.perf_counter_ns
    try:
        if spec.role == "a":
            ctl.send_bytes(_LISTENING)
            _expect_sync(ctl, _CONNECTED)
        else:
            _expect_sync(ctl, _LISTENING)
            ctl.send_bytes(_CONNECTED)
        result: dict[str, Any]
        if spec.test == "rtt":
            if spec.role == "a":
                ctl.send_bytes(_GO)
                echoed = 0
                while True:
                    try:
                        msg = conn.recv_bytes()
                    except EOFError:
                        break
                    conn.send_bytes(msg)
                    echoed += 1
                result = {"echoed": echoed}
            else:
                _expect_sync(ctl, _GO)
                samples: list[int] = []
                warmup = spec.counts.rtt_warmup
                for i in range(warmup + spec.counts.rtt_count):
                    msg = _message(i, SMALL_SIZE)
                    start = clock()
                    conn.send_bytes(msg)
                    reply = conn.recv_bytes()
                    elapsed = clock() - start
                    if reply != msg:
                        raise AssertionError(f"round trip {i}: the reply differs")
                    if i >= warmup:
                        samples.append(elapsed)
                result = {"samples_ns": samples}
        else:
            count, size, step = _test_params(spec.test, spec.counts)
            if spec.role == "a":
                last = count - 1
                ctl.send_bytes(_GO)
                start = clock()
                for i in range(count):
                    msg = conn.recv_bytes()
                    if len(msg) != size:
                        raise _wrong_length(i, len(msg), size)
                    if i % step == 0 or i == last:
                        _verify_sample(msg, i)
                elapsed = clock() - start
                try:
                    conn.recv_bytes()
                except EOFError:
                    pass
                else:
                    raise AssertionError(f"more than the {count} messages sent arrived")
                result = {"received": count, "elapsed_ns": elapsed}
            else:
                plain = _message(None, size)
                indexed = {
                    i: _message(i, size) for i in range(count) if _is_sampled(i, count, step)
                }
                get = indexed.get
                _expect_sync(ctl, _GO)
                for i in range(count):
                    conn.send_bytes(get(i, plain))
                result = {"sent": count}
    finally:
        conn.close()
    result["event_loop"] = "none (blocking calls)"
    return result


def _run_role(spec: _Spec) -> dict[str, Any]:
    if spec.loop == "sync":
        return _sync_role(spec)
    role = functools.partial(_async_role, spec)
    if spec.loop == "anyio":
        return anyio.run(role, backend="asyncio")
    if spec.loop == "anyio-uvloop":
        return anyio.run(role, backend="asyncio", backend_options={"use_uvloop": True})
    if spec.loop == "asyncio":
        return asyncio.run(role())
    if spec.loop == "uvloop":
        assert uvloop is not None
        return uvloop.run(role())
    raise ValueError(f"unknown loop {spec.loop!r}")


def _child(spec: _Spec, out: Connection) -> None:
    """Entry point of a benchmark process: run one role, report to the parent."""
    try:
        if spec.cpu is not None:
            os.sched_setaffinity(0, {spec.cpu})
        report: dict[str, Any] = {"ok": True, **_run_role(spec)}
    except BaseException:
        report = {"ok": False, "error": traceback.format_exc()}
    with contextlib.suppress(OSError):
        out.send(report)
    out.close()


# ---------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------


class _InheritedFd:
    """A raw fd handed to a spawned child (duplicated into it, like a Connection)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd

        return (_rebuild_fd, (DupFd(self.fd),))


def _rebuild_fd(dup: Any) -> int:
    return int(dup.detach())


class MeasurementError(RuntimeError):
    """A measurement failed: a process raised, died, or did not finish in time."""


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


#: Pipe size of the "asyncio os.pipe (1 MiB pipe)" peer: what aioipc.pipe() asks for.
PEER_PIPE_SIZE = 1024 * 1024


def _grow_pipe(fd: int, size: int) -> None:
    """F_SETPIPE_SZ, capped at /proc/sys/fs/pipe-max-size; a refusal keeps 64 KiB."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = min(size, int(f.read()))
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def _prepare(
    impl: str, test: str, tmpdir: str, ctx: Any
) -> tuple[dict[str, Any], dict[str, Any], list[Callable[[], None]]]:
    """Resources for roles a and b, and how to close the parent's copies after start."""
    two_way = test == "rtt"
    if impl == "aioipc-pipe":
        aioipc: Any = importlib.import_module("aioipc")
        tx, rx = aioipc.pipe()  # b -> a
        res_a: dict[str, Any] = {"rx": rx}
        res_b: dict[str, Any] = {"tx": tx}
        closers = [tx.close, rx.close]
        if two_way:
            tx2, rx2 = aioipc.pipe()  # a -> b
            res_a["tx"], res_b["rx"] = tx2, rx2
            closers += [tx2.close, rx2.close]
        return res_a, res_b, closers
    if impl in ("asyncio-pipe", "asyncio-pipe-1mib"):
        r, w = os.pipe()
        res_a, res_b = {"rx": _InheritedFd(r)}, {"tx": _InheritedFd(w)}
        fds = [r, w]
        if two_way:
            r2, w2 = os.pipe()
            res_a["tx"], res_b["rx"] = _InheritedFd(w2), _InheritedFd(r2)
            fds += [r2, w2]
        if impl == "asyncio-pipe-1mib":
            for fd in fds[1::2]:
                _grow_pipe(fd, PEER_PIPE_SIZE)
        return res_a, res_b, [functools.partial(_close_fd, fd) for fd in fds]
    if impl == "mp-pipe":
        # Ping-pong: the default duplex Pipe (a socketpair). One-way: Pipe(duplex=False),
        # an os.pipe, which is what one-way traffic would use.
        a, b = ctx.Pipe(duplex=True) if two_way else ctx.Pipe(duplex=False)
        return {"conn": a}, {"conn": b}, [a.close, b.close]
    return {"dir": tmpdir}, {"dir": tmpdir}, []


def _stop(proc: Any) -> None:
    proc.join(5 if proc.exitcode is None else 0)
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
        proc.join()
    proc.close()


def _pin_cpus(pin: str | None) -> tuple[int | None, int | None]:
    """CPUs for roles a and b: ``split`` (two different CPUs), ``same`` (one) or none."""
    if pin in (None, "none"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "same" or len(cpus) < 2:
        if pin == "split":
            raise ValueError("--pin split needs at least two usable CPUs")
        return cpus[0], cpus[0]
    if pin == "split":
        return cpus[0], cpus[1]
    raise ValueError(f"pin must be none, split or same, not {pin!r}")


def _measure(
    transport: Transport, test: str, counts: Counts, timeout: float, pin: str | None = None
) -> dict[str, Any]:
    """Run one measurement in two fresh processes; return the merged, checked results."""
    ctx = multiprocessing.get_context("spawn")
    tmpdir = tempfile.mkdtemp(prefix="aioipc-bench-")
    procs: list[Any] = []
    owned: list[Any] = []  # parent-side connections to close at the end
    closers: list[Callable[[], None]] = []
    try:
        res_a, res_b, closers = _prepare(transport.impl, test, tmpdir, ctx)
        ctl_a, ctl_b = ctx.Pipe(duplex=True)
        out_a_r, out_a_w = ctx.Pipe(duplex=False)
        out_b_r, out_b_w = ctx.Pipe(duplex=False)
        owned += [ctl_a, ctl_b, out_a_r, out_a_w, out_b_r, out_b_w]
        cpu_a, cpu_b = _pin_cpus(pin)
        for role, res, ctl, out, cpu in (
            ("a", res_a, ctl_a, out_a_w, cpu_a),
            ("b", res_b, ctl_b, out_b_w, cpu_b),
        ):
            spec = _Spec(transport.impl, transport.loop, test, role, res, counts, ctl, cpu)
            proc = ctx.Process(target=_child, args=(spec, out), daemon=True)
            proc.start()
            procs.append(proc)
        # The children hold their own copies now. Closing ours makes a crash visible
        # (end of stream) and lets the pipes see end of stream when the children close.
        for close in closers:
            close()
        closers = []
        for conn in (ctl_a, ctl_b, out_a_w, out_b_w):
            conn.close()

        names = {"a": "server/receiver", "b": "client/sender"}
        reports: dict[str, dict[str, Any]] = {}
        pending = {out_a_r: ("a", procs[0]), out_b_r: ("b", procs[1])}
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            ready = wait_connections(list(pending), timeout=max(remaining, 0))
            if not ready:
                raise MeasurementError(f"timed out after {timeout:g} s")
            for done in ready:
                assert isinstance(done, Connection)
                role, proc = pending.pop(done)
                try:
                    report = done.recv()
                except EOFError:
                    proc.join(1)
                    raise MeasurementError(
                        f"the {names[role]} process died without a result "
                        f"(exit code {proc.exitcode}; its traceback, if any, is on stderr)"
                    ) from None
                if not report["ok"]:
                    raise MeasurementError(f"{names[role]} failed:\n{report['error']}")
                reports[role] = report
    finally:
        for close in closers:
            close()
        for conn in owned:
            conn.close()
        for proc in procs:
            _stop(proc)
        _unlink_fifos(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return _check_reports(transport, test, counts, reports["a"], reports["b"])


def _unlink_fifos(directory: str) -> None:
    """Remove the FIFOs a measurement made through aioipc, so that its registry of the
    objects it created forgets them too (a plain rmtree left one entry per FIFO)."""
    from aioipc import fifo

    for entry in os.scandir(directory):
        if stat.S_ISFIFO(entry.stat(follow_symlinks=False).st_mode):
            with contextlib.suppress(Exception):
                fifo.unlink(entry.path)


def _check_reports(
    transport: Transport, test: str, counts: Counts, a: dict[str, Any], b: dict[str, Any]
) -> dict[str, Any]:
    uses_uvloop = transport.loop in ("uvloop", "anyio-uvloop")
    for report in (a, b):
        if transport.loop != "sync" and ("uvloop" in report["event_loop"]) != uses_uvloop:
            raise MeasurementError(f"ran on the wrong event loop: {report['event_loop']}")
    if test == "rtt":
        expected = counts.rtt_warmup + counts.rtt_count
        if a["echoed"] != expected:
            raise MeasurementError(f"echoed {a['echoed']} messages, expected {expected}")
        samples = sorted(b["samples_ns"])
        p99 = samples[max(math.ceil(0.99 * len(samples)) - 1, 0)]
        return {
            "rtt_median_us": statistics.median(samples) / 1000,
            "rtt_p99_us": p99 / 1000,
            "event_loop": b["event_loop"],
        }
    count, size, _ = _test_params(test, counts)
    if not a["received"] == b["sent"] == count:
        raise MeasurementError(f"sent {b['sent']}, received {a['received']}, expected {count}")
    seconds = a["elapsed_ns"] / 1e9
    return {
        "msgs_per_s": count / seconds,
        "mb_per_s": count * size / seconds / 1e6,
        "seconds": seconds,
        "event_loop": a["event_loop"],
    }


def _unavailable(transport: Transport) -> str | None:
    """Why a transport cannot run here, or None."""
    if transport.loop in ("uvloop", "anyio-uvloop") and uvloop is None:
        return "not available: uvloop is not installed"
    required = _REQUIRED_API.get(transport.impl)
    if required is None:
        return None
    module_name, names = required
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        return f"not available: import {module_name} failed ({type(exc).__name__}: {exc})"
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        return f"not available: {module_name} has no {', '.join(missing)}"
    return None


def select_transports(only: Sequence[str] | None) -> list[Transport]:
    """The transports named (or matched by shell-style patterns) in ``only``; all if None.

    Each name is compared, case-insensitively, with a transport's display name and key
    (``aioipc-unix-uvloop``). Raises ValueError for a name that matches nothing.
    """
    if not only:
        return list(TRANSPORTS)
    chosen: set[str] = set()
    for raw in only:
        pattern = raw.strip().lower()
        if not pattern:
            continue
        hits = [
            t.key
            for t in TRANSPORTS
            if fnmatch.fnmatchcase(t.name.lower(), pattern) or fnmatch.fnmatchcase(t.key, pattern)
        ]
        if not hits:
            known = ", ".join(t.key for t in TRANSPORTS)
            raise ValueError(f"no transport matches {raw!r}; known: {known}")
        chosen.update(hits)
    return [t for t in TRANSPORTS if t.key in chosen]


def _check_importable() -> None:
    name = __name__
    if name in ("__main__", "__mp_main__"):
        return
    if importlib.util.find_spec(name) is None:  # pragma: no cover - misuse
        raise RuntimeError(
            f"the benchmark module {name!r} cannot be imported by name in a fresh process "
            "(needed by the spawn start method); put its directory on sys.path"
        )


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run_benchmarks(
    quick: bool = False,
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    rounds: int | None = None,
    timeout: float | None = None,
    pin: str | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark and return one dict per transport (see the README for the keys).

    Args:
        quick: about 7x fewer messages and one round, for tests and demos.
        only: transport names, keys or shell patterns to run (default: all).
        progress: called with a one-line description before each measurement.
        rounds: override the number of interleaved rounds (median over rounds).
        timeout: seconds allowed per measurement before its processes are killed.
        pin: ``"split"`` pins the two processes to two different CPUs, ``"same"`` to one
            CPU, ``None`` lets the scheduler place them. On a small VM the ping-pong
            figures depend strongly on this placement (a wake-up on another, idle vCPU
            is expensive), so pinning makes RTT comparisons between runs steadier.

    A transport that cannot run here (module missing, uvloop missing) gets a row with
    ``available`` False and a ``note``; a failed measurement leaves its figure None and
    its traceback in ``errors``.
    """
    _check_importable()
    counts = QUICK_COUNTS if quick else FULL_COUNTS
    if rounds is not None:
        counts = Counts(**{**asdict(counts), "rounds": max(1, rounds)})
    limit = timeout if timeout is not None else (60.0 if quick else 180.0)
    _pin_cpus(pin)  # validate before starting anything
    transports = select_transports(only)

    rows: dict[str, dict[str, Any]] = {}
    runnable: list[Transport] = []
    for t in transports:
        note = _unavailable(t)
        rows[t.key] = {
            "transport": t.name,
            "key": t.key,
            "loop": t.loop,
            "event_loop": None,
            "available": note is None,
            "note": note,
            "errors": {},
            "rtt_median_us": None,
            "rtt_p99_us": None,
            "small_msgs_per_s": None,
            "big_mb_per_s": None,
            "rounds": {"rtt": [], "small": [], "big": []},
            "counts": asdict(counts),
            "pin": pin,
        }
        if note is None:
            runnable.append(t)

    total = counts.rounds * len(runnable) * len(TESTS)
    done = 0
    for round_no in range(counts.rounds):
        # Alternate the order so that slow drift in machine load hits everyone alike.
        order = runnable if round_no % 2 == 0 else list(reversed(runnable))
        for t in order:
            row = rows[t.key]
            for test in TESTS:
                done += 1
                if test in row["errors"]:
                    continue
                if progress is not None:
                    progress(
                        f"[{done}/{total}] round {round_no + 1}/{counts.rounds}: "
                        f"{t.name}: {TEST_LABELS[test]}"
                    )
                try:
                    result = _measure(t, test, counts, limit, pin)
                except MeasurementError as exc:
                    row["errors"][test] = str(exc)
                    if progress is not None:
                        first = str(exc).strip().splitlines()
                        progress(f"    error: {first[-1] if first else exc!r}")
                    continue
                row["event_loop"] = result.pop("event_loop")
                row["rounds"][test].append(result)

    for row in rows.values():
        per = row["rounds"]
        if "rtt" not in row["errors"]:
            row["rtt_median_us"] = _median([r["rtt_median_us"] for r in per["rtt"]])
            row["rtt_p99_us"] = _median([r["rtt_p99_us"] for r in per["rtt"]])
        if "small" not in row["errors"]:
            row["small_msgs_per_s"] = _median([r["msgs_per_s"] for r in per["small"]])
        if "big" not in row["errors"]:
            row["big_mb_per_s"] = _median([r["mb_per_s"] for r in per["big"]])
    return [rows[t.key] for t in transports]


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

COLUMNS = ("transport", "RTT median µs", "RTT p99 µs", "64B msgs/s", "1MiB MB/s")
_METRICS = ("rtt_median_us", "rtt_p99_us", "small_msgs_per_s", "big_mb_per_s")
_ASYNC_PEERS = ("asyncio-streams", "uvloop-streams", "anyio-unix")


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric.startswith("rtt"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _cells(row: dict[str, Any]) -> list[str]:
    if not row["available"]:
        return [row["transport"], "not available", "", "", ""]
    cells = [row["transport"]]
    tests = ("rtt", "rtt", "small", "big")
    for metric, test in zip(_METRICS, tests, strict=True):
        cells.append("error" if test in row["errors"] else _fmt(metric, row[metric]))
    return cells


def _by_key(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in results}


def _speed_ratio(metric: str, mine: float | None, peer: float | None) -> float | None:
    """> 1 means ``mine`` is faster: peer/mine for times, mine/peer for rates."""
    if not mine or not peer:
        return None
    return peer / mine if metric.startswith("rtt") else mine / peer


_RATIO_METRICS = (("rtt", "rtt_median_us"), ("small", "small_msgs_per_s"), ("big", "big_mb_per_s"))


def compute_ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed ratios of aioipc against its peers (> 1: aioipc is faster).

    RTT ratios are ``peer RTT / aioipc RTT`` (medians); throughput ratios are
    ``aioipc / peer``. "best async peer" takes, per figure, the best of asyncio streams,
    asyncio streams on uvloop and anyio connect_unix.
    """
    rows = _by_key(results)

    def pair(
        label: str, mine: str, peers: Sequence[str], only: Sequence[str]
    ) -> dict[str, Any] | None:
        if mine not in rows or not any(p in rows for p in peers):
            return None  # not selected in this run
        entry: dict[str, Any] = {"label": label, "aioipc": mine}
        mine_row = rows.get(mine)
        for test, metric in _RATIO_METRICS:
            if test not in only:
                continue
            candidates = [
                (rows[p][metric], rows[p]["transport"])
                for p in peers
                if p in rows and rows[p][metric] is not None
            ]
            value = mine_row[metric] if mine_row is not None else None
            ratio = peer_name = None
            if candidates and value is not None:
                if metric.startswith("rtt"):
                    best, peer_name = min(candidates)
                else:
                    best, peer_name = max(candidates)
                ratio = _speed_ratio(metric, value, best)
            entry[test] = {"ratio": ratio, "peer": peer_name}
        return entry

    entries = [
        pair(
            "aioipc unix-stream / asyncio streams",
            "aioipc-unix",
            ["asyncio-streams"],
            ("rtt", "small", "big"),
        ),
        pair(
            "aioipc unix-stream / best async peer",
            "aioipc-unix",
            _ASYNC_PEERS,
            ("rtt", "small", "big"),
        ),
        pair(
            "aioipc unix-stream (uvloop) / asyncio streams (uvloop)",
            "aioipc-unix-uvloop",
            ["uvloop-streams"],
            ("rtt", "small", "big"),
        ),
        pair(
            "aioipc pipe / asyncio os.pipe",
            "aioipc-pipe",
            ["asyncio-pipe"],
            ("rtt", "small", "big"),
        ),
        pair(
            "aioipc pipe / asyncio os.pipe (1 MiB pipe)",
            "aioipc-pipe",
            ["asyncio-pipe-1mib"],
            ("rtt", "small", "big"),
        ),
        pair(
            "aioipc pipe / multiprocessing.Pipe",
            "aioipc-pipe",
            ["mp-pipe"],
            ("rtt", "small", "big"),
        ),
    ]
    return [entry for entry in entries if entry is not None]


def _grid(rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i < right_from else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_ratios(results: Sequence[dict[str, Any]]) -> str:
    """The ratios section as plain text."""
    header = ["comparison", "RTT median", "64B msgs/s", "1MiB MB/s"]
    lines: list[list[str]] = [header]
    notes: list[str] = []
    entries = compute_ratios(results)
    if not entries:
        return ""
    for entry in entries:
        cells = [entry["label"]]
        for test in ("rtt", "small", "big"):
            item = entry.get(test)
            if item is None:
                cells.append("")
            elif item["ratio"] is None:
                cells.append("n/a")
            else:
                mark = ""
                if "best" in entry["label"]:
                    mark = "*" * (1 + ("rtt", "small", "big").index(test))
                    notes.append(f"{mark} best peer for {TEST_LABELS[test]}: {item['peer']}")
                cells.append(f"{item['ratio']:.2f}x{mark}")
        lines.append(cells)
    text = [
        "Speed ratios (> 1 means aioipc is faster; RTT = peer RTT / aioipc RTT, "
        "throughput = aioipc / peer):",
        _grid(lines),
    ]
    if notes:
        text.append("\n".join(notes))
    return "\n".join(text)


def _footer(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for row in results:
        if not row["available"]:
            lines.append(f"{row['transport']}: {row['note']}")
        for test, err in row["errors"].items():
            last = err.strip().splitlines()
            lines.append(f"{row['transport']}, {TEST_LABELS[test]}: {last[-1] if last else err}")
    first = next(iter(results), None)
    if first is not None:
        counts = first["counts"]
        pin = {None: "placed by the scheduler", "split": "pinned to two CPUs"}.get(
            first.get("pin"), "pinned to one CPU"
        )
        lines.append(
            f"ping-pong: {counts['rtt_count']} round trips after {counts['rtt_warmup']} "
            f"warm-up; throughput: {counts['small_count']:,} x 64 B, "
            f"{counts['big_count']} x 1 MiB; median of {counts['rounds']} round(s); "
            f"two processes per measurement, {pin}."
        )
    return lines


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The results table, notes, and the ratios section, as plain text."""
    table = _grid([list(COLUMNS), *(_cells(row) for row in results)])
    return "\n\n".join(
        part for part in (table, "\n".join(_footer(results)), format_ratios(results)) if part
    )


def _print_rich(results: Sequence[dict[str, Any]]) -> bool:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    table = Table(title="aioipc benchmark (two processes per measurement)")
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in results:
        table.add_row(*_cells(row))
    console = Console()
    console.print(table)
    for line in _footer(results):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print()
    console.print(format_ratios(results), markup=False, highlight=False, soft_wrap=True)
    return True


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "aioipc": _version("aioipc"),
        "anyio": _version("anyio"),
        "uvloop": getattr(uvloop, "__version__", None),
        "loadavg": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Two-process benchmark of aioipc transports against asyncio/anyio peers."
    )
    parser.add_argument("--quick", action="store_true", help="~7x fewer messages, one round")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help="transports to run: names, keys or shell patterns (e.g. 'aioipc*,asyncio-*')",
    )
    parser.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--timeout", type=float, help="seconds per measurement before a kill")
    parser.add_argument(
        "--pin",
        choices=("none", "split", "same"),
        default="none",
        help="CPU placement of the two processes: scheduler's choice (default), two "
        "different CPUs, or one CPU",
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain-text table even on a terminal with rich"
    )
    parser.add_argument("--list", action="store_true", help="list the transports and exit")
    args = parser.parse_args(argv)

    if args.list:
        for t in TRANSPORTS:
            note = _unavailable(t)
            print(f"{t.key:22} {t.name}" + (f"  ({note})" if note else ""))
        return 0
    only = [s for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        select_transports(only)
    except ValueError as exc:
        parser.error(str(exc))

    env_before = _environment()
    started = time.monotonic()
    print(
        f"python {env_before['python']}, {env_before['cpus']} CPUs, "
        f"load average {env_before['loadavg'][0]:.2f}",
        file=sys.stderr,
    )
    try:
        results = run_benchmarks(
            args.quick,
            only,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            rounds=args.rounds,
            timeout=args.timeout,
            pin=None if args.pin == "none" else args.pin,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started

    print()
    # rich only on a terminal: piped output stays plain text, unwrapped.
    if args.plain or not sys.stdout.isatty() or not _print_rich(results):
        print(format_table(results))
    load_after = os.getloadavg()[0]
    print(f"\n{elapsed:.0f} s; load average {load_after:.2f} at the end.")

    if args.json:
        document = {
            "environment": {**env_before, "loadavg_after": list(os.getloadavg())},
            "quick": args.quick,
            "elapsed_s": elapsed,
            "results": results,
            "ratios": compute_ratios(results),
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    return 1 if any(row["errors"] for row in results) else 0


if __name__ == "__main__":
    sys.exit(main())
