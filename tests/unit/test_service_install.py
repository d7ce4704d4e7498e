"""convctl service install|uninstall|status: rendering, idempotency and what gets printed and run.

No systemd user manager or launchd runs on the test machines, so systemctl/launchctl are replaced by a
recording runner: a mock of the service manager that answers with scripted exit codes. The rendered unit
files themselves are checked by the real ``systemd-analyze --user verify`` in tests/integration/test_units.py.
"""

from __future__ import annotations

import io
import os
import plistlib
import re
from pathlib import Path

import pytest

from convocationsd.cli import service_install as si
from convocationsd.core.errors import ConvError

PYTHON = "/opt/conv venv/bin/python"  # a blank in the path must survive ExecStart quoting
TRIAL = ["systemd-run", "--user", "--wait", "--collect", *(f"--property={p}" for p in si.SANDBOX_TRIAL)]
TRIAL += ["--", PYTHON, "-c", "pass"]


class Recorder:
    """Stands in for systemctl/launchctl: records argv, answers from ``answers`` (argv prefix -> result)."""

    def __init__(self, answers: dict[tuple[str, ...], si.RunResult] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv):
        self.calls.append(list(argv))
        for prefix, result in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return result
        return si.RunResult(0, "")


@pytest.fixture
def env(tmp_path):
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def install(env, run, **kw):
    out = io.StringIO()
    kw.setdefault("python", PYTHON)
    lines = si.install(out=out, run=run, env=env, platform="linux", **kw)
    assert out.getvalue().splitlines() == lines  # everything returned was printed
    return lines


def test_systemd_quote():
    assert si.systemd_quote("/usr/bin/python3") == "/usr/bin/python3"
    assert si.systemd_quote("/opt/my env/python") == '"/opt/my env/python"'
    assert si.systemd_quote("/opt/100%/py") == "/opt/100%%/py"
    assert si.systemd_quote("/opt/$HOME/py") == "/opt/$$HOME/py"
    assert si.systemd_quote('/a"b\\c d') == '"/a\\"b\\\\c d"'


def test_render_units_fills_interpreter_and_port():
    units = si.render_units(PYTHON, http_port=3123)
    assert set(units) == {"convocationsd.service", "convocationsd.socket", "convocationsd-http.socket"}
    exec_lines = [line for line in units["convocationsd.service"].splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == ['ExecStart="/opt/conv venv/bin/python" -P -m convocationsd']
    listen = [line for line in units["convocationsd-http.socket"].splitlines() if line.startswith("ListenStream=")]
    assert listen == ["ListenStream=127.0.0.1:3123", "ListenStream=[::1]:3123"]


def test_render_units_puts_the_ipc_socket_where_it_is_told():
    default = si.render_units(PYTHON)["convocationsd.socket"]
    assert "\nListenStream=%t/convocations/convocationsd.sock\n" in default
    moved = si.render_units(PYTHON, socket_path=Path("/home/me/100%/d.sock"))["convocationsd.socket"]
    assert [line for line in moved.splitlines() if line.startswith("ListenStream=")] == [
        "ListenStream=/home/me/100%%/d.sock"  # % would expand as a specifier
    ]
    assert moved.replace("/home/me/100%%/d.sock", "%t/convocations/convocationsd.sock") == default


def test_install_writes_units_and_enables_sockets(env):
    run = Recorder()
    lines = install(env, run)
    folder = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    for name in si.UNITS:
        assert f"wrote: {folder / name}" in lines
        assert (folder / name).stat().st_mode & 0o777 == 0o644
    assert 'ExecStart="/opt/conv venv/bin/python" -P -m convocationsd' in (folder / "convocationsd.service").read_text()
    assert run.calls == [
        ["systemctl", "--user", "show-environment"],  # is a user manager there? asked before writing
        TRIAL,
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "convocationsd.socket", "convocationsd-http.socket"],
    ]
    assert "running: systemctl --user daemon-reload" in lines
    assert "sandbox: on (a trial unit ran in its own user namespace)" in lines
    assert (folder / si.SANDBOX).read_text() == si.render_sandbox()
    assert not list(folder.glob(".*.tmp"))


def test_second_install_rewrites_nothing(env):
    install(env, Recorder())
    folder = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    run = Recorder()
    lines = install(env, run)
    unchanged = [f"unchanged: {folder / n}" for n in (*si.UNITS, si.SANDBOX)]
    assert [line for line in lines if line.startswith("unchanged: ")] == unchanged
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    assert run.calls == [
        ["systemctl", "--user", "show-environment"],
        TRIAL,
        ["systemctl", "--user", "enable", "--now", *si.SOCKETS],
    ]  # no reload


def test_new_interpreter_updates_only_the_service_and_says_how_to_apply(env):
    install(env, Recorder())
    lines = install(env, Recorder(), python="/usr/local/bin/python3.12")
    assert any(line.startswith("updated: ") and line.endswith("convocationsd.service") for line in lines)
    assert sum(line.startswith("unchanged: ") for line in lines) == 3  # the sockets and the sandbox
    assert any("To apply them now" in line for line in lines)


def test_sandbox_stays_out_where_the_trial_unit_fails(env):
    """A user manager that cannot make a user namespace would never start a service with the drop-in."""
    refused = si.RunResult(
        1,
        "Running as unit: run-u7.service\nFinished with result: exit-code\n"
        "Main processes terminated with: code=exited/status=217\nService runtime: 3ms",
    )
    lines = install(env, Recorder({("systemd-run",): refused}))
    folder = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    assert not (folder / si.SANDBOX).exists() and all((folder / n).is_file() for n in si.UNITS)
    assert (
        "sandbox: off, this user manager cannot apply it (Main processes terminated with: code=exited/status=217); "
        "the service runs with seccomp hardening only"
    ) in lines


def test_sandbox_is_taken_away_when_the_trial_fails_later(env):
    """After an upgrade that restricts user namespaces, installing again must not leave a service that cannot start."""
    install(env, Recorder())
    folder = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    assert (folder / si.SANDBOX).is_file()
    run = Recorder({("systemd-run",): si.RunResult(1, "Failed to start transient service unit: Access denied")})
    lines = install(env, run)
    assert not (folder / si.SANDBOX).exists() and f"removed: {folder / si.SANDBOX}" in lines
    assert ["systemctl", "--user", "daemon-reload"] in run.calls  # the manager must forget the drop-in
    assert (
        "sandbox: off, this user manager cannot apply it (Failed to start transient service unit: Access denied)"
        in (" ".join(lines))
    )


def test_default_unit_dir_without_xdg(tmp_path):
    assert si.unit_dir({"HOME": str(tmp_path)}) == tmp_path / ".config" / "systemd" / "user"
    assert (
        si.unit_dir({"HOME": str(tmp_path), "XDG_CONFIG_HOME": "relative"}) == tmp_path / ".config" / "systemd" / "user"
    )


def test_dry_run_touches_nothing(env):
    run = Recorder()
    lines = install(env, run, dry_run=True)
    assert run.calls == [["systemctl", "--user", "show-environment"]]  # read-only
    assert not Path(env["XDG_CONFIG_HOME"]).exists()
    assert sum(line.startswith("would write: ") for line in lines) == 3
    assert "would run: systemctl --user enable --now convocationsd.socket convocationsd-http.socket" in lines
    assert any(line.startswith("would try the sandbox in a trial unit (systemd-run --user") for line in lines)


def test_missing_systemctl_says_what_was_written_and_what_to_run(env):
    run = Recorder({("systemctl",): si.RunResult(127, "systemctl: command not found")})
    out = io.StringIO()
    with pytest.raises(si.ServiceManagerError) as e:
        si.install(out=out, run=run, env=env, platform="linux", python=PYTHON)
    folder = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    assert all((folder / n).is_file() for n in si.UNITS)  # the files stay written
    assert f"written to {folder} but not enabled" in e.value.message and "systemctl is not installed" in e.value.message
    assert "systemctl --user enable --now convocationsd.socket convocationsd-http.socket" in e.value.hint
    assert "NOT ENABLED" in out.getvalue()
    assert run.calls == [["systemctl", "--user", "show-environment"]]  # nothing is run that cannot work


def test_no_user_manager_writes_the_units_and_says_they_are_not_enabled(env):
    run = Recorder({("systemctl",): si.RunResult(1, "Failed to connect to bus: No medium found")})
    with pytest.raises(si.ServiceManagerError) as e:
        install(env, run)
    assert "not enabled: no systemd user manager is reachable (Failed to connect to bus: No medium found)" in str(
        e.value
    )
    assert "loginctl enable-linger" in e.value.hint and "systemctl --user daemon-reload &&" in e.value.hint
    assert len(run.calls) == 1


def test_no_user_manager_dry_run_says_so_without_failing(env):
    run = Recorder({("systemctl",): si.RunResult(1, "Failed to connect to bus: No medium found")})
    lines = install(env, run, dry_run=True)
    assert any(line.startswith("NOT ENABLED: the unit files would be written") for line in lines)
    assert not Path(env["XDG_CONFIG_HOME"]).exists()


def test_uninstall_disables_then_removes(env):
    install(env, Recorder())
    run = Recorder()
    out = io.StringIO()
    lines = si.uninstall(out=out, run=run, env=env, platform="linux")
    folder = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    assert not any((folder / n).exists() for n in si.UNITS)
    assert run.calls == [
        ["systemctl", "--user", "disable", "--now", *si.SOCKETS, "convocationsd.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert sum(line.startswith("removed: ") for line in lines) == 4  # the units and the sandbox
    assert not (folder / si.SANDBOX).parent.exists()
    again = Recorder()
    lines = si.uninstall(out=io.StringIO(), run=again, env=env, platform="linux")
    assert again.calls == [] and all(line.startswith("not installed: ") for line in lines)


def test_uninstall_without_manager_still_removes_files(env):
    install(env, Recorder())
    run = Recorder({("systemctl",): si.RunResult(1, "Failed to connect to bus")})
    lines = si.uninstall(out=io.StringIO(), run=run, env=env, platform="linux")
    assert sum(line.startswith("removed: ") for line in lines) == 4
    assert any("systemctl --user stop" in line for line in lines)
    assert len(run.calls) == 1  # no daemon-reload against a manager that is not there


def test_status_reports_files_and_manager(env):
    install(env, Recorder())
    show = "\n\n".join(
        f"Id={u}\nLoadState=loaded\nUnitFileState={s}\nActiveState={a}\nSubState={sub}"
        for u, s, a, sub in [
            ("convocationsd.service", "static", "inactive", "dead"),
            ("convocationsd.socket", "enabled", "active", "listening"),
            ("convocationsd-http.socket", "enabled", "failed", "failed"),
        ]
    )
    run = Recorder({("systemctl", "--user", "show"): si.RunResult(0, show)})
    lines = si.status(out=io.StringIO(), run=run, env=env, platform="linux", python=PYTHON)
    assert sum("installed, current" in line for line in lines) == 4  # the units and the sandbox
    assert "convocationsd.socket: enabled, active (listening)" in lines
    assert "convocationsd-http.socket: enabled, failed (failed)" in lines

    other = si.status(
        out=io.StringIO(),
        run=Recorder({("systemctl",): si.RunResult(1, "Failed to connect to bus")}),
        env=env,
        platform="linux",
        python="/usr/bin/python3",
    )
    assert any("differs from this installation" in line for line in other)
    assert "systemd user manager: not reachable (Failed to connect to bus)" in other

    install(env, Recorder({("systemd-run",): si.RunResult(1, "status=217")}))
    without = si.status(out=io.StringIO(), run=Recorder(), env=env, platform="linux", python=PYTHON)
    assert f"{si.SANDBOX}: not installed (install adds it where the user manager can apply it)" in without


def test_unsupported_platform(env):
    with pytest.raises(ConvError, match=r"Linux .* macOS"):
        si.install(out=io.StringIO(), run=Recorder(), env=env, platform="win32")


def test_missing_templates_explain_themselves(env, tmp_path):
    with pytest.raises(ConvError, match="not part of this installation"):
        install(env, Recorder(), templates=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ macOS


@pytest.fixture
def mac_env(tmp_path):
    return {"HOME": str(tmp_path / "Users" / "ada"), "CONVOCATIONS_SOCKET": str(tmp_path / "run" / "conv.sock")}


def mac_install(env, run, **kw):
    return si.install(out=io.StringIO(), run=run, env=env, platform="darwin", python="/opt/py/bin/python3", **kw)


def test_launchd_install_writes_plist_and_bootstraps(mac_env):
    not_loaded = si.RunResult(113, 'Could not find service "io.convocations.convocationsd" in domain for user gui: 501')
    run = Recorder({("launchctl", "print"): not_loaded})
    lines = mac_install(mac_env, run)
    target = Path(mac_env["HOME"]) / "Library" / "LaunchAgents" / "io.convocations.convocationsd.plist"
    plist = plistlib.loads(target.read_bytes())
    assert plist["ProgramArguments"] == ["/opt/py/bin/python3", "-P", "-m", "convocationsd"]
    assert plist["Sockets"]["ctl"] == {"SockPathName": mac_env["CONVOCATIONS_SOCKET"], "SockPathMode": 0o600}
    assert plist["Sockets"]["http"]["SockServiceName"] == "3000"
    assert plist["StandardErrorPath"] == f"{mac_env['HOME']}/Library/Logs/convocationsd.log"
    assert (Path(mac_env["CONVOCATIONS_SOCKET"]).parent.stat().st_mode & 0o777) == 0o700
    uid = os.getuid()
    assert run.calls == [
        ["launchctl", "print", f"gui/{uid}/io.convocations.convocationsd"],
        ["launchctl", "enable", f"gui/{uid}/io.convocations.convocationsd"],
        ["launchctl", "bootstrap", f"gui/{uid}", str(target)],
    ]
    assert f"running: launchctl bootstrap gui/{uid} {target}" in lines

    again = Recorder()  # `launchctl print` succeeds now: loaded
    lines = mac_install(mac_env, again)
    assert f"unchanged: {target}" in lines and any(line.startswith("already loaded") for line in lines)
    assert again.calls == [["launchctl", "print", f"gui/{uid}/io.convocations.convocationsd"]]


def test_launchd_changed_plist_is_reloaded(mac_env):
    mac_install(mac_env, Recorder({("launchctl", "print"): si.RunResult(113, "")}))
    run = Recorder()
    mac_install(mac_env, run, http_port=3100)
    assert [c[1] for c in run.calls] == ["print", "bootout", "enable", "bootstrap"]


def test_launchd_failure_names_the_command(mac_env):
    run = Recorder(
        {
            ("launchctl", "print"): si.RunResult(113, ""),
            ("launchctl", "bootstrap"): si.RunResult(5, "Bootstrap failed: 5: Input/output error"),
        }
    )
    with pytest.raises(si.ServiceManagerError) as e:
        mac_install(mac_env, run)
    assert "Input/output error" in e.value.message
    assert e.value.hint.startswith("Run: launchctl bootstrap gui/$(id -u) ")


def test_launchd_uninstall(mac_env):
    mac_install(mac_env, Recorder({("launchctl", "print"): si.RunResult(113, "")}))
    run = Recorder()
    lines = si.uninstall(out=io.StringIO(), run=run, env=mac_env, platform="darwin")
    assert [c[1] for c in run.calls] == ["print", "bootout"]
    assert any(line.startswith("removed: ") for line in lines)
    assert not si.plist_path(mac_env).exists()


def test_the_plist_comment_names_every_placeholder_the_installer_fills():
    """The template's comment lists its placeholders; the template uses those and no others; the installer fills
    them all (a fifth one would be left as @NAME@ in the installed plist)."""
    text = (si.TEMPLATES / "launchd" / si.PLIST).read_text()
    comment, _, body = text.partition("-->")
    named, used = set(re.findall(r"@[A-Z_]+@", comment)), set(re.findall(r"@[A-Z_]+@", body))
    assert named == used == {"@PYTHON@", "@SOCKET_PATH@", "@HOME@", "@HTTP_PORT@"}
    rendered = si.render_plist(python="/py", socket_path=Path("/s.sock"), home=Path("/h"), http_port=3201)
    assert not re.search(rb"@[A-Z_]+@", rendered) and b"<string>3201</string>" in rendered
    assert "four placeholders" in comment and "RunAtLoad" in comment
