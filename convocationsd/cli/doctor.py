"""``convctl doctor``: the troubleshooting notes turned into checks, each with a verdict and a fix.

Checks: the daemon (running? which port?), who holds the HTTP port on 127.0.0.1 and ::1 (named through
/proc on Linux, ``lsof`` elsewhere when present), whether the callback URL OpenRouter is sent reaches
this daemon (and whether it is a fallback port, which may change at every start), the linked key, where new keys
go and where the last one went, what config.toml says that nothing reads, file modes, and whether
OpenRouter's base URL answers.

Doctor judges the daemon the person runs: while one runs, its OpenRouter address, port, config file,
secret backend and the outcome of its last store come from its `status`; only when none runs does doctor
use convctl's own settings, and it says so.

It runs inside convctl, so it stays light: stdlib only (urllib, not aiohttp); ``keyring`` is imported
inside its one check. A check that needs the daemon says "not checked" while none runs, and so does the account
check while OpenRouter has not answered about the stored key (doctor first waits for it, as `status` does);
such checks count apart from failures, and "All checks passed" is said only when none is left. Exit 0 when no check fails, 1 when one does. Its fixes name the command that
restarts or reloads the daemon the person runs: its pid, or its systemd unit or launchd job.
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
from convocationsd.common.settings import (
    DEFAULT,
    DEFAULTS,
    RESTART_ONLY,
    SOURCES,
    config_problems,
    convert,
    key_name,
    pending_change,
    public_url,
    reported,
)
from convocationsd.core import pkce
from convocationsd.core.errors import ConfigError, ConvError, UntrustedConfig, UntrustedSocket
from convocationsd.store import config as config_mod
from convocationsd.store import configfile
from convocationsd.store.keyring_backend import probe_keyring

CALLBACK_PATH = pkce.CALLBACK_PATH
# What OpenRouter has on record for the app, unless the person registered another.
DEFAULT_PORT: int = DEFAULTS["http_port"]
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
    checked: bool = True  # False: it needs the daemon, and none runs (neither passed nor failed)


def not_checked(name: str, why: str = "the daemon is not running") -> Check:
    return Check(name, False, f"not checked: {why}", checked=False)


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
    elsewhere: dict[str, Any] | None = (
        None  # a convocationsd on the port whose socket is not convctl's (its /api/status)
    )
    config_untrusted: str | None = None  # the fix when config.toml is not used because others could change it


# -- small helpers ----------------------------------------------------------------------------------------


def setting(ctx: Context, name: str) -> tuple[Any, str]:
    """(value, whose it is and where it came from): the running daemon's, or convctl's when none runs."""
    reported = ((ctx.status or {}).get("settings") or {}).get(name)
    if isinstance(reported, dict) and "value" in reported:
        return reported["value"], f"the daemon's, from {reported.get('source') or DEFAULT}"
    # No parentheses: checks show this in their own, "https://openrouter.ai (convctl's own, ...)".
    why = "as no daemon runs to ask" if ctx.status is None else "as the daemon does not say"
    if ctx.mine is None:
        return DEFAULTS[name], f"convctl's own, from {DEFAULT}, {why}"
    return getattr(ctx.mine.settings, name), f"convctl's own, from {ctx.mine.sources.get(name, DEFAULT)}, {why}"


def preferred_port(ctx: Context) -> int:
    """The port the daemon was asked to take (its http_port setting; convctl's when no daemon runs)."""
    port = setting(ctx, "http_port")[0]
    if port == 0 and ctx.status is not None:  # 0: "any free port", so the one it took
        port = ctx.status.get("port")
    return port if isinstance(port, int) and not isinstance(port, bool) and port > 0 else DEFAULT_PORT


def command_to(ctx: Context, verb: str, *, first: bool = False) -> str:
    """How to restart (``verb`` "restart") or reload (re-read config.toml) the daemon the person runs, as a
    phrase: "restart convocationsd (`kill 4242`, then start `convocationsd` again)"; ``first``: it begins a
    sentence. With no daemon running: "start convocationsd"."""
    st = ctx.status
    if st is None:
        phrase = "start convocationsd"
    else:
        service = st.get("service") or {}
        unit, manager = service.get("unit"), service.get("manager")
        how = {
            ("systemd", "restart"): f"`systemctl --user restart {unit}`",
            ("systemd", "reload"): f"`systemctl --user reload {unit}`",
            ("launchd", "restart"): f"`launchctl kickstart -k gui/{os.getuid()}/{unit}`",
            ("launchd", "reload"): f"`launchctl kill SIGHUP gui/{os.getuid()}/{unit}`",
        }.get((str(manager), verb))
        if how is None:  # started by hand
            pid = st.get("pid")
            how = f"`kill {pid}`, then start `convocationsd` again" if verb == "restart" else f"`kill -HUP {pid}`"
        phrase = f"{verb} convocationsd ({how})"
    return phrase[:1].upper() + phrase[1:] if first else phrase


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
    if st is None and ctx.elsewhere is not None:
        other = ctx.elsewhere
        return Check(
            "daemon",
            False,
            f"a convocationsd runs (pid {other.get('pid')}, on {other.get('http_url')}) but not on the socket convctl "
            f"uses: it listens on {other.get('socket')}, convctl looks for {ctx.socket_path}",
            _elsewhere_fix(ctx),
        )
    if st is None:
        return Check("daemon", False, ctx.daemon_error or "convocationsd is not running", ctx.daemon_fix or START_FIX)
    note = f" (fallback: port {preferred_port(ctx)} was busy)" if st.get("port_fallback") else ""
    return Check(
        "daemon",
        True,
        f"convocationsd {st.get('version')} is running (pid {st.get('pid')}) on {st.get('http_url')}{note}, "
        f"socket {st.get('socket')}",
    )


def _elsewhere_fix(ctx: Context) -> str:
    """What to do when the daemon that runs is not on the socket convctl uses: join them, not stop it."""
    other = ctx.elsewhere or {}
    return (
        f"Point convctl at it: CONVOCATIONS_SOCKET={other.get('socket')} (or --socket). To keep them together, set "
        "`socket` in config.toml, which the daemon and convctl both read, and restart convocationsd "
        f"(`kill {other.get('pid')}`, then start it again; under systemd or launchd run `convctl service install` "
        "first); it was probably started with another CONVOCATIONS_SOCKET or XDG_RUNTIME_DIR than this shell has."
    )


def daemon_elsewhere(port: int) -> dict[str, Any] | None:
    """The /api/status of a convocationsd that holds ``port`` although convctl's socket answers nothing, when
    the pid it reports holds the port (a process this user can see, not something answering in its name)."""
    if port <= 0:
        return None
    pids = {entry.pid for entry in port_owners.holders(port) or () if entry.pid is not None}
    if not pids:
        return None
    for address in ("127.0.0.1", "::1"):
        body, _ = _http_status(address, port)
        if body is not None and body.get("pid") in pids:
            return body
    return None


def check_port(ctx: Context, port: int | None = None) -> Check:
    """Who holds the preferred port on 127.0.0.1 and on ::1: this daemon, nobody, or someone else (named)."""
    port = port or preferred_port(ctx)
    daemon_pid = ctx.status.get("pid") if ctx.status else None
    daemon_port = ctx.status.get("port") if ctx.status else None
    found = port_owners.listeners(port)
    elsewhere_pid = (ctx.elsewhere or {}).get("pid") if ctx.status is None else None
    problems, ours, free, strays = [], [], [], []
    for family, address, shown in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")):
        if found is not None:
            holders = [entry for entry in found if port_owners.covers(entry, address)]
            others = [entry for entry in holders if entry.pid is None or entry.pid != daemon_pid]
            if others and elsewhere_pid is not None and others[0].pid == elsewhere_pid:
                strays.append(
                    f"{shown}:{port} is held by a convocationsd (pid {elsewhere_pid}) that convctl's socket does not reach"
                )
            elif others:
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
    if strays and not problems:  # our own daemon, elsewhere: not something to stop
        return Check("port", False, "; ".join(strays), _elsewhere_fix(ctx))
    problems += strays
    if problems:
        fix = (
            f"Stop that program or move it to another port (dev servers such as Vite or Next often take {port} on ::1), "
            f"or set RCONV_HTTP_PORT to a free port and register http://localhost:<port>{CALLBACK_PATH} with "
            f"OpenRouter; then {command_to(ctx, 'restart')}."
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
            f"{command_to(ctx, 'restart', first=True)} so it takes port {port}.",
        )
    return Check("port", True, f"port {port}: " + ", ".join(ours + free))


def _http_status_pid(address: str, port: int, timeout: float = 3.0) -> tuple[int | None, str | None]:
    """GET /api/status on ``address`` with ``Host: localhost:port``; (pid, None) or (None, why not)."""
    body, why = _http_status(address, port, timeout)
    return (body["pid"], None) if body is not None else (None, why)


def _http_status(address: str, port: int, timeout: float = 3.0) -> tuple[dict[str, Any] | None, str | None]:
    """GET /api/status on ``address`` with ``Host: localhost:port``: (its JSON, None) when a convocationsd
    answered (an object with an integer pid), else (None, why not)."""
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
        data = json.loads(body)
    except ValueError:
        return None, "something else answered (not our JSON)"
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or isinstance(data["pid"], bool):
        return None, "something else answered"
    return data, None


def check_callback(ctx: Context) -> Check:
    """The callback URL in the authorize request must reach this daemon on both loopback addresses. On a
    fallback port it does, and the note says what is known about that port and OpenRouter's 409."""
    st = ctx.status
    if st is None:
        return not_checked("callback")
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
            f"Free the port on both 127.0.0.1 and ::1 (see the port check) and {command_to(ctx, 'restart')}.",
        )
    preferred = preferred_port(ctx)
    if st.get("port_fallback"):
        return Check(
            "callback",
            True,
            f"callback_url {expected} reaches this daemon on a fallback port, chosen because {preferred} was busy",
            note=pkce.fallback_port_note(preferred),
        )
    if (flow.get("error") or {}).get("code") == "app_conflict":
        return Check(
            "callback",
            False,
            f'OpenRouter refused the last login with HTTP 409 ("Failed to create or update app"): it was sent '
            f"callback_url {expected} and referrer http://localhost:{port}, which differ from what it has on "
            "record for the app" + (f" (port {port} is not the usual {DEFAULT_PORT})" if port != DEFAULT_PORT else ""),
            _conflict_fix(ctx, port),
        )
    reached = f"callback_url {expected} reaches this daemon on 127.0.0.1 and ::1"
    if port != preferred:
        reached = (
            f"callback_url {expected} reaches this daemon (it listens on the port its service manager gave it, "
            f"{port}; its http_port setting is {preferred})"
        )
    if port != DEFAULT_PORT:  # fine where OpenRouter takes this port; the first suspect of its 409 where not
        return Check(
            "callback",
            True,
            reached,
            note=f'Port {port} is not {DEFAULT_PORT}. If OpenRouter answers a login with HTTP 409 "Failed to create or '
            'update app", suspect the port first (older OpenRouter documentation allowed localhost callbacks only on '
            f"ports 443 and 3000). {_conflict_fix(ctx, port)}",
        )
    return Check("callback", True, reached)


def _conflict_fix(ctx: Context, port: int) -> str:
    """What to do about OpenRouter's 409 with the daemon on ``port``."""
    if port == DEFAULT_PORT:
        return (
            "Register http://localhost:3000 (referrer) and its callback with OpenRouter for the app, or set "
            f"RCONV_HTTP_PORT (or http_port in config.toml) to the port registered there and {command_to(ctx, 'restart')}; "
            "then run `convctl oauth start` again."
        )
    return (
        f"Use port {DEFAULT_PORT}: free it, unset RCONV_HTTP_PORT and http_port in config.toml, and {command_to(ctx, 'restart')}; "
        f"or register http://localhost:{port} and http://localhost:{port}{CALLBACK_PATH} with OpenRouter. Then run "
        "`convctl oauth start` again."
    )


def check_account(ctx: Context) -> Check:
    st = ctx.status
    if st is None:
        return not_checked("account")
    secret = st.get("secret") or {}
    if not secret.get("stored"):
        return Check("account", True, "no OpenRouter key is linked yet", note="Run `convctl oauth start` to link one.")
    account = st.get("account")
    if account is None:  # asked for a few seconds already (gather): neither passed nor failed
        return not_checked(
            "account", f"a key is stored in {secret.get('backend')}, and OpenRouter has not answered about it yet"
        )
    if account.get("readable") is False:  # the key is there, and nothing can use it: not a pass
        return Check(
            "account",
            False,
            f"a key is stored in {secret.get('backend')}, but {account.get('message') or 'the daemon cannot read it'}",
            "Unlock the OS keyring (log in to your desktop session, or `gnome-keyring-daemon --unlock`), then "
            f"{command_to(ctx, 'restart')} so it reads the key again; or run `convctl oauth start` to link again.",
        )
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
        fix = ctx.config_untrusted or f"Fix the syntax of {path} (the line and column are named above)."
        return Check("config", False, ctx.config_error, fix)
    problems = [*config_problems(ctx.config, path), *config_mod.config_warnings(ctx.config, path)]
    if ctx.mine_error and ctx.mine_error not in problems:
        problems.append(f"convctl's settings: {ctx.mine_error}")
    drift = config_drift(ctx)  # said beside the problems: a typo elsewhere must not hide a change not yet applied
    if problems:
        fix = (
            f"Edit {path}: correct the values named, and rename, move or remove the keys named (the README lists "
            f"every setting); then {command_to(ctx, 'reload')}."
        )
        if drift:
            fix += f" {_drift_fix(ctx, drift)}"
        return Check("config", False, "; ".join([*problems, *(line for line, _ in drift)]), fix)
    if drift:
        return Check("config", False, "; ".join(line for line, _ in drift), _drift_fix(ctx, drift))
    if not path.exists():
        return Check("config", True, f"no {path}: every setting has its default or comes from the environment")
    return Check("config", True, f"{path}: every key is known and every value valid")


def config_drift(ctx: Context) -> list[tuple[str, str]]:
    """(what differs, the setting) for each setting whose value in config.toml is not the one the running
    daemon uses, where config.toml decides it (not a flag or variable of the daemon's): changed since the
    daemon started or reloaded, or read by a reload that cannot apply it (settings.RESTART_ONLY)."""
    running = ((ctx.status or {}).get("settings")) or {}
    found = []
    for name, (_, key) in SOURCES.items():
        entry = running.get(name)
        if key is None or not isinstance(entry, dict):
            continue
        source = entry.get("source") or DEFAULT
        from_file = f"{key} in {ctx.config_path}"
        if source not in (DEFAULT, from_file):
            continue  # a flag or an environment variable of the daemon's decides it, whatever the file says
        raw = ctx.config.get(key)
        if raw is None or raw == "":
            if source == DEFAULT or name == "socket_path":  # (the default socket depends on the daemon's env)
                continue
            value, where = DEFAULTS[name], DEFAULT
        else:
            try:
                value, where = convert(name, raw, from_file), from_file
            except ConvError:
                continue  # reported above as an invalid value
        value = reported(name, value)
        if value == entry.get("value") or (isinstance(value, str) and value == str(entry.get("value"))):
            continue
        when = "at restart" if name in RESTART_ONLY else "once the daemon reloads"
        still = "the running daemon still uses"
        found.append((pending_change(name, value, where, entry.get("value"), when, still), name))
    return found


def _drift_fix(ctx: Context, drift: list[tuple[str, str]]) -> str:
    names = [key_name(name) for _, name in drift]
    restart_only = [key_name(name) for _, name in drift if name in RESTART_ONLY]
    if not restart_only:
        return f"{command_to(ctx, 'reload', first=True)} to apply {', '.join(names)}."
    fix = f"{command_to(ctx, 'restart', first=True)} to apply {', '.join(names)} (a reload cannot apply {', '.join(restart_only)})."
    if "http_port" in restart_only and ((ctx.status or {}).get("service") or {}).get("manager"):
        fix += " Its service manager holds the port: run `convctl service install` first, which writes the new port into the socket unit (or plist) and says how to apply it."
    return fix


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


# Shared directories below the top level (those are all shared): their modes are not ours to change.
SHARED_DIRS = frozenset(Path(d) for d in ("/var/tmp", "/var/run", "/dev/shm", "/private/tmp", "/private/var/tmp"))


def made_for_socket(directory: Path, env: Mapping[str, str]) -> bool:
    """Whether doctor may propose ``chmod 700`` for the socket's directory: not a shared one (sticky like /tmp,
    top-level like / or /run, /var/tmp), nor the home directory or one above it. Run as root, doctor owns
    all of those, and closing them would lock every other user (or program) out."""
    try:
        sticky = bool(os.stat(directory).st_mode & stat.S_ISVTX)
    except OSError:
        return False
    real = Path(os.path.realpath(directory))
    home = Path(os.path.realpath(env.get("HOME") or Path.home()))
    return not sticky and len(real.parts) > 2 and real not in SHARED_DIRS and real != home and real not in home.parents


def check_files(ctx: Context) -> Check:
    config_dir = ctx.config_path.parent
    wanted = [
        (ctx.config_path, 0o600, f"chmod 600 {ctx.config_path}", "config.toml 0600"),
        (config_dir / "secret.key", 0o600, f"chmod 600 {config_dir / 'secret.key'}", "secret.key 0600"),
    ]
    problems, fixes, seen = [], [], []
    where, note = f"config in {config_dir}", ""
    if ctx.socket_path is not None:  # else there is no safe runtime dir to name, and the daemon check says why
        runtime = ctx.socket_path.parent
        where += f", runtime dir {runtime}"
        try:
            paths.check_socket_dir(runtime)  # the daemon's and the clients' own rule
        except UntrustedSocket as e:
            problems.append(e.message)
            fixes.append(e.hint)
        else:
            if not made_for_socket(runtime, ctx.env):
                note = _private_folder_note(runtime, ctx)
            elif _owned(runtime):
                wanted.append((runtime, 0o700, f"chmod 700 {runtime}", "runtime dir 0700"))
        again = f"{command_to(ctx, 'restart')}: it recreates {ctx.socket_path} with mode 0600"
        wanted.append((ctx.socket_path, 0o600, again, "socket 0600"))
    for path, mode, fix, shown in wanted:
        if path.exists() or path.is_symlink():
            seen.append(shown)
        problem = _mode_problem(path, mode)
        if problem:
            problems.append(problem)
            fixes.append(fix)
    if ctx.config_untrusted and ctx.config_error:  # a file others can change is not private, whatever its mode
        problems.append(ctx.config_error)
        fixes.append(ctx.config_untrusted)
    if problems:
        return Check("files", False, "; ".join(problems), "; ".join(fixes))
    if not seen:
        return Check("files", True, f"nothing created yet ({where})", note=note)
    return Check("files", True, f"private: {', '.join(seen)} ({where})", note=note)


def _private_folder_note(shared: Path, ctx: Context) -> str:
    """For a socket in a shared directory: safe (the socket is 0600, its server's uid is checked), and a
    private subfolder would keep it out of sight; the shared directory itself is never to be chmod-ed."""
    try:
        mode = stat.S_IMODE(os.stat(shared).st_mode)
    except OSError:
        return ""
    if not mode & 0o077:
        return ""
    folder = shared / f"convocations-{os.getuid()}"
    return (
        f"The socket is in {shared} (mode {mode:04o}), a directory shared with others: the socket's own mode and "
        "the daemon's uid check keep them out, but a private subfolder hides it too. Do not chmod "
        f"{shared}; instead run `mkdir -m 700 {folder}`, set CONVOCATIONS_SOCKET (or socket in config.toml) to "
        f"{folder / paths.SOCKET_NAME}, and {command_to(ctx, 'restart')}."
    )


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
            f"openrouter_url in config.toml (the default is {DEFAULTS['openrouter_url']}) and {command_to(ctx, 'restart')}.",
        )
    except (OSError, ValueError) as e:
        return Check(
            "openrouter",
            False,
            f"{shown} ({source}) cannot be reached: {getattr(e, 'strerror', None) or e}",
            f"Check your network and the OpenRouter URL (default {DEFAULTS['openrouter_url']}).",
        )
    return Check("openrouter", True, f"{shown} answers (HTTP {status}); the address is {source}")


# -- running ----------------------------------------------------------------------------------------------


def gather(env: Mapping[str, str], socket_override: str | None = None) -> Context:
    from convocationsd.client import Client, status_with_account

    socket_path: Path | None = None
    status, daemon_error, daemon_fix = None, None, None
    try:
        socket_path = Path(socket_override) if socket_override else paths.socket_path(env)
        with Client(socket_path, timeout=5.0) as c:
            status = status_with_account(c)  # a stored key is judged once OpenRouter answered, as `status` does
    except (UntrustedSocket, ConfigError) as e:  # nowhere to look: the daemon check says why, the others still run
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
    config, config_error, config_untrusted = {}, None, None
    try:
        config = configfile.load(config_path)
    except UntrustedConfig as e:
        config_error, config_untrusted = e.message, e.hint
    except ConvError as e:
        config_error = e.message
    ctx = Context(
        env, socket_path, config_path, config, config_error, mine, mine_error, status, daemon_error, daemon_fix,
        config_untrusted=config_untrusted,
    )  # fmt: skip
    if status is None:
        ctx.elsewhere = daemon_elsewhere(preferred_port(ctx))
    return ctx


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
    if args.json:
        out.json([asdict(r) for r in results])
    else:
        width = max(len(r.check) for r in results)
        for r in results:
            out.print(f"{'ok  ' if r.ok else 'FAIL' if r.checked else '--  '}  {r.check:<{width}}  {r.verdict}")
            if r.fix and not r.ok:
                out.print(f"      {'':<{width}}  fix: {r.fix}")
            elif r.note and r.ok:
                out.print(f"      {'':<{width}}  note: {r.note}")
        out.print("", summary(results))
    return 1 if any(failed(r) for r in results) else 0


def failed(r: Check) -> bool:
    return r.checked and not r.ok


def summary(results: list[Check]) -> str:
    """ "All checks passed.", or how many failed, with the ones not checked counted apart."""
    bad = sum(failed(r) for r in results)
    skipped = [r for r in results if not r.checked]
    if not bad:
        line = "All checks passed" if not skipped else "All checks that ran passed"
    else:
        line = f"{bad} of {len(results) - len(skipped)} checks {'needs' if bad == 1 else 'need'} attention"
    if not skipped:
        return line + "."
    no_daemon = all(r.verdict == not_checked(r.check).verdict for r in skipped)
    return line + f"; {len(skipped)} not checked ({'they need the daemon' if no_daemon else 'each line says why'})."
