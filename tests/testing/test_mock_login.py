"""``mock_provider.login(client, user=...)``: testing your own app's login takes two lines
(issue 12, item 9).

Each test builds an app as a user would (Starlette, FastAPI, Flask, Django under
``BrokerWSGIMiddleware``), logs its test client in with one call, and then calls a route that
needs the session. Failed on the main of 2026-12-06: there was no ``login`` (about 15 lines of
redirect-passing by hand).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from oauth2_broker_mw import Broker
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
from oauth2_broker_mw.testing import MockProvider

BASE = "http://127.0.0.1"
KEY = "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa"


def _options(mp: MockProvider) -> dict[str, Any]:
    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    return {
        "brokers": {"mock": broker},
        "scopes": {"mock": ["openid", "email"]},
        "secret_key": KEY,
        "base_url": BASE,
    }


def _me(ctx: Any) -> dict[str, Any]:
    lease = ctx.lease("mock")
    return {"principal": ctx.principal, "scopes": sorted(lease.scopes)}


def _starlette(mp: MockProvider) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def me(request: Request) -> JSONResponse:
        ctx = request.state.oauth2_broker
        lease = await ctx.alease("mock")
        return JSONResponse({"principal": ctx.principal, "scopes": sorted(lease.scopes)})

    app = Starlette(routes=[Route("/me", me)])
    app.add_middleware(BrokerMiddleware, **_options(mp))
    return app


def _flask(mp: MockProvider) -> Any:
    from flask import Flask
    from flask import jsonify
    from flask import request

    app = Flask("obm_test_login")

    @app.get("/me")
    def me() -> Any:
        return jsonify(_me(request.environ["oauth2_broker"]))

    app.wsgi_app = BrokerWSGIMiddleware(app.wsgi_app, **_options(mp))  # type: ignore[method-assign]
    return app


def _django(mp: MockProvider) -> Any:
    import django
    from django.conf import settings

    if "obm_test_login_urls" not in sys.modules:
        from django.http import JsonResponse
        from django.urls import path

        urls = types.ModuleType("obm_test_login_urls")
        urls.urlpatterns = [  # type: ignore[attr-defined]
            path("me", lambda request: JsonResponse(_me(request.META["oauth2_broker"])))
        ]
        sys.modules["obm_test_login_urls"] = urls
    if not settings.configured:
        settings.configure(
            SECRET_KEY="django-test-" + "x" * 40,
            ROOT_URLCONF="obm_test_login_urls",
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.urls import clear_url_caches

    settings.ROOT_URLCONF = "obm_test_login_urls"
    clear_url_caches()
    return BrokerWSGIMiddleware(get_wsgi_application(), **_options(mp))


def test_starlette_testclient(mock_provider: MockProvider, mock_login: Callable[..., Any]) -> None:
    from starlette.testclient import TestClient

    with TestClient(_starlette(mock_provider), base_url=BASE) as client:
        assert client.get("/me", headers={"accept": "application/json"}).status_code == 401
        mock_login(client, user="alice")  # the fixture: mock_provider.login
        assert client.get("/me").json() == {"principal": "alice", "scopes": ["email", "openid"]}


def test_flask_test_client(mock_provider: MockProvider) -> None:
    client = _flask(mock_provider).test_client()
    done = mock_provider.login(client, user="bob")
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert client.get("/me").get_json()["principal"] == "bob"


def test_django_over_a_wsgi_transport(mock_provider: MockProvider) -> None:
    from django.conf import settings
    from django.urls import clear_url_caches

    previous = getattr(settings, "ROOT_URLCONF", None) if settings.configured else None
    try:
        transport = httpx2.WSGITransport(app=_django(mock_provider))
        with httpx2.Client(transport=transport, base_url=BASE) as client:
            mock_provider.login(client, user="carol", return_to="/me")
            assert client.get("/me").json()["principal"] == "carol"
    finally:
        if previous is not None:  # other test modules configured Django first
            settings.ROOT_URLCONF = previous
            clear_url_caches()


async def test_async_client_over_asgi(mock_provider: MockProvider) -> None:
    transport = httpx2.ASGITransport(app=_starlette(mock_provider))
    async with httpx2.AsyncClient(transport=transport, base_url=BASE) as client:
        await mock_provider.alogin(client, user="dave")
        assert (await client.get("/me")).json()["principal"] == "dave"


def test_the_login_form_is_filled_in_when_the_provider_asks(mock_provider: MockProvider) -> None:
    mock_provider.auto_approve = False
    mock_provider.users = {"erin": "pw-erin"}
    client = _flask(mock_provider).test_client()
    mock_provider.login(client, user="erin")
    assert client.get("/me").get_json()["principal"] == "erin"
    assert mock_provider.counters["authorize:login_failed"] == 0
    with pytest.raises(AssertionError, match="no user 'mallory'"):
        mock_provider.login(client, user="mallory")


def test_a_failed_step_names_the_step_and_the_code(mock_provider: MockProvider) -> None:
    from starlette.testclient import TestClient

    with TestClient(_starlette(mock_provider), base_url=BASE) as client:
        with pytest.raises(AssertionError, match="login route /oauth2/nope/login answered 404"):
            mock_provider.login(client, provider="nope")
        mock_provider.faults.add("token", status=400, error="invalid_grant")
        with pytest.raises(AssertionError, match=r"callback .* answered 400 \(exchange_failed\)"):
            mock_provider.login(client, user="alice")


async def test_a_misspelt_keyword_is_a_type_error_naming_it(mock_provider: MockProvider) -> None:
    # login / alogin take their keywords as ``**options: Unpack[LoginOptions]`` (one list for
    # both); Python still refuses an unknown one, before any request is made.
    with pytest.raises(TypeError, match="unexpected keyword argument 'usr'"):
        mock_provider.login(object(), usr="alice")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'retrun_to'"):
        await mock_provider.alogin(object(), retrun_to="/")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        mock_provider.login(object(), "alice")  # type: ignore[call-arg]
    assert mock_provider.requests == []
