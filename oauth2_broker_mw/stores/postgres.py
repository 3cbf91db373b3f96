"""``PostgresStore``: tokens, lease locks and pending logins in PostgreSQL, for many hosts.

Owns: the SQL schema and its migrations (applied by the store itself under an advisory
lock), the statements behind every store operation, connection pooling (psycopg_pool) and
the conversion of psycopg errors into ``StoreUnavailable`` / ``StorageError``. Every
operation is written once as a generator of :class:`Sql` statements (see ``_commands``);
all statements of one operation run in one transaction on one connection, driven by a
``psycopg.Connection`` or a ``psycopg.AsyncConnection``.

Schema (``S`` is the schema, ``oauth2_broker`` by default)::

    S.schema_migrations(version PK, applied_at, description)
    S.tokens(key_id PK, tenant, principal, provider, scope_fingerprint, version, data jsonb,
             updated_at, expires_at, idle_since)   index (tenant, principal), partial
             indexes (expires_at) and (provider, idle_since): the refresh index
    S.locks(name PK, owner, expires_at)        expiry against the database's clock
    S.pending(state_key PK, data jsonb, expires_at)   index (expires_at)
    S.gates(name PK, backoff_until, tat)       provider back-off and token buckets (broker clock)

Expired locks and pending logins are purged opportunistically (every ``purge_every``-th
lock/pending write of a store instance): no cron job.

Must not import: redis, httpx/httpx2, the broker. psycopg is imported here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import re
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Final
from typing import TypeVar

try:
    import psycopg
    import psycopg.conninfo
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "PostgresStore needs psycopg 3 and psycopg_pool: pip install 'oauth2-broker-mw[postgres]'"
    ) from exc

from .._core.errors import ConfigurationError
from .._core.errors import StorageError
from .._core.errors import StoreUnavailable
from .._core.model import PendingAuthorization
from .._core.model import PrincipalId
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from ._commands import CommandStore
from ._commands import Op
from ._commands import PerLoop
from ._commands import adrive
from ._commands import drive
from ._commands import unreachable
from .base import DueRecord
from .base import decode_pending
from .base import decode_record
from .base import recent_calls
from .base import refresh_index

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")

#: Keys per bulk statement (``delete_keys``).
_BULK: Final = 1000

_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# (version, description, statements). Append only: never edit a released migration.
# ``{s}`` is the quoted schema name.
_MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "tokens, locks, pending authorizations",
        (
            """CREATE TABLE {s}.tokens (
                key_id text PRIMARY KEY,
                tenant text NOT NULL,
                principal text NOT NULL,
                provider text NOT NULL,
                scope_fingerprint text NOT NULL,
                version bigint NOT NULL CHECK (version > 0),
                data jsonb NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX tokens_tenant_principal ON {s}.tokens (tenant, principal)",
            """CREATE TABLE {s}.locks (
                name text PRIMARY KEY,
                owner text NOT NULL,
                expires_at timestamptz NOT NULL
            )""",
            """CREATE TABLE {s}.pending (
                state_key text PRIMARY KEY,
                data jsonb NOT NULL,
                expires_at timestamptz NOT NULL
            )""",
            "CREATE INDEX pending_expires_at ON {s}.pending (expires_at)",
        ),
    ),
    (
        2,
        "refresh index: access-token expiry and refresh-token idleness",
        (
            "ALTER TABLE {s}.tokens ADD COLUMN expires_at double precision, "
            "ADD COLUMN idle_since double precision",
            """UPDATE {s}.tokens SET
                expires_at = CASE WHEN data->>'revoked_at' IS NULL
                    AND (data->'secrets'->>'refresh_token' IS NOT NULL
                         OR data->>'grant' = 'client_credentials')
                    THEN (data->>'expires_at')::double precision END,
                idle_since = CASE WHEN data->>'revoked_at' IS NULL
                    AND data->'secrets'->>'refresh_token' IS NOT NULL
                    THEN (data->>'issued_at')::double precision END""",
            "CREATE INDEX tokens_expires_at ON {s}.tokens (expires_at) "
            "WHERE expires_at IS NOT NULL",
            "CREATE INDEX tokens_idle_since ON {s}.tokens (provider, idle_since) "
            "WHERE idle_since IS NOT NULL",
        ),
    ),
    (
        3,
        "provider gate: shared back-off and token buckets",
        (
            """CREATE TABLE {s}.gates (
                name text PRIMARY KEY,
                backoff_until double precision NOT NULL DEFAULT 0,
                tat double precision
            )""",
        ),
    ),
    (
        4,
        "call counts for the rate-limit policy",
        (
            """CREATE TABLE {s}.calls (
                name text NOT NULL,
                slot bigint NOT NULL,
                count bigint NOT NULL,
                PRIMARY KEY (name, slot)
            )""",
        ),
    ),
)

#: The schema version this release creates and understands.
SCHEMA_VERSION: Final = _MIGRATIONS[-1][0]


@dataclass(frozen=True, slots=True, repr=False)
class Sql:
    """One statement for a runner; its result is the list of returned rows.

    ``params`` may hold a serialized record or pending login (tokens, a PKCE verifier): the
    repr shows the statement and the number of parameters only, since runner frames holding
    a statement end up in the traceback of a failed one.
    """

    query: str
    params: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        return f"Sql({' '.join(self.query.split())[:80]!r}, {len(self.params)} params)"


#: Yielded first by an operation that needs its statements in one transaction.
BEGIN: Final = Sql("BEGIN")


def _advisory_key(schema: str) -> int:
    digest = hashlib.sha256(f"oauth2_broker_mw:migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def redact_dsn(dsn: str) -> str:
    """``dsn`` (URL or ``key=value`` form) with any password replaced by ``***``."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    if "password" in params:
        params["password"] = "***"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""


def _insert_params(record: TokenRecord) -> tuple[object, ...]:
    """The parameters of a token row's INSERT, in column order."""
    key = record.key
    expires_at, idle_since = refresh_index(record)
    return (
        key.id,
        key.tenant,
        key.principal,
        key.provider,
        key.scope_fingerprint,
        record.to_json(),
        expires_at,
        idle_since,
    )


def _convert(exc: BaseException) -> StorageError:
    # Only the first line: DETAIL lines may echo row contents.
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return StoreUnavailable(
            f"PostgreSQL unavailable ({type(exc).__name__}): {_first_line(exc)}"
        )
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StoreUnavailable("PostgreSQL pool is closed")
    return StorageError(f"PostgreSQL error ({type(exc).__name__}): {_first_line(exc)}")


class _LoopConnections:
    """The store's own async connections for one event loop: a free list, no background task.

    psycopg_pool's ``AsyncConnectionPool`` runs worker tasks on the loop; ``asyncio.run``
    cancels every task before it finalizes async generators, and those workers do not stop
    when cancelled, so a pool per ``asyncio.run`` would hang it. This keeps idle connections
    in a list, opens one when none is idle (at most ``max_size`` in use), and drops a broken
    connection together with every idle one (a restart or ``pg_terminate_backend`` kills
    them all).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        max_size: int,
        timeout: float,
    ) -> None:
        self._connect = connect
        self._max_size = max_size
        self._slots = asyncio.Semaphore(max_size)
        self._timeout = timeout
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        except TimeoutError:
            raise psycopg_pool.PoolTimeout(
                f"no PostgreSQL connection free within {self._timeout:g}s"
            ) from None
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            yield conn
        finally:
            if conn is not None:
                await self._give_back(conn)
            self._slots.release()

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        idle_ok = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if conn.broken or conn.closed:
            stale, self._idle = self._idle, []
            for other in [conn, *stale]:
                with contextlib.suppress(psycopg.Error, OSError):
                    await other.close()
        elif not idle_ok or len(self._idle) >= self._max_size:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
        else:
            self._idle.append(conn)

    async def check(self) -> None:
        """Nothing to do: a broken connection given back already dropped every idle one."""

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


_AsyncPool = psycopg_pool.AsyncConnectionPool[Any] | _LoopConnections


class _Session:
    """The connection of one operation, for the one driver (:func:`._commands.drive`).

    The connection is taken at the first statement and released when the operation ends
    (``stack``: committed, or rolled back by the exception the driver threw through the
    operation). ``BEGIN`` opens the operation's transaction. If the first statement fails
    because the pooled connection was dead (server restarted, ``pg_terminate_backend``, idle
    timeout), nothing was done yet: the idle connections are checked (the dead ones replaced)
    and the statement is sent once more on a fresh connection.
    """

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], stack: contextlib.ExitStack) -> None:
        self._pool, self._stack = pool, stack
        self._held: contextlib.ExitStack | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._cur: psycopg.Cursor[Any] | None = None
        self._started = False

    # unasync: generated from _take; edit that one, then run scripts/unasync.py
    def _take(self) -> tuple[psycopg.Connection[Any], psycopg.Cursor[Any]]:
        if self._conn is None or self._cur is None or self._held is None:
            held = self._stack.enter_context(contextlib.ExitStack())
            conn: psycopg.Connection[Any] = held.enter_context(self._pool.connection())
            cur = held.enter_context(conn.cursor())
            self._held, self._conn, self._cur = held, conn, cur
            return conn, cur
        return self._conn, self._cur

    # unasync: generated from execute; edit that one, then run scripts/unasync.py
    def execute(self, command: Sql) -> list[Any]:
        for attempt in (1, 2):
            conn, cur = self._take()
            try:
                if command is BEGIN:
                    assert self._held is not None
                    self._held.enter_context(conn.transaction())
                    rows: list[Any] = []
                else:
                    cur.execute(command.query, command.params)
                    rows = cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                if attempt == 2 or self._started or not conn.broken:
                    raise
                assert self._held is not None
                self._held.close()  # the pool discards the broken connection
                self._conn = self._cur = None
                self._pool.check()
                continue
            self._started = True
            return rows
        raise AssertionError("unreachable")  # pragma: no cover


class _AsyncSession:
    """:class:`_Session` for the async pools: the source its methods are generated from
    (``scripts/unasync.py``)."""

    def __init__(self, pool: _AsyncPool, stack: contextlib.AsyncExitStack) -> None:
        self._pool, self._stack = pool, stack
        self._held: contextlib.AsyncExitStack | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._cur: psycopg.AsyncCursor[Any] | None = None
        self._started = False

    async def _take(self) -> tuple[psycopg.AsyncConnection[Any], psycopg.AsyncCursor[Any]]:
        if self._conn is None or self._cur is None or self._held is None:
            held = await self._stack.enter_async_context(contextlib.AsyncExitStack())
            conn: psycopg.AsyncConnection[Any] = await held.enter_async_context(
                self._pool.connection()
            )
            cur = await held.enter_async_context(conn.cursor())
            self._held, self._conn, self._cur = held, conn, cur
            return conn, cur
        return self._conn, self._cur

    async def execute(self, command: Sql) -> list[Any]:
        for attempt in (1, 2):
            conn, cur = await self._take()
            try:
                if command is BEGIN:
                    assert self._held is not None
                    await self._held.enter_async_context(conn.transaction())
                    rows: list[Any] = []
                else:
                    await cur.execute(command.query, command.params)
                    rows = await cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                if attempt == 2 or self._started or not conn.broken:
                    raise
                assert self._held is not None
                await self._held.aclose()  # the pool discards the broken connection
                self._conn = self._cur = None
                await self._pool.check()
                continue
            self._started = True
            return rows
        raise AssertionError("unreachable")  # pragma: no cover


class PostgresStore(CommandStore):
    """A ``TokenStore`` in PostgreSQL (≥ 12), shared by every process on every host.

    Build it from a DSN (``postgresql://...`` or ``host=... dbname=...``; connections with
    connect and statement timeouts are made for you on first use: a psycopg_pool
    ``ConnectionPool`` for the sync methods, and for the async ones a small set of
    connections per event loop, closed when that loop shuts down or on :meth:`aclose`) or
    from pools the application already has::

        PostgresStore("postgresql://broker@db/app")
        PostgresStore(pool=ConnectionPool(...), async_pool=AsyncConnectionPool(...))

    With only ``pool``, the async methods run the sync pool in a worker thread; with only
    ``async_pool``, the sync methods are unavailable. Pools passed in are neither opened nor
    closed by the store; connections built from ``dsn`` are.

    The schema (``schema``, default ``oauth2_broker``) is created and migrated on first use;
    see ``docs/deployment.md``. ``clock`` is what pending authorizations' ``expires_at`` is
    measured against; lock expiry uses the database server's clock.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: psycopg_pool.ConnectionPool[Any] | None = None,
        async_pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
        schema: str = "oauth2_broker",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        statement_timeout: float | None = 10.0,
        purge_every: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if dsn is None and pool is None and async_pool is None:
            raise ConfigurationError("PostgresStore needs a dsn, a pool or an async_pool")
        if not _SCHEMA_RE.match(schema):
            raise ConfigurationError(
                "PostgreSQL schema must be a lowercase identifier ([a-z_][a-z0-9_]*, ≤ 63)"
            )
        if purge_every < 1:
            raise ConfigurationError("purge_every must be at least 1")
        self._dsn = dsn
        self._schema = schema
        self._s = f'"{schema}"'
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._statement_timeout = statement_timeout
        self._purge_every = purge_every
        self._writes = itertools.count(1)
        self._clock = clock
        self._given_pool = pool
        self._given_async_pool = async_pool
        self._own_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._migrated = False
        self._async: PerLoop[_AsyncPool] = PerLoop(self._new_async_pool, self._close_async_pool)

    def __repr__(self) -> str:
        where = redact_dsn(self._dsn) if self._dsn is not None else "<pool>"
        return f"PostgresStore({where!r}, schema={self._schema!r})"

    def _explain_unavailable(self, exc: StoreUnavailable) -> StoreUnavailable:
        pool = self._given_pool or self._given_async_pool
        dsn = self._dsn if self._dsn is not None else getattr(pool, "conninfo", "")
        params = psycopg.conninfo.conninfo_to_dict(dsn or "")
        return unreachable("PostgreSQL", params.get("host"), params.get("port") or 5432, exc)

    # -- pools ------------------------------------------------------------------------------
    def _kwargs(self) -> dict[str, Any]:
        # Autocommit: a one-statement operation is one round trip (no COMMIT); operations
        # that need a transaction (migrations) open one explicitly with BEGIN.
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(self._timeout)),
            "autocommit": True,
        }
        given = psycopg.conninfo.conninfo_to_dict(self._dsn or "")
        if self._statement_timeout is not None:
            ms = max(1, round(self._statement_timeout * 1000))
            kwargs["options"] = f"{given.get('options') or ''} -c statement_timeout={ms}".strip()
        # A server that vanishes (host down, network partition) must not hang a caller until
        # the kernel's default TCP timeouts (minutes): keepalives for idle connections, and
        # tcp_user_timeout for data the server never acknowledges. The DSN's values win.
        tcp = {
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        }
        kwargs.update({k: v for k, v in tcp.items() if k not in given})
        return kwargs

    def _sync_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._given_pool is not None:
            return self._given_pool
        if self._own_pool is None:
            if self._dsn is None:
                raise ConfigurationError(
                    "this PostgresStore was built with only an async_pool: use the async methods"
                )
            pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                self._dsn,
                kwargs=self._kwargs(),
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._timeout,
                open=False,
                name=f"oauth2-broker-{self._schema}",
            )
            with self._pool_lock:
                if self._own_pool is None:
                    pool.open(wait=False)
                    self._own_pool = pool
        return self._own_pool

    async def _new_async_pool(self) -> _AsyncPool:
        if self._given_async_pool is not None:
            return self._given_async_pool
        assert self._dsn is not None
        dsn, kwargs = self._dsn, self._kwargs()

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(dsn, **kwargs)

        return _LoopConnections(connect, self._max_size, self._timeout)

    async def _close_async_pool(self, pool: _AsyncPool) -> None:
        if isinstance(pool, _LoopConnections):
            await pool.close()

    def close(self) -> None:
        if self._own_pool is not None:
            self._own_pool.close()
            self._own_pool = None

    async def aclose(self) -> None:
        await self._async.aclose_current()
        if self._own_pool is not None:
            await asyncio.to_thread(self.close)

    # -- drivers ----------------------------------------------------------------------------
    # One operation runs on one connection. Statements commit one by one (autocommit), except
    # after the operation yields BEGIN: from there on, one transaction, committed at the end.
    # If the very first statement fails because the pooled connection was dead (server
    # restarted, pg_terminate_backend, idle timeout), nothing was done yet, so it is sent once
    # more on a fresh connection: the sync pool's idle connections are checked (and the dead
    # ones replaced) first, the async free list drops every idle one with the broken one.

    def _run(self, op: Op[T]) -> T:
        try:
            pool = self._sync_pool()
            if not self._migrated:
                self._run_on(pool, self._op_migrate())
                self._migrated = True
            return self._run_on(pool, op)
        except (psycopg.Error, OSError) as exc:
            raise _convert(exc) from exc
        finally:
            op.close()

    def _run_on(self, pool: psycopg_pool.ConnectionPool[Any], op: Op[T]) -> T:
        with contextlib.ExitStack() as stack:
            return drive(op, _Session(pool, stack).execute)

    async def _arun(self, op: Op[T]) -> T:
        if self._dsn is None and self._given_async_pool is None:
            return await asyncio.to_thread(self._run, op)
        try:
            pool = await self._async.get()
            if not self._migrated:
                await self._arun_on(pool, self._op_migrate())
                self._migrated = True
            return await self._arun_on(pool, op)
        except (psycopg.Error, OSError) as exc:
            raise _convert(exc) from exc
        finally:
            op.close()

    async def _arun_on(self, pool: _AsyncPool, op: Op[T]) -> T:
        async with contextlib.AsyncExitStack() as stack:
            return await adrive(op, _AsyncSession(pool, stack).execute)

    # -- schema -----------------------------------------------------------------------------
    def _op_migrate(self) -> Op[int]:
        """Bring the schema to :data:`SCHEMA_VERSION`; safe when many processes start at once."""
        s = self._s
        rows = yield Sql("SELECT to_regclass(%s)", (f"{s}.schema_migrations",))
        if rows[0][0] is not None:
            rows = yield Sql(f"SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")  # noqa: S608
            if rows[0][0] == SCHEMA_VERSION:
                return SCHEMA_VERSION  # the common case: one cheap read, no lock
        yield BEGIN
        yield Sql("SELECT pg_advisory_xact_lock(%s)", (_advisory_key(self._schema),))
        yield Sql(f"CREATE SCHEMA IF NOT EXISTS {s}")
        yield Sql(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
            "version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now(), "
            "description text NOT NULL)"
        )
        rows = yield Sql(f"SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")  # noqa: S608
        current = int(rows[0][0])
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"PostgreSQL schema {self._schema!r} is at version {current}, newer than this "
                f"release understands ({SCHEMA_VERSION}): upgrade oauth2-broker-mw"
            )
        for version, description, statements in _MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                yield Sql(statement.format(s=s))
            yield Sql(
                f"INSERT INTO {s}.schema_migrations (version, description) VALUES (%s, %s)",  # noqa: S608
                (version, description),
            )
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        """Migrate if needed and return the schema version (for health checks and tools)."""
        return self._run(self._op_current_version())

    def _op_current_version(self) -> Op[int]:
        rows = yield Sql(f"SELECT coalesce(max(version), 0) FROM {self._s}.schema_migrations")  # noqa: S608
        return int(rows[0][0])

    # -- operations (one source for sync and async) -----------------------------------------
    def _op_get(self, key: StoreKey) -> Op[TokenRecord | None]:
        rows = yield Sql(
            f"SELECT version, data::text FROM {self._s}.tokens WHERE key_id = %s",  # noqa: S608
            (key.id,),
        )
        if not rows:
            return None
        version, data = rows[0]
        return decode_record(key, data).with_version(int(version))

    def _op_write(
        self, record: TokenRecord, expected_version: int | None, *, unconditional: bool
    ) -> Op[TokenRecord | None]:
        # The serialized record goes straight into the statement, never into a local: a
        # cancelled or dropped write's frames show no token (Sql's repr hides it too).
        s = self._s
        insert = (
            f"INSERT INTO {s}.tokens AS t "  # noqa: S608
            "(key_id, tenant, principal, provider, scope_fingerprint, version, data, "
            "expires_at, idle_since) VALUES (%s, %s, %s, %s, %s, 1, %s::jsonb, %s, %s) "
        )
        if unconditional:
            rows = yield Sql(
                insert + "ON CONFLICT (key_id) DO UPDATE SET data = EXCLUDED.data, "
                "version = t.version + 1, updated_at = now(), expires_at = EXCLUDED.expires_at, "
                "idle_since = EXCLUDED.idle_since RETURNING t.version",
                _insert_params(record),
            )
        elif expected_version is None:
            rows = yield Sql(
                insert + "ON CONFLICT (key_id) DO NOTHING RETURNING version",
                _insert_params(record),
            )
        else:
            rows = yield Sql(
                f"UPDATE {s}.tokens SET data = %s::jsonb, version = version + 1, "  # noqa: S608
                "updated_at = now(), expires_at = %s, idle_since = %s "
                "WHERE key_id = %s AND version = %s RETURNING version",
                (record.to_json(), *refresh_index(record), record.key.id, int(expected_version)),
            )
        if not rows:
            return None
        return record.with_version(int(rows[0][0]))

    def _op_delete(self, key: StoreKey, expected_version: int | None) -> Op[bool]:
        if expected_version is None:
            rows = yield Sql(
                f"DELETE FROM {self._s}.tokens WHERE key_id = %s RETURNING 1",  # noqa: S608
                (key.id,),
            )
        else:
            rows = yield Sql(
                f"DELETE FROM {self._s}.tokens WHERE key_id = %s AND version = %s RETURNING 1",  # noqa: S608
                (key.id, int(expected_version)),
            )
        return bool(rows)

    def _op_delete_keys(self, keys: Sequence[StoreKey]) -> Op[int]:
        """One statement per :data:`_BULK` keys (not one round trip per row)."""
        removed = 0
        ids = [key.id for key in keys]
        for start in range(0, len(ids), _BULK):
            rows = yield Sql(
                f"WITH gone AS (DELETE FROM {self._s}.tokens WHERE key_id = ANY(%s) "  # noqa: S608
                "RETURNING 1) SELECT count(*) FROM gone",
                (ids[start : start + _BULK],),
            )
            removed += int(rows[0][0])
        return removed

    def _op_delete_pending(self, tenant: TenantId) -> Op[int]:
        rows = yield Sql(
            f"WITH gone AS (DELETE FROM {self._s}.pending WHERE data->>'tenant' = %s "  # noqa: S608
            "RETURNING 1) SELECT count(*) FROM gone",
            (str(tenant),),
        )
        return int(rows[0][0])

    def _op_list_keys(self, tenant: TenantId, principal: str | None) -> Op[list[StoreKey]]:
        select = (
            f"SELECT tenant, principal, provider, scope_fingerprint FROM {self._s}.tokens "  # noqa: S608
            "WHERE tenant = %s"
        )
        if principal is None:
            rows = yield Sql(select + " ORDER BY key_id", (tenant,))
        else:
            rows = yield Sql(
                select + " AND principal = %s ORDER BY key_id", (tenant, PrincipalId(principal))
            )
        return [StoreKey(*row) for row in rows]

    def _op_list_tenants(self) -> Op[list[TenantId]]:
        rows = yield Sql(f"SELECT DISTINCT tenant FROM {self._s}.tokens ORDER BY tenant")  # noqa: S608
        return [TenantId(row[0]) for row in rows]

    def _op_expiring(self, before: float, limit: int) -> Op[list[DueRecord]]:
        rows = yield Sql(
            "SELECT tenant, principal, provider, scope_fingerprint, version, expires_at "  # noqa: S608
            f"FROM {self._s}.tokens WHERE expires_at IS NOT NULL AND expires_at < %s "
            "ORDER BY expires_at LIMIT %s",
            (float(before), limit),
        )
        return [DueRecord(StoreKey(*row[:4]), int(row[4]), float(row[5])) for row in rows]

    def _op_idle(self, provider: str, issued_before: float, limit: int) -> Op[list[DueRecord]]:
        rows = yield Sql(
            "SELECT tenant, principal, provider, scope_fingerprint, version, idle_since "  # noqa: S608
            f"FROM {self._s}.tokens WHERE provider = %s AND idle_since IS NOT NULL "
            "AND idle_since < %s ORDER BY idle_since LIMIT %s",
            (provider, float(issued_before), limit),
        )
        return [DueRecord(StoreKey(*row[:4]), int(row[4]), float(row[5])) for row in rows]

    def _op_purge(self) -> Op[None]:
        """Drop long-expired locks and pendings, every ``purge_every``-th write (no cron)."""
        if next(self._writes) % self._purge_every:
            return
        s = self._s
        yield Sql(f"DELETE FROM {s}.locks WHERE expires_at < now() - interval '1 minute'")  # noqa: S608
        yield Sql(f"DELETE FROM {s}.pending WHERE expires_at < now() - interval '1 minute'")  # noqa: S608

    def _op_acquire_lock(self, name: str, owner: str, ttl: float) -> Op[bool]:
        yield from self._op_purge()
        rows = yield Sql(
            f"INSERT INTO {self._s}.locks AS l (name, owner, expires_at) "  # noqa: S608
            "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE l.expires_at <= clock_timestamp() OR l.owner = EXCLUDED.owner "
            "RETURNING 1",
            (name, owner, ttl),
        )
        return bool(rows)

    def _op_renew_lock(self, name: str, owner: str, ttl: float) -> Op[bool]:
        rows = yield Sql(
            f"UPDATE {self._s}.locks SET expires_at = clock_timestamp() + "  # noqa: S608
            "make_interval(secs => %s) "
            "WHERE name = %s AND owner = %s AND expires_at > clock_timestamp() RETURNING 1",
            (ttl, name, owner),
        )
        return bool(rows)

    def _op_release_lock(self, name: str, owner: str) -> Op[bool]:
        rows = yield Sql(
            f"DELETE FROM {self._s}.locks WHERE name = %s AND owner = %s "  # noqa: S608
            "RETURNING expires_at > clock_timestamp()",
            (name, owner),
        )
        return bool(rows and rows[0][0])

    def _op_backoff_until(self, name: str) -> Op[float]:
        rows = yield Sql(f"SELECT backoff_until FROM {self._s}.gates WHERE name = %s", (name,))  # noqa: S608
        return float(rows[0][0]) if rows else 0.0

    def _op_set_backoff(self, name: str, until: float, now: float) -> Op[float]:
        rows = yield Sql(
            f"INSERT INTO {self._s}.gates AS g (name, backoff_until) VALUES (%s, %s) "  # noqa: S608
            "ON CONFLICT (name) DO UPDATE SET "
            "backoff_until = greatest(g.backoff_until, EXCLUDED.backoff_until) "
            "RETURNING backoff_until",
            (name, until),
        )
        return float(rows[0][0])

    def _op_take_token(
        self, name: str, now: float, interval: float, burst: int, max_wait: float
    ) -> Op[tuple[bool, float]]:
        # GCRA in one statement (as stores.base.gcra): the row is updated only when granted.
        s, tolerance = self._s, burst * interval
        params = (name, now + interval, now, interval, now, interval, now, tolerance, max_wait)
        rows = yield Sql(
            f"INSERT INTO {s}.gates AS g (name, tat) VALUES (%s, %s) "  # noqa: S608
            "ON CONFLICT (name) DO UPDATE SET tat = greatest(g.tat, %s) + %s "
            "WHERE greatest(greatest(g.tat, %s) + %s - %s - %s, 0) <= %s "
            "RETURNING greatest(g.tat - %s - %s, 0)",
            (*params, now, tolerance),
        )
        if rows:
            return True, float(rows[0][0])
        rows = yield Sql(
            f"SELECT greatest(greatest(tat, %s) + %s - %s - %s, 0) FROM {s}.gates "  # noqa: S608
            "WHERE name = %s",
            (now, interval, now, tolerance, name),
        )
        return False, float(rows[0][0]) if rows else 0.0

    def _op_count_calls(self, name: str, now: float, window: float) -> Op[int]:
        # One statement: the old windows go, this one counts, the two recent ones are read.
        s, slot = self._s, math.floor(now / window)
        rows = yield Sql(
            f"WITH gone AS (DELETE FROM {s}.calls WHERE name = %s AND slot < %s), "  # noqa: S608
            f"counted AS (INSERT INTO {s}.calls AS c (name, slot, count) VALUES (%s, %s, 1) "
            "ON CONFLICT (name, slot) DO UPDATE SET count = c.count + 1 RETURNING count) "
            f"SELECT (SELECT count - 1 FROM counted), "
            f"(SELECT count FROM {s}.calls WHERE name = %s AND slot = %s)",
            (name, slot - 1, name, slot, name, slot - 1),
        )
        current, previous = rows[0] if rows else (0, None)
        return recent_calls(now, window, int(current or 0), int(previous or 0))

    def _op_put_pending(self, pending: PendingAuthorization) -> Op[None]:
        yield from self._op_purge()
        yield Sql(
            f"INSERT INTO {self._s}.pending (state_key, data, expires_at) "  # noqa: S608
            "VALUES (%s, %s::jsonb, to_timestamp(%s)) "
            "ON CONFLICT (state_key) DO UPDATE SET data = EXCLUDED.data, "
            "expires_at = EXCLUDED.expires_at",
            (pending.state_key, pending.to_json(), pending.expires_at),
        )
        return None

    def _op_take_pending(self, state_key: str) -> Op[PendingAuthorization | None]:
        rows = yield Sql(
            f"DELETE FROM {self._s}.pending WHERE state_key = %s "  # noqa: S608
            "RETURNING data::text, expires_at > to_timestamp(%s)",
            (state_key, self._clock()),
        )
        if not rows or not rows[0][1]:
            return None
        return decode_pending(state_key, rows[0][0])
