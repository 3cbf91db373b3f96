"""Lifecycle events: what happened to a connection, delivered off the hot path.

Owns: the frozen event types (:class:`TokenIssued`, :class:`TokenRefreshed`,
:class:`RefreshFailed`, :class:`ReauthorizationRequired`, :class:`ConnectionRevoked`,
:class:`RateLimited`, :class:`LockContended`), the :class:`EventBus` that queues them
(bounded, a drop counter when full) and runs subscribers on a dispatcher thread (async
subscribers on a loop of their own), and the :class:`WebhookSink` (HMAC-SHA256-signed JSON,
retries with back-off, a delivery log).

Every event carries identifiers and metadata only: tenant, principal, provider, scopes
fingerprint, time, record version. Never a token, a code, a state or a client secret.
A flow emits an event once per occurrence (the process that did the refresh emits it; the
singleflight waiters and the lock waiters that reuse its token do not).
Must not import: the broker, store drivers, starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import json
import logging
import queue
import threading
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import TypeAlias

from ._core import events as _events
from ._core.errors import ConfigurationError
from ._core.events import *  # noqa: F403  (the event types are public here, as they are there)
from ._core.events import Event

__all__ = ["Delivery", "EventBus", "EventHandler", "WebhookSink"]
__all__ += _events.__all__

log = logging.getLogger("oauth2_broker_mw.events")


EventHandler: TypeAlias = Callable[[Event], None] | Callable[[Event], Awaitable[None]]

_STOP = object()


class EventBus:
    """Queues events and runs subscribers off the hot path.

    :meth:`publish` never blocks and never raises: it puts the event on a bounded queue, or
    counts it in :attr:`dropped` when the queue is full. A daemon dispatcher thread calls the
    sync handlers in turn; coroutine handlers are scheduled on a private event loop thread,
    so a slow one does not hold up the others. A raising handler is logged (class name only)
    and counted in :attr:`handler_errors`.
    """

    def __init__(self, *, maxsize: int = 10_000, on_drop: Callable[[Event], None] | None = None):
        if maxsize < 1:
            raise ConfigurationError(f"EventBus maxsize must be at least 1, got {maxsize}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._handlers: tuple[EventHandler, ...] = ()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._on_drop = on_drop
        self.dropped = 0
        """Events not delivered because the queue was full."""
        self.handler_errors = 0
        """Handler calls that raised."""

    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for every later event; returns the function that unsubscribes."""
        if not callable(handler):
            raise ConfigurationError(f"event handler must be callable, got {handler!r}")
        with self._lock:
            self._handlers = (*self._handlers, handler)
            self._ensure_thread()

        def unsubscribe() -> None:
            with self._lock:
                self._handlers = tuple(h for h in self._handlers if h is not handler)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        return bool(self._handlers)

    def publish(self, event: Event) -> None:
        """Queue ``event`` for the subscribers. Never blocks, never raises."""
        if not self._handlers:
            return
        if self._thread is None:  # closed, then used again: restart the dispatcher
            with self._lock:
                self._ensure_thread()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                try:
                    self._on_drop(event)
                except Exception:  # a telemetry failure must not reach the lease
                    log.debug("event drop callback failed", exc_info=True)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was handed to the handlers; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop the dispatcher after the queued events (handlers still running are not waited)."""
        with self._lock:
            thread, self._thread = self._thread, None
            loop, self._loop = self._loop, None
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=1.0)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    # -- dispatcher ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._dispatch, name="oauth2-broker-events", daemon=True
            )
            self._thread.start()

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                for handler in self._handlers:
                    self._call(handler, item)  # type: ignore[arg-type]
            finally:
                self._queue.task_done()

    def _call(self, handler: EventHandler, event: Event) -> None:
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                future = asyncio.run_coroutine_threadsafe(_awaited(result), self._async_loop())
                future.add_done_callback(self._async_done)
        except Exception as exc:
            self._failed(handler, exc)

    def _async_done(self, future: Any) -> None:
        exc = future.exception()
        if exc is not None:
            self._failed(None, exc)

    def _failed(self, handler: object, exc: BaseException) -> None:
        self.handler_errors += 1
        log.warning("event handler %r raised %s", handler, type(exc).__name__)

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(
                    target=loop.run_forever, name="oauth2-broker-events-async", daemon=True
                )
                self._loop_thread.start()
                self._loop = loop
            return self._loop


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


# -- webhook sink -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry of the webhook delivery log."""

    event_type: str
    event_id: str
    attempt: int
    status: int | None
    """The HTTP status, or ``None`` when the request failed (``error`` names why)."""
    error: str | None
    at: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class WebhookSink:
    """Posts every event as signed JSON to ``url``; subscribe it with ``broker.subscribe(sink)``.

    The body is ``event.to_dict()`` plus an ``id``; the ``X-Broker-Signature`` header is
    ``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with secret>`` and
    ``X-Broker-Timestamp`` the timestamp, so receivers can reject replays. A non-2xx answer
    or a transport error is retried ``retries`` times with exponential back-off starting at
    ``backoff`` seconds. Every attempt is appended to :attr:`log` (bounded to ``log_size``).
    It runs on the event dispatcher thread: a slow endpoint delays other events, never a lease.
    """

    url: str
    secret: bytes | str = field(repr=False)
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 5.0
    log_size: int = 1000
    client: Any = None
    log: list[Delivery] = field(default_factory=list)
    _sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigurationError("WebhookSink needs a non-empty signing secret")
        if self.client is None:
            import httpx2

            self.client = httpx2.Client(timeout=self.timeout, follow_redirects=False)

    def sign(self, timestamp: str, body: bytes) -> str:
        key = self.secret.encode() if isinstance(self.secret, str) else self.secret
        digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return f"sha256={digest}"

    def __call__(self, event: Event) -> None:
        payload: Mapping[str, Any] = event.to_dict()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        event_id = hashlib.sha256(body).hexdigest()[:32]
        body = json.dumps({"id": event_id, **payload}, sort_keys=True).encode()
        delay = self.backoff
        for attempt in range(1, self.retries + 2):
            timestamp = str(int(time.time()))
            status: int | None = None
            error: str | None = None
            try:
                response = self.client.post(
                    self.url,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Broker-Event": event.kind,
                        "X-Broker-Delivery": event_id,
                        "X-Broker-Timestamp": timestamp,
                        "X-Broker-Signature": self.sign(timestamp, body),
                    },
                )
                status = int(response.status_code)
            except Exception as exc:
                error = type(exc).__name__
            entry = Delivery(event.kind, event_id, attempt, status, error, time.time())
            self.log.append(entry)
            del self.log[: max(0, len(self.log) - self.log_size)]
            if entry.ok:
                return
            if attempt <= self.retries:
                self._sleep(delay)
                delay *= 2
        log.warning("webhook delivery of %s failed after %d attempts", event.kind, attempt)

    def close(self) -> None:
        self.client.close()
