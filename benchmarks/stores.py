"""Store cost: lease() warm and cold, and compare-and-swap, with 1k to 1M stored records.

Run: ``.venv/bin/python benchmarks/stores.py`` (``--quick`` for a short smoke run,
``--markdown`` for Markdown tables, ``--sizes 1000,100000,1000000`` for the 1M row,
``--stores memory,sqlite,redis,postgres,encrypted-redis`` to choose stores).

For each store and each size (records spread over size/10 tenants, 10 principals each):

* ``warm lease``: ``broker.lease()`` with the token in the in-process cache (no I/O at all);
* ``cold lease``: ``broker.lease()`` on a fresh broker for keys never leased before, whose
  valid token is in the store: one store read each (``get``), no provider call;
* ``CAS``: ``store.compare_and_swap()`` of a stored record at its current version.

Every time is µs per operation, the best of several repeats. Two ratios, both against
baselines measured in the same run: ``RTTs`` divides by one bare round trip of the store's
driver (Redis ``PING``, PostgreSQL ``SELECT 1`` on a pooled connection, SQLite ``SELECT 1``)
— how many round trips an operation costs; ``growth`` divides by the same measurement at the
smallest size — ~1.0 means the cost does not grow with the number of records or tenants.
Records are bulk-loaded in each store's own layout (pipelined Lua writes for Redis, COPY for
PostgreSQL, one transaction for SQLite). Services that are not running are skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore
from oauth2_broker_mw.stores.base import TokenStore
from oauth2_broker_mw.stores.base import refresh_index

REDIS_URL = os.environ.get("OAUTH2_BROKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "OAUTH2_BROKER_BENCH_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres"
)
SCOPES = ("read",)
DESCRIPTOR = ProviderDescriptor(
    id="bench",
    token_endpoint="https://idp.example/token",
    grants=("refresh_token", "client_credentials"),  # type: ignore[arg-type]
)
FINGERPRINT = ScopeSet.of(SCOPES).fingerprint


def key_of(i: int) -> StoreKey:
    return StoreKey(f"t{i // 10:07d}", f"p{i % 10}", "bench", FINGERPRINT)  # type: ignore[arg-type]


def record_of(i: int, now: float) -> TokenRecord:
    return TokenRecord(
        key=key_of(i),
        access_token=Secret(f"at-{i}-{uuid.uuid4().hex}"),
        refresh_token=Secret(f"rt-{i}-{uuid.uuid4().hex}"),
        issued_at=now,
        expires_at=now + 86_400,
        scopes=ScopeSet.of(SCOPES),
        requested_scopes=ScopeSet.of(SCOPES),
        grant="authorization_code",
    )


# -- stores: build, bulk-load, bare round trip, clean up --------------------------------------
@dataclass
class Bench:
    name: str
    store: TokenStore
    load: Callable[[Sequence[TokenRecord]], None]
    round_trip: Callable[[], object] | None
    cleanup: Callable[[], None] = lambda: None
    versions: dict[int, int] = field(default_factory=dict)  # record index → stored version


def memory_bench() -> Bench:
    store = MemoryStore()

    def load(records: Sequence[TokenRecord]) -> None:
        for record in records:
            store.put(record)

    return Bench("memory", store, load, None)


def sqlite_bench(tmp: Path) -> Bench:
    path = tmp / "bench.db"
    store = SQLiteStore(path)
    store.get(key_of(0))  # creates the schema
    conn = sqlite3.connect(path)

    def load(records: Sequence[TokenRecord]) -> None:
        now = time.time()
        with conn:
            conn.executemany(
                "INSERT INTO tokens (key_id, tenant, principal, provider, scope_fingerprint, "
                "version, data, updated_at, expires_at, idle_since) "
                "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                [
                    (
                        r.key.id,
                        r.key.tenant,
                        r.key.principal,
                        r.key.provider,
                        r.key.scope_fingerprint,
                        r.to_json(),
                        now,
                        *refresh_index(r),
                    )
                    for r in records
                ],
            )

    return Bench("sqlite", store, load, lambda: conn.execute("SELECT 1").fetchone(), conn.close)


def redis_bench(encrypted: bool = False) -> Bench | None:
    try:
        import redis

        from oauth2_broker_mw.stores.redis import RedisStore

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        print(f"# redis skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    prefix = f"o2bm-bench-{uuid.uuid4().hex[:8]}:"
    inner = RedisStore(REDIS_URL, prefix=prefix)
    # Bulk load through the store's own write script, pipelined (the key layout is internal).
    script = client.register_script(inner._sync_scripts["write"].script)

    def load(records: Sequence[TokenRecord]) -> None:
        for start in range(0, len(records), 5000):
            pipe = client.pipeline(transaction=False)
            for record in records[start : start + 5000]:
                keys, args = inner._write_script_args(record, "put", "")
                script(keys=keys, args=args, client=pipe)
            pipe.execute()

    def cleanup() -> None:
        batch: list[Any] = []
        for name in client.scan_iter(match=prefix + "*", count=5000):
            batch.append(name)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
        client.close()

    bench = Bench("redis", inner, load, client.ping, cleanup)
    return encrypt(bench) if encrypted else bench


def postgres_bench() -> Bench | None:
    try:
        import psycopg
        import psycopg_pool

        from oauth2_broker_mw.stores.postgres import PostgresStore

        with psycopg.connect(POSTGRES_DSN, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        print(f"# postgres skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    schema = f"o2bm_bench_{uuid.uuid4().hex[:8]}"
    pool = psycopg_pool.ConnectionPool(POSTGRES_DSN, min_size=2, max_size=4, open=True)
    store = PostgresStore(pool=pool, schema=schema)
    store.get(key_of(0))  # creates the schema

    def load(records: Sequence[TokenRecord]) -> None:
        with pool.connection() as conn, conn.cursor() as cur:
            copy_sql = (
                f'COPY "{schema}".tokens (key_id, tenant, principal, provider, '
                "scope_fingerprint, version, data, expires_at, idle_since) FROM STDIN"
            )
            with cur.copy(copy_sql) as copy:
                for r in records:
                    copy.write_row(
                        (
                            r.key.id,
                            r.key.tenant,
                            r.key.principal,
                            r.key.provider,
                            r.key.scope_fingerprint,
                            1,
                            r.to_json(),
                            *refresh_index(r),
                        )
                    )
            cur.execute(f'ANALYZE "{schema}".tokens')

    def round_trip() -> object:
        with pool.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    def cleanup() -> None:
        with pool.connection() as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        store.close()
        pool.close()

    return Bench("postgres", store, load, round_trip, cleanup)


def encrypt(bench: Bench) -> Bench:
    from oauth2_broker_mw.stores.encrypted import EncryptedStore
    from oauth2_broker_mw.stores.encrypted import KeyRing

    store = EncryptedStore(bench.store, KeyRing({"bench": os.urandom(32)}, "bench"))
    inner_load = bench.load

    def load(records: Sequence[TokenRecord]) -> None:
        inner_load([store.seal_record(r) for r in records])

    return Bench(f"encrypted-{bench.name}", store, load, bench.round_trip, bench.cleanup)


# -- measurements ------------------------------------------------------------------------------
def best_per_op(prepare: Callable[[], Callable[[], int]], repeats: int) -> float:
    """Best µs/op over ``repeats`` timed runs, after one untimed warm-up run.

    ``prepare()`` (untimed) returns a job; the job does the operations and returns how many.
    """
    best = float("inf")
    for attempt in range(repeats + 1):
        job = prepare()
        started = time.perf_counter()
        n = job()
        elapsed = time.perf_counter() - started
        if attempt:
            best = min(best, elapsed / n * 1e6)
    return best


def best_timeit(fn: Callable[[], object], number: int, repeats: int) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def measure(
    bench: Bench, size: int, ops: int, repeats: int, rng: random.Random
) -> dict[str, float]:
    store = bench.store
    results: dict[str, float] = {}
    if bench.round_trip is not None:
        results["rtt"] = best_timeit(bench.round_trip, max(ops // 2, 50), repeats)

    # warm lease: the token is in the in-process cache
    broker = Broker(DESCRIPTOR, client_id="bench", store=store)
    warm_key = key_of(rng.randrange(size))

    def warm() -> object:
        return broker.lease(tenant=warm_key.tenant, principal=warm_key.principal, scopes=SCOPES)

    results["warm lease"] = best_timeit(warm, 5000 if ops < 1000 else 20_000, repeats)
    broker.close()

    # cold lease: a fresh broker per run, keys never leased before (one store read each)
    def cold() -> Callable[[], int]:
        fresh = Broker(DESCRIPTOR, client_id="bench", store=store)
        keys = [key_of(i) for i in rng.sample(range(size), min(ops, size))]

        def job() -> int:
            for k in keys:
                fresh.lease(tenant=k.tenant, principal=k.principal, scopes=SCOPES)
            fresh.close()
            return len(keys)

        return job

    results["cold lease"] = best_per_op(cold, repeats)

    # compare-and-swap at the current version (this process is the only writer)
    versions = bench.versions
    now = time.time()

    def cas() -> Callable[[], int]:
        picks = [(i, record_of(i, now)) for i in rng.sample(range(size), min(ops, size))]

        def job() -> int:
            for i, record in picks:
                stored = store.compare_and_swap(record, expected_version=versions.get(i, 1))
                if stored is None:
                    raise RuntimeError("unexpected CAS conflict")
                versions[i] = stored.version
            return len(picks)

        return job

    results["CAS"] = best_per_op(cas, repeats)
    return results


@contextmanager
def bench_for(name: str, tmp: Path) -> Iterator[Bench | None]:
    """One store, built and loaded by the caller, removed afterwards (one at a time, so a
    store's millions of records never slow down the next store's measurements)."""
    builders: dict[str, Callable[[], Bench | None]] = {
        "memory": memory_bench,
        "sqlite": lambda: sqlite_bench(tmp),
        "redis": redis_bench,
        "encrypted-redis": lambda: redis_bench(encrypted=True),
        "postgres": postgres_bench,
        "encrypted-memory": lambda: encrypt(memory_bench()),
    }
    if name not in builders:
        raise SystemExit(f"unknown store {name!r}; known: {sorted(builders)}")
    bench = builders[name]()
    try:
        yield bench
    finally:
        if bench is not None:
            try:
                bench.cleanup()
            finally:
                bench.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--sizes", default=None, help="comma-separated record counts")
    parser.add_argument(
        "--stores",
        default="memory,sqlite,redis,postgres,encrypted-redis",
        help="comma-separated: memory, sqlite, redis, postgres, encrypted-redis, encrypted-memory",
    )
    parser.add_argument("--ops", type=int, default=None, help="operations per timing")
    args = parser.parse_args(argv)
    sizes = [
        int(s) for s in (args.sizes or ("1000,10000" if args.quick else "1000,100000")).split(",")
    ]
    sizes.sort()
    ops = args.ops or (200 if args.quick else 2000)
    repeats = 2 if args.quick else 5
    rng = random.Random(20261126)
    rows: list[tuple[str, int, str, float, float | None, float]] = []
    for name in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp, bench_for(name, Path(tmp)) as bench:
            if bench is None:
                continue
            loaded = 0
            baseline: dict[str, float] = {}
            for size in sizes:
                started = time.perf_counter()
                now = time.time()
                for start in range(loaded, size, 50_000):
                    bench.load([record_of(i, now) for i in range(start, min(size, start + 50_000))])
                loaded = size
                load_s = time.perf_counter() - started
                print(f"# {bench.name}: {size:,} records loaded in {load_s:.1f} s", file=sys.stderr)
                results = measure(bench, size, ops, repeats, rng)
                rtt = results.pop("rtt", None)
                for op, us in results.items():
                    baseline.setdefault(op, us)
                    rows.append(
                        (
                            bench.name,
                            size,
                            op,
                            us,
                            None if rtt is None else us / rtt,
                            us / baseline[op],
                        )
                    )
                if rtt is not None:
                    rows.append(
                        (
                            bench.name,
                            size,
                            "bare round trip",
                            rtt,
                            1.0,
                            rtt / baseline.setdefault("rtt", rtt),
                        )
                    )
    print_table(rows, markdown=args.markdown)
    return 0


def print_table(
    rows: Sequence[tuple[str, int, str, float, float | None, float]], *, markdown: bool
) -> None:
    header = ("store", "records", "operation", "µs/op", "RTTs", "growth")
    body = [
        (
            store,
            f"{size:,}",
            op,
            f"{us:.1f}" if us >= 10 else f"{us:.2f}",
            "—" if x_rtt is None else f"{x_rtt:.2f}",
            f"{growth:.2f}",
        )
        for store, size, op, us, x_rtt, growth in rows
    ]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for line in body:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for line in body:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    raise SystemExit(main())
