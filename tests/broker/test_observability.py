"""OpenTelemetry, complete: the httpx instrumentation on the broker's own clients, nested
under our spans and scrubbed of credentials, and the histograms and counters of
docs/observability.md."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _fakes import FakeClock
from _fakes import login
from _services import require_module

from oauth2_broker_mw import Broker
from oauth2_broker_mw.telemetry import Telemetry
from oauth2_broker_mw.telemetry import scrub_span
from oauth2_broker_mw.testing.mock_provider import MockProvider

sdk_trace = require_module("opentelemetry.sdk.trace", "otel")
require_module("opentelemetry.instrumentation.httpx", "otel")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

TENANT, USER = "acme", "alice"


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    telemetry: Telemetry

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        found = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Otel:
    # An operator who asks the httpx instrumentation to capture credential headers must
    # still never see one in a span.
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "authorization,dpop,accept"
    )
    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    return Otel(exporter, reader, telemetry)


@pytest.fixture
def brokers() -> Iterator[list[Broker]]:
    made: list[Broker] = []
    yield made
    for broker in made:
        broker.close()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    with mp.serve():
        yield mp
    mp.close()


def owned_client_broker(
    mp: MockProvider, otel: Otel, clock: FakeClock, brokers: list[Broker]
) -> Broker:
    # No http_client: the broker makes (and instruments) its own, over real loopback HTTP.
    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        telemetry=otel.telemetry,
        clock=clock,
    )
    brokers.append(broker)
    return broker


def test_the_httpx_client_span_is_the_child_of_our_provider_request_span_sync_and_async(
    served: MockProvider, otel: Otel, clock: FakeClock, brokers: list[Broker]
) -> None:
    broker = owned_client_broker(served, otel, clock, brokers)
    lease = broker.service_lease(scopes=["read"])
    alease = asyncio.run(broker.aservice_lease(scopes=["write"]))

    spans = otel.spans.get_finished_spans()
    ours = [s for s in spans if s.name == "oauth2_broker token request"]
    theirs = [
        s for s in spans if s.instrumentation_scope.name == "opentelemetry.instrumentation.httpx"
    ]
    assert len(ours) == 2
    assert len(theirs) == 2, [s.name for s in spans]
    for child in theirs:
        assert child.parent is not None
        assert child.parent.span_id in {s.context.span_id for s in ours}
        assert child.context.trace_id in {s.context.trace_id for s in ours}
    assert {child.parent.span_id for child in theirs if child.parent} == {
        s.context.span_id for s in ours
    }

    dumped = json.dumps([dict(s.attributes or {}) for s in spans])
    basic = base64.b64encode(b"test-client:test-secret").decode()
    for secret in (
        "test-secret",
        basic,
        lease.access_token.get_secret_value(),
        alease.access_token.get_secret_value(),
    ):
        assert secret not in dumped
    captured = [dict(s.attributes or {}) for s in theirs]
    assert all(a.get("http.request.header.authorization") == ("[redacted]",) for a in captured)
    assert all(a.get("http.request.header.accept") for a in captured)  # capture was on


def test_a_client_the_app_passes_in_is_not_instrumented(
    served: MockProvider, otel: Otel, clock: FakeClock
) -> None:
    import httpx2

    with httpx2.Client() as theirs:
        broker = Broker(
            served.descriptor(),
            client_id="test-client",
            client_secret="test-secret",
            http_client=theirs,
            telemetry=otel.telemetry,
            clock=clock,
        )
        broker.service_lease(scopes=["read"])
        assert not getattr(theirs, "_is_instrumented_by_opentelemetry", False)
    names = [s.name for s in otel.spans.get_finished_spans()]
    assert "oauth2_broker token request" in names
    assert "POST" not in names


def test_histograms_record_request_duration_lease_wait_and_token_age_at_refresh(
    served: MockProvider, otel: Otel, clock: FakeClock, brokers: list[Broker]
) -> None:
    broker = owned_client_broker(served, otel, clock, brokers)
    login(broker, served, tenant=TENANT, principal=USER, scopes=["openid"])
    clock.advance(4000)  # the access token is 4000 s old when it is refreshed
    broker.lease(tenant=TENANT, principal=USER, scopes=["openid"])

    durations = otel.points("oauth2_broker.provider_request.duration")
    token = [p for p in durations if dict(p.attributes)["oauth2_broker.purpose"] == "token"]
    assert sum(p.count for p in token) == 2  # the code exchange and the refresh
    assert all(p.sum > 0 for p in durations)
    waits = otel.points("oauth2_broker.lease.wait")
    assert sum(p.count for p in waits) == 1  # the one lease that missed the cache
    ages = otel.points("oauth2_broker.refresh.age")
    assert [p.count for p in ages] == [1]
    assert ages[0].sum == pytest.approx(4000)
    for point in durations + waits + ages:
        labels = dict(point.attributes)
        assert TENANT not in json.dumps(labels) and USER not in json.dumps(labels)


def test_refresh_failures_are_counted_by_class(
    served: MockProvider, otel: Otel, clock: FakeClock, brokers: list[Broker]
) -> None:
    broker = owned_client_broker(served, otel, clock, brokers)
    login(broker, served, tenant=TENANT, principal=USER, scopes=["openid"])
    clock.advance(4000)
    served.faults.add("token", "error", status=400, error="invalid_grant")
    with pytest.raises(Exception, match="log in again"):
        broker.lease(tenant=TENANT, principal=USER, scopes=["openid"])
    failures = otel.points("oauth2_broker.refresh_failures")
    assert [(dict(p.attributes)["error.type"], p.value) for p in failures] == [("InvalidGrant", 1)]


def test_scrub_strips_the_query_and_redacts_credential_headers() -> None:
    class Span:
        def __init__(self, attributes: dict[str, Any]) -> None:
            self.attributes = attributes

        def set_attribute(self, name: str, value: Any) -> None:
            self.attributes[name] = value

    span = Span(
        {
            "url.full": "https://as.example/token?access_token=abc#frag",
            "http.url": "https://as.example/token?code=xyz",
            "http.request.header.dpop": ["eyJ..."],
            "http.request.header.accept": ["application/json"],
        }
    )
    scrub_span(span)
    assert span.attributes == {
        "url.full": "https://as.example/token",
        "http.url": "https://as.example/token",
        "http.request.header.dpop": ["[redacted]"],
        "http.request.header.accept": ["application/json"],
    }


def test_the_refresher_reports_refresh_tokens_nearing_idle_expiry(otel: Otel) -> None:
    import time

    from oauth2_broker_mw._core.model import ScopeSet
    from oauth2_broker_mw._core.model import Secret
    from oauth2_broker_mw._core.model import TokenRecord
    from oauth2_broker_mw.refresher import Refresher
    from oauth2_broker_mw.stores import MemoryStore

    day = 86_400.0
    mp = MockProvider(access_ttl=3600, rotation=True)
    store = MemoryStore()
    broker = Broker(
        mp.descriptor(refresh_idle_limit=60 * day),
        client_id=mp.default_client.client_id,
        client_secret=mp.default_client.client_secret,
        store=store,
        http_client=mp.client(),
        async_http_client=mp.async_client(),
        telemetry=otel.telemetry,
    )
    now = time.time()
    for principal, idle_days in (("near", 55), ("nearer", 58), ("fresh", 10)):
        issued = mp.issue_tokens(subject=principal, scopes=("read",))
        store.put(
            TokenRecord(
                key=broker.key(tenant=TENANT, principal=principal, scopes=("read",)),
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now - idle_days * day,
                expires_at=now + 3000,
                scopes=ScopeSet.of(("read",)),
                requested_scopes=ScopeSet.of(("read",)),
            )
        )
    Refresher([broker], window=60, idle_margin=7 * day).sweep()
    gauge = otel.points("oauth2_broker.refresh_tokens.nearing_idle_expiry")
    assert [(dict(p.attributes), p.value) for p in gauge] == [
        ({"oauth2_broker.provider": broker.provider.id}, 2)
    ]
