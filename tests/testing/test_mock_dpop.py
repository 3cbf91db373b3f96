"""The MockProvider's DPoP proof checker (RFC 9449 §4.3) on its own, with hand-built proofs.

It is the other side of the client's DPoP tests (tests/core/test_dpop.py), so what it takes from
the core (the algorithm names, the ``htu`` normalisation) is pinned here against the RFC, not
against the core.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from joserfc.jwk import OctKey

from oauth2_broker_mw.testing._mock_dpop import DPOP_PROOF_ALGS
from oauth2_broker_mw.testing._mock_dpop import DPoPProofError
from oauth2_broker_mw.testing._mock_dpop import verify_proof

URL = "https://rs.example/api/items"
NOW = 1_700_000_000.0


def _proof(key: Any, alg: str, **claims: Any) -> str:
    public = {k: v for k, v in key.as_dict(private=False).items() if k != "kid"}
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": public}
    body = {"jti": secrets.token_urlsafe(24), "htm": "GET", "htu": URL, "iat": int(NOW), **claims}
    return jwt.encode(header, body, key)


def test_the_algorithms_are_the_asymmetric_jws_ones() -> None:
    # RFC 9449 §4.2: an asymmetric algorithm (RFC 7518 §3.1), never "none" nor a MAC.
    assert set(DPOP_PROOF_ALGS) == {
        *(f"{family}{bits}" for family in ("ES", "RS", "PS") for bits in (256, 384, 512)),
        "EdDSA",
    }
    assert DPOP_PROOF_ALGS[0] == "ES256"  # listed first in the discovery document


def test_a_mac_signed_proof_is_refused() -> None:
    key = OctKey.generate_key(256)
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "EC", "crv": "P-256"}}
    proof = jwt.encode(header, {"jti": "x" * 16, "htm": "GET", "htu": URL, "iat": NOW}, key)
    with pytest.raises(DPoPProofError, match="asymmetric"):
        verify_proof(proof, htm="GET", htu=URL, now=NOW, seen_jtis={})


def test_htu_is_compared_without_query_and_fragment() -> None:
    key = ECKey.generate_key("P-256")
    claims = verify_proof(
        _proof(key, "ES256"), htm="get", htu=f"{URL}?page=2#top", now=NOW, seen_jtis={}
    )
    assert claims.jkt == key.thumbprint()
    for wrong in (f"{URL}?page=2", "https://rs.example/api", "https://other.example/api/items"):
        with pytest.raises(DPoPProofError, match="htu does not match"):
            verify_proof(_proof(key, "ES256", htu=wrong), htm="GET", htu=URL, now=NOW, seen_jtis={})
