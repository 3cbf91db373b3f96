"""Sealed cookies: authenticated encryption of small JSON payloads, plus cookie header syntax.

Owns: key derivation from the configured ``secret_key`` (HKDF-SHA256, one key per purpose),
AES-256-GCM sealing with a fresh 96-bit nonce per cookie and the cookie name as associated
data (a value cannot be moved to another cookie), an issued-at timestamp checked against a
maximum age, key rotation (several secrets: the first seals, all open), ``Cookie`` header
parsing and ``Set-Cookie`` header building with the attributes of SECURITY G1.

Must not import: the broker, any web framework, httpx. Never logs or shows a cookie value;
every failure to open a cookie is the same silent ``None`` (treated as absent: fail closed).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._core.errors import ConfigurationError
from .._core.model import JSONValue
from .._core.model import Secret

__all__ = ["CookieAttributes", "CookieSealer", "parse_cookie_header"]

_VERSION: Final = "v1"
_MIN_SECRET_LEN: Final = 32
_NONCE_LEN: Final = 12


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def _b64d(text: str) -> bytes:
    """The bytes of unpadded base64url ``text`` as :func:`_b64e` writes it, and only so:
    another spelling of the same bytes (other characters, padding, other trailing bits) is a
    ``ValueError``, so a sealed cookie opens under exactly one value."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(data) != text:
        raise ValueError("not the canonical spelling")
    return data


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"oauth2-broker-mw/middleware",
        info=purpose,
    ).derive(secret)


_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_MIN_ENTROPY_BITS = 96.0


def _entropy_bits(text: str) -> float:
    """Shannon entropy of ``text``'s characters times its length (an optimistic estimate)."""
    counts = collections.Counter(text)
    return -sum(n * math.log2(n / len(text)) for n in counts.values())


def _secret_bytes(value: object) -> bytes:
    raw = value.get_secret_value() if isinstance(value, Secret) else value
    if isinstance(raw, bytes | bytearray | memoryview):
        raise ConfigurationError(
            "secret_key must be a str or a Secret, not bytes: keep it as text in your "
            f"configuration (for example an environment variable); {_HINT}"
        )
    if not isinstance(raw, str):
        raise ConfigurationError(
            f"secret_key must be a str or a Secret, not {type(raw).__name__}; {_HINT}"
        )
    if len(raw) < _MIN_SECRET_LEN:
        raise ConfigurationError(
            f"secret_key must be at least {_MIN_SECRET_LEN} characters of random data; {_HINT}"
        )
    if len(set(raw)) < 8 or _entropy_bits(raw) < _MIN_ENTROPY_BITS:
        raise ConfigurationError(f"secret_key looks like a placeholder, not random data; {_HINT}")
    return raw.encode("utf-8")


class CookieSealer:
    """Seal and open JSON payloads; derive MAC tags for values that must not be stored raw."""

    __slots__ = ("_aeads", "_mac_key")

    def __init__(self, secret_key: str | Secret | Sequence[str | Secret]) -> None:
        given: object = secret_key
        secrets: list[object]
        if isinstance(given, str | Secret | bytes | bytearray | memoryview):
            secrets = [given]
        elif isinstance(given, Sequence):
            secrets = list(given)
        else:
            secrets = [given]  # refused below with the reason
        if not secrets:
            raise ConfigurationError("secret_key must not be empty")
        raw = [_secret_bytes(s) for s in secrets]
        self._aeads = [AESGCM(_derive(r, b"cookie-aead-v1")) for r in raw]
        self._mac_key = _derive(raw[0], b"state-mac-v1")

    def __repr__(self) -> str:
        return f"CookieSealer(keys={len(self._aeads)})"

    def tag(self, purpose: str, value: str, length: int = 32) -> str:
        """A keyed hash of ``value`` (hex, ``length`` characters) bound to ``purpose``."""
        mac = hmac.new(self._mac_key, purpose.encode() + b"\x00" + value.encode(), hashlib.sha256)
        return mac.hexdigest()[:length]

    def seal(self, name: str, payload: Mapping[str, JSONValue], now: float) -> str:
        body = dict(payload)
        body["iat"] = int(now)
        plaintext = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aeads[0].encrypt(nonce, plaintext, name.encode())
        return f"{_VERSION}.{_b64e(nonce + sealed)}"

    def open(
        self, name: str, value: str | None, *, now: float, max_age: float | None
    ) -> dict[str, JSONValue] | None:
        """The payload, or ``None`` if absent, forged, moved, undecodable, too old or future.

        ``max_age=None`` leaves the age check to the caller (it reads ``payload["iat"]``).
        """
        if not value or not value.startswith(_VERSION + "."):
            return None
        try:
            blob = _b64d(value[len(_VERSION) + 1 :])
        except (binascii.Error, ValueError):
            return None
        if len(blob) <= _NONCE_LEN:
            return None
        nonce, sealed = blob[:_NONCE_LEN], blob[_NONCE_LEN:]
        for aead in self._aeads:
            try:
                plaintext = aead.decrypt(nonce, sealed, name.encode())
            except InvalidTag:
                continue
            try:
                data = json.loads(plaintext)
            except ValueError:
                return None
            if not isinstance(data, dict):
                return None
            iat = data.get("iat")
            if not isinstance(iat, int) or iat > now + 60:
                return None
            if max_age is not None and now - iat > max_age:
                return None
            return data
        return None


@dataclass(frozen=True, slots=True)
class CookieAttributes:
    """The fixed attributes of every cookie the middleware sets (SECURITY G1)."""

    secure: bool

    @property
    def name_prefix(self) -> str:
        return "__Host-" if self.secure else ""

    def set_cookie(self, name: str, value: str, max_age: int) -> str:
        parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    def delete_cookie(self, name: str) -> str:
        parts = [
            f"{name}=",
            "Path=/",
            "Max-Age=0",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


def parse_cookie_header(header: str | None) -> dict[str, str]:
    """``Cookie: a=1; b=2`` → ``{"a": "1", "b": "2"}``; the first of duplicate names wins."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        if not sep:
            continue
        name = name.strip()
        if name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies
