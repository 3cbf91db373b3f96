"""Code blocks the docs promise to be runnable run: every ```python block right after a
``<!-- runnable -->`` line in README.md and docs/*.md, each in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"<!-- runnable -->\n```python\n(.*?)\n```", re.S)


def runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match.group(1)))
    return found


BLOCKS = runnable_blocks()


def test_the_readme_opens_with_a_runnable_block() -> None:
    readme = (ROOT / "README.md").read_text()
    first_python = readme.index("```python")
    assert readme[:first_python].rstrip().endswith("<!-- runnable -->"), (
        "the README's first Python block must be runnable (marked <!-- runnable -->)"
    )
    assert any(name.startswith("README.md#") for name, _ in BLOCKS)


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_the_block_runs(name: str, code: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"
