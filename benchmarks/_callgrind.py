"""Hot-path instruction counts under callgrind, to compare two checkouts on a noisy machine.

Wall-clock ratios on a shared 2-core machine wander by ±30 %; the number of instructions a
warm call executes does not. For each operation this runs the checkout's own benchmark set-up
under ``valgrind --tool=callgrind`` twice (500 and 1,500 calls, counters zeroed right before
the loop, the process ended right after it) and prints the difference / 1,000: instructions
per call, start-up and set-up excluded.

    python benchmarks/_callgrind.py . /path/to/other/checkout     # every operation
    python benchmarks/_callgrind.py . --ops lease,httpx2

Needs valgrind (Debian: ``apt-get install valgrind``). Skipped by ``benchmarks/run.py`` (it is
not a ratio benchmark); the results are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

OPS = [
    "lease",
    "alease",
    "lease_for_key",
    "httpx2",
    "requests",
    "mw-bare-anon",
    "mw-wrapped-anon",
    "mw-bare-cookie",
    "mw-wrapped-cookie",
]
SCOPES = ("email.read", "email.send")


def _load(root: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, f"{root}/benchmarks/{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _warm_broker(root: str) -> Any:
    """``benchmarks/lease.py``'s broker, with a valid token cached for acme/svc-router (a
    stored grant: a user principal never falls back to client credentials)."""
    from oauth2_broker_mw import ScopeSet
    from oauth2_broker_mw import Secret
    from oauth2_broker_mw import TokenRecord
    from oauth2_broker_mw.testing import MockProvider

    broker = _load(root, "lease").make_broker(MockProvider())
    now = time.time()
    broker.store.put(
        TokenRecord(
            key=broker.key(tenant="acme", principal="svc-router", scopes=SCOPES),
            access_token=Secret("a" * 20),
            refresh_token=Secret("r" * 20),
            issued_at=now,
            expires_at=now + 3600,
            scopes=ScopeSet.of(SCOPES),
            requested_scopes=ScopeSet.of(SCOPES),
        )
    )
    broker.lease(tenant="acme", principal="svc-router", scopes=SCOPES)
    return broker


def child(root: str, op: str, n: int) -> None:
    """Set ``op`` up, zero the counters (``os.getppid``), run it ``n`` times, exit at once."""
    sys.path.insert(0, root)
    mark, end = os.getppid, lambda: os._exit(0)
    if op in ("lease", "alease", "lease_for_key"):
        broker = _warm_broker(root)
        key = broker.key(tenant="acme", principal="svc-router", scopes=SCOPES)
        if op == "lease":
            mark()
            for _ in range(n):
                broker.lease(tenant="acme", principal="svc-router", scopes=SCOPES)
        elif op == "lease_for_key":
            mark()
            for _ in range(n):
                broker.lease_for_key(key)
        else:

            async def loop() -> None:
                await broker.alease(tenant="acme", principal="svc-router", scopes=SCOPES)
                mark()
                for _ in range(n):
                    await broker.alease(tenant="acme", principal="svc-router", scopes=SCOPES)
                end()

            asyncio.run(loop())
    elif op in ("httpx2", "requests"):
        import httpx2
        import requests

        signing = _load(root, "signing")
        auth = signing.warm_broker_auth()
        if op == "httpx2":
            step = signing.sync_step(auth, httpx2.Request("GET", signing.URL))
        else:
            step = signing.requests_step(auth, requests.Request("GET", signing.URL).prepare())
        step(50)
        mark()
        step(n)
    else:
        mw = _load(root, "middleware")
        _, which, shape = op.split("-")

        async def run() -> None:
            wrapped, provider = mw.make_wrapped()
            cookie = await mw.session_cookie(wrapped, provider) if shape == "cookie" else None
            app = wrapped if which == "wrapped" else mw.make_bare()
            headers = [(b"cookie", cookie.encode())] if cookie else None
            scope = mw.make_scope("/ping", headers=headers)
            await mw.run_batch(app, scope, b"", 50)
            mark()
            await mw.run_batch(app, scope, b"", n)
            end()

        asyncio.run(run())
    end()


def instructions(root: str, op: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--zero-before=getppid",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                root,
                op,
                str(n),
            ],
            check=True,
            capture_output=True,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in callgrind's output for {op}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="checkouts to measure (their own code)")
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args(argv)
    roots = [str(Path(r).resolve()) for r in args.roots]
    print("| operation | " + " | ".join(Path(r).name for r in roots) + " |")
    print("|---|" + "---:|" * len(roots))
    for op in args.ops.split(","):
        per_call = [(instructions(r, op, 1500) - instructions(r, op, 500)) // 1000 for r in roots]
        print(f"| `{op}` | " + " | ".join(f"{v:,}" for v in per_call) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
