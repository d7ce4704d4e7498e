"""The behaviour every SecretStore must show, written once and run against each backend.

A backend's test is a small subclass that defines ``make_store(tmp_path)`` and ``backend`` (the name
``set`` must return). ``MemoryStore`` is the reference implementation: the contract's own check, and a
store for tests that need one without a keyring or a file. Every test also checks that no key it used shows up in a log record, and, when
the subclass names a directory through ``scan_dir``, in any file under it. Also here: the checks for
leaks, and a real Secret Service for fixtures (or a clean skip).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path

import pytest

from convocationsd.store.keyring_backend import SERVICE, USERNAME
from convocationsd.store.secrets import SecretStatus, StoreOutcome

LONG_KEY = "sk-or-v1-" + ("0123456789abcdef" * 256)[: 4096 - len("sk-or-v1-")]
UNICODE_KEY = "sk-or-ключ-🔑-ü-中文-\u00e9\u0301"


def new_key() -> str:
    return "sk-or-v1-" + secrets.token_hex(32)


def assert_key_hidden(key: str, caplog=None, *errors: BaseException, texts: tuple[str, ...] = ()) -> None:
    """The key is in no captured log record, no exception text (chain included), no given text."""
    if caplog is not None:
        for record in caplog.records:
            assert key not in record.getMessage(), f"key leaked into log record from {record.name}"
            assert key not in (record.exc_text or "")
    for error in errors:
        while error is not None:
            assert key not in str(error) and key not in repr(error.args), "key leaked into an exception"
            error = error.__cause__ or error.__context__
    for text in texts:
        assert key not in text


def assert_key_in_no_file(key: str, directory: Path) -> None:
    """No regular file under ``directory`` holds the key. Only regular files are read, and links are not
    followed: opening a socket fails (gnome-keyring keeps its control socket here), a FIFO blocks."""
    needle = key.encode("utf-8")
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed while we looked: a keyring's temporary file
            assert needle not in data, f"plaintext key found in {path}"


MEMORY = "memory"


class MemoryStore:
    """Keeps the key in this process only: the SecretStore interface at its simplest."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._lock = threading.Lock()
        self.last_store: StoreOutcome | None = None

    def status(self) -> SecretStatus:
        with self._lock:
            return SecretStatus(self._key is not None, MEMORY if self._key is not None else None)

    def set(self, key: str) -> str:
        with self._lock:
            self._key = key
        self.last_store = StoreOutcome(time.time(), MEMORY)
        return MEMORY

    def get(self) -> str | None:
        with self._lock:
            return self._key

    def clear(self) -> bool:
        with self._lock:
            had, self._key = self._key is not None, None
        return had


class SecretStoreContract:
    backend: str

    def make_store(self, tmp_path: Path):  # pragma: no cover - subclasses override
        raise NotImplementedError

    def scan_dir(self, tmp_path: Path) -> Path | None:
        """A directory that must never hold a plaintext key (None: nothing on disk)."""
        return None

    @pytest.fixture
    def store(self, tmp_path):
        return self.make_store(tmp_path)

    @pytest.fixture(autouse=True)
    def _keys_stay_hidden(self, caplog, tmp_path):
        caplog.set_level(logging.DEBUG)
        self.used: list[str] = []
        yield
        directory = self.scan_dir(tmp_path)
        for key in self.used:
            assert_key_hidden(key, caplog)
            if directory is not None and directory.exists():
                assert_key_in_no_file(key, directory)

    def key(self, value: str | None = None) -> str:
        value = value if value is not None else new_key()
        self.used.append(value)
        return value

    # -- the cases -------------------------------------------------------------------------------

    def test_empty_store(self, store):
        status = store.status()
        assert (status.stored, status.backend) == (False, None)
        assert store.get() is None

    def test_set_get_status(self, store):
        key = self.key()
        assert store.set(key) == self.backend
        assert store.get() == key
        assert store.status().to_dict() == {"stored": True, "backend": self.backend}

    def test_overwrite(self, store):
        first, second = self.key(), self.key()
        store.set(first)
        assert store.set(second) == self.backend
        assert store.get() == second
        assert store.status().stored

    def test_unicode_key(self, store):
        key = self.key(UNICODE_KEY)
        store.set(key)
        assert store.get() == key

    def test_long_key(self, store):
        key = self.key(LONG_KEY)
        assert len(key) == 4096
        store.set(key)
        assert store.get() == key

    def test_clear(self, store):
        store.set(self.key())
        assert store.clear() is True
        assert store.get() is None
        assert store.status().to_dict() == {"stored": False, "backend": None}

    def test_clear_when_empty(self, store):
        assert store.clear() is False
        assert store.clear() is False
        assert not store.status().stored

    def test_set_after_clear(self, store):
        store.set(self.key())
        store.clear()
        key = self.key()
        store.set(key)
        assert store.get() == key

    def test_a_fresh_store_reads_what_another_wrote(self, store, tmp_path):
        key = self.key()
        store.set(key)
        other = self.reopen(store, tmp_path)
        assert other.get() == key
        assert other.status().backend == self.backend

    def reopen(self, store, tmp_path):
        """Another instance over the same storage (the same one for in-memory stores)."""
        return store


# -- a real Secret Service ---------------------------------------------------------------------------

SECRET_SERVICE_BACKENDS = ("keyring.backends.SecretService", "keyring.backends.libsecret")


def real_secret_service():
    """Skips unless keyring talks to a real Secret Service; returns the keyring module."""
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        pytest.skip("no session bus of the tests' own (run them through tests/with-keyring.sh)")
    import keyring
    import keyring.core

    keyring.core.init_backend()
    backend = keyring.get_keyring()
    chained = getattr(backend, "backends", None) or [backend]  # a ChainerBackend wraps several
    if not any(type(b).__module__ in SECRET_SERVICE_BACKENDS for b in chained):
        pytest.skip(f"keyring's backend is {type(backend).__module__}, not the Secret Service")
    return keyring


def forget_entry(keyring) -> None:
    try:
        keyring.delete_password(SERVICE, USERNAME)
    except keyring.errors.PasswordDeleteError:
        pass


def clean_secret_service():
    """For a fixture: a real Secret Service with no convocations entry before and after the test."""
    keyring = real_secret_service()
    forget_entry(keyring)
    yield keyring
    forget_entry(keyring)


@pytest.fixture(autouse=True)  # import it into a test module to apply it there
def no_test_key_in_any_log(caplog):
    """Every key these tests use starts with sk-or-v1-; none may reach a log record."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert "sk-or-v1-" not in record.getMessage() + (record.exc_text or ""), f"key leaked via {record.name}"
