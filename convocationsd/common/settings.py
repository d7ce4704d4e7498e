"""Daemon settings: flag > environment > config file > default. Pure: inputs are plain mappings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, cast

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
    "account_cache_seconds": ("CONVOCATIONS_ACCOUNT_CACHE_SECONDS", "account_cache_seconds"),
    "allow_stateless_callbacks": ("CONVOCATIONS_ALLOW_STATELESS_CALLBACKS", "allow_stateless_callbacks"),
    "allow_port_fallback": ("CONVOCATIONS_ALLOW_PORT_FALLBACK", "allow_port_fallback"),
}

# The top-level keys config.toml may hold for settings (the key reference is store/configured.py's).
CONFIG_KEYS = frozenset(key for _, key in SOURCES.values() if key)
DEFAULT = "the default"  # the source of a value nobody set


# What a reload (SIGHUP) cannot apply: the sockets are bound, the OpenRouter client, the secret helper and the
# desktop connection are built, at start. The other settings change on reload.
RESTART_ONLY = (
    "http_port",
    "socket_path",
    "openrouter_url",
    "secret_backend",
    "desktop_notifications",
    "allow_port_fallback",
)


# setting -> the daemon's flag, where its name differs from the setting's
FLAGS = {"http_port": "--port", "socket_path": "--socket", "config_path": "--config"}


class Settings(NamedTuple):  # not a dataclass: one costs ~1.5 ms to create at import (bench/ANALYSIS.md)
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
    account_cache_seconds: float = 60.0  # `status` shows OpenRouter's answer about the key this long, then asks again
    allow_stateless_callbacks: bool = False  # for an OpenRouter that does not send `state` back
    allow_port_fallback: bool = False  # a busy port chosen by the person may be replaced by a free one


# setting -> its default (socket_path and config_path have none here: they come from ``paths``)
DEFAULTS: Mapping[str, Any] = MappingProxyType(Settings._field_defaults)


def _shown(v: Any) -> str:
    """A value as a person wrote it, for an error message (short: it may be anything)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        text = "".join(c for c in v[:40] if c.isprintable())
        return f'"{text}"' + ("..." if len(v) > 40 else "")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "a list"
    return "a table" if isinstance(v, dict) else "a value of another kind"


def _port(v: Any) -> int:
    wanted = "a whole port number from 1 to 65535 (0 picks a free one)"
    if isinstance(v, int) and not isinstance(v, bool):
        port = v
    elif isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        port = int(v)
    else:
        raise ValueError(f"must be {wanted}, not {_shown(v)}")
    if not 0 <= port <= 65535:
        raise ValueError(f"must be {wanted}, not {_shown(v)}")
    return port


def _url(v: Any) -> str:
    from urllib.parse import urlsplit

    try:
        ok = isinstance(v, str) and v.startswith(("http://", "https://")) and bool(urlsplit(v).hostname)
    except ValueError:  # an unbalanced [ in the host
        ok = False
    if not ok:  # the value is not shown: a URL may carry credentials
        raise ValueError("must be an http:// or https:// URL with a host")
    return cast(str, v).rstrip("/")  # ok: a str


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}, not {_shown(v)}")
        return cast(str, v)  # one of the options

    return check


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"must be true or false, not {_shown(v)}")


def _seconds(v: Any) -> float:
    wanted = "a positive number of seconds (below 10000000)"
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"must be {wanted}, not {_shown(v)}")
    try:
        s = float(v)
    except ValueError:
        raise ValueError(f"must be {wanted}, not {_shown(v)}") from None
    if not 0 < s < 10**7:
        raise ValueError(f"must be {wanted}, not {_shown(v)}")
    return s


def _path(v: Any) -> Path:
    if not isinstance(v, (str, Path)) or not str(v):
        raise ValueError(f"must be a path, not {_shown(v)}")
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
    "account_cache_seconds": _seconds,
    "allow_stateless_callbacks": _bool,
    "allow_port_fallback": _bool,
}


def resolve_with_sources(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config: Mapping[str, Any],
    *,
    socket_path: Path,
    config_path: Path,
) -> tuple[Settings, dict[str, str]]:
    """Builds Settings (``socket_path``/``config_path`` are the defaults from ``paths``), and where each value came
    from: its flag, its variable, "<key> in <file>", or DEFAULT.

    Raises ConfigError naming the source of a bad value (flag, variable or config key)."""
    values: dict[str, Any] = {"socket_path": socket_path, "config_path": config_path}
    sources: dict[str, str] = {}
    for name in Settings._fields:
        env_name, config_key = SOURCES.get(name, (None, None))
        candidates = [
            (flags.get(name), FLAGS.get(name, f"--{name.replace('_', '-')}")),
            (env.get(env_name) if env_name else None, env_name),
            (config.get(config_key) if config_key else None, f"{config_key} in {config_path}"),
        ]
        sources[name] = DEFAULT
        for value, source in candidates:
            if value is None or value == "":
                continue
            values[name] = convert(name, value, str(source))
            sources[name] = str(source)
            break
    return Settings(**values), sources


def convert(name: str, value: Any, source: str) -> Any:
    """One setting's value from ``source``; ConfigError says which and what it must be. The hint does not say
    what to do next (start the daemon again, rerun a command): the program that reports it adds that."""
    try:
        return CONVERT[name](value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"Invalid {name} from {source}: {e}.", "Correct or remove that value.") from None


def config_problems(config: Mapping[str, Any], config_path: Path) -> list[str]:
    """Every invalid value in config.toml, whether or not a flag or variable overrides it (for doctor)."""
    problems = []
    for name, (_, key) in SOURCES.items():
        if key is not None and config.get(key) not in (None, ""):
            try:
                convert(name, config[key], f"{key} in {config_path}")
            except ConfigError as e:
                problems.append(e.message)
    return problems


def shown_key(name: str) -> str:
    """A key from config.toml as it may be shown (it is the person's text: printable, short)."""
    text = "".join(c for c in name[:40] if c.isprintable())
    return text + ("..." if len(name) > 40 else "") or '""'


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` was probably meant to be (a typo, a dash for an underscore), or None."""
    import difflib

    found = difflib.get_close_matches(name.replace("-", "_").lower(), sorted(known), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key_warning(name: str, where: str, known: Iterable[str]) -> str:
    """For example: unknown key htp_port in <where> is ignored (did you mean http_port?)."""
    guess = closest(name, known)
    return f"unknown key {shown_key(name)} in {where} is ignored" + (f" (did you mean {guess}?)" if guess else "")


def public_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe to show in a message, a log or `status` (with
    the stdlib's parser: a daemon that has only answered `status` has not loaded aiohttp's yarl)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except (ValueError, TypeError):
        return "(an invalid URL)"


def reported(name: str, value: Any) -> Any:
    """A setting's value as `status` reports it: JSON, and a URL without credentials."""
    if name == "openrouter_url" and isinstance(value, str):
        return public_url(value)
    return str(value) if isinstance(value, Path) else value


def key_name(name: str) -> str:
    """A setting as config.toml spells it, for a person: ``socket``, not ``socket_path``."""
    return SOURCES.get(name, (None, None))[1] or name


def pending_change(
    name: str, value: Any, source: str, running: Any, when: str = "at restart", still: str = "still"
) -> str:
    """A setting changed, not yet applied. For example: http_port 3201 (http_port in
    /home/you/.config/convocations/config.toml) takes effect at restart; still 3000."""
    return f"{key_name(name)} {_display(value)} ({source}) takes effect {when}; {still} {_display(running)}"


def _display(value: Any) -> str:
    if value is None:
        return "unset (automatic)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
