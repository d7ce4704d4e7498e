"""The systemd user units as a person's session runs them: a real systemd 252 user manager in a container.

Everything the person does goes through what they would type: ``convctl``, ``systemctl --user``,
``journalctl --user``, a browser (tests/service/browser.py). The project is only the installed wheel.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest

from convocationsd.testing.fake_openrouter import fingerprint
from tests.conftest import read_auth_url_sync, read_line_with
from tests.service.conftest import VENV, Desk, FakeOpenRouter, spare_port

pytestmark = pytest.mark.needs_root

SERVICE = "convocationsd.service"
SOCKETS = ("convocationsd.socket", "convocationsd-http.socket")
PRINT_KEY = ("exec", "--", "sh", "-c", 'printf %s "$OPENROUTER_API_KEY"')


def wait_for(predicate, what: str, timeout: float = 20.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return result


def status(person: Desk) -> dict:
    done = person.convctl("status", "--json", check=False)
    answer = json.loads(done.stdout)
    if "error" in answer:  # what the service said of itself, with the error
        answer["journal"] = [e["MESSAGE"] for e in person.journal("--unit", SERVICE)][-10:]
    return answer


def daemon_lines(person: Desk) -> list[dict]:
    """The daemon's own journal entries (not systemd's about the unit)."""
    return [e for e in person.journal("--unit", SERVICE) if e.get("SYSLOG_IDENTIFIER") != "systemd"]


def test_install_enables_the_sockets_and_the_first_connection_starts_the_service(person: Desk):
    port = spare_port()
    out = person.install_service(port)
    assert "running: systemctl --user enable --now convocationsd.socket convocationsd-http.socket" in out
    for unit in SOCKETS:
        state = person.show(unit, "UnitFileState", "ActiveState", "SubState")
        assert state == {"UnitFileState": "enabled", "ActiveState": "active", "SubState": "listening"}, unit
    assert person.show(SERVICE, "ActiveState") == {"ActiveState": "inactive"}  # nothing runs until asked

    answer = status(person)  # the first connection
    assert answer["port"] == port and answer["socket"] == f"{person.who.runtime_dir}/convocations/convocationsd.sock"
    unit = person.show(SERVICE, "ActiveState", "SubState", "Type", "StatusText", "MainPID", "NRestarts")
    # Type=notify: systemd says "active (running)" only after READY=1, and shows the daemon's STATUS= text.
    assert unit == {
        "ActiveState": "active",
        "SubState": "running",
        "Type": "notify",
        "StatusText": f"Listening on http://localhost:{port}",
        "MainPID": str(answer["pid"]),
        "NRestarts": "0",
    }
    # Its program is the installed wheel's: the venv's interpreter, the package from its site-packages.
    assert person.run("readlink", f"/proc/{answer['pid']}/exe").stdout.strip().startswith("/usr/bin/python3")
    cmdline = person.run("cat", f"/proc/{answer['pid']}/cmdline").stdout.split("\0")
    assert cmdline[0] == f"{VENV}/bin/python3"


def test_a_whole_login_under_systemd_and_exec_reads_the_key(person: Desk, fake: FakeOpenRouter):
    person.install_service(spare_port(), openrouter_url=fake.url, log_level="debug")
    out = person.login()
    assert "Linked" in out or "linked" in out, out
    answer = status(person)
    assert answer["secret"]["stored"] and answer["pid"] == person.main_pid()  # systemd's service did the login
    key = person.convctl(*PRINT_KEY).stdout
    [issued] = fake.state()["issued_keys"]
    assert fingerprint(key) == issued["fingerprint"]  # the key OpenRouter issued, read back through the service
    # The key is in no journal (the person's and the system's, debug lines included) and no file as plain text.
    everything = person.box.run(["journalctl", "--output=export", "--no-pager"]).stdout
    assert "succeeded; key stored in local-encrypted" in everything and key not in everything
    files = person.box.run(["grep", "-rlF", key, person.who.home, person.who.runtime_dir], check=False)
    assert files.stdout == "" and files.returncode == 1


def test_reload_applies_a_changed_setting(person: Desk):
    port = spare_port()
    person.install_service(port)
    pid = status(person)["pid"]
    person.write_config(f"http_port = {port}\nflow_timeout_seconds = 120\n")
    person.systemctl("reload", SERVICE)
    unit = person.show(SERVICE, "MainPID", "StatusText", "ActiveState")
    assert unit == {
        "MainPID": str(pid),
        "StatusText": f"Listening on http://localhost:{port}; configuration reloaded",
        "ActiveState": "active",
    }
    cli = person.popen("convctl", "oauth", "start", "--no-browser", "--json")
    started = json.loads(cli.stdout.readline())
    expires = datetime.fromisoformat(started["expires_at"].replace("Z", "+00:00"))
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 100 < left <= 121, left  # the new flow_timeout_seconds, not the default 600
    person.convctl("oauth", "cancel")


def test_reload_reports_a_setting_that_takes_a_restart(person: Desk):
    port = spare_port()
    person.install_service(port)
    status(person)
    person.write_config(f"http_port = {spare_port()}\n")
    person.systemctl("reload", SERVICE)
    assert any("http_port" in e["MESSAGE"] and "restart" in e["MESSAGE"] for e in daemon_lines(person))
    assert status(person)["port"] == port  # still the port systemd handed it


def test_stop_during_a_pending_login_cancels_it_for_subscribers_and_removes_the_socket(
    person: Desk, fake: FakeOpenRouter
):
    person.install_service(spare_port(), openrouter_url=fake.url)
    socket_path = f"{person.who.runtime_dir}/convocations/convocationsd.sock"
    subscriber = person.popen("convctl", "events", "--json")
    cli = person.popen("convctl", "oauth", "start", "--no-browser")
    read_auth_url_sync(cli)
    read_line_with(subscriber.stdout, "openrouter-auth-started")

    person.systemctl("stop", SERVICE, *SOCKETS)
    line = read_line_with(subscriber.stdout, "openrouter-auth-complete")
    assert json.loads(line)["data"]["error"]["code"] == "cancelled"
    assert cli.wait(20) != 0 and subscriber.wait(20) is not None
    assert person.show(SERVICE, "ActiveState", "Result", "ExecMainStatus") == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
    }
    assert person.run("test", "-e", socket_path, check=False).returncode == 1  # RemoveOnStop=yes


def test_idle_exit_and_the_next_connection(person: Desk, fake: FakeOpenRouter):
    person.install_service(spare_port(), openrouter_url=fake.url, idle_exit_seconds=2)
    cli = person.popen("convctl", "oauth", "start", "--no-browser")
    url = read_auth_url_sync(cli)
    first = person.main_pid()
    time.sleep(4)  # twice the idle time: a pending login keeps the daemon running
    assert person.main_pid() == first
    person.run("python3", f"{person.box.SHARED}/browser.py", url)
    assert cli.wait(30) == 0

    wait_for(lambda: person.show(SERVICE, "ActiveState")["ActiveState"] == "inactive", "the idle exit")
    assert person.show(SERVICE, "Result", "ExecMainStatus") == {"Result": "success", "ExecMainStatus": "0"}
    assert any("idle for 2 s; exiting" in e["MESSAGE"] for e in daemon_lines(person))
    for unit in SOCKETS:  # systemd keeps listening for the next connection
        assert person.show(unit, "SubState")["SubState"] == "listening"

    again = status(person)
    assert again["pid"] == person.main_pid() != first
    # As documented: the key outlives the process, a finished login does not (flows live in memory).
    assert again["secret"]["stored"] is True and again["flow"] is None


def test_the_journal_has_the_daemon_lines_with_their_priorities_and_no_secret(person: Desk, fake: FakeOpenRouter):
    port = spare_port()
    person.install_service(port, openrouter_url=fake.url)
    person.login()
    key = person.convctl(*PRINT_KEY).stdout
    assert key.startswith("sk-or-v1-")
    person.write_config(f"http_port = {port}\nopenrouter_url = {json.dumps(fake.url)}\nflow_timout_seconds = 9\n")
    person.systemctl("reload", SERVICE)  # a misspelt key: a warning naming the closest known one
    person.write_config("http_port = [\n")
    person.systemctl("reload", SERVICE)  # a file that does not parse: an error, and the old settings stay

    lines = daemon_lines(person)
    by_text = {e["MESSAGE"]: int(e["PRIORITY"]) for e in lines}

    def priority(pattern: str) -> int:
        found = [p for text, p in by_text.items() if re.search(pattern, text)]
        assert found, f"no journal line matches {pattern!r}: {list(by_text)}"
        return found[0]

    assert priority(r"listening on http://localhost") == 6  # info
    assert priority(r"flow_timout_seconds.*flow_timeout_seconds") == 4  # warning
    assert priority(r"reload failed, keeping the current settings") == 3  # error
    assert all(not text.startswith("<") for text in by_text)  # journald took the <N> prefix as the priority
    assert not [e for e in lines if key in e["MESSAGE"]]
    assert key not in person.box.run(["journalctl", "--output=export", "--no-pager"]).stdout


def test_a_module_planted_in_the_home_folder_is_not_imported(person: Desk):
    """The unit's working directory is the person's home: anything there must not shadow the installation."""
    person.install_service(spare_port())
    for path in ("json.py", "convocationsd/__init__.py", "convocationsd/__main__.py"):
        person.run("mkdir", "-p", f"{person.who.home}/convocationsd")
        # It says so on stderr (the journal): the sandbox keeps it from writing a file as proof.
        person.box.write(
            f"{person.who.home}/{path}",
            f"import sys\nprint('PLANTED {path} was imported', file=sys.stderr, flush=True)\n",
            owner=person.who,
        )
    done = person.convctl("status", "--json", check=False)
    planted = [e["MESSAGE"] for e in person.journal("--unit", SERVICE) if "PLANTED" in e["MESSAGE"]]
    assert not planted, planted
    assert json.loads(done.stdout)["pid"] == person.main_pid()
    assert person.run("readlink", f"/proc/{person.main_pid()}/cwd").stdout.strip() == person.who.home


def test_a_daemon_killed_with_sigkill_is_restarted_and_the_sockets_stay(person: Desk):
    port = spare_port()
    person.install_service(port)
    first = status(person)["pid"]
    socket_path = f"{person.who.runtime_dir}/convocations/convocationsd.sock"
    inode = person.run("stat", "--format=%i", socket_path).stdout

    person.run("kill", "-KILL", str(first))
    wait_for(lambda: person.main_pid() not in (0, first), "the restart (RestartSec=2s)", timeout=30)
    unit = wait_for(
        lambda: (u := person.show(SERVICE, "ActiveState", "SubState", "NRestarts"))["SubState"] == "running" and u,
        "the restarted daemon to be ready",
    )
    assert unit["NRestarts"] == "1"
    assert any("code=killed, status=9/KILL" in e["MESSAGE"] for e in person.journal("--unit", SERVICE))
    # The same sockets, held by systemd all along: same file, same port, both answer the new daemon.
    assert person.run("stat", "--format=%i", socket_path).stdout == inode
    again = status(person)
    assert again["pid"] == person.main_pid() != first and again["port"] == port
    page = person.run(
        "python3",
        "-c",
        f"import urllib.request; print(urllib.request.urlopen('http://localhost:{port}/api/status').read().decode())",
    )
    assert json.loads(page.stdout)["pid"] == again["pid"]
