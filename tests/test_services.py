"""The suite's own rule for missing parts: skip with the reason, except under ``CI=true``.

On the main of 2026-12-05 (issue 8) the Redis and PostgreSQL test files began with a
module-level ``pytest.importorskip("redis")`` / ``("psycopg")``: without the driver they were
skipped, and CI went green without ever running a scale-out store test. These tests run a
small test file in a child pytest and read its outcome.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _services import require_module

TESTS = Path(__file__).resolve().parent
DRIVERS = {"redis", "psycopg", "psycopg_pool"}


def _child_pytest(tmp_path: Path, body: str, *, ci: bool, env: dict[str, str] | None = None) -> str:
    """Run ``body`` as a test file in a child pytest; its summary line (exit code first)."""
    test = tmp_path / "test_child.py"
    test.write_text(textwrap.dedent(body))
    child = {k: v for k, v in os.environ.items() if k != "CI"}
    child["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), child.get("PYTHONPATH")]))
    if ci:
        child["CI"] = "true"
    child.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=child,
    )
    return f"exit={done.returncode}\n{done.stdout}{done.stderr}"


MISSING_DRIVER = """
    from _services import require_module

    require_module("o2bm_no_such_driver", "redis")

    def test_uses_the_driver() -> None:
        pass
"""


def test_a_missing_driver_skips_the_file_with_the_extra_to_install(tmp_path: Path) -> None:
    out = _child_pytest(tmp_path, MISSING_DRIVER, ci=False)
    assert out.startswith("exit=5"), out  # the whole file skipped: pytest ran no test
    assert "1 skipped" in out, out
    assert "pip install 'oauth2-broker-mw[redis]'" in out, out


def test_a_missing_driver_fails_under_ci(tmp_path: Path) -> None:
    out = _child_pytest(tmp_path, MISSING_DRIVER, ci=True)
    assert out.startswith("exit=2") and "1 error during collection" in out, out
    assert "skipped" not in out, out
    assert "CI=true: a missing driver is a failure" in out, out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVICE = """
    from _services import require_redis

    def test_uses_redis() -> None:
        require_redis()
"""


@pytest.mark.parametrize("ci", [False, True], ids=["locally", "under-ci"])
def test_a_service_that_does_not_answer_skips_locally_and_fails_under_ci(
    tmp_path: Path, ci: bool
) -> None:
    require_module("redis", "redis")  # the driver is there; only the service is missing
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    out = _child_pytest(tmp_path, SERVICE, ci=ci, env={"OAUTH2_BROKER_TEST_REDIS_URL": url})
    assert f"Redis is not available: {url}" in out, out
    if ci:
        assert out.startswith("exit=1") and "1 failed" in out, out
        assert "CI=true: a missing service is a failure" in out, out
    else:
        assert out.startswith("exit=0") and "1 skipped" in out, out


def test_no_test_file_skips_itself_on_a_missing_store_driver() -> None:
    """``pytest.importorskip`` of a store driver would skip under CI too: use require_module."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in DRIVERS
            ):
                found.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not found, f"use _services.require_module instead of importorskip at {found}"
