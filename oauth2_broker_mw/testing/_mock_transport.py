"""How MockProvider's ASGI app is reached: an in-process sync transport and loopback serving.

Owns: ``LoopThread`` (a background asyncio loop that runs apps for sync callers, safe to share
between any number of threads; ``SHARED_LOOP`` is the one all providers use),
``SyncASGITransport`` (an ``httpx2.BaseTransport`` that hands each request to that loop),
``AsyncASGITransport`` (the async twin; both honour the request's read timeout) and
``serve_app`` (uvicorn on an ephemeral loopback port in a background thread).
Must not import: the broker core or any store; uvicorn is imported only inside ``serve_app``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from typing import TypeVar

import httpx2

__all__ = ["SHARED_LOOP", "AsyncASGITransport", "LoopThread", "SyncASGITransport", "serve_app"]

_T = TypeVar("_T")
KEEP_ALIVE = 75  # seconds an idle connection stays open at the served MockProvider
_HOP_BY_HOP = frozenset({"transfer-encoding", "connection", "keep-alive"})


class LoopThread:
    """A daemon thread running one asyncio loop, started on first use, stopped by ``close``."""

    def __init__(self, name: str = "mock-provider-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's loop thread does not exist here. Start afresh.
                self._loop = self._thread = None
                self._pid = os.getpid()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait; ``TimeoutError`` (after cancelling it) if slower
        than ``timeout`` seconds."""
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync MockProvider client was used inside the provider's loop")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


#: The one loop that runs every MockProvider for sync clients in this process (started on first
#: use; a daemon thread, so a provider nobody closes costs no thread of its own).
SHARED_LOOP = LoopThread()


class SyncASGITransport(httpx2.BaseTransport):
    """Send sync requests to an ASGI app running on a shared background loop (thread-safe)."""

    def __init__(self, app: Any, loop: LoopThread) -> None:
        self._asgi = httpx2.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        forwarded = httpx2.Request(
            request.method, request.url, headers=headers, content=body, extensions={}
        )

        async def call() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self._asgi.handle_async_request(forwarded)
            content = await response.aread()
            await response.aclose()
            return response.status_code, response.headers.raw, content

        try:
            status, raw_headers, content = self._loop.run(call(), _read_timeout(request))
        except TimeoutError:
            raise httpx2.ReadTimeout(
                "MockProvider did not answer in time", request=request
            ) from None
        return httpx2.Response(status, headers=raw_headers, content=content, request=request)


class AsyncASGITransport(httpx2.ASGITransport):
    """``httpx2.ASGITransport`` that honours the request's read timeout (``ReadTimeout``)."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = _read_timeout(request)
        if timeout is None:
            return await super().handle_async_request(request)
        try:
            return await asyncio.wait_for(super().handle_async_request(request), timeout)
        except TimeoutError:
            raise httpx2.ReadTimeout(
                "MockProvider did not answer in time", request=request
            ) from None


def _read_timeout(request: httpx2.Request) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    value = timeouts.get("read") if isinstance(timeouts, dict) else None
    return float(value) if isinstance(value, int | float) else None


@contextmanager
def serve_app(
    app: Any,
    *,
    port: int = 0,
    on_port: Callable[[int], None] | None = None,
    startup_timeout: float = 10.0,
) -> Iterator[tuple[str, int]]:
    """Run ``app`` with uvicorn on ``127.0.0.1:<port>`` (0: ephemeral) in a thread; yield
    (host, port). Only the loopback interface is ever bound.

    ``on_port(port)`` is called before the server accepts requests (to set the issuer).
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("MockProvider.serve() needs uvicorn: pip install uvicorn") from exc

    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that name it, and
    # without it keep-alive requests wait ~40 ms on delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    port = int(sock.getsockname()[1])
    if on_port is not None:
        on_port(port)
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class QuietH11(H11Protocol):
        """No access log (it would show states), without emptying the host's logger."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.access_log = False

    # log_config=None, log_level=None: uvicorn.Config otherwise reconfigures the process-wide
    # "uvicorn.*" loggers, and the host app's own uvicorn logs would change or vanish.
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        lifespan="off",
        http=QuietH11,
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=2,
        # Longer than the HTTP clients' own idle expiry (httpx/httpx2: 5 s), as real providers
        # do (nginx: 75 s): with uvicorn's default of 5 s, a request sent on a pooled connection
        # as the server closes it failed with "Server disconnected without sending a response".
        timeout_keep_alive=KEEP_ALIVE,
    )
    with serve_in_thread(
        config,
        sock,
        name=f"mock-provider-{port}",
        startup_timeout=startup_timeout,
        what="MockProvider",
    ):
        yield "127.0.0.1", port


@contextmanager
def serve_in_thread(
    config: Any, sock: socket.socket, *, name: str, startup_timeout: float, what: str
) -> Iterator[None]:
    """Run a uvicorn server of ``config`` on the bound ``sock`` in a daemon thread named ``name``
    while the block runs (it has started when the block begins); ``sock`` is closed after."""
    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the {what} server did not start")
        time.sleep(0.005)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
