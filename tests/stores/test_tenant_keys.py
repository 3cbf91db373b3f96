"""Per-tenant data keys and crypto-shredding (SECURITY J9): ``EncryptedStore(tenant_keys=True)``
seals each tenant's rows with a data key of its own (wrapped by the key ring, kept in the
inner store); ``delete_tenant_key`` makes that tenant's rows unreadable for good, in this
process and in another one, while other tenants read on. Real parts: SQLite, PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _services import postgres_drop_schema
from _services import require_postgres
from _services import unique_name

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import CorruptRecord
from oauth2_broker_mw import Secret
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw import TokenStore
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw.stores.encrypted import EncryptedStore
from oauth2_broker_mw.stores.encrypted import KeyRing
from oauth2_broker_mw.stores.encrypted import TenantKeyDeleted
from oauth2_broker_mw.stores.encrypted import envelope_key_id
from oauth2_broker_mw.testing.mock_provider import MockProvider

RING = {"k1": b"k" * 32}
SCOPES = ["openid"]


@pytest.fixture(params=["sqlite", "postgres"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    if request.param == "sqlite":
        sqlite = SQLiteStore(str(tmp_path / "tokens.db"))
        yield sqlite
        sqlite.close()
    else:
        from oauth2_broker_mw.stores.postgres import PostgresStore

        schema = unique_name("tkeys")
        pg = PostgresStore(require_postgres(), schema=schema)
        yield pg
        pg.close()
        postgres_drop_schema(schema)


def record(tenant: str, principal: str) -> TokenRecord:
    now = time.time()
    return TokenRecord(
        key=StoreKey.build(tenant, principal, "mock", SCOPES),
        access_token=Secret(f"at-{tenant}-{principal}"),
        refresh_token=Secret(f"rt-{tenant}-{principal}"),
        issued_at=now,
        expires_at=now + 3600,
        scopes=ScopeSet.of(SCOPES),
        requested_scopes=ScopeSet.of(SCOPES),
    )


def test_deleting_a_tenant_key_shreds_that_tenant_only(inner: TokenStore) -> None:
    store = EncryptedStore(inner, RING, "k1", tenant_keys=True)
    acme, globex = record("acme", "alice"), record("globex", "gina")
    store.put(acme)
    store.put(globex)
    # each tenant's row is sealed with its own data key, not with the ring's key
    kids = {
        envelope_key_id(inner.get(r.key).access_token.get_secret_value()) for r in (acme, globex)
    }  # type: ignore[union-attr]
    assert len(kids) == 2 and "k1" not in kids
    other_process = EncryptedStore(inner, KeyRing(RING, "k1"), tenant_keys=True)
    assert other_process.get(acme.key).access_token.get_secret_value() == "at-acme-alice"  # type: ignore[union-attr]

    assert store.delete_tenant_key("acme") is True

    with pytest.raises(TenantKeyDeleted):
        store.get(acme.key)
    assert issubclass(TenantKeyDeleted, CorruptRecord)  # the broker treats it as absent
    fresh = EncryptedStore(inner, KeyRing(RING, "k1"), tenant_keys=True)  # no cached key
    with pytest.raises(TenantKeyDeleted):
        fresh.get(acme.key)
    # the same key ring cannot open it either: the data key is gone, not just forgotten
    with pytest.raises(CorruptRecord):
        EncryptedStore(inner, RING, "k1").get(acme.key)
    # other tenants are fine
    assert store.get(globex.key).access_token.get_secret_value() == "at-globex-gina"  # type: ignore[union-attr]
    assert fresh.get(globex.key).refresh_token.get_secret_value() == "rt-globex-gina"  # type: ignore[union-attr]
    # a new write for the shredded tenant gets a new data key and reads back
    store.put(record("acme", "alice"))
    assert fresh.get(acme.key).access_token.get_secret_value() == "at-acme-alice"  # type: ignore[union-attr]
    assert store.delete_tenant_key("nosuchtenant") is False


def test_a_shredded_tenant_needs_a_new_login(tmp_path: Path) -> None:
    provider = MockProvider()
    inner = SQLiteStore(str(tmp_path / "tokens.db"))
    store = EncryptedStore(inner, RING, "k1", tenant_keys=True)
    issued = provider.issue_tokens(subject="alice", scopes=SCOPES)
    now = time.time()
    store.put(
        TokenRecord(
            key=StoreKey.build("acme", "alice", "mock", SCOPES),
            access_token=Secret(issued["access_token"]),
            refresh_token=Secret(issued["refresh_token"]),
            issued_at=now,
            expires_at=now - 10,  # expired: a lease must read the refresh token
            scopes=ScopeSet.of(SCOPES),
            requested_scopes=ScopeSet.of(SCOPES),
        )
    )
    broker = Broker(
        provider.descriptor(grants=["authorization_code", "refresh_token"]),
        client_id="test-client",
        client_secret="test-secret",
        store=store,
        http_client=provider.client(),
    )
    store.delete_tenant_key("acme")
    with pytest.raises(AuthorizationRequired):
        broker.lease(tenant="acme", principal="alice", scopes=SCOPES)
    assert provider.counters["token:refresh_token"] == 0  # nothing was decrypted and sent
    broker.close()
    inner.close()
    provider.close()


def test_reencrypt_all_rewraps_tenant_keys_under_the_new_ring_key(inner: TokenStore) -> None:
    store = EncryptedStore(inner, RING, "k1", tenant_keys=True)
    acme = record("acme", "alice")
    store.put(acme)
    rotated = KeyRing({**RING, "k2": b"2" * 32}, "k2")
    report = EncryptedStore(inner, rotated, tenant_keys=True).reencrypt_all()
    assert report.unreadable == ()
    only_new = EncryptedStore(inner, {"k2": b"2" * 32}, "k2", tenant_keys=True)
    assert only_new.get(acme.key).access_token.get_secret_value() == "at-acme-alice"  # type: ignore[union-attr]
