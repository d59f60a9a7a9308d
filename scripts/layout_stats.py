"""Measure the library's layout: file sizes, the longest functions, import cycles, error bases.

Reads the source only (``ast``), so it runs on any checkout, also an old one::

    python scripts/layout_stats.py            # this checkout's cxrkit/
    python scripts/layout_stats.py /tmp/old/cxrkit

The numbers are the ones the regroup (issue 8) set targets for: the largest
files, the five longest function bodies, cycles among the package's modules,
exception classes without a common cxrkit base, and table-format constants
defined in more than one module.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SHARED_CONSTANTS = ("BOX_COLUMNS", "PREDICTION_COLUMNS", "META_COLUMNS", "NO_FINDING_BOX")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sibling_imports(tree: ast.Module, package: str) -> set[str]:
    """Modules of the package this module imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == package:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(root: Path) -> None:
    package = root.name
    files = sorted(root.rglob("*.py"))
    graph: dict[str, set[str]] = {}
    functions: list[tuple[int, str]] = []
    errors: dict[str, list[str]] = {}
    constants: dict[str, set[str]] = defaultdict(set)
    sizes: list[tuple[int, str]] = []
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        name = module_name(path, root)
        sizes.append((len(text.splitlines()), str(path.relative_to(root.parent))))
        graph[name] = {m for m in sibling_imports(tree, package) if m != name}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                functions.append((length, f"{name}.{node.name}"))
            elif isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Warning")) for b in bases):
                    errors[f"{name}.{node.name}"] = bases
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in SHARED_CONSTANTS:
                    constants[target.id].add(name)

    print(f"{root}: {len(files)} files, {sum(s for s, _ in sizes)} lines")
    print("largest files:", ", ".join(f"{p} {n}" for n, p in sorted(sizes, reverse=True)[:5]))
    print(
        "longest functions:", ", ".join(f"{f} {n}" for n, f in sorted(functions, reverse=True)[:5])
    )
    print(f"functions over 80 lines: {sum(n > 80 for n, _ in functions)}")
    found = cycles(graph)
    print(f"import cycles: {len(found)}", *(" <-> ".join(c) for c in found), sep="\n  ")
    roots = [
        e
        for e, bases in errors.items()
        if not any(b.split(".")[-1] in {x.split(".")[-1] for x in errors} for b in bases)
    ]
    print(
        f"exception classes: {len(errors)}, without a cxrkit base: {len(roots)} ({', '.join(roots)})"
    )
    for const in SHARED_CONSTANTS:
        print(f"{const} defined in: {', '.join(sorted(constants[const])) or '-'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "cxrkit")
