"""Refresher: what is due gets refreshed once, fenced by version; idle refresh tokens too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.ratelimit import Backoff
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.refresher import Refresher
from oauth2_broker_mw.refresher import SweepReport
from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore
from oauth2_broker_mw.stores.base import TokenStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

SCOPES = ("read",)
DAY = 86_400.0


def broker_for(mp: MockProvider, store: TokenStore, **descriptor: object) -> Broker:
    return Broker(
        mp.descriptor(**descriptor),
        client_id=mp.default_client.client_id,
        client_secret=mp.default_client.client_secret,
        store=store,
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )


def seed(
    mp: MockProvider, broker: Broker, principal: str, *, expires_in: float, issued_ago: float = 0
) -> TokenRecord:
    issued = mp.issue_tokens(subject=principal, scopes=SCOPES)
    now = time.time()
    return broker.store.put(
        TokenRecord(
            key=broker.key(tenant="acme", principal=principal, scopes=SCOPES),
            access_token=Secret(issued["access_token"]),
            refresh_token=Secret(issued["refresh_token"]),
            issued_at=now - issued_ago,
            expires_at=now + expires_in,
            scopes=ScopeSet.of(SCOPES),
            requested_scopes=ScopeSet.of(SCOPES),
        )
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TokenStore:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "t.db")


def test_a_sweep_refreshes_what_expires_within_the_window_and_nothing_else(
    store: TokenStore,
) -> None:
    mp = MockProvider(access_ttl=3600, rotation=True, reuse_detection=True)
    broker = broker_for(mp, store)
    soon = [seed(mp, broker, f"soon{i}", expires_in=60 + i) for i in range(5)]
    later = seed(mp, broker, "later", expires_in=3 * 3600)
    refresher = Refresher([broker], window=300, concurrency=3)
    report = refresher.sweep()
    assert (report.due, report.refreshed, report.failed) == (5, 5, 0)
    assert mp.counters["token:refresh_token"] == 5
    for before in soon:
        after = store.get(before.key)
        assert after is not None and after.version == before.version + 1
        assert after.expires_at is not None and after.expires_at > time.time() + 3000
    untouched = store.get(later.key)
    assert untouched is not None and untouched.version == later.version
    # a second sweep finds nothing: the window moved past every refreshed record
    assert refresher.sweep().due == 0
    assert mp.counters["token:refresh_token"] == 5
    assert mp.counters["refresh_reuse"] == 0


def test_a_record_another_refresher_renewed_is_not_refreshed_again(store: TokenStore) -> None:
    """The index answer is stale by the time we act on it: the version fences the refresh."""
    mp = MockProvider(access_ttl=3600, rotation=True, reuse_detection=True)
    broker = broker_for(mp, store)
    record = seed(mp, broker, "alice", expires_in=30)
    stale_answer = store.expiring(time.time() + 300)  # type: ignore[attr-defined]
    assert [d.version for d in stale_answer] == [record.version]
    other_host = broker_for(mp, store)
    other_host.refresh_key(record.key)  # another refresher got there first
    assert mp.counters["token:refresh_token"] == 1
    again = broker.refresh_key(record.key, if_version=stale_answer[0].version)
    assert again.version == record.version + 1
    assert mp.counters["token:refresh_token"] == 1  # no second request
    assert mp.counters["refresh_reuse"] == 0


def test_idle_refresh_tokens_are_refreshed_before_the_providers_idle_limit(
    store: TokenStore,
) -> None:
    mp = MockProvider(access_ttl=3600, rotation=True)
    broker = broker_for(mp, store, refresh_idle_limit=60 * DAY)
    near = seed(mp, broker, "near", expires_in=3000, issued_ago=55 * DAY)
    fresh = seed(mp, broker, "fresh", expires_in=3000, issued_ago=10 * DAY)
    report = Refresher([broker], window=60, idle_margin=7 * DAY).sweep()
    assert (report.due, report.refreshed) == (1, 1)
    near_after, fresh_after = store.get(near.key), store.get(fresh.key)
    assert near_after is not None and near_after.issued_at > time.time() - 60
    assert fresh_after is not None and fresh_after.version == fresh.version
    # without an idle limit on the descriptor, idleness alone is no reason to refresh
    plain = broker_for(mp, MemoryStore())
    seed(mp, plain, "old", expires_in=3000, issued_ago=170 * DAY)
    assert Refresher([plain], window=60).sweep().due == 0


def test_a_dead_grant_is_reported_not_retried_forever(store: TokenStore) -> None:
    mp = MockProvider(access_ttl=3600)
    broker = broker_for(mp, store)
    record = seed(mp, broker, "gone", expires_in=10)
    mp.revoke_all(subject="gone")
    report = Refresher([broker], window=300).sweep()
    assert (report.due, report.reauthorization_required) == (1, 1)
    tomb = store.get(record.key)
    assert tomb is not None and tomb.revoked_at is not None
    assert Refresher([broker], window=300).sweep().due == 0  # out of the index


def test_records_of_providers_without_a_broker_are_counted_and_left_alone() -> None:
    mp = MockProvider(access_ttl=3600)
    store = MemoryStore()
    broker = broker_for(mp, store)
    seed(mp, broker, "ours", expires_in=10)
    foreign = StoreKey.build("acme", "bob", "elsewhere", SCOPES)
    store.put(
        TokenRecord(key=foreign, access_token=Secret("x"), refresh_token=Secret("y"), expires_at=1)
    )
    report = Refresher([broker], window=300).sweep()
    assert (report.due, report.refreshed, report.unknown_provider) == (2, 1, 1)


def test_run_in_a_thread_and_stop(store: TokenStore) -> None:
    mp = MockProvider(access_ttl=3600)
    broker = broker_for(mp, store)
    seed(mp, broker, "alice", expires_in=10)
    reports = []
    refresher = Refresher([broker], window=300, interval=0.05, on_sweep=reports.append)
    refresher.start()
    deadline = time.monotonic() + 20
    while len(reports) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    refresher.stop()
    assert len(reports) >= 3
    assert sum(r.refreshed for r in reports) == 1
    assert mp.counters["token:refresh_token"] == 1


async def test_run_as_an_asyncio_task() -> None:
    mp = MockProvider(access_ttl=3600)
    store = MemoryStore()
    broker = broker_for(mp, store)
    seed(mp, broker, "alice", expires_in=10)
    task = asyncio.create_task(Refresher([broker], window=300, interval=0.05).run(sweeps=2))
    await asyncio.wait_for(task, 20)
    assert mp.counters["token:refresh_token"] == 1


def test_configuration_errors_are_typed_and_name_the_problem() -> None:
    mp = MockProvider()
    broker = broker_for(mp, MemoryStore())
    with pytest.raises(ConfigurationError, match="at least one Broker"):
        Refresher([])
    with pytest.raises(ConfigurationError, match="two brokers for provider"):
        Refresher([broker, broker_for(mp, MemoryStore())])
    with pytest.raises(ConfigurationError, match="concurrency must be a positive integer"):
        Refresher([broker], concurrency=0)
    with pytest.raises(ConfigurationError, match="window must be >= 0"):
        Refresher([broker], window=-1)

    class NoIndex:
        pass

    with pytest.raises(ConfigurationError, match="NoIndex has no refresh index"):
        Refresher([broker], store=NoIndex())  # type: ignore[arg-type]


def test_a_sweep_under_the_providers_backoff_tries_no_more_than_it_must(
    store: TokenStore,
) -> None:
    mp = MockProvider(access_ttl=3600, rotation=True, reuse_detection=True)
    broker = broker_for(mp, store)
    for i in range(40):
        seed(mp, broker, f"due{i}", expires_in=60 + i)
    limited: list[object] = []
    broker.subscribe(lambda event: limited.append(event) if event.kind == "rate_limited" else None)
    gate = broker.store
    assert hasattr(gate, "set_backoff")
    gate.set_backoff(  # another host's 429
        Backoff.gate_name("mock", mp.issuer), time.time() + 600, now=time.time()
    )
    refresher = Refresher([broker], window=300, concurrency=4)
    report = refresher.sweep()
    assert (report.due, report.refreshed, report.failed) == (40, 0, 0)
    assert report.rate_limited == 40  # left for a later sweep, not failures
    assert mp.counters["token"] == 0
    broker.events.flush()
    assert len(limited) <= 4  # only the attempts already under way when the gate was found


def test_one_refresher_over_a_registry_refreshes_each_tenant_with_its_own_app() -> None:
    """A Registry's brokers serve one tenant each: a Refresher takes one per tenant and
    provider, refreshes each tenant's records with that tenant's own OAuth app, and leaves the
    records of tenants it has no broker for alone (counted as ``unknown_provider``)."""
    from oauth2_broker_mw import Registration
    from oauth2_broker_mw import Registry

    mp = MockProvider(access_ttl=3600)
    for app in ("acme-app", "globex-app", "initech-app"):
        mp.register_client(app, app + "-secret")
    descriptor = mp.descriptor(grants=["authorization_code", "refresh_token"])
    store = MemoryStore()
    registry = Registry(
        store=store,
        registrations={
            (t, "mock"): Registration("mock", descriptor, f"{t}-app", f"{t}-app-secret")
            for t in ("acme", "globex", "initech")
        },
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    now = time.time()
    for tenant in ("acme", "globex", "initech"):
        issued = mp.issue_tokens(f"{tenant}-app", subject="u", scopes=SCOPES)
        store.put(
            TokenRecord(
                key=StoreKey.build(tenant, "u", "mock", SCOPES),
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now,
                expires_at=now + 60,
            )
        )
    brokers = [registry.broker(tenant=t, provider="mock") for t in ("acme", "globex")]
    assert [b.tenant for b in brokers] == ["acme", "globex"]
    with pytest.raises(ConfigurationError, match="two brokers for tenant 'acme' provider"):
        Refresher([brokers[0], brokers[0]])
    report = Refresher(brokers, window=300).sweep()
    assert (report.due, report.refreshed, report.failed, report.unknown_provider) == (3, 2, 0, 1)
    refreshed_by = sorted(
        str(r.client_id)
        for r in mp.requests
        if r.endpoint == "token" and r.grant_type == "refresh_token"
    )
    assert refreshed_by == ["acme-app", "globex-app"]
    initech = store.get(StoreKey.build("initech", "u", "mock", SCOPES))
    assert initech is not None and initech.version == 1
    registry.close()


def test_one_tenants_spent_budget_does_not_hold_back_another_tenants_refreshes() -> None:
    from oauth2_broker_mw._core.ratelimit import TokenBucket

    mp = MockProvider(access_ttl=3600)
    store = MemoryStore()
    broker = Broker(
        mp.descriptor(),
        client_id=mp.default_client.client_id,
        client_secret=mp.default_client.client_secret,
        store=store,
        http_client=mp.client(),
        async_http_client=mp.async_client(),
        rate_limit=TokenBucket(rate=1, per=3600.0),  # one token request an hour per tenant
    )
    now = time.time()
    for tenant, principal, expires_in in (
        ("acme", "a1", 10),
        ("acme", "a2", 20),
        ("globex", "g", 30),
    ):
        issued = mp.issue_tokens(subject=principal, scopes=SCOPES)
        store.put(
            TokenRecord(
                key=StoreKey.build(tenant, principal, "mock", SCOPES),
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now,
                expires_at=now + expires_in,
            )
        )
    report = Refresher([broker], window=300, concurrency=1).sweep()
    # acme's second record waits for acme's budget; globex's is refreshed all the same
    assert (report.due, report.refreshed, report.rate_limited) == (3, 2, 1)
    globex = store.get(StoreKey.build("globex", "g", "mock", SCOPES))
    assert globex is not None and globex.version == 2


def test_sweep_report_to_dict_names_every_field_in_order() -> None:
    errors = {"RateLimited": 2}
    report = SweepReport(1, 2, 3, 4, 5, errors, 6, 7, 8, 9, 10)
    out = report.to_dict()
    expected = {
        "due": 1,
        "refreshed": 2,
        "reauthorization_required": 3,
        "failed": 4,
        "unknown_provider": 5,
        "errors": {"RateLimited": 2},
        "rate_limited": 6,
        "unsaved": 7,
        "revocations_delivered": 8,
        "revocations_pending": 9,
        "revocations_dropped": 10,
    }
    assert out == expected
    assert list(out) == list(expected)  # in field order
    assert type(out["errors"]) is dict and out["errors"] is not errors
