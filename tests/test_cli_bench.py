"""``aioipc bench``, run as real processes.

One cheap row of each script of ``benchmarks/`` with ``--quick`` (a few seconds in all),
and the error paths: an unknown ``--mechanism`` (usage, exit 2), ``--plot`` without
matplotlib and a package outside a source checkout (runtime, exit 1). Every error is
one line on stderr and no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import aioipc

CLI = [sys.executable, "-m", "aioipc", "bench"]
LIMIT = 60
# One cheap row of each script: bench.py, bench_queues.py, bench_shm.py.
ROWS = ("--mechanism", "aioipc-pipe", "--mechanism", "posix-mq/aioipc", "--mechanism")
SHM_ROW = "aioipc-shm/rtt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aioipc: error: "), lines[0]
    assert proc.stdout == ""
    return lines[0]


def test_quick_rows_json_and_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    proc = run(
        "--quick", *ROWS, SHM_ROW, "--json", str(out_json), "--plot", str(out_png), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # Each script's own table, and its progress lines (stderr is not a terminal here).
    assert "aioipc pipe" in proc.stdout
    assert "posix-mq/aioipc" in proc.stdout
    assert "[aioipc-shm]" in proc.stdout
    assert "[1/3] round 1/1: aioipc pipe" in proc.stderr

    doc = json.loads(out_json.read_text())
    assert doc["quick"] is True
    assert doc["mechanisms"] == ["aioipc-pipe", "posix-mq/aioipc", SHM_ROW]
    [pipe] = doc["bench"]["results"]
    assert pipe["key"] == "aioipc-pipe"
    assert pipe["errors"] == {}
    assert pipe["rtt_median_us"] > 0
    assert pipe["small_msgs_per_s"] > 0
    assert pipe["big_mb_per_s"] > 0
    queues = doc["bench_queues"]["results"]
    assert set(queues) == {"posix-mq/aioipc"}
    assert queues["posix-mq/aioipc"]["rtt"] > 0
    assert queues["posix-mq/aioipc"]["small"] > 0
    [shm] = doc["bench_shm"]["rows"]
    assert shm["key"] == "aioipc-shm"
    assert shm["tests"] == ["rtt"]
    assert shm["errors"] == {}
    assert shm["values"]["rtt"] > 0

    png = out_png.read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 10_000  # three panels of bars and labels, not an empty canvas


def test_plot_without_matplotlib_is_one_line(tmp_path: Path) -> None:
    # sys.modules[name] = None makes `import matplotlib` raise ImportError.
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from aioipc._cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "bench", "--quick", *ROWS, SHM_ROW, "--plot", "x.png"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "pip install 'aioipc[plot]'" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["no-such-row", "posix-mq/nope", "aioipc-shm/nope"])
def test_unknown_mechanism_is_usage_error(tmp_path: Path, name: str) -> None:
    proc = run("--quick", "--mechanism", name, cwd=tmp_path)
    assert proc.returncode == 2
    assert repr(name) in one_error_line(proc)


def test_outside_a_source_checkout(tmp_path: Path) -> None:
    # A copy of the package alone, as an installed wheel would be: no benchmarks/ beside it.
    package = Path(aioipc.__file__).parent
    shutil.copytree(package, tmp_path / "aioipc", ignore=shutil.ignore_patterns("__pycache__"))
    proc = run("--quick", cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "aioipc bench needs a source checkout" in one_error_line(proc)
