"""Desktop integration on the D-Bus session bus: notifications and the ``io.convocations.Daemon1`` object.

This is the only module that touches pydbus/GLib. Both are optional (``pip install convocationsd[desktop]``)
and imported lazily, on a thread of our own. pydbus is synchronous, so nothing here runs on the asyncio thread
except queueing:

* one thread ("convocationsd-dbus") connects, exports the object and runs a ``GLib.MainLoop``. Method calls
  arrive on it and wait for the asyncio loop (``run_coroutine_threadsafe``); signals are emitted from it
  (``GLib.idle_add``), so they keep the order of the events;
* one worker ("convocationsd-notify") makes the ``Notify`` round trips, which may wait on a slow server.

Without pydbus/PyGObject or without a session bus, ``start`` logs one line and returns None: the daemon runs
on. Only the session bus is ever used. The interface is described in docs/dbus.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from convocationsd.common import session_bus
from convocationsd.core import events

log = logging.getLogger(__name__)

BUS_NAME = "io.convocations.Daemon1"
OBJECT_PATH = "/io/convocations/Daemon1"
INTERFACE = "io.convocations.Daemon1"

INTROSPECTION = f"""<node>
  <interface name="{INTERFACE}">
    <method name="Status">
      <arg direction="out" type="s" name="status_json"/>
    </method>
    <method name="StartOAuth">
      <arg direction="in" type="b" name="restart"/>
      <arg direction="out" type="s" name="reply_json"/>
    </method>
    <signal name="Event">
      <arg type="s" name="event"/>
      <arg type="s" name="data_json"/>
    </signal>
  </interface>
</node>"""

STARTUP_TIMEOUT = 5.0  # import + connect + name request; a hung bus must not hold up the daemon
CALL_TIMEOUT = 10.0  # a D-Bus method call waiting for the asyncio loop
NOTIFY_TIMEOUT = 3.0  # one Notify round trip (also bounds how long shutdown waits for it)
JOIN_TIMEOUT = 3.0

APP_NAME = "Convocations"
LINKED = ("OpenRouter account linked", "Convocations can now use your OpenRouter account.")
NOT_LINKED = "OpenRouter account not linked"


class Unavailable(Exception):
    """Why desktop integration is off; the text completes 'desktop integration is off: ...'."""


def notification_text(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """(summary, body) for an ``openrouter-auth-complete`` event, or None when nobody needs telling.

    A cancelled or replaced login was ended on purpose (`convctl oauth cancel`, shutdown, a restart), so it
    stays quiet. The event never holds the key or the code, so neither can reach the notification."""
    if data.get("success"):
        return LINKED
    error = data.get("error") or {}
    if error.get("code") in ("cancelled", "replaced"):
        return None
    body = "\n".join(str(error[k]) for k in ("message", "hint") if error.get(k))
    return NOT_LINKED, body


async def start(
    controller: Any, bus: events.EventBus, *, notifications: bool | None, env: Mapping[str, str]
) -> Desktop | None:
    """Connects to the session bus, exports the object and listens to ``bus``; None when that cannot be."""
    # Asked for explicitly and impossible: a warning. Left at the default (on a server, say): just info.
    level = logging.WARNING if notifications else logging.INFO
    address = session_bus.address(env)
    if address is None:
        log.log(
            level,
            "desktop integration is off: %s; the daemon runs on without notifications and D-Bus signals",
            session_bus.NO_BUS,
        )
        return None
    desktop = Desktop(controller, asyncio.get_running_loop(), notify=notifications is not False)
    try:
        await desktop.started(address)
    except Exception as e:  # Unavailable, or anything unforeseen: the daemon must come up regardless
        log.log(
            level,
            "desktop integration is off: %s; the daemon runs on without notifications and D-Bus signals",
            e if isinstance(e, Unavailable) else _one_line(e),
        )
        return None
    bus.add_listener(desktop.on_event)
    log.info(
        "desktop integration on: %s on the session bus, notifications %s", BUS_NAME, "on" if desktop.notify else "off"
    )
    return desktop


class Desktop:
    def __init__(self, controller: Any, loop: asyncio.AbstractEventLoop, *, notify: bool) -> None:
        self.controller = controller
        self.loop = loop
        self.notify = notify
        self.closed = False
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._lock = threading.Lock()  # decides, once, whether a late start-up is kept or thrown away
        self._abandoned = False
        self._thread: threading.Thread | None = None
        self._glib: Any = None
        self._main_loop: Any = None
        self._con: Any = None  # pydbus Bus on a private connection
        self._exported: Any = None
        self._notifier: Any = None
        self._notify_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convocationsd-notify")

    async def started(self, address: str) -> None:
        self._thread = threading.Thread(target=self._main, args=(address,), name="convocationsd-dbus", daemon=True)
        self._thread.start()
        try:
            try:
                await asyncio.wait_for(asyncio.wrap_future(self._ready), STARTUP_TIMEOUT)
            except TimeoutError:
                with self._lock:
                    self._abandoned = not self._ready.done()
                if self._abandoned:
                    raise Unavailable(
                        f"the session bus at {address} did not answer within {STARTUP_TIMEOUT:.0f} s"
                    ) from None
                self._ready.result()  # it finished just as we gave up: keep it
        except Unavailable:
            self._notify_pool.shutdown(wait=False)
            raise

    # -- the GLib thread -----------------------------------------------------------------------------

    def _main(self, address: str) -> None:
        # Marked running so that the waiter's timeout cannot cancel it: the lock below settles that race.
        self._ready.set_running_or_notify_cancel()
        try:
            import pydbus
            from gi.repository import GLib
            from pydbus.generic import signal
        except Exception as e:  # ImportError, or a broken PyGObject (missing typelibs, version clash)
            self._ready.set_exception(
                Unavailable(
                    f"pydbus/PyGObject cannot be imported ({e}); `pip install 'convocationsd[desktop]'` adds them"
                )
            )
            return
        con = None
        try:
            # A private connection: unlike the shared one, closing it (the bus going away) does not exit
            # the process, and it uses the address we resolved instead of GLib's own guess.
            con = pydbus.connect(address)
            registration = con.register_object(OBJECT_PATH, _exported_object(self, signal), INTROSPECTION)
        except Exception as e:  # GLib.Error: bad address, refused, authentication failed, ...
            _quietly(con and (lambda: con.con.close_sync(None)))
            self._ready.set_exception(Unavailable(f"cannot use the session bus at {address} ({_one_line(e)})"))
            return
        owner = None
        try:
            owner = con.request_name(BUS_NAME, allow_replacement=False)
        except Exception as e:
            log.warning(
                "cannot own %s on the session bus (%s; is another convocationsd running?); its object "
                "stays reachable at %s only",
                BUS_NAME,
                _one_line(e),
                con.con.get_unique_name(),
            )
        on_closed = con.con.connect(
            "closed",
            lambda *_: log.warning(
                "the D-Bus session bus went away; desktop notifications and signals are off until the daemon restarts"
            ),
        )
        main_loop = GLib.MainLoop()
        with self._lock:
            if self._abandoned:
                _quietly(
                    owner and owner.unown,
                    registration.unregister,
                    lambda: con.con.disconnect(on_closed),
                    lambda: con.con.close_sync(None),
                )
                return
            self._glib, self._main_loop, self._con = GLib, main_loop, con
            self._ready.set_result(None)
        main_loop.run()
        # close() queued the quit behind any pending signal emissions; push them out, then leave the bus.
        _quietly(
            lambda: con.con.flush_sync(None),
            owner and owner.unown,
            registration.unregister,
            lambda: con.con.disconnect(on_closed),
            lambda: con.con.close_sync(None),
        )

    def _emit(self, name: str, data_json: str) -> bool:
        try:
            self._exported.Event(name, data_json)
        except Exception as e:
            log.debug("D-Bus signal %s not sent: %s", name, _one_line(e))
        return False  # one-shot idle callback

    def call_on_loop(self, fn: Callable[[], dict[str, Any]]) -> str:
        """Runs ``fn`` on the asyncio thread (the controller is not thread-safe) and returns its JSON."""

        async def run() -> dict[str, Any]:
            self.controller.touch()  # a D-Bus call is activity, like an IPC request
            return fn()

        result = asyncio.run_coroutine_threadsafe(run(), self.loop).result(CALL_TIMEOUT)
        return json.dumps(result, separators=(",", ":"))

    # -- the asyncio thread --------------------------------------------------------------------------

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        """EventBus listener: queues the signal and, for a finished login, the notification. Never blocks."""
        if self.closed:
            return
        self._glib.idle_add(self._emit, name, json.dumps(data, separators=(",", ":")))
        if name == events.AUTH_COMPLETE and self.notify:
            text = notification_text(data)
            if text is not None:
                self._notify_pool.submit(self._send_notification, *text)

    def _send_notification(self, summary: str, body: str) -> None:
        from html import escape  # here: html.entities is a few ms of a cold start that never notifies

        try:
            if self._notifier is None:
                self._notifier = self._con.get(
                    "org.freedesktop.Notifications", "/org/freedesktop/Notifications", timeout=NOTIFY_TIMEOUT
                )
            # The body may be read as markup (the spec's body-markup capability): escape it.
            self._notifier.Notify(
                APP_NAME, 0, "", summary, escape(body, quote=False), [], {}, -1, timeout=NOTIFY_TIMEOUT
            )
        except Exception as e:
            self._notifier = None  # the server may come back (or be a different one) next time
            log.warning("desktop notification %r not shown: %s", summary, _one_line(e))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # A notification already queued is still delivered; each waits NOTIFY_TIMEOUT at most.
        await asyncio.to_thread(self._notify_pool.shutdown, True)
        if self._main_loop is not None:
            self._glib.idle_add(self._main_loop.quit)
        if self._thread is not None:
            # Joined off the loop: a method call in progress on the GLib thread may be waiting for it.
            await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the D-Bus thread did not stop within %.0f s; leaving it", JOIN_TIMEOUT)


def _exported_object(desktop: Desktop, signal: Callable[[], Any]) -> Any:
    class Daemon1:
        # pydbus reads the interface from ``dbus`` and wires ``Event`` to emit_signal.
        dbus = INTROSPECTION
        Event = signal()

        def Status(self) -> str:
            ctl = desktop.controller
            return desktop.call_on_loop(ctl.status)

        def StartOAuth(self, restart: bool) -> str:
            ctl = desktop.controller
            return desktop.call_on_loop(lambda: ctl.start(restart=bool(restart)))

    obj = Daemon1()
    desktop._exported = obj
    return obj


def _one_line(e: BaseException) -> str:
    return " ".join(str(getattr(e, "message", None) or e).split()) or type(e).__name__


def _quietly(*steps: Callable[[], Any] | None) -> None:
    for step in steps:
        if step:
            try:
                step()
            except Exception as e:
                log.debug("D-Bus clean-up step failed: %s", _one_line(e))
