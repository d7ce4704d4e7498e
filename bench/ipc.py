"""2. IPC round trip: sequential `status` calls on one connection, against ssh-agent with the same harness,
with a key stored, every process pinned to one core (bench/__main__)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from . import rawclient
from .common import cleanup_tmp, percentile, short_tmp, start_daemon, store_key, track
from .report import Section

TARGET_RATIO = 0.7
COUNTS = {"smoke": (1, 0.2, 50), "check": (7, 0.5, 2000), "full": (15, 0.5, 2000)}  # rounds, s a round, warm-up


def start_ssh_agent(path: str) -> subprocess.Popen:
    agent = shutil.which("ssh-agent")
    if agent is None:
        raise RuntimeError("ssh-agent is not installed (Debian: openssh-client)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    proc = track(
        subprocess.Popen([agent, "-D", "-a", path], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            rawclient.connect(path).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ssh-agent did not start") from None
            time.sleep(0.01)


CLIENTS = {
    "raw": "raw socket loop (`recv` until one reply is complete)",
    "readline": 'plain blocking client (`sock.makefile("rb").readline()`)',
}


def _one_run(client: str, sock, t: rawclient.Target, seconds: float) -> rawclient.Run:
    if client == "raw":
        return rawclient.run(sock, t.request, t.reply_length, duration=seconds)
    return rawclient.run_buffered(sock, t.request, t.read_reply, duration=seconds)


def measure(
    targets: list[rawclient.Target], *, rounds: int, seconds: float, warmup: int
) -> dict[tuple[str, str], list[rawclient.Run]]:
    """Interleaved rounds (a, b, a, b, ...) so that drift in the machine's load hits both alike, for each
    client in turn; keyed by (client, server)."""
    socks = {t.name: rawclient.connect(t.path) for t in targets}
    try:
        for t in targets:
            first = rawclient.call(socks[t.name], t.request, t.reply_length)
            if t.reply_length is rawclient.ssh_agent_reply and first[4] != rawclient.SSH_AGENT_IDENTITIES_ANSWER:
                raise RuntimeError(f"ssh-agent answered message type {first[4]}")
            rawclient.run(socks[t.name], t.request, t.reply_length, duration=10, max_count=warmup)
        runs: dict[tuple[str, str], list[rawclient.Run]] = {(c, t.name): [] for c in CLIENTS for t in targets}
        for client in CLIENTS:
            for _ in range(rounds):
                for t in targets:
                    runs[client, t.name].append(_one_run(client, socks[t.name], t, seconds))
        return runs
    finally:
        for s in socks.values():
            s.close()


def run(mode: str) -> Section:
    sec = Section("IPC round trip: sequential `status` on one connection vs ssh-agent")
    tmp = short_tmp()
    agent = daemon = None
    try:
        agent_path = str(tmp / "agent.sock")
        agent = start_ssh_agent(agent_path)
        daemon = start_daemon(tmp)
        store_key(daemon)  # as a person who uses convctl has: `status` then carries the account too
        targets = [
            rawclient.Target(
                "ssh-agent",
                agent_path,
                rawclient.SSH_AGENTC_REQUEST_IDENTITIES,
                rawclient.ssh_agent_reply,
                rawclient.read_ssh_agent,
            ),
            rawclient.Target(
                "convocationsd", str(daemon.socket), rawclient.STATUS_REQUEST, rawclient.line_reply, rawclient.read_line
            ),
        ]
        rounds, seconds, warmup = COUNTS[mode]
        runs = measure(targets, rounds=rounds, seconds=seconds, warmup=warmup)
        reply = rawclient.call(rawclient.connect(str(daemon.socket)), rawclient.STATUS_REQUEST, rawclient.line_reply)
        rows, ratios = [], []
        for client in CLIENTS:
            rate = {}
            for t in targets:
                rs = runs[client, t.name]
                lat = [x for r in rs for x in r.latencies]
                rates = sorted(r.rate for r in rs)
                rate[t.name] = rates[len(rates) // 2]
                rows.append(
                    [
                        client,
                        t.name,
                        f"{rate[t.name]:,.0f}",
                        f"{rates[0]:,.0f} - {rates[-1]:,.0f}",
                        f"{percentile(lat, 50) * 1e6:.1f}",
                        f"{percentile(lat, 99) * 1e6:.1f}",
                        f"{len(lat):,}",
                    ]
                )
            # Each round of the daemon is compared with the ssh-agent round just before it: the machine's load
            # drifts (other people's tests), and a ratio of neighbours cancels most of it.
            pair = sorted(
                d.rate / a.rate for a, d in zip(runs[client, "ssh-agent"], runs[client, "convocationsd"], strict=True)
            )
            ratio = pair[len(pair) // 2]
            ratios.append(f"{client}: **{ratio:.2f}** (per-round ratios from {pair[0]:.2f} to {pair[-1]:.2f})")
            sec.check(
                f"IPC `status` rate vs ssh-agent, {CLIENTS[client]}",
                f"{rate['convocationsd']:,.0f} vs {rate['ssh-agent']:,.0f} req/s, ratio {ratio:.2f}x",
                f">= {TARGET_RATIO}x",
                ratio >= TARGET_RATIO,
            )
        sec.body.append(
            f"Two blocking clients (bench/rawclient.py), each the same for both servers: the {CLIENTS['raw']}, and "
            f"a {CLIENTS['readline']}; both send one request, read one reply, repeat on one connection. Per client, "
            f"{rounds} interleaved rounds of {seconds} s per server after {warmup} warm-up calls; rate = median "
            f"round; the ratio is the median of the {rounds} per-round ratios (each daemon round against the "
            f"ssh-agent round just before it). ssh-agent gets SSH_AGENTC_REQUEST_IDENTITIES (no keys loaded: a "
            f"9-byte answer); convocationsd gets `status` with a key stored (a {len(reply)}-byte answer)."
        )
        sec.body.append("")
        sec.table(
            ["client", "server", "req/s (median round)", "range over rounds", "p50 µs", "p99 µs", "requests"], rows
        )
        sec.body.append("Ratio convocationsd / ssh-agent: " + "; ".join(ratios))
    finally:
        if daemon is not None:
            daemon.stop()
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(5)
        cleanup_tmp(tmp)
    return sec
