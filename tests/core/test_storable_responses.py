"""Every token response the parser accepts can be stored in PostgreSQL ``jsonb`` (issue 10).

jsonb refuses NUL, lone surrogates and NaN/Infinity; the parser refuses them first (as
``MalformedResponse``), so a refresh response is never accepted from the provider and then
lost at the store. Here the edge values the parser does accept go through a real Broker, the
MockProvider and the real PostgreSQL at 127.0.0.1:5432, and come back unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _services import postgres_drop_schema
from _services import require_module
from _services import require_postgres
from _services import unique_name

from oauth2_broker_mw._core import jsonsafe
from oauth2_broker_mw._core.effects import HttpResponse
from oauth2_broker_mw._core.errors import MalformedResponse
from oauth2_broker_mw._core.oauth import parse_token_response
from oauth2_broker_mw.broker import Broker
from oauth2_broker_mw.testing.mock_provider import MockProvider

require_module("psycopg", "postgres")
from oauth2_broker_mw.stores.postgres import PostgresStore  # noqa: E402

pytestmark = pytest.mark.postgres

# Values at the edge of what jsonsafe accepts: each one must be storable in jsonb.
EDGE_VALUES: dict[str, Any] = {
    "astral": "\U0001f600 \U0010fffd",
    "separators": "\u2028\u2029\u007f\u0001\ufeff",
    "noncharacter": "\uffff\ufffe",
    "digits64": int("9" * 64),
    "negative64": -int("9" * 63),
    "big_float": 9.999999999999999e63,
    "small_float": -1.5e-300,
    "empty_key": {"": ""},
    "unicode_key": {"cl\u00e9 \U0001f511": [True, False, None]},
    "long_string": "x" * 200_000,
    "nested": [[[[[[[[[[[[[["deep"]]]]]]]]]]]]]],
}


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    dsn = require_postgres()
    schema = unique_name("pgjson")
    pg = PostgresStore(dsn, schema=schema)
    yield pg
    pg.close()
    postgres_drop_schema(schema)


@pytest.mark.parametrize("name", sorted(EDGE_VALUES))
def test_accepted_edge_values_round_trip_through_postgres(store: PostgresStore, name: str) -> None:
    value = EDGE_VALUES[name]
    with MockProvider() as provider:
        provider.quirks.extra_token_fields = {name: value}
        broker = Broker(
            provider.descriptor(),
            client_id="test-client",
            client_secret="test-secret",
            http_client=provider.client(),
            store=store,
            client_credentials_principals={"svc"},
        )
        lease = broker.lease(tenant="acme", principal="svc", scopes=["read"])
        stored = store.get(lease.key)
        assert stored is not None
        got = stored.metadata[name]
        if isinstance(value, float):  # jsonb may print an integral float without a point
            got = float(got)  # type: ignore[arg-type]
        assert got == value
        assert stored.access_token == lease.access_token


@pytest.mark.parametrize(
    "member",
    [
        r'"\u0000"',
        r'"a\u0000b"',
        r'"\ud83d"',
        r'"\ude00x"',
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "1.7976931348623157e308",  # jsonb prints it back as a 309-digit integer
        "1e64",
        "1e-301",
        "1e-500",
        "0." + "1" * 41,
        '{"\\u0000": 1}',
    ],
)
def test_what_jsonb_refuses_is_refused_at_parse_time(member: str) -> None:
    body = '{"access_token": "at", "token_type": "Bearer", "x": ' + member + "}"
    response = HttpResponse(200, {"content-type": "application/json"}, body.encode())
    with pytest.raises(MalformedResponse):
        parse_token_response(MockProvider().descriptor(), response, now=0.0)
    with pytest.raises(jsonsafe.JSONRejected):
        jsonsafe.loads(body)
