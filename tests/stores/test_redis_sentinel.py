"""RedisStore behind Sentinel: a failover in the middle of a burst of rotations loses none.

The module starts a primary, a replica and three sentinels on loopback ports (helper range
7730-7749) and stops them by PID. A burst of leases on rotating, reuse-detecting MockProvider
grants (1 s access tokens) runs while ``SENTINEL FAILOVER`` promotes the replica, and again
while the primary is killed (SIGKILL) and the sentinels promote the replica on their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
from _services import require_module
from _services import unique_name

from oauth2_broker_mw._core.errors import BrokerError
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing.mock_provider import MockProvider

require_module("redis", "redis")
import redis  # noqa: E402
from redis.sentinel import Sentinel  # noqa: E402

from oauth2_broker_mw.stores.redis import RedisStore  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PRIMARY, REPLICA = 7730, 7731
SENTINELS = (7740, 7741, 7742)
SCOPES = ["read"]


def _wait(predicate: object, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def sentinel_setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[tuple[str, int]], dict[int, subprocess.Popen[bytes]]]]:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is needed for the Sentinel tests")
        pytest.skip("redis-server not installed")
    base = tmp_path_factory.mktemp("sentinel")
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        cwd.mkdir(exist_ok=True)
        procs.append(
            subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        return procs[-1]

    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        servers = {PRIMARY: start([server, "--port", str(PRIMARY), *common], base / "primary")}
        servers[REPLICA] = start(
            [server, "--port", str(REPLICA), *common, "--replicaof", "127.0.0.1", str(PRIMARY)],
            base / "replica",
        )
        _wait(
            lambda: redis.Redis(port=REPLICA).info("replication")["master_link_status"] == "up",
            "the replica to sync",
        )
        for port in SENTINELS:
            conf = base / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor m 127.0.0.1 {PRIMARY} 2\n"
                "sentinel down-after-milliseconds m 1000\n"
                "sentinel failover-timeout m 5000\n"
            )
            start([server, str(conf), "--sentinel"], base / f"s{port}")
        _wait(
            lambda: all(
                redis.Redis(port=p).execute_command("SENTINEL", "replicas", "m") for p in SENTINELS
            ),
            "the sentinels to see the replica",
        )
        yield [("127.0.0.1", p) for p in SENTINELS], servers
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def sentinel_hosts(
    sentinel_setup: tuple[list[tuple[str, int]], dict[int, subprocess.Popen[bytes]]],
) -> list[tuple[str, int]]:
    return sentinel_setup[0]


def test_a_failover_during_a_burst_loses_no_rotation(
    sentinel_hosts: list[tuple[str, int]],
) -> None:
    _burst_through_a_failover(sentinel_hosts, _graceful_failover(sentinel_hosts))


def test_a_crash_of_the_primary_during_a_burst_loses_no_rotation(
    sentinel_setup: tuple[list[tuple[str, int]], dict[int, subprocess.Popen[bytes]]],
) -> None:
    hosts, servers = sentinel_setup
    sentinel = Sentinel(hosts, socket_timeout=1.0)
    primary = sentinel.discover_master("m")
    replica = next(port for port in servers if port != primary[1])
    _wait(
        lambda: redis.Redis(port=replica).info("replication").get("master_link_status") == "up",
        "the replica to sync with the current primary",
    )

    def crash() -> None:
        servers[primary[1]].send_signal(signal.SIGKILL)  # no shutdown, no last sync

    # replicas=1: each record write waits until the replica has it, so the write the primary
    # acknowledged last before it died is on the replica the sentinels promote.
    _burst_through_a_failover(hosts, crash, replicas=1)


def _graceful_failover(sentinel_hosts: list[tuple[str, int]]) -> Callable[[], None]:
    def failover() -> None:
        sentinel_client = redis.Redis(host=sentinel_hosts[0][0], port=sentinel_hosts[0][1])
        sentinel_client.execute_command("SENTINEL", "FAILOVER", "m")

    return failover


def _burst_through_a_failover(
    sentinel_hosts: list[tuple[str, int]], fail_over: Callable[[], None], replicas: int = 0
) -> None:
    sentinel = Sentinel(sentinel_hosts, socket_timeout=1.0)
    client = sentinel.master_for("m", socket_timeout=1.0, socket_connect_timeout=1.0)
    store = RedisStore(
        client=client,
        prefix=unique_name("sent") + ":",
        replicas=replicas,
        replica_timeout=0.2,
    )
    provider = MockProvider(access_ttl=1, rotation=True, reuse_detection=True)
    broker = Broker(
        provider.descriptor(),
        client_id=provider.default_client.client_id,
        client_secret=provider.default_client.client_secret,
        store=store,
        http_client=provider.client(),
        refresh_margin=0.0,
        refresh_jitter=0.0,
        cache_size=1,
    )
    principals = [f"p{i}" for i in range(10)]
    now = time.time()
    for principal in principals:
        issued = provider.issue_tokens(subject=principal, scopes=SCOPES)
        store.put(
            TokenRecord(
                key=broker.key(tenant="acme", principal=principal, scopes=SCOPES),
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now,
                expires_at=now - 1,
                scopes=ScopeSet.of(SCOPES),
                requested_scopes=ScopeSet.of(SCOPES),
            )
        )
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def burst(i: int) -> None:
        while not stop.is_set():
            principal = principals[i % len(principals)]
            i += 3
            try:
                broker.lease(tenant="acme", principal=principal, scopes=SCOPES)
                outcome = "ok"
            except BrokerError as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes[outcome] += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=burst, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    old = sentinel.discover_master("m")
    fail_over()
    _wait(lambda: sentinel.discover_master("m") != old, "the replica to be promoted")
    time.sleep(4)  # keep rotating on the new primary
    stop.set()
    for t in threads:
        t.join(10)
    counters = provider.counters
    print(
        f"\nfailover {old} -> {sentinel.discover_master('m')}: {dict(outcomes)}, {dict(counters)}"
    )
    assert sentinel.discover_master("m") != old
    assert outcomes["ok"] > 100
    assert counters["token:refresh_token"] > 20  # rotations before and after the failover
    assert counters["refresh_reuse"] == 0, "a rotation was lost (an old refresh token reused)"
    assert counters["family_revoked"] == 0
    for principal in principals:
        record = store.get(broker.key(tenant="acme", principal=principal, scopes=SCOPES))
        assert record is not None and record.refresh_token is not None
        info = provider.token_info(record.refresh_token.get_secret_value())
        assert info is not None and info["status"] == "active", (principal, info)
    broker.close()
    store.close()
    provider.close()
