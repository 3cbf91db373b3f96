"""The sans-IO flows driven by hand: no sockets, no threads, no event loop.

Each test feeds the generator the results a driver would, and asserts on the effects it asks
for — which is how we know, for instance, that a refresh is never sent twice and that a lost
rotation race revokes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Generator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from oauth2_broker_mw import AuthorizationFlowError
from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import InvalidGrant
from oauth2_broker_mw import ProviderDescriptor
from oauth2_broker_mw import RefreshTimeout
from oauth2_broker_mw import ScopeSet
from oauth2_broker_mw import Secret
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw._core.effects import BackoffUntil
from oauth2_broker_mw._core.effects import DropUnsaved
from oauth2_broker_mw._core.effects import Emit
from oauth2_broker_mw._core.effects import HttpRequest
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.effects import Now
from oauth2_broker_mw._core.effects import PeekUnsaved
from oauth2_broker_mw._core.effects import SetBackoff
from oauth2_broker_mw._core.effects import Sleep
from oauth2_broker_mw._core.effects import StoreOp
from oauth2_broker_mw._core.effects import TakeToken
from oauth2_broker_mw._core.flows import FlowConfig
from oauth2_broker_mw._core.flows import RevocationDrain
from oauth2_broker_mw._core.flows import drain_revocations_flow
from oauth2_broker_mw._core.flows import exchange_code_flow
from oauth2_broker_mw._core.flows import obtain_flow
from oauth2_broker_mw._core.flows import revoke_flow
from oauth2_broker_mw._core.flows import start_authorization_flow
from oauth2_broker_mw._core.model import PendingAuthorization
from oauth2_broker_mw._core.model import PrincipalId
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.policy import RefreshPolicy
from oauth2_broker_mw._core.provider import ClientConfig

NOW = 1_800_000_000.0
SCOPES = ScopeSet(("email.read",))
KEY = StoreKey.build("acme", "svc", "idp", SCOPES)


def provider(**overrides: Any) -> ProviderDescriptor:
    fields: dict[str, Any] = {
        "id": "idp",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://idp.example/token",
        "revocation_endpoint": "https://idp.example/revoke",
        "issuer": "https://idp.example",
        "grants": ["authorization_code", "refresh_token"],
    }
    fields.update(overrides)
    return ProviderDescriptor(**fields)


def config(**overrides: Any) -> FlowConfig:
    return FlowConfig(
        provider=provider(**overrides),
        client=ClientConfig.create("client-1", client_secret="s3cret"),
        policy=RefreshPolicy(margin=60, jitter=0),
        lock_ttl=10,
        lock_wait=1.0,
        poll_interval=0.1,
    )


def record(**overrides: Any) -> TokenRecord:
    fields: dict[str, Any] = {
        "key": KEY,
        "access_token": Secret("at-1"),
        "refresh_token": Secret("rt-1"),
        "issued_at": NOW - 3000,
        "expires_at": NOW + 600,
        "scopes": SCOPES,
        "requested_scopes": SCOPES,
        "metadata": {"instance_url": "https://acme.example"},
        "version": 3,
    }
    fields.update(overrides)
    return TokenRecord(**fields)


def token_response(body: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


class Script:
    """Drive a flow step by step, asserting on what it asks for."""

    def __init__(self, flow: Generator[Any, Any, Any]) -> None:
        self.flow = flow
        self.events: list[Any] = []
        self.effect: Any = self._skip_emits(next(flow))

    def _skip_emits(self, effect: Any) -> Any:
        """Lifecycle events are collected in ``events``, not scripted step by step; the
        provider gate is open (its own tests are in ``tests/broker/test_ratelimit.py``), and
        this process holds no unsaved rotation (those are in ``test_durable_rotation.py``)."""
        while isinstance(
            effect, Emit | BackoffUntil | SetBackoff | TakeToken | PeekUnsaved | DropUnsaved
        ):
            answer: Any = None
            if isinstance(effect, Emit):
                self.events.append(effect.event)
            elif isinstance(effect, BackoffUntil):
                answer = 0.0
            elif isinstance(effect, SetBackoff):
                answer = effect.until
            elif isinstance(effect, TakeToken):
                answer = (True, 0.0)
            effect = self.flow.send(answer)
        return effect

    def expect(self, kind: type, op: str | None = None) -> Any:
        assert isinstance(self.effect, kind), self.effect
        if op is not None:
            assert self.effect.op == op, self.effect
        return self.effect

    def send(self, value: Any) -> Any:
        try:
            self.effect = self._skip_emits(self.flow.send(value))
        except StopIteration as stop:
            self.effect = None
            return stop.value
        return None

    def throw(self, exc: BaseException) -> Any:
        try:
            self.effect = self._skip_emits(self.flow.throw(exc))
        except StopIteration as stop:
            self.effect = None
            return stop.value
        return None

    def answer_now(self, now: float = NOW) -> None:
        self.expect(Now)
        self.send(now)


def test_fresh_stored_token_needs_no_provider_call() -> None:
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.expect(StoreOp, "get")
    stored = record()
    assert s.send(stored) is stored
    assert s.effect is None


def test_refresh_takes_lock_double_checks_and_swaps_on_version() -> None:
    stale = record(expires_at=NOW + 10)  # inside the 60 s margin
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.expect(StoreOp, "get")
    s.send(stale)
    s.answer_now()
    lock = s.expect(StoreOp, "acquire_lock")
    assert lock.args[0] == KEY.lock_name
    s.send(True)
    s.answer_now()
    s.expect(StoreOp, "get")  # double-check after the lock
    s.send(stale)
    s.answer_now()
    request = s.expect(HttpRequest)
    assert request.url == "https://idp.example/token"
    assert request.hold is not None and request.hold.name == KEY.lock_name
    assert b"grant_type=refresh_token" in (request.body or b"")
    assert b"refresh_token=rt-1" in (request.body or b"")
    assert "rt-1" not in repr(request)
    s.send(token_response({"access_token": "at-2", "token_type": "bearer", "expires_in": 3600}))
    s.answer_now(NOW + 1)
    cas = s.expect(StoreOp, "compare_and_swap")
    assert dict(cas.kwargs) == {"expected_version": 3}
    new: TokenRecord = cas.args[0]
    assert new.access_token == Secret("at-2")
    # RFC 6749 §6 / quirk 7: no refresh token in the response keeps the stored one.
    assert new.refresh_token == Secret("rt-1")
    # Quirk 11: metadata survives refresh.
    assert new.metadata["instance_url"] == "https://acme.example"
    assert new.token_type == "Bearer"
    s.send(new.with_version(4))
    s.expect(StoreOp, "release_lock")
    result = s.send(True)
    assert result.version == 4
    assert s.effect is None


def test_invalid_grant_after_someone_else_rotated_revokes_nothing() -> None:
    stale = record(expires_at=NOW - 1)
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.expect(StoreOp, "get")
    s.send(stale)
    s.answer_now()
    s.expect(StoreOp, "acquire_lock")
    s.send(True)
    s.answer_now()
    s.expect(StoreOp, "get")
    s.send(stale)
    s.answer_now()
    s.expect(HttpRequest)
    s.send(token_response({"error": "invalid_grant"}, status=400))
    s.answer_now()
    # Before concluding anything, the flow re-reads the store.
    s.expect(StoreOp, "get")
    winner = record(access_token=Secret("at-9"), refresh_token=Secret("rt-9"), version=4)
    s.send(winner)
    s.expect(StoreOp, "release_lock")
    result = s.send(True)
    assert result is winner  # no delete, no revocation


def test_genuine_invalid_grant_tombstones_only_that_version_and_raises() -> None:
    stale = record(expires_at=NOW - 1)
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.send(stale)
    s.answer_now()
    s.send(True)
    s.answer_now()
    s.send(stale)
    s.answer_now()
    s.expect(HttpRequest)
    s.send(token_response({"error": "invalid_grant"}, status=400))
    s.answer_now()
    s.expect(StoreOp, "get")
    s.send(stale)
    cas = s.expect(StoreOp, "compare_and_swap")
    assert dict(cas.kwargs) == {"expected_version": 3}
    tombstone: TokenRecord = cas.args[0]
    assert tombstone.refresh_token is None and tombstone.revoked_at == NOW
    s.send(tombstone.with_version(4))
    s.expect(StoreOp, "release_lock")
    with pytest.raises(InvalidGrant):
        s.send(True)


def test_a_dead_user_grant_never_falls_back_to_client_credentials() -> None:
    cfg = config(grants=["authorization_code", "refresh_token", "client_credentials"])
    dead = record(refresh_token=None, revoked_at=NOW - 5, expires_at=NOW - 1)
    s = Script(obtain_flow(cfg, KEY, SCOPES))
    s.answer_now()
    s.expect(StoreOp, "get")
    with pytest.raises(AuthorizationRequired) as info:
        s.send(dead)
    assert "log in again" in str(info.value)


def test_client_credentials_only_for_allowed_principals() -> None:
    cfg = FlowConfig(
        provider=provider(grants=["client_credentials"]),
        client=ClientConfig.create("client-1", client_secret="s3cret"),
        client_credentials_principals=lambda key: key.principal.startswith("svc-"),
    )
    s = Script(obtain_flow(cfg, KEY, SCOPES))  # principal "svc"
    s.answer_now()
    with pytest.raises(AuthorizationRequired):
        s.send(None)
    allowed = StoreKey.build("acme", "svc-router", "idp", SCOPES)
    s = Script(obtain_flow(cfg, allowed, SCOPES))
    s.answer_now()
    s.send(None)
    s.answer_now()
    s.expect(StoreOp, "acquire_lock")


def test_waiter_uses_the_lock_holders_result_without_calling_the_provider() -> None:
    stale = record(expires_at=NOW - 1)
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.send(stale)
    s.answer_now()
    s.expect(StoreOp, "acquire_lock")
    s.send(False)  # someone else holds it
    s.expect(Sleep)
    s.send(NOW + 0.1)
    s.expect(StoreOp, "get")
    s.send(stale)  # not yet
    assert s.expect(Now).monotonic  # the deadline reads the monotonic clock
    s.send(NOW + 0.1)
    s.expect(StoreOp, "acquire_lock")
    s.send(False)
    s.expect(Sleep)
    s.send(NOW + 0.2)
    s.expect(StoreOp, "get")
    fresh = record(access_token=Secret("at-2"), expires_at=NOW + 3600, version=4)
    assert s.send(fresh) is fresh
    assert s.effect is None


def test_waiter_gives_up_with_a_typed_error() -> None:
    stale = record(expires_at=NOW - 1)
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.send(stale)
    s.answer_now()
    with pytest.raises(RefreshTimeout):
        for step in range(100):
            s.expect(StoreOp, "acquire_lock")
            s.send(False)
            s.expect(Sleep)
            s.send(NOW + 0.1 * (step + 1))
            s.expect(StoreOp, "get")
            s.send(stale)
            assert s.expect(Now).monotonic
            s.send(NOW + 0.1 * (step + 1))


def test_transport_error_is_not_retried_and_releases_the_lock() -> None:
    from oauth2_broker_mw import TransportError

    stale = record(expires_at=NOW - 1)
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.send(stale)
    s.answer_now()
    s.send(True)
    s.answer_now()
    s.send(stale)
    s.answer_now()
    s.expect(HttpRequest)
    s.throw(TransportError("boom"))
    s.answer_now()  # the failure counts for the provider's circuit breaker
    s.expect(StoreOp, "release_lock")  # the only thing it does next: no second request
    with pytest.raises(TransportError):
        s.send(True)


def test_nothing_to_refresh_and_no_client_credentials_requires_authorization() -> None:
    s = Script(obtain_flow(config(), KEY, SCOPES))
    s.answer_now()
    s.expect(StoreOp, "get")
    with pytest.raises(AuthorizationRequired) as info:
        s.send(None)
    assert info.value.tenant == "acme" and info.value.provider == "idp"


def test_stale_lease_is_replaced_by_a_newer_stored_token_without_refresh() -> None:
    newer = record(access_token=Secret("at-2"), expires_at=NOW + 3600, version=4)
    s = Script(obtain_flow(config(), KEY, SCOPES, stale=Secret("at-1")))
    s.answer_now()
    s.expect(StoreOp, "get")
    assert s.send(newer) is newer


def test_stale_lease_that_is_still_stored_is_refreshed() -> None:
    current = record(expires_at=NOW + 3600)  # fresh by time, but the server rejected it
    s = Script(obtain_flow(config(), KEY, SCOPES, stale=Secret("at-1")))
    s.answer_now()
    s.send(current)
    s.answer_now()
    s.expect(StoreOp, "acquire_lock")


def test_client_credentials_use_delimiter_and_put() -> None:
    cfg = config(grants=["client_credentials"], scope_delimiter=",")
    scopes = ScopeSet(("a", "b"))
    key = StoreKey.build("acme", "svc", "idp", scopes)
    s = Script(obtain_flow(cfg, key, scopes))
    s.answer_now()
    s.send(None)
    s.answer_now()
    s.send(True)
    s.answer_now()
    s.send(None)
    s.answer_now()
    request = s.expect(HttpRequest)
    assert b"grant_type=client_credentials" in (request.body or b"")
    assert b"scope=a%2Cb" in (request.body or b"")
    s.send(token_response({"access_token": "cc-1", "token_type": "Bearer", "expires_in": 60}))
    s.answer_now()
    put = s.expect(StoreOp, "put")
    assert put.args[0].grant == "client_credentials"


def _pending(state: str = "st-1", **overrides: Any) -> PendingAuthorization:
    fields: dict[str, Any] = {
        "state": Secret(state),
        "tenant": TenantId("acme"),
        "principal": PrincipalId("alice"),
        "provider": "idp",
        "scopes": SCOPES,
        "redirect_uri": "https://app.example/cb",
        "code_verifier": Secret("v" * 43),
        "nonce": None,
        "created_at": NOW,
        "expires_at": NOW + 600,
        "issuer": "https://idp.example",
    }
    fields.update(overrides)
    return PendingAuthorization(**fields)


def test_start_authorization_keeps_verifier_and_sends_s256() -> None:
    s = Script(
        start_authorization_flow(
            config(),
            tenant=TenantId("acme"),
            principal=PrincipalId("alice"),
            scopes=ScopeSet(("openid", "email")),
            redirect_uri="https://app.example/cb",
        )
    )
    s.answer_now()
    put = s.expect(StoreOp, "put_pending")
    pending: PendingAuthorization = put.args[0]
    result = s.send(None)
    assert "code_challenge_method=S256" in result.url
    assert f"state={result.state}" in result.url
    assert pending.state == Secret(result.state)
    assert pending.nonce is not None  # openid requested
    assert pending.code_verifier is not None
    assert pending.code_verifier.get_secret_value() not in result.url
    assert pending.expires_at > NOW
    assert len(result.state) >= 22  # >= 128 bits, base64url


@pytest.mark.parametrize(
    ("pending", "now", "iss", "code"),
    [
        (None, NOW, None, "state_unknown"),
        (_pending(expires_at=NOW - 1), NOW, None, "state_expired"),
        (_pending(state="other"), NOW, None, "state_unknown"),
        (_pending(), NOW, "https://evil.example", "issuer_mismatch"),
        (_pending(provider="other-idp"), NOW, None, "state_unknown"),
    ],
)
def test_exchange_rejections_never_reach_the_token_endpoint(
    pending: PendingAuthorization | None, now: float, iss: str | None, code: str
) -> None:
    s = Script(exchange_code_flow(config(), state="st-1", code="c-1", iss=iss))
    take = s.expect(StoreOp, "take_pending")
    assert take.args[0] == PendingAuthorization.key_for("st-1")  # keyed by a hash, not the state
    with pytest.raises(AuthorizationFlowError) as info:
        s.send(pending)
        s.answer_now(now)
    assert info.value.code == code
    assert not isinstance(s.effect, HttpRequest)


def test_exchange_requires_iss_when_provider_always_sends_it() -> None:
    cfg = config(authorization_response_iss_parameter_supported=True)
    s = Script(exchange_code_flow(cfg, state="st-1", code="c-1"))
    s.send(_pending())
    with pytest.raises(AuthorizationFlowError) as info:
        s.answer_now()
    assert info.value.code == "issuer_missing"


def test_exchange_sends_code_verifier_and_redirect_uri_and_stores() -> None:
    s = Script(exchange_code_flow(config(), state="st-1", code="c-1", iss="https://idp.example"))
    s.send(_pending())
    s.answer_now()
    request = s.expect(HttpRequest)
    body = (request.body or b"").decode()
    assert "code=c-1" in body and "code_verifier=" + "v" * 43 in body
    assert "redirect_uri=https%3A%2F%2Fapp.example%2Fcb" in body
    s.send(token_response({"access_token": "at", "refresh_token": "rt", "token_type": "Bearer"}))
    s.answer_now()
    put = s.expect(StoreOp, "put")
    stored = put.args[0].with_version(1)
    assert s.send(stored) is stored
    assert stored.key.principal == "alice"


def test_revoke_sends_refresh_token_first_then_deletes() -> None:
    s = Script(revoke_flow(config(), KEY))
    s.expect(StoreOp, "get")
    s.send(record())
    s.answer_now()  # client assertions are signed at the broker's time
    first = s.expect(HttpRequest)
    assert b"token_type_hint=refresh_token" in (first.body or b"")
    s.send(HttpResponse(200))
    s.answer_now()
    second = s.expect(HttpRequest)
    assert b"token_type_hint=access_token" in (second.body or b"")
    s.send(HttpResponse(200))
    s.answer_now()
    s.expect(StoreOp, "delete")
    assert s.send(True) is True
    # The one event: the connection is gone (no secret in it).
    assert [type(e).__name__ for e in s.events] == ["ConnectionRevoked"]
    assert s.events[0].version == 3


def test_revoke_signs_its_client_assertions_at_the_brokers_clock() -> None:
    # The first wave signed them at the wall clock: a broker on a fake or skewed clock sent
    # assertions from another time.
    secret = "a-long-shared-secret-of-at-least-32-bytes!!"
    cfg = dataclasses.replace(
        config(client_auth_method="client_secret_jwt"),
        client=ClientConfig.create("client-1", client_secret=secret),
    )
    s = Script(revoke_flow(cfg, KEY))
    s.expect(StoreOp, "get")
    s.send(record())
    s.answer_now(NOW + 12_345)
    body = dict(urllib.parse.parse_qsl((s.expect(HttpRequest).body or b"").decode()))
    claims = jwt.decode(body["client_assertion"], OctKey.import_key(secret.encode())).claims
    assert claims["iat"] == int(NOW + 12_345)


def test_revoke_queues_what_is_left_then_deletes_when_the_provider_says_503() -> None:
    s = Script(revoke_flow(config(), KEY))
    stored = record()
    s.send(stored)
    s.answer_now()
    s.expect(HttpRequest)
    s.send(HttpResponse(503, {"retry-after": "45"}))
    s.answer_now()
    queue = s.expect(StoreOp, "compare_and_swap")
    assert queue.expected_version is None  # a new queue entry, written before the delete
    entry = queue.record
    assert (entry.key.tenant, entry.key.principal) == ("@revocations", "@revoke")
    assert entry.key != KEY and entry.revoked_at == NOW and entry.expires_at == NOW + 45
    assert entry.refresh_token == stored.refresh_token and entry.id_token is None
    assert entry.metadata["o2bm_revocation"]["key"] == KEY.to_dict()
    s.send(entry)
    s.expect(StoreOp, "delete")
    assert s.send(True) is True
    assert [type(e).__name__ for e in s.events] == ["RevocationQueued"]
    assert s.events[0].retry_at == NOW + 45


def test_revoke_queues_only_the_access_token_when_the_refresh_token_was_revoked() -> None:
    s = Script(revoke_flow(config(), KEY))
    stored = record()
    s.send(stored)
    s.answer_now()
    s.send(HttpResponse(200))  # the refresh token is revoked
    s.answer_now()
    s.send(HttpResponse(503))  # the access token is not
    s.answer_now()
    entry = s.expect(StoreOp, "compare_and_swap").record
    assert entry.refresh_token is None and entry.access_token == stored.access_token
    assert entry.expires_at == NOW + 30  # no Retry-After: the first back-off


def _queued_entry() -> TokenRecord:
    """The queue entry revoke_flow writes when the provider says 503 (Retry-After: 45)."""
    s = Script(revoke_flow(config(), KEY))
    s.send(record())
    s.answer_now()
    s.send(HttpResponse(503, {"retry-after": "45"}))
    s.answer_now()
    entry: TokenRecord = s.expect(StoreOp, "compare_and_swap").record
    return entry.with_version(1)


def test_drain_claims_a_due_revocation_before_sending_and_skips_one_taken_elsewhere() -> None:
    entry = _queued_entry()
    s = Script(drain_revocations_flow(config()))
    assert s.expect(StoreOp, "list_keys").args == ("@revocations", "@revoke")
    s.send([entry.key])
    s.expect(StoreOp, "get")
    s.send(entry)
    s.answer_now(NOW + 45)
    claim = s.expect(StoreOp, "compare_and_swap")
    assert claim.expected_version == 1 and claim.record.expires_at > NOW + 45
    # another process claimed it first: nothing is sent
    assert s.send(None) == RevocationDrain()


def test_drain_delivers_a_due_revocation_and_removes_it_at_the_claimed_version() -> None:
    entry = _queued_entry()
    s = Script(drain_revocations_flow(config()))
    s.send([entry.key])
    s.send(entry)
    s.answer_now(NOW + 45)
    s.send(entry.with_version(2))  # claimed
    for hint in (b"refresh_token", b"access_token"):
        s.answer_now(NOW + 45)
        assert b"token_type_hint=" + hint in (s.expect(HttpRequest).body or b"")
        s.send(HttpResponse(200))
    s.answer_now(NOW + 46)
    delete = s.expect(StoreOp, "delete")
    assert delete.kwargs == {"expected_version": 2}
    assert s.send(True) == RevocationDrain(delivered=1)
    assert [type(e).__name__ for e in s.events] == ["ConnectionRevoked"]
    assert (s.events[0].tenant, s.events[0].principal) == (KEY.tenant, KEY.principal)


def test_drain_leaves_a_revocation_that_is_not_due() -> None:
    entry = _queued_entry()
    s = Script(drain_revocations_flow(config()))
    s.send([entry.key])
    s.send(entry)
    s.expect(Now)
    assert s.send(NOW + 44) == RevocationDrain(waiting=1)  # nothing claimed, nothing sent


def test_revoke_keeps_the_record_when_the_provider_redirects() -> None:
    from oauth2_broker_mw import ProviderError

    s = Script(revoke_flow(config(), KEY))
    s.send(record())
    s.answer_now()
    s.expect(HttpRequest)
    with pytest.raises(ProviderError):
        s.send(HttpResponse(307, {"location": "https://elsewhere.example/"}))
    assert not (isinstance(s.effect, StoreOp) and s.effect.op == "delete")


def test_refresh_policy_window_is_bounded_for_short_tokens() -> None:
    policy = RefreshPolicy(margin=60, jitter=30)
    short = record(issued_at=NOW, expires_at=NOW + 30)
    assert NOW + 12 <= policy.refresh_at(short) <= NOW + 15
    unknown = record(expires_at=None)
    assert policy.is_fresh(unknown, NOW + 10**9)
    # The jitter depends on the key only, so every process agrees on one key's deadline.
    assert policy.refresh_at(record()) == policy.refresh_at(record())


def test_default_scopes_are_asked_for_but_the_key_stays_on_the_request() -> None:
    cfg = config(default_scopes=["offline_access"])
    s = Script(
        start_authorization_flow(
            cfg,
            tenant=TenantId("acme"),
            principal=PrincipalId("alice"),
            scopes=ScopeSet(("User.Read",)),
            redirect_uri="https://app.example/cb",
        )
    )
    s.answer_now()
    pending: PendingAuthorization = s.expect(StoreOp, "put_pending").args[0]
    result = s.send(None)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(result.url).query))
    assert query["scope"].split() == ["User.Read", "offline_access"]
    assert pending.scopes.scopes == ("User.Read",)


@pytest.mark.parametrize(
    "redirect_uri",
    ["http://app.example/cb", "http://192.168.1.5/cb", "ftp://app.example/cb"],
)
def test_redirect_uri_must_be_https_outside_loopback(redirect_uri: str) -> None:
    """SECURITY B9: the authorization response travels over TLS (loopback http excepted)."""
    from oauth2_broker_mw import ConfigurationError

    with pytest.raises(ConfigurationError):
        next(
            start_authorization_flow(
                config(),
                tenant=TenantId("acme"),
                principal=PrincipalId("alice"),
                scopes=SCOPES,
                redirect_uri=redirect_uri,
            )
        )


def test_loopback_http_redirect_uri_is_allowed_for_native_apps() -> None:
    flow = start_authorization_flow(
        config(),
        tenant=TenantId("acme"),
        principal=PrincipalId("alice"),
        scopes=SCOPES,
        redirect_uri="http://127.0.0.1:53127/cb",
    )
    assert isinstance(next(flow), Now)
