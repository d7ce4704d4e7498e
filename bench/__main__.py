"""Runs the benchmarks and writes bench/RESULTS.md: ``.venv/bin/python -m bench`` (or ``make bench``).

``--check`` (``make bench-check``, a few minutes) runs only the sections with the targets a change is most
likely to move (CLI latency, IPC round trip, footprint, cold start) with fewer repetitions, writes its report
to a temporary file unless ``--out`` is given, and exits 1 when a target is missed, so that a regression is
seen when it lands. ``--smoke`` runs each section with tiny counts (seconds, not minutes); its figures mean
nothing, it only proves the harness still works.

The CLI, IPC and cold-start sections run pinned to one core (``--cpu``), with every process they start:
between two cores, round trips on this machine swing about 3x from run to run.
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
from .common import machine, pinned, raise_nofile
from .report import Section, render, verdict

HERE = Path(__file__).resolve().parent
# name -> (title, run(mode), pinned to one core)
STEPS = {
    "cli": ("1. CLI latency", cli_latency.run, True),
    "ipc": ("2. IPC round trip", ipc.run, True),
    "fanout": ("3+4. fan-out and callback path", lambda mode: fanout.run(mode == "smoke"), False),
    "footprint": ("5. footprint", footprint.run, False),
    "flood": ("6. under flood", lambda mode: flood.run(mode == "smoke"), False),
    "stuck": ("7. stuck subscribers", lambda mode: stuck.run(mode == "smoke"), False),
    "coldstart": ("8. cold start", coldstart.run, True),
    "secretstore": ("9. secret store per login", lambda mode: secretstore.run(mode == "smoke"), False),
}
SECTIONS = tuple(STEPS)
CHECKED = ("cli", "ipc", "footprint", "coldstart")  # what --check runs


def _failed(title: str, exc: BaseException) -> Section:
    sec = Section(title)
    sec.body += ["The section failed:", "", "```", *traceback.format_exception(exc), "```"]
    sec.check(title, "error", "runs", False)
    return sec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--check", action="store_true", help="the target rows only, fewer runs; exit 1 on a miss")
    kind.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness, not the performance")
    ap.add_argument("--out", type=Path, help="where to write the report (default bench/RESULTS.md)")
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    ap.add_argument("--cpu", type=int, default=0, help="the core the pinned sections run on (default 0)")
    ap.add_argument("--no-pin", action="store_true", help="run the pinned sections on every core")
    args = ap.parse_args(argv)
    mode = "check" if args.check else "smoke" if args.smoke else "full"
    out = args.out or (
        HERE / "RESULTS.md" if mode == "full" else Path(tempfile.gettempdir()) / f"convocationsd-bench-{mode}.md"
    )
    soft, _ = raise_nofile(8192)  # 1,000 subscribers and the daemon's side of them
    info = machine()
    chosen = args.only or list(CHECKED if mode == "check" else SECTIONS)
    start = time.monotonic()
    sections: list[Section] = []
    pinning = set()
    for name in SECTIONS:
        if name not in chosen:
            continue
        title, fn, pin = STEPS[name]
        print(f"[bench] {title} ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        try:
            with pinned(args.cpu if pin and not args.no_pin else None) as how:
                if pin:
                    pinning.add(how)
                result = fn(mode)
        except Exception as e:  # one broken section must not lose the others' figures
            traceback.print_exc()
            result = _failed(title, e)
        for sec in result if isinstance(result, tuple) else (result,):
            if not sec.seconds:
                sec.seconds = time.monotonic() - t
            sections.append(sec)
            for c in sec.checks:
                print(f"[bench]   {c.name}: {c.measured} (target {c.target}): {verdict(c.passed)}", file=sys.stderr)
    total = time.monotonic() - start
    preamble = [
        f"Command: `.venv/bin/python -m bench{' --' + mode if mode != 'full' else ''}` from the repository root "
        f"(`make bench` runs it under a private session bus with gnome-keyring, for section 9's keyring rows; "
        f"this run {'had one' if os.environ.get('DBUS_SESSION_BUS_ADDRESS') else 'had none'}); open-file limit "
        f"raised to {soft} for the 1,000-subscriber run (and the helper holding 4,000 stuck ones). "
        f"Sections 1, 2 and 8: {', '.join(sorted(pinning)) or 'not run'}.",
        "",
    ]
    text = render(info, sections, mode=mode, total=total, preamble=preamble)
    analysis = HERE / "ANALYSIS.md"
    if analysis.exists() and mode == "full":
        text += "\n" + analysis.read_text()
    out.write_text(text)
    missed = [c for s in sections for c in s.checks if c.passed is False]
    print(f"[bench] wrote {out} in {total:.0f} s; {len(missed)} target(s) missed", file=sys.stderr)
    for c in missed:
        print(f"[bench]   missed: {c.name}: {c.measured} (target {c.target})", file=sys.stderr)
    return 1 if mode == "check" and missed else 0


if __name__ == "__main__":
    sys.exit(main())
