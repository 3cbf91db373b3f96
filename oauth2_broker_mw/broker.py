"""The Broker: one object serving sync and async callers for one provider registration.

Owns: configuration, the in-process lease cache (bounded), the in-process singleflight shared
by threads and tasks, the provider HTTP clients, and the public ``lease`` / ``alease``,
``start_authorization``, ``exchange_code``, ``refresh``, ``revoke`` operations. Every OAuth
decision is delegated to the sans-IO flows in ``_core/flows.py``; ``_drivers.py`` runs them.
Must not import: starlette, requests, store driver modules (redis, psycopg).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import Self
from typing import TypeAlias
from typing import TypeVar

import httpx2

from ._core import oauth
from ._core.dpop import DPoPKey
from ._core.dpop import NonceCache
from ._core.dpop import make_proof
from ._core.effects import Flow
from ._core.errors import AuthorizationRequired
from ._core.errors import ConfigurationError
from ._core.errors import InsufficientScope
from ._core.errors import InvalidGrant
from ._core.errors import InvalidIdentifier
from ._core.flows import AuthorizationRequest
from ._core.flows import FlowConfig
from ._core.flows import ForgetReport
from ._core.flows import RevocationDrain
from ._core.flows import drain_revocations_flow
from ._core.flows import exchange_code_flow
from ._core.flows import flush_unsaved_flow
from ._core.flows import forget_keys_flow
from ._core.flows import forget_principal_flow
from ._core.flows import obtain_flow
from ._core.flows import revoke_flow
from ._core.flows import start_authorization_flow
from ._core.model import DEFAULT_TENANT
from ._core.model import REVOCATION_TENANT
from ._core.model import SERVICE_PRINCIPAL
from ._core.model import Lease
from ._core.model import PrincipalId
from ._core.model import ProviderId
from ._core.model import ScopeSet
from ._core.model import Secret
from ._core.model import StoreKey
from ._core.model import TenantId
from ._core.model import TokenRecord
from ._core.policy import RefreshPolicy
from ._core.policy import RevocationRetry
from ._core.provider import ClientConfig
from ._core.provider import ProviderDescriptor
from ._core.provider import check_client_auth
from ._core.provider import check_service_grant
from ._core.ratelimit import Backoff
from ._core.ratelimit import RateLimitPolicy
from ._driver import Call
from ._driver import Calls
from ._driver import arun_calls
from ._driver import call
from ._driver import run_calls
from ._drivers import MAX_RESPONSE_BYTES
from ._drivers import AsyncDriver
from ._drivers import SyncDriver
from ._drivers import UnsavedRotations
from ._singleflight import SingleFlight
from .events import EventBus
from .events import EventHandler
from .stores._commands import PerLoop
from .stores.base import TokenStore
from .telemetry import Telemetry

if TYPE_CHECKING:
    import httpx

    SyncClient = httpx2.Client | httpx.Client
    AsyncClient = httpx2.AsyncClient | httpx.AsyncClient

__all__ = ["Broker", "ForgetReport", "RevocationDrain", "RevocationRetry"]

log = logging.getLogger("oauth2_broker_mw")

ScopesArg = ScopeSet | str | Iterable[str] | None


_UNCHECKED: Final = object()
_D = TypeVar("_D", SyncDriver, AsyncDriver)
R = TypeVar("R")
#: What one obtain flight gives every caller: the stored record and its lease.
Obtained: TypeAlias = tuple[TokenRecord, Lease]


@dataclass(slots=True)
class _Cached:
    lease: Lease
    refresh_at: float
    #: the ``scopes`` argument (as :func:`_hashable_scopes` spells it) whose grant check this
    #: lease last passed: a warm lease with the same argument pays a compare, not a check.
    passed: object = _UNCHECKED


def _hashable_scopes(scopes: ScopesArg, default: tuple[str, ...]) -> tuple[str, ...] | str:
    if scopes is None:
        return default
    if isinstance(scopes, ScopeSet):
        return scopes.scopes
    return scopes if isinstance(scopes, str) else tuple(scopes)


async def _close_async_client(client: httpx2.AsyncClient) -> None:
    await client.aclose()


class SharedResources:
    """What brokers may share: the HTTP clients they own (one sync, one per event loop),
    the in-process singleflight and the lifecycle event bus. One broker makes its own; a
    :class:`~oauth2_broker_mw.Registry` makes one for all its brokers (one connection pool).
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        http_client: SyncClient | None = None,
        async_http_client: AsyncClient | None = None,
        flight_wait: float = 60.0,
        event_queue_size: int = 10_000,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._timeout = timeout
        self._telemetry = telemetry or Telemetry()
        self.events = EventBus(
            maxsize=event_queue_size,
            on_drop=None if telemetry is None else telemetry.event_dropped,
        )
        self._user_client = http_client
        self._user_async_client = async_http_client
        self._owned_client: httpx2.Client | None = None
        # One owned async client per event loop, closed when its loop shuts down (or by
        # aclose()): asyncio.run() once per job does not leak a client per loop.
        self._owned_async: PerLoop[httpx2.AsyncClient] = PerLoop(
            self._new_async_client, _close_async_client
        )
        self._client_lock = threading.Lock()
        self.flights: SingleFlight[tuple[TokenRecord, Lease]] = SingleFlight(
            wait_timeout=flight_wait
        )

    def sync_client(self) -> Any:
        if self._user_client is not None:
            return self._user_client
        if self._owned_client is None:
            with self._client_lock:
                if self._owned_client is None:
                    self._owned_client = self._telemetry.instrument(
                        httpx2.Client(timeout=httpx2.Timeout(self._timeout), follow_redirects=False)
                    )
        return self._owned_client

    async def async_client(self) -> Any:
        if self._user_async_client is not None:
            return self._user_async_client
        return await self._owned_async.get()

    async def _new_async_client(self) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(timeout=httpx2.Timeout(self._timeout), follow_redirects=False)
        instrumented: httpx2.AsyncClient = self._telemetry.instrument(client)
        return instrumented

    def close(self) -> None:
        if self._owned_client is not None:
            self._owned_client.close()
            self._owned_client = None
        self.events.close()

    async def aclose(self) -> None:
        await self._owned_async.aclose_current()
        self.close()


class Broker:
    """Owns one client registration at one provider and every token issued to it.

    ``lease()`` / ``alease()`` return a valid access token for (tenant, principal, scopes):
    the cached one while it is fresh; else a refresh when a refresh token is stored; else
    :class:`AuthorizationRequired`. The application's own token (client credentials) comes
    only from ``service_lease()`` (or for principals the app names in
    ``client_credentials_principals``, or from a descriptor with no user grant at all): it
    never stands in for a user whose grant is missing, revoked or unreadable.
    Concurrent callers of one key, threads and tasks alike, share one provider call; across
    processes and hosts the store's lease lock and compare-and-swap do the same.

    DPoP (RFC 9449) is opt-in: with a descriptor whose ``dpop`` is true, every token request
    carries a proof signed with ``dpop_key`` (a private JWK dict or PEM) and the provider's
    tokens are bound to that key's thumbprint. Without ``dpop_key`` an ephemeral EC P-256 key
    is generated: tokens are then usable by this process only. Every process and host that
    shares a store must pass the same ``dpop_key``.

    Every token-endpoint request passes the provider's gate, shared through the store: after
    a 429/503 with ``Retry-After`` (``backoff``), and beyond the ``rate_limit`` policy's budget
    (for example ``TokenBucket(10, per=60)``), callers get :class:`RateLimited` carrying
    ``retry_after`` and the provider gets no request.

    ``timeout`` bounds each provider call as a whole (connect, headers and body, sync and
    async); ``max_response_bytes`` (1 MiB) caps a provider's response body, checked while it
    streams. Either failure is a :class:`TransportError`.
    """

    def __init__(
        self,
        provider: ProviderDescriptor,
        *,
        client_id: str,
        client_secret: str | Secret | None = None,
        store: TokenStore | None = None,
        http_client: SyncClient | None = None,
        async_http_client: AsyncClient | None = None,
        private_key: Mapping[str, object] | str | None = None,
        private_key_id: str | None = None,
        refresh_margin: float = 60.0,
        refresh_jitter: float = 30.0,
        lock_ttl: float = 15.0,
        lock_wait: float = 30.0,
        pending_ttl: float = 600.0,
        timeout: float = 10.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        client_credentials_principals: Callable[[str, str], bool] | Collection[str] | None = None,
        dpop_key: Mapping[str, object] | str | None = None,
        _shared: SharedResources | None = None,
        event_queue_size: int = 10_000,
        rate_limit: RateLimitPolicy | None = None,
        backoff: Backoff | None = None,
        write_retry_for: float = 5.0,
        revocation_retry: RevocationRetry | None = None,
        _tenant: str | None = None,
    ) -> None:
        if store is None:
            from .stores.memory import MemoryStore

            store = MemoryStore()
        self._provider = provider
        self._client_config = ClientConfig.create(
            client_id,
            client_secret=client_secret,
            private_key=private_key,
            private_key_id=private_key_id,
        )
        check_client_auth(provider, self._client_config)
        self._dpop_key: DPoPKey | None = None
        if provider.dpop:
            if dpop_key is not None:
                self._dpop_key = DPoPKey.load(dpop_key, provider.dpop_signing_alg)
            else:
                self._dpop_key = DPoPKey.generate(provider.dpop_signing_alg)
                log.info(
                    "provider=%s uses DPoP and no dpop_key was given: generated an ephemeral "
                    "key; its tokens are bound to this process only (pass the same dpop_key "
                    "to every process and host that shares the token store)",
                    provider.id,
                )
        elif dpop_key is not None:
            raise ConfigurationError(
                f"dpop_key was given but provider {provider.id!r} does not enable dpop"
            )
        margin = provider.refresh_margin if provider.refresh_margin is not None else refresh_margin
        self._policy = RefreshPolicy(margin=margin, jitter=refresh_jitter)
        self._config = FlowConfig(
            provider=provider,
            client=self._client_config,
            policy=self._policy,
            lock_ttl=lock_ttl,
            lock_wait=lock_wait,
            pending_ttl=pending_ttl,
            write_retry_for=write_retry_for,
            client_credentials_principals=_principal_predicate(client_credentials_principals),
            dpop_key=self._dpop_key,
            dpop_nonces=NonceCache() if self._dpop_key is not None else None,
            backoff=backoff or Backoff(),
            rate_limit=rate_limit,
            tenant=None if _tenant is None else TenantId(_tenant),
        )
        self._revocation_retry = revocation_retry or RevocationRetry()
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self._owns_pool = _shared is None
        self._telemetry = telemetry or Telemetry()
        if _shared is None:
            _shared = SharedResources(
                timeout=timeout,
                http_client=http_client,
                async_http_client=async_http_client,
                flight_wait=lock_wait + 3 * timeout,
                event_queue_size=event_queue_size,
                telemetry=self._telemetry,
            )
        self._pool = _shared
        if cache_size < 1:
            raise ConfigurationError(f"cache_size must be >= 1, got {cache_size!r}")
        # A plain dict read with no lock (one C-level lookup on every lease), written under
        # _cache_lock, first in first out past cache_size: cachetools' FIFOCache costs a
        # Python-level __getitem__ frame per read on the hot path.
        self._cache: dict[str, _Cached] = {}
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._flights = _shared.flights
        self._events = _shared.events
        self._unsaved = UnsavedRotations()

        def driver(kind: type[_D], client: Callable[[], Any]) -> _D:
            """The two drivers differ only in kind and client; they share the rest."""
            return kind(
                self._store,
                client,
                clock=clock,
                telemetry=self._telemetry,
                provider=provider.id,
                events=self._events,
                max_response_bytes=max_response_bytes,
                deadline=timeout,
                unsaved=self._unsaved,
            )

        self._sync = driver(SyncDriver, self._sync_client)
        self._async = driver(AsyncDriver, self._async_client)
        self._key_for = functools.lru_cache(maxsize=4096)(self._build_key)
        self._default_scopes = tuple(provider.default_scopes)

    # -- properties ---------------------------------------------------------------------------
    @property
    def provider(self) -> ProviderDescriptor:
        """The provider descriptor this broker was built with (endpoints, quirks, origins)."""
        return self._provider

    @property
    def telemetry(self) -> Telemetry:
        """The OpenTelemetry spans and metrics this broker reports to."""
        return self._telemetry

    @property
    def store(self) -> TokenStore:
        """Where this broker keeps its records and locks (a ``MemoryStore`` when none was given)."""
        return self._store

    @property
    def tenant(self) -> TenantId | None:
        """The one tenant this broker's registration serves (made by a
        :class:`~oauth2_broker_mw.Registry`), or ``None``: a registration shared by every
        tenant. A :class:`~oauth2_broker_mw.refresher.Refresher` refreshes, and a drain
        delivers, only this tenant's records through it."""
        return self._config.tenant

    @property
    def client_id(self) -> str:
        """The OAuth ``client_id`` of this broker's registration at the provider."""
        return self._client_config.client_id

    @property
    def dpop_thumbprint(self) -> str | None:
        """The RFC 7638 thumbprint (``cnf.jkt``) DPoP tokens are bound to; ``None`` without DPoP."""
        return None if self._dpop_key is None else self._dpop_key.thumbprint

    def dpop_proof(
        self, *, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None
    ) -> str:
        """A fresh DPoP proof for a request to ``htu`` (query and fragment are dropped)."""
        if self._dpop_key is None:
            raise ConfigurationError(f"provider {self._provider.id!r} does not enable dpop")
        return make_proof(
            self._dpop_key,
            htm=htm,
            htu=htu,
            now=self._clock(),
            nonce=nonce,
            access_token=access_token,
        )

    # -- lifecycle events ---------------------------------------------------------------------
    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` (a function or a coroutine function) for every lifecycle event.

        Handlers run on a dispatcher thread, off the lease path: one that raises or is slow
        never fails or delays a lease. Returns the function that unsubscribes ``handler``.
        """
        return self._events.subscribe(handler)

    @property
    def events(self) -> EventBus:
        """The broker's event bus (``dropped``, ``handler_errors``, ``flush()``)."""
        return self._events

    def __repr__(self) -> str:
        return f"Broker(provider={self._provider.id!r}, client_id={self.client_id!r})"

    # -- keys and the in-process cache --------------------------------------------------------
    def _serves(self, tenant: str) -> None:
        """A :class:`~oauth2_broker_mw.Registry` broker holds one tenant's registration: it
        never obtains, refreshes, revokes or logs in for another tenant (SECURITY J4, J7)."""
        own = self._config.tenant
        if own is not None and tenant != own:
            raise ConfigurationError(
                f"this broker holds another tenant's client registration; get tenant "
                f"{str(tenant)[:64]!r}'s broker from the Registry "
                "(registry.broker(tenant=..., provider=...))"
            )

    def _build_key(self, tenant: str, principal: str, scopes: tuple[str, ...] | str) -> StoreKey:
        self._serves(tenant)
        scope_set = ScopeSet.of(scopes, self._provider.scope_delimiter)
        if tenant == REVOCATION_TENANT:
            raise InvalidIdentifier(
                f"tenant {REVOCATION_TENANT!r} is reserved for the revocation queue"
            )
        return StoreKey(
            TenantId(tenant),
            PrincipalId(principal),
            ProviderId(self._provider.id),
            scope_set.fingerprint,
        )

    def _scopes(self, scopes: ScopesArg) -> ScopeSet:
        if scopes is None:
            return ScopeSet(tuple(self._provider.default_scopes))
        return ScopeSet.of(scopes, self._provider.scope_delimiter)

    def key(self, *, tenant: str, principal: str, scopes: ScopesArg = None) -> StoreKey:
        """The store key for (tenant, principal, this provider, scopes); validates the ids."""
        return self._key_for(tenant, principal, _hashable_scopes(scopes, self._default_scopes))

    def cached_lease(self, key: StoreKey) -> Lease | None:
        """The fresh in-process lease for ``key``, or ``None``. No I/O and no lock."""
        try:
            entry = self._cache[key.id]
        except KeyError:
            return None
        if self._clock() < entry.refresh_at:
            return entry.lease
        return None

    def _remember(self, record: TokenRecord) -> Lease:
        lease = Lease.from_record(record)
        entry = _Cached(lease, self._policy.refresh_at(record))
        with self._cache_lock:
            cache = self._cache
            cache.pop(record.key.id, None)  # a replaced entry is the newest
            cache[record.key.id] = entry
            if len(cache) > self._cache_size:
                del cache[next(iter(cache))]
        return lease

    def _forget(self, key: StoreKey) -> None:
        with self._cache_lock:
            self._cache.pop(key.id, None)

    def _forget_cached(self, tenant: TenantId, principal: PrincipalId | None = None) -> None:
        """Drop every cached lease of ``tenant`` (and ``principal``): no I/O."""
        with self._cache_lock:
            gone = [
                name
                for name, entry in self._cache.items()
                if entry.lease.key.tenant == tenant
                and (principal is None or entry.lease.key.principal == principal)
            ]
            for name in gone:
                self._cache.pop(name, None)

    # -- HTTP clients ---------------------------------------------------------------------------
    def _sync_client(self) -> Any:
        return self._pool.sync_client()

    async def _async_client(self) -> Any:
        return await self._pool.async_client()

    # -- leases -------------------------------------------------------------------------------
    def _flight(
        self,
        key: StoreKey,
        scopes: ScopesArg,
        force: bool,
        stale: Secret | None,
        if_version: int | None = None,
    ) -> tuple[str, Callable[[], Flow[TokenRecord]]]:
        """The singleflight key and the flow that obtains a token for ``key``."""
        self._serves(key.tenant)
        flow = functools.partial(
            obtain_flow,
            self._config,
            key,
            self._scopes(scopes),
            force=force,
            stale=stale,
            if_version=if_version,
        )
        if if_version is not None:
            return f"{key.id}#v{if_version}", flow
        return self._flight_key(key, force, stale), flow

    def _flight_key(self, key: StoreKey, force: bool, stale: Secret | None) -> str:
        if stale is not None:
            digest = hashlib.sha256(stale.get_secret_value().encode()).hexdigest()[:32]
            return f"{key.id}#stale:{digest}"
        return f"{key.id}#force" if force else key.id

    def _auth_required(self, key: StoreKey, exc: InvalidGrant) -> AuthorizationRequired:
        self._forget(key)
        error = AuthorizationRequired(
            tenant=key.tenant,
            principal=key.principal,
            provider=key.provider,
            scopes=(),
            reason="the provider rejected the stored grant (invalid_grant); log in again",
        )
        error.__cause__ = exc
        return error

    def _run(self, flow: Flow[R]) -> Calls[R]:
        """``result = yield from self._run(flow)``: the flow through the sync or async driver."""
        result: R = yield Call(self._sync.run, self._async.run, (flow,), {})
        return result

    def _in_flight(self, flight: str, work: Callable[[], Calls[Obtained]]) -> Obtained:
        return self._flights.do(flight, lambda: run_calls(work()))

    async def _ain_flight(self, flight: str, work: Callable[[], Calls[Obtained]]) -> Obtained:
        return await self._flights.ado(flight, lambda: arun_calls(work()))

    def _obtain(
        self,
        key: StoreKey,
        scopes: ScopesArg,
        force: bool,
        stale: Secret | None,
        if_version: int | None = None,
    ) -> Calls[Obtained]:
        """Run the obtain flow once for all concurrent callers of this key."""
        flight, flow = self._flight(key, scopes, force, stale, if_version)

        def work() -> Calls[Obtained]:
            with self._telemetry.operation("lease", self._provider.id):
                record = yield from self._run(flow())
            return record, self._remember(record)

        try:
            with self._telemetry.lease_wait(self._provider.id):
                return (yield from call(self._in_flight, self._ain_flight, flight, work))
        except InvalidGrant as exc:
            raise self._auth_required(key, exc) from exc

    def _cold(
        self,
        key: StoreKey,
        scopes: ScopesArg,
        required_scopes: Iterable[str] | None,
        force_refresh: bool,
        stale: Secret | None,
    ) -> Calls[Lease]:
        lease = (yield from self._obtain(key, scopes, force_refresh, stale))[1]
        return _check_required(lease, required_scopes, self._provider, self._scopes(scopes))

    def _lease_of_key(
        self,
        key: StoreKey | None,
        tenant: str,
        principal: str,
        scopes: ScopesArg,
        required_scopes: Iterable[str] | None,
        force_refresh: bool,
        stale: Secret | None = None,
    ) -> Lease | Calls[Lease]:
        """The cached lease of ``key`` (or of the key of ``tenant`` and ``principal``) while it
        is fresh, with no I/O and no lock, else the flow that obtains one. The per-call path of
        every lease method: the scopes are read once, in their cache form (a generator has no
        second reading), and nothing else is computed while the cached lease will do."""
        if scopes is None:
            hashable: tuple[str, ...] | str = self._default_scopes
        else:
            scopes = hashable = _hashable_scopes(scopes, self._default_scopes)
        if key is None:
            key = self._key_for(tenant, principal, hashable)
        if force_refresh or stale is not None:
            return self._cold(key, scopes, required_scopes, force_refresh, stale)
        try:
            entry = self._cache[key.id]
        except KeyError:
            return self._cold(key, scopes, required_scopes, False, None)
        if self._clock() >= entry.refresh_at:
            return self._cold(key, scopes, required_scopes, False, None)
        # Fresh, so it must carry what was asked for (else InsufficientScope). The default
        # check runs once per ``scopes`` argument (``hashable``: its cache form).
        if required_scopes is not None:
            asked = self._scopes(scopes)
            return _check_required(entry.lease, required_scopes, self._provider, asked)
        if entry.passed != hashable:
            _check_required(entry.lease, None, self._provider, self._scopes(scopes))
            entry.passed = hashable
        return entry.lease

    # unasync: generated from alease_for_key; edit that one, then run scripts/unasync.py
    def lease_for_key(
        self,
        key: StoreKey,
        *,
        scopes: ScopesArg = None,
        required_scopes: Iterable[str] | None = None,
        force_refresh: bool = False,
    ) -> Lease:
        """:meth:`lease` for a key built with :meth:`key`."""
        got = self._lease_of_key(key, "", "", scopes, required_scopes, force_refresh)
        return got if isinstance(got, Lease) else run_calls(got)

    async def alease_for_key(
        self,
        key: StoreKey,
        *,
        scopes: ScopesArg = None,
        required_scopes: Iterable[str] | None = None,
        force_refresh: bool = False,
    ) -> Lease:
        """:meth:`lease` for a key built with :meth:`key`."""
        got = self._lease_of_key(key, "", "", scopes, required_scopes, force_refresh)
        return got if isinstance(got, Lease) else await arun_calls(got)

    # unasync: generated from alease; edit that one, then run scripts/unasync.py
    def lease(
        self,
        *,
        tenant: str,
        principal: str,
        scopes: ScopesArg = None,
        required_scopes: Iterable[str] | None = None,
        force_refresh: bool = False,
    ) -> Lease:
        """A valid access token for (tenant, principal, scopes).

        Thread-safe; the async twin never blocks the event loop. Every scope asked for must
        have been granted, else :class:`InsufficientScope`; ``required_scopes`` narrows that
        (``()`` accepts any grant).
        """
        got = self._lease_of_key(None, tenant, principal, scopes, required_scopes, force_refresh)
        return got if isinstance(got, Lease) else run_calls(got)

    async def alease(
        self,
        *,
        tenant: str,
        principal: str,
        scopes: ScopesArg = None,
        required_scopes: Iterable[str] | None = None,
        force_refresh: bool = False,
    ) -> Lease:
        """A valid access token for (tenant, principal, scopes).

        Thread-safe; the async twin never blocks the event loop. Every scope asked for must
        have been granted, else :class:`InsufficientScope`; ``required_scopes`` narrows that
        (``()`` accepts any grant).
        """
        got = self._lease_of_key(None, tenant, principal, scopes, required_scopes, force_refresh)
        return got if isinstance(got, Lease) else await arun_calls(got)

    def _service_lease(
        self,
        scopes: ScopesArg,
        tenant: str | None,
        required_scopes: Iterable[str] | None,
        force_refresh: bool,
    ) -> Lease | Calls[Lease]:
        check_service_grant(self._provider, self._client_config)
        tenant = tenant or self._config.tenant or DEFAULT_TENANT
        return self._lease_of_key(
            None, tenant, SERVICE_PRINCIPAL, scopes, required_scopes, force_refresh
        )

    # unasync: generated from aservice_lease; edit that one, then run scripts/unasync.py
    def service_lease(
        self,
        *,
        scopes: ScopesArg = None,
        tenant: str | None = None,
        required_scopes: Iterable[str] | None = None,
        force_refresh: bool = False,
    ) -> Lease:
        """The application's own token (client credentials), never a user's.

        This is the one way to get the app's identity from a descriptor that also logs users
        in: :meth:`lease` for a user principal never falls back to client credentials. The
        token is stored under ``tenant`` (default: :attr:`tenant` for a registry broker, else
        ``"default"``) and the reserved principal
        ``"@app"``, which no user principal can have. A public client, or a descriptor
        without the ``client_credentials`` grant, is a ``ConfigurationError`` saying which.
        """
        got = self._service_lease(scopes, tenant, required_scopes, force_refresh)
        return got if isinstance(got, Lease) else run_calls(got)

    async def aservice_lease(
        self,
        *,
        scopes: ScopesArg = None,
        tenant: str | None = None,
        required_scopes: Iterable[str] | None = None,
        force_refresh: bool = False,
    ) -> Lease:
        """The application's own token (client credentials), never a user's.

        This is the one way to get the app's identity from a descriptor that also logs users
        in: :meth:`lease` for a user principal never falls back to client credentials. The
        token is stored under ``tenant`` (default: :attr:`tenant` for a registry broker, else
        ``"default"``) and the reserved principal
        ``"@app"``, which no user principal can have. A public client, or a descriptor
        without the ``client_credentials`` grant, is a ``ConfigurationError`` saying which.
        """
        got = self._service_lease(scopes, tenant, required_scopes, force_refresh)
        return got if isinstance(got, Lease) else await arun_calls(got)

    def _replace(self, stale: Lease) -> Lease | Calls[Lease]:
        key, token = stale.key, stale.access_token
        return self._lease_of_key(key, "", "", stale.scopes, None, False, token)

    def replace_lease(self, stale: Lease) -> Lease:
        """The token in ``stale`` was rejected: return a newer one (at most one refresh)."""
        got = self._replace(stale)
        return got if isinstance(got, Lease) else run_calls(got)

    async def areplace_lease(self, stale: Lease) -> Lease:
        """Async :meth:`replace_lease`."""
        got = self._replace(stale)
        return got if isinstance(got, Lease) else await arun_calls(got)

    def _refresh(self, tenant: str, principal: str, scopes: ScopesArg) -> Calls[TokenRecord]:
        key = self.key(tenant=tenant, principal=principal, scopes=scopes)
        return (yield from self._obtain(key, scopes, True, None))[0]

    def refresh(self, *, tenant: str, principal: str, scopes: ScopesArg = None) -> TokenRecord:
        """Force one refresh (shared with concurrent callers) and return the stored record."""
        return run_calls(self._refresh(tenant, principal, scopes))

    async def arefresh(
        self, *, tenant: str, principal: str, scopes: ScopesArg = None
    ) -> TokenRecord:
        """Async :meth:`refresh`."""
        return await arun_calls(self._refresh(tenant, principal, scopes))

    def _refresh_key(self, key: StoreKey, if_version: int | None) -> Calls[TokenRecord]:
        return (yield from self._obtain(key, None, True, None, if_version))[0]

    def refresh_key(self, key: StoreKey, *, if_version: int | None = None) -> TokenRecord:
        """Refresh ``key`` once and return the stored record.

        With ``if_version``, only while the stored record is still at that version: when
        another process (another refresher) already renewed it, its record is returned and no
        token request is made. This is how proactive refreshers on several hosts avoid
        refreshing one grant twice.
        """
        return run_calls(self._refresh_key(key, if_version))

    async def arefresh_key(self, key: StoreKey, *, if_version: int | None = None) -> TokenRecord:
        """Async :meth:`refresh_key`."""
        return await arun_calls(self._refresh_key(key, if_version))

    # -- authorization code -------------------------------------------------------------------
    def _start(
        self,
        tenant: str,
        principal: str | None,
        scopes: ScopesArg,
        redirect_uri: str,
        extra_params: Mapping[str, str] | None,
    ) -> Calls[AuthorizationRequest]:
        self._serves(tenant)
        flow = start_authorization_flow(
            self._config,
            tenant=TenantId(tenant),
            principal=None if principal is None else PrincipalId(principal),
            scopes=self._scopes(scopes),
            redirect_uri=redirect_uri,
            extra_params=extra_params,
        )
        with self._telemetry.operation("start_authorization", self._provider.id):
            return (yield from self._run(flow))

    # unasync: generated from astart_authorization; edit that one, then run scripts/unasync.py
    def start_authorization(
        self,
        *,
        tenant: str,
        principal: str | None,
        scopes: ScopesArg = None,
        redirect_uri: str,
        extra_params: Mapping[str, str] | None = None,
    ) -> AuthorizationRequest:
        """Begin a login: returns the provider URL; state, PKCE verifier and nonce are kept."""
        return run_calls(self._start(tenant, principal, scopes, redirect_uri, extra_params))

    async def astart_authorization(
        self,
        *,
        tenant: str,
        principal: str | None,
        scopes: ScopesArg = None,
        redirect_uri: str,
        extra_params: Mapping[str, str] | None = None,
    ) -> AuthorizationRequest:
        """Begin a login: returns the provider URL; state, PKCE verifier and nonce are kept."""
        return await arun_calls(self._start(tenant, principal, scopes, redirect_uri, extra_params))

    def _exchange(
        self,
        state: Secret,
        code: Secret,
        iss: str | None,
        callback_params: Mapping[str, str] | None,
    ) -> Calls[TokenRecord]:
        flow = exchange_code_flow(
            self._config, state=state, code=code, iss=iss, callback_params=callback_params
        )
        with self._telemetry.operation("exchange_code", self._provider.id):
            record = yield from self._run(flow)
        self._remember(record)
        return record

    # unasync: generated from aexchange_code; edit that one, then run scripts/unasync.py
    def exchange_code(
        self,
        *,
        state: str | Secret,
        code: str | Secret,
        iss: str | None = None,
        callback_params: Mapping[str, str] | None = None,
    ) -> TokenRecord:
        """Finish a login started with :meth:`start_authorization`; stores the tokens.

        ``state`` and ``code`` are wrapped in :class:`Secret` at once: no frame of ours holds
        them raw (error reporters that record traceback locals never see them).
        """
        state, code = Secret(state), Secret(code)
        return run_calls(self._exchange(state, code, iss, callback_params))

    async def aexchange_code(
        self,
        *,
        state: str | Secret,
        code: str | Secret,
        iss: str | None = None,
        callback_params: Mapping[str, str] | None = None,
    ) -> TokenRecord:
        """Finish a login started with :meth:`start_authorization`; stores the tokens.

        ``state`` and ``code`` are wrapped in :class:`Secret` at once: no frame of ours holds
        them raw (error reporters that record traceback locals never see them).
        """
        state, code = Secret(state), Secret(code)
        return await arun_calls(self._exchange(state, code, iss, callback_params))

    # -- revocation and listing ---------------------------------------------------------------
    def _revoke(self, tenant: str, principal: str, scopes: ScopesArg) -> Calls[bool]:
        key = self.key(tenant=tenant, principal=principal, scopes=scopes)
        self._forget(key)
        try:
            with self._telemetry.operation("revoke", self._provider.id):
                return (
                    yield from self._run(revoke_flow(self._config, key, self._revocation_retry))
                )
        finally:
            self._forget(key)

    def revoke(self, *, tenant: str, principal: str, scopes: ScopesArg = None) -> bool:
        """Revoke at the provider (RFC 7009) when it can, then forget locally.

        Returns whether a connection was forgotten. When the provider cannot take the
        revocation now (503, 429, a network error), the connection is forgotten all the same
        and the revocation is queued in the store, to be delivered with back-off by
        :meth:`drain_revocations` (every :class:`Refresher` sweep calls it), with a
        ``RevocationQueued`` event. A redirect from the revocation endpoint raises
        :class:`ProviderError` and keeps the connection.
        """
        return run_calls(self._revoke(tenant, principal, scopes))

    async def arevoke(self, *, tenant: str, principal: str, scopes: ScopesArg = None) -> bool:
        """Async :meth:`revoke`."""
        return await arun_calls(self._revoke(tenant, principal, scopes))

    # -- off-boarding ---------------------------------------------------------------------------
    def _user_ids(self, tenant: str, principal: str | None) -> tuple[TenantId, PrincipalId | None]:
        checked = TenantId(tenant)
        self._serves(checked)
        if checked == REVOCATION_TENANT:
            raise InvalidIdentifier(
                f"tenant {REVOCATION_TENANT!r} is reserved for the revocation queue"
            )
        return checked, None if principal is None else PrincipalId(principal)

    def _forget_principal(self, tenant: str, principal: str) -> Calls[ForgetReport]:
        checked, who = self._user_ids(tenant, principal)
        assert who is not None
        flow = forget_principal_flow(self._config, checked, who, self._revocation_retry)
        try:
            with self._telemetry.operation("forget_principal", self._provider.id):
                return (yield from self._run(flow))
        finally:
            self._forget_cached(checked, who)

    def forget_principal(self, tenant: str, principal: str) -> ForgetReport:
        """Revoke every connection of ``principal`` in ``tenant`` with this provider at the
        provider (RFC 7009, refresh token first), then delete them from the store.

        A provider that is down (or answers 503/429) never stops the deletion: those keys are
        reported in ``revocation_failed`` and their revocation is queued (delivered by
        :meth:`drain_revocations`). Returns a :class:`ForgetReport` (keys and counts, no secret).
        """
        return run_calls(self._forget_principal(tenant, principal))

    async def aforget_principal(self, tenant: str, principal: str) -> ForgetReport:
        """Async :meth:`forget_principal`."""
        return await arun_calls(self._forget_principal(tenant, principal))

    def _tenant_batches(self, keys: Iterable[StoreKey], batch: int) -> list[tuple[StoreKey, ...]]:
        mine = [k for k in keys if k.provider == self._provider.id]
        if batch < 1:
            raise ConfigurationError("batch must be >= 1")
        return [tuple(mine[i : i + batch]) for i in range(0, len(mine), batch)]

    def forget_tenant(
        self,
        tenant: str,
        *,
        concurrency: int = 8,
        batch: int = 200,
        queue: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> ForgetReport:
        """Every connection of ``tenant`` with this provider: revoked at the provider, then
        deleted, ``batch`` keys per bulk store deletion, ``concurrency`` batches at once.

        ``progress(done, total)`` is called after each batch. With ``queue=False`` a
        revocation the provider cannot take now is only reported, not queued (off-boarding a
        tenant whose client registration goes away: nothing of it stays in the store).
        """
        checked, _ = self._user_ids(tenant, None)
        batches = self._tenant_batches(self._store.list_keys(checked), batch)
        total, done, report = sum(map(len, batches)), 0, ForgetReport()

        def one(keys: tuple[StoreKey, ...]) -> ForgetReport:
            flow = forget_keys_flow(self._config, keys, self._revocation_retry, queue=queue)
            return self._sync.run(flow)

        try:
            with (
                self._telemetry.operation("forget_tenant", self._provider.id),
                ThreadPoolExecutor(max(1, concurrency), "o2bm-forget") as pool,
            ):
                for keys, part in zip(batches, pool.map(one, batches), strict=True):
                    report, done = report + part, done + len(keys)
                    if progress is not None:
                        progress(min(done, total), total)
        finally:
            self._forget_cached(checked)
        return report

    async def aforget_tenant(
        self,
        tenant: str,
        *,
        concurrency: int = 8,
        batch: int = 200,
        queue: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> ForgetReport:
        """Async :meth:`forget_tenant`: ``concurrency`` batches run as tasks at once."""
        checked, _ = self._user_ids(tenant, None)
        batches = self._tenant_batches(await self._store.alist_keys(checked), batch)
        total, done, report = sum(map(len, batches)), 0, ForgetReport()
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(keys: tuple[StoreKey, ...]) -> tuple[int, ForgetReport]:
            async with gate:
                flow = forget_keys_flow(self._config, keys, self._revocation_retry, queue=queue)
                return len(keys), await self._async.run(flow)

        try:
            with self._telemetry.operation("forget_tenant", self._provider.id):
                for part in asyncio.as_completed([one(keys) for keys in batches]):
                    size, got = await part
                    report, done = report + got, done + size
                    if progress is not None:
                        progress(min(done, total), total)
        finally:
            self._forget_cached(checked)
        return report

    def _drain(self, limit: int, final: bool) -> Calls[RevocationDrain]:
        flow = drain_revocations_flow(
            self._config, self._revocation_retry, limit=limit, final=final
        )
        with self._telemetry.operation("drain_revocations", self._provider.id):
            return (yield from self._run(flow))

    def drain_revocations(self, *, limit: int = 100, final: bool = False) -> RevocationDrain:
        """Deliver the queued revocations of this provider and client that are due.

        The queue is in the store, shared by every process: of several processes draining at
        once, one sends each revocation. A revocation that fails again waits longer
        (``revocation_retry``: exponential, never before the provider's ``Retry-After``) and
        is dropped with an error log and a ``RevocationDropped`` event after the last attempt.
        At most ``limit`` revocations are sent per call.

        ``final=True`` (off-boarding) sends every queued revocation of this broker now, once,
        and drops each one the provider does not take: nothing stays queued. A
        :class:`~oauth2_broker_mw.Registry` broker holds only its own tenant's.
        """
        return run_calls(self._drain(limit, final))

    async def adrain_revocations(self, *, limit: int = 100, final: bool = False) -> RevocationDrain:
        """Async :meth:`drain_revocations`."""
        return await arun_calls(self._drain(limit, final))

    def _connections(self, tenant: str, principal: str) -> Calls[list[StoreKey]]:
        store, who = self._store, (TenantId(tenant), PrincipalId(principal))
        keys = yield from call(store.list_keys, store.alist_keys, *who)
        return [k for k in keys if k.provider == self._provider.id]

    def connections(self, *, tenant: str, principal: str) -> list[StoreKey]:
        """Keys stored for this principal with this provider."""
        return run_calls(self._connections(tenant, principal))

    async def aconnections(self, *, tenant: str, principal: str) -> list[StoreKey]:
        """Async :meth:`connections`."""
        return await arun_calls(self._connections(tenant, principal))

    # -- rotations the store refused ----------------------------------------------------------
    @property
    def unsaved_rotations(self) -> int:
        """How many rotated records this process holds because the store refused them."""
        return len(self._unsaved)

    def _flush(self) -> Calls[int]:
        for key in self._unsaved.held_keys():
            with self._telemetry.operation("flush", self._provider.id):
                yield from self._run(flush_unsaved_flow(key))
        return len(self._unsaved)

    def flush_unsaved(self) -> int:
        """Write the rotations this process holds because the store refused them.

        Each is written with compare-and-swap at the version it replaces (a record stored
        meanwhile wins). Returns how many are still held: ``0`` once the store took them all.
        A lease of such a key also writes it first; the :class:`Refresher` calls this on
        every sweep, and :meth:`close` once more.
        """
        return run_calls(self._flush())

    async def aflush_unsaved(self) -> int:
        """Async :meth:`flush_unsaved`."""
        return await arun_calls(self._flush())

    def _lost_on_close(self, left: int) -> None:
        if left:
            log.error(
                "closing with %d rotated token(s) for provider=%s that the store refused; "
                "they are lost with this process, and their users may have to log in again "
                "unless the provider has a refresh-token reuse grace period",
                left,
                self._provider.id,
            )

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP clients the broker created (not the ones passed in, nor the store).

        Rotations the store refused are written once more first (:meth:`flush_unsaved`).
        A broker made by a :class:`~oauth2_broker_mw.Registry` shares the registry's clients;
        closing it closes nothing (close the registry instead).
        """
        if len(self._unsaved):
            self._lost_on_close(self.flush_unsaved())
        if self._owns_pool:
            self._pool.close()

    async def aclose(self) -> None:
        """Close the HTTP clients the broker created on this loop and the sync one."""
        if len(self._unsaved):
            self._lost_on_close(await self.aflush_unsaved())
        if self._owns_pool:
            await self._pool.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _principal_predicate(
    allowed: Callable[[str, str], bool] | Collection[str] | None,
) -> Callable[[StoreKey], bool] | None:
    """``None``: see :meth:`FlowConfig.allows_client_credentials`; else a set or a predicate."""
    if allowed is None:
        return None
    if callable(allowed):
        check = allowed
        return lambda key: bool(check(key.tenant, key.principal))
    names = frozenset(allowed)
    return lambda key: key.principal in names


def _check_required(
    lease: Lease, required: Iterable[str] | None, provider: ProviderDescriptor, asked: ScopeSet
) -> Lease:
    """``required_scopes`` must be granted; by default, every scope asked for (issue 10: a
    narrower grant was handed out silently). ``required_scopes=()`` accepts any grant."""
    if required is None:
        missing = oauth.missing_scopes(provider, asked, lease.scopes)
    else:
        missing = lease.scopes.missing(required)
    if missing:
        raise InsufficientScope(missing=missing, granted=lease.scopes.scopes)
    return lease
