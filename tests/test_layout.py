"""The package's shape: no import cycles between its modules, and no module grows past a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import enigma_cli

ROOT = Path(enigma_cli.__file__).resolve().parent
MAX_LINES = 420


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the enigma_cli modules it imports anywhere (top level or inside functions)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node.level, node.module) if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("enigma_cli") and t != "enigma_cli":
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """A package __init__ that re-exports its own modules is not a cycle; anything else is."""
    graph = import_graph()
    for mod in graph:  # a package's __init__ importing its children, and children importing siblings through it
        graph[mod] = {t for t in graph[mod] if not (t.startswith(mod + ".") or mod.startswith(t + "."))}
    assert cycles(graph) == []


def test_cycle_detector_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


#: upward imports still to remove, if any; nothing may join this list
KNOWN_UPWARD: set[tuple[str, str]] = set()
#: the bottom layers, with everything each may import: the maths import nothing of the package, the model
#: readers only the console and the errors
FOUNDATIONS = {"core": {"core"}, "models": {"models", "console", "errors"}}


def _package(module: str) -> str:
    """The top-level component of an enigma_cli module: ``enigma_cli.train.run`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]], skip=frozenset()) -> dict[str, set[str]]:
    """package -> the packages its modules import (module pairs in ``skip`` left out)."""
    packages: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        edges = packages.setdefault(_package(mod), set())
        edges.update(_package(t) for t in targets if (mod, t) not in skip and _package(t) != _package(mod))
    for targets in list(packages.values()):
        for t in targets:
            packages.setdefault(t, set())
    return packages


def test_packages_import_only_downwards():
    """Between packages (core, models, train, trl, score, commands, ...) imports go one way: the package graph has
    no cycle, so every package sits in a layer below the ones that use it (trl above train, commands above both).
    A module-level cycle test alone would let train/ import trl/ while trl/ imports train/ through other modules."""
    graph = import_graph()
    assert KNOWN_UPWARD <= {(m, t) for m, ts in graph.items() for t in ts}, "a known upward import is gone: " \
        "remove it from KNOWN_UPWARD"
    assert cycles(package_graph(graph, skip=KNOWN_UPWARD)) == []
    packages = package_graph(graph)
    for base, allowed in FOUNDATIONS.items():
        assert packages[base] <= allowed, (base, packages[base] - allowed)


def test_the_package_check_finds_a_planted_upward_import():
    graph = {"enigma_cli.trl.trainer": {"enigma_cli.train.terms"}, "enigma_cli.train.terms": set(),
             "enigma_cli.train.run": {"enigma_cli.trl.trainer"}}
    assert cycles(package_graph(graph)) == [["train", "trl"]]


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_nothing_points_outside_the_repository():
    """The method and conventions live in docs/; no file may send a reader to a folder beside the checkout."""
    repo = ROOT.parent
    offenders = []
    for path in [*repo.glob("*.md"), *repo.glob("Makefile"), *repo.glob("pyproject.toml"),
                 *(repo / "docs").rglob("*.md"), *ROOT.rglob("*.py"), *(repo / "bench").rglob("*.py")]:
        if "../shared" in path.read_text(errors="replace"):
            offenders.append(str(path.relative_to(repo)))
    assert offenders == []
