"""``BrokerWSGIMiddleware``: the WSGI shell around :mod:`._core` (Flask, Django, any WSGI app).

Owns: turning a WSGI environ into a :class:`~._core.BrokerRequest`, reading the (small) logout
form body, answering broker routes with the sync broker methods, adding the session cookie to
the app's response, and turning ``AuthorizationRequired`` into a login redirect or a 401 —
whether it propagates out of the app, or the framework already turned it into a 5xx page after
it was raised through ``environ["oauth2_broker"].lease()``.

Must not import: flask, django, asyncio, httpx, the ASGI shell.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING
from typing import TypeAlias
from typing import Unpack
from wsgiref.types import StartResponse
from wsgiref.types import WSGIApplication
from wsgiref.types import WSGIEnvironment

from .._core.errors import AuthorizationRequired
from .._core.errors import ProviderNotEnabled
from .._core.errors import StorageError
from .._core.errors import UnknownTenant
from ..stores import check_store
from ._calls import drive
from ._config import CONTEXT_KEY
from ._config import MiddlewareOptions
from ._context import Prepared
from ._core import MiddlewareShell
from ._http import BrokerRequest
from ._http import Response

if TYPE_CHECKING:
    pass

__all__ = ["BrokerWSGIMiddleware"]

log = logging.getLogger("oauth2_broker_mw.middleware")

# The standard library's WSGI types (PEP 3333), so Flask's and Django's apps fit as they are.
Environ: TypeAlias = WSGIEnvironment
WSGIApp: TypeAlias = WSGIApplication
_Write: TypeAlias = Callable[[bytes], object]
_ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
)

_REASONS = {
    302: "Found",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _WSGIRequest(BrokerRequest):
    """A :class:`BrokerRequest` reading the environ lazily."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Environ) -> None:  # no super().__init__: every field is lazy
        self._environ = environ
        self.raw = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO", "") or "/")
        # PEP 3333: PATH_INFO is latin-1 decoded bytes; re-decode as UTF-8 like ASGI's path.
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            path = path.encode("latin-1").decode("utf-8")
        self.path = path
        self.return_to = None
        self._headers = None

    @property
    def query_string(self) -> str:
        return str(self._environ.get("QUERY_STRING", ""))

    @property
    def client_host(self) -> str | None:
        peer = self._environ.get("REMOTE_ADDR")
        return str(peer) if peer else None

    def _build_headers(self) -> dict[str, str]:
        environ = self._environ
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").lower()] = str(value)
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = str(environ["CONTENT_TYPE"])
        if environ.get("CONTENT_LENGTH"):
            headers["content-length"] = str(environ["CONTENT_LENGTH"])
        return headers

    @property
    def cookie(self) -> str | None:
        value = self._environ.get("HTTP_COOKIE")
        return None if value is None else str(value)


def _respond(response: Response, start_response: StartResponse, head: bool) -> list[bytes]:
    status = f"{response.status} {_REASONS.get(response.status, 'Error')}"
    headers = [*response.headers, ("content-length", str(len(response.body)))]
    start_response(status, headers)
    return [] if head else [response.body]


def _read_body(environ: Environ, limit: int) -> bytes:
    try:
        length = int(str(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return b""
    if length <= 0 or length > limit:
        return b""
    stream = environ.get("wsgi.input")
    read = getattr(stream, "read", None)
    if read is None:
        return b""
    data = read(length)
    return data if isinstance(data, bytes) else b""


class BrokerWSGIMiddleware(MiddlewareShell[WSGIApp]):
    """The WSGI twin of :class:`~oauth2_broker_mw.middleware.BrokerMiddleware`.

    ::

        app.wsgi_app = BrokerWSGIMiddleware(app.wsgi_app, brokers={"acme": broker},
                                            secret_key="...", base_url="https://app.example.com")
    """

    def __init__(self, app: WSGIApp, **options: Unpack[MiddlewareOptions]) -> None:
        super().__init__(app, **options)
        if self.core.check_stores:  # WSGI has no lifespan: the app is built at boot
            for store in self.core.stores():
                try:
                    check_store(store)
                except StorageError as exc:
                    log.error(
                        "oauth2-broker-mw: a token store is unusable at startup: %s "
                        "(BrokerWSGIMiddleware(check_stores=False) starts without this check)",
                        exc,
                    )
                    raise

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        request = _WSGIRequest(environ)
        head = request.method == "HEAD"
        route = core.match(request.path)
        if route is not None:
            body = (
                _read_body(environ, core.max_body)
                if core.wants_body(route, request.method)
                else b""
            )
            return _respond(drive(core.handle(route, request, body)), start_response, head)
        prepared = core.prepare(request)
        if not isinstance(prepared, (Prepared, Response)):  # a session to check: run the flow
            prepared = drive(prepared)
        if isinstance(prepared, Response):
            return _respond(prepared, start_response, head)
        context = prepared.context
        environ[CONTEXT_KEY] = context
        extra = prepared.set_cookies
        replaced: list[Response] = []
        in_call = True

        def start_wrapper(
            status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None, /
        ) -> _Write:
            exc = context.authorization_required or context.not_found
            if in_call and exc is not None and status[:1] == "5" and not replaced:
                # The framework rendered the exception as an error page: replace it.
                replaced.append(core.answer(request, exc))
                return _discard
            return start_response(status, [*headers, *extra], exc_info)

        try:
            result = self.app(environ, start_wrapper)
        except (AuthorizationRequired, UnknownTenant, ProviderNotEnabled) as exc:
            return _respond(core.answer(request, exc), start_response, head)
        finally:
            in_call = False
        if replaced:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            return _respond(replaced[0], start_response, head)
        return result


def _discard(data: bytes) -> object:
    return None
