"""Terminal hygiene: what convctl prints from the daemon, OpenRouter, the OS or a file cannot steer the
person's terminal (escape sequences, forged lines, reordered text), and --json stays exact JSON.

The daemon here is a stand-in: a plain Unix-socket server in the test that speaks just enough JSON-RPC to
hand convctl hostile strings, which the real daemon would never produce. convctl runs as a real process.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import base_env

FORGED = "Linked. Your OpenRouter key is stored in keyring."
# ESC-based CSI (clear screen), OSC (window title; a hyperlink ended by ST), CR+LF and a forged line,
# a right-to-left override, the 8-bit CSI, a line separator, BEL, and a lone surrogate (JSON can carry it).
EVIL = (
    "\x1b[2J\x1b]0;owned\x07\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
    f"\r\n{FORGED}\n\u202etxt.exe\x9b31m\u2028\ud800end"
)
# Everything a terminal could act on, bar the newline that ends each line: checked independently of the
# code under test.
STEERING = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
AUTH_URL = "https://openrouter.example/auth?state=abc" + EVIL


def assert_inert(output: str) -> None:
    assert not STEERING.search(output), repr(output)
    assert not any(line.startswith(FORGED) for line in output.split("\n")), output
    assert "\\x1b[2J" in output and "\\u202e" in output  # shown, so the person sees something was there


class FakeDaemon:
    """Answers each request from ``answers`` (method -> result, or an ``{"error": ...}`` object) and sends
    ``events`` after the reply to ``oauth.start``."""

    def __init__(self, path, answers: dict, events: list[dict] = ()) -> None:
        self.answers, self.events = answers, list(events)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                request = json.loads(line)
                answer = self.answers[request["method"]]
                reply = {"jsonrpc": "2.0", "id": request["id"]}
                reply.update(answer if "error" in answer else {"result": answer})
                f.write(json.dumps(reply).encode() + b"\n")
                if request["method"] == "oauth.start":
                    for params in self.events:
                        f.write(json.dumps({"jsonrpc": "2.0", "method": "event", "params": params}).encode() + b"\n")
                f.flush()

    def close(self) -> None:
        self.sock.close()


ANSWERS = {
    "subscribe": {"events": ["openrouter-auth-complete"]},
    "oauth.start": {
        "session_id": "s1",
        "auth_url": AUTH_URL,
        "callback_url": "http://localhost:3000/api/openrouter/oauth/callback",
        "expires_at": "2026-11-30T10:10:00Z",
        "joined": False,
    },
    "oauth.cancel": {"cancelled": False},
    "status": {
        "version": "0.1.0" + EVIL,
        "pid": 4242,
        "http_url": "http://localhost:3000" + EVIL,
        "port": 3000,
        "port_fallback": False,
        "socket": "/run/x.sock" + EVIL,
        "flow": {"session_id": "s1" + EVIL, "status": "failed", "error": {"message": "Denied" + EVIL}},
        "secret": {"stored": True, "backend": "keyring" + EVIL},
        "account": {"label": EVIL, "usage": 1.0, "limit": None, "valid": True, "message": None},
        "subscribers": 1,
    },
    "secret.status": {
        "error": {"code": -32000, "message": "Broken" + EVIL, "data": {"kind": "SecretStoreError", "hint": EVIL}}
    },
}
DENIED = {
    "event": "openrouter-auth-complete",
    "seq": 1,
    "data": {
        "session_id": "s1",
        "success": False,
        "backend": None,
        "error": {"code": "access_denied", "message": "Denied" + EVIL, "hint": "Try again" + EVIL},
    },
}


@pytest.fixture
def fake_daemon(short_tmp):
    path = short_tmp / "d.sock"
    fake = FakeDaemon(path, ANSWERS, [DENIED])
    yield path
    fake.close()


def convctl(short_tmp, sock, *args: str) -> tuple[int, str, str]:
    # No display: a browser can never be started, whatever the checks let through.
    env = base_env(short_tmp, CONVOCATIONS_SOCKET=str(sock), DISPLAY="", WAYLAND_DISPLAY="")
    for name in ("SSH_CONNECTION", "SSH_TTY"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "convocationsd.cli.main", *args], env=env, capture_output=True, timeout=30
    )
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")


def test_convctl_output_from_the_daemon_is_inert(short_tmp, fake_daemon):
    """auth_url, error messages and hints, status fields and a JSON-RPC error, each carrying ESC/CSI/OSC
    sequences, CR/LF with a forged line, bidi overrides and C1 controls: convctl shows them escaped,
    on the lines where they belong.

    Defence: cli.main.Out (every line through terminal.safe_line)."""
    rc, out, err = convctl(short_tmp, fake_daemon, "oauth", "start", "--no-browser")
    assert rc == 1
    assert_inert(out)
    assert_inert(err)
    assert out.split("\n")[2].startswith("  https://openrouter.example/auth?state=abc\\x1b[2J")  # the URL's own line
    assert err.split("\n")[-3].startswith("convctl: Denied\\x1b[2J") and err.split("\n")[-2].startswith("Try again")
    rc, out, err = convctl(short_tmp, fake_daemon, "status")
    assert rc == 0 and err == ""
    assert_inert(out)
    assert len(out.split("\n")) == 7  # six lines, as many as there are fields
    rc, out, err = convctl(short_tmp, fake_daemon, "secret", "status")
    assert rc == 1 and out == ""
    assert_inert(err)
    assert err.startswith("convctl: Broken\\x1b[2J") and len(err.split("\n")) == 3


def test_json_output_stays_exact_and_inert(short_tmp, fake_daemon):
    """--json: one JSON object a line that gives back the daemon's strings exactly, with nothing in its
    bytes that a terminal would act on (json.dumps leaves bidi, C1 and U+2028 raw without help).

    Defence: cli.main.Out.json (terminal.safe_json)."""
    rc, out, _ = convctl(short_tmp, fake_daemon, "oauth", "start", "--no-browser", "--json")
    assert rc == 1
    assert not STEERING.search(out), repr(out)
    started, complete = (json.loads(line) for line in out.splitlines())
    assert started["auth_url"] == AUTH_URL
    assert complete["error"]["message"] == "Denied" + EVIL


def test_browser_gets_only_a_plain_http_url(short_tmp, fake_daemon):
    """An auth_url that starts with https:// but carries controls and a forged line is not handed to a
    browser (nor would one that is not http(s) be).

    Defence: cli.commands.browser_safe."""
    rc, _, err = convctl(short_tmp, fake_daemon, "oauth", "start")
    assert rc == 1
    assert "not opening that address in a browser" in err and "Could not open a browser" not in err


# A process that holds a port under a name and arguments full of escapes, as another user's might.
HOLDER = (
    "import socket,sys\n"
    "open('/proc/self/comm','w').write(sys.argv[1])\n"
    "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "sys.stdin.read()\n"
)
COMM = "\x1b]0;pwn\x07\x1b[2J"  # 12 bytes: comm keeps 15


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names the holder through /proc")
def test_doctor_shows_a_hostile_process_name_inert(short_tmp):
    """doctor names whoever holds the port: a process name (comm) and command line with ESC sequences and
    a bidi override are shown escaped, and exactly in --json.

    Defence: cli.main.Out, which doctor prints through."""
    # A file, not -c, named relative to its folder: doctor shows the first 120 characters of the command line,
    # and a long TMPDIR would push the title out of them.
    (short_tmp / "h.py").write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, "h.py", COMM, "--title=\x1b]2;x\x07\u202eevil"],
        cwd=short_tmp,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = holder.stdout.readline().strip()
        env = base_env(
            short_tmp,
            CONVOCATIONS_SOCKET=str(short_tmp / "none.sock"),  # no daemon
            RCONV_HTTP_PORT=port,
            CONVOCATIONS_OPENROUTER_URL="http://127.0.0.1:9",  # refused at once
        )
        run = [sys.executable, "-m", "convocationsd.cli.main", "doctor"]
        done = subprocess.run(run, env=env, capture_output=True, timeout=60)
        as_json = subprocess.run([*run, "--json"], env=env, capture_output=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    out = done.stdout.decode("utf-8")
    assert f"127.0.0.1:{port} is held by \\x1b]0;pwn\\x07\\x1b[2J (pid {holder.pid}" in out, out
    assert "\\u202eevil" in out, out
    assert not STEERING.search(out), repr(out)
    text = as_json.stdout.decode("utf-8")
    assert not STEERING.search(text), repr(text)
    port_check = next(c for c in json.loads(text) if c["check"] == "port")
    assert f"is held by {COMM} (pid {holder.pid}" in port_check["verdict"]


def test_service_status_shows_systemctl_output_inert():
    """`convctl service status` quotes what systemctl says. No systemd user manager runs on the test
    machines, so systemctl is replaced by a stand-in that answers with escape sequences.

    Defence: cli.service_install._Session.say (terminal.safe_line)."""
    from convocationsd.cli import service_install

    out = io.StringIO()
    service_install.status(
        out=out,
        run=lambda argv: service_install.RunResult(1, f"\x1b]0;owned\x07Failed\r\n{FORGED}"),
        env={"HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent/.config"},
        platform="linux",
    )
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\\x1b]0;owned\\x07Failed" in text, text
    assert not any(line.startswith(FORGED) for line in text.split("\n")), text


def test_no_steering_character_is_printable():
    """No character a terminal acts on (C0/C1 controls, bidi and other format characters) counts as printable
    in this Python, so the fast path of safe_line and safe_json cannot let one through."""
    # safe_line and safe_json pass printable text through untouched (their fast path): that is safe only
    # while str.isprintable() is False for every character a terminal could act on, in this Python too.
    from convocationsd.cli.terminal import safe_json, safe_line

    everything = "".join(map(chr, range(0x110000)))
    steering = [*STEERING.findall(everything), "\n"]
    assert len(steering) == 0x0A + 0x15 + 0x21 + 1 + 2 + 7 + 4 + 0x800 + 1  # every range of STEERING
    assert not any(ch.isprintable() for ch in steering)
    for ch in steering:
        assert STEERING.search(safe_line(f"a{ch}b")) is None
        assert json.loads(safe_json({"k": f"a{ch}b"})) == {"k": f"a{ch}b"}
