"""Real Redis and PostgreSQL for the tests: where they are, and what to do when they are not.

A missing service skips the tests that need it, with the reason, except under ``CI=true``
where it fails them (CI must never go green by skipping the scale-out tests).
Each test run uses its own Redis key prefix / PostgreSQL schema, so parallel runs (and
several checkouts on one machine) never see each other's data; everything is removed after.

Environment overrides: ``OAUTH2_BROKER_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``),
``OAUTH2_BROKER_TEST_POSTGRES_DSN`` (default ``host=127.0.0.1 port=5432 dbname=test
user=postgres``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from typing import NoReturn

import pytest

REDIS_URL = os.environ.get("OAUTH2_BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "OAUTH2_BROKER_TEST_POSTGRES_DSN",
    "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=3",
)

_checked: dict[str, str | None] = {}


def _unavailable(service: str, reason: str) -> NoReturn:
    message = f"{service} is not available: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(message)


def require_module(name: str, extra: str) -> object:
    """Import ``name`` or skip the calling test module; under ``CI=true`` a missing driver fails.

    Use at module level instead of ``pytest.importorskip``, which would let CI go green
    without ever running the store tests.
    """
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"{name} is not installed (pip install 'oauth2-broker-mw[{extra}]'): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: a missing driver is a failure)", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def unique_name(kind: str = "t") -> str:
    """A name no other test run uses: pid plus random hex (valid as a schema name)."""
    return f"o2bm_{kind}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def require_redis() -> str:
    """The Redis URL, after checking once per session that Redis answers (else skip/fail)."""
    if "redis" not in _checked:
        try:
            import redis
        except ImportError:
            _checked["redis"] = "redis-py is not installed (pip install '.[redis]')"
        else:
            try:
                client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
                try:
                    client.ping()
                finally:
                    client.close()
                _checked["redis"] = None
            except (redis.RedisError, OSError) as exc:
                _checked["redis"] = f"{REDIS_URL}: {type(exc).__name__}: {exc}"
    reason = _checked["redis"]
    if reason is not None:
        _unavailable("Redis", reason)
    return REDIS_URL


def require_postgres() -> str:
    """The PostgreSQL DSN, after checking once per session that it answers (else skip/fail)."""
    if "postgres" not in _checked:
        try:
            import psycopg
        except ImportError:
            _checked["postgres"] = "psycopg is not installed (pip install '.[postgres]')"
        else:
            try:
                with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                _checked["postgres"] = None
            except psycopg.Error as exc:
                _checked["postgres"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    reason = _checked["postgres"]
    if reason is not None:
        _unavailable("PostgreSQL", reason)
    return POSTGRES_DSN


def redis_cleanup(prefix: str) -> None:
    """Delete every Redis key under ``prefix``."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=10_000))
        for start in range(0, len(names), 500):
            client.delete(*names[start : start + 500])
    finally:
        client.close()


def postgres_drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class TcpProxy:
    """A loopback TCP proxy in front of a real service, to make it slow or take it down.

    ``stall()`` keeps connections open but stops forwarding (a hung server or a network
    partition); ``cut()`` drops every connection and refuses new ones (a crash);
    ``restore()`` brings it back on the same port. Only this test's connections are affected.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not (Linux)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        self._flowing.set()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._flowing.set()
        self.cut()
