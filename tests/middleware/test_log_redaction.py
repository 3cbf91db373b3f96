"""Access logs of real servers carry no callback ``code`` or ``state`` with ``RedactOAuthQuery``
(issue 12, item 10).

uvicorn, werkzeug (Flask's dev server) and Django's runserver handler each serve a real request
on a loopback port to a callback URL carrying a code, a state and a token; the access line is
captured as the server logs it, and formatted with the server's own formatter where it has one
(uvicorn's unpacks ``record.args``). Failed on the main of 2026-12-06: there was no filter, and
the lines held the code and the state.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from oauth2_broker_mw.middleware import RedactOAuthQuery

CODE = "SplxlOBeZQQYbYS6WxSbIA"
STATE = "af0ifjsldkj-state"
TOKEN = "at-2YotnFZFEjr1zCsicMWpAA"
QUERY = (
    f"/oauth2/acme/callback?code={CODE}&state={STATE}&iss=https%3A%2F%2Fidp&access_token={TOKEN}"
)


def _wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("400 Bad Request", [("content-type", "text/plain")])  # type: ignore[operator]
    return [b"no"]


@pytest.fixture
def redacting() -> Iterator[RedactOAuthQuery]:
    loggers = ("uvicorn.access", "werkzeug", "django.server")
    before = {n: list(logging.getLogger(n).filters) for n in loggers}
    yield RedactOAuthQuery.install()
    for name, filters in before.items():
        logging.getLogger(name).filters[:] = filters


def _assert_clean(lines: list[str]) -> None:
    assert lines, "the server logged no access line"
    text = "\n".join(lines)
    assert "/oauth2/acme/callback?code=[redacted]&state=[redacted]" in text, text
    assert "access_token=[redacted]" in text and "iss=https" in text, text
    for secret in (CODE, STATE, TOKEN):
        assert secret not in text


def test_uvicorn_access_log(redacting: RedactOAuthQuery, caplog: pytest.LogCaptureFixture) -> None:
    import uvicorn
    from uvicorn.logging import AccessFormatter

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 400, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"no"})  # type: ignore[operator]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=True, lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        thread.start()
        try:
            for _ in range(200):
                if server.started:
                    break
                threading.Event().wait(0.02)
            assert httpx2.get(f"http://127.0.0.1:{port}{QUERY}").status_code == 400
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
    records = [r for r in caplog.records if r.name == "uvicorn.access"]
    formatter = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s')
    _assert_clean([formatter.format(r) for r in records])


def _access_lines(server: Any, logger: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Serve one request to QUERY with a socketserver-based WSGI server; its access lines."""
    thread = threading.Thread(target=server.serve_forever)
    with caplog.at_level(logging.INFO, logger=logger):
        thread.start()
        try:
            httpx2.get(f"http://127.0.0.1:{server.server_port}{QUERY}")
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_werkzeug_dev_server_log(
    redacting: RedactOAuthQuery, caplog: pytest.LogCaptureFixture
) -> None:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, _wsgi_app)
    _assert_clean(_access_lines(server, "werkzeug", caplog))


def test_django_runserver_log(
    redacting: RedactOAuthQuery, caplog: pytest.LogCaptureFixture
) -> None:
    from django.core.servers.basehttp import WSGIRequestHandler
    from django.core.servers.basehttp import WSGIServer

    server = WSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(_wsgi_app)
    _assert_clean(_access_lines(server, "django.server", caplog))


def test_dict_config_and_gunicorn_atoms() -> None:
    import logging.config

    # The dotted path Django's LOGGING / dictConfig takes resolves to the filter class.
    resolved = logging.config.BaseConfigurator({}).resolve(
        "oauth2_broker_mw.middleware.RedactOAuthQuery"
    )
    assert resolved is RedactOAuthQuery
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, "%(r)s %(q)s", None, None
    )
    record.args = {"r": f"GET {QUERY} HTTP/1.1", "q": f"code={CODE}&state={STATE}"}
    assert RedactOAuthQuery().filter(record) is True
    message = record.getMessage()
    assert CODE not in message and STATE not in message
    assert message.endswith("code=[redacted]&state=[redacted]")


def test_install_is_idempotent() -> None:
    logger = logging.getLogger("obm-test-redaction")
    try:
        RedactOAuthQuery.install("obm-test-redaction")
        RedactOAuthQuery.install("obm-test-redaction")
        assert sum(isinstance(f, RedactOAuthQuery) for f in logger.filters) == 1
    finally:
        logger.filters.clear()
