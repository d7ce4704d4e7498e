"""Test helper: rewrites config.toml through configfile.update in a separate process.

secret_config_writer.py PATH count KEY N   increment integer KEY N times
secret_config_writer.py PATH loop SIZE     forever: n += 1 and payload = f"<n>;" * SIZE, printing n after each write
"""

from __future__ import annotations

import sys
from pathlib import Path

from convocationsd.store import configfile


def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "count":
        key, times = sys.argv[3], int(sys.argv[4])

        def bump(doc):
            doc[key] = int(doc.get(key, 0)) + 1

        for _ in range(times):
            configfile.update(path, bump)
    elif mode == "loop":
        size = int(sys.argv[3])
        state = {}

        def step(doc):
            n = int(doc.get("n", 0)) + 1
            doc["n"] = n
            doc["payload"] = f"{n};" * size
            state["n"] = n

        while True:
            configfile.update(path, step)
            print(state["n"], flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
