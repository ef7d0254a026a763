"""``aioipc bench``, run as real processes.

One cheap row of each script of the matrix (``aioipc._cli.benchmarks``) with ``--quick``
(a few seconds in all); the built wheel installed into a fresh venv, run from outside
the checkout; and the error paths: an unknown ``--mechanism`` (usage, exit 2) and
``--plot`` without matplotlib (runtime, exit 1). Every error is one line on stderr and
no traceback.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import zipfile
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


# The distributions an installed aioipc needs at run time (the project's dependencies),
# linked into the fresh venv below; the optional peers (uvloop, rich, pyzmq, ...) are not.
RUNTIME_DISTS = ("anyio", "sysv_ipc", "posix_ipc")


def _runtime_closure() -> list[importlib.metadata.Distribution]:
    """RUNTIME_DISTS and what they require (installed ones, extras left out)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(RUNTIME_DISTS)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a conditional requirement this Python does not need
        seen[name] = dist
        for req in dist.requires or ():
            if "extra ==" not in req:
                todo.append(re.split(r"[^A-Za-z0-9_.-]", req, maxsplit=1)[0])
    return list(seen.values())


def _link_runtime(target: Path) -> None:
    """Symlink each runtime distribution's top-level files into ``target``."""
    target.mkdir()
    for dist in _runtime_closure():
        tops = {Path(str(f)).parts[0] for f in dist.files or ()} - {".."}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)


@pytest.mark.timeout(LIMIT)
def test_from_an_installed_wheel(tmp_path: Path) -> None:
    """The built wheel alone, installed into a fresh venv: ``aioipc bench`` runs a row."""
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (the dev extra)")
    root = Path(aioipc.__file__).resolve().parent.parent
    dist = tmp_path / "dist"
    quiet = {"capture_output": True, "text": True, "timeout": LIMIT, "check": True}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist), str(root)],
        cwd=tmp_path,
        **quiet,  # type: ignore[call-overload]
    )
    [wheel] = dist.glob("aioipc-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
    matrix = "aioipc/_cli/benchmarks/"
    for name in ("bench.py", "bench_queues.py", "bench_shm.py", "floor.py", "floor.c"):
        assert matrix + name in shipped, sorted(shipped)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)  # type: ignore[call-overload]
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        **quiet,  # type: ignore[call-overload]
    )
    [site] = venv.glob("lib/python3*/site-packages")
    _link_runtime(tmp_path / "runtime")
    (site / "runtime.pth").write_text(f"{tmp_path / 'runtime'}\n")

    # PATH holds only the venv: nothing from the checkout or the system is needed (no gcc,
    # so the C floor is skipped with a line).
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    where = subprocess.run(
        [str(python), "-c", "import aioipc; print(aioipc.__file__)"],
        env=env,
        cwd=tmp_path,
        **quiet,  # type: ignore[call-overload]
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout

    rows = ["posix-mq/aioipc", "pyzmq/rtt", "c-memcpy"]
    out = tmp_path / "out.json"
    proc = subprocess.run(
        ["aioipc", "bench", "--quick", *(f"--mechanism={row}" for row in rows), f"--json={out}"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )
    assert "needs a source checkout" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    # The queue row was measured (spawn children importing the matrix from the wheel) ...
    assert "posix-mq/aioipc" in proc.stdout, proc.stdout
    doc = json.loads(out.read_text())
    queues = doc["bench_queues"]["results"]
    assert queues["posix-mq/aioipc"]["rtt"] > 0
    assert queues["posix-mq/aioipc"]["small"] > 0
    # ... the peer that is not installed and the C floor without gcc are skipped, each with
    # a line saying why.
    zmq, memcpy = doc["bench_shm"]["rows"]
    assert (zmq["key"], memcpy["key"]) == ("pyzmq", "c-memcpy")
    assert zmq["errors"] == memcpy["errors"] == {}
    assert "pip install 'aioipc[bench]'" in zmq["skipped"]["rtt"], zmq
    assert "no gcc" in memcpy["skipped"]["1MiB"], memcpy
    assert f"pyzmq: {zmq['skipped']['rtt']}" in proc.stdout, proc.stdout
    assert f"c-memcpy: {memcpy['skipped']['1MiB']}" in proc.stdout, proc.stdout
