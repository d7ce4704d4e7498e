"""The rules for an OpenRouter API key, one copy for both programs: what a key may look like (one a person
types, one OpenRouter issues), how OpenRouter is asked about one and what its answer means, and what storing
one answers. Pure: the request itself goes out by the daemon's aiohttp client (daemon/openrouter.py) or, in
convctl with no daemon to ask, by urllib (cli/secret_ops.py), which does not load aiohttp."""

from __future__ import annotations

import json
from typing import Any

from convocationsd.core.errors import KEYS_PAGE, UsageError

MAX_KEY_LENGTH = 1024
PREFIX = "sk-or-"  # every OpenRouter API key starts so; the hints and docs/protocol.md say so too

# ``GET`` with the key as its bearer token: the key's information (label, usage, limit) when OpenRouter
# accepts it, REJECTED when it does not know the key (never issued, or revoked).
KEY_INFO_PATH = "/api/v1/key"
REJECTED = 401


def key_problem(key: object) -> str:
    """Why ``key`` cannot be an API key, or "" if it can: a non-empty printable-ASCII string of sane length.
    Printable ASCII because the key goes into an Authorization header, where anything else fails later and
    further from the cause."""
    if not isinstance(key, str):
        return "the key is missing" if key is None else "the key is not a string"
    if not key:
        return "the key is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"the key is implausibly long ({len(key)} characters)"
    if not all("!" <= ch <= "~" for ch in key):
        return "the key contains spaces, control or non-ASCII characters"
    return ""


def check_key(key: str) -> str:
    """A key a person typed or pasted, trimmed; UsageError, with what to do, when it cannot be one. Not a
    question to OpenRouter: that is ``secret.set`` with ``verify``."""
    key = key.strip()
    if not key:
        raise UsageError("No key was given.", f"Paste your OpenRouter API key (it starts with `{PREFIX}`).")
    if key_problem(key):
        raise UsageError(
            "That does not look like an API key (it has spaces, non-ASCII characters or is far too long).",
            f"Paste only the key, which starts with `{PREFIX}`.",
        )
    if not key.startswith(PREFIX):
        raise UsageError(
            f"That does not look like an OpenRouter API key (they start with `{PREFIX}`).",
            f"Copy the key from {KEYS_PAGE} and try again.",
        )
    return key


def key_info(status: int, body: bytes) -> dict[str, Any] | None:
    """The key's information in OpenRouter's answer to ``GET KEY_INFO_PATH`` (the ``data`` object of a 200),
    or None when the answer holds none: then OpenRouter was not really asked, unless ``status`` is REJECTED."""
    if status != 200:
        return None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting is not
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    return data if isinstance(data, dict) else None


def stored(backend: str, *, verify: bool, not_verified_because: str | None = None) -> dict[str, Any]:
    """The answer to storing a key (``secret.set``, and convctl's own when no daemon runs): where it went and,
    when OpenRouter was to be asked first, whether it accepted the key or why it could not be asked. A key
    OpenRouter rejects is never stored, so never answered this way."""
    reply: dict[str, Any] = {"stored": True, "backend": backend}
    if verify:
        reply.update(verified=not_verified_because is None, not_verified_because=not_verified_because)
    return reply
