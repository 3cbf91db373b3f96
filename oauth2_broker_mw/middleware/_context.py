"""What the app sees: the per-request :class:`BrokerContext`, and what a pass-through gets.

Owns: :class:`BrokerContext` (``scope["oauth2_broker"]`` / ``environ["oauth2_broker"]``: the
tenant, the principal, the providers this session connected, ``lease`` / ``alease`` / ``auth``
for them, the login and logout URLs, the CSRF token), the rule of which provider a context may
lease for (SECURITY J1), and :class:`Prepared` (a pass-through request's context and cookies).

``BrokerAuth`` is imported lazily, by ``auth()`` (``auth.py`` loads httpx2).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import cast
from urllib.parse import quote

from .._core.errors import AuthorizationRequired
from .._core.errors import ProviderNotEnabled
from .._core.errors import UnknownTenant
from .._core.model import Lease
from ._calls import Step
from ._calls import adrive
from ._calls import drive
from ._redirects import safe_return_to

if TYPE_CHECKING:
    from ..auth import BrokerAuth
    from ..auth import LeaseSource
    from ..broker import Broker
    from ._core import MiddlewareCore

__all__ = ["BrokerContext", "Prepared"]


@dataclass(slots=True, eq=False, repr=False, match_args=False)
class BrokerContext:
    """Per-request broker context: ``scope["oauth2_broker"]`` / ``environ["oauth2_broker"]``.

    ``tenant`` and ``principal`` are ``None`` when unknown (no tenant for this path, nobody
    logged in); ``auth``/``lease`` then raise :class:`AuthorizationRequired`, which the
    middleware turns into a login redirect (browsers) or a 401 problem document (APIs).
    ``auth``/``lease`` answer only for a provider in ``connections`` (one this session logged
    in to), or for any provider when the principal came from the app's ``principal_resolver``
    and the middleware was built with ``lease_for_resolved_principals=True`` (SECURITY J1).
    ``issuer`` is the issuer whose ID token named the principal (``None`` otherwise).
    """

    _core: MiddlewareCore
    tenant: str | None
    principal: str | None
    connections: tuple[str, ...]
    _sid: str | None
    issuer: str | None = None
    _resolved: bool = False
    _path: str = "/"
    #: the last AuthorizationRequired raised through lease()/alease() (WSGI uses it to turn
    #: a framework's 500 page back into a login redirect).
    authorization_required: AuthorizationRequired | None = field(default=None, init=False)
    #: the last UnknownTenant / ProviderNotEnabled raised through lease()/auth(): the
    #: middleware answers 404 for it (WSGI: in place of the framework's 500 page).
    not_found: UnknownTenant | ProviderNotEnabled | None = field(default=None, init=False)

    def __repr__(self) -> str:
        return (
            f"BrokerContext(tenant={self.tenant!r}, principal={self.principal!r}, "
            f"connections={self.connections!r})"
        )

    @property
    def providers(self) -> tuple[str, ...]:
        """Every configured provider name (with ``registry=``: the names given in ``scopes``)."""
        return self._core.provider_names

    @property
    def csrf_token(self) -> str | None:
        """Put this in logout forms (field ``csrf_token``) for clients that send no Origin."""
        return None if self._sid is None else self._core.sessions.csrf_for(self._sid)

    @property
    def logout_url(self) -> str:
        """The logout route (POST); it returns to the current path, which names the tenant."""
        target = safe_return_to(self._path, base_url=self._core.base_url)
        return (
            f"{self._core.base_path}{self._core.prefix}/logout?return_to={quote(target, safe='/')}"
        )

    def login_url(self, provider: str, return_to: str = "/") -> str:
        """The login route for ``provider``; ``return_to`` is validated (falls back to ``/``)."""
        return self._core.login_url(provider, return_to, self.tenant)

    def is_connected(self, provider: str) -> bool:
        return provider in self.connections

    def _who(self, provider: str) -> tuple[str, str]:
        """(tenant, principal) allowed to use ``provider`` here, or ``AuthorizationRequired``."""
        self._core.check_provider(provider)
        tenant, principal = self.tenant, self.principal
        if tenant is None or principal is None:
            reason = "nobody is logged in on this request"
        elif provider in self.connections or (
            self._resolved and self._core.lease_for_resolved_principals
        ):
            return tenant, principal
        else:
            # J1: a login at one issuer never reads a token obtained from another.
            reason = f"this session has not connected provider {provider!r}; log in with it"
        exc = AuthorizationRequired(
            tenant=tenant or "-",
            principal=principal or "-",
            provider=provider,
            scopes=self._core.configured_scopes(provider),
            reason=reason,
        )
        self.authorization_required = exc
        raise exc

    def _broker_step(self, tenant: str, provider: str) -> Step[Broker]:
        try:
            return (yield from self._core.broker_step(tenant, provider))
        except (UnknownTenant, ProviderNotEnabled) as exc:
            self.not_found = exc
            raise

    def auth(self, provider: str, scopes: Iterable[str] | None = None) -> BrokerAuth:
        """A ready :class:`~oauth2_broker_mw.BrokerAuth` for this tenant and principal."""
        from ..auth import BrokerAuth

        tenant, principal = self._who(provider)
        broker = drive(self._broker_step(tenant, provider))
        wanted = self._core.scopes_of(provider, broker, scopes)
        source = cast("LeaseSource", _Recorder(broker, self))
        return BrokerAuth(source, tenant=tenant, principal=principal, scopes=wanted)

    def lease(self, provider: str, scopes: Iterable[str] | None = None) -> Lease:
        tenant, principal = self._who(provider)
        broker = drive(self._broker_step(tenant, provider))
        wanted = self._core.scopes_of(provider, broker, scopes)
        try:
            return broker.lease(tenant=tenant, principal=principal, scopes=wanted)
        except AuthorizationRequired as exc:
            self.authorization_required = exc
            raise

    async def alease(self, provider: str, scopes: Iterable[str] | None = None) -> Lease:
        tenant, principal = self._who(provider)
        broker = await adrive(self._broker_step(tenant, provider))
        wanted = self._core.scopes_of(provider, broker, scopes)
        try:
            return await broker.alease(tenant=tenant, principal=principal, scopes=wanted)
        except AuthorizationRequired as exc:
            self.authorization_required = exc
            raise


class _Recorder:
    """Forwards to a Broker; notes ``AuthorizationRequired`` on the context on its way out.

    Handed to ``BrokerAuth`` so that a WSGI framework which renders the exception as a 500 page
    still gets a login redirect (the WSGI shell replaces that page).
    """

    __slots__ = ("_context", "_target")

    def __init__(self, target: object, context: BrokerContext) -> None:
        self._target = target
        self._context = context

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value
        context = self._context
        if inspect.iscoroutinefunction(value):

            async def arecorded(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await value(*args, **kwargs)
                except AuthorizationRequired as exc:
                    context.authorization_required = exc
                    raise

            return arecorded

        # unasync: generated from arecorded; edit that one, then run scripts/unasync.py
        def recorded(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except AuthorizationRequired as exc:
                context.authorization_required = exc
                raise

        return recorded


@dataclass(slots=True, repr=False)
class Prepared:
    """A pass-through request: its context and the headers to add to the app's response."""

    context: BrokerContext
    set_cookies: list[tuple[str, str]]

    def __repr__(self) -> str:
        return f"Prepared({self.context!r}, set_cookies={len(self.set_cookies)})"
