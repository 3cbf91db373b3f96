"""The conformance suite on the stores shipped in the core package, plus MemoryStore details."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oauth2_broker_mw.stores import MemoryStore, SQLiteStore
from oauth2_broker_mw.testing.conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        store = SQLiteStore(tmp_path / "tokens.db")
        yield store
        store.close()
