"""Test doubles shared by the whole suite (importable as ``_fakes``: ``pythonpath = tests``).

``FakeClock`` is the one settable clock the tests hand to brokers, stores and MockProvider.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Sequence
from typing import Any


class FakeClock:
    """A wall clock moved by hand: ``clock()`` is the time, ``advance(s)`` moves it.

    ``FakeClock()`` stands still at the real time of its creation (or at ``now``).
    ``FakeClock(ticking=True)`` follows real time plus ``offset``, for tests where a real
    server (uvicorn, a subprocess) must see time pass while the test jumps ahead.
    """

    def __init__(self, now: float | None = None, *, ticking: bool = False) -> None:
        self._start = time.time() if now is None else now
        self._ticking = ticking
        self._t0 = time.monotonic()
        self.offset = 0.0

    def __call__(self) -> float:
        elapsed = time.monotonic() - self._t0 if self._ticking else 0.0
        return self._start + elapsed + self.offset

    @property
    def now(self) -> float:
        return self()

    @now.setter
    def now(self, value: float) -> None:
        self.offset += value - self()

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def login(
    broker: Any,
    provider: Any,
    *,
    tenant: str = "acme",
    principal: str | None = "alice",
    scopes: Sequence[str] = ("openid",),
    redirect_uri: str = "https://app.example/cb",
) -> Any:
    """Log ``principal`` in through ``provider`` (a MockProvider that auto-approves) and
    return the stored record: start_authorization, the provider's redirect, exchange_code."""
    request = broker.start_authorization(
        tenant=tenant, principal=principal, scopes=list(scopes), redirect_uri=redirect_uri
    )
    response = provider.client().get(request.url)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))
    return broker.exchange_code(state=query["state"], code=query["code"], iss=query.get("iss"))
