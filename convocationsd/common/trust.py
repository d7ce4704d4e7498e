"""Whether a path is only ours (and root's) to change: the one rule for config.toml (store/configfile) and
the socket's directory (common/paths), and the one way to make a private directory.

The way to a path is followed as the kernel follows it, one link at a time, so the directory holding a
link in the middle of a chain is checked too, not only the lexical and real parents. Each entry on it must
belong to us or root; a directory (or file) must be writable by no one else, unless it is a sticky
directory such as /tmp (others cannot swap what is ours there). Group write is "others" too, unless the
group is the owner's alone (a user-private group under umask 002, as OpenSSH's StrictModes allows it on
Debian) and no POSIX ACL is set (with one, the group bits are the ACL's mask, which may let named users
write). Errors are the OSError of the entry that could not be read (its ``filename`` names it): each caller
says it in its own words.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from convocationsd.common.peercred import describe_uid, trusted_uid

MAX_LINKS = 40  # the kernel's own limit


def on_the_way(path: Path) -> list[tuple[Path, os.stat_result]]:
    """Every entry the kernel looks up to open ``path`` (absolute), with its ``lstat``, links resolved one at a
    time: each directory from the root, each link, and what each link leads to; it stops at the first entry
    that does not exist (nothing past it does)."""
    todo = list(reversed(path.parts[1:]))
    current = Path(path.anchor)
    found = {current: os.lstat(current)}
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
            st = found[entry] = os.lstat(entry)
        except FileNotFoundError:
            break
        if not stat.S_ISLNK(st.st_mode):
            current = entry
            continue
        links += 1
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
        target = os.readlink(entry)
        if target.startswith("/"):
            current = Path(path.anchor)
        todo.extend(reversed(target.split("/")))
    return list(found.items())


def untrusted(entry: Path, st: os.stat_result) -> tuple[str, str]:
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
        raise
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
    listed members); looked up only for a group-writable entry, which is rare."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    primary = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    return primary <= {owner} and set(group.gr_mem) <= {name} and bool(primary or group.gr_mem)


def make_private_dir(directory: Path) -> None:
    """Creates ``directory`` and any missing parents 0700, whatever umask we were given: makedirs' ``mode``
    is only the last one's, and a parent made 0777 under umask 000 would let others swap what is inside."""
    old_umask = os.umask(0o077)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    finally:
        os.umask(old_umask)
