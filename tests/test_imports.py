"""The import rule: zoomorph's modules import each other without cycles, every one at the top of its file.

An import hidden inside a function is how a cycle gets papered over; only the
modules below may import zoomorph modules inside functions, for the reason given.
(Third-party imports inside functions, for an optional or a heavy dependency, are
not checked here: each says why where it stands.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import zoomorph

SRC = Path(zoomorph.__file__).parent

# module -> why it may import zoomorph modules inside its functions
LAZY_ALLOWED = {
    "zoomorph.api": "each command imports what it runs, so `zoomorph --help` and the light commands start fast",
    "zoomorph.cli": "(and its modules) each command imports what it runs, so `zoomorph --help` starts fast",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def _target(node: ast.ImportFrom, alias: ast.alias, importer: str) -> str:
    """The zoomorph module a `from X import name` loads: X.name when that is a module, else X."""
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer.split(".") if MODULES[importer].name == "__init__.py" else importer.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    return f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def imports(name: str) -> list[tuple[str, bool]]:
    """(zoomorph module imported, whether the import sits inside a function) for each import in `name`."""
    tree = ast.parse(MODULES[name].read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names if a.name.split(".")[0] == "zoomorph")
            elif isinstance(child, ast.ImportFrom):
                targets = [_target(child, a, name) for a in child.names]
                found.extend((t, inside) for t in targets if t.split(".")[0] == "zoomorph")
            visit(child, inside)

    visit(tree, False)
    return [(t, inside) for t, inside in found if t in MODULES]


GRAPH = {name: sorted({t for t, _ in imports(name)} - {name}) for name in MODULES}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part that has one (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_the_check_sees_imports_of_every_kind():
    assert "zoomorph.runs" in GRAPH["zoomorph.inference"]  # from zoomorph.runs import Run
    assert "zoomorph.predict.quantize" in GRAPH["zoomorph.predict.onnx"]  # from zoomorph.predict import quantize
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_zoomorph_modules_import_each_other_without_cycles():
    assert _cycles(GRAPH) == []


def test_zoomorph_imports_sit_at_the_top_of_their_files():
    hidden = sorted({f"{name} imports {target} inside a function"
                     for name in MODULES if not any(name == m or name.startswith(m + ".") for m in LAZY_ALLOWED)
                     for target, inside in imports(name) if inside})
    assert hidden == []
