"""Revocation that does not succeed keeps the token: a redirect is never a success, and a 503
or a network error leaves the grant in the store for a later retry (SECURITY C7, D4)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _fakes import FakeClock, login

from oauth2_broker_mw import Broker, ProviderError, TransientProviderError
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


async def test_a_503_keeps_the_grant_for_a_retry_async(
    broker: Broker, provider: MockProvider
) -> None:
    record = login(broker, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503, retry_after=5)
    with pytest.raises(TransientProviderError) as info:
        await broker.arevoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert info.value.retry_after == 5
    assert broker.store.get(record.key) is not None
    assert await broker.arevoke(tenant=TENANT, principal=USER, scopes=SCOPES)
