"""A new user's first hour (issue 12): configuration fails fast, with the reason.

Each test here failed on the main of 2026-12-05.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import ConfigurationError
from oauth2_broker_mw import InvalidClient
from oauth2_broker_mw import StorageError
from oauth2_broker_mw import StoreUnavailable
from oauth2_broker_mw.testing.mock_provider import MockProvider


@pytest.fixture
def mp() -> MockProvider:
    provider = MockProvider()
    yield provider  # type: ignore[misc]
    provider.close()


# -- item 1: a forgotten client secret shows when the Broker is built ----------------------
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize("secret", [None, "", "   "])
def test_a_missing_or_empty_secret_is_refused_at_build_time(
    mp: MockProvider, method: str, secret: str | None
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Broker(
            mp.descriptor(client_auth_method=method),
            client_id="x",
            client_secret=secret,
            http_client=mp.client(),
        )
    message = str(caught.value)
    assert "client_secret" in message and method in message and repr(mp.descriptor().id) in message


def test_a_missing_private_key_is_refused_at_build_time(mp: MockProvider) -> None:
    with pytest.raises(ConfigurationError, match="private_key"):
        Broker(mp.descriptor(client_auth_method="private_key_jwt"), client_id="x")


def test_a_public_client_needs_no_secret(mp: MockProvider) -> None:
    Broker(mp.descriptor(client_auth_method="none"), client_id="spa")


def test_the_message_never_shows_a_secret(mp: MockProvider) -> None:
    broker = Broker(mp.descriptor(), client_id="x", client_secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(broker)


def test_service_lease_without_the_grant_says_so(mp: MockProvider) -> None:
    descriptor = mp.descriptor(grants=["authorization_code", "refresh_token"])
    broker = Broker(descriptor, client_id="test-client", client_secret="s3cr3t-value")
    with pytest.raises(ConfigurationError) as caught:
        broker.service_lease(scopes=["email.read"])
    message = str(caught.value)
    assert "client_credentials grant" in message and "'mock'" in message
    assert "s3cr3t-value" not in message
    assert mp.counters["token:client_credentials"] == 0  # refused before any provider call


async def test_service_lease_of_a_public_client_says_it_needs_a_secret(mp: MockProvider) -> None:
    broker = Broker(mp.descriptor(client_auth_method="none"), client_id="spa")
    with pytest.raises(ConfigurationError, match=r"public client .*client_secret="):
        await broker.aservice_lease(scopes=["email.read"])


def test_a_user_lease_without_a_login_says_log_in(mp: MockProvider) -> None:
    descriptor = mp.descriptor(grants=["authorization_code", "refresh_token"])
    broker = Broker(descriptor, client_id="test-client", client_secret="test-secret")
    with pytest.raises(AuthorizationRequired) as caught:
        broker.lease(tenant="t", principal="alice", scopes=["email.read"])
    assert "no stored grant for this user; log in" in str(caught.value)
    assert "client credentials" not in str(caught.value)


def test_a_rejected_client_secret_names_what_to_check(mp: MockProvider) -> None:
    broker = Broker(
        mp.descriptor(), client_id="test-client", client_secret="wrong-1", http_client=mp.client()
    )
    with pytest.raises(InvalidClient) as caught:
        broker.service_lease(scopes=["email.read"])
    message = str(caught.value)
    assert "client_id and client_secret" in message and "client_auth_method" in message
    assert "wrong-1" not in message


# -- item 6: errors that say what to do --------------------------------------------------
def _middleware(mp: MockProvider, **options: object) -> object:
    from oauth2_broker_mw.middleware import BrokerMiddleware

    broker = Broker(mp.descriptor(), client_id="test-client", client_secret="test-secret")
    kwargs: dict[str, object] = {
        "brokers": {"mock": broker},
        "secret_key": "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        "base_url": "https://app.example",
    }
    kwargs.update(options)
    return BrokerMiddleware(lambda *a: None, **kwargs)  # type: ignore[arg-type]


def test_bytes_secret_key_says_use_text_and_how(mp: MockProvider) -> None:
    with pytest.raises(ConfigurationError, match=r"not bytes.*token_urlsafe"):
        _middleware(mp, secret_key=os.urandom(32))


@pytest.mark.parametrize("key", ["a" * 32, "ab" * 20, "changeme" * 5])
def test_low_entropy_secret_keys_are_refused(mp: MockProvider, key: str) -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        _middleware(mp, secret_key=key)


def test_a_random_secret_key_is_accepted(mp: MockProvider) -> None:
    import secrets

    _middleware(mp, secret_key=secrets.token_urlsafe(32))
    _middleware(mp, secret_key=secrets.token_hex(16))  # 128 bits as 32 hex characters


def test_brokers_as_a_list_says_it_must_be_a_mapping(mp: MockProvider) -> None:
    broker = Broker(mp.descriptor(), client_id="test-client", client_secret="test-secret")
    with pytest.raises(ConfigurationError, match="brokers must be a mapping"):
        _middleware(mp, brokers=[broker])


# -- item 2: store problems show at boot, with the path or address and what to do ----------
def test_sqlite_check_names_a_missing_directory(tmp_path: pathlib.Path) -> None:
    from oauth2_broker_mw.stores import SQLiteStore
    from oauth2_broker_mw.stores import check_store

    path = tmp_path / "no-such-dir" / "tokens.db"
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable) as caught:
        check_store(store)
    message = str(caught.value)
    assert str(path.parent) in message and "does not exist" in message and "mkdir" in message


def test_sqlite_check_names_an_unwritable_directory(tmp_path: pathlib.Path) -> None:
    from oauth2_broker_mw.stores import SQLiteStore

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        locked = pathlib.Path("/sys")
    try:
        store = SQLiteStore(locked / "tokens.db")
        with pytest.raises(StoreUnavailable) as caught:
            store.check()
        message = str(caught.value)
        assert str(locked / "tokens.db") in message
        assert "Permission denied" in message and "writable" in message
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_sqlite_check_names_a_file_that_is_not_a_database(tmp_path: pathlib.Path) -> None:
    from oauth2_broker_mw.stores import SQLiteStore

    path = tmp_path / "tokens.db"
    path.write_text("hello, I am a text file\n" * 100)
    with pytest.raises(StorageError) as caught:
        asyncio.run(SQLiteStore(path).acheck())
    message = str(caught.value)
    assert str(path) in message and "not a SQLite database" in message


def test_every_store_passes_check_when_healthy(tmp_path: pathlib.Path) -> None:
    from oauth2_broker_mw.stores import MemoryStore
    from oauth2_broker_mw.stores import SQLiteStore
    from oauth2_broker_mw.stores import acheck_store
    from oauth2_broker_mw.stores import check_store

    for store in (MemoryStore(), SQLiteStore(tmp_path / "ok.db")):
        check_store(store)
        asyncio.run(acheck_store(store))
        store.close()


def _redis_store(url: str) -> object:
    from oauth2_broker_mw.stores.redis import RedisStore

    return RedisStore(url, socket_timeout=0.5)


def _postgres_store(url: str) -> object:
    from oauth2_broker_mw.stores.postgres import PostgresStore

    return PostgresStore(url, timeout=1)


@pytest.mark.parametrize(
    ("build", "down", "up"),
    [
        pytest.param(
            _redis_store,
            "redis://:hunter2-pw@127.0.0.1:1/0",
            "redis://127.0.0.1:6379/0",
            marks=pytest.mark.redis,
            id="redis",
        ),
        pytest.param(
            _postgres_store,
            "postgresql://u:hunter2-pw@127.0.0.1:1/test",
            "postgresql://127.0.0.1:5432/test",
            marks=pytest.mark.postgres,
            id="postgres",
        ),
    ],
)
def test_server_store_check_names_host_and_port_never_the_password(
    build: Callable[[str], Any], down: str, up: str
) -> None:
    store = build(down)
    for check in (store.check, lambda: asyncio.run(store.acheck())):
        with pytest.raises(StoreUnavailable) as caught:
            check()
        message = str(caught.value)
        assert "127.0.0.1:1" in message and "hunter2" not in message
        assert "is the server running" in message
    store.close()
    healthy = build(up)
    healthy.check()
    asyncio.run(healthy.acheck())
    healthy.close()


def test_encrypted_store_checks_its_inner_store(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("cryptography")
    from oauth2_broker_mw.stores import SQLiteStore
    from oauth2_broker_mw.stores import check_store
    from oauth2_broker_mw.stores.encrypted import EncryptedStore

    inner = SQLiteStore(tmp_path / "missing" / "t.db")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        check_store(EncryptedStore(inner, {"k1": os.urandom(32)}, "k1"))


def test_the_demo_checks_its_store_when_it_is_built(tmp_path: pathlib.Path) -> None:
    from oauth2_broker_mw.demo import create_demo_app

    not_a_db = tmp_path / "tokens.db"
    not_a_db.write_text("not a database\n" * 100)
    with pytest.raises(StorageError, match=r"tokens\.db'? is not a SQLite database"):
        create_demo_app("http://127.0.0.1:8000", data_dir=tmp_path)


# -- item 8: MockProvider.serve() leaves the host's logging alone --------------------------
def test_serve_leaves_global_logging_configuration_alone(mp: MockProvider) -> None:
    import logging

    import httpx2

    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    handler = logging.NullHandler()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        before = {
            n: (
                list(logging.getLogger(n).handlers),
                logging.getLogger(n).level,
                logging.getLogger(n).propagate,
            )
            for n in names
        }
        with mp.serve() as base:
            assert httpx2.get(f"{base}/.well-known/openid-configuration").status_code == 200
        after = {
            n: (
                list(logging.getLogger(n).handlers),
                logging.getLogger(n).level,
                logging.getLogger(n).propagate,
            )
            for n in names
        }
        assert after == before
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)


# -- item 2: the middleware's log says why the store failed --------------------------------
def test_the_middleware_logs_the_store_failure_with_its_path(
    mp: MockProvider, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from oauth2_broker_mw.middleware import BrokerMiddleware
    from oauth2_broker_mw.stores import SQLiteStore

    path = tmp_path / "gone" / "tokens.db"
    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        store=SQLiteStore(path),
        http_client=mp.client(),
    )
    app = BrokerMiddleware(
        Starlette(),
        brokers={"mock": broker},
        secret_key="Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        base_url="https://testserver",
        check_stores=False,  # the store fails at the login here, not at startup
    )
    with caplog.at_level(logging.WARNING), TestClient(app, base_url="https://testserver") as client:
        response = client.get("/oauth2/mock/login", follow_redirects=False)
    assert response.status_code == 503
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert str(path) in logged and "does not exist" in logged


# -- item 4: the demo installs only what it needs -----------------------------------------
def test_make_demo_installs_only_the_demo_extra() -> None:
    import re
    import tomllib

    root = pathlib.Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[\[<>=]", d)[0] for d in extras["demo"]}
    assert {"uvicorn", "oauth2-broker-mw"} <= names and "mypy" not in names
    assert "oauth2-broker-mw[starlette]" in extras["demo"]
    makefile = (root / "Makefile").read_text()
    (demo_rule,) = re.findall(r"^demo:(.*)$", makefile, re.M)
    assert "$(STAMP)" not in demo_rule.split()
    assert "-e '.[demo]'" in makefile


# -- item 2: the middleware checks its stores at startup --------------------------------------
def _broker_on(mp: MockProvider, path: pathlib.Path) -> Broker:
    from oauth2_broker_mw.stores import SQLiteStore

    return Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        store=SQLiteStore(path),
        http_client=mp.client(),
    )


def test_an_asgi_app_with_an_unusable_store_fails_at_startup(
    mp: MockProvider, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from oauth2_broker_mw.middleware import BrokerMiddleware

    path = tmp_path / "gone" / "tokens.db"
    app = BrokerMiddleware(
        Starlette(),
        brokers={"mock": _broker_on(mp, path)},
        secret_key="Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        base_url="https://testserver",
    )
    client = TestClient(app, base_url="https://testserver")
    with caplog.at_level(logging.ERROR), pytest.raises(StoreUnavailable, match="does not exist"):
        client.__enter__()  # the lifespan startup
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unusable at startup" in logged and str(path) in logged and "check_stores" in logged


def test_uvicorn_refuses_to_start_with_an_unusable_store(
    mp: MockProvider, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket

    import uvicorn
    from starlette.applications import Starlette

    from oauth2_broker_mw.middleware import BrokerMiddleware

    path = tmp_path / "gone" / "tokens.db"
    app = Starlette()
    app.add_middleware(
        BrokerMiddleware,
        brokers={"mock": _broker_on(mp, path)},
        secret_key="Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        base_url="http://127.0.0.1",
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    try:
        with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exited:
            asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    assert exited.value.code == 3  # uvicorn's "startup failed" exit status
    assert not server.started  # it never accepted a request
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("uvicorn"))
    assert str(path) in logged and "Application startup failed" in logged


def test_a_wsgi_app_with_an_unusable_store_fails_when_it_is_built(
    mp: MockProvider, tmp_path: pathlib.Path
) -> None:
    from oauth2_broker_mw.middleware import BrokerWSGIMiddleware

    path = tmp_path / "gone" / "tokens.db"
    options: dict[str, Any] = {
        "brokers": {"mock": _broker_on(mp, path)},
        "secret_key": "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        "base_url": "https://app.example",
    }
    with pytest.raises(StoreUnavailable, match=r"does not exist: create it"):
        BrokerWSGIMiddleware(lambda e, s: [], **options)
    BrokerWSGIMiddleware(lambda e, s: [], check_stores=False, **options)  # the opt-out


# -- items 5 and 6: the docs' home page starts a new user off, with signatures that work ---------
def test_the_docs_show_no_positional_authorization_required() -> None:
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        for call in re.findall(r"AuthorizationRequired\(([^)]*)\)", path.read_text()):
            first = call.split(",")[0].strip()
            assert not first or "=" in first, f"{path.name}: AuthorizationRequired({call})"


def test_the_docs_home_page_opens_with_where_to_start() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    text = (root / "docs" / "index.md").read_text()
    start = text.index("## Start here")
    assert start < text.index("## `lease()`")
    for page in ("getting-started.md", "demo.md", "testing.md", "reference.md"):
        assert f"]({page})" in text[start:]


# -- items 3, 4, 11: what the README and the docs promise -------------------------------------
ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_readme_links_the_examples() -> None:
    text = (ROOT / "README.md").read_text()
    assert "](examples/)" in text
    assert sorted(p.name for p in (ROOT / "examples").glob("*_app.py"))


def test_the_readme_lists_the_core_dependencies_as_pyproject_does() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[\[<>=~! ]", d)[0].lower() for d in project["dependencies"]}
    (line,) = re.findall(
        r"^pip install oauth2-broker-mw\s+# core: (.+)$", (ROOT / "README.md").read_text(), re.M
    )
    assert {n.strip().lower() for n in line.split(",")} == core
    assert {"cryptography", "joserfc"} <= core  # why [crypto] installs nothing more


def test_otel_and_broker_telemetry_are_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install 'oauth2-broker-mw[otel]'" in readme and "telemetry=" in readme
    page = (ROOT / "docs" / "observability.md").read_text()
    assert "[otel]" in page and "Broker(descriptor" in page and "telemetry=telemetry" in page
    assert "observability.md" in (ROOT / "mkdocs.yml").read_text()


def test_brokerauth_for_one_service_needs_no_tenant_or_principal(mp: MockProvider) -> None:
    import httpx2

    from oauth2_broker_mw import BrokerAuth

    broker = Broker(
        mp.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        http_client=mp.client(),
    )
    for auth in (
        BrokerAuth(broker, scopes=["email.read"]),
        BrokerAuth.for_service(broker, ["email.read"]),
    ):
        with httpx2.Client(auth=auth, transport=mp.transport()) as client:
            assert client.get(mp.resource_url).status_code == 200
    assert mp.counters["token:client_credentials"] == 1  # one token, the app's, for both
    broker.close()


def test_the_auth_docs_show_the_one_line_form_beside_httpx_auth() -> None:
    text = (ROOT / "docs" / "auth.md").read_text()
    one_line = text.index("auth=BrokerAuth.for_service(broker, [")
    theirs = text.index("auth=OAuth2ClientCredentials(")
    assert 0 < theirs - one_line < 400  # in the same block, side by side


# -- item 10: the Flask and Django pages warn of the dev servers' access logs ----------------
@pytest.mark.parametrize(("page", "logger"), [("flask", "werkzeug"), ("django", "django.server")])
def test_the_framework_pages_say_the_dev_server_logs_code_and_state(page: str, logger: str) -> None:
    text = (ROOT / "docs" / "frameworks" / f"{page}.md").read_text()
    assert "logs the callback's `code` and `state`" in text
    assert "oauth2_broker_mw.middleware" in text and "RedactOAuthQuery" in text
    assert logger in text and "code=[redacted]&state=[redacted]" in text
