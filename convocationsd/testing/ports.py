"""Spare loopback ports for tests and benchmarks."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on both 127.0.0.1 and ::1 right now (the daemon binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET) as v4:
            v4.bind(("127.0.0.1", 0))
            port: int = v4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6) as v6:
                    v6.bind(("::1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port is free on both 127.0.0.1 and ::1")
