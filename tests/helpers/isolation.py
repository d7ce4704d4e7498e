"""Tests touch nothing of the person running them: a pytest plugin (tests/conftest.py loads it).

Before anything is collected, HOME and every XDG_* dir move to a new temporary directory, so that the
daemon, convctl, gnome-keyring and Chromium started by the tests write there; the person's session bus and
display are dropped, so no test talks to their keyring or opens their browser. The real dirs are the ones
the run started with: ``tests/with-keyring.sh`` passes them on as ``CONVOCATIONS_TEST_REAL_*`` (it moves
HOME too, before it starts the bus and gnome-keyring), and a nested run keeps those of the outermost one.

A guard compares what the tests could have written of the real dirs before and after the session, and
fails the run when anything was created, changed or removed. The person's own convocationsd may be at work
meanwhile: when one was seen (at the start or the end), the changes it makes itself (its config dir, its
socket's dir, the keyring) are reported as most likely its own, and only the others fail the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REAL_VARS = {
    "home": "CONVOCATIONS_TEST_REAL_HOME",
    "config_home": "CONVOCATIONS_TEST_REAL_CONFIG_HOME",
    "data_home": "CONVOCATIONS_TEST_REAL_DATA_HOME",
    "runtime_dir": "CONVOCATIONS_TEST_REAL_RUNTIME_DIR",
}
PRIVATE_BUS = "CONVOCATIONS_TEST_BUS"  # the address of tests/with-keyring.sh's own session bus
# What a desktop session hands down that leads to the person's own things: their session bus (and keyring),
# and their display, where convctl would open a browser and GLib would start a bus of its own.
SESSION_VARS = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "GNOME_KEYRING_CONTROL")
# In the real runtime dir only what the code under test (or its tools) would put there: a live desktop
# session changes the rest of it all the time.
RUNTIME_ENTRIES = ("convocations", "keyring", "bus", "dbus-1")
LAUNCH_AGENT = "Library/LaunchAgents/io.convocations.convocationsd.plist"
# The longest temporary directory the tests can use: their deepest socket path, a short_tmp's
# "cv12345678/run/convocations/convocationsd.sock", is 47 bytes below it, and sun_path holds 104 on macOS.
MAX_TEMPDIR = 50


@dataclass(frozen=True)
class RealDirs:
    home: Path
    config_home: Path
    data_home: Path
    runtime_dir: Path

    @classmethod
    def of(cls, env: Mapping[str, str]) -> RealDirs:
        """The dirs an outer run passed on (all four), else the ones ``env`` names, with the XDG defaults."""
        if env.get(REAL_VARS["home"]):
            return cls(*(Path(env[var]) for var in REAL_VARS.values()))
        home = env.get("HOME") or str(Path.home())
        return cls(
            Path(home),
            Path(env.get("XDG_CONFIG_HOME") or f"{home}/.config"),
            Path(env.get("XDG_DATA_HOME") or f"{home}/.local/share"),
            Path(env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"),
        )

    def export(self, env: MutableMapping[str, str]) -> None:
        for name, var in REAL_VARS.items():
            env[var] = str(getattr(self, name))

    def daemons_own(self) -> list[Path]:
        """What a running convocationsd changes by itself: its config dir, its socket's dir, the keyring."""
        return [
            self.config_home / "convocations",
            self.home / ".config/convocations",
            self.runtime_dir / "convocations",
            self.data_home / "keyrings",
            self.home / ".local/share/keyrings",
        ]

    def guarded(self) -> list[tuple[Path, bool]]:
        """(path, whole tree?) of everything the tests must leave alone."""
        deep = {
            self.data_home / "keyrings",
            self.home / ".local/share/keyrings",
            self.config_home / "convocations",
            self.home / ".config/convocations",
            self.config_home / "systemd/user",
            self.home / ".config/systemd/user",
            self.home / LAUNCH_AGENT,
            *(self.runtime_dir / name for name in RUNTIME_ENTRIES),
        }
        return [(self.runtime_dir, False), *((p, True) for p in sorted(deep))]


def isolate(env: MutableMapping[str, str], root: Path) -> None:
    """Points HOME and the XDG dirs of ``env`` into ``root`` and drops the person's session."""
    if "PYTHONUSERBASE" not in env:  # packages installed with `pip install --user` are found through HOME
        import site

        env["PYTHONUSERBASE"] = site.getuserbase()
    home = root / "home"
    dirs = {
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local/share",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_STATE_HOME": home / ".local/state",
    }
    for path in dirs.values():
        path.mkdir(parents=True)
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    env.update({"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), **{k: str(v) for k, v in dirs.items()}})
    private_bus = env.get(PRIVATE_BUS)
    for var in SESSION_VARS:
        if var == "DBUS_SESSION_BUS_ADDRESS" and private_bus and env.get(var) == private_bus:
            continue  # the wrapper's own bus, with its own gnome-keyring: that one is for tests
        env.pop(var, None)


# -- the guard ---------------------------------------------------------------------------------------


def _entries(top: Path, deep: bool) -> Iterator[Path]:
    yield top
    if not deep or not top.is_dir() or top.is_symlink():
        return
    for root, dirs, files in os.walk(top):  # os.walk follows no symlinked dirs
        for name in (*dirs, *files):
            yield Path(root) / name


def _state(path: Path) -> tuple:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ("absent",)
    kind = stat.S_IFMT(st.st_mode)
    if not stat.S_ISREG(st.st_mode):  # directories, sockets, links: what they are, not what they hold
        return (kind, stat.S_IMODE(st.st_mode), None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns)
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:  # not ours to read: size and time still tell a change
        digest = None
    return (kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)


def snapshot(targets: list[tuple[Path, bool]]) -> dict[Path, tuple]:
    return {path: _state(path) for top, deep in targets for path in _entries(top, deep)}


def changes(before: dict[Path, tuple], after: dict[Path, tuple]) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path, ("absent",)), after.get(path, ("absent",))
        if old == new:
            continue
        verb = "created" if old == ("absent",) else "removed" if new == ("absent",) else "changed"
        found.append((verb, path))
    return found


def persons_daemon(real: RealDirs) -> str | None:
    """Whether a convocationsd of the person's may change their files now, and how that shows: a process of
    theirs running it with their HOME (the tests' own daemons have a temporary one; Linux, from /proc), or its
    socket in their runtime dir (held by systemd or launchd, which start the daemon on the next connection)."""
    home = os.fsencode(real.home)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"convocationsd" not in (os.path.basename(arg) for arg in argv[:4]):
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # it ended, or is not ours to read
            continue
        if b"HOME=" + home in environ:
            return f"your convocationsd (pid {proc.name}) was running"
    socket = real.runtime_dir / "convocations" / "convocationsd.sock"
    if socket.is_socket():
        return f"the socket of your convocationsd, {socket}, was there"
    return None


# -- the plugin ----------------------------------------------------------------------------------------

_session = pytest.StashKey[tuple[RealDirs, dict[Path, tuple], Path, str | None]]()
_found = pytest.StashKey[tuple[list[str], list[str], str | None]]()  # the tests', the daemon's, why


def check_tempdir(tempdir: str) -> None:
    """The tests make their Unix sockets up to ~50 bytes below the temporary directory (TMPDIR, else /tmp),
    and a socket path holds 104 bytes on macOS, 108 on Linux: refuse one too long for that, saying why."""
    length = len(os.fsencode(tempdir))
    if length > MAX_TEMPDIR:
        raise pytest.UsageError(
            f"The temporary directory {tempdir} is {length} bytes long; the tests need one of at most {MAX_TEMPDIR}, "
            "as the Unix socket paths they make under it must fit in 104 bytes. "
            "Set TMPDIR to a shorter directory of yours (for example: mkdir -p ~/t && export TMPDIR=~/t)."
        )


def pytest_configure(config: pytest.Config) -> None:
    check_tempdir(tempfile.gettempdir())
    real = RealDirs.of(os.environ)
    daemon = persons_daemon(real)
    before = snapshot(real.guarded())
    root = Path(tempfile.mkdtemp(prefix="cvs"))  # in TMPDIR (else /tmp), short: Unix socket paths fit under it
    real.export(os.environ)
    isolate(os.environ, root)
    config.stash[_session] = (real, before, root, daemon)


def pytest_sessionfinish(session: pytest.Session) -> None:
    real, before, _root, daemon = session.config.stash[_session]
    found = changes(before, snapshot(real.guarded()))
    daemon = daemon or persons_daemon(real)
    daemons = real.daemons_own() if daemon else []

    def by_daemon(path: Path) -> bool:
        return any(path == d or d in path.parents for d in daemons)

    tests = [f"{verb} {path}" for verb, path in found if not by_daemon(path)]
    its_own = [f"{verb} {path}" for verb, path in found if by_daemon(path)]
    session.config.stash[_found] = (tests, its_own, daemon)
    if tests:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    tests, its_own, daemon = config.stash.get(_found, ([], [], None))
    if its_own:
        terminalreporter.section("files of yours that your own convocationsd changed, most likely", sep="-")
        for line in its_own:
            terminalreporter.line(line)
        terminalreporter.line(
            f"During this run {daemon}; these are what it changes itself, so the tests are not blamed for them. "
            "For an exact check, stop it (systemctl --user stop convocationsd.socket convocationsd-http.socket "
            "convocationsd.service) and run the tests again."
        )
    if tests:
        terminalreporter.section("files of the person running the tests were touched", sep="!", red=True)
        for line in tests:
            terminalreporter.line(line, red=True)
        terminalreporter.line(
            "Every test must run under the temporary HOME and XDG dirs of tests/helpers/isolation.py: find the "
            "code that reached these paths. If something else changed them during the run (your desktop's "
            "keyring saving a password, say), run the tests again.",
            red=True,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session in config.stash:
        shutil.rmtree(config.stash[_session][2], ignore_errors=True)
