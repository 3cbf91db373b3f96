"""A real browser logs in through the demo: headless Debian Chromium driven by Playwright.

The demo (``oauth2-broker demo``'s app) is served by uvicorn on an ephemeral loopback port.
Chromium opens it, clicks "Log in", fills in the MockProvider's login form, submits, and lands
on the demo page showing the tenant context and the result of the call signed by
``BrokerAuth``. The cookies are then read from the browser itself: ``HttpOnly``,
``SameSite=Lax``, host-only, and none carries a token. A screenshot goes to a tmp path.

Uses Debian's ``chromium`` (``executable_path``), never a Playwright browser download. Skips
with a reason where Chromium or Playwright is missing, except under ``CI=true``, where
``scripts/ci-deps.sh`` installs Chromium and the test must run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir per test
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(20_000)
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
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
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
