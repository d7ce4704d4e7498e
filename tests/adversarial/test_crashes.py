"""Crashes and restarts: kill -9 in the middle of an exchange and in the middle of config writes.

After a restart config.toml parses, the stored key is intact (the old one or the new one, never a
mix), the stale socket is recovered, and a ``convctl oauth start`` that was waiting says the login was
lost and how to start again.
"""

from __future__ import annotations

import random
import threading
import time
import tomllib

import pytest

from convocationsd.client import Client
from convocationsd.core.errors import ConvError
from tests.adversarial.harness import FakeThread, callback, kill, query_of
from tests.conftest import read_auth_url_sync

OLD_KEY = "sk-or-v1-" + "0" * 64


@pytest.fixture
def fake_crash(request):
    f = FakeThread()
    request.addfinalizer(f.close)
    return f


def _wait_status(d, status: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow = d.call("status")["flow"]
        if flow and flow["status"] == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"flow never reached {status}")


def _config_ok(d) -> dict:
    path = d.config_dir / "config.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def test_kill_9_during_exchange(daemon_factory, fake_crash):
    """kill -9 while the code is being exchanged: the waiting convctl exits 3 saying the login was lost and how
    to start again; after a restart the stale socket is recovered, the old key is intact, and nothing is pending."""
    d = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake_crash.url)
    d.call("secret.set", {"key": OLD_KEY})
    fake_crash.config.exchange_delay = 5.0
    proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    try:
        location = fake_crash.approve(read_auth_url_sync(proc))
        browser = threading.Thread(target=lambda: _ignore(callback, d.port, query_of(location)), daemon=True)
        browser.start()
        _wait_status(d, "exchanging")
        kill(d)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, (out, err)
    assert "lost" in err and "convctl oauth start" in err and "convocationsd" in err, err
    assert "Traceback" not in err

    assert d.socket.exists()  # left behind by the kill
    again = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake_crash.url)
    assert "stale socket" in again.log()
    st = again.call("status")
    assert st["flow"] is None and st["pid"] == again.proc.pid
    assert again.call("secret.get") == {"key": OLD_KEY}
    _config_ok(again)
    # the dead login's code cannot complete anything now
    _, page = callback(again.port, query_of(location))
    assert page is not None and "No login is in progress" in page.text
    assert again.call("secret.get") == {"key": OLD_KEY}


def _ignore(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def test_kill_9_during_config_writes(daemon_factory):
    """kill -9 at random moments while secret.set runs in a loop (3 rounds): config.toml always parses and the key
    read back is one that was written, whole; leftover temp files do not break the next write."""
    rng = random.Random(6)
    written = {OLD_KEY}
    d = daemon_factory()
    d.call("secret.set", {"key": OLD_KEY})
    for round_ in range(3):
        stop = threading.Event()

        def writer(d=d, round_=round_, stop=stop) -> None:
            i = 0
            try:
                with Client(d.socket, timeout=5) as c:
                    while not stop.is_set():
                        key = f"sk-or-v1-{round_}{i:063d}"
                        written.add(key)
                        c.call("secret.set", {"key": key})
                        i += 1
            except ConvError:
                pass  # the daemon died under us: expected

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(0.15 + rng.random() * 0.35)
        kill(d)
        stop.set()
        t.join(10)
        cfg = _config_ok(d)
        assert cfg.get("openrouter_api_key", {}).get("backend") == "local-encrypted"
        d = daemon_factory()
        key = d.call("secret.get")["key"]
        assert key in written, "a key that was never written came back"
    d.call("secret.set", {"key": OLD_KEY})  # the next write cleans up after the killed writers
    assert not [p for p in d.config_dir.iterdir() if p.name.endswith(".tmp")]
    assert d.call("secret.get") == {"key": OLD_KEY}
    assert "Traceback" not in d.log()


def test_convctl_waiting_when_daemon_is_killed_while_pending(daemon_factory):
    """kill -9 while a login waits for the browser: convctl exits 3 with one clear sentence and what to do."""
    d = daemon_factory()
    proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    try:
        read_auth_url_sync(proc)
        _wait_status(d, "pending")
        kill(d)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, (out, err)
    assert "lost" in err and "convctl oauth start" in err, err
    assert "Traceback" not in err
