"""The Auto-DeepLab genotype: the cell in the DARTS notation and the network path, and the published one."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from nasplat import Genotype, GenotypeError, validate_cell_pairs, validate_concat

from search_spaces.autodeeplab.ops import AUTODEEPLAB_OPS
from search_spaces.autodeeplab.paths import BETA_NORMS, DEFAULT_BETA_NORM, STRIDES, path_levels


@dataclasses.dataclass(frozen=True)
class AutoDeepLabGenotype(Genotype):
    """A decoded Auto-DeepLab architecture.

    ``cell``: ``2B`` ``[op, input]`` pairs; pairs ``2b``, ``2b+1`` feed block ``b``; inputs
    0 = ``H^{l-2}``, 1 = ``H^{l-1}``, ``2..`` = blocks. ``cell_concat``: the states concatenated
    into the cell output (all blocks, ``[2..B+1]``). ``path``: the output stride of each layer.
    ``beta_norm``: the beta normalisation the path was decoded with.
    """

    space: ClassVar[str] = "autodeeplab"
    version: ClassVar[int] = 1

    cell: tuple
    cell_concat: tuple
    path: tuple
    beta_norm: str = DEFAULT_BETA_NORM

    @property
    def blocks(self) -> int:
        return len(self.cell) // 2

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(path_levels(self.path))

    def validate(self) -> None:
        validate_cell_pairs("cell", self.cell, (op for op in AUTODEEPLAB_OPS if op != "none"), node_word="block")
        validate_concat("cell_concat", self.cell_concat, self.blocks, node_word="block")
        if not isinstance(self.path, tuple) or not self.path:
            raise GenotypeError("path", f"expected a non-empty list of output strides, got {self.path!r}")
        for index, stride in enumerate(self.path):
            if type(stride) is not int or stride not in STRIDES:
                raise GenotypeError(f"path[{index}]", f"output stride {stride!r} is not one of {list(STRIDES)}")
        if self.path[0] not in (4, 8):
            raise GenotypeError("path[0]", f"the first layer follows the stride-4 stem: 4 or 8, got {self.path[0]}")
        for index in range(1, len(self.path)):
            before, now = self.path[index - 1], self.path[index]
            if abs(STRIDES.index(now) - STRIDES.index(before)) > 1:
                raise GenotypeError(f"path[{index}]", f"stride {before} -> {now} moves more than one level")
        if self.beta_norm not in BETA_NORMS:
            raise GenotypeError("beta_norm", f"{self.beta_norm!r} is not one of {list(BETA_NORMS)}")


PAPER_GENOTYPE = AutoDeepLabGenotype(
    cell=[["atrous_conv_5x5", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["atrous_conv_3x3", 1],
          ["sep_conv_3x3", 3], ["sep_conv_3x3", 0], ["sep_conv_5x5", 4], ["sep_conv_5x5", 2],
          ["sep_conv_5x5", 3], ["atrous_conv_5x5", 5]],
    cell_concat=[2, 3, 4, 5, 6],
    path=[4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8],
    beta_norm="paper",
)
"""The published cell and path (paper Fig. 3 = TF ``hnasnet``, inputs 0/1 un-swapped)."""

