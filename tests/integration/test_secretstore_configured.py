"""Backend selection: keyring first, local-encrypted fallback (logged once, with the reason), moving the
key between backends, timeouts on a hanging keyring, and the config reference that reading follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretstore_contract import (
    assert_key_hidden,
    assert_key_in_no_file,
    forget_entry,
    new_key,
    no_test_key_in_any_log,  # noqa: F401 (autouse fixture)
    real_secret_service,
)

from convocationsd.core.errors import BackendUnavailable, ConfigError, SecretStoreError
from convocationsd.store import configfile
from convocationsd.store.configured import ConfiguredStore, open_store
from convocationsd.store.keyring_backend import SERVICE, USERNAME, KeyringBackend
from tests.helpers.gnome_keyring import locked_gnome_keyring
from tests.helpers.gnome_keyring import missing_tools as gnome_keyring_missing

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "secret_store_cli.py"
LOGGER = "convocationsd.store.secrets"


class FakeKeyring:
    """Stands in for a keyring backend: can fail, or block like a keyring waiting on an unlock prompt."""

    priority = 1

    def __init__(self, fail=None, block=False):
        self.entries: dict[tuple[str, str], str] = {}
        self.fail = fail
        self.gate = threading.Event()
        if not block:
            self.gate.set()
        self.deleted = threading.Event()
        self.calls: list[str] = []

    def set_password(self, service, username, password):
        self.calls.append("set")
        if self.fail is not None:
            raise self.fail
        self.gate.wait()
        self.entries[(service, username)] = password

    def get_password(self, service, username):
        self.calls.append("get")
        if self.fail is not None:
            raise self.fail
        return self.entries.get((service, username))

    def delete_password(self, service, username):
        from keyring.errors import PasswordDeleteError

        self.calls.append("delete")
        if self.fail is not None:
            raise self.fail
        self.gate.wait()
        if (service, username) not in self.entries:
            raise PasswordDeleteError("Password not found")
        del self.entries[(service, username)]
        self.deleted.set()


def make(conf, fake, *, forced=None, timeout=5.0) -> ConfiguredStore:
    return ConfiguredStore(conf, forced_backend=forced, keyring=KeyringBackend(timeout=timeout, detect=lambda: fake))


def fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "OS keyring unavailable" in r.getMessage()]


@pytest.fixture
def conf(tmp_path):
    return tmp_path / "convocations" / "config.toml"


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOCATIONS_", "PYTHON_KEYRING"))}
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_RUNTIME_DIR=str(run), **extra)
    return env


# -- selection with a fake keyring ------------------------------------------------------------------


def test_working_keyring_is_preferred(conf, caplog):
    fake, key = FakeKeyring(), new_key()
    store = make(conf, fake)
    assert store.set(key) == "keyring"
    assert fake.entries == {(SERVICE, USERNAME): key}
    assert configfile.load(conf)["openrouter_api_key"] == {
        "backend": "keyring",
        "service": SERVICE,
        "username": USERNAME,
    }
    assert not (conf.parent / "secret.key").exists()
    assert store.get() == key
    assert_key_in_no_file(key, conf.parent)
    assert_key_hidden(key, caplog)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param("KeyringLocked", id="locked"),
        pytest.param("NoKeyringError", id="no-keyring"),
        pytest.param("InitError", id="init-error"),
        pytest.param("KeyringError", id="keyring-error"),
        pytest.param("DBusError", id="foreign-error"),
    ],
)
def test_failing_keyring_falls_back_with_one_log_line(conf, caplog, error):
    import keyring.errors

    key = new_key()
    cls = getattr(keyring.errors, error, None) or type(error, (Exception,), {})
    fake = FakeKeyring(fail=cls(f"it broke while handling {key}"))  # even a careless message is scrubbed
    store = make(conf, fake)
    assert store.set(key) == "local-encrypted"
    lines = fallback_lines(caplog)
    assert len(lines) == 1 and error in lines[0]
    assert "[redacted]" in lines[0]
    assert store.get() == key
    assert set(configfile.load(conf)["openrouter_api_key"]) == {"backend", "nonce", "ciphertext"}
    outcome = store.last_store
    assert outcome.backend == "local-encrypted" and error in outcome.keyring_error and outcome.error is None
    assert outcome.keyring_missing is (error == "NoKeyringError")  # no keyring at all, not a failing one
    assert_key_in_no_file(key, conf.parent)
    assert_key_hidden(key, caplog, texts=(json.dumps(outcome.to_dict()),))


@pytest.mark.parametrize("kind", ["fail", "null"])
def test_stand_in_backends_count_as_unavailable(conf, caplog, kind):
    import importlib

    backend = importlib.import_module(f"keyring.backends.{kind}").Keyring()
    key = new_key()
    store = ConfiguredStore(conf, keyring=KeyringBackend(timeout=5, detect=lambda: backend))
    assert store.set(key) == "local-encrypted"
    assert len(fallback_lines(caplog)) == 1
    assert store.last_store.keyring_missing is True
    assert_key_hidden(key, caplog)


def test_last_store_says_where_the_key_went_or_why_it_went_nowhere(conf, caplog):
    import keyring.errors

    store = make(conf, FakeKeyring())
    assert store.last_store is None
    store.set(new_key())
    assert (store.last_store.backend, store.last_store.keyring_error) == ("keyring", None)
    forced = make(conf, FakeKeyring(fail=keyring.errors.KeyringLocked("locked")), forced="keyring")
    with pytest.raises(SecretStoreError):
        forced.set(new_key())
    assert forced.last_store.backend is None and "locked" in forced.last_store.error


def test_forced_keyring_does_not_fall_back(conf, caplog):
    import keyring.errors

    key = new_key()
    store = make(conf, FakeKeyring(fail=keyring.errors.KeyringLocked("locked")), forced="keyring")
    with pytest.raises(BackendUnavailable) as info:
        store.set(key)
    assert "locked" in info.value.message and "local-encrypted" in info.value.hint
    assert not conf.exists() and not (conf.parent / "secret.key").exists()
    assert_key_hidden(key, caplog, info.value)


def test_forced_local_never_touches_the_keyring(conf, caplog):
    fake, key = FakeKeyring(), new_key()
    store = make(conf, fake, forced="local-encrypted")
    assert store.set(key) == "local-encrypted"
    assert store.get() == key and store.clear()
    assert fake.calls == []
    assert_key_hidden(key, caplog)


def test_switching_backends_moves_the_key(conf, caplog):
    fake, first, second, third = FakeKeyring(), new_key(), new_key(), new_key()
    make(conf, fake).set(first)
    assert fake.entries
    # forced to the file: the keyring copy goes away
    assert make(conf, fake, forced="local-encrypted").set(second) == "local-encrypted"
    assert fake.entries == {}
    assert make(conf, fake).get() == second
    # back to the keyring: the ciphertext goes away
    assert make(conf, fake).set(third) == "keyring"
    assert configfile.load(conf)["openrouter_api_key"]["backend"] == "keyring"
    assert "ciphertext" not in conf.read_text()
    assert make(conf, fake, forced="local-encrypted").get() == third  # reading follows the reference
    for key in (first, second, third):
        assert_key_in_no_file(key, conf.parent)
        assert_key_hidden(key, caplog)


def test_old_keyring_copy_that_cannot_be_removed_is_reported(conf, caplog):
    import keyring.errors

    fake, first, second = FakeKeyring(), new_key(), new_key()
    store = make(conf, fake)
    store.set(first)
    fake.fail = keyring.errors.KeyringLocked("locked")
    assert store.set(second) == "local-encrypted"
    stale = [r.getMessage() for r in caplog.records if "old copy" in r.getMessage()]
    assert len(stale) == 1 and "secret-tool clear service convocations username openrouter_api_key" in stale[0]
    assert store.get() == second
    assert_key_hidden(first, caplog)
    assert_key_hidden(second, caplog)


# -- a keyring that does not answer ------------------------------------------------------------------


def test_hanging_keyring_times_out_and_falls_back(conf, caplog):
    fake, key = FakeKeyring(block=True), new_key()
    store = make(conf, fake, timeout=0.2)
    try:
        assert store.set(key) == "local-encrypted"
        lines = fallback_lines(caplog)
        assert len(lines) == 1 and "did not answer within 0.2 s" in lines[0]
        # while the first call still hangs, the next one does not queue behind it: it is told so at once
        assert store.set(key) == "local-encrypted"
        assert "earlier request" in fallback_lines(caplog)[1]
    finally:
        fake.gate.set()  # the person answers the prompt: the late write lands ...
    assert fake.deleted.wait(10)  # ... and is removed, since the key now lives in the file
    assert fake.entries == {}
    assert store.get() == key and store.status().backend == "local-encrypted"
    assert_key_hidden(key, caplog)


def test_hanging_clear_reports_and_finishes_late(conf, caplog):
    fake, key = FakeKeyring(), new_key()
    make(conf, fake).set(key)  # in the keyring: with time to spare, however busy the machine
    store = make(conf, fake, timeout=0.2)
    fake.gate.clear()
    with pytest.raises(BackendUnavailable) as info:
        store.clear()
    assert "did not answer" in info.value.message
    assert store.status().backend == "keyring"  # reference kept while the keyring copy may still exist
    fake.gate.set()
    assert fake.deleted.wait(10)
    deadline = time.monotonic() + 10
    while store.status().stored and time.monotonic() < deadline:  # the late callback rewrites the file
        threading.Event().wait(0.01)
    assert store.status().to_dict() == {"stored": False, "backend": None}
    assert_key_hidden(key, caplog, info.value)


# -- the config reference ------------------------------------------------------------------------------


def test_corrupt_config_refuses_to_store_and_touches_nothing(conf, caplog):
    conf.parent.mkdir(mode=0o700)
    original = b'log_level = "debug"\n[openrouter_api_key\nbackend = "keyring"\n'
    conf.write_bytes(original)
    fake, key = FakeKeyring(), new_key()
    store = make(conf, fake)
    for call in (lambda: store.set(key), store.get, store.clear, store.status):
        with pytest.raises(ConfigError) as info:
            call()
        assert "line 2, column" in info.value.message
        assert_key_hidden(key, caplog, info.value)
    assert conf.read_bytes() == original
    assert fake.calls == []


def test_reference_without_keyring_entry_is_reported(conf, caplog):
    fake, key = FakeKeyring(), new_key()
    store = make(conf, fake)
    store.set(key)
    fake.entries.clear()
    with pytest.raises(SecretStoreError) as info:
        store.get()
    assert "no such entry" in info.value.message and "set-openrouter-key" in info.value.hint
    assert store.clear() is True  # clearing still works and removes the dangling reference
    assert store.status().stored is False


def test_plain_text_key_in_config_is_never_echoed(conf, caplog):
    key = new_key()
    conf.parent.mkdir(mode=0o700)
    conf.write_text(f'# old style\nopenrouter_api_key = "{key}"\n')
    store = make(conf, FakeKeyring(), forced="local-encrypted")
    with pytest.raises(ConfigError) as info:
        store.status()
    assert_key_hidden(key, caplog, info.value)
    with pytest.raises(ConfigError) as info2:
        store.get()
    assert_key_hidden(key, caplog, info2.value)
    assert store.set(key) == "local-encrypted"  # storing replaces the plain text with ciphertext
    assert_key_in_no_file(key, conf.parent)
    assert conf.read_text().startswith("# old style\n")
    assert store.get() == key


def test_inline_table_reference_is_read(conf, caplog):
    """The seed notes show the reference as an inline table; it reads the same and is rewritten in its place."""
    fake, key = FakeKeyring(), new_key()
    fake.entries[(SERVICE, USERNAME)] = key
    conf.parent.mkdir(mode=0o700)
    conf.write_text('a = 1\nopenrouter_api_key = { backend = "keyring" }  # mine\nb = 2\n')
    store = make(conf, fake)
    assert store.status().to_dict() == {"stored": True, "backend": "keyring"}
    assert store.get() == key
    store.set(key)
    assert conf.read_text() == f"a = 1\n{INLINE_KEYRING}  # mine\nb = 2\n"


INLINE_KEYRING = 'openrouter_api_key = {backend = "keyring", service = "convocations", username = "openrouter_api_key"}'


def test_reference_is_a_top_level_inline_table_before_any_table(conf, caplog):
    """Settings a person appends to the file after a key is stored stay settings (the trap of a table at the end)."""
    conf.parent.mkdir(mode=0o700)
    conf.write_text("# mine\nhttp_port = 3001\n\n# the proxy\n[proxy]\nurl = 'x'\n")
    store = make(conf, FakeKeyring())
    store.set(new_key())
    assert conf.read_text() == f"# mine\nhttp_port = 3001\n{INLINE_KEYRING}\n\n# the proxy\n[proxy]\nurl = 'x'\n"
    empty = conf.parent / "empty.toml"
    make(empty, FakeKeyring()).set(new_key())
    with open(empty, "a") as f:
        f.write("flow_timeout_seconds = 42\n")  # what a person does next
    assert configfile.load(empty)["flow_timeout_seconds"] == 42


def test_old_table_form_is_read_and_migrated_keeping_comments(conf, caplog):
    """The [openrouter_api_key] table form is read; the next write makes it inline and moves what the person wrote
    inside the table (here a comment and a setting appended below it) to the top level, where it takes effect."""
    fake, key = FakeKeyring(), new_key()
    fake.entries[(SERVICE, USERNAME)] = key
    conf.parent.mkdir(mode=0o700)
    conf.write_text(
        "# my settings\nhttp_port = 3001\n\n"
        '[openrouter_api_key]\nbackend = "keyring"\nservice = "convocations"\nusername = "openrouter_api_key"\n'
        "# shorter logins\nflow_timeout_seconds = 42\n"
    )
    store = make(conf, fake)
    assert store.status().to_dict() == {"stored": True, "backend": "keyring"} and store.get() == key
    store.set(key)
    assert conf.read_text() == (
        f"# my settings\nhttp_port = 3001\n{INLINE_KEYRING}\n# shorter logins\nflow_timeout_seconds = 42\n\n"
    )
    moved = [r.getMessage() for r in caplog.records if "Moved flow_timeout_seconds out of" in r.getMessage()]
    assert len(moved) == 1
    assert store.get() == key


def test_clearing_an_old_table_keeps_what_the_person_wrote_in_it(conf, caplog):
    conf.parent.mkdir(mode=0o700)
    conf.write_text('[other]\nx = 1\n[openrouter_api_key]\nbackend = "keyring"\n# note\nlog_level = "debug"\n')
    store = make(conf, FakeKeyring())
    assert store.clear() is True
    assert conf.read_text() == '# note\nlog_level = "debug"\n\n[other]\nx = 1\n'


def test_a_table_inside_the_reference_table_is_not_dropped(conf, caplog):
    original = '[openrouter_api_key]\nbackend = "keyring"\n[openrouter_api_key.mine]\nx = 1\n'
    conf.parent.mkdir(mode=0o700)
    conf.write_text(original)
    with pytest.raises(ConfigError) as info:
        make(conf, FakeKeyring(), forced="local-encrypted").set(new_key())
    assert "openrouter_api_key.mine" in info.value.message and "Move that table" in info.value.hint
    assert conf.read_text() == original


@pytest.mark.parametrize(
    "text",
    [
        "a = 1",
        "a = 1 # no newline at the end",
        "# only a comment",
        "[t]\nq = 1",
        'x = """\n[not a table]\n"""\n',
        "a.b = 1\n[[aot]]\nq = 1\n[[aot]]\nq = 2\n",
        "openrouter_api_key.backend = 'keyring'\nq = 1\n",
        "[t]\nq = 1\n[openrouter_api_key]\nbackend = 'keyring'\n\n[u]\nr = 2\n",
    ],
)
def test_reference_reads_back_in_any_file(conf, caplog, text):
    conf.parent.mkdir(mode=0o700)
    conf.write_text(text)
    before = {k: v for k, v in configfile.load(conf).items() if k != "openrouter_api_key"}
    store = make(conf, FakeKeyring(), forced="local-encrypted")
    key = new_key()
    store.set(key)
    after = configfile.load(conf)
    assert set(after["openrouter_api_key"]) == {"backend", "nonce", "ciphertext"} and store.get() == key
    assert {k: v for k, v in after.items() if k != "openrouter_api_key"} == before
    store.clear()
    assert configfile.load(conf) == before


def test_set_and_clear_keep_the_rest_of_config(conf, caplog):
    conf.parent.mkdir(mode=0o700)
    conf.write_text("# mine\nhttp_port = 3001  # busy 3000\nfavourite = 'tea'\n")
    store = make(conf, FakeKeyring())
    key = new_key()
    store.set(key)
    store.clear()
    # everything the person wrote is still there, byte for byte (tomlkit may leave one blank line at the end)
    assert conf.read_text().rstrip("\n") == "# mine\nhttp_port = 3001  # busy 3000\nfavourite = 'tea'"
    assert os.stat(conf).st_mode & 0o777 == 0o600


def test_empty_key_and_unknown_backend_are_refused(conf):
    with pytest.raises(SecretStoreError):
        make(conf, FakeKeyring()).set("  ")
    with pytest.raises(ConfigError):
        open_store(conf, forced_backend="plaintext")


def test_concurrent_sets_from_worker_threads(conf, caplog):
    store = make(conf, FakeKeyring(), forced="local-encrypted")
    keys = [new_key() for _ in range(6)]

    def worker(key):
        for _ in range(4):
            store.set(key)
            assert store.get() in keys

    threads = [threading.Thread(target=worker, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get() in keys
    for key in keys:
        assert_key_in_no_file(key, conf.parent)
        assert_key_hidden(key, caplog)


# -- in fresh processes ----------------------------------------------------------------------------


def test_status_does_not_import_keyring_or_cryptography(tmp_path):
    env = child_env(tmp_path)
    conf = tmp_path / "cfg" / "convocations" / "config.toml"
    open_store(conf, forced_backend="local-encrypted").set(new_key())
    out = subprocess.run([sys.executable, str(HELPER), "status"], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result == {"status": {"stored": True, "backend": "local-encrypted"}, "modules": []}


def test_no_session_bus_falls_back_to_local_encrypted(tmp_path, caplog):
    key = "sk-or-v1-recognisable-" + new_key()[9:]
    env = child_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(HELPER), "set"], input=key + "\n", env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:].replace(key, "<key>")
    result = json.loads(proc.stdout)
    assert result["backend"] == "local-encrypted"
    assert result["status"] == {"stored": True, "backend": "local-encrypted"}
    conf_dir = tmp_path / "cfg" / "convocations"
    table = configfile.load(conf_dir / "config.toml")["openrouter_api_key"]
    assert set(table) == {"backend", "nonce", "ciphertext"} and table["backend"] == "local-encrypted"
    lines = [line for line in proc.stderr.splitlines() if "OS keyring unavailable" in line]
    assert len(lines) == 1 and "No OS keyring" in lines[0]
    assert_key_in_no_file(key, tmp_path)
    assert_key_hidden(key, caplog, texts=(proc.stdout, proc.stderr))
    assert open_store(conf_dir / "config.toml").get() == key  # the reference says where: no guessing


@pytest.mark.keyring
def test_locked_keyring_falls_back_quickly(short_tmp, caplog):
    """A private bus with a gnome-keyring whose login collection exists but is locked (no --unlock)."""
    if reason := gnome_keyring_missing():
        pytest.skip(reason)
    home = short_tmp / "home"
    env = child_env(short_tmp, HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"))
    key = "sk-or-v1-locked-" + new_key()[9:]
    with locked_gnome_keyring(env) as locked:  # the timeout below is far above the bound we check
        assert list((home / ".local" / "share" / "keyrings").glob("*.keyring"))
        began = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(HELPER), "set", "60"],
            input=key + "\n",
            env=locked,
            capture_output=True,
            text=True,
            timeout=120,
        )
        wall = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr[-2000:].replace(key, "<key>")
    result = json.loads(proc.stdout)
    assert result["backend"] == "local-encrypted"
    assert result["elapsed"] < 30 and wall < 60  # fell back instead of waiting out the 60 s timeout
    lines = [line for line in proc.stderr.splitlines() if "OS keyring unavailable" in line]
    assert len(lines) == 1 and ("locked" in lines[0] or "could not be opened" in lines[0])
    assert_key_in_no_file(key, short_tmp)
    assert_key_hidden(key, caplog, texts=(proc.stdout, proc.stderr))


# -- against the real Secret Service ---------------------------------------------------------------


@pytest.mark.keyring
def test_real_secret_service_switching_moves_the_key(conf, caplog):
    keyring = real_secret_service()
    forget_entry(keyring)
    try:
        first, second = new_key(), new_key()
        assert open_store(conf, keyring_timeout=30).set(first) == "keyring"
        assert keyring.get_password(SERVICE, USERNAME) == first
        assert open_store(conf, forced_backend="local-encrypted").set(second) == "local-encrypted"
        assert keyring.get_password(SERVICE, USERNAME) is None
        assert open_store(conf, keyring_timeout=30).get() == second
        assert open_store(conf, keyring_timeout=30).set(first) == "keyring"
        assert "ciphertext" not in conf.read_text()
        assert open_store(conf).clear() and keyring.get_password(SERVICE, USERNAME) is None
        for key in (first, second):
            assert_key_in_no_file(key, conf.parent)
            assert_key_hidden(key, caplog)
    finally:
        forget_entry(keyring)
