"""Redis and PostgreSQL instances a test starts, kills and restarts itself (fault tests).

Each runs on its own free loopback port with its data in a temporary directory, and is stopped
by its PID (never by name). Redis keeps an fsync'ed append-only file so a SIGKILL loses no
acknowledged write; PostgreSQL is a fresh ``initdb`` cluster with trust authentication.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds:g}s")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is needed for the fault tests")
    pytest.skip(f"{what} is not installed")


class ServerProcess:
    """One server process: ``kill()`` (SIGKILL), ``stop()`` (clean), ``start()`` again."""

    def __init__(self, args: list[str], port: int, user: str | None = None) -> None:
        self.args, self.port, self._user = args, port, user
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._user,
        )
        _wait(lambda: _listening(self.port), f"{self.args[0]} listening on {self.port}")

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGINT)  # PostgreSQL: fast shutdown; Redis: save and exit

    def _signal(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        _wait(lambda: not _listening(self.port), f"port {self.port} released")

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def own_redis(directory: Path) -> Iterator[ServerProcess]:
    """A redis-server of our own; ``url`` is ``redis://127.0.0.1:<port>/0``."""
    server = shutil.which("redis-server")
    if server is None:
        _missing("redis-server")
    assert server is not None
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    process = ServerProcess(args, port)
    process.start()
    try:
        yield process
    finally:
        process.kill()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        found = str(candidates[-1]) if candidates else None
    return found


@contextlib.contextmanager
def own_postgres() -> Iterator[ServerProcess]:
    """A PostgreSQL cluster of our own (database ``postgres``, user ``postgres``, trust).

    Its directory is a fresh one under the system temp dir (pytest's own is private to the
    test user, and as root the server runs as ``postgres``), removed afterwards.
    """
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if initdb is None or postgres is None:
        _missing("PostgreSQL (initdb, postgres)")
    assert initdb is not None and postgres is not None
    user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
    directory = Path(tempfile.mkdtemp(prefix="o2bm-pg-"))
    data = directory / "pgdata"
    data.mkdir(parents=True)
    if user is not None:
        shutil.chown(directory, user)
        shutil.chown(data, user)
    subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=user,
    )
    port = free_port()
    args = [postgres, "-D", str(data), "-p", str(port), "-k", str(directory)]
    args += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    process = ServerProcess(args, port, user=user)
    try:
        process.start()
        yield process
    finally:
        process.kill()
        shutil.rmtree(directory, ignore_errors=True)


def postgres_dsn(process: ServerProcess) -> str:
    return f"host=127.0.0.1 port={process.port} dbname=postgres user=postgres connect_timeout=3"
