"""A fake OpenRouter: a real aiohttp server speaking OpenRouter's OAuth PKCE protocol.

Why a server and not a mock: the daemon's client, its timeouts and its error pages must meet real HTTP
(status codes, bodies that are not JSON, answers that never come), and frontend developers need something
to log in against without an OpenRouter account. Everything known about the real service is in
``shared/design/openrouter.md``; what is uncertain there (``state`` echo, the 409 at authorize) is a switch
in :class:`FakeConfig`, settable from Python or at runtime over ``POST /_fake/config``. The JSON bodies follow
OpenRouter's OpenAPI spec as its official Python SDK (``openrouter`` on PyPI) carries it: field names, types,
required fields and the error shape; tests/integration/test_fake_openrouter_sdk.py drives the fake with that SDK.

Routes:
    GET  /auth                   the authorize page (Approve / Deny, plain HTML forms)
    POST /auth/approve, /deny    what the buttons post; redirect to ``callback_url`` or show the code
    POST /api/v1/auth/keys       the code exchange (any other method: 405)
    GET  /api/v1/key             key information for ``Authorization: Bearer <key>``
    GET/POST /_fake/config       read / change the switches (JSON)
    GET  /_fake/state            records: authorize requests, exchanges, issued keys (fingerprints only)
    POST /_fake/revoke           ``{"key": ...}`` or ``{"fingerprint": ...}`` or ``{"all": true}``
    POST /_fake/reset            default switches, no codes, keys or records

The ``/_fake`` routes have no authentication: this is a development tool, bound to loopback by default.
Full keys are kept in memory only for :attr:`FakeOpenRouter.issued_keys`; nothing is logged and the HTTP
state shows fingerprints, so the "secrets never leak" tests can treat the fake as a bystander.

Standalone: ``python -m convocationsd.testing.fake_openrouter --port 8787`` (see ``--help``). OpenRouter's SDKs
reach it with their server URL set to ``<fake url>/api/v1`` (Python: ``OpenRouter(server_url=...)``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import html
import json
import secrets
import signal
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import ClientSession, web
from yarl import URL

USER_ID = "user_fake"
CODE_LIFETIME = 600.0
KEY_PREFIX = "sk-or-v1-"
APP_CONFLICT_MESSAGE = "Failed to create or update app while creating auth code. Please try again later."
INVALID_CODE_MESSAGE = "Invalid code or code_verifier"
EXPIRED_CODE_MESSAGE = "Authorization code expired"
METHODS = ("S256", "plain")
WORKSPACE_ID = "00000000-0000-4000-8000-00000000fa4e"  # the fake account's one workspace
FREE_MODEL_DAILY_REQUESTS = 50  # the value of the spec's example

# Bodies for a forced exchange status; 403 and 409 use the texts OpenRouter is known to send.
FORCED_MESSAGES = {
    400: "Invalid code_challenge_method",
    401: "No auth credentials found",
    403: INVALID_CODE_MESSAGE,
    404: "Not Found",
    405: "Method Not Allowed",
    409: APP_CONFLICT_MESSAGE,
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class FakeConfig:
    """The fault switches. Defaults behave like OpenRouter on a good day."""

    echo_state: bool = True
    """Append the authorize request's ``state`` to the callback redirect (unconfirmed upstream)."""
    authorize_409: bool = False
    """Approve answers OpenRouter's 409 JSON instead of redirecting (what the seed notes saw)."""
    authorize_409_on_new_callback: bool = False
    """The seed's explanation of the 409: approve fails when callback_url/referrer differ from the first seen."""
    exchange_status: int | None = None
    """Answer every exchange with this error status and OpenRouter's error body."""
    exchange_message: str | None = None
    """Override the error message of a forced ``exchange_status`` (e.g. "Authorization code expired")."""
    exchange_delay: float = 0.0
    """Seconds to wait before answering an exchange (a large value: an answer that never comes)."""
    exchange_not_json: bool = False
    """Answer exchanges with a 200 HTML page instead of JSON."""
    exchange_missing_key: bool = False
    """Answer exchanges with ``200 {"user_id": ...}`` and no ``key``."""
    exchange_key_length: int | None = None
    """Answer exchanges with a well-formed-looking key of this many characters."""
    key_info_status: int | None = None
    """Answer ``GET /api/v1/key`` with this error status."""
    key_info_delay: float = 0.0
    """Seconds to wait before answering ``GET /api/v1/key`` (a large value: an answer that never comes)."""
    key_info_data: dict[str, Any] | None = None
    """Answer ``GET /api/v1/key`` for an accepted key with this ``data`` object instead of the fake's own (an
    example from OpenRouter's spec, nulls where the spec allows them, fields OpenRouter added later)."""
    code_lifetime: float = CODE_LIFETIME
    """Seconds an authorization code stays valid (OpenRouter: 10 minutes)."""
    codes_without_challenge: bool = False
    """OpenRouter's documented behaviour, where ``code_challenge`` is optional: ``/auth`` without one issues a
    code that the exchange accepts with any ``code_verifier``, or none (PKCE binds nothing then)."""

    def update(self, changes: dict[str, Any]) -> None:
        """Applies JSON-typed changes, all or nothing; raises ValueError naming the bad field."""
        hints = typing.get_type_hints(type(self))
        checked = {}
        for name, value in changes.items():
            if name not in hints:
                raise ValueError(f"unknown switch {name!r}; known: {', '.join(hints)}")
            checked[name] = _check_type(name, hints[name], value)
        status = checked.get("exchange_status", self.exchange_status)
        if status is not None and not 400 <= status <= 599:
            raise ValueError("exchange_status must be an HTTP error status (400-599) or null")
        info_status = checked.get("key_info_status", self.key_info_status)
        if info_status is not None and not 400 <= info_status <= 599:
            raise ValueError("key_info_status must be an HTTP error status (400-599) or null")
        for name, value in checked.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(name: str, hint: Any, value: Any) -> Any:
    allowed = tuple(typing.get_origin(t) or t for t in typing.get_args(hint) or (hint,))
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, (str, dict)) and type(value) in allowed:
        return value
    raise ValueError(f"{name} must be {' or '.join(t.__name__ for t in allowed)}")


@dataclass(frozen=True)
class ExchangeRecord:
    """One exchange attempt. Holds fingerprints, never a code, verifier or key."""

    at: float
    status: int
    outcome: str
    code_fingerprint: str | None
    code_challenge_method: str | None


@dataclass
class _IssuedCode:
    challenge: str | None  # None: made without a challenge (``codes_without_challenge``)
    method: str
    issued_at: float
    label: str
    limit: float | None


@dataclass
class _IssuedKey:
    label: str
    limit: float | None
    revoked: bool = False


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a code or key, safe to show in records and tests' messages."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _verifier_matches(verifier: str, challenge: str, method: str) -> bool:
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("utf-8", "surrogatepass")).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    else:
        expected = verifier
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), challenge.encode("utf-8", "surrogatepass"))


def _compact_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "metadata": None}, "user_id": None}


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response(_error_body(status, message), status=status)


def key_data(label: str, limit: float | None, user_id: str) -> dict[str, Any]:
    """``GET /api/v1/key``'s ``data`` for an unused key of a personal account with no credits bought: every
    field the spec requires. A limit appears as the key's own budget layer, as the spec describes ``budgets``."""
    budget = None
    if limit is not None:
        budget = {
            "scope": "key_limit",
            "limit_usd": limit,
            "spend_usd": 0,
            "remaining_usd": limit,
            "include_byok": False,
            "reset_interval": None,
            "resets_at": None,
            "budget_id": None,
            "guardrail_id": None,
        }
    return {
        "label": label,
        "limit": limit,
        "limit_remaining": limit,
        "limit_reset": None,
        "include_byok_in_limit": False,
        "usage": 0,
        "usage_daily": 0,
        "usage_weekly": 0,
        "usage_monthly": 0,
        "byok_usage": 0,
        "byok_usage_daily": 0,
        "byok_usage_weekly": 0,
        "byok_usage_monthly": 0,
        "is_free_tier": True,
        "is_management_key": False,
        "is_provisioning_key": False,
        "expires_at": None,
        "creator_user_id": user_id,
        "organization_id": None,
        "workspace_id": WORKSPACE_ID,
        "allowed_data_regions": ["global"],
        "budgets": [budget] if budget else [],
        "effective_budget": budget,
        "free_model_daily_requests": {
            "limit": FREE_MODEL_DAILY_REQUESTS,
            "remaining": FREE_MODEL_DAILY_REQUESTS,
            "used": 0,
        },
        # Deprecated upstream ("Will always return -1"), still required.
        "rate_limit": {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."},
    }


# -- pages ------------------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}"
    "h1{font-size:1.4rem}form{display:inline-block;margin-right:.5rem}"
    "button{font-size:1rem;padding:.5rem 1.2rem;border-radius:.4rem;border:1px solid #888;cursor:pointer}"
    "#approve{background:#2b6cb0;color:#fff;border-color:#2b6cb0}"
    "code{display:block;padding:.8rem;background:#f2f2f2;word-break:break-all;font-size:1.1rem}"
    ".muted{color:#666;font-size:.9rem}"
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}<p class=muted>Fake OpenRouter (for development and tests)</p></body></html>"
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _hidden_fields(params: dict[str, str]) -> str:
    return "".join(
        f'<input type=hidden name="{html.escape(name)}" value="{html.escape(value)}">' for name, value in params.items()
    )


# Parameters of GET /auth that travel through the forms to approve/deny.
_CARRIED = (
    "callback_url",
    "code_challenge",
    "code_challenge_method",
    "client_id",
    "referrer",
    "state",
    "key_label",
    "limit",
)


class FakeOpenRouter:
    """The fake server. ``async with FakeOpenRouter() as fake:`` then point the daemon at ``fake.url``.

    ``clock`` decides code expiry (monotonic seconds); tests pass a settable one to expire codes without
    sleeping. ``check_exchange`` sees every exchange's JSON body (None when it is not JSON) and returns what is
    wrong with it, or None: the fake then answers 400 with that text and keeps it in :attr:`request_problems`
    (tests check the daemon's requests against OpenRouter's SDK this way, which the fake itself cannot import).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: FakeConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        user_id: str = USER_ID,
        check_exchange: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.config = config or FakeConfig()
        self.clock = clock
        self.user_id = user_id
        self.check_exchange = check_exchange
        self.url = ""
        self.authorize_requests: list[dict[str, str]] = []
        self.exchanges: list[ExchangeRecord] = []
        self.request_problems: list[str] = []
        self._codes: dict[str, _IssuedCode] = {}
        self._keys: dict[str, _IssuedKey] = {}
        self._first_app_urls: tuple[str, str] | None = None
        self._runner: web.AppRunner | None = None
        self._browser: ClientSession | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/auth", self._authorize_page)
        app.router.add_post("/auth/approve", self._approve)
        app.router.add_post("/auth/deny", self._deny)
        app.router.add_route("*", "/api/v1/auth/keys", self._exchange)
        app.router.add_get("/api/v1/key", self._key_info)
        app.router.add_get("/_fake/config", self._get_config)
        app.router.add_post("/_fake/config", self._set_config)
        app.router.add_get("/_fake/state", self._get_state)
        app.router.add_post("/_fake/revoke", self._revoke_route)
        app.router.add_post("/_fake/reset", self._reset_route)
        return app

    async def start(self) -> FakeOpenRouter:
        # A short shutdown timeout: an exchange held open by ``exchange_delay`` must not delay teardown.
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.url = str(URL.build(scheme="http", host=host, port=port))
        return self

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenRouter:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- Python API for tests ----------------------------------------------------------------------------

    @property
    def issued_keys(self) -> list[str]:
        """Every key handed out, in order (revoked ones included)."""
        return list(self._keys)

    @property
    def last_authorize(self) -> dict[str, str] | None:
        """Query parameters of the latest ``GET /auth``: the authorize URL the daemon sent."""
        return self.authorize_requests[-1] if self.authorize_requests else None

    def revoke(self, key: str) -> bool:
        record = self._keys.get(key)
        if record is None or record.revoked:
            return False
        record.revoked = True
        return True

    def issue_code(self, challenge: str | None, method: str = "S256", *, label: str = "Convocations") -> str:
        """A code as if the person had approved, without a browser."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = _IssuedCode(challenge, method, self.clock(), label, None)
        return code

    def issue_key(self, label: str = "Convocations", limit: float | None = None) -> str:
        key = KEY_PREFIX + secrets.token_hex(32)
        self._keys[key] = _IssuedKey(label, limit)
        return key

    def reset(self) -> None:
        self.config = FakeConfig()
        self.authorize_requests.clear()
        self.exchanges.clear()
        self.request_problems.clear()
        self._codes.clear()
        self._keys.clear()
        self._first_app_urls = None

    def state(self) -> dict[str, Any]:
        """What ``GET /_fake/state`` shows. Keys and codes appear only as fingerprints."""
        return {
            "url": self.url,
            "config": self.config.to_dict(),
            "authorize_requests": len(self.authorize_requests),
            "last_authorize": self.last_authorize,
            "pending_codes": len(self._codes),
            "exchanges": [dataclasses.asdict(record) for record in self.exchanges],
            "issued_keys": [
                {"fingerprint": fingerprint(key), "label": record.label, "revoked": record.revoked}
                for key, record in self._keys.items()
            ],
        }

    async def submit(self, auth_url: str, button: str) -> AuthorizeOutcome:
        """What a browser does: load the authorize page, press ``button`` ("approve" or "deny")."""
        if self._browser is None:
            self._browser = ClientSession()
        async with self._browser.get(auth_url, allow_redirects=False) as page:
            text = await page.text()
            page_url = page.url
        if page.status != 200:
            return AuthorizeOutcome(page.status, None, text)
        form = _find_form(text, button)
        if form is None:
            raise FakeBrowserError(f"the authorize page has no {button!r} button")
        action = page_url.join(URL(form.action))
        async with self._browser.post(action, data=form.fields, allow_redirects=False) as answer:
            return AuthorizeOutcome(answer.status, answer.headers.get("Location"), await answer.text())

    async def approve(self, auth_url: str) -> str:
        """Approves like a browser and returns the redirect ``Location`` (the daemon's callback URL)."""
        return (await self.submit(auth_url, "approve")).redirect()

    async def deny(self, auth_url: str) -> str:
        return (await self.submit(auth_url, "deny")).redirect()

    async def approve_headless(self, auth_url: str) -> str:
        """Approves an authorize URL without ``callback_url`` and returns the code the page shows."""
        outcome = await self.submit(auth_url, "approve")
        code = _shown_code(outcome.body) if outcome.status == 200 else None
        if code is None:
            raise FakeBrowserError(f"approve showed no code (HTTP {outcome.status}): {outcome.body[:300]}")
        return code

    # -- authorize ---------------------------------------------------------------------------------------

    async def _authorize_page(self, request: web.Request) -> web.Response:
        params = {name: request.query[name] for name in _CARRIED if name in request.query}
        self.authorize_requests.append(dict(request.query))
        problem = _authorize_problem(params, self.config.codes_without_challenge)
        if problem:
            return _page("Bad request", f"<h1>Bad request</h1><p>{html.escape(problem)}</p>", status=400)
        where = params.get("callback_url") or "this page (you will copy a code)"
        fields = _hidden_fields(params)
        body = (
            "<h1>Authorize Convocations?</h1>"
            f"<p>Convocations asks to create an OpenRouter API key for your account. "
            f"You will be sent back to <b>{html.escape(where)}</b>.</p>"
            f'<form method=post action="/auth/approve">{fields}<button id=approve type=submit>Approve</button></form>'
            f'<form method=post action="/auth/deny">{fields}<button id=deny type=submit>Deny</button></form>'
        )
        return _page("Authorize Convocations?", body)

    async def _approve(self, request: web.Request) -> web.StreamResponse:
        params = await _form_params(request)
        problem = _authorize_problem(params, self.config.codes_without_challenge)
        if problem:
            return _page("Bad request", f"<h1>Bad request</h1><p>{html.escape(problem)}</p>", status=400)
        if self.config.authorize_409 or self._app_urls_changed(params):
            # Byte for byte what the seed notes saw in the browser: compact JSON, message before code.
            conflict = {"error": {"message": APP_CONFLICT_MESSAGE, "code": 409}, "user_id": self.user_id}
            return web.json_response(conflict, status=409, dumps=_compact_json)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _IssuedCode(
            params.get("code_challenge") or None,
            params.get("code_challenge_method") or "plain",
            self.clock(),
            params.get("key_label") or "Convocations",
            _parse_limit(params.get("limit")),
        )
        callback = params.get("callback_url")
        if not callback:
            body = (
                "<h1>Convocations is authorized</h1><p>Copy this code into the application:</p>"
                f'<code id="code">{html.escape(code)}</code>'
            )
            return _page("Your code", body)
        return self._redirect(callback, params, code=code)

    async def _deny(self, request: web.Request) -> web.StreamResponse:
        params = await _form_params(request)
        callback = params.get("callback_url")
        if not callback or _callback_problem(callback):
            return _page("Access denied", "<h1>Access denied</h1><p>You can close this page.</p>")
        return self._redirect(
            callback, params, error="access_denied", error_description="The user denied the authorization request."
        )

    def _redirect(self, callback: str, params: dict[str, str], **added: str) -> web.Response:
        if self.config.echo_state and "state" in params:
            added["state"] = params["state"]
        # update_query keeps the callback's own query and replaces only the names we set.
        location = URL(callback).update_query(added)
        return web.Response(status=302, headers={"Location": str(location), "Cache-Control": "no-store"})

    def _app_urls_changed(self, params: dict[str, str]) -> bool:
        urls = (params.get("callback_url", ""), params.get("referrer", ""))
        if self._first_app_urls is None:
            self._first_app_urls = urls
        return self.config.authorize_409_on_new_callback and urls != self._first_app_urls

    # -- exchange ----------------------------------------------------------------------------------------

    async def _exchange(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return self._record(None, None, 405, "method_not_allowed", _json_error(405, "Method Not Allowed"))
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        problem = self.check_exchange(payload) if self.check_exchange is not None else None
        if problem:
            self.request_problems.append(problem)
            return self._record(None, None, 400, "bad_request", _json_error(400, problem))
        if not isinstance(payload, dict):
            return self._record(None, None, 400, "bad_body", _json_error(400, "Invalid JSON body"))
        code, verifier, method = payload.get("code"), payload.get("code_verifier"), payload.get("code_challenge_method")
        code = code if isinstance(code, str) else None
        issued = self._codes.pop(code, None) if code else None  # consumed by the first attempt, whatever follows
        code_fp = fingerprint(code) if code else None
        method_seen = method if isinstance(method, str) else None
        if self.config.exchange_delay > 0:
            await asyncio.sleep(self.config.exchange_delay)
        forced = self._forced_exchange_answer()
        if forced is not None:
            status, outcome, response = forced
            return self._record(code_fp, method_seen, status, outcome, response)
        if method is not None and method not in METHODS:
            response = _json_error(400, "Invalid code_challenge_method")
            return self._record(code_fp, method_seen, 400, "bad_method", response)
        if issued is None or (issued.challenge is not None and not isinstance(verifier, str)):
            return self._record(code_fp, method_seen, 403, "invalid_code", _json_error(403, INVALID_CODE_MESSAGE))
        if self.clock() - issued.issued_at >= self.config.code_lifetime:
            return self._record(code_fp, method_seen, 403, "expired", _json_error(403, EXPIRED_CODE_MESSAGE))
        if issued.challenge is not None and (
            (method or "plain") != issued.method
            or not _verifier_matches(str(verifier), issued.challenge, issued.method)
        ):
            return self._record(code_fp, method_seen, 403, "wrong_verifier", _json_error(403, INVALID_CODE_MESSAGE))
        key = self.issue_key(issued.label, issued.limit)
        return self._record(code_fp, method_seen, 200, "ok", web.json_response({"key": key, "user_id": self.user_id}))

    def _forced_exchange_answer(self) -> tuple[int, str, web.Response] | None:
        cfg = self.config
        if cfg.exchange_status is not None:
            message = cfg.exchange_message or FORCED_MESSAGES.get(cfg.exchange_status, "Error")
            return cfg.exchange_status, "forced_status", _json_error(cfg.exchange_status, message)
        if cfg.exchange_not_json:
            page = "<html><body><h1>Something went wrong</h1></body></html>"
            return 200, "forced_not_json", web.Response(text=page, content_type="text/html")
        if cfg.exchange_missing_key:
            return 200, "forced_missing_key", web.json_response({"user_id": self.user_id})
        if cfg.exchange_key_length is not None:
            length = max(cfg.exchange_key_length, 0)
            key = (KEY_PREFIX + secrets.token_hex(length // 2 + 8))[:length]
            return 200, "forced_key_length", web.json_response({"key": key, "user_id": self.user_id})
        return None

    def _record(
        self, code_fp: str | None, method: str | None, status: int, outcome: str, response: web.Response
    ) -> web.Response:
        self.exchanges.append(ExchangeRecord(time.time(), status, outcome, code_fp, method))
        return response

    # -- key information -----------------------------------------------------------------------------------

    async def _key_info(self, request: web.Request) -> web.Response:
        if self.config.key_info_delay > 0:
            await asyncio.sleep(self.config.key_info_delay)
        if self.config.key_info_status is not None:
            status = self.config.key_info_status
            return _json_error(status, FORCED_MESSAGES.get(status, "Error"))
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return _json_error(401, "No auth credentials found")
        record = self._keys.get(key.strip())
        if record is None or record.revoked:
            return _json_error(401, "User not found.")
        data = self.config.key_info_data
        if data is None:
            data = key_data(record.label, record.limit, self.user_id)
        return web.json_response({"data": data})

    # -- /_fake control ------------------------------------------------------------------------------------

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_dict())

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("send a JSON object of switches")
            self.config.update(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.config.to_dict())

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _revoke_route(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": 'send {"key": ...}, {"fingerprint": ...} or {"all": true}'}, status=400)
        if body.get("all") is True:
            targets = list(self._keys)
        elif isinstance(body.get("key"), str):
            targets = [body["key"]]
        elif isinstance(body.get("fingerprint"), str):
            targets = [key for key in self._keys if fingerprint(key) == body["fingerprint"]]
        else:
            return web.json_response({"error": 'send {"key": ...}, {"fingerprint": ...} or {"all": true}'}, status=400)
        return web.json_response({"revoked": sum(self.revoke(key) for key in targets)})

    async def _reset_route(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.config.to_dict())


# -- request helpers ------------------------------------------------------------------------------------


async def _form_params(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {name: str(form[name]) for name in _CARRIED if name in form}


def _callback_problem(callback: str) -> str:
    try:
        url = URL(callback)
    except ValueError:
        return "callback_url is not a URL."
    if url.scheme not in ("http", "https") or not url.host:
        return "callback_url must be an absolute http or https URL."
    return ""


def _authorize_problem(params: dict[str, str], challenge_optional: bool = False) -> str:
    if not params.get("code_challenge") and not challenge_optional:
        return "code_challenge is required."
    method = params.get("code_challenge_method")
    if method is not None and method not in METHODS:
        return "code_challenge_method must be S256 or plain."
    if params.get("callback_url"):
        return _callback_problem(params["callback_url"])
    return ""


def _parse_limit(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


# -- the scripted browser ---------------------------------------------------------------------------------


class FakeBrowserError(AssertionError):
    """The authorize page did not behave like a page a person could use."""


@dataclass(frozen=True)
class AuthorizeOutcome:
    status: int
    location: str | None
    body: str = field(repr=False)

    def redirect(self) -> str:
        if self.status not in (301, 302, 303, 307, 308) or not self.location:
            raise FakeBrowserError(f"expected a redirect, got HTTP {self.status}: {self.body[:300]}")
        return self.location


@dataclass
class _Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)


class _PageParser(HTMLParser):
    """Collects forms (action, named inputs, button ids) and the text of ``<code id="code">``."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.code: str | None = None
        self._form: _Form | None = None
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = _Form(a.get("action", ""))
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            self._form.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and self._form is not None:
            self._form.buttons.append(a.get("id", ""))
        elif tag == "code" and a.get("id") == "code":
            self._in_code, self.code = True, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "code":
            self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.code = (self.code or "") + data


def _find_form(page: str, button: str) -> _Form | None:
    parser = _PageParser()
    parser.feed(page)
    return next((form for form in parser.forms if button in form.buttons), None)


def _shown_code(page: str) -> str | None:
    parser = _PageParser()
    parser.feed(page)
    return parser.code.strip() if parser.code else None


# -- standalone --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m convocationsd.testing.fake_openrouter",
        description="A fake OpenRouter OAuth PKCE server for development and tests. "
        "Point the daemon at it with CONVOCATIONS_OPENROUTER_URL.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")
    parser.add_argument("--no-echo-state", action="store_true", help="do not return `state` on the callback")
    parser.add_argument("--authorize-409", action="store_true", help="answer Approve with OpenRouter's 409")
    parser.add_argument(
        "--authorize-409-on-new-callback",
        action="store_true",
        help="answer Approve with 409 when callback_url/referrer differ from the first ones seen",
    )
    parser.add_argument("--exchange-status", type=int, help="answer every exchange with this error status")
    parser.add_argument("--exchange-message", help="error message for --exchange-status")
    parser.add_argument("--exchange-delay", type=float, default=0.0, help="seconds before answering an exchange")
    parser.add_argument("--exchange-not-json", action="store_true", help="answer exchanges with HTML")
    parser.add_argument("--exchange-missing-key", action="store_true", help="answer exchanges without a key")
    parser.add_argument("--exchange-key-length", type=int, help="answer exchanges with a key this long")
    parser.add_argument("--key-info-status", type=int, help="answer GET /api/v1/key with this error status")
    parser.add_argument(
        "--key-info-data", type=_json_object, help="answer GET /api/v1/key with this JSON object as its data"
    )
    parser.add_argument("--code-lifetime", type=float, default=CODE_LIFETIME, help="seconds a code stays valid")
    parser.add_argument(
        "--codes-without-challenge",
        action="store_true",
        help="issue codes without code_challenge, accepted with any verifier (OpenRouter documents it as optional)",
    )
    return parser.parse_args(argv)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"label": "x"}\'')
    return value


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    config = FakeConfig()
    config.update(
        {
            "echo_state": not args.no_echo_state,
            "authorize_409": args.authorize_409,
            "authorize_409_on_new_callback": args.authorize_409_on_new_callback,
            "exchange_status": args.exchange_status,
            "exchange_message": args.exchange_message,
            "exchange_delay": args.exchange_delay,
            "exchange_not_json": args.exchange_not_json,
            "exchange_missing_key": args.exchange_missing_key,
            "exchange_key_length": args.exchange_key_length,
            "key_info_status": args.key_info_status,
            "key_info_data": args.key_info_data,
            "code_lifetime": args.code_lifetime,
            "codes_without_challenge": args.codes_without_challenge,
        }
    )
    return config


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FakeOpenRouter(args.host, args.port, config=config_from_args(args)) as fake:
        print(f"Fake OpenRouter listening on {fake.url}", flush=True)
        print(f"  use it with: CONVOCATIONS_OPENROUTER_URL={fake.url} convocationsd", flush=True)
        print(f"  switches:    curl -d '{{\"authorize_409\": true}}' {fake.url}/_fake/config", flush=True)
        await stop.wait()
    print("Fake OpenRouter stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        asyncio.run(serve(args))
    except ValueError as exc:
        print(f"fake_openrouter: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fake_openrouter: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
