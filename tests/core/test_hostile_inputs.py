"""Hostile inputs to every parser raise only typed errors (issue 10, "typed errors only")."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from oauth2_broker_mw._core import jsonsafe
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.errors import AuthorizationFlowError
from oauth2_broker_mw._core.errors import BrokerError
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.errors import CorruptRecord
from oauth2_broker_mw._core.errors import MalformedResponse
from oauth2_broker_mw._core.errors import TransientProviderError
from oauth2_broker_mw._core.model import PendingAuthorization
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.oauth import classify_error
from oauth2_broker_mw._core.oauth import parse_retry_after
from oauth2_broker_mw._core.oauth import parse_token_response
from oauth2_broker_mw._core.oauth import verify_id_token
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw._core.provider import parse_metadata

DESC = ProviderDescriptor(
    id="idp",
    token_endpoint="https://idp.example/token",
    authorization_endpoint="https://idp.example/authorize",
)
DEEP = "[" * 100_000 + "]" * 100_000


def body(text: str, status: int = 200, **headers: str) -> HttpResponse:
    hdrs = {"content-type": "application/json", **headers}
    return HttpResponse(status, hdrs, text.encode("utf-8", "surrogatepass"))


def test_retry_after_of_thousands_of_digits_is_capped_not_a_value_error() -> None:
    huge = body('{"error": "slow_down"}', 429, **{"retry-after": "9" * 5000})
    assert parse_retry_after(huge) == 1e9
    err = classify_error(huge)
    assert isinstance(err, TransientProviderError) and err.retry_after == 1e9
    with pytest.raises(TransientProviderError):
        parse_token_response(DESC, huge, now=0.0)
    junk = body("{}", 503, **{"retry-after": "x" * 100_000, "date": "y" * 100_000})
    assert parse_retry_after(junk) is None


@pytest.mark.parametrize(
    ("text", "defect"),
    [
        ('{"access_token": "a", "access_token": "b"}', "duplicate member"),
        ('{"access_token": "a", "expires_in": NaN}', "NaN"),
        ('{"access_token": "a", "expires_in": Infinity}', "Infinity"),
        ('{"access_token": "a", "expires_in": 1e999}', "out of range"),
        ('{"access_token": "a", "expires_in": ' + "9" * 5000 + "}", "integer longer"),
        ('{"access_token": "a", "x": "\\u0000"}', "NUL"),
        ('{"access_token": "a", "x": "\\ud83d"}', "lone surrogate"),
        ('{"access_token": "a", "\\ud83d": 1}', "lone surrogate"),
        ('{"access_token": "a", "x": ' + "[" * 40 + "]" * 40 + "}", "nested deeper"),
        ('{"access_token": "a", "x": ' + DEEP + "}", "nested deeper"),
    ],
)
def test_token_response_json_the_store_cannot_hold_is_malformed(text: str, defect: str) -> None:
    with pytest.raises(MalformedResponse) as info:
        parse_token_response(DESC, body(text), now=0.0)
    assert defect in str(info.value)


def test_form_encoded_nul_is_malformed() -> None:
    response = HttpResponse(200, {"content-type": "text/plain"}, b"access_token=a&x=%00")
    with pytest.raises(MalformedResponse):
        parse_token_response(DESC, response, now=0.0)


def test_error_body_with_hostile_json_is_still_classified_by_status() -> None:
    err = classify_error(body(DEEP, 503))
    assert isinstance(err, TransientProviderError) and err.error == "non_oauth_response"


@pytest.mark.parametrize(
    "text",
    [DEEP, '{"issuer": "a", "issuer": "b"}', '{"x": NaN}', '{"x": ' + "1" * 5000 + "}"],
)
def test_metadata_and_descriptor_json_refused_with_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_metadata(text)
    with pytest.raises(ConfigurationError):
        ProviderDescriptor.from_json(text)


def test_deep_toml_is_a_configuration_error() -> None:
    deep = 'id = "x"\ntoken_endpoint = "https://idp.example/t"\nx = ' + "[" * 5000 + "]" * 5000
    with pytest.raises(ConfigurationError):
        ProviderDescriptor.from_toml(deep)
    shallow_deep = 'id = "x"\ntoken_endpoint = "https://idp.example/t"\nx = ' + "[" * 40
    shallow_deep += "]" * 40
    with pytest.raises(ConfigurationError):
        ProviderDescriptor.from_toml(shallow_deep)


def _record_dict(**changes: Any) -> dict[str, Any]:
    from oauth2_broker_mw._core.model import StoreKey

    data: dict[str, Any] = {
        "format": 1,
        "key": StoreKey.build(tenant="t", principal="u", provider="idp", scopes=None).to_dict(),
        "token_type": "Bearer",
        "issued_at": 1.0,
        "expires_at": 2.0,
        "refresh_token_expires_at": None,
        "scopes": [],
        "requested_scopes": [],
        "grant": "authorization_code",
        "metadata": {},
        "version": 1,
        "revoked_at": None,
        "secrets": {"access_token": "at", "refresh_token": None, "id_token": None},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes",
    [
        {"issued_at": 10**400},
        {"version": float("inf")},
        {"expires_at": 10**400},
        {"metadata": json.loads("[" * 500 + "]" * 500)},
        {"metadata": {"x": "\x00"}},
    ],
)
def test_stored_row_with_overflow_or_depth_is_corrupt_record(changes: dict[str, Any]) -> None:
    data = _record_dict(**changes)
    with pytest.raises(CorruptRecord):
        TokenRecord.from_dict(data)


def test_stored_row_text_with_hostile_json_is_corrupt_record() -> None:
    good = json.dumps(_record_dict())
    TokenRecord.from_json(good)  # the baseline parses
    for text in (
        good.replace('"version": 1', '"version": Infinity'),
        good.replace('"version": 1', '"version": ' + "9" * 400),
        good.replace('"metadata": {}', '"metadata": ' + DEEP),
    ):
        with pytest.raises(CorruptRecord):
            TokenRecord.from_json(text)
    with pytest.raises(CorruptRecord):
        PendingAuthorization.from_json(DEEP)


def test_lone_surrogates_in_secrets_and_state_never_raise_unicode_errors() -> None:
    assert Secret("\ud83d") != Secret("\ud83e")
    assert Secret("\ud83d") == Secret("\ud83d")
    assert hash(Secret("\ud83d")) == hash(Secret("\ud83d"))
    assert PendingAuthorization.key_for("\udc00state")


def test_jose_header_of_megabytes_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = base64.urlsafe_b64decode

    def counting(data: Any) -> bytes:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(base64, "urlsafe_b64decode", counting)
    header = "A" * (14 * 1024 * 1024)
    with pytest.raises(AuthorizationFlowError):
        verify_id_token(
            f"{header}.e30.sig", jwks={}, issuer="i", client_id="c", nonce=None, now=0.0
        )
    assert calls == []


def test_deep_jose_header_and_surrogate_nonce_are_typed() -> None:
    deep = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode().rstrip("=")
    with pytest.raises(AuthorizationFlowError):
        verify_id_token(f"{deep}.e30.sig", jwks={}, issuer="i", client_id="c", nonce=None, now=0)
    with pytest.raises(BrokerError):
        verify_id_token("\ud83d.a.b", jwks={}, issuer="i", client_id="c", nonce="\ud83d", now=0)


def test_jsonsafe_accepts_ordinary_documents() -> None:
    doc = '{"a": [1, 2.5, "é", {"b": null, "c": true}], "n": -12345678901234567890}'
    assert jsonsafe.loads(doc) == json.loads(doc)
