"""What the POSIX objects share: name rules, the posix_ipc error boundary, the limits."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import posix_ipc

from ..errors import ErrorFactory, IPCError, IPCSystemError, Overrides, translate_os_error
from . import libc as _libc

__all__ = [
    "MQ_ERRORS",
    "SEM_ERRORS",
    "check_name",
    "map_posix_errors",
    "mq_create_errors",
    "posix_errno",
    "posix_error",
    "privileged",
]

_NAME_MAX = 255
MQ_DIR = "/proc/sys/fs/mqueue"
#: Where glibc keeps named semaphores (as sem.NAME).
SHM_DIR = "/dev/shm"


def check_name(name: str, kind: str, prefix_len: int = 0) -> str:
    """Validate a POSIX IPC name: one leading slash, no other, at most NAME_MAX bytes.

    ``prefix_len`` is what the C library adds in /dev/shm ("sem." for semaphores).
    """
    if not isinstance(name, str):
        raise TypeError(f"a POSIX {kind} name is a str like '/jobs', not {name!r}")
    if not name.startswith("/") or len(name) < 2:
        raise ValueError(f"a POSIX {kind} name starts with one '/' and has more: {name!r}")
    if "/" in name[1:]:
        raise ValueError(f"a POSIX {kind} name has no '/' after the first: {name!r}")
    if "\0" in name or name in ("/.", "/.."):
        raise ValueError(f"invalid POSIX {kind} name {name!r}")
    size = len(name[1:].encode()) + prefix_len
    if size > _NAME_MAX:
        raise ValueError(
            f"POSIX {kind} name {name!r} is too long: at most {_NAME_MAX - prefix_len} bytes "
            "after the slash (NAME_MAX)"
        )
    return name


def privileged() -> bool:
    """Whether this process has CAP_SYS_RESOURCE (which lifts the mqueue sysctl limits)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))
    except (OSError, ValueError):
        pass
    return False


def _sysctl(name: str) -> int:
    try:
        return int(Path(MQ_DIR, name).read_text())
    except (OSError, ValueError):
        return -1


# The kernel's own caps, which even CAP_SYS_RESOURCE cannot pass (ipc/mqueue.c).
_HARD_MSGMAX = 65536
_HARD_MSGSIZEMAX = 16 * 1024 * 1024
# What the kernel charges per message slot besides the text (ipc/mqueue.c, 64-bit):
# sizeof(struct msg_msg) and sizeof(struct posix_msg_tree_node), 48 bytes each.
_MSG_OVERHEAD = 48 + 48


def _mq_shape_error(what: str, max_messages: int, max_message_size: int) -> ValueError | None:
    """Which sysctl (or, with CAP_SYS_RESOURCE, which hard cap) a queue shape exceeds."""
    priv = privileged()
    msg_max = _HARD_MSGMAX if priv else _sysctl("msg_max")
    msgsize_max = _HARD_MSGSIZEMAX if priv else _sysctl("msgsize_max")
    who = "the kernel's hard limit" if priv else f"{MQ_DIR}/"
    if msg_max >= 0 and max_messages > msg_max:
        src = "HARD_MSGMAX" if priv else f"{who}msg_max"
        return ValueError(f"{what}: max_messages={max_messages} exceeds {src} = {msg_max}")
    if msgsize_max >= 0 and max_message_size > msgsize_max:
        src = "HARD_MSGSIZEMAX" if priv else f"{who}msgsize_max"
        return ValueError(
            f"{what}: max_message_size={max_message_size} exceeds {src} = {msgsize_max}"
        )
    return None


def _mq_bytes_error(what: str, max_messages: int, max_message_size: int) -> IPCSystemError:
    """The kernel refused to charge a new queue to RLIMIT_MSGQUEUE (it says EMFILE)."""
    need = max_messages * (max_message_size + _MSG_OVERHEAD)
    soft, _ = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    limit = f"RLIMIT_MSGQUEUE (ulimit -q) = {soft} bytes per user"
    if soft != resource.RLIM_INFINITY and need > soft:
        return IPCSystemError(
            errno.EMFILE,
            f"{what}: needs about {need} bytes ({max_messages} x {max_message_size} + "
            f"overhead), over {limit}",
        )
    return IPCSystemError(
        errno.EMFILE,
        f"{what}: needs about {need} bytes, and {limit} is used up by this user's other "
        "queues (they are charged until unlinked and closed everywhere)",
    )


def _fds_used_up() -> bool:
    """Whether this process has every descriptor RLIMIT_NOFILE allows open, right now.

    mq_open says EMFILE both when no descriptor is free and when RLIMIT_MSGQUEUE is
    used up; the kernel takes the descriptor first. Opening one more is the question
    itself: listing /proc/self/fd (to count the descriptors against the soft limit) would
    need that same free descriptor, and fails the same way when there is none.
    """
    try:
        fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno == errno.EMFILE
    os.close(fd)
    return False


def _shm_full_error(what: str) -> IPCSystemError:
    try:
        st = os.statvfs(SHM_DIR)
        size = f" ({st.f_blocks * st.f_frsize} bytes, {st.f_files} files)"
    except OSError:
        size = ""
    return IPCSystemError(
        errno.ENOSPC,
        f"{what}: {SHM_DIR} is full{size}: POSIX semaphores are files there",
    )


def _queues_full(exc: OSError, what: str) -> Exception:
    return IPCSystemError(
        errno.ENOSPC,
        f"{what}: the system's limit on queues is reached: "
        f"{MQ_DIR}/queues_max = {_sysctl('queues_max')}",
    )


def _dev_shm_full(exc: OSError, what: str) -> Exception:
    return _shm_full_error(what)


def _no_memory(exc: OSError, what: str) -> Exception:
    return IPCSystemError(errno.ENOMEM, f"{what}: not enough memory")


def _bad_parameters(exc: OSError, what: str) -> Exception:
    return ValueError(f"{what}: the kernel refused the parameters (EINVAL)")


def _name_too_long(exc: OSError, what: str) -> Exception:
    return ValueError(f"{what}: the name is too long (ENAMETOOLONG)")


# EMFILE (descriptors) and ENFILE: the defaults name the limit, in the words every
# aioipc object uses (errors.fd_limit_reason).
_COMMON: dict[int, ErrorFactory] = {
    errno.EINVAL: _bad_parameters,
    errno.ENAMETOOLONG: _name_too_long,
    errno.ENOMEM: _no_memory,
}
#: How a POSIX message queue's errnos read: ENOSPC is the queue count limit.
MQ_ERRORS: Overrides = {**_COMMON, errno.ENOSPC: _queues_full}
#: How a POSIX semaphore's errnos read: ENOSPC is a full /dev/shm.
SEM_ERRORS: Overrides = {**_COMMON, errno.ENOSPC: _dev_shm_full}


def mq_create_errors(max_messages: int, max_message_size: int) -> Overrides:
    """:data:`MQ_ERRORS` for a queue being created with this shape: EINVAL names the
    sysctl (or hard cap) it exceeds, and EMFILE, when descriptors are left, is
    RLIMIT_MSGQUEUE (which the kernel also reports as EMFILE)."""

    def shape(exc: OSError, what: str) -> Exception:
        diagnosis = _mq_shape_error(what, max_messages, max_message_size)
        return diagnosis if diagnosis is not None else _bad_parameters(exc, what)

    def queue_bytes(exc: OSError, what: str) -> Exception | None:
        if _fds_used_up():
            return None  # the default: RLIMIT_NOFILE
        return _mq_bytes_error(what, max_messages, max_message_size)

    return {**MQ_ERRORS, errno.EINVAL: shape, errno.EMFILE: queue_bytes}


# What each of posix_ipc's exceptions can stand for (posix_ipc_module.c, 1.1 to 1.3):
# it raises most failures with a fixed message and no errno. The class narrows the
# errno down; the calling thread's errno, read at once, picks among the candidates;
# if it is none of them, the class's own meaning stands (None: it cannot be told).
_CANDIDATES: tuple[tuple[type[BaseException], frozenset[int], int | None], ...] = (
    (posix_ipc.BusyError, frozenset({errno.EAGAIN, errno.ETIMEDOUT}), errno.EAGAIN),
    (posix_ipc.SignalError, frozenset({errno.EINTR}), errno.EINTR),
    (posix_ipc.PermissionsError, frozenset({errno.EACCES}), errno.EACCES),
    # Also a descriptor the kernel no longer accepts (EBADF, EINVAL from sem_wait,
    # sem_post, mq_send, mq_receive): each mechanism's table says what that means.
    (
        posix_ipc.ExistentialError,
        frozenset({errno.EEXIST, errno.ENOENT, errno.EBADF, errno.EINVAL}),
        errno.ENOENT,
    ),
    (ValueError, frozenset({errno.EINVAL, errno.ENAMETOOLONG, errno.EMSGSIZE}), None),
    (MemoryError, frozenset({errno.ENOMEM}), errno.ENOMEM),
    (OSError, frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC}), None),
)


def posix_errno(exc: BaseException) -> int | None:
    """The errno behind one of posix_ipc's exceptions, or None if it cannot be told.

    Call it first thing in the ``except`` clause, in the thread that made the call: it
    reads that thread's errno, which the next failing call would overwrite (a worker
    thread translates its own failures before handing them over). That errno is
    trusted only if it is one the exception's class can stand for. No message text is
    read. Only failures pay for this: posix_ipc's BusyError (the hot paths' "would
    block") is caught before anything comes here.
    """
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    now = _libc.thread_errno()
    for cls, codes, meaning in _CANDIDATES:
        if isinstance(exc, cls):
            return now if now in codes else meaning
    return None


def posix_error(exc: BaseException, what: str, overrides: Overrides | None = None) -> Exception:
    """The one boundary (:func:`aioipc.errors.translate_os_error`) for an exception
    from posix_ipc, its errno recovered by :func:`posix_errno` (so call it first thing
    in the ``except`` clause). With no errno to give back none is invented: an
    :exc:`IPCError`, not an ``OSError``.
    """
    return _translate(exc, posix_errno(exc), what, overrides)


def _translate(
    exc: BaseException, code: int | None, what: str, overrides: Overrides | None
) -> Exception:
    if code is None:
        return IPCError(f"{what}: {type(exc).__name__}: {exc}")
    error = exc if isinstance(exc, OSError) and exc.errno else OSError(code, os.strerror(code))
    return translate_os_error(error, what, overrides)


@contextmanager
def map_posix_errors(
    kind: str, name: str, *, shape: tuple[int, int] | None = None
) -> Iterator[None]:
    """The boundary around posix_ipc's calls that open, create or unlink ``name``.

    ``kind`` is "mq" or "sem"; ``shape`` (max_messages, max_message_size) is given when a
    queue is being created, so that a limit it breaks can be named.
    """
    what = f"POSIX {'message queue' if kind == 'mq' else 'semaphore'} {name}"
    _libc.clear_thread_errno()  # an earlier call's errno is not this block's
    try:
        yield
    except (posix_ipc.Error, OSError, ValueError, MemoryError) as exc:
        code = posix_errno(exc)  # first: nothing may fail in between
        if code is None and isinstance(exc, (ValueError, MemoryError)):
            raise  # not posix_ipc's: a bug of ours, not the caller's
        if shape is not None:
            table = mq_create_errors(*shape)
        else:
            table = MQ_ERRORS if kind == "mq" else SEM_ERRORS
        raise _translate(exc, code, what, table) from None
