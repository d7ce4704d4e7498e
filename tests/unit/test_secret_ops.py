"""convctl's secret commands: the files are used directly only when no daemon can be reached, and then
with the daemon's own settings; its own key check (urllib, no daemon to ask) reads OpenRouter's answer by
the daemon's rules (core/keycheck), against a real server answering as told."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from convocationsd.cli import secret_ops
from convocationsd.client import Client
from convocationsd.core import keycheck
from convocationsd.core.errors import DaemonUnreachable, KeyNotAccepted, NoReply, RemoteError, UsageError
from tests.helpers.answering_server import AnsweringServer
from tests.helpers.openrouter_examples import KEY_SDK_SPEC

KEY = "sk-or-v1-" + "cd" * 32


@pytest.fixture
def env(short_tmp, monkeypatch):
    for name in ("CONVOCATIONS_CONFIG", "CONVOCATIONS_SECRET_BACKEND", "CONVOCATIONS_KEYRING_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(short_tmp / "cfg"))
    monkeypatch.setenv("CONVOCATIONS_SOCKET", str(short_tmp / "d.sock"))
    return short_tmp


def stand_in_daemon(path, answer: bytes | None) -> threading.Thread:
    """Accepts one connection, reads one request, then sends ``answer`` (None: closes without one)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.makefile("rb").readline()
            if answer is not None:
                conn.sendall(answer)
                conn.recv(1)  # until the client goes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def no_files_written(tmp) -> bool:
    return not (tmp / "cfg").exists()


def test_no_daemon_uses_the_files(env, monkeypatch):
    monkeypatch.setenv("CONVOCATIONS_SECRET_BACKEND", "local-encrypted")
    assert secret_ops.set_key(None, KEY, verify=False) == {"stored": True, "backend": "local-encrypted"}
    assert secret_ops.status(None) == {"stored": True, "backend": "local-encrypted"}
    assert secret_ops.clear(None) == {"cleared": True}


def test_a_disconnect_mid_call_is_not_a_reason_to_write_the_files(env):
    thread = stand_in_daemon(env / "d.sock", None)
    with pytest.raises(DaemonUnreachable):
        secret_ops.set_key(None, KEY)
    thread.join(5)
    assert no_files_written(env)  # the daemon may have been writing: no second writer


def test_an_error_answer_propagates(env):
    thread = stand_in_daemon(env / "d.sock", b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"Locked."}}\n')
    with pytest.raises(RemoteError, match="Locked"):
        secret_ops.clear(None)
    thread.join(5)
    assert no_files_written(env)


def test_no_reply_propagates(env, monkeypatch):
    class QuickClient(Client):
        def __init__(self, path, *, timeout):
            super().__init__(path, timeout=0.3)

    monkeypatch.setattr(secret_ops, "Client", QuickClient)
    thread = stand_in_daemon(env / "d.sock", b"")  # connected, never answers
    with pytest.raises(NoReply):
        secret_ops.set_key(None, KEY)
    thread.join(5)
    assert no_files_written(env)


def test_direct_store_uses_the_daemons_settings(env, monkeypatch):
    config = env / "cfg" / "convocations" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('secret_backend = "local-encrypted"\nkeyring_timeout_seconds = 7\n')
    seen = {}

    def open_store(config_path, *, forced_backend=None, keyring_timeout=120.0):
        seen.update(config_path=config_path, forced_backend=forced_backend, keyring_timeout=keyring_timeout)

    monkeypatch.setattr("convocationsd.store.configured.open_store", open_store)
    secret_ops._direct_store()
    assert seen == {"config_path": config, "forced_backend": "local-encrypted", "keyring_timeout": 7.0}
    monkeypatch.setenv("CONVOCATIONS_SECRET_BACKEND", "keyring")
    monkeypatch.setenv("CONVOCATIONS_KEYRING_TIMEOUT_SECONDS", "3")
    secret_ops._direct_store()
    assert seen["forced_backend"] == "keyring" and seen["keyring_timeout"] == 3.0


def test_without_a_daemon_the_key_rules_still_hold(env, monkeypatch):
    """What secret.set refuses, convctl refuses on the files too: nothing is written."""
    monkeypatch.setenv("CONVOCATIONS_SECRET_BACKEND", "local-encrypted")
    with pytest.raises(UsageError, match="does not look like an OpenRouter API key"):
        secret_ops.set_key(None, "sk-proj-0123", verify=False)
    assert no_files_written(env)
    assert secret_ops.set_key(None, f"  {KEY}\n", verify=False)["stored"] is True
    assert secret_ops.get(None) == KEY  # trimmed, as the daemon stores it


# -- convctl's own key check ------------------------------------------------------------------------------


def test_the_key_check_asks_the_key_endpoint_with_the_key():
    with AnsweringServer(200, json.dumps(KEY_SDK_SPEC).encode()) as server:
        assert secret_ops.check_with_openrouter(server.url + "/", KEY) is None
    assert server.seen == [("GET", keycheck.KEY_INFO_PATH, f"Bearer {KEY}")]


def test_a_rejected_key_is_key_not_accepted():
    rejected = AnsweringServer(keycheck.REJECTED, b'{"error": {"code": 401, "message": "User not found."}}')
    with rejected as server, pytest.raises(KeyNotAccepted):
        secret_ops.check_with_openrouter(server.url, KEY)


@pytest.mark.parametrize(
    ("status", "body", "why"),
    [
        (200, b"<html>a captive portal</html>", "answered HTTP 200 without the key's information"),
        (200, b'{"data": null}', "answered HTTP 200 without the key's information"),
        (200, b'{"data": ' + b"[" * 100_000, "answered HTTP 200 without the key's information"),
        (302, b"", "answered HTTP 302"),
        (403, json.dumps(KEY_SDK_SPEC).encode(), "answered HTTP 403"),
        (502, b"Bad gateway", "answered HTTP 502"),
    ],
)
def test_an_answer_without_the_keys_information_leaves_it_unchecked(status, body, why):
    """As the daemon reads it (keycheck.key_info): only a 200 with the key's information is OpenRouter accepting
    the key; a page that merely answers 200 is not."""
    assert keycheck.key_info(status, body) is None
    with AnsweringServer(status, body) as server:
        assert secret_ops.check_with_openrouter(server.url, KEY) == f"OpenRouter at {server.url} {why}"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"garbage\r\n\r\n", "BadStatusLine"),
        (b"", "RemoteDisconnected"),
    ],
)
def test_a_garbled_answer_is_a_note_not_a_crash(raw, why):
    with AnsweringServer(raw=raw) as server:
        assert (
            secret_ops.check_with_openrouter(server.url, KEY) == f"Could not reach OpenRouter at {server.url} ({why})"
        )
