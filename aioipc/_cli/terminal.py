"""What the ``aioipc`` command prints: every line leaves through here, escaped.

Names and paths are anyone's bytes: another user can name a POSIX object or a FIFO with
``ESC ] 0 ; title BEL`` (the terminal's title changes), ``ESC [ 2 J`` (the screen
clears), a newline (a forged row appears) or bytes that are not UTF-8. So every line
the command writes for a person, table rows, ``rm``'s messages and every error, goes
through :func:`shown` first, which writes each such character as an escape instead.

JSON output (``ls --json``) is data, not lines for a terminal: it keeps every name
exact, and ``json.dumps`` with ``ensure_ascii`` (the default) writes every character
outside printable ASCII as a ``\\uXXXX`` escape, so its bytes are printable ASCII too.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["error", "say", "shown"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        # os.fsdecode's stand-in for a byte that is not UTF-8: show the byte itself.
        return f"\\x{code - 0xDC00:02x}"
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: str) -> str:
    """``text`` with every character a terminal could act on written as an escape.

    Escaped: C0 controls and DEL (``\\x1b``, ``\\n``, ``\\x7f``), C1 controls (``\\x9b``),
    and everything else Python does not call printable: format characters such as the
    right-to-left override (``\\u202e``), line and paragraph separators, unassigned and
    private-use code points, spaces other than the plain one, and the bytes of a name
    that are not UTF-8 (``\\xff``). Ordinary non-ASCII text (``é``, ``日本``) stays
    readable. A backslash is not doubled, so escaping twice changes nothing (messages
    that already quote a name with ``repr`` stay as they are); a name holding a
    backslash followed by ``x1b`` therefore looks like one holding ESC, and ``ls --json``
    gives the exact name.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def say(line: str, file: TextIO | None = None) -> None:
    """Print ``line``, escaped (see :func:`shown`), to stdout or ``file``."""
    print(shown(line), file=sys.stdout if file is None else file, flush=True)


def error(message: str) -> None:
    """The command's error line on stderr: ``aioipc: error: MESSAGE``, escaped."""
    say(f"aioipc: error: {message}", sys.stderr)
