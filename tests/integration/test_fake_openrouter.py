"""The fake OpenRouter against a real HTTP client: it must behave like the service described in
shared/design/openrouter.md, or the daemon's tests prove nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import NamedTuple
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pytest

from convocationsd.core import pkce
from convocationsd.testing.fake_openrouter import (
    APP_CONFLICT_MESSAGE,
    FakeBrowserError,
    FakeConfig,
    FakeOpenRouter,
    fingerprint,
)
from tests.conftest import ManualClock

KEY_RE = re.compile(r"^sk-or-v1-[0-9a-f]{64}$")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock: ManualClock):
    async with FakeOpenRouter(host="127.0.0.1", port=0, clock=clock) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def new_login(fake: FakeOpenRouter, *, port: int = 3000, paste: bool = False) -> tuple[str, str, str]:
    """(auth_url, verifier, state) exactly as the daemon builds them."""
    verifier = pkce.make_verifier()
    state = "st-" + os.urandom(8).hex()
    return pkce.authorize_url(fake.url, port, pkce.s256_challenge(verifier), state, paste=paste), verifier, state


def query(location: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


async def exchange(http: aiohttp.ClientSession, fake: FakeOpenRouter, code: str, verifier: str, method="S256"):
    body = {"code": code, "code_verifier": verifier, "code_challenge_method": method}
    async with http.post(fake.url + "/api/v1/auth/keys", json=body) as response:
        return response.status, await response.json(content_type=None)


def assert_error_shape(body: dict, status: int, message: str) -> None:
    assert body == {"error": {"code": status, "message": message, "metadata": None}, "user_id": None}


# -- authorize ------------------------------------------------------------------------------------------


async def test_approve_redirects_with_code_and_state_then_exchange_gives_key(fake, http):
    auth_url, verifier, state = new_login(fake)
    location = await fake.approve(auth_url)

    assert location.startswith("http://localhost:3000/api/openrouter/oauth/callback?")
    params = query(location)
    assert params["state"] == state
    status, body = await exchange(http, fake, params["code"], verifier)

    assert status == 200
    assert KEY_RE.match(body["key"]) and body["user_id"] == "user_fake"
    assert fake.issued_keys == [body["key"]]
    assert fake.exchanges[-1].outcome == "ok"
    assert fake.exchanges[-1].code_fingerprint == fingerprint(params["code"])


async def test_last_authorize_records_what_the_daemon_sent(fake):
    auth_url, verifier, state = new_login(fake, port=3123)
    await fake.approve(auth_url)

    assert fake.last_authorize == {
        "callback_url": "http://localhost:3123/api/openrouter/oauth/callback",
        "code_challenge": pkce.s256_challenge(verifier),
        "code_challenge_method": "S256",
        "client_id": "convocations",
        "referrer": "http://localhost:3123",
        "state": state,
    }


async def test_authorize_page_is_plain_html_with_two_buttons(fake, http):
    auth_url, _, _ = new_login(fake)
    async with http.get(auth_url) as response:
        page = await response.text()
    assert response.status == 200 and response.content_type == "text/html"
    assert "Authorize Convocations?" in page
    assert "id=approve" in page and "id=deny" in page
    assert "<script" not in page


async def test_state_is_not_echoed_when_switched_off(fake):
    fake.config.echo_state = False
    auth_url, _, _ = new_login(fake)
    params = query(await fake.approve(auth_url))
    assert "code" in params and "state" not in params


async def test_existing_query_on_callback_url_is_kept(fake):
    challenge = pkce.s256_challenge(pkce.make_verifier())
    auth_url = (
        fake.url
        + "/auth?"
        + urlencode(
            {
                "callback_url": "http://localhost:3000/cb?flow=abc",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": "s1",
            }
        )
    )
    params = query(await fake.approve(auth_url))
    assert params["flow"] == "abc" and params["state"] == "s1" and params["code"]


async def test_deny_redirects_with_access_denied_and_state(fake):
    auth_url, _, state = new_login(fake)
    params = query(await fake.deny(auth_url))
    assert params["error"] == "access_denied"
    assert params["error_description"]
    assert params["state"] == state
    assert "code" not in params


async def test_headless_login_shows_code_for_pasting(fake, http):
    auth_url, verifier, _ = new_login(fake, paste=True)
    code = await fake.approve_headless(auth_url)
    status, body = await exchange(http, fake, code, verifier)
    assert status == 200 and KEY_RE.match(body["key"])


@pytest.mark.parametrize(
    "params",
    [
        {"callback_url": "http://localhost:3000/cb"},
        {"callback_url": "http://localhost:3000/cb", "code_challenge": "c", "code_challenge_method": "S512"},
        {"callback_url": "javascript:alert(1)", "code_challenge": "c"},
    ],
)
async def test_bad_authorize_requests_get_400_page(fake, http, params):
    async with http.get(fake.url + "/auth", params=params) as response:
        assert response.status == 400
        assert "Bad request" in await response.text()
    outcome = await fake.submit(str(response.url), "approve")
    assert outcome.status == 400


async def test_authorize_409_switch_answers_openrouters_body_without_redirect(fake):
    fake.config.authorize_409 = True
    auth_url, _, _ = new_login(fake)
    outcome = await fake.submit(auth_url, "approve")

    assert outcome.status == 409 and outcome.location is None
    assert json.loads(outcome.body) == {
        "error": {"message": APP_CONFLICT_MESSAGE, "code": 409},
        "user_id": "user_fake",
    }
    assert outcome.body.startswith('{"error":{"message":"Failed to create or update app')
    assert fake.state()["pending_codes"] == 0
    with pytest.raises(FakeBrowserError):
        await fake.approve(auth_url)


async def test_409_when_callback_changes_between_attempts(fake):
    fake.config.authorize_409_on_new_callback = True
    first, _, _ = new_login(fake, port=3000)
    await fake.approve(first)
    moved, _, _ = new_login(fake, port=45123)
    assert (await fake.submit(moved, "approve")).status == 409
    again, _, _ = new_login(fake, port=3000)
    assert (await fake.approve(again)).startswith("http://localhost:3000/")


# -- exchange -------------------------------------------------------------------------------------------


async def test_code_is_single_use(fake, http):
    auth_url, verifier, _ = new_login(fake)
    code = query(await fake.approve(auth_url))["code"]
    assert (await exchange(http, fake, code, verifier))[0] == 200
    status, body = await exchange(http, fake, code, verifier)
    assert status == 403
    assert_error_shape(body, 403, "Invalid code or code_verifier")
    assert len(fake.issued_keys) == 1


async def test_code_expires_after_ten_minutes(fake, http, clock):
    verifier = pkce.make_verifier()
    fresh = fake.issue_code(pkce.s256_challenge(verifier))
    old = fake.issue_code(pkce.s256_challenge(verifier))
    clock.now += 599
    assert (await exchange(http, fake, fresh, verifier))[0] == 200
    clock.now += 1
    status, body = await exchange(http, fake, old, verifier)
    assert status == 403
    assert_error_shape(body, 403, "Authorization code expired")


async def test_wrong_verifier_is_403_and_consumes_the_code(fake, http):
    verifier = pkce.make_verifier()
    code = fake.issue_code(pkce.s256_challenge(verifier))
    status, body = await exchange(http, fake, code, pkce.make_verifier())
    assert status == 403
    assert_error_shape(body, 403, "Invalid code or code_verifier")
    assert (await exchange(http, fake, code, verifier))[0] == 403


async def test_unknown_code_is_403(fake, http):
    status, body = await exchange(http, fake, "never-issued", pkce.make_verifier())
    assert status == 403 and body["error"]["message"] == "Invalid code or code_verifier"


async def test_plain_method_is_supported(fake, http):
    verifier = pkce.make_verifier()
    code = fake.issue_code(verifier, method="plain")
    assert (await exchange(http, fake, code, verifier, method="plain"))[0] == 200


async def test_unknown_challenge_method_is_400(fake, http):
    verifier = pkce.make_verifier()
    code = fake.issue_code(pkce.s256_challenge(verifier))
    status, body = await exchange(http, fake, code, verifier, method="S512")
    assert status == 400
    assert_error_shape(body, 400, "Invalid code_challenge_method")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_exchange_endpoint_refuses_other_methods_with_405(fake, http, method):
    async with http.request(method, fake.url + "/api/v1/auth/keys") as response:
        assert response.status == 405
        assert_error_shape(await response.json(), 405, "Method Not Allowed")


# -- key information -------------------------------------------------------------------------------------


async def test_key_info_then_revoke_gives_401(fake, http):
    key = fake.issue_key(label="Convocations", limit=5)
    headers = {"Authorization": f"Bearer {key}"}
    async with http.get(fake.url + "/api/v1/key", headers=headers) as response:
        assert response.status == 200
        data = (await response.json())["data"]
    assert set(data) >= {
        "label",
        "limit",
        "limit_remaining",
        "usage",
        "usage_daily",
        "usage_weekly",
        "usage_monthly",
        "is_free_tier",
        "expires_at",
    }
    assert data["limit"] == 5 and data["expires_at"] is None

    assert fake.revoke(key) is True
    async with http.get(fake.url + "/api/v1/key", headers=headers) as response:
        assert response.status == 401
        body = await response.json()
    assert body["error"]["code"] == 401 and body["error"]["message"]


@pytest.mark.parametrize("header", [None, "Bearer sk-or-v1-unknown", "Basic abc"])
async def test_key_info_refuses_missing_or_unknown_keys(fake, http, header):
    headers = {"Authorization": header} if header else {}
    async with http.get(fake.url + "/api/v1/key", headers=headers) as response:
        assert response.status == 401


# -- switches and control routes ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 405, 409, 500, 502, 503])
async def test_forced_exchange_status_uses_openrouters_error_shape(fake, http, status):
    fake.config.exchange_status = status
    verifier = pkce.make_verifier()
    code = fake.issue_code(pkce.s256_challenge(verifier))
    got, body = await exchange(http, fake, code, verifier)
    assert got == status
    assert body["error"]["code"] == status and body["error"]["message"] and body["user_id"] is None
    assert fake.state()["pending_codes"] == 0, "the attempt consumed the code"


async def test_forced_unusable_200_answers(fake, http):
    verifier = pkce.make_verifier()
    fake.config.exchange_not_json = True
    async with http.post(fake.url + "/api/v1/auth/keys", json={"code": "x", "code_verifier": verifier}) as response:
        assert response.status == 200 and response.content_type == "text/html"
    fake.config = FakeConfig(exchange_missing_key=True)
    assert await exchange(http, fake, "x", verifier) == (200, {"user_id": "user_fake"})
    fake.config = FakeConfig(exchange_key_length=5000)
    status, body = await exchange(http, fake, "x", verifier)
    assert status == 200 and len(body["key"]) == 5000


async def test_exchange_delay_holds_the_answer(fake, http):
    fake.config.exchange_delay = 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await exchange(http, fake, "x", pkce.make_verifier())
    assert status == 403 and loop.time() - started >= 0.3


async def test_forced_key_info_status(fake, http):
    key = fake.issue_key()
    fake.config.key_info_status = 503
    async with http.get(fake.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 503


async def test_runtime_config_state_revoke_and_reset_over_http(fake, http):
    async with http.post(fake.url + "/_fake/config", json={"echo_state": False, "exchange_delay": 1}) as response:
        assert response.status == 200
        assert (await response.json())["echo_state"] is False
    assert fake.config.echo_state is False and fake.config.exchange_delay == 1.0
    for bad in ({"no_such_switch": 1}, {"echo_state": "yes"}, {"exchange_status": 200}, [1]):
        async with http.post(fake.url + "/_fake/config", json=bad) as response:
            assert response.status == 400
            assert (await response.json())["error"]
    async with http.get(fake.url + "/_fake/config") as response:
        assert (await response.json())["exchange_delay"] == 1.0
    fake.config.exchange_delay = 0

    auth_url, verifier, _ = new_login(fake)
    code = query(await fake.approve(auth_url))["code"]
    key = (await exchange(http, fake, code, verifier))[1]["key"]
    async with http.get(fake.url + "/_fake/state") as response:
        text = await response.text()
    state = json.loads(text)
    assert key not in text and code not in text and verifier not in text
    assert state["issued_keys"] == [{"fingerprint": fingerprint(key), "label": "Convocations", "revoked": False}]
    assert state["exchanges"][0]["outcome"] == "ok"
    assert state["last_authorize"]["client_id"] == "convocations"

    async with http.post(fake.url + "/_fake/revoke", json={"fingerprint": fingerprint(key)}) as response:
        assert await response.json() == {"revoked": 1}
    async with http.get(fake.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 401
    async with http.post(fake.url + "/_fake/reset") as response:
        assert (await response.json())["echo_state"] is True
    assert fake.issued_keys == [] and fake.exchanges == []


async def test_key_info_data_switch_answers_any_shape_for_accepted_keys_only(fake, http):
    """What frontend authors and the daemon's tests use to try OpenRouter's other shapes (nulls, new fields)."""
    shape = {"label": "from the spec", "limit": None, "a_field_from_next_year": {"x": [1, None]}}
    async with http.post(fake.url + "/_fake/config", json={"key_info_data": shape}) as response:
        assert response.status == 200 and (await response.json())["key_info_data"] == shape
    key = fake.issue_key()
    async with http.get(fake.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}) as response:
        assert await response.json() == {"data": shape}
    async with http.get(fake.url + "/api/v1/key", headers={"Authorization": "Bearer sk-or-v1-nope"}) as response:
        assert response.status == 401
    for bad in ([shape], "label", 3):
        async with http.post(fake.url + "/_fake/config", json={"key_info_data": bad}) as response:
            assert response.status == 400 and "key_info_data must be dict" in (await response.json())["error"]
    assert fake.config.key_info_data == shape


def test_key_info_data_from_the_command_line(capsys):
    from convocationsd.testing.fake_openrouter import config_from_args, parse_args

    assert config_from_args(parse_args(["--key-info-data", '{"label": "x"}'])).key_info_data == {"label": "x"}
    assert config_from_args(parse_args([])).key_info_data is None
    with pytest.raises(SystemExit) as caught:
        parse_args(["--key-info-data", '["not", "an", "object"]'])
    assert caught.value.code == 2 and "--key-info-data: must be a JSON object" in capsys.readouterr().err


# -- standalone ---------------------------------------------------------------------------------------------


class Standalone(NamedTuple):
    process: asyncio.subprocess.Process
    url: str


@contextlib.asynccontextmanager
async def standalone(*switches: str) -> AsyncIterator[Standalone]:
    """`python -m convocationsd.testing.fake_openrouter --port 0 SWITCHES`, as a frontend author runs it; yields
    it once it says where it listens, and kills it at the end if the test has not stopped it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "convocationsd.testing.fake_openrouter",
        "--port",
        "0",
        *switches,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, line
        yield Standalone(process, found.group(0))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_standalone_serves_and_stops_on_sigterm():
    async with standalone("--no-echo-state", "--authorize-409") as (process, url):
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/_fake/config") as response:
                config = await response.json()
            async with http.get(url + "/api/v1/auth/keys") as response:
                assert response.status == 405
        assert config["echo_state"] is False and config["authorize_409"] is True
        process.send_signal(signal.SIGTERM)
        rest, errors = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, errors.decode()
    assert b"stopped" in rest
    assert b"Traceback" not in errors


async def test_codes_without_challenge_switch_accepts_any_verifier(fake, http):
    """OpenRouter documents ``code_challenge`` as optional: with the switch, /auth without one issues a code
    that the exchange accepts whatever verifier comes with it (the attack the daemon's confirmation page is
    for); without it, such a request is a 400."""
    callback = quote("http://localhost:3000/cb", safe="")
    async with http.get(f"{fake.url}/auth?callback_url={callback}") as response:
        assert response.status == 400
    fake.config.codes_without_challenge = True
    code = query(await fake.approve(f"{fake.url}/auth?callback_url={callback}"))["code"]
    assert (await exchange(http, fake, code, pkce.make_verifier()))[0] == 200
    assert fake.exchanges[-1].outcome == "ok"
