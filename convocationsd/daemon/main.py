"""The daemon: wiring and lifecycle. Everything it does is in ``controller``; this module builds the
pieces, binds (or inherits) the sockets, runs until a signal or idle exit, and shuts down in stages.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convocationsd import __version__
from convocationsd.common.settings import DEFAULT, LOG_LEVELS, Settings
from convocationsd.core import pkce
from convocationsd.core.errors import ConvError, UntrustedConfig, UntrustedSocket
from convocationsd.core.events import AUTH_STARTED, EventBus
from convocationsd.daemon import systemd
from convocationsd.daemon.controller import Controller, Endpoint
from convocationsd.daemon.logs import REFUSALS, set_level, setup_logging
from convocationsd.daemon.tasks import TaskSet
from convocationsd.store import config

if TYPE_CHECKING:
    import argparse
    import socket

    from convocationsd.daemon.http_sockets import LazyHttpServer
    from convocationsd.daemon.ipc_server import IpcServer
    from convocationsd.daemon.openrouter import OpenRouterClient
    from convocationsd.store.helper import HelperStore

log = logging.getLogger("convocationsd")


def build_parser() -> argparse.ArgumentParser:
    from convocationsd.common.cmdline import ArgumentParser

    p = ArgumentParser(
        prog="convocationsd",
        description="Links your OpenRouter account to Convocations (runs in the foreground).",
    )
    p.add_argument("--port", type=int, dest="http_port", help="preferred HTTP port (env RCONV_HTTP_PORT, default 3000)")
    p.add_argument("--socket", dest="socket_path", help="Unix socket path (env CONVOCATIONS_SOCKET)")
    p.add_argument(
        "--openrouter-url", dest="openrouter_url", help="OpenRouter base URL (env CONVOCATIONS_OPENROUTER_URL)"
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, dest="log_level", help="env CONVOCATIONS_LOG_LEVEL, default info")
    p.add_argument("--config", dest="config_path", help="config file (env CONVOCATIONS_CONFIG)")
    p.add_argument(
        "--allow-port-fallback",
        action="store_true",
        default=None,  # unset, so the environment and config.toml can still set it
        help="if the chosen port is busy, take a free one instead of exiting (env CONVOCATIONS_ALLOW_PORT_FALLBACK)",
    )
    p.add_argument("--version", action="version", version=f"convocationsd {__version__}")
    return p


def _warn_about_config(loaded: config.Loaded) -> None:
    for warning in loaded.warnings:
        log.warning("config: %s", warning)


def _by_role(found: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Inherited sockets under the names the daemon uses: "ctl" (IPC) and "http". A unit written without
    ``FileDescriptorName=`` passes the socket unit's name (or "unknown"); such sockets are sorted by address
    family rather than ignored, since ignoring the IPC one would make us bind the path systemd already holds."""
    import socket

    roles: dict[str, list[Any]] = {}
    for name, socks in found.items():
        for sock in socks:
            role = name
            if name not in ("ctl", "http"):
                role = "ctl" if sock.family == socket.AF_UNIX else "http"
                log.warning(
                    "inherited socket %s has fd name %r; using it as %r (set FileDescriptorName=)",
                    sock.getsockname(),
                    name,
                    role,
                )
            roles.setdefault(role, []).append(sock)
    return roles


class Bound:
    """What ``Daemon._bind`` bound or inherited. A plain class: a NamedTuple costs ~0.1 ms to create."""

    __slots__ = ("ctl", "endpoint", "http", "own_ctl")

    def __init__(self, ctl: socket.socket, own_ctl: bool, http: list[socket.socket], endpoint: Endpoint) -> None:
        self.ctl = ctl  # the IPC socket
        self.own_ctl = own_ctl  # bound here (not inherited): its file is ours to remove at exit
        self.http = http  # the HTTP sockets: 127.0.0.1 and ::1
        self.endpoint = endpoint


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] = os.environ,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.sources = dict(sources or {})  # where each setting came from (settings.resolve_with_sources)
        self.flags = dict(flags or {})
        self.env = env
        self.secrets: HelperStore | None = None
        self.bus = EventBus()
        self.stopping = asyncio.Event()
        self.activated = False
        self.controller: Controller | None = None
        self.exit_code = 0
        self._http: LazyHttpServer | None = None
        self._ipc: IpcServer | None = None
        self._openrouter: OpenRouterClient | None = None
        self._tasks = TaskSet()  # the idle watch
        self._desktop: Any = None
        self._status = "Starting"
        self._stop_reason = "signal"

    # -- start-up ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds (or inherits) the sockets, builds the parts, then serves: systemd hears READY=1 once both doors
        accept. Only what `status` needs is imported on the way: aiohttp waits for the first login or HTTP
        connection (http_sockets), the OpenRouter client for its first request, and keyring, cryptography and
        tomlkit stay out of this process (store.helper). Start-up time is what a socket-activated client waits for."""
        bound = self._bind()
        ctl = self._build(bound)
        await self._serve(bound, ctl)

    def _bind(self) -> Bound:
        """The IPC socket, then the HTTP sockets: inherited from the service manager, or bound here."""
        from convocationsd.daemon import http_sockets, ipc_server

        s = self.settings
        # Always called: it returns {} when not activated, and it clears LISTEN_* variables that were meant
        # for another process, so a child of ours never misreads them.
        inherited = _by_role(systemd.inherited_sockets(self.env))
        if not inherited and sys.platform == "darwin":
            from convocationsd.daemon import launchd

            inherited = launchd.inherited_sockets()
        self.activated = bool(inherited)

        # The IPC socket first: a second daemon must stop here, before it takes any HTTP port.
        ipc_socks = inherited.get("ctl", [])
        if ipc_socks:
            ctl_sock, socket_path = ipc_socks[0], ipc_socks[0].getsockname()
            chosen_by = self.sources.get("socket_path", DEFAULT)
            if chosen_by.startswith("socket in ") and str(s.socket_path) != socket_path:  # where clients look
                log.warning(
                    "socket %s (%s) is not used: the service manager passed %s, so convctl and frontends that "
                    "read config.toml look for this daemon in vain; run `convctl service install`, which moves "
                    "the socket unit (or plist) there, then restart the service",
                    s.socket_path,
                    chosen_by,
                    socket_path,
                )
        else:
            ctl_sock, socket_path = ipc_server.bind_unix_socket(s.socket_path), str(s.socket_path)

        http_socks = inherited.get("http", [])
        fell_back = False
        if http_socks:
            port = http_socks[0].getsockname()[1]
        else:
            # Only the default port may be replaced by a free one: a port the person chose is a promise.
            chosen_by = self.sources.get("http_port", DEFAULT)
            fallback = s.allow_port_fallback or chosen_by == DEFAULT
            try:
                http_socks, port, fell_back = http_sockets.bind_loopback(s.http_port, fallback=fallback)
            except OSError as e:
                if not ipc_socks:  # do not leave our socket file behind for the next start to call stale
                    ctl_sock.close()
                    os.unlink(socket_path)
                if not fallback and e.errno == errno.EADDRINUSE:
                    raise http_sockets.port_busy_error(s.http_port, chosen_by) from None
                raise
        if fell_back:
            log.warning(
                "PORT %d IS BUSY: listening on http://localhost:%d instead. %s",
                s.http_port,
                port,
                pkce.fallback_port_note(s.http_port),
            )
        endpoint = Endpoint(port=port, port_fallback=fell_back, socket_path=str(socket_path))
        return Bound(ctl_sock, not ipc_socks, http_socks, endpoint)

    def _build(self, bound: Bound) -> Controller:
        """The secret store, the OpenRouter client and the controller that uses them."""
        from convocationsd.daemon.openrouter import OpenRouterClient
        from convocationsd.store.helper import HelperStore

        s = self.settings
        self.secrets = HelperStore(
            s.config_path, forced_backend=s.secret_backend, keyring_timeout=s.keyring_timeout_seconds, env=self.env
        )
        self._openrouter = OpenRouterClient(s.openrouter_url, timeout=s.exchange_timeout_seconds)
        ctl = self.controller = Controller(
            endpoint=bound.endpoint,
            openrouter_url=s.openrouter_url,
            openrouter=self._openrouter,
            secrets=self.secrets,
            bus=self.bus,
            flow_timeout=s.flow_timeout_seconds,
            require_state=not s.allow_stateless_callbacks,
            account_ttl=s.account_cache_seconds,
            setup=self._setup(),
        )
        ctl.service = service_manager(self.env)
        try:  # read here, not in a thread: nothing waits on the loop yet, and no thread pool is started for it
            ctl.secret_state = self.secrets.status()
        except ConvError as e:
            log.error("%s", e)
        return ctl

    async def _serve(self, bound: Bound, ctl: Controller) -> None:
        """D-Bus, then the socket's door, then the HTTP door (served from the first connection or login)."""
        from convocationsd.common.settings import public_url
        from convocationsd.daemon import desktop, http_sockets, ipc_server

        s, port = self.settings, bound.endpoint.port
        # D-Bus (optional): notifications unless turned off, and the exported object, which is always wanted.
        self._desktop = await desktop.start(ctl, self.bus, notifications=s.desktop_notifications, env=self.env)

        ipc = self._ipc = ipc_server.IpcServer(ctl.handlers(), self.bus, on_activity=ctl.touch)
        await ipc.start(bound.ctl)
        if bound.own_ctl:
            ipc.own_socket(Path(bound.endpoint.socket_path))

        # HTTP is served from the first connection, or from the first login (its callback is coming).
        self._http = http_sockets.LazyHttpServer(bound.http, ctl, on_failure=self._http_failed)
        self._http.watch()
        self.bus.add_listener(self._on_event)

        log.info(
            "convocationsd %s listening on http://localhost:%d and %s; OpenRouter at %s",
            __version__,
            port,
            bound.endpoint.socket_path,
            public_url(s.openrouter_url),
        )
        # Both doors accept from here on: only now may systemd consider the start finished.
        self._status = f"Listening on http://localhost:{port}" + (
            " (fallback port)" if bound.endpoint.port_fallback else ""
        )
        systemd.notify(f"READY=1\nSTATUS={self._status}", self.env)
        if self.activated:
            self._tasks.start(self._idle_watch(ctl, ipc))

    def _setup(self) -> dict[str, Any]:
        """The settings `status` reports (doctor checks the daemon the person runs, not its own guess): each
        with its value and where it came from."""
        from convocationsd.common.settings import SOURCES, reported

        s = self.settings
        setup: dict[str, Any] = {"config_path": str(s.config_path)}
        for name in SOURCES:
            setup[name] = {"value": reported(name, getattr(s, name)), "source": self.sources.get(name, DEFAULT)}
        return setup

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == AUTH_STARTED and self._http is not None:  # the browser comes back over HTTP, and the
            self._http.start()  # exchange needs aiohttp

    def _http_failed(self, error: BaseException) -> None:
        log.error("cannot serve HTTP, stopping: %s", error, exc_info=error)
        self._stop_reason, self.exit_code = "HTTP failed", 1
        self.stopping.set()

    # -- running -------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: re-read the config; log level, timeouts, idle exit and allow_stateless_callbacks change,
        subscribers and the flow stay. What only a restart applies (settings.RESTART_ONLY) keeps its running
        value, and the log, `status` and doctor say which changed settings wait for a restart."""
        from convocationsd.common.settings import RESTART_ONLY, key_name, pending_change, reported

        try:
            loaded = config.load(self.flags, self.env)
        except ConvError as e:
            log.error("reload failed, keeping the current settings: %s", e)
            return
        _warn_about_config(loaded)
        running = self.settings
        waiting = [name for name in RESTART_ONLY if getattr(loaded.settings, name) != getattr(running, name)]
        new = self.settings = loaded.settings._replace(**{name: getattr(running, name) for name in RESTART_ONLY})
        self.sources = {**loaded.sources, **{name: self.sources.get(name, DEFAULT) for name in RESTART_ONLY}}
        restart_needed = []
        for name in waiting:
            entry = {
                "setting": name,
                "value": reported(name, getattr(loaded.settings, name)),
                "source": loaded.sources.get(name, DEFAULT),
                "running": reported(name, getattr(running, name)),
            }
            restart_needed.append(entry)
            log.warning("%s", pending_change(entry["setting"], entry["value"], entry["source"], entry["running"]))
        set_level(new.log_level)
        for part in (self.controller, self._openrouter, self.secrets):  # each takes what it uses
            if part is not None:
                part.apply(new)
        if self.controller is not None:
            self.controller.reconfigure(self._setup(), restart_needed)
        later = f"; restart to apply {', '.join(map(key_name, waiting))}" if waiting else ""
        log.info("configuration reloaded from %s%s", new.config_path, later)
        systemd.notify(f"STATUS={self._status}; configuration reloaded{later}", self.env)

    async def _idle_watch(self, ctl: Controller, ipc: IpcServer) -> None:
        while not self.stopping.is_set():
            idle = self.settings.idle_exit_seconds  # re-read: SIGHUP may change it
            await asyncio.sleep(min(idle / 4, 30.0))
            quiet = not ctl.busy() and not ipc.connections
            if quiet and time.monotonic() - ctl.last_activity >= idle:
                log.info("idle for %.0f s; exiting until the next connection", idle)
                self._stop_reason = "idle"
                self.stopping.set()

    async def stop(self) -> None:
        """Shuts down in stages: the login in progress is cancelled (its waiters are told), the doors close
        (requests in flight end), then what served them. Every task, timer, thread and child process the
        daemon started has ended when this returns."""
        systemd.notify(f"STOPPING=1\nSTATUS=Stopping ({self._stop_reason})", self.env)
        await self._tasks.close()
        ctl = self.controller
        if ctl is not None and ctl.flows.pending is not None:
            ctl.cancel(force=True)
        if ctl is not None and ctl.unsaved is not None:
            log.error(
                "stopping with the key of login %s still unsaved (%s): it is lost; link the account again with "
                "`convctl oauth start`",
                ctl.unsaved.session_id,
                ctl.unsaved.reason,
            )
        if self._ipc is not None:
            await self._ipc.close()
        if self._http is not None:
            await self._http.close()
        if self._desktop is not None:
            await self._desktop.close()
        REFUSALS.flush()  # counts of refused requests not yet logged
        if ctl is not None:
            await ctl.close()
        if self._openrouter is not None:
            await self._openrouter.close()
        if self.secrets is not None:  # off the loop: a call in progress (a keyring prompt) finishes first
            await asyncio.to_thread(self.secrets.close)
        if ctl is not None:  # it started: a start that failed says why instead
            log.info("stopped")


def service_manager(env: Mapping[str, str]) -> dict[str, str] | None:
    """Which service manager runs the daemon, so that doctor can name the command that reloads or restarts
    it: ``{"manager": "systemd", "unit": "convocationsd.service"}``, ``{"manager": "launchd", "unit": label}``,
    or None (a terminal; ``systemd-socket-activate``, which is no manager)."""
    unit = systemd.service_unit(env)
    if unit:
        return {"manager": "systemd", "unit": unit}
    label = env.get("XPC_SERVICE_NAME", "")  # launchd names its jobs' processes so; "0" outside a job
    if sys.platform == "darwin" and label.startswith("io.convocations."):
        return {"manager": "launchd", "unit": label}
    return None


async def serve(
    settings: Settings,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] = os.environ,
    sources: Mapping[str, str] | None = None,
) -> int:
    """Runs the daemon until a signal or idle exit; returns its exit code."""
    daemon = Daemon(settings, flags=flags, env=env, sources=sources)
    try:
        await daemon.start()
        daemon.install_signal_handlers()
        await daemon.stopping.wait()
    finally:
        await daemon.stop()
    return daemon.exit_code


def raise_open_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, at most 65536 (systemd hands out 1024 / 524288).

    Any local user can open loopback HTTP connections; at 1024 descriptors a few hundred idle ones would
    make the daemon unable to accept its own user's socket clients. Memory, not descriptors, then bounds
    what a crowd costs, and idle HTTP connections are closed after ``http_app.IDLE_TIMEOUT``."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if sys.platform == "darwin":
            wanted = min(wanted, 10240)  # OPEN_MAX: macOS refuses more
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.debug("open file limit raised from %d to %d", soft, wanted)
    except (ImportError, ValueError, OSError) as e:
        log.debug("could not raise the open file limit: %s", e)


def parse_flags(argv: list[str]) -> dict[str, Any]:
    """The settings given on the command line. The service units give none: then there is no parser to build
    (argparse and building it were ~3 ms of a socket-activated start, bench/ANALYSIS.md)."""
    if not argv:
        return {}
    return {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    flags = parse_flags(sys.argv[1:] if argv is None else argv)
    env = os.environ
    try:
        loaded = config.load(flags, env)
    except ConvError as e:
        print(f"convocationsd: {e}", file=sys.stderr)
        return 1 if isinstance(e, (UntrustedSocket, UntrustedConfig)) else 2  # an unsafe place is no usage error
    settings = loaded.settings
    setup_logging(settings.log_level, env)
    _warn_about_config(loaded)
    raise_open_file_limit()
    try:
        return asyncio.run(serve(settings, flags=flags, env=env, sources=loaded.sources))
    except ConvError as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
