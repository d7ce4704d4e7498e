"""The Unix-socket door: JSON-RPC 2.0, one request or batch per line, for the CLI and frontends.

Built on ``asyncio.BufferedProtocol`` rather than streams: framing is a ``bytes.split`` over what arrived.
What a client has not read yet waits in the transport's buffer and, behind it, in a per-connection list of the
very line objects the event bus encoded once. Two bounds keep clients that stop reading from costing
memory: a subscriber with more than ``queue_limit`` bytes waiting is disconnected, and when all connections
together pass ``total_limit``, those furthest behind are. Nobody else waits for them.

Reads go into one buffer shared by all connections (``get_buffer`` and ``buffer_updated`` run back to back
in the loop's thread). A plain ``Protocol`` costs more than half the round trip on Python 3.11: its
transport calls ``recv(256 KiB)`` for every read, and a fresh 256 KiB bytes object is an mmap/munmap pair.
The usual read, one request as convctl writes it, is matched in that buffer and answered without being
decoded (``_canonical``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import re
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from convocationsd.common.paths import ELSEWHERE, ensure_socket_dir
from convocationsd.common.peercred import describe_uid, peer_uid
from convocationsd.core import protocol
from convocationsd.core.errors import ConvError, kind_of
from convocationsd.core.events import EventBus
from convocationsd.daemon.logs import REFUSALS
from convocationsd.daemon.tasks import TaskSet

log = logging.getLogger(__name__)
# A client of another uid can be refused as often as it connects: one line per minute, with a count per uid
# (logs.REFUSALS, as the HTTP door's refusals), so that a flood cannot push the daemon's own lines out.
refusals = logging.getLogger(f"{__name__}.refusals")
refusals.addFilter(REFUSALS)

Handler = Callable[["Connection", dict[str, Any]], Any]  # returns a result or an awaitable of one
Answer = bytes | None  # a reply line, or None for a notification

QUEUE_LIMIT = 256 * 1024  # bytes waiting for one subscriber before it counts as stuck
TOTAL_LIMIT = 32 * 1024 * 1024  # bytes waiting for all connections together; past it the furthest behind go
READ_SIZE = 64 * 1024  # bytes per read, into the shared buffer
CHUNK = 64 * 1024  # bytes of queued lines handed to the transport at once
CLOSE_FLUSH_SECONDS = 1.0  # at shutdown, time for clients to take what was written (the "cancelled" event)
CLOSE_WAIT_SECONDS = 2.0  # then at most this long for the server to report every connection gone
# A refused client (another uid) may have sent its request before it reads: what it sent is read and dropped
# for this long, up to this many bytes, so that closing does not reset the connection (ECONNRESET, EPIPE)
# before it has read the refusal. Past either bound it is cut off: a refusal holds nothing for long.
REFUSAL_DRAIN_SECONDS = 1.0
REFUSAL_DRAIN_BYTES = 64 * 1024


class Reply:
    """The answer a connection owes for one request (or one batch). Events that request causes before it is
    answered wait on the connection and follow the answer: on a connection, the reply to a request always
    comes before any event it caused.

    It is the context of the request's handler (``_CAUSE``): an event published from there, or from a task
    or timer started there, finds it in ``Connection.send``. Once the answer is out, events pass straight
    through, so a timer that fires ten minutes later is not held."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn: Connection | None = conn  # None once answered
        conn.unanswered += 1

    def send(self, answer: Answer) -> None:
        """Writes ``answer`` (None: nothing, e.g. a request cancelled at shutdown), then what it held up."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        conn.unanswered -= 1
        if answer is not None:
            conn.write(answer)
        if conn.held:
            conn.release()
        if conn.eof:
            conn.close_if_done()


class PermissionDenied(ConvError):
    """A client that runs as another user: refused as it connects."""


def _failure_line(id_: Any, exc: ConvError) -> bytes:
    """The -32000 error of a failure a person can fix: ``data.kind`` names it, ``data.hint`` says what to do."""
    return protocol.error_line(
        id_, protocol.OPERATION_FAILED, exc.message, {"kind": kind_of(type(exc)), "hint": exc.hint}
    )


# The request line as convctl writes it (protocol.request_line), as do JSON.stringify and serde_json: compact,
# members in this order, an integer id, no params, a method that needs none. Decoding and checking such a line
# (parse_line) was a quarter of the daemon's cost per request; this match gives the same Request for a quarter of
# that (bench/ANALYSIS.md). Any other line (spaces, another order, params, a string id, an escape, an unknown
# method) takes parse_line. Group 1 is the id, written as JSON writes that integer (no "-0", no leading zero);
# groups 2… are the methods, so ``lastindex`` names the one that matched. At most 18 digits: a longer one
# takes the general path, which knows Python's limit on converting digits.
_CANONICAL_METHODS = ["", ""] + [  # (groups 0 and 1 are no method)
    name for name, spec in protocol.METHODS.items() if not any(required for _, required in spec.values())
]
_canonical = re.compile(
    rb'\{"jsonrpc":"2\.0","id":(0|-?[1-9][0-9]{0,17}),"method":"(?:'
    + b"|".join(b"(" + re.escape(name.encode()) + b")" for name in _CANONICAL_METHODS[2:])
    + rb')"\}'
).fullmatch
_RESULT_HEAD = b'{"jsonrpc":"2.0","id":'  # protocol.result_line, around an id and an Encoded result
_RESULT_MID = b',"result":'

_CAUSE: contextvars.ContextVar[Reply | None] = contextvars.ContextVar("convocationsd_ipc_cause", default=None)


class Connection(asyncio.BufferedProtocol):
    def __init__(self, server: IpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.uid: int | None = None
        self.unanswered = 0  # requests (or batches) whose answer is not written yet
        self.eof = False  # the client has shut down its sending side
        # Events held until the reply they follow is written, in seq order, each with that reply (or None:
        # not caused by a request of ours, but it may not overtake those before it).
        self.held: list[tuple[bytes, Reply | None]] = []  # (lists, not deques: an empty one costs 56 bytes)
        # Output the client has not taken yet (see "output" below): the transport's and the queue's.
        self.behind = False  # the transport holds unsent bytes (between pause_writing and resume_writing)
        self.unsent = 0  # how many, as of the last write: the client may have taken some since
        self.queue: list[bytes] = []  # lines waiting behind them, as they are
        self.queued = 0  # bytes in ``queue``
        self.backlog = 0  # unsent + queued, as the server counted them
        self.refused: asyncio.TimerHandle | None = None  # a refused client's deadline (see _refuse)
        self.drain_left = 0  # bytes of a refused client's input still to be read and dropped

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.uid = peer_uid(transport.get_extra_info("socket"))
        if self.uid != self.server.uid:
            refusals.warning(
                "refused a socket client running as uid %s (this daemon runs as uid %s)", self.uid, self.server.uid
            )
            refusal = PermissionDenied(
                f"Permission denied: this daemon serves only its own user (uid {self.server.uid}), "
                f"and this client runs as uid {self.uid}.",
                "Run the client as the user who runs convocationsd, or start a convocationsd of "
                "your own (its socket is in your own runtime directory).",
            )
            self._refuse(transport, _failure_line(None, refusal))
            return
        # High-water mark 0: pause_writing/resume_writing say exactly when bytes start and stop waiting.
        transport.set_write_buffer_limits(high=0)
        self.server.connections.add(self)
        self.server.touch()

    def _refuse(self, transport: asyncio.Transport, line: bytes) -> None:
        """Sends the refusal and the end of output, then drops what the client sends until it closes its side,
        REFUSAL_DRAIN_BYTES have come or REFUSAL_DRAIN_SECONDS have passed. Closing at once would leave its
        request unread in our socket, and the kernel then resets the connection: a client that writes first
        gets EPIPE or ECONNRESET and never reads the line."""
        self.closed = True  # no request of it is handled, nothing else is written
        transport.write(line)
        transport.write_eof()
        self.drain_left = REFUSAL_DRAIN_BYTES
        self.refused = asyncio.get_running_loop().call_later(REFUSAL_DRAIN_SECONDS, transport.abort)
        self.server.refused.add(self)

    def pause_writing(self) -> None:
        self.behind = True

    def resume_writing(self) -> None:
        """The transport has sent everything: hand it what waits in the queue, a chunk at a time."""
        assert self.transport is not None
        self.behind = False
        self.unsent = 0
        while self.queue and not self.behind:
            self.transport.write(self._take(CHUNK))
        if self.behind:
            self.unsent = self.transport.get_write_buffer_size()
        self._recount()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_view

    def buffer_updated(self, nbytes: int) -> None:
        if self.refused is not None:
            self.drain_left -= nbytes
            if self.drain_left <= 0 and self.transport is not None:
                self.transport.abort()
            return
        server = self.server
        end = nbytes - 1
        # The usual read: one whole request as convctl writes it, nothing pending before it. Matched in the
        # shared buffer itself (the match cannot span a newline, so it is exactly one line).
        if server.read_buf[end] == 10 and not self.buffer and not self.closed:
            m = _canonical(server.read_buf, 0, end)
            if m is not None:
                self._call_canonical(m[1], _CANONICAL_METHODS[m.lastindex])  # type: ignore[index]
                return
        self.data_received(server.read_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.buffer and data.find(b"\n") == len(data) - 1 >= 0 and len(data) <= protocol.MAX_LINE:
            # The usual read: exactly one whole request, nothing pending before it.
            if data.strip():
                self.handle_line(data[:-1])
            return
        buf = self.buffer
        buf += data
        if b"\n" not in data:
            if len(buf) > protocol.MAX_LINE:
                self._too_long()
            return
        *lines, rest = bytes(buf).split(b"\n")
        self.buffer = bytearray(rest)
        for line in lines:
            if len(line) > protocol.MAX_LINE:
                self._too_long()
                return
            if line.strip():
                self.handle_line(line)
            if self.closed:
                return
        if len(self.buffer) > protocol.MAX_LINE:
            self._too_long()

    def eof_received(self) -> bool:
        """The client has sent all it will (``echo '{…}' | socat - UNIX-CONNECT:…``): it still gets the
        answers to what it asked, a last line without its newline included, then the connection closes. (A
        subscriber too: a shut-down sending side cannot be told from a client that is gone, which would keep
        the daemon from ever idling out.)"""
        if self.refused is not None:
            return False  # a refused client has sent all it will: close now, nothing is left unread
        last, self.buffer = bytes(self.buffer), bytearray()
        if last.strip() and not self.closed:  # `printf '{…}' | socat …`: the end of input ends the line too
            self.handle_line(last)
        self.eof = True
        self.close_if_done()
        return True  # keep the transport open: close_if_done decides

    def close_if_done(self) -> None:
        if not self.unanswered:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.refused is not None:
            self.refused.cancel()
            self.server.refused.discard(self)
            return  # another user's visit is not activity: it must not keep the daemon from idling out
        self.server.forget(self)
        # Activity is counted when a connection comes and goes, not for each request: the daemon never
        # idles out while a connection is open, so the time since the last one closed is what counts.
        self.server.touch()

    # -- requests ------------------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        try:
            parsed = protocol.parse_line(line)
        except protocol.ProtocolError as e:
            if e.id is not protocol.NO_ID:  # an unknown method or bad params of a notification: no answer
                self.write(protocol.error_line(e.id, e.code, e.message))
            return
        if isinstance(parsed, list):
            self._batch(parsed)
        elif parsed.id is protocol.NO_ID:
            self._run(parsed, None)
        else:
            reply = Reply(self)
            answer = self._run(parsed, reply)
            if isinstance(answer, asyncio.Task):
                answer.add_done_callback(lambda task: reply.send(None if task.cancelled() else task.result()))
            else:
                reply.send(answer)

    def _call_canonical(self, id_text: bytes, method: str) -> None:
        """``handle_line`` for a line ``_canonical`` matched: the same steps, fused. The id's digits are
        its JSON text, so a result that carries its own JSON (``Encoded``) is spliced in as they are."""
        reply = Reply(self)
        token = _CAUSE.set(reply)
        try:
            result = self.server.handlers[method](self, {})
            text = result.json if type(result) is protocol.Encoded else None
            if text is not None:
                answer: Answer | asyncio.Task[Answer] = b"".join((_RESULT_HEAD, id_text, _RESULT_MID, text, b"}\n"))
            else:
                answer = self._settle(int(id_text), result)
        except Exception as e:  # also a result that cannot be encoded
            answer = self._error(int(id_text), e)
        finally:
            _CAUSE.reset(token)
        if isinstance(answer, asyncio.Task):
            answer.add_done_callback(lambda task: reply.send(None if task.cancelled() else task.result()))
        else:
            reply.send(answer)

    def _run(self, request: protocol.Request, reply: Reply | None) -> Answer | asyncio.Task[Answer]:
        """Calls the request's handler in the context of ``reply`` (None for a notification). Returns the
        answer line, or for a handler that must wait (a coroutine) a task that ends with it."""
        token = _CAUSE.set(reply)
        try:
            return self._settle(request.id, self.server.handlers[request.method](self, request.params))
        except Exception as e:  # also a result that cannot be encoded
            return self._error(request.id, e)
        finally:
            _CAUSE.reset(token)

    def _settle(self, id_: Any, result: Any) -> Answer | asyncio.Task[Answer]:
        """The answer line for a handler's result, or a task that waits for it; in the request's context."""
        if isinstance(result, dict) or not isinstance(result, Awaitable):  # dict first: a cheaper check
            return None if id_ is protocol.NO_ID else protocol.result_line(id_, result)
        return self.server.tasks.start(self._finish(id_, result))  # in this context: reply

    async def _finish(self, id_: Any, pending: Awaitable[Any]) -> Answer:
        try:
            result = await pending
            return None if id_ is protocol.NO_ID else protocol.result_line(id_, result)
        except Exception as e:
            return self._error(id_, e)

    def _batch(self, members: list[protocol.Request | protocol.ProtocolError]) -> None:
        """Runs a batch's members in order and answers them all in one array, once the last has finished;
        notifications have no place in it, and a batch of notifications only is not answered at all."""
        reply = Reply(self)
        answers: list[Answer | asyncio.Task[Answer]] = []
        for member in members:
            if isinstance(member, protocol.ProtocolError):
                if member.id is not protocol.NO_ID:
                    answers.append(protocol.error_line(member.id, member.code, member.message))
            else:
                answers.append(self._run(member, None if member.id is protocol.NO_ID else reply))
        tasks = [answer for answer in answers if isinstance(answer, asyncio.Task)]

        def finish(_: object = None) -> None:
            if not all(task.done() for task in tasks):
                return
            if any(task.cancelled() for task in tasks):  # shutting down
                reply.send(None)
                return
            done = [answer.result() if isinstance(answer, asyncio.Task) else answer for answer in answers]
            lines = [line for line in done if line is not None]
            reply.send(protocol.batch_line(lines) if lines else None)

        if not tasks:
            finish()
        for task in tasks:
            task.add_done_callback(finish)

    def _error(self, id_: Any, exc: BaseException) -> Answer:
        """The error reply for a failed request; a notification gets none (JSON-RPC 2.0), but an unexpected
        error is logged either way."""
        if not isinstance(exc, (protocol.ProtocolError, ConvError)):
            log.error("internal error while answering a request", exc_info=exc)
        if id_ is protocol.NO_ID:
            return None
        if isinstance(exc, protocol.ProtocolError):
            return protocol.error_line(id_, exc.code, exc.message)
        if isinstance(exc, ConvError):
            return _failure_line(id_, exc)
        return protocol.error_line(id_, protocol.INTERNAL_ERROR, "Internal error; see the daemon's log.")

    def _too_long(self) -> None:
        self.write(protocol.error_line(None, protocol.INVALID_REQUEST, "Line longer than 1 MiB; closing."))
        self.close()

    # -- output --------------------------------------------------------------------------------------
    #
    # While the client is behind (the transport holds bytes the socket would not take), further lines wait
    # in ``queue`` as they are. Every subscriber's queue holds the same event line objects, so a crowd of
    # subscribers that stopped reading costs pointers, not a copy of each event for each of them (a
    # transport's own buffer copies on Python 3.11). When the transport has sent all it had, it gets the next
    # chunk (resume_writing).

    def write(self, line: bytes) -> None:
        """Every line to the client goes through here, in order, so that the server counts what waits."""
        if self.closed or self.transport is None:
            return
        if self.behind:
            self.queue.append(line)
            self.queued += len(line)
        else:
            self.transport.write(line)
            if not self.behind:  # the socket took it all: the usual case
                return
            self.unsent = self.transport.get_write_buffer_size()
        self._recount()

    def _take(self, limit: int) -> bytes:
        """The queue's first lines, at least ``limit`` bytes of them (or all), as one piece."""
        count = size = 0
        for line in self.queue:
            if size >= limit:
                break
            count += 1
            size += len(line)
        chunk = b"".join(self.queue[:count])
        del self.queue[:count]
        self.queued -= size
        return chunk

    def _recount(self) -> None:
        self.server.count(self, self.unsent + self.queued)

    def send(self, line: bytes) -> bool:
        """Event sink for the bus: False (and disconnect) when this client has stopped reading."""
        if self.closed or self.transport is None:
            return False
        reply = _CAUSE.get()
        if reply is not None and reply.conn is not self:
            reply = None  # caused by another connection's request, or by one of ours already answered
        if reply is not None or self.held:
            self.held.append((line, reply))  # after that answer, and after the events held before it
            return True
        return self._deliver(line)

    def release(self) -> None:
        """Sends the held events whose replies are out, in order, up to the first that must still wait."""
        ready = 0
        for _, reply in self.held:
            if reply is not None and reply.conn is not None:
                break
            ready += 1
        lines = [line for line, _ in self.held[:ready]]
        del self.held[:ready]
        for line in lines:
            if not self._deliver(line):
                self.held.clear()
                return

    def _deliver(self, line: bytes) -> bool:
        if self.backlog > self.server.queue_limit and self.measure() > self.server.queue_limit:
            log.warning("disconnected a subscriber that stopped reading events")
            self.abort()
            return False
        self.write(line)
        return not self.closed  # the total bound may have cut us off

    def measure(self) -> int:
        """Replaces the counted backlog with the exact figure (the client may have read some since)."""
        assert self.transport is not None
        self.unsent = self.transport.get_write_buffer_size()
        self.server.count(self, self.unsent + self.queued, shed=False)
        return self.backlog

    def close(self) -> None:
        """Closes after what is already written has been sent: a client that stops reading keeps it open."""
        if not self.closed and self.transport is not None:
            if self.queue:
                self.transport.write(self._take(self.queued))
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Closes at once, dropping what is unsent."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
            self.queue.clear()
            self.queued = self.unsent = 0
            self.server.count(self, 0)


class IpcServer:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        bus: EventBus,
        *,
        on_activity: Callable[[], None] = lambda: None,
        queue_limit: int = QUEUE_LIMIT,
        total_limit: int = TOTAL_LIMIT,
    ) -> None:
        missing = set(protocol.METHODS) - set(handlers)
        if missing:
            raise ValueError(f"no handler for {sorted(missing)}")
        self.handlers = handlers
        self.bus = bus
        self.touch = on_activity
        self.queue_limit = queue_limit
        self.total_limit = total_limit
        self.uid = os.getuid()
        self.connections: set[Connection] = set()
        self.refused: set[Connection] = set()  # refused clients whose input is being dropped (Connection._refuse)
        self.behind: set[Connection] = set()  # connections with bytes waiting, counted in ``backlog``
        self.backlog = 0  # bytes waiting for all connections together (see Connection.backlog)
        self.tasks = TaskSet()  # the requests that wait on something: close() cancels them
        self.read_buf = bytearray(READ_SIZE)  # shared by all connections, see the module doc
        self.read_view = memoryview(self.read_buf)
        self._server: asyncio.AbstractServer | None = None
        self._owned_path: Path | None = None
        self._owned_ino: int | None = None
        self._all_gone: asyncio.Event | None = None  # set when the last connection is gone, during close()

    def count(self, conn: Connection, size: int, *, shed: bool = True) -> None:
        """Records that ``size`` bytes wait for ``conn``; past the total bound, sheds the furthest behind."""
        grew = size > conn.backlog
        self.backlog += size - conn.backlog
        conn.backlog = size
        if size:
            self.behind.add(conn)
        else:
            self.behind.discard(conn)
        if shed and grew and self.backlog > self.total_limit:
            self._shed()

    def _shed(self) -> None:
        """The count passed the bound. It can only be too high (a client that took part of what its transport
        held is not noticed until it has taken all of it), so measure first; if it is really over, disconnect
        the connections with the most waiting until a quarter of the bound is free again."""
        for conn in list(self.behind):
            conn.measure()
        if self.backlog <= self.total_limit:
            return
        goal = self.total_limit * 3 // 4
        dropped = freed = 0
        for conn in sorted(self.behind, key=lambda c: c.backlog, reverse=True):
            if self.backlog <= goal:
                break
            freed += conn.backlog
            dropped += 1
            conn.abort()
        log.warning(
            "disconnected %d client(s) that stopped reading: %.1f MiB waited for them, more than the %.0f MiB "
            "all clients together may have waiting",
            dropped,
            freed / 2**20,
            self.total_limit / 2**20,
        )

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.count(conn, 0)
        self.bus.unsubscribe(conn)
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # Python 3.13+ would unlink the socket's path on close; whose file it is, we decide (own_socket).
        extra: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock, **extra)

    def own_socket(self, path: Path) -> None:
        """Marks ``path`` as created by us, to be removed at close (an inherited socket is not)."""
        self._owned_path, self._owned_ino = path, os.stat(path).st_ino

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.refused):
            conn.abort()
        for conn in list(self.connections):
            conn.close()  # flushes first: readers still get the last events (the "cancelled" of a SIGTERM)
        await self.tasks.close()
        if self.connections:
            self._all_gone = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), CLOSE_FLUSH_SECONDS)
        # A client that stopped reading would hold its connection open forever, and since Python 3.12
        # wait_closed() waits for every connection: cut off whoever has not taken their events by now.
        stuck = list(self.connections)
        for conn in stuck:
            conn.abort()
        if stuck:
            log.info(
                "closed %d client connection(s) that were not reading; their unsent events were dropped", len(stuck)
            )
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_WAIT_SECONDS)
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        # Remove only the file we created: a second daemon's or systemd's socket is not ours to delete.
        if self._owned_path is None:
            return
        try:
            if os.stat(self._owned_path).st_ino == self._owned_ino:
                os.unlink(self._owned_path)
        except FileNotFoundError:
            pass


class SocketInUse(ConvError):
    pass


def bind_unix_socket(path: Path) -> socket.socket:
    ensure_socket_dir(path.parent)
    if os.path.lexists(path):
        _recover_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise ConvError(f"Cannot create the socket {path}: {e.strerror}.", "Check the path and its directory.") from e
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _recover_stale(path: Path) -> None:
    """A socket file left behind: if something answers on it, another daemon runs; else remove it.
    Another user's file is never touched (root could unlink it, even in /tmp)."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise ConvError(f"{path} exists and is not a socket.", "Move it away or set CONVOCATIONS_SOCKET elsewhere.")
    if st.st_uid != os.getuid():
        raise ConvError(
            f"{path} is a socket that belongs to {describe_uid(st.st_uid)}, not to you.", f"Set {ELSEWHERE}"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConvError(
                f"Cannot check the existing socket {path}: {e.strerror}.", "Remove it if no daemon runs."
            ) from e
        log.info("removing a stale socket left by a daemon that did not exit cleanly: %s", path)
        os.unlink(path)
    else:
        raise SocketInUse(
            f"Another convocationsd is already running on {path}.",
            "Use it (`convctl status`), or stop it first (`systemctl --user stop convocationsd` or kill it).",
        )
    finally:
        probe.close()
