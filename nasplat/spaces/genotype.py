"""Genotypes: small, immutable, validated, JSON-serialisable descriptions of a discrete architecture."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping


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


def validate_cell_pairs(field: str, pairs: object, ops: Iterable[str], nodes: int | None = None,
                        node_word: str = "node") -> None:
    """Check a cell in the DARTS notation: pairs ``2k`` and ``2k+1`` are ``(op, input)`` feeding node ``k``.

    ``ops``: the op names a discrete cell may use; ``input`` is 0 or 1 (the cell inputs) or ``2..k+1`` (an earlier
    node). ``nodes``: the number of nodes the cell must have (any positive number when None); ``node_word`` names a
    node in the messages ("node", "block"). Raises :class:`GenotypeError` naming ``field[index]``.
    """
    allowed_ops = list(ops)
    if nodes is not None and (not isinstance(pairs, tuple) or len(pairs) != 2 * nodes):
        raise GenotypeError(field, f"expected {2 * nodes} [op, input] pairs, got {pairs!r}")
    if not isinstance(pairs, tuple) or not pairs or len(pairs) % 2:
        raise GenotypeError(field, f"expected a non-empty, even number of [op, input] pairs, got {pairs!r}")
    for index, pair in enumerate(pairs):
        where = f"{field}[{index}]"
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise GenotypeError(where, f"expected [op, input], got {pair!r}")
        op, source = pair
        if op not in allowed_ops:
            raise GenotypeError(where, f"op {op!r} is not one of {allowed_ops}")
        node = index // 2
        if type(source) is not int or not 0 <= source <= node + 1:
            raise GenotypeError(where, f"input {source!r} must be an integer in 0..{node + 1} for {node_word} {node}")


def validate_concat(field: str, concat: object, nodes: int, node_word: str = "node") -> None:
    """Check a cell's ``concat``: distinct indices of its nodes (``2..nodes+1``); raises :class:`GenotypeError`."""
    valid = range(2, 2 + nodes)
    distinct = isinstance(concat, tuple) and bool(concat) and len(set(concat)) == len(concat)
    if not distinct or any(type(i) is not int or i not in valid for i in concat):
        raise GenotypeError(field, f"expected distinct {node_word} indices from {list(valid)}, got {concat!r}")


def save_genotype(genotype: Genotype, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(genotype.to_json() + "\n")
    return path
