"""OpenTelemetry spans and metrics for the broker; a no-op when opentelemetry is not installed.

Owns: the span per broker operation that reaches past the in-process cache (``lease`` misses,
``exchange_code``, ``revoke``, ...), the span per provider HTTP call, and two counters:

* ``oauth2_broker.operations`` — ``{operation, provider, outcome}``
* ``oauth2_broker.provider_requests`` — ``{purpose, provider, status_class}``

Attributes and labels are enum-like values only: operation and purpose names, the provider id,
an outcome (``ok`` or the error class name), an HTTP status class. Never a token, a code, a
state, a tenant or principal id (unbounded cardinality, and personal data), nor a URL query.
The per-request hot path (a fresh cached lease) is not instrumented: it must stay free.
Must not import: opentelemetry at module level (it is the optional ``otel`` extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Telemetry"]

_NAME = "oauth2_broker_mw"


class Telemetry:
    """Spans and counters through the global (or given) OpenTelemetry providers."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError:  # the otel extra is not installed: everything is a no-op
            self._tracer: Any = None
            self._operations: Any = None
            self._requests: Any = None
            self._dropped: Any = None
            return
        from . import __version__

        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = meter_provider or metrics.get_meter_provider()
        self._tracer = tracer_provider.get_tracer(_NAME, __version__)
        meter = meter_provider.get_meter(_NAME, __version__)
        self._operations = meter.create_counter(
            "oauth2_broker.operations",
            description="Broker operations that went past the in-process cache, by outcome",
        )
        self._requests = meter.create_counter(
            "oauth2_broker.provider_requests",
            description="HTTP requests sent to the provider, by purpose and status class",
        )
        self._dropped = meter.create_counter(
            "oauth2_broker.events_dropped",
            description="Lifecycle events dropped because the event queue was full, by event",
        )

    def event_dropped(self, event: object) -> None:
        """Count one lifecycle event dropped because the event queue was full."""
        if self._dropped is not None:
            self._dropped.add(1, {"oauth2_broker.event": getattr(event, "kind", "event")})

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
                self._requests.add(
                    1,
                    {
                        "oauth2_broker.purpose": purpose,
                        "oauth2_broker.provider": provider,
                        "oauth2_broker.status_class": status_class,
                    },
                )


def _ignore(status: int) -> None:
    return None


def _set_error(span: Any) -> None:
    from opentelemetry.trace import Status, StatusCode

    # The description is the class name only: exception messages stay out of spans.
    span.set_status(Status(StatusCode.ERROR))
