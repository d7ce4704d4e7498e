"""The convctl commands. Each takes the parsed arguments and an ``Out`` and returns an exit code."""

from __future__ import annotations

import argparse
import os
import sys
import time

from convocationsd.client import Client, status_with_account
from convocationsd.core.errors import (
    KEYS_PAGE,
    CodeRejected,
    ConvError,
    DaemonUnreachable,
    NoReply,
    RemoteError,
    UsageError,
)
from convocationsd.core.states import FlowStatus

TYPE_CHECKING = False  # not from typing: importing typing is ~10 % of `convctl status` (bench/ANALYSIS.md)
if TYPE_CHECKING:  # typing is not imported at run time: convctl starts faster without it
    from collections.abc import Mapping
    from typing import Any

EXIT_OK, EXIT_FAILED = 0, 1
STILL_VALID = f"it stays valid at OpenRouter until you delete it at {KEYS_PAGE}"
PASTE_ATTEMPTS = 3  # codes a person may paste before the login is cancelled
# The daemon answers `oauth.exchange` after OpenRouter answered (exchange_timeout_seconds, 30 s by default)
# and the key is stored, which may wait for a person to answer a keyring unlock prompt.
EXCHANGE_REPLY_SECONDS = 300.0


def _client(args: argparse.Namespace) -> Client:
    client = Client(args.socket)
    client.connect()
    return client


# -- status ------------------------------------------------------------------------------------------


def status(args: argparse.Namespace, out: Any) -> int:
    with _client(args) as c:
        st = status_with_account(c)
    code = EXIT_OK if usable_key(st) else EXIT_FAILED  # as `gh auth status`: scripts can test for a key
    if args.json:
        out.json(st)
        return code
    secret = st.get("secret") or {}
    out.print(f"daemon:   running (pid {st['pid']}, version {st['version']})")
    port_note = (
        "  (FALLBACK: the preferred port was busy; `convctl doctor` says what that means)"
        if st.get("port_fallback")
        else ""
    )
    out.print(f"http:     {st['http_url']}{port_note}")
    out.print(f"socket:   {st['socket']}")
    out.print(
        f"account:  {'linked, key in ' + str(secret.get('backend')) if secret.get('stored') else 'not linked (run `convctl oauth start`)'}"
    )
    account = st.get("account")
    if account:
        out.print(f"key:      {_account_line(account)}")
    flow = st.get("flow")
    if flow:
        out.print(f"login:    {_login_line(flow)}")
    unsaved = st.get("unsaved_key")
    if unsaved:
        out.print(
            f"UNSAVED:  the key of login {unsaved.get('session_id')} could not be stored "
            f"({str(unsaved.get('reason')).rstrip('.')}); the daemon holds it in memory only and loses it if it "
            "stops. Fix the cause, then run `convctl secret retry-store`."
        )
        replaced = [str(s) for s in unsaved.get("replaced") or ()]
        if replaced:
            which = f"login {replaced[0]}" if len(replaced) == 1 else f"logins {', '.join(replaced)}"
            out.print(
                f"          It replaced the key of {which}, held in memory and never stored, which still works at "
                f"OpenRouter: delete it at {KEYS_PAGE} if you do not use it."
            )
    for entry in st.get("restart_needed") or ():
        out.print(f"restart:  {_restart_line(entry)}")
    return code


def usable_key(st: dict[str, Any]) -> bool:
    """A key is stored, and nothing known says it cannot be used (OpenRouter refused it, the store cannot give it)."""
    account = st.get("account") or {}
    return (
        bool((st.get("secret") or {}).get("stored"))
        and account.get("valid") is not False
        and account.get("readable") is not False
    )


def _restart_line(entry: dict[str, Any]) -> str:
    from convocationsd.common.settings import pending_change

    return pending_change(str(entry.get("setting")), entry.get("value"), str(entry.get("source")), entry.get("running"))


def _login_line(flow: dict[str, Any]) -> str:
    """A pending login as the current state; a finished one as history (the key may have changed since)."""
    started = str(flow.get("created_at") or "").replace("T", " ").replace("Z", " UTC")
    if flow.get("status") in (FlowStatus.PENDING, FlowStatus.EXCHANGING):
        return f"{flow['status']} (session {flow['session_id']}, started {started})"
    line = f"none pending; the last one {flow.get('status')} (session {flow['session_id']}, started {started})"
    if flow.get("error"):
        line += f": {flow['error']['message']}"
    return line


def _money(value: Any) -> str:
    return f"${value:,.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "unknown"


def _account_line(account: dict[str, Any]) -> str:
    if account.get("valid") is False:
        return account.get("message") or "the stored key is not accepted by OpenRouter - run `convctl oauth start`"
    if account.get("message"):
        return str(account["message"])
    limit = account.get("limit")
    parts = [f"label {account.get('label') or '(none)'}", f"usage {_money(account.get('usage'))}"]
    if limit is None:
        parts.append("no limit")
    else:
        parts.append(f"limit {_money(limit)} ({_money(account.get('limit_remaining'))} left)")
    return ", ".join(parts)


# -- oauth -------------------------------------------------------------------------------------------


def oauth(args: argparse.Namespace, out: Any) -> int:
    if args.action == "cancel":
        with _client(args) as c:
            cancelled = c.call("oauth.cancel")["cancelled"]
        if args.json:
            out.json({"cancelled": cancelled})
        else:
            out.print("cancelled the pending login" if cancelled else "no login was pending")
        return EXIT_OK
    return oauth_start(args, out)


def oauth_start(args: argparse.Namespace, out: Any) -> int:
    from convocationsd.core.events import AUTH_COMPLETE  # here: core.events imports typing and logging

    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds.")
    with _client(args) as c:
        if not _link_again(c, args, out):
            out.err("Not linked again: the stored key stays as it is.")
            return EXIT_FAILED
        c.call("subscribe", {"events": [AUTH_COMPLETE]})
        reply = c.call("oauth.start", {"restart": args.restart, "paste": args.paste})
        if reply["joined"] and args.paste and reply.get("callback_url"):
            reply = _replace_browser_login(c, reply, args, out)
        # A paste-mode login joined without --paste: its code can only be pasted, so read it here (on a terminal).
        paste = args.paste or (reply["joined"] and reply.get("callback_url") is None and out.stdin.isatty())
        session = reply["session_id"]
        if args.json:
            out.json({"event": "started", **reply})
        else:
            verb = (
                "Joined the login in progress"
                if reply["joined"]
                else "Open this address to link your OpenRouter account"
            )
            out.print(f"{verb}:", "", f"  {reply['auth_url']}", "")
            if reply["joined"] and reply.get("callback_url") is None and not paste:
                out.err(
                    "That login is in paste mode: OpenRouter shows its code, which must be pasted where the login "
                    "was started; waiting for it to finish. To paste it here, run `convctl oauth start --paste`."
                )
        if not args.no_browser and not paste:
            _open_browser(reply["auth_url"], out, port=_callback_port(reply))
        prompted = paste and out.stdin.isatty()  # _paste_code leaves its "Code: " prompt open on the line
        try:
            if paste:
                data = _paste_code(c, session, out, args.timeout)
            else:
                data = _wait(c, session, args.timeout, out, quiet=args.json)
        except KeyboardInterrupt:
            c.call("oauth.cancel", {"session_id": session})
            if prompted:
                out.err("")  # off the "Code: " line ^C was echoed on (_wait clears its spinner line itself)
            raise ConvError(
                "cancelled; the pending login was ended.", "Run `convctl oauth start` to try again."
            ) from None
        except (UsageError, _CodesRejected):
            c.call("oauth.cancel", {"session_id": session})  # no usable code: do not leave the login pending
            raise
        except DaemonUnreachable:
            # Flows live in the daemon's memory: whatever ended it (crash, kill, restart) ended the login too.
            raise DaemonUnreachable(
                "The daemon went away while the login was in progress (it stopped, crashed or restarted), "
                "so that login is lost.",
                "Start the daemon again (`convocationsd`, or `systemctl --user start convocationsd.socket`), "
                "then run `convctl oauth start` to begin a new login.",
            ) from None
        if data is None:
            c.call("oauth.cancel", {"session_id": session})
            if prompted:
                out.err("")  # off the "Code: " line
            raise ConvError(
                f"no answer within {args.timeout:g} s; the login was cancelled.",
                "Run `convctl oauth start` again (with a longer --timeout) and approve it in the browser.",
            )
    code = _report(data, out, args.json)
    if code == EXIT_OK and not args.json:
        _show_linked(args, out, data.get("backend"))
    return code


def _ask(out: Any, question: str) -> bool:
    """A yes/no question on the terminal, yes by default (Enter)."""
    out.stderr.write(f"{question} [Y/n] ")
    out.stderr.flush()
    return out.stdin.readline().strip().lower() not in ("n", "no")


def _link_again(c: Client, args: argparse.Namespace, out: Any) -> bool:
    """With a key stored, a login creates a second key at OpenRouter and the first one stays valid there: say
    so, and on a terminal ask first (yes by default); --yes, or no terminal, goes ahead."""
    stored = c.call("status").get("secret") or {}
    if not stored.get("stored"):
        return True
    out.err(
        f"A key is already stored ({stored.get('backend')}). Linking again creates a new key at OpenRouter and "
        f"stores it instead; the old key is removed here, but {STILL_VALID}."
    )
    if args.yes or args.json or not out.stdin.isatty():
        return True
    return _ask(out, "Link again?")


def _replace_browser_login(c: Client, reply: dict[str, Any], args: argparse.Namespace, out: Any) -> dict[str, Any]:
    """--paste joined a login in browser mode, whose code goes to the browser's callback, never to the screen:
    replace it with a paste-mode login (on a terminal after asking, or with --yes), or say what to do."""
    waiting = (
        "A login in browser mode is already waiting: OpenRouter sends its code to this machine's callback address, "
        "so it cannot be pasted."
    )
    if not args.yes and (args.json or not out.stdin.isatty()):
        raise ConvError(
            waiting,
            "Finish it in a browser on this machine (`convctl oauth start` joins it), or replace it with a paste-mode "
            "login: `convctl oauth start --paste --restart`.",
        )
    out.err(waiting)
    if not args.yes and not _ask(out, "Replace it with a paste-mode login?"):
        raise ConvError("Nothing was changed: the browser login goes on.", "Finish it in the browser.")
    replaced: dict[str, Any] = c.call("oauth.start", {"restart": True, "paste": True})
    return replaced


def _show_linked(args: argparse.Namespace, out: Any, backend: str | None) -> None:
    """After a login: where the key went (and why, when not in the OS keyring), and the new key's label and
    limit once the daemon has asked OpenRouter (best effort)."""
    try:
        with _client(args) as c:
            st: dict[str, Any] | None = status_with_account(c)
    except ConvError:
        st = None
    out.print(f"Linked. Your OpenRouter key is stored in {where_stored(backend, st)}.")
    account = (st or {}).get("account")
    if account:
        out.print(f"Account: {_account_line(account)}")


def where_stored(backend: str | None, st: dict[str, Any] | None) -> str:
    """The backend, and in the same line why it is not the OS keyring (from the daemon's `status`)."""
    if backend != "local-encrypted" or not st:
        return str(backend)
    forced = (st.get("settings") or {}).get("secret_backend") or {}
    if forced.get("value") == "local-encrypted":
        return f"{backend}, as {forced.get('source')} asks"
    last = st.get("last_store") or {}
    why = str(last.get("keyring_error") or "").rstrip(".")
    if not why:
        return str(backend)
    because = f"{backend} (an encrypted file), because {why[:1].lower()}{why[1:]}"
    return because if last.get("keyring_missing") else f"{because}; `convctl doctor` says what to do"


def _callback_port(reply: dict[str, Any]) -> int | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(reply.get("callback_url") or "").port
    except ValueError:
        return None


def _report(data: dict[str, Any], out: Any, as_json: bool) -> int:
    if as_json:
        out.json({"event": "complete", **data})
    elif not data.get("success"):
        error = data.get("error") or {}
        out.err(f"convctl: {error.get('message', 'the login failed')}")
        if error.get("hint"):
            out.err(error["hint"])
    return EXIT_OK if data.get("success") else EXIT_FAILED


def _wait(c: Client, session: str, timeout: float | None, out: Any, *, quiet: bool) -> dict[str, Any] | None:
    """Waits for our session's auth-complete event; shows elapsed time on a terminal."""
    from convocationsd.core.events import AUTH_COMPLETE

    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    spinner = "|/-\\"
    tty = out.tty and not quiet
    if not quiet:
        out.err("Waiting for you to approve in the browser... (Ctrl-C cancels)")
        out.err("If OpenRouter shows HTTP 409 'Failed to create or update app', run `convctl doctor`.")
    tick = 0
    try:
        while True:
            step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            event = c.next_event(step)
            if event is not None:
                data: dict[str, Any] = event.get("data", {})
                if event.get("event") == AUTH_COMPLETE and data.get("session_id") == session:
                    return data
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None
            tick += 1
            elapsed = int(time.monotonic() - started)
            if tty:
                out.stderr.write(f"\r{spinner[tick % 4]} waiting {elapsed // 60}:{elapsed % 60:02d}")
                out.stderr.flush()
            elif not quiet and tick % 30 == 0:
                out.err(f"still waiting ({elapsed} s)")
    finally:
        if tty:  # however it ends (the answer, --timeout, Ctrl-C): the next line goes where the spinner was
            out.stderr.write("\r\033[K")  # erases the ^C the terminal echoed there too


class _CodesRejected(ConvError):
    """OpenRouter accepted none of the pasted codes; oauth_start then cancels the login."""


def _paste_code(c: Client, session: str, out: Any, timeout: float | None = None) -> dict[str, Any] | None:
    """Reads the code OpenRouter shows (or the whole address it is in) and has the daemon exchange it;
    a code OpenRouter does not accept leaves the login waiting, so the person may paste again, up to
    PASTE_ATTEMPTS codes in all. None when ``timeout`` passes without a line (each prompt gets that long)."""
    out.err("Open the address above in any browser (on any machine), approve, then paste the code shown.")
    for attempt in range(1, PASTE_ATTEMPTS + 1):
        if out.stdin.isatty():
            out.stderr.write("Code: ")
            out.stderr.flush()
        if timeout is not None and not _readable_within(out.stdin, timeout):
            return None
        code = _code_from_paste(out.stdin.readline())
        if not code:
            raise UsageError(
                "No code was pasted.", "Run `convctl oauth start --paste` again and paste the code OpenRouter shows."
            )
        try:
            reply: dict[str, Any] = c.call(
                "oauth.exchange", {"code": code, "session_id": session}, timeout=EXCHANGE_REPLY_SECONDS
            )
            return reply
        except NoReply:
            # Not a lost login: the daemon is connected and may yet store the key (a slow OpenRouter or an
            # unanswered keyring prompt), so nothing is cancelled.
            raise ConvError(
                f"The daemon is still working on the code after {EXCHANGE_REPLY_SECONDS:g} s.",
                "Check `convctl status` in a while to see whether the account was linked.",
            ) from None
        except RemoteError as e:
            if not e.is_a(CodeRejected):
                raise
            if attempt == PASTE_ATTEMPTS:
                break  # the last one: said once, below, with what happens now
            out.err(f"convctl: {e.message}")
            out.err(f"{e.hint} (attempt {attempt + 1} of {PASTE_ATTEMPTS})".lstrip())
    raise _CodesRejected(
        f"OpenRouter did not accept that code either ({PASTE_ATTEMPTS} codes tried), so the login was cancelled.",
        "Run `convctl oauth start --paste` again, approve, and copy the whole code OpenRouter shows.",
    )


def _readable_within(stream: Any, timeout: float) -> bool:
    import selectors  # not select.select(), which refuses descriptors from 1024 on

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True  # not a real file (tests pass StringIO): read it
    with selectors.DefaultSelector() as waiting:
        waiting.register(fd, selectors.EVENT_READ)
        return bool(waiting.select(timeout))


def _code_from_paste(line: str) -> str:
    """The code from what a person pasted: the code itself, maybe quoted, or an address with ``code=``."""
    text = line.strip().strip("'\"").strip()
    if "code=" in text:
        from urllib.parse import parse_qs, urlsplit

        found = parse_qs(urlsplit(text).query).get("code")
        if found:
            return found[0].strip()
    return text


def browser_unavailable_reason(env: Mapping[str, str] = os.environ) -> str | None:
    """Why no browser can open here (SSH session, no display), or None when one probably can."""
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return "this is an SSH session"
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return "there is no graphical display (DISPLAY/WAYLAND_DISPLAY unset)"
    return None


def browser_safe(url: str) -> bool:
    """Only a plain http(s) address goes to the browser: no other scheme, no host-less URL, and nothing a
    terminal or a URL parser would treat specially (controls, spaces; urlsplit silently drops tabs and
    newlines, so they are checked on the text itself)."""
    from urllib.parse import urlsplit

    if not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _open_browser(url: str, out: Any, port: int | None = None) -> None:
    if not browser_safe(url):
        out.err("convctl: not opening that address in a browser: it is not a plain http(s) URL.")
        return
    reason = browser_unavailable_reason()
    if reason is None:
        import webbrowser

        if webbrowser.open(url):
            return
        reason = "no browser could be started"
    out.err(f"Could not open a browser: {reason}. Either:")
    out.err("  - open the address above in a browser on this machine, or")
    p = port or 3000
    out.err(f"  - on your own machine run `ssh -L {p}:localhost:{p} <this host>` and open the address there, or")
    out.err("  - run `convctl oauth start --paste` and paste the code OpenRouter shows.")


# -- events ------------------------------------------------------------------------------------------


def events(args: argparse.Namespace, out: Any) -> int:
    with _client(args) as c:
        c.call("subscribe")
        if not args.json:
            out.err("Waiting for events (Ctrl-C stops)...")
        try:
            for event in c.events():
                if args.json:
                    out.json(event)
                else:
                    out.print(f"{event.get('seq')} {event.get('event')} {_summary(event.get('data', {}))}")
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK


def _summary(data: dict[str, Any]) -> str:
    """An event's data as words: ``session_id=… success=no error=timeout``; no Python reprs, no None."""
    parts = []
    for name, value in data.items():
        if name == "auth_url" or value is None:
            continue
        if isinstance(value, dict):
            value = value.get("code") if name == "error" else None
        if isinstance(value, bool):
            value = "yes" if value else "no"
        if value is not None and not isinstance(value, (list, dict)):
            parts.append(f"{name}={value}")
    return " ".join(parts)


# -- secret ------------------------------------------------------------------------------------------


NO_KEY_HINT = "Link your account with `convctl oauth start`, or store a key with `convctl secret set-openrouter-key`."


def secret(args: argparse.Namespace, out: Any) -> int:
    from convocationsd.cli import secret_ops

    if args.action == "status":
        st = secret_ops.status(args.socket)
        if args.json:
            out.json(st)
        else:
            out.print(f"stored in {st['backend']}" if st["stored"] else "no key stored")
        return EXIT_OK if st["stored"] else EXIT_FAILED
    if args.action == "clear-openrouter-key":
        result = secret_ops.clear(args.socket)
        if args.json:
            out.json(result)
        elif result["cleared"]:
            out.print(f"key removed from this machine; {STILL_VALID}")
        else:
            out.print("no key was stored")
        return EXIT_OK
    if args.action == "get-openrouter-key":
        return _print_key(args, out)
    if args.action == "retry-store":
        with _client(args) as c:  # the key is in the daemon's memory: there are no files to fall back to
            result = c.call("secret.retry_store", timeout=secret_ops.KEYRING_WAIT)
        if args.json:
            out.json(result)
        else:
            out.print(f"key stored in {result['backend']}")
        return EXIT_OK
    key = _read_key(out)
    result = secret_ops.set_key(args.socket, key, verify=not args.no_verify)
    if args.json:
        out.json(result)
    elif result.get("verified"):
        out.print(f"key stored in {result['backend']} (OpenRouter accepts it)")
    else:
        out.print(f"key stored in {result['backend']} (not checked with OpenRouter)")
        if result.get("not_verified_because"):
            out.err(
                f"note: {str(result['not_verified_because']).rstrip('.')}, so the key was stored without being "
                "checked; `convctl status` shows whether OpenRouter accepts it once it can be reached."
            )
    return EXIT_OK


def _read_key(out: Any) -> str:
    from convocationsd.core.keycheck import check_key

    if out.stdin.isatty():
        import getpass

        key = getpass.getpass("OpenRouter API key (input hidden): ", stream=out.stderr)
    else:
        key = out.stdin.readline()
    return check_key(key)


def _print_key(args: argparse.Namespace, out: Any) -> int:
    """The key on stdout, for scripts. A terminal would keep it on screen and in its scrollback."""
    from convocationsd.cli import secret_ops

    if out.stdout.isatty() and not args.show:
        raise UsageError(
            "Not printing the key to a terminal, where it would stay on screen and in the scrollback.",
            "Use it from a script (`KEY=$(convctl secret get-openrouter-key)`) or with `convctl exec -- COMMAND`; "
            "add --show to print it here anyway.",
        )
    key = secret_ops.get(args.socket)
    if key is None:
        raise ConvError("No OpenRouter key is stored.", NO_KEY_HINT)
    if args.json:
        out.json({"key": key})
    else:
        out.print(key)
    return EXIT_OK


# -- exec --------------------------------------------------------------------------------------------


def _env_name(name: str) -> bool:
    """A portable environment variable name (POSIX: letters, digits, underscore; no leading digit)."""
    return bool(name) and name.isascii() and (name[0].isalpha() or name[0] == "_") and name.replace("_", "a").isalnum()


# What COMMAND's environment needs to work (finding programs, the home and user, the shell, the dynamic
# loader, Python, the locale, the session): --env never replaces these with the key. main.py's `exec --help`
# lists them.
KEPT_NAMES = ("PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "TMPDIR", "TERM", "LANG", "IFS", "ENV", "BASH_ENV")
KEPT_PREFIXES = ("LD_", "DYLD_", "PYTHON", "LC_", "XDG_", "DBUS_")
KEY_SUFFIXES = ("KEY", "TOKEN")  # names made for a key: --env may replace them when they are already set


def refused_env_name(name: str, environ: Any = os.environ) -> str | None:
    """Why ``--env NAME`` would break COMMAND's environment, or None: NAME is one that programs rely on, or
    it already holds something else (a key's own names, ending in KEY or TOKEN, may be replaced: that is
    what --env is for)."""
    upper = name.upper()
    if upper in KEPT_NAMES or upper.startswith(KEPT_PREFIXES):
        return f"--env {name} would replace {name} with the key, and COMMAND needs {name} as it is."
    if name in environ and not upper.endswith(KEY_SUFFIXES):
        return f"--env {name} would replace {name}, which is already set in your environment, with the key."
    return None


class CommandNotFound(ConvError):
    exit_code = 127  # what a shell and env(1) answer


class CommandNotRunnable(ConvError):
    exit_code = 126


def exec_command(args: argparse.Namespace, out: Any) -> int:
    """Replaces convctl with COMMAND, the key in its environment: its exit status (or signal) is convctl's,
    and the key is in no command line, no output of ours and no log."""
    from convocationsd.cli import secret_ops

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("No command to run.", "Usage: convctl exec [--env NAME]... -- COMMAND [ARGS...]")
    names = ["OPENROUTER_API_KEY", *args.env_names]
    for name in names:
        if not _env_name(name):
            raise UsageError(
                f"--env {name!r} is not a variable name.",
                "Use letters, digits and _, not starting with a digit: `--env OPENAI_API_KEY`.",
            )
        refused = refused_env_name(name)
        if refused:
            raise UsageError(
                refused,
                "Pass the name your program reads its API key from, such as `--env OPENAI_API_KEY` (`convctl exec "
                f"--help` says which names are refused). To replace {name} anyway, unset it first: "
                f"`env -u {name} convctl exec --env {name} -- COMMAND`.",
            )
    key = secret_ops.get(args.socket)
    if key is None:
        raise ConvError("No OpenRouter key is stored, so there is nothing to give the command.", NO_KEY_HINT)
    env = {**os.environ, **dict.fromkeys(names, key)}
    out.stdout.flush()
    out.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise CommandNotFound(f"{argv[0]}: command not found.", "Check its name and your PATH.") from None
    except OSError as e:
        raise CommandNotRunnable(
            f"{argv[0]}: cannot run it ({e.strerror or e}).", "Check that it is an executable file."
        ) from None
    return EXIT_FAILED  # not reached: exec returns only by raising


# -- service, doctor ---------------------------------------------------------------------------------


def service(args: argparse.Namespace, out: Any) -> int:
    import io

    from convocationsd.cli import service_install

    # Each step is printed as it happens; with --json they are collected and printed as one object.
    sink = io.StringIO() if args.json else out.stdout
    if args.action == "uninstall":
        lines = service_install.uninstall(dry_run=args.dry_run, out=sink)
    elif args.action == "install":
        lines = service_install.install(
            dry_run=args.dry_run, out=sink, http_port=service_http_port(), socket_path=service_socket_path()
        )
    else:
        lines = service_install.status(out=sink, http_port=service_http_port(), socket_path=service_socket_path())
    if args.json:
        out.json({"steps": lines})
    return EXIT_OK  # they report what they did and raise ConvError on a failure


def service_http_port(env: Any = os.environ) -> int:
    """The port the HTTP socket unit (or plist) listens on: the daemon's own http_port setting, i.e.
    RCONV_HTTP_PORT, else ``http_port`` in config.toml, else 3000. Resolved the daemon's way, so a bad
    value is reported as the daemon would report it."""
    from convocationsd.store import config

    settings = config.load({}, env).settings
    if settings.http_port == 0:
        raise UsageError(
            "http_port 0 (any free port) cannot be used for a service: the socket unit needs a fixed port.",
            "Set RCONV_HTTP_PORT or http_port in config.toml to a port such as 3000.",
        )
    return settings.http_port


def service_socket_path(env: Any = os.environ) -> Any:
    """Where the IPC socket unit listens: ``socket`` in config.toml (which the daemon and its clients read),
    else None, the unit's own ``%t/convocations/convocationsd.sock``. A shell's CONVOCATIONS_SOCKET does not
    count: the service manager does not pass it to the daemon."""
    from convocationsd.common import paths

    return paths.configured_socket(paths.config_path(env))


def doctor(args: argparse.Namespace, out: Any) -> int:
    from convocationsd.cli import doctor as doctor_mod

    return doctor_mod.run(args, out)
