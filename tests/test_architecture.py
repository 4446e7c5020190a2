"""Static checks of the layering, read from the source with `ast` (the project is not imported).

The layers of ../shared/DESIGN.md §2 import one way, top to bottom: iamt -> robustness -> cluster.
Nothing imports upward, no two files import each other in a circle, and the dashboards read runs
through iamt's torch-free run-directory module and start without torch or Ray. Beside the layers
the checks hold the rules that keep them honest: run-file names spelled only in iamt/rundir.py,
the vocabulary defined once in iamt/vocabulary.py, and functions short enough to read.

Every import counts wherever it stands (module level, inside functions, under TYPE_CHECKING);
string annotations are not imports. `from pkg import name` counts as importing pkg/name.py where
that file exists, and as importing pkg otherwise.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("iamt", "robustness", "cluster", "dashboards")
LITERAL_PACKAGES = (*PACKAGES, "benchmarks")
MAX_FUNCTION_LINES = 60
VOCABULARY = "iamt/vocabulary.py"
VOCABULARY_NAMES = ("NORMAL", "IDENTITY", "NO_PERTURBATION")
VOCABULARY_CLASSES = ("Family", "StrengthAxis", "Engine")
RUNDIR = "iamt/rundir.py"
# iamt.rundir's constants: file names checked as substrings, and common words checked only as
# whole strings. TUNE_RECORDS ("search") is a common word too: it is flagged only as a path
# component (an operand of `/`), see `_path_components`.
SUBSTRING_NAMES = (
    *("CONFIG", "MANIFEST", "IMPORTANCE", "CLEAN", "MASK_SAMPLES", "RESULTS", "SUMMARY"),
    *("DRIFT", "FAILURES", "TIMINGS", "REPORT", "SEARCH_TABLE", "SEARCH_REPORT"),
)
EXACT_NAMES = ("PARTS", "QUARANTINE", "PLOTS", "CHECKPOINTS", "MASKS", "TRAIN_STORAGE")
PATH_COMPONENT_NAMES = ("TUNE_RECORDS",)
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Module:
    """One source file: its dotted name, its path relative to the repository root, its tree."""

    name: str
    path: str
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.endswith("__init__.py")

    @property
    def package(self) -> str:
        """The package that relative imports of this file start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules(packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    """Every .py file of `packages`, by dotted module name."""
    modules = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            relative = path.relative_to(ROOT).as_posix()
            modules[_module_name(path)] = Module(_module_name(path), relative, tree)
    return modules


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class Import:
    """One imported module, by absolute dotted name, and where the import stands."""

    target: str
    line: int

    @property
    def top(self) -> str:
        return self.target.partition(".")[0]


def _from_base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: Module, known: Collection[str]) -> list[Import]:
    """Every module `module` imports, anywhere in the file (functions, TYPE_CHECKING too);
    `from pkg import name` is an import of pkg.name where that is one of the `known` modules."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(submodule if submodule in known else base, node.lineno))
    return found


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports target` for each import of a `forbidden` package from `layer`."""
    modules = _modules()
    hits = {
        (module.path, imported.line, imported.target)
        for module in modules.values()
        if module.name.partition(".")[0] == layer
        for imported in _imports(module, modules)
        if imported.top in forbidden
    }
    return [f"{path}:{line} imports {target}" for path, line, target in sorted(hits)]


def test_iamt_imports_nothing_above_it() -> None:
    """iamt/ is the bottom layer: it imports neither robustness, cluster nor dashboards."""
    violations = _violations("iamt", ("robustness", "cluster", "dashboards"))
    assert not violations, "iamt imports from above it:\n" + "\n".join(violations)


def test_robustness_imports_only_iamt() -> None:
    """robustness/ imports iamt only: never cluster nor dashboards."""
    violations = _violations("robustness", ("cluster", "dashboards"))
    assert not violations, "robustness imports from above it:\n" + "\n".join(violations)


def test_dashboards_import_neither_robustness_nor_cluster() -> None:
    """dashboards/ reads runs through iamt only: it imports neither robustness nor cluster."""
    violations = _violations("dashboards", ("robustness", "cluster"))
    assert not violations, "dashboards import the evaluation layers:\n" + "\n".join(violations)


SAMPLE = """
import a.b.c
import x as y
from a import b, helper
from . import sibling
from .. import up
from .sibling import thing
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from a.typed import T
def lazy() -> "a.annotated.Only":
    from a.b import c
"""


def test_the_import_reader_sees_every_form() -> None:
    """The reader resolves the import forms the layer checks rely on (and no string)."""
    module = Module("a.pkg.mod", "a/pkg/mod.py", ast.parse(SAMPLE))
    known = {"a", "a.b", "a.b.c", "a.pkg", "a.pkg.mod", "a.pkg.sibling", "a.typed"}
    found = sorted((i.line, i.target) for i in _imports(module, known))
    assert found == [
        (2, "a.b.c"),
        (3, "x"),
        (4, "a"),  # helper: a name defined in a/__init__.py
        (4, "a.b"),  # b: the submodule file a/b.py
        (5, "a.pkg.sibling"),
        (6, "a"),  # `from .. import up`: up is no module, so a's __init__
        (7, "a.pkg.sibling"),
        (8, "typing"),
        (10, "a.typed"),
        (12, "a.b.c"),
    ]


# --------------------------------------------------------------------------- cycles


def _file_of(target: str, modules: dict[str, Module]) -> str | None:
    """The project file an import of `target` runs: the module itself or its nearest known
    enclosing package (`import a.b.X` of an unknown X); None outside the project."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return modules[target].path if target else None


def _import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """file -> the project files it imports (exact targets only, no parent inits, no self)."""
    graph: dict[str, set[str]] = {}
    for module in modules.values():
        targets = {_file_of(imported.target, modules) for imported in _imports(module, modules)}
        graph[module.path] = {t for t in targets if t is not None and t != module.path}
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of `graph`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first file, as the files in import order."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for successor in sorted(graph[node] & members):
            if successor == start:
                return [*paths[node], start]
            if successor not in paths:
                paths[successor] = [*paths[node], successor]
                frontier.append(successor)
    return component


def test_the_cycle_finder_sees_only_real_cycles() -> None:
    """The cycle finder flags an import back through an init, not the timm pattern."""
    sources = {
        "pkg": "from pkg.base import Base\nfrom pkg import one, two",
        "pkg.base": "import torch\nclass Base: ...",
        "pkg.one": "from pkg.base import Base\nfrom pkg import base",
        "pkg.two": "from pkg import Base",
    }
    modules = {
        name: Module(
            name,
            name.replace(".", "/") + ("/__init__.py" if name == "pkg" else ".py"),
            ast.parse(text),
        )
        for name, text in sources.items()
    }
    cycles = [c for c in _strongly_connected(_import_graph(modules)) if len(c) > 1]
    assert cycles == [["pkg/__init__.py", "pkg/two.py"]]


def test_no_import_cycle_between_files() -> None:
    """No files of iamt, robustness, cluster and dashboards import each other in a circle."""
    graph = _import_graph(_modules())
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    report = [f"{', '.join(c)}\n    e.g. {' -> '.join(_a_cycle(graph, c))}" for c in sorted(cycles)]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(report)


# --------------------------------------------------------------------------- torch-free dashboards


def test_dashboards_start_without_torch() -> None:
    """The dashboard's modules import without pulling in torch or Ray."""
    code = (
        "import sys, dashboards.report, dashboards.rundata, dashboards.charts; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch','ray'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]


# --------------------------------------------------------------------------- run-file names


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring nodes of the module, its classes and its functions."""
    owners = [tree, *(n for n in ast.walk(tree) if isinstance(n, DEFINITIONS))]
    return {
        id(owner.body[0].value)
        for owner in owners
        if owner.body
        and isinstance(owner.body[0], ast.Expr)
        and isinstance(owner.body[0].value, ast.Constant)
        and isinstance(owner.body[0].value.value, str)
    }


def _strings(tree: ast.Module) -> Iterator[ast.Constant]:
    """Every str constant of the file (f-string parts included), docstrings excluded."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node


def _path_components(tree: ast.Module) -> Iterator[ast.Constant]:
    """The str constants that are an operand of `/` (a path component such as `run / "x"`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    yield side


def _run_file_names() -> tuple[set[str], set[str], set[str]]:
    """iamt.rundir's names: (checked as substrings, as whole strings, as path components)."""
    import iamt.rundir as rundir  # torch-free

    def values(names: tuple[str, ...]) -> set[str]:
        return {getattr(rundir, name) for name in names}

    return values(SUBSTRING_NAMES), values(EXACT_NAMES), values(PATH_COMPONENT_NAMES)


def _spelled_run_files(module: Module) -> list[str]:
    """`file:line:literal` for each string of `module` that spells a run file's name."""
    substrings, exact, components = _run_file_names()
    hits = {
        (node.lineno, node.value)
        for node in _strings(module.tree)
        if node.value in exact or any(name in node.value for name in substrings)
    }
    hits |= {(n.lineno, n.value) for n in _path_components(module.tree) if n.value in components}
    return [f"{module.path}:{line}:{value!r}" for line, value in sorted(hits)]


def test_run_file_names_live_in_rundir() -> None:
    """No file but iamt/rundir.py spells a run-directory file name."""
    modules = _modules(LITERAL_PACKAGES).values()
    hits = [hit for m in modules if m.path != RUNDIR for hit in _spelled_run_files(m)]
    assert not hits, f"{len(hits)} run-file name(s) outside {RUNDIR}:\n" + "\n".join(hits)


# --------------------------------------------------------------------------- size and vocabulary


def test_functions_stay_short() -> None:
    """Every function and method is at most 60 lines long (from its `def`, decorators aside)."""
    long = [
        f"{module.path}:{node.name}:{length}"
        for module in _modules().values()
        for node in ast.walk(module.tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, f"{len(long)} function(s) over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _module_level(statements: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The module's own statements, also inside module-level if/try/with blocks."""
    for statement in statements:
        yield statement
        if isinstance(statement, (ast.If, ast.Try, ast.With)):
            yield from _module_level(statement.body)
            yield from _module_level(getattr(statement, "orelse", []))
            yield from _module_level(getattr(statement, "finalbody", []))
            for handler in getattr(statement, "handlers", []):
                yield from _module_level(handler.body)


def _assigned_names(statement: ast.stmt) -> set[str]:
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        targets = [statement.target]
    else:
        return set()
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def test_one_definition_of_the_vocabulary() -> None:
    """The vocabulary (NORMAL, IDENTITY, NO_PERTURBATION, Family, ...) is defined only once."""
    elsewhere = [module for module in _modules().values() if module.path != VOCABULARY]
    names = [
        f"{m.path}:{s.lineno}:{name}"
        for m in elsewhere
        for s in _module_level(m.tree.body)
        for name in sorted(_assigned_names(s) & set(VOCABULARY_NAMES))
    ]
    classes = [
        f"{m.path}:{node.lineno}:class {node.name}"
        for m in elsewhere
        for node in ast.walk(m.tree)
        if isinstance(node, ast.ClassDef) and node.name in VOCABULARY_CLASSES
    ]
    redefined = names + classes
    assert not redefined, f"vocabulary defined outside {VOCABULARY}:\n" + "\n".join(redefined)
