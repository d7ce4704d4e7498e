"""The real daemon as a service: under ``systemd-socket-activate`` (Debian's systemd package; no manager
needed), with a notify socket of our own, idle exit and re-activation, SIGTERM, SIGHUP and journal logging.

How the tool behaves (systemd 252), which shapes these tests: it binds every ``-l`` address, waits for the
first connection, then *execs* the command in place, so the daemon has the tool's pid (that is LISTEN_PID)
and the tool "exits" when the daemon does. The child sees only PATH, HOME, USER, TERM, the LISTEN_* variables
and what ``-E NAME=VALUE`` passes. Nothing holds the sockets after the daemon exits, unlike systemd, so a
second activation is tested two ways:

* restart the tool on the same path and port (it replaces the socket file it left behind), and
* put a small stand-in for the manager between the tool and the daemon (``RESPAWN``): it keeps the sockets,
  waits for a connection, forks the daemon with LISTEN_PID set to the child's pid, and does it again after
  the daemon exits. This is what systemd does, and it shows that the socket the daemon inherited still
  accepts after the daemon has gone (a daemon that ``shutdown()`` or unlinked it would break that).
"""

from __future__ import annotations

import calendar
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from convocationsd.client import Client
from tests.conftest import base_env, free_port, start_daemon, wait_for_socket, wait_until

TOOL = shutil.which("systemd-socket-activate")
needs_tool = pytest.mark.skipif(TOOL is None, reason="systemd-socket-activate is not installed (Debian: systemd)")
COMPLETE = "openrouter-auth-complete"
PASSED_ENV = ("XDG_", "CONVOCATIONS_", "RCONV_", "NOTIFY_SOCKET", "JOURNAL_STREAM", "PYTHON")

# The manager's part, reduced: hold the sockets, start the service on a connection, again after it exits.
RESPAWN = textwrap.dedent(
    """
    import os, select, sys
    assert os.environ["LISTEN_PID"] == str(os.getpid())
    fds = range(3, 3 + int(os.environ["LISTEN_FDS"]))
    runs, cmd = int(sys.argv[1]), sys.argv[2:]
    for _ in range(runs):
        waiting = select.poll()
        for fd in fds:
            waiting.register(fd, select.POLLIN)
        waiting.poll()  # blocks until a client connects; the test kills us if it never does
        pid = os.fork()
        if pid == 0:
            os.execve(cmd[0], cmd, dict(os.environ, LISTEN_PID=str(os.getpid())))
        _, status = os.waitpid(pid, 0)
        print("exited", pid, os.waitstatus_to_exitcode(status), flush=True)
    """
)


class NotifySocket:
    """A stand-in for systemd's notify socket: an AF_UNIX datagram socket we read sd_notify messages from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 20.0) -> str:
        """The first message (already read or arriving within ``timeout``) with ``line`` as one of its lines."""
        for message in self.messages:
            if line in message.splitlines():
                return message
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if line in message.splitlines():
                return message
        raise AssertionError(f"no {line!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Activation:
    """``systemd-socket-activate -l <ctl> -l 127.0.0.1:<port> -l [::1]:<port> --fdname=ctl:http:http ...``"""

    def __init__(
        self,
        tmp: Path,
        ctl: Path,
        port: int,
        *,
        command: list[str] | None = None,
        fdnames: str | None = "ctl:http:http",
        **env: str,
    ) -> None:
        self.ctl, self.port = ctl, port
        # The daemon's own defaults point elsewhere, so a daemon that ignored the inherited sockets would show.
        full = base_env(tmp, RCONV_HTTP_PORT=str(free_port()), CONVOCATIONS_SOCKET=str(tmp / "own.sock"), **env)
        passed = [f"--setenv={k}={v}" for k, v in sorted(full.items()) if k.startswith(PASSED_ENV)]
        command = command or [sys.executable, "-m", "convocationsd", "--log-level", "debug"]
        self.log_path = tmp / f"activate-{time.monotonic_ns()}.log"
        self.out_path = self.log_path.with_suffix(".out")
        with open(self.log_path, "wb") as log, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    TOOL,
                    "-l",
                    str(ctl),
                    "-l",
                    f"127.0.0.1:{port}",
                    "-l",
                    f"[::1]:{port}",
                    *([f"--fdname={fdnames}"] if fdnames else []),
                    *passed,
                    *command,
                ],
                stdout=out,
                stderr=log,
                cwd=tmp,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def client(self, timeout: float = 15.0) -> Client:
        """Connects once the tool listens (this connection is the one that activates the daemon)."""
        deadline = time.monotonic() + 10
        while True:
            client = Client(self.ctl, timeout=timeout)
            try:
                client.connect()
                return client
            except Exception:
                # Not bound yet, or still the stale file of an earlier run (connection refused).
                assert self.proc.poll() is None, f"systemd-socket-activate exited early:\n{self.log()}"
                assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
                time.sleep(0.02)

    def call(self, method: str, params: dict | None = None):
        with self.client() as c:
            return c.call(method, params)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def activations():
    started: list[Activation] = []
    yield started
    for a in started:
        a.kill()


@pytest.fixture
def notify(short_tmp):
    n = NotifySocket(short_tmp / "n.sock")
    yield n
    n.close()


def http_status(host: str, port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/api/status", headers={"Host": f"localhost:{port}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def daemon_lines(log: str) -> list[str]:
    """What the daemon wrote: the tool's own lines end with the one saying what it execs."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Execing ")) + 1
    return [line for line in lines[start:] if line]


# -- under systemd-socket-activate ----------------------------------------------------------------------


@needs_tool
def test_activated_daemon_serves_inherited_sockets_notifies_and_logs_for_the_journal(short_tmp, notify, activations):
    ctl, port = short_tmp / "c.sock", free_port()
    a = Activation(short_tmp, ctl, port, NOTIFY_SOCKET=str(notify.path), JOURNAL_STREAM="8:4242")
    activations.append(a)
    inode = None
    with a.client() as c:  # the first connection starts the daemon, which then answers it
        st = c.call("status")
        inode = os.stat(ctl).st_ino
        assert st["pid"] == a.proc.pid  # exec'd in place: LISTEN_PID is the tool's pid
        assert (st["port"], st["port_fallback"], st["socket"]) == (port, False, str(ctl))
        assert st["http_url"] == f"http://localhost:{port}"
    ready = notify.wait_for("READY=1")
    assert f"STATUS=Listening on http://localhost:{port}" in ready.splitlines()
    for host in ("127.0.0.1", "::1"):  # both inherited HTTP sockets serve
        code, body = http_status(host, port)
        assert code == 200 and body["port"] == port and body["pid"] == a.proc.pid
    assert not (short_tmp / "own.sock").exists()  # it did not bind sockets of its own

    # SIGTERM with a login pending: the subscriber hears it was cancelled, the exit is clean, and the socket
    # file (systemd's, not the daemon's) stays where it is.
    sub = a.client()
    sub.call("subscribe", {"events": [COMPLETE]})
    session = a.call("oauth.start")["session_id"]
    a.proc.send_signal(signal.SIGTERM)
    event = sub.next_event(10)
    sub.close()
    assert event is not None and event["event"] == COMPLETE
    assert event["data"]["session_id"] == session and event["data"]["error"]["code"] == "cancelled"
    assert a.wait() == 0
    assert "STOPPING=1" in notify.wait_for("STOPPING=1", 5).splitlines()
    assert os.stat(ctl).st_ino == inode

    # Under the journal (JOURNAL_STREAM set): every line has a <N> priority prefix and no timestamp.
    lines = daemon_lines(a.log())
    assert any("listening on http://localhost" in line for line in lines)
    for line in lines:
        assert re.match(r"<[0-7]>[a-z][\w.]*: ", line), line  # straight to the logger name: no timestamp
    assert any(line.startswith("<7>") for line in lines) and any(line.startswith("<6>") for line in lines)


@needs_tool
def test_idle_exit_then_a_new_activation_on_the_same_path(short_tmp, notify, activations):
    ctl, port = short_tmp / "c.sock", free_port()
    env = {"NOTIFY_SOCKET": str(notify.path), "CONVOCATIONS_IDLE_EXIT_SECONDS": "1"}
    first = Activation(short_tmp, ctl, port, **env)
    activations.append(first)
    pid1 = first.call("status")["pid"]
    inode = os.stat(ctl).st_ino
    notify.wait_for("READY=1")
    assert first.wait() == 0  # idle: nothing pending, nobody subscribed, no request for 1 s
    stopping = notify.wait_for("STOPPING=1", 5).splitlines()
    assert "STATUS=Stopping (idle)" in stopping
    assert "idle for 1 s" in first.log()
    assert os.stat(ctl).st_ino == inode  # the daemon left the inherited socket file alone

    # systemd-socket-activate went with its child (it *was* the child); start it again on the same path.
    second = Activation(short_tmp, ctl, port, **env)
    activations.append(second)
    st = second.call("status")
    assert st["pid"] == second.proc.pid != pid1
    assert (st["port"], st["port_fallback"], st["socket"]) == (port, False, str(ctl))
    assert second.wait() == 0


@needs_tool
def test_held_socket_reactivates_after_idle_exit(short_tmp, activations):
    """Like systemd: the sockets outlive the daemon; a request made while none runs starts the next one."""
    ctl, port = short_tmp / "c.sock", free_port()
    daemon = [sys.executable, "-m", "convocationsd", "--log-level", "debug"]
    a = Activation(
        short_tmp, ctl, port, command=[sys.executable, "-c", RESPAWN, "2", *daemon], CONVOCATIONS_IDLE_EXIT_SECONDS="1"
    )
    activations.append(a)
    pid1 = a.call("status")["pid"]
    inode = os.stat(ctl).st_ino
    wait_until(lambda: f"exited {pid1} 0" in a.out(), f"the first daemon's idle exit\n{a.log()}\n{a.out()}")

    # Nothing runs now; the connection waits in the held socket's backlog until the next daemon accepts it.
    with a.client() as c:
        st = c.call("status")
        assert st["pid"] != pid1 and (st["port"], st["port_fallback"]) == (port, False)
    assert http_status("127.0.0.1", port)[0] == 200
    assert os.stat(ctl).st_ino == inode
    assert a.wait() == 0  # the second daemon exited on idle too, and the stand-in with it
    assert a.out().splitlines() == [f"exited {pid1} 0", f"exited {st['pid']} 0"]


@needs_tool
def test_unnamed_inherited_sockets_are_used_by_family(short_tmp, activations):
    """A unit without FileDescriptorName= (here: no --fdname, so LISTEN_FDNAMES is unset and every fd is
    "unknown"): the Unix socket still serves IPC and the IP ones HTTP, instead of the daemon trying to bind
    the path that is already held."""
    ctl, port = short_tmp / "c.sock", free_port()
    a = Activation(short_tmp, ctl, port, fdnames=None)
    activations.append(a)
    st = a.call("status")
    assert (st["port"], st["port_fallback"], st["socket"]) == (port, False, str(ctl))
    assert http_status("::1", port)[0] == 200
    a.proc.send_signal(signal.SIGTERM)
    assert a.wait() == 0
    assert "has fd name 'unknown'; using it as 'ctl'" in a.log()
    assert ctl.exists()


# -- run by hand (not activated) ------------------------------------------------------------------------


def test_sigterm_with_pending_flow_not_activated(short_tmp, notify):
    d = start_daemon(short_tmp, wait=False, NOTIFY_SOCKET=str(notify.path))
    try:
        ready = notify.wait_for("READY=1")
        # READY means both servers accept: no retry loop needed from here.
        port = d.call("status")["port"]
        assert f"STATUS=Listening on http://localhost:{port}" in ready.splitlines()
        assert http_status("127.0.0.1", port)[0] == 200
        sub = d.client()
        sub.call("subscribe", {"events": [COMPLETE]})
        session = d.call("oauth.start")["session_id"]
        assert d.socket.exists()
        rc = d.stop(signal.SIGTERM)
        event = sub.next_event(10)
        sub.close()
        assert event is not None and event["data"]["session_id"] == session
        assert event["data"]["error"]["code"] == "cancelled"
        assert rc == 0
        assert not d.socket.exists()  # its own socket: removed
        assert "STOPPING=1" in notify.wait_for("STOPPING=1", 5).splitlines()
        # Not under the journal: timestamped lines, no <N> prefixes.
        assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO ", d.log(), re.M)
        assert not re.search(r"^<\d>", d.log(), re.M)
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_sighup_reloads_config_keeping_subscriber_and_pending_flow(short_tmp):
    config = short_tmp / "cfg" / "convocations" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('log_level = "warning"\nflow_timeout_seconds = 600\n')
    env = base_env(short_tmp, RCONV_HTTP_PORT=str(free_port()))
    log_path = short_tmp / "hup.log"
    with open(log_path, "wb") as log:  # no --log-level flag: it would outrank the config file
        proc = subprocess.Popen([sys.executable, "-m", "convocationsd"], env=env, stdout=log, stderr=subprocess.STDOUT)
    sock = Path(env["CONVOCATIONS_SOCKET"])
    try:
        wait_for_socket(sock, proc)
        sub = Client(sock, timeout=10)
        sub.connect()
        sub.call("subscribe", {"events": [COMPLETE]})
        with Client(sock) as c:
            flow = c.call("oauth.start")
        assert "listening on" not in log_path.read_text()  # info is below "warning"

        config.write_text('log_level = "debug"\nflow_timeout_seconds = 1234\n')
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in log_path.read_text(), "the reload")

        assert sub.call("status")["subscribers"] == 1  # the subscriber's own connection is still served
        with Client(sock) as c:
            st = c.call("status")
            assert st["pid"] == proc.pid and st["subscribers"] == 1
            assert st["flow"]["session_id"] == flow["session_id"] and st["flow"]["status"] == "pending"
            assert c.call("oauth.cancel")["cancelled"] is True
        event = sub.next_event(10)
        assert event is not None and event["data"]["session_id"] == flow["session_id"]
        assert event["data"]["error"]["code"] == "cancelled"
        with Client(sock) as c:  # a new login uses the reloaded timeout
            c.call("oauth.start")
            new = c.call("status")["flow"]
        created, expires = (
            calendar.timegm(time.strptime(new[k], "%Y-%m-%dT%H:%M:%SZ")) for k in ("created_at", "expires_at")
        )
        assert expires - created == 1234
        sub.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
