"""The framework-neutral heart of both middlewares: routes, flow and session cookies, context.

Owns: everything the ASGI and WSGI middlewares decide — which requests are broker routes, the
login / callback / logout handlers, the flow cookie (one per login, keyed by state), the session
cookie, the order of the callback checks (SECURITY B1, B2, B4, B7), error pages, the
``AuthorizationRequired`` → login redirect / 401 problem translation, and :class:`BrokerContext`.

Handlers are generators: they ``yield`` a broker call (:class:`StartAuthorization`,
:class:`ExchangeCode`, :class:`Revoke`) and receive its result, or have its exception thrown in.
:func:`drive` runs one with the sync broker methods, :func:`adrive` with the async ones; that is
the only difference between the two middlewares.

Must not import: asyncio, httpx/httpx2, any web framework, the ``asgi``/``wsgi`` shells. (The
``Broker`` type is imported for type checking only; ``BrokerAuth`` lazily, by ``auth()``.)
Never puts a token, code, state, verifier, CSRF token or cookie value in a page, a log line, a
repr or an exception message.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    Literal,
    Protocol,
    Required,
    TypeAlias,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
)
from urllib.parse import parse_qsl, quote, urlsplit

from .. import _driver
from .._core.errors import (
    AuthorizationFlowError,
    AuthorizationRequired,
    BrokerError,
    ConfigurationError,
    ProviderError,
    ProviderNotEnabled,
    StorageError,
    TransientProviderError,
    TransportError,
    UnknownTenant,
)
from .._core.flows import AuthorizationRequest
from .._core.model import JSONValue, Lease, PrincipalId, ProviderId, Secret, TokenRecord
from ._cookies import CookieAttributes, CookieSealer, parse_cookie_header
from ._pages import PAGE_HEADERS, error_page, logout_page
from ._redirects import safe_return_to
from ._tenants import validate_tenant

if TYPE_CHECKING:
    from ..auth import BrokerAuth, LeaseSource
    from ..broker import Broker
    from ..registry import Registry
    from ..stores.base import TokenStore

__all__ = [
    "BrokerCall",
    "BrokerContext",
    "BrokerRequest",
    "ExchangeCode",
    "MiddlewareCore",
    "Prepared",
    "PrincipalResolver",
    "Response",
    "Revoke",
    "Route",
    "StartAuthorization",
    "TenantResolver",
    "adrive",
    "drive",
]

log = logging.getLogger("oauth2_broker_mw.middleware")

CONTEXT_KEY: Final = "oauth2_broker"
_SESSION_COOKIE: Final = "obm_session"
_FLOW_COOKIE: Final = "obm_flow_"
_MAX_FORM_BYTES: Final = 64 * 1024
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})
_SINGLE_PARAMS: Final = ("code", "state", "iss", "error")
#: refusals that a fresh login mends: their error page links to the login route
_RETRYABLE: Final = frozenset(
    {
        "state_missing",
        "state_mismatch",
        "state_expired",
        "authorization_denied",
        "exchange_failed",
        "provider_unavailable",
        "store_unavailable",
        "issuer_mismatch",
        "invalid_request",
        "duplicate_parameter",
    }
)
_DENYLIST_MAX: Final = 10_000
_OPENED_MAX: Final = 1024


def _reason(exc: BrokerError) -> str:
    """The log line's reason: the error's type and message (BrokerError messages hold no
    secret), so an operator sees "cannot create the SQLite file '/x': ..." and not a bare
    class name."""
    return f"{type(exc).__name__}: {exc}"


# -- broker calls: the effects a handler yields -----------------------------------------------
@dataclass(frozen=True, slots=True)
class StartAuthorization:
    broker: Broker
    tenant: str
    principal: str | None
    scopes: tuple[str, ...]
    redirect_uri: str

    def run(self) -> object:
        return self.broker.start_authorization(
            tenant=self.tenant,
            principal=self.principal,
            scopes=self.scopes,
            redirect_uri=self.redirect_uri,
        )

    async def arun(self) -> object:
        return await self.broker.astart_authorization(
            tenant=self.tenant,
            principal=self.principal,
            scopes=self.scopes,
            redirect_uri=self.redirect_uri,
        )


@dataclass(frozen=True, slots=True, repr=False)
class ExchangeCode:
    broker: Broker
    state: Secret
    code: Secret
    iss: str | None
    callback_params: Mapping[str, str]

    def run(self) -> object:
        return self.broker.exchange_code(
            state=self.state.get_secret_value(),
            code=self.code.get_secret_value(),
            iss=self.iss,
            callback_params=self.callback_params,
        )

    async def arun(self) -> object:
        return await self.broker.aexchange_code(
            state=self.state.get_secret_value(),
            code=self.code.get_secret_value(),
            iss=self.iss,
            callback_params=self.callback_params,
        )

    def __repr__(self) -> str:
        return "ExchangeCode(state=**********, code=**********)"


@dataclass(frozen=True, slots=True)
class Revoke:
    broker: Broker
    tenant: str
    principal: str
    scopes: tuple[str, ...]

    def run(self) -> object:
        return self.broker.revoke(tenant=self.tenant, principal=self.principal, scopes=self.scopes)

    async def arun(self) -> object:
        return await self.broker.arevoke(
            tenant=self.tenant, principal=self.principal, scopes=self.scopes
        )


#: The owner of the lock that marks a session id revoked (a lock name nobody else uses).
_REVOKED: Final = "obm-revoked"


@dataclass(frozen=True, slots=True)
class MarkRevoked:
    """Revoke a session id on every worker: a lock held in the shared store until it expires."""

    store: TokenStore
    name: str
    ttl: float

    def run(self) -> object:
        return self.store.acquire_lock(self.name, _REVOKED, self.ttl)

    async def arun(self) -> object:
        return await self.store.aacquire_lock(self.name, _REVOKED, self.ttl)


@dataclass(frozen=True, slots=True)
class IsRevoked:
    """True when the session id was revoked by any worker (the revocation lock is held)."""

    store: TokenStore
    name: str
    ttl: float

    def run(self) -> object:
        return self.store.renew_lock(self.name, _REVOKED, self.ttl)

    async def arun(self) -> object:
        return await self.store.arenew_lock(self.name, _REVOKED, self.ttl)


class BrokerSource(Protocol):
    """Where the broker of a (tenant, provider) comes from: a :class:`Registry`, or the fixed
    ``brokers=`` mapping. Raises ``UnknownTenant`` / ``ProviderNotEnabled``."""

    def broker(self, *, tenant: str, provider: str) -> Broker: ...

    async def abroker(self, *, tenant: str, provider: str) -> Broker: ...


class _FixedBrokers:
    """``brokers=``: one Broker per provider name, the same for every tenant."""

    __slots__ = ("brokers",)

    def __init__(self, brokers: Mapping[str, Broker]) -> None:
        self.brokers = brokers

    def broker(self, *, tenant: str, provider: str) -> Broker:
        return _fixed_broker(self.brokers, tenant, provider)

    async def abroker(self, *, tenant: str, provider: str) -> Broker:
        return _fixed_broker(self.brokers, tenant, provider)


def _fixed_broker(brokers: Mapping[str, Broker], tenant: str, provider: str) -> Broker:
    found = brokers.get(provider)
    if found is None:
        raise ProviderNotEnabled(tenant, provider)
    return found


@dataclass(frozen=True, slots=True)
class GetBroker:
    """The broker of (tenant, provider): a registry lookup may await the app's resolver."""

    source: BrokerSource
    tenant: str
    provider: str

    def run(self) -> object:
        return self.source.broker(tenant=self.tenant, provider=self.provider)

    async def arun(self) -> object:
        return await self.source.abroker(tenant=self.tenant, provider=self.provider)


BrokerCall: TypeAlias = (
    StartAuthorization | ExchangeCode | Revoke | MarkRevoked | IsRevoked | GetBroker
)
T = TypeVar("T")
Step: TypeAlias = Generator[BrokerCall, object, T]
Handler: TypeAlias = Step["Response"]


def drive(handler: Step[T]) -> T:
    """Run a handler with the broker's sync methods (through the one generator driver)."""
    return _driver.run(handler, lambda call: call.run())


async def adrive(handler: Step[T]) -> T:
    """Run a handler with the broker's async methods."""

    async def execute(call: BrokerCall) -> object:
        return await call.arun()

    return await _driver.arun(handler, execute)


# -- request and response data ------------------------------------------------------------------
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

_SECURITY_HEADERS: Final = (
    ("cache-control", "no-store"),
    ("pragma", "no-cache"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
)


def _redirect(location: str, status: int = 302) -> Response:
    return Response(status, [("location", location), *_SECURITY_HEADERS])


# -- the session ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class _Session:
    sid: str
    tenant: str | None
    principal: str | None
    connections: tuple[str, ...]
    created_at: float
    seen_at: float
    #: the issuer whose ID token named the principal (J1: the identity is (issuer, sub)); None
    #: for a per-browser principal or one the app's principal_resolver gave
    issuer: str | None = None

    def payload(self) -> dict[str, JSONValue]:
        return {
            "sid": self.sid,
            "t": self.tenant,
            "p": self.principal,
            "i": self.issuer,
            "c": list(self.connections),
            "ca": self.created_at,
            "sa": self.seen_at,
        }

    def seen(self, now: float) -> _Session:
        return _Session(
            self.sid,
            self.tenant,
            self.principal,
            self.connections,
            self.created_at,
            now,
            self.issuer,
        )


def _parse_session(data: Mapping[str, JSONValue]) -> _Session | None:
    sid, tenant, principal = data.get("sid"), data.get("t"), data.get("p")
    conns, created, seen, issuer = data.get("c"), data.get("ca"), data.get("sa"), data.get("i")
    if not isinstance(sid, str) or not sid:
        return None
    if issuer is not None and not isinstance(issuer, str):
        return None
    if tenant is not None and not isinstance(tenant, str):
        return None
    if principal is not None and not isinstance(principal, str):
        return None
    if not isinstance(conns, list) or not all(isinstance(c, str) for c in conns):
        return None
    if not isinstance(created, int | float) or not isinstance(seen, int | float):
        return None
    return _Session(
        sid,
        tenant,
        principal,
        tuple(cast(list[str], conns)),
        float(created),
        float(seen),
        issuer,
    )


# -- the context the app sees --------------------------------------------------------------------
class BrokerContext:
    """Per-request broker context: ``scope["oauth2_broker"]`` / ``environ["oauth2_broker"]``.

    ``tenant`` and ``principal`` are ``None`` when unknown (no tenant for this path, nobody
    logged in); ``auth``/``lease`` then raise :class:`AuthorizationRequired`, which the
    middleware turns into a login redirect (browsers) or a 401 problem document (APIs).
    ``auth``/``lease`` answer only for a provider in ``connections`` (one this session logged
    in to), or for any provider when the principal came from the app's ``principal_resolver``
    and the middleware was built with ``lease_for_resolved_principals=True`` (SECURITY J1).
    ``issuer`` is the issuer whose ID token named the principal (``None`` otherwise).
    """

    __slots__ = (
        "_core",
        "_path",
        "_resolved",
        "_sid",
        "authorization_required",
        "connections",
        "issuer",
        "not_found",
        "principal",
        "tenant",
    )

    def __init__(
        self,
        core: MiddlewareCore,
        *,
        tenant: str | None,
        principal: str | None,
        connections: tuple[str, ...],
        session_id: str | None,
        issuer: str | None = None,
        resolved: bool = False,
        path: str = "/",
    ) -> None:
        self._core = core
        self._path = path
        self.tenant = tenant
        self.principal = principal
        self.connections = connections
        self.issuer = issuer
        self._resolved = resolved
        self._sid = session_id
        #: the last AuthorizationRequired raised through lease()/alease() (WSGI uses it to turn
        #: a framework's 500 page back into a login redirect).
        self.authorization_required: AuthorizationRequired | None = None
        #: the last UnknownTenant / ProviderNotEnabled raised through lease()/auth(): the
        #: middleware answers 404 for it (WSGI: in place of the framework's 500 page).
        self.not_found: UnknownTenant | ProviderNotEnabled | None = None

    def __repr__(self) -> str:
        return (
            f"BrokerContext(tenant={self.tenant!r}, principal={self.principal!r}, "
            f"connections={self.connections!r})"
        )

    @property
    def providers(self) -> tuple[str, ...]:
        """Every configured provider name (with ``registry=``: the names given in ``scopes``)."""
        return self._core.provider_names

    @property
    def csrf_token(self) -> str | None:
        """Put this in logout forms (field ``csrf_token``) for clients that send no Origin."""
        return None if self._sid is None else self._core.csrf_for(self._sid)

    @property
    def logout_url(self) -> str:
        """The logout route (POST); it returns to the current path, which names the tenant."""
        target = safe_return_to(self._path, base_url=self._core.base_url)
        return (
            f"{self._core.base_path}{self._core.prefix}/logout?return_to={quote(target, safe='/')}"
        )

    def login_url(self, provider: str, return_to: str = "/") -> str:
        """The login route for ``provider``; ``return_to`` is validated (falls back to ``/``)."""
        return self._core.login_url(provider, return_to, self.tenant)

    def is_connected(self, provider: str) -> bool:
        return provider in self.connections

    def _who(self, provider: str) -> tuple[str, str]:
        """(tenant, principal) allowed to use ``provider`` here, or ``AuthorizationRequired``."""
        self._core.check_provider(provider)
        tenant, principal = self.tenant, self.principal
        if tenant is None or principal is None:
            reason = "nobody is logged in on this request"
        elif provider in self.connections or (
            self._resolved and self._core.lease_for_resolved_principals
        ):
            return tenant, principal
        else:
            # J1: a login at one issuer never reads a token obtained from another.
            reason = f"this session has not connected provider {provider!r}; log in with it"
        exc = AuthorizationRequired(
            tenant=tenant or "-",
            principal=principal or "-",
            provider=provider,
            scopes=self._core.configured_scopes(provider),
            reason=reason,
        )
        self.authorization_required = exc
        raise exc

    def _broker_step(self, tenant: str, provider: str) -> Step[Broker]:
        try:
            return (yield from self._core.broker_step(tenant, provider))
        except (UnknownTenant, ProviderNotEnabled) as exc:
            self.not_found = exc
            raise

    def auth(self, provider: str, scopes: Iterable[str] | None = None) -> BrokerAuth:
        """A ready :class:`~oauth2_broker_mw.BrokerAuth` for this tenant and principal."""
        from ..auth import BrokerAuth

        tenant, principal = self._who(provider)
        broker = drive(self._broker_step(tenant, provider))
        wanted = self._core.scopes_of(provider, broker, scopes)
        source = cast("LeaseSource", _Recorder(broker, self))
        return BrokerAuth(source, tenant=tenant, principal=principal, scopes=wanted)

    def lease(self, provider: str, scopes: Iterable[str] | None = None) -> Lease:
        tenant, principal = self._who(provider)
        broker = drive(self._broker_step(tenant, provider))
        wanted = self._core.scopes_of(provider, broker, scopes)
        try:
            return broker.lease(tenant=tenant, principal=principal, scopes=wanted)
        except AuthorizationRequired as exc:
            self.authorization_required = exc
            raise

    async def alease(self, provider: str, scopes: Iterable[str] | None = None) -> Lease:
        tenant, principal = self._who(provider)
        broker = await adrive(self._broker_step(tenant, provider))
        wanted = self._core.scopes_of(provider, broker, scopes)
        try:
            return await broker.alease(tenant=tenant, principal=principal, scopes=wanted)
        except AuthorizationRequired as exc:
            self.authorization_required = exc
            raise


class _Recorder:
    """Forwards to a Broker; notes ``AuthorizationRequired`` on the context on its way out.

    Handed to ``BrokerAuth`` so that a WSGI framework which renders the exception as a 500 page
    still gets a login redirect (the WSGI shell replaces that page).
    """

    __slots__ = ("_context", "_target")

    def __init__(self, target: object, context: BrokerContext) -> None:
        self._target = target
        self._context = context

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value
        context = self._context
        if inspect.iscoroutinefunction(value):

            async def arecorded(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await value(*args, **kwargs)
                except AuthorizationRequired as exc:
                    context.authorization_required = exc
                    raise

            return arecorded

        def recorded(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except AuthorizationRequired as exc:
                context.authorization_required = exc
                raise

        return recorded


@dataclass(slots=True, repr=False)
class Prepared:
    """A pass-through request: its context and the headers to add to the app's response."""

    context: BrokerContext
    set_cookies: list[tuple[str, str]]

    def __repr__(self) -> str:
        return f"Prepared({self.context!r}, set_cookies={len(self.set_cookies)})"


@dataclass(frozen=True, slots=True)
class Route:
    kind: Literal["login", "callback", "logout", "unknown_provider"]
    provider: str | None = None


class _Reject(Exception):
    """Internal: stop a handler with an error page (never leaves this module)."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.description = description
        #: where "Start the sign-in again" goes (a login route), for refusals a new login mends
        self.retry: str | None = None


# -- the core ------------------------------------------------------------------------------------
AppT = TypeVar("AppT")


def _bounded_put(cache: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """``cache[key] = value``, evicting the oldest entries past ``limit`` (call under a lock)."""
    cache.pop(key, None)
    while len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value


class MiddlewareOptions(TypedDict, total=False):
    """The middleware's keyword options: the names and types of :class:`MiddlewareCore`'s
    parameters, where their defaults and meaning are documented."""

    brokers: Mapping[str, Broker] | None
    registry: Registry | None
    secret_key: Required[str | Secret | Sequence[str | Secret]]
    base_url: Required[str]
    scopes: Mapping[str, Iterable[str]] | None
    prefix: str
    tenant_resolver: TenantResolver | None
    principal_resolver: PrincipalResolver | None
    lease_for_resolved_principals: bool
    session_store: TokenStore | None
    session_check_interval: float
    tenant_base_url: str | None
    flow_ttl: float
    session_idle_timeout: float
    session_absolute_timeout: float
    max_flows: int
    check_stores: bool
    clock: Callable[[], float]


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
        if (brokers is None) == (registry is None):
            raise ConfigurationError(
                "give the middleware exactly one of brokers= (provider name -> Broker) or "
                "registry= (a Registry of tenants and their registrations)"
            )
        if registry is None and not isinstance(brokers, Mapping):
            raise ConfigurationError(
                "brokers must be a mapping of provider name to Broker, not "
                f"{type(brokers).__name__}: brokers={{'github': github_broker}}"
            )
        if brokers is not None and not brokers:
            raise ConfigurationError("brokers must name at least one provider")
        self.registry = registry
        self.brokers: dict[str, Broker] = dict(brokers or {})
        scopes = scopes or {}
        for name in (*self.brokers, *scopes):
            ProviderId(name)
            if "/" in name:
                raise ConfigurationError(f"provider name {name!r} must not contain '/'")
        unknown = set(scopes) - set(self.brokers)
        if unknown and registry is None:
            raise ConfigurationError(f"scopes given for unknown providers: {sorted(unknown)}")
        self._source: BrokerSource = (
            registry if registry is not None else _FixedBrokers(self.brokers)
        )
        self.provider_names: tuple[str, ...] = tuple(self.brokers) or tuple(scopes)
        # Without scopes[name], a login asks for the descriptor's default_scopes.
        self._scopes: dict[str, tuple[str, ...]] = {
            name: tuple(broker.provider.default_scopes) for name, broker in self.brokers.items()
        }
        for name, wanted in scopes.items():
            if isinstance(wanted, str):
                raise ConfigurationError(f"scopes[{name!r}] must be a list of scope strings")
            self._scopes[name] = tuple(wanted)
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ConfigurationError("prefix must start with '/' and not end with '/'")
        self.prefix = prefix
        self.origin, self.base_path = _check_base_url(base_url, "base_url")
        self.secure = self.origin.startswith("https:")
        self.base_url = self.origin + self.base_path
        # Subdomain tenants: each tenant's login and callback run on its own host (host-only
        # cookies), e.g. "https://{tenant}.example.com"; never built from the Host header.
        if tenant_base_url is not None:
            if tenant_base_url.count("{tenant}") != 1 or "{tenant}" not in urlsplit(
                tenant_base_url
            ).netloc.replace("%7Btenant%7D", "{tenant}"):
                raise ConfigurationError(
                    "tenant_base_url must hold '{tenant}' once, in the host: "
                    "'https://{tenant}.example.com'"
                )
            origin, path = _check_base_url(
                tenant_base_url.replace("{tenant}", "tenant"), "tenant_base_url"
            )
            if origin.startswith("https:") != self.secure or path != self.base_path:
                raise ConfigurationError(
                    "tenant_base_url must have base_url's scheme and path, only another host"
                )
        self.tenant_base_url = tenant_base_url
        self.cookies = CookieAttributes(secure=self.secure)
        self.sealer = CookieSealer(secret_key)
        self.session_cookie = self.cookies.name_prefix + _SESSION_COOKIE
        self.flow_cookie_prefix = self.cookies.name_prefix + _FLOW_COOKIE
        self.tenant_resolver = tenant_resolver
        self.principal_resolver = principal_resolver
        self.lease_for_resolved_principals = bool(lease_for_resolved_principals)
        #: where revoked session ids are kept, shared by every worker (J10)
        self.session_store: TokenStore = (
            session_store
            if session_store is not None
            else registry.store
            if registry is not None
            else next(iter(self.brokers.values())).store
        )
        if flow_ttl <= 0 or session_idle_timeout <= 0 or session_absolute_timeout <= 0:
            raise ConfigurationError("timeouts must be positive")
        if max_flows < 1:
            raise ConfigurationError("max_flows must be at least 1")
        #: check every store at startup (ASGI lifespan, WSGI construction): fail fast
        self.check_stores = bool(check_stores)
        self.flow_ttl = flow_ttl
        self.idle_timeout = session_idle_timeout
        self.absolute_timeout = session_absolute_timeout
        self.refresh_after = min(session_idle_timeout / 12, 3600.0)
        self.max_flows = max_flows
        self.clock = clock
        if not session_check_interval >= 0:
            raise ConfigurationError(
                f"session_check_interval must be >= 0 seconds; got {session_check_interval!r}"
            )
        self._route_prefix = prefix + "/"
        # Per-worker caches, shared by the threads of a WSGI server: bounded dicts changed
        # only under one lock, the oldest entry evicted first, so every change is O(1)
        # however full they are (a revoked id evicted here is still refused by the store).
        self._lock = threading.Lock()
        self._check_interval = float(session_check_interval)
        #: session ids revoked (seen here, or reported by the shared store)
        self._logged_out: dict[str, bool] = {}
        #: session id -> until when the shared store's "not revoked" answer is trusted
        self._checked: dict[str, float] = {}
        self._opened: dict[str, _Session] = {}
        self._cookie_names: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"MiddlewareCore(base_url={self.base_url!r}, providers={sorted(self.brokers)!r})"

    # -- small helpers ---------------------------------------------------------------------
    def check_provider(self, provider: str) -> None:
        """A provider name the app asks for must exist (with ``brokers=``) and be well-formed."""
        if self.registry is None and provider not in self.brokers:
            raise ConfigurationError(f"unknown provider {provider!r}")
        ProviderId(provider)

    def broker_step(self, tenant: str, provider: str) -> Step[Broker]:
        """The broker of (tenant, provider), as a step (a registry may await a resolver)."""
        return cast("Broker", (yield GetBroker(self._source, tenant, provider)))

    def _route_broker(self, tenant: str, provider: str) -> Step[Broker]:
        """A route's broker: an unknown tenant or provider is a 404, before any I/O (J3)."""
        try:
            return (yield from self.broker_step(tenant, provider))
        except UnknownTenant:
            raise _Reject(404, "unknown_tenant", "No such tenant.") from None
        except ProviderNotEnabled:
            raise _Reject(
                404, "unknown_provider", "This provider is not enabled for this tenant."
            ) from None

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
        found.setdefault(id(self.session_store), self.session_store)
        return list(found.values())

    def origin_for(self, tenant: str | None) -> str:
        """The origin a tenant's logins run on: its own host with ``tenant_base_url``."""
        if self.tenant_base_url is None or tenant is None:
            return self.origin
        return _check_base_url(self.tenant_base_url.replace("{tenant}", tenant.lower()), "")[0]

    def redirect_uri(self, provider: str, tenant: str | None = None) -> str:
        return f"{self.origin_for(tenant)}{self.base_path}{self.prefix}/{provider}/callback"

    def login_url(self, provider: str, return_to: str = "/", tenant: str | None = None) -> str:
        self.check_provider(provider)
        target = safe_return_to(return_to, base_url=self.base_url)
        return (
            f"{self.origin_for(tenant)}{self.base_path}{self.prefix}/"
            f"{quote(provider, safe='')}/login?return_to={quote(target, safe='/')}"
        )

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
        return _MAX_FORM_BYTES

    def _now(self) -> float:
        return float(self.clock())

    def _is_oidc_login(self, provider: str, broker: Broker) -> bool:
        return broker.provider.issuer is not None and "openid" in self.scopes_of(provider, broker)

    # -- tenant, principal, session --------------------------------------------------------
    def _resolve_tenant(self, request: BrokerRequest) -> str | None:
        if self.tenant_resolver is None:
            return "default"
        try:
            value = self.tenant_resolver(request)
            return None if value is None else validate_tenant(value)
        except (ValueError, TypeError):
            raise _Reject(
                400, "invalid_tenant", "The tenant of this request is not valid."
            ) from None

    def _resolve_principal(self, request: BrokerRequest) -> str | None:
        if self.principal_resolver is None:
            return None
        try:
            value = self.principal_resolver(request)
            return None if value is None else PrincipalId(value)
        except (ValueError, TypeError):
            raise _Reject(
                400, "invalid_principal", "The principal of this request is not valid."
            ) from None

    def _revoked_name(self, sid: str) -> str:
        return "obm-session-revoked:" + self.sealer.tag("revoked", sid, 40)

    def session_cookie_name(self, tenant: str) -> str:
        """The session cookie of ``tenant``: one per tenant, so one browser holds several (J2).

        ``obm_session`` for the tenant ``default`` (an app without tenants), else
        ``obm_session_`` plus a keyed hash of the tenant id (``__Host-`` first on https).
        """
        name = self._cookie_names.get(tenant)
        if name is None:
            name = self.session_cookie
            if tenant != "default":
                name += "_" + self.sealer.tag("session-name", tenant, 16)
            if len(self._cookie_names) >= _OPENED_MAX:
                self._cookie_names.clear()
            self._cookie_names[tenant] = name
        return name

    def _open_session(
        self, cookies: Mapping[str, str], now: float, tenant: str
    ) -> Step[_Session | None]:
        """``tenant``'s live session: sealed, in time, of that tenant, not revoked anywhere."""
        session = self._read_session(cookies, now, tenant)
        if session is None:
            return None
        if self._checked.get(session.sid, 0.0) > now:  # the store said so within the interval
            return session
        remaining = max(1.0, self.absolute_timeout - (now - session.created_at))
        try:
            revoked = yield IsRevoked(
                self.session_store, self._revoked_name(session.sid), remaining
            )
        except StorageError as exc:  # fail closed: a session we cannot check is refused
            log.warning("session check failed: %s", _reason(exc))
            raise _store_down() from None
        if revoked is True:
            self._remember_revoked(session.sid, now)
            return None
        if self._check_interval > 0:
            with self._lock:
                _bounded_put(self._checked, session.sid, now + self._check_interval, _DENYLIST_MAX)
        return session

    def _read_session(self, cookies: Mapping[str, str], now: float, tenant: str) -> _Session | None:
        name = self.session_cookie_name(tenant)
        value = cookies.get(name)
        if not value:
            return None
        session = self._opened.get(value)  # a dict read is atomic; writes take the lock
        if session is None:
            # The cookie name is the AEAD's associated data: a value moved to another tenant's
            # cookie does not open.
            data = self.sealer.open(name, value, now=now, max_age=self.absolute_timeout)
            session = None if data is None else _parse_session(data)
            if session is None:
                return None
            # Authenticated values only; saves the AEAD and JSON work on every later request.
            with self._lock:
                _bounded_put(self._opened, value, session, _OPENED_MAX)
        if session.tenant != tenant:  # J2: a session answers only in its own tenant
            return None
        if (
            now - session.created_at > self.absolute_timeout
            or now - session.seen_at > self.idle_timeout
        ):
            return None
        if session.sid in self._logged_out:
            return None
        return session

    def _session_cookie(self, session: _Session, now: float) -> tuple[str, str]:
        remaining = self.absolute_timeout - (now - session.created_at)
        max_age = max(1, int(min(self.idle_timeout, remaining)))
        name = self.session_cookie_name(session.tenant or "default")
        value = self.sealer.seal(name, session.payload(), now)
        return ("set-cookie", self.cookies.set_cookie(name, value, max_age))

    def csrf_for(self, session_id: str) -> str:
        return self.sealer.tag("csrf", session_id, 43)

    def _forget_sid(self, session: _Session, now: float) -> Step[None]:
        """Revoke ``session`` here and, through the shared store, on every other worker."""
        self._remember_revoked(session.sid, now)
        remaining = max(1.0, self.absolute_timeout - (now - session.created_at))
        try:
            yield MarkRevoked(self.session_store, self._revoked_name(session.sid), remaining)
        except StorageError as exc:
            log.warning("session revocation failed: %s", _reason(exc))
            raise _store_down() from None

    def _remember_revoked(self, sid: str, now: float) -> None:
        """This worker's bounded cache of revoked ids (saves the store read for them)."""
        with self._lock:
            _bounded_put(self._logged_out, sid, True, _DENYLIST_MAX)
            self._checked.pop(sid, None)

    # -- pass-through requests -------------------------------------------------------------
    def prepare(self, request: BrokerRequest) -> Step[Prepared | Response]:
        """The context for a request the app will answer, or an error response (fail closed).

        A generator like the handlers: drive it with :func:`drive` / :func:`adrive`.
        """
        try:
            return (yield from self._prepare(request))
        except _Reject as reject:
            return self._error(request, reject)

    def _prepare(self, request: BrokerRequest) -> Step[Prepared | Response]:
        tenant = self._resolve_tenant(request)
        principal = self._resolve_principal(request)
        session = None
        set_cookies: list[tuple[str, str]] = []
        cookie_header = request.cookie
        if tenant is not None and cookie_header and self.session_cookie in cookie_header:
            now = self._now()
            cookies = parse_cookie_header(cookie_header)
            session = yield from self._open_session(cookies, now, tenant)
            if session is not None and now - session.seen_at > self.refresh_after:
                session = session.seen(now)
                set_cookies.append(self._session_cookie(session, now))
        connections: tuple[str, ...] = ()
        resolved = principal is not None
        issuer = None
        # J2: a session made in another tenant gives this request no principal.
        if session is not None and session.tenant == tenant:
            if principal is None:
                principal = session.principal
            if session.principal == principal:
                connections = tuple(
                    c for c in session.connections if self.registry is not None or c in self.brokers
                )
                issuer = session.issuer
        context = BrokerContext(
            self,
            tenant=tenant,
            principal=principal,
            connections=connections,
            session_id=None if session is None else session.sid,
            issuer=issuer,
            resolved=resolved,
            path=request.path,
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
            return _redirect(self.login_url(name, target, tenant), 302)
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
            [("content-type", "application/problem+json"), *_SECURITY_HEADERS],
            body,
        )

    def answer(self, request: BrokerRequest, exc: BrokerError) -> Response:
        """The middleware's answer to ``exc`` raised by the app: a login, a 401 or a 404."""
        if isinstance(exc, AuthorizationRequired):
            return self.authorization_required(request, exc)
        if isinstance(exc, UnknownTenant):
            return self._error(request, _Reject(404, "unknown_tenant", "No such tenant."))
        return self._error(
            request,
            _Reject(404, "unknown_provider", "This provider is not enabled for this tenant."),
        )

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
                raise _Reject(404, "unknown_provider", "No such provider is configured.")
            if route.kind == "logout":
                response = yield from self._logout(request, body)
            elif route.kind == "login":
                assert route.provider is not None
                response = yield from self._login(route.provider, request)
            else:
                assert route.provider is not None
                response = yield from self._callback(route.provider, request)
        except _Reject as reject:
            if route.provider is not None and route.kind != "unknown_provider":
                reject.retry = self._retry_url(route.provider, reject.code)
            return self._error(request, reject)
        return response

    def _retry_url(self, provider: str, code: str) -> str | None:
        """A relative login URL (on the host the user is on) when a new login can help."""
        if code not in _RETRYABLE:
            return None
        return f"{self.base_path}{self.prefix}/{quote(provider, safe='')}/login?return_to=/"

    def _flow_cookie_name(self, state: str) -> str:
        return self.flow_cookie_prefix + self.sealer.tag("flow-name", state, 16)

    def _login(self, provider: str, request: BrokerRequest) -> Handler:
        if request.method not in ("GET", "HEAD"):
            raise _Reject(405, "method_not_allowed", "Use GET for the login route.")
        now = self._now()
        params = dict(reversed(request.query_pairs()))  # the first value wins
        return_to = safe_return_to(params.get("return_to"), base_url=self.base_url)
        request.return_to = return_to
        tenant = self._resolve_tenant(request)
        if tenant is None:
            raise _Reject(400, "tenant_required", "This login needs a tenant.")
        principal = self._resolve_principal(request)
        resolved = principal is not None
        cookies = parse_cookie_header(request.header("cookie"))
        broker = yield from self._route_broker(tenant, provider)
        if principal is None and not self._is_oidc_login(provider, broker):
            # J10: a fresh principal on every login, never one from a pre-login session (a
            # planted session must not receive the victim's token under the attacker's name).
            principal = "browser-" + secrets.token_urlsafe(18)
        try:
            result = yield StartAuthorization(
                broker,
                tenant=tenant,
                principal=principal,
                scopes=self.scopes_of(provider, broker),
                redirect_uri=self.redirect_uri(provider, tenant),
            )
        except (TransportError, TransientProviderError) as exc:
            log.warning("login for provider=%s failed: %s", provider, _reason(exc))
            raise _Reject(
                502, "provider_unavailable", "The provider could not be reached."
            ) from None
        except StorageError as exc:
            log.warning("login for provider=%s failed: %s", provider, _reason(exc))
            raise _store_down() from None
        except ProviderError as exc:  # e.g. a pushed authorization request was refused
            log.warning("login for provider=%s refused: %s", provider, exc.error)
            raise _Reject(502, "provider_error", "The provider refused the login.") from None
        auth_request = cast(AuthorizationRequest, result)
        state = auth_request.state
        issuer = auth_request.issuer
        if issuer is None:
            issuer = broker.provider.issuer
        flow: dict[str, JSONValue] = {
            "s": self.sealer.tag("state", state, 64),
            "p": provider,
            "t": tenant,
            "r": return_to,
            "i": issuer,
            "rp": resolved,
            "oidc": principal is None,
        }
        name = self._flow_cookie_name(state)
        response = _redirect(auth_request.url, 302)
        for stale in self._stale_flows(cookies, now):
            response.headers.append(("set-cookie", self.cookies.delete_cookie(stale)))
        value = self.sealer.seal(name, flow, now)
        response.headers.append(
            ("set-cookie", self.cookies.set_cookie(name, value, int(self.flow_ttl)))
        )
        return response

    def _stale_flows(self, cookies: Mapping[str, str], now: float) -> list[str]:
        """Flow cookies to delete so that, with the new one, at most ``max_flows`` remain."""
        flows: list[tuple[float, str]] = []
        stale: list[str] = []
        for name, value in cookies.items():
            if not name.startswith(self.flow_cookie_prefix):
                continue
            data = self.sealer.open(name, value, now=now, max_age=self.flow_ttl)
            iat = None if data is None else data.get("iat")
            if not isinstance(iat, int):
                stale.append(name)
            else:
                flows.append((float(iat), name))
        flows.sort()
        excess = len(flows) - (self.max_flows - 1)
        if excess > 0:
            stale.extend(name for _, name in flows[:excess])
        return stale

    def _callback(self, provider: str, request: BrokerRequest) -> Handler:
        if request.method != "GET":  # HEAD (link prefetchers) must not spend the code
            raise _Reject(405, "method_not_allowed", "Use GET for the callback route.")
        now = self._now()
        pairs = request.query_pairs()
        counts: dict[str, int] = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
        for key in _SINGLE_PARAMS:
            if counts.get(key, 0) > 1:
                raise _Reject(
                    400, "duplicate_parameter", f"The parameter {key!r} appears more than once."
                )
        params = dict(pairs)
        state = params.get("state")
        if not state:
            raise _Reject(400, "state_missing", "The callback carries no state.")
        # B1: the flow must have been started by THIS browser, for THIS provider, recently.
        name = self._flow_cookie_name(state)
        cookies = parse_cookie_header(request.header("cookie"))
        flow = self.sealer.open(name, cookies.get(name), now=now, max_age=None)
        if flow is None or not hmac.compare_digest(
            str(flow.get("s", "")), self.sealer.tag("state", state, 64)
        ):
            raise _Reject(400, "state_mismatch", "This login was not started in this browser.")
        consume = ("set-cookie", self.cookies.delete_cookie(name))
        try:
            iat = flow.get("iat")
            if not isinstance(iat, int) or now - iat > self.flow_ttl:
                raise _Reject(400, "state_expired", "This login took too long; start again.")
            if flow.get("p") != provider:
                raise _Reject(400, "state_mismatch", "This login was started for another provider.")
            tenant, return_to, issuer = flow.get("t"), flow.get("r"), flow.get("i")
            if not isinstance(tenant, str) or not isinstance(return_to, str):
                raise _Reject(400, "state_mismatch", "This login cannot be completed.")
            # J2: a callback that arrives in another tenant (a header, a host) is refused.
            here = self._resolve_tenant(request) if self.tenant_resolver is not None else None
            if here is not None and here != tenant:
                raise _Reject(400, "tenant_mismatch", "This login was started in another tenant.")
            # B7: provider errors only after the state check, and never trusted.
            if "error" in params:
                error = params["error"]
                shown = error if error.replace("_", "").isalnum() and len(error) <= 64 else "error"
                description = params.get("error_description", "")[:300]
                raise _Reject(400, "authorization_denied", _denied(shown, description))
            # B2: RFC 9207 mix-up defence.
            iss = params.get("iss")
            broker = yield from self._route_broker(tenant, provider)
            if iss is not None:
                if issuer is not None and not hmac.compare_digest(
                    iss.encode(), str(issuer).encode()
                ):
                    raise _Reject(
                        400, "issuer_mismatch", "The response came from an unexpected issuer."
                    )
            elif broker.provider.authorization_response_iss_parameter_supported:
                raise _Reject(400, "issuer_missing", "The provider must identify itself (iss).")
            code = params.get("code")
            if not code:
                raise _Reject(400, "invalid_request", "The callback carries no code.")
            extra_names = set(broker.provider.callback_params)
            extra = {k: v for k, v in params.items() if k in extra_names}
            try:
                result = yield ExchangeCode(broker, Secret(state), Secret(code), iss, extra)
            except AuthorizationFlowError as exc:
                raise _Reject(400, exc.code, "The login could not be completed.") from None
            except (TransportError, TransientProviderError) as exc:
                log.warning("code exchange for provider=%s failed: %s", provider, _reason(exc))
                raise _Reject(
                    502, "provider_unavailable", "The provider could not be reached."
                ) from None
            except ProviderError as exc:
                log.warning("code exchange for provider=%s rejected: %s", provider, exc.error)
                raise _Reject(
                    400, "exchange_failed", "The provider rejected the authorization code."
                ) from None
            except StorageError as exc:
                log.warning("code exchange for provider=%s failed: %s", provider, _reason(exc))
                raise _store_down() from None
            except BrokerError as exc:
                log.warning("code exchange for provider=%s failed: %s", provider, _reason(exc))
                raise _Reject(400, "exchange_failed", "The login could not be completed.") from None
            record = cast(TokenRecord, result)
            principal = str(record.key.principal)
            old = yield from self._open_session(cookies, now, tenant)
            connections: tuple[str, ...] = (provider,)
            # J10: nothing from a pre-login session carries into the new one, except the other
            # connections of a principal the app itself resolved (it vouches for the identity).
            if (
                flow.get("rp") is True
                and old is not None
                and old.tenant == tenant
                and old.principal == principal
            ):
                connections = tuple(dict.fromkeys((*old.connections, provider)))
            if old is not None:
                yield from self._forget_sid(old, now)
            # B8: a new session id on every login (no fixation).
            session = _Session(
                sid=secrets.token_urlsafe(24),
                tenant=str(record.key.tenant),
                principal=principal,
                connections=connections,
                created_at=now,
                seen_at=now,
                # J1: the session records the issuer with a principal taken from an ID token.
                issuer=str(issuer) if flow.get("oidc") is True and issuer is not None else None,
            )
            response = _redirect(return_to, 303)
            response.headers.append(self._session_cookie(session, now))
        except _Reject as reject:
            reject.retry = self._retry_url(provider, reject.code)
            response = self._error(request, reject)
        response.headers.append(consume)
        return response

    def _logout(self, request: BrokerRequest, body: bytes) -> Handler:
        if request.method in ("GET", "HEAD") and "text/html" in (request.header("accept") or ""):
            return (yield from self._logout_form(request))
        if request.method != "POST":
            response = self._error(
                request, _Reject(405, "method_not_allowed", "Log out with a POST request.")
            )
            response.headers.append(("allow", "POST"))
            return response
        now = self._now()
        cookies = parse_cookie_header(request.header("cookie"))
        form: dict[str, str] = {}
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded" and body:
            form = dict(reversed(parse_qsl(body.decode("latin-1"), keep_blank_values=True)))
        query = dict(reversed(request.query_pairs()))
        target = safe_return_to(
            form.get("return_to") or query.get("return_to"), base_url=self.base_url
        )
        # Logout ends the session of one tenant: the one this request (or return_to) names.
        request.return_to = target
        tenant = self._resolve_tenant(request)
        if tenant is None:
            raise _Reject(400, "tenant_required", "This logout needs a tenant.")
        session = yield from self._open_session(cookies, now, tenant)
        # G3: POST plus an Origin check, or a CSRF token when the client sends no Origin.
        origin = request.header("origin")
        fetch_site = request.header("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            raise _Reject(403, "csrf_failed", "Cross-site logout requests are refused.")
        if origin == "null":
            # An opaque origin (Chromium sends it for forms on no-referrer pages): it proves
            # nothing either way, so the CSRF token must.
            origin = None
        if origin is not None:
            if not hmac.compare_digest(
                origin.lower().encode(), self.origin_for(tenant).encode()
            ) and not hmac.compare_digest(origin.lower().encode(), self.origin.encode()):
                raise _Reject(403, "csrf_failed", "The request came from another origin.")
        else:
            sent = request.header("x-csrf-token") or form.get("csrf_token") or ""
            if session is None or not hmac.compare_digest(
                sent.encode(), self.csrf_for(session.sid).encode()
            ):
                raise _Reject(403, "csrf_failed", "The CSRF token is missing or wrong.")
        if session is not None and session.tenant is not None and session.principal is not None:
            for provider in session.connections:
                try:
                    broker = yield from self.broker_step(session.tenant, provider)
                    yield Revoke(
                        broker,
                        tenant=session.tenant,
                        principal=session.principal,
                        scopes=self.scopes_of(provider, broker),
                    )
                except BrokerError as exc:
                    log.warning(
                        "revocation at logout failed for provider=%s: %s",
                        provider,
                        _reason(exc),
                    )
            yield from self._forget_sid(session, now)
        response = _redirect(target, 303)
        name = self.session_cookie_name(tenant)
        response.headers.append(("set-cookie", self.cookies.delete_cookie(name)))
        return response

    # -- error pages -----------------------------------------------------------------------
    def _error(self, request: BrokerRequest, reject: _Reject) -> Response:
        accept = request.header("accept") or ""
        headers = list(_SECURITY_HEADERS)
        if "application/json" in accept and "text/html" not in accept:
            body = json.dumps(
                {"error": reject.code, "error_description": reject.description},
                separators=(",", ":"),
            ).encode()
            headers.insert(0, ("content-type", "application/json"))
        else:
            body = error_page(
                reject.status,
                reject.code,
                reject.description,
                home=self.base_path + "/",
                retry=reject.retry,
            )
            headers[:0] = PAGE_HEADERS
        if reject.status == 503:
            headers.append(("retry-after", "30"))
        return Response(reject.status, headers, body)

    def _logout_form(self, request: BrokerRequest) -> Handler:
        """``GET /logout`` from a browser: ask, with a POST form (SECURITY G3: GET never logs
        out). The form carries the CSRF token and the validated ``return_to``."""
        query = dict(reversed(request.query_pairs()))
        target = safe_return_to(query.get("return_to"), base_url=self.base_url)
        request.return_to = target
        tenant = self._resolve_tenant(request)
        session = None
        if tenant is not None:
            cookies = parse_cookie_header(request.header("cookie"))
            session = yield from self._open_session(cookies, self._now(), tenant)
        body = logout_page(
            action=f"{self.base_path}{self.prefix}/logout",
            return_to=target,
            csrf_token=None if session is None else self.csrf_for(session.sid),
            signed_in=session is not None and bool(session.connections),
        )
        return Response(200, [*PAGE_HEADERS, *_SECURITY_HEADERS], body)


def _store_down() -> _Reject:
    return _Reject(503, "store_unavailable", "The app's token store did not answer.")


def _denied(error: str, description: str) -> str:
    """ "The provider answered 'access_denied': The user denied access." (printable ASCII of
    the untrusted description only, capitalised, one sentence end)."""
    text = "".join(c for c in description if " " <= c <= "~").strip()
    if not text:
        return f"The provider answered {error!r}."
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return f"The provider answered {error!r}: {text}"


def _check_base_url(url: str, what: str) -> tuple[str, str]:
    """(origin, path) of an absolute https URL (plain http only on a loopback host)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(f"{what} must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"{what} must not carry a query, fragment or userinfo")
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise ConfigurationError(
            f"{what} must use https; plain http is allowed only on a loopback host"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}", parts.path.rstrip("/")
