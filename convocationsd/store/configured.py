"""The store the daemon and the CLI use: picks a backend, and records in config.toml where the key is.

On ``set`` the backend is the forced one (CONVOCATIONS_SECRET_BACKEND / ``secret_backend``), else the OS
keyring when it works right now, else the local-encrypted file; the fallback is logged in one line with
the reason, and kept in ``last_store`` for `status`. The reference in config.toml then says which backend
holds the key, so ``get``, ``clear`` and ``status`` never guess, and ``status`` reads only the reference (no
keyring or cryptography import). Switching backends moves the key: the new copy is stored and referenced
before the old one is removed.

The reference is a top-level inline table, ``openrouter_api_key = { backend = "keyring", ... }``, written
before any table: a ``[openrouter_api_key]`` table at the end of the file (the older form, still read) would
swallow every setting a person appends below it. The next write migrates that form, moving whatever else
the person wrote inside the table (comments, settings) to the top level with it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convocationsd.common.settings import shown_key
from convocationsd.core.errors import ConfigError, ConvError, SecretStoreError
from convocationsd.store import configfile
from convocationsd.store.encrypted import KEY_FILE, LocalEncrypted
from convocationsd.store.keyring_backend import SERVICE, USERNAME, KeyringBackend, KeyringMissing
from convocationsd.store.secrets import KEYRING, LOCAL_ENCRYPTED, SecretStatus, SecretStore, StoreOutcome

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """The store's logger. logging is imported when there is something to log, not to read a key: it is ~5 ms
    of a `convctl exec` without a daemon (bench/ANALYSIS.md); the daemon has it loaded anyway."""
    import logging

    return logging.getLogger("convocationsd.store.secrets")


TABLE = "openrouter_api_key"
BACKENDS = (KEYRING, LOCAL_ENCRYPTED)
FIELDS = ("backend", "service", "username", "nonce", "ciphertext")  # what a reference may hold
AGAIN = "Store the key again with `convctl secret set-openrouter-key`, or remove it with `convctl secret clear-openrouter-key`."


def open_store(config_path: Path, *, forced_backend: str | None = None, keyring_timeout: float = 120.0) -> SecretStore:
    """The SecretStore for this config.toml; secret.key lives in the same directory."""
    return ConfiguredStore(config_path, forced_backend=forced_backend, keyring=KeyringBackend(timeout=keyring_timeout))


class ConfiguredStore:
    """Implements the SecretStore protocol on top of config.toml, the OS keyring and secret.key.

    Thread-safe: ``set``/``get``/``clear`` are serialized; ``status`` reads the (atomically written)
    file without waiting for them, so it answers even while a keyring prompt is open."""

    def __init__(
        self, config_path: Path, *, forced_backend: str | None = None, keyring: KeyringBackend | None = None
    ) -> None:
        if forced_backend not in (None, *BACKENDS):
            raise ConfigError(
                f"Unknown secret backend {forced_backend!r}.", "Use 'keyring' or 'local-encrypted', or leave it unset."
            )
        self.config_path = Path(config_path)
        self.forced = forced_backend
        self.keyring = keyring if keyring is not None else KeyringBackend()
        self.keyring.on_late = self._late_keyring_result
        self.local = LocalEncrypted(self.config_path.parent / KEY_FILE)
        self._lock = threading.Lock()
        self.last_store: StoreOutcome | None = None

    # -- the SecretStore protocol --------------------------------------------------------------------

    def status(self) -> SecretStatus:
        ref = self._reference()
        return SecretStatus(True, ref["backend"]) if ref else SecretStatus(False, None)

    def set(self, key: str) -> str:
        if not isinstance(key, str) or not key.strip():
            raise SecretStoreError("The OpenRouter key is empty.", "Pass the key itself (it starts with sk-or-).")
        with self._lock:
            keyring_error: SecretStoreError | None = None
            try:
                backend, keyring_error = self._set(key)
            except ConvError as e:
                self.last_store = StoreOutcome(time.time(), None, error=e.message)
                raise
            self.last_store = StoreOutcome(
                time.time(),
                backend,
                keyring_error.message if keyring_error else None,
                isinstance(keyring_error, KeyringMissing),
            )
            return backend

    def _set(self, key: str) -> tuple[str, SecretStoreError | None]:
        """Stores the key; (the backend that holds it, why the OS keyring was passed over or None)."""
        old = self._old_reference()  # also refuses early when config.toml does not parse
        keyring_error: SecretStoreError | None = None
        backend = self.forced
        if backend in (None, KEYRING):
            try:
                self.keyring.store(key)
                backend = KEYRING
            except SecretStoreError as e:
                if self.forced == KEYRING:
                    raise
                keyring_error, backend = e, LOCAL_ENCRYPTED
                _log().warning(
                    "OS keyring unavailable: %s; storing the OpenRouter key encrypted in %s instead.",
                    e.message.rstrip("."),
                    self.config_path,
                )
        if backend == LOCAL_ENCRYPTED:
            nonce, ciphertext = self.local.encrypt(key)
            new = {"backend": LOCAL_ENCRYPTED, "nonce": nonce, "ciphertext": ciphertext}
        else:
            new = {"backend": KEYRING, "service": SERVICE, "username": USERNAME}
        try:
            self._write_reference(new)
        except ConvError:
            if backend == KEYRING and not _same_keyring_entry(old, new):
                self._remove_keyring_copy(SERVICE, USERNAME, why="config.toml could not be updated")
            raise
        if old and old["backend"] == KEYRING and not _same_keyring_entry(old, new):
            if keyring_error is not None:
                self._report_stale_copy(old, keyring_error.message)
            else:
                self._remove_keyring_copy(old["service"], old["username"], why=f"the key moved to {backend}")
        _log().info("OpenRouter key stored (backend %s).", backend)
        return backend, keyring_error

    def get(self) -> str | None:
        with self._lock:
            ref = self._reference()
            if ref is None:
                return None
            if ref["backend"] == LOCAL_ENCRYPTED:
                return self.local.decrypt(ref["nonce"], ref["ciphertext"], where=str(self.config_path))
            key = self.keyring.load(ref["service"], ref["username"])
            if key is None:
                raise SecretStoreError(
                    f"{self.config_path} says the OpenRouter key is in the OS keyring, but the keyring has no such entry.",
                    AGAIN,
                )
            return key

    def clear(self) -> bool:
        with self._lock:
            try:
                ref = self._reference()
            except ConfigError:
                if self._raw_table() is None:  # config.toml itself is broken: refuse, do not overwrite
                    raise
                ref = None  # a malformed table: removing it is exactly what was asked
            if ref is None and self._raw_table() is None:
                return False
            if ref and ref["backend"] == KEYRING:
                self.keyring.delete(ref["service"], ref["username"])  # if this fails the reference stays
            self._write_reference(None)
            _log().info("OpenRouter key removed.")
            return True

    # -- config.toml -------------------------------------------------------------------------------

    def _raw_table(self) -> Any:
        return configfile.load(self.config_path).get(TABLE)

    def _reference(self) -> dict[str, str] | None:
        """The validated reference, or None when no key is stored. Never echoes values (one may be a key)."""
        raw = self._raw_table()
        if raw is None:
            return None
        where = f"[{TABLE}] in {self.config_path}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{TABLE} in {self.config_path} is not a table (an old plain-text key?).", AGAIN)
        backend = raw.get("backend")
        if backend not in BACKENDS:
            raise ConfigError(f"{where} names no known backend (expected keyring or local-encrypted).", AGAIN)
        if backend == KEYRING:
            fields, defaults = ("service", "username"), {"service": SERVICE, "username": USERNAME}
        else:
            fields, defaults = ("nonce", "ciphertext"), {}
        ref = {"backend": backend}
        for name in fields:
            value = raw.get(name, defaults.get(name))
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} lacks a valid {name!r}.", AGAIN)
            ref[name] = value
        if backend == KEYRING and (ref["service"], ref["username"]) != (SERVICE, USERNAME):
            # Anyone who can edit the reference could otherwise have another item of the same keyring (a
            # GitHub token, say) read, sent to OpenRouter's address as our key, or deleted.
            raise ConfigError(
                f"{where} names a keyring item other than the project's own (service {SERVICE!r}, username "
                f"{USERNAME!r}); no other item is ever read, written or removed.",
                "Remove its `service` and `username` fields if the key is in the project's own item; otherwise "
                + AGAIN[:1].lower()
                + AGAIN[1:],
            )
        return ref

    def _old_reference(self) -> dict[str, str] | None:
        """Like _reference, but a malformed table counts as none (set replaces it); a broken file raises."""
        try:
            return self._reference()
        except ConfigError:
            self._raw_table()  # re-raises when config.toml itself does not parse
            return None

    def _write_reference(self, ref: dict[str, str] | None) -> None:
        configfile.update(self.config_path, lambda doc: write_reference(doc, ref))

    # -- old keyring copies --------------------------------------------------------------------------

    def _remove_keyring_copy(self, service: str, username: str, *, why: str) -> None:
        try:
            if self.keyring.delete(service, username):
                _log().info("Removed the old copy of the OpenRouter key from the OS keyring (%s).", why)
        except SecretStoreError as e:
            self._report_stale_copy({"service": service, "username": username}, e.message)

    def _report_stale_copy(self, old: dict[str, str], reason: str) -> None:
        _log().warning(
            "An old copy of the OpenRouter key may remain in the OS keyring (%s); remove it with "
            "`secret-tool clear service %s username %s`, or store the key again once the keyring works.",
            reason.rstrip("."),
            old["service"],
            old["username"],
        )

    def _late_keyring_result(self, op: str) -> None:
        """A keyring call we gave up on finished after all (someone answered the unlock prompt)."""
        with self._lock:
            try:
                ref = self._reference()
            except ConfigError:
                return
            in_keyring = ref is not None and ref["backend"] == KEYRING
            if op == "store" and not in_keyring:
                # The key went to the fallback; a copy nobody references must not linger in the keyring.
                self._remove_keyring_copy(SERVICE, USERNAME, why="a timed-out keyring write finished late")
            elif op == "delete" and in_keyring:
                self._write_reference(None)  # the clear that timed out did happen: finish it
                _log().info("A timed-out keyring removal finished late; the OpenRouter key reference was removed too.")


def _same_keyring_entry(old: dict[str, str] | None, new: dict[str, str]) -> bool:
    return (
        old is not None
        and old["backend"] == KEYRING
        and new["backend"] == KEYRING
        and (old["service"], old["username"]) == (new["service"], new["username"])
    )


# -- the reference in config.toml ---------------------------------------------------------------------------


def write_reference(doc: Any, ref: dict[str, str] | None) -> Any:
    """The tomlkit document with ``ref`` as a top-level inline table before any table (None: without it).

    A reference in the older ``[openrouter_api_key]`` table form is replaced; what the person wrote inside
    that table besides the reference (comments, settings appended at the end of the file) moves out with it,
    to the top level, in its order. Everything else stays byte for byte where it was."""
    import tomlkit
    from tomlkit.items import AoT, Comment, InlineTable, Table, Whitespace

    body = list(doc.body)
    found = [i for i, (name, _) in enumerate(body) if name is not None and name.key == TABLE]
    moved: list[tuple[Any, Any]] = []
    for i in found:
        old = body[i][1]
        for name, item in old.value.body if isinstance(old, (Table, InlineTable)) else ():
            if isinstance(item, (Table, AoT)):  # [openrouter_api_key.x]: nowhere to move it without renaming it
                raise ConfigError(
                    f"The [{TABLE}] table has a table inside it ({TABLE}.{shown_key(str(name))}), which would "
                    "be lost when the key reference is rewritten.",
                    f"Move that table out of [{TABLE}] (under another name), then try again.",
                )
            if isinstance(old, InlineTable):  # only its keys move, each onto a line of its own
                if name is not None and name.key not in FIELDS:
                    item.trivia.indent = ""
                    moved.append((name, item))
            elif name is None or name.key not in FIELDS:
                moved.append((name, item))
    while moved and isinstance(moved[-1][1], Whitespace):  # the blank lines that ended the table
        moved.pop()
    # An inline reference keeps its place and its comment.
    inline = body[found[0]][1] if len(found) == 1 and not isinstance(body[found[0]][1], Table) else None
    at = found[0] if inline is not None else None
    body = [entry for i, entry in enumerate(body) if i not in found]
    if at is None:
        # After the person's last top-level setting; in a file without one, before the comments that lead into
        # the first table (they describe that table), or at the end.
        tables = [i for i, (_, item) in enumerate(body) if isinstance(item, (Table, AoT))]
        settings = [i for i, (name, _) in enumerate(body) if name is not None and (not tables or i < tables[0])]
        if settings:
            at = settings[-1] + 1
        else:
            at = tables[0] if tables else len(body)
            while at > 0 and isinstance(body[at - 1][1], Comment):
                at -= 1
    entries = moved
    if ref is not None:
        table = tomlkit.inline_table()
        table.update(ref)
        if inline is not None:
            table.trivia.comment_ws, table.trivia.comment = inline.trivia.comment_ws, inline.trivia.comment
        entries = [(tomlkit.key(TABLE), table), *moved]
    if entries and at < len(body) and isinstance(body[at][1], (Table, AoT)):
        entries.append((None, Whitespace("\n")))  # a blank line before the table that follows
    for _, item in [*body[at - 1 : at], *entries] if entries else []:
        if not isinstance(item, Whitespace) and "\n" not in item.trivia.trail:
            item.trivia.trail += "\n"  # it ends its line, or the next item would join it (or its comment)
    new = tomlkit.document()
    new.parsing(True)  # appends as they are: no blank lines or indents added
    for name, item in [*body[:at], *entries, *body[at:]]:
        new.append(name, item)
    new.parsing(False)
    import tomllib

    if tomllib.loads(new.as_string()).get(TABLE) != ref:  # a bug here must not lose the key's whereabouts
        raise ConfigError(
            f"Refusing to write the key reference: it would not read back as written in {TABLE}.",
            "Nothing was changed; please report this.",
        )
    settings_moved = [shown_key(name.key) for name, _ in moved if name is not None]
    if settings_moved:
        _log().warning(
            "Moved %s out of the [%s] table to the top level of config.toml, where settings take effect.",
            ", ".join(settings_moved),
            TABLE,
        )
    return new
