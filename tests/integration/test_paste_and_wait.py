"""Headless login (`--paste`), the no-browser advice, and waiting: Ctrl-C, --timeout, the spinner on a tty."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from io import StringIO
from urllib.parse import parse_qs, urlsplit

import pytest

from convocationsd.cli import commands
from convocationsd.cli import main as cli
from convocationsd.core.errors import DaemonUnreachable, NoReply, RemoteError
from tests.conftest import AUTH_URL_RE, assert_no_secret, convctl, read_auth_url, read_line_with, readable


def flow_error(daemon) -> str | None:
    flow = daemon.call("status")["flow"]
    return flow["error"]["code"] if flow and flow["error"] else None


async def wait_for_flow_end(daemon, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow = daemon.call("status")["flow"]
        if flow and flow["status"] != "pending":
            return flow
        await asyncio.sleep(0.05)
    raise AssertionError("the flow did not end")


# -- paste mode ------------------------------------------------------------------------------------------------


async def test_paste_mode_end_to_end(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste", "--timeout", "30")
    auth_url = await read_auth_url(proc)
    query = parse_qs(urlsplit(auth_url).query)
    assert "callback_url" not in query and query["code_challenge_method"] == ["S256"]
    code = await fake.approve_headless(auth_url)
    out, err = await asyncio.to_thread(proc.communicate, code + "\n", 20)
    assert proc.returncode == 0, err
    assert "paste the code" in err
    assert "Linked. Your OpenRouter key is stored in local-encrypted, as CONVOCATIONS_SECRET_BACKEND asks." in out
    key = fake.issued_keys[-1]
    assert daemon.call("secret.get") == {"key": key}
    flow = daemon.call("status")["flow"]
    assert flow["status"] == "succeeded" and flow["paste"] is True and flow["callback_url"] is None
    assert_no_secret(key, out, err, daemon.all_output())
    assert_no_secret(code, out, err, daemon.log())


async def test_paste_accepts_the_whole_address(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste")
    code = await fake.approve_headless(await read_auth_url(proc))
    pasted = f"  'https://example.invalid/done?code={code}&x=1'  "
    _out, err = await asyncio.to_thread(proc.communicate, pasted + "\n", 20)
    assert proc.returncode == 0, err
    assert daemon.call("secret.status")["stored"] is True


async def test_paste_nothing_cancels_the_login(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste")
    await read_auth_url(proc)
    _out, err = await asyncio.to_thread(proc.communicate, "", 20)  # end of input: nothing pasted
    assert proc.returncode == 2
    assert "No code was pasted" in err and "--paste" in err
    assert flow_error(daemon) == "cancelled"  # not left pending for ten minutes


async def test_paste_wrong_codes_three_times_cancels_clearly(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste")
    await read_auth_url(proc)
    _out, err = await asyncio.to_thread(proc.communicate, "not-the-code\nnor-this\nnor-that\nnever-read\n", 20)
    assert proc.returncode == 1, err
    assert err.count("did not accept that code for this login") == 2 and "(attempt 3 of 3)" in err
    # After the third, one message: what happened and what to do, not the per-code message as well.
    assert err.splitlines()[-2:] == [
        "convctl: OpenRouter did not accept that code either (3 codes tried), so the login was cancelled.",
        "Run `convctl oauth start --paste` again, approve, and copy the whole code OpenRouter shows.",
    ], err
    assert flow_error(daemon) == "cancelled"
    assert daemon.call("secret.status")["stored"] is False


async def test_paste_a_wrong_code_then_the_right_one(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste")
    code = await fake.approve_headless(await read_auth_url(proc))
    out, err = await asyncio.to_thread(proc.communicate, f"not-the-code\n{code}\n", 20)
    assert proc.returncode == 0, err
    assert "did not accept that code" in err and "(attempt 2 of 3)" in err
    assert "Linked." in out and daemon.call("secret.status")["stored"] is True
    assert_no_secret(code, out, err, daemon.log())


# -- paste mode against a stand-in client (answers the daemon gives rarely or only when slow) ----------------


class StandInClient:
    """What ``commands._client`` returns: answers ``oauth.exchange`` from ``exchanges``, records calls."""

    def __init__(self, exchanges: list) -> None:
        self.exchanges = exchanges
        self.calls: list[tuple[str, dict | None, float | None]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def call(self, method: str, params: dict | None = None, *, timeout: float | None = None):
        self.calls.append((method, params, timeout))
        if method == "oauth.start":
            return {
                "session_id": "s1",
                "joined": False,
                "auth_url": "https://openrouter.invalid/auth?x=1",
                "callback_url": None,
            }
        if method == "oauth.exchange":
            answer = self.exchanges.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if method == "oauth.cancel":
            return {"cancelled": True}
        return {}

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.calls]


def rejected() -> RemoteError:
    return RemoteError(-32000, "OpenRouter did not accept that code for this login.", "Paste it again.", "CodeRejected")


def run_paste(monkeypatch, client: StandInClient, pasted: str) -> tuple[int, str, str]:
    monkeypatch.setattr(commands, "_client", lambda args: client)
    stdout, stderr = StringIO(), StringIO()
    rc = cli.main(["oauth", "start", "--paste"], cli.Out(stdout, stderr, StringIO(pasted)))
    return rc, stdout.getvalue(), stderr.getvalue()


def test_paste_slow_exchange_is_not_a_lost_login(monkeypatch):
    client = StandInClient([NoReply("oauth.exchange")])
    rc, _out, err = run_paste(monkeypatch, client, "the-code\n")
    assert rc == 1
    assert "still working on the code" in err and "convctl status" in err
    assert "lost" not in err and "went away" not in err
    assert "oauth.cancel" not in client.methods()  # it may yet succeed
    assert ("oauth.exchange", {"code": "the-code", "session_id": "s1"}, 300.0) in client.calls


def test_paste_disconnect_is_a_lost_login(monkeypatch):
    client = StandInClient([DaemonUnreachable("The daemon closed the connection.", "")])
    rc, _out, err = run_paste(monkeypatch, client, "the-code\n")
    assert rc == 3 and "so that login is lost" in err


def test_paste_rejected_code_prompts_again(monkeypatch):
    client = StandInClient([rejected(), {"success": True, "backend": "keyring", "error": None}])
    rc, out, err = run_paste(monkeypatch, client, "wrong\nright\n")
    assert rc == 0 and "Linked." in out
    assert err.count("did not accept that code") == 1 and "Paste it again. (attempt 2 of 3)" in err
    assert [p["code"] for m, p, _ in client.calls if m == "oauth.exchange"] == ["wrong", "right"]


def test_paste_three_rejected_codes_cancel_the_login(monkeypatch):
    client = StandInClient([rejected(), rejected(), rejected()])
    rc, _out, err = run_paste(monkeypatch, client, "a\nb\nc\nd\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines.count("convctl: OpenRouter did not accept that code for this login.") == 2
    assert lines[-3:] == [
        "Paste it again. (attempt 3 of 3)",  # after the second code; the third is answered once:
        "convctl: OpenRouter did not accept that code either (3 codes tried), so the login was cancelled.",
        "Run `convctl oauth start --paste` again, approve, and copy the whole code OpenRouter shows.",
    ], err
    assert client.methods().count("oauth.exchange") == 3
    assert client.calls[-1] == ("oauth.cancel", {"session_id": "s1"}, None)


def test_paste_other_errors_are_not_retried(monkeypatch):
    client = StandInClient([RemoteError(-32000, "No login is waiting for a code.", "", "UsageError")])
    rc, _out, err = run_paste(monkeypatch, client, "a\nb\n")
    assert rc == 1 and "No login is waiting" in err
    assert client.methods().count("oauth.exchange") == 1


def test_status_names_no_fixed_port_for_a_fallback(monkeypatch):
    class StatusClient(StandInClient):
        def call(self, method, params=None, *, timeout=None):
            return {
                "pid": 1,
                "version": "0",
                "http_url": "http://localhost:41000",
                "port_fallback": True,
                "socket": "/run/x.sock",
                "secret": {"stored": False},
                "flow": None,
            }

    monkeypatch.setattr(commands, "_client", lambda args: StatusClient([]))
    stdout = StringIO()
    assert cli.main(["status"], cli.Out(stdout, StringIO(), StringIO())) == 1  # 1: no key is stored
    assert "FALLBACK: the preferred port was busy" in stdout.getvalue() and "3000" not in stdout.getvalue()


async def test_paste_timeout(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste", "--timeout", "1")
    await read_auth_url(proc)
    started = time.monotonic()
    rc = await asyncio.to_thread(proc.wait, 15)  # stdin stays open: nobody pastes
    _out, err = proc.communicate()
    assert rc == 1 and time.monotonic() - started < 10
    assert "no answer within 1 s" in err
    assert flow_error(daemon) == "cancelled"


async def test_paste_ctrl_c(daemon, fake):
    proc = daemon.convctl_async("oauth", "start", "--paste")
    await read_auth_url(proc)
    await asyncio.to_thread(read_line_with, proc.stderr, "paste the code shown")  # at the prompt
    proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.to_thread(proc.communicate, None, 15)
    assert proc.returncode == 1 and "cancelled" in err
    assert flow_error(daemon) == "cancelled"


@pytest.mark.parametrize(
    "line, code",
    [
        ("abc\n", "abc"),
        ("  'abc'  \n", "abc"),
        ('"abc"', "abc"),
        ("http://localhost:3000/api/openrouter/oauth/callback?code=xyz&state=s", "xyz"),
        ("\n", ""),
    ],
)
def test_code_from_paste(line, code):
    assert commands._code_from_paste(line) == code


# -- when no browser can open -------------------------------------------------------------------------------------


def headless_env(env: dict, **extra: str) -> dict:
    env = {k: v for k, v in env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SSH_CONNECTION", "SSH_TTY")}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"SSH_CONNECTION": "10.0.0.2 50000 10.0.0.1 22"}, "this is an SSH session"),
        ({}, "there is no graphical display"),
    ],
)
async def test_no_browser_says_what_to_do(daemon, fake, extra, reason):
    env = headless_env(daemon.env, **extra)
    done = await asyncio.to_thread(convctl, env, "oauth", "start", "--timeout", "1", timeout=30)
    assert done.returncode == 1
    err = done.stderr
    assert f"Could not open a browser: {reason}" in err
    assert "convctl oauth start --paste" in err
    assert f"ssh -L {daemon.port}:localhost:{daemon.port} <this host>" in err
    assert AUTH_URL_RE.search(done.stdout)  # the address is still shown to copy


def test_browser_unavailable_reason():
    if not sys.platform.startswith("linux"):
        pytest.skip("the display rule is Linux's")
    assert commands.browser_unavailable_reason({"SSH_CONNECTION": "x", "DISPLAY": ":0"}) == "this is an SSH session"
    assert "no graphical display" in commands.browser_unavailable_reason({})
    assert commands.browser_unavailable_reason({"WAYLAND_DISPLAY": "wayland-0"}) is None


# -- waiting -------------------------------------------------------------------------------------------------------


async def test_ctrl_c_cancels_the_flow_in_the_daemon(daemon, fake):
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    proc = daemon.convctl_async("oauth", "start", "--no-browser")
    await read_auth_url(proc)
    await asyncio.to_thread(read_line_with, proc.stderr, "Waiting for you to approve")  # Ctrl-C cancels now
    proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.to_thread(proc.communicate, None, 15)
    assert proc.returncode == 1
    assert "cancelled; the pending login was ended" in err and "Traceback" not in err

    async def complete():
        async for ev in sub.events():
            if ev["event"] == "openrouter-auth-complete":
                return ev

    ev = await asyncio.wait_for(complete(), 10)
    assert ev["data"]["success"] is False and ev["data"]["error"]["code"] == "cancelled"
    flow = daemon.call("status")["flow"]
    assert flow["status"] == "failed" and flow["error"]["code"] == "cancelled"
    await sub.close()


async def test_timeout_ends_the_wait(daemon, fake):
    started = time.monotonic()
    done = await asyncio.to_thread(daemon.convctl, "oauth", "start", "--no-browser", "--timeout", "1.5")
    assert done.returncode == 1
    assert 1.4 < time.monotonic() - started < 10
    assert "no answer within 1.5 s; the login was cancelled" in done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # not a terminal: no spinner, nothing to erase
    assert flow_error(daemon) == "cancelled"


async def test_bad_timeout_is_a_usage_error(daemon):
    done = await asyncio.to_thread(daemon.convctl, "oauth", "start", "--no-browser", "--timeout", "0")
    assert done.returncode == 2 and "--timeout" in done.stderr


def login_on_a_terminal(daemon, timeout: str) -> tuple[subprocess.Popen[bytes], int]:
    """``convctl oauth start`` with its output on a pseudo-terminal; returns it and the terminal's other end."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convocationsd.cli.main", "oauth", "start", "--no-browser", "--timeout", timeout],
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    return proc, master


async def test_spinner_on_a_terminal(daemon, fake):
    proc, master = login_on_a_terminal(daemon, "30")
    seen = b""
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not re.search(rb"waiting 0:0[1-9]", seen):
            if await asyncio.to_thread(readable, master, 0.5):
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        text = seen.decode(errors="replace")
        assert "/auth?" in text  # the URL stays on screen
        assert re.search(r"\r[|/\\-] waiting 0:0[1-9]", text), text
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 15)
        assert proc.returncode == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert (await wait_for_flow_end(daemon))["error"]["code"] == "cancelled"


def screen_rows(output: str) -> list[str]:
    """The rows a terminal shows for ``output``: CR goes back to the start of the row, ESC [ K erases to its
    end, other text overwrites; the pseudo-terminal turned each LF into CR LF."""
    rows = []
    for raw in output.split("\n"):
        row: list[str] = []
        col = 0
        for part in re.split(r"(\r|\x1b\[K)", raw):
            if part == "\r":
                col = 0
            elif part == "\x1b[K":
                del row[col:]
            else:
                row[col : col + len(part)] = part
                col += len(part)
        rows.append("".join(row))
    return rows


@pytest.mark.parametrize("end", ["timeout", "ctrl-c"])
async def test_the_spinner_line_is_cleared_before_the_last_message(daemon, fake, end):
    """On a terminal, once the wait is over (--timeout, Ctrl-C), the spinner's row is erased and the last
    message takes its place: no "/ waiting 0:01" is left on the screen."""
    timeout = "2" if end == "timeout" else "30"
    proc, master = login_on_a_terminal(daemon, timeout)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if await asyncio.to_thread(readable, master, 0.5):
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the process has exited and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if end == "ctrl-c" and proc.poll() is None and re.search(rb"waiting 0:0[1-9]", seen):
                proc.send_signal(signal.SIGINT)
                end = "sent"
        assert await asyncio.to_thread(proc.wait, 15) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert re.search(r"\r[|/\\-] waiting 0:0[1-9]", text), text  # there was a spinner
    rows = screen_rows(text)
    assert not [row for row in rows if "waiting 0:" in row], rows
    last = "convctl: no answer within 2 s" if timeout == "2" else "convctl: cancelled; the pending login was ended."
    shown = [row for row in rows if row.strip()]
    assert shown[-2].startswith(last), rows  # the message, then its hint, and no blank row before them
    assert rows[rows.index(shown[-2]) - 1].strip(), rows
