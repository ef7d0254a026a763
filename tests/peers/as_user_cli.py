"""Run ``aioipc`` as another user: ``python as_user_cli.py UID ARGS...`` (started as root).

The venv's interpreter and libraries live under /root, which another uid cannot read,
so everything the command may import is imported first, and only then does the process
drop to UID (and its gid, no supplementary groups) and run ``aioipc ARGS...``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
import sys
import tempfile

import anyio
import anyio._backends._asyncio
import anyio.streams.stapled
import anyio.to_thread
import posix_ipc
import sysv_ipc

import aioipc
import aioipc._cli.holders
import aioipc._cli.inventory
import aioipc._cli.inventory_cli
import aioipc._cli.main
import aioipc._cli.mqueue_view
import aioipc._cli.rm
import aioipc._cli.shell
import aioipc.posix
import aioipc.shm
import aioipc.url

with contextlib.suppress(ImportError):
    pass

_keep = (argparse, ctypes, errno, hashlib, json, logging, pwd, shutil, stat, tempfile)
_keep2 = (anyio, posix_ipc, sysv_ipc, aioipc)

if __name__ == "__main__":
    uid = int(sys.argv[1])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    sys.exit(aioipc._cli.main.main(sys.argv[2:]))
