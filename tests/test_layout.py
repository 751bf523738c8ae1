"""The package's import graph follows the layer order written in ``docs/design.md`` (its ``layers`` and
``data-layers`` blocks): no upward import, no import between independent layers, and no cycle, counting imports
made inside functions too (a lazy import may save start-up time, never hide a cycle)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("umt", "kernels", "benchmarks", "tools")


def _block(name: str) -> list[list[str]]:
    text = (ROOT / "docs" / "design.md").read_text()
    m = re.search(rf"```{name}\n(.*?)```", text, re.S)
    assert m, f"docs/design.md has no ```{name} block"
    return [line.split() for line in m.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(p)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module that ``import name`` (or ``from name import x``) loads last, or None if external."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: str) -> set[str]:
    """Project modules ``mod`` imports, at top level or inside functions (``TYPE_CHECKING`` blocks excluded)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.If) and "TYPE_CHECKING" in ast.unparse(ch.test):
                continue
            if isinstance(ch, ast.Import):
                out.update(filter(None, (_resolve(a.name) for a in ch.names)))
            elif isinstance(ch, ast.ImportFrom):
                base = ch.module or ""
                if ch.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - ch.level + 1]
                    base = ".".join(up + ([ch.module] if ch.module else []))
                for a in ch.names:  # ``from pkg import submodule`` imports the submodule
                    r = _resolve(f"{base}.{a.name}") if base else None
                    if r:
                        out.add(r)
            visit(ch)

    visit(tree)
    out.discard(mod)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def _rank(mod: str, layers: list[list[str]]) -> tuple[int, str] | None:
    best = None
    for i, names in enumerate(layers):
        for n in names:
            # ``umt`` names the root package only (its __init__ applies the compatibility shim); every other name
            # covers its submodules too
            if (mod == n or (n != "umt" and mod.startswith(n + "."))) and (best is None or len(n) > len(best[1])):
                best = (i, n)
    return best


def _violations(layers: list[list[str]], scope: str | None = None) -> list[str]:
    bad = []
    for mod, deps in GRAPH.items():
        if scope and not mod.startswith(scope + "."):
            continue
        a = _rank(mod, layers)
        if a is None:
            continue
        for dep in sorted(deps):
            b = _rank(dep, layers)
            if b is None or b[1] == a[1] or (scope and dep == scope):
                continue
            if b[0] > a[0] or (b[0] == a[0] and b[1] != a[1]):
                bad.append(f"{mod} ({a[1]}) imports {dep} ({b[1]})")
    return bad


def test_every_module_has_a_layer():
    layers = _block("layers")
    assert [m for m in MODULES if _rank(m, layers) is None] == []


def test_no_upward_or_sideways_import():
    assert _violations(_block("layers")) == []


def test_data_package_layers():
    """Inside ``umt.data``: the format at the bottom; the builder and the loaders never import each other."""
    assert _violations(_block("data-layers"), scope="umt.data") == []


def test_format_imports_nothing_of_umt():
    assert {d for d in GRAPH["umt.data.format"] if d.startswith("umt")} == set()


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in GRAPH:
        if v not in index:
            strong(v)
    assert cycles == [], cycles


@pytest.mark.parametrize("bad", [["a.x imports a"], []])
def test_checker_detects_upward_import(bad, monkeypatch):
    """The checker itself: an upward edge planted in the graph is reported."""
    layers = [["umt.data"], ["umt.train"]]
    graph = {"umt.data.loader": {"umt.train.trainer"}} if bad else {"umt.train.trainer": {"umt.data.loader"}}
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", graph)  # this module (tests.test_layout), not its package
    out = _violations(layers)
    assert bool(out) == bool(bad)


def test_writers_rename_only_through_fileio():
    """Every durable write of the package goes through :mod:`umt.fileio` (file fsync, rename, directory fsync): no
    other module renames a file into place itself."""
    bad = []
    for mod, path in MODULES.items():
        if not mod.startswith("umt.") or mod == "umt.fileio":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                target = ast.unparse(node.func.value)
                if (name in ("rename", "replace") and target == "os") or (
                        name in ("rename", "replace") and len(node.args) == 1 and not node.keywords
                        and target not in ("str", "s", "text", "name") and not target.endswith(("_str", "text"))):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert bad == []
