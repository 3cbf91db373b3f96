"""A provider cannot hold or bloat the client (issue 10): real loopback HTTP servers.

One server trickles its token response a byte at a time for a minute, others send 10 MB
(declared in ``Content-Length``, or chunked without one). The broker's own HTTP clients are
used, sync and async, through the one driver. No timing is asserted: the trickling server
records that the client hung up long before its minute was over.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import TransportError
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw._drivers import SyncDriver
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.discovery import discover
from oauth2_broker_mw.stores.memory import MemoryStore

TEN_MB = 10 * 1024 * 1024
TOKEN = b'{"access_token": "at-SECRET", "token_type": "Bearer", "expires_in": 60}'


class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hung_up: threading.Event
    sent: list[int]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        mode = self.path.strip("/").split("/")[0]
        try:
            if mode == "trickle":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(600))
                self.end_headers()
                for _ in range(600):  # a minute, one byte every 0.1 s
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    self.sent[0] += 1
                    time.sleep(0.1)
            elif mode == "declared":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(TEN_MB))
                self.end_headers()
                self._stream(TEN_MB)
            elif mode == "chunked":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                piece = b'{"access_token": "' + b"a" * 65536
                for _ in range(TEN_MB // len(piece)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(TOKEN)))
                self.end_headers()
                self.wfile.write(TOKEN)
        except (BrokenPipeError, ConnectionResetError):
            self.hung_up.set()

    def _stream(self, total: int) -> None:
        chunk = b"a" * 65536
        for _ in range(total // len(chunk)):
            self.wfile.write(chunk)

    do_POST = _answer
    do_GET = _answer


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Hostile]]]:
    handler = type("Handler", (_Hostile,), {"hung_up": threading.Event(), "sent": [0]})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _broker(base: str, mode: str, **kwargs: Any) -> Broker:
    descriptor = ProviderDescriptor(
        id="hostile",
        token_endpoint=f"{base}/{mode}/token",
        grants=["client_credentials"],
    )
    return Broker(descriptor, client_id="c", client_secret="s", **kwargs)


def _lease(broker: Broker, kind: str) -> Any:
    if kind == "sync":
        try:
            return broker.lease(tenant="acme", principal="svc", scopes=["read"])
        finally:
            broker.close()

    async def go() -> Any:
        try:
            return await broker.alease(tenant="acme", principal="svc", scopes=["read"])
        finally:
            await broker.aclose()

    return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_well_behaved_loopback_provider_still_works(server: Any, kind: str) -> None:
    base, _ = server
    lease = _lease(_broker(base, "ok", timeout=5.0), kind)
    assert lease.token_type == "Bearer"


def test_a_trickling_body_is_cut_at_the_total_deadline(server: Any, kind: str) -> None:
    base, handler = server
    broker = _broker(base, "trickle", timeout=1.0)  # every read is quick: only a total bounds it
    with pytest.raises(TransportError) as info:
        _lease(broker, kind)
    assert "did not complete within 1s" in str(info.value)
    # The client hung up long before the server's minute of trickling was over.
    assert handler.hung_up.wait(30), "the client kept reading the trickling body"
    assert handler.sent[0] < 600
    assert broker.store.list_keys("acme") == []


@pytest.mark.parametrize("mode", ["declared", "chunked"])
def test_a_ten_megabyte_body_is_refused_while_streaming(server: Any, kind: str, mode: str) -> None:
    base, _ = server
    broker = _broker(base, mode, timeout=30.0)
    with pytest.raises(TransportError) as info:
        _lease(broker, kind)
    assert f"larger than {1024 * 1024} bytes" in str(info.value)
    assert "max_response_bytes" in str(info.value)
    assert broker.store.list_keys("acme") == []


def test_the_cap_is_configurable(server: Any, kind: str) -> None:
    base, _ = server
    with pytest.raises(TransportError, match="larger than 32 bytes"):
        _lease(_broker(base, "ok", max_response_bytes=32), kind)
    with pytest.raises(ConfigurationError):
        SyncDriver(MemoryStore(), lambda: None, max_response_bytes=0)


def test_discovery_metadata_is_capped_too(server: Any) -> None:
    base, _ = server
    with pytest.raises(TransportError, match="larger than"):
        discover(f"{base}/chunked", id="hostile")
