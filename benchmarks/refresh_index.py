"""Refresh-index cost: ``expiring()`` and ``idle()`` with 10^5 and 10^6 stored records.

Run: ``.venv/bin/python benchmarks/refresh_index.py`` (``--quick`` for 10^3 / 10^4,
``--sizes 100000,1000000``, ``--stores sqlite,redis,postgres,memory``, ``--markdown``).

Records have staggered expiry (uniform over 30 days) and refresh tokens last used up to 180
days ago, over size/10 tenants. The queries are the ones a refresher sweep makes:

* ``expiring 1h``: ``expiring(now + 1 h, limit=1000)`` (about size/720 records are due:
  1,000 rows at 10^6, 139 at 10^5);
* ``expiring none``: ``expiring(now - 1 d)``, nothing due (what most sweeps find);
* ``idle``: ``idle(provider, now - 170 d, limit=1000)`` (refresh tokens close to a 180-day
  idle limit).

Times are ms per query (best of several). ``RTTs`` divides by a bare round trip of the
store's driver; ``per row`` is µs per returned row; ``growth`` divides by the same query at the
smallest size: ~1 means the query does not get slower as the store grows (an index range
scan), ~10 per decade would mean a table scan. Records are bulk-loaded in each store's own
layout with the loaders of ``stores.py``; the queries go through the public store API.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from stores import Bench
from stores import key_of
from stores import memory_bench
from stores import postgres_bench
from stores import record_of
from stores import redis_bench
from stores import sqlite_bench

from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.stores.base import RefreshIndex

DAY = 86_400.0
CHUNK = 20_000


def records(start: int, stop: int, now: float, rng: random.Random) -> Iterator[list[TokenRecord]]:
    for lo in range(start, stop, CHUNK):
        yield [
            replace(
                record_of(i, now),
                expires_at=now + rng.uniform(0, 30 * DAY),
                issued_at=now - rng.uniform(0, 180 * DAY),
            )
            for i in range(lo, min(stop, lo + CHUNK))
        ]


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    return min(timeit.repeat(fn, number=1, repeat=repeats)) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--stores", default="sqlite,redis,postgres")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s] or (
        [1_000, 10_000] if args.quick else [100_000, 1_000_000]
    )
    now = time.time()
    rows: list[tuple[str, int, str, float, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        builders: dict[str, Callable[[], Bench | None]] = {
            "memory": memory_bench,
            "sqlite": lambda: sqlite_bench(Path(tmp)),
            "redis": redis_bench,
            "postgres": postgres_bench,
        }
        for name in args.stores.split(","):
            bench = builders[name]()
            if bench is None:
                continue
            store = bench.store
            assert isinstance(store, RefreshIndex)
            rng = random.Random(7)
            loaded = 0
            first: dict[str, float] = {}
            try:
                for size in sizes:
                    started = time.perf_counter()
                    for chunk in records(loaded, size, now, rng):
                        bench.load(chunk)
                    loaded = size
                    took = time.perf_counter() - started
                    print(f"# {name}: {size:,} records loaded in {took:.0f}s", file=sys.stderr)
                    rtt = (
                        best_ms(bench.round_trip, args.repeats)
                        if bench.round_trip is not None
                        else float("nan")
                    )
                    queries: dict[str, Callable[[], list[object]]] = {
                        "expiring 1h": lambda s=store: list(s.expiring(now + 3600, limit=1000)),
                        "expiring none": lambda s=store: list(s.expiring(now - DAY, limit=1000)),
                        "idle": lambda s=store: list(s.idle("bench", now - 170 * DAY, limit=1000)),
                    }
                    for label, query in queries.items():
                        n = len(query())
                        ms = best_ms(query, args.repeats)
                        first.setdefault(label, ms)
                        per_row = ms * 1000 / n if n else float("nan")
                        rows.append(
                            (name, size, f"{label} ({n})", ms, ms / rtt, per_row, ms / first[label])
                        )
                    got = store.expiring(now + 3600, limit=5)
                    assert all(d.at < now + 3600 for d in got), "index returned a record not due"
                    assert got == sorted(got, key=lambda d: d.at)
                    assert all(
                        d.key == key_of(int(d.key.tenant[1:]) * 10 + int(d.key.principal[1:]))
                        for d in got
                    )
            finally:
                bench.cleanup()
    header = ("store", "records", "query (rows)", "ms", "RTTs", "µs/row", "growth")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            cells = (r[0], f"{r[1]:,}", r[2], f"{r[3]:.2f}", f"{r[4]:.1f}", f"{r[5]:.1f}")
            print("| " + " | ".join(cells) + f" | {r[6]:.2f} |")
    else:
        print(f"{header[0]:<10}{header[1]:>11}  {header[2]:<22}", end="")
        print(f"{'ms':>9}{'RTTs':>8}{'µs/row':>9}{'growth':>8}")
        for r in rows:
            print(
                f"{r[0]:<10}{r[1]:>11,}  {r[2]:<22}{r[3]:>9.2f}{r[4]:>8.1f}{r[5]:>9.1f}{r[6]:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
