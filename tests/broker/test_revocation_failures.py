"""Revocation that does not succeed: a redirect is never a success and keeps the token
(SECURITY C7); a 503 forgets the grant locally and queues the revocation in the store for a
later retry (SECURITY D4; the queue itself: test_revocation_queue.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _fakes import FakeClock
from _fakes import login

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import ProviderError
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER, SCOPES = "acme", "alice", ["openid"]


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


@pytest.fixture
def broker(provider: MockProvider, clock: FakeClock) -> Iterator[Broker]:
    b = Broker(
        provider.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="test-client",
        client_secret="test-secret",
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        clock=clock,
    )
    yield b
    b.close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_from_the_revocation_endpoint_is_not_success_and_keeps_the_token(
    broker: Broker, provider: MockProvider, status: int
) -> None:
    record = login(broker, provider, scopes=SCOPES)
    provider.faults.add(
        "revoke", "redirect", status=status, location="https://elsewhere.example/revoke"
    )
    with pytest.raises(ProviderError) as info:
        broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert info.value.error == "unexpected_redirect"
    assert info.value.status_code == status
    assert "revocation_endpoint" in str(info.value)
    assert record.refresh_token.get_secret_value() not in str(info.value)
    stored = broker.store.get(record.key)
    assert stored is not None and stored.refresh_token == record.refresh_token
    refresh_info = provider.token_info(record.refresh_token.get_secret_value())
    assert refresh_info is not None and refresh_info["active"] is True  # never revoked
    # once the provider behaves, the same call revokes
    assert broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    refresh_info = provider.token_info(record.refresh_token.get_secret_value())
    assert refresh_info is not None and refresh_info["active"] is False


async def test_a_503_forgets_the_grant_and_queues_the_revocation_async(
    broker: Broker, provider: MockProvider, clock: FakeClock
) -> None:
    record = login(broker, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503, retry_after=5)
    assert await broker.arevoke(tenant=TENANT, principal=USER, scopes=SCOPES) is True
    assert broker.store.get(record.key) is None  # the user logged out: nothing to serve
    with pytest.raises(AuthorizationRequired):
        await broker.alease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert not await broker.arevoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    clock.advance(30)  # the first back-off (longer than the Retry-After of 5 s)
    drained = await broker.adrain_revocations()
    assert drained.delivered == 1
    refresh_info = provider.token_info(record.refresh_token.get_secret_value())
    assert refresh_info is not None and refresh_info["active"] is False
