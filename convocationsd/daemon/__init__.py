"""convocationsd, the daemon: its doors (HTTP, Unix socket, D-Bus), the controller behind them, and its
service-manager glue. Nothing outside this package imports from it (convctl talks to it over the socket)."""
