"""What the daemon does, whichever door a request comes through (HTTP routes, IPC methods, D-Bus).

The flow of data is start -> (browser) -> callback -> exchange -> store -> event. This module runs it:
it owns the session store, calls OpenRouter, hands the key to the secret store, and publishes events.
It knows nothing about HTTP or sockets: the HTTP door translates its requests into these calls, and the
socket's methods map onto them in ``Controller.handlers`` (core/protocol.py names them and their params).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from convocationsd import __version__
from convocationsd.core import events, pkce, protocol
from convocationsd.core.errors import (
    KEYS_PAGE,
    CodeRejected,
    ConvError,
    KeyNotAccepted,
    KeyRejected,
    UpstreamError,
    UsageError,
)
from convocationsd.core.flows import (
    OAUTH_ERRORS,
    CallbackRejected,
    Flow,
    FlowError,
    FlowStore,
    iso,
    reported_error,
)
from convocationsd.core.states import FlowStatus
from convocationsd.daemon.account import DEFAULT_TTL, AccountStatus
from convocationsd.daemon.logs import REFUSALS
from convocationsd.store.secrets import SecretStatus, SecretStore

if TYPE_CHECKING:
    from convocationsd.common.settings import Settings
    from convocationsd.daemon.openrouter import OpenRouterApi

# A socket method's handler: (the caller, as an event sink, for ``subscribe``; its checked params) -> its result.
Handler = Callable[[events.Sink, dict[str, Any]], Any]
T = TypeVar("T")

log = logging.getLogger(__name__)
# What any web page can cause as often as it likes (callbacks that are ignored, error reports without state):
# one line per kind per interval, with counts, as for the HTTP door's refusals.
strays = logging.getLogger(f"{__name__}.strays")
strays.addFilter(REFUSALS)


class OutcomeKind(StrEnum):
    """What a callback came to; its result page looks the part."""

    SUCCESS = "success"  # the login ended with its key stored
    FAILED = "failed"  # the login ended without one
    IGNORED = "ignored"  # the login is as it was
    REPORTED = "reported"  # an error report without state: the page lets the person end the login
    CONFIRM = "confirm"  # a code without state: the page asks the person to confirm it


# NamedTuples, not dataclasses: a dataclass costs ~1.5 ms to create, on every start (bench/ANALYSIS.md).
class Outcome(NamedTuple):
    """What a callback came to, in words a person can act on (rendered as the result page)."""

    kind: OutcomeKind
    title: str
    message: str
    hint: str = ""
    code: str | None = None  # the event's error code, or the rejection reason
    # What the page's one button posts back (pages.FORMS names the fields, by kind): REPORTED's "End the
    # login" (session_id, known OAuth error or ""), CONFIRM's "Finish linking" (code, token).
    form: tuple[str, str] | None = None


class Endpoint(NamedTuple):
    port: int
    port_fallback: bool
    socket_path: str


class UnsavedKey(NamedTuple):
    """A key OpenRouter issued that the secret store did not take. It is kept in the daemon's memory only,
    never written in plain text: a lost key would leave the person's account linked to nothing, and OpenRouter
    cannot hand it out again. ``retry_store`` (and any later read of the key) stores it once the store works.

    One is held at a time: a later login whose key cannot be stored either replaces it (the newest login is
    the one the person wants linked), and ``replaced`` names the logins whose keys were dropped that way: they
    were never stored, and stay valid at OpenRouter until the person deletes them there."""

    key: str
    session_id: str
    since: float
    reason: str
    replaced: tuple[str, ...] = ()  # the latest MAX_REPLACED only

    def __repr__(self) -> str:  # never the key, wherever one is logged or shown
        return f"UnsavedKey(session_id={self.session_id!r}, since={self.since!r}, reason={self.reason!r})"

    def public(self) -> dict[str, Any]:
        """What ``status`` shows: never the key."""
        return {
            "session_id": self.session_id,
            "since": iso(self.since),
            "reason": self.reason,
            "replaced": list(self.replaced),
        }


MAX_REPLACED = 8  # logins whose dropped keys an UnsavedKey names
RETRY_HINT = (
    "Until then the daemon holds the key in memory (it is lost if the daemon stops), and `convctl exec` can use "
    "it. Fix the cause, then run `convctl secret retry-store`."
)


class Controller:
    def __init__(
        self,
        *,
        endpoint: Endpoint,
        openrouter_url: str,
        openrouter: OpenRouterApi,
        secrets: SecretStore,
        bus: events.EventBus,
        flow_timeout: float,
        require_state: bool = True,
        account_ttl: float = DEFAULT_TTL,
        setup: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.setup = setup  # the settings `status` reports: {config_path, http_port: {value, source}, ...}
        self.service: dict[str, Any] | None = None  # the service manager running us, for `status`: {manager, unit}
        # The settings a reload read but only a restart applies, for `status`.
        self.restart_needed: list[dict[str, Any]] = []
        self.openrouter_url = openrouter_url
        self.openrouter = openrouter
        self.secrets = secrets
        self.bus = bus
        self.clock = clock
        port = endpoint.port
        self.flows = FlowStore(
            auth_url=lambda challenge, state, paste: pkce.authorize_url(
                self.openrouter_url, port, challenge, state, paste=paste
            ),
            callback_url=pkce.callback_url(port),
            timeout=flow_timeout,
            require_state=require_state,
            clock=clock,
        )
        self._expiry: asyncio.TimerHandle | None = None  # the pending flow's timeout; close() cancels it
        self._closed = False
        self._secret_lock = asyncio.Lock()
        self.last_activity = time.monotonic()
        self.secret_state = SecretStatus(False, None)  # cached so that `status` never waits on a backend
        self.unsaved: UnsavedKey | None = None  # a key OpenRouter issued that could not be stored yet
        # The key's label and usage from OpenRouter, cached, refreshed in the background.
        self.account = AccountStatus(openrouter, self.stored_key, bus, ttl=account_ttl)

    def apply(self, settings: Settings) -> None:
        """A reload's settings, those the controller uses (a reload leaves the RESTART_ONLY ones as they were)."""
        self.flows.timeout = settings.flow_timeout_seconds
        self.flows.require_state = not settings.allow_stateless_callbacks
        self.account.cache.ttl = settings.account_cache_seconds

    # -- the socket's methods ------------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """What each socket method does. A new method is its name and params in core/protocol.py (METHODS)
        and its line here; the IPC server refuses to start when one has no handler."""
        return {
            "status": lambda c, p: self.status(),
            "oauth.start": lambda c, p: self.start(restart=p.get("restart", False), paste=p.get("paste", False)),
            "oauth.cancel": lambda c, p: {"cancelled": self.cancel(p.get("session_id"))},
            "oauth.exchange": lambda c, p: self.exchange_pasted(p["code"], p.get("session_id")),
            "subscribe": lambda c, p: {"events": self.subscribe(c, p.get("events"))},
            "secret.status": lambda c, p: self.secret_status(),
            "secret.set": lambda c, p: self.secret_set(p["key"], verify=p.get("verify", False)),
            "secret.clear": lambda c, p: self.secret_clear(),
            "secret.get": lambda c, p: self.secret_get(),
            "secret.retry_store": lambda c, p: self.retry_store(),
            "debug.modules": lambda c, p: {"modules": sorted({name.partition(".")[0] for name in sys.modules})},
        }

    def subscribe(self, sink: events.Sink, wanted: list[str] | None) -> list[str]:
        """Sets the events ``sink`` receives (None: all); an unknown name leaves its subscription as it was."""
        unknown = set(wanted or ()) - set(events.ALL_EVENTS)
        if unknown:
            raise protocol.ProtocolError(
                protocol.INVALID_PARAMS,
                f"Invalid params: no event {sorted(unknown)[0][:64]!r}; events are " + ", ".join(events.ALL_EVENTS),
            )
        return self.bus.subscribe(sink, wanted)

    # -- flows ---------------------------------------------------------------------------------------

    def start(self, *, restart: bool = False, paste: bool = False) -> dict[str, Any]:
        result = self.flows.start(restart=restart, paste=paste)
        if result.cancelled is not None:
            self._publish_complete(result.cancelled)
        flow = result.flow
        if not result.joined:
            log.info(
                "login %s started; waiting for the browser (expires %s)", flow.session_id, flow.public()["expires_at"]
            )
            self.bus.publish(
                events.AUTH_STARTED,
                {"session_id": flow.session_id, "auth_url": flow.auth_url, "expires_at": flow.public()["expires_at"]},
            )
            self._schedule_expiry(flow)
        return flow.start_reply(result.joined)

    def cancel(self, session_id: str | None = None, *, force: bool = False) -> bool:
        """Cancels the pending login; one whose code is being exchanged only with ``force`` (shutdown)."""
        flow = self.flows.cancel(session_id, force=force)
        if flow is None:
            return False
        log.info("login %s cancelled", flow.session_id)
        self._publish_complete(flow)
        return True

    def _schedule_expiry(self, flow: Flow) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._closed:
            return
        delay = max(0.0, flow.expires_at - self.clock())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        flow = self.flows.expire_due()
        if flow is not None:
            log.info("login %s timed out", flow.session_id)
            self._publish_complete(flow)
        elif self.flows.pending is not None:
            # Not due yet, or its code is being exchanged: look again later. An exchange that gives the
            # flow back (a stray code) must not leave it without a timer.
            self._schedule_expiry(self.flows.pending)

    async def callback(self, code: str | None, state: str | None) -> Outcome:
        if not code:
            return Outcome(
                OutcomeKind.IGNORED,
                "Nothing to do",
                "This address expects a login code from OpenRouter, and none came with it.",
                "Start a login with `convctl oauth start` or the Link OpenRouter button.",
                "no_code",
            )
        try:
            if state is None:
                return _confirmation(code, self.flows.confirmation_token(code))
            flow = self.flows.claim_code(code, state)
        except CallbackRejected as e:
            strays.warning("ignored a callback: %s", e.reason)
            return Outcome(OutcomeKind.IGNORED, "This link was ignored", e.message, e.hint, e.reason)
        return await self._exchange(flow, code, verified=True)

    async def confirm_stateless(self, code: str, token: str) -> Outcome:
        """The person pressed "Finish linking" on the page of a callback without state: its code is tried."""
        try:
            flow = self.flows.take_confirmed_code(code, token)
        except CallbackRejected as e:
            strays.warning("ignored a confirmation: %s", e.reason)
            return Outcome(OutcomeKind.IGNORED, "Nothing was linked", e.message, e.hint, e.reason)
        return await self._exchange_on_the_side(flow, code)

    def callback_error(self, error: str, state: str | None) -> Outcome:
        """An ``?error=`` callback. With the login's state it ends the login, in our words for the error
        (never its text). Without, anyone could have sent it: the login goes on, and the page lets the
        person end it (``end_reported``)."""
        try:
            flow = self.flows.claim_error(state)
        except CallbackRejected as e:
            strays.warning("ignored an error callback: %s", e.reason)
            return Outcome(OutcomeKind.IGNORED, "This link was ignored", e.message, e.hint, e.reason)
        if state is None:
            strays.warning("an error report without state reached the callback; login %s goes on", flow.session_id)
            return Outcome(
                OutcomeKind.REPORTED,
                "OpenRouter reported an error",
                "This page was opened with an error report, but without the check value (`state`) of the login "
                "in progress, so it may come from another web page: any page can open this address. The login "
                "is still waiting.",
                "If you declined on OpenRouter or it showed you an error, end the login here; the app or "
                "terminal that started it will be told. Otherwise finish it in the OpenRouter tab.",
                form=(flow.session_id, error if error in OAUTH_ERRORS else ""),
            )
        failure = reported_error(error)
        log.info("login %s ended by OpenRouter: %s", flow.session_id, failure.code)
        self._end(flow, failure)
        return _failed_outcome(failure)

    def end_reported(self, session_id: str, error: str) -> Outcome:
        """The person pressed "End the login" on the page of an error report without state."""
        flow = self.flows.cancel(session_id, error=reported_error(error)) if session_id else None
        if flow is None or flow.error is None:  # (a flow that cancel returns always has its error)
            return Outcome(
                OutcomeKind.IGNORED,
                "Nothing was ended",
                "The login this page was about is no longer waiting: it has ended, or its code is being "
                "exchanged right now.",
                "Check `convctl status`.",
                "not_pending",
            )
        log.info("login %s ended from its error page: %s", flow.session_id, flow.error.code)
        self._publish_complete(flow)
        return _failed_outcome(flow.error)

    async def exchange_pasted(self, code: str, session_id: str | None) -> dict[str, Any]:
        """Paste mode: the person copies the code OpenRouter shows. Any pending login accepts one, because the
        person pasted it over the socket only their uid can use (PKCE would not vouch for it: OpenRouter accepts
        a code made without a challenge whatever the verifier); a code OpenRouter rejects leaves the login
        waiting for another."""
        pending = self.flows.pending
        if pending is None or (session_id and session_id != pending.session_id):
            raise UsageError("No login is waiting for a code.", "Run `convctl oauth start --paste` first.")
        code = code.strip()
        try:
            flow = self.flows.claim_pasted(code)
        except CallbackRejected as e:
            raise ConvError(e.message, e.hint) from None
        outcome = await self._exchange(flow, code, verified=False)
        if outcome.kind == OutcomeKind.IGNORED:
            raise CodeRejected(
                "OpenRouter did not accept that code for this login.",
                "Check that you copied the whole code from the page OpenRouter showed, and paste it again.",
            )
        return self._complete_data(flow)

    async def _exchange_on_the_side(self, flow: Flow, code: str) -> Outcome:
        """The confirmed code of a callback without state (``allow_stateless_callbacks``). The flow stays
        pending while OpenRouter is asked, so the callback with the right state never waits for this one; a
        failure leaves it as it was. A key is stored only if the flow is still pending when it comes: never
        for a login that has ended, or that a callback with its state is finishing."""
        log.debug("login %s: trying the code of a callback without state, on the side", flow.session_id)
        try:
            result = await self.openrouter.exchange(code, flow.verifier)
        except UpstreamError as e:
            strays.warning("ignored a callback without state: its code was not exchanged (%s)", e.flow_error.code)
            if e.code_rejected:
                message = "OpenRouter did not accept this code for the login in progress, which is still waiting."
            else:
                message = f"{e.flow_error.message} The login in progress is still waiting."
            return Outcome(OutcomeKind.IGNORED, "This link was ignored", message, e.flow_error.hint, e.flow_error.code)
        if not self.flows.claim_side_result(flow):
            log.warning(
                "login %s had ended when the key of a code without state came; it was not stored", flow.session_id
            )
            return Outcome(
                OutcomeKind.IGNORED,
                "Nothing was linked",
                "The login this page was about had already ended, so the key OpenRouter issued for it was not stored.",
                "Check `convctl status`: it shows how the login ended.",
                "not_pending",
            )
        return await self._keep_key(flow, result.key)

    async def _exchange(self, flow: Flow, code: str, *, verified: bool) -> Outcome:
        """Exchanges the code of a claimed flow for a key and stores it. ``verified``: the callback carried
        our state, so a failure ends the login; otherwise (a pasted code) a code OpenRouter rejects was not
        this login's and the login waits for another. However the exchange ends, the flow does not stay
        ``exchanging``."""
        from convocationsd.daemon.openrouter import app_conflict_hint

        try:
            try:
                result = await self.openrouter.exchange(code, flow.verifier)
            except UpstreamError as e:
                if not verified and e.code_rejected:
                    self.flows.release(flow)
                    log.warning("ignored a code that OpenRouter rejected for this login")
                    return Outcome(
                        OutcomeKind.IGNORED,
                        "This link was ignored",
                        "OpenRouter did not accept this code for the login in progress.",
                        "Finish the login from the browser tab that `convctl oauth start` opened.",
                        "code_rejected",
                    )
                failure = e.flow_error
                if failure.code == "app_conflict":
                    hint = app_conflict_hint(self.endpoint.port, self.endpoint.port_fallback)
                    failure = FlowError(failure.code, failure.message, hint)
                log.warning("login %s failed: %s (%s)", flow.session_id, failure.code, failure.message)
                self._end(flow, failure)
                return _failed_outcome(failure)
            return await self._keep_key(flow, result.key)
        finally:
            if flow.status == FlowStatus.EXCHANGING:  # cancelled (shutdown) or a bug above: give the login back
                self.flows.release(flow)
                self._schedule_expiry(flow)

    async def _keep_key(self, flow: Flow, key: str) -> Outcome:
        """Stores the key OpenRouter created for ``flow`` and ends the flow with how that went."""
        try:
            backend = await self._store_key(key)
        except Exception as e:
            if not isinstance(e, ConvError):
                log.exception("storing the key failed")
            why = e.message if isinstance(e, ConvError) else "see the daemon's log"
            hint = f"{e.hint} {RETRY_HINT}" if isinstance(e, ConvError) and e.hint else RETRY_HINT
            previous = self.unsaved
            replaced: tuple[str, ...] = ()
            if previous is not None:  # never silently: that key was never stored, and still works at OpenRouter
                replaced = (*previous.replaced, previous.session_id)[-MAX_REPLACED:]
                log.warning(
                    "login %s: its key could not be stored either, and replaces the one of login %s held in memory, "
                    "which was never stored and stays valid at OpenRouter until deleted there",
                    flow.session_id,
                    previous.session_id,
                )
                hint += (
                    f" This key replaces the one of login {previous.session_id}, which was held in memory and never "
                    f"stored; it still works at OpenRouter: delete it at {KEYS_PAGE} if you do not use it."
                )
            self.unsaved = UnsavedKey(key, flow.session_id, self.clock(), why, replaced)
            failure = FlowError(
                "storage_failed", f"The key was created but could not be saved: {why.rstrip('.')}.", hint
            )
        else:
            self._replace_unsaved("a new login stored its key")
            if self._end(flow, None, backend):
                log.info("login %s succeeded; key stored in %s", flow.session_id, backend)
            self.bus.publish(events.KEY_CHANGED, {"stored": True, "backend": backend})
            return Outcome(
                OutcomeKind.SUCCESS,
                "OpenRouter account linked",
                "Convocations can now use your OpenRouter account.",
                "You can close this tab.",
            )
        log.error("login %s: %s", flow.session_id, failure.message)
        self._end(flow, failure)
        return _failed_outcome(failure)

    def _end(self, flow: Flow, error: FlowError | None, backend: str | None = None) -> bool:
        """Ends ``flow`` and announces it, once: a flow cancelled at shutdown stays cancelled."""
        ended = self.flows.finish(flow, error, backend)
        if ended:
            self._publish_complete(flow)
        return ended

    def _publish_complete(self, flow: Flow) -> None:
        self.bus.publish(events.AUTH_COMPLETE, self._complete_data(flow))

    def _complete_data(self, flow: Flow) -> dict[str, Any]:
        """How a login ended, and whether its key waits in memory to be stored (``unsaved_key``)."""
        unsaved = self.unsaved is not None and self.unsaved.session_id == flow.session_id
        return {**flow.complete_data(), "unsaved_key": unsaved}

    # -- secrets -------------------------------------------------------------------------------------

    async def _secret_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs a secret-store call in a thread, one at a time (backends block: keyring may wait for an
        unlock prompt, within their own time bound), and refreshes the cached status under the same lock,
        so a slower call can never leave an older status behind."""
        async with self._secret_lock:
            try:
                return await asyncio.to_thread(fn, *args)
            finally:
                if fn != self.secrets.get:  # a read changes nothing (bound methods compare equal, not identical)
                    await self.refresh_secret_status()

    async def stored_key(self) -> str | None:
        """The key in the secret store (not one held in memory), for the account check."""
        key: str | None = await self._secret_call(self.secrets.get)
        return key

    async def _store_key(self, key: str) -> str:
        return await self._secret_call(self.secrets.set, key)

    async def refresh_secret_status(self) -> dict[str, Any]:
        self.secret_state = await asyncio.to_thread(self.secrets.status)
        return self.secret_state.to_dict()

    async def secret_status(self) -> dict[str, Any]:
        # No lock: status reads only config.toml's reference, and must answer during a keyring prompt.
        return await self.refresh_secret_status()

    async def retry_store(self) -> dict[str, Any]:
        """Stores the key held in memory (``unsaved``) now; the key stays held when the store fails again."""
        if self.unsaved is None:
            raise UsageError("No key is waiting to be stored.", "`convctl status` shows the stored key.")
        return {"stored": True, "backend": await self._store_unsaved()}

    async def _store_unsaved(self) -> str:
        unsaved = self.unsaved
        assert unsaved is not None
        try:
            backend = await self._store_key(unsaved.key)
        except ConvError as e:
            log.warning("the key of login %s is still held in memory: %s", unsaved.session_id, e.message)
            raise
        if self.unsaved is unsaved:  # not replaced meanwhile by a key stored after it
            self.unsaved = None
            log.info("stored the key of login %s that was held in memory (backend %s)", unsaved.session_id, backend)
            self.bus.publish(events.KEY_CHANGED, {"stored": True, "backend": backend})
        return backend

    def _replace_unsaved(self, why: str) -> None:
        """A key stored (or cleared) on purpose since makes the one held in memory old news."""
        if self.unsaved is not None:
            log.info("the key of login %s held in memory is no longer needed: %s", self.unsaved.session_id, why)
            self.unsaved = None

    async def secret_set(self, key: str, *, verify: bool = False) -> dict[str, Any]:
        """Stores a key a person gave. With ``verify``, asks OpenRouter first (``GET /api/v1/key``): a key it
        rejects is not stored (KeyNotAccepted); when it cannot be asked, the key is stored and the reply says
        why it was not checked. convctl does the same when no daemon runs (cli/secret_ops.set_key), by the
        same rules (core/keycheck)."""
        from convocationsd.core import keycheck

        key = keycheck.check_key(key)
        unchecked = await self._check_with_openrouter(key) if verify else None
        backend = await self._store_key(key)
        self._replace_unsaved("a key was stored with secret.set")
        self.bus.publish(events.KEY_CHANGED, {"stored": True, "backend": backend})
        return keycheck.stored(backend, verify=verify, not_verified_because=unchecked)

    async def _check_with_openrouter(self, key: str) -> str | None:
        """None when OpenRouter accepts ``key``; why it could not be asked otherwise. Raises KeyNotAccepted."""
        try:
            await self.openrouter.key_info(key)
        except KeyRejected:
            raise KeyNotAccepted from None
        except UpstreamError as e:
            log.info("stored a key without checking it: %s", e.message)
            return e.message
        return None

    async def secret_clear(self) -> dict[str, Any]:
        cleared = await self._secret_call(self.secrets.clear)
        self._replace_unsaved("the key was cleared")
        if cleared:
            self.bus.publish(events.KEY_CHANGED, {"stored": False, "backend": None})
        return {"cleared": cleared}

    async def secret_get(self) -> dict[str, Any]:
        """The stored key; while a key OpenRouter issued waits in memory, that one (the newest), after one
        more try at storing it."""
        if self.unsaved is not None:
            unsaved = self.unsaved
            try:
                await self._store_unsaved()
            except ConvError:
                pass  # still held, and still the key to use
            return {"key": unsaved.key}
        return {"key": await self._secret_call(self.secrets.get)}

    # -- status --------------------------------------------------------------------------------------

    _status_cache: tuple[tuple[Any, ...], protocol.Encoded] | None = None  # (what it depends on, the answer)

    def status(self) -> dict[str, Any]:
        """The answer to ``status``. Built and JSON-encoded only when something in it changed: the socket
        asks for it far more often than it changes, and building and encoding it would more than double
        the cost of a request (bench/ANALYSIS.md). The answer is shared by every caller until then: treat
        it as read-only (a change to it drops its JSON, and the next call builds a new one)."""
        flow = self.flows.latest()
        # Also starts a background refresh when the cached summary is stale.
        account = self.account.snapshot(self.secret_state.stored)
        # Compared with == against the last key: the same objects compare by identity, at no cost.
        key: tuple[Any, ...] = (flow, self.secret_state, len(self.bus), account, self.secrets.last_store, self.unsaved)
        if flow is not None:  # Flow compares by identity; these are the fields that change after creation
            key += (flow.status, flow.error, flow.backend)
        cached = self._status_cache
        if cached is not None and cached[0] == key and cached[1].json is not None:
            return cached[1]
        last_store = self.secrets.last_store
        answer = protocol.Encoded(
            version=__version__,
            protocol=protocol.VERSION,
            pid=os.getpid(),
            http_url=pkce.local_origin(self.endpoint.port),
            port=self.endpoint.port,
            port_fallback=self.endpoint.port_fallback,
            socket=self.endpoint.socket_path,
            flow=flow.public() if flow else None,
            secret=self.secret_state.to_dict(),
            subscribers=len(self.bus),
            account=account,
            settings=self.setup,
            last_store=last_store.to_dict() if last_store else None,
            service=self.service,
            restart_needed=self.restart_needed,
            unsaved_key=self.unsaved.public() if self.unsaved else None,
        )
        answer.json = protocol.encode(answer)
        self._status_cache = (key, answer)
        return answer

    def reconfigure(self, setup: dict[str, Any], restart_needed: list[dict[str, Any]]) -> None:
        """After a reload: the settings `status` reports, and those that wait for a restart."""
        self.setup, self.restart_needed = setup, restart_needed
        self._status_cache = None

    async def close(self) -> None:
        """At shutdown, once no request can come in: the expiry timer and the account check end here."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await self.account.close()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def busy(self) -> bool:
        """Something is going on that an idle exit would lose."""
        return (
            self.flows.pending is not None
            or len(self.bus) > 0
            or self._secret_lock.locked()
            or self.unsaved is not None  # an idle exit would lose it
        )


def _confirmation(code: str, token: str) -> Outcome:
    return Outcome(
        OutcomeKind.CONFIRM,
        "Finish linking your OpenRouter account?",
        "This page was opened with a login code but without the check value (`state`) of the login in "
        "progress. That is how OpenRouter comes back when it does not send `state`, and also how another web "
        "page could slip in a code of its own, to link its account in place of yours. The login is still "
        "waiting.",
        "Press the button only if you approved Convocations on OpenRouter in this browser just now. Otherwise "
        "close this tab; `convctl oauth start --paste` links without this step.",
        form=(code, token),
    )


def _failed_outcome(failure: FlowError) -> Outcome:
    return Outcome(OutcomeKind.FAILED, "Linking failed", failure.message, failure.hint, failure.code)
