"""The in-process store: tokens, lease locks and pending logins in dictionaries.

Owns: ``MemoryStore``, the broker's default store. It is safe to share between threads
and between sync and async callers of one process (one mutex, held for microseconds, so
the async twins run inline on the event loop). It is not shared between processes.
Records are kept in their JSON form, exactly as the persistent stores keep them, so a
caller mutating a record's ``metadata`` after ``put`` cannot change what is stored, and a
record that survives ``MemoryStore`` survives every store.
Must not import: httpx/httpx2, asyncio, any store driver.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .._core.model import PendingAuthorization
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from .base import DueRecord
from .base import ThreadedAsyncMixin
from .base import check_bucket
from .base import check_limit
from .base import check_ttl
from .base import check_window
from .base import decode_record
from .base import gcra
from .base import recent_calls
from .base import refresh_index

__all__ = ["MemoryStore"]

# Expired locks and pendings are purged when the tables have grown by this many entries
# since the last purge (amortised O(1) per write; no background thread, no cron job).
_PURGE_EVERY: Final = 256


@dataclass(frozen=True, slots=True)
class _Row:
    key: StoreKey
    version: int
    data: str
    expires_at: float | None
    idle_since: float | None


@dataclass(frozen=True, slots=True)
class _LockRow:
    owner: str
    expires_at: float


class MemoryStore(ThreadedAsyncMixin):
    """A thread-safe, in-process :class:`~oauth2_broker_mw.stores.TokenStore`.

    ``clock`` returns wall-clock seconds (``time.time``); lock and pending expiry use it.
    Everything is lost when the process exits: use :class:`SQLiteStore` (one host) or a
    Redis/PostgreSQL store (several hosts) to keep grants across restarts.
    """

    _async_inline = True

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._tokens: dict[str, _Row] = {}
        self._locks: dict[str, _LockRow] = {}
        self._pending: dict[str, tuple[str, float]] = {}
        self._gates: dict[str, float] = {}  # back-off until, per gate name
        self._buckets: dict[str, float] = {}  # token bucket theoretical arrival time
        self._calls: dict[str, tuple[int, int, int]] = {}  # (slot, current, previous)
        self._writes_since_purge = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- tokens -----------------------------------------------------------------------------
    def get(self, key: StoreKey) -> TokenRecord | None:
        with self._mutex:
            row = self._tokens.get(key.id)
        if row is None:
            return None
        return decode_record(key, row.data).with_version(row.version)

    def put(self, record: TokenRecord) -> TokenRecord:
        with self._mutex:
            row = self._tokens.get(record.key.id)
            return self._write(record, 1 if row is None else row.version + 1)

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        with self._mutex:
            row = self._tokens.get(record.key.id)
            current = None if row is None else row.version
            if current != expected_version:
                return None
            return self._write(record, 1 if current is None else current + 1)

    def delete(self, key: StoreKey, *, expected_version: int | None = None) -> bool:
        with self._mutex:
            row = self._tokens.get(key.id)
            if row is None or (expected_version is not None and row.version != expected_version):
                return False
            del self._tokens[key.id]
            return True

    def delete_keys(self, keys: Sequence[StoreKey]) -> int:
        with self._mutex:
            return sum(self._tokens.pop(key.id, None) is not None for key in keys)

    def delete_pending(self, tenant: TenantId) -> int:
        with self._mutex:
            mine = [k for k, (data, _) in self._pending.items() if _tenant_of(data) == tenant]
            for state_key in mine:
                del self._pending[state_key]
        return len(mine)

    def list_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]:
        with self._mutex:
            rows = list(self._tokens.values())
        keys = [
            row.key
            for row in rows
            if row.key.tenant == tenant and (principal is None or row.key.principal == principal)
        ]
        return sorted(keys, key=lambda key: key.id)

    def _write(self, record: TokenRecord, version: int) -> TokenRecord:
        # Caller holds the mutex.
        stored = record.with_version(version)
        self._tokens[record.key.id] = _Row(
            record.key, version, stored.to_json(), *refresh_index(record)
        )
        return stored

    # -- the refresh index: a scan (an in-process store holds few records) ------------------
    def expiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]:
        return self._due(lambda r: r.expires_at, before, limit, None)

    def idle(self, provider: str, issued_before: float, *, limit: int = 1000) -> list[DueRecord]:
        return self._due(lambda r: r.idle_since, issued_before, limit, provider)

    def _due(
        self,
        at: Callable[[_Row], float | None],
        before: float,
        limit: int,
        provider: str | None,
    ) -> list[DueRecord]:
        """Rows whose ``at`` is before ``before`` (of ``provider``), soonest first."""
        check_limit(limit)
        with self._mutex:
            rows = list(self._tokens.values())
        due = [
            DueRecord(r.key, r.version, when)
            for r in rows
            if (when := at(r)) is not None
            and when < before
            and (provider is None or r.key.provider == provider)
        ]
        return sorted(due, key=lambda d: (d.at, d.key.id))[:limit]

    def list_tenants(self) -> list[TenantId]:
        with self._mutex:
            return sorted({row.key.tenant for row in self._tokens.values()})

    # -- lease locks ------------------------------------------------------------------------
    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        check_ttl(ttl)
        now = self._clock()
        with self._mutex:
            held = self._locks.get(name)
            if held is not None and held.expires_at > now and held.owner != owner:
                return False
            self._locks[name] = _LockRow(owner, now + ttl)
            self._maybe_purge(now)
            return True

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        check_ttl(ttl)
        now = self._clock()
        with self._mutex:
            held = self._locks.get(name)
            if held is None or held.owner != owner or held.expires_at <= now:
                return False
            self._locks[name] = _LockRow(owner, now + ttl)
            return True

    def release_lock(self, name: str, owner: str) -> bool:
        now = self._clock()
        with self._mutex:
            held = self._locks.get(name)
            if held is None or held.owner != owner:
                return False
            del self._locks[name]
            return held.expires_at > now

    # -- the provider gate -------------------------------------------------------------------
    def backoff_until(self, name: str) -> float:
        with self._mutex:
            return self._gates.get(name, 0.0)

    def set_backoff(self, name: str, until: float, *, now: float) -> float:
        with self._mutex:
            stored = max(self._gates.get(name, 0.0), float(until))
            self._gates[name] = stored
            return stored

    def take_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]:
        interval, burst, max_wait = check_bucket(interval, burst, max_wait)
        with self._mutex:
            granted, wait, tat = gcra(self._buckets.get(name), now, interval, burst, max_wait)
            if granted:
                self._buckets[name] = tat
        return granted, wait

    def count_calls(self, name: str, *, now: float, window: float) -> int:
        window = check_window(window)
        slot = math.floor(now / window)
        with self._mutex:
            at, current, previous = self._calls.get(name, (slot, 0, 0))
            if at != slot:  # the window moved on: one step keeps the count as "previous"
                current, previous = 0, current if at == slot - 1 else 0
            self._calls[name] = (slot, current + 1, previous)
        return recent_calls(now, window, current, previous)

    # -- pending authorizations -------------------------------------------------------------
    def put_pending(self, pending: PendingAuthorization) -> None:
        data = pending.to_json()
        now = self._clock()
        with self._mutex:
            self._pending[pending.state_key] = (data, pending.expires_at)
            self._maybe_purge(now)

    def take_pending(self, state_key: str) -> PendingAuthorization | None:
        with self._mutex:
            entry = self._pending.pop(state_key, None)
        if entry is None:
            return None
        data, expires_at = entry
        if expires_at <= self._clock():
            return None
        return PendingAuthorization.from_json(data)

    def _maybe_purge(self, now: float) -> None:
        # Caller holds the mutex.
        self._writes_since_purge += 1
        if self._writes_since_purge < _PURGE_EVERY:
            return
        self._writes_since_purge = 0
        for name in [n for n, row in self._locks.items() if row.expires_at <= now]:
            del self._locks[name]
        for state_key in [k for k, (_, exp) in self._pending.items() if exp <= now]:
            del self._pending[state_key]

    def close(self) -> None:
        """Nothing to release; the data stays until the store is garbage-collected."""


def _tenant_of(data: str) -> object:
    try:
        return json.loads(data).get("tenant")
    except (ValueError, AttributeError):
        return None
