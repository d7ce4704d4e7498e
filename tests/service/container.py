"""A Debian system booted with systemd-nspawn: a real systemd, a real user manager per person, for the units.

No host systemd is needed (these machines have none): ``systemd-nspawn --register=no --keep-unit`` boots the
container as a child of the test process. The root file system is built once with debootstrap and cached
outside the repository and outside anyone's HOME (the test wrapper gives a temporary HOME, and a cache
there would be rebuilt on every run); it is rebuilt when missing or stale. Each boot mounts it read-only
under a tmpfs overlay (``--volatile=overlay``), so a run changes nothing in the cache and leaves nothing
behind. The container shares the host's network, so ports are chosen by the tests.

Commands run inside through ``nsenter`` (all of the container's namespaces) and, for a person, ``runuser``
with the environment a login session gives: ``XDG_RUNTIME_DIR`` and the user bus, nothing of the test's.

Needs root, ``systemd-nspawn`` (Debian: systemd-container), ``debootstrap`` and a Debian mirror (the one
apt uses here). ``unavailable()`` says in one sentence why a machine cannot, for the tests to skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Every process started inside (and the root built for it) gets this umask, not the test process's: code
# under test in this pytest process narrows the umask for a moment (umask 077 around a socket or a file),
# and a venv made inside in such a moment was unreadable to the person (seen once in a full run).
UMASK = 0o022
SUITE = "bookworm"  # Debian 12: systemd 252, the oldest manager the units are written for
PACKAGES = (
    *("systemd", "systemd-sysv", "dbus", "dbus-user-session", "python3", "python3-venv", "procps"),
    "gnome-keyring",  # the Secret Service a desktop session has, for the keyring backend under the sandbox
)
RECIPE = 2  # bump when the root's recipe (packages, files written below) changes: cached roots are rebuilt
MAX_AGE_DAYS = 30  # older roots are rebuilt, so a long-lived cache follows Debian's point releases
CACHE = Path(os.environ.get("CONVOCATIONS_TEST_ROOT_CACHE", "/var/cache/convocations-tests"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "runuser")

# /etc/hosts of a real installation: without it "localhost" (the daemon's callback host) does not resolve.
HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"


def unavailable() -> str | None:
    """Why this machine cannot boot the container, or None."""
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root (CI runs these tests as root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install systemd-container debootstrap)"
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").is_file() and not (CACHE / "root").is_dir():
        return "debootstrap needs Debian's archive keyring (apt-get install debian-archive-keyring)"
    return None


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses on this machine (deb822 ``URIs:`` or a one-line ``deb`` entry)."""
    if os.environ.get("CONVOCATIONS_TEST_DEBIAN_MIRROR"):
        return os.environ["CONVOCATIONS_TEST_DEBIAN_MIRROR"]
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and uris.group(1).endswith("/debian"):
                return uris.group(1)
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE and "security" not in words[1]:
                return words[1]
    return DEFAULT_MIRROR


# -------------------------------------------------------------------------------------- the cached root


@dataclass(frozen=True)
class Stamp:
    """What a cached root was built from; a root whose stamp differs from the wanted one is stale."""

    recipe: int
    suite: str
    packages: tuple[str, ...]
    built_at: float

    @classmethod
    def wanted(cls) -> Stamp:
        return cls(RECIPE, SUITE, PACKAGES, time.time())

    def matches(self, other: Stamp) -> bool:
        fresh = time.time() - self.built_at < MAX_AGE_DAYS * 86400
        return fresh and (self.recipe, self.suite, self.packages) == (other.recipe, other.suite, other.packages)

    @classmethod
    def read(cls, path: Path) -> Stamp | None:
        try:
            data = json.loads(path.read_text())
            return cls(data["recipe"], data["suite"], tuple(data["packages"]), float(data["built_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({**self.__dict__, "packages": list(self.packages)}))


@contextlib.contextmanager
def _locked(cache: Path, exclusive: bool) -> Iterator[None]:
    """Several runs may share the cache: a build holds it alone, a boot shares it (so no build replaces a root
    that a container is using as its lower layer)."""
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def ensure_root(cache: Path = CACHE) -> tuple[Path, float | None]:
    """The cached root, built when missing or stale: (its path, seconds the build took or None if cached)."""
    root, stamp_path = cache / "root", cache / "stamp.json"

    def fresh() -> bool:
        stamp = Stamp.read(stamp_path)
        return stamp is not None and root.is_dir() and stamp.matches(Stamp.wanted())

    with _locked(cache, exclusive=False):  # shared: other runs may be using the root right now
        if fresh():
            return root, None
    with _locked(cache, exclusive=True):  # waits for containers booted from the old root to end
        if fresh():  # another run rebuilt it meanwhile
            return root, None
        started = time.monotonic()
        building = cache / f"root.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        stamp_path.unlink(missing_ok=True)
        try:
            _debootstrap(building)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        if root.exists():
            shutil.rmtree(root)
        building.rename(root)
        Stamp.wanted().write(stamp_path)
        return root, time.monotonic() - started


def _debootstrap(target: Path) -> None:
    mirror = debian_mirror()
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), mirror]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, umask=UMASK)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(
            f"debootstrap {SUITE} from {mirror} failed (exit {done.returncode}); set CONVOCATIONS_TEST_DEBIAN_MIRROR "
            f"to a reachable Debian mirror, or see {target}/debootstrap/debootstrap.log:\n{tail}"
        )
    (target / "etc" / "hosts").write_text(HOSTS)
    (target / "etc" / "hostname").write_text("cvtest\n")
    shutil.rmtree(target / "var" / "cache" / "apt" / "archives", ignore_errors=True)


# -------------------------------------------------------------------------------------- the container


@dataclass
class Container:
    """A booted container: ``run`` a command as root or as a person, ``shutdown`` when done."""

    root: Path
    share: Path  # a host folder seen read-only inside as /opt/cvtest (the wheelhouse, helper scripts)
    name: str = field(default_factory=lambda: f"cvtest-{os.getpid()}")
    nspawn: subprocess.Popen | None = None
    pid1: int = 0
    pidns: str = ""
    log_path: Path | None = None
    _lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    SHARED = "/opt/cvtest"

    def boot(self, log_path: Path, timeout: float = 90.0) -> None:
        """Boots it and waits until its system manager says ``running``."""
        self._lock.enter_context(_locked(self.root.parent, exclusive=False))
        self.log_path = log_path
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            "--boot",
            f"--machine={self.name}",
            "--register=no",  # there is no host systemd (machined) to register with
            "--keep-unit",  # ... nor one to create a scope unit: stay in the test's cgroup
            "--volatile=overlay",  # the cached root stays untouched; changes live in a tmpfs
            f"--bind-ro={self.share}:{self.SHARED}",
            "--console=read-only",
        ]
        with open(log_path, "wb") as log:
            self.nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_end_with_parent,
                umask=UMASK,
            )
        deadline = time.monotonic() + timeout
        self.pid1 = self._wait_for_pid1(deadline)
        self.pidns = os.readlink(f"/proc/{self.pid1}/ns/pid")
        while True:
            state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout).stdout.strip()
            if state in ("running", "degraded"):
                break
            assert time.monotonic() < deadline, f"the container did not boot: {state}; see {log_path}"
            time.sleep(0.2)
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            raise AssertionError(f"the container booted degraded: {failed}")

    def _wait_for_pid1(self, deadline: float) -> int:
        """The container's init is nspawn's child (``--keep-unit`` keeps it out of any new cgroup)."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}: {self._log_tail()}")
            for child in _children(self.nspawn.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise TimeoutError(f"systemd did not start in the container: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
        except OSError as e:
            return f"(no log: {e})"

    def enter(self, argv: Sequence[str], user: Person | None = None) -> list[str]:
        """The host command line that runs ``argv`` inside: as root, or as ``user`` in their home with a login
        session's environment (their user manager's runtime dir and bus)."""
        prefix = ["nsenter", f"--target={self.pid1}", "--all"]
        if user is None:
            return [*prefix, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", *argv]
        return [*prefix, "runuser", "-u", user.name, "--", "env", "-i", f"--chdir={user.home}", *user.environ(), *argv]

    def run(
        self,
        argv: Sequence[str],
        user: Person | None = None,
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            self.enter(argv, user),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            umask=UMASK,
        )
        if check and done.returncode != 0:
            who = user.name if user else "root"
            raise AssertionError(f"{' '.join(argv)} (as {who}) exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def popen(self, argv: Sequence[str], user: Person | None = None) -> subprocess.Popen:
        """A process inside that the test talks to (stdin, stdout and stderr are pipes, text)."""
        return subprocess.Popen(
            self.enter(argv, user),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            umask=UMASK,
            start_new_session=True,  # its own process group: see stop()
        )

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """Ends a ``popen`` process and what nsenter started for it: killing nsenter alone would leave the
        command running inside, holding the pipes open."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()

    def write(self, path: str, text: str, mode: int = 0o644, owner: Person | None = None, mkdir: bool = False) -> None:
        """Writes a file inside (through the container's root as PID 1 sees it)."""
        target = Path(f"/proc/{self.pid1}/root") / path.lstrip("/")
        if mkdir:
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chmod(target, mode)
        if owner is not None:
            os.chown(target, owner.uid, owner.gid)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Powers it off and waits for nspawn; kills what is left if that takes too long. Raises if any process
        of the container's PID namespace survives."""
        try:
            if self.nspawn is None or self.nspawn.poll() is not None:
                return
            subprocess.run(self.enter(["systemctl", "poweroff", "--no-block"]), capture_output=True, timeout=30)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)  # the kernel then ends every process of its PID namespace
                self.nspawn.wait(10)
                raise AssertionError(
                    f"the container did not power off within {timeout:g} s: {self._log_tail()}"
                ) from None
        finally:
            self._lock.close()
            left = self.leftovers()
            assert not left, f"processes of the container outlived it: {left}"

    def leftovers(self) -> list[str]:
        """Processes still in the container's PID namespace (none once it is down)."""
        if not self.pidns:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "pid") == self.pidns:
                        found.append(f"{entry.name} {_comm(int(entry.name))}")
        return found


@dataclass
class Person:
    """An unprivileged user in the container, with linger: their own systemd user manager runs."""

    name: str
    uid: int
    gid: int = 100  # "users": uid != gid, as for most people

    @property
    def home(self) -> str:
        return f"/home/{self.name}"

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"

    def environ(self, path: str = "/opt/convocations/bin:/usr/bin:/bin") -> list[str]:
        return [
            f"HOME={self.home}",
            f"USER={self.name}",
            f"LOGNAME={self.name}",
            f"PATH={path}",
            "LANG=C.UTF-8",
            f"XDG_RUNTIME_DIR={self.runtime_dir}",
            f"DBUS_SESSION_BUS_ADDRESS=unix:path={self.runtime_dir}/bus",
        ]


def _end_with_parent() -> None:
    """In nspawn before exec: a test run killed outright still powers the container off (nspawn turns SIGTERM
    into a shutdown request to the container's init)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
