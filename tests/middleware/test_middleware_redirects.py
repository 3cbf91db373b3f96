"""return_to validation: a data-driven open-redirect corpus and a table of good targets."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from oauth2_broker_mw.middleware import safe_return_to

BASE = "https://app.example.test"
CORPUS = Path(__file__).parent.parent / "data" / "openredirects.txt"


def _corpus() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [unquote(line) for line in lines if line and not line.startswith("## ")]


def test_corpus_is_substantial() -> None:
    assert len(_corpus()) >= 80


@pytest.mark.parametrize("target", _corpus(), ids=repr)
def test_open_redirect_corpus_is_rejected(target: str) -> None:
    assert safe_return_to(target, base_url=BASE) == "/"
    assert safe_return_to(target, base_url=BASE, default="/home") == "/home"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/page", "/page"),
        ("/a/b/c/", "/a/b/c/"),
        ("/t/acme/reports", "/t/acme/reports"),
        ("/page?x=1&y=2", "/page?x=1&y=2"),
        ("/page#section-2", "/page#section-2"),
        ("/search?q=a@b.example", "/search?q=a@b.example"),
        ("/search?next=%2Fother", "/search?next=%2Fother"),
        ("/path-with_chars.~/x", "/path-with_chars.~/x"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/files/report.v2.pdf", "/files/report.v2.pdf"),
        (f"{BASE}/page?x=1", "/page?x=1"),
        (f"{BASE}/", "/"),
    ],
)
def test_good_targets_are_kept(target: str, expected: str) -> None:
    assert safe_return_to(target, base_url=BASE) == expected


@pytest.mark.parametrize("target", [None, "", "x" * 3000, "/" + "a" * 2048])
def test_empty_or_huge_targets_fall_back(target: str | None) -> None:
    assert safe_return_to(target, base_url=BASE) == "/"


def test_absolute_url_needs_a_base_url() -> None:
    assert safe_return_to(f"{BASE}/page") == "/"
    assert safe_return_to(f"{BASE}/page", base_url=BASE) == "/page"
