"""Ready-made provider descriptors for well-known OAuth 2.0 providers.

Each preset is a function returning a validated :class:`ProviderDescriptor` that carries the
provider's quirks (see ``docs/providers.md``). Keyword ``overrides`` replace any descriptor
field, e.g. ``github(id="github-enterprise", client_auth_method="client_secret_basic")``.
Presets whose endpoints depend on a tenant, shop, domain or region take it as an argument;
leave it out to get a templated descriptor and fill it later with
:meth:`ProviderDescriptor.with_template`.

Endpoints were taken from each provider's public documentation; providers do move them, so
check the provider's docs (or use discovery, :meth:`ProviderDescriptor.from_metadata`) when
something fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ._core.errors import ConfigurationError
from ._core.provider import (
    BodyFormat,
    ClientAuthMethod,
    ExpiryPolicy,
    GrantType,
    PkceMode,
    ProviderDescriptor,
)

__all__ = [
    "PRESETS",
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
    "preset",
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
]

_CODE_AND_REFRESH = (GrantType.AUTHORIZATION_CODE, GrantType.REFRESH_TOKEN)
_ALL_GRANTS = (
    GrantType.AUTHORIZATION_CODE,
    GrantType.REFRESH_TOKEN,
    GrantType.CLIENT_CREDENTIALS,
)


def _build(
    fields: dict[str, Any],
    overrides: Mapping[str, Any],
    template: Mapping[str, str | None] | None = None,
) -> ProviderDescriptor:
    """Merge ``overrides`` over ``fields``, validate, then fill any given template values."""
    merged = {**fields, **overrides}
    descriptor = ProviderDescriptor.from_dict(merged)
    values = {k: v for k, v in (template or {}).items() if v is not None}
    if values:
        descriptor = descriptor.with_template(**values)
    return descriptor


def github(**overrides: Any) -> ProviderDescriptor:
    """GitHub OAuth apps and GitHub Apps (user-to-server tokens).

    Quirks: the token endpoint answers form-encoded unless ``Accept: application/json`` is sent
    (always sent) and reports errors with HTTP 200; scopes come back comma-joined; OAuth-app
    tokens do not expire (expiry ``unknown``), GitHub-App user tokens expire after 8 hours and
    carry ``refresh_token_expires_in``. No RFC 7009 revocation endpoint.
    """
    return _build(
        {
            "id": "github",
            "display_name": "GitHub",
            "authorization_endpoint": "https://github.com/login/oauth/authorize",
            "token_endpoint": "https://github.com/login/oauth/access_token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "expiry_policy": ExpiryPolicy.UNKNOWN,
            "error_aliases": {
                "bad_verification_code": "invalid_grant",
                "bad_refresh_token": "invalid_grant",
                "incorrect_client_credentials": "invalid_client",
                "unverified_user_email": "access_denied",
            },
            "allowed_origins": ("https://api.github.com", "https://uploads.github.com"),
        },
        overrides,
    )


def google(**overrides: Any) -> ProviderDescriptor:
    """Google (OpenID Connect).

    Quirks: a refresh token comes only with ``access_type=offline`` and only on first consent,
    hence ``prompt=consent``; refresh responses carry no new refresh token (keep the old one);
    apps in "testing" mode get refresh tokens that expire after 7 days; 502 pages are HTML.
    ``allowed_origins`` is empty because Google APIs live on many hosts: set it for your APIs.
    """
    return _build(
        {
            "id": "google",
            "display_name": "Google",
            "issuer": "https://accounts.google.com",
            "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
            "token_endpoint": "https://oauth2.googleapis.com/token",
            "revocation_endpoint": "https://oauth2.googleapis.com/revoke",
            "userinfo_endpoint": "https://openidconnect.googleapis.com/v1/userinfo",
            "jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "authorize_params": {"access_type": "offline", "prompt": "consent"},
        },
        overrides,
    )


def microsoft(tenant: str | None = "common", **overrides: Any) -> ProviderDescriptor:
    """Microsoft Entra ID (v2.0 endpoints).

    ``tenant`` is ``common``, ``organizations``, ``consumers``, a tenant id or a verified
    domain; ``None`` keeps the ``{tenant}`` placeholder. The issuer is set (and ID tokens are
    checked against it) only for a specific tenant, because multi-tenant endpoints issue
    tokens whose ``iss`` names the user's own tenant.

    Quirks: refresh requests must repeat the scope (``scope_on_refresh``; ``AADSTS90009``
    otherwise); ``offline_access`` is needed for a refresh token and is dropped from the echoed
    scope; tokens are per resource (one resource's scopes per request).
    """
    multi = tenant in ("common", "organizations", "consumers")
    fields: dict[str, Any] = {
        "id": "microsoft",
        "display_name": "Microsoft",
        "authorization_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_endpoint": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "jwks_uri": "https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys",
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "grants": _ALL_GRANTS,
        "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
        "scope_on_refresh": True,
        "default_scopes": ("offline_access",),
        "allowed_origins": ("https://graph.microsoft.com",),
    }
    if not multi:
        fields["issuer"] = "https://login.microsoftonline.com/{tenant}/v2.0"
    return _build(fields, overrides, {"tenant": tenant})


def slack(user_token: bool = False, **overrides: Any) -> ProviderDescriptor:
    """Slack (OAuth v2).

    Quirks: errors come as HTTP 200 with ``{"ok": false, "error": ...}``; scopes are
    comma-separated; PKCE is not supported; ``token_type`` is ``bot`` or ``user`` (both used as
    Bearer); tokens expire (and refresh tokens rotate) only when token rotation is enabled, so
    expiry is ``unknown``. With ``user_token=True`` the broker requests *user* scopes
    (``user_scope``) and takes the token nested under ``authed_user``.
    """
    fields: dict[str, Any] = {
        "id": "slack",
        "display_name": "Slack",
        "authorization_endpoint": "https://slack.com/oauth/v2/authorize",
        "token_endpoint": "https://slack.com/api/oauth.v2.access",
        "grants": _CODE_AND_REFRESH,
        "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
        "scope_delimiter": ",",
        "pkce": PkceMode.UNSUPPORTED,
        "expiry_policy": ExpiryPolicy.UNKNOWN,
        "token_type_aliases": {"bot": "Bearer", "user": "Bearer"},
        "error_aliases": {
            "invalid_code": "invalid_grant",
            "code_already_used": "invalid_grant",
            "code_expired": "invalid_grant",
            "invalid_refresh_token": "invalid_grant",
            "invalid_grant_type": "unauthorized_client",
            "invalid_client_id": "invalid_client",
            "bad_client_secret": "invalid_client",
            "bad_redirect_uri": "invalid_request",
            "ratelimited": "slow_down",
            "service_unavailable": "temporarily_unavailable",
            "internal_error": "server_error",
            "fatal_error": "server_error",
        },
        "allowed_origins": ("https://slack.com",),
    }
    if user_token:
        fields["token_path"] = ("authed_user",)
        fields["param_renames"] = {"scope": "user_scope"}
    return _build(fields, overrides)


def salesforce(domain: str | None = "login.salesforce.com", **overrides: Any) -> ProviderDescriptor:
    """Salesforce.

    ``domain`` is ``login.salesforce.com``, ``test.salesforce.com`` (sandboxes) or a My Domain
    host such as ``acme.my.salesforce.com``. Quirks: the token response has no ``expires_in``
    (expiry ``unknown``: refresh on 401 or use introspection) and carries ``instance_url``,
    the base URL for API calls (kept in metadata); refresh tokens do not rotate by default;
    a refresh token needs the ``refresh_token`` scope. ``allowed_origins`` is empty because
    the API host is per org (``instance_url``).
    """
    return _build(
        {
            "id": "salesforce",
            "display_name": "Salesforce",
            "issuer": "https://{domain}",
            "authorization_endpoint": "https://{domain}/services/oauth2/authorize",
            "token_endpoint": "https://{domain}/services/oauth2/token",
            "revocation_endpoint": "https://{domain}/services/oauth2/revoke",
            "introspection_endpoint": "https://{domain}/services/oauth2/introspect",
            "userinfo_endpoint": "https://{domain}/services/oauth2/userinfo",
            "jwks_uri": "https://{domain}/id/keys",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "expiry_policy": ExpiryPolicy.UNKNOWN,
            "default_scopes": ("refresh_token",),
        },
        overrides,
        {"domain": domain},
    )


def x(**overrides: Any) -> ProviderDescriptor:
    """X (Twitter) OAuth 2.0.

    Quirks: PKCE is required; confidential clients must use HTTP Basic (public clients:
    ``client_auth_method="none"``); a refresh token needs the ``offline.access`` scope and is
    single-use (rotated on every refresh); access tokens last 2 hours.
    """
    return _build(
        {
            "id": "x",
            "display_name": "X",
            "authorization_endpoint": "https://x.com/i/oauth2/authorize",
            "token_endpoint": "https://api.x.com/2/oauth2/token",
            "revocation_endpoint": "https://api.x.com/2/oauth2/revoke",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "pkce": PkceMode.REQUIRED,
            "default_scopes": ("offline.access",),
            "allowed_origins": ("https://api.x.com", "https://api.twitter.com"),
        },
        overrides,
    )


def atlassian(**overrides: Any) -> ProviderDescriptor:
    """Atlassian (Jira, Confluence) OAuth 2.0 (3LO).

    Quirks: ``audience=api.atlassian.com`` and ``prompt=consent`` on the authorize request;
    ``offline_access`` for a refresh token; rotating refresh tokens (reuse is rejected).
    """
    return _build(
        {
            "id": "atlassian",
            "display_name": "Atlassian",
            "authorization_endpoint": "https://auth.atlassian.com/authorize",
            "token_endpoint": "https://auth.atlassian.com/oauth/token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "authorize_params": {"audience": "api.atlassian.com", "prompt": "consent"},
            "default_scopes": ("offline_access",),
            "allowed_origins": ("https://api.atlassian.com",),
        },
        overrides,
    )


def xero(**overrides: Any) -> ProviderDescriptor:
    """Xero (OpenID Connect).

    Quirks: ``offline_access`` for a refresh token; refresh tokens rotate and expire after 60
    days unused; the tenant to call is chosen afterwards via the ``/connections`` API.
    """
    return _build(
        {
            "id": "xero",
            "display_name": "Xero",
            "issuer": "https://identity.xero.com",
            "authorization_endpoint": "https://login.xero.com/identity/connect/authorize",
            "token_endpoint": "https://identity.xero.com/connect/token",
            "revocation_endpoint": "https://identity.xero.com/connect/revocation",
            "userinfo_endpoint": "https://identity.xero.com/connect/userinfo",
            "jwks_uri": "https://identity.xero.com/.well-known/openid-configuration/jwks",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "default_scopes": ("offline_access",),
            "allowed_origins": ("https://api.xero.com",),
        },
        overrides,
    )


def quickbooks(**overrides: Any) -> ProviderDescriptor:
    """Intuit QuickBooks Online.

    Quirks: the company id arrives on the callback as ``realmId`` (kept as metadata); refresh
    tokens rotate and expire (``x_refresh_token_expires_in``, about 100 days). Both the
    production and sandbox API hosts are allowed origins.
    """
    return _build(
        {
            "id": "quickbooks",
            "display_name": "QuickBooks",
            "issuer": "https://oauth.platform.intuit.com/op/v1",
            "authorization_endpoint": "https://appcenter.intuit.com/connect/oauth2",
            "token_endpoint": "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",
            "revocation_endpoint": "https://developer.api.intuit.com/v2/oauth2/tokens/revoke",
            "userinfo_endpoint": (
                "https://accounts.platform.intuit.com/v1/openid_connect/userinfo"
            ),
            "jwks_uri": "https://oauth.platform.intuit.com/op/v1/jwks",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "callback_params": ("realmId",),
            "allowed_origins": (
                "https://quickbooks.api.intuit.com",
                "https://sandbox-quickbooks.api.intuit.com",
            ),
        },
        overrides,
    )


def zendesk(subdomain: str | None = None, **overrides: Any) -> ProviderDescriptor:
    """Zendesk (per-account subdomain, ``{subdomain}.zendesk.com``).

    Quirks: ``expires_in`` is returned only when requested (expiry ``unknown``; pass
    ``token_params={"expires_in": "..."}`` to ask for one); refresh tokens rotate.
    """
    return _build(
        {
            "id": "zendesk",
            "display_name": "Zendesk",
            "authorization_endpoint": "https://{subdomain}.zendesk.com/oauth/authorizations/new",
            "token_endpoint": "https://{subdomain}.zendesk.com/oauth/tokens",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "expiry_policy": ExpiryPolicy.UNKNOWN,
            "allowed_origins": ("https://{subdomain}.zendesk.com",),
        },
        overrides,
        {"subdomain": subdomain},
    )


ZOHO_REGIONS = ("com", "eu", "in", "com.au", "jp", "ca", "sa", "com.cn")


def zoho(region: str | None = "com", **overrides: Any) -> ProviderDescriptor:
    """Zoho (accounts server per data-centre region: ``com``, ``eu``, ``in``, ``com.au``...).

    Quirks: comma-separated scopes; ``access_type=offline`` and ``prompt=consent`` for a
    refresh token; the token response carries ``api_domain`` (kept as metadata) and the
    callback carries ``accounts-server`` and ``location`` (kept as callback metadata).
    """
    if region is not None and region not in ZOHO_REGIONS:
        raise ConfigurationError(f"unknown Zoho region {region!r}; one of {ZOHO_REGIONS}")
    return _build(
        {
            "id": "zoho",
            "display_name": "Zoho",
            "authorization_endpoint": "https://accounts.zoho.{region}/oauth/v2/auth",
            "token_endpoint": "https://accounts.zoho.{region}/oauth/v2/token",
            "revocation_endpoint": "https://accounts.zoho.{region}/oauth/v2/token/revoke",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "scope_delimiter": ",",
            "authorize_params": {"access_type": "offline", "prompt": "consent"},
            "callback_params": ("accounts-server", "location"),
            "allowed_origins": ("https://www.zohoapis.{region}",),
        },
        overrides,
        {"region": region},
    )


def shopify(
    shop: str | None = None, expiring: bool = False, **overrides: Any
) -> ProviderDescriptor:
    """Shopify (per shop, ``{shop}.myshopify.com``).

    ``shop`` may be given with or without the ``.myshopify.com`` suffix. Quirks:
    comma-separated scopes; offline tokens do not expire unless requested with
    ``expiring=1`` (``expiring=True`` here), which also enables refresh tokens.
    """
    if shop is not None and shop.endswith(".myshopify.com"):
        shop = shop[: -len(".myshopify.com")]
    fields: dict[str, Any] = {
        "id": "shopify",
        "display_name": "Shopify",
        "authorization_endpoint": "https://{shop}.myshopify.com/admin/oauth/authorize",
        "token_endpoint": "https://{shop}.myshopify.com/admin/oauth/access_token",
        "grants": (GrantType.AUTHORIZATION_CODE,),
        "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
        "scope_delimiter": ",",
        "expiry_policy": ExpiryPolicy.UNKNOWN,
        "allowed_origins": ("https://{shop}.myshopify.com",),
    }
    if expiring:
        fields["grants"] = _CODE_AND_REFRESH
        fields["token_params"] = {"expiring": "1"}
    return _build(fields, overrides, {"shop": shop})


def notion(**overrides: Any) -> ProviderDescriptor:
    """Notion (public integrations).

    Quirks: HTTP Basic client authentication with a JSON request body; ``owner=user`` on the
    authorize request; no scopes; the response carries ``workspace_id``, ``workspace_name``
    and ``bot_id`` (kept as metadata); tokens carry no ``expires_in`` (expiry ``unknown``).
    """
    return _build(
        {
            "id": "notion",
            "display_name": "Notion",
            "authorization_endpoint": "https://api.notion.com/v1/oauth/authorize",
            "token_endpoint": "https://api.notion.com/v1/oauth/token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "body_format": BodyFormat.JSON,
            "authorize_params": {"owner": "user"},
            "expiry_policy": ExpiryPolicy.UNKNOWN,
            "allowed_origins": ("https://api.notion.com",),
        },
        overrides,
    )


def hubspot(**overrides: Any) -> ProviderDescriptor:
    """HubSpot. Client credentials go in the body; access tokens last 30 minutes."""
    return _build(
        {
            "id": "hubspot",
            "display_name": "HubSpot",
            "authorization_endpoint": "https://app.hubspot.com/oauth/authorize",
            "token_endpoint": "https://api.hubapi.com/oauth/v1/token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "allowed_origins": ("https://api.hubapi.com",),
        },
        overrides,
    )


def dropbox(**overrides: Any) -> ProviderDescriptor:
    """Dropbox. ``token_access_type=offline`` for a refresh token; Basic *or* body, not both."""
    return _build(
        {
            "id": "dropbox",
            "display_name": "Dropbox",
            "authorization_endpoint": "https://www.dropbox.com/oauth2/authorize",
            "token_endpoint": "https://api.dropboxapi.com/oauth2/token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "authorize_params": {"token_access_type": "offline"},
            "allowed_origins": (
                "https://api.dropboxapi.com",
                "https://content.dropboxapi.com",
                "https://notify.dropboxapi.com",
            ),
        },
        overrides,
    )


def twitch(**overrides: Any) -> ProviderDescriptor:
    """Twitch (OpenID Connect). Quirk: ``scope`` is echoed as a JSON array."""
    return _build(
        {
            "id": "twitch",
            "display_name": "Twitch",
            "issuer": "https://id.twitch.tv/oauth2",
            "authorization_endpoint": "https://id.twitch.tv/oauth2/authorize",
            "token_endpoint": "https://id.twitch.tv/oauth2/token",
            "revocation_endpoint": "https://id.twitch.tv/oauth2/revoke",
            "userinfo_endpoint": "https://id.twitch.tv/oauth2/userinfo",
            "jwks_uri": "https://id.twitch.tv/oauth2/keys",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "allowed_origins": ("https://api.twitch.tv",),
        },
        overrides,
    )


def okta(
    domain: str | None = None,
    authorization_server: str | None = "default",
    **overrides: Any,
) -> ProviderDescriptor:
    """Okta. ``domain`` is your Okta host (``acme.okta.com``); ``authorization_server`` is a
    custom authorization server id (``default``) or ``None`` for the org authorization server.
    Use ``client_auth_method="private_key_jwt"`` for service apps that require it.
    """
    base = "https://{domain}" + (f"/oauth2/{authorization_server}" if authorization_server else "")
    api = base + ("/v1" if authorization_server else "/oauth2/v1")
    if authorization_server is not None and any(c in authorization_server for c in "/?#{}"):
        raise ConfigurationError("authorization_server must be a plain identifier")
    return _build(
        {
            "id": "okta",
            "display_name": "Okta",
            "issuer": base,
            "authorization_endpoint": f"{api}/authorize",
            "token_endpoint": f"{api}/token",
            "revocation_endpoint": f"{api}/revoke",
            "introspection_endpoint": f"{api}/introspect",
            "userinfo_endpoint": f"{api}/userinfo",
            "jwks_uri": f"{api}/keys",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
        },
        overrides,
        {"domain": domain},
    )


def auth0(
    domain: str | None = None, audience: str | None = None, **overrides: Any
) -> ProviderDescriptor:
    """Auth0. ``domain`` is the tenant host (``acme.eu.auth0.com`` or a custom domain);
    ``audience`` (an API identifier) is sent on authorize and token requests. Note that the
    Auth0 issuer ends with a slash.
    """
    fields: dict[str, Any] = {
        "id": "auth0",
        "display_name": "Auth0",
        "issuer": "https://{domain}/",
        "authorization_endpoint": "https://{domain}/authorize",
        "token_endpoint": "https://{domain}/oauth/token",
        "revocation_endpoint": "https://{domain}/oauth/revoke",
        "userinfo_endpoint": "https://{domain}/userinfo",
        "jwks_uri": "https://{domain}/.well-known/jwks.json",
        "grants": _ALL_GRANTS,
        "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
    }
    if audience:
        fields["authorize_params"] = {"audience": audience}
        fields["token_params"] = {"audience": audience}
    return _build(fields, overrides, {"domain": domain})


def figma(**overrides: Any) -> ProviderDescriptor:
    """Figma. Quirks: HTTP Basic client auth; comma-separated scopes; PKCE unsupported;
    refresh goes to a separate endpoint (``/v1/oauth/refresh``).
    """
    return _build(
        {
            "id": "figma",
            "display_name": "Figma",
            "authorization_endpoint": "https://www.figma.com/oauth",
            "token_endpoint": "https://api.figma.com/v1/oauth/token",
            "refresh_endpoint": "https://api.figma.com/v1/oauth/refresh",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "scope_delimiter": ",",
            "pkce": PkceMode.UNSUPPORTED,
            "allowed_origins": ("https://api.figma.com",),
        },
        overrides,
    )


def strava(**overrides: Any) -> ProviderDescriptor:
    """Strava. Quirks: comma-separated scopes; refresh tokens may change on refresh; the
    response carries the ``athlete`` (kept as metadata) and an absolute ``expires_at``.
    """
    return _build(
        {
            "id": "strava",
            "display_name": "Strava",
            "authorization_endpoint": "https://www.strava.com/oauth/authorize",
            "token_endpoint": "https://www.strava.com/oauth/token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "scope_delimiter": ",",
            "allowed_origins": ("https://www.strava.com",),
        },
        overrides,
    )


def gitlab(host: str | None = "gitlab.com", **overrides: Any) -> ProviderDescriptor:
    """GitLab (gitlab.com or a self-managed ``host``; OpenID Connect).

    Quirks: refresh tokens rotate on every refresh; access tokens last 2 hours.
    """
    return _build(
        {
            "id": "gitlab",
            "display_name": "GitLab",
            "issuer": "https://{host}",
            "authorization_endpoint": "https://{host}/oauth/authorize",
            "token_endpoint": "https://{host}/oauth/token",
            "revocation_endpoint": "https://{host}/oauth/revoke",
            "userinfo_endpoint": "https://{host}/oauth/userinfo",
            "jwks_uri": "https://{host}/oauth/discovery/keys",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "allowed_origins": ("https://{host}",),
        },
        overrides,
        {"host": host},
    )


def discord(**overrides: Any) -> ProviderDescriptor:
    """Discord. Access tokens last about a week; client credentials give the owner's token."""
    return _build(
        {
            "id": "discord",
            "display_name": "Discord",
            "authorization_endpoint": "https://discord.com/oauth2/authorize",
            "token_endpoint": "https://discord.com/api/oauth2/token",
            "revocation_endpoint": "https://discord.com/api/oauth2/token/revoke",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "allowed_origins": ("https://discord.com",),
        },
        overrides,
    )


def spotify(**overrides: Any) -> ProviderDescriptor:
    """Spotify. Refresh responses may omit the refresh token (keep the old one)."""
    return _build(
        {
            "id": "spotify",
            "display_name": "Spotify",
            "authorization_endpoint": "https://accounts.spotify.com/authorize",
            "token_endpoint": "https://accounts.spotify.com/api/token",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "allowed_origins": ("https://api.spotify.com",),
        },
        overrides,
    )


def linkedin(**overrides: Any) -> ProviderDescriptor:
    """LinkedIn (Sign In with LinkedIn using OpenID Connect, and the Marketing APIs).

    Quirks: PKCE is only for native apps, so it is not sent; client credentials go in the
    body; refresh tokens are issued only to approved partner apps.
    """
    return _build(
        {
            "id": "linkedin",
            "display_name": "LinkedIn",
            "issuer": "https://www.linkedin.com/oauth",
            "authorization_endpoint": "https://www.linkedin.com/oauth/v2/authorization",
            "token_endpoint": "https://www.linkedin.com/oauth/v2/accessToken",
            "revocation_endpoint": "https://www.linkedin.com/oauth/v2/revoke",
            "introspection_endpoint": "https://www.linkedin.com/oauth/v2/introspectToken",
            "userinfo_endpoint": "https://api.linkedin.com/v2/userinfo",
            "jwks_uri": "https://www.linkedin.com/oauth/openid/jwks",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "pkce": PkceMode.UNSUPPORTED,
            "allowed_origins": ("https://api.linkedin.com",),
        },
        overrides,
    )


def box(**overrides: Any) -> ProviderDescriptor:
    """Box. Refresh tokens are single-use (rotated on every refresh) and last 60 days."""
    return _build(
        {
            "id": "box",
            "display_name": "Box",
            "authorization_endpoint": "https://account.box.com/api/oauth2/authorize",
            "token_endpoint": "https://api.box.com/oauth2/token",
            "revocation_endpoint": "https://api.box.com/oauth2/revoke",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "allowed_origins": ("https://api.box.com", "https://upload.box.com"),
        },
        overrides,
    )


def linear(**overrides: Any) -> ProviderDescriptor:
    """Linear. Quirks: comma-separated scopes; PKCE is not sent (see PROVIDER_QUIRKS #19)."""
    return _build(
        {
            "id": "linear",
            "display_name": "Linear",
            "authorization_endpoint": "https://linear.app/oauth/authorize",
            "token_endpoint": "https://api.linear.app/oauth/token",
            "revocation_endpoint": "https://api.linear.app/oauth/revoke",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "scope_delimiter": ",",
            "pkce": PkceMode.UNSUPPORTED,
            "allowed_origins": ("https://api.linear.app",),
        },
        overrides,
    )


def reddit(**overrides: Any) -> ProviderDescriptor:
    """Reddit. Quirks: HTTP Basic only; ``duration=permanent`` for a refresh token; API calls
    go to ``oauth.reddit.com`` and need a descriptive ``User-Agent``.
    """
    return _build(
        {
            "id": "reddit",
            "display_name": "Reddit",
            "authorization_endpoint": "https://www.reddit.com/api/v1/authorize",
            "token_endpoint": "https://www.reddit.com/api/v1/access_token",
            "revocation_endpoint": "https://www.reddit.com/api/v1/revoke_token",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "authorize_params": {"duration": "permanent"},
            "allowed_origins": ("https://oauth.reddit.com",),
        },
        overrides,
    )


def pipedrive(**overrides: Any) -> ProviderDescriptor:
    """Pipedrive. Quirks: HTTP Basic; PKCE not sent; the response carries ``api_domain``
    (the company's API host, kept as metadata), so ``allowed_origins`` is left to you.
    """
    return _build(
        {
            "id": "pipedrive",
            "display_name": "Pipedrive",
            "authorization_endpoint": "https://oauth.pipedrive.com/oauth/authorize",
            "token_endpoint": "https://oauth.pipedrive.com/oauth/token",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
            "pkce": PkceMode.UNSUPPORTED,
        },
        overrides,
    )


def asana(**overrides: Any) -> ProviderDescriptor:
    """Asana. Access tokens last one hour; refresh tokens do not rotate."""
    return _build(
        {
            "id": "asana",
            "display_name": "Asana",
            "authorization_endpoint": "https://app.asana.com/-/oauth_authorize",
            "token_endpoint": "https://app.asana.com/-/oauth_token",
            "revocation_endpoint": "https://app.asana.com/-/oauth_revoke",
            "grants": _CODE_AND_REFRESH,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_POST,
            "allowed_origins": ("https://app.asana.com",),
        },
        overrides,
    )


def keycloak(
    host: str | None = None, realm: str | None = None, **overrides: Any
) -> ProviderDescriptor:
    """Keycloak (``https://{host}/realms/{realm}``; OpenID Connect).

    Refresh responses carry ``refresh_expires_in`` (parsed as the refresh-token expiry).
    ``allowed_origins`` is left to you (your resource servers).
    """
    base = "https://{host}/realms/{realm}"
    oidc = base + "/protocol/openid-connect"
    return _build(
        {
            "id": "keycloak",
            "display_name": "Keycloak",
            "issuer": base,
            "authorization_endpoint": f"{oidc}/auth",
            "token_endpoint": f"{oidc}/token",
            "revocation_endpoint": f"{oidc}/revoke",
            "introspection_endpoint": f"{oidc}/token/introspect",
            "userinfo_endpoint": f"{oidc}/userinfo",
            "jwks_uri": f"{oidc}/certs",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
        },
        overrides,
        {"host": host, "realm": realm},
    )


def cognito(
    domain: str | None = None,
    region: str | None = None,
    user_pool_id: str | None = None,
    **overrides: Any,
) -> ProviderDescriptor:
    """Amazon Cognito user pools.

    ``domain`` is the pool's hosted domain (``acme.auth.eu-west-1.amazoncognito.com`` or a
    custom domain); ``region`` and ``user_pool_id`` form the issuer
    (``https://cognito-idp.{region}.amazonaws.com/{user_pool_id}``) and its JWKS.
    """
    issuer = "https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"
    return _build(
        {
            "id": "cognito",
            "display_name": "Amazon Cognito",
            "issuer": issuer,
            "authorization_endpoint": "https://{domain}/oauth2/authorize",
            "token_endpoint": "https://{domain}/oauth2/token",
            "revocation_endpoint": "https://{domain}/oauth2/revoke",
            "userinfo_endpoint": "https://{domain}/oauth2/userInfo",
            "jwks_uri": issuer + "/.well-known/jwks.json",
            "grants": _ALL_GRANTS,
            "client_auth_method": ClientAuthMethod.CLIENT_SECRET_BASIC,
        },
        overrides,
        {"domain": domain, "region": region, "user_pool_id": user_pool_id},
    )


PRESETS: Mapping[str, Callable[..., ProviderDescriptor]] = MappingProxyType(
    {
        "asana": asana,
        "atlassian": atlassian,
        "auth0": auth0,
        "box": box,
        "cognito": cognito,
        "discord": discord,
        "dropbox": dropbox,
        "figma": figma,
        "github": github,
        "gitlab": gitlab,
        "google": google,
        "hubspot": hubspot,
        "keycloak": keycloak,
        "linear": linear,
        "linkedin": linkedin,
        "microsoft": microsoft,
        "notion": notion,
        "okta": okta,
        "pipedrive": pipedrive,
        "quickbooks": quickbooks,
        "reddit": reddit,
        "salesforce": salesforce,
        "shopify": shopify,
        "slack": slack,
        "spotify": spotify,
        "strava": strava,
        "twitch": twitch,
        "x": x,
        "xero": xero,
        "zendesk": zendesk,
        "zoho": zoho,
    }
)
_ALIASES: Mapping[str, str] = {
    "twitter": "x",
    "entra": "microsoft",
    "azure": "microsoft",
    "intuit": "quickbooks",
    "jira": "atlassian",
}


def preset(name: str, **kwargs: Any) -> ProviderDescriptor:
    """The preset called ``name`` (case-insensitive; ``twitter``, ``entra``... are aliases)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    factory = PRESETS.get(key)
    if factory is None:
        raise ConfigurationError(
            f"no preset named {name!r}; available: {', '.join(sorted(PRESETS))}"
        )
    return factory(**kwargs)
