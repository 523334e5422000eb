"""The package's import direction (docs/design.md, "Layout"): tools -> cli -> tasks -> models / data / metrics, and
deploy -> models. Checked on the source (every import statement, also inside functions; the only exception
is a module ``__getattr__`` that keeps a deprecated name importable)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ghost_vision"

#: layer -> the ghost_vision layers it must not import.
FORBIDDEN = {
    "models": {"tasks", "cli", "deploy", "commands", "data", "metrics"},
    "data": {"tasks", "cli", "deploy", "commands", "models"},
    # metrics may read annotation files through data's validated COCO reader (never the reverse)
    "metrics": {"tasks", "cli", "deploy", "commands", "models"},
    "deploy": {"tasks", "cli", "commands", "data", "metrics"},
    "tasks": {"cli", "deploy", "commands"},
}


def _imports(path: Path, *, names: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ghost_vision import in ``path``, outside ``__getattr__``
    (``names=True``: ``module.name`` for each name of a ``from module import name``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if names:
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, m) for line, m in found if m == "ghost_vision" or m.startswith("ghost_vision.")]


def test_imports_go_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        layer = parts[0]
        for line, module in _imports(path):
            target = module.split(".")[1] if "." in module else ""
            if target in FORBIDDEN.get(layer, set()):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_deploy_uses_only_public_model_names():
    private = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
               for path in sorted((PACKAGE / "deploy").rglob("*.py"))
               for line, name in _imports(path, names=True)
               if name.startswith("ghost_vision.models") and any(p.startswith("_") for p in name.split("."))]
    assert not private, "\n".join(private)


def test_the_check_resolves_relative_imports_and_sees_function_bodies():
    def modules(*parts: str) -> set[str]:
        return {m for _, m in _imports(PACKAGE.joinpath(*parts))}

    assert "ghost_vision.models.factory" in modules("models", "segmentation.py")  # from .factory import
    assert "ghost_vision.models.factory" in modules("models", "detection", "fpn.py")  # from ..factory import
    assert "ghost_vision.models" in modules("deploy", "bench.py")  # inside build()
    assert "ghost_vision.tasks.base" in modules("tasks", "detection.py")
    assert "ghost_vision.models.ghostnet.GhostNet" in {m for _, m in _imports(PACKAGE / "deploy" / "fuse.py",
                                                                                 names=True)}
    # the deprecated SSDHeadOutputs alias (a module __getattr__) is the one exception
    assert "ghost_vision.deploy.export" not in modules("models", "detection", "__init__.py")


def _module_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (function bodies included). Package ``__init__`` files
    only re-export, so an import of a package counts for nothing here; ``from pkg import mod`` of a
    submodule counts as an import of that submodule."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p
               for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {m for _, m in _imports(path) if m in modules}
        targets |= {m for _, m in _imports(path, names=True) if m in modules}
        graph[name] = targets - {name}
    return graph


def test_no_import_cycles_between_modules():
    graph = _module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, "modules importing each other (directly or in a circle): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_lazy_import():
    graph = _module_graph()
    # the variant table sits below both factory and pretrained; load_task sits above the task modules
    assert "ghost_vision.models.variants" in graph["ghost_vision.models.pretrained"]
    assert "ghost_vision.models.pretrained" not in graph["ghost_vision.models.variants"]
    assert "ghost_vision.tasks.detection" in graph["ghost_vision.tasks.loading"]
