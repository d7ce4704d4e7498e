"""Logging set-up for the daemon: one stderr handler, formatted for whoever reads stderr.

Under a service manager stderr goes to the journal, which stamps each line itself and reads a leading
``<N>`` as the syslog priority (sd-daemon(3)), so lines carry that prefix and no timestamp; ``journalctl -p
warning`` then works. Run by hand (or under launchd, which writes a plain file) lines start with a UTC
timestamp. Calling ``setup_logging`` again (SIGHUP reload) swaps level and format in place, never adding a
second handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from convocationsd.daemon.systemd import under_journal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_HANDLER_NAME = "convocationsd-stderr"


class JournalFormatter(logging.Formatter):
    """``<3>name: message``; every line of a multi-line record (tracebacks) gets the prefix, because the
    journal reads each line as its own entry."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class TimestampFormatter(logging.Formatter):
    """``2026-11-30T12:00:00Z WARNING name: message`` in UTC, so logs from different machines line up."""

    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ")


def syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}") from None


def _our_handler(root: logging.Logger) -> logging.Handler | None:
    return next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)


def setup_logging(level: str, env: Mapping[str, str] = os.environ, *, stream: TextIO | None = None) -> None:
    """Configures the root logger: ``level`` is debug|info|warning|error. ``stream`` defaults to stderr."""
    root = logging.getLogger()
    numeric = _level(level)
    handler = _our_handler(root)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
    elif stream is not None and isinstance(handler, logging.StreamHandler):
        handler.setStream(stream)
    handler.setFormatter(JournalFormatter("%(name)s: %(message)s") if under_journal(env) else TimestampFormatter())
    root.setLevel(numeric)


def set_level(level: str) -> None:
    """Changes the level only (SIGHUP reload of ``log_level``)."""
    logging.getLogger().setLevel(_level(level))


REPEAT_INTERVAL = 60.0  # seconds: at most one line per kind of refusal in this long
DISTINCT = 64  # variants of one kind counted apart per interval; the rest are counted together
NAMED = 4  # variants a summary names, the most frequent first


class _Held:
    """One kind's interval: its first record, and how many more came, by variant (the rendered message:
    which uid, which reason)."""

    def __init__(self, first: logging.LogRecord) -> None:
        self.first = first
        self.since = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None  # the end of the interval; ``flush`` cancels it
        self.counts: dict[str, int] = {}  # at most DISTINCT variants
        self.unlisted = 0  # records of variants past DISTINCT

    def add(self, record: logging.LogRecord) -> None:
        variant = record.getMessage()
        if variant in self.counts or len(self.counts) < DISTINCT:
            self.counts[variant] = self.counts.get(variant, 0) + 1
        else:
            self.unlisted += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.unlisted


class Repeats(logging.Filter):
    """One line per kind of message per ``interval``, for messages anyone can cause as often as they like
    (refused requests: 3,000 in a third of a second would push everything else out of the journal).

    The first of a kind (its logger and message template) passes; the next ones within ``interval`` are
    only counted, per variant (the message with its values: another uid, another reason), and when the
    interval ends one line says how many more came and names the most frequent variants, with how many
    there were in all (one line per interval while they keep coming; ``flush`` at shutdown). So a flood
    from one uid cannot hide another uid's requests behind the first one's name. Outside an event loop
    nothing is held back, since nothing could report the count."""

    def __init__(self, interval: float = REPEAT_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._held: dict[tuple[str, str], _Held] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeats_summary", False):
            return True
        kind = (record.name, str(record.msg))
        held = self._held.get(kind)
        if held is not None:
            held.add(record)
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        held = self._held[kind] = _Held(record)
        held.timer = loop.call_later(self.interval, self._report, kind)
        return True

    def _report(self, kind: tuple[str, str]) -> None:
        """The interval of ``kind`` is over: its count, if any, and a new interval while they keep coming."""
        held = self._held.pop(kind)
        if held.total:
            self._summary(held)
            again = self._held[kind] = _Held(held.first)
            again.timer = asyncio.get_running_loop().call_later(self.interval, self._report, kind)

    def flush(self) -> None:
        """Logs what is counted and not yet reported, and ends the intervals (at shutdown)."""
        held, self._held = self._held, {}
        for one in held.values():
            if one.timer is not None:
                one.timer.cancel()
            if one.total:
                self._summary(one)

    def _summary(self, held: _Held) -> None:
        first = held.first
        logging.getLogger(first.name).log(
            first.levelno,
            "%d more like this in the last %.0f s%s",
            held.total,
            time.monotonic() - held.since,
            summarize(held.counts, held.unlisted),
            extra={"repeats_summary": True},
        )


def summarize(counts: dict[str, int], unlisted: int = 0) -> str:
    """What came, after "N more like this in the last T s": ``: message`` when all were alike; else how many
    variants, and the most frequent with their counts (``unlisted``: records past the ``DISTINCT`` variants
    counted apart)."""
    if len(counts) == 1 and not unlisted:
        return f": {next(iter(counts))}"
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    named = "; ".join(f"{message} ({n} {'time' if n == 1 else 'times'})" for message, n in ranked[:NAMED])
    rest = sum(n for _, n in ranked[NAMED:]) + unlisted
    variants = f"more than {DISTINCT}" if unlisted else str(len(counts))
    return f", {variants} different: {named}" + (f"; and {rest} of the others" if rest else "")


# What anyone can cause as often as they like (refused HTTP requests, stray callbacks a web page sends): the
# loggers of those messages share this one.
REFUSALS = Repeats()
