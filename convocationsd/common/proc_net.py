"""Linux's TCP socket tables: who listens on a port (doctor), who owns a connection (HTTP uid check).

Loopback HTTP is reachable by every user of the machine, and headers are only words; the kernel knows
which uid really opened a connection. One connection is looked up with a sock_diag netlink query (a few
microseconds); /proc/net/tcp{,6} lists them all (milliseconds on a busy machine) and is the fallback.

Only an established socket that still has an owner names one. A client that closed at once leaves an
orphan (FIN-WAIT) or a TIME-WAIT entry, which the kernel lists with uid 0 and inode 0: to a daemon running
as root that would look like its own user.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:  # only annotations name it
    # A TCP socket's address as getpeername()/getsockname() give it: (host, port), or for IPv6
    # (host, port, flowinfo, scope_id).
    SockAddr = tuple[str, int] | tuple[str, int, int, int]

LISTEN = "0A"
ESTABLISHED = "01"


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


def connection_uid(client: SockAddr, server: SockAddr, entries: Iterable[TcpEntry] | None = None) -> int | None:
    """The uid that owns the client end of a loopback connection (``client``/``server`` as from
    getpeername/getsockname on the server side), or None when the kernel does not list it as an
    established socket with an owner (closed, orphaned, in TIME-WAIT)."""
    if entries is None:
        try:
            return diag_uid(client, server)
        except OSError:
            pass  # no sock_diag here (old kernel, seccomp): read the whole table instead
    want_local = (_normal(client[0]), client[1])
    want_remote = (_normal(server[0]), server[1])
    for entry in read_tables() if entries is None else entries:
        if entry.local == want_local and entry.remote == want_remote:
            return entry.uid if entry.state == ESTABLISHED and entry.inode else None
    return None


def _normal(address: str) -> str:
    return socket.inet_ntop(*_family_packed(address))


def _family_packed(address: str) -> tuple[int, bytes]:
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, address)
    except OSError:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address.split("%")[0])


# -- sock_diag (netlink) ---------------------------------------------------------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NLMSG_HEADER = struct.Struct("=IHHII")
TCP_ESTABLISHED = 1
# struct inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid, inode
DIAG_STATE_OFFSET = NLMSG_HEADER.size + 1
DIAG_OWNER = struct.Struct("=II")  # uid, inode
DIAG_OWNER_OFFSET = NLMSG_HEADER.size + 4 + 48 + 12


def diag_uid(client: SockAddr, server: SockAddr) -> int | None:
    """Asks the kernel (sock_diag) for the owner of the established TCP socket ``client`` -> ``server``."""
    family, src = _family_packed(client[0])
    _, dst = _family_packed(server[0])
    body = _diag_request(family, client[1], server[1], src, dst)
    header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(header + body, (0, 0))
        reply = nl.recv(8192)
    length, kind = NLMSG_HEADER.unpack_from(reply)[:2]
    if kind == NLMSG_ERROR or length < DIAG_OWNER_OFFSET + DIAG_OWNER.size:
        return None  # the kernel knows no such socket
    uid, inode = DIAG_OWNER.unpack_from(reply, DIAG_OWNER_OFFSET)
    if reply[DIAG_STATE_OFFSET] != TCP_ESTABLISHED or not inode:
        return None  # closed by its owner: whatever uid the kernel lists is not the one who opened it
    return int(uid)


def _diag_request(family: int, sport: int, dport: int, src: bytes, dst: bytes) -> bytes:
    """struct inet_diag_req_v2: family, protocol, ext, pad, states (all: the kernel ignores them when it
    looks up one socket, so the reply's state is checked instead); then struct inet_diag_sockid: sport and
    dport (big-endian), src[16], dst[16], interface, cookie[2] (all ones: no cookie to match)."""
    head = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
    ports = struct.pack(">HH", sport, dport)
    rest = struct.pack("=16s16sIII", src.ljust(16, b"\0"), dst.ljust(16, b"\0"), 0, 0xFFFFFFFF, 0xFFFFFFFF)
    return head + ports + rest
