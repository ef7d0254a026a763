"""Process helpers shared by the tests that start whole programs (examples, the web app)."""

from __future__ import annotations

import os
from pathlib import Path


def session_members(sid: int) -> list[str]:
    """Live processes in session ``sid`` (a program started with its own session, and
    everything it started): ``"pid (comm)"`` each."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(stat[: stat.rindex(")") + 1])
    return found
