"""The demo, end to end over real HTTP: ``oauth2-broker demo`` and the examples.

The demo is served by uvicorn on an ephemeral loopback port (``serve_demo``) and driven with
httpx2 as a browser would drive it: the page, "Log in", the MockProvider's login form, the
callback, and the page again, now with the tenant context and the result of an outbound call
signed by ``BrokerAuth``. Every secret of the run (the access and refresh tokens, the code,
the state, the client secret) is then looked for in the page, the cookies and every line the
server logged. Also: logout, a wrong password, an expired access token refreshed by
``BrokerAuth``, the CLI's ``--once`` smoke mode, the examples, and a smoke run of the
middleware benchmark.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import httpx2
import pytest

from oauth2_broker_mw import demo
from oauth2_broker_mw.__main__ import main
from oauth2_broker_mw._core.model import TenantId

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[demo.DemoServer]:
    with demo.serve_demo(data_dir=tmp_path / "data") as srv:
        yield srv


def _server_side(records: list[logging.LogRecord]) -> list[str]:
    """Log lines written by the server side (its threads, or the library's own loggers).

    The test's own httpx2 client logs the URLs it requests (callback included) on the main
    thread; that is the "browser" here, not the demo.
    """
    lines = []
    for record in records:
        if record.threadName != "MainThread" or record.name.startswith("oauth2_broker_mw"):
            lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
    return lines


def test_login_through_the_provider_form_shows_context_and_signed_call(
    server: demo.DemoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with httpx2.Client(timeout=10) as browser:
        first = browser.get(server.url + "/")
        assert first.status_code == 200
        assert 'id="login"' in first.text
        assert 'id="resource"' not in first.text

        result = demo.drive_login(server.url, client=browser)
        cookies = {c.name: c.value or "" for c in browser.cookies.jar}

    # The provider's own form was shown and submitted (auto_approve=False).
    assert any(urlsplit(u).path == "/idp/authorize" for u in result.visited)
    callback = next(u for u in result.visited if "/oauth2/mock/callback" in u)
    query = parse_qs(urlsplit(callback).query)
    code, state = query["code"][0], query["state"][0]
    assert query["iss"] == [f"{server.url}/idp"]  # RFC 9207 on

    # The page: tenant context and the signed outbound call.
    page = result.page
    assert result.status == 200
    assert '<dd id="tenant">default</dd>' in page
    assert '<dd id="principal">alice</dd>' in page
    assert '<dd id="connections">mock</dd>' in page
    assert '<span id="status" class="ok">200</span>' in page
    assert html.escape('"sub": "alice"') in page
    assert '<dd id="lease-type">Bearer</dd>' in page
    assert '<dd id="lease-scopes">openid profile</dd>' in page
    assert 'id="logout"' in page
    assert server.provider.counters["resource:ok"] == 1

    # Tokens stayed on the server, in the SQLite store under the data directory.
    keys = server.store.list_keys(TenantId("default"), "alice")
    assert len(keys) == 1
    record = server.store.get(keys[0])
    assert record is not None
    assert record.refresh_token is not None
    assert Path(server.store.path).is_file()
    secrets_of_the_run = {
        "access token": record.access_token.get_secret_value(),
        "refresh token": record.refresh_token.get_secret_value(),
        "code": code,
        "state": state,
        "client secret": "test-secret",
        "password": demo.DEMO_PASSWORD,
    }
    logs = "\n".join(_server_side(caplog.records))
    assert "GET /oauth2/mock/callback -> 303" in logs  # the access log shows paths only
    for what, value in secrets_of_the_run.items():
        if what != "password":  # the page tells the demo password on purpose
            assert value not in page, f"{what} on the page"
        assert value not in logs, f"{what} in the server log"
        for name, cookie in cookies.items():
            assert value not in cookie, f"{what} in cookie {name}"


def test_page_headers_and_login_link(server: demo.DemoServer) -> None:
    response = httpx2.get(server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert "/oauth2/mock/login?return_to=" in response.text
    assert '<dd id="principal">(none)</dd>' in response.text


def test_api_without_login_is_a_401_problem_document(server: demo.DemoServer) -> None:
    response = httpx2.get(
        server.url + "/api/me", headers={"accept": "application/json"}, timeout=10
    )
    assert response.status_code == 401
    assert response.json()["code"] == "authorization_required"


def test_api_after_login_returns_context_and_resource(server: demo.DemoServer) -> None:
    with httpx2.Client(timeout=10) as browser:
        demo.drive_login(server.url, client=browser)
        data = browser.get(server.url + "/api/me").json()
    assert data["tenant"] == "default"
    assert data["principal"] == "alice"
    assert data["connections"] == ["mock"]
    assert data["resource"]["status"] == 200
    assert data["resource"]["body"]["sub"] == "alice"
    assert set(data["resource"]["body"]) <= {"sub", "scope", "client_id", "method", "error"}


def test_wrong_password_stays_on_the_provider_form(server: demo.DemoServer) -> None:
    with httpx2.Client(timeout=10) as browser:
        result = demo.drive_login(server.url, password="not-the-password", client=browser)
        assert result.status == 401
        assert "Invalid username or password" in result.page
        assert not any("/oauth2/mock/callback" in u for u in result.visited)
        assert 'id="login"' in browser.get(server.url + "/").text
    assert server.store.list_keys(TenantId("default"), "alice") == []


def test_logout_revokes_and_forgets(server: demo.DemoServer) -> None:
    with httpx2.Client(timeout=10) as browser:
        demo.drive_login(server.url, client=browser)
        assert len(server.store.list_keys(TenantId("default"), "alice")) == 1
        response = browser.post(server.url + "/oauth2/logout", headers={"origin": server.url})
        assert response.status_code in (302, 303)
        page = browser.get(server.url + "/").text
    assert 'id="login"' in page
    assert server.store.list_keys(TenantId("default"), "alice") == []
    assert server.provider.counters["revoke"] >= 1


def test_demo_refuses_to_serve_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        demo.create_demo_app("http://0.0.0.0:8000", data_dir=tmp_path)
    with pytest.raises(ValueError, match="loopback"), demo.serve_demo("0.0.0.0", data_dir=tmp_path):
        pass


def test_cli_once_smoke_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "cli-data"
    assert main(["demo", "--port", "0", "--once", "--data-dir", str(data)]) == 0
    assert "oauth2-broker demo --once: ok" in capsys.readouterr().out
    assert (data / "tokens.db").is_file()


def test_cli_reports_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with demo.serve_demo(data_dir=tmp_path / "a") as running:
        port = urlsplit(running.url).port
        assert main(["demo", "--port", str(port), "--data-dir", str(tmp_path / "b")]) == 1
    assert "cannot start" in capsys.readouterr().err


# -- the examples --------------------------------------------------------------------------------
def test_quickstart_example_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    try:
        importlib.import_module("quickstart").main()
    finally:
        sys.modules.pop("quickstart", None)
    out = capsys.readouterr().out
    assert "GET /resource -> 200" in out
    assert "after the token expired -> 200" in out
    assert "cached: True" in out
    assert "Secret('**********')" in out


def _login_through(app_client: httpx2.Client) -> httpx2.Response:
    """Log in to an example app (auto-approving MockProvider on a loopback port)."""
    response = app_client.get("/oauth2/acme/login", params={"return_to": "/"})
    assert response.status_code in (302, 303)
    with httpx2.Client(timeout=10) as idp:
        answer = idp.get(response.headers["location"])
    assert answer.status_code in (302, 303)
    callback = answer.headers["location"]
    done = app_client.get(callback)
    assert done.status_code in (302, 303), done.text
    return app_client.get("/api/profile")


@pytest.mark.parametrize("example", ["fastapi_app", "starlette_app", "flask_app"])
def test_framework_examples_log_in_and_call_the_api(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    monkeypatch.setenv("TOKENS_DB", str(tmp_path / "tokens.db"))
    monkeypatch.delenv("OAUTH2_ISSUER", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    module = importlib.import_module(example)
    try:
        if example in ("fastapi_app", "starlette_app"):
            from starlette.testclient import TestClient

            with TestClient(module.app, base_url=module.BASE_URL, follow_redirects=False) as client:
                profile = _login_through(client)
        else:
            wsgi = httpx2.WSGITransport(app=module.app)
            with httpx2.Client(transport=wsgi, base_url=module.BASE_URL) as client:
                profile = _login_through(client)
        assert profile.status_code == 200, profile.text
        body = profile.json()
        assert body["status"] == 200
        assert body["body"]["sub"] == "user-1"
    finally:
        module.broker.close()
        sys.modules.pop(example, None)
        sys.modules.pop("_provider", None)


_DJANGO_LOGIN = """
import sys, httpx2
sys.path.insert(0, sys.argv[1])
import django_app as example

wsgi = httpx2.WSGITransport(app=example.application)
with httpx2.Client(transport=wsgi, base_url=example.BASE_URL) as app, httpx2.Client() as idp:
    login = app.get("/oauth2/acme/login", params={"return_to": "/api/profile"})
    callback = idp.get(login.headers["location"]).headers["location"]  # auto-approved
    done = app.get(callback)
    assert done.status_code == 303, done.text
    print(app.get(done.headers["location"]).text)
example.broker.close()
"""


def test_the_django_example_logs_in_and_calls_the_api(tmp_path: Path) -> None:
    """In its own interpreter: Django's settings are process-wide."""
    done = subprocess.run(
        [sys.executable, "-c", _DJANGO_LOGIN, str(ROOT / "examples")],
        cwd=tmp_path,
        env={**os.environ, "TOKENS_DB": str(tmp_path / "tokens.db")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == 200 and body["body"]["sub"] == "user-1"


def test_expired_access_token_is_refreshed_by_brokerauth(server: demo.DemoServer) -> None:
    with httpx2.Client(timeout=10) as browser:
        result = demo.drive_login(server.url, client=browser)
        assert '<dd id="grant-refresh">0</dd>' in result.page
        refused = browser.post(
            server.url + "/demo/expire-access-tokens", headers={"origin": "http://evil.test"}
        )
        assert refused.status_code == 403
        expired = browser.post(
            server.url + "/demo/expire-access-tokens", headers={"origin": server.url}
        )
        assert expired.status_code == 303
        page = browser.get(server.url + "/").text
    # The resource answered 401 to the stale token; BrokerAuth refreshed once and retried.
    assert '<span id="status" class="ok">200</span>' in page
    assert '<dd id="grant-refresh">1</dd>' in page
    assert '<dd id="lease-version">2</dd>' in page  # the refreshed record
    assert server.provider.counters["token:refresh_token"] == 1
    # The page shows the sequence: the 401, the one refresh, the retry (issue 12, item 7).
    steps = re.findall(r"<li>([^<]*)</li>", page.split('id="sequence"', 1)[1].split("</ol>")[0])
    assert steps[0] == "GET /idp/resource \u2192 401", steps
    assert steps[1] == "POST /idp/token (grant_type=refresh_token) \u2192 200", steps
    assert steps[-1] == "GET /idp/resource \u2192 200", steps
    assert "one</strong> refresh" in page
    assert 'href="/api/me"' in page  # the JSON API is linked


def test_logout_shows_a_confirmation(server: demo.DemoServer) -> None:
    with httpx2.Client(timeout=10) as browser:
        page = demo.drive_login(server.url, client=browser).page
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
        assert hidden["return_to"] == "/?signed_out=1"
        done = browser.post(
            server.url + "/oauth2/logout", data=hidden, headers={"origin": server.url}
        )
        assert done.headers["location"] == "/?signed_out=1"
        signed_out = browser.get(server.url + done.headers["location"]).text
    assert "You are signed out." in signed_out
    assert 'id="login"' in signed_out
    assert f'<span id="revoked">{server.provider.counters["revoked"]}</span>' in signed_out
    assert server.provider.counters["revoked"] >= 1


# -- the benchmark stays runnable ----------------------------------------------------------------
async def test_middleware_benchmark_smoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("middleware")
    try:
        ratios, cookie = await bench.in_process(200, 1)
    finally:
        sys.modules.pop("middleware", None)
    assert len(ratios) == 3  # anonymous, logged in, POST
    assert all(r > 0 for r in ratios)
    assert cookie is not None
    assert "logged in" in capsys.readouterr().out
