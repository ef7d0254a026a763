"""System V IPC: message queues with typed messages, semaphore sets, shared memory, keys.

Every object lives under a 32-bit key (:func:`ftok` derives one from a file, as C does)
until it is removed, whatever happens to the processes that use it. Constructors never
wait: ``create`` (exclusive), ``open``, ``open_or_create``; default mode 0600.
"""

from __future__ import annotations

from ._core.region import SysVSharedMemory as SharedMemory
from ._core.sysv_base import IPC_PRIVATE as IPC_PRIVATE
from ._core.sysv_base import ftok as ftok
from ._core.sysv_mq import MessageQueue as MessageQueue
from ._core.sysv_sem import SEMVMX as SEMVMX
from ._core.sysv_sem import Semaphore as Semaphore
from ._core.sysv_sem import SemaphoreSet as SemaphoreSet

__all__ = [
    "IPC_PRIVATE",
    "SEMVMX",
    "MessageQueue",
    "Semaphore",
    "SemaphoreSet",
    "SharedMemory",
    "ftok",
]
