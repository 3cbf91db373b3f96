"""Bar charts (SVG) of the benchmark results recorded in the docs.

The charts are made from the benchmark output as it is pasted into the docs (the Markdown
table of ``benchmarks/lease.py --markdown`` in docs/benchmarks.md, the text block of
``benchmarks/middleware.py`` in docs/benchmarks-middleware.md), so a chart never disagrees
with its table: paste a new run, then regenerate.

    python scripts/bench_charts.py          # rewrite docs/images/bench-*.svg
    python scripts/bench_charts.py --check  # exit 1 when a chart is stale (the tests run it)

Standard library only; the SVG is plain text, deterministic, and carries every number as text.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IMAGES = DOCS / "images"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str
    group: int = 0  # colour index


def lease_bars(markdown: str) -> list[Bar]:
    """The warm-path table: ``| `operation` | ns/op | x baseline |``."""
    section = markdown.split("### Warm path", 1)[1].split("###", 1)[0]
    bars = []
    for label, ns, ratio in re.findall(r"^\| `([^`]+)` \| (\d+) \| ([\d.]+) \|$", section, re.M):
        baseline = "(baseline)" in label
        bars.append(Bar(label, float(ns), f"{ns} ns  (x{ratio})", 0 if baseline else 1))
    if not bars:
        raise SystemExit("docs/benchmarks.md: no warm-path table found")
    return bars


_MIDDLEWARE_ROW = re.compile(
    r"^\s+(?P<shape>\S.*?\S)\s+bare\s+(?P<bare>[\d,]+) req/s \| with BrokerMiddleware\s+"
    r"(?P<with>[\d,]+) req/s \| ratio (?P<ratio>[\d.]+) \|\s+\+(?P<us>[\d.]+) us/request$",
    re.M,
)


def middleware_bars(markdown: str) -> dict[str, list[Bar]]:
    """The text block: one chart per transport (in-process ASGI, uvicorn), bare vs wrapped."""
    block = markdown.split("```text", 1)[1].split("```", 1)[0]
    charts: dict[str, list[Bar]] = {}
    for part in re.split(r"^(?=\S)", block, flags=re.M):
        if not part.strip():
            continue
        title = part.splitlines()[0].split("(", 1)[0].strip().rstrip(":")
        bars: list[Bar] = []
        for m in _MIDDLEWARE_ROW.finditer(part):
            bare = float(m["bare"].replace(",", ""))
            wrapped = float(m["with"].replace(",", ""))
            bars.append(Bar(f"{m['shape']}, bare app", bare, f"{m['bare']} req/s", 0))
            bars.append(
                Bar(
                    f"{m['shape']}, with BrokerMiddleware",
                    wrapped,
                    f"{m['with']} req/s  (x{m['ratio']}, +{m['us']} µs)",
                    1,
                )
            )
        if bars:
            charts[title] = bars
    if not charts:
        raise SystemExit("docs/benchmarks-middleware.md: no result block found")
    return charts


_COLOURS = ("#8c959f", "#1f6feb")


def svg(title: str, unit: str, bars: list[Bar]) -> str:
    label_w, bar_w, value_w, row_h, top = 360, 360, 240, 26, 44
    width = label_w + bar_w + value_w
    height = top + row_h * len(bars) + 16
    peak = max(b.value for b in bars) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="13">',
        f"<title>{html.escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="22" font-size="15" font-weight="600">{html.escape(title)}</text>',
        f'<text x="{width - 10}" y="22" text-anchor="end" fill="#57606a">'
        f"{html.escape(unit)}</text>",
    ]
    for i, bar in enumerate(bars):
        y = top + i * row_h
        length = max(1.0, bar.value / peak * bar_w)
        out += [
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">'
            f"{html.escape(bar.label)}</text>",
            f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" '
            f'rx="3" fill="{_COLOURS[bar.group % 2]}"/>',
            f'<text x="{label_w + length + 6:.1f}" y="{y + 17}" fill="#1d232a">'
            f"{html.escape(bar.text)}</text>",
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def charts() -> dict[Path, str]:
    lease = lease_bars((DOCS / "benchmarks.md").read_text())
    made = {
        IMAGES / "bench-lease-warm.svg": svg(
            "lease() with a cached token, per call (lower is better)", "ns per call", lease
        )
    }
    middleware = middleware_bars((DOCS / "benchmarks-middleware.md").read_text())
    for (title, bars), name in zip(middleware.items(), ("asgi", "uvicorn"), strict=False):
        made[IMAGES / f"bench-middleware-{name}.svg"] = svg(
            f"{title} (higher is better)", "requests per second", bars
        )
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a chart is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in charts().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.relative_to(ROOT).as_posix())
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale charts (run python scripts/bench_charts.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
