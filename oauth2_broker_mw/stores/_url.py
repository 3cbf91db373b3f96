"""``open_store(url)``: a store named by a URL.

Owns: the URL schemes and how each one maps to a store constructor. Drivers are imported only
for the scheme asked for, so ``memory://`` and ``sqlite://`` work with no extras installed.

=================================  =============================================================
``memory://``                      :class:`MemoryStore` (this process only)
``sqlite:///tokens.db``            :class:`SQLiteStore`, path relative to the working directory
``sqlite:////var/lib/x/tokens.db`` the same, absolute path (four slashes, as in SQLAlchemy)
``redis://host:6379/0``            :class:`RedisStore`; ``rediss://`` for TLS;
                                   ``?prefix=app:`` sets the key prefix,
                                   ``?cluster=1`` talks to a Redis Cluster
``postgresql://user@host/db``      :class:`PostgresStore` (also ``postgres://``);
                                   ``?schema=name`` sets the schema
=================================  =============================================================

With ``keyring``, the store is wrapped in :class:`~oauth2_broker_mw.stores.encrypted.
EncryptedStore`. Must not import: redis, psycopg, cryptography at module level.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from .._core.errors import ConfigurationError
from ._commands import redact_url
from .base import TokenStore

__all__ = ["StoreURLError", "open_store"]

SCHEMES = ("memory://", "sqlite:///", "redis://", "rediss://", "postgresql://", "postgres://")


class StoreURLError(ConfigurationError):
    """A store URL names no known scheme or is malformed (the message never shows a password)."""


def _pop_query(url: str, name: str) -> tuple[str, str | None]:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    values = [v for k, v in query if k == name]
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != name])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), (values[-1] if values else None)


def open_store(url: str, *, keyring: Any = None, **options: Any) -> TokenStore:
    """The store ``url`` names (see the module docs for the schemes).

    ``keyring`` (an :class:`~oauth2_broker_mw.stores.encrypted.KeyRing`) wraps it in an
    ``EncryptedStore``; other keyword ``options`` go to the store's constructor.
    Raises :class:`StoreURLError` for an unknown or malformed URL.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(
            f"not a store URL: {redact_url(str(url))[:200]!r}; use one of {', '.join(SCHEMES)}"
        )
    scheme = url.split("://", 1)[0].lower()
    store: TokenStore
    if scheme == "memory":
        from .memory import MemoryStore

        if url.lower() != "memory://":
            raise StoreURLError(f"memory:// takes no host, path or options; got {url[:200]!r}")
        store = MemoryStore(**options)
    elif scheme == "sqlite":
        from .sqlite import SQLiteStore

        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StoreURLError(
                f"an SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db; "
                f"got {url[:200]!r}"
            )
        store = SQLiteStore(urllib.parse.unquote(url[len("sqlite:///") :]), **options)
    elif scheme in ("redis", "rediss"):
        from .redis import RedisStore

        rest, prefix = _pop_query(url, "prefix")
        if prefix is not None:
            options.setdefault("prefix", prefix)
        rest, cluster = _pop_query(rest, "cluster")
        if cluster is not None:
            options.setdefault("cluster", cluster.lower() in ("1", "true", "yes"))
        store = RedisStore(rest, **options)
    elif scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        rest, schema = _pop_query(url, "schema")
        if schema is not None:
            options.setdefault("schema", schema)
        store = PostgresStore(rest, **options)
    else:
        raise StoreURLError(
            f"unknown store URL scheme {scheme[:40]!r} in {redact_url(url)[:200]!r}; "
            f"use one of {', '.join(SCHEMES)}"
        )
    if keyring is not None:
        from .encrypted import EncryptedStore

        store = EncryptedStore(store, keyring)
    return store
