"""Sanity checks for a key a person types or pastes (not a validation against OpenRouter)."""

from __future__ import annotations

from convocationsd.core.errors import UsageError

MAX_KEY_LENGTH = 1024


def check_key(key: str) -> str:
    key = key.strip()
    if not key:
        raise UsageError("No key was given.", "Paste your OpenRouter API key (it starts with `sk-or-`).")
    # Printable ASCII only, as the OAuth path requires (openrouter.key_problem): the key goes into an
    # Authorization header, where anything else fails later and further from the cause.
    if len(key) > MAX_KEY_LENGTH or any(not "!" <= c <= "~" for c in key):
        raise UsageError(
            "That does not look like an API key (it has spaces, non-ASCII characters or is far too long).",
            "Paste only the key, which starts with `sk-or-`.",
        )
    if not key.startswith("sk-"):
        raise UsageError(
            "That does not look like an OpenRouter API key (they start with `sk-or-`).",
            "Copy the key from https://openrouter.ai/keys and try again.",
        )
    return key
