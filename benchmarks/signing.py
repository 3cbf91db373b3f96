"""How much BrokerAuth costs per request, against a static bearer token and the alternatives.

Run: ``python benchmarks/signing.py [--quick]``. Everything is measured in this one run and
printed as ratios to the static-bearer baseline of the same client library:

1. the auth step alone: httpx/httpx2 ``sync_auth_flow`` / ``async_auth_flow`` up to the first
   yielded request, requests ``auth(prepared)`` (which includes registering the 401 hook);
2. whole requests through ``MockTransport`` (no network) with no auth, a static bearer and
   BrokerAuth.

BrokerAuth runs warm (a valid token in the broker's in-process cache), as almost every request
does. httpx-auth's ``OAuth2ClientCredentials`` and authlib's ``OAuth2Auth`` are measured when
installed (``pip install httpx-auth``; they are not dependencies of this project).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import requests

from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.auth import BrokerAuth
from oauth2_broker_mw.broker import Broker

TOKEN = "bench-access-token-0123456789abcdef"
URL = "https://api.bench.test/v1/items?page=2"
QUICK = "--quick" in sys.argv
N = 20_000 if QUICK else 100_000
REPEATS = 5 if QUICK else 9


# -- the contenders ----------------------------------------------------------------------------
class StaticBearer(httpx.Auth):
    """What a hand-written auth for a fixed token looks like (the documented httpx pattern)."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._value
        yield request


class StaticBearer2(httpx2.Auth):
    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def auth_flow(self, request: httpx2.Request) -> Any:
        request.headers["Authorization"] = self._value
        yield request


class StaticBearerRequests(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._value
        return r


def token_endpoint(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200, json={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 86400}
    )


def warm_broker_auth() -> BrokerAuth:
    descriptor = ProviderDescriptor(
        id="bench-idp", token_endpoint="https://idp.bench.test/token", grants=["client_credentials"]
    )
    broker = Broker(
        descriptor,
        client_id="bench",
        client_secret="bench-secret",
        http_client=httpx2.Client(transport=httpx2.MockTransport(token_endpoint)),
    )
    auth = BrokerAuth(broker, tenant="bench", principal="svc", scopes=["read"])
    broker.lease_for_key(auth.key, scopes=["read"])
    assert broker.cached_lease(auth.key) is not None
    return auth


def httpx_auth_contender() -> httpx.Auth | None:
    try:
        import httpx_auth
    except ImportError:
        return None

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 86400}
        )

    auth = httpx_auth.OAuth2ClientCredentials(
        "https://idp.bench.test/token",
        client_id="bench",
        client_secret="bench-secret",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    flow = auth.sync_auth_flow(httpx.Request("GET", URL))
    next(flow)  # warm its token cache
    flow.close()
    return auth


def authlib_contenders() -> tuple[Any, Any]:
    try:
        from authlib.integrations.httpx_client import OAuth2Auth as HttpxOAuth2Auth
        from authlib.integrations.requests_client import OAuth2Auth as RequestsOAuth2Auth
    except ImportError:
        return None, None
    token = {"access_token": TOKEN, "token_type": "Bearer", "expires_at": time.time() + 86400}
    return HttpxOAuth2Auth(token), RequestsOAuth2Auth(token)


# -- timing ------------------------------------------------------------------------------------
def measure(loops: dict[str, Callable[[int], None]], n: int = N) -> dict[str, float]:
    """Best per-iteration time (ns) of each loop. Rounds interleave the contenders, so a noisy
    neighbour or a CPU frequency change hits all of them alike."""
    for loop in loops.values():
        loop(max(n // 10, 1))  # warm up
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(REPEATS):
        for name, loop in loops.items():
            start = time.perf_counter_ns()
            loop(n)
            best[name] = min(best[name], (time.perf_counter_ns() - start) / n)
    return best


def sync_step(auth: Any, request: Any) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            flow = auth.sync_auth_flow(request)
            next(flow)
            flow.close()

    return loop


def async_step(auth: Any, request: Any) -> Callable[[int], None]:
    async def run(n: int) -> None:
        for _ in range(n):
            flow = auth.async_auth_flow(request)
            await flow.__anext__()
            await flow.aclose()

    def loop(n: int) -> None:
        asyncio.run(run(n))

    return loop


def requests_step(auth: Any, prepared: requests.PreparedRequest) -> Callable[[int], None]:
    hooks = prepared.hooks["response"]

    def loop(n: int) -> None:
        for _ in range(n):
            auth(prepared)
            hooks.clear()  # same cost for every contender; the empty loop below subtracts it

    return loop


def requests_empty(prepared: requests.PreparedRequest) -> Callable[[int], None]:
    hooks = prepared.hooks["response"]

    def loop(n: int) -> None:
        for _ in range(n):
            hooks.clear()

    return loop


def whole_sync(client: Any) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            client.get(URL)

    return loop


def whole_async(client: Any) -> Callable[[int], None]:
    async def run(n: int) -> None:
        for _ in range(n):
            await client.get(URL)

    def loop(n: int) -> None:
        asyncio.run(run(n))

    return loop


def ok(request: Any) -> Any:
    return (httpx2 if isinstance(request, httpx2.Request) else httpx).Response(200)


# -- the table ---------------------------------------------------------------------------------
def main() -> None:
    broker_auth = warm_broker_auth()
    rows: list[tuple[str, str, float, float | None]] = []  # (group, name, ns, ratio)

    def group(title: str, timings: dict[str, float]) -> None:
        baseline = timings["static bearer"]
        for name, ns in timings.items():
            rows.append((title, name, ns, None if name == "no auth" else ns / baseline))

    # 1. auth step alone. Each contender signs its own request: a request another auth has
    # already given an Authorization header is one BrokerAuth keeps and does not sign.
    def hx_req() -> httpx.Request:
        return httpx.Request("GET", URL)

    def hx2_req() -> httpx2.Request:
        return httpx2.Request("GET", URL)

    static1, static2 = StaticBearer(TOKEN), StaticBearer2(TOKEN)
    skipped: list[str] = []
    contender = httpx_auth_contender()
    if contender is None:
        skipped.append("httpx-auth (pip install httpx-auth)")
    authlib_httpx, authlib_requests = authlib_contenders()
    if authlib_httpx is None:
        skipped.append("authlib")

    loops = {
        "static bearer": sync_step(static1, hx_req()),
        "BrokerAuth (warm)": sync_step(broker_auth, hx_req()),
    }
    if contender is not None:
        loops["httpx-auth OAuth2ClientCredentials"] = sync_step(contender, hx_req())
    group("httpx Client: auth step", measure(loops))

    loops = {
        "static bearer": sync_step(static2, hx2_req()),
        "BrokerAuth (warm)": sync_step(broker_auth, hx2_req()),
    }
    if authlib_httpx is not None:
        loops["authlib OAuth2Auth"] = sync_step(authlib_httpx, hx2_req())
    group("httpx2 Client: auth step", measure(loops))

    group(
        "httpx AsyncClient: auth step",
        measure(
            {
                "static bearer": async_step(static1, hx_req()),
                "BrokerAuth (warm)": async_step(broker_auth, hx_req()),
            }
        ),
    )
    group(
        "httpx2 AsyncClient: auth step",
        measure(
            {
                "static bearer": async_step(static2, hx2_req()),
                "BrokerAuth (warm)": async_step(broker_auth, hx2_req()),
            }
        ),
    )

    def prepared() -> requests.PreparedRequest:
        return requests.Request("GET", URL).prepare()

    loops = {
        "static bearer": requests_step(StaticBearerRequests(TOKEN), prepared()),
        "BrokerAuth (warm)": requests_step(broker_auth, prepared()),
        "(empty loop)": requests_empty(prepared()),
    }
    if authlib_requests is not None:
        loops["authlib OAuth2Auth"] = requests_step(authlib_requests, prepared())
    timings = measure(loops)
    empty = timings.pop("(empty loop)")
    group("requests: auth(prepared)", {k: v - empty for k, v in timings.items()})

    # 2. whole requests through MockTransport
    def client1(auth: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(ok), auth=auth)

    def client2(auth: Any) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(ok), auth=auth)

    def aclient2(auth: Any) -> httpx2.AsyncClient:
        async def handler(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(200)

        return httpx2.AsyncClient(transport=httpx2.MockTransport(handler), auth=auth)

    for title, make, static, runner in (
        ("httpx Client: whole request", client1, static1, whole_sync),
        ("httpx2 Client: whole request", client2, static2, whole_sync),
        ("httpx2 AsyncClient: whole request", aclient2, static2, whole_async),
    ):
        timings = measure(
            {
                "static bearer": runner(make(static)),
                "no auth": runner(make(None)),
                "BrokerAuth (warm)": runner(make(broker_auth)),
            },
            n=N // 20,
        )
        group(title, timings)

    python = sys.version.split()[0]
    print(f"# BrokerAuth signing benchmark (N={N}, best of {REPEATS}; Python {python},")
    versions = f"httpx {httpx.__version__}, httpx2 {httpx2.__version__}"
    print(f"# {versions}, requests {requests.__version__})")
    print()
    print("| what | auth | ns/op | x static bearer |")
    print("|---|---|---:|---:|")
    for title, name, ns, ratio in rows:
        shown = "—" if ratio is None else f"{ratio:.2f}x"
        print(f"| {title} | {name} | {ns:,.0f} | {shown} |")
    if skipped:
        print()
        print("Not measured (not installed): " + ", ".join(skipped))
    step_ratios = [r for t, n, _, r in rows if n == "BrokerAuth (warm)" and "auth step" in t]
    print()
    print(
        f"BrokerAuth auth step, median ratio over the httpx/httpx2 rows: "
        f"{statistics.median(step_ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
