"""benchmarks/bench_pubsub.py, run as real processes: the two cheapest topic rows.

One publisher and four subscriber processes on a real topic for a quarter of a second
each (``--quick``), once one message per call and once batched. Every subscriber must
have received every message sent (``policy="block"``: nothing lost; each checked every
sequence number), and the run must leave nothing in /dev/shm. The peers (pyzmq, Redis,
NATS) are not run here: they take seconds each and are the benchmark's business.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_pubsub.py"


def test_quick_topic_rows(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--only",
            "aioipc-topic/64B,aioipc-topic-batched/64B",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(out.read_text())
    rows = {row["key"]: row for row in document["rows"]}
    assert set(rows) == {"aioipc-topic", "aioipc-topic-batched"}
    for row in rows.values():
        assert row["errors"] == {}
        assert row["skipped"] == {}
        (figure,) = row["rounds"]["64B"]
        assert figure["sent"] > 0
        assert figure["received"] == [figure["sent"]] * document["subscribers"]
        assert figure["lost"] == [0] * document["subscribers"]
        assert row["values"]["64B"] > 0
    assert document["cleanup"] == {"left_behind_and_removed": {}, "still_in_dev_shm": []}
    assert "64B batched: topic msgs/s per subscriber" in proc.stdout
