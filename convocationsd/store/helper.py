"""The daemon's secret store: ``status`` in-process, ``set``/``get``/``clear`` in a short-lived child.

The daemon lives for hours. keyring (with its backends), cryptography and tomlkit, once imported by the
first login, would stay in its memory for good: 8 MB with the local-encrypted backend, over 20 MB with the
OS keyring, more than all the rest of an idle daemon. So :class:`HelperStore` answers ``status`` itself
(config.toml read with the stdlib's tomllib) and hands every other call to ``python -P -m
convocationsd.store.helper``: the same ConfiguredStore convctl uses, in a child that serves the calls of
one burst (a login's ``set``, then the account refresh's ``get``) until the daemon lets it go, ``LINGER``
seconds after the last call, taking those libraries with it. The next call starts a new one (about 0.1 s,
see bench/RESULTS.md).

What crosses the pipes: one JSON line per call on stdin (the key, for ``set``: never in argv, which other
users can read) and one JSON line back on stdout: the result, or the error's class, message and hint, plus
the log records the call made, which the daemon logs as its own, and how the last ``set`` went (``last_store``). The child's stderr is the daemon's. A
keyring call the child gave up on (a locked keyring that nobody unlocked in time) dies with the child at
the latest, so it cannot land in the keyring long after the daemon reported the fallback.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import sys
import threading
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from convocationsd.common.interpreter import module_command
from convocationsd.core import errors
from convocationsd.core.errors import ConvError, SecretStoreError
from convocationsd.store.keyring_backend import KeyringMissing
from convocationsd.store.secrets import SecretStatus, StoreOutcome

if TYPE_CHECKING:
    from convocationsd.common.settings import Settings

log = logging.getLogger(__name__)

LINGER = 10.0  # seconds the child is kept for the next call of a burst
RETIRE_WAIT = 5.0  # seconds a retired child gets to exit before it is killed
START_MARGIN = 30.0  # seconds beyond the keyring timeout: starting an interpreter on a busy machine
# The errors a store call raises, rebuilt by name in the daemon (anything else becomes SecretStoreError).
ERRORS = {
    errors.kind_of(cls): cls
    for cls in (ConvError, errors.ConfigError, SecretStoreError, errors.BackendUnavailable, KeyringMissing)
}
FAILED = ("The secret-store helper failed.", "See the daemon's log, then try again.")


class Op(StrEnum):
    """The calls the daemon sends its helper (``"op"`` of each line), the only ones the helper serves."""

    SET = "set"
    GET = "get"
    CLEAR = "clear"


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
        from convocationsd.store.configured import ConfiguredStore

        self.config_path = Path(config_path)
        self.forced_backend = forced_backend
        self.keyring_timeout = keyring_timeout  # a reload may change it: sent with each call
        self.env = env
        self._reader = ConfiguredStore(self.config_path, forced_backend=forced_backend)  # refuses unknown backends
        self._lock = threading.Lock()  # one call at a time on the pipes
        self._child: Any = None  # the running child (subprocess.Popen), if any
        self._calls = 0  # so that a retire timer armed before the latest call does nothing
        self._retire_timer: threading.Timer | None = None
        self.last_store: StoreOutcome | None = None  # how the child's last ``set`` went, for `status`

    def apply(self, settings: Settings) -> None:
        """A reload's settings: how long the keyring may take (the backend waits for a restart)."""
        self.keyring_timeout = settings.keyring_timeout_seconds

    def status(self) -> SecretStatus:
        return self._reader.status()

    def set(self, key: str) -> str:
        return cast(str, self._call(Op.SET, key))  # _call's results are the child's JSON

    def get(self) -> str | None:
        return cast("str | None", self._call(Op.GET))

    def clear(self) -> bool:
        return cast(bool, self._call(Op.CLEAR))

    def close(self) -> None:
        """Lets the child go now rather than after LINGER seconds, and ends the timer that would have (the
        daemon stops). A call in progress finishes first: it may be storing a login's key."""
        with self._lock:
            timer = self._retire_timer
            self._retire()
        if timer is not None:  # joined outside the lock, which a timer that has just fired is waiting for
            timer.join()

    def _call(self, op: Op, key: str | None = None) -> Any:
        request = {
            "op": op,
            "key": key,
            "keyring_timeout": self.keyring_timeout,
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        with self._lock:
            if self._retire_timer is not None:
                self._retire_timer.cancel()
            answer = self._exchange(json.dumps(request).encode() + b"\n")
            self._calls += 1
            self._retire_timer = threading.Timer(LINGER, self._linger_over, args=(self._calls,))
            self._retire_timer.daemon = True  # close() ends it; a store nobody closes must not hold up an exit
            self._retire_timer.start()
        try:
            reply = json.loads(answer)
            for level, name, message in reply["logs"]:
                logging.getLogger(name).log(level, "%s", message)
            result, error = reply.get("result"), reply.get("error")
            if reply.get("last_store"):
                self.last_store = StoreOutcome(**reply["last_store"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("the secret-store helper sent an unreadable answer: %.100r", answer)
            raise SecretStoreError(*FAILED) from None
        if error is not None:
            raise ERRORS.get(error["kind"], SecretStoreError)(error["message"], error["hint"])
        return result

    def _exchange(self, line: bytes) -> bytes:
        """Sends one call to the child (started if none runs) and returns its answer line. A child that did
        not answer, for whatever reason (a timeout, its exit, an error here), is ended before this returns:
        the next call starts a clean one, never reading a late answer meant for this call."""
        import subprocess

        if self._child is None:
            try:
                self._child = subprocess.Popen(
                    [
                        *module_command(sys.executable, __name__),
                        str(self.config_path),
                        self.forced_backend or "",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=dict(self.env),
                )
            except OSError as e:
                raise SecretStoreError(
                    f"Cannot start the secret-store helper ({e.strerror or e}).",
                    "Check the convocationsd installation.",
                ) from None
        child = self._child
        timeout = self.keyring_timeout + START_MARGIN
        answer: bytes | None = b""
        try:
            child.stdin.write(line)
            child.stdin.flush()
            answer = _line_within(child.stdout, timeout)
        except BrokenPipeError:
            answer = b""
        finally:
            if not answer:  # also when something above raised
                self._child = None
                child.kill()
                status = child.wait()
        if answer:
            return answer
        if answer is None:
            raise errors.BackendUnavailable(
                f"The secret store did not answer within {timeout:g} s.", "Check that the OS keyring is unlocked."
            )
        log.error("the secret-store helper exited with %s without answering (its output is above)", status)
        raise SecretStoreError(*FAILED)

    def _linger_over(self, calls: int) -> None:
        with self._lock:
            if calls == self._calls:  # no call since this timer was armed
                self._retire()

    def _retire(self) -> None:
        """Ends the child (under the lock): it sees the end of its input and exits."""
        if self._retire_timer is not None:
            self._retire_timer.cancel()
            self._retire_timer = None
        child, self._child = self._child, None
        if child is not None:
            import subprocess

            child.stdin.close()
            try:
                child.wait(RETIRE_WAIT)
            except subprocess.TimeoutExpired:  # stuck in a keyring call nobody waits for any more
                child.kill()
                child.wait()


# -- the child ---------------------------------------------------------------------------------------


class _Keep(logging.Handler):
    """Collects the child's log records, formatted (with any traceback), for the next answer."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, self.format(record)))


def _line_within(stream: Any, timeout: float) -> bytes | None:
    """The next line of ``stream``, or None when none starts within ``timeout`` seconds. A selector, not
    ``select.select()``, which refuses descriptors from 1024 on: a daemon holding many connections has them."""
    with selectors.DefaultSelector() as waiting:
        waiting.register(stream, selectors.EVENT_READ)
        if not waiting.select(timeout):
            return None
    line: bytes = stream.readline()
    return line


def _serve(store: Any, request: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = {}
    try:
        store.keyring.timeout = request["keyring_timeout"]
        op = _op(request["op"])
        if op is Op.SET:
            reply["result"] = store.set(request["key"])
        elif op is Op.GET:
            reply["result"] = store.get()
        elif op is Op.CLEAR:
            reply["result"] = store.clear()
    except ConvError as e:
        reply["error"] = {"kind": errors.kind_of(type(e)), "message": e.message, "hint": e.hint}
    except Exception:
        log.exception("the secret store failed")
        reply["error"] = {"kind": "", "message": FAILED[0], "hint": FAILED[1]}
    return reply


def _op(name: Any) -> Op:
    """The call a request names; never a default: a call the daemon did not mean must not remove the key."""
    try:
        return Op(name)
    except ValueError:
        raise ConvError(f"The secret-store helper has no operation {str(name)[:32]!r}.", FAILED[1]) from None


def main(config_path: str, forced_backend: str) -> None:
    """Serves the calls on stdin with one store, kept across them (the keyring backend's state spans calls),
    until the daemon closes the pipe or exits."""
    from convocationsd.store.configured import open_store

    keep = _Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    store = open_store(Path(config_path), forced_backend=forced_backend or None)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        root.setLevel(request["log_level"])
        reply = _serve(store, request)
        reply["logs"], keep.records = keep.records, []
        reply["last_store"] = store.last_store._asdict() if store.last_store else None
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    os._exit(0)  # no teardown: nothing is left to flush, and a keyring thread that timed out is simply dropped


if __name__ == "__main__":
    main(*sys.argv[1:3])
