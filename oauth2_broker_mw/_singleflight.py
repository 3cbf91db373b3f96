"""In-process singleflight shared by threads and asyncio tasks (on any number of loops).

Owns: "one leader per key does the work; everyone else waits for its result". A thread waits
on a ``threading.Event``; a task awaits a future on its own loop, resolved thread-safely.
Entries live only while a flight is in the air, so memory is bounded by the number of
concurrent flights, however many keys pass through.
Must not import: httpx/httpx2, store drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Generic
from typing import TypeVar

from ._core.errors import RefreshTimeout

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Abandoned(Exception):
    """The leader was cancelled; a waiter should try to lead itself."""


class _Flight(Generic[T]):
    __slots__ = ("_lock", "done", "error", "event", "result", "waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.event = threading.Event()
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def finish(self, result: T | None, error: BaseException | None) -> None:
        with self._lock:
            self.result, self.error, self.done = result, error, True
            waiters, self.waiters = self.waiters, []
        self.event.set()
        for loop, future in waiters:
            # A closed loop has nobody waiting on it any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    def add_waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        with self._lock:
            if self.done:
                return None
            future: asyncio.Future[None] = loop.create_future()
            self.waiters.append((loop, future))
            return future

    def outcome(self) -> T:
        """The leader's result, or a fresh copy of its exception chained from the original.

        Every waiter raises its own object: a shared one would collect every waiter's frames
        in one traceback, across threads, and one waiter's handler could mutate what the
        others see.
        """
        if self.error is not None:
            raise _copy_of(self.error) from self.error
        return self.result  # type: ignore[return-value]


def _copy_of(error: BaseException) -> BaseException:
    """A new exception of ``error``'s class with its arguments and attributes, no traceback."""
    cls = type(error)
    try:
        copy = cls.__new__(cls, *error.args)
    except Exception:  # an exotic __new__: fall back to the base class's
        copy = BaseException.__new__(cls)
    copy.args = error.args
    with contextlib.suppress(AttributeError, TypeError):  # classes with __slots__ only
        copy.__dict__.update(error.__dict__)
    copy.__context__ = None
    copy.__traceback__ = None
    return copy


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SingleFlight(Generic[T]):
    """Deduplicate concurrent work per key across threads and tasks."""

    def __init__(self, wait_timeout: float = 120.0) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}
        self._wait_timeout = wait_timeout

    def __len__(self) -> int:
        return len(self._flights)

    def _join(self, key: str) -> tuple[_Flight[T], bool]:
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = _Flight()
            self._flights[key] = flight
            return flight, True

    def _land(
        self, key: str, flight: _Flight[T], result: T | None, error: BaseException | None
    ) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.finish(result, error)

    def do(self, key: str, work: Callable[[], T]) -> T:
        """Run ``work`` once for all concurrent callers of ``key`` (sync callers)."""
        while True:
            flight, leader = self._join(key)
            if leader:
                try:
                    result = work()
                except Exception as exc:
                    self._land(key, flight, None, exc)
                    raise
                except BaseException:  # KeyboardInterrupt, SystemExit: the leader's own
                    self._land(key, flight, None, _Abandoned())
                    raise
                self._land(key, flight, result, None)
                return result
            if not flight.event.wait(self._wait_timeout):
                raise RefreshTimeout("waited too long for a concurrent token request")
            if isinstance(flight.error, _Abandoned):
                continue
            return flight.outcome()

    async def ado(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` once for all concurrent callers of ``key`` (async callers)."""
        loop = asyncio.get_running_loop()
        while True:
            flight, leader = self._join(key)
            if leader:
                try:
                    result = await work()
                except Exception as exc:
                    self._land(key, flight, None, exc)
                    raise
                except BaseException:  # cancelled, KeyboardInterrupt: never shared
                    self._land(key, flight, None, _Abandoned())
                    raise
                self._land(key, flight, result, None)
                return result
            future = flight.add_waiter(loop)
            if future is not None:
                try:
                    await asyncio.wait_for(future, self._wait_timeout)
                except TimeoutError:
                    raise RefreshTimeout("waited too long for a concurrent token request") from None
            if isinstance(flight.error, _Abandoned):
                continue
            return flight.outcome()
