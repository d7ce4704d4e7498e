"""Code planted where a program starts: a ``json.py`` or a ``convocationsd/`` folder in the working directory.

``python -m X`` imports from the working directory first, so such a file in the directory the daemon was
started from (a shared one, or the person's home under systemd and launchd) would run as the person, the
key within reach. Every process the project starts, and every command line its unit and agent run, must
import only from the installation: the daemon as the rendered unit and plist start it, the daemon started
by its entry-point script (whose secret-store helper then runs in that directory), and convctl.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from convocationsd.cli import service_install
from convocationsd.common.interpreter import module_command
from tests.conftest import assert_no_secret

BIN = Path(sys.executable).parent  # the installation's scripts sit beside its interpreter


def _plant(directory: Path, marker: Path) -> None:
    """What someone leaves in a directory: a module the daemon and its helper import, and a package that
    shadows ours. Each only notes that it ran (a real one would copy the key somewhere)."""
    note = f"import sys\nwith open({str(marker)!r}, 'a') as f:\n    f.write(__name__ + ' in ' + ' '.join(sys.argv) + '\\n')\n"
    directory.mkdir(exist_ok=True)
    (directory / "json.py").write_text(note)
    for sub in ("convocationsd", "convocationsd/store", "convocationsd/daemon"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / sub / "__init__.py").write_text(note)
    (directory / "convocationsd" / "__main__.py").write_text(note)


def _ran(marker: Path) -> str:
    return marker.read_text() if marker.exists() else ""


def _unit_command() -> list[str]:
    unit = service_install.render_units(sys.executable)[service_install.SERVICE]
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def _agent_command() -> list[str]:
    plist = service_install.render_plist(python=sys.executable, socket_path=Path("/s.sock"), home=Path("/h"))
    return plistlib.loads(plist)["ProgramArguments"]


STARTS = {
    "systemd-unit": _unit_command,
    "launchd-agent": _agent_command,
    "entry-point-script": lambda: [str(BIN / "convocationsd")],
}


@pytest.mark.parametrize("start", STARTS)
def test_code_planted_in_the_working_directory_never_runs(daemon_factory, short_tmp, fake_t, start):
    """The daemon started in a directory holding a planted ``json.py`` and ``convocationsd/`` (as the
    rendered systemd unit and launchd agent run it, and by its entry-point script) links an account through
    its secret-store helper and hands the key to convctl run in that directory too: none of the planted
    code runs, and the key is read back intact.

    Defence: ``-P`` on every command line (common/interpreter.module_command: the helper's start,
    service_install.daemon_command), and convctl's entry-point script."""
    shared, marker = short_tmp / "shared", short_tmp / "ran.txt"
    _plant(shared, marker)
    command = STARTS[start]()
    try:
        d = daemon_factory(command=command, cwd=shared, CONVOCATIONS_OPENROUTER_URL=fake_t.url)
    except RuntimeError:
        pytest.fail(f"the daemon did not start from {shared}; planted code that ran: {_ran(marker)!r}")
    reply = d.call("oauth.start", {"paste": True, "restart": True})
    code = fake_t.run(fake_t.fake.approve_headless(reply["auth_url"]))
    done = d.call("oauth.exchange", {"code": code})  # the helper stores the key, in the daemon's directory
    assert not _ran(marker), "planted code ran: " + _ran(marker)
    assert done["success"] is True, done
    key = fake_t.fake.issued_keys[-1]
    got = subprocess.run(
        [str(BIN / "convctl"), "secret", "get-openrouter-key"],
        cwd=shared,
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert not _ran(marker), "planted code ran: " + _ran(marker)
    assert (got.returncode, got.stdout.strip()) == (0, key), got.stderr
    assert_no_secret(key, d.log(), got.stderr)


def test_the_command_line_keeps_a_user_installation(short_tmp):
    """The flag that keeps the working directory out (``-P``) keeps the user's site-packages, where
    ``pip install --user`` (and a pipx-style per-user install) put the package: ``-I`` would drop them.

    Defence: common/interpreter.SAFE_PATH is -P, not -I."""
    python = getattr(sys, "_base_executable", sys.executable)  # a venv's interpreter never reads a user site
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONUSERBASE"] = str(short_tmp / "userbase")
    where = subprocess.run(
        [python, "-c", "import site; print(site.getusersitepackages())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    site_dir = Path(where.stdout.strip())
    site_dir.mkdir(parents=True)
    (site_dir / "cv_user_probe.py").write_text("print('from the user site')\n")
    done = subprocess.run(
        module_command(python, "cv_user_probe"), cwd=short_tmp, env=env, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, "from the user site\n"), done.stderr
