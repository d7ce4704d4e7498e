"""Blocking request/response harnesses, each used unchanged for every server it measures.

A target is a request (bytes), a ``reply_length(buffer) -> int`` that says how many bytes the first
complete reply takes (0: not complete yet), and a ``read_reply(file)`` for the buffered client. Two loops,
the same for all targets, each repeating on one connection: the raw one (``sendall`` the request, ``recv``
until one reply is complete) and the plain one a script would write (``sendall``, then read the reply from
``sock.makefile("rb")``: ``readline()`` for JSON lines).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

ReplyLength = Callable[[bytes], int]
ReadReply = Callable[[BinaryIO], bytes]


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


def read_line(f: BinaryIO) -> bytes:
    """Newline-delimited JSON-RPC, as a plain client reads it."""
    return f.readline()


def read_ssh_agent(f: BinaryIO) -> bytes:
    """ssh-agent's framing, as a plain client reads it."""
    head = f.read(4)
    return head + f.read(int.from_bytes(head, "big"))


STATUS_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'
SSH_AGENTC_REQUEST_IDENTITIES = (1).to_bytes(4, "big") + bytes([11])
SSH_AGENT_IDENTITIES_ANSWER = 12


@dataclass
class Target:
    name: str
    path: str
    request: bytes
    reply_length: ReplyLength
    read_reply: ReadReply


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


def run_buffered(sock: socket.socket, request: bytes, read_reply: ReadReply, *, duration: float) -> Run:
    """Like :func:`run`, reading each reply through ``sock.makefile("rb")``."""
    clock = time.perf_counter
    send = sock.sendall
    latencies: list[float] = []
    append = latencies.append
    with sock.makefile("rb") as f:
        start = clock()
        end = start + duration
        t = start
        count = 0
        while t < end:
            send(request)
            if not read_reply(f):
                raise ConnectionError("the server closed the connection")
            now = clock()
            append(now - t)
            t = now
            count += 1
    return Run(count, t - start, latencies)
