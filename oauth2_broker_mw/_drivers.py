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
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from . import _driver
from ._core.effects import (
    AcquireLock,
    BackoffUntil,
    Effect,
    Emit,
    Flow,
    HttpRequest,
    HttpResponse,
    LockHold,
    Now,
    ReleaseLock,
    SetBackoff,
    Sleep,
    StoreOp,
    TakeToken,
    store_call,
)
from ._core.errors import BrokerError, StorageError, TransportError
from .stores.base import ProviderGate, TokenStore
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .events import EventBus

__all__ = ["AsyncDriver", "SyncDriver"]

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


_CLIENT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "h11", "h2", "ssl"})


def _is_client_error(exc: BaseException) -> bool:
    """An exception raised by httpx or httpx2 (connect, read, TLS, timeout, protocol)."""
    return type(exc).__module__.split(".", 1)[0] in _CLIENT_MODULES


def _to_response(raw: Any) -> HttpResponse:
    headers = {str(k).lower(): str(v) for k, v in raw.headers.items()}
    return HttpResponse(int(raw.status_code), headers, bytes(raw.content))


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
    ) -> None:
        self._store = store
        self._gate: Any = store if isinstance(store, ProviderGate) else _process_gate()
        self._client = client
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep or type(self)._default_sleep
        self._telemetry = telemetry or Telemetry()
        self._provider = provider
        self._events = events

    def _local(self, effect: Effect) -> Any:
        """The effects both drivers answer without waiting: the clock and events."""
        if isinstance(effect, Now):
            return self._monotonic() if effect.monotonic else self._clock()
        if isinstance(effect, Emit):
            return self._emit(effect)
        raise TypeError(f"unknown effect {effect!r}")

    def _emit(self, effect: Emit) -> None:
        self._telemetry.observe(effect.event)
        if self._events is not None:
            self._events.publish(effect.event)

    def _target(self, effect: StoreOp) -> Any:
        """The store that executes ``effect``: the gate's for gate effects."""
        return (
            self._gate if isinstance(effect, BackoffUntil | SetBackoff | TakeToken) else self._store
        )

    @staticmethod
    def _store_failure(effect: StoreOp, exc: Exception) -> BrokerError:
        return StorageError(f"store {effect.op} failed: {type(exc).__name__}")

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

    def run(self, flow: Flow[R]) -> R:
        """Run ``flow`` through :func:`._driver.run`; release any lock it leaves held."""
        held: dict[str, str] = {}
        try:
            return _driver.run(flow, lambda effect: self._held(held, effect, self._execute(effect)))
        finally:
            for name, owner in held.items():  # a flow closed while holding its lock
                with contextlib.suppress(Exception):
                    self._store.release_lock(name, owner)

    def _execute(self, effect: Effect) -> Any:
        if isinstance(effect, StoreOp):
            name, args, kwargs = store_call(effect)
            try:
                return getattr(self._target(effect), name)(*args, **kwargs)
            except BrokerError:
                raise
            except Exception as exc:
                raise self._store_failure(effect, exc) from exc
        if isinstance(effect, HttpRequest):
            with (
                self._telemetry.provider_request(
                    effect.purpose, self._provider, effect.method
                ) as record,
                self._renewing(effect.hold),
            ):
                try:
                    raw = self._client().request(
                        effect.method, effect.url, **self._request_kwargs(effect)
                    )
                except Exception as exc:
                    if not _is_client_error(exc):
                        raise  # a bug in a custom transport: the flow sees it unchanged
                    raise _transport_error(effect, exc) from exc
                record(raw.status_code)
            return _to_response(raw)
        if isinstance(effect, Sleep):
            self._sleep(effect.seconds)
            return self._clock()
        return self._local(effect)

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
        """Run ``flow`` through :func:`._driver.arun`; release any lock it leaves held."""
        held: dict[str, str] = {}

        async def execute(effect: Effect) -> Any:
            return self._held(held, effect, await self._execute(effect))

        try:
            return await _driver.arun(flow, execute)
        finally:
            for name, owner in held.items():
                with contextlib.suppress(Exception):
                    await self._store.arelease_lock(name, owner)

    async def _execute(self, effect: Effect) -> Any:
        if isinstance(effect, StoreOp):
            name, args, kwargs = store_call(effect)
            try:
                return await getattr(self._target(effect), "a" + name)(*args, **kwargs)
            except BrokerError:
                raise
            except Exception as exc:
                raise self._store_failure(effect, exc) from exc
        if isinstance(effect, HttpRequest):
            with self._telemetry.provider_request(
                effect.purpose, self._provider, effect.method
            ) as record:
                async with self._renewing(effect.hold):
                    try:
                        client = await self._client()
                        raw = await client.request(
                            effect.method, effect.url, **self._request_kwargs(effect)
                        )
                    except Exception as exc:
                        if not _is_client_error(exc):
                            raise
                        raise _transport_error(effect, exc) from exc
                record(raw.status_code)
            return _to_response(raw)
        if isinstance(effect, Sleep):
            await self._sleep(effect.seconds)
            return self._clock()
        return self._local(effect)

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
