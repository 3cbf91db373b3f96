"""Shared pieces of the fuzz suite: marker secrets, hostile-value strategies, the property.

The property every fuzz test checks (issue 10, "typed errors only"): an input yields either a
valid result or a :class:`BrokerError` subclass (never another exception), within a time
bound, and neither the error's message, its ``repr``, nor a result's ``repr`` carries a marker
secret that the input injected.

Runs are deterministic (``derandomize=True``, no example database) so CI sees the same
examples every time; each test is bounded by ``max_examples`` to keep the suite under a minute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

from oauth2_broker_mw._core.errors import BrokerError
from oauth2_broker_mw._core.errors import ProviderError

# Tokens look like tokens: long runs of the token alphabet (what redaction must recognise).
MARKER_AT = "mkrAT-7Qx2Lp9Vb4Nc8Zd1Wf6Hj3Ks5Ty0Ug"
MARKER_RT = "mkrRT-4Fg7Hk2Lm9Np3Qr8St1Uv6Wx0Yz5Ab"
MARKER_ID = "mkrID-eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
MARKER_CS = "mkrCS-9Zy8Xw7Vu6Ts5Rq4Po3Nm2Lk1Ji0Hg"
MARKER_CODE = "mkrCODE-3Kd8Jf2Hs7Ga1Pl6Ow9Ie4Ur0Ty5"
MARKER_STATE = "mkrSTATE-8Bn3Mv7Cx2Zl6Kj1Hg5Fd9Sa4Q"
MARKERS = (MARKER_AT, MARKER_RT, MARKER_ID, MARKER_CS, MARKER_CODE, MARKER_STATE)

#: 150 examples per test keeps every fuzz module at a few seconds on a loaded 2-CPU machine.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Through the real broker and HTTP client: fewer examples, each one a full flow.
FUZZ_FLOW = settings(FUZZ, max_examples=40)

#: No single parse may take longer than this (the issue measured 12.9 s for one 10 MB scope).
TIME_BOUND = 1.0


def leaked(text: str) -> list[str]:
    """The markers (or a 16-character prefix of one, for truncated echoes) found in ``text``."""
    return [m for m in MARKERS if m in text or m[:16] in text]


def texts_of(error: BaseException) -> str:
    """Everything an error reporter or a log line may show of ``error``."""
    parts = [str(error), repr(error), *(repr(a) for a in error.args)]
    if isinstance(error, ProviderError):
        parts += [
            repr(error.error),
            repr(error.error_description),
            repr(error.body_preview),
        ]
    return "\n".join(parts)


def check(
    fn: Callable[[], Any],
    *,
    bound: float = TIME_BOUND,
    public: bool = False,
    expect: type[BrokerError] = BrokerError,
) -> Any:
    """Run ``fn``: its result, or ``None`` if it raised an ``expect`` error; fail otherwise.

    Fails on any other exception, on a run longer than ``bound`` seconds and on a marker
    secret in the error's texts or in the result's ``repr`` (unless ``public``: a discovery
    document is public, whatever it holds).
    """
    error: BrokerError | None = None
    start = time.perf_counter()
    try:
        result = fn()
    except BrokerError as exc:
        error, result = exc, None
    elapsed = time.perf_counter() - start
    outcome = "accepted" if error is None else type(error).__name__
    assert elapsed < bound, f"{outcome} after {elapsed:.2f} s"
    if error is not None:
        assert isinstance(error, expect), f"{outcome}, not {expect.__name__}: {error}"
        assert not leaked(texts_of(error)), f"{outcome} shows a secret: {texts_of(error)[:500]}"
    elif not public:
        assert not leaked(repr(result)), f"the result's repr shows a secret: {repr(result)[:500]}"
    return result


# -- hostile values ---------------------------------------------------------------------------
def _huge(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["digits", "string", "deep_list", "deep_obj", "wide", "float"]))
    n = draw(st.sampled_from([40, 70, 400, 5000, 100_000]))
    if kind == "digits":
        return _Raw("-" * draw(st.booleans()) + "9" * n)
    if kind == "float":
        return _Raw("1e" + str(n))
    if kind == "string":
        return "x" * (n * draw(st.sampled_from([1, 10])))
    if kind == "deep_list":
        return _Raw("[" * n + "]" * n)
    if kind == "deep_obj":
        return _Raw('{"a":' * n + "1" + "}" * n)
    return list(range(min(n, 20_000)))


class _Raw:
    """A JSON fragment inserted as is (numbers and nestings json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["\x00", "\ud83d", "a\r\nb", "é", "Bearer", "bearer", "DPoP", "mac", " "]),
    st.sampled_from(MARKERS),
    st.sampled_from(["-1", "0", "3600", "3600.5", "1e309", "nan", "-inf", " 60 ", "0x10"]),
)


@st.composite
def hostile_value(draw: st.DrawFn) -> Any:
    """A JSON-ish value: scalars, odd containers, markers, and blow-ups (size, depth, digits)."""
    if draw(st.integers(0, 9)) == 0:
        return _huge(draw)
    return draw(
        st.recursive(
            SCALARS,
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=8,
        )
    )


def dumps(members: list[tuple[str, Any]]) -> str:
    """A JSON object text that may repeat members and carry :class:`_Raw` fragments."""
    return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in members) + "}"


def _dump(value: Any) -> str:
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)


TOKEN_FIELDS = (
    "access_token",
    "token_type",
    "refresh_token",
    "id_token",
    "expires_in",
    "scope",
    "refresh_token_expires_in",
    "error",
    "error_description",
    "error_uri",
    "ok",
    "authed_user",
    "x_custom",
    "session_token",
)


@st.composite
def token_members(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Members of a token-endpoint answer: a plausible core, then hostile changes to it."""
    members: list[tuple[str, Any]] = [
        ("access_token", MARKER_AT),
        ("token_type", "Bearer"),
        ("refresh_token", MARKER_RT),
        ("expires_in", 3600),
    ]
    if draw(st.booleans()):
        members.append(("id_token", MARKER_ID))
    if draw(st.booleans()):
        members.append(("scope", "openid email"))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(TOKEN_FIELDS) | st.text(max_size=10))
        value = draw(hostile_value())
        if draw(st.booleans()):  # change a member in place, or repeat it (a duplicate key)
            members = [(k, value if k == name else v) for k, v in members]
        members.append((name, value))
    if draw(st.integers(0, 4)) == 0:
        members.append(
            ("error_description", f"refresh token {MARKER_RT} and client_secret={MARKER_CS}")
        )
    return members


@st.composite
def body_bytes(draw: st.DrawFn, members: st.SearchStrategy[list[tuple[str, Any]]]) -> bytes:
    """A body: JSON (maybe broken, non-UTF-8 or padded), a form body, HTML or raw bytes."""
    kind = draw(st.sampled_from(["json", "json", "json", "form", "html", "bytes", "mangled"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "html":
        return f"<html><body>error for {MARKER_RT} {MARKER_CS}</body></html>".encode()
    if kind == "form":
        pairs = draw(members)
        text = "&".join(f"{k}={_dump(v) if not isinstance(v, str) else v}" for k, v in pairs)
        return text.encode("utf-8", "surrogatepass")
    text = dumps(draw(members))
    raw = text.encode("utf-8", "surrogatepass")
    if kind == "mangled":
        cut = draw(st.integers(0, len(raw)))
        junk = draw(st.sampled_from([b"\xff\xfe", b"\x00", b"\xc3(", b"}}}", b"", b" " * 1000]))
        return raw[:cut] + junk + raw[cut:]
    return raw


HEADERS = st.fixed_dictionaries(
    {"content-type": st.sampled_from(["application/json", "text/plain", "text/html", "", "x/y"])},
    optional={
        "retry-after": st.sampled_from(
            ["30", "0", "-5", "9" * 5000, "Wed, 21 Oct 2015 07:28:00 GMT", "soon", "1e9", "٣"]
        ),
        "date": st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "x" * 1000, ""]),
    },
)
#: Mostly 200 (the parser's deepest path), then the statuses providers send, then any.
STATUS = st.one_of(
    st.just(200),
    st.just(200),
    st.sampled_from([201, 204, 302, 400, 401, 403, 404, 429, 500, 503]),
    st.integers(100, 599),
)
