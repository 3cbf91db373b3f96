"""The public API is exactly what ``__all__`` says: nothing leaks, nothing vanishes."""

from __future__ import annotations

import ast
from pathlib import Path

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


def test_type_checking_imports_lazy_table_and_all_name_the_same_members() -> None:
    """``__init__`` states each public name three times, for three readers (type checkers,
    the lazy ``__getattr__``, ``import *``): they must agree, module included."""
    tree = ast.parse(Path(oauth2_broker_mw.__file__).read_text())
    (block,) = (
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    static = {
        alias.name: "." * node.level + (node.module or "")
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert static == oauth2_broker_mw._LAZY
    assert sorted([*oauth2_broker_mw._LAZY, "__version__"]) == oauth2_broker_mw.__all__
