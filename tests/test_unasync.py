"""scripts/unasync.py: the sync twins are generated from the async source, and checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unasync.py"


def unasync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "oauth2_broker_mw", tmp_path / "oauth2_broker_mw")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_repository_is_current() -> None:
    done = unasync(ROOT, "--check")
    assert done.returncode == 0, done.stderr


def test_an_edited_async_source_makes_the_check_fail_until_regenerated(project: Path) -> None:
    broker = project / "oauth2_broker_mw" / "broker.py"
    text = broker.read_text()
    edited = text.replace(
        "return await arun_calls(self._exchange(state, code, iss, callback_params))",
        "return await arun_calls(self._exchange(state, code, None, callback_params))",
    )
    assert edited != text
    broker.write_text(edited)

    check = unasync(project, "--check")
    assert check.returncode == 1
    assert "stale generated sync code in oauth2_broker_mw/broker.py" in check.stderr

    assert unasync(project).returncode == 0
    regenerated = broker.read_text()
    assert "return run_calls(self._exchange(state, code, None, callback_params))" in regenerated
    assert unasync(project, "--check").returncode == 0


def test_a_hand_edit_of_a_generated_twin_is_stale(project: Path) -> None:
    broker = project / "oauth2_broker_mw" / "broker.py"
    text = broker.read_text()
    edited = text.replace(
        "        return run_calls(self._exchange(state, code, iss, callback_params))",
        "        return run_calls(self._exchange(state, code, iss, None))",
    )
    assert edited != text
    broker.write_text(edited)
    check = unasync(project, "--check")
    assert check.returncode == 1
    assert "stale" in check.stderr


def refused(project: Path, module_text: str) -> str:
    """What ``--check`` says of the package with a module ``twins.py`` added; it must fail."""
    (project / "oauth2_broker_mw" / "twins.py").write_text(module_text)
    check = unasync(project, "--check")
    assert check.returncode == 1
    return check.stderr


def test_a_new_hand_copied_pair_is_refused(project: Path) -> None:
    body = "    x = 1\n    y = x + 1\n    z = y + 1\n    return z\n"
    said = refused(
        project,
        "async def await_me() -> int:\n    return 1\n\n\n"
        f"def thing() -> int:\n{body}\n\nasync def athing() -> int:\n{body}",
    )
    assert "twins.py:.athing: a hand-copied sync/async pair" in said
    assert "await_me" not in said


def test_a_rule_no_twin_uses_is_an_error(project: Path) -> None:
    # Without the broker's generated twins, the rules that only they use are unused.
    broker = project / "oauth2_broker_mw" / "broker.py"
    broker.write_text(broker.read_text().replace("# unasync: generated from", "# hand: from"))
    check = unasync(project, "--check")
    assert check.returncode == 1
    assert "is never used: remove it" in check.stderr


SIBLINGS = """
class AsyncThing:
    async def go(self) -> int:
{body}

class {sync}:
{marker}    def go(self) -> int:
{body}
"""
BODY = "        x = 1\n        y = x + 1\n        z = y + 1\n        return z\n"


@pytest.mark.parametrize("sync", ["SyncThing", "Thing"])
def test_a_hand_copied_pair_in_sibling_classes_is_refused(project: Path, sync: str) -> None:
    said = refused(project, SIBLINGS.format(body=BODY, sync=sync, marker=""))
    assert "twins.py:AsyncThing.go: a hand-copied sync/async pair" in said


def test_a_sibling_class_twin_is_generated_with_its_name(project: Path) -> None:
    module = project / "oauth2_broker_mw" / "twins.py"
    marker = "    # unasync: generated from go; edit that one, then run scripts/unasync.py\n"
    source = BODY.replace("x = 1", "x = await one()")
    module.write_text(SIBLINGS.format(body=source, sync="SyncThing", marker=marker))
    assert unasync(project, "--check").returncode == 1  # the twin is stale
    assert unasync(project).returncode == 0
    text = module.read_text()
    assert "    def go(self) -> int:\n        x = one()\n" in text
    assert unasync(project, "--check").returncode == 0


def test_a_generated_twin_keeps_its_name(project: Path) -> None:
    # The rule "async def alease(self" -> "def lease(self" must not rename a sibling class's
    # same-named method: AsyncThing.acquire's twin is Thing.acquire, not Thing.cquire.
    source = BODY.replace("x = 1", "x = await one()")
    marker = "    # unasync: generated from acquire; edit that one, then run scripts/unasync.py\n"
    text = SIBLINGS.format(body=source, sync="Thing", marker=marker).replace(" go(", " acquire(")
    module = project / "oauth2_broker_mw" / "twins.py"
    module.write_text(text)
    done = unasync(project)
    assert done.returncode == 1
    assert "twins.py:AsyncThing.acquire: the rules make 'def cquire'" in done.stderr
    assert module.read_text() == text  # nothing rewritten


def test_a_hand_copied_pair_of_closures_is_refused(project: Path) -> None:
    inner = BODY.replace("        ", "            ")
    said = refused(
        project,
        "def outer(flag: bool) -> object:\n"
        f"    if flag:\n\n        async def arun() -> int:\n{inner}"
        f"\n        return arun\n\n    def run() -> int:\n{BODY}\n    return run\n",
    )
    assert "twins.py:.outer.arun: a hand-copied sync/async pair" in said


def test_a_marker_no_pair_uses_is_an_error(project: Path) -> None:
    marker = "    # unasync: generated from gone; edit that one, then run scripts/unasync.py\n"
    text = SIBLINGS.format(body=BODY, sync="Thing", marker=marker)
    line = text.split("\n").index(marker.rstrip("\n")) + 1
    assert f"twins.py:{line}: a marker that no pair uses" in refused(project, text)


def test_a_rule_gap_is_an_error_not_a_silent_twin(project: Path) -> None:
    marker = "    # unasync: generated from go; edit that one, then run scripts/unasync.py\n"
    source = BODY.replace("x = 1", "async with lock():\n            x = 1")
    text = SIBLINGS.format(body=source, sync="Thing", marker=marker)
    said = refused(project, text)
    assert "twins.py:AsyncThing.go: the rules leave 'async with': add a rule" in said
    assert (project / "oauth2_broker_mw" / "twins.py").read_text() == text
