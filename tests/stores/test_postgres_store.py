"""PostgresStore against the real PostgreSQL at 127.0.0.1:5432, database ``test``.

Skipped if PostgreSQL is absent, failed under ``CI=true``. Each test gets its own schema.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator

import pytest
from _services import POSTGRES_DSN
from _services import TcpProxy
from _services import postgres_drop_schema
from _services import require_module
from _services import require_postgres
from _services import unique_name

from oauth2_broker_mw._core.errors import CorruptRecord
from oauth2_broker_mw._core.errors import StorageError
from oauth2_broker_mw._core.errors import StoreUnavailable
from oauth2_broker_mw._core.model import Lease
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing.conformance import StoreConformance
from oauth2_broker_mw.testing.conformance import make_pending
from oauth2_broker_mw.testing.conformance import make_record

psycopg = require_module("psycopg", "postgres")
psycopg_pool = require_module("psycopg_pool", "postgres")

from oauth2_broker_mw.stores.postgres import SCHEMA_VERSION  # noqa: E402
from oauth2_broker_mw.stores.postgres import PostgresStore  # noqa: E402

pytestmark = pytest.mark.postgres

_DESCRIPTOR = ProviderDescriptor(
    id="example", token_endpoint="https://idp.example/token", grants=("refresh_token",)
)


@pytest.fixture
def dsn() -> str:
    return require_postgres()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    name = unique_name("pg")
    yield name
    postgres_drop_schema(name)


def _sql(query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


class TestPostgresStoreFromDSN(StoreConformance):
    @pytest.fixture
    def store(self, dsn: str, schema: str) -> Iterator[PostgresStore]:
        store = PostgresStore(dsn, schema=schema)
        yield store
        store.close()


class TestPostgresStoreFromPool(StoreConformance):
    """A pool the application already has; the async twins run it in worker threads."""

    @pytest.fixture
    def store(self, dsn: str, schema: str) -> Iterator[PostgresStore]:
        pool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=20, open=True)
        store = PostgresStore(pool=pool, schema=schema)
        yield store
        store.close()
        pool.close()


def _key(tenant: str = "acme", principal: str = "alice") -> StoreKey:
    return StoreKey.build(tenant, principal, "example", "read")


def test_repr_redacts_the_password(schema: str) -> None:
    store = PostgresStore("postgresql://broker:hunter2-secret@127.0.0.1/test", schema=schema)
    assert "hunter2" not in repr(store)
    assert "***" in repr(store)
    store2 = PostgresStore("host=127.0.0.1 password=hunter2-secret dbname=test", schema=schema)
    assert "hunter2" not in repr(store2)


def test_schema_name_is_validated() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresStore("dbname=test", schema='x"; DROP TABLE y; --')


def test_schema_is_created_and_versioned(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        rows = _sql(f'SELECT version, description FROM "{schema}".schema_migrations')
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
        tables = {
            r[0]
            for r in _sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema
            )
        }
        assert tables == {"schema_migrations", "tokens", "locks", "pending", "gates", "calls"}
    finally:
        store.close()


def test_concurrent_first_start_migrates_once(dsn: str, schema: str) -> None:
    stores = [PostgresStore(dsn, schema=schema) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(store: PostgresStore) -> None:
        try:
            barrier.wait(timeout=10)
            store.put(make_record(_key(principal=f"p{id(store)}")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    assert errors == []
    assert _sql(f'SELECT count(*) FROM "{schema}".schema_migrations') == [(SCHEMA_VERSION,)]
    assert _sql(f'SELECT count(*) FROM "{schema}".tokens') == [(8,)]


def test_newer_schema_is_refused(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    store.schema_version()
    store.close()
    _sql(
        f'INSERT INTO "{schema}".schema_migrations (version, description) VALUES (%s, %s)',
        SCHEMA_VERSION + 1,
        "from the future",
    )
    later = PostgresStore(dsn, schema=schema)
    try:
        with pytest.raises(StorageError, match="newer"):
            later.get(_key())
    finally:
        later.close()


def test_unreachable_postgres_is_store_unavailable(schema: str) -> None:
    store = PostgresStore("host=127.0.0.1 port=1 dbname=test", schema=schema, timeout=1)
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.get(_key())
        assert info.value.retryable
    finally:
        store.close()


async def test_unreachable_postgres_is_store_unavailable_async(schema: str) -> None:
    store = PostgresStore("host=127.0.0.1 port=1 dbname=test", schema=schema, timeout=1)
    try:
        with pytest.raises(StoreUnavailable):
            await store.aget(_key())
    finally:
        await store.aclose()


def test_a_corrupt_row_raises_corrupt_record(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    try:
        key, other = _key(), _key(principal="bob")
        store.put(make_record(key))
        store.put(make_record(other))
        # another key's row copied into this slot: detected, not returned
        _sql(
            f'UPDATE "{schema}".tokens SET data = (SELECT data FROM "{schema}".tokens '
            "WHERE key_id = %s) WHERE key_id = %s",
            other.id,
            key.id,
        )
        with pytest.raises(CorruptRecord):
            store.get(key)
        _sql(f'UPDATE "{schema}".tokens SET data = %s::jsonb WHERE key_id = %s', "{}", key.id)
        with pytest.raises(CorruptRecord):
            store.get(key)
    finally:
        store.close()


def _terminate(application_name: str) -> int:
    rows = _sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        application_name,
    )
    return len(rows)


@pytest.fixture
def named(dsn: str) -> tuple[str, str]:
    name = unique_name("app")
    return f"{dsn} application_name={name}", name


def test_terminated_backends_mid_run_recover_without_loss(
    named: tuple[str, str], schema: str
) -> None:
    dsn, name = named
    store = PostgresStore(dsn, schema=schema, min_size=2, max_size=4)
    try:
        keys = [_key(principal=f"p{i}") for i in range(20)]
        for i, key in enumerate(keys[:10]):
            store.put(make_record(key, f"at-{i}"))
        assert _terminate(name) >= 1
        outcomes: list[str] = []
        for i, key in enumerate(keys[10:], start=10):
            for _ in range(3):  # a caller retries a retryable error
                try:
                    store.put(make_record(key, f"at-{i}"))
                    outcomes.append("ok")
                    break
                except StoreUnavailable:
                    outcomes.append("unavailable")
        assert outcomes.count("ok") == 10
        for i, key in enumerate(keys):
            loaded = store.get(key)
            assert loaded is not None
            assert loaded.access_token == Secret(f"at-{i}")
            assert loaded.version == 1
    finally:
        store.close()


async def test_terminated_backends_mid_run_recover_async(
    named: tuple[str, str], schema: str
) -> None:
    dsn, name = named
    store = PostgresStore(dsn, schema=schema, min_size=2, max_size=4)
    try:
        key = _key()
        await store.aput(make_record(key, "at-before"))
        assert await asyncio.to_thread(_terminate, name) >= 1
        for _ in range(3):
            try:
                await store.aput(make_record(key, "at-after"))
                break
            except StoreUnavailable:
                continue
        loaded = await store.aget(key)
        assert loaded is not None
        assert loaded.access_token == Secret("at-after")
        assert loaded.version == 2
    finally:
        await store.aclose()


def test_lock_renewal_keeps_others_out_past_the_first_ttl(dsn: str, schema: str) -> None:
    holder = PostgresStore(dsn, schema=schema)
    other = PostgresStore(dsn, schema=schema)  # another process, as far as PostgreSQL knows
    try:
        # Renew at once to a long ttl, then wait past the first one: however slow this
        # machine is, the renewed lock is still held (no race between a sleep and a ttl).
        assert holder.acquire_lock("refresh:k", "holder", 0.5)
        assert holder.renew_lock("refresh:k", "holder", 60)
        time.sleep(0.8)
        assert not other.acquire_lock("refresh:k", "other", 30)
        assert holder.renew_lock("refresh:k", "holder", 60)  # still the holder's to renew
        assert not other.acquire_lock("refresh:k", "other", 30)
        assert not other.release_lock("refresh:k", "other")
        assert holder.release_lock("refresh:k", "holder")
        assert other.acquire_lock("refresh:k", "other", 30)
    finally:
        holder.close()
        other.close()


def test_lock_expiry_uses_the_database_clock(dsn: str, schema: str) -> None:
    # A host clock far in the future must not let anyone steal a live lock.
    store = PostgresStore(dsn, schema=schema, clock=lambda: time.time() + 3600)
    try:
        assert store.acquire_lock("refresh:k", "a", 30)
        assert not store.acquire_lock("refresh:k", "b", 30)
        rows = _sql(
            f"SELECT expires_at > now() + interval '20 seconds' FROM \"{schema}\".locks "
            "WHERE name = %s",
            "refresh:k",
        )
        assert rows == [(True,)]
    finally:
        store.close()


def test_expired_rows_are_purged_without_a_cron(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema, purge_every=5)
    try:
        for i in range(3):
            store.acquire_lock(f"old-{i}", "gone", 30)
            store.put_pending(make_pending(expires_in=60))
        _sql(f"UPDATE \"{schema}\".locks SET expires_at = now() - interval '1 hour'")
        _sql(f"UPDATE \"{schema}\".pending SET expires_at = now() - interval '1 hour'")
        for i in range(5):
            store.acquire_lock(f"new-{i}", "here", 30)
        assert _sql(f'SELECT count(*) FROM "{schema}".locks WHERE owner = %s', "gone") == [(0,)]
        assert _sql(f'SELECT count(*) FROM "{schema}".pending') == [(0,)]
        assert _sql(f'SELECT count(*) FROM "{schema}".locks WHERE owner = %s', "here") == [(5,)]
    finally:
        store.close()


def test_rows_hold_no_state_in_keys_and_list_tenants(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    try:
        pending = make_pending()
        store.put_pending(pending)
        keys = [r[0] for r in _sql(f'SELECT state_key FROM "{schema}".pending')]
        assert keys == [pending.state_key]
        assert pending.state.get_secret_value() not in keys[0]
        store.put(make_record(_key("t2")))
        store.put(make_record(_key("t1")))
        assert store.list_tenants() == [TenantId("t1"), TenantId("t2")]
    finally:
        store.close()


@pytest.fixture
async def astore(dsn: str, schema: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(dsn, schema=schema)
    yield store
    await store.aclose()


async def test_async_and_sync_share_one_store(astore: PostgresStore) -> None:
    key = _key()
    created = await astore.acompare_and_swap(make_record(key, "at-1"), expected_version=None)
    assert created is not None
    swapped = await asyncio.to_thread(
        astore.compare_and_swap, make_record(key, "at-2"), expected_version=created.version
    )
    assert swapped is not None
    assert swapped.version == 2
    assert await astore.alist_keys(TenantId("acme")) == [key]
    assert await astore.alist_tenants() == [TenantId("acme")]


async def test_async_pool_given_by_the_app(dsn: str, schema: str) -> None:
    pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=1, open=False)
    await pool.open()
    store = PostgresStore(async_pool=pool, schema=schema)
    try:
        await store.aput(make_record(_key(), "at-async"))
        loaded = await store.aget(_key())
        assert loaded is not None
        assert loaded.access_token == Secret("at-async")
        with pytest.raises(ValueError, match="async"):
            store.get(_key())
    finally:
        await store.aclose()
        await pool.close()


async def test_an_app_async_pool_is_checked_after_a_dead_connection(
    named: tuple[str, str], schema: str
) -> None:
    # Every idle connection of the app's pool dies (a restart, pg_terminate_backend): the
    # first operation meets a dead one, has the pool check the rest, and succeeds on a fresh
    # one, as the sync store does (the async one used to retry on the next dead connection).
    dsn, name = named
    pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=3, max_size=3, open=False)
    await pool.open(wait=True)
    store = PostgresStore(async_pool=pool, schema=schema)
    try:
        await store.aput(make_record(_key(), "at-before"))
        assert await asyncio.to_thread(_terminate, name) == 3
        await store.aput(make_record(_key(), "at-after"))  # no StoreUnavailable
        loaded = await store.aget(_key())
        assert loaded is not None and loaded.access_token == Secret("at-after")
    finally:
        await store.aclose()
        await pool.close()


def _lease_eventually(broker: Broker, principal: str) -> Lease:
    """A caller retrying a retryable error (the pool reconnects with a backoff)."""
    for _ in range(40):
        try:
            return broker.lease(tenant="acme", principal=principal, scopes=["read"])
        except StoreUnavailable:
            time.sleep(0.25)
    return broker.lease(tenant="acme", principal=principal, scopes=["read"])


def test_slow_or_down_postgres_is_retryable_and_warm_leases_are_still_served(
    dsn: str, schema: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    store = PostgresStore(
        f"{dsn} host=127.0.0.1 port={proxy.port}", schema=schema, timeout=1, statement_timeout=0.5
    )
    broker = Broker(_DESCRIPTOR, client_id="client", client_secret="secret", store=store)
    try:
        for name in "wxyz":
            key = broker.key(tenant="acme", principal=name, scopes=["read"])
            store.put(
                make_record(
                    key,
                    f"at-{name}",
                    expires_at=time.time() + 3600,
                    scopes=ScopeSet.of(["read"]),  # granted, as a broker-written record says
                )
            )
        warm = broker.lease(tenant="acme", principal="w", scopes=["read"])

        # slow: another session locks the table; reads hit the statement timeout
        with psycopg.connect(POSTGRES_DSN) as blocker:
            blocker.execute(f'LOCK TABLE "{schema}".tokens IN ACCESS EXCLUSIVE MODE')
            assert broker.lease(tenant="acme", principal="w", scopes=["read"]) == warm
            with pytest.raises(StoreUnavailable) as info:
                broker.lease(tenant="acme", principal="x", scopes=["read"])
            assert info.value.retryable
            blocker.rollback()
        assert _lease_eventually(broker, "x").access_token == Secret("at-x")

        # down: every connection dropped, new ones refused
        proxy.cut()
        assert broker.lease(tenant="acme", principal="w", scopes=["read"]) == warm
        with pytest.raises(StoreUnavailable):
            broker.lease(tenant="acme", principal="y", scopes=["read"])
        proxy.restore()
        assert _lease_eventually(broker, "y").access_token == Secret("at-y")
    finally:
        broker.close()
        store.close()
        proxy.close()


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "oauth2_broker_mw.stores.postgres")
    with pytest.raises(ImportError, match=r"pip install 'oauth2-broker-mw\[postgres\]'"):
        importlib.import_module("oauth2_broker_mw.stores.postgres")


def test_a_version_1_schema_gets_the_refresh_index_backfilled(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    store.put(make_record(_key(principal="due"), refresh_token=Secret("rt"), expires_at=100.0))
    store.put(make_record(_key(principal="cc"), grant="client_credentials", expires_at=70.0))
    store.put(make_record(_key(principal="plain"), expires_at=50.0))
    store.close()
    s = f'"{schema}"'
    _sql(f"ALTER TABLE {s}.tokens DROP COLUMN expires_at, DROP COLUMN idle_since")
    _sql(f"DROP TABLE {s}.gates, {s}.calls")  # added by migrations 3 and 4
    _sql(f"DELETE FROM {s}.schema_migrations WHERE version > 1")
    upgraded = PostgresStore(dsn, schema=schema)
    try:
        assert [(d.key.principal, d.at) for d in upgraded.expiring(1000.0)] == [
            ("cc", 70.0),
            ("due", 100.0),
        ]
        assert [d.key.principal for d in upgraded.idle("example", 2e9)] == ["due"]
        assert upgraded.schema_version() == SCHEMA_VERSION
    finally:
        upgraded.close()
