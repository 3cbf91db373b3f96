"""Leak sweep: no token, code, state or secret in anything of ours on a failure path.

Every secret of a test carries one distinctive tag (``LEAK<hex>``) or is registered by value:
access and refresh tokens and authorization codes minted by MockProvider, the broker's state
and PKCE verifier, the client secret, the middleware's session key, the DPoP private key,
ID tokens, and the tokens a hostile provider puts in its bodies. Each test drives one failure
path through real parts (MockProvider, SQLite files, Redis, in-process ASGI/WSGI) and then
searches every channel an operator or an error reporter sees:

* every log record of ``oauth2_broker_mw`` at DEBUG, formatted with its traceback, and the
  frames of the exception it carries;
* every OpenTelemetry span (attributes, events, exception events) and the metrics;
* every lifecycle event delivered to a subscriber (repr and each field);
* ``repr`` / ``str`` / attributes / formatted traceback of each raised exception and its
  ``__cause__`` / ``__context__`` chain;
* the locals of every traceback frame in ``oauth2_broker_mw`` (``repr`` of each value, and a
  ``str`` / ``bytes`` value itself; a :class:`Secret` is fine, its repr is redacted);
* ``repr`` of the records, leases and reports returned;
* the status, headers and body the middleware sends to the browser.

A finding names the path (the test id), the channel and the secret's kind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import sqlite3
import sys
import traceback
import urllib.parse
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from types import TracebackType
from typing import Any

import httpx2
import pytest
import requests
from _fakes import FakeClock
from _services import require_module

from oauth2_broker_mw import AuthorizationFlowError
from oauth2_broker_mw import AuthorizationRequired
from oauth2_broker_mw import Broker
from oauth2_broker_mw import BrokerAuth
from oauth2_broker_mw import BrokerError
from oauth2_broker_mw import CorruptRecord
from oauth2_broker_mw import MalformedResponse
from oauth2_broker_mw import PendingAuthorization
from oauth2_broker_mw import PrincipalId
from oauth2_broker_mw import ProviderError
from oauth2_broker_mw import ProviderId
from oauth2_broker_mw import RateLimited
from oauth2_broker_mw import ScopeSet
from oauth2_broker_mw import Secret
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw import StorageError
from oauth2_broker_mw import StoreKey
from oauth2_broker_mw import StoreUnavailable
from oauth2_broker_mw import TenantId
from oauth2_broker_mw import TokenRecord
from oauth2_broker_mw import TokenStore
from oauth2_broker_mw import TransientProviderError
from oauth2_broker_mw import TransportError
from oauth2_broker_mw import UnsupportedTokenType
from oauth2_broker_mw._core import oauth
from oauth2_broker_mw._core.errors import UnsafeRequest
from oauth2_broker_mw.broker import RevocationRetry
from oauth2_broker_mw.events import Event
from oauth2_broker_mw.events import RevocationDropped
from oauth2_broker_mw.events import RevocationQueued
from oauth2_broker_mw.events import RotationFlushed
from oauth2_broker_mw.events import RotationUnsaved
from oauth2_broker_mw.telemetry import Telemetry
from oauth2_broker_mw.testing.mock_provider import MockClient
from oauth2_broker_mw.testing.mock_provider import MockProvider

sdk_trace = require_module("opentelemetry.sdk.trace", "otel")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

TAG = "LEAK" + uuid.uuid4().hex[:10]
TENANT, USER, SCOPES = "acme", "alice", ["openid", "email"]
REDIRECT = "https://app.example/cb"
CLIENT_ID = "test-client"
CLIENT_SECRET = f"CS-{TAG}-{uuid.uuid4().hex}"
SESSION_KEY = f"SK-{TAG}-{uuid.uuid4().hex}"
OUR_MODULE = "oauth2_broker_mw"
MOCK_MODULE = "oauth2_broker_mw.testing"  # the fake provider: holding tokens is its job


def marker(kind: str) -> str:
    """A fresh secret of ``kind`` that the sweep recognises."""
    return f"{kind}-{TAG}-{uuid.uuid4().hex}"


# -- finding secrets --------------------------------------------------------------------------
class Sweep:
    """Collects what the channels show and reports every marker found, with where."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.values: dict[str, str] = {CLIENT_SECRET: "client_secret", SESSION_KEY: "secret_key"}
        self.findings: list[str] = []
        self.events: list[Event] = []
        self.brokers: list[Broker] = []
        self.checked_frames = 0
        self.exempt: set[int] = set()  # ids of objects the caller handed us (see its test)
        self.exporter = InMemorySpanExporter()
        tracer_provider = sdk_trace.TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.metrics = InMemoryMetricReader()
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[self.metrics]),
        )

    def add(self, kind: str, value: str | None) -> None:
        """Register a secret that does not carry the tag (a DPoP key, an ID token)."""
        if value:
            self.values[value] = kind

    def _kinds(self, text: str) -> list[str]:
        kinds = []
        if TAG in text:
            kinds.append("tagged secret")
        for value, kind in self.values.items():
            if value in text or (len(value) >= 24 and value[-16:] in text):
                kinds.append(kind)
        return kinds

    def check(self, channel: str, value: object) -> None:
        if isinstance(value, bytes):
            text = value.decode("latin-1")
        elif isinstance(value, str):
            text = value
        else:
            try:
                text = repr(value)
            except Exception as exc:  # a repr that fails shows nothing
                text = f"<repr failed: {type(exc).__name__}>"
        for kind in self._kinds(text):
            at = text.find(TAG) if TAG in text else 0
            excerpt = text[max(0, at - 60) : at + 40].replace("\n", " ")
            self.findings.append(f"{channel}: {kind} in ...{excerpt}...")

    # -- channels
    def exception(self, error: BaseException, channel: str = "exception") -> None:
        seen: set[int] = set()
        todo: list[tuple[str, BaseException]] = [(channel, error)]
        while todo:
            where, exc = todo.pop()
            if id(exc) in seen:
                continue
            seen.add(id(exc))
            name = type(exc).__name__
            self.check(f"{where} str({name})", str(exc))
            self.check(f"{where} repr({name})", repr(exc))
            self.check(f"{where} {name}.args", exc.args)
            for attr, value in vars(exc).items() if hasattr(exc, "__dict__") else ():
                self.check(f"{where} {name}.{attr}", value)
            self.check(f"{where} traceback text", "".join(traceback.format_exception(exc)))
            self.frames(exc.__traceback__, f"{where} ({name})")
            if exc.__cause__ is not None:
                todo.append((f"{where}.__cause__", exc.__cause__))
            if exc.__context__ is not None:
                todo.append((f"{where}.__context__", exc.__context__))
            for index, inner in enumerate(getattr(exc, "exceptions", ()) or ()):
                if isinstance(inner, BaseException):
                    todo.append((f"{where}.exceptions[{index}]", inner))

    def frames(self, tb: TracebackType | None, where: str) -> None:
        while tb is not None:
            frame = tb.tb_frame
            module = str(frame.f_globals.get("__name__", ""))
            if module.startswith(OUR_MODULE) and not module.startswith(MOCK_MODULE):
                self.checked_frames += 1
                for name, value in frame.f_locals.items():
                    if id(value) in self.exempt:
                        continue
                    channel = f"{where} locals of {module}.{frame.f_code.co_name}: {name}"
                    self.check(channel, value)
            tb = tb.tb_next

    def result(self, what: str, value: object) -> None:
        self.check(f"result {what}", value)

    def response(self, what: str, response: Any) -> None:
        self.check(f"HTTP {what} status", str(response.status_code))
        for name, value in response.headers.multi_items():
            self.check(f"HTTP {what} header {name}", value)
        self.check(f"HTTP {what} body", response.content)

    def event(self, event: Event) -> None:
        self.events.append(event)

    def _logs(self) -> None:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for record in self.caplog.records:
            if not record.name.startswith(OUR_MODULE):
                continue
            where = f"log {record.name}:{record.lineno}"
            self.check(where, formatter.format(record))
            self.check(f"{where} args", record.args)
            self.check(f"{where} record", vars(record))
            if record.exc_info and record.exc_info[1] is not None:
                self.exception(record.exc_info[1], f"{where} exc_info")

    def _telemetry(self) -> None:
        for span in self.exporter.get_finished_spans():
            self.check(f"span {span.name!r}", span.to_json())
        data = self.metrics.get_metrics_data()
        if data is not None:
            self.check("metrics", data.to_json())

    def _events(self) -> None:
        for broker in self.brokers:
            broker.events.flush()
        for event in self.events:
            self.check(f"event {type(event).__name__}", repr(event))
            for field in dataclasses.fields(event):
                self.check(f"event {type(event).__name__}.{field.name}", getattr(event, field.name))
            self.check(f"event {type(event).__name__}.to_dict()", json.dumps(event.to_dict()))

    def assert_clean(self) -> None:
        self._events()
        self._logs()
        self._telemetry()
        assert not self.findings, "secrets found:\n  " + "\n  ".join(dict.fromkeys(self.findings))


# -- the parts -------------------------------------------------------------------------------
class _TaggedSecrets(SimpleNamespace):
    """``secrets`` whose values of ``tagged_size`` random bytes carry the tag: the MockProvider's
    codes and tokens (32), the middleware's session ids (24)."""

    tagged_size = 32

    def token_urlsafe(self, nbytes: int | None = None) -> str:
        value = secrets.token_urlsafe(nbytes)
        return f"{TAG}-{value}" if nbytes == self.tagged_size else value


def _tagged_pkce_pair() -> tuple[str, str]:
    verifier = f"PKCE-{TAG}-{secrets.token_urlsafe(32)}"
    return verifier, oauth.s256_challenge(verifier)


@pytest.fixture
def sweep(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sweep]:
    caplog.set_level(logging.DEBUG, logger=OUR_MODULE)
    tagged = _TaggedSecrets(token_hex=secrets.token_hex, compare_digest=secrets.compare_digest)
    for module in list(sys.modules.values()):  # every layer of the MockProvider that mints
        name = getattr(module, "__name__", "")
        if name.startswith(MOCK_MODULE) and getattr(module, "secrets", None) is secrets:
            monkeypatch.setattr(module, "secrets", tagged)
    from oauth2_broker_mw.middleware import _handlers

    monkeypatch.setattr(_handlers, "secrets", _TaggedSecrets(tagged_size=24))  # session ids
    monkeypatch.setattr(oauth, "new_state", lambda: f"STATE-{TAG}-{secrets.token_urlsafe(32)}")
    monkeypatch.setattr(oauth, "new_pkce_pair", _tagged_pkce_pair)
    found = Sweep(caplog)
    yield found
    for broker in found.brokers:
        broker.close()


class _AfterRefresh:
    """An HTTP client that runs ``then`` once, right after the provider answered a refresh."""

    def __init__(self, inner: Any, then: list[Callable[[], None]]) -> None:
        self.inner = inner
        self.then = then

    grant = b"grant_type=refresh_token"

    def _after(self, method: str, url: str, kwargs: dict[str, Any]) -> None:
        if method == "POST" and self.grant in (kwargs.get("content") or b""):
            while self.then:
                self.then.pop(0)()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.inner.request(method, url, **kwargs)
        self._after(method, url, kwargs)
        return response


class _AsyncAfterRefresh(_AfterRefresh):
    async def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
        response = await self.inner.request(method, url, **kwargs)
        self._after(method, url, kwargs)
        return response


class Rig:
    """A MockProvider, a store and a Broker wired to the sweep."""

    def __init__(
        self,
        sweep: Sweep,
        tmp_path: Path,
        *,
        store: TokenStore | None = None,
        descriptor: dict[str, Any] | None = None,
        provider: dict[str, Any] | None = None,
        **broker_options: Any,
    ) -> None:
        self.sweep = sweep
        self.clock = FakeClock()
        self.mp = MockProvider(
            clock=self.clock,
            clients=[MockClient(CLIENT_ID, client_secret=CLIENT_SECRET)],
            **{"par": "off", **(provider or {})},
        )
        mint_id_token = self.mp._id_token

        def id_token(family: Any, access_token: str | None) -> str:
            value = mint_id_token(family, access_token)
            sweep.add("id_token", value)
            return value

        self.mp._id_token = id_token  # type: ignore[method-assign]
        self.store = store if store is not None else SQLiteStore(tmp_path / "tokens.db")
        self.after_refresh: list[Callable[[], None]] = []
        self.http = _AfterRefresh(self.mp.client(), self.after_refresh)
        self.ahttp = _AsyncAfterRefresh(self.mp.async_client(), self.after_refresh)
        self.broker = Broker(
            self.mp.descriptor(**(descriptor or {})),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            store=self.store,
            http_client=self.http,
            async_http_client=self.ahttp,
            clock=self.clock,
            telemetry=sweep.telemetry,
            **broker_options,
        )
        sweep.brokers.append(self.broker)
        self.broker.subscribe(sweep.event)

    def callback(self) -> dict[str, str]:
        request = self.broker.start_authorization(
            tenant=TENANT, principal=USER, scopes=SCOPES, redirect_uri=REDIRECT
        )
        answer = self.mp.client().get(request.url)
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(answer.headers["location"]).query))

    def login(self) -> Any:
        params = self.callback()
        record = self.broker.exchange_code(state=params["state"], code=params["code"])
        self.sweep.result("login record", record)
        return record

    def refresh(self, mode: str) -> Any:
        if mode == "sync":
            return self.broker.refresh(tenant=TENANT, principal=USER, scopes=SCOPES)
        return asyncio.run(self.broker.arefresh(tenant=TENANT, principal=USER, scopes=SCOPES))

    def exchange(self, mode: str, params: dict[str, str]) -> Any:
        if mode == "sync":
            return self.broker.exchange_code(state=params["state"], code=params["code"])
        return asyncio.run(self.broker.aexchange_code(state=params["state"], code=params["code"]))


def _fails(
    sweep: Sweep, kind: type[BaseException] | tuple[type[BaseException], ...], run: Any
) -> BaseException:
    with pytest.raises(kind) as caught:
        run()
    before = sweep.checked_frames
    sweep.exception(caught.value)
    assert sweep.checked_frames > before, "the walk must see frames of ours"
    return caught.value


MODES = ["sync", "async"]


# -- token endpoint: the provider says no, or says something we cannot use -------------------
def _token_body(**fields: Any) -> str:
    return json.dumps(fields)


REFRESH_FAULTS: dict[str, Callable[[Rig, Any], tuple[dict[str, Any], type[BaseException]]]] = {
    # a provider that echoes the refresh token it refused
    "400 invalid_grant": lambda rig, first: (
        {
            "kind": "error",
            "status": 400,
            "error": "invalid_grant",
            "error_description": f"refresh token {first.refresh_token.get_secret_value()} revoked",
        },
        AuthorizationRequired,
    ),
    "401 invalid_client echoing the secret": lambda rig, first: (
        {
            "kind": "error",
            "status": 401,
            "error": "invalid_client",
            "error_description": f"client_secret={CLIENT_SECRET} is wrong",
        },
        ProviderError,
    ),
    "503 temporarily_unavailable": lambda rig, first: (
        {"kind": "error", "status": 503, "retry_after": 1},
        TransientProviderError,
    ),
    "HTML error page": lambda rig, first: ({"kind": "html", "status": 502}, TransientProviderError),
    "malformed JSON": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": f'{{"access_token": "{marker("AT")}", "refresh_token": "{marker("RT")}',
        },
        MalformedResponse,
    ),
    "duplicated keys": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": f'{{"access_token": "{marker("AT")}", "access_token": "{marker("AT")}", '
            f'"token_type": "Bearer", "refresh_token": "{marker("RT")}"}}',
        },
        MalformedResponse,
    ),
    "bad token_type": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": _token_body(
                access_token=marker("AT"), token_type="mac", refresh_token=marker("RT")
            ),
        },
        UnsupportedTokenType,
    ),
    "no token_type": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": _token_body(access_token=marker("AT"), refresh_token=marker("RT")),
        },
        MalformedResponse,
    ),
    "access token not a header value": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": _token_body(
                access_token=marker("AT") + " \r\nX: y",
                token_type="Bearer",
                refresh_token=marker("RT"),
            ),
        },
        MalformedResponse,
    ),
    "form body with a repeated parameter": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/x-www-form-urlencoded",
            "body": f"access_token={marker('AT')}&access_token={marker('AT')}&token_type=bearer",
        },
        MalformedResponse,
    ),
    "error member with HTTP 200 echoing tokens": lambda rig, first: (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": _token_body(
                error="invalid_grant",
                error_description=f"bad refresh_token {first.refresh_token.get_secret_value()}",
            ),
        },
        AuthorizationRequired,
    ),
    "non-OAuth 400 body echoing the request": lambda rig, first: (
        {
            "kind": "raw",
            "status": 400,
            "content_type": "text/plain",
            "body": f"bad request: grant_type=refresh_token&refresh_token="
            f"{first.refresh_token.get_secret_value()}&client_secret={CLIENT_SECRET}",
        },
        ProviderError,
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(REFRESH_FAULTS))
def test_token_endpoint_failure_at_refresh(
    sweep: Sweep, tmp_path: Path, fault: str, mode: str
) -> None:
    rig = Rig(sweep, tmp_path)
    first = rig.login()
    options, expected = REFRESH_FAULTS[fault](rig, first)
    rig.mp.faults.add("token", grant_type="refresh_token", **options)
    _fails(sweep, expected, lambda: rig.refresh(mode))
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_429_with_retry_after_then_the_backoff_refuses(
    sweep: Sweep, tmp_path: Path, mode: str
) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    rig.mp.faults.add("token", "error", status=429, retry_after=120, grant_type="refresh_token")
    first = _fails(sweep, TransientProviderError, lambda: rig.refresh(mode))
    assert isinstance(first, ProviderError) and first.retry_after == 120
    again = _fails(sweep, RateLimited, lambda: rig.refresh(mode))
    assert isinstance(again, RateLimited) and again.retry_after > 0
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_network_error_at_the_token_endpoint(sweep: Sweep, tmp_path: Path, mode: str) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    # a real refused connection: the loopback port is closed
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = Broker(
        rig.mp.descriptor(token_endpoint=f"http://127.0.0.1:{port}/token"),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        store=rig.store,
        clock=rig.clock,
        telemetry=sweep.telemetry,
        timeout=2.0,
    )
    sweep.brokers.append(down)
    down.subscribe(sweep.event)
    if mode == "sync":
        _fails(
            sweep,
            TransportError,
            lambda: down.refresh(tenant=TENANT, principal=USER, scopes=SCOPES),
        )
    else:
        _fails(
            sweep,
            TransportError,
            lambda: asyncio.run(down.arefresh(tenant=TENANT, principal=USER, scopes=SCOPES)),
        )
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_an_oversized_token_response(sweep: Sweep, tmp_path: Path, mode: str) -> None:
    rig = Rig(sweep, tmp_path, max_response_bytes=4096)
    rig.login()
    body = _token_body(access_token=marker("AT"), token_type="Bearer", padding="x" * 8000)
    rig.mp.faults.add(
        "token",
        "raw",
        status=200,
        body=body,
        content_type="application/json",
        grant_type="refresh_token",
    )
    _fails(sweep, TransportError, lambda: rig.refresh(mode))
    sweep.assert_clean()


# -- token endpoint at login ------------------------------------------------------------------
LOGIN_FAULTS: dict[str, tuple[dict[str, Any], type[BaseException]]] = {
    "400 invalid_grant": (
        {"kind": "error", "status": 400, "error": "invalid_grant"},
        ProviderError,
    ),
    "503": ({"kind": "error", "status": 503}, TransientProviderError),
    "bad token_type": (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": _token_body(
                access_token=marker("AT"), token_type="mac", refresh_token=marker("RT")
            ),
        },
        UnsupportedTokenType,
    ),
    "duplicated keys": (
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": f'{{"access_token": "{marker("AT")}", "token_type": "Bearer", '
            f'"token_type": "Bearer", "refresh_token": "{marker("RT")}"}}',
        },
        MalformedResponse,
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(LOGIN_FAULTS))
def test_token_endpoint_failure_at_login(
    sweep: Sweep, tmp_path: Path, fault: str, mode: str
) -> None:
    rig = Rig(sweep, tmp_path)
    options, expected = LOGIN_FAULTS[fault]
    rig.mp.faults.add("token", grant_type="authorization_code", **options)
    params = rig.callback()
    _fails(sweep, expected, lambda: rig.exchange(mode, params))
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_dpop_downgrade_at_login(sweep: Sweep, tmp_path: Path, mode: str) -> None:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256").as_dict(private=True)
    sweep.add("dpop_key", str(key["d"]))
    # the provider ignores the proof and answers Bearer: a downgrade
    rig = Rig(sweep, tmp_path, descriptor={"dpop": True}, dpop_key=key)
    params = rig.callback()
    _fails(sweep, UnsupportedTokenType, lambda: rig.exchange(mode, params))
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_dpop_downgrade_at_refresh(sweep: Sweep, tmp_path: Path, mode: str) -> None:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256").as_dict(private=True)
    sweep.add("dpop_key", str(key["d"]))
    rig = Rig(
        sweep, tmp_path, descriptor={"dpop": True}, provider={"dpop": "optional"}, dpop_key=key
    )
    first = rig.login()
    assert first.token_type == "DPoP"
    body = _token_body(access_token=marker("AT"), token_type="Bearer", refresh_token=marker("RT"))
    rig.mp.faults.add(
        "token",
        "raw",
        status=200,
        body=body,
        content_type="application/json",
        grant_type="refresh_token",
    )
    _fails(sweep, UnsupportedTokenType, lambda: rig.refresh(mode))
    sweep.assert_clean()


BAD_ID_TOKENS: dict[str, Callable[[MockProvider], None]] = {
    "wrong iss": lambda mp: mp.id_token_overrides.update(iss="https://evil.test"),
    "wrong aud": lambda mp: mp.id_token_overrides.update(aud="another-client"),
    "alg none": lambda mp: setattr(mp, "id_token_signing", "none"),
    "foreign key": lambda mp: setattr(mp, "id_token_signing", "foreign_key"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", list(BAD_ID_TOKENS))
def test_bad_id_token_at_login(sweep: Sweep, tmp_path: Path, bad: str, mode: str) -> None:
    rig = Rig(sweep, tmp_path)
    BAD_ID_TOKENS[bad](rig.mp)
    params = rig.callback()
    _fails(sweep, AuthorizationFlowError, lambda: rig.exchange(mode, params))
    sweep.assert_clean()


@pytest.mark.parametrize("bad", list(BAD_ID_TOKENS))
def test_bad_id_token_at_refresh(sweep: Sweep, tmp_path: Path, bad: str) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    BAD_ID_TOKENS[bad](rig.mp)
    _fails(sweep, AuthorizationFlowError, lambda: rig.refresh("sync"))
    sweep.assert_clean()


# -- code exchange failures -------------------------------------------------------------------
def _wrong_state(rig: Rig) -> dict[str, str]:
    params = rig.callback()
    return {"state": marker("STATE"), "code": params["code"]}


def _expired(rig: Rig) -> dict[str, str]:
    params = rig.callback()
    rig.clock.advance(3600)
    return params


def _replayed(rig: Rig) -> dict[str, str]:
    params = rig.callback()
    rig.broker.exchange_code(state=params["state"], code=params["code"])
    again = rig.callback()  # a fresh state, the spent code
    return {"state": again["state"], "code": params["code"]}


def _replayed_state(rig: Rig) -> dict[str, str]:
    params = rig.callback()
    rig.broker.exchange_code(state=params["state"], code=params["code"])
    return params


EXCHANGE_FAILURES: dict[str, Callable[[Rig], dict[str, str]]] = {
    "wrong state": _wrong_state,
    "expired state": _expired,
    "replayed code": _replayed,
    "replayed state": _replayed_state,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("failure", list(EXCHANGE_FAILURES))
def test_code_exchange_failure(sweep: Sweep, tmp_path: Path, failure: str, mode: str) -> None:
    rig = Rig(sweep, tmp_path)
    params = EXCHANGE_FAILURES[failure](rig)
    _fails(sweep, (AuthorizationFlowError, ProviderError), lambda: rig.exchange(mode, params))
    sweep.assert_clean()


# -- starting a login: the store or the PAR endpoint fails ------------------------------------
class _WriteLock:
    """Another connection that holds SQLite's write lock from ``take()`` until the exit."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def take(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __enter__(self) -> _WriteLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.close()


def _locked_rig(sweep: Sweep, tmp_path: Path) -> tuple[Rig, _WriteLock]:
    """A rig on SQLite whose writes give up fast, and the lock that makes them fail."""
    path = tmp_path / "tokens.db"
    rig = Rig(sweep, tmp_path, store=SQLiteStore(path, timeout=0.2), write_retry_for=0.3)
    return rig, _WriteLock(path)


@pytest.mark.parametrize("mode", MODES)
def test_start_authorization_with_the_store_locked(sweep: Sweep, tmp_path: Path, mode: str) -> None:
    rig, lock = _locked_rig(sweep, tmp_path)
    rig.callback()  # the schema exists
    options = {"tenant": TENANT, "principal": USER, "scopes": SCOPES, "redirect_uri": REDIRECT}
    start = (
        (lambda: rig.broker.start_authorization(**options))
        if mode == "sync"
        else (lambda: asyncio.run(rig.broker.astart_authorization(**options)))
    )
    with lock:
        lock.take()
        _fails(sweep, StoreUnavailable, start)
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_code_exchange_with_the_store_locked_after_the_provider_answered(
    sweep: Sweep, tmp_path: Path, mode: str
) -> None:
    rig, lock = _locked_rig(sweep, tmp_path)
    params = rig.callback()
    rig.http.grant = rig.ahttp.grant = b"grant_type=authorization_code"
    rig.after_refresh.append(lock.take)
    with lock:
        _fails(sweep, StoreUnavailable, lambda: rig.exchange(mode, params))
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [400, 503])
def test_start_authorization_with_the_par_endpoint_failing(
    sweep: Sweep, tmp_path: Path, status: int, mode: str
) -> None:
    rig = Rig(
        sweep,
        tmp_path,
        provider={"par": "required"},
        descriptor={"require_pushed_authorization_requests": True},
    )
    rig.mp.faults.add("par", "error", status=status)
    options = {"tenant": TENANT, "principal": USER, "scopes": SCOPES, "redirect_uri": REDIRECT}
    if mode == "sync":
        _fails(sweep, ProviderError, lambda: rig.broker.start_authorization(**options))
    else:
        _fails(
            sweep, ProviderError, lambda: asyncio.run(rig.broker.astart_authorization(**options))
        )
    sweep.assert_clean()


# -- the app's own token and the background refresher ---------------------------------------
def test_service_lease_refused_with_the_secret_echoed(sweep: Sweep, tmp_path: Path) -> None:
    rig = Rig(sweep, tmp_path)
    rig.mp.faults.add(
        "token",
        "error",
        status=401,
        error="invalid_client",
        error_description=f"client_secret={CLIENT_SECRET} does not match",
        grant_type="client_credentials",
    )
    _fails(sweep, ProviderError, lambda: rig.broker.service_lease(tenant=TENANT, scopes=["x"]))
    sweep.assert_clean()


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "error", "status": 503},
        {"kind": "error", "status": 400, "error": "invalid_grant"},
        {
            "kind": "raw",
            "status": 200,
            "content_type": "application/json",
            "body": _token_body(access_token=marker("AT"), token_type="mac"),
        },
    ],
    ids=["503", "invalid_grant", "bad token_type"],
)
def test_the_refresher_sweep_meets_a_failing_refresh(
    sweep: Sweep, tmp_path: Path, fault: dict[str, Any]
) -> None:
    from oauth2_broker_mw.refresher import Refresher

    rig = Rig(sweep, tmp_path)
    rig.login()
    rig.clock.advance(3600 - 60)  # inside the refresh window
    rig.mp.faults.add("token", grant_type="refresh_token", **fault)
    report = Refresher([rig.broker], window=300, clock=rig.clock).sweep()
    sweep.result("sweep report", report)
    assert report.failed + report.reauthorization_required == 1, report
    sweep.assert_clean()


# -- durable rotation: the store refuses after the provider answered -------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_rotation_the_store_refused_is_held_then_flushed(
    sweep: Sweep, tmp_path: Path, mode: str
) -> None:
    rig, lock = _locked_rig(sweep, tmp_path)
    first = rig.login()
    rig.after_refresh.append(lock.take)
    with lock:
        rotated = rig.refresh(mode)
        sweep.result("rotated record", rotated)
        assert rotated.refresh_token != first.refresh_token
        assert rig.broker.unsaved_rotations == 1
        sweep.result("lease", rig.broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES))
        # while the store is locked, the next refresh cannot take its lock
        _fails(sweep, StoreUnavailable, lambda: rig.refresh("sync"))
    assert rig.broker.flush_unsaved() == 0
    rig.broker.events.flush()
    kinds = {type(e) for e in sweep.events}
    assert {RotationUnsaved, RotationFlushed} <= kinds
    sweep.assert_clean()


# -- revocation queue: the provider is down at logout, drained later -------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_queued_revocation_retried_then_dropped(sweep: Sweep, tmp_path: Path, mode: str) -> None:
    rig = Rig(sweep, tmp_path, revocation_retry=RevocationRetry(initial=10, max_attempts=2))
    rig.login()
    rig.mp.faults.add("revoke", "error", status=503, retry_after=30, times=None)
    if mode == "sync":
        assert rig.broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES) is True
    else:
        assert asyncio.run(rig.broker.arevoke(tenant=TENANT, principal=USER, scopes=SCOPES))
    rig.clock.advance(60)
    drained = (
        rig.broker.drain_revocations()
        if mode == "sync"
        else asyncio.run(rig.broker.adrain_revocations())
    )
    sweep.result("drain", drained)
    rig.broker.events.flush()
    kinds = {type(e) for e in sweep.events}
    assert {RevocationQueued, RevocationDropped} <= kinds, kinds
    sweep.assert_clean()


def test_a_queued_revocation_delivered_later(sweep: Sweep, tmp_path: Path) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    rig.mp.faults.add("revoke", "html", status=502)
    assert rig.broker.revoke(tenant=TENANT, principal=USER, scopes=SCOPES) is True
    rig.clock.advance(120)
    sweep.result("drain", rig.broker.drain_revocations())
    sweep.assert_clean()


# -- corrupt store rows ----------------------------------------------------------------------
def _corrupt_sqlite(rig: Rig, record: Any, path: Path) -> None:
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT data FROM tokens").fetchone()
        db.execute("UPDATE tokens SET data = ?", (data[:-3],))


def test_a_corrupt_sqlite_row(sweep: Sweep, tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    rig = Rig(sweep, tmp_path, store=SQLiteStore(path))
    record = rig.login()
    _corrupt_sqlite(rig, record, path)
    rig.broker._forget(record.key)  # the in-process cache must not answer
    _fails(
        sweep,
        AuthorizationRequired,
        lambda: rig.broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES),
    )
    sweep.assert_clean()


def test_a_corrupt_pending_login_row(sweep: Sweep, tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    rig = Rig(sweep, tmp_path, store=SQLiteStore(path))
    params = rig.callback()
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT data FROM pending").fetchone()
        db.execute("UPDATE pending SET data = ?", (data[:-3],))
    _fails(sweep, AuthorizationFlowError, lambda: rig.exchange("sync", params))
    sweep.assert_clean()


def test_a_tampered_encrypted_row(sweep: Sweep, tmp_path: Path) -> None:
    from oauth2_broker_mw.stores.encrypted import EncryptedStore

    path = tmp_path / "tokens.db"
    data_key = f"DK-{TAG}-".encode()[:32].ljust(32, b"k")
    sweep.add("data key", data_key.decode())
    rig = Rig(sweep, tmp_path, store=EncryptedStore(SQLiteStore(path), {"k1": data_key}, "k1"))
    record = rig.login()
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT data FROM tokens").fetchone()
        flipped = data[:-12] + ("A" if data[-12] != "A" else "B") + data[-11:]
        db.execute("UPDATE tokens SET data = ?", (flipped,))
    rig.broker._forget(record.key)
    _fails(
        sweep,
        AuthorizationRequired,
        lambda: rig.broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES),
    )
    sweep.assert_clean()


def test_a_corrupt_redis_row(sweep: Sweep, tmp_path: Path) -> None:
    from _services import redis_cleanup
    from _services import require_redis
    from _services import unique_name

    url = require_redis()
    import redis

    from oauth2_broker_mw.stores.redis import RedisStore

    prefix = unique_name("leak") + ":"
    store = RedisStore(url, prefix=prefix)
    try:
        rig = Rig(sweep, tmp_path, store=store)
        record = rig.login()
        client = redis.Redis.from_url(url)
        try:
            for name in client.scan_iter(match=prefix + "*"):
                if client.type(name) == b"string":
                    value = client.get(name)
                    assert value is not None
                    client.set(name, value[:-3])
                elif client.type(name) == b"hash":
                    for field, value in client.hgetall(name).items():
                        if len(value) > 40:
                            client.hset(name, field, value[:-3])
        finally:
            client.close()
        rig.broker._forget(record.key)
        _fails(
            sweep,
            AuthorizationRequired,
            lambda: rig.broker.lease(tenant=TENANT, principal=USER, scopes=SCOPES),
        )
        sweep.assert_clean()
    finally:
        redis_cleanup(prefix)


# -- corrupt rows read from the store directly (an app's or the CLI's own call) ---------------
def _record(principal: str = USER) -> TokenRecord:
    return TokenRecord(
        key=StoreKey.build(TENANT, principal, "mock", SCOPES),
        access_token=Secret(marker("AT")),
        refresh_token=Secret(marker("RT")),
        id_token=Secret(marker("IDT")),
        expires_at=2e9,
    )


_TRUNCATE = "UPDATE tokens SET data = substr(data, 1, length(data) - 3) WHERE key_id = :key"
_OTHER_ROW = (
    "UPDATE tokens SET data = (SELECT data FROM tokens WHERE key_id = :other) WHERE key_id = :key"
)
_NO_KEY = "UPDATE tokens SET data = json_remove(data, '$.key') WHERE key_id = :key"


def _direct_store(kind: str, tmp_path: Path) -> tuple[TokenStore, Callable[[str], None]]:
    """A store holding two tagged records, and what corrupts the first one's row."""
    if kind.startswith("sqlite"):
        store: TokenStore = SQLiteStore(tmp_path / "tokens.db")
        sql = {"sqlite truncated": _TRUNCATE, "sqlite another key's row": _OTHER_ROW}.get(
            kind, _NO_KEY
        )

        def corrupt(other: str) -> None:
            with sqlite3.connect(tmp_path / "tokens.db") as db:
                db.execute(sql, {"key": _record().key.id, "other": other})

        return store, corrupt
    if kind == "encrypted":
        from oauth2_broker_mw.stores.encrypted import EncryptedStore

        inner = SQLiteStore(tmp_path / "tokens.db")

        def flip(other: str) -> None:
            with sqlite3.connect(tmp_path / "tokens.db") as db:
                (data,) = db.execute(
                    "SELECT data FROM tokens WHERE key_id = ?", (_record().key.id,)
                ).fetchone()
                at = data.index('"access_token"') + 40
                db.execute(
                    "UPDATE tokens SET data = ? WHERE key_id = ?",
                    (
                        data[:at] + ("A" if data[at] != "A" else "B") + data[at + 1 :],
                        _record().key.id,
                    ),
                )

        return EncryptedStore(inner, {"k1": b"k" * 32}, "k1"), flip
    if kind == "redis":
        import redis
        from _services import require_redis
        from _services import unique_name

        from oauth2_broker_mw.stores.redis import RedisStore

        url = require_redis()
        prefix = unique_name("leak") + ":"

        def corrupt_redis(other: str) -> None:
            client = redis.Redis.from_url(url)
            try:
                for name in client.scan_iter(match=f"{prefix}*{_record().key.id}"):
                    if client.type(name) == b"hash":
                        for field, value in client.hgetall(name).items():
                            if len(value) > 40:
                                client.hset(name, field, value[:-3])  # the tokens stay
                    else:
                        value = client.get(name)
                        assert value is not None
                        client.set(name, value[:-3])
            finally:
                client.close()

        return RedisStore(url, prefix=prefix), corrupt_redis
    from _services import require_postgres
    from _services import unique_name

    from oauth2_broker_mw.stores.postgres import PostgresStore

    dsn = require_postgres()
    schema = unique_name("leak")
    store = PostgresStore(dsn, schema=schema)

    def corrupt_postgres(other: str) -> None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{schema}".tokens SET data = (SELECT data FROM "{schema}".tokens '
                "WHERE key_id = %s) WHERE key_id = %s",
                (other, _record().key.id),
            )

    return store, corrupt_postgres


DIRECT_STORES = [
    "sqlite truncated",
    "sqlite another key's row",
    "sqlite record without its key",
    "encrypted",
    "redis",
    "postgres",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", DIRECT_STORES)
def test_a_corrupt_row_read_from_the_store_directly(
    sweep: Sweep, tmp_path: Path, kind: str, mode: str
) -> None:
    store, corrupt = _direct_store(kind, tmp_path)
    try:
        store.put(_record())
        store.put(_record("bob"))
        corrupt(_record("bob").key.id)
        key = _record().key
        if mode == "sync":
            _fails(sweep, CorruptRecord, lambda: store.get(key))
        else:
            _fails(sweep, CorruptRecord, lambda: asyncio.run(store.aget(key)))
        sweep.assert_clean()
    finally:
        if kind == "redis":
            from _services import redis_cleanup

            redis_cleanup(store._prefix)  # type: ignore[attr-defined]
        elif kind == "postgres":
            from _services import postgres_drop_schema

            postgres_drop_schema(store._schema)  # type: ignore[attr-defined]
        store.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unreachable_store(kind: str) -> TokenStore:
    port = _closed_port()
    if kind == "redis":
        require_module("redis", "redis")
        from oauth2_broker_mw.stores.redis import RedisStore

        return RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout=1.0)
    require_module("psycopg", "postgres")
    from oauth2_broker_mw.stores.postgres import PostgresStore

    return PostgresStore(f"postgresql://broker@127.0.0.1:{port}/test", timeout=1.0)


def _pending() -> PendingAuthorization:
    return PendingAuthorization(
        state=Secret(marker("STATE")),
        tenant=TenantId(TENANT),
        principal=PrincipalId(USER),
        provider=ProviderId("mock"),
        scopes=ScopeSet.of(SCOPES),
        redirect_uri=REDIRECT,
        code_verifier=Secret(marker("PKCE")),
        nonce=None,
        created_at=0.0,
        expires_at=2e9,
    )


def _write_fails(
    sweep: Sweep, kind: type[BrokerError], store: TokenStore, write: str, value: Any, mode: str
) -> None:
    """``store.<write>(value)`` (or its async twin) raises ``kind``; the sweep sees it."""
    if mode == "sync":
        _fails(sweep, kind, lambda: getattr(store, write)(value))
    else:
        _fails(sweep, kind, lambda: asyncio.run(getattr(store, "a" + write)(value)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("write", ["put", "put_pending"])
@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_write_the_store_cannot_take(sweep: Sweep, kind: str, write: str, mode: str) -> None:
    """The server is down: the write's arguments (a record, a pending login) stay hidden."""
    store = _unreachable_store(kind)
    value: Any = _record() if write == "put" else _pending()
    try:
        _write_fails(sweep, StoreUnavailable, store, write, value, mode)
    finally:
        store.close()
    sweep.assert_clean()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("write", ["put", "put_pending"])
def test_a_postgres_write_cancelled_mid_statement(sweep: Sweep, write: str, mode: str) -> None:
    """Another session holds the row: the write waits and its statement is cancelled."""
    import psycopg
    from _services import postgres_drop_schema
    from _services import require_postgres
    from _services import unique_name

    from oauth2_broker_mw.stores.postgres import PostgresStore

    dsn, schema = require_postgres(), unique_name("leak")
    store = PostgresStore(dsn, schema=schema, statement_timeout=0.3)
    value: Any = _record() if write == "put" else _pending()
    getattr(store, write)(value)
    table, column, key = (
        ("tokens", "key_id", value.key.id)
        if write == "put"
        else ("pending", "state_key", value.state_key)
    )
    holder = psycopg.connect(dsn)
    try:
        holder.execute(
            f'SELECT 1 FROM "{schema}".{table} WHERE {column} = %s FOR UPDATE',
            (key,),
        )
        again: Any = _record() if write == "put" else replace(_pending(), state=value.state)
        _write_fails(sweep, StorageError, store, write, again, mode)
    finally:
        holder.rollback()
        holder.close()
        store.close()
        postgres_drop_schema(schema)
    sweep.assert_clean()


def test_a_corrupt_pending_row_taken_from_the_store_directly(sweep: Sweep, tmp_path: Path) -> None:
    rig = Rig(sweep, tmp_path)
    rig.callback()
    with sqlite3.connect(tmp_path / "tokens.db") as db:
        db.execute("UPDATE pending SET data = substr(data, 1, length(data) - 3)")
        (state_key,) = db.execute("SELECT state_key FROM pending").fetchone()
    _fails(sweep, CorruptRecord, lambda: rig.store.take_pending(state_key))
    sweep.assert_clean()


# -- BrokerAuth: a 401, one refresh that fails; a URL carrying a token -----------------------
def test_broker_auth_401_then_the_refresh_fails(sweep: Sweep, tmp_path: Path) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    auth = BrokerAuth(rig.broker, tenant=TENANT, principal=USER, scopes=SCOPES)
    rig.mp.faults.add("resource", "error", status=401)
    rig.mp.faults.add(
        "token", "error", status=400, error="invalid_grant", grant_type="refresh_token"
    )
    with httpx2.Client(transport=rig.mp.transport(), auth=auth) as client:
        _fails(sweep, AuthorizationRequired, lambda: client.get(rig.mp.resource_url))
    # what the signing frames hold: the lease's Authorization header, built once per lease
    sweep.result("BrokerAuth signing cache", auth._sign_cache)
    sweep.assert_clean()


def test_broker_auth_401_then_the_refresh_fails_async(sweep: Sweep, tmp_path: Path) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    auth = BrokerAuth(rig.broker, tenant=TENANT, principal=USER, scopes=SCOPES)
    rig.mp.faults.add("resource", "error", status=401)
    rig.mp.faults.add("token", "error", status=503, grant_type="refresh_token")

    async def run() -> None:
        async with httpx2.AsyncClient(transport=rig.mp.async_transport(), auth=auth) as client:
            await client.get(rig.mp.resource_url)

    _fails(sweep, TransientProviderError, lambda: asyncio.run(run()))
    sweep.assert_clean()


@pytest.mark.parametrize("query", ["access_token", "access%5Ftoken"])
def test_broker_auth_refuses_a_url_with_a_token(sweep: Sweep, tmp_path: Path, query: str) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    auth = BrokerAuth(rig.broker, tenant=TENANT, principal=USER, scopes=SCOPES)
    with httpx2.Client(transport=rig.mp.transport(), auth=auth) as client:
        # The caller's own request object shows its URL in its repr; the caller's frames and
        # httpx's hold it too, so ours holding it is no leak. Every other value must be clean.
        request = client.build_request(
            "GET", f"{rig.mp.resource_url}?page=2&{query}={marker('AT')}"
        )
        sweep.exempt.add(id(request))
        _fails(sweep, UnsafeRequest, lambda: client.send(request))
    sweep.assert_clean()


@pytest.mark.parametrize("query", ["access_token", "access%5Ftoken"])
def test_broker_auth_refuses_a_url_with_a_token_requests(
    sweep: Sweep, tmp_path: Path, query: str
) -> None:
    rig = Rig(sweep, tmp_path)
    rig.login()
    auth = BrokerAuth(rig.broker, tenant=TENANT, principal=USER, scopes=SCOPES)
    auth(requests.Request("GET", rig.mp.resource_url).prepare())  # our header, built and sent
    # As above: the caller's prepared request shows its URL and headers; nothing else may.
    prepared = requests.Request("GET", f"{rig.mp.resource_url}?page=2&{query}={marker('AT')}")
    request = prepared.prepare()
    sweep.exempt.add(id(request))
    _fails(sweep, UnsafeRequest, lambda: auth(request))
    sweep.assert_clean()


# -- middleware: callback errors as the browser sees them ------------------------------------
HTML = {"accept": "text/html"}
BASE = "http://127.0.0.1"


def _mw_options(rig: Rig) -> dict[str, Any]:
    return {
        "brokers": {"mock": rig.broker},
        "secret_key": SESSION_KEY,
        "base_url": BASE,
        "scopes": {"mock": SCOPES},
        "clock": rig.clock,
    }


def _asgi_client(rig: Rig) -> Any:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from oauth2_broker_mw.middleware import BrokerMiddleware

    app = Starlette()
    app.add_middleware(BrokerMiddleware, **_mw_options(rig))
    return TestClient(app, base_url=BASE, follow_redirects=False)


def _wsgi_client(rig: Rig) -> Any:
    from oauth2_broker_mw.middleware import BrokerWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"app"]

    wsgi = BrokerWSGIMiddleware(app, **_mw_options(rig))
    return httpx2.Client(
        transport=httpx2.WSGITransport(app=wsgi), base_url=BASE, follow_redirects=False
    )


def _mw_login(client: Any, rig: Rig) -> dict[str, str]:
    start = client.get("/oauth2/mock/login", headers=HTML)
    assert start.status_code == 302, start.text
    answer = rig.mp.client().get(start.headers["location"])
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(answer.headers["location"]).query))


def _cb_wrong_state(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    return [("state", marker("STATE")), ("code", params["code"])]


def _cb_duplicate(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    return [("state", params["state"]), ("code", params["code"]), ("code", marker("CODE"))]


def _cb_token_503(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    rig.mp.faults.add("token", "error", status=503, grant_type="authorization_code")
    return list(params.items())


def _cb_bad_token_type(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    body = _token_body(access_token=marker("AT"), token_type="mac", refresh_token=marker("RT"))
    rig.mp.faults.add(
        "token",
        "raw",
        status=200,
        body=body,
        content_type="application/json",
        grant_type="authorization_code",
    )
    return list(params.items())


def _cb_bad_id_token(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    rig.mp.id_token_overrides["iss"] = "https://evil.test"
    return list(params.items())


def _cb_provider_error(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("state", params["state"]),
        ("code", params["code"]),
        ("error", "access_denied"),
        ("error_description", "the user said no"),
    ]


def _cb_expired(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    rig.clock.advance(3600)
    return list(params.items())


def _cb_store_down(rig: Rig, params: dict[str, str]) -> list[tuple[str, str]]:
    assert isinstance(rig.store, SQLiteStore)
    rig.store.close()
    return list(params.items())


CALLBACK_FAILURES: dict[str, Callable[[Rig, dict[str, str]], list[tuple[str, str]]]] = {
    "wrong state": _cb_wrong_state,
    "duplicated code": _cb_duplicate,
    "token endpoint 503": _cb_token_503,
    "bad token_type": _cb_bad_token_type,
    "bad ID token": _cb_bad_id_token,
    "provider error": _cb_provider_error,
    "expired": _cb_expired,
}


@pytest.mark.parametrize("accept", ["html", "json"])
@pytest.mark.parametrize("server", ["asgi", "wsgi"])
@pytest.mark.parametrize("failure", list(CALLBACK_FAILURES))
def test_middleware_callback_failure(
    sweep: Sweep, tmp_path: Path, failure: str, server: str, accept: str
) -> None:
    rig = Rig(sweep, tmp_path)
    client = _asgi_client(rig) if server == "asgi" else _wsgi_client(rig)
    headers = HTML if accept == "html" else {"accept": "application/json"}
    with client:
        params = _mw_login(client, rig)
        query = CALLBACK_FAILURES[failure](rig, params)
        response = client.get("/oauth2/mock/callback", params=query, headers=headers)
        assert response.status_code >= 400, response.text
        sweep.response(f"{server} callback", response)
        # what a browser that then tries again sees
        sweep.response(f"{server} retry", client.get("/oauth2/mock/callback", params=query))
    sweep.assert_clean()


def _asgi_app_client(rig: Rig) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from oauth2_broker_mw.middleware import BrokerMiddleware

    async def data(request: Request) -> JSONResponse:
        lease = await request.state.oauth2_broker.alease("mock")
        return JSONResponse({"type": lease.token_type})

    app = Starlette(routes=[Route("/data", data)])
    app.add_middleware(BrokerMiddleware, **_mw_options(rig))
    return TestClient(app, base_url=BASE, follow_redirects=False)


def _wsgi_app_client(rig: Rig) -> Any:
    from oauth2_broker_mw.middleware import BrokerWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        lease = environ["oauth2_broker"].lease("mock")
        start_response("200 OK", [("content-type", "text/plain")])
        return [lease.token_type.encode()]

    wsgi = BrokerWSGIMiddleware(app, **_mw_options(rig))
    return httpx2.Client(
        transport=httpx2.WSGITransport(app=wsgi), base_url=BASE, follow_redirects=False
    )


APP_FAILURES: dict[str, dict[str, Any]] = {
    "refresh invalid_grant": {"kind": "error", "status": 400, "error": "invalid_grant"},
    "refresh 503": {"kind": "error", "status": 503},
    "refresh bad token_type": {
        "kind": "raw",
        "status": 200,
        "content_type": "application/json",
        "body": _token_body(
            access_token=marker("AT"), token_type="mac", refresh_token=marker("RT")
        ),
    },
}


@pytest.mark.parametrize("server", ["asgi", "wsgi"])
@pytest.mark.parametrize("failure", list(APP_FAILURES))
def test_middleware_app_lease_failure(
    sweep: Sweep, tmp_path: Path, failure: str, server: str
) -> None:
    """The app asks the request's context for a lease; the refresh behind it fails."""
    rig = Rig(sweep, tmp_path)
    client = _asgi_app_client(rig) if server == "asgi" else _wsgi_app_client(rig)
    with client:
        params = _mw_login(client, rig)
        assert client.get("/oauth2/mock/callback", params=params).status_code == 303
        assert client.get("/data").status_code == 200
        rig.clock.advance(3600 + 120)
        rig.mp.faults.add("token", grant_type="refresh_token", **APP_FAILURES[failure])
        try:
            response = client.get("/data", headers={"accept": "application/json"})
        except BrokerError as exc:  # an error the app did not handle reaches the server
            sweep.exception(exc)
        else:
            sweep.response(f"{server} app", response)
    sweep.assert_clean()


@pytest.mark.parametrize("origin", [None, "https://evil.test"])
def test_middleware_logout_refused(sweep: Sweep, tmp_path: Path, origin: str | None) -> None:
    """No Origin: the (wrong) CSRF token decides; another Origin is refused outright."""
    rig = Rig(sweep, tmp_path)
    with _asgi_client(rig) as client:
        params = _mw_login(client, rig)
        assert client.get("/oauth2/mock/callback", params=params).status_code == 303
        response = client.post(
            "/oauth2/logout",
            data={"csrf_token": marker("CSRF")},
            headers=HTML if origin is None else {**HTML, "origin": origin},
        )
        assert response.status_code == 403
        sweep.response("logout", response)
    sweep.assert_clean()
