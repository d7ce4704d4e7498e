"""Secret commands: through the daemon when it runs (so subscribers hear of the change), else
directly on the files with the same store code the daemon uses."""

from __future__ import annotations

import os

from convocationsd.client import Client
from convocationsd.core.errors import DaemonUnreachable


def _via_daemon(socket: str | None, method: str, params: dict | None = None) -> dict | None:
    """The daemon's answer, or None when no daemon can be reached (then the caller uses the files).
    Only a failed connect means that: once connected, every error propagates (NoReply, RemoteError, a
    disconnect mid-call), since the daemon may still be writing the store and two writers must not race."""
    client = Client(socket, timeout=150.0)  # a keyring unlock prompt may take a person a while
    try:
        client.connect()
    except DaemonUnreachable:
        return None
    try:
        return client.call(method, params)
    finally:
        client.close()


def _direct_store():
    from convocationsd.common import paths
    from convocationsd.common.settings import resolve
    from convocationsd.store import configfile
    from convocationsd.store.select import open_store

    # The daemon's own resolver, so the backend and the keyring timeout are chosen as the daemon would.
    config_path = paths.config_path(os.environ)
    s = resolve(
        {}, os.environ, configfile.load(config_path), socket_path=paths.socket_path(os.environ), config_path=config_path
    )
    return open_store(s.config_path, forced_backend=s.secret_backend, keyring_timeout=s.keyring_timeout_seconds)


def status(socket: str | None) -> dict:
    reply = _via_daemon(socket, "secret.status")
    return reply if reply is not None else _direct_store().status().to_dict()


def set_key(socket: str | None, key: str) -> dict:
    reply = _via_daemon(socket, "secret.set", {"key": key})
    if reply is not None:
        return reply
    return {"stored": True, "backend": _direct_store().set(key)}


def clear(socket: str | None) -> dict:
    reply = _via_daemon(socket, "secret.clear")
    return reply if reply is not None else {"cleared": _direct_store().clear()}
