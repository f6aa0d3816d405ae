"""The package's structure, as docs/ARCHITECTURE.md states it: one-way imports, small modules.

An AST walk over ``esdc/`` (module-level imports and imports inside functions) builds the
graph of esdc's own imports and checks the rules the architecture keeps:

- the graph has no cycle;
- each module imports only modules of its own or a lower layer, in the order written in
  docs/ARCHITECTURE.md's ``layers`` block (parsed here, so the document and this test agree);
- an esdc import inside a function only defers a heavy optional third-party library: the
  imported esdc module imports one of :data:`HEAVY` at module level;
- no module imports another module's private (``_name``) names;
- local-vs-object storage is decided in ``esdc/storage/`` only (no ``is_url`` elsewhere);
- no module is over 700 lines.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "esdc"
MAX_LINES = 700
# Third-party libraries heavy enough (import time, size) or optional enough (an extra) that
# an esdc module importing them at module level may itself be imported inside a function.
HEAVY = frozenset({"torch", "tensorflow", "keras", "faiss", "mlflow", "sunpy", "astropy",
                   "reproject", "fastapi", "uvicorn", "starlette", "matplotlib", "sklearn",
                   "skops", "s3fs", "xbatcher", "playwright", "pystac", "icechunk"})


@dataclass(frozen=True)
class Import:
    source: str        # importing module
    target: str        # imported esdc module
    names: tuple[str, ...]  # names taken from it ("from X import a, b")
    line: int
    in_function: bool
    via_package: bool = False  # the package __init__ run by "from PKG import module"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The esdc module ``name`` refers to (a module, or a name inside one)."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes that sit inside a function (at any depth)."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(fn)
                          if isinstance(n, (ast.Import, ast.ImportFrom)))
    return inside


@cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for mod, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        inside = _function_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pairs = [(a.name, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                pairs = []
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in modules():
                        # "from esdc.storage import journal" imports the module and, first,
                        # runs its package's __init__: both are edges (the top package
                        # esdc runs before any of its modules and is left out)
                        pairs.append((sub, ()))
                        if node.module != "esdc":
                            pairs.append((node.module, ("<package>",)))
                    else:
                        pairs.append((node.module, (a.name,)))
            else:
                continue
            for name, names in pairs:
                if name != "esdc" and not name.startswith("esdc."):
                    continue
                target = _owner(name)
                if target and target != mod:
                    via = names == ("<package>",)
                    found.append(Import(mod, target, () if via else names, node.lineno,
                                        id(node) in inside, via))
    return tuple(found)


@cache
def third_party_at_module_level(mod: str) -> frozenset[str]:
    tree = ast.parse(modules()[mod].read_text())
    inside = _function_nodes(tree)
    tops: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return frozenset(tops)


@cache
def layers() -> dict[str, int]:
    """Module pattern -> layer index, from docs/ARCHITECTURE.md's ```layers block."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md must hold the layer order in a ```layers block"
    out: dict[str, int] = {}
    for i, line in enumerate(ln for ln in block.group(1).splitlines() if ln.strip()):
        for pattern in line.split("#")[0].split():
            out[pattern] = i
    return out


def layer_of(mod: str) -> int:
    table = layers()
    best = None
    for pattern, i in table.items():
        prefix = pattern.removesuffix(".*")
        if mod == prefix or (pattern.endswith(".*") and mod.startswith(prefix + ".")):
            if best is None or len(pattern) > len(best[0]):
                best = (pattern, i)
    if best is None:
        raise AssertionError(f"{mod} is in no layer of docs/ARCHITECTURE.md: add it there")
    return best[1]


def test_every_module_has_a_layer() -> None:
    missing = []
    for mod in modules():
        try:
            layer_of(mod)
        except AssertionError:
            missing.append(mod)
    assert not missing, f"modules in no layer of docs/ARCHITECTURE.md: {missing}"


def test_imports_point_down_the_layers() -> None:
    wrong = [f"{i.source} (layer {layer_of(i.source)}) imports {i.target} "
             f"(layer {layer_of(i.target)}) at line {i.line}"
             for i in imports() if layer_of(i.target) > layer_of(i.source)]
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    edges = {(i.source, i.target) for i in imports() if i.target != "esdc"}
    assert _cycles(edges) == []


def test_from_package_import_module_counts_the_package() -> None:
    """``from esdc.storage import journal`` runs esdc/storage/__init__.py: an edge to it."""
    found = {(i.source, i.target) for i in imports()}
    assert ("esdc.reference", "esdc.ml.config") in found
    assert ("esdc.reference", "esdc.ml") in found


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []


def test_function_level_imports_only_defer_heavy_libraries() -> None:
    wrong = []
    for i in imports():
        if i.in_function and not i.via_package and not (
                third_party_at_module_level(i.target) & HEAVY):
            wrong.append(f"{modules()[i.source].relative_to(ROOT)}:{i.line} imports "
                         f"{i.target} inside a function (it imports no heavy library: "
                         "import it at module level)")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_across_modules() -> None:
    wrong = [f"{i.source}:{i.line} imports {n} from {i.target}"
             for i in imports() for n in i.names if n.startswith("_") and n != "__version__"]
    assert not wrong, "\n".join(wrong)


def test_storage_is_chosen_in_one_place() -> None:
    wrong = [f"{p.relative_to(ROOT)}:{n}" for mod, p in modules().items()
             if not mod.startswith("esdc.storage")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bis_url\b", line)]
    assert not wrong, "is_url outside esdc/storage/: " + ", ".join(wrong)


def test_no_relative_imports() -> None:
    wrong = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in modules().values()
             for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.ImportFrom) and n.level]
    assert not wrong, "relative imports (esdc uses absolute ones): " + ", ".join(wrong)


@pytest.mark.parametrize("mod", sorted(modules()))
def test_module_size(mod: str) -> None:
    n = len(modules()[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{modules()[mod].relative_to(ROOT)} has {n} lines (max {MAX_LINES})"


def test_the_walk_sees_function_level_imports() -> None:
    """The AST walk tells module-level from function-level imports."""
    tree = ast.parse("import os\n\ndef f():\n    import esdc.grid\n    return 1\n")
    inside = _function_nodes(tree)
    kinds = [id(n) in inside for n in ast.walk(tree) if isinstance(n, (ast.Import,))]
    assert sorted(kinds) == [False, True]
