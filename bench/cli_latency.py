"""1. CLI latency: `convctl status` (and --help, secret status) against bare interpreter start, same run."""

from __future__ import annotations

import subprocess
import time

from .common import BIN, PY, cleanup_tmp, median, short_tmp, start_daemon
from .report import Section

TARGET_RATIO = 2.5
FORBIDDEN = ("aiohttp", "keyring", "cryptography")
WATCHED = ("asyncio", "typing", "platformdirs", "tomlkit", "shutil", "pathlib")

# The reference a well-built client is compared with: one raw-socket call, no argument parsing.
RAW_CALL = (
    "import os,socket;s=socket.socket(socket.AF_UNIX);s.connect(os.environ['CONVOCATIONS_SOCKET']);"
    's.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"status"}\\n\');s.recv(65536)'
)


def imported_modules(cmd: list[str], env: dict[str, str]) -> set[str]:
    done = subprocess.run([PY, "-X", "importtime", *cmd], env=env, capture_output=True, text=True, timeout=60)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


NO_KEY = 1  # `convctl status` and `secret status` answer 1 when no key is stored, as here: an answer all the same


def top(names: set[str], root: str) -> bool:
    return any(n == root or n.startswith(root + ".") for n in names)


def run(smoke: bool) -> Section:
    sec = Section("CLI latency: `convctl` against bare interpreter start")
    tmp = short_tmp()
    daemon = None
    try:
        daemon = start_daemon(tmp)
        convctl = str(BIN / "convctl")
        cmds = {
            "python -c pass": [PY, "-c", "pass"],
            'python -c "import asyncio"': [PY, "-c", "import asyncio"],
            "raw socket: one `status` call": [PY, "-c", RAW_CALL],
            "convctl status": [convctl, "status"],
            "convctl --help": [convctl, "--help"],
            "convctl secret status": [convctl, "secret", "status"],
        }
        runs = 1 if smoke else 25
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(runs):  # interleaved, so that load changes hit every command alike
            for name, cmd in cmds.items():
                t = time.perf_counter()
                done = subprocess.run(cmd, env=daemon.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                times[name].append(time.perf_counter() - t)
                if done.returncode not in (0, NO_KEY):
                    raise RuntimeError(f"{name} failed: {done.stderr.decode(errors='replace')}")
        base = median(times["python -c pass"])
        rows = []
        for name, ts in times.items():
            m = median(ts)
            rows.append([name, f"{m * 1000:.1f}", f"{min(ts) * 1000:.1f}", f"{m / base:.2f}x"])
        sec.body.append(
            f"Wall time of each command as a child process, median of {runs} interleaved runs, all on "
            f"`{PY}` (the venv's interpreter; `convctl` is its console script)."
        )
        sec.body.append("")
        sec.table(["command", "median ms", "best ms", "vs `python -c pass`"], rows)
        for name in ("convctl status", "convctl --help", "convctl secret status"):
            ratio = median(times[name]) / base
            sec.check(
                f"`{name}` wall time",
                f"{median(times[name]) * 1000:.1f} ms = {ratio:.2f}x bare start",
                f"<= {TARGET_RATIO}x `python -c pass`",
                ratio <= TARGET_RATIO,
            )

        # What they import (python -X importtime), with the daemon running.
        rows = []
        for label, args in (
            ("convctl status", ["status"]),
            ("convctl --help", ["--help"]),
            ("convctl secret status", ["secret", "status"]),
        ):
            names = imported_modules([convctl, *args], daemon.env)
            bad = [m for m in FORBIDDEN if top(names, m)]
            rows.append(
                [
                    label,
                    str(len(names)),
                    ", ".join(bad) or "none",
                    ", ".join(m for m in WATCHED if top(names, m)) or "none",
                ]
            )
            sec.check(f"`{label}` imports no {'/'.join(FORBIDDEN)}", ", ".join(bad) or "none of them", "none", not bad)
        stopped_env = dict(daemon.env, CONVOCATIONS_SOCKET=str(tmp / "nobody.sock"))
        names = imported_modules([convctl, "secret", "status"], stopped_env)
        rows.append(
            [
                "convctl secret status, no daemon (reads the files itself; informational)",
                str(len(names)),
                ", ".join(m for m in FORBIDDEN if top(names, m)) or "none",
                ", ".join(m for m in WATCHED if top(names, m)) or "none",
            ]
        )
        sec.body.append("Modules imported (`python -X importtime`), daemon running:")
        sec.body.append("")
        sec.table(["command", "modules", "aiohttp/keyring/cryptography", "also imported (watched list)"], rows)
        sec.body.append(
            "`pathlib` (and what it pulls in) is imported by the editable install's path hook in "
            "`site`, so `python -c pass` pays for it too in this venv."
        )
    finally:
        if daemon is not None:
            daemon.stop()
        cleanup_tmp(tmp)
    return sec
