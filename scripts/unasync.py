"""Generate the sync twin of every async method that has one, and check that they are current.

The async code is the one source (as in httpcore's ``scripts/unasync.py``). A sync twin is a
function ``lease`` next to an ``async def alease`` in the same class or module, or a method of
the same name in the sibling class of an async one (``SyncDriver`` or ``Driver`` beside
``AsyncDriver``, ``_Session`` beside ``_AsyncSession``). For each such pair this script either

* **generates** the sync twin: when the twin is preceded by the marker comment
  ``# unasync: generated from <async name>``, its text is the async function's text with the
  :data:`RULES` applied, then formatted by ``ruff format``; or
* **accepts** a thin hand-written shell: a twin whose body (docstring aside) is at most
  :data:`THIN` lines, i.e. a pair shrunk to the line that differs; or
* **accepts** a pair named in :data:`HAND_WRITTEN`, with the reason it cannot be generated.

Any other pair is a hand-copied twin and an error, as is a rule that no generated twin used.

    python scripts/unasync.py           # rewrite the generated twins
    python scripts/unasync.py --check   # exit 1 when one is stale, or a pair is unchecked
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "# unasync: generated from {name}; edit that one, then run scripts/unasync.py"
MARKER_RE = re.compile(r"^\s*# unasync: generated from (\w+)")

#: (pattern, replacement), applied in order to the async source of a generated twin.
RULES: list[tuple[str, str]] = [
    (r"\basync def (_*)a(\w+)\(", r"def \1\2("),
    (r"\bawait arun_calls\(", "run_calls("),
    (r"\basync def ", "def "),  # a sibling class's method keeps its name
    (r"\bawait ", ""),
    (r"\benter_async_context\(", "enter_context("),
    (r"\.aclose\(\)", ".close()"),
    (r"\bAsync(ExitStack|Connection|Cursor)\b", r"\1"),
    (r"\b_driver\.arun\(", "_driver.run("),
    (r"\.arelease_lock\(", ".release_lock("),
]

#: Pairs whose sync side is at most this many body lines count as a thin shell.
THIN = 3

#: Pairs that differ by more than the rules can say, with the reason. Key: "path:Class.name".
HAND_WRITTEN: dict[str, str] = {
    "_driver.py:.arun": "run drives the arun coroutine itself (no loop): one loop, not a copy",
    "_drivers.py:AsyncDriver._execute": "the provider-call deadline: asyncio.timeout around "
    "the fetch against a check after each chunk read",
    "_drivers.py:AsyncDriver._fetch": "aiter_bytes under asyncio.timeout against iter_bytes "
    "with the deadline tightened per chunk",
    "_drivers.py:AsyncDriver._renewing": "the lock renewal runs as a task against a thread",
    "_singleflight.py:SingleFlight.ado": "threading.Event against asyncio futures",
    "discovery.py:.adiscover": "fetches with a per-loop async client",
    "broker.py:SharedResources.async_client": "a per-event-loop client (PerLoop)",
    "broker.py:Broker.aforget_tenant": "bounded concurrency: a thread pool against tasks",
    "broker.py:Broker.aclose": "flushes unsaved rotations on this loop, then closes its pool",
    "broker.py:SharedResources.aclose": "closes this loop's client (PerLoop; another loop's "
    "closes when that loop ends)",
    "stores/postgres.py:PostgresStore._arun": "psycopg ConnectionPool against AsyncConnectionPool",
    "stores/redis.py:RedisStore._arun": "redis.Redis against redis.asyncio.Redis pipelines",
    "stores/encrypted.py:EncryptedStore._arun": "awaits the inner store's async methods",
    "stores/_commands.py:.adrive": "the one driver's two forms (_driver.run against arun), "
    "each sealing a CorruptRecord",
    "middleware/_context.py:BrokerContext.alease": "calls the broker's async twin",
    "auth.py:BrokerAuth.async_auth_flow": "httpx's Auth protocol: two generator kinds",
    "testing/_mock_login.py:.async_login": "drives the one step generator (login_flow); the sync "
    "driver also speaks Flask's test client",
}


def sync_name(name: str) -> str | None:
    """The sync twin's name of an async function's name, or None."""
    if name.startswith("async_"):
        return "sync_" + name[len("async_") :]
    match = re.fullmatch(r"(_*)a(\w+)", name)
    return match.group(1) + match.group(2) if match else None


@dataclass
class Pair:
    label: str
    source: ast.AsyncFunctionDef
    twin: ast.FunctionDef
    start: int  # first line of the twin's text (its marker or first decorator), 1-based
    generated: bool


def _start(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def _body_lines(node: ast.FunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def sibling_names(name: str) -> list[str]:
    """The names a sync sibling of class ``name`` may have: ``AsyncX`` -> ``SyncX``, ``X``."""
    match = re.fullmatch(r"(_*)Async(\w+)", name)
    if match is None:
        return []
    under, rest = match.groups()
    return [f"{under}Sync{rest}", under + rest]


def _defs(body: list[ast.stmt]) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions defined in ``body``, also under ``if``/``try``/``with``/loops, not inside
    another function or class."""
    found: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node)
        elif not isinstance(node, ast.ClassDef):
            for field in ("body", "orelse", "finalbody"):
                found += _defs(getattr(node, field, None) or [])
            for part in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:
                found += _defs(part.body)
    return found


def _closure_scopes(tree: ast.Module) -> list[tuple[str, list[ast.stmt]]]:
    """Function bodies, for twins nested in them, named ``Class.method`` / ``.function``."""
    found: list[tuple[str, list[ast.stmt]]] = []

    def visit(owner: str, body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.name, node.body)
        for node in _defs(body):
            name = f"{owner}.{node.name}"
            found.append((name, node.body))
            visit(name, node.body)

    visit("", tree.body)
    return found


def pairs(package: Path, path: Path, lines: list[str]) -> list[Pair]:
    tree = ast.parse("\n".join(lines))
    rel = path.relative_to(package).as_posix()
    classes = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    scopes: list[tuple[str, list[ast.stmt]]] = [("", tree.body)]
    scopes += [(name, node.body) for name, node in classes.items()]
    scopes += _closure_scopes(tree)
    found = []
    for owner, body in scopes:
        defs = _defs(body)
        syncs = {n.name: n for n in defs if isinstance(n, ast.FunctionDef)}
        sibling = next((classes[n] for n in sibling_names(owner) if n in classes), None)
        same_name = (
            {}
            if sibling is None
            else {n.name: n for n in sibling.body if isinstance(n, ast.FunctionDef)}
        )
        for node in defs:
            if not isinstance(node, ast.AsyncFunctionDef):
                continue
            twin = syncs.get(sync_name(node.name) or "") or same_name.get(node.name)
            if twin is None:
                continue
            start = _start(twin)
            marker = MARKER_RE.match(lines[start - 2]) if start >= 2 else None
            generated = marker is not None and marker.group(1) == node.name
            found.append(Pair(f"{rel}:{owner}.{node.name}", node, twin, start, generated))
    return found


def generate(pair: Pair, lines: list[str], used: set[int]) -> list[str]:
    """The twin's new text: the marker, then the async source with the rules applied."""
    source = "\n".join(lines[_start(pair.source) - 1 : pair.source.end_lineno])
    for index, (pattern, replacement) in enumerate(RULES):
        source, count = re.subn(pattern, replacement, source)
        if count:
            used.add(index)
    indent = re.match(r"\s*", lines[pair.twin.lineno - 1]).group(0)  # type: ignore[union-attr]
    source = textwrap.indent(textwrap.dedent(source), indent)  # a closure may sit deeper
    return [indent + MARKER.format(name=pair.source.name), *source.split("\n")]


def ruff_format(path: Path, text: str) -> str:
    done = subprocess.run(  # noqa: S603 (our own interpreter, a fixed argv)
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=path.parent,
    )
    return done.stdout


def process(package: Path, path: Path, used: set[int], errors: list[str]) -> str | None:
    """The file's text with its twins regenerated, or None when it has no generated twin."""
    lines = path.read_text().split("\n")
    found = pairs(package, path, lines)
    out = list(lines)
    changed = False
    rel = path.relative_to(package).as_posix()
    markers = {i + 1 for i, line in enumerate(lines) if MARKER_RE.match(line)}
    markers -= {pair.start - 1 for pair in found if pair.generated}
    errors += [
        f"{rel}:{n}: a marker that no pair uses (a wrong name, or its pair is gone): fix it"
        for n in sorted(markers)
    ]
    for pair in sorted(found, key=lambda p: p.start, reverse=True):
        thin = _body_lines(pair.twin) <= THIN
        if pair.label in HAND_WRITTEN and (pair.generated or thin):
            why = "generated" if pair.generated else "a thin shell"
            errors.append(f"HAND_WRITTEN names {pair.label}, which is {why}: remove it")
        if pair.generated:
            twin = generate(pair, lines, used)
            text = "\n".join(twin)
            named = re.search(r"^\s*def (\w+)\(", text, re.M)
            left = re.search(r"\basync (with|for)\b", text)
            if named is None or named.group(1) != pair.twin.name:
                errors.append(
                    f"{pair.label}: the rules make 'def {named and named.group(1)}' of its "
                    f"twin '{pair.twin.name}': add a rule, or rename one of the pair"
                )
                continue
            if left is not None:
                errors.append(f"{pair.label}: the rules leave '{left.group(0)}': add a rule")
                continue
            out[pair.start - 2 : pair.twin.end_lineno] = twin
            changed = True
        elif pair.label in HAND_WRITTEN or thin:
            continue
        else:
            errors.append(
                f"{pair.label}: a hand-copied sync/async pair. Put "
                f"'{MARKER.format(name=pair.source.name)}' above its sync twin and run "
                "scripts/unasync.py, or shrink the twin, or name it in HAND_WRITTEN with why."
            )
    return ruff_format(path, "\n".join(out)) if changed else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when anything is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project (default: this one)")
    args = parser.parse_args(argv)
    package = args.root / "oauth2_broker_mw"
    used: set[int] = set()
    errors: list[str] = []
    stale: list[str] = []
    labels: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        labels |= {p.label for p in pairs(package, path, path.read_text().split("\n"))}
        new = process(package, path, used, errors)
        if new is None or new == path.read_text():
            continue
        if args.check:
            stale.append(str(path.relative_to(args.root)))
        else:
            path.write_text(new)
            print(f"generated the sync twins in {path.relative_to(args.root)}")
    errors += [f"stale generated sync code in {name}: run scripts/unasync.py" for name in stale]
    errors += [
        f"rule {rule[0]!r} is never used: remove it"
        for i, rule in enumerate(RULES)
        if i not in used
    ]
    errors += [
        f"HAND_WRITTEN names {name}, which is no pair: remove it"
        for name in HAND_WRITTEN
        if name not in labels
    ]
    for error in errors:
        print(f"unasync: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
