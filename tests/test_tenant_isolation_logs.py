"""SECURITY J7: what one tenant's failures say never names another tenant.

Two tenants share one :class:`Registry`, one store and one provider product, each with its own
OAuth app at its own instance (``acme`` / ``alice`` at ``acme-idp.test``, ``globex`` /
``gina`` at ``globex-idp.test``). The *other* tenant is given live state first: a cached
lease, a rotation the store refused (held in memory), a queued revocation, a login in flight
and a spent rate-limit budget. Then the *served* tenant is driven through every failure it can
hit: provider 400, 503 and 429, a malformed token response, the store down, an unknown
provider, a provider not enabled for it, ``AuthorizationRequired``, a revoked session, a
failed refresh in a ``Refresher`` sweep, off-boarding whose revocations fail, and the
middleware's error pages (ASGI and WSGI).

Everything emitted while serving it is captured: every log record (DEBUG, formatted with
tracebacks and extra fields), every exception with its chain, every lifecycle event, every
HTTP error response. None may carry the other tenant's ids (tenant, principal, client id,
instance host, store key). Metric labels and span attributes carry no tenant or principal id
of either (there is no operator opt-in for them). Each test runs both ways round.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
import urllib.parse
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import httpx2
import pytest
from _fakes import FakeClock
from _services import require_module

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import BrokerError
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import ProviderNotEnabled
from oauth2_broker_mw import Registration
from oauth2_broker_mw import Registry
from oauth2_broker_mw import Secret
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import StoreUnavailable
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw import UnknownTenant
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.ratelimit import TokenBucket
from oauth2_broker_mw.refresher import Refresher
from oauth2_broker_mw.telemetry import Telemetry
from oauth2_broker_mw.testing.mock_provider import MockProvider

sdk_trace = require_module("opentelemetry.sdk.trace", "otel")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

SCOPES = ("openid", "email")
BASE = "http://127.0.0.1"
SECRET_KEY = "isolation-test-secret-" + "Vb7Qm2Xr9Lt4Zp8Hs1Kw6Nd3Jy5"


@dataclass(frozen=True)
class Party:
    """One tenant: its id, its user, its own OAuth app at its own instance."""

    tenant: str
    principal: str
    client_id: str
    host: str

    @property
    def issuer(self) -> str:
        return f"https://{self.host}"

    @property
    def ids(self) -> tuple[str, ...]:
        """What identifies this tenant: none of it may appear in another tenant's output."""
        return (self.tenant, self.principal, self.client_id, self.host)


ACME = Party("acme", "alice", "acme-app", "acme-idp.test")
GLOBEX = Party("globex", "gina", "globex-app", "globex-idp.test")


class SwitchStore(MemoryStore):
    """A MemoryStore that is down on demand (``down``), or refuses the writes of some tenants
    (``refuse_writes``: a rotation of theirs cannot be stored)."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.refuse_writes: set[str] = set()

    def _check(self, record: TokenRecord | None = None) -> None:
        if self.down:
            raise StoreUnavailable("the token store did not answer (test switch)")
        if record is not None and record.key.tenant in self.refuse_writes:
            raise StoreUnavailable("the token store refused a write (test switch)")

    def get(self, key: StoreKey) -> TokenRecord | None:
        self._check()
        return super().get(key)

    def put(self, record: TokenRecord) -> TokenRecord:
        self._check(record)
        return super().put(record)

    def compare_and_swap(
        self, record: TokenRecord, *, expected_version: int | None
    ) -> TokenRecord | None:
        self._check(record)
        return super().compare_and_swap(record, expected_version=expected_version)

    def list_keys(self, tenant: Any, principal: str | None = None) -> list[StoreKey]:
        self._check()
        return super().list_keys(tenant, principal)

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        self._check()
        return super().acquire_lock(name, owner, ttl)

    def put_pending(self, pending: Any) -> None:
        self._check()
        super().put_pending(pending)

    def take_pending(self, state_key: str) -> Any:
        self._check()
        return super().take_pending(state_key)


@dataclass
class Budgets:
    """A real, store-counted budget per tenant: one token request an hour for ``tight``
    (the other tenant's budget is spent in its set-up), plenty for the served tenant."""

    tight: str = ""

    def check(self, call: Any) -> Any:
        rate = 1 if call.tenant == self.tight else 1000
        return (yield from TokenBucket(rate=rate, per=3600.0).check(call))


class Router(httpx2.BaseTransport):
    """One HTTP client for both instances (the registry shares one pool): by host."""

    def __init__(self, routes: dict[str, httpx2.BaseTransport]) -> None:
        self._routes = routes

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._routes[request.url.host].handle_request(request)


class AsyncRouter(httpx2.AsyncBaseTransport):
    def __init__(self, routes: dict[str, httpx2.AsyncBaseTransport]) -> None:
        self._routes = routes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._routes[request.url.host].handle_async_request(request)


class Everything(logging.Handler):
    """Every log record, as an operator's handler would write it: message, traceback, stack,
    and every extra attribute (a JSON formatter would ship those too)."""

    _PLAIN = frozenset(vars(logging.makeLogRecord({})))

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in vars(record).items() if k not in self._PLAIN}
        self.lines.append(self.format(record) + (f" {extras!r}" if extras else ""))


def explain(exc: BaseException) -> str:
    """An exception as a log would show it: the traceback with its chain, repr and fields."""
    fields = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(fields)


@dataclass
class World:
    clock: FakeClock
    store: SwitchStore
    providers: dict[str, MockProvider]
    registry: Registry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    log: Everything
    budgets: Budgets
    events: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)

    def mp(self, party: Party) -> MockProvider:
        return self.providers[party.tenant]

    def broker(self, party: Party) -> Any:
        return self.registry.broker(tenant=party.tenant, provider="mock")

    def seed(self, party: Party, principal: str, *, expired: bool = False) -> StoreKey:
        """A connection of ``principal`` with a live token pair at the party's instance."""
        issued = self.mp(party).issue_tokens(
            party.client_id, subject=principal, scopes=list(SCOPES)
        )
        now = self.clock()
        key = StoreKey.build(party.tenant, principal, "mock", SCOPES)
        self.store.put(
            TokenRecord(
                key=key,
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now - 7200,
                expires_at=now - 60 if expired else now + 3600,
                scopes=ScopeSet.of(SCOPES),
                requested_scopes=ScopeSet.of(SCOPES),
            )
        )
        return key

    def expect(self, kind: type[BaseException], call: Callable[[], object]) -> BaseException:
        with pytest.raises(kind) as caught:
            call()
        self.errors.append(explain(caught.value))
        return caught.value

    def start_serving(self) -> None:
        """From here on, everything captured was emitted while serving one tenant."""
        self.registry.events.flush()
        self.events.clear()
        self.log.lines.clear()
        self.errors.clear()
        self.pages.clear()

    def said(self) -> str:
        self.registry.events.flush()
        return "\n".join(
            [
                *self.log.lines,
                *self.errors,
                *self.pages,
                *(json.dumps(e.to_dict(), default=str) for e in self.events),
            ]
        )

    def telemetry(self) -> str:
        data = self.metrics.get_metrics_data()
        assert data is not None
        labels = [
            dict(point.attributes or {})
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points
        ]
        spans = self.spans.get_finished_spans()
        attributes = [dict(s.attributes or {}) for s in spans]
        attributes += [dict(e.attributes or {}) for s in spans for e in s.events]
        assert labels and attributes
        return json.dumps([labels, attributes, [s.name for s in spans]], default=str)


def assert_silent_about(text: str, party: Party) -> None:
    for value in party.ids:
        assert value not in text, f"{value!r} ({party.tenant}'s) was said:\n" + "\n".join(
            line for line in text.splitlines() if value in line
        )


@pytest.fixture
def world() -> Iterator[World]:
    clock = FakeClock()
    store = SwitchStore(clock=clock)
    providers: dict[str, MockProvider] = {}
    registrations: dict[tuple[str, str], Registration] = {}
    for party in (ACME, GLOBEX):
        mp = MockProvider(issuer=party.issuer, clock=clock)
        mp.register_client(party.client_id, party.client_id + "-secret")
        providers[party.tenant] = mp
        registrations[(party.tenant, "mock")] = Registration(
            "mock",
            mp.descriptor(grants=["authorization_code", "refresh_token"]),
            party.client_id,
            party.client_id + "-secret",
            scopes=SCOPES,
        )
    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    budgets = Budgets()
    sync_routes: dict[str, httpx2.BaseTransport] = {}
    async_routes: dict[str, httpx2.AsyncBaseTransport] = {}
    for party in (ACME, GLOBEX):
        sync_routes[party.host] = providers[party.tenant].transport()
        async_routes[party.host] = providers[party.tenant].async_transport()
    registry = Registry(
        store=store,
        registrations=registrations,
        http_client=httpx2.Client(transport=Router(sync_routes)),
        async_http_client=httpx2.AsyncClient(transport=AsyncRouter(async_routes)),
        clock=clock,
        broker_options={
            "telemetry": telemetry,
            "rate_limit": budgets,
            "write_retry_for": 0.0,
        },
    )
    handler = Everything()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    w = World(clock, store, providers, registry, exporter, reader, handler, budgets)
    registry.subscribe(w.events.append)
    try:
        yield w
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        registry.close()
        for mp in providers.values():
            mp.close()


def give_live_state(w: World, party: Party) -> dict[str, StoreKey]:
    """The other tenant's state that a careless line could name: a cached lease, a rotation
    the store refused (held in this process), a queued revocation, a login in flight, a spent
    rate-limit budget."""
    broker = w.broker(party)
    mp = w.mp(party)
    keys = {"cached": w.seed(party, party.principal)}
    broker.lease(tenant=party.tenant, principal=party.principal)
    keys["held"] = w.seed(party, party.principal + "-held", expired=True)
    w.store.refuse_writes.add(party.tenant)
    broker.lease(tenant=party.tenant, principal=party.principal + "-held")  # refreshed, unsaved
    w.store.refuse_writes.clear()
    assert broker.unsaved_rotations == 1
    keys["spent"] = w.seed(party, party.principal + "-spent", expired=True)
    w.expect(
        BrokerError, lambda: broker.lease(tenant=party.tenant, principal=party.principal + "-spent")
    )
    keys["queued"] = w.seed(party, party.principal + "-gone")
    mp.faults.add("revoke", "error", status=503, times=2)
    assert broker.revoke(tenant=party.tenant, principal=party.principal + "-gone")
    broker.start_authorization(
        tenant=party.tenant, principal=None, scopes=list(SCOPES), redirect_uri=BASE + "/cb"
    )
    mp.faults.clear()
    w.registry.events.flush()
    kinds = {e.kind for e in w.events}
    assert {"token_refreshed", "rotation_unsaved", "rate_limited", "revocation_queued"} <= kinds
    return keys


ROUNDS = [
    pytest.param(ACME, GLOBEX, id="acme-served"),
    pytest.param(GLOBEX, ACME, id="globex-served"),
]


def served_world(w: World, served: Party, other: Party) -> dict[str, StoreKey]:
    w.budgets.tight = other.tenant
    keys = give_live_state(w, other)
    w.start_serving()
    return keys


@pytest.mark.parametrize(("served", "other"), ROUNDS)
def test_the_broker_failures_of_one_tenant_name_no_other(
    world: World, served: Party, other: Party
) -> None:
    w = world
    served_world(w, served, other)
    broker, mp = w.broker(served), w.mp(served)
    me = served.principal
    # the provider refuses the refresh (400 invalid_grant): the user must log in again
    w.seed(served, me + "-400", expired=True)
    mp.faults.add("token", "error", status=400, error="invalid_grant")
    w.expect(
        AuthorizationRequired, lambda: broker.lease(tenant=served.tenant, principal=me + "-400")
    )
    # a malformed token response
    w.seed(served, me + "-garbled", expired=True)
    mp.faults.add("token", "malformed_json")
    w.expect(BrokerError, lambda: broker.lease(tenant=served.tenant, principal=me + "-garbled"))
    # 503, async this time
    w.seed(served, me + "-503", expired=True)
    mp.faults.add("token", "error", status=503)
    w.expect(
        BrokerError,
        lambda: asyncio.run(broker.alease(tenant=served.tenant, principal=me + "-503")),
    )
    # the store is down
    w.store.down = True
    w.expect(StoreUnavailable, lambda: broker.lease(tenant=served.tenant, principal=me))
    w.expect(
        StoreUnavailable,
        lambda: broker.start_authorization(
            tenant=served.tenant, principal=None, redirect_uri=BASE + "/cb"
        ),
    )
    w.store.down = False
    # no connection, and a revoked one
    w.expect(AuthorizationRequired, lambda: broker.lease(tenant=served.tenant, principal=me))
    w.seed(served, me + "-revoked")
    assert broker.revoke(tenant=served.tenant, principal=me + "-revoked")
    w.expect(
        AuthorizationRequired, lambda: broker.lease(tenant=served.tenant, principal=me + "-revoked")
    )
    # a provider the tenant has not enabled, an unknown tenant, a bad state at the callback
    w.expect(ProviderNotEnabled, lambda: w.registry.broker(tenant=served.tenant, provider="nope"))
    w.expect(UnknownTenant, lambda: w.registry.broker(tenant="initech", provider="mock"))
    w.expect(BrokerError, lambda: broker.exchange_code(state="not-a-state", code="x"))
    # 429 with Retry-After: the provider's gate closes; the next call is refused unsent
    w.seed(served, me + "-429", expired=True)
    mp.faults.add("token", "error", status=429, retry_after=30)
    w.expect(BrokerError, lambda: broker.lease(tenant=served.tenant, principal=me + "-429"))
    w.expect(BrokerError, lambda: broker.lease(tenant=served.tenant, principal=me + "-429"))
    said = w.said()
    for needed in ("invalid_grant", "MalformedResponse", "StoreUnavailable", "RateLimited"):
        assert needed in said  # the failures were captured (the test can see a leak)
    assert served.tenant in said and served.principal in said
    assert_silent_about(said, other)
    assert_silent_about(w.telemetry(), served)
    assert_silent_about(w.telemetry(), other)


@pytest.mark.parametrize(("served", "other"), ROUNDS)
def test_a_refresher_sweep_and_offboarding_of_one_tenant_name_no_other(
    world: World, served: Party, other: Party
) -> None:
    w = world
    keys = served_world(w, served, other)
    broker, mp = w.broker(served), w.mp(served)
    w.seed(served, served.principal + "-due", expired=True)
    w.seed(served, served.principal + "-due2", expired=True)
    mp.faults.add("token", "error", status=400, error="invalid_grant")
    mp.faults.add("token", "error", status=503)
    report = Refresher([broker], store=w.store, clock=w.clock).sweep()
    # this tenant's two records failed; the other tenant's due records (its held rotation and
    # its spent-budget record) were left alone, not sent to this tenant's app and instance
    assert (report.due, report.reauthorization_required, report.failed) == (4, 1, 1)
    assert (report.unknown_provider, report.rate_limited) == (2, 0)
    # the other tenant's records were not touched by this tenant's broker
    assert w.store.get(keys["cached"]) is not None
    # off-boarding: the provider takes no revocation
    w.seed(served, served.principal + "-offboarded")
    mp.faults.add("revoke", "error", status=503, times=None)
    forgotten = w.registry.forget_principal(served.tenant, served.principal + "-offboarded")
    offboarded = w.registry.offboard_tenant(served.tenant)
    assert offboarded.tokens.revocation_failed
    w.expect(UnknownTenant, lambda: w.registry.broker(tenant=served.tenant, provider="mock"))
    said = w.said() + repr(report) + repr(report.to_dict()) + repr(forgotten) + repr(offboarded)
    assert "invalid_grant" in said or "InvalidGrant" in said
    assert served.tenant in said
    assert_silent_about(said, other)
    assert_silent_about(w.telemetry(), served)
    assert_silent_about(w.telemetry(), other)


# -- the middleware: error pages and JSON errors of one tenant ---------------------------------
def _app(framework: str, w: World) -> Any:
    """A tiny app over the registry (tenant from the path): ``whoami`` and ``lease``; a broker
    error the middleware does not answer itself is kept (with its chain) and shown as a 500."""
    from oauth2_broker_mw.middleware import BrokerMiddleware
    from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
    from oauth2_broker_mw.middleware import path_prefix_tenant

    options: dict[str, Any] = {
        "registry": w.registry,
        "secret_key": SECRET_KEY,
        "base_url": BASE,
        "clock": w.clock,
        "tenant_resolver": path_prefix_tenant("/t"),
    }

    def failed(exc: BrokerError) -> tuple[dict[str, str], int]:
        w.errors.append(explain(exc))
        return {"error": type(exc).__name__, "message": str(exc)}, 500

    if framework == "asgi":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def whoami(request: Request) -> JSONResponse:
            return JSONResponse({"principal": request.state.oauth2_broker.principal})

        async def lease(request: Request) -> JSONResponse:
            try:
                got = await request.state.oauth2_broker.alease(request.path_params["provider"])
            except (AuthorizationRequired, UnknownTenant, ProviderNotEnabled):
                raise  # the middleware answers these (401 / 404)
            except BrokerError as exc:
                body, status = failed(exc)
                return JSONResponse(body, status_code=status)
            return JSONResponse({"principal": str(got.key.principal)})

        routes = [Route("/t/{tenant}/whoami", whoami), Route("/t/{tenant}/lease/{provider}", lease)]
        app = Starlette(routes=routes)
        app.add_middleware(BrokerMiddleware, **options)
        return app
    from flask import Flask
    from flask import jsonify
    from flask import request

    flask_app = Flask("obm_isolation_test")

    @flask_app.get("/t/<tenant>/whoami")
    def flask_whoami(tenant: str) -> Any:
        return jsonify({"principal": request.environ["oauth2_broker"].principal})

    @flask_app.get("/t/<tenant>/lease/<provider>")
    def flask_lease(tenant: str, provider: str) -> Any:
        try:
            got = request.environ["oauth2_broker"].lease(provider)
        except (AuthorizationRequired, UnknownTenant, ProviderNotEnabled):
            raise
        except BrokerError as exc:
            body, status = failed(exc)
            return jsonify(body), status
        return jsonify({"principal": str(got.key.principal)})

    flask_app.wsgi_app = BrokerWSGIMiddleware(flask_app.wsgi_app, **options)  # type: ignore[method-assign]
    return flask_app


def _browser(framework: str, app: Any) -> httpx2.Client:
    if framework == "asgi":
        from starlette.testclient import TestClient

        client: httpx2.Client = TestClient(
            app, base_url=BASE, follow_redirects=False, client=("127.0.0.1", 50000)
        )
        return client
    return httpx2.Client(
        transport=httpx2.WSGITransport(app=app), base_url=BASE, follow_redirects=False
    )


@pytest.mark.parametrize("framework", ["asgi", "wsgi"])
@pytest.mark.parametrize(("served", "other"), ROUNDS)
def test_the_middleware_errors_of_one_tenant_name_no_other(
    world: World, served: Party, other: Party, framework: str
) -> None:
    w = world
    served_world(w, served, other)
    mp = w.mp(served)
    browser = _browser(framework, _app(framework, w))
    home = f"/t/{served.tenant}/whoami"
    json_only = {"accept": "application/json"}

    def seen(response: httpx2.Response) -> httpx2.Response:
        w.pages.append(f"{response.status_code} {dict(response.headers)!r} {response.text}")
        return response

    def start() -> str:
        started = seen(browser.get("/oauth2/mock/login", params={"return_to": home}))
        assert started.status_code == 302, started.text
        url = (
            started.headers["location"]
            + "&"
            + urllib.parse.urlencode({"login_hint": served.principal})
        )
        with mp.client() as idp:
            approved = idp.get(url)
        assert approved.status_code == 302, approved.text
        return str(approved.headers["location"])

    def callback(fault: dict[str, Any] | None, status: int) -> None:
        location = start()
        if fault is not None:
            mp.faults.add("token", **fault)
        assert seen(browser.get(location)).status_code == status

    callback({"kind": "error", "status": 400, "error": "invalid_grant"}, 400)
    callback({"kind": "error", "status": 503}, 502)
    callback({"kind": "malformed_json"}, 400)
    assert seen(browser.get("/oauth2/mock/callback?state=forged&code=x")).status_code == 400
    w.store.down = True
    assert seen(browser.get("/oauth2/mock/login", params={"return_to": home})).status_code == 503
    w.store.down = False
    lease = f"/t/{served.tenant}/lease/mock"
    assert seen(browser.get(lease, headers=json_only)).status_code == 401  # nobody logged in
    not_enabled = f"/t/{served.tenant}/lease/nope"
    unknown = seen(browser.get("/oauth2/nope/login", params={"return_to": home}))
    assert unknown.status_code == 404
    callback(None, 303)  # logged in
    assert seen(browser.get(lease)).json()["principal"] == served.principal
    assert seen(browser.get(not_enabled, headers=json_only)).status_code == 401  # not connected
    cookies = dict(browser.cookies)
    mp.faults.add("revoke", "error", status=503, times=2)
    out = seen(browser.post("/oauth2/logout", data={"return_to": home}, headers={"origin": BASE}))
    assert out.status_code == 303
    replayed = _browser(framework, _app(framework, w))  # another worker, the old cookie
    for name, value in cookies.items():
        replayed.cookies.set(name, value)
    assert seen(replayed.get(home)).json()["principal"] is None
    assert seen(replayed.get(lease, headers=json_only)).status_code == 401
    said = w.said()
    for needed in ("exchange_failed", "provider_unavailable", "store_unavailable", "login_url"):
        assert needed in said
    assert served.tenant in said
    assert_silent_about(said, other)
    assert_silent_about(w.telemetry(), served)
    assert_silent_about(w.telemetry(), other)


@pytest.mark.parametrize(("served", "other"), ROUNDS)
def test_a_drain_of_one_tenant_sharing_an_app_delivers_only_its_own_revocations(
    served: Party, other: Party
) -> None:
    """Two tenants on one OAuth app (the app's default registration): the revocations queued
    for the other tenant are not delivered, dropped or logged by this tenant's broker."""
    from oauth2_broker_mw.broker import RevocationRetry

    clock = FakeClock()
    mp = MockProvider(clock=clock)
    shared = Registration("mock", mp.descriptor(), "test-client", "test-secret")
    registry = Registry(
        store=MemoryStore(clock=clock),
        registrations={(p.tenant, "mock"): shared for p in (ACME, GLOBEX)},
        http_client=mp.client(),
        clock=clock,
        broker_options={"revocation_retry": RevocationRetry(max_attempts=1)},
    )
    handler = Everything()
    logging.getLogger("oauth2_broker_mw").addHandler(handler)
    events: list[Any] = []
    registry.subscribe(events.append)
    try:
        theirs = registry.broker(tenant=other.tenant, provider="mock")
        issued = mp.issue_tokens("test-client", subject=other.principal, scopes=["openid"])
        now = clock()
        theirs.store.put(
            TokenRecord(
                key=theirs.key(tenant=other.tenant, principal=other.principal),
                access_token=Secret(issued["access_token"]),
                refresh_token=Secret(issued["refresh_token"]),
                issued_at=now,
                expires_at=now + 3600,
            )
        )
        mp.faults.add("revoke", "error", status=503, times=None)
        assert theirs.revoke(tenant=other.tenant, principal=other.principal)
        clock.advance(3600)
        registry.events.flush()
        events.clear()
        handler.lines.clear()
        mine = registry.broker(tenant=served.tenant, provider="mock")
        drained = mine.drain_revocations()
        registry.events.flush()
        assert (drained.delivered, drained.retrying, drained.dropped) == (0, 0, 0)
        said = "\n".join(handler.lines) + repr(drained) + repr([e.to_dict() for e in events])
        assert_silent_about(said, other)
        # the other tenant's own broker delivers it once the provider takes it
        mp.faults.clear()
        assert theirs.drain_revocations().delivered == 1
    finally:
        logging.getLogger("oauth2_broker_mw").removeHandler(handler)
        registry.close()
        mp.close()


@pytest.mark.parametrize(("served", "other"), ROUNDS)
def test_another_tenants_instance_backing_off_does_not_close_this_tenants_gate(
    world: World, served: Party, other: Party
) -> None:
    """The provider back-off and circuit breaker are per authorization server: the other
    tenant's own instance answering 429, or failing again and again, closes its own gate
    only. (Tenants on one shared instance share its gate, as every caller does.)"""
    w = world
    theirs = w.broker(other)
    w.mp(other).faults.add("token", "error", status=429, retry_after=300)
    w.seed(other, "x0", expired=True)
    w.expect(BrokerError, lambda: theirs.lease(tenant=other.tenant, principal="x0"))
    w.mp(other).faults.add("token", "error", status=503, times=None)
    w.clock.advance(301)
    for i in range(1, 7):  # one failure too many: the breaker opens for the other instance
        w.seed(other, f"x{i}", expired=True)
        w.expect(BrokerError, lambda i=i: theirs.lease(tenant=other.tenant, principal=f"x{i}"))
    w.seed(other, "x7", expired=True)
    w.expect(BrokerError, lambda: theirs.lease(tenant=other.tenant, principal="x7"))
    assert "circuit open" in "\n".join(w.log.lines)
    w.start_serving()
    mine = w.broker(served)
    w.seed(served, served.principal, expired=True)
    lease = mine.lease(tenant=served.tenant, principal=served.principal)
    assert lease.access_token.get_secret_value()
    assert w.mp(served).counters["token:refresh_token"] == 1
    assert_silent_about(w.said(), other)
