"""Assertions shared by the test modules."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest


def same(got: bytes, want: bytes) -> None:
    """Assert equality without pytest diffing megabytes of bytes."""
    if got != want:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
            min(len(got), len(want)),
        )
        pytest.fail(f"got {len(got)} bytes, want {len(want)}; first difference at byte {first}")


def refused(call: Callable[[], Any], error: type[BaseException]) -> BaseException:
    """``call()`` must raise ``error``; whatever it made instead is closed."""
    try:
        made = call()
    except error as exc:
        return exc
    with contextlib.suppress(Exception):
        made.close()
    pytest.fail(f"{call} did not raise {error.__name__}; it returned {made!r}")
