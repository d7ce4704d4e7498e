"""``convctl doctor``: the troubleshooting notes turned into checks, each with a verdict and a fix.

Checks: the daemon (running? which port?), who holds the HTTP port on 127.0.0.1 and ::1 (named through
/proc on Linux, ``lsof`` elsewhere when present), whether the callback URL OpenRouter is sent reaches
this daemon (a fallback port is the usual cause of OpenRouter's HTTP 409), the linked key, which secret
backend a new key would go to and why, file modes, and whether OpenRouter's base URL answers.

It runs inside convctl, so it stays light: stdlib only (urllib, not aiohttp); ``keyring`` is imported
inside its one check. Exit 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from convocationsd.common import paths, proc_net
from convocationsd.common.settings import Settings
from convocationsd.core import pkce
from convocationsd.core.errors import ConvError, UntrustedSocket
from convocationsd.store import configfile
from convocationsd.store.keyring_backend import probe_keyring

DEFAULT_PORT = Settings.http_port
DEFAULT_OPENROUTER = Settings.openrouter_url
CALLBACK_PATH = pkce.CALLBACK_PATH
START_FIX = (
    "Start it with `convocationsd` (or `systemctl --user start convocationsd.socket`), then run `convctl doctor` again."
)


@dataclass
class Check:
    check: str
    ok: bool
    verdict: str
    fix: str = ""


@dataclass
class Context:
    env: Mapping[str, str]
    socket_path: Path | None  # None when no safe runtime directory can be named (daemon_error says why)
    config_path: Path
    config: dict[str, Any]
    config_error: str | None
    status: dict[str, Any] | None = None  # the daemon's IPC status, when it runs
    daemon_error: str | None = None
    daemon_fix: str | None = None  # when it is not "start the daemon"


# -- small helpers ----------------------------------------------------------------------------------------


def preferred_port(ctx: Context) -> int:
    """The port the person asked for: RCONV_HTTP_PORT, else config http_port, else 3000 (convctl's view)."""
    for raw in (ctx.env.get("RCONV_HTTP_PORT"), ctx.config.get("http_port")):
        if raw is None or isinstance(raw, bool):
            continue
        try:
            port = int(raw)
        except (TypeError, ValueError):
            continue
        if 0 < port < 65536:
            return port
    return DEFAULT_PORT


def openrouter_url(ctx: Context) -> tuple[str, str]:
    """(base URL, where it came from)."""
    if ctx.env.get("CONVOCATIONS_OPENROUTER_URL"):
        return ctx.env["CONVOCATIONS_OPENROUTER_URL"].rstrip("/"), "CONVOCATIONS_OPENROUTER_URL"
    if isinstance(ctx.config.get("openrouter_url"), str):
        return ctx.config["openrouter_url"].rstrip("/"), f"openrouter_url in {ctx.config_path}"
    return DEFAULT_OPENROUTER, "the default"


# -- who listens on a port --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    address: str  # as the kernel reports it: "127.0.0.1", "0.0.0.0", "::1", "::"
    port: int
    inode: int
    pid: int | None = None
    name: str | None = None
    cmdline: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "another process (its owner is not visible to you: another user's, or a container's)"
        what = self.name or "a process"
        cmd = f": {self.cmdline}" if self.cmdline and self.cmdline != self.name else ""
        return f"{what} (pid {self.pid}{cmd})"


def proc_listeners(port: int, proc: Path = Path("/proc")) -> list[Listener]:
    """TCP listeners on ``port`` from /proc/net/tcp and tcp6, owners resolved through /proc/*/fd."""
    found = [
        Listener(entry.local[0], port, entry.inode)
        for entry in proc_net.read_tables(proc)
        if entry.state == proc_net.LISTEN and entry.local[1] == port
    ]
    if not found:
        return found
    owners = _socket_owners({entry.inode for entry in found}, proc)
    result = []
    for entry in found:
        pid = owners.get(entry.inode)
        if pid is None:
            result.append(entry)
            continue
        result.append(
            Listener(entry.address, port, entry.inode, pid, _read(proc / str(pid) / "comm"), _cmdline(proc, pid))
        )
    return result


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip() or None
    except OSError:
        return None


def _cmdline(proc: Path, pid: int) -> str | None:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    text = " ".join(" ".join(part.decode(errors="replace").split()) for part in raw.split(b"\0") if part)
    return text[:120] + ("..." if len(text) > 120 else "") if text else None


def _socket_owners(inodes: set[int], proc: Path) -> dict[int, int]:
    owners: dict[int, int] = {}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [entry.name for entry in os.scandir(proc) if entry.name.isdigit()]
    except OSError:
        return owners
    for pid in pids:
        try:
            fds = os.scandir(proc / pid / "fd")
        except OSError:  # another user's process, or gone
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target in wanted:
                    owners.setdefault(wanted[target], int(pid))
        if len(owners) == len(wanted):
            break
    return owners


def lsof_listeners(port: int) -> list[Listener] | None:
    """macOS and other systems without /proc: ``lsof`` when present, else None (unknown)."""
    import shutil
    import subprocess

    lsof = shutil.which("lsof")
    if lsof is None:
        return None
    try:
        done = subprocess.run(
            [lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpcn"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    result, pid, name = [], None, None
    for line in done.stdout.splitlines():
        tag, value = line[:1], line[1:]
        if tag == "p":
            pid = int(value)
        elif tag == "c":
            name = value
        elif tag == "n":
            host = value.rsplit(":", 1)[0].strip("[]")
            result.append(Listener({"*": "::", "localhost": "127.0.0.1"}.get(host, host), port, 0, pid, name))
    return result


def listeners(port: int) -> list[Listener] | None:
    if sys.platform.startswith("linux") and Path("/proc/net/tcp").exists():
        return proc_listeners(port)
    return lsof_listeners(port)


def _covers(listener: Listener, address: str) -> bool:
    if listener.address == address:
        return True
    if address == "127.0.0.1":
        return listener.address in ("0.0.0.0", "::", "::ffff:0.0.0.0")
    return listener.address == "::"


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
    found = listeners(port)
    problems, ours, free = [], [], []
    for family, address, shown in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")):
        if found is not None:
            holders = [entry for entry in found if _covers(entry, address)]
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
            f"callback_url {expected} reaches this daemon (it was started with port {port}; your shell would choose "
            f"{preferred})",
        )
    return Check("callback", True, f"callback_url {expected} reaches this daemon on 127.0.0.1 and ::1")


def check_account(ctx: Context) -> Check:
    st = ctx.status
    if st is None:
        return Check("account", False, "not checked: the daemon is not running")
    secret = st.get("secret") or {}
    if not secret.get("stored"):
        return Check("account", True, "no OpenRouter key is linked yet", "Run `convctl oauth start` to link one.")
    account = st.get("account")
    if account is None:
        return Check("account", True, f"a key is stored in {secret.get('backend')} (not checked with OpenRouter yet)")
    if account.get("valid") is False:
        return Check(
            "account",
            False,
            account.get("message") or "the linked key is no longer valid",
            "Run `convctl oauth start` to link your account again.",
        )
    if account.get("message"):
        return Check("account", True, f"a key is stored in {secret.get('backend')}; {account['message']}")
    return Check(
        "account", True, f"a key is stored in {secret.get('backend')}, label {account.get('label') or '(none)'}"
    )


def check_secret_backend(ctx: Context, keyring_probe: Callable[[], tuple[bool, str]] = probe_keyring) -> Check:
    forced, why = None, ""
    if ctx.env.get("CONVOCATIONS_SECRET_BACKEND"):
        forced, why = ctx.env["CONVOCATIONS_SECRET_BACKEND"], "CONVOCATIONS_SECRET_BACKEND"
    elif isinstance(ctx.config.get("secret_backend"), str):
        forced, why = ctx.config["secret_backend"], f"secret_backend in {ctx.config_path}"
    stored = ((ctx.status or {}).get("secret") or {}).get("backend")
    if stored is None and ctx.status is None:
        table = ctx.config.get("openrouter_api_key")
        stored = table.get("backend") if isinstance(table, dict) else None
    where = f"; the current key is in {stored}" if stored else ""
    if forced not in (None, "keyring", "local-encrypted"):
        return Check(
            "secret-backend", False, f"{why} names an unknown backend {forced!r}", "Use keyring or local-encrypted."
        )
    if forced == "local-encrypted":
        return Check("secret-backend", True, f"new keys go to local-encrypted (forced by {why}){where}")
    usable, description = keyring_probe()
    if forced == "keyring":
        if usable:
            return Check("secret-backend", True, f"new keys go to {description} (forced by {why}){where}")
        return Check(
            "secret-backend",
            False,
            f"{why} forces the OS keyring, but {description}: saving a key will fail",
            "Start and unlock a Secret Service (gnome-keyring, KeePassXC), or set CONVOCATIONS_SECRET_BACKEND=local-encrypted.",
        )
    if usable:
        return Check("secret-backend", True, f"new keys go to {description} (automatic choice){where}")
    if stored == "keyring":
        return Check(
            "secret-backend",
            False,
            f"the linked key is in the OS keyring, but {description}: it cannot be read",
            "Unlock the keyring (or log in to a desktop session), or link again with `convctl oauth start` to store the key encrypted.",
        )
    return Check(
        "secret-backend",
        False,
        f"{description}; new keys fall back to local-encrypted (AES-GCM under secret.key in {ctx.config_path.parent}){where}",
        "Start and unlock a Secret Service (gnome-keyring, KeePassXC) to use the OS keyring, or set "
        "CONVOCATIONS_SECRET_BACKEND=local-encrypted to choose the encrypted file on purpose.",
    )


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
    if ctx.config_error:
        problems.append(ctx.config_error)
        fixes.append(f"Fix the syntax of {ctx.config_path} (the line and column are named above).")
    if problems:
        return Check("files", False, "; ".join(problems), "; ".join(fixes))
    if not seen:
        return Check("files", True, f"nothing created yet ({where})")
    return Check("files", True, f"private: {', '.join(seen)} ({where})")


def check_openrouter(ctx: Context, timeout: float = 5.0) -> Check:
    import urllib.error
    import urllib.request

    url, source = openrouter_url(ctx)
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
            f"{url} (from {source}) cannot be reached: {text}",
            "Check your network, proxy and DNS; if the address is wrong, fix CONVOCATIONS_OPENROUTER_URL or "
            "openrouter_url in config.toml (the default is https://openrouter.ai).",
        )
    except (OSError, ValueError) as e:
        return Check(
            "openrouter",
            False,
            f"{url} (from {source}) cannot be reached: {getattr(e, 'strerror', None) or e}",
            "Check your network and the OpenRouter URL (default https://openrouter.ai).",
        )
    where = "the default address" if source == "the default" else f"address from {source} (convctl's environment)"
    return Check("openrouter", True, f"{url} answers (HTTP {status}); {where}")


# -- running ----------------------------------------------------------------------------------------------


def gather(env: Mapping[str, str], socket_override: str | None = None) -> Context:
    config_path = paths.config_path(env)
    config, config_error = {}, None
    try:
        config = configfile.load(config_path)
    except ConvError as e:
        config_error = e.message
    ctx = Context(env, None, config_path, config, config_error)
    from convocationsd.client import Client

    try:
        ctx.socket_path = Path(socket_override) if socket_override else paths.socket_path(env)
        with Client(ctx.socket_path, timeout=5.0) as c:
            ctx.status = c.call("status")
    except UntrustedSocket as e:  # nowhere safe to look: the daemon check says so, the other checks still run
        ctx.daemon_error, ctx.daemon_fix = e.message.rstrip("."), e.hint
    except ConvError as e:
        ctx.daemon_error = e.message.rstrip(".")
    except OSError as e:
        ctx.daemon_error = e.strerror or type(e).__name__
    return ctx


def run_checks(ctx: Context) -> list[Check]:
    checks: list[Callable[[Context], Check]] = [
        check_daemon,
        check_port,
        check_callback,
        check_account,
        check_secret_backend,
        check_files,
        check_openrouter,
    ]
    results = []
    for fn in checks:
        try:
            results.append(fn(ctx))
        except Exception as e:  # a broken check must not hide the others
            name = fn.__name__.removeprefix("check_")
            results.append(
                Check(name, False, f"the check itself failed: {type(e).__name__}: {e}", "Report this as a bug.")
            )
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
        bad = sum(not r.ok for r in results)
        out.print("", "All checks passed." if not bad else f"{bad} of {len(results)} checks need attention.")
    return 0 if all(r.ok for r in results) else 1
