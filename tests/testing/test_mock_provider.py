"""MockProvider behaves like a real OAuth 2.0 / OIDC authorization server.

Driven with plain httpx2 requests, in-process (sync transport on a background loop, and
``httpx2.ASGITransport``) and over a real loopback socket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import pickle
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import quote_plus
from urllib.parse import urlsplit

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from oauth2_broker_mw.testing import MockClient
from oauth2_broker_mw.testing import MockProvider
from oauth2_broker_mw.testing import MockQuirks

REDIRECT = "http://localhost:8000/callback"
AUTH = ("test-client", "test-secret")


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(client: httpx2.Client, **params: str) -> httpx2.Response:
    query = {
        "response_type": "code",
        "client_id": "test-client",
        "redirect_uri": REDIRECT,
        "scope": "openid read",
        "state": "st-1",
    }
    query.update(params)
    return client.get("/authorize", params={k: v for k, v in query.items() if v != "<omit>"})


def redirect_params(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_flow(client: httpx2.Client, scope: str = "openid read", **params: str) -> dict[str, Any]:
    verifier, challenge = pkce_pair()
    got = redirect_params(
        authorize(
            client, scope=scope, code_challenge=challenge, code_challenge_method="S256", **params
        )
    )
    response = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=AUTH,
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refresh(client: httpx2.Client, refresh_token: str, **extra: str) -> httpx2.Response:
    return client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
        auth=AUTH,
        headers={"Accept": "application/json"},
    )


def resource(client: httpx2.Client, access_token: str, **params: str) -> httpx2.Response:
    return client.get(
        "/resource", params=params, headers={"Authorization": f"Bearer {access_token}"}
    )


@pytest.fixture
def client(mock_provider: MockProvider) -> Iterator[httpx2.Client]:
    with mock_provider.client() as c:
        yield c


# ---------------------------------------------------------------- authorization code + PKCE


def test_code_flow_with_pkce_issues_working_tokens(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "openid read"
    assert tokens["access_token"] != tokens["refresh_token"]
    assert len(tokens["access_token"]) > 40
    got = resource(client, tokens["access_token"])
    assert got.status_code == 200
    assert got.json() == {
        "sub": "user-1",
        "scope": "openid read",
        "client_id": "test-client",
        "method": "GET",
        "body_len": 0,
    }
    counters = mock_provider.counters
    assert counters["authorize"] == 1
    assert counters["token"] == 1
    assert counters["token:authorization_code"] == 1
    assert counters["resource"] == 1
    assert counters["never-touched"] == 0


def test_code_flow_over_loopback(mock_provider: MockProvider, mock_provider_url: str) -> None:
    assert mock_provider.issuer == mock_provider_url
    assert mock_provider_url.startswith("http://127.0.0.1:")
    with httpx2.Client(base_url=mock_provider_url) as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
        assert meta["token_endpoint"] == f"{mock_provider_url}/token"
        tokens = code_flow(c)
        assert resource(c, tokens["access_token"]).json()["sub"] == "user-1"
    assert mock_provider.counters["token:authorization_code"] == 1


def test_serve_restores_issuer(mock_provider: MockProvider) -> None:
    with mock_provider.serve() as url:
        assert httpx2.get(f"{url}/.well-known/openid-configuration").json()["issuer"] == url
    assert mock_provider.issuer == "https://mock-idp.test"


async def test_code_flow_async_client(mock_provider: MockProvider) -> None:
    verifier, challenge = pkce_pair()
    async with mock_provider.async_client() as c:
        response = await c.get(
            "/authorize",
            params={
                "response_type": "code",
                "client_id": "test-client",
                "redirect_uri": REDIRECT,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "scope": "read",
            },
        )
        code = redirect_params(response)["code"]
        token = await c.post(
            "/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
            },
            auth=AUTH,
        )
        assert token.status_code == 200
        got = await c.post(
            "/resource",
            content=b"hello",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        assert got.json()["method"] == "POST"
        assert got.json()["body_len"] == 5


def test_rfc7636_appendix_b_vector_is_accepted(client: httpx2.Client) -> None:
    got = redirect_params(
        authorize(
            client,
            code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            code_challenge_method="S256",
        )
    )
    response = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        },
        auth=AUTH,
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("verifier", "with_challenge"),
    [
        ("wrong-" + "x" * 50, True),  # does not match the challenge
        (None, True),  # challenge sent, verifier missing
        ("v" * 50, False),  # verifier without a challenge (PKCE downgrade)
    ],
)
def test_pkce_mismatch_is_invalid_grant(
    client: httpx2.Client, verifier: str | None, with_challenge: bool
) -> None:
    _, challenge = pkce_pair()
    extra = {"code_challenge": challenge, "code_challenge_method": "S256"} if with_challenge else {}
    code = redirect_params(authorize(client, **extra))["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        data["code_verifier"] = verifier
    response = client.post("/token", data=data, auth=AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_code_is_single_use_and_reuse_revokes_its_tokens(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    code = redirect_params(authorize(client))["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    first = client.post("/token", data=data, auth=AUTH)
    assert first.status_code == 200
    access = first.json()["access_token"]
    assert resource(client, access).status_code == 200
    second = client.post("/token", data=data, auth=AUTH)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert resource(client, access).status_code == 401
    assert refresh(client, first.json()["refresh_token"]).json()["error"] == "invalid_grant"
    assert mock_provider.counters["code_reuse"] == 1


def test_code_bound_to_redirect_uri_and_client(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.register_client("other", "other-secret")
    code = redirect_params(authorize(client))["code"]
    wrong_uri = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT + "x"},
        auth=AUTH,
    )
    assert wrong_uri.json()["error"] == "invalid_grant"
    other_client = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        auth=("other", "other-secret"),
    )
    assert other_client.json()["error"] == "invalid_grant"


def test_code_expires(mock_provider: MockProvider, client: httpx2.Client) -> None:
    code = redirect_params(authorize(client))["code"]
    mock_provider.advance_time(61)
    response = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        auth=AUTH,
    )
    assert response.json()["error"] == "invalid_grant"


# ---------------------------------------------------------------- /authorize validation


def test_authorize_echoes_state_and_optionally_iss(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    got = redirect_params(authorize(client, state="abc 123"))
    assert got["state"] == "abc 123"
    assert "iss" not in got
    mock_provider.send_iss = True
    got = redirect_params(authorize(client))
    assert got["iss"] == "https://mock-idp.test"
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert meta["authorization_response_iss_parameter_supported"] is True


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "nobody"},
        {"redirect_uri": "ftp://example.test/cb"},
        {"redirect_uri": "<omit>"},
    ],
)
def test_authorize_without_a_trusted_redirect_shows_an_error_page(
    client: httpx2.Client, params: dict[str, str]
) -> None:
    response = authorize(client, **params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


def test_authorize_registered_redirect_uris_must_match_exactly(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.register_client("strict", "s", redirect_uris=[REDIRECT])
    assert authorize(client, client_id="strict", redirect_uri=REDIRECT + "/x").status_code == 400
    assert "code" in redirect_params(authorize(client, client_id="strict"))
    # a single registered URI is used when the request omits redirect_uri
    assert "code" in redirect_params(authorize(client, client_id="strict", redirect_uri="<omit>"))


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "invalid_request"),
        (
            {"code_challenge": "short", "code_challenge_method": "S256"},
            "invalid_request",
        ),
        ({"scope": "bad\\scope"}, "invalid_scope"),
    ],
)
def test_authorize_errors_redirect_back_with_state(
    client: httpx2.Client, params: dict[str, str], error: str
) -> None:
    got = redirect_params(authorize(client, **params))
    assert got["error"] == error
    assert got["state"] == "st-1"
    assert "code" not in got


def test_pkce_required(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.pkce = "required"
    assert redirect_params(authorize(client))["error"] == "invalid_request"
    code_flow(client)  # with PKCE it works
    assert mock_provider.counters["token:authorization_code"] == 1


def test_forced_authorize_error(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("authorize", error="access_denied")
    got = redirect_params(authorize(client))
    assert got == {"error": "access_denied", "state": "st-1"}
    assert "code" in redirect_params(authorize(client))


def test_login_hint_picks_subject(client: httpx2.Client) -> None:
    tokens = code_flow(client, login_hint="alice")
    assert resource(client, tokens["access_token"]).json()["sub"] == "alice"


def test_login_form_when_not_auto_approving(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.auto_approve = False
    mock_provider.users = {"bob": "hunter2"}
    page = authorize(client)
    assert page.status_code == 200
    assert 'id="login"' in page.text
    assert 'name="username"' in page.text
    hidden = {
        "response_type": "code",
        "client_id": "test-client",
        "redirect_uri": REDIRECT,
        "scope": "openid read",
        "state": "st-1",
    }
    bad = client.post("/authorize", data={**hidden, "username": "bob", "password": "nope"})
    assert bad.status_code == 401
    assert 'id="login"' in bad.text
    silent = redirect_params(authorize(client, prompt="none"))
    assert silent["error"] == "login_required"
    denied = client.post("/authorize", data={**hidden, "username": "bob", "action": "deny"})
    assert redirect_params(denied)["error"] == "access_denied"
    ok = client.post(
        "/authorize", data={**hidden, "username": "bob", "password": "hunter2", "action": "approve"}
    )
    code = redirect_params(ok)["code"]
    tokens = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        auth=AUTH,
    ).json()
    assert resource(client, tokens["access_token"]).json()["sub"] == "bob"


def test_redirect_extra_params(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks.redirect_extra_params = {"realmId": "4620816365"}
    got = redirect_params(authorize(client))
    assert got["realmId"] == "4620816365"
    assert "code" in got


# ---------------------------------------------------------------- refresh


def test_refresh_rotates_and_old_access_token_stays_valid(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 200
    new = response.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert resource(client, new["access_token"]).status_code == 200
    assert resource(client, tokens["access_token"]).status_code == 200
    assert mock_provider.refresh_tokens_redeemed == 1
    assert mock_provider.counters["token:refresh_token"] == 1
    assert refresh(client, new["refresh_token"]).status_code == 200
    assert mock_provider.refresh_tokens_redeemed == 2


def test_reusing_a_rotated_refresh_token_revokes_the_family(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    unrelated = code_flow(client)
    new = refresh(client, tokens["refresh_token"]).json()
    reuse = refresh(client, tokens["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    assert mock_provider.counters["family_revoked"] == 1
    assert mock_provider.counters["refresh_reuse"] == 1
    # everything issued from that authorization is dead
    for access in (tokens["access_token"], new["access_token"]):
        got = resource(client, access)
        assert got.status_code == 401
        assert got.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert refresh(client, new["refresh_token"]).json()["error"] == "invalid_grant"
    # another authorization of the same user is untouched
    assert resource(client, unrelated["access_token"]).status_code == 200
    assert refresh(client, unrelated["refresh_token"]).status_code == 200


def test_reuse_without_detection_only_rejects_the_old_token(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.reuse_detection = False
    tokens = code_flow(client)
    new = refresh(client, tokens["refresh_token"]).json()
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert mock_provider.counters["family_revoked"] == 0
    assert refresh(client, new["refresh_token"]).status_code == 200


def test_refresh_without_rotation_returns_the_same_token(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.rotation = False
    tokens = code_flow(client)
    for _ in range(3):
        response = refresh(client, tokens["refresh_token"])
        assert response.json()["refresh_token"] == tokens["refresh_token"]


def test_refresh_scope_may_narrow_but_not_widen(client: httpx2.Client) -> None:
    tokens = code_flow(client, scope="openid read write")
    narrowed = refresh(client, tokens["refresh_token"], scope="read")
    assert narrowed.json()["scope"] == "read"
    assert (
        resource(client, narrowed.json()["access_token"], required_scope="write").status_code == 403
    )
    widened = refresh(client, narrowed.json()["refresh_token"], scope="read admin")
    assert widened.json()["error"] == "invalid_scope"


def test_refresh_token_of_another_client_is_invalid_grant(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.register_client("other", "other-secret")
    tokens = code_flow(client)
    response = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=("other", "other-secret"),
    )
    assert response.json()["error"] == "invalid_grant"


def test_refresh_token_expiry() -> None:
    provider = MockProvider(refresh_ttl=100)
    with provider.client() as c:
        tokens = code_flow(c)
        provider.advance_time(101)
        assert refresh(c, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    provider.close()


# ---------------------------------------------------------------- client credentials, auth


def test_client_credentials(mock_provider: MockProvider, client: httpx2.Client) -> None:
    response = client.post(
        "/token", data={"grant_type": "client_credentials", "scope": "svc.read"}, auth=AUTH
    )
    body = response.json()
    assert response.status_code == 200
    assert "refresh_token" not in body
    assert body["scope"] == "svc.read"
    got = resource(client, body["access_token"]).json()
    assert got["sub"] == "test-client"
    assert mock_provider.counters["token:client_credentials"] == 1


def test_public_client_uses_none_auth_and_no_client_credentials(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.register_client("spa", None)
    verifier, challenge = pkce_pair()
    code = redirect_params(
        authorize(client, client_id="spa", code_challenge=challenge, code_challenge_method="S256")
    )["code"]
    ok = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "client_id": "spa",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )
    assert ok.status_code == 200
    cc = client.post("/token", data={"grant_type": "client_credentials", "client_id": "spa"})
    assert cc.json()["error"] == "unauthorized_client"


def test_basic_auth_is_form_decoded(mock_provider: MockProvider, client: httpx2.Client) -> None:
    client_id, secret = "weird:id é", "p@ss w+rd/&:%=ü"
    mock_provider.register_client(client_id, secret)
    encoded = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()
    ok = client.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {encoded}"},
    )
    assert ok.status_code == 200, ok.text
    # Without form-encoding, '+' decodes to a space and the secret no longer matches.
    raw = base64.b64encode(f"{quote_plus(client_id)}:{secret}".encode()).decode()
    bad = client.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw}"},
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    assert bad.headers["www-authenticate"].startswith("Basic")


def test_client_secret_post(client: httpx2.Client) -> None:
    ok = client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "test-client",
            "client_secret": "test-secret",
        },
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("data", "auth", "status", "error"),
    [
        ({"client_id": "test-client", "client_secret": "nope"}, None, 401, "invalid_client"),
        ({}, ("test-client", "nope"), 401, "invalid_client"),
        ({}, ("nobody", "test-secret"), 401, "invalid_client"),
        ({"client_id": "test-client"}, None, 401, "invalid_client"),  # 'none' not allowed
        ({"client_secret": "test-secret"}, AUTH, 400, "invalid_request"),  # two methods
    ],
)
def test_client_authentication_failures(
    client: httpx2.Client,
    data: dict[str, str],
    auth: tuple[str | bytes, str | bytes] | None,
    status: int,
    error: str,
) -> None:
    response = client.post(
        "/token",
        data={"grant_type": "client_credentials", **data},
        auth=auth if auth is not None else httpx2.USE_CLIENT_DEFAULT,
    )
    assert response.status_code == status
    assert response.json()["error"] == error


def test_client_restricted_to_basic(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.register_client("basic-only", "s3", auth_methods=["client_secret_basic"])
    post = client.post(
        "/token",
        data={"grant_type": "client_credentials", "client_id": "basic-only", "client_secret": "s3"},
    )
    assert post.status_code == 401
    basic = client.post(
        "/token", data={"grant_type": "client_credentials"}, auth=("basic-only", "s3")
    )
    assert basic.status_code == 200


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
    ],
)
def test_token_request_errors(client: httpx2.Client, data: dict[str, str], error: str) -> None:
    response = client.post("/token", data=data, auth=AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


def test_token_endpoint_rejects_json_body_and_repeated_params(client: httpx2.Client) -> None:
    as_json = client.post("/token", json={"grant_type": "client_credentials"}, auth=AUTH)
    assert as_json.json()["error"] == "invalid_request"
    repeated = client.post(
        "/token",
        content=b"grant_type=client_credentials&scope=a&scope=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=AUTH,
    )
    assert repeated.json()["error"] == "invalid_request"


def test_unauthorized_grant_for_client(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.register_client("code-only", "s", grant_types=["authorization_code"])
    response = client.post(
        "/token", data={"grant_type": "client_credentials"}, auth=("code-only", "s")
    )
    assert response.json()["error"] == "unauthorized_client"


def test_allowed_scopes(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.scopes_supported = ("read", "write")
    bad = client.post(
        "/token", data={"grant_type": "client_credentials", "scope": "read admin"}, auth=AUTH
    )
    assert bad.json()["error"] == "invalid_scope"
    assert client.get("/.well-known/oauth-authorization-server").json()["scopes_supported"] == [
        "read",
        "write",
    ]


# ---------------------------------------------------------------- revoke, introspect, resource


def test_revoke_access_token(mock_provider: MockProvider, client: httpx2.Client) -> None:
    tokens = code_flow(client)
    response = client.post(
        "/revoke",
        data={"token": tokens["access_token"], "token_type_hint": "access_token"},
        auth=AUTH,
    )
    assert response.status_code == 200
    assert resource(client, tokens["access_token"]).status_code == 401
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert mock_provider.counters["revoke"] == 1


def test_revoke_refresh_token_kills_the_grant(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    response = client.post(
        "/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=AUTH,
    )
    assert response.status_code == 200
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert resource(client, tokens["access_token"]).status_code == 401
    assert mock_provider.counters["revoked"] == 1
    assert mock_provider.counters["family_revoked"] == 0  # only reuse detection counts here


def test_revoke_unknown_or_foreign_token(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    assert client.post("/revoke", data={"token": "nope"}, auth=AUTH).status_code == 200
    mock_provider.register_client("other", "other-secret")
    tokens = code_flow(client)
    foreign = client.post(
        "/revoke", data={"token": tokens["access_token"]}, auth=("other", "other-secret")
    )
    assert foreign.status_code == 200
    assert resource(client, tokens["access_token"]).status_code == 200
    unauthenticated = client.post("/revoke", data={"token": tokens["access_token"]})
    assert unauthenticated.status_code == 401


def test_introspection(mock_provider: MockProvider, client: httpx2.Client) -> None:
    tokens = code_flow(client, login_hint="carol")
    active = client.post("/introspect", data={"token": tokens["access_token"]}, auth=AUTH).json()
    assert active["active"] is True
    assert active["sub"] == "carol"
    assert active["scope"] == "openid read"
    assert active["client_id"] == "test-client"
    assert active["exp"] - active["iat"] == 3600
    as_refresh = client.post("/introspect", data={"token": tokens["refresh_token"]}, auth=AUTH)
    assert as_refresh.json()["active"] is True
    mock_provider.invalidate_access_token(tokens["access_token"])
    gone = client.post("/introspect", data={"token": tokens["access_token"]}, auth=AUTH)
    assert gone.json() == {"active": False}
    assert client.post("/introspect", data={"token": "nope"}, auth=AUTH).json() == {"active": False}
    assert client.post("/introspect", data={"token": "nope"}).status_code == 401
    mock_provider.register_client("spa", None)
    public = client.post("/introspect", data={"token": tokens["refresh_token"], "client_id": "spa"})
    assert public.status_code == 401


def test_resource_errors(mock_provider: MockProvider, client: httpx2.Client) -> None:
    missing = client.get("/resource")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    garbage = resource(client, "garbage")
    assert garbage.status_code == 401
    assert 'error="invalid_token"' in garbage.headers["www-authenticate"]
    tokens = code_flow(client, scope="read")
    scoped = resource(client, tokens["access_token"], required_scope="write")
    assert scoped.status_code == 403
    assert 'error="insufficient_scope"' in scoped.headers["www-authenticate"]
    assert resource(client, tokens["access_token"], required_scope="read").status_code == 200


def test_access_token_expiry_and_server_side_kills(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    first = code_flow(client)
    mock_provider.advance_time(3601)
    assert resource(client, first["access_token"]).status_code == 401
    second = code_flow(client)
    assert mock_provider.invalidate_access_token(second["access_token"]) is True
    assert resource(client, second["access_token"]).status_code == 401
    assert refresh(client, second["refresh_token"]).status_code == 200
    third = code_flow(client, login_hint="dave")
    assert mock_provider.revoke_all(subject="dave") == 1
    assert resource(client, third["access_token"]).status_code == 401
    assert refresh(client, third["refresh_token"]).json()["error"] == "invalid_grant"
    fourth = code_flow(client)
    assert mock_provider.expire_access_tokens() >= 1
    assert resource(client, fourth["access_token"]).status_code == 401


def test_issue_tokens_directly(mock_provider: MockProvider, client: httpx2.Client) -> None:
    tokens = mock_provider.issue_tokens(subject="erin", scopes=["openid", "read"])
    assert resource(client, tokens["access_token"]).json()["sub"] == "erin"
    assert "id_token" in tokens
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    live = mock_provider.live_tokens(subject="erin")
    assert {t["kind"] for t in live} == {"access", "refresh"}
    info = mock_provider.token_info(tokens["refresh_token"])
    assert info is not None
    assert info["status"] == "rotated"


# ---------------------------------------------------------------- discovery, OIDC


def test_discovery_documents(mock_provider: MockProvider, client: httpx2.Client) -> None:
    oidc = client.get("/.well-known/openid-configuration").json()
    oauth = client.get("/.well-known/oauth-authorization-server").json()
    for doc in (oidc, oauth):
        assert doc["issuer"] == "https://mock-idp.test"
        assert doc["token_endpoint"] == "https://mock-idp.test/token"
        assert doc["authorization_endpoint"] == "https://mock-idp.test/authorize"
        assert doc["revocation_endpoint"] == "https://mock-idp.test/revoke"
        assert doc["introspection_endpoint"] == "https://mock-idp.test/introspect"
        assert doc["jwks_uri"] == "https://mock-idp.test/jwks"
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["authorization_response_iss_parameter_supported"] is False
    assert oidc["userinfo_endpoint"] == "https://mock-idp.test/userinfo"
    mock_provider.oidc = False
    assert client.get("/.well-known/openid-configuration").status_code == 404
    assert "userinfo_endpoint" not in client.get("/.well-known/oauth-authorization-server").json()


def test_id_token_verifies_against_jwks(
    mock_provider: MockProvider, mock_provider_url: str
) -> None:
    with httpx2.Client(base_url=mock_provider_url) as c:
        tokens = code_flow(c, nonce="n-0S6_WzA2Mj")
        jwks = KeySet.import_key_set(c.get("/jwks").json())
    decoded = jwt.decode(tokens["id_token"], jwks, algorithms=["RS256"])
    claims = decoded.claims
    assert decoded.header["alg"] == "RS256"
    assert claims["iss"] == mock_provider_url
    assert claims["aud"] == "test-client"
    assert claims["sub"] == "user-1"
    assert claims["nonce"] == "n-0S6_WzA2Mj"
    digest = hashlib.sha256(tokens["access_token"].encode()).digest()
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def test_jwks_is_public_only(client: httpx2.Client) -> None:
    keys = client.get("/jwks").json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA"
    assert "d" not in keys[0]
    assert "p" not in keys[0]


def test_no_id_token_without_openid_or_oidc(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    assert "id_token" not in code_flow(client, scope="read")
    mock_provider.oidc = False
    assert "id_token" not in code_flow(client, scope="openid read")


def test_userinfo(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.user_claims["user-1"] = {"email": "user1@example.test"}
    tokens = code_flow(client)
    info = client.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.json() == {"sub": "user-1", "email": "user1@example.test"}
    no_openid = code_flow(client, scope="read")
    denied = client.get(
        "/userinfo", headers={"Authorization": f"Bearer {no_openid['access_token']}"}
    )
    assert denied.status_code == 403


# ---------------------------------------------------------------- faults


def _cc(client: httpx2.Client, **headers: str) -> httpx2.Response:
    return client.post(
        "/token", data={"grant_type": "client_credentials"}, auth=AUTH, headers=headers
    )


def test_fault_status_with_retry_after_is_one_shot(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.faults.add("token", status=503, retry_after=2)
    failed = _cc(client)
    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "2"
    assert failed.json()["error"] == "temporarily_unavailable"
    assert _cc(client).status_code == 200
    assert mock_provider.counters["token"] == 2
    assert mock_provider.counters["fault:token"] == 1


def test_fault_429_and_times(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("token", status=429, retry_after=1, times=2)
    assert [_cc(client).status_code for _ in range(3)] == [429, 429, 200]
    mock_provider.faults.add("token", status=500, times=None)
    assert [_cc(client).status_code for _ in range(3)] == [500, 500, 500]
    assert len(mock_provider.faults) == 1
    mock_provider.faults.clear()
    assert _cc(client).status_code == 200


def test_fault_matches_grant_type(mock_provider: MockProvider, client: httpx2.Client) -> None:
    tokens = code_flow(client)
    mock_provider.faults.add("token", status=502, grant_type="refresh_token")
    assert _cc(client).status_code == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 502
    # the faulted request did not consume the refresh token
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_fault_html_page(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("token", "html")
    response = _cc(client)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text


def test_fault_malformed_json(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("token", "malformed_json")
    response = _cc(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_fault_errors_with_200(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("token", "error_200", error="bad_refresh_token")
    mock_provider.faults.add("token", "slack_error", error="invalid_refresh_token")
    github = _cc(client)
    assert (github.status_code, github.json()) == (200, {"error": "bad_refresh_token"})
    slack = _cc(client)
    assert (slack.status_code, slack.json()) == (
        200,
        {"ok": False, "error": "invalid_refresh_token"},
    )


def test_fault_raw_body(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("token", "raw", status=418, body="teapot", content_type="text/plain")
    response = _cc(client)
    assert (response.status_code, response.text) == (418, "teapot")


def test_fault_on_resource_401(mock_provider: MockProvider, client: httpx2.Client) -> None:
    tokens = code_flow(client)
    mock_provider.faults.add("resource", status=401)
    forced = resource(client, tokens["access_token"])
    assert forced.status_code == 401
    assert 'error="invalid_token"' in forced.headers["www-authenticate"]
    assert resource(client, tokens["access_token"]).status_code == 200


def test_latency_fault_is_served_after_the_delay(
    mock_provider: MockProvider, mock_provider_url: str
) -> None:
    mock_provider.faults.add("token", "latency", latency=30)
    with (
        httpx2.Client(base_url=mock_provider_url, timeout=0.2) as c,
        pytest.raises(httpx2.ReadTimeout),
    ):
        _cc(c)
    mock_provider.latency["resource"] = 0.01
    tokens = mock_provider.issue_tokens()
    with httpx2.Client(base_url=mock_provider_url) as c:
        assert resource(c, tokens["access_token"]).status_code == 200


def test_fault_rejects_unknown_endpoint(mock_provider: MockProvider) -> None:
    with pytest.raises(ValueError, match="unknown endpoint"):
        mock_provider.faults.add("tokn")


# ---------------------------------------------------------------- quirks


@pytest.mark.parametrize("name", ["github", "slack", "google", "entra", "salesforce"])
def test_a_quirk_preset_is_a_fresh_mock_quirks_each_call(name: str) -> None:
    # Each preset builds a new MockQuirks: two calls never share a mutable field.
    make = getattr(MockQuirks, name)
    first, second = make(), make()
    assert isinstance(first, MockQuirks) and first == second and first != MockQuirks()
    assert first.extra_token_fields is not second.extra_token_fields
    assert (make.__name__, make.__qualname__) == (name, f"MockQuirks.{name}") and make.__doc__
    assert MockQuirks().github() == MockQuirks.github()  # on an instance too, as a classmethod


@pytest.mark.parametrize("name", ["github", "slack", "google", "entra", "salesforce"])
def test_a_quirk_preset_reads_as_a_classmethod_equal_hashable_and_picklable(name: str) -> None:
    # What a classmethod gives: a method bound to the class, the same function each read, so a
    # table keyed by presets finds them and a preset can cross a process boundary.
    make = getattr(MockQuirks, name)
    assert make == getattr(MockQuirks, name) == getattr(MockQuirks(), name)
    assert {make: name}[getattr(MockQuirks, name)] == name
    assert make.__self__ is MockQuirks
    assert pickle.loads(pickle.dumps(make))() == make()


def test_github_form_unless_accept_json(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks = MockQuirks.github()
    form = _cc(client)
    assert form.headers["content-type"].startswith("application/x-www-form-urlencoded")
    parsed = parse_qs(form.text)
    assert parsed["token_type"] == ["bearer"]
    assert "expires_in" not in parsed
    as_json = _cc(client, Accept="application/json")
    assert as_json.json()["token_type"] == "bearer"
    error = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "nope"},
        auth=AUTH,
        headers={"Accept": "application/json"},
    )
    assert (error.status_code, error.json()["error"]) == (200, "invalid_grant")


def test_slack_shape_and_errors(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks = MockQuirks.slack()
    verifier, challenge = pkce_pair()
    code = redirect_params(
        authorize(
            client,
            scope="chat:write,users:read",
            code_challenge=challenge,
            code_challenge_method="S256",
        )
    )["code"]
    body = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=AUTH,
    ).json()
    assert body["ok"] is True
    assert "access_token" not in body
    user = body["authed_user"]
    assert user["scope"] == "chat:write,users:read"
    assert resource(client, user["access_token"]).status_code == 200
    error = refresh(client, "nope")
    assert (error.status_code, error.json()) == (200, {"ok": False, "error": "invalid_grant"})


@pytest.mark.parametrize(("fmt", "expected"), [("int", 3600), ("string", "3600"), ("omit", None)])
def test_expires_in_format(
    mock_provider: MockProvider, client: httpx2.Client, fmt: Any, expected: object
) -> None:
    mock_provider.quirks.expires_in = fmt
    assert _cc(client).json().get("expires_in") == expected


def test_non_expiring_tokens() -> None:
    provider = MockProvider(access_ttl=None)
    with provider.client() as c:
        body = _cc(c).json()
        assert "expires_in" not in body
        provider.advance_time(10**9)
        assert resource(c, body["access_token"]).status_code == 200
    provider.close()


@pytest.mark.parametrize(
    ("echo", "expected"),
    [
        ("space", "openid read write"),
        ("comma", "openid,read,write"),
        ("plus", "openid+read+write"),
        ("array", ["openid", "read", "write"]),
        ("omit", None),
    ],
)
def test_scope_echo(
    mock_provider: MockProvider, client: httpx2.Client, echo: Any, expected: object
) -> None:
    mock_provider.quirks.scope_echo = echo
    assert code_flow(client, scope="openid read write").get("scope") == expected


def test_narrowed_and_widened_grants(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks.narrow_scopes = frozenset({"write"})
    mock_provider.quirks.widen_scopes = ("profile",)
    tokens = code_flow(client, scope="read write")
    assert tokens["scope"] == "read profile"
    assert resource(client, tokens["access_token"], required_scope="write").status_code == 403
    assert resource(client, tokens["access_token"], required_scope="profile").status_code == 200


@pytest.mark.parametrize(("delimiter", "scope"), [(",", "a,b"), ("+", "a+b")])
def test_custom_scope_delimiter(
    mock_provider: MockProvider, client: httpx2.Client, delimiter: str, scope: str
) -> None:
    mock_provider.quirks.scope_delimiter = delimiter
    ok = client.post("/token", data={"grant_type": "client_credentials", "scope": scope}, auth=AUTH)
    assert resource(client, ok.json()["access_token"], required_scope="a b").status_code == 200
    spaced = client.post(
        "/token", data={"grant_type": "client_credentials", "scope": "a b"}, auth=AUTH
    )
    assert spaced.json()["error"] == "invalid_scope"


def test_google_no_refresh_token_on_refresh(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.quirks = MockQuirks.google()
    tokens = code_flow(client)
    for _ in range(2):
        response = refresh(client, tokens["refresh_token"])
        assert response.status_code == 200
        assert "refresh_token" not in response.json()
    assert mock_provider.counters["family_revoked"] == 0


def test_extra_token_fields_on_every_grant(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.quirks = MockQuirks.salesforce()
    tokens = code_flow(client)
    assert tokens["instance_url"] == "https://na1.salesforce.test"
    assert "expires_in" not in tokens
    assert "scope" not in tokens
    again = refresh(client, tokens["refresh_token"]).json()
    assert again["instance_url"] == "https://na1.salesforce.test"


def test_entra_scope_required_on_refresh(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.quirks = MockQuirks.entra()
    tokens = code_flow(client, scope="openid offline_access read")
    without = refresh(client, tokens["refresh_token"])
    assert without.status_code == 400
    assert without.json()["error"] == "invalid_request"
    assert "AADSTS" in without.json()["error_description"]
    with_scope = refresh(client, tokens["refresh_token"], scope="openid offline_access read")
    assert with_scope.status_code == 200


def test_refresh_token_lifetime_field() -> None:
    provider = MockProvider(
        refresh_ttl=8726400,
        quirks=MockQuirks(refresh_expires_in_field="x_refresh_token_expires_in"),
    )
    with provider.client() as c:
        assert code_flow(c)["x_refresh_token_expires_in"] == 8726400
    provider.close()


# ---------------------------------------------------------------- records and hygiene


def test_requests_are_recorded_without_leaking_secrets(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    refresh(client, tokens["refresh_token"], scope="read")
    recorded = mock_provider.requests_to("token", "refresh_token")
    assert len(recorded) == 1
    assert recorded[0].scope == "read"
    assert recorded[0].auth_method == "client_secret_basic"
    assert recorded[0].client_id == "test-client"
    assert recorded[0].headers["accept"] == "application/json"
    text = repr(recorded) + repr(mock_provider) + repr(mock_provider.default_client)
    text += repr(recorded[0].redacted_form())
    for secret in (tokens["refresh_token"], tokens["access_token"], "test-secret"):
        assert secret not in text
    mock_provider.reset_counters()
    assert mock_provider.counters["token"] == 0
    assert mock_provider.requests == []


def test_tokens_are_unique_and_random(mock_provider: MockProvider) -> None:
    values: set[str] = set()
    for _ in range(50):
        tokens = mock_provider.issue_tokens(scopes=["read"])
        values.update((tokens["access_token"], tokens["refresh_token"]))
    assert len(values) == 100


# ---------------------------------------------------------------- concurrency


def test_sync_client_from_many_threads(mock_provider: MockProvider) -> None:
    barrier = threading.Barrier(16)

    def work(_: int) -> list[str]:
        barrier.wait()
        issued = []
        with mock_provider.client() as c:
            for _ in range(10):
                response = _cc(c)
                assert response.status_code == 200
                access = response.json()["access_token"]
                assert resource(c, access).status_code == 200
                issued.append(access)
        return issued

    with ThreadPoolExecutor(16) as pool:
        results = [t for batch in pool.map(work, range(16)) for t in batch]
    assert len(set(results)) == 160
    assert mock_provider.counters["token:client_credentials"] == 160
    assert mock_provider.counters["resource"] == 160


def test_one_shared_sync_client_used_by_many_threads(mock_provider: MockProvider) -> None:
    tokens = mock_provider.issue_tokens(scopes=["read"])
    with mock_provider.client() as c, ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(lambda _: resource(c, tokens["access_token"]).status_code, range(64))
        )
    assert statuses == [200] * 64


def test_concurrent_refresh_redeems_exactly_once(mock_provider: MockProvider) -> None:
    tokens = mock_provider.issue_tokens(scopes=["read"])
    barrier = threading.Barrier(16)

    def redeem(_: int) -> int:
        with mock_provider.client() as c:
            barrier.wait()
            return refresh(c, tokens["refresh_token"]).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(pool.map(redeem, range(16)))
    assert statuses == [200] + [400] * 15
    assert mock_provider.refresh_tokens_redeemed == 1
    # the losers presented a rotated token: reuse detection killed the family
    assert mock_provider.counters["family_revoked"] == 1


async def test_many_async_tasks(mock_provider: MockProvider) -> None:
    async with mock_provider.async_client() as c:

        async def one() -> str:
            response = await c.post("/token", data={"grant_type": "client_credentials"}, auth=AUTH)
            access: str = response.json()["access_token"]
            got = await c.get("/resource", headers={"Authorization": f"Bearer {access}"})
            assert got.status_code == 200
            return access

        issued = await asyncio.gather(*(one() for _ in range(200)))
    assert len(set(issued)) == 200
    assert mock_provider.counters["token:client_credentials"] == 200


@pytest.mark.slow
def test_several_processes_against_a_served_provider(
    mock_provider: MockProvider, mock_provider_url: str
) -> None:
    script = (
        "import sys, httpx2\n"
        "ok = 0\n"
        "with httpx2.Client(base_url=sys.argv[1]) as c:\n"
        "    for _ in range(10):\n"
        "        r = c.post('/token', data={'grant_type': 'client_credentials'},"
        " auth=('test-client', 'test-secret'))\n"
        "        ok += r.status_code == 200\n"
        "print(ok)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, mock_provider_url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outputs == ["10", "10", "10"]
    assert mock_provider.counters["token:client_credentials"] == 30


# ---------------------------------------------------------------- plugin and packaging


def test_plugin_imports_nothing_optional() -> None:
    code = (
        "import sys, oauth2_broker_mw.testing.pytest_plugin\n"
        "print(sorted(m for m in ('starlette', 'uvicorn', 'multipart') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_plugin_names_the_extra_when_starlette_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from oauth2_broker_mw.testing import pytest_plugin

    monkeypatch.setitem(sys.modules, "oauth2_broker_mw.testing.mock_provider", None)
    with pytest.raises(pytest.fail.Exception, match=r"oauth2-broker-mw\[starlette\]"):
        pytest_plugin._import_provider()


def test_mock_provider_exports_what_the_testing_package_exports() -> None:
    # The package's __all__ is the one list (it cannot take it from mock_provider: ``import
    # oauth2_broker_mw.testing`` would then import Starlette); mock_provider takes it with
    # ``from . import __all__ as __all__``, which mypy reads as re-exports, and adds LIKE_NAMES
    # without changing the package's list.
    import oauth2_broker_mw.testing as testing
    from oauth2_broker_mw.testing import mock_provider

    assert sorted(mock_provider.__all__) == sorted([*testing.__all__, "LIKE_NAMES"])
    for name in testing.__all__:
        assert getattr(mock_provider, name) is getattr(testing, name), name


def test_the_endpoint_urls_follow_the_issuer_and_are_read_only() -> None:
    provider = MockProvider(issuer="https://idp.test/base/")
    assert provider.token_endpoint == "https://idp.test/base/token"
    provider.issuer = "http://127.0.0.1:8080"
    assert (provider.jwks_uri, provider.resource_url) == (
        "http://127.0.0.1:8080/jwks",
        "http://127.0.0.1:8080/resource",
    )
    with pytest.raises(AttributeError, match="par_endpoint is read-only"):
        provider.par_endpoint = "https://elsewhere.test/par"  # type: ignore[assignment]
    assert provider.par_endpoint == "http://127.0.0.1:8080/par"


def test_custom_clients_replace_the_default() -> None:
    provider = MockProvider(clients=[MockClient("a", "b", redirect_uris=(REDIRECT,))])
    assert set(provider.clients) == {"a"}
    with provider.client() as c:
        assert _cc(c).status_code == 401
        ok = c.post("/token", data={"grant_type": "client_credentials"}, auth=("a", "b"))
        assert ok.status_code == 200
    provider.close()


def test_descriptor_points_at_the_provider(mock_provider: MockProvider) -> None:
    desc = mock_provider.descriptor()
    assert desc.token_endpoint == "https://mock-idp.test/token"
    assert desc.authorization_endpoint == "https://mock-idp.test/authorize"
    assert desc.revocation_endpoint == "https://mock-idp.test/revoke"
    assert desc.issuer == "https://mock-idp.test"
    assert desc.scope_delimiter == " "
    assert desc.pkce == "optional"
    mock_provider.quirks = MockQuirks.slack()
    mock_provider.send_iss = True
    slack = mock_provider.descriptor(id="slack-mock", pkce="unsupported")
    assert (slack.id, slack.pkce, slack.scope_delimiter) == ("slack-mock", "unsupported", ",")
    assert slack.token_path == ("authed_user",)
    assert slack.authorization_response_iss_parameter_supported is True
    with mock_provider.serve() as url:
        assert mock_provider.descriptor().token_endpoint == f"{url}/token"


# ---------------------------------------------------------------- JWT client authentication


def _assertion(key: Any, alg: str, client_id: str, aud: str, **claims: Any) -> str:
    import time as _time

    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": int(_time.time()) + 300,
        "jti": secrets.token_urlsafe(16),
        **claims,
    }
    return jwt.encode({"alg": alg}, body, key)


def _assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def test_client_secret_jwt(mock_provider: MockProvider, client: httpx2.Client) -> None:
    from joserfc.jwk import OctKey

    secret = "a-long-shared-secret-for-hs256-assertions"
    mock_provider.register_client("jwt-client", secret, auth_methods=["client_secret_jwt"])
    key = OctKey.import_key(secret)
    assertion = _assertion(key, "HS256", "jwt-client", mock_provider.token_endpoint)
    ok = client.post("/token", data=_assertion_form(assertion))
    assert ok.status_code == 200, ok.text
    assert mock_provider.requests_to("token")[-1].auth_method == "client_secret_jwt"
    replay = client.post("/token", data=_assertion_form(assertion))
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_client")
    wrong_aud = _assertion(key, "HS256", "jwt-client", "https://elsewhere.test/token")
    assert client.post("/token", data=_assertion_form(wrong_aud)).status_code == 401
    expired = _assertion(key, "HS256", "jwt-client", mock_provider.issuer, exp=1)
    assert client.post("/token", data=_assertion_form(expired)).status_code == 401
    wrong_key = _assertion(
        OctKey.import_key("another-long-secret-another-long-secret"),
        "HS256",
        "jwt-client",
        mock_provider.token_endpoint,
    )
    assert client.post("/token", data=_assertion_form(wrong_key)).status_code == 401
    # a client registered for basic/post only may not use assertions
    basic_only = _assertion(
        OctKey.import_key("test-secret-test-secret"), "HS256", "test-client", mock_provider.issuer
    )
    assert client.post("/token", data=_assertion_form(basic_only)).status_code == 401


def test_private_key_jwt(mock_provider: MockProvider, client: httpx2.Client) -> None:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", auto_kid=True)
    mock_provider.register_client(
        "pkjwt",
        None,
        auth_methods=["private_key_jwt"],
        jwks={"keys": [key.as_dict(private=False)]},
    )
    assertion = _assertion(key, "ES256", "pkjwt", mock_provider.token_endpoint)
    ok = client.post("/token", data=_assertion_form(assertion))
    assert ok.status_code == 200, ok.text
    other = ECKey.generate_key("P-256", auto_kid=True)
    forged = _assertion(other, "ES256", "pkjwt", mock_provider.token_endpoint)
    assert client.post("/token", data=_assertion_form(forged)).status_code == 401
    both = client.post(
        "/token",
        data=_assertion_form(_assertion(key, "ES256", "pkjwt", mock_provider.issuer)),
        auth=AUTH,
    )
    assert both.json()["error"] == "invalid_request"
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]


# ---------------------------------------------------------------- more quirks


def test_json_token_bodies(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks.token_body_format = "json"
    as_json = client.post("/token", json={"grant_type": "client_credentials"}, auth=AUTH)
    assert as_json.status_code == 200
    as_form = _cc(client)
    assert as_form.json()["error"] == "invalid_request"
    mock_provider.quirks.token_body_format = "any"
    assert _cc(client).status_code == 200
    assert mock_provider.descriptor(body_format="form").body_format == "form"


def test_separate_refresh_endpoint(mock_provider: MockProvider, client: httpx2.Client) -> None:
    tokens = code_flow(client)
    assert client.post("/refresh", data={}).status_code == 404
    mock_provider.quirks.separate_refresh_endpoint = True
    at_token = refresh(client, tokens["refresh_token"])
    assert at_token.json()["error"] == "unsupported_grant_type"
    at_refresh = client.post(
        "/refresh",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=AUTH,
    )
    assert at_refresh.status_code == 200
    assert mock_provider.counters["refresh:refresh_token"] == 1
    cc = client.post("/refresh", data={"grant_type": "client_credentials"}, auth=AUTH)
    assert cc.json()["error"] == "unsupported_grant_type"
    assert mock_provider.descriptor().refresh_endpoint == "https://mock-idp.test/refresh"


def test_renamed_code_param(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks.code_param = "spapi_oauth_code"
    got = redirect_params(authorize(client))
    assert "code" not in got
    assert len(got["spapi_oauth_code"]) > 20


def test_expires_in_milliseconds(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks.expires_in = "ms"
    assert _cc(client).json()["expires_in"] == 3_600_000
    assert mock_provider.descriptor().expires_in_unit == 0.001


# ---------------------------------------------------------------- attack knobs


def _id_claims(provider: MockProvider, client: httpx2.Client, **params: str) -> dict[str, Any]:
    tokens = code_flow(client, **params)
    jwks = KeySet.import_key_set(client.get("/jwks").json())
    claims: dict[str, Any] = jwt.decode(tokens["id_token"], jwks, algorithms=["RS256"]).claims
    return claims


def test_id_token_overrides(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.id_token_overrides = {"nonce": "attacker", "aud": "other-client", "iat": None}
    claims = _id_claims(mock_provider, client, nonce="mine")
    assert claims["nonce"] == "attacker"
    assert claims["aud"] == "other-client"
    assert "iat" not in claims


def test_id_token_bad_signatures(mock_provider: MockProvider, client: httpx2.Client) -> None:
    from joserfc.errors import BadSignatureError

    mock_provider.id_token_signing = "foreign_key"
    with pytest.raises(BadSignatureError):
        _id_claims(mock_provider, client)
    mock_provider.id_token_signing = "none"
    unsigned = code_flow(client)["id_token"]
    header = json.loads(base64.urlsafe_b64decode(unsigned.split(".")[0] + "=="))
    assert header["alg"] == "none"
    assert unsigned.endswith(".")


def test_iss_override_for_mix_up_tests(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.iss_override = "https://evil.test"
    assert redirect_params(authorize(client))["iss"] == "https://evil.test"


def test_redirect_fault_is_not_followed(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.faults.add("token", "redirect", location="https://evil.test/steal")
    response = _cc(client)
    assert response.status_code == 307
    assert response.headers["location"] == "https://evil.test/steal"


def test_lost_refresh_response_rotates_anyway(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    mock_provider.faults.add("token", "lost_response", grant_type="refresh_token")
    lost = refresh(client, tokens["refresh_token"])
    assert lost.status_code == 504
    assert mock_provider.refresh_tokens_redeemed == 1
    # The client retries with the token it still has: that token was rotated, so reuse
    # detection ends the grant (FAPI 2.0's warning about rotation and lost responses).
    retry = refresh(client, tokens["refresh_token"])
    assert retry.json()["error"] == "invalid_grant"
    assert mock_provider.counters["family_revoked"] == 1


def test_lost_revoke_response_still_revokes(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    tokens = code_flow(client)
    mock_provider.faults.add("revoke", "lost_response")
    response = client.post("/revoke", data={"token": tokens["refresh_token"]}, auth=AUTH)
    assert response.status_code == 504
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"


# ---------------------------------------------------------------- mounting


def test_login_form_posts_back_under_a_mount_point() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    provider = MockProvider(issuer="https://app.test/idp", auto_approve=False)
    outer = Starlette(routes=[Mount("/idp", app=provider.app)])
    transport = httpx2.ASGITransport(app=outer)

    async def run() -> None:
        async with httpx2.AsyncClient(transport=transport, base_url="https://app.test") as c:
            page = await c.get(
                "/idp/authorize",
                params={
                    "response_type": "code",
                    "client_id": "test-client",
                    "redirect_uri": REDIRECT,
                    "state": "s",
                },
            )
            assert 'action="/idp/authorize"' in page.text
            meta = await c.get("/idp/.well-known/openid-configuration")
            assert meta.json()["token_endpoint"] == "https://app.test/idp/token"
            posted = await c.post(
                "/idp/authorize",
                data={
                    "response_type": "code",
                    "client_id": "test-client",
                    "redirect_uri": REDIRECT,
                    "state": "s",
                    "username": "alice",
                    "password": "any",
                },
            )
            assert "code" in redirect_params(posted)

    asyncio.run(run())
    provider.close()


# ---------------------------------------------------------------- reuse interval, timeouts


def test_reuse_interval_accepts_the_previous_token_briefly(
    mock_provider: MockProvider, client: httpx2.Client
) -> None:
    mock_provider.reuse_interval = 30
    tokens = code_flow(client)
    first = refresh(client, tokens["refresh_token"])
    again = refresh(client, tokens["refresh_token"])  # a racing worker, within the interval
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["refresh_token"] != first.json()["refresh_token"]
    assert mock_provider.counters["refresh_grace"] == 1
    assert mock_provider.counters["family_revoked"] == 0
    mock_provider.advance_time(31)
    late = refresh(client, tokens["refresh_token"])
    assert late.json()["error"] == "invalid_grant"
    assert mock_provider.counters["family_revoked"] == 1


def test_in_process_clients_honour_read_timeouts(mock_provider: MockProvider) -> None:
    mock_provider.faults.add("token", "latency", latency=30, times=2)
    with mock_provider.client(timeout=0.1) as c, pytest.raises(httpx2.ReadTimeout):
        _cc(c)

    async def run() -> None:
        async with mock_provider.async_client(timeout=0.1) as c:
            with pytest.raises(httpx2.ReadTimeout):
                await c.post("/token", data={"grant_type": "client_credentials"}, auth=AUTH)

    asyncio.run(run())


def test_request_log_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from oauth2_broker_mw.testing import _mock_core as module

    monkeypatch.setattr(module, "_MAX_RECORDED", 3)
    with MockProvider() as provider, provider.client() as c:
        c.get("/authorize")
        for _ in range(4):
            c.get("/jwks")
        assert [r.endpoint for r in provider.requests] == ["jwks"] * 3
        assert provider.counters["authorize"] == 1


# ---------------------------------------------------------------- pushed authorization requests


def _push(client: httpx2.Client, **params: str) -> httpx2.Response:
    body = {
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": "openid read",
        "state": "pushed-state",
        **params,
    }
    return client.post("/par", data=body, auth=AUTH)


def test_par_flow(mock_provider: MockProvider, client: httpx2.Client) -> None:
    verifier, challenge = pkce_pair()
    pushed = _push(client, code_challenge=challenge, code_challenge_method="S256")
    assert pushed.status_code == 201
    request_uri = pushed.json()["request_uri"]
    assert request_uri.startswith("urn:ietf:params:oauth:request_uri:")
    assert pushed.json()["expires_in"] == 60
    query = {"client_id": "test-client", "request_uri": request_uri}
    got = redirect_params(client.get("/authorize", params=query))
    assert got["state"] == "pushed-state"
    token = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=AUTH,
    )
    assert token.json()["scope"] == "openid read"
    again = client.get("/authorize", params=query)  # single use
    assert again.status_code == 400
    assert "invalid_request_uri" in again.text
    assert mock_provider.counters["par"] == 1


def test_par_errors(mock_provider: MockProvider, client: httpx2.Client) -> None:
    assert client.post("/par", data={"response_type": "code"}).status_code == 401
    with_uri = _push(client, request_uri="urn:x")
    assert (with_uri.status_code, with_uri.json()["error"]) == (400, "invalid_request")
    bad_type = _push(client, response_type="token")
    assert bad_type.json()["error"] == "unsupported_response_type"
    request_uri = _push(client).json()["request_uri"]
    mock_provider.register_client("other", "s")
    wrong_client = client.get(
        "/authorize", params={"client_id": "other", "request_uri": request_uri}
    )
    assert wrong_client.status_code == 400
    mock_provider.advance_time(61)
    expired = client.get(
        "/authorize", params={"client_id": "test-client", "request_uri": request_uri}
    )
    assert expired.status_code == 400


def test_par_required(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.par = "required"
    assert redirect_params(authorize(client))["error"] == "invalid_request"
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert meta["require_pushed_authorization_requests"] is True
    desc = mock_provider.descriptor()
    assert desc.pushed_authorization_request_endpoint == "https://mock-idp.test/par"
    assert desc.require_pushed_authorization_requests is True
    mock_provider.par = "off"
    assert _push(client).status_code == 404
    assert (
        "pushed_authorization_request_endpoint"
        not in client.get("/.well-known/oauth-authorization-server").json()
    )


def test_par_with_the_login_form(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.auto_approve = False
    mock_provider.par = "required"
    request_uri = _push(client).json()["request_uri"]
    query = {"client_id": "test-client", "request_uri": request_uri}
    page = client.get("/authorize", params=query)
    assert 'id="login"' in page.text
    assert "request_uri" in page.text
    assert "pushed-state" not in page.text  # the pushed parameters stay server-side
    posted = client.post("/authorize", data={**query, "username": "zoe", "password": "x"})
    code = redirect_params(posted)["code"]
    tokens = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        auth=AUTH,
    ).json()
    assert resource(client, tokens["access_token"]).json()["sub"] == "zoe"


def test_plugin_fixtures_in_a_users_test_run(tmp_path: Any) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "conftest.py").write_text(
        "import pytest\n"
        "from oauth2_broker_mw.testing import MockProvider\n"
        "\n"
        "@pytest.fixture\n"
        "def mock_provider():\n"
        "    with MockProvider(rotation=False) as provider:\n"
        "        yield provider\n"
    )
    (tmp_path / "test_user.py").write_text(
        "import httpx2\n"
        "\n"
        "def test_in_process(mock_provider):\n"
        "    assert mock_provider.rotation is False\n"
        "    with mock_provider.client() as c:\n"
        "        r = c.post('/token', data={'grant_type': 'client_credentials'},\n"
        "                   auth=('test-client', 'test-secret'))\n"
        "    assert r.status_code == 200\n"
        "\n"
        "def test_served(mock_provider, mock_provider_url):\n"
        "    assert mock_provider.issuer == mock_provider_url\n"
        "    meta = httpx2.get(mock_provider_url + '/.well-known/openid-configuration').json()\n"
        "    assert meta['issuer'] == mock_provider_url\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_param_renames(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks.param_renames = {"client_id": "client_key"}
    standard = authorize(client)  # client_id is not a parameter this provider knows
    assert standard.status_code == 400
    got = redirect_params(authorize(client, client_id="<omit>", client_key="test-client"))
    post = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": REDIRECT,
            "client_key": "test-client",
            "client_secret": "test-secret",
        },
    )
    assert post.status_code == 200, post.text
    assert mock_provider.descriptor().param_renames == {"client_id": "client_key"}


@pytest.mark.parametrize(
    ("path", "reader"),
    [
        (("expiresIn",), lambda body: body["expiresIn"]),
        (("tokens", "access", "expirySeconds"), lambda b: b["tokens"]["access"]["expirySeconds"]),
    ],
)
def test_expires_in_path(
    mock_provider: MockProvider, client: httpx2.Client, path: tuple[str, ...], reader: Any
) -> None:
    mock_provider.quirks.expires_in_path = path
    body = _cc(client).json()
    assert "expires_in" not in body
    assert reader(body) == 3600
    assert mock_provider.descriptor().expires_in_path == path


def test_slack_bot_shape(mock_provider: MockProvider, client: httpx2.Client) -> None:
    mock_provider.quirks = MockQuirks(response_shape="slack_bot", scope_echo="comma")
    body = code_flow(client, scope="chat:write")
    assert body["ok"] is True
    assert body["token_type"] == "bot"
    assert body["authed_user"] == {"id": "user-1"}
    assert resource(client, body["access_token"]).status_code == 200
    assert mock_provider.descriptor().token_type_aliases == {"bot": "Bearer"}


def test_serve_on_a_chosen_port(mock_provider: MockProvider) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mock_provider.serve(port=port) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert httpx2.get(f"{url}/jwks").status_code == 200


def test_a_served_provider_keeps_idle_connections_longer_than_http_clients_do(
    mock_provider: MockProvider,
) -> None:
    """httpx/httpx2 drop an idle pooled connection after 5 s (keepalive_expiry). A server that
    closes at the same 5 s races the client: a request sent on the closing connection fails with
    "Server disconnected without sending a response" (seen as a TransportError in the 4-process
    refresh test). Like real providers (nginx: 75 s), the served MockProvider keeps it longer."""
    import socket

    assert httpx2.Limits().keepalive_expiry == 5.0
    with mock_provider.serve() as url:
        port = int(url.rsplit(":", 1)[1])
        request = b"GET /jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for attempt in range(2):
                sock.sendall(request)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(65536)
                    assert chunk, f"the server closed the connection (request {attempt + 1})"
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200")
                head, _, body = answer.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                while len(body) < length:
                    body += sock.recv(65536)
                if attempt == 0:
                    time.sleep(5.5)  # past the clients' expiry: a 5 s server has closed by now


# ---------------------------------------------------------------- like()


@pytest.mark.parametrize("name", ["GitHub", "google", "entra", "slack", "x", "quickbooks"])
def test_like_known_providers(name: str) -> None:
    from oauth2_broker_mw.testing.mock_provider import LIKE_NAMES

    assert name.lower() in LIKE_NAMES
    with MockProvider.like(name) as provider, provider.client() as c:
        if name == "x":
            assert provider.pkce == "required"
            assert _cc(c).status_code == 200
            post = c.post(
                "/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "test-client",
                    "client_secret": "test-secret",
                },
            )
            assert post.status_code == 401  # HTTP Basic only
        elif name == "GitHub":
            assert _cc(c).headers["content-type"].startswith("application/x-www-form")
            assert "refresh_token" not in code_flow(c, scope="repo")
        elif name == "quickbooks":
            got = redirect_params(authorize(c))
            assert got["realmId"] == "9130350000000000"
        else:
            assert _cc(c).status_code == 200


def test_like_accepts_overrides_and_rejects_unknown_names() -> None:
    with MockProvider.like("google", oidc=False) as provider:
        assert (provider.rotation, provider.oidc) == (False, False)
        assert provider.quirks.refresh_token_in_refresh_response is False
    with pytest.raises(ValueError, match="unknown provider"):
        MockProvider.like("myspace")


def test_retarget_a_preset_and_log_in_with_the_broker() -> None:
    from oauth2_broker_mw import Broker
    from oauth2_broker_mw import presets

    with MockProvider.like("github") as provider:
        desc = provider.retarget(presets.github())
        assert desc.token_endpoint == "https://mock-idp.test/token"
        assert desc.authorization_endpoint == "https://mock-idp.test/authorize"
        broker = Broker(
            desc,
            client_id="test-client",
            client_secret="test-secret",
            http_client=provider.client(),
        )
        start = broker.start_authorization(
            tenant="acme", principal="octocat", scopes=["repo", "user"], redirect_uri=REDIRECT
        )
        with provider.client() as c:
            got = redirect_params(c.get(start.url))
        record = broker.exchange_code(state=got["state"], code=got["code"])
        assert record.scopes.scopes == ("repo", "user")
        assert record.expires_at is None  # GitHub OAuth app tokens do not expire
        assert provider.requests_to("token")[0].headers["accept"] == "application/json"
        broker.close()


def test_factory_fixture_makes_independent_providers(
    mock_provider_factory: Any,
) -> None:
    first = mock_provider_factory(issuer="https://idp-one.test")
    second = mock_provider_factory(like="slack")
    assert first.issuer == "https://idp-one.test"
    assert second.quirks.response_shape == "slack_bot"
    tokens = first.issue_tokens(scopes=["read"])
    with second.client() as c:
        assert resource(c, tokens["access_token"]).status_code == 401  # not its token
    with first.client() as c:
        assert resource(c, tokens["access_token"]).status_code == 200


def test_server_records_never_show_token_values(mock_provider: MockProvider) -> None:
    tokens = mock_provider.issue_tokens(scopes=["read"])
    state = repr(list(mock_provider._tokens.values())) + repr(mock_provider.live_tokens())
    assert tokens["access_token"] not in state
    assert tokens["refresh_token"] not in state


# ---------------------------------------------------------------- offline access (quirk 18)


def test_google_refresh_token_only_offline_and_on_first_consent() -> None:
    with MockProvider.like("google") as provider, provider.client() as c:
        assert "refresh_token" not in code_flow(c, scope="openid email")
        first = code_flow(c, scope="openid email", access_type="offline")
        assert "refresh_token" in first
        again = code_flow(c, scope="openid email", access_type="offline")
        assert "refresh_token" not in again  # consent was already given
        forced = code_flow(c, scope="openid email", access_type="offline", prompt="consent")
        assert "refresh_token" in forced
        other_user = code_flow(c, scope="openid", access_type="offline", login_hint="bob")
        assert "refresh_token" in other_user


def test_microsoft_offline_access_scope_hidden_from_the_echo() -> None:
    with MockProvider.like("microsoft") as provider, provider.client() as c:
        online = code_flow(c, scope="openid User.Read")
        assert "refresh_token" not in online
        offline = code_flow(c, scope="openid offline_access User.Read")
        assert offline["scope"] == "User.Read"
        assert "refresh_token" in offline
        assert "id_token" in offline
        still = resource(c, offline["access_token"], required_scope="offline_access")
        assert still.status_code == 200  # hidden from the echo, not from the grant
        refreshed = refresh(c, offline["refresh_token"], scope="openid offline_access User.Read")
        assert refreshed.status_code == 200


def test_x_needs_offline_access_scope() -> None:
    with MockProvider.like("x") as provider, provider.client() as c:
        assert "refresh_token" not in code_flow(c, scope="tweet.read")
        assert "refresh_token" in code_flow(c, scope="tweet.read offline.access")


# ---------------------------------------------------------------- presets against look-alikes

_PRESET_CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    # like() name: (preset name, preset arguments, scopes)
    "github": ("github", {}, ["repo", "user"]),
    "google": ("google", {}, ["openid", "email"]),
    "microsoft": ("microsoft", {}, ["User.Read"]),
    "x": ("x", {}, ["tweet.read"]),
    "slack": ("slack", {}, ["chat:write", "users:read"]),
    "slack-user": ("slack", {"user_token": True}, ["chat:write", "users:read"]),
    "salesforce": ("salesforce", {}, ["api"]),
    "twitch": ("twitch", {}, ["user:read:email"]),
    "notion": ("notion", {}, []),
    "figma": ("figma", {}, ["file_content:read"]),
    "quickbooks": ("quickbooks", {}, ["com.intuit.quickbooks.accounting"]),
}


@pytest.mark.parametrize("name", sorted(_PRESET_CASES))
def test_presets_log_in_and_refresh_against_look_alikes(name: str) -> None:
    from oauth2_broker_mw import AuthorizationRequired
    from oauth2_broker_mw import Broker
    from oauth2_broker_mw import InvalidGrant
    from oauth2_broker_mw import presets

    preset_name, preset_kwargs, scopes = _PRESET_CASES[name]
    with MockProvider.like(name) as provider:
        desc = provider.retarget(presets.preset(preset_name, **preset_kwargs))
        broker = Broker(
            desc,
            client_id="test-client",
            client_secret="test-secret",
            http_client=provider.client(),
        )
        try:
            start = broker.start_authorization(
                tenant="acme", principal="u1", scopes=scopes, redirect_uri=REDIRECT
            )
            with provider.client() as c:
                got = redirect_params(c.get(start.url))
            record = broker.exchange_code(
                state=got["state"],
                code=got[desc.code_param],
                iss=got.get("iss"),
                callback_params=got,
            )
            assert set(scopes) <= set(record.scopes.scopes)  # presets may add default scopes
            if record.refresh_token is None:
                assert name == "github"  # OAuth-app tokens neither expire nor refresh
                return
            lease = broker.lease(tenant="acme", principal="u1", scopes=scopes, force_refresh=True)
            assert lease.access_token != record.access_token
            assert provider.refresh_tokens_redeemed == 1
            provider.revoke_all()  # the grant dies at the provider: a new login is needed
            with pytest.raises(AuthorizationRequired) as info:
                broker.lease(tenant="acme", principal="u1", scopes=scopes, force_refresh=True)
            assert isinstance(info.value.__cause__, InvalidGrant)
        finally:
            broker.close()


# ---------------------------------------------------------------- loop sharing, close, fork


def test_providers_share_one_background_loop() -> None:
    providers = [MockProvider() for _ in range(4)]
    for provider in providers:
        with provider.client() as c:
            assert c.get("/jwks").status_code == 200
    loops = [t for t in threading.enumerate() if t.name == "mock-provider-loop"]
    assert len(loops) == 1


def test_close_cuts_injected_latency_short(mock_provider: MockProvider) -> None:
    mock_provider.faults.add("token", "latency", latency=600)
    statuses: list[int] = []

    def call() -> None:
        with mock_provider.client(timeout=None) as c:
            statuses.append(_cc(c).status_code)

    worker = threading.Thread(target=call)
    worker.start()
    while mock_provider.counters["fault:token"] == 0:  # the request is inside its delay
        threading.Event().wait(0.01)
    mock_provider.close()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert statuses == [200]


def test_a_forked_child_can_use_the_provider(mock_provider: MockProvider) -> None:
    import os
    import warnings

    with mock_provider.client() as c:
        assert c.get("/jwks").status_code == 200  # the parent's loop thread is running
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # child: the parent's loop thread does not exist here
        code = 1
        try:
            with mock_provider.client(timeout=10) as c:
                code = 0 if c.get("/jwks").status_code == 200 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
