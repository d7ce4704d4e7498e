"""A gnome-keyring of a chosen HOME on a private session bus, for tests that need a keyring in a known state
(locked, or made with some password) rather than the unlocked one of tests/with-keyring.sh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.dbus_session import PrivateBus

TOOLS = ("dbus-daemon", "gnome-keyring-daemon", "gdbus")


def missing_tools() -> str | None:
    """Why no gnome-keyring can run here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install dbus gnome-keyring libglib2.0-bin)"
    return None


@contextmanager
def gnome_keyring(env: dict[str, str], password: str | None, listen: Path | None = None) -> Iterator[dict[str, str]]:
    """Starts gnome-keyring for ``env``'s HOME on a bus of its own (at the socket path ``listen``, if given),
    its login keyring unlocked with ``password`` (created with it if new) or left locked (None). Yields ``env``
    pointed at that bus; stops both afterwards, so nothing it started outlives the test."""
    bus = PrivateBus(listen)
    try:
        env = {**env, "DBUS_SESSION_BUS_ADDRESS": bus.address}
        unlock = ["--unlock"] if password is not None else []
        # In the foreground: our child, stopped below (daemonized, it would outlive the bus).
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", *unlock, "--components=secrets"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert keyring.stdin is not None
            keyring.stdin.write((password or "").encode())
            keyring.stdin.close()
            # Ready once it owns the name; asked before that, the bus would start a second gnome-keyring.
            subprocess.run(
                ["gdbus", "wait", "--address", bus.address, "--timeout", "30", "org.freedesktop.secrets"],
                check=True,
                timeout=60,
                capture_output=True,
            )
            yield env
        finally:
            keyring.terminate()
            keyring.wait(10)
    finally:
        bus.close()


@contextmanager
def locked_gnome_keyring(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """gnome-keyring for ``env``'s HOME whose login collection exists, protected by a password, and stays
    locked (the desktop whose keyring nobody unlocked). Yields ``env`` pointed at its bus."""
    with gnome_keyring(env, "test-password") as unlocked:  # creates the collection with that password
        probe = "import keyring; keyring.set_password('probe', 'probe', 'x')"
        subprocess.run([sys.executable, "-c", probe], env=unlocked, capture_output=True, timeout=60, check=True)
    with gnome_keyring(env, None) as locked:
        yield locked
