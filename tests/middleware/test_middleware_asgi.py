"""ASGI-only behaviour of BrokerMiddleware: scopes it must not touch, raw ASGI messages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.testing.mock_provider import MockProvider

BASE = "http://127.0.0.1"
SECRET = "asgi-test-secret-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"


@pytest.fixture
def broker() -> Iterator[Broker]:
    mp = MockProvider()
    yield Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    mp.close()


def _wrap(app: Any, broker: Broker, **options: Any) -> BrokerMiddleware:
    return BrokerMiddleware(
        app,
        brokers={"acme": broker},
        scopes={"acme": ["openid"]},
        secret_key=SECRET,
        base_url=BASE,
        **options,
    )


async def test_non_http_scopes_pass_through_untouched(broker: Broker) -> None:
    seen: list[tuple[dict[str, Any], Any, Any]] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((dict(scope), receive, send))

    # check_stores=False: the lifespan untouched too (with the check, see test_startup_check)
    middleware = _wrap(inner, broker, check_stores=False)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing may be sent on the app's behalf")

    for scope in (
        {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
        {"type": "websocket", "path": "/oauth2/acme/login", "headers": [], "query_string": b""},
    ):
        await middleware(scope, receive, send)
        passed, passed_receive, passed_send = seen[-1]
        assert passed == scope
        assert "oauth2_broker" not in passed
        assert passed_receive is receive
        assert passed_send is send


async def test_the_startup_check_hands_the_app_its_startup_message(broker: Broker) -> None:
    """With the store check (the default), the app still gets the startup message first."""
    seen: list[Any] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())

    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing may be sent on the app's behalf")

    await _wrap(inner, broker)({"type": "lifespan", "state": {}}, receive, send)
    assert seen == [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]


def test_lifespan_and_websocket_work_through_the_middleware(broker: Broker) -> None:
    started: list[bool] = []

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(str("oauth2_broker" in websocket.scope))
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(True)
        yield

    app = Starlette(routes=[WebSocketRoute("/oauth2/ws", echo)], lifespan=lifespan)
    app.add_middleware(BrokerMiddleware, brokers={"acme": broker}, secret_key=SECRET, base_url=BASE)
    with TestClient(app, base_url=BASE) as client:
        assert started == [True]
        with client.websocket_connect("/oauth2/ws") as ws:
            assert ws.receive_text() == "False"


def test_authorization_required_after_the_response_started_is_not_swallowed(
    broker: Broker,
) -> None:
    async def stream(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b"partial"
            raise AuthorizationRequired(tenant="default", principal="p", provider="mock", scopes=[])

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/stream", stream)])
    app.add_middleware(BrokerMiddleware, brokers={"acme": broker}, secret_key=SECRET, base_url=BASE)
    client = TestClient(app, base_url=BASE)
    with pytest.raises(AuthorizationRequired):
        client.get("/stream")


def test_pass_through_requests_are_unchanged(broker: Broker) -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi", headers={"x-app": "1"})

    app = Starlette(
        routes=[Route("/hello", hello), Route("/oauth2/other", hello, methods=["GET", "POST"])]
    )
    app.add_middleware(BrokerMiddleware, brokers={"acme": broker}, secret_key=SECRET, base_url=BASE)
    client = TestClient(app, base_url=BASE)
    response = client.get("/hello")
    assert (response.status_code, response.text, response.headers["x-app"]) == (200, "hi", "1")
    assert "set-cookie" not in response.headers
    assert client.post("/oauth2/other", content=b"x").text == "hi"


def test_head_on_login_sends_no_body(broker: Broker) -> None:
    client = TestClient(_wrap(PlainTextResponse("app"), broker), base_url=BASE)
    response = client.head("/oauth2/acme/login", follow_redirects=False)
    assert response.status_code == 302
    assert response.content == b""


def test_oversized_logout_body_is_ignored(broker: Broker) -> None:
    client = TestClient(_wrap(PlainTextResponse("app"), broker), base_url=BASE)
    big = {"csrf_token": "x", "pad": "y" * 70_000}
    response = client.post("/oauth2/logout", data=big, follow_redirects=False)
    assert response.status_code == 403
