"""The shipped fake OpenRouter as OpenRouter's official Python SDK sees it.

The SDK (``openrouter`` on PyPI, see tests/helpers/openrouter_sdk.py) is generated from OpenRouter's OpenAPI
spec: every answer of the fake must parse under its models with zero validation errors and with no field the
models do not know, and every error must reach the caller as the SDK's typed error for its status. When a
new SDK version makes a field required that the fake lacks, test_key_metadata_has_every_field_the_sdk_requires
fails naming it.
"""

from __future__ import annotations

import asyncio
import signal
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx
import pytest
from openrouter import errors, operations
from openrouter.components import KeyBudget

from convocationsd.core import pkce
from convocationsd.testing.fake_openrouter import (
    EXPIRED_CODE_MESSAGE,
    FORCED_MESSAGES,
    INVALID_CODE_MESSAGE,
    USER_ID,
    FakeOpenRouter,
    key_data,
)
from tests.conftest import ManualClock
from tests.helpers.openrouter_examples import EXCHANGE_SDK_SPEC_REQUEST
from tests.helpers.openrouter_sdk import (
    SDK_VERSION,
    exchange_body_problem,
    required_fields,
    sdk_client,
    shape_problems,
)
from tests.integration.test_fake_openrouter import standalone

# The spec marks rate_limit and is_provisioning_key deprecated; the SDK warns each time it parses them.
pytestmark = pytest.mark.filterwarnings("ignore:.*DEPRECATED.*:DeprecationWarning")

# The SDK's typed error for each status its exchange and key-metadata calls name; any other 4xx/5xx is
# OpenRouterDefaultError. The body of every error has the spec's one error shape, checked with the SDK's
# model for that status where it has one.
EXCHANGE_ERRORS = {
    400: errors.BadRequestResponseError,
    403: errors.ForbiddenResponseError,
    500: errors.InternalServerResponseError,
}
KEY_ERRORS = {401: errors.UnauthorizedResponseError, 500: errors.InternalServerResponseError}
ERROR_BODIES = {
    400: errors.BadRequestResponseErrorData,
    401: errors.UnauthorizedResponseErrorData,
    403: errors.ForbiddenResponseErrorData,
    404: errors.NotFoundResponseErrorData,
    409: errors.ConflictResponseErrorData,
    429: errors.TooManyRequestsResponseErrorData,
    500: errors.InternalServerResponseErrorData,
    502: errors.BadGatewayResponseErrorData,
    503: errors.ServiceUnavailableResponseErrorData,
    504: errors.GatewayTimeoutResponseErrorData,
}


@pytest.fixture(autouse=True)
def no_openrouter_environment(monkeypatch):
    """The SDK sends OPENROUTER_API_KEY when it is given no key, and logs bodies with OPENROUTER_DEBUG."""
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_DEBUG", raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock):
    async with FakeOpenRouter(clock=clock) as server:
        yield server


def login(fake: FakeOpenRouter, method: str = "S256") -> tuple[str, str]:
    verifier = pkce.make_verifier()
    challenge = pkce.s256_challenge(verifier) if method == "S256" else verifier
    return fake.issue_code(challenge, method), verifier


async def exchange(fake: FakeOpenRouter, code: str, verifier: str, method: str = "S256", **kw):
    async with sdk_client(fake.url) as sdk:
        return await sdk.o_auth.exchange_auth_code_for_api_key_async(
            code=code, code_verifier=verifier, code_challenge_method=method, **kw
        )


def assert_error_shape(error: errors.OpenRouterError, message: str) -> None:
    """The body is the spec's error shape, with the status as ``error.code`` and the fake's message."""
    model = ERROR_BODIES.get(error.status_code, errors.BadRequestResponseErrorData)
    assert shape_problems(model, error.raw_response.json()) == []
    parsed = model.model_validate_json(error.body)
    assert (parsed.error.code, parsed.error.message) == (error.status_code, message)


# -- the code exchange ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["S256", "plain"])
async def test_exchange_succeeds_as_the_sdk_expects(fake, method):
    code, verifier = login(fake, method)
    answer = await exchange(fake, code, verifier, method)
    assert isinstance(answer, operations.ExchangeAuthCodeForAPIKeyResponse)
    assert answer.key == fake.issued_keys[-1] and answer.user_id == USER_ID
    assert [(r.status, r.outcome, r.code_challenge_method) for r in fake.exchanges] == [(200, "ok", method)]


async def test_exchange_answer_has_nothing_the_sdk_does_not_know(fake):
    seen: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        seen.append(response)

    code, verifier = login(fake)
    async with sdk_client(fake.url) as sdk:
        sdk.sdk_configuration.async_client.event_hooks["response"].append(keep)
        await sdk.o_auth.exchange_auth_code_for_api_key_async(
            code=code, code_verifier=verifier, code_challenge_method="S256"
        )
    assert shape_problems(operations.ExchangeAuthCodeForAPIKeyResponse, seen[0].json()) == []


async def test_replayed_code_is_the_sdks_forbidden_error(fake):
    code, verifier = login(fake)
    await exchange(fake, code, verifier)
    with pytest.raises(errors.ForbiddenResponseError) as caught:
        await exchange(fake, code, verifier)
    assert caught.value.status_code == 403
    assert_error_shape(caught.value, INVALID_CODE_MESSAGE)


async def test_wrong_verifier_is_the_sdks_forbidden_error(fake):
    code, _ = login(fake)
    with pytest.raises(errors.ForbiddenResponseError) as caught:
        await exchange(fake, code, pkce.make_verifier())
    assert_error_shape(caught.value, INVALID_CODE_MESSAGE)
    assert fake.issued_keys == []


async def test_expired_code_is_the_sdks_forbidden_error(fake, clock):
    code, verifier = login(fake)
    clock.now += fake.config.code_lifetime
    with pytest.raises(errors.ForbiddenResponseError) as caught:
        await exchange(fake, code, verifier)
    assert_error_shape(caught.value, EXPIRED_CODE_MESSAGE)


async def test_method_other_than_post_is_a_405_the_sdk_reports(fake):
    """The SDK only POSTs; a request hook turns its request into a GET on the way out."""

    async def as_get(request: httpx.Request) -> None:
        request.method = "GET"

    code, verifier = login(fake)
    async with sdk_client(fake.url) as sdk:
        sdk.sdk_configuration.async_client.event_hooks["request"].append(as_get)
        with pytest.raises(errors.OpenRouterDefaultError) as caught:
            await sdk.o_auth.exchange_auth_code_for_api_key_async(
                code=code, code_verifier=verifier, code_challenge_method="S256"
            )
    assert caught.value.status_code == 405
    assert_error_shape(caught.value, "Method Not Allowed")
    assert [r.outcome for r in fake.exchanges] == ["method_not_allowed"]


@pytest.mark.parametrize("status", sorted(FORCED_MESSAGES))
async def test_forced_exchange_errors_are_the_sdks_error_for_their_status(fake, status):
    fake.config.update({"exchange_status": status})
    code, verifier = login(fake)
    with pytest.raises(errors.OpenRouterError) as caught:
        await exchange(fake, code, verifier)
    assert type(caught.value) is EXCHANGE_ERRORS.get(status, errors.OpenRouterDefaultError)
    assert caught.value.status_code == status
    assert_error_shape(caught.value, FORCED_MESSAGES[status])
    assert len(fake.exchanges) == 1  # no retry: the SDK's default would retry a 5xx for up to an hour


# -- key metadata -------------------------------------------------------------------------------------------


async def key_metadata(fake: FakeOpenRouter, key: str | None) -> tuple[operations.GetCurrentKeyResponse, dict]:
    seen: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        seen.append(response)

    async with sdk_client(fake.url, key) as sdk:
        sdk.sdk_configuration.async_client.event_hooks["response"].append(keep)
        answer = await sdk.api_keys.get_current_key_metadata_async()
    return answer, seen[0].json()


async def test_key_metadata_has_every_field_the_sdk_requires(fake):
    """Fails, naming the fields, when a new SDK version requires a field the fake does not send."""
    _, body = await key_metadata(fake, fake.issue_key())
    missing = required_fields(operations.GetCurrentKeyData) - set(body["data"])
    assert not missing, f"OpenRouter SDK {SDK_VERSION} requires fields the fake lacks: {sorted(missing)}"
    assert shape_problems(operations.GetCurrentKeyResponse, body) == []


async def test_key_metadata_of_a_fresh_key(fake):
    code, verifier = login(fake)
    key = (await exchange(fake, code, verifier)).key
    answer, body = await key_metadata(fake, key)
    data = answer.data
    assert (data.label, data.limit, data.limit_remaining, data.limit_reset) == ("Convocations", None, None, None)
    assert (data.usage, data.byok_usage, data.is_free_tier, data.is_management_key) == (0, 0, True, False)
    assert (data.creator_user_id, data.organization_id, data.expires_at) == (USER_ID, None, None)
    assert data.budgets == [] and data.effective_budget is None
    assert data.free_model_daily_requests.used == 0
    assert body["data"] == key_data("Convocations", None, USER_ID)


async def test_key_metadata_of_a_key_with_a_limit_has_its_budget_layer(fake):
    answer, _ = await key_metadata(fake, fake.issue_key("my laptop", limit=25.0))
    data = answer.data
    assert (data.label, data.limit, data.limit_remaining) == ("my laptop", 25.0, 25.0)
    assert data.budgets == [data.effective_budget]
    assert isinstance(data.effective_budget, KeyBudget)
    assert (data.effective_budget.scope, data.effective_budget.remaining_usd) == ("key_limit", 25.0)


@pytest.mark.parametrize(
    ("case", "message"),
    [("revoked", "User not found."), ("unknown", "User not found."), ("none", "No auth credentials found")],
)
async def test_rejected_keys_are_the_sdks_unauthorized_error(fake, case, message):
    key = {"revoked": fake.issue_key(), "unknown": "sk-or-v1-" + "0" * 64, "none": None}[case]
    if case == "revoked":
        fake.revoke(key)
    with pytest.raises(errors.UnauthorizedResponseError) as caught:
        await key_metadata(fake, key)
    assert caught.value.status_code == 401
    assert_error_shape(caught.value, message)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_forced_key_metadata_errors_are_the_sdks_error_for_their_status(fake, status):
    fake.config.update({"key_info_status": status})
    with pytest.raises(errors.OpenRouterError) as caught:
        await key_metadata(fake, fake.issue_key())
    assert type(caught.value) is KEY_ERRORS.get(status, errors.OpenRouterDefaultError)
    assert_error_shape(caught.value, FORCED_MESSAGES[status])


# -- the checks themselves can fail ---------------------------------------------------------------------------


def test_the_shape_check_names_what_is_missing_or_invented():
    body = {"data": key_data("x", 5.0, USER_ID)}
    assert shape_problems(operations.GetCurrentKeyResponse, body) == []
    del body["data"]["budgets"], body["data"]["effective_budget"]["spend_usd"]
    body["data"]["rate_limit"]["burst"] = 3
    body["data"]["limit_reset"] = 7
    problems = shape_problems(operations.GetCurrentKeyResponse, body)
    assert problems == [
        "data.budgets: Field required",
        "data.effective_budget.spend_usd: Field required",
        "data.limit_reset: Input should be a valid string",
    ]
    del body["data"]["limit_reset"]
    body["data"].update(budgets=[], effective_budget=None, limit_reset=None)
    assert shape_problems(operations.GetCurrentKeyResponse, body) == ["data.rate_limit.burst: not in the SDK's model"]


def test_a_newer_sdk_requiring_a_field_fails_the_fields_check():
    class NewerKeyData(operations.GetCurrentKeyData):
        spend_alerts: list[str]

    data = key_data("x", None, USER_ID)
    assert required_fields(NewerKeyData) - set(data) == {"spend_alerts"}
    assert shape_problems(NewerKeyData, data) == ["spend_alerts: Field required"]


def test_exchange_body_check_catches_what_the_sdk_would_let_through():
    code, verifier = "c0de-value", "v" * 64
    good = {"code": code, "code_verifier": verifier, "code_challenge_method": "S256"}
    assert exchange_body_problem(good) is None
    assert exchange_body_problem(EXCHANGE_SDK_SPEC_REQUEST) is None  # the spec's own example
    bad = [
        {**good, "code_challenge_method": "s256"},
        {**good, "redirect_uri": "http://localhost:3000/"},
        {"code_verifier": verifier, "code_challenge_method": "S256"},
        {**good, "code": 12345},
        ["not", "an", "object"],
        None,
    ]
    for body in bad:
        problem = exchange_body_problem(body)
        assert problem and SDK_VERSION in problem, body
        assert code not in problem and verifier not in problem and "12345" not in problem


# -- the standalone fake, as a frontend author runs it --------------------------------------------------------


async def test_the_standalone_fake_through_the_sdk_end_to_end():
    """`python -m convocationsd.testing.fake_openrouter`, approved over plain HTTP like a browser would, then
    the SDK exchanges the code and reads the key's metadata."""
    async with standalone() as (process, url):
        verifier = pkce.make_verifier()
        form = {
            "callback_url": "http://localhost:3000/api/openrouter/oauth/callback",
            "code_challenge": pkce.s256_challenge(verifier),
            "code_challenge_method": "S256",
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/auth/approve", data=form, allow_redirects=False) as response,
        ):
            code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
        async with sdk_client(url) as sdk:
            answer = await sdk.o_auth.exchange_auth_code_for_api_key_async(
                code=code, code_verifier=verifier, code_challenge_method="S256"
            )
        async with sdk_client(url, answer.key) as sdk:
            metadata = await sdk.api_keys.get_current_key_metadata_async()
        assert metadata.data.label == "Convocations" and metadata.data.creator_user_id == answer.user_id
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0 and b"Traceback" not in stderr
