"""The demo: one local process with the middleware, a MockProvider and the SQLite store.

Owns: :func:`create_demo_app` (the Starlette app: the demo page, ``BrokerMiddleware`` and the
MockProvider mounted at ``/idp`` on the same server), :func:`serve_demo` (uvicorn on a loopback
port in a background thread, used by ``oauth2-broker demo``, the tests and the browser test) and
:func:`drive_login` (the whole login over HTTP, as a browser would do it, for ``--once`` and
the tests).

What the page shows: the tenant context the middleware attached to the request (tenant,
principal, connected providers) and the result of an outbound call to the MockProvider's
protected ``/resource``, signed by ``BrokerAuth``. Tokens stay on the server: the page, the
cookies and the log never carry an access token, refresh token, code, state or client secret.
The access log written here records the method, the path (never the query string, which
carries ``code`` and ``state`` on the callback) and the status.

Must not import at module level: uvicorn (only :func:`serve_demo` needs it).
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final
from urllib.parse import parse_qsl
from urllib.parse import urljoin
from urllib.parse import urlsplit

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import RedirectResponse
from starlette.responses import Response
from starlette.routing import Mount
from starlette.routing import Route
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from ._core.errors import AuthorizationRequired
from ._core.errors import BrokerError
from .broker import Broker
from .middleware import BrokerMiddleware
from .stores import SQLiteStore
from .stores import check_store
from .testing._mock_transport import serve_in_thread
from .testing.mock_provider import MockProvider

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_PASSWORD",
    "DEMO_PROVIDER",
    "DEMO_SCOPES",
    "DEMO_USERNAME",
    "DemoServer",
    "LoginResult",
    "create_demo_app",
    "drive_login",
    "serve_demo",
]

log = logging.getLogger("oauth2_broker_mw.demo")

DEMO_PROVIDER: Final = "mock"
DEMO_SCOPES: Final = ("openid", "profile")
DEMO_CLIENT_ID: Final = "test-client"
DEMO_USERNAME: Final = "alice"
DEMO_PASSWORD: Final = "wonderland"  # the MockProvider's demo login, not a secret
PREFIX: Final = "/oauth2"
IDP_PATH: Final = "/idp"
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})

_SECURITY_HEADERS: Final = {
    "cache-control": "no-store",
    # Not "no-referrer" here: with it, browsers send "Origin: null" on the logout form's POST
    # and the middleware's Origin check refuses it. "same-origin" leaks nothing cross-site.
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


# -- the page --------------------------------------------------------------------------------
_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>oauth2-broker-mw demo</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d232a; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.6rem; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; font-family: ui-monospace, monospace; }}
pre {{ background: #f3f5f7; padding: .8rem; overflow-x: auto; border-radius: 6px; }}
.button {{ display: inline-block; padding: .45rem 1rem; border-radius: 6px; border: 0;
          background: #1f6feb; color: #fff; text-decoration: none; font: inherit;
          cursor: pointer; }}
.muted {{ color: #57606a; }} .ok {{ color: #1a7f37; }} .err {{ color: #cf222e; }}
.notice {{ background: #dafbe1; border-radius: 6px; padding: .6rem .9rem; }}
ol#sequence {{ font-family: ui-monospace, monospace; font-size: .9rem; padding-left: 1.6rem; }}
ol#sequence li {{ margin: .15rem 0; }}
form {{ display: inline; }}
</style>
</head>
<body>
<h1>oauth2-broker-mw demo</h1>
{body}
<p class="muted">Tokens never leave the server: this page, the cookies and the log carry none.
The browser holds only an opaque, encrypted session cookie.</p>
</body>
</html>
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _context_html(ctx: Any) -> str:
    connections = sorted(str(c) for c in (getattr(ctx, "connections", None) or ()))
    principal = getattr(ctx, "principal", None)
    return (
        '<h2>Tenant context</h2>\n<dl id="context">'
        f'<dt>Tenant</dt><dd id="tenant">{_e(getattr(ctx, "tenant", ""))}</dd>'
        f'<dt>Principal</dt><dd id="principal">{_e(principal if principal else "(none)")}</dd>'
        f'<dt>Connected providers</dt><dd id="connections">'
        f"{_e(', '.join(connections) if connections else '(none)')}</dd></dl>\n"
    )


def _login_html(ctx: Any) -> str:
    login_url = ctx.login_url(DEMO_PROVIDER, "/")
    return (
        "<p>You are not connected to the demo provider yet. Log in: the MockProvider (mounted "
        f"at <code>{IDP_PATH}</code> on this server) shows its login form; use "
        f"<code>{DEMO_USERNAME}</code> / <code>{DEMO_PASSWORD}</code>.</p>\n"
        f'<p><a class="button" id="login" href="{_e(login_url)}">Log in</a></p>\n'
        '<p class="muted">Try also: <a id="api-link" href="/api/me">/api/me</a> (the JSON API: '
        "a 401 problem document until you log in).</p>\n"
    )


def _signed_out_html(revoked: int) -> str:
    return (
        '<p class="notice" id="signed-out"><strong>You are signed out.</strong> The '
        "middleware revoked the tokens at the provider (RFC 7009), the broker deleted them "
        "from the store, and the session cookie is gone. Tokens the provider has revoked so "
        f'far: <span id="revoked">{revoked}</span>.</p>\n'
    )


def _logout_html(ctx: Any) -> str:
    csrf = ctx.csrf_token
    hidden = (
        f'<input type="hidden" name="csrf_token" value="{_e(csrf)}">' if csrf is not None else ""
    )
    return (
        f'<p><form method="post" action="{_e(ctx.logout_url)}">{hidden}'
        '<input type="hidden" name="return_to" value="/?signed_out=1">'
        '<button class="button" id="logout" type="submit">Log out</button></form> '
        '<span class="muted">revokes the tokens at the provider and ends the session; '
        'the same data as JSON: <a id="api-link" href="/api/me">/api/me</a></span></p>\n'
    )


def _grants_html(provider: MockProvider) -> str:
    counters = provider.counters
    return (
        "<h2>Token requests the provider has seen</h2>\n"
        '<dl id="grants">'
        f'<dt>authorization_code</dt><dd id="grant-code">'
        f"{counters['token:authorization_code']}</dd>"
        f'<dt>refresh_token</dt><dd id="grant-refresh">{counters["token:refresh_token"]}</dd>'
        "</dl>\n"
        '<form method="post" action="/demo/expire-access-tokens">'
        '<button class="button" id="expire" type="submit">Expire the access token at the '
        "provider</button> "
        '<span class="muted">the next call gets a 401; BrokerAuth refreshes once and '
        "retries</span></form>\n"
    )


_SAFE_RESOURCE_KEYS: Final = frozenset({"sub", "scope", "client_id", "method", "error"})


def _public_resource(body: object) -> object:
    """What of the resource's JSON answer the page may show: never a token-like member."""
    if isinstance(body, Mapping):
        return {str(k): v for k, v in body.items() if str(k) in _SAFE_RESOURCE_KEYS}
    return body


@dataclass(frozen=True, slots=True)
class _CallResult:
    url: str
    status: int | None
    body: object
    error: str | None = None


#: the HTTP exchanges of the current page load, for the page's "what happened" list
_CALLS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "oauth2_broker_demo_calls", default=None
)


async def _record_response(response: httpx2.Response) -> None:
    calls = _CALLS.get()
    if calls is None:
        return
    request = response.request
    what = f"{request.method} {request.url.path}"
    if request.url.path.endswith("/token"):
        # Only the grant type of the form body; never a code, token or secret.
        try:
            form = dict(parse_qsl(request.content.decode("latin-1")))
        except httpx2.RequestNotRead:
            form = {}
        what += f" (grant_type={form.get('grant_type', '?')})"
    calls.append(f"{what} \u2192 {response.status_code}")


async def _call_resource(ctx: Any, client: httpx2.AsyncClient, url: str) -> _CallResult:
    try:
        response = await client.get(url, auth=ctx.auth(DEMO_PROVIDER))
    except AuthorizationRequired:
        raise  # the middleware turns it into a login redirect (browser) or a 401 (API)
    except (BrokerError, httpx2.HTTPError) as exc:
        return _CallResult(url, None, None, error=type(exc).__name__)
    try:
        body: object = response.json()
    except ValueError:
        body = response.text[:200]
    return _CallResult(url, response.status_code, _public_resource(body))


def _sequence_html(calls: list[str]) -> str:
    if not calls:
        return ""
    items = "".join(f"<li>{_e(c)}</li>" for c in calls)
    refreshed = any("grant_type=refresh_token" in c for c in calls)
    if any(c.endswith("\u2192 401") for c in calls) and refreshed:
        note = (
            '<p id="sequence-note">The provider answered <strong>401</strong>: it no longer '
            "knew the access token. <code>BrokerAuth</code> asked the broker for a new one "
            "(<strong>one</strong> refresh, with the rotated refresh token) and retried the "
            "call once, which succeeded.</p>"
        )
    elif refreshed:
        note = '<p id="sequence-note">The broker refreshed the token before it expired.</p>'
    else:
        note = (
            '<p id="sequence-note" class="muted">The cached access token was valid: no token '
            "request.</p>"
        )
    return f'<h2>What happened on this page load</h2>\n<ol id="sequence">{items}</ol>\n{note}\n'


async def _lease_html(ctx: Any) -> str:
    """What the broker holds for this user, minus the token itself (never shown)."""
    try:
        lease = await ctx.alease(DEMO_PROVIDER)
    except AuthorizationRequired:
        raise
    except BrokerError as exc:
        return f'<p class="err">lease: {_e(type(exc).__name__)}</p>\n'
    expires = (
        "unknown"
        if lease.expires_at is None
        else f"in {max(0, int(lease.expires_at - time.time()))} s"
    )
    return (
        "<h2>The lease behind it</h2>\n"
        '<dl id="lease">'
        f'<dt>Token type</dt><dd id="lease-type">{_e(lease.token_type)}</dd>'
        f'<dt>Scopes</dt><dd id="lease-scopes">{_e(" ".join(sorted(lease.scopes)))}</dd>'
        f'<dt>Expires</dt><dd id="lease-expires">{_e(expires)}</dd>'
        f'<dt>Record version</dt><dd id="lease-version">{_e(lease.version)}</dd>'
        "<dt>Access token</dt><dd>kept on the server</dd></dl>\n"
    )


def _result_html(result: _CallResult) -> str:
    head = (
        "<h2>Outbound API call signed by <code>BrokerAuth</code></h2>\n"
        f"<p><code>GET {_e(result.url)}</code> &rarr; "
    )
    if result.error is not None:
        return head + f'<span id="status" class="err">failed: {_e(result.error)}</span></p>\n'
    css = "ok" if result.status is not None and 200 <= result.status < 300 else "err"
    pretty = json.dumps(result.body, indent=2, sort_keys=True, default=str)
    return (
        head + f'<span id="status" class="{css}">{_e(result.status)}</span></p>\n'
        f'<pre id="resource">{_e(pretty)}</pre>\n'
    )


# -- the app ---------------------------------------------------------------------------------
class _AccessLog:
    """Pure ASGI access log: method, path and status; never the query string or headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info(
                "%s %s -> %s",
                scope.get("method", "?"),
                scope.get("path", "?"),
                status[0] if status else "-",
            )


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK or parts.path not in ("", "/"):
        raise ValueError(
            "the demo serves plain HTTP on a loopback address only; base_url must look like "
            f"http://127.0.0.1:8000 (got {base_url!r})"
        )
    return base_url.rstrip("/")


def create_demo_app(
    base_url: str,
    *,
    data_dir: str | Path = ".oauth2-broker",
    secret_key: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the demo app served at ``base_url`` (``http://127.0.0.1:<port>``).

    The MockProvider is mounted at ``/idp`` with issuer ``{base_url}/idp`` and shows its login
    form (``auto_approve=False``); tokens go to ``SQLiteStore(data_dir / "tokens.db")``. The
    broker's token calls go over loopback HTTP to the same server with an async client, so the
    server answers them while the callback request waits (no deadlock). ``secret_key`` signs
    the middleware's cookies; a fresh random key is used when not given. ``clock`` is the
    middleware's wall clock (a test moves it on to show a login that took too long).
    """
    base = _check_base_url(base_url)
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    issuer = f"{base}{IDP_PATH}"

    provider = MockProvider(
        issuer=issuer,
        auto_approve=False,  # show the provider's login form
        pkce="required",
        send_iss=True,  # RFC 9207: the callback carries iss, and the middleware checks it
        users={DEMO_USERNAME: DEMO_PASSWORD},
        user_claims={DEMO_USERNAME: {"name": "Alice Liddell", "email": "alice@example.test"}},
    )
    store = SQLiteStore(directory / "tokens.db")
    check_store(store)  # an unwritable data_dir fails here, naming the path, not at login
    hooks = {"response": [_record_response]}
    token_client = httpx2.AsyncClient(timeout=10.0, event_hooks=hooks)
    api_client = httpx2.AsyncClient(timeout=10.0, event_hooks=hooks)
    broker = Broker(
        # Users log in; no client-credentials fallback for a principal without a token.
        provider.descriptor(
            grants=["authorization_code", "refresh_token"],
            authorization_response_iss_parameter_supported=True,
        ),
        client_id=DEMO_CLIENT_ID,
        client_secret="test-secret",
        store=store,
        async_http_client=token_client,
    )
    resource_url = f"{issuer}/resource"

    async def home(request: Request) -> Response:
        ctx = request.state.oauth2_broker
        body = _context_html(ctx)
        if DEMO_PROVIDER in set(getattr(ctx, "connections", None) or ()):
            calls: list[str] = []
            token = _CALLS.set(calls)
            try:
                result = await _call_resource(ctx, api_client, resource_url)
                lease = await _lease_html(ctx)
            finally:
                _CALLS.reset(token)
            body += _result_html(result) + _sequence_html(calls) + lease
            body += _grants_html(provider) + _logout_html(ctx)
        else:
            if request.query_params.get("signed_out") == "1":
                body += _signed_out_html(provider.counters["revoked"])
            body += _login_html(ctx)
        return HTMLResponse(_PAGE.format(body=body), headers=_SECURITY_HEADERS)

    async def api_me(request: Request) -> Response:
        ctx = request.state.oauth2_broker
        result = await _call_resource(ctx, api_client, resource_url)
        data = {
            "tenant": str(ctx.tenant),
            "principal": None if ctx.principal is None else str(ctx.principal),
            "connections": sorted(str(c) for c in ctx.connections),
            "resource": {"status": result.status, "body": result.body, "error": result.error},
        }
        return JSONResponse(data, headers={"cache-control": "no-store"})

    async def expire(request: Request) -> Response:
        # Demo control: the provider forgets every access token, so the next call gets a 401
        # and BrokerAuth refreshes once and retries. Same-origin POSTs only.
        if request.headers.get("origin") != base:
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        provider.expire_access_tokens()
        return RedirectResponse("/", status_code=303)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await api_client.aclose()
            await token_client.aclose()
            store.close()

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/api/me", api_me),
            Route("/healthz", healthz),
            Route("/demo/expire-access-tokens", expire, methods=["POST"]),
            Mount(IDP_PATH, app=provider.app),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(
        BrokerMiddleware,
        brokers={DEMO_PROVIDER: broker},
        scopes={DEMO_PROVIDER: list(DEMO_SCOPES)},
        secret_key=secret_key or secrets.token_urlsafe(32),
        base_url=base,
        prefix=PREFIX,
        clock=clock,
    )
    app.add_middleware(_AccessLog)
    app.state.mock_provider = provider
    app.state.broker = broker
    app.state.store = store
    return app


# -- serving ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DemoServer:
    """A running demo: its URL and app (for tests to reach the provider and the store)."""

    url: str
    app: Starlette

    @property
    def provider(self) -> MockProvider:
        provider: MockProvider = self.app.state.mock_provider
        return provider

    @property
    def store(self) -> SQLiteStore:
        store: SQLiteStore = self.app.state.store
        return store


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
    # with proto 0, Nagle + delayed ACK stall keep-alive responses by ~40 ms each.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def serve_demo(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    data_dir: str | Path = ".oauth2-broker",
    secret_key: str | None = None,
    clock: Callable[[], float] = time.time,
    startup_timeout: float = 15.0,
) -> Iterator[DemoServer]:
    """Serve the demo with uvicorn on ``host:port`` (0: ephemeral) in a background thread."""
    import uvicorn

    if host not in _LOOPBACK:
        raise ValueError("the demo serves plain HTTP and binds only to a loopback address")
    bind_host = "127.0.0.1" if host == "localhost" else host
    sock = _bind(bind_host, port)
    bound_port: int = sock.getsockname()[1]
    url_host = f"[{bind_host}]" if ":" in bind_host else bind_host
    url = f"http://{url_host}:{bound_port}"
    try:
        app = create_demo_app(url, data_dir=data_dir, secret_key=secret_key, clock=clock)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # its access log would print the callback's query string (code, state)
        lifespan="on",
        http="h11",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    name = f"oauth2-broker-demo-{bound_port}"
    with serve_in_thread(config, sock, name=name, startup_timeout=startup_timeout, what="demo"):
        yield DemoServer(url=url, app=app)


# -- driving the login over HTTP (smoke mode and tests) ---------------------------------------
@dataclass(frozen=True, slots=True)
class LoginResult:
    """The end of a login driven over HTTP: the final page and what was seen on the way."""

    page: str
    status: int
    visited: tuple[str, ...]
    """Every URL requested, in order (these include the authorize URL and the callback)."""


def _find_login_form(page: str) -> tuple[str, str, dict[str, str]]:
    """(method, action, hidden inputs) of the provider's login form."""
    form = re.search(r"<form\b([^>]*)>(.*?)</form>", page, re.S | re.I)
    if form is None:
        raise RuntimeError("the provider page has no login form")
    attrs, inner = form.group(1), form.group(2)

    def attr(text: str, name: str) -> str | None:
        match = re.search(rf'\b{name}\s*=\s*"([^"]*)"', text, re.I)
        return None if match is None else html.unescape(match.group(1))

    method = (attr(attrs, "method") or "get").upper()
    action = attr(attrs, "action") or ""
    hidden: dict[str, str] = {}
    for tag in re.findall(r"<input\b[^>]*>", inner, re.I):
        if (attr(tag, "type") or "").lower() == "hidden":
            name = attr(tag, "name")
            if name:
                hidden[name] = attr(tag, "value") or ""
    return method, action, hidden


def drive_login(
    base_url: str,
    *,
    username: str = DEMO_USERNAME,
    password: str = DEMO_PASSWORD,
    client: httpx2.Client | None = None,
    max_hops: int = 12,
) -> LoginResult:
    """Log in to the demo over HTTP as a browser would: page, login, provider form, callback.

    Follows redirects by hand (so every hop is recorded), submits the provider's login form
    with ``username`` / ``password`` and returns the page it lands on.
    """
    own = client is None
    http = client if client is not None else httpx2.Client(timeout=10.0)
    visited: list[str] = []
    try:
        url = urljoin(base_url + "/", f"{PREFIX.lstrip('/')}/{DEMO_PROVIDER}/login?return_to=/")
        response = http.get(url)
        visited.append(url)
        submitted = False
        for _ in range(max_hops):
            if response.is_redirect:
                url = urljoin(str(response.url), response.headers["location"])
                response = http.get(url)
                visited.append(url)
                continue
            if not submitted and "<form" in response.text and "password" in response.text:
                method, action, hidden = _find_login_form(response.text)
                target = urljoin(str(response.url), action)
                data = {**hidden, "username": username, "password": password}
                response = (
                    http.post(target, data=data)
                    if method == "POST"
                    else http.get(target, params=data)
                )
                visited.append(target)
                submitted = True
                continue
            break
        return LoginResult(page=response.text, status=response.status_code, visited=tuple(visited))
    finally:
        if own:
            http.close()
