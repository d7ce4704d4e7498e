"""Complete logins against the fake OpenRouter, timed from the browser's callback request.

One flow: ``oauth.start`` over the socket -> the fake's authorize page is approved like a browser
(``FakeOpenRouter.approve``) -> t0 -> a raw HTTP/1.1 GET of the callback URL to the daemon -> the 303 arrives
(t_response) -> the subscriber process reports when the last subscriber had ``openrouter-auth-complete``.
The fake runs in this process; its exchange handler is timed in-process so the report can leave it out.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from convocationsd.testing.fake_openrouter import FakeOpenRouter

from . import rawclient
from .common import PY, ROOT, Daemon


class TimedFake(FakeOpenRouter):
    """The fake, with the wall time of each code exchange recorded (request handler entry to return)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.exchange_times: list[float] = []

    async def _exchange(self, request: web.Request) -> web.StreamResponse:
        t = time.monotonic()
        try:
            return await super()._exchange(request)
        finally:
            self.exchange_times.append(time.monotonic() - t)


@dataclass
class FlowTiming:
    session: str
    response: float  # callback request -> HTTP response (s)
    event: float | None  # callback request -> last subscriber has the event (s)
    first_event: float | None
    exchange: float  # the fake's exchange handler time (s)
    status: int


class Subscribers:
    """``python -m bench.subscribers`` as an asyncio subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process, count: int) -> None:
        self.proc = proc
        self.count = count
        self.lost = 0
        self._done: dict[str, tuple[float, float]] = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(
        cls, socket_path: str, count: int, *, events: str = "all", lifetime: float = 240.0, stuck: bool = False
    ) -> Subscribers:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "bench.subscribers",
            socket_path,
            str(count),
            "--events",
            events,
            "--lifetime",
            str(lifetime),
            *(["--stuck"] if stuck else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        line = await asyncio.wait_for(proc.stdout.readline(), 60 + count / 50)
        if not line.startswith(b"READY"):
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"subscribers did not start: {line!r}")
        self = cls(proc, int(line.split()[1]))
        return self

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            parts = line.decode().split()
            if parts[0] == "DONE":
                session, first, last = parts[1], float(parts[2]), float(parts[3])
                self._done[session] = (first, last)
                waiter = self._waiters.pop(session, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((first, last))
            elif parts[0] == "LOST":
                self.lost = int(parts[1])

    async def wait(self, session: str, timeout: float = 10.0) -> tuple[float, float] | None:
        if session in self._done:
            return self._done.pop(session)
        fut = self._waiters[session] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self._done.pop(session, None)

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b"quit\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 10)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()


async def http_get(port: int, target: str, host: str = "localhost") -> tuple[int, bytes, dict[str, str]]:
    """A minimal HTTP/1.1 GET on a fresh loopback connection; returns (status, body, headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for h in lines[1:]:
            if ":" in h:
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return status, body, headers
    finally:
        writer.close()


class FlowDriver:
    def __init__(self, daemon: Daemon, fake: TimedFake) -> None:
        self.daemon = daemon
        self.fake = fake
        self.ctl = rawclient.connect(str(daemon.socket))
        self._id = 100

    def rpc(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        msg = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params:
            msg["params"] = params
        reply = json.loads(rawclient.call(self.ctl, json.dumps(msg).encode() + b"\n", rawclient.line_reply))
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def flow(self, subscribers: Subscribers | None = None) -> FlowTiming:
        started = self.rpc("oauth.start", {"restart": True})
        location = await self.fake.approve(started["auth_url"])
        url = urlsplit(location)
        n_exchanges = len(self.fake.exchange_times)
        t0 = time.monotonic()
        status, _, _headers = await http_get(url.port, f"{url.path}?{url.query}")
        t_resp = time.monotonic()
        if status != 303:
            raise RuntimeError(f"callback answered {status}")
        first = last = None
        if subscribers is not None:
            got = await subscribers.wait(started["session_id"])
            if got is None:
                raise RuntimeError(
                    f"no openrouter-auth-complete for {started['session_id']} within 10 s "
                    f"(lost subscribers: {subscribers.lost})"
                )
            first, last = got[0] - t0, got[1] - t0
        exchange = self.fake.exchange_times[-1] if len(self.fake.exchange_times) > n_exchanges else 0.0
        return FlowTiming(started["session_id"], t_resp - t0, last, first, exchange, status)

    def check_all_succeeded(self, count: int) -> None:
        ok = sum(1 for record in self.fake.exchanges[-count:] if record.outcome == "ok")
        if ok != count:
            raise RuntimeError(f"only {ok} of the last {count} exchanges succeeded")
        flow = self.rpc("status")["flow"]
        if not flow or flow["status"] != "succeeded":
            raise RuntimeError(f"last flow did not succeed: {flow}")

    def close(self) -> None:
        self.ctl.close()
