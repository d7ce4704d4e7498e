"""The leak scanner of the secret-store tests: it finds a key in any regular file, and reads nothing else."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretstore_contract import assert_key_in_no_file, new_key


def test_a_key_in_a_nested_file_is_found(tmp_path):
    key = new_key()
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "config.toml").write_text(f"x = 1\nkey = '{key}'\n")
    with pytest.raises(AssertionError, match=r"plaintext key found in .*config\.toml"):
        assert_key_in_no_file(key, tmp_path)


def test_sockets_and_links_are_not_read(short_tmp):
    """gnome-keyring keeps a control socket in the scanned runtime dir: opening it fails with ENXIO. A link
    may lead out of the directory, to a file that is not the store's."""
    key = new_key()
    scanned = short_tmp / "scanned"
    scanned.mkdir()
    elsewhere = short_tmp / "elsewhere.txt"
    elsewhere.write_text(key)
    (scanned / "link").symlink_to(elsewhere)
    (scanned / "plain").write_text("no key here")
    with socket.socket(socket.AF_UNIX) as control:
        control.bind(str(scanned / "control"))
        assert_key_in_no_file(key, scanned)
