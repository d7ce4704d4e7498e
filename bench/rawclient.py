"""One blocking raw-socket request/response harness, used unchanged for every server it measures.

A target is a request (bytes) and a ``reply_length(buffer) -> int`` that says how many bytes the first
complete reply takes (0: not complete yet). The loop is the same for all targets: ``sendall`` the request,
``recv`` until one reply is complete, record the time, repeat on the same connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

ReplyLength = Callable[[bytes], int]


def line_reply(buf: bytes) -> int:
    """Newline-delimited JSON-RPC (convocationsd)."""
    end = buf.find(b"\n")
    return end + 1 if end >= 0 else 0


def ssh_agent_reply(buf: bytes) -> int:
    """ssh-agent protocol: uint32 length, then that many bytes."""
    if len(buf) < 4:
        return 0
    need = 4 + int.from_bytes(buf[:4], "big")
    return need if len(buf) >= need else 0


STATUS_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'
SSH_AGENTC_REQUEST_IDENTITIES = (1).to_bytes(4, "big") + bytes([11])
SSH_AGENT_IDENTITIES_ANSWER = 12


@dataclass
class Target:
    name: str
    path: str
    request: bytes
    reply_length: ReplyLength


@dataclass
class Run:
    count: int
    elapsed: float
    latencies: list[float]  # seconds, one per request

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def call(sock: socket.socket, request: bytes, reply_length: ReplyLength) -> bytes:
    sock.sendall(request)
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
        n = reply_length(buf)
        if n:
            return buf[:n]


def run(
    sock: socket.socket, request: bytes, reply_length: ReplyLength, *, duration: float, max_count: int = 10_000_000
) -> Run:
    """Sequential requests on ``sock`` for ``duration`` seconds (or ``max_count`` requests)."""
    clock = time.perf_counter
    send, recv = sock.sendall, sock.recv
    latencies: list[float] = []
    append = latencies.append
    start = clock()
    end = start + duration
    t = start
    count = 0
    while t < end and count < max_count:
        send(request)
        buf = recv(65536)
        while not reply_length(buf):
            chunk = recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
        now = clock()
        append(now - t)
        t = now
        count += 1
    return Run(count, t - start, latencies)
