"""Socket activation under macOS launchd, the counterpart of ``systemd.inherited_sockets``.

launchd does not pass fds through the environment: the job asks for the sockets declared under
``Sockets`` in its plist by name, through ``launch_activate_socket(3)`` in libSystem. This is the only
module with macOS specifics; it imports everywhere and returns no sockets off macOS.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import sys
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

# launch_activate_socket answers these when the process is not a launchd job or the plist has no such
# socket: "not activated", not an error.
_NOT_ACTIVATED = (errno.ESRCH, errno.ENOENT)

_IntArray = ctypes.POINTER(ctypes.c_int)
# int launch_activate_socket(const char *name, int **fds, size_t *cnt);
_SIGNATURE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_IntArray), ctypes.POINTER(ctypes.c_size_t))


def activate_socket(name: str) -> list[socket.socket]:
    """Returns the listening sockets launchd holds for ``name`` (``"ctl"`` or ``"http"``); ``[]`` off macOS or
    when not started by launchd. Raises OSError for any other failure. The sockets are non-blocking and
    close-on-exec; as with systemd, never ``shutdown()`` them."""
    if sys.platform != "darwin":
        return []
    libsystem = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    activate = _SIGNATURE(("launch_activate_socket", libsystem))
    free = libsystem.free
    free.argtypes, free.restype = [ctypes.c_void_p], None
    return _activate(name, activate, free)


def inherited_sockets(names: Iterable[str] = ("ctl", "http")) -> dict[str, list[socket.socket]]:
    """The launchd sockets by name, in the shape ``systemd.inherited_sockets`` returns; ``{}`` when none."""
    found = {name: activate_socket(name) for name in names}
    return {name: socks for name, socks in found.items() if socks}


def _activate(name: str, activate: Callable[..., int], free: Callable[[ctypes.c_void_p], None]) -> list[socket.socket]:
    """The call and the memory handling, apart from loading libSystem so tests can drive it elsewhere."""
    fds = _IntArray()
    count = ctypes.c_size_t(0)
    err = activate(name.encode(), ctypes.byref(fds), ctypes.byref(count))
    if err in _NOT_ACTIVATED:
        log.debug("launchd has no socket %r for this process (%s)", name, errno.errorcode.get(err, err))
        return []
    if err:
        raise OSError(err, f"launch_activate_socket({name!r}) failed: {errno.errorcode.get(err, err)}")
    try:
        numbers = [fds[i] for i in range(count.value)]
    finally:
        if fds:
            free(ctypes.cast(fds, ctypes.c_void_p))  # launchd allocates the array; the caller frees it
    sockets = []
    for fd in numbers:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sock.set_inheritable(False)
        sockets.append(sock)
    return sockets
