"""inherited_sockets() against the real tool: Debian's systemd-socket-activate binds both sockets, waits for
the first connection, then starts a tiny Python child with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set the way
the service manager sets them. No systemd manager is needed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from convocationsd.testing.ports import free_port

TOOL = shutil.which("systemd-socket-activate")
pytestmark = pytest.mark.skipif(TOOL is None, reason="systemd-socket-activate is not installed")

CHILD = textwrap.dedent(
    """
    import json
    from convocationsd.daemon.systemd import inherited_sockets
    found = inherited_sockets()
    print(json.dumps({name: [[s.family.name, s.type.name, s.getsockname()] for s in socks]
                      for name, socks in found.items()}), flush=True)
    """
)


def test_child_sees_named_sockets_from_systemd_socket_activate():
    folder = tempfile.mkdtemp(prefix="cv")  # short: AF_UNIX paths must stay under 108 bytes
    path = os.path.join(folder, "ctl.sock")
    port = free_port()
    tool = subprocess.Popen(
        [TOOL, "-l", path, "-l", f"127.0.0.1:{port}", "--fdname=ctl:http", sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_UNIX) as client:
            while True:  # the tool binds, then waits for this first connection before it starts the child
                try:
                    client.connect(path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
                    assert tool.poll() is None, tool.stderr.read()
                    time.sleep(0.02)
            out, err = tool.communicate(timeout=20)
        assert tool.returncode == 0, err
        report = json.loads(out)
        assert report == {
            "ctl": [["AF_UNIX", "SOCK_STREAM", path]],
            "http": [["AF_INET", "SOCK_STREAM", ["127.0.0.1", port]]],
        }
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        shutil.rmtree(folder, ignore_errors=True)
