"""``Refresher``: renew tokens before they expire, and refresh tokens before they go idle.

Owns: the proactive refresh sweep. A sweep first delivers the queued revocations that are
due (:meth:`Broker.adrain_revocations`: they are revoked, never refreshed), then asks the
store's refresh index for the records whose access token expires within ``window`` seconds
(``expiring``) and, for providers whose descriptor has a ``refresh_idle_limit``, the records
whose refresh token has not been used for ``refresh_idle_limit - idle_margin`` seconds
(``idle``). It refreshes each one through its
provider's :class:`~oauth2_broker_mw.broker.Broker` with bounded concurrency, with the
version the index reported as a fence (:meth:`Broker.arefresh_key`): the broker's lease lock
and compare-and-swap make sure that any number of refreshers, on any number of hosts, send a
given refresh token to the provider once.

Run it as an asyncio task (:meth:`Refresher.run`), in a thread (:meth:`Refresher.start`), one
sweep at a time (:meth:`Refresher.sweep` / :meth:`Refresher.asweep`), or as a process
(``oauth2-broker refresher``). One implementation: the sync entry points run the async one on
a private event loop.

Must not import: store drivers, httpx/httpx2, auth, middleware.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields

from ._core.errors import AuthorizationRequired
from ._core.errors import BrokerError
from ._core.errors import ConfigurationError
from ._core.errors import RateLimited
from .broker import Broker
from .stores.base import DueRecord
from .stores.base import RefreshIndex

__all__ = ["Refresher", "SweepReport"]

log = logging.getLogger("oauth2_broker_mw.refresher")


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did. ``refreshed`` counts records that are now at a newer version (by
    this refresher or, for a few, by another one that got there first)."""

    due: int = 0
    refreshed: int = 0
    reauthorization_required: int = 0
    failed: int = 0
    unknown_provider: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    """Records left for a later sweep: their provider's gate was closed (back-off, circuit
    breaker or budget; see docs/operations.md), so the rest of its records were not tried."""
    unsaved: int = 0
    """Rotations the store refused that this process still holds after the sweep tried to
    write them (:meth:`Broker.flush_unsaved`); above 0, the store is refusing writes."""
    revocations_delivered: int = 0
    """Queued revocations (logouts the provider could not take at the time) that the provider
    took in this sweep (:meth:`Broker.drain_revocations`)."""
    revocations_pending: int = 0
    """Queued revocations still waiting for a later attempt after this sweep."""
    revocations_dropped: int = 0
    """Queued revocations given up in this sweep after their last attempt (alert on it)."""

    def to_dict(self) -> dict[str, object]:
        """Every field by its name, in field order (``errors`` as a plain dict)."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["errors"] = dict(self.errors)
        return out


class Refresher:
    """Proactive refresh over one store, for the providers of the given brokers.

    ``brokers``: one :class:`Broker` per provider (they must share ``store``, which defaults to
    the first broker's store and must implement the refresh index). ``window``: refresh access
    tokens expiring within this many seconds. ``idle_margin``: refresh refresh tokens this long
    before their provider's ``refresh_idle_limit``. ``concurrency``: at most this many token
    requests at once per refresher. ``batch``: records per index query (a sweep that finds a
    full batch runs again at once). ``interval``: seconds between sweeps in :meth:`run`.
    """

    def __init__(
        self,
        brokers: Iterable[Broker],
        *,
        store: RefreshIndex | None = None,
        window: float = 300.0,
        idle_margin: float = 7 * 86_400.0,
        concurrency: int = 8,
        batch: int = 1000,
        interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_sweep: Callable[[SweepReport], None] | None = None,
    ) -> None:
        by_provider: dict[str, Broker] = {}
        by_tenant: dict[tuple[str, str], Broker] = {}
        for broker in brokers:
            pid, tenant = broker.provider.id, broker.tenant
            if tenant is not None:  # a Registry broker: that tenant's records only
                if (tenant, pid) in by_tenant:
                    raise ConfigurationError(
                        f"two brokers for tenant {tenant!r} provider {pid!r}; pass one each"
                    )
                by_tenant[(tenant, pid)] = broker
                continue
            if pid in by_provider:
                raise ConfigurationError(f"two brokers for provider {pid!r}; pass one each")
            by_provider[pid] = broker
        every = [*by_provider.values(), *by_tenant.values()]
        if not every:
            raise ConfigurationError("Refresher needs at least one Broker")
        chosen = store if store is not None else every[0].store
        if not isinstance(chosen, RefreshIndex):
            raise ConfigurationError(
                f"{type(chosen).__name__} has no refresh index (expiring/idle): "
                "use a built-in store or implement stores.base.RefreshIndex"
            )
        for name, value in (("window", window), ("idle_margin", idle_margin)):
            if not value >= 0:
                raise ConfigurationError(f"{name} must be >= 0 seconds; got {value!r}")
        if not interval > 0:
            raise ConfigurationError(f"interval must be > 0 seconds; got {interval!r}")
        for name, count in (("concurrency", concurrency), ("batch", batch)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(f"{name} must be a positive integer; got {count!r}")
        self._brokers = by_provider
        self._tenant_brokers = by_tenant
        self._every = every
        self._store = chosen
        self._window = float(window)
        self._idle_margin = float(idle_margin)
        self._concurrency = concurrency
        self._batch = batch
        self._interval = float(interval)
        self._clock = clock
        self._on_sweep = on_sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._salt = secrets.token_hex(8)

    def __repr__(self) -> str:
        return (
            f"Refresher(providers={sorted({b.provider.id for b in self._every})!r}, "
            f"window={self._window:g}, "
            f"concurrency={self._concurrency})"
        )

    # -- one sweep -----------------------------------------------------------------------------
    async def _due(self, now: float) -> list[DueRecord]:
        found: dict[str, DueRecord] = {}
        for due in await self._store.aexpiring(now + self._window, limit=self._batch):
            found[due.key.id] = due
        by_provider = {b.provider.id: b for b in self._every}
        for pid, broker in by_provider.items():
            limit = broker.provider.refresh_idle_limit
            if limit is None:
                continue
            cutoff = now - max(limit - self._idle_margin, 0.0)
            idle = await self._store.aidle(pid, cutoff, limit=self._batch)
            broker.telemetry.nearing_idle_expiry(pid, len(idle))
            for due in idle:
                found.setdefault(due.key.id, due)
        # Soonest second first; within one second, an order of this refresher's own, so that
        # refreshers on several hosts start on different records instead of queueing on the
        # same refresh locks (the version fence keeps a collision harmless, but it costs).
        salt = self._salt
        return sorted(found.values(), key=lambda d: (math.floor(d.at), hash((salt, d.key.id))))

    async def _drain(self) -> Counter[str]:
        """Deliver the queued revocations that are due (never refreshed: they are revoked)."""
        counts: Counter[str] = Counter()
        for broker in self._every:
            try:
                drained = await broker.adrain_revocations(limit=self._batch)
            except BrokerError as exc:  # the store is down: the queue waits for a later sweep
                log.warning(
                    "draining revocations for provider=%s failed: %s",
                    broker.provider.id,
                    type(exc).__name__,
                )
                continue
            counts["delivered"] += drained.delivered
            counts["pending"] += drained.pending
            counts["dropped"] += drained.dropped
        return counts

    async def asweep(self) -> SweepReport:
        """Write the rotations the store refused earlier, deliver the queued revocations that
        are due, then find what is due for a refresh and refresh it; returns what happened."""
        unsaved = 0
        for broker in self._every:
            unsaved += await broker.aflush_unsaved()
        revocations = await self._drain()
        due = await self._due(self._clock())
        outcomes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        gate = asyncio.Semaphore(self._concurrency)
        # A closed gate: the provider's back-off (every tenant), or one tenant's budget.
        limited: set[tuple[str, str | None]] = set()

        async def one(item: DueRecord) -> None:
            tenant, pid = item.key.tenant, item.key.provider
            broker = self._tenant_brokers.get((tenant, pid)) or self._brokers.get(pid)
            if broker is None:  # no broker for this provider, or not for this tenant
                outcomes["unknown_provider"] += 1
                return
            async with gate:
                if {(pid, None), (pid, tenant)} & limited:  # closed: no attempt, no event
                    outcomes["rate_limited"] += 1
                    return
                try:
                    await broker.arefresh_key(item.key, if_version=item.version)
                except AuthorizationRequired:
                    outcomes["reauthorization_required"] += 1
                except RateLimited as exc:
                    outcomes["rate_limited"] += 1
                    closed = (pid, tenant if exc.reason == "policy" else None)
                    if closed not in limited:
                        limited.add(closed)
                        log.warning(
                            "provider=%s is rate limited for %.3gs (%s): its due records%s "
                            "wait for a later sweep",
                            pid,
                            exc.retry_after or 0.0,
                            exc.reason,
                            " of this tenant" if closed[1] is not None else "",
                        )
                except BrokerError as exc:
                    outcomes["failed"] += 1
                    errors[type(exc).__name__] += 1
                    log.warning(
                        "proactive refresh failed for provider=%s tenant=%s: %s",
                        item.key.provider,
                        item.key.tenant,
                        type(exc).__name__,
                    )
                else:
                    outcomes["refreshed"] += 1

        await asyncio.gather(*(one(item) for item in due))
        report = SweepReport(
            due=len(due),
            refreshed=outcomes["refreshed"],
            reauthorization_required=outcomes["reauthorization_required"],
            failed=outcomes["failed"],
            unknown_provider=outcomes["unknown_provider"],
            errors=dict(errors),
            rate_limited=outcomes["rate_limited"],
            unsaved=unsaved,
            revocations_delivered=revocations["delivered"],
            revocations_pending=revocations["pending"],
            revocations_dropped=revocations["dropped"],
        )
        if self._on_sweep is not None:
            self._on_sweep(report)
        return report

    def sweep(self) -> SweepReport:
        """:meth:`asweep` from sync code (on a private event loop)."""
        return asyncio.run(self.asweep())

    # -- running -------------------------------------------------------------------------------
    async def run(self, *, sweeps: int | None = None) -> None:
        """Sweep every ``interval`` seconds (at once again after a full batch) until stopped.

        Stop it by cancelling the task, calling :meth:`stop`, or with ``sweeps``.
        """
        done = 0
        while not self._stop.is_set() and (sweeps is None or done < sweeps):
            try:
                report = await self.asweep()
            except BrokerError as exc:  # the store is down: try again next interval
                log.warning("refresher sweep failed: %s", type(exc).__name__)
                report = SweepReport()
            done += 1
            if report.due >= self._batch and report.refreshed:
                continue
            # stop() may come from another thread (a threading.Event): poll it while waiting
            deadline = time.monotonic() + self._interval
            while not self._stop.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(min(0.2, self._interval))

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread with its own event loop; :meth:`stop` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise ConfigurationError("this Refresher is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.run()), name="oauth2-broker-refresher", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask :meth:`run` to finish after the current sweep; joins the :meth:`start` thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
