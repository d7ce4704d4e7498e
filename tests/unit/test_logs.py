"""Log lines for the journal (priority prefixes, no timestamps) and for a terminal or file (timestamps)."""

from __future__ import annotations

import io
import logging
import re

import pytest

from convocationsd.daemon import logs

JOURNAL = {"JOURNAL_STREAM": "8:4242", "INVOCATION_ID": "0123abcd"}


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def emit(stream: io.StringIO) -> list[str]:
    log = logging.getLogger("convocationsd.test")
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    log.error("error line")
    return stream.getvalue().splitlines()


def test_journal_lines_carry_priority_and_no_timestamp():
    stream = io.StringIO()
    logs.setup_logging("debug", JOURNAL, stream=stream)
    assert emit(stream) == [
        "<7>convocationsd.test: debug line",
        "<6>convocationsd.test: info line",
        "<4>convocationsd.test: warning line",
        "<3>convocationsd.test: error line",
    ]


def test_every_traceback_line_keeps_the_priority():
    stream = io.StringIO()
    logs.setup_logging("info", {"INVOCATION_ID": "x"}, stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("convocationsd.test").exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>RuntimeError: boom"


def test_terminal_lines_carry_utc_timestamps():
    stream = io.StringIO()
    logs.setup_logging("info", {}, stream=stream)
    lines = emit(stream)
    assert len(lines) == 3  # debug filtered out
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO|WARNING|ERROR) convocationsd\.test: \w+ line"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert not any(line.startswith("<") for line in lines)


def test_reconfiguring_changes_level_and_format_without_a_second_handler():
    stream = io.StringIO()
    logs.setup_logging("error", {}, stream=stream)
    logs.setup_logging("warning", JOURNAL)  # SIGHUP reload: same handler, same stream
    logs.setup_logging("warning", JOURNAL)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "convocationsd-stderr"]
    assert len(ours) == 1
    assert emit(stream) == ["<4>convocationsd.test: warning line", "<3>convocationsd.test: error line"]


def test_set_level():
    stream = io.StringIO()
    logs.setup_logging("info", JOURNAL, stream=stream)
    logs.set_level("DEBUG")
    assert emit(stream)[0] == "<7>convocationsd.test: debug line"
    logs.set_level("error")
    assert logging.getLogger().level == logging.ERROR


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown log level"):
        logs.setup_logging("verbose", {})
    with pytest.raises(ValueError):
        logs.set_level("loud")


def test_critical_maps_to_crit():
    assert logs.syslog_priority(logging.CRITICAL) == 2
