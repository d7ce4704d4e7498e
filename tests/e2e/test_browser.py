"""The person's side in a real browser: headless Chromium (Debian's) driven by Playwright against the daemon
process and the fake OpenRouter. Screenshots of every page a person sees go to test-artifacts/."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, assert_no_secret, hold_port, next_event, read_auth_url

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None


@pytest.fixture
async def browser():
    if async_playwright is None:
        pytest.skip("playwright (Python) is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",  # CI runs as root
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        try:
            yield b
        finally:
            await b.close()


class Person:
    """One browser context; records every response body so tests can prove no key ever reached a page."""

    def __init__(self, context) -> None:
        self.context = context
        self.bodies: list[str] = []
        self.external: list[str] = []

    @classmethod
    async def open(
        cls, browser, *, javascript: bool = True, allowed_hosts: tuple[str, ...] = (), dark: bool = False
    ) -> Person:
        context = await browser.new_context(
            java_script_enabled=javascript,
            viewport={"width": 900, "height": 640},
            color_scheme="dark" if dark else "light",
        )
        person = cls(context)
        context.on("response", person._on_response)
        context.on("request", person._on_request(allowed_hosts))
        person.page = await context.new_page()
        return person

    def _on_request(self, allowed: tuple[str, ...]):
        def record(request) -> None:
            host = re.sub(r"^https?://([^/]+).*$", r"\1", request.url)
            if not any(host == a for a in allowed):
                self.external.append(request.url)

        return record

    async def _on_response(self, response) -> None:
        try:
            self.bodies.append(await response.text())
        except Exception:  # redirects have no body
            pass

    async def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        return path

    async def text(self) -> str:
        return await self.page.inner_text("body")

    async def close(self) -> None:
        await self.context.close()


def hosts(daemon, fake) -> tuple[str, ...]:
    return (f"localhost:{daemon.port}", f"127.0.0.1:{fake.port}")


async def check_our_page_headers(page) -> None:
    """Our HTML pages: no caching, no referrer, a CSP that forbids scripts and outside resources."""
    response = await page.reload()
    headers = response.headers
    assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp


async def test_approve_via_convctl(browser, daemon, fake):
    sub = await daemon.aclient()
    await sub.call("subscribe")
    proc = daemon.convctl_async("oauth", "start", "--no-browser", "--timeout", "60")
    auth_url = await read_auth_url(proc)
    person = await Person.open(browser, allowed_hosts=hosts(daemon, fake))
    page = person.page

    await page.goto(auth_url)
    assert "Authorize Convocations?" in await person.text()
    await person.shot("01-openrouter-authorize")
    await page.click("#approve")
    await page.wait_for_url(re.compile(r"/api/openrouter/oauth/result/"))
    body = await person.text()
    assert "OpenRouter account linked" in body and "close this tab" in body
    assert "code=" not in page.url  # the code left the address bar
    assert await page.title() == "OpenRouter account linked - Convocations"
    await person.shot("02-result-linked")

    done = await next_event(sub, "openrouter-auth-complete")
    assert done["data"]["success"] is True and done["data"]["backend"] == "local-encrypted"
    out, err = await asyncio.to_thread(proc.communicate, None, 20)
    assert proc.returncode == 0, err and "Linked" in out
    key = fake.issued_keys[-1]
    assert daemon.call("secret.get") == {"key": key}

    # the status page now says linked, and shows the account but never the key
    await page.goto(f"http://localhost:{daemon.port}/")
    status_text = await person.text()
    assert "Linked" in status_text and "local-encrypted" in status_text
    await person.shot("03-status-linked")
    await check_our_page_headers(page)

    history = [await page.evaluate("() => document.documentElement.outerHTML")]
    assert_no_secret(key, *person.bodies, *history, out, err, daemon.all_output())
    assert person.external == []
    await person.close()
    await sub.close()


async def test_link_button_on_status_page_without_javascript(browser, daemon, fake):
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    person = await Person.open(browser, javascript=False, allowed_hosts=hosts(daemon, fake))
    page = person.page

    await page.goto(f"http://localhost:{daemon.port}/")
    text = await person.text()
    assert "Not linked" in text and "close this tab" in text
    await person.shot("04-status-not-linked")
    await page.click("text=Link OpenRouter")  # a plain form: no script needed
    await page.wait_for_url(re.compile(r"/auth\?"))
    assert fake.last_authorize["callback_url"] == f"http://localhost:{daemon.port}/api/openrouter/oauth/callback"
    await page.click("#approve")
    await page.wait_for_url(re.compile(r"/api/openrouter/oauth/result/"))
    body = await person.text()
    assert "OpenRouter account linked" in body and "close this tab" in body
    await person.shot("05-result-linked-no-js")

    done = await next_event(sub, "openrouter-auth-complete")
    assert done["data"]["success"] is True
    key = fake.issued_keys[-1]
    assert daemon.call("secret.get") == {"key": key}
    assert_no_secret(key, *person.bodies)
    assert person.external == []
    await person.close()
    await sub.close()


async def test_denial(browser, daemon, fake):
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    reply = daemon.call("oauth.start")
    person = await Person.open(browser, allowed_hosts=hosts(daemon, fake))
    page = person.page
    await page.goto(reply["auth_url"])
    await page.click("#deny")
    await page.wait_for_url(re.compile(r"/api/openrouter/oauth/result/"))
    body = await person.text()
    assert "Linking failed" in body and "declined" in body
    assert "convctl oauth start" in body and "close this tab" in body
    assert "access_denied" in body
    await person.shot("06-result-denied")
    done = await next_event(sub, "openrouter-auth-complete")
    assert done["data"]["error"]["code"] == "access_denied"
    assert daemon.call("secret.status") == {"stored": False, "backend": None}
    assert person.external == []
    await person.close()
    await sub.close()


async def test_409_on_a_fallback_port(browser, daemon_factory, fake):
    """Port taken on ::1 (a dev server), the daemon falls back, OpenRouter answers 409: the person sees the
    warning on the status page, OpenRouter's 409 on approve, and `convctl doctor` says what is known and what to do."""
    holder, port = hold_port("::1")
    try:
        d = await asyncio.to_thread(
            daemon_factory,
            CONVOCATIONS_OPENROUTER_URL=fake.url,
            RCONV_HTTP_PORT=str(port),
            CONVOCATIONS_ALLOW_PORT_FALLBACK="1",  # a chosen port that is busy is an error without it
        )
        assert d.call("status")["port_fallback"] is True
        fake.config.authorize_409 = True
        proc = d.convctl_async("oauth", "start", "--no-browser", "--timeout", "60")
        auth_url = await read_auth_url(proc)

        person = await Person.open(browser, allowed_hosts=(f"localhost:{d.port}", f"127.0.0.1:{fake.port}"))
        page = person.page
        await page.goto(f"http://localhost:{d.port}/")
        text = await person.text()
        assert "was busy" in text and "409" in text
        assert "Continue the login in progress" in text
        await person.shot("07-status-fallback-port")

        await page.goto(auth_url)
        await page.click("#approve")
        await page.wait_for_load_state()
        text = await person.text()
        assert "Failed to create or update app" in text and "409" in text
        await person.shot("08-openrouter-409")

        doctor = await asyncio.to_thread(d.convctl, "doctor")
        assert doctor.returncode == 1
        assert "409" in doctor.stdout and f"free port {port} (`convctl doctor` names what holds it)" in doctor.stdout
        assert re.search(rf"\[::1\]:{port} is held by python\S* \(pid {holder.pid}", doctor.stdout)

        proc.send_signal(__import__("signal").SIGINT)
        _out, err = await asyncio.to_thread(proc.communicate, None, 15)
        assert "convctl doctor" in err  # convctl told the person where to look when the 409 shows
        assert d.call("status")["flow"]["error"]["code"] == "cancelled"
        await person.close()
    finally:
        holder.kill()
        holder.wait()


async def test_stray_and_expired_pages(browser, daemon, fake):
    person = await Person.open(browser, allowed_hosts=hosts(daemon, fake))
    page = person.page
    await page.goto(f"http://localhost:{daemon.port}/api/openrouter/oauth/callback?code=stray&state=x")
    text = await person.text()
    assert "ignored" in text.lower() and "close this tab" in text
    await person.shot("09-result-stray-callback")
    await page.goto(f"http://localhost:{daemon.port}/api/openrouter/oauth/result/nope")
    assert "expired" in (await person.text())
    await person.close()
    # the same pages in dark mode (prefers-color-scheme), for the record
    person = await Person.open(browser, allowed_hosts=hosts(daemon, fake), dark=True)
    await person.page.goto(f"http://localhost:{daemon.port}/")
    await person.shot("10-status-dark")
    await person.close()


def test_artifacts_dir_is_ignored_by_git():
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    import subprocess

    done = subprocess.run([git, "check-ignore", "-q", str(ARTIFACTS / "x.png")], cwd=ARTIFACTS.parent)
    assert done.returncode == 0


async def test_stateless_error_page_ends_the_login_from_its_button(browser, daemon, fake):
    """A page sent the browser to the callback with ``?error=`` and no state: the login goes on; the page says
    OpenRouter reported an error, and its "End the login" button (a same-origin form post) ends it."""
    sub = await daemon.aclient()
    await sub.call("subscribe", {"events": ["openrouter-auth-complete"]})
    reply = daemon.call("oauth.start")
    person = await Person.open(browser, javascript=False, allowed_hosts=hosts(daemon, fake))
    page = person.page
    posted: list[dict] = []

    async def record(request) -> None:
        if request.method == "POST":
            posted.append(await request.all_headers())

    person.context.on("request", record)
    await page.goto(
        f"http://localhost:{daemon.port}/api/openrouter/oauth/callback?error=access_denied&error_description=EVIL"
    )
    text = await person.text()
    assert "OpenRouter reported an error" in text and "still waiting" in text and "EVIL" not in text
    assert daemon.call("status")["flow"]["status"] == "pending"
    await person.shot("11-result-stateless-error")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    text = await person.text()
    assert "Linking failed" in text and "declined" in text, (text, posted)
    await person.shot("12-result-ended-from-button")
    done = await next_event(sub, "openrouter-auth-complete")
    assert done["data"]["session_id"] == reply["session_id"] and done["data"]["error"]["code"] == "access_denied"
    # Chromium's own fetch metadata for our form (the page sends no referrer, hence Origin: null)
    assert posted[-1]["sec-fetch-site"] == "same-origin" and posted[-1]["origin"] in ("null", daemon.base)
    assert person.external == []
    await person.close()
    await sub.close()


async def test_a_code_without_state_is_linked_by_the_persons_button(browser, daemon_factory, fake):
    """With allow_stateless_callbacks and an OpenRouter that sends no state back, the person approves and
    lands on a page asking to finish linking; its button (a same-origin form post) links the account."""
    daemon = await asyncio.to_thread(
        daemon_factory, CONVOCATIONS_OPENROUTER_URL=fake.url, CONVOCATIONS_ALLOW_STATELESS_CALLBACKS="1"
    )
    fake.config.echo_state = False
    reply = daemon.call("oauth.start")
    person = await Person.open(browser, javascript=False, allowed_hosts=hosts(daemon, fake))
    page = person.page
    posted: list[dict] = []

    async def record(request) -> None:
        if request.method == "POST" and "/api/openrouter/oauth/confirm" in request.url:
            posted.append(await request.all_headers())

    person.context.on("request", record)
    await page.goto(reply["auth_url"])
    await page.click("#approve")
    await page.wait_for_url(re.compile(r"/api/openrouter/oauth/result/"))
    text = await person.text()
    assert "Finish linking your OpenRouter account?" in text and "another web page" in text, text
    assert daemon.call("status")["flow"]["status"] == "pending"
    await person.shot("13-result-finish-linking")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert "OpenRouter account linked" in await person.text()
    assert daemon.call("secret.get") == {"key": fake.issued_keys[-1]}
    assert posted and posted[-1]["sec-fetch-site"] == "same-origin" and posted[-1]["origin"] in ("null", daemon.base)
    assert person.external == []
    assert_no_secret(fake.issued_keys[-1], *person.bodies)
    await person.close()
