"""Provider discovery: build a ProviderDescriptor from an issuer's published metadata.

Owns: ``discover()`` / ``adiscover()``, which fetch the OpenID Connect discovery document or the
RFC 8414 authorization-server metadata (in that order, as ``_core.oauth.metadata_urls`` lists
them) and validate it with ``ProviderDescriptor.from_metadata``: the document's ``issuer`` must
equal the issuer asked for, to the letter (SECURITY A10). The fetching is a sans-IO flow run by
the same drivers as every broker flow. Must not import: starlette, requests, store drivers.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING
from typing import Any

import httpx2

from ._core import oauth
from ._core.effects import Effect
from ._core.effects import HttpResponse
from ._core.errors import ConfigurationError
from ._core.provider import ProviderDescriptor
from ._drivers import AsyncDriver
from ._drivers import SyncDriver
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    import httpx

__all__ = ["adiscover", "discover"]


def discovery_flow(
    id: str, issuer: str, overrides: dict[str, Any]
) -> Generator[Effect, Any, ProviderDescriptor]:
    """Try each metadata URL; the first document found must name exactly ``issuer``."""
    for url in oauth.metadata_urls(issuer):
        response: HttpResponse = yield oauth.discovery_request(url)
        if response.status_code == 404:
            continue
        if response.status_code != 200:
            raise oauth.classify_error(response)
        return ProviderDescriptor.from_metadata(
            id, response.body, expected_issuer=issuer, **overrides
        )
    raise ConfigurationError(f"no metadata document found for issuer {issuer[:200]!r}")


def discover(
    issuer: str,
    *,
    id: str,
    http_client: httpx2.Client | httpx.Client | None = None,
    timeout: float = 10.0,
    **overrides: Any,
) -> ProviderDescriptor:
    """Fetch and validate ``issuer``'s metadata; keyword ``overrides`` adjust the descriptor."""
    client = http_client or httpx2.Client(timeout=timeout, follow_redirects=False)
    try:
        driver = SyncDriver(MemoryStore(), lambda: client, provider=id, deadline=timeout)
        result: ProviderDescriptor = driver.run(discovery_flow(id, issuer, overrides))
        return result
    finally:
        if http_client is None:
            client.close()


async def adiscover(
    issuer: str,
    *,
    id: str,
    http_client: httpx2.AsyncClient | httpx.AsyncClient | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline per provider call, as in discover()
    **overrides: Any,
) -> ProviderDescriptor:
    """Async :func:`discover`."""
    client = http_client or httpx2.AsyncClient(timeout=timeout, follow_redirects=False)
    try:

        async def current() -> httpx2.AsyncClient | httpx.AsyncClient:
            return client

        driver = AsyncDriver(MemoryStore(), current, provider=id, deadline=timeout)
        result: ProviderDescriptor = await driver.run(discovery_flow(id, issuer, overrides))
        return result
    finally:
        if http_client is None:
            await client.aclose()
