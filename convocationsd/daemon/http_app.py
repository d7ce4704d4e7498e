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
from typing import Any, NoReturn
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11

from convocationsd.common import proc_net
from convocationsd.core import pkce
from convocationsd.daemon import pages
from convocationsd.daemon.controller import Controller, Outcome, OutcomeKind
from convocationsd.daemon.logs import REFUSALS

log = logging.getLogger(__name__)

START = "/api/openrouter/oauth/start"
CALLBACK = pkce.CALLBACK_PATH  # the path OpenRouter is sent, so route and callback_url cannot drift apart
RESULT = "/api/openrouter/oauth/result/{id}"
END = pages.END_PATH
CONFIRM = pages.CONFIRM_PATH
STATUS = "/api/status"

MAX_RESULTS = 32
MAX_BODY = 16 * 1024


class Results:
    """Result pages by unguessable id, the callback's answer once the code has left the address bar.

    Any web page can open the callback address and make a result, so those of callbacks that ended the
    login (which needs its state) are kept apart from the rest: a flood of strays pushes out only strays,
    never the page the person is looking at."""

    def __init__(self, size: int = MAX_RESULTS) -> None:
        self._size = size
        self._login: OrderedDict[str, Outcome] = OrderedDict()
        self._stray: OrderedDict[str, Outcome] = OrderedDict()

    def add(self, outcome: Outcome) -> str:
        kept = self._login if outcome.kind in (OutcomeKind.SUCCESS, OutcomeKind.FAILED) else self._stray
        result_id = secrets.token_urlsafe(12)
        kept[result_id] = outcome
        while len(kept) > self._size:
            kept.popitem(last=False)
        return result_id

    def get(self, result_id: str) -> Outcome | None:
        return self._login.get(result_id) or self._stray.get(result_id)


CONTROLLER = web.AppKey("controller", Controller)
RESULTS = web.AppKey("results", Results)
CHECK_PEER_UID = sys.platform.startswith("linux") and proc_net.available()
IDLE_TIMEOUT = 10.0  # seconds a connection may sit without a complete request (slowloris, idle crowds)


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset(f"{name}:{port}" for name in ("localhost", "127.0.0.1", "[::1]"))


def allowed_origins(port: int) -> frozenset[str]:
    return frozenset(f"http://{host}" for host in allowed_hosts(port))


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def _forbidden(request: web.Request, message: str) -> web.Response:
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        return _html(pages.error_page(403, message), 403)
    return _json({"error": {"code": 403, "message": message}}, 403)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    ctl.touch()
    if request.version not in (HttpVersion10, HttpVersion11):
        return _version_not_supported(request)
    if not _names_us(request, ctl.endpoint.port):
        response: web.StreamResponse = _forbidden(request, "This address is only served as localhost.")
    elif not _same_user(request):
        response = _forbidden(request, "This daemon serves only the user it runs as.")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = e
    response.headers.update(SECURITY_HEADERS)
    if (response.content_type or "").startswith("text/html"):
        response.headers.setdefault("Content-Security-Policy", pages.CSP)
    return response


def _names_us(request: web.Request, port: int) -> bool:
    """``Host`` must be one of our loopback names with our port (DNS rebinding). So must the authority of an
    absolute-form target (``GET http://host/path``), which RFC 9112 puts in the place of ``Host``."""
    hosts = allowed_hosts(port)
    if request.headers.get("Host", "").lower() not in hosts:
        return False
    target = request.raw_path
    if target.startswith("/"):
        return True
    absolute = urlsplit(target)
    return absolute.scheme.lower() == "http" and absolute.netloc.lower() in hosts


def _version_not_supported(request: web.Request) -> web.StreamResponse:
    """505 for a request line that claims a version other than HTTP/1.0 or 1.1 (``HTTP/2.0`` in plain text).

    aiohttp's parser accepts such a line and writes its answer's status line with the request's version,
    which would be an "HTTP/2.0 200" in HTTP/1 framing. So the refusal is written here, as HTTP/1.1
    (RFC 9112 section 2.3), and the connection closed: aiohttp then finds nothing left to answer."""
    body = b"This server speaks HTTP/1.1.\n"
    head = [
        "HTTP/1.1 505 HTTP Version Not Supported",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    transport = request.transport
    if transport is not None:
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        transport.close()
    return web.Response(status=505)


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
    if uid is None:
        log.warning("refused an HTTP request: the kernel lists its client end as closed or ownerless")
        return False
    if uid != os.getuid():
        log.warning("refused an HTTP request from uid %s (this daemon runs as uid %s)", uid, os.getuid())
        return False
    return True


def _same_site(request: web.Request, port: int) -> bool:
    """True for a person (typed URL: ``Sec-Fetch-Site: none``) or our own page; False for anyone else."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    ours = origin in allowed_origins(port)
    if site is None:  # a browser without fetch metadata: only its Origin can vouch
        return ours
    # Our pages send no referrer, so a form posted from one says `Origin: null` (and same-origin).
    if origin is not None and not ours and not (origin == "null" and site == "same-origin"):
        return False
    return site == "same-origin" or (site == "none" and request.method == "GET")


async def start_get(request: web.Request) -> web.StreamResponse:
    ctl = request.app[CONTROLLER]
    if not _same_site(request, ctl.endpoint.port):
        return _forbidden(
            request, "A login can only be started from this computer's Convocations, not by another site."
        )
    # Joins a pending login or starts one, never ends one: a link opened from mail or chat arrives with
    # `Sec-Fetch-Site: none` like a typed address, so a GET could come from anyone. Ending one takes the POST.
    reply = ctl.start()
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
        log.warning("refused a callback that was not a page load")  # nothing from the request: anyone chose it
        return _forbidden(request, "This address only works as the page OpenRouter sends you back to.")
    q = request.query
    state = q.get("state")
    if "error" in q:
        outcome = ctl.callback_error(q["error"], state)  # error_description is never read
    else:
        outcome = await ctl.callback(q.get("code"), state)
    _show_result(request, outcome)


def _show_result(request: web.Request, outcome: Outcome) -> NoReturn:
    # The code leaves the address bar and history: the person lands on a URL without it.
    raise web.HTTPSeeOther(RESULT.format(id=request.app[RESULTS].add(outcome)))


async def posted_form(request: web.Request) -> web.StreamResponse:
    """The button of a result page (pages.FORMS): "End the login" on the page of an error report without
    state, "Finish linking" on the page of a code without state. Only the person at the browser can press
    it: another site cannot post it (the same-site check), frame it (the security headers) or read what it
    carries, such as the token of a code (no CORS, and DNS rebinding is refused)."""
    ctl = request.app[CONTROLLER]
    kind = OutcomeKind.REPORTED if request.path == END else OutcomeKind.CONFIRM
    if not _same_site(request, ctl.endpoint.port):  # only its own page may press the button
        done = "ended" if kind == OutcomeKind.REPORTED else "finished"
        return _forbidden(
            request, f"A login can only be {done} from its own page on this computer, not by another site."
        )
    try:
        form = await request.post()
    except ValueError:
        form = None
    names = pages.FORMS[kind][1]
    fields = [value for value in (form.get(name) if form else None for name in names) if isinstance(value, str)]
    if len(fields) != len(names):
        return _html(pages.error_page(400, "This form was not sent the way its page sends it."), 400)
    if kind == OutcomeKind.REPORTED:
        _show_result(request, ctl.end_reported(*fields))
    _show_result(request, await ctl.confirm_stateless(*fields))


async def result(request: web.Request) -> web.StreamResponse:
    outcome: Outcome | None = request.app[RESULTS].get(request.match_info["id"])
    if outcome is None:
        return _html(
            pages.result_page(
                OutcomeKind.IGNORED,
                "Nothing to show",
                "This result page has expired.",
                "Check `convctl status` for the outcome.",
            ),
            404,
        )
    status = 200 if outcome.kind in (OutcomeKind.SUCCESS, OutcomeKind.CONFIRM) else 400
    page = pages.result_page(outcome.kind, outcome.title, outcome.message, outcome.hint, outcome.code, outcome.form)
    response = _html(page, status)
    if outcome.form is not None:
        response.headers["Content-Security-Policy"] = pages.FORM_CSP  # its one form posts to this origin
    return response


# What loopback HTTP's /api/status shows of the socket's `status` (anything else stays on the socket).
HTTP_STATUS_FIELDS = (
    "version", "protocol", "pid", "http_url", "port", "port_fallback", "socket", "flow", "secret", "subscribers"
)  # fmt: skip


async def status_json(request: web.Request) -> web.StreamResponse:
    # Any local user can reach loopback HTTP, so this copy leaves out the pending flow's authorize URL
    # (its state would help a login-CSRF), the account's label and usage, and the settings and the last
    # store's outcome (paths, keyring errors); the same-uid socket's `status` has them all.
    full = request.app[CONTROLLER].status()
    status = {name: full[name] for name in HTTP_STATUS_FIELDS}  # listed: a field added later stays private
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
REPEATS = REFUSALS  # anyone on this machine can have requests refused, as often as they like


def make_app(controller: Controller) -> web.Application:
    server_log = logging.getLogger("aiohttp.server")
    if _MALFORMED not in server_log.filters:
        server_log.addFilter(_MALFORMED)
        server_log.addFilter(REPEATS)  # after _MALFORMED, which gives such records one message
        log.addFilter(REPEATS)
    app = web.Application(middlewares=[security], client_max_size=MAX_BODY)
    app[CONTROLLER] = controller
    app[RESULTS] = Results()
    app.router.add_get("/", index)
    app.router.add_get(START, start_get)
    app.router.add_post(START, start_post)
    app.router.add_get(CALLBACK, callback)
    app.router.add_get(RESULT, result)
    app.router.add_post(END, posted_form)
    app.router.add_post(CONFIRM, posted_form)
    app.router.add_get(STATUS, status_json)
    return app
