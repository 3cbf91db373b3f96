"""The two drivers that run sans-IO flows: the only place where effects meet real I/O.

Owns: executing effects (HTTP to the provider through an httpx or httpx2 client, store calls,
sleeps, clock reads), converting client exceptions into :class:`TransportError`, and renewing
a held lease lock while a provider call is in flight. The sync and the async driver differ
only in ``await``; every decision lives in ``_core/flows.py``.
Must not import: starlette, requests, any store driver module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import NoReturn
from typing import TypeAlias
from typing import TypeVar

from . import _driver
from ._core.effects import AcquireLock
from ._core.effects import BackoffUntil
from ._core.effects import CountCalls
from ._core.effects import DeleteKeys
from ._core.effects import DeletePending
from ._core.effects import DropUnsaved
from ._core.effects import Effect
from ._core.effects import Emit
from ._core.effects import Flow
from ._core.effects import HttpRequest
from ._core.effects import HttpResponse
from ._core.effects import KeepUnsaved
from ._core.effects import LockHold
from ._core.effects import Now
from ._core.effects import PeekUnsaved
from ._core.effects import ReleaseLock
from ._core.effects import SetBackoff
from ._core.effects import Sleep
from ._core.effects import StoreOp
from ._core.effects import TakeToken
from ._core.effects import store_call
from ._core.errors import BrokerError
from ._core.errors import ConfigurationError
from ._core.errors import CorruptRecord
from ._core.errors import StorageError
from ._core.errors import TransportError
from ._core.errors import sealed
from ._core.model import StoreKey
from ._core.model import TokenRecord
from .stores.base import Offboarding
from .stores.base import PerKeyDeletion
from .stores.base import ProviderGate
from .stores.base import TokenStore
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .events import EventBus

__all__ = ["MAX_RESPONSE_BYTES", "AsyncDriver", "SyncDriver", "UnsavedRotations"]

R = TypeVar("R")

log = logging.getLogger("oauth2_broker_mw")

_PROCESS_GATE: ProviderGate | None = None


def _process_gate() -> ProviderGate:
    """The in-process gate for stores without one (custom stores): shared by this process."""
    global _PROCESS_GATE
    if _PROCESS_GATE is None:
        from .stores.memory import MemoryStore

        _PROCESS_GATE = MemoryStore()
    return _PROCESS_GATE


Held: TypeAlias = tuple[TokenRecord, int | None, LockHold | None]
"""An unsaved rotation: the record, the stored version it replaces, the lock left held."""


class UnsavedRotations:
    """Rotated records the store refused to take, held in this process until it answers.

    Once the provider has rotated a refresh token, the stored one is spent: presenting it
    again makes a provider with reuse detection revoke the whole grant. So a rotation whose
    write failed (after the bounded retries) is kept here, handed out instead of the stored
    record, and written (compare-and-swap at the version it replaces) by the next flow that
    reads the key or by :meth:`Broker.flush_unsaved`. Shared by a broker's two drivers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}

    def keep(
        self, record: TokenRecord, expected_version: int | None, lock: LockHold | None
    ) -> None:
        with self._lock:
            self._held[record.key.id] = (record, expected_version, lock)

    def peek(self, key: StoreKey) -> Held | None:
        return self._held.get(key.id)

    def drop(self, record: TokenRecord) -> None:
        """Forget ``record``; a newer record kept for the same key meanwhile stays."""
        with self._lock:
            held = self._held.get(record.key.id)
            if held is not None and held[0] is record:
                del self._held[record.key.id]

    def held_keys(self) -> list[StoreKey]:
        with self._lock:
            return [held[0].key for held in self._held.values()]

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        return f"UnsavedRotations(held={len(self._held)})"


_CLIENT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "h11", "h2", "ssl"})


def _is_client_error(exc: BaseException) -> bool:
    """An exception raised by httpx or httpx2 (connect, read, TLS, timeout, protocol)."""
    return type(exc).__module__.split(".", 1)[0] in _CLIENT_MODULES


MAX_RESPONSE_BYTES: Final = 1 << 20
"""Default cap on a provider's response body (token endpoint, metadata, JWKS): 1 MiB."""


class _Body:
    """One provider call's response, read under a size cap and a total deadline.

    The cap is checked against ``Content-Length`` before reading and against the decoded
    bytes while streaming (a gzip bomb counts by what it expands to). The deadline covers
    connect, headers and body: the sync driver lowers the HTTP library's per-read timeout to
    what is left before each read, the async driver wraps the call in ``asyncio.timeout``.
    Neither a trickling nor a bloated body can hold a call (or its refresh lock) longer.
    """

    def __init__(self, request: HttpRequest, limit: int, budget: float | None, now: float) -> None:
        self.request = request
        self.limit = limit
        self.budget = budget
        self.deadline = None if budget is None else now + budget
        self.chunks: list[bytes] = []
        self.size = 0
        self.timeouts: dict[str, float | None] | None = None

    def _where(self) -> str:
        return f"{self.request.purpose} request to {self.request.url.split('?', 1)[0]}"

    def remaining(self, now: float) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - now
        if left <= 0:
            raise self.timed_out()
        return left

    def timed_out(self) -> TransportError:
        return TransportError(
            f"{self._where()} did not complete within {self.budget:g}s (connect, headers and "
            "body); the provider is too slow or trickles its answer (Broker(timeout=...))"
        )

    def start(self, raw: Any) -> None:
        declared = str(raw.headers.get("content-length") or "").strip()
        if (
            declared.isascii()
            and declared.isdigit()
            and (len(declared) > 18 or int(declared) > self.limit)
        ):
            raise self.too_large()

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise self.too_large()
        self.chunks.append(chunk)

    def too_large(self) -> TransportError:
        return TransportError(
            f"{self._where()} answered with a body larger than {self.limit} bytes; refused "
            "while reading (Broker(max_response_bytes=...) if the provider really sends that)"
        )

    def tighten(self, request: Any, now: float, phases: Iterable[str]) -> None:
        """Lower an httpx/httpx2 request's per-phase timeouts to what the deadline leaves.

        httpcore reads ``request.extensions["timeout"]`` before every network read, so
        lowering the read timeout between chunks bounds the whole body, not only each read.
        """
        remaining = self.remaining(now)
        timeouts = getattr(request, "extensions", {}).get("timeout")
        if remaining is None or not isinstance(timeouts, dict):
            return
        if self.timeouts is None:
            self.timeouts = dict(timeouts)
        for phase in phases:
            limit = self.timeouts.get(phase)
            timeouts[phase] = remaining if limit is None else min(limit, remaining)

    def response(self, raw: Any) -> HttpResponse:
        headers = {str(k).lower(): str(v) for k, v in raw.headers.items()}
        return HttpResponse(int(raw.status_code), headers, b"".join(self.chunks))


def _transport_error(request: HttpRequest, exc: BaseException) -> TransportError:
    # Never include the exception text: some clients echo request bodies or URLs with queries.
    return TransportError(
        f"{request.purpose} request to {request.url.split('?', 1)[0]} failed: {type(exc).__name__}"
    )


class _Driver:
    """What both drivers share: configuration and every step that has no ``await`` in it.

    ``client`` returns the HTTP client (the async driver awaits it); ``sleep`` blocks the
    thread (sync) or is awaited (async), defaulting to ``time.sleep`` / ``asyncio.sleep``.
    """

    _default_sleep: Callable[[float], Any]

    def __init__(
        self,
        store: TokenStore,
        client: Callable[[], Any],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
        telemetry: Telemetry | None = None,
        provider: str = "",
        events: EventBus | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        deadline: float | None = None,
        unsaved: UnsavedRotations | None = None,
    ) -> None:
        if max_response_bytes < 1:
            raise ConfigurationError("max_response_bytes must be a positive number of bytes")
        if deadline is not None and not deadline > 0:
            raise ConfigurationError("the provider-call deadline must be > 0 seconds")
        self._max_body = max_response_bytes
        self._deadline = deadline
        self._store = store
        self._gate: Any = store if isinstance(store, ProviderGate) else _process_gate()
        self._client = client
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep or type(self)._default_sleep
        self._telemetry = telemetry or Telemetry()
        self._provider = provider
        self._events = events
        self.unsaved = unsaved if unsaved is not None else UnsavedRotations()

    def _local(self, effect: Effect) -> Any:
        """The effects both drivers answer without waiting: clock, events, unsaved rotations."""
        if isinstance(effect, Now):
            return self._monotonic() if effect.monotonic else self._clock()
        if isinstance(effect, Emit):
            return self._emit(effect)
        if isinstance(effect, PeekUnsaved):
            return self.unsaved.peek(effect.key) if len(self.unsaved) else None
        if isinstance(effect, KeepUnsaved):
            return self.unsaved.keep(effect.record, effect.expected_version, effect.lock)
        if isinstance(effect, DropUnsaved):
            return self.unsaved.drop(effect.record)
        raise TypeError(f"unknown effect {effect!r}")

    def _emit(self, effect: Emit) -> None:
        self._telemetry.observe(effect.event)
        if self._events is not None:
            self._events.publish(effect.event)

    def _target(self, effect: StoreOp) -> Any:
        """The store that executes ``effect``: the gate's for gate effects; for bulk deletion
        by a store without it (:class:`Offboarding`), one ``delete`` per key."""
        if isinstance(effect, BackoffUntil | SetBackoff | TakeToken | CountCalls):
            return self._gate
        if isinstance(effect, DeleteKeys | DeletePending) and not isinstance(
            self._store, Offboarding
        ):
            return PerKeyDeletion(self._store)
        return self._store

    @staticmethod
    def _store_error(effect: StoreOp, exc: Exception) -> NoReturn:
        """Raise what a store's exception becomes at the driver's boundary: a BrokerError as
        it is, but a CorruptRecord sealed (the store's frames held the row it could not read);
        anything else a StorageError caused by it."""
        if isinstance(exc, CorruptRecord):
            raise sealed(exc) from None
        if isinstance(exc, BrokerError):
            raise exc
        raise StorageError(f"store {effect.op} failed: {type(exc).__name__}") from exc

    @staticmethod
    def _held(held: dict[str, str], effect: Effect, result: Any) -> Any:
        """Track the lease locks a flow holds, so the driver can release what it leaves."""
        if isinstance(effect, AcquireLock) and result is True:
            held[effect.name] = effect.owner
        elif isinstance(effect, ReleaseLock):
            held.pop(effect.name, None)
        return result

    @staticmethod
    def _request_kwargs(effect: HttpRequest) -> dict[str, Any]:
        return {
            "headers": dict(effect.headers),
            "content": effect.body,
            "follow_redirects": False,
        }

    def _body(self, effect: HttpRequest) -> _Body:
        return _Body(effect, self._max_body, self._deadline, self._monotonic())

    def _prepare(self, client: Any, effect: HttpRequest, body: _Body) -> Any:
        """An httpx/httpx2 request to ``send(stream=True)``, or ``None`` for a client that
        only has ``request()`` (a test double: its whole body is checked once read)."""
        if not (hasattr(client, "build_request") and hasattr(client, "send")):
            return None
        kwargs = self._request_kwargs(effect)
        del kwargs["follow_redirects"]
        request = client.build_request(effect.method, effect.url, **kwargs)
        body.tighten(request, self._monotonic(), ("connect", "read", "write", "pool"))
        return request

    @staticmethod
    def _renewed(ok: bool | BrokerError) -> bool:
        """Log a failed renewal; ``False`` stops the renewal loop."""
        if isinstance(ok, BrokerError):
            log.warning("could not renew refresh lock: %s", ok)
            return True
        if not ok:
            log.warning("refresh lock lost while the provider call was in flight")
        return ok


class SyncDriver(_Driver):
    """Runs a flow on the calling thread."""

    _default_sleep = staticmethod(time.sleep)

    # unasync: generated from run; edit that one, then run scripts/unasync.py
    def run(self, flow: Flow[R]) -> R:
        """Run ``flow`` through the one driver; release any lock it leaves held."""
        held: dict[str, str] = {}

        def execute(effect: Effect) -> Any:
            return self._held(held, effect, self._execute(effect))

        try:
            return _driver.run(flow, execute)
        finally:
            for name, owner in held.items():  # a flow closed while holding its lock
                with contextlib.suppress(Exception):
                    self._store.release_lock(name, owner)

    def _execute(self, effect: Effect) -> Any:
        if isinstance(effect, StoreOp):
            name, args, kwargs = store_call(effect)
            try:
                return getattr(self._target(effect), name)(*args, **kwargs)
            except Exception as exc:
                self._store_error(effect, exc)
        if isinstance(effect, HttpRequest):
            with (
                self._telemetry.provider_request(
                    effect.purpose, self._provider, effect.method
                ) as record,
                self._renewing(effect.hold),
            ):
                body = self._body(effect)
                try:
                    raw = self._fetch(self._client(), effect, body)
                except BrokerError:
                    raise
                except Exception as exc:
                    if not _is_client_error(exc):
                        raise  # a bug in a custom transport: the flow sees it unchanged
                    if body.deadline is not None and self._monotonic() >= body.deadline:
                        raise body.timed_out() from exc
                    raise _transport_error(effect, exc) from exc
                record(raw.status_code)
            return body.response(raw)
        if isinstance(effect, Sleep):
            self._sleep(effect.seconds)
            return self._clock()
        return self._local(effect)

    def _fetch(self, client: Any, effect: HttpRequest, body: _Body) -> Any:
        request = self._prepare(client, effect, body)
        if request is None:
            raw = client.request(effect.method, effect.url, **self._request_kwargs(effect))
            body.start(raw)
            body.add(bytes(raw.content))
            return raw
        raw = client.send(request, stream=True, follow_redirects=False)
        try:
            body.start(raw)
            chunks = raw.iter_bytes()
            while True:
                body.tighten(request, self._monotonic(), ("read",))
                chunk = next(chunks, None)
                if chunk is None:
                    return raw
                body.add(chunk)
        finally:
            raw.close()

    @contextlib.contextmanager
    def _renewing(self, hold: LockHold | None) -> Iterator[None]:
        if hold is None:
            yield
            return
        stop = threading.Event()
        store = self._store

        def renew() -> None:
            while not stop.wait(hold.ttl / 3):
                try:
                    ok: bool | BrokerError = store.renew_lock(hold.name, hold.owner, hold.ttl)
                except BrokerError as exc:
                    ok = exc
                if not self._renewed(ok):
                    return

        thread = threading.Thread(target=renew, name="oauth2-broker-lock-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class AsyncDriver(_Driver):
    """Runs a flow as a task on the running event loop; never blocks it.

    ``client`` is awaited: it returns the HTTP client of the running loop.
    """

    _default_sleep = staticmethod(asyncio.sleep)

    async def run(self, flow: Flow[R]) -> R:
        """Run ``flow`` through the one driver; release any lock it leaves held."""
        held: dict[str, str] = {}

        async def execute(effect: Effect) -> Any:
            return self._held(held, effect, await self._execute(effect))

        try:
            return await _driver.arun(flow, execute)
        finally:
            for name, owner in held.items():  # a flow closed while holding its lock
                with contextlib.suppress(Exception):
                    await self._store.arelease_lock(name, owner)

    async def _execute(self, effect: Effect) -> Any:
        if isinstance(effect, StoreOp):
            name, args, kwargs = store_call(effect)
            try:
                return await getattr(self._target(effect), "a" + name)(*args, **kwargs)
            except Exception as exc:
                self._store_error(effect, exc)
        if isinstance(effect, HttpRequest):
            with self._telemetry.provider_request(
                effect.purpose, self._provider, effect.method
            ) as record:
                async with self._renewing(effect.hold):
                    body = self._body(effect)
                    try:
                        async with asyncio.timeout(body.remaining(self._monotonic())):
                            raw = await self._fetch(await self._client(), effect, body)
                    except BrokerError:
                        raise
                    except TimeoutError as exc:  # our deadline (asyncio.timeout)
                        raise body.timed_out() from exc
                    except Exception as exc:
                        if not _is_client_error(exc):
                            raise
                        raise _transport_error(effect, exc) from exc
                record(raw.status_code)
            return body.response(raw)
        if isinstance(effect, Sleep):
            await self._sleep(effect.seconds)
            return self._clock()
        return self._local(effect)

    async def _fetch(self, client: Any, effect: HttpRequest, body: _Body) -> Any:
        request = self._prepare(client, effect, body)
        if request is None:
            raw = await client.request(effect.method, effect.url, **self._request_kwargs(effect))
            body.start(raw)
            body.add(bytes(raw.content))
            return raw
        raw = await client.send(request, stream=True, follow_redirects=False)
        try:
            body.start(raw)
            async for chunk in raw.aiter_bytes():
                body.add(chunk)
            return raw
        finally:
            await raw.aclose()

    @contextlib.asynccontextmanager
    async def _renewing(self, hold: LockHold | None) -> AsyncIterator[None]:
        if hold is None:
            yield
            return
        store = self._store

        async def renew() -> None:
            while True:
                await asyncio.sleep(hold.ttl / 3)
                try:
                    ok: bool | BrokerError = await store.arenew_lock(
                        hold.name, hold.owner, hold.ttl
                    )
                except BrokerError as exc:
                    ok = exc
                if not self._renewed(ok):
                    return

        task = asyncio.create_task(renew(), name="oauth2-broker-lock-renewal")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
