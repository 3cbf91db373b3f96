"""How fast a hostile token endpoint is refused, and how long it can block the event loop.

Run: ``python benchmarks/hostile_provider.py [--quick]``. A raw asyncio HTTP server on loopback
answers the token endpoint in one of three ways: 10 MB in one chunked body, 10 MB declared in
``Content-Length``, or a byte every 50 ms for a minute (a trickle). For each, the time until
the broker raises ``TransportError`` (sync and async, ``timeout=1``), and, on the async path,
the longest gap a 5 ms ticker task saw while the refusal happened (issue 10 asks for < 1 s and
< 0.5 s).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from typing import Any

from oauth2_broker_mw._core.errors import TransportError
from oauth2_broker_mw._core.provider import GrantType
from oauth2_broker_mw._core.provider import ProviderDescriptor
from oauth2_broker_mw.broker import Broker

QUICK = "--quick" in sys.argv
REPEATS = 2 if QUICK else 5
TEN_MB = 10 * 1024 * 1024


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    mode = head.split(b" ", 2)[1].strip(b"/").split(b"/")[0]
    try:
        if mode == b"trickle":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: 1200\r\n\r\n")
            for _ in range(1200):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif mode == b"declared":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n" % TEN_MB)
            for _ in range(TEN_MB // 65536):
                writer.write(b"a" * 65536)
                await writer.drain()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(TEN_MB // 65536):
                writer.write(b"10000\r\n" + b"a" * 65536 + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _serve() -> str:
    ready: list[str] = []
    started = threading.Event()

    def run() -> None:
        async def main() -> None:
            server = await asyncio.start_server(_handle, "127.0.0.1", 0)
            ready.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            started.set()
            await server.serve_forever()

        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    started.wait()
    return ready[0]


def _broker(base: str, mode: str) -> Broker:
    descriptor = ProviderDescriptor(
        id="hostile",
        token_endpoint=f"{base}/{mode}/token",
        grants=(GrantType.CLIENT_CREDENTIALS,),
    )
    return Broker(descriptor, client_id="c", client_secret="s", timeout=1.0)


def _sync(base: str, mode: str) -> float:
    broker = _broker(base, mode)
    started = time.perf_counter()
    try:
        broker.lease(tenant="t", principal="svc", scopes=["read"])
    except TransportError:
        return time.perf_counter() - started
    finally:
        broker.close()
    raise SystemExit(f"the {mode} body was accepted")


def _async(base: str, mode: str) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        broker = _broker(base, mode)
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last - 0.005)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.perf_counter()
        try:
            await broker.alease(tenant="t", principal="svc", scopes=["read"])
        except TransportError:
            elapsed = time.perf_counter() - started
        else:
            raise SystemExit(f"the {mode} body was accepted")
        done.set()
        await tick
        await broker.aclose()
        return elapsed, max(gaps, default=0.0)

    return asyncio.run(main())


def main() -> None:
    base = _serve()
    print(f"{'body':<10} {'sync refusal':>14} {'async refusal':>14} {'max loop block':>15}")
    for mode in ("chunked", "declared", "trickle"):
        sync = [_sync(base, mode) for _ in range(REPEATS)]
        runs: list[Any] = [_async(base, mode) for _ in range(REPEATS)]
        print(
            f"{mode:<10} {statistics.median(sync) * 1000:>11.0f} ms "
            f"{statistics.median(r[0] for r in runs) * 1000:>11.0f} ms "
            f"{max(r[1] for r in runs) * 1000:>12.1f} ms"
        )


if __name__ == "__main__":
    main()
