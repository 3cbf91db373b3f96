"""Effects: what a sans-IO flow asks its driver to do, and what it gets back.

Owns: the frozen effect and result types exchanged between flows (generators) and the two
drivers. A flow ``yield``s an effect and receives its result (or has the driver's exception
thrown into it). Must not import: httpx/httpx2, asyncio, threading, store drivers.
"""

from __future__ import annotations

from collections.abc import Generator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from typing import Any
from typing import ClassVar
from typing import TypeAlias
from typing import TypeVar

from .events import Event
from .model import PendingAuthorization
from .model import PrincipalId
from .model import StoreKey
from .model import TenantId
from .model import TokenRecord

__all__ = [
    "AcquireLock",
    "BackoffUntil",
    "CompareAndSwap",
    "CountCalls",
    "Delete",
    "DeleteKeys",
    "DeletePending",
    "DropUnsaved",
    "Effect",
    "Emit",
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "KeepUnsaved",
    "ListKeys",
    "Load",
    "LockHold",
    "Now",
    "PeekUnsaved",
    "Put",
    "PutPending",
    "ReleaseLock",
    "RenewLock",
    "SetBackoff",
    "Sleep",
    "StoreOp",
    "TakePending",
    "TakeToken",
    "Unsaved",
    "store_call",
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


class StoreOp:
    """A call on the token store. One frozen, slotted subclass per operation.

    ``op`` names the store method (``store.<op>`` sync, ``store.a<op>`` async); the fields
    are its arguments, positional in order, except those named in ``keywords``. The drivers
    dispatch on the subclass with :func:`store_call`, never on a string a flow built.
    """

    __slots__ = ()
    op: ClassVar[str]
    keywords: ClassVar[tuple[str, ...]] = ()

    @property
    def args(self) -> tuple[Any, ...]:
        own = fields(self)  # type: ignore[arg-type]  # every subclass is a dataclass
        return tuple(getattr(self, f.name) for f in own if f.name not in self.keywords)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.keywords}


@dataclass(frozen=True, slots=True)
class Load(StoreOp):
    """Read the record at ``key``; result ``TokenRecord | None``."""

    op: ClassVar[str] = "get"
    key: StoreKey


@dataclass(frozen=True, slots=True)
class Put(StoreOp):
    """Write ``record`` unconditionally; result the stored ``TokenRecord``."""

    op: ClassVar[str] = "put"
    record: TokenRecord


@dataclass(frozen=True, slots=True)
class CompareAndSwap(StoreOp):
    """Write ``record`` if the stored version is ``expected_version`` (``None``: absent);
    result the stored ``TokenRecord``, or ``None`` when the fence moved."""

    op: ClassVar[str] = "compare_and_swap"
    keywords: ClassVar[tuple[str, ...]] = ("expected_version",)
    record: TokenRecord
    expected_version: int | None


@dataclass(frozen=True, slots=True)
class Delete(StoreOp):
    """Delete the record at ``key`` (only at ``expected_version``, when given); result
    ``bool``: whether something was removed."""

    op: ClassVar[str] = "delete"
    keywords: ClassVar[tuple[str, ...]] = ("expected_version",)
    key: StoreKey
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteKeys(StoreOp):
    """Delete the records at ``keys`` (in as few round trips as the store can); result
    ``int``, how many were removed."""

    op: ClassVar[str] = "delete_keys"
    keys: tuple[StoreKey, ...]


@dataclass(frozen=True, slots=True)
class DeletePending(StoreOp):
    """Delete every pending login of ``tenant``; result ``int``, how many were removed."""

    op: ClassVar[str] = "delete_pending"
    tenant: TenantId


@dataclass(frozen=True, slots=True)
class ListKeys(StoreOp):
    """The keys stored for ``tenant`` (and ``principal``); result ``list[StoreKey]``. No
    secret is read."""

    op: ClassVar[str] = "list_keys"
    tenant: TenantId
    principal: PrincipalId | None = None


@dataclass(frozen=True, slots=True)
class _Lock(StoreOp):
    name: str
    owner: str


@dataclass(frozen=True, slots=True)
class AcquireLock(_Lock):
    """Take the lease lock ``name`` for ``owner`` for ``ttl`` seconds; result ``bool``."""

    op: ClassVar[str] = "acquire_lock"
    ttl: float


@dataclass(frozen=True, slots=True)
class RenewLock(_Lock):
    """Extend a held lease lock; result ``bool`` (``False``: it was lost)."""

    op: ClassVar[str] = "renew_lock"
    ttl: float


@dataclass(frozen=True, slots=True)
class ReleaseLock(_Lock):
    """Release a lease lock if ``owner`` still holds it; result ``bool``."""

    op: ClassVar[str] = "release_lock"


@dataclass(frozen=True, slots=True)
class PutPending(StoreOp):
    """Keep a login in flight (state, PKCE verifier, nonce); result ``None``."""

    op: ClassVar[str] = "put_pending"
    pending: PendingAuthorization


@dataclass(frozen=True, slots=True)
class TakePending(StoreOp):
    """Take (read and delete, once) the login at ``state_key``; result
    ``PendingAuthorization | None``."""

    op: ClassVar[str] = "take_pending"
    state_key: str


@dataclass(frozen=True, slots=True)
class BackoffUntil(StoreOp):
    """Read the provider gate ``name``: the wall time before which no request may be sent
    (``0.0``: open); result ``float``."""

    op: ClassVar[str] = "backoff_until"
    name: str


@dataclass(frozen=True, slots=True)
class SetBackoff(StoreOp):
    """Close the gate ``name`` until ``until`` (the later of this and the stored time wins);
    result the stored ``float``. ``now`` bounds how long the store keeps the entry."""

    op: ClassVar[str] = "set_backoff"
    keywords: ClassVar[tuple[str, ...]] = ("now",)
    name: str
    until: float
    now: float


@dataclass(frozen=True, slots=True)
class TakeToken(StoreOp):
    """Take one call from the shared token bucket ``name`` (one call per ``interval`` seconds,
    ``burst`` at once), atomically; result ``(granted, wait)``.

    Granted when the call may go out within ``max_wait`` seconds: the bucket is debited and
    ``wait`` is how long to wait first (``0.0``: now). Otherwise nothing changes and ``wait``
    is how long until a call would be granted at once.
    """

    op: ClassVar[str] = "take_token"
    keywords: ClassVar[tuple[str, ...]] = ("now", "interval", "burst", "max_wait")
    name: str
    now: float
    interval: float
    burst: int
    max_wait: float = 0.0


@dataclass(frozen=True, slots=True)
class CountCalls(StoreOp):
    """Count one call under ``name`` in the store shared by every process, atomically;
    result ``int``: the calls counted under ``name`` in the ``window`` seconds before this
    one (a sliding estimate over two fixed windows of ``window`` seconds)."""

    op: ClassVar[str] = "count_calls"
    keywords: ClassVar[tuple[str, ...]] = ("now", "window")
    name: str
    now: float
    window: float


def store_call(effect: StoreOp) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The store method name, positional and keyword arguments for ``effect``.

    The one dispatch of store effects: the sync driver calls ``store.<name>``, the async one
    ``store.a<name>``. An effect class this does not know is a bug in a flow.
    """
    match effect:
        case (
            Load()
            | Put()
            | CompareAndSwap()
            | Delete()
            | DeleteKeys()
            | DeletePending()
            | ListKeys()
            | AcquireLock()
            | RenewLock()
            | ReleaseLock()
            | PutPending()
            | TakePending()
            | BackoffUntil()
            | SetBackoff()
            | TakeToken()
            | CountCalls()
        ):
            return effect.op, effect.args, effect.kwargs
    raise TypeError(f"unknown store effect {type(effect).__name__}")


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


@dataclass(frozen=True, slots=True, repr=False)
class KeepUnsaved:
    """The provider rotated the token but the store refused the write: keep ``record`` in
    this process (to write when the store answers again, at ``expected_version``) and hand
    it out instead of the spent one. Result ``None``."""

    record: TokenRecord
    expected_version: int | None
    lock: LockHold | None = None
    """The lease lock whose release the store refused too: released once the record is
    written, so the key's next refresh does not wait out its TTL."""

    def __repr__(self) -> str:
        return f"KeepUnsaved(key={self.record.key.id!r}, expected_version={self.expected_version})"


@dataclass(frozen=True, slots=True)
class PeekUnsaved:
    """The record this process holds unsaved for ``key``; result
    ``(record, expected_version, lock)`` or ``None``."""

    key: StoreKey


@dataclass(frozen=True, slots=True, repr=False)
class DropUnsaved:
    """``record`` reached the store (or a newer one did): stop holding it. Result ``None``.
    A newer unsaved record for the same key (kept meanwhile) is not dropped."""

    record: TokenRecord

    def __repr__(self) -> str:
        return f"DropUnsaved(key={self.record.key.id!r})"


Unsaved: TypeAlias = KeepUnsaved | PeekUnsaved | DropUnsaved
Effect: TypeAlias = HttpRequest | StoreOp | Sleep | Now | Emit | Unsaved
#: A flow that yields effects and returns an ``R``: ``Flow[TokenRecord]``.
Flow: TypeAlias = Generator[Effect, Any, R]
