"""`convctl doctor` against real setups: a healthy daemon, and each broken one the issue names."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from convocationsd.cli import doctor
from convocationsd.common import port_owners
from tests.conftest import (
    base_env,
    convctl,
    dead_url,
    follow_callback,
    free_port,
    hold_port,
    start_daemon,
    wait_until,
)
from tests.helpers.gnome_keyring import gnome_keyring, locked_gnome_keyring
from tests.helpers.gnome_keyring import missing_tools as gnome_keyring_missing


def run_doctor(env: dict[str, str], *extra: str) -> tuple[int, list[dict], str]:
    done = convctl(env, "doctor", "--json", *extra)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def by_name(results: list[dict]) -> dict[str, dict]:
    for r in results:
        assert set(r) == {"check", "ok", "verdict", "fix", "note", "checked"}
        assert isinstance(r["ok"], bool) and isinstance(r["checked"], bool) and r["verdict"]
        if r["checked"] and not r["ok"]:
            assert r["fix"], r  # every failure says what to do
        if not r["checked"]:
            assert not r["ok"] and r["verdict"].startswith("not checked: ") and not r["fix"]
    return {r["check"]: r for r in results}


async def test_healthy_setup_exits_zero(daemon, fake):
    rc, results, _ = await asyncio.to_thread(run_doctor, daemon.env)
    checks = by_name(results)
    assert rc == 0, results
    assert list(checks) == ["daemon", "port", "callback", "account", "secret-backend", "config", "files", "openrouter"]
    assert f"pid {daemon.proc.pid}" in checks["daemon"]["verdict"] and str(daemon.port) in checks["daemon"]["verdict"]
    assert "belongs to convocationsd" in checks["port"]["verdict"] and "[::1]" in checks["port"]["verdict"]
    assert "reaches this daemon on 127.0.0.1 and ::1" in checks["callback"]["verdict"]
    # The test's port is not 3000: the likely cause of a 409, said before anyone meets one.
    assert f"Port {daemon.port} is not 3000" in checks["callback"]["note"] and "409" in checks["callback"]["note"]
    assert f"register http://localhost:{daemon.port}" in checks["callback"]["note"]
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


def start_daemon_on_the_bus_of(keyring: dict[str, str], short_tmp, fake):
    """A daemon with the environment of ``keyring`` (a gnome-keyring on a private session bus, locked or not),
    storing where it finds best, talking to the fake."""
    return start_daemon(
        short_tmp,
        CONVOCATIONS_OPENROUTER_URL=fake.url,
        CONVOCATIONS_SECRET_BACKEND="",
        CONVOCATIONS_KEYRING_TIMEOUT_SECONDS="20",
        HOME=keyring["HOME"],
        XDG_DATA_HOME=keyring["XDG_DATA_HOME"],
        DBUS_SESSION_BUS_ADDRESS=keyring["DBUS_SESSION_BUS_ADDRESS"],
    )


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
        d = await asyncio.to_thread(start_daemon_on_the_bus_of, locked, short_tmp, fake)
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
    assert [name for name, c in checks.items() if not c["checked"]] == ["callback", "account"]
    done = await asyncio.to_thread(convctl, env, "doctor")
    assert done.returncode == 1
    assert "--    callback" in done.stdout and "--    account" in done.stdout
    assert done.stdout.rstrip().endswith("1 of 6 checks needs attention; 2 not checked (they need the daemon).")
    assert checks["port"]["ok"] and "free" in checks["port"]["verdict"]
    assert checks["openrouter"]["ok"]
    assert checks["openrouter"]["verdict"].endswith(
        "the address is convctl's own, from CONVOCATIONS_OPENROUTER_URL, as no daemon runs to ask"
    )


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


@pytest.mark.keyring
async def test_a_stored_key_the_locked_keyring_will_not_give_is_a_failure(short_tmp, fake):
    """The key went into the OS keyring; the keyring is locked now (the desktop session nobody unlocked): nothing
    can use the key, so the account check fails with the fix, and `convctl status` exits 1."""
    if reason := gnome_keyring_missing():
        pytest.skip(reason)
    home = short_tmp / "home"
    data = home / ".local" / "share"
    env = {**base_env(short_tmp), "HOME": str(home), "XDG_DATA_HOME": str(data), "CONVOCATIONS_SECRET_BACKEND": ""}
    key = fake.issue_key()
    with gnome_keyring(env, "test-password") as unlocked:
        done = convctl(unlocked, "secret", "set-openrouter-key", "--no-verify", input=key + "\n")
        assert "key stored in keyring" in done.stdout, done.stderr
    with gnome_keyring(env, None) as locked:
        d = await asyncio.to_thread(start_daemon_on_the_bus_of, locked, short_tmp, fake)
        try:
            status = await asyncio.to_thread(d.convctl, "status")
            assert status.returncode == 1 and "could not be read" in status.stdout, status.stdout
            rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
            account = by_name(results)["account"]
            assert rc == 1 and not account["ok"] and account["checked"], account
            assert "a key is stored in keyring, but the stored key could not be read" in account["verdict"]
            assert "locked" in account["verdict"]
            assert "Unlock the OS keyring" in account["fix"] and f"`kill {d.proc.pid}`" in account["fix"]
            human = await asyncio.to_thread(d.convctl, "doctor")
            assert "FAIL  account" in human.stdout and "All checks passed" not in human.stdout
            assert key not in json.dumps(results) + human.stdout + d.log()
        finally:
            d.stop()


async def test_openrouters_409_on_the_last_login_fails_the_callback_check(daemon, fake):
    fake.config.exchange_status = 409  # OpenRouter's "Failed to create or update app", at the exchange
    started = daemon.call("oauth.start")
    await follow_callback(await fake.approve(started["auth_url"]))
    assert daemon.call("status")["flow"]["error"]["code"] == "app_conflict"
    rc, results, _ = await asyncio.to_thread(run_doctor, daemon.env)
    callback = by_name(results)["callback"]
    assert rc == 1 and not callback["ok"], callback
    assert "OpenRouter refused the last login with HTTP 409" in callback["verdict"]
    assert f"port {daemon.port} is not the usual 3000" in callback["verdict"]
    assert "Use port 3000" in callback["fix"] and f"`kill {daemon.proc.pid}`" in callback["fix"]


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


async def test_config_that_the_running_daemon_does_not_use_yet(daemon_factory, fake, short_tmp):
    """config.toml changed: a setting a reload applies says to reload (with the daemon's pid); http_port, which
    a reload reads but cannot apply, says to restart."""
    first, second = free_port(), free_port()
    config = write_config(short_tmp / "cfg" / "convocations", f"http_port = {first}\n")
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, RCONV_HTTP_PORT="")
    assert d.call("status")["settings"]["http_port"] == {"value": first, "source": f"http_port in {config}"}
    config.write_text(f"http_port = {first}\nflow_timeout_seconds = 900\n")
    rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
    check = by_name(results)["config"]
    assert rc == 1 and not check["ok"], check
    assert check["verdict"] == (
        f"flow_timeout_seconds 900 (flow_timeout_seconds in {config}) takes effect once the daemon reloads; "
        "the running daemon still uses 600"
    )
    assert check["fix"] == f"Reload convocationsd (`kill -HUP {d.proc.pid}`) to apply flow_timeout_seconds."

    config.write_text(f"http_port = {second}\nflow_timeout_seconds = 900\n")
    d.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(wait_until, lambda: d.call("status")["restart_needed"], "the reload")
    rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
    check = by_name(results)["config"]
    assert rc == 1 and check["verdict"] == (  # the reload applied flow_timeout_seconds
        f"http_port {second} (http_port in {config}) takes effect at restart; the running daemon still uses {first}"
    )
    assert check["fix"] == (
        f"Restart convocationsd (`kill {d.proc.pid}`, then start `convocationsd` again) to apply http_port "
        "(a reload cannot apply http_port)."
    )


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


def test_no_keyring_is_said_once(monkeypatch):
    """keyring's stand-in for "nothing found": doctor's line says so once, in the daemon's words."""
    import keyring
    from keyring.backends import fail

    from convocationsd.store.keyring_backend import probe_keyring

    monkeypatch.setattr(keyring.core, "init_backend", lambda *a, **kw: fail.Keyring())
    usable, description = probe_keyring()
    assert not usable and description.startswith("no OS keyring is available"), description
    assert description.lower().count("keyring") == 1, description


def test_fixes_name_the_command_for_the_daemon_the_person_runs(tmp_path: Path):
    def ctx(status):
        return doctor.Context({}, tmp_path / "s", tmp_path / "config.toml", {}, None, status=status)

    under_systemd = {"pid": 4242, "service": {"manager": "systemd", "unit": "convocationsd.service"}}
    assert (
        doctor.command_to(ctx(under_systemd), "restart")
        == "restart convocationsd (`systemctl --user restart convocationsd.service`)"
    )
    assert (
        doctor.command_to(ctx(under_systemd), "reload")
        == "reload convocationsd (`systemctl --user reload convocationsd.service`)"
    )
    under_launchd = {"pid": 4242, "service": {"manager": "launchd", "unit": "io.convocations.convocationsd"}}
    uid = os.getuid()
    assert f"`launchctl kickstart -k gui/{uid}/io.convocations.convocationsd`" in doctor.command_to(
        ctx(under_launchd), "restart"
    )
    assert f"`launchctl kill SIGHUP gui/{uid}/io.convocations.convocationsd`" in doctor.command_to(
        ctx(under_launchd), "reload"
    )
    by_hand = {"pid": 4242, "service": None}
    assert (
        doctor.command_to(ctx(by_hand), "restart")
        == "restart convocationsd (`kill 4242`, then start `convocationsd` again)"
    )
    assert doctor.command_to(ctx(by_hand), "reload") == "reload convocationsd (`kill -HUP 4242`)"
    assert doctor.command_to(ctx(None), "restart") == doctor.command_to(ctx(None), "reload") == "start convocationsd"


def test_http_port_drift_under_a_service_manager_sends_to_service_install(tmp_path: Path):
    config = tmp_path / "config.toml"
    status = {
        "pid": 4242,
        "service": {"manager": "systemd", "unit": "convocationsd.service"},
        "settings": {"http_port": {"value": 3000, "source": "the default"}},
    }
    c = doctor.check_config(doctor.Context({}, tmp_path / "s", config, {"http_port": 3201}, None, status=status))
    assert not c.ok
    assert c.verdict == (
        f"http_port 3201 (http_port in {config}) takes effect at restart; the running daemon still uses 3000"
    )
    assert "`systemctl --user restart convocationsd.service`" in c.fix and "`convctl service install`" in c.fix


def test_a_setting_removed_from_config_toml_returns_to_its_default(tmp_path: Path):
    """The daemon took http_port from config.toml; the key is gone since: the default applies at restart."""
    config = tmp_path / "config.toml"
    status = {
        "pid": 4242,
        "service": None,
        "settings": {"http_port": {"value": 3201, "source": f"http_port in {config}"}},
    }
    c = doctor.check_config(doctor.Context({}, tmp_path / "s", config, {}, None, status=status))
    assert c.verdict == "http_port 3000 (the default) takes effect at restart; the running daemon still uses 3201"


def test_a_busy_port_says_how_to_restart_once(tmp_path: Path):
    holder, port = hold_port("127.0.0.1")
    try:
        status = {"pid": 4242, "port": port + 1, "service": None}
        c = doctor.check_port(
            doctor.Context({}, tmp_path / "s", tmp_path / "config.toml", {}, None, status=status), port
        )
    finally:
        holder.kill()
        holder.wait()
    assert not c.ok and f"pid {holder.pid}" in c.verdict
    assert c.fix.count("`kill 4242`") == 1 and c.fix.endswith(
        "then restart convocationsd (`kill 4242`, then start `convocationsd` again)."
    ), c.fix


def test_convctls_own_setting_is_named_without_parentheses(tmp_path: Path):
    """Checks put the source in parentheses of their own: "https://openrouter.ai (convctl's own, ...)"."""
    for status in (None, {"pid": 4242}):
        _, source = doctor.setting(
            doctor.Context({}, None, tmp_path / "config.toml", {}, None, status=status), "http_port"
        )
        assert "(" not in source and source.startswith("convctl's own, from the default, as "), source


def test_summary_counts_what_was_not_checked_apart():
    ok, bad, skipped = doctor.Check("a", True, "fine"), doctor.Check("b", False, "bad", "fix"), doctor.not_checked("c")
    assert doctor.summary([ok, ok]) == "All checks passed."
    assert doctor.summary([ok, skipped]) == "All checks that ran passed; 1 not checked (they need the daemon)."
    assert doctor.summary([ok, bad, skipped]) == "1 of 2 checks needs attention; 1 not checked (they need the daemon)."
    assert doctor.summary([bad, bad]) == "2 of 2 checks need attention."


def test_an_unknown_key_does_not_hide_a_change_the_daemon_has_not_applied(tmp_path: Path):
    config = tmp_path / "config.toml"
    status = {"pid": 4242, "service": None, "settings": {"http_port": {"value": 3000, "source": "the default"}}}
    ctx = doctor.Context({}, tmp_path / "s", config, {"http_port": 3201, "htp_port": 1}, None, status=status)
    c = doctor.check_config(ctx)
    assert not c.ok
    assert c.verdict == (
        f"unknown key htp_port in {config} is ignored (did you mean http_port?); "
        f"http_port 3201 (http_port in {config}) takes effect at restart; the running daemon still uses 3000"
    )
    assert c.fix.startswith(f"Edit {config}") and "to apply http_port (a reload cannot apply http_port)" in c.fix


def test_a_setting_is_named_as_config_toml_spells_it(tmp_path: Path):
    config = tmp_path / "config.toml"
    status = {"pid": 4242, "service": None, "settings": {"socket_path": {"value": "/a.sock", "source": "the default"}}}
    c = doctor.check_config(doctor.Context({}, tmp_path / "s", config, {"socket": "/b.sock"}, None, status=status))
    assert c.verdict == (
        f"socket /b.sock (socket in {config}) takes effect at restart; the running daemon still uses /a.sock"
    )
    assert "to apply socket (a reload cannot apply socket)" in c.fix and "socket_path" not in c.verdict + c.fix


# -- a key not checked yet ------------------------------------------------------------------------------------


def daemon_with_a_stored_key(short_tmp: Path, fake, key: str):
    """A daemon started after the key was stored (by convctl, on the files): it has not asked OpenRouter yet."""
    env = base_env(short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url)
    stored = convctl(env, "secret", "set-openrouter-key", "--no-verify", input=key + "\n")
    assert stored.returncode == 0, stored.stderr
    return start_daemon(short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url)


async def test_a_key_revoked_before_the_daemon_started_fails_at_once(short_tmp, fake):
    """Right after the start nothing has asked OpenRouter about the key: doctor waits for the answer, as `convctl
    status` does (OpenRouter takes 2 s here), so a revoked key is a failure, never "All checks passed"."""
    key = fake.issue_key()
    fake.revoke(key)
    fake.config.key_info_delay = 2.0
    d = await asyncio.to_thread(daemon_with_a_stored_key, short_tmp, fake, key)
    try:
        done = await asyncio.to_thread(d.convctl, "doctor")
        assert done.returncode == 1, done.stdout
        assert "FAIL  account" in done.stdout and "not accepted by OpenRouter" in done.stdout
        assert "All checks" not in done.stdout
        assert key not in done.stdout + d.log()
    finally:
        d.stop()


async def test_a_key_openrouter_has_not_answered_about_is_not_checked(short_tmp, fake):
    fake.config.key_info_delay = 60.0  # longer than doctor waits
    d = await asyncio.to_thread(daemon_with_a_stored_key, short_tmp, fake, fake.issue_key())
    try:
        rc, results, _ = await asyncio.to_thread(run_doctor, d.env)
        account = by_name(results)["account"]
        assert rc == 0 and not account["checked"] and not account["ok"], account  # pending fails nothing either
        assert account["verdict"] == (
            "not checked: a key is stored in local-encrypted, and OpenRouter has not answered about it yet"
        )
        human = await asyncio.to_thread(d.convctl, "doctor")
        assert human.stdout.rstrip().endswith("All checks that ran passed; 1 not checked (each line says why).")
        assert "All checks passed" not in human.stdout
    finally:
        d.stop()


# -- the socket's directory ----------------------------------------------------------------------------------


def test_no_chmod_for_a_shared_directory_the_socket_is_in(short_tmp: Path):
    """A socket put straight into a sticky directory (/tmp, say, which is root's own when root runs doctor): safe,
    and that directory is never to be closed; a private subfolder is what to suggest."""
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = {"HOME": str(short_tmp / "home")}
    c = doctor.check_files(doctor.Context(env, shared / "d.sock", short_tmp / "cfg" / "config.toml", {}, None))
    assert c.ok and "chmod 700" not in c.fix + c.note, c
    folder = shared / f"convocations-{os.getuid()}"
    assert f"Do not chmod {shared}; instead run `mkdir -m 700 {folder}`" in c.note
    assert f"to {folder}/convocationsd.sock" in c.note


def test_only_a_directory_made_for_the_socket_may_be_closed(short_tmp: Path):
    home = short_tmp / "home"
    (home / "sockets").mkdir(parents=True)
    env = {"HOME": str(home)}
    for shared in (Path("/"), Path("/tmp"), Path("/var/tmp"), Path("/run"), home, short_tmp):
        assert not doctor.made_for_socket(shared, env), shared
    assert doctor.made_for_socket(home / "sockets", env)
    assert not doctor.made_for_socket(home / "missing", env)
