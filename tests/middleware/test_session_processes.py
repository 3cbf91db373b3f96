"""Sessions across worker processes (SECURITY J10, issue 9): the second worker is a process
of its own, with its own memory, sharing only the store (SQLite file, Redis).

A session planted before a login gives the attacker nothing there, and a logged-out session
is refused there, although that process never saw the login or the logout.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from _services import redis_cleanup
from _services import require_redis
from _services import unique_name
from _session_worker import build_app

from oauth2_broker_mw.testing.mock_provider import MockProvider

pytestmark = pytest.mark.slow
BASE = "http://127.0.0.1"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"kind": "sqlite", "path": str(tmp_path / "tokens.db")}
        return
    prefix = unique_name("sessproc") + ":"
    yield {"kind": "redis", "url": require_redis(), "prefix": prefix}
    redis_cleanup(prefix)


@pytest.fixture
def workers(store_spec: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """(the first worker, an ASGI app in this process; the second worker's base URL)."""
    mp = MockProvider()
    with mp.serve():
        config = {
            "store": store_spec,
            "descriptor": base64.b64encode(pickle.dumps(mp.descriptor(id="honest"))).decode(),
            "client_id": mp.default_client.client_id,
            "client_secret": mp.default_client.client_secret,
            "secret_key": "session-processes-" + "Zt5Lq8Wm3Xr7Vb2Np9Kd4Hs6Jy1",
            "base_url": BASE,
            "scopes": ["email"],  # no openid: the principal is a fresh id per login
        }
        second = subprocess.Popen(
            [sys.executable, str(TESTS / "_session_worker.py"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=TESTS,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
        )
        try:
            assert second.stdout is not None
            port = int(second.stdout.readline())
            yield build_app(config), f"http://127.0.0.1:{port}"
        finally:
            assert second.stdin is not None
            second.stdin.close()
            second.wait(timeout=30)
            second.stdout.close()


def _login(app: Any, cookies: dict[str, str] | None = None) -> Any:
    from starlette.testclient import TestClient

    browser = TestClient(app, base_url=BASE, follow_redirects=False)
    for name, value in (cookies or {}).items():
        browser.cookies.set(name, value, domain="127.0.0.1")  # planted before the login
    start = browser.get("/oauth2/honest/login", params={"return_to": "/whoami"})
    assert start.status_code == 302, start.text
    approved = httpx2.get(start.headers["location"])
    assert approved.status_code == 302, approved.text
    callback = urllib.parse.urlsplit(approved.headers["location"])
    done = browser.get(f"{callback.path}?{callback.query}")
    assert done.status_code == 303, done.text
    return browser


def _on(url: str, cookies: dict[str, str], path: str) -> httpx2.Response:
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return httpx2.get(url + path, headers={"cookie": header, "accept": "application/json"})


def test_a_planted_pre_login_session_gives_the_attacker_nothing_in_another_process(
    workers: tuple[Any, str],
) -> None:
    app, second = workers
    attacker = _login(app)
    planted = dict(attacker.cookies)
    attackers = attacker.get("/whoami").json()["principal"]
    assert attackers
    victim = _login(app, cookies=planted)  # the planted cookie, then the victim's own login
    victims = victim.get("/lease").json()
    assert victims["principal"] != attackers
    # the second process never saw either login
    assert _on(second, dict(victim.cookies), "/lease").json() == victims
    seen = _on(second, planted, "/whoami").json()["principal"]
    assert seen in (attackers, None)
    leased = _on(second, planted, "/lease")
    assert victims["token"] not in leased.text
    assert leased.status_code == 401 or leased.json()["principal"] == attackers


def test_a_logged_out_session_is_refused_by_another_process(workers: tuple[Any, str]) -> None:
    app, second = workers
    user = _login(app)
    cookies = dict(user.cookies)
    assert _on(second, cookies, "/whoami").json()["principal"] is not None
    out = user.post("/oauth2/logout", data={"return_to": "/whoami"}, headers={"origin": BASE})
    assert out.status_code == 303
    # the second process trusts its last "not revoked" answer for session_check_interval
    # (1 s by default, docs/middleware.md); after that it asks the store, which says revoked
    time.sleep(1.2)
    assert _on(second, cookies, "/whoami").json()["principal"] is None
    assert _on(second, cookies, "/lease").status_code == 401
