"""5. Footprint: start-up time to READY, idle RSS, RSS over 1,000 flows; socket activation with idle exit."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from convocationsd.common.interpreter import module_command
from convocationsd.store.helper import LINGER

from . import rawclient
from .common import (
    BIN,
    PY,
    ROOT,
    cleanup_tmp,
    daemon_env,
    free_port,
    median,
    rss_kb,
    settle,
    short_tmp,
    start_daemon,
    track,
)
from .flows import FlowDriver, TimedFake
from .report import Section

IDLE_RSS_MB = 25.0  # having answered `status` and `subscribe`, before any login
RSS_AFTER_LOGINS_MB = 40.0
LEAK_KB = 1024  # growth allowed from the checkpoint after warm-up (login 100) to the end
ACTIVATION_S = 1.0
IDLE_EXIT_S = 1.0


def _bare_start_time(runs: int) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([PY, "-c", "pass"], check=True)
        ts.append(time.perf_counter() - t)
    return median(ts)


async def _flows_rss(smoke: bool, sec: Section) -> None:
    total, warm = (10, 5) if smoke else (1000, 100)
    checkpoints = sorted({warm, total // 4, total // 2, 3 * total // 4, total})
    tmp = short_tmp()
    daemon = None
    async with TimedFake() as fake:
        try:
            daemon = await asyncio.to_thread(start_daemon, tmp, openrouter_url=fake.url)
            idle0 = await _after_first_contact(daemon)
            driver = FlowDriver(daemon, fake)
            points = [("idle after start-up, `status` and `subscribe` answered", 0, idle0)]
            t = time.monotonic()
            for i in range(1, total + 1):
                await driver.flow(None)
                if i in checkpoints:
                    await asyncio.sleep(settle(0.3, smoke))
                    points.append((f"after {i} flows", i, daemon.rss_kb()))
            elapsed = time.monotonic() - t
            driver.check_all_succeeded(min(total, 50))
            driver.close()
            await asyncio.sleep(settle(1.0, smoke))
            idle_end = daemon.rss_kb()
            helper = sum(rss_kb(pid) for pid in _children(daemon.pid))  # the secret-store helper, lingering
            points.append((f"idle, 1 s after {total} flows", total, idle_end))
            await asyncio.to_thread(daemon.stop)
            # The same config, now with a key: `status` refreshes the account in the background, which loads
            # aiohttp's client and runs the secret-store helper once to read the key.
            daemon = await asyncio.to_thread(start_daemon, tmp, openrouter_url=fake.url)
            linked = await _after_first_contact(daemon, account=True)
            points.append(("a new daemon with the key stored: `status` and `subscribe` answered", -1, linked))
        finally:
            if daemon is not None:
                await asyncio.to_thread(daemon.stop)
            cleanup_tmp(tmp)
    sec.body.append(
        f"One daemon, {total} complete logins in a row against the fake ({elapsed:.1f} s, "
        f"{total / elapsed:.0f} flows/s), no subscribers. VmRSS from /proc/<pid>/status:"
    )
    sec.body.append("")
    sec.table(["when", "VmRSS MB"], [[label, f"{kb / 1024:.1f}"] for label, _, kb in points])
    after_warm = next(kb for _, n, kb in points if n == warm)
    growth = idle_end - after_warm
    sec.check(
        "idle RSS, `status` and `subscribe` answered, no login yet",
        f"{idle0 / 1024:.1f} MB",
        f"<= {IDLE_RSS_MB:.0f} MB",
        idle0 / 1024 <= IDLE_RSS_MB,
    )
    sec.check(
        f"idle RSS after {total} logins",
        f"{idle_end / 1024:.1f} MB",
        f"<= {RSS_AFTER_LOGINS_MB:.0f} MB",
        idle_end / 1024 <= RSS_AFTER_LOGINS_MB,
    )
    sec.body.append(
        f"Besides the daemon, 1 s after the last login: its secret-store helper, which it lets go {LINGER:g} s "
        f"after the last call, {helper / 1024:.1f} MB (VmRSS of the daemon's child processes)."
    )
    sec.body.append("")
    sec.check(
        "idle RSS, key stored, `status` and `subscribe` answered",
        f"{linked / 1024:.1f} MB",
        "reported",
        None,
    )
    sec.check(
        f"flat: RSS growth from login {warm} to login {total}",
        f"{growth:+d} KB ({growth * 1024 / max(total - warm, 1):+.0f} B/flow)",
        f"<= {LEAK_KB} KB",
        growth <= LEAK_KB,
    )


async def _after_first_contact(daemon, *, account: bool = False) -> int:
    """A frontend's first contact: it subscribes and asks for the status, then goes away (so that the events
    of many logins do not pile up for a reader that does not read). With ``account``, it asks again until the
    status shows the account (the background refresh is done). The daemon's RSS 1 s later, in KB."""
    frontend = rawclient.connect(str(daemon.socket))
    for method in ("subscribe", "status"):
        request = f'{{"jsonrpc":"2.0","id":1,"method":"{method}"}}\n'.encode()
        rawclient.call(frontend, request, rawclient.line_reply)
    deadline = time.monotonic() + 20
    while account and b'"account":null' in rawclient.call(frontend, rawclient.STATUS_REQUEST, rawclient.line_reply):
        if time.monotonic() > deadline:
            raise RuntimeError("the account status did not arrive within 20 s")
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    rss = daemon.rss_kb()
    frontend.close()
    return rss


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _daemon_pids(marker: str) -> list[int]:
    """Processes running convocationsd whose environment mentions ``marker`` (our private directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"convocationsd" not in cmd or cmd.split(b"\0", 1)[0].endswith(b"systemd-socket-activate"):
                continue  # the tool waiting for a connection is the .socket unit's part, not a daemon
            if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def _activation(smoke: bool, sec: Section) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        sec.body.append("systemd-socket-activate is not installed (Debian: systemd); activation not measured.")
        sec.check("socket activation", "not measured", "-", None)
        return
    tmp = short_tmp()
    port = free_port()
    env = daemon_env(tmp, RCONV_HTTP_PORT=str(port), CONVOCATIONS_IDLE_EXIT_SECONDS=str(IDLE_EXIT_S))
    sock_path = env["CONVOCATIONS_SOCKET"]
    (tmp / "run").mkdir(mode=0o700, parents=True)
    passed = [f"-E{k}" for k in env]  # the tool gives its child only what -E names
    cmd = [
        tool,
        "-l",
        sock_path,
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=ctl:http",
        *passed,
        *module_command(PY, "convocationsd"),
        "--log-level",
        "info",
    ]
    log = open(tmp / "activation.log", "wb")
    convctl = str(BIN / "convctl")
    cycles = 1 if smoke else 3
    rows, firsts, idle_counts, problems = [], [], [], []
    tool_proc = None
    try:
        for cycle in range(1, cycles + 2):
            # Like a systemd .socket unit: the listening sockets exist while no daemon runs.
            Path(sock_path).unlink(missing_ok=True)  # so that the check below sees the new tool's socket
            tool_proc = track(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT)))
            deadline = time.monotonic() + 10
            while not os.path.exists(sock_path) or not _listening(sock_path):
                if time.monotonic() > deadline or tool_proc.poll() is not None:
                    raise RuntimeError("systemd-socket-activate did not listen")
                time.sleep(0.02)
            idle_counts.append(len(_daemon_pids(str(tmp))))
            if cycle > cycles:
                break
            t = time.perf_counter()
            done = subprocess.run([convctl, "status"], env=env, capture_output=True, text=True, timeout=30)
            first = time.perf_counter() - t
            if done.returncode not in (0, 1):  # 1: the daemon answered that no key is stored
                problems.append(f"cycle {cycle}: convctl status exit {done.returncode}: {done.stderr.strip()}")
            firsts.append(first)
            running = len(_daemon_pids(str(tmp)))
            t_idle = time.monotonic()
            try:
                tool_proc.wait(IDLE_EXIT_S * 4 + 10)
                exited = time.monotonic() - t_idle
            except subprocess.TimeoutExpired:
                exited = None
            rows.append(
                [
                    str(cycle),
                    f"{first * 1000:.0f}",
                    str(running),
                    f"{exited:.2f}" if exited is not None else "did not exit",
                    str(tool_proc.returncode) if exited is not None else "-",
                ]
            )
            if exited is None:
                problems.append(f"cycle {cycle}: the daemon did not exit after {IDLE_EXIT_S:g} s idle")
                break
    finally:
        if tool_proc is not None and tool_proc.poll() is None:
            tool_proc.send_signal(signal.SIGTERM)
            try:
                tool_proc.wait(10)
            except subprocess.TimeoutExpired:
                tool_proc.kill()
                tool_proc.wait()
        log.close()
        log_text = (tmp / "activation.log").read_text(errors="replace")
        cleanup_tmp(tmp)
    sec.body.append(
        f"`systemd-socket-activate -l <socket> -l 127.0.0.1:{port} --fdname=ctl:http ... python -m convocationsd` "
        f"with CONVOCATIONS_IDLE_EXIT_SECONDS={IDLE_EXIT_S:g}. The tool execs the daemon on the first connection and "
        "is gone when the daemon exits, so the bench starts it again each time, as a systemd .socket unit would "
        "keep listening. Each cycle: count daemon processes while idle, time the first `convctl status` (it "
        "connects to the waiting socket, the daemon starts and answers), then wait for the idle exit."
    )
    sec.body.append("")
    sec.table(["cycle", "first `convctl status` ms", "daemons while serving", "exit after s", "exit code"], rows)
    sec.body.append(f"Daemon processes counted while only the sockets were listening: {idle_counts}")
    if problems:
        sec.body += [
            "",
            "Problems:",
            *[f"- {p}" for p in problems],
            "",
            "Daemon log (last lines):",
            "",
            "```",
            *log_text.splitlines()[-15:],
            "```",
        ]
    sec.check(
        "daemon processes while idle (socket-activated)",
        str(max(idle_counts) if idle_counts else "-"),
        "0",
        bool(idle_counts) and max(idle_counts) == 0 and not any("did not exit" in p for p in problems),
    )
    later = firsts[1:] or firsts
    sec.check(
        "first `convctl status` after an idle exit",
        f"{max(later) * 1000:.0f} ms (worst of {len(later)})" if later else "-",
        f"<= {ACTIVATION_S * 1000:.0f} ms",
        bool(later) and max(later) <= ACTIVATION_S and not problems,
    )


def _listening(path: str) -> bool:
    # A connect would start the daemon: only check that the tool has bound the socket file.
    return os.path.exists(path) and Path(path).is_socket()


def run(mode: str) -> Section:
    smoke = mode == "smoke"  # the check runs the whole section: its target rows need the 1,000 logins
    sec = Section("Footprint: start-up, idle memory, memory over many flows, socket activation")
    t0 = time.monotonic()
    starts = []
    for _ in range(1 if smoke else 5):
        tmp = short_tmp()
        d = start_daemon(tmp)
        starts.append(d.startup)
        d.stop()
        cleanup_tmp(tmp)
    bare = _bare_start_time(1 if smoke else 5)
    sec.body.append(
        f"Start-up to READY=1 (spawn of `python -m convocationsd` to the sd_notify datagram on a "
        f"NOTIFY_SOCKET made by the bench), median of {len(starts)}: **{median(starts) * 1000:.0f} ms** "
        f"(all: {', '.join(f'{s * 1000:.0f}' for s in starts)}). Reference in the same run: "
        f"`python -c pass` takes {bare * 1000:.0f} ms (section 8 has the first answer after socket activation)."
    )
    sec.body.append("")
    sec.check(
        "start-up to READY",
        f"{median(starts) * 1000:.0f} ms (`python -c pass`: {bare * 1000:.0f} ms)",
        "reported (no target)",
        None,
    )
    asyncio.run(_flows_rss(smoke, sec))
    sec.body.append("")
    _activation(smoke, sec)
    sec.seconds = time.monotonic() - t0
    return sec
