"""The IPC server in-process, with stand-in handlers: shutdown with a client that stopped reading, and
errors of requests that must not be answered (notifications)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time

import pytest

from convocationsd.core import protocol
from convocationsd.core.errors import ConvError
from convocationsd.core.events import EventBus
from convocationsd.daemon import ipc_server
from tests.conftest import readable


def handlers(bus: EventBus, **overrides) -> dict:
    def subscribe(conn, params):
        return {"events": bus.subscribe(conn, params.get("events"))}

    table = {method: (lambda conn, params: {}) for method in protocol.METHODS}
    table["subscribe"] = subscribe
    table.update(overrides)
    return table


async def start(tmp, bus: EventBus, **kw) -> tuple[ipc_server.IpcServer, str]:
    server = ipc_server.IpcServer(kw.pop("table", None) or handlers(bus), bus, **kw)
    path = tmp / "s.sock"
    await server.start(ipc_server.bind_unix_socket(path))
    return server, str(path)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def read_all(sock: socket.socket, into: list[bytes]) -> None:
    while chunk := sock.recv(65536):
        into.append(chunk)


async def test_close_cuts_off_a_client_that_stopped_reading(short_tmp):
    bus = EventBus()
    # A queue limit far above what is sent: the stuck client is not dropped for being slow, so only
    # close() can end its connection.
    server, path = await start(short_tmp, bus, queue_limit=64 * 2**20)
    stuck, reader = connect(path), connect(path)
    for s in (stuck, reader):
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
    await until(lambda: len(bus) == 2)
    received: list[bytes] = []
    thread = threading.Thread(target=read_all, args=(reader, received), daemon=True)
    thread.start()
    for i in range(2000):  # ~1 MB: far more than the kernel's socket buffer holds for `stuck`
        bus.publish("openrouter-auth-started", {"i": i, "pad": "x" * 400})
    await until(lambda: any(c.transport.get_write_buffer_size() > 0 for c in server.connections))  # really stuck
    bus.publish("openrouter-auth-complete", {"last": True})

    # Since Python 3.12 Server.wait_closed() waits for every connection; one left open would hang the
    # daemon's shutdown. So close() must leave none behind, and end on its own (its bounds add up to 3 s).
    await asyncio.wait_for(server.close(), 10)
    assert not server.connections
    await asyncio.to_thread(thread.join, 10)
    lines = b"".join(received).splitlines()
    assert json.loads(lines[-1])["params"]["data"] == {"last": True}  # a client that reads gets everything
    assert len(lines) == 2 + 2000  # the subscribe reply, every event and the last one
    stuck.close()
    reader.close()


async def test_close_is_quick_when_everyone_reads(short_tmp, monkeypatch):
    # Flushing may take a minute here: close() must not wait for it when nothing is left to send.
    monkeypatch.setattr(ipc_server, "CLOSE_FLUSH_SECONDS", 60.0)
    bus = EventBus()
    server, path = await start(short_tmp, bus)
    client = connect(path)
    client.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
    await until(lambda: len(bus) == 1)
    await asyncio.wait_for(server.close(), 10)
    assert not server.connections
    client.close()


async def test_notification_errors_are_logged_never_answered(short_tmp, caplog):
    bus = EventBus()

    def sync_boom(conn, params):
        raise RuntimeError("sync boom")

    async def async_boom(conn, params):
        raise RuntimeError("async boom")

    def expected(conn, params):
        raise ConvError("An expected failure.", "A hint.")

    table = handlers(bus, **{"secret.clear": sync_boom, "secret.get": async_boom, "secret.status": expected})
    server, path = await start(short_tmp, bus, table=table)
    client = connect(path)
    client.settimeout(5)
    f = client.makefile("rwb")
    with caplog.at_level(logging.ERROR, logger="convocationsd.daemon.ipc_server"):
        for method in ("secret.clear", "secret.get", "secret.status"):
            f.write(json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n")  # no id: a notification
        f.write(b'{"jsonrpc":"2.0","id":7,"method":"status"}\n')
        f.flush()
        # JSON-RPC 2.0: a notification is never answered, not even with an error; the first line we get
        # is the answer to the request that has an id.
        reply = json.loads(await asyncio.to_thread(f.readline))
        assert reply == {"jsonrpc": "2.0", "id": 7, "result": {}}
        await until(lambda: "async boom" in caplog.text)
        assert "sync boom" in caplog.text  # an unexpected error is logged even when nobody is answered
        assert "An expected failure" not in caplog.text  # a ConvError is not a fault of the daemon
    with caplog.at_level(logging.ERROR):
        gc.collect()
        await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    # Errors of requests with an id are still answered.
    f.write(b'{"jsonrpc":"2.0","id":8,"method":"secret.get"}\n')
    f.flush()
    error = json.loads(await asyncio.to_thread(f.readline))["error"]
    assert error["code"] == protocol.INTERNAL_ERROR
    f.write(b'{"jsonrpc":"2.0","id":9,"method":"secret.status"}\n')
    f.flush()
    error = json.loads(await asyncio.to_thread(f.readline))["error"]
    assert error["code"] == protocol.OPERATION_FAILED and error["data"]["kind"] == "ConvError"
    client.close()
    await server.close()


# -- replies before the events they caused ---------------------------------------------------------


class Line:
    """A blocking line reader over a client socket, used from a thread."""

    def __init__(self, path: str, *, compact: bool = False) -> None:
        self.sock = connect(path)
        self.sock.settimeout(10)
        self.file = self.sock.makefile("rwb")
        # json.dumps's spaces take the general path; compact, as convctl writes them, the shorter one
        # (ipc_server._canonical) when the request has no params.
        self.separators = (",", ":") if compact else None

    def send(self, obj) -> None:
        line = obj if isinstance(obj, bytes) else json.dumps(obj, separators=self.separators).encode()
        self.file.write(line + b"\n")
        self.file.flush()

    async def read(self):
        return json.loads(await asyncio.to_thread(self.file.readline))

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)  # b"": closed, which is not "nothing" either
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def request(id_, method, params=None) -> dict:
    msg = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


async def subscribed(path: str, bus: EventBus, *, compact: bool = False) -> Line:
    client = Line(path, compact=compact)
    client.send(request(0, "subscribe"))
    assert "result" in await client.read()  # written after the subscription took effect
    return client


@pytest.mark.parametrize("compact", [False, True], ids=["general", "canonical"])
async def test_the_reply_comes_before_the_events_its_request_caused(short_tmp, compact):
    bus = EventBus()

    def start_login(conn, params):
        bus.publish("openrouter-auth-complete", {"cancelled": "the old one"})
        bus.publish("openrouter-auth-started", {"new": True})
        return {"session_id": "s"}

    async def store(conn, params):
        await asyncio.sleep(0)
        bus.publish("openrouter-key-changed", {"stored": True})
        return {"stored": True}

    server, path = await start(short_tmp, bus, table=handlers(bus, **{"oauth.start": start_login, "secret.set": store}))
    client = await subscribed(path, bus, compact=compact)
    client.send(request(1, "oauth.start"))
    assert (await client.read())["id"] == 1  # before the events, although they were published first
    assert [(await client.read())["params"]["seq"] for _ in range(2)] == [1, 2]
    client.send(request(2, "secret.set", {"key": "k"}))  # a handler that waits: the same rule
    assert (await client.read())["id"] == 2
    assert (await client.read())["params"]["event"] == "openrouter-key-changed"
    client.close()
    await server.close()


@pytest.mark.parametrize("compact", [False, True], ids=["general", "canonical"])
async def test_events_wait_in_order_behind_a_reply_not_yet_written(short_tmp, compact):
    bus = EventBus()
    gate = asyncio.Event()

    async def slow_clear(conn, params):
        bus.publish("openrouter-key-changed", {"stored": False})  # caused by this request: after its reply
        await gate.wait()
        return {"cleared": True}

    def cancel(conn, params):
        bus.publish("openrouter-auth-complete", {"cancelled": True})  # caused by another client's request
        return {"cancelled": True}

    server, path = await start(
        short_tmp, bus, table=handlers(bus, **{"secret.clear": slow_clear, "oauth.cancel": cancel})
    )
    waiting, watcher = await subscribed(path, bus, compact=compact), await subscribed(path, bus)
    other = Line(path, compact=compact)
    waiting.send(request(1, "secret.clear"))
    assert (await watcher.read())["params"]["seq"] == 1
    other.send(request(2, "oauth.cancel"))
    assert (await other.read())["id"] == 2
    assert (await watcher.read())["params"]["seq"] == 2  # a client with nothing pending gets events at once
    # Event 2 is not caused by the pending request, but it may not overtake event 1, which waits for it.
    assert waiting.nothing_waiting()
    gate.set()
    assert (await waiting.read())["id"] == 1
    assert [(await waiting.read())["params"]["seq"] for _ in range(2)] == [1, 2]
    for c in (waiting, watcher, other):
        c.close()
    await server.close()


async def test_an_event_from_a_timer_of_an_answered_request_is_not_held(short_tmp):
    bus = EventBus()

    def start_login(conn, params):  # the timer inherits the request's context, long after its reply
        asyncio.get_running_loop().call_later(0.01, bus.publish, "openrouter-auth-complete", {"timeout": True})
        return {"session_id": "s"}

    server, path = await start(short_tmp, bus, table=handlers(bus, **{"oauth.start": start_login}))
    client = await subscribed(path, bus)
    client.send(request(1, "oauth.start"))
    assert (await client.read())["id"] == 1
    assert (await client.read())["params"]["data"] == {"timeout": True}
    client.close()
    await server.close()


async def test_a_notification_is_not_answered_and_its_events_are_not_held(short_tmp):
    bus = EventBus()

    def cancel(conn, params):
        bus.publish("openrouter-auth-complete", {"cancelled": True})
        return {"cancelled": True}

    server, path = await start(short_tmp, bus, table=handlers(bus, **{"oauth.cancel": cancel}))
    client = await subscribed(path, bus)
    client.send({"jsonrpc": "2.0", "method": "oauth.cancel"})
    client.send(request(None, "status"))  # "id": null is a request: answered, with null
    assert (await client.read())["params"]["seq"] == 1
    assert await client.read() == {"jsonrpc": "2.0", "id": None, "result": {}}
    client.close()
    await server.close()


# -- batches ---------------------------------------------------------------------------------------


async def test_a_batch_is_answered_in_one_line_once_its_slowest_member_is_done(short_tmp):
    bus = EventBus()
    gate = asyncio.Event()

    async def slow_get(conn, params):
        await gate.wait()
        return {"key": None}

    def cancel(conn, params):
        bus.publish("openrouter-auth-complete", {"cancelled": True})
        return {"cancelled": True}

    table = handlers(bus, **{"secret.get": slow_get, "oauth.cancel": cancel})
    server, path = await start(short_tmp, bus, table=table)
    client, watcher = await subscribed(path, bus), await subscribed(path, bus)
    client.send(
        json.dumps(
            [
                request(1, "oauth.cancel"),
                request("two", "secret.get"),
                {"jsonrpc": "2.0", "method": "status"},
                {"foo": "boo"},
                request(5, "nope"),
            ]
        ).encode()
    )
    assert (await watcher.read())["params"]["seq"] == 1  # the batch has run up to its waiting member
    assert client.nothing_waiting()  # neither the answer nor the event caused by member 1
    gate.set()
    answers = await client.read()
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": {"cancelled": True}},
        {"jsonrpc": "2.0", "id": "two", "result": {"key": None}},
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": 'Invalid request: "jsonrpc" must be "2.0"'},
        },
        {"jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "Method not found: 'nope'"}},
    ]
    assert (await client.read())["params"]["seq"] == 1
    # A batch of notifications only gets no line at all: the next line answers the next request.
    client.send(b'[{"jsonrpc":"2.0","method":"status"},{"jsonrpc":"2.0","method":"nope"}]')
    client.send(request(6, "status"))
    assert await client.read() == {"jsonrpc": "2.0", "id": 6, "result": {}}
    for c in (client, watcher):
        c.close()
    await server.close()


async def test_a_result_that_is_not_json_gets_an_internal_error(short_tmp, caplog):
    bus = EventBus()
    table = handlers(bus, status=lambda conn, params: {"usage": float("nan")})
    server, path = await start(short_tmp, bus, table=table)
    client = Line(path)
    with caplog.at_level(logging.ERROR, logger="convocationsd.daemon.ipc_server"):
        client.send(request(1, "status"))
        reply = await client.read()
    assert reply == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": protocol.INTERNAL_ERROR, "message": "Internal error; see the daemon's log."},
    }
    assert "not JSON compliant" in caplog.text
    client.send(b'[{"jsonrpc":"2.0","id":2,"method":"status"},{"jsonrpc":"2.0","id":3,"method":"secret.status"}]')
    assert [r.get("error", {}).get("code") for r in await client.read()] == [protocol.INTERNAL_ERROR, None]
    client.close()
    await server.close()


# -- the request line as convctl writes it (ipc_server._canonical) -------------------------------------

EQUIVALENCE_LINES = (
    [protocol.request_line(7, method)[:-1] for method in protocol.METHODS]
    + [protocol.request_line(i, "status")[:-1] for i in (0, -1, 42, 10**17, 10**18 - 1, -(10**18) + 1, 10**18, 10**30)]
    + [
        b'{"jsonrpc":"2.0","id":-0,"method":"status"}',
        b'{"jsonrpc":"2.0","id":01,"method":"status"}',
        b'{"jsonrpc":"2.0","id":1.0,"method":"status"}',
        b'{"jsonrpc":"2.0","id":"1","method":"status"}',
        b'{"jsonrpc":"2.0","id":null,"method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"nope"}',
        b'{"jsonrpc":"2.0","id":1,"method":"Status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"statuss"}',
        b'{"jsonrpc":"2.0","id":1,"method":"stat\\u0075s"}',
        b'{"jsonrpc":"2.0","id":1,"method":"status","params":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"secret.set"}',
        b'{"jsonrpc":"2.0","id":1,"method":"oauth.exchange"}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"status"} ',
        b'{"jsonrpc":"2.0","id":1,"method":"status"}\r',
        b' {"jsonrpc":"2.0","id":1,"method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"status","id":2}',
        b'{"jsonrpc":"1.0","id":1,"method":"status"}',
        b'{"id":1,"jsonrpc":"2.0","method":"status"}',
        b'{"jsonrpc":"2.0","id":1,"method":"status"}{"jsonrpc":"2.0","id":2,"method":"status"}',
        protocol.BOM + b'{"jsonrpc":"2.0","id":1,"method":"status"}',
    ]
)


def every_kind_of_result(bus: EventBus) -> dict:
    """A handler per method that names its method in what it returns, and one per kind of result:
    an Encoded with and without its JSON, a plain dict, a coroutine, a failure, a crash, a result that
    is not JSON."""
    encoded = protocol.Encoded(method="status", pad="é" * 40)
    encoded.json = protocol.encode(encoded)

    async def later(conn, params):
        await asyncio.sleep(0)
        return {"method": "secret.get"}

    def fails(conn, params):
        raise ConvError("It failed.", "Do something else.")

    def crashes(conn, params):
        raise RuntimeError("boom")

    table = {method: (lambda conn, params, m=method: {"method": m, "params": params}) for method in protocol.METHODS}
    table.update(
        {
            "status": lambda conn, params: encoded,
            "subscribe": lambda conn, params: protocol.Encoded(method="subscribe"),  # no JSON of its own
            "secret.get": later,
            "debug.modules": fails,
            "oauth.cancel": crashes,
            "secret.clear": lambda conn, params: {"usage": float("nan")},
        }
    )
    return table


async def replies(tmp, lines: list[bytes]) -> list[bytes]:
    """The reply lines, byte for byte, to ``lines`` sent one at a time on one connection."""
    bus = EventBus()
    server, path = await start(tmp, bus, table=every_kind_of_result(bus))
    client = Line(path)
    got = []
    for line in lines:
        client.send(line)
        got.append(await asyncio.to_thread(client.file.readline))
    client.close()
    await server.close()
    return got


async def test_the_canonical_line_is_answered_as_the_general_path_answers_it(short_tmp, monkeypatch, caplog):
    """Every line the shorter path takes gets the reply byte for byte that parse_line's path gives, from
    the handler of its own method; every line it must not take is left to parse_line."""
    matched = []
    canonical = ipc_server._canonical

    def spy(*args):
        m = canonical(*args)
        matched.append(m is not None)
        return m

    monkeypatch.setattr(ipc_server, "_canonical", spy)
    fast = await replies(short_tmp, EQUIVALENCE_LINES)
    monkeypatch.setattr(ipc_server, "_canonical", lambda *args: None)
    general = await replies(short_tmp, EQUIVALENCE_LINES)
    assert [line for line, a, b in zip(EQUIVALENCE_LINES, fast, general, strict=True) if a != b] == []
    # Taken for each method that needs no params, for ids of up to 18 digits; not for anything else.
    needs_params = sum(any(required for _, required in spec.values()) for spec in protocol.METHODS.values())
    assert sum(matched) == len(protocol.METHODS) - needs_params + 6
    assert [json.loads(r).get("result", {}).get("method") for r in fast[: len(protocol.METHODS)]] == [
        m if m not in ("secret.set", "oauth.exchange", "debug.modules", "oauth.cancel", "secret.clear") else None
        for m in protocol.METHODS
    ]


# -- clients that stop reading ---------------------------------------------------------------------


class Recorder:
    """A sink that keeps every line object the bus hands out."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def send(self, line: bytes) -> bool:
        self.lines.append(line)
        return True


async def stuck_subscriber(server: ipc_server.IpcServer, path: str, bus: EventBus):
    """A subscriber that never reads after its subscribe reply, with its server-side Connection. The
    server's socket buffer is made small so that its queue starts filling after a few events."""
    known = set(server.connections)
    client = await subscribed(path, bus)
    (conn,) = set(server.connections) - known
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client, conn


async def test_stuck_subscribers_share_the_event_lines_and_the_furthest_behind_go_first(short_tmp):
    bus = EventBus()
    recorder = Recorder()
    bus.subscribe(recorder)
    total_limit = 96 * 1024
    server, path = await start(short_tmp, bus, queue_limit=2**30, total_limit=total_limit)
    reader = connect(path)
    reader.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
    received: list[bytes] = []
    thread = threading.Thread(target=read_all, args=(reader, received), daemon=True)
    thread.start()
    await until(lambda: len(bus) == 2)
    early = [await stuck_subscriber(server, path, bus) for _ in range(6)]
    pad = "x" * 1000
    for i in range(40):  # about 40 KiB each for the early ones: 240 KiB in all, past the bound
        bus.publish("openrouter-key-changed", {"i": i, "pad": pad})
        assert server.backlog <= total_limit
    late = [await stuck_subscriber(server, path, bus) for _ in range(2)]
    for i in range(40, 60):
        bus.publish("openrouter-key-changed", {"i": i, "pad": pad})
        assert server.backlog <= total_limit  # the bound holds after every event
    await asyncio.sleep(0)  # connection_lost of those cut off runs now
    gone = [conn for _, conn in early if conn not in server.connections]
    assert gone and all(conn in server.connections for _, conn in late)  # the furthest behind went first
    assert server.backlog == sum(conn.backlog for conn in server.connections)
    # What waits for a stuck subscriber is the bus's own line objects: one copy for all of them.
    for _, conn in late:
        assert conn.queue and all(line is recorder.lines[-len(conn.queue) + k] for k, line in enumerate(conn.queue))
    for client, _ in early + late:
        client.close()
    await until(lambda: len(server.connections) == 1 and server.backlog == 0)
    bus.publish("openrouter-auth-complete", {"last": True})
    await asyncio.wait_for(server.close(), 10)
    await asyncio.to_thread(thread.join, 10)
    lines = b"".join(received).splitlines()
    assert [json.loads(line)["params"]["seq"] for line in lines[1:]] == list(range(1, 62))  # the reader lost nothing
    reader.close()


async def test_a_subscriber_that_falls_behind_and_reads_again_gets_every_event_in_order(short_tmp):
    bus = EventBus()
    server, path = await start(short_tmp, bus, queue_limit=2**30, total_limit=2**30)
    client, conn = await stuck_subscriber(server, path, bus)
    pad = "x" * 1000
    for i in range(100):
        bus.publish("openrouter-key-changed", {"i": i, "pad": pad})
    assert len(conn.queue) > 50 and conn.backlog > 50_000  # most of it waits in the queue

    def read_events(count: int) -> list[int]:
        seqs, buf = [], b""
        while len(seqs) < count:
            buf += client.sock.recv(1 << 16)
            *lines, buf = buf.split(b"\n")
            seqs += [json.loads(line)["params"]["seq"] for line in lines]
        return seqs

    assert await asyncio.to_thread(read_events, 100) == list(range(1, 101))
    await until(lambda: conn.backlog == 0 and not conn.queue)
    assert server.backlog == 0 and conn in server.connections
    client.close()
    await server.close()


async def test_a_client_that_shuts_down_its_sending_side_still_gets_its_answers(short_tmp):
    """What a shell pipe does (``echo '{…}' | socat - UNIX-CONNECT:…``): the answers, then the close."""
    bus = EventBus()
    gate = asyncio.Event()

    async def slow_status(conn, params):
        await gate.wait()
        return {"stored": False, "backend": None}

    server, path = await start(short_tmp, bus, table=handlers(bus, **{"secret.status": slow_status}))
    client = connect(path)
    client.sendall(b'{"jsonrpc":"2.0","id":1,"method":"secret.status"}\n{"jsonrpc":"2.0","id":2,"method":"status"}\n')
    client.shutdown(socket.SHUT_WR)
    await until(lambda: server.tasks)
    gate.set()
    received: list[bytes] = []
    await asyncio.to_thread(read_all, client, received)  # returns at the daemon's close
    assert [json.loads(line)["id"] for line in b"".join(received).splitlines()] == [2, 1]
    await until(lambda: not server.connections)
    client.close()
    await server.close()


# -- a refused client (another uid; here the server is told it runs as another uid than this test) -----------


async def refusing_server(tmp, monkeypatch, seconds: float, size: int) -> tuple[ipc_server.IpcServer, str]:
    monkeypatch.setattr(ipc_server, "REFUSAL_DRAIN_SECONDS", seconds)
    monkeypatch.setattr(ipc_server, "REFUSAL_DRAIN_BYTES", size)
    server, path = await start(tmp, EventBus())
    server.uid = os.getuid() + 1  # every client of this test is "another user"
    return server, path


def read_until_closed(sock: socket.socket) -> tuple[bytes, OSError | None]:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError as e:
        return received, e
    return received, None


def write_first_then_read(path: str) -> tuple[bytes, OSError | None]:
    """A client that sends its request before reading anything, as most do; it sends after the refusal has
    arrived (and a moment more), when a daemon that closed at once would be gone."""
    s = connect(path)
    with s:
        assert readable(s, 5), "no refusal"
        time.sleep(0.2)
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"secret.get"}\n')  # EPIPE if the daemon had closed
        return read_until_closed(s)


async def test_a_refused_client_that_writes_first_reads_the_refusal(short_tmp, monkeypatch, caplog):
    server, path = await refusing_server(short_tmp, monkeypatch, 5.0, 64 * 1024)
    with caplog.at_level(logging.WARNING, logger="convocationsd.daemon.ipc_server"):
        received, error = await asyncio.to_thread(write_first_then_read, path)
    assert error is None  # no reset: the request was read (and dropped) before the close
    message = json.loads(received)  # one line, then the end
    assert message["id"] is None and message["error"]["data"]["kind"] == "PermissionDenied"
    assert message["error"]["message"].startswith("Permission denied: this daemon serves only its own user")
    assert "refused a socket client running as uid" in caplog.text
    await until(lambda: not server.refused)  # the client closed: so did the daemon, before its deadline
    assert not server.connections
    await server.close()


async def test_a_refused_client_that_stays_is_cut_off_in_time(short_tmp, monkeypatch):
    server, path = await refusing_server(short_tmp, monkeypatch, 0.3, 64 * 1024)
    s = connect(path)  # sends nothing, never closes its side
    started = time.monotonic()
    received, _ = await asyncio.to_thread(read_until_closed, s)  # the line, then the end of the output
    assert b"Permission denied" in received
    await until(lambda: not server.refused, 3)  # and the connection is gone in time
    assert 0.25 < time.monotonic() - started < 3
    s.close()
    await server.close()


async def test_a_refused_client_that_keeps_sending_is_cut_off(short_tmp, monkeypatch):
    server, path = await refusing_server(short_tmp, monkeypatch, 30.0, 4096)
    s = connect(path)

    def flood() -> OSError | None:
        try:
            for _ in range(1000):  # 1 MB, far past the 4 KiB the daemon reads and drops
                s.sendall(b"x" * 1024)
        except OSError as e:
            return e
        return None

    started = time.monotonic()
    assert isinstance(await asyncio.to_thread(flood), OSError)  # cut off (EPIPE, ECONNRESET)
    assert time.monotonic() - started < 10  # long before the 30 s deadline
    await until(lambda: not server.refused)
    s.close()
    await server.close()


async def test_close_does_not_wait_for_a_refused_client(short_tmp, monkeypatch):
    server, path = await refusing_server(short_tmp, monkeypatch, 30.0, 64 * 1024)
    s = connect(path)
    await until(lambda: server.refused)
    started = time.monotonic()
    await asyncio.wait_for(server.close(), 10)
    assert time.monotonic() - started < 1.5 and not server.refused
    s.close()


async def test_refused_clients_are_logged_once_a_minute_with_a_count(short_tmp, monkeypatch, caplog):
    """A client of another uid connecting again and again is one line, then a count (logs.REFUSALS)."""
    from convocationsd.daemon.logs import REFUSALS

    REFUSALS.flush()  # what earlier tests' servers left counted in this process-wide filter
    logged = len(caplog.records)
    server, path = await refusing_server(short_tmp, monkeypatch, 5.0, 64 * 1024)
    with caplog.at_level(logging.WARNING, logger="convocationsd.daemon.ipc_server"):
        for _ in range(5):
            s = connect(path)
            await asyncio.to_thread(read_until_closed, s)
            s.close()
        await until(lambda: not server.refused)
        REFUSALS.flush()  # as at shutdown: what was counted is said
    lines = [r.getMessage() for r in caplog.records[logged:] if r.name.startswith("convocationsd.daemon.ipc_server")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("refused a socket client running as uid")
    assert lines[1].startswith("4 more like this in the last") and lines[0] in lines[1]
    await server.close()


async def test_a_refused_client_is_not_activity(short_tmp, monkeypatch):
    """Another user connecting again and again must not keep the daemon from its idle exit."""
    server, path = await refusing_server(short_tmp, monkeypatch, 5.0, 64 * 1024)
    touched: list[int] = []
    server.touch = lambda: touched.append(1)
    for _ in range(3):
        s = connect(path)
        await asyncio.to_thread(read_until_closed, s)
        s.close()
    await until(lambda: not server.refused)
    assert touched == []
    await server.close()


def test_the_controller_has_a_handler_for_every_method_and_for_no_other():
    """A new method is its entry in core/protocol.METHODS and its line in Controller.handlers: neither alone."""
    from convocationsd.daemon.controller import Controller, Endpoint

    ctl = Controller(
        endpoint=Endpoint(3000, False, "/nonexistent.sock"),
        openrouter_url="http://127.0.0.1:9",
        openrouter=None,
        secrets=None,
        bus=EventBus(),
        flow_timeout=600.0,
    )
    assert set(ctl.handlers()) == set(protocol.METHODS)
