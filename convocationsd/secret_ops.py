"""Secret commands: through the daemon when it runs (so subscribers hear of the change), else
directly on the files with the same store code the daemon uses."""

from __future__ import annotations

import os

from .errors import DaemonUnreachable
from .ipc_client import Client


def _via_daemon(socket: str | None, method: str, params: dict | None = None) -> dict | None:
    try:
        with Client(socket, timeout=150.0) as c:  # a keyring unlock prompt may take a person a while
            return c.call(method, params)
    except DaemonUnreachable:
        return None


def _direct_store():
    from . import configfile, paths
    from .secretstore.select import open_store

    config_path = paths.config_path(os.environ)
    forced = os.environ.get("CONVOCATIONS_SECRET_BACKEND") or configfile.load(config_path).get("secret_backend")
    return open_store(config_path, forced_backend=forced or None)


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
