"""Command line: ``oauth2-broker demo`` (also ``python -m oauth2_broker_mw demo``) and the
admin commands (``connections``, ``migrate``, ``refresher``...; see :mod:`oauth2_broker_mw.cli`).

Owns: argument parsing and the console output of the demo. The demo itself lives in
:mod:`oauth2_broker_mw.demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oauth2-broker", description="oauth2-broker-mw command line tools."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    demo = commands.add_parser(
        "demo",
        help="run the local demo: middleware, a mock provider and the SQLite store",
        description=(
            "Start one local process with a Starlette app using BrokerMiddleware, the "
            "MockProvider mounted at /idp on the same server, and the SQLite token store in "
            "DATA_DIR. Open the printed URL and press 'Log in'."
        ),
    )
    demo.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    demo.add_argument(
        "--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)"
    )
    demo.add_argument(
        "--data-dir",
        default="./.oauth2-broker",
        help="where the SQLite token store lives (default ./.oauth2-broker)",
    )
    demo.add_argument(
        "--once",
        action="store_true",
        help="smoke test: start, log in over HTTP as a browser would, print the outcome, exit",
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from .cli import add_commands

    add_commands(commands)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    try:
        from . import demo
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(
            f"oauth2-broker demo needs the starlette extra and uvicorn ({exc}); "
            "pip install 'oauth2-broker-mw[starlette]' uvicorn",
            file=sys.stderr,
        )
        return 2
    try:
        import uvicorn  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        print("oauth2-broker demo needs uvicorn: pip install uvicorn", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Request logs of the HTTP clients are not needed; the demo's own access log shows paths.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)

    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                demo.serve_demo(args.host, args.port, data_dir=args.data_dir)
            )
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"oauth2-broker demo: cannot start: {exc}", file=sys.stderr)
            return 1
        if args.once:
            result = demo.drive_login(server.url)
            ok = result.status == 200 and 'id="resource"' in result.page
            print(f"oauth2-broker demo --once: {'ok' if ok else 'FAILED'} ({server.url})")
            return 0 if ok else 1
        print(
            f"\n  oauth2-broker-mw demo running at {server.url}/\n"
            f"  Open it, press 'Log in', sign in at the mock provider as "
            f"{demo.DEMO_USERNAME} / {demo.DEMO_PASSWORD}.\n"
            f"  Tokens are stored in {args.data_dir}/tokens.db. Press Ctrl+C to stop.\n",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("\nstopping", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oauth2-broker`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _run_demo(args)
    from .cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
