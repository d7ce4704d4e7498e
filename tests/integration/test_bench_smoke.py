"""The benchmark harness still runs end to end (tiny counts), one section per test. Performance targets are
not asserted here: they live in `python -m bench` and bench/RESULTS.md, on a machine whose load is known."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SECTIONS

ROOT = Path(__file__).resolve().parents[2]

TITLES = {
    "cli": ("CLI latency",),
    "ipc": ("IPC round trip",),
    "fanout": ("Event fan-out", "Callback path"),
    "footprint": ("Footprint",),
    "flood": ("Under flood",),
    "stuck": ("stop reading",),
    "coldstart": ("Cold start",),
    "secretstore": ("Secret store per login",),
}


def test_every_section_is_smoke_tested():
    assert set(TITLES) == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(TITLES))
def test_bench_section_smoke_writes_a_report(tmp_path, section):
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", section, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "Smoke run" in text
    for title in TITLES[section]:
        assert title in text, f"section {title!r} missing:\n{text}"
    assert "The section failed" not in text, text
