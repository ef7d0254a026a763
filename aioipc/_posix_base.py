"""What the POSIX objects share: name rules, the posix_ipc error boundary, the limits."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import posix_ipc

from .errors import (
    IPCExistsError,
    IPCNotFoundError,
    IPCPermissionError,
    IPCSystemError,
    translate_os_error,
)

__all__ = ["check_name", "map_posix_errors", "mq_limit_error", "privileged"]

_NAME_MAX = 255
MQ_DIR = "/proc/sys/fs/mqueue"


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


def mq_limit_error(name: str, max_messages: int, max_message_size: int) -> Exception | None:
    """Say which limit a queue of this shape breaks, or None if none seems to."""
    what = f"POSIX message queue {name}"
    priv = privileged()
    if max_messages < 1 or max_message_size < 1:
        return ValueError(f"{what}: max_messages and max_message_size must be >= 1")
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
    need = max_messages * (max_message_size + _MSG_OVERHEAD)
    soft, _ = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    if soft != resource.RLIM_INFINITY and need > soft:
        return IPCSystemError(
            errno.EMFILE,
            f"{what}: needs about {need} bytes ({max_messages} x {max_message_size} + "
            f"overhead), over RLIMIT_MSGQUEUE = {soft} bytes per user (ulimit -q)",
        )
    return None


@contextmanager
def map_posix_errors(
    what: str, *, creating: bool, shape: tuple[int, int] | None = None
) -> Iterator[None]:
    """Translate posix_ipc's exceptions (which lose errno) into aioipc's, naming ``what``."""
    try:
        yield
    except posix_ipc.ExistentialError as exc:
        if "already exists" in str(exc):
            raise IPCExistsError(errno.EEXIST, f"{what}: already exists") from None
        raise IPCNotFoundError(errno.ENOENT, f"{what}: does not exist") from None
    except posix_ipc.PermissionsError:
        raise IPCPermissionError(errno.EACCES, f"{what}: permission denied") from None
    except ValueError as exc:
        if creating and shape is not None:
            diagnosis = mq_limit_error(what.rsplit(" ", 1)[-1], *shape)
            if diagnosis is not None:
                raise diagnosis from None
        raise ValueError(f"{what}: {exc}") from None
    except OSError as exc:
        if creating and shape is not None and exc.errno in (None, errno.EMFILE, errno.ENOSPC):
            diagnosis = mq_limit_error(what.rsplit(" ", 1)[-1], *shape)
            if diagnosis is not None:
                raise diagnosis from None
            if "Insufficient space" in str(exc) or exc.errno == errno.ENOSPC:
                queues = _sysctl("queues_max")
                raise IPCSystemError(
                    errno.ENOSPC,
                    f"{what}: the system's queue count limit is reached: "
                    f"{MQ_DIR}/queues_max = {queues}",
                ) from None
            if "maximum number of files" in str(exc):
                queues = _sysctl("queues_max")
                nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                raise IPCSystemError(
                    errno.EMFILE,
                    f"{what}: no room: RLIMIT_MSGQUEUE (ulimit -q) is used up by other "
                    f"queues of this user, or RLIMIT_NOFILE = {nofile} reached "
                    f"(queues_max = {queues})",
                ) from None
        raise translate_os_error(exc, what) from None
    except posix_ipc.Error as exc:
        raise IPCSystemError(0, f"{what}: {exc}") from None


def mqueue_exists(name: str) -> bool:
    return os.path.exists(f"/dev/mqueue{name}")
