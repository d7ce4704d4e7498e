"""The SecretStore contract run against the in-memory store, the local-encrypted file and a real
Secret Service (gnome-keyring on the private session bus that `make test` provides), each of the last two
also through the daemon's HelperStore (every call in a child process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretstore_contract import MEMORY, MemoryStore, SecretStoreContract, clean_secret_service

from convocationsd.store import configfile
from convocationsd.store.configured import open_store
from convocationsd.store.helper import HelperStore
from convocationsd.store.keyring_backend import SERVICE, USERNAME
from convocationsd.store.secrets import KEYRING, LOCAL_ENCRYPTED


@pytest.fixture
def secret_service():
    yield from clean_secret_service()


class TestMemoryStore(SecretStoreContract):
    backend = MEMORY

    def make_store(self, tmp_path):
        return MemoryStore()


class TestLocalEncryptedStore(SecretStoreContract):
    backend = LOCAL_ENCRYPTED

    def make_store(self, tmp_path):
        return open_store(tmp_path / "conf" / "config.toml", forced_backend=LOCAL_ENCRYPTED)

    def scan_dir(self, tmp_path):
        return tmp_path

    def reopen(self, store, tmp_path):
        return open_store(tmp_path / "conf" / "config.toml")  # automatic: reading follows the reference

    def test_config_holds_only_ciphertext(self, store, tmp_path):
        store.set(self.key())
        table = configfile.load(tmp_path / "conf" / "config.toml")["openrouter_api_key"]
        assert set(table) == {"backend", "nonce", "ciphertext"}
        assert table["backend"] == LOCAL_ENCRYPTED


@pytest.mark.keyring
class TestKeyringStore(SecretStoreContract):
    backend = KEYRING

    @pytest.fixture
    def store(self, tmp_path, secret_service):
        return self.make_store(tmp_path)

    def make_store(self, tmp_path):
        return open_store(tmp_path / "conf" / "config.toml", forced_backend=KEYRING, keyring_timeout=30)

    def scan_dir(self, tmp_path):
        return tmp_path

    def reopen(self, store, tmp_path):
        return open_store(tmp_path / "conf" / "config.toml", keyring_timeout=30)

    def test_reference_names_the_entry(self, store, tmp_path, secret_service):
        key = self.key()
        store.set(key)
        table = configfile.load(tmp_path / "conf" / "config.toml")["openrouter_api_key"]
        assert table == {"backend": "keyring", "service": "convocations", "username": "openrouter_api_key"}
        assert secret_service.get_password(SERVICE, USERNAME) == key

    def test_clear_removes_the_keyring_entry(self, store, secret_service):
        store.set(self.key())
        assert store.clear()
        assert secret_service.get_password(SERVICE, USERNAME) is None


@pytest.fixture
def short_linger(monkeypatch):
    from convocationsd.store import helper

    monkeypatch.setattr(helper, "LINGER", 0.5)  # the children of these many stores do not pile up


@pytest.mark.usefixtures("short_linger")
class TestLocalEncryptedThroughHelper(TestLocalEncryptedStore):
    def make_store(self, tmp_path):
        return HelperStore(tmp_path / "conf" / "config.toml", forced_backend=LOCAL_ENCRYPTED)

    def reopen(self, store, tmp_path):
        return HelperStore(tmp_path / "conf" / "config.toml")


@pytest.mark.keyring
@pytest.mark.usefixtures("short_linger")
class TestKeyringThroughHelper(TestKeyringStore):
    def make_store(self, tmp_path):
        return HelperStore(tmp_path / "conf" / "config.toml", forced_backend=KEYRING, keyring_timeout=30)

    def reopen(self, store, tmp_path):
        return HelperStore(tmp_path / "conf" / "config.toml", keyring_timeout=30)
