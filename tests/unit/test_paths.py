"""The socket directory: made 0700 with its parents, refused when it is no directory (the rest of the rule
is proven against real daemons in tests/adversarial/test_local_users.py)."""

from __future__ import annotations

import os
import stat

import pytest

from convocationsd.common import paths
from convocationsd.core.errors import UntrustedSocket


def test_missing_directories_are_made_0700_whatever_the_umask(short_tmp):
    old = os.umask(0)
    try:
        paths.ensure_socket_dir(short_tmp / "a" / "b")
    finally:
        os.umask(old)
    for d in (short_tmp / "a", short_tmp / "a" / "b"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_a_file_is_not_a_socket_directory(short_tmp):
    (short_tmp / "f").write_text("")
    with pytest.raises(UntrustedSocket, match="is not a directory"):
        paths.check_socket_dir(short_tmp / "f")
