"""A refresh that fails transiently while the stored token is still valid serves that token
(issue 10: "a refresh that gets a 503 while the current token still has 30 s left raises")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
from _fakes import FakeClock
from _fakes import login

from oauth2_broker_mw import Broker
from oauth2_broker_mw import TransientProviderError
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER, SCOPES = "acme", "alice", ["openid", "email"]
Call = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Call:
    def run(obj: Any, name: str, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(obj, name)(**kwargs)
        return asyncio.run(getattr(obj, "a" + name)(**kwargs))

    return run


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock, access_ttl=3600)
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
        refresh_margin=60.0,
        refresh_jitter=0.0,
    )
    yield b
    b.close()


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 502, "body": "<html>bad gateway"}])
def test_a_transient_failure_inside_the_refresh_window_serves_the_valid_token(
    broker: Broker,
    provider: MockProvider,
    clock: FakeClock,
    call: Call,
    caplog: pytest.LogCaptureFixture,
    fault: dict[str, Any],
) -> None:
    record = login(broker, provider, scopes=SCOPES)
    clock.advance(3600 - 30)  # 30 s left: inside the 60 s refresh window
    provider.faults.add("token", "error", **fault)
    with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw"):
        lease = call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    assert lease.access_token == record.access_token
    assert provider.counters["token:refresh_token"] == 1  # it did try
    assert "serving the stored token, valid for 30 more seconds" in caplog.text
    assert record.access_token.get_secret_value() not in caplog.text
    assert record.refresh_token.get_secret_value() not in caplog.text
    # the store still holds the grant: the next lease after the outage refreshes it
    clock.advance(10)
    renewed = call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    assert renewed.access_token != record.access_token


def test_once_the_token_has_expired_the_failure_is_raised(
    broker: Broker, provider: MockProvider, clock: FakeClock, call: Call
) -> None:
    login(broker, provider, scopes=SCOPES)
    clock.advance(3600 + 1)
    provider.faults.add("token", "error", status=503)
    with pytest.raises(TransientProviderError):
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)


def test_a_forced_refresh_and_a_rejected_token_still_raise(
    broker: Broker, provider: MockProvider, clock: FakeClock, call: Call
) -> None:
    login(broker, provider, scopes=SCOPES)
    clock.advance(3600 - 30)
    provider.faults.add("token", "error", status=503, times=None)  # down until cleared
    with pytest.raises(TransientProviderError):  # refresh() asked for a new token
        call(broker, "refresh", tenant=TENANT, principal=USER, scopes=SCOPES)
    served = call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    with pytest.raises(TransientProviderError):  # the resource server rejected this token
        call(broker, "replace_lease", stale=served)
