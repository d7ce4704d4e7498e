"""Harness for the adversarial suite: what an attacker or a bad day would do to a real daemon.

Everything runs against a real ``python -m convocationsd`` process and a real fake OpenRouter, over
loopback only. To keep the suite fast, a module can share one daemon (``module_daemon``) and one fake
running on its own event loop in a thread (``FakeThread``), so plain blocking tests can drive both.

HTTP requests are written by hand (``raw_http``) so a test controls every byte: a missing or hostile
``Host``, oversized headers, bodies that are not what they claim.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from convocationsd.client import Client
from convocationsd.testing.fake_openrouter import FakeOpenRouter
from tests.conftest import DaemonProcess

DEFAULT = object()


# -- a fake OpenRouter usable from blocking tests ---------------------------------------------------


class FakeThread:
    """The fake OpenRouter on its own event loop in a daemon thread."""

    def __init__(self, fake: FakeOpenRouter | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-openrouter", daemon=True)
        self.thread.start()
        if fake is None:
            from tests.helpers.openrouter_sdk import exchange_body_problem

            fake = FakeOpenRouter(check_exchange=exchange_body_problem)
        self.fake = self.run(fake.start())

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def config(self):
        return self.fake.config

    def reset_config(self) -> None:
        from convocationsd.testing.fake_openrouter import FakeConfig

        self.fake.config = FakeConfig()

    def approve(self, auth_url: str) -> str:
        return self.run(self.fake.approve(auth_url))

    def deny(self, auth_url: str) -> str:
        return self.run(self.fake.deny(auth_url))

    def submit(self, auth_url: str, button: str):
        return self.run(self.fake.submit(auth_url, button))

    def close(self) -> None:
        try:
            self.run(self.fake.close(), timeout=10)
            self.run(_cancel_the_rest(), timeout=10)  # handlers a fault switch left hanging: ended, not abandoned
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()


async def _cancel_the_rest() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


# -- daemons ----------------------------------------------------------------------------------------


def kill(d: DaemonProcess) -> None:
    if d.proc.poll() is None:
        d.proc.kill()
    d.proc.wait(10)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def assert_healthy(d: DaemonProcess) -> None:
    """Alive, answering, and no traceback or internal error in its log."""
    assert d.proc.poll() is None, "the daemon died:\n" + d.log()[-3000:]
    assert d.call("status")["pid"] == d.proc.pid
    log = d.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


# -- HTTP by hand -----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def dump(self) -> str:
        """Everything a browser could see: status, headers and body."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"{self.status}\n{head}\n\n{self.text}"


def raw_http(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host=DEFAULT,
    family: int = socket.AF_INET,
    timeout: float = 10.0,
    version: str = "HTTP/1.1",
    raw: bytes | None = None,
) -> Reply:
    """One request on a fresh connection (``Connection: close``); ``host=None`` sends no Host header."""
    if raw is None:
        lines = [f"{method} {target} {version}"]
        if host is DEFAULT:
            host = f"localhost:{port}"
        if host is not None:
            lines.append(f"Host: {host}")
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        lines += [f"{k}: {v}" for k, v in items]
        if body and not any(k.lower() == "content-length" for k, _ in items):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    return parse_reply(send_raw(port, raw, family=family, timeout=timeout))


def send_raw(port: int, raw: bytes, *, family: int = socket.AF_INET, timeout: float = 10.0) -> bytes:
    """Sends ``raw`` as is on a fresh connection and returns every byte of the answer, as it came."""
    addr = ("127.0.0.1" if family == socket.AF_INET else "::1", port)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(addr)
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything we send
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse_reply(data: bytes) -> Reply:
    if not data:
        return Reply(0)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    reply = Reply(status, headers, body)
    if (reply.header("Transfer-Encoding") or "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        reply.body = out
    return reply


def callback(port: int, query: str, headers: dict[str, str] | None = None) -> tuple[Reply, Reply | None]:
    """GETs the callback like a browser: returns (callback reply, result page reply after the 303)."""
    first = raw_http(port, "GET", "/api/openrouter/oauth/callback?" + query, headers)
    if first.status != 303:
        return first, None
    location = first.header("Location") or ""
    return first, raw_http(port, "GET", urlsplit(location).path, {"Accept": "text/html"})


def state_of(auth_url: str) -> str:
    return parse_qs(urlsplit(auth_url).query)["state"][0]


def query_of(location: str) -> str:
    return urlsplit(location).query


def next_event(client: Client, name: str, session_id: str | None = None, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ev = client.next_event(left)
        if ev is None:
            break
        if ev.get("event") == name and (session_id is None or ev["data"].get("session_id") == session_id):
            return ev
    raise AssertionError(f"no {name} event within {timeout} s")


def subscriber(d: DaemonProcess, events: list[str] | None = None) -> Client:
    c = d.client()
    c.call("subscribe", {"events": events} if events else None)
    return c


NOBODY = 65534


# The system interpreter: a venv under a 0700 home may not be reachable for another user.
OTHER_USER_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def python_as(uid: int = NOBODY) -> list[str]:
    """The command line that starts the system Python as ``uid`` (gid the same), with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", OTHER_USER_PYTHON]


def as_nobody(script: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Runs a Python snippet as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        [*python_as(NOBODY), "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HINT_RE = re.compile(r"convctl|RCONV_HTTP_PORT|CONVOCATIONS_OPENROUTER_URL|chmod|try again|again", re.I)
SIGKILL = signal.SIGKILL
