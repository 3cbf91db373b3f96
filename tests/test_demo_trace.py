"""``oauth2-broker demo --trace`` prints the trace tree of each broker operation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _services import require_module

require_module("opentelemetry.sdk.trace", "otel")
require_module("opentelemetry.instrumentation.httpx", "otel")


def test_demo_once_with_trace_prints_the_exchange_with_its_nested_http_spans(
    tmp_path: Path,
) -> None:
    command = [sys.executable, "-m", "oauth2_broker_mw", "demo", "--once", "--trace"]
    done = subprocess.run(
        [*command, "--port", "0", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "oauth2-broker demo --once: ok" in out
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if "oauth2_broker exchange_code" in line))
    tree = lines[start : start + 5]
    assert tree[0].startswith("  - oauth2_broker exchange_code [")
    assert tree[0].endswith("ok")
    assert tree[1].startswith("    - oauth2_broker token request [") and tree[1].endswith("200")
    assert tree[2].startswith("      - POST [")  # httpx's span, the child of ours
    # no secret reaches the printed trace: no query string, no token
    assert "code=" not in out and "state=" not in out and "Bearer" not in out
