"""Where to read the POSIX message queues from, for ``aioipc ls``.

The kernel lists them only through an ``mqueue`` filesystem, usually mounted on
``/dev/mqueue``. When it is not mounted, root can still look: this process moves into a
mount namespace of its own (``unshare(CLONE_NEWNS)``, propagation made private) and
mounts an ``mqueue`` instance on a temporary directory. Nobody else sees that mount, and
it goes away with the process; the queues are the same, since they belong to the IPC
namespace, not to a mount. Anyone else gets a hint saying how to mount it.

Only the command line calls this: it changes the whole process's view of the
filesystem, which a library must never do behind its caller's back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from .._core import libc as _libc

__all__ = ["MQUEUE_DIR", "MQUEUE_HINT", "mqueue_directory"]

MQUEUE_DIR = "/dev/mqueue"
MQUEUE_HINT = (
    "note: /dev/mqueue is not mounted, so POSIX message queues are not listed "
    "(as root: mkdir -p /dev/mqueue && mount -t mqueue none /dev/mqueue)"
)
PRIVATE_NOTE = "note: /dev/mqueue is not mounted; POSIX message queues read through a private mount"

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2


@contextlib.contextmanager
def mqueue_directory(directory: str = MQUEUE_DIR) -> Iterator[tuple[str | None, str]]:
    """``(where to read the queues or None, a note for stderr or "")``."""
    if os.path.ismount(directory):
        yield directory, ""
        return
    view = _private_view() if os.geteuid() == 0 else None
    if view is None:
        yield None, MQUEUE_HINT
        return
    try:
        yield view, PRIVATE_NOTE
    finally:
        _drop_view(view)


def _private_view() -> str | None:
    try:
        _libc.call("unshare", _CLONE_NEWNS)
        # Private first: without it, a mount made here could propagate back to the host
        # on systems whose root mount is shared (systemd makes it so).
        _libc.call("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
    except OSError:
        return None
    view = tempfile.mkdtemp(prefix="aioipc-mqueue-")
    try:
        _libc.call("mount", b"none", view.encode(), b"mqueue", 0, None)
    except OSError:
        shutil.rmtree(view, ignore_errors=True)
        return None
    return view


def _drop_view(view: str) -> None:
    with contextlib.suppress(OSError):
        _libc.call("umount2", view.encode(), _MNT_DETACH)
    with contextlib.suppress(OSError):
        os.rmdir(view)
