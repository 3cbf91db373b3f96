"""EncryptedStore: the conformance suite over Memory, SQLite, Redis and PostgreSQL, plus
what encryption at rest must guarantee (slot binding, rotation, no plaintext at rest)."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw._core.errors import CorruptRecord
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore
from oauth2_broker_mw.stores.base import SEALED_REFRESH_TOKEN
from oauth2_broker_mw.stores.encrypted import EncryptedStore
from oauth2_broker_mw.stores.encrypted import KeyRing
from oauth2_broker_mw.stores.encrypted import _pending_aad
from oauth2_broker_mw.stores.encrypted import _token_aad
from oauth2_broker_mw.testing.conformance import StoreConformance
from oauth2_broker_mw.testing.conformance import make_pending
from oauth2_broker_mw.testing.conformance import make_record

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
AT, RT, IDT = "at-PLAINTEXT-5e1f", "rt-PLAINTEXT-93ab", "id-PLAINTEXT-c7d0"


def _ring(current: str = "k1") -> KeyRing:
    return KeyRing({"k1": KEY_1, "k2": KEY_2}, current)


class TestEncryptedMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[EncryptedStore]:
        store = EncryptedStore(MemoryStore(), {"k1": KEY_1}, "k1")
        yield store
        store.close()


class TestEncryptedSQLiteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[EncryptedStore]:
        inner = SQLiteStore(tmp_path / "tokens.db")
        # Prepare the file before the races: a fresh file raced by 16 first users can hit
        # SQLITE_BUSY on "PRAGMA journal_mode = WAL" (a SQLiteStore issue, reported; not
        # what this class tests).
        inner.get(StoreKey.build("warm", "up", "example", "read"))
        store = EncryptedStore(inner, _ring())
        yield store
        store.close()


@pytest.mark.redis
class TestEncryptedRedisStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[EncryptedStore]:
        url = require_redis()
        from oauth2_broker_mw.stores.redis import RedisStore

        prefix = unique_name("enc") + ":"
        store = EncryptedStore(RedisStore(url, prefix=prefix), _ring())
        yield store
        store.close()
        redis_cleanup(prefix)


@pytest.mark.postgres
class TestEncryptedPostgresStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[EncryptedStore]:
        dsn = require_postgres()
        from oauth2_broker_mw.stores.postgres import PostgresStore

        schema = unique_name("enc")
        store = EncryptedStore(PostgresStore(dsn, schema=schema), _ring())
        yield store
        store.close()
        postgres_drop_schema(schema)


def _key(tenant: str = "acme", principal: str = "alice") -> StoreKey:
    return StoreKey.build(tenant, principal, "example", "read")


def _full_record(key: StoreKey, access: str = AT) -> TokenRecord:
    return make_record(
        key, access, refresh_token=Secret(RT), id_token=Secret(IDT), metadata={"team": "blue"}
    )


# -- key ring -------------------------------------------------------------------------------
def test_keyring_validates_and_hides_keys() -> None:
    ring = KeyRing.from_base64({"2026-11": base64.b64encode(KEY_1).decode()}, "2026-11")
    assert ring.current == "2026-11"
    assert KEY_1.hex() not in repr(ring)
    assert base64.b64encode(KEY_1).decode() not in repr(ring)
    with pytest.raises(ValueError, match="bytes"):
        KeyRing({"k": b"short"}, "k")
    with pytest.raises(ValueError, match="key ids"):
        KeyRing({"bad:id": KEY_1}, "bad:id")
    with pytest.raises(ValueError, match="current"):
        KeyRing({"k1": KEY_1}, "k9")
    with pytest.raises(ValueError, match="base64"):
        KeyRing.from_base64({"k1": "not base64 !!"}, "k1")
    assert len(KeyRing.generate_key()) == 32


# -- what is stored -------------------------------------------------------------------------
def test_inner_store_sees_only_ciphertext_and_public_fields() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, _ring())
    key = _key()
    store.put(_full_record(key))
    raw = inner.get(key)
    assert raw is not None
    # only the constant "a refresh token is sealed here", for the inner refresh index
    assert raw.refresh_token == Secret(SEALED_REFRESH_TOKEN)
    assert raw.id_token is None
    envelope = raw.access_token.get_secret_value()
    assert envelope.startswith("o2bm-enc:1:k1:")
    for secret in (AT, RT, IDT):
        assert secret not in raw.to_json()
    assert raw.metadata == {"team": "blue"}  # public fields stay readable
    assert inner.list_keys(TenantId("acme")) == [key]
    loaded = store.get(key)
    assert loaded is not None
    assert (loaded.access_token, loaded.refresh_token, loaded.id_token) == (
        Secret(AT),
        Secret(RT),
        Secret(IDT),
    )


def test_fresh_nonce_per_write() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, _ring())
    key = _key()
    store.put(_full_record(key))
    first = inner.get(key)
    store.put(_full_record(key))
    second = inner.get(key)
    assert first is not None
    assert second is not None
    assert first.access_token != second.access_token


def test_sqlite_file_holds_no_plaintext_secret(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    store = EncryptedStore(SQLiteStore(path), _ring())
    store.put(_full_record(_key()))
    pending = make_pending(code_verifier=Secret("verifier-PLAINTEXT-" + "v" * 30))
    store.put_pending(pending)
    store.close()
    with sqlite3.connect(path) as conn:
        dump = "\n".join(conn.iterdump())
    for secret in (AT, RT, IDT, "verifier-PLAINTEXT-", "nonce-conformance"):
        assert secret not in dump
    assert "o2bm-enc:1:k1:" in dump


# -- slot binding (associated data) ---------------------------------------------------------
def test_ciphertext_copied_into_another_tenants_slot_fails_closed() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, _ring())
    victim, attacker = _key("tenant-a"), _key("tenant-b")
    store.put(make_record(victim, "at-victim"))
    store.put(make_record(attacker, "at-attacker"))
    stolen = inner.get(attacker)
    assert stolen is not None
    inner.put(replace(stolen, key=victim))  # the attacker's row, moved into A's slot
    with pytest.raises(CorruptRecord):
        store.get(victim)
    loaded = store.get(attacker)
    assert loaded is not None
    assert loaded.access_token == Secret("at-attacker")


def test_tampered_ciphertext_or_plaintext_row_fails_closed() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, _ring())
    key = _key()
    store.put(make_record(key))
    raw = inner.get(key)
    assert raw is not None
    envelope = raw.access_token.get_secret_value()
    flipped = envelope[:-3] + ("A" if envelope[-3] != "A" else "B") + envelope[-2:]
    inner.put(replace(raw, access_token=Secret(flipped)))
    with pytest.raises(CorruptRecord):
        store.get(key)
    inner.put(make_record(key, "at-planted-in-plaintext"))
    with pytest.raises(CorruptRecord, match="not encrypted"):
        store.get(key)


def test_pending_is_bound_to_its_state() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, _ring())
    mine, theirs = make_pending(), make_pending()
    store.put_pending(theirs)
    raw = inner.take_pending(theirs.state_key)
    assert raw is not None
    assert raw.code_verifier is not None
    assert raw.nonce is None
    assert theirs.code_verifier is not None
    assert theirs.code_verifier.get_secret_value() not in raw.to_json()
    # their sealed verifier, grafted onto my state
    inner.put_pending(replace(mine, code_verifier=raw.code_verifier, nonce=None))
    with pytest.raises(CorruptRecord):
        store.take_pending(mine.state_key)


@pytest.mark.parametrize(
    "plaintext", [b"[]", b"{}", b'{"access_token": ""}', b'{"access_token": 7}', b"not json"]
)
def test_sealed_but_malformed_secrets_fail_closed(plaintext: bytes) -> None:
    inner = MemoryStore()
    ring = _ring()
    store = EncryptedStore(inner, ring)
    key = _key()
    sealed = replace(make_record(key), access_token=Secret(ring.seal(plaintext, _token_aad(key))))
    inner.put(replace(sealed, refresh_token=None, id_token=None))
    with pytest.raises(CorruptRecord, match="decrypted token secrets are malformed"):
        store.get(key)
    pending = make_pending()
    envelope = ring.seal(plaintext, _pending_aad(pending.state_key))
    inner.put_pending(replace(pending, code_verifier=Secret(envelope), nonce=None))
    with pytest.raises(CorruptRecord, match="decrypted pending secrets are malformed"):
        store.take_pending(pending.state_key)


def test_unknown_key_id_fails_closed() -> None:
    inner = MemoryStore()
    EncryptedStore(inner, {"old": KEY_1}, "old").put(make_record(_key()))
    with pytest.raises(CorruptRecord, match="unknown key id"):
        EncryptedStore(inner, {"new": KEY_2}, "new").get(_key())


# -- rotation -------------------------------------------------------------------------------
def test_rotation_reads_old_writes_new_and_reencrypts_all() -> None:
    inner = MemoryStore()
    old = EncryptedStore(inner, {"k1": KEY_1}, "k1")
    keys = [_key(f"t{i % 3}", f"p{i}") for i in range(9)]
    for i, key in enumerate(keys):
        old.put(_full_record(key, f"at-{i}"))
    rotated = EncryptedStore(inner, _ring(current="k2"))
    first = rotated.get(keys[0])
    assert first is not None
    assert first.access_token == Secret("at-0")  # read with the old key
    rotated.put(_full_record(keys[0], "at-0-new"))
    raw = inner.get(keys[0])
    assert raw is not None
    assert raw.access_token.get_secret_value().startswith("o2bm-enc:1:k2:")

    report = rotated.reencrypt_all(tenants=["t0", "t1", "t2"])
    assert (report.reencrypted, report.already_current, report.unreadable) == (8, 1, ())
    only_new = EncryptedStore(inner, {"k2": KEY_2}, "k2")  # the old key can now be dropped
    for i, key in enumerate(keys):
        loaded = only_new.get(key)
        assert loaded is not None
        assert loaded.refresh_token == Secret(RT)
        assert loaded.access_token == Secret("at-0-new" if i == 0 else f"at-{i}")
    again = only_new.reencrypt_all(tenants=["t0", "t1", "t2"])
    assert (again.reencrypted, again.already_current) == (0, 9)


def test_reencrypt_all_reports_unreadable_and_migrates_plaintext() -> None:
    inner = MemoryStore()
    inner.put(make_record(_key(principal="legacy"), "at-legacy"))  # written before encryption
    EncryptedStore(inner, {"lost": KEY_2}, "lost").put(make_record(_key(principal="lost")))
    store = EncryptedStore(inner, {"k1": KEY_1}, "k1", allow_plaintext=True)
    report = store.reencrypt_all(tenants=["acme"])
    assert report.reencrypted == 1
    assert report.unreadable == (_key(principal="lost"),)
    strict = EncryptedStore(inner, {"k1": KEY_1}, "k1")
    loaded = strict.get(_key(principal="legacy"))
    assert loaded is not None
    assert loaded.access_token == Secret("at-legacy")


def test_reencrypt_all_lists_the_tenants_of_an_in_memory_store_itself() -> None:
    inner = MemoryStore()
    EncryptedStore(inner, {"k1": KEY_1}, "k1").put(make_record(_key(), "at-a"))
    report = EncryptedStore(inner, _ring(current="k2")).reencrypt_all()
    assert report.reencrypted == 1


def test_encrypted_records_stay_in_the_inner_refresh_index() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, _ring())
    store.put(_full_record(_key()))
    plain_rt = replace(_full_record(_key(principal="bob")), refresh_token=None)
    store.put(plain_rt)
    due = store.idle("example", 2_000_000_000.0)
    assert [d.key for d in due] == [_key()]
    loaded = store.get(_key())
    assert loaded is not None and loaded.refresh_token == Secret(RT)
    assert store.get(_key(principal="bob")).refresh_token is None  # type: ignore[union-attr]


async def test_async_rotation_twin() -> None:
    inner = MemoryStore()
    await EncryptedStore(inner, {"k1": KEY_1}, "k1").aput(make_record(_key(), "at-a"))
    rotated = EncryptedStore(inner, _ring(current="k2"))
    report = await rotated.areencrypt_all(tenants=["acme"])
    assert report.reencrypted == 1
    loaded = await EncryptedStore(inner, {"k2": KEY_2}, "k2").aget(_key())
    assert loaded is not None
    assert loaded.access_token == Secret("at-a")


# -- raw rows in the real services ----------------------------------------------------------
@pytest.mark.redis
def test_redis_holds_no_plaintext_and_reencrypt_lists_tenants_itself() -> None:
    url = require_redis()
    import redis

    from oauth2_broker_mw.stores.redis import RedisStore

    prefix = unique_name("enc") + ":"
    store = EncryptedStore(RedisStore(url, prefix=prefix), {"k1": KEY_1}, "k1")
    raw = redis.Redis.from_url(url)
    try:
        for tenant in ("t1", "t2"):
            store.put(_full_record(_key(tenant)))
        store.put_pending(make_pending(code_verifier=Secret("verifier-PLAINTEXT-" + "v" * 30)))
        dump = b"".join(
            raw.dump(name) or b"" for name in raw.scan_iter(match=prefix + "*", count=1000)
        )
        for secret in (AT, RT, IDT, "verifier-PLAINTEXT-"):
            assert secret.encode() not in dump
        rotated = EncryptedStore(store.inner, _ring(current="k2"))
        assert rotated.reencrypt_all().reencrypted == 2
    finally:
        raw.close()
        store.close()
        redis_cleanup(prefix)


@pytest.mark.postgres
def test_postgres_rows_hold_no_plaintext() -> None:
    dsn = require_postgres()
    import psycopg

    from oauth2_broker_mw.stores.postgres import PostgresStore

    schema = unique_name("enc")
    store = EncryptedStore(PostgresStore(dsn, schema=schema), {"k1": KEY_1}, "k1")
    try:
        store.put(_full_record(_key()))
        store.put_pending(make_pending(code_verifier=Secret("verifier-PLAINTEXT-" + "v" * 30)))
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                f'SELECT data::text FROM "{schema}".tokens UNION ALL '
                f'SELECT data::text FROM "{schema}".pending'
            ).fetchall()
        dump = "\n".join(r[0] for r in rows)
        assert len(rows) == 2
        for secret in (AT, RT, IDT, "verifier-PLAINTEXT-"):
            assert secret not in dump
        assert EncryptedStore(store.inner, _ring("k2")).reencrypt_all().reencrypted == 1
    finally:
        store.close()
        postgres_drop_schema(schema)


def test_missing_cryptography_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ImportError, match=r"pip install 'oauth2-broker-mw\[crypto\]'"):
        KeyRing({"k1": KEY_1}, "k1")
