"""Who is at the other end of a Unix socket: one answer for the daemon (who is calling?) and for the
clients (who is serving?). Cheap to import: convctl asks it on every connect.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py's enums cost convctl more than the rest of a connect
import os
import struct
import sys

ROOT_UID = 0


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end, None when the system cannot say.

    Linux: SO_PEERCRED, the peer's credentials when it called connect() (seen by the server) or listen()
    (seen by a client). macOS/BSD: LOCAL_PEERCRED, the same moments; the uid is the effective one.
    """
    try:
        if hasattr(socket, "SO_PEERCRED"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid: int = struct.unpack("3i", creds)[1]  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
            return uid
        if sys.platform == "darwin" or "bsd" in sys.platform:
            # struct xucred { u_int cr_version; uid_t cr_uid; ... }; SOL_LOCAL = 0, LOCAL_PEERCRED = 1
            creds = sock.getsockopt(0, 1, 76)
            uid = struct.unpack_from("Ii", creds)[1]
            return uid
    except OSError:
        return None
    return None


def trusted_uid(uid: int | None) -> bool:
    """Ours, or root's: root can read our files anyway, so a directory or server of root's gives nothing
    away (and on macOS launchd, running as root, may be the one listening on a socket-activated agent's socket)."""
    return uid is not None and uid in (os.getuid(), ROOT_UID)


def describe_uid(uid: int | None) -> str:
    """``alice (uid 1000)``, for messages that must name another user."""
    if uid is None:
        return "an unknown user"
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
