"""The systemd user units as a person's session runs them: a real systemd 252 user manager in a container.

Everything the person does goes through what they would type: ``convctl``, ``systemctl --user``,
``journalctl --user``, a browser (tests/service/browser.py). The project is only the installed wheel.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.service.conftest import Desk, spare_port

pytestmark = pytest.mark.needs_root

SERVICE = "convocationsd.service"
SOCKETS = ("convocationsd.socket", "convocationsd-http.socket")


def test_install_enables_the_sockets_and_the_first_connection_starts_the_service(person: Desk):
    port = spare_port()
    out = person.install_service(port)
    assert "systemctl --user enable --now convocationsd.socket convocationsd-http.socket" in out
    for unit in SOCKETS:
        assert person.show(unit, "UnitFileState", "ActiveState", "SubState") == {
            "UnitFileState": "enabled",
            "ActiveState": "active",
            "SubState": "listening",
        }
    assert person.show(SERVICE, "ActiveState")["ActiveState"] == "inactive"  # nothing runs until someone asks

    status = json.loads(person.convctl("status", "--json", check=False).stdout)
    assert status["port"] == port and status["socket"] == f"{person.who.runtime_dir}/convocations/convocationsd.sock"
    unit = person.show(SERVICE, "ActiveState", "SubState", "Type", "StatusText", "MainPID", "NRestarts")
    # Type=notify: "active (running)" only after READY=1, and the STATUS= text is systemd's to show.
    assert unit["Type"] == "notify" and (unit["ActiveState"], unit["SubState"]) == ("active", "running")
    assert unit["StatusText"] == f"Listening on http://localhost:{port}"
    assert int(unit["MainPID"]) == status["pid"] and unit["NRestarts"] == "0"
    started = [
        e["MESSAGE"] for e in person.journal("--unit", SERVICE) if e.get("_PID") == "1" or "Started" in e["MESSAGE"]
    ]
    assert any(m.startswith("Started convocationsd.service") for m in started), started
    assert os.path.basename(person.run("readlink", f"/proc/{status['pid']}/exe").stdout.strip()).startswith("python3")
