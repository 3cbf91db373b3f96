"""Certificates are checked on every TLS connection (SECURITY C1, F4).

A TLS listener on ``127.0.0.1`` presents a self-signed certificate that no default trust store
holds. The broker's own HTTP clients (to the authorization server) and the application's clients
signed by ``BrokerAuth`` (to a resource server) must abort the handshake, so no request and no
token is ever sent. The same calls, against a real server with that certificate, succeed once
the certificate is trusted, so what fails is the certificate check.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
import requests
from test_auth_support import Recorder
from test_auth_support import make_loopback_cert
from test_auth_support import serve_tls

from oauth2_broker_mw._core.errors import TransportError
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing.mock_provider import MockProvider

Call = Callable[..., Any]
CLIENT_ID, SECRET = "test-client", "test-secret"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_loopback_cert(tmp_path_factory.mktemp("tls"))


def _trusting(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


@contextmanager
def handshake_listener(certfile: str, keyfile: str) -> Iterator[tuple[int, list[str]]]:
    """A TLS listener that only runs handshakes; yields (port, the server side's outcomes)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    outcomes: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with context.wrap_socket(conn, server_side=True):
                        outcomes.append("handshake completed")
                except (ssl.SSLError, OSError) as exc:
                    outcomes.append(f"handshake failed: {exc}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], outcomes
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_the_broker_refuses_an_authorization_server_with_an_untrusted_certificate(
    cert: tuple[str, str], call: Call
) -> None:
    with handshake_listener(*cert) as (port, outcomes):
        mp = MockProvider(issuer=f"https://127.0.0.1:{port}")
        broker = Broker(mp.descriptor(), client_id=CLIENT_ID, client_secret=SECRET, timeout=5)
        with pytest.raises(TransportError) as info:
            call(broker, "service_lease", tenant="acme", scopes=["read"])
        call(broker, "close")
    assert SECRET not in str(info.value)
    assert outcomes and all(o.startswith("handshake failed") for o in outcomes), outcomes


def test_the_broker_talks_to_the_same_certificate_once_it_is_trusted(cert: tuple[str, str]) -> None:
    mp = MockProvider()

    def broker(**clients: Any) -> Broker:
        return Broker(mp.descriptor(), client_id=CLIENT_ID, client_secret=SECRET, **clients)

    async def async_lease() -> str:
        async with httpx2.AsyncClient(verify=_trusting(cert[0])) as client:
            b = broker(async_http_client=client)
            lease = await b.aservice_lease(tenant="acme", scopes=["read"])
            await b.aclose()
            return lease.access_token.get_secret_value()

    with serve_tls(mp.app, *cert) as port:
        mp.issuer = f"https://127.0.0.1:{port}"
        with httpx2.Client(verify=_trusting(cert[0])) as client:
            b = broker(http_client=client)
            assert b.service_lease(tenant="acme", scopes=["read"]).access_token
            b.close()
        assert asyncio.run(async_lease())
    assert mp.counters["token:client_credentials"] == 2


def test_brokerauth_never_sends_a_token_to_a_resource_server_with_an_untrusted_certificate(
    cert: tuple[str, str],
) -> None:
    mp = MockProvider()
    broker = Broker(
        mp.descriptor(), client_id=CLIENT_ID, client_secret=SECRET, http_client=mp.client()
    )
    auth = BrokerAuth.for_service(broker, ["read"])
    with handshake_listener(*cert) as (port, outcomes):
        url = f"https://127.0.0.1:{port}/echo"
        with httpx2.Client(auth=auth) as client, pytest.raises(httpx2.ConnectError):
            client.get(url)
        with requests.Session() as session, pytest.raises(requests.exceptions.SSLError):
            session.get(url, auth=auth, timeout=5)
    assert len(outcomes) >= 2 and all(o.startswith("handshake failed") for o in outcomes)

    rec = Recorder()
    with (
        serve_tls(rec.app, *cert) as port,
        httpx2.Client(auth=auth, verify=_trusting(cert[0])) as client,
    ):
        assert client.get(f"https://127.0.0.1:{port}/echo").json() == {"signed": True}
    assert [s.authorization is not None for s in rec.seen] == [True]
    broker.close()
