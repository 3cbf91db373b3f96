"""Ready-made tenant resolvers for ``tenant_resolver=``.

A resolver is ``callable(request: BrokerRequest) -> str | None``. It returns the tenant id, or
``None`` when the request has no tenant (pass-through requests then get a context without a
tenant, and the login route answers 400 ``tenant_required``). It raises ``ValueError`` when the
request names a tenant it must not (a foreign host, a header from an untrusted peer): the
middleware answers 400 ``invalid_tenant`` and never falls back to a default (SECURITY G6).
Whatever a resolver returns is validated by the one strict rule (:func:`validate_tenant`:
ASCII letters, digits, ``.``, ``_``, ``-``; no ``..``, ``/``, percent-escapes, non-NFC,
zero-width, full-width or look-alike characters) before use.

Owns: :func:`path_prefix_tenant`, :func:`subdomain_tenant`, :func:`header_tenant`.
Must not import: the broker, any web framework, httpx.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from collections.abc import Iterable
from typing import Final

from .._core.errors import ConfigurationError
from ._http import BrokerRequest

__all__ = ["header_tenant", "path_prefix_tenant", "subdomain_tenant"]

_LABEL: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Resolver = Callable[[BrokerRequest], "str | None"]


def path_prefix_tenant(root: str = "/t") -> Resolver:
    """Tenant from the first path segment under ``root``: ``/t/acme/reports`` → ``"acme"``.

    On the login route the tenant comes from the (validated) ``return_to`` path, so
    ``login_url("idp", return_to="/t/acme/reports")`` logs in for tenant ``acme``.
    Paths outside ``root`` have no tenant (``None``); a malformed segment raises ``ValueError``.
    """
    if not root.startswith("/") or root.endswith("/"):
        raise ConfigurationError("root must start with '/' and not end with '/'")
    head = root + "/"

    def resolve(request: BrokerRequest) -> str | None:
        path = request.return_to if request.return_to is not None else request.path
        if not path.startswith(head):
            return None
        segment = path[len(head) :].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if not _SEGMENT.match(segment):
            raise ValueError("malformed tenant path segment")
        return segment

    return resolve


def _host_without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def subdomain_tenant(base_domain: str) -> Resolver:
    """Tenant from the leftmost label of ``<tenant>.<base_domain>`` in the ``Host`` header.

    The bare ``base_domain`` has no tenant (``None``); any other host (another domain, nested
    labels, a look-alike) raises ``ValueError``. Give the middleware ``tenant_base_url`` too,
    so that each tenant's login, callback and session cookie are on its own host; without it
    they run on ``base_url``'s host (host-only ``__Host-`` cookies), where a login started on
    a tenant host cannot finish.
    """
    base = base_domain.strip().lower().strip(".")
    if not base or "/" in base or ":" in base:
        raise ConfigurationError("base_domain must be a bare domain name like 'example.com'")
    suffix = "." + base

    def resolve(request: BrokerRequest) -> str | None:
        host = _host_without_port(request.host or "")
        if host == base:
            return None
        if not host.endswith(suffix):
            raise ValueError("host is not under the tenant base domain")
        label = host[: -len(suffix)]
        if not _LABEL.match(label):
            raise ValueError("malformed tenant subdomain")
        return label

    return resolve


def header_tenant(
    header: str = "X-Tenant-Id",
    *,
    trusted_proxies: Iterable[str],
) -> Resolver:
    """Tenant from ``header``, believed only when the peer address is a trusted proxy.

    ``trusted_proxies`` lists addresses or networks (``"10.0.0.0/8"``, ``"127.0.0.1"``) and
    has no default. The header from any other peer raises ``ValueError`` (400), so a client that
    bypasses the proxy cannot choose its tenant; no header means no tenant (``None``).
    """
    networks = []
    for entry in trusted_proxies:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigurationError(f"not an IP address or network: {entry!r}") from None
    if not networks:
        raise ConfigurationError("header_tenant needs at least one trusted proxy")
    name = header.lower()

    def trusted(peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in networks)

    def resolve(request: BrokerRequest) -> str | None:
        value = request.header(name)
        if value is None:
            return None
        if not trusted(request.client_host):
            raise ValueError("tenant header from an untrusted peer")
        return value.strip()

    return resolve
