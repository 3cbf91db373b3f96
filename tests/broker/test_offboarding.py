"""Off-boarding a principal (SECURITY J8, GDPR Art. 17): revoke every connection at the
provider (RFC 7009, refresh token first), then delete every record, on every store.

A provider that is down never stops the deletion: the report says which keys it did not take
and the revocation queue retries them. Real parts: MockProvider (in process and on a loopback
port), SQLite files, Redis, PostgreSQL (through the encryption wrapper).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from _fakes import FakeClock
from _fakes import login
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import InvalidIdentifier
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import Registration
from oauth2_broker_mw import Registry
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import TokenStore
from oauth2_broker_mw._core.model import REVOCATION_PRINCIPAL
from oauth2_broker_mw._core.model import REVOCATION_TENANT
from oauth2_broker_mw.broker import ForgetReport
from oauth2_broker_mw.broker import RevocationDrain
from oauth2_broker_mw.stores.encrypted import EncryptedStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER = "acme", "alice"
KEY = {"k1": b"k" * 32}


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        sqlite = SQLiteStore(str(tmp_path / "tokens.db"))
        yield sqlite
        sqlite.close()
    elif request.param == "redis":
        from oauth2_broker_mw.stores.redis import RedisStore

        prefix = unique_name("off") + ":"
        redis_store = RedisStore(require_redis(), prefix=prefix)
        yield redis_store
        redis_store.close()
        redis_cleanup(prefix)
    else:
        from oauth2_broker_mw.stores.postgres import PostgresStore

        schema = unique_name("off")
        pg_store = PostgresStore(require_postgres(), schema=schema)
        yield EncryptedStore(pg_store, KEY, "k1")
        pg_store.close()
        postgres_drop_schema(schema)


def make_broker(provider: MockProvider, clock: FakeClock, store: TokenStore, **kw: Any) -> Broker:
    descriptor = provider.descriptor(grants=["authorization_code", "refresh_token"])
    if "revocation_endpoint" in kw:
        descriptor = descriptor.replace(revocation_endpoint=kw.pop("revocation_endpoint"))
    return Broker(
        descriptor,
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        clock=clock,
        **kw,
    )


def active(provider: MockProvider, token: Any) -> bool:
    info = provider.token_info(token.get_secret_value())
    assert info is not None
    return bool(info["active"])


def revoked_hints(provider: MockProvider) -> list[str]:
    return [r.form.get("token_type_hint", "") for r in provider.requests_to("revoke")]


def test_forget_principal_revokes_every_connection_at_the_provider_then_deletes_it(
    provider: MockProvider, clock: FakeClock, store: TokenStore, call: Callable[..., Any]
) -> None:
    broker = make_broker(provider, clock, store)
    one = login(broker, provider, scopes=["openid"])
    two = login(broker, provider, scopes=["openid", "email"])
    bob = login(broker, provider, principal="bob", scopes=["openid"])
    other_tenant = login(broker, provider, tenant="globex", scopes=["openid"])
    call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid"])  # cached in process

    report = call(broker, "forget_principal", tenant=TENANT, principal=USER)

    assert isinstance(report, ForgetReport)
    assert sorted(report.revoked, key=lambda k: k.id) == sorted(
        [one.key, two.key], key=lambda k: k.id
    )
    assert (report.revocation_failed, report.queued, report.unrevocable) == ((), (), ())
    assert report.deleted == 2 and report.complete
    # at the provider: both grants dead, refresh token first for each (RFC 7009 §2.1)
    assert revoked_hints(provider) == ["refresh_token", "access_token"] * 2
    assert provider.counters["revoked"] == 4
    for record in (one, two):
        assert not active(provider, record.refresh_token)
        assert not active(provider, record.access_token)
    # in the store: alice's rows gone; bob's and the other tenant's untouched and live
    assert store.list_keys(TENANT, USER) == []  # type: ignore[arg-type]
    with pytest.raises(AuthorizationRequired):
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid"])
    for record in (bob, other_tenant):
        assert store.get(record.key) is not None
        assert active(provider, record.refresh_token)
    # the report names keys and counts, never a token
    text = repr(report)
    for record in (one, two):
        assert record.access_token.get_secret_value() not in text
        assert record.refresh_token is not None
        assert record.refresh_token.get_secret_value() not in text
    broker.close()


@pytest.mark.parametrize("status", [503, 429])
def test_a_provider_that_cannot_revoke_now_does_not_stop_the_deletion(
    provider: MockProvider,
    clock: FakeClock,
    store: TokenStore,
    call: Callable[..., Any],
    status: int,
) -> None:
    broker = make_broker(provider, clock, store)
    record = login(broker, provider, scopes=["openid"])
    provider.faults.add("revoke", "error", status=status)

    report = call(broker, "forget_principal", tenant=TENANT, principal=USER)

    assert report.revoked == () and not report.complete
    assert report.revocation_failed == (record.key,) and report.queued == (record.key,)
    assert report.deleted == 1
    assert store.get(record.key) is None
    assert store.list_keys(TENANT, USER) == []  # type: ignore[arg-type]
    assert active(provider, record.refresh_token)  # not revoked yet...
    provider.faults.clear()
    clock.advance(3600)
    assert call(broker, "drain_revocations") == RevocationDrain(delivered=1)
    assert not active(provider, record.refresh_token)  # ...until the queue delivered it
    assert store.list_keys(REVOCATION_TENANT, REVOCATION_PRINCIPAL) == []
    broker.close()


def test_a_provider_that_is_down_does_not_stop_the_deletion(clock: FakeClock) -> None:
    provider = MockProvider(clock=clock)
    store = MemoryStore()
    with provider.serve():
        broker = Broker(
            provider.descriptor(grants=["authorization_code", "refresh_token"]),
            client_id="test-client",
            client_secret="test-secret",
            store=store,
            clock=clock,
            timeout=2.0,
        )
        record = login(broker, provider, scopes=["openid"])
    # the server is gone: connection refused
    report = broker.forget_principal(TENANT, USER)
    assert report.revocation_failed == (record.key,) and report.deleted == 1
    assert store.get(record.key) is None
    broker.close()
    provider.close()


def test_a_provider_without_a_revocation_endpoint_is_reported_and_deleted(
    provider: MockProvider, clock: FakeClock, call: Callable[..., Any]
) -> None:
    store = MemoryStore()
    broker = make_broker(provider, clock, store, revocation_endpoint=None)
    record = login(broker, provider, scopes=["openid"])

    report = call(broker, "forget_principal", tenant=TENANT, principal=USER)

    assert report == ForgetReport(unrevocable=(record.key,), deleted=1)
    assert provider.requests_to("revoke") == []
    assert store.get(record.key) is None
    broker.close()


def test_forget_principal_refuses_the_revocation_queue_tenant(
    provider: MockProvider, clock: FakeClock
) -> None:
    broker = make_broker(provider, clock, MemoryStore())
    with pytest.raises(InvalidIdentifier):
        broker.forget_principal(REVOCATION_TENANT, REVOCATION_PRINCIPAL)
    broker.close()


def test_registry_forget_principal_covers_every_provider_of_the_tenant(
    clock: FakeClock, call: Callable[..., Any]
) -> None:
    a, b = MockProvider(clock=clock), MockProvider(clock=clock)
    store = MemoryStore()
    with a.serve(), b.serve():  # two providers on loopback ports, one registry client pool
        registry = Registry(
            store=store,
            registrations={
                (TENANT, p): Registration(p, m.descriptor(id=p), "test-client", "test-secret")
                for p, m in (("mock-a", a), ("mock-b", b))
            },
            broker_options={"clock": clock},
        )
        ra = login(registry.broker(tenant=TENANT, provider="mock-a"), a, scopes=["openid"])
        rb = login(registry.broker(tenant=TENANT, provider="mock-b"), b, scopes=["openid"])
        kept = login(registry.broker(tenant=TENANT, provider="mock-a"), a, principal="bob")

        report = call(registry, "forget_principal", tenant=TENANT, principal=USER)

        assert sorted(report.revoked, key=lambda k: k.id) == sorted(
            [ra.key, rb.key], key=lambda k: k.id
        )
        assert report.deleted == 2
        assert a.counters["revoked"] == 2 and b.counters["revoked"] == 2
        assert store.list_keys(TENANT, USER) == []  # type: ignore[arg-type]
        assert store.get(kept.key) is not None
        registry.close()
    a.close()
    b.close()


class _InFlight:
    """The requests in flight at once, and the most seen together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


class _Counting(httpx2.BaseTransport):
    def __init__(self, inner: httpx2.BaseTransport, seen: _InFlight) -> None:
        self.inner, self.seen = inner, seen

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        with self.seen:
            return self.inner.handle_request(request)


class _AsyncCounting(httpx2.AsyncBaseTransport):
    def __init__(self, inner: httpx2.AsyncBaseTransport, seen: _InFlight) -> None:
        self.inner, self.seen = inner, seen

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        with self.seen:
            return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_forget_tenant_revokes_with_bounded_concurrency_and_reports_progress(
    provider: MockProvider, clock: FakeClock, mode: str
) -> None:
    """Issue 9 Deliver: a tenant's connections are revoked ``concurrency`` batches at once
    (threads for the sync broker, tasks for the async one), never more, with a progress call
    per batch; every connection is revoked and deleted."""
    seen = _InFlight()
    broker = Broker(
        provider.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="test-client",
        client_secret="test-secret",
        store=MemoryStore(),
        http_client=httpx2.Client(
            transport=_Counting(provider.transport(), seen), base_url=provider.issuer
        ),
        async_http_client=httpx2.AsyncClient(
            transport=_AsyncCounting(provider.async_transport(), seen), base_url=provider.issuer
        ),
        clock=clock,
    )
    for i in range(12):
        login(broker, provider, tenant=TENANT, principal=f"user{i}")
    seen.most = 0
    provider.latency["revoke"] = 0.02  # each revocation takes a while: batches overlap
    progress: list[tuple[int, int]] = []
    options: dict[str, Any] = {
        "concurrency": 3,
        "batch": 2,
        "progress": lambda done, total: progress.append((done, total)),
    }
    if mode == "sync":
        report = broker.forget_tenant(TENANT, **options)
    else:
        report = asyncio.run(broker.aforget_tenant(TENANT, **options))
    assert 2 <= seen.most <= 3  # concurrent, and bounded by concurrency=3
    assert len(report.revoked) == 12 and report.deleted == 12
    assert provider.counters["revoke"] == 24  # refresh and access token of each
    assert broker.store.list_keys(TENANT) == []  # type: ignore[arg-type]
    assert [t for _, t in progress] == [12] * 6  # one call per batch of 2
    assert [d for d, _ in progress] == sorted(d for d, _ in progress) and progress[-1] == (12, 12)
    broker.close()
