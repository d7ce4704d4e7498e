"""Test doubles that speak real protocols over real sockets.

Nothing here is imported by the daemon. Submodules are imported on demand (``from
convocationsd.testing.fake_openrouter import FakeOpenRouter``), never from this package's
``__init__``, so that ``python -m convocationsd.testing.fake_openrouter`` runs the module once.
"""
