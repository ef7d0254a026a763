"""aioipc: async-first inter-process communication for Linux, on anyio."""

from __future__ import annotations

from . import codecs as codecs
from . import fifo as fifo
from . import pipes as pipes
from . import unix as unix
from .abc import Channel as Channel
from .abc import IPCAttribute as IPCAttribute
from .abc import ReceiveChannel as ReceiveChannel
from .abc import SendChannel as SendChannel
from .errors import IPCConnectionRefusedError as IPCConnectionRefusedError
from .errors import IPCError as IPCError
from .errors import IPCExistsError as IPCExistsError
from .errors import IPCNotFoundError as IPCNotFoundError
from .errors import IPCPermissionError as IPCPermissionError
from .errors import IPCSystemError as IPCSystemError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import ProtocolError as ProtocolError
from .framing import FrameTooLargeError as FrameTooLargeError
from .pipes import pipe as pipe
from .url import connect as connect
from .url import listen as listen

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "FrameTooLargeError",
    "IPCAttribute",
    "IPCConnectionRefusedError",
    "IPCError",
    "IPCExistsError",
    "IPCNotFoundError",
    "IPCPermissionError",
    "IPCSystemError",
    "MessageTooLargeError",
    "ProtocolError",
    "ReceiveChannel",
    "SendChannel",
    "codecs",
    "connect",
    "fifo",
    "listen",
    "pipe",
    "pipes",
    "unix",
]
