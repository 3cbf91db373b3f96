"""The one repr rule of the core's records (``redacted_repr``): no secret ever shows."""

from __future__ import annotations

from oauth2_broker_mw import presets
from oauth2_broker_mw._core.flows import AuthorizationRequest
from oauth2_broker_mw._core.model import Lease
from oauth2_broker_mw._core.model import PendingAuthorization
from oauth2_broker_mw._core.model import PrincipalId
from oauth2_broker_mw._core.model import ProviderId
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.oauth import TokenResponse
from oauth2_broker_mw._core.provider import ClientConfig
from oauth2_broker_mw.registry import Registration

SECRETS = ("at-value", "rt-value", "idt-value", "st-value", "pkce-value", "cs-value", "meta-v")
KEY = StoreKey.build("acme", "alice", "idp", ["read"])


def test_each_record_shows_its_fields_with_every_secret_redacted() -> None:
    record = TokenRecord(
        key=KEY,
        access_token=Secret("at-value"),
        refresh_token=Secret("rt-value"),
        id_token=Secret("idt-value"),
        scopes=ScopeSet.of("read write"),
        metadata={"team": "meta-v"},
    )
    shown = [
        repr(record),
        repr(Lease.from_record(record)),
        repr(
            PendingAuthorization(
                state=Secret("st-value"),
                tenant=TenantId("acme"),
                principal=PrincipalId("alice"),
                provider=ProviderId("idp"),
                scopes=ScopeSet.of("read"),
                redirect_uri="https://app.example/cb",
                code_verifier=Secret("pkce-value"),
                nonce=None,
                created_at=1.0,
                expires_at=2.0,
                extra={"x": "meta-v"},
            )
        ),
        repr(ClientConfig.create("app", "cs-value", private_key={"d": "cs-value"})),
        repr(TokenResponse(Secret("at-value"), "Bearer", Secret("rt-value"), None, 1, None, None)),
        repr(
            AuthorizationRequest(
                url="https://idp.example/authorize?state=st-value",
                state="st-value",
                expires_at=2.0,
                tenant=TenantId("acme"),
                principal=None,
                provider="idp",
                issuer=None,
                scopes=ScopeSet.of("read"),
            )
        ),
        repr(Registration("github", presets.github(), "app", "cs-value", private_key="cs-value")),
    ]
    for text in shown:
        assert not [s for s in SECRETS if s in text], text
    lease = shown[1]
    assert lease == (
        f"Lease(access_token=Secret('**********'), token_type='Bearer', expires_at=None, "
        f"scopes=('read', 'write'), metadata_keys=['team'], key={KEY!r}, version=0)"
    )
    assert "refresh_token=Secret('**********'), id_token=Secret('**********')" in shown[0]
    assert "extra_keys=['x']" in shown[2]
    assert shown[3] == (
        "ClientConfig(client_id='app', client_secret=<set>, private_key=<set>, private_key_id=None)"
    )
    assert shown[5] == (
        "AuthorizationRequest(expires_at=2.0, tenant='acme', principal=None, provider='idp', "
        "issuer=None, scopes=('read',))"
    )
    assert shown[6].startswith(
        "Registration(provider='github', client_id='app', client_secret=<set>, private_key=<set>, "
    )
