"""The ``aioipc`` command and its tools (demo, send/recv, ls/rm, bench).

The library never imports this package; only ``aioipc.__main__`` and the console script do.
"""
