"""The embedded store: one SQLite file shared by the threads and processes of one host.

Owns: ``SQLiteStore``: its schema and migrations, its connection pool, and the translation
of ``sqlite3`` errors into :class:`StorageError` / :class:`StoreUnavailable`.
Must not import: httpx/httpx2, asyncio (the async twins come from ``ThreadedAsyncMixin``),
any other store driver.

Concurrency design:

* WAL journal, ``synchronous=NORMAL``, a ``busy_timeout``: readers never block the writer,
  and writers queue for up to ``timeout`` seconds before ``StoreUnavailable``.
* Every read-modify-write runs in ``BEGIN IMMEDIATE``: the write lock is taken before the
  version is read, so two processes can never both see version ``v`` and both write
  ``v + 1`` (and a WAL snapshot can never go stale between the read and the write).
* Single-statement writes (delete, lock acquire/renew/release, take-pending) are atomic
  by themselves.
* Connections come from a small pool (opened lazily, ``check_same_thread=False``), so any
  threading model works: a thread borrows a connection for one operation and returns it.
"""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Final
from typing import TypeGuard

from .._core.errors import ConfigurationError
from .._core.errors import CorruptRecord
from .._core.errors import StorageError
from .._core.errors import StoreUnavailable
from .._core.errors import seals
from .._core.model import PendingAuthorization
from .._core.model import PrincipalId
from .._core.model import ProviderId
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from .base import DueRecord
from .base import ThreadedAsyncMixin
from .base import check_bucket
from .base import check_limit
from .base import check_ttl
from .base import check_window
from .base import decode_pending
from .base import decode_record
from .base import gcra
from .base import recent_calls
from .base import refresh_index

__all__ = ["SQLiteStore"]

SCHEMA_VERSION: Final = 4
_POOL_SIZE: Final = 8

# ``DELETE ... RETURNING`` exists since SQLite 3.35.0.
_HAS_RETURNING: Final = sqlite3.sqlite_version_info >= (3, 35, 0)

# Primary result codes that mean "try again later": busy/locked, I/O, disk full,
# cannot open, locking protocol. Everything else is a plain StorageError.
_SQLITE_READONLY: Final = 8
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26
_RETRYABLE_CODES: Final = frozenset({5, 6, 10, 13, 14, 15})

_SCHEMA_V1: Final = (
    """
    CREATE TABLE IF NOT EXISTS tokens (
        key_id            TEXT PRIMARY KEY,
        tenant            TEXT NOT NULL,
        principal         TEXT NOT NULL,
        provider          TEXT NOT NULL,
        scope_fingerprint TEXT NOT NULL,
        version           INTEGER NOT NULL,
        data              TEXT NOT NULL,
        updated_at        REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS tokens_tenant_principal ON tokens (tenant, principal)",
    """
    CREATE TABLE IF NOT EXISTS locks (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS locks_expires_at ON locks (expires_at)",
    """
    CREATE TABLE IF NOT EXISTS pending (
        state_key  TEXT PRIMARY KEY,
        data       TEXT NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS pending_expires_at ON pending (expires_at)",
)

Migration = Callable[[sqlite3.Connection], None]


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1:
        conn.execute(statement)


def _add_refresh_index(conn: sqlite3.Connection) -> None:
    """v2: the refresh index (expiry and refresh-token idleness), backfilled from the data."""
    conn.execute("ALTER TABLE tokens ADD COLUMN expires_at REAL")
    conn.execute("ALTER TABLE tokens ADD COLUMN idle_since REAL")
    rows = conn.execute("SELECT key_id, data FROM tokens").fetchall()
    for key_id, data in rows:
        try:
            values = refresh_index(TokenRecord.from_json(data))
        except (CorruptRecord, ValueError, TypeError, KeyError):
            continue  # a damaged row stays out of the index; get() reports it
        conn.execute(
            "UPDATE tokens SET expires_at = ?, idle_since = ? WHERE key_id = ?", (*values, key_id)
        )
    conn.execute(
        "CREATE INDEX tokens_expires_at ON tokens (expires_at) WHERE expires_at IS NOT NULL"
    )
    conn.execute(
        "CREATE INDEX tokens_idle_since ON tokens (provider, idle_since) "
        "WHERE idle_since IS NOT NULL"
    )


def _add_gates(conn: sqlite3.Connection) -> None:
    """v3: the provider gate (shared back-off and token buckets), one row per gate name."""
    conn.execute(
        "CREATE TABLE gates (name TEXT PRIMARY KEY, backoff_until REAL NOT NULL DEFAULT 0, "
        "tat REAL)"
    )


def _add_calls(conn: sqlite3.Connection) -> None:
    """v4: call counts for the rate-limit policy, one row per name and fixed window."""
    conn.execute(
        "CREATE TABLE calls (name TEXT NOT NULL, slot INTEGER NOT NULL, "
        "count INTEGER NOT NULL, PRIMARY KEY (name, slot)) WITHOUT ROWID"
    )


# MIGRATIONS[n] brings a database from user_version n to n + 1, inside the caller's
# IMMEDIATE transaction. Version 0 is "empty file". Add an entry and bump SCHEMA_VERSION
# to change the schema; never edit a shipped step.
MIGRATIONS: Final[dict[int, Migration]] = {
    0: _create_v1,
    1: _add_refresh_index,
    2: _add_gates,
    3: _add_calls,
}

_UPSERT_TOKEN: Final = """
    INSERT INTO tokens (key_id, tenant, principal, provider, scope_fingerprint, version,
                        data, updated_at, expires_at, idle_since)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key_id) DO UPDATE SET
        version = excluded.version, data = excluded.data, updated_at = excluded.updated_at,
        expires_at = excluded.expires_at, idle_since = excluded.idle_since
"""

_ACQUIRE_LOCK: Final = """
    INSERT INTO locks (name, owner, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE locks.expires_at <= ? OR locks.owner = excluded.owner
"""


class SQLiteStore(ThreadedAsyncMixin):
    """A :class:`~oauth2_broker_mw.stores.TokenStore` in one SQLite file.

    Safe for many threads and processes on one machine (not for a network file system:
    SQLite's WAL needs shared memory). ``timeout`` is how long a writer waits for another
    writer before :class:`~oauth2_broker_mw.StoreUnavailable`. ``clock`` returns wall-clock
    seconds; lock and pending expiry use it, so every process on the host agrees.
    The file and its tables are created on first use.
    """

    # Atomic ``DELETE ... RETURNING`` when SQLite has it, else a short IMMEDIATE transaction.
    _use_returning: bool = _HAS_RETURNING

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path_str = os.fspath(path)
        if not path_str or path_str == ":memory:" or path_str.startswith("file:"):
            raise ConfigurationError(
                "SQLiteStore needs a file path (use MemoryStore for an in-memory store)"
            )
        if not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self._path = path_str
        self._timeout = float(timeout)
        self._clock = clock
        self._pool_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._schema_ready = False
        _LIVE_STORES.add(self)

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    # -- connections ------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if not self._schema_ready:
            self._create_private_file()
        conn = sqlite3.connect(
            self._path,
            timeout=self._timeout,
            isolation_level=None,  # autocommit; we issue BEGIN IMMEDIATE ourselves
            check_same_thread=False,  # borrowed by one thread at a time via the pool
        )
        # A TEXT cell that is not UTF-8 (a damaged file, another writer) would make sqlite3
        # raise OperationalError with the cell's text, tokens included, in the message.
        # Decoded leniently instead, the lone surrogates it leaves make the row CorruptRecord.
        conn.text_factory = _lenient_text
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            if not self._schema_ready:
                # One preparer per process; other processes are handled by _enable_wal.
                with self._prepare_lock:
                    if not self._schema_ready:
                        self._prepare(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_private_file(self) -> None:
        # The file holds bearer tokens: create it readable by its owner only. SQLite gives
        # the -wal and -shm files the same permissions as the database file.
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreUnavailable(_cannot_create(self._path, exc)) from exc
        os.close(fd)

    def check(self) -> None:
        """Open the file (creating it and its tables if needed) and read from it.

        Raises :class:`~oauth2_broker_mw.StoreUnavailable` naming the path and what to do if
        its directory is missing or not writable, :class:`~oauth2_broker_mw.StorageError` if
        the file is not a SQLite database.
        """
        with self._connection() as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # WAL is a property of the file: set once, kept by every later connection.
        mode = self._enable_wal(conn)
        if mode is None or str(mode[0]).lower() != "wal":
            raise StorageError("SQLite refused WAL journal mode for this file")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            with _transaction(conn):
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"the SQLite file has schema version {version}; this release "
                        f"understands up to {SCHEMA_VERSION} (upgrade oauth2-broker-mw)"
                    )
                while version < SCHEMA_VERSION:
                    MIGRATIONS[version](conn)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")
        self._schema_ready = True

    def _enable_wal(self, conn: sqlite3.Connection) -> tuple[object, ...] | None:
        """``PRAGMA journal_mode = WAL``, retried: switching modes does not wait on the busy
        handler, so several processes opening a fresh file at once may briefly see BUSY."""
        deadline = time.monotonic() + self._timeout
        delay = 0.005
        while True:
            try:
                row: tuple[object, ...] | None = conn.execute(
                    "PRAGMA journal_mode = WAL"
                ).fetchone()
                return row
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for one operation; translate every sqlite3 error."""
        conn: sqlite3.Connection | None = None
        try:
            with self._pool_lock:
                if self._closed:
                    raise StorageError("SQLiteStore is closed")
                if self._idle:
                    conn = self._idle.pop()
            if conn is None:
                conn = self._open()
            yield conn
        except sqlite3.Error as exc:
            if conn is not None:  # it may be broken (I/O error): do not pool it
                conn.close()
                conn = None
            raise _translate(exc, self._path) from exc
        finally:
            if conn is not None:
                self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            conn.close()
            return
        with self._pool_lock:
            if not self._closed and len(self._idle) < _POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def _after_fork_in_child(self) -> None:
        # A connection must not be used in a process other than the one that opened it,
        # and closing it here could drop the parent's POSIX locks on the file: keep the
        # inherited ones referenced (never used, never closed) and open fresh ones lazily.
        self._pool_lock = threading.Lock()
        _INHERITED.extend(self._idle)
        self._idle = []

    def close(self) -> None:
        """Close the pooled connections. The store cannot be used afterwards."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- tokens -----------------------------------------------------------------------------
    @seals(CorruptRecord)  # its frames hold the raw row
    def get(self, key: StoreKey) -> TokenRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT version, data FROM tokens WHERE key_id = ?", (key.id,)
            ).fetchone()
        if row is None:
            return None
        return _decode_record(key, row[0], row[1])

    def put(self, record: TokenRecord) -> TokenRecord:
        with self._connection() as conn, _transaction(conn):
            current = _current_version(conn, record.key)
            return self._write(conn, record, 1 if current is None else current + 1)

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        with self._connection() as conn, _transaction(conn):
            current = _current_version(conn, record.key)
            if current != expected_version:
                return None
            return self._write(conn, record, 1 if current is None else current + 1)

    def delete(self, key: StoreKey, *, expected_version: int | None = None) -> bool:
        with self._connection() as conn:
            if expected_version is None:
                cursor = conn.execute("DELETE FROM tokens WHERE key_id = ?", (key.id,))
            else:
                cursor = conn.execute(
                    "DELETE FROM tokens WHERE key_id = ? AND version = ?",
                    (key.id, expected_version),
                )
            return cursor.rowcount > 0

    def delete_keys(self, keys: Sequence[StoreKey]) -> int:
        ids = [(key.id,) for key in keys]
        with self._connection() as conn, _transaction(conn):
            before = conn.total_changes
            conn.executemany("DELETE FROM tokens WHERE key_id = ?", ids)
            return conn.total_changes - before

    def delete_pending(self, tenant: TenantId) -> int:
        with self._connection() as conn:
            cursor = conn.execute(
                "DELETE FROM pending WHERE json_extract(data, '$.tenant') = ?", (str(tenant),)
            )
            return cursor.rowcount

    def list_keys(self, tenant: TenantId, principal: str | None = None) -> list[StoreKey]:
        query = "SELECT tenant, principal, provider, scope_fingerprint FROM tokens WHERE tenant = ?"
        params: tuple[str, ...] = (str(tenant),)
        if principal is not None:
            query += " AND principal = ?"
            params += (str(principal),)
        with self._connection() as conn:
            rows = conn.execute(query + " ORDER BY key_id", params).fetchall()
        keys: list[StoreKey] = []
        for t, p, prov, fp in rows:
            try:
                keys.append(StoreKey(TenantId(t), PrincipalId(p), ProviderId(prov), fp))
            except (ValueError, TypeError):
                continue  # a damaged index row: get() on it reports CorruptRecord
        return keys

    def _write(self, conn: sqlite3.Connection, record: TokenRecord, version: int) -> TokenRecord:
        stored = record.with_version(version)
        key = record.key
        conn.execute(
            _UPSERT_TOKEN,
            (
                key.id,
                key.tenant,
                key.principal,
                key.provider,
                key.scope_fingerprint,
                version,
                stored.to_json(),
                self._clock(),
                *refresh_index(record),
            ),
        )
        return stored

    # -- the refresh index (partial indexes on expires_at and (provider, idle_since)) -------
    def _due(self, query: str, params: tuple[object, ...]) -> list[DueRecord]:
        with self._connection() as conn:
            rows = conn.execute(query, params).fetchall()
        due: list[DueRecord] = []
        for t, p, prov, fp, version, at in rows:
            try:
                key = StoreKey(TenantId(t), PrincipalId(p), ProviderId(prov), fp)
            except (ValueError, TypeError):
                continue  # a damaged index row: get() on it reports CorruptRecord
            if not _valid_version(version) or not isinstance(at, int | float):
                continue
            due.append(DueRecord(key, version, float(at)))
        return due

    def expiring(self, before: float, *, limit: int = 1000) -> list[DueRecord]:
        return self._due(
            "SELECT tenant, principal, provider, scope_fingerprint, version, expires_at "
            "FROM tokens WHERE expires_at IS NOT NULL AND expires_at < ? "
            "ORDER BY expires_at LIMIT ?",
            (float(before), check_limit(limit)),
        )

    def idle(self, provider: str, issued_before: float, *, limit: int = 1000) -> list[DueRecord]:
        return self._due(
            "SELECT tenant, principal, provider, scope_fingerprint, version, idle_since "
            "FROM tokens WHERE provider = ? AND idle_since IS NOT NULL AND idle_since < ? "
            "ORDER BY idle_since LIMIT ?",
            (str(ProviderId(provider)), float(issued_before), check_limit(limit)),
        )

    def list_tenants(self) -> list[TenantId]:
        with self._connection() as conn:
            rows = conn.execute("SELECT DISTINCT tenant FROM tokens ORDER BY tenant").fetchall()
        return [TenantId(row[0]) for row in rows]

    # -- lease locks ------------------------------------------------------------------------
    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        check_ttl(ttl)
        now = self._clock()
        with self._connection() as conn:
            cursor = conn.execute(_ACQUIRE_LOCK, (name, owner, now + ttl, now))
            return cursor.rowcount > 0

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        check_ttl(ttl)
        now = self._clock()
        with self._connection() as conn:
            cursor = conn.execute(
                "UPDATE locks SET expires_at = ? WHERE name = ? AND owner = ? AND expires_at > ?",
                (now + ttl, name, owner, now),
            )
            return cursor.rowcount > 0

    def release_lock(self, name: str, owner: str) -> bool:
        now = self._clock()
        with self._connection() as conn:
            cursor = conn.execute(
                "DELETE FROM locks WHERE name = ? AND owner = ? AND expires_at > ?",
                (name, owner, now),
            )
            return cursor.rowcount > 0

    # -- the provider gate (BEGIN IMMEDIATE: one writer decides at a time) -------------------
    def backoff_until(self, name: str) -> float:
        with self._connection() as conn:
            row = conn.execute("SELECT backoff_until FROM gates WHERE name = ?", (name,)).fetchone()
        return 0.0 if row is None else float(row[0])

    def set_backoff(self, name: str, until: float, *, now: float) -> float:
        with self._connection() as conn, _transaction(conn):
            conn.execute(
                "INSERT INTO gates (name, backoff_until) VALUES (?, ?) ON CONFLICT (name) "
                "DO UPDATE SET backoff_until = max(backoff_until, excluded.backoff_until)",
                (name, float(until)),
            )
            row = conn.execute("SELECT backoff_until FROM gates WHERE name = ?", (name,)).fetchone()
        return float(row[0])

    def take_token(
        self, name: str, *, now: float, interval: float, burst: int, max_wait: float = 0.0
    ) -> tuple[bool, float]:
        interval, burst, max_wait = check_bucket(interval, burst, max_wait)
        with self._connection() as conn, _transaction(conn):
            row = conn.execute("SELECT tat FROM gates WHERE name = ?", (name,)).fetchone()
            tat = None if row is None or row[0] is None else float(row[0])
            granted, wait, new_tat = gcra(tat, now, interval, burst, max_wait)
            if granted:
                conn.execute(
                    "INSERT INTO gates (name, tat) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET tat = excluded.tat",
                    (name, new_tat),
                )
        return granted, wait

    def count_calls(self, name: str, *, now: float, window: float) -> int:
        window = check_window(window)
        slot = math.floor(now / window)
        with self._connection() as conn, _transaction(conn):
            counts = dict(
                conn.execute(
                    "SELECT slot, count FROM calls WHERE name = ? AND slot IN (?, ?)",
                    (name, slot, slot - 1),
                ).fetchall()
            )
            conn.execute("DELETE FROM calls WHERE name = ? AND slot < ?", (name, slot - 1))
            conn.execute(
                "INSERT INTO calls (name, slot, count) VALUES (?, ?, 1) "
                "ON CONFLICT (name, slot) DO UPDATE SET count = count + 1",
                (name, slot),
            )
        return recent_calls(now, window, int(counts.get(slot, 0)), int(counts.get(slot - 1, 0)))

    # -- pending authorizations -------------------------------------------------------------
    def put_pending(self, pending: PendingAuthorization) -> None:
        now = self._clock()
        with self._connection() as conn, _transaction(conn):
            # Opportunistic purge (indexed), so abandoned logins and dead locks never pile up.
            conn.execute("DELETE FROM pending WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM locks WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO pending (state_key, data, expires_at) VALUES (?, ?, ?)",
                # serialized here, never a local: a failed write's frames show no verifier
                (pending.state_key, pending.to_json(), pending.expires_at),
            )

    @seals(CorruptRecord)  # its frames hold the raw row
    def take_pending(self, state_key: str) -> PendingAuthorization | None:
        with self._connection() as conn:
            if self._use_returning:
                rows = conn.execute(
                    "DELETE FROM pending WHERE state_key = ? RETURNING data, expires_at",
                    (state_key,),
                ).fetchall()
            else:
                with _transaction(conn):
                    rows = conn.execute(
                        "SELECT data, expires_at FROM pending WHERE state_key = ?", (state_key,)
                    ).fetchall()
                    conn.execute("DELETE FROM pending WHERE state_key = ?", (state_key,))
        if not rows:
            return None
        data, expires_at = rows[0]
        if not isinstance(expires_at, (int, float)) or expires_at <= self._clock():
            return None
        if not isinstance(data, (str, bytes)):
            raise CorruptRecord("pending authorization is not stored as text")
        return decode_pending(state_key, data)


# Stores alive in this process, so a forked child (gunicorn --preload, multiprocessing
# "fork") drops the connections it inherited instead of sharing them with its parent.
_LIVE_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_INHERITED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE``: take the write lock first, so a read-modify-write cannot race."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.execute("COMMIT")


def _current_version(conn: sqlite3.Connection, key: StoreKey) -> int | None:
    row = conn.execute("SELECT version FROM tokens WHERE key_id = ?", (key.id,)).fetchone()
    if row is None:
        return None
    if not _valid_version(row[0]):
        return 0  # a damaged version: put() rewrites the row at version 1
    return row[0]


#: Versions count writes; one near SQLite's INTEGER limit (2**63 - 1) is damage, and version
#: + 1 would raise OverflowError in sqlite3's parameter binding.
_MAX_VERSION: Final = 2**62


def _valid_version(version: object) -> TypeGuard[int]:
    return type(version) is int and 0 <= version < _MAX_VERSION


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _decode_record(key: StoreKey, version: object, data: object) -> TokenRecord:
    if not isinstance(data, (str, bytes)):
        raise CorruptRecord("stored token record is not stored as text")
    if not _valid_version(version) or version == 0:
        raise CorruptRecord("stored token record has no valid version")
    return decode_record(key, data).with_version(version)


def _cannot_create(path: str, exc: OSError) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    reason = exc.strerror or type(exc).__name__
    if not os.path.isdir(directory):
        hint = (
            f"the directory {directory!r} does not exist: create it (mkdir -p) or pass another path"
        )
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = (
            f"make the directory {directory!r} writable by this process (uid {os.getuid()}) "
            "or pass another path"
        )
    else:
        hint = "check the path"
    return f"cannot create the SQLite file {path!r}: {reason}; {hint}"


def _translate(exc: sqlite3.Error, path: str) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    # sqlite3 messages carry SQL text and column names, never bound values.
    message = f"SQLite error {name} on {path!r}: {str(exc)[:200]}"
    if isinstance(code, int) and (code & 0xFF) == _SQLITE_NOTADB:
        return StorageError(
            f"{path!r} is not a SQLite database (SQLite error {name}); "
            "point the store at a new path, or move that file away"
        )
    if isinstance(code, int) and (code & 0xFF) in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
        directory = os.path.dirname(os.path.abspath(path))
        message += (
            f"; the file and its directory {directory!r} must be writable by this process "
            "(SQLite writes -wal and -shm files beside it)"
        )
    if isinstance(code, int) and (code & 0xFF) in _RETRYABLE_CODES:
        return StoreUnavailable(message)
    if code is None and isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text or "disk" in text or "unable to open" in text:
            return StoreUnavailable(message)
    return StorageError(message)
