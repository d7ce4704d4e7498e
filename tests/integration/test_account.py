"""Account status: the linked key's label/usage/limit in `status`, cached, and a revoked key reported."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from convocationsd.core.errors import KeyRejected, SecretStoreError, UpstreamError
from convocationsd.core.events import KEY_CHANGED, EventBus
from convocationsd.core.flows import FlowError
from convocationsd.daemon import account
from convocationsd.store.secrets import SecretStatus
from tests.conftest import assert_no_secret, convctl, read_auth_url, start_daemon, wait_until

# -- the pure cache ----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_expires_after_ttl():
    clock = Clock()
    cache = account.AccountCache(ttl=60, clock=clock)
    assert cache.stale() and cache.value is None
    assert cache.put({"label": "a"}, cache.generation)
    assert not cache.stale() and cache.value == {"label": "a"}
    clock.now += 59.9
    assert not cache.stale()
    clock.now += 0.1
    assert cache.stale() and cache.value == {"label": "a"}  # stale values are still shown


def test_cache_refuses_answers_about_an_old_key():
    cache = account.AccountCache(ttl=60, clock=Clock())
    generation = cache.generation
    cache.invalidate()
    assert not cache.put({"label": "old key"}, generation)
    assert cache.value is None and cache.stale()


def test_summary_keeps_only_what_is_shown():
    data = {
        "label": "sk-or-v1-abc...xyz",
        "usage": 1.5,
        "limit": None,
        "limit_remaining": None,
        "usage_daily": 3,
        "is_free_tier": True,
        "secret": "nope",
    }
    s = account.summary(data)
    assert s == {
        "label": "(unnamed key)",
        "usage": 1.5,
        "limit": None,
        "limit_remaining": None,
        "valid": True,
        "message": None,
        "readable": True,
    }
    assert account.summary({"label": "x\x1b[31m", "usage": float("nan"), "limit": True})["usage"] is None


# -- AccountStatus with stand-ins for the controller's parts ----------------------------------------------------------------


class StubOpenRouter:
    def __init__(self) -> None:
        self.calls = 0
        self.answer: object = {"label": "Convocations", "usage": 0.25, "limit": 10, "limit_remaining": 9.75}
        self.gate: asyncio.Event | None = None

    async def key_info(self, key: str) -> dict:
        self.calls += 1
        assert key == "sk-or-v1-test"
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class StubSecrets:
    def __init__(self) -> None:
        self.key: str | None = "sk-or-v1-test"
        self.error: Exception | None = None
        self.gets = 0

    def get(self) -> str | None:
        self.gets += 1
        if self.error:
            raise self.error
        return self.key


class StubController:
    """What AccountStatus is given: the bus, the OpenRouter client, how to read the stored key, and whether
    one is stored (``secret_state``, passed to ``snapshot``)."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.secret_state = SecretStatus(True, "local-encrypted")
        self.secrets = StubSecrets()
        self.openrouter = StubOpenRouter()

    async def read_key(self) -> str | None:
        return self.secrets.get()


async def settle(status: account.AccountStatus) -> None:
    if status._task is not None:
        await status._task


async def test_snapshot_never_waits_and_refreshes_in_background():
    ctl = StubController()
    clock = Clock()
    st = account.AccountStatus(ctl.openrouter, ctl.read_key, ctl.bus, ttl=60, clock=clock)
    assert st.snapshot(ctl.secret_state.stored) is None  # nothing known yet; a refresh has started
    await settle(st)
    assert st.snapshot(ctl.secret_state.stored) == {
        "label": "Convocations",
        "usage": 0.25,
        "limit": 10,
        "limit_remaining": 9.75,
        "valid": True,
        "message": None,
        "readable": True,
    }
    assert ctl.openrouter.calls == 1
    st.snapshot(ctl.secret_state.stored)
    await settle(st)
    assert ctl.openrouter.calls == 1  # cached
    clock.now += 61
    ctl.openrouter.answer = KeyRejected(FlowError("key_rejected", "x", "y"), status=401)
    assert st.snapshot(ctl.secret_state.stored)["valid"] is True  # the stale value, while it refreshes
    await settle(st)
    assert st.snapshot(ctl.secret_state.stored) == account.revoked()
    assert (
        "no longer valid" in st.snapshot(ctl.secret_state.stored)["message"]
        and "convctl oauth start" in st.snapshot(ctl.secret_state.stored)["message"]
    )


async def test_one_refresh_at_a_time_and_key_change_restarts():
    ctl = StubController()
    st = account.AccountStatus(ctl.openrouter, ctl.read_key, ctl.bus, ttl=60, clock=Clock())
    ctl.openrouter.gate = asyncio.Event()
    st.snapshot(ctl.secret_state.stored)
    st.snapshot(ctl.secret_state.stored)
    await asyncio.sleep(0)
    assert ctl.openrouter.calls == 1
    first = st._task
    ctl.bus.publish(KEY_CHANGED, {"stored": True, "backend": "keyring"})  # a new key mid-refresh
    ctl.openrouter.gate.set()
    await first
    assert st.cache.value is None  # the answer about the old key was dropped
    st.snapshot(ctl.secret_state.stored)
    await settle(st)
    assert st.snapshot(ctl.secret_state.stored)["label"] == "Convocations"


async def test_no_key_and_errors():
    ctl = StubController()
    st = account.AccountStatus(ctl.openrouter, ctl.read_key, ctl.bus, ttl=60, clock=Clock())
    ctl.secret_state = SecretStatus(False, None)
    assert st.snapshot(ctl.secret_state.stored) is None and st._task is None
    ctl.secret_state = SecretStatus(True, "keyring")
    ctl.secrets.error = SecretStoreError("The keyring is locked.", "Unlock it.")
    value = await st.refresh()
    assert value["valid"] is True and "could not be read" in value["message"] and value["readable"] is False
    ctl.secrets.error = None
    assert "could not be read" in (await st.refresh())["message"]  # not read again (another prompt)...
    assert ctl.secrets.gets == 1
    ctl.bus.publish(KEY_CHANGED, {"stored": True, "backend": "keyring"})  # ...until the key changes
    await settle(st)
    assert ctl.secrets.gets == 2
    ctl.openrouter.answer = UpstreamError(FlowError("upstream_unreachable", "Could not reach OpenRouter.", ""))
    value = await st.refresh()
    assert value["valid"] is True and "Could not reach OpenRouter" in value["message"] and value["readable"] is True


async def test_refreshes_read_the_key_once_per_key():
    # Every read may be a keyring unlock prompt: a background refresh must not ask each TTL.
    ctl = StubController()
    clock = Clock()
    st = account.AccountStatus(ctl.openrouter, ctl.read_key, ctl.bus, ttl=60, clock=clock)
    for _ in range(5):
        st.snapshot(ctl.secret_state.stored)
        await settle(st)
        clock.now += 61
    assert ctl.openrouter.calls == 5 and ctl.secrets.gets == 1
    asked = []

    async def key_info(key: str) -> dict:
        asked.append(key)
        return {"label": "New"}

    ctl.secrets.key = "sk-or-v1-new"
    ctl.openrouter.key_info = key_info
    ctl.bus.publish(KEY_CHANGED, {"stored": True, "backend": "keyring"})
    await settle(st)
    for _ in range(3):
        clock.now += 61
        st.snapshot(ctl.secret_state.stored)
        await settle(st)
    assert ctl.secrets.gets == 2 and asked == ["sk-or-v1-new"] * 4  # the new key, read once
    ctl.bus.publish(KEY_CHANGED, {"stored": False, "backend": None})
    ctl.secret_state = SecretStatus(False, None)
    assert st.snapshot(ctl.secret_state.stored) is None and ctl.secrets.gets == 2


async def test_without_a_loop_snapshot_is_harmless():
    ctl = StubController()
    st = account.AccountStatus(ctl.openrouter, ctl.read_key, ctl.bus, ttl=60, clock=Clock())
    assert await asyncio.to_thread(st.snapshot, True) is None


# -- the daemon and convctl against the fake -------------------------------------------------------------------


async def test_account_after_login_in_status_and_revoked(daemon_factory, fake):
    from tests.conftest import follow_callback

    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_ACCOUNT_CACHE_SECONDS="0.5"
    )
    proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    auth_url = await read_auth_url(proc)
    location = await fake.approve(auth_url)
    await follow_callback(location)
    out, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0, err
    # right after linking, convctl shows the account
    assert "Account: label Convocations, usage $0.00, no limit" in out

    done = await asyncio.to_thread(d.convctl, "status")
    assert done.returncode == 0
    assert "key:      label Convocations, usage $0.00, no limit" in done.stdout
    js = d.call("status")["account"]
    assert js == {
        "label": "Convocations",
        "usage": 0,
        "limit": None,
        "limit_remaining": None,
        "valid": True,
        "message": None,
        "readable": True,
    }

    key = fake.issued_keys[-1]
    fake.revoke(key)
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        done = await asyncio.to_thread(d.convctl, "status")
        text = done.stdout
        if "no longer valid" in text:
            break
        await asyncio.sleep(0.2)
    assert "key:      linked key is no longer valid — run `convctl oauth start`" in text
    assert d.call("status")["account"]["valid"] is False
    assert_no_secret(key, d.all_output(), out, err, text, str(js))


async def test_the_account_cache_time_is_a_setting_that_a_reload_changes(daemon_factory, fake, short_tmp):
    """account_cache_seconds from config.toml: at 600 s, a key revoked meanwhile still shows as valid (nothing
    is asked before then); after a reload at 0.2 s, the next status asks, and shows it revoked."""
    from tests.integration.test_config_file import wait_for_log, write_config

    config = write_config(short_tmp, "account_cache_seconds = 600\n")
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url)
    key = fake.issue_key()
    d.call("secret.set", {"key": key})
    await asyncio.to_thread(wait_until, lambda: d.call("status")["account"] is not None, "the account")
    setting = d.call("status")["settings"]["account_cache_seconds"]
    assert setting == {"value": 600.0, "source": f"account_cache_seconds in {config}"}
    fake.revoke(key)
    for _ in range(5):
        await asyncio.sleep(0.2)
        assert d.call("status")["account"]["valid"] is True  # cached: 600 s have not passed

    config.write_text(config.read_text().replace("account_cache_seconds = 600", "account_cache_seconds = 0.2"))
    d.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(wait_for_log, d, "configuration reloaded")
    await asyncio.to_thread(wait_until, lambda: d.call("status")["account"]["valid"] is False, "the revoked key")
    assert d.call("status")["settings"]["account_cache_seconds"]["value"] == 0.2
    assert_no_secret(key, d.all_output())


async def test_status_with_a_key_set_by_hand_shows_limit(daemon, fake):
    key = fake.issue_key("my laptop", limit=25.0)
    daemon.call("secret.set", {"key": key})
    done = await asyncio.to_thread(daemon.convctl, "status")
    assert "key:      label my laptop, usage $0.00, limit $25.00 ($25.00 left)" in done.stdout
    js = await asyncio.to_thread(daemon.convctl, "status", "--json")
    assert '"label": "my laptop"' in js.stdout
    daemon.call("secret.clear")
    assert daemon.call("status")["account"] is None
    assert_no_secret(key, daemon.all_output())


async def test_status_unreachable_openrouter_is_not_an_invalid_key(daemon_factory, fake):
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url)
    key = fake.issue_key()
    d.call("secret.set", {"key": key})
    fake.config.key_info_status = 503
    done = await asyncio.to_thread(d.convctl, "status")
    assert "could not check the key with OpenRouter" in done.stdout
    assert "no longer valid" not in done.stdout


@pytest.mark.parametrize(
    "cmd", [("status",), ("secret", "status"), ("--help",), ("exec", "--", "true"), ("secret", "get-openrouter-key")]
)
def test_convctl_stays_light(cmd, short_tmp):
    import subprocess
    import sys

    from tests.conftest import base_env

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "convocationsd.cli.main", *cmd],
        env=base_env(short_tmp),
        capture_output=True,
        text=True,
        timeout=30,
    )
    heavy = [line for line in done.stderr.splitlines() if re.search(r"\b(aiohttp|keyring|cryptography)\b", line)]
    assert heavy == []


@pytest.mark.parametrize("cmd", [("status",), ("secret", "status")])
async def test_convctl_asking_a_running_daemon_loads_only_what_it_needs(cmd, daemon, fake):
    """With a daemon to ask, these commands are a socket round trip: no event loop, no typing, no dataclasses
    (settings costs `secret status` ~25 ms, a third of its time; bench section 1 has the figures)."""
    import subprocess
    import sys

    daemon.call("secret.set", {"key": fake.issue_key()})  # a key is stored: both exit 0
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-X", "importtime", "-m", "convocationsd.cli.main", *cmd],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "convocationsd.client" in loaded  # the parse sees modules at all
    assert not loaded & {"asyncio", "typing", "dataclasses", "convocationsd.common.settings", "tomllib", "difflib"}


# -- OpenRouter's real answers ------------------------------------------------------------------------------


def real_answers() -> list[tuple[str, dict, dict]]:
    """(what, data, the summary the daemon shows): OpenRouter's own examples, the complete shape of the SDK in
    the test extra (the fake's answer), that shape with every field the spec lets be null set to null, and an
    example with fields the daemon has never seen."""
    from openrouter.operations import GetCurrentKeyData

    from convocationsd.testing.fake_openrouter import USER_ID, key_data
    from tests.helpers.openrouter_examples import (
        KEY_API_REFERENCE,
        KEY_SDK_SPEC,
        SUMMARY_OF_EXAMPLES,
        with_new_fields,
        with_nulls,
    )
    from tests.helpers.openrouter_sdk import nullable_fields

    full = key_data("Convocations", 25.0, USER_ID)
    nulls = with_nulls(full, nullable_fields(GetCurrentKeyData, full))
    shown = {"label": "Convocations", "usage": 0, "valid": True, "message": None, "readable": True}
    return [
        ("the SDK spec's example", KEY_SDK_SPEC["data"], SUMMARY_OF_EXAMPLES),
        ("the API reference's example", KEY_API_REFERENCE["data"], SUMMARY_OF_EXAMPLES),
        ("the SDK's complete shape", full, {**shown, "limit": 25.0, "limit_remaining": 25.0}),
        ("every nullable field null", nulls, {**shown, "limit": None, "limit_remaining": None}),
        ("fields never seen", with_new_fields(KEY_API_REFERENCE["data"]), SUMMARY_OF_EXAMPLES),
    ]


def test_the_real_shapes_are_what_they_claim():
    """The fixtures below are what OpenRouter's SDK says: the complete ones validate, nulls included."""
    from openrouter.operations import GetCurrentKeyData

    from tests.helpers.openrouter_sdk import shape_problems

    answers = {what: data for what, data, _ in real_answers()}
    assert shape_problems(GetCurrentKeyData, answers["the SDK's complete shape"]) == []
    nulls = answers["every nullable field null"]
    assert shape_problems(GetCurrentKeyData, nulls) == []
    assert {name for name, value in nulls.items() if value is None} >= {"limit", "limit_remaining", "expires_at"}
    assert shape_problems(GetCurrentKeyData, answers["fields never seen"])  # old example plus new fields


@pytest.mark.parametrize(("what", "data", "shown"), real_answers(), ids=[a[0] for a in real_answers()])
async def test_key_info_and_summary_take_the_real_shapes(what, data, shown, caplog):
    """Through the daemon's real client and the fake: unused fields, nulls and unknown fields pass quietly."""
    from convocationsd.daemon.openrouter import OpenRouterClient
    from convocationsd.testing.fake_openrouter import FakeOpenRouter

    caplog.set_level("DEBUG")
    async with FakeOpenRouter() as fake, OpenRouterClient(fake.url, timeout=5) as client:
        fake.config.update({"key_info_data": data})
        got = await client.key_info(fake.issue_key())
    assert got == data
    assert account.summary(got) == shown
    assert [r for r in caplog.records if r.levelno >= 30] == []


async def test_status_shows_every_real_shape_without_a_warning(daemon_factory, fake):
    """One daemon, the fake answering each real shape in turn: `convctl status` shows the account, doctor finds
    it fine, and the daemon logs no warning."""
    from convocationsd.cli.commands import _account_line
    from tests.integration.test_doctor import by_name, run_doctor

    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_ACCOUNT_CACHE_SECONDS="0.1"
    )
    key = fake.issue_key()
    d.call("secret.set", {"key": key})
    for what, data, shown in real_answers():
        fake.config.update({"key_info_data": data})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if d.call("status")["account"] == shown:
                break
            await asyncio.sleep(0.1)
        assert d.call("status")["account"] == shown, what
        done = await asyncio.to_thread(d.convctl, "status")
        assert f"key:      {_account_line(shown)}\n" in done.stdout, what
    _, results, _ = await asyncio.to_thread(run_doctor, d.env)
    assert by_name(results)["account"]["ok"]
    log = d.log()
    assert not [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line], log[-3000:]
    assert_no_secret(key, d.all_output())


async def test_status_with_a_key_stored_starts_the_account_check_which_loads_aiohttp(short_tmp, fake):
    """What protocol.md says of `debug.modules`: `status` with no key stored loads no aiohttp; with a key stored,
    `status` starts the account check, whose HTTP client does."""
    d = await asyncio.to_thread(start_daemon, short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url)
    try:
        for method in ("status", "subscribe", "secret.status", "status"):
            d.call(method)
        assert "aiohttp" not in d.call("debug.modules")["modules"]
    finally:
        d.stop()
    stored = await asyncio.to_thread(
        convctl, d.env, "secret", "set-openrouter-key", "--no-verify", input=fake.issue_key() + "\n"
    )  # on the files: no daemon runs
    assert stored.returncode == 0, stored.stderr
    d = await asyncio.to_thread(start_daemon, short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url)
    try:
        assert d.call("secret.status")["stored"] is True
        assert "aiohttp" not in d.call("debug.modules")["modules"]
        d.call("status")
        await asyncio.to_thread(wait_until, lambda: "aiohttp" in d.call("debug.modules")["modules"], "aiohttp")
    finally:
        d.stop()
