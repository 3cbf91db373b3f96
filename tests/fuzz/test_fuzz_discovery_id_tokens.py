"""Fuzz: hostile discovery documents, JWKS and ID tokens through the real parsers (issue 10).

Only ``BrokerError`` subclasses come out (``ConfigurationError`` for a document,
``AuthorizationFlowError`` for an ID token), within a second, with no marker secret in them;
an ID token that verifies has exactly the claims the checks demand.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from _fuzzkit import FUZZ
from _fuzzkit import MARKER_AT
from _fuzzkit import MARKER_ID
from _fuzzkit import check
from _fuzzkit import dumps
from _fuzzkit import hostile_value
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey

from oauth2_broker_mw._core.oauth import verify_id_token
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw._core.provider import parse_metadata

NOW = 1_700_000_000.0
ISSUER = "https://idp.example"
CLIENT = "client-1"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
JWKS = {"keys": [KEY.as_dict(private=False)]}

METADATA_FIELDS = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "revocation_endpoint",
    "jwks_uri",
    "grant_types_supported",
    "code_challenge_methods_supported",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "authorization_response_iss_parameter_supported",
    "require_pushed_authorization_requests",
    "pushed_authorization_request_endpoint",
    "dpop_signing_alg_values_supported",
    "scopes_supported",
)


@st.composite
def metadata_members(draw: st.DrawFn) -> list[tuple[str, Any]]:
    members: list[tuple[str, Any]] = [
        ("issuer", ISSUER),
        ("authorization_endpoint", ISSUER + "/authorize"),
        ("token_endpoint", ISSUER + "/token"),
        ("jwks_uri", ISSUER + "/jwks"),
    ]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(METADATA_FIELDS) | st.text(max_size=8))
        value = draw(
            hostile_value()
            | st.sampled_from(
                [
                    "http://idp.example/t",
                    "javascript:alert(1)",
                    "https://idp.example/{tenant}/t",
                    "https://idp.example\r\n/t",
                    ["plain"],
                    [],
                    ["client_secret_basic", "private_key_jwt"],
                    ["RS256", "HS256", "none"],
                ]
            )
        )
        if draw(st.booleans()):
            members = [(k, value if k == name else v) for k, v in members]
        members.append((name, value))
    return members


@FUZZ
@given(members=metadata_members(), dpop=st.booleans())
def test_fuzz_discovery_document_builds_a_descriptor_or_a_typed_error(
    members: list[tuple[str, Any]], dpop: bool
) -> None:
    text = dumps(members).encode("utf-8", "surrogatepass")
    check(lambda: parse_metadata(text), public=True)
    overrides = {"dpop": True} if dpop else {}
    desc = check(
        lambda: ProviderDescriptor.from_metadata("idp", text, expected_issuer=ISSUER, **overrides),
        public=True,
    )
    if desc is not None:
        assert desc.issuer == ISSUER and desc.token_endpoint.startswith("https://")
        assert desc.pkce.value != "plain"  # never a downgrade from S256 (SECURITY A3)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims() -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "user-1",
        "exp": NOW + 600,
        "iat": NOW,
        "nonce": "n-1",
    }


@st.composite
def id_tokens(draw: st.DrawFn) -> str:
    """Signed tokens with hostile claims, hostile headers, or segments that are not JOSE."""
    kind = draw(st.sampled_from(["signed", "signed", "header", "segments"]))
    claims = _claims()
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([*claims, "azp", "at_hash", "nbf", "x"]))
        claims[name] = draw(hostile_value() | st.sampled_from([CLIENT, [CLIENT, "evil"], ISSUER]))
    payload = dumps(list(claims.items())).encode("utf-8", "surrogatepass")
    if kind == "signed":
        try:
            return jwt.encode({"alg": "RS256", "kid": "k1"}, json.loads(payload), KEY)
        except Exception:  # claims joserfc will not encode: sign the raw payload below
            kind = "header"
    if kind == "header":
        header = draw(
            st.sampled_from(
                [
                    b'{"alg":"none"}',
                    b'{"alg":"RS256","kid":"k1","alg":"none"}',
                    b'{"alg":"HS256","kid":"k1"}',
                    b'{"alg":"RS256","jku":"https://evil/jwks","kid":"evil"}',
                    b'{"alg":"RS256","kid":' + b"[" * 5000 + b"]" * 5000 + b"}",
                    b'{"alg":"RS256","kid":"k1","x":' + b"9" * 5000 + b"}",
                    b"\xff\xfe",
                    b"[]",
                ]
            )
        )
        return f"{_b64(header)}.{_b64(payload)}.{_b64(MARKER_ID.encode())}"
    return draw(
        st.sampled_from(
            [
                "",
                MARKER_ID,
                "a.b.c",
                "a" * 100_000 + ".b.c",
                "\ud83d.\x00.é",
                "..",
                "a.b.c.d.e",
                _b64(b"{}") + "." + "x" * 70_000 + ".s",
            ]
        )
        | st.text(max_size=60)
    )


JWKS_VALUES = st.one_of(
    st.just(JWKS),
    st.just({"keys": [KEY.as_dict(private=False), KEY.as_dict(private=False)]}),
    st.just({"keys": [{"kty": "oct", "k": _b64(b"s" * 32), "kid": "k1"}]}),
    st.just({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}),
    st.just({"keys": "nope"}),
    st.builds(lambda v: {"keys": [v]}, hostile_value()),
    st.builds(lambda v: {"keys": v}, hostile_value()),
)


@FUZZ
@given(token=id_tokens(), jwks=JWKS_VALUES, access=st.sampled_from([None, MARKER_AT]))
def test_fuzz_id_token_verifies_or_is_a_typed_error(
    token: str, jwks: dict[str, Any], access: str | None
) -> None:
    claims = check(
        lambda: verify_id_token(
            token,
            jwks=jwks,
            issuer=ISSUER,
            client_id=CLIENT,
            nonce="n-1",
            now=NOW,
            access_token=access,
        )
    )
    if claims is not None:
        assert claims["iss"] == ISSUER and claims["nonce"] == "n-1"
        assert claims["aud"] in (CLIENT, [CLIENT])
        assert isinstance(claims["sub"], str) and claims["sub"]
