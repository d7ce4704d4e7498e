"""Persistent state: the config file and the secret stores (OS keyring, or encrypted with a local master key)."""
