"""8. What storing the key costs per login: in the daemon's process, or in a helper process per call.

The daemon runs ``set`` (each login), ``get`` (the account refresh after a key change, ``secret.get``) and
``clear`` in a short-lived helper (store/helper.py) so that keyring, cryptography and tomlkit never stay in
its memory. This section measures both ways with the same store code: ``ConfiguredStore`` called in one
long-lived interpreter (what the daemon did before), and ``HelperStore`` (a child per call), each against
its own config.toml, local-encrypted (and the OS keyring when a Secret Service answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from .common import PY, cleanup_tmp, median, percentile, short_tmp
from .report import Section

# One interpreter doing `calls` set+get pairs in-process; prints its timings and RSS (KB) before and after.
IN_PROCESS = """
import json, sys, time
from pathlib import Path
from convocationsd.store.select import open_store
def rss():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])
config, backend, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = open_store(config, forced_backend=backend, keyring_timeout=30)
before, sets, gets = rss(), [], []
for i in range(calls):
    t = time.perf_counter(); store.set("sk-or-v1-" + f"{i:064x}"); sets.append(time.perf_counter() - t)
    t = time.perf_counter(); store.get(); gets.append(time.perf_counter() - t)
store.clear()
print(json.dumps({"sets": sets, "gets": gets, "before": before, "after": rss()}))
"""


def _keyring_available() -> bool:
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return False
    probe = "from convocationsd.store.keyring_backend import probe_keyring; print(probe_keyring()[0])"
    done = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() == "True"


def _in_process(tmp, backend: str, calls: int) -> dict:
    done = subprocess.run(
        [PY, "-c", IN_PROCESS, str(tmp / "a" / "config.toml"), backend, str(calls)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


def _helper(tmp, backend: str, calls: int, *, installed: bool) -> dict:
    """HelperStore calls; ``installed``: with .pyc files (a private PYTHONPYCACHEPREFIX, filled by a first call
    not counted), else as this checkout runs under PYTHONDONTWRITEBYTECODE=1 (the package compiled each call)."""
    from convocationsd.store.helper import HelperStore

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if installed:
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pyc")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    where = tmp / ("installed" if installed else "checkout") / "config.toml"
    store = HelperStore(where, forced_backend=backend, keyring_timeout=30, env=env)
    store.get()  # writes the .pyc files when installed
    sets, gets = [], []
    for i in range(calls):
        t = time.perf_counter()
        store.set("sk-or-v1-" + f"{i:064x}")
        sets.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.get()
        gets.append(time.perf_counter() - t)
    store.clear()
    return {"sets": sets, "gets": gets}


def _ms(values: list[float]) -> str:
    return f"{median(values) * 1000:.1f} / {percentile(values, 99) * 1000:.1f}"


def run(smoke: bool) -> Section:
    sec = Section("Secret store per login: in the daemon's process vs a helper process per call")
    calls = 5 if smoke else 40
    backends = ["local-encrypted"] + (["keyring"] if _keyring_available() else [])
    rows = []
    tmp = short_tmp()
    try:
        for backend in backends:
            inproc = _in_process(tmp, backend, calls)
            kept = (inproc["after"] - inproc["before"]) / 1024
            rows.append(
                [
                    backend,
                    "in-process",
                    f"{inproc['sets'][0] * 1000:.1f}",
                    _ms(inproc["sets"][1:]),
                    _ms(inproc["gets"][1:]),
                    f"{kept:.1f}",
                ]
            )
            for installed in (True, False):
                helper = _helper(tmp, backend, calls, installed=installed)
                where = "helper, as installed" if installed else "helper, PYTHONDONTWRITEBYTECODE=1"
                first = f"{helper['sets'][0] * 1000:.1f}"
                rows.append([backend, where, first, _ms(helper["sets"]), _ms(helper["gets"]), "0"])
                per_login = median(helper["sets"]) - median(inproc["sets"][1:])
                sec.check(
                    f"extra time per stored key, {where} ({backend})",
                    f"+{per_login * 1000:.0f} ms ({kept:.1f} MB kept out of the daemon)",
                    "reported",
                    None,
                )
    finally:
        cleanup_tmp(tmp)
    sec.body.append(__doc__.split("\n\n", 1)[1].replace("\n", " ").strip())
    sec.body.append("")
    sec.body.append(
        f"{calls} set+get pairs each way, one after the other. First `set`: the in-process one includes importing "
        "the backend's libraries. Then median / p99 in ms of the later calls; the helper's include starting an "
        'interpreter every time. "MB kept": the in-process interpreter\'s RSS after the calls minus before '
        "(what a long-lived daemon keeps for good)."
    )
    sec.body.append("")
    sec.table(["backend", "where", "first set ms", "set p50 / p99 ms", "get p50 / p99 ms", "MB kept"], rows)
    if "keyring" not in backends:
        sec.body.append("No Secret Service answered (run under `dbus-run-session -- tests/with-keyring.sh` for it).")
    return sec
