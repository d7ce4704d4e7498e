"""The service's sandbox under a real user manager: what `convctl service install` decides, what systemd then
enforces (seen from inside with tests/service/sandbox_probe.py and from outside in /proc), and the exposure
`systemd-analyze --user security` reports. docs/service.md keeps the numbers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from convocationsd.testing.fake_openrouter import fingerprint
from tests.service.conftest import VENV, Desk, FakeOpenRouter, spare_port

pytestmark = pytest.mark.needs_root

SERVICE = "convocationsd.service"
SANDBOX = "convocationsd.service.d/sandbox.conf"
# What the service runs as, not how: the trial keeps every sandbox and hardening line of the unit.
NOT_SANDBOX = ("Type", "ExecStart", "ExecReload", "Sockets", "Restart", "RestartSec", "TimeoutStopSec")


def exposure(person: Desk) -> float:
    out = person.run("systemd-analyze", "--user", "security", SERVICE, "--no-pager").stdout
    found = re.search(r"Overall exposure level for convocationsd\.service: (\d+\.\d)", out)
    assert found, out
    return float(found.group(1))


def probe_with_the_units_settings(person: Desk) -> dict:
    """sandbox_probe.py run as a transient unit with every [Service] setting of the installed service
    (unit and drop-ins, as `systemctl --user cat` shows them)."""
    text = person.systemctl("cat", SERVICE).stdout
    props, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#") and line.split("=", 1)[0] not in NOT_SANDBOX:
            props.append(f"--property={line}")
    person.box.run(["touch", "/tmp/left-by-the-test"])
    out = person.run(
        "systemd-run", "--user", "--wait", "--pipe", "--quiet", *props, "--",
        "python3", f"{person.box.SHARED}/sandbox_probe.py",
        "--writable", f"{person.who.home}/.config/convocations", "--host-tmp", "/tmp/left-by-the-test",
    ).stdout  # fmt: skip
    return json.loads(out)


def test_the_sandbox_is_installed_enforced_and_scored(person: Desk):
    out = person.install_service(spare_port())
    assert "sandbox: on (a trial unit ran in its own user namespace)" in out
    assert person.run("test", "-f", f"{person.who.home}/.config/systemd/user/{SANDBOX}", check=False).returncode == 0
    score = exposure(person)
    assert score <= 4.5, score

    seen = probe_with_the_units_settings(person)
    restricted = {name for name, value in seen.items() if value is True}
    assert restricted >= {
        "user_namespace",  # PrivateUsers=yes
        "capability_bounding_set_empty",  # CapabilityBoundingSet=
        "root_read_only",  # ProtectSystem=strict
        "home_read_only",  # ProtectHome=read-only
        "writable_folder_writable",  # ConfigurationDirectory=: the one folder the daemon writes
        "host_tmp_hidden",  # PrivateTmp=yes
        "no_new_privileges",
        "user_namespace_creation_denied",  # RestrictNamespaces=yes
        "personality_change_denied",  # LockPersonality=yes
        "wx_memory_denied",  # MemoryDenyWriteExecute=yes
        "chown_denied",  # SystemCallFilter=~@privileged
        "setuid_bit_denied",  # RestrictSUIDSGID=yes
        "core_dumps_off",  # LimitCORE=0
    }, seen
    assert seen["umask"] == "0o77"
    host_devices = len(person.box.run(["ls", "/dev"]).stdout.split())
    assert seen["devices"] < host_devices  # PrivateDevices=yes

    # The daemon itself, seen from outside: the same sandbox around the process systemd started.
    pid = json.loads(person.convctl("status", "--json", check=False).stdout)["pid"]
    proc = person.run("cat", f"/proc/{pid}/status").stdout
    fields = dict(line.split(":\t", 1) for line in proc.splitlines() if ":\t" in line)
    assert (fields["NoNewPrivs"].strip(), fields["Seccomp"].strip(), int(fields["CapBnd"], 16)) == ("1", "2", 0)
    mine = person.run("readlink", "/proc/self/ns/user", "/proc/self/ns/mnt").stdout.split()
    its = person.run("readlink", f"/proc/{pid}/ns/user", f"/proc/{pid}/ns/mnt").stdout.split()
    assert not set(mine) & set(its)  # its own user and mount namespaces


def test_the_keyring_backend_works_in_the_sandbox(person: Desk, fake: FakeOpenRouter):
    """A desktop person's key goes to their Secret Service over the session bus, from inside the sandbox."""
    person.unlock_keyring()
    assert "sandbox: on" in person.install_service(spare_port(), openrouter_url=fake.url)
    person.login()
    answer = json.loads(person.convctl("status", "--json").stdout)
    assert answer["secret"] == {"stored": True, "backend": "keyring"}
    key = person.convctl("exec", "--", "sh", "-c", 'printf %s "$OPENROUTER_API_KEY"').stdout
    assert fingerprint(key) == fake.state()["issued_keys"][0]["fingerprint"]
    config = person.run("cat", f"{person.who.home}/.config/convocations/config.toml").stdout
    assert 'backend = "keyring"' in config and key not in config


TEMPLATES = "from convocationsd.cli.service_install import TEMPLATES; print(TEMPLATES)"


def test_where_user_namespaces_are_refused_the_service_runs_without_the_sandbox(new_person: Callable[..., Desk]):
    person = new_person(user_namespaces=False)
    out = person.install_service(spare_port())
    assert "sandbox: off, this user manager cannot apply it (" in out and "status=217" in out, out
    drop_in = f"{person.who.home}/.config/systemd/user/{SANDBOX}"
    assert person.run("test", "-e", drop_in, check=False).returncode == 1
    answer = json.loads(person.convctl("status", "--json", check=False).stdout)  # exit 1: no key stored yet
    assert answer["pid"] == int(person.show(SERVICE, "MainPID")["MainPID"])
    assert 6.0 <= exposure(person) <= 6.5  # the seccomp hardening alone

    # The trial is what keeps the service starting here: with the drop-in, it would not.
    person.systemctl("stop", SERVICE)
    person.run("mkdir", "-p", drop_in.rsplit("/", 1)[0])
    templates = person.run(f"{VENV}/bin/python", "-c", TEMPLATES).stdout.strip()  # package data, in the wheel
    person.run("cp", f"{templates}/systemd/{SANDBOX}", drop_in)
    person.systemctl("daemon-reload")
    assert person.systemctl("start", SERVICE, check=False).returncode != 0
    assert person.show(SERVICE, "ExecMainStatus")["ExecMainStatus"] == "217"  # "Failed to set up user namespacing"
