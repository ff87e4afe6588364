"""The package's modules form an import tree: no module imports one that imports it back, and none imports
another's underscore names. Read from the source with ``ast`` (imports inside functions count too)."""

import ast
from pathlib import Path

import aer_kernels

PACKAGE = Path(aer_kernels.__file__).parent


def _imports(package: Path) -> dict[str, set[tuple[str, str]]]:
    """``module -> {(imported module, imported name or "")}`` for the package's own modules."""
    modules = {path.stem for path in package.glob("*.py")}
    found: dict[str, set[tuple[str, str]]] = {}
    for path in package.glob("*.py"):
        edges = found.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for alias in node.names:
                    if node.module is not None:
                        edges.add((node.module, alias.name))
                    elif alias.name in modules:  # from . import reference
                        edges.add((alias.name, ""))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{package.name}."):
                edges.update((node.module.split(".")[1], alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                edges.update(
                    (alias.name.split(".")[1], "") for alias in node.names if alias.name.startswith(f"{package.name}.")
                )
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_import_cycle():
    graph = {module: {dep for dep, _ in edges} for module, edges in _imports(PACKAGE).items()}
    assert {"entropy", "reference", "_backends", "_ops"} <= graph.keys()  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_module_imports_another_modules_private_names():
    private = sorted(
        f"{module} imports {name} from {dep}"
        for module, edges in _imports(PACKAGE).items()
        for dep, name in edges
        if name.startswith("_")
    )
    assert not private, private


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"entropy": {"reference"}, "reference": {"_layout", "entropy"}, "_layout": set()}) == [
        "entropy",
        "reference",
        "entropy",
    ]
    assert _cycle({"linear": {"entropy", "_ops"}, "entropy": {"_ops"}, "_ops": set()}) is None
