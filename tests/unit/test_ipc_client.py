"""Both socket clients against a stand-in daemon that misbehaves: no answer, a malformed line, a close."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading

import pytest

from convocationsd.client import AsyncClient, Client
from convocationsd.core import protocol
from convocationsd.core.errors import ConvError, DaemonUnreachable, NoReply, RemoteError
from tests.conftest import readable


class StandIn:
    """A listening socket whose one connection is served by ``script(conn_file)`` in a thread."""

    def __init__(self, path, script) -> None:
        self.path = str(path)
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rwb") as f:
            script(self, f)

    def read_request(self, f) -> dict:
        line = f.readline()
        self.requests.append(line)
        return json.loads(line)

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


def reply_with(*lines: bytes):
    def script(standin: StandIn, f) -> None:
        standin.read_request(f)
        for line in lines:
            f.write(line)
        f.flush()
        f.readline()  # hold the connection until the client goes

    return script


def test_no_answer_in_time_is_no_reply_not_unreachable(short_tmp):
    standin = StandIn(short_tmp / "s", reply_with())
    with Client(standin.path, timeout=0.3) as c, pytest.raises(NoReply) as e:
        c.call("oauth.exchange", {"code": "c"})
    assert not isinstance(e.value, DaemonUnreachable) and e.value.exit_code == 1
    assert e.value.message == "The daemon did not answer `oauth.exchange` in time."
    assert "convctl status" in e.value.hint
    standin.close()
    # The request line is protocol.request_line's.
    assert standin.requests == [protocol.request_line(1, "oauth.exchange", {"code": "c"})]


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b"\xff\xfe\n", b"7\n"])
def test_malformed_line_is_a_clear_error(short_tmp, line):
    standin = StandIn(short_tmp / "s", reply_with(line))
    with Client(standin.path, timeout=5) as c, pytest.raises(ConvError) as e:
        c.call("status")
    assert type(e.value) is ConvError and "not a JSON-RPC message" in e.value.message
    standin.close()


def test_remote_error_carries_its_kind(short_tmp):
    error = protocol.error_line(
        1, protocol.OPERATION_FAILED, "Not accepted.", {"kind": "CodeRejected", "hint": "Again."}
    )
    standin = StandIn(short_tmp / "s", reply_with(error))
    with Client(standin.path, timeout=5) as c, pytest.raises(RemoteError) as e:
        c.call("oauth.exchange", {"code": "c"})
    assert (e.value.code, e.value.kind, e.value.message, e.value.hint) == (
        -32000,
        "CodeRejected",
        "Not accepted.",
        "Again.",
    )
    standin.close()


def test_closed_connection_is_unreachable(short_tmp):
    standin = StandIn(short_tmp / "s", lambda standin, f: standin.read_request(f))  # reads, then closes
    with Client(standin.path, timeout=5) as c, pytest.raises(DaemonUnreachable):
        c.call("status")
    standin.close()


# -- AsyncClient ---------------------------------------------------------------------------------------------


async def serve_once(path, handler) -> asyncio.AbstractServer:
    return await asyncio.start_unix_server(handler, str(path))


async def test_async_call_after_the_connection_ended_fails_fast(short_tmp):
    async def handler(reader, writer):
        writer.close()  # the daemon goes away at once

    server = await serve_once(short_tmp / "s", handler)
    c = AsyncClient(short_tmp / "s")
    await c.connect()
    await asyncio.wait_for(c._reader_task, 5)  # the read loop has seen the end
    with pytest.raises(DaemonUnreachable):
        await asyncio.wait_for(c.call("status"), 5)  # used to wait forever
    await c.close()
    server.close()


async def test_async_malformed_line_fails_the_call_and_is_logged(short_tmp, caplog):
    async def handler(reader, writer):
        await reader.readline()
        writer.write(b"garbage\n")
        await writer.drain()
        await reader.read()  # until the client closes

    server = await serve_once(short_tmp / "s", handler)
    c = AsyncClient(short_tmp / "s")
    await c.connect()
    with caplog.at_level(logging.WARNING, logger="convocationsd.client"):
        with pytest.raises(ConvError, match="not a JSON-RPC message"):
            await asyncio.wait_for(c.call("status"), 5)
        assert [ev async for ev in c.events()] == []  # the event stream ends too
    assert "not a JSON-RPC message" in caplog.text
    with pytest.raises(DaemonUnreachable):
        await asyncio.wait_for(c.call("status"), 5)
    await c.close()
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    server.close()


async def test_async_request_lines_and_remote_error_kind(short_tmp):
    seen: list[bytes] = []

    async def handler(reader, writer):
        for reply in (
            protocol.result_line(1, {"ok": True}),
            protocol.error_line(2, protocol.OPERATION_FAILED, "No.", {"kind": "CodeRejected", "hint": ""}),
        ):
            seen.append(await reader.readline())
            writer.write(reply)
        await reader.read()

    server = await serve_once(short_tmp / "s", handler)
    async with AsyncClient(short_tmp / "s") as c:
        assert await c.call("status") == {"ok": True}
        with pytest.raises(RemoteError) as e:
            await c.call("oauth.exchange", {"code": "x"})
    assert e.value.kind == "CodeRejected"
    assert seen == [protocol.request_line(1, "status"), protocol.request_line(2, "oauth.exchange", {"code": "x"})]
    server.close()


# -- a daemon that refuses the client (another uid) and closes -----------------------------------------------

REFUSAL = protocol.error_line(
    None,
    protocol.OPERATION_FAILED,
    "Permission denied: this daemon serves only its own user (uid 0), and this client runs as uid 65534.",
    {"kind": "PermissionDenied", "hint": "Start a convocationsd of your own."},
)


def refuse_and_close(standin: StandIn, f) -> None:
    """As a daemon did before it drained a refused client's input: the line, then close at once."""
    f.write(REFUSAL)
    f.flush()


def wait_readable(sock, timeout: float = 5.0) -> None:
    assert readable(sock, timeout), "the stand-in sent nothing"


def test_refusal_before_the_first_request_is_the_error(short_tmp):
    """The daemon wrote its refusal and closed before the request was sent, so sending fails (EPIPE or
    ECONNRESET): the error is still the refusal, not "cannot reach the daemon"."""
    standin = StandIn(short_tmp / "s", refuse_and_close)
    with Client(standin.path, timeout=5) as c:
        wait_readable(c._sock)
        standin.thread.join(5)  # closed
        with pytest.raises(RemoteError) as e:
            c.call("status")
    assert e.value.kind == "PermissionDenied" and e.value.message.startswith("Permission denied: ")
    assert e.value.hint == "Start a convocationsd of your own."
    standin.close()


async def test_async_refusal_is_the_error_of_every_call(short_tmp):
    """As the daemon refuses: the line, the end of output, what the client sends is read, then the close."""

    async def handler(reader, writer):
        writer.write(REFUSAL)
        writer.write_eof()
        await reader.read()
        writer.close()

    server = await serve_once(short_tmp / "s", handler)
    c = AsyncClient(short_tmp / "s")
    await c.connect()
    with pytest.raises(RemoteError) as e:
        await asyncio.wait_for(c.call("status"), 5)
    assert e.value.kind == "PermissionDenied" and e.value.message.startswith("Permission denied: ")
    with pytest.raises(RemoteError):  # and every later call
        await asyncio.wait_for(c.call("status"), 5)
    await c.close()
    server.close()
