"""Linux's TCP tables and sock_diag: parsed from text and from the real kernel."""

from __future__ import annotations

import os
import socket

import pytest

from convocationsd.common import proc_net

TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0
   1: 0100007F:D431 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000  1001        0 4343 1 0
   2: 0100007F:D432 0100007F:0BB8 06 00000000:00000000 03:00000F9F 00000000     0        0 0 3 0
   3: 0100007F:D433 0100007F:0BB8 04 00000000:00000000 00:00000000 00000000  1001        0 0 3 0
   4: garbage
"""


def test_hex_addresses():
    assert proc_net.hex_address("0100007F") == "127.0.0.1"
    assert proc_net.hex_address("00000000000000000000000001000000") == "::1"


def test_parse_table_and_connection_uid():
    entries = list(proc_net.parse_table(TABLE))
    assert entries[0] == proc_net.TcpEntry(("127.0.0.1", 3000), ("0.0.0.0", 0), "0A", 1000, 4242)
    assert proc_net.connection_uid(("127.0.0.1", 0xD431), ("127.0.0.1", 3000), entries) == 1001
    assert proc_net.connection_uid(("127.0.0.1", 1), ("127.0.0.1", 3000), entries) is None
    # TIME-WAIT (listed as uid 0) and an orphan in FIN-WAIT2: closed by the client, nobody's
    assert proc_net.connection_uid(("127.0.0.1", 0xD432), ("127.0.0.1", 3000), entries) is None
    assert proc_net.connection_uid(("127.0.0.1", 0xD433), ("127.0.0.1", 3000), entries) is None


def test_sock_diag_and_proc_table_agree_and_are_told_apart():
    if not proc_net.available():
        return
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            with socket.create_connection(server.getsockname()[:2]):
                conn, peer = server.accept()
                with conn:
                    local = conn.getsockname()
                    assert proc_net.diag_uid(peer, local) == os.getuid()
                    assert proc_net.connection_uid(peer, local, proc_net.read_tables()) == os.getuid()
                    assert proc_net.diag_uid((host, 1), local) is None  # no such connection


# -- the tables ------------------------------------------------------------------------------------------


def test_a_listening_socket_is_listed_as_listen():
    if not proc_net.available():
        pytest.skip("no /proc/net/tcp here")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        states = {e.state for e in proc_net.read_tables() if e.local == ("127.0.0.1", port)}
    assert states == {proc_net.LISTEN} and proc_net.LISTEN == "0A"


def test_short_and_broken_lines_are_skipped_not_fatal():
    table = (
        "  sl  local_address rem_address   st ...\n"
        "   0: 0100007F:D431 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000\n"  # cut short
        "   1: 0100007F:ZZZZ 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000  1001 0 77 1 0\n"  # bad hex
        "   2: 0100007F:D431 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000  1001 0 4343\n"  # 10 fields
    )
    assert list(proc_net.parse_table(table)) == [
        proc_net.TcpEntry(("127.0.0.1", 0xD431), ("127.0.0.1", 3000), "01", 1001, 4343)
    ]


def test_read_tables_reads_tcp_and_tcp6_and_skips_a_missing_one(tmp_path):
    (tmp_path / "net").mkdir()
    assert not proc_net.available(tmp_path)
    v6 = "00000000000000000000000001000000:0BB8"
    (tmp_path / "net" / "tcp6").write_text(
        f"header\n   0: {v6} {v6.replace('0BB8', 'D431')} 01 0:0 0:0 0  1001  0 99 1 0\n"
    )
    assert list(proc_net.read_tables(tmp_path)) == [proc_net.TcpEntry(("::1", 3000), ("::1", 0xD431), "01", 1001, 99)]
    (tmp_path / "net" / "tcp").write_text(TABLE)
    assert proc_net.available(tmp_path)
    assert len(list(proc_net.read_tables(tmp_path))) == 5
    assert proc_net.available() == os.path.exists("/proc/net/tcp")


def test_entries_are_values():
    a, b = (proc_net.TcpEntry(("127.0.0.1", 1), ("127.0.0.1", 2), "01", 5, 6) for _ in range(2))
    assert a == b and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.uid = 0  # type: ignore[misc]


def test_a_connection_that_is_not_established_names_no_user_even_with_an_owner():
    """CLOSE-WAIT: its owner still holds it, but the other side has gone; only ESTABLISHED counts."""
    entries = [proc_net.TcpEntry(("127.0.0.1", 5), ("127.0.0.1", 6), "08", 1001, 4545)]
    assert proc_net.connection_uid(("127.0.0.1", 5), ("127.0.0.1", 6), entries) is None


def test_a_scoped_ipv6_address_is_matched_without_its_scope():
    """getpeername gives a link-local address with its scope (fe80::1%lo); the tables list it without."""
    entries = [proc_net.TcpEntry(("fe80::1", 5), ("fe80::1", 6), "01", 1001, 7)]
    assert proc_net.connection_uid(("fe80::1%lo", 5, 0, 1), ("fe80::1%lo", 6, 0, 1), entries) == 1001


# -- sock_diag first, the tables when it fails --------------------------------------------------------------


def _connection():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    conn, peer = server.accept()
    return server, client, conn, peer


def test_sock_diag_answers_without_reading_the_tables(monkeypatch):
    if not proc_net.available():
        pytest.skip("Linux only")
    server, client, conn, peer = _connection()
    with server, client, conn:
        monkeypatch.setattr(proc_net, "read_tables", lambda *a: pytest.fail("read the whole table"))
        assert proc_net.connection_uid(peer, conn.getsockname()) == os.getuid()


def test_without_sock_diag_the_tables_answer(monkeypatch):
    if not proc_net.available():
        pytest.skip("Linux only")

    def no_diag(*args):
        raise PermissionError(1, "sock_diag refused (seccomp)")

    server, client, conn, peer = _connection()
    with server, client, conn:
        monkeypatch.setattr(proc_net, "diag_uid", no_diag)
        assert proc_net.connection_uid(peer, conn.getsockname()) == os.getuid()


def test_a_connection_its_client_closed_names_no_user():
    """Closed by the client (FIN-WAIT now): the kernel's answer has an owner no more."""
    if not proc_net.available():
        pytest.skip("Linux only")
    server, client, conn, peer = _connection()
    with server, conn:
        client.close()
        conn.recv(1)  # the FIN arrived
        assert proc_net.diag_uid(peer, conn.getsockname()) is None
        assert proc_net.connection_uid(peer, conn.getsockname()) is None


class FakeNetlink:
    """A sock_diag answer made by hand, for what the kernel here cannot be made to send: a reply cut short,
    or one with chosen fields."""

    reply = b""

    def __init__(self, *args) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def settimeout(self, seconds: float) -> None:
        pass

    def sendto(self, data: bytes, address) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return self.reply


def diag_reply(length: int, *, state: int = 1, uid: int = 1001, inode: int = 77) -> bytes:
    reply = bytearray(max(length, proc_net.DIAG_OWNER_OFFSET + proc_net.DIAG_OWNER.size))
    proc_net.NLMSG_HEADER.pack_into(reply, 0, length, proc_net.SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    reply[proc_net.DIAG_STATE_OFFSET] = state
    proc_net.DIAG_OWNER.pack_into(reply, proc_net.DIAG_OWNER_OFFSET, uid, inode)
    return bytes(reply[:length])


@pytest.mark.parametrize(
    ("reply", "uid"),
    [
        (diag_reply(88), 1001),  # just long enough for the owner's fields
        (diag_reply(87), None),
        (diag_reply(16), None),
        (diag_reply(124, state=2), None),  # SYN-SENT
        (diag_reply(124, inode=0), None),  # an orphan
    ],
    ids=["exact", "one-short", "header-only", "not-established", "no-inode"],
)
def test_a_diag_reply_names_a_user_only_when_whole_and_established(monkeypatch, reply, uid):
    FakeNetlink.reply = reply
    monkeypatch.setattr(socket, "socket", FakeNetlink)
    assert proc_net.diag_uid(("127.0.0.1", 5), ("127.0.0.1", 6)) == uid
