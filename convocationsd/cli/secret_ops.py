"""Secret commands: through the daemon when it runs (so subscribers hear of the change), else
directly on the files with the same store code the daemon uses."""

from __future__ import annotations

import os

from convocationsd.client import Client
from convocationsd.core.errors import DaemonUnreachable, KeyNotAccepted

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: convctl starts faster without it
    from typing import Any

    from convocationsd.common.settings import Settings
    from convocationsd.store.secrets import SecretStore

KEYRING_WAIT = 150.0  # seconds for the daemon's answer to a secret call: a keyring unlock prompt may take a while
KEY_CHECK_TIMEOUT = 10.0  # seconds for OpenRouter to answer the key check when no daemon runs
MAX_ANSWER_BYTES = 64 * 1024  # of the key check's answer, as the daemon's client reads at most


def _via_daemon(socket: str | None, method: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The daemon's answer, or None when no daemon can be reached (then the caller uses the files).
    Only a failed connect means that: once connected, every error propagates (NoReply, RemoteError, a
    disconnect mid-call), since the daemon may still be writing the store and two writers must not race."""
    client = Client(socket, timeout=KEYRING_WAIT)
    try:
        client.connect()
    except DaemonUnreachable:
        return None
    try:
        reply: dict[str, Any] | None = client.call(method, params)  # the secret methods answer with an object
        return reply
    finally:
        client.close()


def _settings() -> Settings:
    from convocationsd.store import config

    return config.load({}, os.environ).settings  # the daemon's own resolver: the same backend, timeout, URL


def _direct_store(s: Settings | None = None) -> SecretStore:
    from convocationsd.store.configured import open_store

    s = s or _settings()
    return open_store(s.config_path, forced_backend=s.secret_backend, keyring_timeout=s.keyring_timeout_seconds)


def status(socket: str | None) -> dict[str, Any]:
    reply = _via_daemon(socket, "secret.status")
    return reply if reply is not None else _direct_store().status().to_dict()


def set_key(socket: str | None, key: str, *, verify: bool = True) -> dict[str, Any]:
    """``secret.set``: stores ``key``; with ``verify``, only a key OpenRouter accepts, or one it could not be
    asked about (then ``verified`` is False and ``not_verified_because`` says why). Raises KeyNotAccepted.
    With no daemon to ask, does what its Controller.secret_set does, by the same rules (core/keycheck)."""
    reply = _via_daemon(socket, "secret.set", {"key": key, "verify": verify})
    if reply is not None:
        return reply
    from convocationsd.core import keycheck

    key = keycheck.check_key(key)
    settings = _settings()
    unchecked = check_with_openrouter(settings.openrouter_url, key) if verify else None
    return keycheck.stored(_direct_store(settings).set(key), verify=verify, not_verified_because=unchecked)


def get(socket: str | None) -> str | None:
    reply = _via_daemon(socket, "secret.get")
    key: str | None = reply["key"] if reply is not None else _direct_store().get()
    return key


def clear(socket: str | None) -> dict[str, Any]:
    reply = _via_daemon(socket, "secret.clear")
    return reply if reply is not None else {"cleared": _direct_store().clear()}


def check_with_openrouter(base_url: str, key: str, timeout: float = KEY_CHECK_TIMEOUT) -> str | None:
    """Asks OpenRouter about ``key`` as the daemon's client does (core/keycheck: the request and what its
    answer means), but with urllib, since convctl does not load aiohttp. None when OpenRouter accepts the key,
    why it could not be asked otherwise; KeyNotAccepted when it rejects it. Redirects are not followed, so the
    key goes nowhere but ``base_url``; no text of the answer is shown."""
    import http.client
    import urllib.error
    import urllib.request

    from convocationsd.core import keycheck

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None  # urllib then raises HTTPError for the 3xx itself

    request = urllib.request.Request(
        base_url.rstrip("/") + keycheck.KEY_INFO_PATH,
        headers={"Authorization": f"Bearer {key}", "User-Agent": "convctl"},
    )
    from convocationsd.common.settings import public_url  # here: settings costs `secret status` ~25 ms

    shown = public_url(base_url)
    try:
        with urllib.request.build_opener(NoRedirects).open(request, timeout=timeout) as response:
            status, body = response.status, response.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as e:
        e.close()
        status, body = e.code, b""  # no error status carries the key's information
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else type(reason).__name__
        return f"Could not reach OpenRouter at {shown} ({text})"
    if status == keycheck.REJECTED:
        raise KeyNotAccepted
    if keycheck.key_info(status, body) is None:
        return f"OpenRouter at {shown} answered HTTP {status}" + (
            " without the key's information" if status == 200 else ""
        )
    return None
