"""The session and the login-flow cookies, and this worker's caches of them.

Owns: :class:`Session` (what the sealed session cookie holds) and its parsing, the session
cookie of each tenant (SECURITY J2), the revocation of a session id on every worker through
the shared store (J10: a lock held until the session would expire), this worker's bounded
caches (opened cookies, revoked ids, recent "not revoked" answers; every change O(1) under
one lock, safe for the threads of a WSGI server), the CSRF token of a session, and the flow
cookies of logins in progress (one per login, keyed by a hash of ``state``, at most
``max_flows``).

Never logs or shows a cookie value, a session id or ``state``.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import cast

from .._core.errors import StorageError
from .._core.model import JSONValue
from ._calls import Step
from ._calls import session_revocation
from ._cookies import CookieAttributes
from ._cookies import CookieSealer
from ._errors import reason
from ._errors import store_down

if TYPE_CHECKING:
    from ..stores.base import TokenStore

__all__ = ["DENYLIST_MAX", "FlowCookies", "Session", "Sessions", "bounded_put", "parse_session"]

log = logging.getLogger("oauth2_broker_mw.middleware")

_SESSION_COOKIE: Final = "obm_session"
_FLOW_COOKIE: Final = "obm_flow_"
#: what follows the prefix in the name of a flow cookie this middleware sets (``name()``)
_FLOW_TAG: Final = re.compile(r"[0-9a-f]{16}")
DENYLIST_MAX: Final = 10_000
_OPENED_MAX: Final = 1024


def bounded_put(cache: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """``cache[key] = value``, evicting the oldest entries past ``limit`` (call under a lock)."""
    cache.pop(key, None)
    while len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value


@dataclass(frozen=True, slots=True, repr=False)
class Session:
    """What the sealed session cookie of one tenant holds (its repr shows nothing)."""

    sid: str
    tenant: str | None
    principal: str | None
    connections: tuple[str, ...]
    created_at: float
    seen_at: float
    #: the issuer whose ID token named the principal (J1: the identity is (issuer, sub)); None
    #: for a per-browser principal or one the app's principal_resolver gave
    issuer: str | None = None

    def payload(self) -> dict[str, JSONValue]:
        return {
            "sid": self.sid,
            "t": self.tenant,
            "p": self.principal,
            "i": self.issuer,
            "c": list(self.connections),
            "ca": self.created_at,
            "sa": self.seen_at,
        }

    def seen(self, now: float) -> Session:
        return Session(
            self.sid,
            self.tenant,
            self.principal,
            self.connections,
            self.created_at,
            now,
            self.issuer,
        )


def parse_session(data: Mapping[str, JSONValue]) -> Session | None:
    sid, tenant, principal = data.get("sid"), data.get("t"), data.get("p")
    conns, created, seen, issuer = data.get("c"), data.get("ca"), data.get("sa"), data.get("i")
    if not isinstance(sid, str) or not sid:
        return None
    if issuer is not None and not isinstance(issuer, str):
        return None
    if tenant is not None and not isinstance(tenant, str):
        return None
    if principal is not None and not isinstance(principal, str):
        return None
    if not isinstance(conns, list) or not all(isinstance(c, str) for c in conns):
        return None
    if not isinstance(created, int | float) or not isinstance(seen, int | float):
        return None
    return Session(
        sid,
        tenant,
        principal,
        tuple(cast(list[str], conns)),
        float(created),
        float(seen),
        issuer,
    )


@dataclass(kw_only=True, eq=False, repr=False)
class Sessions:
    """The session cookies of every tenant, and this worker's caches of what they hold."""

    sealer: CookieSealer
    cookies: CookieAttributes
    #: where revoked session ids are kept, shared by every worker (J10)
    store: TokenStore
    idle_timeout: float
    absolute_timeout: float
    #: how long the shared store's "not revoked" answer is trusted (0: asked on every request)
    check_interval: float
    #: a session seen longer ago than this gets a fresh cookie (sliding idle timeout)
    refresh_after: float = field(init=False)
    #: the session cookie of the tenant ``default``; other tenants' names start with it
    cookie: str = field(init=False)
    # Per-worker caches, shared by the threads of a WSGI server: bounded dicts changed
    # only under one lock, the oldest entry evicted first, so every change is O(1)
    # however full they are (a revoked id evicted here is still refused by the store).
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    #: session ids revoked (seen here, or reported by the shared store)
    _logged_out: dict[str, bool] = field(init=False, default_factory=dict)
    #: session id -> until when the shared store's "not revoked" answer is trusted
    _checked: dict[str, float] = field(init=False, default_factory=dict)
    _opened: dict[str, Session] = field(init=False, default_factory=dict)
    _cookie_names: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.refresh_after = min(self.idle_timeout / 12, 3600.0)
        self.cookie = self.cookies.name_prefix + _SESSION_COOKIE

    def cookie_name(self, tenant: str) -> str:
        """The session cookie of ``tenant``: one per tenant, so one browser holds several (J2).

        ``obm_session`` for the tenant ``default`` (an app without tenants), else
        ``obm_session_`` plus a keyed hash of the tenant id (``__Host-`` first on https).
        """
        name = self._cookie_names.get(tenant)
        if name is None:
            name = self.cookie
            if tenant != "default":
                name += "_" + self.sealer.tag("session-name", tenant, 16)
            if len(self._cookie_names) >= _OPENED_MAX:
                self._cookie_names.clear()
            self._cookie_names[tenant] = name
        return name

    def open(self, cookies: Mapping[str, str], now: float, tenant: str) -> Step[Session | None]:
        """``tenant``'s live session: sealed, in time, of that tenant, not revoked anywhere."""
        session = self.read(cookies, now, tenant)
        if session is None or self.known_live(session, now):
            return session
        return (yield from self.check(session, now))

    def known_live(self, session: Session, now: float) -> bool:
        """The shared store said ``session`` was not revoked, within the check interval (the
        request needs no store read)."""
        return self._checked.get(session.sid, 0.0) > now

    def check(self, session: Session, now: float) -> Step[Session | None]:
        """``session``, unless the shared store says a worker revoked it (J10; fail closed)."""
        try:
            revoked = yield from self._revocation(session, now, mark=False)
        except StorageError as exc:  # fail closed: a session we cannot check is refused
            log.warning("session check failed: %s", reason(exc))
            raise store_down() from None
        if revoked is True:
            self.remember_revoked(session.sid, now)
            return None
        if self.check_interval > 0:
            with self._lock:
                bounded_put(self._checked, session.sid, now + self.check_interval, DENYLIST_MAX)
        return session

    def read(self, cookies: Mapping[str, str], now: float, tenant: str) -> Session | None:
        """``tenant``'s session as its cookie says, without asking the shared store."""
        name = self.cookie_name(tenant)
        value = cookies.get(name)
        if not value:
            return None
        session = self._opened.get(value)  # a dict read is atomic; writes take the lock
        if session is None:
            # The cookie name is the AEAD's associated data: a value moved to another tenant's
            # cookie does not open.
            data = self.sealer.open(name, value, now=now, max_age=self.absolute_timeout)
            session = None if data is None else parse_session(data)
            if session is None:
                return None
            # Authenticated values only; saves the AEAD and JSON work on every later request.
            with self._lock:
                bounded_put(self._opened, value, session, _OPENED_MAX)
        if session.tenant != tenant:  # J2: a session answers only in its own tenant
            return None
        if (
            now - session.created_at > self.absolute_timeout
            or now - session.seen_at > self.idle_timeout
        ):
            return None
        if session.sid in self._logged_out:
            return None
        return session

    def set_cookie(self, session: Session, now: float) -> tuple[str, str]:
        """The ``set-cookie`` header that stores ``session``."""
        max_age = max(1, int(min(self.idle_timeout, self._remaining(session, now))))
        name = self.cookie_name(session.tenant or "default")
        value = self.sealer.seal(name, session.payload(), now)
        return ("set-cookie", self.cookies.set_cookie(name, value, max_age))

    def delete_cookie(self, tenant: str) -> tuple[str, str]:
        return ("set-cookie", self.cookies.delete_cookie(self.cookie_name(tenant)))

    def csrf_for(self, session_id: str) -> str:
        return self.sealer.tag("csrf", session_id, 43)

    def forget(self, session: Session, now: float) -> Step[None]:
        """Revoke ``session`` here and, through the shared store, on every other worker."""
        self.remember_revoked(session.sid, now)
        try:
            yield from self._revocation(session, now, mark=True)
        except StorageError as exc:
            log.warning("session revocation failed: %s", reason(exc))
            raise store_down() from None

    def remember_revoked(self, sid: str, now: float) -> None:
        """This worker's bounded cache of revoked ids (saves the store read for them)."""
        with self._lock:
            bounded_put(self._logged_out, sid, True, DENYLIST_MAX)
            self._checked.pop(sid, None)

    def _revocation(self, session: Session, now: float, *, mark: bool) -> Step[bool]:
        """The shared store's revocation mark of ``session``; it need not outlive the session."""
        name = "obm-session-revoked:" + self.sealer.tag("revoked", session.sid, 40)
        return session_revocation(self.store, name, self._remaining(session, now), mark=mark)

    def _remaining(self, session: Session, now: float) -> float:
        """Seconds until ``session`` ends at the latest."""
        return max(1.0, self.absolute_timeout - (now - session.created_at))


class FlowCookies:
    """The flow cookies of logins in progress: one per login, named by a hash of ``state``."""

    def __init__(
        self, *, sealer: CookieSealer, cookies: CookieAttributes, ttl: float, max_flows: int
    ) -> None:
        self.sealer = sealer
        self.cookies = cookies
        self.ttl = ttl
        self.max_flows = max_flows
        self.prefix = cookies.name_prefix + _FLOW_COOKIE

    def name(self, state: str) -> str:
        return self.prefix + self.sealer.tag("flow-name", state, 16)

    def start(
        self, state: str, flow: dict[str, JSONValue], cookies: Mapping[str, str], now: float
    ) -> list[tuple[str, str]]:
        """The ``set-cookie`` headers of a new login: its sealed flow (bound to ``state``),
        and the deletion of stale flows so that at most ``max_flows`` remain."""
        headers = [("set-cookie", self.cookies.delete_cookie(n)) for n in self._stale(cookies, now)]
        name = self.name(state)
        value = self.sealer.seal(name, {"s": self._state_tag(state), **flow}, now)
        headers.append(("set-cookie", self.cookies.set_cookie(name, value, int(self.ttl))))
        return headers

    def open(
        self, state: str, cookies: Mapping[str, str], now: float
    ) -> dict[str, JSONValue] | None:
        """The flow this browser started with ``state`` (B1), or ``None``."""
        name = self.name(state)
        flow = self.sealer.open(name, cookies.get(name), now=now, max_age=None)
        if flow is None or not hmac.compare_digest(str(flow.get("s", "")), self._state_tag(state)):
            return None
        return flow

    def consume(self, state: str) -> tuple[str, str]:
        """The ``set-cookie`` header deleting the flow of ``state`` (a callback spends it)."""
        return ("set-cookie", self.cookies.delete_cookie(self.name(state)))

    def _state_tag(self, state: str) -> str:
        return self.sealer.tag("state", state, 64)

    def _stale(self, cookies: Mapping[str, str], now: float) -> list[str]:
        flows: list[tuple[float, str]] = []
        stale: list[str] = []
        for name, value in cookies.items():
            # Only a name this middleware could have set: any other is not ours to delete,
            # and its text (the request's) is never written back in a Set-Cookie header.
            if not name.startswith(self.prefix) or not _FLOW_TAG.fullmatch(
                name[len(self.prefix) :]
            ):
                continue
            data = self.sealer.open(name, value, now=now, max_age=self.ttl)
            iat = None if data is None else data.get("iat")
            if not isinstance(iat, int):
                stale.append(name)
            else:
                flows.append((float(iat), name))
        flows.sort()
        excess = len(flows) - (self.max_flows - 1)
        if excess > 0:
            stale.extend(name for _, name in flows[:excess])
        return stale
