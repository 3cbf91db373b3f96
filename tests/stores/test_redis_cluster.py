"""RedisStore on a 3-master Redis Cluster that this module starts on loopback and stops by PID.

Every script touches one slot (keys hash-tagged per tenant shard), so the conformance suite and
the cross-process rotation race pass on the cluster as on one node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from _services import require_module
from _services import unique_name

from oauth2_broker_mw.stores import open_store
from oauth2_broker_mw.stores.base import TokenStore
from oauth2_broker_mw.testing.conformance import StoreConformance

require_module("redis", "redis")
from oauth2_broker_mw.stores.redis import RedisStore  # noqa: E402

pytestmark = pytest.mark.redis

PORTS = (7720, 7721, 7722)  # helper E2's range (7700-7799)


def _wait(predicate: object, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server and redis-cli are needed for the cluster tests")
        pytest.skip("redis-server / redis-cli not installed")
    base = tmp_path_factory.mktemp("cluster")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in PORTS:
            work = base / str(port)
            work.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    cwd=work,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        def pings() -> bool:
            return all(
                subprocess.run(
                    [cli, "-p", str(p), "ping"], capture_output=True, text=True
                ).stdout.strip()
                == "PONG"
                for p in PORTS
            )

        _wait(pings, "the cluster nodes to start")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in PORTS),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )

        def ok() -> bool:
            return all(
                "cluster_state:ok"
                in subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for p in PORTS
            )

        _wait(ok, "cluster_state:ok")
        yield f"redis://127.0.0.1:{PORTS[0]}/0"
    finally:
        for proc in procs:  # stopped by PID, the ones this fixture started
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class TestRedisClusterStore(StoreConformance):
    @pytest.fixture
    def store(self, cluster_url: str) -> Iterator[TokenStore]:
        store = open_store(f"{cluster_url}?cluster=1&prefix={unique_name('cl')}:")
        assert isinstance(store, RedisStore)
        yield store
        store.close()


def test_every_key_of_a_tenant_is_in_one_slot(cluster_url: str) -> None:
    from redis.cluster import RedisCluster
    from redis.cluster import key_slot

    from oauth2_broker_mw._core.model import Secret
    from oauth2_broker_mw._core.model import StoreKey
    from oauth2_broker_mw.testing.conformance import make_record

    prefix = unique_name("cl") + ":"
    store = RedisStore(cluster_url, prefix=prefix, cluster=True)
    keys = [StoreKey.build(f"tenant-{i}", "alice", "example", "read") for i in range(40)]
    for key in keys:
        store.put(make_record(key, refresh_token=Secret("rt"), expires_at=1.0))
    raw = RedisCluster.from_url(cluster_url)
    names = [
        n.decode() for n in raw.scan_iter(match=prefix + "*", target_nodes=RedisCluster.ALL_NODES)
    ]
    by_tag: dict[str, set[int]] = {}
    for name in names:
        tag = name[len(prefix) :].split("}", 1)[0] + "}"
        by_tag.setdefault(tag, set()).add(key_slot(name.encode()))
    assert all(len(slots) == 1 for slots in by_tag.values())
    assert len({s for slots in by_tag.values() for s in slots}) > 3  # spread over the nodes
    assert sorted(d.key.tenant for d in store.expiring(2.0)) == sorted(k.tenant for k in keys)
    assert sorted(store.list_tenants()) == sorted(k.tenant for k in keys)
    raw.close()
    store.close()


@pytest.mark.slow
def test_the_cross_process_rotation_race_on_the_cluster(cluster_url: str) -> None:
    """The scale-out race (4 processes x 8 threads + 8 tasks, 25 rotating keys, 1 s tokens):
    one token request per key per expiry window, no reuse, no lost rotation."""
    from test_scaleout_processes import test_one_token_request_per_key_per_expiry_window as race

    race(
        {
            "kind": "redis",
            "url": cluster_url,
            "prefix": unique_name("clrace") + ":",
            "cluster": True,
        }
    )
