"""The tests touch nothing of the person running them: HOME and the XDG dirs are temporary, a run that writes
into the real ones fails, and tests/with-keyring.sh leaves a real login keyring (with its own password) alone.

The "real" HOME of the runs started here is a made-up one under tmp_path, passed the way a person's would be."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import start_daemon
from tests.helpers.gnome_keyring import gnome_keyring, missing_tools
from tests.helpers.isolation import MAX_TEMPDIR, PRIVATE_BUS, SESSION_VARS, RealDirs, snapshot

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "tests" / "with-keyring.sh"


def persons_env(home: Path, runtime: Path) -> dict[str, str]:
    """The environment of a person whose HOME and runtime dir are these (nothing of this test run in it)."""
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "CONVOCATIONS_", "RCONV_")) and k not in SESSION_VARS
    }
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    return env


def test_this_run_is_under_a_temporary_home():
    real = RealDirs.of(os.environ)
    home = Path(os.environ["HOME"])
    assert home != real.home and Path(tempfile.gettempdir()) in home.parents
    # TMPDIR may be in the real HOME (~/tmp, where /tmp is not writable), but not in what the guard watches.
    assert not any(top == home or top in home.parents for top, _ in real.guarded())
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        assert home.parent in Path(os.environ[var]).parents, var  # all in this session's temporary dir
    assert not {"DISPLAY", "WAYLAND_DISPLAY"} & set(os.environ)
    bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    assert bus is None or bus == os.environ.get(PRIVATE_BUS)  # only the wrapper's private bus


TOUCHES = textwrap.dedent(
    """
    import os
    from pathlib import Path

    def test_writes_where_it_must_not():
        home = Path(os.environ["CONVOCATIONS_TEST_REAL_HOME"])
        (home / ".config/convocations").mkdir(parents=True)
        (home / ".config/convocations/config.toml").write_text("http_port = 3001\\n")
        (home / ".local/share/keyrings/login.keyring").write_bytes(b"rewritten")
        (Path(os.environ["CONVOCATIONS_TEST_REAL_RUNTIME_DIR"]) / "convocations").mkdir()
    """
)

TOUCHES_NOTHING = textwrap.dedent(
    """
    import os
    from pathlib import Path

    def test_reads_only():
        assert os.environ["HOME"] != os.environ["CONVOCATIONS_TEST_REAL_HOME"]
        Path(os.environ["HOME"], ".config", "convocations").mkdir(parents=True)  # the temporary one: fine
    """
)


def run_pytest_on(test_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """pytest with the isolation plugin alone (the file is outside tests/, so no conftest)."""
    plugins = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "tests.helpers.isolation"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, str(test_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_guard_fails_a_run_that_touched_the_real_home(tmp_path):
    home, runtime = tmp_path / "person", tmp_path / "person-run"
    (home / ".local/share/keyrings").mkdir(parents=True)
    (home / ".local/share/keyrings/login.keyring").write_bytes(b"the person's keyring")
    env = persons_env(home, runtime)
    (tmp_path / "test_touches.py").write_text(TOUCHES)
    (tmp_path / "test_touches_nothing.py").write_text(TOUCHES_NOTHING)

    clean = run_pytest_on(tmp_path / "test_touches_nothing.py", env)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    dirty = run_pytest_on(tmp_path / "test_touches.py", env)
    assert dirty.returncode == 1, dirty.stdout + dirty.stderr
    assert "1 passed" in dirty.stdout  # the test itself passed: the guard failed the run
    for line in (
        f"created {home}/.config/convocations/config.toml",
        f"changed {home}/.local/share/keyrings/login.keyring",
        f"created {runtime}/convocations",
    ):
        assert line in dirty.stdout, dirty.stdout
    assert "run the tests again" in dirty.stdout


def test_a_tmpdir_too_long_for_the_tests_sockets_stops_the_run_saying_so(short_tmp):
    deep = short_tmp / ("x" * MAX_TEMPDIR)
    deep.mkdir()
    (short_tmp / "test_touches_nothing.py").write_text(TOUCHES_NOTHING)
    env = {**persons_env(short_tmp / "person", short_tmp / "prun"), "TMPDIR": str(deep)}
    done = run_pytest_on(short_tmp / "test_touches_nothing.py", env)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert f"The temporary directory {deep} is" in done.stderr and "Set TMPDIR to a shorter directory" in done.stderr


WRITES_LIKE_A_DAEMON = textwrap.dedent(
    """
    import os
    from pathlib import Path

    def test_writes_where_the_persons_daemon_does():
        home = Path(os.environ["CONVOCATIONS_TEST_REAL_HOME"])
        (home / ".config/convocations").mkdir(parents=True)
        (home / ".config/convocations/config.toml").write_text("http_port = 3001\\n")  # as their daemon may
        if os.environ.get("ALSO_UNITS"):  # which their daemon never writes
            (home / ".config/systemd/user").mkdir(parents=True)
            (home / ".config/systemd/user/x.service").write_text("")
    """
)
OWN_SECTION = "files of yours that your own convocationsd changed, most likely"
TESTS_SECTION = "files of the person running the tests were touched"


def test_a_running_daemon_of_the_persons_is_not_blamed_on_the_tests(short_tmp):
    """The person's convocationsd, running with their HOME (here on a socket of its own, so only its process
    shows it), is named for the changes it makes itself; a change it never makes still fails the run."""
    home, runtime = short_tmp / "person", short_tmp / "prun"
    d = start_daemon(short_tmp, HOME=str(home))
    try:
        (short_tmp / "test_like_daemon.py").write_text(WRITES_LIKE_A_DAEMON)
        done = run_pytest_on(short_tmp / "test_like_daemon.py", {**persons_env(home, runtime), "ALSO_UNITS": "1"})
    finally:
        d.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    own, _, tests = done.stdout.partition(TESTS_SECTION)
    assert OWN_SECTION in own and f"created {home}/.config/convocations/config.toml" in own, done.stdout
    assert f"your convocationsd (pid {d.proc.pid}) was running" in own and "stop it" in own, done.stdout
    assert f"created {home}/.config/systemd/user/x.service" in tests and "config.toml" not in tests, done.stdout


def test_the_socket_of_a_persons_daemon_is_enough_to_name_it(short_tmp):
    """systemd holds the socket and starts the daemon on the next connection, which may come mid-run."""
    home, runtime = short_tmp / "person", short_tmp / "prun"
    env = persons_env(home, runtime)
    (runtime / "convocations").mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as held:
        held.bind(str(runtime / "convocations" / "convocationsd.sock"))
        (short_tmp / "test_like_daemon.py").write_text(WRITES_LIKE_A_DAEMON)
        done = run_pytest_on(short_tmp / "test_like_daemon.py", env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert OWN_SECTION in done.stdout and TESTS_SECTION not in done.stdout, done.stdout
    assert f"the socket of your convocationsd, {runtime}/convocations/convocationsd.sock, was there" in done.stdout


@pytest.mark.keyring
def test_wrapper_leaves_a_login_keyring_with_another_password_alone(tmp_path):
    """The desktop case: the person's login keyring is locked with their own password. The keyring tests run
    through the wrapper pass (they used to fail with KeyringLocked), and the person's keyring files are byte for
    byte what they were."""
    if reason := missing_tools():
        pytest.skip(reason)
    home, runtime = tmp_path / "person", tmp_path / "person-run"
    env = persons_env(home, runtime)
    with gnome_keyring(env, "the person's own password") as session:
        store = "import keyring; keyring.set_password('mail', 'me', 'my mail password')"
        subprocess.run([sys.executable, "-c", store], env=session, check=True, capture_output=True, timeout=60)
    keyrings = home / ".local/share/keyrings"
    before = {p.name: p.read_bytes() for p in keyrings.iterdir()}
    assert "login.keyring" in before
    everything = snapshot(RealDirs.of(env).guarded())

    keyring_tests = ["-m", "keyring", "tests/integration/test_secretstore_contract.py"]
    done = subprocess.run(
        [str(WRAPPER), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *keyring_tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and "skipped" not in done.stdout, done.stdout[-3000:]
    assert {p.name: p.read_bytes() for p in keyrings.iterdir()} == before
    assert snapshot(RealDirs.of(env).guarded()) == everything
