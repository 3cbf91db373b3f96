"""Fuzz: corrupt rows in a real SQLite file (issue 10, SECURITY H3).

A row whose JSON is broken, deep, huge, not UTF-8, of the wrong type, or whose version column
is odd, reads as :class:`CorruptRecord` (never another exception, never its contents in the
message), and the broker treats it as absent: the caller gets ``AuthorizationRequired``,
and a callback whose pending row is corrupt gets a typed ``AuthorizationFlowError``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from _fuzzkit import FUZZ
from _fuzzkit import MARKER_AT
from _fuzzkit import MARKER_CS
from _fuzzkit import MARKER_RT
from _fuzzkit import MARKER_STATE
from _fuzzkit import check
from _fuzzkit import dumps
from _fuzzkit import hostile_value
from hypothesis import given
from hypothesis import strategies as st

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw._core.errors import AuthorizationRequired
from oauth2_broker_mw._core.errors import CorruptRecord
from oauth2_broker_mw._core.model import PendingAuthorization
from oauth2_broker_mw._core.model import PrincipalId
from oauth2_broker_mw._core.model import ProviderId
from oauth2_broker_mw._core.model import ScopeSet
from oauth2_broker_mw._core.model import Secret
from oauth2_broker_mw._core.model import StoreKey
from oauth2_broker_mw._core.model import TenantId
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw._core.provider import ProviderDescriptor

NOW = 1_700_000_000.0
KEY = StoreKey.build("acme", "alice", "idp", ["openid"])
DESC = ProviderDescriptor(
    id="idp",
    token_endpoint="https://idp.example/token",
    authorization_endpoint="https://idp.example/authorize",
)
RECORD = TokenRecord(
    key=KEY,
    access_token=Secret(MARKER_AT),
    refresh_token=Secret(MARKER_RT),
    issued_at=NOW,
    expires_at=NOW + 3600,
    scopes=ScopeSet(("openid",)),
    requested_scopes=ScopeSet(("openid",)),
    version=1,
)
PENDING = PendingAuthorization(
    state=Secret(MARKER_STATE),
    tenant=TenantId("acme"),
    principal=PrincipalId("alice"),
    provider=ProviderId("idp"),
    scopes=ScopeSet(("openid",)),
    redirect_uri="https://app.example/cb",
    code_verifier=Secret("v" * 43),
    nonce=Secret("n-1"),
    created_at=NOW,
    expires_at=NOW + 600,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    path = tmp_path_factory.mktemp("fuzzrows") / "tokens.db"
    s = SQLiteStore(path, clock=lambda: NOW)
    s.put(RECORD)  # creates the schema
    yield s
    s.close()


def _mutated(document: dict[str, Any], draw: st.DrawFn) -> list[tuple[str, Any]]:
    members = list(document.items())
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([*document, "secrets", "key", "secrets.access_token"]))
        value = draw(hostile_value())
        if "." in path:
            outer, inner = path.split(".")
            value = {**document[outer], inner: value}
            path = outer
        if draw(st.booleans()):
            members.append((path, value))  # a duplicate member
        else:
            members = [(k, value if k == path else v) for k, v in members]
    return members


@st.composite
def row_data(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    kind = draw(st.sampled_from(["mutated", "mutated", "bytes", "not_utf8", "typed", "cut"]))
    text = json.dumps(document)
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    if kind == "not_utf8":
        cut = draw(st.integers(0, len(text)))
        return (text[:cut].encode() + b"\xff\xfe\xc3(" + text[cut:].encode(), "text")
    if kind == "typed":
        return draw(st.sampled_from([0, -1, 2**63 - 1, 1.5, float("inf"), b"", ""]))
    if kind == "cut":
        return text[: draw(st.integers(0, len(text) - 1))]
    return dumps(_mutated(document, draw))


VERSIONS = st.sampled_from([1, 1, 1, 0, -1, 2**63 - 1, 1.5, "1", b"1", "x" * 1000])


def _reset(store: SQLiteStore) -> None:
    """The same starting rows for every example (hypothesis replays examples)."""
    conn = sqlite3.connect(store.path)
    try:
        conn.execute("DELETE FROM tokens")
        conn.execute("DELETE FROM pending")
        conn.commit()
    finally:
        conn.close()
    store.put(RECORD)
    store.put_pending(PENDING)


def _write(store: SQLiteStore, table: str, column: str, where: str, key: str, value: Any) -> None:
    conn = sqlite3.connect(store.path)
    try:
        if isinstance(value, tuple):  # raw bytes in a TEXT column: not valid UTF-8
            conn.execute(
                f"UPDATE {table} SET {column} = CAST(? AS TEXT) WHERE {where} = ?",
                (value[0], key),
            )
        else:
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where} = ?", (value, key))
        conn.commit()
    finally:
        conn.close()


@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_token_row_is_a_corrupt_record_and_absent_for_the_broker(
    store: SQLiteStore, data: st.DataObject
) -> None:
    _reset(store)
    _write(store, "tokens", "data", "key_id", KEY.id, data.draw(row_data(RECORD.to_dict())))
    _write(store, "tokens", "version", "key_id", KEY.id, data.draw(VERSIONS))
    record = check(lambda: store.get(KEY), expect=CorruptRecord)
    if record is None:  # corrupt: absent for the broker, which asks for a login
        broker = Broker(
            DESC, client_id="c", client_secret=MARKER_CS, store=store, clock=lambda: NOW
        )
        with pytest.raises(AuthorizationRequired):
            broker.lease(tenant="acme", principal="alice", scopes=["openid"])


@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_pending_row_is_a_typed_error_at_the_callback(
    store: SQLiteStore, data: st.DataObject
) -> None:
    _reset(store)
    state_key = PENDING.state_key
    _write(store, "pending", "data", "state_key", state_key, data.draw(row_data(PENDING.to_dict())))
    broker = Broker(DESC, client_id="c", client_secret=MARKER_CS, store=store, clock=lambda: NOW)
    check(lambda: broker.exchange_code(state=MARKER_STATE, code="code-1"))


def test_a_row_that_is_not_utf8_is_a_corrupt_record_without_its_contents(
    store: SQLiteStore,
) -> None:
    _reset(store)
    _write(store, "tokens", "data", "key_id", KEY.id, (RECORD.to_json().encode() + b"\xff", ""))
    with pytest.raises(CorruptRecord) as info:
        store.get(KEY)
    assert MARKER_AT not in str(info.value) and MARKER_RT not in str(info.value)
