"""Bad input on every door: HTTP (headers, bodies, query strings, garbage), the JSON-RPC socket (long
lines, invalid UTF-8, deep nesting, wrong types for every parameter, half-written lines, idle crowds,
generated lines) and config.toml.

The daemon must answer with a clear error or close that one connection: never crash, never log a
traceback, never grow without bound.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convocationsd.core import protocol
from tests.adversarial.harness import assert_healthy, open_fds, raw_http, rss_kib, send_raw
from tests.conftest import wait_until

START = "/api/openrouter/oauth/start"
CB = "/api/openrouter/oauth/callback"


def _line(d, line: bytes, timeout: float = 10.0) -> tuple[list[dict], bool]:
    """Sends one line on a fresh connection; returns (replies, closed by the daemon)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(d.socket))
    try:
        s.sendall(line)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        return _read_all(s, timeout)
    finally:
        s.close()


def _read_all(s: socket.socket, timeout: float, until_id=None) -> tuple[list[dict], bool]:
    buf, replies, closed = b"", [], False
    deadline = time.monotonic() + timeout
    s.settimeout(0.3)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            if replies and until_id is None:
                break
            continue
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            reply = json.loads(line)
            replies.extend(reply if isinstance(reply, list) else [reply])  # a batch's answers, one by one
        if until_id is not None and any(r.get("id") == until_id for r in replies):
            break
    return replies, closed


# -- HTTP ---------------------------------------------------------------------------------------------


def test_oversized_header_is_4xx(mdaemon):
    """One 64 KiB header: 4xx, daemon alive."""
    d = mdaemon
    r = raw_http(d.port, "GET", "/api/status", {"X-Big": "a" * 65536})
    assert 400 <= r.status < 500, r.dump()[:300]
    assert_healthy(d)


def test_ten_thousand_headers_are_4xx(mdaemon):
    """10,000 small headers (about 150 KiB): 4xx, daemon alive."""
    d = mdaemon
    r = raw_http(d.port, "GET", "/api/status", [(f"X-H{i}", "v") for i in range(10_000)])
    assert 400 <= r.status < 500, r.dump()[:300]
    assert_healthy(d)


def test_oversized_query_string_is_4xx(mdaemon):
    """A 200 KiB query string on the callback: 4xx before any route runs; no flow touched."""
    d = mdaemon
    d.call("oauth.start", {"restart": True})
    r = raw_http(d.port, "GET", "/api/openrouter/oauth/callback?code=" + "A" * 200_000 + "&state=x")
    assert 400 <= r.status < 500, r.dump()[:300]
    assert d.call("status")["flow"]["status"] == "pending"
    assert_healthy(d)


def test_long_but_legal_code_is_only_ignored(mdaemon):
    """A 6 KiB code with a wrong state fits the request line: an ordinary 'ignored' page, nothing exchanged."""
    d = mdaemon
    d.call("oauth.start", {"restart": True})
    r = raw_http(d.port, "GET", "/api/openrouter/oauth/callback?code=" + "A" * 6000 + "&state=x")
    assert r.status == 303
    assert d.call("status")["flow"]["status"] == "pending"


@pytest.mark.parametrize("size", [17 * 1024, 2 * 1024 * 1024], ids=["17KiB", "2MiB"])
def test_oversized_body_is_413_and_starts_nothing(mdaemon, size):
    """A POST start body over the 16 KiB limit: 413, no flow started, daemon alive."""
    d = mdaemon
    origin = f"http://localhost:{d.port}"
    body = b'{"restart": true, "pad": "' + b"x" * size + b'"}'
    r = raw_http(d.port, "POST", START, {"Origin": origin, "Content-Type": "application/json"}, body)
    assert r.status == 413, r.dump()[:300]
    assert d.call("status")["flow"] is None or d.call("status")["flow"]["status"] != "pending"
    assert_healthy(d)


def test_body_longer_than_announced_and_lying_lengths(mdaemon):
    """Content-Length lies (too small, negative, huge with no body) and chunked garbage: 4xx or an orderly close."""
    d = mdaemon
    origin = f"http://localhost:{d.port}"
    base = f"POST {START} HTTP/1.1\r\nHost: localhost:{d.port}\r\nOrigin: {origin}\r\nConnection: close\r\n"
    for extra in (
        "Content-Length: -1\r\n\r\n{}",
        "Content-Length: 99999999999999999999\r\n\r\n{}",
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ):
        try:
            r = raw_http(d.port, raw=(base + extra).encode(), timeout=5)
        except TimeoutError:
            pytest.fail(f"no answer to {extra!r}")
        assert r.status == 0 or 400 <= r.status < 500, (extra, r.dump()[:300])
    assert_healthy(d)


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b"[]", b'{"restart": "yes"}', b"{" * 5000, b'"x"', b"null"],
    ids=["bad-utf8", "array", "wrong-type", "deep", "string", "null"],
)
def test_malformed_post_bodies_are_400(mdaemon, body):
    """Bodies that are not {"restart": bool}: 400 with a clear message, no flow started."""
    d = mdaemon
    r = raw_http(
        d.port, "POST", START, {"Origin": f"http://localhost:{d.port}", "Content-Type": "application/json"}, body
    )
    assert (r.status == 400 and "restart" in r.text) or "JSON object" in r.text, r.dump()[:300]
    flow = d.call("status")["flow"]
    assert flow is None or flow["status"] != "pending"


def test_garbage_request_lines(mdaemon):
    """Binary garbage, invalid UTF-8 in the path, a 100 KiB path, a bogus HTTP version: 4xx, daemon alive."""
    d = mdaemon
    for raw in (
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % d.port,
        b"GET " + b"/" * 100_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /api/status HTTP/9.9\r\nHost: localhost:%d\r\n\r\n" % d.port,
    ):
        r = raw_http(d.port, raw=raw, timeout=5)
        assert r.status == 0 or (400 <= r.status < 600 and r.status != 500), (raw[:40], r.dump()[:300])
    assert_healthy(d)


# -- JSON-RPC lines -----------------------------------------------------------------------------------


def test_line_over_one_mib_closes_that_connection_only(mdaemon):
    """A 1 MiB + 1 line (with and without newline): an error, the connection closed; others keep working.

    Defence: ipc_server.Connection's MAX_LINE check."""
    d = mdaemon
    with d.client() as bystander:
        bystander.call("status")
        for tail in (b"\n", b""):
            payload = b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"pad":"' + b"x" * protocol.MAX_LINE + b'"}}'
            replies, closed = _line(d, payload + tail)
            assert closed, "the daemon kept a connection that sent more than 1 MiB"
            assert replies and replies[0]["error"]["code"] == protocol.INVALID_REQUEST
        assert bystander.call("status")["pid"] == d.proc.pid
    assert_healthy(d)


def test_endless_line_without_newline_is_cut_off_early(mdaemon):
    """A client streaming 8 MiB with no newline is disconnected after about 1 MiB (memory stays bounded)."""
    d = mdaemon
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(d.socket))
    s.settimeout(10)
    sent = 0
    chunk = b"x" * 65536
    try:
        while sent < 8 * 1024 * 1024:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert sent < 4 * 1024 * 1024, f"the daemon read {sent} bytes of one line before closing"
    assert_healthy(d)


@pytest.mark.parametrize(
    "line",
    [
        b"\xff\n",
        b"\xc0\xaf\n",
        b'{"jsonrpc":"2.0","id":1,"method":"st\xe9tus"}\n',
        b"\xed\xa0\x80\n",
        b'{"jsonrpc":"2.0","id":1,"method":"status"}\x00\n',
        b"\x00\x00\x00\n",
    ],
    ids=["ff", "overlong", "latin1", "surrogate", "nul-after", "nuls"],
)
def test_invalid_utf8_lines_get_parse_errors(mdaemon, line):
    """Bytes that are not UTF-8 (overlong, surrogates, Latin-1): -32700, connection still usable."""
    d = mdaemon
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(d.socket))
    s.sendall(line + b'{"jsonrpc":"2.0","id":"after","method":"status"}\n')
    replies, _closed = _read_all(s, 5, until_id="after")
    s.close()
    assert replies[0]["error"]["code"] == protocol.PARSE_ERROR
    assert replies[-1]["id"] == "after" and "result" in replies[-1]


@pytest.mark.parametrize("depth", [1000, 100_000, 400_000])
def test_deeply_nested_json(mdaemon, depth):
    """Nesting 1k-400k deep, as the line and inside params: a JSON-RPC error, never a crash."""
    d = mdaemon
    lines = [
        b"[" * depth + b"]" * depth,
        b'{"jsonrpc":"2.0","id":7,"method":"subscribe","params":{"events":' + b"[" * depth + b"]" * depth + b"}}",
        b'{"jsonrpc":"2.0","id":8,"method":"status","params":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}",
    ]
    for line in lines:
        if len(line) > protocol.MAX_LINE:
            continue
        replies, _closed = _line(d, line + b"\n")
        assert replies and "error" in replies[0], replies
        assert replies[0]["error"]["code"] in (protocol.PARSE_ERROR, protocol.INVALID_PARAMS, protocol.INVALID_REQUEST)
    assert_healthy(d)


# null is not here: an optional param given as null is one left out (docs/protocol.md).
WRONG = {
    bool: ["yes", 1, 0, 1.5, [], {}, [True]],
    str: [1, True, [], {}, ["x"], 2.5],
    list: ["openrouter-auth-complete", 1, True, {}, [1], [None], [["x"]], ["no-such-event"]],
}


def _wrong_type_cases():
    for method, spec in protocol.METHODS.items():
        for name, (types, _) in spec.items():
            for value in WRONG[types[0]]:
                yield method, {name: value}
        yield method, {"not_a_param": 1}
        for params in ([1], ["x", True], "x", 3, True):  # positional params are refused, [] is no params
            yield method, params
        if any(required for _, required in spec.values()):
            yield method, {}


def test_wrong_types_for_every_param_of_every_method(mdaemon):
    """Every method x every param x wrong-typed values (and unknown params, positional params, missing required):
    -32602 each; params that are not structured (a string, a number, a boolean): -32600, the request is
    invalid; all on one connection that stays usable; nothing started, stored or cleared."""
    d = mdaemon
    d.call("secret.set", {"key": "sk-or-v1-" + "1" * 64})
    cases = list(_wrong_type_cases())
    with d.client() as c:
        assert c.call("status")["flow"] is None or c.call("status")["flow"]["status"] != "pending"
        sock = c._sock
        for i, (method, params) in enumerate(cases):
            sock.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode() + b"\n")
        got = {}
        buf = b""
        deadline = time.monotonic() + 20
        while len(got) < len(cases) and time.monotonic() < deadline:
            buf += sock.recv(65536)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                got[msg["id"]] = msg
        for i, (method, params) in enumerate(cases):
            assert "error" in got[i], (method, params, got[i])
            structured = params is None or isinstance(params, (dict, list))
            want = protocol.INVALID_PARAMS if structured else protocol.INVALID_REQUEST
            assert got[i]["error"]["code"] == want, (method, params, got[i])
        assert c.call("status")["pid"] == d.proc.pid
    assert d.call("secret.get") == {"key": "sk-or-v1-" + "1" * 64}
    flow = d.call("status")["flow"]
    assert flow is None or flow["status"] != "pending"
    assert_healthy(d)
    d.call("secret.clear")


@pytest.mark.parametrize(
    "value",
    [" ", "not-a-key", "sk-" + "x" * 5000, "sk-or-v1-abc\ndef", "sk-or-\u00e9"],
    ids=["blank", "no-prefix", "5000-chars", "newline", "non-ascii"],
)
def test_secret_set_rejects_implausible_keys(mdaemon, value):
    """secret.set with well-typed but implausible keys: a -32000 error with a hint; nothing stored."""
    from convocationsd.core.errors import RemoteError

    d = mdaemon
    with pytest.raises(RemoteError) as info:
        d.call("secret.set", {"key": value})
    assert info.value.code == protocol.OPERATION_FAILED and info.value.hint
    assert d.call("secret.status")["stored"] is False


def test_half_written_lines_then_disconnect(mdaemon):
    """300 clients each send half a request (a secret.set or an oauth.start cut before its last brace) and
    hang up: nothing runs, nothing stored, no descriptor leaks. (A whole request without its newline is a
    line that the end of input ends: it runs, as docs/protocol.md says.)"""
    d = mdaemon
    fds = open_fds(d.proc.pid)
    halves = [
        b'{"jsonrpc":"2.0","id":1,"meth',
        b'{"jsonrpc":"2.0","id":1,"method":"secret.set","params":{"key":"sk-or-v1-half"}',
        b'{"jsonrpc":"2.0","id":1,"method":"oauth.start"',
        b"\xe2\x82",
    ]
    for i in range(300):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(d.socket))
        s.sendall(halves[i % len(halves)])
        if i % 2:
            s.shutdown(socket.SHUT_WR)  # half-close: the daemon sees EOF mid-line
        s.close()
    # Once every connection is closed on the daemon's side, it has seen each one end: whatever it would have
    # run, it ran.
    wait_until(lambda: open_fds(d.proc.pid) <= fds + 2, "the daemon to close the 300 connections")
    assert d.call("secret.status")["stored"] is False
    flow = d.call("status")["flow"]
    assert flow is None or flow["status"] != "pending"
    assert_healthy(d)


def _connect_unix(path) -> socket.socket:
    """connect() that waits out a full listen backlog (EAGAIN) instead of failing."""
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:
            s.close()
            time.sleep(0.01)
    raise TimeoutError("the daemon's listen backlog stayed full")


def _raise_nofile(n: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def test_two_thousand_idle_connections(daemon_factory):
    """2000 idle socket clients + 300 idle HTTP clients: the daemon still answers status, RSS grows < 40 MiB,
    and every descriptor is released afterwards, with the daemon started under systemd's default soft limit
    of 1024 open files.

    Defence: daemon.main.raise_open_file_limit (and http_app.IDLE_TIMEOUT for the HTTP crowd)."""
    _raise_nofile(4096)
    d = daemon_factory(nofile=1024)
    pid = d.proc.pid
    rss0, fds0 = rss_kib(pid), open_fds(pid)
    probe = d.client(timeout=10)  # opened before the crowd
    probe.call("status")
    held: list[socket.socket] = []
    deadline = time.monotonic() + 30
    try:
        for _ in range(2000):
            held.append(_connect_unix(d.socket))
            if time.monotonic() > deadline:
                break
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            held.append(s)
        time.sleep(0.5)
        assert probe.call("status")["pid"] == pid
        with _connect_unix(d.socket) as fresh:  # and a newcomer is still accepted
            fresh.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
            assert b'"result"' in fresh.recv(65536)
        r = raw_http(d.port, "GET", "/api/status", timeout=10)
        assert r.status == 200
        grown = rss_kib(pid) - rss0
        assert grown < 40 * 1024, f"RSS grew by {grown} KiB with {len(held)} idle connections"
    finally:
        probe.close()
        for s in held:
            s.close()
    time.sleep(0.5)
    deadline = time.monotonic() + 10
    while open_fds(pid) > fds0 + 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(pid) <= fds0 + 4
    assert_healthy(d)


# -- numbers that are not JSON ------------------------------------------------------------------------


def _strict(line: bytes):
    def refuse(name: str):
        raise AssertionError(f"{name} in a line from the daemon: {line[:200]!r}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":1e999,"method":"oauth.cancel"}',
        b'{"jsonrpc":"2.0","id":-1e999,"method":"status"}',
        b'{"jsonrpc":"2.0","id":NaN,"method":"status"}',
        b'{"jsonrpc":"2.0","id":-Infinity,"method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"oauth.cancel","params":{"session_id":1e999}}',
        b'{"jsonrpc":"2.0","id":"x","method":"status","extra":[{"n":123e456}]}',
        b'[{"jsonrpc":"2.0","id":1,"method":"status"},{"jsonrpc":"2.0","id":1e999,"method":"status"}]',
        b'{"jsonrpc":"2.0","method":"oauth.cancel","id":2.5e308}',
    ],
    ids=["id-1e999", "id--1e999", "id-NaN", "id--Infinity", "param", "extra-member", "batch", "id-2.5e308"],
)
def test_numbers_beyond_json_get_a_json_reply(mdaemon, line):
    """A request with 1e999, NaN or Infinity anywhere in it: one -32700 reply with "id": null that a strict
    JSON parser accepts (never "id": Infinity), nothing run, and the connection keeps working.

    Defence: protocol's finite-number check when parsing (and allow_nan=False when encoding)."""
    d = mdaemon
    d.call("oauth.start")
    s = _connect_unix(d.socket)
    s.settimeout(10)
    f = s.makefile("rwb")
    try:
        f.write(line + b"\n" + b'{"jsonrpc":"2.0","id":"after","method":"status"}\n')
        f.flush()
        first, second = f.readline(), f.readline()
        assert _strict(first) == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": protocol.PARSE_ERROR,
                "message": "Parse error: NaN, Infinity and numbers beyond the range of a double are not JSON",
            },
        }
        assert _strict(second)["id"] == "after" and "result" in _strict(second)
        assert _strict(second)["result"]["flow"]["status"] == "pending"  # the oauth.cancel never ran
    finally:
        f.close()
        s.close()
    assert_healthy(d)


# -- subscribers that stop reading ----------------------------------------------------------------------


def _unread(sock: socket.socket) -> int:
    """Bytes in this client's receive queue: what the kernel holds for it, not the daemon."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


class _LineReader(threading.Thread):
    """A subscriber that reads everything: the size and seq of every event line, in arrival order."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = _connect_unix(path)
        self.sock.settimeout(10)
        self.sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
        # Subscribed before the test publishes anything: its requests come on another connection, which the
        # daemon may well read first.
        self._buf = b""
        while b"\n" not in self._buf:
            self._buf += self.sock.recv(1 << 16)
        reply, _, self._buf = self._buf.partition(b"\n")
        assert b'"result"' in reply, reply
        self.sock.settimeout(None)  # it waits as long as the test has no events for it
        self.events: list[tuple[int, int]] = []  # (seq, bytes on the wire)
        self.seen = threading.Condition()

    def run(self) -> None:
        buf = self._buf
        while chunk := self.sock.recv(1 << 16):
            *lines, buf = (buf + chunk).split(b"\n")
            with self.seen:
                for line in lines:
                    msg = json.loads(line)
                    if msg.get("method") == "event":
                        self.events.append((msg["params"]["seq"], len(line) + 1))
                self.seen.notify_all()

    def wait_for(self, seq: int) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: self.events and self.events[-1][0] >= seq, 30), "events stopped"

    def bytes_after(self, seq: int) -> int:
        with self.seen:
            return sum(size for s, size in self.events if s > seq)


def _stuck_subscribers(path: Path, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = _connect_unix(path)
        s.settimeout(10)
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
        reply = b""
        while not reply.endswith(b"\n"):  # one short reply, then this client never reads again
            reply += s.recv(1)
        assert b'"result"' in reply
        socks.append(s)
    return socks


def _drain(sock: socket.socket, last_seq: int) -> bool:
    """Reads a stuck client's backlog: True if it holds every event up to ``last_seq``, False if the daemon
    closed it first (it was dropped)."""
    buf = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        buf += chunk
        if f'"seq":{last_seq},'.encode() in buf:
            return True


def test_subscribers_that_stop_reading_cannot_take_the_daemons_memory(daemon_factory):
    """300 subscribers stop reading while logins are restarted over and over (two events each time), until
    more than 40 MiB would be waiting for them, none of them near its own 256 KiB bound: the daemon drops
    the ones furthest behind (the 240 that subscribed first) to stay under its 32 MiB total, keeps the 60
    newer ones, loses nothing for a subscriber that reads, and its memory grows by a fraction of what waits.

    Defence: ipc_server.IpcServer's bound on the bytes waiting for all connections (TOTAL_LIMIT), with
    queues that share the event lines instead of copying them."""
    _raise_nofile(4096)
    d = daemon_factory()
    pid = d.proc.pid
    actor = d.client(timeout=30)
    reader = _LineReader(d.socket)
    reader.start()
    actor.call("oauth.start")  # a login is pending: from now on each restart publishes two events
    reader.wait_for(1)
    # The login made the daemon load its HTTP server (aiohttp, a dozen MB): served, it is in the baseline.
    assert raw_http(d.port, "GET", "/api/status").status == 200
    rss0 = rss_kib(pid)
    early = _stuck_subscribers(d.socket, 240)
    early_after = 1  # the last seq published before they subscribed
    restarts, late, late_after = 0, [], None
    try:
        while True:
            actor.call("oauth.start", {"restart": True})
            restarts += 1
            if restarts % 10:
                continue
            last = 1 + 2 * restarts
            reader.wait_for(last)
            if late_after is None and restarts == 60:
                late, late_after = _stuck_subscribers(d.socket, 60), last
            waiting = [reader.bytes_after(early_after) - _unread(s) for s in early]
            if late_after is not None:
                waiting += [reader.bytes_after(late_after) - _unread(s) for s in late]
            # What the daemon would hold without its total bound (dropped clients are counted as if kept).
            assert max(waiting) < 240 * 1024, "a client neared its own bound: this test cannot tell the two apart"
            if sum(waiting) > 40 * 2**20:
                break
        peak_rss = rss_kib(pid)
        subscribers = actor.call("status")["subscribers"]
        assert 1 + len(early) + len(late) - subscribers > 0, "nobody was dropped: the total is not bounded"
        assert all(_drain(s, last) for s in late), "a newer subscriber was dropped before older ones"
        kept_early = sum(_drain(s, last) for s in early)
        assert kept_early == subscribers - 1 - len(late) < len(early)
        assert peak_rss - rss0 < 16 * 1024, f"RSS grew by {peak_rss - rss0} KiB: the queues copy the events"
    finally:
        for s in early + late:
            s.close()
        actor.close()
    reader.wait_for(last)
    assert [seq for seq, _ in reader.events] == list(range(1, last + 1))  # the reader lost nothing
    reader.sock.shutdown(socket.SHUT_RDWR)
    reader.join(10)
    reader.sock.close()
    assert "all clients together may have waiting" in d.log()
    assert "disconnected a subscriber that stopped reading" not in d.log()  # the per-client bound never acted
    assert_healthy(d)


# -- generated JSON-RPC lines against the real socket -------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
methods = st.one_of(st.sampled_from(sorted(protocol.METHODS)), st.text(max_size=12))
param_names = st.one_of(
    st.sampled_from(sorted({n for spec in protocol.METHODS.values() for n in spec})), st.text(max_size=8)
)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.one_of(st.just("2.0"), json_scalars), "method": st.one_of(methods, json_scalars)},
    optional={
        "id": st.one_of(st.integers(), st.text(max_size=8), json_scalars, json_values),
        "params": st.one_of(st.dictionaries(param_names, json_values, max_size=3), json_values),
    },
)
lines = st.one_of(
    requests.map(lambda m: json.dumps(m).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64).map(lambda b: b.replace(b"\n", b" ")),
)


def test_generated_lines_get_a_reply_or_close(module_daemon):
    """Hypothesis-generated JSON-RPC lines on the real socket: every reply is well-formed JSON-RPC, the
    connection answers the next request, and the daemon logs no traceback or internal error for any of them
    (checked after each line, so a failure names the line that caused it)."""
    d = module_daemon
    logged_before = len(d.log())
    state: dict = {"sock": None, "n": 0}

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(line=lines)
    def one_line(line):
        if state["sock"] is None:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(str(d.socket))
            state["sock"] = s
        s = state["sock"]
        state["n"] += 1
        sentinel = f"sentinel-{state['n']}"
        try:
            s.sendall(
                line + b"\n" + json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "status"}).encode() + b"\n"
            )
            replies, closed = _read_all(s, 10, until_id=sentinel)
        except (BrokenPipeError, ConnectionResetError):
            replies, closed = [], True
        if closed:
            s.close()
            state["sock"] = None
        for r in replies:
            assert r.get("jsonrpc") == "2.0"
            assert ("result" in r) != ("error" in r) or r.get("method") == "event", r
            if "error" in r:
                assert isinstance(r["error"]["code"], int) and r["error"]["message"]
        assert closed or any(r.get("id") == sentinel for r in replies), (line, replies)
        assert d.proc.poll() is None
        logged = d.log()[logged_before:]
        assert "Traceback" not in logged and "internal error" not in logged, (line, logged[-3000:])

    try:
        one_line()
    finally:
        if state["sock"] is not None:
            state["sock"].close()
        d.call("oauth.cancel")  # what the lines started or stored is not left to the next test
        d.call("secret.clear")


# -- config.toml --------------------------------------------------------------------------------------

KEYS = [
    "http_port",
    "openrouter_url",
    "secret_backend",
    "desktop_notifications",
    "idle_exit_seconds",
    "flow_timeout_seconds",
    "exchange_timeout_seconds",
    "keyring_timeout_seconds",
    "account_cache_seconds",
    "log_level",
    "socket",
]
toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).lower().replace("inf", "inf")),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(
        ["1979-05-27T07:32:00Z", "07:32:00", "[]", "[1, 'a']", "{}", "{backend = 3}", "'''x'''", "nan", "-inf"]
    ),
)
toml_docs = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(KEYS), toml_scalars).map(lambda kv: f"{kv[0]} = {kv[1]}"),
        st.sampled_from(
            [
                "[openrouter_api_key]",
                "[[openrouter_api_key]]",
                "openrouter_api_key = 5",
                'backend = "local-encrypted"',
                'backend = "keyring"',
                'nonce = "AAAA"',
                'ciphertext = "!!"',
                "service = 1",
                "username = []",
                "# comment",
                "[other]",
                "",
            ]
        ),
        st.text(max_size=20),
    ),
    max_size=8,
).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(toml_docs, st.binary(max_size=120)))
def test_config_fuzz_reaches_settings_and_secret_status_safely(tmp_path, data):
    """Generated config.toml files: loading, resolving settings and reading secret status raise only
    ConfigError/SecretStoreError (clear messages), never another exception; an unparsable file is never rewritten."""
    from convocationsd.core.errors import ConvError
    from convocationsd.store import config, configfile
    from convocationsd.store.configured import ConfiguredStore

    cfg = tmp_path / "cfg" / "convocations"
    cfg.mkdir(parents=True, exist_ok=True)
    path = cfg / "config.toml"
    path.write_bytes(data)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    try:
        config.load({}, env)  # the settings, as the daemon and convctl resolve them
    except ConvError as e:
        assert e.message and e.hint
    store = ConfiguredStore(path, forced_backend="local-encrypted")
    try:
        store.status()
    except ConvError as e:
        assert e.message
    try:
        parsed = configfile.load(path)
    except ConvError:
        parsed = None
    try:
        store.clear()
    except ConvError:
        pass
    if parsed is None:
        assert path.read_bytes() == data  # a file that does not parse is never overwritten


def test_daemon_with_garbage_config_exits_2_with_a_clear_message(short_tmp, daemon_factory):
    """A config.toml that is not TOML: the daemon exits 2 naming the file, line and column; no traceback."""
    cfg = short_tmp / "cfg" / "convocations"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_bytes(b"http_port = 3000\n[openrouter_api_key\n\xff")
    d = daemon_factory(wait=False)
    assert d.proc.wait(20) == 2
    log = d.log()
    assert "config.toml is not valid TOML" in log and "line 3, column 1" in log and "Traceback" not in log
    assert (cfg / "config.toml").read_bytes().endswith(b"\xff")
    assert not Path(d.socket).exists()
    assert os.listdir(cfg) == ["config.toml"]


def test_slowloris_http_connections_are_closed(daemon_factory):
    """100 HTTP clients that send half a request and stall, 100 that send nothing: the daemon keeps serving and
    closes every one of them after its idle timeout (http_app.IDLE_TIMEOUT), freeing their descriptors."""
    from tests.helpers.short_idle_daemon import IDLE_TIMEOUT

    d = daemon_factory(module="tests.helpers.short_idle_daemon")  # 1 s instead of 10
    fds0 = open_fds(d.proc.pid)
    held = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        if i % 2:
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: localhost:%d\r\nX-Slow: " % d.port)
        held.append(s)
    assert raw_http(d.port, "GET", "/api/status").status == 200
    deadline = time.monotonic() + IDLE_TIMEOUT + 5
    open_ones = list(held)
    while open_ones and time.monotonic() < deadline:
        still = []
        for s in open_ones:
            s.settimeout(0.01)
            try:
                if s.recv(4096) == b"":
                    s.close()
                    continue
            except TimeoutError:
                pass
            except ConnectionResetError:
                s.close()
                continue
            still.append(s)
        open_ones = still
        time.sleep(0.2)
    for s in held:
        s.close()
    assert not open_ones, f"{len(open_ones)} stalled connections still open after {IDLE_TIMEOUT + 5} s"
    assert open_fds(d.proc.pid) <= fds0 + 4
    assert_healthy(d)


# -- a flood of refused requests in the log --------------------------------------------------------------


def _pipelined(port: int, request: bytes, n: int) -> bytes:
    """``n`` copies of ``request`` on one connection, the last one closing it; every byte of the answers."""
    close = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request * (n - 1) + close)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_flood_of_refused_requests_is_logged_once_per_kind_with_a_count(daemon_factory):
    """3,000 refused HTTP requests in a few seconds (2,500 callbacks that are not page loads, as a page's
    images would send, 300 malformed requests, 200 connections closed at once as a flooding client does):
    the log gets one line per kind while it lasts, not one per request, and at shutdown how many more of
    each there were. The daemon answers throughout.

    Defence: daemon/logs.Repeats on the HTTP door's refusals (http_app and aiohttp.server)."""
    d = daemon_factory()
    image = (
        f"GET {CB}?error=access_denied HTTP/1.1\r\nHost: localhost:{d.port}\r\n"
        "Sec-Fetch-Dest: image\r\nSec-Fetch-Mode: no-cors\r\n\r\n"
    ).encode()
    before = d.log().count("WARNING")
    answers = b"".join(_pipelined(d.port, image, 100) for _ in range(25))
    assert answers.count(b"HTTP/1.1 403 ") == 2500
    for i in range(300):
        send_raw(d.port, f"GET / HTTP/1.1\r\nHost: localhost:{d.port}\r\nNo colon {i}\r\n\r\n".encode())
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", d.port)) as s:
            s.sendall(f"GET /api/status HTTP/1.1\r\nHost: localhost:{d.port}\r\n\r\n".encode())
    assert d.call("status")["pid"] == d.proc.pid
    flood = d.log().count("WARNING") - before
    assert flood <= 3, d.log()[-3000:]
    assert d.stop() == 0
    log = d.log()
    assert re.search(r" 2499 more like this in the last \d+ s: refused a callback that was not a page load", log)
    assert re.search(r" 299 more like this in the last \d+ s: refused a malformed HTTP request", log)
    assert "Traceback" not in log
