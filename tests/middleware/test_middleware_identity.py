"""Identities and sessions across issuers, logins, workers and tenants (SECURITY J1, J2, J10).

Each test runs through ASGI (Starlette, ``BrokerMiddleware``) and WSGI (Flask,
``BrokerWSGIMiddleware``), against real :class:`Broker` objects and in-process
:class:`MockProvider` instances sharing one store. Each ``browser()`` is a client with its own
cookie jar (attacker and victim). A "worker" is one middleware instance with its own memory;
two workers share only the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from _fakes import FakeClock
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_module
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw import Broker
from oauth2_broker_mw import StorageError
from oauth2_broker_mw import TenantId
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
from oauth2_broker_mw.stores.base import TokenStore
from oauth2_broker_mw.stores.memory import MemoryStore
from oauth2_broker_mw.testing.mock_provider import MockProvider

BASE = "http://127.0.0.1"
SECRET = "identity-test-secret-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"
FRAMEWORKS = ["starlette", "flask"]


def _lease_json(lease: Any) -> dict[str, Any]:
    token = lease.access_token.get_secret_value().encode()
    return {
        "principal": str(lease.key.principal),
        "provider": str(lease.key.provider),
        "token": hashlib.sha256(token).hexdigest()[:16],
    }


def _context_json(ctx: Any) -> dict[str, Any]:
    return {
        "tenant": ctx.tenant,
        "principal": ctx.principal,
        "issuer": getattr(ctx, "issuer", None),
        "connections": list(ctx.connections),
        "csrf_token": ctx.csrf_token,
    }


def _starlette_app(options: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(_context_json(request.state.oauth2_broker))

    async def lease(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        return JSONResponse(_lease_json(await request.state.oauth2_broker.alease(provider)))

    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/t/{tenant}/whoami", whoami),
            Route("/lease/{provider}", lease),
            Route("/t/{tenant}/lease/{provider}", lease),
        ]
    )
    app.add_middleware(BrokerMiddleware, **options)
    return app


def _flask_app(options: dict[str, Any]) -> Any:
    from flask import Flask
    from flask import jsonify
    from flask import request

    app = Flask("obm_identity_test")

    @app.get("/whoami")
    @app.get("/t/<tenant>/whoami")
    def whoami(tenant: str | None = None) -> Any:
        return jsonify(_context_json(request.environ["oauth2_broker"]))

    @app.get("/lease/<provider>")
    @app.get("/t/<tenant>/lease/<provider>")
    def lease(provider: str, tenant: str | None = None) -> Any:
        return jsonify(_lease_json(request.environ["oauth2_broker"].lease(provider)))

    app.wsgi_app = BrokerWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


@dataclass
class World:
    """Two OIDC providers: ``honest`` (Y) and ``evil`` (X, run by the attacker), one store."""

    framework: str
    providers: dict[str, MockProvider]
    brokers: dict[str, Broker]
    store: TokenStore
    clock: FakeClock
    options: dict[str, Any]
    _clients: list[httpx2.Client] = field(default_factory=list)
    _apps: list[Any] = field(default_factory=list)

    def worker(self, **options: Any) -> Any:
        """A new middleware instance (its own memory) over the same brokers and store."""
        config = {**self.options, **options}
        build = _starlette_app if self.framework == "starlette" else _flask_app
        app = build(config)
        self._apps.append(app)
        return app

    def browser(self, app: Any, **kwargs: Any) -> httpx2.Client:
        if self.framework == "starlette":
            from starlette.testclient import TestClient

            peer = ("127.0.0.1", 50000)  # as the WSGI transport's REMOTE_ADDR
            client: httpx2.Client = TestClient(
                app, base_url=BASE, follow_redirects=False, client=peer, **kwargs
            )
        else:
            client = httpx2.Client(
                transport=httpx2.WSGITransport(app=app),
                base_url=BASE,
                follow_redirects=False,
                **kwargs,
            )
        self._clients.append(client)
        return client

    def login(
        self,
        browser: httpx2.Client,
        provider: str,
        subject: str | None = None,
        return_to: str = "/whoami",
        headers: dict[str, str] | None = None,
    ) -> httpx2.Response:
        start = browser.get(
            f"/oauth2/{provider}/login", params={"return_to": return_to}, headers=headers
        )
        assert start.status_code == 302, start.text
        url = start.headers["location"]
        if subject is not None:
            url += "&" + urlencode({"login_hint": subject})
        with self.providers[provider].client() as idp:
            approved = idp.get(url)
        assert approved.status_code == 302, approved.text
        done = browser.get(approved.headers["location"], headers=headers)
        assert done.status_code == 303, done.text
        return done

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for mp in self.providers.values():
            mp.close()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    """The store both workers share: memory unless a test asks for a real one (indirect)."""
    kind = getattr(request, "param", "memory")
    made: TokenStore
    cleanups: list[Callable[[], None]] = []
    if kind == "memory":
        made = MemoryStore()
    elif kind == "sqlite":
        from oauth2_broker_mw.stores.sqlite import SQLiteStore

        made = SQLiteStore(tmp_path / "tokens.db")
    elif kind == "redis":
        require_module("redis", "redis")
        from oauth2_broker_mw.stores.redis import RedisStore

        prefix = unique_name("redis") + ":"
        made = RedisStore(require_redis(), prefix=prefix)
        cleanups.append(lambda: redis_cleanup(prefix))
    else:
        require_module("psycopg", "postgres")
        from oauth2_broker_mw.stores.postgres import PostgresStore

        schema = unique_name("pg")
        made = PostgresStore(require_postgres(), schema=schema)
        cleanups.append(lambda: postgres_drop_schema(schema))
    yield made
    made.close()
    for cleanup in cleanups:
        cleanup()


REAL_STORES = ["memory", "sqlite", "redis", "postgres"]


@pytest.fixture(params=FRAMEWORKS)
def world(request: pytest.FixtureRequest, store: TokenStore) -> Iterator[World]:
    clock = FakeClock()
    providers = {
        "honest": MockProvider(issuer="https://honest-idp.test"),
        "evil": MockProvider(issuer="https://evil-idp.test"),
    }
    brokers = {
        name: Broker(
            mp.descriptor(id=name),
            client_id="test-client",
            client_secret="test-secret",
            store=store,
            http_client=mp.client(),
            async_http_client=mp.async_client(),
        )
        for name, mp in providers.items()
    }
    options: dict[str, Any] = {
        "brokers": brokers,
        "scopes": {"honest": ["openid", "email"], "evil": ["openid", "email"]},
        "secret_key": SECRET,
        "base_url": BASE,
        "clock": clock,
    }
    w = World(request.param, providers, brokers, store, clock, options)
    yield w
    w.close()


# -- J1: the identity is (issuer, sub) -------------------------------------------------------
def test_a_login_at_one_issuer_never_leases_the_token_of_another(world: World) -> None:
    app = world.worker()
    victim, attacker = world.browser(app), world.browser(app)
    world.login(victim, "honest", subject="victim")
    victims_lease = victim.get("/lease/honest")
    assert victims_lease.status_code == 200
    assert victims_lease.json()["principal"] == "victim"

    # The attacker runs their own OIDC provider and makes it assert sub=victim.
    world.login(attacker, "evil", subject="victim")
    me = attacker.get("/whoami").json()
    assert (me["principal"], me["connections"]) == ("victim", ["evil"])
    stolen = attacker.get("/lease/honest", headers={"accept": "application/json"})
    assert stolen.status_code == 401, stolen.text
    assert me["issuer"] == "https://evil-idp.test"
    assert stolen.json()["provider"] == "honest"
    assert victims_lease.json()["token"] not in stolen.text
    # The attacker's own connection works; the victim's is untouched.
    assert attacker.get("/lease/evil").json()["provider"] == "evil"
    assert victim.get("/lease/honest").json() == victims_lease.json()


def test_the_session_records_the_issuer_of_its_principal(world: World) -> None:
    app = world.worker()
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice")
    me = browser.get("/whoami").json()
    assert (me["principal"], me["issuer"]) == ("alice", "https://honest-idp.test")
    world.login(browser, "evil", subject="alice")  # the same sub at another issuer
    me = browser.get("/whoami").json()
    assert (me["issuer"], me["connections"]) == ("https://evil-idp.test", ["evil"])
    assert browser.get("/lease/honest").status_code == 401


def test_a_resolved_principal_leases_only_when_the_app_allows_it(world: World) -> None:
    def from_header(request: Any) -> str | None:
        value: str | None = request.header("x-user")
        return value

    strict = world.worker(principal_resolver=from_header)
    trusting = world.worker(principal_resolver=from_header, lease_for_resolved_principals=True)
    browser = world.browser(strict, headers={"x-user": "u-42"})
    world.login(browser, "honest")
    world.login(browser, "evil")
    me = browser.get("/whoami").json()
    # The app vouches for u-42, so its connections accumulate in the session.
    assert (me["principal"], me["connections"]) == ("u-42", ["honest", "evil"])
    api = world.browser(strict, headers={"x-user": "u-42", "accept": "application/json"})
    assert api.get("/lease/honest").status_code == 401  # no session: not allowed by default
    allowed = world.browser(trusting, headers={"x-user": "u-42"})
    assert allowed.get("/lease/honest").json()["principal"] == "u-42"


# -- J10: no fixation --------------------------------------------------------------------------
@pytest.fixture
def plain_world(world: World) -> World:
    """The honest provider used without ``openid``: principals are per-browser ids."""
    world.options["scopes"] = {"honest": ["email"], "evil": ["openid"]}
    return world


@pytest.mark.parametrize("store", REAL_STORES, indirect=True)
@pytest.mark.parametrize("second_worker", [False, True])
def test_a_planted_pre_login_session_gives_the_attacker_nothing(
    plain_world: World, second_worker: bool
) -> None:
    world = plain_world
    app = world.worker()
    attacker = world.browser(app)
    world.login(attacker, "honest")
    planted = dict(attacker.cookies)
    assert list(planted) == ["obm_session"]
    attackers = attacker.get("/whoami").json()["principal"]
    assert attackers.startswith("browser-")

    victim = world.browser(app)
    victim.cookies.set("obm_session", planted["obm_session"], domain="127.0.0.1")  # planted
    world.login(victim, "honest")
    me = victim.get("/whoami").json()
    assert me["principal"] != attackers  # a fresh principal, nothing carried in
    victims = victim.get("/lease/honest").json()
    assert victims["principal"] == me["principal"]

    other = world.worker() if second_worker else app
    replay = world.browser(other, cookies=planted)
    assert replay.get("/whoami").json()["principal"] in (attackers, None)
    leased = replay.get("/lease/honest", headers={"accept": "application/json"})
    assert victims["token"] not in leased.text
    assert leased.status_code == 401 or leased.json()["principal"] == attackers


def test_logging_in_again_issues_a_fresh_principal(plain_world: World) -> None:
    world = plain_world
    browser = world.browser(world.worker())
    world.login(browser, "honest")
    first = browser.get("/whoami").json()["principal"]
    world.login(browser, "honest")
    second = browser.get("/whoami").json()["principal"]
    assert first.startswith("browser-")
    assert second.startswith("browser-")
    assert first != second


# -- the 401 problem keeps the current path -------------------------------------------------
def test_the_401_login_url_returns_to_the_current_path(world: World) -> None:
    browser = world.browser(world.worker(), headers={"accept": "application/json"})
    response = browser.get("/lease/honest?x=1")
    assert response.status_code == 401
    assert response.json()["login_url"] == (
        f"{BASE}/oauth2/honest/login?return_to=/lease/honest%3Fx%3D1"
    )


# -- J10, G2: a logged-out session is refused by every worker ---------------------------------
def _logout(browser: httpx2.Client) -> None:
    response = browser.post("/oauth2/logout", headers={"origin": BASE})
    assert response.status_code == 303, response.text


@pytest.mark.parametrize("store", REAL_STORES, indirect=True)
def test_a_logged_out_session_is_refused_on_every_worker(world: World) -> None:
    one, two = world.worker(), world.worker()  # two processes' worth of memory, one store
    browser = world.browser(one)
    world.login(browser, "honest", subject="alice")
    captured = dict(browser.cookies)
    warm = world.browser(two, cookies=captured)  # worker two has seen the session, too
    assert warm.get("/whoami").json()["principal"] == "alice"
    _logout(browser)
    # The worker that logged out refuses at once; another worker asks the shared store again
    # once its check is older than session_check_interval (1 s by default).
    assert world.browser(one, cookies=captured).get("/whoami").json()["principal"] is None
    world.clock.advance(1.5)
    for worker in (one, two):
        replay = world.browser(worker, cookies=captured)
        assert replay.get("/whoami").json()["principal"] is None
        denied = replay.get("/lease/honest", headers={"accept": "application/json"})
        assert denied.status_code == 401


@pytest.mark.parametrize("store", ["memory"], indirect=True)
def test_a_live_session_costs_the_store_one_check_per_interval(world: World) -> None:
    counting = _CountingChecks()
    app = world.worker(session_store=counting)
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice")
    counting.checks = 0
    for _ in range(20):  # the per-request hot path: no store I/O within the interval
        assert browser.get("/whoami").json()["principal"] == "alice"
    assert counting.checks == 1
    world.clock.advance(1.5)
    assert browser.get("/whoami").json()["principal"] == "alice"
    assert counting.checks == 2


class _CountingChecks(MemoryStore):
    checks = 0

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        if name.startswith("obm-session-revoked:"):
            self.checks += 1
        return super().renew_lock(name, owner, ttl)


def test_a_login_revokes_the_previous_session_on_every_worker(world: World) -> None:
    one, two = world.worker(), world.worker()
    browser = world.browser(one)
    world.login(browser, "honest", subject="alice")
    before = dict(browser.cookies)
    world.login(browser, "honest", subject="alice")  # B8: a new session id
    assert dict(browser.cookies) != before
    assert world.browser(two, cookies=before).get("/whoami").json()["principal"] is None


class _RevocationStoreDown(MemoryStore):
    """A store whose lock table is unreachable (the session revocation check fails)."""

    down = False

    def renew_lock(self, name: str, owner: str, ttl: float) -> bool:
        if self.down and name.startswith("obm-session-revoked:"):
            raise StorageError("store unreachable")
        return super().renew_lock(name, owner, ttl)


@pytest.mark.parametrize("store", ["memory"], indirect=True)
def test_a_session_that_cannot_be_checked_is_refused(world: World) -> None:
    flaky = _RevocationStoreDown()
    app = world.worker(session_store=flaky)
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice")
    flaky.down = True
    world.clock.advance(1.5)  # past the last successful check
    response = browser.get("/whoami", headers={"accept": "application/json"})
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    flaky.down = False
    assert browser.get("/whoami").json()["principal"] == "alice"


# -- J2: sessions bound to their tenant; several tenants in one browser -------------------------
def _tenant_worker(world: World) -> Any:
    from oauth2_broker_mw.middleware import path_prefix_tenant

    return world.worker(tenant_resolver=path_prefix_tenant("/t"))


@pytest.mark.parametrize("store", REAL_STORES, indirect=True)
def test_two_tenants_in_one_browser_stay_connected_each_with_its_own_logout(
    world: World,
) -> None:
    app = _tenant_worker(world)
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice", return_to="/t/tenant-a/whoami")
    world.login(browser, "evil", subject="bob", return_to="/t/tenant-b/whoami")
    a = browser.get("/t/tenant-a/whoami").json()
    b = browser.get("/t/tenant-b/whoami").json()
    assert (a["tenant"], a["principal"], a["connections"]) == ("tenant-a", "alice", ["honest"])
    assert (b["tenant"], b["principal"], b["connections"]) == ("tenant-b", "bob", ["evil"])
    assert browser.get("/t/tenant-a/lease/honest").json()["principal"] == "alice"
    assert browser.get("/t/tenant-b/lease/evil").json()["principal"] == "bob"
    # Neither tenant's session answers in the other, nor in a third.
    json = {"accept": "application/json"}
    assert browser.get("/t/tenant-b/lease/honest", headers=json).status_code == 401
    assert browser.get("/t/tenant-c/whoami").json()["principal"] is None

    out = browser.post(
        "/oauth2/logout", data={"return_to": "/t/tenant-a/whoami"}, headers={"origin": BASE}
    )
    assert (out.status_code, out.headers["location"]) == (303, "/t/tenant-a/whoami")
    assert browser.get("/t/tenant-a/whoami").json()["principal"] is None
    still = browser.get("/t/tenant-b/whoami").json()
    assert (still["principal"], still["connections"]) == ("bob", ["evil"])
    assert world.providers["evil"].counters["revoke"] == 0  # tenant-b's grant untouched


@pytest.mark.parametrize("store", REAL_STORES, indirect=True)
def test_a_tenant_a_cookie_never_works_in_tenant_b(world: World) -> None:
    app = _tenant_worker(world)
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice", return_to="/t/tenant-a/whoami")
    (name_a,) = list(browser.cookies)
    other = world.browser(app)
    world.login(other, "honest", subject="someone", return_to="/t/tenant-b/whoami")
    (name_b,) = list(other.cookies)
    assert name_a != name_b
    moved = world.browser(app, cookies={name_b: browser.cookies[name_a]})
    assert moved.get("/t/tenant-b/whoami").json()["principal"] is None
    denied = moved.get("/t/tenant-b/lease/honest", headers={"accept": "application/json"})
    assert denied.status_code == 401


def test_a_session_is_refused_when_the_resolved_tenant_differs(world: World) -> None:
    app = world.worker(tenant_resolver=lambda request: request.header("x-tenant"))
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice", headers={"x-tenant": "tenant-a"})
    cookie = dict(browser.cookies)
    same = world.browser(app, cookies=cookie, headers={"x-tenant": "tenant-a"})
    assert same.get("/whoami").json()["principal"] == "alice"
    # The same cookie replayed with another tenant (a proxy header, another host): no principal.
    other = world.browser(app, cookies=cookie, headers={"x-tenant": "tenant-b"})
    seen = other.get("/whoami").json()
    assert (seen["tenant"], seen["principal"], seen["connections"]) == ("tenant-b", None, [])


@pytest.mark.parametrize("store", REAL_STORES, indirect=True)
def test_tenant_a_state_and_code_never_complete_in_tenant_b(world: World) -> None:
    app = world.worker(tenant_resolver=lambda request: request.header("x-tenant"))
    browser = world.browser(app)
    start = browser.get(
        "/oauth2/honest/login", params={"return_to": "/whoami"}, headers={"x-tenant": "tenant-a"}
    )
    with world.providers["honest"].client() as idp:
        callback = idp.get(start.headers["location"]).headers["location"]
    response = browser.get(callback, headers={"x-tenant": "tenant-b"})
    assert response.status_code == 400
    assert "tenant_mismatch" in response.text
    assert world.providers["honest"].counters["token"] == 0
    assert world.brokers["honest"].connections(tenant="tenant-b", principal="user-1") == []


# -- J3: one strict tenant rule, for every resolver --------------------------------------------
BAD_TENANTS = [
    "..",
    "a..b",
    "acme/evil",
    "acme%2Fevil",
    "%61cme",
    "\u0430cme",  # Cyrillic a
    "ac\u200bme",  # zero-width space
    "\uff41cme",  # full-width a
    "acme\\evil",
    "cafe\u0301",  # not NFC
    "-acme",
    "a" * 129,
]


@pytest.mark.parametrize("bad", BAD_TENANTS)
def test_the_header_resolver_refuses_every_tenant_trick(world: World, bad: str) -> None:
    from oauth2_broker_mw.middleware import header_tenant

    if world.framework == "flask" and not bad.isascii():
        pytest.skip("httpx2's WSGI transport cannot send non-ASCII header bytes (ASGI runs it)")
    app = world.worker(tenant_resolver=header_tenant(trusted_proxies=["127.0.0.1"]))
    browser = world.browser(app)
    headers = {"x-tenant-id": bad.encode("utf-8")}  # the bytes on the wire
    page = browser.get("/whoami", headers=headers)
    login = browser.get("/oauth2/honest/login", headers=headers)
    assert (page.status_code, login.status_code) == (400, 400)
    assert "invalid_tenant" in login.text
    assert "location" not in login.headers  # no flow started, nothing stored


def test_validate_tenant_accepts_plain_ids_and_names_what_is_wrong() -> None:
    from oauth2_broker_mw.middleware import validate_tenant

    for good in ("acme", "acme-corp", "tenant_1", "acme.example.com", "0b7e2f"):
        assert validate_tenant(good) == good
    with pytest.raises(ValueError, match=r"\.\."):
        validate_tenant("a..b")
    with pytest.raises(ValueError, match="ASCII"):
        validate_tenant("\u0430cme")


# -- registry=: tenants and registrations; unknown ones are 404 with no store write -------------
class _CountingStore(MemoryStore):
    """Counts every write the middleware and its brokers make."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def put(self, record: Any) -> Any:
        self.writes += 1
        return super().put(record)

    def put_pending(self, pending: Any) -> None:
        self.writes += 1
        super().put_pending(pending)

    def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        self.writes += 1
        return super().acquire_lock(name, owner, ttl)


@pytest.fixture
def registry_app(world: World) -> tuple[Any, _CountingStore]:
    return _registry_app(world)


def _registry_app(
    world: World, extra: tuple[tuple[str, str], ...] = (), **options: Any
) -> tuple[Any, _CountingStore]:
    from oauth2_broker_mw import Registration
    from oauth2_broker_mw import Registry
    from oauth2_broker_mw.middleware import path_prefix_tenant

    mp = world.providers["honest"]
    store = _CountingStore()
    registrations = {
        (tenant, "honest"): Registration(
            provider="honest",
            descriptor=mp.descriptor(id="honest"),
            client_id="test-client",
            client_secret="test-secret",
            scopes=("openid", "email"),
        )
        for tenant in ("tenant-a", "tenant-b")
    }
    for tenant, provider_id in extra:  # another provider id on the same MockProvider
        registrations[(tenant, provider_id)] = Registration(
            provider=provider_id,
            descriptor=mp.descriptor(id=provider_id),
            client_id="test-client",
            client_secret="test-secret",
            scopes=("openid", "email"),
        )
    registry = Registry(
        store=store,
        registrations=registrations,
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    app = world.worker(
        brokers=None,
        registry=registry,
        scopes={},
        tenant_resolver=path_prefix_tenant("/t"),
        **options,
    )
    return app, store


def test_the_middleware_takes_a_registry(world: World, registry_app: tuple[Any, Any]) -> None:
    app, store = registry_app
    browser = world.browser(app)
    world.login(browser, "honest", subject="alice", return_to="/t/tenant-a/whoami")
    me = browser.get("/t/tenant-a/whoami").json()
    assert (me["tenant"], me["principal"], me["connections"]) == ("tenant-a", "alice", ["honest"])
    assert browser.get("/t/tenant-a/lease/honest").json()["principal"] == "alice"
    assert store.list_keys(TenantId("tenant-a"))  # the registry's store holds the token
    out = browser.post(
        "/oauth2/logout", data={"return_to": "/t/tenant-a/whoami"}, headers={"origin": BASE}
    )
    assert out.status_code == 303
    assert world.providers["honest"].counters["revoke"] >= 1
    assert store.list_keys(TenantId("tenant-a")) == []


@pytest.mark.parametrize(
    ("return_to", "provider", "code"),
    [
        ("/t/nosuchtenant/whoami", "honest", "unknown_tenant"),
        ("/t/tenant-a/whoami", "evil", "unknown_provider"),
        ("/t/tenant-a/whoami", "nosuchprovider", "unknown_provider"),
    ],
)
def test_unknown_tenants_and_providers_are_404_with_no_store_write(
    world: World, registry_app: tuple[Any, Any], return_to: str, provider: str, code: str
) -> None:
    app, store = registry_app
    browser = world.browser(app)
    response = browser.get(f"/oauth2/{provider}/login", params={"return_to": return_to})
    assert response.status_code == 404
    assert code in response.text
    assert "location" not in response.headers
    assert store.writes == 0
    assert world.providers["honest"].counters["token"] == 0


def test_a_provider_enabled_for_another_tenant_only_is_404_here(world: World) -> None:
    """J3: tenant-b has the provider ``second``, tenant-a does not. Tenant-a's login with it
    is a 404 before any redirect or store write; tenant-b's starts."""
    app, store = _registry_app(world, extra=(("tenant-b", "second"),))
    browser = world.browser(app)
    refused = browser.get("/oauth2/second/login", params={"return_to": "/t/tenant-a/whoami"})
    assert refused.status_code == 404
    assert "unknown_provider" in refused.text
    assert "location" not in refused.headers
    assert store.writes == 0
    started = browser.get("/oauth2/second/login", params={"return_to": "/t/tenant-b/whoami"})
    assert started.status_code == 302, started.text
    assert store.writes > 0  # its pending login


# -- subdomain tenants end to end: each tenant's callback on its own host -----------------------
def test_subdomain_tenants_log_in_end_to_end_on_their_own_hosts(world: World) -> None:
    from oauth2_broker_mw.middleware import subdomain_tenant

    app = world.worker(
        base_url="https://example.test",
        tenant_base_url="https://{tenant}.example.test",
        tenant_resolver=subdomain_tenant("example.test"),
    )
    browser = world.browser(app)
    a, b = "https://tenant-a.example.test", "https://tenant-b.example.test"
    for host, subject in ((a, "alice"), (b, "bob")):
        start = browser.get(f"{host}/oauth2/honest/login", params={"return_to": "/whoami"})
        assert start.status_code == 302, start.text
        assert (
            f"redirect_uri={host.replace(':', '%3A').replace('/', '%2F')}"
            in (start.headers["location"])
        )
        url = start.headers["location"] + "&" + urlencode({"login_hint": subject})
        with world.providers["honest"].client() as idp:
            callback = idp.get(url).headers["location"]
        assert callback.startswith(f"{host}/oauth2/honest/callback?")
        done = browser.get(callback)
        assert (done.status_code, done.headers["location"]) == (303, "/whoami")
        # G1: the tenant's session cookie is __Host-, Secure, HttpOnly, SameSite=Lax, Path=/,
        # with no Domain (host-only).
        (session,) = [
            c for c in done.headers.get_list("set-cookie") if c.startswith("__Host-obm_session_")
        ]
        attributes = {part.split("=", 1)[0].strip().lower() for part in session.split(";")[1:]}
        assert {"secure", "httponly", "samesite", "path"} <= attributes
        assert "domain" not in attributes
        assert "SameSite=Lax" in session
    me_a = browser.get(f"{a}/whoami").json()
    me_b = browser.get(f"{b}/whoami").json()
    assert (me_a["tenant"], me_a["principal"]) == ("tenant-a", "alice")
    assert (me_b["tenant"], me_b["principal"]) == ("tenant-b", "bob")
    assert browser.get(f"{a}/lease/honest").json()["principal"] == "alice"
    # tenant-a's cookie is host-only: replayed on tenant-b's host it is another tenant's name.
    (cookie_a,) = [c for c in browser.cookies.jar if c.domain == "tenant-a.example.test"]
    stray = world.browser(app)
    stray.cookies.set(cookie_a.name, cookie_a.value or "", domain="tenant-b.example.test")
    assert stray.get(f"{b}/whoami").json()["principal"] is None
    # logout on tenant-a's own origin ends only tenant-a's session
    out = browser.post(f"{a}/oauth2/logout", headers={"origin": a})
    assert out.status_code == 303
    assert browser.get(f"{a}/whoami").json()["principal"] is None
    assert browser.get(f"{b}/whoami").json()["principal"] == "bob"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/t/nosuchtenant/lease/honest", "unknown_tenant"),
        ("/t/tenant-a/lease/evil", "unknown_provider"),
    ],
)
def test_a_lease_for_an_unknown_tenant_or_provider_is_a_404(
    world: World, path: str, code: str
) -> None:
    app, store = _registry_app(
        world,
        principal_resolver=lambda request: request.header("x-user"),
        lease_for_resolved_principals=True,
    )
    api = world.browser(app, headers={"x-user": "u-1", "accept": "application/json"})
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == code
    assert store.writes == 0
