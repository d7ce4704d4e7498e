"""docs/protocol.md's "Finding the socket", written here from the document's steps, gives the path that the
daemon and convctl use (common.paths.socket_path), each computed in a fresh process with the same
environment, as a frontend would start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets")


def documented(env: dict[str, str]) -> Path:
    """The steps of docs/protocol.md, literally."""
    tail = Path("convocations") / "convocationsd.sock"
    if env.get("CONVOCATIONS_SOCKET"):
        return Path(env["CONVOCATIONS_SOCKET"])
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


def test_the_fallback_uses_tmpdir_when_there_is_no_private_run_user(tmp_path):
    if sys.platform == "darwin" or documented(environment(tmp_path)) != tmp_path / f"runtime-{os.geteuid()}" / (
        "convocations/convocationsd.sock"
    ):
        pytest.skip("this machine has a private /run/user/<uid>: step 3 applies")
    env = environment(tmp_path)
    assert computed(env) == tmp_path / f"runtime-{os.geteuid()}" / "convocations" / "convocationsd.sock"
