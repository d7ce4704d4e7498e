"""One exception root for everything a person may see.

Each error carries a one-sentence message (what happened) and a hint (what to do next), and the CLI maps
its class to an exit code. Foreign exceptions are translated at the edges with ``raise ... from e``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: importing typing is ~10 % of `convctl status` (bench/ANALYSIS.md)
if TYPE_CHECKING:  # nothing is imported at run time: convctl imports this module for every command
    from convocationsd.core.flows import FlowError


# Where a person deletes or copies their OpenRouter keys (hints name it; one place to change it).
KEYS_PAGE = "https://openrouter.ai/keys"


class ConvError(Exception):
    """Base of all expected errors. ``str()`` is safe to show: it never contains a secret."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class UsageError(ConvError):
    exit_code = 2


class DaemonUnreachable(ConvError):
    """No daemon to talk to: nothing listens on the socket, or the connection closed."""

    exit_code = 3


class UntrustedSocket(ConvError):
    """The socket, a directory on its path, or the process serving it is not the user's own (or root's),
    so nothing was sent. Not a DaemonUnreachable: the secret commands must not quietly fall back to the
    files when someone may be impersonating the daemon; the person has to see this."""

    exit_code = 3


class NoReply(ConvError):
    """The daemon is connected but did not answer in time: it may still be working on the request, so
    unlike DaemonUnreachable this says nothing about whether the request took effect."""

    def __init__(self, method: str) -> None:
        super().__init__(
            f"The daemon did not answer `{method}` in time.",
            "It may still be working on it: check `convctl status`; restart the daemon if it hangs.",
        )
        self.method = method


class ConfigError(ConvError):
    """config.toml cannot be read or parsed; the file is never overwritten in that state."""


class UntrustedConfig(ConfigError):
    """config.toml, or a directory on its way, can be changed by another user: it is not used, since it
    says where the key is sent (``openrouter_url``) and where it is kept."""


class SecretStoreError(ConvError):
    """The secret could not be stored, read or removed."""


class KeyNotAccepted(ConvError):
    """OpenRouter answered a key check with 401: the key a person gave is not one it accepts."""

    def __init__(self) -> None:
        super().__init__(
            "That key is not accepted by OpenRouter (HTTP 401), so it was not stored.",
            f"Copy the whole key again from {KEYS_PAGE} (or link your account with `convctl oauth start`); to "
            "store it anyway, use `convctl secret set-openrouter-key --no-verify`.",
        )


class UpstreamError(ConvError):
    """OpenRouter could not be reached or did not give the daemon a key (daemon/openrouter.py raises it).

    ``flow_error`` is exactly what the ``openrouter-auth-complete`` event and the callback page show.
    ``code_rejected`` is True only when OpenRouter said the code or verifier is invalid: the daemon then
    keeps the pending flow, because a stray callback may have carried a code that was never ours.
    """

    def __init__(self, flow_error: FlowError, *, status: int | None = None, code_rejected: bool = False) -> None:
        super().__init__(flow_error.message, flow_error.hint)
        self.flow_error = flow_error
        self.status = status
        self.code_rejected = code_rejected


class KeyRejected(UpstreamError):
    """``GET /api/v1/key`` answered 401: the key is unknown or was revoked."""


class CodeRejected(ConvError):
    """A pasted code that OpenRouter did not accept; the login still waits for the right one (convctl lets
    the person paste again)."""


class BackendUnavailable(SecretStoreError):
    """A secret backend cannot be used right now (no keyring, locked, timed out)."""


class RemoteError(ConvError):
    """The daemon answered a request with a JSON-RPC error. ``kind`` is the class name of the daemon's
    error (``error.data.kind``, e.g. "CodeRejected"), None when it sent none."""

    def __init__(self, code: int, message: str, hint: str = "", kind: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.kind = kind

    def is_a(self, error: type[ConvError]) -> bool:
        """The daemon's error was an ``error`` (by its name on the wire, ``kind_of``; not its subclasses)."""
        return self.kind == kind_of(error)


def kind_of(error: type[ConvError]) -> str:
    """How an error's class is named on the wire (``error.data.kind``): its class name, one rule for the
    daemon that sends it and the client that compares it."""
    return error.__name__
