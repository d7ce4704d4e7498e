"""The socket directory: made 0700 with its parents, refused when it is no directory (the rest of the rule
is proven against real daemons in tests/adversarial/test_local_users.py)."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import pytest

from convocationsd.common import paths, trust
from convocationsd.core.errors import ConvError, UntrustedSocket


def test_missing_directories_are_made_0700_whatever_the_umask(short_tmp):
    old = os.umask(0)
    try:
        paths.ensure_socket_dir(short_tmp / "a" / "b")
    finally:
        os.umask(old)
    for d in (short_tmp / "a", short_tmp / "a" / "b"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_a_file_is_not_a_socket_directory(short_tmp):
    (short_tmp / "f").write_text("")
    with pytest.raises(UntrustedSocket, match="is not a directory"):
        paths.check_socket_dir(short_tmp / "f")


# -- where things live -----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_config_dir_and_path_follow_the_environment(monkeypatch, short_tmp):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(short_tmp / "platform"))  # what platformdirs reads
    assert paths.config_dir({"XDG_CONFIG_HOME": "/x/cfg"}) == Path("/x/cfg/convocations")
    # Unset or relative (the XDG spec says to ignore those): the platform's default.
    assert paths.config_dir({}) == short_tmp / "platform" / "convocations"
    assert paths.config_dir({"XDG_CONFIG_HOME": "cfg"}) == short_tmp / "platform" / "convocations"
    assert paths.config_path({"XDG_CONFIG_HOME": "/x/cfg"}) == Path("/x/cfg/convocations/config.toml")
    assert paths.config_path({"CONVOCATIONS_CONFIG": "/y/my.toml", "XDG_CONFIG_HOME": "/x"}) == Path("/y/my.toml")


def test_socket_path_is_the_one_the_systemd_unit_listens_on(short_tmp):
    no_config = {"CONVOCATIONS_CONFIG": str(short_tmp / "none.toml")}
    assert paths.default_socket_path({"XDG_RUNTIME_DIR": "/r/1000"}) == Path("/r/1000/convocations/convocationsd.sock")
    assert paths.socket_path({"XDG_RUNTIME_DIR": "/r/1000", **no_config}) == paths.default_socket_path(
        {"XDG_RUNTIME_DIR": "/r/1000"}
    )
    assert "ListenStream=%t/convocations/convocationsd.sock\n" in (ROOT / "systemd/convocationsd.socket").read_text()
    assert paths.socket_path({"CONVOCATIONS_SOCKET": "/s/d.sock", "XDG_RUNTIME_DIR": "/r"}) == Path("/s/d.sock")


def config_env(short_tmp: Path, text: str | bytes, **more: str) -> dict[str, str]:
    config = short_tmp / "cfg" / "convocations" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_bytes(text.encode() if isinstance(text, str) else text)
    return {"XDG_CONFIG_HOME": str(short_tmp / "cfg"), "XDG_RUNTIME_DIR": "/r/1000", **more}


def test_clients_look_where_config_toml_puts_the_socket(short_tmp, monkeypatch):
    """The daemon's order without its flags: CONVOCATIONS_SOCKET, else `socket` in config.toml, else the default."""
    env = config_env(short_tmp, 'socket = "/elsewhere/d.sock"\nhttp_port = 3001\n')
    assert paths.socket_path(env) == Path("/elsewhere/d.sock")
    assert paths.socket_path({**env, "CONVOCATIONS_SOCKET": "/s/d.sock"}) == Path("/s/d.sock")
    assert paths.socket_path({**env, "CONVOCATIONS_SOCKET": ""}) == Path("/elsewhere/d.sock")  # empty: unset
    other = short_tmp / "other.toml"
    other.write_text("socket = '/from/other.sock'\n")
    assert paths.socket_path({**env, "CONVOCATIONS_CONFIG": str(other)}) == Path("/from/other.sock")
    monkeypatch.setenv("HOME", str(short_tmp))
    assert paths.socket_path(config_env(short_tmp, 'socket = "~/d.sock"')) == short_tmp / "d.sock"  # as the daemon
    assert paths.socket_path(config_env(short_tmp, '"\\u0073ocket" = "/escaped.sock"')) == Path("/escaped.sock")
    default = Path("/r/1000/convocations/convocationsd.sock")
    assert paths.socket_path(config_env(short_tmp, 'socket = ""')) == default  # as the daemon: unset
    assert paths.socket_path(config_env(short_tmp, '[openrouter_api_key]\nsocket = "/in/a/table"')) == default
    assert paths.socket_path({"XDG_CONFIG_HOME": str(short_tmp / "nowhere"), "XDG_RUNTIME_DIR": "/r/1000"}) == default


def test_a_config_toml_that_cannot_name_the_socket_is_not_parsed(short_tmp):
    """`convctl status` reads config.toml but imports no TOML parser when the file cannot hold the key: this
    one is not TOML at all, and nothing complains."""
    env = config_env(short_tmp, "http_port = = 3001\n[[[\n")
    assert paths.socket_path(env) == Path("/r/1000/convocations/convocationsd.sock")


@pytest.mark.parametrize(
    "text, says",
    [
        ("socket = \n", "is not valid TOML (Invalid value (at line 1, column 10))"),
        (b'socket = "\xff"', "is not valid TOML (UnicodeDecodeError)"),
        ("socket = 5\n", "Invalid socket_path from socket in {config}: must be a path, not 5."),
        ('socket = ["/a"]\n', "must be a path, not a list"),
    ],
)
def test_a_socket_setting_the_daemon_would_refuse_is_a_clear_error(short_tmp, text, says):
    from convocationsd.core.errors import ConfigError

    env = config_env(short_tmp, text)
    config = short_tmp / "cfg" / "convocations" / "config.toml"
    with pytest.raises(ConfigError) as caught:
        paths.socket_path(env)
    assert says.format(config=config) in caught.value.message
    assert str(config) in caught.value.message and caught.value.hint


def test_runtime_dir_falls_back_quietly_when_xdg_runtime_dir_will_not_do(monkeypatch, short_tmp):
    """Relative in our environment: platformdirs decides; given a directory it refuses (here 0755, not 0700),
    it warns and falls back. The daemon says where it listens, so that warning must not reach the person."""
    loose = short_tmp / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(loose))  # what platformdirs reads; a new path: it warns once per cause
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            found = paths.runtime_dir({"XDG_RUNTIME_DIR": "relative/run"})
        except UntrustedSocket:  # no safe fallback on this machine: refused, which is also fine
            return
    assert isinstance(found, Path) and found.name == "convocations" and found.parent != loose


def test_runtime_dir_is_xdg_runtime_dir_when_absolute():
    assert paths.runtime_dir({"XDG_RUNTIME_DIR": "/r/1000"}) == Path("/r/1000/convocations")


def test_a_runtime_dir_platformdirs_refuses_is_a_clear_error(monkeypatch):
    """Newer platformdirs refuse a fallback in /tmp that another user made first (the real case, as another
    user, is tests/adversarial/test_local_users.py): the refusal reaches the person with what to do."""
    import platformdirs

    def refuses(*args, **kwargs):
        raise PermissionError("runtime directory /tmp/runtime-1000 is owned by uid 4242; set XDG_RUNTIME_DIR instead")

    monkeypatch.setattr(platformdirs, "user_runtime_dir", refuses)
    with pytest.raises(UntrustedSocket) as caught:
        paths.runtime_dir({})
    assert "owned by uid 4242" in caught.value.message and "XDG_RUNTIME_DIR" in caught.value.hint


# -- the socket directory's checks -----------------------------------------------------------------------


def refusal(directory: Path) -> str:
    with pytest.raises(UntrustedSocket) as caught:
        paths.check_socket_dir(directory)
    assert "CONVOCATIONS_SOCKET" in caught.value.hint
    return caught.value.message


def test_a_safe_directory_and_its_missing_children_pass(short_tmp):
    (short_tmp / "ok").mkdir(mode=0o700)
    paths.check_socket_dir(short_tmp / "ok")
    paths.check_socket_dir(short_tmp / "ok" / "not" / "yet")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_directory_others_can_write_is_refused(short_tmp, monkeypatch, mode):
    monkeypatch.setattr(trust, "_private_group", lambda gid, owner: False)  # a group others are in
    d = short_tmp / "open"
    d.mkdir()
    d.chmod(mode)
    assert refusal(d) == (
        f"The socket directory {d} can be written by other users (mode {mode:04o}), so another user could "
        "replace the socket."
    )


def test_a_sticky_directory_others_can_write_is_allowed(short_tmp):
    """Like /tmp: others cannot remove or rename what is ours there."""
    d = short_tmp / "sticky"
    d.mkdir()
    d.chmod(0o1777)
    paths.check_socket_dir(d)
    paths.check_socket_dir(d / "mine")


def test_every_directory_on_the_way_is_checked_existing_or_not(short_tmp):
    shared = short_tmp / "shared"
    (shared / "mine").mkdir(parents=True, mode=0o700)
    shared.chmod(0o777)
    for directory in (shared / "mine", shared / "mine" / "sub", shared / "missing" / "sub"):
        message = refusal(directory)
        assert message.startswith(f"{shared}, on the way to the socket directory {directory}, can be written by")


def test_a_group_writable_directory_of_a_group_of_one_is_allowed(short_tmp, monkeypatch):
    """The rule of config.toml (common/trust): a user-private group under umask 002 is the owner alone."""
    monkeypatch.setattr(trust, "_private_group", lambda gid, owner: True)
    monkeypatch.setattr(trust, "_has_acl", lambda entry: False)
    d = short_tmp / "ours"
    d.mkdir()
    d.chmod(0o770)
    paths.check_socket_dir(d)


def test_the_folder_of_a_link_in_the_middle_of_the_way_is_checked(short_tmp):
    """mine/l1 -> open/l2 -> real: whoever can write to open/ can point l2 elsewhere, though open/ is
    neither a lexical nor a real parent of the socket directory. The way is followed one link at a time."""
    shared = short_tmp / "open"
    shared.mkdir()
    shared.chmod(0o777)
    (short_tmp / "real" / "run").mkdir(parents=True, mode=0o700)
    (shared / "l2").symlink_to(short_tmp / "real")
    (short_tmp / "mine").mkdir(mode=0o700)
    (short_tmp / "mine" / "l1").symlink_to(shared / "l2")
    directory = short_tmp / "mine" / "l1" / "run"
    assert refusal(directory) == (
        f"{shared}, on the way to the socket directory {directory}, can be written by other users (mode 0777), "
        "so another user could replace the socket."
    )


def test_a_directory_of_another_user_is_refused(short_tmp, make_foreign):
    d = short_tmp / "theirs"
    d.mkdir(mode=0o700)
    make_foreign(d)
    message = refusal(d)
    if os.geteuid() == 0:  # d is uid 4242's
        assert message.startswith(f"The socket directory {d} belongs to ") and "uid " in message
    else:  # we pretend to be another uid: the first of our own folders on the way to d is the one named
        named = Path(message.split(",", 1)[0]) if ", on the way to" in message else d
        assert d.is_relative_to(named) and " belongs to " in message and "uid " in message, message


def test_a_symbolic_link_is_refused_even_to_a_good_directory(short_tmp):
    (short_tmp / "real").mkdir(mode=0o700)
    (short_tmp / "link").symlink_to(short_tmp / "real")
    assert (
        refusal(short_tmp / "link")
        == f"The socket directory {short_tmp / 'link'} is a symbolic link (to {short_tmp / 'real'})."
    )


def test_a_relative_directory_is_named_in_full(short_tmp, monkeypatch):
    (short_tmp / "open").mkdir()
    (short_tmp / "open").chmod(0o777)
    monkeypatch.chdir(short_tmp)
    assert refusal(Path("open")).startswith(f"The socket directory {short_tmp / 'open'} can be written")


def test_a_path_that_cannot_be_checked_is_refused(short_tmp):
    (short_tmp / "file").write_text("")
    assert refusal(short_tmp / "file" / "sub").startswith(f"Cannot check {short_tmp / 'file' / 'sub'}, on the way")


def test_the_entry_that_cannot_be_checked_is_named(short_tmp, monkeypatch):
    """An entry on the way that cannot be read (EACCES, say, for an unprivileged user): the message names
    it, or the socket directory when the error names nothing."""
    (short_tmp / "ok").mkdir(mode=0o700)
    for error, named in (
        (PermissionError(13, "Permission denied", "/somewhere/closed"), "/somewhere/closed"),
        (OSError(40, "Too many levels of symbolic links"), str(short_tmp / "ok")),
    ):

        def refuse(path, error=error):
            raise error

        monkeypatch.setattr(trust, "on_the_way", refuse)
        assert refusal(short_tmp / "ok").startswith(f"Cannot check {named}, on the way to the daemon's socket: ")


# -- making it ------------------------------------------------------------------------------------------


def test_nothing_is_made_inside_a_directory_others_control(short_tmp):
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UntrustedSocket):
        paths.ensure_socket_dir(shared / "run")
    assert not (shared / "run").exists()


def test_the_umask_is_given_back(short_tmp):
    before = os.umask(0o022)
    try:
        paths.ensure_socket_dir(short_tmp / "a")
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def test_a_link_planted_while_the_directory_is_made_is_refused(short_tmp, monkeypatch):
    """In a shared sticky directory, someone can put a link where the directory is about to be made, after
    the first check: mkdir then finds a directory there and says nothing, so the check runs again."""
    shared = short_tmp / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (short_tmp / "elsewhere").mkdir(mode=0o700)
    real_umask = os.umask

    def umask_and_plant(mask: int) -> int:
        if not (shared / "run").is_symlink():
            (shared / "run").symlink_to(short_tmp / "elsewhere")
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", umask_and_plant)
    with pytest.raises(UntrustedSocket, match="is a symbolic link"):
        paths.ensure_socket_dir(shared / "run")


def test_a_directory_that_cannot_be_made_is_a_clear_error():
    with pytest.raises(ConvError) as caught:
        paths.ensure_socket_dir(Path("/proc/convocations-test/run"))  # nobody may make directories in /proc
    assert caught.value.message.startswith("Cannot create the socket directory /proc/convocations-test/run:")
    # and says what to set instead (the runtime dir may not exist on this machine at all)
    assert "CONVOCATIONS_SOCKET" in caught.value.hint and "XDG_RUNTIME_DIR" in caught.value.hint
