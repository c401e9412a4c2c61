"""The layers point one way (features <- training <- pipeline) and no modules import each other in a
cycle: read from the source with ast, every import included (function-level and TYPE_CHECKING ones)."""

from __future__ import annotations

import ast
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
LAYERS = {"features": 0, "training": 1, "pipeline": 2, "workflows": 2}  # a layer imports only lower ones


def modules_of(root: Path) -> dict[str, Path]:
    """``cslr_pipe.<folder>.<module>`` -> its file, for every .py file of the code folders under ``root``."""
    found = {}
    for folder in LAYERS:
        for path in sorted((root / folder).rglob("*.py")):
            parts = [folder, *path.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["cslr_pipe", *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that module ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` names a module; `from module import name` names the module
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names)
    return {t for t in targets if t in known and t != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = modules_of(root)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_layer_imports_a_layer_above_it():
    graph = import_graph(REPOSITORY)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk found the project's imports
    assert "cslr_pipe.features.store" in graph["cslr_pipe.training.data"]
    assert upward_imports(graph) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(import_graph(REPOSITORY)) == []


def test_the_checks_find_a_planted_upward_import_and_cycle(tmp_path):
    for folder in LAYERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "training" / "loop.py").write_text("def f():\n    from ..pipeline.cli import main\n")
    (tmp_path / "pipeline" / "cli.py").write_text("main = 1\n")
    (tmp_path / "features" / "a.py").write_text("from cslr_pipe.features import b\n")
    (tmp_path / "features" / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n"
                                                "    from cslr_pipe.features.a import thing\n")
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == ["cslr_pipe.training.loop -> cslr_pipe.pipeline.cli"]
    assert cycles(graph) == [["cslr_pipe.features.a", "cslr_pipe.features.b"]]
