"""7. Cold start: the first `status` answer after socket activation, against `python -c pass` in the same run.

``systemd-socket-activate`` holds both named sockets, as the shipped .socket units do (ctl: the Unix socket;
http: 127.0.0.1 and ::1). The client connects, which makes the tool exec the daemon, sends `status` and
waits for the reply: the time runs from just before its connect to the reply's last byte. Cycles alternate
with `python -c pass` (spawn to exit) so that the machine's load hits both alike.

Two ways of running, each measured: as installed (every module has its .pyc: here they are made once, by
the warm-up cycles, in a private PYTHONPYCACHEPREFIX, so the checkout is left alone), and as this checkout
runs under PYTHONDONTWRITEBYTECODE=1 (the project's own modules compiled on every start; the standard
library and site-packages have their .pyc files either way).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from convocationsd.common.interpreter import module_command

from . import rawclient
from .common import PY, ROOT, bytecode_env, cleanup_tmp, daemon_env, free_port, median, short_tmp, track
from .report import Section

TARGET_RATIO = 3.0
CYCLES = {"smoke": (1, 2), "check": (3, 9), "full": (3, 15)}  # warm-up, counted


def _bare_start(env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([PY, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - t


def _first_status(tool: str, tmp: Path, env: dict[str, str], log) -> float:
    """One activation: the seconds from the client's connect to the reply of its `status`."""
    port = free_port()
    ctl = env["CONVOCATIONS_SOCKET"]
    Path(ctl).unlink(missing_ok=True)
    cmd = [tool, "-l", ctl, "-l", f"127.0.0.1:{port}", "-l", f"[::1]:{port}", "--fdname=ctl:http:http"]
    cmd += [f"-E{k}" for k in env]  # the tool passes its child only what -E names
    cmd += module_command(PY, "convocationsd")  # as the service units start it
    proc = track(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp)))
    try:
        deadline = time.monotonic() + 10
        while True:  # until the tool listens; the connection that succeeds is what starts the daemon
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("systemd-socket-activate did not listen")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            t = time.perf_counter()
            try:
                sock.connect(ctl)
                break
            except (FileNotFoundError, ConnectionRefusedError):  # not bound yet, or bound but not listening
                sock.close()
                time.sleep(0.005)
        reply = rawclient.call(sock, rawclient.STATUS_REQUEST, rawclient.line_reply)
        elapsed = time.perf_counter() - t
        sock.close()
        if b'"result"' not in reply:
            raise RuntimeError(f"status failed: {reply[:200]!r}")
        return elapsed
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the tool exec'd the daemon in place: this is the daemon
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(mode: str) -> Section:
    sec = Section("Cold start: first `status` after socket activation, against `python -c pass`")
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        sec.body.append("systemd-socket-activate is not installed (Debian: systemd); not measured.")
        sec.check("first `status` after activation", "not measured", f"<= {TARGET_RATIO:g}x", None)
        return sec
    warmup, cycles = CYCLES[mode]
    rows = []
    for installed in (True, False):
        tmp = short_tmp()
        (tmp / "run").mkdir(mode=0o700, parents=True)
        env = bytecode_env(daemon_env(tmp), tmp, installed=installed)
        firsts: list[float] = []
        bares: list[float] = []
        try:
            with open(tmp / "daemon.log", "wb") as log:
                for i in range(warmup + cycles):
                    bare = _bare_start(env)
                    first = _first_status(tool, tmp, env, log)
                    if i >= warmup:
                        bares.append(bare)
                        firsts.append(first)
        finally:
            cleanup_tmp(tmp)
        # Each activation against the bare start measured just before it; the median of those ratios.
        ratios = sorted(f / b for f, b in zip(firsts, bares, strict=True))
        ratio = median(ratios)
        label = "as installed (.pyc for every module)" if installed else "this checkout, PYTHONDONTWRITEBYTECODE=1"
        rows.append(
            [
                label,
                f"{median(firsts) * 1000:.0f} ({min(firsts) * 1000:.0f}-{max(firsts) * 1000:.0f})",
                f"{median(bares) * 1000:.0f} ({min(bares) * 1000:.0f}-{max(bares) * 1000:.0f})",
                f"**{ratio:.2f}x** ({ratios[0]:.2f}-{ratios[-1]:.2f})",
            ]
        )
        sec.check(
            f"first `status` after activation, {label}",
            f"{median(firsts) * 1000:.0f} ms = {ratio:.2f}x `python -c pass`",
            f"<= {TARGET_RATIO:g}x" if installed else "reported",
            ratio <= TARGET_RATIO if installed else None,
        )
    sec.body.append(" ".join(__doc__.split("\n\n", 1)[1].split()))
    sec.body.append("")
    sec.body.append(
        f"{cycles} cycles after {warmup} warm-up ones, each a fresh `systemd-socket-activate` (cwd and config in "
        f"a private directory). Median (range) in ms; the ratio is the median of the per-cycle ratios."
    )
    sec.body.append("")
    sec.table(["run as", "connect -> `status` reply ms", "`python -c pass` ms", "ratio"], rows)
    sec.notes.append(f"Interpreter: `{PY}`; the checkout is `{ROOT}`.")
    return sec
