"""``convctl doctor``: the troubleshooting notes turned into checks, each with a verdict and a fix.

Checks: the daemon (running? which port?), who holds the HTTP port on 127.0.0.1 and ::1 (named through
/proc on Linux, ``lsof`` elsewhere when present), whether the callback URL OpenRouter is sent reaches
this daemon (a fallback port is the usual cause of OpenRouter's HTTP 409), the linked key, where new keys
go and where the last one went, what config.toml says that nothing reads, file modes, and whether
OpenRouter's base URL answers.

Doctor judges the daemon the person runs: while one runs, its OpenRouter address, port, config file,
secret backend and the outcome of its last store come from its `status`; only when none runs does doctor
use convctl's own settings, and it says so.

It runs inside convctl, so it stays light: stdlib only (urllib, not aiohttp); ``keyring`` is imported
inside its one check. Exit 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from convocationsd.common import paths, port_owners
from convocationsd.common.settings import DEFAULT, Settings, config_problems, public_url
from convocationsd.core import pkce
from convocationsd.core.errors import ConvError, UntrustedSocket
from convocationsd.store import config as config_mod
from convocationsd.store import configfile
from convocationsd.store.keyring_backend import probe_keyring

CALLBACK_PATH = pkce.CALLBACK_PATH
START_FIX = (
    "Start it with `convocationsd` (or `systemctl --user start convocationsd.socket`), then run `convctl doctor` again."
)
KEYRING_HOWTO = (
    "To keep keys in an OS keyring instead, run a Secret Service (gnome-keyring, KeePassXC) in your session and "
    "unlock it, then store the key again (`convctl oauth start`)."
)


@dataclass
class Check:
    check: str
    ok: bool
    verdict: str
    fix: str = ""  # what to do, when not ok
    note: str = ""  # worth knowing, when ok


@dataclass
class Context:
    env: Mapping[str, str]
    socket_path: Path | None  # None when no safe runtime directory can be named (daemon_error says why)
    config_path: Path  # the daemon's config file while it runs, else convctl's
    config: dict[str, Any]
    config_error: str | None  # the file cannot be read or parsed
    mine: config_mod.Loaded | None = None  # convctl's own settings (None: they do not resolve)
    mine_error: str | None = None
    status: dict[str, Any] | None = None  # the daemon's IPC status, when it runs
    daemon_error: str | None = None
    daemon_fix: str | None = None  # when it is not "start the daemon"


# -- small helpers ----------------------------------------------------------------------------------------


def setting(ctx: Context, name: str) -> tuple[Any, str]:
    """(value, whose it is and where it came from): the running daemon's, or convctl's when none runs."""
    reported = ((ctx.status or {}).get("settings") or {}).get(name)
    if isinstance(reported, dict) and "value" in reported:
        return reported["value"], f"the daemon's, from {reported.get('source') or DEFAULT}"
    whose = "convctl's own (no daemon runs to ask)" if ctx.status is None else "convctl's own (the daemon does not say)"
    if ctx.mine is None:
        return Settings._field_defaults[name], f"{whose}, {DEFAULT}"
    return getattr(ctx.mine.settings, name), f"{whose}, from {ctx.mine.sources.get(name, DEFAULT)}"


def preferred_port(ctx: Context) -> int:
    """The port the daemon was asked to take (its http_port setting; convctl's when no daemon runs)."""
    port = setting(ctx, "http_port")[0]
    if port == 0 and ctx.status is not None:  # 0: "any free port", so the one it took
        port = ctx.status.get("port")
    return (
        port
        if isinstance(port, int) and not isinstance(port, bool) and port > 0
        else Settings._field_defaults["http_port"]
    )


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ").replace("Z", " UTC") or "at an unknown time"


def _bind_free(family: int, address: str, port: int) -> bool | None:
    """True when ``port`` can be bound on ``address`` now, False when busy, None when the address is absent."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((address, port))
        return True
    except OSError as e:
        import errno

        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return None
        return False


# -- the checks -------------------------------------------------------------------------------------------


def check_daemon(ctx: Context) -> Check:
    st = ctx.status
    if st is None:
        return Check("daemon", False, ctx.daemon_error or "convocationsd is not running", ctx.daemon_fix or START_FIX)
    note = f" (fallback: port {preferred_port(ctx)} was busy)" if st.get("port_fallback") else ""
    return Check(
        "daemon",
        True,
        f"convocationsd {st.get('version')} is running (pid {st.get('pid')}) on {st.get('http_url')}{note}, "
        f"socket {st.get('socket')}",
    )


def check_port(ctx: Context, port: int | None = None) -> Check:
    """Who holds the preferred port on 127.0.0.1 and on ::1: this daemon, nobody, or someone else (named)."""
    port = port or preferred_port(ctx)
    daemon_pid = ctx.status.get("pid") if ctx.status else None
    daemon_port = ctx.status.get("port") if ctx.status else None
    found = port_owners.listeners(port)
    problems, ours, free = [], [], []
    for family, address, shown in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")):
        if found is not None:
            holders = [entry for entry in found if port_owners.covers(entry, address)]
            others = [entry for entry in holders if entry.pid is None or entry.pid != daemon_pid]
            if others:
                problems.append(f"{shown}:{port} is held by {others[0].describe()}")
            elif holders:
                ours.append(shown)
            else:
                free.append(shown)
            continue
        # No way to see owners: try to bind. Busy and not our daemon's port means someone else.
        is_free = _bind_free(family, address, port)
        if is_free is None:
            free.append(shown + " (no such address here)")
        elif is_free:
            free.append(shown)
        elif daemon_port == port:
            ours.append(shown)
        else:
            problems.append(f"{shown}:{port} is held by another process (this system cannot name it)")
    if problems:
        fix = (
            f"Stop that program or move it to another port (dev servers such as Vite or Next often take {port} on ::1), "
            f"then restart convocationsd; or set RCONV_HTTP_PORT to a free port, restart convocationsd and "
            f"register http://localhost:<port>{CALLBACK_PATH} with OpenRouter."
        )
        return Check("port", False, "; ".join(problems), fix)
    if ours and ctx.status is not None and daemon_port == port:
        extra = f"; {', '.join(free)} free" if free else ""
        return Check(
            "port", True, f"port {port} on {' and '.join(ours)} belongs to convocationsd (pid {daemon_pid}){extra}"
        )
    if ctx.status is None:
        return Check(
            "port", True, f"port {port} is free on {' and '.join(free)}; convocationsd can take it when it starts"
        )
    if daemon_port != port:
        return Check(
            "port",
            True,
            f"port {port} is free on {' and '.join(free)} now, but convocationsd listens on {daemon_port}",
            f"Restart convocationsd so it takes port {port}.",
        )
    return Check("port", True, f"port {port}: " + ", ".join(ours + free))


def _http_status_pid(address: str, port: int, timeout: float = 3.0) -> tuple[int | None, str | None]:
    """GET /api/status on ``address`` with ``Host: localhost:port``; (pid, None) or (None, why not)."""
    import http.client

    try:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            conn.request("GET", "/api/status", headers={"Host": f"localhost:{port}", "Accept": "application/json"})
            response = conn.getresponse()
            body = response.read(64 * 1024)
        finally:
            conn.close()
    except OSError as e:
        return None, f"nothing answered ({e.strerror or type(e).__name__})"
    if response.status != 200:
        return None, f"something else answered (HTTP {response.status})"
    try:
        pid = json.loads(body).get("pid")
    except (ValueError, AttributeError):
        return None, "something else answered (not our JSON)"
    return (pid, None) if isinstance(pid, int) else (None, "something else answered")


def check_callback(ctx: Context) -> Check:
    """The callback URL in the authorize request must reach this daemon on both loopback addresses, and
    stay the same between attempts (OpenRouter's 409 when it changes)."""
    st = ctx.status
    if st is None:
        return Check("callback", False, "not checked: the daemon is not running")
    port: int = st["port"]
    flow = st.get("flow") or {}
    sent = flow.get("callback_url") or f"http://localhost:{port}{CALLBACK_PATH}"
    expected = f"http://localhost:{port}{CALLBACK_PATH}"
    if sent != expected:
        return Check(
            "callback",
            False,
            f"the last login sent callback_url {sent}, but convocationsd listens on {expected}",
            "Run `convctl oauth start --restart` so the login uses the current address.",
        )
    unreachable = []
    for address, shown in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
        pid, why = _http_status_pid(address, port)
        if pid != st.get("pid"):
            unreachable.append(f"{shown}:{port}: {why or f'another convocationsd (pid {pid}) answered'}")
    if unreachable:
        return Check(
            "callback",
            False,
            f"{expected} does not reach this daemon everywhere ({'; '.join(unreachable)}); the browser may land elsewhere",
            "Free the port on both 127.0.0.1 and ::1 (see the port check) and restart convocationsd.",
        )
    preferred = preferred_port(ctx)
    if st.get("port_fallback"):
        return Check(
            "callback",
            False,
            f"OpenRouter is sent callback_url {expected} and referrer http://localhost:{port}, a fallback port chosen "
            f'because {preferred} was busy. It changes on every start, and OpenRouter answers HTTP 409 "Failed to '
            'create or update app" when these differ from what it has on record',
            f"Free port {preferred} (see the port check) and restart convocationsd; or set RCONV_HTTP_PORT to a fixed "
            f"free port, restart, and register that callback and referrer with OpenRouter.",
        )
    if port != preferred:
        return Check(
            "callback",
            True,
            f"callback_url {expected} reaches this daemon (it listens on the port its service manager gave it, "
            f"{port}; its http_port setting is {preferred})",
        )
    return Check("callback", True, f"callback_url {expected} reaches this daemon on 127.0.0.1 and ::1")


def check_account(ctx: Context) -> Check:
    st = ctx.status
    if st is None:
        return Check("account", False, "not checked: the daemon is not running")
    secret = st.get("secret") or {}
    if not secret.get("stored"):
        return Check("account", True, "no OpenRouter key is linked yet", note="Run `convctl oauth start` to link one.")
    account = st.get("account")
    if account is None:
        return Check("account", True, f"a key is stored in {secret.get('backend')} (not checked with OpenRouter yet)")
    if account.get("valid") is False:
        return Check(
            "account",
            False,
            account.get("message") or "the stored key is not accepted by OpenRouter",
            "Run `convctl oauth start` to link your account again.",
        )
    if account.get("message"):
        return Check("account", True, f"a key is stored in {secret.get('backend')}; {account['message']}")
    return Check(
        "account", True, f"a key is stored in {secret.get('backend')}, label {account.get('label') or '(none)'}"
    )


def check_secret_backend(ctx: Context, keyring_probe: Callable[[], tuple[bool, str]] = probe_keyring) -> Check:
    """Where new keys go. While a daemon runs, what it did with the last key it stored is the answer; before
    its first store (or with no daemon), convctl looks for an OS keyring in its own session and says so."""
    forced, source = setting(ctx, "secret_backend")
    encrypted = f"local-encrypted (AES-256-GCM under secret.key in {ctx.config_path.parent})"
    stored = ((ctx.status or {}).get("secret") or {}).get("backend")
    if stored is None and ctx.status is None:
        table = ctx.config.get("openrouter_api_key")
        stored = table.get("backend") if isinstance(table, dict) else None
    where = f"; the current key is in {stored}" if stored else ""
    last = (ctx.status or {}).get("last_store")
    if isinstance(last, dict):
        when = _when(last.get("at"))
        if last.get("error"):
            return Check(
                "secret-backend",
                False,
                f"the daemon could not store the last key ({when}): {last['error'].rstrip('.')}{where}",
                "Fix what the message names, then store the key again (`convctl oauth start`); with a locked keyring, "
                "unlock it, or set CONVOCATIONS_SECRET_BACKEND=local-encrypted for the daemon.",
            )
        if last.get("keyring_error") and last.get("keyring_missing"):
            return Check(
                "secret-backend",
                True,
                f"new keys go to {encrypted}: the daemon found no OS keyring when it stored the last key ({when}){where}",
                note=KEYRING_HOWTO,
            )
        if last.get("keyring_error"):
            return Check(
                "secret-backend",
                False,
                f"the OS keyring failed when the daemon stored the last key ({when}), so that key went to "
                f"{encrypted}: {last['keyring_error'].rstrip('.')}",
                "Unlock the OS keyring (log in to the desktop, or `gnome-keyring-daemon --unlock`), then store the key "
                "again (`convctl oauth start`) so it moves there; or set CONVOCATIONS_SECRET_BACKEND=local-encrypted "
                "for the daemon to keep keys encrypted on purpose.",
            )
        how = f"forced: {source}" if forced else "automatic choice"
        return Check(
            "secret-backend",
            True,
            f"new keys go to {last.get('backend')} ({how}), where the daemon stored the last key ({when})"
            + (where if stored != last.get("backend") else ""),
        )
    if forced not in (None, "keyring", "local-encrypted"):
        return Check(
            "secret-backend", False, f"{source} names an unknown backend {forced!r}", "Use keyring or local-encrypted."
        )
    if forced == "local-encrypted":
        return Check("secret-backend", True, f"new keys go to {encrypted} (forced: {source}){where}")
    usable, description = keyring_probe()
    probed = "as convctl sees it" + ("" if ctx.status is None else "; the daemon has stored no key since it started")
    if forced == "keyring":
        if usable:
            return Check("secret-backend", True, f"new keys go to {description} (forced: {source}; {probed}){where}")
        return Check(
            "secret-backend",
            False,
            f"the OS keyring is forced ({source}), but {description} ({probed}): saving a key will fail",
            "Start and unlock a Secret Service (gnome-keyring, KeePassXC), or set CONVOCATIONS_SECRET_BACKEND=local-encrypted.",
        )
    if usable:
        return Check("secret-backend", True, f"new keys go to {description} (automatic choice, {probed}){where}")
    if stored == "keyring":
        return Check(
            "secret-backend",
            False,
            f"the linked key is in the OS keyring, but {description} ({probed}): it cannot be read",
            "Unlock the keyring (or log in to a desktop session), or link again with `convctl oauth start` to store the key encrypted.",
        )
    return Check(
        "secret-backend", True, f"new keys go to {encrypted}: {description} ({probed}){where}", note=KEYRING_HOWTO
    )


def check_config(ctx: Context) -> Check:
    """config.toml: it parses, every value is valid, and nothing in it is silently ignored."""
    path = ctx.config_path
    if ctx.config_error:
        return Check(
            "config", False, ctx.config_error, f"Fix the syntax of {path} (the line and column are named above)."
        )
    problems = [*config_problems(ctx.config, path), *config_mod.config_warnings(ctx.config, path)]
    if ctx.mine_error and ctx.mine_error not in problems:
        problems.append(f"convctl's settings: {ctx.mine_error}")
    if problems:
        return Check(
            "config",
            False,
            "; ".join(problems),
            f"Edit {path}: correct the values named, and rename, move or remove the keys named (the README lists "
            "every setting); then reload the daemon (`systemctl --user reload convocationsd` or `kill -HUP`).",
        )
    if not path.exists():
        return Check("config", True, f"no {path}: every setting has its default or comes from the environment")
    return Check("config", True, f"{path}: every key is known and every value valid")


def _mode_problem(path: Path, wanted: int) -> str | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~wanted & 0o777:
        problems.append(f"mode {mode:04o}, should be {wanted:04o}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        problems.append(f"owned by uid {st.st_uid}, not you")
    return f"{path}: {', '.join(problems)}" if problems else None


def _owned(path: Path) -> bool:
    try:
        return os.lstat(path).st_uid == os.getuid()
    except OSError:
        return False


def check_files(ctx: Context) -> Check:
    config_dir = ctx.config_path.parent
    wanted = [
        (ctx.config_path, 0o600, f"chmod 600 {ctx.config_path}", "config.toml 0600"),
        (config_dir / "secret.key", 0o600, f"chmod 600 {config_dir / 'secret.key'}", "secret.key 0600"),
    ]
    problems, fixes, seen = [], [], []
    where = f"config in {config_dir}"
    if ctx.socket_path is not None:  # else there is no safe runtime dir to name, and the daemon check says why
        runtime = ctx.socket_path.parent
        where += f", runtime dir {runtime}"
        try:
            paths.check_socket_dir(runtime)  # the daemon's and the clients' own rule
        except UntrustedSocket as e:
            problems.append(e.message)
            fixes.append(e.hint)
        else:
            if _owned(runtime):  # a shared sticky directory such as /tmp is root's, and never ours to chmod
                wanted.append((runtime, 0o700, f"chmod 700 {runtime}", "runtime dir 0700"))
        restart = f"restart convocationsd (it recreates {ctx.socket_path} with mode 0600)"
        wanted.append((ctx.socket_path, 0o600, restart, "socket 0600"))
    for path, mode, fix, shown in wanted:
        if path.exists() or path.is_symlink():
            seen.append(shown)
        problem = _mode_problem(path, mode)
        if problem:
            problems.append(problem)
            fixes.append(fix)
    if problems:
        return Check("files", False, "; ".join(problems), "; ".join(fixes))
    if not seen:
        return Check("files", True, f"nothing created yet ({where})")
    return Check("files", True, f"private: {', '.join(seen)} ({where})")


def check_openrouter(ctx: Context, timeout: float = 5.0) -> Check:
    import urllib.error
    import urllib.request

    url, source = setting(ctx, "openrouter_url")
    shown = public_url(url)  # convctl's own setting may carry credentials; the daemon's never does
    request = urllib.request.Request(url + "/", method="HEAD", headers={"User-Agent": "convctl-doctor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:  # any HTTP answer means the server is reachable
        status = e.code
    except urllib.error.URLError as e:
        reason = e.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        return Check(
            "openrouter",
            False,
            f"{shown} ({source}) cannot be reached: {text}",
            "Check your network, proxy and DNS; if the address is wrong, fix CONVOCATIONS_OPENROUTER_URL or "
            "openrouter_url in config.toml (the default is https://openrouter.ai) and restart convocationsd.",
        )
    except (OSError, ValueError) as e:
        return Check(
            "openrouter",
            False,
            f"{shown} ({source}) cannot be reached: {getattr(e, 'strerror', None) or e}",
            "Check your network and the OpenRouter URL (default https://openrouter.ai).",
        )
    return Check("openrouter", True, f"{shown} answers (HTTP {status}); the address is {source}")


# -- running ----------------------------------------------------------------------------------------------


def gather(env: Mapping[str, str], socket_override: str | None = None) -> Context:
    from convocationsd.client import Client

    socket_path: Path | None = None
    status, daemon_error, daemon_fix = None, None, None
    try:
        socket_path = Path(socket_override) if socket_override else paths.socket_path(env)
        with Client(socket_path, timeout=5.0) as c:
            status = c.call("status")
    except UntrustedSocket as e:  # nowhere safe to look: the daemon check says so, the other checks still run
        daemon_error, daemon_fix = e.message.rstrip("."), e.hint
    except ConvError as e:
        daemon_error = e.message.rstrip(".")
    except OSError as e:
        daemon_error = e.strerror or type(e).__name__
    mine, mine_error = None, None
    try:
        mine = config_mod.load({}, env)
    except ConvError as e:
        mine_error = e.message
    reported = ((status or {}).get("settings") or {}).get("config_path")
    config_path = Path(reported) if isinstance(reported, str) else paths.config_path(env)
    config, config_error = {}, None
    try:
        config = configfile.load(config_path)
    except ConvError as e:
        config_error = e.message
    return Context(
        env, socket_path, config_path, config, config_error, mine, mine_error, status, daemon_error, daemon_fix
    )


def run_checks(ctx: Context) -> list[Check]:
    checks: list[Callable[[Context], Check]] = [
        check_daemon,
        check_port,
        check_callback,
        check_account,
        check_secret_backend,
        check_config,
        check_files,
        check_openrouter,
    ]
    results = []
    for fn in checks:
        try:
            results.append(fn(ctx))
        except Exception as e:  # a broken check must not hide the others
            name = fn.__name__.removeprefix("check_")
            results.append(Check(name, False, f"the check itself failed: {type(e).__name__}", "Report this as a bug."))
    return results


def run(args: argparse.Namespace, out: Any, env: Mapping[str, str] | None = None) -> int:
    ctx = gather(os.environ if env is None else env, getattr(args, "socket", None))
    results = run_checks(ctx)
    if getattr(args, "json", False):
        out.json([asdict(r) for r in results])
    else:
        width = max(len(r.check) for r in results)
        for r in results:
            out.print(f"{'ok  ' if r.ok else 'FAIL'}  {r.check:<{width}}  {r.verdict}")
            if r.fix and not r.ok:
                out.print(f"      {'':<{width}}  fix: {r.fix}")
            elif r.note and r.ok:
                out.print(f"      {'':<{width}}  note: {r.note}")
        bad = sum(not r.ok for r in results)
        out.print("", "All checks passed." if not bad else f"{bad} of {len(results)} checks need attention.")
    return 0 if all(r.ok for r in results) else 1
