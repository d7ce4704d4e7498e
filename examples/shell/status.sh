#!/bin/sh
# One request and its answer, from a shell (needs socat). The daemon closes the connection once it has
# answered everything the client sent, so this returns as soon as the answer is printed.
# The socket: CONVOCATIONS_SOCKET, else under XDG_RUNTIME_DIR (protocol.md's steps 1 and 3 only: set
# CONVOCATIONS_SOCKET when config.toml's `socket` names it).
sock="${CONVOCATIONS_SOCKET:-${XDG_RUNTIME_DIR:?set XDG_RUNTIME_DIR or CONVOCATIONS_SOCKET}/convocations/convocationsd.sock}"
echo '{"jsonrpc":"2.0","id":1,"method":"status"}' | socat -t 30 - UNIX-CONNECT:"$sock"
