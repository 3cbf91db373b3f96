"""Fuzz: hostile token-endpoint answers through the real parsers (issue 10).

Every answer (JSON with wrong types, duplicate members, huge numbers, deep nesting, huge
strings, non-UTF-8, form bodies, HTML, odd ``expires_in`` and ``scope``; any status and
``Retry-After``) parses to a usable, storable token response or raises a ``BrokerError``;
never another exception, never longer than a second, never with a marker secret in the
error's texts.
"""

from __future__ import annotations

import math

import pytest
from _fuzzkit import FUZZ
from _fuzzkit import HEADERS
from _fuzzkit import STATUS
from _fuzzkit import body_bytes
from _fuzzkit import check
from _fuzzkit import leaked
from _fuzzkit import token_members
from hypothesis import given
from hypothesis import strategies as st

from oauth2_broker_mw._core import jsonsafe
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.oauth import MAX_TTL
from oauth2_broker_mw._core.oauth import TokenResponse
from oauth2_broker_mw._core.oauth import classify_error
from oauth2_broker_mw._core.oauth import parse_introspection_response
from oauth2_broker_mw._core.oauth import parse_par_response
from oauth2_broker_mw._core.oauth import parse_token_response
from oauth2_broker_mw._core.provider import ProviderDescriptor

NOW = 1_700_000_000.0
BASE = ProviderDescriptor(
    id="idp",
    token_endpoint="https://idp.example/token",
    authorization_endpoint="https://idp.example/authorize",
)
DESCRIPTORS = {
    "plain": BASE,
    "slack": BASE.replace(token_path=("authed_user",), errors_with_200=True),
    "lenient": BASE.replace(missing_token_type="Bearer", scope_delimiter=","),
    "dpop": BASE.replace(dpop=True),
    "nested_expiry": BASE.replace(expires_in_path=("data", "ttl"), expires_in_unit=60.0),
}
KEY = StoreKey.build("acme", "alice", "idp", ["openid"])


def _assert_usable(parsed: TokenResponse) -> None:
    """An accepted answer is a token the broker can send and every store can hold."""
    token = parsed.access_token.get_secret_value()
    assert token and all("\x21" <= ch <= "\x7e" for ch in token)
    assert parsed.token_type in ("Bearer", "DPoP")
    for when in (parsed.expires_at, parsed.refresh_token_expires_at):
        assert when is None or (math.isfinite(when) and NOW <= when <= NOW + MAX_TTL)
    record = TokenRecord(
        key=KEY,
        access_token=parsed.access_token,
        token_type=parsed.token_type,
        refresh_token=parsed.refresh_token,
        id_token=parsed.id_token,
        issued_at=NOW,
        expires_at=parsed.expires_at,
        refresh_token_expires_at=parsed.refresh_token_expires_at,
        scopes=parsed.scopes or ScopeSet(),
        metadata=parsed.metadata,
        version=1,
    )
    text = record.to_json()
    jsonsafe.loads(text)  # what PostgreSQL jsonb and every other store can hold
    assert TokenRecord.from_json(text).access_token == parsed.access_token
    assert not leaked(repr(record)) and not leaked(repr(parsed))


@FUZZ
@given(
    name=st.sampled_from(sorted(DESCRIPTORS)),
    status=STATUS,
    headers=HEADERS,
    body=body_bytes(token_members()),
)
def test_fuzz_token_response_is_usable_or_a_typed_error(
    name: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    response = HttpResponse(status, headers, body)
    parsed = check(lambda: parse_token_response(DESCRIPTORS[name], response, now=NOW))
    if parsed is not None:
        assert 200 <= status < 300
        _assert_usable(parsed)


@FUZZ
@given(status=STATUS, headers=HEADERS, body=body_bytes(token_members()))
def test_fuzz_error_responses_classify_to_a_typed_error(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    error = check(lambda: classify_error(HttpResponse(status, headers, body), now=NOW))
    assert error is not None
    check(lambda: _raise(error))
    assert error.retry_after is None or 0 <= error.retry_after <= 1e9


@FUZZ
@given(status=STATUS, headers=HEADERS, body=body_bytes(token_members()))
def test_fuzz_introspection_and_par_answers(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    response = HttpResponse(status, headers, body)
    check(lambda: parse_introspection_response(BASE, response, now=NOW))
    check(lambda: parse_par_response(response, now=NOW))


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "a", "token_type": "Bearer", "scope": "' + b"s " * 500_000 + b'"}',
        b'{"access_token": "' + b"a" * 1_000_000 + b'", "token_type": "Bearer"}',
        b'{"access_token": "a", "token_type": "Bearer", "x": [' + b"1," * 400_000 + b"1]}",
        b'{"access_token": "a", "token_type": "Bearer", "x": ' + b"[" * 500_000 + b"}",
    ],
    ids=["1MB-scope", "1MB-token", "400k-list", "500k-nesting"],
)
def test_a_body_at_the_size_cap_parses_or_fails_within_a_second(body: bytes) -> None:
    response = HttpResponse(200, {"content-type": "application/json"}, body)
    check(lambda: parse_token_response(BASE, response, now=NOW), bound=2.0)
