"""docs/protocol.md's "Finding the socket", written here from the document's steps, gives the path that the
daemon and convctl use (common.paths.socket_path), each computed in a fresh process with the same
environment, as a frontend would start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets")


def documented(env: dict[str, str]) -> Path:
    """The steps of docs/protocol.md, literally."""
    tail = Path("convocations") / "convocationsd.sock"
    if env.get("CONVOCATIONS_SOCKET"):
        return Path(env["CONVOCATIONS_SOCKET"])
    config = Path(env["CONVOCATIONS_CONFIG"]) if env.get("CONVOCATIONS_CONFIG") else None
    if config is None:
        xdg_config = env.get("XDG_CONFIG_HOME", "")
        home_config = Path(env["HOME"]) / ("Library/Application Support" if sys.platform == "darwin" else ".config")
        config = (Path(xdg_config) if os.path.isabs(xdg_config) else home_config) / "convocations" / "config.toml"
    if config.exists():
        socket = tomllib.loads(config.read_text()).get("socket")
        if socket:
            return Path(socket).expanduser()
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return Path(xdg) / tail
    if sys.platform == "darwin":
        return Path(env["HOME"]) / "Library" / "Caches" / "TemporaryItems" / tail
    uid = os.geteuid()
    run_user = {"freebsd": "/var/run/user", "netbsd": "/var/run/user", "openbsd": "/tmp/run/user"}
    base = Path(next((v for k, v in run_user.items() if sys.platform.startswith(k)), "/run/user")) / str(uid)
    try:
        st = os.lstat(base)
        private = stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700
    except OSError:
        private = False
    if private:
        return base / tail
    for tmp in [*(env.get(k, "") for k in ("TMPDIR", "TEMP", "TMP")), "/tmp", "/var/tmp", "/usr/tmp"]:
        if os.path.isabs(tmp) and os.path.isdir(tmp) and os.access(tmp, os.W_OK):
            return Path(tmp) / f"runtime-{uid}" / tail
    raise AssertionError("no temporary directory")


def computed(env: dict[str, str]) -> Path:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from convocationsd.common import paths; print(paths.socket_path(os.environ))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(done.stdout.strip())


def environment(tmp_path: Path, **values: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "PYTHONPATH", "LANG")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["TMPDIR"] = str(tmp_path)  # the fallback's first choice, so nothing outside the test is named
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")  # no config.toml of the person's is read
    env.update(values)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize(
    "values",
    [
        {"CONVOCATIONS_SOCKET": "/somewhere/else.sock", "XDG_RUNTIME_DIR": "/run/user/4242"},
        {"CONVOCATIONS_SOCKET": "", "XDG_RUNTIME_DIR": "/run/user/4242"},
        {"XDG_RUNTIME_DIR": "/run/user/4242"},
        {"XDG_RUNTIME_DIR": "relative/dir"},
        {},
    ],
    ids=["explicit", "empty-explicit", "xdg", "relative-xdg", "neither"],
)
def test_the_documented_steps_give_the_daemons_path(tmp_path, values):
    env = environment(tmp_path, **values)
    assert computed(env) == documented(env)


@pytest.mark.parametrize(
    "values",
    [
        {"XDG_RUNTIME_DIR": "/run/user/4242"},
        {"XDG_RUNTIME_DIR": "/run/user/4242", "CONVOCATIONS_SOCKET": "/somewhere/else.sock"},
        {"XDG_RUNTIME_DIR": "/run/user/4242", "CONVOCATIONS_CONFIG": "{tmp}/mine.toml"},
    ],
    ids=["config", "explicit-over-config", "config-variable"],
)
def test_a_socket_named_in_config_toml_is_found_by_the_documented_steps(tmp_path, values):
    for config in (tmp_path / "cfg" / "convocations" / "config.toml", tmp_path / "mine.toml"):
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f'http_port = 3001\nsocket = "{tmp_path}/{config.stem}.sock"\n')
    env = environment(tmp_path, **{k: v.format(tmp=tmp_path) for k, v in values.items()})
    assert computed(env) == documented(env)
    assert computed(env) != Path("/run/user/4242/convocations/convocationsd.sock")


def test_the_fallback_uses_tmpdir_when_there_is_no_private_run_user(tmp_path):
    if sys.platform == "darwin" or documented(environment(tmp_path)) != tmp_path / f"runtime-{os.geteuid()}" / (
        "convocations/convocationsd.sock"
    ):
        pytest.skip("this machine has a private /run/user/<uid>: step 3 applies")
    env = environment(tmp_path)
    assert computed(env) == tmp_path / f"runtime-{os.geteuid()}" / "convocations" / "convocationsd.sock"
