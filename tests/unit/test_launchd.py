"""launchd.py off macOS: it imports, finds nothing, and its fd handling works against a stand-in for
launch_activate_socket written with ctypes (same C signature, array malloc'ed like launchd does)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import sys

import pytest

from convocationsd.daemon import launchd

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")
def test_nothing_off_macos():
    assert launchd.activate_socket("ctl") == []
    assert launchd.inherited_sockets() == {}


def fake_launchd(table: dict[str, list[int]], freed: list[int]):
    """A C-callable launch_activate_socket answering from ``table``; ESRCH for unknown names."""

    @launchd._SIGNATURE
    def activate(name, fds_out, count_out):
        fds = table.get(name.decode())
        if fds is None:
            return errno.ESRCH
        array = ctypes.cast(libc.malloc(ctypes.sizeof(ctypes.c_int) * len(fds)), launchd._IntArray)
        for i, fd in enumerate(fds):
            array[i] = fd
        fds_out[0] = array
        count_out[0] = len(fds)
        return 0

    def free(pointer):
        freed.append(pointer.value)
        libc.free(pointer)

    return activate, free


def test_activate_wraps_fds_and_frees_the_array():
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    b = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    freed: list[int] = []
    activate, free = fake_launchd({"http": [a.detach(), b.detach()]}, freed)
    socks = launchd._activate("http", activate, free)
    try:
        assert [s.family for s in socks] == [socket.AF_INET, socket.AF_INET6]
        assert all(not s.getblocking() and not s.get_inheritable() for s in socks)
        assert len(freed) == 1 and freed[0]
    finally:
        for s in socks:
            s.close()


def test_not_a_launchd_job_is_not_an_error():
    freed: list[int] = []
    activate, free = fake_launchd({}, freed)
    assert launchd._activate("ctl", activate, free) == []
    assert freed == []


def test_other_errors_raise():
    @launchd._SIGNATURE
    def activate(name, fds_out, count_out):
        return errno.EALREADY

    with pytest.raises(OSError, match="EALREADY"):
        launchd._activate("ctl", activate, lambda p: None)
