"""The HTTP door's listening sockets: bound (or inherited) at start-up, served by aiohttp only once needed.

The port is the daemon's promise (OpenRouter is sent ``http://localhost:<port>/...``), so the sockets are
bound from the start and a browser's connection is never refused. aiohttp, though, is most of a cold
start's import time and memory, and ``status``, ``subscribe`` and ``secret.*`` on the Unix socket never
need it. Until a login starts or a connection waits on one of these sockets, the event loop only watches
them (``add_reader``); then aiohttp is imported, off the loop, and takes over the sockets, accepting
whatever waited in their backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from convocationsd.core.errors import ConvError

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 3.0  # seconds for requests in flight at SIGTERM


class LazyHttpServer:
    """Serves ``socks`` with ``http_app`` for ``controller``, from the first :meth:`start` on."""

    def __init__(
        self, socks: list[socket.socket], controller: Any, *, on_failure: Callable[[BaseException], None]
    ) -> None:
        self.socks = socks
        self.controller = controller
        self.on_failure = on_failure  # the start failed (aiohttp cannot be imported, say): the daemon cannot serve
        self.started: asyncio.Task[None] | None = None  # the start, once asked for
        self._runner: Any = None  # aiohttp's AppRunner, once serving

    def watch(self) -> None:
        """Starts serving on the first connection that waits on any of the sockets."""
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            loop.add_reader(sock.fileno(), self.start)

    def start(self) -> asyncio.Task[None]:
        """Imports aiohttp and serves the sockets (once; later calls return the same task)."""
        self.controller.touch()  # a waiting connection is activity: no idle exit while aiohttp loads
        if self.started is None:
            self._unwatch()  # from here on aiohttp's server reads the sockets
            self.started = asyncio.get_running_loop().create_task(self._serve())
            self.started.add_done_callback(self._check)
        return self.started

    def _check(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self.on_failure(error)

    async def _serve(self) -> None:
        # A thread, so that the Unix socket keeps answering during the ~0.2 s import.
        http_app = await asyncio.to_thread(importlib.import_module, "convocationsd.daemon.http_app")
        from aiohttp import web

        runner = web.AppRunner(
            http_app.make_app(self.controller),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=http_app.IDLE_TIMEOUT,
        )
        await runner.setup()
        self._runner = runner
        for sock in self.socks:
            await web.SockSite(runner, sock).start()
        log.debug("HTTP server started on %d socket(s)", len(self.socks))

    async def close(self) -> None:
        """Stops serving; requests in flight get ``SHUTDOWN_GRACE`` seconds. Never ``shutdown()``s a socket:
        an inherited one is systemd's too."""
        if self.started is None:
            self._unwatch()
        elif not self.started.done():
            self.started.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.started
        if self._runner is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._runner.cleanup(), SHUTDOWN_GRACE)
        for sock in self.socks:
            sock.close()  # aiohttp closed those it served; the others are ours to close

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            loop.remove_reader(sock.fileno())


# -- binding -----------------------------------------------------------------------------------------


def _listen(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # SO_REUSEADDR only skips TIME_WAIT on Linux; never SO_REUSEPORT (it would let others share the port).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def bind_loopback(port: int, *, fallback: bool = True, attempts: int = 20) -> tuple[list[socket.socket], int, bool]:
    """Binds ``port`` on 127.0.0.1 and ::1. If either is busy and ``fallback`` allows it, binds one free port
    on both instead; otherwise the OSError (EADDRINUSE) propagates.

    Port 0 means any free port: the one the system picks for 127.0.0.1 may be another program's on ::1, so
    it is tried again like a fallback (and is no fallback).

    Returns (sockets, port, fell_back). A machine without IPv6 loopback gets the IPv4 socket only."""
    try:
        socks = _bind_both(port)
        return socks, socks[0].getsockname()[1], False  # port 0 means "any": report the one we got
    except OSError as e:
        if port != 0 and not fallback:
            raise
        if port != 0:
            log.warning("port %d is busy (%s)", port, e.strerror)
    for _ in range(attempts):
        try:
            socks = _bind_both(0)
        except OSError:
            continue
        return socks, socks[0].getsockname()[1], port != 0
    raise OSError("no free port on both 127.0.0.1 and ::1")


def port_busy_error(port: int, chosen_by: str) -> ConvError:
    """A busy port the person chose: which program holds it, where this system shows that, and what to do."""
    from convocationsd.common import port_owners

    found = port_owners.holders(port)
    held = f" by {found[0].describe()}" if found else ""
    return ConvError(
        f"Port {port} (chosen by {chosen_by}) is already in use{held}.",
        f"Stop that program, or choose another free port; or start with --allow-port-fallback to take any free "
        f"port when {port} is busy (the callback URL OpenRouter is sent then changes with the port).",
    )


def _bind_both(port: int) -> list[socket.socket]:
    v4 = _listen(socket.AF_INET, "127.0.0.1", port)
    chosen = v4.getsockname()[1]
    try:
        v6 = _listen(socket.AF_INET6, "::1", chosen)
    except OSError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):  # no IPv6 loopback on this machine
            log.warning("no IPv6 loopback (%s); listening on 127.0.0.1 only", e.strerror)
            return [v4]
        v4.close()
        raise
    return [v4, v6]
