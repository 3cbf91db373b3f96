"""The Registry: tenants, their registrations and their lazily made, bounded brokers."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fakes import FakeClock

from oauth2_broker_mw import BrokerError
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import InvalidClient
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import ProviderNotEnabled
from oauth2_broker_mw import Registration
from oauth2_broker_mw import Registry
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import UnknownTenant
from oauth2_broker_mw.presets import okta
from oauth2_broker_mw.presets import shopify
from oauth2_broker_mw.testing.mock_provider import MockProvider

SERVICE = {"client_credentials_principals": {"svc"}}


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


def registration(mp: MockProvider, client_id: str = "test-client", secret: str = "test-secret"):  # type: ignore[no-untyped-def]
    return Registration(
        provider="mock", descriptor=mp.descriptor(), client_id=client_id, client_secret=secret
    )


def make_registry(mp: MockProvider, clock: FakeClock, **kwargs: object) -> Registry:
    options: dict[str, object] = {
        "store": MemoryStore(),
        "http_client": mp.client(),
        "async_http_client": mp.async_client(),
        "clock": clock,
        "broker_options": SERVICE,
    }
    options.update(kwargs)
    return Registry(**options)  # type: ignore[arg-type]


def test_static_registrations_answer_and_refuse(provider: MockProvider, clock: FakeClock) -> None:
    """J3: an unknown tenant or a provider not enabled for it is refused before any I/O."""
    store = MemoryStore()
    registry = make_registry(
        provider,
        clock,
        store=store,
        registrations={("acme", "mock"): registration(provider)},
        tenants={"acme", "globex"},
    )
    assert registry.registration("acme", "mock").client_id == "test-client"
    for tenant in ("nosuchtenant", "..", "a/b", "acme\u200b"):
        with pytest.raises(UnknownTenant) as info:
            registry.broker(tenant=tenant, provider="mock")
        assert isinstance(info.value, BrokerError)
    with pytest.raises(ProviderNotEnabled, match="'globex'"):
        registry.broker(tenant="globex", provider="mock")
    with pytest.raises(ProviderNotEnabled):
        asyncio.run(registry.abroker(tenant="acme", provider="github"))
    assert provider.requests == []
    assert store.list_tenants() == []


def test_broker_is_lazy_shared_and_leases(provider: MockProvider, clock: FakeClock) -> None:
    """J5: two tenants with the same principal name never share a token."""
    registry = make_registry(
        provider,
        clock,
        registrations={
            ("acme", "mock"): registration(provider),
            ("globex", "mock"): registration(provider),
        },
    )
    assert registry.brokers_made == 0
    acme = registry.broker(tenant="acme", provider="mock")
    assert registry.broker(tenant="acme", provider="mock") is acme
    globex = registry.broker(tenant="globex", provider="mock")
    assert acme is not globex and acme.store is globex.store is registry.store
    assert acme._pool is globex._pool  # one connection pool and one singleflight
    a = acme.lease(tenant="acme", principal="svc", scopes=["email.read"])
    b = globex.lease(tenant="globex", principal="svc", scopes=["email.read"])
    assert a.access_token != b.access_token
    assert a.key.id != b.key.id and a.key.lock_name != b.key.lock_name
    assert registry.brokers_made == 2


def test_resolver_sync_and_async_and_rotated_secret(
    provider: MockProvider, clock: FakeClock
) -> None:
    """A rotated client secret is used at once after invalidate(), or after the TTL."""
    secrets = {"acme": "old-secret"}
    provider.register_client("acme-app", "old-secret")
    calls: list[tuple[str, str]] = []

    def resolve(tenant: str, provider_id: str) -> Registration | None:
        calls.append((tenant, provider_id))
        if tenant not in secrets:
            return None
        return registration(provider, "acme-app", secrets[tenant])

    registry = make_registry(provider, clock, resolver=resolve, ttl=60.0)
    broker = registry.broker(tenant="acme", provider="mock")
    broker.lease(tenant="acme", principal="svc", scopes=["a"])
    # The app rotates the secret at the provider and in its database.
    provider.register_client("acme-app", "new-secret")
    secrets["acme"] = "new-secret"
    with pytest.raises(InvalidClient):  # the cached registration still has the old one
        registry.broker(tenant="acme", provider="mock").lease(
            tenant="acme", principal="svc", scopes=["b"]
        )
    assert registry.invalidate("acme") == 1
    fresh = registry.broker(tenant="acme", provider="mock")
    assert fresh is not broker
    fresh.lease(tenant="acme", principal="svc", scopes=["b"])
    assert provider.counters["token:client_credentials"] == 3  # old (ok), old (refused), new (ok)
    # Without invalidate: the TTL bounds how long the old registration is used.
    provider.register_client("acme-app", "third-secret")
    secrets["acme"] = "third-secret"
    clock.advance(61)
    registry.broker(tenant="acme", provider="mock").lease(
        tenant="acme", principal="svc", scopes=["c"]
    )
    assert provider.counters["token:client_credentials"] == 4
    with pytest.raises(UnknownTenant):
        registry.broker(tenant="nobody", provider="mock")
    with pytest.raises(UnknownTenant):  # a miss is remembered for the TTL too
        registry.broker(tenant="nobody", provider="mock")
    assert calls.count(("nobody", "mock")) == 1

    async def aresolve(tenant: str, provider_id: str) -> Registration | None:
        await asyncio.sleep(0)
        return resolve(tenant, provider_id)

    async_registry = make_registry(provider, clock, resolver=aresolve)
    assert asyncio.run(async_registry.aregistration("acme", "mock")).client_id == "acme-app"
    assert async_registry.registration("acme", "mock").client_id == "acme-app"  # cached

    async def sync_call_inside_loop() -> None:
        async_registry.invalidate("acme")
        with pytest.raises(ConfigurationError, match="aregistration"):
            async_registry.registration("acme", "mock")

    asyncio.run(sync_call_inside_loop())


def test_thousand_tenants_bounded_brokers_and_memory(
    provider: MockProvider, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 tenants through a resolver: at most max_brokers brokers alive, memory bounded."""
    shared = registration(provider)
    registry = make_registry(
        provider, clock, resolver=lambda tenant, p: shared, max_brokers=64, broker_cache_size=16
    )

    def sweep(start: int) -> None:
        for i in range(start, start + 1000):
            registry.broker(tenant=f"tenant-{i}", provider="mock")

    sweep(0)  # warm-up: imports, interned strings
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sweep(1000)
    gc.collect()
    after_first = tracemalloc.get_traced_memory()[0]
    sweep(2000)
    gc.collect()
    after_second = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert registry.broker_count <= 64
    assert registry.brokers_made == 3000
    # Memory does not grow with the number of tenants seen: the second 1,000 cost no more.
    assert after_second - after_first < 256 * 1024  # flat (it was +700 KiB per 1k before)
    with capsys.disabled():
        print(
            f"\n[registry] 3x1000 tenants, max_brokers=64: alive={registry.broker_count} "
            f"made={registry.brokers_made} heap +{(after_first - before) / 1024:.0f} KiB "
            f"after 1k, +{(after_second - before) / 1024:.0f} KiB after 2k"
        )


def test_templated_descriptor_takes_only_allowlisted_values(tmp_path: Path) -> None:
    """J4: a tenant's authorization server comes only from its registration's checked values."""
    store = SQLiteStore(tmp_path / "t.db")
    good = {
        ("acme", "okta"): Registration(
            provider="okta",
            descriptor=okta(domain=None),
            client_id="c",
            client_secret="s",
            template={"domain": "acme.okta.com"},
        ),
        ("shop1", "shopify"): Registration(
            provider="shopify",
            descriptor=shopify(shop=None),
            client_id="c",
            client_secret="s",
            template={"shop": "shop1"},
        ),
    }
    registry = Registry(store=store, registrations=good, allowed_hosts=["okta.com"])
    assert registry.broker(tenant="acme", provider="okta").provider.token_endpoint.startswith(
        "https://acme.okta.com/"
    )
    assert (
        "shop1.myshopify.com"
        in registry.broker(tenant="shop1", provider="shopify").provider.token_endpoint
    )  # type: ignore[operator]
    for template in (
        {"domain": "evil.example.com"},  # not under allowed_hosts
        {"domain": "acme.okta.com/evil"},
        {"domain": "ACME.okta.com@evil"},
        {"issuer": "https://evil"},  # not an allowlisted placeholder
    ):
        bad = Registration(
            provider="okta", descriptor=okta(domain=None), client_id="c", template=template
        )
        with pytest.raises(ConfigurationError):
            Registry(
                store=store, registrations={("acme", "okta"): bad}, allowed_hosts=["okta.com"]
            ).broker(tenant="acme", provider="okta")
    store.close()


def test_from_toml_and_repr_hides_secrets(tmp_path: Path, provider: MockProvider) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        '[acme.mock]\nclient_id = "acme-app"\nclient_secret_ref = "ACME"\nscopes = ["email"]\n',
        encoding="utf-8",
    )
    registry = Registry.from_toml(
        path,
        store=MemoryStore(),
        descriptors={"mock": provider.descriptor()},
        secrets={"ACME": "hunter2-secret"},
    )
    found = registry.registration("acme", "mock")
    assert found.client_id == "acme-app" and found.scopes == ("email",)
    assert "hunter2" not in repr(found) and "hunter2" not in repr(registry)
    assert registry.broker(tenant="acme", provider="mock").provider.default_scopes == ("email",)
    with pytest.raises(UnknownTenant):
        registry.registration("globex", "mock")
    with pytest.raises(ConfigurationError, match="client_secret_ref"):
        Registry.from_toml(path, store=MemoryStore(), descriptors={"mock": provider.descriptor()})


def test_a_registry_broker_serves_its_own_tenant_only(
    provider: MockProvider, clock: FakeClock
) -> None:
    """J4: a tenant's broker holds that tenant's client registration: it obtains, refreshes,
    revokes and logs in for that tenant only, and completes only that tenant's logins."""
    from _fakes import login

    from oauth2_broker_mw import BrokerAuth
    from oauth2_broker_mw import StoreKey

    store = MemoryStore()
    provider.register_client("globex-app", "globex-secret")
    registry = make_registry(
        provider,
        clock,
        store=store,
        registrations={
            ("acme", "mock"): registration(provider),
            ("globex", "mock"): registration(provider, "globex-app", "globex-secret"),
        },
    )
    acme = registry.broker(tenant="acme", provider="mock")
    globex = registry.broker(tenant="globex", provider="mock")
    assert (acme.tenant, globex.tenant) == ("acme", "globex")
    gina = login(globex, provider, tenant="globex", principal="gina")
    provider.reset_counters()
    refused = [
        lambda: acme.lease(tenant="globex", principal="gina", scopes=["openid"]),
        lambda: acme.lease_for_key(gina.key),
        lambda: acme.refresh_key(gina.key),
        lambda: acme.revoke(tenant="globex", principal="gina", scopes=["openid"]),
        lambda: acme.forget_principal("globex", "gina"),
        lambda: acme.forget_tenant("globex"),
        lambda: acme.start_authorization(
            tenant="globex", principal=None, redirect_uri="https://app.example/cb"
        ),
        lambda: asyncio.run(acme.alease(tenant="globex", principal="gina", scopes=["openid"])),
    ]
    for call in refused:
        with pytest.raises(ConfigurationError, match="another tenant's client registration") as e:
            call()
        assert "acme" not in str(e.value)  # it names the tenant asked for, not its own
    assert provider.requests == []
    assert store.get(gina.key) == gina
    # a login started for globex never completes at acme's broker (state spent, no exchange)
    started = globex.start_authorization(
        tenant="globex", principal=None, redirect_uri="https://app.example/cb"
    )
    with pytest.raises(BrokerError, match="another tenant"):
        acme.exchange_code(state=started.state, code="any")
    assert provider.counters["token"] == 0
    # the app's own identity of a tenant's broker is that tenant's, by default
    service = acme.service_lease(scopes=["email.read"])
    assert service.key.tenant == "acme"
    assert BrokerAuth(acme, scopes=["email.read"]).key == service.key
    assert BrokerAuth.for_service(globex, ["x"]).key.tenant == "globex"
    assert isinstance(service.key, StoreKey)
    registry.close()
