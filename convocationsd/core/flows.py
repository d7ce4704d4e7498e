"""The in-memory session store: at most one pending OAuth flow, its expiry, and a short history.

Rules (the contract's "Flows" section):
- ``start`` while a flow is pending joins it (whatever its mode), unless ``restart`` is asked; a restart
  cancels the old flow. A flow whose code is being exchanged is never cancelled by a restart or a cancel
  (only by shutdown, ``force=True``): the key may already exist, and the exchange decides how it ends.
- A flow expires ``timeout`` seconds after it started, unless its code is being exchanged.
- A callback is *claimed* before anything happens: with no pending flow, a paste-mode flow (it takes codes
  only from the socket), a wrong ``state``, a code seen before, or an exchange already running, it is
  rejected and the pending flow is left untouched.
- A callback without ``state`` can never end, block or delay the flow: any web page can send one. Its code
  is refused unless ``require_state`` is off (for an OpenRouter that does not echo ``state``). Even then it
  is not used until the person at the browser confirms it: its page carries it with a token that binds it
  to the flow (``confirmation_token``, a MAC under a key that never leaves the daemon), and the page's
  button posts both back (``take_confirmed_code``). Nothing is held meanwhile, so no number of other codes
  can push the person's out. OpenRouter accepting a code proves nothing: one made without a PKCE challenge
  is accepted whatever the verifier. It is then exchanged on the side while the flow stays pending, and its
  key is kept only if the flow is still pending when OpenRouter answers (``claim_side_result``): never for
  a flow that ended, or that a callback with the right state is finishing. A stateless ``?error=`` ends
  nothing by itself (the person may end the flow from its page).
- Error codes from a callback are never shown as they came: known OAuth codes map to our own texts.

Pure: the clock and the token source are arguments; nothing here sleeps, schedules or does I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from convocationsd.core import pkce
from convocationsd.core.states import FlowStatus


# NamedTuples and a plain class, not dataclasses: a dataclass costs ~1.5 ms to create, on every start
# of the daemon (bench/ANALYSIS.md).
class FlowError(NamedTuple):
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
    """``ts`` (Unix time) as UTC ISO 8601, to the second. With time, not datetime: importing datetime was
    ~3 ms of every start."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Flow:
    """One login, from start to its end. Compares by identity: two flows are never the same login."""

    __slots__ = (
        "auth_url",
        "backend",
        "callback_url",
        "confirm_key",
        "confirmed",
        "created_at",
        "error",
        "expires_at",
        "paste",
        "session_id",
        "state",
        "status",
        "verifier",
    )

    def __init__(
        self,
        session_id: str,
        state: str,
        verifier: str,
        auth_url: str,
        callback_url: str | None,
        created_at: float,
        expires_at: float,
        paste: bool = False,
        confirm_key: str = "",
    ) -> None:
        self.session_id = session_id
        self.state = state
        self.verifier = verifier
        self.auth_url = auth_url
        self.callback_url = callback_url
        self.created_at = created_at
        self.expires_at = expires_at
        self.paste = paste
        self.status = FlowStatus.PENDING
        self.error: FlowError | None = None
        self.backend: str | None = None
        # Signs the codes of callbacks without state that its pages ask the person to confirm; never shown.
        self.confirm_key = confirm_key
        self.confirmed: set[bytes] = set()  # digests of codes confirmed (once each)

    def __repr__(self) -> str:
        return "Flow(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in _SHOWN) + ")"

    @property
    def done(self) -> bool:
        return self.status.done

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


# In a repr: not the secrets.
_SHOWN = tuple(name for name in Flow.__slots__ if name not in ("state", "verifier", "confirm_key", "confirmed"))


class StartResult(NamedTuple):
    flow: Flow
    joined: bool
    cancelled: Flow | None = None


AuthUrlBuilder = Callable[[str, str, bool], str]
"""(challenge, state, paste) -> authorize URL."""

CANCELLED = FlowError("cancelled", "The login was cancelled.", "Run `convctl oauth start` to try again.")
# A login ended by another one started with `restart` (another terminal, another frontend): its waiter is
# told where the login went, not only that it ended.
REPLACED = {
    True: FlowError(
        "replaced",
        "The login was replaced by a new login started elsewhere (paste mode); finish that one.",
        "Paste the code OpenRouter shows where that login was started, or run `convctl oauth start --restart` "
        "to start over here.",
    ),
    False: FlowError(
        "replaced",
        "The login was replaced by a new login started elsewhere (browser mode); finish that one.",
        "Approve it in the browser (`convctl oauth start` joins it and shows its address), or run "
        "`convctl oauth start --restart` to start over here.",
    ),
}
DENIED = FlowError(
    "access_denied",
    "You declined the request on OpenRouter, so no key was created.",
    "If that was a mistake, run `convctl oauth start` again and choose Authorize.",
)
_RETRY_LATER = "Try again in a few minutes: run `convctl oauth start`."
_REFUSED = FlowError(
    "exchange_failed",
    "OpenRouter refused the login request, so no key was created.",
    "Run `convctl doctor`, which checks the usual causes, then `convctl oauth start` again.",
)
REPORTED = FlowError(
    "exchange_failed",
    "OpenRouter reported an error, so no key was created.",
    "Run `convctl oauth start` to try again; `convctl doctor` checks the usual causes.",
)
# RFC 6749 section 4.1.2.1: the error codes an authorization server may send back; anything else is REPORTED.
OAUTH_ERRORS = {
    "access_denied": DENIED,
    "invalid_request": _REFUSED,
    "unauthorized_client": _REFUSED,
    "unsupported_response_type": _REFUSED,
    "invalid_scope": _REFUSED,
    "server_error": FlowError(
        "exchange_failed", "OpenRouter had an internal problem, so no key was created.", _RETRY_LATER
    ),
    "temporarily_unavailable": FlowError(
        "exchange_failed", "OpenRouter could not authorize logins just then, so no key was created.", _RETRY_LATER
    ),
}


def reported_error(error: str) -> FlowError:
    """Our words for an ``?error=`` a callback carries: its text never reaches a person or a log."""
    return OAUTH_ERRORS.get(error, REPORTED)


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
        require_state: bool = True,
        clock: Callable[[], float] = time.time,
        token: pkce.TokenSource = pkce.token_urlsafe,
    ) -> None:
        self._auth_url = auth_url
        self._callback_url = callback_url
        self.timeout = timeout
        self.require_state = require_state  # False: codes of callbacks without state are checked on the side
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
            if not restart or self.pending.status == FlowStatus.EXCHANGING:
                return StartResult(self.pending, joined=True)
            cancelled = self._end(self.pending, REPLACED[paste])
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
            confirm_key=self._token(32),
        )
        self.pending = flow
        return StartResult(flow, joined=False, cancelled=cancelled)

    def cancel(
        self, session_id: str | None = None, *, force: bool = False, error: FlowError = CANCELLED
    ) -> Flow | None:
        """Ends the pending flow (the one named, if a session is given) with ``error``; None when nothing
        was ended."""
        flow = self.pending
        if flow is None or (session_id is not None and session_id != flow.session_id):
            return None
        if flow.status == FlowStatus.EXCHANGING and not force:
            return None
        return self._end(flow, error)

    def expire_due(self) -> Flow | None:
        """Ends the pending flow with ``timeout`` if its time is up and no exchange is running."""
        flow = self.pending
        if flow is not None and flow.status == FlowStatus.PENDING and self._clock() >= flow.expires_at:
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
        flow.status = FlowStatus.FAILED if error else FlowStatus.SUCCEEDED
        flow.error = error
        if self.pending is flow:
            self.pending = None  # the tokens of its pages die with it: none matches another flow
        self.history.append(flow)
        return flow

    # -- callbacks -----------------------------------------------------------------------------------

    def claim_code(self, code: str, state: str) -> Flow:
        """Marks the pending flow as exchanging the code of a callback that carried ``state``; raises
        CallbackRejected for a stray callback."""
        flow = self._callback_flow(state)
        return self._claim(flow, code)

    def confirmation_token(self, code: str) -> str:
        """The token that lets the person confirm the code of a callback without ``state``: its page carries
        both, and the page's button posts both back (``take_confirmed_code``). The flow stays pending: the
        callback with the right state must never wait for this one or be turned away. Nothing is kept: the
        token is a MAC of the code under the flow's own key, so however many codes other pages send, none can
        push the person's out. Raises CallbackRejected unless ``require_state`` is off."""
        flow = self._callback_flow(None)
        if self.require_state:
            raise CallbackRejected(
                "missing_state",
                "This link carried a login code but not the check value (`state`) of the login in progress, so "
                "the code was not used: any web page can open this address.",
                "If OpenRouter sent you here right after you approved, it did not send `state` back. Then set "
                "`allow_stateless_callbacks = true` in convocationsd's config.toml (or "
                "`CONVOCATIONS_ALLOW_STATELESS_CALLBACKS=1`), restart or reload convocationsd, and run "
                "`convctl oauth start` again; or use `convctl oauth start --paste`, which needs no callback.",
            )
        _refuse_if_exchanging(flow)
        self._remember(code)
        return _confirmation_mac(flow, code)

    def take_confirmed_code(self, code: str, token: str) -> Flow:
        """The pending flow, for a code and the token its page showed (each code once); raises
        CallbackRejected when that flow is no longer pending, or the token is not that page's."""
        import hmac  # here, not with the daemon: see core/pkce.py

        flow = self.pending
        if (
            flow is None
            or not isinstance(code, str)
            or not isinstance(token, str)
            or not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), _confirmation_mac(flow, code).encode())
        ):
            raise CallbackRejected(
                "not_pending",
                "The login this page was about is no longer waiting (it has ended, or was restarted).",
                "Check `convctl status`; run `convctl oauth start` to link again.",
            )
        digest = _digest(code)
        if digest in flow.confirmed:
            raise CallbackRejected(
                "code_reused",
                "This page's code was already tried.",
                "Check `convctl status`; run `convctl oauth start` to link again.",
            )
        _refuse_if_exchanging(flow)
        flow.confirmed.add(digest)  # grows only by presses of our own pages' buttons
        return flow

    def claim_side_result(self, flow: Flow) -> bool:
        """OpenRouter issued a key for a stateless code exchanged on the side: marks ``flow`` as finishing with
        it, or returns False when the flow has ended meanwhile or a callback with its state is finishing it
        (that key must then never be stored)."""
        if self.pending is not flow or flow.status != FlowStatus.PENDING:
            return False
        flow.status = FlowStatus.EXCHANGING
        return True

    def claim_pasted(self, code: str) -> Flow:
        """Marks the pending flow (of either mode) as exchanging a code pasted over the socket. It needs no
        ``state``: the person pasted it, over the door only their own uid can use. PKCE does not make it
        theirs: a code made without a challenge is accepted whatever the verifier."""
        flow = self.pending
        if flow is None:
            raise CallbackRejected(
                "no_flow", "No login is waiting for a code.", "Run `convctl oauth start --paste` first."
            )
        return self._claim(flow, code)

    def claim_error(self, state: str | None) -> Flow:
        """The flow that an ``?error=`` callback is about; raises CallbackRejected for a stray one. Only one
        that carried the right ``state`` may end it."""
        flow = self._callback_flow(state)
        _refuse_if_exchanging(flow)
        return flow

    def release(self, flow: Flow) -> None:
        """An exchange showed the code was not ours: the flow waits for the real callback again."""
        if self.pending is flow and flow.status == FlowStatus.EXCHANGING:
            flow.status = FlowStatus.PENDING

    def _claim(self, flow: Flow, code: str) -> Flow:
        _refuse_if_exchanging(flow)
        self._remember(code)
        flow.status = FlowStatus.EXCHANGING
        return flow

    def _remember(self, code: str) -> None:
        """Refuses a code seen before, then remembers this one (as a digest)."""
        digest = _digest(code)
        if digest in self._used_codes:
            raise CallbackRejected(
                "code_reused",
                "This authorization code was already used.",
                "Codes work once. If your login did not finish, run `convctl oauth start` again.",
            )
        self._used_codes.append(digest)

    def _callback_flow(self, state: str | None) -> Flow:
        flow = self.pending
        if flow is None:
            raise CallbackRejected(
                "no_flow",
                "No login is in progress, so this callback was ignored.",
                "Start one with `convctl oauth start` (or the Link OpenRouter button) and approve it in the browser.",
            )
        if flow.paste:
            raise CallbackRejected(
                "paste_mode",
                "The login in progress waits for a code pasted into `convctl`, so this page was ignored.",
                "Copy the code OpenRouter shows into the terminal where `convctl oauth start --paste` waits.",
            )
        import hmac  # here, not with the daemon: see core/pkce.py

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


def _digest(code: str) -> bytes:
    import hashlib  # here, not with the daemon: see core/pkce.py

    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).digest()


def _confirmation_mac(flow: Flow, code: str) -> str:
    import hashlib
    import hmac

    return hmac.new(flow.confirm_key.encode(), code.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _refuse_if_exchanging(flow: Flow) -> None:
    if flow.status == FlowStatus.EXCHANGING:
        raise CallbackRejected(
            "busy", "A code for this login is already being exchanged.", "Wait a moment and check `convctl status`."
        )
