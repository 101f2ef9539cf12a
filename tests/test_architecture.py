"""The house rules that no linter checks on its own: no import cycle anywhere, declared
dependencies that are exactly the imported ones, and an architecture page that names every
module of the runtime and the pipeline."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
OWN = {"actors", "memesys", "tests", "bench"}
# pytest plugins and command-line tools the suite and CI run but never import
TOOLS = {
    "pytest-asyncio",
    "pytest-timeout",
    "pytest-aiohttp",
    "import-linter",
    "ruff",
    "mypy",
    "types-psutil",
    "schemathesis",  # its CLI, run by tests/test_schemathesis.py
}


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycles_finds_a_cycle() -> None:
    """The check itself can fail: a graph with a two-module cycle is reported."""
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert cycles(graph) == [["a.x", "a.y"]]


def test_no_import_cycle_in_actors_or_memesys() -> None:
    """grimp counts lazy imports inside functions and TYPE_CHECKING imports too."""
    graph = grimp.build_graph("actors", "memesys", cache_dir=None)
    assert cycles(graph) == []


def imported_distributions(*paths: str) -> set[str]:
    """The distributions (normalised names) whose packages the files under ``paths`` import."""
    by_package = importlib.metadata.packages_distributions()
    found: set[str] = set()
    for path in paths:
        files = [ROOT / path] if path.endswith(".py") else (ROOT / path).rglob("*.py")
        for file in files:
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in OWN or top in sys.stdlib_module_names:
                        continue
                    found.update(normalised(d) for d in providers(name, by_package[top]))
    return found


def providers(module: str, candidates: list[str]) -> list[str]:
    """The distributions that provide ``module``: of a namespace package several
    distributions share (``opentelemetry``), the one whose files hold the deepest package on
    the module's path."""
    if len(candidates) == 1:
        return candidates
    parts, best, depth = module.split("."), [], 0
    for dist in candidates:
        for file in importlib.metadata.distribution(dist).files or ():
            held = file.parts[:-1] if file.suffix == ".py" else ()
            n = len(held)
            if n > depth and tuple(parts[:n]) == held:
                best, depth = [dist], n
            elif n == depth and n and tuple(parts[:n]) == held and dist not in best:
                best.append(dist)
    return best or candidates


def normalised(requirement: str) -> str:
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {normalised(r) for r in project["dependencies"]}
    test = {normalised(r) for r in project["optional-dependencies"]["test"]}
    return runtime, test


def test_runtime_dependencies_are_exactly_the_imported_ones() -> None:
    runtime, _ = declared()
    assert imported_distributions("actors", "memesys", "run_system.py") == runtime


def test_test_extra_is_what_the_suite_and_benchmarks_import_beyond_the_runtime() -> None:
    runtime, test = declared()
    needed = imported_distributions("tests", "bench", ".ci/wheel_smoke.py") - runtime
    assert needed == test - {normalised(t) for t in TOOLS}


def modules_of(package: str) -> list[str]:
    folder = ROOT / package.replace(".", "/")
    return sorted(
        f"{package}.{p.stem}" if p.stem != "__init__" else package for p in folder.glob("*.py")
    )


def test_architecture_page_lists_every_module_of_the_runtime_and_the_pipeline() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:actors|memesys\.pipeline)[\w.]*)`", page))
    missing = [m for m in modules_of("actors") + modules_of("memesys.pipeline") if m not in named]
    assert missing == []
