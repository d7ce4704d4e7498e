"""Shared pieces of the benchmarks: the machine, statistics, a daemon process with READY timing, the fake.

Everything here talks to 127.0.0.1, ::1 or Unix sockets under a private directory in $TMPDIR, and every process
it starts is stopped by the section that started it (or by ``Daemon.stop`` / the atexit hook).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convocationsd.common.interpreter import module_command
from convocationsd.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable  # the venv's interpreter when run as `.venv/bin/python -m bench`
BIN = Path(PY).parent

_children: list[subprocess.Popen] = []


def _reap_children() -> None:
    for proc in _children:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


atexit.register(_reap_children)


def track(proc: subprocess.Popen) -> subprocess.Popen:
    """Remember a child so that an aborted run never leaves it behind."""
    _children.append(proc)
    return proc


# -- machine and statistics --------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({PY})",
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _os_name(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return percentile(values, 50)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def raise_nofile(wanted: int = 8192) -> tuple[int, int]:
    """Raise this process's (and so its children's) open-file limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[str]:
    """Runs the block with this process, and so every process it starts, on one core (``cpu``; None: as it
    was). On this 2-core machine a round trip between two processes on different cores swings about 3x from
    run to run (wake-ups across cores); on one core the same ratios repeat within about +-0.05. Yields how
    the block ran, for the report."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield "not pinned"
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield f"pinned to CPU {cpu} (this process and every process it starts)"
    finally:
        os.sched_setaffinity(0, before)


def settle(seconds: float, smoke: bool) -> float:
    """How long to let the daemon settle before a reading: a smoke run's readings mean nothing, so it barely waits."""
    return 0.05 if smoke else seconds


def short_tmp() -> Path:
    """A short private directory in $TMPDIR (AF_UNIX paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="cvb"))


# -- the daemon --------------------------------------------------------------------------------------


def daemon_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """The environment of an isolated daemon (and of convctl talking to it), like tests/conftest.py."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOCATIONS_", "RCONV_", "LISTEN_", "NOTIFY_"))}
    env.update(
        XDG_CONFIG_HOME=str(tmp / "cfg"),
        XDG_RUNTIME_DIR=str(tmp / "run"),
        CONVOCATIONS_SOCKET=str(tmp / "run" / "d.sock"),
        CONVOCATIONS_SECRET_BACKEND="local-encrypted",
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)  # no desktop bus: the daemon must not wait on one
    env.update(overrides)
    return env


class NotifySocket:
    """A datagram socket playing the service manager's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_for(self, word: str, timeout: float) -> float | None:
        """monotonic time at which a datagram containing ``word`` arrived, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return None
            if word.encode() in data.split(b"\n"):
                return time.monotonic()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Daemon:
    proc: subprocess.Popen
    tmp: Path
    env: dict[str, str]
    socket: Path
    port: int
    startup: float  # seconds from spawn to READY=1
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_daemon(
    tmp: Path | None = None,
    *,
    openrouter_url: str = "http://127.0.0.1:9",
    log_level: str = "info",
    cwd: Path = ROOT,
    **env_overrides: str,
) -> Daemon:
    """Starts ``python -m convocationsd`` and waits for its READY=1 datagram (raises if none in 30 s)."""
    tmp = tmp or short_tmp()
    port = free_port()
    notify = NotifySocket(tmp / "n.sock")
    env = daemon_env(tmp, RCONV_HTTP_PORT=str(port), CONVOCATIONS_OPENROUTER_URL=openrouter_url, **env_overrides)
    env["NOTIFY_SOCKET"] = str(notify.path)
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        t0 = time.monotonic()
        proc = track(
            subprocess.Popen(
                [*module_command(PY, "convocationsd"), "--log-level", log_level],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=str(cwd),
            )
        )
    try:
        ready = notify.wait_for("READY=1", 30.0)
    finally:
        notify.close()
    if ready is None:
        proc.kill()
        proc.wait()
        raise RuntimeError("the daemon did not send READY=1 within 30 s:\n" + log_path.read_text(errors="replace"))
    env.pop("NOTIFY_SOCKET")
    return Daemon(proc, tmp, env, Path(env["CONVOCATIONS_SOCKET"]), port, ready - t0, log_path)


BYTECODE_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")


def bytecode_env(env: dict[str, str], tmp: Path, *, installed: bool) -> dict[str, str]:
    """``env`` to run as installed (every module has its .pyc, here made once in a private
    PYTHONPYCACHEPREFIX so the checkout is left alone) or as this checkout runs under
    PYTHONDONTWRITEBYTECODE=1 (the project's modules compiled on every start)."""
    env = {k: v for k, v in env.items() if k not in BYTECODE_ENV}
    if installed:
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pyc")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


KEY = "sk-or-v1-" + "0" * 64  # made up: the daemon's OpenRouter is unreachable in the bench, so never checked


def store_key(daemon: Daemon) -> None:
    """Stores a key through the daemon, as a person who uses convctl has one, and waits until `status` shows
    the account (the daemon asks OpenRouter about a new key in the background): the steady state."""
    subprocess.run(
        [str(BIN / "convctl"), "secret", "set-openrouter-key", "--no-verify"],
        input=KEY + "\n",
        env=daemon.env,
        text=True,
        capture_output=True,
        check=True,
        timeout=60,
    )
    from . import rawclient

    sock = rawclient.connect(str(daemon.socket))
    try:
        deadline = time.monotonic() + 30
        while b'"account":null' in rawclient.call(sock, rawclient.STATUS_REQUEST, rawclient.line_reply):
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not show the account of the stored key within 30 s")
            time.sleep(0.05)
    finally:
        sock.close()


def cleanup_tmp(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
