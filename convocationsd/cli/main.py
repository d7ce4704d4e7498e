"""convctl (also installed as ``convocations``): a thin adapter from the command line to the daemon.

It speaks the socket protocol with the blocking client and imports nothing heavy; the secret commands
fall back to the files directly when no daemon runs (the same store code the daemon uses).
"""

from __future__ import annotations

import argparse
import os
import sys

from convocationsd import __version__
from convocationsd.cli.terminal import safe_json, safe_line
from convocationsd.common.cmdline import ArgumentParser
from convocationsd.core.errors import ConvError, RemoteError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs more to import than the rest of a `convctl status`
    from typing import Any, NoReturn, TextIO

EXIT_OK, EXIT_USAGE = 0, 2


class Out:
    """The streams and terminal facts a command uses (injected in tests). Everything a command prints goes
    through ``print``, ``err`` or ``json``: one argument is one line, made inert (``terminal``), so text
    from the daemon, OpenRouter, the OS or a file can neither send escape sequences nor forge lines."""

    def __init__(self, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr, stdin: TextIO = sys.stdin) -> None:
        self.stdout, self.stderr, self.stdin = stdout, stderr, stdin

    def print(self, *lines: Any) -> None:
        _write(self.stdout, lines)

    def err(self, *lines: Any) -> None:
        _write(self.stderr, lines)

    def json(self, data: Any) -> None:
        self.stdout.write(safe_json(data) + "\n")
        self.stdout.flush()

    @property
    def tty(self) -> bool:
        return self.stderr.isatty()


def _write(stream: TextIO, lines: tuple[Any, ...]) -> None:
    stream.write("".join(safe_line(str(line)) + "\n" for line in lines or ("",)))
    stream.flush()


class _Parser(ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error is a UsageError like any other, so ``main`` reports it (as JSON with --json)."""
        raise UsageError(f"{message[:1].upper()}{message[1:]}.", f"Run `{self.prog} --help` for the usage.")


JSON_HELP = "print the result, or the error, as JSON on stdout"


def _json_flag(p: argparse.ArgumentParser, help: str = JSON_HELP) -> None:
    p.add_argument("--json", action="store_true", help=help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convctl", description="Control the convocationsd daemon.")
    p.add_argument("--socket", metavar="PATH", help="the daemon's socket (env CONVOCATIONS_SOCKET)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"convctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".")

    def actions(name: str, help: str) -> Any:
        """A command whose subcommands (ACTION) are the real commands: oauth, secret, service."""
        return command(sub, name, help).add_subparsers(dest="action", required=True, metavar="ACTION")

    _json_flag(command(sub, "status", "daemon and account status"))

    oauth = actions("oauth", "link your OpenRouter account")
    start = command(oauth, "start", "start (or join) a login and wait for it")
    start.add_argument("--no-browser", action="store_true", help="print the URL without opening a browser")
    start.add_argument("--restart", action="store_true", help="cancel a pending login and start anew")
    start.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    start.add_argument("--paste", action="store_true", help="headless: paste the code OpenRouter shows")
    _json_flag(start, "print the login's events (started, complete), or the error, as JSON lines on stdout")
    _json_flag(command(oauth, "cancel", "cancel the pending login"))

    _json_flag(command(sub, "events", "print events until interrupted"), "one JSON object per line")

    secret = actions("secret", "the stored OpenRouter key")
    set_key = command(
        secret,
        "set-openrouter-key",
        "store a key: a hidden prompt on a terminal, else one line from stdin",
        "Store an OpenRouter API key. On a terminal it asks with a hidden prompt; when stdin is not a terminal "
        "it reads the key from the first line of stdin (`convctl secret set-openrouter-key < key.txt`). The key "
        "is checked with OpenRouter first when OpenRouter can be reached.",
    )
    set_key.add_argument("--no-verify", action="store_true", help="store the key without asking OpenRouter about it")
    _json_flag(set_key)
    get_key = command(
        secret,
        "get-openrouter-key",
        "print the stored key, for scripts (refuses a terminal unless --show)",
        "Print the stored OpenRouter key on stdout, for scripts: `KEY=$(convctl secret get-openrouter-key)`. "
        "It refuses when stdout is a terminal, where the key would stay on screen, unless --show.",
    )
    get_key.add_argument("--show", action="store_true", help="print the key even when stdout is a terminal")
    _json_flag(get_key, 'print {"key": ...}, or the error, as JSON on stdout')
    _json_flag(command(secret, "clear-openrouter-key", "remove the stored key"))
    _json_flag(command(secret, "status", "is a key stored, and where"))

    run = command(
        sub,
        "exec",
        "run a command with OPENROUTER_API_KEY set from the store",
        "Run COMMAND with OPENROUTER_API_KEY set to the stored key in its environment (never on its command "
        "line), and exit with its exit status: `convctl exec -- python my_script.py`.",
    )
    _json_flag(run, "print an error before COMMAND starts as JSON on stdout")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]", help="what to run")

    service = actions("service", "install as a systemd user service / launchd agent")
    install = command(
        service,
        "install",
        "install the service and start listening",
        "Write the systemd user units (Linux) or the launchd agent (macOS) for this installation and enable "
        "them, so convocationsd starts on the first connection.",
    )
    uninstall = command(service, "uninstall", "stop the service and remove its files")
    for p_ in (install, uninstall):
        p_.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
        _json_flag(p_, 'print {"steps": [...]}, or the error, as JSON on stdout')
    _json_flag(command(service, "status", "are the service files installed and current, and running"))

    doctor = command(sub, "doctor", "check the setup and say how to fix what is wrong")
    _json_flag(doctor, "print the checks as a JSON list on stdout")
    return p


def _wants_json(argv: list[str]) -> bool:
    """--json among convctl's own arguments (not those after `--`, which belong to `exec`'s command)."""
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def main(argv: list[str] | None = None, out: Out | None = None) -> int:
    out = out or Out()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    as_json, debug = _wants_json(argv), "--debug" in argv
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return EXIT_USAGE if e.code else EXIT_OK
        as_json, debug = getattr(args, "json", False), args.debug
        return run(args, out)
    except ConvError as e:
        if debug:
            raise
        return _fail(out, as_json, e.kind if isinstance(e, RemoteError) and e.kind else type(e).__name__, e)
    except KeyboardInterrupt:
        return _fail(out, as_json, "Interrupted", ConvError("Interrupted."))
    except BrokenPipeError:  # `convctl ... | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return EXIT_OK


def _fail(out: Out, as_json: bool, kind: str, e: ConvError) -> int:
    if as_json:
        out.json({"error": {"kind": kind, "message": e.message, "hint": e.hint}})
    else:
        out.err(f"convctl: {e.message}")
        if e.hint:
            out.err(e.hint)
    return e.exit_code


def run(args: argparse.Namespace, out: Out) -> int:
    from convocationsd.cli import commands

    handler = {
        "status": commands.status,
        "oauth": commands.oauth,
        "events": commands.events,
        "secret": commands.secret,
        "exec": commands.exec_command,
        "service": commands.service,
        "doctor": commands.doctor,
    }[args.command]
    return handler(args, out)


def entry() -> NoReturn:
    """The console scripts' entry point: ``main``, then an exit without the interpreter's teardown (freeing
    every module and object one by one), which was ~11 % of a `convctl status` (bench/ANALYSIS.md). Nothing
    is lost: what convctl prints is flushed here, it adds no logging handler and no atexit work of its own,
    and its only threads (keyring calls) are daemon threads, which no exit waits for. store/helper.py ends
    the same way."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader went away (`convctl ... | head`), or main closed it
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
