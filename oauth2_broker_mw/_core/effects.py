"""Effects: what a sans-IO flow asks its driver to do, and what it gets back.

Owns: the frozen effect and result types exchanged between flows (generators) and the two
drivers. A flow ``yield``s an effect and receives its result (or has the driver's exception
thrown into it). Must not import: httpx/httpx2, asyncio, threading, store drivers.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from .events import Event
from .model import PendingAuthorization, StoreKey, TokenRecord

__all__ = [
    "Effect",
    "Emit",
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "LockHold",
    "Sleep",
    "StoreOp",
]


@dataclass(frozen=True, slots=True)
class LockHold:
    """A held lease lock the driver must keep renewing while an HTTP effect runs."""

    name: str
    owner: str
    ttl: float


@dataclass(frozen=True, slots=True, repr=False)
class HttpRequest:
    """Send one HTTP request to the provider. Never follows redirects.

    ``body`` may contain secrets (client secret, code, refresh token): it is never shown.
    ``hold`` names a lease lock that must be renewed while the request is in flight.
    """

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    hold: LockHold | None = None
    purpose: str = "token"  # token | revocation | introspection | userinfo | jwks | discovery

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.url.split('?', 1)[0]!r}, purpose={self.purpose!r})"

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass(frozen=True, slots=True, repr=False)
class HttpResponse:
    """The provider's answer. ``headers`` keys are lower-case."""

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        return f"HttpResponse({self.status_code}, {len(self.body)} bytes)"

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class StoreOp:
    """Call ``store.<op>(*args, **kwargs)`` (sync) or ``store.a<op>(...)`` (async).

    ``op`` is one of: get, put, compare_and_swap, delete, list_keys, acquire_lock,
    renew_lock, release_lock, put_pending, take_pending.
    """

    op: str
    args: tuple[StoreKey | TokenRecord | PendingAuthorization | str | float | None, ...] = ()
    kwargs: tuple[tuple[str, int | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (a thread sleeps, a task awaits). The result is the new wall time."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Now:
    """Ask for the current time: wall-clock seconds since the epoch, or, with
    ``monotonic=True``, a monotonic reading for deadlines (never steps backwards)."""

    monotonic: bool = False


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish a lifecycle event to the subscribers. Never blocks, never fails; result ``None``."""

    event: Event


Effect: TypeAlias = HttpRequest | StoreOp | Sleep | Now | Emit
#: A flow that yields effects and returns an ``R``: ``Flow[TokenRecord]``.
Flow: TypeAlias = Generator[Effect, Any, R]
