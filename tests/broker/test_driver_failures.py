"""The one driver on failure paths: locks, exception identity, per-loop clients.

Each test here failed on the main of 2026-12-05 (issue 8): a transport raising anything that
was not a ``BrokerError`` left the refresh lock held for ``lock_ttl``; ``raise exc from exc``
made an exception its own cause; singleflight waiters shared one exception object; and an
owned async HTTP client leaked per ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Generator
from typing import Any

import pytest
from _fakes import FakeClock as Clock

from oauth2_broker_mw import Broker
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import ProviderError
from oauth2_broker_mw._core.effects import Sleep
from oauth2_broker_mw._drivers import AsyncDriver
from oauth2_broker_mw._drivers import SyncDriver
from oauth2_broker_mw._singleflight import SingleFlight
from oauth2_broker_mw.testing.mock_provider import MockProvider

TENANT, USER = "acme", "alice"
SCOPES = ["openid", "email"]


class Bug(Exception):
    """What a custom transport with a bug raises: not a BrokerError, not an httpx error."""


class _Armed:
    """Wraps a real MockProvider client; token requests raise ``error`` once armed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.error: BaseException | None = None

    def _check(self, method: str, url: str) -> None:
        if self.error is not None and method == "POST" and url.endswith("/token"):
            raise self.error

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self._check(method, url)
        return self.inner.request(method, url, **kwargs)


class _AsyncArmed(_Armed):
    async def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self._check(method, url)
        return await self.inner.request(method, url, **kwargs)


def _brokers(mp: MockProvider, clock: Clock) -> tuple[Broker, Broker, _Armed, _AsyncArmed]:
    """A broker whose transport can fail, and a healthy one on the same store."""
    store = MemoryStore()
    sync, asyn = _Armed(mp.client()), _AsyncArmed(mp.async_client())
    common: dict[str, Any] = {
        "client_credentials_principals": {"svc"},  # the app's service (SECURITY J6: explicit)
        "client_id": "test-client",
        "client_secret": "test-secret",
        "store": store,
        "clock": clock,
        "lock_ttl": 60.0,  # a stuck lock would outlive the whole test
        "lock_wait": 1.0,
    }
    failing = Broker(mp.descriptor(), http_client=sync, async_http_client=asyn, **common)
    healthy = Broker(
        mp.descriptor(), http_client=mp.client(), async_http_client=mp.async_client(), **common
    )
    return failing, healthy, sync, asyn


def _login(broker: Broker, mp: MockProvider) -> None:
    import urllib.parse

    request = broker.start_authorization(
        tenant=TENANT, principal=USER, scopes=SCOPES, redirect_uri="https://app.example/cb"
    )
    location = mp.client().get(request.url).headers["location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    broker.exchange_code(state=query["state"], code=query["code"], iss=query.get("iss"))


@pytest.fixture
def mp(clock: Clock) -> Any:
    provider = MockProvider(clock=clock)
    yield provider
    provider.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("error", [Bug("transport bug"), KeyboardInterrupt()])
def test_a_failing_transport_leaves_no_lock(
    mp: MockProvider, clock: Clock, mode: str, error: BaseException
) -> None:
    if mode == "async" and isinstance(error, KeyboardInterrupt):
        pytest.skip("a KeyboardInterrupt inside a task is asyncio.run's business, not ours")
    failing, healthy, sync, asyn = _brokers(mp, clock)
    _login(failing, mp)
    clock.advance(3600 + 1)  # the access token expired: the next lease refreshes
    sync.error = asyn.error = error
    with pytest.raises(type(error)) as caught:
        if mode == "sync":
            failing.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
        else:
            asyncio.run(failing.alease(tenant=TENANT, principal=USER, scopes=SCOPES))
    assert caught.value is error  # the flow saw it unchanged and re-raised it
    assert caught.value.__cause__ is not caught.value
    # Another owner gets the lock at once: with a stuck lock this is a RefreshTimeout.
    lease = healthy.lease(tenant=TENANT, principal=USER, scopes=SCOPES)
    assert lease.access_token
    assert mp.counters["token:refresh_token"] == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_transport_error_is_not_its_own_cause(mp: MockProvider, clock: Clock, mode: str) -> None:
    failing, _, sync, asyn = _brokers(mp, clock)
    sync.error = asyn.error = Bug("boom")
    with pytest.raises(Bug) as caught:
        if mode == "sync":
            failing.lease(tenant=TENANT, principal="svc")
        else:
            asyncio.run(failing.alease(tenant=TENANT, principal="svc"))
    seen: set[int] = set()
    exc: BaseException | None = caught.value
    while exc is not None:  # the chain ends; nothing is its own cause
        assert id(exc) not in seen
        seen.add(id(exc))
        exc = exc.__cause__


def test_eight_waiters_get_eight_distinct_exceptions() -> None:
    flights: SingleFlight[int] = SingleFlight()
    leader_error = ProviderError("provider said no")

    async def main() -> list[BaseException]:
        async def work() -> int:
            flight = flights._flights["k"]
            while len(flight.waiters) < 7:  # noqa: ASYNC110 - until all 7 other tasks wait
                await asyncio.sleep(0)
            raise leader_error

        results = await asyncio.gather(
            *(flights.ado("k", work) for _ in range(8)), return_exceptions=True
        )
        return [r for r in results if isinstance(r, BaseException)]

    errors = asyncio.run(main())
    assert len(errors) == 8
    assert len({id(e) for e in errors}) == 8
    assert all(isinstance(e, ProviderError) and e.error == "provider said no" for e in errors)
    assert len({str(e) for e in errors}) == 1
    waiters = [e for e in errors if e is not leader_error]
    assert len(waiters) == 7
    assert all(e.__cause__ is leader_error for e in waiters)


def test_a_leaders_keyboard_interrupt_is_not_shared() -> None:
    import threading

    flights: SingleFlight[int] = SingleFlight()
    entered, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def leader_work() -> int:
        entered.set()
        release.wait(10)
        raise KeyboardInterrupt

    def leader() -> None:
        try:
            flights.do("k", leader_work)
        except KeyboardInterrupt:
            outcome.append("leader interrupted")

    thread = threading.Thread(target=leader)
    thread.start()
    entered.wait(10)

    def waiter() -> None:
        outcome.append(flights.do("k", lambda: 42))

    waiting = threading.Thread(target=waiter)
    waiting.start()
    while not flights._flights:  # pragma: no cover - the leader is in flight already
        pass
    release.set()
    thread.join(10)
    waiting.join(10)
    # The waiter either joined the flight and then led its own, or led from the start:
    # either way it got a value, never the leader's KeyboardInterrupt.
    assert sorted(map(str, outcome)) == ["42", "leader interrupted"]


def test_asyncio_run_per_call_does_not_leak_clients(tmp_path: Any) -> None:
    """300 ``asyncio.run(broker.alease(...))`` grow RSS by less than 30 MB (was ~250 MB)."""
    script = textwrap.dedent(
        """
        import asyncio, gc, sys
        from oauth2_broker_mw import Broker
        from oauth2_broker_mw.testing.mock_provider import MockProvider

        def rss_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20

        mp = MockProvider()
        served = mp.serve()
        next(iter([served.__enter__()]))
        # The broker owns its async clients: real sockets to the provider on loopback.
        broker = Broker(
            mp.descriptor(grants=["client_credentials"]),
            client_id="test-client",
            client_secret="test-secret",
        )

        jobs = iter(range(10**6))

        def once():  # a new key per job: every job really sends its request on its loop
            asyncio.run(broker.alease(tenant="t", principal=f"svc{next(jobs)}"))

        for _ in range(20):
            once()
        gc.collect()
        before = rss_mb()
        for _ in range(300):
            once()
        gc.collect()
        print(rss_mb() - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    growth = float(out.stdout.strip().splitlines()[-1])
    assert growth < 30, f"RSS grew {growth:.1f} MB over 300 asyncio.run() calls"


def test_a_backwards_wall_clock_does_not_stretch_the_lock_wait(mp: MockProvider) -> None:
    """The lock-wait deadline is monotonic: a wall clock stepping back (NTP) ends it anyway."""
    import threading

    from oauth2_broker_mw import RefreshTimeout

    class SteppingBack:
        def __init__(self) -> None:
            self.now = 2_000_000_000.0

        def __call__(self) -> float:
            self.now -= 5.0  # every reading is earlier than the last
            return self.now

    store = MemoryStore()
    broker = Broker(
        mp.descriptor(),
        client_credentials_principals={"svc"},
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=mp.client(),
        clock=SteppingBack(),
        lock_wait=1.0,
        lock_ttl=60.0,
    )
    key = broker._build_key(TENANT, "svc", ())
    assert store.acquire_lock(key.lock_name, "another-host", 60.0)
    outcome: list[BaseException] = []

    def lease() -> None:
        try:
            broker.lease(tenant=TENANT, principal="svc")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=lease, daemon=True)
    thread.start()
    thread.join(30)  # was: still polling after the test's patience (singleflight's 120 s)
    assert not thread.is_alive(), "the waiter kept polling past lock_wait"
    assert len(outcome) == 1 and isinstance(outcome[0], RefreshTimeout)


def _napping() -> Generator[Sleep, float, float]:
    return (yield Sleep(2.5))


def test_both_drivers_sleep_with_the_sleep_they_are_given() -> None:
    # The first wave's async driver took no ``sleep``: a test could not skip its waits.
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(-seconds)

    store, clock = MemoryStore(), lambda: 42.0
    assert SyncDriver(store, lambda: None, clock=clock, sleep=slept.append).run(_napping()) == 42
    driver = AsyncDriver(store, lambda: None, clock=clock, sleep=asleep)
    assert asyncio.run(driver.run(_napping())) == 42
    assert slept == [2.5, -2.5]
