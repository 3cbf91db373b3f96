"""oauth2-broker-mw: a multi-tenant OAuth 2.0 token broker.

The public API lives here; everything else is private (``_core``, ``_drivers``) or in a
subpackage with its own optional extra (``stores.redis``, ``stores.postgres``,
``middleware``, ``testing``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core.errors import AuthorizationFlowError
    from ._core.errors import AuthorizationRequired
    from ._core.errors import BrokerError
    from ._core.errors import ConfigurationError
    from ._core.errors import CorruptRecord
    from ._core.errors import InsufficientScope
    from ._core.errors import InvalidClient
    from ._core.errors import InvalidGrant
    from ._core.errors import InvalidIdentifier
    from ._core.errors import InvalidScopeError
    from ._core.errors import MalformedResponse
    from ._core.errors import ProviderError
    from ._core.errors import ProviderNotEnabled
    from ._core.errors import RateLimited
    from ._core.errors import RefreshTimeout
    from ._core.errors import StorageError
    from ._core.errors import StoreUnavailable
    from ._core.errors import TransientProviderError
    from ._core.errors import TransportError
    from ._core.errors import UnauthorizedClient
    from ._core.errors import UnknownTenant
    from ._core.errors import UnsupportedTokenType
    from ._core.flows import AuthorizationRequest
    from ._core.model import Lease
    from ._core.model import PendingAuthorization
    from ._core.model import PrincipalId
    from ._core.model import ProviderId
    from ._core.model import ScopeSet
    from ._core.model import Secret
    from ._core.model import StoreKey
    from ._core.model import TenantId
    from ._core.model import TokenRecord
    from ._core.model import TokenStatus
    from ._core.provider import BodyFormat
    from ._core.provider import ClientAuthMethod
    from ._core.provider import ExpiryPolicy
    from ._core.provider import GrantType
    from ._core.provider import PkceMode
    from ._core.provider import ProviderDescriptor
    from .auth import BrokerAuth
    from .auth import InsufficientScopeEvent
    from .broker import Broker
    from .discovery import adiscover
    from .discovery import discover
    from .registry import Registration
    from .registry import Registry
    from .stores import MemoryStore
    from .stores import SQLiteStore
    from .stores import TokenStore

_LAZY: dict[str, str] = {
    "AuthorizationFlowError": "._core.errors",
    "AuthorizationRequest": "._core.flows",
    "AuthorizationRequired": "._core.errors",
    "BodyFormat": "._core.provider",
    "Broker": ".broker",
    "BrokerAuth": ".auth",
    "BrokerError": "._core.errors",
    "ClientAuthMethod": "._core.provider",
    "ConfigurationError": "._core.errors",
    "CorruptRecord": "._core.errors",
    "ExpiryPolicy": "._core.provider",
    "GrantType": "._core.provider",
    "InsufficientScope": "._core.errors",
    "InsufficientScopeEvent": ".auth",
    "InvalidClient": "._core.errors",
    "InvalidGrant": "._core.errors",
    "InvalidIdentifier": "._core.errors",
    "InvalidScopeError": "._core.errors",
    "Lease": "._core.model",
    "MalformedResponse": "._core.errors",
    "MemoryStore": ".stores",
    "PendingAuthorization": "._core.model",
    "PkceMode": "._core.provider",
    "PrincipalId": "._core.model",
    "ProviderDescriptor": "._core.provider",
    "ProviderError": "._core.errors",
    "ProviderNotEnabled": "._core.errors",
    "RateLimited": "._core.errors",
    "Registration": ".registry",
    "Registry": ".registry",
    "UnknownTenant": "._core.errors",
    "ProviderId": "._core.model",
    "RefreshTimeout": "._core.errors",
    "SQLiteStore": ".stores",
    "ScopeSet": "._core.model",
    "Secret": "._core.model",
    "StorageError": "._core.errors",
    "StoreKey": "._core.model",
    "StoreUnavailable": "._core.errors",
    "TenantId": "._core.model",
    "TokenRecord": "._core.model",
    "TokenStatus": "._core.model",
    "TokenStore": ".stores",
    "TransientProviderError": "._core.errors",
    "TransportError": "._core.errors",
    "adiscover": ".discovery",
    "discover": ".discovery",
    "UnauthorizedClient": "._core.errors",
    "UnsupportedTokenType": "._core.errors",
}

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


def __getattr__(name: str) -> object:
    """Import public names on first use: ``import oauth2_broker_mw`` stays cheap (the pytest
    plugin loads it in every test run of every project that installs us)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
