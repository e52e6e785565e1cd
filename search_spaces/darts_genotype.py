"""The genotype of the DARTS cell space: the published notation, validated field by field."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from nasplat import DARTS_OPS, Genotype, GenotypeError, cell_edges

NUM_NODES = 4
NUM_EDGES = len(cell_edges(NUM_NODES))  # 14


@dataclasses.dataclass(frozen=True)
class DartsGenotype(Genotype):
    """Published DARTS notation: pairs 2k and 2k+1 of ``normal``/``reduce`` feed node k.

    Inputs 0 and 1 are the two cell inputs, 2.. the intermediate nodes.
    """

    space: ClassVar[str] = "darts"
    version: ClassVar[int] = 1

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple

    def validate(self) -> None:
        for cell in ("normal", "reduce"):
            _validate_pairs(cell, getattr(self, cell))
            _validate_concat(f"{cell}_concat", getattr(self, f"{cell}_concat"))


def _validate_pairs(field: str, pairs: object) -> None:
    if not isinstance(pairs, tuple) or len(pairs) != 2 * NUM_NODES:
        raise GenotypeError(field, f"expected {2 * NUM_NODES} [op, input] pairs, got {pairs!r}")
    allowed_ops = [op for op in DARTS_OPS if op != "none"]
    for index, pair in enumerate(pairs):
        where = f"{field}[{index}]"
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise GenotypeError(where, f"expected [op, input], got {pair!r}")
        op, source = pair
        if op not in allowed_ops:
            raise GenotypeError(where, f"op {op!r} is not one of {allowed_ops}")
        max_source = index // 2 + 1
        if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source <= max_source:
            raise GenotypeError(where, f"input {source!r} must be an integer in 0..{max_source} for node {index // 2}")


def _validate_concat(field: str, concat: object) -> None:
    valid = range(2, 2 + NUM_NODES)
    distinct = isinstance(concat, tuple) and concat and len(set(concat)) == len(concat)
    if not distinct or any(type(i) is not int or i not in valid for i in concat):
        raise GenotypeError(field, f"expected distinct node indices from {list(valid)}, got {concat!r}")
