"""The benchmark matrix behind ``aioipc bench``: two fresh processes per measurement.

``bench`` (pipes, FIFOs and unix streams against asyncio/anyio peers), ``bench_queues``
(kernel queues and semaphores), ``bench_shm`` (the shared-memory ring against other IPC)
and the floors (``floor.py``, and ``floor.c``, compiled with gcc at run time). They live in
the package so that an installed wheel has them; ``benchmarks/*.py`` of a source checkout
only run them. Their ``spawn`` children import them by these names, from the package.
The library never imports them.
"""
