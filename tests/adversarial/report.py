"""Regenerates docs/robustness.md from a run of the adversarial suite.

    dbus-run-session -- tests/with-keyring.sh .venv/bin/python -m tests.adversarial.report

(plain ``.venv/bin/python -m tests.adversarial.report`` works too: the suite needs no keyring). It runs
``tests/adversarial`` with this module as a pytest plugin, which records every test's outcome and
docstring, then checks that the suite notices when a defence is removed: for each entry of ``MUTANTS``
it copies the package to a temporary directory, disables one defence by a textual edit, runs the tests
that guard it against the copy, and expects them to fail. The working tree is never modified, so this is
safe while others edit the code. ``--no-mutants`` skips that part and keeps the previous mutant table;
``--only TEXT`` runs just the mutants whose defence names TEXT and prints their outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "robustness.md"
OUT_ENV = "CONVOCATIONS_ROBUSTNESS_JSON"

DOORS = {
    "test_web_attacks": "Web pages attacking localhost",
    "test_local_users": "Other local users",
    "test_bad_input": "Bad input on every door",
    "test_upstream_faults": "Upstream faults",
    "test_crashes": "Crashes and restarts",
    "test_no_leaks": "Secrets never leak",
}

# (defence, file, original text, replacement, tests that must fail)
MUTANTS = [
    (
        "Host allow-list (DNS rebinding)",
        "daemon/http_app.py",
        'if request.headers.get("Host", "").lower() not in allowed_hosts(ctl.endpoint.port):',
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_dns_rebinding_host_is_refused_without_side_effect"],
    ),
    (
        "Cross-site check on the start routes",
        "daemon/http_app.py",
        "if not _same_site(request, ctl.endpoint.port):",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_cross_site_start_is_refused"],
    ),
    (
        "Callbacks only as top-level navigations",
        "daemon/http_app.py",
        "if not _navigation(request):",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_subresource_callback_is_refused"],
    ),
    (
        "state compare",
        "core/flows.py",
        "if state is not None and not hmac.compare_digest(",
        "if False and not hmac.compare_digest(",
        ["tests/adversarial/test_web_attacks.py::test_wrong_state_neither_exchanges_nor_ends_the_flow"],
    ),
    (
        "Codes exchanged at most once",
        "core/flows.py",
        "if digest in self._used_codes:",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_repeated_code_is_not_exchanged_again"],
    ),
    (
        "Peer uid check on the socket",
        "daemon/ipc_server.py",
        "if self.uid != self.server.uid:",
        "if False:",
        ["tests/integration/test_daemon_lifecycle.py::test_other_uid_client_is_refused"],
    ),
    (
        "Loopback HTTP only for our own uid",
        "daemon/http_app.py",
        "    elif not _same_user(request):",
        "    elif False:",
        ["tests/adversarial/test_local_users.py::test_other_uid_cannot_start_or_join_a_login_over_http"],
    ),
    (
        "Subscriber queue limit",
        "daemon/ipc_server.py",
        "if self.transport.get_write_buffer_size() > self.server.queue_limit:",
        "if False:",
        ["tests/integration/test_daemon_lifecycle.py::test_slow_subscriber_dropped_fast_one_gets_everything"],
    ),
    (
        "1 MiB line limit",
        "daemon/ipc_server.py",
        "protocol.MAX_LINE",
        "(1 << 62)",
        ["tests/adversarial/test_bad_input.py::test_line_over_one_mib_closes_that_connection_only"],
    ),
    (
        "Open-file limit raised at start",
        "daemon/main.py",
        "    raise_open_file_limit()\n",
        "",
        ["tests/adversarial/test_bad_input.py::test_two_thousand_idle_connections"],
    ),
    (
        "Malformed HTTP requests logged without traceback",
        "daemon/http_app.py",
        "server_log.addFilter(_MALFORMED)",
        "pass",
        ["tests/adversarial/test_bad_input.py::test_oversized_header_is_4xx"],
    ),
    (
        "0600 runtime dir",
        "daemon/ipc_server.py",
        "path.mkdir(mode=0o700, parents=True, exist_ok=True)",
        "path.mkdir(mode=0o755, parents=True, exist_ok=True); return",
        ["tests/adversarial/test_local_users.py::test_other_uid_cannot_traverse_default_runtime_dir"],
    ),
    (
        "Loose secret.key refused",
        "store/encrypted.py",
        "if st.st_mode & 0o077:",
        "if False:",
        ["tests/adversarial/test_local_users.py::test_loose_secret_key_refused_when_storing_from_a_login"],
    ),
    (
        "No key in logs (a leak planted on purpose)",
        "daemon/controller.py",
        "backend = await self._store_key(result.key)",
        'log.info("storing %s", result.key); backend = await self._store_key(result.key)',
        ["tests/adversarial/test_no_leaks.py::test_no_secret_in_any_output"],
    ),
    (
        "Key never on the secret-store helper's command line",
        "store/helper.py",
        '[sys.executable, "-m", __name__, str(self.config_path), self.forced_backend or ""],',
        '[sys.executable, "-m", __name__, str(self.config_path), self.forced_backend or "", line.decode()],',
        ["tests/integration/test_secret_helper.py::test_the_key_travels_only_through_the_pipe"],
    ),
]


# -- the pytest plugin -----------------------------------------------------------------------------------

_docs: dict[str, str] = {}
_results: dict[str, dict] = {}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        _docs[item.nodeid] = doc


def pytest_runtest_logreport(report) -> None:
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "duration": 0.0})
    entry["duration"] += report.duration
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


def pytest_sessionfinish(session) -> None:
    out = os.environ.get(OUT_ENV)
    if out:
        data = {nid: {**r, "doc": _docs.get(nid, "")} for nid, r in _results.items()}
        Path(out).write_text(json.dumps(data, indent=1))


# -- the script ------------------------------------------------------------------------------------------


def run_suite() -> tuple[dict, float]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, OUT_ENV: out}
    t0 = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.adversarial.report",
            "tests/adversarial",
        ],
        cwd=ROOT,
        env=env,
    )
    elapsed = time.monotonic() - t0
    data = json.loads(Path(out).read_text())
    os.unlink(out)
    return data, elapsed


def run_mutant(defence: str, file: str, old: str, new: str, tests: list[str]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="cvmut") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "convocationsd", work / "convocationsd", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        (work / "tests").symlink_to(ROOT / "tests")
        target = work / "convocationsd" / file
        text = target.read_text()
        if old not in text:
            return "not applied", f"`{old}` is no longer in {file}: update MUTANTS"
        target.write_text(text.replace(old, new))
        # cwd=work: both this pytest and the daemons it starts (python -m convocationsd) import the mutant.
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        failed = [
            line.split(" - ")[0].replace("FAILED ", "")
            for line in done.stdout.splitlines()
            if line.startswith("FAILED")
        ]
        if done.returncode == 0:
            return "NOT DETECTED", summary
        return "detected", (failed[0].split("::", 1)[-1] + ": " if failed else "") + summary


def _first_para(doc: str) -> tuple[str, str]:
    """(case, defence) from a docstring: its first paragraph, and a 'Defence:' line if there is one."""
    text = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    m = re.search(r"Defence:\s*(.+?)(?:\n\n|$)", doc.strip(), re.S)
    defence = " ".join(m.group(1).split()) if m else ""
    return text, defence


def render(results: dict, elapsed: float, mutants: list[tuple] | None, old_mutant_section: str) -> str:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    lines = [
        "# Robustness: hostile input and faults",
        "",
        "Generated by `tests/adversarial/report.py` from a run of `tests/adversarial`; do not edit by hand.",
        "Regenerate with:",
        "",
        "    dbus-run-session -- tests/with-keyring.sh .venv/bin/python -m tests.adversarial.report",
        "",
        "(`.venv/bin/python -m tests.adversarial.report --no-mutants` skips the defence checks and keeps the last table.)",
        "The threat model behind these cases is in [SECURITY.md](../SECURITY.md).",
        "",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(results)} cases, "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f", {elapsed:.0f} s.",
        "",
    ]
    by_door: dict[str, list[tuple[str, dict]]] = {}
    for nid, r in results.items():
        module = nid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        by_door.setdefault(module, []).append((nid, r))
    for module, door in DOORS.items():
        rows = by_door.get(module, [])
        if not rows:
            continue
        lines += [
            f"## {door}",
            "",
            f"`tests/adversarial/{module}.py`",
            "",
            "| case | variant | defence | result |",
            "|---|---|---|---|",
        ]
        grouped: dict[str, list[tuple[str, dict]]] = {}
        for nid, r in rows:
            grouped.setdefault(nid.split("::")[1].split("[")[0], []).append((nid, r))
        for items in grouped.values():
            case, defence = _first_para(items[0][1]["doc"])
            for nid, r in items:
                variant = nid.split("[", 1)[1].rstrip("]") if "[" in nid else ""
                result = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**", "skipped": "skipped"}[
                    r["outcome"]
                ]
                lines.append(
                    f"| {case.replace('|', '/') if variant == '' or nid == items[0][0] else '〃'} | {variant} | "
                    f"{defence.replace('|', '/') if nid == items[0][0] else ''} | {result} |"
                )
        lines.append("")
    lines += ["## Does the suite notice a missing defence?", ""]
    if mutants is None:
        lines += [old_mutant_section.strip() or "(not run)", ""]
    else:
        lines += [
            "Each row disables one defence in a temporary copy of the package (the working tree is untouched),",
            "runs the tests that guard it against the copy, and expects them to fail.",
            "",
            "| defence disabled | file | tests run | outcome |",
            "|---|---|---|---|",
        ]
        for (defence, file, _old, _new, tests), (verdict, detail) in mutants:
            names = ", ".join(t.split("::")[-1] for t in tests)
            lines.append(f"| {defence} | `convocationsd/{file}` | `{names}` | {verdict}: {detail.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-mutants", action="store_true", help="skip the defence checks; keep the last table")
    p.add_argument("--only", metavar="TEXT", help="run only the mutants whose defence contains TEXT; write nothing")
    args = p.parse_args(argv)
    if args.only:
        chosen = [m for m in MUTANTS if args.only.lower() in m[0].lower()]
        outcomes = [(m[0], run_mutant(*m)) for m in chosen]
        for name, (verdict, detail) in outcomes:
            print(f"mutant {name}: {verdict} ({detail})")
        return 0 if outcomes and all(o[0] == "detected" for _, o in outcomes) else 1
    results, elapsed = run_suite()
    old = DOC.read_text() if DOC.exists() else ""
    old_section = (
        old.split("## Does the suite notice a missing defence?", 1)[1] if "## Does the suite notice" in old else ""
    )
    mutants = None
    if not args.no_mutants:
        mutants = []
        for m in MUTANTS:
            outcome = run_mutant(*m)
            print(f"mutant {m[0]}: {outcome[0]} ({outcome[1]})", flush=True)
            mutants.append((m, outcome))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(results, elapsed, mutants, old_section))
    print(f"wrote {DOC.relative_to(ROOT)}")
    failed = [n for n, r in results.items() if r["outcome"] in ("failed", "error")]
    missed = [m[0][0] for m in (mutants or []) if m[1][0] != "detected"]
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
