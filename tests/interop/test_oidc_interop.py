"""Interop with a real OpenID provider nobody here wrote: panva's oidc-provider (8.x, Node.js).

The fixture starts ``tests/interop/provider.mjs`` on a loopback ephemeral port (a client with
``client_secret_basic``, PKCE required, refresh-token rotation, refresh tokens for
``offline_access``, RFC 7009 revocation, RFC 9207 ``iss`` in every authorization response, and
its built-in development login and consent forms, which the tests fill in over HTTP).

Covered: discovery into a ``ProviderDescriptor``; login through the Broker, through
``BrokerMiddleware`` (Starlette, async) and through ``BrokerWSGIMiddleware`` (Flask, sync);
the id_token (signature, ``iss``, ``aud``, nonce) and the RFC 9207 ``iss`` checked; ``sub``
becomes the principal; a call to the provider's userinfo signed by ``BrokerAuth``; refresh
with rotation (the old refresh token is dead afterwards); revocation (RFC 7009, checked with
the provider's introspection endpoint).

Skips without Node.js or without ``tests/interop/node_modules`` (``bash scripts/ci-deps.sh``),
except under ``CI=true``, where a missing dependency fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urljoin
from urllib.parse import urlsplit

import httpx2
import pytest

from oauth2_broker_mw._core.errors import AuthorizationFlowError
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.stores import MemoryStore

pytestmark = pytest.mark.node

INTEROP_DIR = Path(__file__).parent
CLIENT_ID = "broker-interop"
APP_BASE = "http://127.0.0.1:8765"
REDIRECT_URI = f"{APP_BASE}/oauth2/oidc/callback"
SCOPES = ["openid", "email", "offline_access"]
USERNAME = "alice"


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: scripts/ci-deps.sh must install it)")
    pytest.skip(reason)


@dataclass(frozen=True)
class OIDCProvider:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str

    def metadata(self) -> dict[str, object]:
        response = httpx2.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def descriptor(self) -> ProviderDescriptor:
        # offline_access is honoured only with prompt=consent (OpenID Connect Core §11).
        return ProviderDescriptor.from_metadata(
            "oidc",
            self.metadata(),
            expected_issuer=self.issuer,
            authorize_params={"prompt": "consent"},
        )

    def introspect(self, token: str) -> dict[str, object]:
        response = httpx2.post(
            f"{self.issuer}/token/introspection",
            data={"token": token},
            auth=(self.client_id, self.client_secret),
            timeout=10,
        )
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    node = shutil.which("node")
    _require(node is not None, "Node.js is not installed (needed for the oidc-provider interop)")
    assert node is not None
    _require(
        (INTEROP_DIR / "node_modules" / "oidc-provider").is_dir(),
        "oidc-provider is not installed: run `bash scripts/ci-deps.sh` (npm ci in tests/interop)",
    )
    secret = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "INTEROP_REDIRECT_URIS": REDIRECT_URI,
        "INTEROP_CLIENT_ID": CLIENT_ID,
        "INTEROP_CLIENT_SECRET": secret,
        "NODE_ENV": "test",
    }
    # stderr to a file: a pipe nobody reads could fill up and block the provider.
    stderr_path = tmp_path_factory.mktemp("oidc-provider") / "stderr.log"
    stderr = stderr_path.open("w")
    proc = subprocess.Popen(
        [node, str(INTEROP_DIR / "provider.mjs")],
        cwd=INTEROP_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    first_line: list[str] = []
    reader = threading.Thread(
        target=lambda: first_line.append(proc.stdout.readline() if proc.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(timeout=30)
    try:
        if not first_line or not first_line[0].strip():
            proc.kill()
            proc.communicate(timeout=10)
            err = stderr_path.read_text(errors="replace")
            pytest.fail(f"oidc-provider did not start: {err[-2000:]}")
        issuer = json.loads(first_line[0])["issuer"]
        yield OIDCProvider(issuer, CLIENT_ID, secret, REDIRECT_URI)
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        stderr.close()


# -- driving the provider's own login and consent forms ----------------------------------------
_ACTION_RE = re.compile(r'<form[^>]*action="([^"]+)"[^>]*method="post"', re.I)
_PROMPT_RE = re.compile(r'name="prompt" value="(\w+)"')


def drive_provider(
    http: httpx2.Client, authorize_url: str, issuer: str, username: str = USERNAME
) -> str:
    """Follow the provider's redirects, fill in its login and consent forms; the callback URL."""
    response = http.get(authorize_url)
    for _ in range(12):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if not location.startswith(issuer + "/"):
                return location
            response = http.get(location)
            continue
        assert response.status_code == 200, response.text[:500]
        action = _ACTION_RE.search(response.text)
        prompt = _PROMPT_RE.search(response.text)
        assert action is not None, response.text[:500]
        assert prompt is not None, response.text[:500]
        data = {"prompt": prompt.group(1)}
        if prompt.group(1) == "login":
            data.update(login=username, password="any-password")
        response = http.post(urljoin(str(response.url), action.group(1)), data=data)
    raise AssertionError("the provider never redirected back to the client")


def callback_params(url: str) -> dict[str, str]:
    query = parse_qs(urlsplit(url).query)
    assert all(len(v) == 1 for v in query.values()), query
    return {k: v[0] for k, v in query.items()}


# -- discovery ---------------------------------------------------------------------------------
def test_discovery_document_becomes_a_descriptor(oidc_provider: OIDCProvider) -> None:
    desc = oidc_provider.descriptor()
    assert desc.issuer == oidc_provider.issuer
    assert desc.authorization_endpoint == f"{oidc_provider.issuer}/auth"
    assert desc.token_endpoint == f"{oidc_provider.issuer}/token"
    assert desc.revocation_endpoint == f"{oidc_provider.issuer}/token/revocation"
    assert desc.jwks_uri == f"{oidc_provider.issuer}/jwks"
    assert desc.authorization_response_iss_parameter_supported is True
    assert desc.client_auth_method == "client_secret_basic"
    assert desc.is_oidc


# -- the Broker against oidc-provider ------------------------------------------------------------
@pytest.fixture
def broker(oidc_provider: OIDCProvider) -> Iterator[Broker]:
    with Broker(
        oidc_provider.descriptor(),
        client_id=oidc_provider.client_id,
        client_secret=oidc_provider.client_secret,
        store=MemoryStore(),
    ) as b:
        yield b


def _login(broker: Broker, provider: OIDCProvider) -> tuple[str, dict[str, str]]:
    request = broker.start_authorization(
        tenant="acme", principal=None, scopes=SCOPES, redirect_uri=provider.redirect_uri
    )
    query = callback_params(request.url)
    assert query["code_challenge_method"] == "S256"
    assert query["nonce"]
    assert query["state"] == request.state
    with httpx2.Client(timeout=10) as http:
        callback = drive_provider(http, request.url, provider.issuer)
    assert callback.startswith(provider.redirect_uri + "?")
    return request.state, callback_params(callback)


def test_login_refresh_rotation_and_revocation_through_the_broker(
    broker: Broker, oidc_provider: OIDCProvider
) -> None:
    state, params = _login(broker, oidc_provider)
    # RFC 9207: oidc-provider 8.x always sends iss, and it is the issuer we logged in with.
    assert params["iss"] == oidc_provider.issuer
    assert params["state"] == state
    record = broker.exchange_code(state=params["state"], code=params["code"], iss=params["iss"])

    # sub becomes the principal; the verified id_token claims are kept as metadata.
    assert record.key.principal == USERNAME
    assert record.key.tenant == "acme"
    claims = record.metadata["id_token_claims"]
    assert isinstance(claims, dict)
    assert claims["iss"] == oidc_provider.issuer
    assert claims["sub"] == USERNAME
    aud = claims["aud"]
    assert aud == oidc_provider.client_id or (isinstance(aud, list) and CLIENT_ID in aud)
    assert record.refresh_token is not None  # offline_access with prompt=consent
    assert "offline_access" in record.scopes

    # A call to the provider's userinfo, signed by BrokerAuth.
    auth = BrokerAuth(broker, tenant="acme", principal=USERNAME, scopes=SCOPES)
    with httpx2.Client(auth=auth, timeout=10) as api:
        me = api.get(f"{oidc_provider.issuer}/me")
    assert me.status_code == 200, me.text
    assert me.json()["sub"] == USERNAME

    # Refresh with rotation: a new refresh token, and the old one is dead at the provider.
    old_refresh = record.refresh_token.get_secret_value()
    old_access = record.access_token.get_secret_value()
    refreshed = broker.refresh(tenant="acme", principal=USERNAME, scopes=SCOPES)
    assert refreshed.refresh_token is not None
    new_refresh = refreshed.refresh_token.get_secret_value()
    assert new_refresh != old_refresh
    assert refreshed.access_token.get_secret_value() != old_access
    assert oidc_provider.introspect(old_refresh)["active"] is False
    assert oidc_provider.introspect(new_refresh)["active"] is True
    # The id_token claims survive the refresh (kept metadata).
    assert isinstance(refreshed.metadata.get("id_token_claims"), dict)

    lease = broker.lease(tenant="acme", principal=USERNAME, scopes=SCOPES, force_refresh=True)
    assert lease.access_token.get_secret_value() != refreshed.access_token.get_secret_value()
    current = broker.store.get(lease.key)
    assert current is not None
    assert current.refresh_token is not None
    live_refresh = current.refresh_token.get_secret_value()
    live_access = current.access_token.get_secret_value()
    assert live_refresh != new_refresh
    assert oidc_provider.introspect(live_access)["active"] is True

    # RFC 7009 revocation: both tokens are dead at the provider and gone locally.
    assert broker.revoke(tenant="acme", principal=USERNAME, scopes=SCOPES) is True
    assert oidc_provider.introspect(live_refresh)["active"] is False
    assert oidc_provider.introspect(live_access)["active"] is False
    assert broker.store.get(lease.key) is None


def test_wrong_iss_in_the_callback_is_rejected(broker: Broker, oidc_provider: OIDCProvider) -> None:
    state, params = _login(broker, oidc_provider)
    with pytest.raises(AuthorizationFlowError) as info:
        broker.exchange_code(state=state, code=params["code"], iss="http://127.0.0.1:1")
    assert info.value.code == "issuer_mismatch"


def test_missing_iss_is_rejected_because_the_provider_always_sends_it(
    broker: Broker, oidc_provider: OIDCProvider
) -> None:
    state, params = _login(broker, oidc_provider)
    with pytest.raises(AuthorizationFlowError) as info:
        broker.exchange_code(state=state, code=params["code"], iss=None)
    assert info.value.code == "issuer_missing"


def test_a_second_redemption_of_the_state_is_rejected(
    broker: Broker, oidc_provider: OIDCProvider
) -> None:
    state, params = _login(broker, oidc_provider)
    broker.exchange_code(state=state, code=params["code"], iss=params["iss"])
    with pytest.raises(AuthorizationFlowError) as info:
        broker.exchange_code(state=state, code=params["code"], iss=params["iss"])
    assert info.value.code in {"state_unknown", "state_expired"}


# -- through BrokerMiddleware ---------------------------------------------------------------------
def _middleware_app(broker: Broker, provider: OIDCProvider) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from oauth2_broker_mw.middleware import BrokerMiddleware

    async def me(request: Request) -> JSONResponse:
        ctx = request.state.oauth2_broker
        async with httpx2.AsyncClient(auth=ctx.auth("oidc"), timeout=10) as client:
            userinfo = await client.get(f"{provider.issuer}/me")
        return JSONResponse(
            {
                "tenant": ctx.tenant,
                "principal": ctx.principal,
                "connections": list(ctx.connections),
                "userinfo_status": userinfo.status_code,
                "userinfo": userinfo.json(),
            }
        )

    async def refresh(request: Request) -> JSONResponse:
        ctx = request.state.oauth2_broker
        record = await broker.arefresh(tenant=ctx.tenant, principal=ctx.principal, scopes=SCOPES)
        return JSONResponse({"version": record.version})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await broker.aclose()  # the HTTP client the broker opened on this event loop

    return Starlette(
        routes=[Route("/me", me), Route("/refresh", refresh, methods=["POST"])],
        lifespan=lifespan,
        middleware=[
            Middleware(
                BrokerMiddleware,
                brokers={"oidc": broker},
                scopes={"oidc": SCOPES},
                secret_key=secrets.token_urlsafe(32),
                base_url=APP_BASE,
            )
        ],
    )


def _browser_login(app_client: Any, provider: OIDCProvider) -> str:
    """Login route -> oidc-provider's forms -> the callback URL (not yet visited)."""
    start = app_client.get("/oauth2/oidc/login", params={"return_to": "/me"})
    assert start.status_code in (302, 303)
    assert start.headers["cache-control"].startswith("no-store")
    authorize = start.headers["location"]
    assert authorize.startswith(f"{provider.issuer}/auth?")
    query = callback_params(authorize)
    assert query["code_challenge_method"] == "S256"
    assert query["nonce"]
    assert query["prompt"] == "consent"
    assert query["redirect_uri"] == REDIRECT_URI
    with httpx2.Client(timeout=10) as http:
        return drive_provider(http, authorize, provider.issuer)


def test_login_call_refresh_and_logout_through_the_middleware(
    broker: Broker, oidc_provider: OIDCProvider
) -> None:
    from starlette.testclient import TestClient

    app = _middleware_app(broker, oidc_provider)
    with TestClient(app, base_url=APP_BASE, follow_redirects=False) as client:
        callback = _browser_login(client, oidc_provider)
        params = callback_params(callback)
        assert params["iss"] == oidc_provider.issuer
        done = client.get(callback.removeprefix(APP_BASE))
        assert done.status_code in (302, 303), done.text
        assert done.headers["location"].endswith("/me")
        assert done.headers["cache-control"].startswith("no-store")
        assert done.headers["referrer-policy"] == "no-referrer"
        for cookie in client.cookies.jar:
            assert params["code"] not in (cookie.value or "")

        me = client.get("/me")
        assert me.status_code == 200, me.text
        data = me.json()
        assert data["tenant"] == "default"
        assert data["principal"] == USERNAME  # the id_token's sub
        assert data["connections"] == ["oidc"]
        assert data["userinfo_status"] == 200  # signed by BrokerAuth
        assert data["userinfo"]["sub"] == USERNAME

        key = broker.key(tenant="default", principal=USERNAME, scopes=SCOPES)
        before = broker.store.get(key)
        assert before is not None
        assert before.refresh_token is not None
        claims = before.metadata["id_token_claims"]
        assert isinstance(claims, dict)
        assert claims["iss"] == oidc_provider.issuer
        old_refresh = before.refresh_token.get_secret_value()

        assert client.post("/refresh", headers={"origin": APP_BASE}).status_code == 200
        after = broker.store.get(key)
        assert after is not None
        assert after.refresh_token is not None
        assert after.refresh_token.get_secret_value() != old_refresh  # rotated
        assert oidc_provider.introspect(old_refresh)["active"] is False
        live_access = after.access_token.get_secret_value()
        assert oidc_provider.introspect(live_access)["active"] is True
        assert client.get("/me").json()["userinfo_status"] == 200

        out = client.post("/oauth2/logout", headers={"origin": APP_BASE})
        assert out.status_code in (302, 303)
        assert broker.store.get(key) is None
        assert oidc_provider.introspect(live_access)["active"] is False
        assert oidc_provider.introspect(after.refresh_token.get_secret_value())["active"] is False
        gone = client.get("/me", headers={"accept": "application/json"})
        assert gone.status_code == 401


def test_middleware_rejects_a_callback_with_another_issuer(
    broker: Broker, oidc_provider: OIDCProvider
) -> None:
    from starlette.testclient import TestClient

    app = _middleware_app(broker, oidc_provider)
    with TestClient(app, base_url=APP_BASE, follow_redirects=False) as client:
        callback = _browser_login(client, oidc_provider)
        forged = callback.replace(
            "iss=" + callback_params(callback)["iss"].replace(":", "%3A").replace("/", "%2F"),
            "iss=http%3A%2F%2F127.0.0.1%3A1",
        )
        assert forged != callback
        response = client.get(forged.removeprefix(APP_BASE))
        assert response.status_code == 400
        assert "issuer_mismatch" in response.text
        assert broker.store.list_keys(TenantId("default"), USERNAME) == []


def test_login_and_call_through_the_wsgi_middleware(
    broker: Broker, oidc_provider: OIDCProvider
) -> None:
    """The sync path end to end (Flask, BrokerWSGIMiddleware) against the real provider."""
    from flask import Flask
    from flask import request

    from oauth2_broker_mw.middleware import BrokerWSGIMiddleware

    flask_app = Flask(__name__)

    @flask_app.get("/me")
    def me() -> dict[str, object]:
        ctx = request.environ["oauth2_broker"]
        with httpx2.Client(auth=ctx.auth("oidc"), timeout=10) as client:
            userinfo = client.get(f"{oidc_provider.issuer}/me")
        return {"principal": ctx.principal, "userinfo": userinfo.json()}

    wsgi = BrokerWSGIMiddleware(
        flask_app.wsgi_app,
        brokers={"oidc": broker},
        scopes={"oidc": SCOPES},
        secret_key=secrets.token_urlsafe(32),
        base_url=APP_BASE,
    )
    transport = httpx2.WSGITransport(app=wsgi)
    with httpx2.Client(transport=transport, base_url=APP_BASE) as client:
        callback = _browser_login(client, oidc_provider)
        done = client.get(callback.removeprefix(APP_BASE))
        assert done.status_code in (302, 303), done.text
        data = client.get("/me").json()
    assert data["principal"] == USERNAME
    assert data["userinfo"]["sub"] == USERNAME
    assert data["userinfo"]["email"] == f"{USERNAME}@example.test"
