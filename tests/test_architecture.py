"""The import structure of ``src/vitprobe``: no import cycles, no private names across packages.

Every module is parsed with :mod:`ast` (nothing is imported), and each import it can
execute becomes an edge of a graph between vitprobe's modules:

* ``import a.b.c`` and ``from a.b import c`` (absolute or relative), at module level
  and inside functions alike: a function-level import runs the first time the
  function does, and a cycle through it is a cycle all the same;
* ``importlib.import_module("vitprobe.x")`` with a constant argument, and any other
  string constant that is exactly a dotted vitprobe module name (tables of modules
  that are imported by name, such as ``cli.COMMAND_MODULES``);
* lazy attributes: a package that declares ``__getattr__ = lazy_exports(__name__,
  _EXPORTS)`` imports ``_EXPORTS[name]`` when its attribute ``name`` is first read, so
  ``from package import name`` (or ``package.name`` after ``import package``) is an
  edge to that module. The table itself is not an edge of the package: only the
  names someone reads are imported.

Decisions (each a rule below, not an accident of the parser):

* Imports under ``if TYPE_CHECKING:`` never run, so they create no runtime cycle and
  are left out of the cycle checks; they still count for the private-name rule (a
  type annotation that names another package's private helper couples to it too).
* Importing ``a.b.c`` also initialises the packages ``a`` and ``a.b``; those implicit
  parent imports are not edges. A parent package is entered before its children, so
  a child that imports something its parent's ``__init__`` also imports is ordinary
  package structure, not a cycle (``vitprobe.record.__init__`` imports
  ``vitprobe.record.recorder``, which imports ``vitprobe.record.sites``).
* Cycles are checked twice: between modules, and between the top-level units
  (``vitprobe.stats``, ``vitprobe.study``, ... and each module at the root such as
  ``vitprobe.cache``), because two packages that import each other through
  different modules (``report.builder`` -> ``study.manifest`` while
  ``study.runner`` -> ``report``) do not read as a data flow even when no single
  module cycle exists.
* A leading underscore makes a module or name private to the top-level unit that
  holds it: ``vitprobe.stats._common`` and ``vitprobe.models.imgfocus._helper``
  belong to ``vitprobe.stats`` / ``vitprobe.models``; ``_x`` defined in the root
  module ``vitprobe.cache`` belongs to ``vitprobe.cache``. The root's private
  modules ``vitprobe._jit`` and ``vitprobe._lazy`` belong to ``vitprobe`` itself:
  infrastructure shared by all of vitprobe's packages (compiled kernels, lazy
  attributes), not API for users. Dunder names (``__version__``) are public.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "vitprobe"


@dataclass(frozen=True)
class Edge:
    """One import of ``target`` (a vitprobe module) by ``source``."""

    source: str
    target: str
    line: int
    type_checking: bool
    #: the private components this import reaches, e.g. ``"vitprobe.stats._common"`` or
    #: ``"vitprobe.stats.moments._helper"`` (empty when the import is public)
    private: str = ""


@dataclass
class ImportGraph:
    """The modules of a source tree and the imports between them."""

    modules: dict[str, Path]
    edges: list[Edge] = field(default_factory=list)

    def adjacency(self, *, runtime: bool = True) -> dict[str, dict[str, Edge]]:
        """``source -> {target: first edge}``, without TYPE_CHECKING edges when ``runtime``."""
        out: dict[str, dict[str, Edge]] = {m: {} for m in self.modules}
        for e in self.edges:
            if runtime and e.type_checking:
                continue
            if e.source != e.target:
                out[e.source].setdefault(e.target, e)
        return out


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_unit(module: str) -> str:
    """``vitprobe.stats.joint`` -> ``vitprobe.stats``; ``vitprobe.cache`` -> itself."""
    return ".".join(module.split(".")[:2])


def private_owner(dotted: str) -> str | None:
    """The unit a dotted module (or module + name) path is private to, or None if public.

    The owner is the prefix before the first component with a leading underscore
    (dunders are public), cut to the top-level unit: ``vitprobe._jit`` -> ``vitprobe``,
    ``vitprobe.stats._common`` -> ``vitprobe.stats``, ``vitprobe.stats.joint._x`` ->
    ``vitprobe.stats``, ``vitprobe.cache._x`` -> ``vitprobe.cache``.
    """
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[: min(i, 2)])
    return None


def inside(module: str, unit: str) -> bool:
    return module == unit or module.startswith(unit + ".")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node`` with whether it sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child, type_checking
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_checking
                yield from _walk(stmt, type_checking)
            continue
        yield child, type_checking
        yield from _walk(child, type_checking)


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """The ``name -> module`` table a package hands to ``lazy_exports(__name__, TABLE)``."""
    tables: dict[str, dict[str, str]] = {}
    used: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    tables[target.id] = {
                        k.value: v.value
                        for k, v in zip(node.value.keys, node.value.values, strict=True)
                        if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                    }
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Call)
                and getattr(sub.func, "id", getattr(sub.func, "attr", None)) == "lazy_exports"
                and len(sub.args) == 2
                and isinstance(sub.args[1], ast.Name)
            ):
                used.add(sub.args[1].id)
    out: dict[str, str] = {}
    for name in used:
        out.update(tables.get(name, {}))
    return out


def build_graph(src: Path = SRC, root: str = ROOT) -> ImportGraph:
    """Parse every module below ``src/root`` and collect the imports between them."""
    modules = {module_name(p, src): p for p in sorted((src / root).rglob("*.py"))}
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in modules.items()}
    lazy = {m: lazy_exports(t) for m, t in trees.items()}
    lazy_tables = {
        id(node.value)
        for t in trees.values()
        for node in t.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
    }
    graph = ImportGraph(modules)

    def known(dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is a vitprobe module."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    for source, tree in trees.items():
        is_package = modules[source].name == "__init__.py"
        package = source if is_package else source.rpartition(".")[0]
        aliases: dict[str, str] = {}  # local name -> vitprobe module bound to it
        skip_strings = {
            id(v)
            for node in tree.body
            if isinstance(node, ast.Assign) and id(node.value) in lazy_tables and lazy[source]
            for v in node.value.values
        }

        def add(
            target: str, node: ast.AST, tc: bool, private_path: str, source: str = source
        ) -> None:
            owner = private_owner(private_path)
            crossing = owner is not None and not inside(source, owner)
            graph.edges.append(
                Edge(source, target, node.lineno, tc, private_path if crossing else "")
            )

        for node, tc in _walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = known(alias.name)
                    if target is not None:
                        add(target, node, tc, alias.name)
                        aliases[alias.asname or alias.name.split(".")[0]] = (
                            target if alias.asname else alias.name.split(".")[0]
                        )
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    parent = ".".join(base + ([node.module] if node.module else []))
                else:
                    parent = node.module or ""
                if known(parent) is None:
                    continue
                for alias in node.names:
                    sub = f"{parent}.{alias.name}"
                    if sub in modules:
                        add(sub, node, tc, sub)
                        aliases[alias.asname or alias.name] = sub
                        continue
                    add(known(parent), node, tc, sub)
                    lazy_target = lazy.get(parent, {}).get(alias.name)
                    if lazy_target in modules:
                        add(lazy_target, node, tc, f"{lazy_target}.{alias.name}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in modules
                and "." in node.value  # "vitprobe" alone is a word (cache paths), not an import
                and node.value != source
                and id(node) not in skip_strings
            ):
                # import_module("vitprobe.x") and tables of module names imported by name
                add(node.value, node, tc, node.value)
        # package.attr after `import package`: the lazy attribute's module is imported
        for node, tc in _walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                module = aliases.get(node.value.id)
                target = lazy.get(module, {}).get(node.attr) if module else None
                if target in modules:
                    add(target, node, tc, f"{target}.{node.attr}")
    return graph


def find_cycles(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with a cycle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        # iterative Tarjan: the graph is small, but recursion depth should not depend on it
        work = [(v, iter(sorted(adjacency.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(adjacency.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1 or node in adjacency.get(node, ()):
                        components.append(sorted(component))

    for v in sorted(adjacency):
        if v not in index:
            connect(v)

    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for component in components:
        members = set(component)
        # a shortest cycle through every member (breadth-first back to it, inside the
        # component), so that each distinct loop is reported, not one per component
        for start in component:
            cycle = _shortest_cycle(adjacency, members, start)
            key = _canonical_cycle(cycle)
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _shortest_cycle(adjacency: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for u in frontier:
            for w in sorted(adjacency.get(u, ())):
                if w == start:
                    path = [u]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parents and w != start:
                    parents[w] = u
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle")  # pragma: no cover - SCC members are


def _canonical_cycle(cycle: list[str]) -> tuple[str, ...]:
    """The cycle's nodes rotated to start at the smallest, so rotations compare equal."""
    ring = cycle[:-1]
    i = ring.index(min(ring))
    return tuple(ring[i:] + ring[:i])


def describe(cycle: list[str], adjacency: dict[str, dict[str, Edge]] | None = None) -> str:
    steps = []
    for a, b in itertools.pairwise(cycle):
        edge = adjacency.get(a, {}).get(b) if adjacency else None
        steps.append(f"{a}" + (f" (line {edge.line})" if edge else ""))
    return " -> ".join([*steps, cycle[-1]])


def unit_adjacency(graph: ImportGraph) -> dict[str, dict[str, Edge]]:
    out: dict[str, dict[str, Edge]] = {top_unit(m): {} for m in graph.modules}
    for e in graph.edges:
        if e.type_checking:
            continue
        a, b = top_unit(e.source), top_unit(e.target)
        if a != b:
            out[a].setdefault(b, e)
    return out


# ---------------------------------------------------------------------------------------
# the checker checks itself on small trees


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_finds_function_level_and_relative_cycles(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/x.py": "from . import y\n",  # relative, module level
        "a/y.py": "def f():\n    from pkg.b.z import g\n",  # function level
        "b/__init__.py": "",
        "b/z.py": "import pkg.a.x\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\n",
        "d.py": "import pkg.c\n",
    })
    graph = build_graph(src, "pkg")
    cycles = find_cycles({k: set(v) for k, v in graph.adjacency().items()})
    assert cycles == [["pkg.a.x", "pkg.a.y", "pkg.b.z", "pkg.a.x"]]
    # the TYPE_CHECKING import is kept, but only outside the runtime graph
    assert "pkg.d" in graph.adjacency(runtime=False)["pkg.c"]
    assert "pkg.d" not in graph.adjacency()["pkg.c"]
    units = find_cycles({k: set(v) for k, v in unit_adjacency(graph).items()})
    assert units == [["pkg.a", "pkg.b", "pkg.a"]]


def test_follows_lazy_exports_and_module_name_strings(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "_lazy.py": "",
        "m/__init__.py": (
            "from pkg._lazy import lazy_exports\n"
            "_EXPORTS = {'load': 'pkg.m.impl', 'other': 'pkg.m.other'}\n"
            "__getattr__ = lazy_exports(__name__, _EXPORTS)\n"
        ),
        "m/impl.py": "import importlib\ndef f():\n    importlib.import_module('pkg.n')\n",
        "m/other.py": "",
        "n.py": "from pkg.m import load\n",
        "q.py": "import pkg.m as mm\nmm.other\n",
    })
    adjacency = build_graph(src, "pkg").adjacency()
    assert set(adjacency["pkg.m"]) == {"pkg._lazy"}  # the table alone imports nothing
    assert set(adjacency["pkg.n"]) == {"pkg.m", "pkg.m.impl"}  # but reading `load` does
    assert set(adjacency["pkg.q"]) == {"pkg.m", "pkg.m.other"}
    assert find_cycles({k: set(v) for k, v in adjacency.items()}) == [
        ["pkg.m.impl", "pkg.n", "pkg.m.impl"]
    ]


def test_private_rule(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "_infra.py": "",
        "tool.py": "def _hidden(): ...\n",
        "s/__init__.py": "",
        "s/_common.py": "def helper(): ...\n",
        "s/deep/__init__.py": "",
        "s/deep/mod.py": "from pkg.s._common import helper\nfrom pkg.s.mod2 import _x\n",
        "s/mod2.py": "_x = 1\n",
        "t/__init__.py": "",
        "t/use.py": (
            "from pkg.s._common import helper\nfrom pkg.s.mod2 import _x, __doc__\n"
            "import pkg._infra\nfrom pkg.tool import _hidden\n"
        ),
    })
    private = sorted((e.source, e.private) for e in build_graph(src, "pkg").edges if e.private)
    assert private == [
        ("pkg.t.use", "pkg.s._common.helper"),
        ("pkg.t.use", "pkg.s.mod2._x"),
        ("pkg.t.use", "pkg.tool._hidden"),
    ]


# ---------------------------------------------------------------------------------------
# vitprobe itself


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph()


def test_the_parser_sees_vitprobe(graph: ImportGraph) -> None:
    # a parser that silently found nothing would pass every check below
    assert {"vitprobe.cli", "vitprobe.stats.joint", "vitprobe.models.registry"} <= set(
        graph.modules
    )
    adjacency = graph.adjacency()
    assert "vitprobe.record.accumulator" in adjacency["vitprobe.stats.joint"]  # module level
    assert "vitprobe.models.registry" in adjacency["vitprobe.models.command"]  # function level
    assert "vitprobe.study.command" in adjacency["vitprobe.cli"]  # by name
    assert len(graph.edges) > 200


def test_no_import_cycle_between_modules(graph: ImportGraph) -> None:
    adjacency = graph.adjacency()
    cycles = find_cycles({k: set(v) for k, v in adjacency.items()})
    assert not cycles, "import cycles between modules:\n" + "\n".join(
        describe(c, adjacency) for c in cycles
    )


def test_no_import_cycle_between_packages(graph: ImportGraph) -> None:
    adjacency = unit_adjacency(graph)
    cycles = find_cycles({k: set(v) for k, v in adjacency.items()})
    lines = []
    for cycle in cycles:
        hops = [adjacency[a][b] for a, b in itertools.pairwise(cycle)]
        lines.append(
            " -> ".join(cycle) + "\n    via " + "; ".join(
                f"{e.source}:{e.line} imports {e.target}" for e in hops
            )
        )
    assert not cycles, "import cycles between top-level packages:\n" + "\n".join(lines)


def test_no_private_name_imported_across_packages(graph: ImportGraph) -> None:
    bad = sorted({(e.source, e.line, e.private) for e in graph.edges if e.private})
    assert not bad, "private names imported from another package:\n" + "\n".join(
        f"{source}:{line} imports {name}" for source, line, name in bad
    )
