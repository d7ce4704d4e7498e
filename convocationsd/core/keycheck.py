"""Sanity checks for a key a person types or pastes (not a validation against OpenRouter)."""

from __future__ import annotations

from convocationsd.core.errors import UsageError

MAX_KEY_LENGTH = 1024
PREFIX = "sk-or-"  # every OpenRouter API key starts so; the hints and docs/protocol.md say so too


def check_key(key: str) -> str:
    key = key.strip()
    if not key:
        raise UsageError("No key was given.", f"Paste your OpenRouter API key (it starts with `{PREFIX}`).")
    # Printable ASCII only, as the OAuth path requires (openrouter.key_problem): the key goes into an
    # Authorization header, where anything else fails later and further from the cause.
    if len(key) > MAX_KEY_LENGTH or any(not "!" <= c <= "~" for c in key):
        raise UsageError(
            "That does not look like an API key (it has spaces, non-ASCII characters or is far too long).",
            f"Paste only the key, which starts with `{PREFIX}`.",
        )
    if not key.startswith(PREFIX):
        raise UsageError(
            f"That does not look like an OpenRouter API key (they start with `{PREFIX}`).",
            "Copy the key from https://openrouter.ai/keys and try again.",
        )
    return key
