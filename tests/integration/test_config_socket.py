"""A socket named only by `socket` in config.toml: the daemon listens there, and convctl, the client library and
doctor look there too (the README's order, flag > environment > config file > default, without the daemon's
flags). A real daemon and real convctl processes, neither given CONVOCATIONS_SOCKET."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import convctl, port_chosen_by_daemon, wait_for_socket
from tests.integration.test_config_file import wait_for_log


def write_config(short_tmp: Path, text: str) -> Path:
    config = short_tmp / "cfg" / "convocations" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    os.chmod(config, 0o600)
    return config


def configured_daemon(daemon_factory, short_tmp: Path, **env: str):
    """A daemon whose socket only config.toml names; its env (and so convctl's) has no CONVOCATIONS_SOCKET."""
    sock = short_tmp / "elsewhere" / "d.sock"
    config = write_config(short_tmp, f'socket = "{sock}"\n')
    d = daemon_factory(wait=False, CONVOCATIONS_SOCKET="", **env)
    d.env.pop("CONVOCATIONS_SOCKET")
    d.socket = sock
    wait_for_socket(sock, d.proc)
    port_chosen_by_daemon(d)  # convctl's own http_port is then the daemon's (RCONV_HTTP_PORT)
    assert not (short_tmp / "run" / "convocations" / "convocationsd.sock").exists()  # not on the default
    return d, config


async def test_convctl_the_client_library_and_doctor_find_it(daemon_factory, short_tmp, fake):
    d, _ = await asyncio.to_thread(configured_daemon, daemon_factory, short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url)

    status = await asyncio.to_thread(convctl, d.env, "status")
    assert status.returncode == 1, status.stderr  # reached: no key is stored (3 would be "not running")
    assert f"socket:   {d.socket}\n" in status.stdout and f"pid {d.proc.pid}" in status.stdout

    # `secret set-openrouter-key` goes through the daemon, not around it to the files: the daemon stores it.
    key = fake.issue_key()
    stored = await asyncio.to_thread(convctl, d.env, "secret", "set-openrouter-key", input=key + "\n")
    assert stored.returncode == 0, stored.stderr
    assert "OpenRouter key stored" in d.log()

    library = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            "from convocationsd.client import Client\nwith Client() as c: print(c.call('status')['pid'])",
        ],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert library.stdout == f"{d.proc.pid}\n", library.stderr

    doctor = await asyncio.to_thread(convctl, d.env, "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(doctor.stdout)}
    assert checks["daemon"]["ok"] and f"socket {d.socket}" in checks["daemon"]["verdict"], checks["daemon"]
    assert checks["account"]["ok"] and checks["account"]["checked"], checks["account"]
    assert key not in status.stdout + stored.stdout + stored.stderr + doctor.stdout


async def test_a_socket_changed_in_config_toml_without_a_restart(daemon_factory, short_tmp, fake):
    """The reload names the key as config.toml spells it; convctl now looks where the file says, and doctor says
    that the daemon it finds on the port is not on that socket, rather than telling the person to stop it."""
    d, config = await asyncio.to_thread(configured_daemon, daemon_factory, short_tmp)
    moved = short_tmp / "moved" / "d.sock"
    config.write_text(f'socket = "{moved}"\n')
    d.proc.send_signal(signal.SIGHUP)
    log = await asyncio.to_thread(wait_for_log, d, "configuration reloaded")
    assert f"socket {moved} (socket in {config}) takes effect at restart; still {d.socket}" in log
    assert "restart to apply socket\n" in log and "socket_path" not in log

    shown = await asyncio.to_thread(convctl, {**d.env, "CONVOCATIONS_SOCKET": str(d.socket)}, "status")
    assert f"restart:  socket {moved} (socket in {config}) takes effect at restart; still {d.socket}" in shown.stdout

    doctor = await asyncio.to_thread(convctl, d.env, "doctor", "--json")
    assert doctor.returncode == 1
    checks = {c["check"]: c for c in json.loads(doctor.stdout)}
    daemon, port = checks["daemon"], checks["port"]
    assert daemon["verdict"] == (
        f"a convocationsd runs (pid {d.proc.pid}, on http://localhost:{d.port}) but not on the socket convctl uses: "
        f"it listens on {d.socket}, convctl looks for {moved}"
    )
    assert f"CONVOCATIONS_SOCKET={d.socket}" in daemon["fix"] and f"kill {d.proc.pid}" in daemon["fix"]
    assert f"is held by a convocationsd (pid {d.proc.pid}) that convctl's socket does not reach" in port["verdict"]
    assert port["fix"] == daemon["fix"] and "Stop that program" not in port["fix"]


async def test_status_reads_config_toml_without_a_toml_parser_when_it_names_no_socket(daemon_factory, fake):
    """The common case stays light: a config.toml without `socket` is read, not parsed."""
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_SOCKET="", CONVOCATIONS_OPENROUTER_URL=fake.url)
    d.call("secret.set", {"key": fake.issue_key()})  # writes config.toml (the key's reference); exit 0 below
    assert (d.config_dir / "config.toml").read_text()
    env = {k: v for k, v in d.env.items() if k != "CONVOCATIONS_SOCKET"}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-X", "importtime", "-m", "convocationsd.cli.main", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "convocationsd.client" in loaded and "tomllib" not in loaded


# -- under a service manager ----------------------------------------------------------------------------------


def test_service_install_puts_the_ipc_socket_unit_where_config_toml_says(short_tmp):
    """The unit's socket is the daemon's under systemd (it wins over config.toml), so `service install` writes
    config.toml's `socket` into it: the clients, which read config.toml, then find the daemon there. No systemd
    user manager runs for these fresh directories, so the files are written and not enabled."""
    from tests.conftest import base_env

    sock = short_tmp / "elsewhere" / "100%" / "d.sock"
    write_config(short_tmp, f'socket = "{sock}"\n')
    (short_tmp / "run").mkdir(mode=0o700)
    env = {**base_env(short_tmp), "HOME": str(short_tmp / "home"), "DBUS_SESSION_BUS_ADDRESS": ""}
    done = convctl(env, "service", "install")
    unit = (short_tmp / "cfg" / "systemd" / "user" / "convocationsd.socket").read_text()
    assert f"\nListenStream={short_tmp}/elsewhere/100%%/d.sock\n" in unit, done.stdout + done.stderr
    assert "%t/convocations" not in unit
    write_config(short_tmp, "http_port = 3001\n")  # no socket: the unit's own place again
    convctl(env, "service", "install")
    unit = (short_tmp / "cfg" / "systemd" / "user" / "convocationsd.socket").read_text()
    assert "\nListenStream=%t/convocations/convocationsd.sock\n" in unit


def test_an_activated_daemon_says_when_config_toml_names_another_socket(short_tmp):
    import pytest

    from tests.conftest import free_port
    from tests.integration.test_socket_activation import TOOL, Activation

    if TOOL is None:
        pytest.skip("systemd-socket-activate is not installed (Debian: systemd)")
    elsewhere = short_tmp / "elsewhere" / "d.sock"
    config = write_config(short_tmp, f'socket = "{elsewhere}"\n')
    # The harness points CONVOCATIONS_SOCKET elsewhere; here config.toml alone is to name the socket.
    daemon = ["env", "-u", "CONVOCATIONS_SOCKET", sys.executable, "-m", "convocationsd", "--log-level", "debug"]
    a = Activation(short_tmp, short_tmp / "c.sock", free_port(), command=daemon)
    try:
        assert a.call("status")["socket"] == str(short_tmp / "c.sock")  # the inherited one serves
        assert (
            f"WARNING convocationsd: socket {elsewhere} (socket in {config}) is not used: the service manager passed "
            f"{short_tmp / 'c.sock'}, so convctl and frontends that read config.toml look for this daemon in vain; "
            "run `convctl service install`"
        ) in a.log()
    finally:
        a.kill()
