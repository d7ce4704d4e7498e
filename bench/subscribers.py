"""A separate process holding N event subscribers on the daemon's socket (``python -m bench.subscribers``).

It runs in its own process so that reading N sockets does not compete with the bench's own event loop
(the fake OpenRouter) for the GIL. It talks to the bench over stdin/stdout, one line each way:

    stdout  READY <n>                              all N subscribed
    stdout  DONE <session_id> <first> <last> <n>   every subscriber has received that session's
                                                   openrouter-auth-complete (CLOCK_MONOTONIC seconds)
    stdout  LOST <k>                               k subscribers were disconnected by the daemon
    stdin   EOF or "quit"                          close everything and exit

With ``--stuck`` the subscribers never read after their ``subscribe`` reply (a frontend that hangs): the
daemon's queues for them fill up. It exits by itself after ``--lifetime`` seconds whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time

MARK = b'"openrouter-auth-complete"'
SESSION = b'"session_id":"'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("count", type=int)
    ap.add_argument("--events", default="all", help="'all' or a comma-separated list")
    ap.add_argument("--lifetime", type=float, default=240.0)
    ap.add_argument("--stuck", action="store_true", help="never read after subscribing")
    args = ap.parse_args()
    deadline = time.monotonic() + args.lifetime
    params = "" if args.events == "all" else ',"params":{{"events":{}}}'.format(json.dumps(args.events.split(",")))
    request = (f'{{"jsonrpc":"2.0","id":1,"method":"subscribe"{params}}}\n').encode()

    socks: dict[int, socket.socket] = {}
    bufs: dict[int, bytes] = {}
    for _ in range(args.count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(args.socket)
        s.sendall(request)
        reply = b""
        while b"\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("the daemon closed a subscriber before it was subscribed")
            reply += chunk
        line, rest = reply.split(b"\n", 1)
        if b'"result"' not in line:
            raise SystemExit(f"subscribe failed: {line[:200]!r}")
        s.setblocking(False)
        socks[s.fileno()] = s
        bufs[s.fileno()] = rest

    ep = select.epoll()
    if not args.stuck:
        for fd in socks:
            ep.register(fd, select.EPOLLIN)
    stdin_fd = sys.stdin.fileno()
    ep.register(stdin_fd, select.EPOLLIN)
    out = sys.stdout
    out.write(f"READY {len(socks)}\n")
    out.flush()

    seen: dict[str, list] = {}  # session -> [count, first, last]
    lost = 0
    clock = time.monotonic
    try:
        while socks:
            left = deadline - clock()
            if left <= 0:
                break
            ready = ep.poll(min(left, 1.0))
            now = clock()  # when these sockets were known to hold data: the helper's own work is not counted
            for fd, _ in ready:
                if fd == stdin_fd:
                    if os.read(stdin_fd, 4096) in (b"", b"quit\n"):
                        return 0
                    continue
                try:
                    data = socks[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    ep.unregister(fd)
                    socks.pop(fd).close()
                    lost += 1
                    out.write(f"LOST {lost}\n")
                    out.flush()
                    continue
                buf = bufs[fd] + data
                *lines, bufs[fd] = buf.split(b"\n")
                for line in lines:
                    if MARK not in line:
                        continue
                    start = line.index(SESSION) + len(SESSION)
                    session = line[start : line.index(b'"', start)].decode()
                    rec = seen.get(session)
                    if rec is None:
                        rec = seen[session] = [0, now, now]
                    rec[0] += 1
                    rec[2] = now
                    if rec[0] == len(socks):
                        out.write(f"DONE {session} {rec[1]:.6f} {rec[2]:.6f} {rec[0]}\n")
                        out.flush()
    finally:
        for s in socks.values():
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
