"""No import cycles in fastgw/ (house rule): every module's imports, read from the source, form a graph
without a cycle.

What counts as an import of module M:
- .py: every `import X` and `from X import name` anywhere in M, inside functions too (a lazy import is
  still a dependency; a cycle is a cycle), except under `if TYPE_CHECKING:` (never executed: that is how
  a module names another's types without importing it). `from X import name` imports X.name when that is
  a module. A module name written as a string in M (e.g. the policy registry's runtime modules, imported
  with importlib) counts too.
- .pyx/.pxd (and the .pxi files a .pyx includes): `cimport`, `import` and `from X cimport/import` lines.
- Importing a.b.c runs the package modules a and a.b first, so an edge to a.b.c is also an edge to each
  package above it that M is not itself inside.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "fastgw"

# Cycles allowed, each with its reason. Keep it empty.
ALLOWED: dict[tuple[str, ...], str] = {}

_CY_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\b|c?import\s+([\w.]+))", re.M)
_CY_INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"', re.M)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, list[Path]]:
    """Module name -> its source files (a .pyx with its .pxd and the files either includes)."""
    mods: dict[str, list[Path]] = {}
    for path in sorted(PKG.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxd") and "build" not in path.parts:
            mods.setdefault(module_name(path), []).append(path)
    for paths in mods.values():
        for p in [p for p in paths if p.suffix in (".pyx", ".pxd")]:
            for inc in _CY_INCLUDE.findall(p.read_text()):
                paths.append(p.parent / inc)
    return mods


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _py_imports(path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for child in node.body for n in ast.walk(child)}
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and node.value in known:
            out.add(node.value)
    return out


def _cy_imports(path: Path) -> set[str]:
    return {a or b for a, b in _CY_IMPORT.findall(path.read_text())}


def graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    edges: dict[str, set[str]] = {}
    for name, paths in mods.items():
        targets: set[str] = set()
        for p in paths:
            targets |= _py_imports(p, known) if p.suffix == ".py" else _cy_imports(p)
        out = set()
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                # A package above `name` itself is already being imported when `name` runs.
                if dep in known and dep != name and not name.startswith(dep + "."):
                    out.add(dep)
        edges[name] = out
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Each cycle once (Tarjan's strongly connected components; within one, a shortest cycle through
    its smallest module), as a tuple of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:
        start = min(comp)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & comp):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found] if found is not None else []
        while path and path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append(tuple(reversed(path)))
    return cycles


def test_the_graph_sees_every_kind_of_import() -> None:
    """The reader finds lazy imports, cimports, includes and registry strings (else the test proves nothing)."""
    edges = graph()
    assert "fastgw._core.buckets" in edges["fastgw._core.gates"]                   # cimport in a .pyx
    assert "fastgw._core.wire" in edges["fastgw._core.http1"]                       # cimport in a .pxd
    assert "fastgw.process.supervisor" in edges["fastgw.cli"]                      # import inside a function
    assert "fastgw.policies.auth.policy" in edges["fastgw.policies"]               # a module named by a string
    assert "fastgw.config" in edges["fastgw.policies.auth.config"]                 # the package above an import
    assert "fastgw.config.root" not in edges["fastgw.policies.auth.policy"]        # TYPE_CHECKING only
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_import_cycles() -> None:
    cycles = [c for c in find_cycles(graph()) if c not in ALLOWED]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join((*c, c[0])) for c in cycles)
