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
