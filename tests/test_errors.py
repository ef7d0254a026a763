"""The error boundary: one translator (aioipc.errors.translate_os_error) and the override
tables the mechanisms pass to it, each provoked with a real kernel object producing
the errno it is about; and no raw OSError, posix_ipc, sysv_ipc or ctypes exception
escaping a public call.

Objects are named uniquely (``/aioipc-test-err-<hex>``) and removed in ``finally``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import posix_ipc
import pytest
import sysv_ipc
from anyio import BrokenResourceError, ClosedResourceError

import aioipc
from aioipc import (
    IPCConnectionRefusedError,
    IPCError,
    IPCExistsError,
    IPCNotFoundError,
    IPCPermissionError,
    IPCSystemError,
    MessageTooLargeError,
)
from aioipc import unix as aunix
from aioipc.errors import NOFOLLOW, map_errors, translate_os_error
from aioipc.posix import MessageQueue as PosixQueue
from aioipc.posix import Semaphore as PosixSemaphore
from aioipc.posix import SharedMemory as PosixSharedMemory
from aioipc.shm import ShmSender
from aioipc.sysv import MessageQueue as SysVQueue
from aioipc.sysv import SemaphoreSet

from ._procs import run_code


def unique(kind: str) -> str:
    return f"/aioipc-test-err-{kind}-{uuid.uuid4().hex[:10]}"


def raw_oserror() -> OSError:
    """An OSError as the kernel makes it: ENOENT from stat of a path that is not there."""
    try:
        os.stat(f"/nonexistent-{uuid.uuid4().hex}")
    except OSError as exc:
        return exc
    raise AssertionError("the path exists")


# -- the translator and its override tables ------------------------------------------


def test_an_override_decides_its_errno_and_none_leaves_it_to_the_defaults() -> None:
    exc = raw_oserror()
    special = IPCSystemError(errno.ENOENT, "special")

    def always(e: OSError, what: str) -> Exception:
        assert e is exc
        assert what == "thing /x"
        return special

    def never(e: OSError, what: str) -> Exception | None:
        return None

    assert translate_os_error(exc, "thing /x", {errno.ENOENT: always}) is special
    fallback = translate_os_error(exc, "thing /x", {errno.ENOENT: never})
    assert isinstance(fallback, IPCNotFoundError)
    assert "thing /x" in str(fallback)
    # Another errno's override does not apply.
    other = translate_os_error(exc, "thing /x", {errno.EACCES: always})
    assert isinstance(other, IPCNotFoundError)
    # An already translated error passes through untouched, overrides or not.
    assert translate_os_error(special, "y", {errno.ENOENT: never}) is special


def test_map_errors_takes_the_same_overrides() -> None:
    def refused(e: OSError, what: str) -> Exception:
        return IPCPermissionError(e.errno, f"{what}: custom")

    with (
        pytest.raises(IPCPermissionError, match="thing /nope: custom") as info,
        map_errors("thing /nope", {errno.ENOENT: refused}),
    ):
        os.stat("/nope/really/not/here")
    assert info.value.errno == errno.ENOENT


# -- EIDRM / EINVAL on a removed SysV object -----------------------------------------


@pytest.mark.asyncio
async def test_sysv_queue_removed_underneath_is_broken_naming_the_queue() -> None:
    q = SysVQueue.create()
    other = SysVQueue.from_id(q.id)
    try:
        q.remove()
        # msgsnd on the removed id: the kernel says EINVAL (the id is gone) or EIDRM.
        with pytest.raises(BrokenResourceError, match=rf"id={q.id}: the object was removed"):
            other.send_nowait(b"x")
        with pytest.raises(BrokenResourceError, match="was removed"):
            other.receive_nowait()
    finally:
        await other.aclose()
        await q.aclose()


@pytest.mark.asyncio
async def test_sysv_receive_waiting_when_the_queue_is_removed_is_broken() -> None:
    q = SysVQueue.create()
    other = SysVQueue.from_id(q.id)
    outcome: list[BaseException] = []
    try:

        async def receive() -> None:
            try:
                await other.receive()
            except BaseException as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            with anyio.fail_after(20):
                # Waiting (in its worker thread, or about to be): removal wakes it either way.
                await anyio.wait_all_tasks_blocked()
                q.remove()
    finally:
        await other.aclose()
        await q.aclose()
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], BrokenResourceError), outcome
    assert f"id={q.id}" in str(outcome[0])
    assert "removed" in str(outcome[0])


@pytest.mark.asyncio
async def test_sysv_semaphore_removed_underneath_is_broken() -> None:
    s = SemaphoreSet.create(size=1)
    other = SemaphoreSet.from_id(s.id)
    try:
        s.remove()
        with pytest.raises(BrokenResourceError, match=rf"id={s.id}: the object was removed"):
            other.op_nowait([(0, 1)])
        with pytest.raises(BrokenResourceError, match="was removed"):
            other.get_value(0)
    finally:
        await other.aclose()
        await s.aclose()


# -- per-call tables of the SysV calls -----------------------------------------------


@pytest.mark.asyncio
async def test_sysv_receive_over_max_size_names_the_receive_size() -> None:
    q = SysVQueue.create()
    try:
        q.send_nowait(b"0123456789")
        with pytest.raises(MessageTooLargeError, match="receive size") as info:
            q.receive_nowait(max_size=4)
        assert info.value.limit == 4
        assert info.value.size == 5
        assert f"id={q.id}" in str(info.value)
        assert q.receive_nowait() == b"0123456789"  # E2BIG left it queued
    finally:
        await q.aclose()


@pytest.mark.asyncio
async def test_sysv_send_over_max_bytes_names_msg_qbytes() -> None:
    q = SysVQueue.create(max_bytes=64)
    try:
        with pytest.raises(MessageTooLargeError, match="msg_qbytes") as info:
            q.send_nowait(b"x" * 100)
        assert info.value.limit == 64
    finally:
        await q.aclose()


@pytest.mark.asyncio
async def test_sysv_semaphore_over_semvmx_is_a_value_error_naming_semvmx() -> None:
    s = SemaphoreSet.create(size=1, values=32767)
    try:
        # The delta is in range; the value it would reach is not: the kernel's ERANGE.
        with pytest.raises(ValueError, match="SEMVMX") as info:
            s.op_nowait([(0, 1)])
        assert f"id={s.id}" in str(info.value)
    finally:
        await s.aclose()


def test_sysv_lookup_by_key_names_the_other_kind_under_it() -> None:
    s = SemaphoreSet.create(key=0x5EED0000 + os.getpid() % 0xFFFF)
    try:
        with pytest.raises(IPCNotFoundError, match="belongs to a semaphore set"):
            SysVQueue.open(s.key)
    finally:
        s.remove()
        anyio.run(s.aclose)


# -- ELOOP: a symlink planted where an object should be -----------------------------


def test_posix_shared_memory_planted_symlink_is_a_permission_error(tmp_path: Path) -> None:
    name = unique("shm")
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"\0" * 4096)
    path = f"/dev/shm{name}"
    os.symlink(decoy, path)
    try:
        with pytest.raises(IPCPermissionError, match="symlink") as info:
            PosixSharedMemory.open(name)
        assert name in str(info.value)
        assert info.value.errno == errno.ELOOP
    finally:
        os.unlink(path)


def test_shm_ring_planted_region_symlink_is_a_permission_error(tmp_path: Path) -> None:
    name = unique("ring")
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"\0" * 8192)
    path = f"/dev/shm{name}"
    os.symlink(decoy, path)
    try:
        with pytest.raises(IPCPermissionError, match="symlink") as info:
            ShmSender.open(name)
        assert name in str(info.value)
        assert info.value.errno == errno.ELOOP
        with pytest.raises(IPCPermissionError, match="symlink"):
            aioipc.shm.is_stale(name)
    finally:
        os.unlink(path)


def test_nofollow_table_is_the_one_for_o_nofollow_opens(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    (tmp_path / "target").write_bytes(b"")
    try:
        os.open(link, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        made = translate_os_error(exc, f"file {link}", NOFOLLOW)
    assert isinstance(made, IPCPermissionError)
    assert f"file {link}" in str(made)


# -- unix sockets: EMSGSIZE, ECONNREFUSED ------------------------------------------


@pytest.mark.asyncio
async def test_unix_datagram_over_the_send_buffer_names_so_sndbuf(short_tmp: Path) -> None:
    path = str(short_tmp / "d.sock")
    size = 4 * 1024 * 1024
    async with (
        await aunix.listen(path, "dgram", max_message_size=size),
        await aunix.connect(path, "dgram", max_message_size=size) as client,
    ):
        with socket.socket(fileno=os.dup(client.extra(aioipc.IPCAttribute.fd))) as s:
            limit = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        with pytest.raises(MessageTooLargeError, match="SO_SNDBUF") as info:
            await client.send(b"x" * (limit + 1))
        assert info.value.limit == limit
        assert info.value.size == limit + 1
        assert path in str(info.value)


@pytest.mark.asyncio
async def test_unix_connect_to_a_stale_socket_file_is_connection_refused(
    short_tmp: Path,
) -> None:
    path = str(short_tmp / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nobody listens
    try:
        with pytest.raises(IPCConnectionRefusedError, match="nobody is listening") as info:
            await aunix.connect(path)
    finally:
        os.unlink(path)
    assert path in str(info.value)
    assert info.value.errno == errno.ECONNREFUSED


@pytest.mark.asyncio
async def test_unix_datagram_send_to_a_closed_peer_is_broken(short_tmp: Path) -> None:
    path = str(short_tmp / "gone.sock")
    server = await aunix.listen(path, "dgram")
    client = await aunix.connect(path, "dgram")
    try:
        await server.aclose()
        with pytest.raises(BrokenResourceError, match="the peer is gone") as info:
            await client.send(b"hello")
        assert path in str(info.value)
    finally:
        await client.aclose()
        await server.aclose()


# -- posix_ipc: the errno recovered without reading its messages --------------------


def test_thread_errno_is_the_failed_posix_ipc_call_s_and_ctypes_get_errno_is_not() -> None:
    from aioipc._core.libc import thread_errno

    ctypes.set_errno(0)
    seen = None
    try:
        posix_ipc.MessageQueue(unique("mq"))
    except posix_ipc.ExistentialError:
        seen = thread_errno()
    assert seen == errno.ENOENT
    # ctypes' own copy is only swapped around ctypes calls: it knows nothing of this one.
    assert ctypes.get_errno() == 0


@pytest.mark.asyncio
async def test_posix_queue_lookup_errors_carry_their_errno() -> None:
    name = unique("mq")
    with pytest.raises(IPCNotFoundError) as missing:
        PosixQueue.open(name)
    assert missing.value.errno == errno.ENOENT
    assert name in str(missing.value)
    q = PosixQueue.create(name, max_messages=2, max_message_size=64)
    try:
        with pytest.raises(IPCExistsError) as exists:
            PosixQueue.create(name, max_messages=2, max_message_size=64)
        assert exists.value.errno == errno.EEXIST
        assert name in str(exists.value)
    finally:
        await q.aclose()
        aioipc.posix.unlink_message_queue(name)
    with pytest.raises(IPCNotFoundError) as unlinked:
        aioipc.posix.unlink_message_queue(name)
    assert unlinked.value.errno == errno.ENOENT


def test_posix_queue_shape_over_the_limit_names_it() -> None:
    name = unique("mq")
    with pytest.raises(ValueError, match="max_messages=70000 exceeds") as info:
        PosixQueue.create(name, max_messages=70000, max_message_size=64)
    assert name in str(info.value)
    assert not os.path.exists(f"/dev/mqueue{name}")


# EMFILE (a bare OSError from posix_ipc, its errno recovered), RLIMIT_MSGQUEUE and a
# full /dev/shm are provoked in tests/test_hardening_posix.py.


@pytest.mark.asyncio
async def test_posix_semaphore_over_value_max_is_a_value_error() -> None:
    name = unique("sem")
    s = PosixSemaphore.create(name, aioipc.posix.VALUE_MAX)
    try:
        with pytest.raises(ValueError, match="SEM_VALUE_MAX") as info:
            s.release()
        assert name in str(info.value)
    finally:
        s.unlink()
        await s.aclose()


# -- permission errors, from a process that is not the owner ------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_permission_errors_name_the_object_for_every_family(tmp_path: Path) -> None:
    mq_name = unique("mq")
    sem_name = unique("sem")
    shm_name = unique("shm")
    pq = PosixQueue.create(mq_name, max_messages=2, max_message_size=64)
    ps = PosixSemaphore.create(sem_name)
    pm = PosixSharedMemory.create(shm_name, 4096)
    sq = SysVQueue.create(mode=0o600)
    ss = SemaphoreSet.create(mode=0o600)
    try:
        out = run_code(
            """
            import os, sys
            import aioipc
            from aioipc.posix import MessageQueue, Semaphore, SharedMemory
            from aioipc.sysv import MessageQueue as SQ, SemaphoreSet
            mq, sem, shm, qid, sid = sys.argv[1:]
            os.setgid(65534)
            os.setuid(65534)
            calls = [
                (mq, lambda: MessageQueue.open(mq)),
                (sem, lambda: Semaphore.open(sem)),
                (shm, lambda: SharedMemory.open(shm)),
                (f"id={qid}", lambda: SQ.from_id(int(qid))),
                (f"id={sid}", lambda: SemaphoreSet.from_id(int(sid))),
            ]
            for what, call in calls:
                try:
                    call()
                except Exception as exc:
                    ok = isinstance(exc, aioipc.IPCPermissionError) and what in str(exc)
                    print(ok, type(exc).__module__, type(exc).__name__, exc)
                else:
                    print(False, "no error for", what)
            """,
            mq_name,
            sem_name,
            shm_name,
            str(sq.id),
            str(ss.id),
        )
    finally:
        pq.unlink()
        anyio.run(pq.aclose)
        ps.unlink()
        anyio.run(ps.aclose)
        pm.close()
        aioipc.posix.unlink_shared_memory(shm_name)
        sq.remove()
        anyio.run(sq.aclose)
        ss.remove()
        anyio.run(ss.aclose)
    lines = out.strip().splitlines()
    assert len(lines) == 5, out
    assert all(line.startswith("True aioipc.errors") for line in lines), out


# -- nothing raw escapes ----------------------------------------------------------------

_FOREIGN = ("posix_ipc", "sysv_ipc", "ctypes", "_ctypes")


def _provocations(tmp: Path) -> Iterator[tuple[str, Callable[[], object]]]:
    missing_mq = unique("mq")
    missing_sem = unique("sem")
    missing_shm = unique("shm")
    missing_ring = unique("ring")
    yield missing_mq, lambda: PosixQueue.open(missing_mq)
    yield missing_mq, lambda: aioipc.posix.unlink_message_queue(missing_mq)
    yield missing_sem, lambda: PosixSemaphore.open(missing_sem)
    yield missing_sem, lambda: aioipc.posix.unlink_semaphore(missing_sem)
    yield missing_shm, lambda: PosixSharedMemory.open(missing_shm)
    yield missing_shm, lambda: aioipc.posix.unlink_shared_memory(missing_shm)
    yield missing_ring, lambda: ShmSender.open(missing_ring)
    yield missing_ring, lambda: aioipc.shm.unlink(missing_ring)
    yield "key=0x5eedf00d", lambda: SysVQueue.open(0x5EEDF00D)
    yield "key=0x5eedf00d", lambda: SemaphoreSet.open(0x5EEDF00D)
    yield "id=2147483646", lambda: SysVQueue.from_id(2**31 - 2)
    yield "id=2147483646", lambda: SemaphoreSet.from_id(2**31 - 2)
    yield "ftok path", lambda: aioipc.sysv.ftok(tmp / "nope", 1)
    fifo_path = str(tmp / "nofifo")
    yield fifo_path, lambda: anyio.run(aioipc.fifo.open_receiver, fifo_path)
    sock_path = str(tmp / "nosock")
    yield sock_path, lambda: anyio.run(aunix.connect, sock_path)
    no_dir = str(tmp / "nodir" / "x")
    yield no_dir, lambda: aioipc.fifo.create(no_dir)
    yield no_dir, lambda: anyio.run(aunix.listen, no_dir)
    yield no_dir, lambda: aioipc.MappedFile.open(no_dir)
    yield "key=0x5eedf00d", lambda: aioipc.sysv.SharedMemory.open(0x5EEDF00D)
    yield "id=2147483646", lambda: aioipc.sysv.SharedMemory.from_id(2**31 - 2)
    yield "key=0x5eedf00d", lambda: aioipc.lock.Lock.open(0x5EEDF00D)


def test_no_foreign_or_raw_exception_escapes_a_public_call(short_tmp: Path) -> None:
    for what, call in _provocations(short_tmp):
        with pytest.raises(Exception) as info:  # noqa: PT011 - the test is about the type
            call()
        exc = info.value
        assert type(exc).__module__.split(".")[0] not in _FOREIGN, (what, repr(exc))
        assert type(exc) is not OSError, (what, repr(exc))
        assert isinstance(exc, IPCError | ClosedResourceError | BrokenResourceError), (
            what,
            repr(exc),
        )
        assert what in str(exc), (what, str(exc))


def test_sysv_ipc_is_only_a_fast_path() -> None:
    # sysv_ipc's own exceptions never reach a caller: its calls are repeated through
    # ctypes (which has the errno) whenever they fail with anything but "busy".
    q = SysVQueue.create(key=0x5EED1000 + os.getpid() % 0xFFF)
    try:
        sysv_ipc.MessageQueue(q.key).remove()  # removed behind the handle's back
        with pytest.raises(BrokenResourceError, match="removed"):
            q.send_nowait(b"x")
    finally:
        anyio.run(q.aclose)
