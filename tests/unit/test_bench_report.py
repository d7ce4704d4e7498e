"""bench/report.py: the Targets table of RESULTS.md holds every check of every section."""

from bench.report import Section, render

MACHINE = {"date": "d", "cpu": "c", "cores": "2", "os": "o", "kernel": "k", "python": "p", "load": "0"}


def test_every_check_of_a_section_is_a_row_of_the_targets_table():
    cli = Section("CLI")
    cli.check("convctl status", "1.30x", "<= 1.5x", True)
    cli.check("convctl exec, no daemon", "2.70x", "<= 2.5x", False)
    ipc = Section("IPC")
    ipc.check("raw client", "0.81x", ">= 0.7x", True)
    text = render(MACHINE, [cli, ipc], mode="full", total=1.0, preamble=[])
    table = text.split("## Targets", 1)[1].split("## 1.", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert rows == [
        "| 1 | convctl status | 1.30x | <= 1.5x | met |",
        "| 1 | convctl exec, no daemon | 2.70x | <= 2.5x | **MISSED** |",
        "| 2 | raw client | 0.81x | >= 0.7x | met |",
    ]
