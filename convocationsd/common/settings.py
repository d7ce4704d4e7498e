"""Daemon settings: flag > environment > config file > default. Pure: inputs are plain mappings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from convocationsd.core.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("keyring", "local-encrypted")

# setting -> (environment variable or None, config key or None)
SOURCES: dict[str, tuple[str | None, str | None]] = {
    "http_port": ("RCONV_HTTP_PORT", "http_port"),
    "socket_path": ("CONVOCATIONS_SOCKET", "socket"),
    "openrouter_url": ("CONVOCATIONS_OPENROUTER_URL", "openrouter_url"),
    "log_level": ("CONVOCATIONS_LOG_LEVEL", "log_level"),
    "secret_backend": ("CONVOCATIONS_SECRET_BACKEND", "secret_backend"),
    "desktop_notifications": ("CONVOCATIONS_DESKTOP_NOTIFICATIONS", "desktop_notifications"),
    "idle_exit_seconds": ("CONVOCATIONS_IDLE_EXIT_SECONDS", "idle_exit_seconds"),
    "flow_timeout_seconds": ("CONVOCATIONS_FLOW_TIMEOUT_SECONDS", "flow_timeout_seconds"),
    "exchange_timeout_seconds": ("CONVOCATIONS_EXCHANGE_TIMEOUT_SECONDS", "exchange_timeout_seconds"),
    "keyring_timeout_seconds": ("CONVOCATIONS_KEYRING_TIMEOUT_SECONDS", "keyring_timeout_seconds"),
    "allow_stateless_callbacks": ("CONVOCATIONS_ALLOW_STATELESS_CALLBACKS", "allow_stateless_callbacks"),
}


# setting -> the daemon's flag, where its name differs from the setting's
FLAGS = {"http_port": "--port", "socket_path": "--socket", "config_path": "--config"}


@dataclass(frozen=True)
class Settings:
    socket_path: Path
    config_path: Path
    http_port: int = 3000
    openrouter_url: str = "https://openrouter.ai"
    log_level: str = "info"
    secret_backend: str | None = None
    desktop_notifications: bool | None = None  # None: on when a session bus exists
    idle_exit_seconds: float = 600.0
    flow_timeout_seconds: float = 600.0
    exchange_timeout_seconds: float = 30.0
    keyring_timeout_seconds: float = 120.0  # time for a person to answer an unlock prompt
    allow_stateless_callbacks: bool = False  # for an OpenRouter that does not send `state` back


def _port(v: Any) -> int:
    if isinstance(v, (bool, float)):
        raise ValueError("must be a whole port number from 1 to 65535 (0 picks a free one)")
    port = int(v)
    if not 0 <= port <= 65535:
        raise ValueError("must be a port number from 1 to 65535 (0 picks a free one)")
    return port


def _url(v: Any) -> str:
    from urllib.parse import urlsplit

    if not isinstance(v, str) or not v.startswith(("http://", "https://")) or not urlsplit(v).hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return v.rstrip("/")


def _choice(options: tuple[str, ...]):
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return v

    return check


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ValueError("must be true or false")


def _seconds(v: Any) -> float:
    s = float(v)
    if not 0 < s < 10**7 or isinstance(v, bool):
        raise ValueError("must be a positive number of seconds")
    return s


def _path(v: Any) -> Path:
    if not isinstance(v, (str, Path)) or not str(v):
        raise ValueError("must be a path")
    return Path(v).expanduser()


CONVERT = {
    "http_port": _port,
    "socket_path": _path,
    "config_path": _path,
    "openrouter_url": _url,
    "log_level": _choice(LOG_LEVELS),
    "secret_backend": _choice(BACKENDS),
    "desktop_notifications": _bool,
    "idle_exit_seconds": _seconds,
    "flow_timeout_seconds": _seconds,
    "exchange_timeout_seconds": _seconds,
    "keyring_timeout_seconds": _seconds,
    "allow_stateless_callbacks": _bool,
}


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config: Mapping[str, Any],
    *,
    socket_path: Path,
    config_path: Path,
) -> Settings:
    """Builds Settings; ``socket_path``/``config_path`` are the defaults from ``paths``.

    Raises ConfigError naming the source of a bad value (flag, variable or config key)."""
    values: dict[str, Any] = {"socket_path": socket_path, "config_path": config_path}
    for f in fields(Settings):
        name = f.name
        env_name, config_key = SOURCES.get(name, (None, None))
        candidates = [
            (flags.get(name), FLAGS.get(name, f"--{name.replace('_', '-')}")),
            (env.get(env_name) if env_name else None, env_name),
            (config.get(config_key) if config_key else None, f"{config_key} in {config_path}"),
        ]
        for value, source in candidates:
            if value is None or value == "":
                continue
            try:
                values[name] = CONVERT[name](value)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"Invalid {name} from {source}: {e}.", "Fix that value and start again.") from None
            break
    return Settings(**values)
