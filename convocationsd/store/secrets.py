"""Where the OpenRouter key is kept: one small synchronous interface, several backends.

Every method returns within a bounded time (backends enforce their own timeouts) and never puts the
key in an exception message. The daemon calls them from a worker thread; the CLI calls them directly
when no daemon runs, so both go through the same code.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

KEYRING = "keyring"
LOCAL_ENCRYPTED = "local-encrypted"


# NamedTuples, not dataclasses: a dataclass costs ~1.5 ms to create, on every start (bench/ANALYSIS.md).
class SecretStatus(NamedTuple):
    stored: bool
    backend: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "backend": self.backend}


class StoreOutcome(NamedTuple):
    """How the last ``set`` went, for `status` and doctor: where the key went, or why it went nowhere."""

    at: float  # time.time() when it ended
    backend: str | None  # None: nothing was stored, ``error`` says why
    keyring_error: str | None = None  # why the OS keyring was passed over for the encrypted file
    keyring_missing: bool = False  # ... because there is none here (not locked, not failing)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
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
