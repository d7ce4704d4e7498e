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

from convocationsd.common.peercred import describe_uid, trusted_uid
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
    any entry on the way to it, that belongs to someone other than us or root, or a directory on the way that
    others may write to (a directory that is sticky, such as /tmp, excepted: others cannot swap what is ours
    there). The way is followed as the kernel follows it, one link at a time, so the directory holding a link
    in the middle of a chain is checked too, not only the file's lexical and real parents. Group write is
    "others" too, unless the group is the owner's alone (a user-private group under umask 002, as OpenSSH's
    StrictModes allows it on Debian) and no POSIX ACL is set (with one, the group bits are the ACL's mask,
    which may let named users write). What does not exist yet is skipped: we create it private."""
    path = Path(os.getcwd(), path)  # not abspath: it drops `..` as text, the kernel after following a link
    for entry, st in _on_the_way(path):
        problem, fix = _untrusted(entry, st)
        if problem:
            if entry in (path, Path(os.path.realpath(path))):
                where = f"{path}"
            elif stat.S_ISLNK(st.st_mode):
                where = f"{entry}, a link on the way to {path},"
            else:
                where = f"{entry}, a directory on the way to {path},"
            raise UntrustedConfig(
                f"{where} {problem}, so it is not used: whoever can change it decides where the OpenRouter key is "
                "sent.",
                f"{fix}, then check that the file says only what you wrote.",
            )


def _on_the_way(path: Path) -> list[tuple[Path, os.stat_result]]:
    """Every entry the kernel looks up to open ``path`` (absolute), with its ``lstat``, links resolved one at a
    time: each directory from the root, each link, and what each link leads to; it stops at the first entry
    that does not exist (nothing past it does)."""
    todo = list(reversed(path.parts[1:]))
    current = Path(path.anchor)
    found = {current: _lstat(current)}
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent  # current is resolved, so its parent is the kernel's ".."
            continue
        entry = current / name
        try:
            st = found[entry] = _lstat(entry)
        except FileNotFoundError:
            break
        if not stat.S_ISLNK(st.st_mode):
            current = entry
            continue
        links += 1
        if links > 40:  # the kernel's own limit
            raise _unreadable(path, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))
        try:
            target = os.readlink(entry)
        except OSError as e:
            raise _unreadable(entry, e) from e
        if target.startswith("/"):
            current = Path(path.anchor)
        todo.extend(reversed(target.split("/")))
    return list(found.items())


def _lstat(entry: Path) -> os.stat_result:
    try:
        return os.lstat(entry)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _unreadable(entry, e) from e


def _untrusted(entry: Path, st: os.stat_result) -> tuple[str, str]:
    """(what is wrong with ``entry``, how to fix it), or ("", "") when only we or root can change it."""
    mode = stat.S_IMODE(st.st_mode)
    if not (trusted_uid(st.st_uid) or _unmapped_outside(st.st_uid)):
        return (
            f"belongs to {describe_uid(st.st_uid)}",
            f"Move it away, or have root give it to you: chown {os.getuid()} {entry}",
        )
    if stat.S_ISLNK(st.st_mode) or (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX):
        return "", ""  # a link's own mode means nothing; in a sticky directory others cannot swap what is ours
    if mode & 0o002:
        return f"can be written by other users (mode {mode:04o})", f"Run: chmod go-w {entry}"
    if mode & 0o020:
        if _has_acl(entry):
            return (
                f"can be written by other users (mode {mode:04o}, and a POSIX ACL whose mask, the group bits, "
                "allows writing: the ACL may name other users, so the group being yours alone does not help)",
                f"Run: chmod go-w {entry} (or remove the ACL: setfacl -b {entry})",
            )
        if not _private_group(st.st_gid, st.st_uid):
            return f"can be written by other users (mode {mode:04o})", f"Run: chmod go-w {entry}"
    return "", ""


def _has_acl(entry: Path) -> bool:
    """Whether ``entry`` carries a POSIX access ACL (Linux; elsewhere there is no such attribute to read)."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return False
    try:
        getxattr(entry, "system.posix_acl_access", follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise _unreadable(entry, e) from e
    return True


def _unmapped_outside(uid: int) -> bool:
    """Whether ``uid`` is the kernel's overflow uid, seen from inside a user namespace: there (systemd's
    PrivateUsers=yes, the service's sandbox) only our own uid is mapped, and root's /, /home read as owned
    by it. Such an owner is root or another user outside the namespace, which this process cannot tell
    apart; it is taken as root's, and the mode checks still apply. `convctl doctor`, outside, sees the real
    owner."""
    try:
        with open("/proc/sys/kernel/overflowuid") as f:
            overflow = int(f.read())
        with open("/proc/self/uid_map") as f:
            identity = f.read().split() == ["0", "0", "4294967295"]  # the initial namespace maps every uid
    except (OSError, ValueError):
        return False
    return uid == overflow and not identity


def _private_group(gid: int, owner: int) -> bool:
    """Whether ``owner`` is the one and only member of group ``gid`` (as its primary group, and among its
    listed members); looked up only for a group-writable file, which is rare."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    primary = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    return primary <= {owner} and set(group.gr_mem) <= {name} and bool(primary or group.gr_mem)


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
        make_private_dir(directory)
    except OSError as e:
        raise ConfigError(f"Cannot create {directory}: {e.strerror or e}.", "Check its parent's permissions.") from e


def make_private_dir(directory: Path) -> None:
    """Creates ``directory`` and any missing parents 0700, whatever umask we were given: makedirs' ``mode``
    is only the last one's, and a parent made 0777 under umask 000 would let others swap what is inside."""
    old_umask = os.umask(0o077)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    finally:
        os.umask(old_umask)


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
