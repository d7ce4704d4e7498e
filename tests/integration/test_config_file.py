"""config.toml cannot silently ignore a person: unknown keys are warned about at start and at reload, a setting
appended below the old ``[openrouter_api_key]`` table is warned about and moved out on the next write, and invalid
values are explained in words. All through the real daemon and convctl."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime

import pytest

from convocationsd.store import configfile
from tests.conftest import free_port, start_daemon

OLD_TABLE = (
    "# my settings\n"
    "log_level = 'debug'\n\n"
    "[openrouter_api_key]\n"
    'backend = "local-encrypted"\n'
    'nonce = "AAAAAAAAAAAAAAAA"\n'
    'ciphertext = "AAAA"\n'
)


def write_config(d_or_tmp, text: str):
    folder = d_or_tmp / "cfg" / "convocations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def wait_for_log(d, text: str, times: int = 1, timeout: float = 10.0) -> str:
    """The daemon's log once it holds ``text`` ``times`` times (it writes the line when a signal is handled)."""
    deadline = time.monotonic() + timeout
    while (log := d.log()).count(text) < times:
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{log}"
        time.sleep(0.05)
    return log


def flow_seconds(d) -> float:
    flow = d.call("oauth.start", {"restart": True})
    created = d.call("status")["flow"]["created_at"]
    parse = lambda iso: datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(flow["expires_at"]) - parse(created)).total_seconds()


def test_unknown_keys_are_warned_about_at_start_and_at_reload(short_tmp):
    config = write_config(short_tmp, "htp_port = 3001\n")
    d = start_daemon(short_tmp)
    try:
        assert f"config: unknown key htp_port in {config} is ignored (did you mean http_port?)" in d.log()
        config.write_text("flow_timeout = 42\n")
        d.proc.send_signal(signal.SIGHUP)
        log = wait_for_log(d, "configuration reloaded")
        assert "unknown key flow_timeout in" in log and "(did you mean flow_timeout_seconds?)" in log
    finally:
        d.stop()


async def test_a_setting_appended_below_the_old_table_is_warned_about_then_moved_out(short_tmp, daemon_factory, fake):
    """The trap: after the key's [openrouter_api_key] table, an appended setting belongs to the table. The daemon
    says so at start; storing a key rewrites the reference as an inline table and moves the setting to the top
    level, where the next reload applies it."""
    config = write_config(short_tmp, OLD_TABLE + "flow_timeout_seconds = 42\n")
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url)
    assert "config: flow_timeout_seconds is inside the [openrouter_api_key] table" in d.log()
    assert await asyncio.to_thread(flow_seconds, d) == 600  # ignored, as the warning says

    key = fake.issue_key()
    done = await asyncio.to_thread(d.convctl, "secret", "set-openrouter-key", input=key + "\n")
    assert done.returncode == 0, done.stderr
    text = config.read_text()
    assert text.startswith("# my settings\nlog_level = 'debug'\nopenrouter_api_key = {backend = \"local-encrypted\"")
    assert "[openrouter_api_key]" not in text and "\nflow_timeout_seconds = 42\n" in text
    assert "Moved flow_timeout_seconds out of the [openrouter_api_key] table" in d.log()

    d.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(wait_for_log, d, "configuration reloaded")
    assert await asyncio.to_thread(flow_seconds, d) == 42
    config.write_text(config.read_text() + "exchange_timeout_seconds = 5\n")  # now it is a setting like any other
    d.proc.send_signal(signal.SIGHUP)
    log = await asyncio.to_thread(wait_for_log, d, "configuration reloaded", 2)
    assert log.count("is inside the [openrouter_api_key] table") == 1 and "unknown key" not in log  # the start one
    assert configfile.load(config)["exchange_timeout_seconds"] == 5
    assert d.call("secret.get") == {"key": key}


def test_an_invalid_value_stops_the_daemon_with_words_not_python(short_tmp, daemon_factory):
    config = write_config(short_tmp, 'http_port = "three thousand"\n')
    d = daemon_factory(wait=False, RCONV_HTTP_PORT="")  # killed at teardown should it run after all
    assert d.proc.wait(20) == 2
    log = d.log()
    assert f"Invalid http_port from http_port in {config}: must be a whole port number from 1 to 65535" in log
    assert 'not "three thousand"' in log
    assert "invalid literal" not in log and "Traceback" not in log


async def test_a_reload_says_which_changed_settings_wait_for_a_restart(short_tmp, daemon_factory, fake):
    """SIGHUP with a new http_port (and openrouter_url): the daemon keeps its port and its OpenRouter, and the log,
    `status` and `convctl status` say so; the settings a reload can apply change at once. Undoing the change in
    config.toml clears it."""
    first, second = free_port(), free_port()
    config = write_config(short_tmp, f"http_port = {first}\nopenrouter_url = '{fake.url}'\n")
    d = await asyncio.to_thread(daemon_factory, RCONV_HTTP_PORT="", CONVOCATIONS_OPENROUTER_URL="")
    assert d.call("status")["port"] == first and d.call("status")["restart_needed"] == []
    config.write_text(f"http_port = {second}\nopenrouter_url = 'http://127.0.0.1:9'\nflow_timeout_seconds = 42\n")
    d.proc.send_signal(signal.SIGHUP)
    log = await asyncio.to_thread(wait_for_log, d, "configuration reloaded")
    where = f"in {config}"
    assert (
        f"WARNING convocationsd: http_port {second} (http_port {where}) takes effect at restart; still {first}" in log
    )
    assert (
        f"openrouter_url http://127.0.0.1:9 (openrouter_url {where}) takes effect at restart; still {fake.url}" in log
    )
    assert f"configuration reloaded from {config}; restart to apply http_port, openrouter_url" in log
    st = d.call("status")
    assert st["port"] == first and st["settings"]["http_port"]["value"] == first
    assert st["settings"]["openrouter_url"]["value"] == fake.url
    assert st["settings"]["flow_timeout_seconds"] == {"value": 42.0, "source": f"flow_timeout_seconds {where}"}
    assert await asyncio.to_thread(flow_seconds, d) == 42  # applied
    assert st["restart_needed"] == [
        {"setting": "http_port", "value": second, "source": f"http_port {where}", "running": first},
        {
            "setting": "openrouter_url",
            "value": "http://127.0.0.1:9",
            "source": f"openrouter_url {where}",
            "running": fake.url,
        },
    ]
    shown = await asyncio.to_thread(d.convctl, "status")
    assert f"restart:  http_port {second} (http_port {where}) takes effect at restart; still {first}\n" in shown.stdout

    config.write_text(f"http_port = {first}\nopenrouter_url = '{fake.url}'\n")
    d.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(wait_for_log, d, "configuration reloaded", 2)
    assert d.call("status")["restart_needed"] == []


IN_NAMESPACE = """
import os, sys
from pathlib import Path
from convocationsd.core.errors import UntrustedConfig
from convocationsd.store import configfile
print(os.stat("/").st_uid)
for path in sys.argv[1:]:
    try:
        configfile.check_trusted(Path(path))
        print("trusted")
    except UntrustedConfig as e:
        print("refused:", e.message)
"""


def test_inside_a_user_namespace_roots_folders_are_taken_as_roots(short_tmp):
    """The service's sandbox (PrivateUsers=yes) maps only our own uid, so /, /home and the like read as owned
    by the overflow uid: seen under a real systemd (tests/service), the daemon refused every config.toml and
    never started. Inside such a namespace that owner is taken as root's; the mode checks still hold."""
    import shutil
    import subprocess
    import sys

    if os.getuid() == 0:
        pytest.skip("as root, root maps to itself in a user namespace: this runs as an ordinary user (make test)")
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux)")
    ours = short_tmp / "cfg" / "config.toml"
    ours.parent.mkdir()
    ours.write_text('log_level = "debug"\n')
    loose = short_tmp / "loose" / "config.toml"
    loose.parent.mkdir()
    loose.parent.chmod(0o777)
    loose.write_text('log_level = "debug"\n')
    argv = ["unshare", "--user", "--map-current-user", sys.executable, "-c", IN_NAMESPACE, str(ours), str(loose)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"this machine refuses an unprivileged user namespace: {done.stderr.strip()}")
    overflow = int(open("/proc/sys/kernel/overflowuid").read())
    lines = done.stdout.splitlines()
    assert lines[0] == str(overflow), done  # root's / as seen from inside
    assert lines[1] == "trusted", done
    assert lines[2].startswith("refused:") and "can be written by other users" in lines[2], done
