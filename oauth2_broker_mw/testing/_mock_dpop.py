"""DPoP proof verification for the mock provider (RFC 9449 §4.3), server side.

Owns: checking one proof JWT (signature with the embedded public key, ``typ``, ``alg``,
``htm``/``htu``, ``iat`` window, ``jti`` replay, ``ath``, ``nonce``) and the thumbprint the
token is bound to. Raises :class:`DPoPProofError` with a short reason (never the proof).
It checks the proof on its own (it is the other side of the client's DPoP tests) and takes
only two plain RFC 9449 definitions from the core, each pinned by the core's own tests: the
asymmetric algorithm names and the ``htu`` normalisation (no query, no fragment).
"""

from __future__ import annotations

import hmac
from typing import Any
from typing import Final

from joserfc import jws
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry

from .._core.dpop import DPOP_ALGS
from .._core.dpop import htu as plain_htu
from ._mock_records import b64url_sha256

__all__ = ["DPOP_PROOF_ALGS", "DPoPProofError", "ProofClaims", "verify_proof"]

DPOP_PROOF_ALGS: Final = tuple(sorted(DPOP_ALGS))
"""The algorithms a proof may use (the core's asymmetric set), sorted by name: the order of
``dpop_signing_alg_values_supported`` in discovery and of ``algs=`` in ``WWW-Authenticate``."""
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
IAT_WINDOW: Final = 60.0


class DPoPProofError(Exception):
    """The proof is missing, malformed or does not match the request."""


class ProofClaims:
    __slots__ = ("jkt", "nonce")

    def __init__(self, jkt: str, nonce: str | None) -> None:
        self.jkt = jkt
        self.nonce = nonce


def verify_proof(
    proof: str,
    *,
    htm: str,
    htu: str,
    now: float,
    seen_jtis: dict[str, float],
    access_token: str | None = None,
) -> ProofClaims:
    """Check ``proof`` for a request ``htm htu``; record its ``jti`` in ``seen_jtis``."""
    if not proof or proof.count(".") != 2:
        raise DPoPProofError("the DPoP header is not a JWT")
    try:
        obj = jws.extract_compact(proof.encode("ascii"))
        header: dict[str, Any] = dict(obj.headers())
    except (JoseError, ValueError, UnicodeError):
        raise DPoPProofError("the DPoP proof cannot be parsed") from None
    if header.get("typ") != "dpop+jwt":
        raise DPoPProofError("typ must be dpop+jwt")
    alg = header.get("alg")
    if alg not in DPOP_PROOF_ALGS:
        raise DPoPProofError("alg must be an asymmetric algorithm")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or _PRIVATE_MEMBERS & set(jwk):
        raise DPoPProofError("jwk must be a public key")
    try:
        key = JWKRegistry.import_key(jwk)
        claims = jwt.decode(proof, key, algorithms=[str(alg)]).claims
    except (JoseError, ValueError, TypeError):
        raise DPoPProofError("the DPoP proof signature is invalid") from None
    jti = claims.get("jti")
    if not isinstance(jti, str) or len(jti) < 16:
        raise DPoPProofError("jti is missing or too short")
    if claims.get("htm") != htm.upper():
        raise DPoPProofError("htm does not match the request method")
    if claims.get("htu") != plain_htu(htu):
        raise DPoPProofError("htu does not match the request URL")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or abs(now - iat) > IAT_WINDOW:
        raise DPoPProofError("iat is missing or outside the acceptance window")
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, b64url_sha256(access_token)):
            raise DPoPProofError("ath does not match the access token")
    for old, seen_at in list(seen_jtis.items()):
        if now - seen_at > 2 * IAT_WINDOW:
            del seen_jtis[old]
    if jti in seen_jtis:
        raise DPoPProofError("jti was already used")
    seen_jtis[jti] = now
    nonce = claims.get("nonce")
    return ProofClaims(key.thumbprint(), nonce if isinstance(nonce, str) else None)
