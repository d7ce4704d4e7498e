"""Results of the sections and the RESULTS.md they make."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Check:
    name: str
    measured: str
    target: str
    passed: bool | None  # None: could not be measured


@dataclass
class Section:
    title: str
    body: list[str] = field(default_factory=list)  # markdown lines
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, measured: str, target: str, passed: bool | None) -> None:
        self.checks.append(Check(name, measured, target, passed))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.body.append("| " + " | ".join(header) + " |")
        self.body.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.body.append("| " + " | ".join(row) + " |")
        self.body.append("")


def verdict(passed: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "reported"}[passed]


def render(machine: dict[str, str], sections: list[Section], *, mode: str, total: float, preamble: list[str]) -> str:
    out = ["# convocationsd benchmarks", ""]
    if mode == "smoke":
        out += [
            "> **Smoke run** (tiny counts): the figures below are not meaningful; run `make bench` for real numbers.",
            "",
        ]
    elif mode == "check":
        out += ["> **Check run**: the target rows only, with fewer repetitions than `make bench`.", ""]
    out += [
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}, kernel {machine['kernel']}",
        f"- python: {machine['python']}",
        f"- load average at start: {machine['load']} (the machine is shared: every figure is compared with a "
        "reference measured in the same run)",
        f"- whole run: {total:.0f} s",
        "",
        *preamble,
        "## Targets",
        "",
        "| # | check | measured | target | result |",
        "|---|---|---|---|---|",
    ]
    for i, section in enumerate(sections, 1):
        for c in section.checks:
            result = verdict(c.passed)
            out.append(
                f"| {i} | {c.name} | {c.measured} | {c.target} | {'**' + result + '**' if c.passed is False else result} |"
            )
    out.append("")
    for i, section in enumerate(sections, 1):
        out += [f"## {i}. {section.title}", "", f"_section time: {section.seconds:.1f} s_", ""]
        out += section.body
        if section.notes:
            out += ["", *section.notes, ""]
    return "\n".join(out).rstrip() + "\n"
