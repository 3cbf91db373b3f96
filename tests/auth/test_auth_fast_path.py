"""BrokerAuth's per-request fast path decides as its full pre-checks do (SECURITY F1).

The fast path reads the raw header list and the parsed query; these tests pin that it signs,
keeps and refuses exactly the requests the full checks would: a request signed before and sent
again is signed again, a second Authorization header is the caller's and is kept, and a token
in the URL is refused, for httpx, httpx2 and requests alike.
"""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest
import requests

from oauth2_broker_mw._core.errors import UnsafeRequest
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.broker import Broker

URL = "https://api.fast.test/v1/items?page=2"
TOKENS = iter(f"fast-access-token-{n}" for n in range(1000))


def _token_endpoint(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200, json={"access_token": next(TOKENS), "token_type": "Bearer", "expires_in": 3600}
    )


@pytest.fixture
def auth() -> BrokerAuth:
    descriptor = ProviderDescriptor(
        id="fast-idp", token_endpoint="https://idp.fast.test/token", grants=["client_credentials"]
    )
    broker = Broker(
        descriptor,
        client_id="fast",
        client_secret="fast-secret",
        http_client=httpx2.Client(transport=httpx2.MockTransport(_token_endpoint)),
    )
    return BrokerAuth(broker, tenant="fast", principal="svc", scopes=["read"])


def _sign(auth: BrokerAuth, request: Any) -> Any:
    if isinstance(request, requests.PreparedRequest):
        return auth(request)
    flow = auth.sync_auth_flow(request)
    sent = next(flow)
    flow.close()
    return sent


def _authorizations(request: Any) -> list[str]:
    if isinstance(request, requests.PreparedRequest):
        value = request.headers.get("Authorization")
        return [] if value is None else [value]
    return list(request.headers.get_list("authorization"))


def _new(kind: str, url: str = URL, headers: Any = None) -> Any:
    if kind == "requests":
        return requests.Request("GET", url, headers=headers).prepare()
    module = httpx if kind == "httpx" else httpx2
    return module.Request("GET", url, headers=headers)


KINDS = ["httpx", "httpx2", "requests"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_signed_before_and_sent_again_is_signed_again(
    auth: BrokerAuth, kind: str
) -> None:
    request = _new(kind)
    first = _authorizations(_sign(auth, request))
    assert len(first) == 1 and first[0].startswith("Bearer fast-access-token-")
    again = _sign(auth, request)
    assert _authorizations(again) == first  # our own header: renewed, not kept as the caller's
    if kind != "requests":
        # a fresh lease: the request signed with the old one gets the new token
        broker = auth._broker
        stale = broker.cached_lease(auth.key)
        assert stale is not None
        broker.replace_lease(stale)
        renewed = _authorizations(_sign(auth, request))
        assert len(renewed) == 1 and renewed != first


@pytest.mark.parametrize("kind", ["httpx", "httpx2"])
def test_a_second_authorization_header_is_the_callers_and_nothing_is_signed(
    auth: BrokerAuth, kind: str
) -> None:
    ours = _authorizations(_sign(auth, _new(kind)))[0]
    request = _new(kind, headers=[("Authorization", ours), ("Authorization", "Basic dTpw")])
    assert _authorizations(_sign(auth, request)) == [ours, "Basic dTpw"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_callers_own_header_is_kept(auth: BrokerAuth, kind: str) -> None:
    request = _new(kind, headers={"Authorization": "Basic dTpw"})
    assert _authorizations(_sign(auth, request)) == ["Basic dTpw"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_in_the_url_is_refused_on_the_fast_path(auth: BrokerAuth, kind: str) -> None:
    with pytest.raises(UnsafeRequest):
        _sign(auth, _new(kind, url="https://api.fast.test/v1?page=2&access_token=leaked"))
    # a parameter that only contains the name is signed
    signed = _sign(auth, _new(kind, url="https://api.fast.test/v1?my_access_token_hint=1"))
    assert len(_authorizations(signed)) == 1


@pytest.mark.parametrize("kind", ["httpx", "httpx2"])
def test_auth_flow_is_the_sync_flow(auth: BrokerAuth, kind: str) -> None:
    # httpx's Auth.auth_flow, for callers that drive it by hand: the same generator function.
    assert BrokerAuth.auth_flow is BrokerAuth.sync_auth_flow
    flow = auth.auth_flow(_new(kind))
    sent = next(flow)
    flow.close()
    assert _authorizations(sent)[0].startswith("Bearer fast-access-token-")
