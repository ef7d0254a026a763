"""The ``aioipc ls`` and ``aioipc rm`` subcommands: arguments, table and messages.

What they list and remove is decided in :mod:`aioipc._cli.inventory` and :mod:`aioipc._cli.rm`;
this module only talks to the terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .inventory import KINDS, IPCObject, scan
from .mqueue_view import mqueue_directory
from .rm import (
    NotFound,
    RemoveError,
    find,
    forget_gone,
    narrow,
    remove,
    remove_stale,
    remove_unlisted_queue,
)
from .terminal import error, say, shown

__all__ = ["add_inventory_parsers", "run_ls", "run_rm"]

_COLUMNS = (
    "kind",
    "key/name",
    "id",
    "owner",
    "mode",
    "size",
    "count",
    "creator",
    "alive",
    "users",
    "aioipc",
    "stale",
)


def _cells(row: IPCObject) -> tuple[str, ...]:
    def text(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    count = ",".join(map(str, row.values)) if row.kind == "sysv-sem" and row.values else None
    return (
        row.kind,
        row.key if row.key is not None else (row.name or "-"),
        text(row.id),
        row.owner,
        row.mode,
        text(row.size),
        count or text(row.count),
        text(row.pid),
        text(row.alive),
        text(row.users),
        row.aioipc,
        text(row.stale),
    )


def _print_table(rows: Sequence[IPCObject], title: str) -> None:
    # Names are anyone's bytes: escaped before anything measures or draws them.
    cells = [tuple(map(shown, _cells(r))) for r in rows]
    try:
        if not sys.stdout.isatty():  # piped: plain columns, never wrapped
            raise ImportError
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        widths = [max(len(c[i]) for c in [_COLUMNS, *cells]) for i in range(len(_COLUMNS))]
        for line in [_COLUMNS, *cells]:
            say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        return
    table = Table(*_COLUMNS, title=title)
    for line in cells:
        # Text, not str: "[red]" or ":smile:" in a name shows as written, never as a
        # style or an emoji, and nothing in it is highlighted.
        table.add_row(*(Text(cell) for cell in line))
    Console().print(table)


_SUBSCRIBER_COLUMNS = ("slot", "pid", "policy", "alive", "lag_messages", "lag_bytes")


def _print_topics(rows: Sequence[IPCObject]) -> None:
    """Below the table, each topic whose header could be read: its shape, who
    publishes, and a line per subscriber with its policy and how far behind it is."""
    for row in rows:
        if row.kind != "topic" or row.capacity is None:
            continue
        say("")
        say(
            f"topic {row.name}: capacity {row.capacity} bytes, {row.max_subscribers} "
            f"subscriber slots, {row.count} messages published"
        )
        pids = ", ".join(map(str, row.publishers)) or "none seen"
        say(f"  publishers (other processes with it open): {pids}")
        if not row.subscribers:
            say("  subscribers: none")
            continue
        lines = [_SUBSCRIBER_COLUMNS] + [
            (
                str(s.slot),
                str(s.pid),
                s.policy,
                "yes" if s.alive else "no",
                str(s.lag_messages),
                str(s.lag_bytes),
            )
            for s in row.subscribers
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(_SUBSCRIBER_COLUMNS))]
        for line in lines:
            say("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _note(text: str) -> None:
    if text:
        say(text, sys.stderr)


def run_ls(kinds: Sequence[str] | None, mine: bool, stale: bool, as_json: bool) -> int:
    wanted = tuple(kinds) if kinds else KINDS
    with mqueue_directory() as (mqueue, note):
        if "posix-mq" in wanted:
            _note(note)
        rows = scan(wanted, os.geteuid() if mine else None, mqueue=mqueue).rows
    if stale:
        rows = [r for r in rows if r.stale]
    if as_json:
        # Exact names; ensure_ascii writes every control (and non-ASCII) character as a
        # \uXXXX escape, so the output is printable ASCII (see aioipc._cli.terminal).
        print(json.dumps([r.as_json() for r in rows], indent=2, ensure_ascii=True))
        return 0
    _print_table(rows, f"IPC objects: {len(rows)}")
    _print_topics(rows)
    return 0


def run_rm(
    kind: str | None,
    target: str | None,
    *,
    force: bool,
    stale: bool,
    kinds: Sequence[str] | None,
    dry_run: bool,
) -> int:
    if stale:
        prefix = kind  # the one positional, if any
        if target is not None:
            error("rm --stale takes at most a PREFIX, not KIND and a name (narrow it with --kind)")
            return 2
        if prefix in KINDS:
            error(
                f"rm --stale takes a name or path PREFIX, not a KIND: narrow it by kind "
                f"with --kind {prefix}"
            )
            return 2
        if prefix == "":
            error("rm --stale: an empty PREFIX would match everything; leave it out")
            return 2
        if force:
            error("rm --stale removes only stale objects; --force is for one named object")
            return 2
        wanted = tuple(kinds) if kinds else KINDS
        with mqueue_directory() as (mqueue, note):
            if "posix-mq" in wanted:
                _note(note)
            found = scan(wanted, mqueue=mqueue)
            if prefix is not None:
                found = narrow(found, prefix)
            done, failed = remove_stale(found, dry_run=dry_run, mqueue=mqueue)
        for line in done:
            say(line)
        if not done and not failed:
            say("nothing stale")
        for line in failed:
            error(line)
        return 1 if failed else 0
    if kinds or dry_run:
        error("--kind and --dry-run go with --stale; name one object as KIND ID|KEY|NAME")
        return 2
    if kind is None or target is None:
        error("rm needs KIND and ID|KEY|NAME, or --stale")
        return 2
    if kind not in KINDS:
        error(f"invalid choice: {kind!r} is not a KIND (choose from {', '.join(KINDS)})")
        return 2
    try:
        with mqueue_directory() as (mqueue, note):
            if kind == "posix-mq" and mqueue is None:
                # Unlisted, so unjudged: only --force may remove it, by name.
                _note(note)
                what = remove_unlisted_queue(target, force=force)
            else:
                found = scan([kind], mqueue=mqueue)
                try:
                    row = find(kind, target, found.rows)
                except NotFound:
                    # Gone already (removed by hand, ipcrm): its entry need not outlive it.
                    said = forget_gone(kind, target, found.orphans)
                    if said is None:
                        raise
                    say(said)
                    return 0
                remove(row, force=force, mqueue=mqueue)
                what = row.describe()
    except RemoveError as exc:
        error(str(exc))
        return exc.code
    say(f"removed {what}")
    return 0


def add_inventory_parsers(sub: Any) -> None:
    """Register ``aioipc ls`` and ``aioipc rm`` on the subparsers ``sub``."""
    ls = sub.add_parser(
        "ls",
        help="list every IPC object on the machine",
        description="List the SysV shared memory segments, message queues and semaphore "
        "sets, the POSIX shared memory, semaphores and message queues, aioipc's "
        "shared-memory rings and pub/sub topics (with their publishers, subscribers, "
        "policies and lag), and the FIFOs and socket files aioipc made, with who made "
        "each and whether it is stale (docs/cli.md says what each column means).",
    )
    ls.add_argument(
        "--kind", action="append", choices=KINDS, metavar="KIND", help="only this kind (repeatable)"
    )
    ls.add_argument("--mine", action="store_true", help="only objects you own")
    ls.add_argument(
        "--stale",
        action="store_true",
        help="only what rm --stale would remove: made by aioipc, creator dead, unused",
    )
    ls.add_argument("--json", action="store_true", help="a JSON list of objects")
    ls.set_defaults(func=lambda a: run_ls(a.kind, a.mine, a.stale, a.json))

    rm = sub.add_parser(
        "rm",
        help="remove one IPC object, or every stale one aioipc made",
        description="Remove one object (sysv-* by id, or by key written 0x...; posix-*, "
        "shm-ring and topic by name; fifo and unix-socket by path), or with --stale every "
        "object aioipc made whose creator is dead and that nobody is attached to "
        "(a topic: that nobody has open, whoever made it; "
        "with a PREFIX: only those whose name or path, or SysV key written 0x..., starts "
        "with it). Anything but such a stale object is removed only with --force. "
        "An object that is already gone has its registry entry forgotten.",
    )
    rm.add_argument(
        "kind",
        metavar="KIND|PREFIX",
        nargs="?",
        help=f"{', '.join(KINDS)}; with --stale: a name, path or 0x key PREFIX",
    )
    rm.add_argument("target", metavar="ID|KEY|NAME", nargs="?", help="which object")
    rm.add_argument(
        "--force", action="store_true", help="remove it even if it is in use or not aioipc's"
    )
    rm.add_argument(
        "--stale",
        action="store_true",
        help="remove every stale object aioipc made (whose name starts with PREFIX, if given)",
    )
    rm.add_argument(
        "--kind",
        dest="kinds",
        action="append",
        choices=KINDS,
        metavar="KIND",
        help="with --stale: only this kind (repeatable)",
    )
    rm.add_argument(
        "-n", "--dry-run", action="store_true", help="with --stale: list, remove nothing"
    )
    rm.set_defaults(
        func=lambda a: run_rm(
            a.kind, a.target, force=a.force, stale=a.stale, kinds=a.kinds, dry_run=a.dry_run
        )
    )
