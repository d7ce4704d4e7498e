"""Web pages attacking localhost: DNS rebinding, cross-site starts, CORS, callback injection, headers.

The attacker is any page open in the person's browser. It can make the browser send requests to
localhost (navigations, images, forms, fetch), and with DNS rebinding it can even read the answers of
requests that carry its own name in ``Host``. None of that may start a login, end or consume the real
one, store a key, or read anything.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.adversarial.harness import (
    callback,
    kill,
    next_event,
    query_of,
    raw_http,
    send_raw,
    state_of,
    subscriber,
)
from tests.conftest import read_auth_url_sync, start_daemon, wait_until

START = "/api/openrouter/oauth/start"
CB = "/api/openrouter/oauth/callback"
END = "/api/openrouter/oauth/end"
CONFIRM = "/api/openrouter/oauth/confirm"
# What OpenRouter's redirect looks like to us: a cross-site top-level navigation.
NAVIGATION = {"Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "cross-site"}


@pytest.fixture(scope="module")
def relaxed_daemon(mod_fake):
    """A second daemon of the module with allow_stateless_callbacks (for an OpenRouter that drops state)."""
    tmp = Path(tempfile.mkdtemp(prefix="cvr"))
    d = start_daemon(tmp, CONVOCATIONS_OPENROUTER_URL=mod_fake.url, CONVOCATIONS_ALLOW_STATELESS_CALLBACKS="1")
    yield d
    kill(d)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def relaxed(relaxed_daemon):
    relaxed_daemon.call("oauth.cancel")
    yield relaxed_daemon
    relaxed_daemon.call("oauth.cancel")


def latest_session(d) -> str | None:
    flow = d.call("status")["flow"]
    return flow and flow["session_id"]


# -- DNS rebinding ------------------------------------------------------------------------------------

HOSTILE_HOSTS = [
    pytest.param("evil.com:{port}", id="evil.com"),
    pytest.param("attacker.localhost:{port}", id="subdomain-of-localhost"),
    pytest.param("127.0.0.1.nip.io:{port}", id="nip.io"),
    pytest.param("localhost:{other}", id="wrong-port"),
    pytest.param("localhost", id="no-port"),
    pytest.param("localhost:{port}.evil.com", id="port-then-suffix"),
    pytest.param("[::1]:{port}@evil.com", id="userinfo-trick"),
    pytest.param(None, id="missing-host"),
    pytest.param("", id="empty-host"),
]

ROUTES = [
    ("GET", "/api/status", {}),
    ("GET", "/", {"Accept": "text/html"}),
    # A rebinding page is same-origin with itself, so its requests look same-origin to the browser.
    ("GET", START, {"Sec-Fetch-Site": "same-origin"}),
    ("POST", START, {"Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}),
    ("GET", CB + "?code=abc&state=x", {}),
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_dns_rebinding_host_is_refused_without_side_effect(mdaemon, host):
    """Any Host other than localhost/127.0.0.1/[::1] with our port gets 403 on every route; no flow starts.

    Defence: Host allow-list in http_app.security."""
    d = mdaemon
    before = latest_session(d)
    if host is not None:
        host = host.format(port=d.port, other=d.port + 1 if d.port < 65535 else d.port - 1)
    for method, path, headers in ROUTES:
        h = dict(headers)
        if host is not None and "Origin" not in h and method == "POST":
            h["Origin"] = f"http://{host}"
        body = b"{}" if method == "POST" else b""
        r = raw_http(d.port, method, path, h, body, host=host)
        # HTTP/1.1 without Host is malformed: aiohttp answers 400 before any route runs.
        assert r.status == (400 if host is None else 403), (method, path, r.dump())
        assert "session_id" not in r.text and "auth_url" not in r.text and '"port"' not in r.text
    assert latest_session(d) == before  # nothing started


def test_http10_without_host_is_refused(mdaemon):
    """HTTP/1.0 may omit Host; such requests are still refused (403) and start nothing."""
    d = mdaemon
    before = latest_session(d)
    for method, path, headers in ROUTES:
        r = raw_http(d.port, method, path, headers, b"{}" if method == "POST" else b"", host=None, version="HTTP/1.0")
        assert r.status == 403, (method, path, r.dump())
    assert latest_session(d) == before


def test_rebinding_callback_does_not_consume_the_real_code(mdaemon, fake_t):
    """A rebinding page replaying the real callback gets 403; the real code still completes the login.

    Defence: Host allow-list runs before the callback route."""
    d = mdaemon
    reply = d.call("oauth.start", {"restart": True})
    location = fake_t.approve(reply["auth_url"])
    r = raw_http(d.port, "GET", CB + "?" + query_of(location), host=f"evil.com:{d.port}")
    assert r.status == 403
    assert d.call("status")["flow"]["status"] == "pending"
    _, page = callback(d.port, query_of(location))
    assert page is not None and page.status == 200 and "OpenRouter account linked" in page.text
    d.call("secret.clear")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_every_loopback_name_is_accepted(mdaemon, family):
    """localhost, 127.0.0.1 and [::1] with our port are served on both loopback addresses (no false 403)."""
    d = mdaemon
    for name in ("localhost", "127.0.0.1", "[::1]", "LOCALHOST"):
        r = raw_http(d.port, "GET", "/api/status", host=f"{name}:{d.port}", family=family)
        assert r.status == 200, (name, r.dump())


# -- cross-site starts --------------------------------------------------------------------------------

CROSS_SITE = [
    pytest.param("GET", {"Sec-Fetch-Site": "cross-site"}, id="get-cross-site"),
    pytest.param("GET", {"Sec-Fetch-Site": "same-site"}, id="get-same-site"),
    pytest.param("GET", {"Origin": "https://evil.example"}, id="get-origin-evil"),
    pytest.param("GET", {"Origin": "null"}, id="get-origin-null"),
    pytest.param("GET", {"Sec-Fetch-Site": "none", "Origin": "https://evil.example"}, id="get-none-but-evil-origin"),
    pytest.param("GET", {}, id="get-no-fetch-metadata"),
    pytest.param("POST", {"Origin": "https://evil.example"}, id="post-origin-evil"),
    pytest.param("POST", {"Origin": "http://localhost:1"}, id="post-origin-other-local-port"),
    pytest.param("POST", {"Sec-Fetch-Site": "cross-site"}, id="post-cross-site"),
    pytest.param("POST", {"Sec-Fetch-Site": "same-site", "Origin": "{origin}"}, id="post-same-site"),
    pytest.param("POST", {"Sec-Fetch-Site": "none"}, id="post-none"),
    pytest.param("POST", {"Origin": "null"}, id="post-origin-null"),
    pytest.param("POST", {}, id="post-no-origin"),
]


@pytest.mark.parametrize("method, headers", CROSS_SITE)
def test_cross_site_start_is_refused(mdaemon, method, headers):
    """Start routes refuse callers that are not same-origin (or a person's typed URL): 403, no flow.

    Defence: http_app._same_site (Origin / Sec-Fetch-Site)."""
    d = mdaemon
    before = latest_session(d)
    h = {k: v.format(origin=f"http://localhost:{d.port}") for k, v in headers.items()}
    body = b"{}" if method == "POST" else b""
    if method == "POST":
        h.setdefault("Content-Type", "application/json")
    r = raw_http(d.port, method, START, h, body)
    assert r.status == 403, r.dump()
    assert "auth_url" not in r.text and "Location" not in dict(r.headers)
    assert latest_session(d) == before


def test_same_origin_and_typed_url_are_allowed(mdaemon):
    """Our own page (same-origin POST) and a typed URL (Sec-Fetch-Site: none GET) may start a login."""
    d = mdaemon
    origin = f"http://localhost:{d.port}"
    r = raw_http(
        d.port,
        "POST",
        START,
        {"Origin": origin, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"},
        b"{}",
    )
    assert r.status == 200 and "auth_url" in r.text
    r = raw_http(d.port, "GET", START, {"Sec-Fetch-Site": "none"})
    assert r.status == 302


# -- CORS ---------------------------------------------------------------------------------------------

ALL_ROUTES = ["/", "/api/status", START, CB, CB + "?code=x&state=y", "/api/openrouter/oauth/result/nope", "/nope"]


def test_no_cors_headers_anywhere(mdaemon):
    """No response, on any route or method, carries Access-Control-Allow-* (other origins cannot read it)."""
    d = mdaemon
    for path in ALL_ROUTES:
        for method in ("GET", "POST", "PUT", "DELETE"):
            r = raw_http(
                d.port,
                method,
                path,
                {"Origin": "https://evil.example", "Content-Type": "application/json"},
                b"{}" if method != "GET" else b"",
            )
            assert r.status, (method, path)
            assert not [k for k, _ in r.headers if k.lower().startswith("access-control-")], (method, path, r.dump())
    d.call("oauth.cancel")


@pytest.mark.parametrize("path", ALL_ROUTES)
def test_options_preflight_gets_nothing_permissive(mdaemon, path):
    """OPTIONS preflights are answered with an error and no Access-Control-* headers; nothing starts."""
    d = mdaemon
    before = latest_session(d)
    r = raw_http(
        d.port,
        "OPTIONS",
        path,
        {
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert r.status >= 400, r.dump()
    assert not [k for k, _ in r.headers if k.lower().startswith("access-control-")], r.dump()
    assert latest_session(d) == before


# -- callback injection -------------------------------------------------------------------------------


def test_callback_with_no_pending_flow(mdaemon, fake_t):
    """A code with no login pending: error page, no exchange with OpenRouter, no key stored."""
    d = mdaemon
    exchanges = len(fake_t.fake.exchanges)
    first, page = callback(d.port, "code=attacker-code&state=whatever")
    assert first.status == 303 and page is not None and page.status == 400
    assert "No login is in progress" in page.text
    assert len(fake_t.fake.exchanges) == exchanges
    assert d.call("secret.status")["stored"] is False


def test_wrong_state_neither_exchanges_nor_ends_the_flow(mdaemon, fake_t):
    """A code with the wrong state: error page; the code is not sent to OpenRouter; the flow stays pending.

    Defence: the state compare in flows._matching_flow."""
    d = mdaemon
    reply = d.call("oauth.start", {"restart": True})
    real = fake_t.approve(reply["auth_url"])
    code = dict(p.split("=", 1) for p in query_of(real).split("&"))["code"]
    exchanges = len(fake_t.fake.exchanges)
    for query in (
        f"code={code}&state=wrong",
        f"code={code}&state=",
        f"code={code}&state={state_of(reply['auth_url'])}x",
        "error=access_denied&state=wrong",
    ):
        _, page = callback(d.port, query)
        assert page is not None and "does not belong" in page.text, (query, page and page.text)
    assert len(fake_t.fake.exchanges) == exchanges  # the attacker could not make us spend the code
    assert d.call("status")["flow"]["status"] == "pending"
    _, page = callback(d.port, query_of(real))
    assert page is not None and "OpenRouter account linked" in page.text
    d.call("secret.clear")


def test_repeated_code_is_not_exchanged_again(mdaemon, fake_t):
    """A code that was already exchanged, replayed into the next login: refused before reaching OpenRouter.

    Defence: used-code digests in flows.claim_code."""
    d = mdaemon
    first = d.call("oauth.start", {"restart": True})
    location = fake_t.approve(first["auth_url"])
    _, page = callback(d.port, query_of(location))
    assert "OpenRouter account linked" in page.text
    stored = d.call("secret.get")["key"]
    second = d.call("oauth.start")
    old_code = query_of(location).split("code=")[1].split("&")[0]
    exchanges = len(fake_t.fake.exchanges)
    _, page = callback(d.port, f"code={old_code}&state={state_of(second['auth_url'])}")
    assert page is not None and page.status == 400 and "already used" in page.text
    assert len(fake_t.fake.exchanges) == exchanges
    assert d.call("status")["flow"]["status"] == "pending"
    assert d.call("secret.get")["key"] == stored
    d.call("oauth.cancel")
    d.call("secret.clear")


def test_code_for_another_verifier_leaves_flow_pending(relaxed, fake_t):
    """With allow_stateless_callbacks, a stateless callback with a code issued for another PKCE challenge,
    confirmed: ignored, flow pending, no key.

    Defence: PKCE (OpenRouter rejects the verifier); the stateless code never held the flow."""
    d = relaxed
    fake_t.config.echo_state = False
    reply = d.call("oauth.start", {"restart": True})
    foreign = fake_t.fake.issue_code("a-challenge-for-someone-elses-verifier-0123456789")
    _, page = callback(d.port, f"code={foreign}")
    page = confirm(d, page)
    assert "ignored" in page.text and page.status == 400
    assert d.call("status")["flow"]["status"] == "pending"
    assert d.call("secret.status")["stored"] is False
    real = fake_t.approve(reply["auth_url"])  # no state echoed: the real one still works, once confirmed
    _, page = callback(d.port, query_of(real))
    assert "OpenRouter account linked" in confirm(d, page).text
    d.call("secret.clear")


def test_concurrent_duplicate_callbacks_exchange_once(mdaemon, fake_t):
    """The same callback fired twice at once (double click, replay race): exactly one exchange upstream."""
    import threading

    d = mdaemon
    fake_t.config.exchange_delay = 0.5
    reply = d.call("oauth.start", {"restart": True})
    location = fake_t.approve(reply["auth_url"])
    before = len(fake_t.fake.exchanges)
    pages: list = []
    threads = [threading.Thread(target=lambda: pages.append(callback(d.port, query_of(location))[1])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    texts = sorted(p.text for p in pages if p is not None)
    assert sum("OpenRouter account linked" in t for t in texts) == 1, texts
    assert len(fake_t.fake.exchanges) == before + 1
    d.call("secret.clear")


def test_subresource_callback_is_refused(mdaemon, fake_t):
    """A page embedding the callback as an image/script/fetch (invisible to the person) changes nothing.

    Defence: the callback only accepts top-level navigations (Sec-Fetch-Dest/Mode) when a browser says so."""
    d = mdaemon
    sub = subscriber(d, ["openrouter-auth-complete"])
    reply = d.call("oauth.start", {"restart": True})
    for dest, mode in (("image", "no-cors"), ("script", "no-cors"), ("empty", "cors"), ("iframe", "navigate")):
        r = raw_http(
            d.port,
            "GET",
            CB + "?error=access_denied",
            {"Sec-Fetch-Dest": dest, "Sec-Fetch-Mode": mode, "Sec-Fetch-Site": "cross-site"},
        )
        assert r.status == 403, (dest, r.dump())
    assert d.call("status")["flow"]["status"] == "pending"
    # The real browser redirect from OpenRouter is a cross-site top-level navigation: accepted.
    location = fake_t.approve(reply["auth_url"])
    _, page = callback(
        d.port,
        query_of(location),
        {"Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "cross-site"},
    )
    assert page is not None and "OpenRouter account linked" in page.text
    ev = next_event(sub, "openrouter-auth-complete", reply["session_id"])
    assert ev["data"]["success"] is True
    sub.close()
    d.call("secret.clear")


# -- response headers and escaping ---------------------------------------------------------------------


def _check_headers(r, where):
    assert r.header("Cache-Control") == "no-store", where
    assert r.header("Referrer-Policy") == "no-referrer", where
    assert r.header("X-Content-Type-Options") == "nosniff", where
    if (r.header("Content-Type") or "").startswith("text/html"):
        csp = r.header("Content-Security-Policy") or ""
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, where
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp, where
        body = r.text.lower()
        assert "<script" not in body, where
        assert 'src="http' not in body and 'href="http' not in body and "url(" not in body, where


def test_security_headers_on_every_response(mdaemon, fake_t):
    """Cache-Control no-store, Referrer-Policy no-referrer, nosniff on all answers; strict CSP on HTML."""
    d = mdaemon
    html = {"Accept": "text/html"}
    replies = {
        "index": raw_http(d.port, "GET", "/", html),
        "status": raw_http(d.port, "GET", "/api/status"),
        "404": raw_http(d.port, "GET", "/nope", html),
        "405": raw_http(d.port, "PUT", "/api/status"),
        "403-html": raw_http(d.port, "GET", START, {"Sec-Fetch-Site": "cross-site", **html}),
        "403-rebinding": raw_http(d.port, "GET", "/", html, host="evil.com"),
        "403-json": raw_http(d.port, "POST", START, {"Origin": "https://evil.example"}),
        "start-302": raw_http(d.port, "GET", START, {"Sec-Fetch-Site": "none"}),
        "413": raw_http(d.port, "POST", START, {"Origin": f"http://localhost:{d.port}"}, b"x" * 100_000),
    }
    first, page = callback(d.port, "code=x&state=y")
    replies["callback-303"], replies["result"] = first, page
    replies["result-expired"] = raw_http(d.port, "GET", "/api/openrouter/oauth/result/expired", html)
    for where, r in replies.items():
        assert r is not None and r.status, where
        _check_headers(r, where)
    assert (replies["index"].header("Content-Type") or "").startswith("text/html")
    assert (replies["result"].header("Content-Type") or "").startswith("text/html")
    assert replies["callback-303"].header("Location").startswith("/api/openrouter/oauth/result/")
    assert "code=" not in replies["callback-303"].header("Location")
    d.call("oauth.cancel")


SCRIPTY = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"


def test_query_text_is_never_reflected(mdaemon):
    """Attacker-chosen text in a callback's query (error, error_description, code, state) never comes back on
    a page, not even escaped; unknown pages reflect nothing either."""
    d = mdaemon
    sub = subscriber(d, ["openrouter-auth-complete"])
    reply = d.call("oauth.start", {"restart": True})
    q = f"error={quote(SCRIPTY)}&error_description={quote(SCRIPTY)}&state={state_of(reply['auth_url'])}"
    _, page = callback(d.port, q)
    assert page is not None and page.status == 400 and "OpenRouter reported an error" in page.text
    ev = next_event(sub, "openrouter-auth-complete", reply["session_id"])
    assert ev["data"]["error"]["code"] == "exchange_failed"
    for path in (
        CB + "?code=" + quote(SCRIPTY) + "&state=" + quote(SCRIPTY),
        CB + "?error=" + quote(SCRIPTY),
        "/" + quote(SCRIPTY),
        "/api/openrouter/oauth/result/" + quote(SCRIPTY),
    ):
        first, page = (
            callback(d.port, path.split("?", 1)[1])
            if path.startswith(CB)
            else (raw_http(d.port, "GET", path, {"Accept": "text/html"}), None)
        )
        for r in (first, page):
            if r is not None:
                assert "script" not in r.text and "onerror" not in r.text, (path, r.text)
    sub.close()


def test_status_json_never_carries_the_authorize_url(mdaemon):
    """Loopback HTTP is reachable by every local user: /api/status leaves out the pending flow's auth URL/state."""
    d = mdaemon
    reply = d.call("oauth.start", {"restart": True})
    r = raw_http(d.port, "GET", "/api/status")
    assert r.status == 200
    assert state_of(reply["auth_url"]) not in r.text and "auth_url" not in r.text
    d.call("oauth.cancel")


def test_flood_of_hostile_requests_leaves_daemon_serving(mdaemon):
    """200 hostile requests in a row (rebinding, cross-site, preflight) leave the daemon answering and unchanged."""
    d = mdaemon
    before = latest_session(d)
    t0 = time.monotonic()
    for i in range(200):
        kind = i % 3
        if kind == 0:
            r = raw_http(d.port, "GET", "/api/status", host="evil.com")
        elif kind == 1:
            r = raw_http(d.port, "POST", START, {"Origin": "https://evil.example"}, b"{}")
        else:
            r = raw_http(d.port, "OPTIONS", START, {"Origin": "https://evil.example"})
        assert r.status >= 400
        if time.monotonic() - t0 > 20:
            break
    assert latest_session(d) == before
    assert d.call("status")["pid"] == d.proc.pid


# -- HTTP/1.1 corner cases (RFC 9112), byte by byte ----------------------------------------------------


ABSOLUTE_TARGETS = [
    pytest.param("http://evil.example{path}", id="other-host"),
    pytest.param("http://evil.example:{port}{path}", id="other-host-our-port"),
    pytest.param("http://localhost:{port}@evil.example{path}", id="userinfo-trick"),
    pytest.param("http://localhost:{other}{path}", id="other-port"),
    pytest.param("https://localhost:{port}{path}", id="https"),
    pytest.param("localhost:{port}", id="authority-form"),
]


@pytest.mark.parametrize("target", ABSOLUTE_TARGETS)
def test_absolute_form_target_must_name_us_too(mdaemon, target):
    """``GET http://evil.example/api/status HTTP/1.1`` with a good Host: RFC 9112 makes the target's authority
    the request's host, so it must pass the same allow-list as Host: 403, nothing served, nothing started.

    Defence: http_app._names_us checks an absolute-form target's scheme and authority."""
    d = mdaemon
    before = latest_session(d)
    for method, path, extra in (
        ("GET", "/api/status", ""),
        ("POST", START, "Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"),
    ):
        t = target.format(port=d.port, other=d.port + 1 if d.port < 65535 else d.port - 1, path=path)
        head = f"{method} {t} HTTP/1.1\r\nHost: localhost:{d.port}\r\n{extra}Connection: close\r\n\r\n"
        answer = send_raw(d.port, head.encode() + (b"{}" if method == "POST" else b""))
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 403 ") or (
            target.endswith("{port}") and status_line.startswith(b"HTTP/1.0 400 ")  # aiohttp's own refusal
        ), answer
        assert b'"pid"' not in answer and b"auth_url" not in answer
    assert latest_session(d) == before


def test_absolute_form_naming_us_is_served(mdaemon):
    """RFC 9112 says a server must accept the absolute form: ``http://localhost:<port>/api/status`` works."""
    d = mdaemon
    for host in (f"localhost:{d.port}", f"127.0.0.1:{d.port}", f"[::1]:{d.port}", f"LOCALHOST:{d.port}"):
        head = f"GET http://{host}/api/status HTTP/1.1\r\nHost: localhost:{d.port}\r\nConnection: close\r\n\r\n"
        answer = send_raw(d.port, head.encode())
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"pid"' in answer, answer


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
def test_request_line_with_another_version_gets_505_as_http11(mdaemon, version):
    """A plain-text request line claiming ``HTTP/2.0`` (or 0.9) is answered ``HTTP/1.1 505`` with our headers,
    and nothing is served or started: never an ``HTTP/2.0 200`` in HTTP/1 framing.

    Defence: http_app._version_not_supported."""
    d = mdaemon
    before = latest_session(d)
    for method, path, body in (("GET", "/api/status", b""), ("POST", START, b'{"restart": true}')):
        head = (
            f"{method} {path} {version}\r\nHost: localhost:{d.port}\r\nOrigin: http://localhost:{d.port}\r\n"
            f"Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        answer = send_raw(d.port, head.encode() + body)
        head_bytes, _, payload = answer.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        assert lines[0] == "HTTP/1.1 505 HTTP Version Not Supported", answer
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
        assert headers["connection"] == "close" and int(headers["content-length"]) == len(payload)
        assert b'"pid"' not in answer and b"auth_url" not in answer
    assert latest_session(d) == before
    assert "Traceback" not in d.log()


def test_aiohttp_own_400_is_bare_and_echoes_only_the_sender(mdaemon):
    """Requests aiohttp cannot parse are answered by aiohttp before any of our code runs (aiohttp issue
    #6463): HTTP/1.0, plain text, none of our headers, and the body may quote the sender's own
    request line back to it. SECURITY.md says so; this test notices when aiohttp changes that."""
    d = mdaemon
    answer = send_raw(d.port, f"GET /api/status?x=1 HTTP/1.2\r\nHost: localhost:{d.port}\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 Bad Request\r\n"), answer
    assert b"text/plain" in head
    assert b"X-Content-Type-Options" not in head  # if this fails, aiohttp now runs our hooks: update SECURITY.md
    assert b'"pid"' not in body


# -- callbacks without state: any web page can send one ---------------------------------------------------

MARK = "EVIL-7f3a"  # attacker text that must reach no person, event or log


def confirm(d, page, headers: dict[str, str] | None = None):
    """Presses "Finish linking" on the page of a code without state, as the person's browser posts it (our
    page sends no referrer, so Chromium says ``Origin: null``); returns the result page it leads to."""
    import html
    import re

    assert page is not None and f'action="{CONFIRM}"' in page.text, page and page.text
    fields = dict(re.findall(r'<input type=hidden name=(\w+) value="([^"]*)">', page.text))
    body = "&".join(f"{name}={quote(html.unescape(value))}" for name, value in fields.items())  # as a browser does
    sent = {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin", "Origin": "null"}
    r = raw_http(d.port, "POST", CONFIRM, {**sent, **(headers or {})}, body.encode())
    if r.status != 303:
        return r
    return raw_http(d.port, "GET", urlsplit(r.header("Location")).path, {"Accept": "text/html"})


def _end_form(page_text: str) -> dict[str, str]:
    """The hidden fields of the page's "End the login" form."""
    import re

    assert f'action="{END}"' in page_text, page_text
    return dict(re.findall(r'<input type=hidden name=(\w+) value="([^"]*)">', page_text))


@pytest.mark.parametrize("mode", ["default", "allow_stateless_callbacks"])
def test_stateless_error_does_not_end_the_login(mdaemon, relaxed, fake_t, mode):
    """A page navigates the browser to ``callback?error=access_denied&error_description=<its text>`` with no
    state: the login goes on, the page says in our words that OpenRouter reported an error and offers a
    button, and none of the page's text reaches the event, the page or the log. The real approval still links.

    Defence: controller.callback_error ends a login only for an error that carried its state."""
    d = mdaemon if mode == "default" else relaxed
    sub = subscriber(d, ["openrouter-auth-complete"])
    reply = d.call("oauth.start", {"restart": True})
    for error in ("access_denied", MARK):
        first, page = callback(d.port, f"error={error}&error_description={MARK}+{MARK}", NAVIGATION)
        assert first.status == 303 and page is not None, first.dump()
        assert "OpenRouter reported an error" in page.text and "still waiting" in page.text
        assert _end_form(page.text)["session_id"] == reply["session_id"]
        assert MARK not in page.text
    assert d.call("status")["flow"]["status"] == "pending"
    _, page = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert page is not None and "OpenRouter account linked" in page.text
    ev = next_event(sub, "openrouter-auth-complete", reply["session_id"])  # the first one for this login
    assert ev["data"]["success"] is True
    assert MARK not in d.log()
    sub.close()
    d.call("secret.clear")


def test_end_button_works_same_origin_only(mdaemon):
    """The stateless error page's "End the login" button: a cross-site page (or one without fetch metadata)
    posting the same form gets 403 and the login goes on; our own page's post ends it, in our words.

    Defence: http_app.posted_form's same-site check."""
    d = mdaemon
    sub = subscriber(d, ["openrouter-auth-complete"])
    reply = d.call("oauth.start", {"restart": True})
    _, page = callback(d.port, "error=access_denied", NAVIGATION)
    fields = _end_form(page.text)
    body = "&".join(f"{k}={quote(v)}" for k, v in fields.items()).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for hostile in (
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:1"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "null"},
        {},
    ):
        r = raw_http(d.port, "POST", END, {**form, **hostile}, body)
        assert r.status == 403, (hostile, r.dump())
    assert d.call("status")["flow"]["status"] == "pending"
    # a browser posting our page's form: same-origin (with no-referrer, Chromium sends Origin: null)
    for origin in ("null", f"http://localhost:{d.port}"):
        d.call("oauth.cancel")
        reply = d.call("oauth.start")
        _, page = callback(d.port, "error=access_denied", NAVIGATION)
        body = "&".join(f"{k}={quote(v)}" for k, v in _end_form(page.text).items()).encode()
        r = raw_http(d.port, "POST", END, {**form, "Sec-Fetch-Site": "same-origin", "Origin": origin}, body)
        assert r.status == 303, r.dump()
        result = raw_http(d.port, "GET", urlsplit(r.header("Location")).path, {"Accept": "text/html"})
        assert "Linking failed" in result.text and "declined" in result.text
        ev = next_event(sub, "openrouter-auth-complete", reply["session_id"])
        assert ev["data"]["error"]["code"] == "access_denied"
    sub.close()


def test_no_text_from_a_callback_reaches_convctl(mdaemon):
    """An error callback that carries the login's state ends it, but what convctl prints, the event, the status
    and the log say it in our words: unknown codes are "OpenRouter reported an error", never their text.

    Defence: flows.reported_error maps OAuth error codes to our own messages."""
    d = mdaemon
    proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    auth_url = read_auth_url_sync(proc)
    q = f"error={MARK}-{quote(SCRIPTY)}&error_description={MARK}+{MARK}&state={state_of(auth_url)}"
    _, page = callback(d.port, q, NAVIGATION)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, out + err
    assert "OpenRouter reported an error" in err, err
    flow = d.call("status")["flow"]
    assert flow["error"]["message"].startswith("OpenRouter reported an error")
    for text in (out, err, page.text, str(flow)):
        assert MARK not in text and "script" not in text.lower(), text
    assert MARK not in d.log()


def test_stateless_code_is_refused_by_default(mdaemon, fake_t):
    """By default a code without state is not used at all (never sent to OpenRouter); the page explains the
    setting that accepts such callbacks, and the real callback still links.

    Defence: flows.FlowStore.confirmation_token requires state unless allow_stateless_callbacks."""
    d = mdaemon
    reply = d.call("oauth.start", {"restart": True})
    exchanges = len(fake_t.fake.exchanges)
    foreign = fake_t.fake.issue_code("a-challenge-for-someone-elses-verifier-0123456789")
    _, page = callback(d.port, f"code={foreign}", NAVIGATION)
    assert page is not None and page.status == 400 and "was not used" in page.text
    assert "allow_stateless_callbacks" in page.text and "CONVOCATIONS_ALLOW_STATELESS_CALLBACKS" in page.text
    assert len(fake_t.fake.exchanges) == exchanges
    assert d.call("status")["flow"]["status"] == "pending"
    _, page = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert page is not None and "OpenRouter account linked" in page.text
    d.call("secret.clear")


def test_right_state_goes_first_while_a_stateless_code_is_exchanged(relaxed, fake_t):
    """With allow_stateless_callbacks, a stateless code being exchanged (slowly) never holds the login: it
    stays pending, and the person's callback arriving meanwhile links at once instead of being turned away.

    Defence: the stateless code is exchanged on the side (take_confirmed_code leaves the flow pending)."""
    d = relaxed
    fake_t.config.exchange_delay = 1.5  # every exchange takes a while: the stray's is still running below
    reply = d.call("oauth.start", {"restart": True})
    real = fake_t.approve(reply["auth_url"])
    foreign = fake_t.fake.issue_code("a-challenge-for-someone-elses-verifier-0123456789")
    _, page = callback(d.port, f"code={foreign}", NAVIGATION)
    stray: list = []
    thread = threading.Thread(target=lambda: stray.append(confirm(d, page)))
    started = d.log().count("without state, on the side")
    thread.start()
    wait_until(lambda: d.log().count("without state, on the side") > started, "the daemon to exchange the stray code")
    assert d.call("status")["flow"]["status"] == "pending"
    _, page = callback(d.port, query_of(real), NAVIGATION)
    assert page is not None and "OpenRouter account linked" in page.text, page and page.text
    thread.join(20)
    assert stray and stray[0] is not None and "ignored" in stray[0].text
    assert d.call("status")["flow"]["status"] == "succeeded"
    d.call("secret.clear")


def test_stateless_code_that_fails_upstream_never_ends_the_login(relaxed, fake_t):
    """With allow_stateless_callbacks, a stateless code whose exchange fails for any reason (here OpenRouter
    answers 500) is ignored: the login stays pending, and the real callback links.

    Defence: controller._exchange_on_the_side answers a failure with an "ignored" page and leaves the flow."""
    d = relaxed
    reply = d.call("oauth.start", {"restart": True})
    fake_t.config.exchange_status = 500
    _, page = callback(d.port, "code=some-stray-code", NAVIGATION)
    page = confirm(d, page)
    assert "ignored" in page.text and "still waiting" in page.text
    assert d.call("status")["flow"]["status"] == "pending"
    fake_t.config.exchange_status = None
    _, page = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert page is not None and "OpenRouter account linked" in page.text
    d.call("secret.clear")


@pytest.mark.parametrize("mode", ["default", "allow_stateless_callbacks"])
def test_paste_login_ignores_browser_callbacks(mdaemon, relaxed, fake_t, mode):
    """A ``--paste`` login never uses the callback: error or code, with its state or without, the callback
    changes nothing and sends nothing to OpenRouter; the pasted code then links.

    Defence: flows._callback_flow refuses callbacks for a paste-mode flow."""
    d = mdaemon if mode == "default" else relaxed
    reply = d.call("oauth.start", {"restart": True, "paste": True})
    state = state_of(reply["auth_url"])
    exchanges = len(fake_t.fake.exchanges)
    foreign = fake_t.fake.issue_code("a-challenge-for-someone-elses-verifier-0123456789")
    for query in (
        "error=access_denied",
        f"error=access_denied&state={state}",
        f"code={foreign}",
        f"code=x&state={state}",
    ):
        _, page = callback(d.port, query, NAVIGATION)
        assert page is not None and "pasted" in page.text and "End the login" not in page.text, (query, page.text)
    assert len(fake_t.fake.exchanges) == exchanges
    assert d.call("status")["flow"]["status"] == "pending"
    code = fake_t.run(fake_t.fake.approve_headless(reply["auth_url"]))
    assert d.call("oauth.exchange", {"code": code})["success"] is True
    d.call("secret.clear")


def test_stray_flood_keeps_the_real_result_page(mdaemon, fake_t):
    """After the person's login links, 200 stray callbacks (no state, wrong state, errors) cannot push its
    result page out of the store: reloading it still says linked.

    Defence: http_app.Results keeps the pages of callbacks that ended the login apart from the rest."""
    d = mdaemon
    reply = d.call("oauth.start", {"restart": True})
    first, page = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert "OpenRouter account linked" in page.text
    mine = urlsplit(first.header("Location")).path
    d.call("oauth.start")  # a new login pending, so strays find something to aim at
    for i in range(200):
        query = ("error=access_denied", f"code=stray{i}", f"code=stray{i}&state=wrong", "error=x&state=y")[i % 4]
        callback(d.port, query, NAVIGATION)
    again = raw_http(d.port, "GET", mine, {"Accept": "text/html"})
    assert again.status == 200 and "OpenRouter account linked" in again.text, again.dump()
    d.call("oauth.cancel")
    d.call("secret.clear")


def test_a_flood_of_stray_callbacks_is_logged_once_per_kind_with_a_count(daemon_factory):
    """Any web page can navigate a window to the callback again and again: 800 page loads with a wrong state,
    without state, with an error and no state, with an error and a wrong state. Each is a WARNING the
    controller writes, but the log gets one line per kind while they last, not one per load, and at shutdown
    how many more came, naming each reason. The login still waits.

    Defence: controller's strays logger shares daemon/logs.Repeats with the HTTP door's refusals."""
    d = daemon_factory()
    pending = d.call("oauth.start")
    before = d.log().count(" WARNING ")
    for i in range(200):
        for query in (f"code=s{i}&state=wrong", f"code=n{i}", "error=access_denied", "error=x&state=y"):
            assert raw_http(d.port, "GET", f"{CB}?{query}", NAVIGATION).status == 303
    flow = d.call("status")["flow"]
    assert (flow["session_id"], flow["status"]) == (pending["session_id"], "pending")
    flood = d.log().count(" WARNING ") - before
    assert flood <= 4, d.log()[-3000:]
    assert d.stop() == 0
    log = d.log()
    assert re.search(
        r" 399 more like this in the last \d+ s, 2 different: ignored a callback: missing_state \(200 times\); "
        r"ignored a callback: state_mismatch \(199 times\)",
        log,
    ), log[-3000:]
    assert re.search(r" 199 more like this in the last \d+ s: an error report without state reached the callback", log)
    assert re.search(r" 199 more like this in the last \d+ s: ignored an error callback: state_mismatch", log)


# -- codes made without a PKCE challenge ---------------------------------------------------------------


def _code_without_challenge(fake_t, port: int) -> str:
    """What an attacker does first: asks OpenRouter (here the fake, switched to OpenRouter's documented
    behaviour) for a code of its own account with no ``code_challenge``, sent back to our callback. Such a
    code is accepted with any verifier, ours included."""
    fake_t.config.codes_without_challenge = True
    target = quote(f"http://localhost:{port}{CB}", safe="")
    location = fake_t.approve(f"{fake_t.url}/auth?callback_url={target}")
    assert "state=" not in location
    return query_of(location)


def test_a_code_made_without_a_challenge_is_not_used_without_the_person(relaxed, fake_t):
    """With allow_stateless_callbacks, a page navigates the browser to our callback with a code of its own
    made without a PKCE challenge (which OpenRouter would accept with our verifier): nothing is exchanged
    or stored, the login stays pending, and the page asks the person to confirm; another site cannot press
    that button (a cross-site or header-less post, or a guessed token, is refused); the person's own login
    then links their key, and the token of that page dies with the login.

    Defence: a code without state waits for the person's same-origin confirmation (controller.callback,
    http_app.posted_form)."""
    d = relaxed
    sub = subscriber(d, ["openrouter-key-changed"])
    reply = d.call("oauth.start", {"restart": True})
    exchanges = len(fake_t.fake.exchanges)
    query = _code_without_challenge(fake_t, d.port)
    _, page = callback(d.port, query, NAVIGATION)
    assert page is not None and page.status == 200 and "Finish linking" in page.text, page and page.text
    assert "another web page" in page.text and "--paste" in page.text
    # The code is in the form only: never shown as the page's reason code.
    code = parse_qs(query)["code"][0]
    assert "Reason code" not in page.text and page.text.count(code) == 1, page.text
    assert page.header("Content-Security-Policy") is not None and "frame-ancestors 'none'" in page.header(
        "Content-Security-Policy"
    )
    assert page.header("X-Frame-Options") == "DENY"
    assert len(fake_t.fake.exchanges) == exchanges  # not even tried
    for hostile in (
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:1"},
        {"Sec-Fetch-Site": "none", "Origin": None},
        {"Sec-Fetch-Site": None, "Origin": "https://evil.example"},
    ):
        headers = {k: v for k, v in hostile.items() if v is not None}
        r = raw_http(
            d.port, "POST", CONFIRM, {"Content-Type": "application/x-www-form-urlencoded", **headers}, b"code=x&token=x"
        )
        assert r.status == 403, (hostile, r.dump())
    guessed = raw_http(
        d.port,
        "POST",
        CONFIRM,
        {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin", "Origin": "null"},
        b"code=x&token=" + b"A" * 64,
    )
    assert guessed.status == 303
    assert len(fake_t.fake.exchanges) == exchanges
    assert d.call("status")["flow"]["status"] == "pending" and d.call("secret.status")["stored"] is False
    with pytest.raises(AssertionError):
        next_event(sub, "openrouter-key-changed", timeout=0.3)
    _, mine = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert mine is not None and "OpenRouter account linked" in mine.text
    if d.call("secret.get")["key"] != fake_t.fake.issued_keys[-1]:
        pytest.fail("the stored key is not the one of the person's own login")
    late = confirm(d, page)  # the person presses the stray's button after all: that login is over
    assert "no longer waiting" in late.text
    assert len(fake_t.fake.exchanges) == exchanges + 1  # the person's code only
    sub.close()
    d.call("secret.clear")


def test_no_flood_of_codes_pushes_the_persons_finish_linking_out(relaxed, fake_t):
    """With allow_stateless_callbacks and an OpenRouter that does not send ``state`` back, the person's own
    callback shows "Finish linking". Before they press it, a page sends 40 codes of its own to the callback
    (more than the daemon keeps result pages): the person's button still links the person's key.

    Defence: nothing is held for a confirmation: the page carries its code and a MAC of it under the login's
    key (flows.confirmation_token), so other codes cannot push it out."""
    d = relaxed
    fake_t.config.echo_state = False
    reply = d.call("oauth.start", {"restart": True})
    _, mine = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert mine is not None and "Finish linking" in mine.text
    person = fake_t.fake.state()["pending_codes"]
    for _ in range(40):
        _, stray = callback(d.port, _code_without_challenge(fake_t, d.port), NAVIGATION)
        assert stray is not None and "Finish linking" in stray.text
    assert d.call("status")["flow"]["status"] == "pending"
    done = confirm(d, mine)
    assert done.status == 200 and "OpenRouter account linked" in done.text, done.text[-700:]
    assert fake_t.fake.state()["pending_codes"] == person + 40 - 1  # only the person's code was exchanged
    if d.call("secret.get")["key"] != fake_t.fake.issued_keys[-1]:
        pytest.fail("the stored key is not the one of the person's own login")
    d.call("secret.clear")


def test_a_key_from_a_login_that_has_ended_is_never_stored(relaxed, fake_t):
    """With allow_stateless_callbacks, the person presses "Finish linking" on a page that carried someone
    else's challenge-less code, whose exchange is slow; meanwhile their own callback (with state) links.
    When OpenRouter then issues the other key, the login has ended: that key is not stored, and the
    person's stays.

    Defence: flows.FlowStore.claim_side_result keeps a stateless code's key only for a login still pending."""
    d = relaxed
    reply = d.call("oauth.start", {"restart": True})
    _, page = callback(d.port, _code_without_challenge(fake_t, d.port), NAVIGATION)
    fake_t.config.exchange_delay = 2.0
    stray: list = []
    thread = threading.Thread(target=lambda: stray.append(confirm(d, page)))
    waiting = fake_t.fake.state()["pending_codes"]
    thread.start()
    # The fake takes a code off its list when its exchange arrives, then waits.
    wait_until(lambda: fake_t.fake.state()["pending_codes"] < waiting, "the stray code's exchange to reach OpenRouter")
    fake_t.config.exchange_delay = 0.0  # the person's exchange is quick; the stray one is still waiting
    _, mine = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert mine is not None and "OpenRouter account linked" in mine.text
    mine_key = fake_t.fake.issued_keys[-1]
    thread.join(20)
    assert len(fake_t.fake.issued_keys) >= 2 and fake_t.fake.issued_keys[-1] != mine_key  # the other one came
    assert stray and "Nothing was linked" in stray[0].text and "already ended" in stray[0].text, stray
    assert d.call("status")["flow"]["status"] == "succeeded"
    if d.call("secret.get")["key"] != mine_key:
        pytest.fail("a key issued after the login ended replaced the person's")
    d.call("secret.clear")


# -- links from other apps -------------------------------------------------------------------------------


def test_a_link_opened_from_another_app_cannot_end_the_pending_login(mdaemon, fake_t):
    """A link in mail or chat to ``/api/openrouter/oauth/start?restart=1`` opened while the app's login is
    pending (the browser sends ``Sec-Fetch-Site: none``, as for a typed address): it joins that login, never
    cancels it, and the app's own approval still links.

    Defence: http_app.start_get never restarts; only the POST (from our own origin) or the socket may."""
    d = mdaemon
    sub = subscriber(d, ["openrouter-auth-complete"])
    reply = d.call("oauth.start", {"restart": True})
    for query in ("restart=1", "restart=true", "restart=1&restart=1"):
        r = raw_http(d.port, "GET", f"{START}?{query}", {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})
        assert r.status == 302 and state_of(r.header("Location")) == state_of(reply["auth_url"]), (query, r.dump())
    flow = d.call("status")["flow"]
    assert (flow["session_id"], flow["status"]) == (reply["session_id"], "pending")
    _, page = callback(d.port, query_of(fake_t.approve(reply["auth_url"])), NAVIGATION)
    assert page is not None and "OpenRouter account linked" in page.text
    first = next_event(sub, "openrouter-auth-complete")
    assert first["data"]["session_id"] == reply["session_id"] and first["data"]["success"] is True, first
    sub.close()
    d.call("secret.clear")
