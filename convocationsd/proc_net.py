"""Reading Linux's TCP tables (/proc/net/tcp, tcp6): who listens on a port, who owns a connection.

Loopback HTTP is reachable by every user of the machine, and headers are only words; the kernel's table
says which uid really opened a connection. Parsing is pure; only ``read_tables`` touches /proc.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"


@dataclass(frozen=True)
class TcpEntry:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    uid: int
    inode: int


def hex_address(text: str) -> str:
    """A /proc/net/tcp{,6} address (host-order 32-bit words in hex) as text."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _endpoint(field: str) -> tuple[str, int]:
    addr, _, port = field.partition(":")
    return hex_address(addr), int(port, 16)


def parse_table(text: str) -> Iterator[TcpEntry]:
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            yield TcpEntry(_endpoint(fields[1]), _endpoint(fields[2]), fields[3], int(fields[7]), int(fields[9]))
        except ValueError:
            continue


def read_tables(proc: Path = Path("/proc")) -> Iterator[TcpEntry]:
    for table in ("tcp", "tcp6"):
        try:
            text = (proc / "net" / table).read_text()
        except OSError:
            continue
        yield from parse_table(text)


def available(proc: Path = Path("/proc")) -> bool:
    return (proc / "net" / "tcp").exists()


def connection_uid(client: tuple, server: tuple, entries: Iterable[TcpEntry] | None = None) -> int | None:
    """The uid that owns the client end of a loopback connection (``client``/``server`` as from
    getpeername/getsockname on the server side), or None when the kernel does not list it."""
    want_local = (_normal(client[0]), client[1])
    want_remote = (_normal(server[0]), server[1])
    for entry in read_tables() if entries is None else entries:
        if entry.local == want_local and entry.remote == want_remote:
            return entry.uid
    return None


def _normal(address: str) -> str:
    return socket.inet_ntop(*_family_packed(address))


def _family_packed(address: str) -> tuple[int, bytes]:
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, address)
    except OSError:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address.split("%")[0])
