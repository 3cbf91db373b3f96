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
from typing import Any
from typing import TextIO

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
    demo.add_argument(
        "--trace",
        action="store_true",
        help="print the trace tree of every broker operation (OpenTelemetry, needs [otel])",
    )
    from .cli import add_commands

    add_commands(commands)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    try:
        from . import demo
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(
            f"oauth2-broker demo needs the demo extra ({exc}): "
            "pip install 'oauth2-broker-mw[demo]'",
            file=sys.stderr,
        )
        return 2
    try:
        import uvicorn  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        print(
            "oauth2-broker demo needs the demo extra: pip install 'oauth2-broker-mw[demo]'",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Request logs of the HTTP clients are not needed; the demo's own access log shows paths.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if args.trace:
        try:
            _print_traces(sys.stdout)
        except ImportError as exc:
            print(
                f"oauth2-broker demo --trace needs the otel extra ({exc}); "
                "pip install 'oauth2-broker-mw[otel]'",
                file=sys.stderr,
            )
            return 2
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


def _print_traces(stream: TextIO) -> None:
    """Send every span to a printer of trace trees, and trace the demo's HTTP clients.

    The demo is an application, so it may instrument httpx2 globally; the library never does.
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from .telemetry import scrub_span
    from .telemetry import scrub_span_async

    class TreePrinter(SpanExporter):
        """Buffer the spans of each trace; print the tree when its root span ends."""

        def __init__(self) -> None:
            self._pending: dict[int, list[ReadableSpan]] = {}
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for span in spans:
                assert span.context is not None
                with self._lock:
                    self._pending.setdefault(span.context.trace_id, []).append(span)
                    done = span.parent is None
                    tree = self._pending.pop(span.context.trace_id) if done else []
                if tree:
                    stream.write(_tree_text(tree))
                    stream.flush()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TreePrinter()))
    trace.set_tracer_provider(provider)
    HTTPX2ClientInstrumentor().instrument(
        tracer_provider=provider,
        request_hook=scrub_span,
        response_hook=scrub_span,
        async_request_hook=scrub_span_async,
        async_response_hook=scrub_span_async,
    )


def _tree_text(spans: Sequence[Any]) -> str:
    """``spans`` of one trace as an indented tree: name, duration, status code if any."""
    children: dict[int | None, list[Any]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines = ["trace"]

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            attributes = dict(span.attributes or {})
            status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
            outcome = attributes.get("oauth2_broker.outcome")
            detail = " ".join(str(x) for x in (status, outcome) if x is not None)
            lines.append(f"{'  ' * depth}- {span.name} [{ms:.1f} ms] {detail}".rstrip())
            walk(span.context.span_id, depth + 1)

    walk(None, 1)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oauth2-broker`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _run_demo(args)
    from .cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
