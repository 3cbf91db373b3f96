"""Unit tests of the middleware's parts: sealed cookies, resolvers, configuration checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from oauth2_broker_mw import Broker
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import Secret
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.middleware import BrokerRequest
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
from oauth2_broker_mw.middleware import header_tenant
from oauth2_broker_mw.middleware import path_prefix_tenant
from oauth2_broker_mw.middleware import subdomain_tenant
from oauth2_broker_mw.middleware._cookies import CookieSealer
from oauth2_broker_mw.middleware._cookies import parse_cookie_header
from oauth2_broker_mw.testing.mock_provider import MockProvider

KEY = "unit-test-secret-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"
NOW = 1_800_000_000.0


# -- sealed cookies -------------------------------------------------------------------------------
def test_sealed_cookie_round_trip_hides_the_payload() -> None:
    sealer = CookieSealer(KEY)
    value = sealer.seal("obm_session", {"p": "alice", "c": ["acme"]}, NOW)
    assert "alice" not in value
    assert value != sealer.seal("obm_session", {"p": "alice", "c": ["acme"]}, NOW)  # fresh nonce
    data = sealer.open("obm_session", value, now=NOW + 5, max_age=60)
    assert data is not None
    assert (data["p"], data["c"], data["iat"]) == ("alice", ["acme"], int(NOW))


def test_sealed_cookie_rejects_tampering_moving_age_and_other_keys() -> None:
    sealer = CookieSealer(KEY)
    value = sealer.seal("obm_flow_a", {"s": "x"}, NOW)
    flipped = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    assert sealer.open("obm_flow_a", flipped, now=NOW, max_age=60) is None
    assert sealer.open("obm_flow_b", value, now=NOW, max_age=60) is None  # bound to its name
    assert sealer.open("obm_flow_a", value, now=NOW + 61, max_age=60) is None
    assert sealer.open("obm_flow_a", value, now=NOW - 3600, max_age=60) is None  # from the future
    assert (
        CookieSealer("another-secret-" + "gF0cB5yJ3dN6wK1sH4pZ8tV2rL7x9mQ").open(
            "obm_flow_a", value, now=NOW, max_age=60
        )
        is None
    )
    for junk in ("", "v1.", "v1.!!!", "v2." + value[3:], "garbage"):
        assert sealer.open("obm_flow_a", junk, now=NOW, max_age=60) is None


def test_a_sealed_cookie_opens_only_as_it_was_written() -> None:
    """Other spellings of the same bytes do not open: characters outside the base64url
    alphabet, padding, the ``+``/``/`` alphabet, other trailing bits (found by tests/fuzz)."""
    sealer = CookieSealer(KEY)
    value = sealer.seal("obm_flow_a", {"s": "x"}, NOW)
    body = value[3:]
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twins = [value + "!", value + "=", value + "==", value + "\x00", value[:10] + "*" + value[10:]]
    twins.append("v1." + body.replace("-", "+").replace("_", "/"))
    twins += ["v1." + body[:-1] + c for c in last if c != body[-1]]  # same bytes, other bits
    assert sealer.open("obm_flow_a", value, now=NOW, max_age=60) is not None
    opened = [t for t in twins if t != value and sealer.open("obm_flow_a", t, now=NOW, max_age=60)]
    assert opened == []


def test_key_rotation_opens_cookies_sealed_with_the_old_key() -> None:
    old, new = (
        "old-secret-" + "gF0cB5yJ3dN6wK1sH4pZ8tV2rL7x9mQ",
        Secret("new-secret-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"),
    )
    value = CookieSealer(old).seal("c", {"v": 1}, NOW)
    assert CookieSealer([new, old]).open("c", value, now=NOW, max_age=60) is not None
    assert CookieSealer([new]).open("c", value, now=NOW, max_age=60) is None


@pytest.mark.parametrize("secret", ["short", "", []])
def test_weak_or_missing_secret_key_is_a_configuration_error(secret: Any) -> None:
    with pytest.raises(ConfigurationError):
        CookieSealer(secret)


def test_sealer_repr_shows_no_key() -> None:
    assert KEY not in repr(CookieSealer(KEY))


def test_cookie_header_parsing() -> None:
    assert parse_cookie_header('a=1; b="2";c=x=y; a=dup; junk') == {"a": "1", "b": "2", "c": "x=y"}
    assert parse_cookie_header(None) == {}


# -- resolvers ---------------------------------------------------------------------------------
def _request(
    path: str = "/", headers: dict[str, str] | None = None, client: str | None = "10.0.0.5"
) -> BrokerRequest:
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return BrokerRequest(
        method="GET",
        path=path,
        query_string="",
        headers=lambda: lowered,
        client_host=client,
        raw={},
    )


def test_path_prefix_tenant() -> None:
    resolve = path_prefix_tenant("/t")
    assert resolve(_request("/t/acme/reports")) == "acme"
    assert resolve(_request("/t/acme")) == "acme"
    assert resolve(_request("/other")) is None
    with pytest.raises(ValueError):
        resolve(_request("/t/%20bad/x"))
    login = _request("/oauth2/idp/login")
    login.return_to = "/t/globex/home"
    assert resolve(login) == "globex"


def test_subdomain_tenant() -> None:
    resolve = subdomain_tenant("example.com")
    assert resolve(_request(headers={"host": "acme.example.com"})) == "acme"
    assert resolve(_request(headers={"host": "ACME.example.com:8443"})) == "acme"
    assert resolve(_request(headers={"host": "example.com"})) is None
    for host in (
        "evil.com",
        "acme.example.com.evil.com",
        "a.b.example.com",
        "-x.example.com",
        "acmeexample.com",
    ):
        with pytest.raises(ValueError):
            resolve(_request(headers={"host": host}))


def test_header_tenant_trusts_only_configured_proxies() -> None:
    resolve = header_tenant("X-Tenant-Id", trusted_proxies=["10.0.0.0/24", "::1"])
    assert resolve(_request(headers={"x-tenant-id": "acme"}, client="10.0.0.7")) == "acme"
    assert resolve(_request(headers={"x-tenant-id": "acme"}, client="::1")) == "acme"
    assert resolve(_request(client="10.0.0.7")) is None
    for peer in ("192.168.1.1", None, "not-an-ip"):
        with pytest.raises(ValueError):
            resolve(_request(headers={"x-tenant-id": "acme"}, client=peer))
    with pytest.raises(ConfigurationError):
        header_tenant(trusted_proxies=[])
    with pytest.raises(ConfigurationError):
        header_tenant(trusted_proxies=["nonsense"])


# -- configuration fails closed (G6) --------------------------------------------------------------
@pytest.fixture
def broker() -> Iterator[Broker]:
    mp = MockProvider()
    yield Broker(mp.descriptor(), client_id="test-client", client_secret="test-secret")
    mp.close()


@pytest.mark.parametrize(
    "overrides",
    [
        {"brokers": {}},
        {"base_url": "http://app.example.com"},
        {"base_url": "app.example.com"},
        {"base_url": "https://app.example.com/?x=1"},
        {"secret_key": "too-short"},
        {"prefix": "oauth2"},
        {"prefix": "/oauth2/"},
        {"scopes": {"unknown": ["x"]}},
        {"scopes": {"acme": "openid email"}},
        {"max_flows": 0},
        {"flow_ttl": 0},
    ],
)
@pytest.mark.parametrize("shell", [BrokerMiddleware, BrokerWSGIMiddleware])
def test_bad_configuration_is_refused(
    broker: Broker, shell: Any, overrides: dict[str, Any]
) -> None:
    config: dict[str, Any] = {
        "brokers": {"acme": broker},
        "secret_key": KEY,
        "base_url": "https://app.example.com",
    }
    config.update(overrides)
    with pytest.raises(ConfigurationError):
        shell(lambda *a: None, **config)


def test_middleware_repr_shows_no_secret(broker: Broker) -> None:
    middleware = BrokerMiddleware(
        lambda *a: None, brokers={"acme": broker}, secret_key=KEY, base_url="https://a.example"
    )
    assert KEY not in repr(middleware)
    assert "acme" in repr(middleware)


def test_reprs_of_internal_responses_hide_cookies_and_state(broker: Broker) -> None:
    from oauth2_broker_mw.middleware._core import Response
    from oauth2_broker_mw.middleware._core import drive

    middleware = BrokerMiddleware(
        lambda *a: None, brokers={"acme": broker}, secret_key=KEY, base_url="https://a.example"
    )
    core = middleware.core
    request = BrokerRequest(
        method="GET",
        path="/oauth2/acme/login",
        query_string="",
        headers=dict,
        client_host=None,
        raw={},
    )
    route = core.match(request.path)
    assert route is not None
    response = drive(core.handle(route, request))
    assert isinstance(response, Response)
    assert response.status == 302
    location = dict(response.headers)["location"]
    state = location.split("state=", 1)[1].split("&", 1)[0]
    cookie = dict(response.headers)["set-cookie"]
    assert state not in repr(response)
    assert cookie.split("=", 1)[1][:20] not in repr(response)
    assert "302" in repr(response)


def test_public_names_of_the_middleware_package() -> None:
    import oauth2_broker_mw.middleware as middleware

    assert sorted(middleware.__all__) == [
        "BrokerContext",
        "BrokerMiddleware",
        "BrokerRequest",
        "BrokerWSGIMiddleware",
        "PrincipalResolver",
        "RedactOAuthQuery",
        "TenantResolver",
        "header_tenant",
        "path_prefix_tenant",
        "safe_return_to",
        "subdomain_tenant",
        "validate_tenant",
    ]
    for name in middleware.__all__:
        assert getattr(middleware, name) is not None


def test_providers_without_configured_scopes_use_the_descriptors_defaults() -> None:
    from oauth2_broker_mw.middleware._core import Response
    from oauth2_broker_mw.middleware._core import drive

    mp = MockProvider()
    broker = Broker(
        mp.descriptor(default_scopes=("openid", "profile")),
        client_id="test-client",
        client_secret="test-secret",
    )
    core = BrokerMiddleware(
        lambda *a: None, brokers={"acme": broker}, secret_key=KEY, base_url="https://a.example"
    ).core
    assert core.scopes_of("acme", broker) == ("openid", "profile")
    request = BrokerRequest(
        method="GET",
        path="/oauth2/acme/login",
        query_string="",
        headers=dict,
        client_host=None,
        raw={},
    )
    route = core.match(request.path)
    assert route is not None
    response = drive(core.handle(route, request))
    assert isinstance(response, Response)
    location = dict(response.headers)["location"]
    assert "scope=openid%20profile" in location
    assert "nonce=" in location  # openid is among the defaults
    mp.close()
