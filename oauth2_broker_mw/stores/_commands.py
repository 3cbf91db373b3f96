"""One source for sync and async stores: operations as sans-IO generators, driven twice.

Owns: the ``Op`` type (a generator that yields driver commands and receives their results),
the sync and async drivers that run one, ``CommandStore`` (a base class that turns a store's
operation factories into every ``TokenStore`` method, sync and async, without copying any
behaviour), ``PerLoop`` (an async resource bound to the event loop that created it) and
``redact_url``.

Each store writes an operation once, for example (Redis)::

    def _op_get(self, key):
        version, data = yield RedisCall("hmget", (self._record_key(key), ["version", "data"]))
        return decode(version, data)

and says how to execute commands synchronously (``_run``) and asynchronously (``_arun``);
``get`` and ``aget`` both come from ``_op_get``. This is the shape of psycopg's
``generators.py`` + ``waiting.py``.

Must not import: any store driver (redis, psycopg), httpx/httpx2, the broker.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
import urllib.parse
from collections.abc import AsyncGenerator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Generic
from typing import TypeAlias
from typing import TypeVar

from .._core.errors import CorruptRecord
from .._core.errors import StoreUnavailable
from .._core.errors import sealed
from .._core.model import PendingAuthorization
from .._core.model import ProviderId
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from .._driver import arun
from .._driver import run
from .base import PROBE_KEY
from .base import DueRecord
from .base import check_bucket
from .base import check_limit
from .base import check_ttl
from .base import check_window

__all__ = ["CommandStore", "Op", "PerLoop", "adrive", "drive", "redact_url", "unreachable"]

T = TypeVar("T")
C = TypeVar("C")

#: An operation: yields commands, receives each command's result, returns the answer.
Op: TypeAlias = Generator[Any, Any, T]


def drive(op: Op[T], execute: Callable[[Any], object]) -> T:
    """Run ``op`` with blocking ``execute`` (the one generator driver, psycopg's waiting.py).

    A :class:`CorruptRecord` leaves :func:`sealed`: the frames below held the raw row it could
    not read (the driver's last result, the operation's locals), tokens and all.
    """
    try:
        return run(op, execute)
    except CorruptRecord as exc:
        raise sealed(exc) from None


async def adrive(op: Op[T], execute: Callable[[Any], Awaitable[object]]) -> T:
    """:func:`drive`, awaiting ``execute``."""
    try:
        return await arun(op, execute)
    except CorruptRecord as exc:
        raise sealed(exc) from None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for reprs and messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{user}:***@{host}{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def unreachable(server: str, host: object, port: object, exc: StoreUnavailable) -> StoreUnavailable:
    """The error a store's ``check()`` raises when its server does not answer."""
    return StoreUnavailable(
        f"cannot reach {server} at {host or 'localhost'}:{port}: {exc}; is the server running, "
        "and are the host and port in the store's URL right?"
    )


class PerLoop(Generic[C]):
    """An async resource (client, pool) per running event loop, created on first use.

    Async drivers bind their sockets to the loop that opened them; a store used from two
    loops (a test suite, a thread running its own loop) gets one resource per loop.
    The resource is closed by :meth:`aclose_current`, or else when its loop shuts down:
    a guard async generator is parked on the loop, and ``loop.shutdown_asyncgens()`` (which
    ``asyncio.run`` and test runners call) finalizes it, closing the resource on its own
    loop instead of leaking its sockets.
    """

    def __init__(
        self,
        factory: Callable[[], Awaitable[C]],
        closer: Callable[[C], Awaitable[None]],
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._items: dict[asyncio.AbstractEventLoop, tuple[C, AsyncGenerator[None, None]]] = {}
        self._lock = threading.Lock()

    async def get(self) -> C:
        loop = asyncio.get_running_loop()
        entry = self._items.get(loop)
        if entry is not None:
            return entry[0]
        created = await self._factory()
        guard = self._guard(created)
        with self._lock:
            entry = self._items.setdefault(loop, (created, guard))
        if entry[0] is not created:  # another task of this loop won the race
            await self._closer(created)
            return entry[0]
        await guard.__anext__()  # parks the guard on this loop (asyncgen hooks track it)
        return created

    async def _guard(self, item: C) -> AsyncGenerator[None, None]:
        closed = False
        try:
            yield
            closed = True  # resumed by aclose_current: it closes the item itself
        finally:
            if not closed:
                with self._lock:
                    for loop, entry in list(self._items.items()):
                        if entry[0] is item:
                            del self._items[loop]
                await self._closer(item)

    async def aclose_current(self) -> None:
        """Close this loop's resource now (and forget loops that are gone)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._items.pop(loop, None)
            for other in [lp for lp in self._items if lp.is_closed()]:
                del self._items[other]
        if entry is not None:
            item, guard = entry
            with contextlib.suppress(StopAsyncIteration):
                await guard.__anext__()
            await self._closer(item)


class CommandStore(abc.ABC):
    """A ``TokenStore`` whose every operation is written once as an :data:`Op`.

    Subclasses implement the ``_op_*`` factories and the two drivers ``_run`` / ``_arun``
    (which acquire a connection, drive the op on it and convert driver errors).
    """

    # -- drivers ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, op: Op[T]) -> T: ...

    @abc.abstractmethod
    async def _arun(self, op: Op[T]) -> T: ...

    # -- operations -------------------------------------------------------------------------
    @abc.abstractmethod
    def _op_get(self, key: StoreKey) -> Op[TokenRecord | None]: ...

    @abc.abstractmethod
    def _op_write(
        self, record: TokenRecord, expected_version: int | None, *, unconditional: bool
    ) -> Op[TokenRecord | None]: ...

    @abc.abstractmethod
    def _op_delete(self, key: StoreKey, expected_version: int | None) -> Op[bool]: ...

    def _op_delete_keys(self, keys: Sequence[StoreKey]) -> Op[int]:
        """Bulk delete; this default is one delete per key (stores override it)."""
        removed = 0
        for key in keys:
            removed += bool((yield from self._op_delete(key, None)))
        return removed

    @abc.abstractmethod
    def _op_delete_pending(self, tenant: TenantId) -> Op[int]: ...

    @abc.abstractmethod
    def _op_list_keys(self, tenant: TenantId, principal: str | None) -> Op[list[StoreKey]]: ...

    @abc.abstractmethod
    def _op_list_tenants(self) -> Op[list[TenantId]]: ...

    @abc.abstractmethod
    def _op_expiring(self, before: float, limit: int) -> Op[list[DueRecord]]: ...

    @abc.abstractmethod
    def _op_idle(self, provider: str, issued_before: float, limit: int) -> Op[list[DueRecord]]: ...

    @abc.abstractmethod
    def _op_acquire_lock(self, name: str, owner: str, ttl: float) -> Op[bool]: ...

    @abc.abstractmethod
    def _op_renew_lock(self, name: str, owner: str, ttl: float) -> Op[bool]: ...

    @abc.abstractmethod
    def _op_release_lock(self, name: str, owner: str) -> Op[bool]: ...

    @abc.abstractmethod
    def _op_put_pending(self, pending: PendingAuthorization) -> Op[None]: ...

    @abc.abstractmethod
    def _op_take_pending(self, state_key: str) -> Op[PendingAuthorization | None]: ...

    @abc.abstractmethod
    def _op_backoff_until(self, name: str) -> Op[float]: ...

    @abc.abstractmethod
    def _op_set_backoff(self, name: str, until: float, now: float) -> Op[float]: ...

    @abc.abstractmethod
    def _op_take_token(
        self, name: str, now: float, interval: float, burst: int, max_wait: float
    ) -> Op[tuple[bool, float]]: ...

    @abc.abstractmethod
    def _op_count_calls(self, name: str, now: float, window: float) -> Op[int]: ...

    # -- the health check (check_store) -----------------------------------------------------
    def _op_check(self) -> Op[None]:
        """One cheap round trip: read a key nothing is ever stored under."""
        yield from self._op_get(PROBE_KEY)

    def _explain_unavailable(self, exc: StoreUnavailable) -> StoreUnavailable:
        """``exc`` as :meth:`check` raises it: name the server and say what to do."""
        return exc

    @contextlib.contextmanager
    def _explaining(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as exc:
            raise self._explain_unavailable(exc) from exc

    def check(self) -> None:
        """Raise :class:`~oauth2_broker_mw.StorageError` now if the store cannot be used."""
        with self._explaining():
            self._run(self._op_check())

    async def acheck(self) -> None:
        with self._explaining():
            await self._arun(self._op_check())

    # -- the TokenStore surface, sync -------------------------------------------------------
    def get(self, key: StoreKey) -> TokenRecord | None:
        return self._run(self._op_get(key))

    def put(self, record: TokenRecord) -> TokenRecord:
        stored = self._run(self._op_write(record, None, unconditional=True))
        assert stored is not None  # an unconditional write cannot conflict
        return stored

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        return self._run(self._op_write(record, expected_version, unconditional=False))

    def delete(self, key: StoreKey, *, expected_version: int | None = None) -> bool:
        return self._run(self._op_delete(key, expected_version))

    def delete_keys(self, keys: Sequence[StoreKey]) -> int:
        return self._run(self._op_delete_keys(list(keys)))

    def delete_pending(self, tenant: TenantId) -> int:
        return self._run(self._op_delete_pending(TenantId(tenant)))

    def list_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]:
        return self._run(self._op_list_keys(TenantId(tenant), principal))

    def list_tenants(self) -> list[TenantId]:
        """Every tenant with at least one stored record (used by ``reencrypt_all``)."""
        return self._run(self._op_list_tenants())

    def expiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]:
        return self._run(self._op_expiring(float(before), check_limit(limit)))

    def idle(self, provider: str, issued_before: float, *, limit: int = 1000) -> list[DueRecord]:
        return self._run(
            self._op_idle(ProviderId(provider), float(issued_before), check_limit(limit))
        )

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        return self._run(self._op_acquire_lock(name, owner, check_ttl(ttl)))

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        return self._run(self._op_renew_lock(name, owner, check_ttl(ttl)))

    def release_lock(self, name: str, owner: str) -> bool:
        return self._run(self._op_release_lock(name, owner))

    def put_pending(self, pending: PendingAuthorization) -> None:
        self._run(self._op_put_pending(pending))

    def take_pending(self, state_key: str) -> PendingAuthorization | None:
        return self._run(self._op_take_pending(state_key))

    def backoff_until(self, name: str) -> float:
        return self._run(self._op_backoff_until(name))

    def set_backoff(self, name: str, until: float, *, now: float) -> float:
        return self._run(self._op_set_backoff(name, float(until), float(now)))

    def take_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]:
        return self._run(
            self._op_take_token(name, float(now), *check_bucket(interval, burst, max_wait))
        )

    def count_calls(self, name: str, *, now: float, window: float) -> int:
        return self._run(self._op_count_calls(name, float(now), check_window(window)))

    # -- the TokenStore surface, async ------------------------------------------------------
    async def aget(self, key: StoreKey) -> TokenRecord | None:
        return await self._arun(self._op_get(key))

    async def aput(self, record: TokenRecord) -> TokenRecord:
        stored = await self._arun(self._op_write(record, None, unconditional=True))
        assert stored is not None
        return stored

    async def acompare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        return await self._arun(self._op_write(record, expected_version, unconditional=False))

    async def adelete(self, key: StoreKey, *, expected_version: int | None = None) -> bool:
        return await self._arun(self._op_delete(key, expected_version))

    async def adelete_keys(self, keys: Sequence[StoreKey]) -> int:
        return await self._arun(self._op_delete_keys(list(keys)))

    async def adelete_pending(self, tenant: TenantId) -> int:
        return await self._arun(self._op_delete_pending(TenantId(tenant)))

    async def alist_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]:
        return await self._arun(self._op_list_keys(TenantId(tenant), principal))

    async def alist_tenants(self) -> list[TenantId]:
        return await self._arun(self._op_list_tenants())

    async def aexpiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]:
        return await self._arun(self._op_expiring(float(before), check_limit(limit)))

    async def aidle(
        self, provider: str, issued_before: float, *, limit: int = 1000
    ) -> list[DueRecord]:
        return await self._arun(
            self._op_idle(ProviderId(provider), float(issued_before), check_limit(limit))
        )

    async def aacquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        return await self._arun(self._op_acquire_lock(name, owner, check_ttl(ttl)))

    async def arenew_lock(self, name: str, owner: str, ttl: float) -> bool:
        return await self._arun(self._op_renew_lock(name, owner, check_ttl(ttl)))

    async def arelease_lock(self, name: str, owner: str) -> bool:
        return await self._arun(self._op_release_lock(name, owner))

    async def aput_pending(self, pending: PendingAuthorization) -> None:
        await self._arun(self._op_put_pending(pending))

    async def atake_pending(self, state_key: str) -> PendingAuthorization | None:
        return await self._arun(self._op_take_pending(state_key))

    async def abackoff_until(self, name: str) -> float:
        return await self._arun(self._op_backoff_until(name))

    async def aset_backoff(self, name: str, until: float, *, now: float) -> float:
        return await self._arun(self._op_set_backoff(name, float(until), float(now)))

    async def atake_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]:
        return await self._arun(
            self._op_take_token(name, float(now), *check_bucket(interval, burst, max_wait))
        )

    async def acount_calls(self, name: str, *, now: float, window: float) -> int:
        return await self._arun(self._op_count_calls(name, float(now), check_window(window)))
