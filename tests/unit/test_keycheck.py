"""The sanity check of a key a person types: the prefix it demands is the one its hints and the docs name."""

from __future__ import annotations

from pathlib import Path

import pytest

from convocationsd.core.errors import UsageError
from convocationsd.core.keycheck import PREFIX, check_key

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_an_openrouter_key_passes_trimmed():
    assert check_key("  sk-or-v1-0123abcd\n") == "sk-or-v1-0123abcd"


@pytest.mark.parametrize("typed", ["sk-abc", "sk-proj-0123", "or-v1-0123", "SK-OR-V1-0123"])
def test_a_key_of_another_kind_is_refused_with_the_prefix_named(typed):
    with pytest.raises(UsageError) as e:
        check_key(typed)
    assert f"`{PREFIX}`" in e.value.message and "openrouter.ai/keys" in e.value.hint


@pytest.mark.parametrize("typed", ["", "   ", "sk-or-v1 with spaces", "sk-or-\u00e9", "sk-or-" + "x" * 2000])
def test_what_is_no_key_at_all_names_the_prefix_in_its_hint(typed):
    with pytest.raises(UsageError) as e:
        check_key(typed)
    assert f"`{PREFIX}`" in e.value.hint


def test_the_protocol_doc_names_the_same_prefix():
    row = next(line for line in PROTOCOL.read_text().splitlines() if line.startswith("| `UsageError` | `secret.set`"))
    assert f"does not start with `{PREFIX}`" in row
