"""DPoP (RFC 9449, SECURITY F6/D3): proofs, DPoP-bound tokens at the token endpoint and at a
resource server, nonces, for the sync and async broker and all five BrokerAuth clients.

Everything runs against the real MockProvider (``dpop="optional"/"required"``), in-process and
over loopback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
import requests
from auth.test_auth_support import CLIENTS
from auth.test_auth_support import Driver
from auth.test_auth_support import Recorder
from joserfc import jws
from joserfc import jwt
from joserfc.jwk import ECKey
from joserfc.jwk import JWKRegistry

from oauth2_broker_mw._core.dpop import DPoPKey
from oauth2_broker_mw._core.dpop import htu
from oauth2_broker_mw._core.dpop import make_proof
from oauth2_broker_mw._core.dpop import thumbprint
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import UnsupportedTokenType
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing._mock_transport import LoopThread
from oauth2_broker_mw.testing._mock_transport import serve_app
from oauth2_broker_mw.testing.mock_provider import MockProvider

CLIENT_ID, CLIENT_SECRET = "test-client", "test-secret"
TENANT, USER = "acme", "user-1"

Call = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Call:
    def run(obj: Any, name: str, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(obj, name)(**kwargs)
        return asyncio.run(getattr(obj, "a" + name)(**kwargs))

    return run


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a proof with its own embedded key and return (header, claims)."""
    header = dict(jws.extract_compact(proof.encode()).headers())
    key = JWKRegistry.import_key(header["jwk"])
    claims = dict(jwt.decode(proof, key, algorithms=[header["alg"]]).claims)
    return header, claims


def _broker(provider: MockProvider, *, inprocess: bool = True, **kwargs: Any) -> Broker:
    descriptor = kwargs.pop("descriptor", None) or provider.descriptor()
    extra: dict[str, Any] = {}
    if inprocess:
        extra = {
            "http_client": provider.client(),
            "async_http_client": provider.async_client(),
        }
    kwargs.setdefault("client_credentials_principals", {"svc"})  # the app's service (SECURITY J6)
    return Broker(descriptor, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **extra, **kwargs)


def _login(broker: Broker, provider: MockProvider, call: Call) -> Any:
    request = call(
        broker,
        "start_authorization",
        tenant=TENANT,
        principal=USER,
        scopes=["openid", "email"],
        redirect_uri="https://app.example/callback",
    )
    response = provider.client().get(request.url)
    assert response.status_code in (302, 303), response.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.headers["location"]).query))
    return call(broker, "exchange_code", state=query["state"], code=query["code"])


def _introspect(provider: MockProvider, token: str) -> dict[str, Any]:
    with provider.client() as client:
        response = client.post(
            provider.introspection_endpoint,
            data={"token": token},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
    body: dict[str, Any] = response.json()
    return body


def _token_proofs(provider: MockProvider) -> list[str]:
    return [r.headers["dpop"] for r in provider.requests_to("token") if "dpop" in r.headers]


# -- proofs ----------------------------------------------------------------------------------
def test_proof_header_and_claims() -> None:
    key = DPoPKey.generate()
    token = "access-token-value"
    proof = make_proof(
        key,
        htm="post",
        htu="https://rs.example/api/v1/items?secret=1#frag",
        now=1_700_000_000.5,
        nonce="n-1",
        access_token=token,
    )
    header, claims = _decode(proof)
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == "ES256"
    assert "d" not in header["jwk"] and header["jwk"]["kty"] == "EC"
    assert claims["htm"] == "POST"
    assert claims["htu"] == "https://rs.example/api/v1/items"
    assert claims["iat"] == 1_700_000_000
    assert claims["nonce"] == "n-1"
    assert claims["ath"] == _b64(hashlib.sha256(token.encode()).digest())
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16
    jtis = {
        _decode(make_proof(key, htm="GET", htu="https://rs.example/", now=1))[1]["jti"]
        for _ in range(50)
    }
    assert len(jtis) == 50
    bare = _decode(make_proof(key, htm="GET", htu="https://rs.example/", now=1))[1]
    assert "ath" not in bare and "nonce" not in bare
    assert thumbprint(key) == key.thumbprint == JWKRegistry.import_key(header["jwk"]).thumbprint()
    assert htu("https://a.example/p?q#f") == "https://a.example/p"


def test_key_loading_and_no_key_material_in_repr() -> None:
    ec = ECKey.generate_key("P-256")
    private = ec.as_dict(private=True)
    loaded = DPoPKey.load(private)
    assert loaded.thumbprint == ec.thumbprint()
    pem = ec.as_pem(private=True).decode()
    assert DPoPKey.load(pem).thumbprint == ec.thumbprint()
    assert str(private["d"]) not in repr(loaded)
    with pytest.raises(ConfigurationError) as info:
        DPoPKey.load({"kty": "EC", "d": "secret-material"})
    assert "secret-material" not in str(info.value)
    with pytest.raises(ConfigurationError):
        DPoPKey.load(ec.as_dict(private=False))  # a public key cannot sign


def test_descriptor_flag_is_opt_in() -> None:
    plain = ProviderDescriptor(
        id="p", token_endpoint="https://as.example/token", grants=["client_credentials"]
    )
    assert plain.dpop is False and "dpop" not in repr(plain)
    with pytest.raises(ConfigurationError):
        plain.replace(dpop=True, dpop_signing_alg="HS256")
    doc = {
        "issuer": "https://as.example",
        "token_endpoint": "https://as.example/token",
        "grant_types_supported": ["client_credentials"],
        "dpop_signing_alg_values_supported": ["RS256", "ES256"],
    }
    silent = ProviderDescriptor.from_metadata("p", doc, expected_issuer="https://as.example")
    assert silent.dpop is False
    on = ProviderDescriptor.from_metadata("p", doc, expected_issuer="https://as.example", dpop=True)
    assert on.dpop is True and on.dpop_signing_alg == "ES256"
    no_dpop = {k: v for k, v in doc.items() if k != "dpop_signing_alg_values_supported"}
    with pytest.raises(ConfigurationError):
        ProviderDescriptor.from_metadata(
            "p", no_dpop, expected_issuer="https://as.example", dpop=True
        )


def test_dpop_key_without_dpop_descriptor_is_refused() -> None:
    with MockProvider() as provider, pytest.raises(ConfigurationError):
        _broker(provider, dpop_key=ECKey.generate_key("P-256").as_dict(private=True))


# -- the token endpoint ----------------------------------------------------------------------
def test_client_credentials_gets_a_bound_token(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="oauth2_broker_mw")
    with MockProvider(dpop="required") as provider:
        broker = _broker(provider)
        lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read"])
        assert lease.token_type == "DPoP"
        assert lease.authorization_header.startswith("DPoP ")
        info = _introspect(provider, lease.access_token.get_secret_value())
        assert info["active"] is True and info["token_type"] == "DPoP"
        assert info["cnf"] == {"jkt": broker.dpop_thumbprint}
        assert provider.counters["dpop:proof_ok:token"] == 1
        (proof,) = _token_proofs(provider)
        header, claims = _decode(proof)
        assert header["typ"] == "dpop+jwt" and "d" not in header["jwk"]
        assert claims["htm"] == "POST" and claims["htu"] == provider.token_endpoint
        assert "ath" not in claims  # no access token yet at the token endpoint
        assert "ephemeral" in caplog.text
        token = lease.access_token.get_secret_value()
        assert token not in caplog.text and token not in repr(lease) and token not in repr(broker)


def test_required_mode_refuses_a_request_without_proof() -> None:
    with MockProvider(dpop="required") as provider:
        with provider.client() as client:
            response = client.post(
                provider.token_endpoint,
                data={"grant_type": "client_credentials"},
                auth=(CLIENT_ID, CLIENT_SECRET),
            )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_dpop_proof"


def test_code_flow_and_refresh_with_a_shared_key(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = ECKey.generate_key("P-256").as_dict(private=True)
    with MockProvider(dpop="required") as provider:
        broker = _broker(provider, dpop_key=key)
        secret_d = str(key["d"])
        for shown in (repr(broker), repr(broker._config), repr(broker._dpop_key), caplog.text):
            assert secret_d not in shown
        record = _login(broker, provider, call)
        assert record.token_type == "DPoP"
        assert record.refresh_token is not None
        jkt = ECKey.import_key(key).thumbprint()
        assert broker.dpop_thumbprint == jkt
        assert _introspect(provider, record.access_token.get_secret_value())["cnf"]["jkt"] == jkt
        refreshed = call(
            broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"]
        )
        assert refreshed.token_type == "DPoP"
        assert refreshed.access_token != record.access_token
        assert provider.counters["refresh_redeemed"] == 1
        # Another broker with another key cannot redeem the bound refresh token.
        other = _broker(provider, store=broker.store)
        provider.reset_counters()
        with pytest.raises(Exception):  # noqa: B017 - the provider's refusal
            call(other, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"])
        assert provider.counters["refresh_redeemed"] == 0
        assert secret_d not in caplog.text
        assert record.access_token.get_secret_value() not in caplog.text


def test_token_endpoint_nonce_is_resent_once_and_remembered(call: Call) -> None:
    with MockProvider(dpop="required", dpop_nonce=True) as provider:
        broker = _broker(provider)
        record = _login(broker, provider, call)
        assert record.token_type == "DPoP"
        assert provider.counters["dpop:nonce_demanded:token"] == 1
        assert provider.counters["code_redeemed"] == 1
        first, second = _token_proofs(provider)
        assert "nonce" not in _decode(first)[1] and _decode(second)[1]["nonce"]
        assert _decode(first)[1]["jti"] != _decode(second)[1]["jti"]
        provider.reset_counters()
        # The nonce is remembered: the refresh goes through on the first request.
        refreshed = call(
            broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"]
        )
        assert provider.counters["dpop:nonce_demanded:token"] == 0
        assert provider.counters["refresh_redeemed"] == 1
        # A rotated nonce costs exactly one resend of the refresh request, and the refresh
        # token was not consumed by the refused first attempt.
        provider.rotate_dpop_nonces()
        provider.reset_counters()
        again = call(broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"])
        assert provider.counters["dpop:nonce_demanded:token"] == 1
        assert provider.counters["token:error:use_dpop_nonce"] == 1
        assert provider.counters["refresh_redeemed"] == 1
        assert provider.counters["refresh_reuse"] == 0
        assert again.access_token != refreshed.access_token
        provider.reset_counters()
        call(broker, "refresh", tenant=TENANT, principal=USER, scopes=["openid", "email"])
        assert provider.counters["refresh_redeemed"] == 1
        assert provider.counters["family_revoked"] == 0


def test_a_nonce_demand_is_answered_only_once(call: Call) -> None:
    with MockProvider(dpop="required", dpop_nonce=True) as provider:
        broker = _broker(provider)
        original = provider._token_dpop

        def always_rotate(request: Any) -> Any:
            provider.rotate_dpop_nonces()
            return original(request)

        provider._token_dpop = always_rotate  # type: ignore[method-assign]
        with pytest.raises(Exception) as info:
            call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read"])
        assert "use_dpop_nonce" in str(info.value)
        assert provider.counters["token:error:use_dpop_nonce"] == 2


def test_descriptor_without_dpop_still_refuses_dpop_tokens(call: Call) -> None:
    with MockProvider(dpop="optional") as provider:
        provider.quirks.token_type = "DPoP"
        broker = _broker(provider, descriptor=provider.descriptor(dpop=False))
        with pytest.raises(UnsupportedTokenType):
            call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read"])
        # No proof was sent: the default behaviour is untouched.
        assert provider.counters["dpop:proof_ok:token"] == 0


def test_optional_mode_without_dpop_descriptor_stays_bearer(call: Call) -> None:
    with MockProvider(dpop="optional") as provider:
        broker = _broker(provider, descriptor=provider.descriptor(dpop=False))
        lease = call(broker, "lease", tenant=TENANT, principal="svc", scopes=["read"])
        assert lease.token_type == "Bearer"


# -- BrokerAuth against the resource -----------------------------------------------------------
@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("dpop-tests")
    try:
        yield thread
    finally:
        thread.close()


class World:
    def __init__(self, provider: MockProvider, broker: Broker, app: Any, loop: LoopThread | None):
        self.provider, self.broker, self.app, self.loop = provider, broker, app, loop
        self.drivers: list[Driver] = []

    def driver(self, kind: str, **kwargs: Any) -> Driver:
        kwargs.setdefault("tenant", TENANT)
        kwargs.setdefault("principal", "svc")
        kwargs.setdefault("scopes", ["read"])
        auth = BrokerAuth(self.broker, **kwargs)
        d = Driver(kind, auth, inprocess_app=self.app, loop=self.loop)
        self.drivers.append(d)
        return d


@pytest.fixture(params=["inprocess", "loopback"])
async def world(request: pytest.FixtureRequest, loop: LoopThread) -> AsyncIterator[World]:
    provider = MockProvider(dpop="required", dpop_nonce=True)
    try:
        if request.param == "inprocess":
            w = World(provider, _broker(provider), provider.app, loop)
            yield w
        else:
            with provider.serve():
                w = World(provider, _broker(provider, inprocess=False), None, None)
                yield w
        for d in w.drivers:
            await d.aclose()
        await w.broker.aclose()
    finally:
        provider.close()


@pytest.mark.parametrize("kind", CLIENTS)
async def test_brokerauth_signs_with_dpop_and_answers_the_resource_nonce(
    world: World, kind: str
) -> None:
    d = world.driver(kind)
    url = world.provider.resource_url + "?page=2"
    first = await d.send("GET", url)
    assert first.status == 200, first.json
    # The first resource call was told to use a nonce, and retried exactly once.
    assert world.provider.counters["dpop:nonce_demanded:resource"] == 1
    assert world.provider.counters["dpop:resource:ok"] == 1
    assert world.provider.counters["refresh_redeemed"] == 0
    second = await d.send("POST", url, content=b"payload")
    assert second.status == 200 and second.json["body_len"] == 7
    assert world.provider.counters["dpop:nonce_demanded:resource"] == 1  # the nonce is reused
    assert world.provider.counters["dpop:resource:ok"] == 2
    # One token request for the whole run (the AS nonce was demanded once).
    assert world.provider.counters["dpop:proof_ok:token"] == 1


@pytest.mark.parametrize("kind", CLIENTS)
async def test_streaming_body_is_not_retried_for_a_nonce(world: World, kind: str) -> None:
    d = world.driver(kind)
    result = await d.send("POST", world.provider.resource_url, stream=[b"a", b"b"])
    assert result.status == 401
    assert world.provider.counters["dpop:nonce_demanded:resource"] == 1
    assert world.provider.counters["dpop:resource:ok"] == 0


async def test_bound_token_is_useless_without_its_key(world: World) -> None:
    lease = world.broker.lease(tenant=TENANT, principal="svc", scopes=["read"])
    token = lease.access_token.get_secret_value()
    url = world.provider.resource_url
    client: Any = world.provider.client() if world.app is not None else httpx2.Client()
    with client:
        # As a bearer token.
        bearer = client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 401
        assert bearer.headers["www-authenticate"].startswith("DPoP ")
        # With the DPoP scheme but no proof.
        bare = client.get(url, headers={"Authorization": f"DPoP {token}"})
        assert bare.status_code == 401
        # With a valid proof from another key (and the right nonce).
        other = DPoPKey.generate()
        nonce = client.get(
            url,
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": make_proof(other, htm="GET", htu=url, now=time.time(), access_token=token),
            },
        ).headers.get("dpop-nonce")
        assert nonce
        stolen = client.get(
            url,
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": make_proof(
                    other, htm="GET", htu=url, now=time.time(), access_token=token, nonce=nonce
                ),
            },
        )
        assert stolen.status_code == 401
        assert 'error="invalid_token"' in stolen.headers["www-authenticate"]
        # The right key works (proves the mock accepts what the broker signs).
        good = client.get(
            url,
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": world.broker.dpop_proof(
                    htm="GET", htu=url, access_token=token, nonce=nonce
                ),
            },
        )
        assert good.status_code == 200


async def test_a_revoked_dpop_token_is_replaced_and_resigned(world: World) -> None:
    d = world.driver("httpx2")
    assert (await d.send("GET", world.provider.resource_url)).status == 200
    lease = world.broker.lease(tenant=TENANT, principal="svc", scopes=["read"])
    world.provider.invalidate_access_token(lease.access_token.get_secret_value())
    result = await d.send("GET", world.provider.resource_url)
    assert result.status == 200
    assert world.provider.counters["dpop:proof_ok:token"] == 2
    assert world.provider.counters["dpop:resource:invalid_token"] == 1


async def test_bearer_is_unchanged_by_the_dpop_machinery(loop: LoopThread) -> None:
    with MockProvider() as provider:
        broker = _broker(provider)
        auth = BrokerAuth(broker, tenant=TENANT, principal="svc", scopes=["read"])
        d = Driver("httpx2", auth, inprocess_app=provider.app, loop=loop)
        result = await d.send("GET", provider.resource_url)
        await d.aclose()
        assert result.status == 200
        lease = broker.cached_lease(auth.key)
        assert lease is not None and lease.token_type == "Bearer"
        assert auth._sign_cache.dpop is False
        assert broker.dpop_thumbprint is None
        await broker.aclose()


def test_requests_loopback_signs_with_dpop() -> None:
    with MockProvider(dpop="required", dpop_nonce=True) as provider, provider.serve():
        broker = _broker(provider, inprocess=False)
        auth = BrokerAuth(broker, tenant=TENANT, principal="svc", scopes=["read"])
        seen: list[requests.PreparedRequest] = []
        with requests.Session() as session:
            session.trust_env = False
            session.hooks["response"].append(lambda r, **_: seen.append(r.request))
            response = session.get(provider.resource_url + "?x=1", auth=auth, timeout=10)
        assert response.status_code == 200
        final = response.request
        assert final.headers["Authorization"].startswith("DPoP ")
        _, claims = _decode(final.headers["DPoP"])
        assert claims["htu"] == provider.resource_url
        assert claims["htm"] == "GET"
        assert claims["nonce"]
        token = final.headers["Authorization"].split(" ", 1)[1]
        assert claims["ath"] == _b64(hashlib.sha256(token.encode()).digest())
        assert "d" not in _decode(final.headers["DPoP"])[0]["jwk"]
        broker.close()


# -- a redirect never carries the proof (issue 10: httpx and httpx2 forwarded it) ----------
@pytest.fixture(scope="module")
def redirecting() -> Iterator[tuple[MockProvider, Recorder, Recorder, str, str]]:
    """A DPoP MockProvider and two header-recording servers, all on loopback ports."""
    provider = MockProvider(dpop="required")
    a, b = Recorder(), Recorder()
    with provider.serve(), serve_app(a.app) as (_, port_a), serve_app(b.app) as (_, port_b):
        yield provider, a, b, f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    provider.close()


def _follow(library: Any, asynchronous: bool, auth: BrokerAuth, url: str) -> int:
    """GET ``url`` with a client of ``library`` that follows redirects; the final status."""
    if asynchronous:

        async def go() -> int:
            async with library.AsyncClient(auth=auth, follow_redirects=True) as client:
                return int((await client.get(url)).status_code)

        return asyncio.run(go())
    with library.Client(auth=auth, follow_redirects=True) as client:
        return int(client.get(url).status_code)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("library", [httpx2, httpx], ids=["httpx2", "httpx"])
@pytest.mark.parametrize("target", ["other-origin", "same-origin"])
def test_a_followed_redirect_never_carries_the_dpop_proof(
    redirecting: tuple[MockProvider, Recorder, Recorder, str, str],
    library: Any,
    asynchronous: bool,
    target: str,
) -> None:
    provider, a, b, origin_a, origin_b = redirecting
    a.clear()
    b.clear()
    broker = _broker(provider, inprocess=False)
    auth = BrokerAuth(broker, principal="svc", scopes=["read"], allowed_origins=[origin_a])
    to = f"{origin_b}/echo" if target == "other-origin" else "/echo"
    try:
        assert _follow(library, asynchronous, auth, f"{origin_a}/redirect?to={to}") == 200
    finally:
        broker.close()
    first = a.proofs()[0]
    assert first is not None  # the request it was made for carried it
    payload = first.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["htu"] == f"{origin_a}/redirect"
    hops = b.seen if target == "other-origin" else a.seen[1:]
    assert len(hops) == 1 and hops[0].dpop is None  # main: the same proof, bound to /redirect
    if target == "other-origin":
        assert hops[0].authorization is None  # and the token stayed behind (SECURITY F3)


def test_the_callers_own_trace_callback_still_runs(
    redirecting: tuple[MockProvider, Recorder, Recorder, str, str],
) -> None:
    provider, a, b, origin_a, origin_b = redirecting
    a.clear()
    b.clear()
    broker = _broker(provider, inprocess=False)
    auth = BrokerAuth(broker, principal="svc", scopes=["read"], allowed_origins=[origin_a])
    events: list[str] = []
    try:
        with httpx2.Client(auth=auth, follow_redirects=True) as client:
            url = f"{origin_a}/redirect?to={origin_b}/echo"
            response = client.get(url, extensions={"trace": lambda e, _: events.append(e)})
    finally:
        broker.close()
    assert response.status_code == 200
    assert "http11.receive_response_headers.complete" in events
    assert b.proofs() == [None]
