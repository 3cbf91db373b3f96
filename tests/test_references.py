"""Cited requirement IDs and quirk numbers resolve, and the tests the pages name exist.

Code, docs and tests cite ``SECURITY A10`` (a row of ``docs/security.md``) and ``quirk 15`` (a
row of ``docs/quirks.md``). These tests check four things. Every citation in the package, the
docs, the tests, the README and the changelog has its row. Every ``tests/...py::test_name``
those two pages name is a test function that exists. Every MUST row of the security page names
a test, or says "does not apply: ..." or "not yet tested". The page's list of untested MUSTs
is current.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECURITY_PAGE = ROOT / "docs" / "security.md"
QUIRKS_PAGE = ROOT / "docs" / "quirks.md"
SCANNED = ("oauth2_broker_mw", "docs", "tests", "README.md", "CHANGELOG.md")
SUFFIXES = (".py", ".md", ".toml", ".txt", ".json", ".mjs")
THIS_FILE = Path(__file__).resolve()  # its unit checks hold deliberately bad citations

_SEP = r"\s*(?:,|/|-|\u2013|\band\b|\bor\b)\s*"  # \u2013: an en dash
_SECURITY = re.compile(rf"\bSECURITY\s+([A-J]\d{{1,2}}(?:{_SEP}[A-J]?\d{{1,2}})*)")
_QUIRK = re.compile(rf"\bquirks?\s+(?:rows?\s+)?#?(\d{{1,3}}(?:{_SEP}\d{{1,3}})*)", re.IGNORECASE)
_QUIRK_TEST = re.compile(r"\btest_quirk(\d{1,3})_")
_STALE = re.compile(r"PROVIDER_QUIRKS|\bSECURITY\.md\b")
_TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)(\[[^\]`]*\])?")
_ROW = re.compile(r"^\|\s*([A-J]\d{1,2}|\d{1,3})\s*\|(.*)\|\s*$")


def _expand(items: str) -> list[str]:
    """``"B1, B2-B4"`` → ``["B1", "B2", "B3", "B4"]``; ``"1-3 and 7"`` → ``["1", "2", "3", "7"]``.

    A range may use a hyphen or an en dash.
    """
    out: list[str] = []
    for part in re.split(r"\s*(?:,|/|\band\b|\bor\b)\s*", items):
        span = re.fullmatch(r"([A-J]?)(\d+)\s*[-\u2013]\s*[A-J]?(\d+)", part)
        if span:
            out += [f"{span[1]}{n}" for n in range(int(span[2]), int(span[3]) + 1)]
        elif part:
            out.append(part)
    return out


def citations(text: str) -> tuple[set[str], set[int]]:
    """The SECURITY IDs and quirk numbers cited in ``text``."""
    security: set[str] = set()
    for match in _SECURITY.finditer(text):
        letter = ""
        for ident in _expand(match.group(1)):
            letter = ident[0] if ident[0].isalpha() else letter
            security.add(ident if ident[0].isalpha() else letter + ident)
    quirks = {int(n) for m in _QUIRK.finditer(text) for n in _expand(m.group(1))}
    quirks.update(int(n) for n in _QUIRK_TEST.findall(text))
    return security, quirks


def table_rows(page: Path) -> dict[str, list[str]]:
    """The rows of a page's requirement tables: ID (``A1`` or ``15``) → the other cells."""
    rows: dict[str, list[str]] = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"{page.name}: row {match.group(1)} appears twice"
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    return rows


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
    )


def missing_tests(text: str, root: Path = ROOT) -> list[str]:
    """The ``tests/...py::test_name`` references in ``text`` that name no test function."""
    missing = []
    for path, name, _param in _TEST_REF.findall(text):
        file = root / path
        if not file.is_file() or name not in _test_names(file):
            missing.append(f"{path}::{name}")
    return missing


def must_rows(rows: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """``(without_evidence, not_yet_tested)`` among the rows whose level says MUST."""
    without, untested = [], []
    for ident, (requirement, level, _source, tested_by) in rows.items():
        if not re.search(r"\bMUST\b", level):
            continue
        if "not yet tested" in requirement + tested_by:
            untested.append(ident)
        elif not (_TEST_REF.search(tested_by) or tested_by.startswith("does not apply: ")):
            without.append(ident)
    return without, untested


def _scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            f
            for f in candidates
            if f.is_file()
            and f.suffix in SUFFIXES
            and f.resolve() != THIS_FILE
            and "node_modules" not in f.parts
        ]
    return files


# -- the parser itself ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "security", "quirks"),
    [
        ("equal the issuer (SECURITY A10).", {"A10"}, set()),
        ("checks (SECURITY B1, B2, B4, B7)", {"B1", "B2", "B4", "B7"}, set()),
        ("SECURITY E1-E4 and SECURITY F6/D3", {"E1", "E2", "E3", "E4", "F6", "D3"}, set()),
        ("(SECURITY C5, quirk 24)", {"C5"}, {24}),
        ("Quirks 1, 2 and quirk rows 1-3 and 22", set(), {1, 2, 3, 22}),
        ("quirks 21\u201323", set(), {21, 22, 23}),
        ("def test_quirk9_scope_on_refresh", set(), {9}),
        ("SECURITY J99 and quirk 250", {"J99"}, {250}),  # parsed, then refused below
        ("quirks: comma scopes; security is fine", set(), set()),
    ],
)
def test_the_citation_parser(text: str, security: set[str], quirks: set[int]) -> None:
    assert citations(text) == (security, quirks)


def test_a_bad_citation_or_test_reference_is_caught() -> None:
    security, quirks = citations("see SECURITY A13 and quirk 25")
    assert security - set(table_rows(SECURITY_PAGE)) == {"A13"}
    assert {str(q) for q in quirks} - set(table_rows(QUIRKS_PAGE)) == {"25"}
    text = "`tests/test_references.py::test_the_citation_parser[x]`, `tests/nope.py::test_a`"
    assert missing_tests(text) == ["tests/nope.py::test_a"]
    assert missing_tests("`tests/test_references.py::test_not_here`") == [
        "tests/test_references.py::test_not_here"
    ]
    rows = {
        "Z1": ["r", "MUST", "s", "`tests/x.py::test_y`"],
        "Z2": ["r", "MUST NOT", "s", "—"],
        "Z3": ["r", "MUST", "s", "not yet tested"],
        "Z4": ["r", "SHOULD", "s", ""],
        "Z5": ["r", "MUST", "s", "does not apply: no native flow"],
    }
    assert must_rows(rows) == (["Z2"], ["Z3"])


# -- the repository -------------------------------------------------------------------------------
def test_the_pages_have_every_row() -> None:
    assert sorted(table_rows(QUIRKS_PAGE), key=int) == [str(n) for n in range(1, 25)]
    expected = {"A": 12, "B": 9, "C": 8, "D": 7, "E": 5, "F": 7, "G": 6, "H": 3, "I": 2, "J": 10}
    wanted = {f"{s}{n}" for s, count in expected.items() for n in range(1, count + 1)}
    assert set(table_rows(SECURITY_PAGE)) == wanted
    for ident, cells in table_rows(SECURITY_PAGE).items():
        assert len(cells) == 4 and all(cells[:3]), f"docs/security.md row {ident}: {cells}"
    for number, cells in table_rows(QUIRKS_PAGE).items():  # quirk, seen at, handled by, tests
        assert len(cells) == 4 and all(cells[:3]), f"docs/quirks.md row {number}: {cells}"
        assert _TEST_REF.search(cells[3]), f"docs/quirks.md row {number} names no test"


def test_every_citation_resolves_to_a_row() -> None:
    security_rows, quirk_rows = set(table_rows(SECURITY_PAGE)), set(table_rows(QUIRKS_PAGE))
    broken: list[str] = []
    for file in _scanned_files():
        text = file.read_text(encoding="utf-8", errors="replace")
        where = file.relative_to(ROOT)
        security, quirks = citations(text)
        broken += [f"{where}: SECURITY {i}" for i in sorted(security - security_rows)]
        broken += [f"{where}: quirk {q}" for q in sorted(quirks) if str(q) not in quirk_rows]
        broken += [
            f"{where}: cites {m!r}, use docs/security.md or docs/quirks.md"
            for m in _STALE.findall(text)
        ]
    assert not broken, "citations with no row in docs/security.md / docs/quirks.md:\n" + "\n".join(
        broken
    )


@pytest.mark.parametrize("page", [SECURITY_PAGE, QUIRKS_PAGE], ids=lambda p: p.name)
def test_every_named_test_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert _TEST_REF.search(text)
    missing = missing_tests(text)
    assert not missing, f"{page.name} names tests that do not exist: {missing}"


def test_every_must_names_a_test_or_says_why_not() -> None:
    without, untested = must_rows(table_rows(SECURITY_PAGE))
    assert not without, (
        f"MUST rows of docs/security.md with no test, no 'does not apply: ...' and no "
        f"'not yet tested': {without}. (Known untested MUSTs: {untested})"
    )


def test_the_list_of_untested_musts_is_current() -> None:
    _, untested = must_rows(table_rows(SECURITY_PAGE))
    text = SECURITY_PAGE.read_text(encoding="utf-8")
    listed = text.split("## MUSTs not yet tested", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"\*\*([A-J]\d{1,2})\*\*", listed) == untested, (
        f"the section 'MUSTs not yet tested' of docs/security.md must list {untested}"
    )
