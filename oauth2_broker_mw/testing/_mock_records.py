"""Building blocks of the MockProvider: server-side records, OAuth errors, small pure helpers
and the HTML pages of the authorization endpoint.

Owns: ``Family`` / ``TokenState`` / ``CodeGrant`` (what the server remembers about a grant),
``OAuthError`` / ``RedirectError`` (errors to render), the PKCE, scope and JWT helpers, the login
and error pages.
Must not import: ``mock_provider`` (it imports this), the broker core, store drivers, uvicorn.
Needs the ``starlette`` extra (responses) like the rest of the MockProvider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import Response

from ._mock_config import MockClient

__all__ = [
    "ASYMMETRIC_ALGS",
    "CHALLENGE_RE",
    "CLIENT_AUTH_PARAMS",
    "FORM",
    "GRANTS",
    "JWT_BEARER",
    "NO_STORE",
    "VERIFIER_RE",
    "AuthorizeParams",
    "CodeGrant",
    "Family",
    "OAuthError",
    "RedirectError",
    "TokenState",
    "assertion_signature_ok",
    "b64url",
    "b64url_json",
    "b64url_sha256",
    "basic_challenge",
    "error_page",
    "form_action",
    "login_page",
    "scope_token_ok",
    "unsigned_jwt",
]

GRANTS = ("authorization_code", "refresh_token", "client_credentials")
VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
CHALLENGE_RE = re.compile(r"^[A-Za-z0-9\-_]{43}$")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM = "application/x-www-form-urlencoded"
CLIENT_AUTH_PARAMS = frozenset({"client_secret", "client_assertion", "client_assertion_type"})
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"}
)


def scope_token_ok(scope: str) -> bool:
    return bool(scope) and all(
        ch == "\x21" or "\x23" <= ch <= "\x5b" or "\x5d" <= ch <= "\x7e" for ch in scope
    )


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2), as every JOSE and PKCE value is written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_sha256(value: str) -> str:
    """base64url(SHA-256(ASCII ``value``)): a PKCE S256 challenge, a DPoP ``ath``."""
    return b64url(hashlib.sha256(value.encode("ascii")).digest())


class OAuthError(Exception):
    """An RFC 6749 §5.2 error to render; carries no secret."""

    def __init__(
        self,
        error: str,
        description: str | None = None,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": self.error}
        if self.description:
            payload["error_description"] = self.description
        return payload


@dataclass(slots=True, eq=False)
class Family:
    """Every token issued from one authorization (one code, or one ``issue_tokens`` call)."""

    id: str
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    nonce: str | None
    auth_time: int
    revoked: bool = False
    tokens: set[str] = field(default_factory=set, repr=False)  # token values: never shown


@dataclass(slots=True, eq=False)
class TokenState:
    kind: Literal["access", "refresh"]
    family: Family
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float | None
    status: Literal["active", "rotated", "revoked"] = "active"
    rotated_at: float | None = None
    jkt: str | None = None  # RFC 9449: the DPoP key thumbprint the token is bound to

    def alive(self, now: float) -> bool:
        if self.status != "active" or self.family.revoked:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(slots=True, eq=False)
class CodeGrant:
    client_id: str
    redirect_uri: str | None
    scopes: tuple[str, ...]
    challenge: str | None
    subject: str
    nonce: str | None
    expires_at: float
    used: bool = False
    family: Family | None = None
    offline: bool = True  # may a refresh token be issued for this code (quirk 18)


@dataclass(frozen=True, slots=True)
class AuthorizeParams:
    client: MockClient
    redirect_uri: str
    redirect_uri_sent: bool
    state: str | None
    scopes: tuple[str, ...]
    challenge: str | None
    nonce: str | None
    raw: Mapping[str, str]


class RedirectError(OAuthError):
    """An :class:`OAuthError` that goes back to the client's redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, params: AuthorizeParams, error: str, description: str) -> None:
        super().__init__(error, description)
        self.params = params


def assertion_signature_ok(assertion: str, alg: str, client: MockClient) -> bool:
    if alg == "HS256":
        # Checked by hand: joserfc warns about short (test) secrets, and tests run with -W error.
        signing_input, _, signature = assertion.rpartition(".")
        secret = (client.client_secret or "").encode()
        mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return hmac.compare_digest(b64url(mac), signature)
    try:
        keys = KeySet.import_key_set(dict(client.jwks or {}))  # type: ignore[arg-type]
        jwt.decode(assertion, keys, algorithms=[alg])
    except (JoseError, ValueError):
        return False
    return True


def b64url_json(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned_jwt(claims: Mapping[str, Any]) -> str:
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims)}."


def basic_challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Basic realm="mock-provider"'}


_PAGE_STYLE = (
    "body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;"
    "background:#eef1f5;color:#1d232a}"
    "main{max-width:24rem;margin:3rem auto;padding:1.6rem;background:#fff;"
    "border:1px solid #d0d7de;border-radius:12px;box-shadow:0 1px 3px #0001}"
    "@media (max-width:30rem){main{margin:1rem;padding:1.2rem}}"
    ".brand{font-weight:700;color:#6639ba;letter-spacing:.02em}"
    ".test{font-size:.8rem;color:#57606a;border:1px dashed #d0d7de;border-radius:6px;"
    "padding:.3rem .6rem;margin:.4rem 0 1rem}"
    "h1{font-size:1.25rem;margin:.2rem 0 .8rem}"
    "label{display:block;font-weight:600;margin:.7rem 0 .2rem}"
    "input[type=text],input[type=password]{box-sizing:border-box;width:100%;font:inherit;"
    "padding:.5rem .6rem;border:1px solid #8c959f;border-radius:6px}"
    ".asks{background:#f6f8fa;border-radius:6px;padding:.5rem .7rem;font-size:.9rem}"
    ".asks code{font-family:ui-monospace,monospace}"
    ".row{display:flex;flex-wrap:wrap;gap:.6rem;margin-top:1.2rem}"
    "button{font:inherit;padding:.5rem 1.1rem;border-radius:6px;cursor:pointer;"
    "border:1px solid #6639ba}"
    "#login{background:#6639ba;color:#fff}#deny{background:#fff;color:#6639ba}"
    "#message,#error{background:#ffebe9;color:#a40e26;border-radius:6px;padding:.5rem .7rem}"
)
_PAGE_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # No form-action: the form's answer redirects to the client's redirect_uri, another origin.
    "content-security-policy": (
        "default-src 'none'; style-src 'sha256-"
        + base64.b64encode(hashlib.sha256(_PAGE_STYLE.encode()).digest()).decode()
        + "'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def _page(title: str, inner: str, status: int) -> Response:
    page = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_PAGE_STYLE}</style></head><body><main>"
        '<div class="brand">Mock IdP</div>'
        '<p class="test">A test OAuth 2.0 / OpenID provider (oauth2-broker-mw MockProvider), '
        "not a real sign-in.</p>"
        f"{inner}</main></body></html>"
    )
    return HTMLResponse(page, status_code=status, headers=_PAGE_HEADERS)


def error_page(error: str, description: str, status: int) -> Response:
    inner = (
        f'<h1>Authorization error</h1><p id="error">{html.escape(error)}</p>'
        f"<p>{html.escape(description)}</p>"
        "<p>The app sent a request this provider cannot take; go back to the app and start "
        "again.</p>"
    )
    return _page("Authorization error", inner, status)


def form_action(request: Request) -> str:
    """Where the login form posts: ``/authorize`` under the app's mount point (``root_path``)."""
    root_path = str(request.scope.get("root_path", "")).rstrip("/")
    return f"{root_path}/authorize"


def login_page(
    params: Mapping[str, str], message: str | None, *, status: int = 200, action: str
) -> Response:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items()
    )
    notice = f'<p id="message" role="alert">{html.escape(message)}</p>' if message else ""
    client = params.get("client_id", "")
    scopes = params.get("scope", "").split()
    asks = ""
    if client:
        wanted = ", ".join(f"<code>{html.escape(s)}</code>" for s in scopes) or "no scope"
        asks = (
            f'<p class="asks" id="asks"><code>{html.escape(client)}</code> asks for: {wanted}</p>'
        )
    inner = (
        f"<h1>Sign in to continue</h1>{notice}{asks}"
        f'<form method="post" action="{html.escape(action)}">'
        f"{hidden}"
        '<label for="username">Username</label><input type="text" name="username" '
        'id="username" autocomplete="username" autofocus>'
        '<label for="password">Password</label><input type="password" name="password" '
        'id="password" autocomplete="current-password">'
        '<div class="row">'
        '<button type="submit" name="action" value="approve" id="login">Sign in</button>'
        '<button type="submit" name="action" value="deny" id="deny">'
        "Cancel and go back to the app</button></div>"
        "</form>"
    )
    return _page("Mock IdP sign-in", inner, status)
