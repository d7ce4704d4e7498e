"""The daemon's import budget (issue 15): what a cold start and a long life may load.

A socket-activated daemon is started by the client that waits for it, so `status` must not wait for aiohttp
(most of the import time and memory), and the daemon lives for hours, so keyring, cryptography and tomlkit
(loaded by storing a key) must never stay in it. The daemon reports what it loaded with ``debug.modules``.
How long any of it takes is measured in bench/ (footprint), never here.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import follow_callback, free_port
from tests.integration.test_socket_activation import Activation, http_status, needs_tool
from tests.secretstore_contract import clean_secret_service

WAITS = {"aiohttp", "yarl", "multidict"}  # until a login or an HTTP connection
NEVER = {"keyring", "cryptography", "tomlkit"}  # the secret store's libraries: only in its helper process


def loaded(client) -> set[str]:
    return set(client.call("debug.modules")["modules"])


@needs_tool
def test_activated_daemon_answers_status_and_subscribe_without_the_heavy_libraries(short_tmp):
    port = free_port()
    a = Activation(short_tmp, short_tmp / "c.sock", port)
    try:
        with a.client() as c:  # this connection starts the daemon
            assert c.call("status")["port"] == port
            assert c.call("subscribe")["events"]
            assert not loaded(c) & (WAITS | NEVER)

        # The first HTTP connection waited in the socket's backlog while aiohttp was imported, and was served.
        assert http_status("127.0.0.1", port)[0] == 200
        with a.client() as c:
            assert loaded(c) >= WAITS
            assert not loaded(c) & NEVER
    finally:
        a.kill()


async def login(d, fake) -> None:
    started = d.call("oauth.start")
    status, _, _ = await follow_callback(await fake.approve(started["auth_url"]))
    assert status == 200
    assert d.call("status")["flow"]["status"] == "succeeded"


async def test_a_login_loads_aiohttp_but_never_the_secret_store_libraries(daemon, fake):
    with daemon.client() as c:
        assert not loaded(c) & (WAITS | NEVER)
    await login(daemon, fake)
    assert await asyncio.to_thread(daemon.call, "secret.get")
    with daemon.client() as c:
        modules = loaded(c)
    assert modules >= WAITS and not modules & NEVER


@pytest.fixture
def secret_service():
    yield from clean_secret_service()


@pytest.mark.keyring
async def test_the_keyring_backend_stays_out_of_the_daemon_too(daemon_factory, fake, secret_service):
    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_SECRET_BACKEND="keyring"
    )
    await login(d, fake)
    assert d.call("secret.status") == {"stored": True, "backend": "keyring"}
    with d.client() as c:
        assert not loaded(c) & NEVER


def test_an_aiohttp_that_cannot_be_loaded_stops_the_daemon_at_its_first_http_connection(daemon_factory, short_tmp):
    """Loaded late, aiohttp can only fail late: then the daemon says why and exits 1 (a supervisor restarts it)
    instead of leaving the port accepting connections that nobody serves."""
    broken = short_tmp / "broken" / "aiohttp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('planted by the test')\n")
    d = daemon_factory(PYTHONPATH=str(broken.parent))
    assert d.call("status")["port"] == d.port  # the socket door does not need it
    with pytest.raises(OSError):  # reset or closed: nothing will ever answer this request
        http_status("127.0.0.1", d.port)
    assert d.proc.wait(10) == 1
    assert "cannot serve HTTP, stopping: planted by the test" in d.log()
