"""`convctl doctor` against real setups: a healthy daemon, and each broken one the issue names."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from convocationsd.cli import doctor
from tests.conftest import base_env, free_port


def run_doctor(env: dict[str, str], *extra: str) -> tuple[int, list[dict], str]:
    done = subprocess.run(
        [sys.executable, "-m", "convocationsd.cli.main", "doctor", "--json", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def by_name(results: list[dict]) -> dict[str, dict]:
    for r in results:
        assert set(r) == {"check", "ok", "verdict", "fix"}
        assert isinstance(r["ok"], bool) and r["verdict"]
        if not r["ok"] and r["check"] not in ("callback", "account"):
            assert r["fix"], r  # every failure says what to do
    return {r["check"]: r for r in results}


def hold_port(address: str) -> tuple[subprocess.Popen, int]:
    """Another program (think of a dev server) listening on address, on a port it chose: (process, port)."""
    code = textwrap.dedent(
        f"""
        import socket, sys, time
        fam = socket.AF_INET6 if ":" in {address!r} else socket.AF_INET
        s = socket.socket(fam)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(({address!r}, 0))
        s.listen()
        print(s.getsockname()[1], flush=True)
        time.sleep(120)
        """
    )
    script = Path(tempfile.mkdtemp(prefix="cvd", dir="/tmp")) / "devserver.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    script.unlink()
    script.parent.rmdir()
    return proc, port


async def test_healthy_setup_exits_zero(daemon, fake):
    rc, results, _ = await asyncio.to_thread(run_doctor, daemon.env)
    checks = by_name(results)
    assert rc == 0, results
    assert list(checks) == ["daemon", "port", "callback", "account", "secret-backend", "files", "openrouter"]
    assert f"pid {daemon.proc.pid}" in checks["daemon"]["verdict"] and str(daemon.port) in checks["daemon"]["verdict"]
    assert "belongs to convocationsd" in checks["port"]["verdict"] and "[::1]" in checks["port"]["verdict"]
    assert "reaches this daemon on 127.0.0.1 and ::1" in checks["callback"]["verdict"]
    assert "local-encrypted (forced by CONVOCATIONS_SECRET_BACKEND)" in checks["secret-backend"]["verdict"]
    assert fake.url in checks["openrouter"]["verdict"]


async def test_human_output(daemon, fake):
    done = await asyncio.to_thread(daemon.convctl, "doctor")
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok    daemon")
    assert "All checks passed." in done.stdout


async def test_port_held_by_another_process_on_ipv6(daemon_factory, fake):
    holder, port = hold_port("::1")
    try:
        d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, RCONV_HTTP_PORT=str(port))
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
        callback = checks["callback"]
        assert not callback["ok"] and "409" in callback["verdict"] and "fallback" in callback["verdict"]
        assert f"Free port {port}" in callback["fix"]
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


async def test_no_keyring_without_session_bus(daemon, fake):
    env = {k: v for k, v in daemon.env.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "CONVOCATIONS_SECRET_BACKEND")}
    rc, results, _ = await asyncio.to_thread(run_doctor, env)
    backend = by_name(results)["secret-backend"]
    assert rc == 1 and not backend["ok"]
    assert "no usable OS keyring" in backend["verdict"] and "fall back to local-encrypted" in backend["verdict"]
    assert "CONVOCATIONS_SECRET_BACKEND=local-encrypted" in backend["fix"]


async def test_daemon_down(short_tmp, fake):
    env = base_env(short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url, RCONV_HTTP_PORT=str(free_port()))
    rc, results, _ = await asyncio.to_thread(run_doctor, env)
    checks = by_name(results)
    assert rc == 1
    assert not checks["daemon"]["ok"] and "not running" in checks["daemon"]["verdict"]
    assert "convocationsd" in checks["daemon"]["fix"]
    assert checks["port"]["ok"] and "free" in checks["port"]["verdict"]
    assert checks["openrouter"]["ok"]


async def test_openrouter_unreachable(daemon):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    rc, results, _ = await asyncio.to_thread(run_doctor, {**daemon.env, "CONVOCATIONS_OPENROUTER_URL": dead})
    check = by_name(results)["openrouter"]
    assert rc == 1 and not check["ok"] and dead in check["verdict"] and "refused" in check["verdict"].lower()


async def test_revoked_key_reported(daemon_factory, fake):
    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_ACCOUNT_CACHE_SECONDS="0.2"
    )
    key = fake.issue_key("doctor test")
    d.call("secret.set", {"key": key})
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
        found = doctor.proc_listeners(port)
    assert [(f.address, f.pid) for f in found] == [("::1", os.getpid())]


def test_secret_backend_choices(tmp_path: Path):
    def ctx(env=None, config=None, status=None):
        return doctor.Context(env or {}, tmp_path / "s", tmp_path / "config.toml", config or {}, None, status)

    usable = lambda: (True, "the OS keyring (x.Y)")  # noqa: E731
    missing = lambda: (False, "no usable OS keyring was found")  # noqa: E731
    assert doctor.check_secret_backend(ctx(), usable).ok
    assert "automatic" in doctor.check_secret_backend(ctx(), usable).verdict
    c = doctor.check_secret_backend(ctx(config={"secret_backend": "keyring"}), missing)
    assert not c.ok and "secret_backend in" in c.verdict
    c = doctor.check_secret_backend(ctx(env={"CONVOCATIONS_SECRET_BACKEND": "local-encrypted"}), missing)
    assert c.ok
    c = doctor.check_secret_backend(ctx(status={"secret": {"stored": True, "backend": "keyring"}}), missing)
    assert not c.ok and "cannot be read" in c.verdict
