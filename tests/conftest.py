"""Shared test harness: a real daemon process, a real fake OpenRouter, short socket paths.

Nothing here is mocked: the daemon runs as ``python -m convocationsd`` with its own config and runtime
dirs, talks to the fake over loopback, and every byte it writes to stderr is kept so tests can search
it for secrets. The whole session runs under a temporary HOME, and fails if the real one was touched
(tests/helpers/isolation.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from convocationsd.client import AsyncClient, Client
from convocationsd.testing.ports import free_port  # noqa: F401 (tests import it from here)
from tests.helpers.isolation import (  # noqa: F401 (the session's hooks)
    pytest_configure,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

# The same examples on every run, and no per-example time limit: a property test then fails for its input,
# never for a busy machine (`--hypothesis-profile=default` explores afresh).
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.load_profile("repeatable")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.needs_root`` tests (another uid, a daemon as root, a container) skip unless run as root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: `sudo make test-root` runs these, as CI does")
    for item in items:
        if item.get_closest_marker("needs_root"):
            item.add_marker(skip)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory in $TMPDIR (tests/helpers/isolation.py checks that it is short): Unix socket paths
    must fit in 104-108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cv"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_foreign(monkeypatch: pytest.MonkeyPatch):
    """Makes a path another user's: as root, by giving it to uid 4242; as anyone else, by pretending to be
    another uid (os.getuid patched), so that what is ours looks someone else's."""

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, 4242, -1, follow_symlinks=False)
        else:
            real = os.getuid()
            monkeypatch.setattr(os, "getuid", lambda: real + 1)

    return make


def readable(source: object, timeout: float) -> bool:
    """Whether ``source`` (a socket or a descriptor) has something to read, or its end, within ``timeout``
    seconds. poll, not select.select(), which refuses descriptors from 1024 on, as the product's code does."""
    waiting = select.poll()
    waiting.register(source, select.POLLIN)  # type: ignore[arg-type]
    return bool(waiting.poll(timeout * 1000))


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    env: dict[str, str]
    socket: Path
    config_dir: Path
    log_path: Path
    port: int = 0
    extra_outputs: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://localhost:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 10.0) -> Client:
        c = Client(self.socket, timeout=timeout)
        c.connect()
        return c

    def call(self, method: str, params: dict | None = None):
        with self.client() as c:
            return c.call(method, params)

    async def aclient(self) -> AsyncClient:
        c = AsyncClient(self.socket)
        await c.connect()
        return c

    def convctl(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        done = convctl(self.env, *args, input=input, timeout=timeout)
        self.extra_outputs += [done.stdout, done.stderr]
        return done

    def convctl_async(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "convocationsd.cli.main", *args],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def all_output(self) -> str:
        """Everything this daemon and its clients wrote, and every file under its config dir."""
        parts = [self.log(), *self.extra_outputs]
        for path in self.config_dir.rglob("*"):
            if path.is_file():
                parts.append(path.read_bytes().decode("latin-1"))
        return "\n".join(parts)


def convctl(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess:
    """``convctl ARGS`` as a real process with ``env``; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "convocationsd.cli.main", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ManualClock:
    """A clock tests move by hand (``clock.now += 600``): expiry without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def base_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOCATIONS_", "RCONV_", "LISTEN_", "NOTIFY_"))}
    env.update(
        XDG_CONFIG_HOME=str(tmp / "cfg"),
        XDG_RUNTIME_DIR=str(tmp / "run"),
        CONVOCATIONS_SOCKET=str(tmp / "run" / "d.sock"),
        CONVOCATIONS_SECRET_BACKEND="local-encrypted",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early with {proc.returncode}")
        try:
            with Client(path, timeout=2) as c:
                c.call("status")
            return
        except Exception:
            time.sleep(0.05)
    raise TimeoutError("daemon did not come up")


def start_daemon(
    tmp: Path,
    *,
    wait: bool = True,
    args: tuple[str, ...] = (),
    module: str = "convocationsd",
    umask: int | None = None,
    nofile: int | None = None,
    command: list[str] | None = None,
    cwd: Path | None = None,
    **env_overrides: str,
) -> DaemonProcess:
    """``python -m convocationsd`` (or a test's launcher ``module`` of it, or another ``command`` line, run in
    ``cwd``) with its own dirs under ``tmp``; ``CONVOCATIONS_SOCKET=""`` for the default socket path. ``umask``
    and ``nofile`` (the soft open-file limit) are what a service manager might hand it."""
    env = base_env(tmp, **env_overrides)
    env.setdefault("RCONV_HTTP_PORT", "0")  # see port_chosen_by_daemon
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"

    def prepare() -> None:
        if umask is not None:
            os.umask(umask)
        if nofile is not None:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", module]), "--log-level", "debug", *args],
            env=env,
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=None if umask is None and nofile is None else prepare,
        )
    sock = env["CONVOCATIONS_SOCKET"] or str(Path(env["XDG_RUNTIME_DIR"]) / "convocations" / "convocationsd.sock")
    d = DaemonProcess(proc, env, Path(sock), tmp / "cfg" / "convocations", log_path)
    if wait:
        wait_for_socket(d.socket, proc)
        port_chosen_by_daemon(d)
    return d


def port_chosen_by_daemon(d: DaemonProcess) -> None:
    """Learns the HTTP port of a daemon started with RCONV_HTTP_PORT=0 (unless a test asked for one).

    The daemon picks a port free on both loopbacks and binds it at once: a port picked by the test and bound
    later by the daemon could be taken in between by any process on the machine, and the daemon would then
    fall back (loudly) to another one. convctl and doctor are then told that port, as if it had been chosen.
    """
    d.port = d.call("status")["port"]
    if d.env["RCONV_HTTP_PORT"] == "0":
        d.env["RCONV_HTTP_PORT"] = str(d.port)


@pytest.fixture
async def fake() -> AsyncIterator:
    """The fake OpenRouter, checking every exchange the daemon sends against OpenRouter's SDK."""
    from convocationsd.testing.fake_openrouter import FakeOpenRouter
    from tests.helpers.openrouter_sdk import exchange_body_problem

    async with FakeOpenRouter(check_exchange=exchange_body_problem) as f:
        yield f
    assert f.request_problems == [], "the daemon sent an exchange that OpenRouter's SDK would not"


@pytest.fixture
def daemon_factory(short_tmp: Path):
    started: list[DaemonProcess] = []

    def make(**kw) -> DaemonProcess:
        d = start_daemon(short_tmp, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
async def daemon(daemon_factory, fake):
    """A daemon pointed at the fake OpenRouter (encrypted backend, so no keyring is needed)."""
    return await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url)


async def follow_callback(location: str, *, host_port: int | None = None) -> tuple[int, str, str]:
    """Follows OpenRouter's redirect to our callback like a browser; returns (status, final URL, HTML)."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(location) as r:
        return r.status, str(r.url), await r.text()


AUTH_URL_RE = re.compile(r"^\s+(https?://\S+/auth\?\S+)$", re.M)


def read_auth_url_sync(proc: subprocess.Popen, timeout: float = 20.0) -> str:
    """Reads ``convctl oauth start``'s stdout until it prints the authorize URL."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, (
            "convctl ended before printing a URL: " + "".join(lines) + (proc.stderr.read() if proc.stderr else "")
        )
        lines.append(line)
        if m := AUTH_URL_RE.match(line):
            return m.group(1)
    raise AssertionError("no URL from convctl")


async def read_auth_url(proc: subprocess.Popen) -> str:
    return await asyncio.to_thread(read_auth_url_sync, proc)


def read_line_with(stream, needle: str) -> str:
    """Reads a child's stdout or stderr until a line contains ``needle`` (what it prints once it got there)."""
    seen: list[str] = []
    for line in iter(stream.readline, ""):
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"the output ended without {needle!r}:\n{''.join(seen)}")


def wait_until(predicate, what: str, timeout: float = 15.0) -> None:
    """Polls ``predicate`` until it holds: for states that no event announces. ``timeout`` only bounds a failure."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def next_event(client: AsyncClient, name: str, timeout: float = 10.0) -> dict:
    """The next event called ``name`` on an AsyncClient that has subscribed."""

    async def wait() -> dict:
        async for ev in client.events():
            if ev["event"] == name:
                return ev
        raise AssertionError("the daemon closed the connection")

    return await asyncio.wait_for(wait(), timeout)


def dead_url() -> str:
    """An http:// address on loopback where nothing listens (the port was free a moment ago): refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def hold_port(address: str) -> tuple[subprocess.Popen, int]:
    """Another program (think of a dev server, ``devserver.py``) listening on ``address``, on a port it chose
    itself, so nothing can take the port in between: (process, port). The caller kills the process."""
    code = textwrap.dedent(
        f"""
        import socket, sys, time
        fam = socket.AF_INET6 if ":" in {address!r} else socket.AF_INET
        s = socket.socket(fam)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(({address!r}, 0))
        s.listen()
        print(s.getsockname()[1], flush=True)
        time.sleep(120)
        """
    )
    script = Path(tempfile.mkdtemp(prefix="cvd")) / "devserver.py"
    script.write_text(code)
    # Named relative to its folder: doctor shows 120 characters of a command line, and the name must be in them.
    proc = subprocess.Popen([sys.executable, script.name], cwd=script.parent, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    script.unlink()
    script.parent.rmdir()
    return proc, port


def assert_no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, "a secret leaked into output"
