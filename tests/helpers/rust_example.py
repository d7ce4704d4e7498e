"""Builds examples/rust where cargo runs, and finds what a build left, for tests/integration/test_examples.py.

    python3 -m tests.helpers.rust_example        (make rust-example; .ci/run does it as root)

CI's tests may run as an unprivileged user who cannot run root's cargo (rustup's, under /root, mode 0700).
So the build runs first as the user who has cargo and writes target/built.json beside the binaries: where
the `login` binary and the library's unit-test binary are, and a digest of the sources they came from. The
tests rebuild when cargo is theirs to run and otherwise take that build, unless the sources changed since.
Standard library only: it runs before the virtual environment exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

CRATE = Path(__file__).resolve().parents[2] / "examples" / "rust"
TARGET = CRATE / "target"
RECORD = TARGET / "built.json"


class Built(NamedTuple):
    login: Path
    unit_tests: Path

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Built:
        return cls(TARGET / record["login"], TARGET / record["unit_tests"])


class Cargo(NamedTuple):
    path: str
    env: dict[str, str]


def cargo() -> Cargo | None:
    """A cargo this user can run, and the environment it runs in; None if there is none.

    rustup's cargo finds its toolchains through HOME, which the tests move (tests/with-keyring.sh): so it is
    looked for in the real HOME too, and RUSTUP_HOME points there."""
    home = Path(os.environ.get("CONVOCATIONS_TEST_REAL_HOME") or os.path.expanduser("~"))
    found = shutil.which("cargo")
    if found is None and os.access(home / ".cargo" / "bin" / "cargo", os.X_OK):
        found = str(home / ".cargo" / "bin" / "cargo")  # not on PATH in a non-login shell, as CI's
    if found is None:
        return None
    env = dict(os.environ)
    if "RUSTUP_HOME" not in env and (home / ".rustup").is_dir():
        env["RUSTUP_HOME"] = str(home / ".rustup")
    try:
        works = subprocess.run([found, "--version"], env=env, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    return Cargo(found, env) if works else None


def sources_digest() -> str:
    files = [CRATE / "Cargo.toml", CRATE / "Cargo.lock", *sorted((CRATE / "src").rglob("*.rs"))]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(CRATE).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def build(cargo: Cargo) -> Built:
    """`cargo build --offline --locked` of the library, the binary and the unit tests, recorded in RECORD
    (paths relative to TARGET); raises CalledProcessError (cargo's messages in stderr) if it does not compile."""
    record = {"digest": sources_digest()}  # before cargo reads them
    done = subprocess.run(
        [
            cargo.path,
            "build",
            "--offline",
            "--locked",
            "--lib",
            "--bins",
            "--tests",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
            str(CRATE / "Cargo.toml"),
            "--target-dir",
            str(TARGET),
        ],
        env=cargo.env,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        target, is_test = message["target"], message["profile"]["test"]
        where = os.path.relpath(message["executable"], TARGET)  # relative: the tree may be moved or mounted
        if not is_test and target["name"] == "login":
            record["login"] = where
        elif is_test and "lib" in target["kind"]:
            record["unit_tests"] = where
    assert {"login", "unit_tests"} <= record.keys(), f"cargo built no login or unit tests:\n{done.stdout}"
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return Built.from_record(record)


def recorded() -> tuple[Built | None, str]:
    """What the last build made, if it was built from the sources as they are now; else None and why not."""
    try:
        record = json.loads(RECORD.read_text())
    except FileNotFoundError:
        return None, f"examples/rust was never built here ({RECORD} is missing)"
    if record.get("digest") != sources_digest():
        return None, f"examples/rust changed since it was last built ({RECORD})"
    return Built.from_record(record), ""


def main() -> int:
    found = cargo()
    if found is None:
        print("rust-example: no cargo that runs here (on PATH or in ~/.cargo/bin); examples/rust is not built")
        return 0
    started = time.monotonic()
    try:
        build(found)
    except subprocess.CalledProcessError as e:
        print(e.stderr, file=sys.stderr)
        print("rust-example: examples/rust does not build (cargo's messages above)", file=sys.stderr)
        return 1
    print(f"rust-example: built examples/rust with {found.path} in {time.monotonic() - started:.1f} s ({RECORD})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
