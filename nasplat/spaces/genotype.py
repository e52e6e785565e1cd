"""Genotypes: small, immutable, validated, JSON-serialisable descriptions of a discrete architecture."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping


class GenotypeError(ValueError):
    """A genotype (or genotype file) is malformed; the message names the field at fault."""

    def __init__(self, field: str, problem: str, source: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}genotype field '{field}': {problem}")


def _freeze(value: Any) -> Any:
    """Turn JSON lists into tuples, recursively, so genotypes are hashable and immutable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Genotype:
    """Base class of every space's genotype.

    Subclasses are frozen dataclasses that set ``space`` and ``version`` and implement
    ``validate`` (raise :class:`GenotypeError` naming the field). Sequence fields are stored as
    tuples; ``to_dict`` writes them as JSON lists.
    """

    space: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _freeze(getattr(self, field.name)))
        self.validate()

    def validate(self) -> None:
        """Check the fields; raise GenotypeError(field, problem) on the first bad one."""

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"space": self.space, "version": self.version, **body}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Genotype":
        if not isinstance(data, Mapping):
            raise GenotypeError("<root>", f"expected a JSON object, got {type(data).__name__}")
        if data.get("space") != cls.space:
            raise GenotypeError("space", f"expected '{cls.space}', got {data.get('space')!r}")
        if type(data.get("version")) is not int or data.get("version") != cls.version:
            raise GenotypeError(
                "version", f"unsupported schema version {data.get('version')!r} (expected {cls.version})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"space", "version"})
        if unknown:
            raise GenotypeError(unknown[0], f"unknown field (allowed: {', '.join(sorted(names))})")
        missing = [n for n in sorted(names) if n not in data]
        if missing:
            raise GenotypeError(missing[0], "missing")
        return cls(**{n: data[n] for n in names})

    def short_hash(self) -> str:
        """A stable 12-hex-digit fingerprint, handy for comparing runs."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def save_genotype(genotype: Genotype, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(genotype.to_json() + "\n")
    return path
