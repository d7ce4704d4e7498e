"""Where files live. Cheap to import: platformdirs is loaded only when XDG variables do not decide."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP = "convocations"
SOCKET_NAME = "convocationsd.sock"


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME")
    if base and os.path.isabs(base):
        return Path(base) / APP
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False, roaming=True))


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    explicit = env.get("CONVOCATIONS_CONFIG")
    return Path(explicit) if explicit else config_dir(env) / "config.toml"


def runtime_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return Path(base) / APP
    import warnings

    import platformdirs

    with warnings.catch_warnings():  # it warns when it falls back to /tmp; the daemon says where it listens
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(APP, appauthor=False))


def socket_path(env: Mapping[str, str] = os.environ) -> Path:
    explicit = env.get("CONVOCATIONS_SOCKET")
    return Path(explicit) if explicit else runtime_dir(env) / SOCKET_NAME
