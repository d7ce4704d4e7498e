"""Fixtures for the units under a real systemd: one container per session, a new person per test.

The container boots once per session (a few seconds) and has the project installed from its wheel into
/opt/convocations, as root, the way a system-wide pipx install would be; nothing from the source tree is
inside. Each test gets a person of its own (a fresh user with linger, so their own user manager, runtime
dir and journal) and installs the service as that person, so tests share nothing but the installation.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import pytest

from tests.conftest import read_auth_url_sync
from tests.helpers.wheel import build_dists, wheelhouse
from tests.service.container import Container, Person, ensure_root, unavailable

HERE = Path(__file__).parent
VENV = "/opt/convocations"
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        shown = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"systemd container: {shown}")


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    # Not under pytest's basetemp: other pytest runs of the same user prune old basetemps while this one runs.
    share = Path(tempfile.mkdtemp(prefix="cvshare"))
    try:
        share.chmod(0o755)  # read by the person inside (the scripts)
        started = time.monotonic()
        wheelhouse(build_dists(share / "dist").wheel, share / "wheels")  # what pipx would install, no index
        for script in ("browser.py", "sandbox_probe.py"):
            shutil.copy(HERE / script, share / script)
        TIMINGS["wheelhouse"] = time.monotonic() - started
        root, built = ensure_root()
        if built is not None:
            TIMINGS["root build"] = built
        box = Container(root, share)
        started = time.monotonic()
        try:
            box.boot(share / "nspawn.log")
            TIMINGS["boot"] = time.monotonic() - started
            started = time.monotonic()
            box.run(["python3", "-m", "venv", VENV])
            pip = [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", f"--find-links={box.SHARED}/wheels"]
            box.run([*pip, "convocationsd"])
            TIMINGS["install"] = time.monotonic() - started
            yield box
        finally:
            started = time.monotonic()
            box.shutdown()
            TIMINGS["shutdown"] = time.monotonic() - started
    finally:
        shutil.rmtree(share, ignore_errors=True)


_uids = count(2001)


@pytest.fixture
def new_person(container: Container) -> Iterator[Callable[..., Desk]]:
    """Makes a new user with linger, their user manager running, the service not yet installed.
    ``user_namespaces=False`` gives them a user manager that cannot make user namespaces, as on systems that
    refuse them to unprivileged users (a seccomp filter on user@UID.service, the container's system unit)."""
    made: list[Desk] = []

    def make(user_namespaces: bool = True) -> Desk:
        uid = next(_uids)
        who = Person(f"cv{uid}", uid)
        if not user_namespaces:
            container.write(f"/run/systemd/system/user@{uid}.service.d/no-userns.conf", NO_USERNS, mkdir=True)
            container.run(["systemctl", "daemon-reload"])
        container.run(["useradd", "--create-home", "--uid", str(uid), "--gid", "users", who.name])
        container.run(["loginctl", "enable-linger", who.name])
        desk = Desk(container, who)
        made.append(desk)
        deadline = time.monotonic() + 30
        while desk.run("systemctl", "--user", "is-system-running", "--wait", check=False).stdout.strip() != "running":
            assert time.monotonic() < deadline, f"the user manager of {who.name} did not start"
            time.sleep(0.1)
        return desk

    yield make
    for desk in made:
        for proc in desk.started:
            container.stop(proc)
        container.run(["loginctl", "disable-linger", desk.who.name], check=False)
        container.run(["systemctl", "stop", f"user@{desk.who.uid}.service"], check=False)


NO_USERNS = "[Service]\nRestrictNamespaces=~user\n"


@pytest.fixture
def person(new_person: Callable[..., Desk]) -> Desk:
    return new_person()


@dataclass
class Desk:
    """What a person does at their terminal: runs commands as themselves, with their session's environment."""

    box: Container
    who: Person

    def __post_init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def run(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60.0):
        return self.box.run(argv, self.who, check=check, input=input, timeout=timeout)

    def popen(self, *argv: str) -> subprocess.Popen:
        proc = self.box.popen(argv, self.who)
        self.started.append(proc)
        return proc

    def convctl(self, *args: str, check: bool = True, timeout: float = 60.0):
        return self.run("convctl", *args, check=check, timeout=timeout)

    def systemctl(self, *args: str, check: bool = True):
        return self.run("systemctl", "--user", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict]:
        """The person's journal entries (``journalctl --user`` with ``args``) as journald's JSON records."""
        out = self.run("journalctl", "--user", "--output=json", "--no-pager", *args, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def write_config(self, text: str) -> None:
        folder = f"{self.who.home}/.config/convocations"
        self.run("mkdir", "-p", "--mode=700", f"{self.who.home}/.config", folder)
        self.box.write(f"{folder}/config.toml", text, mode=0o600, owner=self.who)

    def install_service(self, port: int, **settings: object) -> str:
        """config.toml with ``http_port`` and ``settings``, then ``convctl service install``; its output."""
        lines = [f"http_port = {port}", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
        self.write_config("\n".join(lines) + "\n")
        return self.convctl("service", "install").stdout

    def unlock_keyring(self, password: str = "test-password") -> None:
        """A gnome-keyring of the person's, unlocked, owning org.freedesktop.secrets on their user bus: a
        unit of their user manager, so it ends with it."""
        data = base64.b64encode(password.encode()).decode()
        self.run(
            *("systemd-run", "--user", "--unit=test-keyring", f"--property=StandardInputData={data}"),
            *("gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"),
        )
        deadline = time.monotonic() + 20
        while self.run("busctl", "--user", "status", "org.freedesktop.secrets", check=False).returncode != 0:
            assert time.monotonic() < deadline, "gnome-keyring did not take org.freedesktop.secrets"
            time.sleep(0.1)

    def main_pid(self) -> int:
        return int(self.show("convocationsd.service", "MainPID")["MainPID"])

    def login(self) -> str:
        """``convctl oauth start`` and the browser approving it; returns convctl's output (it must exit 0)."""
        cli = self.popen("convctl", "oauth", "start", "--no-browser")
        url = read_auth_url_sync(cli)
        page = self.run("python3", f"{self.box.SHARED}/browser.py", url).stdout
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, f"convctl oauth start exited {cli.returncode}: {out}{err}\nbrowser:\n{page}"
        return out


@dataclass
class FakeOpenRouter:
    """The shipped fake OpenRouter, running inside the container as the person."""

    url: str
    proc: subprocess.Popen

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_fake/state", timeout=10) as answer:
            return json.load(answer)


@pytest.fixture
def fake(person: Desk) -> FakeOpenRouter:
    proc = person.popen(f"{VENV}/bin/python", "-m", "convocationsd.testing.fake_openrouter", "--port", "0")
    first = proc.stdout.readline()
    found = re.search(r"listening on (http://\S+)", first)
    assert found, f"the fake OpenRouter did not start: {first}{proc.stderr.read() if proc.poll() is not None else ''}"
    return FakeOpenRouter(found.group(1), proc)


def spare_port() -> int:
    """A TCP port free on 127.0.0.1 and ::1, below the kernel's ephemeral range: no process that binds port 0
    can be handed it between this check and systemd binding it (the container shares the host's network)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(20000, min(low, 32768))
        try:
            with socket.socket(socket.AF_INET) as v4, socket.socket(socket.AF_INET6) as v6:
                v4.bind(("127.0.0.1", port))
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::1", port))
        except OSError:
            continue
        if port != 3000:
            return port
    raise RuntimeError("no spare port below the ephemeral range")
