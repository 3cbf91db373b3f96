"""Worker functions for ``tests/test_multiprocess_sqlite.py``, run in ``spawn``-ed processes.

They live in their own small module so a spawned child imports them by name without importing
the test module (the child inherits the parent's ``sys.path``). Everything here is plain: a
child builds its own :class:`Broker` on the shared SQLite file, lines its callers up, calls
``lease`` / ``replace_lease`` / ``alease`` and reports every outcome (the token it got or the
error it saw) through a queue. Decisions about what is correct are made by the tests.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Literal
from typing import Protocol

from oauth2_broker_mw import Broker
from oauth2_broker_mw import Lease
from oauth2_broker_mw import ProviderDescriptor
from oauth2_broker_mw import SQLiteStore

Mode = Literal["lease", "mixed", "replace", "force"]

BARRIER_TIMEOUT = 90.0


class SharedFloat(Protocol):
    """A ``multiprocessing.Value('d')``: the logical clock offset shared by all processes."""

    value: float


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...

    def abort(self) -> None: ...


class Queue(Protocol):
    def put(self, obj: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class CallerSpec:
    """What every caller of one worker process does.

    ``mode``: ``lease`` (everyone calls ``lease``/``alease``); ``mixed`` (odd callers hand
    back the lease they got in the previous window through ``replace_lease`` /
    ``areplace_lease``, even callers call ``lease``); ``replace`` (every caller hands back
    its previous lease, as a signer does after a 401); ``force`` (``lease(force_refresh=True)``).
    """

    descriptor: ProviderDescriptor
    db_path: str
    tenant: str = "acme"
    principal: str = "svc-router"
    scopes: tuple[str, ...] = ("email.read",)
    threads: int = 8
    tasks: int = 8
    windows: int = 1
    mode: Mode = "lease"
    lock_ttl: float = 15.0
    lock_wait: float = 30.0


@dataclass(frozen=True, slots=True)
class CallResult:
    """One caller's outcome in one window: the access token it got, or the error it saw."""

    pid: int
    window: int
    caller: str
    token: str | None
    error: str | None


def make_broker(spec: CallerSpec, clock: Callable[[], float] = time.time) -> Broker:
    return Broker(
        spec.descriptor,
        client_id="test-client",
        client_secret="test-secret",
        store=SQLiteStore(spec.db_path, clock=clock, timeout=30.0),
        lock_ttl=spec.lock_ttl,
        lock_wait=spec.lock_wait,
        clock=clock,
        client_credentials_principals=lambda tenant, principal: True,  # services (SECURITY J6)
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Callers:
    """The threads and tasks of one worker process and what they got last window."""

    def __init__(self, spec: CallerSpec, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.broker = broker
        self.loop = loop
        self.previous: dict[str, Lease] = {}
        self.results: list[CallResult] = []
        self.pid = os.getpid()

    def _record(
        self, window: int, caller: str, lease: Lease | None, exc: BaseException | None
    ) -> None:
        if lease is not None:
            self.previous[caller] = lease
        self.results.append(
            CallResult(
                pid=self.pid,
                window=window,
                caller=caller,
                token=None if lease is None else lease.access_token.get_secret_value(),
                error=None if exc is None else _describe(exc),
            )
        )

    def _replaces(self, index: int, caller: str) -> Lease | None:
        if self.spec.mode == "replace":
            return self.previous.get(caller)
        if self.spec.mode != "mixed" or index % 2 == 0:
            return None
        return self.previous.get(caller)

    def call_sync(self, window: int, index: int, go: threading.Event) -> None:
        caller = f"t{index}"
        spec, broker = self.spec, self.broker
        go.wait()
        try:
            stale = self._replaces(index, caller)
            if stale is not None:
                lease = broker.replace_lease(stale)
            else:
                lease = broker.lease(
                    tenant=spec.tenant,
                    principal=spec.principal,
                    scopes=spec.scopes,
                    force_refresh=spec.mode == "force",
                )
        except Exception as exc:
            self._record(window, caller, None, exc)
        else:
            self._record(window, caller, lease, None)

    async def call_async(self, window: int, index: int) -> None:
        caller = f"a{index}"
        spec, broker = self.spec, self.broker
        try:
            stale = self._replaces(index, caller)
            if stale is not None:
                lease = await broker.areplace_lease(stale)
            else:
                lease = await broker.alease(
                    tenant=spec.tenant,
                    principal=spec.principal,
                    scopes=spec.scopes,
                    force_refresh=spec.mode == "force",
                )
        except Exception as exc:
            self._record(window, caller, None, exc)
        else:
            self._record(window, caller, lease, None)

    async def all_async(self, window: int) -> None:
        await asyncio.gather(*(self.call_async(window, i) for i in range(self.spec.tasks)))

    def window(self, window: int, start: Barrier) -> None:
        go = threading.Event()
        threads = [
            threading.Thread(target=self.call_sync, args=(window, i, go), daemon=True)
            for i in range(self.spec.threads)
        ]
        for thread in threads:
            thread.start()
        start.wait(BARRIER_TIMEOUT)  # every process is ready: release them all at once
        go.set()
        future = asyncio.run_coroutine_threadsafe(self.all_async(window), self.loop)
        for thread in threads:
            thread.join()
        future.result(BARRIER_TIMEOUT)


def run_callers(
    spec: CallerSpec,
    start: Barrier,
    end: Barrier,
    offset: SharedFloat | None,
    results: Queue,
) -> None:
    """Run ``spec.windows`` windows; each starts at ``start`` and ends at ``end``.

    ``offset`` (seconds added to ``time.time()``) is the logical clock of every broker and
    store in every process; the parent moves it forward between windows, so each window
    starts with the stored access token expired.
    """
    clock: Callable[[], float] = time.time
    if offset is not None:
        shared = offset

        def clock() -> float:
            return time.time() + shared.value

    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="worker-loop", daemon=True)
    loop_thread.start()
    broker = make_broker(spec, clock)
    try:
        callers = _Callers(spec, broker, loop)
        for window in range(spec.windows):
            callers.window(window, start)
            end.wait(BARRIER_TIMEOUT)
        asyncio.run_coroutine_threadsafe(broker.aclose(), loop).result(BARRIER_TIMEOUT)
        results.put(("done", os.getpid(), callers.results))
    except BaseException:
        start.abort()
        end.abort()
        results.put(("crash", os.getpid(), traceback.format_exc()))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(BARRIER_TIMEOUT)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        broker.close()
        broker.store.close()


def lease_once(spec: CallerSpec, results: Queue, announce: bool = False) -> None:
    """One sync ``lease`` (the holder the test kills, or a waiter); reports the outcome.

    ``announce``: first report ``("started", pid, None)``, just before calling ``lease``.
    """
    broker = make_broker(spec)
    if announce:
        results.put(("started", os.getpid(), None))
    try:
        lease = broker.lease(
            tenant=spec.tenant,
            principal=spec.principal,
            scopes=spec.scopes,
            force_refresh=spec.mode == "force",
        )
        results.put(("done", os.getpid(), lease.access_token.get_secret_value()))
    except BaseException as exc:
        results.put(("error", os.getpid(), _describe(exc)))
    finally:
        broker.close()
        broker.store.close()
