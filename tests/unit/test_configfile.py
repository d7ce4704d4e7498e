"""config.toml: comments survive, corrupt files are reported and never overwritten, writes are atomic,
locked and 0600."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convocationsd.common import trust
from convocationsd.core.errors import ConfigError
from convocationsd.store import configfile

WRITER = Path(__file__).resolve().parents[1] / "helpers" / "secret_config_writer.py"

COMMENTED = """\
# My convocations settings
http_port = 3001   # moved off 3000: another dev server lives there

# unknown keys are mine
my_own_thing = "keep me"
log_level = "debug"

[extra]
# a table nobody knows
answer = 42
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def writer(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), *args], **kw)


# -- load ----------------------------------------------------------------------------------------


def test_load_missing_file_is_empty(tmp_path):
    assert configfile.load(tmp_path / "nope" / "config.toml") == {}


def test_load_reads_plain_values(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    data = configfile.load(path)
    assert data == {"http_port": 3001, "my_own_thing": "keep me", "log_level": "debug", "extra": {"answer": 42}}
    assert type(data) is dict


def test_load_corrupt_names_file_line_and_column(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('http_port = 3001\nlog_level = "debug\\q"\n')
    with pytest.raises(ConfigError) as info:
        configfile.load(path)
    assert str(path) in info.value.message
    assert "line 2, column" in info.value.message
    assert "Fix" in info.value.hint and "not changed" in info.value.hint


def test_load_error_at_end_of_document_still_has_a_position(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("a = 1\nb = [1,\n  2,\n")
    with pytest.raises(ConfigError) as info:
        configfile.load(path)
    assert "line 4, column 1" in info.value.message


def test_load_invalid_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'a = 1\nb = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        configfile.load(path)
    assert "UTF-8" in info.value.message and "line 2, column 6" in info.value.message


def test_load_unreadable(tmp_path):
    path = tmp_path / "config.toml"
    path.mkdir()
    with pytest.raises(ConfigError) as info:
        configfile.load(path)
    assert str(path) in info.value.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), st.text(alphabet="ab=[]{}.\"'\n #1-:tT,\\", max_size=80).map(str.encode)))
def test_load_arbitrary_bytes_gives_dict_or_config_error(tmp_path, data):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    try:
        result = configfile.load(path)
    except ConfigError as e:
        assert str(path) in e.message and "line " in e.message and "column " in e.message
    else:
        assert isinstance(result, dict)


def test_deeply_nested_value_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("a = " + "[" * 100_000)
    with pytest.raises(ConfigError):
        configfile.load(path)


def test_load_does_not_import_tomlkit(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    code = (
        "import sys; from pathlib import Path; from convocationsd.store import configfile; "
        f"configfile.load(Path({str(path)!r})); print('tomlkit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- update --------------------------------------------------------------------------------------


def test_update_keeps_comments_order_and_unknown_keys(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)

    def mutate(doc):
        doc["log_level"] = "info"
        doc["idle_exit_seconds"] = 30

    configfile.update(path, mutate)
    text = path.read_text()
    assert text.startswith("# My convocations settings\nhttp_port = 3001   # moved off 3000")
    assert '# unknown keys are mine\nmy_own_thing = "keep me"\nlog_level = "info"\n' in text
    assert "[extra]\n# a table nobody knows\nanswer = 42\n" in text
    assert tomllib.loads(text)["idle_exit_seconds"] == 30
    assert tomllib.loads(text)["extra"] == {"answer": 42}


def test_update_round_trip_without_changes_is_byte_identical(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    configfile.update(path, lambda doc: None)
    assert path.read_text() == COMMENTED


def test_update_creates_private_dir_and_file(tmp_path):
    path = tmp_path / "new" / "convocations" / "config.toml"
    configfile.update(path, lambda doc: doc.__setitem__("http_port", 3005))
    assert configfile.load(path) == {"http_port": 3005}
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert mode(path.parent / ".config.toml.lock") == 0o600


def test_update_makes_an_open_file_private(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("a = 1\n")
    path.chmod(0o644)
    configfile.update(path, lambda doc: doc.__setitem__("b", 2))
    assert mode(path) == 0o600
    assert configfile.load(path) == {"a": 1, "b": 2}


def test_update_refuses_corrupt_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "config.toml"
    original = b'# hand edited\nhttp_port = 3001\nlog_level = "debug\n[table\n'
    path.write_bytes(original)
    called = []
    with pytest.raises(ConfigError) as info:
        configfile.update(path, called.append)
    assert path.read_bytes() == original
    assert not called
    assert "line 3, column" in info.value.message and str(path) in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.toml.lock", "config.toml"]


def test_failing_mutation_changes_nothing(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)

    def mutate(doc):
        doc["log_level"] = "error"
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        configfile.update(path, mutate)
    assert path.read_text() == COMMENTED
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stale_temp_files_from_a_killed_writer_are_removed(tmp_path):
    path = tmp_path / "config.toml"
    stale = tmp_path / ".config.toml.12345.abcd.tmp"
    stale.write_text("half a file")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("mine")
    configfile.update(path, lambda doc: doc.__setitem__("a", 1))
    assert not stale.exists() and unrelated.exists()


def test_update_writes_through_a_symlink(tmp_path):
    real = tmp_path / "dotfiles" / "config.toml"
    real.parent.mkdir()
    real.write_text("a = 1\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    configfile.update(link, lambda doc: doc.__setitem__("b", 2))
    assert link.is_symlink()
    assert configfile.load(real) == {"a": 1, "b": 2}


def test_two_concurrent_writers_both_land(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("# shared\n")
    times = 60
    procs = [writer(str(path), "count", key, str(times)) for key in ("daemon_writes", "cli_writes")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    data = configfile.load(path)
    assert data == {"daemon_writes": times, "cli_writes": times}
    assert path.read_text().startswith("# shared\n")


def test_kill_9_mid_write_leaves_old_or_new_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("# survives every crash\nn = 0\n")
    rng = random.Random(1234)
    size = 4_000  # ~20 KiB per write, so some kills land inside one
    last = 0
    for _ in range(30):
        proc = writer(str(path), "loop", str(size), stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(rng.randint(1, 6)):
                last = int(proc.stdout.readline())
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        data = configfile.load(path)  # parses: never a torn file
        assert data["n"] >= last
        assert data["payload"] == f"{data['n']};" * size  # one complete version, old or new
        assert path.read_text().startswith("# survives every crash\n")
        assert mode(path) == 0o600
    configfile.update(path, lambda doc: doc.__setitem__("after", True))  # the lock is free again
    assert configfile.load(path)["after"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_trust_check_follows_links_one_at_a_time(tmp_path):
    """The trust check looks where the kernel looks: relative and absolute links, a link in the middle of a
    chain (its folder, here anyone's to write, is refused), `..` after a link (the real parent, not the
    lexical one), and a link loop is a clear error, not a hang."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (real / "config.toml").write_text('log_level = "info"\n')
    os.chmod(real / "config.toml", 0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "hop").symlink_to("../real")  # relative, resolved from the link's folder
    (tmp_path / "cfg").symlink_to(shared / "hop")
    walked = [entry for entry, _ in trust.on_the_way(tmp_path / "cfg" / "config.toml")]
    assert walked[-5:] == [tmp_path / "cfg", shared, shared / "hop", real, real / "config.toml"]
    with pytest.raises(configfile.UntrustedConfig, match=f"{shared}, a directory on the way to"):
        configfile.load(tmp_path / "cfg" / "config.toml")
    with pytest.raises(configfile.UntrustedConfig):  # `..` from the link's target leads back past shared
        configfile.load(tmp_path / "cfg" / ".." / "real" / "config.toml")
    os.chmod(shared, 0o755)
    assert configfile.load(tmp_path / "cfg" / "config.toml") == {"log_level": "info"}
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(ConfigError, match=r"Cannot read .*symbolic links"):
        configfile.load(tmp_path / "loop" / "config.toml")
