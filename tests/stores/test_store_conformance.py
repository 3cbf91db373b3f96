"""The conformance suite on the stores shipped in the core package, plus MemoryStore details."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from _fakes import FakeClock

from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import CorruptRecord
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore
from oauth2_broker_mw.testing.conformance import StoreConformance
from oauth2_broker_mw.testing.conformance import make_pending
from oauth2_broker_mw.testing.conformance import make_record


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        store = SQLiteStore(tmp_path / "tokens.db")
        yield store
        store.close()


# -- MemoryStore details -----------------------------------------------------------------------


def test_memory_lock_and_pending_expiry_follow_the_injected_clock() -> None:
    clock = FakeClock(1_000_000.0)
    store = MemoryStore(clock=clock)
    assert store.acquire_lock("lock", "a", 30)
    pending = make_pending(created_at=clock.now, expires_at=clock.now + 60)
    store.put_pending(pending)
    clock.now += 29
    assert not store.acquire_lock("lock", "b", 30)
    clock.now += 2
    assert store.acquire_lock("lock", "b", 30)
    clock.now += 30
    assert store.take_pending(pending.state_key) is None


def test_memory_store_drops_expired_pendings_and_locks_on_its_own() -> None:
    clock = FakeClock(1_000_000.0)
    store = MemoryStore(clock=clock)
    for i in range(1000):
        store.put_pending(make_pending(created_at=clock.now, expires_at=clock.now + 1))
        store.acquire_lock(f"lock-{i}", "owner", 1)
        clock.now += 2  # everything written so far has expired
    assert len(store._pending) < 300
    assert len(store._locks) < 300


def test_memory_store_keeps_live_pendings_when_purging() -> None:
    clock = FakeClock(1_000_000.0)
    store = MemoryStore(clock=clock)
    live = make_pending(created_at=clock.now, expires_at=clock.now + 10_000)
    store.put_pending(live)
    for _ in range(1000):
        store.put_pending(make_pending(created_at=clock.now, expires_at=clock.now + 1))
        clock.now += 2
    assert store.take_pending(live.state_key) == live


def test_non_positive_lock_ttl_is_a_configuration_error() -> None:
    store = MemoryStore()
    with pytest.raises(ConfigurationError):
        store.acquire_lock("lock", "owner", 0)
    with pytest.raises(ConfigurationError):
        store.renew_lock("lock", "owner", -1)


def test_memory_corrupt_entry_is_reported_as_corrupt_record() -> None:
    store = MemoryStore()
    key = StoreKey.build("t1", "alice", "example", "read")
    store.put(make_record(key, "at-SECRET-memory"))
    store._tokens[key.id] = replace(store._tokens[key.id], data="{broken")
    with pytest.raises(CorruptRecord) as excinfo:
        store.get(key)
    assert "at-SECRET-memory" not in str(excinfo.value)
