"""Lease cost: the warm path against a plain dict lookup, and cold-burst de-duplication.

Run: ``.venv/bin/python benchmarks/lease.py`` (``--quick`` for a short smoke run,
``--markdown`` to print the tables as Markdown, as pasted into ``docs/benchmarks.md``).

1. Warm path. With a valid token cached, ``lease()`` should cost a key lookup, a dict get and
   a time compare. Every row is timed with ``timeit`` (best of several repeats, so other
   processes on the machine inflate nothing but the worst runs; each timing runs ~0.1 s worth of
   calls, calibrated per row; the rows take turns, round after round, so a slow drift of the
   machine hits every row alike) and divided by a baseline
   timed in the same run: ``dict.get`` on the cache key (sync rows), and awaiting a coroutine
   that does that ``dict.get`` (async rows).
2. Cold burst. A fresh broker (empty in-process cache) gets 200 asyncio tasks and 16 threads
   asking for one key at the same instant, against an in-process MockProvider whose token
   endpoint takes 50 ms. The count of token requests the provider saw must be 1, for client
   credentials and for a stored refresh token, on the memory and the SQLite store.

3. Event handlers. Two brokers make token requests (``lease(force_refresh=True)``, client
   credentials, in-process MockProvider with no added latency), taking turns call by call:
   one has no subscriber, the other a handler that raises and a handler that sleeps 5 s per
   event. Each such call emits one ``TokenIssued``. The row reports the median latency of
   each and their ratio (about 1.0: handlers run on the dispatcher thread, off the lease
   path), and how many events the blocked dispatcher had to drop (its queue is kept small).

No assertion depends on speed; the burst rows print ``ok`` only when exactly one token request
was made and every caller got the same token (and the exit status is 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oauth2_broker_mw import Broker
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import ScopeSet
from oauth2_broker_mw import Secret
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw import TokenStore
from oauth2_broker_mw.testing import MockProvider

TENANT, PRINCIPAL = "acme", "svc-router"
SCOPES = ("email.read", "email.send")
BURST_TASKS, BURST_THREADS = 200, 16
BURST_LATENCY = 0.05


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    ns: float
    baseline_ns: float

    @property
    def ratio(self) -> float:
        return self.ns / self.baseline_ns


@dataclass(frozen=True, slots=True)
class BurstRow:
    store: str
    grant: str
    callers: int
    token_requests: int
    distinct_tokens: int
    errors: int

    @property
    def ok(self) -> bool:
        return self.token_requests == 1 and self.distinct_tokens == 1 and self.errors == 0


def make_broker(
    provider: MockProvider, store: TokenStore | None = None, **descriptor: Any
) -> Broker:
    return Broker(
        provider.descriptor(**descriptor),
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        client_credentials_principals=[PRINCIPAL],  # a service: client credentials apply
    )


def calibrate(per_call_s: float, budget: float) -> int:
    """Calls per timing so that one timing takes about ``budget`` seconds."""
    return max(100, int(budget / max(per_call_s, 1e-9)))


def interleaved_best_ns(
    cases: list[tuple[str, Callable[[], object]]], budget: float, repeat: int
) -> dict[str, float]:
    """Best ns/op per case; the cases take turns (round-robin), so drift hits them all alike."""
    timers = {name: timeit.Timer(fn) for name, fn in cases}
    numbers = {name: calibrate(t.timeit(200) / 200, budget) for name, t in timers.items()}
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(numbers[name]) / numbers[name])
    return {name: seconds * 1e9 for name, seconds in best.items()}


async def interleaved_best_async_ns(
    cases: list[tuple[str, Callable[[], Coroutine[Any, Any, object]]]], budget: float, repeat: int
) -> dict[str, float]:
    async def run(make: Callable[[], Coroutine[Any, Any, object]], number: int) -> float:
        started = time.perf_counter()
        for _ in range(number):
            await make()
        return (time.perf_counter() - started) / number

    numbers = {name: calibrate(await run(make, 200), budget) for name, make in cases}
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeat):
        for name, make in cases:
            best[name] = min(best[name], await run(make, numbers[name]))
    return {name: seconds * 1e9 for name, seconds in best.items()}


# -- event handlers -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EventRow:
    calls: int
    plain_us: float
    handlers_us: float
    dropped: int
    handler_errors: int

    @property
    def ratio(self) -> float:
        return self.handlers_us / self.plain_us


def event_row(provider: MockProvider, calls: int) -> EventRow:
    """Median token-request lease latency without and with a raising and a sleeping handler."""
    plain = make_broker(provider)
    noisy = Broker(
        provider.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        client_credentials_principals=[PRINCIPAL],
        event_queue_size=16,
    )

    def raising(event: object) -> None:
        raise RuntimeError("handler bug")

    def sleeping(event: object) -> None:
        time.sleep(5.0)

    noisy.subscribe(raising)
    noisy.subscribe(sleeping)
    timings: dict[str, list[float]] = {"plain": [], "noisy": []}
    try:
        for broker in (plain, noisy):  # warm up connections and caches
            broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES, force_refresh=True)
        for _ in range(calls):
            for name, broker in (("plain", plain), ("noisy", noisy)):
                started = time.perf_counter()
                broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES, force_refresh=True)
                timings[name].append(time.perf_counter() - started)
        return EventRow(
            calls,
            statistics.median(timings["plain"]) * 1e6,
            statistics.median(timings["noisy"]) * 1e6,
            noisy.events.dropped,
            noisy.events.handler_errors,
        )
    finally:
        plain.close()
        noisy.close()
        noisy.events.close()


def event_table(row: EventRow, markdown: bool) -> list[str]:
    if markdown:
        return [
            "| calls | no handler (µs, median) | raising + 5 s handler (µs) | ratio | dropped |",
            "|---:|---:|---:|---:|---:|",
            f"| {row.calls} | {row.plain_us:,.0f} | {row.handlers_us:,.0f} | {row.ratio:.2f} "
            f"| {row.dropped} |",
        ]
    return [
        f"calls {row.calls}: no handler {row.plain_us:,.0f} µs, raising + 5 s-sleeping handler "
        f"{row.handlers_us:,.0f} µs (median); ratio {row.ratio:.2f}; events dropped "
        f"{row.dropped}",
    ]


# -- warm path ------------------------------------------------------------------------------------
BASELINE = "dict.get(key.id) (baseline)"
ASYNC_BASELINE = "await coroutine: dict.get (baseline)"


def warm_rows(provider: MockProvider, budget: float, repeat: int) -> list[Row]:
    broker = make_broker(provider)
    default = make_broker(provider, default_scopes=list(SCOPES))  # lease() without scopes
    try:
        first = broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        key = broker.key(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        assert broker.cached_lease(key) is first
        default.lease(tenant=TENANT, principal=PRINCIPAL)
        table = {key.id: first}
        key_id = key.id
        scope_list = list(SCOPES)
        scope_str = " ".join(SCOPES)
        scope_set = ScopeSet.of(SCOPES)
        cases: list[tuple[str, Callable[[], object]]] = [
            (BASELINE, lambda: table.get(key_id)),
            ("broker.cached_lease(key)", lambda: broker.cached_lease(key)),
            ("broker.lease_for_key(key)", lambda: broker.lease_for_key(key)),
            (
                "broker.lease(..., scopes=tuple)",
                lambda: broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES),
            ),
            (
                "broker.lease(..., scopes=list)",
                lambda: broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=scope_list),
            ),
            (
                "broker.lease(..., scopes=str)",
                lambda: broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=scope_str),
            ),
            (
                "broker.lease(..., scopes=ScopeSet)",
                lambda: broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=scope_set),
            ),
            (
                "broker.lease(...) default scopes",
                lambda: default.lease(tenant=TENANT, principal=PRINCIPAL),
            ),
        ]
        sync_ns = interleaved_best_ns(cases, budget, repeat)
        rows = [Row(name, ns, sync_ns[BASELINE]) for name, ns in sync_ns.items()]
        rows.extend(asyncio.run(async_rows(broker, table, key_id, budget, repeat)))
        return rows
    finally:
        broker.close()
        default.close()


async def async_rows(
    broker: Broker, table: Mapping[str, object], key_id: str, budget: float, repeat: int
) -> list[Row]:
    async def lookup() -> object:
        return table.get(key_id)

    await broker.alease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
    async_ns = await interleaved_best_async_ns(
        [
            (ASYNC_BASELINE, lookup),
            (
                "await broker.alease(..., scopes=tuple)",
                lambda: broker.alease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES),
            ),
        ],
        budget,
        repeat,
    )
    await broker.aclose()
    return [Row(name, ns, async_ns[ASYNC_BASELINE]) for name, ns in async_ns.items()]


# -- cold burst -----------------------------------------------------------------------------------
def store_expired_grant(provider: MockProvider, store: TokenStore, key: StoreKey) -> None:
    payload = provider.issue_tokens(scopes=SCOPES)
    now = time.time()
    store.put(
        TokenRecord(
            key=key,
            access_token=Secret(payload["access_token"]),
            refresh_token=Secret(payload["refresh_token"]),
            issued_at=now - 4000,
            expires_at=now - 400,
            scopes=ScopeSet.of(SCOPES),
            requested_scopes=ScopeSet.of(SCOPES),
        )
    )


def burst(provider: MockProvider, store_name: str, grant: str, workdir: Path) -> BurstRow:
    store: TokenStore = (
        MemoryStore() if store_name == "memory" else SQLiteStore(workdir / f"{grant}.db")
    )
    broker = make_broker(provider, store)
    key = broker.key(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
    if grant == "refresh_token":
        store_expired_grant(provider, store, key)
    provider.reset_counters()
    provider.latency["token"] = BURST_LATENCY
    tokens: list[str] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def in_thread() -> None:
        go.wait()
        try:
            lease = broker.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        except Exception as exc:
            errors.append(exc)
        else:
            tokens.append(lease.access_token.get_secret_value())

    async def in_tasks() -> None:
        start = asyncio.Event()

        async def one() -> None:
            await start.wait()
            try:
                lease = await broker.alease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
            except Exception as exc:
                errors.append(exc)
            else:
                tokens.append(lease.access_token.get_secret_value())

        tasks = [asyncio.create_task(one()) for _ in range(BURST_TASKS)]
        await asyncio.sleep(0)  # every task is now waiting on ``start``
        go.set()
        start.set()
        await asyncio.gather(*tasks)
        await broker.aclose()

    threads = [threading.Thread(target=in_thread) for _ in range(BURST_THREADS)]
    for thread in threads:
        thread.start()
    try:
        asyncio.run(in_tasks())
    finally:
        go.set()
        for thread in threads:
            thread.join()
        provider.latency.pop("token", None)
        broker.close()
        store.close()
    return BurstRow(
        store=store_name,
        grant=grant,
        callers=BURST_TASKS + BURST_THREADS,
        token_requests=provider.counters["token"],
        distinct_tokens=len(set(tokens)),
        errors=len(errors),
    )


# -- output ---------------------------------------------------------------------------------------
def warm_table(rows: list[Row], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| operation | ns/op | x baseline |", "|---|---:|---:|"]
        lines += [f"| `{r.name}` | {r.ns:,.0f} | {r.ratio:.1f} |" for r in rows]
        return lines
    lines = [f"{'operation':<42} {'ns/op':>9} {'x baseline':>11}"]
    lines += [f"{r.name:<42} {r.ns:>9,.0f} {r.ratio:>11.1f}" for r in rows]
    return lines


def burst_table(rows: list[BurstRow], markdown: bool) -> list[str]:
    head = ("store", "grant", "callers", "token requests", "distinct tokens", "errors", "result")
    cells = [
        (
            r.store,
            r.grant,
            str(r.callers),
            str(r.token_requests),
            str(r.distinct_tokens),
            str(r.errors),
            "ok" if r.ok else "FAIL",
        )
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return lines
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() for c in cells]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--budget", type=float, default=0.1, help="seconds per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings per row (best is kept)")
    parser.add_argument("--quick", action="store_true", help="short run (for smoke tests)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    budget, repeat = (0.005, 3) if args.quick else (args.budget, args.repeat)

    started = time.perf_counter()
    print(f"Python {sys.version.split()[0]}; timeit: best of {repeat} timings of ~{budget:g} s")
    with MockProvider() as provider:
        rows = warm_rows(provider, budget, repeat)
        print("\nWarm lease (a valid token cached in-process):")
        print("\n".join(warm_table(rows, args.markdown)))

        with tempfile.TemporaryDirectory(prefix="lease-bench-") as tmp:
            bursts = [
                burst(provider, store, grant, Path(tmp))
                for store in ("memory", "sqlite")
                for grant in ("client_credentials", "refresh_token")
            ]
    print(
        f"\nCold burst ({BURST_TASKS} tasks + {BURST_THREADS} threads, one key, empty cache, "
        f"token endpoint latency {BURST_LATENCY * 1000:.0f} ms):"
    )
    print("\n".join(burst_table(bursts, args.markdown)))
    with MockProvider() as provider:
        events = event_row(provider, 20 if args.quick else 300)
    print("\nToken-request lease latency, with and without slow and raising event handlers:")
    print("\n".join(event_table(events, args.markdown)))
    print(f"\n({time.perf_counter() - started:.1f} s)")
    return 0 if all(b.ok for b in bursts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
