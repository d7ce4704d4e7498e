"""The one exception root: what each error says, and the exit code convctl gives for it (README: "Exit codes:
0 success, 1 the operation failed, 2 usage error, 3 the daemon cannot be reached (or its socket is not to be
trusted)")."""

from __future__ import annotations

import pytest

from convocationsd.core import errors

EXIT_CODES = {
    errors.ConvError: 1,
    errors.ConfigError: 1,
    errors.UntrustedConfig: 1,
    errors.SecretStoreError: 1,
    errors.BackendUnavailable: 1,
    errors.KeyNotAccepted: 1,
    errors.UpstreamError: 1,
    errors.KeyRejected: 1,
    errors.CodeRejected: 1,
    errors.NoReply: 1,
    errors.RemoteError: 1,
    errors.UsageError: 2,
    errors.DaemonUnreachable: 3,
    errors.UntrustedSocket: 3,
}


@pytest.mark.parametrize(("kind", "code"), EXIT_CODES.items(), ids=[k.__name__ for k in EXIT_CODES])
def test_exit_codes_are_the_documented_ones(kind, code):
    assert kind.exit_code == code


def test_every_error_kind_of_the_core_has_its_exit_code_listed():
    kinds = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ConvError)}
    assert kinds == set(EXIT_CODES)


def test_message_and_hint():
    e = errors.ConvError("Something failed.", "Do this.")
    assert (e.message, e.hint, str(e), e.args) == (
        "Something failed.",
        "Do this.",
        "Something failed. Do this.",
        ("Something failed.",),
    )
    bare = errors.ConvError("Something failed.")
    assert (bare.hint, str(bare)) == ("", "Something failed.")


def test_no_reply_names_the_method_it_waited_for():
    e = errors.NoReply("oauth.exchange")
    assert e.method == "oauth.exchange"
    assert "`oauth.exchange`" in e.message and "convctl status" in e.hint


def test_remote_error_keeps_code_and_kind_and_has_no_hint_unless_given():
    e = errors.RemoteError(-32000, "It failed.", kind="CodeRejected")
    assert (e.code, e.kind, e.hint, str(e)) == (-32000, "CodeRejected", "", "It failed.")
    assert errors.RemoteError(-32601, "Method not found").kind is None


def test_a_remote_error_is_a_kind_by_the_name_the_daemon_sends():
    sent = errors.RemoteError(-32000, "Not accepted.", kind=errors.kind_of(errors.CodeRejected))
    assert sent.is_a(errors.CodeRejected)
    assert not sent.is_a(errors.ConvError)  # the class the daemon raised, not its bases
    assert not errors.RemoteError(-32000, "It failed.", kind="ConvError").is_a(errors.CodeRejected)
    assert not errors.RemoteError(-32601, "Method not found").is_a(errors.CodeRejected)


def test_key_not_accepted_says_why_and_how_to_store_it_anyway():
    e = errors.KeyNotAccepted()
    assert "HTTP 401" in e.message and "not stored" in e.message
    assert "again from https://openrouter.ai/keys (or" in e.hint and "--no-verify" in e.hint  # the page, as written
