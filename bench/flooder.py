"""Junk load for section 6 (``python -m bench.flooder``): loopback HTTP and Unix-socket junk, as fast as one
process can, for ``--seconds`` (then it stops by itself) and prints its counts as one JSON line.

Only 127.0.0.1 and the given Unix socket are touched; the number of connections is fixed (``--http`` and
``--ipc`` workers, each reconnecting when the daemon closes its connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

IPC_JUNK = [
    b"this is not json",
    b'{"jsonrpc":"2.0","id":1,"method":"no.such.method"}',
    b'{"jsonrpc":"1.0","id":2,"method":"status"}',
    b"[1,2,3]",
    b'{"jsonrpc":"2.0","id":3,"method":"oauth.start","params":{"restart":"yes"}}',
    b"\xff\xfe\xfd not utf-8",
    b'{"jsonrpc":"2.0","id":{"nested":true},"method":"status"}',
    b'{"jsonrpc":"2.0","id":4,"method":"secret.set","params":{}}',
]
BATCH = 64


def http_junk(port: int) -> list[bytes]:
    host = f"Host: localhost:{port}\r\n".encode()
    return [
        b"GET /no/such/page HTTP/1.1\r\n" + host + b"\r\n",
        b"GET /api/openrouter/oauth/callback?code=junk&state=junk HTTP/1.1\r\n" + host + b"\r\n",
        b"GET /api/status HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        b"POST /api/openrouter/oauth/start HTTP/1.1\r\n" + host + b"Origin: http://evil.example\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"\x16\x03\x01\x02\x00junk that is not HTTP\r\n\r\n",
    ]


async def _http_worker(port: int, deadline: float, counts: dict) -> None:
    junk = http_junk(port)
    i = 0
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["http_connect_errors"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while time.monotonic() < deadline:
                writer.write(junk[i % len(junk)])
                i += 1
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await asyncio.wait_for(reader.readexactly(length), 5)
                counts["http_responses"] += 1
                if b"connection: close" in head.lower():
                    break
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            counts["http_closed"] += 1
        finally:
            writer.close()


async def _ipc_worker(path: str, deadline: float, counts: dict) -> None:
    batch = b"".join(IPC_JUNK[i % len(IPC_JUNK)] + b"\n" for i in range(BATCH))
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=2**20)
        except OSError:
            counts["ipc_connect_errors"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while time.monotonic() < deadline:
                writer.write(batch)
                counts["ipc_lines_sent"] += BATCH
                for _ in range(BATCH):
                    await asyncio.wait_for(reader.readline(), 5)
                counts["ipc_replies"] += BATCH
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            counts["ipc_closed"] += 1
        finally:
            writer.close()


async def main_async(args: argparse.Namespace) -> dict:
    counts = dict.fromkeys(
        (
            "http_responses",
            "http_closed",
            "http_connect_errors",
            "ipc_lines_sent",
            "ipc_replies",
            "ipc_closed",
            "ipc_connect_errors",
        ),
        0,
    )
    start = time.monotonic()
    deadline = start + args.seconds
    workers = [_http_worker(args.port, deadline, counts) for _ in range(args.http)]
    workers += [_ipc_worker(args.socket, deadline, counts) for _ in range(args.ipc)]
    try:
        await asyncio.wait_for(asyncio.gather(*workers), args.seconds + 10)
    except TimeoutError:
        counts["stopped_by_timeout"] = 1
    counts["seconds"] = round(time.monotonic() - start, 2)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--http", type=int, default=4)
    ap.add_argument("--ipc", type=int, default=4)
    args = ap.parse_args()
    args.seconds = min(args.seconds, 60.0)  # bounded whatever it is asked
    print(json.dumps(asyncio.run(main_async(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
