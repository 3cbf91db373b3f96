"""Token stores: the contract, the in-process store and the embedded SQLite store.

Owns: the public names of this package. Stores that need optional extras (``redis``,
``postgres``, encryption) live in their own modules and are imported from there, never
from here, so ``import oauth2_broker_mw.stores`` works with no extras installed.
Must not import: redis, psycopg, cryptography.
"""

from __future__ import annotations

from ._url import StoreURLError
from ._url import open_store
from .base import DueRecord
from .base import RefreshIndex
from .base import ThreadedAsyncMixin
from .base import TokenStore
from .base import acheck_store
from .base import check_store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "DueRecord",
    "MemoryStore",
    "RefreshIndex",
    "SQLiteStore",
    "StoreURLError",
    "ThreadedAsyncMixin",
    "TokenStore",
    "acheck_store",
    "check_store",
    "open_store",
]
