"""The ring channel: a one-way message channel over a ring buffer in shared memory.

A ring named ``/jobs`` is three files, all created with the same mode (0600 default):
``/dev/shm/jobs`` (a 4 KiB header and the ring's data) and two doorbell FIFOs,
``/dev/shm/jobs.bell-data`` (rung for a sleeping receiver) and
``/dev/shm/jobs.bell-space`` (rung for a sleeping sender). Messages are copied straight
into the shared pages; a doorbell is written only when the other side said it may be
asleep, so a busy channel makes no system call per message. See docs/shared-memory.md
for the layout, the wake-up protocol and why no wake-up is lost.

One :class:`ShmReceiver` and one :class:`ShmSender` may be attached at a time (each
side holds an OFD lock on the region; a second one gets BusyResourceError). A ring
created with ``multi_producer=True`` takes any number of senders, which serialise every
``send`` on a lock (an OFD lock: freed by the kernel if its holder dies); there the
stream ends when a sender calls :meth:`ShmSender.send_eof`, not when one closes.

A peer that dies (even by SIGKILL) is noticed through a pidfd that wakes the sleeper;
its pending and later calls raise BrokenResourceError. Messages it published before
dying are still delivered first. Who is alive is the kernel's answer only: the OFD
locks say who is attached, and a classic POSIX record lock each end also holds tells
the peer which process to watch; the pids and states in the shared header, which any
co-writer can forge, decide nothing (docs/shared-memory.md, "Who is alive").

Two-way: :class:`ShmDuplex` is an anyio ObjectStream of bytes over two rings, one per
direction. A :class:`ShmDuplexListener` created under a name accepts any number of
clients, each of which :meth:`ShmDuplex.connect` gives its own private pair of rings
(docs/shared-memory.md, "The duplex channel"; URL ``shm+duplex://name``).
"""

from __future__ import annotations

from ._core.shm import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._core.shm import ShmReceiver as ShmReceiver
from ._core.shm import ShmSender as ShmSender
from ._core.shm import is_stale as is_stale
from ._core.shm import unlink as unlink
from ._core.shm_duplex import ShmDuplex as ShmDuplex
from ._core.shm_duplex import ShmDuplexListener as ShmDuplexListener

__all__ = [
    "DEFAULT_CAPACITY",
    "ShmDuplex",
    "ShmDuplexListener",
    "ShmReceiver",
    "ShmSender",
    "is_stale",
    "unlink",
]
