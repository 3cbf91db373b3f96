"""The refresh contract across processes on the embedded SQLite store.

Every test serves a :class:`MockProvider` on loopback, shares one SQLite file between
``spawn``-ed worker processes (each with its own :class:`Broker`, threads and asyncio tasks;
see ``tests/_mp_workers.py``) and then checks, at the provider, what the brief calls correct:
one token request per key per expiry window, every caller gets the winner's token, no
``invalid_grant`` reaches a caller, no token family is revoked, and the refresh token kept in
the store is the one the provider considers live.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _mp_workers import CallerSpec
from _mp_workers import CallResult
from _mp_workers import SharedFloat
from _mp_workers import lease_once
from _mp_workers import run_callers

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import ProviderDescriptor
from oauth2_broker_mw import ScopeSet
from oauth2_broker_mw import Secret
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw.testing import MockProvider

CTX = multiprocessing.get_context("spawn")
PROCESSES = 4
THREADS = 8
TASKS = 4
SCOPES = ("email.read",)
TENANT, PRINCIPAL = "acme", "svc-router"
RESULT_TIMEOUT = 90.0


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def provider() -> Iterator[MockProvider]:
    mock = MockProvider(access_ttl=600)
    try:
        yield mock
    finally:
        mock.close()


@pytest.fixture
def served(provider: MockProvider) -> Iterator[ProviderDescriptor]:
    with provider.serve():
        yield provider.descriptor()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    path = str(tmp_path / "tokens.db")
    SQLiteStore(path).close()  # create the file and schema before the workers race for it
    return path


def store_key(descriptor: ProviderDescriptor) -> StoreKey:
    return StoreKey.build(TENANT, PRINCIPAL, descriptor.id, ScopeSet.of(SCOPES))


def store_grant(
    provider: MockProvider,
    descriptor: ProviderDescriptor,
    db_path: str,
    *,
    expired: bool,
    now: float | None = None,
) -> TokenRecord:
    """A grant as a finished login leaves it: minted by the provider, stored in SQLite."""
    payload = provider.issue_tokens(scopes=SCOPES)
    issued = time.time() if now is None else now
    ttl = float(payload["expires_in"])
    record = TokenRecord(
        key=store_key(descriptor),
        access_token=Secret(payload["access_token"]),
        refresh_token=Secret(payload["refresh_token"]),
        issued_at=issued - (ttl + 5 if expired else 0),
        expires_at=issued - 5 if expired else issued + ttl,
        scopes=ScopeSet.of(SCOPES),
        requested_scopes=ScopeSet.of(SCOPES),
    )
    store = SQLiteStore(db_path)
    try:
        return store.put(record)
    finally:
        store.close()


def stored(db_path: str, key: StoreKey) -> TokenRecord | None:
    store = SQLiteStore(db_path)
    try:
        return store.get(key)
    finally:
        store.close()


def run_workers(
    spec: CallerSpec,
    processes: int,
    *,
    offset: SharedFloat | None = None,
    between: Callable[[int], None] | None = None,
) -> list[CallResult]:
    """Start ``processes`` workers, step them through ``spec.windows`` windows, collect."""
    start, end = CTX.Barrier(processes + 1), CTX.Barrier(processes + 1)
    results: Any = CTX.Queue()
    workers = [
        CTX.Process(target=run_callers, args=(spec, start, end, offset, results), daemon=True)
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: list[CallResult] = []
    crashes: list[str] = []
    try:
        try:
            for window in range(spec.windows):
                start.wait(RESULT_TIMEOUT)
                end.wait(RESULT_TIMEOUT)
                if between is not None:
                    between(window)
        except threading.BrokenBarrierError:
            pass  # a worker crashed and broke the barrier: its report says why
        for _ in workers:
            status, _pid, payload = results.get(timeout=RESULT_TIMEOUT)
            if status == "done":
                outcomes.extend(payload)
            else:
                crashes.append(payload)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
    assert not crashes, "\n".join(crashes)
    return outcomes


def tokens_by_window(outcomes: list[CallResult]) -> dict[int, set[str]]:
    by_window: dict[int, set[str]] = defaultdict(set)
    for outcome in outcomes:
        if outcome.token is not None:
            by_window[outcome.window].add(outcome.token)
    return by_window


def errors_of(outcomes: list[CallResult]) -> list[str]:
    return [f"window {o.window} {o.caller}: {o.error}" for o in outcomes if o.error is not None]


def assert_nothing_revoked(provider: MockProvider) -> None:
    counters = provider.counters
    assert counters["family_revoked"] == 0
    assert counters["refresh_reuse"] == 0
    assert counters["token:error:invalid_grant"] == 0


def assert_store_holds_live_grant(
    provider: MockProvider, db_path: str, key: StoreKey, access_token: str
) -> TokenRecord:
    """The stored tokens are the ones the provider issued last: no refresh token was lost."""
    record = stored(db_path, key)
    assert record is not None
    assert record.access_token.get_secret_value() == access_token
    assert record.refresh_token is not None
    refresh_info = provider.token_info(record.refresh_token.get_secret_value())
    assert refresh_info is not None
    assert refresh_info["kind"] == "refresh"
    assert refresh_info["status"] == "active"
    access_info = provider.token_info(access_token)
    assert access_info is not None
    assert access_info["status"] == "active"
    assert refresh_info["family"] == access_info["family"]
    live_refresh = provider.live_tokens(kind="refresh")
    assert [t["family"] for t in live_refresh] == [refresh_info["family"]]
    return record


# -- 1. a cold burst across processes --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
def test_cold_burst_across_processes_makes_one_token_request(
    provider: MockProvider, served: ProviderDescriptor, db_path: str, grant: str
) -> None:
    key = store_key(served)
    if grant == "refresh_token":
        initial = store_grant(provider, served, db_path, expired=True)
    provider.reset_counters()
    spec = CallerSpec(served, db_path, threads=THREADS, tasks=TASKS)

    outcomes = run_workers(spec, PROCESSES)

    assert errors_of(outcomes) == []
    assert len(outcomes) == PROCESSES * (THREADS + TASKS)
    assert len({o.pid for o in outcomes}) == PROCESSES
    tokens = {o.token for o in outcomes}
    assert len(tokens) == 1
    (token,) = tokens
    assert token is not None
    counters = provider.counters
    assert counters["token"] == 1
    assert counters[f"token:{grant}"] == 1
    assert_nothing_revoked(provider)
    record = stored(db_path, key)
    assert record is not None
    assert record.access_token.get_secret_value() == token
    if grant == "refresh_token":
        assert token != initial.access_token.get_secret_value()
        assert record.version == initial.version + 1
        assert_store_holds_live_grant(provider, db_path, key, token)


# -- 2. many expiry windows ---------------------------------------------------------------------
def _run_expiry_windows(
    provider: MockProvider,
    descriptor: ProviderDescriptor,
    db_path: str,
    *,
    windows: int,
    threads: int,
    tasks: int,
) -> None:
    # A logical clock shared by every broker and store: between two windows the parent moves
    # it (and the provider's clock) past the access token's lifetime, so each window starts
    # with every cached and stored access token expired, without waiting for real time.
    step = float(provider.access_ttl or 600) + 1.0
    offset = CTX.Value("d", 0.0, lock=False)
    key = store_key(descriptor)
    initial = store_grant(provider, descriptor, db_path, expired=True)
    provider.reset_counters()

    def next_window(_window: int) -> None:
        offset.value += step
        provider.advance_time(step)

    spec = CallerSpec(
        descriptor, db_path, threads=threads, tasks=tasks, windows=windows, mode="mixed"
    )
    outcomes = run_workers(spec, PROCESSES, offset=offset, between=next_window)

    assert errors_of(outcomes) == []  # no invalid_grant (nor anything else) reached a caller
    assert len(outcomes) == windows * PROCESSES * (threads + tasks)
    by_window = tokens_by_window(outcomes)
    assert sorted(by_window) == list(range(windows))
    # Within a window everyone shares one token; every window has its own.
    assert {w: len(t) for w, t in by_window.items() if len(t) != 1} == {}
    per_window = [next(iter(by_window[w])) for w in range(windows)]
    assert len(set(per_window)) == windows
    assert initial.access_token.get_secret_value() not in per_window
    counters = provider.counters
    assert counters["token:refresh_token"] == windows
    assert counters["token"] == windows
    assert provider.refresh_tokens_redeemed == windows
    assert_nothing_revoked(provider)
    record = assert_store_holds_live_grant(provider, db_path, key, per_window[-1])
    assert record.version == initial.version + windows


@pytest.mark.slow
def test_expiry_windows_refresh_once_per_window(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    _run_expiry_windows(provider, served, db_path, windows=20, threads=THREADS, tasks=TASKS)


@pytest.mark.slow
def test_expiry_windows_many(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    _run_expiry_windows(provider, served, db_path, windows=200, threads=THREADS, tasks=2)


@pytest.mark.slow
def test_rejected_token_storms_refresh_once_per_storm(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    """Every caller's token is rejected at once (a 401 storm): one refresh per storm.

    Window 0 hands out the stored (fresh) token; before each later window the provider kills
    the current access token and every caller in every process hands its lease back through
    ``replace_lease`` / ``areplace_lease``, as ``BrokerAuth`` does after a 401.
    """
    storms = 8
    key = store_key(served)
    initial = store_grant(provider, served, db_path, expired=False)
    provider.reset_counters()

    def reject(window: int) -> None:
        if window == storms:
            return  # after the last window: keep the final token alive for the checks
        record = stored(db_path, key)
        assert record is not None
        assert provider.invalidate_access_token(record.access_token.get_secret_value())

    spec = CallerSpec(
        served, db_path, threads=THREADS, tasks=TASKS, windows=storms + 1, mode="replace"
    )
    outcomes = run_workers(spec, PROCESSES, between=reject)

    assert errors_of(outcomes) == []
    by_window = tokens_by_window(outcomes)
    assert by_window[0] == {initial.access_token.get_secret_value()}
    assert {w: len(t) for w, t in by_window.items() if len(t) != 1} == {}
    per_window = [next(iter(by_window[w])) for w in range(storms + 1)]
    assert len(set(per_window)) == storms + 1  # each storm ends with a new token for all
    counters = provider.counters
    assert counters["token:refresh_token"] == storms
    assert counters["token"] == storms
    assert_nothing_revoked(provider)
    record = assert_store_holds_live_grant(provider, db_path, key, per_window[-1])
    assert record.version == initial.version + storms


# -- 3. a rotation race against reuse detection ---------------------------------------------
@pytest.mark.slow
def test_forced_refresh_race_between_processes_rotates_once(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    key = store_key(served)
    initial = store_grant(provider, served, db_path, expired=False)
    provider.reset_counters()
    # The winner's refresh stays in flight long enough for the other process to start its own
    # forced refresh from the same record version (which is what makes it a race: a forced
    # refresh that starts after the first one has landed is a new request and may refresh).
    provider.latency["token"] = 1.0
    spec = CallerSpec(served, db_path, threads=1, tasks=0, mode="force")

    outcomes = run_workers(spec, 2)

    assert errors_of(outcomes) == []
    assert len({o.pid for o in outcomes}) == 2
    tokens = {o.token for o in outcomes}
    assert len(tokens) == 1
    (token,) = tokens
    assert token is not None
    assert token != initial.access_token.get_secret_value()
    assert provider.counters["token:refresh_token"] == 1
    assert_nothing_revoked(provider)
    record = assert_store_holds_live_grant(provider, db_path, key, token)
    assert record.version == initial.version + 1


def test_forced_refresh_race_between_brokers_with_separate_caches(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    """Same race inside one process: two brokers, two store objects, no shared singleflight."""
    key = store_key(served)
    initial = store_grant(provider, served, db_path, expired=False)
    provider.reset_counters()
    provider.latency["token"] = 0.5
    brokers = [
        Broker(
            served, client_id="test-client", client_secret="test-secret", store=SQLiteStore(db_path)
        )
        for _ in range(2)
    ]
    lined_up = threading.Barrier(len(brokers))
    got: list[str] = []
    failures: list[BaseException] = []

    def force(broker: Broker) -> None:
        lined_up.wait(10)
        try:
            lease = broker.lease(
                tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES, force_refresh=True
            )
        except BaseException as exc:
            failures.append(exc)
        else:
            got.append(lease.access_token.get_secret_value())

    try:
        threads = [threading.Thread(target=force, args=(b,)) for b in brokers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for broker in brokers:
            broker.close()
            broker.store.close()
    assert failures == []
    assert len(got) == 2
    assert len(set(got)) == 1
    assert got[0] != initial.access_token.get_secret_value()
    assert provider.counters["token:refresh_token"] == 1
    assert_nothing_revoked(provider)
    assert_store_holds_live_grant(provider, db_path, key, got[0])


# -- 4. the lock holder is killed mid-refresh -------------------------------------------------
def _lock_row(db_path: str, name: str) -> tuple[str, float] | None:
    with sqlite3.connect(db_path, timeout=10) as conn:
        row = conn.execute("SELECT owner, expires_at FROM locks WHERE name = ?", (name,)).fetchone()
    conn.close()
    return None if row is None else (str(row[0]), float(row[1]))


def _wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


@pytest.mark.slow
def test_lock_holder_killed_mid_refresh_does_not_block_or_revoke(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    """SIGKILL the lock holder while its refresh is in flight: its lease lapses (no owner left
    to renew it), one waiting process takes over and refreshes once, the other waiter uses
    that result, and the token family survives."""
    key = store_key(served)
    initial = store_grant(provider, served, db_path, expired=True)
    provider.reset_counters()
    # The first refresh request hangs at the provider *before* the grant is looked at (and is
    # then answered with a 503), so the killed process never redeems the refresh token.
    provider.faults.add("token", "error", status=503, latency=60.0, grant_type="refresh_token")
    spec = CallerSpec(served, db_path, threads=1, tasks=0, lock_ttl=1.0)
    results: Any = CTX.Queue()
    holder = CTX.Process(target=lease_once, args=(spec, results), daemon=True)
    # Two more processes are already waiting for the lock when the holder dies.
    waiters = [
        CTX.Process(target=lease_once, args=(spec, results, True), daemon=True) for _ in range(2)
    ]
    holder.start()
    reports: list[tuple[str, int, str | None]] = []
    try:
        _wait_until(lambda: provider.counters["token:refresh_token"] == 1)
        lock = _lock_row(db_path, key.lock_name)
        assert lock is not None  # the holder is inside the provider call, holding the lock
        for waiter in waiters:
            waiter.start()
        started = [results.get(timeout=RESULT_TIMEOUT) for _ in waiters]
        assert [status for status, _, _ in started] == ["started", "started"]
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert holder.exitcode == -signal.SIGKILL
        reports = [results.get(timeout=RESULT_TIMEOUT) for _ in waiters]
    finally:
        for process in (holder, *waiters):
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
    assert holder.pid not in {pid for _, pid, _ in reports}  # it never reported anything
    assert [status for status, _, _ in reports] == ["done", "done"], reports
    waiter_tokens = {token for _, _, token in reports}
    assert len(waiter_tokens) == 1

    # A latecomer (this process) finds the refreshed token in the store.
    survivor = Broker(
        served,
        client_id="test-client",
        client_secret="test-secret",
        store=SQLiteStore(db_path),
        lock_ttl=1.0,
    )
    try:
        lease = survivor.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
    finally:
        survivor.close()
        survivor.store.close()
    assert {lease.access_token.get_secret_value()} == waiter_tokens
    token = lease.access_token.get_secret_value()
    assert token != initial.access_token.get_secret_value()
    counters = provider.counters
    assert counters["token:refresh_token"] == 2  # the dead holder's (never served), one more
    assert provider.refresh_tokens_redeemed == 1
    assert_nothing_revoked(provider)
    record = assert_store_holds_live_grant(provider, db_path, key, token)
    assert record.version == initial.version + 1
    assert _lock_row(db_path, key.lock_name) is None  # released by its owner


def test_holder_killed_after_provider_redeemed_surfaces_authorization_required(
    provider: MockProvider, served: ProviderDescriptor, db_path: str
) -> None:
    """The other outcome of a killed holder: its request did reach the provider and rotate.

    The rotated refresh token is gone with the dead process; the survivor's refresh is a
    reuse, which the provider answers with ``invalid_grant`` (and, having reuse detection,
    by revoking the family: that is the provider's decision, not the broker's). The broker
    must surface this as :class:`AuthorizationRequired` (log in again) after one request,
    keep no refresh token to replay, and not stand in a client-credentials token for the
    user's grant (the provider offers that grant here).
    """
    key = store_key(served)
    initial = store_grant(provider, served, db_path, expired=True)
    assert initial.refresh_token is not None
    dead_owner = SQLiteStore(db_path)
    try:
        assert dead_owner.acquire_lock(key.lock_name, "killed-process", 1.0)
    finally:
        dead_owner.close()
    with provider.client() as client:  # what the killed holder's request did
        response = client.post(
            "/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": initial.refresh_token.get_secret_value(),
            },
            auth=("test-client", "test-secret"),
        )
    assert response.status_code == 200
    provider.reset_counters()

    survivor = Broker(
        served,
        client_id="test-client",
        client_secret="test-secret",
        store=SQLiteStore(db_path),
        lock_ttl=1.0,
    )
    try:
        with pytest.raises(AuthorizationRequired):
            survivor.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        dead = stored(db_path, key)  # removed, or kept as a tombstone without a refresh token
        assert dead is None or dead.refresh_token is None
        with pytest.raises(AuthorizationRequired):  # nothing left to replay
            survivor.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
    finally:
        survivor.close()
        survivor.store.close()
    counters = provider.counters
    assert counters["token:refresh_token"] == 1
    assert counters["refresh_reuse"] == 1
    assert counters["token:client_credentials"] == 0
    assert _lock_row(db_path, key.lock_name) is None


# -- 5. a provider slower than the lock's ttl -------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("callers", ["threads", "tasks"])
def test_slow_provider_lock_renewal_keeps_one_refresh(
    provider: MockProvider, served: ProviderDescriptor, db_path: str, callers: str
) -> None:
    key = store_key(served)
    initial = store_grant(provider, served, db_path, expired=True)
    provider.reset_counters()
    provider.latency["token"] = 3.0  # two lock ttls: only renewal keeps the lock held
    spec = CallerSpec(
        served,
        db_path,
        threads=4 if callers == "threads" else 0,
        tasks=4 if callers == "tasks" else 0,
        lock_ttl=1.5,
    )

    outcomes = run_workers(spec, PROCESSES)

    assert errors_of(outcomes) == []
    tokens = {o.token for o in outcomes}
    assert len(tokens) == 1
    (token,) = tokens
    assert token is not None
    assert token != initial.access_token.get_secret_value()
    assert provider.counters["token"] == 1
    assert_nothing_revoked(provider)
    record = assert_store_holds_live_grant(provider, db_path, key, token)
    assert record.version == initial.version + 1


# -- when the lock fails, the fence must hold ---------------------------------------------
def _in_process_broker(provider: MockProvider, store: SQLiteStore, **kwargs: Any) -> Broker:
    """A broker reaching the provider in-process (no sockets), on its own store object."""
    return Broker(
        provider.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=provider.client(),
        async_http_client=provider.async_client(),
        **kwargs,
    )


class _SlowCAS(SQLiteStore):
    """The winner's store: its compare-and-swap waits until the test lets it write."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reached = threading.Event()
        self.proceed = threading.Event()

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        self.reached.set()
        self.proceed.wait(30)
        return super().compare_and_swap(record, expected_version=expected_version)


class _LockBlind(SQLiteStore):
    """A host whose view of the lease lock is wrong (its lock lapsed, or it cannot see it)."""

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        return True

    def release_lock(self, name: str, owner: str) -> bool:
        return True


def test_invalid_grant_loser_uses_the_winners_token_and_revokes_nothing(db_path: str) -> None:
    """When the lock does not keep a loser out, the re-read after ``invalid_grant`` does.

    The loser (whose lock lapsed) read version ``v`` and replayed the refresh token; its
    request reached the provider after the winner's rotation, so it got ``invalid_grant``.
    By then the winner had stored ``v + 1``: the loser must use that, delete nothing and
    surface no error. (A provider with reuse detection would revoke the family on the replay
    itself; avoiding the replay is the lock's job, tested above.)
    """
    provider = MockProvider(reuse_detection=False)
    descriptor = provider.descriptor()
    key = store_key(descriptor)
    initial = store_grant(provider, descriptor, db_path, expired=True)
    provider.reset_counters()
    # The loser's request (the first one) is held at the provider before it is looked at.
    provider.faults.add("token", "latency", latency=1.0, grant_type="refresh_token")
    winner = _in_process_broker(provider, SQLiteStore(db_path))
    loser = _in_process_broker(provider, _LockBlind(db_path))
    lost: list[str] = []
    loser_errors: list[BaseException] = []

    def lose() -> None:
        try:
            lease = loser.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        except BaseException as exc:
            loser_errors.append(exc)
        else:
            lost.append(lease.access_token.get_secret_value())

    thread = threading.Thread(target=lose)
    thread.start()
    try:
        _wait_until(lambda: provider.counters["token:refresh_token"] == 1)
        won = winner.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
    finally:
        thread.join(30)
        for broker in (winner, loser):
            broker.close()
            broker.store.close()
    token = won.access_token.get_secret_value()
    try:
        assert loser_errors == []
        assert lost == [token]
        counters = provider.counters
        assert counters["token:refresh_token"] == 2
        assert provider.refresh_tokens_redeemed == 1
        assert counters["refresh_reuse"] == 1  # the loser's replay, answered invalid_grant
        assert counters["family_revoked"] == 0
        record = assert_store_holds_live_grant(provider, db_path, key, token)
        assert record.version == initial.version + 1
    finally:
        provider.close()


# -- gaps found here and fixed in the broker ---------------------------------------------------
async def test_cancelled_async_leader_releases_the_lease_lock(
    provider: MockProvider, db_path: str
) -> None:
    descriptor = provider.descriptor()
    key = store_key(descriptor)
    store_grant(provider, descriptor, db_path, expired=True)
    broker = _in_process_broker(provider, SQLiteStore(db_path), lock_ttl=60.0)
    provider.latency["token"] = 30.0
    try:
        task = asyncio.ensure_future(
            broker.alease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        )
        for _ in range(3000):  # until the refresh is in flight at the provider
            if provider.counters["token:refresh_token"]:
                break
            await asyncio.sleep(0.01)
        assert _lock_row(db_path, key.lock_name) is not None
        task.cancel()  # e.g. the ASGI request that asked for the lease was abandoned
        with pytest.raises(asyncio.CancelledError):
            await task
        # Otherwise every other process would wait up to lock_ttl (here 60 s) for a dead flight.
        assert _lock_row(db_path, key.lock_name) is None
    finally:
        provider.latency.pop("token", None)
        await broker.aclose()
        broker.store.close()


def test_invalid_grant_loser_does_not_drop_a_winner_still_storing(db_path: str) -> None:
    """The fence must hold when the lock does not: lost races never lose the live grant.

    Provider without reuse detection (so the loser's replay revokes nothing by itself). The
    winner's refresh is redeemed at the provider and its compare-and-swap is slow; the loser,
    whose lock lapsed, replays the old refresh token, gets ``invalid_grant`` and re-reads the
    store while the winner is still writing.
    """
    provider = MockProvider(reuse_detection=False)
    descriptor = provider.descriptor()
    key = store_key(descriptor)
    store_grant(provider, descriptor, db_path, expired=True)
    provider.reset_counters()
    winner = _in_process_broker(provider, _SlowCAS(db_path))
    loser = _in_process_broker(provider, _LockBlind(db_path))
    slow = winner.store
    assert isinstance(slow, _SlowCAS)
    won: list[str] = []
    winner_errors: list[BaseException] = []

    def win() -> None:
        try:
            lease = winner.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        except BaseException as exc:
            winner_errors.append(exc)
        else:
            won.append(lease.access_token.get_secret_value())

    thread = threading.Thread(target=win)
    thread.start()
    try:
        assert slow.reached.wait(30)  # redeemed at the provider, now storing the rotation
        try:
            lost = loser.lease(tenant=TENANT, principal=PRINCIPAL, scopes=SCOPES)
        except AuthorizationRequired:
            lost = None
    finally:
        slow.proceed.set()
        thread.join(30)
        for broker in (winner, loser):
            broker.close()
            broker.store.close()
        provider.close()
    assert provider.refresh_tokens_redeemed == 1
    assert winner_errors == []
    assert len(won) == 1
    assert_store_holds_live_grant(provider, db_path, key, won[0])  # nothing was lost
    assert lost is None or lost.access_token.get_secret_value() == won[0]
