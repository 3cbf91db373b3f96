"""J6: the application's own (client-credentials) token never stands in for a user.

Every path by which a user's grant can be gone (revoke, logout on another device, a corrupt
row, a scope set never authorized, a grant the provider killed) ends in
``AuthorizationRequired``; the resource server never sees the app's identity for a user.
The app's own identity comes only from ``service_lease`` / ``BrokerAuth.for_service``.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakes import FakeClock

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import BrokerAuth
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import CorruptRecord
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER, SCOPES = "acme", "alice", ["openid", "email"]
Call = Callable[..., Any]


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


def broker_for(mp: MockProvider, clock: FakeClock, **kwargs: Any) -> Broker:
    """A broker on the mock descriptor, which offers authorization_code AND client_credentials."""
    kwargs.setdefault("store", MemoryStore())
    return Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        async_http_client=mp.async_client(),
        clock=clock,
        **kwargs,
    )


def login(broker: Broker, mp: MockProvider, call: Call, scopes: list[str] = SCOPES) -> Any:
    request = call(
        broker,
        "start_authorization",
        tenant=TENANT,
        principal=USER,
        scopes=scopes,
        redirect_uri="https://app.example/callback",
    )
    location = mp.client().get(request.url).headers["location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    return call(
        broker, "exchange_code", state=query["state"], code=query["code"], iss=query.get("iss")
    )


def resource_sees(mp: MockProvider, auth: BrokerAuth) -> str:
    """Who the resource server sees behind the token ``auth`` signs with."""
    with mp.client(auth=auth) as client:
        response = client.get(mp.resource_url)
    assert response.status_code == 200, response.text
    return str(response.json()["sub"])


def assert_no_app_token(broker: Broker, mp: MockProvider, call: Call, scopes: list[str]) -> None:
    before = mp.counters["token:client_credentials"]
    with pytest.raises(AuthorizationRequired) as info:
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=scopes)
    assert "log in" in str(info.value)
    assert mp.counters["token:client_credentials"] == before
    key = broker.key(tenant=TENANT, principal=USER, scopes=scopes)
    try:
        row = broker.store.get(key)
    except CorruptRecord:
        row = None
    assert row is None or row.grant != "client_credentials"
    # Through the signer too: the request never reaches the resource server.
    auth = BrokerAuth(broker, tenant=TENANT, principal=USER, scopes=scopes)
    resource_calls = mp.counters["resource"]
    with pytest.raises(AuthorizationRequired), mp.client(auth=auth) as client:
        client.get(mp.resource_url)
    assert mp.counters["resource"] == resource_calls


def test_revoke_leaves_the_user_logged_out_until_they_log_in(
    provider: MockProvider, clock: FakeClock, call: Call
) -> None:
    """J6: after revoke() the user key is AuthorizationRequired, never the app's token."""
    broker = broker_for(provider, clock)
    login(broker, provider, call)
    assert call(broker, "revoke", tenant=TENANT, principal=USER, scopes=SCOPES)
    for _ in range(2):  # and it stays so
        assert_no_app_token(broker, provider, call, SCOPES)
    login(broker, provider, call)
    auth = BrokerAuth(broker, tenant=TENANT, principal=USER, scopes=SCOPES)
    assert resource_sees(provider, auth) == "user-1"


def test_logout_on_another_device(provider: MockProvider, clock: FakeClock, tmp_path: Path) -> None:
    """J6: worker 2 revokes (logout elsewhere); worker 1, sharing the store, gets no app token."""
    path = str(tmp_path / "tokens.db")
    worker1 = broker_for(provider, clock, store=SQLiteStore(path))
    worker2 = broker_for(provider, clock, store=SQLiteStore(path))
    login(worker1, provider, lambda o, n, **k: getattr(o, n)(**k))
    worker1.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert worker2.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    clock.advance(4000)  # worker 1's in-process copy expires
    with pytest.raises(AuthorizationRequired):
        worker1.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert provider.counters["token:client_credentials"] == 0


def test_corrupt_row_is_authorization_required(
    provider: MockProvider, clock: FakeClock, tmp_path: Path, call: Call
) -> None:
    """J6: an unreadable row is absent, and absent means log in, not the app's token."""
    path = tmp_path / "tokens.db"
    login(broker_for(provider, clock, store=SQLiteStore(str(path))), provider, call)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tokens SET data = '{not json'")
    assert_no_app_token(
        broker_for(provider, clock, store=SQLiteStore(str(path))), provider, call, SCOPES
    )


def test_unknown_scope_set_is_authorization_required(
    provider: MockProvider, clock: FakeClock, call: Call
) -> None:
    """J6: a scope set the user never authorized is a new login, not the app's token."""
    broker = broker_for(provider, clock)
    login(broker, provider, call)
    assert_no_app_token(broker, provider, call, ["calendar.read"])


def test_provider_killed_grant_stays_a_tombstone(
    provider: MockProvider, clock: FakeClock, call: Call
) -> None:
    """J6: a refresh answered invalid_grant leaves a tombstone until the user logs in again."""
    broker = broker_for(provider, clock)
    record = login(broker, provider, call)
    provider.revoke_all(subject="user-1")
    clock.advance(4000)
    with pytest.raises(AuthorizationRequired):
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    dead = broker.store.get(record.key)
    assert dead is not None and dead.revoked_at is not None and dead.grant == "authorization_code"
    assert_no_app_token(broker, provider, call, SCOPES)


def test_the_app_identity_is_explicit(provider: MockProvider, clock: FakeClock, call: Call) -> None:
    """J6: service_lease / BrokerAuth.for_service is the one way to the app's own token."""
    broker = broker_for(provider, clock)
    login(broker, provider, call)
    service = call(broker, "service_lease", scopes=["email.read"])
    assert service.key.principal == "@app" and service.key.tenant == "default"
    assert resource_sees(provider, BrokerAuth.for_service(broker, ["email.read"])) != "user-1"
    assert BrokerAuth(broker, scopes=["email.read"]).key == service.key  # the documented default
    user = BrokerAuth(broker, tenant=TENANT, principal=USER, scopes=SCOPES)
    assert resource_sees(provider, user) == "user-1"
    with pytest.raises(ConfigurationError, match="reserved"):
        broker.start_authorization(
            tenant=TENANT, principal="@app", redirect_uri="https://app.example/callback"
        )


def test_a_descriptor_without_users_serves_any_principal(
    provider: MockProvider, clock: FakeClock
) -> None:
    """With client credentials as the only grant there is no user to stand in for."""
    broker = Broker(
        provider.descriptor(grants=["client_credentials"]),
        client_id="test-client",
        client_secret="test-secret",
        http_client=provider.client(),
        clock=clock,
    )
    assert broker.lease(tenant=TENANT, principal="billing-job", scopes=["x"]).access_token
    assert resource_sees(provider, BrokerAuth.for_service(broker, ["x"]))
