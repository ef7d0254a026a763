"""aioipc: async-first inter-process communication for Linux, on anyio."""

from __future__ import annotations

import sys as _sys

from . import abc, codecs, errors, fifo, framing, lock, pipes, posix, pubsub, shm, sysv, unix, url
from ._core.names import publish as _publish
from ._core.region import AnonymousMemory as AnonymousMemory
from ._core.region import MappedFile as MappedFile
from ._core.region import SharedMemoryRegion as SharedMemoryRegion
from ._core.sysv_base import IPC_PRIVATE as IPC_PRIVATE
from ._core.sysv_base import ftok as ftok
from ._core.threads import install_interrupt_handler as install_interrupt_handler
from ._core.threads import worker_limiter as worker_limiter
from .abc import Channel as Channel
from .abc import IPCAttribute as IPCAttribute
from .abc import Listener as Listener
from .abc import ReceiveChannel as ReceiveChannel
from .abc import SendChannel as SendChannel
from .errors import IPCConnectionRefusedError as IPCConnectionRefusedError
from .errors import IPCError as IPCError
from .errors import IPCExistsError as IPCExistsError
from .errors import IPCNotFoundError as IPCNotFoundError
from .errors import IPCPermissionError as IPCPermissionError
from .errors import IPCSystemError as IPCSystemError
from .errors import LaggedError as LaggedError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import ProtocolError as ProtocolError
from .framing import FrameTooLargeError as FrameTooLargeError
from .lock import Lock as Lock
from .pipes import FdReceiveChannel as FdReceiveChannel
from .pipes import FdSendChannel as FdSendChannel
from .pipes import pipe as pipe
from .posix import MessageQueue as PosixMessageQueue
from .shm import ShmDuplex as ShmDuplex
from .shm import ShmDuplexListener as ShmDuplexListener
from .shm import ShmReceiver as ShmReceiver
from .shm import ShmSender as ShmSender
from .sysv import MessageQueue as SysVMessageQueue
from .unix import UnixChannel as UnixChannel
from .unix import UnixDatagramEndpoint as UnixDatagramEndpoint
from .unix import UnixListener as UnixListener
from .unix import UnixMessageChannel as UnixMessageChannel
from .url import connect as connect
from .url import listen as listen

__version__ = "0.1.0"

__all__ = [
    "AnonymousMemory",
    "MappedFile",
    "SharedMemoryRegion",
    "Channel",
    "FdReceiveChannel",
    "FdSendChannel",
    "FrameTooLargeError",
    "IPC_PRIVATE",
    "IPCAttribute",
    "IPCConnectionRefusedError",
    "IPCError",
    "IPCExistsError",
    "IPCNotFoundError",
    "IPCPermissionError",
    "IPCSystemError",
    "LaggedError",
    "Listener",
    "Lock",
    "MessageTooLargeError",
    "PosixMessageQueue",
    "ProtocolError",
    "ReceiveChannel",
    "SendChannel",
    "ShmDuplex",
    "ShmDuplexListener",
    "ShmReceiver",
    "ShmSender",
    "SysVMessageQueue",
    "UnixChannel",
    "UnixDatagramEndpoint",
    "UnixListener",
    "UnixMessageChannel",
    "codecs",
    "connect",
    "fifo",
    "ftok",
    "install_interrupt_handler",
    "listen",
    "pipe",
    "pipes",
    "posix",
    "pubsub",
    "shm",
    "sysv",
    "unix",
    "worker_limiter",
]


# The mechanism modules first: a class two of them export (FdSendChannel: pipes, fifo) is
# at home in the first; the package itself last, for what only it exports.
for _module in (
    pipes,
    fifo,
    unix,
    posix,
    sysv,
    shm,
    pubsub,
    abc,
    codecs,
    errors,
    framing,
    lock,
    url,
):
    _publish(_module)
_publish(_sys.modules[__name__])
del _module
