"""After ``Daemon.stop``, nothing the daemon started is left: no task, no timer, no thread, no child process.

The daemon runs in this process (its loop is the test's, so what is left on it can be seen), with its real
parts: the Unix socket, the HTTP door, the secret-store helper child; the fake OpenRouter, a real aiohttp
server, runs on a loop of its own in another thread, so that what is left on the daemon's loop is the daemon's. Before the stop it is given something of each kind to leave behind: a login waiting
(the expiry timer), an account check that OpenRouter has not answered yet (a task), a key just stored (the
helper child and the thread that would retire it), the HTTP door serving (its start task), and a refused
callback (the timer of the counts of refusals)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from convocationsd.client import AsyncClient
from convocationsd.core import pkce
from convocationsd.daemon.logs import REFUSALS
from convocationsd.daemon.main import Daemon
from convocationsd.store import config
from tests.adversarial.harness import FakeThread
from tests.conftest import base_env, follow_callback


class WatchedLoop(asyncio.SelectorEventLoop):
    """An ordinary event loop that keeps every timer it schedules, to see which are still due after a stop."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[asyncio.TimerHandle] = []

    def call_at(self, when, callback, *args, context=None):  # call_later comes here too
        handle = super().call_at(when, callback, *args, context=context)
        self.timers.append(handle)
        return handle

    def pending_timers(self) -> list[asyncio.TimerHandle]:
        return [t for t in self.timers if not t.cancelled() and t.when() > self.time()]


def child_pids() -> set[int]:
    """This process's children, as the kernel lists them (Linux)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with open(task / "children") as f:
            pids.update(int(pid) for pid in f.read().split())
    return pids


async def run_then_stop(
    env: dict[str, str], fake: FakeThread, caplog: pytest.LogCaptureFixture
) -> tuple[set[asyncio.Task], list[asyncio.TimerHandle], set[int], list[logging.LogRecord]]:
    """Starts a daemon, leaves one of everything running, stops it; returns the tasks and timers still there,
    the child processes it had started before the stop, and what the stop logged."""
    loop = asyncio.get_running_loop()
    before = child_pids()
    loaded = config.load({}, env)
    daemon = Daemon(loaded.settings, env=env, sources=loaded.sources)
    try:
        await daemon.start()
        fake.config.key_info_delay = 600.0  # the account check waits for an answer that never comes
        async with AsyncClient(env["CONVOCATIONS_SOCKET"]) as c:
            started = await c.call("oauth.start")
            status, _, _ = await follow_callback(await asyncio.to_thread(fake.approve, started["auth_url"]))
            assert status == 200  # the key is stored (which starts the account check) and the helper child lingers
            await c.call("oauth.start")  # a login waiting: its expiry timer runs
            # Refused, since it carries no state: the refusals' counting interval begins.
            await follow_callback(pkce.callback_url(daemon.controller.endpoint.port) + "?code=stray")
            assert (await c.call("status"))["account"] is None  # OpenRouter has not answered yet
        started_children = child_pids() - before
        assert started_children, "the helper child should be running before the stop"
    finally:
        logged = len(caplog.records)
        await daemon.stop()
    await asyncio.sleep(0)  # what was due anyway runs now
    left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    return left, loop.pending_timers(), started_children, caplog.records[logged:]


def test_after_stop_no_task_timer_thread_or_child_of_the_daemon_is_left(short_tmp, caplog):
    caplog.set_level(logging.INFO)
    REFUSALS.flush()  # counts that in-process servers of earlier tests left in this process-wide filter
    fake = FakeThread()
    # No notifications: the test's bus has no notification server, and the warning that says so comes when the
    # notification thread gets to it, before or during the stop, which would make the last assertion flaky.
    env = base_env(
        short_tmp, RCONV_HTTP_PORT="0", CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_DESKTOP_NOTIFICATIONS="0"
    )
    threads = set(threading.enumerate())
    loop = WatchedLoop()
    try:
        tasks, timers, children, stop_logged = loop.run_until_complete(run_then_stop(env, fake, caplog))
        loop.run_until_complete(loop.shutdown_default_executor())  # asyncio.run's last step, as in main()
    finally:
        loop.close()
        fake.close()
    assert tasks == set()
    assert timers == []
    assert not children & child_pids()  # the helper child has exited and been reaped
    assert {t for t in threading.enumerate() if t.is_alive()} - threads == set()
    # Ended, not failed: the account check was cancelled, not left to fail on the closed HTTP client.
    assert [r.getMessage() for r in stop_logged if r.levelno >= logging.WARNING] == []
    assert [r.getMessage() for r in stop_logged][-1] == "stopped"
