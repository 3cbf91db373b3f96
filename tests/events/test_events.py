"""Lifecycle events end to end: one per occurrence, off the hot path, no secret in any.

Against MockProvider in-process (and SQLite for the lock-contention case); the webhook sink
against a real loopback HTTP server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakes import FakeClock

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import TransientProviderError
from oauth2_broker_mw.events import ConnectionRevoked
from oauth2_broker_mw.events import Event
from oauth2_broker_mw.events import EventBus
from oauth2_broker_mw.events import LockContended
from oauth2_broker_mw.events import ReauthorizationRequired
from oauth2_broker_mw.events import RefreshFailed
from oauth2_broker_mw.events import TokenIssued
from oauth2_broker_mw.events import TokenRefreshed
from oauth2_broker_mw.events import WebhookSink
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER = "acme", "alice"
SCOPES = ["openid", "email"]


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


def make_broker(mp: MockProvider, clock: FakeClock, **kwargs: Any) -> Broker:
    options: dict[str, Any] = {
        "client_id": "test-client",
        "client_secret": "test-secret",
        "http_client": mp.client(),
        "async_http_client": mp.async_client(),
        "clock": clock,
        "client_credentials_principals": ["svc"],  # "svc" is a service, not a user
    }
    options.update(kwargs)
    return Broker(mp.descriptor(), **options)


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if type(e) is kind]


def login(broker: Broker, mp: MockProvider) -> Any:
    request = broker.start_authorization(
        tenant=TENANT, principal=USER, scopes=SCOPES, redirect_uri="https://app.example/cb"
    )
    response = mp.client().get(request.url)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))
    return broker.exchange_code(state=query["state"], code=query["code"], iss=query.get("iss"))


def test_cold_key_under_200_tasks_and_16_threads_emits_one_token_refreshed(
    provider: MockProvider, clock: FakeClock
) -> None:
    broker = make_broker(provider, clock)
    seen = Collector()
    broker.subscribe(seen)
    record = login(broker, provider)
    clock.advance(4000)  # the access token expired: every caller below needs a refresh
    start = threading.Barrier(17)

    def worker() -> None:
        start.wait()
        broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()

    async def burst() -> None:
        start.wait()
        await asyncio.gather(
            *(broker.alease(tenant=TENANT, principal=USER, scopes=SCOPES) for _ in range(200))
        )

    asyncio.run(burst())
    for thread in threads:
        thread.join(timeout=30)
    assert broker.events.flush()
    assert provider.counters["token:refresh_token"] == 1
    issued, refreshed = seen.of(TokenIssued), seen.of(TokenRefreshed)
    assert len(issued) == 1 and issued[0].grant == "authorization_code"
    assert len(refreshed) == 1
    event = refreshed[0]
    assert (event.tenant, event.principal, event.provider) == (TENANT, USER, record.key.provider)
    assert event.scopes == record.key.scope_fingerprint
    assert event.version == record.version + 1
    assert event.rotated is True  # MockProvider rotates refresh tokens by default
    assert event.at == clock()


def test_every_event_kind_and_no_secret_in_any(
    provider: MockProvider, clock: FakeClock, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    broker = make_broker(provider, clock, store=store, lock_wait=5.0)
    seen = Collector()
    broker.subscribe(seen)
    record = login(broker, provider)
    # A transient failure while refreshing.
    provider.faults.add("token", "error", status=503, error="temporarily_unavailable")
    with pytest.raises(TransientProviderError):
        broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
    broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
    # Lock contention: another process (a second broker on the same file) holds the lock.
    assert store.acquire_lock(record.key.lock_name, "other-host", 30.0)
    clock.advance(4000)
    release = threading.Timer(0.3, store.release_lock, (record.key.lock_name, "other-host"))
    release.start()
    broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    release.join()
    # The grant dies at the provider: a permanent failure and a re-authorization request.
    provider.revoke_all(subject="user-1")
    with pytest.raises(AuthorizationRequired):
        broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
    # Client credentials, then revocation.
    broker.lease(tenant=TENANT, principal="svc", scopes=["x"])
    assert broker.revoke(tenant=TENANT, principal="svc", scopes=["x"])
    assert broker.events.flush()

    kinds = [type(e).__name__ for e in seen.events]
    for kind in (
        TokenIssued,
        TokenRefreshed,
        RefreshFailed,
        ReauthorizationRequired,
        ConnectionRevoked,
        LockContended,
    ):
        assert kind.__name__ in kinds, kinds
    failures = seen.of(RefreshFailed)
    assert [(f.permanent, f.error) for f in failures] == [
        (False, "TransientProviderError"),
        (True, "InvalidGrant"),
    ]
    assert [e.grant for e in seen.of(TokenIssued)] == ["authorization_code", "client_credentials"]

    secrets = [*provider._tokens, "test-secret"]
    assert len(secrets) > 5
    for event in seen.events:
        texts = (repr(event), str(event), json.dumps(event.to_dict()))
        for text in texts:
            for secret in secrets:
                assert secret not in text, (type(event).__name__, text)


def test_a_raising_or_blocked_handler_never_fails_or_delays_a_lease(
    provider: MockProvider, clock: FakeClock
) -> None:
    broker = make_broker(provider, clock)
    unblock = threading.Event()
    entered = threading.Event()

    def raising(event: Event) -> None:
        raise RuntimeError("handler bug")

    def blocked(event: Event) -> None:
        entered.set()
        unblock.wait(30)

    broker.subscribe(raising)
    broker.subscribe(blocked)
    try:
        broker.lease(tenant=TENANT, principal="svc", scopes=["x"])
        assert entered.wait(10)
        # The handler is still blocked; leases go on regardless.
        for _ in range(5):
            broker.lease(tenant=TENANT, principal="svc", scopes=["x"], force_refresh=True)
        assert not unblock.is_set()
    finally:
        unblock.set()
    assert broker.events.flush()
    assert broker.events.handler_errors == 6


def test_a_full_queue_drops_and_counts(provider: MockProvider, clock: FakeClock) -> None:
    broker = make_broker(provider, clock, event_queue_size=1)
    unblock = threading.Event()
    entered = threading.Event()

    def blocked(event: Event) -> None:
        entered.set()
        unblock.wait(30)

    broker.subscribe(blocked)
    broker.lease(tenant=TENANT, principal="svc", scopes=["x"])
    assert entered.wait(10)  # the dispatcher holds event 1; the queue has room for one more
    for _ in range(4):
        broker.lease(tenant=TENANT, principal="svc", scopes=["x"], force_refresh=True)
    unblock.set()
    assert broker.events.flush()
    assert broker.events.dropped == 3


def test_async_handler_and_unsubscribe(provider: MockProvider, clock: FakeClock) -> None:
    broker = make_broker(provider, clock)
    got: list[Event] = []
    done = threading.Event()

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        got.append(event)
        done.set()

    unsubscribe = broker.subscribe(handler)
    broker.lease(tenant=TENANT, principal="svc", scopes=["x"])
    assert done.wait(10)
    assert [type(e) for e in got] == [TokenIssued]
    unsubscribe()
    broker.lease(tenant=TENANT, principal="svc", scopes=["x"], force_refresh=True)
    assert broker.events.flush()
    assert len(got) == 1


def test_bad_configuration_is_typed() -> None:
    with pytest.raises(ConfigurationError):
        EventBus(maxsize=0)
    with pytest.raises(ConfigurationError):
        EventBus().subscribe("not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        WebhookSink("http://127.0.0.1:1/hook", secret="")


# -- webhook sink -----------------------------------------------------------------------------
class _Hook(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.answers.pop(0) if self.answers else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"answers": [500, 503], "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_webhook_is_signed_retried_and_logged(
    provider: MockProvider, clock: FakeClock, hook: tuple[str, type[_Hook]]
) -> None:
    url, handler = hook
    sink = WebhookSink(url, secret="hook-secret", backoff=0.01)
    broker = make_broker(provider, clock)
    broker.subscribe(sink)
    broker.lease(tenant=TENANT, principal="svc", scopes=["x"])
    assert broker.events.flush()
    sink.close()
    assert [(d.attempt, d.status) for d in sink.log] == [(1, 500), (2, 503), (3, 204)]
    assert sink.log[-1].ok
    headers, body = handler.received[-1]
    expected = hmac.new(
        b"hook-secret", headers["x-broker-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-broker-signature"] == f"sha256={expected}"
    assert headers["x-broker-event"] == "token_issued"
    payload = json.loads(body)
    assert payload["type"] == "token_issued"
    assert payload["tenant"] == TENANT and payload["principal"] == "svc"
    assert payload["id"] == headers["x-broker-delivery"]
    # The same event keeps its id across retries (receivers deduplicate on it).
    assert len({h["x-broker-delivery"] for h, _ in handler.received}) == 1
    for secret in [*provider._tokens, "test-secret", "hook-secret"]:
        assert secret.encode() not in body
    assert "hook-secret" not in repr(sink)


def test_webhook_gives_up_after_retries(clock: FakeClock) -> None:
    sink = WebhookSink("http://127.0.0.1:9/unreachable", secret="s", retries=2, backoff=0.0)
    event = TokenIssued(
        tenant="t", principal="p", provider="x", scopes="0" * 64, at=1.0, grant="client_credentials"
    )
    sink(event)
    sink.close()
    assert [(d.attempt, d.status, d.ok) for d in sink.log] == [
        (1, None, False),
        (2, None, False),
        (3, None, False),
    ]
    assert all(d.error for d in sink.log)


def test_registry_subscribe_sees_every_tenants_events(
    provider: MockProvider, clock: FakeClock
) -> None:
    from oauth2_broker_mw import MemoryStore
    from oauth2_broker_mw import Registration
    from oauth2_broker_mw import Registry

    def registration() -> Registration:
        return Registration(
            provider="mock",
            descriptor=provider.descriptor(),
            client_id="test-client",
            client_secret="test-secret",
        )

    registry = Registry(
        store=MemoryStore(),
        registrations={("acme", "mock"): registration(), ("globex", "mock"): registration()},
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        clock=clock,
        broker_options={"client_credentials_principals": ["svc"]},
    )
    seen = Collector()
    registry.subscribe(seen)  # before any broker exists
    for tenant in ("acme", "globex"):
        registry.broker(tenant=tenant, provider="mock").lease(
            tenant=tenant, principal="svc", scopes=["x"]
        )
    assert registry.events.flush()
    assert sorted((type(e).__name__, e.tenant) for e in seen.events) == [
        ("TokenIssued", "acme"),
        ("TokenIssued", "globex"),
    ]
    registry.close()
