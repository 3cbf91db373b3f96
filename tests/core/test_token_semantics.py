"""Token-endpoint semantics a provider can get wrong, and the broker must not follow (issue 10).

PKCE downgrades in metadata, a missing ``token_type``, a DPoP-to-Bearer downgrade, a zero or
negative ``expires_in``, and access tokens that cannot go into an ``Authorization`` header.
Driven through the sans-IO parser and, where the user would notice, a real Broker against the
MockProvider.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.errors import AuthorizationFlowError
from oauth2_broker_mw._core.errors import MalformedResponse
from oauth2_broker_mw._core.errors import UnsupportedTokenType
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.oauth import authorization_params
from oauth2_broker_mw._core.oauth import authorization_url
from oauth2_broker_mw._core.oauth import parse_token_response
from oauth2_broker_mw._core.provider import ClientConfig
from oauth2_broker_mw._core.provider import PkceMode
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.presets import preset
from oauth2_broker_mw.testing.mock_provider import MockProvider

NOW = 1_700_000_000.0
ISSUER = "https://idp.example"
METADATA: dict[str, Any] = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
}
DESC = ProviderDescriptor(
    id="idp", token_endpoint=f"{ISSUER}/token", authorization_endpoint=f"{ISSUER}/authorize"
)


def token_body(data: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(
        status, {"content-type": "application/json"}, json.dumps(data).encode("utf-8")
    )


def broker_for(provider: MockProvider, **kwargs: Any) -> Broker:
    descriptor = kwargs.pop("descriptor", None) or provider.descriptor()
    return Broker(
        descriptor,
        client_id="test-client",
        client_secret="test-secret",
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        client_credentials_principals={"svc"},
        **kwargs,
    )


@pytest.fixture(params=["sync", "async"])
def lease(request: pytest.FixtureRequest) -> Any:
    def run(broker: Broker, **kwargs: Any) -> Any:
        if request.param == "sync":
            return broker.lease(**kwargs)
        return asyncio.run(broker.alease(**kwargs))

    return run


# -- 1. PKCE is never turned off by the provider's metadata (SECURITY A2, A3) ------------------
@pytest.mark.parametrize("methods", [["plain"], [], ["plain", "S384"]])
def test_metadata_without_s256_still_sends_s256(methods: list[str]) -> None:
    doc = {**METADATA, "code_challenge_methods_supported": methods}
    desc = ProviderDescriptor.from_metadata("idp", doc, expected_issuer=ISSUER)
    params = authorization_params(
        desc,
        ClientConfig.create("client-1", "s3cret"),
        redirect_uri="https://app.example/cb",
        scopes=ScopeSet(("openid",)),
        state="st",
        code_challenge="challenge",
        nonce=None,
    )
    url = authorization_url(desc, params)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge"] == ["challenge"]
    assert query["code_challenge_method"] == ["S256"]


def test_only_the_user_turns_pkce_off() -> None:
    doc = {**METADATA, "code_challenge_methods_supported": ["plain"]}
    desc = ProviderDescriptor.from_metadata("idp", doc, expected_issuer=ISSUER, pkce="unsupported")
    assert desc.pkce is PkceMode.UNSUPPORTED


# -- 2. token_type is required, and a DPoP client never accepts Bearer (SECURITY C3) -----------
@pytest.mark.parametrize("token_type", [None, ""])
def test_missing_token_type_is_malformed(token_type: str | None) -> None:
    data: dict[str, Any] = {"access_token": "at-SECRET-1", "expires_in": 60}
    if token_type is not None:
        data["token_type"] = token_type
    with pytest.raises(MalformedResponse) as info:
        parse_token_response(DESC, token_body(data), now=NOW)
    assert "token_type" in str(info.value) and "missing_token_type" in str(info.value)
    assert "at-SECRET-1" not in str(info.value)


def test_a_provider_known_to_omit_token_type_says_so_in_its_descriptor() -> None:
    linkedin = preset("linkedin")
    assert linkedin.missing_token_type == "Bearer"
    parsed = parse_token_response(linkedin, token_body({"access_token": "AQX"}), now=NOW)
    assert parsed.token_type == "Bearer"


def test_dpop_client_refuses_a_bearer_answer_and_stores_nothing(lease: Any) -> None:
    # The server ignores DPoP (mode "off") and hands out a Bearer token: a downgrade.
    with MockProvider() as provider:
        broker = broker_for(provider, descriptor=provider.descriptor(dpop=True))
        with pytest.raises(UnsupportedTokenType) as info:
            lease(broker, tenant="acme", principal="svc", scopes=["read"])
        assert "downgrade" in str(info.value)
        assert len(provider.requests_to("token")) == 1
        assert broker.store.list_keys("acme") == []


# -- 3. expires_in <= 0 means already expired, not an hour -------------------------------------
@pytest.mark.parametrize("expires_in", [0, -5, "0", -3600.5])
def test_non_positive_expires_in_is_already_expired(expires_in: object) -> None:
    data = {"access_token": "at", "token_type": "Bearer", "expires_in": expires_in}
    assert parse_token_response(DESC, token_body(data), now=NOW).expires_at == NOW


def test_zero_expires_in_token_is_used_once_then_replaced(lease: Any) -> None:
    with MockProvider() as provider:
        provider.quirks.extra_token_fields = {"expires_in": 0}
        broker = broker_for(provider)
        first = lease(broker, tenant="acme", principal="svc", scopes=["read"])
        second = lease(broker, tenant="acme", principal="svc", scopes=["read"])
        assert first.access_token != second.access_token  # not kept for 3600 s
        assert len(provider.requests_to("token")) == 2


# -- 7. the access token must fit in an Authorization header -----------------------------------
@pytest.mark.parametrize(
    "token",
    ["at-SECRET\r\nX-Evil: 1", "at-SECRET two", "at-SECRET-\u00e9", "at-SECRET-\u20ac", "\t"],
)
def test_access_token_that_is_not_a_header_value_is_malformed(token: str) -> None:
    data = {"access_token": token, "token_type": "Bearer"}
    with pytest.raises(MalformedResponse) as info:
        parse_token_response(DESC, token_body(data), now=NOW)
    assert "header value" in str(info.value)
    assert "at-SECRET" not in str(info.value) and token not in repr(info.value)


@pytest.mark.parametrize("token", ["00D5e000000!AQ4AQ.x", "ya29.a0Af-_~+/=", "eyJ.eyJ.sig"])
def test_real_world_token_alphabets_are_accepted(token: str) -> None:
    data = {"access_token": token, "token_type": "bearer"}
    assert parse_token_response(DESC, token_body(data), now=NOW).access_token == Secret(token)


# -- 5. ID tokens: verified at login and in refresh responses (OIDC Core §3.1.3.7, §12.2) -----
LOGIN_SCOPES = ["openid", "email"]


def login(broker: Broker, provider: MockProvider, call: Any) -> Any:
    from urllib.parse import parse_qsl

    request = call(
        broker,
        "start_authorization",
        tenant="acme",
        principal="user-1",
        scopes=LOGIN_SCOPES,
        redirect_uri="https://app.example/callback",
    )
    response = provider.client().get(request.url)
    assert response.status_code in (302, 303), response.text
    query = dict(parse_qsl(urlsplit(response.headers["location"]).query))
    return call(broker, "exchange_code", state=query["state"], code=query["code"])


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Any:
    def run(obj: Any, name: str, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(obj, name)(**kwargs)
        return asyncio.run(getattr(obj, "a" + name)(**kwargs))

    return run


def refresh(broker: Broker, call: Any) -> Any:
    return call(broker, "refresh", tenant="acme", principal="user-1", scopes=LOGIN_SCOPES)


@pytest.mark.parametrize(
    ("signing", "overrides"),
    [
        ("none", {"sub": "mallory"}),  # unsigned, another subject
        ("none", {}),  # unsigned, same claims
        ("valid", {"sub": "mallory"}),  # signed, another subject
        ("valid", {"iss": "https://evil.example"}),
        ("foreign_key", {}),
    ],
)
def test_refresh_response_id_token_is_verified(
    call: Any, signing: str, overrides: dict[str, Any]
) -> None:
    with MockProvider() as provider:
        broker = broker_for(provider)
        original = login(broker, provider, call)
        assert original.id_token is not None
        provider.id_token_signing = signing  # type: ignore[assignment]
        provider.id_token_overrides = overrides
        with pytest.raises(AuthorizationFlowError) as info:
            refresh(broker, call)
        assert info.value.code == "id_token_invalid"
        stored = broker.store.get(original.key)
        assert stored is not None and stored.id_token == original.id_token


def test_a_good_refresh_id_token_is_kept(call: Any) -> None:
    with MockProvider() as provider:
        broker = broker_for(provider)
        original = login(broker, provider, call)
        refreshed = refresh(broker, call)
        assert refreshed.id_token is not None and refreshed.id_token != original.id_token


def test_refresh_id_token_that_cannot_be_verified_is_dropped(call: Any) -> None:
    with MockProvider() as provider:
        broker = broker_for(provider)
        original = login(broker, provider, call)
        unverifiable = broker_for(
            provider, descriptor=provider.descriptor(jwks_uri=None), store=broker.store
        )
        provider.id_token_signing = "none"
        provider.id_token_overrides = {"sub": "mallory"}
        refreshed = refresh(unverifiable, call)
        assert refreshed.id_token == original.id_token  # the unchecked one is not stored


def test_issuer_without_jwks_uri_refuses_an_unsigned_login_id_token(call: Any) -> None:
    with MockProvider() as provider:
        provider.id_token_signing = "none"
        broker = broker_for(provider, descriptor=provider.descriptor(jwks_uri=None))
        assert broker.provider.issuer is not None
        with pytest.raises(AuthorizationFlowError) as info:
            login(broker, provider, call)
        assert info.value.code == "id_token_invalid" and "jwks_uri" in str(info.value)


def test_untrusted_extra_audience_is_refused_at_login(call: Any) -> None:
    with MockProvider() as provider:
        provider.id_token_overrides = {"aud": ["test-client", "evil-rp"], "azp": "test-client"}
        broker = broker_for(provider)
        with pytest.raises(AuthorizationFlowError) as info:
            login(broker, provider, call)
        assert info.value.code == "id_token_invalid" and "audience" in str(info.value)


# -- 6. duplicate JSON members are refused everywhere, ID-token claims included ----------------
def test_signed_id_token_with_a_duplicate_sub_is_refused() -> None:
    from joserfc import jws
    from joserfc.jwk import RSAKey

    from oauth2_broker_mw._core.oauth import verify_id_token

    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
    payload = (
        '{"iss": "https://idp.example", "sub": "alice", "aud": "client-1", '
        f'"iat": {int(NOW)}, "exp": {int(NOW) + 600}, "sub": "mallory"}}'
    )
    token = jws.serialize_compact({"alg": "RS256", "kid": "k1"}, payload.encode(), key)
    jwks = {"keys": [key.as_dict(private=False)]}
    with pytest.raises(AuthorizationFlowError) as info:
        verify_id_token(token, jwks=jwks, issuer=ISSUER, client_id="client-1", nonce=None, now=NOW)
    assert "payload" in str(info.value) and "mallory" not in str(info.value)
    good = payload.replace(', "sub": "mallory"', "")
    token = jws.serialize_compact({"alg": "RS256", "kid": "k1"}, good.encode(), key)
    claims = verify_id_token(
        token, jwks=jwks, issuer=ISSUER, client_id="client-1", nonce=None, now=NOW
    )
    assert claims["sub"] == "alice"


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "a", "token_type": "Bearer", "token_type": "DPoP"}',
        b'{"access_token": "a", "token_type": "Bearer", "access_token": "b"}',
        b'{"access_token": "a", "token_type": "Bearer", "x": {"k": 1, "k": 2}}',
    ],
)
def test_duplicate_members_in_a_token_response_are_malformed(body: bytes) -> None:
    response = HttpResponse(200, {"content-type": "application/json"}, body)
    with pytest.raises(MalformedResponse, match="duplicate member"):
        parse_token_response(DESC, response, now=NOW)


def test_repeated_form_parameter_is_malformed() -> None:
    body = b"access_token=a&token_type=bearer&access_token=b"
    response = HttpResponse(200, {"content-type": "application/x-www-form-urlencoded"}, body)
    with pytest.raises(MalformedResponse):
        parse_token_response(DESC, response, now=NOW)


def test_duplicate_members_in_metadata_are_a_configuration_error() -> None:
    from oauth2_broker_mw._core.errors import ConfigurationError

    doc = json.dumps(METADATA)[:-1] + ', "issuer": "https://evil.example"}'
    with pytest.raises(ConfigurationError, match="duplicate member"):
        ProviderDescriptor.from_metadata("idp", doc, expected_issuer=ISSUER)


# -- 4. scope: a narrower grant is an error for lease(scopes=...), a broader one a warning ------
def test_narrower_grant_than_asked_is_insufficient_scope(lease: Any) -> None:
    from oauth2_broker_mw._core.errors import BrokerError
    from oauth2_broker_mw._core.errors import InsufficientScope

    with MockProvider() as provider:
        provider.quirks.narrow_scopes = frozenset({"write"})
        broker = broker_for(provider)
        with pytest.raises(InsufficientScope) as info:
            lease(broker, tenant="acme", principal="svc", scopes=["read", "write"])
        assert isinstance(info.value, BrokerError)
        assert info.value.missing == ("write",) and info.value.granted == ("read",)
        # Asked again: still refused, from the stored record (no new token request).
        with pytest.raises(InsufficientScope):
            lease(broker, tenant="acme", principal="svc", scopes=["read", "write"])
        assert len(provider.requests_to("token")) == 1
        # The caller who accepts a narrower grant says so.
        granted = lease(
            broker, tenant="acme", principal="svc", scopes=["read", "write"], required_scopes=()
        )
        assert granted.scopes.scopes == ("read",)


def test_broader_grant_is_stored_with_a_warning(
    lease: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="oauth2_broker_mw")
    with MockProvider() as provider:
        provider.quirks.widen_scopes = ("admin",)
        broker = broker_for(provider)
        got = lease(broker, tenant="acme", principal="svc", scopes=["read"])
        assert "admin" in got.scopes
        warnings = [r.getMessage() for r in caplog.records if "more scopes" in r.getMessage()]
        assert warnings == ["provider=mock granted more scopes than requested: admin"]
        assert got.access_token.get_secret_value() not in caplog.text


@pytest.mark.parametrize(
    ("asked", "granted", "missing"),
    [
        (["openid", "offline_access", "User.Read"], ["User.Read"], set()),  # Microsoft's echo
        (["openid", "email"], ["openid", "https://www.googleapis.com/auth/userinfo.email"], set()),
        (["openid", "email", "drive"], ["openid"], {"email", "drive"}),
    ],
)
def test_unechoed_and_renamed_scopes_are_not_missing(
    asked: list[str], granted: list[str], missing: set[str]
) -> None:
    from oauth2_broker_mw._core.oauth import missing_scopes

    google = preset("google")
    assert missing_scopes(google, asked, ScopeSet(tuple(granted))) == missing


@pytest.mark.parametrize("scope", ["a " * 40_000, "x" * 70_000, ["s"] * 1001])
def test_an_oversized_scope_is_malformed_not_parsed_for_seconds(scope: object) -> None:
    data = {"access_token": "at", "token_type": "Bearer", "scope": scope}
    with pytest.raises(MalformedResponse, match="scope is longer"):
        parse_token_response(DESC, token_body(data), now=NOW)


def test_an_id_token_without_an_issuer_to_check_it_is_not_stored(call: Any) -> None:
    with MockProvider() as provider:
        provider.id_token_signing = "none"
        broker = broker_for(provider, descriptor=provider.descriptor(issuer=None, jwks_uri=None))
        record = login(broker, provider, call)
        assert record.id_token is None
