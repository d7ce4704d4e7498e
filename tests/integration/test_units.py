"""The shipped unit files and LaunchAgent: systemd's own verifier on the units (as shipped and as the
installer renders them for this interpreter), and the plist parsed with plistlib (plutil is macOS-only)."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convocationsd.cli import service_install as si

ROOT = Path(__file__).resolve().parents[2]
UNITS = si.TEMPLATES / "systemd"
PLIST = si.TEMPLATES / "launchd" / "io.convocations.convocationsd.plist"
ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values; unit files repeat keys (ListenStream=), which configparser cannot hold."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def verify(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    runtime = tmp_path / "runtime"  # verify resolves %t from XDG_RUNTIME_DIR even without a user manager
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    units = [str(folder / name) for name in si.UNITS]
    return subprocess.run([ANALYZE, "--user", "verify", *units], env=env, capture_output=True, text=True, timeout=60)


def _cannot_verify() -> str | None:
    if ANALYZE is None:
        return "systemd-analyze is not installed"
    if not os.access("/tmp", os.W_OK):  # systemd 252 does not look at TMPDIR there
        return "systemd-analyze verify makes its working directory in /tmp, which is not writable here"
    return None


CANNOT_VERIFY = _cannot_verify()
needs_analyze = pytest.mark.skipif(CANNOT_VERIFY is not None, reason=CANNOT_VERIFY or "")


@needs_analyze
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="the shipped ExecStart names /usr/bin/python3")
def test_shipped_units_verify(tmp_path):
    done = verify(UNITS, tmp_path)
    # verify exits 0 on unknown keys and bad values, only warning about them: any output is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_rendered_units_verify(tmp_path):
    """What `convctl service install` writes, with this interpreter (verify checks ExecStart exists)."""
    folder = tmp_path / "units"
    folder.mkdir()
    for name, text in si.render_units(sys.executable, http_port=3999, socket_path=tmp_path / "a 100%.sock").items():
        (folder / name).write_text(text)
    (folder / si.SANDBOX).parent.mkdir()
    (folder / si.SANDBOX).write_text(si.render_sandbox())  # verify reads the drop-in with the service
    done = verify(folder, tmp_path)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path):
    """Guards the two tests above against a verifier that accepts anything."""
    folder = tmp_path / "units"
    folder.mkdir()
    for name, text in si.render_units(sys.executable).items():
        (folder / name).write_text(text.replace("BindIPv6Only=ipv6-only", "BindIPv6Only=sometimes"))
    done = verify(folder, tmp_path)
    assert "ignoring: sometimes" in done.stdout + done.stderr


def test_ipc_socket_unit():
    unit = parse_unit((UNITS / "convocationsd.socket").read_text())
    sock = unit["Socket"]
    assert sock["ListenStream"] == ["%t/convocations/convocationsd.sock"]
    assert sock["SocketMode"] == ["0600"] and sock["DirectoryMode"] == ["0700"]
    assert sock["FileDescriptorName"] == ["ctl"] and sock["Service"] == ["convocationsd.service"]
    assert unit["Install"]["WantedBy"] == ["sockets.target"]


def test_http_socket_unit():
    unit = parse_unit((UNITS / "convocationsd-http.socket").read_text())
    sock = unit["Socket"]
    assert sock["ListenStream"] == ["127.0.0.1:3000", "[::1]:3000"]
    assert sock["BindIPv6Only"] == ["ipv6-only"]
    assert sock["FileDescriptorName"] == ["http"] and sock["Service"] == ["convocationsd.service"]
    assert "ReusePort" not in sock  # the contract: never SO_REUSEPORT


def test_service_unit():
    unit = parse_unit((UNITS / "convocationsd.service").read_text())
    service, deps = unit["Service"], unit["Unit"]
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == ["/usr/bin/python3 -P -m convocationsd"]
    assert service["Restart"] == ["on-failure"] and service["UMask"] == ["0077"]
    assert deps["Requires"] == ["convocationsd.socket"]
    # Port 3000 may be taken: the HTTP socket failing must not keep the daemon from starting.
    assert deps["Wants"] == ["convocationsd-http.socket"]
    assert "convocationsd-http.socket" not in " ".join(deps["Requires"])
    assert service["NoNewPrivileges"] == ["yes"]
    # AF_NETLINK: proc_net.diag_uid (sock_diag), the HTTP same-user check's fast path.
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    # Mount-namespace hardening would need PrivateUsers=yes in a user unit (see the comment in the unit).
    assert "PrivateUsers" not in service and "ProtectSystem" not in service


def test_sandbox_holds_only_what_a_user_manager_enforces():
    """The drop-in that `convctl service install` adds where user namespaces work (tests/service shows each
    line enforced under a real user manager). These are accepted in user units and would lower
    `systemd-analyze security`'s score, but a user manager does not apply them: measured, docs/service.md."""
    sandbox = parse_unit((UNITS / si.SANDBOX).read_text())["Service"]
    assert sandbox["PrivateUsers"] == ["yes"] and sandbox["CapabilityBoundingSet"] == [""]
    assert sandbox["ProtectSystem"] == ["strict"] and sandbox["ProtectHome"] == ["read-only"]
    # The daemon writes config.toml and secret.key in the one folder the sandbox leaves writable.
    assert sandbox["ConfigurationDirectory"] == ["convocations"] and sandbox["ConfigurationDirectoryMode"] == ["0700"]
    not_applied = {"ProtectProc", "ProcSubset", "IPAddressDeny", "IPAddressAllow", "DevicePolicy", "DeviceAllow"}
    assert not not_applied & set(sandbox)
    assert "ProtectKernelLogs" not in sandbox  # fails the start under systemd-nspawn, where the tests run
    service = parse_unit((UNITS / "convocationsd.service").read_text())["Service"]
    assert not set(sandbox) & set(service)  # one place for each setting


def test_service_unit_allows_every_address_family_the_daemon_opens():
    """A family missing from RestrictAddressFamilies= fails only under the unit (EAFNOSUPPORT), where
    the daemon may quietly fall back (proc_net did, for every HTTP request): catch it here."""
    service = parse_unit((UNITS / "convocationsd.service").read_text())["Service"]
    allowed = set(service["RestrictAddressFamilies"][0].split())
    package = ROOT / "convocationsd"
    opened = {
        m.group(1)
        for path in package.rglob("*.py")
        if "testing" not in path.relative_to(package).parts
        for m in re.finditer(r"socket\.socket\(\s*socket\.(AF_\w+)", path.read_text())
    }
    assert "AF_NETLINK" in opened  # the scan finds what it should
    assert opened <= allowed, opened - allowed


def test_plist_template():
    plist = plistlib.loads(PLIST.read_bytes())
    assert plist["Label"] == "io.convocations.convocationsd"
    assert plist["ProgramArguments"] == ["@PYTHON@", "-P", "-m", "convocationsd"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Background"
    ctl, http = plist["Sockets"]["ctl"], plist["Sockets"]["http"]
    assert ctl["SockPathMode"] == 384 == 0o600
    assert ctl["SockPathName"] == "@SOCKET_PATH@"
    assert (http["SockNodeName"], http["SockServiceName"]) == ("localhost", "@HTTP_PORT@")
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == "@HOME@/Library/Logs/convocationsd.log"


def test_rendered_plist_has_absolute_paths_and_no_placeholders(tmp_path):
    data = si.render_plist(
        python=sys.executable, socket_path=tmp_path / "a&b" / "conv.sock", home=Path("/Users/ada"), http_port=3000
    )
    assert b"@" not in data.replace(b"-//Apple//DTD", b"")
    plist = plistlib.loads(data)
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["Sockets"]["ctl"]["SockPathName"] == str(tmp_path / "a&b" / "conv.sock")
    assert plist["Sockets"]["http"]["SockServiceName"] == "3000"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert plist[key] == "/Users/ada/Library/Logs/convocationsd.log"
