"""The public API is exactly what ``__all__`` says: nothing leaks, nothing vanishes."""

from __future__ import annotations

import oauth2_broker_mw

EXPECTED = [
    "AuthorizationFlowError",
    "AuthorizationRequest",
    "AuthorizationRequired",
    "BodyFormat",
    "Broker",
    "BrokerAuth",
    "BrokerError",
    "ClientAuthMethod",
    "ConfigurationError",
    "CorruptRecord",
    "ExpiryPolicy",
    "GrantType",
    "InsufficientScope",
    "InsufficientScopeEvent",
    "InvalidClient",
    "InvalidGrant",
    "InvalidIdentifier",
    "InvalidScopeError",
    "Lease",
    "MalformedResponse",
    "MemoryStore",
    "PendingAuthorization",
    "PkceMode",
    "PrincipalId",
    "ProviderDescriptor",
    "ProviderError",
    "ProviderId",
    "ProviderNotEnabled",
    "RateLimited",
    "RefreshTimeout",
    "Registration",
    "Registry",
    "SQLiteStore",
    "ScopeSet",
    "Secret",
    "StorageError",
    "StoreKey",
    "StoreUnavailable",
    "TenantId",
    "TokenRecord",
    "TokenStatus",
    "TokenStore",
    "TransientProviderError",
    "TransportError",
    "UnauthorizedClient",
    "UnknownTenant",
    "UnsupportedTokenType",
    "__version__",
    "adiscover",
    "discover",
]


def test_all_is_pinned_and_sorted() -> None:
    assert oauth2_broker_mw.__all__ == EXPECTED
    assert sorted(oauth2_broker_mw.__all__) == oauth2_broker_mw.__all__


def test_every_exported_name_exists_and_belongs_to_us() -> None:
    for name in oauth2_broker_mw.__all__:
        member = getattr(oauth2_broker_mw, name)
        if name != "__version__":
            assert member.__module__.startswith("oauth2_broker_mw"), name


def test_every_error_derives_from_broker_error() -> None:
    for name in oauth2_broker_mw.__all__:
        member = getattr(oauth2_broker_mw, name)
        if isinstance(member, type) and issubclass(member, Exception):
            assert issubclass(member, oauth2_broker_mw.BrokerError), name
