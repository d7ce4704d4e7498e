"""What a sandbox lets a process do, seen from inside: run as a service with the unit's settings, prints JSON.

Each entry is an observation that a hardening directive changes (true = restricted), so a test or a person
can tell which directives a user manager really enforces rather than which ones it accepts. Standard
library only (run with Debian's python3). ``--writable DIR`` names the folder the service must be able to
write (the daemon's config folder); ``--host-tmp FILE`` a file the test left in the host's /tmp.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import mmap
import os
import resource
import socket
import tempfile

CLONE_NEWUSER = 0x10000000
PER_LINUX32 = 0x0008
libc = ctypes.CDLL(None, use_errno=True)


def status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def read_only(path: str) -> bool | None:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return None


def denied(call) -> bool:
    """Whether ``call`` fails with EPERM/EACCES (a seccomp filter answers EPERM under the units)."""
    try:
        call()
    except PermissionError:
        return True
    except OSError as e:
        return e.errno in (errno.EPERM, errno.EACCES)
    return False


def in_child(check) -> bool:
    """``check()`` in a forked child, for checks that would change this process (entering a namespace)."""
    pid = os.fork()
    if pid == 0:
        os._exit(1 if check() else 0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 1


def session_keyring() -> int:
    """The session keyring's serial (keyctl(2) KEYCTL_GET_KEYRING_ID), or -errno."""
    keyctl = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
    if keyctl is None:
        return 0
    serial = libc.syscall(keyctl, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, don't create
    return serial if serial >= 0 else -ctypes.get_errno()


def socket_error(family: int, kind: int) -> str:
    """The errno a new socket of this family fails with ("allowed" if it does not)."""
    try:
        socket.socket(family, kind).close()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "allowed"


def libc_denied(result: int) -> bool:
    return result != 0 and ctypes.get_errno() in (errno.EPERM, errno.EACCES)


def can_write(folder: str) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def loopback_blocked() -> bool:
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.settimeout(2)
        try:
            client.connect(server.getsockname())
        except OSError:
            return True
    return False


def personality_denied() -> bool:
    previous = libc.personality(PER_LINUX32)
    if previous == -1:
        return ctypes.get_errno() in (errno.EPERM, errno.EACCES)
    libc.personality(previous)
    return False


def wx_memory_denied() -> bool:
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    except OSError:
        return True
    return False


def probe(writable: str | None, host_tmp: str | None) -> dict[str, object]:
    scratch = tempfile.mkstemp(dir=writable or None)[1] if writable else None
    with open("/proc/self/uid_map") as f:
        uid_map = f.read().split()
    found: dict[str, object] = {
        "user_namespace": uid_map[:3] != ["0", "0", "4294967295"],
        "no_new_privileges": status_field("NoNewPrivs") == "1",
        "seccomp_filters": int(status_field("Seccomp_filters") or 0),
        "capability_bounding_set_empty": int(status_field("CapBnd") or "0", 16) == 0,
        "root_read_only": read_only("/"),
        "home_read_only": read_only(os.path.expanduser("~")),
        "writable_folder_writable": can_write(writable) if writable else None,
        "host_tmp_hidden": not os.path.exists(host_tmp) if host_tmp else None,
        "proc_sys_read_only": read_only("/proc/sys") if os.path.exists("/proc/sys") else "absent",
        "cgroup_read_only": read_only("/sys/fs/cgroup/systemd") or read_only("/sys/fs/cgroup"),
        "other_users_processes_hidden": not os.path.exists("/proc/1"),
        "proc_subset_pid": not os.path.exists("/proc/sys"),
        "user_namespace_creation_denied": in_child(lambda: libc_denied(libc.unshare(CLONE_NEWUSER))),
        "personality_change_denied": personality_denied(),
        "wx_memory_denied": wx_memory_denied(),
        "alg_socket": socket_error(socket.AF_ALG, socket.SOCK_SEQPACKET),
        "loopback_connect_blocked": loopback_blocked(),
        "setpriority_denied": denied(lambda: os.setpriority(os.PRIO_PROCESS, 0, 1)),
        "chown_denied": denied(lambda: os.chown(scratch, os.getuid(), os.getgid())) if scratch else None,
        "setuid_bit_denied": denied(lambda: os.chmod(scratch, 0o4700)) if scratch else None,
        "core_dumps_off": resource.getrlimit(resource.RLIMIT_CORE) == (0, 0),
        "umask": oct(os.umask(0o077)),
        "devices": len(os.listdir("/dev")),
        "session_keyring": session_keyring(),
        "namespaces": {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "mnt", "uts", "ipc", "net")},
    }
    if scratch:
        os.unlink(scratch)
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--writable")
    parser.add_argument("--host-tmp")
    args = parser.parse_args()
    print(json.dumps(probe(args.writable, args.host_tmp)), flush=True)
