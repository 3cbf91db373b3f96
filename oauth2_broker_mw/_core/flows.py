"""The grant flows as sans-IO generators: every OAuth decision the broker makes, no I/O.

Owns: obtaining a token for a key (cached / refresh / client credentials), the refresh
contract (lease lock, double-check, compare-and-swap, ``invalid_grant`` recovery), starting
an authorization and exchanging its code, revocation.

A flow yields :mod:`effects <oauth2_broker_mw._core.effects>` (HTTP requests, store
operations, sleeps, clock reads) and receives their results; the sync and the async driver
run the very same generators. Exceptions raised while executing an effect are thrown back
into the flow at the ``yield``.
Must not import: httpx/httpx2, asyncio, threading, store drivers.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Final
from typing import TypeAlias
from typing import TypeGuard
from urllib.parse import urlsplit

from . import jsonsafe
from . import oauth
from .dpop import DPoPKey
from .dpop import NonceCache
from .dpop import make_proof
from .effects import AcquireLock
from .effects import CompareAndSwap
from .effects import Delete
from .effects import DeleteKeys
from .effects import DropUnsaved
from .effects import Emit
from .effects import Flow
from .effects import HttpRequest
from .effects import HttpResponse
from .effects import KeepUnsaved
from .effects import ListKeys
from .effects import Load
from .effects import LockHold
from .effects import Now
from .effects import PeekUnsaved
from .effects import Put
from .effects import PutPending
from .effects import ReleaseLock
from .effects import RenewLock
from .effects import Sleep
from .effects import TakePending
from .errors import AuthorizationFlowError
from .errors import AuthorizationRequired
from .errors import BrokerError
from .errors import ConfigurationError
from .errors import CorruptRecord
from .errors import InvalidGrant
from .errors import InvalidIdentifier
from .errors import ProviderError
from .errors import RateLimited
from .errors import RefreshTimeout
from .errors import StorageError
from .errors import TransientProviderError
from .errors import TransportError
from .events import ConnectionRevoked
from .events import LockContended
from .events import ReauthorizationRequired
from .events import RefreshFailed
from .events import RevocationDropped
from .events import RevocationQueued
from .events import RotationFlushed
from .events import RotationUnsaved
from .events import TokenIssued
from .events import TokenRefreshed
from .model import REVOCATION_PRINCIPAL
from .model import REVOCATION_TENANT
from .model import SERVICE_PRINCIPAL
from .model import JSONValue
from .model import PendingAuthorization
from .model import PrincipalId
from .model import ScopeSet
from .model import Secret
from .model import StoreKey
from .model import TenantId
from .model import TokenRecord
from .model import redacted_repr
from .model import revealed
from .policy import RefreshPolicy
from .policy import RevocationRetry
from .provider import ClientConfig
from .provider import GrantType
from .provider import PkceMode
from .provider import ProviderDescriptor
from .ratelimit import Backoff
from .ratelimit import RateLimitPolicy
from .ratelimit import after_token_response
from .ratelimit import before_token_request
from .ratelimit import record_failure

__all__ = [
    "AuthorizationRequest",
    "FlowConfig",
    "ForgetReport",
    "RevocationDrain",
    "drain_revocations_flow",
    "exchange_code_flow",
    "flush_unsaved_flow",
    "forget_keys_flow",
    "forget_principal_flow",
    "obtain_flow",
    "revoke_flow",
    "start_authorization_flow",
]

log = logging.getLogger("oauth2_broker_mw")


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """Everything a flow needs to know besides its arguments."""

    provider: ProviderDescriptor
    client: ClientConfig
    policy: RefreshPolicy = field(default_factory=RefreshPolicy)
    lock_ttl: float = 15.0
    lock_wait: float = 30.0
    poll_interval: float = 0.05
    pending_ttl: float = 600.0
    write_retry_for: float = 5.0
    """How long a rotation the provider already issued is retried against a refusing store
    before it is kept in this process (:class:`UnsavedRotations`)."""

    client_credentials_principals: Callable[[StoreKey], bool] | None = None
    """Principals (besides :data:`SERVICE_PRINCIPAL`) the app marks as services. ``None``: none
    when the descriptor also offers a user grant (authorization code), every principal when
    client credentials is the only way to get a token (there are no users)."""
    dpop_key: DPoPKey | None = None
    """Signs DPoP proofs for token requests when the descriptor has ``dpop=True``."""
    dpop_nonces: NonceCache | None = None
    """The latest ``DPoP-Nonce`` per authorization-server origin (in memory, per broker)."""
    backoff: Backoff = field(default_factory=Backoff)
    """The provider back-off shared through the store (429/503 with ``Retry-After``)."""
    rate_limit: RateLimitPolicy | None = None
    """Consulted before every token-endpoint request (``None``: no budget)."""
    tenant: TenantId | None = None
    """The one tenant this registration serves (a :class:`~oauth2_broker_mw.Registry`
    broker), or ``None`` for a registration shared by every tenant. A tenant's broker delivers
    only that tenant's queued revocations (SECURITY J7)."""

    def allows_client_credentials(self, key: StoreKey) -> bool:
        """The app's own token may be used for ``key``: never for a user principal."""
        if key.principal == SERVICE_PRINCIPAL:
            return True
        predicate = self.client_credentials_principals
        if predicate is None:
            return not self.provider.supports(GrantType.AUTHORIZATION_CODE)
        return predicate(key)

    @property
    def can_client_credentials(self) -> bool:
        return self.provider.supports(GrantType.CLIENT_CREDENTIALS) and (
            self.client.client_secret is not None or self.client.private_key is not None
        )


@dataclass(frozen=True, slots=True, repr=False)
class AuthorizationRequest:
    """A started login: send the user agent to ``url``; the broker keeps the rest."""

    url: str = field(repr=False)  # carries the state
    state: str = field(repr=False)
    expires_at: float
    tenant: TenantId
    principal: PrincipalId | None
    provider: str
    issuer: str | None
    scopes: ScopeSet

    __repr__ = redacted_repr


# -- store helpers ----------------------------------------------------------------------------
def _read(key: StoreKey) -> Flow[TokenRecord | None]:
    """Load the record; a corrupt one is logged and treated as absent (fail closed).

    A rotation this process holds unsaved (the store refused it) is written first; while the
    store still refuses, that record is the answer: never the stored, spent refresh token.
    """
    held: tuple[TokenRecord, int | None, LockHold | None] | None = yield PeekUnsaved(key)
    if held is not None:
        newest = yield from _flush(*held)
        if newest is not None:
            return newest
    try:
        record: TokenRecord | None = yield Load(key)
    except CorruptRecord as exc:
        log.warning("corrupt token record for provider=%s treated as absent: %s", key.provider, exc)
        return None
    return record


def _flush(
    record: TokenRecord, expected_version: int | None, lock: LockHold | None
) -> Flow[TokenRecord | None]:
    """Write an unsaved rotation: the stored record, ``record`` itself while the store is
    still down, or ``None`` when a newer record was stored meanwhile (the fence moved)."""
    key = record.key
    try:
        stored: TokenRecord | None = yield CompareAndSwap(record, expected_version)
    except StorageError as exc:  # CorruptRecord too (a custom store): never drop it for that
        log.warning(
            "store still refuses the rotated token for provider=%s (%s); serving it from "
            "this process",
            key.provider,
            type(exc).__name__,
        )
        return record
    yield DropUnsaved(record)
    if lock is not None:  # its release was refused with the write; the owner token fences it
        yield from _release(lock.name, lock.owner)
    now: float = yield Now()
    if stored is None:
        log.warning(
            "an unsaved rotation for provider=%s was superseded by a newer stored record",
            key.provider,
        )
        return None
    log.info("stored the rotation held in memory for provider=%s", key.provider)
    yield Emit(RotationFlushed.for_key(key, now, stored.version))
    return stored


def _store_rotation(
    cfg: FlowConfig, merged: TokenRecord, expected_version: int | None, hold: LockHold
) -> Flow[tuple[TokenRecord | None, bool]]:
    """Compare-and-swap a rotation the provider already issued; ``(stored, saved)``.

    A store that refuses the write (down, locked, a dead connection) is retried with
    exponential back-off, renewing the lease lock, for ``cfg.write_retry_for`` seconds after
    the first refusal (which may itself take the store's own timeout). Past
    that the record is kept in this process (``saved`` is ``False``): the caller still gets
    the new token, and the next read of the key writes it.
    """
    key = merged.key
    started: float | None = None
    delay = 0.05
    while True:
        try:
            stored: TokenRecord | None = yield CompareAndSwap(merged, expected_version)
        except StorageError as exc:  # CorruptRecord too: the rotation is kept, never lost
            elapsed: float = yield Now(monotonic=True)
            started = elapsed if started is None else started
            if elapsed - started + delay > cfg.write_retry_for:
                yield KeepUnsaved(merged, expected_version, hold)
                now: float = yield Now()
                log.error(
                    "could not store the rotated token for provider=%s for %.1fs (%s); "
                    "keeping it in this process until the store answers",
                    key.provider,
                    elapsed - started,
                    type(exc).__name__,
                )
                yield Emit(
                    RotationUnsaved.for_key(key, now, expected_version, error=type(exc).__name__)
                )
                return merged, False
            yield Sleep(delay)
            delay = min(delay * 2, 1.0)
            with contextlib.suppress(StorageError):  # still down: the swap is the fence anyway
                yield RenewLock(hold.name, hold.owner, hold.ttl)
            continue
        if stored is not None:
            yield DropUnsaved(merged)  # an older unsaved rotation of this key is superseded
        return stored, True


def flush_unsaved_flow(key: StoreKey) -> Flow[bool]:
    """Write the rotation this process holds unsaved for ``key``; ``True`` once none is held
    (stored, superseded by a newer stored record, or there was none)."""
    held: tuple[TokenRecord, int | None, LockHold | None] | None = yield PeekUnsaved(key)
    if held is None:
        return True
    newest = yield from _flush(*held)
    return newest is not held[0]


def _release(name: str, owner: str) -> Flow[None]:
    try:
        yield ReleaseLock(name, owner)
    except StorageError as exc:  # the lock expires on its own; never mask the real outcome
        log.warning("could not release refresh lock: %s", exc)


# -- DPoP at the token endpoint --------------------------------------------------------------
def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _asks_for_nonce(response: HttpResponse) -> str | None:
    """The ``DPoP-Nonce`` of a 400 ``use_dpop_nonce`` answer (RFC 9449 §8), else ``None``."""
    nonce = response.headers.get("dpop-nonce")
    if response.status_code != 400 or not nonce:
        return None
    data = oauth._decode_body(response)
    if data is None or data.get("error") != "use_dpop_nonce":
        return None
    return nonce


def _send_token_request(
    cfg: FlowConfig,
    request: HttpRequest,
    who: StoreKey | PendingAuthorization,
    grant: GrantType,
    now: float,
) -> Flow[tuple[HttpResponse, float]]:
    """Send a token-endpoint request through the provider's gate; the response and the time
    it arrived.

    The gate (shared through the store): the provider's back-off, then the rate-limit policy;
    when closed, :class:`RateLimited` and no request. A 429/503 answer with ``Retry-After``
    closes it for every caller. ``who`` names the key (or the login) the request is for.
    The gate is the provider's at that authorization server (the token endpoint's origin):
    a tenant with an instance of its own has a gate of its own.
    """
    server = _origin(request.url)
    yield from before_token_request(
        cfg.backoff,
        cfg.rate_limit,
        tenant=str(who.tenant),
        principal=str(who.principal),
        provider=cfg.provider.id,
        grant=grant.value,
        now=now,
        scopes=who.scope_fingerprint if isinstance(who, StoreKey) else "",
        server=server,
    )
    try:
        response = yield from _send_with_proof(cfg, request)
    except TransportError:
        now = yield Now()
        yield from record_failure(cfg.backoff, cfg.provider.id, now, server)
        raise
    now = yield Now()
    yield from after_token_response(cfg.backoff, cfg.provider.id, response, now, server)
    return response, now


def _send_with_proof(cfg: FlowConfig, request: HttpRequest) -> Flow[HttpResponse]:
    """Send a token-endpoint request; with DPoP, add a fresh proof (and the AS nonce).

    Without DPoP this is exactly one ``yield request``.
    """
    key = cfg.dpop_key
    if key is None or not cfg.provider.dpop:
        response: HttpResponse = yield request
        return response
    nonces = cfg.dpop_nonces if cfg.dpop_nonces is not None else NonceCache()
    where = _origin(request.url)
    now: float = yield Now()
    response = yield _with_proof(request, key, now, nonces.get(where))
    nonces.put(where, response.headers.get("dpop-nonce"))
    nonce = _asks_for_nonce(response)
    if nonce is not None:
        # RFC 9449 §8: the authorization server refused this request *before* processing
        # the grant (it wants a proof carrying its nonce), so a single-use refresh token or
        # authorization code was NOT consumed. Sending it once more is the one exception to
        # "a refresh request is never sent twice", and it happens at most once.
        log.debug("token endpoint of provider=%s asked for a DPoP nonce", cfg.provider.id)
        now = yield Now()
        response = yield _with_proof(request, key, now, nonce)
        nonces.put(where, response.headers.get("dpop-nonce"))
    return response


def _with_proof(request: HttpRequest, key: DPoPKey, now: float, nonce: str | None) -> HttpRequest:
    proof = make_proof(key, htm=request.method, htu=request.url, now=now, nonce=nonce)
    headers = tuple((k, v) for k, v in request.headers if k.lower() != "dpop")
    return replace(request, headers=(*headers, ("DPoP", proof)))


# -- obtaining a token ------------------------------------------------------------------------
def obtain_flow(
    cfg: FlowConfig,
    key: StoreKey,
    requested: ScopeSet,
    *,
    force: bool = False,
    stale: Secret | None = None,
    if_version: int | None = None,
) -> Flow[TokenRecord]:
    """Return a usable :class:`TokenRecord` for ``key``.

    Order: a fresh stored token; else refresh when a refresh token is stored; else client
    credentials when the provider and client allow it; else :class:`AuthorizationRequired`.
    ``force``: the stored token is not good enough (refresh it once). ``stale``: the token a
    resource server rejected; any other token already stored is accepted without a provider
    call (another caller replaced it). ``if_version``: refresh once, but only while the stored
    record is still at that version (a proactive refresher's fence: a record another refresher
    already renewed is returned as it is).
    """
    now: float = yield Now()
    record = yield from _read(key)
    seen_version = None if record is None else record.version
    if if_version is not None:
        force, seen_version = True, if_version

    def acceptable(candidate: TokenRecord | None, at: float) -> TypeGuard[TokenRecord]:
        if candidate is None or not cfg.policy.is_usable(candidate, at):
            return False
        if stale is not None:
            return not _same_secret(candidate.access_token, stale) and cfg.policy.is_fresh(
                candidate, at
            )
        if force:
            return candidate.version != seen_version
        return cfg.policy.is_fresh(candidate, at)

    if acceptable(record, now):
        return record
    if (
        record is not None
        and record.refresh_token is not None
        and (cfg.provider.supports(GrantType.REFRESH_TOKEN))
    ):
        try:
            return (
                yield from _locked(
                    cfg, key, acceptable, lambda r, hold: _refresh(cfg, key, r, hold)
                )
            )
        except (TransientProviderError, TransportError, RefreshTimeout) as exc:
            # The provider (or the lock holder) failed us early, inside the refresh window:
            # the token we have is still valid, so serve it and try again on a later lease.
            if force or stale is not None or not cfg.policy.is_usable(record, now):
                raise
            now = yield Now()  # the lock wait and the provider call took time
            if not cfg.policy.is_usable(record, now):
                raise
            log.warning(
                "refresh failed for provider=%s (%s); serving the stored token, valid for "
                "%.0f more seconds",
                key.provider,
                type(exc).__name__,
                (record.expires_at or now) - now,
            )
            return record
    # Client credentials never stand in for a user's grant: only where nothing but a
    # client-credentials token was ever stored, and only for principals the broker allows.
    user_grant = record is not None and record.grant != GrantType.CLIENT_CREDENTIALS.value
    if cfg.can_client_credentials and not user_grant and cfg.allows_client_credentials(key):
        return (
            yield from _locked(
                cfg, key, acceptable, lambda r, hold: _client_credentials(cfg, key, requested, hold)
            )
        )
    if record is not None and not force and stale is None and cfg.policy.is_usable(record, now):
        # Inside the refresh window but nothing can renew it: hand out what is still valid.
        return record
    raise AuthorizationRequired(
        tenant=key.tenant,
        principal=key.principal,
        provider=key.provider,
        scopes=requested.scopes,
        reason="the provider rejected the stored grant; log in again"
        if record is not None and record.revoked_at is not None
        else "no stored grant for this user; log in (the app's own client-credentials token "
        "never stands in for a user: use service_lease() for the app's identity)"
        if record is None and cfg.can_client_credentials
        else "no stored grant for this user; log in"
        if record is None and not cfg.allows_client_credentials(key)
        else "no stored token, and this broker cannot use client credentials (the descriptor "
        "must enable the client_credentials grant and the client needs a client_secret or "
        "private_key)"
        if record is None
        else "the stored token has no refresh token and cannot be renewed; log in again"
        if record.refresh_token is None
        else "the stored token cannot be refreshed",
    )


def _same_secret(a: Secret, b: Secret) -> bool:
    return a == b  # constant time; a lone surrogate never raises (Secret.__eq__)


def _locked(
    cfg: FlowConfig,
    key: StoreKey,
    acceptable: Callable[[TokenRecord | None, float], TypeGuard[TokenRecord]],
    body: Callable[[TokenRecord | None, LockHold], Flow[TokenRecord]],
) -> Flow[TokenRecord]:
    """Run ``body`` under the key's lease lock, unless another holder delivers first.

    Waiters poll the store; when the record changes into an acceptable one they use it and
    never call the provider. The holder re-reads after acquiring (double-check) for the same
    reason. The lock is renewed by the driver while the provider call is in flight.
    """
    owner = secrets.token_hex(16)
    name = key.lock_name
    started: float = yield Now(monotonic=True)  # a wall-clock step never stretches the wait
    deadline = started + cfg.lock_wait
    contended = False
    while True:
        acquired: bool = yield AcquireLock(name, owner, cfg.lock_ttl)
        if acquired:
            break
        now: float = yield Sleep(cfg.poll_interval)
        if not contended:
            contended = True
            yield Emit(LockContended.for_key(key, now, None))
        current = yield from _read(key)
        if acceptable(current, now):
            return current
        elapsed: float = yield Now(monotonic=True)
        if elapsed >= deadline:
            raise RefreshTimeout(
                f"another process kept the refresh lock for provider={key.provider!r} "
                f"longer than {cfg.lock_wait:g}s"
            )
    try:
        now = yield Now()
        current = yield from _read(key)
        if acceptable(current, now):
            result = current
        else:
            result = yield from body(current, LockHold(name, owner, cfg.lock_ttl))
    except GeneratorExit:  # the flow was closed, not run: nothing more may be yielded
        raise
    except BaseException:  # provider errors, and a cancelled task: never sit on the lock
        yield from _release(name, owner)
        raise
    yield from _release(name, owner)
    return result


def _refresh(
    cfg: FlowConfig, key: StoreKey, record: TokenRecord | None, hold: LockHold
) -> Flow[TokenRecord]:
    """Redeem the stored refresh token once; store the rotation with compare-and-swap."""
    if record is None or record.refresh_token is None:
        raise AuthorizationRequired(
            tenant=key.tenant,
            principal=key.principal,
            provider=key.provider,
            scopes=() if record is None else record.requested_scopes.scopes,
            reason="the stored grant disappeared while waiting for the refresh lock",
        )
    now: float = yield Now()
    request = oauth.token_request(
        cfg.provider,
        cfg.client,
        GrantType.REFRESH_TOKEN,
        oauth.refresh_params(
            cfg.provider,
            refresh_token=record.refresh_token.get_secret_value(),
            scopes=record.requested_scopes,
        ),
        now=now,
        url=cfg.provider.refresh_url,
    )
    try:
        response, now = yield from _send_token_request(
            cfg, replace(request, hold=hold), key, GrantType.REFRESH_TOKEN, now
        )
        parsed = oauth.parse_token_response(cfg.provider, response, now=now)
        parsed = yield from _refreshed_id_token(cfg, record, parsed, now)
    except RateLimited:  # not attempted: the gate emitted its own event
        raise
    except (TransientProviderError, TransportError) as exc:
        yield Emit(_refresh_failed(key, now, record, exc, permanent=False))
        raise
    except InvalidGrant as exc:
        # Someone else may have rotated it (another host whose lock we could not see, or
        # the lock expired). Re-read before concluding anything: revoke nothing.
        current = yield from _read(key)
        if current is not None and current.version != record.version:
            log.info("refresh lost a race for provider=%s; using the winner's token", key.provider)
            return current
        # Keep a tombstone (no refresh token, revoked_at set) rather than deleting: the key
        # must not silently fall back to client credentials for a user whose grant died.
        tombstone = replace(record, refresh_token=None, revoked_at=now)
        dead = yield CompareAndSwap(tombstone, record.version)
        version = None if dead is None else dead.version
        yield Emit(_refresh_failed(key, now, record, exc, permanent=True, version=version))
        yield Emit(ReauthorizationRequired.for_key(key, now, version))
        raise
    except BrokerError as exc:
        yield Emit(_refresh_failed(key, now, record, exc, permanent=True))
        raise
    merged = _merge(record, parsed, now)
    held: tuple[TokenRecord, int | None, LockHold | None] | None = yield PeekUnsaved(key)
    # ``record`` may itself be an unsaved rotation: its replacement takes over its fence.
    expected = held[1] if held is not None and held[0] is record else record.version
    stored, saved = yield from _store_rotation(cfg, merged, expected, hold)
    if not saved:
        yield from _refreshed(key, record, parsed, merged, now)
        return merged
    if stored is not None:
        yield from _refreshed(key, record, parsed, stored, now)
        return stored
    # The fence moved: our lock expired and someone else wrote. Prefer what is stored.
    current = yield from _read(key)
    if current is not None and cfg.policy.is_usable(current, now):
        return current
    if current is None or (current.refresh_token is None and current.revoked_at is not None):
        # A loser of a lock-less race tombstoned (or removed) the grant while our rotation
        # was in flight: ours is the only live refresh token, so it must not be lost.
        again: TokenRecord | None = yield CompareAndSwap(
            merged, None if current is None else current.version
        )
        if again is not None:
            yield from _refreshed(key, record, parsed, again, now)
            return again
    raise StorageError("the token record changed during refresh and the stored one is unusable")


def _refreshed(
    key: StoreKey,
    old: TokenRecord,
    parsed: oauth.TokenResponse,
    stored: TokenRecord,
    now: float,
) -> Flow[None]:
    rotated = parsed.refresh_token is not None and (
        old.refresh_token is None or not _same_secret(parsed.refresh_token, old.refresh_token)
    )
    age = now - old.issued_at if old.issued_at else None
    yield Emit(TokenRefreshed.for_key(key, now, stored.version, rotated=rotated, age=age))


def _refresh_failed(
    key: StoreKey,
    now: float,
    record: TokenRecord,
    exc: BaseException,
    *,
    permanent: bool,
    version: int | None = None,
) -> RefreshFailed:
    return RefreshFailed.for_key(
        key,
        now,
        record.version if version is None else version,
        permanent=permanent,
        error=type(exc).__name__,
    )


def _granted(key: StoreKey, parsed: oauth.TokenResponse, requested: ScopeSet) -> ScopeSet:
    """The scopes to store: the echoed grant, else what was asked (RFC 6749 §3.3).

    A broader grant is stored as granted, with a warning naming the extra scopes (Google's
    incremental union, a misconfigured app): the token can do more than the caller asked.
    """
    if parsed.scopes is None:
        return requested
    extra = sorted(set(parsed.scopes.scopes) - set(requested.scopes) - oauth.UNECHOED_SCOPES)
    if extra and requested.scopes:
        log.warning(
            "provider=%s granted more scopes than requested: %s",
            key.provider,
            " ".join(extra)[:300],
        )
    return parsed.scopes


def _merge(record: TokenRecord, parsed: oauth.TokenResponse, now: float) -> TokenRecord:
    """RFC 6749 §6: keep the stored refresh token when none is returned; keep metadata."""
    metadata: dict[str, JSONValue] = dict(record.metadata)
    metadata.update(parsed.metadata)
    return replace(
        record,
        access_token=parsed.access_token,
        token_type=parsed.token_type,
        refresh_token=parsed.refresh_token or record.refresh_token,
        id_token=parsed.id_token or record.id_token,
        issued_at=now,
        expires_at=parsed.expires_at,
        refresh_token_expires_at=parsed.refresh_token_expires_at
        if parsed.refresh_token is not None
        else record.refresh_token_expires_at,
        scopes=record.scopes
        if parsed.scopes is None
        else _granted(record.key, parsed, record.requested_scopes),
        metadata=metadata,
        revoked_at=None,
    )


def _client_credentials(
    cfg: FlowConfig, key: StoreKey, requested: ScopeSet, hold: LockHold
) -> Flow[TokenRecord]:
    now: float = yield Now()
    request = oauth.token_request(
        cfg.provider,
        cfg.client,
        GrantType.CLIENT_CREDENTIALS,
        oauth.client_credentials_params(cfg.provider, scopes=requested),
        now=now,
    )
    response, now = yield from _send_token_request(
        cfg, replace(request, hold=hold), key, GrantType.CLIENT_CREDENTIALS, now
    )
    parsed = oauth.parse_token_response(cfg.provider, response, now=now)
    record = _new_record(key, parsed, requested, now, grant=GrantType.CLIENT_CREDENTIALS.value)
    # We hold the lock; a client-credentials token has no rotation hazard: last write wins.
    stored: TokenRecord = yield Put(record)
    yield Emit(TokenIssued.for_key(key, now, stored.version, grant=record.grant))
    return stored


def _new_record(
    key: StoreKey,
    parsed: oauth.TokenResponse,
    requested: ScopeSet,
    now: float,
    *,
    grant: str,
    extra_metadata: Mapping[str, JSONValue] | None = None,
) -> TokenRecord:
    metadata: dict[str, JSONValue] = dict(parsed.metadata)
    if extra_metadata:
        metadata.update(extra_metadata)
    return TokenRecord(
        key=key,
        access_token=parsed.access_token,
        token_type=parsed.token_type,
        refresh_token=parsed.refresh_token,
        id_token=parsed.id_token,
        issued_at=now,
        expires_at=parsed.expires_at,
        refresh_token_expires_at=parsed.refresh_token_expires_at,
        scopes=_granted(key, parsed, requested),
        requested_scopes=requested,
        grant=grant,
        metadata=metadata,
    )


# -- authorization code -----------------------------------------------------------------------
def _pkce_pair(provider: ProviderDescriptor) -> tuple[Secret | None, str | None]:
    """A fresh ``(code_verifier, S256 challenge)`` for ``provider``, the verifier a Secret."""
    if provider.pkce is PkceMode.UNSUPPORTED:
        return None, None
    verifier, challenge = oauth.new_pkce_pair()
    return Secret(verifier), challenge


def start_authorization_flow(
    cfg: FlowConfig,
    *,
    tenant: TenantId,
    principal: PrincipalId | None,
    scopes: ScopeSet,
    redirect_uri: str,
    extra_params: Mapping[str, str] | None = None,
) -> Flow[AuthorizationRequest]:
    if not cfg.provider.supports(GrantType.AUTHORIZATION_CODE):
        raise ConfigurationError(
            f"provider {cfg.provider.id!r} does not offer the authorization_code grant"
        )
    if not oauth.is_allowed_endpoint(redirect_uri):
        raise ConfigurationError("redirect_uri must be https (or http on loopback)")
    if tenant == REVOCATION_TENANT:
        raise InvalidIdentifier(
            f"tenant {REVOCATION_TENANT!r} is reserved for the revocation queue"
        )
    if principal == SERVICE_PRINCIPAL:
        raise ConfigurationError(
            f"principal {SERVICE_PRINCIPAL!r} is reserved for the app's own token; a user "
            "principal must have another name"
        )
    if principal is None and not cfg.provider.is_oidc:
        raise ConfigurationError(
            "principal=None (take it from the ID token) needs an OpenID Connect provider"
        )
    # The state, verifier, nonce and the URL carrying them are held as Secrets: when the PAR
    # endpoint or the store fails at a yield below, this frame shows none of them.
    state = Secret(oauth.new_state())
    verifier, challenge = _pkce_pair(cfg.provider)
    nonce = Secret(oauth.new_nonce()) if ("openid" in scopes or principal is None) else None
    # The descriptor's default scopes (offline_access, ...) are always asked for; the store
    # key stays on what the caller requested.
    asked = oauth.effective_scopes(cfg.provider, scopes)

    def params() -> dict[str, str]:
        return oauth.authorization_params(
            cfg.provider,
            cfg.client,
            redirect_uri=redirect_uri,
            scopes=asked,
            state=state.get_secret_value(),
            code_challenge=challenge,
            nonce=revealed(nonce),
            extra_params=extra_params,
        )

    if cfg.provider.require_pushed_authorization_requests:
        # RFC 9126: push the parameters (authenticated), send the browser only a request_uri.
        pushed_at: float = yield Now()
        response = yield oauth.pushed_authorization_request(
            cfg.provider, cfg.client, params(), now=pushed_at
        )
        request_uri, _ = oauth.parse_par_response(response, now=pushed_at)
        url = Secret(oauth.par_authorization_url(cfg.provider, cfg.client, request_uri=request_uri))
    else:
        url = Secret(oauth.authorization_url(cfg.provider, params()))
    now: float = yield Now()
    pending = PendingAuthorization(
        state=state,
        tenant=tenant,
        principal=principal if principal is not None else PrincipalId("-"),
        provider=cfg.provider.id,  # type: ignore[arg-type]
        scopes=scopes,
        redirect_uri=redirect_uri,
        code_verifier=verifier,
        nonce=nonce,
        created_at=now,
        expires_at=now + cfg.pending_ttl,
        issuer=cfg.provider.issuer,
        extra={"principal_from_id_token": principal is None},
    )
    yield PutPending(pending)
    return AuthorizationRequest(
        url=url.get_secret_value(),
        state=state.get_secret_value(),
        expires_at=pending.expires_at,
        tenant=tenant,
        principal=principal,
        provider=cfg.provider.id,
        issuer=cfg.provider.issuer,
        scopes=scopes,
    )


def exchange_code_flow(
    cfg: FlowConfig,
    *,
    state: Secret | str,
    code: Secret | str,
    iss: str | None = None,
    callback_params: Mapping[str, str] | None = None,
) -> Flow[TokenRecord]:
    """Finish a login: redeem the single-use state, check ``iss``, redeem the code.

    ``state`` and ``code`` stay in :class:`Secret` wrappers (traceback locals never hold them
    raw); their values are read only where they are used.
    """
    state, code = Secret(state), Secret(code)
    if not state:
        raise AuthorizationFlowError("state_missing", "the callback carries no state")
    if not code:
        raise AuthorizationFlowError("invalid_request", "the callback carries no code")
    try:
        pending: PendingAuthorization | None = yield TakePending(
            PendingAuthorization.key_for(state.get_secret_value())
        )
    except CorruptRecord:
        pending = None
    if pending is None or pending.state != state:
        raise AuthorizationFlowError("state_unknown", "unknown, already used or expired state")
    now: float = yield Now()
    if now >= pending.expires_at:
        raise AuthorizationFlowError("state_expired", "the login took too long; start again")
    if pending.provider != cfg.provider.id:
        raise AuthorizationFlowError("state_unknown", "the state belongs to another provider")
    if cfg.tenant is not None and pending.tenant != cfg.tenant:  # J4: its own registration
        raise AuthorizationFlowError("tenant_mismatch", "the state belongs to another tenant")
    expected_issuer = pending.issuer
    if iss is not None:
        if expected_issuer is None or not hmac.compare_digest(
            iss.encode("utf-8", "surrogatepass"), expected_issuer.encode("utf-8", "surrogatepass")
        ):
            raise AuthorizationFlowError(
                "issuer_mismatch", "the authorization response came from another issuer"
            )
    elif cfg.provider.authorization_response_iss_parameter_supported:
        raise AuthorizationFlowError(
            "issuer_missing", "the provider always sends iss (RFC 9207) but this response has none"
        )
    request = oauth.token_request(
        cfg.provider,
        cfg.client,
        GrantType.AUTHORIZATION_CODE,
        oauth.authorization_code_params(
            code=code.get_secret_value(),
            redirect_uri=pending.redirect_uri,
            code_verifier=None
            if pending.code_verifier is None
            else pending.code_verifier.get_secret_value(),
        ),
        now=now,
    )
    response, now = yield from _send_token_request(
        cfg, request, pending, GrantType.AUTHORIZATION_CODE, now
    )
    parsed = oauth.parse_token_response(cfg.provider, response, now=now)

    extra: dict[str, JSONValue] = {}
    claims: dict[str, JSONValue] | None = None
    if parsed.id_token is not None and cfg.provider.issuer:
        claims = yield from _id_token_claims(
            cfg,
            parsed.id_token,
            nonce=revealed(pending.nonce),
            now=now,
        )
        extra["id_token_claims"] = claims
    elif pending.nonce is not None and pending.extra.get("principal_from_id_token"):
        raise AuthorizationFlowError(
            "id_token_invalid", "an ID token was expected but the provider sent none"
        )
    elif parsed.id_token is not None:  # no issuer to verify it against: never stored unchecked
        log.warning(
            "ID token from provider=%s not stored: the descriptor has no issuer to verify it",
            cfg.provider.id,
        )
        parsed = replace(parsed, id_token=None)
    if callback_params:
        wanted = set(cfg.provider.callback_params)
        captured = {k: v for k, v in callback_params.items() if k in wanted}
        if captured:
            extra["callback"] = dict(captured)

    principal = pending.principal
    if pending.extra.get("principal_from_id_token"):
        if claims is None or not isinstance(claims.get("sub"), str):
            raise AuthorizationFlowError("id_token_invalid", "the ID token has no subject")
        principal = _principal_from_sub(str(claims["sub"]))
    key = StoreKey.build(pending.tenant, principal, cfg.provider.id, pending.scopes)
    record = _new_record(
        key,
        parsed,
        pending.scopes,
        now,
        grant=GrantType.AUTHORIZATION_CODE.value,
        extra_metadata=extra,
    )
    stored: TokenRecord = yield Put(record)
    yield Emit(TokenIssued.for_key(key, now, stored.version, grant=record.grant))
    return stored


def _id_token_claims(
    cfg: FlowConfig, id_token: Secret, *, nonce: str | None, now: float
) -> Flow[dict[str, JSONValue]]:
    """Fetch the provider's JWKS and verify ``id_token`` with it (OIDC Core §3.1.3.7).

    A provider with an ``issuer`` but no ``jwks_uri`` cannot have its ID tokens verified:
    refused, never accepted unsigned (an ``alg=none`` token was accepted at login).
    """
    issuer, jwks_uri = cfg.provider.issuer, cfg.provider.jwks_uri
    if issuer is None or jwks_uri is None:
        raise AuthorizationFlowError(
            "id_token_invalid",
            f"provider {cfg.provider.id!r} sent an ID token but has no issuer and jwks_uri "
            "to verify it with: set both on its descriptor",
        )
    jwks_response = yield HttpRequest(
        "GET", jwks_uri, (("Accept", "application/json"),), purpose="jwks"
    )
    if jwks_response.status_code != 200:
        raise TransientProviderError("jwks_unavailable", status_code=jwks_response.status_code)
    try:
        jwks = jsonsafe.loads(jwks_response.body)
    except jsonsafe.JSONRejected:
        raise TransientProviderError("jwks_unavailable", status_code=200) from None
    return oauth.verify_id_token(
        id_token,
        jwks=jwks,
        issuer=issuer,
        client_id=cfg.client.client_id,
        nonce=nonce,
        now=now,
    )


def _refreshed_id_token(
    cfg: FlowConfig, record: TokenRecord, parsed: oauth.TokenResponse, now: float
) -> Flow[oauth.TokenResponse]:
    """Verify the ID token of a refresh response (OIDC Core §12.2), or leave it out.

    It must verify like a login's and name the same ``iss`` and ``sub`` as the stored one;
    otherwise :class:`AuthorizationFlowError`. One that cannot be checked (no issuer or
    JWKS configured, JWKS unreachable) is dropped, never stored: the stored one stays.
    """
    if parsed.id_token is None:
        return parsed
    reason = "no issuer and jwks_uri configured"
    if cfg.provider.issuer is not None and cfg.provider.jwks_uri is not None:
        try:
            claims = yield from _id_token_claims(cfg, parsed.id_token, nonce=None, now=now)
        except (TransientProviderError, TransportError) as exc:
            reason = type(exc).__name__
        else:
            original = record.metadata.get("id_token_claims")
            if isinstance(original, Mapping) and any(
                claims.get(name) != original.get(name) for name in ("iss", "sub")
            ):
                raise AuthorizationFlowError(
                    "id_token_invalid",
                    "the ID token of the refresh response names another issuer or subject "
                    "than the login's (OIDC Core §12.2)",
                )
            return parsed
    log.warning(
        "ID token of a refresh response for provider=%s not stored: cannot verify it (%s)",
        cfg.provider.id,
        reason,
    )
    return replace(parsed, id_token=None)


def _principal_from_sub(sub: str) -> PrincipalId:
    if sub == SERVICE_PRINCIPAL:  # a user can never take the app's own principal
        return PrincipalId("sub-" + hashlib.sha256(sub.encode()).hexdigest()[:40])
    try:
        return PrincipalId(sub)
    except BrokerError:
        return PrincipalId("sub-" + hashlib.sha256(sub.encode()).hexdigest()[:40])


# -- revocation -------------------------------------------------------------------------------
#: The metadata member of a queued revocation (no secret: the key it was for, the client that
#: must authenticate it, the attempts so far and when it was first tried).
_QUEUED: Final = "o2bm_revocation"

Transient: TypeAlias = TransportError | ProviderError


@dataclass(frozen=True, slots=True)
class RevocationDrain:
    """What one :meth:`Broker.drain_revocations` did with the revocation queue.

    ``delivered``: the provider took them (removed from the queue); ``retrying``: attempted
    and failed again, due again later; ``dropped``: given up after the last attempt;
    ``waiting``: not due yet (or beyond ``limit``). Revocations of other providers or other
    clients are not counted.
    """

    delivered: int = 0
    retrying: int = 0
    dropped: int = 0
    waiting: int = 0

    @property
    def pending(self) -> int:
        """Revocations still queued for this broker after the drain."""
        return self.retrying + self.waiting


@dataclass(frozen=True, slots=True)
class _Queued:
    entry: TokenRecord
    key: StoreKey
    attempts: int
    queued_at: float


def _targets(record: TokenRecord) -> list[tuple[Secret, str]]:
    """What to revoke, refresh token first (RFC 7009 §2.1: it takes the grant with it)."""
    targets: list[tuple[Secret, str]] = []
    if record.refresh_token is not None:
        targets.append((record.refresh_token, "refresh_token"))
    targets.append((record.access_token, "access_token"))
    return targets


def _revoke_at_provider(
    cfg: FlowConfig, provider: str, targets: list[tuple[Secret, str]]
) -> Flow[tuple[list[tuple[Secret, str]], Transient | None]]:
    """Send the revocations in order; returns what is left and why, or ``([], None)``.

    A 503/429 (RFC 7009 §2.2.1: the token may still be valid) or a network error stops at the
    token it hit. A redirect raises :class:`ProviderError` (never followed: SECURITY C7). Any
    other error answer counts as done (the provider will not take it, retrying cannot help).
    """
    for index, (secret, hint) in enumerate(targets):
        now: float = yield Now()
        request = oauth.revocation_request(
            cfg.provider, cfg.client, token=secret.get_secret_value(), token_type_hint=hint, now=now
        )
        try:
            response: HttpResponse = yield request
        except TransportError as exc:
            return targets[index:], exc
        if response.status_code == 503 or response.status_code == 429:
            return targets[index:], TransientProviderError(
                "temporarily_unavailable",
                status_code=response.status_code,
                retry_after=oauth.classify_error(response).retry_after,
            )
        if 300 <= response.status_code < 400:
            # Never followed (SECURITY C7: it would re-send the token elsewhere), and not a
            # success either: the token may still be live.
            raise ProviderError(
                "unexpected_redirect",
                error_description=f"the revocation endpoint of provider {provider!r} "
                "answered with a redirect, which is not followed; the token was kept. "
                "Check revocation_endpoint in the descriptor",
                status_code=response.status_code,
            )
        if response.status_code >= 400:
            log.warning(
                "revocation at provider=%s answered HTTP %s; removing locally anyway",
                provider,
                response.status_code,
            )
    return [], None


def _queue_entry(
    cfg: FlowConfig,
    record: TokenRecord,
    left: list[tuple[Secret, str]],
    *,
    attempts: int,
    queued_at: float,
    retry_at: float,
    original: StoreKey,
) -> TokenRecord:
    """The revoked record kept in the queue: only the tokens still to revoke, its next
    attempt as ``expires_at``; never usable (``revoked_at`` set, a tenant no caller can use,
    a fingerprint no scope set has)."""
    refresh = next((secret for secret, hint in left if hint == "refresh_token"), None)
    key = StoreKey(
        REVOCATION_TENANT,
        REVOCATION_PRINCIPAL,
        original.provider,
        hashlib.sha256(f"{original.id}|{secrets.token_hex(16)}".encode()).hexdigest()
        if record.key.tenant != REVOCATION_TENANT
        else record.key.scope_fingerprint,
    )
    info: dict[str, JSONValue] = {
        "key": dict(original.to_dict()),
        "client_id": cfg.client.client_id,
        "attempts": attempts,
        "queued_at": queued_at,
    }
    return replace(
        record,
        key=key,
        refresh_token=refresh,
        id_token=None,
        expires_at=retry_at,
        refresh_token_expires_at=None,
        metadata={_QUEUED: info},
        revoked_at=queued_at,
    )


def _queued(cfg: FlowConfig, entry: TokenRecord | None) -> _Queued | None:
    """The queue entry's bookkeeping, when it is this broker's to deliver."""
    if entry is None or entry.key.provider != cfg.provider.id:
        return None
    info = entry.metadata.get(_QUEUED)
    if not isinstance(info, dict) or info.get("client_id") != cfg.client.client_id:
        return None
    try:
        key = StoreKey.from_dict(info["key"])  # type: ignore[arg-type]
        attempts, queued_at = info["attempts"], info["queued_at"]
    except (BrokerError, KeyError, TypeError):
        return None
    if cfg.tenant is not None and key.tenant != cfg.tenant:  # another tenant's, same client
        return None
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        return None
    if isinstance(queued_at, bool) or not isinstance(queued_at, int | float):
        return None
    return _Queued(entry, key, attempts, float(queued_at))


def _retry_after(failure: BrokerError) -> float | None:
    return failure.retry_after if isinstance(failure, ProviderError) else None


def revoke_flow(cfg: FlowConfig, key: StoreKey, retry: RevocationRetry | None = None) -> Flow[bool]:
    """RFC 7009 at the provider (refresh token first), then remove the record locally.

    When the provider cannot take it now (503 or 429: RFC 7009 §2.2.1 says the token may still
    be valid; or a network error), the tokens still to revoke are queued in the store (under
    :data:`REVOCATION_TENANT`, shared by every process) for :func:`drain_revocations_flow`,
    the record is removed all the same (the user logged out: nothing may serve it any more),
    and :class:`RevocationQueued` is emitted instead of :class:`ConnectionRevoked`. A redirect
    keeps the record and raises :class:`ProviderError`. Returns whether a record was removed.
    """
    retry = retry or RevocationRetry()
    record = yield from _read(key)
    if record is None:
        return False
    left: list[tuple[Secret, str]] = []
    failure: Transient | None = None
    if cfg.provider.revocation_endpoint:
        left, failure = yield from _revoke_at_provider(cfg, key.provider, _targets(record))
    now: float = yield Now()
    retry_at = now
    if failure is not None:
        # Queued before the record goes: a crash in between leaves both, never neither.
        retry_at = now + retry.delay(1, _retry_after(failure))
        entry = _queue_entry(
            cfg, record, left, attempts=1, queued_at=now, retry_at=retry_at, original=key
        )
        yield CompareAndSwap(entry, None)
    yield Delete(key)
    yield DropUnsaved(record)  # a rotation held unsaved is revoked too: never written back
    if failure is None:
        yield Emit(ConnectionRevoked.for_key(key, now, record.version))
    else:
        log.warning(
            "revocation at provider=%s failed (%s): forgotten locally, queued for a retry in %.0fs",
            key.provider,
            type(failure).__name__,
            retry_at - now,
        )
        yield Emit(
            RevocationQueued.for_key(
                key,
                now,
                record.version,
                attempts=1,
                retry_at=retry_at,
                error=type(failure).__name__,
            )
        )
    return True


def drain_revocations_flow(
    cfg: FlowConfig, retry: RevocationRetry | None = None, *, limit: int = 100, final: bool = False
) -> Flow[RevocationDrain]:
    """Deliver the queued revocations of this provider and client that are due.

    Each due entry is claimed first with a compare-and-swap that moves its next attempt
    ``lock_ttl`` seconds on (so of several processes draining at once, one sends it), then
    sent. Delivered: removed from the queue, :class:`ConnectionRevoked` emitted. Failed again:
    due again after the back-off (never before ``Retry-After``), :class:`RevocationQueued`;
    after the last attempt (``retry.max_attempts`` / ``retry.max_age``) dropped, with an error
    log and :class:`RevocationDropped`. At most ``limit`` entries are attempted.

    ``final`` (off-boarding): every entry is attempted now, due or not and without ``limit``,
    and one that fails is dropped at once: the queue keeps nothing of it.
    """
    retry = retry or RevocationRetry()
    keys: list[StoreKey] = yield ListKeys(REVOCATION_TENANT, REVOCATION_PRINCIPAL)
    found: list[_Queued] = []
    for qkey in keys:
        if qkey.provider != cfg.provider.id:
            continue
        queued = _queued(cfg, (yield from _read(qkey)))
        if queued is not None:
            found.append(queued)
    found.sort(key=lambda q: q.entry.expires_at or 0.0)
    now: float = yield Now()
    delivered = retrying = dropped = waiting = attempted = 0
    for queued in found:
        if not final and ((queued.entry.expires_at or 0.0) > now or attempted >= limit):
            waiting += 1
            continue
        claim = replace(queued.entry, expires_at=now + cfg.lock_ttl)
        claimed: TokenRecord | None = yield CompareAndSwap(claim, queued.entry.version)
        if claimed is None:  # another process took it (or delivered it) meanwhile
            continue
        attempted += 1
        failure: BrokerError | None
        try:
            left, failure = yield from _revoke_at_provider(
                cfg, queued.key.provider, _targets(claimed)
            )
        except BrokerError as exc:
            # A redirect, or a descriptor that lost its revocation_endpoint: not a success,
            # and an attempt that counts (so such an entry is dropped in the end, not kept).
            left, failure = _targets(claimed), exc
        now = yield Now()
        if failure is None:
            yield Delete(claimed.key, expected_version=claimed.version)
            yield Emit(ConnectionRevoked.for_key(queued.key, now, None))
            delivered += 1
            continue
        attempts = queued.attempts + 1
        error = type(failure).__name__
        if final or retry.gives_up(attempts, now - queued.queued_at):
            yield Delete(claimed.key, expected_version=claimed.version)
            log.error(
                "revocation at provider=%s for tenant=%s dropped after %d attempts over %.0fs "
                "(%s): the token stays valid at the provider until it expires",
                queued.key.provider,
                queued.key.tenant,
                attempts,
                now - queued.queued_at,
                error,
            )
            yield Emit(
                RevocationDropped.for_key(queued.key, now, None, attempts=attempts, error=error)
            )
            dropped += 1
            continue
        retry_at = now + retry.delay(attempts, _retry_after(failure))
        again = _queue_entry(
            cfg,
            claimed,
            left,
            attempts=attempts,
            queued_at=queued.queued_at,
            retry_at=retry_at,
            original=queued.key,
        )
        yield CompareAndSwap(again, claimed.version)
        yield Emit(
            RevocationQueued.for_key(
                queued.key, now, None, attempts=attempts, retry_at=retry_at, error=error
            )
        )
        retrying += 1
    return RevocationDrain(delivered, retrying, dropped, waiting)


# -- off-boarding -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What :meth:`Broker.forget_principal` (or an off-boarding) did. No secret in it.

    ``revoked``: the provider took the revocation (RFC 7009, refresh token first).
    ``revocation_failed``: the provider did not take it (down, 503/429, a redirect, an error
    answer): the record is deleted all the same. ``queued`` (a subset of ``revocation_failed``):
    failures the revocation queue retries (:meth:`Broker.drain_revocations`).
    ``unrevocable``: the provider has no revocation endpoint (or no registration is known for
    it, or the record was unreadable): deleted only. ``deleted``: records removed from the store.
    """

    revoked: tuple[StoreKey, ...] = ()
    revocation_failed: tuple[StoreKey, ...] = ()
    queued: tuple[StoreKey, ...] = ()
    unrevocable: tuple[StoreKey, ...] = ()
    deleted: int = 0

    def __add__(self, other: ForgetReport) -> ForgetReport:
        return ForgetReport(
            self.revoked + other.revoked,
            self.revocation_failed + other.revocation_failed,
            self.queued + other.queued,
            self.unrevocable + other.unrevocable,
            self.deleted + other.deleted,
        )

    @property
    def complete(self) -> bool:
        """Every token found was revoked at its provider (or the provider cannot revoke)."""
        return not self.revocation_failed


def _forget_key(
    cfg: FlowConfig, key: StoreKey, retry: RevocationRetry, *, queue: bool
) -> Flow[str]:
    """Revoke ``key``'s tokens at the provider; the caller deletes the record.

    Returns ``"absent"``, ``"revoked"``, ``"queued"``, ``"failed"`` or ``"unrevocable"``.
    A failure never raises (the deletion goes ahead): a transient one is queued when ``queue``
    (the revocation queue of :func:`revoke_flow`), any other one only reported.
    """
    record = yield from _read(key)
    if record is None:
        return "absent"
    yield DropUnsaved(record)  # a rotation held unsaved is forgotten too: never written back
    if not cfg.provider.revocation_endpoint:
        now: float = yield Now()
        yield Emit(ConnectionRevoked.for_key(key, now, record.version))
        return "unrevocable"
    failure: BrokerError | None
    try:
        left, failure = yield from _revoke_at_provider(cfg, key.provider, _targets(record))
    except BrokerError as exc:  # a redirect: never followed, not a success
        left, failure = _targets(record), exc
    now = yield Now()
    if failure is None:
        yield Emit(ConnectionRevoked.for_key(key, now, record.version))
        return "revoked"
    error = type(failure).__name__
    if queue and isinstance(failure, TransportError | TransientProviderError):
        retry_at = now + retry.delay(1, _retry_after(failure))
        entry = _queue_entry(
            cfg, record, left, attempts=1, queued_at=now, retry_at=retry_at, original=key
        )
        yield CompareAndSwap(entry, None)
        yield Emit(
            RevocationQueued.for_key(
                key, now, record.version, attempts=1, retry_at=retry_at, error=error
            )
        )
        return "queued"
    log.warning(
        "revocation at provider=%s failed (%s) while forgetting a connection: deleted locally; "
        "the token stays valid at the provider until it expires",
        key.provider,
        error,
    )
    yield Emit(RevocationDropped.for_key(key, now, record.version, attempts=1, error=error))
    return "failed"


def forget_keys_flow(
    cfg: FlowConfig,
    keys: tuple[StoreKey, ...],
    retry: RevocationRetry | None = None,
    *,
    queue: bool = True,
) -> Flow[ForgetReport]:
    """Revoke every key's tokens at the provider (refresh token first), then delete the
    records in one bulk store call (:class:`DeleteKeys`). Keys of other providers are not
    revoked by this broker's client: only deleted, and reported ``unrevocable``."""
    retry = retry or RevocationRetry()
    found: dict[str, list[StoreKey]] = {
        "revoked": [],
        "queued": [],
        "failed": [],
        "unrevocable": [],
        "absent": [],
    }
    for key in keys:
        if key.provider != cfg.provider.id or key.tenant == REVOCATION_TENANT:
            found["unrevocable"].append(key)
            continue
        outcome = yield from _forget_key(cfg, key, retry, queue=queue)
        found[outcome].append(key)
    deleted: int = (yield DeleteKeys(tuple(keys))) if keys else 0
    return ForgetReport(
        revoked=tuple(found["revoked"]),
        revocation_failed=tuple(found["queued"] + found["failed"]),
        queued=tuple(found["queued"]),
        unrevocable=tuple(found["unrevocable"]),
        deleted=deleted,
    )


def forget_principal_flow(
    cfg: FlowConfig,
    tenant: TenantId,
    principal: PrincipalId,
    retry: RevocationRetry | None = None,
) -> Flow[ForgetReport]:
    """Every connection of (tenant, principal) at this provider: revoked, then deleted."""
    listed: list[StoreKey] = yield ListKeys(tenant, principal)
    keys = tuple(k for k in listed if k.provider == cfg.provider.id)
    return (yield from forget_keys_flow(cfg, keys, retry))
