"""Which D-Bus session bus this session has: one answer for the daemon's notifications, the OS keyring (in
the daemon's helper, in convctl, in doctor's probe) and every message that names the bus.

``DBUS_SESSION_BUS_ADDRESS`` when set, else ``unix:path=$XDG_RUNTIME_DIR/bus`` when that is a socket (systemd's
per-user bus: what libdbus and GLib fall back to as well), else none. keyring's Secret Service backend
(jeepney) reads only the variable, so :func:`export` sets it from the fallback before keyring looks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, MutableMapping

VARIABLE = "DBUS_SESSION_BUS_ADDRESS"
NO_BUS = "there is no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset and $XDG_RUNTIME_DIR/bus does not exist)"
# D-Bus address values may hold these bytes as they are; every other byte is escaped as %xx.
_PLAIN = frozenset(b"-_/.\\*0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def address(env: Mapping[str, str]) -> str | None:
    """The session bus of ``env``, or None. Resolved here rather than by a library's own guess, so it comes
    from the given environment and never from X11 autolaunch or the system bus."""
    given = env.get(VARIABLE, "").strip()
    if given:
        return given
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        path = os.path.join(runtime, "bus")
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return "unix:path=" + escape(path)
        except OSError:
            pass
    return None


def escape(value: str) -> str:
    return "".join(chr(b) if b in _PLAIN else f"%{b:02x}" for b in os.fsencode(value))


def export(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Sets ``DBUS_SESSION_BUS_ADDRESS`` in ``environ`` from the fallback when it is unset or empty, so that
    libraries reading only the variable find the same bus; returns the address (None: no bus)."""
    found = address(environ)
    if found is not None:
        environ[VARIABLE] = found
    return found
