"""OpenTelemetry: spans and counters for operations past the cache, never a secret."""

from __future__ import annotations

import json

import pytest
from _services import require_module

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw.telemetry import Telemetry
from oauth2_broker_mw.testing.mock_provider import MockProvider

sdk_trace = require_module("opentelemetry.sdk.trace", "otel")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402


def test_spans_and_counters_carry_no_secrets() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    mp = MockProvider()
    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        telemetry=telemetry,
    )
    lease = broker.service_lease(tenant="acme", scopes=["x"])
    broker.service_lease(tenant="acme", scopes=["x"])  # cached: no span
    mp.faults.add("token", "error", status=400, error="invalid_grant")
    no_cc = Broker(
        mp.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        telemetry=telemetry,
    )
    with pytest.raises(AuthorizationRequired):
        no_cc.lease(tenant="acme", principal="nobody", scopes=["x"])

    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    assert names.count("oauth2_broker lease") == 2  # the cache hit made none
    assert "oauth2_broker token request" in names
    outcomes = {
        span.attributes["oauth2_broker.outcome"]  # type: ignore[index]
        for span in spans
        if span.name == "oauth2_broker lease"
    }
    assert outcomes == {"ok", "AuthorizationRequired"}
    token_span = next(s for s in spans if s.name == "oauth2_broker token request")
    assert token_span.attributes["http.response.status_code"] == 200  # type: ignore[index]

    data = reader.get_metrics_data()
    assert data is not None
    dumped = data.to_json() + json.dumps([dict(s.attributes or {}) for s in spans])
    assert "oauth2_broker.operations" in dumped
    assert "oauth2_broker.provider_requests" in dumped
    for secret in (lease.access_token.get_secret_value(), "test-secret", "acme", "svc"):
        assert secret not in dumped


def test_without_providers_configured_it_is_harmless() -> None:
    mp = MockProvider()
    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
    )
    assert broker.service_lease(tenant="acme", scopes=["x"]).access_token
