"""Other local users: the socket's three locks (0700 dir, 0600 socket, peer uid), file modes, a master
key that others could read, and loopback HTTP (only connections the kernel lists as open and ours).

Each test opens every lock but the one it checks, so a test fails when exactly that lock is removed.
The peer-uid refusal with all locks open is in tests/integration/test_daemon_lifecycle.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import tomllib

import pytest

from tests.adversarial.harness import (
    NOBODY,
    as_nobody,
    callback,
    needs_root_setpriv,
    next_event,
    query_of,
    subscriber,
)

CONNECT = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1])\n"
    "except OSError as e:\n"
    "    print('ERR', e.errno, e.strerror); sys.exit(0)\n"
    's.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"secret.get"}\\n\')\n'
    "print('GOT', s.recv(4096).decode())\n"
)


def _open_parents(d) -> None:
    """Makes every directory above the runtime dir traversable by anyone (as /run/user/<uid> is not)."""
    for p in (d.socket.parent.parent.parent, d.socket.parent.parent):
        os.chmod(p, 0o755)


@needs_root_setpriv
def test_other_uid_cannot_traverse_default_runtime_dir(spawn):
    """With the default socket path, another uid cannot even reach the socket: the runtime dir is 0700.

    Defence: ipc_server.prepare_runtime_dir (mode 0700)."""
    d = spawn(CONVOCATIONS_SOCKET="")  # the default: $XDG_RUNTIME_DIR/convocations/convocationsd.sock
    assert d.call("status")["socket"] == str(d.socket)
    _open_parents(d)
    os.chmod(d.socket, 0o666)  # only the directory stands in the way
    done = as_nobody(CONNECT, str(d.socket))
    assert done.stdout.startswith("ERR 13"), done.stdout + done.stderr  # EACCES
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700


@needs_root_setpriv
def test_other_uid_cannot_connect_to_0600_socket(spawn):
    """With the runtime dir opened up, the 0600 socket still refuses another uid's connect().

    Defence: the socket is bound under umask 0177 and chmod 0600."""
    d = spawn()
    _open_parents(d)
    os.chmod(d.socket.parent, 0o755)
    done = as_nobody(CONNECT, str(d.socket))
    assert done.stdout.startswith("ERR 13"), done.stdout + done.stderr
    assert "GOT" not in done.stdout


HTTP_START = (
    "import sys,urllib.request,urllib.error\n"
    "port=sys.argv[1]\n"
    "req=urllib.request.Request(f'http://127.0.0.1:{port}/api/openrouter/oauth/start',method='POST',data=b'{}',\n"
    "    headers={'Host':f'localhost:{port}','Origin':f'http://localhost:{port}','Content-Type':'application/json'})\n"
    "try:\n"
    "    print('GOT', urllib.request.urlopen(req, timeout=10).read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print('HTTP', e.code)\n"
)


@needs_root_setpriv
def test_other_uid_cannot_start_or_join_a_login_over_http(spawn):
    """Another uid forging the browser's headers still gets 403 from the loopback HTTP server, so it
    cannot learn a pending login's state and link its own account into this user's daemon.

    Defence: http_app._same_user (the connection's owner from /proc/net/tcp)."""
    d = spawn()
    pending = d.call("oauth.start")
    done = as_nobody(HTTP_START, str(d.port))
    assert done.stdout.strip() == "HTTP 403", done.stdout + done.stderr
    assert pending["auth_url"] not in done.stdout
    assert d.call("status")["flow"]["session_id"] == pending["session_id"]
    assert "refused an HTTP request from uid" in d.log()


def test_modes_hold_under_umask_000(spawn):
    """Even started with umask 000: runtime dir 0700, socket 0600, config dir 0700, config.toml and secret.key 0600."""
    d = spawn(umask=0)
    d.call("secret.set", {"key": "sk-or-v1-" + "a" * 64})
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.config_dir).st_mode) == 0o700
    for name in ("config.toml", "secret.key"):
        assert stat.S_IMODE(os.stat(d.config_dir / name).st_mode) == 0o600, name
    for p in d.config_dir.iterdir():
        assert not os.stat(p).st_mode & 0o077, p


def test_loose_runtime_dir_is_tightened(spawn, short_tmp):
    """A runtime dir someone made 0777 before start is tightened to 0700 by the daemon."""
    loose = short_tmp / "run" / "loose"
    loose.mkdir(parents=True)
    os.chmod(loose, 0o777)
    d = spawn(CONVOCATIONS_SOCKET=str(loose / "d.sock"))
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    assert d.call("status")["pid"] == d.proc.pid


@needs_root_setpriv
def test_runtime_dir_owned_by_another_user_is_refused(short_tmp):
    """A runtime dir owned by another uid (someone pre-created it to plant a socket): the daemon will not start."""
    from tests.conftest import start_daemon

    planted = short_tmp / "run" / "planted"
    planted.mkdir(parents=True)
    os.chown(planted, NOBODY, NOBODY)
    d = start_daemon(short_tmp, wait=False, CONVOCATIONS_SOCKET=str(planted / "d.sock"))
    assert d.proc.wait(20) == 1
    assert "belongs to another user" in d.log()
    assert not (planted / "d.sock").exists()


def test_socket_path_that_is_not_a_socket_is_not_deleted(spawn, short_tmp):
    """A regular file where the socket should be is left alone and the daemon says so (no blind unlink)."""
    from tests.conftest import start_daemon

    run = short_tmp / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    victim = run / "d.sock"
    victim.write_text("precious")
    d = start_daemon(short_tmp, wait=False)
    assert d.proc.wait(20) == 1
    assert "is not a socket" in d.log()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["0644", "0640", "0604"])
def test_loose_secret_key_refused_when_storing_from_a_login(spawn, mode, request):
    """A secret.key readable by group/other: the login ends with storage_failed and a chmod hint; nothing in plaintext.

    Defence: secretstore.encrypted refuses a master key with group/other bits."""
    from tests.adversarial.harness import FakeThread

    fake = FakeThread()
    request.addfinalizer(fake.close)
    d = spawn(CONVOCATIONS_OPENROUTER_URL=fake.url)
    d.call("secret.set", {"key": "sk-or-v1-" + "b" * 64})  # creates secret.key 0600
    d.call("secret.clear")
    key_file = d.config_dir / "secret.key"
    os.chmod(key_file, mode)
    sub = subscriber(d, ["openrouter-auth-complete"])
    reply = d.call("oauth.start")
    _, page = callback(d.port, query_of(fake.approve(reply["auth_url"])))
    ev = next_event(sub, "openrouter-auth-complete", reply["session_id"])
    err = ev["data"]["error"]
    assert ev["data"]["success"] is False and err["code"] == "storage_failed"
    assert f"chmod 600 {key_file}" in err["hint"] and "other users" in err["message"]
    assert page is not None and page.status == 400 and "chmod 600" in page.text and "could not be saved" in page.text
    assert d.call("secret.status") == {"stored": False, "backend": None}
    issued = fake.fake.issued_keys[-1]
    for p in d.config_dir.rglob("*"):
        if p.is_file():
            assert issued.encode() not in p.read_bytes(), p
    assert issued not in d.log()
    text = (d.config_dir / "config.toml").read_text() if (d.config_dir / "config.toml").exists() else ""
    assert "openrouter_api_key" not in tomllib.loads(text)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == mode  # refused, not silently "fixed" or replaced
    sub.close()


def test_loose_secret_key_refused_on_secret_set(spawn):
    """secret.set over IPC with a loose secret.key: a clear error with the chmod hint; the old key stays readable once fixed."""
    from convocationsd.core.errors import RemoteError

    d = spawn()
    d.call("secret.set", {"key": "sk-or-v1-" + "c" * 64})
    key_file = d.config_dir / "secret.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(RemoteError) as info:
        d.call("secret.set", {"key": "sk-or-v1-" + "d" * 64})
    assert "other users" in info.value.message and "chmod 600" in info.value.hint
    os.chmod(key_file, 0o600)
    assert d.call("secret.get") == {"key": "sk-or-v1-" + "c" * 64}


@needs_root_setpriv
def test_secret_key_owned_by_another_user_is_refused(spawn):
    """A secret.key owned by another uid (planted master key) is refused with a chown hint."""
    from convocationsd.core.errors import RemoteError

    d = spawn()
    d.call("secret.set", {"key": "sk-or-v1-" + "e" * 64})
    key_file = d.config_dir / "secret.key"
    os.chown(key_file, NOBODY, NOBODY)
    with pytest.raises(RemoteError) as info:
        d.call("secret.get")
    assert "another user" in info.value.message and "chown" in info.value.hint
    shutil.chown(key_file, 0, 0)


# -- loopback HTTP from other users: connections that are already gone ------------------------------------

HIT_AND_RUN = (
    "import socket,sys\n"
    "port,n=int(sys.argv[1]),int(sys.argv[2])\n"
    "body=b'{\"restart\": true}'\n"
    "head=(f'POST /api/openrouter/oauth/start HTTP/1.1\\r\\nHost: localhost:{port}\\r\\n'\n"
    "      f'Origin: http://localhost:{port}\\r\\nSec-Fetch-Site: same-origin\\r\\n'\n"
    "      f'Content-Type: application/json\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n').encode()\n"
    "for _ in range(n):\n"
    "    s=socket.create_connection(('127.0.0.1',port))\n"
    "    s.sendall(head+body)\n"
    "    s.close()\n"
    "print('sent', n)\n"
)


@needs_root_setpriv
def test_other_uid_that_closes_at_once_cannot_restart_a_login(spawn):
    """A root daemon (a container): another uid sends 200 forged start requests with restart and closes each
    connection at once. The kernel lists such a socket in TIME-WAIT with uid 0, which is root's: none may
    pass, and the pending login survives.

    Defence: proc_net.connection_uid counts only established sockets that have an owner (inode)."""
    import time

    d = spawn()
    pending = d.call("oauth.start")
    done = as_nobody(HIT_AND_RUN, str(d.port), "200", timeout=60)
    assert done.stdout.strip() == "sent 200", done.stdout + done.stderr

    def handled() -> int:  # the daemon logs every refusal and every login it starts
        log = d.log()
        return log.count("refused an HTTP request") + log.count("started; waiting for the browser") - 1

    deadline = time.monotonic() + 30
    while handled() < 200 and time.monotonic() < deadline:  # the daemon may still be working through them
        time.sleep(0.05)
    flow = d.call("status")["flow"]
    assert flow["session_id"] == pending["session_id"] and flow["status"] == "pending", d.log()[-2000:]
    assert "refused an HTTP request" in d.log()


def _closed_by_client(family: int, host: str, wait_for_server_close: bool):
    """A real loopback connection whose client end has been closed: orphaned in FIN-WAIT, or (after the
    server closes too) in TIME-WAIT. Returns the server's (peer, local) view of it."""
    import socket

    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        client = socket.create_connection(server.getsockname()[:2])
        conn, peer = server.accept()
        with conn:
            local = conn.getsockname()
            client.close()
            assert conn.recv(1) == b""  # the client's FIN has arrived
            if not wait_for_server_close:
                return peer, local, conn.dup()
        return peer, local, None


@pytest.mark.parametrize("path", ["sock_diag", "proc_net"])
@pytest.mark.parametrize("state", ["fin_wait", "time_wait"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_closed_connection_names_no_user(path, state, family):
    """A connection whose client already closed (FIN-WAIT, or TIME-WAIT where the kernel says uid 0 and
    inode 0) counts as nobody's, on both lookups: sock_diag and the /proc/net/tcp fallback. An open one
    still names its owner.

    Defence: proc_net.diag_uid and connection_uid check the state and the inode."""
    import socket

    from convocationsd.common import proc_net

    if not proc_net.available():
        pytest.skip("no /proc/net/tcp here")
    fam, host = (socket.AF_INET, "127.0.0.1") if family == "ipv4" else (socket.AF_INET6, "::1")

    def lookup(peer, local):
        if path == "sock_diag":
            return proc_net.diag_uid(peer, local)
        return proc_net.connection_uid(peer, local, proc_net.read_tables())

    with socket.socket(fam) as server:  # an open connection: its owner is us
        server.bind((host, 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]):
            conn, peer = server.accept()
            with conn:
                assert lookup(peer, conn.getsockname()) == os.getuid()
    peer, local, still_open = _closed_by_client(fam, host, wait_for_server_close=state == "time_wait")
    try:
        listed = [e for e in proc_net.read_tables() if e.local == (host, peer[1])]
        assert listed and listed[0].state != proc_net.ESTABLISHED, listed  # the kernel still lists it
        assert lookup(peer, local) is None
    finally:
        if still_open is not None:
            still_open.close()
