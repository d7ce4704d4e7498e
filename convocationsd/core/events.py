"""Event fan-out. Each event is encoded once; every subscriber gets the same bytes.

A subscriber is a *sink* with ``send(line) -> bool``; a sink that cannot take more (its bounded queue is
full) answers False and the bus forgets it, so one stuck client never slows the others. In-process
listeners (desktop notifications, D-Bus signals) get the decoded name and data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from convocationsd.core import protocol

AUTH_STARTED = "openrouter-auth-started"
AUTH_COMPLETE = "openrouter-auth-complete"
KEY_CHANGED = "openrouter-key-changed"
ALL_EVENTS = (AUTH_STARTED, AUTH_COMPLETE, KEY_CHANGED)

log = logging.getLogger(__name__)


class Sink(Protocol):
    def send(self, line: bytes) -> bool: ...


Listener = Callable[[str, dict[str, Any]], None]


class EventBus:
    def __init__(self) -> None:
        self.seq = 0
        self._subscribers: dict[Sink, frozenset[str]] = {}
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, sink: Sink, events: Iterable[str] | None = None) -> list[str]:
        """Sets what ``sink`` receives, replacing what it had: ``events`` or, for None, every event. No
        events at all ends the subscription."""
        wanted = frozenset(ALL_EVENTS if events is None else events)
        if wanted:
            self._subscribers[sink] = wanted
        else:
            self.unsubscribe(sink)
        return sorted(wanted)

    def unsubscribe(self, sink: Sink) -> None:
        self._subscribers.pop(sink, None)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, name: str, data: dict[str, Any]) -> int:
        self.seq += 1
        line = protocol.event_line(self.seq, name, data)
        dropped = [sink for sink, wanted in self._subscribers.items() if name in wanted and not sink.send(line)]
        for sink in dropped:
            self.unsubscribe(sink)
        for listener in self._listeners:
            try:
                listener(name, data)
            except Exception:  # a broken listener must not stop the broadcast
                log.exception("event listener %r failed", listener)
        return self.seq
