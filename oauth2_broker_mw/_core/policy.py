"""Cache-window decisions: when a stored token is still good enough to hand out.

Owns: the pre-emptive refresh deadline (margin + per-key jitter) and the "fresh" test.
Must not import: httpx/httpx2, asyncio, threading, store drivers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from .model import StoreKey, TokenRecord

__all__ = ["RefreshPolicy"]


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
