"""What the daemon does, whichever door a request comes through (HTTP routes, IPC methods, D-Bus).

The flow of data is start -> (browser) -> callback -> exchange -> store -> event. This module runs it:
it owns the session store, calls OpenRouter, hands the key to the secret store, and publishes events.
It knows nothing about HTTP or sockets; they translate their requests into these calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__, events, pkce, protocol
from .errors import ConvError, SecretStoreError, UsageError
from .flows import CallbackRejected, Flow, FlowError, FlowStore
from .secretstore import SecretStatus, SecretStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a callback came to, in words a person can act on (rendered as the result page)."""

    kind: str  # "success" | "failed" | "ignored"
    title: str
    message: str
    hint: str = ""
    code: str | None = None  # the event's error code, or the rejection reason


@dataclass(frozen=True)
class Endpoint:
    port: int
    port_fallback: bool
    socket_path: str


DENIED = FlowError(
    "access_denied",
    "You declined the request on OpenRouter, so no key was created.",
    "If that was a mistake, run `convctl oauth start` again and choose Authorize.",
)


class Controller:
    def __init__(
        self,
        *,
        endpoint: Endpoint,
        openrouter_url: str,
        openrouter: Any,  # openrouter.OpenRouterClient (imported by the daemon, kept out of this module)
        secrets: SecretStore,
        bus: events.EventBus,
        flow_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
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
            clock=clock,
        )
        self._expiry: asyncio.TimerHandle | None = None
        self._secret_lock = asyncio.Lock()
        self.last_activity = time.monotonic()
        self.secret_state = SecretStatus(False, None)  # cached so that `status` never waits on a backend
        from .account import AccountStatus

        self.account = AccountStatus(self)  # the key's label/usage from OpenRouter, cached, refreshed in the background

    # -- flows ---------------------------------------------------------------------------------------

    def start(self, *, restart: bool = False, paste: bool = False) -> dict:
        result = self.flows.start(restart=restart, paste=paste)
        if result.cancelled is not None:
            self._publish_complete(result.cancelled)
        flow = result.flow
        if not result.joined:
            log.info("login %s started; waiting for the browser (expires %s)", flow.session_id, flow.public()["expires_at"])
            self.bus.publish(
                events.AUTH_STARTED,
                {"session_id": flow.session_id, "auth_url": flow.auth_url, "expires_at": flow.public()["expires_at"]},
            )
            self._schedule_expiry(flow)
        return flow.start_reply(result.joined)

    def cancel(self, session_id: str | None = None) -> bool:
        flow = self.flows.cancel(session_id)
        if flow is None:
            return False
        log.info("login %s cancelled", flow.session_id)
        self._publish_complete(flow)
        return True

    def _schedule_expiry(self, flow: Flow) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, flow.expires_at - self.clock())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        flow = self.flows.expire_due()
        if flow is not None:
            log.info("login %s timed out", flow.session_id)
            self._publish_complete(flow)
        elif self.flows.pending is not None and self.flows.pending.status == "pending":
            self._schedule_expiry(self.flows.pending)

    async def callback(self, code: str | None, state: str | None) -> Outcome:
        if not code:
            return Outcome(
                "ignored",
                "Nothing to do",
                "This address expects a login code from OpenRouter, and none came with it.",
                "Start a login with `convctl oauth start` or the Link OpenRouter button.",
                "no_code",
            )
        try:
            flow = self.flows.claim_code(code, state)
        except CallbackRejected as e:
            log.warning("ignored a callback: %s", e.reason)
            return Outcome("ignored", "This link was ignored", e.message, e.hint, e.reason)
        return await self._exchange(flow, code, stateless=state is None)

    def callback_error(self, error: str, description: str | None, state: str | None) -> Outcome:
        try:
            flow = self.flows.claim_error(state)
        except CallbackRejected as e:
            log.warning("ignored an error callback: %s", e.reason)
            return Outcome("ignored", "This link was ignored", e.message, e.hint, e.reason)
        if error == "access_denied":
            failure = DENIED
        else:
            failure = FlowError(
                "exchange_failed",
                f"OpenRouter did not authorize the login ({_printable(error)}).",
                "Run `convctl oauth start` to try again; `convctl doctor` checks the usual causes.",
            )
        self.flows.finish(flow, failure)
        log.info("login %s ended by OpenRouter: %s", flow.session_id, failure.code)
        self._publish_complete(flow)
        return _failed_outcome(failure)

    async def exchange_pasted(self, code: str, session_id: str | None) -> dict:
        pending = self.flows.pending
        if pending is None or not pending.paste or (session_id and session_id != pending.session_id):
            raise UsageError(
                "No paste-mode login is waiting for a code.", "Run `convctl oauth start --paste` first."
            )
        try:
            flow = self.flows.claim_code(code.strip(), None)
        except CallbackRejected as e:
            raise ConvError(e.message, e.hint) from None
        outcome = await self._exchange(flow, code.strip(), stateless=False)
        return {"success": outcome.kind == "success", "backend": flow.backend, "error": flow.error.to_dict() if flow.error else None}

    async def _exchange(self, flow: Flow, code: str, *, stateless: bool) -> Outcome:
        from .openrouter import UpstreamError

        try:
            result = await self.openrouter.exchange(code, flow.verifier)
        except UpstreamError as e:
            if stateless and e.code_rejected:
                # Without a state we cannot tell our code from a stray one; PKCE just told us it was not
                # ours, so the real login goes on.
                self.flows.release(flow)
                log.warning("ignored a callback whose code OpenRouter rejected for this login")
                return Outcome(
                    "ignored",
                    "This link was ignored",
                    "OpenRouter did not accept this code for the login in progress.",
                    "Finish the login from the browser tab that `convctl oauth start` opened.",
                    "code_rejected",
                )
            failure = e.flow_error
            if failure.code == "app_conflict":
                from .openrouter import app_conflict_hint

                failure = FlowError(failure.code, failure.message, app_conflict_hint(self.endpoint.port, self.endpoint.port_fallback))
            self.flows.finish(flow, failure)
            log.warning("login %s failed: %s (%s)", flow.session_id, failure.code, failure.message)
            self._publish_complete(flow)
            return _failed_outcome(failure)
        except asyncio.CancelledError:
            self.flows.release(flow)
            raise
        if flow.done:  # cancelled (restart, Ctrl-C, shutdown) while OpenRouter answered: respect that
            log.warning("login %s was cancelled during the exchange; the new key was not stored", flow.session_id)
            return _failed_outcome(flow.error or FlowError("cancelled", "The login was cancelled."))
        try:
            backend = await self._store_key(result.key)
        except SecretStoreError as e:
            failure = FlowError("storage_failed", f"The key was created but could not be saved: {e.message}", e.hint)
            self.flows.finish(flow, failure)
            log.error("login %s: %s", flow.session_id, failure.message)
            self._publish_complete(flow)
            return _failed_outcome(failure)
        self.flows.finish(flow, None, backend)
        log.info("login %s succeeded; key stored in %s", flow.session_id, backend)
        self._publish_complete(flow)
        self.bus.publish(events.KEY_CHANGED, {"stored": True, "backend": backend})
        return Outcome(
            "success",
            "OpenRouter account linked",
            "Convocations can now use your OpenRouter account.",
            "You can close this tab.",
        )

    def _publish_complete(self, flow: Flow) -> None:
        self.bus.publish(
            events.AUTH_COMPLETE,
            {
                "session_id": flow.session_id,
                "success": flow.error is None,
                "backend": flow.backend,
                "error": flow.error.to_dict() if flow.error else None,
            },
        )

    # -- secrets -------------------------------------------------------------------------------------

    async def _secret_call(self, fn: Callable, *args: Any) -> Any:
        # Backends block (keyring may wait for an unlock prompt) and bound their own time; one at a time.
        async with self._secret_lock:
            return await asyncio.to_thread(fn, *args)

    async def _store_key(self, key: str) -> str:
        try:
            return await self._secret_call(self.secrets.set, key)
        finally:
            await self.refresh_secret_status()

    async def refresh_secret_status(self) -> dict:
        self.secret_state = await asyncio.to_thread(self.secrets.status)
        return self.secret_state.to_dict()

    async def secret_status(self) -> dict:
        async with self._secret_lock:
            return await self.refresh_secret_status()

    async def secret_set(self, key: str) -> dict:
        from .keycheck import check_key

        key = check_key(key)
        backend = await self._store_key(key)
        self.bus.publish(events.KEY_CHANGED, {"stored": True, "backend": backend})
        return {"stored": True, "backend": backend}

    async def secret_clear(self) -> dict:
        try:
            cleared = await self._secret_call(self.secrets.clear)
        finally:
            await self.refresh_secret_status()
        if cleared:
            self.bus.publish(events.KEY_CHANGED, {"stored": False, "backend": None})
        return {"cleared": cleared}

    async def secret_get(self) -> dict:
        return {"key": await self._secret_call(self.secrets.get)}

    # -- status --------------------------------------------------------------------------------------

    _status_cache: tuple[tuple, dict, bytes] | None = None  # (what it depends on, the answer, its JSON)

    def status(self) -> dict:
        """The answer to ``status``. Built and JSON-encoded only when something in it changed: the socket
        asks for it far more often than it changes, and building it (two timestamps) and encoding it were
        most of a round trip. Callers get their own top-level copy; treat the nested dicts as read-only."""
        flow = self.flows.latest()
        account = self.account.snapshot()  # also starts a background refresh when the cached one is stale
        key = (
            flow,  # Flow compares by identity; the fields below are the ones that change after creation
            None if flow is None else (flow.status, flow.error, flow.backend),
            self.secret_state,
            len(self.bus),
            account,
        )
        cached = self._status_cache
        if cached is None or cached[0] != key:
            answer = {
                "version": __version__,
                "pid": os.getpid(),
                "http_url": pkce.local_origin(self.endpoint.port),
                "port": self.endpoint.port,
                "port_fallback": self.endpoint.port_fallback,
                "socket": self.endpoint.socket_path,
                "flow": flow.public() if flow else None,
                "secret": self.secret_state.to_dict(),
                "subscribers": len(self.bus),
                "account": account,
            }
            cached = self._status_cache = (key, answer, protocol.encode(answer))
        answer = protocol.Encoded(cached[1])
        answer.json = cached[2]
        return answer

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def busy(self) -> bool:
        """Something is going on that an idle exit would lose."""
        return self.flows.pending is not None or len(self.bus) > 0 or self._secret_lock.locked()


def _failed_outcome(failure: FlowError) -> Outcome:
    return Outcome("failed", "Linking failed", failure.message, failure.hint, failure.code)


def _printable(text: str) -> str:
    return "".join(c for c in text[:64] if c.isprintable())
