"""The framework-neutral heart of both middlewares: configuration, routes and pass-through.

Owns: :class:`MiddlewareCore` — the configuration both middlewares share, which requests are
broker routes (:meth:`~MiddlewareCore.match`), the context of a request the app answers
(:meth:`~MiddlewareCore.prepare`), the answer to a broker route
(:meth:`~MiddlewareCore.handle`), and what ``AuthorizationRequired`` / ``UnknownTenant`` /
``ProviderNotEnabled`` from the app become (:meth:`~MiddlewareCore.answer`: a login redirect,
a 401 problem document, a 404). The parts live beside it:

- :mod:`._config` the options and their checks; :mod:`._http` requests, responses, routes;
- :mod:`._calls` the broker calls a handler yields, and ``drive`` / ``adrive``;
- :mod:`._session` the session and flow cookies; :mod:`._context` :class:`BrokerContext`;
- :mod:`._handlers` login, callback, logout; :mod:`._errors` error responses, in one table.

The names this module has always exported are still importable from here.

The ``Broker`` type is imported for type checking only. Never puts a token, code, state,
verifier, CSRF token or cookie value in a page, a log line, a repr or an exception message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Generic
from typing import Literal
from typing import TypeVar
from typing import Unpack
from typing import cast
from urllib.parse import quote

from .._core.errors import AuthorizationRequired
from .._core.errors import BrokerError
from .._core.errors import ConfigurationError
from .._core.errors import ProviderNotEnabled
from .._core.errors import UnknownTenant
from .._core.model import JSONValue
from .._core.model import PrincipalId
from .._core.model import ProviderId
from .._core.model import Secret
from .._driver import call
from . import _handlers
from ._calls import BrokerSource
from ._calls import FixedBrokers
from ._calls import Handler
from ._calls import Step
from ._calls import adrive
from ._calls import drive
from ._config import CONTEXT_KEY
from ._config import MAX_FORM_BYTES
from ._config import MiddlewareOptions
from ._config import check_base_url
from ._config import check_brokers
from ._config import check_prefix
from ._config import check_scopes
from ._config import check_tenant_base_url
from ._config import check_timeouts
from ._context import BrokerContext
from ._context import Prepared
from ._cookies import CookieAttributes
from ._cookies import CookieSealer
from ._cookies import parse_cookie_header
from ._errors import RETRYABLE
from ._errors import Reject
from ._errors import error_response
from ._errors import not_found
from ._http import SECURITY_HEADERS
from ._http import BrokerRequest
from ._http import PrincipalResolver
from ._http import Response
from ._http import Route
from ._http import TenantResolver
from ._http import redirect
from ._redirects import safe_return_to
from ._session import DENYLIST_MAX
from ._session import FlowCookies
from ._session import Session
from ._session import Sessions
from ._tenants import validate_tenant

if TYPE_CHECKING:
    from ..broker import Broker
    from ..registry import Registry
    from ..stores.base import TokenStore

__all__ = [
    "CONTEXT_KEY",
    "DENYLIST_MAX",
    "BrokerContext",
    "BrokerRequest",
    "MiddlewareCore",
    "MiddlewareOptions",
    "MiddlewareShell",
    "Prepared",
    "PrincipalResolver",
    "Response",
    "Route",
    "TenantResolver",
    "adrive",
    "drive",
]

AppT = TypeVar("AppT")


class MiddlewareShell(Generic[AppT]):
    """The configuration both middlewares take (the public names), held in one place.

    ``BrokerMiddleware`` (ASGI) and ``BrokerWSGIMiddleware`` subclass it with their own app
    type; everything they decide is in :class:`MiddlewareCore`.
    """

    def __init__(self, app: AppT, **options: Unpack[MiddlewareOptions]) -> None:
        self.app = app
        self.core = MiddlewareCore(**options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.core!r})"


class MiddlewareCore:
    """Configuration plus every decision; the ASGI/WSGI shells only move bytes."""

    def __init__(
        self,
        *,
        brokers: Mapping[str, Broker] | None = None,
        registry: Registry | None = None,
        secret_key: str | Secret | Sequence[str | Secret],
        base_url: str,
        scopes: Mapping[str, Iterable[str]] | None = None,
        prefix: str = "/oauth2",
        tenant_resolver: TenantResolver | None = None,
        principal_resolver: PrincipalResolver | None = None,
        lease_for_resolved_principals: bool = False,
        session_store: TokenStore | None = None,
        session_check_interval: float = 1.0,
        tenant_base_url: str | None = None,
        flow_ttl: float = 300.0,
        session_idle_timeout: float = 8 * 3600.0,
        session_absolute_timeout: float = 7 * 24 * 3600.0,
        max_flows: int = 8,
        check_stores: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.brokers: dict[str, Broker] = check_brokers(brokers, registry)
        scopes = scopes or {}
        # Without scopes[name], a login asks for the descriptor's default_scopes.
        self._scopes = check_scopes(self.brokers, scopes, registry)
        self._source: BrokerSource = (
            registry if registry is not None else FixedBrokers(self.brokers)
        )
        self.provider_names: tuple[str, ...] = tuple(self.brokers) or tuple(scopes)
        self.prefix = check_prefix(prefix)
        self.origin, self.base_path = check_base_url(base_url, "base_url")
        self.secure = self.origin.startswith("https:")
        self.base_url = self.origin + self.base_path
        check_tenant_base_url(tenant_base_url, self.origin, self.base_path)
        self.tenant_base_url = tenant_base_url
        self.tenant_resolver = tenant_resolver
        self.principal_resolver = principal_resolver
        self.lease_for_resolved_principals = bool(lease_for_resolved_principals)
        check_timeouts(
            flow_ttl=flow_ttl,
            idle=session_idle_timeout,
            absolute=session_absolute_timeout,
            max_flows=max_flows,
            check_interval=session_check_interval,
        )
        #: check every store at startup (ASGI lifespan, WSGI construction): fail fast
        self.check_stores = bool(check_stores)
        self.clock = clock
        cookies = CookieAttributes(secure=self.secure)
        sealer = CookieSealer(secret_key)
        self.sessions = Sessions(
            sealer=sealer,
            cookies=cookies,
            store=session_store
            if session_store is not None
            else registry.store
            if registry is not None
            else next(iter(self.brokers.values())).store,
            idle_timeout=session_idle_timeout,
            absolute_timeout=session_absolute_timeout,
            check_interval=float(session_check_interval),
        )
        self.flows = FlowCookies(sealer=sealer, cookies=cookies, ttl=flow_ttl, max_flows=max_flows)
        self._route_prefix = prefix + "/"

    def __repr__(self) -> str:
        return f"MiddlewareCore(base_url={self.base_url!r}, providers={sorted(self.brokers)!r})"

    # -- providers, brokers, URLs ----------------------------------------------------------
    def check_provider(self, provider: str) -> None:
        """A provider name the app asks for must exist (with ``brokers=``) and be well-formed."""
        if self.registry is None and provider not in self.brokers:
            raise ConfigurationError(f"unknown provider {provider!r}")
        ProviderId(provider)

    def broker_step(self, tenant: str, provider: str) -> Step[Broker]:
        """The broker of (tenant, provider), as a step (a registry may await a resolver)."""
        source = self._source
        return (yield from call(source.broker, source.abroker, tenant=tenant, provider=provider))

    def route_broker(self, tenant: str, provider: str) -> Step[Broker]:
        """A route's broker: an unknown tenant or provider is a 404, before any I/O (J3)."""
        try:
            return (yield from self.broker_step(tenant, provider))
        except (UnknownTenant, ProviderNotEnabled) as exc:
            raise not_found(exc) from None

    def configured_scopes(self, provider: str) -> tuple[str, ...]:
        return self._scopes.get(provider, ())

    def scopes_of(
        self, provider: str, broker: Broker, scopes: Iterable[str] | None = None
    ) -> tuple[str, ...]:
        """``scopes``, else ``scopes=[provider]``, else the broker's descriptor's defaults."""
        if scopes is not None:
            return tuple(scopes)
        return self._scopes.get(provider) or tuple(broker.provider.default_scopes)

    def stores(self) -> list[TokenStore]:
        """The stores known at startup, each once: the brokers' and the session store (with
        ``registry=``, the registry's; its tenants' brokers are built later)."""
        found: dict[int, TokenStore] = {}
        for broker in self.brokers.values():
            found.setdefault(id(broker.store), broker.store)
        found.setdefault(id(self.sessions.store), self.sessions.store)
        return list(found.values())

    def is_oidc_login(self, provider: str, broker: Broker) -> bool:
        return broker.provider.issuer is not None and "openid" in self.scopes_of(provider, broker)

    def origin_for(self, tenant: str | None) -> str:
        """The origin a tenant's logins run on: its own host with ``tenant_base_url``."""
        if self.tenant_base_url is None or tenant is None:
            return self.origin
        return check_base_url(self.tenant_base_url.replace("{tenant}", tenant.lower()), "")[0]

    def redirect_uri(self, provider: str, tenant: str | None = None) -> str:
        return f"{self.origin_for(tenant)}{self.base_path}{self.prefix}/{provider}/callback"

    def _login_path(self, provider: str, return_to: str) -> str:
        """The login route of ``provider``, returning to ``return_to`` (made safe)."""
        target = quote(safe_return_to(return_to, base_url=self.base_url), safe="/")
        return f"{self.base_path}{self.prefix}/{quote(provider, safe='')}/login?return_to={target}"

    def login_url(self, provider: str, return_to: str = "/", tenant: str | None = None) -> str:
        self.check_provider(provider)
        return self.origin_for(tenant) + self._login_path(provider, return_to)

    def retry_url(self, provider: str, code: str, return_to: str = "/") -> str | None:
        """A relative login URL (on the host the user is on) when a new login can help; it
        returns to ``return_to``, the failed login's own, so a path tenant stays named."""
        if code not in RETRYABLE:
            return None
        return self._login_path(provider, return_to)

    # -- routes ----------------------------------------------------------------------------
    def match(self, path: str) -> Route | None:
        """The broker route for ``path``, or ``None`` to pass the request through."""
        if not path.startswith(self._route_prefix):
            return None
        rest = path[len(self._route_prefix) :]
        if rest == "logout":
            return Route("logout")
        provider, sep, action = rest.partition("/")
        if not sep or action not in ("login", "callback"):
            return None
        if self.registry is None and provider not in self.brokers:
            return Route("unknown_provider", provider)
        try:
            ProviderId(provider)
        except ValueError:
            return Route("unknown_provider", provider)
        return Route(cast(Literal["login", "callback"], action), provider)

    def wants_body(self, route: Route, method: str) -> bool:
        return route.kind == "logout" and method == "POST"

    @property
    def max_body(self) -> int:
        return MAX_FORM_BYTES

    def now(self) -> float:
        return float(self.clock())

    # -- tenant and principal --------------------------------------------------------------
    def resolve_tenant(self, request: BrokerRequest) -> str | None:
        """The request's tenant: ``default`` without a resolver; a bad one is a 400."""
        if self.tenant_resolver is None:
            return "default"
        return _resolve(self.tenant_resolver, request, validate_tenant, "tenant")

    def resolve_principal(self, request: BrokerRequest) -> str | None:
        """The principal the app's resolver names, if any; a bad one is a 400."""
        if self.principal_resolver is None:
            return None
        return _resolve(self.principal_resolver, request, PrincipalId, "principal")

    # -- pass-through requests -------------------------------------------------------------
    def prepare(self, request: BrokerRequest) -> Prepared | Response | Step[Prepared | Response]:
        """The context for a request the app will answer, or an error response (fail closed).

        The answer is returned at once when it needs no I/O: no session cookie of this
        middleware, or a session the shared store vouched for within ``session_check_interval``.
        Otherwise it is a generator (the store is asked whether the session was revoked on
        another worker, J10): drive it with :func:`drive` / :func:`adrive`.
        """
        try:
            tenant = self.resolve_tenant(request)
            principal = self.resolve_principal(request)
        except Reject as reject:
            return self.error(request, reject)
        cookie_header = request.cookie
        if tenant is None or not cookie_header or self.sessions.cookie not in cookie_header:
            return self._prepared(request, tenant, principal, None, 0.0)
        now = self.now()
        session = self.sessions.read(parse_cookie_header(cookie_header), now, tenant)
        if session is not None and not self.sessions.known_live(session, now):
            return self._check_session(request, tenant, principal, session, now)
        return self._prepared(request, tenant, principal, session, now)

    def _check_session(
        self,
        request: BrokerRequest,
        tenant: str,
        principal: str | None,
        session: Session,
        now: float,
    ) -> Step[Prepared | Response]:
        try:
            live = yield from self.sessions.check(session, now)
        except Reject as reject:
            return self.error(request, reject)
        return self._prepared(request, tenant, principal, live, now)

    def _prepared(
        self,
        request: BrokerRequest,
        tenant: str | None,
        principal: str | None,
        session: Session | None,
        now: float,
    ) -> Prepared:
        set_cookies: list[tuple[str, str]] = []
        if session is not None and now - session.seen_at > self.sessions.refresh_after:
            session = session.seen(now)  # sliding idle timeout: a fresh cookie
            set_cookies.append(self.sessions.set_cookie(session, now))
        connections: tuple[str, ...] = ()
        resolved = principal is not None
        issuer = None
        # J2: a session made in another tenant gives this request no principal.
        if session is not None and session.tenant == tenant:
            if principal is None:
                principal = session.principal
            if session.principal == principal:
                connections = (
                    session.connections
                    if self.registry is not None
                    else tuple(filter(self.brokers.__contains__, session.connections))
                )
                issuer = session.issuer
        # Positional: a class called with keywords builds a dict of them on every request.
        context = BrokerContext(
            self,
            tenant,
            principal,
            connections,
            None if session is None else session.sid,
            issuer,
            resolved,
            request.path,
        )
        return Prepared(context, set_cookies)

    def authorization_required(
        self, request: BrokerRequest, exc: AuthorizationRequired
    ) -> Response:
        """What ``AuthorizationRequired`` from the app becomes: a login redirect or a 401."""
        name = self._provider_name(exc.provider)
        accept = request.header("accept") or ""
        target = request.path + ("?" + request.query_string if request.query_string else "")
        try:
            tenant: str | None = validate_tenant(exc.tenant)
        except ValueError:
            tenant = None
        if name is not None and request.method in ("GET", "HEAD") and "text/html" in accept:
            return redirect(self.login_url(name, target, tenant), 302)
        problem: dict[str, JSONValue] = {
            "type": "about:blank",
            "title": "Authorization required",
            "status": 401,
            "code": "authorization_required",
            "detail": "Log in with the provider to grant access, then retry the request.",
        }
        if name is not None:
            problem["provider"] = name
            problem["login_url"] = self.login_url(name, target, tenant)
        body = json.dumps(problem, separators=(",", ":")).encode()
        return Response(
            401,
            [("content-type", "application/problem+json"), *SECURITY_HEADERS],
            body,
        )

    def answer(self, request: BrokerRequest, exc: BrokerError) -> Response:
        """The middleware's answer to ``exc`` raised by the app: a login, a 401 or a 404."""
        if isinstance(exc, AuthorizationRequired):
            return self.authorization_required(request, exc)
        if isinstance(exc, UnknownTenant):
            return self.error(request, not_found(exc))
        return self.error(request, not_found(cast(ProviderNotEnabled, exc)))

    def _provider_name(self, provider_id: str) -> str | None:
        if provider_id in self.brokers or self.registry is not None:
            return provider_id
        matches = [n for n, b in self.brokers.items() if b.provider.id == provider_id]
        return matches[0] if len(matches) == 1 else None

    # -- broker routes ---------------------------------------------------------------------
    def handle(self, route: Route, request: BrokerRequest, body: bytes = b"") -> Handler:
        """The generator answering a broker route; drive it with :func:`drive`/:func:`adrive`."""
        try:
            if route.kind == "unknown_provider":
                raise Reject(404, "unknown_provider", "No such provider is configured.")
            if route.kind == "logout":
                response = yield from _handlers.logout(self, request, body)
            elif route.kind == "login":
                assert route.provider is not None
                response = yield from _handlers.login(self, route.provider, request)
            else:
                assert route.provider is not None
                response = yield from _handlers.callback(self, route.provider, request)
        except Reject as reject:
            if route.provider is not None and route.kind != "unknown_provider":
                reject.retry = self.retry_url(route.provider, reject.code)
            return self.error(request, reject)
        return response

    def error(self, request: BrokerRequest, reject: Reject) -> Response:
        """The error page (or JSON body) of a refusal, linking home and, maybe, to a retry."""
        return error_response(request, reject, home=self.base_path + "/")


def _resolve(
    resolver: Callable[[BrokerRequest], str | None],
    request: BrokerRequest,
    check: Callable[[str], str],
    what: Literal["tenant", "principal"],
) -> str | None:
    """What the app's ``resolver`` says of ``request``, checked; not valid: a 400 refusal."""
    try:
        value = resolver(request)
        return None if value is None else check(value)
    except (ValueError, TypeError):
        raise Reject(400, f"invalid_{what}", f"The {what} of this request is not valid.") from None
