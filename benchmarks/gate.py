"""What the provider gate costs a token-endpoint request, per store.

Run: ``.venv/bin/python benchmarks/gate.py [--quick] [--markdown]``.

Every token-endpoint request (refresh, client credentials, code exchange) first reads the
provider's back-off (``backoff_until``) and, with a ``TokenBucket`` policy, takes a token
(``take_token``). For each store: µs per operation (best of several repeats) and the ratio to
one bare round trip of the store's driver (Redis ``PING``, PostgreSQL ``SELECT 1`` on a pooled
connection, SQLite ``SELECT 1``), measured in the same run. A cached lease never reaches the
gate, so this is the added cost of a provider call that itself takes tens of milliseconds.
Services that are not running are skipped.
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore

QUICK = "--quick" in sys.argv
MARKDOWN = "--markdown" in sys.argv
NUMBER = 200 if QUICK else 2000
REPEAT = 3 if QUICK else 5
REDIS_URL = os.environ.get("OAUTH2_BROKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "OAUTH2_BROKER_BENCH_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres"
)
NOW = 1_900_000_000.0


def _best_us(fn: Callable[[], object]) -> float:
    return min(timeit.repeat(fn, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e6


def _stores(tmp: Path) -> list[tuple[str, Any, Callable[[], object] | None, Callable[[], None]]]:
    """(name, store, one bare round trip or None, cleanup) for every store that is up."""
    found: list[tuple[str, Any, Callable[[], object] | None, Callable[[], None]]] = []
    found.append(("memory", MemoryStore(), None, lambda: None))
    sqlite = SQLiteStore(tmp / "gate.db")
    sqlite.backoff_until("warm-up")  # creates the file and schema

    def sqlite_ping() -> object:
        with sqlite._connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    found.append(("sqlite", sqlite, sqlite_ping, sqlite.close))
    try:
        from oauth2_broker_mw.stores.redis import RedisStore

        prefix = f"bench-gate-{uuid.uuid4().hex[:8]}:"
        redis_store = RedisStore(REDIS_URL, prefix=prefix)
        redis_store.backoff_until("warm-up")
        client = redis_store._client

        def redis_cleanup() -> None:
            for name in client.scan_iter(match=prefix + "*"):
                client.delete(name)
            redis_store.close()

        found.append(("redis", redis_store, client.ping, redis_cleanup))
    except Exception as exc:  # a missing service is skipped
        print(f"redis skipped: {type(exc).__name__}", file=sys.stderr)
    try:
        import psycopg

        from oauth2_broker_mw.stores.postgres import PostgresStore

        schema = f"bench_gate_{uuid.uuid4().hex[:8]}"
        pg = PostgresStore(POSTGRES_DSN, schema=schema)
        pg.backoff_until("warm-up")
        pool = pg._sync_pool()

        def pg_ping() -> object:
            with pool.connection() as conn:
                return conn.execute("SELECT 1").fetchone()

        def pg_cleanup() -> None:
            pg.close()
            with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

        found.append(("postgres", pg, pg_ping, pg_cleanup))
    except Exception as exc:  # a missing service is skipped
        print(f"postgres skipped: {type(exc).__name__}", file=sys.stderr)
    return found


def main() -> None:
    rows: list[tuple[str, float | None, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, store, ping, cleanup in _stores(Path(tmp)):
            try:
                store.set_backoff("backoff|bench", NOW - 1, now=NOW)
                rtt = _best_us(ping) if ping is not None else None
                read = _best_us(lambda s=store: s.backoff_until("backoff|bench"))
                # A huge budget, so every take is granted and writes (the common case).
                take = _best_us(
                    lambda s=store: s.take_token(
                        "bucket|bench", now=NOW, interval=1e-9, burst=10**9
                    )
                )
                denied = _best_us(
                    lambda s=store: s.take_token("bucket|spent", now=NOW, interval=3600.0, burst=1)
                )
                rows.append((name, rtt, read, take, denied))
            finally:
                cleanup()
    header = ["store", "RTT µs", "backoff_until µs", "take_token µs", "take_token denied µs"]
    if MARKDOWN:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("  ".join(f"{h:>22}" for h in header))
    for name, rtt, read, take, denied in rows:

        def cell(us: float, rtt: float | None = rtt) -> str:
            return f"{us:.1f}" if rtt is None else f"{us:.1f} ({us / rtt:.1f} RTT)"

        cells = [name, "-" if rtt is None else f"{rtt:.1f}", cell(read), cell(take), cell(denied)]
        if MARKDOWN:
            print("| " + " | ".join(cells) + " |")
        else:
            print("  ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
