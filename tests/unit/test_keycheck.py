"""The sanity check of a key a person types or pastes (convctl secret set-openrouter-key, secret.set):
what passes comes back trimmed, and each kind of mistake gets its own message."""

from __future__ import annotations

import pytest

from convocationsd.core.errors import UsageError
from convocationsd.core.keycheck import MAX_KEY_LENGTH, check_key

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
        ("sk-!~", "sk-!~"),  # the ends of printable ASCII
        ("sk-" + "a" * (MAX_KEY_LENGTH - 3), "sk-" + "a" * (MAX_KEY_LENGTH - 3)),  # as long as allowed
    ],
    ids=["plain", "padded", "tab-crlf", "printable-ends", "longest"],
)
def test_a_plausible_key_comes_back_trimmed(typed, key):
    assert check_key(typed) == key


def test_the_length_limit_is_1024_characters():
    assert MAX_KEY_LENGTH == 1024  # keys OpenRouter issues are held to the same limit (daemon/openrouter.py)
    assert NOT_A_KEY in refused("sk-" + "a" * (MAX_KEY_LENGTH - 2)).message


@pytest.mark.parametrize("typed", ["", "   ", "\n", "\t\r\n"])
def test_nothing_is_no_key(typed):
    assert refused(typed).message == EMPTY


@pytest.mark.parametrize(
    "typed", ["sk-or v1", "sk-or-\x00", "sk-or-\x7f", "sk-or-é", "sk-or-\u200b", "sk-or-\x1b[31m", "sk-\x20x"]
)
def test_spaces_controls_and_non_ascii_are_not_a_key(typed):
    assert NOT_A_KEY in refused(typed).message


@pytest.mark.parametrize("typed", ["or-v1-abc", "pk-abc", "SK-or-v1", "-sk-or", "sk"])
def test_a_key_that_does_not_start_with_sk_is_not_openrouters(typed):
    assert NOT_OPENROUTERS in refused(typed).message
