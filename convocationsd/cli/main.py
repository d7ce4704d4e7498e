"""convctl (also installed as ``convocations``): a thin adapter from the command line to the daemon.

It speaks the socket protocol with the blocking client and imports nothing heavy; the secret commands
fall back to the files directly when no daemon runs (the same store code the daemon uses).
"""

from __future__ import annotations

import argparse
import json
import sys

from convocationsd import __version__
from convocationsd.common.cmdline import ArgumentParser
from convocationsd.core.errors import ConvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs more to import than the rest of a `convctl status`
    from typing import Any, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Out:
    """The streams and terminal facts a command uses (injected in tests)."""

    def __init__(self, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr, stdin: TextIO = sys.stdin) -> None:
        self.stdout, self.stderr, self.stdin = stdout, stderr, stdin

    def print(self, *args: Any) -> None:
        print(*args, file=self.stdout, flush=True)

    def err(self, *args: Any) -> None:
        print(*args, file=self.stderr, flush=True)

    def json(self, data: Any) -> None:
        self.print(json.dumps(data, ensure_ascii=False))

    @property
    def tty(self) -> bool:
        return self.stderr.isatty()


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="convctl", description="Control the convocationsd daemon.")
    p.add_argument("--socket", help="the daemon's socket (env CONVOCATIONS_SOCKET)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"convctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("status", help="daemon and account status")
    s.add_argument("--json", action="store_true")

    oauth = sub.add_parser("oauth", help="link your OpenRouter account").add_subparsers(dest="action", required=True)
    start = oauth.add_parser("start", help="start (or join) a login and wait for it")
    start.add_argument("--no-browser", action="store_true", help="print the URL without opening a browser")
    start.add_argument("--restart", action="store_true", help="cancel a pending login and start anew")
    start.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    start.add_argument("--paste", action="store_true", help="headless: paste the code OpenRouter shows")
    start.add_argument("--json", action="store_true")
    oauth.add_parser("cancel", help="cancel the pending login")

    ev = sub.add_parser("events", help="print events until interrupted")
    ev.add_argument("--json", action="store_true", help="one JSON object per line")

    secret = sub.add_parser("secret", help="the stored OpenRouter key").add_subparsers(dest="action", required=True)
    secret.add_parser("set-openrouter-key", help="store a key (hidden prompt, or one line from stdin)")
    secret.add_parser("clear-openrouter-key", help="remove the stored key")
    st = secret.add_parser("status", help="is a key stored, and where")
    st.add_argument("--json", action="store_true")

    service = sub.add_parser("service", help="install as a systemd user service / launchd agent")
    service.add_argument("action", choices=["install", "uninstall", "status"])
    service.add_argument("--dry-run", action="store_true", help="print what would be done")

    doctor = sub.add_parser("doctor", help="check the setup and say how to fix what is wrong")
    doctor.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None, out: Out | None = None) -> int:
    out = out or Out()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        return run(args, out)
    except ConvError as e:
        if args.debug:
            raise
        out.err(f"convctl: {e.message}")
        if e.hint:
            out.err(e.hint)
        return e.exit_code
    except KeyboardInterrupt:
        out.err("interrupted")
        return EXIT_FAILED
    except BrokenPipeError:  # `convctl ... | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return EXIT_OK


def run(args: argparse.Namespace, out: Out) -> int:
    from convocationsd.cli import commands

    handler = {
        "status": commands.status,
        "oauth": commands.oauth,
        "events": commands.events,
        "secret": commands.secret,
        "service": commands.service,
        "doctor": commands.doctor,
    }[args.command]
    return handler(args, out)


if __name__ == "__main__":
    sys.exit(main())
