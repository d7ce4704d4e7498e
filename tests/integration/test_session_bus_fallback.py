"""One view of the keyring: with DBUS_SESSION_BUS_ADDRESS unset but a session bus at $XDG_RUNTIME_DIR/bus (a
`systemctl --user` service, an SSH login with a user manager), the daemon's helper, convctl without a daemon,
and doctor's prediction all find the Secret Service on that bus, as the desktop integration does.

A real dbus-daemon listens at $XDG_RUNTIME_DIR/bus with a real, unlocked gnome-keyring on it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import base_env, convctl, start_daemon
from tests.helpers.gnome_keyring import gnome_keyring
from tests.helpers.gnome_keyring import missing_tools as gnome_keyring_missing

pytestmark = pytest.mark.keyring


def secret_tool_lookup(env: dict[str, str]) -> str:
    done = subprocess.run(
        ["secret-tool", "lookup", "service", "convocations", "username", "openrouter_api_key"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


@pytest.fixture
def bus_in_runtime_dir(short_tmp):
    """(env without DBUS_SESSION_BUS_ADDRESS, env with it) around a gnome-keyring at $XDG_RUNTIME_DIR/bus."""
    if reason := gnome_keyring_missing():
        pytest.skip(reason)
    if shutil.which("secret-tool") is None:
        pytest.skip("secret-tool is not installed (apt-get install libsecret-tools)")
    home = short_tmp / "home"
    env = base_env(
        short_tmp, HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), CONVOCATIONS_SECRET_BACKEND=""
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    runtime = Path(env["XDG_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700)
    with gnome_keyring(env, "test-password", listen=runtime / "bus") as with_variable:
        assert with_variable["DBUS_SESSION_BUS_ADDRESS"].startswith(f"unix:path={runtime}/bus,")
        yield env, with_variable


def test_convctl_without_a_daemon_stores_in_the_keyring_on_that_bus(bus_in_runtime_dir, fake_key):
    env, with_variable = bus_in_runtime_dir
    done = convctl(env, "doctor", "--json")
    backend = {c["check"]: c for c in json.loads(done.stdout)}["secret-backend"]
    assert "new keys go to the OS keyring" in backend["verdict"], backend

    stored = convctl(env, "secret", "set-openrouter-key", "--no-verify", "--json", input=fake_key + "\n")
    assert json.loads(stored.stdout) == {"stored": True, "backend": "keyring"}, stored.stderr
    assert secret_tool_lookup(with_variable) == fake_key


async def test_the_daemon_stores_in_the_keyring_on_that_bus(bus_in_runtime_dir, fake_key, short_tmp):
    env, with_variable = bus_in_runtime_dir
    overrides = {k: v for k, v in env.items() if k in ("HOME", "XDG_DATA_HOME", "CONVOCATIONS_SECRET_BACKEND")}
    d = await asyncio.to_thread(start_daemon, short_tmp, DBUS_SESSION_BUS_ADDRESS="", **overrides)  # "": unset
    try:
        reply = await asyncio.to_thread(d.call, "secret.set", {"key": fake_key})
        assert reply == {"stored": True, "backend": "keyring"}, d.log()
        assert "OS keyring unavailable" not in d.log()
        assert secret_tool_lookup(with_variable) == fake_key
        assert await asyncio.to_thread(d.call, "secret.get") == {"key": fake_key}
    finally:
        d.stop()


@pytest.fixture
def fake_key() -> str:
    import secrets

    return "sk-or-v1-" + secrets.token_hex(32)
