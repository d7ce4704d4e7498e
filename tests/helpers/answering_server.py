"""A stand-in for OpenRouter that answers every request with one chosen answer and records what it was asked:
for answers the fake OpenRouter never gives (a captive portal's page, a proxy's error, a garbled status line).

    with AnsweringServer(200, b"<html>portal</html>") as server:
        ... server.url ... server.seen  # [(method, path, Authorization header), ...]
"""

from __future__ import annotations

import socket
import threading


class AnsweringServer:
    """A real TCP server on 127.0.0.1: each connection's request is read, recorded and answered with
    ``HTTP/1.1 <status>`` and ``body``, or with ``raw`` bytes as they are; then the connection closes."""

    def __init__(self, status: int = 200, body: bytes = b"", *, raw: bytes | None = None) -> None:
        self.answer = raw if raw is not None else self._response(status, body)
        self.seen: list[tuple[str, str, str | None]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @staticmethod
    def _response(status: int, body: bytes) -> bytes:
        head = f"HTTP/1.1 {status} Whatever\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return head.encode() + body

    def __enter__(self) -> AnsweringServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone would not, on Linux)
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                lines = request.decode("latin-1").split("\r\n")
                method, _, rest = lines[0].partition(" ")
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                self.seen.append((method, rest.rpartition(" ")[0], headers.get("Authorization")))
                conn.sendall(self.answer)
