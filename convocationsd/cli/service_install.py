"""``convctl service install|uninstall|status``: put the daemon under the person's service manager.

Linux: the systemd user units from ``templates/systemd/`` go to ``$XDG_CONFIG_HOME/systemd/user`` with
ExecStart pointing at the interpreter this package runs in (a venv's ``bin/python`` stays unresolved, so the
venv is used), and the sandbox drop-in with them where the user manager can apply it. macOS: the LaunchAgent
from ``templates/launchd/`` goes to ``~/Library/LaunchAgents``.

Every step is printed as it happens, and a file whose content would not change is left alone, so running
install twice is safe and says so. Commands go through an injectable ``run`` so the logic can be tested
without a service manager, and so a missing manager (containers, SSH sessions without lingering) ends in
a clear message with the command to run later rather than a traceback.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from convocationsd.cli.terminal import safe_line
from convocationsd.common import paths
from convocationsd.common.interpreter import module_command
from convocationsd.core.errors import ConvError

# Package data: a wheel carries them beside this module, wherever pip or pipx installs it.
TEMPLATES = Path(__file__).with_name("templates")
SERVICE = "convocationsd.service"
SOCKETS = ("convocationsd.socket", "convocationsd-http.socket")
UNITS = (SERVICE, *SOCKETS)
# The service's file-system sandbox, a drop-in installed only where the user manager can apply it (see
# _install_sandbox). The trial unit holds the settings of it that fail when it cannot: a user namespace
# (217/USER), capabilities dropped inside it (218/CAPABILITIES), mounts inside it (226/NAMESPACE).
SANDBOX = f"{SERVICE}.d/sandbox.conf"
SANDBOX_TRIAL = (
    "PrivateUsers=yes",
    "CapabilityBoundingSet=",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
)
LABEL = "io.convocations.convocationsd"
PLIST = f"{LABEL}.plist"


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str  # stdout and stderr together, stripped


Runner = Callable[[Sequence[str]], RunResult]


def run_command(argv: Sequence[str]) -> RunResult:
    """The real runner. A missing program is exit code 127, like a shell says it."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return RunResult(127, f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return RunResult(124, f"{argv[0]} did not answer within 60 seconds")
    return RunResult(done.returncode, (done.stdout + done.stderr).strip())


class ServiceManagerError(ConvError):
    """The files are in place but systemctl/launchctl could not load them."""


# ---------------------------------------------------------------------------------------------- rendering


def systemd_quote(arg: str) -> str:
    """One ExecStart argument, per systemd.syntax(7): ``%`` and ``$`` would expand, blanks would split."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", arg) or not arg:
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def daemon_command(python: str) -> list[str]:
    """What the unit and the plist run: the daemon of this installation, importing nothing from the
    working directory (systemd's and launchd's default is the home directory, where a ``json.py`` of the
    person's own, or one someone left in a shared directory, would otherwise be imported first)."""
    return module_command(python, "convocationsd")


def render_units(
    python: str, http_port: int = 3000, templates: Path = TEMPLATES, socket_path: Path | None = None
) -> dict[str, str]:
    """Unit file name -> content for this installation. ``socket_path``: where the IPC socket unit listens
    when the daemon's socket setting names a place (config.toml's ``socket``), which the clients look at too;
    None keeps the template's ``%t/convocations/convocationsd.sock``."""
    source = _template_dir(templates, "systemd", UNITS)
    units = {name: (source / name).read_text() for name in UNITS}
    exec_start = "ExecStart=" + " ".join(systemd_quote(a) for a in daemon_command(python))
    units[SERVICE] = re.sub(r"^ExecStart=.*$", lambda _: exec_start, units[SERVICE], count=1, flags=re.M)
    if socket_path is not None:  # the rest of the line is the path; only % would expand (systemd.unit(5))
        listen = "ListenStream=" + str(socket_path).replace("%", "%%")
        units[SOCKETS[0]] = re.sub(r"^ListenStream=.*$", lambda _: listen, units[SOCKETS[0]], count=1, flags=re.M)
    units[SOCKETS[1]] = re.sub(
        r"^(ListenStream=(?:127\.0\.0\.1|\[::1\])):\d+$", rf"\g<1>:{int(http_port)}", units[SOCKETS[1]], flags=re.M
    )
    return units


def render_sandbox(templates: Path = TEMPLATES) -> str:
    return (_template_dir(templates, "systemd", (SANDBOX,)) / SANDBOX).read_text()


def render_plist(
    *, python: str, socket_path: Path, home: Path, http_port: int = 3000, templates: Path = TEMPLATES
) -> bytes:
    """The LaunchAgent plist for this installation. Placeholders are filled inside the parsed plist, so a
    path with ``&`` or ``<`` cannot break the XML."""
    source = _template_dir(templates, "launchd", (PLIST,))
    values = {"@PYTHON@": python, "@SOCKET_PATH@": str(socket_path), "@HOME@": str(home), "@HTTP_PORT@": str(http_port)}

    def fill(node: Any) -> Any:  # the plist as plistlib.loads gives it
        if isinstance(node, str):
            for placeholder, value in values.items():
                node = node.replace(placeholder, value)
            return node
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    agent = fill(plistlib.loads((source / PLIST).read_bytes()))
    agent["ProgramArguments"] = daemon_command(python)  # the one command line, whatever the template says
    return plistlib.dumps(agent, sort_keys=False)


def _template_dir(templates: Path, sub: str, names: Sequence[str]) -> Path:
    folder = templates / sub
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ConvError(
            f"The service templates ({', '.join(missing)}) are not part of this installation (looked in {folder}).",
            "This installation is incomplete: reinstall convocationsd (`pipx reinstall convocationsd`, or "
            "`pip install --force-reinstall convocationsd` in its environment).",
        )
    return folder


def unit_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME")
    config = Path(base) if base and os.path.isabs(base) else _home(env) / ".config"
    return config / "systemd" / "user"


def plist_path(env: Mapping[str, str] = os.environ) -> Path:
    return _home(env) / "Library" / "LaunchAgents" / PLIST


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


# ---------------------------------------------------------------------------------------------- actions


@dataclass
class _Session:
    """Prints and records each step; in a dry run, says what it would do instead."""

    out: TextIO
    dry_run: bool
    run: Runner
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(safe_line(line), file=self.out, flush=True)  # it may quote systemctl's or launchctl's output

    def write(self, path: Path, content: bytes) -> bool:
        """Writes ``path`` atomically unless it already holds ``content``; returns whether it changed."""
        try:
            if path.read_bytes() == content:
                self.say(f"unchanged: {path}")
                return False
            verb = "update"
        except FileNotFoundError:
            verb = "write"
        if self.dry_run:
            self.say(f"would {verb}: {path}")
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        self.say(f"{'updated' if verb == 'update' else 'wrote'}: {path}")
        return True

    def remove(self, path: Path) -> None:
        if not path.exists():
            self.say(f"not installed: {path}")
        elif self.dry_run:
            self.say(f"would remove: {path}")
        else:
            path.unlink()
            self.say(f"removed: {path}")

    def command(self, argv: Sequence[str]) -> RunResult:
        shown = " ".join(argv)
        if self.dry_run:
            self.say(f"would run: {shown}")
            return RunResult(0, "")
        self.say(f"running: {shown}")
        result = self.run(argv)
        if result.returncode != 0:
            self.say(
                f"failed (exit {result.returncode}): {shown}"
                + (f": {_first_line(result.output)}" if result.output else "")
            )
        return result


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _why(result: RunResult) -> str:
    """Why a command failed: the first line it printed, else its exit status."""
    return _first_line(result.output) or f"exit {result.returncode}"


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


def _launchctl_target() -> tuple[str, str]:
    domain = f"gui/{os.getuid()}"
    return domain, f"{domain}/{LABEL}"


def _platform_error(platform: str) -> ConvError:
    return ConvError(
        f"convctl service supports Linux (systemd) and macOS (launchd), not {platform}.",
        "Start convocationsd from your own service manager; it runs in the foreground.",
    )


def install(
    *,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
    run: Runner = run_command,
    env: Mapping[str, str] = os.environ,
    platform: str = sys.platform,
    python: str = sys.executable,
    http_port: int = 3000,
    templates: Path = TEMPLATES,
    socket_path: Path | None = None,
) -> list[str]:
    """Installs and starts the service; returns the lines it printed.

    Raises ServiceManagerError (after printing what was written) when systemctl/launchctl is missing or
    fails; its hint is the command to run once a user service manager is available."""
    session = _Session(out, dry_run, run)
    python = os.path.abspath(python)
    if platform.startswith("linux"):
        _install_systemd(session, env, python, http_port, templates, socket_path)
    elif platform == "darwin":
        _install_launchd(session, env, python, http_port, templates)
    else:
        raise _platform_error(platform)
    return session.lines


def _install_systemd(
    s: _Session, env: Mapping[str, str], python: str, port: int, templates: Path, socket_path: Path | None = None
) -> None:
    folder = unit_dir(env)
    enable = _systemctl("enable", "--now", *SOCKETS)
    later = "systemctl --user daemon-reload && " + " ".join(enable)
    # Asked before anything is written, so the outcome is said plainly: a container or an SSH session
    # without lingering has no user manager, and units written there are not running.
    probe = s.run(_systemctl("show-environment"))  # read-only
    missing = None
    if probe.returncode == 127:
        missing = "systemctl is not installed (this system does not run systemd)"
    elif probe.returncode != 0:
        missing = f"no systemd user manager is reachable ({_why(probe)})"
    existed = any((folder / name).exists() for name in UNITS)
    changed = [
        name
        for name, text in render_units(python, port, templates, socket_path).items()
        if s.write(folder / name, text.encode())
    ]
    if missing is None and _install_sandbox(s, folder, python, templates):
        changed.append(SANDBOX)
    if missing is not None:
        written = "would be written" if s.dry_run else "are written"
        s.say(f"NOT ENABLED: the unit files {written} to {folder}, but {missing}.")
        if s.dry_run:
            return
        raise ServiceManagerError(
            f"The unit files are written to {folder} but not enabled: {missing}.",
            "Where a systemd user manager runs (a desktop session, or an SSH login after `loginctl enable-linger "
            f"$USER`), run: {later}",
        )
    for argv in ([_systemctl("daemon-reload")] if changed else []) + [enable]:
        result = s.command(argv)
        if result.returncode != 0:
            raise ServiceManagerError(
                f"The unit files are in {folder}, but `{' '.join(argv)}` failed"
                + (f": {_first_line(result.output)}" if result.output else "."),
                f"In a session with a systemd user manager, run: {later}",
            )
    if existed and changed:
        s.say(
            "The changed units apply from the next start. To apply them now: systemctl --user stop "
            f"{SERVICE} && systemctl --user restart {' '.join(SOCKETS)}"
        )
    if not s.dry_run:
        s.say("convocationsd starts on the first connection; logs: journalctl --user -u convocationsd")


def _install_sandbox(s: _Session, folder: Path, python: str, templates: Path) -> bool:
    """Adds the sandbox drop-in where a trial unit with its kind of settings runs, and takes it away where one
    does not: with it, a user manager that cannot make a user namespace would never start the service.
    Returns whether the drop-in changed."""
    target = folder / SANDBOX
    trial = ["systemd-run", "--user", "--wait", "--collect", *(f"--property={p}" for p in SANDBOX_TRIAL)]
    trial += ["--", python, "-c", "pass"]
    if s.dry_run:
        s.say(f"would try the sandbox in a trial unit ({' '.join(trial)}), then write or remove {target}")
        return False
    result = s.run(trial)
    if result.returncode == 0:
        s.say("sandbox: on (a trial unit ran in its own user namespace)")
        return s.write(target, render_sandbox(templates).encode())
    why = next((line.strip() for line in result.output.splitlines() if "status=" in line), _why(result))
    s.say(f"sandbox: off, this user manager cannot apply it ({why}); the service runs with seccomp hardening only")
    if target.exists():
        target.unlink()
        s.say(f"removed: {target}")
        return True
    return False


def _install_launchd(s: _Session, env: Mapping[str, str], python: str, port: int, templates: Path) -> None:
    home, target = _home(env), plist_path(env)
    socket_path = paths.socket_path(env)
    content = render_plist(python=python, socket_path=socket_path, home=home, http_port=port, templates=templates)
    changed = s.write(target, content)
    if not s.dry_run:
        # launchd creates the socket but not its folder; the folder is what keeps other users out.
        paths.ensure_socket_dir(socket_path.parent)
        (home / "Library" / "Logs").mkdir(parents=True, exist_ok=True)
    domain, service = _launchctl_target()
    loaded = not s.dry_run and s.run(["launchctl", "print", service]).returncode == 0
    if loaded and not changed:
        s.say(f"already loaded: {service}")
        return
    steps = ([["launchctl", "bootout", service]] if loaded else []) + [
        ["launchctl", "enable", service],  # undoes an earlier `launchctl disable`, which would block bootstrap
        ["launchctl", "bootstrap", domain, str(target)],
    ]
    for argv in steps:
        result = s.command(argv)
        if result.returncode != 0:
            raise ServiceManagerError(
                f"The LaunchAgent is in {target}, but `{' '.join(argv)}` failed"
                + (f": {_first_line(result.output)}" if result.output else "."),
                f"Run: launchctl bootstrap gui/$(id -u) {target}",
            )
    if not s.dry_run:
        s.say(f"convocationsd starts on the first connection; logs: {home}/Library/Logs/convocationsd.log")


def uninstall(
    *,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
    run: Runner = run_command,
    env: Mapping[str, str] = os.environ,
    platform: str = sys.platform,
) -> list[str]:
    """Stops the service and removes its files. Removing the files is the goal: a service manager that
    cannot be reached is reported, not fatal."""
    s = _Session(out, dry_run, run)
    if platform.startswith("linux"):
        folder = unit_dir(env)
        if any((folder / name).exists() for name in UNITS):
            stopped = s.command(_systemctl("disable", "--now", *SOCKETS, SERVICE)).returncode == 0
            for name in UNITS:
                s.remove(folder / name)
            if (folder / SANDBOX).exists():
                s.remove(folder / SANDBOX)
                if not dry_run:
                    with contextlib.suppress(OSError):
                        (folder / SANDBOX).parent.rmdir()  # only if empty: a person's own drop-ins stay
            if stopped:
                s.command(_systemctl("daemon-reload"))
            else:
                s.say(f"If convocationsd still runs, stop it with: systemctl --user stop {SERVICE} {' '.join(SOCKETS)}")
        else:
            for name in UNITS:
                s.say(f"not installed: {folder / name}")
    elif platform == "darwin":
        target = plist_path(env)
        _, service = _launchctl_target()
        if not dry_run and run(["launchctl", "print", service]).returncode == 0:
            s.command(["launchctl", "bootout", service])
        s.remove(target)
    else:
        raise _platform_error(platform)
    return s.lines


def status(
    *,
    out: TextIO = sys.stdout,
    run: Runner = run_command,
    env: Mapping[str, str] = os.environ,
    platform: str = sys.platform,
    python: str = sys.executable,
    http_port: int = 3000,
    templates: Path = TEMPLATES,
    socket_path: Path | None = None,
) -> list[str]:
    """Says whether the files are installed and current for this interpreter, and what the manager reports."""
    s = _Session(out, False, run)
    python = os.path.abspath(python)
    if platform.startswith("linux"):
        folder = unit_dir(env)
        for name, text in render_units(python, http_port, templates, socket_path).items():
            s.say(f"{name}: {_file_state(folder / name, text.encode())}")
        if (folder / SANDBOX).exists():
            s.say(f"{SANDBOX}: {_file_state(folder / SANDBOX, render_sandbox(templates).encode())}")
        else:
            s.say(f"{SANDBOX}: not installed (install adds it where the user manager can apply it)")
        argv = _systemctl("show", "--property=Id,LoadState,UnitFileState,ActiveState,SubState", *UNITS)
        result = run(argv)
        if result.returncode != 0:
            s.say(f"systemd user manager: not reachable ({_why(result)})")
        else:
            for block in result.output.split("\n\n"):
                props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                if props.get("Id"):
                    s.say(
                        f"{props['Id']}: {props.get('UnitFileState') or props.get('LoadState', '?')}, "
                        f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
                    )
    elif platform == "darwin":
        target = plist_path(env)
        content = render_plist(
            python=python, socket_path=paths.socket_path(env), home=_home(env), http_port=http_port, templates=templates
        )
        s.say(f"{PLIST}: {_file_state(target, content)}")
        _, service = _launchctl_target()
        result = run(["launchctl", "print", service])
        s.say(f"{service}: {'loaded' if result.returncode == 0 else 'not loaded'}")
    else:
        raise _platform_error(platform)
    return s.lines


def _file_state(path: Path, expected: bytes) -> str:
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        return f"not installed ({path})"
    if current == expected:
        return f"installed, current ({path})"
    return f"installed, differs from this installation ({path}); run: convctl service install"
