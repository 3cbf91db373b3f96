"""One refresher process of ``test_refresher_processes.py``.

Reads a JSON config from argv[1], builds a Broker and a Refresher on the shared store, prints
``ready``, waits for ``go`` on stdin, runs the refresher until ``duration`` has passed and
prints one JSON line with the sum of its sweep reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import sys
import threading
import time
from collections import Counter
from typing import Any

from _scaleout_worker import build_store

from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.refresher import Refresher
from oauth2_broker_mw.refresher import SweepReport


def main() -> None:
    config = json.loads(sys.argv[1])
    descriptor = pickle.loads(base64.b64decode(config["descriptor"]))
    store: Any = build_store(config["store"])
    offset = [0.0]  # the test's timeline: seeded expiries are relative to its "go"

    def clock() -> float:
        return time.time() - offset[0]

    broker = Broker(
        descriptor,
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        store=store,
        clock=clock,
    )
    totals: Counter[str] = Counter()

    def add(report: SweepReport) -> None:
        for name, value in report.to_dict().items():
            if isinstance(value, int):
                totals[name] += value
            else:
                totals.update({f"error:{k}": v for k, v in dict(value).items()})  # type: ignore[call-overload]
        totals["sweeps"] += 1

    refresher = Refresher(
        [broker],
        window=config["window"],
        concurrency=config["concurrency"],
        batch=config["batch"],
        interval=config["interval"],
        on_sweep=add,
        clock=clock,
    )
    print("ready", flush=True)
    command, _, value = sys.stdin.readline().strip().partition(" ")
    if command != "go":
        return
    offset[0] = float(value)
    timer = threading.Timer(config["duration"], refresher.stop, kwargs={"timeout": 0})
    timer.start()

    async def run() -> None:
        await refresher.run()
        await broker.aclose()

    asyncio.run(run())
    timer.cancel()
    store.close()
    print(json.dumps(dict(totals)), flush=True)


if __name__ == "__main__":
    main()
