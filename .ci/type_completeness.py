"""`make types`: pyright's type-completeness verdict on aioipc's public API, with a floor.

Runs ``basedpyright --verifytypes aioipc`` (basedpyright is pyright with its own node, so
it needs nothing but pip; it comes with the dev extra) from the venv this script runs in,
reads its JSON report and fails if the score (the share of exported symbols whose type
pyright knows completely; third-party unknowns count, as users see them) is below
``--minimum`` percent. The symbols it found lacking are printed either way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minimum", type=float, default=95.0, help="percent (default 95)")
    parser.add_argument("--package", default="aioipc")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    # pyright finds the packages through the first python on PATH: this venv's.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [bin_dir / "basedpyright", "--verifytypes", args.package, "--outputjson"],
        capture_output=True,
        text=True,
        env=env,
        check=False,  # it exits 1 whenever any symbol is lacking; the score decides here
    )
    try:
        report = json.loads(out.stdout)["typeCompleteness"]
    except (json.JSONDecodeError, KeyError):
        print(out.stdout + out.stderr, file=sys.stderr)
        print("types: basedpyright gave no type-completeness report", file=sys.stderr)
        return 1
    for symbol in report["symbols"]:
        for diag in symbol["diagnostics"]:
            if diag["severity"] == "error":
                print(f"{symbol['name']}: {diag['message'].splitlines()[0]}")
    score = 100 * report["completenessScore"]
    verdict = "ok" if score >= args.minimum else "FAILED"
    print(
        f"types: {args.package} type completeness {score:.1f}% "
        f"(minimum {args.minimum:g}%): {verdict}"
    )
    return 0 if score >= args.minimum else 1


if __name__ == "__main__":
    sys.exit(main())
