"""The layering rules of docs/architecture.md, read from the source (lazy imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nasplat", "search_spaces", "pipelines")
LINE_LIMITS = {"nasplat": 400, "pipelines": 400, "search_spaces": 300}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imported(path: Path, module: str) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` in the file names (relative ones resolved)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _project_targets(names: set[str]) -> set[str]:
    """The project modules among ``names`` (``from pkg import name`` counts as the module pkg.name when it is one)."""
    return {name for name in names if name in MODULES}


IMPORTS = {module: _imported(path, module) for module, path in MODULES.items()}


def _violations(predicate) -> list[str]:
    return sorted(f"{module} imports {name}" for module, names in IMPORTS.items() for name in names
                  if predicate(module, name))


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_library_never_imports_spaces_or_pipelines():
    assert _violations(lambda m, n: _top(m) == "nasplat" and _top(n) in ("search_spaces", "pipelines")) == []


def test_only_runtime_and_tracking_import_ray_or_mlflow():
    allowed = ("nasplat.runtime", "nasplat.tracking")
    assert _violations(lambda m, n: _top(m) == "nasplat" and _top(n) in ("ray", "mlflow")
                       and not m.startswith(allowed)) == []


def test_data_imports_no_ray():
    assert _violations(lambda m, n: m.startswith("nasplat.data") and _top(n) == "ray") == []


def test_built_in_spaces_use_only_the_public_api():
    assert _violations(lambda m, n: _top(m) == "search_spaces" and _top(n) == "nasplat" and n != "nasplat"
                       and n.rpartition(".")[0] != "nasplat") == []


def test_no_import_cycles_among_project_modules():
    graph = {module: _project_targets(names) - {module} for module, names in IMPORTS.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package):
    limit = LINE_LIMITS[package]
    too_long = {str(path.relative_to(ROOT)): n for module, path in MODULES.items() if _top(module) == package
                and (n := len(path.read_text().splitlines())) > limit}
    assert too_long == {}, f"modules over {limit} lines"


def test_the_rules_see_what_they_check():
    """The scanner itself: it finds a lazy import inside a function and a relative import."""
    assert "ray" in IMPORTS["nasplat.runtime.driver"]
    assert "nasplat.runtime.search_driver" in IMPORTS["nasplat.api"]  # imported inside nasplat.search()
    assert len(MODULES) > 50


def test_readme_stays_a_front_page():
    """Measurements, record lists and layout live in docs/; the README stays under 12,000 bytes."""
    assert len((ROOT / "README.md").read_bytes()) <= 12_000
