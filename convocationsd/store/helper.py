"""The daemon's secret store: ``status`` in-process, ``set``/``get``/``clear`` in a short-lived child.

The daemon lives for hours. keyring (with its backends), cryptography and tomlkit, once imported by the
first login, would stay in its memory for good: 8 MB with the local-encrypted backend, over 20 MB with the
OS keyring, more than all the rest of an idle daemon. So :class:`HelperStore` answers ``status`` itself
(config.toml read with the stdlib's tomllib) and runs every other call as ``python -m
convocationsd.store.helper``: the same ConfiguredStore convctl uses, in a process that answers and exits.

What crosses the pipes: one JSON request on stdin (the key, for ``set``: never in argv, which other users
can read) and one JSON reply on stdout: the result, or the error's class, message and hint, plus the log
records the call made, which the daemon logs as its own. A keyring call the child gave up on (a locked
keyring that nobody unlocked in time) dies with the child, so it cannot land in the keyring after the
daemon reported the fallback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convocationsd.core import errors
from convocationsd.core.errors import ConvError, SecretStoreError
from convocationsd.store.secrets import SecretStatus

log = logging.getLogger(__name__)

START_MARGIN = 30.0  # seconds beyond the keyring timeout: starting an interpreter on a busy machine
# The errors a store call raises, rebuilt by name in the daemon (anything else becomes SecretStoreError).
ERRORS = {cls.__name__: cls for cls in (ConvError, errors.ConfigError, SecretStoreError, errors.BackendUnavailable)}


class HelperStore:
    """The SecretStore protocol, each write or read of the key in a child process (see the module doc)."""

    def __init__(
        self,
        config_path: Path,
        *,
        forced_backend: str | None = None,
        keyring_timeout: float = 120.0,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        from convocationsd.store.select import ConfiguredStore

        self.config_path = Path(config_path)
        self.forced_backend = forced_backend
        self.keyring_timeout = keyring_timeout  # SIGHUP may change it: read for each call
        self.env = env
        self._reader = ConfiguredStore(self.config_path, forced_backend=forced_backend)  # refuses unknown backends

    def status(self) -> SecretStatus:
        return self._reader.status()

    def set(self, key: str) -> str:
        return self._call("set", key)

    def get(self) -> str | None:
        return self._call("get")

    def clear(self) -> bool:
        return self._call("clear")

    def _call(self, op: str, key: str | None = None) -> Any:
        request = {
            "op": op,
            "key": key,
            "config_path": str(self.config_path),
            "forced_backend": self.forced_backend,
            "keyring_timeout": self.keyring_timeout,
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        timeout = self.keyring_timeout + START_MARGIN
        try:
            done = subprocess.run(
                [sys.executable, "-m", __name__],
                input=json.dumps(request).encode(),
                capture_output=True,
                env=dict(self.env),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise errors.BackendUnavailable(
                f"The secret store did not answer within {timeout:g} s.", "Check that the OS keyring is unlocked."
            ) from None
        except OSError as e:
            raise SecretStoreError(
                f"Cannot start the secret-store helper ({e.strerror or e}).", "Check the convocationsd installation."
            ) from None
        try:
            reply = json.loads(done.stdout)
            records, result, error = reply["logs"], reply.get("result"), reply.get("error")
        except (ValueError, KeyError, TypeError):
            stderr = done.stderr.decode(errors="replace").strip()[-2000:]  # its last words, not a flood
            log.error("the secret-store helper exited with %s without an answer:\n%s", done.returncode, stderr)
            raise SecretStoreError("The secret-store helper failed.", "See the daemon's log, then try again.") from None
        for level, name, message in records:
            logging.getLogger(name).log(level, "%s", message)
        if error is not None:
            raise ERRORS.get(error["kind"], SecretStoreError)(error["message"], error["hint"])
        return result


# -- the child ---------------------------------------------------------------------------------------


class _Keep(logging.Handler):
    """Collects the child's log records, formatted (with any traceback), for the reply."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, self.format(record)))


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    keep = _Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    root.setLevel(request["log_level"])
    reply: dict[str, Any] = {}
    try:
        from convocationsd.store.select import open_store

        store = open_store(
            Path(request["config_path"]),
            forced_backend=request["forced_backend"],
            keyring_timeout=request["keyring_timeout"],
        )
        op = request["op"]
        if op == "set":
            reply["result"] = store.set(request["key"])
        elif op == "get":
            reply["result"] = store.get()
        else:
            reply["result"] = store.clear()
    except ConvError as e:
        reply["error"] = {"kind": type(e).__name__, "message": e.message, "hint": e.hint}
    except Exception:
        log.exception("the secret store failed")
        reply["error"] = {"kind": "", "message": "The secret store failed.", "hint": "See the daemon's log."}
    reply["logs"] = keep.records
    sys.stdout.write(json.dumps(reply))
    sys.stdout.flush()
    os._exit(0)  # no teardown: nothing is left to flush, and a keyring thread that timed out is simply dropped


if __name__ == "__main__":
    sys.exit(main())
