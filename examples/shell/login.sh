#!/bin/sh
# Subscribe to the outcome, start (or join) a login, and print every line the daemon sends: the two
# replies (the second has the auth_url to open), then the events. Ctrl-C ends it. Needs socat.
# Stdin stays open (sleep): a client that shuts down its sending side is answered, then disconnected.
# The socket: CONVOCATIONS_SOCKET, else under XDG_RUNTIME_DIR (protocol.md's steps 1 and 3 only: set
# CONVOCATIONS_SOCKET when config.toml's `socket` names it).
sock="${CONVOCATIONS_SOCKET:-${XDG_RUNTIME_DIR:?set XDG_RUNTIME_DIR or CONVOCATIONS_SOCKET}/convocations/convocationsd.sock}"
{
  echo '{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"events":["openrouter-auth-complete"]}}'
  echo '{"jsonrpc":"2.0","id":2,"method":"oauth.start"}'
  sleep 3600
} | socat - UNIX-CONNECT:"$sock"
