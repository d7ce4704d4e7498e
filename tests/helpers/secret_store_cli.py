"""Test helper: one SecretStore operation in a fresh process, so a test controls its session bus.

    secret_store_cli.py set [TIMEOUT]   reads the key from stdin, stores it, prints JSON {backend, status, elapsed}
    secret_store_cli.py status          prints JSON {status, modules} (modules: heavy imports that happened)

Logs go to stderr at DEBUG (keyring's and D-Bus libraries' included) so tests can search them for the key.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from convocationsd.common import paths
from convocationsd.store.configured import open_store


def main() -> None:
    action = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 120.0
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    store = open_store(
        paths.config_path(),
        forced_backend=os.environ.get("CONVOCATIONS_SECRET_BACKEND") or None,
        keyring_timeout=timeout,
    )
    if action == "set":
        key = sys.stdin.readline().rstrip("\n")
        start = time.monotonic()
        backend = store.set(key)
        elapsed = time.monotonic() - start
        print(json.dumps({"backend": backend, "status": store.status().to_dict(), "elapsed": elapsed}))
    elif action == "status":
        status = store.status().to_dict()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("keyring", "cryptography", "tomlkit"))
        print(json.dumps({"status": status, "modules": heavy}))
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
