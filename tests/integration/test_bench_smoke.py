"""The benchmark harness still runs end to end (tiny counts). Performance targets are not asserted here:
they live in `python -m bench` and bench/RESULTS.md, on a machine whose load is known."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_writes_a_report(tmp_path):
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "Smoke run" in text
    for title in (
        "CLI latency",
        "IPC round trip",
        "Event fan-out",
        "Callback path",
        "Footprint",
        "Under flood",
        "stop reading",
    ):
        assert title in text, f"section {title!r} missing:\n{text}"
    assert "The section failed" not in text, text
