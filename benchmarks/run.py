"""Run every benchmark in this directory, one after another, and print each one's tables.

Run: ``.venv/bin/python benchmarks/run.py`` (or ``make bench``). Names select a subset:
``benchmarks/run.py lease``. ``--quick`` is passed on to every benchmark (each one accepts it
for a short smoke run). Each benchmark runs in its own interpreter, so one cannot warm up or
slow down another; the exit status is non-zero when any benchmark failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[Path]:
    return sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", help="benchmarks to run (file names without .py)")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    args = parser.parse_args(argv)
    scripts = discover()
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = sorted(set(args.names) - set(known))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {sorted(known)}")
        scripts = [known[name] for name in args.names]
    failed: list[str] = []
    for script in scripts:
        print(f"=== {script.stem} ({script.relative_to(HERE.parent)}) ===", flush=True)
        command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        started = time.perf_counter()
        result = subprocess.run(command, cwd=HERE.parent, check=False)
        elapsed = time.perf_counter() - started
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"=== {script.stem}: {status} in {elapsed:.1f} s ===\n", flush=True)
        if result.returncode != 0:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
