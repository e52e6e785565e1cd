"""The genotype of the DARTS cell space: the published notation, validated field by field."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from nasplat import DARTS_OPS, Genotype, cell_edges, validate_cell_pairs, validate_concat

NUM_NODES = 4
NUM_EDGES = len(cell_edges(NUM_NODES))  # 14
DISCRETE_OPS = tuple(op for op in DARTS_OPS if op != "none")


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
            validate_cell_pairs(cell, getattr(self, cell), DISCRETE_OPS, nodes=NUM_NODES)
            validate_concat(f"{cell}_concat", getattr(self, f"{cell}_concat"), NUM_NODES)
