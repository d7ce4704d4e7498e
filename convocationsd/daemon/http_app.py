"""The localhost HTTP door: OAuth start and callback routes, the status page and JSON.

Localhost is not a trust boundary: every request must name us in ``Host`` (DNS rebinding), the start
routes refuse cross-site callers (a page elsewhere cannot start a login), and no response carries CORS
headers, so other origins cannot read anything.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from convocationsd.common import proc_net
from convocationsd.core import pkce
from convocationsd.daemon import pages
from convocationsd.daemon.controller import Controller, Outcome

log = logging.getLogger(__name__)

START = "/api/openrouter/oauth/start"
CALLBACK = pkce.CALLBACK_PATH  # the path OpenRouter is sent, so route and callback_url cannot drift apart
RESULT = "/api/openrouter/oauth/result/{id}"
STATUS = "/api/status"

CONTROLLER = web.AppKey("controller", Controller)
RESULTS = web.AppKey("results", OrderedDict)
MAX_RESULTS = 32
MAX_BODY = 16 * 1024
CHECK_PEER_UID = sys.platform.startswith("linux") and proc_net.available()
IDLE_TIMEOUT = 10.0  # seconds a connection may sit without a complete request (slowloris, idle crowds)


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset(f"{name}:{port}" for name in ("localhost", "127.0.0.1", "[::1]"))


def allowed_origins(port: int) -> frozenset[str]:
    return frozenset(f"http://{host}" for host in allowed_hosts(port))


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _json(data: dict, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def _forbidden(request: web.Request, message: str) -> web.Response:
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        return _html(pages.error_page(403, message), 403)
    return _json({"error": {"code": 403, "message": message}}, 403)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    ctl.touch()
    if request.headers.get("Host", "").lower() not in allowed_hosts(ctl.endpoint.port):
        response: web.StreamResponse = _forbidden(request, "This address is only served as localhost.")
    elif not _same_user(request):
        response = _forbidden(request, "This daemon serves only the user it runs as.")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = e
    headers = response.headers
    headers["Cache-Control"] = "no-store"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    if (response.content_type or "").startswith("text/html"):
        headers["Content-Security-Policy"] = pages.CSP
    return response


def _same_user(request: web.Request) -> bool:
    """On Linux, only connections opened by our own uid (the user's browser and tools) are served: any
    local user can reach loopback, and one who joined a pending login could link their own account."""
    if not CHECK_PEER_UID:
        return True
    transport = request.transport
    if transport is None:
        return False
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return False
    uid = proc_net.connection_uid(peer, local)
    if uid != os.getuid():
        log.warning("refused an HTTP request from uid %s (this daemon runs as uid %s)", uid, os.getuid())
        return False
    return True


def _same_site(request: web.Request, port: int) -> bool:
    """True for a person (typed URL: ``Sec-Fetch-Site: none``) or our own page; False for anyone else."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in allowed_origins(port):
        return False
    if site is not None:
        return site == "same-origin" or (site == "none" and request.method == "GET")
    return origin is not None


async def start_get(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    if not _same_site(request, ctl.endpoint.port):
        return _forbidden(
            request, "A login can only be started from this computer's Convocations, not by another site."
        )
    reply = ctl.start(restart=request.query.get("restart") == "1")
    raise web.HTTPFound(reply["auth_url"])


async def start_post(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    if not _same_site(request, ctl.endpoint.port):
        return _forbidden(
            request, "A login can only be started from this computer's Convocations, not by another site."
        )
    restart = False
    if request.can_read_body:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _json({"error": {"code": 400, "message": "The body must be a JSON object."}}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("restart", False), bool):
            return _json({"error": {"code": 400, "message": 'Expected {"restart": true|false}.'}}, 400)
        restart = body.get("restart", False)
    return _json(ctl.start(restart=restart))


def _navigation(request: web.Request) -> bool:
    """False when a browser says this is not a top-level page load (an image, script, fetch or frame).

    OpenRouter sends the person back with a top-level navigation; a page that embeds our callback
    invisibly (``<img src=...?error=access_denied>``) must not be able to end or feed the real login.
    Clients that send no fetch metadata (curl, older browsers) are not refused."""
    dest = request.headers.get("Sec-Fetch-Dest")
    mode = request.headers.get("Sec-Fetch-Mode")
    return dest in (None, "document") and mode in (None, "navigate")


async def callback(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    if not _navigation(request):
        log.warning(
            "refused a callback that was not a page load (Sec-Fetch-Dest %r)", request.headers.get("Sec-Fetch-Dest")
        )
        return _forbidden(request, "This address only works as the page OpenRouter sends you back to.")
    q = request.query
    state = q.get("state")
    if "error" in q:
        outcome = ctl.callback_error(q["error"], state)  # error_description is OpenRouter's text: not echoed
    else:
        outcome = await ctl.callback(q.get("code"), state)
    # The code leaves the address bar and history: the person lands on a URL without it.
    results = request.app[RESULTS]
    result_id = secrets.token_urlsafe(12)
    results[result_id] = outcome
    while len(results) > MAX_RESULTS:
        results.popitem(last=False)
    raise web.HTTPSeeOther(f"/api/openrouter/oauth/result/{result_id}")


async def result(request: web.Request) -> web.StreamResponse:
    outcome: Outcome | None = request.app[RESULTS].get(request.match_info["id"])
    if outcome is None:
        return _html(
            pages.result_page(
                "ignored", "Nothing to show", "This result page has expired.", "Check `convctl status` for the outcome."
            ),
            404,
        )
    status = 200 if outcome.kind == "success" else 400
    return _html(pages.result_page(outcome.kind, outcome.title, outcome.message, outcome.hint, outcome.code), status)


async def status_json(request: web.Request) -> web.StreamResponse:
    # Any local user can reach loopback HTTP, so this copy leaves out the pending flow's authorize URL
    # (its state would help a login-CSRF) and the account's label and usage; the same-uid socket's
    # `status` has both.
    status = dict(request.app[CONTROLLER].status())
    status.pop("account", None)
    if status["flow"]:
        status["flow"] = {k: v for k, v in status["flow"].items() if k != "auth_url"}
    return _json(status)


async def index(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    secret = await ctl.secret_status()
    return _html(
        pages.status_page(
            linked=secret["stored"],
            backend=secret["backend"],
            port=ctl.endpoint.port,
            port_fallback=ctl.endpoint.port_fallback,
            pending=ctl.flows.pending is not None,
        )
    )


class _MalformedRequests(logging.Filter):
    """One line, not a traceback, for requests aiohttp cannot parse (oversized headers, garbage bytes).

    Anyone on this machine can send those: left alone, aiohttp logs each with a traceback at ERROR and
    the first 100 bytes of the offending line, which may hold a query (a code) or a header someone sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "refused a malformed HTTP request from %s (%s)", (remote, type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_MALFORMED = _MalformedRequests()


def make_app(controller: Controller) -> web.Application:
    server_log = logging.getLogger("aiohttp.server")
    if _MALFORMED not in server_log.filters:
        server_log.addFilter(_MALFORMED)
    app = web.Application(middlewares=[security], client_max_size=MAX_BODY)
    app[CONTROLLER] = controller
    app[RESULTS] = OrderedDict()
    app.router.add_get("/", index)
    app.router.add_get(START, start_get)
    app.router.add_post(START, start_post)
    app.router.add_get(CALLBACK, callback)
    app.router.add_get(RESULT, result)
    app.router.add_get(STATUS, status_json)
    return app
