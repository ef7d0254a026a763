"""``aioipc bench``: the benchmark matrix of ``aioipc._cli.benchmarks`` from the command line.

The matrix (``bench``, ``bench_queues``, ``bench_shm``) ships in the package, so this runs
from an installed wheel as from a source checkout; its ``spawn`` children import it from
the package too. This module runs the rows selected with ``--mechanism``, prints each
script's own table and ratios, and optionally writes all results as JSON and a PNG bar
chart (matplotlib, the ``plot`` extra). Peers whose packages are missing (the ``bench``
extra, uvloop) are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .terminal import error

__all__ = ["add_bench_parser", "run_bench"]

_PACKAGE = "aioipc._cli.benchmarks"
_SCRIPTS = ("bench", "bench_queues", "bench_shm")
_TITLES = {
    "bench": "bench.py: pipes, FIFOs and unix streams against asyncio/anyio peers",
    "bench_queues": "bench_queues.py: kernel queues and semaphores",
    "bench_shm": "bench_shm.py: the shared-memory ring against other IPC",
}
_PLOT_HINT = "pip install 'aioipc[plot]'"


class BenchError(Exception):
    """A one-line error; ``code`` is the exit status (2 usage, 1 runtime)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _load_scripts() -> dict[str, Any]:
    # Imported only when the command runs: they pull in anyio and the peers' checks.
    modules: dict[str, Any] = {}
    for name in _SCRIPTS:
        try:
            modules[name] = importlib.import_module(f"{_PACKAGE}.{name}")
        except ImportError as exc:
            raise BenchError(f"cannot import {_PACKAGE}.{name}: {exc}") from None
    return modules


# ---------------------------------------------------------------------------------------
# Selection: each pattern goes to every script, in that script's own terms
# ---------------------------------------------------------------------------------------


def _queue_rows(mod: Any, pattern: str) -> list[str]:
    names = [f"{mech}/{impl}" for mech, impl in mod.ROWS]
    hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not hits and "/" not in pattern:  # "posix-mq" alone: all its implementations
        hits = [n for n in names if fnmatch.fnmatchcase(n, f"{pattern}/*")]
    return hits


@dataclass
class _Plan:
    """Per script: None (not selected) or the ``only`` to pass (an empty list: all)."""

    bench: list[str] | None = None
    queues: list[str] | None = None
    shm: list[str] | None = None
    patterns: list[str] = field(default_factory=list)


def _plan(mods: dict[str, Any], mechanisms: Sequence[str] | None) -> _Plan:
    patterns = [p.strip() for m in mechanisms or () for p in m.split(",") if p.strip()]
    if not patterns:
        return _Plan(bench=[], queues=[], shm=[])
    plan = _Plan(patterns=patterns)
    for pattern in patterns:
        hit = False
        try:
            mods["bench"].select_transports([pattern])
        except ValueError:
            pass
        else:
            plan.bench = [*(plan.bench or []), pattern]
            hit = True
        try:
            mods["bench_shm"].select([pattern])
        except ValueError:
            pass
        else:
            plan.shm = [*(plan.shm or []), pattern]
            hit = True
        rows = _queue_rows(mods["bench_queues"], pattern)
        if rows:
            plan.queues = [*(plan.queues or []), *(r for r in rows if r not in (plan.queues or []))]
            hit = True
        if not hit:
            raise BenchError(
                f"--mechanism {pattern!r} matches no benchmark row "
                "(aioipc bench --list shows the names)",
                code=2,
            )
    return plan


def _list(mods: dict[str, Any]) -> None:
    bench, queues, shm = mods["bench"], mods["bench_queues"], mods["bench_shm"]
    print("bench.py (names, keys or patterns):")
    for t in bench.TRANSPORTS:
        print(f"  {t.key:22} {t.name}")
    print("bench_queues.py (mechanism/implementation, or a mechanism alone):")
    for mech, impl in queues.ROWS:
        print(f"  {mech + '/' + impl}")
    print("bench_shm.py (impl or impl/test):")
    for impl in shm.IMPLS:
        print(f"  {impl.key:20} {','.join(impl.tests):32} {impl.name}")


# ---------------------------------------------------------------------------------------
# Progress: a rich bar on a terminal, plain lines otherwise
# ---------------------------------------------------------------------------------------

_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")


class _Progress:
    """Turns the scripts' progress lines into a rich bar, or prints them."""

    def __init__(self, bar: Any, console: Any) -> None:
        self._bar = bar
        self._console = console
        self._task: Any = None

    def start(self, title: str, total: int | None) -> None:
        if self._bar is None:
            print(f"== {title}", file=sys.stderr, flush=True)
            return
        if self._task is not None:
            self._bar.update(self._task, visible=False)
        self._task = self._bar.add_task(title, total=total)

    def line(self, text: str, *, finished: bool = False) -> None:
        """One progress line of a script; ``finished``: it reports a finished step."""
        if self._bar is None:
            print(text, file=sys.stderr, flush=True)
            return
        step = _STEP.match(text)
        if step is not None:  # "[3/12] round 1/1: ..." before measurement 3 of 12
            done, total, what = int(step[1]), int(step[2]), step[3]
            self._bar.update(self._task, total=total, completed=done - 1, description=what)
        elif text.startswith(" "):  # "    error: ..." after a failed measurement
            self._console.print(text.strip(), markup=False, highlight=False)
        else:
            self._bar.update(self._task, advance=1 if finished else 0, description=text)

    def finish(self) -> None:
        if self._bar is not None and self._task is not None:
            task = self._bar.tasks[-1]
            self._bar.update(self._task, completed=task.total or task.completed)


@contextmanager
def _progress() -> Iterator[_Progress]:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        yield _Progress(None, None)
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _Progress(None, None)
        return
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        yield _Progress(bar, console)


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _run_queues(
    mod: Any, quick: bool, rows: list[str], report: Callable[..., None]
) -> dict[str, dict[str, float]]:
    counts = mod.QUICK if quick else mod.FULL
    every = [f"{mech}/{impl}" for mech, impl in mod.ROWS]
    if not rows or rows == every:
        return dict(mod.run(counts, None, progress=lambda s: report(s, finished=True)))
    # Its run() takes one glob; run the chosen rows one by one (interleaved per row).
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        pattern = re.sub(r"([\[\]*?])", r"[\1]", row)  # the exact name, as a glob
        out.update(mod.run(counts, pattern, progress=lambda s: report(s, finished=True)))
    return out


def _queue_steps(mod: Any, quick: bool, rows: list[str]) -> int:
    counts = mod.QUICK if quick else mod.FULL
    names = rows or [f"{mech}/{impl}" for mech, impl in mod.ROWS]
    tests = sum(1 if name.startswith("sem/") else 2 for name in names)
    return int(counts.rounds) * tests


def _environment() -> dict[str, Any]:
    import platform

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
    }


def _execute(mods: dict[str, Any], plan: _Plan, quick: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "environment": _environment(),
        "quick": quick,
        "mechanisms": plan.patterns,
    }
    started = time.monotonic()
    with _progress() as progress:
        if plan.bench is not None:
            progress.start(_TITLES["bench"], None)
            rows = mods["bench"].run_benchmarks(quick, plan.bench or None, progress.line)
            progress.finish()
            document["bench"] = {
                "results": rows,
                "ratios": mods["bench"].compute_ratios(rows),
            }
        if plan.queues is not None:
            mod = mods["bench_queues"]
            progress.start(_TITLES["bench_queues"], _queue_steps(mod, quick, plan.queues))
            try:
                results = _run_queues(mod, quick, plan.queues, progress.line)
            except (RuntimeError, TimeoutError) as exc:
                last = str(exc).strip().splitlines()
                message = f"bench_queues.py: {last[-1] if last else exc}"
                raise BenchError(message) from None
            progress.finish()
            document["bench_queues"] = {"results": results}
        if plan.shm is not None:
            progress.start(_TITLES["bench_shm"], None)
            document["bench_shm"] = mods["bench_shm"].run_benchmarks(
                quick, plan.shm or None, progress.line
            )
            progress.finish()
    document["elapsed_s"] = time.monotonic() - started
    return document


def _report(mods: dict[str, Any], document: dict[str, Any]) -> str:
    parts = []
    if "bench" in document:
        table = mods["bench"].format_table(document["bench"]["results"])
        parts.append(f"{_TITLES['bench']}\n\n{table}")
    if "bench_queues" in document:
        table = mods["bench_queues"].format_results(document["bench_queues"]["results"])
        parts.append(f"{_TITLES['bench_queues']}\n\n{table}")
    if "bench_shm" in document:
        table = mods["bench_shm"].format_report(document["bench_shm"])
        parts.append(f"{_TITLES['bench_shm']}\n\n{table}")
    return "\n\n\n".join(parts)


def _failed(document: dict[str, Any]) -> bool:
    rows = [*document.get("bench", {}).get("results", ())]
    rows += document.get("bench_shm", {}).get("rows", [])
    return any(row["errors"] for row in rows)


# ---------------------------------------------------------------------------------------
# The chart
# ---------------------------------------------------------------------------------------


def _figures(document: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """Per panel, (row label, value) of every row that has that figure."""
    rtt: list[tuple[str, float]] = []
    small: list[tuple[str, float]] = []
    big: list[tuple[str, float]] = []

    def add(panel: list[tuple[str, float]], label: str, value: Any) -> None:
        if isinstance(value, int | float) and value > 0:
            panel.append((label, float(value)))

    for row in document.get("bench", {}).get("results", ()):
        add(rtt, row["transport"], row["rtt_median_us"])
        add(small, row["transport"], row["small_msgs_per_s"])
        add(big, row["transport"], row["big_mb_per_s"])
    for name, values in document.get("bench_queues", {}).get("results", {}).items():
        add(rtt, name, values.get("rtt"))
        add(small, name, values.get("small"))
    for row in document.get("bench_shm", {}).get("rows", ()):
        values = row["values"]
        add(rtt, f"shm: {row['key']}", values.get("rtt"))
        add(small, f"shm: {row['key']}", values.get("64B"))
        add(small, f"shm: {row['key']} (batched)", values.get("64B-batched"))
        gbps = values.get("1MiB")
        add(big, f"shm: {row['key']}", None if gbps is None else gbps * 1000.0)
    return {
        "round trip, median µs (64 B ping-pong; lower is better)": rtt,
        "throughput, 64 B messages/s (higher is better)": small,
        "throughput, 1 MiB messages, MB/s (higher is better)": big,
    }


def _import_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BenchError(f"--plot needs matplotlib: {_PLOT_HINT}") from None
    del matplotlib
    return Figure, FigureCanvasAgg


def _plot(document: dict[str, Any], path: str, classes: Any) -> None:
    figure_class, canvas_class = classes
    panels = {title: rows for title, rows in _figures(document).items() if rows}
    if not panels:
        panels = {"no figures were measured": []}
    heights = [max(1.2, 0.32 * len(rows) + 0.9) for rows in panels.values()]
    fig = figure_class(figsize=(10, sum(heights) + 0.8), layout="constrained")
    canvas_class(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, rows) in zip(axes, panels.items(), strict=True):
        ax.set_title(title, loc="left", fontsize=10)
        if not rows:
            ax.set_axis_off()
            continue
        labels = [label for label, _ in rows]
        values = [value for _, value in rows]
        colors = ["tab:blue" if "aioipc" in label else "tab:gray" for label in labels]
        bars = ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.bar_label(
            bars, [f"{v:,.1f}" if v < 100 else f"{v:,.0f}" for v in values], fontsize=7, padding=2
        )
        ax.margins(x=0.15)
        ax.tick_params(axis="x", labelsize=8)
    quick = " (--quick)" if document.get("quick") else ""
    fig.suptitle(f"aioipc bench{quick}: two processes per measurement", fontsize=11)
    fig.savefig(path, format="png", dpi=100)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    """``aioipc bench``: exit 0, 1 (runtime error, or a failed measurement) or 2 (usage)."""
    try:
        return _bench(args)
    except BenchError as exc:
        error(str(exc))
        return exc.code
    except BrokenPipeError:  # `aioipc bench --list | head -3`: quietly, like recv
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _bench(args: argparse.Namespace) -> int:
    mods = _load_scripts()
    if args.list:
        _list(mods)
        return 0
    plan = _plan(mods, args.mechanism)
    matplotlib = _import_matplotlib() if args.plot else None  # fail before running anything
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise BenchError(f"{option} {path}: no such directory")
    print(
        f"aioipc bench{' --quick' if args.quick else ''}: two fresh processes per "
        "measurement; read the ratios, not the absolute numbers",
        file=sys.stderr,
        flush=True,
    )
    try:
        document = _execute(mods, plan, args.quick)
    except (RuntimeError, ValueError) as exc:
        last = str(exc).strip().splitlines()
        raise BenchError(last[-1] if last else repr(exc)) from None
    print(_report(mods, document))
    print(f"\n{document['elapsed_s']:.0f} s; load average {os.getloadavg()[0]:.2f} at the end.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    if args.plot:
        _plot(document, args.plot, matplotlib)
    return 1 if _failed(document) else 0


def add_bench_parser(sub: Any) -> None:
    """Register ``aioipc bench`` on the subparsers ``sub`` of the ``aioipc`` parser."""
    bench = sub.add_parser(
        "bench",
        help="run the two-process benchmark matrix, tables and ratios",
        description="Run the two-process benchmarks (bench.py, bench_queues.py, "
        "bench_shm.py, shipped in the package; peers whose packages are installed, the "
        "others skipped with a line) and print their tables and ratios. "
        "See docs/cli.md and benchmarks/README.md of the source.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="fewer messages and one round (~7x faster)"
    )
    bench.add_argument(
        "--mechanism",
        action="append",
        metavar="NAME",
        help="only rows matching NAME (a script's own name, key or shell pattern, "
        "e.g. aioipc-unix, 'posix-mq/*', 'aioipc-shm/rtt'; repeatable, or comma-separated)",
    )
    bench.add_argument("--plot", metavar="PNG", help="write a bar chart here (needs matplotlib)")
    bench.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    bench.add_argument("--list", action="store_true", help="list the row names and exit")
    bench.set_defaults(func=run_bench)
