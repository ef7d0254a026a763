"""Test helpers for code that uses aioipc, and for aioipc's own mechanisms.

* :mod:`aioipc.testing.leaks`: :class:`IPCSnapshot`, a snapshot of the machine's IPC
  objects to prove a test suite leaked none.
* :mod:`aioipc.testing.conformance`: :func:`check_one_way_channel` and
  :func:`check_two_way_channel`, which check a mechanism against the Channel contract.
"""

from __future__ import annotations

from .conformance import ONE_WAY_CHECKS as ONE_WAY_CHECKS
from .conformance import TWO_WAY_CHECKS as TWO_WAY_CHECKS
from .conformance import ChannelCheckError as ChannelCheckError
from .conformance import OpenOneWay as OpenOneWay
from .conformance import OpenTwoWay as OpenTwoWay
from .conformance import check_one_way_channel as check_one_way_channel
from .conformance import check_two_way_channel as check_two_way_channel
from .leaks import IPCSnapshot as IPCSnapshot
from .leaks import LeakError as LeakError

__all__ = [
    "ONE_WAY_CHECKS",
    "TWO_WAY_CHECKS",
    "ChannelCheckError",
    "IPCSnapshot",
    "LeakError",
    "OpenOneWay",
    "OpenTwoWay",
    "check_one_way_channel",
    "check_two_way_channel",
]
