"""The middleware's HTML pages say what went wrong and what to do (issue 12, item 7).

A browser that hits a refusal (a callback with a wrong or expired state, a provider's error,
the token store down, a cross-site logout, a ``GET /logout``) gets a page titled after what
happened, with the reason, what the user can do, a link back to the app and, where a new login
mends it, a link that starts the login again. No code, state or secret from the request is
echoed; the pages carry a CSP that allows only their own style (by hash), ``no-store`` and
``no-referrer``. Each test failed on the main of 2026-12-06 (every page was "Sign-in failed",
unstyled, with no link; ``GET /logout`` was a bare 405).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl
from urllib.parse import urlsplit

import pytest
from _fakes import FakeClock
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.testing.mock_provider import MockProvider

BASE = "http://127.0.0.1"
KEY = "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa"
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def mp() -> Iterator[MockProvider]:
    provider = MockProvider()
    yield provider
    provider.close()


def _app(
    mp: MockProvider,
    store: SQLiteStore,
    clock: FakeClock | None = None,
    *,
    client_secret: str = "test-secret",
    **extra: object,
) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        ctx = request.state.oauth2_broker
        return JSONResponse({"principal": ctx.principal, "connections": list(ctx.connections)})

    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret=client_secret,
        store=store,
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    app = Starlette(routes=[Route("/whoami", whoami)])
    options: dict[str, object] = {"brokers": {"mock": broker}, "secret_key": KEY, "base_url": BASE}
    if clock is not None:
        options["clock"] = clock
    options.update(extra)
    app.add_middleware(BrokerMiddleware, **options)
    return app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(mp: MockProvider, tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    store = SQLiteStore(tmp_path / "tokens.db")
    with TestClient(_app(mp, store, clock), base_url=BASE, follow_redirects=False) as c:
        yield c
    store.close()


def _start(client: TestClient, mp: MockProvider) -> dict[str, str]:
    """Start a login and let the provider approve it: the callback's query parameters."""
    start = client.get("/oauth2/mock/login", params={"return_to": "/whoami"}, headers=HTML)
    assert start.status_code == 302
    answer = mp.client().get(start.headers["location"])
    return dict(parse_qsl(urlsplit(answer.headers["location"]).query))


def _title(body: str) -> str:
    match = re.search(r"<title>([^<]*)</title>", body)
    assert match is not None, body
    return match.group(1)


def _assert_safe_page(response: object, *, secrets: tuple[str, ...] = (), home: bool = True) -> str:
    headers = response.headers  # type: ignore[attr-defined]
    body: str = response.text  # type: ignore[attr-defined]
    assert headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]+'", csp), csp
    assert "unsafe-inline" not in csp
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "<style>" in body  # styled, not default HTML
    assert '<meta name=viewport content="width=device-width' in body  # readable on a phone
    assert not home or 'id="home" href="/"' in body  # the way back to the app
    for secret in secrets:
        assert secret not in body
    return body


def test_a_callback_from_another_browser_says_start_again(
    client: TestClient, mp: MockProvider
) -> None:
    params = _start(client, mp)
    client.cookies.clear()  # the callback arrives in a browser that did not start the login
    response = client.get("/oauth2/mock/callback", params=params, headers=HTML)
    assert response.status_code == 400
    body = _assert_safe_page(response, secrets=(params["code"], params["state"]))
    assert _title(body) == "This sign-in was not started here"
    assert "must finish in the browser tab that started it" in body
    assert 'id="retry" href="/oauth2/mock/login?return_to=/"' in body
    assert 'id="error-code">state_mismatch<' in body


def test_an_expired_login_says_it_took_too_long(
    client: TestClient, mp: MockProvider, clock: FakeClock
) -> None:
    params = _start(client, mp)
    clock.advance(3600)
    response = client.get("/oauth2/mock/callback", params=params, headers=HTML)
    assert response.status_code == 400
    body = _assert_safe_page(response, secrets=(params["code"], params["state"]))
    assert _title(body) == "This sign-in took too long"
    assert "Start the sign-in again" in body


def test_a_provider_error_is_named_and_its_text_capitalised(
    client: TestClient, mp: MockProvider
) -> None:
    start = client.get("/oauth2/mock/login", headers=HTML)
    state = dict(parse_qsl(urlsplit(start.headers["location"]).query))["state"]
    response = client.get(
        "/oauth2/mock/callback",
        params={
            "state": state,
            "error": "access_denied",
            "error_description": "the user denied access\x00<script>",
        },
        headers=HTML,
    )
    assert response.status_code == 400
    body = _assert_safe_page(response, secrets=(state,))
    assert _title(body) == "The provider did not grant access"
    assert "The provider answered &#x27;access_denied&#x27;: The user denied access" in body
    assert "<script>" not in body and "\x00" not in body
    assert "If you cancelled, nothing has changed" in body


def test_the_store_down_says_try_again_later_with_retry_after(
    mp: MockProvider, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "gone" / "tokens.db")  # the directory does not exist
    # check_stores=False: the store fails after startup (the startup check is tested apart)
    app = _app(mp, store, check_stores=False)
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        response = c.get("/oauth2/mock/login", headers=HTML)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    body = _assert_safe_page(response, secrets=(str(tmp_path),))  # the path is for the log
    assert _title(body) == "The app cannot sign you in right now"
    assert "cannot reach its token store" in body and "try again" in body
    store.close()


def test_json_clients_still_get_json(client: TestClient, mp: MockProvider) -> None:
    response = client.get(
        "/oauth2/mock/callback",
        params={"state": "x", "code": "y"},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "state_mismatch"


def test_get_logout_asks_and_the_form_signs_out(client: TestClient, mp: MockProvider) -> None:
    params = _start(client, mp)
    assert client.get("/oauth2/mock/callback", params=params).status_code == 303
    assert client.get("/whoami").json()["connections"] == ["mock"]

    page = client.get("/oauth2/logout", params={"return_to": "/whoami"}, headers=HTML)
    assert page.status_code == 200
    body = _assert_safe_page(page, home=False)
    assert _title(body) == "Sign out?"
    assert mp.counters["revoke"] == 0  # asking changes nothing
    assert client.get("/whoami").json()["connections"] == ["mock"]
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))
    assert form["return_to"] == "/whoami" and form["csrf_token"]
    assert 'id="cancel" href="/whoami"' in body

    done = client.post("/oauth2/logout", data=form)  # the form's POST (no Origin: the token)
    assert done.status_code == 303 and done.headers["location"] == "/whoami"
    assert client.get("/whoami").json()["connections"] == []
    assert mp.counters["revoke"] >= 1

    again = client.get("/oauth2/logout", headers=HTML)
    assert _title(_assert_safe_page(again)) == "You are not signed in"


def test_refusals_are_titled_after_what_happened(client: TestClient) -> None:
    post = client.post("/oauth2/mock/callback", headers=HTML)
    assert post.status_code == 405
    assert _title(post.text) == "This address does not take this kind of request"
    csrf = client.post("/oauth2/logout", headers={**HTML, "origin": "https://evil.example"})
    assert csrf.status_code == 403
    assert _title(_assert_safe_page(csrf)) == "Sign-out refused"
    assert "You are still signed in" in csrf.text
    unknown = client.get("/oauth2/nope/login", headers=HTML)
    assert unknown.status_code == 404
    assert _title(_assert_safe_page(unknown)) == "No such sign-in provider"
    assert 'id="retry"' not in unknown.text


def test_a_provider_down_at_the_exchange_is_explained_and_logged_with_its_reason(
    client: TestClient, mp: MockProvider, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    params = _start(client, mp)
    mp.faults.add("token", status=503, times=None)
    with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw.middleware"):
        response = client.get("/oauth2/mock/callback", params=params, headers=HTML)
    assert response.status_code == 502
    body = _assert_safe_page(response, secrets=(params["code"], params["state"]))
    assert _title(body) == "The provider cannot be reached"
    assert "Nothing is wrong with your account" in body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "code exchange for provider=mock failed" in logged
    assert "HTTP 503" in logged  # the reason, not only the class name
    assert params["code"] not in logged and "test-secret" not in logged


def test_a_rejected_client_secret_at_the_exchange_logs_what_to_check(
    mp: MockProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12, item 1: the callback of a broker whose secret the provider refuses logs why
    (the provider's error and what to check), never the secret or the code."""
    import logging

    store = SQLiteStore(tmp_path / "tokens.db")
    app = _app(mp, store, client_secret="wrong-secret-42")
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        params = _start(client, mp)
        with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw.middleware"):
            response = client.get("/oauth2/mock/callback", params=params, headers=HTML)
    store.close()
    assert response.status_code == 400
    body = _assert_safe_page(response, secrets=(params["code"], "wrong-secret-42"))
    assert _title(body) == "The sign-in could not be completed"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "code exchange for provider=mock rejected: invalid_client" in logged
    assert "client_secret" in logged and "client_auth_method" in logged  # what to check
    assert "wrong-secret-42" not in logged and params["code"] not in logged


def test_the_retry_link_keeps_the_path_tenant_of_the_login(
    mp: MockProvider, tmp_path: Path
) -> None:
    """Under path tenants the retry link of a refused callback goes back to the login's own
    ``return_to``, so it signs in to the same tenant and lands where the user was (issue 9:
    login links keep the current path). A link with ``return_to=/`` names no tenant: 400
    ``tenant_required``."""
    from oauth2_broker_mw.middleware import path_prefix_tenant

    store = SQLiteStore(tmp_path / "tokens.db")
    app = _app(mp, store, tenant_resolver=path_prefix_tenant("/t"))
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        back = "/t/acme/reports?x=1"
        start = client.get("/oauth2/mock/login", params={"return_to": back}, headers=HTML)
        assert start.status_code == 302
        mp.faults.add("authorize", "error")  # the user cancels at the provider
        denied = mp.client().get(start.headers["location"]).headers["location"]
        params = dict(parse_qsl(urlsplit(denied).query))
        assert params["error"] == "access_denied"
        page = client.get("/oauth2/mock/callback", params=params, headers=HTML)
        assert page.status_code == 400
        body = _assert_safe_page(page)
        retry = 'id="retry" href="/oauth2/mock/login?return_to=/t/acme/reports%3Fx%3D1"'
        assert retry in body
        assert client.get("/oauth2/mock/login?return_to=/").status_code == 400  # no tenant
        again = client.get("/oauth2/mock/login?return_to=/t/acme/reports%3Fx%3D1", headers=HTML)
        assert again.status_code == 302, again.text
        approved = mp.client().get(again.headers["location"]).headers["location"]
        done = client.get(approved, headers=HTML)
        assert (done.status_code, done.headers["location"]) == (303, back)
    store.close()
