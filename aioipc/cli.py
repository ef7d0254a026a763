"""The ``aioipc`` command (also ``python -m aioipc``).

``aioipc demo`` runs real producer and consumer processes over every mechanism and
prints what it measured. Errors are one readable line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import IPCError
from ._demo import MECHANISMS, Result, run_demo

__all__ = ["main"]

_COLUMNS = ("mechanism", "messages", "MB/s", "round trip µs")


def _row(r: Result) -> tuple[str, str, str, str]:
    return (r.mechanism, f"{r.messages}", f"{r.megabytes_per_s:.1f}", f"{r.rtt_us:.1f}")


def _demo(args: argparse.Namespace) -> int:
    mechanisms = tuple(args.mechanism) if args.mechanism else MECHANISMS
    print(
        f"aioipc demo: a child process per mechanism; {args.round_trips} ping-pongs, then "
        f"{args.count} numbered {args.size}-byte messages checked for order and loss",
        flush=True,
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = (16, 10, 10, 14)
        print("".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)))
        run_demo(
            args.count,
            args.size,
            args.round_trips,
            mechanisms,
            lambda r: print("".join(c.ljust(w) for c, w in zip(_row(r), widths, strict=True))),
        )
        return 0
    table = Table(*_COLUMNS, title="aioipc demo: every message arrived once, in order")
    console = Console()
    with console.status("running…"):
        for result in run_demo(args.count, args.size, args.round_trips, mechanisms):
            table.add_row(*_row(result))
    console.print(table)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aioipc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="exchange messages between real processes, every mechanism")
    demo.add_argument("--count", type=int, default=5000, help="messages in the burst")
    demo.add_argument("--size", type=int, default=1024, help="bytes per burst message (>= 4)")
    demo.add_argument("--round-trips", type=int, default=500, help="ping-pongs to time")
    demo.add_argument(
        "--mechanism", action="append", choices=MECHANISMS, help="only this one (repeatable)"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "size", 4) < 4:
        print("aioipc: error: --size must be at least 4 (the message number)", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except (IPCError, OSError, AssertionError) as exc:
        print(f"aioipc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
