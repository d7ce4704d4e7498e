"""Other local users: the socket's three locks (0700 dir, 0600 socket, peer uid), directories that are not
ours, servers that are not ours, file modes, a master key that others could read, and loopback HTTP (only
connections the kernel lists as open and ours).

Each test opens every lock but the one it checks, so a test fails when exactly that lock is removed.
The peer-uid refusal with all locks open is in tests/integration/test_daemon_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.adversarial.harness import (
    NOBODY,
    as_nobody,
    callback,
    next_event,
    python_as,
    query_of,
    subscriber,
)
from tests.conftest import wait_until

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


@pytest.mark.needs_root
def test_other_uid_cannot_traverse_default_runtime_dir(daemon_factory):
    """With the default socket path, another uid cannot even reach the socket: the runtime dir is 0700.

    Defence: paths.ensure_socket_dir (created 0700, under umask 077)."""
    d = daemon_factory(CONVOCATIONS_SOCKET="")  # the default: $XDG_RUNTIME_DIR/convocations/convocationsd.sock
    assert d.call("status")["socket"] == str(d.socket)
    _open_parents(d)
    os.chmod(d.socket, 0o666)  # only the directory stands in the way
    done = as_nobody(CONNECT, str(d.socket))
    assert done.stdout.startswith("ERR 13"), done.stdout + done.stderr  # EACCES
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700


@pytest.mark.needs_root
def test_other_uid_cannot_connect_to_0600_socket(daemon_factory):
    """With the runtime dir opened up, the 0600 socket still refuses another uid's connect().

    Defence: the socket is bound under umask 0177 and chmod 0600."""
    d = daemon_factory()
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


@pytest.mark.needs_root
def test_other_uid_cannot_start_or_join_a_login_over_http(daemon_factory):
    """Another uid forging the browser's headers still gets 403 from the loopback HTTP server, so it
    cannot learn a pending login's state and link its own account into this user's daemon.

    Defence: http_app._same_user (the connection's owner from /proc/net/tcp)."""
    d = daemon_factory()
    pending = d.call("oauth.start")
    done = as_nobody(HTTP_START, str(d.port))
    assert done.stdout.strip() == "HTTP 403", done.stdout + done.stderr
    assert pending["auth_url"] not in done.stdout
    assert d.call("status")["flow"]["session_id"] == pending["session_id"]
    assert "refused an HTTP request from uid" in d.log()


REFUSED_REQUESTS = (
    "import socket,sys\n"
    "port,n=int(sys.argv[1]),int(sys.argv[2])\n"
    "for _ in range(n):\n"
    "    s=socket.create_connection(('127.0.0.1',port))\n"
    "    s.sendall(b'GET /api/status HTTP/1.1\\r\\nHost: localhost:%d\\r\\n\\r\\n'%port)\n"
    "    s.recv(100)\n"
    "    s.close()\n"
)
ANOTHER = 23452  # a uid with no account, as a second user


@pytest.mark.needs_root
def test_refusals_from_two_uids_name_both(daemon_factory):
    """Another user sends 5 requests, then a third sends 300: the log has one line for the first and, at
    shutdown, one line that names both uids with their counts, not the first one's name for all 304.

    Defence: daemon/logs.Repeats counts each variant of a kind apart and names them."""
    d = daemon_factory()
    for uid, n in ((NOBODY, 5), (ANOTHER, 300)):
        done = subprocess.run(
            [*python_as(uid), "-c", REFUSED_REQUESTS, str(d.port), str(n)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert d.stop() == 0
    lines = [line for line in d.log().splitlines() if "refused an HTTP request" in line]
    me = os.getuid()
    assert len(lines) == 2 and lines[0].endswith(
        f"refused an HTTP request from uid {NOBODY} (this daemon runs as uid {me})"
    )
    assert lines[1].endswith(
        f" s, 2 different: refused an HTTP request from uid {ANOTHER} (this daemon runs as uid {me}) (300 times); "
        f"refused an HTTP request from uid {NOBODY} (this daemon runs as uid {me}) (4 times)"
    ), lines


def test_modes_hold_under_umask_000(daemon_factory):
    """Even started with umask 000: runtime dir 0700, socket 0600, config dir 0700 (and the folders it made
    above it), config.toml and secret.key 0600.

    Defence: paths.ensure_socket_dir and trust.make_private_dir create under umask 077."""
    d = daemon_factory(umask=0)
    d.call("secret.set", {"key": "sk-or-v1-" + "a" * 64})
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.config_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.config_dir.parent).st_mode) == 0o700  # XDG_CONFIG_HOME, made for it
    for name in ("config.toml", "secret.key"):
        assert stat.S_IMODE(os.stat(d.config_dir / name).st_mode) == 0o600, name
    for p in d.config_dir.iterdir():
        assert not os.stat(p).st_mode & 0o077, p


def _refused(d, *expected: str) -> None:
    """The daemon stopped with exit 1 and a clear message, and convctl, pointed at the same place, exits 3
    with a clear message; neither shows a traceback."""
    assert d.proc.wait(20) == 1
    log = d.log()
    assert "Traceback" not in log, log
    for text in expected:
        assert text in log, log
    done = d.convctl("status")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("convctl: "), done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("mode", "above"),
    [(0o777, False), (0o770, False), (0o777, True)],
    ids=["0777", "group-writable", "a directory above"],
)
def test_socket_dir_others_can_write_is_refused_not_chmodded(short_tmp, daemon_factory, mode, above):
    """A socket directory (or one above it) that other users can write to: the daemon refuses it and
    leaves its mode alone; convctl refuses it before connecting.

    Defence: paths.check_socket_dir (no group/other write unless sticky; group write only for a group of one)."""
    from convocationsd.common import trust

    loose = short_tmp / "run" / "loose"
    sock_dir = loose / "sub" if above else loose
    sock_dir.mkdir(mode=0o700, parents=True)
    if mode & 0o022 == 0o020 and trust._private_group(os.stat(loose).st_gid, os.getuid()):  # group write alone
        if os.geteuid() != 0:
            pytest.skip("this user's files get a group of its own, which may write (config.toml's rule)")
        import pwd

        os.chown(loose, -1, pwd.getpwnam("nobody").pw_gid)  # a group whose member is someone else
    os.chmod(loose, mode)
    d = daemon_factory(wait=False, CONVOCATIONS_SOCKET=str(sock_dir / "d.sock"))
    _refused(d, f"{loose}", f"can be written by other users (mode {mode:04o})", f"chmod go-w {loose}")
    assert stat.S_IMODE(os.stat(loose).st_mode) == mode
    assert not (sock_dir / "d.sock").exists()


def test_shared_sticky_dir_is_used_and_left_alone(daemon_factory, short_tmp):
    """CONVOCATIONS_SOCKET in a sticky, world-writable directory (like /tmp): the daemon serves there and
    never chmods it (a daemon that did so to /tmp would lock every other user out); clients accept it.

    Defence: paths.ensure_socket_dir never changes the mode of a directory it did not create."""
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    d = daemon_factory(CONVOCATIONS_SOCKET=str(shared / "d.sock"))
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    done = d.convctl("status")  # 1: the daemon answered that no key is stored (3 would be a refused socket)
    assert done.returncode == 1 and f"socket:   {d.socket}" in done.stdout, done.stderr


def test_symlinked_runtime_dir_is_refused(short_tmp, daemon_factory):
    """$XDG_RUNTIME_DIR/convocations is a symbolic link: not followed, its target's mode not changed.

    Defence: paths.check_socket_dir (the socket directory may not be a symbolic link)."""
    target = short_tmp / "elsewhere"
    target.mkdir(mode=0o755)
    (short_tmp / "run").mkdir(mode=0o700)
    link = short_tmp / "run" / "convocations"
    link.symlink_to(target)
    d = daemon_factory(wait=False, CONVOCATIONS_SOCKET="")  # the default path, through the link
    _refused(d, f"{link} is a symbolic link (to {target})")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert list(target.iterdir()) == []


@pytest.mark.needs_root
@pytest.mark.parametrize("planted_as", ["directory", "link on the way"])
def test_runtime_dir_owned_by_another_user_is_refused(short_tmp, daemon_factory, planted_as):
    """A runtime dir owned by another uid (someone pre-created it to plant a socket), or a symbolic link of
    theirs on the way to it (they could point it elsewhere at any time): the daemon will not start there,
    and convctl will not connect there.

    Defence: paths.check_socket_dir (directories and links on the way are ours or root's)."""
    planted = short_tmp / "run" / "planted"
    if planted_as == "directory":
        planted.mkdir(parents=True)
        sock_dir = planted
    else:
        (short_tmp / "real").mkdir()
        (short_tmp / "run").mkdir()
        planted.symlink_to(short_tmp / "real")
        sock_dir = planted / "sub"
    os.chown(planted, NOBODY, NOBODY, follow_symlinks=False)
    d = daemon_factory(wait=False, CONVOCATIONS_SOCKET=str(sock_dir / "d.sock"))
    _refused(d, f"{planted}", f"belongs to nobody (uid {NOBODY})")
    assert not (sock_dir / "d.sock").exists()


@pytest.mark.needs_root
def test_default_runtime_dir_planted_by_another_user_without_xdg_runtime_dir(short_tmp, daemon_factory):
    """XDG_RUNTIME_DIR unset, and the directory platformdirs falls back to was made first by another
    user: both programs stop with a clear message (it used to be a PermissionError traceback).

    Defence: paths.runtime_dir turns platformdirs' refusal into a clear error, and check_socket_dir
    refuses the directory where a platformdirs release does not."""
    from tests.conftest import base_env

    tmpdir = short_tmp / "t"
    tmpdir.mkdir()
    os.chmod(tmpdir, 0o1777)
    unset = {"CONVOCATIONS_SOCKET": "", "XDG_RUNTIME_DIR": "", "TMPDIR": str(tmpdir)}  # empty counts as unset
    where = subprocess.run(
        [sys.executable, "-c", "import platformdirs; print(platformdirs.user_runtime_dir('convocations'))"],
        env=base_env(short_tmp, **unset),
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(tmpdir)):
        pytest.skip(f"platformdirs does not fall back to TMPDIR on this machine (it says {where!r})")
    planted = tmpdir / f"runtime-{os.getuid()}"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    d = daemon_factory(wait=False, **unset)
    _refused(d, str(planted), str(NOBODY))
    assert list(planted.iterdir()) == []


@pytest.mark.needs_root
def test_stale_socket_of_another_user_is_not_removed(short_tmp, daemon_factory):
    """In a shared sticky directory, another user's socket where ours should go (nobody listening on it):
    a root daemon, which could unlink it, leaves it alone and stops.

    Defence: ipc_server._recover_stale removes only a socket of our own."""
    os.chmod(short_tmp, 0o755)
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    theirs = shared / "d.sock"
    made = as_nobody("import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", str(theirs))
    assert made.returncode == 0 and os.lstat(theirs).st_uid == NOBODY, made.stderr
    d = daemon_factory(wait=False, CONVOCATIONS_SOCKET=str(theirs))
    assert d.proc.wait(20) == 1
    assert f"{theirs} is a socket that belongs to nobody (uid {NOBODY})" in d.log() and "Traceback" not in d.log()
    assert os.lstat(theirs).st_uid == NOBODY


# A socket server run as another user, posing as the daemon: it answers every request with success and
# reports each connection's bytes (hex) once the client goes; it serves two connections, then exits.
IMPOSTOR = (
    "import json,os,socket,sys\n"
    "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666); s.listen()\n"
    "print('ready', flush=True)\n"
    "for _ in range(2):\n"
    "    conn, _ = s.accept(); got = b''\n"
    "    with conn, conn.makefile('rwb') as f:\n"
    "        for line in f:\n"
    "            got += line\n"
    "            req = json.loads(line)\n"
    "            result = {'stored': True, 'backend': 'keyring', 'events': []}\n"
    "            f.write(json.dumps({'jsonrpc': '2.0', 'id': req.get('id'), 'result': result}).encode() + b'\\n')\n"
    "            f.flush()\n"
    "    print('got', got.hex(), flush=True)\n"
)


@contextlib.contextmanager
def impostor(short_tmp: Path) -> Iterator[tuple[Path, Callable[[], tuple[list[str], str]]]]:
    """IMPOSTOR run as nobody at a socket in a sticky folder anyone may write (where CONVOCATIONS_SOCKET may
    point). Yields the socket and ``received()``: once both clients are done, what each connection sent
    (hex) and the impostor's whole output."""
    os.chmod(short_tmp, 0o755)
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    sock = shared / "d.sock"
    server = subprocess.Popen(
        [*python_as(NOBODY), "-c", IMPOSTOR, str(sock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def received() -> tuple[list[str], str]:
        out, err = server.communicate(timeout=20)
        got = [line.split(" ", 1)[1] if " " in line else "" for line in out.splitlines() if line.startswith("got")]
        return got, out + err

    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready", server.stderr.read()
        yield sock, received
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


@pytest.mark.needs_root
def test_clients_refuse_a_server_run_by_another_user(short_tmp):
    """CONVOCATIONS_SOCKET in a world-writable directory where another user serves: `convctl secret
    set-openrouter-key` and the AsyncClient both refuse before sending a byte; the key never leaves.

    Defence: client._check_peer (the serving process's uid, SO_PEERCRED / LOCAL_PEERCRED)."""
    from convocationsd.client import AsyncClient
    from convocationsd.core.errors import UntrustedSocket
    from tests.conftest import base_env, convctl

    key = "sk-or-v1-" + "f" * 64
    with impostor(short_tmp) as (sock, received):
        env = base_env(short_tmp, CONVOCATIONS_SOCKET=str(sock))
        done = convctl(env, "secret", "set-openrouter-key", input=key + "\n", timeout=30)
        assert done.returncode == 3, done.stdout + done.stderr
        assert "stored" not in done.stdout
        assert f"The socket {sock} is served by nobody (uid {NOBODY}), not by you" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and key not in done.stdout + done.stderr

        async def use_async_client() -> None:
            with pytest.raises(UntrustedSocket) as info:
                async with AsyncClient(sock) as c:
                    await c.call("secret.set", {"key": key})
            assert str(sock) in info.value.message and "nobody" in info.value.message

        asyncio.run(use_async_client())
        got, output = received()
    assert got == ["", ""], output  # two connections, not a byte on either
    assert key.encode().hex() not in output
    assert not (short_tmp / "cfg" / "convocations" / "config.toml").exists()  # no fallback to the files either


def test_socket_path_that_is_not_a_socket_is_not_deleted(daemon_factory, short_tmp):
    """A regular file where the socket should be is left alone and the daemon says so (no blind unlink)."""
    run = short_tmp / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    victim = run / "d.sock"
    victim.write_text("precious")
    d = daemon_factory(wait=False)
    assert d.proc.wait(20) == 1
    assert "is not a socket" in d.log()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["0644", "0640", "0604"])
def test_loose_secret_key_refused_when_storing_from_a_login(daemon_factory, mode, request):
    """A secret.key readable by group/other: the login ends with storage_failed and a chmod hint; nothing in plaintext.

    Defence: store.encrypted refuses a master key with group/other bits."""
    from tests.adversarial.harness import FakeThread

    fake = FakeThread()
    request.addfinalizer(fake.close)
    d = daemon_factory(CONVOCATIONS_OPENROUTER_URL=fake.url)
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


def test_loose_secret_key_refused_on_secret_set(daemon_factory):
    """secret.set over IPC with a loose secret.key: a clear error with the chmod hint; the old key stays readable once fixed."""
    from convocationsd.core.errors import RemoteError

    d = daemon_factory()
    d.call("secret.set", {"key": "sk-or-v1-" + "c" * 64})
    key_file = d.config_dir / "secret.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(RemoteError) as info:
        d.call("secret.set", {"key": "sk-or-v1-" + "d" * 64})
    assert "other users" in info.value.message and "chmod 600" in info.value.hint
    os.chmod(key_file, 0o600)
    assert d.call("secret.get") == {"key": "sk-or-v1-" + "c" * 64}


@pytest.mark.needs_root
def test_secret_key_owned_by_another_user_is_refused(daemon_factory):
    """A secret.key owned by another uid (planted master key) is refused with a chown hint."""
    from convocationsd.core.errors import RemoteError

    d = daemon_factory()
    d.call("secret.set", {"key": "sk-or-v1-" + "e" * 64})
    key_file = d.config_dir / "secret.key"
    os.chown(key_file, NOBODY, NOBODY)
    with pytest.raises(RemoteError) as info:
        d.call("secret.get")
    assert "another user" in info.value.message and "chown" in info.value.hint
    shutil.chown(key_file, 0, 0)


# -- a config.toml that others can change ----------------------------------------------------------------

ATTACKER_URL = "http://127.0.0.1:9"  # where an appended openrouter_url would send the key (discard port)


def _shared_config(short_tmp) -> tuple:
    """A config.toml with a stored key (so a started daemon would ask ``openrouter_url`` about it)."""
    from convocationsd.store.configured import open_store

    config = short_tmp / "cfg" / "convocations" / "config.toml"
    open_store(config, forced_backend="local-encrypted").set("sk-or-v1-" + "f" * 64)
    return config, config.parent


def _assert_refused(d, config, place, mode_text: str) -> None:
    wait_until(lambda: d.proc.poll() is not None or d.socket.exists(), "the daemon to exit or listen", 20)
    if d.proc.poll() is None:
        pytest.fail(f"the daemon started with a config.toml others could change ({place})")
    assert d.proc.returncode == 1, d.log()
    log = d.log()
    assert f"{place}" in log and mode_text in log and "Traceback" not in log, log
    assert "where the OpenRouter key is sent" in log
    done = d.convctl("secret", "get-openrouter-key")  # no daemon: convctl reads the files itself, and refuses
    assert done.returncode != 0 and mode_text in done.stderr, done.stderr
    assert "sk-or-v1-" not in done.stdout


@pytest.mark.parametrize(
    "target, mode, shown",
    [("file", 0o666, "0666"), ("file", 0o602, "0602"), ("directory", 0o777, "0777")],
    ids=["file-0666", "file-0602", "directory-0777"],
)
def test_config_that_others_can_write_stops_the_daemon(short_tmp, daemon_factory, target, mode, shown):
    """config.toml (or its directory) can be written by other users, and someone appended an
    ``openrouter_url`` of theirs: the daemon does not start (exit 1), and says which file, what is wrong and
    the ``chmod`` that fixes it; convctl refuses the file too. Fixed, everything works again.

    Defence: store/configfile.check_trusted, on every read and write of config.toml."""
    config, folder = _shared_config(short_tmp)
    with open(config, "a") as f:
        f.write(f'openrouter_url = "{ATTACKER_URL}"\n')
    place = config if target == "file" else folder
    os.chmod(place, mode)
    d = daemon_factory(wait=False)
    _assert_refused(d, config, place, f"can be written by other users (mode {shown})")
    assert f"chmod go-w {place}" in d.log()
    os.chmod(place, 0o600 if target == "file" else 0o700)
    done = d.convctl("secret", "get-openrouter-key")
    assert (done.returncode, done.stdout) == (0, "sk-or-v1-" + "f" * 64 + "\n"), done.stderr


@pytest.mark.needs_root
def test_config_another_user_appended_to_or_owns_stops_the_daemon(short_tmp, daemon_factory):
    """Another uid appends ``openrouter_url`` to a config.toml left at 0666 (as the review did); later it owns
    the file, or the file's group is one others share: each time the daemon refuses to start.

    Defence: store/configfile.check_trusted (mode, owner, and group write only for a group of one)."""
    import pwd

    config, _ = _shared_config(short_tmp)
    os.chmod(config, 0o666)
    for p in (short_tmp, short_tmp / "cfg", config.parent):
        os.chmod(p, 0o755)  # the other user can reach the file, as in a home directory of mode 0755
    appended = as_nobody(f"open({str(config)!r}, 'a').write('openrouter_url = \"{ATTACKER_URL}\"\\n')")
    assert appended.returncode == 0, appended.stderr
    d = daemon_factory(wait=False)
    _assert_refused(d, config, config, "can be written by other users (mode 0666)")
    os.chmod(config, 0o644)
    os.chown(config, NOBODY, NOBODY)
    d = daemon_factory(wait=False)
    _assert_refused(d, config, config, "belongs to nobody")
    os.chown(config, 0, pwd.getpwnam("nobody").pw_gid)  # a group whose member is someone else
    os.chmod(config, 0o664)
    d = daemon_factory(wait=False)
    _assert_refused(d, config, config, "can be written by other users (mode 0664)")


def test_doctor_says_how_to_fix_a_config_others_can_write(short_tmp, daemon_factory):
    """The config folder is 0777: `convctl doctor` fails the config check with the `chmod go-w` that fixes it
    (not the hint for a syntax error), and the files check does not call the files private.

    Defence: doctor passes UntrustedConfig's own hint through, to the config and the files checks."""
    import json

    _, folder = _shared_config(short_tmp)
    os.chmod(folder, 0o777)
    d = daemon_factory(wait=False)
    wait_until(lambda: d.proc.poll() is not None, "the daemon to refuse its config", 20)
    done = d.convctl("doctor", "--json")
    checks = {c["check"]: c for c in json.loads(done.stdout)}
    assert done.returncode == 1, done.stdout + done.stderr
    for name in ("config", "files"):
        assert not checks[name]["ok"] and "can be written by other users (mode 0777)" in checks[name]["verdict"]
        assert f"chmod go-w {folder}" in checks[name]["fix"] and "syntax" not in checks[name]["fix"], checks[name]
    text = d.convctl("doctor").stdout
    assert f"fix: Run: chmod go-w {folder}" in text and "private:" not in text, text


def test_config_reached_through_a_link_in_a_folder_others_can_write_stops_the_daemon(short_tmp, daemon_factory):
    """The config folder is a link to a link, and the middle one lies in a folder anyone can write (0777, not
    sticky): another user could swap that link for one to a config.toml of theirs between two reads. The
    folder holding the file and the file itself are private, so checking the path as written and where it
    finally leads sees nothing wrong; the daemon still refuses to start and names the middle folder, and
    convctl refuses too. With that folder sticky (as /tmp is) nobody else can swap our link: it works.

    Defence: store/configfile.check_trusted follows the path one link at a time and checks every directory
    holding an entry on the way."""
    config, folder = _shared_config(short_tmp)
    real = short_tmp / "real"
    folder.rename(real)
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # ours, so the test needs no other uid: the mode is what matters
    (shared / "hop").symlink_to(real)
    folder.symlink_to(shared / "hop")  # cfg/convocations -> shared/hop -> real
    assert os.path.realpath(config) == str(real / "config.toml")
    d = daemon_factory(wait=False)
    _assert_refused(d, config, shared, "can be written by other users (mode 0777)")
    assert f"{shared}, a directory on the way to {config}," in d.log() and f"chmod go-w {shared}" in d.log()
    os.chmod(shared, 0o1777)
    done = d.convctl("secret", "get-openrouter-key")
    assert (done.returncode, done.stdout) == (0, "sk-or-v1-" + "f" * 64 + "\n"), done.stderr


def _posix_acl_group_of_one(path) -> None:
    """Skips unless setfacl can set an ACL on ``path`` and the file's group is its owner's alone (the case
    the group-of-one exception lets through)."""
    from convocationsd.common import trust

    if not shutil.which("setfacl"):
        pytest.skip("needs setfacl (Debian package acl, installed by .ci/system-deps)")
    st = os.stat(path)
    if not trust._private_group(st.st_gid, st.st_uid):
        pytest.skip(f"the test's files get group {st.st_gid}, which is not its owner's alone on this host")


def test_config_with_a_posix_acl_is_not_let_through_as_a_group_of_one(short_tmp, daemon_factory):
    """A config.toml whose group is the owner's alone may be group-writable (umask 002 with user-private
    groups). But with a POSIX ACL the group bits are the ACL's mask: `setfacl -m u:nobody:rw` shows as mode
    0660, and another user can write the file. The daemon refuses to start, says an ACL is why, and how to fix
    it; a group-writable file without an ACL still works.

    Defence: store/configfile.check_trusted applies the group-of-one exception only without a POSIX ACL."""
    config, _ = _shared_config(short_tmp)
    _posix_acl_group_of_one(config)
    os.chmod(config, 0o660)  # the group of one: accepted
    d = daemon_factory()
    assert d.call("status")["pid"] == d.proc.pid
    assert d.stop() == 0
    os.chmod(config, 0o600)
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:rw", str(config)], check=True)
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o660  # the mask, shown as the group bits
    d = daemon_factory(wait=False)
    _assert_refused(d, config, config, "can be written by other users (mode 0660, and a POSIX ACL")
    assert f"setfacl -b {config}" in d.log() and f"chmod go-w {config}" in d.log()


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


@pytest.mark.needs_root
def test_other_uid_that_closes_at_once_cannot_restart_a_login(daemon_factory):
    """A root daemon (a container): another uid sends 200 forged start requests with restart and closes each
    connection at once. The kernel lists such a socket in TIME-WAIT with uid 0, which is root's: none may
    pass, and the pending login survives.

    Defence: proc_net.connection_uid counts only established sockets that have an owner (inode)."""
    import time

    d = daemon_factory()
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
