"""8. What storing the key costs per login: in the daemon's process, or in its secret-store helper.

The daemon hands ``set`` (each login), ``get`` (the account refresh after a key change, ``secret.get``) and
``clear`` to a child process (store/helper.py) that serves the calls of a burst and is let go a few seconds
after the last one, so that keyring, cryptography and tomlkit never stay in the daemon's memory. This section
measures the options with the same store code, each against its own config.toml: ``ConfiguredStore`` called
in one long-lived interpreter (what the daemon did before), the helper with a new child for every call (a
single login after a quiet spell), and the helper's child kept between calls (a burst).
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
from convocationsd.store.configured import open_store
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


def _helper(tmp, backend: str, calls: int, *, installed: bool, new_child: bool) -> dict:
    """HelperStore calls. ``installed``: with .pyc files (a private PYTHONPYCACHEPREFIX, filled by a first call
    not counted), else as this checkout runs under PYTHONDONTWRITEBYTECODE=1 (the package compiled by every
    child). ``new_child``: the child is let go before each call, so each one starts a new child."""
    from convocationsd.store.helper import HelperStore

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if installed:
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pyc")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    store = HelperStore(tmp / f"h{installed:d}{new_child:d}" / "config.toml", forced_backend=backend, env=env)
    store.get()  # writes the .pyc files when installed
    sets, gets = [], []
    for i in range(calls):
        for op, times in (("set", sets), ("get", gets)):
            if new_child:
                store.close()
            t = time.perf_counter()
            store.set("sk-or-v1-" + f"{i:064x}") if op == "set" else store.get()
            times.append(time.perf_counter() - t)
    store.clear()
    store.close()
    return {"sets": sets, "gets": gets}


def _ms(values: list[float]) -> str:
    return f"{median(values) * 1000:.1f} / {percentile(values, 99) * 1000:.1f}"


def run(smoke: bool) -> Section:
    sec = Section("Secret store per login: in the daemon's process vs its helper process")
    calls = 2 if smoke else 30  # 2: the in-process times leave out the first call
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
                    "in-process (after the first call)",
                    _ms(inproc["sets"][1:]),
                    _ms(inproc["gets"][1:]),
                    f"{kept:.1f}",
                ]
            )
            for new_child, installed, label in (
                (True, True, "helper, a new child per call, as installed"),
                (True, False, "helper, a new child per call, PYTHONDONTWRITEBYTECODE=1"),
                (False, True, "helper, its child kept (a burst), as installed"),
            ):
                helper = _helper(tmp, backend, calls, installed=installed, new_child=new_child)
                rows.append([backend, label, _ms(helper["sets"]), _ms(helper["gets"]), "0"])
                if new_child and installed:
                    extra = median(helper["sets"]) - median(inproc["sets"][1:])
                    sec.check(
                        f"a login's key stored by a new helper child vs in-process ({backend})",
                        f"+{extra * 1000:.0f} ms ({kept:.1f} MB kept out of the daemon)",
                        "reported",
                        None,
                    )
    finally:
        cleanup_tmp(tmp)
    sec.body.append(" ".join(__doc__.split("\n\n", 1)[1].split()))
    sec.body.append("")
    sec.body.append(
        f'{calls} set+get pairs each way, one after the other; median / p99 in ms. "MB kept": the in-process '
        "interpreter's RSS after the calls minus before, which a long-lived daemon keeps for good; its first call, "
        "which imports the libraries, is left out of the times."
    )
    sec.body.append("")
    sec.table(["backend", "where", "set p50 / p99 ms", "get p50 / p99 ms", "MB kept"], rows)
    if "keyring" not in backends:
        sec.body.append("No Secret Service answered (run under `dbus-run-session -- tests/with-keyring.sh` for it).")
    return sec
