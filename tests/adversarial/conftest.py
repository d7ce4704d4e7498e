"""Fixtures of the adversarial suite; the helpers they use are in ``harness.py``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.harness import FakeThread, kill
from tests.conftest import DaemonProcess, start_daemon


@pytest.fixture(scope="module")
def mod_fake() -> Iterator[FakeThread]:
    f = FakeThread()
    yield f
    f.close()


@pytest.fixture
def fake_t(mod_fake: FakeThread) -> Iterator[FakeThread]:
    """The module's fake with default switches for this test; what the daemon sent must suit OpenRouter's SDK."""
    mod_fake.reset_config()
    yield mod_fake
    mod_fake.reset_config()
    assert mod_fake.fake.request_problems == [], "the daemon sent an exchange that OpenRouter's SDK would not"


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cva"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def module_daemon(request, module_tmp: Path, mod_fake: FakeThread) -> Iterator[DaemonProcess]:
    """One daemon for a whole module, pointed at the module's fake (plus the module's ``DAEMON_ENV``)."""
    env = {"CONVOCATIONS_OPENROUTER_URL": mod_fake.url, **getattr(request.module, "DAEMON_ENV", {})}
    d = start_daemon(module_tmp, **env)
    yield d
    kill(d)


@pytest.fixture
def mdaemon(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module daemon, alive, with no flow pending before and after the test."""
    assert module_daemon.proc.poll() is None, (
        "the shared daemon died in an earlier test:\n" + module_daemon.log()[-3000:]
    )
    module_daemon.call("oauth.cancel")
    yield module_daemon
    if module_daemon.proc.poll() is None:
        module_daemon.call("oauth.cancel")
