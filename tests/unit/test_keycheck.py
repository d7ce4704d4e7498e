"""The key rules both programs follow (core/keycheck). The check of a key a person types or pastes (convctl
secret set-openrouter-key, secret.set): what passes comes back trimmed, each kind of mistake gets its own
message, and the prefix it demands is the one its hints and the docs name. The shape any key must have,
one OpenRouter issues included. What OpenRouter's answer to the key check means, and what storing a key
answers, whichever program stored it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convocationsd.core.errors import UsageError
from convocationsd.core.keycheck import (
    KEY_INFO_PATH,
    MAX_KEY_LENGTH,
    PREFIX,
    REJECTED,
    check_key,
    key_info,
    key_problem,
    stored,
)
from tests.helpers.openrouter_examples import KEY_API_REFERENCE, KEY_SDK_SPEC

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EMPTY = "No key was given."
NOT_A_KEY = "does not look like an API key"
NOT_OPENROUTERS = "does not look like an OpenRouter API key"


def refused(key: str) -> UsageError:
    with pytest.raises(UsageError) as caught:
        check_key(key)
    assert caught.value.hint  # every refusal says what to do
    assert caught.value.exit_code == 2
    return caught.value


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("sk-or-v1-abc", "sk-or-v1-abc"),
        ("  sk-or-v1-abc\n", "sk-or-v1-abc"),  # pasted with the newline and the spaces around it
        ("\tsk-or-v1-abc\r\n", "sk-or-v1-abc"),
        ("sk-or-!~", "sk-or-!~"),  # the ends of printable ASCII
        ("sk-or-" + "a" * (MAX_KEY_LENGTH - 6), "sk-or-" + "a" * (MAX_KEY_LENGTH - 6)),  # as long as allowed
    ],
    ids=["plain", "padded", "tab-crlf", "printable-ends", "longest"],
)
def test_a_plausible_key_comes_back_trimmed(typed, key):
    assert check_key(typed) == key


def test_the_length_limit_is_1024_characters():
    assert MAX_KEY_LENGTH == 1024  # keys OpenRouter issues are held to the same limit (key_problem)
    assert NOT_A_KEY in refused("sk-or-" + "a" * (MAX_KEY_LENGTH - 5)).message


@pytest.mark.parametrize("typed", ["", "   ", "\n", "\t\r\n"])
def test_nothing_is_no_key(typed):
    assert refused(typed).message == EMPTY
    assert f"`{PREFIX}`" in refused(typed).hint


@pytest.mark.parametrize(
    "typed", ["sk-or v1", "sk-or-\x00", "sk-or-\x7f", "sk-or-é", "sk-or-\u200b", "sk-or-\x1b[31m", "sk-\x20x"]
)
def test_spaces_controls_and_non_ascii_are_not_a_key(typed):
    error = refused(typed)
    assert NOT_A_KEY in error.message and f"`{PREFIX}`" in error.hint


@pytest.mark.parametrize(
    "typed", ["sk-abc", "sk-proj-0123", "or-v1-abc", "pk-abc", "SK-OR-V1-0123", "SK-or-v1", "-sk-or", "sk"]
)
def test_a_key_that_does_not_start_with_sk_or_is_not_openrouters(typed):
    error = refused(typed)
    assert NOT_OPENROUTERS in error.message and f"`{PREFIX}`" in error.message
    assert "openrouter.ai/keys" in error.hint


def test_the_protocol_doc_names_the_same_prefix():
    row = next(line for line in PROTOCOL.read_text().splitlines() if line.startswith("| `UsageError` | `secret.set`"))
    assert f"does not start with `{PREFIX}`" in row


# -- the shape of any key, one OpenRouter issues included ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (None, "missing"),
        (123, "not a string"),
        (["sk"], "not a string"),
        ("", "empty"),
        ("k" * (MAX_KEY_LENGTH + 1), f"implausibly long ({MAX_KEY_LENGTH + 1} characters)"),
        ("sk-or-v1 abc", "spaces"),
        ("sk-or-v1-abc\n", "control"),
        ("sk-or-v1-\x00abc", "control"),
        ("sk-or-v1-é", "non-ASCII"),
    ],
)
def test_unusable_keys(key, problem):
    assert problem in key_problem(key)


def test_plausible_keys():
    assert key_problem("sk-or-v1-" + "a" * 64) == ""
    assert key_problem("k" * MAX_KEY_LENGTH) == ""
    assert key_problem("!~") == ""  # the ends of printable ASCII


# -- OpenRouter's answer to the key check ---------------------------------------------------------------------


def test_the_key_check_asks_openrouters_key_endpoint():
    """The endpoint and the status of OpenRouter's API reference: the daemon and convctl ask no other."""
    assert (KEY_INFO_PATH, REJECTED) == ("/api/v1/key", 401)


@pytest.mark.parametrize("example", [KEY_SDK_SPEC, KEY_API_REFERENCE], ids=["sdk-spec", "api-reference"])
def test_openrouters_own_examples_are_the_keys_information(example):
    assert key_info(200, json.dumps(example).encode()) == example["data"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>a captive portal</html>",
        b"\xff\xfe",
        b"[]",
        b'"data"',
        b'{"error": {"code": 401, "message": "No auth credentials found"}}',
        b'{"data": null}',
        b'{"data": ["label"]}',
        b'{"data": "label"}',
        b"[" * 100_000,  # deeper than json's recursion limit
    ],
)
def test_a_200_without_the_keys_information_is_no_answer(body):
    assert key_info(200, body) is None


@pytest.mark.parametrize("status", [201, 204, 302, REJECTED, 403, 500])
def test_only_a_200_carries_the_keys_information(status):
    assert key_info(status, json.dumps(KEY_SDK_SPEC).encode()) is None


# -- what storing a key answers -------------------------------------------------------------------------------


def test_stored_without_verify_says_only_where():
    assert stored("keyring", verify=False) == {"stored": True, "backend": "keyring"}
    assert stored("keyring", verify=False, not_verified_because="ignored") == {"stored": True, "backend": "keyring"}


def test_stored_with_verify_says_whether_openrouter_accepted_it():
    assert stored("local-encrypted", verify=True) == {
        "stored": True,
        "backend": "local-encrypted",
        "verified": True,
        "not_verified_because": None,
    }
    assert stored("keyring", verify=True, not_verified_because="Could not reach OpenRouter") == {
        "stored": True,
        "backend": "keyring",
        "verified": False,
        "not_verified_because": "Could not reach OpenRouter",
    }
