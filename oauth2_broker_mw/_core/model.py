"""Value objects of the broker: identifiers, secrets, scope sets, store keys, records, leases.

Owns: validation of identifiers and scopes, the unambiguous store key, the JSON-able
serialisation of records and pending authorizations that every store uses.
Must not import: httpx/httpx2, asyncio, threading, any store driver (sans-IO core).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Final
from typing import Self
from typing import TypeAlias

from . import jsonsafe
from .errors import CorruptRecord
from .errors import InvalidIdentifier

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DEFAULT_TENANT",
    "PRESENCE_ONLY",
    "REVOCATION_PRINCIPAL",
    "REVOCATION_TENANT",
    "SERVICE_PRINCIPAL",
    "JSONValue",
    "Lease",
    "PendingAuthorization",
    "PrincipalId",
    "ProviderId",
    "ScopeSet",
    "Secret",
    "StoreKey",
    "TenantId",
    "TokenRecord",
    "TokenStatus",
    "redacted_repr",
    "revealed",
]

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"

_REDACTED: Final = "**********"
_MAX_ID_LEN: Final = 128
RECORD_FORMAT: Final = 1


class Secret:
    """A string whose ``repr`` and ``str`` never show it. Read it with ``get_secret_value()``."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        object.__setattr__(self, "_value", value)

    def get_secret_value(self) -> str:
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return f"Secret('{_REDACTED}')"

    def __str__(self) -> str:
        return _REDACTED

    def __format__(self, format_spec: str) -> str:
        return _REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(_utf8(self._value), _utf8(other._value))

    def __hash__(self) -> int:
        return hash(hashlib.sha256(_utf8(self._value)).digest())

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


#: ``field(metadata=PRESENCE_ONLY)``: :func:`redacted_repr` shows only whether the field is
#: set (``<set>`` or ``None``), for a credential that may be a plain string or a key.
PRESENCE_ONLY: Final = MappingProxyType({"redacted_repr": "presence"})


def redacted_repr(self: DataclassInstance) -> str:
    """A dataclass's repr that shows no secret, for ``__repr__ = redacted_repr``.

    The fields with ``repr=True``, in order: a :class:`Secret` shows itself redacted, a
    :class:`ScopeSet` its scopes, a mapping its sorted keys only (``metadata_keys=[...]``), a
    field marked :data:`PRESENCE_ONLY` ``<set>`` or ``None``; any other value its own repr.
    """
    parts = []
    for f in fields(self):
        if not f.repr:
            continue
        value = getattr(self, f.name)
        if f.metadata.get("redacted_repr") == "presence":
            parts.append(f"{f.name}={'<set>' if value is not None else None}")
        elif isinstance(value, ScopeSet):
            parts.append(f"{f.name}={value.scopes!r}")
        elif isinstance(value, Mapping):
            parts.append(f"{f.name}_keys={sorted(value)!r}")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(self).__name__}({', '.join(parts)})"


def _validate_identifier(kind: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{kind} id must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{kind} id must not be empty")
    if len(value) > _MAX_ID_LEN:
        raise InvalidIdentifier(f"{kind} id is longer than {_MAX_ID_LEN} characters")
    for ch in value:
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or not ch.isprintable():
            raise InvalidIdentifier(
                f"{kind} id must not contain whitespace or control characters: {value[:40]!r}"
            )
    return value


class _Identifier(str):
    """An identifier checked by :func:`_validate_identifier` once: constructing one from an
    instance of the same class returns it as is."""

    __slots__ = ()
    _kind: ClassVar[str]

    def __new__(cls, value: str) -> Self:
        if type(value) is cls:
            return value
        return super().__new__(cls, _validate_identifier(cls._kind, value))


class TenantId(_Identifier):
    """A validated tenant identifier (non-empty, ≤ 128 characters, no whitespace/control)."""

    __slots__ = ()
    _kind = "tenant"


class PrincipalId(_Identifier):
    """A validated principal identifier (a user, a service account, a browser session)."""

    __slots__ = ()
    _kind = "principal"


#: The tenant of a single-service app that has no tenants (``service_lease``, ``BrokerAuth``).
DEFAULT_TENANT: Final = TenantId("default")
#: The principal under which the application's own client-credentials token is stored. A user
#: principal can never have this name (a login refuses it; an ID token ``sub`` equal to it is
#: hashed), so the app's token can never be read as a user's.
SERVICE_PRINCIPAL: Final = PrincipalId("@app")
#: The reserved tenant of the revocation queue: a revocation the provider could not take yet
#: (RFC 7009 §2.2.1: a 503 means the token may still be valid) is kept as a revoked record
#: under this tenant and :data:`REVOCATION_PRINCIPAL` until it is delivered or dropped. No
#: broker operation accepts this tenant, so a queued token can never be read as a grant.
REVOCATION_TENANT: Final = TenantId("@revocations")
REVOCATION_PRINCIPAL: Final = PrincipalId("@revoke")


class ProviderId(_Identifier):
    """A validated provider identifier."""

    __slots__ = ()
    _kind = "provider"


def _valid_scope_token(scope: str) -> bool:
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    return bool(scope) and all(
        ch == "\x21" or "\x23" <= ch <= "\x5b" or "\x5d" <= ch <= "\x7e" for ch in scope
    )


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """A deduplicated, sorted set of scope tokens with a stable SHA-256 fingerprint."""

    scopes: tuple[str, ...] = ()
    fingerprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cleaned = tuple(sorted(set(self.scopes)))
        for scope in cleaned:
            if not isinstance(scope, str) or not _valid_scope_token(scope):
                raise InvalidIdentifier(f"invalid scope token {str(scope)[:40]!r}")
        object.__setattr__(self, "scopes", cleaned)
        digest = hashlib.sha256(" ".join(cleaned).encode()).hexdigest()
        object.__setattr__(self, "fingerprint", digest)

    @classmethod
    def of(cls, scopes: ScopeSet | str | Iterable[str] | None, delimiter: str = " ") -> ScopeSet:
        """Build from a set, a delimited string (``delimiter``), an iterable, or ``None``."""
        if isinstance(scopes, ScopeSet):
            return scopes
        if scopes is None:
            return cls(())
        if isinstance(scopes, str):
            parts: Iterable[str] = scopes.split(delimiter) if delimiter != " " else scopes.split()
            return cls(tuple(p.strip() for p in parts if p.strip()))
        return cls(tuple(scopes))

    def join(self, delimiter: str = " ") -> str:
        return delimiter.join(self.scopes)

    def missing(self, required: Iterable[str]) -> frozenset[str]:
        return frozenset(required) - frozenset(self.scopes)

    def __iter__(self) -> Any:
        return iter(self.scopes)

    def __len__(self) -> int:
        return len(self.scopes)

    def __contains__(self, scope: object) -> bool:
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class StoreKey:
    """(tenant, principal, provider, scope fingerprint), with an unambiguous string form ``id``."""

    tenant: TenantId
    principal: PrincipalId
    provider: ProviderId
    scope_fingerprint: str
    id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant", TenantId(self.tenant))
        object.__setattr__(self, "principal", PrincipalId(self.principal))
        object.__setattr__(self, "provider", ProviderId(self.provider))
        fp = self.scope_fingerprint
        if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise InvalidIdentifier("scope fingerprint must be a SHA-256 hex digest")
        # Length-prefixed parts: tenant "a:b" + principal "c" never equals "a" + "b:c".
        object.__setattr__(
            self,
            "id",
            f"{len(self.tenant)}:{self.tenant}|{len(self.principal)}:{self.principal}"
            f"|{len(self.provider)}:{self.provider}|{fp}",
        )

    @classmethod
    def build(
        cls,
        tenant: str,
        principal: str,
        provider: str,
        scopes: ScopeSet | str | Iterable[str] | None,
    ) -> StoreKey:
        return cls(
            TenantId(tenant),
            PrincipalId(principal),
            ProviderId(provider),
            ScopeSet.of(scopes).fingerprint,
        )

    @property
    def lock_name(self) -> str:
        """The name of this key's refresh lease lock (no secrets, bounded length)."""
        return "refresh:" + hashlib.sha256(self.id.encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {
            "tenant": self.tenant,
            "principal": self.principal,
            "provider": self.provider,
            "scope_fingerprint": self.scope_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreKey:
        return cls(
            TenantId(data["tenant"]),
            PrincipalId(data["principal"]),
            ProviderId(data["provider"]),
            str(data["scope_fingerprint"]),
        )


class TokenStatus(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


def _utf8(value: str) -> bytes:
    """UTF-8 bytes of ``value``; a lone surrogate is encoded, never ``UnicodeEncodeError``."""
    return value.encode("utf-8", "surrogatepass")


def revealed(secret: Secret | None) -> str | None:
    """The value of an optional secret (``None`` stays ``None``)."""
    return None if secret is None else secret.get_secret_value()


def _secret_or_none(value: object) -> Secret | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("secret field must be a string")
    return Secret(value)


#: What decoding a stored row can raise besides CorruptRecord (which passes through as is).
_DECODE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def _undecodable(what: str, exc: Exception) -> CorruptRecord:
    return CorruptRecord(f"{what} cannot be decoded: {str(exc)[:120]}")


def _json_object(text: str | bytes, what: str) -> Mapping[str, Any]:
    """``text`` parsed by the strict bounded parser; a JSON object, or CorruptRecord."""
    try:
        data = jsonsafe.loads(text)
    except jsonsafe.JSONRejected as exc:
        raise CorruptRecord(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(f"{what} is not a JSON object")
    return data


class _Stored:
    """The JSON form every store keeps of a record: ``to_json`` / ``from_json`` around the
    subclass's ``to_dict`` / ``from_dict`` (whose defects are named after ``_stored_as``)."""

    __slots__ = ()
    _stored_as: ClassVar[str]

    def to_dict(self) -> dict[str, JSONValue]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        return cls.from_dict(_json_object(text, cls._stored_as))


@dataclass(frozen=True, slots=True, repr=False)
class TokenRecord(_Stored):
    """A stored grant. Secrets are :class:`Secret`; ``metadata`` keeps extra response fields.

    ``expires_at`` is ``None`` when the provider did not say (expiry unknown).
    ``version`` is the compare-and-swap fence; stores set it, starting at 1.
    """

    _stored_as: ClassVar[str] = "stored token record"
    key: StoreKey
    access_token: Secret
    token_type: str = "Bearer"
    refresh_token: Secret | None = None
    id_token: Secret | None = None
    issued_at: float = 0.0
    expires_at: float | None = None
    refresh_token_expires_at: float | None = None
    scopes: ScopeSet = field(default_factory=ScopeSet)
    requested_scopes: ScopeSet = field(default_factory=ScopeSet)
    grant: str = "authorization_code"
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)
    version: int = 0
    revoked_at: float | None = None

    __repr__ = redacted_repr

    def status(self, now: float) -> TokenStatus:
        if self.revoked_at is not None:
            return TokenStatus.REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return TokenStatus.EXPIRED
        return TokenStatus.ACTIVE

    def with_version(self, version: int) -> TokenRecord:
        return replace(self, version=version)

    # -- serialisation shared by every store ------------------------------------------------
    def secrets_dict(self) -> dict[str, str | None]:
        """The secret fields, plaintext, for a store (or an encryption wrapper) to persist."""
        return {
            "access_token": self.access_token.get_secret_value(),
            "refresh_token": revealed(self.refresh_token),
            "id_token": revealed(self.id_token),
        }

    def public_dict(self) -> dict[str, JSONValue]:
        """Everything but the secrets (safe to index, list and log)."""
        return {
            "format": RECORD_FORMAT,
            "key": dict(self.key.to_dict()),
            "token_type": self.token_type,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "refresh_token_expires_at": self.refresh_token_expires_at,
            "scopes": list(self.scopes.scopes),
            "requested_scopes": list(self.requested_scopes.scopes),
            "grant": self.grant,
            "metadata": dict(self.metadata),
            "version": self.version,
            "revoked_at": self.revoked_at,
        }

    def to_dict(self) -> dict[str, JSONValue]:
        data = self.public_dict()
        data["secrets"] = dict(self.secrets_dict())
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`. Any defect raises :class:`CorruptRecord`."""
        try:
            if data.get("format") != RECORD_FORMAT:
                raise ValueError("unknown record format")
            jsonsafe.check_tree(data)  # no deep nesting, NaN or unstorable strings
            secrets = data["secrets"]
            access = secrets["access_token"]
            if not isinstance(access, str) or not access:
                raise ValueError("access token missing")

            def opt_float(name: str) -> float | None:
                value = data.get(name)
                return None if value is None else float(value)

            metadata = data.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError("metadata is not an object")
            return cls(
                key=StoreKey.from_dict(data["key"]),
                access_token=Secret(access),
                token_type=str(data["token_type"]),
                refresh_token=_secret_or_none(secrets.get("refresh_token")),
                id_token=_secret_or_none(secrets.get("id_token")),
                issued_at=float(data["issued_at"]),
                expires_at=opt_float("expires_at"),
                refresh_token_expires_at=opt_float("refresh_token_expires_at"),
                scopes=ScopeSet(tuple(data.get("scopes") or ())),
                requested_scopes=ScopeSet(tuple(data.get("requested_scopes") or ())),
                grant=str(data.get("grant", "authorization_code")),
                metadata=metadata,
                version=int(data["version"]),
                revoked_at=opt_float("revoked_at"),
            )
        except _DECODE_ERRORS as exc:
            raise _undecodable(cls._stored_as, exc) from None


@dataclass(frozen=True, slots=True, repr=False)
class PendingAuthorization(_Stored):
    """A started login: what the callback needs to finish it. Keyed by ``state_key``.

    ``state_key`` is SHA-256(state): stores never hold the raw state as a key.
    """

    _stored_as: ClassVar[str] = "pending authorization"
    state: Secret
    tenant: TenantId
    principal: PrincipalId
    provider: ProviderId
    scopes: ScopeSet
    redirect_uri: str
    code_verifier: Secret | None
    nonce: Secret | None
    created_at: float
    expires_at: float
    issuer: str | None = None
    extra: Mapping[str, JSONValue] = field(default_factory=dict)

    @staticmethod
    def key_for(state: str) -> str:
        return hashlib.sha256(_utf8(state)).hexdigest()

    @property
    def state_key(self) -> str:
        return self.key_for(self.state.get_secret_value())

    __repr__ = redacted_repr

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "format": RECORD_FORMAT,
            "tenant": self.tenant,
            "principal": self.principal,
            "provider": self.provider,
            "scopes": list(self.scopes.scopes),
            "redirect_uri": self.redirect_uri,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "issuer": self.issuer,
            "extra": dict(self.extra),
            "secrets": {
                "state": self.state.get_secret_value(),
                "code_verifier": revealed(self.code_verifier),
                "nonce": revealed(self.nonce),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        try:
            if data.get("format") != RECORD_FORMAT:
                raise ValueError("unknown format")
            secrets = data["secrets"]
            extra = data.get("extra") or {}
            if not isinstance(extra, dict):
                raise ValueError("extra is not an object")
            return cls(
                state=Secret(secrets["state"]),
                tenant=TenantId(data["tenant"]),
                principal=PrincipalId(data["principal"]),
                provider=ProviderId(data["provider"]),
                scopes=ScopeSet(tuple(data.get("scopes") or ())),
                redirect_uri=str(data["redirect_uri"]),
                code_verifier=_secret_or_none(secrets.get("code_verifier")),
                nonce=_secret_or_none(secrets.get("nonce")),
                created_at=float(data["created_at"]),
                expires_at=float(data["expires_at"]),
                issuer=None if data.get("issuer") is None else str(data["issuer"]),
                extra=extra,
            )
        except _DECODE_ERRORS as exc:
            raise _undecodable(cls._stored_as, exc) from None


@dataclass(frozen=True, slots=True, repr=False)
class Lease:
    """What a caller gets: a usable access token and what it is good for."""

    access_token: Secret
    token_type: str
    expires_at: float | None
    scopes: ScopeSet
    metadata: Mapping[str, JSONValue]
    key: StoreKey
    version: int

    @classmethod
    def from_record(cls, record: TokenRecord) -> Lease:
        return cls(
            access_token=record.access_token,
            token_type=record.token_type,
            expires_at=record.expires_at,
            scopes=record.scopes,
            metadata=record.metadata,
            key=record.key,
            version=record.version,
        )

    @property
    def authorization_header(self) -> str:
        """``"<Type> <token>"`` for the ``Authorization`` header (contains the secret)."""
        return f"{self.token_type} {self.access_token.get_secret_value()}"

    __repr__ = redacted_repr
