"""A logout's cost does not grow with the per-worker denylist (issue 8: once it was full, a
logout cost 874 µs instead of 0.4 µs, because it scanned every entry).

Run: ``.venv/bin/python benchmarks/denylist.py`` (``--quick`` for a short run). It times
``MiddlewareCore.sessions.remember_revoked`` (what a logout does in this worker's memory)
with an empty denylist and with a full one (10,000 ids), best of several ``timeit`` repeats,
and prints the ratio; the goal is within 10x.
"""

from __future__ import annotations

import argparse
import itertools
import timeit

from oauth2_broker_mw import Broker
from oauth2_broker_mw.middleware._core import MiddlewareCore
from oauth2_broker_mw.middleware._session import DENYLIST_MAX
from oauth2_broker_mw.testing.mock_provider import MockProvider

SECRET = "denylist-benchmark-secret-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"


def core() -> MiddlewareCore:
    mp = MockProvider()
    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
    )
    return MiddlewareCore(brokers={"mock": broker}, secret_key=SECRET, base_url="https://app.test")


def per_logout(target: MiddlewareCore, number: int, repeat: int) -> float:
    ids = (f"sid-{n}" for n in itertools.count())
    timer = timeit.Timer(lambda: target.sessions.remember_revoked(next(ids), 0.0))
    return min(timer.repeat(repeat=repeat, number=number)) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    number, repeat = (2_000, 3) if args.quick else (20_000, 7)
    empty = core()
    full = core()
    for n in range(DENYLIST_MAX):
        full.sessions.remember_revoked(f"old-{n}", 0.0)
    # the empty one stays below its bound for the whole run
    empty_cost = per_logout(empty, min(number, DENYLIST_MAX // (repeat + 1)), repeat)
    full_cost = per_logout(full, number, repeat)
    ratio = full_cost / empty_cost
    print(f"logout, empty denylist   {empty_cost * 1e9:8.0f} ns")
    print(f"logout, full denylist    {full_cost * 1e9:8.0f} ns   x{ratio:.2f} (goal: within 10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
