"""The middleware's configuration: its keyword options and the checks they pass at start-up.

Owns: :class:`MiddlewareOptions` (the names and types both middlewares take), the checks of
``brokers=`` / ``registry=`` / ``scopes=``, of ``base_url`` and ``tenant_base_url`` (https, or
plain http on a loopback host only; a tenant host differs from ``base_url`` in its host only),
of the route prefix and of the timeouts. Every mistake is a :class:`ConfigurationError` raised
when the middleware is built, never on a request.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Final
from typing import Required
from typing import TypedDict
from urllib.parse import urlsplit

from .._core.errors import ConfigurationError
from .._core.model import ProviderId
from .._core.model import Secret

if TYPE_CHECKING:
    from ..broker import Broker
    from ..registry import Registry
    from ..stores.base import TokenStore
    from ._http import PrincipalResolver
    from ._http import TenantResolver

__all__ = [
    "CONTEXT_KEY",
    "MAX_FORM_BYTES",
    "MiddlewareOptions",
    "check_base_url",
    "check_brokers",
    "check_prefix",
    "check_scopes",
    "check_tenant_base_url",
    "check_timeouts",
]

#: where the :class:`BrokerContext` is put: ``scope[CONTEXT_KEY]`` / ``environ[CONTEXT_KEY]``
CONTEXT_KEY: Final = "oauth2_broker"
#: the largest logout form body read
MAX_FORM_BYTES: Final = 64 * 1024
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


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


def check_brokers(
    brokers: Mapping[str, Broker] | None, registry: Registry | None
) -> dict[str, Broker]:
    """Exactly one of ``brokers=`` and ``registry=``; ``brokers`` a non-empty mapping."""
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
    return dict(brokers or {})


def check_scopes(
    brokers: Mapping[str, Broker],
    scopes: Mapping[str, Iterable[str]],
    registry: Registry | None,
) -> dict[str, tuple[str, ...]]:
    """The scopes a login asks for, per provider name: ``scopes[name]``, else the broker's
    descriptor's ``default_scopes``. Provider names are well-formed and hold no ``/``."""
    for name in (*brokers, *scopes):
        ProviderId(name)
        if "/" in name:
            raise ConfigurationError(f"provider name {name!r} must not contain '/'")
    unknown = set(scopes) - set(brokers)
    if unknown and registry is None:
        raise ConfigurationError(f"scopes given for unknown providers: {sorted(unknown)}")
    wanted = {name: tuple(broker.provider.default_scopes) for name, broker in brokers.items()}
    for name, given in scopes.items():
        if isinstance(given, str):
            raise ConfigurationError(f"scopes[{name!r}] must be a list of scope strings")
        wanted[name] = tuple(given)
    return wanted


def check_prefix(prefix: str) -> str:
    if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ConfigurationError("prefix must start with '/' and not end with '/'")
    return prefix


def check_base_url(url: str, what: str) -> tuple[str, str]:
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


def check_tenant_base_url(tenant_base_url: str | None, origin: str, base_path: str) -> None:
    """Subdomain tenants: each tenant's login and callback run on its own host (host-only
    cookies), e.g. ``"https://{tenant}.example.com"``; never built from the Host header."""
    if tenant_base_url is None:
        return
    if tenant_base_url.count("{tenant}") != 1 or "{tenant}" not in urlsplit(
        tenant_base_url
    ).netloc.replace("%7Btenant%7D", "{tenant}"):
        raise ConfigurationError(
            "tenant_base_url must hold '{tenant}' once, in the host: 'https://{tenant}.example.com'"
        )
    tenant_origin, path = check_base_url(
        tenant_base_url.replace("{tenant}", "tenant"), "tenant_base_url"
    )
    if tenant_origin.startswith("https:") != origin.startswith("https:") or path != base_path:
        raise ConfigurationError(
            "tenant_base_url must have base_url's scheme and path, only another host"
        )


def check_timeouts(
    *, flow_ttl: float, idle: float, absolute: float, max_flows: int, check_interval: float
) -> None:
    if flow_ttl <= 0 or idle <= 0 or absolute <= 0:
        raise ConfigurationError("timeouts must be positive")
    if max_flows < 1:
        raise ConfigurationError("max_flows must be at least 1")
    if not check_interval >= 0:
        raise ConfigurationError(
            f"session_check_interval must be >= 0 seconds; got {check_interval!r}"
        )
