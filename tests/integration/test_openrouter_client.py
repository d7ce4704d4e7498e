"""OpenRouterClient against the fake OpenRouter on a spare port: every outcome maps to the contract's error
code, with a hint, and no text anywhere carries the code, the verifier or the key."""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import logging
import socket
import ssl
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from convocationsd.core import pkce
from convocationsd.core.errors import ConvError, KeyRejected, UpstreamError
from convocationsd.daemon.openrouter import EXCHANGE_PATH, ExchangeResult, OpenRouterClient
from convocationsd.testing.fake_openrouter import FakeConfig, FakeOpenRouter
from tests.conftest import ManualClock, dead_url
from tests.helpers.openrouter_sdk import exchange_body_problem


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock):
    async with FakeOpenRouter(clock=clock, check_exchange=exchange_body_problem) as server:
        yield server
    assert server.request_problems == []


@pytest.fixture
async def client(fake):
    async with OpenRouterClient(fake.url, timeout=5) as c:
        yield c


@pytest.fixture(autouse=True)
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def login(fake: FakeOpenRouter) -> tuple[str, str]:
    """(code, verifier) of an approved login."""
    verifier = pkce.make_verifier()
    return fake.issue_code(pkce.s256_challenge(verifier)), verifier


def assert_no_secrets(caplog, *secrets: str, error: BaseException | None = None) -> None:
    texts = [record.getMessage() for record in caplog.records]
    texts += [caplog.text]
    if error is not None:
        texts += [str(error), repr(error), error.message, error.hint, str(error.flow_error.to_dict())]
        texts += [str(error.__cause__), repr(error.__cause__)]
    for secret in secrets:
        assert len(secret) >= 16
        for text in texts:
            assert secret not in text


async def failed_exchange(client, code: str, verifier: str) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await client.exchange(code, verifier)
    error = caught.value
    assert isinstance(error, ConvError)
    assert error.flow_error.message == error.message and error.flow_error.hint == error.hint
    assert error.message and error.hint
    return error


async def test_full_login_through_the_authorize_page(fake, client, all_logs):
    verifier = pkce.make_verifier()
    auth_url = pkce.authorize_url(fake.url, 3000, pkce.s256_challenge(verifier), "state-1")
    location = await fake.approve(auth_url)
    code = parse_qs(urlsplit(location).query)["code"][0]

    result = await client.exchange(code, verifier)

    assert isinstance(result, ExchangeResult)
    assert result.key == fake.issued_keys[-1] and result.user_id == "user_fake"
    assert result.key not in repr(result)
    assert fake.exchanges[-1].code_challenge_method == "S256"
    assert_no_secrets(all_logs, code, verifier, result.key)
    info = await client.key_info(result.key)
    assert info["label"] and info["expires_at"] is None
    assert_no_secrets(all_logs, code, verifier, result.key)


async def test_the_fake_holds_the_exchange_body_to_the_sdks_request_model(fake, client):
    """Every exchange in this module is checked inside the fake (the fixture's teardown asserts no problem);
    a body the daemon must never send is answered 400 and named, without the code or the verifier."""
    code, verifier = login(fake)
    changed = {"code": code, "code_verifier": verifier, "code_challenge_method": "sha256"}
    status, _ = await client._request("POST", EXCHANGE_PATH, json=changed)
    assert status == 400 and len(fake.request_problems) == 1
    problem = fake.request_problems.pop()  # this test's own problem, not the daemon's
    assert "code_challenge_method" in problem and code not in problem and verifier not in problem
    assert (await client.exchange(*login(fake))).key == fake.issued_keys[-1]


@pytest.mark.parametrize(
    ("status", "message", "expected_code", "rejected", "phrase"),
    [
        (400, None, "exchange_failed", False, "HTTP 400"),
        (403, None, "exchange_failed", True, "HTTP 403"),
        (403, "Authorization code expired", "exchange_failed", False, "10 minutes"),
        (405, None, "exchange_failed", False, "CONVOCATIONS_OPENROUTER_URL"),
        (409, None, "app_conflict", False, "RCONV_HTTP_PORT"),
        (500, None, "exchange_failed", False, "try again in a few minutes"),
        (502, None, "exchange_failed", False, "try again in a few minutes"),
        (503, None, "exchange_failed", False, "try again in a few minutes"),
        (418, None, "exchange_failed", False, "HTTP 418"),
    ],
)
async def test_forced_exchange_status_maps_to_event_code(
    fake, client, all_logs, status, message, expected_code, rejected, phrase
):
    fake.config = FakeConfig(exchange_status=status, exchange_message=message)
    code, verifier = login(fake)

    error = await failed_exchange(client, code, verifier)

    assert error.flow_error.code == expected_code
    assert error.status == status
    assert error.code_rejected is rejected
    assert phrase in str(error)
    assert len(fake.exchanges) == 1, "never retried"
    assert_no_secrets(all_logs, code, verifier, error=error)


async def test_unknown_code_is_rejected_so_the_flow_can_stay_alive(fake, client, all_logs):
    _, verifier = login(fake)
    error = await failed_exchange(client, "stray-code-from-someone-else", verifier)
    assert error.flow_error.code == "exchange_failed" and error.status == 403 and error.code_rejected
    assert_no_secrets(all_logs, verifier, "stray-code-from-someone-else", error=error)


async def test_wrong_verifier_is_rejected(fake, client, all_logs):
    code, verifier = login(fake)
    other = pkce.make_verifier()
    error = await failed_exchange(client, code, other)
    assert error.code_rejected and error.status == 403
    assert_no_secrets(all_logs, code, verifier, other, error=error)


async def test_reused_code_is_rejected(fake, client, all_logs):
    code, verifier = login(fake)
    key = (await client.exchange(code, verifier)).key
    error = await failed_exchange(client, code, verifier)
    assert error.code_rejected
    assert_no_secrets(all_logs, code, verifier, key, error=error)


async def test_expired_code_says_to_start_again(fake, client, clock, all_logs):
    code, verifier = login(fake)
    clock.now += 601
    error = await failed_exchange(client, code, verifier)
    assert error.flow_error.code == "exchange_failed" and not error.code_rejected
    assert "10 minutes" in error.hint and "convctl oauth start" in error.hint
    assert_no_secrets(all_logs, code, verifier, error=error)


async def test_timeout_is_upstream_unreachable_and_bounded(fake, all_logs):
    fake.config.exchange_delay = 30  # unbounded, the exchange would succeed after 30 s
    code, verifier = login(fake)
    async with OpenRouterClient(fake.url, timeout=0.3) as client:
        error = await failed_exchange(client, code, verifier)
    assert error.flow_error.code == "upstream_unreachable" and error.status is None
    assert "did not answer within 0.3 s" in error.message
    assert_no_secrets(all_logs, code, verifier, error=error)


async def test_a_longer_timeout_after_reload_is_not_capped_by_the_session(fake):
    async with OpenRouterClient(fake.url, timeout=0.3) as client:
        await client.exchange(*login(fake))  # the session now exists, made while the timeout was 0.3 s
        client.timeout = 5.0  # what SIGHUP does after exchange_timeout_seconds changed
        fake.config.exchange_delay = 1.0
        assert (await client.exchange(*login(fake))).key


async def test_connection_refused_names_the_url_and_the_setting(all_logs):
    url = dead_url()
    verifier = pkce.make_verifier()
    async with OpenRouterClient(url, timeout=5) as client:
        error = await failed_exchange(client, "a-code-that-goes-nowhere", verifier)
    assert error.flow_error.code == "upstream_unreachable" and error.status is None
    assert url in error.message
    assert "CONVOCATIONS_OPENROUTER_URL" in error.hint
    assert_no_secrets(all_logs, "a-code-that-goes-nowhere", verifier, error=error)


async def test_credentials_in_base_url_are_not_shown(all_logs):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenRouterClient(f"http://user:hunter2-password@127.0.0.1:{port}", timeout=5) as client:
        error = await failed_exchange(client, "code-code-code-code", pkce.make_verifier())
    assert "hunter2-password" not in str(error)
    assert "hunter2-password" not in all_logs.text


@pytest.mark.parametrize(
    ("switch", "phrase"),
    [
        ({"exchange_not_json": True}, "not JSON"),
        ({"exchange_missing_key": True}, "no key"),
        ({"exchange_key_length": 2000}, "implausibly long"),
        ({"exchange_key_length": 0}, "empty"),
        ({"exchange_key_length": 100_000}, "larger than"),
    ],
)
async def test_unusable_200_is_exchange_failed(fake, client, all_logs, switch, phrase):
    fake.config.update(switch)
    code, verifier = login(fake)
    error = await failed_exchange(client, code, verifier)
    assert error.flow_error.code == "exchange_failed" and not error.code_rejected
    assert phrase in error.message
    assert_no_secrets(all_logs, code, verifier, error=error)


async def test_long_but_sane_key_is_accepted(fake, client):
    fake.config.exchange_key_length = 200
    code, verifier = login(fake)
    assert len((await client.exchange(code, verifier)).key) == 200


async def test_revoked_key_raises_key_rejected(fake, client, all_logs):
    key = fake.issue_key()
    assert (await client.key_info(key))["is_free_tier"] is True
    fake.revoke(key)
    with pytest.raises(KeyRejected) as caught:
        await client.key_info(key)
    assert caught.value.status == 401 and caught.value.flow_error.code == "key_rejected"
    assert_no_secrets(all_logs, key, error=caught.value)


async def test_key_info_server_error_is_not_key_rejected(fake, client, all_logs):
    key = fake.issue_key()
    fake.config.key_info_status = 500
    with pytest.raises(UpstreamError) as caught:
        await client.key_info(key)
    assert not isinstance(caught.value, KeyRejected)
    assert caught.value.status == 500 and caught.value.flow_error.code == "key_info_failed"
    assert_no_secrets(all_logs, key, error=caught.value)


def sessions_besides(known: list) -> list:
    """aiohttp client sessions alive in this process, other than ``known``; held, so that one dropped unclosed
    (aiohttp then warns "Unclosed client session") stays here to be seen open."""
    import aiohttp

    return [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not any(o is k for k in known)]


async def test_session_is_lazy_and_closed(fake):
    """No HTTP session until the first request; close() closes it, closing twice is harmless, and a closed
    client opens a new session when it is used again."""
    others = sessions_besides([])
    client = OpenRouterClient(fake.url + "/")
    assert sessions_besides(others) == []
    await client.exchange(*login(fake))
    [first] = sessions_besides(others)
    assert not first.closed
    await client.close()
    assert first.closed
    await client.close()
    assert (await client.exchange(*login(fake))).key in fake.issued_keys
    [second] = sessions_besides([*others, first])
    await client.close()
    assert second.closed


async def test_tls_to_a_plain_http_server_is_upstream_unreachable(fake, all_logs):
    async with OpenRouterClient(fake.url.replace("http://", "https://"), timeout=5) as client:
        error = await failed_exchange(client, "code-over-broken-tls", pkce.make_verifier())
    assert error.flow_error.code == "upstream_unreachable" and "TLS" in error.message


def self_signed_context(tmp_path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_untrusted_certificate_is_upstream_unreachable(tmp_path, all_logs):
    async def hang_up(reader, writer):
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=self_signed_context(tmp_path))
    port = server.sockets[0].getsockname()[1]
    try:
        async with OpenRouterClient(f"https://127.0.0.1:{port}", timeout=5) as client:
            error = await failed_exchange(client, "code-to-an-impostor", pkce.make_verifier())
    finally:
        server.close()
        await server.wait_closed()
    assert error.flow_error.code == "upstream_unreachable"
    assert "certificate is not trusted" in error.message
