"""The ``aioipc`` command (also ``python -m aioipc``).

``aioipc demo`` runs real producer and consumer processes over every mechanism and
prints what it measured. ``aioipc send URL [DATA|-]`` and ``aioipc recv URL`` talk to any
channel by URL (docs/cli.md). Errors are one readable line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .. import IPCError
from .._core.check import INT_MAX, LONG_MAX, check_int, check_seconds
from ..framing import DEFAULT_MAX_MESSAGE_SIZE
from .bench import add_bench_parser
from .demo import MECHANISMS, Result, run_demo
from .inventory_cli import add_inventory_parsers
from .shell import run_recv, run_send
from .terminal import error, shown

__all__ = ["main"]

_COLUMNS = ("mechanism", "messages", "MB/s", "round trip µs")


def _row(r: Result) -> tuple[str, str, str, str]:
    return (r.mechanism, f"{r.messages}", f"{r.megabytes_per_s:.1f}", f"{r.rtt_us:.1f}")


def _demo(args: argparse.Namespace) -> int:
    mechanisms = tuple(args.mechanism) if args.mechanism else MECHANISMS
    print(
        f"aioipc demo: a child process per mechanism (pubsub: one publisher, three "
        f"subscriber processes); {args.round_trips} ping-pongs, then {args.count} numbered "
        f"{args.size}-byte messages checked for order and loss (pubsub: at every subscriber)",
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one escaped line (they quote what the user typed, a
    name pasted from somewhere) and a pointer to ``--help`` instead of the usage block.
    Subcommands' parsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {shown(message)} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aioipc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="exchange messages between real processes, every mechanism")
    demo.add_argument(
        "--count", type=_whole(1, INT_MAX), default=5000, help="messages in the burst"
    )
    demo.add_argument(
        "--size",
        type=_whole(4, DEFAULT_MAX_MESSAGE_SIZE, "bytes"),
        default=1024,
        help="bytes per burst message (4, the message number, to 64 MiB)",
    )
    demo.add_argument(
        "--round-trips", type=_whole(1, INT_MAX), default=500, help="ping-pongs to time"
    )
    demo.add_argument(
        "--mechanism", action="append", choices=MECHANISMS, help="only this one (repeatable)"
    )
    demo.set_defaults(func=_demo)

    send = sub.add_parser(
        "send",
        help="send DATA, or stdin a line per message, to the channel at URL",
        description="Send DATA as one message to the channel at URL (aioipc.connect). "
        "Without DATA (or with -) stdin is sent, one message per line without its newline. "
        "Exit 0 once everything is sent and the channel closed.",
    )
    send.add_argument("url", metavar="URL", help="where to send (see docs/urls.md)")
    send.add_argument("data", metavar="DATA", nargs="?", help="the message; - reads stdin")
    send.add_argument(
        "--whole",
        action="store_true",
        help="all of stdin as one message (one final newline removed, unless --raw)",
    )
    send.add_argument(
        "--raw",
        action="store_true",
        help="send stdin's bytes untouched: as they arrive (up to 64 KiB a message), "
        "or with --whole as one message",
    )
    send.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="retry this long while the object does not exist yet or nobody listens",
    )
    send.set_defaults(func=lambda a: run_send(a.url, a.data, a.whole, a.raw, a.wait))

    recv = sub.add_parser(
        "recv",
        help="print the messages arriving at URL, one a line",
        description="Receive from URL (aioipc.listen: creates a FIFO, queue or ring if "
        "needed; on unix:// listens and takes one client after another) and print each "
        "message on its own line. Stops at end of stream, after --count messages, or "
        "when --timeout runs out (exit 124). On a queue, recv takes each message it "
        "prints: it competes with the queue's other consumers (each message goes to one "
        "of them), and a POSIX queue unlinked meanwhile is never noticed (use "
        "--timeout). --peek (sysvmq:// only) shows the queued messages and leaves them.",
    )
    recv.add_argument("url", metavar="URL", help="where to receive (see docs/urls.md)")
    recv.add_argument(
        "--count", type=_whole(1, LONG_MAX), metavar="N", help="stop after N messages"
    )
    recv.add_argument(
        "--follow",
        action="store_true",
        help="go on after end of stream: the FIFO's next writer, the next unix client, "
        "the ring's next sender (queues and datagrams never end anyway)",
    )
    recv.add_argument(
        "--raw", action="store_true", help="write the bytes as they are, no newline added"
    )
    recv.add_argument(
        "--unlink",
        action="store_true",
        help="remove the queue, FIFO or ring when done (a unix socket file always is)",
    )
    recv.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="end after SECONDS in all; exit 124 if they run out before recv ends by "
        "itself (what arrived is printed)",
    )
    recv.add_argument(
        "--peek",
        action="store_true",
        help="sysvmq:// only: print the messages queued now, oldest first, and leave "
        "them queued (msgrcv MSG_COPY); other schemes cannot look without taking",
    )
    recv.set_defaults(
        func=lambda a: run_recv(a.url, a.count, a.follow, a.raw, a.unlink, a.timeout, a.peek)
    )
    add_bench_parser(sub)
    add_inventory_parsers(sub)
    return parser


# Every number an option takes is parsed by one of these two argparse types, checked by
# aioipc._core.check: NaN and infinities are refused (a NaN deadline never expires), and so is
# what is out of range. argparse names the option: "argument --wait: the value is ...".


def _seconds(text: str) -> float:
    """SECONDS: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), not {text!r}") from None
    try:
        return check_seconds(value, "the value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole(minimum: int, maximum: int, unit: str = "") -> Callable[[str], int]:
    """A count or size: a whole number in ``minimum..maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        try:
            return check_int(value, "the value", minimum=minimum, maximum=maximum, unit=unit)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    # Names are anyone's text: under a locale that cannot encode one (ISO-8859-1), print()
    # would die with UnicodeEncodeError. Written as \uXXXX instead, as stderr already does.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse gives up on `send URL --raw DATA` (an option between the positionals):
        # DATA comes back unrecognised. Anything else unrecognised is the usual error.
        after_dashes = extra[0] == "--"
        rest = extra[1:] if after_dashes else extra
        if (
            args.command == "send"
            and args.data is None
            and len(rest) == 1
            and (after_dashes or rest[0] == "-" or not rest[0].startswith("-"))
        ):
            args.data = rest[0]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except (IPCError, OSError, AssertionError) as exc:
        error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return code
