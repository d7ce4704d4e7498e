"""PKCE (RFC 7636) and the authorize URL, checked against the RFC's vector and the contract's URL."""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convocationsd.core import pkce

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")

# RFC 7636, Appendix B: the 32 random octets, the verifier they encode to, and its S256 challenge.
RFC_OCTETS = bytes(
    [116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186,
     22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121]
)  # fmt: skip
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


class RecordingToken:
    def __init__(self, value: str) -> None:
        self.value = value
        self.calls: list[int] = []

    def __call__(self, n: int) -> str:
        self.calls.append(n)
        return self.value


# -- verifier --------------------------------------------------------------------------------------


def test_verifier_charset_constant_is_exactly_rfc_unreserved():
    assert pkce.VERIFIER_CHARS == UNRESERVED


def test_default_verifier_is_43_to_128_unreserved_chars():
    for _ in range(50):
        v = pkce.make_verifier()
        assert 43 <= len(v) <= 128
        assert set(v) <= UNRESERVED


def test_default_verifiers_differ():
    assert len({pkce.make_verifier() for _ in range(20)}) == 20


def test_verifier_comes_from_injected_token_source_with_enough_entropy():
    tok = RecordingToken("A" * 86)
    assert pkce.make_verifier(tok) == "A" * 86
    assert len(tok.calls) == 1
    # RFC 7636 section 7.1 recommends 32 octets of randomness at least.
    assert tok.calls[0] >= 32


@pytest.mark.parametrize("length", [43, 44, 86, 127, 128])
def test_verifier_length_bounds_accepted(length):
    assert pkce.make_verifier(RecordingToken("a" * length)) == "a" * length


@pytest.mark.parametrize("length", [0, 1, 42, 129, 500])
def test_verifier_length_bounds_rejected(length):
    with pytest.raises(ValueError):
        pkce.make_verifier(RecordingToken("a" * length))


@pytest.mark.parametrize("bad", ["+", "/", "=", " ", "%", "é", "\n", "\x00"])
def test_verifier_rejects_reserved_characters(bad):
    with pytest.raises(ValueError):
        pkce.make_verifier(RecordingToken("a" * 50 + bad))


def test_verifier_accepts_all_unreserved_characters():
    v = "".join(sorted(UNRESERVED))  # 66 chars
    assert pkce.make_verifier(RecordingToken(v)) == v


# -- challenge -------------------------------------------------------------------------------------


def test_rfc_octets_from_the_default_random_source_give_the_rfc_verifier_and_challenge(monkeypatch):
    """Appendix B end to end, through what production uses: make_verifier's default source
    (secrets.token_urlsafe) turns the RFC's random octets into its verifier, and that into its challenge."""
    asked: list[int] = []

    def rfc_octets(n: int) -> bytes:
        asked.append(n)
        return RFC_OCTETS

    monkeypatch.setattr(secrets, "token_bytes", rfc_octets)
    verifier = pkce.make_verifier()
    assert (verifier, pkce.s256_challenge(verifier)) == (RFC_VERIFIER, RFC_CHALLENGE)
    assert asked == [64]  # 64 random octets, twice what RFC 7636 section 7.1 asks for


def test_s256_matches_rfc7636_appendix_b():
    assert pkce.s256_challenge(RFC_VERIFIER) == RFC_CHALLENGE


def test_rfc_verifier_passes_make_verifier():
    assert pkce.make_verifier(RecordingToken(RFC_VERIFIER)) == RFC_VERIFIER


def test_s256_is_not_plain():
    assert pkce.s256_challenge(RFC_VERIFIER) != RFC_VERIFIER


@given(st.text(alphabet="".join(sorted(UNRESERVED)), min_size=43, max_size=128))
def test_s256_is_unpadded_base64url_sha256(verifier):
    c = pkce.s256_challenge(verifier)
    assert len(c) == 43
    assert "=" not in c and "+" not in c and "/" not in c
    assert base64.urlsafe_b64decode(c + "=") == hashlib.sha256(verifier.encode()).digest()


# -- URLs ------------------------------------------------------------------------------------------


def test_callback_url_and_origin():
    assert pkce.local_origin(3000) == "http://localhost:3000"
    assert pkce.callback_url(3000) == "http://localhost:3000/api/openrouter/oauth/callback"
    assert pkce.callback_url(49152) == "http://localhost:49152/api/openrouter/oauth/callback"


def test_authorize_url_exact():
    url = pkce.authorize_url("https://openrouter.ai", 3000, RFC_CHALLENGE, "st4te")
    assert url == (
        "https://openrouter.ai/auth?"
        "callback_url=http%3A%2F%2Flocalhost%3A3000%2Fapi%2Fopenrouter%2Foauth%2Fcallback"
        "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        "&code_challenge_method=S256"
        "&client_id=convocations"
        "&referrer=http%3A%2F%2Flocalhost%3A3000"
        "&state=st4te"
    )


def test_authorize_url_paste_mode_omits_callback_url_only():
    url = pkce.authorize_url("https://openrouter.ai", 3000, RFC_CHALLENGE, "st4te", paste=True)
    assert url == (
        "https://openrouter.ai/auth?"
        "code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        "&code_challenge_method=S256"
        "&client_id=convocations"
        "&referrer=http%3A%2F%2Flocalhost%3A3000"
        "&state=st4te"
    )
    assert "callback_url" not in url


@pytest.mark.parametrize("base", ["https://openrouter.ai/", "https://openrouter.ai//", "https://openrouter.ai"])
def test_authorize_url_trailing_slash_on_base(base):
    url = pkce.authorize_url(base, 3000, "c", "s")
    assert url.startswith("https://openrouter.ai/auth?")
    assert "//auth" not in url


def test_only_slashes_are_trimmed_from_the_base():
    assert pkce.authorize_url("http://127.0.0.1:8123/fX/", 1, "c", "s").startswith("http://127.0.0.1:8123/fX/auth?")


def test_authorize_url_keeps_base_path_and_port():
    url = pkce.authorize_url("http://127.0.0.1:8123/fake/", 4567, "c", "s")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:8123", "/fake/auth")
    q = dict(parse_qsl(parts.query))
    assert q["callback_url"] == "http://localhost:4567/api/openrouter/oauth/callback"
    assert q["referrer"] == "http://localhost:4567"


@given(
    port=st.integers(1, 65535),
    challenge=st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=43, max_size=43),
    state=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    paste=st.booleans(),
)
def test_authorize_url_query_round_trips(port, challenge, state, paste):
    url = pkce.authorize_url("https://openrouter.ai", port, challenge, state, paste=paste)
    parts = urlsplit(url)
    assert parts.path == "/auth" and parts.fragment == ""
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    expected = [] if paste else [("callback_url", f"http://localhost:{port}/api/openrouter/oauth/callback")]
    expected += [
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("client_id", "convocations"),
        ("referrer", f"http://localhost:{port}"),
        ("state", state),
    ]
    assert pairs == expected


@pytest.mark.parametrize("preferred", [None, 8787])
def test_the_fallback_port_note_says_what_is_known_and_how_to_find_out(preferred):
    """OpenRouter's current docs accept localhost callbacks on any port (older ones: 443 and 3000), and the 409's
    cause is undocumented: the note says so, and what to do if the 409 comes, without claiming it will."""
    note = pkce.fallback_port_note(preferred)
    assert "accepts localhost callbacks on any port" in note and "443 and 3000" in note
    assert note.count("409") == 1 and "If OpenRouter answers a login with HTTP 409" in note
    busy = f"port {preferred}" if preferred else "the preferred port (RCONV_HTTP_PORT, default 3000)"
    assert f"free {busy} (`convctl doctor` names what holds it)" in note
    assert "convctl doctor" in note and "may change at every start" in note
    assert not any(claim in note for claim in ("will refuse", "may refuse", "refuses", "register"))


@pytest.mark.parametrize("doc", ["README.md", "docs/service.md", "docs/protocol.md"])
def test_the_docs_say_of_other_ports_what_the_note_says(doc):
    """The troubleshooting of every document agrees with the note the daemon and doctor print (service.md once
    said that OpenRouter expects the callback on the registered port)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = " ".join((root / doc).read_text().split())
    said = "OpenRouter's current documentation accepts localhost callbacks on any port"
    assert said in " ".join(pkce.fallback_port_note().split()) and said in text
    assert "registered port" not in text
