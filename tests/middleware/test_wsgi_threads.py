"""The WSGI middleware under a threaded server: 64 threads logging in, making logged-in
requests and logging out at once give 0 errors (issue 8: the per-worker caches were plain
dicts mutated by every thread, and ``pop(next(iter(d)))`` could raise ``RuntimeError``)."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import WSGIServer
from wsgiref.simple_server import make_server

import httpx2
import pytest

from oauth2_broker_mw import Broker
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
from oauth2_broker_mw.stores.memory import MemoryStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

THREADS, ROUNDS = 64, 3
SECRET = "wsgi-threads-secret-" + "Zr8Lq3Vt6Np1Hs9Kw4Bd7Jy2Fc5Gm0X"


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def _whoami(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    ctx = environ["oauth2_broker"]
    body = json.dumps({"principal": ctx.principal}).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


@pytest.fixture
def served() -> Iterator[tuple[str, MockProvider]]:
    mp = MockProvider()
    broker = Broker(
        mp.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="test-client",
        client_secret="test-secret",
        store=MemoryStore(),
        http_client=mp.client(),
    )
    server = make_server("127.0.0.1", 0, _whoami, _ThreadingServer, _Quiet)
    base = f"http://127.0.0.1:{server.server_port}"
    server.set_app(
        BrokerWSGIMiddleware(_whoami, brokers={"mock": broker}, secret_key=SECRET, base_url=base)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, mp
    finally:
        server.shutdown()
        server.server_close()
        broker.close()
        mp.close()


def test_64_threads_of_logins_requests_and_logouts_give_no_errors(
    served: tuple[str, MockProvider],
) -> None:
    base, mp = served
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def user(n: int) -> None:
        try:
            with httpx2.Client(base_url=base, timeout=30) as browser, mp.client() as idp:
                start.wait()
                for _ in range(ROUNDS):
                    login = browser.get("/oauth2/mock/login", params={"return_to": "/"})
                    assert login.status_code == 302, login.text
                    approved = idp.get(login.headers["location"] + f"&login_hint=user{n}")
                    assert approved.status_code == 302, approved.text
                    done = browser.get(approved.headers["location"])
                    assert done.status_code == 303, done.text
                    for _ in range(5):
                        me = browser.get("/")
                        assert me.status_code == 200 and me.json()["principal"], me.text
                    out = browser.post("/oauth2/logout", headers={"origin": base})
                    assert out.status_code == 303, out.text
                    assert browser.get("/").json()["principal"] is None
        except BaseException as exc:  # collected: one failing thread must not hide the others
            errors.append(f"user{n}: {type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=user, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
