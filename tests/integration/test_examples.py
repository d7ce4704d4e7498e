"""The clients in examples/ complete a real login: the Node.js one (plain `net`, no npm packages), the Rust
one (std only, no crates) and the shell ones (socat), against a real daemon and the fake OpenRouter, the
browser played by the fake's approve and a GET of the callback. CI installs node and socat
(.ci/system-deps); without them these skip. The Rust one is built by cargo where the tests can run it, or
beforehand by `make rust-example` (.ci/run does, as root): see tests/helpers/rust_example.py. Under CI a
missing build fails rather than skips.

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
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.adversarial.harness import NOBODY
from tests.adversarial.test_local_users import impostor
from tests.conftest import ROOT, follow_callback
from tests.helpers import rust_example as rust_build
from tests.unit.test_socket_path_doc import computed

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


async def login_with(argv: list[str], d, person) -> subprocess.CompletedProcess[str]:
    """Runs a login example against the daemon ``d``; once it prints the address to open, ``person(auth_url)``
    plays the person in the browser. Returns how the example ended."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=client_env(d), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    seen: list[str] = []
    try:
        auth_url = (await lines_until(proc.stdout, URL, seen)).group(1)
        assert auth_url == d.call("status")["flow"]["auth_url"]
        await person(auth_url)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(seen) + out.decode(), err.decode())


def approves(fake):
    async def approve(auth_url: str) -> None:
        status, _, html = await follow_callback(await fake.approve(auth_url))
        assert status == 200 and "linked" in html

    return approve


@pytest.mark.skipif(NODE is None, reason="node is not installed (.ci/system-deps installs Debian's nodejs)")
async def test_node_example_completes_a_login(default_socket_daemon, fake):
    d = default_socket_daemon
    done = await login_with([NODE, str(EXAMPLES / "node" / "login.mjs")], d, approves(fake))
    assert done.returncode == 0, done.stderr
    assert "Linked. Your OpenRouter key is stored in local-encrypted." in done.stdout
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


# ---- Rust (examples/rust) ----


@pytest.fixture(scope="module")
def rust() -> rust_build.Built:
    """examples/rust built: by cargo here when this user can run it, else the build `make rust-example` left."""
    cargo = rust_build.cargo()
    if cargo is not None:
        try:
            return rust_build.build(cargo)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"examples/rust does not build:\n{e.stderr}")
    built, why = rust_build.recorded()
    if built is not None:
        return built
    reason = f"{why}, and this user has no cargo to build it: run `make rust-example` as one who has"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (.ci/run does, before the tests)")
    pytest.skip(reason)


def test_rust_json_reader_unit_tests(rust):
    """The Rust unit tests (what `cargo test --offline` runs) of the hand-written JSON reader and writer:
    escapes, surrogate pairs, the number grammar, nesting, and what must be refused."""
    done = subprocess.run([str(rust.unit_tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = re.findall(r"^test json::tests::(\w+) \.\.\. ok$", done.stdout, re.M)
    assert {"reads_an_event_line_as_the_daemon_writes_it", "refuses_what_is_not_json"} <= set(ran), done.stdout
    assert "test paths::tests::reads_the_simple_forms_of_the_socket_key ... ok" in done.stdout
    assert re.search(r"^test result: ok\. \d+ passed; 0 failed", done.stdout, re.M), done.stdout


async def test_rust_example_restarts_and_completes_a_login(default_socket_daemon, fake, rust):
    """`login --restart` while another login waits: it starts its own, prints its address, and ends 0 once
    the person approves."""
    d = default_socket_daemon
    earlier = d.call("oauth.start")
    done = await login_with([str(rust.login), "--restart"], d, approves(fake))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Started a login.\nOpen this address to link your OpenRouter account:\n\n  ")
    assert "Linked. Your OpenRouter key is stored in local-encrypted." in done.stdout
    assert d.call("status")["flow"]["session_id"] != earlier["session_id"]
    assert d.call("secret.status") == {"stored": True, "backend": "local-encrypted"}


async def test_rust_example_joins_a_login_and_reports_its_failure(default_socket_daemon, fake, rust):
    """Without --restart it joins the login in progress; the person declines: the event's message and hint,
    exit 1."""
    d = default_socket_daemon
    earlier = d.call("oauth.start")

    async def decline(auth_url: str) -> None:
        status, _, _ = await follow_callback(await fake.deny(auth_url))
        assert status == 400

    done = await login_with([str(rust.login)], d, decline)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("Joined the login already in progress.\n")
    flow = d.call("status")["flow"]
    assert flow["session_id"] == earlier["session_id"] and flow["error"]["code"] == "access_denied"
    assert done.stderr == f"{flow['error']['message']} {flow['error']['hint']}\n"


async def test_rust_example_says_when_the_daemon_is_not_running(short_tmp, rust):
    env = {**os.environ, "XDG_RUNTIME_DIR": str(short_tmp)}
    env.pop("CONVOCATIONS_SOCKET", None)
    done = await asyncio.to_thread(subprocess.run, [str(rust.login)], env=env, capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stderr == (
        f"login: The convocationsd daemon is not running (nothing listens on {short_tmp}/convocations/convocationsd.sock).\n"
        "Start it with `convocationsd` (or `systemctl --user start convocationsd.socket`).\n"
    )
    assert done.stdout == ""


def own_runtime_dir() -> bool:
    """Whether /run/user/<uid> is this user's private directory: then the fallback would find the socket of
    the daemon the person runs, which a test must not talk to."""
    try:
        st = os.lstat(f"/run/user/{os.geteuid()}")
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


@pytest.mark.parametrize(
    "values",
    [
        {"CONVOCATIONS_SOCKET": "{tmp}/else/where.sock", "XDG_RUNTIME_DIR": "{tmp}/xdg"},
        {"CONVOCATIONS_SOCKET": "", "XDG_RUNTIME_DIR": "{tmp}/xdg"},
        {"XDG_RUNTIME_DIR": "relative/dir", "TMPDIR": "{tmp}"},
        {"TMPDIR": "not/absolute", "TEMP": "{tmp}"},
    ],
    ids=["explicit", "empty-explicit", "relative-xdg", "temp-fallback"],
)
def test_rust_example_finds_the_socket_where_the_daemon_puts_it(short_tmp, rust, values):
    """docs/protocol.md's steps in Rust give the daemon's own path (common.paths.socket_path), each computed
    in a fresh process with the same environment; the example names it when nothing listens there."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env["XDG_CONFIG_HOME"] = str(short_tmp / "cfg")  # no config.toml of the person's is read
    env.update({k: v.format(tmp=short_tmp) for k, v in values.items()})
    if not os.path.isabs(env.get("XDG_RUNTIME_DIR", "")) and own_runtime_dir():
        pytest.skip("/run/user/<uid> is yours: the example would find the daemon you run")
    done = subprocess.run([str(rust.login)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    found = re.search(r"nothing listens on (.+)\)\.$", done.stderr, re.M)
    assert found, done.stderr
    assert found.group(1) == str(computed(env))  # where the daemon would be, as the package computes it
    assert str(short_tmp) in found.group(1)  # nothing outside the test was looked at


def pythons_socket_path(env: dict[str, str]) -> str:
    code = "import os; from convocationsd.common import paths; print(paths.socket_path(os.environ))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize(
    "config, wanted",
    [
        ('http_port = 3001\nsocket = "{tmp}/from \\"config\\".sock"  # mine\n', '{tmp}/from "config".sock'),
        ("socket = '{tmp}/literal.sock'\n[openrouter_api_key]\nsocket = 'not/this'\n", "{tmp}/literal.sock"),
        ('socket = "~/in-home.sock"\n', "{tmp}/in-home.sock"),
        ('[openrouter_api_key]\nsocket = "{tmp}/in-a-table.sock"\n', "{tmp}/xdg/convocations/convocationsd.sock"),
        ('socket = ""\n', "{tmp}/xdg/convocations/convocationsd.sock"),
    ],
    ids=["escapes", "literal", "home", "in-a-table", "empty"],
)
@pytest.mark.parametrize("client", ["node", "rust"])
def test_examples_find_a_socket_named_in_config_toml(short_tmp, request, client, config, wanted):
    """protocol.md's step 2 in the simple form the examples read: the path the daemon and convctl take from
    the same config.toml (common.paths.socket_path), named when nothing listens there."""
    if client == "node" and NODE is None:
        pytest.skip("node is not installed (.ci/system-deps installs Debian's nodejs)")
    argv = (
        [NODE, str(EXAMPLES / "node" / "login.mjs")]
        if client == "node"
        else [str(request.getfixturevalue("rust").login)]
    )
    folder = short_tmp / "cfg" / "convocations"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config.format(tmp=short_tmp))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH")}
    env.update(HOME=str(short_tmp), XDG_CONFIG_HOME=str(short_tmp / "cfg"), XDG_RUNTIME_DIR=str(short_tmp / "xdg"))
    done = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    found = re.search(r"nothing listens on (.+?)(?:: ENOENT)?\)\.$", done.stderr, re.M)
    assert found, done.stderr
    assert found.group(1) == wanted.format(tmp=short_tmp) == pythons_socket_path(env)
    variable = {**env, "XDG_CONFIG_HOME": str(short_tmp / "none"), "CONVOCATIONS_CONFIG": str(folder / "config.toml")}
    again = subprocess.run([str(a) for a in argv], env=variable, capture_output=True, text=True, timeout=30)
    assert found.group(0) in again.stderr  # CONVOCATIONS_CONFIG names the same file


@pytest.mark.parametrize("unsafe", ["writable by others", "a symbolic link"])
def test_rust_example_sends_nothing_to_a_socket_in_a_directory_others_control(short_tmp, rust, unsafe):
    """A socket directory another user could swap (mode 0777 without the sticky bit, or a link): the example
    refuses before it connects, exit 3, and says why. Defence: paths::check_socket_dir."""
    real = short_tmp / "real"
    real.mkdir(mode=0o700)
    if unsafe == "writable by others":
        os.chmod(real, 0o777)
        directory, why = real, f"The socket directory {real} can be written by other users (mode 0777)"
    else:
        directory = short_tmp / "link"
        directory.symlink_to(real)
        why = f"The socket directory {directory} is a symbolic link (to {real})."
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(real / "d.sock"))
        listener.listen()
        env = {**os.environ, "CONVOCATIONS_SOCKET": str(directory / "d.sock")}
        done = subprocess.run([str(rust.login)], env=env, capture_output=True, text=True, timeout=30)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # it did not even connect
    assert done.returncode == 3, done.stdout + done.stderr
    assert why in done.stderr and "set CONVOCATIONS_SOCKET (or XDG_RUNTIME_DIR)" in done.stderr
    assert done.stdout == ""


REFUSAL = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {
        "code": -32000,
        "message": "Permission denied: this daemon serves only its own user (uid 1000), and this client runs as uid 1001.",
        "data": {"kind": "PermissionDenied", "hint": "Run the client as the user who runs convocationsd."},
    },
}


def serve_once(path: Path, script) -> threading.Thread:
    """A socket at ``path`` (ours, so the example trusts it) whose one connection ``script(reader, writer)``
    serves, standing in for a daemon that misbehaves in ways the real one cannot be made to."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        with listener, listener.accept()[0] as conn, conn.makefile("rb") as reader, conn.makefile("wb") as writer:
            script(reader, writer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def send(writer, message) -> None:
    writer.write((message if isinstance(message, bytes) else json.dumps(message).encode()) + b"\n")
    writer.flush()


def refuse_at_once(reader, writer) -> None:  # as the daemon does to a client of another user
    send(writer, REFUSAL)


def answer_with_garbage(reader, writer) -> None:
    reader.readline()
    send(writer, b"<html>not JSON-RPC</html>")


def close_during_the_login(reader, writer) -> None:
    for _ in range(2):  # subscribe, then oauth.start
        request = json.loads(reader.readline())
        result = {"events": ["openrouter-auth-complete"]}
        if request["method"] == "oauth.start":
            result = {"session_id": "s-1", "auth_url": "http://127.0.0.1:9/auth?x=1", "joined": False}
        send(writer, {"jsonrpc": "2.0", "id": request["id"], "result": result})


@pytest.mark.parametrize(
    ("script", "code", "says"),
    [
        (
            refuse_at_once,
            1,
            f"login: {REFUSAL['error']['message']}\nRun the client as the user who runs convocationsd.\n",
        ),
        (answer_with_garbage, 1, "sent a line that is not a JSON-RPC message.\nCheck that CONVOCATIONS_SOCKET names"),
        (close_during_the_login, 3, "The daemon closed the connection before the login ended; run this again.\n"),
    ],
    ids=["refused", "garbage", "closed"],
)
def test_rust_example_explains_a_daemon_that_refuses_garbles_or_goes(short_tmp, rust, script, code, says):
    """What the daemon says when it refuses is shown as it said it; a line that is not JSON-RPC, or a
    connection that ends mid-login, gets a message of the example's own: never a panic."""
    sock = short_tmp / "d.sock"
    server = serve_once(sock, script)
    env = {**os.environ, "CONVOCATIONS_SOCKET": str(sock)}
    done = subprocess.run([str(rust.login)], env=env, capture_output=True, text=True, timeout=30)
    server.join(10)
    assert done.returncode == code, done.stdout + done.stderr
    assert says in done.stderr and "panicked" not in done.stderr


@pytest.mark.needs_root
def test_rust_example_refuses_a_server_run_by_another_user(short_tmp, rust):
    """CONVOCATIONS_SOCKET in a shared sticky directory (allowed: others cannot swap a socket there) where
    another user serves: the example asks the kernel who serves it (SO_PEERCRED) and sends not a byte.
    Defence: sys::peer_uid and its check in Client::connect_to."""
    with impostor(short_tmp) as (sock, received):
        env = {**os.environ, "CONVOCATIONS_SOCKET": str(sock)}
        for argv in ([str(rust.login)], [str(rust.login), "--restart"]):  # the impostor serves two connections
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 3, done.stdout + done.stderr
            assert f"The socket {sock} is served by uid {NOBODY}, not by you, so nothing was sent to it." in done.stderr
            assert "Someone may be posing as convocationsd" in done.stderr and done.stdout == ""
        got, output = received()
    assert got == ["", ""], output  # two connections, not a byte on either


# ---- the examples against docs/protocol.md ----

PROTOCOL = ROOT / "docs" / "protocol.md"


def documented_names(protocol: str) -> tuple[set[str], set[str]]:
    """The method names of protocol.md's Methods table and the event names of its Events table."""

    def first_column(section: str) -> set[str]:
        body = protocol.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
        return set(re.findall(r"^\| `([^`]+)` \|", body, re.M))

    return first_column("Methods"), first_column("Events")


def names_used(rust_source: str) -> tuple[set[str], set[str], set[str]]:
    """What the Rust client sends and expects: methods it calls, events it subscribes to or tests for, and the
    members it reads from replies and events (`value["name"]`, `.get("name")`)."""
    methods = set(re.findall(r'\.call\(\s*"([^"]+)"', rust_source))
    subscribed = re.findall(r"subscribe\(&\[([^\]]*)\]\)", rust_source)
    events = {name for group in subscribed for name in re.findall(r'"([^"]+)"', group)}
    events |= set(re.findall(r'\.name\s*[!=]=\s*"([^"]+)"', rust_source))
    members = set(re.findall(r'\["([A-Za-z_]+)"\]', rust_source)) | set(
        re.findall(r'\.get\("([A-Za-z_]+)"\)', rust_source)
    )
    return methods, events, members


def stale_names(rust_source: str, protocol: str) -> list[str]:
    """Every name the client uses that protocol.md does not document: empty while the two agree."""
    methods, events = documented_names(protocol)
    used_methods, used_events, members = names_used(rust_source)
    stale = [f"method {m}" for m in sorted(used_methods - methods)]
    stale += [f"event {e}" for e in sorted(used_events - events)]
    stale += [f"member {m}" for m in sorted(members) if not re.search(rf"\b{m}\b", protocol)]
    return stale


def rust_sources() -> str:
    """The client's code, without comments and unit tests (the `#[cfg(test)]` module closes a file)."""
    code = [f.read_text().split("#[cfg(test)]", 1)[0] for f in sorted((EXAMPLES / "rust" / "src").rglob("*.rs"))]
    return "\n".join(line for text in code for line in text.splitlines() if not line.lstrip().startswith("//"))


def test_rust_example_uses_only_what_protocol_md_documents():
    """Every method the Rust client calls is in protocol.md's Methods table, every event it waits for in the
    Events table, every member it reads somewhere in the document; and the check notices either side moving."""
    source, protocol = rust_sources(), PROTOCOL.read_text()
    methods, events, members = names_used(source)
    assert {"subscribe", "oauth.start"} <= methods and events == {"openrouter-auth-complete"}, (methods, events)
    assert {"session_id", "auth_url", "joined", "success", "backend", "seq", "hint", "kind"} <= members, members
    assert stale_names(source, protocol) == []
    # It goes stale the moment either side moves:
    assert stale_names(source.replace('"oauth.start"', '"oauth.begin"'), protocol) == ["method oauth.begin"]
    renamed = protocol.replace("| `openrouter-auth-complete` |", "| `openrouter-login-complete` |")
    assert stale_names(source, renamed) == ["event openrouter-auth-complete"]
    assert stale_names(source.replace('["session_id"]', '["sessionId"]'), protocol) == ["member sessionId"]
