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


async def test_repeats_pass_the_first_of_a_kind_then_one_count_per_interval(caplog):
    """A flood of one kind: its first line at once, then one line per interval with how many more came; an
    interval without any ends it, and the next one passes at once again. Other kinds are not held back."""
    import asyncio

    from convocationsd.daemon.logs import Repeats

    logger = logging.getLogger("cv.test.repeats")
    repeats = Repeats(interval=0.2)
    logger.addFilter(repeats)
    try:
        caplog.set_level(logging.WARNING, logger="cv.test.repeats")
        for i in range(50):
            logger.warning("refused a request from %s", i)
        logger.warning("another kind")
        await asyncio.sleep(0.3)  # the first interval ends: its count
        for _ in range(5):
            logger.warning("refused a request from %s", "x")
        await asyncio.sleep(0.3)  # the second: its count
        await asyncio.sleep(0.3)  # the third passes without any: the kind is forgotten
        logger.warning("refused a request from %s", "late")
        lines = [r.getMessage() for r in caplog.records]
        assert lines[:2] == ["refused a request from 0", "another kind"]
        assert (
            lines[2].startswith("49 more like this in the last ")
            and ", 49 different: refused a request from " in lines[2]
        )
        assert lines[3].startswith("5 more like this") and lines[3].endswith(" s: refused a request from x")
        assert lines[4:] == ["refused a request from late"]
    finally:
        logger.removeFilter(repeats)


async def test_repeats_name_every_source_not_only_the_first(caplog):
    """Refusals from two uids: the summary names both with their counts (the most frequent first), so a flood
    from one uid cannot pass as another's. Past the ones it names, and past the variants it counts apart, it
    says how many more came."""
    import asyncio

    from convocationsd.daemon import logs

    logger = logging.getLogger("cv.test.repeats.sources")
    repeats = logs.Repeats(interval=0.2)
    logger.addFilter(repeats)
    try:
        caplog.set_level(logging.WARNING, logger="cv.test.repeats.sources")
        for uid in [65534] * 5 + [23452] * 300:
            logger.warning("refused an HTTP request from uid %s (this daemon runs as uid %s)", uid, 1000)
        await asyncio.sleep(0.3)
        for i in range(logs.DISTINCT + 36):
            logger.warning("refused an HTTP request from uid %s (this daemon runs as uid %s)", i, 1000)
        repeats.flush()
        lines = [r.getMessage() for r in caplog.records]
        assert lines[0] == "refused an HTTP request from uid 65534 (this daemon runs as uid 1000)"
        assert lines[1].startswith("304 more like this in the last ")
        assert lines[1].endswith(
            " s, 2 different: refused an HTTP request from uid 23452 (this daemon runs as uid 1000) (300 times); "
            "refused an HTTP request from uid 65534 (this daemon runs as uid 1000) (4 times)"
        )
        assert lines[2].startswith(f"{logs.DISTINCT + 36} more like this in the last ")
        assert f", more than {logs.DISTINCT} different: " in lines[2]
        assert lines[2].count("(1 time)") == logs.NAMED and lines[2].endswith(
            f"; and {logs.DISTINCT + 36 - logs.NAMED} of the others"
        )
        assert len(lines) == 3
    finally:
        logger.removeFilter(repeats)
