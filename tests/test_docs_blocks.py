"""The documentation's Python blocks run (issue 12, item 3).

* README.md: every fenced ``python`` block runs as it is, in a fresh interpreter in an empty
  directory, unless the line before it is ``<!-- skip: <reason> -->`` (a block that needs a
  real provider or a running app); a skipped block must still compile as a module (no
  top-level ``await`` beside sync code).
* docs/**/*.md: the same rule, and a block must be marked: ``<!-- runnable -->`` (it runs) or
  ``<!-- skip: <reason> -->``. A block that includes a file (``--8<-- "examples/x.py"``) shows a
  program that a test runs (its name appears in tests/).
* A skipped block must not use a name it never defines, unless its reason names it in
  backticks (a fragment: "`broker` comes from the text above").
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(
    r"(?:^<!--\s*(?P<marker>runnable|skip:[^>]*?)\s*-->\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M,
)


def _blocks(path: Path) -> list[tuple[str, int, str | None, str]]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        found.append((f"{path.relative_to(ROOT)}:{line}", line, match["marker"], match["code"]))
    return found


README = _blocks(ROOT / "README.md")
DOCS = [b for p in sorted((ROOT / "docs").rglob("*.md")) for b in _blocks(p)]


def _run(code: str, where: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"


def test_the_readme_opens_with_a_runnable_block() -> None:
    assert README, "README.md has no python block"
    assert README[0][2] is None or README[0][2] == "runnable"


@pytest.mark.parametrize(("where", "line", "marker", "code"), README, ids=[b[0] for b in README])
def test_readme_blocks_run(
    where: str, line: int, marker: str | None, code: str, tmp_path: Path
) -> None:
    if marker is not None and marker.startswith("skip:"):
        _check_skipped(where, marker, code)
    _run(code, where, tmp_path)


def _check_skipped(where: str, marker: str, code: str) -> None:
    reason = marker.removeprefix("skip:").strip()
    assert reason, f"{where}: a skipped block says why"
    compile(code, where, "exec")
    # Pasted as it is, it must not name what it never defines (issue 12: `requests`,
    # `url`, `state`, `code`, `iss`); a fragment names what it takes in its reason.
    given = set(re.findall(r"`(\w+)`", reason))
    undefined = set(_undefined_names(code)) - given
    assert not undefined, f"{where}: undefined names {sorted(undefined)}"
    pytest.skip(f"{where}: {reason}")


def _undefined_names(code: str) -> list[str]:
    """The names ``code`` uses and never defines, imports or gets from builtins (ruff F821)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--select",
            "F821",
            "--output-format",
            "json",
            "--stdin-filename",
            "block.py",
            "-",
        ],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return [re.findall(r"`(\w+)`", d["message"])[0] for d in json.loads(done.stdout)]


@pytest.mark.parametrize(("where", "line", "marker", "code"), DOCS, ids=[b[0] for b in DOCS])
def test_docs_blocks_run_or_say_why(
    where: str, line: int, marker: str | None, code: str, tmp_path: Path
) -> None:
    included = re.fullmatch(r'--8<-- "([^":]+)(?::\w+)?"\n', code)
    if included is not None:
        path = ROOT / included[1]
        assert path.is_file(), f"{where}: includes a missing file {included[1]}"
        tests = (ROOT / "tests").rglob("test_*.py")
        assert any(path.stem in t.read_text(encoding="utf-8") for t in tests), (
            f"{where}: no test runs {included[1]}"
        )
        return
    assert marker is not None, f"{where}: mark the block <!-- runnable --> or <!-- skip: why -->"
    if marker.startswith("skip:"):
        _check_skipped(where, marker, code)
    _run(code, where, tmp_path)
