"""common/trust.py on its own: the way the kernel goes to a path, one link at a time, and the rule for each
entry on it (ours or root's; written by no one else unless sticky; group write only for a group of one
without an ACL), and the private directory. Real files, links and ACLs; what needs another user, another
group database or a user namespace is pretended (test_paths and test_configfile hold the callers' words)."""

from __future__ import annotations

import builtins
import errno
import grp
import io
import os
import pwd
import stat
import struct
from pathlib import Path

import pytest

from convocationsd.common import trust


@pytest.fixture
def here(short_tmp: Path) -> Path:
    return short_tmp.resolve()  # a $TMPDIR reached through a link would add that link to every walk


def walk(path: Path) -> list[Path]:
    return [entry for entry, _ in trust.on_the_way(path)]


def from_the_root(path: Path) -> list[Path]:
    return [*reversed(path.parents), path]


# -- the way to a path -----------------------------------------------------------------------------------


def test_the_way_is_every_directory_from_the_root_up_to_the_first_missing_one(here):
    (here / "a" / "c").mkdir(parents=True)  # a/b is missing: a/c, though there, is not on the way
    way = trust.on_the_way(here / "a" / "b" / "c")
    assert [entry for entry, _ in way] == [*from_the_root(here), here / "a"]
    assert all(st.st_ino == os.lstat(entry).st_ino for entry, st in way)


def test_links_are_followed_one_at_a_time_from_where_each_one_lies(here):
    """abs -> <here>/mine/rel (absolute: from the root again) -> ../real/./sub/ (relative to mine/, with `..`,
    `.` and a trailing slash, as the kernel reads them)."""
    (here / "real" / "sub").mkdir(parents=True)
    (here / "mine").mkdir()
    (here / "mine" / "rel").symlink_to("../real/./sub/")
    (here / "abs").symlink_to(here / "mine" / "rel")
    way = trust.on_the_way(here / "abs" / "missing" / "more")
    assert [entry for entry, _ in way] == [
        *from_the_root(here),
        here / "abs",
        here / "mine",
        here / "mine" / "rel",
        here / "real",
        here / "real" / "sub",
    ]
    assert [stat.S_ISLNK(st.st_mode) for _, st in way[-5:]] == [True, False, True, False, False]


@pytest.mark.parametrize("links", [40, 41])
def test_a_chain_of_links_is_followed_as_far_as_the_kernel_follows_one(here, links):
    (here / "real").mkdir()
    for i in range(links):
        (here / f"l{i}").symlink_to(f"l{i + 1}" if i < links - 1 else "real")
    try:
        os.stat(here / "l0")
        kernel = "followed"
    except OSError as e:
        assert e.errno == errno.ELOOP
        kernel = "too many links"
    assert kernel == ("followed" if links <= 40 else "too many links")  # Linux's MAXSYMLINKS
    if kernel == "followed":
        assert walk(here / "l0")[-2:] == [here / f"l{links - 1}", here / "real"]
    else:
        with pytest.raises(OSError) as caught:
            trust.on_the_way(here / "l0")
        assert (caught.value.errno, caught.value.filename) == (errno.ELOOP, str(here / "l0"))


# -- the rule for one entry ------------------------------------------------------------------------------


def judge(entry: Path) -> tuple[str, str]:
    return trust.untrusted(entry, os.lstat(entry))


@pytest.fixture
def groups_unasked(monkeypatch):
    """The group database is read only for a group-writable entry."""

    def asked(gid, owner):
        pytest.fail(f"the members of group {gid} were looked up for an entry its group cannot write")

    monkeypatch.setattr(trust, "_private_group", asked)


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o500, 0o711])
def test_a_directory_of_ours_no_one_else_can_write_is_trusted(here, groups_unasked, mode):
    d = here / "d"
    d.mkdir()
    d.chmod(mode)
    assert judge(d) == ("", "")


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_a_file_of_ours_no_one_else_can_write_is_trusted(here, groups_unasked, mode):
    f = here / "f"
    f.write_text("")
    f.chmod(mode)
    assert judge(f) == ("", "")


def test_a_sticky_directory_anyone_can_write_and_a_link_are_trusted(here, groups_unasked):
    """In a sticky directory (/tmp) others cannot swap what is ours; a link's own mode (0777) means nothing."""
    (here / "sticky").mkdir()
    (here / "sticky").chmod(0o1777)
    (here / "link").symlink_to("sticky")
    assert judge(here / "sticky") == ("", "")
    assert judge(here / "link") == ("", "")


@pytest.mark.parametrize("mode", [0o702, 0o757, 0o777])
def test_a_directory_others_can_write_is_not_trusted(here, monkeypatch, mode):
    monkeypatch.setattr(trust, "_private_group", lambda gid, owner: True)  # others' write bit is enough
    d = here / "d"
    d.mkdir()
    d.chmod(mode)
    assert judge(d) == (f"can be written by other users (mode {mode:04o})", f"Run: chmod go-w {d}")


def test_a_non_sticky_file_others_can_write_is_not_trusted(here):
    f = here / "f"
    f.write_text("")
    f.chmod(0o1666)  # the sticky bit means nothing on a file
    assert judge(f) == ("can be written by other users (mode 1666)", f"Run: chmod go-w {f}")


@pytest.mark.parametrize("mode", [0o770, 0o775])
def test_group_write_is_trusted_only_for_a_group_of_the_owner_alone_without_an_acl(here, monkeypatch, mode):
    d = here / "d"
    d.mkdir()
    d.chmod(mode)
    asked = []
    monkeypatch.setattr(trust, "_has_acl", lambda entry: False)
    monkeypatch.setattr(trust, "_private_group", lambda gid, owner: asked.append((gid, owner)) or True)
    assert judge(d) == ("", "")
    assert asked == [(d.stat().st_gid, d.stat().st_uid)]
    monkeypatch.setattr(trust, "_private_group", lambda gid, owner: False)
    assert judge(d) == (f"can be written by other users (mode {mode:04o})", f"Run: chmod go-w {d}")
    monkeypatch.setattr(trust, "_private_group", lambda gid, owner: True)
    monkeypatch.setattr(trust, "_has_acl", lambda entry: entry == d)
    problem, fix = judge(d)
    assert problem.startswith(f"can be written by other users (mode {mode:04o}, and a POSIX ACL whose mask")
    assert fix == f"Run: chmod go-w {d} (or remove the ACL: setfacl -b {d})"


def test_an_entry_of_another_user_is_not_trusted_whatever_its_mode(here, make_foreign):
    d = here / "d"
    d.mkdir(mode=0o700)
    make_foreign(d)
    problem, fix = judge(d)
    assert problem.startswith("belongs to ") and f"uid {d.stat().st_uid}" in problem
    assert fix == f"Move it away, or have root give it to you: chown {os.getuid()} {d}"


@pytest.mark.needs_root
def test_in_a_user_namespace_an_entry_of_the_overflow_uid_is_taken_as_roots(here, monkeypatch):
    """Seen from inside PrivateUsers=yes, root's / reads as owned by the overflow uid: the owner is let be,
    the mode is still checked."""
    proc(monkeypatch, overflowuid="4243\n", uid_map=NAMESPACE)
    d = here / "d"
    d.mkdir(mode=0o755)
    os.chown(d, 4243, -1)
    assert judge(d) == ("", "")
    d.chmod(0o757)
    assert judge(d)[0] == "can be written by other users (mode 0757)"
    os.chown(d, 4242, -1)
    assert judge(d)[0].startswith("belongs to ")


# -- the overflow uid ------------------------------------------------------------------------------------

NAMESPACE = "         0       1000          1\n"  # only our uid mapped, as systemd's PrivateUsers=yes does
INITIAL = "         0          0 4294967295\n"


def proc(monkeypatch, **files: str | None) -> None:
    """/proc/sys/kernel/overflowuid and /proc/self/uid_map as given (None: unreadable) to trust's open()."""
    fake = {"/proc/sys/kernel/overflowuid": files["overflowuid"], "/proc/self/uid_map": files["uid_map"]}

    def opened(path, *args, **kwargs):
        if path not in fake:
            return builtins.open(path, *args, **kwargs)
        if fake[path] is None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return io.StringIO(fake[path])

    monkeypatch.setattr(trust, "open", opened, raising=False)


def test_the_overflow_uid_stands_for_an_unmapped_owner_only_inside_a_user_namespace(monkeypatch):
    proc(monkeypatch, overflowuid="65534\n", uid_map=NAMESPACE)
    assert trust._unmapped_outside(65534) is True
    assert trust._unmapped_outside(4242) is False
    proc(monkeypatch, overflowuid="65534\n", uid_map=INITIAL)
    assert trust._unmapped_outside(65534) is False


@pytest.mark.parametrize("overflowuid, uid_map", [(None, NAMESPACE), ("65534\n", None), ("not a number\n", NAMESPACE)])
def test_an_overflow_uid_that_cannot_be_read_leaves_the_owner_foreign(monkeypatch, overflowuid, uid_map):
    proc(monkeypatch, overflowuid=overflowuid, uid_map=uid_map)
    assert trust._unmapped_outside(65534) is False


# -- POSIX ACLs ------------------------------------------------------------------------------------------


def set_acl(path: Path) -> None:
    """An access ACL naming uid 4242 (rwx), in the kernel's binary form (what setfacl writes): version 2,
    then (tag, permissions, id) entries; skips the test where the filesystem keeps none."""
    entry = struct.Struct("<HHI").pack
    anyone = 0xFFFFFFFF
    user_obj, user, group_obj, mask, other = 0x01, 0x02, 0x04, 0x10, 0x20
    entries = [(user_obj, 7, anyone), (user, 7, 4242), (group_obj, 5, anyone), (mask, 7, anyone), (other, 0, anyone)]
    acl = struct.pack("<I", 2) + b"".join(entry(*e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", acl)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"no POSIX ACLs on the filesystem of {path}")
        raise


def test_an_acl_is_seen_on_the_entry_itself(here):
    (here / "plain").mkdir()
    (here / "shared").mkdir()
    set_acl(here / "shared")
    (here / "link").symlink_to("shared")
    assert trust._has_acl(here / "plain") is False
    assert trust._has_acl(here / "shared") is True
    assert stat.S_IMODE((here / "shared").stat().st_mode) == 0o770  # the mask shows as the group bits
    assert trust._has_acl(here / "link") is False  # the link's own (none), not its target's


def test_an_entry_whose_acl_cannot_be_read_is_an_error_naming_it(here):
    with pytest.raises(FileNotFoundError) as caught:
        trust._has_acl(here / "gone")
    assert caught.value.filename == str(here / "gone")


def test_where_there_are_no_extended_attributes_there_is_no_acl(here, monkeypatch):
    monkeypatch.delattr(os, "getxattr")
    assert trust._has_acl(here) is False


# -- the group of one ------------------------------------------------------------------------------------


def group_database(monkeypatch, members: list[str], users: list[tuple[str, int, int]]) -> None:
    """Group 1000, "alice", with these listed members; these (name, uid, primary gid) users."""
    accounts = [pwd.struct_passwd((name, "x", uid, gid, "", f"/home/{name}", "/bin/sh")) for name, uid, gid in users]

    def getgrgid(gid):
        if gid != 1000:
            raise KeyError(gid)
        return grp.struct_group(("alice", "x", 1000, members))

    def getpwuid(uid):
        for account in accounts:
            if account.pw_uid == uid:
                return account
        raise KeyError(uid)

    monkeypatch.setattr(grp, "getgrgid", getgrgid)
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(pwd, "getpwall", lambda: accounts)


ALICE, BOB = ("alice", 1000, 1000), ("bob", 1001, 100)


@pytest.mark.parametrize("members", [[], ["alice"]])
def test_a_group_whose_only_member_is_the_owner_is_private(monkeypatch, members):
    group_database(monkeypatch, members, [ALICE, BOB])
    assert trust._private_group(1000, 1000) is True


@pytest.mark.parametrize(
    "members, users, gid, owner",
    [
        ([], [ALICE, ("bob", 1001, 1000)], 1000, 1000),  # bob's primary group too
        (["bob"], [ALICE, BOB], 1000, 1000),  # bob listed as a member
        (["alice", "bob"], [ALICE, BOB], 1000, 1000),
        ([], [("alice", 1000, 100), BOB], 1000, 1000),  # no one at all: not the owner's
        ([], [ALICE, BOB], 1000, 1001),  # alice's group, bob's entry
        ([], [ALICE, BOB], 1002, 1000),  # no such group
        ([], [BOB], 1000, 1000),  # no such user
    ],
)
def test_a_group_anyone_else_is_in_or_no_one_is_not_private(monkeypatch, members, users, gid, owner):
    group_database(monkeypatch, members, users)
    assert trust._private_group(gid, owner) is False


# -- the private directory -------------------------------------------------------------------------------


def test_a_private_directory_and_its_missing_parents_are_0700_whatever_the_umask(here):
    old = os.umask(0)
    try:
        trust.make_private_dir(here / "a" / "b" / "c")
        assert os.umask(0) == 0  # given back
        trust.make_private_dir(here / "a" / "b" / "c")  # already there: fine
    finally:
        os.umask(old)
    for d in (here / "a", here / "a" / "b", here / "a" / "b" / "c"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
