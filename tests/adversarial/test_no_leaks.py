"""Secrets never leak: one run through the scenarios of this suite with recognisable keys, then a search of
everything the daemon and its clients produced.

The fake issues keys that start with ``sk-or-v1-LEAKCANARY`` and records every code and PKCE verifier it
is sent. The test fails if any of them appears in a log line (debug level), an event, an HTTP answer
(status, headers, body), an IPC reply other than ``secret.get``, a convctl output, an exception's text, or
any file under the config and runtime dirs (the encrypted blob is base64 ciphertext, so a plaintext search
is meaningful there too).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time

from convocationsd.core.errors import ConvError
from convocationsd.testing.fake_openrouter import FakeOpenRouter, _IssuedKey
from tests.adversarial.harness import FakeThread, callback, kill, query_of, raw_http, state_of, subscriber


class CanaryFake(FakeOpenRouter):
    """Issues recognisable keys and remembers every code and verifier it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_codes: list[str] = []
        self.seen_verifiers: list[str] = []
        self.n = 0

    def issue_key(self, label: str = "Convocations", limit: float | None = None) -> str:
        self.n += 1
        key = f"sk-or-v1-LEAKCANARY{self.n:02d}" + "f" * 40
        self._keys[key] = _IssuedKey(label, limit)
        return key

    async def _exchange(self, request):
        try:
            payload = json.loads(await request.read())
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            self.seen_codes.append(str(payload.get("code")))
            self.seen_verifiers.append(str(payload.get("code_verifier")))
        return await super()._exchange(request)


def test_no_secret_in_any_output(daemon_factory, request):
    """Successful login, replayed code, upstream failure, storage failure, manual set, bad key, a key OpenRouter
    refuses, `convctl exec`, status on every door, SIGHUP, kill -9 mid-exchange and restart, SIGTERM: no key, code or
    verifier in any output but secret.get."""
    fake = FakeThread(CanaryFake())
    request.addfinalizer(fake.close)
    canary: CanaryFake = fake.fake  # type: ignore[assignment]
    seen: list[tuple[str, str]] = []  # (where, text)

    def keep(where: str, value) -> None:
        seen.append((where, value if isinstance(value, str) else json.dumps(value)))

    def ipc(d, method, params=None):
        try:
            result = d.call(method, params)
        except ConvError as e:
            keep(f"ipc-error {method}", f"{e} {e!r}")
            return None
        if method != "secret.get":
            keep(f"ipc {method}", result)
        return result

    def http(d, where, *args, **kw):
        r = raw_http(d.port, *args, **kw)
        keep(f"http {where}", r.dump())
        return r

    def browse(d, query):
        first, page = callback(d.port, query)
        keep("http callback", first.dump())
        if page is not None:
            keep("http result", page.dump())
        return page

    d = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake.url)
    sub = subscriber(d)
    daemons = [d]

    # 1. a successful login through convctl, watched by a subscriber
    proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    line = ""
    while "/auth?" not in line:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
    location = fake.approve(line.strip())
    page = browse(d, query_of(location))
    assert "OpenRouter account linked" in page.text
    out, err = proc.communicate(timeout=20)
    keep("convctl oauth start", out + err)
    key1 = ipc(d, "secret.get")["key"]
    assert key1.startswith("sk-or-v1-LEAKCANARY")

    # 2. status on every door, and the replayed code
    ipc(d, "status")
    ipc(d, "secret.status")
    http(d, "status", "GET", "/api/status")
    http(d, "index", "GET", "/", {"Accept": "text/html"})
    browse(d, query_of(location))
    for args in (("status", "--json"), ("status",), ("secret", "status", "--json")):
        done = d.convctl(*args)
        keep("convctl " + " ".join(args), done.stdout + done.stderr)

    # 3. an upstream failure, and a code for another verifier
    fake.config.exchange_status = 500
    reply = ipc(d, "oauth.start", {"restart": True})
    browse(d, query_of(fake.approve(reply["auth_url"])))
    fake.config.exchange_status = None
    reply = ipc(d, "oauth.start", {"restart": True})
    foreign = canary.issue_code("someone-elses-challenge-" + "x" * 30)
    browse(d, f"code={foreign}")
    browse(d, f"code={foreign}&state={state_of(reply['auth_url'])}")

    # 4. a key OpenRouter issued but we could not store (loose secret.key)
    key_file = d.config_dir / "secret.key"
    os.chmod(key_file, 0o644)
    reply = ipc(d, "oauth.start", {"restart": True})
    page = browse(d, query_of(fake.approve(reply["auth_url"])))
    assert "could not be saved" in page.text
    os.chmod(key_file, 0o600)

    # 5. keys typed by a person: a good one through convctl, bad ones over IPC
    manual = canary.issue_key()  # convctl checks it with OpenRouter first
    done = d.convctl("secret", "set-openrouter-key", input=manual + "\n")
    keep("convctl secret set", done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr
    bad_keys = ["sk-or-v1-LEAKCANARY BAD with spaces", "LEAKCANARYNOPREFIX" + "x" * 30, "sk-" + "LEAKCANARYLONG" * 100]
    for bad in bad_keys:
        ipc(d, "secret.set", {"key": bad})
        done = d.convctl("secret", "set-openrouter-key", input=bad + "\n")
        keep("convctl secret set (bad)", done.stdout + done.stderr)
    assert ipc(d, "secret.get")["key"] == manual
    rejected = "sk-or-v1-LEAKCANARYREJECTED" + "e" * 40  # never issued: OpenRouter refuses it
    done = d.convctl("secret", "set-openrouter-key", input=rejected + "\n")
    keep("convctl secret set (rejected)", done.stdout + done.stderr)
    assert done.returncode == 1
    done = d.convctl("exec", "--", sys.executable, "-c", "import os; assert os.environ['OPENROUTER_API_KEY']")
    keep("convctl exec", done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr

    # 6. SIGHUP, then kill -9 in the middle of an exchange, restart, SIGTERM
    d.proc.send_signal(signal.SIGHUP)
    fake.config.exchange_delay = 5.0
    reply = ipc(d, "oauth.start", {"restart": True})
    loc = fake.approve(reply["auth_url"])
    threading.Thread(target=lambda: _quiet(callback, d.port, query_of(loc)), daemon=True).start()
    deadline = time.monotonic() + 10
    while d.call("status")["flow"]["status"] != "exchanging" and time.monotonic() < deadline:
        time.sleep(0.02)
    while (ev := sub.next_event(0.2)) is not None:
        keep("event", ev)
    sub.close()
    kill(d)
    fake.config.exchange_delay = 0.0
    d2 = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake.url)
    daemons.append(d2)
    assert ipc(d2, "secret.get")["key"] == manual
    ipc(d2, "status")
    d2.stop(signal.SIGTERM)

    # -- search everything ------------------------------------------------------------------------------
    for dd in daemons:
        keep(f"daemon log {dd.log_path.name}", dd.log())
        keep("convctl outputs", "\n".join(dd.extra_outputs))
    for root in {d.config_dir, d.socket.parent}:
        for p in root.rglob("*"):
            if p.is_file():
                keep(f"file {p}", p.read_bytes().decode("latin-1"))

    secrets = {("issued key", k) for k in canary.issued_keys} | {("manual key", manual)}
    secrets |= {("bad key", k) for k in [*bad_keys, rejected]}
    secrets |= {("code", c) for c in canary.seen_codes if c and c != "None"}
    secrets |= {("verifier", v) for v in canary.seen_verifiers if v and v != "None"}
    assert (
        len([s for s in secrets if s[0] == "issued key"]) >= 2 and len([s for s in secrets if s[0] == "verifier"]) >= 4
    )
    leaks = [(kind, where) for kind, secret in secrets for where, text in seen if secret in text]
    assert not leaks, f"secrets leaked: {leaks}"
    # and the ciphertext really is there, encrypted
    cfg = (d.config_dir / "config.toml").read_text()
    assert "ciphertext" in cfg and "LEAKCANARY" not in cfg


def _quiet(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET: a redirect to ``target`` when the server has one, else key info; records the headers."""

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers))  # type: ignore[attr-defined]
        target = self.server.target  # type: ignore[attr-defined]
        if target:
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.end_headers()
        else:
            body = b'{"data": {"label": "elsewhere"}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _http_server(target: str | None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen, server.target = [], target  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_key_being_checked_never_follows_a_redirect(daemon_factory, short_tmp):
    """The OpenRouter address answers the key check with a redirect to another server: neither convctl (no daemon)
    nor the daemon sends the key there; the key is stored unchecked, with a note.

    Defence: the key check does not follow redirects (urllib in convctl, aiohttp in the daemon)."""
    from tests.conftest import base_env, convctl

    elsewhere, elsewhere_url = _http_server(None)
    redirector, redirector_url = _http_server(elsewhere_url)
    try:
        key = "sk-or-v1-LEAKCANARYREDIRECT" + "a" * 40
        env = base_env(short_tmp / "alone", CONVOCATIONS_OPENROUTER_URL=redirector_url)
        done = convctl(env, "secret", "set-openrouter-key", input=key + "\n")
        assert done.returncode == 0 and "answered HTTP 302" in done.stderr, done.stderr
        d = daemon_factory(CONVOCATIONS_OPENROUTER_URL=redirector_url)
        via_daemon = d.convctl("secret", "set-openrouter-key", input=key + "\n")
        assert via_daemon.returncode == 0 and "not checked" in via_daemon.stdout, via_daemon.stderr
        # convctl's check, the daemon's, and the daemon's account refresh all asked the address they were given
        asked = [h.get("Authorization") == f"Bearer {key}" for h in redirector.seen]
        assert len(asked) >= 2 and all(asked)
        assert not elsewhere.seen, "the key followed a redirect to another server"
        assert key not in done.stdout + done.stderr + via_daemon.stdout + via_daemon.stderr + d.log()
    finally:
        redirector.shutdown()
        elsewhere.shutdown()
