"""The provider gate across 4 OS processes, each with its own Broker on one shared store.

SQLite (one file), PostgreSQL and Redis (the running services). Each worker's clock is a
logical one the test sets per round (``tests/_gate_worker.py``), so "until the time has
passed" is a step of the test, never a sleep or a timed assertion; requests are counted at a
MockProvider served on a loopback port.
"""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw.testing.mock_provider import MockProvider

PROCESSES = 4
T0 = 1_900_000_000.0
WORKER = Path(__file__).parent / "_gate_worker.py"


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"kind": "sqlite", "path": str(tmp_path / "tokens.db")}
    elif request.param == "redis":
        request.applymarker(pytest.mark.redis)
        prefix = unique_name("gate") + ":"
        yield {"kind": "redis", "url": require_redis(), "prefix": prefix}
        redis_cleanup(prefix)
    else:
        request.applymarker(pytest.mark.postgres)
        schema = unique_name("gate")
        yield {"kind": "postgres", "dsn": require_postgres(), "schema": schema}
        postgres_drop_schema(schema)


class Workers:
    """Four worker processes; ``round`` sends one command to all and gathers every outcome."""

    def __init__(self, provider: MockProvider, store: dict[str, Any], **extra: Any) -> None:
        client = provider.default_client
        config = {
            "descriptor": base64.b64encode(pickle.dumps(provider.descriptor())).decode(),
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "store": store,
            **extra,
        }
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(PROCESSES)
        ]
        for proc in self.procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"

    def round(
        self, now: float, principals: list[list[str]], tenant: str = "acme"
    ) -> list[list[dict[str, Any]]]:
        """Every process leases its ``principals[i]``, all at once; outcomes per process."""
        for proc, mine in zip(self.procs, principals, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"now": now, "tenant": tenant, "principals": mine}) + "\n")
            proc.stdin.flush()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            answers.append(json.loads(proc.stdout.readline()))
        return answers

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.communicate("quit\n", timeout=30)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                proc.kill()
                proc.communicate()
        assert [proc.returncode for proc in self.procs] == [0] * PROCESSES


def _flat(answers: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [outcome for per_process in answers for outcome in per_process]


def _distinct(tag: str, per_process: int) -> list[list[str]]:
    return [[f"{tag}-{p}-{i}" for i in range(per_process)] for p in range(PROCESSES)]


def test_a_429_with_retry_after_lets_exactly_one_request_out_across_4_processes(
    store_spec: dict[str, Any],
) -> None:
    provider = MockProvider(access_ttl=3600)
    provider.faults.add("token", status=429, error="slow_down", retry_after=30, times=None)
    with provider.serve():
        workers = Workers(provider, store_spec)
        try:
            # 16 callers in 4 processes on one key, all at once.
            shared = workers.round(T0, [["svc-shared"] * 4] * PROCESSES)
            assert provider.counters["token"] == 1, shared
            outcomes = _flat(shared)
            assert all(o["error"] in {"TransientProviderError", "RateLimited"} for o in outcomes), (
                shared
            )
            assert all(0 < o["retry_after"] <= 30 for o in outcomes)
            told = [i for i, per in enumerate(shared) if per[0]["error"] != "RateLimited"]
            assert len(told) == 1  # one process talked to the provider (its callers share it)
            assert {o["status_code"] for o in shared[told[0]]} == {429}
            rest = [o for i, per in enumerate(shared) if i != told[0] for o in per]
            assert {(o["error"], o["reason"]) for o in rest} == {("RateLimited", "backoff")}

            # 10 s later, 16 other keys: still no request, 20 s left for everyone.
            later = _flat(workers.round(T0 + 10, _distinct("svc-later", 4)))
            assert provider.counters["token"] == 1, later  # main sent 5 more in the same second
            assert {o["error"] for o in later} == {"RateLimited"}, later
            assert all(o["retry_after"] == pytest.approx(20.0) for o in later)

            # The Retry-After has passed: every key gets its token.
            provider.faults.clear()
            after = _flat(workers.round(T0 + 30, _distinct("svc-after", 4)))
            assert [o["error"] for o in after] == [None] * 16, after
            assert provider.counters["token"] == 17
        finally:
            workers.close()
    provider.close()


def test_a_budget_of_10_per_minute_per_tenant_across_4_processes_gives_10_calls(
    store_spec: dict[str, Any],
) -> None:
    provider = MockProvider(access_ttl=3600)
    with provider.serve():
        workers = Workers(provider, store_spec, rate_limit={"rate": 10, "per": 60.0})
        try:
            first = _flat(workers.round(T0, _distinct("svc", 8)))  # 32 keys, all at once
            assert provider.counters["token"] == 10, first
            errors = Counter((o["error"], o.get("reason")) for o in first)
            assert errors == {(None, None): 10, ("RateLimited", "policy"): 22}, first
            assert all(0 < o["retry_after"] <= 60 for o in first if o["error"])

            # Another tenant has its own budget; this one gets one call back every 6 s.
            other = _flat(workers.round(T0, _distinct("svc", 1), tenant="globex"))
            assert [o["error"] for o in other] == [None] * 4, other
            refill = _flat(workers.round(T0 + 6, _distinct("svc-refill", 2)))
            assert Counter(o["error"] for o in refill) == {None: 1, "RateLimited": 7}, refill
            assert provider.counters["token"] == 10 + 4 + 1
        finally:
            workers.close()
    provider.close()
