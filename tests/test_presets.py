"""Presets: every preset builds and carries its provider's quirks through the protocol layer."""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from oauth2_broker_mw import Broker
from oauth2_broker_mw import presets
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.errors import AuthorizationRequired
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import InvalidGrant
from oauth2_broker_mw._core.errors import ProviderError
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.oauth import authorization_params
from oauth2_broker_mw._core.oauth import authorization_url
from oauth2_broker_mw._core.oauth import callback_metadata
from oauth2_broker_mw._core.oauth import parse_token_response
from oauth2_broker_mw._core.oauth import refresh_params
from oauth2_broker_mw._core.oauth import token_request
from oauth2_broker_mw._core.provider import BodyFormat
from oauth2_broker_mw._core.provider import ClientAuthMethod
from oauth2_broker_mw._core.provider import ClientConfig
from oauth2_broker_mw._core.provider import ExpiryPolicy
from oauth2_broker_mw._core.provider import GrantType
from oauth2_broker_mw._core.provider import PkceMode
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw._core.provider import is_allowed_endpoint
from oauth2_broker_mw.testing.mock_provider import MockProvider
from oauth2_broker_mw.testing.mock_provider import MockQuirks

NOW = 1_700_000_000.0
CLIENT = ClientConfig.create("cid", "csecret")
TEMPLATE_ARGS: dict[str, dict[str, str]] = {
    "auth0": {"domain": "acme.eu.auth0.com"},
    "cognito": {
        "domain": "acme.auth.eu-west-1.amazoncognito.com",
        "region": "eu-west-1",
        "user_pool_id": "eu-west-1_AbC123",
    },
    "keycloak": {"host": "sso.acme.example", "realm": "main"},
    "okta": {"domain": "acme.okta.com"},
    "shopify": {"shop": "acme"},
    "zendesk": {"subdomain": "acme"},
}
EXPECTED = {
    "asana",
    "atlassian",
    "auth0",
    "box",
    "cognito",
    "discord",
    "dropbox",
    "figma",
    "github",
    "gitlab",
    "google",
    "hubspot",
    "keycloak",
    "linear",
    "linkedin",
    "microsoft",
    "notion",
    "okta",
    "pipedrive",
    "quickbooks",
    "reddit",
    "salesforce",
    "shopify",
    "slack",
    "spotify",
    "strava",
    "twitch",
    "x",
    "xero",
    "zendesk",
    "zoho",
}


def auth_url(d: ProviderDescriptor, scopes: str = "a b") -> dict[str, str]:
    params = authorization_params(
        d,
        CLIENT,
        redirect_uri="https://app.example/cb",
        scopes=ScopeSet.of(scopes),
        state="st",
        code_challenge="ch",
        nonce=None,
    )
    url = authorization_url(d, params)
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def response(data: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(data).encode())


def test_registry_lists_all_shipped_presets() -> None:
    assert set(presets.PRESETS) == EXPECTED
    assert set(presets.__all__) >= EXPECTED | {"PRESETS", "preset"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_is_valid_and_ready_with_its_arguments(name: str) -> None:
    d = presets.preset(name, **TEMPLATE_ARGS.get(name, {}))
    assert d.id == name
    assert d.template_fields == frozenset()
    for url in (
        d.token_endpoint,
        d.authorization_endpoint,
        d.revocation_endpoint,
        d.jwks_uri,
        d.userinfo_endpoint,
    ):
        assert url is None or (url.startswith("https://") and is_allowed_endpoint(url))
    assert d.supports(GrantType.AUTHORIZATION_CODE)
    assert ProviderDescriptor.from_dict(d.to_dict()) == d
    # an authorize URL and a token request can be built
    assert auth_url(d)["client_id"] == "cid"
    request = token_request(d, CLIENT, GrantType.AUTHORIZATION_CODE, {"code": "c"}, now=NOW)
    assert request.url == d.token_endpoint
    assert "csecret" not in request.url


@pytest.mark.parametrize("name", sorted(TEMPLATE_ARGS))
def test_templated_presets_without_arguments_stay_templated(name: str) -> None:
    d = presets.preset(name)
    assert d.template_fields == set(TEMPLATE_ARGS[name])
    with pytest.raises(ConfigurationError, match="with_template"):
        token_request(d, CLIENT, GrantType.AUTHORIZATION_CODE, {}, now=NOW)
    assert d.with_template(**TEMPLATE_ARGS[name]) == presets.preset(name, **TEMPLATE_ARGS[name])


def test_preset_lookup_aliases_overrides_and_errors() -> None:
    assert presets.preset("Twitter") == presets.x()
    assert presets.preset("entra", tenant="contoso.onmicrosoft.com").issuer == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
    )
    custom = presets.github(id="github-work", client_auth_method="client_secret_basic")
    assert custom.id == "github-work"
    assert custom.client_auth_method is ClientAuthMethod.CLIENT_SECRET_BASIC
    with pytest.raises(ConfigurationError, match="no preset named 'nope'"):
        presets.preset("nope")
    with pytest.raises(ConfigurationError, match="unknown provider descriptor fields"):
        presets.github(scope_delimeter=",")
    with pytest.raises(ConfigurationError):
        presets.shopify(shop="evil.example/x")
    with pytest.raises(ConfigurationError, match="Zoho region"):
        presets.zoho(region="xx")


def test_github_form_body_comma_scopes_and_error_200() -> None:
    d = presets.github()
    assert d.expiry_policy is ExpiryPolicy.UNKNOWN
    body = b"access_token=gho_x&scope=repo%2Cgist&token_type=bearer"
    parsed = parse_token_response(d, HttpResponse(200, {}, body), now=NOW)
    assert parsed.scopes == ScopeSet.of(["gist", "repo"])
    assert parsed.expires_at is None
    with pytest.raises(InvalidGrant):
        parse_token_response(d, response({"error": "bad_verification_code"}), now=NOW)
    app_token = response(
        {
            "access_token": "ghu_x",
            "expires_in": 28800,
            "refresh_token": "ghr_x",
            "refresh_token_expires_in": 15811200,
            "token_type": "bearer",
            "scope": "",
        }
    )
    parsed = parse_token_response(d, app_token, now=NOW)
    assert parsed.expires_at == NOW + 28800
    assert parsed.refresh_token_expires_at == NOW + 15811200


def test_google_offline_params_and_oidc() -> None:
    d = presets.google()
    q = auth_url(d, "openid email")
    assert q["access_type"] == "offline"
    assert q["prompt"] == "consent"
    assert q["code_challenge_method"] == "S256"
    assert d.issuer == "https://accounts.google.com"
    assert d.client_auth_method is ClientAuthMethod.CLIENT_SECRET_POST


def test_microsoft_tenant_scope_on_refresh_and_issuer() -> None:
    common = presets.microsoft()
    assert "/common/" in common.token_endpoint
    assert common.issuer is None  # multi-tenant: iss names the user's tenant
    assert common.scope_on_refresh
    assert "offline_access" in common.default_scopes
    params = refresh_params(
        common, refresh_token="r", scopes=ScopeSet.of("offline_access User.Read")
    )
    assert params["scope"] == "User.Read offline_access"
    single = presets.microsoft(tenant="72f988bf-86f1-41af-91ab-2d7cd011db47")
    assert single.issuer == (
        "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
    )
    assert presets.microsoft(tenant=None).template_fields == {"tenant"}


def test_slack_bot_and_user_tokens() -> None:
    bot = presets.slack()
    q = auth_url(bot, "chat:write commands")
    assert q["scope"] == "chat:write,commands"
    assert "code_challenge" not in q
    parsed = parse_token_response(
        bot,
        response(
            {
                "ok": True,
                "access_token": "xoxb-1",
                "token_type": "bot",
                "scope": "chat:write,commands",
                "bot_user_id": "U0B",
                "team": {"id": "T1"},
            }
        ),
        now=NOW,
    )
    assert parsed.token_type == "Bearer"
    assert parsed.expires_at is None
    assert parsed.metadata["bot_user_id"] == "U0B"
    with pytest.raises(InvalidGrant):
        parse_token_response(bot, response({"ok": False, "error": "invalid_code"}), now=NOW)

    user = presets.slack(user_token=True)
    q = auth_url(user, "search:read users:read")
    assert q["user_scope"] == "search:read,users:read"
    assert "scope" not in q
    parsed = parse_token_response(
        user,
        response(
            {
                "ok": True,
                "team": {"id": "T1"},
                "authed_user": {
                    "id": "U1",
                    "access_token": "xoxp-1",
                    "token_type": "user",
                    "scope": "search:read,users:read",
                },
            }
        ),
        now=NOW,
    )
    assert parsed.access_token.get_secret_value() == "xoxp-1"
    assert parsed.scopes == ScopeSet.of(["search:read", "users:read"])


def test_salesforce_unknown_expiry_and_instance_url() -> None:
    d = presets.salesforce(domain="test.salesforce.com")
    assert d.token_endpoint == "https://test.salesforce.com/services/oauth2/token"
    parsed = parse_token_response(
        d,
        response(
            {
                "access_token": "00D!x",
                "instance_url": "https://acme.my.salesforce.com",
                "id": "https://login.salesforce.com/id/00D/005",
                "issued_at": "1700000000000",
                "signature": "sig",
                "token_type": "Bearer",
            }
        ),
        now=NOW,
    )
    assert parsed.expires_at is None
    assert parsed.metadata["instance_url"] == "https://acme.my.salesforce.com"


def test_x_requires_pkce_and_basic_auth() -> None:
    d = presets.x()
    assert d.pkce is PkceMode.REQUIRED
    with pytest.raises(ConfigurationError, match="PKCE"):
        authorization_params(
            d,
            CLIENT,
            redirect_uri="https://a/cb",
            scopes=ScopeSet(),
            state="s",
            code_challenge=None,
            nonce=None,
        )
    request = token_request(d, CLIENT, GrantType.REFRESH_TOKEN, {"refresh_token": "r"}, now=NOW)
    header = request.header("authorization")
    assert header is not None
    assert base64.b64decode(header.split()[1]) == b"cid:csecret"


def test_notion_basic_auth_with_json_body() -> None:
    d = presets.notion()
    assert d.body_format is BodyFormat.JSON
    request = token_request(
        d,
        CLIENT,
        GrantType.AUTHORIZATION_CODE,
        {"code": "c", "redirect_uri": "https://a/cb"},
        now=NOW,
    )
    assert request.header("authorization") is not None
    assert request.body is not None
    assert json.loads(request.body) == {
        "grant_type": "authorization_code",
        "code": "c",
        "redirect_uri": "https://a/cb",
    }
    assert auth_url(d)["owner"] == "user"


def test_quickbooks_realm_id_and_refresh_expiry() -> None:
    d = presets.quickbooks()
    assert callback_metadata(d, {"code": "c", "state": "s", "realmId": "9130"}) == {
        "realmId": "9130"
    }
    parsed = parse_token_response(
        d,
        response(
            {
                "access_token": "eyJ",
                "refresh_token": "AB1",
                "token_type": "bearer",
                "expires_in": 3600,
                "x_refresh_token_expires_in": 8726400,
            }
        ),
        now=NOW,
    )
    assert parsed.refresh_token_expires_at == NOW + 8726400


def test_twitch_scope_array() -> None:
    parsed = parse_token_response(
        presets.twitch(),
        response(
            {
                "access_token": "t",
                "refresh_token": "r",
                "expires_in": 14000,
                "scope": ["channel:read:subscriptions", "user:read:email"],
                "token_type": "bearer",
            }
        ),
        now=NOW,
    )
    assert parsed.scopes == ScopeSet.of(["channel:read:subscriptions", "user:read:email"])


def test_figma_refresh_endpoint_and_comma_scopes() -> None:
    d = presets.figma()
    assert d.refresh_url == "https://api.figma.com/v1/oauth/refresh"
    assert d.token_endpoint == "https://api.figma.com/v1/oauth/token"
    assert auth_url(d, "file_content:read files:read")["scope"] == "file_content:read,files:read"
    assert "code_challenge" not in auth_url(d)


def test_dropbox_offline_and_strava_comma() -> None:
    assert auth_url(presets.dropbox())["token_access_type"] == "offline"
    assert auth_url(presets.strava(), "read activity:read")["scope"] == "activity:read,read"


def test_shopify_shop_forms_and_expiring_tokens() -> None:
    a = presets.shopify(shop="acme")
    b = presets.shopify(shop="acme.myshopify.com")
    assert a == b
    assert a.allowed_origins == ("https://acme.myshopify.com",)
    assert not a.supports("refresh_token")
    expiring = presets.shopify(shop="acme", expiring=True)
    assert expiring.supports("refresh_token")
    request = token_request(expiring, CLIENT, GrantType.AUTHORIZATION_CODE, {"code": "c"}, now=NOW)
    assert request.body is not None
    assert b"expiring=1" in request.body


def test_zoho_regions_and_api_domain() -> None:
    eu = presets.zoho(region="eu")
    assert eu.token_endpoint == "https://accounts.zoho.eu/oauth/v2/token"
    assert eu.allowed_origins == ("https://www.zohoapis.eu",)
    assert auth_url(eu, "ZohoCRM.modules.ALL ZohoCRM.settings.ALL")["scope"] == (
        "ZohoCRM.modules.ALL,ZohoCRM.settings.ALL"
    )
    parsed = parse_token_response(
        eu,
        response(
            {
                "access_token": "1000.x",
                "api_domain": "https://www.zohoapis.eu",
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        ),
        now=NOW,
    )
    assert parsed.metadata == {"api_domain": "https://www.zohoapis.eu"}


def test_okta_and_auth0_shapes() -> None:
    okta = presets.okta(domain="acme.okta.com")
    assert okta.issuer == "https://acme.okta.com/oauth2/default"
    assert okta.token_endpoint == "https://acme.okta.com/oauth2/default/v1/token"
    org = presets.okta(domain="acme.okta.com", authorization_server=None)
    assert org.issuer == "https://acme.okta.com"
    assert org.token_endpoint == "https://acme.okta.com/oauth2/v1/token"
    auth0 = presets.auth0(domain="acme.eu.auth0.com", audience="https://api.acme.example")
    assert auth0.issuer == "https://acme.eu.auth0.com/"
    assert auth0.token_params == {"audience": "https://api.acme.example"}
    request = token_request(auth0, CLIENT, GrantType.CLIENT_CREDENTIALS, {}, now=NOW)
    assert request.body is not None
    assert parse_qs(request.body.decode())["audience"] == ["https://api.acme.example"]


def test_atlassian_and_xero_offline_access() -> None:
    at = presets.atlassian()
    assert auth_url(at)["audience"] == "api.atlassian.com"
    assert at.default_scopes == ("offline_access",)
    assert presets.xero().default_scopes == ("offline_access",)


def test_keycloak_cognito_and_gitlab_shapes() -> None:
    kc = presets.keycloak(host="sso.acme.example", realm="main")
    assert kc.issuer == "https://sso.acme.example/realms/main"
    assert kc.token_endpoint == (
        "https://sso.acme.example/realms/main/protocol/openid-connect/token"
    )
    parsed = parse_token_response(
        kc,
        response(
            {
                "access_token": "a",
                "expires_in": 300,
                "refresh_expires_in": 1800,
                "refresh_token": "r",
                "token_type": "Bearer",
                "session_state": "s",
            }
        ),
        now=NOW,
    )
    assert parsed.refresh_token_expires_at == NOW + 1800
    with pytest.raises(ConfigurationError, match="realm"):
        presets.keycloak(host="sso.acme.example")
    cog = presets.cognito(**TEMPLATE_ARGS["cognito"])
    assert cog.issuer == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123"
    assert cog.jwks_uri == (
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123/.well-known/jwks.json"
    )
    assert cog.token_endpoint == "https://acme.auth.eu-west-1.amazoncognito.com/oauth2/token"
    own = presets.gitlab(host="gitlab.acme.example")
    assert own.issuer == "https://gitlab.acme.example"
    assert own.allowed_origins == ("https://gitlab.acme.example",)


def test_reddit_linkedin_linear_quirks() -> None:
    assert auth_url(presets.reddit())["duration"] == "permanent"
    assert presets.reddit().client_auth_method is ClientAuthMethod.CLIENT_SECRET_BASIC
    assert "code_challenge" not in auth_url(presets.linkedin())
    linear = presets.linear()
    assert auth_url(linear, "read write")["scope"] == "read,write"
    assert "code_challenge" not in auth_url(linear)


# -- end to end: preset quirks against a MockProvider behaving like the provider -----------
E2E_TENANT = "acme"
E2E_USER = "alice"


def at_mock(preset: ProviderDescriptor, mp: MockProvider) -> ProviderDescriptor:
    """The preset's quirks with the mock's endpoints (and issuer when the preset has one)."""
    mock = mp.descriptor()
    return preset.replace(
        token_endpoint=mock.token_endpoint,
        authorization_endpoint=mock.authorization_endpoint,
        revocation_endpoint=mock.revocation_endpoint if preset.revocation_endpoint else None,
        introspection_endpoint=None,
        userinfo_endpoint=None,
        issuer=mock.issuer if preset.issuer else None,
        jwks_uri=mock.jwks_uri if preset.issuer else None,
        refresh_endpoint=mp.url("/refresh") if preset.refresh_endpoint else None,
        allowed_origins=(),
    )


def broker_for(preset: ProviderDescriptor, mp: MockProvider) -> Broker:
    return Broker(
        at_mock(preset, mp),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )


def login(broker: Broker, mp: MockProvider, scopes: list[str]) -> TokenRecord:
    request = broker.start_authorization(
        tenant=E2E_TENANT, principal=E2E_USER, scopes=scopes, redirect_uri="https://app.example/cb"
    )
    response = mp.client().get(request.url)
    assert response.status_code in (302, 303), response.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))
    return broker.exchange_code(
        state=query["state"], code=query["code"], iss=query.get("iss"), callback_params=query
    )


def refresh(broker: Broker, scopes: list[str]) -> Any:
    return broker.lease(tenant=E2E_TENANT, principal=E2E_USER, scopes=scopes, force_refresh=True)


def test_github_preset() -> None:
    mp = MockProvider(quirks=MockQuirks.github(), oidc=False)
    # GitHub documents a space-delimited authorize scope (it also accepts commas)
    mp.quirks.scope_delimiter = " "
    broker = broker_for(presets.github(), mp)
    record = login(broker, mp, ["repo", "user"])
    assert record.scopes.scopes == ("repo", "user")
    assert record.expires_at is None  # GitHub OAuth apps: no expiry
    mp.faults.add("token", "error_200", error="bad_refresh_token")
    # the GitHub alias makes it an invalid grant: the broker asks for a new login
    with pytest.raises(AuthorizationRequired) as info:
        refresh(broker, ["repo", "user"])
    assert isinstance(info.value.__cause__, InvalidGrant)
    assert info.value.__cause__.error == "bad_refresh_token"


@pytest.mark.parametrize("user_token", [False, True])
def test_slack_preset(user_token: bool) -> None:
    mp = MockProvider(quirks=MockQuirks.slack(), oidc=False, pkce="unsupported")
    if not user_token:
        mp.quirks.response_shape = "standard"
    mp.quirks.token_type = "user" if user_token else "bot"
    # the mock knows no ``user_scope``: keep the scope parameter name for it
    broker = broker_for(presets.slack(user_token=user_token, param_renames={}), mp)
    record = login(broker, mp, ["chat:write", "users:read"])
    assert record.scopes.scopes == ("chat:write", "users:read")
    assert record.token_type == "Bearer"
    lease = refresh(broker, ["chat:write", "users:read"])
    assert lease.access_token != record.access_token
    mp.faults.add("token", "slack_error", error="internal_error")
    with pytest.raises(ProviderError) as info:
        refresh(broker, ["chat:write", "users:read"])
    assert info.value.retryable  # Slack internal_error is transient through the alias


def test_microsoft_preset_sends_scope_on_refresh() -> None:
    mp = MockProvider(quirks=MockQuirks.entra(), oidc=False)
    broker = broker_for(presets.microsoft(), mp)
    scopes = ["User.Read", "offline_access"]
    record = login(broker, mp, scopes)
    lease = refresh(broker, scopes)  # the mock refuses a refresh without scope
    assert lease.access_token != record.access_token


def test_google_preset_keeps_refresh_token_and_verifies_id_token() -> None:
    mp = MockProvider(quirks=MockQuirks.google(), oidc=True)
    broker = broker_for(presets.google(), mp)
    record = login(broker, mp, ["openid", "email"])
    assert record.refresh_token is not None
    refresh(broker, ["openid", "email"])
    stored = broker.store.get(record.key)
    assert stored is not None
    assert stored.refresh_token == record.refresh_token  # quirk 7: no new one, the old one kept


def test_salesforce_preset_unknown_expiry_and_instance_url() -> None:
    mp = MockProvider(quirks=MockQuirks.salesforce(), oidc=False)
    broker = broker_for(presets.salesforce(), mp)
    record = login(broker, mp, ["api", "refresh_token"])
    assert record.expires_at is None
    assert record.metadata["instance_url"] == "https://na1.salesforce.test"


def test_figma_preset_refreshes_at_its_refresh_endpoint() -> None:
    mp = MockProvider(
        quirks=MockQuirks(separate_refresh_endpoint=True, scope_delimiter=",", scope_echo="comma"),
        oidc=False,
        pkce="unsupported",
    )
    broker = broker_for(presets.figma(), mp)
    record = login(broker, mp, ["file_content:read"])
    lease = refresh(broker, ["file_content:read"])
    assert lease.access_token != record.access_token


def test_notion_preset_json_body() -> None:
    mp = MockProvider(quirks=MockQuirks(token_body_format="json", expires_in="omit"), oidc=False)
    broker = broker_for(presets.notion(), mp)
    record = login(broker, mp, ["read"])
    assert record.expires_at is None


def test_quickbooks_preset_keeps_realm_id() -> None:
    mp = MockProvider(
        quirks=MockQuirks(
            redirect_extra_params={"realmId": "9130350"},
            refresh_expires_in_field="x_refresh_token_expires_in",
        ),
        oidc=False,
        refresh_ttl=8_726_400,
    )
    broker = broker_for(presets.quickbooks(), mp)
    record = login(broker, mp, ["com.intuit.quickbooks.accounting"])
    assert "9130350" in str(record.metadata)
    assert record.refresh_token_expires_at is not None


def test_twitch_preset_scope_array() -> None:
    mp = MockProvider(quirks=MockQuirks(scope_echo="array"), oidc=False)
    broker = broker_for(presets.twitch().replace(issuer=None, jwks_uri=None), mp)
    record = login(broker, mp, ["user:read:email", "chat:read"])
    assert record.scopes.scopes == ("chat:read", "user:read:email")
