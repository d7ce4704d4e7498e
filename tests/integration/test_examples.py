"""The clients in examples/ complete a real login: the Node.js one (plain `net`, no npm packages) and the
shell ones (socat), against a real daemon and the fake OpenRouter, the browser played by the fake's
approve and a GET of the callback. CI installs node and socat (.ci/system-deps); without them these skip.

The daemon listens on its default path, $XDG_RUNTIME_DIR/convocations/convocationsd.sock, and the clients
are not told where: they find it the way docs/protocol.md says.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, follow_callback

NODE = shutil.which("node")
SOCAT = shutil.which("socat")
EXAMPLES = ROOT / "examples"
URL = re.compile(r"^\s+(https?://\S+/auth\?\S+)$")


@pytest.fixture
async def default_socket_daemon(short_tmp, daemon_factory, fake):
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_SOCKET="", CONVOCATIONS_OPENROUTER_URL=fake.url)
    assert d.socket == short_tmp / "run" / "convocations" / "convocationsd.sock"
    return d


def client_env(d) -> dict[str, str]:
    return {k: v for k, v in d.env.items() if k != "CONVOCATIONS_SOCKET"}


async def lines_until(stream: asyncio.StreamReader, pattern: re.Pattern | str, seen: list[str]) -> re.Match:
    while line := (await asyncio.wait_for(stream.readline(), 30)).decode():
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError("the example ended early:\n" + "".join(seen))


@pytest.mark.skipif(NODE is None, reason="node is not installed (.ci/system-deps installs Debian's nodejs)")
async def test_node_example_completes_a_login(default_socket_daemon, fake):
    d = default_socket_daemon
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(EXAMPLES / "node" / "login.mjs"),
        env=client_env(d),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        auth_url = (await lines_until(proc.stdout, URL, seen)).group(1)
        assert auth_url == d.call("status")["flow"]["auth_url"]
        status, _, html = await follow_callback(await fake.approve(auth_url))
        assert status == 200 and "linked" in html
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Linked. Your OpenRouter key is stored in local-encrypted." in out.decode()
    assert d.call("secret.status") == {"stored": True, "backend": "local-encrypted"}


@pytest.mark.skipif(NODE is None, reason="node is not installed (.ci/system-deps installs Debian's nodejs)")
async def test_node_example_says_when_the_daemon_is_not_running(short_tmp):
    env = {**os.environ, "XDG_RUNTIME_DIR": str(short_tmp)}
    env.pop("CONVOCATIONS_SOCKET", None)
    done = await asyncio.to_thread(
        subprocess.run, [NODE, str(EXAMPLES / "node" / "login.mjs")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 3
    assert f"nothing listens on {short_tmp}/convocations/convocationsd.sock" in done.stderr
    assert "Start it with `convocationsd`" in done.stderr and "    at " not in done.stderr  # no stack trace


@pytest.mark.skipif(SOCAT is None, reason="socat is not installed (.ci/system-deps installs it)")
async def test_shell_examples(default_socket_daemon, fake):
    d = default_socket_daemon
    done = await asyncio.to_thread(
        subprocess.run, ["sh", str(EXAMPLES / "shell" / "status.sh")], env=client_env(d), capture_output=True
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["result"]["pid"] == d.proc.pid

    proc = await asyncio.create_subprocess_exec(
        "sh",
        str(EXAMPLES / "shell" / "login.sh"),
        env=client_env(d),
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: the test ends it as Ctrl-C would
    )
    seen: list[str] = []
    try:
        reply = json.loads((await lines_until(proc.stdout, r'"id":2,', seen)).string)
        status, _, _ = await follow_callback(await fake.approve(reply["result"]["auth_url"]))
        assert status == 200
        event = json.loads((await lines_until(proc.stdout, r'"openrouter-auth-complete"', seen)).string)
        assert event["params"]["data"]["session_id"] == reply["result"]["session_id"]
        assert event["params"]["data"]["success"] is True
        assert [json.loads(line).get("id") for line in seen[:2]] == [1, 2]  # the replies before the event
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


def test_examples_need_no_packages():
    """The Node example imports only Node's own modules (node:...), so it runs without npm install."""
    source = (EXAMPLES / "node" / "login.mjs").read_text()
    imports = re.findall(r'^import .* from "([^"]+)";$', source, re.M)
    assert imports and all(name.startswith("node:") for name in imports), imports
    assert not (EXAMPLES / "node" / "package.json").exists()
    assert Path(EXAMPLES / "README.md").exists()
