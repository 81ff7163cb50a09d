"""The code's shape: imports go one way through the layers, none hides inside a function, each
file name of an experiment is spelled in one place, and private library names stay in one file
per library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "nas", "trials", "analysis")
# Lower layers never import higher ones (README, "Layout").
LAYERS = (
    ("search_spaces",),
    ("nas", "nas.models"),
    ("trials",),
    ("nas.supernet",),  # its trainer may use trials' data; the search is to use it
    ("nas.experiment",),
    ("nas.search",),
    ("analysis",),
    ("nas.export", "nas.costs"),
    ("nas.console",),  # the console script dispatches to every command
)
# The one file per library allowed to touch its private names (README names them).
PRIVATE_OWNERS = {"optuna": "nas/search/pareto.py", "torch": "nas/models/costs.py"}
# File names of an experiment or run directory, and the one module that spells each.
FILE_NAMES = {
    '"experiment.json"': "nas/experiment.py",
    '"trials.csv"': "nas/experiment.py",
    '"study.journal"': "nas/experiment.py",
    '"checkpoint.pt"': "trials/run_dir.py",
    '"metrics.jsonl"': "trials/run_dir.py",
    '"spec.json"': "trials/run_dir.py",
    '"result.json"': "trials/run_dir.py",
    '"latency.json"': "trials/run_dir.py",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {
    _module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
}


def layer_of(module: str) -> int:
    """The deepest layer prefix that names `module` (nas.search.cli -> nas.search)."""
    best, best_len = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = index, len(name)
    assert best is not None, f"{module} is in no layer"
    return best


def _resolve(name: str) -> str | None:
    """The project module an import names (`from nas.search import cli` -> nas.search.cli)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    while name and name not in SOURCES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> list[tuple[str, bool, bool, int]]:
    """(imported project module, inside a function, under `if TYPE_CHECKING`, line) per import."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool, bool, int]] = []

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            typing = typing_only or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [f"{child.module}.{a.name}" for a in child.names]
            for name in names:
                target = _resolve(name)
                if target is not None:
                    found.append((target, func, typing, child.lineno))
            visit(child, func, typing)

    visit(tree, False, False)
    return found


GRAPH = {module: _imports(path) for module, path in SOURCES.items()}


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_imports_go_down_the_layers_and_none_hides_in_a_function(module: str) -> None:
    for target, in_function, _, line in GRAPH[module]:
        where = f"{SOURCES[module].relative_to(ROOT)}:{line} imports {target}"
        assert not in_function, f"{where} inside a function"
        assert layer_of(target) <= layer_of(module), f"{where}, a higher layer"


def test_no_cycle_among_modules() -> None:
    edges = {m: {t for t, _, typing, _ in GRAPH[m] if not typing and t != m} for m in GRAPH}
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])


def test_layering_check_catches_an_upward_import() -> None:
    assert layer_of("trials.trial") < layer_of("nas.search.controller")
    assert layer_of("nas.models.builder") < layer_of("trials.trial") < layer_of("nas.experiment")
    assert layer_of("analysis.load") < layer_of("nas.export.cli")
    assert layer_of("trials.trial") < layer_of("nas.supernet.supernet") < layer_of("nas.search")
    assert _resolve("nas.search.cli.main") == "nas.search.cli"


@pytest.mark.parametrize("text", sorted(FILE_NAMES))
def test_each_file_name_is_spelled_in_one_module(text: str) -> None:
    spelled = sorted(str(p.relative_to(ROOT)) for p in SOURCES.values() if text in p.read_text())
    assert spelled == [FILE_NAMES[text]]


def _private_uses(path: Path, library: str) -> list[int]:
    """Lines importing or reaching a `_private` name of `library` (or an Optuna object's)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.ImportFrom) and node.module
                and node.module.split(".")[0] == library):
            names = node.module.split(".") + [a.name for a in node.names]
            if any(n.startswith("_") and n != "__future__" for n in names):
                lines.append(node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == library and any(p.startswith("_") for p in parts):
                    lines.append(node.lineno)
        elif isinstance(node, ast.Attribute):
            text = ast.unparse(node)
            if text.startswith(library + ".") and any(
                p.startswith("_") and not p.startswith("__") for p in text.split(".")
            ):
                lines.append(node.lineno)
            if library == "optuna" and node.attr in ("_storage", "_study_id", "_trial_id"):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("library", sorted(PRIVATE_OWNERS))
def test_private_names_of_a_library_stay_in_one_file(library: str) -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in SOURCES.values()
                   if _private_uses(p, library))
    assert set(users) <= {PRIVATE_OWNERS[library]}, users


def test_the_slow_list_names_tests_that_exist() -> None:
    """A renamed test must not silently drop out of conftest's list (into the fast tier)."""
    from conftest import SLOW_TESTS

    missing = [n for n in sorted(SLOW_TESTS)
               if f"def {n.split('::')[1]}(" not in (ROOT / "tests" / n.split("::")[0]).read_text()]
    assert missing == []
