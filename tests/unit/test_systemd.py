"""systemd.py against real sockets: LISTEN_* parsing in a child process whose fds 3.. are real listening
sockets (the pytest process's own fds 3.. belong to pytest), and sd_notify to a real datagram socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pytest

from convocationsd.daemon import systemd

# Moves the passed fds to 3, 4, ..., sets LISTEN_* for itself, calls inherited_sockets and reports.
CHILD = textwrap.dedent(
    """
    import fcntl, json, os, sys
    from convocationsd.daemon.systemd import inherited_sockets
    spec = json.loads(sys.argv[1])
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in spec["fds"]]  # out of the way of 3..
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=False)
        os.close(fd)
    for fd in spec["fds"]:
        if fd >= 3 + len(high):
            os.close(fd)
    env = {"LISTEN_PID": str(os.getpid()) if spec["pid"] == "self" else spec["pid"], "LISTEN_FDS": spec["count"]}
    if spec.get("names") is not None:
        env["LISTEN_FDNAMES"] = spec["names"]
    os.environ.update(env)
    found = inherited_sockets(os.environ, unset_env=spec.get("unset", True))
    report = {name: [{"family": s.family.name, "type": s.type.name, "blocking": s.getblocking(),
                      "inheritable": s.get_inheritable(), "fd": s.fileno()} for s in socks]
              for name, socks in found.items()}
    print(json.dumps({"found": report, "left": sorted(k for k in os.environ if k.startswith("LISTEN_"))}))
    """
)


@pytest.fixture
def short_dir():
    path = tempfile.mkdtemp(prefix="cv")  # short: AF_UNIX paths must stay under 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listeners(short_dir):
    """A listening Unix socket and a listening TCP socket on 127.0.0.1, like the two units provide."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(os.path.join(short_dir, "s"))
    unix.listen()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    yield [unix, tcp]
    unix.close()
    tcp.close()


def run_child(socks, *, count=None, names=None, pid="self", unset=True) -> dict:
    fds = [s.fileno() for s in socks]
    spec = {"fds": fds, "count": str(len(fds) if count is None else count), "names": names, "pid": pid, "unset": unset}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], pass_fds=fds, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_named_sockets_are_grouped_typed_nonblocking_and_cloexec(listeners):
    report = run_child(listeners, names="ctl:http")
    found = report["found"]
    assert list(found) == ["ctl", "http"]
    assert found["ctl"] == [
        {"family": "AF_UNIX", "type": "SOCK_STREAM", "blocking": False, "inheritable": False, "fd": 3}
    ]
    assert found["http"] == [
        {"family": "AF_INET", "type": "SOCK_STREAM", "blocking": False, "inheritable": False, "fd": 4}
    ]
    assert report["left"] == []  # unset_env removed LISTEN_* so our children never see them


def test_several_fds_may_share_a_name(listeners):
    found = run_child(listeners, names="http:http")["found"]
    assert [s["family"] for s in found["http"]] == ["AF_UNIX", "AF_INET"]


def test_names_default_to_unknown(listeners):
    assert list(run_child(listeners, names=None)["found"]) == ["unknown"]
    assert {k: len(v) for k, v in run_child(listeners, names="ctl")["found"].items()} == {"ctl": 1, "unknown": 1}


def test_variables_kept_when_asked(listeners):
    assert run_child(listeners, names="ctl:http", unset=False)["left"] == ["LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID"]


def test_sockets_meant_for_another_process_are_ignored(listeners):
    report = run_child(listeners, names="ctl:http", pid="1")
    assert report["found"] == {}
    assert report["left"] == []


def test_not_activated_returns_empty(monkeypatch):
    monkeypatch.setenv("LISTEN_FDNAMES", "ctl")  # stray name without LISTEN_PID/LISTEN_FDS
    assert systemd.inherited_sockets({}, unset_env=True) == {}
    assert "LISTEN_FDNAMES" not in os.environ


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "abc", "LISTEN_FDS": "1"},
        {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"},
        {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"},
        {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"},
    ],
)
def test_malformed_or_foreign_variables_return_empty(env):
    assert systemd.inherited_sockets(env, unset_env=False) == {}


# ------------------------------------------------------------------------------------------------ notify


def test_notify_sends_one_datagram(short_dir):
    path = os.path.join(short_dir, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        assert systemd.notify("READY=1\nSTATUS=Serving", {"NOTIFY_SOCKET": path}) is True
        receiver.settimeout(5)
        assert receiver.recv(4096) == b"READY=1\nSTATUS=Serving"


def test_notify_abstract_namespace():
    name = f"convocationsd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        receiver.settimeout(5)
        assert receiver.recv(4096) == b"STOPPING=1"


def test_notify_is_a_noop_without_socket():
    assert systemd.notify("READY=1", {}) is False


@pytest.mark.parametrize("address", ["/nonexistent/notify.sock", "relative/notify", "vsock:2:1234"])
def test_notify_never_raises(address):
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": address}) is False


def test_under_journal():
    assert systemd.under_journal({"JOURNAL_STREAM": "8:12345"})
    assert systemd.under_journal({"INVOCATION_ID": "0123abcd"})
    assert not systemd.under_journal({})
    assert not systemd.under_journal({"JOURNAL_STREAM": ""})


def test_service_unit(tmp_path):
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/user.slice/user-1000.slice/user@1000.service/app.slice/convocationsd.service\n")
    assert systemd.service_unit({"INVOCATION_ID": "abc"}, str(cgroup)) == "convocationsd.service"
    assert systemd.service_unit({}, str(cgroup)) is None  # systemd-socket-activate, a terminal: no manager
    v1 = "12:cpuset:/\n1:name=systemd:/user.slice/user-1000.slice/user@1000.service/convocationsd.service\n"
    cgroup.write_text(v1)
    assert systemd.service_unit({"INVOCATION_ID": "abc"}, str(cgroup)) == "convocationsd.service"
    # A shell in a terminal server's unit inherits its INVOCATION_ID: that unit is not ours to restart.
    cgroup.write_text("0::/user.slice/user-1000.slice/user@1000.service/app.slice/gnome-terminal-server.service\n")
    assert systemd.service_unit({"INVOCATION_ID": "abc"}, str(cgroup)) is None
    cgroup.write_text("0::/user.slice/user-1000.slice/user@1000.service/app.slice/vte-spawn-1.scope\n")
    assert systemd.service_unit({"INVOCATION_ID": "abc"}, str(cgroup)) is None
    assert systemd.service_unit({"INVOCATION_ID": "abc"}, str(tmp_path / "missing")) is None
