"""The broker calls a middleware handler yields, and the two ways of running them.

Owns: the store calls a handler needs beyond the broker's own methods (mark or check a
revoked session id), where a handler's broker comes from (:class:`BrokerSource`), and
:func:`drive` / :func:`adrive`, which run a handler through the one generator driver
(:mod:`.._driver`) — the only difference between the two middlewares. A handler yields
:class:`.._driver.Call` effects (``yield from call(broker.revoke, broker.arevoke, ...)``),
typed, each with its sync and its async form.
"""

from __future__ import annotations

from collections.abc import Coroutine
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import Protocol
from typing import TypeAlias
from typing import TypeVar

from .._core.errors import ProviderNotEnabled
from .._driver import Call
from .._driver import Calls
from .._driver import arun
from .._driver import call
from .._driver import run_calls

if TYPE_CHECKING:
    from ..broker import Broker
    from ..stores.base import TokenStore
    from ._http import Response

__all__ = [
    "BrokerSource",
    "FixedBrokers",
    "Handler",
    "Step",
    "adrive",
    "drive",
    "session_revocation",
]

T = TypeVar("T")
#: A handler's step: a flow of :class:`Call` effects returning a ``T``.
Step: TypeAlias = Calls[T]
Handler: TypeAlias = Step["Response"]

#: The owner of the lock that marks a session id revoked (a lock name nobody else uses).
_REVOKED: Final = "obm-revoked"


def session_revocation(store: TokenStore, name: str, ttl: float, *, mark: bool) -> Step[bool]:
    """A session id revoked on every worker: a lock held in the shared store until it expires.

    ``mark=True`` revokes it (takes the lock); ``mark=False`` asks whether any worker did (the
    lock is held: renewing it succeeds).
    """
    if mark:
        return (yield from call(store.acquire_lock, store.aacquire_lock, name, _REVOKED, ttl))
    return (yield from call(store.renew_lock, store.arenew_lock, name, _REVOKED, ttl))


class BrokerSource(Protocol):
    """Where the broker of a (tenant, provider) comes from: a :class:`Registry`, or the fixed
    ``brokers=`` mapping. Raises ``UnknownTenant`` / ``ProviderNotEnabled``."""

    def broker(self, *, tenant: str, provider: str) -> Broker: ...

    async def abroker(self, *, tenant: str, provider: str) -> Broker: ...


class FixedBrokers:
    """``brokers=``: one Broker per provider name, the same for every tenant."""

    __slots__ = ("brokers",)

    def __init__(self, brokers: Mapping[str, Broker]) -> None:
        self.brokers = brokers

    def broker(self, *, tenant: str, provider: str) -> Broker:
        return _fixed_broker(self.brokers, tenant, provider)

    async def abroker(self, *, tenant: str, provider: str) -> Broker:
        return _fixed_broker(self.brokers, tenant, provider)


def _fixed_broker(brokers: Mapping[str, Broker], tenant: str, provider: str) -> Broker:
    found = brokers.get(provider)
    if found is None:
        raise ProviderNotEnabled(tenant, provider)
    return found


def drive(handler: Step[T]) -> T:
    """Run a handler with the broker's sync methods (through the one generator driver)."""
    return run_calls(handler)


def adrive(handler: Step[T]) -> Coroutine[Any, Any, T]:
    """Run a handler with the broker's async methods (await the result). A plain function
    returning the driver's coroutine: no frame of its own on the per-request path."""
    return arun(handler, Call.arun)
