"""Upstream faults: OpenRouter (the fake, or a hostile raw TCP server) misbehaves during the exchange.

Each fault ends the flow with the contract's ``error.code``, a hint a person can act on, a result page
that says the same as the event, and no key stored. The exchange timeout is shortened to 1 s so a
response that never comes is quick to test.
"""

from __future__ import annotations

import html
import re
import socket
import threading
import time

import pytest

from tests.adversarial.harness import HINT_RE, callback, next_event, query_of, state_of, subscriber

DAEMON_ENV = {"CONVOCATIONS_EXCHANGE_TIMEOUT_SECONDS": "1"}


def run_flow(d, approve, code_query: str | None = None):
    """Starts a login, completes it in the 'browser', returns (event data, result page)."""
    sub = subscriber(d, ["openrouter-auth-complete"])
    try:
        reply = d.call("oauth.start", {"restart": True})
        if code_query:  # each code is fresh: a code seen before is refused without an exchange
            query = code_query.format(state=state_of(reply["auth_url"]), n=time.monotonic_ns())
        else:
            query = query_of(approve(reply["auth_url"]))
        _, page = callback(d.port, query)
        ev = next_event(sub, "openrouter-auth-complete", reply["session_id"], timeout=15)
    finally:
        sub.close()
    return ev["data"], page


def page_words(text: str) -> str:
    """What a person reads on an HTML page: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<style>.*?</style>", "", text, flags=re.S)))


def check_failure(d, data, page, code: str, *needles: str) -> None:
    err = data["error"]
    assert data["success"] is False and err["code"] == code, data
    assert err["message"] and err["hint"], err
    assert HINT_RE.search(err["hint"]), err["hint"]
    text = err["message"] + " " + err["hint"]
    for needle in needles:
        assert needle in text, (needle, err)
    assert page is not None and page.status == 400
    shown = page_words(page.text)  # the page says the same as the event
    assert err["message"].replace("`", "") in shown and err["hint"].replace("`", "") in shown, shown
    assert code in shown
    assert d.call("secret.status")["stored"] is False
    assert d.call("status")["flow"]["status"] == "failed"


FAULTS = [
    pytest.param({"exchange_status": 400}, "exchange_failed", ["HTTP 400", "report it"], id="400"),
    pytest.param(
        {"exchange_status": 403, "exchange_message": "Authorization code expired"},
        "exchange_failed",
        ["expired", "10 minutes"],
        id="403-expired",
    ),
    pytest.param({"exchange_status": 403}, "exchange_failed", ["rejected", "convctl oauth start"], id="403-invalid"),
    pytest.param({"exchange_status": 405}, "exchange_failed", ["HTTP 405", "CONVOCATIONS_OPENROUTER_URL"], id="405"),
    pytest.param({"exchange_status": 409}, "app_conflict", ["409", "RCONV_HTTP_PORT"], id="409-at-exchange"),
    pytest.param({"exchange_status": 429}, "exchange_failed", ["HTTP 429"], id="429"),
    pytest.param({"exchange_status": 500}, "exchange_failed", ["HTTP 500", "few minutes"], id="500"),
    pytest.param({"exchange_status": 503}, "exchange_failed", ["HTTP 503"], id="503"),
    pytest.param({"exchange_delay": 4.0}, "upstream_unreachable", ["within 1 s", "network"], id="never-answers"),
    pytest.param({"exchange_not_json": True}, "exchange_failed", ["not JSON"], id="not-json"),
    pytest.param({"exchange_missing_key": True}, "exchange_failed", ["no key"], id="200-without-key"),
    pytest.param({"exchange_key_length": 0}, "exchange_failed", ["empty"], id="empty-key"),
    pytest.param({"exchange_key_length": 5000}, "exchange_failed", ["implausibly long"], id="key-5000-chars"),
    pytest.param({"exchange_key_length": 300_000}, "exchange_failed", ["larger than 64 KiB"], id="key-300k-chars"),
]


@pytest.mark.parametrize("switches, code, needles", FAULTS)
def test_exchange_fault_ends_flow_with_the_right_error(mdaemon, fake_t, switches, code, needles):
    """A faulty exchange answer: flow failed with the right error.code and an actionable hint; the page agrees."""
    fake_t.config.update(switches)
    data, page = run_flow(mdaemon, fake_t.approve)
    check_failure(mdaemon, data, page, code, *needles)
    if code == "app_conflict":
        assert f"port {mdaemon.port}" in data["error"]["hint"]  # the port the daemon really has


def test_409_at_authorize_leaves_the_flow_pending(mdaemon, fake_t):
    """OpenRouter's 409 on the authorize page never reaches us: the login stays pending (no false failure),
    and a later approval still completes it."""
    d = mdaemon
    reply = d.call("oauth.start", {"restart": True})
    fake_t.config.authorize_409 = True
    outcome = fake_t.submit(reply["auth_url"], "approve")
    assert outcome.status == 409
    assert d.call("status")["flow"]["status"] == "pending"
    fake_t.config.authorize_409 = False
    _, page = callback(d.port, query_of(fake_t.approve(reply["auth_url"])))
    assert page is not None and "OpenRouter account linked" in page.text
    d.call("secret.clear")


def test_daemon_survives_every_fault_in_a_row(mdaemon, fake_t):
    """After all the faults above, the same daemon completes a normal login (no stuck exchange, no lost state)."""
    data, page = run_flow(mdaemon, fake_t.approve)
    assert data["success"] is True and "OpenRouter account linked" in page.text
    assert "Traceback" not in mdaemon.log()
    mdaemon.call("secret.clear")


# -- a hostile raw upstream ---------------------------------------------------------------------------


class RawUpstream:
    """A TCP server on 127.0.0.1 that answers every connection according to ``mode``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.mode = "reset"
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.requests.append(conn.recv(65536))
                mode = self.mode
                if mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                elif mode == "garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff\xfe garbage\r\n\r\n")
                elif mode == "endless":
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and not self.stop.is_set():
                        conn.sendall(chunk)
                elif mode == "drip":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
                    for _ in range(30):
                        conn.sendall(b" ")
                        time.sleep(0.2)
                elif mode == "redirect":
                    conn.sendall(
                        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/steal\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
                elif mode == "headers-flood":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * 100_000 + b"\r\n\r\n{}")
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture(scope="module")
def raw_upstream():
    u = RawUpstream()
    yield u
    u.close()


@pytest.fixture(scope="module")
def raw_daemon(raw_upstream, module_tmp):
    from tests.adversarial.harness import kill
    from tests.conftest import start_daemon

    tmp = module_tmp / "raw"
    tmp.mkdir()
    d = start_daemon(tmp, CONVOCATIONS_OPENROUTER_URL=raw_upstream.url, **DAEMON_ENV)
    yield d
    kill(d)


RAW = [
    pytest.param("reset", "upstream_unreachable", ["connection broke"], id="connection-reset"),
    pytest.param("garbage", "upstream_unreachable", ["connection broke"], id="not-http"),
    pytest.param("endless", "exchange_failed", ["larger than 64 KiB"], id="endless-body"),
    pytest.param("drip", "upstream_unreachable", ["within 1 s"], id="byte-a-second"),
    pytest.param("redirect", "exchange_failed", ["HTTP 307"], id="redirect-307"),
    pytest.param("headers-flood", "upstream_unreachable", ["connection broke"], id="100k-header"),
]


@pytest.mark.parametrize("mode, code, needles", RAW)
def test_hostile_upstream(raw_daemon, raw_upstream, mode, code, needles):
    """A raw server that resets, speaks another protocol, streams forever, drips, redirects or floods headers:
    the right error.code, a hint, the page agrees, no key; a redirect is never followed (the code stays here)."""
    raw_upstream.mode = mode
    data, page = run_flow(raw_daemon, None, "code=some-code-{n}&state={state}")
    check_failure(raw_daemon, data, page, code, *needles)
    assert "Traceback" not in raw_daemon.log()


def test_connection_refused(short_tmp):
    """Nothing listens at the OpenRouter URL: upstream_unreachable naming CONVOCATIONS_OPENROUTER_URL; page agrees."""
    from tests.adversarial.harness import kill
    from tests.conftest import dead_url, start_daemon

    d = start_daemon(short_tmp, CONVOCATIONS_OPENROUTER_URL=dead_url())
    try:
        data, page = run_flow(d, None, "code=some-code-{n}&state={state}")
        check_failure(d, data, page, "upstream_unreachable", "refused", "CONVOCATIONS_OPENROUTER_URL")
    finally:
        kill(d)
