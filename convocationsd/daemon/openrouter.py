"""The daemon's OpenRouter client: the one-time code exchange and key information.

Why it is careful:
- The authorization code is single-use, so the exchange is never retried: not by us, and not by a pooled
  keep-alive connection that OpenRouter closed meanwhile (every request gets a fresh connection).
- Everything that can go wrong ends as an ``UpstreamError`` (core/errors.py) whose ``flow_error`` is exactly what the
  ``openrouter-auth-complete`` event and the callback page show: a code from the contract, one sentence,
  and a hint a person can act on. Those texts are ours, never OpenRouter's, so they cannot carry the code,
  the verifier or the key back to a log, an event or a page.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from convocationsd.common.settings import public_url
from convocationsd.core import keycheck, pkce  # keycheck: the key rules convctl follows too
from convocationsd.core.errors import KeyRejected, UpstreamError
from convocationsd.core.flows import FlowError

if TYPE_CHECKING:  # imported by the first request (see _aiohttp): most of a cold start's import time
    import aiohttp

    from convocationsd.common.settings import Settings

log = logging.getLogger(__name__)

EXCHANGE_PATH = "/api/v1/auth/keys"
MAX_BODY_BYTES = 64 * 1024
URL_ENV = "CONVOCATIONS_OPENROUTER_URL"

_RESTART = "Run `convctl oauth start` again."
_RESTART_LOWER = "run `convctl oauth start` again."


class ExchangeResult(NamedTuple):  # not a dataclass: one costs ~1.5 ms to create, on every start
    key: str
    user_id: str | None

    def __repr__(self) -> str:  # never the key
        return f"ExchangeResult(key=..., user_id={self.user_id!r})"


class OpenRouterApi(Protocol):
    """What the controller and the account check ask of OpenRouter: :class:`OpenRouterClient`, or a test's
    stand-in. Both methods raise UpstreamError (``key_info``: KeyRejected on a 401)."""

    async def exchange(self, code: str, verifier: str) -> ExchangeResult: ...

    async def key_info(self, key: str) -> dict[str, Any]: ...


# -- hints -----------------------------------------------------------------------------------------------


def app_conflict_hint(port: int, port_fallback: bool) -> str:
    """The seed notes' 409 troubleshooting, with the port the daemon really listens on."""
    hint = (
        f"convocationsd listens on port {port}, so OpenRouter saw callback_url {pkce.callback_url(port)} "
        f"and referrer {pkce.local_origin(port)}. OpenRouter refuses when these differ from what it has on record "
        "for the app: register these URLs with OpenRouter, or set RCONV_HTTP_PORT to the port registered there "
        "and restart convocationsd, then run `convctl oauth start` again."
    )
    if port_fallback:
        hint += f" Port {port} is a fallback: the preferred port was busy. " + pkce.fallback_port_note()
    return hint


GENERIC_APP_CONFLICT_HINT = (
    "OpenRouter refuses when the callback and referrer URLs differ from what it has on record for the app. "
    "Check the port convocationsd really listens on (`convctl status`): the callback must be "
    f"http://localhost:<port>{pkce.CALLBACK_PATH} and the referrer http://localhost:<port>. Set RCONV_HTTP_PORT "
    "to the registered port (default 3000) and restart convocationsd, or register the new URLs, "
    "then run `convctl oauth start` again."
)


def app_conflict_error(hint: str = GENERIC_APP_CONFLICT_HINT, *, status: int | None = 409) -> UpstreamError:
    return UpstreamError(
        FlowError("app_conflict", "OpenRouter refused to create an authorization code for this app (HTTP 409).", hint),
        status=status,
    )


# -- pure mapping of outcomes to errors ------------------------------------------------------------------


def _unreachable_hint(base_url: str) -> str:
    return (
        f"Check your network connection and that {public_url(base_url)} is OpenRouter's address "
        f"(set with {URL_ENV} or --openrouter-url; the default is https://openrouter.ai), then {_RESTART_LOWER}"
    )


def unreachable_error(base_url: str, reason: str) -> UpstreamError:
    """Connection refused, DNS, TLS or a broken connection: ``reason`` is our own short phrase."""
    message = f"Could not reach OpenRouter at {public_url(base_url)}: {reason}."
    return UpstreamError(FlowError("upstream_unreachable", message, _unreachable_hint(base_url)))


def timeout_error(base_url: str, seconds: float) -> UpstreamError:
    message = f"OpenRouter at {public_url(base_url)} did not answer within {seconds:g} s."
    hint = f"OpenRouter may be slow or unreachable; wait a few minutes, check your network, then {_RESTART_LOWER}"
    return UpstreamError(FlowError("upstream_unreachable", message, hint))


def transport_error(base_url: str, exc: BaseException, timeout: float) -> UpstreamError:
    """Maps what aiohttp raises before a usable answer arrives; the texts are ours, not the exception's."""
    import aiohttp

    if isinstance(exc, TimeoutError):
        return timeout_error(base_url, timeout)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return unreachable_error(base_url, "its TLS certificate is not trusted")
    if isinstance(exc, aiohttp.ClientSSLError):
        return unreachable_error(base_url, "the TLS handshake failed")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return unreachable_error(base_url, "its host name could not be resolved")
        return unreachable_error(base_url, "the connection was refused or failed")
    if isinstance(exc, aiohttp.InvalidURL):
        return unreachable_error(base_url, "the URL is not valid")
    return unreachable_error(base_url, "the connection broke before an answer arrived")


def exchange_status_error(status: int, upstream_message: str | None) -> UpstreamError:
    """Maps an error status of the exchange to an error. ``upstream_message`` only classifies; never shown."""
    text = (upstream_message or "").lower()
    if status == 409:
        return app_conflict_error()
    if status == 403 and "expired" in text:
        return _exchange_failed(
            status,
            "The authorization code expired before it could be exchanged (HTTP 403).",
            "Codes live 10 minutes and work once. " + _RESTART,
        )
    if status == 403 and "invalid" in text:
        return _exchange_failed(
            status,
            "OpenRouter rejected the authorization code or its PKCE verifier (HTTP 403).",
            "The code may belong to another login or was already used. Finish the login from the browser tab "
            "that `convctl oauth start` opened, or run it again.",
            code_rejected=True,
        )
    if status == 400:
        return _exchange_failed(
            status,
            "OpenRouter did not accept the exchange request (HTTP 400).",
            "This is likely a bug in convocationsd or a change at OpenRouter; "
            "run `convctl oauth start` again and report it if it persists.",
        )
    if status == 405:
        return _exchange_failed(
            status,
            "OpenRouter's exchange endpoint refused the request method (HTTP 405).",
            f"The OpenRouter URL may point at the wrong server; check {URL_ENV} (default https://openrouter.ai).",
        )
    if 500 <= status <= 599:
        return _exchange_failed(
            status,
            f"OpenRouter had a problem while creating the key (HTTP {status}).",
            "OpenRouter had a problem; try again in a few minutes with `convctl oauth start`.",
        )
    return _exchange_failed(
        status,
        f"OpenRouter answered the exchange with an unexpected HTTP {status}.",
        "Try again with `convctl oauth start`; if it keeps happening, OpenRouter may have changed its API.",
    )


def unusable_answer_error(status: int | None, what: str) -> UpstreamError:
    """A 200 we cannot use; ``what`` is our own description (never upstream text)."""
    return _exchange_failed(
        status,
        f"OpenRouter's answer to the exchange was not usable: {what}.",
        "No key was stored. Try again with `convctl oauth start`; if it keeps happening, OpenRouter may have "
        "changed its API.",
    )


def _exchange_failed(status: int | None, message: str, hint: str, *, code_rejected: bool = False) -> UpstreamError:
    return UpstreamError(FlowError("exchange_failed", message, hint), status=status, code_rejected=code_rejected)


def parse_exchange_answer(status: int, body: bytes) -> ExchangeResult:
    """Turns a 200 body into a result, or raises the matching :class:`UpstreamError`."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise unusable_answer_error(status, "it is not JSON") from None
    if not isinstance(payload, dict):
        raise unusable_answer_error(status, "it is not a JSON object")
    if "key" not in payload:
        raise unusable_answer_error(status, "it contains no key")
    problem = keycheck.key_problem(payload["key"])
    if problem:
        raise unusable_answer_error(status, problem)
    user_id = payload.get("user_id")
    return ExchangeResult(payload["key"], user_id if isinstance(user_id, str) else None)


def upstream_error_message(body: bytes) -> str | None:
    """The ``error.message`` of OpenRouter's error shape, for classification only."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


# -- the client ------------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class OpenRouterClient:
    """Talks to ``base_url`` (OpenRouter or the fake). One instance per daemon; the session is lazy."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout  # a reload may change it: read for each request, never baked into the session
        self._session: aiohttp.ClientSession | None = None

    def apply(self, settings: Settings) -> None:
        """A reload's settings: the time bound of each request (the URL waits for a restart)."""
        self.timeout = settings.exchange_timeout_seconds

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            # force_close: no pooled connection that OpenRouter may have idled out under a single-use exchange.
            connector = aiohttp.TCPConnector(force_close=True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> OpenRouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def exchange(self, code: str, verifier: str) -> ExchangeResult:
        """Exchanges the code once. Raises UpstreamError; never retries."""
        payload = {"code": code, "code_verifier": verifier, "code_challenge_method": "S256"}
        started = time.monotonic()
        status, body = await self._request("POST", EXCHANGE_PATH, json=payload)
        log.info("OpenRouter answered the code exchange with HTTP %d after %.2f s", status, time.monotonic() - started)
        if status != 200:
            error = exchange_status_error(status, upstream_error_message(body))
            log.warning("code exchange failed: %s (HTTP %d)", error.flow_error.code, status)
            raise error
        try:
            return parse_exchange_answer(status, body)
        except UpstreamError as error:
            log.warning("code exchange failed: %s", error.message)
            raise

    async def key_info(self, key: str) -> dict[str, Any]:
        """The ``data`` object of ``GET /api/v1/key``. Raises KeyRejected on 401, UpstreamError otherwise."""
        status, body = await self._request("GET", keycheck.KEY_INFO_PATH, headers={"Authorization": f"Bearer {key}"})
        if status == keycheck.REJECTED:
            raise KeyRejected(
                FlowError(
                    "key_rejected",
                    "OpenRouter does not accept the stored API key (HTTP 401); it may have been revoked.",
                    "Run `convctl oauth start` to link your account again, or store a new key with "
                    "`convctl secret set-openrouter-key`.",
                ),
                status=status,
            )
        data = keycheck.key_info(status, body)
        if data is None:
            raise UpstreamError(
                FlowError(
                    "key_info_failed",
                    f"OpenRouter did not return the key's information (HTTP {status}).",
                    "Try again in a few minutes; the stored key is unchanged.",
                ),
                status=status,
            )
        return data

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        """One request, bounded in time and size; transport failures become UpstreamError."""
        aiohttp = await _aiohttp()
        url = self.base_url + path
        timeout = self.timeout  # one value for both bounds and the message, even if a reload changes it meanwhile
        try:
            async with asyncio.timeout(timeout):
                async with self._get_session().request(
                    method, url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs
                ) as response:
                    return response.status, await _read_limited(response, MAX_BODY_BYTES)
        except _BodyTooLarge:
            error = unusable_answer_error(None, f"it is larger than {MAX_BODY_BYTES // 1024} KiB")
            log.warning("%s %s failed: %s", method, public_url(url), error.message)
            raise error from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = transport_error(self.base_url, exc, timeout)
            log.warning("%s %s failed: %s (%s)", method, public_url(url), error.message, type(exc).__name__)
            raise error from exc


async def _aiohttp() -> Any:
    """The aiohttp module, imported in a thread the first time so that the event loop keeps answering."""
    if "aiohttp" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "aiohttp")
    import aiohttp

    return aiohttp


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
