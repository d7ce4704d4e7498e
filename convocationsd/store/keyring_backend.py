"""The OS keyring backend (Secret Service, macOS Keychain, Windows Credential Manager) via ``keyring``.

Keyring calls block, and on a desktop they can wait for a person to answer an unlock prompt. Each call
therefore runs in its own daemon thread and the caller waits at most ``timeout`` seconds; after that
the keyring counts as unavailable. A call given up on may still finish later: until it does, further
calls fail at once (so they cannot overtake it), and when it does the owner is told through ``on_late``
so it can undo a write nobody relies on. Every keyring failure becomes BackendUnavailable; no message
ever contains the key. ``keyring`` is imported only inside these calls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from convocationsd.common import session_bus
from convocationsd.core.errors import BackendUnavailable, SecretStoreError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend as Keyring

T = TypeVar("T")

SERVICE = "convocations"
USERNAME = "openrouter_api_key"

UNLOCK_HINT = (
    "Unlock the OS keyring, or set CONVOCATIONS_SECRET_BACKEND=local-encrypted to keep the key in an encrypted file."
)
NO_KEYRING_HINT = (
    "Install and start an OS keyring (GNOME Keyring or KWallet; the Keychain on macOS), or set "
    "CONVOCATIONS_SECRET_BACKEND=local-encrypted to keep the key in an encrypted file."
)


class KeyringMissing(BackendUnavailable):
    """There is no OS keyring here at all (no Secret Service, keyring disabled), as opposed to one that is
    locked or failing: falling back to the encrypted file is then the expected setup, not a problem."""


class KeyringBackend:
    def __init__(
        self,
        *,
        timeout: float = 120.0,
        detect: Callable[[], Keyring] | None = None,
        on_late: Callable[[str], None] | None = None,
    ) -> None:
        """``detect`` returns a keyring backend object (tests inject one); by default keyring detects
        again (``keyring.core.init_backend``). ``on_late(op)`` runs in the worker thread when a ``store``
        or ``delete`` that timed out succeeds after all."""
        self.timeout = timeout
        self._detect_hook = detect
        self.on_late = on_late
        self._backend: Keyring | None = None  # last usable backend detected
        self._state = threading.Lock()
        self._pending: str | None = None  # an abandoned call still running

    # -- operations ------------------------------------------------------------------------------

    def store(self, key: str, service: str = SERVICE, username: str = USERNAME) -> None:
        """Stores the key; detects the keyring again first (a session bus may have appeared)."""

        def op() -> None:
            kr = self._detect()
            kr.set_password(service, username, key)

        self._run("store", op, secret=key)

    def load(self, service: str = SERVICE, username: str = USERNAME) -> str | None:
        return self._run("load", lambda: self._current().get_password(service, username))

    def delete(self, service: str = SERVICE, username: str = USERNAME) -> bool:
        """Removes the entry; False when there was none."""

        def op() -> bool:
            from keyring.errors import PasswordDeleteError

            kr = self._current()
            try:
                kr.delete_password(service, username)
            except PasswordDeleteError:
                return False  # nothing stored (keyring reports "not found" this way)
            return True

        return self._run("delete", op)

    # -- detection ---------------------------------------------------------------------------------

    def _current(self) -> Keyring:
        return self._backend if self._backend is not None else self._detect()

    def _detect(self) -> Keyring:
        try:
            if self._detect_hook is not None:
                kr = self._detect_hook()
            else:
                import keyring
                import keyring.core

                session_bus.export()  # keyring's Secret Service backend reads only DBUS_SESSION_BUS_ADDRESS
                keyring.core.init_backend()
                kr = keyring.get_keyring()
        except ImportError as e:
            raise KeyringMissing(f"The keyring package cannot be loaded ({e.name}).", NO_KEYRING_HINT) from None
        _check_usable(kr)
        self._backend = kr
        return kr

    # -- timed calls -------------------------------------------------------------------------------

    def _run(self, op: str, fn: Callable[[], T], *, secret: str | None = None) -> T:
        with self._state:
            if self._pending is not None:
                raise BackendUnavailable(
                    f"The OS keyring has not yet answered an earlier request ({self._pending}); it may be locked.",
                    UNLOCK_HINT,
                )
        box: dict[str, Any] = {}
        flags = {"finished": False, "abandoned": False}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller, or dropped if it gave up
                box["error"] = e
            with self._state:
                flags["finished"] = True
                late = flags["abandoned"]
                if late:
                    self._pending = None
            if late and "error" not in box and self.on_late is not None and op in ("store", "delete"):
                try:
                    self.on_late(op)
                except Exception:  # nothing to report to: the caller is gone
                    pass

        # A keyring call cannot be interrupted (it waits on D-Bus, maybe on an unlock prompt), so a worker
        # that outlives the timeout is abandoned: ``_pending`` refuses calls until it finishes, and its owner is
        # the process, which a stuck call must not keep alive (daemon=True). In the daemon that process is the
        # secret-store helper, which HelperStore retires, or kills when it does not exit (store/helper.py).
        worker = threading.Thread(target=work, name=f"keyring-{op}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        with self._state:
            if not flags["finished"]:
                flags["abandoned"] = True
                self._pending = op
                raise BackendUnavailable(
                    f"The OS keyring did not answer within {self.timeout:g} s (locked?).", UNLOCK_HINT
                )
        if "error" in box:
            error = box["error"]
            translated = _translate(error, op, secret)
            if translated is error:
                raise error
            leaks = secret is not None and any(secret in t for t in (str(error), repr(error.args)))
            raise translated from (None if leaks else error)  # keep the cause for --debug, unless it holds the key
        return cast(T, box.get("value"))  # fn() returned it: the worker finished without an error


def _check_usable(kr: Keyring) -> None:
    """Raises BackendUnavailable for keyring's stand-ins that cannot hold anything."""
    from keyring.backends import chainer, fail

    name = f"{type(kr).__module__}.{type(kr).__name__}"
    if isinstance(kr, fail.Keyring):
        raise KeyringMissing(f"No OS keyring is available: {_why_none_found()}.", NO_KEYRING_HINT)
    if name == "keyring.backends.null.Keyring" or getattr(kr, "priority", 1) < 0:
        raise KeyringMissing("The OS keyring is disabled (keyring's null backend is configured).", NO_KEYRING_HINT)
    if isinstance(kr, chainer.ChainerBackend) and not kr.backends:
        raise KeyringMissing("No OS keyring is available (keyring found no backend to chain).", NO_KEYRING_HINT)


def _why_none_found() -> str:
    """Why keyring found nothing to use: on Linux, that no Secret Service answers on the session bus (named)."""
    import sys

    if not sys.platform.startswith("linux"):
        return "keyring found no backend for this system"
    bus = session_bus.address(os.environ)
    return f"no Secret Service on the session bus {bus}" if bus else session_bus.NO_BUS


def _translate(e: BaseException, op: str, secret: str | None) -> SecretStoreError:
    """Turns any failure into BackendUnavailable with a safe message (the key is scrubbed out)."""
    if isinstance(e, SecretStoreError):
        return e
    text = f"{type(e).__name__}: {e}".strip().rstrip(":.")
    if secret and secret in text:
        text = text.replace(secret, "[redacted]")
    try:
        from keyring.errors import InitError, KeyringLocked, NoKeyringError
    except ImportError:  # pragma: no cover - keyring imported fine a moment ago
        InitError = KeyringLocked = NoKeyringError = ()  # type: ignore[assignment,misc]
    if isinstance(e, KeyringLocked):
        message = "The OS keyring is locked and could not be unlocked"
    elif isinstance(e, NoKeyringError):
        return KeyringMissing(f"No OS keyring is available ({text}).", NO_KEYRING_HINT)
    elif isinstance(e, InitError):
        message = "The OS keyring could not be opened"
    else:
        message = f"The OS keyring failed to {op} the key"
    return BackendUnavailable(f"{message} ({text}).", UNLOCK_HINT)


def probe_keyring(timeout: float = 5.0) -> tuple[bool, str]:
    """(usable, description) of the OS keyring, for doctor: detected in a thread, so a stuck D-Bus cannot hang it."""
    import threading

    result: list[tuple[bool, str]] = []

    def detect() -> None:
        try:
            import keyring

            session_bus.export()  # the daemon's helper and convctl look on the same bus
            try:
                kr = keyring.core.init_backend() or keyring.get_keyring()
            except Exception:
                kr = keyring.get_keyring()
            try:
                _check_usable(kr)  # the daemon's own rule, so doctor and the daemon never disagree
            except BackendUnavailable as e:
                # Its own words, which say what was not found ("No OS keyring is available: ..."), once.
                result.append((False, e.message[:1].lower() + e.message[1:].rstrip(".")))
            else:
                result.append((True, f"the OS keyring ({type(kr).__module__}.{type(kr).__name__})"))
        except ImportError:
            result.append((False, "the keyring package is not installed"))
        except Exception as e:  # keyring's detection can fail in many ways; all mean "not usable"
            result.append((False, f"the OS keyring could not be detected ({type(e).__name__})"))

    worker = threading.Thread(target=detect, daemon=True)  # abandoned after ``timeout``, as in _run
    worker.start()
    worker.join(timeout)
    if not result:
        return False, f"the OS keyring did not answer within {timeout:g} s"
    return result[0]
