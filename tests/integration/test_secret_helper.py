"""The daemon's HelperStore: set/get/clear in a real child process (``python -m convocationsd.store.helper``).

The contract (tests/secretstore_contract.py) runs through it too; these are what only the helper can get
wrong: errors and log records that must survive the process boundary, the key that must travel only
through the pipe, a child that serves a burst and then goes, a child that dies, and the parent that must
never load keyring, cryptography or tomlkit.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convocationsd.core.errors import ConfigError, SecretStoreError
from convocationsd.store import helper as helper_module
from convocationsd.store.configured import open_store
from convocationsd.store.helper import HelperStore
from convocationsd.store.secrets import LOCAL_ENCRYPTED
from tests.secretstore_contract import new_key

HEAVY = ("keyring", "cryptography", "tomlkit")


@pytest.fixture(autouse=True)
def short_linger(monkeypatch):
    monkeypatch.setattr(helper_module, "LINGER", 0.5)  # children of these tests do not pile up


def helper(tmp_path: Path, **kw) -> HelperStore:
    return HelperStore(tmp_path / "conf" / "config.toml", forced_backend=LOCAL_ENCRYPTED, **kw)


def test_errors_keep_their_class_message_and_hint(tmp_path):
    store = helper(tmp_path)
    store.set(new_key())
    key_file = tmp_path / "conf" / "secret.key"
    key_file.chmod(0o644)
    with pytest.raises(SecretStoreError) as in_process:
        open_store(tmp_path / "conf" / "config.toml").get()
    with pytest.raises(SecretStoreError) as through_helper:
        store.get()
    assert type(through_helper.value) is type(in_process.value)
    assert (through_helper.value.message, through_helper.value.hint) == (
        in_process.value.message,
        in_process.value.hint,
    )

    key_file.chmod(0o600)
    (tmp_path / "conf" / "config.toml").write_text("this is = = not toml\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .* at line 1"):
        store.clear()


def test_the_childs_log_records_are_logged_by_the_parent(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    key = new_key()
    helper(tmp_path).set(key)
    stored = [r for r in caplog.records if r.getMessage() == "OpenRouter key stored (backend local-encrypted)."]
    assert [(r.name, r.levelno) for r in stored] == [("convocationsd.store.secrets", logging.INFO)]
    assert all(key not in r.getMessage() for r in caplog.records)


@pytest.fixture
def started(monkeypatch) -> list[subprocess.Popen]:
    """The children HelperStore starts (the real Popen, recorded)."""
    children = []
    real_popen = subprocess.Popen

    def spy(*args, **kw):
        children.append(real_popen(*args, **kw))
        return children[-1]

    monkeypatch.setattr(subprocess, "Popen", spy)
    return children


def test_the_key_travels_only_through_the_pipe(tmp_path, started):
    """A command line is readable by every user of the machine (/proc/<pid>/cmdline); a pipe is not."""
    key = new_key()
    store = helper(tmp_path)
    store.set(key)
    assert store.get() == key
    [child] = started
    assert key not in " ".join(child.args)
    assert key not in (tmp_path / "conf" / "config.toml").read_text()


def test_one_child_serves_a_burst_then_goes(tmp_path, started):
    store = helper(tmp_path)
    key = new_key()
    store.set(key)
    assert store.get() == key
    assert store.status().stored
    assert len(started) == 1  # set and get in the same child
    assert started[0].wait(timeout=10) == 0  # let go LINGER seconds after the last call
    assert store.get() == key  # the next call starts a new one
    assert len(started) == 2
    store.close()
    assert started[1].poll() == 0


def test_a_child_that_dies_is_a_clear_error_and_its_last_words_are_in_the_log(tmp_path, caplog, capfd):
    store = helper(tmp_path, env=dict(os.environ, PYTHONHOME="/nonexistent"))  # an interpreter that cannot start
    with pytest.raises(SecretStoreError, match="The secret-store helper failed") as failed:
        store.set(new_key())
    assert failed.value.hint == "See the daemon's log, then try again."
    assert "exited with 1 without answering" in caplog.text
    assert "No module named 'encodings'" in capfd.readouterr().err  # the child's stderr is the daemon's log


def test_the_parent_never_imports_keyring_cryptography_or_tomlkit(tmp_path):
    script = f"""
import sys
from pathlib import Path
from convocationsd.store.helper import HelperStore
store = HelperStore(Path({str(tmp_path / "config.toml")!r}))
assert store.set("sk-or-v1-" + "ab" * 32) in ("keyring", "local-encrypted")
assert store.get() == "sk-or-v1-" + "ab" * 32 and store.status().stored and store.clear()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    env = dict(os.environ, CONVOCATIONS_SECRET_BACKEND="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_how_the_last_store_went_crosses_the_pipe(tmp_path):
    """`status` and doctor report the daemon's last store: the child's outcome must reach the parent."""
    store = helper(tmp_path)
    assert store.last_store is None
    store.set(new_key())
    assert store.last_store is not None and store.last_store.backend == LOCAL_ENCRYPTED
    assert store.last_store.error is None


def test_a_missing_keyring_keeps_its_own_class(tmp_path):
    """KeyringMissing (no OS keyring at all) is how doctor tells a headless setup from a failing keyring."""
    from convocationsd.store.keyring_backend import KeyringMissing

    store = HelperStore(
        tmp_path / "conf" / "config.toml",
        forced_backend="keyring",
        env={k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
        | {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"},
    )
    with pytest.raises(KeyringMissing):
        store.set(new_key())
