"""The systemd side of the daemon in pure Python: socket activation, sd_notify, journal detection.

No libsystemd: the protocols are a few environment variables and one datagram, documented in
sd_listen_fds(3) and sd_notify(3), and a C dependency would make the daemon harder to install.
Works the same under a real manager and under ``systemd-socket-activate`` (used by the tests).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3  # the first inherited fd; 0-2 are stdio
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
UNKNOWN_NAME = "unknown"  # systemd's name for an fd without FileDescriptorName=


def inherited_sockets(env: Mapping[str, str] = os.environ, *, unset_env: bool = True) -> dict[str, list[socket.socket]]:
    """Returns the listening sockets the service manager passed in, grouped by FileDescriptorName.

    ``{"ctl": [unix socket], "http": [127.0.0.1 socket, ::1 socket]}`` under the shipped units; ``{}`` when
    not socket-activated (then the daemon binds its own). The sockets are non-blocking and close-on-exec.

    LISTEN_PID guards against variables inherited by a child that was not the intended receiver; with
    ``unset_env`` they are removed from ``os.environ`` so our own children never see them. The caller owns
    the sockets but must never ``shutdown()`` them: systemd holds the same listening socket, and a shutdown
    would stop it accepting for the next activation too. ``close()`` is fine.
    """
    try:
        return _parse(env)
    finally:
        if unset_env:
            for name in LISTEN_VARS:
                os.environ.pop(name, None)


def _parse(env: Mapping[str, str]) -> dict[str, list[socket.socket]]:
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if not pid or not count:
        return {}
    try:
        pid_n, count_n = int(pid), int(count)
    except ValueError:
        log.warning("Ignoring malformed socket activation variables LISTEN_PID=%r LISTEN_FDS=%r", pid, count)
        return {}
    if pid_n != os.getpid():
        log.debug("LISTEN_PID=%d is not this process (%d): sockets were meant for another", pid_n, os.getpid())
        return {}
    if count_n <= 0:
        return {}

    names = env["LISTEN_FDNAMES"].split(":") if env.get("LISTEN_FDNAMES") else []
    if names and len(names) != count_n:
        log.warning(
            "LISTEN_FDNAMES has %d names for %d fds; unnamed fds are called %r", len(names), count_n, UNKNOWN_NAME
        )
    names += [UNKNOWN_NAME] * (count_n - len(names))

    found: dict[str, list[socket.socket]] = {}
    for offset, name in enumerate(names[:count_n]):
        fd = SD_LISTEN_FDS_START + offset
        try:
            sock = socket.socket(fileno=fd)  # family, type and protocol are read from the fd
        except OSError as e:
            # A FIFO or a closed fd; not something the units pass. Leave the fd alone.
            log.warning("Inherited fd %d (%s) is not a usable socket: %s", fd, name, e)
            continue
        sock.setblocking(False)
        sock.set_inheritable(False)
        found.setdefault(name or UNKNOWN_NAME, []).append(sock)
    return found


def notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    """Sends one sd_notify message (``"READY=1"``, ``"STATUS=..."``, ``"STOPPING=1"``, several joined by
    newlines) to the service manager. Returns whether it was sent.

    A no-op returning False without NOTIFY_SOCKET. Never raises: a lost status line must not take the
    daemon down. The short send timeout keeps a stuck manager from blocking the event loop for long.
    """
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # Linux abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        log.debug("Unsupported NOTIFY_SOCKET address %r; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(2.0)
            sock.sendto(message.encode(), target)
    except OSError as e:
        log.debug("sd_notify %r to %s failed: %s", message, address, e)
        return False
    return True


def under_journal(env: Mapping[str, str] = os.environ) -> bool:
    """True when a service manager runs us (stderr then goes to the journal, which adds its own
    timestamps and understands ``<N>`` priority prefixes)."""
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def service_unit(env: Mapping[str, str] = os.environ, cgroup: str = "/proc/self/cgroup") -> str | None:
    """The name of the systemd service that runs us ("convocationsd.service"), or None when none does.

    systemd sets INVOCATION_ID for the processes of a unit (``systemd-socket-activate`` does not), and the
    unit is the leaf of our cgroup: ``0::/user.slice/.../app.slice/convocationsd.service``. A shell started
    from another service (a terminal server's) inherits its INVOCATION_ID and cgroup too, so only a unit
    named for us counts: naming another would send the person to restart the wrong thing."""
    if not env.get("INVOCATION_ID"):
        return None
    try:
        with open(cgroup, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        leaf = line.rpartition(":")[2].rstrip("/").rpartition("/")[2]
        if leaf.startswith("convocationsd") and leaf.endswith(".service"):
            return leaf
    return None
