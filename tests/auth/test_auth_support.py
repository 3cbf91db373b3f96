"""Harness for the BrokerAuth suites (holds no tests).

Owns: the header-recording "resource server" app (with redirects), an in-process "internet"
(one ASGI app dispatching by host), in-process transports for all five clients (httpx2 and
httpx, sync and async, and a requests adapter), loopback serving, and ``Driver``: one async
call interface over the five clients so one behavioural suite runs on each.
Must not import: anything from oauth2_broker_mw but the public API and ``testing``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import httpx
import httpx2
import requests
import requests.adapters
import urllib3
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import RedirectResponse
from starlette.responses import Response
from starlette.routing import Route

from oauth2_broker_mw.testing._mock_transport import LoopThread
from oauth2_broker_mw.testing._mock_transport import SyncASGITransport

CLIENTS = ("httpx2", "httpx2-async", "httpx", "httpx-async", "requests")
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


# -- a resource server that records what reached it ----------------------------------------
@dataclass
class Seen:
    scheme: str
    host: str
    port: int | None
    path: str
    authorization: str | None
    body: bytes
    dpop: str | None = None


@dataclass
class Recorder:
    """``/echo`` records each request; ``/redirect?to=<url>&status=302`` redirects."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/echo", self._echo, methods=["GET", "POST", "PUT"]),
                Route("/redirect", self._redirect, methods=["GET", "POST", "PUT"]),
                Route("/challenge", self._challenge, methods=["GET", "POST"]),
            ]
        )

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()

    def authorizations(self) -> list[str | None]:
        with self.lock:
            return [s.authorization for s in self.seen]

    def proofs(self) -> list[str | None]:
        """The ``DPoP`` header of each recorded request (``None``: none)."""
        with self.lock:
            return [s.dpop for s in self.seen]

    async def _record(self, request: Request) -> None:
        body = await request.body()
        with self.lock:
            self.seen.append(
                Seen(
                    request.url.scheme,
                    request.url.hostname or "",
                    request.url.port,
                    request.url.path,
                    request.headers.get("authorization"),
                    body,
                    request.headers.get("dpop"),
                )
            )

    async def _echo(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"signed": "authorization" in request.headers})

    async def _redirect(self, request: Request) -> Response:
        await self._record(request)
        status = int(request.query_params.get("status", "302"))
        return RedirectResponse(request.query_params["to"], status_code=status)

    async def _challenge(self, request: Request) -> Response:
        """A 401 with the challenge given in ``?www=`` (empty: no header at all)."""
        await self._record(request)
        www = request.query_params.get("www", "")
        headers = {"WWW-Authenticate": www} if www else {}
        status = int(request.query_params.get("status", "401"))
        return JSONResponse({"error": "nope"}, status_code=status, headers=headers)


def host_router(apps: dict[str, ASGIApp]) -> ASGIApp:
    """One ASGI app for many in-process hosts (by the request's Host header)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1").rsplit(":", 1)[0] if b"]" not in value else ""
        target = apps.get(host)
        if target is None:
            response = JSONResponse({"error": f"no such host {host!r}"}, status_code=502)
            await response(scope, receive, send)
            return
        await target(scope, receive, send)

    return app


# -- in-process transports for the five clients ---------------------------------------------
class HttpxToHttpx2(httpx.BaseTransport):
    """A sync ``httpx`` transport that runs the request through an httpx2 sync transport."""

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        forwarded = httpx2.Request(
            request.method, str(request.url), headers=request.headers.raw, content=body
        )
        response = self._inner.handle_request(forwarded)
        content = response.read()
        return httpx.Response(
            response.status_code, headers=response.headers.raw, content=content, request=request
        )


class InProcessAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter that answers from an httpx2 sync transport (no sockets)."""

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        super().__init__()
        self._inner = inner

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        body = request.body
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        elif hasattr(body, "read"):
            data = body.read()
        else:
            data = b"".join(body)
        forwarded = httpx2.Request(
            request.method or "GET", request.url or "", headers=dict(request.headers), content=data
        )
        response = self._inner.handle_request(forwarded)
        content = response.read()
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(content),
            headers=list(response.headers.multi_items()),
            status=response.status_code,
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)


@dataclass
class Result:
    status: int
    json: Any
    history: list[int]
    url: str


class Driver:
    """One of the five clients behind ``await driver.send(...)``."""

    def __init__(
        self,
        kind: str,
        auth: Any,
        *,
        inprocess_app: ASGIApp | None,
        loop: LoopThread | None,
        verify: str | None = None,
    ) -> None:
        self.kind = kind
        self.auth = auth
        self._async = kind.endswith("-async")
        sync_inner = SyncASGITransport(inprocess_app, loop) if inprocess_app and loop else None
        tls1: dict[str, Any] = {}
        tls2: dict[str, Any] = {}
        if verify is not None:
            import ssl

            tls1["verify"] = ssl.create_default_context(cafile=verify)
            tls2["verify"] = ssl.create_default_context(cafile=verify)
        if kind == "httpx2":
            self._client: Any = httpx2.Client(auth=auth, transport=sync_inner, **tls2)
        elif kind == "httpx2-async":
            transport = httpx2.ASGITransport(app=inprocess_app) if inprocess_app else None
            self._client = httpx2.AsyncClient(auth=auth, transport=transport, **tls2)
        elif kind == "httpx":
            transport2 = HttpxToHttpx2(sync_inner) if sync_inner else None
            self._client = httpx.Client(auth=auth, transport=transport2, **tls1)
        elif kind == "httpx-async":
            transport3 = httpx.ASGITransport(app=inprocess_app) if inprocess_app else None
            self._client = httpx.AsyncClient(auth=auth, transport=transport3, **tls1)
        elif kind == "requests":
            session = requests.Session()
            session.auth = auth
            session.trust_env = False
            if verify is not None:
                session.verify = verify
            if sync_inner is not None:
                adapter = InProcessAdapter(sync_inner)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
            self._client = session
        else:  # pragma: no cover
            raise ValueError(kind)

    def _stream_sync(self, chunks: list[bytes]) -> Iterator[bytes]:
        yield from chunks

    async def _stream_async(self, chunks: list[bytes]) -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        stream: list[bytes] | None = None,
        follow_redirects: bool = True,
    ) -> Result:
        body: Any = content
        if stream is not None:
            body = self._stream_async(stream) if self._async else self._stream_sync(stream)
        if self.kind == "requests":
            r = self._client.request(method, url, data=body, allow_redirects=follow_redirects)
            return Result(
                r.status_code, _json(r.content), [h.status_code for h in r.history], r.url
            )
        if self._async:
            resp = await self._client.request(
                method, url, content=body, follow_redirects=follow_redirects
            )
        else:
            resp = self._client.request(
                method, url, content=body, follow_redirects=follow_redirects
            )
        return Result(
            resp.status_code,
            _json(resp.content),
            [h.status_code for h in resp.history],
            str(resp.url),
        )

    async def send_raw(self, method: str, url: str, **kwargs: Any) -> Result:
        """Pass keyword arguments straight to the client's ``request``."""
        if self.kind == "requests":
            r = self._client.request(method, url, **kwargs)
            return Result(
                r.status_code, _json(r.content), [h.status_code for h in r.history], r.url
            )
        if self._async:
            resp = await self._client.request(method, url, **kwargs)
        else:
            resp = self._client.request(method, url, **kwargs)
        return Result(
            resp.status_code,
            _json(resp.content),
            [h.status_code for h in resp.history],
            str(resp.url),
        )

    async def aclose(self) -> None:
        if self._async:
            await self._client.aclose()
        else:
            self._client.close()


def _json(content: bytes) -> Any:
    import json

    try:
        return json.loads(content)
    except ValueError:
        return None


# -- loopback TLS ----------------------------------------------------------------------------
def make_loopback_cert(directory: Any) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own trust anchor); (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "loopback-cert.pem"
    key_path = directory / "loopback-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@contextmanager
def serve_tls(app: Any, certfile: str, keyfile: str) -> Iterator[int]:
    """Serve ``app`` over https on 127.0.0.1 (ephemeral port, uvicorn thread); yield the port."""
    import socket
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
        loop="asyncio",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("TLS test server did not start")
        time.sleep(0.005)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
