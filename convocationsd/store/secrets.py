"""Where the OpenRouter key is kept: one small synchronous interface, several backends.

Every method returns within a bounded time (backends enforce their own timeouts) and never puts the
key in an exception message. The daemon calls them from a worker thread; the CLI calls them directly
when no daemon runs, so both go through the same code.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

KEYRING = "keyring"
LOCAL_ENCRYPTED = "local-encrypted"
MEMORY = "memory"


@dataclass(frozen=True)
class SecretStatus:
    stored: bool
    backend: str | None

    def to_dict(self) -> dict:
        return {"stored": self.stored, "backend": self.backend}


class SecretStore(Protocol):
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

    def status(self) -> SecretStatus:
        with self._lock:
            return SecretStatus(self._key is not None, MEMORY if self._key is not None else None)

    def set(self, key: str) -> str:
        with self._lock:
            self._key = key
        return MEMORY

    def get(self) -> str | None:
        with self._lock:
            return self._key

    def clear(self) -> bool:
        with self._lock:
            had, self._key = self._key is not None, None
        return had
