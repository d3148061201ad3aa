"""The package's shape: no import cycle between its modules, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_forgetguard"


def _module(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it is imported, or when a type checker reads it: its
    top-level imports and those under a top-level ``if`` (``if TYPE_CHECKING:``), not those inside
    functions (deferred on purpose)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [n for top in tree.body for n in ([top, *ast.walk(top)] if isinstance(top, ast.If) else [top])]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle_type_only_imports_included():
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_every_module_named_on_the_architecture_page_exists():
    """docs/architecture.md names modules in backticks: each must import, and every module of the package
    must be on the page (a new module gets a place on the map)."""
    import importlib
    import re

    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(pytest_forgetguard(?:\.[a-z_]+)*)`", page))
    assert len(named) > 30
    for name in sorted(named):
        importlib.import_module(name)
    modules = {_module(p) for p in PACKAGE.rglob("*.py")} - {"pytest_forgetguard.__main__"}
    packages_only = {m for m in modules if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    missing = sorted(modules - named - (packages_only - {"pytest_forgetguard", "pytest_forgetguard.history"}))
    assert not missing, f"modules not on docs/architecture.md: {missing}"
