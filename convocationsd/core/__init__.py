"""The pure core: PKCE, the login session store, events, JSON-RPC and errors. No I/O, no third-party imports."""
