"""OpenTelemetry spans and metrics for the broker; a no-op when opentelemetry is not installed.

Owns: the span per broker operation that reaches past the in-process cache (``lease`` misses,
``exchange_code``, ``revoke``, ...), the span per provider HTTP call (with the httpx
instrumentation's client span nested under it, on the broker's own clients only), and the
metrics listed in ``docs/observability.md``: counters of operations, provider requests,
refresh failures, rate-limited calls and dropped events; histograms of provider request
duration, lease wait and token age at refresh; a gauge of refresh tokens nearing idle expiry.

Attributes and labels are enum-like values only: operation and purpose names, the provider id,
an outcome (``ok`` or the error class name), an HTTP status class. Never a token, a code, a
state, a tenant or principal id (unbounded cardinality, and personal data), nor a URL query.
The per-request hot path (a fresh cached lease) is not instrumented: it must stay free.
Must not import: opentelemetry at module level (it is the optional ``otel`` extra).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

__all__ = ["Telemetry"]

_NAME = "oauth2_broker_mw"


#: Every metric: attribute -> (instrument kind, name, unit, description). The one list,
#: mirrored in docs/observability.md.
_INSTRUMENTS: dict[str, tuple[str, str, str, str]] = {
    "operations": (
        "counter",
        "oauth2_broker.operations",
        "1",
        "Broker operations that went past the in-process cache, by outcome",
    ),
    "requests": (
        "counter",
        "oauth2_broker.provider_requests",
        "1",
        "HTTP requests sent to the provider, by purpose and status class",
    ),
    "dropped": (
        "counter",
        "oauth2_broker.events_dropped",
        "1",
        "Lifecycle events dropped because the event queue was full, by event",
    ),
    "refresh_failures": (
        "counter",
        "oauth2_broker.refresh_failures",
        "1",
        "Failed refreshes, by provider, permanence and error class",
    ),
    "rate_limited": (
        "counter",
        "oauth2_broker.rate_limited",
        "1",
        "Token-endpoint calls refused by the rate limit or the provider back-off",
    ),
    "request_duration": (
        "histogram",
        "oauth2_broker.provider_request.duration",
        "s",
        "Duration of HTTP requests to the provider, by purpose and status class",
    ),
    "lease_wait": (
        "histogram",
        "oauth2_broker.lease.wait",
        "s",
        "Time a lease past the in-process cache waited for its token "
        "(singleflight, refresh lock and provider call included)",
    ),
    "refresh_age": (
        "histogram",
        "oauth2_broker.refresh.age",
        "s",
        "Age of the access token when it was refreshed",
    ),
    "idle_due": (
        "gauge",
        "oauth2_broker.refresh_tokens.nearing_idle_expiry",
        "1",
        "Refresh tokens the last refresher sweep found close to the provider's idle limit",
    ),
}


class Telemetry:
    """Spans and counters through the global (or given) OpenTelemetry providers."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics
            from opentelemetry import trace
        except ImportError:  # the otel extra is not installed: everything is a no-op
            self._tracer: Any = None
            return
        from . import __version__

        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = meter_provider or metrics.get_meter_provider()
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer = tracer_provider.get_tracer(_NAME, __version__)
        meter = meter_provider.get_meter(_NAME, __version__)
        made = {
            attr: getattr(meter, f"create_{kind}")(name, unit=unit, description=description)
            for attr, (kind, name, unit, description) in _INSTRUMENTS.items()
        }
        self._operations = made["operations"]
        self._requests = made["requests"]
        self._dropped = made["dropped"]
        self._refresh_failures = made["refresh_failures"]
        self._rate_limited = made["rate_limited"]
        self._request_duration = made["request_duration"]
        self._lease_wait = made["lease_wait"]
        self._refresh_age = made["refresh_age"]
        self._idle_due = made["idle_due"]

    def event_dropped(self, event: object) -> None:
        """Count one lifecycle event dropped because the event queue was full."""
        if self._tracer is not None:
            self._dropped.add(1, {"oauth2_broker.event": getattr(event, "kind", "event")})

    def observe(self, event: object) -> None:
        """Record the metrics a lifecycle event stands for (called as the flow emits it)."""
        if self._tracer is None:
            return
        from ._core.events import RateLimited
        from ._core.events import RefreshFailed
        from ._core.events import TokenRefreshed

        provider = {"oauth2_broker.provider": getattr(event, "provider", "")}
        if isinstance(event, TokenRefreshed) and event.age is not None:
            self._refresh_age.record(max(event.age, 0.0), provider)
        elif isinstance(event, RefreshFailed):
            attributes = {
                **provider,
                "oauth2_broker.permanent": event.permanent,
                "error.type": event.error,
            }
            self._refresh_failures.add(1, attributes)
        elif isinstance(event, RateLimited):
            self._rate_limited.add(1, provider)

    def nearing_idle_expiry(self, provider: str, count: int) -> None:
        """Set the gauge of refresh tokens close to ``provider``'s idle limit."""
        if self._tracer is not None:
            self._idle_due.set(count, {"oauth2_broker.provider": provider})

    @contextlib.contextmanager
    def lease_wait(self, provider: str) -> Iterator[None]:
        """Time one lease that missed the in-process cache, whatever it waited for."""
        if self._tracer is None:
            yield
            return
        started = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._lease_wait.record(
                time.perf_counter() - started,
                {"oauth2_broker.provider": provider, "oauth2_broker.outcome": outcome},
            )

    def instrument(self, client: Any) -> Any:
        """Instrument one HTTP client the broker owns with opentelemetry-instrumentation-httpx.

        Only this client, never globally; its spans nest under our provider-request span, and
        carry no query string, body or credential header. Without the instrumentation package
        (or with telemetry off) the client is returned as it is.
        """
        if self._tracer is None:
            return client
        try:
            from opentelemetry.instrumentation import httpx as otel_httpx
        except ImportError:
            return client
        httpx2_client = type(client).__module__.split(".", 1)[0] == "httpx2"
        instrumentor = (
            otel_httpx.HTTPX2ClientInstrumentor
            if httpx2_client
            else otel_httpx.HTTPXClientInstrumentor
        )
        is_async = hasattr(client, "aclose")
        instrumentor.instrument_client(
            client,
            tracer_provider=self._tracer_provider,
            meter_provider=self._meter_provider,
            request_hook=scrub_span_async if is_async else scrub_span,
            response_hook=scrub_span_async if is_async else scrub_span,
        )
        return client

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def operation(self, operation: str, provider: str) -> Iterator[None]:
        """A span around one broker operation; records its outcome (``ok`` / error class)."""
        if self._tracer is None:
            yield
            return
        attributes = {"oauth2_broker.operation": operation, "oauth2_broker.provider": provider}
        with self._tracer.start_as_current_span(
            f"oauth2_broker {operation}", attributes=attributes, record_exception=False
        ) as span:
            outcome = "ok"
            try:
                yield
            except BaseException as exc:
                outcome = type(exc).__name__
                span.set_attribute("error.type", outcome)
                _set_error(span)
                raise
            finally:
                span.set_attribute("oauth2_broker.outcome", outcome)
                self._operations.add(1, {**attributes, "oauth2_broker.outcome": outcome})

    @contextlib.contextmanager
    def provider_request(self, purpose: str, provider: str, method: str) -> Iterator[Any]:
        """A client span around one provider HTTP call; yields a ``record(status)`` callback."""
        if self._tracer is None:
            yield _ignore
            return
        from opentelemetry.trace import SpanKind

        attributes = {
            "oauth2_broker.purpose": purpose,
            "oauth2_broker.provider": provider,
            "http.request.method": method,
        }
        with self._tracer.start_as_current_span(
            f"oauth2_broker {purpose} request",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
        ) as span:
            status_class = "error"
            started = time.perf_counter()

            def record(status: int) -> None:
                nonlocal status_class
                status_class = f"{status // 100}xx"
                span.set_attribute("http.response.status_code", status)

            try:
                yield record
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                _set_error(span)
                raise
            finally:
                labels = {
                    "oauth2_broker.purpose": purpose,
                    "oauth2_broker.provider": provider,
                    "oauth2_broker.status_class": status_class,
                }
                self._requests.add(1, labels)
                self._request_duration.record(time.perf_counter() - started, labels)


def _ignore(status: int) -> None:
    return None


def _set_error(span: Any) -> None:
    from opentelemetry.trace import Status
    from opentelemetry.trace import StatusCode

    # The description is the class name only: exception messages stay out of spans.
    span.set_status(Status(StatusCode.ERROR))


#: Span attributes of the httpx instrumentation that may carry a credential or a query.
_URL_ATTRIBUTES = ("url.full", "http.url")
_SECRET_HEADERS = ("authorization", "dpop", "cookie", "set_cookie", "proxy_authorization")


def scrub_span(span: Any, request: Any = None, response: Any = None) -> None:
    """Strip the query and fragment from the URL attributes, and redact credential headers
    that an operator's ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` may have captured."""
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            parts = urlsplit(value)
            span.set_attribute(name, urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))
    for name in list(attributes):
        if name.rsplit(".", 1)[-1] in _SECRET_HEADERS and ".header." in name:
            span.set_attribute(name, ["[redacted]"])


async def scrub_span_async(span: Any, request: Any = None, response: Any = None) -> None:
    """:func:`scrub_span` as the async hook of an instrumented ``AsyncClient``."""
    scrub_span(span)
