"""The IPC server in-process, with stand-in handlers: shutdown with a client that stopped reading, and
errors of requests that must not be answered (notifications)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading
import time

from convocationsd.core import protocol
from convocationsd.core.errors import ConvError
from convocationsd.core.events import EventBus
from convocationsd.daemon import ipc_server


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
