"""The checks every request to the loopback HTTP door passes (daemon/http_app.py): the HTTP version, the Host
allow-list, the same-user check, the security headers, and on the routes that change state the same-site and
navigation checks. In-process, against the real aiohttp server on a real loopback socket and a real
Controller, so that each case costs milliseconds; tests/adversarial/test_web_attacks.py runs the same attacks
against the daemon process, and test_local_users.py with a real second uid.

Where this process cannot be what a case needs, the one fact is given by hand and the test says so: the uid
the kernel names for a connection (another user's needs root), and a transport that has gone.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from convocationsd.common import proc_net
from convocationsd.core import events
from convocationsd.daemon import http_app, pages
from convocationsd.daemon.controller import Controller, Endpoint
from convocationsd.testing.ports import free_port
from tests.secretstore_contract import MemoryStore

START = http_app.START
CALLBACK = http_app.CALLBACK
ELSEWHERE = 4242 if os.getuid() != 4242 else 4243  # a uid that is neither ours nor root's


class Served:
    def __init__(self, ctl: Controller, port: int) -> None:
        self.ctl, self.port = ctl, port

    async def raw(self, request: bytes, host: str = "127.0.0.1") -> tuple[str, dict[str, str], bytes]:
        """Sends ``request`` as it is and reads to the end: (status line, headers, body)."""
        reader, writer = await asyncio.open_connection(host, self.port)
        try:
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        return status, {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}, body

    async def get(
        self, path: str, headers: dict[str, str] | None = None, *, method: str = "GET", target: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """A request with ``Host: localhost:<port>`` unless ``headers`` gives another (None: no Host at all)."""
        given = {"Host": f"localhost:{self.port}", **(headers or {})}
        lines = [f"{method} {target or path} HTTP/1.1", *(f"{k}: {v}" for k, v in given.items() if v is not None)]
        lines += ["Content-Length: 0", "Connection: close"] if method == "POST" else ["Connection: close"]
        status, head, body = await self.raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return int(status.split()[1]), head, body


def bare_controller(port: int) -> Controller:
    """A controller behind the HTTP door alone: no socket, and an OpenRouter it never asks (no code is
    exchanged in these tests)."""
    return Controller(
        endpoint=Endpoint(port, False, "/nonexistent/convocationsd.sock"),
        openrouter_url="http://127.0.0.1:9",
        openrouter=None,
        secrets=MemoryStore(),
        bus=events.EventBus(),
        flow_timeout=600.0,
    )


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    port = free_port()
    ctl = bare_controller(port)
    runner = web.AppRunner(http_app.make_app(ctl))
    await runner.setup()
    sites = [web.TCPSite(runner, "127.0.0.1", port), web.TCPSite(runner, "::1", port)]
    for site in sites:
        await site.start()
    try:
        yield Served(ctl, port)
    finally:
        ctl.cancel(force=True)
        await runner.cleanup()


# -- the HTTP version ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
async def test_another_http_version_gets_505_as_http_11(served, version):
    status, headers, body = await served.raw(
        f"GET /api/status {version}\r\nHost: localhost:{served.port}\r\n\r\n".encode()
    )
    assert status == "HTTP/1.1 505 HTTP Version Not Supported" and headers["x-frame-options"] == "DENY"
    assert body == b"This server speaks HTTP/1.1.\n"


async def test_http_10_and_11_are_served(served):
    status, _, body = await served.raw(f"GET /api/status HTTP/1.0\r\nHost: localhost:{served.port}\r\n\r\n".encode())
    assert status == "HTTP/1.0 200 OK" and b'"port": %d' % served.port in body
    assert (await served.get("/api/status"))[0] == 200


# -- Host ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LocalHost"])
async def test_our_names_with_our_port_are_served(served, name):
    assert (await served.get("/api/status", {"Host": f"{name}:{served.port}"}))[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "localhost", "localhost:1", "localhost.evil:{port}", ""])
async def test_any_other_host_is_refused_and_starts_nothing(served, host):
    headers = {"Host": host.format(port=served.port), "Sec-Fetch-Site": "none"}
    status, _, body = await served.get(START, headers)
    assert status == 403 and b"only served as localhost" in body
    assert served.ctl.flows.pending is None


async def test_a_request_without_host_is_refused(served):
    """HTTP/1.0 may leave Host out (HTTP/1.1 may not: aiohttp answers 400 before any of our code runs)."""
    status, _, _ = await served.raw(b"GET /api/status HTTP/1.0\r\n\r\n")
    assert status.split()[1] == "403"


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("http://localhost:{port}/api/status", 200),
        ("HTTP://LOCALHOST:{port}/api/status", 200),
        ("http://evil.example/api/status", 403),
        ("http://evil.example:{port}/api/status", 403),
        ("https://localhost:{port}/api/status", 403),
        ("http://localhost:1/api/status", 403),
    ],
)
async def test_an_absolute_form_target_must_name_us_too(served, target, code):
    assert (await served.get("/api/status", target=target.format(port=served.port)))[0] == code


# -- the same user ---------------------------------------------------------------------------------------


async def test_our_own_connections_are_served_on_both_loopback_addresses(served):
    for host in ("127.0.0.1", "::1"):
        status, _, _ = await served.raw(
            f"GET /api/status HTTP/1.1\r\nHost: localhost:{served.port}\r\nConnection: close\r\n\r\n".encode(), host
        )
        assert status == "HTTP/1.1 200 OK"


@pytest.mark.parametrize("uid", [ELSEWHERE, None], ids=["another-uid", "closed-or-ownerless"])
async def test_a_connection_the_kernel_does_not_name_as_ours_is_refused(served, monkeypatch, caplog, uid):
    """Given by hand: the uid the kernel names for the connection (a real second user is test_local_users')."""
    monkeypatch.setattr(http_app, "CHECK_PEER_UID", True)
    monkeypatch.setattr(proc_net, "connection_uid", lambda peer, local: uid)
    caplog.set_level(logging.WARNING, logger=http_app.__name__)
    status, _, body = await served.get(START, {"Sec-Fetch-Site": "none"})
    assert status == 403 and b"serves only the user it runs as" in body
    assert served.ctl.flows.pending is None
    refusals = [r for r in caplog.records if r.name == http_app.__name__ and "refused an HTTP request" in r.message]
    assert refusals and all(r.levelno == logging.WARNING for r in refusals)
    # The log says which: the uid the kernel named, or that it named none.
    assert all((str(ELSEWHERE) in r.message) if uid else ("closed or ownerless" in r.message) for r in refusals)


async def test_without_the_kernels_tables_the_uid_is_not_checked(served, monkeypatch):
    monkeypatch.setattr(http_app, "CHECK_PEER_UID", False)
    monkeypatch.setattr(proc_net, "connection_uid", lambda peer, local: ELSEWHERE)
    assert (await served.get("/api/status"))[0] == 200


async def test_a_connection_with_no_ip_address_is_refused(short_tmp):
    """Over a Unix socket there is no TCP connection for the kernel to name an owner of: refused."""
    ctl = bare_controller(3000)
    runner = web.AppRunner(http_app.make_app(ctl))
    await runner.setup()
    path = str(short_tmp / "http.sock")
    await web.UnixSite(runner, path).start()
    try:
        connector = aiohttp.UnixConnector(path=path)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://localhost:3000/api/status") as r,
        ):
            assert r.status == (403 if http_app.CHECK_PEER_UID else 200)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "transport",
    [
        None,  # the connection has gone
        SimpleNamespace(get_extra_info={"peername": ("127.0.0.1", 5), "sockname": None}.get),
        SimpleNamespace(get_extra_info={"peername": None, "sockname": ("127.0.0.1", 6)}.get),
    ],
    ids=["gone", "no-local-address", "no-peer-address"],
)
def test_a_request_whose_ends_cannot_be_named_is_refused(monkeypatch, transport):
    """Cases the server does not produce on demand, given by hand."""
    monkeypatch.setattr(http_app, "CHECK_PEER_UID", True)
    monkeypatch.setattr(proc_net, "connection_uid", lambda peer, local: os.getuid())
    assert http_app._same_user(SimpleNamespace(transport=transport)) is False  # type: ignore[arg-type]


def test_the_uid_check_is_on_where_linux_lists_connections(monkeypatch):
    """Decided when the module loads: on Linux with /proc/net/tcp, and nowhere else."""
    cases = [("linux", True, True), ("linux", False, False), ("darwin", False, False), ("freebsd14", True, False)]
    try:
        for platform, listed, expected in cases:
            monkeypatch.setattr(sys, "platform", platform)
            monkeypatch.setattr(proc_net, "available", lambda listed=listed: listed)
            assert importlib.reload(http_app).CHECK_PEER_UID is expected, (platform, listed)
    finally:
        monkeypatch.undo()
        importlib.reload(http_app)


# -- what every answer carries ---------------------------------------------------------------------------


async def test_every_answer_carries_the_security_headers_and_html_its_csp(served):
    answers = {
        "json": await served.get("/api/status"),
        "refused": await served.get("/api/status", {"Host": "evil.example"}),
        "redirect": await served.get(START, {"Sec-Fetch-Site": "none"}),
        "html": await served.get("/api/openrouter/oauth/result/nope"),
    }
    assert [answers[k][0] for k in answers] == [200, 403, 302, 404]
    for name, (_, headers, _) in answers.items():
        for header, value in http_app.SECURITY_HEADERS.items():
            assert headers[header.lower()] == value, (name, header)
        assert not any(h.startswith("access-control-") for h in headers), name
    assert answers["html"][1]["content-security-policy"] == pages.CSP
    assert "content-security-policy" not in answers["json"][1]  # it governs documents; JSON is none


async def test_every_request_counts_as_activity_refused_or_not(served):
    """The idle exit waits for quiet: a request, even one that is refused, is not quiet."""
    for headers in ({}, {"Host": "evil.example"}):
        served.ctl.last_activity = 0.0
        await served.get("/api/status", headers)
        assert served.ctl.last_activity > 0.0


# -- who may start a login -------------------------------------------------------------------------------


SITES = [
    # (Sec-Fetch-Site, Origin, method, allowed): a typed URL or our own page may; anything else may not
    ("none", None, "GET", True),
    ("same-origin", None, "POST", True),
    ("same-origin", "ours", "POST", True),
    ("same-origin", "null", "POST", True),  # a form on our page, which sends no referrer
    (None, "ours", "GET", True),  # a browser without fetch metadata: its Origin vouches
    (None, "ours", "POST", True),
    (None, None, "GET", False),
    (None, None, "POST", False),
    (None, "http://evil.example", "POST", False),
    (None, "null", "POST", False),
    ("none", None, "POST", False),
    ("none", "http://evil.example", "GET", False),
    ("none", "null", "GET", False),
    ("same-site", None, "GET", False),
    ("same-site", None, "POST", False),
    ("cross-site", None, "GET", False),
    ("cross-site", "null", "POST", False),
    ("same-origin", "http://evil.example", "POST", False),
    ("same-origin", "http://localhost:1", "POST", False),
]


@pytest.mark.parametrize(("site", "origin", "method", "allowed"), SITES)
async def test_only_a_typed_url_or_our_own_page_starts_a_login(served, site, origin, method, allowed):
    headers = {"Sec-Fetch-Site": site, "Origin": f"http://localhost:{served.port}" if origin == "ours" else origin}
    status, _, _ = await served.get(START, headers, method=method)
    assert status == ({"GET": 302, "POST": 200}[method] if allowed else 403)
    assert (served.ctl.flows.pending is not None) is allowed


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]"])
async def test_each_of_our_origins_vouches(served, name):
    status, _, _ = await served.get(START, {"Origin": f"http://{name}:{served.port}"}, method="POST")
    assert status == 200


# -- callbacks only as page loads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "mode", "allowed"),
    [
        (None, None, True),  # curl, an older browser
        ("document", "navigate", True),
        ("document", None, True),
        (None, "navigate", True),
        ("image", "no-cors", False),
        ("iframe", "navigate", False),
        ("document", "cors", False),
        ("script", None, False),
        (None, "no-cors", False),
    ],
)
async def test_a_callback_is_taken_only_as_a_page_load(served, dest, mode, allowed):
    status, headers, _ = await served.get(CALLBACK, {"Sec-Fetch-Dest": dest, "Sec-Fetch-Mode": mode})
    assert status == (303 if allowed else 403)
    if allowed:
        assert headers["location"].startswith("/api/openrouter/oauth/result/")
