"""Middleware overhead on pass-through routes: a bare Starlette app vs the same app wrapped.

Run: ``.venv/bin/python benchmarks/middleware.py`` (``--http`` adds uvicorn + httpx2 over
loopback; ``--quick`` for a short run).

Two measurements, both in one process and one run, so the machine is the same for both sides:

1. In-process ASGI calls with a minimal driver (a prebuilt scope, a one-message ``receive`` and
   a ``send`` that only counts): no client, no sockets, so nearly all of the time is the app and
   the middleware. Rounds alternate between the two apps (ABAB...) and the median round of each
   side is reported, which cancels slow drifts (CPU frequency, other processes).
   Three request shapes: no cookie (anonymous), with the middleware's session cookie
   (a logged-in browser; the cookie is obtained by a real login against an in-process
   MockProvider when the middleware and MockProvider are importable), and a POST with a body.
2. Optional (``--http``): both apps served by uvicorn on loopback ports and hit by an
   ``httpx2.AsyncClient`` with a fixed concurrency. Client and server noise dominate here; the
   ratio is printed for completeness.

The goal is a ratio (wrapped / bare requests per second) within 5%, i.e. >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.responses import Response
from starlette.routing import Route

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

BASE_URL = "http://127.0.0.1:8000"
SECRET_KEY = "benchmark-secret-key-0123456789abcdef"


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


async def echo(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(str(len(body)))


def make_bare() -> Starlette:
    return Starlette(routes=[Route("/ping", ping), Route("/echo", echo, methods=["POST"])])


def make_wrapped() -> tuple[ASGIApp, Any]:
    """The same app wrapped in BrokerMiddleware, and the MockProvider (or None)."""
    from oauth2_broker_mw.broker import Broker
    from oauth2_broker_mw.middleware import BrokerMiddleware
    from oauth2_broker_mw.stores import MemoryStore
    from oauth2_broker_mw.testing.mock_provider import MockProvider

    provider = MockProvider(issuer="http://127.0.0.1:9", auto_approve=True)
    import httpx2

    transport = httpx2.ASGITransport(app=provider.app)
    broker = Broker(
        provider.descriptor(),
        client_id="test-client",
        client_secret="test-secret",
        store=MemoryStore(),
        async_http_client=httpx2.AsyncClient(transport=transport),
    )
    app = BrokerMiddleware(
        make_bare(),
        brokers={"mock": broker},
        scopes={"mock": ["openid"]},
        secret_key=SECRET_KEY,
        base_url=BASE_URL,
    )
    return app, provider


def make_scope(
    path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"accept", b"text/html"),
            (b"user-agent", b"bench"),
            *(headers or []),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def run_batch(app: ASGIApp, scope: dict[str, Any], body: bytes, n: int) -> float:
    """Call ``app`` ``n`` times; return the elapsed seconds."""
    statuses: list[int] = []
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> MutableMapping[str, Any]:
        return message

    async def send(msg: MutableMapping[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    start = time.perf_counter()
    for _ in range(n):
        # A fresh scope per request: middleware may write into it (scope["state"], context).
        await app({**scope, "state": {}}, receive, send)
    elapsed = time.perf_counter() - start
    if any(s != 200 for s in statuses):
        raise RuntimeError(f"unexpected statuses: {sorted(set(statuses))}")
    return elapsed


async def compare(
    label: str,
    bare: ASGIApp,
    wrapped: ASGIApp,
    scope: dict[str, Any],
    body: bytes,
    n: int,
    rounds: int,
) -> float:
    await run_batch(bare, scope, body, n // 4)  # warm up both
    await run_batch(wrapped, scope, body, n // 4)
    bare_times: list[float] = []
    wrapped_times: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            bare_times.append(await run_batch(bare, scope, body, n))
            wrapped_times.append(await run_batch(wrapped, scope, body, n))
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    # The best round of each side: noise (other processes, frequency changes) only ever slows
    # a round down, so the minimum is the least noisy estimate (as timeit does).
    return report(label, n / min(bare_times), n / min(wrapped_times))


def report(label: str, bare_rps: float, wrapped_rps: float) -> float:
    ratio = wrapped_rps / bare_rps
    extra_us = (1 / wrapped_rps - 1 / bare_rps) * 1e6
    print(
        f"  {label:<22} bare {bare_rps:>9,.0f} req/s | with BrokerMiddleware "
        f"{wrapped_rps:>9,.0f} req/s | ratio {ratio:.3f} | {extra_us:+6.1f} us/request"
    )
    return ratio


async def session_cookie(app: ASGIApp, provider: Any) -> str | None:
    """Log in once through the middleware (auto-approving MockProvider); the Cookie header."""
    import httpx2

    try:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            response = await client.get("/oauth2/mock/login", params={"return_to": "/ping"})
            location = response.headers.get("location", "")
            # The authorize URL points at the MockProvider; it is reached in-process too.
            if not location:
                return None
            idp = httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=provider.app), base_url=BASE_URL
            )
            async with idp:
                answer = await idp.get(location)
                callback = answer.headers.get("location", "")
            if not callback:
                return None
            done = await client.get(callback)
            if done.status_code not in (302, 303, 307):
                return None
            cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
            return cookie or None
    except Exception as exc:  # a benchmark, not a test: report and measure the rest
        print(f"  (no logged-in measurement: {type(exc).__name__})")
        return None


async def in_process(n: int, rounds: int) -> tuple[list[float], str | None]:
    bare = make_bare()
    wrapped, provider = make_wrapped()
    print(f"In-process ASGI calls ({n} requests x {rounds} alternating rounds, best round):")
    ratios = [await compare("GET, anonymous", bare, wrapped, make_scope("/ping"), b"", n, rounds)]
    cookie = await session_cookie(wrapped, provider)
    if cookie is not None:
        scope = make_scope("/ping", headers=[(b"cookie", cookie.encode())])
        ratios.append(await compare("GET, logged in", bare, wrapped, scope, b"", n, rounds))
    body = b"x" * 1024
    post = make_scope(
        "/echo",
        "POST",
        headers=[(b"content-type", b"application/octet-stream"), (b"content-length", b"1024")],
    )
    ratios.append(await compare("POST 1 KiB, anonymous", bare, wrapped, post, body, n, rounds))
    return ratios, cookie


def serve_forever(kind: str) -> None:
    """Child process of ``--http``: serve one app on an ephemeral port, print the port."""
    import socket

    import uvicorn

    app: Any = make_bare() if kind == "bare" else make_wrapped()[0]
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
    # with proto 0, Nagle + delayed ACK stall every keep-alive response by ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", http="h11", ws="none"
    )
    uvicorn.Server(config).run(sockets=[sock])


async def raw_client(port: int, path: str, cookie: str | None, n: int, conns: int) -> float:
    """Requests per second of ``n`` keep-alive GETs over ``conns`` raw connections."""
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/html\r\n{extra}\r\n"
    ).encode()
    remaining = [n]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return n / (time.perf_counter() - start)


async def over_http(n: int, rounds: int, conns: int, cookie: str | None) -> list[float]:
    import subprocess

    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
        )
        for kind in ("bare", "wrapped")
    ]
    try:
        ports = [int(p.stdout.readline()) if p.stdout else 0 for p in procs]
        await asyncio.sleep(0.5)  # uvicorn startup
        print(
            f"uvicorn (h11, one process per app) over loopback, a raw keep-alive client "
            f"({n} requests x {rounds} alternating rounds, {conns} connections, best round):"
        )
        cases: list[tuple[str, str | None]] = [("GET, anonymous", None)]
        if cookie is not None:
            cases.append(("GET, logged in", cookie))
        ratios: list[float] = []
        for label, cookie_value in cases:
            for port in ports:  # warm up
                await raw_client(port, "/ping", cookie_value, n // 4, conns)
            bare: list[float] = []
            wrapped: list[float] = []
            for _ in range(rounds):
                bare.append(await raw_client(ports[0], "/ping", cookie_value, n, conns))
                wrapped.append(await raw_client(ports[1], "/ping", cookie_value, n, conns))
            ratios.append(report(label, max(bare), max(wrapped)))
        return ratios
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per side")
    parser.add_argument("--http", action="store_true", help="also measure over loopback HTTP")
    parser.add_argument("--quick", action="store_true", help="short run (for smoke tests)")
    parser.add_argument("--serve", choices=["bare", "wrapped"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_forever(args.serve)
        return 0
    n, rounds = (2000, 3) if args.quick else (args.requests, args.rounds)
    print(f"Python {sys.version.split()[0]}, goal: ratio >= 0.95 (within 5%)")
    ratios, cookie = asyncio.run(in_process(n, rounds))
    if args.http:
        http_n = max(n // 2, 500)
        ratios += asyncio.run(over_http(http_n, rounds, 8, cookie))
    worst = min(ratios)
    print(f"worst ratio {worst:.3f}: {'within' if worst >= 0.95 else 'NOT within'} 5%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
