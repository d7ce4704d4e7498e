"""The Unix-socket door: JSON-RPC 2.0, one object per line, for the CLI and frontends.

Built on ``asyncio.BufferedProtocol`` rather than streams: framing is a ``bytes.split`` over what arrived,
and a subscriber's bounded queue is simply the transport's write buffer. A client that stops reading lets
that buffer grow past ``queue_limit`` and is disconnected, without anyone else waiting for it.

Reads go into one buffer shared by all connections (``get_buffer`` and ``buffer_updated`` run back to back
in the loop's thread). A plain ``Protocol`` costs more than half the round trip on Python 3.11: its
transport calls ``recv(256 KiB)`` for every read, and a fresh 256 KiB bytes object is an mmap/munmap pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from convocationsd.common.paths import ensure_socket_dir
from convocationsd.common.peercred import describe_uid, peer_uid
from convocationsd.core import protocol
from convocationsd.core.errors import ConvError
from convocationsd.core.events import EventBus

log = logging.getLogger(__name__)

Handler = Callable[["Connection", dict[str, Any]], Any]  # returns a result or an awaitable of one

QUEUE_LIMIT = 256 * 1024  # bytes of unsent events before a subscriber counts as stuck
READ_SIZE = 64 * 1024  # bytes per read, into the shared buffer
CLOSE_FLUSH_SECONDS = 1.0  # at shutdown, time for clients to take what was written (the "cancelled" event)
CLOSE_WAIT_SECONDS = 2.0  # then at most this long for the server to report every connection gone


class Connection(asyncio.BufferedProtocol):
    def __init__(self, server: IpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.uid: int | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.uid = peer_uid(transport.get_extra_info("socket"))
        if self.uid != self.server.uid:
            log.warning(
                "refused a socket client running as uid %s (this daemon runs as uid %s)", self.uid, self.server.uid
            )
            transport.write(
                protocol.error_line(
                    None, protocol.OPERATION_FAILED, "Permission denied: this daemon serves only its own user."
                )
            )
            self.close()
            return
        self.server.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.server.touch()
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)

    # -- requests ------------------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        try:
            request = protocol.parse_request(line)
        except protocol.ProtocolError as e:
            self.write(protocol.error_line(e.id, e.code, e.message))
            return
        handler = self.server.handlers[request.method]
        try:
            result = handler(self, request.params)
        except Exception as e:
            self.reply_error(request.id, e)
            return
        if not isinstance(result, dict) and isinstance(result, Awaitable):  # dict first: a cheaper check
            task = asyncio.ensure_future(result)
            self.server.tasks.add(task)
            task.add_done_callback(lambda t: self._finish(request.id, t))
        elif request.id is not None:
            self.write(protocol.result_line(request.id, result))

    def _finish(self, id_: Any, task: asyncio.Future) -> None:
        self.server.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even for a notification, which also gets it logged if unexpected
        if exc is not None:
            self.reply_error(id_, exc)
        elif id_ is not None:
            self.write(protocol.result_line(id_, task.result()))

    def reply_error(self, id_: Any, exc: BaseException) -> None:
        """Answers a failed request; a notification (``id_`` None) gets no answer (JSON-RPC 2.0), but an
        unexpected error is logged either way."""
        unexpected = not isinstance(exc, (protocol.ProtocolError, ConvError))
        if unexpected:
            log.error("internal error while answering a request", exc_info=exc)
        if id_ is None:
            return
        if isinstance(exc, protocol.ProtocolError):
            self.write(protocol.error_line(id_, exc.code, exc.message))
        elif isinstance(exc, ConvError):
            data = {"kind": type(exc).__name__, "hint": exc.hint}
            self.write(protocol.error_line(id_, protocol.OPERATION_FAILED, exc.message, data))
        else:
            self.write(protocol.error_line(id_, protocol.INTERNAL_ERROR, "Internal error; see the daemon's log."))

    def _too_long(self) -> None:
        self.write(protocol.error_line(None, protocol.INVALID_REQUEST, "Line longer than 1 MiB; closing."))
        self.close()

    # -- output --------------------------------------------------------------------------------------

    def write(self, line: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(line)

    def send(self, line: bytes) -> bool:
        """Event sink for the bus: False (and disconnect) when this client has stopped reading."""
        if self.closed or self.transport is None:
            return False
        if self.transport.get_write_buffer_size() > self.server.queue_limit:
            log.warning("disconnected a subscriber that stopped reading events")
            self.transport.abort()
            self.closed = True
            return False
        self.transport.write(line)
        return True

    def close(self) -> None:
        """Closes after what is already written has been sent: a client that stops reading keeps it open."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Closes at once, dropping what is unsent."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class IpcServer:
    def __init__(
        self,
        handlers: dict[str, Handler],
        bus: EventBus,
        *,
        on_activity: Callable[[], None] = lambda: None,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        missing = set(protocol.METHODS) - set(handlers)
        if missing:
            raise ValueError(f"no handler for {sorted(missing)}")
        self.handlers = handlers
        self.bus = bus
        self.touch = on_activity
        self.queue_limit = queue_limit
        self.uid = os.getuid()
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Future] = set()
        self.read_view = memoryview(bytearray(READ_SIZE))  # shared by all connections, see the module doc
        self._server: asyncio.AbstractServer | None = None
        self._owned_path: Path | None = None
        self._owned_ino: int | None = None
        self._all_gone: asyncio.Event | None = None  # set when the last connection is gone, during close()

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
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
        for conn in list(self.connections):
            conn.close()  # flushes first: readers still get the last events (the "cancelled" of a SIGTERM)
        for task in list(self.tasks):
            task.cancel()
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
            f"{path} is a socket that belongs to {describe_uid(st.st_uid)}, not to you.",
            "Set CONVOCATIONS_SOCKET to a path in a directory only you can write to.",
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
