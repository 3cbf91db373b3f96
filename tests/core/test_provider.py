"""ProviderDescriptor and ClientConfig: validation, loading, templates, discovery."""

from __future__ import annotations

import dataclasses
import json
import pickle
from typing import Any

import pytest

from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.provider import BodyFormat
from oauth2_broker_mw._core.provider import ClientAuthMethod
from oauth2_broker_mw._core.provider import ClientConfig
from oauth2_broker_mw._core.provider import ExpiryPolicy
from oauth2_broker_mw._core.provider import GrantType
from oauth2_broker_mw._core.provider import PkceMode
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw._core.provider import is_allowed_endpoint
from oauth2_broker_mw._core.provider import parse_metadata

BASE: dict[str, Any] = {
    "id": "acme-idp",
    "authorization_endpoint": "https://idp.example/authorize",
    "token_endpoint": "https://idp.example/token",
}


def make(**kw: Any) -> ProviderDescriptor:
    return ProviderDescriptor(**{**BASE, **kw})


def test_brief_example_builds_with_string_grants() -> None:
    d = ProviderDescriptor(
        id="acme-idp",
        authorization_endpoint="https://idp.example/authorize",
        token_endpoint="https://idp.example/token",
        revocation_endpoint="https://idp.example/revoke",
        grants=["authorization_code", "refresh_token", "client_credentials"],  # type: ignore[arg-type]
    )
    assert d.grants == (
        GrantType.AUTHORIZATION_CODE,
        GrantType.REFRESH_TOKEN,
        GrantType.CLIENT_CREDENTIALS,
    )
    assert d.supports("client_credentials")
    assert d.supports(GrantType.REFRESH_TOKEN)
    assert not d.supports("password")
    assert d.refresh_url == "https://idp.example/token"


def test_defaults() -> None:
    d = make()
    assert d.client_auth_method is ClientAuthMethod.CLIENT_SECRET_BASIC
    assert d.pkce is PkceMode.OPTIONAL
    assert d.expiry_policy is ExpiryPolicy.DEFAULT_TTL
    assert d.body_format is BodyFormat.FORM
    assert d.errors_with_200 is True
    assert d.scope_delimiter == " "
    assert d.code_param == "code"
    assert d.grants == (GrantType.AUTHORIZATION_CODE, GrantType.REFRESH_TOKEN)


def test_enum_strings_and_single_grant_string_are_normalised() -> None:
    d = make(
        grants="client_credentials",
        client_auth_method="private_key_jwt",
        pkce="unsupported",
        expiry_policy="unknown",
        body_format="json",
        authorization_endpoint=None,
    )
    assert d.grants == (GrantType.CLIENT_CREDENTIALS,)
    assert d.client_auth_method is ClientAuthMethod.PRIVATE_KEY_JWT
    assert d.pkce is PkceMode.UNSUPPORTED
    assert d.expiry_policy is ExpiryPolicy.UNKNOWN
    assert d.body_format is BodyFormat.JSON


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/token",
        "https://idp.example:8443/token?x=1",
        "http://127.0.0.1/token",
        "http://127.0.0.1:8080/token",
        "http://[::1]:9000/token",
        "http://localhost:5000/token",
        "http://127.0.0.2/token",
    ],
)
def test_allowed_endpoints(url: str) -> None:
    assert is_allowed_endpoint(url)
    assert make(token_endpoint=url).token_endpoint == url


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/token",
        "http://10.0.0.1/token",
        "http://localhost.evil.example/token",
        "ftp://idp.example/token",
        "//idp.example/token",
        "/token",
        "https://",
        "https://user:pass@idp.example/token",
        "https://idp.example/token#frag",
        "https://idp.example:99999/token",
        "https://idp.example/to ken",
        "https://idp.example\\@evil.example/",
        "",
    ],
)
def test_rejected_endpoints(url: str) -> None:
    assert not is_allowed_endpoint(url)
    with pytest.raises(ConfigurationError, match="token_endpoint"):
        make(token_endpoint=url)


@pytest.mark.parametrize(
    "field", ["authorization_endpoint", "revocation_endpoint", "jwks_uri", "refresh_endpoint"]
)
def test_every_endpoint_is_validated(field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        make(**{field: "http://idp.example/x"})


def test_grant_validation() -> None:
    with pytest.raises(ConfigurationError, match="at least one grant"):
        make(grants=[])
    with pytest.raises(ConfigurationError, match="grants must be one of"):
        make(grants=["password"])
    with pytest.raises(ConfigurationError, match="implicit"):
        make(grants=["implicit"])
    with pytest.raises(ConfigurationError, match="authorization_endpoint"):
        make(authorization_endpoint=None)
    d = make(grants=["refresh_token", "refresh_token", "authorization_code"])
    assert d.grants == (GrantType.REFRESH_TOKEN, GrantType.AUTHORIZATION_CODE)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"id": "has space"}, "provider"),
        ({"id": ""}, "provider"),
        ({"client_auth_method": "tls_client_auth"}, "client_auth_method"),
        ({"pkce": "plain"}, "pkce"),
        ({"scope_delimiter": ""}, "scope_delimiter"),
        ({"default_ttl": 0}, "default_ttl"),
        ({"default_ttl": "abc"}, "default_ttl"),
        ({"expires_in_unit": -1}, "expires_in_unit"),
        ({"refresh_margin": -1}, "refresh_margin"),
        ({"authorize_params": {"a": ["b"]}}, "authorize_params"),
        ({"token_endpoint_auth_signing_alg": "none"}, "signing_alg"),
        ({"scope_on_refresh": "yes"}, "scope_on_refresh"),
        ({"allowed_origins": ["https://api.example/v1"]}, "origins"),
        ({"allowed_origins": ["http://api.example"]}, "origins"),
        ({"code_param": ""}, "code_param"),
        ({"default_scopes": ["ok", "bad\\scope"]}, "default_scopes"),
    ],
)
def test_field_validation(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make(**kw)


def test_collections_are_normalised() -> None:
    d = make(
        token_path="authed_user",
        expires_in_path="tokens.access.expirySeconds",
        default_scopes="openid offline_access",
        callback_params=["realmId"],
        allowed_origins=["https://api.example/", "https://files.example:8443"],
        token_params={"expiring": 1, "flag": True},
        refresh_margin="30",
    )
    assert d.token_path == ("authed_user",)
    assert d.expires_in_path == ("tokens", "access", "expirySeconds")
    assert d.default_scopes == ("openid", "offline_access")
    assert d.callback_params == ("realmId",)
    assert d.allowed_origins == ("https://api.example", "https://files.example:8443")
    assert d.token_params == {"expiring": "1", "flag": "true"}
    assert d.refresh_margin == 30.0


def test_descriptor_is_frozen_hashable_and_picklable() -> None:
    d = make(authorize_params={"prompt": "consent"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.id = "other"  # type: ignore[misc]
    assert {d: 1}[d] == 1
    assert pickle.loads(pickle.dumps(d)) == d


def test_from_dict_round_trip_and_unknown_keys() -> None:
    d = make(
        grants=["authorization_code", "refresh_token", "client_credentials"],
        scope_delimiter=",",
        token_path=("authed_user",),
        authorize_params={"access_type": "offline"},
    )
    assert ProviderDescriptor.from_dict(d.to_dict()) == d
    assert ProviderDescriptor.from_json(json.dumps(d.to_dict())) == d
    with pytest.raises(ConfigurationError, match="unknown provider descriptor fields: bogus, tokn"):
        ProviderDescriptor.from_dict({**BASE, "tokn": "x", "bogus": 1})
    with pytest.raises(ConfigurationError, match="missing: token_endpoint"):
        ProviderDescriptor.from_dict({"id": "x"})
    with pytest.raises(ConfigurationError, match="JSON"):
        ProviderDescriptor.from_json("{not json")
    with pytest.raises(ConfigurationError, match="object"):
        ProviderDescriptor.from_json("[1]")


def test_from_toml() -> None:
    text = """
[providers.acme]
id = "acme"
authorization_endpoint = "https://acme.example/oauth/authorize"
token_endpoint = "https://acme.example/oauth/token"
grants = ["authorization_code", "refresh_token"]
client_auth_method = "client_secret_post"
scope_delimiter = ","
expiry_policy = "unknown"
token_params = { expiring = 1 }
default_scopes = ["read"]
"""
    d = ProviderDescriptor.from_toml(text, table="providers.acme")
    assert d.id == "acme"
    assert d.client_auth_method is ClientAuthMethod.CLIENT_SECRET_POST
    assert d.scope_delimiter == ","
    assert d.expiry_policy is ExpiryPolicy.UNKNOWN
    assert d.token_params == {"expiring": "1"}
    assert d.default_scopes == ("read",)
    with pytest.raises(ConfigurationError, match="no table"):
        ProviderDescriptor.from_toml(text, table="providers.other")
    with pytest.raises(ConfigurationError, match="TOML"):
        ProviderDescriptor.from_toml("id = ")
    flat = 'id = "x"\ntoken_endpoint = "https://x.example/t"\ngrants = "client_credentials"\n'
    assert ProviderDescriptor.from_toml(flat).grants == (GrantType.CLIENT_CREDENTIALS,)


def test_templates() -> None:
    d = make(
        authorization_endpoint="https://login.example/{tenant}/oauth2/v2.0/authorize",
        token_endpoint="https://login.example/{tenant}/oauth2/v2.0/token",
        issuer="https://login.example/{tenant}/v2.0",
        allowed_origins=["https://{shop}.myshop.example"],
    )
    assert d.template_fields == {"tenant", "shop"}
    with pytest.raises(ConfigurationError, match="shop"):
        d.with_template(tenant="contoso")
    filled = d.with_template(tenant="contoso", shop="acme")
    assert filled.token_endpoint == "https://login.example/contoso/oauth2/v2.0/token"
    assert filled.issuer == "https://login.example/contoso/v2.0"
    assert filled.allowed_origins == ("https://acme.myshop.example",)
    assert filled.template_fields == frozenset()
    assert d.template_fields  # the original is untouched


@pytest.mark.parametrize(
    "value",
    ["evil.example/x", "a?b", "a#b", "user@evil.example", "a b", "", "a\\b", "%2f", "..", "."],
)
def test_template_values_cannot_inject(value: str) -> None:
    d = make(token_endpoint="https://{shop}.myshop.example/token")
    with pytest.raises(ConfigurationError):
        d.with_template(shop=value)


def test_template_result_revalidated_and_scheme_cannot_be_templated() -> None:
    with pytest.raises(ConfigurationError):
        make(token_endpoint="{base}/token")
    host = make(token_endpoint="https://{host}/token")
    with pytest.raises(ConfigurationError):
        host.with_template(host="bad:port")


def test_replace_validates() -> None:
    d = make()
    assert d.replace(scope_on_refresh=True).scope_on_refresh is True
    with pytest.raises(ConfigurationError, match="unknown"):
        d.replace(scope_on_refreh=True)
    with pytest.raises(ConfigurationError):
        d.replace(token_endpoint="http://plain.example/token")


# -- discovery -------------------------------------------------------------------------------
METADATA: dict[str, Any] = {
    "issuer": "https://idp.example",
    "authorization_endpoint": "https://idp.example/authorize",
    "token_endpoint": "https://idp.example/token",
    "revocation_endpoint": "https://idp.example/revoke",
    "introspection_endpoint": "https://idp.example/introspect",
    "userinfo_endpoint": "https://idp.example/userinfo",
    "jwks_uri": "https://idp.example/jwks",
    "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
    "code_challenge_methods_supported": ["S256"],
    "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
    "authorization_response_iss_parameter_supported": True,
    "scopes_supported": ["openid"],
}


def test_from_metadata() -> None:
    d = ProviderDescriptor.from_metadata("idp", METADATA, expected_issuer="https://idp.example")
    assert d.issuer == "https://idp.example"
    assert d.jwks_uri == "https://idp.example/jwks"
    assert d.revocation_endpoint == "https://idp.example/revoke"
    assert d.userinfo_endpoint == "https://idp.example/userinfo"
    assert d.authorization_response_iss_parameter_supported is True
    assert d.client_auth_method is ClientAuthMethod.CLIENT_SECRET_BASIC
    assert d.pkce is PkceMode.OPTIONAL
    assert set(d.grants) == set(GrantType)
    from_bytes = ProviderDescriptor.from_metadata(
        "idp", json.dumps(METADATA).encode(), expected_issuer="https://idp.example"
    )
    assert from_bytes == d


@pytest.mark.parametrize(
    "expected", ["https://idp.example/", "https://IDP.example", "https://evil.example"]
)
def test_from_metadata_issuer_must_match_exactly(expected: str) -> None:
    with pytest.raises(ConfigurationError, match="issuer"):
        ProviderDescriptor.from_metadata("idp", METADATA, expected_issuer=expected)


def test_from_metadata_choices_and_overrides() -> None:
    doc = {
        **METADATA,
        "code_challenge_methods_supported": ["plain"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["HS256", "ES256"],
        "authorization_response_iss_parameter_supported": False,
        "grant_types_supported": ["authorization_code"],
    }
    d = ProviderDescriptor.from_metadata("idp", doc, expected_issuer="https://idp.example")
    assert d.pkce is PkceMode.OPTIONAL  # S256 still sent, never plain (SECURITY A3)
    assert d.client_auth_method is ClientAuthMethod.CLIENT_SECRET_POST
    assert d.grants == (GrantType.AUTHORIZATION_CODE,)
    jwt_only = {**doc, "token_endpoint_auth_methods_supported": ["private_key_jwt"]}
    d2 = ProviderDescriptor.from_metadata(
        "idp", jwt_only, expected_issuer="https://idp.example", scope_on_refresh=True
    )
    assert d2.client_auth_method is ClientAuthMethod.PRIVATE_KEY_JWT
    assert d2.token_endpoint_auth_signing_alg == "ES256"
    assert d2.scope_on_refresh is True
    with pytest.raises(ConfigurationError, match="unknown"):
        ProviderDescriptor.from_metadata(
            "idp", METADATA, expected_issuer="https://idp.example", nope=1
        )
    minimal = {"issuer": "https://idp.example", "token_endpoint": "https://idp.example/t"}
    cc = ProviderDescriptor.from_metadata("m", minimal, expected_issuer="https://idp.example")
    assert cc.grants == (GrantType.CLIENT_CREDENTIALS,)


def test_from_metadata_rejects_bad_documents() -> None:
    for doc in (
        {**METADATA, "token_endpoint": "http://idp.example/token"},
        {**METADATA, "token_endpoint": None},
        {**METADATA, "jwks_uri": 5},
        {**METADATA, "grant_types_supported": "authorization_code"},
        {**METADATA, "authorization_response_iss_parameter_supported": "true"},
    ):
        with pytest.raises(ConfigurationError):
            ProviderDescriptor.from_metadata("idp", doc, expected_issuer="https://idp.example")
    with pytest.raises(ConfigurationError):
        parse_metadata(b"<html>")
    with pytest.raises(ConfigurationError):
        parse_metadata(b"[]")


# -- client config ---------------------------------------------------------------------------
def test_client_config_hides_credentials() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    client = ClientConfig.create("app-1", "top-secret-value", private_key=pem, private_key_id="k")
    shown = repr(client) + str(client) + f"{client}"
    assert "app-1" in shown
    assert "top-secret-value" not in shown
    assert "MIIE" not in shown
    assert isinstance(client.client_secret, Secret)
    assert client.client_secret.get_secret_value() == "top-secret-value"
    jwk = ClientConfig.create("app-2", private_key={"kty": "RSA", "d": "very-private"})
    assert "very-private" not in repr(jwk)


def test_client_config_validation() -> None:
    with pytest.raises(ConfigurationError):
        ClientConfig.create("")
    with pytest.raises(ConfigurationError):
        ClientConfig.create("a\nb")
    plain = ClientConfig("app", "raw-string")  # type: ignore[arg-type]
    assert isinstance(plain.client_secret, Secret)
    assert ClientConfig.create("app", Secret("x")) == ClientConfig.create("app", "x")
    assert hash(ClientConfig.create("app", "x")) == hash(ClientConfig.create("app", "x"))


def test_repr_is_compact_and_shows_non_defaults() -> None:
    d = make(scope_delimiter=",", pkce="unsupported")
    shown = repr(d)
    assert shown.startswith("ProviderDescriptor(id='acme-idp', token_endpoint=")
    assert "scope_delimiter=','" in shown
    assert "pkce='unsupported'" in shown
    assert "errors_with_200" not in shown  # a default


def test_par_fields_and_discovery() -> None:
    with pytest.raises(ConfigurationError, match="pushed_authorization_request_endpoint"):
        make(require_pushed_authorization_requests=True)
    with pytest.raises(ConfigurationError, match="pushed_authorization_request_endpoint"):
        make(pushed_authorization_request_endpoint="http://idp.example/par")
    doc = {
        **METADATA,
        "pushed_authorization_request_endpoint": "https://idp.example/par",
        "require_pushed_authorization_requests": True,
    }
    d = ProviderDescriptor.from_metadata("idp", doc, expected_issuer="https://idp.example")
    assert d.pushed_authorization_request_endpoint == "https://idp.example/par"
    assert d.require_pushed_authorization_requests is True


def test_mapping_fields_are_read_only_but_serialisable() -> None:
    d = make(authorize_params={"prompt": "consent"})
    with pytest.raises(TypeError, match="read-only"):
        d.authorize_params["prompt"] = "none"  # type: ignore[index]
    with pytest.raises(TypeError):
        d.authorize_params.update({"x": "y"})  # type: ignore[attr-defined]
    assert json.loads(json.dumps(d.to_dict()))["authorize_params"] == {"prompt": "consent"}
    assert d.authorize_params == {"prompt": "consent"}
    copy = pickle.loads(pickle.dumps(d))
    assert copy == d
    assert copy.authorize_params == {"prompt": "consent"}
    assert d.replace(authorize_params={"prompt": "none"}).authorize_params == {"prompt": "none"}
