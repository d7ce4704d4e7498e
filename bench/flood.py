"""6. Under flood: `status` latency and a real login while junk HTTP requests and socket lines pour in."""

from __future__ import annotations

import asyncio
import json
import time

from . import rawclient
from .common import PY, ROOT, cleanup_tmp, median, percentile, short_tmp, start_daemon
from .flows import FlowDriver, Subscribers, TimedFake
from .report import Section

STATUS_P99 = 0.050


def _probe(path: str, seconds: float, interval: float) -> list[float]:
    """`status` on one connection every ``interval`` seconds for ``seconds``; returns each latency."""
    sock = rawclient.connect(path)
    out = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t = time.perf_counter()
            rawclient.call(sock, rawclient.STATUS_REQUEST, rawclient.line_reply)
            out.append(time.perf_counter() - t)
            time.sleep(interval)
    finally:
        sock.close()
    return out


async def run_async(smoke: bool) -> Section:
    sec = Section("Under flood: junk HTTP and junk socket lines for 10 s")
    seconds = 2.0 if smoke else 10.0
    tmp = short_tmp()
    daemon = None
    async with TimedFake() as fake:
        try:
            daemon = await asyncio.to_thread(start_daemon, tmp, openrouter_url=fake.url)
            driver = FlowDriver(daemon, fake)
            subs = await Subscribers.start(str(daemon.socket), 1)
            await driver.flow(subs)  # warm: the first login loads the crypto and HTTP client code
            quiet = await asyncio.to_thread(_probe, str(daemon.socket), 0.5 if smoke else 2.0, 0.005)
            flooder = await asyncio.create_subprocess_exec(
                PY,
                "-m",
                "bench.flooder",
                "--port",
                str(daemon.port),
                "--socket",
                str(daemon.socket),
                "--seconds",
                str(seconds),
                stdout=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
            )
            await asyncio.sleep(0.5)  # let the flood build up
            probe = asyncio.ensure_future(asyncio.to_thread(_probe, str(daemon.socket), seconds - 1.0, 0.005))
            await asyncio.sleep(min(2.0, seconds / 4))
            flow_error = None
            try:
                timing = await asyncio.wait_for(driver.flow(subs), 30)
            except Exception as e:  # reported, not raised: the section still has its other figures
                flow_error, timing = f"{type(e).__name__}: {e}", None
            loaded = await probe
            out, _ = await asyncio.wait_for(flooder.communicate(), seconds + 30)
            counts = json.loads(out.decode().strip().splitlines()[-1])
            alive = daemon.proc.poll() is None
            await subs.close()
            driver.close()
        finally:
            if daemon is not None:
                await asyncio.to_thread(daemon.stop)
            cleanup_tmp(tmp)
    flood_s = counts.get("seconds", seconds)
    sec.body.append(
        f"bench/flooder.py, a separate process, for {flood_s:.1f} s: 4 HTTP connections sending junk requests "
        "(unknown paths, callbacks with a made-up code and state, a foreign Host, a cross-site start, bytes that "
        "are not HTTP) and 4 socket connections writing junk lines in batches of 64 (not JSON, not UTF-8, unknown "
        "methods, wrong jsonrpc, bad params), each reading its answers and reconnecting when closed. Meanwhile the "
        "bench sends `status` every 5 ms on its own connection, and runs one real login with a subscriber."
    )
    sec.body.append("")
    sec.table(
        ["flood", "count", "per second"],
        [
            ["HTTP responses to junk", f"{counts['http_responses']:,}", f"{counts['http_responses'] / flood_s:,.0f}"],
            ["HTTP connections closed by the daemon", f"{counts['http_closed']:,}", ""],
            ["junk socket lines answered", f"{counts['ipc_replies']:,}", f"{counts['ipc_replies'] / flood_s:,.0f}"],
            ["socket connections closed", f"{counts['ipc_closed']:,}", ""],
        ],
    )
    sec.table(
        ["`status` latency", "calls", "p50 ms", "p99 ms", "max ms"],
        [
            [
                "quiet (before the flood)",
                str(len(quiet)),
                f"{median(quiet) * 1000:.2f}",
                f"{percentile(quiet, 99) * 1000:.2f}",
                f"{max(quiet) * 1000:.2f}",
            ],
            [
                "under flood",
                str(len(loaded)),
                f"{median(loaded) * 1000:.2f}",
                f"{percentile(loaded, 99) * 1000:.2f}",
                f"{max(loaded) * 1000:.2f}",
            ],
        ],
    )
    if timing is not None:
        sec.body.append(
            f"The real login under flood: callback -> 303 in {timing.response * 1000:.1f} ms, -> event at "
            f"the subscriber in {timing.event * 1000:.1f} ms."
        )
    else:
        sec.body.append(f"The real login under flood failed: {flow_error}")
    sec.body.append(f"Daemon still running afterwards: {alive}.")
    p99 = percentile(loaded, 99)
    sec.check("`status` p99 under flood", f"{p99 * 1000:.2f} ms", f"<= {STATUS_P99 * 1000:.0f} ms", p99 <= STATUS_P99)
    sec.check(
        "a real login completes under flood",
        "yes" if timing is not None and alive else f"no ({flow_error})",
        "completes",
        timing is not None and alive,
    )
    return sec


def run(smoke: bool) -> Section:
    return asyncio.run(run_async(smoke))  # bench/__main__ times the section
