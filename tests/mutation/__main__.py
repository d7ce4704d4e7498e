"""Mutation run over what guards the person: the pure core, the uid and path checks, and the HTTP guards.

    make mutation            (= tests/with-keyring.sh .venv/bin/python -m tests.mutation)

Each mutant (tests/mutation/mutants.py) is one small edit of one file. The unit tests that run its line
(found once, by tracing tests/unit) run against it, fastest first, and stop at the first failure: a failure
kills the mutant. A mutant no test notices is either listed in tests/mutation/equivalent.py, with why no
test can tell it from the original, or it is a gap, and the run fails. The outcome goes into
docs/robustness.md, below the adversarial report (tests/adversarial/report.py keeps this section).

Why a small mutator of our own rather than mutmut or cosmic-ray: the HTTP guards are a handful of functions
in a module that is otherwise plumbing (mutmut and cosmic-ray take whole files); mutants are named by their
text, not by line or index, so the list of equivalent ones survives edits around them; the working tree is
never written (cosmic-ray edits files in place, and five engineers edit this tree's neighbours); and the
run must work under tests/with-keyring.sh, whose private HOME and session bus every test process shares.

Speed, on two shared cores: the parent imports pytest and the test libraries once, and forks one child per
mutant. The child serves the mutated module from memory (an import hook: nothing of the package is imported
before the fork) and runs pytest in-process, so a mutant costs a collection, not an interpreter start.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutation.equivalent import EQUIVALENT
from tests.mutation.mutants import Mutant, apply, mutants

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "convocationsd"
DOC = ROOT / "docs" / "robustness.md"
TRACE_CACHE = ROOT / "test-artifacts" / "mutation-trace.json"  # which tests run which lines, from the last run
HEADING = "## Mutation run: does a unit test notice each small change?"
TESTS = ["tests/unit"]  # the candidates: tracing picks, for each line, the tests that run it

# file -> the functions (and module-level names) mutated in it; None: all of it.
TARGETS: dict[str, frozenset[str] | None] = {
    "core/errors.py": None,
    "core/events.py": None,
    "core/flows.py": None,
    "core/keycheck.py": None,
    "core/pkce.py": None,
    "core/protocol.py": None,
    "core/states.py": None,
    "common/peercred.py": None,
    "common/paths.py": None,
    "common/trust.py": None,
    "common/proc_net.py": None,
    # The guards every request passes (Host allow-list, same user, same site, navigation only); the rest of
    # the module is plumbing that the adversarial report covers with real daemons.
    "daemon/http_app.py": frozenset(
        {
            "CHECK_PEER_UID",
            "allowed_hosts",
            "allowed_origins",
            "security",
            "_names_us",
            "_same_user",
            "_same_site",
            "_navigation",
        }
    ),
}
# Imported before forking (never anything of convocationsd or its tests, which each child imports afresh).
PRELOAD = ["pytest", "hypothesis", "pytest_asyncio", "asyncio", "aiohttp.web", "aiohttp.test_utils", "platformdirs"]


@dataclass
class Outcome:
    mutant: Mutant
    verdict: str  # killed, timeout, survived, uncovered, equivalent, equivalent-but-killed
    detail: str = ""


# -- which tests run which lines -------------------------------------------------------------------------


class _Tracer:
    """A pytest plugin: the lines of the target files each test runs (setup, call and teardown)."""

    def __init__(self, files: set[str]) -> None:
        self.files = files
        self.current: str | None = None
        self.lines: dict[str, set[tuple[str, int]]] = {}
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []
        self.started = 0.0

    def trace(self, frame, event, arg):
        if frame.f_code.co_filename in self.files:
            return self.local
        return None

    def local(self, frame, event, arg):
        try:
            if event == "line" and self.current is not None:
                self.lines[self.current].add((frame.f_code.co_filename, frame.f_lineno))
        except RecursionError:  # a test of deep nesting: an exception here would switch tracing off
            pass
        return self.local

    def pytest_runtest_protocol(self, item, nextitem):
        sys.settrace(self.trace)  # again: a tracer that raised, or a test's own, leaves none behind
        self.current = item.nodeid
        self.lines.setdefault(item.nodeid, set())
        self.started = time.perf_counter()

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)
        if report.when == "teardown":
            self.seconds[report.nodeid] = time.perf_counter() - self.started


def trace_tests(out: Path) -> int:
    """In a process of its own (the parent must not import the package): runs the candidate tests once,
    unmutated, and writes which lines each one runs."""
    import threading

    import pytest

    tracer = _Tracer({str(PKG / file) for file in TARGETS})
    sys.settrace(tracer.trace)
    threading.settrace(tracer.trace)
    code = pytest.main(["-q", "-p", "no:cacheprovider", *TESTS], plugins=[tracer])
    sys.settrace(None)
    threading.settrace(None)
    by_test = {
        nodeid: {
            "seconds": tracer.seconds.get(nodeid, 0.0),
            "lines": sorted([str(Path(f).relative_to(PKG)), n] for f, n in lines),
        }
        for nodeid, lines in tracer.lines.items()
    }
    out.write_text(json.dumps({"code": int(code), "failed": tracer.failed, "tests": by_test}))
    return int(code)


def tests_for(mutant: Mutant, coverage: dict) -> list[str]:
    """The tests that run the mutant's lines, fastest first. What runs at import (module and class bodies,
    defaults) is no test's line: for it, every test of each test module that runs any line of the file (a test
    that only reads a constant runs none)."""
    lines = set(range(mutant.line, mutant.end_line + 1))
    if mutant.in_function:
        chosen = {t for t, info in coverage.items() if any(f == mutant.file and n in lines for f, n in info["lines"])}
    else:
        modules = {t.split("::")[0] for t, info in coverage.items() if any(f == mutant.file for f, _ in info["lines"])}
        chosen = {t for t in coverage if t.split("::")[0] in modules}
    return sorted(chosen, key=lambda t: (coverage[t]["seconds"], t))


# -- running one mutant ----------------------------------------------------------------------------------


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module's mutated source in place of the file."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=str(self.path))
        assert spec is not None
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(compile(self.source, str(self.path), "exec", dont_inherit=True), module.__dict__)


class _FirstFailure:
    def __init__(self) -> None:
        self.failed: str | None = None

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and self.failed is None:
            self.failed = report.nodeid


def _child(mutant: Mutant, source: str, tests: list[str], out: int) -> None:
    """In the forked child: import the mutant, run the tests, report on ``out``. Never returns."""
    code = 99
    try:
        os.setpgid(0, 0)  # so that a timeout ends whatever the tests started too
        log = tempfile.TemporaryFile()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        module = "convocationsd." + mutant.file.removesuffix(".py").replace("/", ".")
        sys.meta_path.insert(0, _MutantFinder(module, PKG / mutant.file, apply(source, mutant)))
        try:
            importlib.import_module(module)
        except Exception as e:  # a mutant that breaks its module's import is noticed by every test
            code = 1
            os.write(out, json.dumps({"code": code, "failed": f"import fails: {type(e).__name__}: {e}"}).encode())
            return
        import pytest

        first = _FirstFailure()
        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests], plugins=[first]))
        failed = first.failed
        if code not in (0, 1):  # no test ran: say why (a conftest that no longer imports, say)
            log.seek(0)
            said = [line.strip() for line in log.read().decode(errors="replace").splitlines() if "Error" in line]
            failed = said[-1] if said else f"pytest exit code {code}"
        os.write(out, json.dumps({"code": code, "failed": failed}).encode())
    finally:
        os._exit(code)


@dataclass
class _Running:
    mutant: Mutant
    pid: int
    fd: int
    deadline: float
    data: bytes = b""


def run_all(todo: list[tuple[Mutant, list[str], float]], sources: dict[str, str], jobs: int) -> list[Outcome]:
    """Runs each (mutant, tests, timeout) in a forked child, ``jobs`` at a time."""
    import pytest  # noqa: F401  (the point: loaded once, before the forks)

    for name in PRELOAD:
        __import__(name)
    stray = sorted(m for m in sys.modules if m == "convocationsd" or m.startswith("convocationsd."))
    if stray:
        raise SystemExit(f"mutation: {stray} imported before forking; children would not see their mutant")
    outcomes: list[Outcome] = []
    running: dict[int, _Running] = {}
    queue = list(todo)
    total, done = len(todo), 0
    while queue or running:
        while queue and len(running) < jobs:
            mutant, tests, timeout = queue.pop(0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(mutant, sources[mutant.file], tests, w)
            os.close(w)
            running[r] = _Running(mutant, pid, r, time.monotonic() + timeout)
        # A selector, not select.select(), which refuses descriptors from 1024 on (the project's own rule).
        with selectors.DefaultSelector() as waiting:
            for fd in running:
                waiting.register(fd, selectors.EVENT_READ)
            ready = {key.fd for key, _ in waiting.select(0.2)}
        now = time.monotonic()
        for fd in list(running):
            job = running[fd]
            if fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    job.data += chunk
                    continue
            elif now < job.deadline:
                continue
            else:
                os.killpg(job.pid, signal.SIGKILL)
            os.close(fd)
            _, status = os.waitpid(job.pid, 0)
            del running[fd]
            outcomes.append(_outcome(job, status, timed_out=fd not in ready))
            done += 1
            detail = f"  ({outcomes[-1].detail})" if outcomes[-1].detail else ""
            print(f"[{done}/{total}] {outcomes[-1].verdict:9} {job.mutant.key}{detail}", flush=True)
    return outcomes


def _outcome(job: _Running, status: int, *, timed_out: bool) -> Outcome:
    if timed_out:
        return Outcome(job.mutant, "timeout", "the tests did not finish in time")
    try:
        result = json.loads(job.data)
    except ValueError:
        return Outcome(job.mutant, "killed", f"the test process ended with status {status}")
    code = result["code"]
    if code == 0:
        return Outcome(job.mutant, "survived")
    # 1: a test failed; 2-4: the tests could not start (a module importing the mutant failed: each test id
    # came from pytest itself, so none is missing); 5, no test collected, would be a bug here.
    if code in (1, 2, 3, 4):
        return Outcome(job.mutant, "killed", result["failed"] or f"pytest exit code {code}")
    raise SystemExit(f"mutation: pytest exit code {code} for {job.mutant.key}: the selected tests did not run")


# -- the report ------------------------------------------------------------------------------------------


def render(outcomes: list[Outcome], seconds: float, jobs: int, sources: dict[str, str]) -> str:
    by_file: dict[str, dict[str, int]] = {}
    for o in outcomes:
        counts = by_file.setdefault(o.mutant.file, {})
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    kinds = ["killed", "timeout", "equivalent", "survived", "uncovered", "equivalent-but-killed"]
    total = {k: sum(c.get(k, 0) for c in by_file.values()) for k in kinds}
    lines = [
        HEADING,
        "",
        "Generated by `make mutation` (`tests/mutation`); do not edit by hand. Each mutant is one small change",
        "to one file (a comparison turned, a condition forced, a statement removed, a constant changed: the",
        "list is in `tests/mutation/mutants.py`), run against the unit tests that execute its line. A mutant",
        "is *killed* when one of them fails (or hangs: *timeout*); one that none can notice is *equivalent*,",
        "listed below with why (`tests/mutation/equivalent.py`). Any other survivor fails the run.",
        "",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(outcomes)} mutants, "
        + ", ".join(f"{total[k]} {k}" for k in kinds if total[k])
        + f"; {seconds:.0f} s with {jobs} worker{'s' if jobs > 1 else ''}.",
        "",
        "| file | mutated | mutants | killed | timeout | equivalent | survived |",
        "|---|---|---|---|---|---|---|",
    ]
    for file, only in TARGETS.items():
        c = by_file.get(file, {})
        scope = "all" if only is None else ", ".join(f"`{name}`" for name in sorted(only))
        survived = c.get("survived", 0) + c.get("uncovered", 0)
        lines.append(
            f"| `convocationsd/{file}` | {scope} | {sum(c.values())} | {c.get('killed', 0)} | "
            f"{c.get('timeout', 0)} | {c.get('equivalent', 0)} | {'**' + str(survived) + '**' if survived else 0} |"
        )
    lines += ["", "### Equivalent mutants", "", "| mutant | why no test can tell it from the original |", "|---|---|"]
    for o in outcomes:
        if o.verdict == "equivalent":
            lines.append(f"| `{_cell(o.mutant.key)}` | {_cell(EQUIVALENT[o.mutant.key])} |")
    gaps = [o for o in outcomes if o.verdict in ("survived", "uncovered", "equivalent-but-killed")]
    if gaps:
        lines += ["", "### Not explained (the run failed)", "", "| mutant | line | outcome |", "|---|---|---|"]
        for o in gaps:
            lines.append(f"| `{_cell(o.mutant.key)}` | {o.mutant.line} | {o.verdict} {_cell(o.detail)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_doc(section: str) -> None:
    old = DOC.read_text() if DOC.exists() else ""
    head = old.split(HEADING, 1)[0].rstrip("\n")
    DOC.write_text((head + "\n\n" if head else "") + section)


# -- the command -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    p.add_argument("-j", "--jobs", type=int, default=1, help="mutants at a time (default 1)")
    p.add_argument("--only", metavar="TEXT", help="run just the mutants whose name contains TEXT; write nothing")
    p.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    p.add_argument("--reuse-trace", action="store_true", help=f"reuse {TRACE_CACHE.relative_to(ROOT)} of the last run")
    p.add_argument("--trace", metavar="OUT", type=Path, help=argparse.SUPPRESS)  # the tracing subprocess
    args = p.parse_args(argv)
    if args.trace:
        return trace_tests(args.trace)

    started = time.monotonic()
    sources = {file: (PKG / file).read_text() for file in TARGETS}
    everything = [m for file, only in TARGETS.items() for m in mutants(sources[file], file, only)]
    chosen = [m for m in everything if not args.only or args.only in m.key]
    coverage = _trace(reuse=args.reuse_trace)
    todo, outcomes = [], []
    for m in chosen:
        try:
            compile(apply(sources[m.file], m), m.file, "exec", dont_inherit=True)
        except SyntaxError as e:
            raise SystemExit(f"mutation: {m.key} does not compile ({e}): a bug in tests/mutation/mutants.py") from e
        tests = tests_for(m, coverage)
        if args.list:
            print(f"{m.key}  [{len(tests)} tests]")
        elif not tests:
            outcomes.append(Outcome(m, "uncovered", "no unit test runs this line"))
        else:
            budget = sum(coverage[t]["seconds"] for t in tests)
            todo.append((m, tests, 20.0 + 5 * budget))
    if args.list:
        return 0
    outcomes += run_all(todo, sources, args.jobs)
    outcomes = [_judge(o) for o in outcomes]
    outcomes.sort(key=lambda o: [*TARGETS].index(o.mutant.file) * 100_000 + o.mutant.line)
    stale = sorted(set(EQUIVALENT) - {m.key for m in everything})
    for o in outcomes:
        if o.verdict in ("survived", "uncovered", "equivalent-but-killed"):
            print(f"NOT EXPLAINED: {o.mutant.key} (line {o.mutant.line}): {o.verdict} {o.detail}")
    for key in stale:
        print(f"STALE: tests/mutation/equivalent.py lists {key!r}, which is no longer a mutant")
    seconds = time.monotonic() - started
    counts = {v: sum(o.verdict == v for o in outcomes) for v in sorted({o.verdict for o in outcomes})}
    print(f"{len(outcomes)} mutants in {seconds:.0f} s: {counts}")
    if not args.only:
        write_doc(render(outcomes, seconds, args.jobs, sources))
        print(f"wrote {DOC.relative_to(ROOT)}")
    bad = [o for o in outcomes if o.verdict in ("survived", "uncovered", "equivalent-but-killed")]
    return 1 if bad or (stale and not args.only) else 0


def _trace(*, reuse: bool) -> dict:
    if not (reuse and TRACE_CACHE.exists()):
        TRACE_CACHE.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "tests.mutation", "--trace", str(TRACE_CACHE)], cwd=ROOT, check=False)
    result = json.loads(TRACE_CACHE.read_text())
    if result["code"] != 0:
        raise SystemExit(f"mutation: the unit tests fail without any mutant: {result['failed']}")
    return result["tests"]


def _judge(o: Outcome) -> Outcome:
    listed = o.mutant.key in EQUIVALENT
    if o.verdict in ("survived", "uncovered") and listed:
        return Outcome(o.mutant, "equivalent", EQUIVALENT[o.mutant.key])
    if o.verdict in ("killed", "timeout") and listed:
        return Outcome(o.mutant, "equivalent-but-killed", f"listed as equivalent, but {o.detail}")
    return o


if __name__ == "__main__":
    sys.exit(main())
