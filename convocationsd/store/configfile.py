"""Reading and safely rewriting config.toml.

Reads use the stdlib ``tomllib`` (fast, no tomlkit import), so ``convctl secret status`` stays light.
Writes go through ``tomlkit`` so the person's comments, key order and unknown keys survive, and they are
made safe against the daemon and a CLI writing at once (an advisory ``flock`` on a lock file beside the
config) and against a crash mid-write (temp file in the same dir, fsync, ``os.replace``, fsync the dir).
A file that does not parse is reported with its line and column and is never overwritten.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convocationsd.common import trust
from convocationsd.core.errors import ConfigError, UntrustedConfig

if TYPE_CHECKING:  # tomlkit is imported only when writing
    import tomlkit

LOCK_TIMEOUT = 10.0  # seconds; writers hold the lock for milliseconds


def load(path: Path) -> dict[str, Any]:
    """Returns config.toml as plain Python values; ``{}`` when the file does not exist. Raises
    UntrustedConfig for a file that others could have changed (``check_trusted``)."""
    path = Path(path)
    check_trusted(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise _unreadable(path, e) from e
    return _parse(path, data)


def update(path: Path, mutate: Callable[[tomlkit.TOMLDocument], tomlkit.TOMLDocument | None]) -> None:
    """Applies ``mutate`` to the document (in place, or returning a new one) and writes it back atomically
    under the advisory lock.

    Raises ConfigError (and writes nothing) when the existing file cannot be read or parsed."""
    import tomlkit

    check_trusted(Path(path))
    path = Path(os.path.realpath(path))  # write through a symlinked config, do not replace the link
    directory = path.parent
    _make_dir(directory)
    lock_fd = _lock(directory / f".{path.name}.lock", path)
    try:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as e:
            raise _unreadable(path, e) from e
        _parse(path, data)  # reports line/column the same way reads do; tomlkit agrees on validity
        text = data.decode("utf-8")
        try:
            doc = tomlkit.parse(text)
        except tomlkit.exceptions.ParseError as e:
            raise _syntax_error(path, str(e).split(" at line ")[0], e.line, e.col + 1) from None
        changed = mutate(doc)
        if changed is not None:  # not `or`: an empty document is falsy
            doc = changed
        new_text = tomlkit.dumps(doc)
        import tomllib

        try:
            tomllib.loads(new_text)
        except tomllib.TOMLDecodeError as e:  # a bug in the caller's mutation; keep the old file
            raise ConfigError(
                f"Refusing to write {path}: the change would make it invalid TOML ({e}).",
                "Nothing was changed; please report this.",
            ) from None
        _remove_stale_temps(path)
        _atomic_write(path, new_text.encode("utf-8"))
    finally:
        os.close(lock_fd)  # also releases the flock


# -- who may change it --------------------------------------------------------------------------------


def check_trusted(path: Path) -> None:
    """Refuses (UntrustedConfig) a config.toml that another user could have written or swapped: the file, or
    any entry on the way to it, by the rule of common/trust (ours or root's, written by no one else, the
    way followed one link at a time). What does not exist yet is skipped: we create it private."""
    path = Path(os.getcwd(), path)  # not abspath: it drops `..` as text, the kernel after following a link
    try:
        for entry, st in trust.on_the_way(path):
            problem, fix = trust.untrusted(entry, st)
            if problem:
                if entry in (path, Path(os.path.realpath(path))):
                    where = f"{path}"
                elif stat.S_ISLNK(st.st_mode):
                    where = f"{entry}, a link on the way to {path},"
                else:
                    where = f"{entry}, a directory on the way to {path},"
                raise UntrustedConfig(
                    f"{where} {problem}, so it is not used: whoever can change it decides where the OpenRouter key "
                    "is sent.",
                    f"{fix}, then check that the file says only what you wrote.",
                )
    except OSError as e:
        raise _unreadable(Path(e.filename) if e.filename else path, e) from e


# -- parsing ---------------------------------------------------------------------------------------

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = re.compile(r"\s*\(at end of document\)$")


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    import tomllib  # when there is a file to read: ~3 ms of a daemon's start, none of a daemon without one

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _position(data[: e.start].decode("utf-8", "replace"), len(data[: e.start]))
        raise _syntax_error(path, "The file is not valid UTF-8", line, col) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _POSITION.search(message)
        if m:
            line, col = int(m.group(1)), int(m.group(2))
        else:
            line, col = _position(text, len(text))
        message = _AT_END.sub("", _POSITION.sub("", message))
        raise _syntax_error(path, message, line, col) from None
    except (ValueError, RecursionError) as e:  # deep nesting or odd dates tomllib does not wrap
        line, col = _position(text, len(text))
        raise _syntax_error(path, f"Unreadable value ({type(e).__name__})", line, col) from None


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


def _syntax_error(path: Path, what: str, line: int, col: int) -> ConfigError:
    return ConfigError(
        f"{path} is not valid TOML: {what} at line {line}, column {col}.",
        f"Fix that line in {path} (it was not changed), then try again.",
    )


def _unreadable(path: Path, e: OSError) -> ConfigError:
    return ConfigError(
        f"Cannot read {path}: {e.strerror or e}.",
        "Check that the file is a readable regular file owned by you.",
    )


# -- writing ---------------------------------------------------------------------------------------


def _make_dir(directory: Path) -> None:
    try:
        trust.make_private_dir(directory)
    except OSError as e:
        raise ConfigError(f"Cannot create {directory}: {e.strerror or e}.", "Check its parent's permissions.") from e


def _lock(lock_path: Path, path: Path) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ConfigError(
            f"Cannot open the lock file {lock_path}: {e.strerror or e}.", "Check the directory's permissions."
        ) from e
    deadline = time.monotonic() + LOCK_TIMEOUT
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                os.close(fd)
                raise ConfigError(
                    f"{path} is locked by another process.",
                    "Another convocations process is writing it; try again in a moment.",
                ) from e
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    """Only lock holders create temp files, so any left over were abandoned by a killed writer."""
    prefix = _temp_prefix(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f"{_temp_prefix(path)}{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConfigError(
            f"Cannot write {path}: {e.strerror or e}.", "Check free space and the directory's permissions."
        ) from e
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Makes a rename or a new file in ``directory`` durable (best effort where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)
