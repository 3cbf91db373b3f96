"""The gate in front of the token endpoint: shared provider back-off and the rate-limit policy.

Owns: ``Backoff`` (how a 429/503 answer closes the provider's gate for every caller sharing
the store), the ``RateLimitPolicy`` extension point with its ``Allow`` / ``Delay`` / ``Deny``
decisions, the shipped ``TokenBucket`` policy (one budget per tenant and provider, counted in
the store), and the two flow steps the grant flows run around every token-endpoint request.
Must not import: httpx/httpx2, asyncio, threading, store drivers; no clock (``Now`` only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import replace
from typing import NoReturn
from typing import Protocol
from typing import TypeAlias
from typing import TypeVar
from typing import runtime_checkable

from . import oauth
from .effects import BackoffUntil
from .effects import CountCalls
from .effects import Emit
from .effects import Flow
from .effects import HttpResponse
from .effects import SetBackoff
from .effects import Sleep
from .effects import StoreOp
from .effects import TakeToken
from .errors import ConfigurationError
from .errors import RateLimited
from .errors import StorageError
from .events import RateLimited as RateLimitedEvent

#: The public names, which :mod:`oauth2_broker_mw.ratelimit` re-exports; the flow steps
#: (``before_token_request``, ``after_token_response``, ``record_failure``) are the grant
#: flows' own, imported by name.
__all__ = [
    "Allow",
    "Backoff",
    "Decision",
    "Delay",
    "Deny",
    "RateLimitCall",
    "RateLimitPolicy",
    "TokenBucket",
]

log = logging.getLogger("oauth2_broker_mw")


@dataclass(frozen=True, slots=True)
class Allow:
    """Send the request now."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds``, then send the request (the budget is already reserved)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Deny:
    """Send nothing: the caller gets :class:`~oauth2_broker_mw.RateLimited`."""

    retry_after: float


Decision: TypeAlias = Allow | Delay | Deny


@dataclass(frozen=True, slots=True)
class RateLimitCall:
    """What a policy decides about: one token-endpoint request about to be sent."""

    tenant: str
    principal: str
    provider: str
    grant: str
    """``refresh_token``, ``client_credentials`` or ``authorization_code``."""
    now: float
    """The broker's wall clock (seconds since the epoch)."""
    recent: int | None = None
    """Token-endpoint calls for this tenant and provider in the policy's ``recent_window``
    seconds before this one: counted in the store, so every process and host on it sees the
    same number (allowed and refused calls alike: each consulted the policy). ``None`` when
    the policy has no ``recent_window`` (nothing is counted: no store round trip)."""
    recent_provider: int | None = None
    """The same for the provider across every tenant."""


@runtime_checkable
class RateLimitPolicy(Protocol):
    """Consulted before every token-endpoint request, after the provider back-off.

    ``check`` is a flow (a generator, like every decision of the broker): it may yield store
    effects such as :class:`~oauth2_broker_mw._core.effects.TakeToken` to count calls in the
    store shared by every process, and returns a :data:`Decision`. A policy that needs no
    counts returns at once::

        class NoCodeExchangesAtNight:
            def check(self, call):
                if call.grant == "authorization_code" and is_night(call.now):
                    return Deny(retry_after=3600.0)
                return Allow()
                yield  # makes this a generator

    A policy with a ``recent_window`` attribute (seconds) is given the recent counts
    (:attr:`RateLimitCall.recent`, :attr:`RateLimitCall.recent_provider`) over that sliding
    window: each call it is consulted about is counted in the store first (two round trips).
    """

    def check(self, call: RateLimitCall) -> Flow[Decision]: ...


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """At most ``rate`` token-endpoint calls per ``per`` seconds, per tenant and provider.

    The budget is shared by every process and host on the store (an atomic store operation:
    GCRA, one stored time per bucket). ``burst`` calls may go at once (default ``rate``).
    A call beyond the budget waits for it when that takes at most ``max_delay`` seconds
    (``Delay``), else it is refused (``Deny``) with the time until the budget allows one.
    ``per_tenant=False`` shares one budget among every tenant of the provider.
    """

    rate: int
    per: float = 60.0
    burst: int | None = None
    max_delay: float = 0.0
    per_tenant: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or self.rate < 1:
            raise ConfigurationError(
                f"TokenBucket rate must be a positive integer; got {self.rate!r}"
            )
        if not self.per > 0:
            raise ConfigurationError(f"TokenBucket per must be positive seconds; got {self.per!r}")
        if self.burst is not None and (isinstance(self.burst, bool) or self.burst < 1):
            raise ConfigurationError(f"TokenBucket burst must be >= 1; got {self.burst!r}")
        if not self.max_delay >= 0:
            raise ConfigurationError(f"TokenBucket max_delay must be >= 0; got {self.max_delay!r}")

    def bucket_name(self, call: RateLimitCall) -> str:
        if self.per_tenant:
            return f"bucket|{len(call.tenant)}:{call.tenant}|{call.provider}"
        return f"bucket|*|{call.provider}"

    def check(self, call: RateLimitCall) -> Flow[Decision]:
        granted, wait = yield TakeToken(
            self.bucket_name(call),
            now=call.now,
            interval=self.per / self.rate,
            burst=self.burst or self.rate,
            max_wait=self.max_delay,
        )
        if not granted:
            return Deny(wait)
        return Allow() if wait <= 0 else Delay(wait)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How the provider's answers close its gate for every caller on the store.

    A 429 or 503 with ``Retry-After`` closes it for that long (at most ``maximum`` seconds);
    a 429 without one for ``default`` seconds. The circuit breaker: more than ``failures``
    transient failures (5xx, 429, transport errors) within ``window`` seconds, counted in the
    store across processes, close it for ``open_for`` seconds (``failures=0``: no breaker).
    ``enabled=False`` turns the shared back-off and the breaker off.
    """

    enabled: bool = True
    default: float = 1.0
    maximum: float = 300.0
    failures: int = 5
    window: float = 10.0
    open_for: float = 10.0

    def __post_init__(self) -> None:
        if not (0 <= self.default <= self.maximum):
            raise ConfigurationError("Backoff needs 0 <= default <= maximum seconds")
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise ConfigurationError(f"Backoff failures must be an integer; got {self.failures!r}")
        if self.failures < 0 or not self.window > 0 or not 0 <= self.open_for <= self.maximum:
            raise ConfigurationError(
                "Backoff needs failures >= 0, window > 0 and 0 <= open_for <= maximum"
            )

    @staticmethod
    def gate_name(provider: str, server: str | None = None) -> str:
        """The gate of ``provider`` at the authorization server ``server`` (the token
        endpoint's origin): tenants with an instance of their own have a gate of their own."""
        return f"backoff|{provider}" if not server else f"backoff|{provider}|{server}"

    @staticmethod
    def failures_name(provider: str, server: str | None = None) -> str:
        return f"failures|{provider}" if not server else f"failures|{provider}|{server}"

    def seconds(self, response: HttpResponse, now: float) -> float | None:
        """How long ``response`` closes the gate (``None``: it does not)."""
        if not self.enabled or response.status_code not in (429, 503):
            return None
        retry_after = oauth.parse_retry_after(response, now=now)
        if retry_after is None:
            retry_after = self.default if response.status_code == 429 else None
        if retry_after is None or retry_after <= 0:
            return None
        return min(retry_after, self.maximum)


def _refuse(call: RateLimitCall, scopes: str, retry_after: float, reason: str) -> Flow[NoReturn]:
    yield Emit(
        RateLimitedEvent(
            tenant=call.tenant,
            principal=call.principal,
            provider=call.provider,
            scopes=scopes,
            at=call.now,
            grant=call.grant,
            retry_after=retry_after,
        )
    )
    raise RateLimited(call.provider, retry_after, reason=reason)


T = TypeVar("T")


def _fail_open(effect: StoreOp, fallback: T, what: str, subject: str) -> Flow[T]:
    """``effect``'s result, or ``fallback`` when the store fails: the gate is a courtesy, and
    a store that cannot keep it must not stop the request. The failure is logged as
    ``could not <what>: <error>`` (``what`` formats ``subject``)."""
    try:
        result: T = yield effect
    except StorageError as exc:
        log.warning(f"could not {what}: %s", subject, exc)
        return fallback
    return result


def _closed_for(
    backoff: Backoff, provider: str, now: float, server: str | None = None
) -> Flow[float]:
    """Seconds the provider's gate stays closed (``0.0``: open). A store failure opens it."""
    if not backoff.enabled:
        return 0.0
    gate = BackoffUntil(backoff.gate_name(provider, server))
    until = yield from _fail_open(gate, 0.0, "read the back-off of provider=%s", provider)
    return max(0.0, until - now)


def before_token_request(
    backoff: Backoff,
    policy: RateLimitPolicy | None,
    *,
    tenant: str,
    principal: str,
    provider: str,
    grant: str,
    now: float,
    scopes: str = "",
    server: str | None = None,
) -> Flow[None]:
    """Raise :class:`RateLimited` (and emit the event) unless a request may go out at ``now``.

    First the provider's shared back-off (at ``server``, the token endpoint's origin), then
    the policy; after a ``Delay`` the back-off is read again, since another caller may have
    been told to back off meanwhile.
    """
    call = RateLimitCall(tenant, principal, provider, grant, now)
    closed = yield from _closed_for(backoff, provider, now, server)
    if closed > 0:
        yield from _refuse(call, scopes, closed, "backoff")
    if policy is None:
        return
    window = getattr(policy, "recent_window", None)
    if window is not None:  # the policy decides with recent counts: count this call
        recent = yield from _count(f"calls|{len(tenant)}:{tenant}|{provider}", now, window)
        everyone = yield from _count(f"calls|*|{provider}", now, window)
        call = replace(call, recent=recent, recent_provider=everyone)
    decision = yield from policy.check(call)
    if isinstance(decision, Deny):
        yield from _refuse(call, scopes, max(0.0, decision.retry_after), "policy")
    if isinstance(decision, Delay) and decision.seconds > 0:
        now = yield Sleep(decision.seconds)
        closed = yield from _closed_for(backoff, provider, now, server)
        if closed > 0:
            yield from _refuse(
                RateLimitCall(tenant, principal, provider, grant, now), scopes, closed, "backoff"
            )


def _count(name: str, now: float, window: float) -> Flow[int]:
    """Count this call in the store; a store failure is logged and counts as nothing recent."""
    count = CountCalls(name, now=now, window=window)
    what = "count a token-endpoint call (%s)"
    return (yield from _fail_open(count, 0, what, name.split("|")[-1]))


def after_token_response(
    backoff: Backoff,
    provider: str,
    response: HttpResponse,
    now: float,
    server: str | None = None,
) -> Flow[None]:
    """Close the provider's gate (at ``server``) for everyone when ``response`` (received at
    ``now``) asks to back off, or when it is one transient failure too many (the circuit
    breaker)."""
    status = response.status_code
    if not backoff.enabled or not (status == 429 or status >= 500):
        return
    seconds = backoff.seconds(response, now)
    if seconds is not None:
        yield from _close(backoff, provider, now, seconds, f"answered HTTP {status}", server)
    yield from record_failure(backoff, provider, now, server)


def record_failure(
    backoff: Backoff, provider: str, now: float, server: str | None = None
) -> Flow[None]:
    """Count one transient failure in the store; one too many opens the circuit."""
    if not backoff.enabled or backoff.failures < 1 or backoff.open_for <= 0:
        return
    take = TakeToken(
        backoff.failures_name(provider, server),
        now=now,
        interval=backoff.window / backoff.failures,
        burst=backoff.failures,
    )
    # not counted (the store failed): within the budget, the circuit stays as it is
    within, _ = yield from _fail_open(take, (True, 0.0), "count a failure of provider=%s", provider)
    if not within:
        yield from _close(
            backoff,
            provider,
            now,
            backoff.open_for,
            f"failed more than {backoff.failures} times in {backoff.window:g}s (circuit open)",
            server,
        )


def _close(
    backoff: Backoff,
    provider: str,
    now: float,
    seconds: float,
    why: str,
    server: str | None = None,
) -> Flow[None]:
    gate = SetBackoff(backoff.gate_name(provider, server), now + seconds, now)
    not_recorded: float | None = None
    stored = yield from _fail_open(
        gate, not_recorded, "record the back-off of provider=%s", provider
    )
    if stored is None:
        return
    log.warning(
        "provider=%s %s: no token request for %.3gs (shared through the store)",
        provider,
        why,
        seconds,
    )
