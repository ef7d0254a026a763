#!/usr/bin/env python3
"""Runs aioipc/_cli/benchmarks/bench_pubsub.py, this checkout's copy; see README.md.

The benchmark lives in the package so that an installed wheel has it; this file keeps
``python benchmarks/bench_pubsub.py`` and ``make bench`` working in a checkout.
"""

import sys
from pathlib import Path

# This checkout's aioipc, also for the spawn children (they inherit sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioipc._cli.benchmarks.bench_pubsub import main

if __name__ == "__main__":
    sys.exit(main())
