"""The in-memory session store, with a fake clock and a deterministic token source."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from convocationsd.core import flows, pkce
from convocationsd.core.flows import CallbackRejected, FlowError, FlowStore
from convocationsd.core.states import FlowStatus

T0 = 1_700_000_000.0
PORT = 3000
BASE = "https://openrouter.test"


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Tokens:
    """Deterministic stand-in for ``secrets.token_urlsafe``: same output shape, seeded randomness."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.calls: list[int] = []
        self.issued: list[str] = []

    def __call__(self, n: int) -> str:
        self.calls.append(n)
        tok = base64.urlsafe_b64encode(self.rng.randbytes(n)).rstrip(b"=").decode()
        self.issued.append(tok)
        return tok


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


def make_store(clock: Clock, tokens: Tokens, **kw) -> FlowStore:
    return FlowStore(
        auth_url=lambda challenge, state, paste: pkce.authorize_url(BASE, PORT, challenge, state, paste=paste),
        callback_url=pkce.callback_url(PORT),
        clock=clock,
        token=tokens,
        **kw,
    )


@pytest.fixture
def store(clock, tokens) -> FlowStore:
    return make_store(clock, tokens, timeout=600.0, history=4)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def snapshot(flow: flows.Flow) -> tuple:
    return (flow.status, flow.error, flow.backend, flow.state, flow.verifier)


# -- start -----------------------------------------------------------------------------------------


def test_start_creates_pending_flow(store, clock, tokens):
    r = store.start()
    f = r.flow
    assert r.joined is False and r.cancelled is None
    assert store.pending is f and f.status == FlowStatus.PENDING and not f.done
    assert f.created_at == T0 and f.expires_at == T0 + 600.0
    assert f.callback_url == "http://localhost:3000/api/openrouter/oauth/callback"
    assert f.paste is False and f.error is None
    # Verifier, state and session id all come from the injected source, and are distinct.
    assert {f.verifier, f.state, f.session_id} <= set(tokens.issued)
    assert len({f.verifier, f.state, f.session_id}) == 3
    assert 43 <= len(f.verifier) <= 128


def test_start_uses_enough_entropy(store, tokens):
    f = store.start().flow
    by_value = dict(zip(tokens.issued, tokens.calls, strict=False))
    assert by_value[f.verifier] >= 32
    assert by_value[f.state] >= 16
    assert by_value[f.session_id] >= 9


def test_start_auth_url_binds_challenge_and_state(store):
    f = store.start().flow
    q = query(f.auth_url)
    assert f.auth_url.startswith(BASE + "/auth?")
    assert q["code_challenge"] == pkce.s256_challenge(f.verifier)
    assert q["code_challenge_method"] == "S256"
    assert q["state"] == f.state
    assert q["callback_url"] == f.callback_url
    assert q["client_id"] == "convocations"
    assert f.verifier not in f.auth_url


def test_start_reply_shape(store):
    f = store.start().flow
    reply = f.start_reply(joined=False)
    assert reply == {
        "session_id": f.session_id,
        "auth_url": f.auth_url,
        "callback_url": f.callback_url,
        "expires_at": "2023-11-14T22:23:20Z",  # T0 + 600 s
        "joined": False,
    }
    assert f.start_reply(joined=True)["joined"] is True


def test_timeout_is_configurable(clock, tokens):
    s = make_store(clock, tokens, timeout=5.0)
    assert s.start().flow.expires_at == T0 + 5.0


def test_iso_formats_utc():
    assert flows.iso(0) == "1970-01-01T00:00:00Z"
    assert flows.iso(T0) == "2023-11-14T22:13:20Z"


def test_second_start_joins_the_same_flow(store, clock, tokens):
    first = store.start().flow
    n_tokens = len(tokens.calls)
    clock.advance(10)
    r = store.start()
    assert r.joined is True and r.cancelled is None
    assert r.flow is first and store.pending is first
    assert len(tokens.calls) == n_tokens  # no new secrets minted
    assert first.expires_at == T0 + 600  # joining does not extend the deadline
    assert len(store.history) == 0


def test_restart_cancels_the_old_flow(store):
    old = store.start().flow
    r = store.start(restart=True)
    assert r.joined is False
    assert r.cancelled is old
    assert old.status == FlowStatus.FAILED and old.done
    assert old.error is flows.REPLACED[False]  # not a plain "cancelled": its waiter is told where the login went
    assert old.error.code == "replaced" and "(browser mode); finish that one" in old.error.message
    new = r.flow
    assert new is not old and store.pending is new
    assert new.session_id != old.session_id and new.state != old.state and new.verifier != old.verifier
    assert list(store.history) == [old]


def test_restart_without_pending_just_starts(store):
    r = store.start(restart=True)
    assert r.joined is False and r.cancelled is None and store.pending is r.flow


def test_paste_mode_flow(store):
    r = store.start(paste=True)
    f = r.flow
    assert f.paste is True and f.callback_url is None
    assert "callback_url" not in query(f.auth_url)
    assert query(f.auth_url)["state"] == f.state


def test_the_other_mode_joins_the_pending_flow(store):
    """Start joins whatever is pending (the contract); only restart replaces it."""
    cb = store.start().flow
    r = store.start(paste=True)
    assert r.joined is True and r.flow is cb and r.cancelled is None and cb.status == FlowStatus.PENDING
    r2 = store.start(paste=True, restart=True)
    assert r2.cancelled is cb and cb.error is flows.REPLACED[True] and cb.error.code == "replaced"
    assert cb.error.message == "The login was replaced by a new login started elsewhere (paste mode); finish that one."
    assert r2.flow.paste is True and r2.flow.callback_url is None and store.pending is r2.flow


def test_same_mode_paste_joins(store):
    f = store.start(paste=True).flow
    r = store.start(paste=True)
    assert r.joined is True and r.flow is f


def test_mode_switch_while_exchanging_joins_instead_of_cancelling(store):
    f = store.start().flow
    store.claim_code("c1", f.state)
    r = store.start(paste=True)
    assert r.joined is True and r.flow is f and r.cancelled is None
    assert f.status == FlowStatus.EXCHANGING


def test_restart_or_cancel_while_exchanging_joins_instead(store):
    """The key may already exist: the exchange decides how the flow ends (shutdown forces it)."""
    f = store.start().flow
    store.claim_code("c1", f.state)
    r = store.start(restart=True)
    assert r.joined is True and r.flow is f and r.cancelled is None
    assert store.cancel() is None and f.status == FlowStatus.EXCHANGING
    assert store.cancel(force=True) is f and f.error.code == "cancelled"


# -- expiry ----------------------------------------------------------------------------------------


def test_expire_due_before_deadline_does_nothing(store, clock):
    f = store.start().flow
    clock.advance(599.999)
    assert store.expire_due() is None
    assert store.pending is f and f.status == FlowStatus.PENDING


def test_expire_due_at_deadline(store, clock):
    f = store.start().flow
    clock.advance(600)
    assert store.expire_due() is f
    assert f.status == FlowStatus.FAILED and f.error.code == "timeout"
    assert f.error.message and f.error.hint
    assert store.pending is None and list(store.history) == [f]
    assert store.expire_due() is None  # only once


def test_expire_due_without_flow(store):
    assert store.expire_due() is None


def test_expire_due_not_while_exchanging(store, clock):
    f = store.start().flow
    store.claim_code("c", f.state)
    clock.advance(10_000)
    assert store.expire_due() is None
    assert store.pending is f and f.status == FlowStatus.EXCHANGING
    # released after the deadline: it expires on the next check
    store.release(f)
    assert store.expire_due() is f and f.error.code == "timeout"


def test_start_after_expiry_makes_a_new_flow(store, clock):
    old = store.start().flow
    clock.advance(601)
    store.expire_due()
    r = store.start()
    assert r.joined is False and r.cancelled is None and r.flow is not old
    assert r.flow.expires_at == T0 + 601 + 600


# -- claiming a code -------------------------------------------------------------------------------


def test_claim_code_with_no_flow(store):
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("abc", "whatever")
    assert ei.value.reason == "no_flow"
    assert ei.value.message and ei.value.hint and str(ei.value) == ei.value.message


def test_claim_code_with_no_flow_after_finish(store):
    f = store.start().flow
    store.cancel()
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("abc", f.state)
    assert ei.value.reason == "no_flow"


@pytest.mark.parametrize("bad_state", ["", "nope", "x" * 32, "\ud800", "é"])
def test_claim_code_wrong_state_changes_nothing(store, bad_state):
    f = store.start().flow
    before = snapshot(f)
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("real-code", bad_state)
    assert ei.value.reason == "state_mismatch"
    assert store.pending is f and snapshot(f) == before and f.status == FlowStatus.PENDING
    assert len(store.history) == 0
    # the code was not consumed: the real callback with the same code still works
    assert store.claim_code("real-code", f.state) is f
    assert f.status == FlowStatus.EXCHANGING


def test_claim_code_state_prefix_is_not_enough(store):
    f = store.start().flow
    for wrong in (f.state[:-1], f.state + "x", f.state.upper() if f.state.upper() != f.state else f.state + "Z"):
        with pytest.raises(CallbackRejected):
            store.claim_code("c", wrong)
    assert f.status == FlowStatus.PENDING


def test_claim_code_right_state(store):
    f = store.start().flow
    assert store.claim_code("c", f.state) is f
    assert f.status == FlowStatus.EXCHANGING and store.pending is f


def test_stateless_code_is_refused_by_default(store):
    f = store.start().flow
    with pytest.raises(CallbackRejected) as ei:
        store.confirmation_token("c")
    assert ei.value.reason == "missing_state"
    assert "allow_stateless_callbacks" in ei.value.hint and "CONVOCATIONS_ALLOW_STATELESS_CALLBACKS" in ei.value.hint
    assert "--paste" in ei.value.hint
    assert f.status == FlowStatus.PENDING and store.pending is f
    assert store.claim_code("c", f.state) is f  # the code was not consumed


def test_stateless_code_when_allowed_waits_for_its_page_and_leaves_the_flow_pending(clock, tokens):
    s = make_store(clock, tokens, require_state=False)
    f = s.start().flow
    token = s.confirmation_token("stray")
    assert f.status == FlowStatus.PENDING  # its page waits for the person: nothing waits for it
    assert s.take_confirmed_code("stray", token) is f and f.status == FlowStatus.PENDING  # checked on the side
    with pytest.raises(CallbackRejected) as ei:
        s.take_confirmed_code("stray", token)  # once
    assert ei.value.reason == "code_reused"
    assert s.claim_code("real", f.state) is f  # the callback with the right state goes first
    assert f.status == FlowStatus.EXCHANGING
    with pytest.raises(CallbackRejected) as ei:
        s.confirmation_token("another")  # a stateless one never disturbs a running exchange
    assert ei.value.reason == "busy" and f.status == FlowStatus.EXCHANGING


def test_codes_and_tokens_that_no_utf_8_holds_are_refused_not_crashed_on(clock, tokens):
    """A lone surrogate (a JSON escape, a form field) in a code or a token: an answer, never an exception."""
    s = make_store(clock, tokens, require_state=False)
    f = s.start().flow
    token = s.confirmation_token("\ud800")
    with pytest.raises(CallbackRejected) as ei:
        s.take_confirmed_code("\ud800", "\udc00" + token[1:])
    assert ei.value.reason == "not_pending"
    assert s.take_confirmed_code("\ud800", token) is f


def test_a_confirmed_code_waits_while_another_is_exchanged(clock, tokens):
    """The person presses "Finish linking" while the callback with the right state is being exchanged: refused
    as busy, and not used up, so the page works once that exchange let the flow wait again."""
    s = make_store(clock, tokens, require_state=False)
    f = s.start().flow
    token = s.confirmation_token("stray")
    s.claim_code("real", f.state)
    with pytest.raises(CallbackRejected) as ei:
        s.take_confirmed_code("stray", token)
    assert ei.value.reason == "busy" and f.status == FlowStatus.EXCHANGING
    assert not f.confirmed  # not spent: its page's button may be pressed again
    s.release(f)  # that code was not ours after all
    assert s.take_confirmed_code("stray", token) is f


def test_codes_and_tokens_that_are_not_valid_unicode_are_handled_as_text(clock, tokens):
    """A lone surrogate (what a query string's invalid UTF-8 can decode to) in a code or a page's token is
    compared like any other text, never an exception."""
    s = make_store(clock, tokens, require_state=False)
    f = s.start().flow
    token = s.confirmation_token("\ud800code")
    with pytest.raises(CallbackRejected) as ei:
        s.take_confirmed_code("\ud800code", token[:-1] + "\udfff")
    assert ei.value.reason == "not_pending"
    assert s.take_confirmed_code("\ud800code", token) is f


def test_stateless_code_is_remembered(clock, tokens):
    s = make_store(clock, tokens, require_state=False)
    f = s.start().flow
    s.confirmation_token("c")
    with pytest.raises(CallbackRejected) as ei:
        s.confirmation_token("c")
    assert ei.value.reason == "code_reused"
    with pytest.raises(CallbackRejected):
        s.claim_code("c", f.state)


def test_a_confirmation_token_fits_its_code_and_its_flow_only_and_no_flood_pushes_it_out(clock, tokens):
    """The token is a MAC of the code under the flow's key: it confirms that code of that flow only, dies with
    the flow, and nothing is held, so a thousand other codes later the person's page still works."""
    s = make_store(clock, tokens, require_state=False)
    s.start()
    token = s.confirmation_token("c")
    s.start(restart=True)
    with pytest.raises(CallbackRejected) as ei:
        s.take_confirmed_code("c", token)  # its flow was cancelled
    assert ei.value.reason == "not_pending"
    f = s.pending
    mine = s.confirmation_token("mine")
    others = [s.confirmation_token(f"other{i}") for i in range(1000)]
    for code, token in (("other0", mine), ("mine", others[0]), ("mine", mine.upper()), ("mine", "")):
        with pytest.raises(CallbackRejected) as ei:
            s.take_confirmed_code(code, token)  # a token confirms its own code only
        assert ei.value.reason == "not_pending"
    for code, token in ((None, mine), ("mine", None)):
        with pytest.raises(CallbackRejected):
            s.take_confirmed_code(code, token)  # type: ignore[arg-type]  # form fields that were not text
    assert s.take_confirmed_code("mine", mine) is f


def test_a_side_result_counts_only_for_a_flow_still_pending(clock, tokens):
    s = make_store(clock, tokens, require_state=False)
    f = s.start().flow
    s.claim_code("real", f.state)
    assert s.claim_side_result(f) is False  # a callback with its state is finishing it
    s.finish(f, None, "keyring")
    assert s.claim_side_result(f) is False  # ended
    g = s.start().flow
    assert s.claim_side_result(g) is True and g.status == FlowStatus.EXCHANGING


@pytest.mark.parametrize("require_state", [True, False])
def test_paste_flow_ignores_every_callback(clock, tokens, require_state):
    s = make_store(clock, tokens, require_state=require_state)
    f = s.start(paste=True).flow
    for claim in (
        lambda: s.claim_code("c", f.state),
        lambda: s.confirmation_token("c"),
        lambda: s.claim_error(f.state),
        lambda: s.claim_error(None),
    ):
        with pytest.raises(CallbackRejected) as ei:
            claim()
        assert ei.value.reason == "paste_mode"
    assert f.status == FlowStatus.PENDING
    assert s.claim_pasted("c") is f and f.status == FlowStatus.EXCHANGING  # the socket's paste still works


def test_same_code_twice_is_code_reused(store):
    f = store.start().flow
    store.claim_code("c", f.state)
    store.release(f)
    assert f.status == FlowStatus.PENDING
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("c", f.state)
    assert ei.value.reason == "code_reused"
    assert f.status == FlowStatus.PENDING and store.pending is f


def test_code_reuse_is_remembered_across_flows(store):
    f1 = store.start().flow
    store.claim_code("c", f1.state)
    store.finish(f1, backend="keyring")
    f2 = store.start().flow
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("c", f2.state)
    assert ei.value.reason == "code_reused"
    assert f2.status == FlowStatus.PENDING


def test_used_codes_are_bounded(clock, tokens):
    s = make_store(clock, tokens, used_codes=3)
    f = s.start().flow
    for code in ("a", "b", "c", "d"):
        s.claim_code(code, f.state)
        s.release(f)
    with pytest.raises(CallbackRejected):
        s.claim_code("d", f.state)
    assert s.claim_code("a", f.state) is f  # forgotten: oldest dropped


def test_store_keeps_digests_not_codes(store):
    f = store.start().flow
    store.claim_code("secret-code-123", f.state)
    assert "secret-code-123" not in repr(vars(store))


def test_claim_while_exchanging_is_busy(store):
    f = store.start().flow
    store.claim_code("c1", f.state)
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("c2", f.state)
    assert ei.value.reason == "busy"
    assert f.status == FlowStatus.EXCHANGING
    # the busy code was not consumed
    store.release(f)
    assert store.claim_code("c2", f.state) is f


def test_claim_while_exchanging_wrong_state_is_state_mismatch(store):
    f = store.start().flow
    store.claim_code("c1", f.state)
    with pytest.raises(CallbackRejected) as ei:
        store.claim_code("c2", "wrong")
    assert ei.value.reason == "state_mismatch"


def test_release_puts_flow_back_to_pending(store):
    f = store.start().flow
    store.claim_pasted("c")
    store.release(f)
    assert f.status == FlowStatus.PENDING and store.pending is f
    assert store.claim_pasted("other") is f


def test_release_is_a_no_op_for_other_flows(store):
    f = store.start().flow
    store.release(f)  # pending, not exchanging
    assert f.status == FlowStatus.PENDING
    store.claim_pasted("c")
    store.finish(f, FlowError("exchange_failed", "x"))
    store.release(f)  # finished
    assert f.status == FlowStatus.FAILED
    stranger = store.start().flow
    store.claim_pasted("d")
    store.release(f)  # not the pending one
    assert stranger.status == FlowStatus.EXCHANGING


# -- claim_error -----------------------------------------------------------------------------------


def test_claim_error_rules(store):
    with pytest.raises(CallbackRejected) as ei:
        store.claim_error(None)
    assert ei.value.reason == "no_flow"
    f = store.start().flow
    with pytest.raises(CallbackRejected) as ei:
        store.claim_error("wrong")
    assert ei.value.reason == "state_mismatch"
    assert f.status == FlowStatus.PENDING and store.pending is f
    assert store.claim_error(f.state) is f
    assert store.claim_error(None) is f  # the flow it is about; the caller decides that it ends nothing
    assert f.status == FlowStatus.PENDING  # claim_error itself changes nothing
    store.claim_code("c", f.state)
    with pytest.raises(CallbackRejected) as ei:
        store.claim_error(None)
    assert ei.value.reason == "busy"


@pytest.mark.parametrize(
    "error, code",
    [
        ("access_denied", "access_denied"),
        ("server_error", "exchange_failed"),
        ("temporarily_unavailable", "exchange_failed"),
        ("invalid_request", "exchange_failed"),
        ("<script>alert(1)</script>", "exchange_failed"),
        ("", "exchange_failed"),
        ("ACCESS_DENIED", "exchange_failed"),
    ],
)
def test_reported_errors_are_told_in_our_words(error, code):
    failure = flows.reported_error(error)
    assert failure.code == code and failure.message and failure.hint
    assert not error or error not in failure.message + failure.hint
    if error not in flows.OAUTH_ERRORS:
        assert failure is flows.REPORTED and "OpenRouter reported an error" in failure.message


def test_cancel_with_an_error(store):
    f = store.start().flow
    assert store.cancel(f.session_id, error=flows.DENIED) is f
    assert f.error is flows.DENIED and store.pending is None


# -- finishing -------------------------------------------------------------------------------------


def test_finish_success(store):
    f = store.start().flow
    store.claim_code("c", f.state)
    assert store.finish(f, backend="keyring") is True
    assert f.status == FlowStatus.SUCCEEDED and f.done and f.error is None
    assert f.backend == "keyring"
    assert store.pending is None and list(store.history) == [f]
    assert store.latest() is f


def test_finish_failure(store):
    f = store.start().flow
    store.claim_code("c", f.state)
    err = FlowError("exchange_failed", "OpenRouter refused the code.", "Try again.")
    store.finish(f, err)
    assert f.status == FlowStatus.FAILED and f.error is err and f.backend is None
    assert store.pending is None and list(store.history) == [f]
    assert f.public()["error"] == {
        "code": "exchange_failed",
        "message": "OpenRouter refused the code.",
        "hint": "Try again.",
    }


def test_flow_error_to_dict_default_hint():
    assert FlowError("x", "y").to_dict() == {"code": "x", "message": "y", "hint": ""}


def test_history_is_bounded(clock, tokens):
    s = make_store(clock, tokens, history=3)
    made = []
    for _ in range(5):
        made.append(s.start().flow)
        s.cancel()
    assert len(s.history) == 3
    assert list(s.history) == made[-3:]
    assert s.latest() is made[-1]


def test_finish_of_a_cancelled_flow_does_not_duplicate_history(store):
    f = store.start().flow
    store.claim_code("c", f.state)
    store.cancel(force=True)  # shutdown
    assert f.error.code == "cancelled"
    assert store.finish(f, backend="keyring") is False  # the exchange that was running completes
    assert list(store.history).count(f) == 1 and f.error.code == "cancelled" and f.backend is None


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_with_wrong_session_id_does_nothing(store):
    f = store.start().flow
    before = snapshot(f)
    assert store.cancel("not-the-session") is None
    assert store.pending is f and snapshot(f) == before and len(store.history) == 0


def test_cancel_by_session_id(store):
    f = store.start().flow
    assert store.cancel(f.session_id) is f
    assert f.error.code == "cancelled"
    assert store.pending is None and list(store.history) == [f]


def test_cancel_without_session_id(store):
    f = store.start().flow
    assert store.cancel() is f and store.pending is None


def test_cancel_with_nothing_pending(store):
    assert store.cancel() is None
    assert store.cancel("x") is None
    assert len(store.history) == 0


# -- reading ---------------------------------------------------------------------------------------


def test_latest(store):
    assert store.latest() is None
    f1 = store.start().flow
    assert store.latest() is f1
    store.cancel()
    assert store.latest() is f1
    f2 = store.start().flow
    assert store.latest() is f2
    store.claim_code("c", f2.state)
    store.finish(f2, backend="local-encrypted")
    assert store.latest() is f2
    f3 = store.start().flow
    assert store.latest() is f3  # pending wins over history


def _all_public_texts(f: flows.Flow) -> list[str]:
    return [json.dumps(f.public()), json.dumps(f.start_reply(False)), repr(f)]


@pytest.mark.parametrize("outcome", ["pending", "exchanging", "succeeded", "failed", "cancelled", "timeout", "paste"])
def test_public_never_contains_verifier_state_or_code(store, clock, outcome):
    code = "the-authorization-code-XYZ"
    f = store.start(paste=outcome == "paste").flow
    if outcome in ("exchanging", "succeeded", "failed"):
        store.claim_code(code, f.state)
    if outcome == "succeeded":
        store.finish(f, backend="keyring")
    elif outcome == "failed":
        store.finish(f, FlowError("exchange_failed", "no", "retry"))
    elif outcome == "cancelled":
        store.cancel()
    elif outcome == "timeout":
        clock.advance(600)
        store.expire_due()
    pub = f.public()
    assert set(pub) == {
        "session_id", "status", "auth_url", "callback_url", "paste",
        "created_at", "expires_at", "error", "backend",
    }  # fmt: skip
    for text in _all_public_texts(f):
        assert f.verifier not in text
        assert code not in text
    # The state travels only inside auth_url (which the contract hands to the person/frontend);
    # it is never exposed as a field or anywhere else.
    without_url = {k: v for k, v in pub.items() if k != "auth_url"}
    assert f.state not in json.dumps(without_url)
    assert repr(f).count(f.state) == repr(f.auth_url).count(f.state) == 1
    assert "verifier" not in repr(f) and f"state={f.state!r}" not in repr(f)
    assert f.confirm_key not in "".join(_all_public_texts(f)) and "confirm" not in repr(f)
    assert repr(f).startswith(f"Flow(auth_url={f.auth_url!r}, ") and repr(f).endswith(")")
    assert f"session_id={f.session_id!r}" in repr(f)
    reply = {k: v for k, v in f.start_reply(False).items() if k != "auth_url"}
    assert f.state not in json.dumps(reply)


def test_public_fields(store):
    f = store.start().flow
    pub = f.public()
    assert pub["session_id"] == f.session_id
    assert pub["status"] == "pending"
    assert pub["created_at"] == "2023-11-14T22:13:20Z"
    assert pub["expires_at"] == "2023-11-14T22:23:20Z"
    assert pub["error"] is None and pub["backend"] is None and pub["paste"] is False
    json.dumps(pub)  # serialisable


# -- what the rest of the daemon relies on ------------------------------------------------------------------


def test_status_values_are_the_contracts(store):
    """docs/protocol.md: "status": "pending|exchanging|succeeded|failed", which FlowStatus lists in that order."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    documented = re.search(r'"flow": \{"session_id": "…", "status": "([a-z|]+)"', doc).group(1).split("|")
    assert documented == ["pending", "exchanging", "succeeded", "failed"] == [str(s) for s in FlowStatus]
    seen = []
    f = store.start().flow
    seen.append(f.public()["status"])
    store.claim_code("c1", f.state)
    seen.append(f.public()["status"])
    store.finish(f, backend="keyring")
    seen.append(f.public()["status"])
    g = store.start().flow
    store.cancel()
    seen.append(g.public()["status"])
    assert seen == ["pending", "exchanging", "succeeded", "failed"]


def test_complete_data_is_the_events_data(store):
    ok = store.start().flow
    store.claim_code("c1", ok.state)
    store.finish(ok, backend="keyring")
    assert ok.complete_data() == {"session_id": ok.session_id, "success": True, "backend": "keyring", "error": None}
    failed = store.start().flow
    store.cancel()
    assert failed.complete_data() == {
        "session_id": failed.session_id,
        "success": False,
        "backend": None,
        "error": flows.CANCELLED.to_dict(),
    }


def test_a_flow_built_by_hand_has_the_documented_defaults():
    f = flows.Flow("sid", "state", "verifier", "https://x/auth", None, T0, T0 + 1)
    assert (f.paste, f.status, f.error, f.backend, f.done) == (False, "pending", None, None, False)
    assert (f.confirm_key, f.confirmed) == ("", set())  # no confirmation key: only the store draws one


def test_flows_compare_by_identity():
    """Two logins are never the same one, whatever their fields; a flow can key a dict or a set."""
    a = flows.Flow("sid", "state", "verifier", "https://x/auth", None, T0, T0 + 1)
    b = flows.Flow("sid", "state", "verifier", "https://x/auth", None, T0, T0 + 1)
    assert a != b and len({a, b}) == 2


def test_errors_and_start_results_cannot_be_changed(store):
    """CANCELLED, DENIED and the rest are shared by every flow: changing one would change them all."""
    with pytest.raises(AttributeError):
        flows.CANCELLED.message = "changed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        store.start().joined = True  # type: ignore[misc]


def test_a_callback_rejection_without_hint_has_an_empty_one():
    e = CallbackRejected("no_flow", "No login.")
    assert (e.reason, e.message, e.hint, str(e)) == ("no_flow", "No login.", "", "No login.")


@pytest.mark.parametrize("error", sorted(flows.OAUTH_ERRORS))
def test_each_rfc_6749_error_code_has_its_own_words(error):
    assert set(flows.OAUTH_ERRORS) == {
        "access_denied", "invalid_request", "unauthorized_client", "unsupported_response_type", "invalid_scope",
        "server_error", "temporarily_unavailable",
    }  # fmt: skip
    failure = flows.reported_error(error)
    assert failure is not flows.REPORTED
    assert (failure is flows.DENIED) == (error == "access_denied")
    if error in ("server_error", "temporarily_unavailable"):
        assert "in a few minutes" in failure.hint  # a problem at OpenRouter: waiting helps


def test_start_draws_verifier_state_session_id_and_confirmation_key_in_that_order(store, tokens):
    f = store.start().flow
    # random bytes: verifier, state (192 bits), session id (96 bits), the key of its confirmation tokens (256 bits)
    assert tokens.calls == [64, 24, 12, 32]
    assert [f.verifier, f.state, f.session_id, f.confirm_key] == tokens.issued


def test_defaults_ten_minutes_sixteen_past_logins_256_used_codes(clock, tokens):
    s = FlowStore(auth_url=lambda c, st, p: "https://x/auth", callback_url=None, clock=clock, token=tokens)
    first = s.start().flow
    assert first.expires_at == T0 + 600.0
    for i in range(256):
        s.claim_code(f"code-{i}", first.state)
        s.release(first)
    with pytest.raises(CallbackRejected):
        s.claim_code("code-0", first.state)  # the oldest of 256 is still remembered
    s.claim_code("code-256", first.state)  # the 257th pushes it out
    s.release(first)
    assert s.claim_code("code-0", first.state) is first
    s.finish(first)
    for _ in range(20):
        s.start()
        s.cancel()
    assert len(s.history) == 16


def test_a_pasted_code_needs_a_login_waiting(store):
    with pytest.raises(CallbackRejected) as caught:
        store.claim_pasted("code")
    assert caught.value.reason == "no_flow" and "oauth start --paste" in caught.value.hint


def test_a_code_with_a_lone_surrogate_is_remembered_like_any_other(store):
    """A code pasted over the socket may be JSON's "\\ud800", which decodes to a lone surrogate: it must be
    refused when used again, not crash the digest."""
    f = store.start(paste=True).flow
    store.claim_pasted("\ud800")
    store.release(f)
    with pytest.raises(CallbackRejected) as caught:
        store.claim_pasted("\ud800")
    assert caught.value.reason == "code_reused"
