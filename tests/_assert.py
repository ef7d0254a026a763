"""Assertions shared by the test modules."""

from __future__ import annotations

import pytest


def same(got: bytes, want: bytes) -> None:
    """Assert equality without pytest diffing megabytes of bytes."""
    if got != want:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
            min(len(got), len(want)),
        )
        pytest.fail(f"got {len(got)} bytes, want {len(want)}; first difference at byte {first}")
