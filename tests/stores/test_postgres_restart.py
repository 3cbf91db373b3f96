"""PostgreSQL restarted under an idle pool: the first operation afterwards succeeds.

The store's own PostgreSQL instance (initdb on a free loopback port) is restarted while the
pool holds several idle connections; every one of them is dead afterwards.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from _own_services import ServerProcess
from _own_services import own_postgres
from _own_services import postgres_dsn
from _services import require_module

from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TokenRecord

require_module("psycopg", "postgres")

from oauth2_broker_mw.stores.postgres import PostgresStore  # noqa: E402


@pytest.fixture(scope="module")
def pg() -> Iterator[ServerProcess]:
    with own_postgres() as process:
        yield process


def _record(principal: str, token: str) -> TokenRecord:
    key = StoreKey.build("acme", principal, "mock", ScopeSet.of(["read"]))
    return TokenRecord(key=key, access_token=Secret(token), scopes=ScopeSet.of(["read"]))


def _fill_pool(store: PostgresStore, n: int) -> None:
    """Make ``n`` connections busy at once so the pool keeps ``n`` idle ones afterwards."""
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        barrier.wait()
        store.put(_record(f"warm-{i}", f"at-{i}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_the_first_operation_after_a_restart_succeeds(pg: ServerProcess) -> None:
    store = PostgresStore(postgres_dsn(pg), schema="restart_sync", min_size=4, max_size=8)
    try:
        _fill_pool(store, 6)
        pg.restart()
        for i in range(6):  # every one of them: no idle dead connection is handed out
            store.put(_record(f"after-{i}", f"at-after-{i}"))
        loaded = store.get(_record("after-0", "").key)
        assert loaded is not None and loaded.access_token == Secret("at-after-0")
    finally:
        store.close()


def test_the_first_async_operation_after_a_restart_succeeds(pg: ServerProcess) -> None:
    async def main() -> None:
        store = PostgresStore(postgres_dsn(pg), schema="restart_async", max_size=8)
        try:
            await asyncio.gather(*(store.aput(_record(f"w-{i}", "at")) for i in range(6)))
            await asyncio.to_thread(pg.restart)
            for i in range(6):
                await store.aput(_record(f"a-{i}", f"at-{i}"))
        finally:
            await store.aclose()

    asyncio.run(main())
