"""``MockProvider.like(name)``: the settings that reproduce a well-known provider's quirks
(numbers from docs/quirks.md).
"""

from __future__ import annotations

from typing import Any

from ._mock_config import MockClient
from ._mock_config import MockQuirks

LIKE_NAMES: tuple[str, ...] = (
    "auth0",
    "entra",
    "figma",
    "github",
    "google",
    "microsoft",
    "notion",
    "okta",
    "paypal",
    "quickbooks",
    "salesforce",
    "slack",
    "slack-user",
    "twitch",
    "twitter",
    "x",
)


_SLACK_ERRORS = {
    "authorization_code:invalid_grant": "invalid_code",
    "refresh_token:invalid_grant": "invalid_refresh_token",
    "invalid_client": "invalid_client_id",
    "unsupported_grant_type": "invalid_grant_type",
}
_GITHUB_ERRORS = {
    "authorization_code:invalid_grant": "bad_verification_code",
    "refresh_token:invalid_grant": "bad_refresh_token",
    "invalid_client": "incorrect_client_credentials",
}


def _like_settings(name: str) -> dict[str, Any]:
    """Constructor arguments that make a MockProvider behave like ``name`` (quirk numbers from
    the project's provider-quirks table)."""
    if name == "github":  # 1, 5: form unless Accept JSON, errors 200, non-expiring tokens
        quirks = MockQuirks.github()
        quirks.error_renames = dict(_GITHUB_ERRORS)
        quirks.scope_delimiter = " "  # GitHub documents spaces on authorize; it echoes commas
        return {
            "quirks": quirks,
            "oidc": False,
            "access_ttl": None,
            "issue_refresh_tokens": False,
        }
    if name == "google":  # 7, 18: no rotation; refresh token only offline, on first consent
        quirks = MockQuirks.google()
        quirks.refresh_token_requires_params = {"access_type": "offline"}
        quirks.refresh_token_first_consent_only = True
        return {"quirks": quirks, "rotation": False}
    if name in ("microsoft", "entra"):  # 9, 18, 22: scope on refresh, offline_access
        quirks = MockQuirks.entra()
        quirks.refresh_token_requires_scope = "offline_access"
        quirks.echo_hidden_scopes = frozenset({"openid", "offline_access"})
        return {
            "quirks": quirks,
            "reuse_detection": False,
            "reuse_interval": 86_400.0,
        }
    if name in ("slack", "slack-user"):  # 2, 4, 19: ok envelope, comma scopes, no PKCE
        quirks = MockQuirks.slack()
        quirks.error_renames = dict(_SLACK_ERRORS)
        if name == "slack":  # a bot token at the top level, token_type "bot"
            quirks.response_shape = "slack_bot"
        else:  # a user token under authed_user, asked for with user_scope
            quirks.token_type = "user"
            quirks.param_renames = {"scope": "user_scope"}
        return {"quirks": quirks, "oidc": False, "pkce": "unsupported", "access_ttl": 43_200}
    if name == "salesforce":  # 5, 7, 11: no expires_in, no rotation, instance_url
        return {"quirks": MockQuirks.salesforce(), "rotation": False}
    if name in ("x", "twitter"):  # 8, 13, 18, 19: rotation, Basic only, PKCE required
        return {
            "quirks": MockQuirks(refresh_token_requires_scope="offline.access"),
            "oidc": False,
            "pkce": "required",
            "access_ttl": 7_200,
            "clients": [MockClient(auth_methods=frozenset({"client_secret_basic"}))],
        }
    if name == "twitch":  # 3: scope echoed as a JSON array
        return {"quirks": MockQuirks(scope_echo="array")}
    if name == "notion":  # 5, 15: JSON request bodies, no expiry
        return {
            "quirks": MockQuirks(token_body_format="json", expires_in="omit"),
            "oidc": False,
            "access_ttl": None,
        }
    if name == "figma":  # 4, 17, 19: comma scopes, /refresh endpoint, no PKCE
        return {
            "quirks": MockQuirks(
                separate_refresh_endpoint=True, scope_delimiter=",", scope_echo="comma"
            ),
            "oidc": False,
            "pkce": "unsupported",
        }
    if name == "quickbooks":  # 12, 23: realmId on the redirect, refresh-token lifetime field
        return {
            "quirks": MockQuirks(
                refresh_expires_in_field="x_refresh_token_expires_in",
                redirect_extra_params={"realmId": "9130350000000000"},
            ),
            "refresh_ttl": 8_726_400,
            "reuse_interval": 86_400.0,
        }
    if name == "paypal":  # 6: expires_in as a string
        return {"quirks": MockQuirks(expires_in="string"), "oidc": False}
    if name == "okta":  # 8: rotation with a 30 s grace period
        return {"reuse_interval": 30.0}
    if name == "auth0":  # 8: rotation with reuse detection
        return {"rotation": True, "reuse_detection": True}
    raise ValueError(f"unknown provider {name!r}; one of {', '.join(LIKE_NAMES)}")
