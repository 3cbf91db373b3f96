"""The HTML pages the middleware answers with: error pages and the logout confirmation.

Owns: the page for each refusal code (a title that names what happened, the reason, what the
user can do, a link back to the app and, where it helps, a link that starts the login again),
the ``GET /logout`` confirmation form, and the headers every page carries (a CSP that allows
only the page's own inline style, by hash; ``no-store``; ``no-referrer``; ``nosniff``; no
framing). Pages never show a code, state, token or secret: the only request-derived text is
the refusal's description, escaped.

Must not import: the rest of the middleware (pure functions over strings).
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Final

__all__ = ["PAGE_HEADERS", "error_page", "logout_page", "title_of"]

_STYLE: Final = (
    "body{font:16px/1.55 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;"
    "background:#f5f7fa;color:#1d232a}"
    "main{max-width:34rem;margin:3rem auto;padding:1.6rem 1.6rem 1.2rem;background:#fff;"
    "border:1px solid #d8dee4;border-radius:10px}"
    "@media (max-width:40rem){main{margin:1rem;padding:1.2rem}}"
    "h1{font-size:1.35rem;margin:0 0 .8rem}"
    "p{margin:.6rem 0}.what{color:#57606a}"
    ".code{font:.85rem ui-monospace,monospace;color:#57606a}"
    "code{font-family:ui-monospace,monospace}"
    ".actions{margin-top:1.2rem;display:flex;flex-wrap:wrap;gap:.6rem}"
    ".button{display:inline-block;padding:.5rem 1.1rem;border-radius:6px;border:1px solid "
    "#1f6feb;background:#1f6feb;color:#fff;text-decoration:none;font:inherit;cursor:pointer}"
    ".button.secondary{background:#fff;color:#1f6feb}"
    ".badge{display:inline-block;font:.8rem ui-monospace,monospace;padding:.1rem .5rem;"
    "border-radius:999px;background:#ffebe9;color:#cf222e;margin-bottom:.6rem}"
    ".badge.ok{background:#dafbe1;color:#1a7f37}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

#: Headers of every HTML page the middleware writes.
PAGE_HEADERS: Final = (
    ("content-type", "text/html; charset=utf-8"),
    (
        "content-security-policy",
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
)

# code -> (title, what the user can do). The description (what went wrong) comes with the
# refusal; the JSON answer carries the same code and description.
_START_AGAIN = (
    "Start the sign-in again from the app. If it happens every time, tell the app's team."
)
_CATALOG: Final[dict[str, tuple[str, str]]] = {
    "state_missing": ("This sign-in link is incomplete", _START_AGAIN),
    "state_mismatch": (
        "This sign-in was not started here",
        "The sign-in must finish in the browser tab that started it. A link from someone "
        "else, or a bookmark of the provider's page, cannot be used. Start the sign-in again.",
    ),
    "state_expired": (
        "This sign-in took too long",
        "For your safety a sign-in must finish within a few minutes. Start it again.",
    ),
    "tenant_mismatch": ("This sign-in belongs to another workspace", _START_AGAIN),
    "duplicate_parameter": ("The sign-in answer is malformed", _START_AGAIN),
    "invalid_request": ("The sign-in answer is malformed", _START_AGAIN),
    "authorization_denied": (
        "The provider did not grant access",
        "If you cancelled, nothing has changed. To connect, start the sign-in again and "
        "approve the request at the provider.",
    ),
    "issuer_mismatch": (
        "Sign-in refused for your safety",
        "The answer did not come from the provider this sign-in was sent to. Start again; if "
        "it keeps happening, tell the app's team.",
    ),
    "issuer_missing": (
        "Sign-in refused for your safety",
        "The provider did not identify itself in its answer. Tell the app's team.",
    ),
    "exchange_failed": (
        "The sign-in could not be completed",
        "The provider did not accept this sign-in. Start again; if it fails again, the app's "
        "team can find the reason in the server log.",
    ),
    "provider_unavailable": (
        "The provider cannot be reached",
        "Nothing is wrong with your account. Try again in a minute.",
    ),
    "provider_error": (
        "The provider refused to start the sign-in",
        "Try again later. The app's team can find the reason in the server log.",
    ),
    "store_unavailable": (
        "The app cannot sign you in right now",
        "The app cannot reach its token store. Nothing is wrong with your account: try again "
        "in a minute. If it lasts, tell the app's team (the server log names the store).",
    ),
    "method_not_allowed": (
        "This address does not take this kind of request",
        "Use the app's own buttons and links.",
    ),
    "csrf_failed": (
        "Sign-out refused",
        "The request did not come from this app's own page, so it was refused to protect you. "
        "You are still signed in. Use the app's Log out button.",
    ),
    "unknown_tenant": ("No such workspace", "Check the address, or go back to the app."),
    "unknown_provider": ("No such sign-in provider", "Check the address, or go back to the app."),
    "invalid_tenant": ("No such workspace", "Check the address, or go back to the app."),
    "tenant_required": (
        "Which workspace?",
        "This address needs a workspace. Open the app from its own link.",
    ),
}
_DEFAULT: Final = ("Sign-in failed", _START_AGAIN)


def _e(value: str) -> str:
    return html.escape(value, quote=True)


def _page(title: str, inner: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{inner}</main></body></html>"
    ).encode()


def title_of(code: str) -> str:
    return _CATALOG.get(code, _DEFAULT)[0]


def error_page(
    status: int, code: str, description: str, *, home: str, retry: str | None = None
) -> bytes:
    """The HTML page of a refusal: what happened, why, what to do, and the way back."""
    title, todo = _CATALOG.get(code, _DEFAULT)
    actions = ""
    if retry is not None:
        actions += f'<a class="button" id="retry" href="{_e(retry)}">Start the sign-in again</a>'
    css = "button secondary" if retry is not None else "button"
    actions += f'<a class="{css}" id="home" href="{_e(home)}">Back to the app</a>'
    inner = (
        f'<span class="badge">{status}</span>'
        f'<h1 id="error-title">{_e(title)}</h1>'
        f'<p id="error-description">{_e(description)}</p>'
        f'<p class="what" id="error-todo">{_e(todo)}</p>'
        f'<div class="actions">{actions}</div>'
        f'<p class="code">Error code: <code id="error-code">{_e(code)}</code></p>'
    )
    return _page(title, inner)


def logout_page(*, action: str, return_to: str, csrf_token: str | None, signed_in: bool) -> bytes:
    """``GET /logout``: a form that asks before it signs out (logout is a POST, SECURITY G3)."""
    if not signed_in:
        inner = (
            '<span class="badge ok">signed out</span>'
            '<h1 id="logout-title">You are not signed in</h1>'
            '<p>There is nothing to sign out of.</p><div class="actions">'
            f'<a class="button" id="home" href="{_e(return_to)}">Back to the app</a></div>'
        )
        return _page("You are not signed in", inner)
    hidden = f'<input type="hidden" name="return_to" value="{_e(return_to)}">'
    if csrf_token is not None:
        hidden += f'<input type="hidden" name="csrf_token" value="{_e(csrf_token)}">'
    inner = (
        '<h1 id="logout-title">Sign out?</h1>'
        "<p>Signing out ends this browser's session and revokes the app's access at the "
        "provider. You can sign in again at any time.</p>"
        f'<form method="post" action="{_e(action)}">{hidden}<div class="actions">'
        '<button class="button" id="logout" type="submit">Sign out</button>'
        f'<a class="button secondary" id="cancel" href="{_e(return_to)}">Cancel</a>'
        "</div></form>"
    )
    return _page("Sign out?", inner)
