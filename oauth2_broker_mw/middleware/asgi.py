"""``BrokerMiddleware``: the pure ASGI shell around :mod:`._core` (Starlette, FastAPI, any ASGI).

Owns: turning an ASGI scope into a :class:`~._core.BrokerRequest`, reading the (small) logout
form body, sending early responses as ASGI messages, adding the session cookie to the app's
response start, and catching ``AuthorizationRequired`` before the response has started.
``websocket`` scopes pass straight through; on ``lifespan`` startup every store is checked
first (``check_stores=True``), and a store that cannot be used fails the startup with its
reason instead of the first login.

Must not import: starlette (pure ASGI, no ``BaseHTTPMiddleware``), httpx, the WSGI shell.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import MutableMapping
from typing import TYPE_CHECKING
from typing import TypeAlias
from typing import cast

from .._core.errors import AuthorizationRequired
from .._core.errors import ProviderNotEnabled
from .._core.errors import StorageError
from .._core.errors import UnknownTenant
from ..stores import acheck_store
from ._calls import adrive
from ._config import CONTEXT_KEY
from ._context import Prepared
from ._core import MiddlewareShell
from ._http import BrokerRequest
from ._http import Response

if TYPE_CHECKING:
    pass

__all__ = ["BrokerMiddleware"]

log = logging.getLogger("oauth2_broker_mw.middleware")

Scope: TypeAlias = MutableMapping[str, object]
Message: TypeAlias = MutableMapping[str, object]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


def _raw_headers(scope: Scope) -> Iterable[tuple[bytes, bytes]]:
    return cast("Iterable[tuple[bytes, bytes]]", scope.get("headers") or ())


class _ASGIRequest(BrokerRequest):
    """A :class:`BrokerRequest` reading the scope lazily (the pass-through path stays cheap)."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:  # no super().__init__: every field is lazy
        self._scope = scope
        self.raw = scope
        self.method = str(scope.get("method", "GET"))
        self.path = str(scope.get("path", "/"))
        self.return_to = None
        self._headers = None

    @property
    def query_string(self) -> str:
        raw = self._scope.get("query_string")
        return raw.decode("latin-1") if isinstance(raw, bytes) else ""

    @property
    def client_host(self) -> str | None:
        client = self._scope.get("client")
        return str(client[0]) if isinstance(client, list | tuple) and client else None

    def _build_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for raw_name, raw_value in _raw_headers(self._scope):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in headers:
                headers[name] += ("; " if name == "cookie" else ", ") + value
            else:
                headers[name] = value
        return headers

    @property
    def cookie(self) -> str | None:
        if self._headers is not None:
            return self._headers.get("cookie")
        found: bytes | None = None  # one pass, no list: this runs on every request
        for name, value in _raw_headers(self._scope):
            if name == b"cookie":
                found = value if found is None else found + b"; " + value
        return None if found is None else found.decode("latin-1")


async def _send_response(response: Response, send: Send, *, head: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


class BrokerMiddleware(MiddlewareShell[ASGIApp]):
    """Login, callback and logout routes plus a per-request broker context, as pure ASGI.

    ::

        app.add_middleware(BrokerMiddleware, brokers={"acme": broker},
                           scopes={"acme": ["openid", "email"]}, secret_key="...",
                           base_url="https://app.example.com")
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.core.check_stores:
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        core = self.core
        request = _ASGIRequest(scope)
        route = core.match(request.path)
        if route is not None:
            body = b""
            if core.wants_body(route, request.method):
                body = await self._read_body(receive, core.max_body)
            response = await adrive(core.handle(route, request, body))
            await _send_response(response, send, head=request.method == "HEAD")
            return
        prepared = core.prepare(request)
        if not isinstance(prepared, Prepared):
            if not isinstance(prepared, Response):  # a session to check in the store: run it
                prepared = await adrive(prepared)
            if isinstance(prepared, Response):
                await _send_response(prepared, send, head=request.method == "HEAD")
                return
        context = prepared.context
        scope[CONTEXT_KEY] = context
        state = scope.get("state")
        scope["state"] = (
            {**state, CONTEXT_KEY: context} if isinstance(state, dict) else {CONTEXT_KEY: context}
        )
        extra = (
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in prepared.set_cookies]
            if prepared.set_cookies
            else None
        )
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if extra:
                    headers = cast("Iterable[tuple[bytes, bytes]]", message.get("headers", ()))
                    message["headers"] = [*headers, *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except (AuthorizationRequired, UnknownTenant, ProviderNotEnabled) as exc:
            if started:
                raise
            response = core.answer(request, exc)
            await _send_response(response, send, head=request.method == "HEAD")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the stores on ``lifespan.startup``, before the app starts; on failure answer
        ``lifespan.startup.failed`` with the reason (uvicorn logs it and exits) and raise the
        store's error (``with TestClient(app)`` raises it)."""
        first = await receive()
        if first.get("type") == "lifespan.startup":
            try:
                for store in self.core.stores():
                    await acheck_store(store)
            except StorageError as exc:
                reason = (
                    f"oauth2-broker-mw: a token store is unusable at startup: {exc} "
                    "(BrokerMiddleware(check_stores=False) starts without this check)"
                )
                log.error("%s", reason)
                await send({"type": "lifespan.startup.failed", "message": reason})
                raise  # as Starlette's router does: the server (or TestClient) ends the lifespan
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            if not isinstance(chunk, bytes):
                break
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks) if size <= limit else b""
