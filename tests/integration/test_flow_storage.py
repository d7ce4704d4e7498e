"""The whole login ends with the key where the contract says: the OS keyring when one works, else
AES-GCM ciphertext in config.toml; never plaintext anywhere."""

from __future__ import annotations

import asyncio
import os
import tomllib

import pytest

from tests.conftest import assert_no_secret, follow_callback, wait_until
from tests.secretstore_contract import clean_secret_service

secret_service = pytest.fixture(clean_secret_service)


async def _link(d, fake) -> str:
    reply = d.call("oauth.start")
    _, _, html = await follow_callback(await fake.approve(reply["auth_url"]))
    assert "OpenRouter account linked" in html
    return fake.issued_keys[-1]


async def test_flow_stores_key_in_real_keyring(daemon_factory, fake, secret_service):
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_SECRET_BACKEND="")
    key = await _link(d, fake)
    assert d.call("secret.status") == {"stored": True, "backend": "keyring"}
    assert d.call("secret.get") == {"key": key}
    assert secret_service.get_password("convocations", "openrouter_api_key") == key
    ref = tomllib.loads((d.config_dir / "config.toml").read_text())["openrouter_api_key"]
    assert ref == {"backend": "keyring", "service": "convocations", "username": "openrouter_api_key"}
    d.convctl("secret", "status")
    assert_no_secret(key, d.all_output())


async def test_flow_without_session_bus_falls_back_to_ciphertext(daemon_factory, fake):
    d = await asyncio.to_thread(
        daemon_factory,
        CONVOCATIONS_OPENROUTER_URL=fake.url,
        CONVOCATIONS_SECRET_BACKEND="",
        DBUS_SESSION_BUS_ADDRESS="",
    )
    key = await _link(d, fake)
    assert d.call("secret.get") == {"key": key}
    ref = tomllib.loads((d.config_dir / "config.toml").read_text())["openrouter_api_key"]
    assert ref["backend"] == "local-encrypted" and set(ref) == {"backend", "nonce", "ciphertext"}
    assert os.stat(d.config_dir / "secret.key").st_mode & 0o777 == 0o600
    assert os.stat(d.config_dir / "config.toml").st_mode & 0o777 == 0o600
    assert "keyring" in d.log()  # the fallback is explained in the log
    assert_no_secret(key, d.all_output())


async def test_secret_commands_through_daemon_and_directly(daemon_factory, fake):
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url)
    sub = await d.aclient()
    await sub.call("subscribe", {"events": ["openrouter-key-changed"]})
    key = fake.issue_key()  # one OpenRouter accepts: convctl checks it first
    done = await asyncio.to_thread(d.convctl, "secret", "set-openrouter-key", input=key + "\n")
    assert done.returncode == 0 and "local-encrypted" in done.stdout
    ev = await asyncio.wait_for(anext(sub.events()), 5)
    assert ev["data"] == {"stored": True, "backend": "local-encrypted"}
    assert d.call("secret.get") == {"key": key}
    assert d.convctl("secret", "status", "--json").stdout.strip() == '{"stored": true, "backend": "local-encrypted"}'
    await sub.close()

    d.stop()  # now the same commands work on the files directly
    assert d.convctl("status").returncode == 3
    st = d.convctl("secret", "status")
    assert st.returncode == 0 and "local-encrypted" in st.stdout
    cleared = d.convctl("secret", "clear-openrouter-key")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert "openrouter_api_key" not in (d.config_dir / "config.toml").read_text()
    bad = d.convctl("secret", "set-openrouter-key", input="not a key\n")
    assert bad.returncode == 2 and "does not look like" in bad.stderr
    empty = d.convctl("secret", "set-openrouter-key", input="\n")
    assert empty.returncode == 2 and "No key" in empty.stderr
    assert_no_secret(key, d.all_output())


async def test_convctl_status_and_events_json(daemon):
    st = daemon.convctl("status")
    assert st.returncode == 1 and f"localhost:{daemon.port}" in st.stdout and "not linked" in st.stdout  # no key
    proc = daemon.convctl_async("events", "--json")
    await asyncio.to_thread(wait_until, lambda: daemon.call("status")["subscribers"] == 1, "convctl to subscribe")
    daemon.call("oauth.start")
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
    proc.terminate()
    proc.wait(5)
    assert '"event": "openrouter-auth-started"' in line
