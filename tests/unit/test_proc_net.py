import os
import socket

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
