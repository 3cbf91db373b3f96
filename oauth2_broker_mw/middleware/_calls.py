"""The broker calls a middleware handler yields, and the two ways of running them.

Owns: one frozen value per call a handler needs (start a login, exchange a code, revoke a
grant, mark or check a revoked session id, look up the broker of a tenant), each knowing its
sync and its async method, and :func:`drive` / :func:`adrive`, which run a handler through the
one generator driver (:mod:`.._driver`) — the only difference between the two middlewares.

Must not import: asyncio, httpx/httpx2, any web framework, the ``asgi``/``wsgi`` shells.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, TypeVar

from .. import _driver
from .._core.errors import ProviderNotEnabled
from .._core.model import Secret

if TYPE_CHECKING:
    from ..broker import Broker
    from ..stores.base import TokenStore
    from ._http import Response

__all__ = [
    "BrokerCall",
    "BrokerSource",
    "ExchangeCode",
    "FixedBrokers",
    "GetBroker",
    "Handler",
    "Revoke",
    "SessionRevocation",
    "StartAuthorization",
    "Step",
    "adrive",
    "drive",
]


@dataclass(frozen=True, slots=True)
class StartAuthorization:
    broker: Broker
    tenant: str
    principal: str | None
    scopes: tuple[str, ...]
    redirect_uri: str

    def run(self) -> object:
        return self.broker.start_authorization(
            tenant=self.tenant,
            principal=self.principal,
            scopes=self.scopes,
            redirect_uri=self.redirect_uri,
        )

    async def arun(self) -> object:
        return await self.broker.astart_authorization(
            tenant=self.tenant,
            principal=self.principal,
            scopes=self.scopes,
            redirect_uri=self.redirect_uri,
        )


@dataclass(frozen=True, slots=True, repr=False)
class ExchangeCode:
    broker: Broker
    state: Secret
    code: Secret
    iss: str | None
    callback_params: Mapping[str, str]

    def run(self) -> object:
        return self.broker.exchange_code(
            state=self.state.get_secret_value(),
            code=self.code.get_secret_value(),
            iss=self.iss,
            callback_params=self.callback_params,
        )

    async def arun(self) -> object:
        return await self.broker.aexchange_code(
            state=self.state.get_secret_value(),
            code=self.code.get_secret_value(),
            iss=self.iss,
            callback_params=self.callback_params,
        )

    def __repr__(self) -> str:
        return "ExchangeCode(state=**********, code=**********)"


@dataclass(frozen=True, slots=True)
class Revoke:
    broker: Broker
    tenant: str
    principal: str
    scopes: tuple[str, ...]

    def run(self) -> object:
        return self.broker.revoke(tenant=self.tenant, principal=self.principal, scopes=self.scopes)

    async def arun(self) -> object:
        return await self.broker.arevoke(
            tenant=self.tenant, principal=self.principal, scopes=self.scopes
        )


#: The owner of the lock that marks a session id revoked (a lock name nobody else uses).
_REVOKED: Final = "obm-revoked"


@dataclass(frozen=True, slots=True)
class SessionRevocation:
    """A session id revoked on every worker: a lock held in the shared store until it expires.

    ``mark=True`` revokes it (takes the lock); ``mark=False`` asks whether any worker did (the
    lock is held: renewing it succeeds).
    """

    store: TokenStore
    name: str
    ttl: float
    mark: bool

    def run(self) -> object:
        lock = self.store.acquire_lock if self.mark else self.store.renew_lock
        return lock(self.name, _REVOKED, self.ttl)

    async def arun(self) -> object:
        lock = self.store.aacquire_lock if self.mark else self.store.arenew_lock
        return await lock(self.name, _REVOKED, self.ttl)


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


@dataclass(frozen=True, slots=True)
class GetBroker:
    """The broker of (tenant, provider): a registry lookup may await the app's resolver."""

    source: BrokerSource
    tenant: str
    provider: str

    def run(self) -> object:
        return self.source.broker(tenant=self.tenant, provider=self.provider)

    async def arun(self) -> object:
        return await self.source.abroker(tenant=self.tenant, provider=self.provider)


BrokerCall: TypeAlias = StartAuthorization | ExchangeCode | Revoke | SessionRevocation | GetBroker
T = TypeVar("T")
Step: TypeAlias = Generator[BrokerCall, object, T]
Handler: TypeAlias = Step["Response"]


def drive(handler: Step[T]) -> T:
    """Run a handler with the broker's sync methods (through the one generator driver)."""
    return _driver.run(handler, lambda call: call.run())


async def _aexecute(call: BrokerCall) -> object:
    return await call.arun()


def adrive(handler: Step[T]) -> Coroutine[Any, Any, T]:
    """Run a handler with the broker's async methods (await the result). A plain function
    returning the driver's coroutine: no frame of its own on the per-request path."""
    return _driver.arun(handler, _aexecute)
