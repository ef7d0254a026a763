"""A bank on one System V message queue: the classic SysV lesson, async.

One server process keeps the accounts in memory. Clients send requests on a single
queue with message type 1 and read their replies by their own message type, their pid:
the kernel's typed messages let every client share the queue and still receive only
what is addressed to it.

    python examples/bank.py                    # self-contained demo (server + 3 clients)
    python examples/bank.py server             # a server, until "quit", ^C or SIGTERM
    python examples/bank.py client open alice
    python examples/bank.py client deposit alice 100
    python examples/bank.py client withdraw alice 30
    python examples/bank.py client balance alice
    python examples/bank.py client quit        # stops the server, which removes the queue

By hand, the queue's key is ``aioipc.ftok(<this file>, ord("B"))`` (``--key-file`` and
``--proj`` choose another). The demo uses a fresh temporary file, so it never meets a
hand-started server. ``ipcs -q`` shows the queue while a server runs.

Messages are compact JSON. A request is ``{"op": ..., "pid": ..., ...}``; a reply is
``{"ok": true, "balance": N}`` or ``{"ok": false, "error": "..."}``. "quit" gets no
reply: the server removes the queue, and a client waiting on a removed queue wakes with
``anyio.BrokenResourceError``, which is how the quitter learns that the server is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from anyio import BrokenResourceError
from anyio.abc import Process

import aioipc
from aioipc.sysv import MessageQueue

#: Requests travel as type 1; replies as type = the client's pid. (Only init has pid 1,
#: so no client's replies can be taken for requests.)
REQUEST_TYPE = 1
DEFAULT_PROJ = ord("B")
#: The longest a client waits for a reply, and the demo for everything.
TIMEOUT = 10.0

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError(f"not a JSON object: {data!r}")
    return message


# -- the server ---------------------------------------------------------------------------


class Bank:
    """The accounts, in cents, and the operations on them (no IPC in here)."""

    def __init__(self) -> None:
        self.accounts: dict[str, int] = {}

    def handle(self, request: Message) -> Message:
        op = request.get("op")
        name = request.get("account")
        if not isinstance(name, str) or not name:
            return {"ok": False, "error": f"{op}: no account name"}
        if op == "open":
            if name in self.accounts:
                return {"ok": False, "error": f"account {name!r} exists already"}
            self.accounts[name] = 0
            return {"ok": True, "balance": 0}
        if name not in self.accounts:
            return {"ok": False, "error": f"no account {name!r}"}
        if op == "balance":
            return {"ok": True, "balance": self.accounts[name]}
        amount = request.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return {"ok": False, "error": f"{op}: the amount must be a whole number > 0"}
        if op == "deposit":
            self.accounts[name] += amount
        elif op == "withdraw":
            balance = self.accounts[name]
            if amount > balance:
                return {
                    "ok": False,
                    "error": f"insufficient funds: balance {balance}, asked for {amount}",
                }
            self.accounts[name] = balance - amount
        else:
            return {"ok": False, "error": f"unknown operation {op!r}"}
        return {"ok": True, "balance": self.accounts[name]}


async def answer(q: MessageQueue) -> None:
    """Answer requests until a "quit" request."""
    bank = Bank()
    while True:
        # Only type-1 messages: the replies waiting in the same queue are not ours.
        _, data = await q.receive_message(REQUEST_TYPE)
        try:
            request = decode(data)
            reply_to = request["pid"]
            if isinstance(reply_to, bool) or not isinstance(reply_to, int) or reply_to <= 1:
                raise ValueError(f"bad reply pid {reply_to!r}")
        except (ValueError, KeyError) as exc:
            print(f"server: ignoring a malformed request ({exc})", flush=True)
            continue
        if request.get("op") == "quit":
            print(f"server: quit requested by pid {reply_to}", flush=True)
            return
        reply = bank.handle(request)
        # One queue carries both directions, so it can fill up with requests while a
        # reply waits for room (or with replies nobody collects: a client that died).
        # Rather than deadlock, give a reply up after a while. A send cancelled while
        # waiting did not enqueue the message (bar a last-instant race, which the
        # cancellation exception would carry a note about).
        with anyio.move_on_after(2) as scope:
            await q.send(encode(reply), type=reply_to)
        if scope.cancelled_caught:
            print(f"server: no room for the reply to pid {reply_to}; gave up", flush=True)


async def stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"server: {signal.Signals(signum).name}, stopping", flush=True)
            scope.cancel()
            return


async def serve(key: int) -> None:
    """Serve until a "quit" request, SIGINT or SIGTERM; then remove the queue (also on error)."""
    q = MessageQueue.open_or_create(key)
    print(f"server [pid {os.getpid()}]: serving on queue key {key & 0xFFFFFFFF:#010x}", flush=True)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, tg.cancel_scope)
            await answer(q)
            tg.cancel_scope.cancel()
    finally:
        # The queue outlives every process: whoever owns it removes it. Clients still
        # waiting on it wake with BrokenResourceError.
        with contextlib.suppress(BrokenResourceError):
            q.remove()
        await q.aclose()
        print("server: queue removed, bye", flush=True)


# -- clients ------------------------------------------------------------------------------


async def call(q: MessageQueue, op: str, account: str, amount: int | None = None) -> Message:
    """Send one request and wait for the reply addressed to this process."""
    request: Message = {"op": op, "pid": os.getpid(), "account": account}
    if amount is not None:
        request["amount"] = amount
    with anyio.fail_after(TIMEOUT):
        await q.send(encode(request), type=REQUEST_TYPE)
        _, data = await q.receive_message(os.getpid())
    return decode(data)


async def request_quit(q: MessageQueue) -> None:
    """Ask the server to stop, and wait until it has removed the queue."""
    await q.send(encode({"op": "quit", "pid": os.getpid()}), type=REQUEST_TYPE)
    try:
        with anyio.fail_after(TIMEOUT):
            await q.receive_message(os.getpid())
    except BrokenResourceError:
        return  # the queue was removed while we waited: the server has shut down
    raise RuntimeError("the server answered a quit request; it should have removed the queue")


def describe(op: str, account: str, amount: int | None, reply: Message) -> str:
    what = f"{op} {account}" + ("" if amount is None else f" {amount}")
    if reply.get("ok"):
        return f"{what:<20} -> balance {reply['balance']}"
    return f"{what:<20} -> refused: {reply.get('error')}"


async def client(key: int, op: str, account: str | None, amount: int | None) -> int:
    try:
        q = MessageQueue.open(key)
    except aioipc.IPCNotFoundError:
        print(f"no bank queue under key {key & 0xFFFFFFFF:#010x}: start the server first")
        return 1
    async with q:
        if op == "quit":
            await request_quit(q)
            print("the server has shut down and removed the queue")
            return 0
        if account is None:
            print(f"{op} needs an account name")
            return 2
        try:
            reply = await call(q, op, account, amount)
        except BrokenResourceError:
            print("the server shut down (the queue was removed) before it answered")
            return 1
        print(describe(op, account, amount, reply))
        return 0 if reply.get("ok") else 1


async def session(key: int, name: str, deposit: int, pot: str) -> int:
    """One demo customer's visit, in its own process; exit status 0 if all went as planned."""
    steps: list[tuple[str, str, int | None, bool]] = [
        ("open", name, None, True),
        ("deposit", name, deposit, True),
        ("withdraw", name, 30, True),
        ("withdraw", name, 10 * deposit, False),  # insufficient funds
        ("deposit", pot, 10, True),
        ("balance", name, None, True),
    ]
    surprises = 0
    async with MessageQueue.open(key) as q:
        for op, account, amount, should_succeed in steps:
            reply = await call(q, op, account, amount)
            line = describe(op, account, amount, reply)
            print(f"  {name:<6} [pid {os.getpid()}]  {line}", flush=True)
            surprises += bool(reply.get("ok")) != should_succeed
    if reply.get("balance") != deposit - 30:  # the last step's
        surprises += 1
    return 1 if surprises else 0


# -- the demo -----------------------------------------------------------------------------


async def spawn(*args: str) -> Process:
    """This script again, with ``args``, sharing our stdout and stderr."""
    return await anyio.open_process(
        [sys.executable, __file__, *args], stdin=None, stdout=None, stderr=None
    )


async def visit(q: MessageQueue, keyfile: str, procs: list[Process]) -> str | None:
    """A shared account and three customers; returns what went wrong, if anything."""
    pot = "pot"
    customers = [("alice", 100), ("bob", 250), ("carol", 40)]
    opened = await call(q, "open", pot)
    print(f"demo: {describe('open', pot, None, opened)}", flush=True)
    sessions = [
        await spawn("session", name, str(amount), pot, "--key-file", keyfile)
        for name, amount in customers
    ]
    procs += sessions
    failed = [p.pid for p in sessions if await p.wait() != 0]
    if failed:
        return f"client processes {failed} did not get the replies they expected"
    balance = (await call(q, "balance", pot))["balance"]
    print(f"demo: every customer paid 10 into {pot!r}: balance {balance}", flush=True)
    if balance != 10 * len(customers):
        return f"expected {10 * len(customers)} in {pot!r}"
    return None


async def demo() -> int:
    procs: list[Process] = []
    problems: list[str] = []
    with tempfile.NamedTemporaryFile(prefix="aioipc-bank-") as keyfile:
        key = aioipc.ftok(keyfile.name, DEFAULT_PROJ)
        print(f"bank demo: queue key {key & 0xFFFFFFFF:#010x} = ftok({keyfile.name!r}, 'B')")
        # Created exclusively, so that the demo never adopts (and later removes) another
        # program's queue that happens to have the same key. The queue exists apart from
        # any process: requests sent before the server has started simply wait in it.
        q = MessageQueue.create(key)
        try:
            with anyio.fail_after(TIMEOUT):
                server = await spawn("server", "--key-file", keyfile.name)
                procs.append(server)
                quitting = anyio.Event()
                async with anyio.create_task_group() as tg:

                    async def watch_server() -> None:
                        # Clients would wait for replies that never come: stop at once.
                        if await server.wait() != 0 or not quitting.is_set():
                            problems.append(f"the server exited with {server.returncode}")
                            tg.cancel_scope.cancel()

                    tg.start_soon(watch_server)
                    problem = await visit(q, keyfile.name, procs)
                    if problem:
                        problems.append(problem)
                        tg.cancel_scope.cancel()
                    else:
                        quitting.set()
                        await request_quit(q)
            if problems:
                print("demo FAILED: " + "; ".join(problems))
                return 1
            try:
                leftover = MessageQueue.open(key)
            except aioipc.IPCNotFoundError:
                print("demo: the server removed the queue; done")
                return 0
            await leftover.aclose()
            print("demo: the queue is still there!")
            return 1
        finally:
            # Whatever went wrong, leave no process and no queue behind.
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    with anyio.CancelScope(shield=True):
                        await proc.wait()
            with contextlib.suppress(BrokenResourceError):
                q.remove()
            await q.aclose()


# -- command line -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--key-file", default=__file__, help="the file ftok() hashes")
    parser.add_argument("--proj", type=int, default=DEFAULT_PROJ, help="ftok's project id")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("server", help="run the server until a quit request")
    cp = sub.add_parser("client", help="send one request")
    cp.add_argument("op", choices=["open", "deposit", "withdraw", "balance", "quit"])
    cp.add_argument("account", nargs="?")
    cp.add_argument("amount", nargs="?", type=int)
    sp = sub.add_parser("session", help="(used by the demo) one customer's scripted visit")
    sp.add_argument("name")
    sp.add_argument("deposit", type=int)
    sp.add_argument("pot")
    # Let --key-file come after the subcommand too (the demo passes it there).
    for p in (sub.choices["server"], cp, sp):
        p.add_argument("--key-file", default=argparse.SUPPRESS)
        p.add_argument("--proj", type=int, default=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.command is None:
        try:
            return anyio.run(demo)
        except TimeoutError:
            print(f"demo: no progress for {TIMEOUT} s (did a process die?)", file=sys.stderr)
            return 1
    key = aioipc.ftok(Path(args.key_file), args.proj)
    if args.command == "server":
        anyio.run(serve, key)
        return 0
    if args.command == "client":
        return anyio.run(client, key, args.op, args.account, args.amount)
    return anyio.run(session, key, args.name, args.deposit, args.pot)


if __name__ == "__main__":
    sys.exit(main())
