"""The HTML a person sees: small, self-contained pages (no scripts, no external resources).

Everything dynamic goes through ``html.escape``. The one stylesheet is inline and allowed by its hash in
the Content-Security-Policy, so the policy can forbid everything else.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

STYLE = (
    "body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f5f6f8;color:#1d1f23}"
    "main{max-width:34rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:12px;"
    "box-shadow:0 1px 4px rgba(0,0,0,.08)}"
    "h1{font-size:1.4rem;margin:0 0 .75rem}.ok h1{color:#137333}.bad h1{color:#b3261e}.info h1{color:#5f6368}"
    "p{margin:.5rem 0}.hint{background:#f1f3f4;border-radius:8px;padding:.75rem 1rem}"
    "code{font-family:ui-monospace,monospace;font-size:.95em}.small{color:#5f6368;font-size:.9rem}"
    "button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:8px;background:#1a73e8;color:#fff;cursor:pointer}"
    "dl{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem}dt{color:#5f6368}dd{margin:0}"
)
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'none'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def _page(title: str, tone: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} - Convocations</title><style>{STYLE}</style></head>"
        f'<body><main class="{tone}">{body}</main></body></html>'
    )


def result_page(kind: str, title: str, message: str, hint: str = "", code: str | None = None) -> str:
    tone = {"success": "ok", "failed": "bad"}.get(kind, "info")
    parts = [f"<h1>{escape(title)}</h1>", f"<p>{escape(message)}</p>"]
    if hint:
        parts.append(f'<p class="hint">{escape(hint)}</p>')
    if code and kind != "success":
        parts.append(f'<p class="small">Reason: <code>{escape(code)}</code></p>')
    parts.append('<p class="small">You can close this tab.</p>')
    return _page(title, tone, "".join(parts))


def status_page(*, linked: bool, backend: str | None, port: int, port_fallback: bool, pending: bool) -> str:
    state = "Linked" if linked else "Not linked"
    rows = [("OpenRouter account", state), ("Key storage", backend or "none"), ("Listening on", f"localhost:{port}")]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    parts = [f"<h1>Convocations: {escape(state.lower())}</h1>", f"<dl>{dl}</dl>"]
    if port_fallback:
        parts.append(
            '<p class="hint">Port 3000 was busy, so this daemon listens on another port. OpenRouter may refuse '
            "logins from it (HTTP 409): free port 3000 and restart the daemon.</p>"
        )
    label = "Continue the login in progress" if pending else ("Link again" if linked else "Link OpenRouter")
    parts.append(f'<form method=get action="/api/openrouter/oauth/start"><button>{escape(label)}</button></form>')
    parts.append('<p class="small">This page never shows your key. You can close this tab.</p>')
    return _page("Status", "info", "".join(parts))


def error_page(status: int, message: str, hint: str = "") -> str:
    return result_page("failed", f"Error {status}", message, hint)
