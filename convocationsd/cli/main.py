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
from convocationsd.core.errors import KEYS_PAGE, ConvError, RemoteError, UsageError, kind_of

TYPE_CHECKING = False  # not from typing: importing typing is ~10 % of `convctl status` (bench/ANALYSIS.md)
if TYPE_CHECKING:  # typing costs more to import than the rest of a `convctl status`
    from typing import Any, NoReturn, TextIO

EXIT_OK, EXIT_USAGE = 0, 2
EXIT_CODES = (
    "Exit status: 0 done; 1 the operation failed (for status: no usable key is stored); 2 a usage error; 3 the "
    "daemon cannot be reached, or its socket is not to be trusted. exec exits with COMMAND's own status (127: "
    "not found, 126: cannot run)."
)
STATUS_EXIT_CODES = (
    "Exit status: 0 a key is stored (and, as far as is known, usable); 1 no key is stored, OpenRouter does not "
    "accept it, or it cannot be read; 3 the daemon cannot be reached."
)
SECRET_STATUS_EXIT_CODES = "Exit status: 0 a key is stored; 1 none is; 3 the daemon's socket is not to be trusted."
# command -> the command and action it stands for (gh's habits: `gh auth login`, `logout`, `token`)
ALIASES = {
    "login": ("oauth", "start"),
    "logout": ("secret", "clear-openrouter-key"),
    "token": ("secret", "get-openrouter-key"),
}


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
        guess = _did_you_mean(self, message)
        hint = f"Did you mean `{self.prog} {guess}`? " if guess else ""
        raise UsageError(f"{message[:1].upper()}{message[1:]}.", f"{hint}Run `{self.prog} --help` for the usage.")


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str | None:
    """For argparse's "invalid choice: 'stauts'": the closest command or action (only on this error path, so
    difflib costs the commands that work nothing)."""
    import difflib
    import re

    found = re.search(r"invalid choice: ('[^']*'|\"[^\"]*\")", message)
    if not found:
        return None
    typed = found.group(1)[1:-1]
    choices = [c for a in parser._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices]
    started = [c for c in choices if typed and c.startswith(typed.lower())]
    if len(started) == 1:  # the start of one name: `secret clear` for clear-openrouter-key
        return started[0]
    close = difflib.get_close_matches(typed.lower(), choices, n=1, cutoff=0.6)
    return close[0] if close else None


JSON_HELP = "print the result, or the error, as JSON on stdout"


def _json_flag(p: argparse.ArgumentParser, help: str = JSON_HELP) -> None:
    # One dest wherever --json stands: a subparser sets it only when given (SUPPRESS), so its default never
    # overwrites what the parser above it parsed; convctl's own --json holds the default, False.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convctl", description="Control the convocationsd daemon.", epilog=EXIT_CODES)
    p.add_argument("--socket", metavar="PATH", help="the daemon's socket (env CONVOCATIONS_SOCKET)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--json", action="store_true", help="as --json after the command")
    p.add_argument("--version", action="version", version=f"convctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[_Parser],
        name: str,
        help: str,
        description: str | None = None,
        epilog: str | None = None,
    ) -> _Parser:
        description = description or help[:1].upper() + help[1:] + "."
        return parent.add_parser(name, help=help, description=description, epilog=epilog)

    def actions(name: str, help: str) -> argparse._SubParsersAction[_Parser]:
        """A command whose subcommands (ACTION) are the real commands: oauth, secret, service."""
        group = command(sub, name, help)
        _json_flag(group, "as --json after ACTION")
        return group.add_subparsers(dest="action", required=True, metavar="ACTION")

    _json_flag(command(sub, "status", "daemon and account status", epilog=STATUS_EXIT_CODES))

    def login_flags(start: argparse.ArgumentParser) -> None:
        start.add_argument("--no-browser", action="store_true", help="print the URL without opening a browser")
        start.add_argument("--restart", action="store_true", help="cancel a pending login and start anew")
        start.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
        start.add_argument("--paste", action="store_true", help="headless: paste the code OpenRouter shows")
        start.add_argument("--yes", action="store_true", help="link again without asking when a key is already stored")
        _json_flag(start, "print the login's events (started, complete), or the error, as JSON lines on stdout")

    oauth = actions("oauth", "link your OpenRouter account")
    login_help = "start (or join) a login and wait for it"
    login_description = (
        "Start (or join) a login and wait for it. When a key is already stored, linking again creates a second "
        f"key at OpenRouter (the old one stays valid until you delete it at {KEYS_PAGE}): on a "
        "terminal it asks first, --yes does not ask, and without a terminal it goes ahead and says so."
    )
    login_flags(command(oauth, "start", login_help, login_description))
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

    def get_key_flags(get_key: argparse.ArgumentParser) -> None:
        get_key.add_argument("--show", action="store_true", help="print the key even when stdout is a terminal")
        _json_flag(get_key, 'print {"key": ...}, or the error, as JSON on stdout')

    get_key_help = "print the stored key, for scripts (refuses a terminal unless --show)"
    get_key_description = (
        "Print the stored OpenRouter key on stdout, for scripts: `KEY=$(convctl secret get-openrouter-key)`. "
        "It refuses when stdout is a terminal, where the key would stay on screen, unless --show."
    )
    get_key_flags(command(secret, "get-openrouter-key", get_key_help, get_key_description))
    clear_help = "remove the stored key (it stays valid at OpenRouter until you delete it there)"
    _json_flag(command(secret, "clear-openrouter-key", clear_help))
    _json_flag(
        command(
            secret,
            "retry-store",
            "store the key the daemon holds in memory after storing it failed",
            "Store the key OpenRouter issued at a login whose storing failed (`convctl status` shows it); the "
            "daemon holds such a key in memory until it is stored. Fix the cause first (the login's error says "
            "what it was), then run this.",
        )
    )
    _json_flag(command(secret, "status", "is a key stored, and where", epilog=SECRET_STATUS_EXIT_CODES))

    run = command(
        sub,
        "exec",
        "run a command with OPENROUTER_API_KEY set from the store",
        "Run COMMAND with OPENROUTER_API_KEY set to the stored key in its environment (never on its command "
        "line), and exit with its exit status: `convctl exec -- python my_script.py`. --env passes the key under "
        "more names too, for OpenAI-compatible SDKs: `convctl exec --env OPENAI_API_KEY -- COMMAND`.",
    )
    _json_flag(run, "print an error before COMMAND starts as JSON on stdout")
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        dest="env_names",
        help="also set the variable NAME to the key (repeatable); OPENROUTER_API_KEY is always set. Refused, "
        "since COMMAND would break: PATH, HOME, SHELL, USER, LOGNAME, PWD, TMPDIR, TERM, LANG, IFS, ENV, BASH_ENV, "
        "names starting with LD_, DYLD_, PYTHON, LC_, XDG_ or DBUS_, and a name already set in your environment "
        "unless it ends in KEY or TOKEN (as OPENAI_API_KEY does)",
    )
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

    doctor = command(
        sub,
        "doctor",
        "check the setup and say how to fix what is wrong",
        epilog='Exit status: 0 no check failed; 1 a check failed. A check that cannot be made yet says "not '
        'checked" (--): one that needs the daemon while none runs, and the account while OpenRouter has not '
        "answered about the stored key; it is counted apart and fails nothing.",
    )
    _json_flag(doctor, "print the checks as a JSON list on stdout")

    # Aliases, as gh has them; each takes the flags of the command it stands for.
    login_flags(command(sub, "login", "the same as `oauth start`", login_description))
    _json_flag(
        command(
            sub, "logout", "the same as `secret clear-openrouter-key`", clear_help[:1].upper() + clear_help[1:] + "."
        )
    )
    get_key_flags(command(sub, "token", "the same as `secret get-openrouter-key`", get_key_description))
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
        as_json = args.json
        debug = args.debug
        return run(args, out)
    except ConvError as e:
        if debug:
            raise
        return _fail(out, as_json, e.kind if isinstance(e, RemoteError) and e.kind else kind_of(type(e)), e)
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

    if args.command in ALIASES:
        args.command, args.action = ALIASES[args.command]
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
