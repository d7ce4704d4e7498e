"""D-Bus pieces for the desktop tests: a private session bus, a recording notification server, a subscriber.

Each test gets its own ``dbus-daemon`` so that names, calls and signals from other tests (or from the outer
``dbus-run-session`` that runs the suite) never mix in. The notification server is python-dbusmock's
``notification_daemon`` template; its calls are read back through dbusmock's ``GetCalls``. The subscriber is
a plain pydbus client with its own GLib main loop on a thread, as a GTK frontend would have.

pydbus is blocking: call these from a worker thread (``asyncio.to_thread``) inside async tests, so that the
fake OpenRouter, which runs on the test's event loop, keeps answering.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
DAEMON = "io.convocations.Daemon1"
DAEMON_PATH = "/io/convocations/Daemon1"


def missing_tools() -> str | None:
    """Why the D-Bus tests cannot run here, or None."""
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon is not installed (apt-get install dbus)"
    try:
        import dbusmock  # noqa: F401
        import pydbus  # noqa: F401
        from gi.repository import GLib  # noqa: F401
    except ImportError as e:
        return f"{e}; install with pip install -e '.[test,desktop]'"
    return None


class PrivateBus:
    """A session ``dbus-daemon`` of our own; ``listen`` is a path for a fixed socket (e.g. $XDG_RUNTIME_DIR/bus),
    else its socket goes in $TMPDIR (session.conf's /tmp may not be writable)."""

    def __init__(self, listen: Path | None = None) -> None:
        address = f"unix:path={listen}" if listen is not None else f"unix:tmpdir={tempfile.gettempdir()}"
        args = ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1", f"--address={address}"]
        # stderr is dropped: dbus-daemon complains there that it may not raise its fd limit.
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.close()
            raise RuntimeError("dbus-daemon printed no address")

    def connect(self):
        import pydbus

        return pydbus.connect(self.address)

    def wait_for_name(self, name: str, timeout: float = 10.0) -> None:
        with self.connect() as bus:
            deadline = time.monotonic() + timeout
            while not bus.dbus.NameHasOwner(name):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not appear on the bus")
                time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class FakeNotifications:
    """python-dbusmock's notification daemon on ``bus``; ``notify_calls()`` lists the recorded Notify args."""

    def __init__(self, bus: PrivateBus) -> None:
        self.bus = bus
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--session", "-t", "notification_daemon"],
            env={"DBUS_SESSION_BUS_ADDRESS": bus.address, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bus.wait_for_name(NOTIFICATIONS)

    def notify_calls(self) -> list[dict]:
        with self.bus.connect() as con:
            mock = con.get(NOTIFICATIONS, NOTIFICATIONS_PATH)["org.freedesktop.DBus.Mock"]
            calls = mock.GetCalls()
        names = ("app_name", "replaces_id", "app_icon", "summary", "body", "actions", "hints", "expire_timeout")
        return [dict(zip(names, args, strict=False)) for _, method, args in calls if method == "Notify"]

    def wait_for_calls(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(calls := self.notify_calls()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return calls

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class SignalRecorder:
    """Subscribes to ``io.convocations.Daemon1.Event`` like a frontend would; keeps (event, data) pairs."""

    def __init__(self, bus: PrivateBus) -> None:
        from gi.repository import GLib

        self._glib = GLib
        self.events: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._context = GLib.MainContext()
        self._loop = GLib.MainLoop(self._context)
        self._thread = threading.Thread(target=self._run, args=(bus,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the subscriber did not start")

    def _run(self, bus: PrivateBus) -> None:
        # Subscriptions deliver to the thread-default context at the time they are made: ours.
        self._context.push_thread_default()
        try:
            with bus.connect() as con:
                con.subscribe(iface=DAEMON, signal="Event", object=DAEMON_PATH, signal_fired=self._fired)
                self._context.invoke_full(self._glib.PRIORITY_DEFAULT, lambda: self._ready.set())
                self._loop.run()
        finally:
            self._context.pop_thread_default()

    def _fired(self, sender, path, iface, signal, params) -> None:
        name, data = params
        with self._cond:
            self.events.append((name, json.loads(data)))
            self._cond.notify_all()

    def wait_for(self, name: str, timeout: float = 10.0) -> dict:
        with self._cond:
            found = self._cond.wait_for(lambda: any(n == name for n, _ in self.events), timeout)
            if not found:
                raise TimeoutError(f"no {name} signal; got {self.events}")
            return next(d for n, d in self.events if n == name)

    def close(self) -> None:
        self._context.invoke_full(self._glib.PRIORITY_DEFAULT, self._loop.quit)
        self._thread.join(5)


def call_daemon(bus: PrivateBus, method: str, *args):
    """Calls a method of io.convocations.Daemon1 from a fresh client connection; JSON replies are decoded."""
    with bus.connect() as con:
        reply = getattr(con.get(DAEMON, DAEMON_PATH)[DAEMON], method)(*args, timeout=15)
    return json.loads(reply)


def introspect_daemon(bus: PrivateBus) -> str:
    with bus.connect() as con:
        return con.get(DAEMON, DAEMON_PATH)["org.freedesktop.DBus.Introspectable"].Introspect()
