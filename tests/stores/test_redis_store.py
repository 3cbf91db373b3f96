"""RedisStore against the real Redis at 127.0.0.1:6379 (skipped if absent, failed under CI)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from _services import TcpProxy
from _services import redis_cleanup
from _services import require_module
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw._core.errors import StoreUnavailable
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing.conformance import StoreConformance
from oauth2_broker_mw.testing.conformance import make_pending
from oauth2_broker_mw.testing.conformance import make_record

redis = require_module("redis", "redis")

from oauth2_broker_mw.stores.redis import RedisStore  # noqa: E402

pytestmark = pytest.mark.redis

_DESCRIPTOR = ProviderDescriptor(
    id="example", token_endpoint="https://idp.example/token", grants=("refresh_token",)
)


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    prefix = unique_name("redis") + ":"
    yield prefix
    redis_cleanup(prefix)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class TestRedisStoreFromURL(StoreConformance):
    @pytest.fixture
    def store(self, redis_url: str, prefix: str) -> Iterator[RedisStore]:
        store = RedisStore(redis_url, prefix=prefix)
        yield store
        store.close()


class TestRedisStoreFromClients(StoreConformance):
    """Clients the application already has; the sync client serves the async twins too."""

    @pytest.fixture
    def store(self, redis_url: str, prefix: str) -> Iterator[RedisStore]:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = RedisStore(client=client, prefix=prefix)
        yield store
        store.close()
        client.close()


def _key(tenant: str = "acme", principal: str = "alice") -> StoreKey:
    return StoreKey.build(tenant, principal, "example", "read")


def test_repr_redacts_the_password(prefix: str) -> None:
    store = RedisStore("redis://user:hunter2-secret@127.0.0.1:6379/0", prefix=prefix)
    try:
        assert "hunter2" not in repr(store)
        assert "***" in repr(store)
    finally:
        store.close()


def test_needs_a_url_or_client() -> None:
    with pytest.raises(ValueError, match="url"):
        RedisStore()


async def test_async_client_given_by_the_app(redis_url: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisStore(async_client=client, prefix=prefix)
    try:
        stored = await store.aput(make_record(_key(), "at-async"))
        assert stored.version == 1
        loaded = await store.aget(_key())
        assert loaded is not None
        assert loaded.access_token == Secret("at-async")
        with pytest.raises(ValueError, match="async"):
            store.get(_key())
    finally:
        await store.aclose()
        await client.aclose()


def test_raw_keys_and_expiry_are_redis_native(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    store = RedisStore(redis_url, prefix=prefix)
    try:
        key = _key()
        store.put(make_record(key, "at-raw"))
        assert raw.hget(f"{prefix}tok:{key.id}", "version") == b"1"
        assert store.acquire_lock("refresh:x", "owner-a", 30)
        ttl_ms = raw.pttl(f"{prefix}lock:refresh:x")
        assert 0 < ttl_ms <= 30_000
        pending = make_pending(expires_in=60)
        store.put_pending(pending)
        assert 0 < raw.pttl(f"{prefix}pend:{pending.state_key}") <= 60_000
        # the state itself is never part of a key name
        names = [n.decode() for n in raw.scan_iter(match=prefix + "*")]
        assert not any(pending.state.get_secret_value() in n for n in names)
        assert store.list_tenants() == [TenantId("acme")]
    finally:
        store.close()


def test_unreachable_redis_is_store_unavailable(prefix: str) -> None:
    store = RedisStore("redis://127.0.0.1:1/0", prefix=prefix, socket_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.get(_key())
        assert info.value.retryable
    finally:
        store.close()


async def test_unreachable_redis_is_store_unavailable_async(prefix: str) -> None:
    store = RedisStore("redis://127.0.0.1:1/0", prefix=prefix, socket_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await store.aget(_key())
    finally:
        await store.aclose()


def _kill_clients(raw: redis.Redis, name: str) -> int:
    killed = 0
    for info in raw.client_list():
        if info.get("name") == name:
            raw.client_kill_filter(_id=info["id"])
            killed += 1
    return killed


@pytest.fixture
def named_store(redis_url: str, prefix: str) -> Iterator[tuple[RedisStore, str]]:
    name = unique_name("cli")
    sep = "&" if "?" in redis_url else "?"
    store = RedisStore(f"{redis_url}{sep}client_name={name}", prefix=prefix)
    yield store, name
    store.close()


def test_client_kill_mid_run_recovers_without_loss(
    named_store: tuple[RedisStore, str], raw: redis.Redis
) -> None:
    store, name = named_store
    keys = [_key(principal=f"p{i}") for i in range(20)]
    for i, key in enumerate(keys[:10]):
        store.put(make_record(key, f"at-{i}"))
    assert _kill_clients(raw, name) >= 1
    outcomes: list[str] = []
    for i, key in enumerate(keys[10:], start=10):
        for _ in range(3):  # a caller retries a retryable error
            try:
                store.put(make_record(key, f"at-{i}"))
                outcomes.append("ok")
                break
            except StoreUnavailable:
                outcomes.append("unavailable")
    assert outcomes.count("ok") == 10
    for i, key in enumerate(keys):
        loaded = store.get(key)
        assert loaded is not None
        assert loaded.access_token == Secret(f"at-{i}")


async def test_client_kill_mid_run_recovers_async(
    named_store: tuple[RedisStore, str], raw: redis.Redis
) -> None:
    store, name = named_store
    key = _key()
    await store.aput(make_record(key, "at-before"))
    assert _kill_clients(raw, name) >= 1
    try:
        await store.aput(make_record(key, "at-after"))
    except StoreUnavailable:
        await store.aput(make_record(key, "at-after"))
    loaded = await store.aget(key)
    assert loaded is not None
    assert loaded.access_token == Secret("at-after")
    await store.aclose()


def test_lock_renewal_keeps_others_out_past_the_first_ttl(redis_url: str, prefix: str) -> None:
    holder = RedisStore(redis_url, prefix=prefix)
    other = RedisStore(redis_url, prefix=prefix)  # another process, as far as Redis knows
    try:
        # Renew at once to a long ttl, then wait past the first one: however slow this
        # machine is, the renewed lock is still held (no race between a sleep and a ttl).
        assert holder.acquire_lock("refresh:k", "holder", 0.5)
        assert holder.renew_lock("refresh:k", "holder", 60)
        time.sleep(0.8)
        assert not other.acquire_lock("refresh:k", "other", 30)
        assert holder.renew_lock("refresh:k", "holder", 60)  # still the holder's to renew
        assert not other.acquire_lock("refresh:k", "other", 30)
        assert not other.release_lock("refresh:k", "other")
        assert holder.release_lock("refresh:k", "holder")
        assert other.acquire_lock("refresh:k", "other", 30)
    finally:
        holder.close()
        other.close()


async def test_lock_of_a_crashed_holder_expires(redis_url: str, prefix: str) -> None:
    store = RedisStore(redis_url, prefix=prefix)
    try:
        assert await store.aacquire_lock("refresh:k", "crashed", 0.2)
        assert not await store.aacquire_lock("refresh:k", "next", 30)
        await asyncio.sleep(0.35)
        assert await store.aacquire_lock("refresh:k", "next", 30)
        assert not await store.arelease_lock("refresh:k", "crashed")
    finally:
        await store.aclose()


@pytest.fixture
async def astore(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, prefix=prefix)
    yield store
    await store.aclose()


async def test_async_and_sync_share_one_store(astore: RedisStore) -> None:
    key = _key()
    created = await astore.acompare_and_swap(make_record(key, "at-1"), expected_version=None)
    assert created is not None
    swapped = await asyncio.to_thread(
        astore.compare_and_swap, make_record(key, "at-2"), expected_version=created.version
    )
    assert swapped is not None
    assert swapped.version == 2
    assert await astore.alist_keys(TenantId("acme")) == [key]
    assert await astore.alist_tenants() == [TenantId("acme")]


def test_more_callers_than_connections_wait_instead_of_failing(redis_url: str, prefix: str) -> None:
    store = RedisStore(redis_url, prefix=prefix, max_connections=2)
    try:
        keys = [_key(principal=f"p{i}") for i in range(16)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            stored = list(pool.map(lambda k: store.put(make_record(k)), keys))
        assert [s.version for s in stored] == [1] * 16
    finally:
        store.close()


def test_slow_or_down_redis_is_retryable_and_warm_leases_are_still_served(
    redis_url: str, prefix: str
) -> None:
    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    store = RedisStore(
        f"redis://127.0.0.1:{proxy.port}{target.path}", prefix=prefix, socket_timeout=0.3
    )
    broker = Broker(_DESCRIPTOR, client_id="client", client_secret="secret", store=store)
    try:
        keys = {n: broker.key(tenant="acme", principal=n, scopes=["read"]) for n in "wxyz"}
        for name, key in keys.items():
            store.put(
                make_record(
                    key,
                    f"at-{name}",
                    expires_at=time.time() + 3600,
                    scopes=ScopeSet.of(["read"]),  # granted, as a broker-written record says
                )
            )
        assert broker.lease(tenant="acme", principal="w", scopes=["read"]).access_token == Secret(
            "at-w"
        )

        proxy.stall()  # Redis hangs: the cached token is still served, a cold key fails fast
        warm = broker.lease(tenant="acme", principal="w", scopes=["read"])
        assert warm.access_token == Secret("at-w")
        with pytest.raises(StoreUnavailable) as info:
            broker.lease(tenant="acme", principal="x", scopes=["read"])
        assert info.value.retryable
        proxy.resume()
        lease = broker.lease(tenant="acme", principal="x", scopes=["read"])
        assert lease.access_token == Secret("at-x")

        proxy.cut()  # Redis is down
        assert broker.lease(tenant="acme", principal="w", scopes=["read"]) == warm
        with pytest.raises(StoreUnavailable):
            broker.lease(tenant="acme", principal="y", scopes=["read"])
        proxy.restore()
        lease = broker.lease(tenant="acme", principal="y", scopes=["read"])
        assert lease.access_token == Secret("at-y")
    finally:
        broker.close()
        store.close()
        proxy.close()


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "oauth2_broker_mw.stores.redis")
    with pytest.raises(ImportError, match=r"pip install 'oauth2-broker-mw\[redis\]'"):
        importlib.import_module("oauth2_broker_mw.stores.redis")
