"""A wheel is the whole product. Built from its sdist and installed alone into a fresh venv, as pipx does, it
starts the daemon, completes a login against the fake OpenRouter, passes doctor, and installs its service
with ExecStart at that venv's interpreter. It runs from an empty folder with no PYTHONPATH, so nothing of this
checkout is on its path (a test below proves it).

Building needs no network (tests/helpers/wheel.py); the wheel's dependencies come from the package index,
as with pipx (~15 s), once for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import plistlib
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import convocationsd
from convocationsd.cli import service_install as si
from tests.conftest import (
    DaemonProcess,
    base_env,
    follow_callback,
    port_chosen_by_daemon,
    read_auth_url,
    wait_for_socket,
)
from tests.helpers.wheel import ROOT, Dists, build_dists, install_wheel, wheelhouse
from tests.integration.test_units import CANNOT_VERIFY, parse_unit, verify


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    return build_dists(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv_bin(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = wheelhouse(dists.wheel, tmp_path_factory.mktemp("wheels"))
    return install_wheel(dists.wheel, tmp_path_factory.mktemp("pipx") / "venv", house)


@pytest.fixture
def stranger(short_tmp: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """The environment of a person with only the wheel (no PYTHONPATH), and an empty folder to run in."""
    env = base_env(short_tmp)
    env.pop("PYTHONPATH", None)
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    yield env, elsewhere


def installed(venv_bin: Path, program: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv_bin / program), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def package_files() -> set[str]:
    package = ROOT / "convocationsd"
    return {
        str(p.relative_to(ROOT)) for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }  # fmt: skip


def test_sdist_holds_what_the_wheel_is_built_from(dists: Dists):
    sdist = dists.sdist_names()
    assert package_files() <= sdist  # the code, the unit files and the LaunchAgent
    assert {"pyproject.toml", "MANIFEST.in", "README.md", "SECURITY.md"} <= sdist
    assert {f"docs/{p.name}" for p in (ROOT / "docs").iterdir()} <= sdist
    # and the wheel, built from that sdist, holds the package and only the package
    assert {n for n in dists.wheel_names() if ".dist-info/" not in n} == package_files()


def test_nothing_of_the_checkout_is_on_the_installed_path(venv_bin: Path, stranger):
    env, elsewhere = stranger
    show = "import convocationsd, json, sys; print(json.dumps([convocationsd.__file__, sys.path]))"
    done = installed(venv_bin, "python", "-c", show, env=env, cwd=elsewhere)
    module, path = json.loads(done.stdout)
    assert Path(module).is_relative_to(venv_bin.parent), module
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)], path


def start_installed_daemon(venv_bin: Path, env: dict[str, str], cwd: Path) -> DaemonProcess:
    """The wheel's ``convocationsd`` script, as its entry point runs it, with the dirs ``base_env`` chose."""
    log_path = cwd.parent / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv_bin / "convocationsd"), "--log-level", "debug"],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    d = DaemonProcess(proc, env, Path(env["CONVOCATIONS_SOCKET"]), cwd.parent / "cfg" / "convocations", log_path)
    try:
        wait_for_socket(d.socket, proc)
        port_chosen_by_daemon(d)
    except BaseException:
        d.stop()
        raise
    return d


async def test_the_installed_wheel_logs_in_and_passes_doctor(venv_bin: Path, stranger, fake):
    env, elsewhere = stranger
    env.update(CONVOCATIONS_OPENROUTER_URL=fake.url, RCONV_HTTP_PORT="0")
    d = await asyncio.to_thread(start_installed_daemon, venv_bin, env, elsewhere)
    try:
        login = subprocess.Popen(
            [str(venv_bin / "convctl"), "oauth", "start", "--no-browser", "--timeout", "30"],
            env=env,
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        status, _, html = await follow_callback(await fake.approve(await read_auth_url(login)))
        assert status == 200 and "OpenRouter account linked" in html
        assert await asyncio.to_thread(login.wait, 30) == 0, login.stderr.read() if login.stderr else ""

        doctor = await asyncio.to_thread(installed, venv_bin, "convctl", "doctor", "--json", env=env, cwd=elsewhere)
        results = json.loads(doctor.stdout)
        assert doctor.returncode == 0 and all(r["ok"] for r in results), results
        assert {r["check"] for r in results} >= {"daemon", "account", "openrouter"}
        assert d.call("status")["pid"] == d.proc.pid  # doctor asked this daemon, the wheel's
        assert d.stop() == 0, d.log()[-3000:]
    finally:
        d.stop()


@pytest.fixture(scope="module")
def unit_install(venv_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """The wheel's ``convctl service install``, dry and then for real, where no systemd user manager is
    reachable (the tests' runtime dir is a new one): (dry run's output, real run's output, unit folder)."""
    tmp = tmp_path_factory.mktemp("svc")
    env = base_env(tmp, HOME=str(tmp / "home"), DBUS_SESSION_BUS_ADDRESS="")
    env.pop("PYTHONPATH", None)
    (tmp / "run").mkdir(mode=0o700)
    folder = tmp / "cfg" / "systemd" / "user"
    dry = installed(venv_bin, "convctl", "service", "install", "--dry-run", env=env, cwd=tmp)
    assert dry.returncode == 0, dry.stderr
    assert "NOT ENABLED" in dry.stdout, dry.stdout  # so no manager of the person's would be touched below
    assert not folder.exists()  # the dry run wrote nothing
    real = installed(venv_bin, "convctl", "service", "install", env=env, cwd=tmp)
    assert real.returncode == 1 and "but not enabled" in real.stderr, real.stdout + real.stderr
    return dry.stdout, real.stdout, folder


def test_service_install_dry_run_names_the_units(unit_install):
    dry, _, folder = unit_install
    for name in si.UNITS:
        assert f"would write: {folder / name}" in dry


def test_service_units_start_the_wheels_own_interpreter(venv_bin: Path, unit_install):
    _, real, folder = unit_install
    python = str(venv_bin / "python")
    assert {p.name for p in folder.iterdir()} == set(si.UNITS), real
    # what the wheel carries and renders is what this checkout renders for that interpreter
    assert {n: (folder / n).read_text() for n in si.UNITS} == si.render_units(python)
    (exec_start,) = parse_unit((folder / si.SERVICE).read_text())["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == python and argv[-2:] == ["-m", "convocationsd"], exec_start
    version = subprocess.run([*argv, "--version"], cwd="/", capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("convocationsd "), version


@pytest.mark.skipif(CANNOT_VERIFY is not None, reason=CANNOT_VERIFY or "")
def test_installed_units_verify(unit_install, tmp_path):
    done = verify(unit_install[2], tmp_path)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("program", ["convocationsd", "convctl", "convocations"])
def test_every_console_script_of_the_wheel_runs(venv_bin: Path, stranger, program: str):
    env, elsewhere = stranger
    done = installed(venv_bin, program, "--version", env=env, cwd=elsewhere)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.split()[-1] == convocationsd.__version__


def test_convocations_is_convctl_by_another_name(venv_bin: Path, stranger):
    env, elsewhere = stranger
    env["CONVOCATIONS_SOCKET"] = str(elsewhere / "nobody-listens.sock")
    answers = [installed(venv_bin, p, "status", "--json", env=env, cwd=elsewhere) for p in ("convctl", "convocations")]
    assert [a.returncode for a in answers] == [3, 3]  # the daemon is not running
    assert json.loads(answers[0].stdout) == json.loads(answers[1].stdout)
    assert json.loads(answers[1].stdout)["error"]["kind"] == "DaemonUnreachable"


def test_the_wheel_carries_the_launch_agent(venv_bin: Path, stranger):
    env, elsewhere = stranger
    render = (
        "import sys; from pathlib import Path; from convocationsd.cli import service_install as si; "
        "sys.stdout.buffer.write(si.render_plist(python=sys.executable, socket_path=Path('/s.sock'), home=Path('/h')))"
    )
    done = subprocess.run([str(venv_bin / "python"), "-c", render], env=env, cwd=elsewhere, capture_output=True)
    assert done.returncode == 0, done.stderr
    plist = plistlib.loads(done.stdout)
    assert plist["ProgramArguments"][0] == str(venv_bin / "python")
    assert plist["ProgramArguments"][-2:] == ["-m", "convocationsd"]
    assert os.path.basename(plist["Sockets"]["ctl"]["SockPathName"]) == "s.sock"
