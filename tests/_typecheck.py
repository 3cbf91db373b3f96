"""``mypy --strict`` on a small program, as a user's type checker sees this checkout.

A line of the program that ends in ``# error: <code>`` must get that error, and no other line
may get one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mypy_errors(
    program: str, tmp_path: Path
) -> tuple[set[tuple[int, str]], set[tuple[int, str]], str]:
    """(found, expected, mypy's output) for ``program``: each a set of (line, error code)."""
    path = tmp_path / "usage.py"
    path.write_text(program)
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # this checkout's package, not an installed one
    command = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--config-file", "", str(path)]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, timeout=600
    )
    found = {
        (int(line), code)
        for line, code in re.findall(
            r"usage\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M
        )
    }
    expected = {
        (number, code)
        for number, text in enumerate(program.splitlines(), 1)
        for code in re.findall(r"# error: ([a-z-]+)", text)
    }
    return found, expected, result.stdout + result.stderr
