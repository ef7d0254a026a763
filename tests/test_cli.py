"""The ``aioipc send`` and ``aioipc recv`` commands, run as real processes.

Every test starts ``python -m aioipc`` (once the console script) with subprocess and
talks to real kernel objects. Nothing waits by sleeping: a receiver started in the
background is found by ``send --wait`` (which retries while the object does not exist
yet), or by a blocking ``open`` of its FIFO, and every process has a timeout. Every
queue, ring and FIFO is removed (the session leak check would notice otherwise).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import anyio
import anyio.to_thread
import pytest

from aioipc import IPCNotFoundError, posix, pubsub, sysv
from aioipc._core import topic as _topic
from aioipc._core.wait import AGAIN, apoll_until

from . import _topics
from ._topics import topic_files

CLI = [sys.executable, "-m", "aioipc"]
LIMIT = 30  # seconds any one process may take
WAIT = ("--wait", "20")  # send: retry while the receiver has not created the object yet
new_topic = pytest.fixture(_topics.new_topic)


def aioipc(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the command to completion; stdin is ``stdin``, or /dev/null."""
    if stdin is None:
        return subprocess.run(
            [*CLI, *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=LIMIT
        )
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=LIMIT)


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and the
    # child inherits it: `make test &` then made the Ctrl-C tests wait for ever.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def background(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The command running beside the test, with SIGINT at its default whatever the
    suite inherited; killed if the test leaves it running."""
    proc = subprocess.Popen(
        [*CLI, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=LIMIT)
    return proc.returncode, out, err


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout


def one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("aioipc: error: "), text
    return lines[0]


# ------------------------------------------------------------------------- objects


@pytest.fixture
def mq_name() -> Iterator[str]:
    """A fresh POSIX queue name; the queue is removed afterwards if a test left it."""
    name = f"/aioipc-cli-{uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(IPCNotFoundError):
        posix.unlink_message_queue(name)
        pytest.fail(f"POSIX queue {name} was left behind")


def mq_exists(name: str) -> bool:
    try:
        q = posix.MessageQueue.open(name)
    except IPCNotFoundError:
        return False
    anyio.run(q.aclose)
    return True


@pytest.fixture
def sysv_url(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``sysv_url(options)``: a SysV queue URL under a fresh ftok key; removed afterwards."""
    key_file = tmp_path / "key"
    key_file.touch()
    yield lambda options="": f"sysvmq://{key_file}?proj=7{options}"

    async def remove() -> bool:
        try:
            q = sysv.MessageQueue.open(sysv.ftok(key_file, 7))
        except IPCNotFoundError:
            return False
        async with q:
            q.remove()
        return True

    assert not anyio.run(remove), "the SysV queue was left behind"


@pytest.fixture
def fifo_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "jobs.fifo"
    yield path
    if path.exists():
        path.unlink()
        pytest.fail(f"FIFO {path} was left behind")


# ------------------------------------------------------------------- round trips


def test_posix_queue_round_trip_line_by_line(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    ok(aioipc("send", f"{url}?create=1", "-", stdin=b"one\ntwo\n\nlast without newline"))
    ok(aioipc("send", url, "a message, spaces and all"))
    out = ok(aioipc("recv", url, "--count", "5", "--unlink"))
    assert out == b"one\ntwo\n\nlast without newline\na message, spaces and all\n"
    assert not mq_exists(mq_name)


def test_stdin_is_read_without_dash_when_it_is_not_a_terminal(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    ok(aioipc("send", f"{url}?create=1", stdin=b"x\ny\n"))
    assert ok(aioipc("recv", url, "--count", "2", "--unlink")) == b"x\ny\n"


def test_count_stops_after_n_messages_and_leaves_the_rest(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    ok(aioipc("send", f"{url}?create=1", stdin=b"1\n2\n3\n"))
    assert ok(aioipc("recv", url, "--count", "2")) == b"1\n2\n"
    assert ok(aioipc("recv", url, "--count", "1", "--unlink")) == b"3\n"


def test_sysv_queue_round_trip(sysv_url: Callable[[str], str]) -> None:
    ok(aioipc("send", sysv_url("&create=1"), "hello"))
    ok(aioipc("send", sysv_url(""), "-", stdin=b"world\nagain\n"))
    assert ok(aioipc("recv", sysv_url(""), "--count", "3", "--unlink")) == b"hello\nworld\nagain\n"


def test_fifo_round_trip_ends_when_the_sender_closes(fifo_path: Path) -> None:
    url = f"fifo://{fifo_path}"
    with background("recv", url, "--unlink") as rx:
        ok(aioipc("send", *WAIT, url, stdin=b"alpha\nbeta\n"))
        assert finish(rx) == (0, b"alpha\nbeta\n", b"")
    assert not fifo_path.exists()


@pytest.mark.parametrize("option", ["", "?persistent=0", "?persistent=1"])
def test_fifo_follow_takes_one_writer_after_another(fifo_path: Path, option: str) -> None:
    url = f"fifo://{fifo_path}{option}"  # --follow sets persistent=1, whatever the URL said
    with background("recv", url, "--follow", "--count", "3", "--unlink") as rx:
        ok(aioipc("send", *WAIT, url, "first"))
        ok(aioipc("send", url, "-", stdin=b"second\nthird\n"))
        assert finish(rx) == (0, b"first\nsecond\nthird\n", b"")
    assert not fifo_path.exists()


def test_shm_ring_round_trip(new_ring: Callable[[], str]) -> None:
    url = f"shm://{new_ring()}"
    with background("recv", url) as rx:  # creates the ring; removes it when it closes
        ok(aioipc("send", *WAIT, url, stdin=b"ring 1\nring 2\n"))
        assert finish(rx) == (0, b"ring 1\nring 2\n", b"")


def test_shm_follow_takes_the_next_sender(new_ring: Callable[[], str]) -> None:
    url = f"shm://{new_ring()}"
    with background("recv", url, "--follow", "--count", "2") as rx:
        ok(aioipc("send", *WAIT, url, "from the first sender"))
        ok(aioipc("send", url, "from the second"))
        assert finish(rx) == (0, b"from the first sender\nfrom the second\n", b"")


def wait_for_subscribers(name: str, count: int) -> None:
    """Until topic ``name`` exists and has ``count`` live subscribers (background
    ``recv`` processes that have subscribed): a topic has no event for that to wait on,
    so its header is looked at, with a deadline."""

    async def subscribed() -> object:
        try:
            with pubsub.Topic.open(name) as topic:
                live = [s for s in topic.subscribers() if s.alive]
        except IPCNotFoundError:
            return AGAIN
        return True if len(live) >= count else AGAIN

    async def main() -> None:
        with anyio.fail_after(LIMIT):
            await apoll_until(subscribed, first=0.005, most=0.05)

    anyio.run(main)


def test_pubsub_every_subscriber_gets_every_message(new_topic: Callable[[], str]) -> None:
    name = new_topic()
    url = f"pubsub://{name[1:]}"
    with (
        background("recv", url, "--count", "3") as first,
        background("recv", f"{url}?policy=block", "--count", "3") as second,
    ):
        wait_for_subscribers(name, 2)
        ok(aioipc("send", url, stdin=b"a\nb\nc\n"))  # a publisher, created by the URL
        assert finish(first) == (0, b"a\nb\nc\n", b"")
        assert finish(second) == (0, b"a\nb\nc\n", b"")
    # A topic outlives its ends: a late subscriber replays what it retains, and
    # --unlink removes it (log and doorbells).
    assert topic_files(name)
    replay = aioipc("recv", f"{url}?start=oldest", "--count", "3", "--unlink")
    assert ok(replay) == b"a\nb\nc\n"
    assert topic_files(name) == []


@pytest.mark.asyncio
async def test_pubsub_recv_ends_at_a_publishers_end_of_stream(
    new_topic: Callable[[], str],
) -> None:
    name = new_topic()
    with pubsub.Topic.create(name, 4096) as topic, background("recv", f"pubsub://{name}") as rx:
        await anyio.to_thread.run_sync(wait_for_subscribers, name, 1)
        async with topic.publisher() as pub:
            await pub.send(b"last words")
            await pub.send_eof()
        assert finish(rx) == (0, b"last words\n", b"")


def test_pubsub_recv_says_what_a_lagging_subscriber_missed_and_goes_on(
    new_topic: Callable[[], str],
) -> None:
    """A drop_oldest subscriber that falls behind: a warning that says how many it
    missed, then it goes on from the oldest message the topic retains."""
    name = new_topic()
    url = f"pubsub://{name[1:]}?capacity=256"
    size = _topic.record_size(100)
    retained = 256 // size
    with background("recv", url, "--count", "1") as rx:
        wait_for_subscribers(name, 1)
        rx.send_signal(signal.SIGSTOP)  # it cannot read now: it falls behind for sure
        try:
            lines = b"".join(b"%d" % i + b"x" * 99 + b"\n" for i in range(6))
            ok(aioipc("send", url, stdin=lines))  # never waits for a drop_oldest one
        finally:
            rx.send_signal(signal.SIGCONT)
        code, out, err = finish(rx)
    assert code == 0, err
    first = 6 - retained
    assert out == b"%d" % first + b"x" * 99 + b"\n"
    (line,) = err.decode().splitlines()
    assert line.startswith("aioipc: warning: "), line
    assert f"missed {first} messages" in line, line


@pytest.mark.parametrize("url", ["pubsub://{t}?policy=fast", "pubsub://{t}?capacity=100"])
def test_bad_pubsub_urls_are_usage_errors_and_create_nothing(
    url: str, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    for command in (("send", url.format(t=name[1:]), "hi"), ("recv", url.format(t=name[1:]))):
        result = aioipc(*command)
        assert result.returncode == 2
        assert url.split("?")[1].split("=")[0] in one_error_line(result.stderr)
    result = aioipc("send", f"pubsub://{name[1:]}?start=oldest", "hi")
    assert result.returncode == 2
    assert "is a subscriber's" in one_error_line(result.stderr)
    peek = aioipc("recv", f"pubsub://{name[1:]}", "--peek")
    assert peek.returncode == 2
    assert "takes nothing from anyone" in one_error_line(peek.stderr)
    assert topic_files(name) == []


@pytest.mark.parametrize("scheme", ["unix", "unix+seqpacket"])
def test_unix_listener_serves_one_client(short_tmp: Path, scheme: str) -> None:
    url = f"{scheme}://{short_tmp}/s.sock"
    with background("recv", url) as rx:
        ok(aioipc("send", *WAIT, url, stdin=b"over\nthe socket\n"))
        assert finish(rx) == (0, b"over\nthe socket\n", b"")


def test_unix_listener_follow_serves_client_after_client(short_tmp: Path) -> None:
    url = f"unix://{short_tmp}/s.sock"
    with background("recv", url, "--follow", "--count", "3") as rx:
        ok(aioipc("send", *WAIT, url, "client 1"))
        ok(aioipc("send", url, stdin=b"client 2, line 1\nclient 2, line 2\n"))
        assert finish(rx) == (0, b"client 1\nclient 2, line 1\nclient 2, line 2\n", b"")


def test_unix_datagrams(short_tmp: Path) -> None:
    url = f"unix+dgram://{short_tmp}/d.sock"
    with background("recv", url, "--count", "2") as rx:
        ok(aioipc("send", *WAIT, url, "datagram 1"))
        ok(aioipc("send", url, "datagram 2"))
        assert finish(rx) == (0, b"datagram 1\ndatagram 2\n", b"")


# ------------------------------------------------------------------------- bytes


def test_raw_whole_carries_binary_bytes_exactly(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    payload = bytes(range(256)) * 4 + b"\n"  # NULs, newlines, bytes that are not UTF-8
    ok(aioipc("send", f"{url}?create=1", "--raw", "--whole", stdin=payload))
    assert ok(aioipc("recv", url, "--raw", "--count", "1", "--unlink")) == payload


def test_whole_without_raw_drops_one_final_newline(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    ok(aioipc("send", f"{url}?create=1", "--whole", stdin=b'{"a": 1,\n "b": 2}\n'))
    assert ok(aioipc("recv", url, "--count", "1", "--unlink")) == b'{"a": 1,\n "b": 2}\n'


def test_raw_stream_through_a_fifo_is_byte_exact(fifo_path: Path, tmp_path: Path) -> None:
    url = f"fifo://{fifo_path}"
    payload = random.Random(5).randbytes(300_000)  # several chunks of at most 64 KiB
    source = tmp_path / "payload"
    source.write_bytes(payload)
    with background("recv", url, "--raw", "--unlink") as rx, source.open("rb") as f:
        # Both in the background: recv's output is more than a pipe holds.
        tx = subprocess.Popen([*CLI, "send", *WAIT, url, "--raw"], stdin=f, stderr=subprocess.PIPE)
        try:
            code, out, err = finish(rx)
            assert tx.wait(timeout=LIMIT) == 0
        finally:
            if tx.poll() is None:
                tx.kill()
            tx.communicate()
    assert (code, err) == (0, b"")
    assert out == payload


def test_data_argument_bytes_are_sent_as_given(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    ok(aioipc("send", f"{url}?create=1", "--raw", b"\xff\xfe not UTF-8"))  # option between
    assert ok(aioipc("recv", url, "--raw", "--count", "1", "--unlink")) == b"\xff\xfe not UTF-8"


def test_undecodable_bytes_are_printed_as_escapes(mq_name: str) -> None:
    url = f"mq://{mq_name}"
    ok(aioipc("send", f"{url}?create=1", "--raw", "--whole", stdin="café \xff!".encode() + b"\xff"))
    assert ok(aioipc("recv", url, "--count", "1", "--unlink")) == "café ÿ!\\xff\n".encode()


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", ["send", "recv"])
def test_bad_scheme_is_a_usage_error(command: str) -> None:
    result = aioipc(command, "http://example.com/x", *(["hi"] if command == "send" else []))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "'http'" in line
    assert "mq://" in line  # says which schemes there are


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mq:///q?max_messages=lots", "max_messages"),
        ("mq:///q?colour=blue", "colour"),
        ("mq:///q?codec=json", "codec"),
        ("sysvmq://not-a-key", "key"),
    ],
)
def test_bad_urls_are_usage_errors(url: str, expected: str) -> None:
    result = aioipc("send", url, "hi")
    assert result.returncode == 2
    assert expected in one_error_line(result.stderr)


def test_missing_posix_queue(mq_name: str) -> None:
    result = aioipc("send", f"mq://{mq_name}", "hi")
    assert result.returncode == 1
    assert mq_name in one_error_line(result.stderr)
    result = aioipc("recv", f"mq://{mq_name}?create=0")
    assert result.returncode == 1
    assert mq_name in one_error_line(result.stderr)


def test_missing_sysv_queue(sysv_url: Callable[[str], str]) -> None:
    result = aioipc("send", sysv_url(""), "hi")
    assert result.returncode == 1
    assert "does not exist" in one_error_line(result.stderr)


def test_missing_ring_and_socket(new_ring: Callable[[], str], short_tmp: Path) -> None:
    name = new_ring()
    result = aioipc("send", f"shm://{name}", "hi")
    assert result.returncode == 1
    assert name in one_error_line(result.stderr)
    result = aioipc("send", f"unix://{short_tmp}/nobody.sock", "hi")
    assert result.returncode == 1
    assert "nobody.sock" in one_error_line(result.stderr)


def test_message_too_large_is_a_runtime_error(mq_name: str) -> None:
    url = f"mq://{mq_name}?create=1&max_message_size=100"
    result = aioipc("send", url, "x" * 101)
    assert result.returncode == 1
    assert "exceeds" in one_error_line(result.stderr)
    posix.unlink_message_queue(mq_name)


def test_whole_with_data_and_bad_count_are_usage_errors(mq_name: str) -> None:
    result = aioipc("send", f"mq://{mq_name}", "--whole", "data")
    assert result.returncode == 2
    one_error_line(result.stderr)
    assert aioipc("recv", f"mq://{mq_name}", "--count", "0").returncode == 2


# ----------------------------------------------------------------- the process


def test_ctrl_c_exits_130_quietly(fifo_path: Path) -> None:
    os.mkfifo(fifo_path, 0o600)
    with background("recv", f"fifo://{fifo_path}", "--unlink") as rx:
        # Returns once recv has the FIFO open, so it is waiting in its event loop.
        fd = os.open(fifo_path, os.O_WRONLY)
        try:
            rx.send_signal(signal.SIGINT)
            assert finish(rx) == (130, b"", b"")
        finally:
            os.close(fd)
    assert not fifo_path.exists()  # --unlink is honoured on Ctrl-C too


def test_closed_stdout_exits_quietly(fifo_path: Path) -> None:
    url = f"fifo://{fifo_path}"
    with background("recv", url, "--unlink") as rx:
        assert rx.stdout is not None
        rx.stdout.close()  # like `aioipc recv ... | head -1` once head has exited
        aioipc("send", *WAIT, url, stdin=b"line\n" * 1000)  # may see the reader go
        code, _, err = finish(rx)
    assert (code, err) == (141, b"")
    assert not fifo_path.exists()


def test_console_script_and_no_rich(mq_name: str) -> None:
    script = Path(sys.executable).with_name("aioipc")
    if not script.exists():
        pytest.skip("the aioipc console script is not installed next to this python")
    result = subprocess.run(
        [script, "send", f"mq://{mq_name}?create=1", "via the console script"],
        capture_output=True,
        timeout=LIMIT,
    )
    ok(result)
    # rich is optional: send and recv must not need it.
    no_rich = (
        "import sys; sys.modules['rich'] = None; "
        "from aioipc._cli.main import main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", no_rich, "recv", f"mq://{mq_name}", "--count", "1", "--unlink"],
        capture_output=True,
        timeout=LIMIT,
    )
    assert ok(result) == b"via the console script\n"


def test_help_lists_the_commands() -> None:
    out = ok(aioipc("--help")).decode()
    for command in ("demo", "send", "recv"):
        assert command in out


# ----------------------------------------------------------------- demo: pub/sub


def test_demo_pubsub_row_checks_every_message_at_three_subscribers() -> None:
    """A size above the default topic's largest message: the topic is made to fit."""
    args = ("--mechanism", "pubsub", "--count", "300", "--round-trips", "10", "--size", "600000")
    out = ok(aioipc("demo", *args)).decode()
    # A rich table ("│ pubsub │ 300 │ ...") or plain columns, whichever is installed.
    rows = [line.replace("│", " ").split() for line in out.splitlines()]
    (row,) = [r for r in rows if r and r[0] == "pubsub"]
    assert row[1] == "300", row
    assert not [e for e in os.listdir("/dev/shm") if e.startswith("aioipc-demo-")]


@pytest.mark.asyncio
async def test_demo_pubsub_subscriber_reports_a_missing_message(
    new_topic: Callable[[], str],
) -> None:
    """The child's check, fed a burst with a gap: it says which number it expected."""
    from aioipc._cli.demo_pubsub import _index

    down, up = new_topic(), new_topic()
    with (
        pubsub.Topic.create(down, 4096, max_subscribers=1) as down_topic,
        pubsub.Topic.create(up, 4096, max_subscribers=1) as up_topic,
    ):
        async with await up_topic.subscribe("block") as replies, down_topic.publisher() as pub:
            cmd = [sys.executable, "-m", "aioipc._cli.demo", "child", "pubsub", down, up, "0"]
            async with await anyio.open_process(cmd) as child:
                with anyio.fail_after(LIMIT):
                    assert await replies.receive() == b"hello\x00"  # it has subscribed
                    await pub.send(b"burst" + _index.pack(3) + _index.pack(8))
                    for number in (0, 2):
                        await pub.send(_index.pack(number) + bytes(4))
                    report = await replies.receive()
                    assert report == b"fail\x00expected message 1 of 8 bytes, got 2 of 8"
                    assert await child.wait() == 1
