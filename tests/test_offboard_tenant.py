"""Off-boarding a whole tenant (SECURITY J8): ``Registry.offboard_tenant`` revokes every token
of the tenant at MockProvider, deletes every row (in bulk: not one round trip per row) and
every pending login, drops the tenant's own registration, and leaves other tenants untouched.

10,000 connections on real PostgreSQL and Redis; the time it took is printed (``-s``) and
noted in docs/multi-tenant.md.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakes import FakeClock
from _fakes import login
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import Registration
from oauth2_broker_mw import Registry
from oauth2_broker_mw import Secret
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw import TokenStore
from oauth2_broker_mw import UnknownTenant
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw.registry import OffboardReport
from oauth2_broker_mw.testing.mock_provider import MockProvider

SCOPES = ["openid"]


def open_shared(kind: str, tmp_path: Path) -> tuple[TokenStore, Any]:
    if kind == "memory":
        return MemoryStore(), lambda: None
    if kind == "sqlite":
        sqlite = SQLiteStore(str(tmp_path / "tokens.db"))
        return sqlite, sqlite.close
    if kind == "redis":
        from oauth2_broker_mw.stores.redis import RedisStore

        prefix = unique_name("offt") + ":"
        redis_store = RedisStore(require_redis(), prefix=prefix)

        def done_redis() -> None:
            redis_store.close()
            redis_cleanup(prefix)

        return redis_store, done_redis
    from oauth2_broker_mw.stores.postgres import PostgresStore

    schema = unique_name("offt")
    pg_store = PostgresStore(require_postgres(), schema=schema)

    def done_pg() -> None:
        pg_store.close()
        postgres_drop_schema(schema)

    return pg_store, done_pg


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    mp.register_client("globex-app", "globex-secret")  # the tenant's own OAuth app
    yield mp
    mp.close()


def make_registry(store: TokenStore, provider: MockProvider, clock: FakeClock) -> Registry:
    descriptor = provider.descriptor(grants=["authorization_code", "refresh_token"])
    return Registry(
        store=store,
        registrations={
            ("acme", "mock"): Registration("mock", descriptor, "test-client", "test-secret"),
            ("globex", "mock"): Registration("mock", descriptor, "globex-app", "globex-secret"),
        },
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        broker_options={"clock": clock},
    )


def seed(store: TokenStore, provider: MockProvider, tenant: str, client: str, n: int) -> None:
    """``n`` connections of ``tenant``, each with a live token pair at the provider."""
    now = time.time()
    for i in range(n):
        issued = provider.issue_tokens(client, subject=f"user{i}", scopes=SCOPES)
        store.put(
            TokenRecord(
                key=StoreKey.build(tenant, f"user{i}", "mock", SCOPES),
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now,
                expires_at=now + 3600,
                scopes=ScopeSet.of(SCOPES),
                requested_scopes=ScopeSet.of(SCOPES),
            )
        )


def live(provider: MockProvider, client: str) -> int:
    return sum(1 for t in provider.live_tokens() if t["client_id"] == client)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis", "postgres"])
def test_offboard_tenant_revokes_and_deletes_everything_of_the_tenant_only(
    provider: MockProvider, clock: FakeClock, tmp_path: Path, kind: str
) -> None:
    store, done = open_shared(kind, tmp_path)
    registry = make_registry(store, provider, clock)
    globex = registry.broker(tenant="globex", provider="mock")
    acme = registry.broker(tenant="acme", provider="mock")
    login(globex, provider, tenant="globex", principal="gina")
    kept = login(acme, provider, tenant="acme", principal="alice")
    # a login in flight for globex, and one for acme
    globex.start_authorization(
        tenant="globex", principal=None, redirect_uri="https://app.example/cb"
    )
    started = acme.start_authorization(
        tenant="acme", principal=None, scopes=SCOPES, redirect_uri="https://app.example/cb"
    )
    seed(store, provider, "globex", "globex-app", 20)
    assert live(provider, "globex-app") == 42

    seen: list[tuple[int, int]] = []
    report = registry.offboard_tenant("globex", progress=lambda d, t: seen.append((d, t)))

    assert isinstance(report, OffboardReport)
    assert len(report.tokens.revoked) == 21 and report.tokens.deleted == 21
    assert report.tokens.revocation_failed == ()
    assert (report.pending_deleted, report.registrations_removed) == (1, 1)
    assert seen[-1] == (21, 21)
    assert live(provider, "globex-app") == 0  # every globex token revoked at the provider
    assert provider.counters["revoked"] == 42
    assert store.list_keys("globex") == []  # type: ignore[arg-type]
    # the tenant is gone from the registry: no login, no lease, no broker
    with pytest.raises(UnknownTenant):
        registry.broker(tenant="globex", provider="mock")
    # acme untouched: its row, its live tokens, its pending login
    assert store.get(kept.key) is not None
    assert live(provider, "test-client") == 2
    acme.exchange_code(state=started.state, code=_code(provider, started.url))
    registry.close()
    done()


def _code(provider: MockProvider, url: str) -> str:
    import urllib.parse

    location = provider.client().get(url).headers["location"]
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_offboard_tenant_with_10000_connections(
    provider: MockProvider, clock: FakeClock, tmp_path: Path, kind: str
) -> None:
    store, done = open_shared(kind, tmp_path)
    registry = make_registry(store, provider, clock)
    n = 10_000
    seed(store, provider, "globex", "globex-app", n)
    seed(store, provider, "acme", "test-client", 50)
    assert live(provider, "globex-app") == 2 * n

    report = asyncio.run(registry.aoffboard_tenant("globex", concurrency=8))

    assert len(report.tokens.revoked) == n and report.tokens.deleted == n
    assert provider.counters["revoked"] == 2 * n
    assert live(provider, "globex-app") == 0
    assert store.list_keys("globex") == []  # type: ignore[arg-type]
    assert len(store.list_keys("acme")) == 50  # type: ignore[arg-type]
    assert live(provider, "test-client") == 100
    # bulk deletion: one round trip per batch, not per row
    started = time.perf_counter()
    seed(store, provider, "initech", "test-client", 2000)
    keys = store.list_keys("initech")  # type: ignore[arg-type]
    seeded = time.perf_counter()
    assert store.delete_keys(keys) == 2000  # type: ignore[attr-defined]
    bulk = time.perf_counter() - seeded
    print(
        f"\n{kind}: offboard_tenant of {n} connections (revoke 2 tokens each at MockProvider, "
        f"delete) in {report.seconds:.1f} s; bulk delete of 2,000 rows in {bulk * 1000:.0f} ms "
        f"(seeding them one put each: {(seeded - started):.1f} s)"
    )
    registry.close()
    done()


def test_offboarding_logs_and_reports_name_no_other_tenant(
    provider: MockProvider, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """SECURITY J7: off-boarding globex while its provider refuses every revocation logs the
    failures, and neither the logs nor the report carry acme's ids."""
    store = MemoryStore()
    registry = make_registry(store, provider, clock)
    login(registry.broker(tenant="acme", provider="mock"), provider, tenant="acme")
    login(registry.broker(tenant="globex", provider="mock"), provider, tenant="globex")
    provider.faults.add("revoke", "error", status=503)
    with caplog.at_level(logging.DEBUG, logger="oauth2_broker_mw"):
        report = registry.offboard_tenant("globex")
    assert len(report.tokens.revocation_failed) == 1 and report.tokens.deleted == 1
    assert report.tokens.queued == ()  # the tenant's registration is going away: not queued
    assert "revocation at provider=mock failed" in caplog.text
    assert "acme" not in caplog.text and "alice" not in caplog.text
    assert "acme" not in repr(report)
    registry.close()


def test_the_multi_tenant_example_runs() -> None:
    example = Path(__file__).parent.parent / "examples" / "multi_tenant_app.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "forget alice: revoked 2, deleted 2" in done.stdout
    assert "globex.example.test: {'tenant': 'globex', 'principal': 'gus'}" in done.stdout
    assert "offboard globex: revoked 2, deleted 2, registrations removed 1" in done.stdout
    assert "acme still has: ['bob']" in done.stdout


def test_offboarding_a_tenant_empties_its_queued_revocations(
    provider: MockProvider, clock: FakeClock
) -> None:
    """A logout the provider could not take left the tenant's tokens in the revocation queue:
    off-boarding sends each one once more and removes it whatever the answer, so nothing of
    the tenant stays in the store; acme's queued revocation stays queued."""
    from oauth2_broker_mw._core.model import REVOCATION_PRINCIPAL
    from oauth2_broker_mw._core.model import REVOCATION_TENANT

    store = MemoryStore()
    registry = make_registry(store, provider, clock)
    globex = registry.broker(tenant="globex", provider="mock")
    acme = registry.broker(tenant="acme", provider="mock")
    login(globex, provider, tenant="globex", principal="gina")
    login(globex, provider, tenant="globex", principal="gus")
    login(acme, provider, tenant="acme", principal="alice")
    provider.faults.add("revoke", "error", status=503, times=3)
    for broker, tenant, user in ((globex, "globex", "gina"), (globex, "globex", "gus")):
        assert broker.revoke(tenant=tenant, principal=user, scopes=SCOPES)
    acme.revoke(tenant="acme", principal="alice", scopes=SCOPES)
    queue = lambda: store.list_keys(REVOCATION_TENANT, REVOCATION_PRINCIPAL)  # noqa: E731
    assert len(queue()) == 3
    provider.faults.add("revoke", "error", status=503, times=1)  # one fails again: dropped
    report = registry.offboard_tenant("globex")
    assert len(queue()) == 1  # acme's, untouched
    assert (report.revocations_delivered, report.revocations_dropped) == (1, 1)
    assert live(provider, "globex-app") == 2  # gina's pair stays valid until it expires
    registry.close()


def test_offboard_and_aoffboard_are_the_short_names_of_offboard_tenant(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    """``Registry.offboard(tenant)`` (the name the docs and issue 9 use) and its async twin
    off-board exactly like ``offboard_tenant``: revoked, deleted, and refused from then on."""
    store, done = open_shared("sqlite", tmp_path)
    registry = make_registry(store, provider, clock)
    seed(store, provider, "globex", "globex-app", 3)
    seed(store, provider, "acme", "test-client", 2)

    sync_report = registry.offboard("globex")
    async_report = asyncio.run(registry.aoffboard("acme"))

    assert (sync_report.tenant, async_report.tenant) == ("globex", "acme")
    assert (sync_report.tokens.deleted, async_report.tokens.deleted) == (3, 2)
    assert live(provider, "globex-app") == 0 and live(provider, "test-client") == 0
    for tenant in ("globex", "acme"):
        assert store.list_keys(tenant) == []  # type: ignore[arg-type]
        with pytest.raises(UnknownTenant):
            registry.broker(tenant=tenant, provider="mock")
    registry.close()
    done()
