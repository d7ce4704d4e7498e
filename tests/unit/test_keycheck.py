"""The sanity check of a key a person types or pastes (convctl secret set-openrouter-key, secret.set):
what passes comes back trimmed, each kind of mistake gets its own message, and the prefix it demands is the
one its hints and the docs name."""

from __future__ import annotations

from pathlib import Path

import pytest

from convocationsd.core.errors import UsageError
from convocationsd.core.keycheck import MAX_KEY_LENGTH, PREFIX, check_key

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
    assert MAX_KEY_LENGTH == 1024  # keys OpenRouter issues are held to the same limit (daemon/openrouter.py)
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
