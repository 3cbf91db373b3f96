"""Discovery against MockProvider's real metadata documents, sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from oauth2_broker_mw import Broker
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import discover
from oauth2_broker_mw.discovery import adiscover
from oauth2_broker_mw.testing.mock_provider import MockProvider


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Any:
    def go(issuer: str, mp: MockProvider, **kwargs: Any) -> Any:
        if request.param == "sync":
            return discover(issuer, http_client=mp.client(), **kwargs)
        return asyncio.run(adiscover(issuer, http_client=mp.async_client(), **kwargs))

    return go


def test_discovered_descriptor_drives_a_login(run: Any) -> None:
    mp = MockProvider(send_iss=True)
    descriptor = run(mp.issuer, mp, id="mock")
    assert descriptor.issuer == mp.issuer
    assert descriptor.token_endpoint == mp.token_endpoint
    assert descriptor.jwks_uri == mp.jwks_uri
    assert descriptor.authorization_response_iss_parameter_supported
    broker = Broker(
        descriptor, client_id="test-client", client_secret="test-secret", http_client=mp.client()
    )
    assert broker.service_lease(tenant="acme", scopes=["x"]).access_token


def test_issuer_mismatch_is_refused(run: Any) -> None:
    """SECURITY A10: the document must name exactly the issuer we asked about."""
    mp = MockProvider(issuer="https://mock-idp.test")
    with pytest.raises(ConfigurationError):
        run("https://mock-idp.test/", mp, id="mock")


def test_overrides_apply(run: Any) -> None:
    mp = MockProvider()
    descriptor = run(mp.issuer, mp, id="mock", scope_on_refresh=True)
    assert descriptor.scope_on_refresh is True


def test_plain_http_issuer_outside_loopback_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        discover("http://idp.example", id="x")
