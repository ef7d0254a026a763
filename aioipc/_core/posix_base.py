"""What the POSIX objects share: name rules, the posix_ipc error boundary, the limits."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import posix_ipc

from ..errors import IPCError, IPCSystemError, translate_os_error

__all__ = [
    "check_name",
    "map_posix_errors",
    "posix_ipc_errno",
    "posix_os_error",
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


def posix_os_error(
    exc: OSError, what: str, *, kind: str = "", shape: tuple[int, int] | None = None
) -> Exception:
    """The aioipc error for an ``OSError`` (with its errno) from a POSIX object's call.

    Limits are named: EMFILE says RLIMIT_NOFILE when the descriptors are used up, else
    (a queue being created, ``shape`` = its max_messages and max_message_size)
    RLIMIT_MSGQUEUE, which the kernel also reports as EMFILE; ENFILE the system's
    file-max; ENOSPC the queue count limit (``kind`` "mq") or a full /dev/shm ("sem").
    """
    code = exc.errno
    if code == errno.EMFILE and shape is not None and not _fds_used_up():
        return _mq_bytes_error(what, *shape)
    # EMFILE (descriptors) and ENFILE: translate_os_error names the limit, in the words
    # every aioipc object uses (errors.fd_limit_reason).
    if code == errno.ENOSPC:
        if kind == "mq":
            queues = _sysctl("queues_max")
            return IPCSystemError(
                errno.ENOSPC,
                f"{what}: the system's limit on queues is reached: {MQ_DIR}/queues_max = {queues}",
            )
        if kind == "sem":
            return _shm_full_error(what)
    if code == errno.ENOMEM:
        return IPCSystemError(errno.ENOMEM, f"{what}: not enough memory")
    return translate_os_error(exc, what)


# posix_ipc raises most failures as an exception with a fixed message and no errno
# (posix_ipc_module.c, 1.1 to 1.3); the message is all that is left to tell them apart.
_POSIX_IPC_ERRNO = {
    "This process already has the maximum number of files open": errno.EMFILE,
    "The system limit on the total number of open files has been reached": errno.ENFILE,
    "Insufficient space for a new queue": errno.ENOSPC,
    "Invalid parameter(s)": errno.EINVAL,
    "The name is too long": errno.ENAMETOOLONG,
    "Not enough memory": errno.ENOMEM,
    "Out of memory": errno.ENOMEM,
}


def posix_ipc_errno(exc: BaseException) -> int | None:
    """The errno behind one of posix_ipc's exceptions, or None if it cannot be told."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    if isinstance(exc, posix_ipc.ExistentialError):
        return errno.EEXIST if "already exists" in text else errno.ENOENT
    if isinstance(exc, posix_ipc.PermissionsError):
        return errno.EACCES
    return _POSIX_IPC_ERRNO.get(text)


@contextmanager
def map_posix_errors(
    kind: str, name: str, *, shape: tuple[int, int] | None = None
) -> Iterator[None]:
    """The boundary around posix_ipc's calls that open, create or unlink ``name``.

    ``kind`` is "mq" or "sem"; ``shape`` (max_messages, max_message_size) is given when a
    queue is being created, so that a limit it breaks can be named. posix_ipc loses the
    errno; it is given back (see :func:`posix_ipc_errno`) on every error raised here.
    """
    what = f"POSIX {'message queue' if kind == 'mq' else 'semaphore'} {name}"
    try:
        yield
    except (posix_ipc.Error, OSError, ValueError, MemoryError) as exc:
        code = posix_ipc_errno(exc)
        if code is None:
            if isinstance(exc, (ValueError, MemoryError)):
                raise  # not posix_ipc's: a bug of ours, not the caller's
            # No errno to give back, and none is invented: an IPCError, not an OSError.
            raise IPCError(f"{what}: {exc}") from None
        if code == errno.EINVAL:
            if shape is not None:
                diagnosis = _mq_shape_error(what, *shape)
                if diagnosis is not None:
                    raise diagnosis from None
            raise ValueError(f"{what}: the kernel refused the parameters (EINVAL)") from None
        if code == errno.ENAMETOOLONG:
            raise ValueError(f"{what}: the name is too long (ENAMETOOLONG)") from None
        error = exc if isinstance(exc, OSError) and exc.errno else OSError(code, str(exc))
        raise posix_os_error(error, what, kind=kind, shape=shape) from None


def mqueue_exists(name: str) -> bool:
    return os.path.exists(f"/dev/mqueue{name}")
