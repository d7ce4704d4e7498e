"""Output people and programs rely on: with --json every failure is one JSON object on stdout with the usual exit
code; every flag and subcommand has help; `service install` says plainly when nothing could be enabled; config
errors in convctl use convctl's words. Through the real convctl."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convocationsd.cli import main as cli
from tests.conftest import base_env, convctl, dead_url

# Every command, as a person would type it, run with no daemon: (argv, stdin, exit code).
NO_DAEMON = [
    (["status"], None, 3),
    (["oauth", "start", "--no-browser"], None, 3),
    (["oauth", "cancel"], None, 3),
    (["events"], None, 3),
    (["secret", "set-openrouter-key"], "not a key\n", 2),
    (["secret", "get-openrouter-key"], None, 1),
    (["exec", "--", "true"], None, 1),
    (["exec"], None, 2),
    (["service", "frobnicate"], None, 2),
    (["status", "--frobnicate"], None, 2),
]


@pytest.fixture
def env(short_tmp):
    return base_env(short_tmp, CONVOCATIONS_SECRET_BACKEND="local-encrypted")


@pytest.mark.parametrize(("argv", "stdin", "code"), NO_DAEMON, ids=[" ".join(a) for a, _, _ in NO_DAEMON])
def test_json_errors_have_one_shape_and_the_same_exit_codes(env, argv, stdin, code):
    text = convctl(env, *argv, input=stdin)
    assert text.returncode == code and text.stdout == "" and text.stderr.startswith("convctl: ")
    assert "Traceback" not in text.stderr
    at = argv.index("--") if "--" in argv else len(argv)
    as_json = convctl(env, *argv[:at], "--json", *argv[at:], input=stdin)
    assert as_json.returncode == code and as_json.stderr == ""
    error = json.loads(as_json.stdout)["error"]
    assert set(error) == {"kind", "message", "hint"} and error["message"] and error["hint"]
    assert error["message"] in text.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "secret", "status"],
        ["secret", "--json", "status"],
        ["secret", "status", "--json"],
        ["secret", "status"],
    ],
)
def test_json_is_one_flag_wherever_it_stands(argv):
    args = cli.build_parser().parse_args(argv)
    assert args.json is ("--json" in argv)
    assert {name for name in vars(args) if "json" in name} == {"json"}


def test_json_error_kinds(env):
    kind = lambda *argv: json.loads(convctl(env, *argv).stdout)["error"]["kind"]  # noqa: E731
    assert kind("status", "--json") == "DaemonUnreachable"
    assert kind("status", "--json", "--frobnicate") == "UsageError"
    assert kind("secret", "get-openrouter-key", "--json") == "ConvError"


def _answer(env, *argv: str, input: str | None = None, code: int = 0):
    done = convctl(env, *argv, input=input)
    assert done.returncode == code and done.stderr == "", done
    return json.loads(done.stdout)


def test_successes_with_json_are_json(env):
    """A command that worked prints its answer as JSON, not the error object every failure prints too."""
    key = "sk-or-v1-" + "0123456789abcdef" * 4
    # No key stored: the answer still, with exit 1 (as `gh auth status`, issue 20).
    assert _answer(env, "secret", "status", "--json", code=1) == {"stored": False, "backend": None}
    assert _answer(env, "secret", "set-openrouter-key", "--no-verify", "--json", input=key + "\n") == {
        "stored": True,
        "backend": "local-encrypted",
    }
    assert _answer(env, "secret", "status", "--json") == {"stored": True, "backend": "local-encrypted"}
    assert _answer(env, "secret", "clear-openrouter-key", "--json") == {"cleared": True}
    assert _answer(env, "secret", "clear-openrouter-key", "--json") == {"cleared": False}
    # doctor exits 1 here (no daemon runs), and its answer is still the report of every check.
    report = _answer({**env, "CONVOCATIONS_OPENROUTER_URL": dead_url()}, "doctor", "--json", code=1)
    assert [r["check"] for r in report] == [
        "daemon", "port", "callback", "account", "secret-backend", "config", "files", "openrouter"
    ]  # fmt: skip
    assert all(set(r) == {"check", "ok", "checked", "verdict", "fix", "note"} for r in report)
    assert report[0]["ok"] is False and "not running" in report[0]["verdict"]


def _parsers(parser: argparse.ArgumentParser, path: str = "convctl"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`{path} {name}` has no help line"
                yield from _parsers(sub, f"{path} {name}")


def test_every_flag_and_subcommand_has_help():
    seen = []
    for path, parser in _parsers(cli.build_parser()):
        seen.append(path)
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, f"{path} {action.option_strings or action.dest} has no help"
    for path in ("convctl service install", "convctl service uninstall", "convctl service status", "convctl exec"):
        assert path in seen


@pytest.mark.parametrize("action", ["install", "uninstall", "status"])
def test_service_subcommands_have_their_own_help(env, action):
    done = convctl(env, "service", action, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"usage: convctl service {action}")
    assert ("--dry-run" in done.stdout) is (action != "status")


def test_service_install_without_a_user_manager_says_the_units_are_not_enabled(env, short_tmp):
    """Here no systemd user manager runs for these directories (XDG_RUNTIME_DIR is a fresh temporary one, so
    systemctl --user finds no manager, and nothing of the real user's is touched)."""
    env = {**env, "HOME": str(short_tmp / "home"), "DBUS_SESSION_BUS_ADDRESS": ""}
    (short_tmp / "run").mkdir(mode=0o700, exist_ok=True)
    done = convctl(env, "service", "install")
    units = short_tmp / "cfg" / "systemd" / "user"
    assert done.returncode == 1
    assert all((units / name).is_file() for name in ("convocationsd.service", "convocationsd.socket"))
    assert f"NOT ENABLED: the unit files are written to {units}" in done.stdout
    assert "but not enabled" in done.stderr and "systemctl --user daemon-reload &&" in done.stderr
    assert "running: systemctl" not in done.stdout  # nothing was run that could not work
    as_json = json.loads(convctl(env, "service", "install", "--json").stdout)
    assert as_json["error"]["kind"] == "ServiceManagerError"


def test_config_errors_in_convctl_use_convctls_words(env, short_tmp):
    config = short_tmp / "cfg" / "convocations" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('keyring_timeout_seconds = "forever"\n')
    done = convctl(env, "secret", "status")  # no daemon: convctl resolves the settings itself
    assert done.returncode == 1
    assert f"Invalid keyring_timeout_seconds from keyring_timeout_seconds in {config}" in done.stderr
    assert 'not "forever"' in done.stderr and "start again" not in done.stderr and "Traceback" not in done.stderr


def test_the_console_script_exits_with_mains_code_and_all_its_output(env, capsys, monkeypatch):
    # convctl ends with os._exit, skipping the interpreter's teardown (cli.main.entry): what main printed must
    # still all arrive, and its exit code be the process's.
    script = Path(sys.executable).with_name("convctl")
    env = dict(env, COLUMNS="100")
    helped = subprocess.run([script, "--help"], env=env, capture_output=True, text=True, timeout=60)
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.main(["--help"]) == 0
    assert helped.returncode == 0 and helped.stdout == capsys.readouterr().out and "secret" in helped.stdout
    bad = subprocess.run([script, "status", "--frobnicate"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.startswith("convctl: Unrecognized arguments")


def test_the_console_script_leaves_quietly_when_its_reader_has_gone(env):
    # `convctl ... | head`: the output goes nowhere, and neither main nor the flush in entry may say more.
    script = Path(sys.executable).with_name("convctl")
    read, write = os.pipe()
    os.close(read)
    done = subprocess.run([script, "--help"], env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write)
    assert done.returncode == 0 and done.stderr == ""
