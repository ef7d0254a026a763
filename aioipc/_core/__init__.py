"""aioipc's private core: the wait engine, fd transport, worker threads, libc calls, the
ring format, regions, the registry and every mechanism's implementation.

Nothing here is public: users import the thin public modules (aioipc.unix, aioipc.shm,
...), which re-export from here. See docs/internals.md.
"""
