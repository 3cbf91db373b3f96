"""The lifecycle event types: frozen, slotted, and free of secrets.

Owns: the event classes flows emit (through the ``Emit`` effect) and subscribers receive.
Every event carries identifiers and metadata only: tenant, principal, provider, scopes
fingerprint, time, record version. Never a token, a code, a state or a client secret.
Must not import: anything outside ``_core``.
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from typing import Any
from typing import ClassVar
from typing import Self

from .model import StoreKey

__all__ = [
    "ConnectionRevoked",
    "Event",
    "LockContended",
    "RateLimited",
    "ReauthorizationRequired",
    "RefreshFailed",
    "RevocationDropped",
    "RevocationQueued",
    "RotationFlushed",
    "RotationUnsaved",
    "TokenIssued",
    "TokenRefreshed",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What every lifecycle event carries; never a secret."""

    kind: ClassVar[str] = "event"
    tenant: str
    principal: str
    provider: str
    scopes: str
    """The scopes fingerprint of the store key (not the scopes themselves)."""
    at: float
    """Wall-clock time of the occurrence (seconds since the epoch)."""
    version: int | None = None
    """The record version after the occurrence (``None`` when there is no record)."""

    @classmethod
    def for_key(cls, key: StoreKey, at: float, version: int | None, **fields: Any) -> Self:
        """The event of this type about ``key``."""
        return cls(
            tenant=str(key.tenant),
            principal=str(key.principal),
            provider=str(key.provider),
            scopes=key.scope_fingerprint,
            at=at,
            version=version,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``type`` field (what the webhook sink sends)."""
        return {"type": self.kind, **asdict(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenIssued(Event):
    """A new grant was stored (authorization code exchanged, client credentials issued)."""

    kind: ClassVar[str] = "token_issued"
    grant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRefreshed(Event):
    """A refresh token was redeemed; ``rotated`` when the provider returned a new one."""

    kind: ClassVar[str] = "token_refreshed"
    rotated: bool
    age: float | None = None
    """Seconds from the refreshed access token's issue to its refresh (``None``: unknown)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshFailed(Event):
    """A refresh attempt failed; ``permanent`` failures need a new login."""

    kind: ClassVar[str] = "refresh_failed"
    permanent: bool
    error: str
    """The broker error class name (``TransientProviderError``, ``InvalidGrant``, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationUnsaved(Event):
    """The provider rotated the token but the store refused the write after the retries.

    The new record is held in this process and handed out (never the spent refresh token);
    it is written when the store answers again (:class:`RotationFlushed`). Until then, other
    processes still read the spent token; alert on this event. ``version`` is the stored
    version the rotation replaces.
    """

    kind: ClassVar[str] = "rotation_unsaved"
    error: str
    """The broker error class name of the last refused write (``StoreUnavailable``, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationFlushed(Event):
    """A rotation held in this process (:class:`RotationUnsaved`) reached the store."""

    kind: ClassVar[str] = "rotation_flushed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReauthorizationRequired(Event):
    """The provider rejected the stored grant: the user must log in again."""

    kind: ClassVar[str] = "reauthorization_required"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRevoked(Event):
    """The connection was revoked (at the provider when it can) and forgotten locally."""

    kind: ClassVar[str] = "connection_revoked"


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationQueued(Event):
    """A revocation the provider could not take (503, 429, a network error) was queued in the
    store, to be retried with back-off. The connection is already forgotten locally; once the
    provider takes the revocation, :class:`ConnectionRevoked` follows (or, after the last
    attempt, :class:`RevocationDropped`). ``version`` is the forgotten record's version."""

    kind: ClassVar[str] = "revocation_queued"
    attempts: int
    """Attempts made so far (1 after the failed revocation at logout)."""
    retry_at: float
    """The wall time of the next attempt (never before the provider's ``Retry-After``)."""
    error: str
    """The broker error class name of the failed attempt (``TransientProviderError``, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationDropped(Event):
    """A queued revocation was given up (``RevocationRetry.max_attempts`` or ``max_age``): the
    token stays valid at the provider until it expires. Alert on this event."""

    kind: ClassVar[str] = "revocation_dropped"
    attempts: int
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimited(Event):
    """A token-endpoint call was not sent: the provider's shared back-off (or circuit breaker)
    was closed, or the rate-limit policy refused it."""

    kind: ClassVar[str] = "rate_limited"
    grant: str
    retry_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LockContended(Event):
    """This process found another holder of the key's refresh lock and waited for it."""

    kind: ClassVar[str] = "lock_contended"
