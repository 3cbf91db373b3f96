"""SQLiteStore beyond the conformance suite: damaged files, schema, errors, many processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import CorruptRecord
from oauth2_broker_mw._core.errors import StorageError
from oauth2_broker_mw._core.errors import StoreUnavailable
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.stores import sqlite as sqlite_module
from oauth2_broker_mw.stores.sqlite import SQLiteStore
from oauth2_broker_mw.testing.conformance import make_pending
from oauth2_broker_mw.testing.conformance import make_record

ACCESS = "at-SECRET-sqlite-5d2e"


def key_for(principal: str = "alice", tenant: str = "t1") -> StoreKey:
    return StoreKey.build(tenant, principal, "example", "read")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    yield store
    store.close()


def raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


# -- damaged rows --------------------------------------------------------------------------


def _other_key_json() -> str:
    return make_record(key_for("mallory"), "at-other").with_version(1).to_json()


CORRUPTIONS = {
    "not json": ("data", "{not json"),
    "json array": ("data", "[1, 2]"),
    "json number": ("data", 42),
    "missing fields": ("data", '{"format": 1, "secrets": {}}'),
    "unknown format": ("data", '{"format": 99}'),
    "bad float": ("data", None),  # filled in below: a real record with a broken expiry
    "another key": ("data", None),  # filled in below: a real record for another key
    "binary": ("data", b"\xff\xfe\x00garbage"),
    "text not utf8": ("data", None),  # filled in below: a real record, then a stray byte
    "version text": ("version", "seven"),
    "version zero": ("version", 0),
    "version at the integer limit": ("version", 2**63 - 1),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_row_raises_corrupt_record_and_others_stay_readable(
    store: SQLiteStore, db_path: Path, kind: str
) -> None:
    victim, neighbour = key_for("alice"), key_for("bob")
    store.put(make_record(victim, ACCESS, refresh_token=Secret("rt-SECRET-sqlite")))
    store.put(make_record(neighbour, "at-neighbour"))
    column, value = CORRUPTIONS[kind]
    if kind == "another key":
        value = _other_key_json()
    elif kind == "bad float":
        good = make_record(victim, ACCESS).with_version(1).to_json()
        value = good.replace('"issued_at":1700000000.0', '"issued_at":"yesterday"')
        assert value != good
    cell = "?"
    if kind == "text not utf8":  # sqlite3 used to raise OperationalError quoting the row
        value = make_record(victim, ACCESS).with_version(1).to_json().encode() + b"\xff"
        cell = "CAST(? AS TEXT)"
    with raw(db_path) as conn:
        conn.execute(f"UPDATE tokens SET {column} = {cell} WHERE key_id = ?", (value, victim.id))
    conn.close()

    with pytest.raises(CorruptRecord) as excinfo:
        store.get(victim)
    assert ACCESS not in str(excinfo.value)
    assert "rt-SECRET-sqlite" not in str(excinfo.value)
    assert excinfo.value.retryable is False

    loaded = store.get(neighbour)
    assert loaded is not None
    assert loaded.access_token == Secret("at-neighbour")
    assert set(store.list_keys(TenantId("t1"))) == {victim, neighbour}
    # The broker's way out of a corrupt row: delete it, then write a fresh grant.
    assert store.delete(victim) is True
    assert store.compare_and_swap(make_record(victim, "at-fresh"), expected_version=None)
    fresh = store.get(victim)
    assert fresh is not None
    assert fresh.access_token == Secret("at-fresh")


def test_put_overwrites_a_corrupt_row(store: SQLiteStore, db_path: Path) -> None:
    key = key_for()
    store.put(make_record(key, "at-1"))
    with raw(db_path) as conn:
        conn.execute("UPDATE tokens SET data = 'junk', version = 'x' WHERE key_id = ?", (key.id,))
    conn.close()
    stored = store.put(make_record(key, "at-2"))
    assert stored.version == 1
    loaded = store.get(key)
    assert loaded is not None
    assert loaded.access_token == Secret("at-2")


def test_put_and_the_refresh_index_survive_a_version_at_the_integer_limit(
    store: SQLiteStore, db_path: Path
) -> None:
    # version + 1 overflowed sqlite3's parameter binding: OverflowError, not a typed error.
    key = key_for()
    store.put(make_record(key, "at-1", refresh_token=Secret("rt-1"), expires_at=time.time() + 10))
    with raw(db_path) as conn:
        conn.execute("UPDATE tokens SET version = ? WHERE key_id = ?", (2**63 - 1, key.id))
    conn.close()
    assert store.expiring(time.time() + 3600) == []  # a damaged version is left out
    with raw(db_path) as conn:
        conn.execute("UPDATE tokens SET version = 'x' WHERE key_id = ?", (key.id,))
    conn.close()
    assert store.expiring(time.time() + 3600) == []  # int('x') raised ValueError
    assert store.put(make_record(key, "at-2")).version == 1
    loaded = store.get(key)
    assert loaded is not None and loaded.access_token == Secret("at-2")


def test_corrupt_pending_is_reported_once_then_gone(store: SQLiteStore, db_path: Path) -> None:
    pending = make_pending()
    store.put_pending(pending)
    with raw(db_path) as conn:
        conn.execute("UPDATE pending SET data = '{\"format\": 1}'")
    conn.close()
    with pytest.raises(CorruptRecord):
        store.take_pending(pending.state_key)
    assert store.take_pending(pending.state_key) is None


def test_pending_under_the_wrong_state_is_corrupt(store: SQLiteStore, db_path: Path) -> None:
    first, second = make_pending(), make_pending()
    store.put_pending(first)
    store.put_pending(second)
    with raw(db_path) as conn:
        conn.execute("DELETE FROM pending WHERE state_key = ?", (second.state_key,))
        conn.execute(
            "UPDATE pending SET state_key = ? WHERE state_key = ?",
            (second.state_key, first.state_key),
        )
    conn.close()
    with pytest.raises(CorruptRecord):
        store.take_pending(second.state_key)


# -- schema and file ------------------------------------------------------------------------


def test_new_file_is_wal_with_current_schema_version(store: SQLiteStore, db_path: Path) -> None:
    assert not db_path.exists()  # nothing is opened before the first operation
    store.put(make_record(key_for()))
    conn = raw(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tokens", "locks", "pending"} <= tables
    finally:
        conn.close()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_new_file_is_private_to_its_owner(store: SQLiteStore, db_path: Path) -> None:
    store.put(make_record(key_for(), ACCESS))
    assert db_path.stat().st_mode & 0o777 == 0o600
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists()
    assert wal.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_existing_file_keeps_its_mode(db_path: Path) -> None:
    db_path.touch(mode=0o640)
    db_path.chmod(0o640)
    store = SQLiteStore(db_path)
    try:
        store.put(make_record(key_for()))
    finally:
        store.close()
    assert db_path.stat().st_mode & 0o777 == 0o640


def test_data_survives_reopening(db_path: Path) -> None:
    first = SQLiteStore(db_path)
    stored = first.put(make_record(key_for(), ACCESS, refresh_token=Secret("rt-1")))
    first.close()
    second = SQLiteStore(db_path)
    try:
        assert second.get(key_for()) == stored
    finally:
        second.close()


def test_file_from_a_newer_release_is_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    store = SQLiteStore(db_path)
    try:
        with pytest.raises(StorageError, match="schema version 99") as excinfo:
            store.get(key_for())
        assert excinfo.value.retryable is False
    finally:
        store.close()


def test_migration_hook_upgrades_an_old_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = SQLiteStore(db_path)
    stored = old.put(make_record(key_for(), ACCESS))
    old.close()

    def add_column(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE tokens ADD COLUMN note TEXT")

    nxt = sqlite_module.SCHEMA_VERSION + 1
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", nxt)
    monkeypatch.setitem(sqlite_module.MIGRATIONS, nxt - 1, add_column)
    new = SQLiteStore(db_path)
    try:
        assert new.get(key_for()) == stored
    finally:
        new.close()
    conn = raw(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == nxt
        columns = {r[1] for r in conn.execute("PRAGMA table_info(tokens)")}
        assert "note" in columns
    finally:
        conn.close()


def test_memory_path_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="MemoryStore"):
        SQLiteStore(":memory:")


def test_repr_shows_the_path_only(store: SQLiteStore, db_path: Path) -> None:
    store.put(make_record(key_for(), ACCESS))
    assert repr(store) == f"SQLiteStore({str(db_path)!r})"


def test_closed_store_refuses_work(store: SQLiteStore) -> None:
    store.put(make_record(key_for()))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.get(key_for())


async def test_async_twins_use_the_same_file(store: SQLiteStore, db_path: Path) -> None:
    stored = await store.aput(make_record(key_for(), ACCESS))
    other = SQLiteStore(db_path)
    try:
        assert other.get(key_for()) == stored
    finally:
        other.close()
    await store.aclose()
    with pytest.raises(StorageError):
        await store.aget(key_for())


# -- failures of the file -------------------------------------------------------------------


def test_database_locked_is_store_unavailable(db_path: Path) -> None:
    store = SQLiteStore(db_path, timeout=0.05)
    try:
        store.put(make_record(key_for(), "at-1"))
        blocker = raw(db_path)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreUnavailable) as excinfo:
                store.put(make_record(key_for(), "at-2"))
            assert excinfo.value.retryable is True
            assert isinstance(excinfo.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(StoreUnavailable):
                store.acquire_lock("lock", "owner", 5)
            # WAL: readers are not blocked by a writer.
            loaded = store.get(key_for())
            assert loaded is not None
            assert loaded.access_token == Secret("at-1")
        finally:
            blocker.rollback()
            blocker.close()
        assert store.put(make_record(key_for(), "at-2")).version == 2
    finally:
        store.close()


def test_unopenable_file_is_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "no-such-dir" / "tokens.db")  # lazy: no error yet
    try:
        with pytest.raises(StoreUnavailable):
            store.get(key_for())
    finally:
        store.close()


def test_not_a_database_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    path.write_bytes(b"this is not an SQLite file, just some text" * 100)
    store = SQLiteStore(path)
    try:
        with pytest.raises(StorageError) as excinfo:
            store.get(key_for())
        assert not isinstance(excinfo.value, StoreUnavailable)
    finally:
        store.close()


# -- housekeeping and fallbacks --------------------------------------------------------------


def test_expired_pendings_and_locks_are_purged_on_put_pending(
    db_path: Path,
) -> None:
    now = [1_000_000.0]
    store = SQLiteStore(db_path, clock=lambda: now[0])
    try:
        store.acquire_lock("old-lock", "owner", 10)
        store.acquire_lock("live-lock", "owner", 1000)
        abandoned = make_pending(created_at=now[0], expires_at=now[0] + 10)
        store.put_pending(abandoned)
        now[0] += 100
        store.put_pending(make_pending(created_at=now[0], expires_at=now[0] + 10))
        conn = raw(db_path)
        try:
            assert conn.execute("SELECT count(*) FROM pending").fetchone()[0] == 1
            names = [r[0] for r in conn.execute("SELECT name FROM locks")]
            assert names == ["live-lock"]
        finally:
            conn.close()
    finally:
        store.close()


def test_lock_expiry_follows_the_injected_clock(db_path: Path) -> None:
    now = [5_000.0]
    store = SQLiteStore(db_path, clock=lambda: now[0])
    try:
        assert store.acquire_lock("lock", "a", 30)
        now[0] += 29
        assert not store.acquire_lock("lock", "b", 30)
        now[0] += 2
        assert store.acquire_lock("lock", "b", 30)
    finally:
        store.close()


def test_take_pending_without_returning_still_redeems_once(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_use_returning", False)
    pending = make_pending()
    store.put_pending(pending)
    barrier = threading.Barrier(8)

    def take() -> object:
        barrier.wait(timeout=30)
        return store.take_pending(pending.state_key)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: take(), range(8)))
    assert [r for r in results if r is not None] == [pending]


def test_non_positive_lock_ttl_is_a_configuration_error(store: SQLiteStore) -> None:
    with pytest.raises(ConfigurationError):
        store.acquire_lock("lock", "owner", 0)


# -- several processes ------------------------------------------------------------------------

PROCESSES = 4
THREADS = 8
INCREMENTS = 5
HOLDS = 5


def _cas_increments(path: str, key_data: dict[str, str]) -> tuple[int, int]:
    """In a child process: THREADS threads each make INCREMENTS successful CAS increments."""
    key = StoreKey.from_dict(key_data)
    store = SQLiteStore(path, timeout=30)

    def worker() -> tuple[int, int]:
        done = conflicts = 0
        while done < INCREMENTS:
            current = store.get(key)
            assert current is not None
            count = int(str(current.metadata["count"]))
            nxt = make_record(key, f"at-{count + 1}", metadata={"count": count + 1})
            if store.compare_and_swap(nxt, expected_version=current.version) is None:
                conflicts += 1
            else:
                done += 1
        return done, conflicts

    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            results = list(pool.map(lambda _: worker(), range(THREADS)))
    finally:
        store.close()
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _hold_lock(path: str, marker: str, log: str) -> int:
    """In a child process: take the lock HOLDS times; count moments with two holders."""
    store = SQLiteStore(path, timeout=30)
    violations = held = 0
    owner = f"{os.getpid()}-{uuid.uuid4().hex}"
    try:
        while held < HOLDS:
            if not store.acquire_lock("shared-lock", owner, 30):
                time.sleep(0.001)
                continue
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                violations += 1
            else:
                os.close(fd)
                with open(log, "a") as fh:
                    fh.write(f"{owner}\n")
                time.sleep(0.002)
                os.remove(marker)
            if not store.release_lock("shared-lock", owner):
                violations += 1
            held += 1
    finally:
        store.close()
    return violations


@pytest.mark.slow
def test_cas_from_many_processes_and_threads_loses_no_update(db_path: Path) -> None:
    key = key_for()
    setup = SQLiteStore(db_path)
    setup.put(make_record(key, "at-0", metadata={"count": 0}))
    setup.close()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=ctx) as pool:
        futures = [
            pool.submit(_cas_increments, str(db_path), key.to_dict()) for _ in range(PROCESSES)
        ]
        results = [f.result(timeout=100) for f in futures]
    successes = sum(r[0] for r in results)
    assert successes == PROCESSES * THREADS * INCREMENTS
    check = SQLiteStore(db_path)
    try:
        final = check.get(key)
    finally:
        check.close()
    assert final is not None
    assert final.version == 1 + successes
    assert final.metadata["count"] == successes  # every increment saw its predecessor


@pytest.mark.slow
def test_lock_from_many_processes_never_has_two_holders(db_path: Path, tmp_path: Path) -> None:
    marker, log = tmp_path / "holder", tmp_path / "holds.log"
    SQLiteStore(db_path).close()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=ctx) as pool:
        futures = [
            pool.submit(_hold_lock, str(db_path), str(marker), str(log)) for _ in range(PROCESSES)
        ]
        violations = [f.result(timeout=100) for f in futures]
    assert violations == [0] * PROCESSES
    assert len(log.read_text().splitlines()) == PROCESSES * HOLDS
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: threads at fork
def test_forked_child_opens_its_own_connections(store: SQLiteStore, db_path: Path) -> None:
    # gunicorn --preload: the store was used in the parent before the workers forked.
    store.put(make_record(key_for("parent"), "at-parent"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            loaded = store.get(key_for("parent"))
            store.put(make_record(key_for("child"), "at-child"))
            code = 0 if loaded is not None and store.acquire_lock("l", "child", 30) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = store.get(key_for("child"))
    assert child is not None
    assert child.access_token == Secret("at-child")
    assert store.acquire_lock("l", "parent", 30) is False  # the child's lock is visible
    assert store.put(make_record(key_for("parent"), "at-parent-2")).version == 2


def test_two_stores_on_one_file_see_each_others_writes(db_path: Path) -> None:
    a, b = SQLiteStore(db_path), SQLiteStore(db_path)
    try:
        first = a.put(make_record(key_for(), "at-a"))
        assert b.compare_and_swap(make_record(key_for(), "at-b"), expected_version=1)
        assert a.compare_and_swap(make_record(key_for(), "at-late"), expected_version=1) is None
        loaded = a.get(key_for())
        assert loaded is not None
        assert loaded.access_token == Secret("at-b")
        assert loaded.version == first.version + 1
        assert isinstance(loaded, TokenRecord)
    finally:
        a.close()
        b.close()


def test_many_threads_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    """The first use of a new file is serialised: no SQLITE_BUSY from the WAL switch."""
    from oauth2_broker_mw import StoreKey
    from oauth2_broker_mw.testing.conformance import make_record

    errors: list[BaseException] = []
    for trial in range(10):
        store = SQLiteStore(tmp_path / f"fresh-{trial}.db")
        barrier = threading.Barrier(16)

        def worker(
            i: int, store: SQLiteStore = store, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            try:
                store.put(make_record(StoreKey.build(f"t{i}", "p", "prov", ["s"])))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store.close()
        assert errors == []


def test_a_version_1_file_gets_the_refresh_index_backfilled(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    due = make_record(key_for("due"), ACCESS, refresh_token=Secret("rt"), expires_at=100.0)
    store.put(due)
    store.put(make_record(key_for("plain"), ACCESS, expires_at=50.0))  # not renewable
    store.close()
    conn = raw(db_path)  # make it a release-1 file again: no index columns
    with conn:
        conn.execute("DROP INDEX tokens_expires_at")
        conn.execute("DROP INDEX tokens_idle_since")
        conn.execute("ALTER TABLE tokens DROP COLUMN expires_at")
        conn.execute("ALTER TABLE tokens DROP COLUMN idle_since")
        conn.execute("DROP TABLE gates")  # added by version 3
        conn.execute("DROP TABLE calls")  # added by version 4
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    upgraded = SQLiteStore(db_path)
    try:
        assert [(d.key, d.at) for d in upgraded.expiring(1000.0)] == [(key_for("due"), 100.0)]
        assert [d.key for d in upgraded.idle("example", 2e9)] == [key_for("due")]
    finally:
        upgraded.close()
    conn = raw(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT key_id FROM tokens WHERE expires_at IS NOT NULL "
            "AND expires_at < 5 ORDER BY expires_at LIMIT 10"
        ).fetchall()
        assert "tokens_expires_at" in str(plan)  # an index range scan, not a table scan
    finally:
        conn.close()
