"""Unique topic names for tests, and the removal of every file such a topic made.

Use as a fixture: ``new_topic = pytest.fixture(_topics.new_topic)``; ``new_topic()``
gives a fresh name (``/aioipc-test-topic-<hex>``), and at the end every file of every
name handed out is removed (topics made through a URL are never removed by their ends).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from uuid import uuid4


def topic_files(name: str) -> list[str]:
    """The /dev/shm files of topic ``name``: its log, ``.space`` and ``.sub-I`` doorbells."""
    base = name.lstrip("/")
    return sorted(
        f"/dev/shm/{entry}"
        for entry in os.listdir("/dev/shm")
        if entry == base or entry == base + ".space" or entry.startswith(base + ".sub-")
    )


def new_topic() -> Iterator[Callable[[], str]]:
    names: list[str] = []

    def make() -> str:
        name = f"/aioipc-test-cli-topic-{uuid4().hex[:12]}"
        names.append(name)
        return name

    yield make
    from aioipc import IPCNotFoundError, pubsub

    for name in names:
        with contextlib.suppress(IPCNotFoundError):
            pubsub.unlink(name)  # through aioipc: its registry entry goes too
        for path in topic_files(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
