"""What an install needs: every third-party package the code imports is declared, and the Ray floor of
pyproject.toml, the Ray of this environment and the Ray pinned by cluster/Dockerfile agree."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OWN = ("nasplat", "pipelines", "search_spaces")


def _requirements(optional: bool) -> dict[str, Requirement]:
    texts = list(PROJECT["dependencies"])
    if optional:
        texts += [text for extra in PROJECT["optional-dependencies"].values() for text in extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, texts)}


def _ray_floor() -> Version:
    specifiers = list(_requirements(optional=False)["ray"].specifier)
    assert [s.operator for s in specifiers] == [">="], f"pyproject.toml: ray needs one >= floor, got {specifiers}"
    return Version(specifiers[0].version)


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for package in OWN:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in (*OWN, "__future__")}


def test_every_imported_package_is_declared():
    declared = _requirements(optional=True)
    owners = importlib.metadata.packages_distributions()
    undeclared = {name: owners.get(name) for name in _imported_top_levels()
                  if not any(canonicalize_name(d) in declared for d in owners.get(name, [name]))}
    assert undeclared == {}, "imported but not in pyproject.toml (dependencies or an extra)"
    assert "matplotlib" in _requirements(optional=False)  # the pictures of every search need it


def test_ray_floor_dockerfile_pin_and_this_environment_agree():
    floor = _ray_floor()
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-", text, re.M)
    pins = re.findall(r"ray\[[a-z,]+\]==(\d+\.\d+\.\d+)", text)
    assert image and pins, "cluster/Dockerfile: no Ray base image tag or ray==X pin"
    assert set(pins) == {image.group(1)}, "the base image and the pip pin name different Rays"
    pinned = Version(image.group(1))
    assert pinned >= floor, f"cluster/Dockerfile pins ray {pinned}, below pyproject's floor {floor}"
    assert f"ray>={floor}" in text, "cluster/Dockerfile's comment names another floor than pyproject.toml"
    installed = Version(importlib.metadata.version("ray"))
    assert installed in _requirements(optional=False)["ray"].specifier, f"ray {installed} is below the floor {floor}"
