"""Settings: flag > environment > config file > default, and errors that name their source."""

from __future__ import annotations

from pathlib import Path

import pytest

from convocationsd.common import settings
from convocationsd.common.settings import Settings, resolve_with_sources
from convocationsd.core.errors import ConfigError, ConvError

SOCK = Path("/run/user/1000/convocations/convocationsd.sock")
CONF = Path("/home/u/.config/convocations/config.toml")


def build(flags=None, env=None, config=None) -> Settings:
    return resolve_with_sources(flags or {}, env or {}, config or {}, socket_path=SOCK, config_path=CONF)[0]


def bad(flags=None, env=None, config=None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        build(flags, env, config)
    e = ei.value
    assert isinstance(e, ConvError) and e.exit_code == 1
    assert e.hint and e.message in str(e) and e.hint in str(e)
    return e


# field -> (flag value, env string, config value, expected flag, expected env, expected config, default)
LAYERS = {
    "http_port": (1111, "2222", 3333, 1111, 2222, 3333, 3000),
    "socket_path": ("/f.sock", "/e.sock", "/c.sock", Path("/f.sock"), Path("/e.sock"), Path("/c.sock"), SOCK),
    "openrouter_url": (
        "http://flag.test", "https://env.test/", "http://127.0.0.1:9/cfg",
        "http://flag.test", "https://env.test", "http://127.0.0.1:9/cfg", "https://openrouter.ai",
    ),
    "log_level": ("debug", "warning", "error", "debug", "warning", "error", "info"),
    "secret_backend": (
        "keyring", "local-encrypted", "keyring", "keyring", "local-encrypted", "keyring", None,
    ),
    "desktop_notifications": (True, "false", True, True, False, True, None),
    "idle_exit_seconds": (11.0, "22", 33, 11.0, 22.0, 33.0, 600.0),
    "flow_timeout_seconds": (12.5, "23.5", 34, 12.5, 23.5, 34.0, 600.0),
    "exchange_timeout_seconds": (1, "2", 3.5, 1.0, 2.0, 3.5, 30.0),
    "keyring_timeout_seconds": (5, "6", 7, 5.0, 6.0, 7.0, 120.0),
    "account_cache_seconds": (0.5, "8", 9, 0.5, 8.0, 9.0, 60.0),
    "allow_stateless_callbacks": (True, "no", True, True, False, True, False),
    "allow_port_fallback": (True, "no", True, True, False, True, False),
}  # fmt: skip


def test_every_sourced_field_is_covered():
    assert set(LAYERS) == set(settings.SOURCES)
    assert set(settings.CONVERT) == set(Settings._fields)


def test_sources_match_the_contract():
    assert settings.SOURCES["http_port"] == ("RCONV_HTTP_PORT", "http_port")
    assert settings.SOURCES["socket_path"][0] == "CONVOCATIONS_SOCKET"
    assert settings.SOURCES["openrouter_url"] == ("CONVOCATIONS_OPENROUTER_URL", "openrouter_url")
    assert settings.SOURCES["secret_backend"] == ("CONVOCATIONS_SECRET_BACKEND", "secret_backend")
    for key in ("desktop_notifications", "idle_exit_seconds", "flow_timeout_seconds", "log_level"):
        assert settings.SOURCES[key][1] == key


def test_defaults():
    s = build()
    assert s == Settings(socket_path=SOCK, config_path=CONF)
    assert (s.http_port, s.openrouter_url, s.log_level) == (3000, "https://openrouter.ai", "info")
    assert s.secret_backend is None and s.desktop_notifications is None
    assert (s.idle_exit_seconds, s.flow_timeout_seconds) == (600.0, 600.0)
    assert (s.exchange_timeout_seconds, s.keyring_timeout_seconds) == (30.0, 120.0)
    assert s.account_cache_seconds == 60.0


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_precedence(name):
    flag, env_s, cfg, want_flag, want_env, want_cfg, default = LAYERS[name]
    env_name, key = settings.SOURCES[name]
    flags, env, config = {name: flag}, {env_name: env_s}, {key: cfg}
    assert getattr(build(flags, env, config), name) == want_flag
    assert getattr(build({}, env, config), name) == want_env
    assert getattr(build({}, {}, config), name) == want_cfg
    assert getattr(build(), name) == default
    # flag beats config alone, env beats default alone
    assert getattr(build(flags, {}, config), name) == want_flag
    assert getattr(build({}, env, {}), name) == want_env
    # the other fields are untouched
    others = {f: v for f, v in build(flags, env, config)._asdict().items() if f != name}
    assert others == {f: v for f, v in build()._asdict().items() if f != name}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_empty_and_none_fall_through(name):
    _flag, _env_s, cfg, _, _, want_cfg, _ = LAYERS[name]
    env_name, key = settings.SOURCES[name]
    assert getattr(build({name: None}, {env_name: ""}, {key: cfg}), name) == want_cfg
    assert getattr(build({name: ""}, {env_name: ""}, {key: cfg}), name) == want_cfg


def test_env_uses_the_variable_not_the_field_name():
    assert build(env={"http_port": "1234", "HTTP_PORT": "1234"}).http_port == 3000
    assert build(env={"RCONV_HTTP_PORT": "1234"}).http_port == 1234


def test_socket_config_key_is_socket():
    assert build(config={"socket": "/x.sock"}).socket_path == Path("/x.sock")
    assert build(config={"socket_path": "/x.sock"}).socket_path == SOCK


def test_config_path_from_flag():
    assert build({"config_path": "/etc/c.toml"}).config_path == Path("/etc/c.toml")
    assert build().config_path == CONF


def test_paths_expand_user(monkeypatch):
    monkeypatch.setenv("HOME", "/home/tester")
    assert build(env={"CONVOCATIONS_SOCKET": "~/s.sock"}).socket_path == Path("/home/tester/s.sock")


def test_unrelated_config_keys_do_not_change_settings():
    cfg = {"openrouter_api_key": {"backend": "keyring", "service": "convocations"}, "something_new": 1}
    assert build(config=cfg) == build()


def test_sources_say_where_each_value_came_from():
    s, sources = settings.resolve_with_sources(
        {"log_level": "debug"},
        {"RCONV_HTTP_PORT": "4000"},
        {"openrouter_url": "http://127.0.0.1:9", "http_port": 5000},
        socket_path=SOCK,
        config_path=CONF,
    )
    assert (s.http_port, s.log_level, s.openrouter_url) == (4000, "debug", "http://127.0.0.1:9")
    assert sources["http_port"] == "RCONV_HTTP_PORT" and sources["log_level"] == "--log-level"
    assert sources["openrouter_url"] == f"openrouter_url in {CONF}"
    assert sources["secret_backend"] == settings.DEFAULT


@pytest.mark.parametrize(
    ("name", "guess"),
    [("htp_port", "http_port"), ("flow_timeout", "flow_timeout_seconds"), ("log-level", "log_level"),
     ("Secret_Backend", "secret_backend"), ("completely_unrelated", None)],
)  # fmt: skip
def test_unknown_keys_get_the_closest_known_one(name, guess):
    warning = settings.unknown_key_warning(name, "config.toml", settings.CONFIG_KEYS)
    assert warning.startswith(f"unknown key {name} in config.toml is ignored")
    assert (f"(did you mean {guess}?)" in warning) if guess else "did you mean" not in warning


def test_unknown_key_names_are_shown_printable_and_short():
    warning = settings.unknown_key_warning("a\x1b[2Jb" + "x" * 100, "f", settings.CONFIG_KEYS)
    assert "\x1b" not in warning and len(warning) < 100


# What a person sees for a value of the wrong kind: what it must be, in words, never Python's own message.
HUMAN = [
    ("http_port", "three thousand", 'must be a whole port number from 1 to 65535 (0 picks a free one), not "three thousand"'),
    ("http_port", 3000.5, "not 3000.5"),
    ("http_port", [], "not a list"),
    ("flow_timeout_seconds", "forty", 'must be a positive number of seconds (below 10000000), not "forty"'),
    ("flow_timeout_seconds", {}, "not a table"),
    ("desktop_notifications", 1, "must be true or false, not 1"),
    ("log_level", "loud", 'must be one of debug, info, warning, error, not "loud"'),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "words"), HUMAN)
def test_invalid_values_get_human_messages(key, value, words):
    e = bad(config={key: value})
    assert words in e.message
    for python in ("invalid literal", "could not convert", "float()", "int()", "Traceback"):
        assert python not in str(e)


def test_error_hints_do_not_assume_the_daemon():
    e = bad(config={"http_port": "three thousand"})
    assert "start again" not in str(e) and e.hint == "Correct or remove that value."


def test_config_problems_lists_every_bad_value_even_when_overridden():
    problems = settings.config_problems({"http_port": "x", "log_level": "loud", "socket": "/s", "other": 1}, CONF)
    assert len(problems) == 2 and "http_port" in problems[0] and "log_level" in problems[1]
    assert settings.config_problems({"http_port": 3001}, CONF) == []


def test_settings_is_frozen():
    s = build()
    with pytest.raises(AttributeError):
        s.http_port = 1  # type: ignore[misc]


# -- ports -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, 1, 80, 3000, 65535])
def test_port_bounds_accepted(port):
    assert build({"http_port": port}).http_port == port
    assert build(env={"RCONV_HTTP_PORT": str(port)}).http_port == port
    assert build(config={"http_port": port}).http_port == port


@pytest.mark.parametrize(
    "port", [-1, 65536, 100000, "-1", "65536", "abc", "3e3", "0x10", True, False, [], {}, "3000.5"]
)
def test_port_rejected(port):
    e = bad(config={"http_port": port})
    assert "http_port" in e.message and str(CONF) in e.message


def test_fractional_port_rejected():
    bad(config={"http_port": 3000.5})


# -- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("https://openrouter.ai", "https://openrouter.ai"),
        ("https://openrouter.ai/", "https://openrouter.ai"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://[::1]:8123/prefix/", "http://[::1]:8123/prefix"),
    ],
)
def test_url_accepted(url, want):
    assert build(env={"CONVOCATIONS_OPENROUTER_URL": url}).openrouter_url == want


@pytest.mark.parametrize("url", ["ftp://openrouter.ai", "openrouter.ai", "file:///etc/passwd", "javascript:alert(1)",
                                 "//openrouter.ai", " https://openrouter.ai", 5, True, ["https://x"]])  # fmt: skip
def test_url_scheme_checked(url):
    e = bad(config={"openrouter_url": url})
    assert "openrouter_url" in e.message and "http" in e.message


@pytest.mark.parametrize("url", ["http://", "https://", "https:///"])
def test_url_without_host_rejected(url):
    bad(env={"CONVOCATIONS_OPENROUTER_URL": url})


# -- choices and bools -----------------------------------------------------------------------------


@pytest.mark.parametrize("level", settings.LOG_LEVELS)
def test_log_levels(level):
    assert build(env={"CONVOCATIONS_LOG_LEVEL": level}).log_level == level


@pytest.mark.parametrize("level", ["verbose", "critical", "trace", 10, True])
def test_bad_log_level(level):
    e = bad(config={"log_level": level})
    assert all(lv in e.message for lv in settings.LOG_LEVELS)


@pytest.mark.parametrize("backend", ["file", "plaintext", "auto", "Keyring", 1])
def test_bad_backend(backend):
    e = bad(env={"CONVOCATIONS_SECRET_BACKEND": backend})
    assert "CONVOCATIONS_SECRET_BACKEND" in e.message
    assert "keyring" in e.message and "local-encrypted" in e.message


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "True", "yes", "YES", "on", "On"])
def test_env_bools_true(text):
    assert build(env={"CONVOCATIONS_DESKTOP_NOTIFICATIONS": text}).desktop_notifications is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "no", "No", "off", "OFF"])
def test_env_bools_false(text):
    assert build(env={"CONVOCATIONS_DESKTOP_NOTIFICATIONS": text}).desktop_notifications is False


@pytest.mark.parametrize("text", ["maybe", "2", "t", "y", " true", "true ", "enabled"])
def test_env_bools_rejected(text):
    e = bad(env={"CONVOCATIONS_DESKTOP_NOTIFICATIONS": text})
    assert "CONVOCATIONS_DESKTOP_NOTIFICATIONS" in e.message


@pytest.mark.parametrize("value", [1, 0, 1.0, [], {}])
def test_config_bools_must_be_bools(value):
    bad(config={"desktop_notifications": value})


def test_config_false_is_a_value_not_absence():
    assert build(config={"desktop_notifications": False}).desktop_notifications is False
    assert (
        build(
            env={"CONVOCATIONS_DESKTOP_NOTIFICATIONS": "on"}, config={"desktop_notifications": False}
        ).desktop_notifications
        is True
    )


# -- seconds ---------------------------------------------------------------------------------------

SECONDS = [
    "idle_exit_seconds",
    "flow_timeout_seconds",
    "exchange_timeout_seconds",
    "keyring_timeout_seconds",
    "account_cache_seconds",
]


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", ["0", 0, -1, "-0.5", "nan", "inf", "-inf", 10**7, "1e9", True, "abc", [], {}])
def test_seconds_rejected(name, value):
    e = bad(config={name: value})
    assert name in e.message


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize(("value", "want"), [("0.001", 0.001), (1, 1.0), ("600", 600.0), (9_999_999, 9_999_999.0)])
def test_seconds_accepted(name, value, want):
    assert getattr(build(config={name: value}), name) == want


# -- errors name their source ----------------------------------------------------------------------

INVALID = {
    "http_port": "99999",
    "socket_path": 5,
    "openrouter_url": "ftp://x",
    "log_level": "loud",
    "secret_backend": "file",
    "desktop_notifications": "maybe",
    "idle_exit_seconds": "-1",
    "flow_timeout_seconds": "0",
    "exchange_timeout_seconds": "never",
    "keyring_timeout_seconds": "nan",
    "account_cache_seconds": "-5",
    "allow_stateless_callbacks": "sometimes",
    "allow_port_fallback": "sometimes",
}


@pytest.mark.parametrize("name", sorted(set(LAYERS) - {"socket_path"}))  # any non-empty string is a path
def test_bad_env_value_names_the_variable(name):
    env_name, _ = settings.SOURCES[name]
    e = bad(env={env_name: INVALID[name]}, config={settings.SOURCES[name][1]: LAYERS[name][2]})
    assert env_name in e.message and name in e.message
    assert str(CONF) not in e.message


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_config_value_names_key_and_file(name):
    _, key = settings.SOURCES[name]
    e = bad(config={key: INVALID[name]})
    assert f"{key} in {CONF}" in e.message
    assert settings.SOURCES[name][0] not in e.message


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_flag_value_names_a_flag_and_wins_over_good_lower_layers(name):
    env_name, key = settings.SOURCES[name]
    e = bad(flags={name: INVALID[name]}, env={env_name: LAYERS[name][1]}, config={key: LAYERS[name][2]})
    assert "--" in e.message and env_name not in e.message and str(CONF) not in e.message


def test_a_bad_lower_layer_is_not_consulted_when_a_higher_one_is_set():
    assert build(env={"RCONV_HTTP_PORT": "4000"}, config={"http_port": "garbage"}).http_port == 4000


# The contract's daemon flags: --port, --socket, --openrouter-url, --log-level, --config.
CONTRACT_FLAGS = [
    pytest.param("openrouter_url", "--openrouter-url", "ftp://x"),
    pytest.param("log_level", "--log-level", "loud"),
    pytest.param(
        "http_port", "--port", 99999,
    ),
    pytest.param(
        "socket_path", "--socket", 5,
    ),
    pytest.param(
        "config_path", "--config", 5,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "flag", "value"), CONTRACT_FLAGS)
def test_flag_errors_name_the_real_flag(name, flag, value):
    e = bad(flags={name: value})
    assert f"from {flag}:" in e.message
