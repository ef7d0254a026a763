"""The one place that validates the values callers pass: modes, sizes, ids, fds, seconds.

Every public constructor and option parser checks its arguments here *before* it creates
anything, so a bad value leaves nothing behind and the error names the parameter, the
object and the range it must be in. Values the kernel would silently truncate (a mode
of -1 becomes 0o7777, an id of ``id + 2**32`` becomes ``id``, a size of ``2**70``
becomes 0) are refused rather than passed on.
"""

from __future__ import annotations

import math
import os

__all__ = [
    "ID_MAX",
    "INT_MAX",
    "LONG_MAX",
    "check_fd",
    "check_id",
    "check_int",
    "check_mode",
    "check_seconds",
    "check_size",
]

#: C's ``int`` and ``long`` on 64-bit Linux: what the kernel's arguments can hold.
INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1
#: The largest uid or gid: uid_t is 32 bits, and its all-ones value means "no id".
ID_MAX = 2**32 - 2


def _prefix(what: str | None) -> str:
    return f"{what}: " if what else ""


def check_int(
    value: object,
    param: str,
    *,
    minimum: int,
    maximum: int,
    what: str | None = None,
    unit: str = "",
) -> int:
    """Return ``value`` if it is an int (not a bool) in ``minimum..maximum``.

    Raises:
        TypeError: not an int.
        ValueError: out of range; the message names ``param``, ``what`` and the range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_prefix(what)}{param} must be an int, not {value!r}")
    if not minimum <= value <= maximum:
        unit = f" {unit}" if unit else ""
        raise ValueError(
            f"{_prefix(what)}{param} must be in {minimum}..{maximum}{unit}, not {value}"
        )
    return value


def check_mode(mode: object, what: str | None = None, param: str = "mode") -> int:
    """Permission bits: an int in 0..0o777 (no setuid, setgid or sticky bits).

    Raises:
        TypeError: not an int.
        ValueError: outside 0..0o777.
    """
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"{_prefix(what)}{param} must be permission bits (an int), not {mode!r}")
    if not 0 <= mode <= 0o777:
        shown = oct(mode) if mode >= 0 else str(mode)
        raise ValueError(
            f"{_prefix(what)}{param} must be permission bits in 0o000..0o777, not {shown}"
        )
    return mode


def check_size(
    size: object, what: str | None = None, param: str = "size", *, maximum: int = LONG_MAX
) -> int:
    """A size in bytes: an int in 1..``maximum``.

    Raises:
        TypeError: not an int.
        ValueError: zero, negative or above ``maximum``.
    """
    return check_int(size, param, minimum=1, maximum=maximum, what=what, unit="bytes")


def check_id(ipc_id: object, kind: str) -> int:
    """A System V object id: an int in 0..INT_MAX (the kernel's ``int``).

    A larger value would be truncated to another object's id by the C call.

    Raises:
        TypeError: not an int.
        ValueError: negative or beyond INT_MAX.
    """
    if isinstance(ipc_id, bool) or not isinstance(ipc_id, int):
        raise TypeError(f"a {kind} id is an int (the id column of ipcs), not {ipc_id!r}")
    if not 0 <= ipc_id <= INT_MAX:
        raise ValueError(f"{kind} id {ipc_id} is out of range: ids are 0..{INT_MAX} (a C int)")
    return ipc_id


def check_fd(fd: object, what: str | None = None) -> int:
    """An open file descriptor.

    Raises:
        TypeError: not an int.
        ValueError: negative, or not open in this process.
    """
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"{_prefix(what)}a file descriptor is an int, not {fd!r}")
    if fd < 0 or fd > INT_MAX:
        raise ValueError(f"{_prefix(what)}fd {fd} is not a file descriptor (0..{INT_MAX})")
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"{_prefix(what)}fd {fd} is not an open file descriptor") from None
    return fd


def check_seconds(
    value: object,
    param: str,
    *,
    what: str | None = None,
    maximum: float = math.inf,
    allow_inf: bool = False,
) -> float:
    """A duration: a finite real number (or ``inf`` when allowed) in 0..``maximum``.

    NaN is always refused: every comparison with it is false, so a NaN timeout would
    never expire.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, negative, infinite (unless allowed) or above ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{_prefix(what)}{param} is seconds (a number), not {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{_prefix(what)}{param} is beyond what a float holds") from None
    if math.isnan(seconds):
        raise ValueError(f"{_prefix(what)}{param} is seconds, not NaN")
    if math.isinf(seconds) and not (allow_inf and seconds > 0):
        raise ValueError(f"{_prefix(what)}{param} must be a finite number of seconds, not {value}")
    if not 0 <= seconds <= maximum:
        bound = "" if math.isinf(maximum) else f" and at most {maximum:g}"
        raise ValueError(f"{_prefix(what)}{param} must be >= 0{bound} seconds, not {value}")
    return seconds
