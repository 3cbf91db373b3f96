"""One worker process of the scale-out tests (run by ``test_scaleout_processes.py``).

Reads a JSON config from argv[1], builds a Broker on a shared store with a cold in-process
cache, prints ``ready``, waits for ``go`` on stdin, then runs N threads calling
``broker.lease()`` and N asyncio tasks calling ``broker.alease()`` over the configured keys
until the deadline, and prints one JSON line with its counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.stores.base import TokenStore


def build_store(spec: dict[str, Any]) -> TokenStore:
    kind = spec["kind"]
    if "encryption_key" in spec:  # EncryptedStore around the store the rest of spec names
        from oauth2_broker_mw.stores.encrypted import EncryptedStore
        from oauth2_broker_mw.stores.encrypted import KeyRing

        inner = build_store({k: v for k, v in spec.items() if k != "encryption_key"})
        return EncryptedStore(inner, KeyRing.from_base64({"k1": spec["encryption_key"]}, "k1"))
    if kind == "redis":
        from oauth2_broker_mw.stores.redis import RedisStore

        return RedisStore(spec["url"], prefix=spec["prefix"], cluster=spec.get("cluster", False))
    if kind == "postgres":
        from oauth2_broker_mw.stores.postgres import PostgresStore

        return PostgresStore(spec["dsn"], schema=spec["schema"])
    if kind == "sqlite":
        from oauth2_broker_mw.stores import SQLiteStore

        return SQLiteStore(spec["path"])
    raise ValueError(kind)


class PauseAfterLock:
    """A store that freezes its process right after it wins a refresh lock (to be killed)."""

    def __init__(self, inner: TokenStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        got = self._inner.acquire_lock(name, owner, ttl)
        if got:
            print("locked", flush=True)
            time.sleep(600)
        return got

    async def aacquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        got = await self._inner.aacquire_lock(name, owner, ttl)
        if got:
            print("locked", flush=True)
            await asyncio.sleep(600)
        return got


def main() -> None:
    config = json.loads(sys.argv[1])
    descriptor = pickle.loads(base64.b64decode(config["descriptor"]))
    store: Any = build_store(config["store"])
    if config.get("pause_after_lock"):
        store = PauseAfterLock(store)
    broker = Broker(
        descriptor,
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        store=store,
        refresh_margin=0.0,
        refresh_jitter=0.0,
        lock_ttl=config.get("lock_ttl", 15.0),
    )
    tenant, scopes = config["tenant"], config["scopes"]
    principals: list[str] = config["principals"]
    errors: Counter[str] = Counter()
    leases = Counter[str]()
    lock = threading.Lock()

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    deadline = time.time() + config.get("duration", 0.0)
    iterations: int | None = config.get("iterations")  # else: until the deadline
    stopped = threading.Event()
    if config.get("until_stopped"):  # run until the parent writes "stop", however slow we are
        deadline = float("inf")
        threading.Thread(target=lambda: (sys.stdin.readline(), stopped.set()), daemon=True).start()

    def more(done: int) -> bool:
        if stopped.is_set():
            return False
        return done < iterations if iterations is not None else time.time() < deadline

    def thread_main(seed: int) -> None:
        rng = random.Random(seed)
        done = 0
        while more(done):
            done += 1
            principal = rng.choice(principals)
            try:
                broker.lease(tenant=tenant, principal=principal, scopes=scopes)
                with lock:
                    leases["sync"] += 1
            except Exception as exc:
                with lock:
                    errors[f"{type(exc).__name__}: {exc}"] += 1
            time.sleep(0.002)

    async def task_main(seed: int) -> None:
        rng = random.Random(seed)
        done = 0
        while more(done):
            done += 1
            principal = rng.choice(principals)
            try:
                await broker.alease(tenant=tenant, principal=principal, scopes=scopes)
                leases["async"] += 1
            except Exception as exc:
                with lock:
                    errors[f"{type(exc).__name__}: {exc}"] += 1
            await asyncio.sleep(0.002)

    async def run_tasks() -> None:
        await asyncio.gather(*(task_main(1000 + i) for i in range(config["tasks"])))
        await broker.aclose()

    threads = [
        threading.Thread(target=thread_main, args=(i,), daemon=True)
        for i in range(config["threads"])
    ]
    for t in threads:
        t.start()
    asyncio.run(run_tasks())
    for t in threads:
        t.join()
    broker.close()
    store.close()
    print(json.dumps({"leases": dict(leases), "errors": dict(errors)}), flush=True)


if __name__ == "__main__":
    main()
