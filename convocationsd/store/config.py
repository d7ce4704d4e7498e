"""The settings a program runs with: config.toml resolved with flags and the environment (flag > environment >
config file > default), where each value came from, and what the file says that nothing reads.

The daemon and convctl both load their settings here, so they agree on every value and every warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from convocationsd.common import paths
from convocationsd.common.settings import (
    CONFIG_KEYS,
    Settings,
    closest,
    resolve_with_sources,
    shown_key,
    unknown_key_warning,
)
from convocationsd.store import configfile
from convocationsd.store.configured import FIELDS, TABLE


class Loaded(NamedTuple):
    settings: Settings
    sources: dict[str, str]  # setting -> its flag, variable, "<key> in <file>", or settings.DEFAULT
    warnings: list[str]  # config_warnings of the file


def load(flags: Mapping[str, Any], env: Mapping[str, str]) -> Loaded:
    """Raises ConfigError for a file that does not parse or a value that is not valid."""
    config_path = Path(flags.get("config_path") or paths.config_path(env)).expanduser()
    config = configfile.load(config_path)
    settings, sources = resolve_with_sources(
        flags, env, config, socket_path=paths.default_socket_path(env), config_path=config_path
    )
    return Loaded(settings, sources, config_warnings(config, config_path))


def config_warnings(config: Mapping[str, Any], path: Path) -> list[str]:
    """What config.toml says that nothing reads: unknown keys (with the closest known one), and settings inside
    the ``[openrouter_api_key]`` table, where they land when appended below it and are ignored."""
    known = CONFIG_KEYS | {TABLE}
    warnings = [unknown_key_warning(name, str(path), known) for name in config if name not in known]
    table = config.get(TABLE)
    if not isinstance(table, dict):
        return warnings
    where = f"the [{TABLE}] table of {path}"
    for name in table:
        if name in FIELDS:
            continue
        guess = closest(name, CONFIG_KEYS | set(FIELDS))
        if name in CONFIG_KEYS or guess in CONFIG_KEYS:
            meant = "" if name in CONFIG_KEYS else f" (did you mean {guess}?)"
            warnings.append(
                f"{shown_key(name)}{meant} is inside {where}, where settings are ignored: move it above that "
                "table (storing a key moves it for you)"
            )
        else:
            warnings.append(unknown_key_warning(name, where, FIELDS))
    return warnings
