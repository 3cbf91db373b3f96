"""BrokerAuth behaviour, one suite run on all five clients, in-process and over loopback.

Every test in ``TestBehaviour`` runs for httpx2/httpx (sync and async) and requests, against
MockProvider's protected resource and two header-recording servers, both through in-process
transports and through real uvicorn servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import httpx
import httpx2
import pytest
import requests
from _fakes import FakeClock
from test_auth_support import CLIENTS
from test_auth_support import Driver
from test_auth_support import Recorder
from test_auth_support import host_router

from oauth2_broker_mw._core.errors import AuthorizationRequired
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import InsufficientScope
from oauth2_broker_mw._core.errors import UnsafeRequest
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.auth import InsufficientScopeEvent
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing._mock_transport import LoopThread
from oauth2_broker_mw.testing._mock_transport import serve_app
from oauth2_broker_mw.testing.mock_provider import MockProvider

CLIENT_ID, CLIENT_SECRET = "test-client", "test-secret"


@dataclass
class World:
    kind: str
    provider: MockProvider
    clock: FakeClock
    a: str  # a recording server (origin A)
    b: str  # another one (origin B)
    rec_a: Recorder
    rec_b: Recorder
    app: Any = None  # the in-process router (None over loopback)
    loop: LoopThread | None = None
    a_http: str | None = None  # origin A over plain http (in-process only)

    @property
    def resource(self) -> str:
        return self.provider.resource_url

    def reset(self) -> None:
        self.provider.reset_counters()
        self.provider.faults.clear()
        self.rec_a.clear()
        self.rec_b.clear()
        self.clock.offset = 0.0


def _provider(clock: FakeClock) -> MockProvider:
    return MockProvider(clock=clock)


@pytest.fixture(scope="module")
def inprocess_world() -> Iterator[World]:
    clock = FakeClock(ticking=True)
    provider = _provider(clock)
    rec_a, rec_b = Recorder(), Recorder()
    app = host_router(
        {
            "mock-idp.test": provider.app,
            "a.test": rec_a.app,
            "b.test": rec_b.app,
            "localhost": rec_a.app,
        }
    )
    loop = LoopThread("auth-tests")
    try:
        yield World(
            "inprocess",
            provider,
            clock,
            "https://a.test",
            "https://b.test",
            rec_a,
            rec_b,
            app=app,
            loop=loop,
            a_http="http://a.test",
        )
    finally:
        loop.close()
        provider.close()


@pytest.fixture(scope="module")
def loopback_world() -> Iterator[World]:
    clock = FakeClock(ticking=True)
    provider = _provider(clock)
    rec_a, rec_b = Recorder(), Recorder()
    with (
        provider.serve(),
        serve_app(rec_a.app) as (_, port_a),
        serve_app(rec_b.app) as (_, port_b),
    ):
        yield World(
            "loopback",
            provider,
            clock,
            f"http://127.0.0.1:{port_a}",
            f"http://127.0.0.1:{port_b}",
            rec_a,
            rec_b,
        )
    provider.close()


@pytest.fixture(params=["inprocess", "loopback"])
def world(request: pytest.FixtureRequest) -> World:
    w: World = request.getfixturevalue(f"{request.param}_world")
    w.reset()
    return w


@dataclass
class Env:
    world: World
    kind: str
    broker: Broker
    drivers: list[Driver] = field(default_factory=list)
    events: list[InsufficientScopeEvent] = field(default_factory=list)

    def auth(self, **kwargs: Any) -> BrokerAuth:
        kwargs.setdefault("tenant", "acme")
        kwargs.setdefault("principal", f"svc-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("scopes", ["read"])
        kwargs.setdefault("on_insufficient_scope", self.events.append)
        return BrokerAuth(self.broker, **kwargs)

    def driver(self, auth: BrokerAuth, kind: str | None = None) -> Driver:
        d = Driver(kind or self.kind, auth, inprocess_app=self.world.app, loop=self.world.loop)
        self.drivers.append(d)
        return d

    def token(self, auth: BrokerAuth) -> str:
        lease = self.broker.cached_lease(auth.key)
        assert lease is not None
        return lease.access_token.get_secret_value()

    @property
    def counters(self) -> Any:
        return self.world.provider.counters


def services(tenant: str, principal: str) -> bool:
    """The principals these tests sign as are the app's services (SECURITY J6: explicit)."""
    return principal.startswith("svc") or principal == "p"


def make_broker(world: World, **overrides: Any) -> Broker:
    descriptor = world.provider.descriptor(**overrides)
    clients: dict[str, Any] = {}
    if world.kind == "inprocess":
        clients = {
            "http_client": world.provider.client(),
            "async_http_client": world.provider.async_client(),
        }
    return Broker(
        descriptor,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        clock=world.clock,
        client_credentials_principals=services,
        **clients,
    )


@pytest.fixture(params=CLIENTS)
async def env(request: pytest.FixtureRequest, world: World) -> AsyncIterator[Env]:
    broker = make_broker(world)
    e = Env(world, request.param, broker)
    try:
        yield e
    finally:
        for d in e.drivers:
            await d.aclose()
        await broker.aclose()


class TestBehaviour:
    async def test_warm_token_signs_without_a_token_request(self, env: Env) -> None:
        d = env.driver(env.auth())
        first = await d.send("GET", env.world.resource)
        second = await d.send("GET", env.world.resource)
        assert (first.status, second.status) == (200, 200)
        assert first.json["scope"] == "read"
        assert env.counters["token"] == 1
        assert env.counters["resource:ok"] == 2

    async def test_expired_token_is_refreshed_before_sending(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        assert (await d.send("GET", env.world.resource)).status == 200
        old = env.token(auth)
        env.world.clock.offset += 7200  # past expiry for broker and provider alike
        assert (await d.send("GET", env.world.resource)).status == 200
        assert env.counters["token"] == 2
        assert env.token(auth) != old
        # no request went out with the expired token
        assert env.counters["resource"] == env.counters["resource:ok"] == 2

    async def test_401_invalid_token_refreshes_once_and_retries_once(self, env: Env) -> None:
        d = env.driver(env.auth())
        await d.send("GET", env.world.resource)
        env.world.provider.faults.add("resource", status=401)
        result = await d.send("POST", env.world.resource, content=b"payload")
        assert result.status == 200
        assert result.json["body_len"] == len(b"payload")  # the body was replayed intact
        assert env.counters["token"] == 2
        assert env.counters["resource"] == 3

    async def test_second_401_is_returned_not_looped(self, env: Env) -> None:
        d = env.driver(env.auth())
        await d.send("GET", env.world.resource)
        env.world.provider.faults.add("resource", status=401, times=3)
        result = await d.send("GET", env.world.resource)
        assert result.status == 401
        assert env.counters["resource"] == 3  # warm-up, the 401, one retry
        assert env.counters["token"] == 2

    async def test_token_revoked_on_server_is_recovered(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        await d.send("GET", env.world.resource)
        assert env.world.provider.invalidate_access_token(env.token(auth))
        result = await d.send("POST", env.world.resource, content=b"x")
        assert result.status == 200
        assert env.counters["token"] == 2
        assert env.counters["resource:ok"] == 2

    async def test_cross_origin_redirect_leaves_the_token_behind(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        w = env.world
        result = await d.send("GET", f"{w.a}/redirect?to={w.b}/echo")
        assert result.status == 200
        assert result.json == {"signed": False}
        assert w.rec_a.authorizations() == [f"Bearer {env.token(auth)}"]
        assert w.rec_b.authorizations() == [None]

    async def test_same_origin_redirect_keeps_the_token(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        w = env.world
        result = await d.send("GET", f"{w.a}/redirect?to=/echo")
        assert result.status == 200
        assert result.json == {"signed": True}
        token = f"Bearer {env.token(auth)}"
        assert w.rec_a.authorizations() == [token, token]

    async def test_the_callers_own_authorization_header_is_kept_and_not_signed(
        self, env: Env
    ) -> None:
        d = env.driver(env.auth())
        w = env.world
        result = await d.send_raw("GET", f"{w.a}/echo", headers={"Authorization": "Basic dTpw"})
        assert result.status == 200
        assert w.rec_a.authorizations() == ["Basic dTpw"]
        assert env.counters["token"] == 0  # nothing was signed, so no token was fetched

    async def test_a_url_carrying_access_token_is_refused_before_sending(self, env: Env) -> None:
        d = env.driver(env.auth())
        w = env.world
        with pytest.raises(UnsafeRequest) as caught:
            await d.send("GET", f"{w.a}/echo?page=2&access_token=leaked-value")
        assert "leaked-value" not in str(caught.value)
        assert "access_token" in str(caught.value)
        assert w.rec_a.authorizations() == []
        # A parameter that only contains the name is fine.
        assert (await d.send("GET", f"{w.a}/echo?my_access_token_hint=1")).status == 200

    async def test_a_percent_encoded_access_token_parameter_is_refused_too(self, env: Env) -> None:
        """``access%5Ftoken`` decodes to ``access_token`` at the server: the cheap per-request
        pre-check must not let it through (it looked for the literal name only)."""
        d = env.driver(env.auth())
        w = env.world
        for query in ("access%5Ftoken=leaked-value", "%61ccess_token=leaked-value"):
            with pytest.raises(UnsafeRequest) as caught:
                await d.send("GET", f"{w.a}/echo?page=2&{query}")
            assert "leaked-value" not in str(caught.value)
        assert w.rec_a.authorizations() == []
        # A percent-encoded value of another parameter is fine.
        assert (await d.send("GET", f"{w.a}/echo?q=a%20b")).status == 200

    async def test_401_from_another_origin_after_redirect_does_not_refresh(self, env: Env) -> None:
        d = env.driver(env.auth())
        w = env.world
        result = await d.send("GET", f"{w.a}/redirect?to={w.b}/challenge")
        assert result.status == 401
        assert env.counters["token"] == 1
        assert w.rec_b.authorizations() == [None]

    async def test_streaming_body_is_never_sent_twice(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        await d.send("GET", env.world.resource)
        first = env.token(auth)
        env.world.provider.faults.add("resource", status=401)
        result = await d.send("POST", env.world.resource, stream=[b"chunk-1", b"chunk-2"])
        assert result.status == 401
        assert env.counters["resource"] == 2
        # the rejected token was still replaced, so the next request works at once
        assert env.token(auth) != first
        assert (await d.send("GET", env.world.resource)).status == 200
        assert env.counters["resource"] == 3

    async def test_403_insufficient_scope_is_reported_not_retried(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        result = await d.send("GET", f"{env.world.resource}?required_scope=admin")
        assert result.status == 403
        assert env.counters["resource"] == 1
        assert env.counters["token"] == 1
        assert len(env.events) == 1
        event = env.events[0]
        assert event.required_scopes == ("admin",)
        assert event.granted_scopes == ("read",)
        assert (event.tenant, event.provider) == ("acme", "mock")
        assert event.principal == auth.key.principal
        assert event.url == env.world.resource  # no query string

    async def test_authorization_required_propagates_unchanged(self, env: Env) -> None:
        env.broker = make_broker(env.world, grants=["authorization_code", "refresh_token"])
        d = env.driver(env.auth())
        with pytest.raises(AuthorizationRequired) as info:
            await d.send("GET", env.world.resource)
        assert info.type is AuthorizationRequired
        assert env.counters["resource"] == 0
        await env.broker.aclose()

    async def test_other_401_challenges_are_not_retried(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        w = env.world
        for www in ("Basic realm=x", 'Bearer error="invalid_request"'):
            result = await d.send("GET", f"{w.a}/challenge?www={www}")
            assert result.status == 401
        assert len(w.rec_a.seen) == 2
        assert env.counters["token"] == 1

    async def test_401_that_says_nothing_is_retried_once_with_a_new_token(self, env: Env) -> None:
        auth = env.auth()
        d = env.driver(auth)
        w = env.world
        result = await d.send("GET", f"{w.a}/challenge?www=")
        assert result.status == 401
        first, second = w.rec_a.authorizations()
        assert first
        assert second
        assert first != second
        assert env.counters["token"] == 2
        result = await d.send("GET", f"{w.a}/challenge?www=Bearer realm=api")
        assert result.status == 401
        assert len(w.rec_a.seen) == 4  # a bare Bearer challenge: also one retry

    async def test_allowed_origins_bind_the_token(self, env: Env) -> None:
        w = env.world
        auth = env.auth(allowed_origins=[w.a])
        d = env.driver(auth)
        await d.send("GET", f"{w.a}/echo")
        await d.send("GET", f"{w.b}/echo")
        await d.send("GET", f"{w.b}/challenge")  # a 401 from elsewhere refreshes nothing
        assert w.rec_a.authorizations() == [f"Bearer {env.token(auth)}"]
        assert w.rec_b.authorizations() == [None, None]
        assert env.counters["token"] == 1

    async def test_no_token_in_repr_or_logs(
        self, env: Env, caplog: pytest.LogCaptureFixture
    ) -> None:
        auth = env.auth()
        d = env.driver(auth)
        caplog.set_level(logging.DEBUG)
        await d.send("GET", env.world.resource)
        token = env.token(auth)
        env.world.provider.faults.add("resource", status=401)
        await d.send("GET", env.world.resource)
        await d.send("GET", f"{env.world.resource}?required_scope=admin")
        new_token = env.token(auth)
        text = repr(auth) + str(auth) + caplog.text
        assert "401" in caplog.text
        assert "insufficient_scope" in caplog.text
        assert token not in text
        assert new_token not in text
        assert "acme" in repr(auth)
        assert "mock" in repr(auth)


async def test_https_to_http_downgrade_never_carries_the_token(inprocess_world: World) -> None:
    w = inprocess_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal="svc-down", scopes=["read"])
    for kind in CLIENTS:
        d = Driver(kind, auth, inprocess_app=w.app, loop=w.loop)
        try:
            result = await d.send("GET", f"{w.a}/redirect?to={w.a_http}/echo")
            assert result.status == 200
            assert result.json == {"signed": False}, kind
        finally:
            await d.aclose()
    seen = w.rec_a.seen
    assert [s.scheme for s in seen] == ["https", "http"] * len(CLIENTS)
    assert all(s.authorization for s in seen if s.scheme == "https")
    assert all(s.authorization is None for s in seen if s.scheme == "http")
    await broker.aclose()


@pytest.fixture(scope="module")
def tls_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, Recorder, str]]:
    """Recorder on https://127.0.0.1:<p1> and http://127.0.0.1:<p2>: (https, http, rec, ca)."""
    from test_auth_support import make_loopback_cert
    from test_auth_support import serve_tls

    cert, key = make_loopback_cert(tmp_path_factory.mktemp("tls"))
    rec = Recorder()
    with serve_tls(rec.app, cert, key) as tls_port, serve_app(rec.app) as (_, plain_port):
        yield f"https://127.0.0.1:{tls_port}", f"http://127.0.0.1:{plain_port}", rec, cert
    rec.clear()


@pytest.mark.parametrize("kind", CLIENTS)
async def test_https_to_http_downgrade_over_loopback_tls(
    tls_world: tuple[str, str, Recorder, str], loopback_world: World, kind: str
) -> None:
    https_base, http_base, rec, cafile = tls_world
    rec.clear()
    broker = make_broker(loopback_world)
    auth = BrokerAuth(broker, tenant="acme", principal=f"svc-tls-{kind}", scopes=["read"])
    d = Driver(kind, auth, inprocess_app=None, loop=None, verify=cafile)
    try:
        result = await d.send("GET", f"{https_base}/redirect?to={http_base}/echo")
        assert result.status == 200
        assert result.json == {"signed": False}
    finally:
        await d.aclose()
        await broker.aclose()
    assert [(s.scheme, s.authorization is not None) for s in rec.seen] == [
        ("https", True),
        ("http", False),
    ]


async def test_plain_http_is_signed_only_for_loopback(inprocess_world: World) -> None:
    w = inprocess_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal="svc-http", scopes=["read"])
    for kind in CLIENTS:
        d = Driver(kind, auth, inprocess_app=w.app, loop=w.loop)
        try:
            assert (await d.send("GET", f"{w.a_http}/echo")).json == {"signed": False}
        finally:
            await d.aclose()
    assert w.provider.counters["token"] == 0  # not even fetched
    await broker.aclose()


def test_another_callers_replacement_is_used_without_a_refresh(inprocess_world: World) -> None:
    """The 401 arrives after someone else already replaced the token: no second refresh."""
    w = inprocess_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal="svc-race", scopes=["read"])
    stale = broker.lease_for_key(auth.key, scopes=["read"])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if len(seen) == 1:
            broker.replace_lease(stale)  # another caller got a 401 first and replaced it
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client:
        assert client.get("https://api.test/x").status_code == 200
    assert w.provider.counters["token"] == 2  # the first lease and one replacement
    assert seen[0] != seen[1]
    assert seen[1] == broker.cached_lease(auth.key).authorization_header  # type: ignore[union-attr]
    broker.close()


async def test_cold_cache_200_tasks_and_16_threads_make_one_token_request() -> None:
    provider = MockProvider(latency={"token": 0.2})
    with provider.serve():
        broker = Broker(
            provider.descriptor(),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            client_credentials_principals=services,
        )
        auth = BrokerAuth(broker, tenant="acme", principal="svc-crowd", scopes=["read"])
        url = provider.resource_url
        barrier = threading.Barrier(16)
        thread_results: list[int] = []

        def in_thread(i: int) -> None:
            barrier.wait()
            if i % 3 == 0:
                thread_results.append(requests.get(url, auth=auth, timeout=30).status_code)
            elif i % 3 == 1:
                with httpx.Client(auth=auth) as c:
                    thread_results.append(c.get(url).status_code)
            else:
                with httpx2.Client(auth=auth) as c2:
                    thread_results.append(c2.get(url).status_code)

        threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(16)]
        limits = httpx2.Limits(max_connections=300)
        async with (
            httpx2.AsyncClient(auth=auth, limits=limits) as c2,
            httpx.AsyncClient(auth=auth, limits=httpx.Limits(max_connections=300)) as c1,
        ):
            for t in threads:
                t.start()
            responses = await asyncio.gather(
                *((c2 if i % 2 else c1).get(url, timeout=30) for i in range(200))
            )
            await asyncio.to_thread(lambda: [t.join() for t in threads])
        assert [r.status_code for r in responses] == [200] * 200
        assert thread_results == [200] * 16
        assert provider.counters["token"] == 1
        assert provider.counters["resource:ok"] == 216
        await broker.aclose()
    provider.close()


def test_requests_never_carries_the_token_on_an_http_to_https_upgrade(
    inprocess_world: World,
) -> None:
    """requests itself keeps Authorization on http->https of one host; our hook strips it."""
    w = inprocess_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal="svc-up", scopes=["read"])
    d = Driver("requests", auth, inprocess_app=w.app, loop=w.loop)
    result = asyncio.run(d.send("GET", "http://localhost/redirect?to=https://localhost/echo"))
    assert result.status == 200
    assert [(s.scheme, s.authorization is not None) for s in w.rec_a.seen] == [
        ("http", True),
        ("https", False),
    ]
    broker.close()


@pytest.mark.parametrize("kind", ["httpx2", "httpx", "requests"])  # async clients take no files
async def test_a_seekable_file_body_is_replayed_only_by_requests(
    inprocess_world: World, kind: str, tmp_path: Any
) -> None:
    """requests rewinds a file body for the retry; httpx streams files, so it returns the 401."""
    w = inprocess_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal=f"svc-file-{kind}", scopes=["read"])
    path = tmp_path / "body.bin"
    path.write_bytes(b"0123456789" * 100)
    d = Driver(kind, auth, inprocess_app=w.app, loop=w.loop)
    try:
        await d.send("GET", w.resource)
        w.provider.faults.add("resource", status=401)
        with path.open("rb") as fh:
            if kind == "requests":
                result = await d.send_raw("POST", w.resource, data=fh)
                assert result.status == 200
                assert result.json["body_len"] == 1000
            else:
                result = await d.send_raw("POST", w.resource, content=fh)
                assert result.status == 401
        assert w.provider.counters["token"] == 2
    finally:
        await d.aclose()
        await broker.aclose()


def test_requests_top_level_api_and_session_auth(loopback_world: World) -> None:
    w = loopback_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal="svc-req", scopes=["read"])
    assert requests.get(w.resource, auth=auth, timeout=10).status_code == 200
    w.provider.faults.add("resource", status=401)
    response = requests.post(w.resource, data=b"abc", auth=auth, timeout=10)
    assert response.status_code == 200
    assert response.json()["body_len"] == 3
    assert [h.status_code for h in response.history] == [401]
    with requests.Session() as session:
        session.auth = auth
        assert session.get(w.resource, timeout=10).status_code == 200
    assert w.provider.counters["token"] == 2
    broker.close()


def test_required_scopes_not_granted_raise_before_sending(inprocess_world: World) -> None:
    w = inprocess_world
    w.reset()
    broker = make_broker(w, scope_delimiter=" ")
    w.provider.scopes_supported = ("read",)
    try:
        auth = BrokerAuth(
            broker,
            tenant="acme",
            principal="svc-req-scope",
            scopes=["read"],
            required_scopes=["read"],
        )
        with httpx2.Client(transport=w.provider.transport(), auth=auth) as client:
            assert client.get(w.resource).status_code == 200
        narrow = BrokerAuth(
            broker,
            tenant="acme",
            principal="svc-req-scope",
            scopes=["read"],
            required_scopes=["read", "write"],
        )
        with (
            httpx2.Client(transport=w.provider.transport(), auth=narrow) as client,
            pytest.raises(InsufficientScope) as info,
        ):
            client.get(w.resource)
        assert info.value.missing == ("write",)
        assert w.provider.counters["resource"] == 1
    finally:
        w.provider.scopes_supported = None
        broker.close()


# -- construction and typing ------------------------------------------------------------------
def test_one_instance_is_every_clients_auth(inprocess_world: World) -> None:
    auth = BrokerAuth(make_broker(inprocess_world), tenant="t", principal="p")
    assert isinstance(auth, httpx.Auth)
    assert isinstance(auth, httpx2.Auth)
    assert isinstance(auth, requests.auth.AuthBase)
    # each client accepts it as is (not wrapped into a FunctionAuth)
    assert httpx.Client(auth=auth).auth is auth
    assert httpx2.Client(auth=auth).auth is auth


def test_allowed_origins_are_validated(inprocess_world: World) -> None:
    broker = make_broker(inprocess_world)
    for bad in ("http://example.com", "https://a.test/path", "a.test", "https://a.test?x=1"):
        with pytest.raises(ConfigurationError):
            BrokerAuth(broker, tenant="t", principal="p", allowed_origins=[bad])
    with pytest.raises(ConfigurationError):
        BrokerAuth(broker, tenant="t", principal="p", allowed_origins=[])
    auth = BrokerAuth(
        broker,
        tenant="t",
        principal="p",
        allowed_origins=["https://API.example.com:443", "http://127.0.0.1:8080"],
    )
    assert auth.allowed_origins == {"https://api.example.com", "http://127.0.0.1:8080"}


def test_descriptor_allowed_origins_are_the_default(inprocess_world: World) -> None:
    broker = make_broker(inprocess_world, allowed_origins=("https://a.test",))
    auth = BrokerAuth(broker, tenant="t", principal="p")
    assert auth.allowed_origins == {"https://a.test"}
    explicit = BrokerAuth(broker, tenant="t", principal="p", allowed_origins=["https://b.test"])
    assert explicit.allowed_origins == {"https://b.test"}


def test_imports_and_signs_with_only_httpx2_installed() -> None:
    """httpx and requests are optional: hide them and BrokerAuth still works for httpx2."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["httpx"] = None
sys.modules["requests"] = None
import httpx2
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw._core.provider import ProviderDescriptor

def idp(request):
    return httpx2.Response(200, json={"access_token": "t-1", "token_type": "Bearer"})

d = ProviderDescriptor(
    id="p", token_endpoint="https://idp.test/token", grants=["client_credentials"]
)
b = Broker(d, client_id="c", client_secret="s",
           http_client=httpx2.Client(transport=httpx2.MockTransport(idp)))
auth = BrokerAuth(b, tenant="t", principal="p")
seen = []
def api(request):
    seen.append(request.headers.get("authorization"))
    return httpx2.Response(200)
with httpx2.Client(transport=httpx2.MockTransport(api), auth=auth) as c:
    assert c.get("https://api.test/").status_code == 200
assert seen == ["Bearer t-1"], seen
assert "httpx" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("kind", ["httpx2-async", "httpx-async"])
async def test_async_clients_never_block_the_loop_while_a_token_is_fetched(kind: str) -> None:
    """The token endpoint holds its answer until the test's event loop has run a coroutine:
    an auth that fetched the token synchronously on the loop would keep it waiting."""
    provider = MockProvider()
    token_arrived, loop_ran = threading.Event(), threading.Event()
    released: list[bool] = []

    async def gate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/token":
            token_arrived.set()
            released.append(await asyncio.to_thread(loop_ran.wait, 10))
        await provider.app(scope, receive, send)

    def set_issuer(port: int) -> None:
        provider.issuer = f"http://127.0.0.1:{port}"

    with serve_app(gate, on_port=set_issuer):
        broker = Broker(
            provider.descriptor(),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            client_credentials_principals=services,
        )
        auth = BrokerAuth(broker, tenant="acme", principal="svc-loop", scopes=["read"])
        d = Driver(kind, auth, inprocess_app=None, loop=None)
        try:
            request = asyncio.create_task(d.send("GET", provider.resource_url))
            assert await asyncio.to_thread(token_arrived.wait, 10)
            loop_ran.set()  # only reachable while the request task awaits its token
            assert (await request).status == 200
        finally:
            await d.aclose()
            await broker.aclose()
    provider.close()
    assert released == [True]


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_raising_scope_callback_turns_the_403_into_an_error(
    inprocess_world: World, kind: str
) -> None:
    class NeedsConsent(Exception):
        pass

    def escalate(event: InsufficientScopeEvent) -> None:
        raise NeedsConsent(" ".join(event.required_scopes))

    w = inprocess_world
    w.reset()
    broker = make_broker(w)
    auth = BrokerAuth(
        broker,
        tenant="acme",
        principal=f"svc-consent-{kind}",
        scopes=["read"],
        on_insufficient_scope=escalate,
    )
    d = Driver(kind, auth, inprocess_app=w.app, loop=w.loop)
    try:
        with pytest.raises(NeedsConsent, match="admin write"):
            await d.send("GET", f"{w.resource}?required_scope=write+admin")
    finally:
        await d.aclose()
        await broker.aclose()
    assert w.provider.counters["resource"] == 1


def test_requests_netrc_never_replaces_the_token_on_a_same_origin_redirect(
    loopback_world: World, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``trust_env`` and a .netrc entry, requests' rebuild_auth applies netrc Basic to
    every redirect hop; our token must stay (requests itself prefers explicit auth)."""
    w = loopback_world
    w.reset()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    broker = make_broker(w)
    auth = BrokerAuth(broker, tenant="acme", principal="svc-netrc", scopes=["read"])
    with broker, requests.Session() as session:
        assert session.trust_env
        response = session.get(f"{w.a}/redirect?to=/redirect%3Fto%3D/echo", auth=auth, timeout=10)
        assert response.status_code == 200
        assert response.json() == {"signed": True}
        lease = broker.cached_lease(auth.key)
        assert lease is not None
        bearer = f"Bearer {lease.access_token.get_secret_value()}"
        assert w.rec_a.authorizations() == [bearer, bearer, bearer]
        # Another origin: the token stays behind, and netrc applies there as requests wants.
        w.rec_a.clear()
        response = session.get(f"{w.a}/redirect?to={w.b}/echo", auth=auth, timeout=10)
        assert w.rec_a.authorizations() == [bearer]
        assert w.rec_b.authorizations() != [bearer]
