"""Storing the key when things go wrong: descriptors past 1023, a store that fails after OpenRouter issued a
key, a secret-store helper that fails mid-call or is sent an operation it does not know, and a key
reference in config.toml that names someone else's keyring item.

A key OpenRouter issued is never lost and never written in plain text; a failed call never poisons the
next one; only the project's own keyring item is ever read, written or deleted.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from convocationsd.client import Client
from convocationsd.common.interpreter import module_command
from convocationsd.core.errors import ConvError
from convocationsd.store import helper as helper_module
from convocationsd.store.configured import open_store
from convocationsd.store.helper import HelperStore
from convocationsd.store.secrets import LOCAL_ENCRYPTED
from tests.adversarial.harness import assert_healthy, next_event, open_fds, subscriber
from tests.adversarial.test_bad_input import _connect_unix, _raise_nofile
from tests.conftest import assert_no_secret, base_env, wait_until
from tests.helpers.gnome_keyring import gnome_keyring
from tests.helpers.gnome_keyring import missing_tools as gnome_keyring_missing
from tests.secretstore_contract import new_key


def _helper(config: Path) -> HelperStore:
    return HelperStore(config, forced_backend=LOCAL_ENCRYPTED)


# -- the secret-store helper -------------------------------------------------------------------------


def test_helper_refuses_an_operation_it_does_not_know(short_tmp):
    """The secret-store helper is sent an operation it has no name for ("delete", a typo, a newer
    daemon's): it answers with an error and the stored key stays, rather than taking it for ``clear``.

    Defence: store/helper._serve names every operation; anything else is an error."""
    config = short_tmp / "conf" / "config.toml"
    key = new_key()
    open_store(config, forced_backend=LOCAL_ENCRYPTED).set(key)
    child = subprocess.Popen(
        [*module_command(sys.executable, "convocationsd.store.helper"), str(config), LOCAL_ENCRYPTED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        for op in ("delete", "Clear", "", None, 1):
            request = {"op": op, "key": None, "keyring_timeout": 5, "log_level": 20}
            child.stdin.write(json.dumps(request).encode() + b"\n")
            child.stdin.flush()
            reply = json.loads(child.stdout.readline())
            assert "result" not in reply and reply["error"]["message"], (op, reply)
            assert key not in json.dumps(reply)
    finally:
        child.stdin.close()
        child.wait(10)
    assert open_store(config).get() == key


def test_a_helper_call_that_fails_is_not_answered_by_the_next_one(short_tmp, monkeypatch):
    """A call to the secret-store helper fails on the daemon's side after the request went out (here the
    wait for its answer raises, as ``select()`` did past descriptor 1023): the next calls get their own
    answers, not the one left in the pipe.

    Defence: store/helper.HelperStore._exchange ends a child that did not answer, in a ``finally``."""
    store = _helper(short_tmp / "conf" / "config.toml")
    key = new_key()
    store.set(key)
    real = helper_module._line_within

    def fails_once(stream, timeout):
        monkeypatch.setattr(helper_module, "_line_within", real)
        raise ValueError("filedescriptor out of range in select()")

    monkeypatch.setattr(helper_module, "_line_within", fails_once)
    with pytest.raises(ValueError):
        store.get()  # the child answers with the key; nobody reads it
    try:
        # Compared, not shown: a wrong answer here would be the key.
        if store.clear() is not True or store.get() is not None:
            pytest.fail("a call was answered with the answer to an earlier one")
    finally:
        store.close()


# -- descriptors past 1023 ------------------------------------------------------------------------------

DIGEST = "import hashlib, os; print(hashlib.sha256(os.environ['OPENROUTER_API_KEY'].encode()).hexdigest())"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _paste_login(d, fake_t) -> tuple[dict, str]:
    """A whole login in paste mode; (the daemon's answer, the key OpenRouter issued)."""
    reply = d.call("oauth.start", {"paste": True, "restart": True})
    code = fake_t.run(fake_t.fake.approve_headless(reply["auth_url"]))
    done = d.call("oauth.exchange", {"code": code})
    return done, fake_t.fake.issued_keys[-1]


def test_a_daemon_past_1024_descriptors_links_and_hands_out_the_key(daemon_factory, fake_t):
    """1,100 idle socket clients (another user's flood, or many of the person's own) push the daemon's
    descriptors past 1023, under systemd's default soft limit: a login still stores its key, ``convctl
    exec`` reads it back, and a client whose own socket is past 1023 still gets answers.

    Defence: no ``select.select()`` anywhere: store/helper._line_within and client.Client._read wait with a
    selector and the socket's own timeout."""
    _raise_nofile(4096)
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1500:
        pytest.skip("this user's hard limit of open files is too low to hold 1,100 connections")
    d = daemon_factory(nofile=1024, CONVOCATIONS_OPENROUTER_URL=fake_t.url)
    held = []
    try:
        for _ in range(1100):
            held.append(_connect_unix(d.socket))
        wait_until(lambda: open_fds(d.proc.pid) > 1100, "the daemon to accept the 1,100 connections")
        with Client(d.socket, timeout=10) as late:  # this process's descriptors are past 1023 too
            assert late._sock is not None and late._sock.fileno() > 1023
            assert late.call("status")["pid"] == d.proc.pid
        done, key = _paste_login(d, fake_t)
        assert done["success"] is True, done
        ran = d.convctl("exec", "--", sys.executable, "-c", DIGEST)
        assert (ran.returncode, ran.stdout.strip()) == (0, _digest(key)), ran.stderr
    finally:
        for s in held:
            s.close()
    assert_no_secret(key, d.log())
    assert_healthy(d)


# -- a store that fails after OpenRouter issued the key --------------------------------------------------


def test_a_key_that_could_not_be_stored_is_held_in_memory_until_it_is(daemon_factory, fake_t):
    """Storing the key of a login fails (secret.key is readable by others, so it is refused): the login ends
    ``storage_failed`` and says the key is held in memory, as do its event, ``status`` and ``convctl
    status``; ``convctl exec`` still gets that key; once the file is fixed, ``convctl secret retry-store``
    stores it, and a second held key is stored by the next read (``convctl exec``). The key is never written
    anywhere in plain text.

    Defence: controller._keep_key keeps a key it could not store (``unsaved``); retry_store and secret_get
    store it."""
    d = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake_t.url)
    master = d.config_dir / "secret.key"
    master.parent.mkdir(parents=True, exist_ok=True)
    master.write_bytes(os.urandom(32))
    master.chmod(0o644)
    sub = subscriber(d, ["openrouter-auth-complete"])
    done, key = _paste_login(d, fake_t)
    assert done["success"] is False and done["unsaved_key"] is True, done
    assert done["error"]["code"] == "storage_failed" and "retry-store" in done["error"]["hint"], done
    assert "in memory" in done["error"]["hint"] and "chmod 600" in done["error"]["hint"]
    assert next_event(sub, "openrouter-auth-complete")["data"]["unsaved_key"] is True
    sub.close()
    unsaved = d.call("status")["unsaved_key"]
    assert unsaved["session_id"] == done["session_id"] and "other users" in unsaved["reason"], unsaved
    shown = d.convctl("status")
    assert "UNSAVED" in shown.stdout and "convctl secret retry-store" in shown.stdout, shown.stdout
    ran = d.convctl("exec", "--", sys.executable, "-c", DIGEST)  # the store still fails: the held key is used
    assert (ran.returncode, ran.stdout.strip()) == (0, _digest(key)), ran.stderr
    assert d.call("status")["unsaved_key"] is not None

    master.chmod(0o600)
    retried = d.convctl("secret", "retry-store")
    assert (retried.returncode, retried.stdout) == (0, "key stored in local-encrypted\n"), retried.stderr
    assert d.call("status")["unsaved_key"] is None and d.call("secret.status")["stored"] is True
    if d.call("secret.get")["key"] != key:
        pytest.fail("the stored key is not the one OpenRouter issued")
    again = d.convctl("secret", "retry-store")
    assert again.returncode != 0 and "No key is waiting" in again.stderr

    master.chmod(0o640)  # broken again, for a second login
    done, second = _paste_login(d, fake_t)
    assert done["unsaved_key"] is True
    master.chmod(0o600)
    ran = d.convctl("exec", "--", sys.executable, "-c", DIGEST)
    assert (ran.returncode, ran.stdout.strip()) == (0, _digest(second)), ran.stderr
    assert d.call("status")["unsaved_key"] is None
    if d.call("secret.get")["key"] != second:
        pytest.fail("reading the key did not store the one held in memory")
    for secret in (key, second):
        assert_no_secret(secret, d.log(), *d.extra_outputs, *_files(d.config_dir))


def test_a_second_key_that_cannot_be_stored_replaces_the_first_and_says_so(daemon_factory, fake_t):
    """Two logins in a row whose keys cannot be stored: the daemon holds the newest key (the login the person
    wants), and says that it dropped the first one, which was never stored and still works at OpenRouter:
    in the log (without the key), in the second login's hint and event, in ``status`` and in ``convctl status``.

    Defence: controller._keep_key names the held key it replaces (``unsaved_key.replaced``)."""
    d = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake_t.url)
    master = d.config_dir / "secret.key"
    master.parent.mkdir(parents=True, exist_ok=True)
    master.write_bytes(os.urandom(32))
    master.chmod(0o644)
    first, k1 = _paste_login(d, fake_t)
    assert first["unsaved_key"] is True and "replaces" not in first["error"]["hint"], first
    sub = subscriber(d, ["openrouter-auth-complete"])
    second, k2 = _paste_login(d, fake_t)
    event = next_event(sub, "openrouter-auth-complete")["data"]
    sub.close()
    for said in (second["error"]["hint"], event["error"]["hint"]):
        assert f"replaces the one of login {first['session_id']}" in said and "https://openrouter.ai/keys" in said
    unsaved = d.call("status")["unsaved_key"]
    assert (unsaved["session_id"], unsaved["replaced"]) == (second["session_id"], [first["session_id"]]), unsaved
    assert f"replaces the one of login {first['session_id']} held in memory, which was never stored" in d.log()
    shown = d.convctl("status")
    assert f"It replaced the key of login {first['session_id']}, held in memory and never stored" in shown.stdout
    ran = d.convctl("exec", "--", sys.executable, "-c", DIGEST)
    assert (ran.returncode, ran.stdout.strip()) == (0, _digest(k2)), ran.stderr
    for secret in (k1, k2):
        assert_no_secret(
            secret, d.log(), shown.stdout, json.dumps([first, second, event, unsaved]), *_files(d.config_dir)
        )


def _files(directory: Path) -> list[str]:
    return [p.read_bytes().decode("latin-1") for p in directory.rglob("*") if p.is_file()]


def test_convctl_waits_for_a_pasted_code_on_a_descriptor_past_1023():
    """``convctl oauth start --paste --timeout`` waits for the pasted line on stdin; a stdin past descriptor
    1023 (a program that starts convctl with many files open and a high pipe) still works.

    Defence: commands._readable_within waits with a selector, not ``select.select()``."""
    from convocationsd.cli.commands import _readable_within

    _raise_nofile(4096)
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1500:
        pytest.skip("this user's hard limit of open files is below 1500")
    read_end, write_end = os.pipe()
    high = os.dup2(read_end, 1500)
    os.close(read_end)
    try:
        with open(high, "rb", closefd=False) as stream:
            assert _readable_within(stream, 0.05) is False
            os.write(write_end, b"code\n")
            assert _readable_within(stream, 5.0) is True
    finally:
        os.close(high)
        os.close(write_end)


# -- a key reference that names someone else's keyring item ---------------------------------------------

OTHER_TOKEN = "ghp_" + "7" * 36  # what another program keeps in the same keyring (a GitHub token, say)
KEYRING_CALL = "import sys, keyring\nop = sys.argv[1]\n" + (
    "if op == 'set':\n    keyring.set_password('github', 'token', sys.argv[2])\n"
    "else:\n    print(keyring.get_password('github', 'token') == sys.argv[2])\n"
)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An ``openrouter_url`` of the attacker's choosing: it keeps every Authorization header it is sent."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_key_reference_cannot_name_another_keyring_item(daemon_factory, short_tmp):
    """config.toml's key reference is edited to name another item of the same OS keyring (a GitHub token)
    and ``openrouter_url`` to point at the editor's server: the daemon and convctl refuse to read it (``secret
    get``, ``exec``, the account check) with a message naming the project's own item, nothing reaches that
    server, and ``secret clear`` removes the reference but not the other item.

    Defence: store/configured.ConfiguredStore._reference accepts only service ``convocations``, username
    ``openrouter_api_key``."""
    if reason := gnome_keyring_missing():
        pytest.skip(reason)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = base_env(short_tmp, HOME=str(short_tmp / "home"), CONVOCATIONS_SECRET_BACKEND="keyring")
    try:
        with gnome_keyring(env, "the person's password") as kenv:
            python = [sys.executable, "-c", KEYRING_CALL]
            subprocess.run([*python, "set", OTHER_TOKEN], env=kenv, check=True, timeout=60)
            config = short_tmp / "cfg" / "convocations" / "config.toml"
            config.parent.mkdir(parents=True)
            config.write_text(
                'openrouter_api_key = { backend = "keyring", service = "github", username = "token" }\n'
                f'openrouter_url = "http://127.0.0.1:{server.server_port}"\n'
            )
            d = daemon_factory(
                HOME=kenv["HOME"],
                CONVOCATIONS_SECRET_BACKEND="keyring",
                DBUS_SESSION_BUS_ADDRESS=kenv["DBUS_SESSION_BUS_ADDRESS"],
            )
            # `convctl status` waits a moment for the account's details, which the daemon would ask the
            # configured address about, with the key it read.
            outputs = [d.convctl("status").stdout]
            for args in (("secret", "get-openrouter-key"), ("exec", "--", "true")):
                done = d.convctl(*args)
                outputs += [done.stdout, done.stderr]
                assert done.returncode != 0 and "project's own" in done.stderr, (args, done.stderr)
            with pytest.raises(ConvError, match="project's own"):
                d.call("secret.get")
            cleared = d.convctl("secret", "clear-openrouter-key")
            assert cleared.returncode == 0, cleared.stderr
            still = subprocess.run([*python, "get", OTHER_TOKEN], env=kenv, capture_output=True, text=True, timeout=60)
            assert still.stdout.strip() == "True", "the other program's keyring item was removed"
            assert "openrouter_api_key" not in config.read_text()
    finally:
        server.shutdown()
    assert not [h for h in _Recorder.seen if OTHER_TOKEN in h], "the other item's secret was sent out"
    assert_no_secret(OTHER_TOKEN, d.log(), *outputs)
