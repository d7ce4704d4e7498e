"""Start-up and its failure modes: busy ports, a second daemon, stale sockets, other users."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from tests.adversarial.harness import NOBODY, as_nobody
from tests.conftest import hold_port


def _hold(family: int, host: str, port: int) -> socket.socket:
    s = socket.socket(family)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen()
    return s


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_busy_port_falls_back_loudly_when_allowed(daemon_factory, family, host):
    with _hold(family, host, 0) as held:
        port = held.getsockname()[1]
        d = daemon_factory(RCONV_HTTP_PORT=str(port), args=("--allow-port-fallback",))
        st = d.call("status")
    assert st["port_fallback"] is True and st["port"] != port
    assert f"PORT {port} IS BUSY" in d.log()
    assert st["port"] > 1024
    assert f"http://localhost:{st['port']}/api" not in d.log()  # never advice to register the fallback port


@pytest.mark.parametrize("chosen", ["env", "flag", "config"])
def test_a_busy_port_the_person_chose_is_an_error(short_tmp, daemon_factory, chosen):
    """A chosen port is a promise: no silent fallback; exit 1 naming the port, where it was chosen and who holds it."""
    holder, port = hold_port("127.0.0.1")
    try:
        how = {"env": ({"RCONV_HTTP_PORT": str(port)}, ()), "flag": ({}, ("--port", str(port)))}
        if chosen == "config":
            (short_tmp / "cfg" / "convocations").mkdir(parents=True)
            (short_tmp / "cfg" / "convocations" / "config.toml").write_text(f"http_port = {port}\n")
        env, args = how.get(chosen, ({}, ()))
        d = daemon_factory(wait=False, args=args, **{"RCONV_HTTP_PORT": "", **env})  # killed at teardown if it runs
        assert d.proc.wait(20) == 1
        log = d.log()
        source = {"env": "RCONV_HTTP_PORT", "flag": "--port", "config": "http_port in "}[chosen]
        assert f"Port {port} (chosen by {source}" in log and "is already in use by python" in log
        assert f"pid {holder.pid}" in log and "--allow-port-fallback" in log and "Traceback" not in log
        assert not d.socket.exists()  # nothing left behind
    finally:
        holder.kill()
        holder.wait()


def test_only_the_default_port_falls_back(daemon_factory):
    """With no port chosen, a busy 3000 (the usual dev server) still gives way to a free port."""
    try:
        held = _hold(socket.AF_INET6, "::1", 3000)
    except OSError:  # someone else holds 3000 already: the case under test all the same
        held = None
    try:
        d = daemon_factory(RCONV_HTTP_PORT="")
        st = d.call("status")
    finally:
        if held is not None:
            held.close()
    assert st["port_fallback"] is True and st["port"] != 3000
    assert st["settings"]["http_port"] == {"value": 3000, "source": "the default"}


def test_second_daemon_is_refused_with_a_clear_message(daemon_factory, short_tmp):
    first = daemon_factory()
    second = daemon_factory(wait=False)
    assert second.proc.wait(15) == 1
    assert "already running" in second.log()
    assert first.call("status")["pid"] == first.proc.pid  # the first one is untouched


def test_stale_socket_is_recovered_after_kill_9(daemon_factory):
    d = daemon_factory()
    d.proc.kill()
    d.proc.wait()
    assert d.socket.exists()  # left behind
    again = daemon_factory()
    assert again.call("status")["pid"] == again.proc.pid
    assert "stale socket" in again.log()


def test_socket_modes(daemon_factory):
    d = daemon_factory()
    assert os.stat(d.socket).st_mode & 0o777 == 0o600
    assert os.stat(d.socket.parent).st_mode & 0o777 == 0o700


def open_to_everyone(d):
    """Opens the doors a misconfiguration might open, so that only the peer-uid check stands in the way."""
    os.chmod(d.socket.parent.parent, 0o755)
    os.chmod(d.socket.parent, 0o755)
    os.chmod(d.socket, 0o666)
    return d


@pytest.mark.needs_root
def test_other_uid_client_is_refused(daemon_factory):
    d = open_to_everyone(daemon_factory())
    script = (
        "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);\n"
        'try: s.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"secret.get"}\\n\')\n'
        "except OSError: pass\n"
        "print(s.recv(4096).decode())"
    )
    done = as_nobody(script, str(d.socket), timeout=30)
    assert "Permission denied" in done.stdout, done.stderr
    assert '"result"' not in done.stdout
    error = json.loads(done.stdout)["error"]
    assert error["code"] == -32000 and f"uid {NOBODY}" in error["message"]
    assert error["data"]["kind"] == "PermissionDenied" and "convocationsd of your own" in error["data"]["hint"]
    assert "refused a socket client running as uid" in d.log()


@pytest.mark.needs_root
def test_other_uid_client_that_writes_first_reads_the_refusal(daemon_factory):
    """A client of another uid that sends its request before it reads anything (without catching a failed
    send), and sends it only once the refusal has arrived, when a daemon that closed at once was gone: it
    still reads the refusal, then the end of the connection, never EPIPE or ECONNRESET."""
    d = open_to_everyone(daemon_factory())
    script = (
        "import select,socket,sys,time\n"
        "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
        "p=select.poll();p.register(s,select.POLLIN);assert p.poll(10000)\n"
        "time.sleep(0.3)\n"
        's.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"secret.get"}\\n\')\n'
        "got=b''\n"
        "while chunk:=s.recv(4096): got+=chunk\n"
        "print(got.decode(), end='')\n"
    )
    done = as_nobody(script, str(d.socket), timeout=30)
    assert done.returncode == 0, done.stderr  # no BrokenPipeError, no ConnectionResetError
    assert done.stdout.count("\n") == 1 and done.stdout.endswith("\n")  # the one line, then the end
    error = json.loads(done.stdout)["error"]
    assert error["data"]["kind"] == "PermissionDenied" and f"uid {NOBODY}" in error["message"]
    assert d.call("status")["pid"]  # the daemon serves its own user as before


def test_malformed_json_rpc_keeps_connection_usable(daemon_factory):
    d = daemon_factory()
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(d.socket))
    f = s.makefile("rwb")
    for bad, code in [
        (b"{nope\n", -32700),
        (b"[]\n", -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"x"}\n', -32601),
        (b'{"jsonrpc":"2.0","id":2,"method":"oauth.start","params":{"restart":"yes"}}\n', -32602),
        (b"\xff\xfe\n", -32700),
    ]:
        f.write(bad)
        f.flush()
        assert json.loads(f.readline())["error"]["code"] == code
    f.write(b'{"jsonrpc":"2.0","id":9,"method":"status"}\n')
    f.flush()
    assert json.loads(f.readline())["result"]["pid"] == d.proc.pid
    s.close()


def test_slow_subscriber_dropped_fast_one_gets_everything(daemon_factory):
    d = daemon_factory()
    slow = socket.socket(socket.AF_UNIX)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(str(d.socket))
    slow.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
    fast = d.client()
    fast.call("subscribe")
    seqs = []
    with d.client() as actor:
        for _ in range(1500):
            actor.call("oauth.start", {"restart": True})
            while (ev := fast.next_event(0)) is not None:
                seqs.append(ev["seq"])
        subscribers = actor.call("status")["subscribers"]
    while len(seqs) < 2999 and (ev := fast.next_event(10)) is not None:  # 10 s only bounds a failure
        seqs.append(ev["seq"])
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 2999  # nothing lost, in order
    assert subscribers == 1  # the stuck one was dropped
    assert "stopped reading" in d.log()
    slow.close()
    fast.close()


def test_sigterm_with_a_subscriber_that_stopped_reading_exits_promptly(daemon_factory):
    from convocationsd.daemon.ipc_server import QUEUE_LIMIT

    try:
        with open("/proc/sys/net/core/wmem_default") as f:
            kernel_buffer = int(f.read())  # the most a Unix socket's send side holds (payload plus overhead)
    except OSError:
        kernel_buffer = 212992
    target = kernel_buffer + 32 * 1024  # event bytes to send
    if target + 16 * 1024 > QUEUE_LIMIT:
        pytest.skip("socket buffers this large would get the stuck subscriber dropped before the shutdown")
    d = daemon_factory()
    subscribe = b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n'
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(str(d.socket))
    stuck.sendall(subscribe)  # and never reads
    reader = socket.socket(socket.AF_UNIX)
    reader.connect(str(d.socket))
    reader.sendall(subscribe)
    received: list[bytes] = []
    thread = threading.Thread(
        target=lambda: [received.append(c) for c in iter(lambda: reader.recv(65536), b"")], daemon=True
    )
    thread.start()
    # More event bytes than the kernel buffers for `stuck`, so the daemon holds some unsent, but less than
    # its queue limit on top, so `stuck` is not dropped as a slow subscriber: only shutdown can end it.
    with d.client() as actor:
        for _ in range(5000):
            if sum(map(len, received)) > target:
                break
            actor.call("oauth.start", {"restart": True})
        else:
            raise AssertionError("the reading subscriber got too few events")
        assert actor.call("status")["subscribers"] == 2
    assert d.stop(timeout=15) == 0  # ~1 s for clients to take their events, then cut off: not a hang
    thread.join(10)
    last = json.loads(b"".join(received).splitlines()[-1])
    assert last["params"]["event"] == "openrouter-auth-complete"  # a reader still gets SIGTERM's "cancelled"
    assert last["params"]["data"]["error"]["code"] == "cancelled"
    assert "1 client connection(s) that were not reading" in d.log()
    stuck.close()
    reader.close()


def test_port_zero_tries_again_when_its_port_is_taken_on_ipv6(monkeypatch):
    """The port the system picks for 127.0.0.1 may be another program's on ::1 (tests on a busy machine met it:
    the daemon exited 1 at start). Which port the system picks cannot be steered, so the first ::1 bind is made
    to fail as a busy port would."""
    import errno

    from convocationsd.daemon import http_sockets

    real, failed = http_sockets._listen, []

    def busy_once(family, address, port):
        if family == socket.AF_INET6 and not failed:
            failed.append(port)
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return real(family, address, port)

    monkeypatch.setattr(http_sockets, "_listen", busy_once)
    socks, port, fell_back = http_sockets.bind_loopback(0, fallback=False)
    try:
        assert failed and port != 0 and not fell_back
        assert {s.getsockname()[1] for s in socks} == {port}
    finally:
        for s in socks:
            s.close()


def test_port_zero_binds_one_free_port_on_both_loopbacks():
    from convocationsd.daemon.http_sockets import bind_loopback

    socks, port, fell_back = bind_loopback(0)
    try:
        assert port != 0 and not fell_back
        assert {s.getsockname()[1] for s in socks} == {port}
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("blocked_by", ["a file on the way", "a folder it may not write"])
def test_a_runtime_dir_that_cannot_be_made_says_what_to_set(daemon_factory, short_tmp, blocked_by):
    """XDG_RUNTIME_DIR names a folder that is missing and cannot be made, as after `su` or in a session without
    systemd-logind (/run/user/<uid> is root's to make): the daemon stops and says what to set instead."""
    parent = short_tmp / "parent"
    if blocked_by == "a file on the way":
        parent.write_text("")
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write any folder")
        parent.mkdir(mode=0o555)
    d = daemon_factory(wait=False, CONVOCATIONS_SOCKET="", XDG_RUNTIME_DIR=str(parent / "1234"))
    assert d.proc.wait(20) == 1
    log = d.log()
    assert f"{parent / '1234' / 'convocations'}" in log and "CONVOCATIONS_SOCKET (or XDG_RUNTIME_DIR)" in log, log
    assert "Traceback" not in log
