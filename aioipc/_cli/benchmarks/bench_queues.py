#!/usr/bin/env python3
"""Two-process benchmark of aioipc's kernel queues and semaphores against their peers.

Every figure comes from two fresh processes (``spawn``) on kernel objects the parent
creates; the parent only creates, starts, collects and removes. 64-byte messages.

Rows (mechanism x implementation):

* POSIX MQ: ``aioipc`` (fd readiness on the event loop), ``sync`` (posix_ipc blocking
  calls, no event loop), ``executor`` (asyncio with ``loop.run_in_executor(None, ...)``
  around posix_ipc's blocking send and receive: the naive way to make them async).
* SysV MQ: the same with sysv_ipc.
* Semaphores: ping-pong between two processes over two semaphores: ``aioipc``
  (``aioipc.posix.Semaphore``), ``aioipc-sysv`` (``aioipc.sysv.Semaphore``, undo=False:
  signals), ``sync`` (posix_ipc), ``executor`` (posix_ipc acquire in run_in_executor).
* ``floor`` (SysV MQ and semaphores): what waiting through a thread costs at the least.
  A bare Python thread loops in the blocking call (sysv_ipc ``receive``: ``msgrcv``;
  posix_ipc ``acquire``: ``sem_wait``) and hands each result to the asyncio loop with
  ``call_soon_threadsafe``, nothing else; sends are direct calls on the loop (a SysV
  send blocks the loop only while the queue is full). aioipc's
  worker-thread rows are compared with it and with the blocking call (``sync``).

Tests: ``rtt`` -- ping-pong, one process sends on queue 1, the other echoes on queue 2;
median of the timed round trips in µs (after a warm-up), every reply checked. ``small``
-- one-way throughput, the receiver checks the index of every message and times from
its "go" to the last message. ``idle`` (aioipc rows) -- a receiver (an acquirer) waits
for 1 s on an object nobody sends to; the CPU seconds its process used (all threads,
``time.process_time``) per second of waiting: a waiter parked in a worker thread must
cost nothing. Several interleaved rounds; each figure is the median.

Usage: python benchmarks/bench_queues.py [--quick] [--rounds N] [--only PATTERN] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

SIZE = 64
#: How long the ``idle`` test's receiver waits with nothing to receive.
IDLE_SECONDS = 1.0
_POSIX_SHAPE = {"max_messages": 10, "max_message_size": 8192}


@dataclass(frozen=True)
class Counts:
    rtt_warmup: int
    rtt_count: int
    small_count: int
    executor_small_count: int
    rounds: int


FULL = Counts(
    rtt_warmup=300, rtt_count=3000, small_count=200_000, executor_small_count=20_000, rounds=5
)
QUICK = Counts(
    rtt_warmup=50, rtt_count=500, small_count=20_000, executor_small_count=3_000, rounds=1
)

ROWS: tuple[tuple[str, str], ...] = (
    ("posix-mq", "aioipc"),
    ("posix-mq", "sync"),
    ("posix-mq", "executor"),
    ("sysv-mq", "aioipc"),
    ("sysv-mq", "sync"),
    ("sysv-mq", "executor"),
    ("sysv-mq", "floor"),
    ("sem", "aioipc"),
    ("sem", "aioipc-sysv"),
    ("sem", "sync"),
    ("sem", "executor"),
    ("sem", "floor"),
)


def _msg(i: int) -> bytes:
    return i.to_bytes(8, "big") + b"\x5a" * (SIZE - 8)


# -- endpoints: (send, receive) pairs over "queue 1" and "queue 2" ----------------------


@dataclass
class _Objects:
    mech: str
    names: tuple[str, str]  # POSIX names
    keys: tuple[int, int]  # SysV keys


def _sync_ops(
    obj: _Objects, role: str
) -> tuple[Callable[[bytes], None], Callable[[], bytes], Callable[[], None]]:
    """Blocking send to the other side, receive from it, close."""
    out, inp = (0, 1) if role == "b" else (1, 0)
    if obj.mech == "posix-mq":
        import posix_ipc

        qo = posix_ipc.MessageQueue(obj.names[out])
        qi = posix_ipc.MessageQueue(obj.names[inp])

        def close() -> None:
            qo.close()
            qi.close()

        return qo.send, lambda: qi.receive()[0], close
    if obj.mech == "sysv-mq":
        import sysv_ipc

        so = sysv_ipc.MessageQueue(obj.keys[out])
        si = sysv_ipc.MessageQueue(obj.keys[inp])
        return so.send, lambda: si.receive()[0], lambda: None
    import posix_ipc

    po = posix_ipc.Semaphore(obj.names[out])
    pi = posix_ipc.Semaphore(obj.names[inp])

    def close_sem() -> None:
        po.close()
        pi.close()

    return (lambda _b: po.release()), (lambda: (pi.acquire(), b"")[1]), close_sem


async def _aioipc_ops(
    obj: _Objects, role: str, impl: str
) -> tuple[
    Callable[[bytes], Awaitable[None]],
    Callable[[], Awaitable[bytes]],
    Callable[[], Awaitable[None]],
]:
    import aioipc

    out, inp = (0, 1) if role == "b" else (1, 0)
    if obj.mech == "posix-mq":
        qo = aioipc.posix.MessageQueue.open(obj.names[out], read=False)
        qi = aioipc.posix.MessageQueue.open(obj.names[inp], write=False)
    elif obj.mech == "sysv-mq":
        qo = aioipc.sysv.MessageQueue.open(obj.keys[out])  # type: ignore[assignment]
        qi = aioipc.sysv.MessageQueue.open(obj.keys[inp])  # type: ignore[assignment]
    else:
        if impl == "aioipc-sysv":
            so: Any = aioipc.sysv.Semaphore.open(obj.keys[out], undo=False)
            si: Any = aioipc.sysv.Semaphore.open(obj.keys[inp], undo=False)
        else:
            so = aioipc.posix.Semaphore.open(obj.names[out])
            si = aioipc.posix.Semaphore.open(obj.names[inp])

        async def give(_b: bytes) -> None:
            so.release()

        async def take() -> bytes:
            await si.acquire()
            return b""

        async def close_sems() -> None:
            await so.aclose()
            await si.aclose()

        return give, take, close_sems

    async def close() -> None:
        await qo.aclose()
        await qi.aclose()

    return qo.send, qi.receive, close


def _executor_ops(
    obj: _Objects, role: str
) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[bytes]], Callable[[], None]]:
    send, receive, close = _sync_ops(obj, role)
    loop = asyncio.get_running_loop()

    async def asend(b: bytes) -> None:
        await loop.run_in_executor(None, send, b)

    async def areceive() -> bytes:
        return await loop.run_in_executor(None, receive)

    return asend, areceive, close


def _floor_ops(
    obj: _Objects, role: str
) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[bytes]], Callable[[], None]]:
    """The floor: one thread per process blocked in msgrcv / sem_wait, each result handed
    to the loop with call_soon_threadsafe; sends are no-wait calls. Nothing else."""
    import threading

    out, inp = (0, 1) if role == "b" else (1, 0)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()
    if obj.mech == "sysv-mq":
        import sysv_ipc

        so = sysv_ipc.MessageQueue(obj.keys[out])
        si = sysv_ipc.MessageQueue(obj.keys[inp])

        def send(b: bytes) -> None:
            so.send(b)  # blocks only when the queue is full (the one-way test)

        def wait() -> bytes:
            return si.receive()[0]  # type: ignore[no-any-return]

        def close() -> None:
            pass
    else:
        import posix_ipc

        po = posix_ipc.Semaphore(obj.names[out])
        pi = posix_ipc.Semaphore(obj.names[inp])

        def send(b: bytes) -> None:
            po.release()

        def wait() -> bytes:
            pi.acquire()
            return b""

        def close() -> None:
            pass  # the waiter may still be in sem_wait: the process exit closes them

    def waiter() -> None:
        # A daemon thread: the process exits with it still blocked after the last message.
        while True:
            loop.call_soon_threadsafe(got.put_nowait, wait())

    threading.Thread(target=waiter, daemon=True).start()

    async def asend(b: bytes) -> None:
        send(b)

    return asend, got.get, close


# -- the roles ------------------------------------------------------------------------------


def _check(got: bytes, i: int, mech: str) -> None:
    if mech != "sem" and got[:8] != i.to_bytes(8, "big"):
        raise AssertionError(f"message {i}: got index {int.from_bytes(got[:8], 'big')}")


def _count(test: str, impl: str, counts: Counts) -> int:
    if test == "rtt":
        return counts.rtt_warmup + counts.rtt_count
    return counts.executor_small_count if impl == "executor" else counts.small_count


def _sync_role(
    obj: _Objects, impl: str, test: str, role: str, n: int, ctl: Connection, warm: int
) -> dict[str, Any]:
    send, receive, close = _sync_ops(obj, role)
    try:
        if test == "rtt":
            if role == "a":
                ctl.send_bytes(b"ready")
                for _ in range(n):
                    send(receive())
                return {}
            ctl.recv_bytes()
            times = []
            for i in range(n):
                m = _msg(i)
                t0 = time.perf_counter_ns()
                send(m)
                got = receive()
                t1 = time.perf_counter_ns()
                _check(got, i, obj.mech)
                if i >= warm:
                    times.append(t1 - t0)
            return {"rtt_us": statistics.median(times) / 1000}
        if role == "a":  # receiver
            ctl.send_bytes(b"go")
            start = time.perf_counter()
            for i in range(n):
                _check(receive(), i, obj.mech)
            return {"msgs_per_s": n / (time.perf_counter() - start)}
        ctl.recv_bytes()
        for i in range(n):
            send(_msg(i))
        return {}
    finally:
        close()


async def _async_role(
    obj: _Objects, impl: str, test: str, role: str, n: int, ctl: Connection, warm: int
) -> dict[str, Any]:
    close: Callable[[], Awaitable[None]]
    if impl in ("executor", "floor"):
        ops = _executor_ops if impl == "executor" else _floor_ops
        send, receive, sync_close = ops(obj, role)

        async def close_executor() -> None:
            sync_close()

        close = close_executor
    else:
        send, receive, close = await _aioipc_ops(obj, role, impl)
    loop = asyncio.get_running_loop()
    try:
        if test == "idle":
            if role == "b":
                return {}  # nobody sends
            import anyio

            wall, cpu = time.perf_counter(), time.process_time()
            with anyio.move_on_after(IDLE_SECONDS):
                await receive()
                raise AssertionError("something arrived on the idle object")
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            return {"cpu_s_per_s": cpu / wall}
        if test == "rtt":
            if role == "a":
                ctl.send_bytes(b"ready")
                for _ in range(n):
                    await send(await receive())
                return {}
            await loop.run_in_executor(None, ctl.recv_bytes)
            times = []
            for i in range(n):
                m = _msg(i)
                t0 = time.perf_counter_ns()
                await send(m)
                got = await receive()
                t1 = time.perf_counter_ns()
                _check(got, i, obj.mech)
                if i >= warm:
                    times.append(t1 - t0)
            return {"rtt_us": statistics.median(times) / 1000}
        if role == "a":
            ctl.send_bytes(b"go")
            start = time.perf_counter()
            for i in range(n):
                _check(await receive(), i, obj.mech)
            return {"msgs_per_s": n / (time.perf_counter() - start)}
        await loop.run_in_executor(None, ctl.recv_bytes)
        for i in range(n):
            await send(_msg(i))
        return {}
    finally:
        await close()


def _child(
    obj: _Objects,
    impl: str,
    test: str,
    role: str,
    n: int,
    warm: int,
    ctl: Connection,
    out: Connection,
) -> None:
    try:
        if impl == "sync":
            res = _sync_role(obj, impl, test, role, n, ctl, warm)
        elif impl in ("executor", "floor"):
            res = asyncio.run(_async_role(obj, impl, test, role, n, ctl, warm))
        else:
            import anyio

            res = anyio.run(_async_role, obj, impl, test, role, n, ctl, warm)
        out.send({"ok": res})
    except BaseException as exc:  # report, never hang the parent
        out.send({"error": f"{type(exc).__name__}: {exc}"})


# -- the parent -----------------------------------------------------------------------------


class _Created:
    """The kernel objects of one measurement, removed on exit."""

    def __init__(self, mech: str) -> None:
        import posix_ipc
        import sysv_ipc

        self.mech = mech
        tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.names = (f"/aioipc-bench-1-{tag}", f"/aioipc-bench-2-{tag}")
        self._posix: list[Any] = []
        self._sysv: list[Any] = []
        if mech == "posix-mq":
            for name in self.names:
                self._posix.append(
                    posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o600, **_POSIX_SHAPE)
                )
            self.keys = (0, 0)
        elif mech == "sysv-mq":
            self._sysv = [
                sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600) for _ in range(2)
            ]
            self.keys = (self._sysv[0].key, self._sysv[1].key)
        else:
            for name in self.names:
                self._posix.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0))
            self._sysv = [sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600, 0) for _ in range(2)]
            self.keys = (self._sysv[0].key, self._sysv[1].key)

    def objects(self) -> _Objects:
        return _Objects(self.mech, self.names, self.keys)

    def remove(self) -> None:
        for o in self._posix:
            o.unlink()
            o.close()
        for o in self._sysv:
            o.remove()


def measure(mech: str, impl: str, test: str, counts: Counts) -> float:
    ctx = multiprocessing.get_context("spawn")
    created = _Created(mech)
    try:
        n = _count(test, impl, counts)
        ctl_a, ctl_b = ctx.Pipe()
        procs, outs = [], []
        for role, ctl in (("a", ctl_a), ("b", ctl_b)):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_child,
                args=(created.objects(), impl, test, role, n, counts.rtt_warmup, ctl, w),
                daemon=True,
            )
            p.start()
            procs.append(p)
            outs.append(r)
        results = []
        for p, r in zip(procs, outs, strict=True):
            if not r.poll(300):
                raise TimeoutError(f"{mech}/{impl}/{test}: no result within 300 s")
            results.append(r.recv())
            p.join(10)
        for res in results:
            if "error" in res:
                raise RuntimeError(f"{mech}/{impl}/{test}: {res['error']}")
        merged = {**results[0]["ok"], **results[1]["ok"]}
        key = {"rtt": "rtt_us", "small": "msgs_per_s", "idle": "cpu_s_per_s"}[test]
        return float(merged[key])
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        created.remove()


def run(
    counts: Counts, only: str | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, float]]:
    rows = [r for r in ROWS if only is None or fnmatch.fnmatch(f"{r[0]}/{r[1]}", only)]
    samples: dict[tuple[str, str, str], list[float]] = {}
    for rnd in range(counts.rounds):
        order = rows if rnd % 2 == 0 else list(reversed(rows))
        for mech, impl in order:
            for test in ("rtt", "small", "idle"):
                if mech == "sem" and test == "small":
                    continue
                if test == "idle" and not impl.startswith("aioipc"):
                    continue
                v = measure(mech, impl, test, counts)
                samples.setdefault((mech, impl, test), []).append(v)
                if progress:
                    progress(f"round {rnd + 1}: {mech}/{impl} {test} = {v:,.1f}")
    out: dict[str, dict[str, float]] = {}
    for (mech, impl, test), vals in samples.items():
        out.setdefault(f"{mech}/{impl}", {})[test] = statistics.median(vals)
    return out


TARGETS = (
    # (label, numerator row, denominator row, test, kind, target)
    (
        "POSIX MQ RTT: aioipc / sync (<= 1.3x)",
        "posix-mq/aioipc",
        "posix-mq/sync",
        "rtt",
        "time",
        1.3,
    ),
    (
        "POSIX MQ 64B: aioipc / sync (>= 0.5x)",
        "posix-mq/aioipc",
        "posix-mq/sync",
        "small",
        "rate",
        0.5,
    ),
    (
        "POSIX MQ 64B: aioipc / executor (>= 20x)",
        "posix-mq/aioipc",
        "posix-mq/executor",
        "small",
        "rate",
        20,
    ),
    (
        "SysV MQ 64B: aioipc / sync (>= 0.8x)",
        "sysv-mq/aioipc",
        "sysv-mq/sync",
        "small",
        "rate",
        0.8,
    ),
    (
        "SysV MQ RTT: aioipc / executor (<= 0.7x)",
        "sysv-mq/aioipc",
        "sysv-mq/executor",
        "rtt",
        "time",
        0.7,
    ),
    (
        "SysV MQ RTT: aioipc / floor (<= 1.15x)",
        "sysv-mq/aioipc",
        "sysv-mq/floor",
        "rtt",
        "time",
        1.15,
    ),
    ("SysV MQ RTT: aioipc / sync (<= 1.5x)", "sysv-mq/aioipc", "sysv-mq/sync", "rtt", "time", 1.5),
    ("SysV MQ RTT: floor / sync", "sysv-mq/floor", "sysv-mq/sync", "rtt", "time", None),
    (
        "semaphore RTT: aioipc posix / floor (<= 1.15x)",
        "sem/aioipc",
        "sem/floor",
        "rtt",
        "time",
        1.15,
    ),
    (
        "semaphore RTT: aioipc sysv / floor (<= 1.15x)",
        "sem/aioipc-sysv",
        "sem/floor",
        "rtt",
        "time",
        1.15,
    ),
    ("semaphore RTT: aioipc posix / sync (<= 1.5x)", "sem/aioipc", "sem/sync", "rtt", "time", 1.5),
    (
        "semaphore RTT: aioipc sysv / sync (<= 1.5x)",
        "sem/aioipc-sysv",
        "sem/sync",
        "rtt",
        "time",
        1.5,
    ),
    ("semaphore RTT: floor / sync", "sem/floor", "sem/sync", "rtt", "time", None),
    ("semaphore RTT: aioipc posix / executor", "sem/aioipc", "sem/executor", "rtt", "time", None),
)

#: An idle waiter may use at most this many CPU seconds per second (timer and
#: measurement noise; a polling waiter costs far more).
IDLE_CPU_TARGET = 0.01


def format_results(res: dict[str, dict[str, float]]) -> str:
    head = f"{'mechanism/implementation':28} {'RTT median µs':>14} {'64B msgs/s':>12}"
    lines = [f"{head} {'idle CPU s/s':>13}"]
    for mech, impl in ROWS:
        row = res.get(f"{mech}/{impl}")
        if row is None:
            continue
        rtt = f"{row['rtt']:.1f}" if "rtt" in row else "-"
        small = f"{row['small']:,.0f}" if "small" in row else "-"
        idle = f"{row['idle']:.4f}" if "idle" in row else "-"
        lines.append(f"{mech + '/' + impl:28} {rtt:>14} {small:>12} {idle:>13}")
    lines.append("")
    lines.append(f"{'ratio':48} {'value':>7} {'target':>8}  met")
    for label, num, den, test, kind, target in TARGETS:
        a, b = res.get(num, {}).get(test), res.get(den, {}).get(test)
        if a is None or b is None:
            continue
        ratio = a / b
        if target is None:
            met = ""
        elif kind == "time":
            met = "yes" if ratio <= target else "NO"
        else:
            met = "yes" if ratio >= target else "NO"
        tgt = "" if target is None else f"{target:g}x"
        lines.append(f"{label:48} {ratio:6.2f}x {tgt:>8}  {met}")
    idles = [(k, v["idle"]) for k, v in res.items() if "idle" in v]
    if idles:
        worst_key, worst = max(idles, key=lambda kv: kv[1])
        met = "yes" if worst <= IDLE_CPU_TARGET else "NO"
        label = f"idle waiter CPU s/s, worst ({worst_key})"
        lines.append(f"{label:48} {worst:7.4f} {'<=' + str(IDLE_CPU_TARGET):>8}  {met}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, one round")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    ap.add_argument("--only", help="glob over mechanism/implementation, e.g. 'sysv-mq/*'")
    ap.add_argument("--json", help="write the medians to this file")
    args = ap.parse_args(argv)
    counts = QUICK if args.quick else FULL
    if args.rounds:
        counts = Counts(**{**counts.__dict__, "rounds": args.rounds})
    res = run(counts, args.only, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_results(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
