"""The hand-written mutant lists still fit today's code. Both runs that use them take minutes (the adversarial
report's defence checks, `make mutation`) and find a stale entry only then, or, worse, count it as found: a
mutant whose edit no longer compiles, or that names a test that is gone, makes pytest fail for that reason
alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.adversarial import report
from tests.mutation import __main__ as mutation
from tests.mutation.equivalent import EQUIVALENT
from tests.mutation.mutants import mutants

ROOT = Path(__file__).resolve().parents[2]


def test_every_defence_check_of_the_adversarial_report_still_applies():
    """Each MUTANTS entry finds its text in its file exactly as often as it expects, the edit compiles, and
    every test it names is still there."""
    problems = []
    for m in report.MUTANTS:
        try:
            changed = report.apply((ROOT / "convocationsd" / m.file).read_text(), m)
            compile(changed, m.file, "exec", dont_inherit=True)
        except (report.Stale, SyntaxError) as e:
            problems.append(f"{m.defence}: {e}")
        for test in m.tests:
            path, _, name = test.partition("::")
            function = name.split("[")[0]
            source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
            if not re.search(rf"^(async )?def {re.escape(function)}\(", source, re.M):
                problems.append(f"{m.defence}: no test {path}::{function}")
    assert not problems, "update MUTANTS in tests/adversarial/report.py:\n" + "\n".join(problems)


def test_a_defence_check_whose_text_is_gone_or_doubled_is_stale():
    m = report.Mutant("a check", "m.py", "if bad:\n", "if False:\n", ["t.py::test"])
    assert report.apply("if bad:\n    raise X\n", m) == "if False:\n    raise X\n"
    for text in ("if worse:\n    raise X\n", "if bad:\n    raise X\nif bad:\n    raise Y\n"):
        with pytest.raises(report.Stale, match="update MUTANTS"):
            report.apply(text, m)
    assert report.apply("if bad:\nif bad:\n", m._replace(times=2)) == "if False:\nif False:\n"


def test_every_equivalent_mutant_is_still_made():
    """tests/mutation/equivalent.py names mutants by their text: one whose code changed is no longer made,
    and `make mutation` fails on it only at the end of its run."""
    sources = {file: (ROOT / "convocationsd" / file).read_text() for file in mutation.TARGETS}
    made = {m.key for file, only in mutation.TARGETS.items() for m in mutants(sources[file], file, only)}
    stale = sorted(set(EQUIVALENT) - made)
    assert not stale, "tests/mutation/equivalent.py lists mutants that are no longer made:\n" + "\n".join(stale)
