"""Where the key lives in the OS keyring, as docs/protocol.md tells other programs (the Convocations app
itself) to find it: checked with secret-tool, libsecret's own command line, against the real gnome-keyring
on the test session bus, after the daemon stored the key through `secret.set`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretstore_contract import clean_secret_service

from tests.conftest import start_daemon

pytestmark = pytest.mark.keyring

SECRET_TOOL = shutil.which("secret-tool")
LOOKUP = ["service", "convocations", "username", "openrouter_api_key"]  # what docs/protocol.md says to use


@pytest.fixture
def secret_service():
    yield from clean_secret_service()


def secret_tool(*args: str) -> subprocess.CompletedProcess:
    assert SECRET_TOOL is not None
    return subprocess.run([SECRET_TOOL, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(SECRET_TOOL is None, reason="secret-tool is not installed (libsecret-tools)")
def test_the_key_is_where_the_protocol_document_says(short_tmp, secret_service):
    d = start_daemon(short_tmp, CONVOCATIONS_SECRET_BACKEND="keyring")
    key = "sk-or-v1-" + "5e" * 32
    try:
        assert d.call("secret.set", {"key": key}) == {"stored": True, "backend": "keyring"}

        found = secret_tool("lookup", *LOOKUP)
        assert found.returncode == 0 and found.stdout == key, "secret-tool lookup did not find the key"

        # The item as other tools list it: its label and attributes (the secret line is left out).
        listed = secret_tool("search", "--all", *LOOKUP)
        fields = dict(
            line.split(" = ", 1)
            for line in (listed.stdout + listed.stderr).splitlines()
            if " = " in line and not line.startswith("secret")
        )
        assert fields["label"] == "Password for 'openrouter_api_key' on 'convocations'"
        assert fields["attribute.service"] == "convocations"
        assert fields["attribute.username"] == "openrouter_api_key"
        assert fields["attribute.application"] == "Python keyring library"
        assert fields["schema"] == "org.freedesktop.Secret.Generic"

        assert d.call("secret.clear") == {"cleared": True}
        assert secret_tool("lookup", *LOOKUP).stdout == ""
    finally:
        d.stop()
    assert key not in d.log()
