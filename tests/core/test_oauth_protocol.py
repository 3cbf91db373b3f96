"""The sans-IO OAuth protocol layer, driven by hand: no sockets, no event loop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import parse_qsl
from urllib.parse import unquote_plus
from urllib.parse import urlsplit

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jwk import KeySet
from joserfc.jwk import OctKey
from joserfc.jwk import RSAKey

from oauth2_broker_mw._core.effects import HttpRequest
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.errors import AuthorizationFlowError
from oauth2_broker_mw._core.errors import BrokerError
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import InvalidClient
from oauth2_broker_mw._core.errors import InvalidGrant
from oauth2_broker_mw._core.errors import InvalidScopeError
from oauth2_broker_mw._core.errors import MalformedResponse
from oauth2_broker_mw._core.errors import ProviderError
from oauth2_broker_mw._core.errors import TransientProviderError
from oauth2_broker_mw._core.errors import UnauthorizedClient
from oauth2_broker_mw._core.errors import UnsupportedTokenType
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.oauth import CLIENT_ASSERTION_TYPE
from oauth2_broker_mw._core.oauth import MAX_TTL
from oauth2_broker_mw._core.oauth import Introspection
from oauth2_broker_mw._core.oauth import TokenResponse
from oauth2_broker_mw._core.oauth import authorization_code_params
from oauth2_broker_mw._core.oauth import authorization_params
from oauth2_broker_mw._core.oauth import authorization_url
from oauth2_broker_mw._core.oauth import callback_metadata
from oauth2_broker_mw._core.oauth import classify_error
from oauth2_broker_mw._core.oauth import client_credentials_params
from oauth2_broker_mw._core.oauth import discovery_request
from oauth2_broker_mw._core.oauth import effective_scopes
from oauth2_broker_mw._core.oauth import introspection_request
from oauth2_broker_mw._core.oauth import metadata_urls
from oauth2_broker_mw._core.oauth import new_nonce
from oauth2_broker_mw._core.oauth import new_pkce_pair
from oauth2_broker_mw._core.oauth import new_state
from oauth2_broker_mw._core.oauth import par_authorization_url
from oauth2_broker_mw._core.oauth import parse_introspection_response
from oauth2_broker_mw._core.oauth import parse_par_response
from oauth2_broker_mw._core.oauth import parse_token_response
from oauth2_broker_mw._core.oauth import parse_www_authenticate
from oauth2_broker_mw._core.oauth import pushed_authorization_request
from oauth2_broker_mw._core.oauth import refresh_params
from oauth2_broker_mw._core.oauth import revocation_request
from oauth2_broker_mw._core.oauth import s256_challenge
from oauth2_broker_mw._core.oauth import token_request
from oauth2_broker_mw._core.oauth import verify_id_token
from oauth2_broker_mw._core.provider import BodyFormat
from oauth2_broker_mw._core.provider import ClientAuthMethod
from oauth2_broker_mw._core.provider import ClientConfig
from oauth2_broker_mw._core.provider import ExpiryPolicy
from oauth2_broker_mw._core.provider import GrantType
from oauth2_broker_mw._core.provider import PkceMode
from oauth2_broker_mw._core.provider import ProviderDescriptor

NOW = 1_700_000_000.0
TOKEN_URL = "https://idp.example/oauth/token"


def desc(**kw: Any) -> ProviderDescriptor:
    base: dict[str, Any] = {
        "id": "idp",
        "token_endpoint": TOKEN_URL,
        "authorization_endpoint": "https://idp.example/authorize",
        "revocation_endpoint": "https://idp.example/revoke",
    }
    base.update(kw)
    return ProviderDescriptor(**base)


CLIENT = ClientConfig.create("client-1", "s3cret")


def form(request: HttpRequest) -> dict[str, str]:
    assert request.body is not None
    pairs = parse_qsl(request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    out = dict(pairs)
    assert len(out) == len(pairs), "duplicate parameters in the body"
    return out


def json_response(data: object, status: int = 200, **headers: str) -> HttpResponse:
    hdrs = {"content-type": "application/json"}
    hdrs.update({k.replace("_", "-").lower(): v for k, v in headers.items()})
    return HttpResponse(status, hdrs, json.dumps(data).encode())


# -- random values and PKCE ------------------------------------------------------------------
def test_rfc7636_appendix_b_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_pair_is_fresh_well_formed_and_consistent() -> None:
    pairs = {new_pkce_pair() for _ in range(50)}
    assert len(pairs) == 50
    for verifier, challenge in pairs:
        assert re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", verifier)
        assert challenge == s256_challenge(verifier)
        assert "=" not in challenge


def test_state_and_nonce_are_long_and_unique() -> None:
    states = {new_state() for _ in range(100)}
    nonces = {new_nonce() for _ in range(100)}
    assert len(states) == len(nonces) == 100
    # 32 random octets => 43 base64url chars (256 bits, SECURITY A6)
    assert all(len(s) >= 43 for s in states | nonces)


# -- authorization URL -----------------------------------------------------------------------
def auth_url(d: ProviderDescriptor, client: ClientConfig, **kwargs: Any) -> str:
    """The URL as the login flow builds it: the parameters, then the URL carrying them."""
    return authorization_url(d, authorization_params(d, client, **kwargs))


def test_a_misspelt_or_missing_authorization_keyword_is_a_type_error() -> None:
    """A typo must fail loudly instead of dropping the parameter (a login without its
    login_hint): the keywords are spelled out in the signature, which Python checks."""
    args: dict[str, Any] = {
        "redirect_uri": "https://app.example/cb",
        "scopes": ScopeSet.of("openid"),
        "state": "st-1",
        "code_challenge": "ch",
        "nonce": None,
    }
    with pytest.raises(TypeError, match="unexpected keyword argument 'extra_param'"):
        authorization_params(desc(), CLIENT, **args, extra_param={"login_hint": "a@b.c"})
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'nonce'"):
        authorization_params(desc(), CLIENT, **{k: v for k, v in args.items() if k != "nonce"})
    assert "login_hint=a%40b.c" in auth_url(
        desc(), CLIENT, **args, extra_params={"login_hint": "a@b.c"}
    )


def test_authorization_url_carries_every_parameter() -> None:
    url = auth_url(
        desc(authorize_params={"access_type": "offline", "prompt": "consent"}),
        CLIENT,
        redirect_uri="https://app.example/cb",
        scopes=ScopeSet.of("openid email"),
        state="st-1",
        code_challenge="ch",
        nonce="n-1",
        extra_params={"login_hint": "a@b.c"},
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "idp.example", "/authorize")
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q == {
        "response_type": "code",
        "client_id": "client-1",
        "redirect_uri": "https://app.example/cb",
        "scope": "email openid",
        "state": "st-1",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
        "nonce": "n-1",
        "access_type": "offline",
        "prompt": "consent",
        "login_hint": "a@b.c",
    }
    assert "%20" in parts.query  # spaces are percent-encoded, not '+'


def test_authorization_url_keeps_existing_query_and_applies_delimiter_and_renames() -> None:
    d = desc(
        authorization_endpoint="https://idp.example/authorize?tenant=t1&client_id=stale",
        scope_delimiter=",",
        param_renames={"client_id": "client_key"},
    )
    url = auth_url(
        d,
        CLIENT,
        redirect_uri="https://app.example/cb",
        scopes=ScopeSet.of(["b", "a"]),
        state="s",
        code_challenge="c",
        nonce=None,
    )
    pairs = parse_qsl(urlsplit(url).query)
    q = dict(pairs)
    assert q["tenant"] == "t1"
    assert q["client_key"] == "client-1"
    assert q["client_id"] == "stale"  # untouched: we renamed ours
    assert q["scope"] == "a,b"
    assert "nonce" not in q


def test_authorization_url_pkce_modes() -> None:
    kwargs: dict[str, Any] = {
        "redirect_uri": "https://app.example/cb",
        "scopes": ScopeSet(),
        "state": "s",
        "nonce": None,
    }
    no_pkce = auth_url(desc(pkce="unsupported"), CLIENT, code_challenge="c", **kwargs)
    assert "code_challenge" not in no_pkce
    assert "scope=" not in no_pkce  # empty scope set => no scope parameter
    optional = auth_url(desc(pkce=PkceMode.OPTIONAL), CLIENT, code_challenge="c", **kwargs)
    assert "code_challenge_method=S256" in optional
    with pytest.raises(ConfigurationError, match="requires PKCE"):
        authorization_params(desc(pkce="required"), CLIENT, code_challenge=None, **kwargs)


def test_authorization_url_refuses_unfilled_template_and_fragment_redirect() -> None:
    d = desc(authorization_endpoint="https://{tenant}.idp.example/authorize")
    kwargs: dict[str, Any] = {"scopes": ScopeSet(), "state": "s", "code_challenge": None}
    with pytest.raises(ConfigurationError, match="with_template"):
        auth_url(d, CLIENT, redirect_uri="https://a/cb", nonce=None, **kwargs)
    with pytest.raises(ConfigurationError, match="fragment"):
        authorization_params(desc(), CLIENT, redirect_uri="https://a/cb#x", nonce=None, **kwargs)


def test_effective_scopes_and_callback_metadata() -> None:
    d = desc(default_scopes=("offline_access",), callback_params=("realmId",))
    assert effective_scopes(d, ScopeSet.of("a")).scopes == ("a", "offline_access")
    assert effective_scopes(d, None).scopes == ("offline_access",)
    assert callback_metadata(d, {"realmId": "123", "code": "c", "state": "s"}) == {"realmId": "123"}


# -- token requests --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("client_id", "secret"),
    [
        ("plain", "simple"),
        ("id:with:colons", "sec:ret"),
        ("id with space", "secret with space+plus"),
        ("pct%41id", "100%sure&=?"),
        ("ünïcødé-id", "sécrét-✓"),
    ],
)
def test_client_secret_basic_form_encodes_id_and_secret(client_id: str, secret: str) -> None:
    request = token_request(
        desc(),
        ClientConfig.create(client_id, secret),
        GrantType.CLIENT_CREDENTIALS,
        {},
        now=NOW,
    )
    header = request.header("authorization")
    assert header is not None
    assert header.startswith("Basic ")
    decoded = base64.b64decode(header[6:]).decode("ascii")
    raw_id, raw_secret = decoded.split(":")  # ':' inside values is encoded, so exactly one
    assert unquote_plus(raw_id) == client_id
    assert unquote_plus(raw_secret) == secret
    if " " in client_id:
        assert "+" in raw_id
    body = form(request)
    assert "client_secret" not in body
    assert "client_id" not in body
    assert secret not in request.url


def test_token_request_shape_for_code_exchange() -> None:
    request = token_request(
        desc(token_params={"audience": "api"}),
        CLIENT,
        GrantType.AUTHORIZATION_CODE,
        authorization_code_params(code="the-code", redirect_uri="https://a/cb", code_verifier="v"),
        now=NOW,
    )
    assert request.method == "POST"
    assert request.url == TOKEN_URL
    assert request.purpose == "token"
    assert request.header("accept") == "application/json"
    assert request.header("content-type") == "application/x-www-form-urlencoded"
    assert form(request) == {
        "grant_type": "authorization_code",
        "audience": "api",
        "code": "the-code",
        "redirect_uri": "https://a/cb",
        "code_verifier": "v",
    }
    assert "the-code" not in repr(request)


def test_client_secret_post_and_none() -> None:
    post = token_request(
        desc(client_auth_method="client_secret_post"),
        CLIENT,
        GrantType.REFRESH_TOKEN,
        {"refresh_token": "rt"},
        now=NOW,
    )
    assert post.header("authorization") is None
    assert form(post)["client_id"] == "client-1"
    assert form(post)["client_secret"] == "s3cret"
    public = token_request(
        desc(client_auth_method=ClientAuthMethod.NONE),
        ClientConfig.create("pub"),
        GrantType.REFRESH_TOKEN,
        {"refresh_token": "rt"},
        now=NOW,
    )
    assert form(public) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt",
        "client_id": "pub",
    }
    assert public.header("authorization") is None


def test_secret_methods_need_a_secret() -> None:
    with pytest.raises(ConfigurationError, match="no secret"):
        token_request(desc(), ClientConfig.create("c"), GrantType.CLIENT_CREDENTIALS, {}, now=NOW)


def test_json_body_and_renames() -> None:
    request = token_request(
        desc(body_format=BodyFormat.JSON, param_renames={"refresh_token": "RefreshToken"}),
        CLIENT,
        GrantType.REFRESH_TOKEN,
        {"refresh_token": "rt"},
        now=NOW,
    )
    assert request.header("content-type") == "application/json"
    assert request.body is not None
    assert json.loads(request.body) == {"grant_type": "refresh_token", "RefreshToken": "rt"}
    assert (
        request.header(
            "authorization",
        )
        is not None
    )


def test_token_request_url_override_for_refresh_endpoint() -> None:
    d = desc(refresh_endpoint="https://idp.example/oauth/refresh")
    request = token_request(
        d, CLIENT, GrantType.REFRESH_TOKEN, {"refresh_token": "x"}, now=NOW, url=d.refresh_url
    )
    assert request.url == "https://idp.example/oauth/refresh"


def test_grant_params_helpers_apply_delimiter_and_scope_on_refresh() -> None:
    scopes = ScopeSet.of("b a")
    assert refresh_params(desc(), refresh_token="r", scopes=scopes) == {"refresh_token": "r"}
    with_scope = refresh_params(desc(scope_on_refresh=True), refresh_token="r", scopes=scopes)
    assert with_scope == {"refresh_token": "r", "scope": "a b"}
    assert refresh_params(desc(scope_on_refresh=True), refresh_token="r", scopes=ScopeSet()) == {
        "refresh_token": "r"
    }
    comma = desc(scope_delimiter=",", grants=["client_credentials"], authorization_endpoint=None)
    assert client_credentials_params(comma, scopes=scopes) == {"scope": "a,b"}
    assert client_credentials_params(comma, scopes=ScopeSet()) == {}
    assert authorization_code_params(code="c", redirect_uri="r", code_verifier=None) == {
        "code": "c",
        "redirect_uri": "r",
    }


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec1"})


def test_client_secret_jwt_assertion_verifies_with_the_secret() -> None:
    secret = "a-long-shared-secret-of-at-least-32-bytes!!"
    request = token_request(
        desc(client_auth_method="client_secret_jwt"),
        ClientConfig.create("client-1", secret),
        GrantType.CLIENT_CREDENTIALS,
        {},
        now=NOW,
    )
    body = form(request)
    assert body["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert request.header("authorization") is None
    assert "client_secret" not in body
    token = jwt.decode(body["client_assertion"], OctKey.import_key(secret.encode()), ["HS256"])
    claims = token.claims
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["aud"] == TOKEN_URL
    assert claims["iat"] == int(NOW)
    assert 0 < claims["exp"] - claims["iat"] <= 600
    with pytest.raises(JoseError):
        jwt.decode(body["client_assertion"], OctKey.import_key(b"x" * 40), ["HS256"])


def test_private_key_jwt_rsa_and_ec(rsa_key: RSAKey, ec_key: ECKey) -> None:
    jtis = set()
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256")):
        client = ClientConfig.create("client-1", private_key=key.as_dict(private=True))
        request = token_request(
            desc(client_auth_method="private_key_jwt"),
            client,
            GrantType.CLIENT_CREDENTIALS,
            {},
            now=NOW,
        )
        assertion = form(request)["client_assertion"]
        public = key.as_dict(private=False)
        token = jwt.decode(assertion, type(key).import_key(public), [alg])
        assert token.header["alg"] == alg
        assert token.header["kid"] == key.kid
        assert token.claims["aud"] == TOKEN_URL
        jtis.add(token.claims["jti"])
    assert len(jtis) == 2


def test_private_key_jwt_from_pem_with_explicit_kid(rsa_key: RSAKey) -> None:
    pem = rsa_key.as_pem(private=True).decode()
    client = ClientConfig.create("c", private_key=pem, private_key_id="pem-kid")
    request = token_request(
        desc(client_auth_method="private_key_jwt", token_endpoint_auth_signing_alg="PS256"),
        client,
        GrantType.CLIENT_CREDENTIALS,
        {},
        now=NOW,
    )
    token = jwt.decode(
        form(request)["client_assertion"],
        RSAKey.import_key(rsa_key.as_dict(private=False)),
        ["PS256"],
    )
    assert token.header["kid"] == "pem-kid"


def test_private_key_jwt_rejects_missing_or_public_key(rsa_key: RSAKey) -> None:
    d = desc(client_auth_method="private_key_jwt")
    with pytest.raises(ConfigurationError, match="private_key"):
        token_request(d, ClientConfig.create("c"), GrantType.CLIENT_CREDENTIALS, {}, now=NOW)
    public_only = ClientConfig.create("c", private_key=rsa_key.as_dict(private=False))
    with pytest.raises(ConfigurationError, match="private key"):
        token_request(d, public_only, GrantType.CLIENT_CREDENTIALS, {}, now=NOW)


def test_revocation_request() -> None:
    request = revocation_request(desc(), CLIENT, token="rt-1", token_type_hint="refresh_token")
    assert request.url == "https://idp.example/revoke"
    assert request.purpose == "revocation"
    assert form(request) == {"token": "rt-1", "token_type_hint": "refresh_token"}
    assert request.header("authorization") is not None
    with pytest.raises(ConfigurationError, match="revocation_endpoint"):
        revocation_request(
            desc(revocation_endpoint=None), CLIENT, token="t", token_type_hint="refresh_token"
        )


# -- token responses -------------------------------------------------------------------------
def test_full_json_response() -> None:
    resp = json_response(
        {
            "access_token": "AT",
            "token_type": "Bearer",
            "refresh_token": "RT",
            "id_token": "a.b.c",
            "expires_in": 3600,
            "refresh_token_expires_in": 86400,
            "scope": "read write",
            "instance_url": "https://na1.example",
            "team": {"id": "T1"},
        }
    )
    parsed = parse_token_response(desc(), resp, now=NOW)
    assert parsed.access_token == Secret("AT")
    assert parsed.refresh_token == Secret("RT")
    assert isinstance(parsed.id_token, Secret)
    assert parsed.id_token.get_secret_value() == "a.b.c"
    assert parsed.expires_at == NOW + 3600
    assert parsed.refresh_token_expires_at == NOW + 86400
    assert parsed.scopes == ScopeSet.of("read write")
    assert parsed.metadata == {"instance_url": "https://na1.example", "team": {"id": "T1"}}
    shown = repr(parsed)
    for secret in ("AT", "RT", "a.b.c"):
        assert f"'{secret}'" not in shown
    assert "instance_url" in shown


def test_github_form_encoded_and_text_plain_bodies() -> None:
    body = b"access_token=gho_abc&scope=repo%2Cuser&token_type=bearer"
    for ctype in ("application/x-www-form-urlencoded", "text/plain", ""):
        resp = HttpResponse(200, {"content-type": ctype} if ctype else {}, body)
        parsed = parse_token_response(desc(expiry_policy="unknown"), resp, now=NOW)
        assert parsed.access_token.get_secret_value() == "gho_abc"
        assert parsed.token_type == "Bearer"
        assert parsed.scopes == ScopeSet.of(["repo", "user"])
        assert parsed.expires_at is None
        assert parsed.refresh_token is None


def test_error_in_200_body_is_an_error() -> None:
    gh = HttpResponse(
        200,
        {"content-type": "application/x-www-form-urlencoded"},
        b"error=bad_verification_code&error_description=The+code+passed+is+incorrect",
    )
    # without aliases a provider-specific code is a plain ProviderError (contract)
    with pytest.raises(ProviderError) as plain:
        parse_token_response(desc(), gh, now=NOW)
    assert type(plain.value) is ProviderError
    assert plain.value.error == "bad_verification_code"
    aliased = desc(error_aliases={"bad_verification_code": "invalid_grant"})
    with pytest.raises(InvalidGrant) as info:
        parse_token_response(aliased, gh, now=NOW)
    assert info.value.error == "bad_verification_code"  # the provider's own code is kept
    assert info.value.status_code == 200
    assert info.value.error_description == "The code passed is incorrect"
    with pytest.raises(InvalidClient):
        parse_token_response(desc(), json_response({"error": "invalid_client"}), now=NOW)


def test_error_aliases_apply_to_non_2xx_and_classify_error() -> None:
    resp = json_response({"error": "invalid_refresh_token"}, status=400)
    assert type(classify_error(resp)) is ProviderError
    assert isinstance(
        classify_error(resp, aliases={"invalid_refresh_token": "invalid_grant"}), InvalidGrant
    )
    d = desc(error_aliases={"invalid_refresh_token": "invalid_grant"})
    with pytest.raises(InvalidGrant):
        parse_token_response(d, resp, now=NOW)


def test_slack_ok_false_and_nested_user_token() -> None:
    slack = desc(
        token_path=("authed_user",),
        token_type_aliases={"user": "Bearer"},
        error_aliases={"invalid_code": "invalid_grant"},
    )
    with pytest.raises(InvalidGrant):
        parse_token_response(slack, json_response({"ok": False, "error": "invalid_code"}), now=NOW)
    with pytest.raises(ProviderError) as info:
        parse_token_response(slack, json_response({"ok": False}), now=NOW)
    assert info.value.error == "unknown_error"
    resp = json_response(
        {
            "ok": True,
            "access_token": "xoxb-bot",
            "token_type": "bot",
            "scope": "commands",
            "team": {"id": "T9", "name": "Acme"},
            "authed_user": {
                "id": "U1",
                "scope": "chat:write,users:read",
                "access_token": "xoxp-user",
                "token_type": "user",
                "refresh_token": "xoxe-1",
                "expires_in": 43200,
            },
        }
    )
    parsed = parse_token_response(slack, resp, now=NOW)
    assert parsed.access_token.get_secret_value() == "xoxp-user"
    assert parsed.refresh_token == Secret("xoxe-1")
    assert parsed.token_type == "Bearer"
    assert parsed.expires_at == NOW + 43200
    assert parsed.scopes == ScopeSet.of(["chat:write", "users:read"])
    assert parsed.metadata["team"] == {"id": "T9", "name": "Acme"}
    assert parsed.metadata["authed_user"] == {
        "id": "U1",
        "scope": "chat:write,users:read",
        "token_type": "user",
        "expires_in": 43200,
    }
    assert "xoxb-bot" not in json.dumps(parsed.metadata)
    # a refresh response is flat: fall back to the top level
    flat = json_response({"ok": True, "access_token": "xoxp-2", "token_type": "user"})
    assert parse_token_response(slack, flat, now=NOW).access_token == Secret("xoxp-2")
    with pytest.raises(MalformedResponse):
        parse_token_response(slack, json_response({"ok": True, "team": {}}), now=NOW)


@pytest.mark.parametrize(
    ("scope", "delimiter", "expected"),
    [
        ("a b", " ", ("a", "b")),
        ("a,b", " ", ("a", "b")),
        ("a, b", ",", ("a", "b")),
        ("a+b", " ", ("a", "b")),
        ("a+b", "+", ("a", "b")),
        (["user:read:email", "chat:read"], " ", ("chat:read", "user:read:email")),
        ("", " ", ()),
        (
            "https://www.googleapis.com/auth/drive openid",
            " ",
            ("https://www.googleapis.com/auth/drive", "openid"),
        ),
    ],
)
def test_scope_variants(scope: object, delimiter: str, expected: tuple[str, ...]) -> None:
    resp = json_response({"access_token": "x", "token_type": "Bearer", "scope": scope})
    parsed = parse_token_response(desc(scope_delimiter=delimiter), resp, now=NOW)
    assert parsed.scopes is not None
    assert parsed.scopes.scopes == expected


def test_scope_absent_is_none() -> None:
    response = json_response({"access_token": "x", "token_type": "bearer"})
    assert parse_token_response(desc(), response, now=NOW).scopes is None


@pytest.mark.parametrize(
    ("extra", "kw", "expected"),
    [
        ({"expires_in": "3599"}, {}, NOW + 3599),
        ({"expires_in": 3600.5}, {}, NOW + 3600.5),
        ({}, {}, NOW + 3600),
        ({}, {"default_ttl": 600}, NOW + 600),
        ({}, {"expiry_policy": ExpiryPolicy.UNKNOWN}, None),
        ({"expires_in": 3_600_000}, {"expires_in_unit": 0.001}, NOW + 3600),
        ({"expires_in": 10**12}, {}, NOW + MAX_TTL),
        ({"expires_in": -5}, {}, NOW),  # already expired, never the default TTL
        ({"expires_in": 0}, {}, NOW),
        ({"expires_in": "-1"}, {"expiry_policy": "unknown"}, NOW),
        ({"expires_in": "soon"}, {}, NOW + 3600),
        ({"expires_in": True}, {"expiry_policy": "unknown"}, None),
        ({"expiresIn": 120}, {"expires_in_path": ("expiresIn",)}, NOW + 120),
        (
            {"tokens": {"access": {"expirySeconds": 90}}},
            {"expires_in_path": "tokens.access.expirySeconds"},
            NOW + 90,
        ),
    ],
)
def test_expiry_leniency(extra: dict[str, Any], kw: dict[str, Any], expected: float | None) -> None:
    parsed = parse_token_response(
        desc(**kw), json_response({"access_token": "x", "token_type": "Bearer", **extra}), now=NOW
    )
    assert parsed.expires_at == expected


def test_x_refresh_token_expires_in_quickbooks() -> None:
    resp = json_response(
        {
            "access_token": "x",
            "token_type": "Bearer",
            "x_refresh_token_expires_in": "8726400",
            "refresh_token": "r",
        }
    )
    parsed = parse_token_response(desc(), resp, now=NOW)
    assert parsed.refresh_token_expires_at == NOW + 8726400


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("bearer", "Bearer"),
        ("BEARER", "Bearer"),
        ("Bearer", "Bearer"),
    ],
)
def test_token_type_normalised(raw: str | None, normalised: str) -> None:
    body: dict[str, Any] = {"access_token": "x"}
    if raw is not None:
        body["token_type"] = raw
    assert parse_token_response(desc(), json_response(body), now=NOW).token_type == normalised


@pytest.mark.parametrize("raw", ["mac", "N_A", "bot", "DPoP", "dpop"])
def test_unknown_token_type_rejected(raw: str) -> None:
    with pytest.raises(UnsupportedTokenType):
        parse_token_response(
            desc(), json_response({"access_token": "x", "token_type": raw}), now=NOW
        )


def test_missing_access_token_or_garbage_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        parse_token_response(desc(), json_response({"token_type": "Bearer"}), now=NOW)
    with pytest.raises(MalformedResponse) as info:
        parse_token_response(
            desc(), HttpResponse(200, {"content-type": "text/html"}, b"<html>login</html>"), now=NOW
        )
    assert info.value.body_preview == "<html>login</html>"
    with pytest.raises(MalformedResponse):
        parse_token_response(desc(), json_response(["access_token"]), now=NOW)


def test_token_response_metadata_excludes_secrets_and_standard_fields() -> None:
    resp = json_response(
        {
            "access_token": "A",
            "token_type": "Bearer",
            "refresh_token": "R",
            "expires_in": 5,
            "api_domain": "https://www.zohoapis.eu",
            "bot_access_token": "should-not-leak",
            "workspace_id": "w1",
        }
    )
    parsed = parse_token_response(desc(), resp, now=NOW)
    assert parsed.metadata == {"api_domain": "https://www.zohoapis.eu", "workspace_id": "w1"}
    assert isinstance(parsed, TokenResponse)


def test_non_2xx_token_response_goes_through_classification() -> None:
    resp = json_response({"error": "invalid_grant", "error_description": "expired"}, status=400)
    with pytest.raises(InvalidGrant) as info:
        parse_token_response(desc(), resp, now=NOW)
    assert info.value.status_code == 400
    assert info.value.error_description == "expired"


# -- error classification --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "cls", "error"),
    [
        (400, {"error": "invalid_grant"}, InvalidGrant, "invalid_grant"),
        (401, {"error": "invalid_client"}, InvalidClient, "invalid_client"),
        (400, {"error": "invalid_scope"}, InvalidScopeError, "invalid_scope"),
        (400, {"error": "unauthorized_client"}, UnauthorizedClient, "unauthorized_client"),
        (
            503,
            {"error": "temporarily_unavailable"},
            TransientProviderError,
            "temporarily_unavailable",
        ),
        (500, {"error": "server_error"}, TransientProviderError, "server_error"),
        (400, {"error": "slow_down"}, TransientProviderError, "slow_down"),
        (400, {"error": "invalid_request"}, ProviderError, "invalid_request"),
        # code first, status second: an invalid_grant with 500 is still invalid_grant
        (500, {"error": "invalid_grant"}, InvalidGrant, "invalid_grant"),
        (429, {"message": "slow down"}, TransientProviderError, "http_error"),
        (502, {}, TransientProviderError, "http_error"),
        (401, {"message": "nope"}, InvalidClient, "http_error"),
        (403, {"message": "nope"}, ProviderError, "http_error"),
        (404, "<html>Not Found</html>", ProviderError, "non_oauth_response"),
        (
            502,
            "<html><body>Bad Gateway</body></html>",
            TransientProviderError,
            "non_oauth_response",
        ),
        (500, "", TransientProviderError, "non_oauth_response"),
    ],
)
def test_error_classification_table(
    status: int, body: object, cls: type[ProviderError], error: str
) -> None:
    if isinstance(body, str):
        resp = HttpResponse(status, {"content-type": "text/html"}, body.encode())
    else:
        resp = json_response(body, status=status)
    exc = classify_error(resp)
    assert type(exc) is cls
    assert exc.error == error
    assert exc.status_code == status
    assert exc.retryable is issubclass(cls, TransientProviderError)


def test_html_502_with_retry_after_seconds_and_redacted_preview() -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title></head><body>"
        + "upstream said access_token=ya29.A0ARrdaM-verysecretvalue1234567890 and "
        + "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl "
        + "x" * 500
        + "</body></html>"
    )
    resp = HttpResponse(502, {"content-type": "text/html", "retry-after": "120"}, page.encode())
    exc = classify_error(resp)
    assert isinstance(exc, TransientProviderError)
    assert exc.error == "non_oauth_response"
    assert exc.retry_after == 120.0
    assert exc.body_preview is not None
    assert len(exc.body_preview) <= 200
    assert "ya29" not in exc.body_preview
    assert "verysecret" not in exc.body_preview
    assert "eyJ" not in exc.body_preview
    assert "502 Bad Gateway" in exc.body_preview
    assert "ya29" not in str(exc)


def test_retry_after_http_date_relative_to_date_header() -> None:
    resp = HttpResponse(
        503,
        {
            "content-type": "text/html",
            "retry-after": "Wed, 21 Oct 2015 07:28:00 GMT",
            "date": "Wed, 21 Oct 2015 07:26:30 GMT",
        },
        b"<html>down</html>",
    )
    assert classify_error(resp).retry_after == 90.0
    no_date = HttpResponse(
        503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"<html>down</html>"
    )
    assert classify_error(no_date, now=1445412470.0).retry_after == 10.0
    past = HttpResponse(503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")
    assert classify_error(past, now=1445412490.0 + 3600).retry_after == 0.0
    for garbage_value in ("whenever", "\u00b2", "-5", "1.5e3"):
        garbage = HttpResponse(503, {"retry-after": garbage_value}, b"")
        assert classify_error(garbage).retry_after is None


def test_error_description_is_truncated_and_redacted() -> None:
    resp = json_response(
        {"error": "invalid_grant", "error_description": "refresh_token=abc " + "y" * 1000},
        status=400,
    )
    exc = classify_error(resp)
    assert exc.error_description is not None
    assert len(exc.error_description) <= 300
    assert "abc" not in exc.error_description


# -- WWW-Authenticate ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="example", error="invalid_token", '
            'error_description="The access token expired"',
            {
                "scheme": "Bearer",
                "realm": "example",
                "error": "invalid_token",
                "error_description": "The access token expired",
            },
        ),
        (
            'Bearer error="insufficient_scope", scope="read write"',
            {"scheme": "Bearer", "error": "insufficient_scope", "scope": "read write"},
        ),
        ("Bearer", {"scheme": "Bearer"}),
        ("bearer realm=api", {"scheme": "Bearer", "realm": "api"}),
        (
            'Basic realm="x", DPoP algs="ES256 PS256", error="use_dpop_nonce", '
            'error_description="needs a nonce"',
            {
                "scheme": "DPoP",
                "algs": "ES256 PS256",
                "error": "use_dpop_nonce",
                "error_description": "needs a nonce",
            },
        ),
        (
            'DPoP algs="ES256", Bearer realm="r", error="invalid_token"',
            {"scheme": "Bearer", "realm": "r", "error": "invalid_token"},
        ),
        (
            'Bearer error_description="say \\"hi\\", ok"',
            {"scheme": "Bearer", "error_description": 'say "hi", ok'},
        ),
        ("Negotiate abc==", {}),
        ("", {}),
    ],
)
def test_parse_www_authenticate(header: str, expected: Mapping[str, str]) -> None:
    assert parse_www_authenticate(header) == expected


# -- ID tokens -------------------------------------------------------------------------------
ISSUER = "https://idp.example"


def _claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": "client-1",
        "exp": int(NOW) + 300,
        "iat": int(NOW) - 5,
        "nonce": "n-1",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: RSAKey | ECKey, claims: dict[str, Any], alg: str = "RS256", **hdr: Any) -> str:
    header = {"alg": alg, "kid": key.kid, **hdr}
    return jwt.encode(header, claims, key, algorithms=[alg])


def _jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return KeySet(list(keys)).as_dict(private=False)


def _verify(token: str, jwks: Mapping[str, object], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "jwks": jwks,
        "issuer": ISSUER,
        "client_id": "client-1",
        "nonce": "n-1",
        "now": NOW,
    }
    args.update(kw)
    return verify_id_token(token, **args)


def test_id_token_good(rsa_key: RSAKey, ec_key: ECKey) -> None:
    jwks = _jwks(rsa_key, ec_key)
    assert _verify(_sign(rsa_key, _claims()), jwks)["sub"] == "user-1"
    assert _verify(_sign(ec_key, _claims(), "ES256"), jwks)["sub"] == "user-1"
    multi = _claims(aud=["client-1", "other"], azp="client-1")
    trusted = _verify(_sign(rsa_key, multi), jwks, trusted_audiences=["other"])
    assert trusted["azp"] == "client-1"
    # nonce not checked when the caller has none; leeway accepts slightly expired tokens
    assert _verify(_sign(rsa_key, _claims(exp=int(NOW) - 30)), jwks, nonce=None)


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        (_claims(iss="https://evil.example"), "id_token_invalid"),
        (_claims(iss=ISSUER + "/"), "id_token_invalid"),
        (_claims(aud="someone-else"), "id_token_invalid"),
        (_claims(aud=["client-1", "other"]), "id_token_invalid"),  # no azp
        (_claims(aud=["client-1", "evil-rp"], azp="client-1"), "id_token_invalid"),  # untrusted
        (_claims(aud=["client-1", "other"], azp="other"), "id_token_invalid"),
        (_claims(exp=int(NOW) - 120), "id_token_invalid"),
        (_claims(iat=int(NOW) + 600), "id_token_invalid"),
        (_claims(exp=None), "id_token_invalid"),
        (_claims(sub=None), "id_token_invalid"),
        (_claims(nonce="other"), "nonce_mismatch"),
        (_claims(nonce=None), "nonce_mismatch"),
    ],
)
def test_id_token_bad_claims(rsa_key: RSAKey, claims: dict[str, Any], code: str) -> None:
    with pytest.raises(AuthorizationFlowError) as info:
        _verify(_sign(rsa_key, claims), _jwks(rsa_key))
    assert info.value.code == code


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_id_token_alg_none_rejected(rsa_key: RSAKey) -> None:
    token = f"{_b64({'alg': 'none', 'kid': 'k1'})}.{_b64(_claims())}."
    with pytest.raises(AuthorizationFlowError, match="algorithm"):
        _verify(token, _jwks(rsa_key))
    with pytest.raises(AuthorizationFlowError):
        _verify(token, _jwks(rsa_key), algorithms=("none", "RS256"))


def test_id_token_hs256_with_public_key_confusion_rejected(rsa_key: RSAKey) -> None:
    public_pem = rsa_key.as_pem(private=False)
    signing_input = f"{_b64({'alg': 'HS256', 'kid': 'k1'})}.{_b64(_claims())}"
    sig = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    with pytest.raises(AuthorizationFlowError):
        _verify(token, _jwks(rsa_key))
    # even if a caller lists HS256, it is never used for ID tokens here
    with pytest.raises(AuthorizationFlowError):
        _verify(token, _jwks(rsa_key), algorithms=("HS256", "RS256"))
    with pytest.raises(ConfigurationError):
        _verify(token, _jwks(rsa_key), algorithms=("HS256",))


def test_id_token_unknown_kid_and_embedded_jwk_rejected(rsa_key: RSAKey) -> None:
    attacker = RSAKey.generate_key(2048, parameters={"kid": "evil"})
    token = _sign(attacker, _claims())
    with pytest.raises(AuthorizationFlowError, match="key id"):
        _verify(token, _jwks(rsa_key))
    # attacker key embedded in the header, with the victim's kid: signature must fail
    forged = jwt.encode(
        {
            "alg": "RS256",
            "kid": "k1",
            "jwk": attacker.as_dict(private=False),
            "jku": "https://evil.example/jwks",
        },
        _claims(),
        attacker,
        algorithms=["RS256"],
    )
    with pytest.raises(AuthorizationFlowError, match="signature"):
        _verify(forged, _jwks(rsa_key))


def test_id_token_wrong_algorithm_for_list(rsa_key: RSAKey) -> None:
    token = _sign(rsa_key, _claims(), "RS384")
    with pytest.raises(AuthorizationFlowError, match="algorithm"):
        _verify(token, _jwks(rsa_key))
    assert _verify(token, _jwks(rsa_key), algorithms=("RS384",))["sub"] == "user-1"


def test_id_token_garbage(rsa_key: RSAKey) -> None:
    for token in ("not-a-jwt", "a.b.c", "....", ""):
        with pytest.raises(AuthorizationFlowError):
            _verify(token, _jwks(rsa_key))
    with pytest.raises(AuthorizationFlowError, match="JWKS"):
        _verify(_sign(rsa_key, _claims()), {"keys": [{"kty": "nope"}]})


# -- at_hash, PAR, introspection -------------------------------------------------------------
def test_id_token_at_hash(rsa_key: RSAKey) -> None:
    access = "ya29.an-access-token"
    digest = hashlib.sha256(access.encode()).digest()[:16]
    at_hash = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    token = _sign(rsa_key, _claims(at_hash=at_hash))
    assert _verify(token, _jwks(rsa_key), access_token=access)["at_hash"] == at_hash
    with pytest.raises(AuthorizationFlowError, match="at_hash"):
        _verify(token, _jwks(rsa_key), access_token="another-token")
    # no at_hash claim: nothing to check (code flow)
    assert _verify(_sign(rsa_key, _claims()), _jwks(rsa_key), access_token="x")


def test_pushed_authorization_request_round_trip() -> None:
    d = desc(
        pushed_authorization_request_endpoint="https://idp.example/par",
        require_pushed_authorization_requests=True,
    )
    kwargs: dict[str, Any] = {
        "redirect_uri": "https://app.example/cb",
        "scopes": ScopeSet.of("openid"),
        "state": "st",
        "code_challenge": "ch",
        "nonce": "n",
    }
    params = authorization_params(d, CLIENT, **kwargs)
    with pytest.raises(ConfigurationError, match="pushed authorization"):
        authorization_url(d, params)
    request = pushed_authorization_request(d, CLIENT, params, now=NOW)
    assert request.url == "https://idp.example/par"
    assert request.purpose == "par"
    body = form(request)
    assert body["state"] == "st"
    assert body["code_challenge_method"] == "S256"
    assert request.header("authorization") is not None
    request_uri, expires_at = parse_par_response(
        json_response(
            {"request_uri": "urn:ietf:params:oauth:request_uri:abc", "expires_in": 60}, 201
        ),
        now=NOW,
    )
    assert expires_at == NOW + 60
    url = par_authorization_url(d, CLIENT, request_uri=request_uri)
    q = dict(parse_qsl(urlsplit(url).query))
    assert q == {"client_id": "client-1", "request_uri": "urn:ietf:params:oauth:request_uri:abc"}
    with pytest.raises(InvalidClient):
        parse_par_response(json_response({"error": "invalid_client"}, 401), now=NOW)
    with pytest.raises(MalformedResponse):
        parse_par_response(json_response({"request_uri": "x"}, 201), now=NOW)
    with pytest.raises(ConfigurationError, match="PAR endpoint"):
        pushed_authorization_request(desc(), CLIENT, params, now=NOW)


def test_introspection() -> None:
    d = desc(introspection_endpoint="https://idp.example/introspect", scope_delimiter=" ")
    request = introspection_request(d, CLIENT, token="at-1")
    assert request.purpose == "introspection"
    assert form(request) == {"token": "at-1", "token_type_hint": "access_token"}
    active = parse_introspection_response(
        d,
        json_response(
            {
                "active": True,
                "exp": NOW + 900,
                "scope": "api refresh_token",
                "client_id": "client-1",
                "sub": "005xx",
                "token_type": "access_token",
                "username": "a@b.c",
            }
        ),
        now=NOW,
    )
    assert active.active
    assert active.expires_at == NOW + 900
    assert active.scopes == ScopeSet.of("api refresh_token")
    assert active.subject == "005xx"
    assert active.claims["username"] == "a@b.c"
    inactive = parse_introspection_response(d, json_response({"active": "true"}), now=NOW)
    assert inactive == Introspection(active=False)
    with pytest.raises(TransientProviderError):
        parse_introspection_response(d, HttpResponse(503, {}, b"<html/>"), now=NOW)
    with pytest.raises(ConfigurationError, match="introspection_endpoint"):
        introspection_request(desc(), CLIENT, token="t")


# -- robustness: hostile or broken provider output only ever raises BrokerError --------------
_NASTY_BODIES: list[bytes] = [
    b"",
    b"   ",
    b"\xff\xfe\x00garbage",
    b"\xef\xbb\xbf{}",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"access_token": "x", "expires_in": ' + b"9" * 400 + b"}",
    b'{"access_token": "x", "expires_in": NaN, "scope": {"a": 1}}',
    b'{"access_token": "x", "expires_in": "1e400", "token_type": 5}',
    b'{"access_token": ["x"]}',
    b'{"error": ["invalid_grant"]}',
    b'{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}',
    b'{"ok": false}',
    b"access_token=a&access_token=b",
    b"error=invalid_grant&error=server_error",
    b"a=%ZZ&b",
    b"<?xml version='1.0'?><error>invalid_grant</error>",
    b"null",
    b"true",
    b'"a string"',
    b'{"access_token": "x", "metadata": ' + b'{"m":' * 200 + b"1" + b"}" * 200 + b"}",
]


@pytest.mark.parametrize("body", _NASTY_BODIES)
@pytest.mark.parametrize("status", [200, 400, 401, 500])
@pytest.mark.parametrize("ctype", ["application/json", "text/html", ""])
def test_hostile_bodies_only_raise_broker_errors(body: bytes, status: int, ctype: str) -> None:
    headers = {"content-type": ctype, "retry-after": "Fri, 99 Foo 2015 99:99:99 GMT"}
    response = HttpResponse(status, headers, body)
    for descriptor in (desc(), desc(token_path="a.b", expires_in_path="x.y")):
        failure: BrokerError | None = None
        try:
            parsed = parse_token_response(descriptor, response, now=NOW)
        except BrokerError as exc:
            failure = exc
        if failure is not None:
            assert len(str(failure)) < 1000
        else:
            json.dumps(parsed.metadata)  # always serialisable
            assert parsed.expires_at is None or parsed.expires_at <= NOW + MAX_TTL
    exc = classify_error(response)
    assert isinstance(exc, ProviderError)
    assert exc.body_preview is None or len(exc.body_preview) <= 200


def test_randomised_www_authenticate_never_crashes() -> None:
    import random

    rng = random.Random(1234)
    alphabet = 'Bearer DPoP realm error="x", \\ ,,=\t"'
    for _ in range(2000):
        header = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        result = parse_www_authenticate(header)
        assert result == {} or result["scheme"] in ("Bearer", "DPoP")


def test_id_token_hostile_inputs_fail_closed(rsa_key: RSAKey) -> None:
    good = _sign(rsa_key, _claims())
    header, payload, signature = good.split(".")
    cases = [
        f"{header}.{payload}.{signature[:-4]}AAAA",
        f"{header}.{_b64({'iss': ISSUER})}.{signature}",
        f"{_b64({'alg': 'RS256', 'kid': 'k1', 'crit': ['exp']})}.{payload}.{signature}",
        f"{header}.!!!.{signature}",
        f"{_b64({'alg': 'RS256'})}.{payload}.{signature}",
    ]
    for token in cases:
        with pytest.raises(AuthorizationFlowError):
            _verify(token, _jwks(rsa_key))
    for jwks in ({"keys": "x"}, {"keys": [1, 2]}, {}, {"keys": [{"kty": "RSA", "n": "!"}]}):
        with pytest.raises(AuthorizationFlowError):
            _verify(good, jwks)


def test_private_key_jwt_ec_pem_and_curve_mismatch() -> None:
    key = ECKey.generate_key("P-384")
    client = ClientConfig.create("c", private_key=key.as_pem(private=True).decode())
    d = desc(client_auth_method="private_key_jwt")
    request = token_request(d, client, GrantType.CLIENT_CREDENTIALS, {}, now=NOW)
    token = jwt.decode(
        form(request)["client_assertion"], ECKey.import_key(key.as_dict(private=False)), ["ES384"]
    )
    assert token.header["alg"] == "ES384"
    with pytest.raises(ConfigurationError, match="ES256"):
        token_request(
            d.replace(token_endpoint_auth_signing_alg="ES256"),
            client,
            GrantType.CLIENT_CREDENTIALS,
            {},
            now=NOW,
        )
    with pytest.raises(ConfigurationError, match="does not fit"):
        token_request(
            d.replace(token_endpoint_auth_signing_alg="RS256"),
            client,
            GrantType.CLIENT_CREDENTIALS,
            {},
            now=NOW,
        )
    with pytest.raises(ConfigurationError, match="usable"):
        token_request(
            d,
            ClientConfig.create("c", private_key="not a key"),
            GrantType.CLIENT_CREDENTIALS,
            {},
            now=NOW,
        )


@pytest.mark.parametrize("module", ["oauth", "provider"])
def test_core_protocol_modules_import_no_io(module: str) -> None:
    import ast
    import pathlib

    import oauth2_broker_mw._core as core

    source = pathlib.Path(core.__file__).with_name(f"{module}.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    forbidden = {
        "httpx",
        "httpx2",
        "asyncio",
        "threading",
        "requests",
        "socket",
        "sqlite3",
        "redis",
        "psycopg",
        "urllib3",
    }
    assert not imported & forbidden


def test_metadata_urls_and_discovery_request() -> None:
    assert metadata_urls("https://idp.example") == (
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server",
    )
    assert metadata_urls("https://login.example/tenant-1/v2.0/") == (
        "https://login.example/tenant-1/v2.0/.well-known/openid-configuration",
        "https://login.example/.well-known/oauth-authorization-server/tenant-1/v2.0",
        "https://login.example/.well-known/openid-configuration/tenant-1/v2.0",
    )
    with pytest.raises(ConfigurationError):
        metadata_urls("http://idp.example")
    request = discovery_request(metadata_urls("https://idp.example")[0])
    assert (request.method, request.purpose, request.body) == ("GET", "discovery", None)
    assert request.header("accept") == "application/json"
