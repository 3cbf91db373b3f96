"""Durable rotation: once the provider has rotated the refresh token, nothing loses it.

Each fault is a real one, struck after the provider answered and before the broker wrote:
another process holding SQLite's write lock, and our own Redis and PostgreSQL instances
stopped (and started again) from the test. On the main of 2026-12-05 (issue 10) every one of
them lost the rotation: the caller got ``StoreUnavailable``, the store kept the spent refresh
token, the next refresh presented it, and MockProvider's reuse detection revoked the grant.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakes import FakeClock
from _fakes import login
from _own_services import ServerProcess
from _own_services import own_postgres
from _own_services import own_redis
from _own_services import postgres_dsn
from _services import require_module

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import StoreUnavailable
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.events import Event
from oauth2_broker_mw.events import RotationFlushed
from oauth2_broker_mw.events import RotationUnsaved
from oauth2_broker_mw.refresher import Refresher
from oauth2_broker_mw.stores.base import TokenStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER, SCOPES = "acme", "alice", ["openid", "email"]

require_module("redis", "redis")  # both are in the [all] extra the suite installs
require_module("psycopg", "postgres")


class _AfterAnswer:
    """A MockProvider client that runs ``fault`` once the token endpoint has answered a
    refresh: the rotation exists at the provider, the broker has not written it yet. The
    sync and the async client share ``faults``: each fault strikes once."""

    def __init__(self, inner: Any, faults: list[Callable[[], None]]) -> None:
        self.inner = inner
        self.faults = faults

    def _after(self, method: str, url: str, kwargs: dict[str, Any]) -> None:
        content = kwargs.get("content") or b""
        if method == "POST" and url.endswith("/token") and b"refresh_token" in content:
            while self.faults:
                self.faults.pop(0)()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.inner.request(method, url, **kwargs)
        self._after(method, url, kwargs)
        return response


class _AsyncAfterAnswer(_AfterAnswer):
    async def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
        response = await self.inner.request(method, url, **kwargs)
        self._after(method, url, kwargs)
        return response


class _Rig:
    def __init__(self, store: TokenStore, clock: FakeClock, *, write_retry_for: float) -> None:
        self.clock = clock
        self.mp = MockProvider(clock=clock)
        self.faults: list[Callable[[], None]] = []
        self.sync = _AfterAnswer(self.mp.client(), self.faults)
        self.asyn = _AsyncAfterAnswer(self.mp.async_client(), self.faults)
        self.store = store
        self.broker = Broker(
            self.mp.descriptor(),
            client_id="test-client",
            client_secret="test-secret",
            store=store,
            http_client=self.sync,
            async_http_client=self.asyn,
            clock=clock,
            lock_ttl=30.0,
            write_retry_for=write_retry_for,
        )
        self._events: list[Event] = []
        self.broker.subscribe(self._events.append)
        self.first = login(self.broker, self.mp, scopes=SCOPES)

    @property
    def events(self) -> list[Event]:
        self.broker.events.flush()
        return list(self._events)

    def strike(self, fault: Callable[[], None]) -> None:
        self.faults.append(fault)

    def refresh(self, mode: str) -> TokenRecord:
        if mode == "sync":
            return self.broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
        return asyncio.run(self.broker.arefresh(tenant=TENANT, principal=USER, scopes=SCOPES))

    def stored(self) -> TokenRecord:
        record = self.store.get(self.first.key)
        assert record is not None
        return record

    def assert_nothing_lost(self, rotated: TokenRecord) -> None:
        """The rotation is in the store, the grant is alive, the next refresh needs no login."""
        assert rotated.refresh_token is not None and self.first.refresh_token is not None
        assert rotated.refresh_token != self.first.refresh_token  # the provider rotated
        assert self.stored().refresh_token == rotated.refresh_token
        assert self.broker.unsaved_rotations == 0
        self.clock.advance(3600 + 1)
        lease = self.broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
        assert lease.access_token != rotated.access_token
        assert self.mp.counters["refresh_reuse"] == 0
        assert self.mp.counters["family_revoked"] == 0

    def close(self) -> None:
        self.broker.close()
        self.mp.close()


# -- SQLite: another process holds the write lock ------------------------------------------
_HOLD_WRITE_LOCK = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
    """
)


class _WriteLock:
    """Another process holding SQLite's write lock on ``path`` until ``release()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def take(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_WRITE_LOCK, str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc is not None:
            self.proc.communicate("\n", timeout=10)
            self.proc = None


@pytest.fixture
def sqlite_rig(tmp_path: Path) -> Iterator[tuple[_Rig, _WriteLock]]:
    path = tmp_path / "tokens.db"
    rig = _Rig(SQLiteStore(path, timeout=0.2), FakeClock(), write_retry_for=0.5)
    lock = _WriteLock(path)
    yield rig, lock
    lock.release()
    rig.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rotation_the_locked_sqlite_store_refused_is_served_then_stored(
    sqlite_rig: tuple[_Rig, _WriteLock], mode: str
) -> None:
    rig, lock = sqlite_rig
    rig.strike(lock.take)
    rotated = rig.refresh(mode)  # main: StoreUnavailable, the new pair dropped
    assert rotated.refresh_token != rig.first.refresh_token
    assert rig.broker.unsaved_rotations == 1
    assert [type(e) for e in rig.events if isinstance(e, RotationUnsaved)] == [RotationUnsaved]
    assert rig.stored().refresh_token == rig.first.refresh_token  # the write lock held
    # While the store is still locked, the caller is served the new token from memory.
    lease = rig.broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert lease.access_token == rotated.access_token
    lock.release()
    assert rig.broker.flush_unsaved() == 0
    assert any(isinstance(e, RotationFlushed) for e in rig.events)
    rig.assert_nothing_lost(rotated)


def test_the_next_lease_writes_the_held_rotation_before_refreshing_again(
    sqlite_rig: tuple[_Rig, _WriteLock],
) -> None:
    """No explicit flush: the next refresh must redeem the new refresh token, not the spent
    one still in the store."""
    rig, lock = sqlite_rig
    rig.strike(lock.take)
    rotated = rig.refresh("sync")
    lock.release()
    rig.clock.advance(3600 + 1)
    again = rig.broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert again.refresh_token not in (rotated.refresh_token, rig.first.refresh_token)
    assert rig.stored().refresh_token == again.refresh_token
    assert rig.mp.counters["refresh_reuse"] == 0
    assert rig.mp.counters["family_revoked"] == 0
    assert rig.broker.unsaved_rotations == 0


def test_while_the_store_still_refuses_no_spent_token_is_presented(
    sqlite_rig: tuple[_Rig, _WriteLock],
) -> None:
    rig, lock = sqlite_rig
    rig.strike(lock.take)
    rig.refresh("sync")
    redeemed = rig.mp.counters["token:refresh_token"]
    with pytest.raises(StoreUnavailable):  # the refresh lock lives in the locked store
        rig.broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert rig.mp.counters["token:refresh_token"] == redeemed  # nothing sent to the provider
    assert rig.broker.unsaved_rotations == 1
    lock.release()


def test_close_writes_what_the_store_refused(sqlite_rig: tuple[_Rig, _WriteLock]) -> None:
    rig, lock = sqlite_rig
    rig.strike(lock.take)
    rotated = rig.refresh("sync")
    lock.release()
    rig.broker.close()
    assert rig.stored().refresh_token == rotated.refresh_token


# -- Redis and PostgreSQL stopped and started again ----------------------------------------
def _later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    thread = threading.Timer(seconds, action)
    thread.start()
    return thread


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with own_redis(tmp_path / "redis") as server:
        yield server


def _redis_rig(server: ServerProcess, write_retry_for: float) -> _Rig:
    from oauth2_broker_mw.stores.redis import RedisStore

    store = RedisStore(f"redis://127.0.0.1:{server.port}/0")
    return _Rig(store, FakeClock(), write_retry_for=write_retry_for)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_short_redis_outage_during_a_rotation_loses_nothing(
    redis_server: ServerProcess, mode: str
) -> None:
    rig = _redis_rig(redis_server, write_retry_for=15.0)
    try:
        restarted: list[threading.Thread] = []
        rig.strike(lambda: (redis_server.stop(), restarted.append(_later(1.0, redis_server.start))))
        rotated = rig.refresh(mode)  # retried while Redis was down, stored once it was back
        restarted[0].join()
        assert not any(isinstance(e, RotationUnsaved) for e in rig.events)
        rig.assert_nothing_lost(rotated)
    finally:
        rig.close()


def test_a_long_redis_outage_keeps_the_rotation_until_redis_is_back(
    redis_server: ServerProcess,
) -> None:
    rig = _redis_rig(redis_server, write_retry_for=0.3)
    try:
        rig.strike(redis_server.stop)
        rotated = rig.refresh("sync")
        assert rig.broker.unsaved_rotations == 1
        assert rig.broker.flush_unsaved() == 1  # still down: still held
        redis_server.start()
        assert rig.broker.flush_unsaved() == 0
        rig.assert_nothing_lost(rotated)
    finally:
        rig.close()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[ServerProcess]:
    with own_postgres() as server:
        yield server


def test_a_postgres_restart_during_a_rotation_loses_nothing(
    postgres_server: ServerProcess,
) -> None:
    from oauth2_broker_mw.stores.postgres import PostgresStore

    store = PostgresStore(postgres_dsn(postgres_server), schema="durable_rotation")
    rig = _Rig(store, FakeClock(), write_retry_for=20.0)
    try:
        restarted: list[threading.Thread] = []
        rig.strike(
            lambda: (postgres_server.stop(), restarted.append(_later(1.0, postgres_server.start)))
        )
        rotated = rig.refresh("sync")
        restarted[0].join()
        assert not any(isinstance(e, RotationUnsaved) for e in rig.events)
        rig.assert_nothing_lost(rotated)
    finally:
        rig.close()
        store.close()


def test_a_refresher_sweep_writes_what_the_store_refused(
    sqlite_rig: tuple[_Rig, _WriteLock],
) -> None:
    rig, lock = sqlite_rig
    rig.strike(lock.take)
    rotated = rig.refresh("sync")
    refresher = Refresher([rig.broker], window=0.0)
    assert refresher.sweep().unsaved == 1  # WAL readers are not blocked; the write still is
    lock.release()
    assert refresher.sweep().unsaved == 0
    rig.assert_nothing_lost(rotated)


# -- SQLite on a disk that fills up during the provider call --------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (needs root and mount rights: skipped where the machine does
    not allow it, as the issue says), unmounted afterwards."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the disk under ``directory`` is full; returns it (delete to free)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        return filler  # ENOSPC: full
    finally:
        os.close(fd)


def test_a_disk_that_fills_during_a_rotation_loses_nothing(small_disk: Path) -> None:
    rig = _Rig(SQLiteStore(small_disk / "tokens.db", timeout=0.2), FakeClock(), write_retry_for=0.3)
    try:
        fillers: list[Path] = []
        rig.strike(lambda: fillers.append(_fill(small_disk)))
        rotated = rig.refresh("sync")  # main: StorageError (disk full), the new pair dropped
        assert rig.broker.unsaved_rotations == 1
        fillers[0].unlink()  # the operator frees space
        assert rig.broker.flush_unsaved() == 0
        rig.assert_nothing_lost(rotated)
    finally:
        rig.close()
