"""``RedisStore``: tokens, lease locks and pending logins in Redis, for many hosts.

Owns: the Redis key layout, the Lua scripts that make compare-and-swap, delete and the lock
operations atomic, and the conversion of redis-py errors into ``StoreUnavailable`` /
``StorageError``. Every operation is written once as a generator of :class:`RedisCall`
commands (see ``_commands``) and driven by a ``redis.Redis`` or a ``redis.asyncio.Redis``.

Key layout (``P`` is the prefix, ``oauth2broker:`` by default)::

    P tok:<StoreKey.id>          hash  version -> int, data -> record JSON
    P tidx:<tenant>              set   JSON store keys of the tenant (for list_keys)
    P pidx:<len>:<tenant>|<principal>   set   the same, per tenant and principal
    P exp                        zset  StoreKey.id by access-token expiry (refresh index)
    P idle:<provider>            zset  StoreKey.id by refresh-token issue time (refresh index)
    P lock:<name>                string owner, with a PX expiry (Redis's own clock)
    P pend:<state_key>           string pending authorization JSON, with a PX expiry

    P tenants                    set   every tenant with a record
    P gate:<name>                string provider back-off until (broker clock), with a PX expiry
    P bucket:<name>              string token bucket theoretical arrival time, with a PX expiry
    P calls:<name>               hash   fixed window -> call count (two kept), with a PX expiry

Expired locks and pending logins vanish by Redis expiry: no cron job. A single Redis, a
primary with replicas behind Sentinel (pass ``client=sentinel.master_for(...)``) and Redis
Cluster (``cluster=True``) are supported. On a cluster every key of a tenant carries the hash
tag of one of 16 shards (``P{s<n>}tok:...``, ``P{s<n>}exp``...), so each script touches one
slot; refresh-index queries read the 16 shards, and ``list_tenants`` reads their tenant sets.

Redis replicates asynchronously: a write the primary acknowledged can be lost if the primary
crashes before a replica has it and that replica is promoted. With ``replicas=N`` every record
write and delete is followed, on the same connection, by ``WAIT N timeout``, so the write is on
``N`` replicas before the caller gets its token (a warning names a write that is not).

Must not import: psycopg, httpx/httpx2, the broker. redis-py is imported here only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.parse
import zlib
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from typing import TypeVar

try:
    import redis
    import redis.asyncio as aioredis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("RedisStore needs redis-py: pip install 'oauth2-broker-mw[redis]'") from exc

from .._core.errors import ConfigurationError
from .._core.errors import CorruptRecord
from .._core.errors import StorageError
from .._core.errors import StoreUnavailable
from .._core.model import PendingAuthorization
from .._core.model import PrincipalId
from .._core.model import ProviderId
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from ._commands import CommandStore
from ._commands import Op
from ._commands import PerLoop
from ._commands import adrive
from ._commands import drive
from ._commands import redact_url
from ._commands import unreachable
from .base import DueRecord
from .base import decode_pending
from .base import decode_record
from .base import recent_calls
from .base import refresh_index

__all__ = ["RedisStore"]

T = TypeVar("T")

# KEYS: record, tenant index, principal index, expiry zset, provider idle zset, tenant set.
# ARGV: mode ("put" | "cas"), expected version ("" = must be absent), data, index member,
# expiry score ("" = not indexed), idle score ("" = not indexed), StoreKey.id, tenant.
_WRITE: Final = """
local cur = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == 'cas' then
  if ARGV[2] == '' then
    if cur then return false end
  elseif cur ~= ARGV[2] then
    return false
  end
end
local new = (tonumber(cur) or 0) + 1
redis.call('HSET', KEYS[1], 'version', new, 'data', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[5] == '' then redis.call('ZREM', KEYS[4], ARGV[7])
else redis.call('ZADD', KEYS[4], ARGV[5], ARGV[7]) end
if ARGV[6] == '' then redis.call('ZREM', KEYS[5], ARGV[7])
else redis.call('ZADD', KEYS[5], ARGV[6], ARGV[7]) end
redis.call('SADD', KEYS[6], ARGV[8])
return new
"""

# KEYS: as _WRITE. ARGV: expected version ("" = any), member, StoreKey.id, tenant.
_DELETE: Final = """
local cur = redis.call('HGET', KEYS[1], 'version')
if not cur then return 0 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[3])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[6], ARGV[4]) end
return 1
"""

# KEYS: tenant index, expiry zset, tenant set, then (record, principal index, idle zset) per
# record, all of one tenant (one hash tag). ARGV: tenant, then (member, StoreKey.id) per record.
_DELETE_MANY: Final = """
local removed = 0
local n = (#KEYS - 3) / 3
for i = 0, n - 1 do
  local rec, pidx, idle = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local member, id = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  removed = removed + redis.call('DEL', rec)
  redis.call('SREM', KEYS[1], member)
  redis.call('SREM', pidx, member)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', idle, id)
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return removed
"""

#: Records per ``delete_many`` script call (bulk deletion for off-boarding).
_BULK: Final = 500

# KEYS: a refresh-index zset. ARGV: exclusive upper score, limit, record key prefix.
# Returns id, score, version triples (version "0": the record vanished meanwhile).
_DUE: Final = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],
                       'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('HGET', ARGV[3] .. ids[i], 'version') or '0'
end
return out
"""

# KEYS: lock. ARGV: owner, ttl in ms. The owner that holds it may take it again (extends).
_ACQUIRE: Final = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lock. ARGV: owner, ttl in ms. Compare-and-extend.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock. ARGV: owner. Compare-and-delete.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: gate. ARGV: until, ttl in ms. The later time wins; the stored value is returned.
_SET_BACKOFF: Final = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS: bucket. ARGV: now, interval, burst, max_wait. GCRA, as stores.base.gcra.
# Returns {granted (1/0), wait as text}.
_TAKE_TOKEN: Final = """
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
local base = now
if tat and tat > now then base = tat end
local new_tat = base + interval
local wait = new_tat - now - burst * interval
if wait < 0 then wait = 0 end
if wait <= max_wait then
  local ttl = math.ceil((new_tat - now) * 1000) + 60000
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', ttl)
  return {1, string.format('%.17g', wait)}
end
return {0, string.format('%.17g', wait)}
"""

# KEYS: calls hash. ARGV: slot, ttl in ms. Fields are fixed windows; the hash is one key, so
# one cluster slot. Returns the counts of this window (before this call) and the one before.
_COUNT_CALLS: Final = """
local slot = tonumber(ARGV[1])
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  if tonumber(field) == nil or tonumber(field) < slot - 1 then
    redis.call('HDEL', KEYS[1], field)
  end
end
local previous = redis.call('HGET', KEYS[1], tostring(slot - 1)) or '0'
local current = redis.call('HINCRBY', KEYS[1], tostring(slot), 1) - 1
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {current, previous}
"""

# Hash tags a cluster's keys are spread over (per tenant); a refresh-index query reads each.
_SHARDS: Final = 16

_SCRIPTS: Final = {
    "write": _WRITE,
    "delete": _DELETE,
    "delete_many": _DELETE_MANY,
    "acquire": _ACQUIRE,
    "renew": _RENEW,
    "release": _RELEASE,
    "due": _DUE,
    "set_backoff": _SET_BACKOFF,
    "take_token": _TAKE_TOKEN,
    "count_calls": _COUNT_CALLS,
}


log = logging.getLogger("oauth2_broker_mw")


@dataclass(frozen=True, slots=True, repr=False)
class RedisCall:
    """One command for a runner: a redis-py client method, or ``"script"`` (name, keys, args).

    ``args`` may hold a serialized record or pending login (tokens, a PKCE verifier): the repr
    names the method (and script) only, since runner frames holding a call end up in the
    traceback of a failed command.
    """

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        script = f" {self.args[0]!r}" if self.method == "script" and self.args else ""
        return f"RedisCall({self.method!r}{script}, {len(self.args)} args)"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _float(value: object) -> float:
    """A stored gate time; absent or damaged counts as ``0.0`` (open)."""
    try:
        number = float(_text(value) or "0")
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _member(key: StoreKey) -> str:
    return json.dumps(key.to_dict(), sort_keys=True, separators=(",", ":"))


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _convert(exc: BaseException) -> StorageError:
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        return StoreUnavailable(f"Redis unavailable ({type(exc).__name__}): {detail}")
    if isinstance(exc, redis.exceptions.NoScriptError):  # pragma: no cover - redis-py reloads
        return StoreUnavailable("Redis lost its scripts; retry")
    return StorageError(f"Redis error ({type(exc).__name__})")


class RedisStore(CommandStore):
    """A ``TokenStore`` in Redis (≥ 6.2), shared by every process on every host.

    Build it from a URL (``redis://`` / ``rediss://``; socket timeouts and a single quick
    retry are set for you) or from clients the application already has::

        RedisStore("redis://cache:6379/0")
        RedisStore(client=redis.Redis(...), async_client=redis.asyncio.Redis(...))

    With only ``client``, the async methods run the sync client in a worker thread; with only
    ``async_client``, the sync methods are unavailable. Clients passed in are not closed by
    :meth:`close` / :meth:`aclose`; clients built from ``url`` are.
    ``clock`` (seconds since the epoch) is what pending authorizations' ``expires_at`` is
    measured against; lock expiry uses the Redis server's clock.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        async_client: aioredis.Redis | None = None,
        prefix: str = "oauth2broker:",
        socket_timeout: float = 2.0,
        max_connections: int = 50,
        clock: Callable[[], float] = time.time,
        cluster: bool = False,
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ConfigurationError("RedisStore needs a url, a client or an async_client")
        if not prefix:
            raise ConfigurationError("RedisStore prefix must not be empty")
        if cluster and ("{" in prefix or "}" in prefix):
            raise ConfigurationError(
                "a Redis Cluster prefix must not contain '{' or '}' (they mark hash tags)"
            )
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigurationError(
                f"RedisStore replicas must be an integer >= 0; got {replicas!r}"
            )
        if not replica_timeout > 0:
            raise ConfigurationError(
                f"RedisStore replica_timeout must be > 0 seconds; got {replica_timeout!r}"
            )
        if cluster and replicas:
            raise ConfigurationError(
                "RedisStore(cluster=True) does not support replicas= yet: WAIT must reach the "
                "node that owns the key; leave replicas=0 on a cluster"
            )
        self._replicas = replicas
        self._replica_timeout = replica_timeout
        self._cluster = cluster
        self._url = url
        self._prefix = prefix
        self._clock = clock
        self._socket_timeout = socket_timeout
        self._max_connections = max_connections
        self._owns_client = client is None and url is not None
        self._client: Any = client
        if self._owns_client and cluster:
            from redis.cluster import RedisCluster

            self._client = RedisCluster.from_url(
                url or "",
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                max_connections=max_connections,
            )
        elif self._owns_client:
            # A blocking pool: more concurrent callers than connections wait (up to the
            # socket timeout) instead of failing with "Too many connections".
            self._client = redis.Redis.from_pool(
                redis.BlockingConnectionPool.from_url(
                    url or "",
                    max_connections=max_connections,
                    timeout=socket_timeout,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_timeout,
                    retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
                )
            )
        self._sync_scripts = (
            {name: self._client.register_script(src) for name, src in _SCRIPTS.items()}
            if self._client is not None
            else {}
        )
        self._given_async = async_client
        self._async: PerLoop[tuple[aioredis.Redis, dict[str, Any]]] = PerLoop(
            self._new_async, self._close_async
        )

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url is not None else "<client>"
        return f"RedisStore({where!r}, prefix={self._prefix!r})"

    def _explain_unavailable(self, exc: StoreUnavailable) -> StoreUnavailable:
        if self._url is not None:
            parts = urllib.parse.urlsplit(self._url)
            return unreachable("Redis", parts.hostname, parts.port or 6379, exc)
        client = self._client if self._client is not None else self._given_async
        options = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        return unreachable("Redis", options.get("host"), options.get("port", 6379), exc)

    # -- clients and drivers ----------------------------------------------------------------
    async def _new_async(self) -> tuple[aioredis.Redis, dict[str, Any]]:
        client: Any
        if self._given_async is not None:
            client = self._given_async
        elif self._cluster:
            from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

            assert self._url is not None
            client = AsyncRedisCluster.from_url(
                self._url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                max_connections=self._max_connections,
            )
        else:
            assert self._url is not None
            client = aioredis.Redis.from_pool(
                aioredis.BlockingConnectionPool.from_url(
                    self._url,
                    max_connections=self._max_connections,
                    timeout=self._socket_timeout,
                    socket_timeout=self._socket_timeout,
                    socket_connect_timeout=self._socket_timeout,
                    retry=aioredis.retry.Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
                )
            )
        scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        return client, scripts

    async def _close_async(self, item: tuple[aioredis.Redis, dict[str, Any]]) -> None:
        if self._given_async is None:
            await item[0].aclose()

    def _run(self, op: Op[T]) -> T:
        client = self._client
        if client is None:
            op.close()
            raise ConfigurationError(
                "this RedisStore was built with only an async_client: use the async methods"
            )
        scripts = self._sync_scripts

        def execute(call: RedisCall) -> Any:
            # call.args is read in place, never unpacked: a failed command's frame shows no
            # record (RedisCall's repr hides it)
            if call.method == "script":
                script = scripts[call.args[0]]
                if self._replicas and call.kwargs.get("replicated"):
                    pipe = client.pipeline(transaction=False)  # one connection: WAIT sees it
                    script(keys=call.args[1], args=call.args[2], client=pipe)
                    pipe.wait(self._replicas, _ms(self._replica_timeout))
                    result, acked = pipe.execute()
                    return self._replicated(result, acked, call.args[0])
                return script(keys=call.args[1], args=call.args[2], client=client)
            return getattr(client, call.method)(*call.args, **call.kwargs)

        try:
            return drive(op, execute)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise _convert(exc) from exc

    async def _arun(self, op: Op[T]) -> T:
        if self._url is None and self._given_async is None:
            return await asyncio.to_thread(self._run, op)
        try:
            client, scripts = await self._async.get()

            async def execute(call: RedisCall) -> Any:
                if call.method == "script":  # call.args read in place, as in _run
                    script = scripts[call.args[0]]
                    if self._replicas and call.kwargs.get("replicated"):
                        async with client.pipeline(transaction=False) as pipe:
                            await script(keys=call.args[1], args=call.args[2], client=pipe)
                            pipe.wait(self._replicas, _ms(self._replica_timeout))
                            result, acked = await pipe.execute()
                        return self._replicated(result, acked, call.args[0])
                    return await script(keys=call.args[1], args=call.args[2])
                return await getattr(client, call.method)(*call.args, **call.kwargs)

            return await adrive(op, execute)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise _convert(exc) from exc

    def _replicated(self, result: Any, acked: int, script: str) -> Any:
        """The write's result, after warning when fewer replicas than asked have it."""
        if int(acked) < self._replicas:
            log.warning(
                "Redis %s reached %d of %d replicas within %gs: a crash of the primary now "
                "could lose it",
                "write" if script == "write" else script,
                int(acked),
                self._replicas,
                self._replica_timeout,
            )
        return result

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        await self._async.aclose_current()
        self.close()

    # -- key layout -------------------------------------------------------------------------
    def _tag(self, tenant: str) -> str:
        """The hash tag of a tenant's keys on Redis Cluster ("" on one node).

        Every key a script touches (record, tenant and principal indexes, the shard's
        refresh-index sorted sets and tenant set) carries the same tag, so it lives in one
        slot; tenants are spread over ``_SHARDS`` tags.
        """
        if not self._cluster:
            return ""
        return _shard_tag(zlib.crc32(tenant.encode("utf-8")) % _SHARDS)

    def _tags(self) -> list[str]:
        return [_shard_tag(n) for n in range(_SHARDS)] if self._cluster else [""]

    def _record_key(self, key: StoreKey) -> str:
        return f"{self._prefix}{self._tag(key.tenant)}tok:{key.id}"

    def _tenant_index(self, tenant: str) -> str:
        return f"{self._prefix}{self._tag(tenant)}tidx:{tenant}"

    def _principal_index(self, tenant: str, principal: str) -> str:
        return f"{self._prefix}{self._tag(tenant)}pidx:{len(tenant)}:{tenant}|{principal}"

    def _expiry_index(self, tag: str) -> str:
        return f"{self._prefix}{tag}exp"

    def _idle_index(self, tag: str, provider: str) -> str:
        return f"{self._prefix}{tag}idle:{provider}"

    def _tenant_set(self, tag: str) -> str:
        return f"{self._prefix}{tag}tenants"

    def _index_keys(self, key: StoreKey) -> list[str]:
        tag = self._tag(key.tenant)
        return [
            self._record_key(key),
            self._tenant_index(key.tenant),
            self._principal_index(key.tenant, key.principal),
            self._expiry_index(tag),
            self._idle_index(tag, key.provider),
            self._tenant_set(tag),
        ]

    def _lock_key(self, name: str) -> str:
        return f"{self._prefix}lock:{name}"

    def _pending_key(self, state_key: str) -> str:
        return f"{self._prefix}pend:{state_key}"

    # -- operations (one source for sync and async) -----------------------------------------
    def _op_get(self, key: StoreKey) -> Op[TokenRecord | None]:
        version, data = yield RedisCall("hmget", (self._record_key(key), ["version", "data"]))
        text = _text(data)
        if text is None:
            return None
        record = decode_record(key, text)
        try:
            return record.with_version(int(_text(version) or ""))
        except ValueError:
            raise CorruptRecord("stored token record has no valid version") from None

    def _op_write(
        self, record: TokenRecord, expected_version: int | None, *, unconditional: bool
    ) -> Op[TokenRecord | None]:
        mode = "put" if unconditional else "cas"
        expected = "" if expected_version is None else str(int(expected_version))
        new_version = yield RedisCall(
            "script",
            ("write", *self._write_script_args(record, mode, expected)),
            {"replicated": True},
        )
        if new_version is None:
            return None
        return record.with_version(int(new_version))

    def _write_script_args(
        self, record: TokenRecord, mode: str, expected: str
    ) -> tuple[list[str], list[str]]:
        """KEYS and ARGV of the write script (also used by bulk loaders in benchmarks)."""
        expires_at, idle_since = refresh_index(record)
        return self._index_keys(record.key), [
            mode,
            expected,
            record.to_json(),
            _member(record.key),
            "" if expires_at is None else repr(float(expires_at)),
            "" if idle_since is None else repr(float(idle_since)),
            record.key.id,
            record.key.tenant,
        ]

    def _op_delete(self, key: StoreKey, expected_version: int | None) -> Op[bool]:
        expected = "" if expected_version is None else str(int(expected_version))
        removed = yield RedisCall(
            "script",
            ("delete", self._index_keys(key), [expected, _member(key), key.id, key.tenant]),
            {"replicated": True},
        )
        return bool(removed)

    def _op_delete_keys(self, keys: Sequence[StoreKey]) -> Op[int]:
        """One script per :data:`_BULK` records of one tenant (not one round trip per row)."""
        by_tenant: dict[str, list[StoreKey]] = {}
        for key in keys:
            by_tenant.setdefault(key.tenant, []).append(key)
        removed = 0
        for tenant, mine in by_tenant.items():
            tag = self._tag(tenant)
            for start in range(0, len(mine), _BULK):
                chunk = mine[start : start + _BULK]
                names = [self._tenant_index(tenant), self._expiry_index(tag), self._tenant_set(tag)]
                args = [tenant]
                for key in chunk:
                    names += [
                        self._record_key(key),
                        self._principal_index(key.tenant, key.principal),
                        self._idle_index(tag, key.provider),
                    ]
                    args += [_member(key), key.id]
                count = yield RedisCall(
                    "script", ("delete_many", names, args), {"replicated": True}
                )
                removed += int(count)
        return removed

    def _op_delete_pending(self, tenant: TenantId) -> Op[int]:
        """Scan the pending logins (few, short-lived) and delete the tenant's."""
        pattern = _glob_escape(f"{self._prefix}pend:") + "*"
        removed = 0
        cursor: int = 0
        while True:
            cursor, names = yield RedisCall("scan", (cursor,), {"match": pattern, "count": 1000})
            if names:
                values = yield RedisCall("mget", (list(names),))
                mine = [n for n, v in zip(names, values, strict=True) if _tenant_of(v) == tenant]
                if mine:
                    removed += int((yield RedisCall("delete", tuple(mine))))
            if int(cursor) == 0:
                break
        return removed

    def _op_due(
        self, index: Callable[[str], str], before: float, limit: int
    ) -> Op[list[DueRecord]]:
        flat: list[Any] = []
        for tag in self._tags():  # one sorted set per hash tag on a cluster, else one
            flat += yield RedisCall(
                "script",
                ("due", [index(tag)], [repr(float(before)), limit, f"{self._prefix}{tag}tok:"]),
            )
        due: list[DueRecord] = []
        for i in range(0, len(flat), 3):
            version = int(_text(flat[i + 2]) or "0")
            try:
                key = _key_from_id(_text(flat[i]) or "")
            except (ValueError, TypeError):
                continue  # a damaged index entry is skipped; the record itself is untouched
            if version > 0:
                due.append(DueRecord(key, version, float(_text(flat[i + 1]) or "nan")))
        return sorted(due, key=lambda d: d.at)[:limit]

    def _op_expiring(self, before: float, limit: int) -> Op[list[DueRecord]]:
        return self._op_due(self._expiry_index, before, limit)

    def _op_idle(self, provider: str, issued_before: float, limit: int) -> Op[list[DueRecord]]:
        return self._op_due(lambda tag: self._idle_index(tag, provider), issued_before, limit)

    def _op_list_keys(self, tenant: TenantId, principal: str | None) -> Op[list[StoreKey]]:
        if principal is None:
            index = self._tenant_index(tenant)
        else:
            index = self._principal_index(tenant, PrincipalId(principal))
        members = yield RedisCall("smembers", (index,))
        keys: list[StoreKey] = []
        for member in members:
            try:
                keys.append(StoreKey.from_dict(json.loads(_text(member) or "")))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged index entry is skipped; the record itself is untouched
        return sorted(keys, key=lambda k: k.id)

    def _op_list_tenants(self) -> Op[list[TenantId]]:
        if self._cluster:  # SCAN is per node on a cluster: read the shards' tenant sets
            names: set[str] = set()
            for tag in self._tags():
                members = yield RedisCall("smembers", (self._tenant_set(tag),))
                names.update(_text(m) or "" for m in members)
            return [TenantId(t) for t in sorted(names) if t]
        start = f"{self._prefix}tidx:"
        pattern = _glob_escape(start) + "*"
        tenants: set[str] = set()
        cursor: int = 0
        while True:
            cursor, names = yield RedisCall("scan", (cursor,), {"match": pattern, "count": 1000})
            for name in names:
                text = _text(name) or ""
                tenants.add(text[len(start) :])
            if int(cursor) == 0:
                break
        return [TenantId(t) for t in sorted(tenants) if t]

    def _op_acquire_lock(self, name: str, owner: str, ttl: float) -> Op[bool]:
        got = yield RedisCall("script", ("acquire", [self._lock_key(name)], [owner, _ms(ttl)]))
        return bool(got)

    def _op_renew_lock(self, name: str, owner: str, ttl: float) -> Op[bool]:
        got = yield RedisCall("script", ("renew", [self._lock_key(name)], [owner, _ms(ttl)]))
        return bool(got)

    def _op_release_lock(self, name: str, owner: str) -> Op[bool]:
        got = yield RedisCall("script", ("release", [self._lock_key(name)], [owner]))
        return bool(got)

    def _op_backoff_until(self, name: str) -> Op[float]:
        value = yield RedisCall("get", (f"{self._prefix}gate:{name}",))
        return _float(value)

    def _op_set_backoff(self, name: str, until: float, now: float) -> Op[float]:
        ttl = _ms(max(0.0, until - now) + 60.0)
        stored = yield RedisCall(
            "script", ("set_backoff", [f"{self._prefix}gate:{name}"], [repr(until), ttl])
        )
        return _float(stored)

    def _op_take_token(
        self, name: str, now: float, interval: float, burst: int, max_wait: float
    ) -> Op[tuple[bool, float]]:
        granted, wait = yield RedisCall(
            "script",
            (
                "take_token",
                [f"{self._prefix}bucket:{name}"],
                [repr(now), repr(interval), burst, repr(max_wait)],
            ),
        )
        return bool(int(granted)), _float(wait)

    def _op_count_calls(self, name: str, now: float, window: float) -> Op[int]:
        slot = math.floor(now / window)
        current, previous = yield RedisCall(
            "script",
            ("count_calls", [f"{self._prefix}calls:{name}"], [slot, _ms(2 * window) + 60_000]),
        )
        return recent_calls(now, window, int(current), int(_float(previous)))

    def _op_put_pending(self, pending: PendingAuthorization) -> Op[None]:
        name = self._pending_key(pending.state_key)
        remaining = pending.expires_at - self._clock()
        if remaining <= 0:
            yield RedisCall("delete", (name,))
            return None
        yield RedisCall("set", (name, pending.to_json()), {"px": _ms(remaining)})
        return None

    def _op_take_pending(self, state_key: str) -> Op[PendingAuthorization | None]:
        data = yield RedisCall("getdel", (self._pending_key(state_key),))
        text = _text(data)
        if text is None:
            return None
        pending = decode_pending(state_key, text)
        if pending.expires_at <= self._clock():
            return None
        return pending


def _tenant_of(value: object) -> object:
    try:
        return json.loads(_text(value) or "").get("tenant")
    except (ValueError, AttributeError):
        return None


def _shard_tag(n: int) -> str:
    return "{" + f"s{n}" + "}"


def _key_from_id(key_id: str) -> StoreKey:
    """Parse :attr:`StoreKey.id` (``len:tenant|len:principal|len:provider|fingerprint``)."""
    parts: list[str] = []
    rest = key_id
    for _ in range(3):
        length, sep, rest = rest.partition(":")
        if not sep or not length.isdigit():
            raise ValueError("not a store key id")
        n = int(length)
        if rest[n : n + 1] != "|":
            raise ValueError("not a store key id")
        parts.append(rest[:n])
        rest = rest[n + 1 :]
    key = StoreKey(TenantId(parts[0]), PrincipalId(parts[1]), ProviderId(parts[2]), rest)
    if key.id != key_id:
        raise ValueError("not a store key id")
    return key


def _glob_escape(text: str) -> str:
    out: Sequence[str] = ["\\" + ch if ch in "*?[]\\" else ch for ch in text]
    return "".join(out)
