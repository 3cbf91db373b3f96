"""What the middleware sees of a request and what it answers, the same for ASGI and WSGI.

Owns: :class:`BrokerRequest` (the shells subclass it and read the scope / environ lazily),
:class:`Response` (an early response of the middleware, never the app's), :class:`Route` (which
broker route a path is), the resolver types, and the security headers of every early response.

Never puts a cookie value or the provider URL (it carries ``state``) in a repr.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Final
from typing import Literal
from typing import TypeAlias
from urllib.parse import parse_qsl

__all__ = [
    "SECURITY_HEADERS",
    "BrokerRequest",
    "PrincipalResolver",
    "Response",
    "Route",
    "TenantResolver",
    "redirect",
]


class BrokerRequest:
    """What resolvers and handlers see of a request, the same for ASGI and WSGI.

    ``raw`` is the ASGI scope or the WSGI environ. ``return_to`` is set (validated) on the login
    route, so a path-based tenant resolver can read the tenant of the page the user returns to.
    """

    __slots__ = (
        "_client_host",
        "_headers",
        "_headers_factory",
        "_query_string",
        "method",
        "path",
        "raw",
        "return_to",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query_string: str,
        headers: Callable[[], dict[str, str]],
        client_host: str | None,
        raw: object,
    ) -> None:
        self.method = method
        self.path = path
        self.raw = raw
        self.return_to: str | None = None
        self._query_string = query_string
        self._client_host = client_host
        self._headers_factory: Callable[[], dict[str, str]] | None = headers
        self._headers: dict[str, str] | None = None

    # The shells subclass this and compute the fields below lazily from the scope / environ.
    @property
    def query_string(self) -> str:
        return self._query_string

    @property
    def client_host(self) -> str | None:
        """The peer address (the proxy's, behind a proxy)."""
        return self._client_host

    def _build_headers(self) -> dict[str, str]:
        return {} if self._headers_factory is None else self._headers_factory()

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-case header names; repeated headers joined with ``", "`` (cookies ``"; "``)."""
        if self._headers is None:
            self._headers = self._build_headers()
        return self._headers

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def cookie(self) -> str | None:
        """The ``Cookie`` header."""
        return self.header("cookie")

    @property
    def host(self) -> str | None:
        return self.header("host")

    def query_pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query_string, keep_blank_values=True)

    def __repr__(self) -> str:
        return f"BrokerRequest({self.method} {self.path!r})"


@dataclass(slots=True, repr=False)
class Response:
    """An early response from the middleware (never the app's).

    Its headers carry sealed cookies and the provider URL with ``state``: the repr hides them.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def __repr__(self) -> str:
        return f"Response({self.status}, headers={sorted({k for k, _ in self.headers})!r})"


TenantResolver: TypeAlias = Callable[[BrokerRequest], "str | None"]
PrincipalResolver: TypeAlias = Callable[[BrokerRequest], "str | None"]

SECURITY_HEADERS: Final = (
    ("cache-control", "no-store"),
    ("pragma", "no-cache"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
)


def redirect(location: str, status: int = 302) -> Response:
    return Response(status, [("location", location), *SECURITY_HEADERS])


@dataclass(frozen=True, slots=True)
class Route:
    kind: Literal["login", "callback", "logout", "unknown_provider"]
    provider: str | None = None
