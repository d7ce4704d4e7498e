"""The HTML a person sees: small, self-contained pages (no scripts, no images, no external resources).

Everything dynamic goes through ``html.escape``; `backticked` commands in our own texts become ``<code>``
after escaping. The one stylesheet is inline and allowed by its hash in the Content-Security-Policy, so
the policy can forbid everything else. The "Link OpenRouter" control is a plain link to the GET start
route, not a form: Chromium applies ``form-action`` to the redirect that follows a form submission, and
that redirect goes to OpenRouter. The two forms (FORMS), "End the login" on the page of an error report
without state and "Finish linking" on the page of a code without state, post to our own origin, and their
pages alone are served with ``form-action 'self'``. Every page works with JavaScript off and never shows a
key.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape

from convocationsd.core.pkce import fallback_port_note
from convocationsd.daemon.controller import OutcomeKind

START_PATH = "/api/openrouter/oauth/start"
END_PATH = "/api/openrouter/oauth/end"
CONFIRM_PATH = "/api/openrouter/oauth/confirm"

STYLE = (
    ":root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--ink:#1d1f23;--muted:#5f6368;--line:#e3e5e8;"
    "--soft:#f1f3f4;--ok:#137333;--okbg:#e6f4ea;--bad:#b3261e;--badbg:#fce8e6;--info:#3c4043;--infobg:#e8eaed;"
    "--accent:#1a73e8;--warnbg:#fef7e0;--warnline:#f9ab00}"
    "@media (prefers-color-scheme:dark){:root{--bg:#17181b;--card:#202226;--ink:#e8eaed;--muted:#9aa0a6;"
    "--line:#34373c;--soft:#2a2c31;--ok:#81c995;--okbg:#1e3a28;--bad:#f28b82;--badbg:#3d2220;--info:#bdc1c6;"
    "--infobg:#2f3136;--accent:#8ab4f8;--warnbg:#3a3220;--warnline:#fdd663}}"
    "*{box-sizing:border-box}"
    "body{font:16px/1.55 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:var(--bg);"
    "color:var(--ink)}"
    "main{max-width:36rem;margin:10vh auto 2rem;padding:2rem 2.25rem;background:var(--card);border-radius:14px;"
    "border:1px solid var(--line);box-shadow:0 2px 10px rgba(0,0,0,.06)}"
    "@media (max-width:40rem){main{margin:0;border-radius:0;border-width:0 0 1px;min-height:100vh}}"
    ".brand{font-size:.8rem;letter-spacing:.06em;text-transform:uppercase;color:var(--muted);margin:0 0 1.25rem}"
    ".head{display:flex;align-items:center;gap:.85rem;margin:0 0 1rem}"
    ".badge{flex:none;width:2.4rem;height:2.4rem;border-radius:50%;display:flex;align-items:center;"
    "justify-content:center;font-size:1.3rem;font-weight:700}"
    ".ok .badge{background:var(--okbg);color:var(--ok)}.bad .badge{background:var(--badbg);color:var(--bad)}"
    ".info .badge{background:var(--infobg);color:var(--info)}"
    "h1{font-size:1.45rem;line-height:1.25;margin:0}.ok h1{color:var(--ok)}.bad h1{color:var(--bad)}"
    "p{margin:.6rem 0}"
    ".todo{background:var(--soft);border-radius:10px;padding:.8rem 1rem;margin:1rem 0}"
    ".todo strong{display:block;font-size:.8rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}"
    ".warn{background:var(--warnbg);border-left:4px solid var(--warnline);border-radius:6px;padding:.7rem 1rem;"
    "margin:1rem 0}"
    "code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;background:var(--soft);"
    "border-radius:4px;padding:.05em .3em}.todo code{background:var(--card)}"
    ".small{color:var(--muted);font-size:.9rem}"
    ".close{margin-top:1.5rem;padding-top:1rem;border-top:1px solid var(--line);color:var(--muted);font-size:.95rem}"
    ".button{display:inline-block;font:inherit;font-weight:600;padding:.65rem 1.3rem;border:0;border-radius:8px;"
    "background:var(--accent);color:#fff;text-decoration:none;margin:.75rem 0 .25rem;cursor:pointer}"
    "@media (prefers-color-scheme:dark){.button{color:#17181b}}"
    ".button:focus-visible{outline:3px solid var(--ink);outline-offset:2px}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1.25rem;margin:1rem 0}"
    "dt{color:var(--muted)}dd{margin:0;font-weight:500}"
    ".pill{display:inline-block;padding:.05rem .6rem;border-radius:999px;font-size:.9rem}"
    ".yes{background:var(--okbg);color:var(--ok)}.no{background:var(--infobg);color:var(--info)}"
)
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'none'; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
FORM_CSP = CSP.replace("form-action 'none'", "form-action 'self'")  # the one page with a form posts to us

# The one form a result page may carry, by its outcome's kind: where it posts, the names of its hidden fields
# (Outcome.form holds their values), its button. http_app reads the posted fields by these names.
FORMS = {
    OutcomeKind.REPORTED: (END_PATH, ("session_id", "error"), "End the login"),
    OutcomeKind.CONFIRM: (CONFIRM_PATH, ("code", "token"), "Finish linking"),
}

CLOSE_TAB = "You can close this tab."
BACKENDS = {"keyring": "OS keyring", "local-encrypted": "Encrypted file"}

_TICKS = re.compile(r"`([^`<>]{1,200})`")


def _text(text: str) -> str:
    """Escaped text, with `backticked` commands shown as code."""
    return _TICKS.sub(r"<code>\1</code>", escape(text))


def _page(title: str, tone: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=referrer content="no-referrer"><meta name=robots content="noindex">'
        f"<title>{escape(title)} - Convocations</title><style>{STYLE}</style></head>"
        f'<body><main class="{tone}"><p class=brand>Convocations</p>{body}</main></body></html>'
    )


def _head(mark: str, title: str) -> str:
    return f"<div class=head><span class=badge aria-hidden=true>{mark}</span><h1>{escape(title)}</h1></div>"


def result_page(
    kind: OutcomeKind,
    title: str,
    message: str,
    hint: str = "",
    code: str | None = None,
    form: tuple[str, ...] | None = None,
) -> str:
    """``code``: the reason code shown on a page that is not a success; ``form``: the values of the hidden
    fields of the kind's form (FORMS), which adds its button."""
    tone, mark = {OutcomeKind.SUCCESS: ("ok", "&#10003;"), OutcomeKind.FAILED: ("bad", "!")}.get(kind, ("info", "i"))
    parts = [_head(mark, title), f"<p>{_text(message)}</p>"]
    closing = CLOSE_TAB
    if kind == OutcomeKind.SUCCESS:
        closing = f"{CLOSE_TAB} The app or terminal that started the login has been told."
        if hint and hint.strip() != CLOSE_TAB:
            parts.append(f"<p>{_text(hint)}</p>")
    elif hint:
        parts.append(f"<div class=todo><strong>What to do</strong>{_text(hint)}</div>")
    if form is not None:
        action, names, label = FORMS[kind]
        fields = "".join(
            f'<input type=hidden name={name} value="{escape(value)}">' for name, value in zip(names, form, strict=True)
        )
        parts.append(
            f'<form method=post action="{action}">{fields}<button class=button type=submit>{label}</button></form>'
        )
    if code and kind != OutcomeKind.SUCCESS:
        parts.append(f'<p class="small">Reason code: <code>{escape(code)}</code></p>')
    parts.append(f"<p class=close>{escape(closing)}</p>")
    return _page(title, tone, "".join(parts))


def status_page(*, linked: bool, backend: str | None, port: int, port_fallback: bool, pending: bool) -> str:
    state = "Linked" if linked else "Not linked"
    pill = f'<span class="pill {"yes" if linked else "no"}">{state}</span>'
    storage = BACKENDS.get(backend or "", backend) if linked else "no key stored"
    login = "waiting for you to approve on OpenRouter" if pending else "none in progress"
    rows = [
        ("OpenRouter account", pill),
        ("Key storage", escape(f"{storage} ({backend})" if linked and backend in BACKENDS else str(storage))),
        ("Login", escape(login)),
        ("Listening on", f"<code>localhost:{int(port)}</code>"),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in rows)
    title = "OpenRouter is linked" if linked else "OpenRouter is not linked"
    parts = [_head("&#10003;" if linked else "i", title), f"<dl>{dl}</dl>"]
    if port_fallback:
        parts.append(
            "<div class=warn>The preferred port (<code>RCONV_HTTP_PORT</code>, default 3000) was busy, so this "
            f"daemon listens on port {int(port)} instead. {_text(fallback_port_note())}</div>"
        )
    if pending:
        label, note = "Continue the login in progress", "Opens OpenRouter for the login that is waiting."
    elif linked:
        label, note = "Link again", "Creates a new key on OpenRouter and replaces the stored one."
    else:
        label, note = "Link OpenRouter", "Opens OpenRouter, where you approve a key for Convocations."
    parts.append(f'<a class=button href="{START_PATH}">{escape(label)}</a>')
    parts.append(f"<p class=small>{escape(note)} Or run <code>convctl oauth start</code> in a terminal.</p>")
    parts.append(f"<p class=close>This page never shows your key. {escape(CLOSE_TAB)}</p>")
    return _page("Status", "ok" if linked else "info", "".join(parts))


def error_page(status: int, message: str, hint: str = "") -> str:
    return result_page(OutcomeKind.FAILED, f"Error {status}", message, hint)
