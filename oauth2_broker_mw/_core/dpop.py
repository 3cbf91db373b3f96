"""DPoP (RFC 9449): proof-of-possession JWTs for sender-constrained tokens (SECURITY F6, D3).

Owns: loading / generating the client's DPoP key (:class:`DPoPKey`), building a proof
(:func:`make_proof`), the key thumbprint (:func:`thumbprint`, RFC 7638), ``htu`` normalisation,
and the remembered server nonces (:class:`NonceCache`). Pure functions and small value
holders; no I/O. Must not import: httpx/httpx2, asyncio, threading, store drivers.

Key material never appears in a repr, a log line or an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from typing import Final

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jwk import OKPKey
from joserfc.jwk import RSAKey

from .errors import ConfigurationError

__all__ = [
    "DPOP_ALGS",
    "DPoPKey",
    "NonceCache",
    "access_token_hash",
    "htu",
    "make_proof",
    "thumbprint",
]

DPOP_ALGS: Final = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
"""Asymmetric JWS algorithms a DPoP proof may use (never ``none`` nor ``HS*``)."""

_CURVE_ALG: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_NONCE_CACHE_SIZE: Final = 256

AnyKey = ECKey | RSAKey | OKPKey


class DPoPKey:
    """A private key used to sign DPoP proofs, with its algorithm and public JWK.

    Build with :meth:`load` (a private JWK dict or a PEM string) or :meth:`generate`.
    """

    __slots__ = ("_alg", "_key", "_public", "_thumbprint")

    def __init__(self, key: AnyKey, alg: str) -> None:
        if alg not in DPOP_ALGS:
            raise ConfigurationError(f"dpop_signing_alg must be one of {sorted(DPOP_ALGS)}")
        if not key.is_private:
            raise ConfigurationError("dpop_key must be a private key")
        self._key = key
        self._alg = alg
        self._public: dict[str, object] = {
            k: v for k, v in key.as_dict(private=False).items() if k not in ("kid", "use", "alg")
        }
        self._thumbprint = key.thumbprint()

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        """A new ephemeral key for ``alg`` (EC P-256 for ES256)."""
        if alg.startswith("ES"):
            curve = {v: k for k, v in _CURVE_ALG.items()}[alg]
            return cls(ECKey.generate_key(curve), alg)
        if alg == "EdDSA":
            return cls(OKPKey.generate_key("Ed25519"), alg)
        if alg in DPOP_ALGS:
            return cls(RSAKey.generate_key(2048), alg)
        raise ConfigurationError(f"dpop_signing_alg must be one of {sorted(DPOP_ALGS)}")

    @classmethod
    def load(cls, raw: Mapping[str, object] | str | bytes, alg: str | None = None) -> DPoPKey:
        """Import a private JWK (mapping) or PEM; ``alg`` defaults from the key type."""
        key: AnyKey | None = None
        try:
            if isinstance(raw, Mapping):
                kty = raw.get("kty")
                data = dict(raw)
                if kty == "EC":
                    key = ECKey.import_key(data)  # type: ignore[arg-type]
                elif kty == "RSA":
                    key = RSAKey.import_key(data)  # type: ignore[arg-type]
                elif kty == "OKP":
                    key = OKPKey.import_key(data)  # type: ignore[arg-type]
            else:
                for kind in (ECKey, RSAKey, OKPKey):
                    try:
                        key = kind.import_key(raw)
                        break
                    except (JoseError, ValueError, TypeError):
                        continue
        except (JoseError, ValueError, TypeError, KeyError):
            key = None
        if key is None:
            # Never echo the input: it is key material.
            raise ConfigurationError("dpop_key is not a usable private EC, RSA or OKP key")
        if alg is None:
            if isinstance(key, ECKey):
                alg = _CURVE_ALG.get(str(key.as_dict(private=False).get("crv")), "ES256")
            elif isinstance(key, OKPKey):
                alg = "EdDSA"
            else:
                alg = "PS256"
        return cls(key, alg)

    @property
    def alg(self) -> str:
        return self._alg

    @property
    def public_jwk(self) -> dict[str, object]:
        """The public part only (no ``d``, ``p``, ``q``...)."""
        return dict(self._public)

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint (the ``jkt`` tokens are bound to)."""
        return self._thumbprint

    def sign(self, header: dict[str, object], claims: dict[str, object]) -> str:
        return jwt.encode(header, claims, self._key, algorithms=[self._alg])

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self._alg!r}, jkt={self._thumbprint!r})"


class NonceCache:
    """The latest ``DPoP-Nonce`` learned per server (the AS, or a resource origin).

    Plain dict operations: a race between threads loses at worst one nonce, which costs one
    ``use_dpop_nonce`` round trip. Bounded.
    """

    __slots__ = ("_nonces",)

    def __init__(self) -> None:
        self._nonces: dict[object, str] = {}

    def get(self, where: object) -> str | None:
        return self._nonces.get(where)

    def put(self, where: object, nonce: str | None) -> None:
        if not nonce or len(nonce) > 1024:
            return
        if len(self._nonces) >= _NONCE_CACHE_SIZE and where not in self._nonces:
            self._nonces = {}
        self._nonces[where] = nonce

    def __repr__(self) -> str:
        return f"NonceCache({len(self._nonces)} servers)"


def thumbprint(key: DPoPKey | AnyKey) -> str:
    """RFC 7638 JWK SHA-256 thumbprint, base64url without padding."""
    if isinstance(key, DPoPKey):
        return key.thumbprint
    return key.thumbprint()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url(SHA-256(ASCII access token)) (RFC 9449 §4.2)."""
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest())


def htu(url: str) -> str:
    """The ``htu`` of ``url``: scheme, authority and path; no query, no fragment (§4.2)."""
    return url.split("#", 1)[0].split("?", 1)[0]


def make_proof(
    key: DPoPKey,
    *,
    htm: str,
    htu: str,
    now: float,
    nonce: str | None = None,
    access_token: str | None = None,
) -> str:
    """A fresh DPoP proof JWT (RFC 9449 §4.2) with a random 128+ bit ``jti``."""
    header: dict[str, object] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.public_jwk}
    claims: dict[str, object] = {
        "jti": secrets.token_urlsafe(24),
        "htm": htm.upper(),
        "htu": _strip_url(htu),
        "iat": int(now),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return key.sign(header, claims)


_strip_url = htu
