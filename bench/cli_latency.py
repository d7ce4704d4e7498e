"""1. CLI latency: `convctl status`, `convctl exec` (and --help, secret status) against bare interpreter start,
same run, with a key stored, every process pinned to one core (bench/__main__)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .common import BIN, PY, bytecode_env, cleanup_tmp, median, short_tmp, start_daemon, store_key
from .report import Section

TARGETS = {  # command -> its target, as a multiple of `python -c pass`
    "convctl status": 1.5,
    "convctl exec -- true": 1.5,
    "convctl exec -- true, no daemon": 2.5,
    "convctl --help": 2.5,
    "convctl secret status": 2.5,
}
RUNS = {"smoke": 1, "check": 11, "full": 25}
CHECKOUT = ", PYTHONDONTWRITEBYTECODE=1"  # the rows run as this checkout runs, compiling the project's modules
FORBIDDEN = ("aiohttp", "keyring", "cryptography")
WATCHED = ("asyncio", "typing", "platformdirs", "tomlkit", "shutil", "pathlib", "socket", "locale")

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


def run(mode: str) -> Section:
    sec = Section("CLI latency: `convctl` against bare interpreter start")
    tmp = short_tmp()
    daemon = None
    try:
        daemon = start_daemon(tmp)
        store_key(daemon)
        installed = bytecode_env(daemon.env, tmp, installed=True)
        no_daemon = dict(installed, CONVOCATIONS_SOCKET=str(tmp / "nobody.sock"))
        checkout = bytecode_env(daemon.env, tmp, installed=False)
        convctl = str(BIN / "convctl")
        cmds: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([PY, "-c", "pass"], installed),
            'python -c "import asyncio"': ([PY, "-c", "import asyncio"], installed),
            "raw socket: one `status` call": ([PY, "-c", RAW_CALL], installed),
            "convctl status": ([convctl, "status"], installed),
            "convctl exec -- true": ([convctl, "exec", "--", "true"], installed),
            "convctl exec -- true, no daemon": ([convctl, "exec", "--", "true"], no_daemon),
            "convctl --help": ([convctl, "--help"], installed),
            "convctl secret status": ([convctl, "secret", "status"], installed),
            f"python -c pass{CHECKOUT}": ([PY, "-c", "pass"], checkout),
            f"convctl status{CHECKOUT}": ([convctl, "status"], checkout),
        }
        for cmd, env in cmds.values():  # warm-up, not counted: writes the .pyc files of the installed runs
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        runs = RUNS[mode]
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(runs):  # interleaved, so that load changes hit every command alike
            for name, (cmd, env) in cmds.items():
                t = time.perf_counter()
                done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                times[name].append(time.perf_counter() - t)
                if done.returncode not in (0, NO_KEY):
                    raise RuntimeError(f"{name} failed: {done.stderr.decode(errors='replace')}")
        base = median(times["python -c pass"])
        base_checkout = median(times[f"python -c pass{CHECKOUT}"])
        rows = []
        for name, ts in times.items():
            ref = base_checkout if name.endswith(CHECKOUT) else base
            rows.append([name, f"{median(ts) * 1000:.1f}", f"{min(ts) * 1000:.1f}", f"{median(ts) / ref:.2f}x"])
        sec.body.append(
            f"Wall time of each command as a child process, median of {runs} interleaved runs, all on `{PY}` "
            "(the venv's interpreter; `convctl` is its console script), with a key stored (local-encrypted) and "
            "the daemon's account check done. As installed: every module has its .pyc (made once by a "
            "warm-up run, in a private PYTHONPYCACHEPREFIX); the last two rows compile the project's modules on "
            "every start, as this checkout runs under PYTHONDONTWRITEBYTECODE=1, and are compared with "
            "`python -c pass` run the same way. `no daemon`: CONVOCATIONS_SOCKET names a socket nobody listens "
            "on, so convctl reads the key from the files itself (and loads cryptography)."
        )
        sec.body.append("")
        sec.table(["command", "median ms", "best ms", "vs `python -c pass`"], rows)
        for name, target in TARGETS.items():
            ratio = median(times[name]) / base
            sec.check(
                f"`{name}` wall time",
                f"{median(times[name]) * 1000:.1f} ms = {ratio:.2f}x bare start",
                f"<= {target}x `python -c pass`",
                ratio <= target,
            )
        _imports(sec, convctl, installed, no_daemon)
    finally:
        if daemon is not None:
            daemon.stop()
        cleanup_tmp(tmp)
    return sec


def _imports(sec: Section, convctl: str, env: dict[str, str], no_daemon: dict[str, str]) -> None:
    """What the commands import (python -X importtime), with the daemon running."""
    rows = []
    for label, args in (
        ("convctl status", ["status"]),
        ("convctl --help", ["--help"]),
        ("convctl secret status", ["secret", "status"]),
    ):
        names = imported_modules([convctl, *args], env)
        bad = [m for m in FORBIDDEN if top(names, m)]
        rows.append(
            [label, str(len(names)), ", ".join(bad) or "none", ", ".join(m for m in WATCHED if top(names, m)) or "none"]
        )
        sec.check(f"`{label}` imports no {'/'.join(FORBIDDEN)}", ", ".join(bad) or "none of them", "none", not bad)
    names = imported_modules([convctl, "secret", "status"], no_daemon)
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
        f"`site`, so `python -c pass` pays for it too in this venv ({Path(PY).parent.parent})."
    )
