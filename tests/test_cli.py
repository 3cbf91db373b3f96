"""The admin CLI against real stores (SQLite, Redis, PostgreSQL) and a loopback MockProvider."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _services import postgres_drop_schema
from _services import redis_cleanup
from _services import require_postgres
from _services import require_redis
from _services import unique_name

from oauth2_broker_mw.__main__ import main
from oauth2_broker_mw._core.errors import ConfigurationError
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.stores import MemoryStore
from oauth2_broker_mw.stores import SQLiteStore
from oauth2_broker_mw.stores import StoreURLError
from oauth2_broker_mw.stores import open_store
from oauth2_broker_mw.stores.encrypted import EncryptedStore
from oauth2_broker_mw.stores.encrypted import KeyRing
from oauth2_broker_mw.testing.mock_provider import MockProvider

SCOPES = ("read",)


def _pg_url(schema: str) -> str:
    require_postgres()
    return f"postgresql://postgres@127.0.0.1:5432/test?schema={schema}"


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tokens.db"
    elif request.param == "redis":
        request.applymarker(pytest.mark.redis)
        prefix = unique_name("cli") + ":"
        yield f"{require_redis()}?prefix={prefix}"
        redis_cleanup(prefix)
    else:
        request.applymarker(pytest.mark.postgres)
        schema = unique_name("cli")
        yield _pg_url(schema)
        postgres_drop_schema(schema)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    try:
        data = json.loads(out)
    except ValueError:
        data = out
    return code, data, err


def seed(
    store: Any, mp: MockProvider | None, tenant: str, principal: str, **fields: Any
) -> TokenRecord:
    issued = mp.issue_tokens(subject=principal, scopes=SCOPES) if mp else {}
    key = StoreKey.build(tenant, principal, fields.pop("provider", "mock"), SCOPES)
    return store.put(
        TokenRecord(
            key=key,
            access_token=Secret(issued.get("access_token", f"at-SECRET-{principal}")),
            refresh_token=Secret(issued.get("refresh_token", f"rt-SECRET-{principal}")),
            issued_at=time.time(),
            expires_at=time.time() + fields.pop("expires_in", 3600),
            scopes=ScopeSet.of(SCOPES),
            requested_scopes=ScopeSet.of(SCOPES),
            metadata={"team": "T-SECRET-ish"},
            **fields,
        )
    )


def test_connections_list_and_show_never_print_a_token(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(store_url)
    for tenant, principal in [("acme", "alice"), ("acme", "bob"), ("globex", "carol")]:
        seed(store, None, tenant, principal)
    store.close()
    code, data, err = cli(
        capsys, "connections", "list", "--store", store_url, "--json", "--progress"
    )
    assert code == 0
    assert {(c["tenant"], c["principal"]) for c in data["connections"]} == {
        ("acme", "alice"),
        ("acme", "bob"),
        ("globex", "carol"),
    }
    assert data["connections"][0]["has_refresh_token"] is True
    assert "reading [" in err and "3/3" in err  # the progress bar goes to stderr
    code, data, _ = cli(
        capsys, "connections", "list", "--store", store_url, "--tenant", "acme", "--json"
    )
    assert [c["principal"] for c in data["connections"]] == ["alice", "bob"]
    code, text, _ = cli(
        capsys,
        "connections",
        "show",
        "--store",
        store_url,
        "--tenant",
        "acme",
        "--principal",
        "bob",
    )
    assert code == 0 and "principal: bob" in text and "metadata_keys: ['team']" in text
    for output in (json.dumps(data), text):
        assert "SECRET" not in output


def test_forget_principal_and_offboard_tenant(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(store_url)
    for tenant, principal in [("acme", "alice"), ("acme", "bob"), ("globex", "carol")]:
        seed(store, None, tenant, principal)
        seed(store, None, tenant, principal, provider="other")
    code, data, _ = cli(
        capsys,
        "forget-principal",
        "--store",
        store_url,
        "--tenant",
        "acme",
        "--principal",
        "alice",
        "--json",
    )
    # no client configured: deleted only, and the output says so
    assert (code, data) == (0, {"found": 2, "removed": 2, "revoked": 0, "delete_only": True})
    assert [k.principal for k in store.list_keys("acme")] == ["bob", "bob"]  # type: ignore[arg-type]
    code, text, err = cli(capsys, "offboard-tenant", "--store", store_url, "--tenant", "acme")
    assert code == 0 and "2 record(s) removed (deleted only, not revoked)" in text
    assert "nothing is revoked at the provider" in err
    assert store.list_keys("acme") == []  # type: ignore[arg-type]
    assert len(store.list_keys("globex")) == 2  # type: ignore[arg-type]
    store.close()


def test_forget_principal_and_offboard_tenant_revoke_at_the_provider_with_a_client(
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    mp = MockProvider(access_ttl=3600)
    with mp.serve():
        descriptor_file = tmp_path / "mock.json"
        descriptor_file.write_text(json.dumps(mp.descriptor(id="mock").to_dict()))
        monkeypatch.setenv("OAUTH2_BROKER_CLIENT_SECRET", mp.default_client.client_secret or "")
        store = open_store(store_url)
        alice = seed(store, mp, "acme", "alice")
        seed(store, None, "acme", "alice", provider="other")  # no client for it here
        bob = seed(store, mp, "acme", "bob")
        carol = seed(store, mp, "globex", "carol")
        client = [
            "--store",
            store_url,
            "--provider",
            str(descriptor_file),
            "--client-id",
            mp.default_client.client_id,
            "--json",
        ]
        code, data, _ = cli(
            capsys, "forget-principal", *client, "--tenant", "acme", "--principal", "alice"
        )
        assert code == 0
        assert data == {
            "found": 2,
            "removed": 2,
            "revoked": 1,
            "revocation_failed": 0,
            "queued": 0,
            "unrevocable": 1,
            "delete_only": False,
        }
        assert mp.token_info(alice.access_token.get_secret_value())["active"] is False  # type: ignore[index]
        assert mp.counters["revoked"] == 2
        code, data, _ = cli(capsys, "offboard-tenant", *client, "--tenant", "acme")
        assert code == 0 and (data["revoked"], data["removed"]) == (1, 1)
        assert mp.token_info(bob.access_token.get_secret_value())["active"] is False  # type: ignore[index]
        assert store.list_keys("acme") == []  # type: ignore[arg-type]
        assert mp.token_info(carol.access_token.get_secret_value())["active"] is True  # type: ignore[index]
        assert store.get(carol.key) is not None
        store.close()


def test_refresh_and_revoke_go_through_the_broker(
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    mp = MockProvider(access_ttl=3600, rotation=True)
    with mp.serve():
        descriptor_file = tmp_path / "mock.json"
        descriptor_file.write_text(json.dumps(mp.descriptor(id="mock").to_dict()))
        monkeypatch.setenv("OAUTH2_BROKER_CLIENT_SECRET", mp.default_client.client_secret or "")
        store = open_store(store_url)
        before = seed(store, mp, "acme", "alice")
        common = [
            "--store",
            store_url,
            "--provider",
            str(descriptor_file),
            "--client-id",
            mp.default_client.client_id,
            "--tenant",
            "acme",
            "--principal",
            "alice",
            "--json",
        ]
        code, data, _ = cli(capsys, "refresh", *common)
        assert code == 0 and data["version"] == before.version + 1
        assert mp.counters["token:refresh_token"] == 1
        code, data, _ = cli(capsys, "revoke", *common)
        assert code == 0 and data["revoked_at_provider"] is True and data["queued"] is False
        assert mp.counters["revocation"] >= 1 or mp.counters["revoke"] >= 1
        assert store.list_keys("acme") == []  # type: ignore[arg-type]
        code, _, err = cli(capsys, "refresh", *common)
        assert code == 2 and "0 connections match" in err
        store.close()


def test_revoke_says_when_the_provider_was_unavailable_and_the_revocation_queued(
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    mp = MockProvider(access_ttl=3600)
    with mp.serve():
        descriptor_file = tmp_path / "mock.json"
        descriptor_file.write_text(json.dumps(mp.descriptor(id="mock").to_dict()))
        monkeypatch.setenv("OAUTH2_BROKER_CLIENT_SECRET", mp.default_client.client_secret or "")
        store = open_store(store_url)
        seed(store, mp, "acme", "alice")
        mp.faults.add("revoke", "error", status=503)
        code, data, _ = cli(
            capsys,
            "revoke",
            "--store",
            store_url,
            "--provider",
            str(descriptor_file),
            "--client-id",
            mp.default_client.client_id,
            "--tenant",
            "acme",
            "--principal",
            "alice",
            "--json",
        )
        assert code == 0
        assert data == {"revoked_at_provider": False, "queued": True, "removed": True}
        assert store.list_keys("acme") == []  # type: ignore[arg-type]
        store.close()


def test_refresher_once_refreshes_what_is_due(
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    mp = MockProvider(access_ttl=3600, rotation=True)
    with mp.serve():
        descriptor_file = tmp_path / "mock.toml"
        d = mp.descriptor(id="mock")
        descriptor_file.write_text(
            f'id = "mock"\ntoken_endpoint = "{d.token_endpoint}"\n'
            f'authorization_endpoint = "{d.authorization_endpoint}"\n'
        )
        monkeypatch.setenv("OAUTH2_BROKER_CLIENT_SECRET", mp.default_client.client_secret or "")
        store = open_store(store_url)
        seed(store, mp, "acme", "due", expires_in=30)
        seed(store, mp, "acme", "later", expires_in=3000)
        code, out, _ = cli(
            capsys,
            "refresher",
            "--store",
            store_url,
            "--provider",
            str(descriptor_file),
            "--client-id",
            mp.default_client.client_id,
            "--window",
            "300",
            "--once",
            "--json",
        )
        assert code == 0
        assert (
            json.loads(out.strip().splitlines()[-1] if isinstance(out, str) else json.dumps(out))[
                "refreshed"
            ]
            == 1
        )
        assert mp.counters["token:refresh_token"] == 1
        store.close()


def keyfile(tmp_path: Path, **keys: bytes) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "current": list(keys)[-1],
                "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
            }
        )
    )
    return path


def test_keys_rotate_then_reencrypt(
    store_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = keyfile(tmp_path, k1=os.urandom(32))
    ring = KeyRing.from_base64(json.loads(path.read_text())["keys"], "k1")
    inner = open_store(store_url)
    encrypted = EncryptedStore(inner, ring)
    records = [seed(encrypted, None, "acme", f"p{i}") for i in range(3)]
    code, data, err = cli(
        capsys,
        "keys",
        "rotate",
        "--store",
        store_url,
        "--keys",
        str(path),
        "--new-key-id",
        "k2",
        "--json",
    )
    assert code == 0 and data == {"already_current": 0, "reencrypted": 3, "unreadable": 0}
    assert "new current key 'k2'" in err
    saved = json.loads(path.read_text())
    assert saved["current"] == "k2" and set(saved["keys"]) == {"k1", "k2"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    only_k2 = EncryptedStore(inner, KeyRing.from_base64({"k2": saved["keys"]["k2"]}, "k2"))
    for record in records:
        loaded = only_k2.get(record.key)
        assert loaded is not None and loaded.access_token == record.access_token
    code, data, _ = cli(
        capsys, "keys", "reencrypt", "--store", store_url, "--keys", str(path), "--json"
    )
    assert data == {"already_current": 3, "reencrypted": 0, "unreadable": 0}
    inner.close()


@pytest.mark.parametrize(
    "target_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migrate_copies_every_record_verified_and_resumes(
    store_url: str, target_kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    schema = unique_name("cli_to")
    target_url = f"sqlite:///{tmp_path}/target.db" if target_kind == "sqlite" else _pg_url(schema)
    if target_url == store_url:
        pytest.skip("same store")
    try:
        source = open_store(store_url)
        records = [seed(source, None, f"t{i % 3}", f"p{i}") for i in range(40)]
        code, data, err = cli(
            capsys, "migrate", "--from", store_url, "--to", target_url, "--json", "--progress"
        )
        assert code == 0 and data["copied"] == 40 and data["mismatched"] == 0
        assert "migrating [" in err
        target = open_store(target_url)
        for record in records:
            copied = target.get(record.key)
            assert copied is not None
            assert copied.with_version(0).to_json() == record.with_version(0).to_json()
        # resumable: a second run finds everything there; a changed source record is recopied
        seed(source, None, "t0", "p0", expires_in=99)
        code, data, _ = cli(capsys, "migrate", "--from", store_url, "--to", target_url, "--json")
        assert (data["copied"], data["already_there"]) == (1, 39)
        source.close()
        target.close()
    finally:
        if target_kind == "postgres":
            postgres_drop_schema(schema)


def test_migrate_between_encrypted_stores_compares_plaintext(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b = keyfile(tmp_path, a1=os.urandom(32)), tmp_path / "b.json"
    b.write_text(
        json.dumps({"current": "b1", "keys": {"b1": base64.b64encode(os.urandom(32)).decode()}})
    )
    src_url, dst_url = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    ring_a = KeyRing.from_base64(json.loads(a.read_text())["keys"], "a1")
    source = EncryptedStore(SQLiteStore(tmp_path / "a.db"), ring_a)
    rec = seed(source, None, "acme", "alice")
    code, data, _ = cli(
        capsys,
        "migrate",
        "--from",
        src_url,
        "--from-keys",
        str(a),
        "--to",
        dst_url,
        "--to-keys",
        str(b),
        "--json",
    )
    assert code == 0 and data["copied"] == 1
    ring_b = KeyRing.from_base64(json.loads(b.read_text())["keys"], "b1")
    loaded = EncryptedStore(SQLiteStore(tmp_path / "b.db"), ring_b).get(rec.key)
    assert loaded is not None and loaded.refresh_token == rec.refresh_token
    raw = SQLiteStore(tmp_path / "b.db").get(rec.key)
    assert raw is not None and "rt-SECRET" not in raw.to_json()  # still encrypted at rest


def test_providers_check_reports_mismatches_with_discovery(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    mp = MockProvider()
    with mp.serve():
        good = tmp_path / "good.json"
        good.write_text(json.dumps(mp.descriptor(id="mock").to_dict()))
        code, data, _ = cli(capsys, "providers", "check", str(good), "--json")
        assert code == 0 and data["mismatches"] == []
        # the mock offers PAR; a descriptor that does not use it is told, not failed
        assert [m["field"] for m in data["not_in_descriptor"]] == [
            "pushed_authorization_request_endpoint"
        ]
        stale = tmp_path / "stale.json"
        moved = mp.descriptor(id="mock", token_endpoint=mp.url("/old-token"))
        stale.write_text(json.dumps(moved.to_dict()))
        code, data, _ = cli(capsys, "providers", "check", str(stale), "--json")
        assert code == 1
        assert data["mismatches"] == [
            {
                "field": "token_endpoint",
                "descriptor": mp.url("/old-token"),
                "discovered": mp.token_endpoint,
            }
        ]
    code, _, err = cli(capsys, "providers", "check", "github")
    assert code == 2 and "names no issuer" in err
    code, _, err = cli(capsys, "providers", "check", "gihtub")
    assert code == 2 and "no preset named 'gihtub'" in err


def test_usage_errors_are_short_and_typed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OAUTH2_BROKER_STORE", raising=False)
    code, _, err = cli(capsys, "connections", "list")
    assert code == 2 and "--store URL" in err
    code, _, err = cli(capsys, "connections", "list", "--store", "ftp://u:hunter2@x/")
    assert code == 2 and "unknown store URL scheme 'ftp'" in err and "hunter2" not in err


def test_open_store_schemes(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    rel = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(rel, SQLiteStore) and rel.path == f"{tmp_path}/x.db"
    with pytest.raises(StoreURLError, match="sqlite:///relative"):
        open_store("sqlite://x.db")
    with pytest.raises(StoreURLError, match="not a store URL"):
        open_store("tokens.db")
    with pytest.raises(StoreURLError, match="memory:// takes no"):
        open_store("memory://x")
    assert isinstance(StoreURLError("x"), ConfigurationError)
    ring = KeyRing({"k": os.urandom(32)}, "k")
    assert isinstance(open_store("memory://", keyring=ring), EncryptedStore)


@pytest.mark.redis
def test_open_store_redis_prefix() -> None:
    prefix = unique_name("url") + ":"
    store = open_store(f"{require_redis()}?prefix={prefix}")
    try:
        assert f"prefix={prefix!r}" in repr(store)
    finally:
        store.close()
        redis_cleanup(prefix)
