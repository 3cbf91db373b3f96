"""A logout the provider cannot take now is not lost (SECURITY D4, RFC 7009 §2.2.1).

A 503, a 429 or a network error at the revocation endpoint: the grant is forgotten locally at
once (a lease raises ``AuthorizationRequired``), the tokens still to revoke wait in the store
(shared by every process, surviving a restart, encrypted like any record), and
``drain_revocations`` (every ``Refresher`` sweep) delivers them with exponential back-off that
honours ``Retry-After``, until the last attempt drops them with an error log and an event.
Real parts: MockProvider (in process and on a loopback port), SQLite files, Redis, PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import InvalidIdentifier
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw import TokenStore
from oauth2_broker_mw._core.model import REVOCATION_PRINCIPAL
from oauth2_broker_mw._core.model import REVOCATION_TENANT
from oauth2_broker_mw.broker import RevocationDrain
from oauth2_broker_mw.broker import RevocationRetry
from oauth2_broker_mw.events import ConnectionRevoked
from oauth2_broker_mw.events import Event
from oauth2_broker_mw.events import RevocationDropped
from oauth2_broker_mw.events import RevocationQueued
from oauth2_broker_mw.refresher import Refresher
from oauth2_broker_mw.stores.encrypted import EncryptedStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER, SCOPES = "acme", "alice", ["openid"]
KEY = {"k1": b"k" * 32}


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


def make_broker(
    provider: MockProvider, clock: FakeClock, store: TokenStore, **options: Any
) -> Broker:
    return Broker(
        provider.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        clock=clock,
        **options,
    )


class Events:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._seen: list[Event] = []
        broker.subscribe(self._seen.append)

    def of(self, kind: type[Event]) -> list[Any]:
        self._broker.events.flush()
        return [e for e in self._seen if isinstance(e, kind)]


def active(provider: MockProvider, token: Any) -> bool:
    info = provider.token_info(token.get_secret_value())
    assert info is not None
    return bool(info["active"])


def queued(store: TokenStore) -> list[TokenRecord]:
    keys = store.list_keys(REVOCATION_TENANT, REVOCATION_PRINCIPAL)
    return [r for r in (store.get(k) for k in keys) if r is not None]


@pytest.mark.parametrize("status", [503, 429])
def test_a_transient_failure_at_logout_forgets_the_grant_and_a_drain_revokes_it_later(
    provider: MockProvider,
    clock: FakeClock,
    call: Callable[..., Any],
    status: int,
) -> None:
    broker = make_broker(provider, clock, MemoryStore())
    events = Events(broker)
    record = login(broker, provider, scopes=SCOPES)
    call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=status, retry_after=120)

    assert call(broker, "revoke", tenant=TENANT, principal=USER, scopes=SCOPES) is True

    # logged out here: nothing serves the grant, though the provider still honours it
    with pytest.raises(AuthorizationRequired):
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    assert broker.store.get(record.key) is None
    assert active(provider, record.refresh_token) and active(provider, record.access_token)
    [event] = events.of(RevocationQueued)
    assert (event.tenant, event.principal, event.attempts) == (TENANT, USER, 1)
    assert event.retry_at == clock() + 120  # Retry-After, above the first back-off (30 s)
    assert events.of(ConnectionRevoked) == []

    sent = provider.counters["revoke"]
    assert call(broker, "drain_revocations") == RevocationDrain(waiting=1)  # not due: nothing sent
    clock.advance(119)
    assert call(broker, "drain_revocations") == RevocationDrain(waiting=1)
    assert provider.counters["revoke"] == sent
    clock.advance(1)
    assert call(broker, "drain_revocations") == RevocationDrain(delivered=1)

    assert not active(provider, record.refresh_token)
    assert not active(provider, record.access_token)
    assert queued(broker.store) == []
    [revoked] = events.of(ConnectionRevoked)
    assert (revoked.tenant, revoked.principal) == (TENANT, USER)
    with pytest.raises(AuthorizationRequired):
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=SCOPES)
    broker.close()


def test_back_off_doubles_and_the_last_attempt_drops_it_with_an_error_log_and_an_event(
    provider: MockProvider, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    retry = RevocationRetry(initial=10, factor=2, max_delay=25, max_attempts=4)
    broker = make_broker(provider, clock, MemoryStore(), revocation_retry=retry)
    events = Events(broker)
    record = login(broker, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503, times=None)
    caplog.set_level(logging.DEBUG, logger="oauth2_broker_mw")

    broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    start = clock()
    waits = []
    for _ in range(2):  # attempts 2 and 3 fail again: 10 s, then 20 s, then 25 s (the cap)
        [entry] = queued(broker.store)
        assert entry.expires_at is not None
        wait = entry.expires_at - clock()
        waits.append(wait)
        clock.advance(wait - 1)
        assert broker.drain_revocations() == RevocationDrain(waiting=1)
        clock.advance(1)
        assert broker.drain_revocations() == RevocationDrain(retrying=1)
    [entry] = queued(broker.store)
    assert entry.expires_at is not None
    waits.append(entry.expires_at - clock())
    assert waits == [10, 20, 25]
    assert [e.attempts for e in events.of(RevocationQueued)] == [1, 2, 3]

    clock.advance(25)
    assert broker.drain_revocations() == RevocationDrain(dropped=1)  # the 4th attempt
    assert queued(broker.store) == []
    [dropped] = events.of(RevocationDropped)
    assert (dropped.tenant, dropped.principal, dropped.attempts) == (TENANT, USER, 4)
    assert dropped.error == "TransientProviderError"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "dropped after 4 attempts" in errors[0].getMessage()
    assert clock() - start == 55
    for secret in (record.access_token, record.refresh_token):
        assert secret.get_secret_value() not in caplog.text
    provider.faults.clear()
    assert broker.drain_revocations() == RevocationDrain()
    assert active(provider, record.refresh_token)  # given up: valid until it expires
    broker.close()


def test_a_revocation_older_than_max_age_is_dropped(
    provider: MockProvider, clock: FakeClock
) -> None:
    retry = RevocationRetry(initial=3600, max_delay=3600, max_age=7200)
    broker = make_broker(provider, clock, MemoryStore(), revocation_retry=retry)
    login(broker, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503, times=None)
    broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    clock.advance(3600)
    assert broker.drain_revocations() == RevocationDrain(retrying=1)
    clock.advance(3600)
    assert broker.drain_revocations() == RevocationDrain(dropped=1)
    broker.close()


def test_a_queued_revocation_the_descriptor_can_no_longer_send_is_dropped_not_kept(
    provider: MockProvider, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    before = make_broker(provider, clock, store)
    login(before, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503)
    before.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    after = Broker(  # redeployed with a descriptor that has no revocation endpoint any more
        provider.descriptor(
            grants=["authorization_code", "refresh_token"], revocation_endpoint=None
        ),
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=provider.client(),
        clock=clock,
        revocation_retry=RevocationRetry(max_attempts=2),
    )
    clock.advance(30)
    assert after.drain_revocations() == RevocationDrain(dropped=1)
    assert "ConfigurationError" in caplog.text
    assert queued(store) == []
    before.close()
    after.close()


def test_a_network_error_at_logout_is_queued_and_delivered_when_the_provider_is_back(
    clock: FakeClock,
) -> None:
    """The provider on a real loopback port: down (connection refused) at logout, then back."""
    provider = MockProvider(clock=clock)
    with provider.serve() as base:
        port = int(base.rsplit(":", 1)[1])
        broker = Broker(
            provider.descriptor(grants=["authorization_code", "refresh_token"]),
            client_id="test-client",
            client_secret="test-secret",
            store=MemoryStore(),
            clock=clock,
            timeout=2.0,
        )
        events = Events(broker)
        record = login(broker, provider, scopes=SCOPES)
    # the server is gone: the revocation request cannot connect
    assert broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES) is True
    [event] = events.of(RevocationQueued)
    assert event.error == "TransportError"
    with pytest.raises(AuthorizationRequired):
        broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert active(provider, record.refresh_token)
    clock.advance(30)
    with provider.serve(port=port):
        assert broker.drain_revocations() == RevocationDrain(delivered=1)
    assert not active(provider, record.refresh_token)
    broker.close()


def test_two_processes_on_one_sqlite_file_share_the_queue_and_send_each_revocation_once(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.db"
    a = make_broker(provider, clock, SQLiteStore(path))
    b = make_broker(provider, clock, SQLiteStore(path))
    record = login(a, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503)
    assert a.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)

    with pytest.raises(AuthorizationRequired):  # the other process sees the logout too
        b.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert b.drain_revocations() == RevocationDrain(waiting=1)
    clock.advance(30)
    sent = provider.counters["revoke"]
    results: list[RevocationDrain] = []
    barrier = threading.Barrier(2)

    def run(broker: Broker) -> None:
        barrier.wait()
        results.append(broker.drain_revocations())

    threads = [threading.Thread(target=run, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.delivered for r in results) == [0, 1]
    assert provider.counters["revoke"] - sent == 2  # refresh + access token, once each
    assert not active(provider, record.refresh_token)
    a.close()
    b.close()


def test_a_queued_revocation_survives_a_restart(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.db"
    before = make_broker(provider, clock, SQLiteStore(path))
    record = login(before, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503)
    before.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    before.close()
    before.store.close()

    clock.advance(30)
    after = make_broker(provider, clock, SQLiteStore(path))
    assert after.drain_revocations() == RevocationDrain(delivered=1)
    assert not active(provider, record.refresh_token)
    after.close()


def test_queued_tokens_are_encrypted_at_rest(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.db"
    broker = make_broker(provider, clock, EncryptedStore(SQLiteStore(path), KEY, "k1"))
    record = login(broker, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503)
    broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert len(queued(broker.store)) == 1
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (record.access_token, record.refresh_token):
        assert secret.get_secret_value().encode() not in raw
    clock.advance(30)
    assert broker.drain_revocations() == RevocationDrain(delivered=1)
    assert not active(provider, record.refresh_token)
    broker.close()


def test_a_broker_drains_only_the_revocations_of_its_own_client(
    provider: MockProvider, clock: FakeClock
) -> None:
    store = MemoryStore()
    ours = make_broker(provider, clock, store)
    login(ours, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503)
    ours.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    clock.advance(30)
    other = Broker(
        provider.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="another-client",
        client_secret="another-secret",
        store=store,
        http_client=provider.client(),
        clock=clock,
    )
    sent = provider.counters["revoke"]
    assert other.drain_revocations() == RevocationDrain()
    assert provider.counters["revoke"] == sent
    assert ours.drain_revocations() == RevocationDrain(delivered=1)
    ours.close()
    other.close()


def test_the_revocation_queue_tenant_is_reserved(provider: MockProvider, clock: FakeClock) -> None:
    broker = make_broker(provider, clock, MemoryStore())
    with pytest.raises(InvalidIdentifier):
        broker.lease(tenant=str(REVOCATION_TENANT), principal=USER, scopes=SCOPES)
    with pytest.raises(InvalidIdentifier):
        broker.start_authorization(
            tenant=str(REVOCATION_TENANT),
            principal=USER,
            scopes=SCOPES,
            redirect_uri="https://app.example/cb",
        )
    broker.close()


# -- the Refresher, on Redis and PostgreSQL ----------------------------------------------------
@pytest.fixture(params=["redis", "postgres"])
def shared_store(request: pytest.FixtureRequest) -> Iterator[TokenStore]:
    if request.param == "redis":
        from oauth2_broker_mw.stores.redis import RedisStore

        url = require_redis()
        prefix = unique_name("revq") + ":"
        redis_store = RedisStore(url, prefix=prefix)
        yield redis_store
        redis_store.close()
        redis_cleanup(prefix)
    else:
        from oauth2_broker_mw.stores.postgres import PostgresStore

        dsn = require_postgres()
        schema = unique_name("revq")
        pg_store = PostgresStore(dsn, schema=schema)
        # through the encryption wrapper here: queued tokens are sealed like any record
        yield EncryptedStore(pg_store, KEY, "k1")
        pg_store.close()
        postgres_drop_schema(schema)


def test_a_refresher_sweep_delivers_due_revocations_instead_of_refreshing_them(
    provider: MockProvider, clock: FakeClock, shared_store: TokenStore
) -> None:
    a = make_broker(provider, clock, shared_store)
    b = make_broker(provider, clock, shared_store)
    record = login(a, provider, scopes=SCOPES)
    provider.faults.add("revoke", "error", status=503, retry_after=60)
    assert a.revoke(tenant=TENANT, principal=USER, scopes=SCOPES)
    with pytest.raises(AuthorizationRequired):
        b.lease(tenant=TENANT, principal=USER, scopes=SCOPES)

    refresher = Refresher([b], window=3600, clock=clock)
    tokens = provider.counters["token"]
    report = refresher.sweep()
    assert (report.due, report.revocations_pending, report.revocations_delivered) == (0, 1, 0)
    clock.advance(60)
    report = refresher.sweep()
    assert (report.due, report.revocations_pending, report.revocations_delivered) == (0, 0, 1)
    assert report.to_dict()["revocations_delivered"] == 1
    assert provider.counters["token"] == tokens  # never refreshed
    assert not active(provider, record.refresh_token)
    assert not active(provider, record.access_token)
    assert queued(shared_store) == []
    a.close()
    b.close()
