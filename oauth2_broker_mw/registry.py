"""Tenants and their client registrations: which OAuth app serves which tenant at which provider.

Owns: :class:`Registration` (one OAuth client at one provider for one tenant), the
:class:`Registry` that answers ``registration(tenant, provider)`` from a static mapping, a TOML
file or the application's own resolver, and the bounded cache of lazily made :class:`Broker`
objects that all share one store, one HTTP connection pool and one singleflight.
Must not import: starlette, requests, store driver modules (redis, psycopg).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
import tomllib
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Generator
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TypeAlias

import cachetools

from ._core.errors import BrokerError
from ._core.errors import ConfigurationError
from ._core.errors import ProviderNotEnabled
from ._core.errors import UnknownTenant
from ._core.flows import ForgetReport
from ._core.model import PRESENCE_ONLY
from ._core.model import PrincipalId
from ._core.model import Secret
from ._core.model import StoreKey
from ._core.model import TenantId
from ._core.model import redacted_repr
from ._core.provider import ProviderDescriptor
from ._driver import Calls
from ._driver import arun
from ._driver import arun_calls
from ._driver import call
from ._driver import run
from ._driver import run_calls
from .broker import Broker
from .broker import SharedResources
from .events import EventBus
from .events import EventHandler
from .stores.base import TokenStore
from .stores.base import bulk_deletion
from .telemetry import Telemetry

__all__ = ["OffboardReport", "Registration", "Registry", "Resolver"]

_HOST = re.compile(r"^(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHOP = re.compile(r"^[a-z0-9][a-z0-9-]{0,59}$")

#: The template placeholders a registration may fill, each with the rule its value must pass:
#: ``domain`` (Okta, Auth0, Salesforce My Domain, Cognito: a DNS host name), ``tenant``
#: (Entra ID: a GUID or a verified domain), ``shop`` (Shopify: the shop's subdomain label).
TEMPLATE_RULES: Mapping[str, Callable[[str], bool]] = {
    "domain": lambda v: bool(_HOST.match(v)),
    "tenant": lambda v: bool(_GUID.match(v) or _HOST.match(v)),
    "shop": lambda v: bool(_SHOP.match(v)),
}


@dataclass(frozen=True, slots=True, repr=False)
class Registration:
    """One OAuth client (``client_id`` and its credential) at one provider.

    ``descriptor`` may be templated (``presets.okta(domain=None)``): ``template`` then fills
    its placeholders for this tenant; only the names in :data:`TEMPLATE_RULES` are accepted,
    each value checked by its rule (and by ``Registry(allowed_hosts=...)`` when given).
    ``scopes``, when not empty, replaces the descriptor's default scopes.
    """

    provider: str
    descriptor: ProviderDescriptor = field(repr=False)
    client_id: str
    client_secret: str | Secret | None = field(default=None, metadata=PRESENCE_ONLY)
    private_key: Mapping[str, object] | str | None = field(default=None, metadata=PRESENCE_ONLY)
    scopes: tuple[str, ...] = ()
    template: Mapping[str, str] = field(default_factory=dict)
    private_key_id: str | None = None

    __repr__ = redacted_repr

    def fingerprint(self) -> tuple[object, ...]:
        """What makes two registrations the same client (a rotated secret changes it)."""
        secret = self.client_secret
        if isinstance(secret, Secret):
            secret = secret.get_secret_value()
        key = self.private_key
        key_text = repr(sorted(key.items())) if isinstance(key, Mapping) else key
        return (
            self.provider,
            self.descriptor,
            self.client_id,
            secret,
            key_text,
            self.scopes,
            tuple(sorted(self.template.items())),
            self.private_key_id,
        )


Resolver: TypeAlias = Callable[[str, str], "Registration | Awaitable[Registration | None] | None"]
TenantsArg: TypeAlias = Collection[str] | Callable[[str], bool] | None


@dataclass(frozen=True, slots=True)
class OffboardReport:
    """What :meth:`Registry.offboard_tenant` did. No secret in it.

    ``tokens``: every connection of the tenant, revoked at its provider (or reported in
    ``tokens.revocation_failed`` / ``tokens.unrevocable``) and deleted. ``pending_deleted``:
    logins in flight that were removed. ``registrations_removed``: the tenant's client
    registrations this registry dropped. ``seconds``: how long it took.
    ``revocations_delivered`` / ``revocations_dropped``: the tenant's queued revocations, each
    sent once more and removed.
    """

    tenant: str
    tokens: ForgetReport
    pending_deleted: int
    registrations_removed: int
    seconds: float
    revocations_delivered: int = 0
    """Queued revocations of the tenant (logouts the provider could not take at the time)
    that the provider took during the off-boarding."""
    revocations_dropped: int = 0
    """Queued revocations of the tenant the provider did not take: removed all the same
    (their tokens stay valid at the provider until they expire)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    registration: Registration | None
    broker: Broker | None


class Registry:
    """Which tenants exist, which providers each may use, and with which OAuth client.

    Give either ``registrations`` (``{(tenant, provider): Registration}``) or ``resolver``
    (``resolver(tenant, provider) -> Registration | None``, a plain or an ``async`` function
    that loads from the application's database). ``tenants`` names the tenants that exist: a
    collection, or a predicate; without it, the tenants of ``registrations`` exist, and with a
    resolver a ``None`` answer means :class:`UnknownTenant`.

    :meth:`broker` returns the tenant's :class:`Broker` for a provider, made on first use and
    kept in an LRU cache of ``max_brokers``. Every broker shares the registry's ``store``, one
    HTTP connection pool and one singleflight. A registration is read again after ``ttl``
    seconds (a rotated client secret takes effect then), or at once after :meth:`invalidate`.

    Unknown tenants raise :class:`UnknownTenant` and disabled providers
    :class:`ProviderNotEnabled` before any redirect, provider call or store write.
    """

    def __init__(
        self,
        *,
        store: TokenStore,
        registrations: Mapping[tuple[str, str], Registration] | None = None,
        resolver: Resolver | None = None,
        tenants: TenantsArg = None,
        ttl: float = 300.0,
        max_brokers: int = 256,
        broker_cache_size: int = 1000,
        allowed_hosts: Iterable[str] | None = None,
        http_client: Any = None,
        async_http_client: Any = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        broker_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (registrations is None) == (resolver is None):
            raise ConfigurationError("Registry needs exactly one of registrations= or resolver=")
        if ttl <= 0 or max_brokers < 1:
            raise ConfigurationError("Registry ttl must be > 0 and max_brokers >= 1")
        self._store = store
        self._static = None if registrations is None else dict(registrations)
        self._resolver = resolver
        if tenants is None and self._static is not None:
            tenants = frozenset(t for t, _ in self._static)
        self._tenants = tenants
        self._allowed_hosts = None if allowed_hosts is None else tuple(allowed_hosts)
        self._clock = clock
        self._options = dict(broker_options or {})
        self._options.setdefault("cache_size", broker_cache_size)
        # One Telemetry for all brokers: each Telemetry registers its meter and instruments
        # with OpenTelemetry's global proxy, which never forgets them (a leak per broker).
        self._options.setdefault("telemetry", Telemetry())
        self._shared = SharedResources(
            timeout=timeout,
            http_client=http_client,
            async_http_client=async_http_client,
            telemetry=self._options["telemetry"],
        )
        self._cache: cachetools.TTLCache[tuple[str, str], _Entry] = cachetools.TTLCache(
            maxsize=max_brokers, ttl=ttl, timer=clock
        )
        self._lock = threading.Lock()
        self._offboarded: set[str] = set()
        self.brokers_made = 0
        """How many :class:`Broker` objects this registry has made (for capacity checks)."""

    @classmethod
    def from_toml(
        cls,
        path: str | Path,
        *,
        store: TokenStore,
        descriptors: Mapping[str, ProviderDescriptor],
        secrets: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Registry:
        """Registrations from a TOML file: ``[tenant.provider]`` tables.

        Each table has ``client_id``, optionally ``descriptor`` (a key of ``descriptors``,
        default: the provider name), ``scopes``, ``template`` and ``client_secret_ref`` (a
        key of ``secrets``; secrets never live in the file).
        """
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        found: dict[tuple[str, str], Registration] = {}
        for tenant, providers in data.items():
            if not isinstance(providers, dict):
                raise ConfigurationError(f"{path}: [{tenant}] must be a table of providers")
            for provider, table in providers.items():
                where = f"{path}: [{tenant}.{provider}]"
                if not isinstance(table, dict) or not isinstance(table.get("client_id"), str):
                    raise ConfigurationError(f"{where} needs a client_id string")
                name = table.get("descriptor", provider)
                if not isinstance(name, str) or name not in descriptors:
                    raise ConfigurationError(f"{where}: unknown descriptor {name!r}")
                ref = table.get("client_secret_ref")
                if ref is not None and (secrets is None or ref not in secrets):
                    raise ConfigurationError(f"{where}: client_secret_ref {ref!r} is not given")
                found[(tenant, provider)] = Registration(
                    provider=provider,
                    descriptor=descriptors[name],
                    client_id=table["client_id"],
                    client_secret=None if ref is None or secrets is None else secrets[ref],
                    scopes=tuple(table.get("scopes", ())),
                    template=dict(table.get("template", {})),
                )
        return cls(store=store, registrations=found, **options)

    # -- properties -----------------------------------------------------------------------------
    @property
    def store(self) -> TokenStore:
        return self._store

    @property
    def broker_count(self) -> int:
        """Brokers held right now (at most ``max_brokers``)."""
        with self._lock:
            self._cache.expire()
            return sum(1 for e in self._cache.values() if e.broker is not None)

    def __repr__(self) -> str:
        source = "resolver" if self._resolver is not None else "registrations"
        return f"Registry(source={source}, brokers={self.broker_count})"

    # -- lookups --------------------------------------------------------------------------------
    def _tenant(self, tenant: str) -> TenantId:
        try:
            checked = TenantId(tenant)
        except BrokerError:
            raise UnknownTenant(str(tenant)[:64], "not a valid tenant id") from None
        if checked in self._offboarded:
            raise UnknownTenant(checked, "the tenant was off-boarded")
        known = self._tenants
        if known is not None and not (known(checked) if callable(known) else checked in known):
            raise UnknownTenant(checked)
        return checked

    def _finish(self, tenant: TenantId, provider: str, found: object) -> Registration:
        if found is None:
            if self._tenants is None:
                raise UnknownTenant(tenant)
            raise ProviderNotEnabled(tenant, provider)
        if not isinstance(found, Registration):
            raise ConfigurationError(
                f"the registry resolver returned {type(found).__name__} for tenant={tenant!r} "
                f"provider={provider!r}; return a Registration or None"
            )
        if found.provider != provider:
            raise ConfigurationError(
                f"the registration for tenant={tenant!r} provider={provider!r} names provider "
                f"{found.provider!r}"
            )
        return found

    def _cached(self, tenant: TenantId, provider: str) -> _Entry | None:
        with self._lock:
            return self._cache.get((tenant, provider))

    def _lookup(self, tenant: str, provider: str) -> Generator[tuple[str, str], Any, Registration]:
        """The lookup as a flow: it yields ``(tenant, provider)`` when the resolver must run."""
        checked = self._tenant(tenant)
        entry = self._cached(checked, provider)
        if entry is not None:
            return self._finish(checked, provider, entry.registration)
        if self._static is not None:
            found: object = self._static.get((checked, provider))
        else:
            found = yield (checked, provider)
        registration = self._store_entry(checked, provider, found).registration
        assert registration is not None
        return registration

    def _resolve(self, ask: tuple[str, str]) -> object:
        assert self._resolver is not None
        found = self._resolver(*ask)
        return _run_sync(found, "registration") if inspect.isawaitable(found) else found

    async def _aresolve(self, ask: tuple[str, str]) -> object:
        assert self._resolver is not None
        found = self._resolver(*ask)
        return (await found) if inspect.isawaitable(found) else found

    def registration(self, tenant: str, provider: str) -> Registration:
        """The registration for (tenant, provider), from the cache or the source."""
        return run(self._lookup(tenant, provider), self._resolve)

    async def aregistration(self, tenant: str, provider: str) -> Registration:
        """Async :meth:`registration`: an ``async`` resolver is awaited on the running loop."""
        return await arun(self._lookup(tenant, provider), self._aresolve)

    def _store_entry(self, tenant: TenantId, provider: str, found: object) -> _Entry:
        """Validate what the source answered, remember it (misses too, for ``ttl``)."""
        try:
            registration = self._finish(tenant, provider, found)
        except (UnknownTenant, ProviderNotEnabled):
            with self._lock:
                self._cache[(tenant, provider)] = _Entry(None, None)
            raise
        entry = _Entry(registration, None)
        with self._lock:
            current = self._cache.get((tenant, provider))
            if current is not None and current.registration == registration:
                return current
            self._cache[(tenant, provider)] = entry
        return entry

    # -- brokers --------------------------------------------------------------------------------
    def broker(self, *, tenant: str, provider: str) -> Broker:
        """The tenant's broker for ``provider`` (made lazily, shared, bounded)."""
        registration = self.registration(tenant, provider)
        return self._broker_for(TenantId(tenant), registration)

    async def abroker(self, *, tenant: str, provider: str) -> Broker:
        """Async :meth:`broker` (awaits an ``async`` resolver)."""
        registration = await self.aregistration(tenant, provider)
        return self._broker_for(TenantId(tenant), registration)

    def _broker_for(self, tenant: TenantId, registration: Registration) -> Broker:
        slot = (tenant, registration.provider)
        with self._lock:
            made = self._made(slot, registration)
        if made is not None:
            return made
        broker = self._make(tenant, registration)
        with self._lock:
            made = self._made(slot, registration)  # another thread made one meanwhile
            if made is not None:
                return made
            self._cache[slot] = _Entry(registration, broker)
            self.brokers_made += 1
        return broker

    def _made(self, slot: tuple[str, str], registration: Registration) -> Broker | None:
        """The cached broker of ``slot`` when it serves ``registration`` (under the lock)."""
        entry = self._cache.get(slot)
        if entry is not None and entry.registration == registration:
            return entry.broker
        return None

    def _descriptor(self, tenant: TenantId, registration: Registration) -> ProviderDescriptor:
        descriptor = registration.descriptor
        values = dict(registration.template)
        where = f"tenant={tenant!r} provider={registration.provider!r}"
        for name, value in values.items():
            rule = TEMPLATE_RULES.get(name)
            if rule is None:
                raise ConfigurationError(
                    f"registration for {where}: template value {name!r} is not allowed "
                    f"(allowed: {', '.join(sorted(TEMPLATE_RULES))})"
                )
            if not isinstance(value, str) or not rule(value):
                raise ConfigurationError(
                    f"registration for {where}: template value {name!r} is not a valid "
                    f"{name}: {str(value)[:80]!r}"
                )
            hosts = self._allowed_hosts
            if name == "domain" and hosts is not None and not _under(value, hosts):
                raise ConfigurationError(
                    f"registration for {where}: domain {value!r} is not under any of allowed_hosts"
                )
        if values or descriptor.template_fields:
            descriptor = descriptor.with_template(**values)
        changes: dict[str, Any] = {}
        if descriptor.id != registration.provider:
            changes["id"] = registration.provider
        if registration.scopes:
            changes["default_scopes"] = tuple(registration.scopes)
        return descriptor.replace(**changes) if changes else descriptor

    def _make(self, tenant: TenantId, registration: Registration) -> Broker:
        options = dict(self._options)
        options.setdefault("clock", self._clock)
        return Broker(
            self._descriptor(tenant, registration),
            client_id=registration.client_id,
            client_secret=registration.client_secret,
            private_key=registration.private_key,
            private_key_id=registration.private_key_id,
            store=self._store,
            _shared=self._shared,
            _tenant=tenant,
            **options,
        )

    def invalidate(self, tenant: str, provider: str | None = None) -> int:
        """Forget the tenant's registrations and brokers now; returns how many were dropped."""
        with self._lock:
            slots = [s for s in self._cache if s[0] == tenant and provider in (None, s[1])]
            for slot in slots:
                self._cache.pop(slot, None)
        return len(slots)

    # -- off-boarding ---------------------------------------------------------------------------
    def _brokers_of(self, tenant: TenantId, keys: Iterable[StoreKey]) -> Calls[list[Broker]]:
        """The brokers of the tenant's providers (its static registrations and those its
        records ``keys`` name) that it still has a registration for."""
        providers: set[str] = {k.provider for k in keys}
        if self._static is not None:
            providers.update(p for t, p in self._static if t == tenant)
        brokers = []
        for provider in sorted(providers):
            try:
                brokers.append(
                    (yield from call(self.broker, self.abroker, tenant=tenant, provider=provider))
                )
            except ProviderNotEnabled:
                continue
        return brokers

    def _forget_principal(self, tenant: str, principal: str) -> Calls[ForgetReport]:
        checked = self._tenant(tenant)
        store, who = self._store, PrincipalId(principal)
        listed = yield from call(store.list_keys, store.alist_keys, checked, who)
        keys, report = list(listed), ForgetReport()
        for broker in (yield from self._brokers_of(checked, listed)):
            report += yield from call(
                broker.forget_principal, broker.aforget_principal, checked, principal
            )
            keys = [k for k in keys if k.provider != broker.provider.id]
        if keys:
            bulk = bulk_deletion(store)
            deleted = yield from call(bulk.delete_keys, bulk.adelete_keys, keys)
            report += ForgetReport(unrevocable=tuple(keys), deleted=deleted)
        return report

    def forget_principal(self, tenant: str, principal: str) -> ForgetReport:
        """:meth:`Broker.forget_principal` at every provider of the tenant: each connection is
        revoked by the broker of its provider, then deleted. Records of a provider the tenant
        has no registration for (any more) are deleted and reported ``unrevocable``."""
        return run_calls(self._forget_principal(tenant, principal))

    async def aforget_principal(self, tenant: str, principal: str) -> ForgetReport:
        """Async :meth:`forget_principal`."""
        return await arun_calls(self._forget_principal(tenant, principal))

    def _retire(self, tenant: TenantId) -> int:
        """Refuse the tenant from now on; drop its static registrations and brokers."""
        with self._lock:
            self._offboarded.add(tenant)
            removed = 0
            if self._static is not None:
                mine = [slot for slot in self._static if slot[0] == tenant]
                for slot in mine:
                    del self._static[slot]
                removed = len(mine)
        self.invalidate(tenant)
        return removed

    def _offboard(
        self, tenant: str, concurrency: int, progress: Callable[[int, int], None] | None
    ) -> Calls[OffboardReport]:
        started = time.monotonic()
        checked, store = self._tenant(tenant), self._store
        listed = yield from call(store.list_keys, store.alist_keys, checked)
        brokers = yield from self._brokers_of(checked, listed)
        removed = self._retire(checked)  # no new login or lease of the tenant from here on
        tokens, delivered, dropped = ForgetReport(), 0, 0
        for broker in brokers:
            tokens += yield from call(
                broker.forget_tenant,
                broker.aforget_tenant,
                checked,
                concurrency=concurrency,
                queue=False,
                progress=progress,
            )
            # final=True: the queue keeps none of it, delivered or not
            drained = yield from call(
                broker.drain_revocations, broker.adrain_revocations, final=True
            )
            delivered, dropped = delivered + drained.delivered, dropped + drained.dropped
        bulk = bulk_deletion(store)
        # what is left: providers without a registration, writes that came in meanwhile
        rest = yield from call(store.list_keys, store.alist_keys, checked)
        if rest:
            deleted = yield from call(bulk.delete_keys, bulk.adelete_keys, rest)
            tokens += ForgetReport(unrevocable=tuple(rest), deleted=deleted)
        pending = yield from call(bulk.delete_pending, bulk.adelete_pending, checked)
        seconds = time.monotonic() - started
        return OffboardReport(checked, tokens, pending, removed, seconds, delivered, dropped)

    def offboard_tenant(
        self,
        tenant: str,
        *,
        concurrency: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> OffboardReport:
        """Off-board ``tenant``: from now on it is an :class:`UnknownTenant` here; every
        connection is revoked at its provider with the tenant's own registration (bounded
        ``concurrency``), then deleted in bulk; its pending logins are deleted; its client
        registrations are dropped from this registry. Its revocations still queued from
        earlier logouts are sent once more and removed, taken or not.

        A revocation a provider does not take is reported (``tokens.revocation_failed``), not
        queued: the registration that could deliver it is going away, and nothing of the
        tenant stays in the store. ``progress(done, total)`` is called per batch. A registry
        fed by a ``resolver`` refuses the tenant in this process only: delete it from the
        resolver's source too.
        """
        return run_calls(self._offboard(tenant, concurrency, progress))

    async def aoffboard_tenant(
        self,
        tenant: str,
        *,
        concurrency: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> OffboardReport:
        """Async :meth:`offboard_tenant` (the batches of one provider run as tasks)."""
        return await arun_calls(self._offboard(tenant, concurrency, progress))

    #: The issue's and the docs' short name: ``registry.offboard("globex")`` is
    #: :meth:`offboard_tenant`, ``await registry.aoffboard("globex")`` is :meth:`aoffboard_tenant`.
    offboard = offboard_tenant
    aoffboard = aoffboard_tenant

    # -- lifecycle events -----------------------------------------------------------------------
    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for the lifecycle events of every broker of this registry.

        See :meth:`Broker.subscribe`: handlers run off the lease path, on one dispatcher
        shared by the registry's brokers. Returns the function that unsubscribes ``handler``.
        """
        return self._shared.events.subscribe(handler)

    @property
    def events(self) -> EventBus:
        """The registry's event bus (``dropped``, ``handler_errors``, ``flush()``)."""
        return self._shared.events

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP clients the registry created (not the store)."""
        with self._lock:
            self._cache.clear()
        self._shared.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (also closes this loop's async client)."""
        with self._lock:
            self._cache.clear()
        await self._shared.aclose()


def _under(host: str, allowed: tuple[str, ...]) -> bool:
    return any(host == h or host.endswith("." + h) for h in allowed)


def _run_sync(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        raise ConfigurationError(
            f"the registry resolver is async: call a{what}() / abroker() from async code"
        )

    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())
