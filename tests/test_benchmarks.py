"""Every benchmark still runs (``--quick``): a benchmark that raises is a broken promise in
docs/benchmarks.md. Speed is never asserted here; the machine is shared and noisy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lease", "signing", "middleware", "denylist", "hostile_provider"])
def test_the_benchmark_runs_to_completion(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", name],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "Traceback" not in done.stdout + done.stderr


def test_the_charts_match_the_recorded_results() -> None:
    """docs/images/bench-*.svg are drawn from the tables in the docs (issue 12, item 5): a
    pasted new run without regenerated charts fails here, and each bar carries its number."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS.parent / "scripts" / "bench_charts.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    docs = BENCHMARKS.parent / "docs"
    lease = (docs / "images" / "bench-lease-warm.svg").read_text()
    table = (docs / "benchmarks.md").read_text()
    for ns in ("29", "132", "629"):  # the warm-path table's baseline, cached_lease, alease
        assert f"| {ns} |" in table and f">{ns} ns" in lease
    assert "images/bench-lease-warm.svg" in table
    middleware = (docs / "benchmarks-middleware.md").read_text()
    for name in ("asgi", "uvicorn"):
        assert f"images/bench-middleware-{name}.svg" in middleware
        chart = (docs / "images" / f"bench-middleware-{name}.svg").read_text()
        assert chart.count("with BrokerMiddleware") >= 2 and "req/s" in chart
