"""The store contract: what the broker needs from any place that keeps tokens.

Owns: the ``TokenStore`` protocol (sync methods plus ``a``-prefixed async twins), and
``ThreadedAsyncMixin``, which gives a store with blocking I/O its async twins by running
the sync method in a worker thread (one source of behaviour for both).
Must not import: httpx/httpx2 or any store driver.

Semantics every store must provide (checked by ``oauth2_broker_mw.testing.conformance``):

* ``get(key)`` returns the record or ``None``. A row that cannot be decoded raises
  :class:`~oauth2_broker_mw.CorruptRecord` (the broker treats it as absent).
* ``compare_and_swap(record, expected_version=v)`` writes ``record`` with version ``v + 1``
  only if the stored version is ``v`` (``None``: only if no record exists), atomically across
  threads and processes, and returns the stored record; on conflict it returns ``None``.
* ``put(record)`` writes unconditionally (version = old version + 1, or 1) and returns it.
* ``delete(key, expected_version=None)`` removes the record (only at that version, if given);
  returns whether something was removed.
* ``list_keys(tenant, principal=None)`` lists the keys stored for a tenant (no secrets read).
* Lease locks: ``acquire_lock(name, owner, ttl)`` succeeds only if nobody else holds an
  unexpired lock; ``renew_lock`` and ``release_lock`` succeed only for the owner.
* Pending authorizations: ``put_pending`` keeps one until its ``expires_at``;
  ``take_pending(state_key)`` atomically returns and removes it (``None`` if absent or
  expired), so a state can be redeemed once.
* Failures of the backing service raise :class:`~oauth2_broker_mw.StoreUnavailable`.
* ``check()`` / ``acheck()`` (optional; every built-in store has them): one cheap round trip
  that raises a :class:`~oauth2_broker_mw.StorageError` naming the path or ``host:port`` and
  what to do, so a misconfigured store shows at boot. :func:`check_store` calls it, or a
  ``get`` for a store without one.

The refresh index (``RefreshIndex``, implemented by every built-in store, used by the
:class:`~oauth2_broker_mw.refresher.Refresher` and the admin CLI):

* ``expiring(before, limit=...)`` lists the renewable records (a refresh token, or a
  client-credentials grant; not revoked) whose access token expires before ``before``,
  soonest first, as :class:`DueRecord` (key, version, time): no secret is read.
* ``idle(provider, issued_before, limit=...)`` lists the provider's records holding a refresh
  token issued (last used) before ``issued_before``, oldest first.
* ``list_tenants()`` lists every tenant with a stored record.

Off-boarding (``Offboarding``, implemented by every built-in store, used by
:meth:`~oauth2_broker_mw.Broker.forget_principal` and ``Registry.offboard_tenant``; a store
without it gets one ``delete`` per key):

* ``delete_keys(keys)`` removes the records at ``keys`` in as few round trips as the store can
  (one statement per 1,000 keys on PostgreSQL, one script per 500 keys on Redis) and returns
  how many were removed.
* ``delete_pending(tenant)`` removes every pending login of ``tenant`` and returns how many.

The provider gate (``ProviderGate``, implemented by every built-in store, used before every
token-endpoint request; see ``docs/operations.md``):

* ``set_backoff(name, until, now=...)`` closes the gate ``name`` until the wall time
  ``until``; a later time already stored wins (two callers that both saw a 429 never shorten
  the back-off). It returns the stored time. ``backoff_until(name)`` reads it (``0.0``: never
  closed). Times are the broker's clock; ``now`` only bounds how long the entry is kept.
* ``take_token(name, now=, interval=, burst=, max_wait=)`` is a token bucket shared by every
  process (GCRA: one stored "theoretical arrival time" per name), updated atomically: it
  returns ``(True, wait)`` and debits the bucket when a call may go out within ``max_wait``
  seconds (``wait`` is how long to wait first), else ``(False, wait)`` without debiting
  (``wait``: how long until a call would go out at once).
* ``count_calls(name, now=, window=)`` counts one call under ``name`` atomically and returns
  how many were counted in the ``window`` seconds before it (:func:`recent_calls`: two fixed
  windows, the older one in proportion). Windows older than that are deleted as it goes.

Finer points the conformance suite pins down:

* ``put`` ignores the version in the record it is given; after ``delete`` versions restart at 1.
* ``list_keys`` matches tenant (and principal) exactly, in no particular order.
* The owner of a lock may acquire it again (which extends it); renewing an expired lock
  returns ``False``; ``release_lock`` returns ``True`` only for the owner of an unexpired lock.
* Expired pending authorizations and locks are purged by the store itself (no cron job).
* One store instance serves sync threads and async tasks racing on it at once, and its async
  methods work under plain ``asyncio.run()`` on several event loops one after another.
"""

from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final
from typing import ParamSpec
from typing import Protocol
from typing import TypeVar
from typing import runtime_checkable

from .._core.errors import ConfigurationError
from .._core.errors import CorruptRecord
from .._core.model import PendingAuthorization
from .._core.model import PrincipalId
from .._core.model import ProviderId
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord

__all__ = [
    "DueRecord",
    "Offboarding",
    "PerKeyDeletion",
    "ProviderGate",
    "RefreshIndex",
    "ThreadedAsyncMixin",
    "TokenStore",
    "acheck_store",
    "bulk_deletion",
    "check_store",
    "check_window",
    "gcra",
    "recent_calls",
    "refresh_index",
]

#: What an encrypted record keeps in its ``refresh_token`` slot: "there is one, sealed".
SEALED_REFRESH_TOKEN: Final = "o2bm-enc:sealed"

P = ParamSpec("P")
R = TypeVar("R")


@runtime_checkable
class TokenStore(Protocol):
    """Sync and async access to tokens, lease locks and pending authorizations."""

    # -- sync -------------------------------------------------------------------------------
    def get(self, key: StoreKey) -> TokenRecord | None: ...

    def put(self, record: TokenRecord) -> TokenRecord: ...

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None: ...

    def delete(self, key: StoreKey, *, expected_version: int | None = None) -> bool: ...

    def list_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]: ...

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    def release_lock(self, name: str, owner: str) -> bool: ...

    def put_pending(self, pending: PendingAuthorization) -> None: ...

    def take_pending(self, state_key: str) -> PendingAuthorization | None: ...

    def close(self) -> None: ...

    # -- async ------------------------------------------------------------------------------
    async def aget(self, key: StoreKey) -> TokenRecord | None: ...

    async def aput(self, record: TokenRecord) -> TokenRecord: ...

    async def acompare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None: ...

    async def adelete(self, key: StoreKey, *, expected_version: int | None = None) -> bool: ...

    async def alist_keys(
        self, tenant: TenantId, principal: str | None = None
    ) -> list[StoreKey]: ...

    async def aacquire_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    async def arenew_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    async def arelease_lock(self, name: str, owner: str) -> bool: ...

    async def aput_pending(self, pending: PendingAuthorization) -> None: ...

    async def atake_pending(self, state_key: str) -> PendingAuthorization | None: ...

    async def aclose(self) -> None: ...


#: The key a health check reads: no record is ever stored under it.
PROBE_KEY: Final = StoreKey(
    tenant=TenantId("o2bm-check"),
    principal=PrincipalId("o2bm-check"),
    provider=ProviderId("o2bm-check"),
    scope_fingerprint="0" * 64,
)


def check_store(store: TokenStore) -> None:
    """Fail now, not at the first login, if ``store`` cannot be used.

    Calls ``store.check()`` (every built-in store has one: it names the SQLite path or the
    server's ``host:port`` and says what to do), or reads one key from a store without it.
    Raises :class:`~oauth2_broker_mw.StorageError` (``StoreUnavailable`` when it may pass).
    Call it at startup, for example in the application's lifespan.
    """
    check: Callable[[], object] = getattr(store, "check", None) or partial(store.get, PROBE_KEY)
    check()


async def acheck_store(store: TokenStore) -> None:
    """The async twin of :func:`check_store` (``store.acheck()``, or one ``aget``)."""
    acheck: Callable[[], Awaitable[object]] = getattr(store, "acheck", None) or partial(
        store.aget, PROBE_KEY
    )
    await acheck()


def decode_record(key: StoreKey, data: str | bytes) -> TokenRecord:
    """The token record stored as ``data`` under ``key``: :class:`CorruptRecord` if it does
    not decode or belongs to another key (a row copied into the wrong slot)."""
    record = TokenRecord.from_json(data)
    if record.key != key:
        raise CorruptRecord("stored token record belongs to another key")
    return record


def decode_pending(state_key: str, data: str | bytes) -> PendingAuthorization:
    """The pending authorization stored as ``data`` under ``state_key``: :class:`CorruptRecord`
    if it does not decode or belongs to another state."""
    pending = PendingAuthorization.from_json(data)
    if pending.state_key != state_key:
        raise CorruptRecord("stored pending authorization belongs to another state")
    return pending


def check_ttl(ttl: float) -> float:
    """A validated lock ttl: positive seconds."""
    ttl = float(ttl)
    if not ttl > 0:
        raise ConfigurationError("lock ttl must be a positive number of seconds")
    return ttl


@dataclass(frozen=True, slots=True)
class DueRecord:
    """One answer of a refresh-index query: a key, its version and the time it sorts by.

    ``at`` is the access token's expiry (``expiring``) or the refresh token's issue time
    (``idle``). ``version`` fences a refresh: refresh only if the record is still at it.
    """

    key: StoreKey
    version: int
    at: float


def refresh_index(record: TokenRecord) -> tuple[float | None, float | None]:
    """``(expires_at, refresh_issued_at)`` as the stores index them (``None``: not indexed).

    Revoked records are in neither index. A record is in the expiry index when something can
    renew it (a refresh token or the client-credentials grant), and in the idle index when it
    holds a refresh token.
    """
    if record.revoked_at is not None:
        return None, None
    has_refresh = record.refresh_token is not None
    renewable = has_refresh or record.grant == "client_credentials"
    return (
        record.expires_at if renewable else None,
        record.issued_at if has_refresh else None,
    )


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be a positive integer; got {limit!r}")
    return limit


@runtime_checkable
class RefreshIndex(Protocol):
    """The queries a proactive refresher needs; every built-in store implements them."""

    def expiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]: ...

    def idle(
        self, provider: str, issued_before: float, *, limit: int = 1000
    ) -> list[DueRecord]: ...

    def list_tenants(self) -> list[TenantId]: ...

    async def aexpiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]: ...

    async def aidle(
        self, provider: str, issued_before: float, *, limit: int = 1000
    ) -> list[DueRecord]: ...

    async def alist_tenants(self) -> list[TenantId]: ...


@runtime_checkable
class Offboarding(Protocol):
    """Bulk deletion for off-boarding (see the module docstring)."""

    def delete_keys(self, keys: Sequence[StoreKey]) -> int: ...

    def delete_pending(self, tenant: TenantId) -> int: ...

    async def adelete_keys(self, keys: Sequence[StoreKey]) -> int: ...

    async def adelete_pending(self, tenant: TenantId) -> int: ...


class PerKeyDeletion:
    """:class:`Offboarding` for a store that has only ``delete``: one call per key. Such a
    store cannot find pending logins by tenant: they are left to expire."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def delete_keys(self, keys: Sequence[StoreKey]) -> int:
        return sum(bool(self._store.delete(key)) for key in keys)

    async def adelete_keys(self, keys: Sequence[StoreKey]) -> int:
        removed = 0
        for key in keys:
            removed += bool(await self._store.adelete(key))
        return removed

    def delete_pending(self, tenant: TenantId) -> int:
        return 0

    async def adelete_pending(self, tenant: TenantId) -> int:
        return 0


def bulk_deletion(store: TokenStore) -> Offboarding:
    """``store`` itself when it deletes in bulk, else a :class:`PerKeyDeletion` over it."""
    return store if isinstance(store, Offboarding) else PerKeyDeletion(store)


@runtime_checkable
class ProviderGate(Protocol):
    """The shared back-off and token buckets in front of a provider's token endpoint."""

    def backoff_until(self, name: str) -> float: ...

    def set_backoff(self, name: str, until: float, *, now: float) -> float: ...

    def take_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]: ...

    async def abackoff_until(self, name: str) -> float: ...

    async def aset_backoff(self, name: str, until: float, *, now: float) -> float: ...

    async def atake_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]: ...

    def count_calls(self, name: str, *, now: float, window: float) -> int: ...

    async def acount_calls(self, name: str, *, now: float, window: float) -> int: ...


def check_window(window: float) -> float:
    """A validated call-counting window: positive and finite seconds."""
    window = float(window)
    if not window > 0 or not window < float("inf"):
        raise ConfigurationError(f"call-count window must be positive seconds; got {window!r}")
    return window


def recent_calls(now: float, window: float, current: int, previous: int) -> int:
    """The calls of the last ``window`` seconds, estimated from two fixed windows.

    ``current`` were counted in the fixed window ``floor(now / window)``, ``previous`` in the
    one before; the part of the previous window that still lies within ``window`` seconds of
    ``now`` counts in proportion (the sliding-window counter of Cloudflare and nginx). Every
    store counts the same way, so processes on one store see one number.
    """
    elapsed = now / window - math.floor(now / window)
    return int(previous * (1.0 - elapsed)) + current


def check_bucket(interval: float, burst: int, max_wait: float) -> tuple[float, int, float]:
    """Validated token-bucket arguments (a positive interval and burst, a wait of >= 0)."""
    interval, max_wait = float(interval), float(max_wait)
    if not interval > 0 or not interval < float("inf"):
        raise ConfigurationError(f"token bucket interval must be positive; got {interval!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigurationError(f"token bucket burst must be a positive integer; got {burst!r}")
    if not max_wait >= 0:
        raise ConfigurationError(f"max_wait must be >= 0 seconds; got {max_wait!r}")
    return interval, burst, max_wait


def gcra(
    tat: float | None, now: float, interval: float, burst: int, max_wait: float
) -> tuple[bool, float, float]:
    """One token-bucket decision (GCRA): ``(granted, wait, new_tat)``.

    ``tat`` is the stored theoretical arrival time (``None``: never used). A call is granted
    when it conforms within ``max_wait`` seconds; ``new_tat`` is what to store then (the old
    ``tat`` otherwise). The Redis and PostgreSQL stores compute the same in Lua and SQL.
    """
    base = now if tat is None or tat < now else tat
    new_tat = base + interval
    wait = max(0.0, new_tat - now - burst * interval)
    if wait <= max_wait:
        return True, wait, new_tat
    return False, wait, base


class ThreadedAsyncMixin(abc.ABC):
    """Base for stores with blocking sync methods: the async twins run them in a thread.

    One source of behaviour for both: subclasses implement only the sync methods.
    A store that never blocks (memory) sets ``_async_inline = True`` and the twins call the
    sync method directly on the event loop.
    """

    _async_inline: bool = False

    async def _call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._async_inline:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    @abc.abstractmethod
    def get(self, key: StoreKey) -> TokenRecord | None: ...

    @abc.abstractmethod
    def put(self, record: TokenRecord) -> TokenRecord: ...

    @abc.abstractmethod
    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None: ...

    @abc.abstractmethod
    def delete(self, key: StoreKey, *, expected_version: int | None = None) -> bool: ...

    @abc.abstractmethod
    def list_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]: ...

    @abc.abstractmethod
    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    def renew_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    def release_lock(self, name: str, owner: str) -> bool: ...

    @abc.abstractmethod
    def put_pending(self, pending: PendingAuthorization) -> None: ...

    @abc.abstractmethod
    def take_pending(self, state_key: str) -> PendingAuthorization | None: ...

    def close(self) -> None:
        return None

    def check(self) -> None:
        """Raise :class:`~oauth2_broker_mw.StorageError` now if the store cannot be used."""
        self.get(PROBE_KEY)

    async def acheck(self) -> None:
        await self._call(self.check)

    async def aget(self, key: StoreKey) -> TokenRecord | None:
        return await self._call(self.get, key)

    async def aput(self, record: TokenRecord) -> TokenRecord:
        return await self._call(self.put, record)

    async def acompare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        return await self._call(self.compare_and_swap, record, expected_version=expected_version)

    async def adelete(self, key: StoreKey, *, expected_version: int | None = None) -> bool:
        return await self._call(self.delete, key, expected_version=expected_version)

    async def alist_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]:
        return await self._call(self.list_keys, tenant, principal)

    async def aacquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        return await self._call(self.acquire_lock, name, owner, ttl)

    async def arenew_lock(self, name: str, owner: str, ttl: float) -> bool:
        return await self._call(self.renew_lock, name, owner, ttl)

    async def arelease_lock(self, name: str, owner: str) -> bool:
        return await self._call(self.release_lock, name, owner)

    async def aput_pending(self, pending: PendingAuthorization) -> None:
        await self._call(self.put_pending, pending)

    async def atake_pending(self, state_key: str) -> PendingAuthorization | None:
        return await self._call(self.take_pending, state_key)

    @abc.abstractmethod
    def delete_keys(self, keys: Sequence[StoreKey]) -> int: ...

    @abc.abstractmethod
    def delete_pending(self, tenant: TenantId) -> int: ...

    async def adelete_keys(self, keys: Sequence[StoreKey]) -> int:
        return await self._call(self.delete_keys, keys)

    async def adelete_pending(self, tenant: TenantId) -> int:
        return await self._call(self.delete_pending, tenant)

    async def aclose(self) -> None:
        await self._call(self.close)

    # -- the refresh index (RefreshIndex) ----------------------------------------------------
    @abc.abstractmethod
    def expiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]: ...

    @abc.abstractmethod
    def idle(
        self, provider: str, issued_before: float, *, limit: int = 1000
    ) -> list[DueRecord]: ...

    @abc.abstractmethod
    def list_tenants(self) -> list[TenantId]: ...

    async def aexpiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]:
        return await self._call(self.expiring, before, limit=limit)

    async def aidle(
        self, provider: str, issued_before: float, *, limit: int = 1000
    ) -> list[DueRecord]:
        return await self._call(self.idle, provider, issued_before, limit=limit)

    async def alist_tenants(self) -> list[TenantId]:
        return await self._call(self.list_tenants)

    # -- the provider gate (ProviderGate) ----------------------------------------------------
    @abc.abstractmethod
    def backoff_until(self, name: str) -> float: ...

    @abc.abstractmethod
    def set_backoff(self, name: str, until: float, *, now: float) -> float: ...

    @abc.abstractmethod
    def take_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]: ...

    async def abackoff_until(self, name: str) -> float:
        return await self._call(self.backoff_until, name)

    async def aset_backoff(self, name: str, until: float, *, now: float) -> float:
        return await self._call(self.set_backoff, name, until, now=now)

    async def atake_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]:
        return await self._call(
            self.take_token, name, now=now, interval=interval, burst=burst, max_wait=max_wait
        )

    @abc.abstractmethod
    def count_calls(self, name: str, *, now: float, window: float) -> int: ...

    async def acount_calls(self, name: str, *, now: float, window: float) -> int:
        return await self._call(self.count_calls, name, now=now, window=window)
