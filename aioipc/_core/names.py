"""Public names for what the private core defines."""

from __future__ import annotations

import inspect
from types import ModuleType

#: The modules users import from: what the API page must document and what the type
#: tests check (the one list; mkdocs_hooks.py and tests/test_types.py read it).
PUBLIC_MODULES = (
    "aioipc",
    "aioipc.abc",
    "aioipc.codecs",
    "aioipc.errors",
    "aioipc.fifo",
    "aioipc.framing",
    "aioipc.lock",
    "aioipc.pipes",
    "aioipc.posix",
    "aioipc.pubsub",
    "aioipc.shm",
    "aioipc.sysv",
    "aioipc.unix",
    "aioipc.url",
    "aioipc.testing",
    "aioipc.testing.conformance",
    "aioipc.testing.leaks",
)


def publish(module: ModuleType) -> None:
    """Give each class and function that ``module`` (a public module) exports from the
    private core that module's name as its ``__module__``, and the exported name as its
    name, so that reprs, pickles and the docs show the path a user imports:
    ``aioipc.unix.UnixChannel``, not ``aioipc._core.unix.UnixChannel``. An object is at
    home in the first public module published that exports it."""
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not obj.__module__.startswith("aioipc._"):
            continue
        obj.__module__ = module.__name__
        obj.__name__ = obj.__qualname__ = name
