"""The in-memory session store: at most one pending OAuth flow, its expiry, and a short history.

Rules (the contract's "Flows" section):
- ``start`` while a flow is pending joins it (whatever its mode), unless ``restart`` is asked; a restart
  cancels the old flow. A flow whose code is being exchanged is never cancelled by a restart or a cancel
  (only by shutdown, ``force=True``): the key may already exist, and the exchange decides how it ends.
- A flow expires ``timeout`` seconds after it started, unless its code is being exchanged.
- A callback is *claimed* before anything happens: with no pending flow, a wrong ``state``, a code seen
  before, or an exchange already running, it is rejected and the pending flow is left untouched.
- A callback without ``state`` is accepted (OpenRouter may not echo it); PKCE still binds its code to our
  verifier, and if the exchange says the code is not ours the flow goes back to pending (``release``).

Pure: the clock and the token source are arguments; nothing here sleeps, schedules or does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from convocationsd.core import pkce

PENDING = "pending"
EXCHANGING = "exchanging"
SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True)
class FlowError:
    code: str
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class CallbackRejected(Exception):
    """A callback that does not belong to the pending flow. The flow is unchanged."""

    def __init__(self, reason: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Flow:
    session_id: str
    state: str = field(repr=False)
    verifier: str = field(repr=False)
    auth_url: str
    callback_url: str | None
    created_at: float
    expires_at: float
    paste: bool = False
    status: str = PENDING
    error: FlowError | None = None
    backend: str | None = None
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status in (SUCCEEDED, FAILED)

    def public(self) -> dict[str, Any]:
        """What status and events may show: never the verifier, the state or a code."""
        return {
            "session_id": self.session_id,
            "status": self.status,
            "auth_url": self.auth_url,
            "callback_url": self.callback_url,
            "paste": self.paste,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "error": self.error.to_dict() if self.error else None,
            "backend": self.backend,
        }

    def complete_data(self) -> dict[str, Any]:
        """The data of its ``openrouter-auth-complete`` event."""
        return {
            "session_id": self.session_id,
            "success": self.error is None,
            "backend": self.backend,
            "error": self.error.to_dict() if self.error else None,
        }

    def start_reply(self, joined: bool) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "auth_url": self.auth_url,
            "callback_url": self.callback_url,
            "expires_at": iso(self.expires_at),
            "joined": joined,
        }


@dataclass(frozen=True)
class StartResult:
    flow: Flow
    joined: bool
    cancelled: Flow | None = None


AuthUrlBuilder = Callable[[str, str, bool], str]
"""(challenge, state, paste) -> authorize URL."""

CANCELLED = FlowError("cancelled", "The login was cancelled.", "Run `convctl oauth start` to try again.")
TIMED_OUT = FlowError(
    "timeout",
    "The login was not completed in time.",
    "Run `convctl oauth start` again and approve the request in the browser.",
)


class FlowStore:
    def __init__(
        self,
        *,
        auth_url: AuthUrlBuilder,
        callback_url: str | None,
        timeout: float = 600.0,
        history: int = 16,
        used_codes: int = 256,
        clock: Callable[[], float] = time.time,
        token: pkce.TokenSource = secrets.token_urlsafe,
    ) -> None:
        self._auth_url = auth_url
        self._callback_url = callback_url
        self.timeout = timeout
        self._clock = clock
        self._token = token
        self.pending: Flow | None = None
        self.history: deque[Flow] = deque(maxlen=history)
        # Digests, not codes: the store never keeps a usable code after its one exchange.
        self._used_codes: deque[bytes] = deque(maxlen=used_codes)

    # -- starting and ending -------------------------------------------------------------------------

    def start(self, *, restart: bool = False, paste: bool = False) -> StartResult:
        cancelled = None
        if self.pending is not None:
            if not restart or self.pending.status == EXCHANGING:
                return StartResult(self.pending, joined=True)
            cancelled = self._end(self.pending, CANCELLED)
        verifier = pkce.make_verifier(self._token)
        state = self._token(24)
        now = self._clock()
        flow = Flow(
            session_id=self._token(12),
            state=state,
            verifier=verifier,
            auth_url=self._auth_url(pkce.s256_challenge(verifier), state, paste),
            callback_url=None if paste else self._callback_url,
            created_at=now,
            expires_at=now + self.timeout,
            paste=paste,
        )
        self.pending = flow
        return StartResult(flow, joined=False, cancelled=cancelled)

    def cancel(self, session_id: str | None = None, *, force: bool = False) -> Flow | None:
        """Ends the pending flow (the one named, if a session is given); None when nothing was cancelled."""
        flow = self.pending
        if flow is None or (session_id is not None and session_id != flow.session_id):
            return None
        if flow.status == EXCHANGING and not force:
            return None
        return self._end(flow, CANCELLED)

    def expire_due(self) -> Flow | None:
        """Ends the pending flow with ``timeout`` if its time is up and no exchange is running."""
        flow = self.pending
        if flow is not None and flow.status == PENDING and self._clock() >= flow.expires_at:
            return self._end(flow, TIMED_OUT)
        return None

    def finish(self, flow: Flow, error: FlowError | None = None, backend: str | None = None) -> bool:
        """Ends ``flow`` with its outcome; False when it had already ended (e.g. cancelled at shutdown
        while its exchange ran): the first ending stands and nothing more should be announced."""
        if flow.done:
            return False
        flow.backend = backend
        self._end(flow, error)
        return True

    def _end(self, flow: Flow, error: FlowError | None) -> Flow:
        flow.status = FAILED if error else SUCCEEDED
        flow.error = error
        flow.finished_at = self._clock()
        if self.pending is flow:
            self.pending = None
        self.history.append(flow)
        return flow

    # -- callbacks -----------------------------------------------------------------------------------

    def claim_code(self, code: str, state: str | None) -> Flow:
        """Marks the pending flow as exchanging ``code``; raises CallbackRejected for a stray callback."""
        flow = self._matching_flow(state)
        digest = hashlib.sha256(code.encode("utf-8", "surrogatepass")).digest()
        if digest in self._used_codes:
            raise CallbackRejected(
                "code_reused",
                "This authorization code was already used.",
                "Codes work once. If your login did not finish, run `convctl oauth start` again.",
            )
        _refuse_if_exchanging(flow)
        self._used_codes.append(digest)
        flow.status = EXCHANGING
        return flow

    def claim_error(self, state: str | None) -> Flow:
        """The flow that an ``?error=`` callback ends; raises CallbackRejected for a stray one."""
        flow = self._matching_flow(state)
        _refuse_if_exchanging(flow)
        return flow

    def release(self, flow: Flow) -> None:
        """An exchange showed the code was not ours: the flow waits for the real callback again."""
        if self.pending is flow and flow.status == EXCHANGING:
            flow.status = PENDING

    def _matching_flow(self, state: str | None) -> Flow:
        flow = self.pending
        if flow is None:
            raise CallbackRejected(
                "no_flow",
                "No login is in progress, so this callback was ignored.",
                "Start one with `convctl oauth start` (or the Link OpenRouter button) and approve it in the browser.",
            )
        if state is not None and not hmac.compare_digest(state.encode("utf-8", "surrogatepass"), flow.state.encode()):
            raise CallbackRejected(
                "state_mismatch",
                "This callback does not belong to the login in progress, so it was ignored.",
                "Finish the login from the browser tab that `convctl oauth start` opened.",
            )
        return flow

    # -- reading -------------------------------------------------------------------------------------

    def latest(self) -> Flow | None:
        if self.pending is not None:
            return self.pending
        return self.history[-1] if self.history else None


def _refuse_if_exchanging(flow: Flow) -> None:
    if flow.status == EXCHANGING:
        raise CallbackRejected(
            "busy", "A code for this login is already being exchanged.", "Wait a moment and check `convctl status`."
        )
