"""oauth2-broker-mw: a multi-tenant OAuth 2.0 token broker.

The public API lives here; everything else is private (``_core``, ``_drivers``) or in a
subpackage with its own optional extra (``stores.redis``, ``stores.postgres``,
``middleware``, ``testing``).
"""

from __future__ import annotations

from ._core.errors import (
    AuthorizationFlowError,
    AuthorizationRequired,
    BrokerError,
    ConfigurationError,
    CorruptRecord,
    InsufficientScope,
    InvalidClient,
    InvalidGrant,
    InvalidIdentifier,
    InvalidScopeError,
    MalformedResponse,
    ProviderError,
    RefreshTimeout,
    StorageError,
    StoreUnavailable,
    TransientProviderError,
    TransportError,
    UnauthorizedClient,
    UnsupportedTokenType,
)
from ._core.flows import AuthorizationRequest
from ._core.model import (
    Lease,
    PendingAuthorization,
    PrincipalId,
    ProviderId,
    ScopeSet,
    Secret,
    StoreKey,
    TenantId,
    TokenRecord,
    TokenStatus,
)
from ._core.provider import (
    BodyFormat,
    ClientAuthMethod,
    ExpiryPolicy,
    GrantType,
    PkceMode,
    ProviderDescriptor,
)
from .auth import BrokerAuth, InsufficientScopeEvent
from .broker import Broker
from .stores import MemoryStore, SQLiteStore, TokenStore

__version__ = "0.1.0.dev0"

__all__ = [
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
    "RefreshTimeout",
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
    "UnsupportedTokenType",
    "__version__",
]
