"""The middleware security suite, run unchanged over Starlette, FastAPI, Flask and Django.

Every test drives a real :class:`Broker` against an in-process :class:`MockProvider`, through
``BrokerMiddleware`` (Starlette, FastAPI: Starlette's ``TestClient``) or
``BrokerWSGIMiddleware`` (Flask, Django: ``httpx2.WSGITransport``). Each ``browser()`` is a
client with its own cookie jar, so two of them are two browsers (attacker and victim).
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import httpx2
import pytest
from _fakes import FakeClock
from fastapi import Request as FastAPIRequest

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
from oauth2_broker_mw.testing import MockQuirks
from oauth2_broker_mw.testing.mock_provider import MockProvider

BASE = "http://127.0.0.1"
HTTPS_BASE = "https://app.example.test"
SECRET = "test-secret-key-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"
SCOPES = ["openid", "email"]
FRAMEWORKS = ["starlette", "fastapi", "flask", "django"]


def _context_json(ctx: Any) -> dict[str, Any]:
    return {
        "tenant": ctx.tenant,
        "principal": ctx.principal,
        "connections": list(ctx.connections),
        "csrf_token": ctx.csrf_token,
        "login_url": ctx.login_url("acme", "/page"),
    }


def _remote(ctx: Any, mp: MockProvider) -> int:
    """A sync outbound call signed by the context's BrokerAuth."""
    with httpx2.Client(transport=mp.transport(), auth=ctx.auth("acme")) as client:
        return client.get(mp.resource_url).status_code


# -- the four apps ---------------------------------------------------------------------------------
def _starlette_app(options: dict[str, Any], mp: MockProvider) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request: Request) -> JSONResponse:
        ctx = request.state.oauth2_broker
        assert request.scope["oauth2_broker"] is ctx
        return JSONResponse(_context_json(ctx))

    async def api(request: Request) -> JSONResponse:
        lease = await request.state.oauth2_broker.alease("acme")
        return JSONResponse({"scopes": list(lease.scopes)})

    async def boom(request: Request) -> JSONResponse:
        raise AuthorizationRequired(tenant="default", principal="p", provider="mock", scopes=[])

    async def remote(request: Request) -> JSONResponse:
        auth = request.state.oauth2_broker.auth("acme")
        async with httpx2.AsyncClient(transport=mp.async_transport(), auth=auth) as client:
            response = await client.get(mp.resource_url)
        return JSONResponse({"status": response.status_code})

    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/t/{tenant}/whoami", whoami),
            Route("/api/data", api),
            Route("/boom", boom),
            Route("/remote", remote),
        ]
    )
    app.add_middleware(BrokerMiddleware, **options)
    return app


def _fastapi_app(options: dict[str, Any], mp: MockProvider) -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/whoami")
    @app.get("/t/{tenant}/whoami")
    def whoami(request: FastAPIRequest) -> dict[str, Any]:
        return _context_json(request.state.oauth2_broker)

    @app.get("/api/data")
    def api(request: FastAPIRequest) -> dict[str, Any]:  # sync: runs in a thread, uses lease()
        lease = request.state.oauth2_broker.lease("acme")
        return {"scopes": list(lease.scopes)}

    @app.get("/boom")
    async def boom() -> None:
        raise AuthorizationRequired(tenant="default", principal="p", provider="mock", scopes=[])

    @app.get("/remote")
    def remote(request: FastAPIRequest) -> dict[str, Any]:
        return {"status": _remote(request.state.oauth2_broker, mp)}

    app.add_middleware(BrokerMiddleware, **options)
    return app


def _flask_app(options: dict[str, Any], mp: MockProvider) -> Any:
    from flask import Flask
    from flask import jsonify
    from flask import request

    app = Flask("obm_test_flask")

    @app.get("/whoami")
    @app.get("/t/<tenant>/whoami")
    def whoami(tenant: str | None = None) -> Any:
        return jsonify(_context_json(request.environ["oauth2_broker"]))

    @app.get("/api/data")
    def api() -> Any:
        lease = request.environ["oauth2_broker"].lease("acme")
        return jsonify({"scopes": list(lease.scopes)})

    @app.get("/boom")
    def boom() -> Any:
        raise AuthorizationRequired(tenant="default", principal="p", provider="mock", scopes=[])

    @app.get("/remote")
    def remote() -> Any:
        return jsonify({"status": _remote(request.environ["oauth2_broker"], mp)})

    @app.errorhandler(AuthorizationRequired)
    def login_needed(exc: AuthorizationRequired) -> Any:
        # the documented recipe: hand the exception to the middleware, which answers
        request.environ["oauth2_broker"].authorization_required = exc
        return "login needed", 500

    app.wsgi_app = BrokerWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def _django_app(options: dict[str, Any], mp: MockProvider) -> Any:
    import django
    from django.conf import settings

    if "obm_test_urls" not in sys.modules:
        from django.http import JsonResponse
        from django.urls import path

        def whoami(request: Any, tenant: str | None = None) -> Any:
            return JsonResponse(_context_json(request.META["oauth2_broker"]))

        def api(request: Any) -> Any:
            lease = request.META["oauth2_broker"].lease("acme")
            return JsonResponse({"scopes": list(lease.scopes)})

        def boom(request: Any) -> Any:
            raise AuthorizationRequired(tenant="default", principal="p", provider="mock", scopes=[])

        def remote(request: Any) -> Any:
            status = _remote(request.META["oauth2_broker"], request.META["test.mock_provider"])
            return JsonResponse({"status": status})

        urls = types.ModuleType("obm_test_urls")
        urls.urlpatterns = [  # type: ignore[attr-defined]
            path("whoami", whoami),
            path("t/<str:tenant>/whoami", whoami),
            path("api/data", api),
            path("boom", boom),
            path("remote", remote),
        ]
        sys.modules["obm_test_urls"] = urls
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="django-test-" + "x" * 40,
            ROOT_URLCONF="obm_test_urls",
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            LOGGING_CONFIG=None,
            USE_TZ=True,
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.urls import clear_url_caches

    settings.ROOT_URLCONF = "obm_test_urls"  # another module may have configured Django first
    clear_url_caches()
    middleware = BrokerWSGIMiddleware(get_wsgi_application(), **options)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["test.mock_provider"] = mp
        return middleware(environ, start_response)

    return app


_BUILDERS: dict[str, Callable[[dict[str, Any], MockProvider], Any]] = {
    "starlette": _starlette_app,
    "fastapi": _fastapi_app,
    "flask": _flask_app,
    "django": _django_app,
}


# -- the environment -------------------------------------------------------------------------------
@dataclass
class Env:
    framework: str
    mp: MockProvider
    broker: Broker
    app: Any
    base_url: str
    clock: FakeClock
    _clients: list[Any] = field(default_factory=list)

    def browser(self, **kwargs: Any) -> httpx2.Client:
        if self.framework in ("starlette", "fastapi"):
            from starlette.testclient import TestClient

            client: httpx2.Client = TestClient(
                self.app, base_url=self.base_url, follow_redirects=False, **kwargs
            )
        else:
            client = httpx2.Client(
                transport=httpx2.WSGITransport(app=self.app),
                base_url=self.base_url,
                follow_redirects=False,
                **kwargs,
            )
        self._clients.append(client)
        return client

    def start(self, browser: httpx2.Client, return_to: str = "/whoami") -> str:
        """GET the login route; returns the provider's authorize URL."""
        response = browser.get("/oauth2/acme/login", params={"return_to": return_to})
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert location.startswith(self.mp.authorization_endpoint)
        return location

    def authorize(self, authorize_url: str, subject: str | None = None) -> str:
        """The user approves at the provider; returns the callback URL it redirects to."""
        if subject is not None:
            authorize_url += "&" + urlencode({"login_hint": subject})
        with self.mp.client() as idp:
            response = idp.get(authorize_url)
        assert response.status_code == 302, response.text
        callback = response.headers["location"]
        assert callback.startswith(self.base_url + "/oauth2/acme/callback?")
        return callback

    def login(self, browser: httpx2.Client, return_to: str = "/whoami") -> httpx2.Response:
        return browser.get(self.authorize(self.start(browser, return_to)))

    def whoami(self, browser: httpx2.Client) -> dict[str, Any]:
        response = browser.get("/whoami")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.mp.close()


MakeEnv = Callable[..., Env]


@pytest.fixture(params=FRAMEWORKS)
def make_env(request: pytest.FixtureRequest) -> Iterator[MakeEnv]:
    framework: str = request.param
    envs: list[Env] = []

    def make(
        *,
        base_url: str = BASE,
        provider: dict[str, Any] | None = None,
        descriptor: dict[str, Any] | None = None,
        **options: Any,
    ) -> Env:
        mp = MockProvider(**(provider or {}))
        broker = Broker(
            mp.descriptor(**(descriptor or {})),
            client_id="test-client",
            client_secret="test-secret",
            http_client=mp.client(),
            async_http_client=mp.async_client(),
        )
        clock = FakeClock()
        config: dict[str, Any] = {
            "brokers": {"acme": broker},
            "scopes": {"acme": SCOPES},
            "secret_key": SECRET,
            "base_url": base_url,
            "clock": clock,
        }
        config.update(options)
        env = Env(framework, mp, broker, _BUILDERS[framework](config, mp), base_url, clock)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def env(make_env: MakeEnv) -> Env:
    return make_env()


def _with_query(url: str, change: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]) -> str:
    parts = urlsplit(url)
    pairs = change(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(pairs), ""))


def _set_cookies(response: httpx2.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def _error_code(response: httpx2.Response) -> str:
    assert 'id="error-code"' in response.text, response.text
    return response.text.split('id="error-code">', 1)[1].split("<", 1)[0]


def _assert_no_cache(response: httpx2.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


# -- login -----------------------------------------------------------------------------------------
def test_login_redirects_with_state_pkce_s256_and_nonce(env: Env) -> None:
    browser = env.browser()
    response = browser.get("/oauth2/acme/login", params={"return_to": "/whoami"})
    assert response.status_code == 302
    _assert_no_cache(response)
    query = dict(parse_qsl(urlsplit(response.headers["location"]).query))
    assert len(query["state"]) >= 43
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["nonce"]) >= 22
    assert query["redirect_uri"] == f"{BASE}/oauth2/acme/callback"
    assert set(query["scope"].split()) == {"openid", "email"}
    (flow_cookie,) = _set_cookies(response)
    assert flow_cookie.startswith("obm_flow_")
    assert query["state"] not in flow_cookie


def test_redirect_uri_ignores_host_and_forwarded_headers(env: Env) -> None:
    browser = env.browser()
    response = browser.get(
        "/oauth2/acme/login",
        headers={
            "host": "evil.example",
            "x-forwarded-host": "evil.example",
            "x-forwarded-proto": "https",
            "forwarded": "host=evil.example;proto=https",
        },
    )
    query = dict(parse_qsl(urlsplit(response.headers["location"]).query))
    assert query["redirect_uri"] == f"{BASE}/oauth2/acme/callback"


def test_unknown_provider_is_404(env: Env) -> None:
    response = env.browser().get("/oauth2/nope/login")
    assert response.status_code == 404
    assert _error_code(response) == "unknown_provider"


# -- callback success ------------------------------------------------------------------------------
def test_callback_sets_session_and_redirects_to_return_to(env: Env) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser, "/whoami?tab=2"))
    response = browser.get(callback_url)
    assert response.status_code == 303
    assert response.headers["location"] == "/whoami?tab=2"
    _assert_no_cache(response)
    cookies = _set_cookies(response)
    assert any(c.startswith("obm_session=") and "Max-Age=0" not in c for c in cookies)
    assert any(c.startswith("obm_flow_") and "Max-Age=0" in c for c in cookies)  # consumed
    assert env.mp.counters["token"] == 1
    me = env.whoami(browser)
    assert me["tenant"] == "default"
    assert me["principal"] == "user-1"  # the OIDC subject
    assert me["connections"] == ["acme"]
    # the app below can use the broker through the context
    api = browser.get("/api/data", headers={"accept": "application/json"})
    assert api.status_code == 200
    assert set(api.json()["scopes"]) >= {"openid", "email"}


def test_no_token_code_or_state_reaches_the_browser_or_the_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    browser = env.browser()
    authorize_url = env.start(browser)
    callback_url = env.authorize(authorize_url)
    final = browser.get(callback_url)
    query = dict(parse_qsl(urlsplit(callback_url).query))
    key = env.broker.key(tenant="default", principal="user-1", scopes=SCOPES)
    record = env.broker.store.get(key)
    assert record is not None
    assert record.refresh_token is not None
    secrets = [
        query["code"],
        query["state"],
        record.access_token.get_secret_value(),
        record.refresh_token.get_secret_value(),
    ]
    seen = [final.text, final.headers["location"], *_set_cookies(final)]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("oauth2_broker_mw")]
    seen += [repr(env.whoami(browser)), *ours]
    for secret in secrets:
        for text in seen:
            assert secret not in text


def test_session_is_rotated_on_login(env: Env) -> None:
    browser = env.browser()
    assert env.login(browser).status_code == 303
    first = dict(browser.cookies)
    assert env.login(browser).status_code == 303
    second = dict(browser.cookies)
    assert first["obm_session"] != second["obm_session"]
    # the pre-login session id is dead: replaying the old cookie shows nobody logged in
    stale = env.browser(cookies={"obm_session": first["obm_session"]})
    assert env.whoami(stale)["principal"] is None
    assert env.whoami(browser)["principal"] == "user-1"


# -- CSRF on the callback: state bound to the browser (SECURITY B1) --------------------------------
def test_victim_callback_with_attackers_state_is_rejected(env: Env) -> None:
    attacker, victim = env.browser(), env.browser()
    # the attacker starts a login in its own browser and authorises its own account...
    callback_url = env.authorize(env.start(attacker), subject="attacker")
    # ...then makes the victim's browser (which has its own login going) load the callback
    env.start(victim)
    response = victim.get(callback_url)
    assert response.status_code == 400
    assert _error_code(response) == "state_mismatch"
    _assert_no_cache(response)
    assert env.mp.counters["token"] == 0
    assert env.whoami(victim)["principal"] is None


def test_replayed_state_is_rejected(env: Env) -> None:
    browser = env.browser()
    authorize_url = env.start(browser)
    flow_cookies = dict(browser.cookies)
    callback_url = env.authorize(authorize_url)
    assert browser.get(callback_url).status_code == 303
    assert env.mp.counters["token"] == 1
    # same browser: the flow cookie was consumed
    again = browser.get(callback_url)
    assert again.status_code == 400
    assert _error_code(again) == "state_mismatch"
    # a captured request replayed with its original flow cookie: the broker's single use
    replay = env.browser(cookies=flow_cookies).get(callback_url)
    assert replay.status_code == 400
    assert _error_code(replay) == "state_unknown"
    assert env.mp.counters["token"] == 1


def test_expired_state_is_rejected(env: Env) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    env.clock.advance(301)
    response = browser.get(callback_url)
    assert response.status_code == 400
    assert _error_code(response) == "state_expired"
    assert env.mp.counters["token"] == 0


def test_missing_state_is_rejected(env: Env) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    no_state = _with_query(callback_url, lambda q: [(k, v) for k, v in q if k != "state"])
    response = browser.get(no_state)
    assert response.status_code == 400
    assert _error_code(response) == "state_missing"
    assert env.mp.counters["token"] == 0


def test_forged_flow_cookie_is_rejected(env: Env) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    (name,) = [n for n in browser.cookies if n.startswith("obm_flow_")]
    value = browser.cookies[name]
    forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    response = env.browser(cookies={name: forged}).get(callback_url)
    assert response.status_code == 400
    assert _error_code(response) == "state_mismatch"
    assert env.mp.counters["token"] == 0


@pytest.mark.parametrize("param", ["code", "state", "iss"])
def test_duplicate_parameters_are_rejected(make_env: MakeEnv, param: str) -> None:
    env = make_env(
        provider={"send_iss": True},
        descriptor={"authorization_response_iss_parameter_supported": True},
    )
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))

    def duplicate(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [*pairs, *[(k, v) for k, v in pairs if k == param]]

    response = browser.get(_with_query(callback_url, duplicate))
    assert response.status_code == 400
    assert _error_code(response) == "duplicate_parameter"
    assert env.mp.counters["token"] == 0


@pytest.mark.parametrize("param", ["error_description", "error_uri", "realmId"])
def test_every_repeated_response_parameter_is_rejected(make_env: MakeEnv, param: str) -> None:
    """RFC 6749 §3.1 names every parameter: a repeated ``error_description`` / ``error_uri``,
    or a parameter the descriptor keeps (``callback_params``, QuickBooks' ``realmId``), is
    refused too, not resolved by "last one wins" (issue 10)."""
    env = make_env(
        provider={"quirks": MockQuirks(redirect_extra_params={"realmId": "9130"})},
        descriptor={"callback_params": ("realmId",)},
    )
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    repeated = _with_query(callback_url, lambda q: [*q, (param, "one"), (param, "two")])
    response = browser.get(repeated)
    assert response.status_code == 400
    assert _error_code(response) == "duplicate_parameter"
    assert env.mp.counters["token"] == 0
    if param != "realmId":  # refused before the state is read: nothing was spent
        assert browser.get(callback_url).status_code == 303
    else:  # refused once the broker is known (after the flow check): start again
        assert env.login(browser).status_code == 303
    assert env.mp.counters["token"] == 1


# -- RFC 9207 (SECURITY B2) ------------------------------------------------------------------------
@pytest.fixture
def iss_env(make_env: MakeEnv) -> Env:
    return make_env(
        provider={"send_iss": True},
        descriptor={"authorization_response_iss_parameter_supported": True},
    )


def test_matching_iss_is_accepted(iss_env: Env) -> None:
    browser = iss_env.browser()
    callback_url = iss_env.authorize(iss_env.start(browser))
    assert dict(parse_qsl(urlsplit(callback_url).query))["iss"] == iss_env.mp.issuer
    assert browser.get(callback_url).status_code == 303


def test_iss_mismatch_is_rejected(iss_env: Env) -> None:
    browser = iss_env.browser()
    callback_url = iss_env.authorize(iss_env.start(browser))
    forged = _with_query(
        callback_url,
        lambda q: [(k, "https://evil-idp.example" if k == "iss" else v) for k, v in q],
    )
    response = browser.get(forged)
    assert response.status_code == 400
    assert _error_code(response) == "issuer_mismatch"
    assert iss_env.mp.counters["token"] == 0


def test_missing_iss_is_rejected_when_the_provider_always_sends_it(iss_env: Env) -> None:
    browser = iss_env.browser()
    callback_url = iss_env.authorize(iss_env.start(browser))
    stripped = _with_query(callback_url, lambda q: [(k, v) for k, v in q if k != "iss"])
    response = browser.get(stripped)
    assert response.status_code == 400
    assert _error_code(response) == "issuer_missing"
    assert iss_env.mp.counters["token"] == 0


def test_unexpected_iss_is_rejected_even_when_not_advertised(env: Env) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    forged = callback_url + "&" + urlencode({"iss": "https://evil-idp.example"})
    response = browser.get(forged)
    assert response.status_code == 400
    assert _error_code(response) == "issuer_mismatch"
    assert env.mp.counters["token"] == 0


# -- error callbacks (SECURITY B7) -----------------------------------------------------------------
def test_error_callback_is_handled_after_the_state_check_and_escaped(env: Env) -> None:
    browser = env.browser()
    authorize_url = env.start(browser)
    state = dict(parse_qsl(urlsplit(authorize_url).query))["state"]
    script = "<script>alert('x')</script>"
    denied = f"{BASE}/oauth2/acme/callback?" + urlencode(
        {"error": "access_denied", "error_description": script, "state": state}
    )
    # another browser (no flow for this state) gets the state error, not the provider's
    other = env.browser().get(denied)
    assert other.status_code == 400
    assert _error_code(other) == "state_mismatch"
    response = browser.get(denied)
    assert response.status_code == 400
    assert _error_code(response) == "authorization_denied"
    assert script not in response.text
    assert "&lt;script&gt;" in response.text
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    _assert_no_cache(response)
    assert env.mp.counters["token"] == 0
    # the flow is consumed: a later real callback for that state fails
    assert any("Max-Age=0" in c for c in _set_cookies(response))


def test_errors_are_json_for_api_clients(env: Env) -> None:
    response = env.browser().get(
        "/oauth2/acme/callback?code=x", headers={"accept": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "state_missing"


# -- return_to (SECURITY B6) -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "return_to",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/\t/evil.example",
        f"{BASE}:8443/",
    ],
)
def test_open_redirect_targets_fall_back_to_root(env: Env, return_to: str) -> None:
    browser = env.browser()
    response = env.login(browser, return_to=return_to)
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_context_login_url_validates_return_to(env: Env) -> None:
    me = env.whoami(env.browser())
    assert me["login_url"] == f"{BASE}/oauth2/acme/login?return_to=/page"


# -- cookies (SECURITY G1) -------------------------------------------------------------------------
def _attributes(cookie: str) -> set[str]:
    return {part.strip().split("=", 1)[0].lower() for part in cookie.split(";")[1:]}


def test_cookies_are_secure_host_prefixed_on_https(make_env: MakeEnv) -> None:
    env = make_env(base_url=HTTPS_BASE)
    browser = env.browser()
    login = browser.get("/oauth2/acme/login")
    (flow,) = _set_cookies(login)
    assert flow.startswith("__Host-obm_flow_")
    callback = browser.get(env.authorize(login.headers["location"]))
    assert callback.status_code == 303
    (session,) = [c for c in _set_cookies(callback) if c.startswith("__Host-obm_session=")]
    for cookie in (flow, session):
        assert {"path", "httponly", "samesite", "secure", "max-age"} <= _attributes(cookie)
        assert "domain" not in _attributes(cookie)
        assert "Path=/;" in cookie + ";"
        assert "SameSite=Lax" in cookie
    assert env.whoami(browser)["principal"] == "user-1"


def test_cookies_are_not_secure_on_plain_http_loopback(env: Env) -> None:
    browser = env.browser()
    login = browser.get("/oauth2/acme/login")
    (flow,) = _set_cookies(login)
    assert flow.startswith("obm_flow_")
    assert "secure" not in _attributes(flow)
    assert {"httponly", "samesite", "path"} <= _attributes(flow)


def test_plain_http_outside_loopback_is_refused(make_env: MakeEnv) -> None:
    from oauth2_broker_mw import ConfigurationError

    with pytest.raises(ConfigurationError, match="https"):
        env = make_env(base_url="http://app.example.test")
        env.browser().get("/whoami")  # Starlette builds its middleware stack lazily


# -- logout (SECURITY G3) --------------------------------------------------------------------------
def test_logout_with_foreign_origin_is_refused(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    response = browser.post("/oauth2/logout", headers={"origin": "https://evil.example"})
    assert response.status_code == 403
    assert _error_code(response) == "csrf_failed"
    assert env.mp.counters["revoke"] == 0
    assert env.whoami(browser)["principal"] == "user-1"


def test_logout_without_origin_needs_the_csrf_token(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    refused = browser.post("/oauth2/logout", data={"csrf_token": "guess"})
    assert refused.status_code == 403
    assert env.mp.counters["revoke"] == 0
    token = env.whoami(browser)["csrf_token"]
    accepted = browser.post("/oauth2/logout", data={"csrf_token": token, "return_to": "/bye"})
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/bye"
    assert env.mp.counters["revoke"] >= 1


def test_logout_revokes_at_the_provider_and_clears_the_session(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    assert env.mp.live_tokens(subject="user-1")
    response = browser.post("/oauth2/logout?return_to=//evil.example", headers={"origin": BASE})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert any(c.startswith("obm_session=") and "Max-Age=0" in c for c in _set_cookies(response))
    assert env.mp.counters["revoke"] >= 1
    assert env.mp.live_tokens(subject="user-1") == []
    assert env.whoami(browser)["principal"] is None
    api = browser.get("/api/data", headers={"accept": "application/json"})
    assert api.status_code == 401


def test_logout_while_the_provider_is_down_signs_out_and_revokes_once_it_is_back(
    env: Env,
) -> None:
    """SECURITY D4: a 503 at logout still signs the user out; the queued revocation reaches
    the provider at the next drain (every Refresher sweep runs one)."""
    browser = env.browser()
    env.login(browser)
    env.mp.faults.add("revoke", "error", status=503, retry_after=10)
    response = browser.post("/oauth2/logout", headers={"origin": BASE})
    assert response.status_code == 303
    assert env.whoami(browser)["principal"] is None
    assert browser.get("/api/data", headers={"accept": "application/json"}).status_code == 401
    assert env.mp.live_tokens(subject="user-1")  # not revoked yet: the provider was down
    # a refresher process on the same store, 31 s later (past the first back-off of 30 s)
    later = Broker(
        env.mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        store=env.broker.store,
        http_client=env.mp.client(),
        clock=FakeClock(time.time() + 31),
    )
    assert later.drain_revocations().delivered == 1
    assert env.mp.live_tokens(subject="user-1") == []
    later.close()


def test_get_logout_is_405(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    response = browser.get("/oauth2/logout")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert env.mp.counters["revoke"] == 0


# -- AuthorizationRequired from the app ------------------------------------------------------------
def test_authorization_required_redirects_browsers_to_login(env: Env) -> None:
    response = env.browser().get("/api/data?x=1", headers={"accept": "text/html,*/*"})
    assert response.status_code == 302
    assert response.headers["location"] == (f"{BASE}/oauth2/acme/login?return_to=/api/data%3Fx%3D1")


def test_authorization_required_is_a_401_problem_for_apis(env: Env) -> None:
    response = env.browser().get("/api/data", headers={"accept": "application/json"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 401
    assert problem["code"] == "authorization_required"
    assert problem["login_url"] == f"{BASE}/oauth2/acme/login?return_to=/api/data"


def test_authorization_required_raised_directly_by_a_view(env: Env) -> None:
    if env.framework == "django":
        pytest.skip(
            "Django renders a bare exception as a 500 page; the app here deliberately has no "
            "process_exception recipe so the automatic lease()/auth() path stays under test"
        )
    response = env.browser().get("/boom", headers={"accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["provider"] == "acme"


def test_full_cycle_from_401_to_a_working_api_call(env: Env) -> None:
    browser = env.browser()
    first = browser.get("/api/data", headers={"accept": "text/html"})
    login_url = first.headers["location"]
    authorize = browser.get(login_url)
    callback = browser.get(env.authorize(authorize.headers["location"]))
    assert callback.headers["location"] == "/api/data"
    assert browser.get("/api/data").status_code == 200


# -- tenants (SECURITY G6) -------------------------------------------------------------------------
def test_invalid_tenant_is_400_never_a_default(make_env: MakeEnv) -> None:
    env = make_env(tenant_resolver=lambda request: request.header("x-tenant"))
    browser = env.browser()
    bad = browser.get("/whoami", headers={"x-tenant": "bad tenant"})
    assert bad.status_code == 400
    assert _error_code(bad) == "invalid_tenant"
    login = browser.get("/oauth2/acme/login", headers={"x-tenant": "a" * 200})
    assert login.status_code == 400
    assert _error_code(login) == "invalid_tenant"
    no_tenant = browser.get("/oauth2/acme/login")
    assert no_tenant.status_code == 400
    assert _error_code(no_tenant) == "tenant_required"
    good = browser.get("/whoami", headers={"x-tenant": "acme-corp"})
    assert good.json()["tenant"] == "acme-corp"


def test_tenant_is_bound_to_the_flow(make_env: MakeEnv) -> None:
    env = make_env(tenant_resolver=lambda request: request.header("x-tenant"))
    browser = env.browser(headers={"x-tenant": "acme-corp"})
    assert env.login(browser).status_code == 303
    me = env.whoami(browser)
    assert (me["tenant"], me["principal"], me["connections"]) == ("acme-corp", "user-1", ["acme"])
    other = browser.get("/whoami", headers={"x-tenant": "globex"}).json()
    assert other["connections"] == []  # the session's grants belong to acme-corp


# -- many tabs -------------------------------------------------------------------------------------
def test_two_tabs_log_in_concurrently(env: Env) -> None:
    browser = env.browser()
    first = env.start(browser, "/whoami?tab=1")
    second = env.start(browser, "/whoami?tab=2")
    assert len([n for n in browser.cookies if n.startswith("obm_flow_")]) == 2
    second_callback = env.authorize(second)
    first_callback = env.authorize(first)
    done2 = browser.get(second_callback)
    done1 = browser.get(first_callback)
    assert (done2.status_code, done2.headers["location"]) == (303, "/whoami?tab=2")
    assert (done1.status_code, done1.headers["location"]) == (303, "/whoami?tab=1")
    assert env.mp.counters["token"] == 2
    assert not [n for n in browser.cookies if n.startswith("obm_flow_")]


def test_flow_cookies_are_bounded(make_env: MakeEnv) -> None:
    env = make_env(max_flows=3)
    browser = env.browser()
    urls = []
    for _ in range(5):
        urls.append(env.start(browser))
        env.clock.advance(1)
    assert len([n for n in browser.cookies if n.startswith("obm_flow_")]) == 3
    assert browser.get(env.authorize(urls[0])).status_code == 400  # the oldest was dropped
    assert browser.get(env.authorize(urls[-1])).status_code == 303


def test_login_deletes_only_flow_cookies_it_could_have_set(env: Env) -> None:
    """A cookie that merely starts with ``obm_flow_`` is not ours: its name, which the request
    chose, is never written back in a ``Set-Cookie`` (found by tests/fuzz)."""
    foreign = [
        "obm_flow_",
        "obm_flow_<b>x</b>",
        "obm_flow_" + "x" * 3000,
        "obm_flow_0123456789ABCDEF",
    ]
    ours = "obm_flow_0123456789abcdef"  # a well-formed name with a value that does not open
    cookie = "; ".join([f"{name}=v1.junk" for name in [*foreign, ours]])
    response = env.browser().get("/oauth2/acme/login", headers={"cookie": cookie})
    assert response.status_code == 302
    names = [line.split("=", 1)[0] for line in _set_cookies(response)]
    assert ours in names  # a stale flow cookie of ours is still deleted
    assert not set(foreign) & set(names)
    assert all(len(name) == len(ours) for name in names if name.startswith("obm_flow_"))


# -- non-OIDC providers: a per-browser principal ---------------------------------------------------
def test_non_oidc_provider_gets_a_per_browser_principal(make_env: MakeEnv) -> None:
    env = make_env(scopes={"acme": ["email"]})
    one, two = env.browser(), env.browser()
    env.login(one)
    env.login(two)
    p1, p2 = env.whoami(one)["principal"], env.whoami(two)["principal"]
    assert p1
    assert p2
    assert p1 != p2
    assert p1.startswith("browser-")
    env.login(one)  # SECURITY J10: every login is a fresh principal, nothing from the old session
    assert env.whoami(one)["principal"] not in (p1, None)


# -- sessions (SECURITY G2) ------------------------------------------------------------------------
def test_session_idle_timeout(make_env: MakeEnv) -> None:
    env = make_env(session_idle_timeout=600, session_absolute_timeout=3600)
    browser = env.browser()
    env.login(browser)
    env.clock.advance(599)
    copy = env.browser(cookies=dict(browser.cookies))  # its refreshed cookie stays in its jar
    assert env.whoami(copy)["principal"] == "user-1"
    env.clock.advance(2)
    assert env.whoami(browser)["principal"] is None


def test_activity_extends_the_idle_timeout_up_to_the_absolute_timeout(make_env: MakeEnv) -> None:
    env = make_env(session_idle_timeout=600, session_absolute_timeout=1500)
    browser = env.browser()
    env.login(browser)
    for _ in range(4):  # active every 5 minutes: the cookie is re-issued, the idle clock resets
        env.clock.advance(300)
        response = browser.get("/whoami")
        assert response.json()["principal"] == "user-1"
        assert any(c.startswith("obm_session=") for c in _set_cookies(response))
    env.clock.advance(301)  # 1501 s after login: past the absolute timeout
    assert env.whoami(browser)["principal"] is None


def test_logged_out_session_cookie_cannot_be_replayed(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    captured = browser.cookies["obm_session"]
    assert browser.post("/oauth2/logout", headers={"origin": BASE}).status_code == 303
    replay = env.browser(cookies={"obm_session": captured})
    assert env.whoami(replay)["principal"] is None


def test_tampered_session_cookie_is_ignored(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    value = browser.cookies["obm_session"]
    tampered = value[:20] + ("A" if value[20] != "A" else "B") + value[21:]
    assert env.whoami(env.browser(cookies={"obm_session": tampered}))["principal"] is None


# -- several providers: flows are bound to theirs (SECURITY B1, A9) --------------------------------
def test_flow_for_one_provider_cannot_complete_at_another(make_env: MakeEnv) -> None:
    env = make_env()
    other_mp = MockProvider(issuer="https://other-idp.test")
    other = Broker(
        other_mp.descriptor(id="other"),
        client_id="test-client",
        client_secret="test-secret",
        http_client=other_mp.client(),
        async_http_client=other_mp.async_client(),
    )
    env2 = make_env(brokers={"acme": env.broker, "other": other})
    env2.mp.close()
    env2.mp = env.mp
    browser = env2.browser()
    callback_url = env2.authorize(env2.start(browser))
    moved = callback_url.replace("/oauth2/acme/callback", "/oauth2/other/callback")
    response = browser.get(moved)
    assert response.status_code == 400
    assert _error_code(response) == "state_mismatch"
    assert env.mp.counters["token"] == 0
    assert other_mp.counters["token"] == 0
    other_mp.close()


# -- BrokerAuth from the context ----------------------------------------------------------------
def test_context_auth_signs_outbound_calls_and_asks_for_login_when_the_grant_is_gone(
    make_env: MakeEnv,
) -> None:
    env = make_env(descriptor={"grants": ["authorization_code", "refresh_token"]})
    browser = env.browser()
    env.login(browser)
    ok = browser.get("/remote")
    assert ok.status_code == 200
    assert ok.json() == {"status": 200}
    assert env.mp.counters["resource:ok"] == 1
    env.broker.revoke(tenant="default", principal="user-1", scopes=SCOPES)
    html = browser.get("/remote", headers={"accept": "text/html"})
    assert html.status_code == 302
    assert html.headers["location"] == f"{BASE}/oauth2/acme/login?return_to=/remote"
    api = browser.get("/remote", headers={"accept": "application/json"})
    assert api.status_code == 401
    assert api.json()["code"] == "authorization_required"


def test_callback_is_get_only_so_prefetchers_cannot_spend_the_code(env: Env) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    assert browser.head(callback_url).status_code == 405
    assert browser.post(callback_url).status_code == 405
    assert env.mp.counters["token"] == 0
    assert browser.get(callback_url).status_code == 303


def test_logout_csrf_token_may_come_in_a_header(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    token = env.whoami(browser)["csrf_token"]
    wrong = browser.post("/oauth2/logout", headers={"x-csrf-token": token[:-1] + "x"})
    assert wrong.status_code == 403
    assert browser.post("/oauth2/logout", headers={"x-csrf-token": token}).status_code == 303
    assert env.whoami(browser)["principal"] is None


def test_logout_with_opaque_origin_falls_back_to_the_csrf_token(env: Env) -> None:
    browser = env.browser()
    env.login(browser)
    token = env.whoami(browser)["csrf_token"]
    refused = browser.post("/oauth2/logout", headers={"origin": "null"})
    assert refused.status_code == 403
    done = browser.post("/oauth2/logout", data={"csrf_token": token}, headers={"origin": "null"})
    assert done.status_code == 303
    assert env.whoami(browser)["principal"] is None


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_logout_from_another_site_is_refused_even_with_the_token(env: Env, site: str) -> None:
    browser = env.browser()
    env.login(browser)
    token = env.whoami(browser)["csrf_token"]
    response = browser.post(
        "/oauth2/logout", data={"csrf_token": token}, headers={"sec-fetch-site": site}
    )
    assert response.status_code == 403
    assert env.mp.counters["revoke"] == 0


def test_path_prefix_tenant_end_to_end(make_env: MakeEnv) -> None:
    from oauth2_broker_mw.middleware import path_prefix_tenant

    env = make_env(tenant_resolver=path_prefix_tenant("/t"))
    browser = env.browser()
    assert env.whoami(browser)["tenant"] is None  # outside /t/: no tenant
    assert browser.get("/oauth2/acme/login").status_code == 400  # return_to "/": no tenant
    done = env.login(browser, return_to="/t/acme/whoami")
    assert done.headers["location"] == "/t/acme/whoami"
    me = browser.get("/t/acme/whoami").json()
    assert (me["tenant"], me["principal"], me["connections"]) == ("acme", "user-1", ["acme"])
    assert browser.get("/t/globex/whoami").json()["connections"] == []
    assert browser.get("/t/globex/whoami").json()["principal"] is None  # SECURITY J2
    assert browser.get("/t/bad%20tenant/whoami").status_code == 400


# -- the provider fails at the token endpoint ---------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"kind": "error", "status": 400, "error": "invalid_grant"}, 400, "exchange_failed"),
        ({"kind": "html"}, 502, "provider_unavailable"),
        (
            {"kind": "error", "status": 503, "error": "temporarily_unavailable"},
            502,
            "provider_unavailable",
        ),
    ],
)
def test_token_endpoint_failures_are_clean_error_pages(
    env: Env, fault: dict[str, Any], status: int, code: str
) -> None:
    browser = env.browser()
    callback_url = env.authorize(env.start(browser))
    env.mp.faults.add("token", times=None, **fault)
    response = browser.get(callback_url)
    assert response.status_code == status
    assert _error_code(response) == code
    assert "<html" not in response.text.split("<body>", 1)[1].lower()  # no provider page
    assert any("Max-Age=0" in c for c in _set_cookies(response))  # the flow is spent
    assert env.whoami(browser)["principal"] is None


def test_one_user_connects_two_providers_and_logout_revokes_both(make_env: MakeEnv) -> None:
    first = make_env()
    other_mp = MockProvider(issuer="https://other-idp.test")
    other = Broker(
        other_mp.descriptor(id="other"),
        client_id="test-client",
        client_secret="test-secret",
        http_client=other_mp.client(),
        async_http_client=other_mp.async_client(),
    )
    env = make_env(
        brokers={"acme": first.broker, "other": other},
        scopes={"acme": SCOPES, "other": ["email"]},  # not an OIDC login
        # the app knows its user: it vouches for the principal across providers (SECURITY J1, J10)
        principal_resolver=lambda request: request.header("x-app-user"),
    )
    env.mp.close()
    env.mp = first.mp
    browser = env.browser(headers={"x-app-user": "user-1"})
    assert env.login(browser).status_code == 303
    start = browser.get("/oauth2/other/login")
    with other_mp.client() as idp:
        callback = idp.get(start.headers["location"]).headers["location"]
    assert browser.get(callback).status_code == 303
    me = env.whoami(browser)
    assert (me["principal"], me["connections"]) == ("user-1", ["acme", "other"])
    assert other.connections(tenant="default", principal="user-1")  # same principal
    assert browser.post("/oauth2/logout", headers={"origin": BASE}).status_code == 303
    assert first.mp.counters["revoke"] >= 1
    assert other_mp.counters["revoke"] >= 1
    assert other.connections(tenant="default", principal="user-1") == []
    other_mp.close()
