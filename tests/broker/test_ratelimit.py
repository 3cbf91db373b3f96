"""The provider gate in one process: shared back-off after 429/503, and the rate-limit policy.

The cross-process proofs (4 OS processes on SQLite, PostgreSQL and Redis) are in
``tests/test_ratelimit_processes.py``; here a FakeClock moves time, so nothing is timed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from _fakes import FakeClock

from oauth2_broker_mw import Broker
from oauth2_broker_mw import RateLimited
from oauth2_broker_mw import TransientProviderError
from oauth2_broker_mw import TransportError
from oauth2_broker_mw._core.effects import BackoffUntil
from oauth2_broker_mw._core.effects import CountCalls
from oauth2_broker_mw._core.effects import Emit
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.effects import SetBackoff
from oauth2_broker_mw._core.effects import Sleep
from oauth2_broker_mw._core.effects import TakeToken
from oauth2_broker_mw._core.errors import StoreUnavailable
from oauth2_broker_mw._core.events import Event
from oauth2_broker_mw._core.events import RateLimited as RateLimitedEvent
from oauth2_broker_mw._core.ratelimit import after_token_response
from oauth2_broker_mw._core.ratelimit import before_token_request
from oauth2_broker_mw.ratelimit import Allow
from oauth2_broker_mw.ratelimit import Backoff
from oauth2_broker_mw.ratelimit import Delay
from oauth2_broker_mw.ratelimit import Deny
from oauth2_broker_mw.ratelimit import RateLimitCall
from oauth2_broker_mw.ratelimit import TokenBucket
from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

T0 = 1_900_000_000.0


@pytest.fixture
def provider() -> Iterator[MockProvider]:
    provider = MockProvider(access_ttl=3600)
    yield provider
    provider.close()


def _broker(provider: MockProvider, clock: FakeClock, **kwargs: Any) -> Broker:
    client = provider.default_client
    return Broker(
        provider.descriptor(),
        client_id=client.client_id,
        client_secret=client.client_secret,
        store=kwargs.pop("store", None) or MemoryStore(clock=clock),
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        clock=clock,
        client_credentials_principals=lambda tenant, principal: True,
        **kwargs,
    )


def _token_calls(provider: MockProvider) -> int:
    return provider.counters["token"]


def test_a_429_with_retry_after_stops_every_caller_until_the_time_has_passed(
    provider: MockProvider,
) -> None:
    clock = FakeClock(T0)
    broker = _broker(provider, clock)
    events: list[Event] = []
    broker.subscribe(events.append)
    provider.faults.add("token", status=429, error="slow_down", retry_after=30, times=None)
    with pytest.raises(TransientProviderError) as first:
        broker.lease(tenant="acme", principal="svc-0", scopes=["read"])
    assert not isinstance(first.value, RateLimited)
    assert first.value.status_code == 429 and first.value.retry_after == 30
    assert _token_calls(provider) == 1

    clock.advance(10)
    for i in range(5):  # other keys, sync and async: the back-off is per provider
        with pytest.raises(RateLimited) as waited:
            if i % 2:
                asyncio.run(broker.alease(tenant="acme", principal=f"svc-{i}", scopes=["read"]))
            else:
                broker.lease(tenant="other", principal=f"svc-{i}", scopes=["read"])
        assert waited.value.retry_after == pytest.approx(20.0)
        assert waited.value.reason == "backoff" and waited.value.retryable
        assert "svc" not in str(waited.value) and "retry after 20s" in str(waited.value)
    assert _token_calls(provider) == 1  # the measured failure: 5 more requests went out

    provider.faults.clear()
    clock.advance(20)  # exactly the Retry-After has passed
    assert broker.lease(tenant="acme", principal="svc-0", scopes=["read"]).access_token
    assert _token_calls(provider) == 2
    broker.events.flush()
    limited = [e for e in events if isinstance(e, RateLimitedEvent)]
    assert len(limited) == 5 and {e.grant for e in limited} == {"client_credentials"}
    broker.close()


def test_a_503_with_retry_after_closes_the_gate_and_one_without_does_not(
    provider: MockProvider,
) -> None:
    clock = FakeClock(T0)
    broker = _broker(provider, clock)
    provider.faults.add("token", status=503, error="temporarily_unavailable")
    with pytest.raises(TransientProviderError):
        broker.lease(tenant="acme", principal="svc-a", scopes=["read"])
    assert broker.lease(tenant="acme", principal="svc-a", scopes=["read"])  # no back-off
    provider.faults.add("token", status=503, error="temporarily_unavailable", retry_after=5)
    with pytest.raises(TransientProviderError):
        broker.lease(tenant="acme", principal="svc-b", scopes=["read"])
    with pytest.raises(RateLimited):
        broker.lease(tenant="acme", principal="svc-b", scopes=["read"])
    assert _token_calls(provider) == 3
    broker.close()


def test_a_hostile_retry_after_is_capped_by_backoff_maximum(provider: MockProvider) -> None:
    clock = FakeClock(T0)
    broker = _broker(provider, clock, backoff=Backoff(maximum=60.0))
    provider.faults.add("token", status=429, error="slow_down", retry_after="9" * 5000)
    with pytest.raises(TransientProviderError):
        broker.lease(tenant="acme", principal="svc", scopes=["read"])
    with pytest.raises(RateLimited) as waited:
        broker.lease(tenant="acme", principal="svc", scopes=["read"])
    assert waited.value.retry_after == pytest.approx(60.0)
    clock.advance(60)
    assert broker.lease(tenant="acme", principal="svc", scopes=["read"])
    broker.close()


def test_backoff_disabled_sends_every_request(provider: MockProvider) -> None:
    broker = _broker(provider, FakeClock(T0), backoff=Backoff(enabled=False))
    provider.faults.add("token", status=429, error="slow_down", retry_after=30, times=3)
    for _ in range(3):
        with pytest.raises(TransientProviderError) as excinfo:
            broker.lease(tenant="acme", principal="svc", scopes=["read"])
        assert not isinstance(excinfo.value, RateLimited)
    assert _token_calls(provider) == 3
    broker.close()


def test_a_token_bucket_budget_per_tenant_refuses_the_rest(provider: MockProvider) -> None:
    clock = FakeClock(T0)
    broker = _broker(provider, clock, rate_limit=TokenBucket(3, per=60.0))
    events: list[Event] = []
    broker.subscribe(events.append)
    for i in range(3):
        broker.lease(tenant="acme", principal=f"svc-{i}", scopes=["read"])
    with pytest.raises(RateLimited) as refused:
        broker.lease(tenant="acme", principal="svc-3", scopes=["read"])
    assert refused.value.reason == "policy"
    assert refused.value.retry_after == pytest.approx(20.0)  # one call per 20 s comes back
    assert broker.lease(tenant="globex", principal="svc-0", scopes=["read"])  # its own budget
    assert broker.lease(tenant="acme", principal="svc-0", scopes=["read"])  # cached: no call
    assert _token_calls(provider) == 4
    clock.advance(20)
    assert broker.lease(tenant="acme", principal="svc-3", scopes=["read"])
    assert _token_calls(provider) == 5
    broker.events.flush()
    limited = [e for e in events if isinstance(e, RateLimitedEvent)]
    assert [(e.tenant, e.principal) for e in limited] == [("acme", "svc-3")]
    broker.close()


def test_a_store_without_a_gate_gets_the_in_process_one(provider: MockProvider) -> None:
    class PlainStore:
        """A custom store with no provider gate methods."""

        def __init__(self) -> None:
            self._inner = MemoryStore()

        def __getattr__(self, name: str) -> Any:
            if name in {"backoff_until", "set_backoff", "take_token"} or name.startswith(
                ("abackoff", "aset_backoff", "atake_token")
            ):
                raise AttributeError(name)
            return getattr(self._inner, name)

    clock = FakeClock(T0)
    broker = _broker(provider, clock, store=PlainStore(), rate_limit=TokenBucket(1, per=60.0))
    broker.lease(tenant="acme", principal="svc-0", scopes=["read"])
    with pytest.raises(RateLimited):
        broker.lease(tenant="acme", principal="svc-1", scopes=["read"])
    broker.close()


# -- the gate flow itself: Delay sleeps, then re-reads the back-off ------------------------------
def _drive(flow: Any, answers: dict[type, Any]) -> list[Any]:
    """Run ``flow`` answering each effect from ``answers`` (by type); the effects it yielded.
    An exception as the answer is thrown into the flow, as a driver does when the store fails."""
    seen: list[Any] = []
    result: Any = None
    try:
        effect = next(flow)
        while True:
            seen.append(effect)
            answer = answers[type(effect)]
            if isinstance(answer, BaseException):
                effect = flow.throw(answer)
                continue
            result = answer(effect) if callable(answer) else answer
            effect = flow.send(result)
    except StopIteration:
        return seen


def _gate(policy: Any, grant: str = "refresh_token") -> Any:
    return before_token_request(
        Backoff(),
        policy,
        tenant="acme",
        principal="svc",
        provider="example",
        grant=grant,
        now=T0,
    )


def test_a_delay_decision_sleeps_then_checks_the_backoff_again() -> None:
    flow = _gate(TokenBucket(1, per=10.0, max_delay=15.0))
    effects = _drive(flow, {BackoffUntil: 0.0, TakeToken: (True, 10.0), Sleep: T0 + 10, Emit: None})
    kinds = [type(e) for e in effects]
    assert kinds == [BackoffUntil, TakeToken, Sleep, BackoffUntil]  # the bucket counts nothing else
    assert effects[2] == Sleep(10.0)
    take = effects[1]
    assert take.interval == 10.0 and take.burst == 1 and take.max_wait == 15.0


def test_a_backoff_recorded_during_the_delay_refuses_the_call() -> None:
    flow = _gate(TokenBucket(1, per=10.0, max_delay=15.0))
    reads = iter([0.0, T0 + 40])
    with pytest.raises(RateLimited) as excinfo:
        _drive(
            flow,
            {
                BackoffUntil: lambda _: next(reads),
                TakeToken: (True, 10.0),
                Sleep: T0 + 10,
                Emit: None,
            },
        )
    assert excinfo.value.retry_after == pytest.approx(30.0)


def test_a_custom_policy_decides_with_the_call_it_is_given() -> None:
    seen: list[RateLimitCall] = []

    class NoCodeExchanges:
        def check(self, call: RateLimitCall) -> Any:
            seen.append(call)
            if call.grant == "authorization_code":
                return Deny(retry_after=60.0)
            return Allow()
            yield  # a generator, like every flow

    for grant, refused in (("refresh_token", False), ("authorization_code", True)):
        flow = _gate(NoCodeExchanges(), grant)
        answers = {BackoffUntil: 0.0, Emit: None}
        if refused:
            with pytest.raises(RateLimited):
                _drive(flow, answers)
        else:
            _drive(flow, answers)
    assert [c.grant for c in seen] == ["refresh_token", "authorization_code"]
    assert [c.recent for c in seen] == [None, None]  # no recent_window: nothing counted
    assert Delay(1.0) != Allow()


def test_a_policy_sees_the_recent_calls_of_every_broker_on_the_store(
    provider: MockProvider, tmp_path: Any
) -> None:
    """``RateLimitCall.recent`` is counted in the store: two brokers (as two processes would)
    on one SQLite file see one count, per tenant, and across tenants in ``recent_provider``."""
    seen: list[tuple[str, int, int]] = []

    class AtMostThreePerMinute:
        recent_window = 60.0

        def check(self, call: RateLimitCall) -> Any:
            seen.append((call.tenant, call.recent, call.recent_provider))
            assert call.recent is not None
            if call.recent >= 3:
                return Deny(retry_after=60.0)
            return Allow()
            yield  # a generator, like every flow

    clock = FakeClock(T0)
    path = tmp_path / "tokens.db"
    brokers = [
        _broker(provider, clock, store=SQLiteStore(path), rate_limit=AtMostThreePerMinute())
        for _ in range(2)
    ]
    for i in range(3):
        brokers[i % 2].lease(tenant="acme", principal=f"svc-{i}", scopes=["read"])
    with pytest.raises(RateLimited):
        brokers[1].lease(tenant="acme", principal="svc-3", scopes=["read"])
    brokers[0].lease(tenant="globex", principal="svc-0", scopes=["read"])  # its own count
    assert seen == [
        ("acme", 0, 0),
        ("acme", 1, 1),
        ("acme", 2, 2),
        ("acme", 3, 3),
        ("globex", 0, 4),
    ]
    assert _token_calls(provider) == 4
    clock.advance(120.0)  # two windows on: nothing recent
    brokers[1].lease(tenant="acme", principal="svc-3", scopes=["read"])
    assert seen[-1] == ("acme", 0, 0)
    for broker in brokers:
        broker.close()


def test_a_store_that_fails_every_gate_operation_lets_the_request_go_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gate is a courtesy: a store failure reading the back-off or counting calls is
    logged and the request goes out, the policy seeing no recent calls."""
    seen: list[RateLimitCall] = []

    class Counting:
        recent_window = 60.0

        def check(self, call: RateLimitCall) -> Any:
            seen.append(call)
            return Allow()
            yield  # a generator, like every flow

    down = StoreUnavailable("the store is down")
    with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw"):
        effects = _drive(_gate(Counting()), {BackoffUntil: down, CountCalls: down})
    assert [type(e) for e in effects] == [BackoffUntil, CountCalls, CountCalls]
    assert [(c.recent, c.recent_provider) for c in seen] == [(0, 0)]
    assert [r.getMessage() for r in caplog.records] == [
        "could not read the back-off of provider=example: the store is down",
        "could not count a token-endpoint call (example): the store is down",
        "could not count a token-endpoint call (example): the store is down",
    ]


def test_a_store_that_fails_to_record_a_back_off_or_a_failure_only_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 429 whose back-off the store cannot record, nor the failure count: logged, nothing
    raised, and no claim that the gate was closed."""
    down = StoreUnavailable("the store is down")
    answer = HttpResponse(429, {"retry-after": "30"})
    flow = after_token_response(Backoff(), "example", answer, T0)
    with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw"):
        effects = _drive(flow, {SetBackoff: down, TakeToken: down})
    assert [type(e) for e in effects] == [SetBackoff, TakeToken]
    assert effects[0] == SetBackoff("backoff|example", T0 + 30, T0)
    assert [r.getMessage() for r in caplog.records] == [
        "could not record the back-off of provider=example: the store is down",
        "could not count a failure of provider=example: the store is down",
    ]


def test_a_recorded_back_off_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    flow = after_token_response(Backoff(), "example", HttpResponse(503), T0)
    with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw"):
        effects = _drive(flow, {TakeToken: (False, 1.0), SetBackoff: T0 + 10})
    assert [type(e) for e in effects] == [TakeToken, SetBackoff]  # no Retry-After: the breaker
    assert effects[1] == SetBackoff("backoff|example", T0 + 10, T0)
    assert [r.getMessage() for r in caplog.records] == [
        "provider=example failed more than 5 times in 10s (circuit open): no token request "
        "for 10s (shared through the store)"
    ]


# -- the circuit breaker: failures counted in the store open the gate ---------------------------
def test_repeated_5xx_open_the_circuit_for_every_caller(provider: MockProvider) -> None:
    clock = FakeClock(T0)
    broker = _broker(provider, clock, backoff=Backoff(failures=2, window=60.0, open_for=30.0))
    provider.faults.add("token", status=503, error="temporarily_unavailable", times=None)
    for i in range(3):  # two failures are tolerated; the third opens the circuit
        with pytest.raises(TransientProviderError) as failed:
            broker.lease(tenant="acme", principal=f"svc-{i}", scopes=["read"])
        assert not isinstance(failed.value, RateLimited)
    with pytest.raises(RateLimited) as refused:
        broker.lease(tenant="acme", principal="svc-9", scopes=["read"])
    assert refused.value.retry_after == pytest.approx(30.0)
    assert _token_calls(provider) == 3
    provider.faults.clear()
    clock.advance(30)
    assert broker.lease(tenant="acme", principal="svc-9", scopes=["read"])
    broker.close()


def test_transport_errors_count_for_the_circuit_breaker(provider: MockProvider) -> None:
    import httpx2

    sent: list[str] = []

    def unreachable(request: httpx2.Request) -> httpx2.Response:
        sent.append(str(request.url))
        raise httpx2.ConnectError("connection refused", request=request)

    clock = FakeClock(T0)
    client = provider.default_client
    broker = Broker(
        provider.descriptor(),
        client_id=client.client_id,
        client_secret=client.client_secret,
        store=MemoryStore(clock=clock),
        http_client=httpx2.Client(transport=httpx2.MockTransport(unreachable)),
        clock=clock,
        client_credentials_principals=lambda tenant, principal: True,
        backoff=Backoff(failures=1, window=60.0, open_for=15.0),
    )
    for _ in range(2):
        with pytest.raises(TransportError):
            broker.lease(tenant="acme", principal="svc", scopes=["read"])
    with pytest.raises(RateLimited) as refused:
        broker.lease(tenant="acme", principal="svc", scopes=["read"])
    assert refused.value.retry_after == pytest.approx(15.0)
    assert len(sent) == 2
    broker.close()


def test_failures_zero_turns_the_breaker_off(provider: MockProvider) -> None:
    broker = _broker(provider, FakeClock(T0), backoff=Backoff(failures=0))
    provider.faults.add("token", status=500, error="server_error", times=8)
    for _ in range(8):
        with pytest.raises(TransientProviderError) as failed:
            broker.lease(tenant="acme", principal="svc", scopes=["read"])
        assert not isinstance(failed.value, RateLimited)
    assert _token_calls(provider) == 8
    broker.close()


# -- a Registry: one back-off per provider, one budget per tenant --------------------------------
def test_a_registry_shares_the_backoff_and_keeps_a_budget_per_tenant(
    provider: MockProvider,
) -> None:
    from oauth2_broker_mw import Registration
    from oauth2_broker_mw import Registry

    clock = FakeClock(T0)
    registrations = {
        (tenant, "mock"): Registration(
            provider="mock",
            descriptor=provider.descriptor(),
            client_id=provider.default_client.client_id,
            client_secret=provider.default_client.client_secret,
        )
        for tenant in ("acme", "globex")
    }
    registry = Registry(
        store=MemoryStore(clock=clock),
        registrations=registrations,
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        clock=clock,
        broker_options={
            "clock": clock,
            "client_credentials_principals": lambda tenant, principal: True,
            "rate_limit": TokenBucket(2, per=60.0),
        },
    )
    acme = registry.broker(tenant="acme", provider="mock")
    globex = registry.broker(tenant="globex", provider="mock")
    for i in range(2):
        acme.lease(tenant="acme", principal=f"svc-{i}", scopes=["read"])
    with pytest.raises(RateLimited) as spent:
        acme.lease(tenant="acme", principal="svc-2", scopes=["read"])
    assert spent.value.reason == "policy"
    globex.lease(tenant="globex", principal="svc-0", scopes=["read"])  # its own budget
    provider.faults.add("token", status=429, error="slow_down", retry_after=5)
    with pytest.raises(TransientProviderError):
        globex.lease(tenant="globex", principal="svc-1", scopes=["read"])
    with pytest.raises(RateLimited) as backed_off:  # the provider's back-off: every tenant
        acme.lease(tenant="acme", principal="svc-2", scopes=["read"])
    assert backed_off.value.reason == "backoff"
    assert backed_off.value.retry_after == pytest.approx(5.0)
    clock.advance(60)  # the back-off is over and both budgets are full again
    assert acme.lease(tenant="acme", principal="svc-2", scopes=["read"])
    assert _token_calls(provider) == 5
    registry.close()


def test_a_backed_off_refresh_serves_the_still_valid_token(provider: MockProvider) -> None:
    from oauth2_broker_mw import ScopeSet
    from oauth2_broker_mw import Secret
    from oauth2_broker_mw import TokenRecord

    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    broker = _broker(provider, clock, store=store)
    issued = provider.issue_tokens(subject="alice", scopes=["read"])
    key = broker.key(tenant="acme", principal="alice", scopes=["read"])
    store.put(
        TokenRecord(
            key=key,
            access_token=Secret(issued["access_token"]),
            refresh_token=Secret(issued["refresh_token"]),
            issued_at=T0 - 3570,
            expires_at=T0 + 30,  # inside the refresh window, still valid for 30 s
            scopes=ScopeSet.of(["read"]),
            requested_scopes=ScopeSet.of(["read"]),
        )
    )
    # another process got a 429
    store.set_backoff(Backoff.gate_name("mock", provider.issuer), T0 + 20, now=T0)
    lease = broker.lease(tenant="acme", principal="alice", scopes=["read"])
    assert lease.access_token.get_secret_value() == issued["access_token"]
    assert _token_calls(provider) == 0
    clock.advance(31)  # expired, and the back-off is over: the refresh goes out
    assert broker.lease(tenant="acme", principal="alice", scopes=["read"]).access_token
    assert _token_calls(provider) == 1
    broker.close()


def test_a_refused_refresh_is_one_rate_limited_event_not_a_refresh_failure(
    provider: MockProvider,
) -> None:
    from oauth2_broker_mw import ScopeSet
    from oauth2_broker_mw import Secret
    from oauth2_broker_mw import TokenRecord
    from oauth2_broker_mw._core.events import RefreshFailed

    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    broker = _broker(provider, clock, store=store)
    events: list[Event] = []
    broker.subscribe(events.append)
    issued = provider.issue_tokens(subject="alice", scopes=["read"])
    store.put(
        TokenRecord(
            key=broker.key(tenant="acme", principal="alice", scopes=["read"]),
            access_token=Secret(issued["access_token"]),
            refresh_token=Secret(issued["refresh_token"]),
            issued_at=T0 - 3600,
            expires_at=T0 - 1,  # expired: only a refresh can help
            scopes=ScopeSet.of(["read"]),
            requested_scopes=ScopeSet.of(["read"]),
        )
    )
    store.set_backoff(Backoff.gate_name("mock", provider.issuer), T0 + 20, now=T0)
    with pytest.raises(RateLimited) as refused:
        broker.lease(tenant="acme", principal="alice", scopes=["read"])
    assert refused.value.retry_after == pytest.approx(20.0)
    broker.events.flush()
    assert [type(e) for e in events if isinstance(e, RateLimitedEvent | RefreshFailed)] == [
        RateLimitedEvent
    ]
    assert [e.grant for e in events if isinstance(e, RateLimitedEvent)] == ["refresh_token"]
    assert _token_calls(provider) == 0
    broker.close()
