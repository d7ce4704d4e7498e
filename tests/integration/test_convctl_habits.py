"""Habits people bring from gh, op and aws-vault: exit codes that tell whether a key is there, login/logout/token,
`exec --env`, `--json` anywhere, "did you mean", readable events; and what linking again does to the key at
OpenRouter. Through the real convctl (on a pseudo-terminal where it asks), a real daemon and the fake OpenRouter."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import time

import pytest

from tests.conftest import assert_no_secret, base_env, convctl, follow_callback, readable, wait_until

STILL_VALID = "it stays valid at OpenRouter until you delete it at https://openrouter.ai/keys"


class Terminal:
    """convctl with stdin, stdout and stderr on a pseudo-terminal, as a person runs it; ``expect`` reads what it
    shows until a text appears, ``type`` answers."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convocationsd.cli.main", *args], env=env, stdin=slave, stdout=slave, stderr=slave
        )
        os.close(slave)
        self.shown = ""

    def _read(self, timeout: float) -> bool:
        if not readable(self.master, timeout):
            return True
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the terminal's last writer is gone
            return False
        self.shown += chunk.decode(errors="replace")
        return bool(chunk)

    def expect(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.shown:
            assert time.monotonic() < deadline, f"{text!r} not shown; the terminal shows:\n{self.shown}"
            if not self._read(0.1):
                raise AssertionError(f"convctl ended before showing {text!r}:\n{self.shown}")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.1):
            if self.proc.poll() is not None and not readable(self.master, 0):
                break
        os.close(self.master)
        return self.proc.wait(timeout)


def run(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """convctl without a terminal (stdin a pipe, or /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "convocationsd.cli.main", *args],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- exit codes ------------------------------------------------------------------------------------------------


async def test_status_exit_codes_say_whether_a_usable_key_is_stored(daemon, fake, short_tmp):
    for argv in (["status"], ["status", "--json"], ["secret", "status"], ["secret", "status", "--json"]):
        assert (await asyncio.to_thread(daemon.convctl, *argv)).returncode == 1, argv  # no key yet
    key = fake.issue_key()
    daemon.call("secret.set", {"key": key})
    for argv in (["status"], ["status", "--json"], ["secret", "status"], ["secret", "status", "--json"]):
        assert (await asyncio.to_thread(daemon.convctl, *argv)).returncode == 0, argv
    fake.revoke(key)  # stored, but OpenRouter no longer accepts it: nothing can use it
    daemon.call("secret.set", {"key": key})  # a key change: the daemon asks OpenRouter about it again
    await asyncio.to_thread(
        wait_until, lambda: (daemon.call("status")["account"] or {}).get("valid") is False, "the account check"
    )
    done = await asyncio.to_thread(daemon.convctl, "status")
    assert done.returncode == 1 and "not accepted by OpenRouter" in done.stdout
    assert (await asyncio.to_thread(daemon.convctl, "secret", "status")).returncode == 0  # it is stored, though
    daemon.stop()
    down = await asyncio.to_thread(convctl, daemon.env, "status")
    assert down.returncode == 3 and "DaemonUnreachable" not in down.stderr
    nobody = base_env(short_tmp / "elsewhere")
    assert (await asyncio.to_thread(convctl, nobody, "secret", "status")).returncode == 1  # the files: no key


def test_help_documents_the_exit_codes(short_tmp):
    env = base_env(short_tmp)
    main = convctl(env, "--help").stdout
    assert "Exit status: 0 done; 1 the operation failed" in " ".join(main.split())
    assert "127" in main and "3 the daemon cannot be reached" in " ".join(main.split())
    status = " ".join(convctl(env, "status", "--help").stdout.split())
    assert "1 no key is stored, OpenRouter does not accept it, or it cannot be read; 3 the daemon" in status
    assert "0 a key is stored; 1 none is" in " ".join(convctl(env, "secret", "status", "--help").stdout.split())
    assert "not checked" in " ".join(convctl(env, "doctor", "--help").stdout.split())


# -- aliases, --json, did you mean ------------------------------------------------------------------------------


async def test_login_logout_and_token_are_the_long_commands(daemon, fake):
    proc = daemon.convctl_async("login", "--no-browser", "--timeout", "30")
    auth_url = await asyncio.to_thread(_auth_url_from, proc)
    await follow_callback(await fake.approve(auth_url))
    out, err = await asyncio.to_thread(proc.communicate, None, 30)
    assert proc.returncode == 0 and "Linked." in out, err
    key = fake.issued_keys[-1]

    token = await asyncio.to_thread(daemon.convctl, "token")
    assert token.returncode == 0 and token.stdout == key + "\n"
    assert json.loads((await asyncio.to_thread(daemon.convctl, "token", "--json")).stdout) == {"key": key}

    logout = await asyncio.to_thread(daemon.convctl, "logout")
    assert logout.returncode == 0 and logout.stdout == f"key removed from this machine; {STILL_VALID}\n"
    assert daemon.call("secret.status") == {"stored": False, "backend": None}
    assert (await asyncio.to_thread(daemon.convctl, "logout")).stdout == "no key was stored\n"

    for alias, long in (("login", ["oauth", "start"]), ("token", ["secret", "get-openrouter-key"])):
        flags = lambda argv: {w for w in convctl(daemon.env, *argv, "--help").stdout.split() if w.startswith("--")}  # noqa: E731
        assert flags([alias]) == flags(long)
    assert_no_secret(key, err, logout.stdout, daemon.log())


def _auth_url_from(proc: subprocess.Popen) -> str:
    for line in proc.stdout:
        if line.strip().startswith("http"):
            return line.strip()
    raise AssertionError("no address printed")


@pytest.mark.parametrize(
    "argv",
    [["status"], ["secret", "status"], ["oauth", "cancel"], ["secret", "clear-openrouter-key"], ["stauts"]],
    ids=lambda a: " ".join(a),
)
def test_json_may_come_before_the_command(short_tmp, argv):
    env = base_env(short_tmp)
    before, after = convctl(env, "--json", *argv), convctl(env, *argv, "--json")
    assert before.returncode == after.returncode and before.stderr == after.stderr == ""
    assert json.loads(before.stdout) == json.loads(after.stdout)


@pytest.mark.parametrize(
    "argv", [["secret", "status"], ["oauth", "cancel"], ["service", "status"]], ids=lambda a: " ".join(a)
)
def test_json_may_come_between_the_command_and_its_action(short_tmp, argv):
    """`convctl secret --json status`: the README says "before or after the command's name"."""
    env = base_env(short_tmp)
    between, after = convctl(env, argv[0], "--json", argv[1]), convctl(env, *argv, "--json")
    assert between.returncode == after.returncode and between.stderr == after.stderr == "", between.stderr
    assert json.loads(between.stdout) == json.loads(after.stdout)
    first = convctl(env, "--json", argv[0], "--json", argv[1])  # twice is still JSON
    assert json.loads(first.stdout) == json.loads(after.stdout)


@pytest.mark.parametrize(
    ("argv", "meant"),
    [
        (["stauts"], "convctl status"),
        (["secret", "stats"], "convctl secret status"),
        (["oauth", "strat"], "convctl oauth start"),
        (["loign"], "convctl login"),
        (["service", "instal"], "convctl service install"),
        (["secret", "clear"], "convctl secret clear-openrouter-key"),  # the start of one name
        (["secret", "get"], "convctl secret get-openrouter-key"),
        (["oauth", "can"], "convctl oauth cancel"),
    ],
)
def test_an_unknown_command_gets_did_you_mean(short_tmp, argv, meant):
    done = convctl(base_env(short_tmp), *argv)
    assert done.returncode == 2 and f"Did you mean `{meant}`?" in done.stderr
    error = json.loads(convctl(base_env(short_tmp), "--json", *argv).stdout)["error"]
    assert error["kind"] == "UsageError" and f"Did you mean `{meant}`?" in error["hint"]


def test_no_guess_for_a_command_like_none(short_tmp):
    done = convctl(base_env(short_tmp), "frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr and "Did you mean" not in done.stderr


# -- exec --env ------------------------------------------------------------------------------------------------


async def test_exec_env_passes_the_key_under_more_names(daemon, fake):
    key = fake.issue_key()
    daemon.call("secret.set", {"key": key})
    show = (
        "import os; print(*(os.environ.get(n) == os.environ['OPENROUTER_API_KEY'] for n in ('OPENAI_API_KEY', 'X_1')))"
    )
    done = await asyncio.to_thread(
        daemon.convctl, "exec", "--env", "OPENAI_API_KEY", "--env", "X_1", "--", sys.executable, "-c", show
    )
    assert done.returncode == 0 and done.stdout == "True True\n", done.stderr
    plain = await asyncio.to_thread(
        daemon.convctl, "exec", "--", sys.executable, "-c", "import os; print('OPENAI_API_KEY' in os.environ)"
    )
    assert plain.stdout == "False\n"  # only what was asked for
    for bad in ("1ABC", "A-B", "", "A=B", "É"):
        refused = await asyncio.to_thread(daemon.convctl, "exec", "--env", bad, "--", "true")
        assert refused.returncode == 2 and "is not a variable name" in refused.stderr, bad
    assert_no_secret(key, done.stderr, plain.stderr, daemon.log())


@pytest.mark.parametrize("name", ["PATH", "HOME", "SHELL", "USER", "LD_PRELOAD", "PYTHONPATH", "path", "SOME_SETTING"])
async def test_exec_env_refuses_a_name_the_command_needs(daemon, fake, name):
    """`--env PATH` would leave the command unfindable ("not found", which hides the cause): refused before
    anything runs, as are names already set for something else; a set name made for a key may be replaced."""
    key = fake.issue_key()
    daemon.call("secret.set", {"key": key})
    env = {**daemon.env, "SOME_SETTING": "on", "OPENAI_API_KEY": "sk-old"}
    done = await asyncio.to_thread(convctl, env, "exec", "--env", name, "--", sys.executable, "-c", "print('ran')")
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert f"convctl: --env {name} would replace {name}" in done.stderr
    assert "`--env OPENAI_API_KEY`" in done.stderr and f"env -u {name}" in done.stderr
    replaced = await asyncio.to_thread(
        convctl, env, "exec", "--env", "OPENAI_API_KEY", "--", sys.executable, "-c",
        "import os; print(os.environ['OPENAI_API_KEY'] == os.environ['OPENROUTER_API_KEY'])",
    )  # fmt: skip
    assert replaced.returncode == 0 and replaced.stdout == "True\n", replaced.stderr
    assert_no_secret(key, done.stdout, done.stderr, replaced.stdout, replaced.stderr)


def test_exec_help_names_what_env_refuses(short_tmp):
    from convocationsd.cli.commands import KEPT_NAMES, KEPT_PREFIXES

    shown = " ".join(convctl(base_env(short_tmp), "exec", "--help").stdout.split())
    assert all(name in shown for name in (*KEPT_NAMES, *KEPT_PREFIXES)), shown
    assert "already set in your environment unless it ends in KEY or TOKEN" in shown


# -- events ----------------------------------------------------------------------------------------------------


async def test_events_are_words_not_python(daemon, fake):
    proc = daemon.convctl_async("events")
    try:
        await asyncio.to_thread(wait_until, lambda: daemon.call("status")["subscribers"] == 1, "convctl to subscribe")
        daemon.call("oauth.start")
        daemon.call("oauth.cancel")
        daemon.call("secret.set", {"key": fake.issue_key()})
        daemon.call("secret.clear")
        lines = [await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10) for _ in range(4)]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    text = "".join(lines)
    assert "openrouter-auth-complete" in text and "success=no" in text and "error=cancelled" in text
    assert "stored=yes backend=local-encrypted" in text and "stored=no\n" in text
    assert not any(word in text for word in ("None", "True", "False", "{", "'"))
    assert err.startswith("Waiting for events (Ctrl-C stops)...")


# -- linking again -----------------------------------------------------------------------------------------------


async def test_linking_again_asks_first_on_a_terminal(daemon, fake):
    daemon.call("secret.set", {"key": fake.issue_key()})
    term = await asyncio.to_thread(Terminal, daemon.env, "oauth", "start", "--no-browser")
    await asyncio.to_thread(term.expect, "Link again? [Y/n] ")
    assert STILL_VALID in term.shown and "A key is already stored (local-encrypted)" in term.shown
    term.type("n")
    assert await asyncio.to_thread(term.finish) == 1
    assert "Not linked again: the stored key stays as it is." in term.shown
    assert daemon.call("status")["flow"] is None  # no login was started

    term = await asyncio.to_thread(Terminal, daemon.env, "oauth", "start", "--no-browser", "--timeout", "1", "--yes")
    assert await asyncio.to_thread(term.finish) == 1  # the timeout: no answer in the browser
    assert STILL_VALID in term.shown and "Link again?" not in term.shown
    assert daemon.call("status")["flow"]["error"]["code"] == "cancelled"


async def test_linking_again_without_a_terminal_goes_ahead_and_says_so(daemon, fake):
    daemon.call("secret.set", {"key": fake.issue_key()})
    done = await asyncio.to_thread(run, daemon.env, "oauth", "start", "--no-browser", "--timeout", "1")
    assert STILL_VALID in done.stderr and "Link again?" not in done.stderr
    assert "Open this address" in done.stdout  # it went ahead
    fresh = fake.issued_keys[-1]
    daemon.call("secret.clear")
    none_stored = await asyncio.to_thread(run, daemon.env, "oauth", "start", "--no-browser", "--timeout", "1")
    assert "already stored" not in none_stored.stderr
    assert_no_secret(fresh, done.stdout, done.stderr)


async def test_paste_does_not_join_a_browser_login_it_cannot_finish(daemon, fake):
    browser = daemon.call("oauth.start")
    done = await asyncio.to_thread(run, daemon.env, "oauth", "start", "--paste")
    assert done.returncode == 1 and "A login in browser mode is already waiting" in done.stderr
    assert "`convctl oauth start --paste --restart`" in done.stderr
    flow = daemon.call("status")["flow"]
    assert flow["session_id"] == browser["session_id"] and flow["status"] == "pending"  # left alone

    term = await asyncio.to_thread(Terminal, daemon.env, "oauth", "start", "--paste", "--timeout", "20")
    await asyncio.to_thread(term.expect, "Replace it with a paste-mode login? [Y/n] ")
    term.type("")
    await asyncio.to_thread(term.expect, "Code: ")
    flow = daemon.call("status")["flow"]
    assert flow["paste"] is True and flow["session_id"] != browser["session_id"]
    code = await fake.approve_headless(flow["auth_url"])
    term.type(code)
    assert await asyncio.to_thread(term.finish) == 0, term.shown
    assert "Linked. Your OpenRouter key is stored in local-encrypted" in term.shown


async def test_a_login_replaced_elsewhere_tells_its_waiter_where_it_went(daemon, fake):
    """A browser-mode login waits in one terminal; another frontend replaces it with a paste-mode login: the first
    convctl says the login was replaced, and by what, not only that it was cancelled."""
    proc = daemon.convctl_async("oauth", "start", "--no-browser")
    try:
        await asyncio.to_thread(wait_until, lambda: daemon.call("status")["flow"] is not None, "the first login")
        first = daemon.call("status")["flow"]["session_id"]
        daemon.call("oauth.start", {"restart": True, "paste": True})
        _, err = await asyncio.to_thread(proc.communicate, None, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "convctl: The login was replaced by a new login started elsewhere (paste mode); finish that one.\n" in err
    assert "Paste the code OpenRouter shows where that login was started" in err
    assert "The login was cancelled." not in err
    ended = [f for f in [daemon.call("status")["flow"]] if f["session_id"] == first]
    assert not ended  # the paste-mode login is the one pending now


async def test_a_paste_login_joined_on_a_terminal_reads_the_code_here(daemon, fake):
    started = daemon.call("oauth.start", {"paste": True})
    term = await asyncio.to_thread(Terminal, daemon.env, "oauth", "start", "--no-browser", "--timeout", "20")
    await asyncio.to_thread(term.expect, "Code: ")
    term.type(await fake.approve_headless(started["auth_url"]))
    assert await asyncio.to_thread(term.finish) == 0, term.shown
    assert "Joined the login in progress" in term.shown and "Linked." in term.shown


# -- where the key went ----------------------------------------------------------------------------------------


async def test_linked_says_why_the_key_is_not_in_an_os_keyring(daemon_factory, fake):
    d = await asyncio.to_thread(
        daemon_factory,
        CONVOCATIONS_OPENROUTER_URL=fake.url,
        CONVOCATIONS_SECRET_BACKEND="",
        DBUS_SESSION_BUS_ADDRESS="",
    )
    proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    await follow_callback(await fake.approve(await asyncio.to_thread(_auth_url_from, proc)))
    out, err = await asyncio.to_thread(proc.communicate, None, 30)
    assert proc.returncode == 0, err
    linked = next(line for line in out.splitlines() if line.startswith("Linked."))
    assert linked == (
        "Linked. Your OpenRouter key is stored in local-encrypted (an encrypted file), because no OS keyring is "
        "available: there is no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset and $XDG_RUNTIME_DIR/bus does "
        "not exist)."
    )


def test_the_start_up_log_names_the_openrouter_in_use(daemon_factory):
    d = daemon_factory(CONVOCATIONS_OPENROUTER_URL="http://someone:hunter2@127.0.0.1:9/base?x=1")
    line = next(line for line in d.log().splitlines() if " listening on " in line)
    assert line.endswith("; OpenRouter at http://127.0.0.1:9/base") and "hunter2" not in d.log()


def test_where_stored_names_the_reason_in_one_line():
    from convocationsd.cli.commands import where_stored

    forced = {"settings": {"secret_backend": {"value": "local-encrypted", "source": "CONVOCATIONS_SECRET_BACKEND"}}}
    locked = {
        "last_store": {
            "keyring_error": "The OS keyring is locked and could not be unlocked (x).",
            "keyring_missing": False,
        }
    }
    assert where_stored("keyring", locked) == "keyring"
    assert where_stored("local-encrypted", None) == "local-encrypted"  # no daemon to ask: no guess
    assert where_stored("local-encrypted", forced) == "local-encrypted, as CONVOCATIONS_SECRET_BACKEND asks"
    assert where_stored("local-encrypted", locked) == (
        "local-encrypted (an encrypted file), because the OS keyring is locked and could not be unlocked (x); "
        "`convctl doctor` says what to do"
    )
