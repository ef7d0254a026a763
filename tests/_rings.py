"""Shared by the ring test modules: the files of a ring (the ``new_ring`` fixture that
hands out fresh ring names is in conftest.py)."""

from __future__ import annotations

import os


def ring_files(name: str) -> tuple[str, str, str]:
    base = "/dev/shm" + name
    return base, base + ".bell-data", base + ".bell-space"


def existing(name: str) -> list[str]:
    return [p for p in ring_files(name) if os.path.lexists(p)]
