"""`convctl doctor` against real setups: a healthy daemon, and each broken one the issue names."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest

from convocationsd.cli import doctor
from convocationsd.common import port_owners
from tests.conftest import base_env, convctl, dead_url, free_port, hold_port, start_daemon
from tests.helpers.gnome_keyring import locked_gnome_keyring
from tests.helpers.gnome_keyring import missing_tools as gnome_keyring_missing


def run_doctor(env: dict[str, str], *extra: str) -> tuple[int, list[dict], str]:
    done = convctl(env, "doctor", "--json", *extra)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def by_name(results: list[dict]) -> dict[str, dict]:
    for r in results:
        assert set(r) == {"check", "ok", "verdict", "fix", "note"}
        assert isinstance(r["ok"], bool) and r["verdict"]
        if not r["ok"] and r["check"] not in ("callback", "account"):
            assert r["fix"], r  # every failure says what to do
    return {r["check"]: r for r in results}


async def test_healthy_setup_exits_zero(daemon, fake):
    rc, results, _ = await asyncio.to_thread(run_doctor, daemon.env)
    checks = by_name(results)
    assert rc == 0, results
    assert list(checks) == ["daemon", "port", "callback", "account", "secret-backend", "config", "files", "openrouter"]
    assert f"pid {daemon.proc.pid}" in checks["daemon"]["verdict"] and str(daemon.port) in checks["daemon"]["verdict"]
    assert "belongs to convocationsd" in checks["port"]["verdict"] and "[::1]" in checks["port"]["verdict"]
    assert "reaches this daemon on 127.0.0.1 and ::1" in checks["callback"]["verdict"]
    assert "(forced: the daemon's, from CONVOCATIONS_SECRET_BACKEND)" in checks["secret-backend"]["verdict"]
    assert fake.url in checks["openrouter"]["verdict"]
    assert "the daemon's, from CONVOCATIONS_OPENROUTER_URL" in checks["openrouter"]["verdict"]


async def test_human_output(daemon, fake):
    done = await asyncio.to_thread(daemon.convctl, "doctor")
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok    daemon")
    assert "All checks passed." in done.stdout


async def test_port_held_by_another_process_on_ipv6(daemon_factory, fake):
    holder, port = hold_port("::1")
    try:
        d = await asyncio.to_thread(
            daemon_factory,
            CONVOCATIONS_OPENROUTER_URL=fake.url,
            RCONV_HTTP_PORT=str(port),
            args=("--allow-port-fallback",),
        )
        st = d.call("status")
        assert st["port_fallback"] is True and st["port"] != port
        rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
        checks = by_name(results)
        assert rc == 1
        port_check = checks["port"]
        assert not port_check["ok"]
        assert f"[::1]:{port} is held by python" in port_check["verdict"]
        assert f"pid {holder.pid}" in port_check["verdict"] and "devserver.py" in port_check["verdict"]
        assert "RCONV_HTTP_PORT" in port_check["fix"]
        callback = checks["callback"]  # it reaches the daemon; the note says what is known and how to find out
        assert callback["ok"] and "fallback port" in callback["verdict"] and f"{port} was busy" in callback["verdict"]
        assert (
            "on any port" in callback["note"] and "409" in callback["note"] and f"free port {port}" in callback["note"]
        )
        assert "fallback: port" in checks["daemon"]["verdict"]
    finally:
        holder.kill()
        holder.wait()


async def test_loose_file_modes(daemon, fake):
    daemon.call("secret.set", {"key": "sk-or-v1-" + "a" * 64})  # creates config.toml and secret.key
    config = daemon.config_dir / "config.toml"
    key_file = daemon.config_dir / "secret.key"
    runtime = daemon.socket.parent
    assert config.exists() and key_file.exists()
    os.chmod(config, 0o644)
    os.chmod(runtime, 0o755)
    try:
        rc, results, _ = await asyncio.to_thread(run_doctor, daemon.env)
    finally:
        os.chmod(runtime, 0o700)
    files = by_name(results)["files"]
    assert rc == 1 and not files["ok"]
    assert f"{config}: mode 0644, should be 0600" in files["verdict"]
    assert f"{runtime}: mode 0755, should be 0700" in files["verdict"]
    assert f"chmod 600 {config}" in files["fix"] and f"chmod 700 {runtime}" in files["fix"]
    assert "secret.key" not in files["verdict"]  # that one is fine


async def test_headless_encrypted_setup_is_ok_with_a_note(daemon_factory, fake):
    """No session bus, no forced backend: the daemon stores keys encrypted, which is the expected setup there."""
    d = await asyncio.to_thread(
        daemon_factory,
        CONVOCATIONS_OPENROUTER_URL=fake.url,
        CONVOCATIONS_SECRET_BACKEND="",
        DBUS_SESSION_BUS_ADDRESS="",
    )
    env = {k: v for k, v in d.env.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    rc, results, _ = await asyncio.to_thread(run_doctor, env)  # before any store: convctl looks, and says so
    backend = by_name(results)["secret-backend"]
    assert rc == 0, results
    assert (
        backend["ok"]
        and "new keys go to local-encrypted" in backend["verdict"]
        and "as convctl sees it" in backend["verdict"]
    )
    assert "Secret Service" in backend["note"]

    key = fake.issue_key()
    d.call("secret.set", {"key": key})  # the daemon finds no keyring and stores the key encrypted
    rc, results, _ = await asyncio.to_thread(run_doctor, env)
    backend = by_name(results)["secret-backend"]
    assert rc == 0, results
    assert backend["ok"] and "the daemon found no OS keyring when it stored the last key" in backend["verdict"]
    done = await asyncio.to_thread(d.convctl, "doctor")
    assert "note: To keep keys in an OS keyring" in done.stdout and "All checks passed." in done.stdout
    assert key not in json.dumps(results) + done.stdout


@pytest.mark.keyring
async def test_a_keyring_that_just_failed_is_reported(short_tmp, fake):
    """A gnome-keyring whose collection is locked: the daemon falls back and logs it; doctor says what the daemon
    did (not what a fresh probe in convctl's session would guess)."""
    if reason := gnome_keyring_missing():
        pytest.skip(reason)
    home = short_tmp / "home"
    data = home / ".local" / "share"
    env = {**base_env(short_tmp), "HOME": str(home), "XDG_DATA_HOME": str(data)}
    with locked_gnome_keyring(env) as locked:
        if not list((data / "keyrings").glob("*.keyring")):
            pytest.skip("gnome-keyring did not create a collection here")
        d = await asyncio.to_thread(
            start_daemon,
            short_tmp,
            CONVOCATIONS_OPENROUTER_URL=fake.url,
            CONVOCATIONS_SECRET_BACKEND="",
            CONVOCATIONS_KEYRING_TIMEOUT_SECONDS="20",
            HOME=str(home),
            XDG_DATA_HOME=str(data),
            DBUS_SESSION_BUS_ADDRESS=locked["DBUS_SESSION_BUS_ADDRESS"],
        )
        try:
            key = fake.issue_key()
            assert d.call("secret.set", {"key": key})["backend"] == "local-encrypted"
            assert "OS keyring unavailable" in d.log()
            rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
            backend = by_name(results)["secret-backend"]
            assert rc == 1 and not backend["ok"], backend
            assert "the OS keyring failed when the daemon stored the last key" in backend["verdict"]
            assert "Unlock the OS keyring" in backend["fix"]
            assert key not in json.dumps(results)
        finally:
            d.stop()


async def test_unknown_config_keys_fail_the_config_check(daemon, fake):
    (daemon.config_dir).mkdir(parents=True, exist_ok=True)
    config = daemon.config_dir / "config.toml"
    config.write_text('htp_port = 3001\nlog_level = "loud"\n')
    os.chmod(config, 0o600)
    rc, results, _ = await asyncio.to_thread(run_doctor, daemon.env)
    check = by_name(results)["config"]
    assert rc == 1 and not check["ok"]
    assert f"unknown key htp_port in {config} is ignored (did you mean http_port?)" in check["verdict"]
    assert "log_level in" in check["verdict"] and 'not "loud"' in check["verdict"]


async def test_daemon_down(short_tmp, fake):
    """With no daemon to ask, doctor judges convctl's own settings, and says so."""
    env = base_env(short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url, RCONV_HTTP_PORT=str(free_port()))
    rc, results, _ = await asyncio.to_thread(run_doctor, env)
    checks = by_name(results)
    assert rc == 1
    assert not checks["daemon"]["ok"] and "not running" in checks["daemon"]["verdict"]
    assert "convocationsd" in checks["daemon"]["fix"]
    assert checks["port"]["ok"] and "free" in checks["port"]["verdict"]
    assert checks["openrouter"]["ok"] and "convctl's own (no daemon runs to ask)" in checks["openrouter"]["verdict"]


async def test_credentials_in_convctls_own_openrouter_url_are_not_shown(short_tmp, fake):
    """The daemon's status strips credentials from the URL it reports; convctl's own setting must get the same."""
    with_password = fake.url.replace("http://", "http://someone:hunter2-secret@")
    env = base_env(short_tmp, CONVOCATIONS_OPENROUTER_URL=with_password, RCONV_HTTP_PORT=str(free_port()))
    _, results, _ = await asyncio.to_thread(run_doctor, env)
    assert fake.url in by_name(results)["openrouter"]["verdict"]
    assert "hunter2-secret" not in json.dumps(results)


async def test_openrouter_unreachable(daemon_factory):
    dead = dead_url()
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=dead)
    rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
    check = by_name(results)["openrouter"]
    assert rc == 1 and not check["ok"] and dead in check["verdict"] and "refused" in check["verdict"].lower()


async def test_openrouter_address_is_the_daemons_not_convctls(daemon, fake):
    """The daemon uses the fake; convctl's shell knows nothing of it: doctor checks the address the daemon uses."""
    env = {k: v for k, v in daemon.env.items() if k != "CONVOCATIONS_OPENROUTER_URL"}
    rc, results, _ = await asyncio.to_thread(run_doctor, env)
    check = by_name(results)["openrouter"]
    assert rc == 0, results
    assert check["verdict"].startswith(f"{fake.url} answers") and "openrouter.ai" not in check["verdict"]
    assert "the daemon's, from CONVOCATIONS_OPENROUTER_URL" in check["verdict"]


async def test_revoked_key_reported(daemon_factory, fake):
    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_ACCOUNT_CACHE_SECONDS="0.2"
    )
    key = fake.issue_key("doctor test")
    d.call("secret.set", {"key": key})
    # `convctl status` waits for the account: OpenRouter accepted the key once, so a 401 now means revoked.
    accepted = await asyncio.to_thread(d.convctl, "status", "--json")
    assert json.loads(accepted.stdout)["account"]["label"] == "doctor test"
    fake.revoke(key)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        account = d.call("status")["account"]
        if account and account["valid"] is False:
            break
        await asyncio.sleep(0.1)
    rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
    check = by_name(results)["account"]
    assert rc == 1 and not check["ok"] and "no longer valid" in check["verdict"]
    assert key not in json.dumps(results)


# -- pure parts ---------------------------------------------------------------------------------------------


def test_proc_parsing_finds_own_listener():
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = port_owners.proc_listeners(port)
    assert [(f.address, f.pid) for f in found] == [("::1", os.getpid())]


def test_secret_backend_choices(tmp_path: Path):
    def ctx(env=None, config=None, status=None):
        return doctor.Context(
            env or {}, tmp_path / "s", tmp_path / "config.toml", config or {}, None, None, None, status
        )

    def daemon(secret_backend=None, last_store=None, stored=None):
        setting = {
            "value": secret_backend,
            "source": "CONVOCATIONS_SECRET_BACKEND" if secret_backend else "the default",
        }
        return {
            "settings": {"secret_backend": setting},
            "last_store": last_store,
            "secret": {"stored": bool(stored), "backend": stored},
        }

    usable = lambda: (True, "the OS keyring (x.Y)")  # noqa: E731
    missing = lambda: (False, "no usable OS keyring was found")  # noqa: E731
    assert doctor.check_secret_backend(ctx(), usable).ok
    assert "automatic" in doctor.check_secret_backend(ctx(), usable).verdict
    c = doctor.check_secret_backend(ctx(status=daemon("keyring")), missing)
    assert not c.ok and "the daemon's, from CONVOCATIONS_SECRET_BACKEND" in c.verdict
    assert doctor.check_secret_backend(ctx(status=daemon("local-encrypted")), missing).ok
    c = doctor.check_secret_backend(ctx(status=daemon(stored="keyring")), missing)
    assert not c.ok and "cannot be read" in c.verdict
    c = doctor.check_secret_backend(ctx(), missing)  # headless: encrypted on purpose is fine
    assert c.ok and "new keys go to local-encrypted" in c.verdict and "Secret Service" in c.note
    at = "2026-11-30T10:00:00Z"
    went = {"at": at, "backend": "keyring", "keyring_error": None, "keyring_missing": False, "error": None}
    c = doctor.check_secret_backend(ctx(status=daemon(last_store=went, stored="keyring")), missing)  # no probe needed
    assert c.ok and "where the daemon stored the last key (2026-11-30 10:00:00 UTC)" in c.verdict
    locked = {**went, "backend": "local-encrypted", "keyring_error": "The OS keyring is locked."}
    c = doctor.check_secret_backend(ctx(status=daemon(last_store=locked)), usable)
    assert not c.ok and "The OS keyring is locked" in c.verdict and "Unlock" in c.fix
    absent = {**locked, "keyring_error": "No OS keyring is available.", "keyring_missing": True}
    c = doctor.check_secret_backend(ctx(status=daemon(last_store=absent)), usable)
    assert c.ok and "found no OS keyring" in c.verdict and c.note
    failed = {**went, "backend": None, "error": "Cannot write config.toml: No space left on device."}
    c = doctor.check_secret_backend(ctx(status=daemon(last_store=failed)), usable)
    assert not c.ok and "could not store the last key" in c.verdict
