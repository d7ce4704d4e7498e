"""Runs every benchmark and writes bench/RESULTS.md: ``.venv/bin/python -m bench`` (or ``make bench``).

``--smoke`` runs each section with tiny counts (seconds, not minutes) and writes to a temporary file unless
``--out`` is given; its figures mean nothing, it only proves the harness still works.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import cli_latency, coldstart, fanout, flood, footprint, ipc, secretstore, stuck
from .common import machine, raise_nofile
from .report import Section, render

HERE = Path(__file__).resolve().parent
SECTIONS = ("cli", "ipc", "fanout", "footprint", "flood", "stuck", "coldstart", "secretstore")


def _failed(title: str, exc: BaseException) -> Section:
    sec = Section(title)
    sec.body += ["The section failed:", "", "```", *traceback.format_exception(exc), "```"]
    sec.check(title, "error", "runs", False)
    return sec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness, not the performance")
    ap.add_argument("--out", type=Path, help="where to write the report (default bench/RESULTS.md)")
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    args = ap.parse_args(argv)
    out = args.out or (
        Path(tempfile.gettempdir()) / "convocationsd-bench-smoke.md" if args.smoke else HERE / "RESULTS.md"
    )
    soft, _ = raise_nofile(8192)  # 1,000 subscribers and the daemon's side of them
    info = machine()
    chosen = args.only or list(SECTIONS)
    start = time.monotonic()
    sections: list[Section] = []

    def step(name: str, title: str, fn) -> None:
        if name not in chosen:
            return
        print(f"[bench] {title} ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        try:
            result = fn(args.smoke)
        except Exception as e:  # one broken section must not lose the others' figures
            traceback.print_exc()
            result = _failed(title, e)
        for sec in result if isinstance(result, tuple) else (result,):
            if not sec.seconds:
                sec.seconds = time.monotonic() - t
            sections.append(sec)
            for c in sec.checks:
                print(f"[bench]   {c.name}: {c.measured} (target {c.target})", file=sys.stderr, flush=True)

    step("cli", "1. CLI latency", cli_latency.run)
    step("ipc", "2. IPC round trip", ipc.run)
    step("fanout", "3+4. fan-out and callback path", fanout.run)
    step("footprint", "5. footprint", footprint.run)
    step("flood", "6. under flood", flood.run)
    step("stuck", "7. stuck subscribers", stuck.run)
    step("coldstart", "8. cold start", coldstart.run)
    step("secretstore", "9. secret store per login", secretstore.run)
    total = time.monotonic() - start
    preamble = [
        f"Command: `.venv/bin/python -m bench` from the repository root (`make bench` runs it under a private "
        f"session bus with gnome-keyring, for section 9's keyring rows; this run "
        f"{'had one' if os.environ.get('DBUS_SESSION_BUS_ADDRESS') else 'had none'}); open-file limit raised to "
        f"{soft} for the 1,000-subscriber run (and the helper holding 4,000 stuck ones).",
        "",
    ]
    text = render(info, sections, smoke=args.smoke, total=total, preamble=preamble)
    analysis = HERE / "ANALYSIS.md"
    if analysis.exists() and not args.smoke:
        text += "\n" + analysis.read_text()
    out.write_text(text)
    failed = [c for s in sections for c in s.checks if c.passed is False]
    print(f"[bench] wrote {out} in {total:.0f} s; {len(failed)} target(s) missed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
