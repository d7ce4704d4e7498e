"""Where files live, and whether the socket's directory is safe to use. Cheap to import: platformdirs is
loaded only when XDG variables do not decide."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from convocationsd.common import trust
from convocationsd.core.errors import ConfigError, ConvError, UntrustedSocket

APP = "convocations"
SOCKET_NAME = "convocationsd.sock"
# The way out of every refusal below.
ELSEWHERE = "CONVOCATIONS_SOCKET (or XDG_RUNTIME_DIR) to a place in a directory only you can write to."


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
        try:
            return Path(platformdirs.user_runtime_dir(APP, appauthor=False))
        except OSError as e:  # newer releases refuse a fallback directory that another user made first
            raise UntrustedSocket(
                f"There is no safe runtime directory for the daemon's socket: {e}.",
                "Set XDG_RUNTIME_DIR to a directory of yours with mode 0700, or CONVOCATIONS_SOCKET to a path in one.",
            ) from None


def default_socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """Where the daemon listens when no flag, variable or config.toml says otherwise."""
    return runtime_dir(env) / SOCKET_NAME


def socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """The socket clients look for (convctl, the client library, doctor): the daemon's own order without its
    flags, that is CONVOCATIONS_SOCKET, else ``socket`` in config.toml, else the default."""
    explicit = env.get("CONVOCATIONS_SOCKET")
    if explicit:
        return Path(explicit)
    return configured_socket(config_path(env)) or default_socket_path(env)


def configured_socket(config: Path) -> Path | None:
    """The top-level ``socket`` of config.toml, as the daemon reads it; None when the file or the key is absent.

    Cheap on the common path: a file that cannot spell the key (no ``socket``, no ``\\u`` escape) is not parsed,
    so `convctl status` does not import tomllib. The file's owner is not checked here (the daemon refuses an
    untrusted config.toml): whatever path it names, a client checks the socket's directory and the uid of
    the process that serves it before it sends a byte, as with CONVOCATIONS_SOCKET.

    Raises ConfigError for a file that is not TOML, or a ``socket`` that is not a path: the daemon would not
    start with it either."""
    try:
        data = config.read_bytes()
    except OSError:  # absent, or unreadable: the daemon reports the latter, and doctor names it
        return None
    if b"socket" not in data and b"\\u" not in data.lower():
        return None
    import tomllib

    try:
        value = tomllib.loads(data.decode("utf-8")).get("socket")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        why = str(e) if isinstance(e, tomllib.TOMLDecodeError) else type(e).__name__  # (it quotes no text)
        raise ConfigError(
            f"{config} is not valid TOML ({why}), so convctl cannot read from it where the daemon's socket is.",
            "Run `convctl doctor`, which names the line, and fix it; or set CONVOCATIONS_SOCKET.",
        ) from None
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        from convocationsd.common.settings import convert

        convert("socket_path", value, f"socket in {config}")  # raises, in the daemon's words
    return Path(value).expanduser()


# -- the socket's directory ---------------------------------------------------------------------------------


def check_socket_dir(directory: Path) -> None:
    """Refuses (UntrustedSocket) a socket directory that another user could change or swap, for the daemon
    before it binds and for clients before they connect.

    The directory itself must not be a symbolic link. The way to it follows config.toml's rule (common/trust):
    every entry on it, links one at a time, belongs to us or root and is writable by no one else unless
    sticky: in /tmp (root's, mode 1777) others cannot remove or rename what is ours, and a socket there is
    born 0600 and its peer's uid is checked, so ``CONVOCATIONS_SOCKET=/tmp/x.sock`` is allowed. What does not
    exist yet is skipped: ``ensure_socket_dir`` creates it 0700."""
    directory = Path(os.getcwd(), directory)  # as the kernel reads it: `..` after following a link
    try:
        st = _lstat(directory)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UntrustedSocket(
                f"The socket directory {directory} is a symbolic link (to {os.readlink(directory)}).",
                f"Remove the link (the daemon creates a real directory), use the directory it points to, or set "
                f"{ELSEWHERE}",
            )
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise UntrustedSocket(f"{directory} is not a directory, so it cannot hold the socket.", f"Set {ELSEWHERE}")
        for entry, st in trust.on_the_way(directory):
            problem, fix = trust.untrusted(entry, st)
            if problem:
                where = (
                    f"The socket directory {directory}"
                    if entry == directory
                    else f"{entry}, on the way to the socket directory {directory},"
                )
                raise UntrustedSocket(
                    f"{where} {problem}, so another user could replace the socket.", f"{fix}; or set {ELSEWHERE}"
                )
    except OSError as e:
        raise UntrustedSocket(
            f"Cannot check {e.filename or directory}, on the way to the daemon's socket: {e.strerror}.",
            f"Set {ELSEWHERE}",
        ) from None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def ensure_socket_dir(directory: Path) -> None:
    """Creates the socket's directory (and missing parents) 0700, and refuses an unsafe one (check_socket_dir)
    before and after: before, so nothing is made inside a directory that others control; after, because an
    existing symbolic link to a directory satisfies mkdir. A directory that already exists is never chmod-ed:
    it is not ours to change (with /tmp that would lock every other user out)."""
    check_socket_dir(directory)
    try:
        trust.make_private_dir(directory)
    except OSError as e:
        raise ConvError(
            f"Cannot create the socket directory {directory}: {e.strerror}.", f"Check the path, or set {ELSEWHERE}"
        ) from None
    check_socket_dir(directory)
