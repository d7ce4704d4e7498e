"""Clients for the daemon's socket: a blocking one (the CLI; imports nothing heavy, not even asyncio)
and an asyncio one for Python frontends. Both speak docs/protocol.md: JSON-RPC 2.0, one object a line.
"""

from __future__ import annotations

# The C module under the usual name: socket.py adds nothing this client uses, and building its enums on
# import was a tenth of a `convctl status` (bench/ANALYSIS.md).
import _socket as socket
import json
import os
import time
from collections import deque
from pathlib import Path

from convocationsd.common.paths import check_socket_dir
from convocationsd.common.peercred import describe_uid, peer_uid, trusted_uid
from convocationsd.core import protocol
from convocationsd.core.errors import ConvError, DaemonUnreachable, NoReply, RemoteError, UntrustedSocket

TYPE_CHECKING = False  # not from typing: importing typing is ~10 % of `convctl status` (bench/ANALYSIS.md)
if TYPE_CHECKING:  # typing is not imported at run time: convctl starts faster without it
    from collections.abc import AsyncIterator, Iterator
    from typing import Any

START_HINT = "Start it with `convocationsd` (or `systemctl --user start convocationsd.socket`)."


def default_socket_path() -> Path:
    from convocationsd.common.paths import socket_path

    return socket_path(os.environ)


def _unreachable(path: Path, err: OSError) -> DaemonUnreachable:
    if isinstance(err, (FileNotFoundError, ConnectionRefusedError)):
        return DaemonUnreachable(f"The convocationsd daemon is not running (nothing listens on {path}).", START_HINT)
    return DaemonUnreachable(f"Cannot reach the convocationsd daemon at {path}: {err.strerror or err}.", START_HINT)


def _check_peer(sock: Any, path: Path) -> None:
    """Before a byte is sent: the process serving ``path`` must be our own user's (or root's), else anyone
    who can put a socket where we look (CONVOCATIONS_SOCKET in /tmp, say) would be handed our requests,
    keys included."""
    uid = peer_uid(sock)
    if not trusted_uid(uid):
        raise UntrustedSocket(
            f"The socket {path} is served by {describe_uid(uid)}, not by you, so nothing was sent to it.",
            "Someone may be posing as convocationsd: check CONVOCATIONS_SOCKET (or --socket), "
            "and start your own daemon with `convocationsd`.",
        )


def _remote_error(error: dict[str, Any]) -> RemoteError:
    data = error.get("data")
    if not isinstance(data, dict):
        data = {}
    kind = data.get("kind")
    return RemoteError(
        int(error.get("code", -32603)),
        str(error.get("message", "unknown error")),
        str(data.get("hint", "")),
        kind if isinstance(kind, str) else None,
    )


def _closing_error(message: dict[str, Any]) -> RemoteError | None:
    """The error of a line without an id: what the daemon says as it closes the connection (it refuses a
    client of another user with one, "Permission denied: ..."), else None."""
    error = message.get("error")
    if message.get("id") is None and isinstance(error, dict):
        return _remote_error(error)
    return None


def _decode(line: bytes, path: Path) -> dict[str, Any]:
    """One line from the daemon as a JSON object; anything else is a clear error, not a traceback."""
    try:
        message = json.loads(line)
    except ValueError:  # UnicodeDecodeError is one too
        message = None
    if not isinstance(message, dict):
        # The line itself is not shown: it may be part of an answer that carries the key.
        raise ConvError(
            f"The daemon at {path} sent a line that is not a JSON-RPC message.",
            "Check that CONVOCATIONS_SOCKET names convocationsd's socket, then restart the daemon.",
        )
    return message


class Client:
    """Blocking client. Events that arrive while waiting for a reply are kept for ``next_event``."""

    def __init__(self, path: Path | str | None = None, *, timeout: float = 10.0) -> None:
        self.path = Path(path) if path else default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._events: deque[dict[str, Any]] = deque()
        self._next_id = 0

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        check_socket_dir(self.path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
            _check_peer(sock, self.path)
        except OSError as e:
            sock.close()
            raise _unreachable(self.path, e) from None
        except UntrustedSocket:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._next_id += 1
        id_ = self._next_id
        try:
            self._sock.sendall(protocol.request_line(id_, method, params))
        except OSError as e:
            # The daemon may have said why before it closed (a refusal): that, rather than a broken pipe.
            raise self._said_before_closing() or _unreachable(self.path, e) from None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self._read(deadline)
            if message is None:
                raise NoReply(method)
            if message.get("method") == "event":
                self._events.append(message.get("params", {}))
            elif message.get("id") == id_ or (message.get("id") is None and "error" in message):
                if "error" in message:
                    raise _remote_error(message["error"])
                return message.get("result")

    def _said_before_closing(self) -> RemoteError | None:
        """After a failed send: the error line the daemon sent before it closed, if it is already here."""
        assert self._sock is not None
        data = self._buf
        if b"\n" not in data:
            self._sock.settimeout(0.0)
            try:
                data += self._sock.recv(65536)
            except OSError:  # nothing there (EAGAIN), or only the reset
                return None
            finally:
                self._sock.settimeout(self.timeout)
        try:
            message = json.loads(data.split(b"\n", 1)[0])
        except ValueError:
            return None
        return _closing_error(message) if isinstance(message, dict) else None

    def next_event(self, timeout: float | None) -> dict[str, Any] | None:
        """The next event's params ``{event, seq, data}``, or None when ``timeout`` passes first."""
        if self._events:
            return self._events.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message is None:
                return None
            if message.get("method") == "event":
                params: dict[str, Any] = message.get("params", {})  # an object, as docs/protocol.md says
                return params

    def events(self) -> Iterator[dict[str, Any]]:
        while True:
            event = self.next_event(None)
            if event is not None:
                yield event

    def _read(self, deadline: float | None) -> dict[str, Any] | None:
        assert self._sock is not None
        while b"\n" not in self._buf:
            # The socket's own timeout (poll() inside), not select(), which refuses descriptors from 1024 on.
            remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as e:
                raise _unreachable(self.path, e) from None
            finally:
                self._sock.settimeout(self.timeout)
            if not chunk:
                raise DaemonUnreachable("The daemon closed the connection (it stopped or restarted).", START_HINT)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return _decode(line, self.path)


def status_with_account(c: Client, wait: float = 3.0) -> dict[str, Any]:
    """``status``; when a key is stored but the daemon has not asked OpenRouter about it yet (it does that
    in the background), asks again for up to ``wait`` seconds so the account line can be shown."""
    deadline = time.monotonic() + wait
    st: dict[str, Any] = c.call("status")
    while (
        "account" in st
        and st["account"] is None
        and (st.get("secret") or {}).get("stored")
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
        st = c.call("status")
    return st


class AsyncClient:
    """asyncio client for Python frontends::

    async with AsyncClient() as c:
        await c.call("subscribe", {"events": ["openrouter-auth-complete"]})
        reply = await c.call("oauth.start")
        async for event in c.events():
            ...
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_socket_path()
        self._reader: Any = None
        self._writer: Any = None
        self._pending: dict[int, Any] = {}
        self._events: Any = None
        self._reader_task: Any = None
        self._next_id = 0
        self._refusal: RemoteError | None = None  # why the daemon closed the connection, when it said

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        import asyncio

        check_socket_dir(self.path.parent)
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=2**20 + 2)
        except OSError as e:
            raise _unreachable(self.path, e) from None
        try:
            _check_peer(writer.get_extra_info("socket"), self.path)
        except UntrustedSocket:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        self._events = asyncio.Queue()
        self._reader_task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        """Hands replies to their callers and events to ``events()``. Whatever ends it (the daemon
        closing, a reset, a malformed line) fails the calls still waiting, and is logged here, since
        nobody awaits this task."""
        error: ConvError = DaemonUnreachable("The daemon closed the connection.", START_HINT)
        try:
            while line := await self._reader.readline():
                message = _decode(line, self.path)
                closing = _closing_error(message)
                if closing is not None:  # the daemon's last word (a refusal): every waiting call gets it
                    error = self._refusal = closing
                elif message.get("method") == "event":
                    self._events.put_nowait(message.get("params", {}))
                elif (future := self._pending.pop(message.get("id"), None)) is not None and not future.done():  # type: ignore[arg-type]
                    future.set_result(message)
        except Exception as e:
            import logging

            # Expected: a malformed line (ConvError), a reset (OSError), a line over the limit (ValueError).
            expected = isinstance(e, (ConvError, OSError, ValueError))
            if isinstance(e, ConvError):
                error = e
            else:
                error = DaemonUnreachable(f"The connection to the daemon failed: {e}.", START_HINT)
            logging.getLogger(__name__).warning(
                "connection to the daemon ended: %s", error.message, exc_info=not expected
            )
        finally:
            self._writer.close()  # nothing reads this connection any more
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)
            self._events.put_nowait(None)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        import asyncio

        if self._reader_task is None or self._reader_task.done():
            # Nothing would ever read the answer: fail now rather than wait forever.
            raise self._refusal or DaemonUnreachable("The connection to the daemon is closed.", START_HINT)
        self._next_id += 1
        id_ = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        try:
            self._writer.write(protocol.request_line(id_, method, params))
            await self._writer.drain()
        except OSError as e:
            self._pending.pop(id_, None)
            # The daemon may have said why before it closed (a refusal): its line is the reader's to find.
            await asyncio.wait({self._reader_task}, timeout=1.0)
            raise self._refusal or _unreachable(self.path, e) from None
        message = await future
        if "error" in message:
            raise _remote_error(message["error"])
        return message.get("result")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self._events.get()) is not None:
            yield event

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        if self._reader_task is not None:
            self._reader_task.cancel()
