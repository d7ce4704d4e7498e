"""The mutation run's own parts (tests/mutation): which mutants a source gets, and which tests run each."""

from __future__ import annotations

import ast
import textwrap

from tests.adversarial import report
from tests.mutation import __main__ as run
from tests.mutation.mutants import apply, mutants

SOURCE = textwrap.dedent(
    '''
    """Docstring: never mutated."""
    from __future__ import annotations

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import Any

    LIMIT = 10


    def check(uid: int | None, name: str = "root") -> bool:
        """Its docstring neither."""
        if uid is None or uid > LIMIT:
            raise ValueError("no such user here")
        return not name.startswith("x")
    '''
)


def keys(only=None) -> list[str]:
    return [m.key for m in mutants(SOURCE, "m.py", only)]


def test_each_operator_makes_its_mutants_and_nothing_else():
    assert keys() == [
        "m.py:LIMIT:statement:LIMIT = 10 -> pass",
        "m.py:LIMIT:constant:10 -> 11",
        "m.py:check:constant:\"root\" -> 'XXrootXX'",
        "m.py:check:condition:uid is None or uid > LIMIT -> True",
        "m.py:check:condition:uid is None or uid > LIMIT -> False",
        "m.py:check:boolean:uid is None or uid > LIMIT -> uid is None and uid > LIMIT",
        "m.py:check:compare:uid is None -> uid is not None",
        "m.py:check:compare:uid > LIMIT -> uid >= LIMIT",
        'm.py:check:statement:raise ValueError("no such user here") -> pass',  # the message itself: prose
        'm.py:check:statement:return not name.startswith("x") -> pass',
        "m.py:check:not:not name.startswith(\"x\") -> name.startswith('x')",
        "m.py:check:constant:\"x\" -> 'XXxXX'",
    ]


def test_only_chooses_functions_and_module_names():
    assert {k.split(":")[1] for k in keys(frozenset({"check"}))} == {"check"}
    assert {k.split(":")[1] for k in keys(frozenset({"LIMIT"}))} == {"LIMIT"}


def test_a_mutant_changes_only_its_own_text_and_keeps_every_line_number():
    for m in mutants(SOURCE, "m.py"):
        changed = apply(SOURCE, m)
        ast.parse(changed)
        assert changed.count("\n") == SOURCE.count("\n")
        before, after = SOURCE.splitlines(), changed.splitlines()
        assert [i + 1 for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == sorted(
            {m.line, m.end_line}
        )


def test_a_mutant_over_several_lines_leaves_blank_ones():
    source = "def f():\n    raise ValueError(\n        'x',\n    )\n"
    [removed] = [m for m in mutants(source, "f.py") if m.operator == "statement"]
    assert apply(source, removed) == "def f():\n    pass\n\n\n"


def test_the_same_change_twice_in_a_function_gets_two_names():
    source = "def f(a, b):\n    return a == 1 or b == 1\n"
    assert [k for k in (m.key for m in mutants(source, "f.py")) if "1 -> 2" in k] == [
        "f.py:f:constant:1 -> 2",
        "f.py:f:constant:1 -> 2 #2",
    ]


def test_tests_are_chosen_by_the_lines_they_run():
    coverage = {
        "tests/unit/test_a.py::one": {"seconds": 0.2, "lines": [["m.py", 14]]},
        "tests/unit/test_a.py::two": {"seconds": 0.1, "lines": [["m.py", 14], ["m.py", 15]]},
        "tests/unit/test_a.py::constant_only": {"seconds": 0.0, "lines": []},
        "tests/unit/test_b.py::elsewhere": {"seconds": 0.0, "lines": [["n.py", 1]]},
    }
    by_key = {m.key: m for m in mutants(SOURCE, "m.py")}
    raise_removed = by_key['m.py:check:statement:raise ValueError("no such user here") -> pass']
    assert run.tests_for(raise_removed, coverage) == ["tests/unit/test_a.py::two"]
    condition = by_key["m.py:check:condition:uid is None or uid > LIMIT -> True"]
    assert run.tests_for(condition, coverage) == ["tests/unit/test_a.py::two", "tests/unit/test_a.py::one"]
    # A module-level change: every test of a module that runs the file, also one that only reads a constant.
    assert run.tests_for(by_key["m.py:LIMIT:constant:10 -> 11"], coverage) == [
        "tests/unit/test_a.py::constant_only",
        "tests/unit/test_a.py::two",
        "tests/unit/test_a.py::one",
    ]


def test_the_adversarial_report_keeps_the_mutation_section():
    assert run.HEADING.startswith(report.MUTATION_RUN)
