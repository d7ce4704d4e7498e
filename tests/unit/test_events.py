"""Event fan-out: encode once, filter, drop stuck sinks, shield listeners."""

from __future__ import annotations

import json
import logging

import pytest

from convocationsd.core import events, protocol
from convocationsd.core.events import ALL_EVENTS, AUTH_COMPLETE, AUTH_STARTED, KEY_CHANGED, EventBus


class Sink:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.lines: list[bytes] = []

    def send(self, line: bytes) -> bool:
        self.lines.append(line)
        return self.accept

    def decoded(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


def test_event_names_are_the_contracts():
    assert AUTH_STARTED == "openrouter-auth-started"
    assert AUTH_COMPLETE == "openrouter-auth-complete"
    assert KEY_CHANGED == "openrouter-key-changed"
    assert set(ALL_EVENTS) == {AUTH_STARTED, AUTH_COMPLETE, KEY_CHANGED}


def test_subscribe_all_by_default(bus):
    s = Sink()
    assert bus.subscribe(s) == sorted(ALL_EVENTS)
    assert len(bus) == 1
    for name in ALL_EVENTS:
        bus.publish(name, {"n": name})
    assert [m["params"]["event"] for m in s.decoded()] == list(ALL_EVENTS)


def test_publish_line_shape(bus):
    s = Sink()
    bus.subscribe(s)
    data = {"stored": True, "backend": "keyring"}
    seq = bus.publish(KEY_CHANGED, data)
    assert seq == 1
    assert s.lines == [protocol.event_line(1, KEY_CHANGED, data)]
    assert s.decoded() == [
        {"jsonrpc": "2.0", "method": "event", "params": {"event": KEY_CHANGED, "seq": 1, "data": data}}
    ]
    assert s.lines[0].endswith(b"\n") and s.lines[0].count(b"\n") == 1


def test_encoded_once_same_bytes_object_to_every_sink(bus, monkeypatch):
    calls = []
    real = protocol.event_line

    def counting(*a):
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(protocol, "event_line", counting)
    sinks = [Sink() for _ in range(5)]
    for s in sinks:
        bus.subscribe(s)
    bus.publish(AUTH_STARTED, {"session_id": "s"})
    assert len(calls) == 1
    first = sinks[0].lines[0]
    assert all(s.lines[0] is first for s in sinks)


def test_seq_increases_even_without_subscribers(bus):
    assert bus.seq == 0
    assert bus.publish(KEY_CHANGED, {}) == 1
    s = Sink()
    bus.subscribe(s)
    assert bus.publish(KEY_CHANGED, {}) == 2
    assert bus.publish(AUTH_STARTED, {}) == 3
    assert bus.seq == 3
    assert [m["params"]["seq"] for m in s.decoded()] == [2, 3]


def test_filtered_subscription(bus):
    only_complete = Sink()
    everything = Sink()
    assert bus.subscribe(only_complete, [AUTH_COMPLETE]) == [AUTH_COMPLETE]
    bus.subscribe(everything)
    bus.publish(AUTH_STARTED, {})
    bus.publish(AUTH_COMPLETE, {"success": True})
    bus.publish(KEY_CHANGED, {})
    assert [m["params"]["event"] for m in only_complete.decoded()] == [AUTH_COMPLETE]
    assert only_complete.decoded()[0]["params"]["seq"] == 2  # seq is global, gaps show filtering
    assert len(everything.lines) == 3


def test_subscribe_returns_sorted_names_and_empty_filter_gets_nothing(bus):
    s = Sink()
    assert bus.subscribe(s, iter([KEY_CHANGED, AUTH_STARTED, KEY_CHANGED])) == [AUTH_STARTED, KEY_CHANGED]
    e = Sink()
    assert bus.subscribe(e, []) == []
    assert len(bus) == 1  # subscribed to nothing is not subscribed: status does not count it
    for name in ALL_EVENTS:
        bus.publish(name, {})
    assert e.lines == []
    assert len(s.lines) == 2


def test_an_empty_filter_ends_a_subscription(bus):
    s = Sink()
    bus.subscribe(s)
    assert bus.subscribe(s, []) == [] and len(bus) == 0
    bus.publish(KEY_CHANGED, {})
    assert s.lines == []
    assert bus.subscribe(s, None) == sorted(ALL_EVENTS) and len(bus) == 1


def test_resubscribe_replaces_filter(bus):
    s = Sink()
    bus.subscribe(s, [AUTH_STARTED])
    bus.subscribe(s, [KEY_CHANGED])
    assert len(bus) == 1
    bus.publish(AUTH_STARTED, {})
    bus.publish(KEY_CHANGED, {})
    assert [m["params"]["event"] for m in s.decoded()] == [KEY_CHANGED]


def test_unsubscribe(bus):
    s = Sink()
    bus.subscribe(s)
    bus.unsubscribe(s)
    bus.unsubscribe(s)  # twice is fine
    bus.unsubscribe(Sink())  # never subscribed is fine
    assert len(bus) == 0
    bus.publish(KEY_CHANGED, {})
    assert s.lines == []


def test_sink_returning_false_is_dropped_and_others_still_get_the_event(bus):
    before, stuck, after = Sink(), Sink(accept=False), Sink()
    for s in (before, stuck, after):
        bus.subscribe(s)
    bus.publish(AUTH_STARTED, {"x": 1})
    assert len(before.lines) == len(stuck.lines) == len(after.lines) == 1
    assert len(bus) == 2
    bus.publish(AUTH_COMPLETE, {"x": 2})
    assert len(stuck.lines) == 1  # forgotten: not offered the second event
    assert len(before.lines) == len(after.lines) == 2


def test_filtered_out_sink_is_not_probed_or_dropped(bus):
    stuck = Sink(accept=False)
    bus.subscribe(stuck, [KEY_CHANGED])
    bus.publish(AUTH_STARTED, {})
    assert stuck.lines == [] and len(bus) == 1


def test_listeners_get_name_and_data(bus):
    got = []
    bus.add_listener(lambda name, data: got.append((name, data)))
    data = {"session_id": "s", "success": True}
    bus.publish(AUTH_COMPLETE, data)
    assert got == [(AUTH_COMPLETE, data)]
    assert got[0][1] is data


def test_raising_listener_does_not_stop_delivery(bus, caplog):
    got = []
    sink = Sink()
    bus.subscribe(sink)

    def broken(name, data):
        raise RuntimeError("boom")

    bus.add_listener(broken)
    bus.add_listener(lambda name, data: got.append(name))
    with caplog.at_level(logging.ERROR, logger=events.__name__):
        assert bus.publish(KEY_CHANGED, {}) == 1
    assert got == [KEY_CHANGED]
    assert len(sink.lines) == 1
    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    # and again: the broken listener stays, delivery keeps working
    bus.publish(KEY_CHANGED, {})
    assert got == [KEY_CHANGED, KEY_CHANGED] and len(sink.lines) == 2


def test_listeners_get_events_nobody_subscribed_to(bus):
    got = []
    bus.subscribe(Sink(), [AUTH_STARTED])
    bus.add_listener(lambda name, data: got.append(name))
    bus.publish(KEY_CHANGED, {})
    assert got == [KEY_CHANGED]


def test_non_ascii_data_is_utf8(bus):
    s = Sink()
    bus.subscribe(s)
    bus.publish(AUTH_COMPLETE, {"message": "Zugriff verweigert — ✗"})
    assert "Zugriff verweigert — ✗".encode() in s.lines[0]
    assert s.decoded()[0]["params"]["data"]["message"] == "Zugriff verweigert — ✗"
