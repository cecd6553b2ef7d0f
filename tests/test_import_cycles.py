"""No import cycles in sbc (docs/architecture.md, "No import cycles").

A static check over the source, so it sees every import statement: at module
level, inside functions (lazy imports), and under ``if TYPE_CHECKING:``
(annotations only: not a failure at run time, but still a sign that a piece
lives in the wrong module). ``from pkg import name`` counts as an import of
``pkg.name`` when that is a module, else of ``pkg``; the parent packages a
module import runs implicitly (``sbc/b2bua/__init__.py`` for
``sbc.b2bua.call``) are not counted as edges.
"""

from __future__ import annotations

import ast
import os
import tempfile
from collections.abc import Iterator, Mapping

import attrs
from twisted.trial.unittest import SynchronousTestCase

import sbc

#: Cycles known and left for later work, each with why. A cycle found must be
#: one of these or part of one; a new cycle, or one that grew, fails.
KNOWN_CYCLES: Mapping[frozenset[str], str] = {}

#: Annotation-only edges that may close a cycle, each with why. They must stay
#: under ``if TYPE_CHECKING:`` (a run-time import there fails the test).
TYPE_ONLY_EDGES: Mapping[tuple[str, str], str] = {
    ("sbc.sip.errors", "sbc.sip.message"): (
        "ParseError.request is the Request an error answers; the message module "
        "raises ParseError, so it imports the errors module at run time"
    ),
}


@attrs.frozen
class Edge:
    """``source`` imports ``target``; ``type_only`` when only under TYPE_CHECKING."""

    source: str
    target: str
    type_only: bool


def modules_of(package_dir: str, package: str) -> dict[str, str]:
    """Module name -> file, for every .py file under ``package_dir``."""
    found: dict[str, str] = {}
    root = os.path.dirname(package_dir)
    for folder, _dirs, files in os.walk(package_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    assert package in found, package
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement under ``tree``, with whether it is under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), type_only)
        else:
            yield from _imports(node, type_only)


def import_edges(modules: Mapping[str, str]) -> list[Edge]:
    """The edges between ``modules``, from their source."""
    edges: dict[tuple[str, str], bool] = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        is_package = path.endswith("__init__.py")
        for node, type_only in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                assert isinstance(node, ast.ImportFrom)
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    key = (name, target)
                    edges[key] = edges.get(key, True) and type_only
    return [Edge(s, t, type_only) for (s, t), type_only in sorted(edges.items())]


def cycles(edges: list[Edge], ignore: frozenset[tuple[str, str]] = frozenset()) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for edge in edges:
        graph.setdefault(edge.target, [])
        if (edge.source, edge.target) not in ignore:
            graph.setdefault(edge.source, []).append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ImportCycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        package_dir = os.path.dirname(sbc.__file__)
        self.edges = import_edges(modules_of(package_dir, "sbc"))

    def test_no_cycles_but_the_known_ones(self) -> None:
        found = cycles(self.edges, frozenset(TYPE_ONLY_EDGES))
        unexpected = [
            sorted(component)
            for component in found
            if not any(component <= known for known in KNOWN_CYCLES)
        ]
        self.assertEqual(unexpected, [])

    def test_type_only_edges_stay_type_only(self) -> None:
        by_pair = {(e.source, e.target): e for e in self.edges}
        for pair in TYPE_ONLY_EDGES:
            self.assertIn(pair, by_pair)
            self.assertTrue(by_pair[pair].type_only, pair)

    def test_modules_once_in_cycles_are_acyclic(self) -> None:
        """The cycles untangled by issue 11 (even annotation-only ones) stay gone."""
        untangled = {
            "sbc.errors",
            "sbc.interfaces",
            "sbc.routing",
            "sbc.routing.tree",
            "sbc.routing.policies",
            "sbc.routing.router",
            "sbc.registrar.bindings",
            "sbc.b2bua.call",
            "sbc.b2bua.manager",
            "sbc.b2bua.calllog",
            "sbc.transport.pool",
            "sbc.transport.stream",
        }
        in_cycles = set().union(*cycles(self.edges))
        self.assertEqual(sorted(untangled & in_cycles), [])

    def test_the_check_finds_a_cycle(self) -> None:
        """A package with a run-time and an annotation-only cycle: both are found."""
        with tempfile.TemporaryDirectory() as root:
            package = os.path.join(root, "pkg")
            os.mkdir(package)
            sources = {
                "__init__.py": "",
                "a.py": "from pkg import b\n",
                "b.py": "def later():\n    from pkg.c import thing\n",
                "c.py": "import pkg.a\nthing = 1\n",
                "d.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.e import E\n"
                ),
                "e.py": "from pkg.d import *\nclass E: ...\n",
                "f.py": "import pkg\n",
            }
            for name, text in sources.items():
                with open(os.path.join(package, name), "w", encoding="utf-8") as handle:
                    handle.write(text)
            edges = import_edges(modules_of(package, "pkg"))
            found = sorted(sorted(c) for c in cycles(edges))
            self.assertEqual(found, [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.e"]])
            self.assertIn(Edge("pkg.d", "pkg.e", True), edges)
            self.assertIn(Edge("pkg.b", "pkg.c", False), edges)
            without_type_only = cycles(edges, frozenset({("pkg.d", "pkg.e")}))
            self.assertEqual(without_type_only, [{"pkg.a", "pkg.b", "pkg.c"}])
