"""The layers, checked for every module: what each one may not import (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "oauth2_broker_mw"
IO = {"httpx", "httpx2", "asyncio", "threading", "sqlite3", "redis", "psycopg", "psycopg_pool"}
IO |= {"starlette", "requests", "socket", "selectors", "subprocess", "urllib3", "anyio"}
UPPER = {"oauth2_broker_mw.broker", "oauth2_broker_mw.auth", "oauth2_broker_mw.middleware"}
UPPER |= {"oauth2_broker_mw.registry", "oauth2_broker_mw.refresher", "oauth2_broker_mw.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file, relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            found.add(stem)
            found |= {f"{stem}.{alias.name}" for alias in node.names}
    return found


def hits(found: set[str], banned: set[str]) -> list[str]:
    return sorted(
        name for name in found if any(name == b or name.startswith(b + ".") for b in banned)
    )


MODULES = sorted(PACKAGE.rglob("*.py"))
SHELL_FILES = {"__init__.py", "asgi.py", "wsgi.py"}


def ids(path: Path) -> str:
    return module_name(path)


@pytest.mark.parametrize("path", [p for p in MODULES if "_core" in p.parts], ids=ids)
def test_the_core_does_no_io_and_imports_nothing_above_it(path: Path) -> None:
    found = imports(path)
    outside = {n for n in found if n.startswith("oauth2_broker_mw.") and "._core" not in n}
    assert not hits(found, IO), f"{module_name(path)} is sans-IO; it imports {hits(found, IO)}"
    assert not outside, f"{module_name(path)} imports {sorted(outside)} from above the core"


@pytest.mark.parametrize("path", [p for p in MODULES if "stores" in p.parts], ids=ids)
def test_the_stores_import_no_broker_auth_or_middleware(path: Path) -> None:
    assert not hits(imports(path), UPPER)


@pytest.mark.parametrize("name", ["broker.py", "_driver.py", "_drivers.py", "_singleflight.py"])
def test_the_broker_imports_no_auth_or_middleware(name: str) -> None:
    banned = {"oauth2_broker_mw.auth", "oauth2_broker_mw.middleware", "oauth2_broker_mw.cli"}
    assert not hits(imports(PACKAGE / name), banned)


WEB = {"starlette", "fastapi", "flask", "werkzeug", "django", "quart", "aiohttp", "litestar"}
SHELLS = {"oauth2_broker_mw.middleware.asgi", "oauth2_broker_mw.middleware.wsgi"}
SHARED = [p for p in MODULES if p.parent.name == "middleware" and p.name not in SHELL_FILES]


@pytest.mark.parametrize("path", SHARED, ids=ids)
def test_the_shared_middleware_imports_no_event_loop_client_framework_or_shell(path: Path) -> None:
    # Both middlewares run this code: the shells alone know asyncio, ASGI or WSGI.
    banned = {"asyncio", "httpx", "httpx2"} | WEB | SHELLS
    assert not hits(imports(path), banned), f"{module_name(path)} is shared by both shells"


def test_the_driver_does_no_io() -> None:
    assert not hits(imports(PACKAGE / "_driver.py"), IO | UPPER)


#: objects whose ``send`` sends HTTP (an httpx client, a requests connection), not a generator's
HTTP_SENDERS = {"client", "connection"}


def advances(path: Path) -> list[str]:
    """Where ``path`` advances a generator itself: ``x.throw/athrow/asend(...)``, or
    ``name.send(...)`` on a plain name that is not an HTTP client."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, target = node.func.attr, node.func.value
            generator_only = method in {"throw", "athrow", "asend"}
            if generator_only or (
                method == "send" and isinstance(target, ast.Name) and target.id not in HTTP_SENDERS
            ):
                found.append(f"{module_name(path)}:{node.lineno} .{method}()")
    return found


def test_one_module_drives_the_flows() -> None:
    # Five drivers once disagreed on what they threw back in and whether they closed the flow.
    driving = [hit for path in MODULES if path.name != "_driver.py" for hit in advances(path)]
    assert not driving, f"only _driver.run/arun advance a flow; found {driving}"
    assert advances(PACKAGE / "_driver.py"), "the scan finds the one driver's own calls"


@pytest.mark.parametrize("name", ["flows.py", "effects.py", "events.py"])
def test_the_flows_read_time_only_through_the_now_effect(name: str) -> None:
    found = imports(PACKAGE / "_core" / name)
    assert not hits(found, {"time", "datetime"}), f"_core/{name} reads a clock of its own"


def test_the_checker_sees_a_banned_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rules above only mean something if the scan finds imports at any depth, relative too.
    assert hits(imports(PACKAGE / "stores" / "redis.py"), {"redis"})
    core = tmp_path / "oauth2_broker_mw" / "_core"
    core.mkdir(parents=True)
    (core / "sneaky.py").write_text("def f():\n    import httpx\n    from ..broker import Broker\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "oauth2_broker_mw")
    found = imports(core / "sneaky.py")
    assert hits(found, IO) == ["httpx"]
    assert "oauth2_broker_mw.broker.Broker" in found
