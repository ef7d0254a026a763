"""`make test-pythons`: the docs build and the whole suite on every supported CPython here.

Supported means 3.N from requires-python's lower bound in pyproject.toml up to the newest
3.N found. Interpreters are looked for as python3.N on PATH and under
$PYENV_ROOT/versions/*/bin (default ~/.pyenv; pyenv's shims only run the versions
`pyenv global` selects, so the versions directory is what finds the others); of each
minor version the newest patch runs, whatever it reports itself to be. Each gets a venv
of its own, .venv-3.N (or .venv if that already runs this very Python), made and
re-installed when pyproject.toml changes by the Makefile's own rule (make VENV=.venv-3.N
PYTHON=...), so it is installed exactly as .venv is; then `make docs` and `make pytest`
run on it. The docs build is there because it is what broke first on 3.10 (a
dependency's API that pip resolves differently per version). Lint and mypy are not
repeated: they check the same source against the same target version (3.11) whatever
runs them.

A supported version that is not installed is skipped with a line saying so. Every
version runs even after one fails; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PROBE = "import sys; print(sys.implementation.name, sys.executable, *sys.version_info)"
# pytest's closing line, e.g. "649 passed, 3 skipped in 301.22s (0:05:01)".
_PYTEST_TOTALS = re.compile(r"(\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed)\b.*?) in ")


@dataclass(frozen=True)
class Python:
    exe: str
    version: tuple[int, int, int, str, int]

    @property
    def name(self) -> str:
        return f"python3.{self.version[1]}"

    @property
    def full(self) -> str:
        major, minor, micro, level, serial = self.version
        suffix = "" if level == "final" else f"{level[0]}{serial}"
        return f"{major}.{minor}.{micro}{suffix}"


def lower_bound() -> int:
    """The N of requires-python's ">=3.N": the one place the minimum is written."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        spec = tomllib.load(f)["project"]["requires-python"]
    found = re.search(r">=\s*3\.(\d+)", spec)
    if found is None:
        sys.exit(f"test-pythons: cannot read a lower bound >=3.N from requires-python {spec!r}")
    return int(found[1])


def probe(exe: Path) -> Python | None:
    """What `exe` really runs (a pyenv shim of an inactive version fails: not an interpreter)."""
    try:
        out = subprocess.run(
            [str(exe), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 7 or out[0] != "cpython":
        return None
    major, minor, micro, level, serial = out[2:]
    return Python(out[1], (int(major), int(minor), int(micro), level, int(serial)))


def pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def find_pythons(low: int) -> dict[int, Python]:
    """The newest CPython 3.N of each minor version N >= low, by what each candidate reports."""
    pyenv = pyenv_root()
    dirs = [Path(d or ".") for d in os.environ.get("PATH", "").split(os.pathsep)]
    names = [exe for d in dirs for exe in d.glob("python3.*")]
    names += pyenv.glob("versions/*/bin/python3.*")
    best: dict[int, Python] = {}
    for exe in names:
        name = re.fullmatch(r"python3\.(\d+)", exe.name)
        if name is None or int(name[1]) < low:
            continue  # python3.12-config, python3.13t, python3.10, ...
        python = probe(exe)
        if python is None or python.version[0] != 3:
            continue
        # ("alpha" < "beta" < "candidate" < "final"): a release beats its pre-releases.
        minor = python.version[1]
        if minor not in best or python.version > best[minor].version:
            best[minor] = python
    return best


def run(cmd: list[str]) -> tuple[bool, str]:
    """Run `cmd`, passing its output through; (succeeded, pytest's totals if it printed some)."""
    tail = b""
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        # Raw chunks, not lines: pytest -q prints its dots without a newline.
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            tail = (tail + chunk)[-65536:]
    totals = _PYTEST_TOTALS.findall(tail.decode(errors="replace"))
    return proc.returncode == 0, totals[-1].strip("= ") if totals else ""


def check_one(python: Python) -> tuple[bool, str]:
    venv = f".venv-3.{python.version[1]}"
    default = probe(ROOT / ".venv" / "bin" / "python")
    if default is not None and default.version == python.version:
        venv = ".venv"  # `make test`'s own venv already is this Python: no second install
    elif (ROOT / venv).exists():
        installed = probe(ROOT / venv / "bin" / "python")
        if installed is None or installed.version != python.version:
            # Made by another patch release (maybe since removed): rebuild, don't mix them.
            was = installed.full if installed else "no working python"
            print(f"{venv} has {was}, not {python.full}: making it again")
            shutil.rmtree(ROOT / venv)
    make = ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={python.exe}"]
    steps = [("install", f"{venv}/.installed"), ("docs", "docs"), ("pytest", "pytest")]
    done = []
    all_ok = True
    for step, target in steps:
        start = time.monotonic()
        ok, totals = run([*make, target])
        all_ok &= ok
        took = f"{time.monotonic() - start:.0f} s"
        done.append(f"{step} {'ok' if ok else 'FAILED'} in {took}{': ' + totals if totals else ''}")
        if not ok and step == "install":
            break
    return all_ok, "; ".join(done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--skip-tested-by",
        metavar="VENV",
        help="skip the minor version of this venv's Python (.ci/run: `make test` just ran it)",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # before make's output
    low = lower_bound()
    found = find_pythons(low)
    tested = probe(ROOT / args.skip_tested_by / "bin" / "python") if args.skip_tested_by else None
    newest = max([low, *found])
    summary = []
    failed = False
    for minor in range(low, newest + 1):
        python = found.get(minor)
        if python is None:
            line = f"python3.{minor} not found: skipped"
            print(f"test-pythons: {line} (looked on PATH and in {pyenv_root()}/versions)")
        elif tested is not None and tested.version[:2] == python.version[:2]:
            line = (
                f"{python.name} skipped: `make test` ran it ({args.skip_tested_by}: {tested.full})"
            )
            print(f"test-pythons: {line}")
        else:
            print(f"\n=== test-pythons: {python.name} ({python.full}, {python.exe}) ===")
            ok, what = check_one(python)
            failed |= not ok
            line = f"{python.name} {'passed' if ok else 'FAILED'} ({python.full}): {what}"
        summary.append(line)
    print(f"\ntest-pythons, CPython 3.{low} to 3.{newest}:", *summary, sep="\n  ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
