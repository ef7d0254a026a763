"""POSIX IPC: message queues (fd-driven, no threads), named semaphores, shared memory.

Names are ``"/name"``: one leading slash and no other. Constructors never wait:
``create`` (exclusive), ``open``, ``open_or_create``; default mode 0600. ``unlink``
removes a name; handles already open keep working until closed.
"""

from __future__ import annotations

from ._core.posix_mq import PRIORITY_MAX as PRIORITY_MAX
from ._core.posix_mq import MessageQueue as MessageQueue
from ._core.posix_mq import unlink as unlink_message_queue
from ._core.posix_sem import VALUE_MAX as VALUE_MAX
from ._core.posix_sem import Semaphore as Semaphore
from ._core.posix_sem import unlink_semaphore as unlink_semaphore
from ._core.region import PosixSharedMemory as SharedMemory
from ._core.region import unlink_shared_memory as unlink_shared_memory

__all__ = [
    "PRIORITY_MAX",
    "VALUE_MAX",
    "MessageQueue",
    "Semaphore",
    "SharedMemory",
    "unlink_message_queue",
    "unlink_semaphore",
    "unlink_shared_memory",
]
