"""Error reporters that record traceback locals never see a raw authorization code or state.

Each test makes the login fail inside our code, then walks every frame of the traceback that
belongs to oauth2_broker_mw and looks for the raw values in its locals (and their reprs).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

from oauth2_broker_mw import Broker
from oauth2_broker_mw._core.errors import BrokerError
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER = "acme", "user-1"


@pytest.fixture
def provider() -> Iterator[MockProvider]:
    with MockProvider() as p:
        yield p


def _broker(provider: MockProvider) -> Broker:
    return Broker(
        provider.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=provider.client(),
        async_http_client=provider.async_client(),
    )


def _callback(broker: Broker, provider: MockProvider) -> tuple[str, str]:
    request = broker.start_authorization(
        tenant=TENANT,
        principal=USER,
        scopes=["openid", "email"],
        redirect_uri="https://app.example/callback",
    )
    response = provider.client().get(request.url)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))
    return query["state"], query["code"]


def _our_frames(tb: TracebackType | None) -> Iterator[Any]:
    while tb is not None:
        if "/oauth2_broker_mw/" in tb.tb_frame.f_code.co_filename:
            yield tb.tb_frame
        tb = tb.tb_next


def _leaks(error: BaseException, *raw: str) -> list[str]:
    found: list[str] = []
    seen_frames = 0
    chain: BaseException | None = error
    while chain is not None:
        for frame in _our_frames(chain.__traceback__):
            seen_frames += 1
            for name, value in frame.f_locals.items():
                values = [value]
                if isinstance(value, dict | list | tuple | set | frozenset):
                    values += list(value.values() if isinstance(value, dict) else value)
                for v in values:
                    text = v.decode("latin-1") if isinstance(v, bytes) else repr(v)
                    if isinstance(v, str):
                        text = v
                    for secret in raw:
                        if secret in text:
                            found.append(f"{frame.f_code.co_name}:{name}")
        chain = chain.__context__
    assert seen_frames >= 2, "the walk must see the broker's and the flow's frames"
    return found


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_token_request_leaves_no_raw_code_or_state_in_locals(
    provider: MockProvider, mode: str
) -> None:
    broker = _broker(provider)
    state, code = _callback(broker, provider)
    provider.faults.add("token", status=503, error="temporarily_unavailable")
    with pytest.raises(BrokerError) as caught:
        if mode == "sync":
            broker.exchange_code(state=state, code=code)
        else:
            asyncio.run(broker.aexchange_code(state=state, code=code))
    assert _leaks(caught.value, state, code) == []
    broker.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unknown_state_leaves_no_raw_code_or_state_in_locals(
    provider: MockProvider, mode: str
) -> None:
    broker = _broker(provider)
    state, code = "unknown-state-" + "s" * 30, "some-code-" + "c" * 30
    with pytest.raises(BrokerError) as caught:
        if mode == "sync":
            broker.exchange_code(state=state, code=code)
        else:
            asyncio.run(broker.aexchange_code(state=state, code=code))
    assert _leaks(caught.value, state, code) == []
    broker.close()
