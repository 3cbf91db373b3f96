"""The store conformance suite: what every ``TokenStore`` must do, as pytest tests.

Owns: ``StoreConformance`` (subclass it in a test module and provide a ``store`` fixture)
and the record builders it uses. Every scenario runs twice, through the sync methods and
through the async ``a*`` twins, from one body: the ``api`` fixture is a ``StoreRunner``
that calls one or the other. Async twins run on an event loop the suite owns (one per
test), so the suite needs neither pytest-asyncio nor its auto mode.
Must not import: httpx/httpx2, any store driver, any concrete store.

Usage::

    import pytest
    from oauth2_broker_mw.testing.conformance import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            store = MyStore(...)
            yield store
            store.close()

The ``store`` fixture must be synchronous and return an empty store. The suite takes a few
seconds per store (lock and pending expiry sleep for a fraction of a second).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from typing import Final
from typing import Literal
from typing import ParamSpec
from typing import TypeAlias
from typing import TypeVar

import pytest

from .._core.errors import ConfigurationError
from .._core.model import JSONValue
from .._core.model import PendingAuthorization
from .._core.model import ScopeSet
from .._core.model import Secret
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from ..stores.base import DueRecord
from ..stores.base import ProviderGate
from ..stores.base import RefreshIndex
from ..stores.base import TokenStore

__all__ = ["StoreConformance", "StoreRunner", "make_pending", "make_record"]

P = ParamSpec("P")
R = TypeVar("R")
Call: TypeAlias = tuple[tuple[Any, ...], dict[str, Any]]

RACERS: Final = 16
LOCK_TTL: Final = 0.2
PAST_TTL: Final = 0.35  # sleep long enough for a LOCK_TTL lock to have expired


def make_record(
    key: StoreKey,
    access_token: str = "at-conformance",
    **fields: Any,
) -> TokenRecord:
    """A record for ``key``; every other field can be overridden by keyword."""
    values: dict[str, Any] = {"issued_at": 1_700_000_000.0}
    values.update(fields)
    return TokenRecord(key=key, access_token=Secret(access_token), **values)


def make_pending(
    state: str | None = None, *, expires_in: float = 600.0, **fields: Any
) -> PendingAuthorization:
    """A pending login whose ``expires_at`` is ``expires_in`` seconds from now."""
    now = time.time()
    owner = _key()  # the suite's one tenant, principal and provider
    values: dict[str, Any] = {
        "state": Secret(state or f"state-{uuid.uuid4().hex}"),
        "tenant": owner.tenant,
        "principal": owner.principal,
        "provider": owner.provider,
        "scopes": ScopeSet.of("openid email"),
        "redirect_uri": "https://app.example/callback",
        "code_verifier": Secret("verifier-" + "v" * 40),
        "nonce": Secret("nonce-conformance"),
        "created_at": now,
        "expires_at": now + expires_in,
    }
    values.update(fields)
    return PendingAuthorization(**values)


class StoreRunner:
    """Calls a store's sync methods, or its async twins on the suite's loop, with one API."""

    def __init__(
        self,
        store: TokenStore,
        mode: Literal["sync", "async"],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if mode == "async" and loop is None:
            raise ValueError("async mode needs an event loop")
        self.store = store
        self.mode = mode
        self._loop = loop

    def __repr__(self) -> str:
        return f"StoreRunner({self.mode})"

    def _do(
        self,
        sync_fn: Callable[P, R],
        async_fn: Callable[P, Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        if self._loop is None:
            return sync_fn(*args, **kwargs)
        return self._loop.run_until_complete(_awaited(async_fn(*args, **kwargs)))

    def get(self, key: StoreKey) -> TokenRecord | None:
        return self._do(self.store.get, self.store.aget, key)

    def put(self, record: TokenRecord) -> TokenRecord:
        return self._do(self.store.put, self.store.aput, record)

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        return self._do(
            self.store.compare_and_swap,
            self.store.acompare_and_swap,
            record,
            expected_version=expected_version,
        )

    def delete(self, key: StoreKey, *, expected_version: int | None = None) -> bool:
        return self._do(
            self.store.delete, self.store.adelete, key, expected_version=expected_version
        )

    def list_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]:
        return self._do(self.store.list_keys, self.store.alist_keys, tenant, principal)

    def _index(self) -> RefreshIndex:
        store = self.store
        if not isinstance(store, RefreshIndex):
            pytest.skip(f"{type(store).__name__} has no refresh index (RefreshIndex)")
        return store

    def expiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]:
        index = self._index()
        return self._do(index.expiring, index.aexpiring, before, limit=limit)

    def idle(self, provider: str, issued_before: float, *, limit: int = 1000) -> list[DueRecord]:
        index = self._index()
        return self._do(index.idle, index.aidle, provider, issued_before, limit=limit)

    def list_tenants(self) -> list[TenantId]:
        index = self._index()
        return self._do(index.list_tenants, index.alist_tenants)

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        return self._do(self.store.acquire_lock, self.store.aacquire_lock, name, owner, ttl)

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        return self._do(self.store.renew_lock, self.store.arenew_lock, name, owner, ttl)

    def release_lock(self, name: str, owner: str) -> bool:
        return self._do(self.store.release_lock, self.store.arelease_lock, name, owner)

    def put_pending(self, pending: PendingAuthorization) -> None:
        self._do(self.store.put_pending, self.store.aput_pending, pending)

    def take_pending(self, state_key: str) -> PendingAuthorization | None:
        return self._do(self.store.take_pending, self.store.atake_pending, state_key)

    def _gate(self) -> ProviderGate:
        store = self.store
        if not isinstance(store, ProviderGate):
            pytest.skip(f"{type(store).__name__} has no provider gate (ProviderGate)")
        return store

    def backoff_until(self, name: str) -> float:
        gate = self._gate()
        return self._do(gate.backoff_until, gate.abackoff_until, name)

    def set_backoff(self, name: str, until: float, *, now: float) -> float:
        gate = self._gate()
        return self._do(gate.set_backoff, gate.aset_backoff, name, until, now=now)

    def take_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]:
        gate = self._gate()
        return self._do(
            gate.take_token,
            gate.atake_token,
            name,
            now=now,
            interval=interval,
            burst=burst,
            max_wait=max_wait,
        )

    def count_calls(self, name: str, *, now: float, window: float) -> int:
        gate = self._gate()
        return self._do(gate.count_calls, gate.acount_calls, name, now=now, window=window)

    def concurrently(
        self,
        sync_fn: Callable[..., R],
        async_fn: Callable[..., Awaitable[R]],
        calls: Sequence[Call],
    ) -> list[R]:
        """Start every call at once: threads released by a barrier, or gathered tasks."""
        if self._loop is None:
            barrier = threading.Barrier(len(calls))

            def run(call: Call) -> R:
                barrier.wait(timeout=30)
                return sync_fn(*call[0], **call[1])

            with ThreadPoolExecutor(max_workers=len(calls)) as pool:
                return list(pool.map(run, calls))

        async def gather() -> list[R]:
            return list(await asyncio.gather(*(async_fn(*a, **kw) for a, kw in calls)))

        return self._loop.run_until_complete(gather())


async def _awaited(awaitable: Awaitable[R]) -> R:
    return await awaitable


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Shut a loop down the way test runners do: async generators first, then executors."""
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _run_on_own_loop(coro: Awaitable[R]) -> R:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_awaited(coro))
    finally:
        _close_loop(loop)


def _asyncio_run_with_watchdog(main: Callable[[], Awaitable[R]], seconds: float = 30.0) -> R:
    """``asyncio.run(main())`` in a thread; fail (rather than hang) if it never returns."""
    outcome: list[R] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(asyncio.run(_awaited(main())))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="conformance-asyncio-run", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(
            f"asyncio.run() did not return within {seconds:g} s: the store left tasks on the "
            "loop that do not finish when asyncio.run cancels them at exit"
        )
    if errors:
        raise errors[0]
    return outcome[0]


def _key(tenant: str = "tenant-a", principal: str = "alice", scopes: str = "read") -> StoreKey:
    return StoreKey.build(tenant, principal, "example", scopes)


def _assert_holds(
    loaded: TokenRecord | None, access_token: str, *, version: int | None = None
) -> None:
    """The store gave back a record with ``access_token`` (at ``version``, when given)."""
    assert loaded is not None
    assert loaded.access_token == Secret(access_token)
    if version is not None:
        assert loaded.version == version


def _assert_one_winner(
    results: Sequence[TokenRecord | None],
    loaded: TokenRecord | None,
    *,
    version: int,
    won: str = "won",
) -> None:
    """Exactly one racer's write went in, and the store now holds it at ``version``."""
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, f"{len(winners)} of {RACERS} racers {won}"
    assert loaded is not None
    assert loaded.version == version
    assert loaded.access_token == winners[0].access_token


class StoreConformance:
    """Subclass in a ``Test*`` class and define a ``store`` fixture returning an empty store."""

    @pytest.fixture
    def store(self) -> TokenStore:
        raise NotImplementedError("subclass StoreConformance and define a `store` fixture")

    @pytest.fixture(params=["sync", "async"])
    def api(self, request: pytest.FixtureRequest, store: TokenStore) -> Iterator[StoreRunner]:
        if request.param == "sync":
            yield StoreRunner(store, "sync")
            return
        loop = asyncio.new_event_loop()
        try:
            yield StoreRunner(store, "async", loop)
        finally:
            _close_loop(loop)

    # -- the contract itself ----------------------------------------------------------------
    def test_store_implements_the_protocol(self, store: TokenStore) -> None:
        assert isinstance(store, TokenStore)

    # -- get / put --------------------------------------------------------------------------
    def test_get_missing_returns_none(self, api: StoreRunner) -> None:
        assert api.get(_key()) is None

    def test_round_trip_preserves_every_field(self, api: StoreRunner) -> None:
        key = _key(scopes="read write")
        metadata: dict[str, JSONValue] = {
            "tenant_region": "eu",
            "nested": {"list": [1, 2.5, True, None], "text": "é ✓ 日本"},
            "empty": {},
        }
        record = make_record(
            key,
            "at-" + "x" * 2000,
            token_type="DPoP",
            refresh_token=Secret("rt-round-trip"),
            id_token=Secret("eyJhbGciOiJSUzI1NiJ9." + "y" * 4000 + ".sig"),
            issued_at=1_700_000_000.125,
            expires_at=1_700_003_600.5,
            refresh_token_expires_at=1_702_592_000.0,
            scopes=ScopeSet.of("read write"),
            requested_scopes=ScopeSet.of("read write admin"),
            grant="client_credentials",
            metadata=metadata,
            revoked_at=1_700_000_100.0,
        )
        stored = api.put(record)
        assert stored == record.with_version(stored.version)
        loaded = api.get(key)
        assert loaded is not None
        assert loaded == stored
        assert loaded.access_token.get_secret_value() == "at-" + "x" * 2000
        assert loaded.refresh_token == Secret("rt-round-trip")
        assert loaded.id_token == record.id_token
        assert loaded.metadata == metadata
        assert loaded.requested_scopes == ScopeSet.of("read write admin")

    def test_round_trip_keeps_absent_fields_absent(self, api: StoreRunner) -> None:
        key = _key()
        record = make_record(key)  # no refresh/id token, unknown expiry, empty metadata
        api.put(record)
        loaded = api.get(key)
        assert loaded is not None
        assert loaded.refresh_token is None
        assert loaded.id_token is None
        assert loaded.expires_at is None
        assert loaded.refresh_token_expires_at is None
        assert loaded.revoked_at is None
        assert dict(loaded.metadata) == {}
        assert loaded.scopes == ScopeSet()

    def test_put_sets_versions_from_one_and_increments(self, api: StoreRunner) -> None:
        key = _key()
        first = api.put(make_record(key, "at-1", version=42))  # the caller's version is ignored
        second = api.put(make_record(key, "at-2"))
        third = api.put(make_record(key, "at-3"))
        assert (first.version, second.version, third.version) == (1, 2, 3)
        _assert_holds(api.get(key), "at-3", version=3)

    def test_stored_record_is_a_copy(self, api: StoreRunner) -> None:
        key = _key()
        metadata: dict[str, JSONValue] = {"team": "blue"}
        api.put(make_record(key, metadata=metadata))
        metadata["team"] = "red"
        loaded = api.get(key)
        assert loaded is not None
        assert loaded.metadata == {"team": "blue"}

    def test_keys_differing_only_by_scope_are_separate(self, api: StoreRunner) -> None:
        read, write = _key(scopes="read"), _key(scopes="write")
        api.put(make_record(read, "at-read"))
        api.put(make_record(write, "at-write"))
        _assert_holds(api.get(read), "at-read")
        _assert_holds(api.get(write), "at-write")

    # -- compare-and-swap -------------------------------------------------------------------
    def test_cas_with_none_creates_only_when_absent(self, api: StoreRunner) -> None:
        key = _key()
        created = api.compare_and_swap(make_record(key, "at-1"), expected_version=None)
        assert created is not None
        assert created.version == 1
        assert created.access_token == Secret("at-1")
        assert api.compare_and_swap(make_record(key, "at-2"), expected_version=None) is None
        _assert_holds(api.get(key), "at-1", version=1)

    def test_cas_at_current_version_writes_next_version(self, api: StoreRunner) -> None:
        key = _key()
        current = api.put(make_record(key, "at-1"))
        swapped = api.compare_and_swap(
            make_record(key, "at-2", refresh_token=Secret("rt-2")),
            expected_version=current.version,
        )
        assert swapped is not None
        assert swapped.version == current.version + 1
        loaded = api.get(key)
        assert loaded == swapped
        assert loaded is not None
        assert loaded.refresh_token == Secret("rt-2")

    def test_cas_at_stale_version_conflicts_and_changes_nothing(self, api: StoreRunner) -> None:
        key = _key()
        stale = api.put(make_record(key, "at-1"))
        api.put(make_record(key, "at-2"))
        assert (
            api.compare_and_swap(make_record(key, "at-3"), expected_version=stale.version) is None
        )
        _assert_holds(api.get(key), "at-2", version=2)

    def test_cas_with_version_on_absent_key_conflicts(self, api: StoreRunner) -> None:
        key = _key()
        assert api.compare_and_swap(make_record(key), expected_version=1) is None
        assert api.get(key) is None

    def test_cas_race_has_exactly_one_winner(self, api: StoreRunner) -> None:
        key = _key()
        base = api.put(make_record(key, "at-base"))
        calls: list[Call] = [
            ((make_record(key, f"at-racer-{i}"),), {"expected_version": base.version})
            for i in range(RACERS)
        ]
        results = api.concurrently(api.store.compare_and_swap, api.store.acompare_and_swap, calls)
        _assert_one_winner(results, api.get(key), version=base.version + 1)

    def test_cas_race_on_absent_key_has_exactly_one_creator(self, api: StoreRunner) -> None:
        key = _key()
        calls: list[Call] = [
            ((make_record(key, f"at-racer-{i}"),), {"expected_version": None})
            for i in range(RACERS)
        ]
        results = api.concurrently(api.store.compare_and_swap, api.store.acompare_and_swap, calls)
        _assert_one_winner(results, api.get(key), version=1, won="created the record")

    def test_cas_race_between_threads_and_tasks_has_one_winner(self, store: TokenStore) -> None:
        # One store serves sync and async callers of one process at the same time.
        key = _key()
        base = store.put(make_record(key, "at-base"))
        half = RACERS // 2
        barrier = threading.Barrier(half + 1)

        def in_thread(i: int) -> TokenRecord | None:
            barrier.wait(timeout=30)
            return store.compare_and_swap(
                make_record(key, f"at-thread-{i}"), expected_version=base.version
            )

        async def in_tasks() -> list[TokenRecord | None]:
            await asyncio.to_thread(barrier.wait, 30)
            return list(
                await asyncio.gather(
                    *(
                        store.acompare_and_swap(
                            make_record(key, f"at-task-{i}"), expected_version=base.version
                        )
                        for i in range(half)
                    )
                )
            )

        with ThreadPoolExecutor(max_workers=half) as pool:
            threaded = [pool.submit(in_thread, i) for i in range(half)]
            tasked = _run_on_own_loop(in_tasks())
            results = [f.result(timeout=30) for f in threaded] + tasked
        _assert_one_winner(results, store.get(key), version=base.version + 1)

    def test_async_twins_work_under_asyncio_run_on_successive_loops(
        self, store: TokenStore
    ) -> None:
        # The plain way to run async code: asyncio.run(main()), possibly once per command.
        # asyncio.run cancels leftover tasks *before* it finalizes async generators, so a
        # store must not leave loop-bound work behind that hangs or errors at that point.
        key = _key()

        async def main(n: int) -> list[TokenRecord | None]:
            await store.aput(make_record(key, f"at-loop-{n}"))
            current = await store.aget(key)
            assert current is not None
            return list(
                await asyncio.gather(
                    *(store.aget(key) for _ in range(4)),
                    *(
                        store.acompare_and_swap(
                            make_record(key, f"at-loop-{n}-{i}"), expected_version=current.version
                        )
                        for i in range(4)
                    ),
                )
            )

        for n in range(2):
            results = _asyncio_run_with_watchdog(functools.partial(main, n))
            assert all(r is not None for r in results[:4])
            assert sum(r is not None for r in results[4:]) == 1
        loaded = store.get(key)
        assert loaded is not None
        assert loaded.access_token.get_secret_value().startswith("at-loop-1-")

    # -- delete -----------------------------------------------------------------------------
    def test_delete_missing_returns_false(self, api: StoreRunner) -> None:
        assert api.delete(_key()) is False
        assert api.delete(_key(), expected_version=1) is False

    def test_delete_removes_the_record(self, api: StoreRunner) -> None:
        key, other = _key(), _key(principal="bob")
        api.put(make_record(key))
        api.put(make_record(other))
        assert api.delete(key) is True
        assert api.get(key) is None
        assert api.get(other) is not None
        assert api.delete(key) is False

    def test_delete_with_expected_version(self, api: StoreRunner) -> None:
        key = _key()
        api.put(make_record(key, "at-1"))
        current = api.put(make_record(key, "at-2"))
        assert api.delete(key, expected_version=current.version - 1) is False
        assert api.get(key) is not None
        assert api.delete(key, expected_version=current.version) is True
        assert api.get(key) is None

    def test_put_after_delete_creates_again(self, api: StoreRunner) -> None:
        key = _key()
        api.put(make_record(key, "at-1"))
        api.delete(key)
        assert api.compare_and_swap(make_record(key, "at-2"), expected_version=None) is not None
        _assert_holds(api.get(key), "at-2")

    # -- list_keys --------------------------------------------------------------------------
    def test_list_keys_by_tenant_and_principal(self, api: StoreRunner) -> None:
        alice_read = _key("t1", "alice", "read")
        alice_write = _key("t1", "alice", "write")
        bob_read = _key("t1", "bob", "read")
        other_tenant = _key("t2", "alice", "read")
        for key in (alice_read, alice_write, bob_read, other_tenant):
            api.put(make_record(key))
        assert set(api.list_keys(TenantId("t1"))) == {alice_read, alice_write, bob_read}
        assert set(api.list_keys(TenantId("t1"), "alice")) == {alice_read, alice_write}
        assert api.list_keys(TenantId("t1"), "carol") == []
        assert api.list_keys(TenantId("t3")) == []
        api.delete(alice_write)
        assert set(api.list_keys(TenantId("t1"), "alice")) == {alice_read}

    def test_list_keys_does_not_confuse_separator_characters(self, api: StoreRunner) -> None:
        # Naive "tenant:principal" or "tenant|principal" keys would make these collide.
        keys = [
            _key("a", "b:c"),
            _key("a:b", "c"),
            _key("a|b", "c"),
            _key("a", "b|c"),
            _key("a:", "b"),
            _key("a*", "b"),
            _key("a%", "b_"),
            _key("1:a", "b"),
        ]
        for i, key in enumerate(keys):
            api.put(make_record(key, f"at-{i}"))
        assert len({key.id for key in keys}) == len(keys)
        for key in keys:
            assert set(api.list_keys(key.tenant)) == {k for k in keys if k.tenant == key.tenant}
            assert set(api.list_keys(key.tenant, key.principal)) == {key}
        for i, key in enumerate(keys):
            _assert_holds(api.get(key), f"at-{i}")

    # -- the refresh index ------------------------------------------------------------------
    def test_expiring_lists_renewable_records_soonest_first(self, api: StoreRunner) -> None:
        t0 = 1_700_000_000.0
        soon, later, cc = _key("t1", "a"), _key("t1", "b"), _key("t2", "svc")
        no_refresh, revoked, unknown = _key("t1", "c"), _key("t1", "d"), _key("t1", "e")
        api.put(make_record(later, refresh_token=Secret("rt-b"), expires_at=t0 + 200))
        api.put(make_record(soon, refresh_token=Secret("rt-a"), expires_at=t0 + 100))
        api.put(make_record(cc, grant="client_credentials", expires_at=t0 + 150))
        api.put(make_record(no_refresh, expires_at=t0 + 10))  # nothing can renew it
        api.put(make_record(revoked, refresh_token=Secret("rt-d"), expires_at=t0, revoked_at=t0))
        api.put(make_record(unknown, refresh_token=Secret("rt-e")))  # expiry unknown
        api.put(make_record(soon, refresh_token=Secret("rt-a2"), expires_at=t0 + 50))  # v2
        due = api.expiring(t0 + 1000)
        assert [(d.key, d.version, d.at) for d in due] == [
            (soon, 2, t0 + 50),
            (cc, 1, t0 + 150),
            (later, 1, t0 + 200),
        ]
        assert [d.key for d in api.expiring(t0 + 200)] == [soon, cc]  # before T, exclusive
        assert [d.key for d in api.expiring(t0 + 1000, limit=1)] == [soon]
        assert api.expiring(t0) == []
        assert "rt-" not in repr(due)

    def test_expiring_follows_rotation_revocation_and_delete(self, api: StoreRunner) -> None:
        t0 = 1_700_000_000.0
        key = _key("t1", "a")
        first = api.put(make_record(key, refresh_token=Secret("rt-1"), expires_at=t0 + 10))
        assert [d.key for d in api.expiring(t0 + 100)] == [key]
        rotated = make_record(key, refresh_token=Secret("rt-2"), expires_at=t0 + 3600)
        assert api.compare_and_swap(rotated, expected_version=first.version) is not None
        assert api.expiring(t0 + 100) == []
        assert [d.version for d in api.expiring(t0 + 7200)] == [2]
        tombstone = make_record(key, expires_at=t0 + 3600, revoked_at=t0)
        api.put(tombstone)
        assert api.expiring(t0 + 7200) == []
        assert api.idle("example", t0 + 7200) == []
        api.put(rotated)
        assert api.delete(key)
        assert api.expiring(t0 + 7200) == []
        assert api.idle("example", t0 + 7200) == []

    def test_idle_lists_refresh_tokens_by_provider_oldest_first(self, api: StoreRunner) -> None:
        t0 = 1_700_000_000.0
        old, new = _key("t1", "old"), _key("t1", "new")
        other = StoreKey.build("t1", "old", "other-provider", "read")
        bare = _key("t1", "bare")
        api.put(make_record(new, refresh_token=Secret("rt"), issued_at=t0 + 500))
        api.put(make_record(old, refresh_token=Secret("rt"), issued_at=t0))
        api.put(make_record(other, refresh_token=Secret("rt"), issued_at=t0))
        api.put(make_record(bare, issued_at=t0))  # no refresh token: nothing to keep alive
        assert [(d.key, d.at) for d in api.idle("example", t0 + 1000)] == [
            (old, t0),
            (new, t0 + 500),
        ]
        assert [d.key for d in api.idle("example", t0 + 500)] == [old]
        assert [d.key for d in api.idle("other-provider", t0 + 1000)] == [other]
        assert api.idle("nobody", t0 + 1000) == []
        assert [d.key for d in api.idle("example", t0 + 1000, limit=1)] == [old]

    def test_refresh_index_keeps_odd_identifiers_apart(self, api: StoreRunner) -> None:
        keys = [_key("a", "b:c"), _key("a:b", "c"), _key("1:a", "b|2:x"), _key("é|", "ü")]
        for i, key in enumerate(keys):
            api.put(make_record(key, refresh_token=Secret("rt"), expires_at=1_700_000_000.0 + i))
        assert [d.key for d in api.expiring(1_800_000_000.0)] == keys
        assert sorted(api.list_tenants()) == sorted({k.tenant for k in keys})

    def test_list_tenants(self, api: StoreRunner) -> None:
        assert api.list_tenants() == []
        for key in (_key("t2", "a"), _key("t1", "a"), _key("t1", "b")):
            api.put(make_record(key))
        assert sorted(api.list_tenants()) == ["t1", "t2"]

    # -- lease locks ------------------------------------------------------------------------
    def test_lock_is_exclusive_and_owned(self, api: StoreRunner) -> None:
        name = f"refresh:{uuid.uuid4().hex}"
        assert api.acquire_lock(name, "owner-a", 30) is True
        assert api.acquire_lock(name, "owner-b", 30) is False
        assert api.acquire_lock(name, "owner-a", 30) is True  # the holder may re-acquire
        assert api.renew_lock(name, "owner-b", 30) is False
        assert api.renew_lock(name, "owner-a", 30) is True
        assert api.release_lock(name, "owner-b") is False
        assert api.acquire_lock(name, "owner-c", 30) is False  # b's release did nothing
        assert api.release_lock(name, "owner-a") is True
        assert api.release_lock(name, "owner-a") is False
        assert api.acquire_lock(name, "owner-b", 30) is True

    def test_locks_are_independent_by_name(self, api: StoreRunner) -> None:
        assert api.acquire_lock("lock-one", "owner-a", 30) is True
        assert api.acquire_lock("lock-two", "owner-b", 30) is True
        assert api.renew_lock("lock-one", "owner-b", 30) is False
        assert api.release_lock("lock-two", "owner-b") is True
        assert api.acquire_lock("lock-one", "owner-b", 30) is False

    def test_renew_and_release_of_missing_lock_fail(self, api: StoreRunner) -> None:
        assert api.renew_lock("never-taken", "owner-a", 30) is False
        assert api.release_lock("never-taken", "owner-a") is False

    def test_expired_lock_can_be_taken_and_old_owner_loses_it(self, api: StoreRunner) -> None:
        expiring, shortened = f"refresh:{uuid.uuid4().hex}", f"refresh:{uuid.uuid4().hex}"
        assert api.acquire_lock(expiring, "owner-a", LOCK_TTL) is True
        assert api.acquire_lock(shortened, "owner-a", 30) is True
        assert api.renew_lock(shortened, "owner-a", LOCK_TTL) is True  # expiry = now + ttl
        time.sleep(PAST_TTL)
        assert api.renew_lock(expiring, "owner-a", 30) is False  # too late: it has expired
        assert api.acquire_lock(expiring, "owner-b", 30) is True
        assert api.renew_lock(expiring, "owner-a", 30) is False
        assert api.release_lock(expiring, "owner-a") is False
        assert api.acquire_lock(expiring, "owner-c", 30) is False  # b holds it now
        assert api.acquire_lock(shortened, "owner-b", 30) is True

    def test_lock_race_has_exactly_one_holder(self, api: StoreRunner) -> None:
        name = f"refresh:{uuid.uuid4().hex}"
        calls: list[Call] = [((name, f"owner-{i}", 30), {}) for i in range(RACERS)]
        results = api.concurrently(api.store.acquire_lock, api.store.aacquire_lock, calls)
        assert results.count(True) == 1

    # -- the provider gate: back-off and token buckets ---------------------------------------
    def test_backoff_is_open_until_set(self, api: StoreRunner) -> None:
        assert api.backoff_until(f"backoff|{uuid.uuid4().hex}") == 0.0

    def test_backoff_keeps_the_later_time(self, api: StoreRunner) -> None:
        name, now = f"backoff|{uuid.uuid4().hex}", 1_900_000_000.0
        assert api.set_backoff(name, now + 30.5, now=now) == now + 30.5
        assert api.set_backoff(name, now + 10, now=now) == now + 30.5  # never shortened
        assert api.backoff_until(name) == now + 30.5
        assert api.set_backoff(name, now + 60.25, now=now) == now + 60.25
        assert api.backoff_until(name) == now + 60.25

    def test_backoffs_are_independent_by_name(self, api: StoreRunner) -> None:
        one, two, now = f"backoff|{uuid.uuid4().hex}", f"backoff|{uuid.uuid4().hex}", 1e9
        api.set_backoff(one, now + 5, now=now)
        assert api.backoff_until(two) == 0.0
        assert api.take_token(one, now=now, interval=1.0, burst=1) == (True, 0.0)
        assert api.backoff_until(one) == now + 5  # a bucket of that name left it alone

    def test_token_bucket_grants_the_burst_then_denies_with_the_wait(
        self, api: StoreRunner
    ) -> None:
        name, now = f"bucket|{uuid.uuid4().hex}", 1_900_000_000.0
        for _ in range(3):
            assert api.take_token(name, now=now, interval=6.0, burst=3) == (True, 0.0)
        granted, wait = api.take_token(name, now=now, interval=6.0, burst=3)
        assert not granted
        assert abs(wait - 6.0) < 1e-6
        granted, wait = api.take_token(name, now=now + 2, interval=6.0, burst=3)
        assert not granted
        assert abs(wait - 4.0) < 1e-6
        assert api.take_token(name, now=now + 6, interval=6.0, burst=3) == (True, 0.0)
        assert api.take_token(name, now=now + 6, interval=6.0, burst=3)[0] is False

    def test_token_bucket_reserves_up_to_max_wait(self, api: StoreRunner) -> None:
        name, now = f"bucket|{uuid.uuid4().hex}", 1_900_000_000.0
        waits = [
            api.take_token(name, now=now, interval=10.0, burst=1, max_wait=25.0) for _ in range(4)
        ]
        assert [granted for granted, _ in waits] == [True, True, True, False]
        assert [round(wait, 6) for _, wait in waits] == [0.0, 10.0, 20.0, 30.0]

    def test_token_bucket_refuses_bad_arguments(self, api: StoreRunner) -> None:
        for bad in ({"interval": 0.0, "burst": 1}, {"interval": 1.0, "burst": 0}):
            with pytest.raises(ConfigurationError):
                api.take_token("bucket|bad", now=1e9, **bad)  # type: ignore[arg-type]

    def test_token_bucket_race_grants_exactly_the_burst(self, api: StoreRunner) -> None:
        gate = api._gate()
        name, now = f"bucket|{uuid.uuid4().hex}", 1_900_000_000.0
        kwargs = {"now": now, "interval": 60.0, "burst": 5}
        calls: list[Call] = [((name,), kwargs) for _ in range(RACERS)]
        results = api.concurrently(gate.take_token, gate.atake_token, calls)
        assert [granted for granted, _ in results].count(True) == 5

    def test_call_counts_slide_over_two_windows(self, api: StoreRunner) -> None:
        name, start = f"calls|{uuid.uuid4().hex}", 1_900_000_020.0  # a window boundary
        assert [api.count_calls(name, now=start, window=60.0) for _ in range(4)] == [0, 1, 2, 3]
        # Half a window later: half of the previous window's 4 calls still count.
        assert api.count_calls(name, now=start + 90, window=60.0) == 2
        assert api.count_calls(name, now=start + 90, window=60.0) == 3
        # Two windows on, nothing recent is left; other names never count.
        assert api.count_calls(name, now=start + 240, window=60.0) == 0
        assert api.count_calls(f"{name}-other", now=start + 240, window=60.0) == 0

    def test_call_counts_refuse_a_bad_window(self, api: StoreRunner) -> None:
        for bad in (0.0, -1.0, float("inf"), float("nan")):
            with pytest.raises(ConfigurationError):
                api.count_calls("calls|bad", now=1e9, window=bad)

    def test_call_count_race_counts_every_call(self, api: StoreRunner) -> None:
        gate = api._gate()
        name, now = f"calls|{uuid.uuid4().hex}", 1_900_000_020.0
        calls: list[Call] = [((name,), {"now": now, "window": 60.0}) for _ in range(RACERS)]
        results = api.concurrently(gate.count_calls, gate.acount_calls, calls)
        assert sorted(results) == list(range(RACERS))  # each saw a distinct count before it

    # -- pending authorizations -------------------------------------------------------------
    def test_pending_can_be_taken_exactly_once(self, api: StoreRunner) -> None:
        pending = make_pending(issuer="https://issuer.example", extra={"return_to": "/home"})
        api.put_pending(pending)
        taken = api.take_pending(pending.state_key)
        assert taken == pending
        assert taken is not None
        assert taken.code_verifier == pending.code_verifier
        assert taken.nonce == pending.nonce
        assert taken.state == pending.state
        assert api.take_pending(pending.state_key) is None

    def test_pending_without_optional_secrets_round_trips(self, api: StoreRunner) -> None:
        pending = make_pending(code_verifier=None, nonce=None)
        api.put_pending(pending)
        assert api.take_pending(pending.state_key) == pending

    def test_unknown_pending_is_none(self, api: StoreRunner) -> None:
        assert api.take_pending(PendingAuthorization.key_for("never-issued")) is None

    def test_pendings_are_independent(self, api: StoreRunner) -> None:
        first, second = make_pending(), make_pending()
        api.put_pending(first)
        api.put_pending(second)
        assert api.take_pending(second.state_key) == second
        assert api.take_pending(first.state_key) == first

    def test_expired_pending_is_none(self, api: StoreRunner) -> None:
        expired = make_pending(expires_in=LOCK_TTL)
        live = make_pending()
        api.put_pending(expired)
        api.put_pending(live)
        time.sleep(PAST_TTL)
        assert api.take_pending(expired.state_key) is None
        assert api.take_pending(live.state_key) == live

    def test_pending_race_redeems_once(self, api: StoreRunner) -> None:
        pending = make_pending()
        api.put_pending(pending)
        calls: list[Call] = [((pending.state_key,), {}) for _ in range(RACERS)]
        results = api.concurrently(api.store.take_pending, api.store.atake_pending, calls)
        assert [r for r in results if r is not None] == [pending]

    # -- secrets ----------------------------------------------------------------------------
    def test_repr_never_shows_secrets(self, api: StoreRunner) -> None:
        secrets = ["at-SECRET-7f3a", "rt-SECRET-91bc", "id-SECRET-44de", "state-SECRET-0a1b"]
        key = _key()
        record = api.put(
            make_record(
                key, secrets[0], refresh_token=Secret(secrets[1]), id_token=Secret(secrets[2])
            )
        )
        api.put_pending(make_pending(secrets[3]))
        shown = " ".join(
            [repr(api.store), str(api.store), repr(record), repr(api.get(key)), str(record)]
        )
        for secret in secrets:
            assert secret not in shown
