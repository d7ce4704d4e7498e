"""Who is at the other end of a Unix socket, and whose uid is trusted: real socket pairs (the kernel's own
answer), and credentials given by hand where this machine cannot produce them (a uid that differs from the
gid when the tests run as a user whose ids are equal; macOS's LOCAL_PEERCRED, which Linux has not)."""

from __future__ import annotations

import os
import socket
import struct
import sys

import pytest

from convocationsd.common import peercred


class Creds:
    """A socket whose getsockopt answers with given bytes, and records what it was asked."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.asked: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked.append((level, option, size))
        if self.answer is None:
            raise OSError(9, "Bad file descriptor")
        return self.answer


def another_uid() -> int:
    """A uid that is neither ours nor root's."""
    return 4242 if os.getuid() != 4242 else 4243


# -- peer_uid --------------------------------------------------------------------------------------------


def test_a_socket_pair_names_our_uid():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peercred.peer_uid(a) == peercred.peer_uid(b) == os.geteuid()


def test_the_uid_is_read_not_the_gid_nor_the_pid():
    """The kernel's credentials are (pid, uid, gid). As root both ids are 0, so here the socket pair is made
    with another effective gid (root may take any); for a user whose ids are equal, the same answer is
    given by hand."""
    if os.geteuid() == 0:
        gid = 4242
        os.setegid(gid)
        try:
            a, b = socket.socketpair(socket.AF_UNIX)  # its credentials are those of this moment
        finally:
            os.setegid(0)
        with a, b:
            assert peercred.peer_uid(a) == 0
            assert struct.unpack("3i", a.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[2] == gid
    elif os.getuid() != os.getgid():
        a, b = socket.socketpair(socket.AF_UNIX)
        with a, b:
            assert peercred.peer_uid(a) == os.getuid() != os.getgid()
    pid, uid, gid = 31337, 1001, 1002
    sock = Creds(struct.pack("3i", pid, uid, gid))
    assert peercred.peer_uid(sock) == uid  # type: ignore[arg-type]
    assert sock.asked == [(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))]


def test_a_socket_the_system_cannot_ask_has_no_uid():
    a, b = socket.socketpair(socket.AF_UNIX)
    b.close()
    a.close()
    assert peercred.peer_uid(a) is None  # EBADF
    assert peercred.peer_uid(Creds(None)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("platform", ["darwin", "freebsd14"])
def test_macos_and_bsd_read_cr_uid_of_local_peercred(monkeypatch, platform):
    """struct xucred {u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]} (76 bytes),
    asked with SOL_LOCAL (0) and LOCAL_PEERCRED (1). Linux has no such call, so the answer is made here."""
    monkeypatch.delattr(peercred.socket, "SO_PEERCRED")  # the module peercred asks (_socket)
    monkeypatch.setattr(sys, "platform", platform)
    uid, gid = 501, 20
    sock = Creds(struct.pack("IihxxI", 0, uid, 1, gid) + bytes(60))
    assert peercred.peer_uid(sock) == uid  # type: ignore[arg-type]
    assert sock.asked == [(0, 1, 76)]
    assert peercred.peer_uid(Creds(None)) is None  # type: ignore[arg-type]


def test_a_system_with_neither_call_names_no_uid(monkeypatch):
    monkeypatch.delattr(peercred.socket, "SO_PEERCRED")  # the module peercred asks (_socket)
    monkeypatch.setattr(sys, "platform", "sunos5")
    sock = Creds(struct.pack("3i", 1, 2, 3))
    assert peercred.peer_uid(sock) is None  # type: ignore[arg-type]
    assert sock.asked == []


# -- trusted_uid -----------------------------------------------------------------------------------------


def test_only_our_uid_and_roots_are_trusted():
    assert peercred.trusted_uid(os.getuid())
    assert peercred.trusted_uid(0)
    assert not peercred.trusted_uid(another_uid())
    assert not peercred.trusted_uid(None)


def test_trust_follows_the_real_uid_not_the_gid(monkeypatch):
    """As an ordinary user, whose uid and gid differ: the uid 1001 is trusted, its gid 1002 is not."""
    monkeypatch.setattr(os, "getuid", lambda: 1001)
    monkeypatch.setattr(os, "getgid", lambda: 1002)
    assert peercred.trusted_uid(1001)
    assert not peercred.trusted_uid(1002)
    assert peercred.trusted_uid(0)  # root, whoever we are
    assert not peercred.trusted_uid(1)


# -- describe_uid ----------------------------------------------------------------------------------------


def test_a_uid_is_described_by_name_when_it_has_one():
    assert peercred.describe_uid(0) == "root (uid 0)"
    assert peercred.describe_uid(None) == "an unknown user"
    unnamed = 2**31 - 7  # no passwd entry has it
    assert peercred.describe_uid(unnamed) == f"uid {unnamed}"
