"""Cross-process refresh coordination on a shared store, against a rotating MockProvider.

4 worker processes x (8 threads + 8 asyncio tasks), each with a cold in-process cache, lease
tokens for 25 keys whose access tokens live 1 second, sharing one Redis / PostgreSQL / SQLite
store (and PostgreSQL behind EncryptedStore), for long enough to cover at least 200 expiry
windows (key x window): the workers run until the provider has seen that many refreshes, however
loaded the machine is. The provider rotates refresh tokens and revokes the whole family when
one is reused. We check:

* exactly one token request per key per expiry window: a sampler watching the provider never
  sees two live access tokens of one key at once, and every refresh token was redeemed once
  (reuse count 0, so no family was revoked);
* zero errors in the workers (no ``invalid_grant``, no ``AuthorizationRequired``);
* no refresh token lost: each key's stored refresh token is the live one at the provider.

Faults: the lock holder is SIGKILLed right after winning the lock (another process proceeds
when the lease expires; the family is not revoked); the provider answers slower than the
lease lasts (the holder's renewal keeps the others out).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_module
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.stores.base import TokenStore

require_module("starlette", "starlette")
require_module("uvicorn", "testing")

from oauth2_broker_mw.testing.mock_provider import MockProvider  # noqa: E402

pytestmark = pytest.mark.slow

PROCESSES = 4
THREADS = 8
TASKS = 8
KEYS = 25
ACCESS_TTL = 1  # seconds: one expiry window
WINDOWS = 200  # key x expiry windows to exercise; the workers run until the provider saw them
DEADLINE = 240.0  # seconds: a machine that cannot do 200 windows in this is broken, not slow
TENANT = "acme"
SCOPES = ["read"]
WORKER = Path(__file__).parent.parent / "_scaleout_worker.py"


@pytest.fixture(params=["redis", "postgres", "sqlite", "encrypted-postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    kind = request.param
    if kind == "encrypted-postgres":
        request.applymarker(pytest.mark.postgres)
        schema = unique_name("scale")
        key = base64.b64encode(os.urandom(32)).decode()
        yield {
            "kind": "postgres",
            "dsn": require_postgres(),
            "schema": schema,
            "encryption_key": key,
        }
        postgres_drop_schema(schema)
    elif kind == "redis":
        request.applymarker(pytest.mark.redis)
        prefix = unique_name("scale") + ":"
        yield {"kind": "redis", "url": require_redis(), "prefix": prefix}
        redis_cleanup(prefix)
    elif kind == "postgres":
        request.applymarker(pytest.mark.postgres)
        schema = unique_name("scale")
        yield {"kind": "postgres", "dsn": require_postgres(), "schema": schema}
        postgres_drop_schema(schema)
    else:
        yield {"kind": "sqlite", "path": str(tmp_path / "tokens.db")}


def _open_store(spec: dict[str, Any]) -> TokenStore:
    from _scaleout_worker import build_store

    return build_store(spec)


class _OverlapSampler(threading.Thread):
    """Samples the provider: how often did one key have two live access tokens at once?"""

    def __init__(self, provider: MockProvider) -> None:
        super().__init__(daemon=True)
        self.provider = provider
        self.stop = threading.Event()
        self.samples = 0
        self.overlaps = 0

    def run(self) -> None:
        while not self.stop.is_set():
            live = Counter(t["family"] for t in self.provider.live_tokens(kind="access"))
            self.samples += 1
            if any(n > 1 for n in live.values()):
                self.overlaps += 1
            self.stop.wait(0.01)


def test_one_token_request_per_key_per_expiry_window(store_spec: dict[str, Any]) -> None:
    provider = MockProvider(access_ttl=ACCESS_TTL, rotation=True, reuse_detection=True)
    store = _open_store(store_spec)
    principals = [f"p{i}" for i in range(KEYS)]
    procs: list[subprocess.Popen[str]] = []
    try:
        with provider.serve():
            descriptor = provider.descriptor()
            client = provider.default_client
            seeding = Broker(
                descriptor,
                client_id=client.client_id,
                client_secret=client.client_secret,
                store=store,
            )
            now = time.time()
            for principal in principals:
                issued = provider.issue_tokens(subject=principal, scopes=SCOPES)
                store.put(
                    TokenRecord(
                        key=seeding.key(tenant=TENANT, principal=principal, scopes=SCOPES),
                        access_token=Secret(issued["access_token"]),
                        refresh_token=Secret(issued["refresh_token"]),
                        issued_at=now - 10,
                        expires_at=now - 5,  # expired: the first lease must refresh
                        scopes=ScopeSet.of(SCOPES),
                        requested_scopes=ScopeSet.of(SCOPES),
                    )
                )
            seeding.close()
            config = {
                "descriptor": base64.b64encode(pickle.dumps(descriptor)).decode(),
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "store": store_spec,
                "tenant": TENANT,
                "scopes": SCOPES,
                "principals": principals,
                "threads": THREADS,
                "tasks": TASKS,
                "until_stopped": True,
            }
            procs = [
                subprocess.Popen(
                    [sys.executable, str(WORKER), json.dumps(config)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(PROCESSES)
            ]
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
            time.sleep(ACCESS_TTL + 0.1)  # the seeded access tokens are dead at the provider
            provider.reset_counters()
            sampler = _OverlapSampler(provider)
            sampler.start()
            started = time.monotonic()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            while (
                provider.counters["token:refresh_token"] < WINDOWS
                and time.monotonic() - started < DEADLINE
                and all(proc.poll() is None for proc in procs)
            ):
                time.sleep(0.05)
            results = []
            for proc in procs:
                out, _ = proc.communicate("stop\n", timeout=60)
                assert proc.returncode == 0
                results.append(json.loads(out.strip().splitlines()[-1]))
            elapsed = time.monotonic() - started
            sampler.stop.set()
            sampler.join()

            counters = provider.counters
            errors: Counter[str] = Counter()
            leases: Counter[str] = Counter()
            for result in results:
                errors.update(result["errors"])
                leases.update(result["leases"])
            refreshes = counters["token:refresh_token"]

            print(
                f"\n{store_spec['kind']}{' (encrypted)' * ('encryption_key' in store_spec)}: "
                f"{refreshes} refreshes (key-windows), "
                f"{sum(leases.values())} leases {dict(leases)}, "
                f"{sampler.samples} provider samples, counters {dict(counters)}"
            )
            assert errors == Counter(), f"worker errors: {dict(errors)}"
            assert leases["sync"] > 0
            assert leases["async"] > 0
            assert refreshes >= WINDOWS, (
                f"only {refreshes} expiry windows were exercised in {elapsed:.0f} s"
            )
            assert counters["refresh_redeemed"] == refreshes  # every request succeeded
            assert counters["refresh_reuse"] == 0
            assert counters["family_revoked"] == 0
            assert counters["token:client_credentials"] == 0
            assert counters["token:authorization_code"] == 0
            assert sampler.samples > 100
            assert sampler.overlaps == 0, "two live access tokens for one key at once"
            # ≤ one refresh per key per window (+1 for the window in progress at the end)
            assert refreshes <= KEYS * (int(elapsed / ACCESS_TTL) + 2)

            # no refresh token lost: what the store holds is the live end of each family
            families = set()
            for principal in principals:
                record = store.get(seeding.key(tenant=TENANT, principal=principal, scopes=SCOPES))
                assert record is not None
                assert record.refresh_token is not None
                info = provider.token_info(record.refresh_token.get_secret_value())
                assert info is not None
                assert info["status"] == "active", info
                families.add(info["family"])
            assert len(families) == KEYS
    finally:
        for proc in procs:
            _reap(proc)
        store.close()
        provider.close()


# -- faults -----------------------------------------------------------------------------------
def _seed(provider: MockProvider, store: TokenStore, descriptor: Any, principal: str) -> Any:
    client = provider.default_client
    broker = Broker(
        descriptor, client_id=client.client_id, client_secret=client.client_secret, store=store
    )
    key = broker.key(tenant=TENANT, principal=principal, scopes=SCOPES)
    broker.close()
    issued = provider.issue_tokens(subject=principal, scopes=SCOPES)
    now = time.time()
    store.put(
        TokenRecord(
            key=key,
            access_token=Secret(issued["access_token"]),
            refresh_token=Secret(issued["refresh_token"]),
            issued_at=now - 10,
            expires_at=now - 5,
            scopes=ScopeSet.of(SCOPES),
            requested_scopes=ScopeSet.of(SCOPES),
        )
    )
    return key


def _spawn(
    provider: MockProvider, descriptor: Any, spec: dict[str, Any], **options: Any
) -> subprocess.Popen[str]:
    client = provider.default_client
    config = {
        "descriptor": base64.b64encode(pickle.dumps(descriptor)).decode(),
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "store": spec,
        "tenant": TENANT,
        "scopes": SCOPES,
        "principals": ["solo"],
        "threads": 2,
        "tasks": 2,
        "iterations": 1,
        **options,
    }
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None and not pipe.closed:
            pipe.close()


def _go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _assert_family_intact(provider: MockProvider, store: TokenStore, key: Any) -> None:
    counters = provider.counters
    assert counters["token:refresh_token"] == 1
    assert counters["refresh_redeemed"] == 1
    assert counters["refresh_reuse"] == 0
    assert counters["family_revoked"] == 0
    record = store.get(key)
    assert record is not None
    assert record.refresh_token is not None
    info = provider.token_info(record.refresh_token.get_secret_value())
    assert info is not None
    assert info["status"] == "active"


def test_killed_lock_holder_lets_another_process_refresh(store_spec: dict[str, Any]) -> None:
    """SIGKILL the process holding the refresh lock: after the lease expires another process
    refreshes (once), and the token family is not revoked."""
    provider = MockProvider(access_ttl=3600, rotation=True, reuse_detection=True)
    store = _open_store(store_spec)
    procs: list[subprocess.Popen[str]] = []
    try:
        with provider.serve():
            descriptor = provider.descriptor()
            key = _seed(provider, store, descriptor, "solo")
            victim = _spawn(
                provider,
                descriptor,
                store_spec,
                threads=1,
                tasks=0,
                lock_ttl=1.5,
                pause_after_lock=True,
            )
            procs.append(victim)
            others = [_spawn(provider, descriptor, store_spec, lock_ttl=1.5) for _ in range(3)]
            procs.extend(others)
            provider.reset_counters()
            _go(victim)
            assert victim.stdout is not None
            assert victim.stdout.readline().strip() == "locked"
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            for proc in others:
                _go(proc)
            results = [_result(proc) for proc in others]
            assert [r["errors"] for r in results] == [{}, {}, {}]
            assert sum(sum(r["leases"].values()) for r in results) == 12
            _assert_family_intact(provider, store, key)
    finally:
        for proc in procs:
            _reap(proc)
        store.close()
        provider.close()


def test_slow_provider_renewal_keeps_other_processes_out(store_spec: dict[str, Any]) -> None:
    """The provider takes 2.5 s, the lease lock lives 0.8 s: renewal keeps every other
    process waiting, so the refresh token is redeemed exactly once."""
    provider = MockProvider(
        access_ttl=3600, rotation=True, reuse_detection=True, latency={"token": 2.5}
    )
    store = _open_store(store_spec)
    procs: list[subprocess.Popen[str]] = []
    try:
        with provider.serve():
            descriptor = provider.descriptor()
            key = _seed(provider, store, descriptor, "solo")
            procs = [
                _spawn(provider, descriptor, store_spec, threads=4, tasks=4, lock_ttl=0.8)
                for _ in range(PROCESSES)
            ]
            provider.reset_counters()
            for proc in procs:
                _go(proc)
            results = [_result(proc) for proc in procs]
            assert [r["errors"] for r in results] == [{}] * PROCESSES
            assert sum(sum(r["leases"].values()) for r in results) == PROCESSES * 8
            _assert_family_intact(provider, store, key)
    finally:
        for proc in procs:
            _reap(proc)
        store.close()
        provider.close()
