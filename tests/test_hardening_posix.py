"""Issue 10, POSIX items: errors at the limits carry errno and name the limit; bad modes,
shapes and values are refused before anything is created.

Real queues and semaphores; the descriptor limit is reached in a real child process
(``tests/peers/posix_peer.py emfile``), and a full ``/dev/shm`` is a one-page tmpfs in a
mount namespace of the child's own. Helpers come from ``tests/test_posix.py``.
"""

from __future__ import annotations

import contextlib
import errno
import stat
from typing import Any

import pytest

from aioipc import IPCNotFoundError, IPCSystemError
from aioipc.posix import (
    VALUE_MAX,
    MessageQueue,
    Semaphore,
    unlink_message_queue,
    unlink_semaphore,
)

from .test_posix import (
    SMALL,
    fresh_queue,
    fresh_semaphore,
    mq_file,
    root_only,
    run_peer,
    sem_file,
    soft_rlimit_msgqueue,
    unique,
)

KERNEL_SLOT_OVERHEAD = 48 + 48


def _gone(name: str) -> None:
    """Remove whatever a failed test may have left under ``name``."""
    with contextlib.suppress(FileNotFoundError):
        unlink_message_queue(name)
    with contextlib.suppress(FileNotFoundError):
        unlink_semaphore(name)


# ============================================================ item 9: errors at limits


#: The calls the ``emfile`` peer makes, in order, and which of its names each one uses.
EMFILE_CALLS = {
    "mq.create": "new mq",
    "mq.open": "mq",
    "mq.open_or_create new": "new mq",
    "mq.open_or_create existing": "mq",
    "sem.create": "new sem",
    "sem.open": "sem",
    "sem.open_or_create new": "new sem",
    "sem.open_or_create existing": "sem",
}


@pytest.mark.asyncio
async def test_at_emfile_every_posix_open_names_rlimit_nofile_first() -> None:
    """A child uses up its descriptors; every create/open then says RLIMIT_NOFILE, with
    its value and errno EMFILE, and does not blame the queue limit (RLIMIT_MSGQUEUE)."""
    new_mq, new_sem = unique("mq"), unique("sem")
    try:
        async with fresh_queue(**SMALL) as q, fresh_semaphore(1) as sem:
            async with run_peer("emfile", q.name, sem.name, new_mq, new_sem) as peer:
                word, limit = (await peer.line()).split()
                assert word == "limit"
                lines = [await peer.line() for _ in EMFILE_CALLS]
                await peer.finish()
            assert q.current_messages == 0
            assert sem.value == 1
        names = {"mq": q.name, "sem": sem.name, "new mq": new_mq, "new sem": new_sem}
        for (call, which), line in zip(EMFILE_CALLS.items(), lines, strict=True):
            label, kind, code, text = line.split("|", 3)
            assert label == call
            assert kind == "IPCSystemError", line
            assert code == str(errno.EMFILE), line
            assert f"RLIMIT_NOFILE = {limit}, ulimit -n" in text, line
            assert "RLIMIT_MSGQUEUE" not in text, line
            assert names[which] in text, line
        assert not mq_file(new_mq).exists()
        assert not sem_file(new_sem).exists()
    finally:
        _gone(new_mq)
        _gone(new_sem)


@pytest.mark.asyncio
async def test_mq_rlimit_msgqueue_used_up_blames_it_not_the_descriptors() -> None:
    """Descriptors are free and the queue limit is used up by another queue: the error
    names RLIMIT_MSGQUEUE with its value and what this queue needs, and no RLIMIT_NOFILE."""
    shape: dict[str, Any] = {"max_messages": 2, "max_message_size": 1000}
    one = 2 * (1000 + KERNEL_SLOT_OVERHEAD)
    async with fresh_queue(**shape):
        name = unique("mq")
        try:
            with soft_rlimit_msgqueue(one + 100), pytest.raises(IPCSystemError) as info:
                MessageQueue.create(name, **shape)
        finally:
            _gone(name)
    text = str(info.value)
    assert info.value.errno == errno.EMFILE
    assert f"RLIMIT_MSGQUEUE (ulimit -q) = {one + 100} bytes" in text
    assert f"needs about {one} bytes" in text
    assert "other queues" in text
    assert "RLIMIT_NOFILE" not in text
    assert name in text


@pytest.mark.asyncio
async def test_missing_and_existing_objects_carry_their_errno() -> None:
    missing = unique("sem")
    calls: list[tuple[Any, int]] = [
        (lambda: Semaphore.open(missing), errno.ENOENT),
        (lambda: unlink_semaphore(missing), errno.ENOENT),
        (lambda: MessageQueue.open(missing), errno.ENOENT),
        (lambda: unlink_message_queue(missing), errno.ENOENT),
    ]
    for call, code in calls:
        with pytest.raises(IPCNotFoundError) as info:
            call()
        assert info.value.errno == code
        assert missing in str(info.value)
    async with fresh_semaphore(1) as sem, fresh_queue(**SMALL) as q:
        for call in (
            lambda: Semaphore.create(sem.name),
            lambda: MessageQueue.create(q.name, **SMALL),
        ):
            with pytest.raises(FileExistsError) as exists:
                call()
            assert exists.value.errno == errno.EEXIST


@root_only
@pytest.mark.asyncio
async def test_permission_errors_carry_eacces_and_the_name() -> None:
    async with fresh_queue(**SMALL) as q, fresh_semaphore(1) as sem:
        targets = [f"mq-unlink:{q.name}", f"sem-unlink:{sem.name}"]
        async with run_peer("as-nobody", *targets) as peer:
            for name in (q.name, sem.name):
                line = await peer.line()
                kind, is_permission_error, code, text = line.split("|", 3)
                assert (kind, is_permission_error) == ("IPCPermissionError", "True"), line
                assert code == str(errno.EACCES), line
                assert name in text, line
            await peer.finish()
        assert mq_file(q.name).exists()
        assert sem_file(sem.name).exists()


@root_only
@pytest.mark.asyncio
async def test_sem_create_on_a_full_dev_shm_says_so() -> None:
    name = unique("sem")
    async with run_peer("sem-shm-full", name) as peer:
        line = await peer.line()
        await peer.finish()
    if line.startswith("skip"):
        pytest.skip(line)
    kind, code, text = line.split("|", 2)
    assert kind == "IPCSystemError", line
    assert code == str(errno.ENOSPC), line
    assert name in text
    assert "/dev/shm is full" in text, line


# ================================================== item 11: bad modes, shapes, values


BAD_MODES: list[tuple[object, type[Exception]]] = [
    (-1, ValueError),
    (0o1000, ValueError),
    (0o4700, ValueError),
    (0o7777, ValueError),
    ("0600", TypeError),
    (6.0, TypeError),
    (True, TypeError),
]


@pytest.mark.asyncio
async def test_bad_modes_are_refused_and_create_nothing() -> None:
    name = unique("mode")
    try:
        makers: list[tuple[str, Any]] = [
            ("message queue", lambda mode: MessageQueue.create(name, mode=mode, **SMALL)),
            ("message queue", lambda mode: MessageQueue.open_or_create(name, mode=mode, **SMALL)),
            ("semaphore", lambda mode: Semaphore.create(name, 1, mode=mode)),
            ("semaphore", lambda mode: Semaphore.open_or_create(name, 1, mode=mode)),
        ]
        for mode, error in BAD_MODES:
            for kind, make in makers:
                with pytest.raises(error, match="mode") as info:
                    make(mode)
                assert name in str(info.value), info.value
                assert kind in str(info.value)
                assert not mq_file(name).exists(), (mode, kind)
                assert not sem_file(name).exists(), (mode, kind)
    finally:
        _gone(name)

    # The full range is allowed, exactly (whatever the umask).
    for mode in (0, 0o777):
        async with fresh_queue(mode=mode, **SMALL) as q:
            assert q.mode == mode
        sem = Semaphore.create(name, 0, mode=mode)
        try:
            assert stat.S_IMODE(sem_file(name).stat().st_mode) == mode
        finally:
            await sem.aclose()
            unlink_semaphore(name)

    # open_or_create checks the mode even when the object exists (nothing to apply it to,
    # but a bad value is a bug in the caller either way).
    async with fresh_queue(**SMALL) as q, fresh_semaphore(1) as sem:
        with pytest.raises(ValueError, match="mode"):
            MessageQueue.open_or_create(q.name, mode=-1, **SMALL)
        with pytest.raises(ValueError, match="mode"):
            Semaphore.open_or_create(sem.name, 1, mode=-1)
        # The mode setter: no masking either.
        for mode, error in BAD_MODES:
            with pytest.raises(error, match="mode") as info:
                q.mode = mode  # type: ignore[assignment]
            assert q.name in str(info.value)
            assert q.mode == 0o600


BAD_SHAPES: list[tuple[str, object, type[Exception]]] = [
    ("max_messages", 0, ValueError),
    ("max_messages", -1, ValueError),
    ("max_messages", 2**70, ValueError),
    ("max_messages", "4", TypeError),
    ("max_messages", 4.0, TypeError),
    ("max_messages", True, TypeError),
    ("max_message_size", 0, ValueError),
    ("max_message_size", 2**63, ValueError),
    ("max_message_size", None, TypeError),
    ("max_message_size", True, TypeError),
]


@pytest.mark.asyncio
async def test_bad_queue_shapes_name_the_parameter_and_create_nothing() -> None:
    name = unique("mq")
    try:
        for param, value, error in BAD_SHAPES:
            shape: dict[str, Any] = {**SMALL, param: value}
            for make in (MessageQueue.create, MessageQueue.open_or_create):
                with pytest.raises(error, match=param) as info:
                    make(name, **shape)
                assert name in str(info.value)
                assert not mq_file(name).exists(), (param, value)
    finally:
        _gone(name)


@pytest.mark.asyncio
async def test_bad_semaphore_values_name_the_parameter_and_create_nothing() -> None:
    name = unique("sem")
    bad: list[tuple[object, type[Exception]]] = [
        (-1, ValueError),
        (VALUE_MAX + 1, ValueError),
        (2**70, ValueError),
        (True, TypeError),
        ("1", TypeError),
        (1.0, TypeError),
    ]
    try:
        for value, error in bad:
            for make in (Semaphore.create, Semaphore.open_or_create):
                with pytest.raises(error, match="value") as info:
                    make(name, value)  # type: ignore[arg-type]
                assert name in str(info.value)
                assert not sem_file(name).exists()
    finally:
        _gone(name)
