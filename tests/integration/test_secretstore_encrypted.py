"""The local-encrypted backend: secret.key handling and damaged ciphertext."""

from __future__ import annotations

import base64
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretstore_contract import (
    assert_key_hidden,
    assert_key_in_no_file,
    new_key,
    no_test_key_in_any_log,  # noqa: F401 (autouse fixture)
)

from convocationsd.core.errors import SecretStoreError
from convocationsd.store import configfile
from convocationsd.store.configured import open_store
from convocationsd.store.encrypted import AAD, LocalEncrypted


@pytest.fixture
def conf(tmp_path):
    return tmp_path / "convocations" / "config.toml"


@pytest.fixture
def store(conf):
    return open_store(conf, forced_backend="local-encrypted")


def key_file(conf: Path) -> Path:
    return conf.parent / "secret.key"


def edit_table(conf: Path, **changes) -> None:
    def mutate(doc):
        for name, value in changes.items():
            doc["openrouter_api_key"][name] = value

    configfile.update(conf, mutate)


def test_master_key_created_private_and_32_bytes(store, conf, caplog):
    key = new_key()
    store.set(key)
    path = key_file(conf)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
    assert not [p for p in conf.parent.iterdir() if p.name.endswith(".tmp")]
    assert_key_in_no_file(key, conf.parent)
    assert_key_hidden(key, caplog)


def test_existing_master_key_is_used_and_never_overwritten(store, conf, caplog):
    conf.parent.mkdir(mode=0o700)
    master = os.urandom(32)
    fd = os.open(key_file(conf), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, master)
    os.close(fd)
    key = new_key()
    for _ in range(3):
        store.set(key)
    assert key_file(conf).read_bytes() == master
    # the blob really is AES-256-GCM under that master key with the purpose-bound associated data
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    table = configfile.load(conf)["openrouter_api_key"]
    nonce, ct = base64.b64decode(table["nonce"]), base64.b64decode(table["ciphertext"])
    assert len(nonce) == 12
    assert AESGCM(master).decrypt(nonce, ct, AAD).decode() == key
    assert_key_hidden(key, caplog)


def test_every_write_uses_a_fresh_nonce(store, conf, caplog):
    key = new_key()
    seen = set()
    for _ in range(5):
        store.set(key)
        table = configfile.load(conf)["openrouter_api_key"]
        seen.add((table["nonce"], table["ciphertext"]))
    assert len(seen) == 5
    assert_key_hidden(key, caplog)


@pytest.mark.parametrize("perm", [0o644, 0o640, 0o604, 0o660])
def test_readable_master_key_is_refused(store, conf, perm, caplog):
    key = new_key()
    store.set(key)
    path = key_file(conf)
    path.chmod(perm)
    before_key, before_conf = path.read_bytes(), conf.read_bytes()
    with pytest.raises(SecretStoreError) as info:
        store.get()
    assert f"{perm:04o}" in info.value.message and str(path) in info.value.message
    assert info.value.hint == f"Run: chmod 600 {path}"
    with pytest.raises(SecretStoreError):
        store.set(new_key())
    assert path.read_bytes() == before_key and conf.read_bytes() == before_conf
    assert stat.S_IMODE(path.stat().st_mode) == perm  # not silently "fixed"
    assert_key_hidden(key, caplog, info.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_wrong_size_master_key_is_refused_and_kept(store, conf, size):
    conf.parent.mkdir(mode=0o700)
    fd = os.open(key_file(conf), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"k" * size)
    os.close(fd)
    with pytest.raises(SecretStoreError) as info:
        store.set(new_key())
    assert f"{size} bytes" in info.value.message
    assert key_file(conf).read_bytes() == b"k" * size
    assert not conf.exists()


def test_symlinked_master_key_is_refused(store, conf, tmp_path):
    conf.parent.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.key"
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    key_file(conf).symlink_to(target)
    with pytest.raises(SecretStoreError) as info:
        store.set(new_key())
    assert "symbolic link" in info.value.message


def test_missing_master_key_is_reported(store, conf, caplog):
    key = new_key()
    store.set(key)
    key_file(conf).unlink()
    with pytest.raises(SecretStoreError) as info:
        store.get()
    assert "missing" in info.value.message
    assert_key_hidden(key, caplog, info.value)


def test_other_master_key_is_reported(store, conf, caplog):
    key = new_key()
    store.set(key)
    key_file(conf).write_bytes(os.urandom(32))
    with pytest.raises(SecretStoreError) as info:
        store.get()
    assert "cannot be decrypted" in info.value.message
    assert_key_hidden(key, caplog, info.value)


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda t: {"ciphertext": _flip(t["ciphertext"], 0)}, id="flipped-ciphertext-bit"),
        pytest.param(lambda t: {"ciphertext": _flip(t["ciphertext"], -1)}, id="flipped-tag-bit"),
        pytest.param(lambda t: {"nonce": _flip(t["nonce"], 3)}, id="flipped-nonce-bit"),
        pytest.param(
            lambda t: {"ciphertext": base64.b64encode(base64.b64decode(t["ciphertext"])[:-4]).decode()},
            id="truncated-ciphertext",
        ),
        pytest.param(lambda t: {"ciphertext": t["ciphertext"][:-6]}, id="truncated-base64"),
        pytest.param(lambda t: {"ciphertext": "AAAA"}, id="shorter-than-a-tag"),
        pytest.param(lambda t: {"nonce": base64.b64encode(b"short").decode()}, id="short-nonce"),
        pytest.param(lambda t: {"ciphertext": "not base64 at all!"}, id="bad-base64"),
        pytest.param(lambda t: {"nonce": "%%%%"}, id="bad-base64-nonce"),
    ],
)
def test_damaged_blob_is_a_clear_error_and_nothing_is_overwritten(store, conf, damage, caplog):
    key = new_key()
    store.set(key)
    table = configfile.load(conf)["openrouter_api_key"]
    edit_table(conf, **damage(table))
    before_conf, before_key = conf.read_bytes(), key_file(conf).read_bytes()
    with pytest.raises(SecretStoreError) as info:
        store.get()
    assert "damaged" in info.value.message or "cannot be decrypted" in info.value.message
    assert str(conf) in info.value.message
    assert "set-openrouter-key" in info.value.hint
    assert conf.read_bytes() == before_conf and key_file(conf).read_bytes() == before_key
    assert store.status().to_dict() == {"stored": True, "backend": "local-encrypted"}
    assert_key_hidden(key, caplog, info.value)
    # storing again repairs it
    store.set(key)
    assert store.get() == key


def test_blob_bound_to_its_purpose(conf):
    """A blob sealed for something else under the same master key does not decrypt as the API key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    backend = LocalEncrypted(conf.parent / "secret.key")
    backend.encrypt("warm up: creates secret.key")
    master = (conf.parent / "secret.key").read_bytes()
    nonce = os.urandom(12)
    other = AESGCM(master).encrypt(nonce, b"sk-or-v1-other", b"convocations/something_else/v1")
    with pytest.raises(SecretStoreError):
        backend.decrypt(base64.b64encode(nonce).decode(), base64.b64encode(other).decode())


def test_concurrent_first_writes_agree_on_one_master_key(conf):
    backends = [LocalEncrypted(conf.parent / "secret.key") for _ in range(8)]
    results: list = [None] * len(backends)
    barrier = threading.Barrier(len(backends))

    def run(i):
        barrier.wait()
        results[i] = backends[i].encrypt(f"sk-or-v1-{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(backends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = LocalEncrypted(conf.parent / "secret.key")
    for i, (nonce, ct) in enumerate(results):
        assert reader.decrypt(nonce, ct) == f"sk-or-v1-{i}"
    assert [p.name for p in conf.parent.iterdir()] == ["secret.key"]
