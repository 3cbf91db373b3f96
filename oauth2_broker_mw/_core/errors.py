"""The exception tree. Owns every error type the library raises; imports nothing but the model.

No exception message ever contains a token, a client secret, a code, a verifier or a state:
constructors take only non-secret fields, and provider error bodies are truncated and redacted.

::

    BrokerError
    ├── ConfigurationError (also ValueError)  our caller's mistake, found at build or call time
    │   └── InvalidIdentifier                  a tenant / principal / provider id or scope is bad
    ├── UnknownTenant                          the tenant does not exist (refused before any I/O)
    ├── ProviderNotEnabled                     the provider is not enabled for that tenant
    ├── AuthorizationRequired                  nobody has granted access for this key (yet/anymore)
    ├── AuthorizationFlowError                 a login transaction failed; ``.code`` says why
    ├── InsufficientScope                      required scopes were not granted
    ├── UnsupportedTokenType                   the provider issued a token type we cannot use
    ├── StorageError                           the store failed; ``.retryable`` tells if it may pass
    │   ├── StoreUnavailable                   down, slow, connection lost (retryable)
    │   └── CorruptRecord                      a row that cannot be decoded (treated as absent)
    ├── RefreshTimeout                         waited too long for another refresher's result
    ├── TransportError                         could not talk to the provider (retryable)
    └── ProviderError                          the provider said no (RFC 6749 §5.2 fields)
        ├── InvalidGrant                       code / refresh token invalid, expired or reused
        ├── InvalidClient                      client authentication failed
        ├── InvalidScopeError                  the provider rejected the requested scope
        ├── UnauthorizedClient                 this client may not use this grant
        ├── TransientProviderError             5xx, 429, HTML pages, temporarily_unavailable
        │   └── RateLimited                    no request sent: provider back-off or budget spent
        └── MalformedResponse                  a success status with a body we cannot use
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Iterable
from typing import ParamSpec
from typing import TypeVar

__all__ = [
    "AuthorizationFlowError",
    "AuthorizationRequired",
    "BrokerError",
    "ConfigurationError",
    "CorruptRecord",
    "InsufficientScope",
    "InvalidClient",
    "InvalidGrant",
    "InvalidIdentifier",
    "InvalidScopeError",
    "MalformedResponse",
    "ProviderError",
    "ProviderNotEnabled",
    "RateLimited",
    "RefreshTimeout",
    "StorageError",
    "StoreUnavailable",
    "TransientProviderError",
    "TransportError",
    "UnauthorizedClient",
    "UnknownTenant",
    "UnsafeRequest",
    "UnsupportedTokenType",
    "sealed",
    "seals",
    "seals_errors",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_E = TypeVar("_E", bound=BaseException)


class BrokerError(Exception):
    """Root of every error raised by oauth2-broker-mw."""

    retryable: bool = False


class ConfigurationError(BrokerError, ValueError):
    """The caller configured or called the broker wrongly (not the provider's fault)."""


class UnsafeRequest(ConfigurationError):
    """A request BrokerAuth was asked to sign would expose a token (e.g. one in its URL)."""


class InvalidIdentifier(ConfigurationError):
    """A tenant, principal or provider id, or a scope token, is not acceptable."""


class UnknownTenant(BrokerError):
    """The tenant is not one the application knows; nothing was redirected, called or stored."""

    def __init__(self, tenant: str, reason: str = "no such tenant") -> None:
        self.tenant = tenant
        super().__init__(
            f"unknown tenant {tenant!r}: {reason} (add it to the Registry's tenants= or "
            f"registrations=, or make the resolver answer for it)"
        )


class ProviderNotEnabled(BrokerError):
    """The tenant exists but has no registration for this provider."""

    def __init__(self, tenant: str, provider: str) -> None:
        self.tenant = tenant
        self.provider = provider
        super().__init__(
            f"provider {provider!r} is not enabled for tenant {tenant!r} (give the Registry a "
            f"Registration for ({tenant!r}, {provider!r}))"
        )


class AuthorizationRequired(BrokerError):
    """No usable grant exists for this key: a user must log in (or log in again)."""

    def __init__(
        self,
        *,
        tenant: str,
        principal: str,
        provider: str,
        scopes: Iterable[str],
        reason: str = "no stored token and no grant the broker can run on its own",
    ) -> None:
        self.tenant = tenant
        self.principal = principal
        self.provider = provider
        self.scopes = tuple(scopes)
        self.reason = reason
        super().__init__(
            f"authorization required for tenant={tenant!r} principal={principal!r} "
            f"provider={provider!r} scopes={' '.join(self.scopes)!r}: {reason}"
        )


class AuthorizationFlowError(BrokerError):
    """A login (authorization-code) transaction failed.

    ``code`` is machine-readable: ``state_missing``, ``state_unknown``, ``state_expired``,
    ``state_mismatch``, ``issuer_mismatch``, ``issuer_missing``, ``duplicate_parameter``,
    ``authorization_denied`` (the provider sent ``error=...``), ``nonce_mismatch``,
    ``id_token_invalid``, ``invalid_request``.
    """

    def __init__(self, code: str, message: str, *, provider_error: str | None = None) -> None:
        self.code = code
        self.provider_error = provider_error
        super().__init__(f"{code}: {message}")


class InsufficientScope(BrokerError):
    """The provider granted fewer scopes than the caller marked as required."""

    def __init__(self, *, missing: Iterable[str], granted: Iterable[str]) -> None:
        self.missing = tuple(sorted(missing))
        self.granted = tuple(sorted(granted))
        super().__init__(
            f"required scopes not granted: {' '.join(self.missing)!r} "
            f"(granted: {' '.join(self.granted)!r})"
        )


class UnsupportedTokenType(BrokerError):
    """RFC 6749 §7.1: the client must not use a token whose type it does not understand."""

    def __init__(self, token_type: str, *, reason: str | None = None) -> None:
        self.token_type = token_type[:40]
        message = f"unsupported token type {self.token_type!r}"
        super().__init__(f"{message}: {reason}" if reason else message)


class StorageError(BrokerError):
    """The token store failed."""


class StoreUnavailable(StorageError):
    """The store is down, slow or dropped its connection; the operation may succeed later."""

    retryable = True


class CorruptRecord(StorageError):
    """A stored row could not be decoded or decrypted; it is treated as absent."""


class RefreshTimeout(BrokerError):
    """Another process holds the refresh lock and its result did not arrive in time."""

    retryable = True


class TransportError(BrokerError):
    """The provider could not be reached (connect, read, TLS, timeout)."""

    retryable = True


class ProviderError(BrokerError):
    """The provider answered with an error (RFC 6749 §5.2)."""

    #: what to do, appended to the message (names parameters, never a value)
    hint: str = ""

    def __init__(
        self,
        error: str,
        *,
        error_description: str | None = None,
        error_uri: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        body_preview: str | None = None,
    ) -> None:
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri
        self.status_code = status_code
        self.retry_after = retry_after
        self.body_preview = body_preview
        parts = [f"provider error {error!r}"]
        if status_code is not None:
            parts.append(f"(HTTP {status_code})")
        if error_description:
            parts.append(f": {error_description[:200]}")
        if retry_after is not None:
            parts.append(f"; retry after {retry_after:g}s")
        message = " ".join(parts)
        super().__init__(f"{message}; {self.hint}" if self.hint else message)


class InvalidGrant(ProviderError):
    """The code or refresh token is invalid, expired, revoked or was already used."""


class InvalidClient(ProviderError):
    """Client authentication failed."""

    hint = (
        "the provider did not accept this client: check the Broker's client_id and "
        "client_secret (or private_key) against the provider's app registration, and the "
        "descriptor's client_auth_method"
    )


class InvalidScopeError(ProviderError):
    """The provider rejected the requested scope."""


class UnauthorizedClient(ProviderError):
    """The client is not allowed to use this grant type."""


class TransientProviderError(ProviderError):
    """5xx, 429, ``temporarily_unavailable``, or a non-OAuth (HTML) error page; may pass."""

    retryable = True


class MalformedResponse(ProviderError):
    """A success status with a body we cannot use (no ``access_token``, not JSON or form)."""


class RateLimited(TransientProviderError):
    """No request was sent to the token endpoint: ``retry_after`` seconds must pass first.

    ``reason`` is ``"backoff"`` (the provider answered 429/503 with ``Retry-After`` to some
    caller, in any process sharing the store) or ``"policy"`` (the rate-limit policy's budget
    for this tenant and provider is spent). ``status_code`` is ``None``: the provider was not
    asked.
    """

    def __init__(self, provider: str, retry_after: float, *, reason: str = "backoff") -> None:
        super().__init__("rate_limited", retry_after=retry_after)
        self.provider = provider
        self.reason = reason
        why = (
            "the provider asked every caller to back off (429/503 with Retry-After)"
            if reason == "backoff"
            else "the rate-limit budget for this tenant and provider is spent"
        )
        self.args = (
            f"no token request sent to provider {provider!r}: {why}; "
            f"retry after {retry_after:.3g}s",
        )


def sealed(error: _E) -> _E:
    """``error`` cut loose from what it was raised through: its traceback, ``__cause__`` and
    ``__context__`` are dropped, so an error reporter that records frame locals or walks the
    exception chain never reaches the raw token body, stored row or ID token that the frames
    below held (a ``JSONDecodeError`` even keeps the whole document in ``.doc``). The message
    still says what was wrong; it never quotes a value."""
    error.__traceback__ = None
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = False
    return error


def seals(
    *kinds: type[BrokerError],
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """For a function whose frames hold raw secrets (a token response being parsed, a stored
    row being decoded): an error of ``kinds`` leaves it :func:`sealed`. The function's own
    arguments must be safe to show (``repr`` of an ``HttpResponse`` gives only its status
    and size; a ``StoreKey`` holds no secret)."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def sealing(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return function(*args, **kwargs)
            except kinds as exc:
                raise sealed(exc) from None

        return sealing

    return decorate


def seals_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """:func:`seals` every :class:`BrokerError` of ``function``."""
    return seals(BrokerError)(function)
