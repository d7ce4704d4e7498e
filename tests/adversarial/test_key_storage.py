"""Storing the key when things go wrong: descriptors past 1023, a store that fails after OpenRouter issued a
key, a secret-store helper that fails mid-call or is sent an operation it does not know, and a key
reference in config.toml that names someone else's keyring item.

A key OpenRouter issued is never lost and never written in plain text; a failed call never poisons the
next one; only the project's own keyring item is ever read, written or deleted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convocationsd.common.interpreter import module_command
from convocationsd.store import helper as helper_module
from convocationsd.store.helper import HelperStore
from convocationsd.store.secrets import LOCAL_ENCRYPTED
from convocationsd.store.select import open_store
from tests.secretstore_contract import new_key


def _helper(config: Path) -> HelperStore:
    return HelperStore(config, forced_backend=LOCAL_ENCRYPTED)


# -- the secret-store helper -------------------------------------------------------------------------


def test_helper_refuses_an_operation_it_does_not_know(short_tmp):
    """The secret-store helper is sent an operation it has no name for ("delete", a typo, a newer
    daemon's): it answers with an error and the stored key stays, rather than taking it for ``clear``.

    Defence: store/helper._serve names every operation; anything else is an error."""
    config = short_tmp / "conf" / "config.toml"
    key = new_key()
    open_store(config, forced_backend=LOCAL_ENCRYPTED).set(key)
    child = subprocess.Popen(
        [*module_command(sys.executable, "convocationsd.store.helper"), str(config), LOCAL_ENCRYPTED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        for op in ("delete", "Clear", "", None, 1):
            request = {"op": op, "key": None, "keyring_timeout": 5, "log_level": 20}
            child.stdin.write(json.dumps(request).encode() + b"\n")
            child.stdin.flush()
            reply = json.loads(child.stdout.readline())
            assert "result" not in reply and reply["error"]["message"], (op, reply)
            assert key not in json.dumps(reply)
    finally:
        child.stdin.close()
        child.wait(10)
    assert open_store(config).get() == key


def test_a_helper_call_that_fails_is_not_answered_by_the_next_one(short_tmp, monkeypatch):
    """A call to the secret-store helper fails on the daemon's side after the request went out (here the
    wait for its answer raises, as ``select()`` did past descriptor 1023): the next calls get their own
    answers, not the one left in the pipe.

    Defence: store/helper.HelperStore._exchange ends a child that did not answer, in a ``finally``."""
    store = _helper(short_tmp / "conf" / "config.toml")
    key = new_key()
    store.set(key)
    real = helper_module._line_within

    def fails_once(stream, timeout):
        monkeypatch.setattr(helper_module, "_line_within", real)
        raise ValueError("filedescriptor out of range in select()")

    monkeypatch.setattr(helper_module, "_line_within", fails_once)
    with pytest.raises(ValueError):
        store.get()  # the child answers with the key; nobody reads it
    try:
        # Compared, not shown: a wrong answer here would be the key.
        if store.clear() is not True or store.get() is not None:
            pytest.fail("a call was answered with the answer to an earlier one")
    finally:
        store.close()
