"""Pure mapping of OpenRouter outcomes to the contract's error codes, messages and hints."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convocationsd.common.settings import public_url
from convocationsd.core import pkce
from convocationsd.core.errors import ConvError, UpstreamError
from convocationsd.daemon.openrouter import (
    app_conflict_error,
    app_conflict_hint,
    exchange_status_error,
    parse_exchange_answer,
    timeout_error,
    transport_error,
    upstream_error_message,
)

BASE = "https://openrouter.example"


@pytest.mark.parametrize(
    ("status", "upstream", "code", "rejected"),
    [
        (400, "Invalid code_challenge_method", "exchange_failed", False),
        (403, "Invalid code or code_verifier", "exchange_failed", True),
        (403, "Authorization code expired", "exchange_failed", False),
        (403, None, "exchange_failed", False),
        (403, "Forbidden by firewall", "exchange_failed", False),
        (405, "Method Not Allowed", "exchange_failed", False),
        (409, "Failed to create or update app while creating auth code.", "app_conflict", False),
        (500, None, "exchange_failed", False),
        (503, "Service Unavailable", "exchange_failed", False),
        (429, "Rate limit exceeded", "exchange_failed", False),
        (302, None, "exchange_failed", False),
    ],
)
def test_status_mapping(status, upstream, code, rejected):
    error = exchange_status_error(status, upstream)
    assert isinstance(error, UpstreamError) and isinstance(error, ConvError)
    assert error.flow_error.code == code
    assert error.code_rejected is rejected
    assert error.status == status
    assert error.message and error.hint
    assert str(error) == f"{error.message} {error.hint}"


def test_expired_hint_says_codes_live_ten_minutes():
    hint = exchange_status_error(403, "Authorization code expired").hint
    assert "10 minutes" in hint and "convctl oauth start" in hint


def test_server_errors_say_try_again_later():
    assert "try again in a few minutes" in exchange_status_error(502, None).hint


@given(status=st.integers(100, 599), upstream=st.text(min_size=12).filter(lambda t: t.strip() == t and t))
def test_upstream_text_never_reaches_message_or_hint(status, upstream):
    marker = "ZqX" + upstream
    error = exchange_status_error(status, marker)
    assert marker not in error.message and marker not in error.hint


def test_app_conflict_hint_names_port_urls_and_setting():
    hint = app_conflict_hint(3000, False)
    assert "port 3000" in hint
    assert "http://localhost:3000/api/openrouter/oauth/callback" in hint
    assert "http://localhost:3000" in hint
    assert "RCONV_HTTP_PORT" in hint
    assert "fallback" not in hint


def test_app_conflict_hint_explains_a_fallback_port():
    hint = app_conflict_hint(45123, True)
    assert "http://localhost:45123/api/openrouter/oauth/callback" in hint
    assert "fallback" in hint and "3000" in hint and "register" in hint
    assert hint.endswith(pkce.fallback_port_note())


def test_generic_app_conflict_when_port_unknown():
    error = exchange_status_error(409, None)
    assert error.flow_error.code == "app_conflict"
    assert "RCONV_HTTP_PORT" in error.hint and "/api/openrouter/oauth/callback" in error.hint
    specific = app_conflict_error(app_conflict_hint(3001, True))
    assert specific.hint == app_conflict_hint(3001, True) and specific.flow_error.code == "app_conflict"


@pytest.mark.parametrize(
    "body",
    [b"<html>oops</html>", b"[]", b'"sk-or"', b'{"user_id": "u"}', b'{"key": 7}', b'{"key": "a b"}', b"\xff\xfe"],
)
def test_unusable_answers_are_exchange_failed(body):
    with pytest.raises(UpstreamError) as caught:
        parse_exchange_answer(200, body)
    assert caught.value.flow_error.code == "exchange_failed" and not caught.value.code_rejected


def test_answer_with_key():
    result = parse_exchange_answer(200, json.dumps({"key": "sk-or-v1-abc", "user_id": "user_1"}).encode())
    assert (result.key, result.user_id) == ("sk-or-v1-abc", "user_1")
    assert parse_exchange_answer(200, b'{"key": "sk-or-v1-abc", "user_id": 5}').user_id is None
    assert "sk-or-v1-abc" not in repr(result)


def test_the_spec_examples_exchange_answer_and_its_variants():
    """OpenRouter's own example (tests/helpers/openrouter_examples.py), a null user_id as the spec allows, and
    fields the daemon has never seen."""
    from tests.helpers.openrouter_examples import EXCHANGE_SDK_SPEC

    result = parse_exchange_answer(200, json.dumps(EXCHANGE_SDK_SPEC).encode())
    assert (result.key, result.user_id) == (EXCHANGE_SDK_SPEC["key"], EXCHANGE_SDK_SPEC["user_id"])
    assert parse_exchange_answer(200, json.dumps({**EXCHANGE_SDK_SPEC, "user_id": None}).encode()).user_id is None
    newer = {**EXCHANGE_SDK_SPEC, "key_hash": "f01d5260", "expires_at": None, "scopes": ["inference"]}
    assert parse_exchange_answer(200, json.dumps(newer).encode()) == result


def test_the_spec_examples_error_bodies_are_classified():
    """The error shape of the spec's examples, with the optional fields set and not."""
    assert upstream_error_message(b'{"error": {"code": 400, "message": "Invalid request parameters"}}') == (
        "Invalid request parameters"
    )
    body = {"error": {"code": 403, "message": "Authorization code expired", "metadata": None}, "user_id": None}
    body["openrouter_metadata"] = {"request_id": "r1"}
    assert exchange_status_error(403, upstream_error_message(json.dumps(body).encode())).hint.startswith("Codes live")


def test_upstream_error_message_reads_openrouters_shape_only():
    assert upstream_error_message(b'{"error": {"code": 403, "message": "Invalid code"}}') == "Invalid code"
    assert upstream_error_message(b'{"error": "x"}') is None
    assert upstream_error_message(b"not json") is None
    assert upstream_error_message(b"[1]") is None


def test_public_url_drops_credentials_and_query():
    assert public_url("https://u:secret@openrouter.ai/base?token=abc#frag") == "https://openrouter.ai/base"
    assert public_url("http://127.0.0.1:8787") == "http://127.0.0.1:8787"
    assert public_url("http://user@[::1]:8787/x?y") == "http://[::1]:8787/x"
    assert public_url("http://localhost:99999") == "(an invalid URL)"


def _connector_error(os_error: OSError, cls=aiohttp.ClientConnectorError):
    key = SimpleNamespace(host="openrouter.example", port=443, ssl=True)
    return cls(key, os_error)


@pytest.mark.parametrize(
    ("exc", "phrase"),
    [
        (TimeoutError(), "did not answer within 7 s"),
        (aiohttp.ServerTimeoutError(), "did not answer within 7 s"),
        (_connector_error(socket.gaierror(-2, "Name or service not known")), "could not be resolved"),
        (_connector_error(ConnectionRefusedError(111, "refused")), "refused"),
        (aiohttp.ServerDisconnectedError(), "broke"),
        (aiohttp.InvalidURL("nope"), "not valid"),
        (ConnectionResetError(), "broke"),
    ],
)
def test_transport_errors_are_upstream_unreachable(exc, phrase):
    error = transport_error(BASE, exc, 7)
    assert error.flow_error.code == "upstream_unreachable" and error.status is None
    assert phrase in error.message
    assert BASE in error.message or BASE in error.hint
    assert "CONVOCATIONS_OPENROUTER_URL" in error.hint or "network" in error.hint


def test_timeout_message_formats_seconds():
    assert "within 30 s" in timeout_error(BASE, 30.0).message
    assert "within 0.5 s" in timeout_error(BASE, 0.5).message
