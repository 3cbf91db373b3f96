"""A real browser logs in through the demo: headless Debian Chromium driven by Playwright.

The demo (``oauth2-broker demo``'s app) is served by uvicorn on an ephemeral loopback port.
Chromium opens it, clicks "Log in", fills in the MockProvider's login form, submits, and lands
on the demo page showing the tenant context and the result of the call signed by
``BrokerAuth``. The cookies are then read from the browser itself: ``HttpOnly``,
``SameSite=Lax``, host-only, and none carries a token. A screenshot goes to a tmp path. Also:
an expired access token refreshed by ``BrokerAuth``, logout, a wrong password, two tabs logging
in at once, and an attacker's callback URL refused in the victim's browser (login CSRF).

Uses Debian's ``chromium`` (``executable_path``), never a Playwright browser download. Skips
with a reason where Chromium or Playwright is missing, except under ``CI=true``, where
``scripts/ci-deps.sh`` installs Chromium and the test must run.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from _fakes import FakeClock

from oauth2_broker_mw import demo
from oauth2_broker_mw._core.model import TenantId

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    reason = None
    if not Path(path).is_file():
        reason = "Debian's chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is not installed"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: scripts/ci-deps.sh must install it)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module; Playwright gives it a fresh temporary user-data-dir."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _new_context(browser: Any) -> Any:
    context = browser.new_context()
    context.set_default_timeout(20_000)
    return context


@pytest.fixture
def browser_context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (cookies, storage) per test."""
    context = _new_context(browser)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[demo.DemoServer]:
    with demo.serve_demo(data_dir=tmp_path / "data") as srv:
        yield srv


def test_chromium_logs_in_through_the_provider_form(
    browser_context: Any, server: demo.DemoServer, tmp_path: Path
) -> None:
    page = browser_context.new_page()
    page.goto(server.url + "/")
    assert page.inner_text("#principal") == "(none)"

    page.click("#login")  # the demo's "Log in"
    page.wait_for_url(f"{server.url}/idp/authorize?*")
    assert page.title() == "Mock IdP sign-in"
    page.fill("#username", demo.DEMO_USERNAME)
    page.fill("#password", demo.DEMO_PASSWORD)
    page.click("#login")  # the provider's "Sign in"

    page.wait_for_url(server.url + "/")
    page.wait_for_selector("#resource")
    assert page.inner_text("#tenant") == "default"
    assert page.inner_text("#principal") == demo.DEMO_USERNAME
    assert page.inner_text("#connections") == demo.DEMO_PROVIDER
    assert page.inner_text("#status") == "200"
    assert '"sub": "alice"' in page.inner_text("#resource")
    # The code and state left the address bar with the redirect to return_to.
    assert "code=" not in page.url
    assert "state=" not in page.url

    shot = tmp_path / "demo-logged-in.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000

    # Cookies as the browser holds them.
    keys = server.store.list_keys(TenantId("default"), demo.DEMO_USERNAME)
    assert len(keys) == 1
    record = server.store.get(keys[0])
    assert record is not None
    assert record.refresh_token is not None
    tokens = [record.access_token.get_secret_value(), record.refresh_token.get_secret_value()]
    cookies = browser_context.cookies(server.url)
    assert cookies, "the middleware set no session cookie"
    for cookie in cookies:
        assert cookie["httpOnly"] is True, cookie["name"]
        assert cookie["sameSite"] == "Lax", cookie["name"]
        assert cookie["domain"] == "127.0.0.1", cookie["name"]  # host-only
        assert cookie["path"] == "/", cookie["name"]
        for token in tokens:
            assert token not in cookie["value"], f"a token in cookie {cookie['name']}"
    # No token reachable from the page's script either.
    assert page.evaluate("document.cookie") == ""
    html = page.content()
    for token in tokens:
        assert token not in html

    # The provider forgets the access token: BrokerAuth gets a 401, refreshes once, retries.
    assert page.inner_text("#grant-refresh") == "0"
    page.click("#expire")
    page.wait_for_selector("#grant-refresh")
    assert page.inner_text("#grant-refresh") == "1"
    assert page.inner_text("#status") == "200"

    # Logging out (a POST with the browser's own Origin header) ends the session.
    page.click("#logout")
    page.wait_for_selector("#login")
    assert page.inner_text("#principal") == "(none)"
    assert server.store.list_keys(TenantId("default"), demo.DEMO_USERNAME) == []


def test_chromium_rejects_a_wrong_password_at_the_provider(
    browser_context: Any, server: demo.DemoServer
) -> None:
    page = browser_context.new_page()
    page.goto(server.url + "/")
    page.click("#login")
    page.wait_for_url(f"{server.url}/idp/authorize?*")
    page.fill("#username", demo.DEMO_USERNAME)
    page.fill("#password", "wrong")
    page.click("#login")
    page.wait_for_selector("#message")
    assert "Invalid username or password" in page.inner_text("#message")
    assert server.store.list_keys(TenantId("default"), demo.DEMO_USERNAME) == []


def _open_provider_form(page: Any, server: demo.DemoServer) -> None:
    page.goto(server.url + "/")
    page.click("#login")
    page.wait_for_url(f"{server.url}/idp/authorize?*")


def _sign_in(page: Any) -> None:
    page.fill("#username", demo.DEMO_USERNAME)
    page.fill("#password", demo.DEMO_PASSWORD)
    page.click("#login")


def test_two_tabs_log_in_at_once(browser_context: Any, server: demo.DemoServer) -> None:
    first, second = browser_context.new_page(), browser_context.new_page()
    _open_provider_form(first, server)
    _open_provider_form(second, server)  # two logins in flight in one browser
    _sign_in(second)
    second.wait_for_selector("#resource")
    _sign_in(first)  # the older flow is still valid: its state has its own cookie
    first.wait_for_selector("#resource")
    assert first.inner_text("#principal") == demo.DEMO_USERNAME
    assert second.inner_text("#principal") == demo.DEMO_USERNAME


def _attackers_callback(server: demo.DemoServer) -> str:
    """The attacker logs in with their own browser (httpx2 here) and keeps the callback URL."""
    with httpx2.Client(timeout=10) as attacker:
        start = attacker.get(server.url + "/oauth2/mock/login", params={"return_to": "/"})
        form_url = start.headers["location"]
        form = attacker.get(form_url)
        assert form.status_code == 200
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
        hidden = {k: html.unescape(v) for k, v in hidden.items()}
        answer = attacker.post(
            server.url + "/idp/authorize",
            data={**hidden, "username": "mallory", "password": "x", "action": "approve"},
        )
    assert answer.status_code in (302, 303), answer.text
    callback: str = answer.headers["location"]
    assert "/oauth2/mock/callback?" in callback
    return callback


def test_a_callback_from_another_browser_is_rejected(
    browser_context: Any, server: demo.DemoServer
) -> None:
    """Login CSRF: the attacker's callback URL, opened in the victim's browser, is refused."""
    server.provider.users = None  # any user may sign in, so the attacker can (as "mallory")
    callback = _attackers_callback(server)
    victim = browser_context.new_page()
    response = victim.goto(callback)
    assert response is not None
    assert response.status == 400
    assert victim.inner_text("#error-code").startswith("state_")
    victim.goto(server.url + "/")
    assert victim.inner_text("#principal") == "(none)"
    assert all(c["name"] != "obm_session" for c in browser_context.cookies(server.url))
    assert server.store.list_keys(TenantId("default"), "mallory") == []


# -- the pages a new user sees, at desktop and phone widths (issue 12, item 7) ----------------
WIDTHS = {"desktop": 1280, "phone": 390}


def _shots_dir(tmp_path: Path) -> Path:
    """Where the screenshots go: ``OBM_SCREENSHOTS`` (docs/images when the docs are refreshed:
    ``OBM_SCREENSHOTS=docs/images pytest tests/test_browser.py -k pages``), else tmp_path."""
    target = Path(os.environ.get("OBM_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_the_pages_explain_each_state(
    browser: Any, server: demo.DemoServer, tmp_path: Path, width: str
) -> None:
    shots = _shots_dir(tmp_path)
    context = browser.new_context(viewport={"width": WIDTHS[width], "height": 800})
    context.set_default_timeout(20_000)
    page = context.new_page()

    def shot(name: str) -> None:
        path = shots / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        # Nothing wider than the window: no sideways scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[width]

    try:
        page.goto(server.url + "/")
        assert "You are not connected to the demo provider yet" in page.inner_text("body")
        assert page.get_attribute("#api-link", "href") == "/api/me"
        shot("demo-start")

        page.click("#login")
        page.wait_for_url(f"{server.url}/idp/authorize?*")
        body = page.inner_text("body")
        assert "Sign in to continue" in body and "not a real sign-in" in body
        assert "test-client asks for: openid, profile" in body
        assert page.inner_text("#deny") == "Cancel and go back to the app"
        shot("provider-login")

        page.fill("#username", demo.DEMO_USERNAME)
        page.fill("#password", "wrong")
        page.click("#login")
        page.wait_for_selector("#message")
        assert "Invalid username or password" in page.inner_text("#message")
        shot("provider-wrong-password")

        page.click("#deny")  # the user cancels at the provider
        page.wait_for_selector("#error-title")
        assert page.title() == "The provider did not grant access"
        assert "The provider answered 'access_denied': The user denied access." in (
            page.inner_text("#error-description")
        )
        assert "If you cancelled, nothing has changed" in page.inner_text("#error-todo")
        shot("error-denied")

        page.click("#retry")  # "Start the sign-in again" leads back to the provider's form
        page.wait_for_url(f"{server.url}/idp/authorize?*")
        _sign_in(page)
        page.wait_for_selector("#sequence")
        assert page.inner_text("#principal") == demo.DEMO_USERNAME
        assert "no token request" in page.inner_text("#sequence-note")
        shot("demo-logged-in")

        page.click("#expire")
        page.wait_for_selector("#sequence")
        steps = page.inner_text("#sequence").splitlines()
        assert steps[0].startswith("GET /idp/resource") and steps[0].endswith("401")
        assert "POST /idp/token (grant_type=refresh_token)" in steps[1]
        assert steps[-1].startswith("GET /idp/resource") and steps[-1].endswith("200")
        assert "one refresh" in page.inner_text("#sequence-note")
        shot("demo-refreshed")

        # A plain link to the logout route asks first; Cancel changes nothing.
        page.goto(server.url + "/oauth2/logout?return_to=/%3Fsigned_out%3D1")
        assert page.inner_text("#logout-title") == "Sign out?"
        shot("logout-confirm")
        page.click("#cancel")
        page.wait_for_selector("#logout")
        assert page.inner_text("#principal") == demo.DEMO_USERNAME
        page.goto(server.url + "/oauth2/logout?return_to=/%3Fsigned_out%3D1")
        page.click("#logout")  # the confirmation's own form (no-referrer: Origin null + token)
        page.wait_for_selector("#signed-out")
        assert "You are signed out." in page.inner_text("#signed-out")
        assert page.inner_text("#revoked") != "0"
        assert page.inner_text("#principal") == "(none)"
        shot("demo-signed-out")
        # The logout link again, now signed out: nothing to sign out of, and the way back.
        page.goto(server.url + "/oauth2/logout")
        assert page.inner_text("#logout-title") == "You are not signed in"
        assert "There is nothing to sign out of." in page.inner_text("body")
        shot("logout-not-signed-in")
        page.click("#home")
        page.wait_for_selector("#login")

        response = page.goto(server.url + "/oauth2/mock/callback?state=forged&code=stolen")
        assert response is not None and response.status == 400
        assert page.title() == "This sign-in was not started here"
        assert "stolen" not in page.content() and "forged" not in page.content()
        shot("error-state")
        page.click("#home")
        page.wait_for_selector("#login")
    finally:
        context.close()


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_the_store_down_page(
    browser: Any, server: demo.DemoServer, tmp_path: Path, width: str
) -> None:
    """The token store stops answering after startup: the login says so, and what to do."""
    context = browser.new_context(viewport={"width": WIDTHS[width], "height": 800})
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        server.store.close()  # as if the disk went away under the running app
        page.click("#login")
        page.wait_for_selector("#error-title")
        assert page.title() == "The app cannot sign you in right now"
        assert "cannot reach its token store" in page.inner_text("#error-todo")
        assert page.inner_text("#error-code") == "store_unavailable"
        assert str(tmp_path) not in page.content()  # the path is for the server log only
        path = _shots_dir(tmp_path) / f"error-store-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[width]
    finally:
        context.close()


# -- every refusal page the demo can show, at desktop and phone widths (issue 12, item 7) -----
@pytest.fixture
def clocked_server(tmp_path: Path) -> Iterator[tuple[demo.DemoServer, FakeClock]]:
    """The demo with a middleware clock the test moves on (real time plus an offset)."""
    clock = FakeClock(ticking=True)
    with demo.serve_demo(data_dir=tmp_path / "data", clock=clock) as srv:
        yield srv, clock


def _sized_page(browser: Any, width: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": WIDTHS[width], "height": 800})
    context.set_default_timeout(20_000)
    return context, context.new_page()


def _error_shot(page: Any, tmp_path: Path, name: str, width: str) -> None:
    path = _shots_dir(tmp_path) / f"{name}-{width}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[width]


def _error(page: Any) -> dict[str, str]:
    """What an error page says, as the user reads it."""
    page.wait_for_selector("#error-title")
    found = {"title": page.title(), "badge": page.inner_text(".badge")}
    for part in ("title", "description", "todo", "code"):
        found[part if part != "title" else "heading"] = page.inner_text(f"#error-{part}")
    found["home"] = page.get_attribute("#home", "href") or ""
    found["retry"] = page.get_attribute("#retry", "href") if page.query_selector("#retry") else ""
    return found


def _not_found(page: Any, url: str, tmp_path: Path, width: str) -> dict[str, str]:
    """A 404 page (an unknown provider or tenant): check the address, or go back; no retry.
    Its screenshot is ``error-<code with dashes>-<width>.png``."""
    response = page.goto(url)
    assert response is not None and response.status == 404
    shown = _error(page)
    assert "Check the address, or go back to the app." in shown["todo"]
    assert shown["retry"] == "" and shown["home"] == "/"
    _error_shot(page, tmp_path, "error-" + shown["code"].replace("_", "-"), width)
    return shown


_CROSS_SITE_FORM = (
    "<!doctype html><title>Another site</title>"
    '<form method="post" action="{action}"><input type="hidden" name="return_to" value="/">'
    '<button id="go">Win a prize</button></form>'
)


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_the_refusal_pages_explain_each_state(
    browser: Any,
    clocked_server: tuple[demo.DemoServer, FakeClock],
    tmp_path: Path,
    width: str,
) -> None:
    """An expired login, a cross-site logout (403), a logout link fetched without asking for
    a page (405) and an unknown provider (404): each page names what happened, why, what to
    do, and links back to the app."""
    server, clock = clocked_server
    context, page = _sized_page(browser, width)
    try:
        # The login took longer than the flow cookie's 300 s: "This sign-in took too long".
        _open_provider_form(page, server)
        clock.advance(301)
        with page.expect_response(lambda r: "/oauth2/mock/callback?" in r.url) as answer:
            _sign_in(page)
        assert answer.value.status == 400
        shown = _error(page)
        assert shown["title"] == shown["heading"] == "This sign-in took too long"
        assert shown["badge"] == "400" and shown["code"] == "state_expired"
        assert "This login took too long; start again." in shown["description"]
        assert "must finish within a few minutes" in shown["todo"]
        assert shown["retry"].startswith("/oauth2/mock/login") and shown["home"] == "/"
        assert "code=" not in page.content() and "state=" not in page.content()
        _error_shot(page, tmp_path, "error-expired", width)
        page.click("#retry")  # a new login, in time, mends it
        page.wait_for_url(f"{server.url}/idp/authorize?*")
        _sign_in(page)
        page.wait_for_selector("#logout")
        assert page.inner_text("#principal") == demo.DEMO_USERNAME

        # Another site's form posts to the logout route: refused, the user stays signed in.
        action = server.url + "/oauth2/logout"
        context.route(
            "http://other.test/**",
            lambda route: route.fulfill(
                content_type="text/html", body=_CROSS_SITE_FORM.format(action=action)
            ),
        )
        page.goto("http://other.test/")
        with page.expect_response(action) as answer:
            page.click("#go")
        assert answer.value.status == 403
        shown = _error(page)
        assert shown["title"] == "Sign-out refused" and shown["code"] == "csrf_failed"
        assert "You are still signed in" in shown["todo"] and "Log out button" in shown["todo"]
        assert shown["retry"] == "" and shown["home"] == "/"
        _error_shot(page, tmp_path, "error-csrf", width)
        page.goto(server.url + "/")
        assert page.inner_text("#principal") == demo.DEMO_USERNAME

        # GET /oauth2/logout from something that does not ask for a page (a prefetcher, a
        # script): a 405 titled after it, never "Sign-in failed"; browsers get the form.
        page.route(
            action,
            lambda route: route.continue_(headers={**route.request.headers, "accept": "*/*"}),
        )
        response = page.goto(action)
        assert response is not None and response.status == 405
        assert response.headers["allow"] == "POST"
        shown = _error(page)
        assert shown["title"] == "This address does not take this kind of request"
        assert shown["code"] == "method_not_allowed"
        assert shown["description"] == "Log out with a POST request."
        assert "Use the app's own buttons and links." in shown["todo"]
        _error_shot(page, tmp_path, "error-method", width)
        page.unroute(action)
        page.click("#home")
        page.wait_for_selector("#logout")
        assert page.inner_text("#principal") == demo.DEMO_USERNAME  # still signed in

        # A provider the app does not have.
        shown = _not_found(page, server.url + "/oauth2/nosuch/login", tmp_path, width)
        assert shown["title"] == "No such sign-in provider"
        assert shown["code"] == "unknown_provider"
    finally:
        context.close()


@pytest.fixture
def tenant_app() -> Iterator[str]:
    """A two-workspace app (``/t/<tenant>/...``, a Registry) served by uvicorn; yields its URL.
    The demo has one tenant, so an unknown tenant's page is shown here."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from oauth2_broker_mw import MemoryStore
    from oauth2_broker_mw import Registration
    from oauth2_broker_mw import Registry
    from oauth2_broker_mw.middleware import BrokerMiddleware
    from oauth2_broker_mw.middleware import path_prefix_tenant
    from oauth2_broker_mw.testing import MockProvider
    from oauth2_broker_mw.testing._mock_transport import serve_app

    provider = MockProvider()
    descriptor = provider.descriptor(id="mock")
    registry = Registry(
        store=MemoryStore(),
        registrations={
            (t, "mock"): Registration("mock", descriptor, "test-client", "test-secret")
            for t in ("acme", "globex")
        },
    )
    app = Starlette(routes=[Route("/t/{tenant}/", lambda r: PlainTextResponse("home"))])
    app.add_middleware(
        BrokerMiddleware,
        registry=registry,
        tenant_resolver=path_prefix_tenant(),
        secret_key="Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        base_url="http://127.0.0.1",
    )
    with serve_app(app) as (host, port):
        yield f"http://{host}:{port}"


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_the_unknown_tenant_page(browser: Any, tenant_app: str, tmp_path: Path, width: str) -> None:
    context, page = _sized_page(browser, width)
    try:
        shown = _not_found(
            page, tenant_app + "/oauth2/mock/login?return_to=/t/initech/", tmp_path, width
        )
        assert shown["title"] == "No such workspace" and shown["code"] == "unknown_tenant"
        assert shown["description"] == "No such tenant."
    finally:
        context.close()
