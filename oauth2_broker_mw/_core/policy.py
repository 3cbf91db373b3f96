"""Cache-window decisions: when a stored token is still good enough to hand out.

Owns: the pre-emptive refresh deadline (margin + per-key jitter) and the "fresh" test, and
the back-off of a queued revocation (:class:`RevocationRetry`).
Must not import: httpx/httpx2, asyncio, threading, store drivers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from .errors import ConfigurationError
from .model import StoreKey
from .model import TokenRecord

__all__ = ["RefreshPolicy", "RevocationRetry"]


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """Refresh ``margin`` seconds (plus a per-key jitter up to ``jitter``) before expiry.

    For short-lived tokens neither may eat more than half of the token's lifetime, so a
    30-second token is still used for at least 15 seconds. The jitter is derived from the
    store key, so every process computes the same deadline for one key while different keys
    issued at the same instant spread their refreshes out.
    """

    margin: float = 60.0
    jitter: float = 30.0

    def refresh_at(self, record: TokenRecord) -> float:
        """The wall time from which ``record`` should be replaced (``inf``: never by time)."""
        if record.expires_at is None:
            return math.inf
        lifetime = max(0.0, record.expires_at - record.issued_at)
        margin = min(self.margin, lifetime * 0.5)
        jitter = min(self.jitter, lifetime * 0.1) * _unit_fraction(record.key)
        return record.expires_at - margin - jitter

    def is_fresh(self, record: TokenRecord, now: float) -> bool:
        return record.revoked_at is None and now < self.refresh_at(record)

    def is_usable(self, record: TokenRecord, now: float) -> bool:
        """Not revoked and not past its expiry (it may be inside the refresh window)."""
        return record.revoked_at is None and (record.expires_at is None or now < record.expires_at)


def _unit_fraction(key: StoreKey) -> float:
    digest = hashlib.sha256(key.id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class RevocationRetry:
    """How a revocation the provider could not take (503, 429, a network error) is retried.

    The n-th failed attempt waits ``initial * factor ** (n - 1)`` seconds (at most
    ``max_delay``), and never less than the provider's ``Retry-After`` (also capped at
    ``max_delay``). After ``max_attempts`` attempts, or once the first attempt is ``max_age``
    seconds old, the revocation is dropped with an error log and a ``RevocationDropped`` event:
    the token then stays valid at the provider until it expires by itself.
    """

    initial: float = 30.0
    factor: float = 2.0
    max_delay: float = 3600.0
    max_attempts: int = 20
    max_age: float = 3 * 86_400.0

    def __post_init__(self) -> None:
        for name in ("initial", "max_delay", "max_age"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigurationError(f"RevocationRetry.{name} must be positive seconds")
        if not (isinstance(self.factor, int | float) and 1 <= self.factor < math.inf):
            raise ConfigurationError("RevocationRetry.factor must be >= 1")
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError("RevocationRetry.max_attempts must be a positive integer")

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        exponent = min(max(attempts - 1, 0), 64)  # bounded: no OverflowError
        wait = min(self.max_delay, self.initial * float(self.factor) ** exponent)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(float(retry_after), self.max_delay))
        return wait

    def gives_up(self, attempts: int, age: float) -> bool:
        """``True`` when a revocation tried ``attempts`` times, first ``age`` seconds ago, is
        dropped instead of tried again."""
        return attempts >= self.max_attempts or age >= self.max_age
