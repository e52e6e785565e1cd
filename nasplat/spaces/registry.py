"""The registry of search spaces, and reading genotypes back through it.

Spaces are found in a registry filled by :func:`register_space` and, lazily, by the
``nasplat.search_spaces`` entry-point group, so the library never imports a space itself.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from nasplat.spaces.genotype import Genotype, GenotypeError
from nasplat.spaces.space import SearchSpace

ENTRY_POINT_GROUP = "nasplat.search_spaces"


class UnknownSpaceError(KeyError):
    """No registered space has that name; the message lists those that exist."""

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, SearchSpace] = {}
_ENTRY_POINTS_LOADED = False
S = TypeVar("S", bound=type[SearchSpace])


def register_space(cls: S | None = None, *, name: str | None = None, override: bool = False) -> S | Callable[[S], S]:
    """Class decorator: ``@register_space`` or ``@register_space(name="mine")``."""

    def decorate(space_cls: S) -> S:
        space_name = name or space_cls.name
        if not space_name:
            raise ValueError(f"{space_cls.__name__} needs a non-empty 'name' to be registered")
        if space_cls.genotype_type.space != space_name:
            raise ValueError(
                f"{space_cls.__name__}.genotype_type.space is {space_cls.genotype_type.space!r}, "
                f"expected {space_name!r}"
            )
        existing = _REGISTRY.get(space_name)
        if existing is not None and type(existing) is not space_cls and not override:
            raise ValueError(f"search space {space_name!r} is already registered ({type(existing).__name__})")
        space_cls.name = space_name
        _REGISTRY[space_name] = space_cls()
        return space_cls

    return decorate(cls) if cls is not None else decorate


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        loaded = ep.load()
        if isinstance(loaded, type) and issubclass(loaded, SearchSpace) and ep.name not in _REGISTRY:
            register_space(loaded, name=ep.name)


def available_spaces() -> tuple[str, ...]:
    _load_entry_points()
    return tuple(sorted(_REGISTRY))


def import_space_source(source: str) -> None:
    """Import a module by dotted name or a ``.py`` file path so its spaces register themselves."""
    if source.endswith(".py"):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"search-space file not found: {path}")
        module_name = f"nasplat_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import search-space file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        importlib.import_module(source)


def resolve_space_spec(spec: str) -> tuple[str, str | None]:
    """Split ``NAME``, ``FILE.py:NAME`` or ``pkg.module:NAME`` into (name, source)."""
    if ":" in spec:
        source, name = spec.rsplit(":", 1)
        if source.endswith(".py"):
            source = str(Path(source).expanduser().resolve())
        return name, source
    return spec, None


def get_space(spec: str) -> SearchSpace:
    """Return a registered space by name, or by ``FILE.py:NAME`` / ``module:NAME``, which imports (runs) that code:
    pass only what a user typed, never a value read from a file, checkpoint or run (see :func:`registered_space`)."""
    name, source = resolve_space_spec(spec)
    if source is not None:
        import_space_source(source)
    return registered_space(name)


def registered_space(name: str) -> SearchSpace:
    """The space registered (or installed as an entry point) under ``name``; imports no user code."""
    if not is_space_name(name):
        raise UnknownSpaceError(f"{name!r} is not a search-space name: data (genotypes, checkpoints, runs) names a "
                                "space by its registered name, never by a file or module")
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownSpaceError(f"unknown search space {name!r}; registered spaces: {known}")
    return _REGISTRY[name]


def is_space_name(name: str) -> bool:
    """A registry name: letters, digits, ``_`` and ``-``; no path, no module, no ``FILE:NAME``."""
    return bool(name) and all(c.isalnum() or c in "_-" for c in name)


def genotype_from_dict(data: Mapping[str, Any]) -> Genotype:
    """Rebuild a genotype of any registered space from its ``to_dict()`` form.

    The genotype's ``space`` must be a registered name: a file path or module spec there is refused and nothing
    is imported (a genotype file, a checkpoint or an MLflow run never makes nasplat run code)."""
    if not isinstance(data, Mapping) or "space" not in data:
        raise GenotypeError("space", "missing (a genotype names the space it belongs to)")
    try:
        space = registered_space(str(data["space"]))
    except KeyError as err:
        raise GenotypeError("space", str(err)) from None
    return space.genotype_type.from_dict(data)


def load_genotype(path: str | Path) -> Genotype:
    """Read a genotype JSON file; errors name the file and the field at fault."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GenotypeError("<file>", "no such file", source=str(path)) from None
    except json.JSONDecodeError as err:
        raise GenotypeError("<file>", f"not valid JSON ({err})", source=str(path)) from None
    try:
        return genotype_from_dict(data)
    except GenotypeError as err:
        raise GenotypeError(err.field, err.problem, source=str(path)) from None
