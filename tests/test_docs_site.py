"""The documentation site builds with ``mkdocs build --strict``: every nav entry exists, every
snippet of ``examples/`` it includes resolves, and the API reference renders from the
docstrings. A broken link or a renamed public name fails here, not on the published site."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from _services import require_module

require_module("mkdocs", "docs")
require_module("mkdocstrings", "docs")

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_strict_with_snippets_diagrams_and_the_reference(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # ... which is what `make docs` runs
    makefile = (ROOT / "Makefile").read_text()
    (rule,) = re.findall(r"^docs:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert "mkdocs build --strict" in rule and "'.[docs]'" in rule

    def text(page: str) -> str:
        return re.sub(r"<[^>]+>", "", (site / page / "index.html").read_text())

    # the getting-started listings are the tested examples, included, not copied
    assert 'broker.lease(tenant="acme", principal="svc-router"' in text("getting-started").replace(
        "&quot;", '"'
    )
    # the sequence diagrams of issue 12: a lease, the 401 -> refresh -> retry, a refresh
    # shared by several hosts, a login
    how = (site / "how-it-works" / "index.html").read_text()
    assert how.count('class="mermaid"') == 4
    for title in ("A 401: one refresh, one retry", "One refresh shared by several hosts"):
        assert title in how
    # long code lines wrap instead of scrolling off to the right (issue 12, item 5)
    assert "white-space: pre-wrap" in (site / "stylesheets" / "extra.css").read_text()
    assert "stylesheets/extra.css" in (site / "getting-started" / "index.html").read_text()
    reference = text("reference")
    for name in ("Broker", "BrokerAuth", "BrokerMiddleware", "Registry", "TokenStore"):
        assert name in reference
    assert "A valid access token for (tenant, principal, scopes)" in reference
    # a page per framework, its code the example the suite runs (tests/test_demo.py), included
    for framework in ("starlette", "fastapi", "flask", "django"):
        page = text(f"frameworks/{framework}").replace("&quot;", '"')
        example = (ROOT / "examples" / f"{framework}_app.py").read_text()
        assert 'config = provider_config("acme")' in example  # runs against a MockProvider
        assert 'config = provider_config("acme")' in page, framework
        assert example.splitlines()[0].strip('"') in page, framework  # its own docstring
    # the benchmark charts (SVG drawn from the recorded output by scripts/bench_charts.py,
    # kept fresh by tests/test_benchmarks.py) are on the built pages, not only in the repo
    charts = {
        "benchmarks": ["bench-lease-warm.svg"],
        "benchmarks-middleware": ["bench-middleware-asgi.svg", "bench-middleware-uvicorn.svg"],
    }
    for page, names in charts.items():
        built = (site / page / "index.html").read_text()
        for name in names:
            assert f'src="../images/{name}"' in built, (page, name)
            assert "<svg" in (site / "images" / name).read_text()
    # the demo's screenshots, the error pages among them, are on the demo page
    demo_page = (site / "demo" / "index.html").read_text()
    for shot in ("demo-refreshed", "error-expired", "error-csrf", "error-unknown-tenant"):
        for width in ("desktop", "phone"):
            assert f'src="../images/{shot}-{width}.png"' in demo_page
            assert (site / "images" / f"{shot}-{width}.png").stat().st_size > 1000
