"""Fuzz: the middleware boundary, over ASGI and WSGI (issue 10).

Hostile callback query strings (repeated, missing, empty and huge ``code`` / ``state`` /
``iss`` / ``error`` / ``error_description``; non-UTF-8 percent escapes, raw NUL / CR / LF, lone
surrogates), hostile ``Cookie`` headers (random bytes, cut or altered sealed cookies, another
tenant's cookies, 64 KiB values, hundreds of cookies) and hostile ``Host`` headers (the tenant
resolver reads them) go through ``BrokerMiddleware`` (a Starlette app) and
``BrokerWSGIMiddleware``, built as raw ASGI scopes and WSGI environs so that no client library
cleans the bytes first. Every answer must be:

* never a 5xx and never an exception out of the middleware;
* a refusal is a 4xx page or JSON body with an error code from the one table;
* no fuzzed ``code`` / ``state`` in the body or any header, and every ``Set-Cookie`` names one
  of the middleware's own cookies (no request text is written back into a header);
* a callback whose state does not open a flow makes no token-endpoint call, takes no pending
  login from the store, and writes no token;
* no altered sealed cookie (cut, one character changed, another spelling of its bytes), and no
  cookie moved to another name or tenant, signs anyone in or opens a login's flow;
* after the hostile requests, a real login still completes (nothing was spent or corrupted).

Deterministic and bounded like the rest of ``tests/fuzz`` (``_fuzzkit.FUZZ`` settings: 150
examples per test and shell, no deadline; the module takes about 10 s on an idle machine).
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import quote_plus
from urllib.parse import urlsplit

import pytest
from _fuzzkit import FUZZ
from _fuzzkit import MARKER_CODE
from _fuzzkit import MARKER_STATE
from hypothesis import event
from hypothesis import given
from hypothesis import strategies as st

from oauth2_broker_mw import Broker
from oauth2_broker_mw import middleware
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware
from oauth2_broker_mw.middleware import subdomain_tenant
from oauth2_broker_mw.stores.memory import MemoryStore
from oauth2_broker_mw.testing import MockQuirks
from oauth2_broker_mw.testing.mock_provider import MockProvider

SECRET = "fuzz-callback-secret-" + "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0Fg"
BASE_HOST = "example.test"
HOST_A = "tenant-a.example.test"
HOST_B = "tenant-b.example.test"
CALLBACK = "/oauth2/acme/callback"
LOGIN = "/oauth2/acme/login"

#: Every code a refusal at these routes may carry (the middleware's table and the broker's
#: flow errors); anything else is a new, unreviewed answer.
REFUSAL_CODES = frozenset(
    {
        "state_missing",
        "state_mismatch",
        "state_expired",
        "state_unknown",
        "duplicate_parameter",
        "invalid_request",
        "authorization_denied",
        "issuer_mismatch",
        "issuer_missing",
        "tenant_mismatch",
        "invalid_tenant",
        "exchange_failed",
        "csrf_failed",
        "tenant_required",
    }
)
#: Text a page or a redirect may show whatever the request held (not an echo): the provider's
#: and the app's URLs, and anything the middleware's source spells out (hypothesis draws
#: string constants from the code under test: "content-l" is no echo of a state).
PUBLIC = (
    "https://mock-idp.test/authorize",
    f"https://{HOST_A}",
    f"https://{HOST_B}",
    "\n".join(p.read_text() for p in Path(middleware.__file__).parent.glob("*.py")),
)
#: The names of the middleware's own cookies (https: ``__Host-``).
OWN_COOKIE = re.compile(r"__Host-obm_(?:session(?:_[0-9a-f]{16})?|flow_[0-9a-f]{16})")


# -- the apps and a raw client ----------------------------------------------------------------
class _CountingStore(MemoryStore):
    """Counts token writes and pending logins taken (a callback that spends a state)."""

    def __init__(self) -> None:
        super().__init__()
        self.token_writes = 0
        self.taken = 0

    def put(self, record: Any) -> Any:
        self.token_writes += 1
        return super().put(record)

    def compare_and_swap(self, record: Any, *, expected_version: int | None) -> Any:
        self.token_writes += 1
        return super().compare_and_swap(record, expected_version=expected_version)

    def take_pending(self, state_key: str) -> Any:
        self.taken += 1
        return super().take_pending(state_key)


def _context(ctx: Any) -> bytes:
    return json.dumps({"tenant": ctx.tenant, "principal": ctx.principal}).encode()


def _asgi_app(options: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def whoami(request: Request) -> Response:
        return Response(_context(request.state.oauth2_broker), media_type="application/json")

    return BrokerMiddleware(Starlette(routes=[Route("/whoami", whoami)]), **options)


def _wsgi_app(options: dict[str, Any]) -> Any:
    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [_context(environ["oauth2_broker"])]

    return BrokerWSGIMiddleware(inner, **options)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def code(self) -> str:
        if (self.header("content-type") or "").startswith("application/json"):
            return str(json.loads(self.body)["error"])
        text = self.body.decode()
        return text.split('id="error-code">', 1)[1].split("<", 1)[0]

    def __repr__(self) -> str:  # what a failing assertion shows
        return f"Answer({self.status}, {self.headers!r}, {self.body[:300]!r})"


@dataclass
class Env:
    shell: str
    mp: MockProvider
    store: _CountingStore
    app: Any
    runner: asyncio.Runner
    idp: Any = None
    jars: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- one request, as raw bytes ---------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        host: bytes | None,
        query: bytes = b"",
        cookie: bytes | None = None,
        accept: bytes = b"text/html",
        extra: tuple[tuple[bytes, bytes], ...] = (),
        body: bytes = b"",
    ) -> Answer:
        headers = [(b"accept", accept), *extra]
        if host is not None:
            headers.insert(0, (b"host", host))
        if cookie is not None:
            headers.append((b"cookie", cookie))
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        if self.shell == "asgi":
            return self.runner.run(self._asgi(method, path, query, headers, body))
        return self._wsgi(method, path, query, headers, body)

    async def _asgi(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": (BASE_HOST, 443),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return Answer(
            start["status"],
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])],
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        )

    def _wsgi(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path.encode().decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": BASE_HOST,
            "SERVER_PORT": "443",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key == "CONTENT_LENGTH":
                environ[key] = value.decode("latin-1")
            else:
                environ["HTTP_" + key] = value.decode("latin-1")
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
            started.append((status, list(response_headers)))
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, response_headers = started[-1]
        return Answer(int(status.split()[0]), response_headers, content)

    # -- a browser's cookie jar per host, and the login steps ------------------------------
    def cookie_header(self, host: str) -> bytes | None:
        jar = self.jars.get(host)
        if not jar:
            return None
        return "; ".join(f"{k}={v}" for k, v in jar.items()).encode("latin-1")

    def keep(self, host: str, answer: Answer) -> None:
        jar = self.jars.setdefault(host, {})
        for line in answer.set_cookies():
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in line:
                jar.pop(name, None)
            else:
                jar[name] = value

    def start(self, host: str = HOST_A) -> str:
        """A login started in this browser on ``host``: the callback query the provider sends."""
        answer = self.request(
            "GET",
            LOGIN,
            host=host.encode(),
            query=b"return_to=/whoami",
            cookie=self.cookie_header(host),
        )
        assert answer.status == 302, answer
        self.keep(host, answer)
        location = answer.header("location")
        assert location is not None
        response = self.idp.get(location)
        assert response.status_code == 302, response.text
        callback = urlsplit(response.headers["location"])
        assert (callback.hostname, callback.path) == (host, CALLBACK)
        return callback.query

    def finish(self, query: str, host: str = HOST_A) -> None:
        """The callback of a started login completes, and the session works."""
        answer = self.request(
            "GET",
            CALLBACK,
            host=host.encode(),
            query=query.encode(),
            cookie=self.cookie_header(host),
        )
        assert answer.status == 303, answer
        self.keep(host, answer)
        assert self.whoami(host) == {"tenant": host.split(".")[0], "principal": "user-1"}

    def whoami(self, host: str = HOST_A, cookie: bytes | None = None) -> Any:
        answer = self.request(
            "GET", "/whoami", host=host.encode(), cookie=cookie or self.cookie_header(host)
        )
        assert answer.status == 200, answer
        return json.loads(answer.body)

    def counts(self) -> tuple[int, int, int]:
        return (self.mp.counters["token"], self.store.taken, self.store.token_writes)


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    mp = MockProvider(send_iss=True, quirks=MockQuirks(redirect_extra_params={"realmId": "913"}))
    descriptor = mp.descriptor(
        authorization_response_iss_parameter_supported=True, callback_params=("realmId",)
    )
    clients = {"http_client": mp.client(), "async_http_client": mp.async_client()}
    store = _CountingStore()
    broker = Broker(
        descriptor, client_id="test-client", client_secret="test-secret", store=store, **clients
    )
    options: dict[str, Any] = {
        "brokers": {"acme": broker},
        "scopes": {"acme": ["openid", "email"]},
        "secret_key": SECRET,
        "base_url": f"https://{BASE_HOST}",
        "tenant_base_url": "https://{tenant}.example.test",
        "tenant_resolver": subdomain_tenant(BASE_HOST),
    }
    build = _asgi_app if request.param == "asgi" else _wsgi_app
    with asyncio.Runner() as runner, mp.client() as idp:
        yield Env(request.param, mp, store, build(options), runner, idp)
    mp.close()


# -- the properties ---------------------------------------------------------------------------
def _forms(value: str) -> set[str]:
    """The spellings an echo of ``value`` could take in a page, a JSON body or a header."""
    raw = value.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "replace")
    return {text, html.escape(text), json.dumps(text)[1:-1], quote(raw, safe=""), quote_plus(raw)}


def assert_clean(answer: Answer, secrets: list[str]) -> None:
    """No 5xx, only the middleware's own cookies, and no ``secrets`` echoed anywhere."""
    assert answer.status < 500, answer
    for line in answer.set_cookies():
        assert OWN_COOKIE.fullmatch(line.split("=", 1)[0]), (
            f"a cookie named by the request: {line!r}"
        )
    shown = answer.body.decode("utf-8", "replace") + "\n" + repr(answer.headers)
    for secret in secrets:
        if len(secret) > 8 and not any(secret in text for text in PUBLIC):
            for form in _forms(secret):
                assert form not in shown, f"{secret!r} is echoed: {answer!r}"


def assert_refused(answer: Answer, secrets: list[str]) -> str:
    """A clean 4xx refusal with a code from the table; returns the code."""
    assert_clean(answer, secrets)
    assert 400 <= answer.status < 500, answer
    code = answer.code()
    assert code in REFUSAL_CODES, answer
    event(code)
    return code


# -- hostile values ---------------------------------------------------------------------------
PARAMS = ("code", "state", "iss", "error", "error_description", "error_uri", "return_to")

VALUES = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="ascii"), min_size=9, max_size=60),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\r\nSet-Cookie: x=1",
            "\ud800",
            "x\udfffy-surrogate",
            "é-not-ascii",
            "access_denied",
            "<script>alert(1)</script>",
            "https://mock-idp.test",
            "https://evil-idp.example",
            "%",
            "%zz",
            "%ff%fe",
        ]
    ),
    st.builds(lambda n, c: c * n, st.sampled_from([300, 5_000, 65_536]), st.sampled_from("aZ%")),
    st.builds(
        lambda m, s: m + s, st.sampled_from([MARKER_CODE, MARKER_STATE]), st.text(max_size=8)
    ),
)


@st.composite
def encoded(draw: st.DrawFn, value: str) -> bytes:
    """``value`` as it may appear on the wire: percent-encoded, raw, or hostile bytes."""
    raw = value.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["quote", "quote", "plus", "raw", "bytes"]))
    if how == "quote":
        return quote(raw, safe="").encode()
    if how == "plus":
        return quote_plus(raw).encode()
    if how == "raw":  # unescaped: '&', '=', '#', NUL, CR, LF and non-UTF-8 as they are
        return raw
    junk = draw(st.binary(max_size=24))  # %-escapes of bytes that need not be UTF-8
    return "".join(f"%{b:02X}" for b in junk).encode() + quote(raw, safe="").encode()


@st.composite
def hostile_query(draw: st.DrawFn, real: dict[str, str] | None = None) -> tuple[bytes, list[str]]:
    """A callback query string and the code / state values in it (for the echo check)."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        shape = draw(st.integers(0, 9))
        key = draw(st.sampled_from(PARAMS) | st.text(max_size=6))
        value = draw(VALUES)
        if shape == 0:  # a bare key, or nothing at all between separators
            parts.append(draw(encoded(key)))
        elif shape == 1 and real:  # a real value under another name, or again
            parts.append(
                draw(encoded(key))
                + b"="
                + draw(encoded(draw(st.sampled_from(sorted(real.values())))))
            )
        else:
            parts.append(draw(encoded(key)) + b"=" + draw(encoded(value)))
    query = b"&".join(parts)
    seen = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    secrets = [v for k, v in seen if k in ("code", "state")]
    shown = [v for k, v in seen if k in ("error", "error_description")]  # shown by design
    return query, [s for s in secrets if not any(s in t for t in shown)]


HOSTS = st.one_of(
    st.just(HOST_A.encode()),
    st.sampled_from(
        [
            HOST_A,
            HOST_A,
            HOST_B,
            BASE_HOST,
            "TENANT-A.Example.Test",
            HOST_A + ":443",
            "evil.example",
            "a..b.example.test",
            "xn--80ak6aa92e.example.test",
            "[::1]",
            "",
            "x" * 300 + ".example.test",
        ]
    ).map(str.encode),
    st.binary(max_size=40),
    st.none(),
)


# -- 1. hostile callback queries --------------------------------------------------------------
def test_fuzzed_callback_queries_are_typed_refusals(env: Env) -> None:
    real = env.start()  # a login in progress in this browser: the fuzz must not spend it
    before = env.counts()

    @FUZZ
    @given(query=hostile_query(), host=HOSTS, json_client=st.booleans())
    def run(query: tuple[bytes, list[str]], host: bytes | None, json_client: bool) -> None:
        raw, secrets = query
        answer = env.request(
            "GET",
            CALLBACK,
            host=host,
            query=raw,
            cookie=env.cookie_header(HOST_A),
            accept=b"application/json" if json_client else b"text/html",
        )
        assert_refused(answer, secrets)
        assert env.counts() == before, "a callback without the real state reached the broker"
        env.keep(HOST_A, answer)

    run()
    env.finish(real)


def _pair(key: str, value: str) -> bytes:
    return f"{key}=".encode() + quote(value.encode("utf-8", "surrogatepass"), safe="").encode()


# -- 2. a real state with a hostile code, a duplicate or a foreign host -----------------------
#: refused before the state is read, or the flow opens: nothing is spent
BEFORE_FLOW = (
    "dup_state",
    "dup_code",
    "dup_iss",
    "dup_error",
    "dup_error_description",
    "dup_error_uri",
    "bad_state",
)
#: refused once the flow opened (its cookie is spent): another tenant's host, a provider
#: error, another issuer, a repeated kept parameter, a hostile code
AFTER_FLOW = ("host", "error", "iss", "dup_realmId", "code")


@FUZZ
@given(data=st.data())
def test_a_real_state_with_hostile_parts_is_refused_and_the_login_survives(
    env: Env, data: st.DataObject
) -> None:
    real = env.start()
    pairs = parse_qsl(real, keep_blank_values=True)
    params = dict(pairs)
    kind = data.draw(st.sampled_from(BEFORE_FLOW + AFTER_FLOW), label="kind")
    event(kind)
    value = data.draw(VALUES, label="value")
    host = HOST_A
    if kind.startswith("dup_"):
        name = kind[4:]
        again = [(name, data.draw(st.sampled_from([params.get(name, "access_denied"), value])))]
        query = b"&".join(_pair(k, v) for k, v in [*pairs, *again * (1 + (name not in params))])
    else:
        name = {"bad_state": "state", "host": "state"}.get(kind, kind)
        changed = dict(params)
        if kind != "host":
            changed[name] = value
        first = f"{name}=".encode() + data.draw(encoded(changed.pop(name)))
        query = b"&".join([first, *(_pair(k, v) for k, v in changed.items())])
        if kind == "host":
            host = data.draw(
                st.sampled_from([HOST_B, "evil.example", "a..b.example.test", "x\x00y"])
            )
    # The provider's error and description are shown (filtered), by design.
    secrets = [params["code"], params["state"], *([] if "error" in kind else [value])]
    tokens, taken, writes = env.counts()
    answer = env.request(
        "GET", CALLBACK, host=host.encode("latin-1"), query=query, cookie=env.cookie_header(HOST_A)
    )
    env.keep(host, answer)
    if host == HOST_A and sorted(parse_qsl(query.decode("latin-1"), True)) == sorted(pairs):
        assert answer.status == 303, answer  # what was drawn is the genuine callback
        return
    code = assert_refused(answer, secrets)
    assert env.store.token_writes == writes, "a refused callback wrote a token"
    calls, spent = env.mp.counters["token"] - tokens, env.store.taken - taken
    if kind == "code":
        assert (calls, spent) in ((0, 0), (1, 1)), answer  # a code was sent: the state is spent
        assert code in ("exchange_failed", "invalid_request", "duplicate_parameter"), answer
    else:
        assert (calls, spent) == (0, 0), answer  # the token endpoint never saw the code
    if kind in BEFORE_FLOW or kind == "host":  # the genuine callback still completes
        env.finish(real)
    else:
        env.finish(env.start())  # the next login completes


# -- 3. hostile cookies -----------------------------------------------------------------------
@dataclass
class Genuine:
    session_a: tuple[str, str]
    session_b: tuple[str, str]
    flow: tuple[str, str]
    pending: str  # the callback query of the started login that owns ``flow``


@pytest.fixture(scope="module")
def genuine(env: Env) -> Genuine:
    env.finish(env.start(HOST_B), HOST_B)
    env.finish(env.start(HOST_A), HOST_A)
    (session_a,) = [
        (k, v) for k, v in env.jars[HOST_A].items() if k.startswith("__Host-obm_session")
    ]
    (session_b,) = [
        (k, v) for k, v in env.jars[HOST_B].items() if k.startswith("__Host-obm_session")
    ]
    before = set(env.jars[HOST_A].items())
    pending = env.start(HOST_A)
    (flow,) = [
        (k, v)
        for k, v in set(env.jars[HOST_A].items()) - before
        if k.startswith("__Host-obm_flow_")
    ]
    return Genuine(session_a, session_b, flow, pending)


#: ASCII that base64url does not use (a lenient decoder skips it)
SKIPPED = st.sampled_from("!*.~$%&'():<>?@[]^`{|}\\")


#: How a cookie value is made from a genuine sealed one (or not).
ALTERATIONS = ("prefix", "changed", "twin", "genuine", "random_v1", "huge", "bytes")


@st.composite
def cookie_value(draw: st.DrawFn, base: str, how: str | None = None) -> str:
    """``base`` (a genuine sealed value) altered ``how``, or a value that was never sealed."""
    how = how or draw(st.sampled_from(ALTERATIONS))
    if how == "prefix":
        return base[: draw(st.integers(0, len(base) - 1))]
    if how == "changed":  # one character
        at = draw(st.integers(3, len(base) - 1))
        ch = draw(st.sampled_from("AQgw-_0z=.!\x00é"))
        return base[:at] + ch + base[at + 1 :]
    if how == "twin":  # other spellings of the same bytes
        twin = draw(st.sampled_from(["insert", "pad", "alphabet"]))
        if twin == "insert":  # characters outside base64url, which a lenient decoder skips
            at = draw(st.integers(3, len(base)))
            return base[:at] + draw(st.text(SKIPPED, min_size=1, max_size=4)) + base[at:]
        if twin == "pad":
            return base + draw(st.sampled_from(["=", "==", "==="]))
        return base.replace("-", "+").replace("_", "/")
    if how == "genuine":
        return base  # maybe under another cookie's name
    if how == "random_v1":
        return "v1." + draw(st.text("ABCDEFabcdef0123456789-_", max_size=120))
    if how == "huge":
        return draw(st.sampled_from('aZ.="')) * draw(st.sampled_from([4_096, 65_536]))
    return draw(st.binary(max_size=80)).decode("latin-1")


@st.composite
def cookie_header(draw: st.DrawFn, genuine: Genuine, session: tuple[str, str], how: str) -> bytes:
    """The cookies the routes read (``session`` and the flow) altered ``how``, and others."""
    real = [genuine.session_a, genuine.session_b, genuine.flow]
    pairs = [(name, draw(cookie_value(value, how))) for name, value in (session, genuine.flow)]
    for _ in range(draw(st.integers(0, 5))):
        own, base = draw(st.sampled_from(real))
        name = draw(  # an altered value under its own name, or moved to another one
            st.just(own)
            | st.sampled_from([n for n, _ in real])
            | st.sampled_from(["obm_session", "__Host-obm_flow_", "__Host-obm_session_x"])
            | st.text(max_size=12).map(lambda s: "__Host-obm_flow_" + s)
            | st.text(max_size=12)
        )
        pairs.append((name, draw(cookie_value(base))))
    if draw(st.integers(0, 5)) == 0:  # many cookies
        count = draw(st.sampled_from([50, 300]))
        pairs += [(f"__Host-obm_flow_{i:016x}", f"v1.{i:x}") for i in range(count)]
    # The exact genuine pair would log in (that is no fuzz): alter it.
    pairs = [(k, v + "x") if (k, v) in real else (k, v) for k, v in pairs]
    pairs = draw(st.permutations(pairs))
    separator = draw(st.sampled_from(["; ", ";", "; ; "]))
    return separator.join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")


ROUTES = ("callback", "login", "logout")


def test_fuzzed_cookies_never_sign_in_and_never_fail_the_request(
    env: Env, genuine: Genuine
) -> None:
    before = env.counts()
    revoked = env.mp.counters["revoke"]

    @FUZZ
    @given(
        route=st.sampled_from(ROUTES),
        host=st.sampled_from([HOST_A, HOST_A, HOST_B]),
        how=st.sampled_from(ALTERATIONS),
        data=st.data(),
    )
    def run(route: str, host: str, how: str, data: st.DataObject) -> None:
        session = genuine.session_a if host == HOST_A else genuine.session_b
        cookie = data.draw(cookie_header(genuine, session, how), label="cookie")
        answer = env.request("GET", "/whoami", host=host.encode(), cookie=cookie)
        assert_clean(answer, [])
        assert answer.status == 200, answer
        assert json.loads(answer.body)["principal"] is None, answer
        if route == "callback":
            answer = env.request(
                "GET", CALLBACK, host=host.encode(), query=genuine.pending.encode(), cookie=cookie
            )
            assert assert_refused(answer, []) in ("state_mismatch", "tenant_mismatch"), answer
        elif route == "login":
            answer = env.request(
                "GET", LOGIN, host=host.encode(), query=b"return_to=/whoami", cookie=cookie
            )
            assert_clean(answer, [])
            assert answer.status == 302, answer
        else:
            origin = f"https://{host}".encode()
            answer = env.request(
                "POST",
                "/oauth2/logout",
                host=host.encode(),
                cookie=cookie,
                extra=(
                    (b"origin", origin),
                    (b"content-type", b"application/x-www-form-urlencoded"),
                ),
                body=b"return_to=/whoami",
            )
            assert_clean(answer, [])
            assert answer.status == 303, answer
        assert env.counts() == before
        assert env.mp.counters["revoke"] == revoked

    run()
    # Nothing was spent or spoiled: the genuine session and the pending login both still work.
    session = f"{genuine.session_a[0]}={genuine.session_a[1]}".encode()
    assert env.whoami(HOST_A, cookie=session)["principal"] == "user-1"
    env.jars[HOST_A] = dict([genuine.flow])
    env.finish(genuine.pending)


# -- 4. the login and logout routes, and a page of the app -------------------------------------
@FUZZ
@given(
    route=st.sampled_from(["login", "logout_page", "logout", "page"]),
    query=hostile_query(),
    host=HOSTS,
    json_client=st.booleans(),
)
def test_fuzzed_login_logout_and_app_requests_never_fail(
    env: Env, route: str, query: tuple[bytes, list[str]], host: bytes | None, json_client: bool
) -> None:
    raw, secrets = query
    tokens, taken, writes = env.counts()
    accept = b"application/json" if json_client else b"text/html"
    if route == "login":
        answer = env.request("GET", LOGIN, host=host, query=raw, accept=accept)
    elif route == "logout_page":
        answer = env.request("GET", "/oauth2/logout", host=host, query=raw, accept=b"text/html")
    elif route == "page":  # a request the app answers: the tenant comes from the Host
        answer = env.request("GET", "/whoami", host=host, query=raw, accept=accept)
    else:
        form = (b"content-type", b"application/x-www-form-urlencoded")
        answer = env.request(
            "POST", "/oauth2/logout", host=host, query=raw, accept=accept, extra=(form,), body=raw
        )
    if answer.status >= 400:
        assert_refused(answer, secrets)
    elif route == "login":  # the login ignores code and state (the URL may hold any text)
        assert_clean(answer, [])
        assert answer.status == 302, answer
        assert (answer.header("location") or "").startswith(env.mp.authorization_endpoint + "?")
    else:
        assert_clean(answer, secrets)
        assert answer.status == (303 if route == "logout" else 200), answer
        if route == "page":
            assert json.loads(answer.body)["principal"] is None, answer
    assert env.counts() == (tokens, taken, writes)
