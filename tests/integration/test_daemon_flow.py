"""The whole login, for real: daemon process + fake OpenRouter + convctl + a subscriber."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.conftest import assert_no_secret, dead_url, follow_callback, next_event, read_auth_url

pytestmark = pytest.mark.asyncio


async def test_full_flow_with_convctl_and_subscriber(daemon, fake):
    sub = await daemon.aclient()
    await sub.call("subscribe")
    proc = daemon.convctl_async("oauth", "start", "--no-browser", "--timeout", "30")
    auth_url = await read_auth_url(proc)
    started = await next_event(sub, "openrouter-auth-started")

    params = fake.last_authorize  # not yet: the browser has not loaded the page
    location = await fake.approve(auth_url)
    params = fake.last_authorize
    assert params["callback_url"] == f"http://localhost:{daemon.port}/api/openrouter/oauth/callback"
    assert params["referrer"] == f"http://localhost:{daemon.port}"
    assert params["client_id"] == "convocations" and params["code_challenge_method"] == "S256"

    status, final_url, html = await follow_callback(location)
    assert status == 200 and "OpenRouter account linked" in html and "close this tab" in html
    assert "code=" not in final_url  # the code left the address bar

    done = await next_event(sub, "openrouter-auth-complete")
    assert done["data"] == {
        "session_id": started["data"]["session_id"],
        "success": True,
        "backend": "local-encrypted",
        "error": None,
        "unsaved_key": False,
    }
    changed = await next_event(sub, "openrouter-key-changed")
    assert changed["data"] == {"stored": True, "backend": "local-encrypted"}

    out, err = await asyncio.to_thread(proc.communicate, timeout=15)
    assert proc.returncode == 0, err
    assert "Linked" in out
    key = fake.issued_keys[-1]
    assert daemon.call("secret.get") == {"key": key}
    st = daemon.call("status")
    assert st["secret"] == {"stored": True, "backend": "local-encrypted"} and st["flow"]["status"] == "succeeded"
    await sub.close()
    assert_no_secret(key, daemon.all_output(), out, err, html, str(st), str(done), str(changed))


async def test_denial_ends_flow_with_access_denied(daemon, fake):
    reply = daemon.call("oauth.start")
    location = await fake.deny(reply["auth_url"])
    status, _, html = await follow_callback(location)
    assert status == 400 and "declined" in html
    flow = daemon.call("status")["flow"]
    assert flow["status"] == "failed" and flow["error"]["code"] == "access_denied"
    assert daemon.call("secret.status") == {"stored": False, "backend": None}


async def test_409_at_authorize_leaves_flow_pending_and_convctl_times_out(daemon, fake):
    fake.config.authorize_409 = True
    proc = daemon.convctl_async("oauth", "start", "--no-browser", "--timeout", "2")
    auth_url = await read_auth_url(proc)
    outcome = await fake.submit(auth_url, "approve")
    assert outcome.status == 409 and "Failed to create or update app" in outcome.body
    _out, err = await asyncio.to_thread(proc.communicate, timeout=15)
    assert proc.returncode == 1
    assert "409" in err and "convctl doctor" in err  # the person is told what the 409 means
    assert "no answer within 2 s" in err
    assert daemon.call("status")["flow"]["error"]["code"] == "cancelled"


@pytest.mark.parametrize(
    "status, message, needle",
    [
        (403, "Authorization code expired", "Codes live 10 minutes"),
        (403, "Invalid code or code_verifier", "rejected the authorization code or its PKCE verifier"),
        (500, "boom", "had a problem while creating the key (HTTP 500)"),
    ],
)
async def test_exchange_errors_end_flow(daemon, fake, status, message, needle):
    fake.config.exchange_status = status
    fake.config.exchange_message = message
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    reply = daemon.call("oauth.start")
    location = await fake.approve(reply["auth_url"])
    code, _, html = await follow_callback(location)
    ev = await next_event(sub, "openrouter-auth-complete")
    assert ev["data"]["success"] is False and ev["data"]["error"]["code"] == "exchange_failed"
    said = ev["data"]["error"]["message"] + " " + ev["data"]["error"]["hint"]
    assert needle in said and message not in said  # our words for this status, never OpenRouter's
    assert code == 400 and "Linking failed" in html
    await sub.close()


async def test_openrouter_down_is_upstream_unreachable(daemon_factory, fake):
    dead = dead_url()
    d = await asyncio.to_thread(daemon_factory, CONVOCATIONS_OPENROUTER_URL=dead)
    reply = d.call("oauth.start")
    location = await fake.approve(reply["auth_url"].replace(dead, fake.url))
    _, _, html = await follow_callback(location)
    flow = d.call("status")["flow"]
    assert flow["error"]["code"] == "upstream_unreachable"
    assert "CONVOCATIONS_OPENROUTER_URL" in flow["error"]["hint"] + html


async def test_flow_timeout(daemon_factory, fake):
    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_FLOW_TIMEOUT_SECONDS="1"
    )
    sub = await d.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    d.call("oauth.start")
    ev = await next_event(sub, "openrouter-auth-complete", timeout=5)
    assert ev["data"]["error"]["code"] == "timeout"
    await sub.close()


async def test_stray_callbacks_leave_the_real_flow_working(daemon, fake):
    cb = f"http://localhost:{daemon.port}/api/openrouter/oauth/callback"
    # none pending
    _, _, html = await follow_callback(cb + "?code=abc&state=x")
    assert "No login is in progress" in html
    reply = daemon.call("oauth.start")
    # wrong state, a code for another verifier (no state), and an error with the wrong state
    _, _, html = await follow_callback(cb + "?code=abc&state=wrong")
    assert "does not belong" in html
    other = fake.issue_code("not-our-challenge-" + "x" * 30)
    _, _, html = await follow_callback(cb + f"?code={other}")
    assert "ignored" in html
    _, _, html = await follow_callback(cb + "?error=access_denied&state=wrong")
    assert "does not belong" in html
    assert daemon.call("status")["flow"]["status"] == "pending"
    # the real callback still works
    location = await fake.approve(reply["auth_url"])
    _, _, html = await follow_callback(location)
    assert "OpenRouter account linked" in html
    # and its code cannot be replayed
    _, _, html = await follow_callback(location)
    assert "No login is in progress" in html or "already used" in html


async def test_join_and_restart(daemon, fake):
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    first = daemon.call("oauth.start")
    again = daemon.call("oauth.start")
    assert again["joined"] is True and again["session_id"] == first["session_id"]
    restarted = daemon.call("oauth.start", {"restart": True})
    assert restarted["joined"] is False and restarted["session_id"] != first["session_id"]
    ev = await next_event(sub, "openrouter-auth-complete")
    assert ev["data"]["session_id"] == first["session_id"] and ev["data"]["error"]["code"] == "replaced"
    assert ev["data"]["error"]["message"].startswith("The login was replaced by a new login started elsewhere")
    # the old flow's approval no longer completes anything; the new one does
    location = await fake.approve(first["auth_url"])
    _, _, html = await follow_callback(location)
    assert "does not belong" in html
    location = await fake.approve(restarted["auth_url"])
    _, _, html = await follow_callback(location)
    assert "OpenRouter account linked" in html
    await sub.close()


async def test_http_routes(daemon, fake):
    base = daemon.base
    async with aiohttp.ClientSession() as s:
        async with s.get(
            base + "/api/openrouter/oauth/start", headers={"Sec-Fetch-Site": "none"}, allow_redirects=False
        ) as r:
            assert r.status == 302 and r.headers["Location"].startswith(fake.url + "/auth?")
        async with s.post(base + "/api/openrouter/oauth/start", json={}, headers={"Origin": base}) as r:
            body = await r.json()
            assert (
                r.status == 200
                and body["joined"] is True
                and set(body) == {"session_id", "auth_url", "callback_url", "expires_at", "joined"}
            )
        async with s.post(base + "/api/openrouter/oauth/start", headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with s.get(
            base + "/api/openrouter/oauth/start", headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False
        ) as r:
            assert r.status == 403
        async with s.get(base + "/api/status", headers={"Host": f"evil.example:{daemon.port}"}) as r:
            assert r.status == 403
        async with s.get(base + "/api/status") as r:
            st = await r.json()
            assert r.status == 200 and st["port"] == daemon.port and r.headers["Cache-Control"] == "no-store"
            # An allow-list, as protocol.md lists it: what the socket's status has beyond it stays there.
            shown, kept = documented_http_status()
            assert set(st) == shown
            assert "auth_url" not in (st["flow"] or {})
            assert set(daemon.call("status")) - shown == kept


def documented_http_status() -> tuple[set[str], set[str]]:
    """protocol.md's row for GET /api/status: (the fields of IPC status it shows, the ones that stay on the
    socket)."""
    import re

    from tests.conftest import ROOT

    row = next(
        line for line in (ROOT / "docs" / "protocol.md").read_text().splitlines() if "| `GET /api/status` |" in line
    )
    shown, _, kept = row.split("|")[3].partition(" only: ")[2].partition("; the rest")
    names = lambda text: set(re.findall(r"`(\w+)`", text)) - {"auth_url"}  # noqa: E731
    return names(shown), names(kept)


async def test_the_http_status_allow_list_is_the_documented_one():
    from convocationsd.daemon.http_app import HTTP_STATUS_FIELDS

    shown, kept = documented_http_status()
    assert set(HTTP_STATUS_FIELDS) == shown and not shown & kept
    assert {"account", "settings", "last_store", "service", "restart_needed", "unsaved_key"} <= kept


async def test_sigterm_cancels_flow_removes_socket_exits_zero(daemon):
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    daemon.call("oauth.start")
    rc = await asyncio.to_thread(daemon.stop, signal.SIGTERM)
    ev = await next_event(sub, "openrouter-auth-complete")
    assert ev["data"]["error"]["code"] == "cancelled"
    assert rc == 0 and not daemon.socket.exists()
    await sub.close()


async def test_storage_failure_of_any_kind_ends_the_flow(daemon, fake):
    """A config.toml that stopped parsing mid-login (a ConfigError, not a SecretStoreError) still ends the
    flow with storage_failed, says why, and leaves nothing stuck: the next start is a new login."""
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    reply = daemon.call("oauth.start")
    daemon.config_dir.mkdir(parents=True, exist_ok=True)
    (daemon.config_dir / "config.toml").write_text("this is = = not toml\n")
    status, _, html = await follow_callback(await fake.approve(reply["auth_url"]))
    ev = await next_event(sub, "openrouter-auth-complete")
    assert ev["data"]["error"]["code"] == "storage_failed" and "config.toml" in ev["data"]["error"]["message"]
    assert status == 400 and "could not be saved" in html
    assert daemon.call("oauth.start")["joined"] is False
    assert (daemon.config_dir / "config.toml").read_text() == "this is = = not toml\n"  # never overwritten
    await sub.close()
    assert_no_secret(fake.issued_keys[-1], daemon.all_output(), html, str(ev))


async def test_a_rejected_stray_code_keeps_the_flow_and_its_timer(daemon_factory, fake):
    d = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_FLOW_TIMEOUT_SECONDS="2"
    )
    sub = await d.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    d.call("oauth.start")
    stray = fake.issue_code("not-our-challenge-" + "y" * 30)
    fake.config.exchange_delay = 2.5  # the exchange outlives the flow's deadline, then gives the flow back
    _, _, html = await follow_callback(f"{d.base}/api/openrouter/oauth/callback?code={stray}")
    assert "ignored" in html
    ev = await next_event(sub, "openrouter-auth-complete", timeout=10)
    assert ev["data"]["error"]["code"] == "timeout"
    await sub.close()


async def test_paste_mode_wrong_code_then_right_one(daemon, fake):
    from convocationsd.core.errors import RemoteError

    reply = daemon.call("oauth.start", {"paste": True})
    code = await fake.approve_headless(reply["auth_url"])
    exchange = lambda code: daemon.call("oauth.exchange", {"code": code, "session_id": reply["session_id"]})  # noqa: E731
    with pytest.raises(RemoteError, match="did not accept that code"):
        await asyncio.to_thread(exchange, "not-the-code")  # the fake answers on this loop: do not block it
    assert daemon.call("status")["flow"]["status"] == "pending"
    done = await asyncio.to_thread(exchange, code)
    assert done["success"] is True and done["error"] is None
    assert daemon.call("secret.get") == {"key": fake.issued_keys[-1]}
