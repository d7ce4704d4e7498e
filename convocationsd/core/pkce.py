"""PKCE (RFC 7636) and the authorize URL. Pure: randomness comes in as an argument.

hashlib and secrets are imported when a login first needs them, not with the daemon: with hmac and
random they load OpenSSL's hashes, ~4 ms of every start (bench/ANALYSIS.md).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import urlencode

CALLBACK_PATH = "/api/openrouter/oauth/callback"
CLIENT_ID = "convocations"
VERIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

TokenSource = Callable[[int], str]
"""Returns a URL-safe random string from ``n`` random bytes (``secrets.token_urlsafe`` in production)."""


def token_urlsafe(nbytes: int) -> str:
    """The TokenSource of production: ``secrets.token_urlsafe``."""
    import secrets

    return secrets.token_urlsafe(nbytes)


def make_verifier(token: TokenSource = token_urlsafe) -> str:
    # 64 random bytes -> 86 chars of [A-Za-z0-9_-], inside RFC 7636's 43..128.
    verifier = token(64)
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= VERIFIER_CHARS:
        raise ValueError("PKCE verifier must be 43-128 unreserved characters")
    return verifier


def s256_challenge(verifier: str) -> str:
    import hashlib

    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def local_origin(port: int) -> str:
    return f"http://localhost:{port}"


def callback_url(port: int) -> str:
    return local_origin(port) + CALLBACK_PATH


def fallback_port_note(preferred: int | None = None) -> str:
    """After "the preferred port was busy": what is known about logging in from a fallback port, and how to find
    out (shared/design/openrouter.md). OpenRouter's current docs accept localhost callbacks on any port, older
    ones only 443 and 3000; the cause of its 409 "Failed to create or update app" is not documented."""
    busy = f"port {preferred}" if preferred is not None else "the preferred port (RCONV_HTTP_PORT, default 3000)"
    return (
        "A fallback port may change at every start. OpenRouter's current documentation accepts localhost callbacks "
        "on any port (older versions allowed only ports 443 and 3000). If OpenRouter answers a login with HTTP 409 "
        f'"Failed to create or update app", free {busy} (`convctl doctor` names what holds it), restart '
        "convocationsd and log in again."
    )


def authorize_url(openrouter_url: str, port: int, challenge: str, state: str, *, paste: bool = False) -> str:
    """OpenRouter's ``/auth`` URL, parameters in the contract's order. ``paste=True`` omits
    ``callback_url``: OpenRouter then shows the code for the person to paste (headless login)."""
    params: dict[str, str] = {}
    if not paste:
        params["callback_url"] = callback_url(port)
    params.update(
        code_challenge=challenge,
        code_challenge_method="S256",
        client_id=CLIENT_ID,
        referrer=local_origin(port),
        state=state,
    )
    return f"{openrouter_url.rstrip('/')}/auth?{urlencode(params)}"
