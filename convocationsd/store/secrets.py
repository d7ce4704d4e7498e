"""Where the OpenRouter key is kept: one small synchronous interface, several backends.

Every method returns within a bounded time (backends enforce their own timeouts) and never puts the
key in an exception message. The daemon calls them from a worker thread; the CLI calls them directly
when no daemon runs, so both go through the same code.
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Protocol

KEYRING = "keyring"
LOCAL_ENCRYPTED = "local-encrypted"
MEMORY = "memory"


# NamedTuples, not dataclasses: a dataclass costs ~1.5 ms to create, on every start (bench/ANALYSIS.md).
class SecretStatus(NamedTuple):
    stored: bool
    backend: str | None

    def to_dict(self) -> dict:
        return {"stored": self.stored, "backend": self.backend}


class StoreOutcome(NamedTuple):
    """How the last ``set`` went, for `status` and doctor: where the key went, or why it went nowhere."""

    at: float  # time.time() when it ended
    backend: str | None  # None: nothing was stored, ``error`` says why
    keyring_error: str | None = None  # why the OS keyring was passed over for the encrypted file
    keyring_missing: bool = False  # ... because there is none here (not locked, not failing)
    error: str | None = None

    def to_dict(self) -> dict:
        from convocationsd.core.flows import iso

        return {
            "at": iso(self.at),
            "backend": self.backend,
            "keyring_error": self.keyring_error,
            "keyring_missing": self.keyring_missing,
            "error": self.error,
        }


class SecretStore(Protocol):
    last_store: StoreOutcome | None  # None until this process stored a key

    def status(self) -> SecretStatus: ...

    def set(self, key: str) -> str:
        """Stores ``key``, replacing any earlier one; returns the backend that holds it now."""

    def get(self) -> str | None: ...

    def clear(self) -> bool:
        """Removes the key and its reference; True when something was removed."""


class MemoryStore:
    """Keeps the key in this process only: the reference implementation the store contract tests run against."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._lock = threading.Lock()
        self.last_store: StoreOutcome | None = None

    def status(self) -> SecretStatus:
        with self._lock:
            return SecretStatus(self._key is not None, MEMORY if self._key is not None else None)

    def set(self, key: str) -> str:
        import time

        with self._lock:
            self._key = key
        self.last_store = StoreOutcome(time.time(), MEMORY)
        return MEMORY

    def get(self) -> str | None:
        with self._lock:
            return self._key

    def clear(self) -> bool:
        with self._lock:
            had, self._key = self._key is not None, None
        return had
