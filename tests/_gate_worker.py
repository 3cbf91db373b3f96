"""One worker process of ``tests/test_ratelimit_processes.py``: a Broker on a shared store.

Reads a JSON config from argv[1], builds its own :class:`Broker` (own HTTP client, own cache)
on the store the config names, prints ``ready``, then runs one round per line of stdin::

    {"now": 1900000000.0, "tenant": "acme", "principals": ["svc-0", "svc-1"]}

A round sets the worker's logical clock to ``now`` (it stands still in between, so no test
depends on how long anything takes), starts one thread per principal at once, each calling
``lease`` (odd ones ``alease`` on their own event loop), and prints one JSON line: every
caller's outcome (ok, or the error class, its ``retry_after``, ``reason`` and
``status_code``). ``quit`` ends the worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import sys
import threading
from typing import Any

from _scaleout_worker import build_store

from oauth2_broker_mw import Broker
from oauth2_broker_mw import BrokerError


def _outcome(
    principal: str, broker: Broker, tenant: str, go: threading.Barrier, use_async: bool
) -> dict[str, Any]:
    go.wait(60)
    try:
        if use_async:  # its own event loop: sync and async callers share one gate
            asyncio.run(broker.alease(tenant=tenant, principal=principal, scopes=["read"]))
        else:
            broker.lease(tenant=tenant, principal=principal, scopes=["read"])
    except BrokerError as exc:
        return {
            "principal": principal,
            "error": type(exc).__name__,
            "retry_after": getattr(exc, "retry_after", None),
            "reason": getattr(exc, "reason", None),
            "status_code": getattr(exc, "status_code", None),
        }
    return {"principal": principal, "error": None}


def _round(broker: Broker, tenant: str, principals: list[str]) -> list[dict[str, Any]]:
    """Every principal's ``lease`` on its own thread, released at once; their outcomes."""
    go = threading.Barrier(len(principals))
    results: list[dict[str, Any]] = [{} for _ in principals]

    def run(i: int, principal: str) -> None:
        results[i] = _outcome(principal, broker, tenant, go, use_async=i % 2 == 1)

    threads = [
        threading.Thread(target=run, args=(i, p), daemon=True) for i, p in enumerate(principals)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _store(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "sqlite":  # 4 processes x 8 writers on one file on 2 shared CPUs
        from oauth2_broker_mw import SQLiteStore

        return SQLiteStore(spec["path"], timeout=30.0)
    return build_store(spec)


def main() -> None:
    config = json.loads(sys.argv[1])
    descriptor = pickle.loads(base64.b64decode(config["descriptor"]))
    now = [0.0]
    budget, options = config.get("rate_limit"), {}
    if budget is not None:
        from oauth2_broker_mw.ratelimit import TokenBucket

        options["rate_limit"] = TokenBucket(budget["rate"], per=budget["per"])
    broker = Broker(
        descriptor,
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        store=_store(config["store"]),
        clock=lambda: now[0],
        client_credentials_principals=lambda tenant, principal: True,  # services (J6)
        **options,
    )
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        command = json.loads(line)
        now[0] = float(command["now"])
        print(json.dumps(_round(broker, command["tenant"], command["principals"])), flush=True)
    broker.close()
    broker.store.close()


if __name__ == "__main__":
    main()
