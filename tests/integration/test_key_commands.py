"""The key, usable and checked: `secret set-openrouter-key` asks OpenRouter first, `exec` hands the key to a
command, `secret get-openrouter-key` prints it for scripts, and `status` shows a finished login as history.
Through the real convctl, against a real daemon and the fake OpenRouter (and without a daemon, on the files)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys

from tests.conftest import assert_no_secret, base_env, convctl, dead_url, follow_callback
from tests.helpers.answering_server import AnsweringServer

BOGUS = "sk-or-v1-" + "0" * 64  # well-formed, but no OpenRouter ever issued it


def on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Runs convctl with its stdout on a pseudo-terminal; (exit code, what the terminal showed, stderr included)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convocationsd.cli.main", *args], env=env, stdout=slave, stderr=slave
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(30), shown.decode(errors="replace")


# -- set-openrouter-key ---------------------------------------------------------------------------------------


async def test_a_key_openrouter_accepts_is_stored(daemon, fake):
    key = fake.issue_key("typed in")
    done = await asyncio.to_thread(daemon.convctl, "secret", "set-openrouter-key", input=key + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "key stored in local-encrypted (OpenRouter accepts it)\n"
    assert daemon.call("secret.get") == {"key": key}
    assert_no_secret(key, daemon.all_output())


async def test_a_key_openrouter_rejects_is_refused(daemon, fake):
    done = await asyncio.to_thread(daemon.convctl, "secret", "set-openrouter-key", input=BOGUS + "\n")
    assert done.returncode == 1
    assert "not accepted by OpenRouter" in done.stderr and "no longer valid" not in done.stderr
    assert "--no-verify" in done.stderr
    assert daemon.call("secret.status") == {"stored": False, "backend": None}
    js = await asyncio.to_thread(daemon.convctl, "secret", "set-openrouter-key", "--json", input=BOGUS + "\n")
    assert js.returncode == 1 and json.loads(js.stdout)["error"]["kind"] == "KeyNotAccepted" and js.stderr == ""
    assert_no_secret(BOGUS, daemon.all_output())


async def test_no_verify_stores_it_and_status_says_not_accepted(daemon, fake):
    done = await asyncio.to_thread(daemon.convctl, "secret", "set-openrouter-key", "--no-verify", input=BOGUS + "\n")
    assert done.returncode == 0 and "(not checked with OpenRouter)" in done.stdout
    assert daemon.call("secret.get") == {"key": BOGUS}
    status = await asyncio.to_thread(daemon.convctl, "status")  # waits for the daemon to ask OpenRouter
    assert "key:      the stored key is not accepted by OpenRouter" in status.stdout
    assert "no longer valid" not in status.stdout
    assert_no_secret(BOGUS, daemon.all_output())


async def test_offline_the_key_is_stored_with_a_note(daemon_factory):
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=dead_url())
    done = await asyncio.to_thread(d.convctl, "secret", "set-openrouter-key", input=BOGUS + "\n")
    assert done.returncode == 0 and "(not checked with OpenRouter)" in done.stdout
    assert "note: Could not reach OpenRouter" in done.stderr and "stored without being checked" in done.stderr
    assert d.call("secret.get") == {"key": BOGUS}
    js = await asyncio.to_thread(d.convctl, "secret", "set-openrouter-key", "--json", input=BOGUS + "\n")
    reply = json.loads(js.stdout)
    assert reply["verified"] is False and reply["not_verified_because"].startswith("Could not reach OpenRouter")


async def test_ipc_secret_set_verify(daemon, fake):
    key = fake.issue_key()  # the daemon asks the fake, which runs on this loop: call from a thread
    assert await asyncio.to_thread(daemon.call, "secret.set", {"key": key, "verify": True}) == {
        "stored": True,
        "backend": "local-encrypted",
        "verified": True,
        "not_verified_because": None,
    }
    assert daemon.call("secret.set", {"key": key}) == {"stored": True, "backend": "local-encrypted"}  # as before


async def test_without_a_daemon_the_key_is_checked_by_convctl(short_tmp, fake):
    env = base_env(short_tmp, CONVOCATIONS_OPENROUTER_URL=fake.url)
    key = fake.issue_key()
    done = await asyncio.to_thread(convctl, env, "secret", "set-openrouter-key", input=key + "\n")
    assert done.returncode == 0 and "(OpenRouter accepts it)" in done.stdout, done.stderr
    refused = await asyncio.to_thread(convctl, env, "secret", "set-openrouter-key", input=BOGUS + "\n")
    assert refused.returncode == 1 and "not accepted by OpenRouter" in refused.stderr
    got = await asyncio.to_thread(convctl, env, "secret", "get-openrouter-key")
    assert got.stdout == key + "\n"  # the refused key replaced nothing
    offline = {**env, "CONVOCATIONS_OPENROUTER_URL": dead_url()}
    stored = await asyncio.to_thread(convctl, offline, "secret", "set-openrouter-key", input=BOGUS + "\n")
    assert stored.returncode == 0 and "note: Could not reach OpenRouter" in stored.stderr
    for text in (done.stdout + done.stderr, refused.stdout + refused.stderr, stored.stdout + stored.stderr):
        assert_no_secret(key, text)
        assert_no_secret(BOGUS, text)


async def test_a_page_that_answers_200_verifies_the_key_by_neither_door(daemon_factory, short_tmp):
    """A captive portal (or a wrong URL) answers the key check with 200 and a page: that is not OpenRouter
    accepting the key, for convctl alone as for the daemon (one rule: core/keycheck.key_info)."""
    with AnsweringServer(200, b"<html>Sign in to the hotel's network</html>") as portal:
        env = base_env(short_tmp / "alone", CONVOCATIONS_OPENROUTER_URL=portal.url)
        alone = await asyncio.to_thread(convctl, env, "secret", "set-openrouter-key", "--json", input=BOGUS + "\n")
        d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=portal.url)
        via_daemon = await asyncio.to_thread(d.convctl, "secret", "set-openrouter-key", "--json", input=BOGUS + "\n")
    for done in (alone, via_daemon):
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["stored"] is True and reply["verified"] is False
        assert "HTTP 200" in reply["not_verified_because"]
        assert_no_secret(BOGUS, done.stdout + done.stderr)
    assert d.call("secret.get") == {"key": BOGUS}
    assert [path for _, path, _ in portal.seen][:2] == ["/api/v1/key", "/api/v1/key"]


def test_set_key_help_says_it_reads_stdin(short_tmp):
    done = convctl(base_env(short_tmp), "secret", "set-openrouter-key", "--help")
    assert done.returncode == 0
    assert "stdin is not a terminal" in " ".join(done.stdout.split()) and "--no-verify" in done.stdout


# -- exec -----------------------------------------------------------------------------------------------------

# The child says what it was given: the key's length (never the key), whether its command line holds it, and exits 7.
CHILD = (
    "import os, sys\n"
    "key = os.environ.get('OPENROUTER_API_KEY', '')\n"
    "cmdline = open('/proc/self/cmdline', 'rb').read().decode()\n"
    "print(len(key), key in cmdline, sys.argv[1:])\n"
    "sys.exit(7)\n"
)


async def test_exec_runs_the_command_with_the_key_in_its_environment(daemon, fake):
    key = fake.issue_key()
    daemon.call("secret.set", {"key": key})
    done = await asyncio.to_thread(daemon.convctl, "exec", "--", sys.executable, "-c", CHILD, "--json", "x")
    assert done.returncode == 7  # the command's own exit status
    assert done.stdout == f"{len(key)} False ['--json', 'x']\n"  # its flags are its own, even --json
    assert_no_secret(key, daemon.all_output())

    daemon.stop()  # without a daemon, the key comes from the files
    done = await asyncio.to_thread(daemon.convctl, "exec", "--", sys.executable, "-c", CHILD)
    assert done.returncode == 7 and done.stdout.startswith(f"{len(key)} False")


async def test_exec_without_a_key_or_a_command(daemon):
    done = await asyncio.to_thread(daemon.convctl, "exec", "--", "true")
    assert done.returncode == 1 and "No OpenRouter key is stored" in done.stderr
    assert "convctl oauth start" in done.stderr
    daemon.call("secret.set", {"key": BOGUS})
    missing = await asyncio.to_thread(daemon.convctl, "exec", "--", "no-such-command-here")
    assert missing.returncode == 127 and "no-such-command-here: command not found" in missing.stderr
    empty = await asyncio.to_thread(daemon.convctl, "exec")
    assert empty.returncode == 2 and "No command to run" in empty.stderr
    assert_no_secret(BOGUS, daemon.all_output())


# -- get-openrouter-key ---------------------------------------------------------------------------------------


async def test_get_key_prints_it_for_scripts_but_not_on_a_terminal(daemon, fake):
    key = fake.issue_key()
    daemon.call("secret.set", {"key": key})
    piped = await asyncio.to_thread(daemon.convctl, "secret", "get-openrouter-key")
    assert piped.returncode == 0 and piped.stdout == key + "\n"
    rc, shown = await asyncio.to_thread(on_a_terminal, daemon.env, "secret", "get-openrouter-key")
    assert rc == 2 and "Not printing the key to a terminal" in shown and "--show" in shown
    assert key not in shown
    rc, shown = await asyncio.to_thread(on_a_terminal, daemon.env, "secret", "get-openrouter-key", "--show")
    assert rc == 0 and key in shown
    daemon.call("secret.clear")
    none = await asyncio.to_thread(daemon.convctl, "secret", "get-openrouter-key")
    assert none.returncode == 1 and none.stdout == "" and "No OpenRouter key is stored" in none.stderr


# -- status ---------------------------------------------------------------------------------------------------


async def test_status_shows_a_finished_login_as_history(daemon, fake):
    reply = daemon.call("oauth.start")
    await follow_callback(await fake.approve(reply["auth_url"]))
    cleared = await asyncio.to_thread(daemon.convctl, "secret", "clear-openrouter-key")
    assert cleared.returncode == 0
    done = await asyncio.to_thread(daemon.convctl, "status")
    assert "account:  not linked" in done.stdout
    login = next(line for line in done.stdout.splitlines() if line.startswith("login:"))
    assert login.startswith(f"login:    none pending; the last one succeeded (session {reply['session_id']}, started ")
    started = daemon.call("oauth.start", {"restart": True})
    done = await asyncio.to_thread(daemon.convctl, "status")
    assert f"login:    pending (session {started['session_id']}, started " in done.stdout
