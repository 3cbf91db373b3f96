"""RedisStore(replicas=N): every record write waits (WAIT, on the same connection) until N
replicas have it, so a crash of the primary right after the caller got its token cannot lose
the rotated refresh token. A primary and a replica run on loopback ports 7760-7761, started
and stopped by PID here."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _services import require_module
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.model import PrincipalId
from oauth2_broker_mw._core.model import ProviderId
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.model import TokenRecord

require_module("redis", "redis")
import redis  # noqa: E402

from oauth2_broker_mw.stores.redis import RedisStore  # noqa: E402

pytestmark = [pytest.mark.redis]

PRIMARY, REPLICA = 7760, 7761


def record(version_hint: str = "a") -> TokenRecord:
    key = StoreKey.build(
        TenantId("acme"), PrincipalId("alice"), ProviderId("mock"), ScopeSet.of(("read",))
    )
    return TokenRecord(
        key=key,
        access_token=Secret(f"at-{version_hint}"),
        refresh_token=Secret(f"rt-{version_hint}"),
        issued_at=time.time(),
        expires_at=time.time() + 3600,
    )


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[int, int]]:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is needed for the replication tests")
        pytest.skip("redis-server not installed")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / unique_name("repl")
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs = []
    try:
        for port, extra in ((PRIMARY, []), (REPLICA, ["--replicaof", "127.0.0.1", str(PRIMARY)])):
            (base / str(port)).mkdir(parents=True)
            procs.append(
                subprocess.Popen(
                    [server, "--port", str(port), *common, *extra],
                    cwd=base / str(port),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(port=REPLICA).info("replication")["master_link_status"] == "up":
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.1)
        yield PRIMARY, REPLICA
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_a_write_returns_only_once_the_replica_has_it(replicated: tuple[int, int]) -> None:
    primary, replica = replicated
    prefix = unique_name("w") + ":"
    store = RedisStore(f"redis://127.0.0.1:{primary}/0", prefix=prefix, replicas=1)
    reader = redis.Redis(port=replica)
    try:
        # Read the replica the moment each write returns: WAIT made the primary hold the
        # answer until the replica had applied it.
        stored = store.put(record("a"))
        version = reader.hget(f"{prefix}tok:{stored.key.id}", "version")
        assert version is not None and int(version) == stored.version
        for _ in range(3):
            stored = store.compare_and_swap(record("b"), expected_version=stored.version)  # type: ignore[assignment]
            assert stored is not None
            assert (
                int(reader.hget(f"{prefix}tok:{stored.key.id}", "version") or 0) == stored.version
            )
        assert store.delete(stored.key)
        assert not reader.exists(f"{prefix}tok:{stored.key.id}")
    finally:
        store.close()


async def test_the_async_path_waits_too(replicated: tuple[int, int]) -> None:
    primary, replica = replicated
    prefix = unique_name("aw") + ":"
    store = RedisStore(f"redis://127.0.0.1:{primary}/0", prefix=prefix, replicas=1)
    try:
        stored = await store.aput(record("a"))
        version = redis.Redis(port=replica).hget(f"{prefix}tok:{stored.key.id}", "version")
        assert version is not None and int(version) == stored.version
    finally:
        await store.aclose()


def test_a_write_no_replica_acknowledged_is_kept_and_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = require_redis()  # the machine's Redis has no replica: WAIT 1 times out
    store = RedisStore(url, prefix=unique_name("nr") + ":", replicas=1, replica_timeout=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="oauth2_broker_mw"):
            stored = store.put(record("a"))
        assert store.get(stored.key) == stored
        assert "Redis write reached 0 of 1 replicas within 0.05s" in caplog.text
        assert "at-a" not in caplog.text and "rt-a" not in caplog.text
    finally:
        store.close()


def test_replica_settings_are_checked() -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError, match="replicas must be an integer"):
            RedisStore("redis://127.0.0.1:1/0", replicas=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="replica_timeout"):
        RedisStore("redis://127.0.0.1:1/0", replicas=1, replica_timeout=0)
    with pytest.raises(ConfigurationError, match="cluster=True"):
        RedisStore("redis://127.0.0.1:1/0", cluster=True, replicas=1)
