"""Who listens on a TCP port: the program a person must stop to free it (doctor, and the daemon when the
port it was told to use is busy). /proc on Linux, ``lsof`` elsewhere when present."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from convocationsd.common import proc_net


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
    if sys.platform.startswith("linux") and proc_net.available():
        return proc_listeners(port)
    return lsof_listeners(port)


def covers(listener: Listener, address: str) -> bool:
    """Whether ``listener`` holds the port on ``address`` (a wildcard listener holds it everywhere)."""
    if listener.address == address:
        return True
    if address == "127.0.0.1":
        return listener.address in ("0.0.0.0", "::", "::ffff:0.0.0.0")
    return listener.address == "::"


def holders(port: int, addresses: tuple[str, ...] = ("127.0.0.1", "::1")) -> list[Listener] | None:
    """The listeners on ``port`` that cover any of ``addresses``; None when this system cannot say."""
    found = listeners(port)
    if found is None:
        return None
    return [entry for entry in found if any(covers(entry, address) for address in addresses)]
