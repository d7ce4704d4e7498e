"""Desktop integration over D-Bus, for real: a daemon process on a private session bus, python-dbusmock's
notification server recording Notify calls, a pydbus subscriber, and the fake OpenRouter.

Every test that needs a bus starts its own ``dbus-daemon`` (tests/helpers/dbus_session.py), so the outer
``dbus-run-session`` of the suite is never relied on. Without dbus-daemon, pydbus or python-dbusmock those
tests skip with the reason; the no-bus and no-pydbus tests need none of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from convocationsd.core import events
from convocationsd.core.flows import DENIED, REPLACED
from convocationsd.daemon import desktop
from tests.conftest import assert_no_secret, follow_callback
from tests.helpers.dbus_session import (
    FakeNotifications,
    PrivateBus,
    SignalRecorder,
    call_daemon,
    introspect_daemon,
    missing_tools,
)

MISSING = missing_tools()
needs_dbus = pytest.mark.skipif(MISSING is not None, reason=f"D-Bus tests need more tools: {MISSING}")


@pytest.fixture
def private_bus():
    bus = PrivateBus()
    yield bus
    bus.close()


@pytest.fixture
def notifications(private_bus):
    server = FakeNotifications(private_bus)
    yield server
    server.close()


@pytest.fixture
def recorder(private_bus):
    rec = SignalRecorder(private_bus)
    yield rec
    rec.close()


async def _daemon(daemon_factory, fake, bus: PrivateBus | None = None, **env: str):
    if bus is not None:
        env["DBUS_SESSION_BUS_ADDRESS"] = bus.address
    return await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, **env)


async def _link(d, fake, start_reply: dict | None = None) -> str:
    """Runs a login to success from an oauth.start reply; returns the callback location (it holds the code)."""
    reply = start_reply or d.call("oauth.start")
    location = await fake.approve(reply["auth_url"])
    status, _, html = await follow_callback(location)
    assert status == 200 and "OpenRouter account linked" in html
    return location


def _interface(xml: str) -> set:
    """The io.convocations.Daemon1 members of an introspection document, as (kind, name, ((type, dir), ...))."""
    from xml.etree import ElementTree

    (iface,) = [i for i in ElementTree.fromstring(xml).iter("interface") if i.get("name") == desktop.INTERFACE]
    return {(m.tag, m.get("name"), tuple((a.get("type"), a.get("direction")) for a in m.iter("arg"))) for m in iface}


def _desktop_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "convocationsd.daemon.desktop:" in line]


async def _stop(d) -> None:
    rc = await asyncio.to_thread(d.stop, signal.SIGTERM)
    assert rc == 0, d.log()
    assert "Traceback" not in d.log() and "did not stop" not in d.log()


# -- notifications --------------------------------------------------------------------------------------


@needs_dbus
async def test_completed_flow_sends_exactly_one_notification_without_key_or_code(
    daemon_factory, fake, private_bus, notifications
):
    d = await _daemon(daemon_factory, fake, private_bus)
    location = await _link(d, fake)
    assert len(await asyncio.to_thread(notifications.wait_for_calls, 1)) == 1
    await _stop(d)  # whatever was still queued has been sent by now

    calls = await asyncio.to_thread(notifications.notify_calls)
    assert len(calls) == 1, calls  # not one per event: key-changed and started stay quiet
    (n,) = calls
    assert n["app_name"] == "Convocations" and n["summary"] == "OpenRouter account linked"
    assert n["body"] == "Convocations can now use your OpenRouter account."
    key = fake.issued_keys[-1]
    code = parse_qs(urlsplit(location).query)["code"][0]
    assert_no_secret(key, json.dumps(calls), d.all_output())
    assert code not in json.dumps(calls)
    assert "desktop integration on" in d.log()


@needs_dbus
async def test_failed_flow_notifies_reason_and_hint_but_a_cancel_does_not(
    daemon_factory, fake, private_bus, notifications
):
    d = await _daemon(daemon_factory, fake, private_bus)
    d.call("oauth.start")
    reply = d.call("oauth.start", {"restart": True})  # cancels the first: asked for, so no notification
    location = await fake.deny(reply["auth_url"])
    status, _, _ = await follow_callback(location)
    assert status == 400
    await asyncio.to_thread(notifications.wait_for_calls, 1)
    await _stop(d)

    calls = await asyncio.to_thread(notifications.notify_calls)
    assert [c["summary"] for c in calls] == ["OpenRouter account not linked"]
    assert calls[0]["body"] == f"{DENIED.message}\n{DENIED.hint}"  # plain text: nothing to escape in it


@needs_dbus
async def test_notifications_off_still_exports_signals(daemon_factory, fake, private_bus, notifications, recorder):
    d = await _daemon(daemon_factory, fake, private_bus, CONVOCATIONS_DESKTOP_NOTIFICATIONS="false")
    await _link(d, fake)
    assert (await asyncio.to_thread(recorder.wait_for, events.AUTH_COMPLETE))["success"] is True
    await _stop(d)
    assert await asyncio.to_thread(notifications.notify_calls) == []
    assert "notifications off" in d.log()


# -- signals and methods --------------------------------------------------------------------------------


def documented_signal_data() -> dict[str, set[str]]:
    """The fields of each event in docs/dbus.md's example of the signal's arguments."""
    from tests.conftest import ROOT

    found = {}
    for line in (ROOT / "docs" / "dbus.md").read_text().splitlines():
        name, _, data = line.partition(" ")
        if name in (events.AUTH_STARTED, events.AUTH_COMPLETE, events.KEY_CHANGED) and data.strip().startswith("{"):
            found[name] = set(json.loads(data))
    return found


@needs_dbus
async def test_subscriber_on_the_bus_gets_the_same_events_as_the_socket(daemon_factory, fake, private_bus, recorder):
    d = await _daemon(daemon_factory, fake, private_bus)
    sub = await d.aclient()
    await sub.call("subscribe")
    await _link(d, fake)

    socket_events = []
    async for ev in sub.events():
        socket_events.append((ev["event"], ev["data"]))
        if ev["event"] == events.KEY_CHANGED:
            break
    await sub.close()
    complete = await asyncio.to_thread(recorder.wait_for, events.AUTH_COMPLETE)
    assert complete["success"] is True and complete["error"] is None
    await asyncio.to_thread(recorder.wait_for, events.KEY_CHANGED)
    # same names, same order, same data as the socket's params.data
    assert recorder.events == socket_events
    assert [n for n, _ in socket_events] == [events.AUTH_STARTED, events.AUTH_COMPLETE, events.KEY_CHANGED]
    assert {name: set(data) for name, data in socket_events} == documented_signal_data()  # docs/dbus.md's example
    assert_no_secret(fake.issued_keys[-1], json.dumps(recorder.events))
    await _stop(d)


@needs_dbus
async def test_shutdown_sends_the_cancel_signal_then_leaves_the_bus(daemon_factory, fake, private_bus, recorder):
    d = await _daemon(daemon_factory, fake, private_bus)
    started = d.call("oauth.start")
    await _stop(d)
    done = await asyncio.to_thread(recorder.wait_for, events.AUTH_COMPLETE)
    assert done["session_id"] == started["session_id"] and done["error"]["code"] == "cancelled"
    assert "session bus went away" not in d.log()
    with private_bus.connect() as con:
        assert not con.dbus.NameHasOwner(desktop.BUS_NAME)


@needs_dbus
async def test_start_oauth_and_status_over_dbus_match_the_socket(daemon_factory, fake, private_bus):
    d = await _daemon(daemon_factory, fake, private_bus)
    over_dbus = await asyncio.to_thread(call_daemon, private_bus, "StartOAuth", False)
    over_socket = d.call("oauth.start")  # joins the flow D-Bus started
    assert set(over_dbus) == set(over_socket) == {"session_id", "auth_url", "callback_url", "expires_at", "joined"}
    assert over_dbus["joined"] is False and over_socket["joined"] is True
    assert {k: v for k, v in over_dbus.items() if k != "joined"} == {
        k: v for k, v in over_socket.items() if k != "joined"
    }
    assert over_dbus["auth_url"].startswith(fake.url + "/auth?")
    query = parse_qs(urlsplit(over_dbus["auth_url"]).query)
    assert query["callback_url"] == [f"http://localhost:{d.port}/api/openrouter/oauth/callback"]
    assert query["code_challenge_method"] == ["S256"] and query["client_id"] == ["convocations"]

    restarted = await asyncio.to_thread(call_daemon, private_bus, "StartOAuth", True)
    assert restarted["joined"] is False and restarted["session_id"] != over_dbus["session_id"]
    await _link(d, fake, restarted)

    st_dbus = await asyncio.to_thread(call_daemon, private_bus, "Status")
    st_socket = d.call("status")
    # Same document; parts filled in the background after a login (account info) may differ between calls.
    assert set(st_dbus) == set(st_socket)
    for field in ("version", "pid", "http_url", "port", "port_fallback", "socket", "flow"):
        assert st_dbus[field] == st_socket[field], field
    assert st_dbus["flow"]["status"] == "succeeded" and st_dbus["pid"] == d.proc.pid

    # What the bus serves is what docs/dbus.md (and desktop.INTROSPECTION) says.
    served = _interface(await asyncio.to_thread(introspect_daemon, private_bus))
    assert served == _interface(desktop.INTROSPECTION)
    assert served == {
        ("method", "Status", (("s", "out"),)),
        ("method", "StartOAuth", (("b", "in"), ("s", "out"))),
        ("signal", "Event", (("s", None), ("s", None))),
    }
    await _stop(d)


@needs_dbus
async def test_bus_found_at_xdg_runtime_dir_when_the_address_is_unset(daemon_factory, fake, short_tmp, monkeypatch):
    run = short_tmp / "run"
    run.mkdir(mode=0o700)
    bus = PrivateBus(listen=run / "bus")
    try:
        monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
        d = await _daemon(daemon_factory, fake)
        assert "DBUS_SESSION_BUS_ADDRESS" not in d.env
        st = await asyncio.to_thread(call_daemon, bus, "Status")
        assert st["pid"] == d.proc.pid
        await _stop(d)
    finally:
        bus.close()


# -- running on without it ------------------------------------------------------------------------------


async def test_no_session_bus_runs_on_with_one_log_line(daemon_factory, fake, short_tmp, monkeypatch):
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    d = await _daemon(daemon_factory, fake)  # XDG_RUNTIME_DIR is short_tmp/run: no `bus` in it
    assert not (Path(d.env["XDG_RUNTIME_DIR"]) / "bus").exists()
    await _link(d, fake)
    assert d.call("status")["flow"]["status"] == "succeeded"
    await _stop(d)
    (line,) = _desktop_lines(d.log())
    assert "no D-Bus session bus" in line and "runs on" in line


async def test_without_pydbus_runs_on_with_one_log_line(daemon_factory, fake, short_tmp):
    # A directory first on PYTHONPATH whose pydbus.py fails to import, as if the extra were not installed.
    # The address is set (to nothing that listens) so that the import, not the bus, is what is missing.
    blocker = short_tmp / "nopydbus"
    blocker.mkdir()
    (blocker / "pydbus.py").write_text("raise ModuleNotFoundError(\"No module named 'pydbus'\", name='pydbus')\n")
    pythonpath = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))
    d = await _daemon(
        daemon_factory, fake, PYTHONPATH=pythonpath, DBUS_SESSION_BUS_ADDRESS=f"unix:path={short_tmp}/nobus"
    )
    await _link(d, fake)
    assert d.call("status")["flow"]["status"] == "succeeded"
    await _stop(d)
    (line,) = _desktop_lines(d.log())
    assert "pydbus/PyGObject cannot be imported" in line and "runs on" in line and "[desktop]" in line


@needs_dbus
async def test_bus_going_away_is_logged_and_the_daemon_runs_on(daemon_factory, fake, private_bus):
    d = await _daemon(daemon_factory, fake, private_bus)
    private_bus.close()
    await _link(d, fake)
    assert d.call("status")["flow"]["status"] == "succeeded"
    await _stop(d)
    assert "the D-Bus session bus went away" in d.log()


@needs_dbus
async def test_unreachable_bus_is_one_line_and_none(short_tmp, caplog):
    class Idle:
        def touch(self) -> None: ...

    caplog.set_level(logging.INFO, logger="convocationsd.daemon.desktop")
    result = await desktop.start(
        Idle(), events.EventBus(), notifications=None, env={"DBUS_SESSION_BUS_ADDRESS": f"unix:path={short_tmp}/nobus"}
    )
    assert result is None
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "cannot use the session bus" in record.getMessage()


@needs_dbus
async def test_name_already_owned_warns_and_keeps_the_rest(private_bus, caplog):
    class Ctl:
        def touch(self) -> None: ...

    caplog.set_level(logging.INFO, logger="convocationsd.daemon.desktop")
    env = {"DBUS_SESSION_BUS_ADDRESS": private_bus.address}
    first = await desktop.start(Ctl(), events.EventBus(), notifications=False, env=env)
    second = await desktop.start(Ctl(), events.EventBus(), notifications=False, env=env)
    try:
        assert first is not None and second is not None
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "cannot own io.convocations.Daemon1" in warnings[0]
    finally:
        await second.close()
        await first.close()
    with private_bus.connect() as con:
        assert not con.dbus.NameHasOwner(desktop.BUS_NAME)  # released on close


# -- pure parts -----------------------------------------------------------------------------------------


def test_notification_text():
    assert desktop.notification_text({"success": True, "error": None}) == desktop.LINKED
    error = {"code": "timeout", "message": "The login took too long.", "hint": "Run it again."}
    assert desktop.notification_text({"success": False, "error": error}) == (
        "OpenRouter account not linked",
        "The login took too long.\nRun it again.",
    )
    cancelled = {"success": False, "error": {"code": "cancelled", "message": "Cancelled.", "hint": ""}}
    assert desktop.notification_text(cancelled) is None
    replaced = {"success": False, "error": REPLACED[True].to_dict()}  # its successor is still to come
    assert desktop.notification_text(replaced) is None
