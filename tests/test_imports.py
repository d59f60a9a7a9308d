"""How the modules of cxrkit import each other: at the top, and without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cxrkit"

# (module, sibling) pairs imported inside a function on purpose, to keep a heavy
# third-party package out of the importing module: torch, pandas and pydicom for the
# CLI's help, bad-input messages and doctor, albumentations for cxrkit.data, the
# sample generator for cxrkit.paths.
DELIBERATE_LAZY = {
    ("cxrkit.cli", "cxrkit.train"),
    ("cxrkit.cli", "cxrkit.classifier"),
    ("cxrkit.cli", "cxrkit.predict"),
    ("cxrkit.cli", "cxrkit._atomic"),
    ("cxrkit.cli", "cxrkit.annotations"),
    ("cxrkit.cli", "cxrkit.metrics"),
    ("cxrkit.cli", "cxrkit.paths"),
    ("cxrkit.cli", "cxrkit.preprocess"),
    ("cxrkit.cli", "cxrkit.submission"),
    ("cxrkit.config", "cxrkit.data"),  # check_fold: keep torch out of the help
    ("cxrkit.data", "cxrkit.transforms"),
    ("cxrkit.paths", "cxrkit.sample"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cxrkit_imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "cxrkit":
            return [f"cxrkit.{alias.name}" for alias in node.names]
        if node.module.startswith("cxrkit."):
            return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("cxrkit.")]
    return []


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Module -> [(imported cxrkit module, inside a function?)]."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        inner = set()
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                inner.update(id(n) for n in ast.walk(func))
        found[_module_name(path)] = [
            (target, id(node) in inner)
            for node in ast.walk(tree)
            for target in _cxrkit_imports(node)
        ]
    return found


def test_siblings_are_imported_at_the_top():
    lazy = {
        (module, target)
        for module, targets in _imports().items()
        for target, in_function in targets
        if in_function
    }
    assert lazy - DELIBERATE_LAZY == set(), "import these at the top of the module"


def test_no_import_cycle():
    graph = {m: {t for t, _ in targets if t != m} for m, targets in _imports().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checks_see_the_deliberate_lazy_imports():
    lazy = {(m, t) for m, targets in _imports().items() for t, inner in targets if inner}
    assert DELIBERATE_LAZY <= lazy, "an allowed lazy import is gone: trim DELIBERATE_LAZY"


def test_only_paths_imports_the_sample_generator():
    importers = {
        module
        for module, targets in _imports().items()
        for target, _ in targets
        if target.startswith("cxrkit.sample") and not module.startswith("cxrkit.sample")
    }
    assert importers == {"cxrkit.paths"}
