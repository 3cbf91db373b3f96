"""The Broker end to end against MockProvider, every flow sync and async.

Covers the quirk rows 1-9 and 22 of docs/quirks.md, the refresh contract inside one
process, typed errors, and that no secret reaches a log line.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakes import FakeClock as Clock  # the suite-wide fake clock

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import InsufficientScope
from oauth2_broker_mw import InvalidClient
from oauth2_broker_mw import MalformedResponse
from oauth2_broker_mw import MemoryStore
from oauth2_broker_mw import ProviderError
from oauth2_broker_mw import RateLimited
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import TransientProviderError
from oauth2_broker_mw import TransportError
from oauth2_broker_mw.testing.mock_provider import MockClient
from oauth2_broker_mw.testing.mock_provider import MockProvider
from oauth2_broker_mw.testing.mock_provider import MockQuirks

TENANT, USER = "acme", "alice"


Call = Callable[..., Any]


def SERVICES(tenant: str, principal: str) -> bool:
    return principal.startswith("svc")


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Call:
    """``call(broker, "lease", **kw)`` runs ``lease`` or ``alease`` depending on the param."""

    def run(obj: Any, name: str, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(obj, name)(**kwargs)
        return asyncio.run(getattr(obj, "a" + name)(**kwargs))

    return run


@pytest.fixture
def provider(clock: Clock) -> Iterator[MockProvider]:
    mp = MockProvider(clock=clock)
    yield mp
    mp.close()


def make_broker(mp: MockProvider, clock: Clock | None = None, **kwargs: Any) -> Broker:
    descriptor_overrides = kwargs.pop("descriptor", {})
    options: dict[str, Any] = {
        "client_id": "test-client",
        "client_secret": "test-secret",
        "http_client": mp.client(),
        "async_http_client": mp.async_client(),
        # The app's own token is explicit (SECURITY J6): the "svc..." principals are its services.
        "client_credentials_principals": SERVICES,
    }
    if clock is not None:
        options["clock"] = clock
    options.update(kwargs)
    return Broker(mp.descriptor(**descriptor_overrides), **options)


def login(
    broker: Broker,
    mp: MockProvider,
    call: Call,
    scopes: list[str] | None = None,
    principal: str | None = USER,
) -> Any:
    request = call(
        broker,
        "start_authorization",
        tenant=TENANT,
        principal=principal,
        scopes=scopes or ["openid", "email"],
        redirect_uri="https://app.example/callback",
    )
    response = mp.client().get(request.url)
    assert response.status_code in (302, 303), response.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))
    assert query["state"] == request.state
    return call(
        broker,
        "exchange_code",
        state=query["state"],
        code=query["code"],
        iss=query.get("iss"),
        callback_params=query,
    )


# -- the main paths ---------------------------------------------------------------------------
def test_client_credentials_lease_is_cached(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider)
    first = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["email.read"])
    second = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["email.read"])
    assert first.access_token == second.access_token
    assert provider.counters["token:client_credentials"] == 1
    assert first.token_type == "Bearer"
    assert first.scopes.scopes == ("email.read",)


def test_code_flow_then_lease_uses_stored_token(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider)
    record = login(broker, provider, call)
    assert record.key.principal == USER
    assert record.refresh_token is not None
    assert record.metadata["id_token_claims"]["sub"] == "user-1"  # type: ignore[index]
    provider.reset_counters()
    lease = call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert lease.access_token == record.access_token
    assert provider.counters["token"] == 0


def test_principal_from_id_token_subject(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider)
    record = login(broker, provider, call, principal=None)
    assert record.key.principal == "user-1"


def test_expired_token_is_refreshed_with_rotation(
    provider: MockProvider, clock: Clock, call: Call
) -> None:
    broker = make_broker(provider, clock)
    record = login(broker, provider, call)
    clock.advance(3600 + 1)
    lease = call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert lease.access_token != record.access_token
    assert provider.counters["token:refresh_token"] == 1
    stored = broker.store.get(record.key)
    assert stored is not None
    assert stored.refresh_token != record.refresh_token  # rotated and kept
    assert stored.version == record.version + 1
    assert stored.metadata["id_token_claims"] == record.metadata["id_token_claims"]


def test_refresh_happens_before_expiry_inside_the_margin(
    provider: MockProvider, clock: Clock, call: Call
) -> None:
    broker = make_broker(provider, clock, refresh_margin=120, refresh_jitter=0)
    login(broker, provider, call)
    clock.advance(3600 - 100)  # still valid for 100 s, but inside the 120 s margin
    call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert provider.counters["token:refresh_token"] == 1


def test_force_refresh_and_replace_lease(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider)
    login(broker, provider, call)
    lease = call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    forced = call(
        broker,
        "lease",
        tenant=TENANT,
        principal=USER,
        scopes=["openid", "email"],
        force_refresh=True,
    )
    assert forced.access_token != lease.access_token
    # A stale lease whose token was already replaced costs no provider call.
    before = provider.counters["token:refresh_token"]
    replaced = call(broker, "replace_lease", stale=lease)
    assert replaced.access_token == forced.access_token
    assert provider.counters["token:refresh_token"] == before
    # The current token rejected: exactly one refresh.
    newer = call(broker, "replace_lease", stale=forced)
    assert newer.access_token != forced.access_token
    assert provider.counters["token:refresh_token"] == before + 1


def test_no_grant_raises_authorization_required(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider, descriptor={"grants": ["authorization_code", "refresh_token"]})
    with pytest.raises(AuthorizationRequired) as info:
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=["email"])
    assert (info.value.tenant, info.value.principal, info.value.provider) == (TENANT, USER, "mock")
    assert provider.counters["token"] == 0


def test_revoked_grant_becomes_authorization_required(
    provider: MockProvider, clock: Clock, call: Call
) -> None:
    broker = make_broker(
        provider, clock, descriptor={"grants": ["authorization_code", "refresh_token"]}
    )
    record = login(broker, provider, call)
    provider.revoke_all(subject="user-1")
    clock.advance(4000)
    with pytest.raises(AuthorizationRequired) as info:
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert "invalid_grant" in str(info.value)
    dead = broker.store.get(record.key)  # a tombstone: no refresh token, marked revoked
    assert dead is not None and dead.refresh_token is None and dead.revoked_at is not None


def test_dead_user_grant_does_not_become_an_app_token(
    provider: MockProvider, clock: Clock, call: Call
) -> None:
    broker = make_broker(provider, clock)  # the mock descriptor also offers client_credentials
    login(broker, provider, call)
    provider.revoke_all(subject="user-1")
    clock.advance(4000)
    for _ in range(2):
        with pytest.raises(AuthorizationRequired):
            call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert provider.counters["token:client_credentials"] == 0
    login(broker, provider, call)  # logging in again replaces the tombstone
    assert call(broker, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])


def test_client_credentials_principals_restricts_the_app_grant(
    provider: MockProvider, call: Call
) -> None:
    broker = make_broker(provider, client_credentials_principals={"svc-router"})
    assert call(broker, "lease", tenant=TENANT, principal="svc-router", scopes=["x"])
    with pytest.raises(AuthorizationRequired):
        call(broker, "lease", tenant=TENANT, principal=USER, scopes=["x"])


def test_revoke_calls_rfc7009_and_forgets(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider)
    record = login(broker, provider, call)
    assert call(broker, "revoke", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert provider.counters["revoke"] >= 1
    assert broker.store.get(record.key) is None
    info = provider.token_info(record.access_token.get_secret_value())
    assert info is not None and info["active"] is False
    assert not call(broker, "revoke", tenant=TENANT, principal=USER, scopes=["openid", "email"])


def test_connections_lists_this_principal(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider)
    login(broker, provider, call)
    keys = call(broker, "connections", tenant=TENANT, principal=USER)
    assert [k.provider for k in keys] == ["mock"]
    assert call(broker, "connections", tenant=TENANT, principal="bob") == []


def test_required_scopes_missing_is_typed(provider: MockProvider, call: Call) -> None:
    provider.quirks.narrow_scopes = frozenset({"admin"})
    broker = make_broker(provider)
    # By default every scope asked for is required: a narrower grant is a typed error.
    with pytest.raises(InsufficientScope) as info:
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read", "admin"])
    assert info.value.missing == ("admin",) and info.value.granted == ("read",)
    # required_scopes=() takes what was granted (quirk 22).
    lease = call(
        broker,
        "lease",
        tenant=TENANT,
        principal="svc",
        scopes=["read", "admin"],
        required_scopes=(),
    )
    assert lease.scopes.scopes == ("read",)
    with pytest.raises(InsufficientScope) as info:
        call(
            broker,
            "lease",
            tenant=TENANT,
            principal="svc",
            scopes=["read", "admin"],
            required_scopes=["admin"],
        )
    assert info.value.missing == ("admin",)


def test_widened_scopes_are_reported(provider: MockProvider, call: Call) -> None:
    provider.quirks.widen_scopes = ("extra.scope",)
    broker = make_broker(provider)
    lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read"])
    assert "extra.scope" in lease.scopes


# -- quirks -----------------------------------------------------------------------------------
def test_quirk1_github_form_bodies_comma_scopes_no_expiry(call: Call) -> None:
    mp = MockProvider(quirks=MockQuirks.github(), oidc=False)
    broker = make_broker(mp, descriptor={"scope_delimiter": ",", "expiry_policy": "unknown"})
    record = login(broker, mp, call, scopes=["repo", "user"])
    assert record.scopes.scopes == ("repo", "user")
    assert record.expires_at is None
    assert record.token_type == "Bearer"
    assert all(r.headers.get("accept") == "application/json" for r in mp.requests_to("token"))


def test_quirk1_error_with_http_200_is_an_error(provider: MockProvider, call: Call) -> None:
    provider.faults.add("token", "error_200", error="bad_verification_code")
    broker = make_broker(provider)
    with pytest.raises(ProviderError) as info:
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert info.value.error == "bad_verification_code"


def test_quirk2_slack_envelope_and_nested_token(call: Call) -> None:
    mp = MockProvider(quirks=MockQuirks.slack(), oidc=False, pkce="unsupported")
    broker = make_broker(
        mp,
        descriptor={"scope_delimiter": ",", "token_path": ["authed_user"], "pkce": "unsupported"},
    )
    record = login(broker, mp, call, scopes=["chat:write", "users:read"])
    assert record.scopes.scopes == ("chat:write", "users:read")
    assert "team" in record.metadata
    mp.faults.add("token", "slack_error", error="invalid_auth")
    with pytest.raises(ProviderError) as info:
        call(
            broker,
            "lease",
            tenant=TENANT,
            principal=USER,
            scopes=["chat:write", "users:read"],
            force_refresh=True,
        )
    assert info.value.error == "invalid_auth"


def test_quirk3_scope_as_json_array(provider: MockProvider, call: Call) -> None:
    provider.quirks.scope_echo = "array"
    broker = make_broker(provider)
    lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["a", "b"])
    assert lease.scopes.scopes == ("a", "b")


@pytest.mark.parametrize("delimiter", [",", "+"])
def test_quirk4_delimiter_everywhere(delimiter: str, call: Call) -> None:
    echo = {",": "comma", "+": "plus"}[delimiter]
    quirks = MockQuirks(scope_delimiter=delimiter, scope_echo=echo)  # type: ignore[arg-type]
    mp = MockProvider(quirks=quirks, oidc=False)
    broker = make_broker(mp, descriptor={"scope_delimiter": delimiter, "scope_on_refresh": True})
    request = broker.start_authorization(
        tenant=TENANT, principal=USER, scopes=["a", "b"], redirect_uri="https://app.example/cb"
    )
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
    assert query["scope"] == f"a{delimiter}b"
    record = login(broker, mp, call, scopes=["a", "b"])
    assert record.scopes.scopes == ("a", "b")
    call(broker, "lease", tenant=TENANT, principal=USER, scopes=["a", "b"], force_refresh=True)
    call(broker, "lease", tenant=TENANT, principal="svc", scopes=["a", "b"])
    for grant in ("refresh_token", "client_credentials"):
        sent = mp.requests_to("token", grant)
        assert sent and sent[-1].form.get("scope") == f"a{delimiter}b", grant


def test_quirk5_missing_expires_in_default_ttl_policy(call: Call, clock: Clock) -> None:
    mp = MockProvider(quirks=MockQuirks(expires_in="omit"), clock=clock)
    broker = make_broker(mp, clock, descriptor={"expiry_policy": "default_ttl", "default_ttl": 900})
    lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert lease.expires_at == pytest.approx(clock.now + 900)


def test_quirk5_missing_expires_in_unknown_policy(call: Call, clock: Clock) -> None:
    mp = MockProvider(quirks=MockQuirks(expires_in="omit"), clock=clock)
    broker = make_broker(mp, clock, descriptor={"expiry_policy": "unknown"})
    lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert lease.expires_at is None
    clock.advance(10**6)
    again = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert again.access_token == lease.access_token  # unknown expiry: refresh only on a 401
    assert mp.counters["token"] == 1


def test_quirk6_expires_in_as_string(call: Call, clock: Clock) -> None:
    mp = MockProvider(quirks=MockQuirks(expires_in="string"), clock=clock, access_ttl=1234)
    broker = make_broker(mp, clock)
    lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert lease.expires_at == pytest.approx(clock.now + 1234)


def test_quirk7_refresh_without_new_refresh_token_keeps_the_old(call: Call) -> None:
    mp = MockProvider(quirks=MockQuirks.google(), rotation=False)
    broker = make_broker(mp)
    record = login(broker, mp, call)
    refreshed = call(broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert refreshed.refresh_token == record.refresh_token
    assert refreshed.access_token != record.access_token
    again = call(broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert again.access_token != refreshed.access_token  # the kept refresh token still works


def test_quirk8_rotation_burst_one_refresh_no_family_revocation(
    provider: MockProvider, clock: Clock
) -> None:
    broker = make_broker(provider, clock)
    sync_call: Call = lambda obj, name, **kw: getattr(obj, name)(**kw)  # noqa: E731
    login(broker, provider, sync_call)
    clock.advance(4000)
    provider.reset_counters()
    scopes = ["openid", "email"]

    async def burst() -> set[str]:
        tasks = [broker.alease(tenant=TENANT, principal=USER, scopes=scopes) for _ in range(200)]
        threads = [
            asyncio.to_thread(broker.lease, tenant=TENANT, principal=USER, scopes=scopes)
            for _ in range(16)
        ]
        leases = await asyncio.gather(*tasks, *threads)
        return {lease.access_token.get_secret_value() for lease in leases}

    tokens = asyncio.run(burst())
    assert len(tokens) == 1
    assert provider.counters["token:refresh_token"] == 1
    assert provider.counters["family_revoked"] == 0


def test_quirk9_scope_on_refresh(call: Call) -> None:
    mp = MockProvider(quirks=MockQuirks.entra())
    broker = make_broker(mp, descriptor={"scope_on_refresh": True})
    login(broker, mp, call, scopes=["openid", "offline_access", "User.Read"])
    call(
        broker,
        "refresh",
        tenant=TENANT,
        principal=USER,
        scopes=["openid", "offline_access", "User.Read"],
    )
    sent = mp.requests_to("token", "refresh_token")[-1]
    assert sent.form["scope"].split() == ["User.Read", "offline_access", "openid"]


def test_quirk9_without_flag_the_provider_refuses(call: Call) -> None:
    mp = MockProvider(quirks=MockQuirks.entra())
    broker = make_broker(mp, descriptor={"scope_on_refresh": False})
    login(broker, mp, call)
    with pytest.raises(ProviderError) as info:
        call(broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert info.value.error == "invalid_request"


# -- failures ---------------------------------------------------------------------------------
def test_transient_error_carries_retry_after(
    provider: MockProvider, clock: Clock, call: Call
) -> None:
    provider.faults.add(
        "token", "error", status=503, error="temporarily_unavailable", retry_after=7
    )
    broker = make_broker(provider, clock)
    with pytest.raises(TransientProviderError) as info:
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert info.value.retry_after == 7
    assert info.value.retryable
    # The provider asked for 7 s: until then no request (RateLimited, docs/operations.md).
    with pytest.raises(RateLimited):
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    clock.advance(7)
    # Nothing was cached or stored: the next call goes through.
    assert call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"]).access_token


def test_html_error_page_is_transient_and_redacted(provider: MockProvider, call: Call) -> None:
    provider.faults.add("token", "html", status=502)
    broker = make_broker(provider)
    with pytest.raises(TransientProviderError) as info:
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert info.value.status_code == 502
    assert info.value.body_preview is None or len(info.value.body_preview) <= 200


def test_malformed_success_body_is_typed(provider: MockProvider, call: Call) -> None:
    provider.faults.add("token", "malformed_json")
    broker = make_broker(provider)
    with pytest.raises((MalformedResponse, TransientProviderError)):
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])


def test_wrong_client_secret_is_invalid_client(provider: MockProvider, call: Call) -> None:
    broker = make_broker(provider, client_secret="wrong")
    with pytest.raises(InvalidClient):
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])


def test_token_endpoint_redirect_is_not_followed(provider: MockProvider, call: Call) -> None:
    provider.faults.add("token", "raw", status=307, body="", content_type="text/plain", times=None)
    broker = make_broker(provider)
    with pytest.raises(ProviderError):
        call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert provider.counters["token"] == 1


def test_unreachable_provider_is_a_transport_error(call: Call) -> None:
    mp = MockProvider(issuer="http://127.0.0.1:9")  # discard port: nothing listens
    broker = Broker(
        mp.descriptor(), client_id="test-client", client_secret="test-secret", timeout=2
    )
    with pytest.raises(TransportError) as info:
        call(broker, "service_lease", tenant=TENANT, scopes=["x"])
    assert "test-secret" not in str(info.value)


def test_corrupt_row_is_treated_as_absent(
    tmp_path: Path, provider: MockProvider, call: Call
) -> None:
    path = tmp_path / "tokens.db"
    broker = make_broker(provider, store=SQLiteStore(str(path)))
    record = login(broker, provider, call)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tokens SET data = '{not json'")
    fresh = make_broker(provider, store=SQLiteStore(str(path)))
    provider.reset_counters()
    # SECURITY J6: nothing can be read back, and the app's own token never stands in for the user.
    with pytest.raises(AuthorizationRequired):
        call(fresh, "lease", tenant=TENANT, principal=USER, scopes=["openid", "email"])
    assert provider.counters["token:client_credentials"] == 0
    assert record.key.principal == USER


def test_httpx_clients_over_loopback_work(provider: MockProvider) -> None:
    """Users pass their own httpx (not httpx2) clients; the broker's default is httpx2."""
    httpx = pytest.importorskip("httpx")
    with provider.serve():
        descriptor = provider.descriptor()
        with httpx.Client() as sync_client:
            broker = Broker(
                descriptor,
                client_id="test-client",
                client_secret="test-secret",
                http_client=sync_client,
            )
            assert broker.service_lease(tenant=TENANT, scopes=["x"]).access_token

        async def run_async() -> None:
            async with httpx.AsyncClient() as async_client:
                broker = Broker(
                    descriptor,
                    client_id="test-client",
                    client_secret="test-secret",
                    async_http_client=async_client,
                )
                lease = await broker.aservice_lease(tenant=TENANT, scopes=["x"])
                assert lease.access_token
            async with Broker(
                descriptor, client_id="test-client", client_secret="test-secret"
            ) as own:
                assert (await own.aservice_lease(tenant="other", scopes=["x"])).access_token

        asyncio.run(run_async())
        with Broker(descriptor, client_id="test-client", client_secret="test-secret") as default:
            assert default.service_lease(tenant="third", scopes=["x"]).access_token
    assert provider.counters["token:client_credentials"] == 4


# -- secrets ----------------------------------------------------------------------------------
def test_no_secret_reaches_logs_or_reprs(
    provider: MockProvider, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = make_broker(provider)
    record = login(broker, provider, call)
    provider.faults.add("token", "error", status=400, error="invalid_grant")
    with pytest.raises(AuthorizationRequired) as info:
        call(
            broker,
            "lease",
            tenant=TENANT,
            principal=USER,
            scopes=["openid", "email"],
            force_refresh=True,
        )
    secrets = [
        record.access_token.get_secret_value(),
        record.refresh_token.get_secret_value() if record.refresh_token else "",
        "test-secret",
    ]
    texts = [caplog.text, repr(record), repr(broker), str(info.value), repr(info.value)]
    texts.append(repr(call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])))
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_threads_and_tasks_on_a_cold_cache_make_one_request(provider: MockProvider) -> None:
    broker = make_broker(provider)
    start = threading.Barrier(17)
    results: list[str] = []

    def worker() -> None:
        start.wait()
        lease = broker.lease(tenant=TENANT, principal="svc", scopes=["x"])
        results.append(lease.access_token.get_secret_value())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()

    async def burst() -> None:
        start.wait()  # release the threads and the tasks together
        leases = await asyncio.gather(
            *(broker.alease(tenant=TENANT, principal="svc", scopes=["x"]) for _ in range(200))
        )
        results.extend(lease.access_token.get_secret_value() for lease in leases)

    asyncio.run(burst())
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 216
    assert len(set(results)) == 1
    assert provider.counters["token"] == 1
    assert len(broker._flights) == 0  # nothing left behind: memory stays bounded


def test_mock_client_public_uses_none_auth(call: Call) -> None:
    mp = MockProvider(clients=[MockClient(client_id="spa", client_secret=None)])
    broker = Broker(
        mp.descriptor(client_auth_method="none", grants=["authorization_code", "refresh_token"]),
        client_id="spa",
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    record = login(broker, mp, call)
    assert record.refresh_token is not None


def test_par_is_used_when_the_provider_requires_it(call: Call) -> None:
    """RFC 9126 / SECURITY A12: parameters go to the PAR endpoint, the browser gets only
    client_id and request_uri."""
    mp = MockProvider(par="required")
    descriptor = mp.descriptor()
    assert descriptor.require_pushed_authorization_requests
    broker = Broker(
        descriptor,
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
        async_http_client=mp.async_client(),
    )
    request = call(
        broker,
        "start_authorization",
        tenant=TENANT,
        principal=USER,
        scopes=["openid", "email"],
        redirect_uri="https://app.example/callback",
    )
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
    assert set(query) == {"client_id", "request_uri"}
    assert mp.counters["par"] == 1
    record = login(broker, mp, call)
    assert record.refresh_token is not None


class _CountingStore(MemoryStore):
    """A real MemoryStore that counts the store calls the broker makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get(self, key: Any) -> Any:
        self.calls += 1
        return super().get(key)


def test_warm_path_does_no_store_or_provider_io(provider: MockProvider, call: Call) -> None:
    store = _CountingStore()
    broker = make_broker(provider, store=store)
    first = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    reads, requests = store.calls, provider.counters["token"]
    for _ in range(50):
        again = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
        assert again.access_token == first.access_token
    assert store.calls == reads
    assert provider.counters["token"] == requests


def test_a_warm_lease_checks_its_grant_once_per_scopes_argument(
    provider: MockProvider, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: a warm lease does not rebuild and re-check its scopes every call (it
    did: a ScopeSet and its SHA-256 per lease, 51 Python calls instead of 12), yet a grant
    that lacks what was asked for is refused every time, warm or not."""
    from oauth2_broker_mw import broker as broker_module

    checks: list[object] = []
    real = broker_module.oauth.missing_scopes

    def counting(*args: Any) -> frozenset[str]:
        checks.append(args)
        return real(*args)

    monkeypatch.setattr(broker_module.oauth, "missing_scopes", counting)
    broker = make_broker(provider)
    first = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"])
    assert len(checks) == 1
    for _ in range(50):
        assert call(broker, "lease", tenant=TENANT, principal="svc", scopes=["x"]) is first
    assert len(checks) == 2  # when obtained, and when first served from the cache
    assert call(broker, "lease", tenant=TENANT, principal="svc", scopes="x") is first
    assert len(checks) == 3  # another spelling of the argument is checked once more

    provider.quirks.narrow_scopes = frozenset({"admin"})
    for _ in range(3):  # the first obtains and caches the narrower grant; then warm
        with pytest.raises(InsufficientScope):
            call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read", "admin"])
    assert provider.counters["token"] == 2


@pytest.mark.parametrize("size", [0, -1])
def test_a_cache_size_below_one_is_a_configuration_error(provider: MockProvider, size: int) -> None:
    with pytest.raises(ConfigurationError, match="cache_size must be >= 1"):
        make_broker(provider, cache_size=size)


def test_the_in_process_cache_evicts_the_oldest_and_a_refreshed_entry_is_newest(
    provider: MockProvider,
) -> None:
    broker = make_broker(provider, cache_size=2)
    leases = [broker.lease(tenant=TENANT, principal=p, scopes=["x"]) for p in ("svc-a", "svc-b")]
    # a new token for "svc-a" makes it the newest entry
    broker.lease(tenant=TENANT, principal="svc-a", scopes=["x"], force_refresh=True)
    broker.lease(tenant=TENANT, principal="svc-c", scopes=["x"])  # evicts "svc-b", the oldest
    assert broker.cached_lease(leases[0].key) is not None
    assert broker.cached_lease(leases[1].key) is None


def test_in_process_cache_stays_bounded(provider: MockProvider) -> None:
    broker = make_broker(provider, cache_size=8)
    for i in range(40):
        broker.lease(tenant=TENANT, principal=f"svc-{i}", scopes=["x"])
    assert len(broker._cache) <= 8
    assert len(broker._flights) == 0
    # An evicted key is served from the store, not from the provider again.
    before = provider.counters["token"]
    broker.lease(tenant=TENANT, principal="svc-0", scopes=["x"])
    assert provider.counters["token"] == before


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_scopes_given_as_a_generator_get_the_same_answer_as_a_list(mode: str) -> None:
    """A one-shot iterable of scopes is read once: the warm path's scope check, the record it
    marks as checked and the cold path's token request all see every scope (a generator read
    twice would pass an empty set and hand out a narrower grant)."""
    import time

    from oauth2_broker_mw import ProviderDescriptor
    from oauth2_broker_mw import ScopeSet
    from oauth2_broker_mw import Secret
    from oauth2_broker_mw import TokenRecord

    descriptor = ProviderDescriptor(
        id="p",
        token_endpoint="https://idp.invalid/token",
        authorization_endpoint="https://idp.invalid/authorize",
        default_scopes=("a",),
    )
    broker = Broker(descriptor, client_id="c", client_secret="s", store=MemoryStore())
    key = broker.key(tenant="t", principal="u", scopes=["a", "b"])
    now = time.time()
    granted_a = TokenRecord(
        key=key,
        access_token=Secret("at-only-a"),
        scopes=ScopeSet.of(("a",)),
        issued_at=now,
        expires_at=now + 3600,
    )
    broker.store.put(granted_a)

    def lease(**kw: Any) -> Any:
        if mode == "sync":
            return broker.lease(tenant="t", principal="u", **kw)
        return asyncio.run(broker.alease(tenant="t", principal="u", **kw))

    def lease_for_key(**kw: Any) -> Any:
        if mode == "sync":
            return broker.lease_for_key(key, **kw)
        return asyncio.run(broker.alease_for_key(key, **kw))

    assert lease(scopes=["a", "b"], required_scopes=()).scopes.scopes == ("a",)  # now cached
    with pytest.raises(InsufficientScope):
        lease(scopes=(s for s in ["a", "b"]))
    with pytest.raises(InsufficientScope):  # the generator did not mark ("a", "b") as checked
        lease(scopes=["a", "b"])
    with pytest.raises(InsufficientScope):
        lease_for_key(scopes=iter(["a", "b"]))
