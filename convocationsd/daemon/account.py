"""Account status: the linked key's label, usage and limit from OpenRouter's ``GET /api/v1/key``.

``status`` must answer at once, so it never waits on the network: :meth:`AccountStatus.snapshot` returns
what is cached and, when that is missing or older than the TTL, starts one background refresh. The
refresh asks OpenRouter about the key and caches a small summary. The summary never contains the key. A 401
means the key was revoked (or never worked): it is reported as such until the key changes. A change of key
(``openrouter-key-changed``) drops the cache and refreshes at once, so the account shows up right after a
login.

The key is read from the secret store once, by the first refresh after start-up or after a key change, and
kept for the next refreshes: on a locked Secret Service every read is an unlock prompt, which a background
refresh must not open every TTL (nor disturb a prompt a person is answering).

The TTL is the ``account_cache_seconds`` setting (default 60 s; a reload changes it); tests make it short.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from convocationsd.common.settings import DEFAULTS
from convocationsd.core.errors import ConvError, KeyRejected, UpstreamError
from convocationsd.core.events import KEY_CHANGED, EventBus
from convocationsd.daemon.tasks import TaskSet

if TYPE_CHECKING:
    from convocationsd.daemon.openrouter import OpenRouterApi

log = logging.getLogger(__name__)

DEFAULT_TTL: float = DEFAULTS["account_cache_seconds"]  # the setting's default, from one place
REVOKED_MESSAGE = "linked key is no longer valid — run `convctl oauth start`"
# A key OpenRouter never accepted in this run (typed in with --no-verify, or revoked before we started).
NOT_ACCEPTED_MESSAGE = "the stored key is not accepted by OpenRouter — run `convctl oauth start`"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _label(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = "".join(c for c in value[:80] if c.isprintable())
    # OpenRouter labels some keys with a masked form of the key ("sk-or-v1-abc...xyz"); that is not a
    # secret, but a summary that never looks like a key is easier to trust.
    return text if not text.startswith("sk-") else "(unnamed key)"


def summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The status ``account`` entry for a key OpenRouter accepted (only the fields we show)."""
    return {
        "label": _label(data.get("label")),
        "usage": _number(data.get("usage")),
        "limit": _number(data.get("limit")),
        "limit_remaining": _number(data.get("limit_remaining")),
        "valid": True,
        "message": None,
        "readable": True,
    }


def revoked(accepted_before: bool = True) -> dict[str, Any]:
    return {
        "label": None,
        "usage": None,
        "limit": None,
        "limit_remaining": None,
        "valid": False,
        "message": REVOKED_MESSAGE if accepted_before else NOT_ACCEPTED_MESSAGE,
        "readable": True,
    }


def unknown(message: str, *, readable: bool = True) -> dict[str, Any]:
    """OpenRouter could not be asked: the key may well be fine. ``readable`` False: the store could not give
    the key (a locked keyring), so nothing can use it until that is fixed."""
    return {
        "label": None,
        "usage": None,
        "limit": None,
        "limit_remaining": None,
        "valid": True,
        "message": message,
        "readable": readable,
    }


class AccountCache:
    """A one-entry cache with an injected clock. ``generation`` tells a refresh whether the key changed
    while it ran, so a slow answer about an old key never overwrites the state of a new one."""

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self.value: dict[str, Any] | None = None
        self.fetched_at: float | None = None
        self.generation = 0

    def stale(self) -> bool:
        return self.fetched_at is None or self.clock() - self.fetched_at >= self.ttl

    def put(self, value: dict[str, Any] | None, generation: int) -> bool:
        """Stores ``value`` if no invalidation happened since ``generation`` was read."""
        if generation != self.generation:
            return False
        self.value = value
        self.fetched_at = self.clock()
        return True

    def invalidate(self) -> None:
        self.generation += 1
        self.value = None
        self.fetched_at = None


class AccountStatus:
    """Glue between the cache, the stored key (``read_key``: the controller's, which reads the secret store)
    and the OpenRouter client; ``bus`` tells it when the key changes."""

    def __init__(
        self,
        openrouter: OpenRouterApi,
        read_key: Callable[[], Awaitable[str | None]],
        bus: EventBus,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.openrouter = openrouter
        self.read_key = read_key
        self.cache = AccountCache(ttl, clock)
        self._tasks = TaskSet()  # its refreshes (one at a time: ``_task``), ended by close()
        self._task: asyncio.Task[None] | None = None
        # The key as the store gave it (None: no key), or why it could not be read; see the module doc.
        self._key_read = False
        self._key: str | None = None
        self._key_problem: str | None = None
        self._accepted = False  # OpenRouter accepted this key once: a 401 now means it was revoked
        bus.add_listener(self._on_event)

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == KEY_CHANGED:
            self.cache.invalidate()
            self._key_read, self._key, self._key_problem, self._accepted = False, None, None, False
            if data.get("stored"):
                self._start_refresh()

    def snapshot(self, stored: bool) -> dict[str, Any] | None:
        """What ``status`` shows: the cached summary (None when no key is ``stored`` or none is known yet), the
        cache's own dict, so treat it as read-only: ``status`` asks on every call, and a copy made each time
        would also make its cache compare the summary field by field. Starts a background refresh when the
        cache is stale; never waits for it."""
        if not stored:
            return None
        if self.cache.stale():
            self._start_refresh()
        return self.cache.value

    def _start_refresh(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller in a test): nothing to schedule
            return
        self._task = self._tasks.start(self._refresh_quietly())

    async def close(self) -> None:
        """Ends a refresh that is running; none starts after this (the daemon stops)."""
        await self._tasks.close()

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except asyncio.CancelledError:
            raise
        except Exception:  # a background task must not die noisily; the next status retries
            log.exception("could not refresh the account status")

    async def refresh(self) -> dict[str, Any] | None:
        """Asks OpenRouter now and caches the answer; returns it."""
        generation = self.cache.generation
        if not self._key_read:
            key, problem = await self._read_key()
            if generation != self.cache.generation:
                return None  # the key changed while it was read: the next refresh reads the new one
            self._key_read, self._key, self._key_problem = True, key, problem
        if self._key_problem is not None:  # not read again until the key changes: that read may prompt too
            value = unknown(self._key_problem, readable=False)
            self.cache.put(value, generation)
            return value
        key = self._key
        if not key:
            self.cache.put(None, generation)
            return None
        try:
            data = await self.openrouter.key_info(key)
        except KeyRejected:
            value = revoked(self._accepted)
            log.warning("OpenRouter does not accept the stored key (HTTP 401); it may have been revoked")
        except UpstreamError as e:
            value = unknown(f"could not check the key with OpenRouter: {e.message}")
        else:
            value = summary(data)
            if generation == self.cache.generation:
                self._accepted = True
        self.cache.put(value, generation)
        return value

    async def _read_key(self) -> tuple[str | None, str | None]:
        """(the stored key or None, None) or (None, why it could not be read)."""
        try:
            return await self.read_key(), None
        except ConvError as e:
            return None, f"the stored key could not be read: {e.message}"
