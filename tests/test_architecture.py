"""The package's structure, checked against docs/architecture.md and the real imports.

Every module under ``src/tl_grokking`` is parsed with ``ast`` (nothing is imported), and every
``import`` / ``from ... import`` is collected: at module level, inside functions and methods,
and under ``if TYPE_CHECKING:`` (those count for the layering, not for cycles, since they never
run). ``importlib.import_module("literal")`` counts as an import; the top-level lazy API's
``_EXPORTS`` strings count as imports of ``tl_grokking`` itself. An imported name that is a
submodule (``from tl_grokking.analysis import weights``) is an import of that submodule.

A module ``tl_grokking.X.Y`` belongs to subpackage ``X``. The top-level modules are not in a
subpackage: ``tl_grokking`` (the lazy API) and ``tl_grokking.__main__`` may import anything and
no module may import the lazy API; the private helpers (``tl_grokking._version``, ...) may be
imported by anyone and import nothing of the package but each other.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "tl_grokking"
DOC = REPO / "docs" / "architecture.md"

#: The layering, left to right: a subpackage may import only those to its left ...
LAYERS = ("data", "model", "runs", "training", "analysis", "sweeps", "figures", "cli")
#: ... except these (the analysis reads runs and checkpoints, never the trainer).
FORBIDDEN = {"analysis": {"training"}}
#: Top-level modules that may import anything (the lazy API and ``python -m tl_grokking``).
ENTRY_POINTS = {PACKAGE, f"{PACKAGE}.__main__"}
MAX_PUBLIC_NAMES = 40


# ---------------------------------------------------------------------------------------------
# Collecting the imports
# ---------------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULE_FILES: dict[str, Path] = {
    module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py")) if "__pycache__" not in p.parts
}
MODULES = set(MODULE_FILES)


def is_package(module: str) -> bool:
    return MODULE_FILES[module].name == "__init__.py"


def unit_of(module: str) -> str:
    """The subpackage of a module; ``"<entry>"`` or ``"<helpers>"`` for top-level modules."""
    parts = module.split(".")
    if module in ENTRY_POINTS:
        return "<entry>"
    if len(parts) == 2 and parts[1].startswith("_"):
        return "<helpers>"
    return parts[1]


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of the package
    line: int
    function_level: bool
    type_checking: bool

    @property
    def where(self) -> str:
        path = MODULE_FILES[self.importer].relative_to(REPO)
        kind = " (in a function)" if self.function_level else ""
        kind += " (TYPE_CHECKING)" if self.type_checking else ""
        return f"{path}:{self.line}: {self.importer} imports {self.target}{kind}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module = module
        self.package = module if is_package(module) else module.rsplit(".", 1)[0]
        self.found: list[Import] = []
        self.depth = 0  # function nesting
        self.type_checking = False

    def _add(self, target: str, node: ast.AST) -> None:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            while target not in MODULES:  # an attribute of a module: the module itself
                target = target.rsplit(".", 1)[0]
            self.found.append(
                Import(self.module, target, node.lineno, self.depth > 0, self.type_checking)
            )

    def visit_FunctionDef(self, node):  # noqa: N802
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815
    visit_Lambda = visit_FunctionDef  # noqa: N815

    def visit_If(self, node):  # noqa: N802
        if _is_type_checking(node.test):
            old, self.type_checking = self.type_checking, True
            for child in node.body:
                self.visit(child)
            self.type_checking = old
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node):  # noqa: N802
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):  # noqa: N802
        if node.level:
            base_parts = self.package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            self._add(candidate if candidate in MODULES else base, node)

    def visit_Call(self, node):  # noqa: N802
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if (
            name == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def _exports_imports() -> list[Import]:
    """The lazy API's ``_EXPORTS = {name: "module"}`` as imports of ``tl_grokking``."""
    tree = ast.parse(MODULE_FILES[PACKAGE].read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "_EXPORTS":
            for value in node.value.values:
                out.append(Import(PACKAGE, value.value, value.lineno, True, False))
    return out


def collect_imports() -> list[Import]:
    found: list[Import] = []
    for module, path in MODULE_FILES.items():
        collector = _Collector(module)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found += collector.found
    return found + _exports_imports()


IMPORTS = collect_imports()


def subpackage_edges(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """``(importer subpackage, imported subpackage) -> the imports``, between subpackages."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        a, b = unit_of(imp.importer), unit_of(imp.target)
        if a != b and a in LAYERS and b in LAYERS:
            edges[a, b].append(imp)
    return edges


# ---------------------------------------------------------------------------------------------
# The document's tables
# ---------------------------------------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/architecture.md has no '## {heading}' section"
    return match.group(1)


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        line = line.strip()
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def documented_dependencies() -> dict[str, set[str]]:
    """``## Dependencies`` table: first cell a subpackage, second the subpackages it imports."""
    rows = _table_rows(_section(DOC.read_text(encoding="utf-8"), "Dependencies"))
    table: dict[str, set[str]] = {}
    for row in rows:
        name = re.fullmatch(r"`(\w+)/?`", row[0])
        assert name, f"docs/architecture.md dependency table: bad first cell {row[0]!r}"
        table[name.group(1)] = set(re.findall(r"`(\w+)/?`", row[1]))
    return table


def documented_modules() -> set[str]:
    """Modules named in the ``## Map`` section as `subpackage/module.py` or `subpackage/`."""
    section = _section(DOC.read_text(encoding="utf-8"), "Map")
    names = set()
    for path in re.findall(r"`([\w/]+\.py)`", section):
        name = f"{PACKAGE}." + path[: -len(".py")].replace("/", ".")
        names.add(name.removesuffix(".__init__"))
    return names


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_every_import_was_found():
    """The collector sees the package's imports (a guard against a silently empty scan)."""
    assert len(MODULE_FILES) > 20
    assert {unit_of(m) for m in MODULES} >= set(LAYERS)
    assert any(i.function_level for i in IMPORTS)
    assert any(i.type_checking for i in IMPORTS)
    assert all(i.target in MODULES for i in IMPORTS)


def test_collector_resolves_every_import_form(tmp_path):
    """Relative imports, submodules imported by name, attributes, function-level imports."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from tl_grokking.analysis import weights\n"
        "from . import fourier\n"
        "from ..data.tasks import Task\n"
        "import tl_grokking.runs.rundir\n"
        "if TYPE_CHECKING:\n"
        "    from tl_grokking.figures.plots import loss_curves\n"
        "def f():\n"
        "    from tl_grokking.model import transformer\n"
        "    importlib.import_module('tl_grokking.training.trainer')\n"
    )
    collector = _Collector("tl_grokking.analysis.hooks")
    collector.visit(ast.parse(source))
    got = [(i.target, i.function_level, i.type_checking) for i in collector.found]
    assert got == [
        ("tl_grokking.analysis.weights", False, False),
        ("tl_grokking.analysis.fourier", False, False),
        ("tl_grokking.data.tasks", False, False),
        ("tl_grokking.runs.rundir", False, False),
        ("tl_grokking.figures.plots", False, True),
        ("tl_grokking.model.transformer", True, False),
        ("tl_grokking.training.trainer", True, False),
    ]


def test_dependency_table_matches_the_imports():
    """docs/architecture.md's dependency table is exactly what the code imports."""
    documented = documented_dependencies()
    assert set(documented) == set(LAYERS), (
        f"the table's rows {sorted(documented)} should be the subpackages {list(LAYERS)}"
    )
    edges = subpackage_edges(IMPORTS)
    actual: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for a, b in edges:
        actual[a].add(b)
    problems = []
    for layer in LAYERS:
        for extra in sorted(actual[layer] - documented[layer]):
            lines = "\n      ".join(i.where for i in edges[layer, extra])
            problems.append(
                f"{layer} imports {extra}, which the table does not list:\n      {lines}"
            )
        for stale in sorted(documented[layer] - actual[layer]):
            problems.append(f"the table says {layer} imports {stale}, but no module of it does")
    assert not problems, "docs/architecture.md is out of date:\n  " + "\n  ".join(problems)


def test_layering():
    """data <- model <- runs <- training <- analysis <- figures <- cli: each subpackage imports
    only those to its left, and analysis does not import training."""
    violations = []
    for (a, b), imports in sorted(subpackage_edges(IMPORTS).items()):
        allowed = set(LAYERS[: LAYERS.index(a)]) - FORBIDDEN.get(a, set())
        if b not in allowed:
            why = "forbidden" if b in FORBIDDEN.get(a, ()) else f"{b} is not to the left of {a}"
            lines = "\n      ".join(i.where for i in imports)
            violations.append(f"{a} -> {b} ({why}):\n      {lines}")
    assert not violations, "layering violations:\n  " + "\n  ".join(violations)


def test_the_document_states_the_layering():
    text = DOC.read_text(encoding="utf-8")
    assert " ← ".join(LAYERS) in text


def test_top_level_modules():
    """No module imports the lazy API; the private helpers import nothing of the package but
    each other."""
    problems = []
    for imp in IMPORTS:
        if imp.target == PACKAGE and imp.importer not in ENTRY_POINTS:
            problems.append(f"{imp.where}: use the defining module, not the lazy top-level API")
        if unit_of(imp.importer) == "<helpers>" and unit_of(imp.target) != "<helpers>":
            problems.append(f"{imp.where}: a top-level helper must not import the package")
    assert not problems, "\n".join(problems)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), each as
    one cycle through the component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has a few dozen nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # one concrete cycle: breadth-first back to the start
        start, members = component[0], set(component)
        paths, seen, cycle = [[start]], {start}, None
        while paths and cycle is None:
            path = paths.pop(0)
            for w in sorted(edges.get(path[-1], ())):
                if w == start:
                    cycle = path + [start]
                    break
                if w in members and w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
        cycles.append(cycle or component)
    return cycles


def test_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"a"}}) == [["a", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No cycle among the package's modules, counting imports inside functions (which only
    hide a cycle until the function runs) but not TYPE_CHECKING imports (which never run)."""
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in IMPORTS:
        if imp.type_checking or imp.importer == imp.target:
            continue
        edges[imp.importer].add(imp.target)
        where[imp.importer, imp.target].append(imp)
    cycles = _cycles(edges)
    report = []
    for cycle in cycles:
        lines = [" -> ".join(cycle)]
        for a, b in zip(cycle, cycle[1:], strict=False):
            lines += [f"      {i.where}" for i in where[a, b]]
        report.append("\n".join(lines))
    assert not cycles, f"{len(cycles)} import cycle(s):\n  " + "\n  ".join(report)


def test_public_api_is_a_short_literal_list():
    """``tl_grokking.__all__`` is a literal list of at most 40 distinct strings, the keys of
    ``_EXPORTS`` plus ``__version__``, and is what the imported package exposes."""
    tree = ast.parse(MODULE_FILES[PACKAGE].read_text(encoding="utf-8"))
    assigned = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    assert len(assigned) == 1, "__all__ must be assigned exactly once"
    literal = assigned[0]
    assert isinstance(literal, ast.List), "__all__ must be a literal list"
    assert all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in literal.elts)
    names = [e.value for e in literal.elts]
    assert len(names) <= MAX_PUBLIC_NAMES, f"{len(names)} public names (at most 40)"
    assert len(set(names)) == len(names)
    for node in ast.walk(tree):  # and nothing extends it
        if isinstance(node, ast.AugAssign):
            assert ast.unparse(node.target) != "__all__", "__all__ is extended"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert node.value.id != "__all__", f"__all__.{node.attr}: __all__ is changed"
    import tl_grokking

    assert tl_grokking.__all__ == names
    assert set(names) == set(tl_grokking._EXPORTS) | {"__version__"}


def test_the_map_lists_every_module():
    """Every module of the package appears in the map of docs/architecture.md, and nothing
    the map names is missing from the code."""
    documented = documented_modules()
    expected = {m for m in MODULES if not is_package(m) and not m.endswith("__main__")}
    missing = sorted(expected - documented)
    stale = sorted(documented - MODULES)
    assert not missing and not stale, (
        f"docs/architecture.md '## Map': modules not listed {missing}; "
        f"listed but not in the code {stale}"
    )


_EINOPS_EINSUM = re.compile(r"\beinops\.einsum\b|from einops import[^\n]*\beinsum\b")


@pytest.mark.parametrize("module", sorted(m for m in MODULES), ids=lambda m: m)
def test_one_einsum_convention(module):
    """Contractions use fancy_einsum's ``einsum("equation", *tensors)`` (equation first, as
    TransformerLens); einops only for rearrange / reduce / repeat; no torch.einsum."""
    source = MODULE_FILES[module].read_text(encoding="utf-8")
    path = MODULE_FILES[module].relative_to(REPO)
    assert not _EINOPS_EINSUM.search(source), f"{path}: einops.einsum (use fancy_einsum)"
    assert "torch.einsum" not in source, f"{path}: torch.einsum (use fancy_einsum)"
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "einsum"
        ):
            first = node.args[0] if node.args else None
            is_equation = isinstance(first, ast.Constant | ast.JoinedStr) or (
                isinstance(first, ast.Name) and first.id.isupper()
            )
            assert is_equation, f"{path}:{node.lineno}: einsum's first argument is the equation"


SEAM = "tl_grokking.model.transformer"


def transformer_lens_imports() -> list[tuple[str, int, str]]:
    """Every ``import transformer_lens...`` / ``from transformer_lens... import`` in the package
    (at any depth, TYPE_CHECKING included), as (module, line, imported name)."""
    found = []
    for module, path in MODULE_FILES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found += [(module, node.lineno, n) for n in names if n.startswith("transformer_lens")]
    return found


def test_only_the_seam_imports_transformer_lens():
    """docs/transformerlens.md: one module knows TransformerLens' classes and its version."""
    found = transformer_lens_imports()
    assert {module for module, _, _ in found} == {SEAM}, [f for f in found if f[0] != SEAM]
    names = {name for _, _, name in found}
    assert "transformer_lens.HookedTransformer" in names
    assert "transformer_lens.model_bridge.TransformerBridge" in names


def test_every_subpackage_is_a_regular_package():
    """An ``__init__.py`` in each: a namespace package works in a checkout but is left out of
    a wheel (setuptools' ``find_packages``). One went missing once behind a .gitignore rule."""
    src = REPO / "src" / "tl_grokking"
    for folder in [src, *(p for p in src.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        if any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), folder
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *map(str, src.rglob("*.py"))],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert ignored.stdout == "", f"git ignores source files:\n{ignored.stdout}"
